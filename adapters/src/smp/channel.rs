//! An SMP session on a device's existing connection (issue 10): the relay speaks SMP through the
//! adapter that already holds the device's port or link, instead of opening it a second time.
//!
//! [`pair`] makes the two ends: the relay keeps the [`ChannelTransport`] (a
//! [`Transport`] of whole SMP frames for [`super::client::SmpClient`]); the adapter gets the
//! [`SmpLink`] (inside `DeviceCommand::OpenSmp`) and does the medium's framing (serial: the
//! console lines of [`super::console`]).
//!
//! Ends: the relay is done when it drops its transport (the adapter sees `to_device` closed and
//! returns the device to its data protocol); the link is lost when the adapter drops its
//! `from_device` sender (port lost, session ended, an `OpenSmp` while not connected): the
//! relay's [`ChannelTransport::recv`] then returns [`TransportError::Closed`]. An adapter that
//! refuses a session (the device is not connected, not bonded, has no SMP service) or ends it
//! for a reason the relay should report drops it with [`SmpLink::refuse`]: the relay then gets
//! [`TransportError::Refused`] with that [`LinkRefusal`] instead of `Closed`.

use super::client::{LinkRefusal, Transport, TransportError};
use super::console;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// Adapter side of an SMP session on a device's existing connection.
#[derive(Debug)]
pub struct SmpLink {
    /// Whole SMP frames from the relay, to be framed for the medium and written to the device.
    /// `None` from `recv`: the relay is done.
    pub to_device: mpsc::Receiver<Vec<u8>>,
    /// Whole SMP frames read from the device (medium framing removed). Dropping it tells the
    /// relay the link is gone.
    pub from_device: mpsc::Sender<Vec<u8>>,
    /// Why the adapter ended the session, when it says ([`SmpLink::refuse`]).
    refusal: Arc<OnceLock<LinkRefusal>>,
}

impl SmpLink {
    /// Ends (or refuses) the session with a reason: the relay's next `recv`/`send` returns
    /// [`TransportError::Refused`]`(why)` once the frames already passed on are read.
    pub fn refuse(self, why: LinkRefusal) {
        let _ = self.refusal.set(why);
        drop(self);
    }
}

/// Relay side: implements [`Transport`] (whole SMP frames; the adapter does the medium's
/// framing).
#[derive(Debug)]
pub struct ChannelTransport {
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
    /// Bytes of medium framing the device's SMP buffer holds besides the frame.
    overhead: usize,
    /// Set by the adapter's [`SmpLink::refuse`].
    refusal: Arc<OnceLock<LinkRefusal>>,
}

/// A connected pair of `capacity` frames each way. The transport's
/// [`frame_limit`](Transport::frame_limit) is a serial console's (what
/// [`super::serial::SerialTransport`] allows: the buffer less the packet's length and CRC);
/// see [`ChannelTransport::with_overhead`] for other media.
pub fn pair(capacity: usize) -> (ChannelTransport, SmpLink) {
    let capacity = capacity.max(1);
    let (to_tx, to_rx) = mpsc::channel(capacity);
    let (from_tx, from_rx) = mpsc::channel(capacity);
    let refusal = Arc::new(OnceLock::new());
    (
        ChannelTransport {
            tx: to_tx,
            rx: from_rx,
            overhead: console::PACKET_OVERHEAD,
            refusal: refusal.clone(),
        },
        SmpLink {
            to_device: to_rx,
            from_device: from_tx,
            refusal,
        },
    )
}

impl ChannelTransport {
    /// The same transport with `overhead` bytes of medium framing counted against the device's
    /// SMP buffer (serial console: [`console::PACKET_OVERHEAD`], the default; BLE: 0).
    pub fn with_overhead(mut self, overhead: usize) -> ChannelTransport {
        self.overhead = overhead;
        self
    }

    /// `Closed`, or `Refused` when the adapter said why.
    fn gone(&self) -> TransportError {
        match self.refusal.get() {
            Some(why) => TransportError::Refused(*why),
            None => TransportError::Closed,
        }
    }
}

impl Transport for ChannelTransport {
    async fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        if let Err(_closed) = self.tx.send(frame.to_vec()).await {
            return Err(self.gone());
        }
        Ok(())
    }

    /// Cancel-safe: `mpsc::Receiver::recv` takes a frame only when it completes.
    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        match self.rx.recv().await {
            Some(f) => Ok(f),
            None => Err(self.gone()),
        }
    }

    fn frame_limit(&self, buf_size: usize) -> usize {
        buf_size.saturating_sub(self.overhead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn frames_pass_both_ways_in_order() {
        let (mut t, mut link) = pair(4);
        t.send(b"one").await.unwrap();
        t.send(b"two").await.unwrap();
        assert_eq!(link.to_device.recv().await.unwrap(), b"one");
        assert_eq!(link.to_device.recv().await.unwrap(), b"two");
        link.from_device.send(b"back".to_vec()).await.unwrap();
        assert_eq!(t.recv().await.unwrap(), b"back");
    }

    #[tokio::test]
    async fn the_adapter_dropping_its_sender_is_closed() {
        let (mut t, link) = pair(4);
        let SmpLink {
            to_device,
            from_device,
            ..
        } = link;
        from_device.send(b"last".to_vec()).await.unwrap();
        drop(from_device);
        // What was sent before the link went is still delivered, then Closed.
        assert_eq!(t.recv().await.unwrap(), b"last");
        assert!(matches!(t.recv().await, Err(TransportError::Closed)));
        // A send after the adapter dropped the whole link is Closed too.
        drop(to_device);
        assert!(matches!(t.send(b"x").await, Err(TransportError::Closed)));
    }

    #[tokio::test]
    async fn the_relay_dropping_its_transport_ends_to_device() {
        let (t, mut link) = pair(1);
        drop(t);
        assert!(link.to_device.recv().await.is_none());
        assert!(link.from_device.send(vec![1]).await.is_err());
    }

    #[tokio::test]
    async fn a_refused_link_says_why_after_what_it_passed_on() {
        let (mut t, link) = pair(4);
        link.from_device.send(b"answer".to_vec()).await.unwrap();
        link.refuse(LinkRefusal::NotBonded);
        assert_eq!(t.recv().await.unwrap(), b"answer");
        assert!(matches!(
            t.recv().await,
            Err(TransportError::Refused(LinkRefusal::NotBonded))
        ));
        assert!(matches!(
            t.send(b"x").await,
            Err(TransportError::Refused(LinkRefusal::NotBonded))
        ));
        let e = crate::smp::client::SmpError::Transport(TransportError::Refused(
            LinkRefusal::NoSmpService,
        ));
        assert_eq!(e.reason(), "no_smp_service");
        assert!(!LinkRefusal::NotBonded.is_transient() && LinkRefusal::Offline.is_transient());
    }

    #[tokio::test(start_paused = true)]
    async fn recv_is_cancel_safe() {
        let (mut t, link) = pair(2);
        // A recv cut by a timeout loses nothing.
        let r = tokio::time::timeout(Duration::from_millis(10), t.recv()).await;
        assert!(r.is_err());
        link.from_device.send(b"late".to_vec()).await.unwrap();
        assert_eq!(t.recv().await.unwrap(), b"late");
    }

    #[test]
    fn frame_limit_is_the_serial_consoles_by_default() {
        let (t, _link) = pair(1);
        assert_eq!(t.frame_limit(512), 512 - console::PACKET_OVERHEAD);
        assert_eq!(t.frame_limit(2), 0);
        let t = t.with_overhead(0);
        assert_eq!(t.frame_limit(251), 251);
    }
}
