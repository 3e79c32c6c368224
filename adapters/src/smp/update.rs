//! The whole firmware update of one device over any [`Transport`] (FIRMWARE.md §2): the one
//! sequence the bench CLI (`wardgate firmware upload`, a serial port) and the relay (an
//! [`super::channel::ChannelTransport`] through the device's adapter) both run.
//!
//! 1. Image list: when the active slot already holds the image's MCUboot hash and is confirmed
//!    (for [`UpdateMode::TestOnly`]: merely runs it), success at once, nothing uploaded (a re-run
//!    is idempotent). When it runs the image unconfirmed (an earlier run was interrupted after
//!    the reset, e.g. the relay was killed), test-confirm and confirm-only only confirm it: an
//!    upload would overwrite slot 1, the image MCUboot reverts to. When slot 1 already holds the
//!    image pending (interrupted between test/confirm and the reset), straight to the reset.
//! 2. Slot-size pre-check ([`SmpClient::check_fits`]: slot info; an image larger than the slot
//!    fails with `image_too_large` before anything is erased or sent), then the upload into
//!    slot 1, read in chunks from the [`ImageSource`] (never the whole image in memory) and
//!    checked against the MCUboot hash ([`SmpClient::upload_verified`]).
//! 3. Per mode: test-confirm = test → reset → reconnect → list → confirm → list; confirm-only =
//!    confirm (permanent) → reset → reconnect → list; test-only = test → reset → reconnect → list.
//! 4. Reconnect: `reconnect` gives a fresh transport (the bench reopens the port, the relay asks
//!    the adapter for a new link) and an echo must answer; tried every 250 ms until `swap_time`
//!    has passed (MCUboot swaps the slots meanwhile).
//! 5. Success only when the active slot has the image's hash and (but for test-only) is
//!    confirmed.
//!
//! Every failure is an [`UpdateError`] with the step and a machine-readable reason.

use super::client::{
    ImageSource, Progress, SmpClient, SmpError, Transport, TransportError, UploadOptions,
    UploadReport,
};
use super::image::SlotState;
use std::future::Future;
use std::time::Duration;

/// What happens after the upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateMode {
    /// Test, reset, wait for the device, confirm once it runs the new image.
    TestConfirm,
    /// Confirm (permanent) before the reset: no trial boot.
    ConfirmOnly,
    /// Test and reset only: the device reverts at its next reset unless someone confirms.
    TestOnly,
}

/// Progress events of [`apply`], in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateStep {
    /// `off` of `len` bytes acknowledged by the device.
    Uploading {
        /// The device's offset.
        off: u64,
        /// Image length.
        len: u64,
    },
    /// Marking the image for a trial boot.
    Testing,
    /// Resetting the device and waiting for it to come back.
    Rebooting,
    /// Confirming the image (before the reset in confirm-only, after it in test-confirm).
    Confirming,
}

/// What an update did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateReport {
    /// The upload (`chunks == 0`: nothing uploaded, the device already ran the image).
    pub upload: UploadReport,
    /// The version the device runs afterwards.
    pub version: String,
    /// Whether the running image is confirmed (false only in test-only mode).
    pub confirmed: bool,
}

/// Why an update failed.
#[derive(Debug, thiserror::Error)]
#[error("firmware {step} failed (reason={reason}): {message}")]
pub struct UpdateError {
    /// `upload`, `test`, `reset`, `reconnect`, `confirm` or `verify`.
    pub step: &'static str,
    /// Machine-readable, snake_case: [`SmpError::reason`] (`timeout`, `bad_state`,
    /// `image_too_large`, `hash_mismatch`, `image_changed`, `device:<NAME>` …) with `link_lost`
    /// for a transport the other side
    /// closed; `device_gone` (no answer within the swap time), `reverted` (the device came back
    /// on another image), `not_running`, `not_confirmed`.
    pub reason: String,
    /// For a person.
    pub message: String,
}

impl UpdateError {
    fn new(step: &'static str, reason: &str, message: impl Into<String>) -> UpdateError {
        UpdateError {
            step,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    fn smp(step: &'static str, e: SmpError) -> UpdateError {
        let reason = match &e {
            SmpError::Transport(TransportError::Closed) => "link_lost".to_string(),
            _ => e.reason(),
        };
        let message = match e.device_error() {
            Some(d) if d.is_bad_state() => format!(
                "{e}: slot 1 holds a pending image that cannot be erased; reset the device so \
                 MCUboot boots it (or reverts), then try again"
            ),
            _ => e.to_string(),
        };
        UpdateError {
            step,
            reason,
            message,
        }
    }
}

/// Pause before the first reconnect attempt: the device must go down first.
const SETTLE: Duration = Duration::from_millis(200);
/// Between reconnect attempts.
const RETRY: Duration = Duration::from_millis(250);
/// Longest wait for the echo of one reconnect attempt.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

fn active(slots: &[SlotState]) -> Option<&SlotState> {
    slots.iter().find(|s| s.slot == 0 && s.active)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the update of one device (see the module documentation). `client` ends on the
/// transport `reconnect` gave last. `image` is the signed MCUboot file (a
/// [`super::source::FileImage`] held open: read in chunks), `mcuboot_hash` its SHA256 TLV
/// (checked by the caller against the file).
pub async fn apply<T, S, F, Fut>(
    client: &mut SmpClient<T>,
    image: &S,
    mcuboot_hash: &[u8],
    mode: UpdateMode,
    swap_time: Duration,
    mut reconnect: F,
    progress: &mut (dyn FnMut(UpdateStep) + Send),
) -> Result<UpdateReport, UpdateError>
where
    T: Transport,
    S: ImageSource + ?Sized,
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = Result<T, TransportError>> + Send,
{
    let before = client
        .image_list()
        .await
        .map_err(|e| UpdateError::smp("upload", e))?;
    let nothing_uploaded = UploadReport {
        len: image.len(),
        resumed_from: 0,
        bytes_sent: 0,
        chunks: 0,
        restarts: 0,
        matched: None,
        elapsed: Duration::ZERO,
    };
    if let Some(s0) = active(&before) {
        if s0.hash.as_deref() == Some(mcuboot_hash)
            && (s0.confirmed || mode == UpdateMode::TestOnly)
        {
            log::info!(
                "smp: the device already runs {} (hash {}); nothing to upload",
                s0.version,
                hex(mcuboot_hash)
            );
            return Ok(UpdateReport {
                upload: nothing_uploaded,
                version: s0.version.clone(),
                confirmed: s0.confirmed,
            });
        }
        if s0.hash.as_deref() == Some(mcuboot_hash) {
            // It runs the new image on test: an earlier run was interrupted after the reset
            // (the relay restarted). Confirm it; uploading again would overwrite slot 1, the
            // image MCUboot reverts to, and the next reset would "revert" to the new one.
            log::info!(
                "smp: the device runs {} on test (hash {}); confirming it",
                s0.version,
                hex(mcuboot_hash)
            );
            return confirm_running(client, mcuboot_hash, nothing_uploaded, progress).await;
        }
    }
    // Slot 1 already holds the image marked for the next boot (interrupted between the
    // test/confirm request and the reset): the device refuses an upload to a pending slot, so
    // go straight to the reset.
    let pending = before
        .iter()
        .any(|s| s.slot == 1 && s.pending && s.hash.as_deref() == Some(mcuboot_hash));
    let upload = if pending {
        log::info!(
            "smp: slot 1 holds the image (hash {}) pending; resetting into it",
            hex(mcuboot_hash)
        );
        nothing_uploaded
    } else {
        // The slot must hold the image: refused before the slot is erased.
        client
            .check_fits(image.len(), 0)
            .await
            .map_err(|e| UpdateError::smp("upload", e))?;
        let upload = client
            .upload_verified(
                image,
                mcuboot_hash,
                UploadOptions::default(),
                &mut |p: Progress| {
                    progress(UpdateStep::Uploading {
                        off: p.off,
                        len: p.len,
                    })
                },
            )
            .await
            .map_err(|e| UpdateError::smp("upload", e))?;
        match mode {
            UpdateMode::TestConfirm | UpdateMode::TestOnly => {
                progress(UpdateStep::Testing);
                client
                    .test(mcuboot_hash)
                    .await
                    .map_err(|e| UpdateError::smp("test", e))?;
            }
            UpdateMode::ConfirmOnly => {
                progress(UpdateStep::Confirming);
                client
                    .confirm(Some(mcuboot_hash))
                    .await
                    .map_err(|e| UpdateError::smp("confirm", e))?;
            }
        }
        upload
    };
    progress(UpdateStep::Rebooting);
    match client.reset(false).await {
        Ok(()) => {}
        // A device may go down before its answer is out.
        Err(SmpError::Transport(TransportError::Closed)) => {
            log::info!("smp: the link closed at the reset before the answer");
        }
        Err(e) => return Err(UpdateError::smp("reset", e)),
    }
    wait_back(client, swap_time, &mut reconnect).await?;
    let slots = client
        .image_list()
        .await
        .map_err(|e| UpdateError::smp("verify", e))?;
    let Some(s0) = active(&slots).filter(|s| s.hash.as_deref() == Some(mcuboot_hash)) else {
        let old = slots
            .iter()
            .find(|s| s.slot == 0)
            .map_or("nothing".to_string(), |s| s.version.clone());
        return Err(UpdateError::new(
            "verify",
            "reverted",
            format!(
                "the device came back running {old}, not the new image (hash {}): MCUboot \
                 reverted it or did not swap",
                hex(mcuboot_hash)
            ),
        ));
    };
    let version = s0.version.clone();
    match mode {
        UpdateMode::TestOnly => Ok(UpdateReport {
            upload,
            version,
            confirmed: s0.confirmed,
        }),
        UpdateMode::ConfirmOnly => confirmed_report(&slots, mcuboot_hash, upload),
        UpdateMode::TestConfirm => confirm_running(client, mcuboot_hash, upload, progress).await,
    }
}

/// Confirms the running image and checks that the device lists it active and confirmed.
async fn confirm_running<T: Transport>(
    client: &mut SmpClient<T>,
    mcuboot_hash: &[u8],
    upload: UploadReport,
    progress: &mut (dyn FnMut(UpdateStep) + Send),
) -> Result<UpdateReport, UpdateError> {
    progress(UpdateStep::Confirming);
    client
        .confirm(None)
        .await
        .map_err(|e| UpdateError::smp("confirm", e))?;
    let slots = client
        .image_list()
        .await
        .map_err(|e| UpdateError::smp("verify", e))?;
    confirmed_report(&slots, mcuboot_hash, upload)
}

/// `slots` show the image active and confirmed: the report; otherwise why not.
fn confirmed_report(
    slots: &[SlotState],
    mcuboot_hash: &[u8],
    upload: UploadReport,
) -> Result<UpdateReport, UpdateError> {
    match active(slots) {
        Some(s) if s.hash.as_deref() == Some(mcuboot_hash) && s.confirmed => Ok(UpdateReport {
            upload,
            version: s.version.clone(),
            confirmed: true,
        }),
        Some(s) if s.hash.as_deref() == Some(mcuboot_hash) => Err(UpdateError::new(
            "verify",
            "not_confirmed",
            format!(
                "the device runs {} but does not list it confirmed",
                s.version
            ),
        )),
        _ => Err(UpdateError::new(
            "verify",
            "not_running",
            "the device does not run the new image after the confirm",
        )),
    }
}

/// Gets a fresh transport from `reconnect` and echoes until the device answers or `swap_time`
/// has passed; the client then runs on that transport.
async fn wait_back<T, F, Fut>(
    client: &mut SmpClient<T>,
    swap_time: Duration,
    reconnect: &mut F,
) -> Result<(), UpdateError>
where
    T: Transport,
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = Result<T, TransportError>> + Send,
{
    let deadline = tokio::time::Instant::now() + swap_time;
    tokio::time::sleep(SETTLE).await;
    let probe = super::client::ClientSettings {
        retries: 0,
        timeout: client.settings().timeout.min(PROBE_TIMEOUT),
        ..client.settings().clone()
    };
    let mut last = String::from("never connected");
    let mut attempts = 0u32;
    while tokio::time::Instant::now() < deadline {
        attempts += 1;
        match tokio::time::timeout_at(deadline, reconnect()).await {
            Err(_) => break,
            Ok(Err(e)) => last = e.to_string(),
            Ok(Ok(t)) => {
                let mut c = SmpClient::new(t, probe.clone());
                match c.echo("wardgate").await {
                    Ok(_) => {
                        log::info!("smp: the device is back after the reset ({attempts} attempts)");
                        client.replace_transport(c.into_transport());
                        return Ok(());
                    }
                    Err(e) => last = e.to_string(),
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
    Err(UpdateError::new(
        "reconnect",
        "device_gone",
        format!(
            "the device did not answer within {:.0} s after the reset (last: {last})",
            swap_time.as_secs_f64()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::channel::{self, ChannelTransport, SmpLink};
    use crate::smp::header::Frame;
    use crate::smp::image::{self as img, UploadRequest, UploadResponse};
    use crate::smp::{cbor, os};
    use ciborium::Value;
    use std::sync::{Arc, Mutex};

    /// An MCUboot-like device model served over channel links; a reset drops the link and the
    /// device is unreachable for `swap` (links opened meanwhile are dropped at once).
    struct Model {
        slot0: SlotState,
        slot1: Option<SlotState>,
        received: u64,
        total: u64,
        new_hash: Vec<u8>,
        boot_fails: bool,
        down_until: Option<tokio::time::Instant>,
        swap: Duration,
        uploads: u32,
    }

    fn slot(n: u32, version: &str, hash: &[u8]) -> SlotState {
        SlotState {
            image: None,
            slot: n,
            version: version.into(),
            hash: Some(hash.to_vec()),
            bootable: true,
            pending: false,
            confirmed: n == 0,
            active: n == 0,
            permanent: false,
        }
    }

    impl Model {
        fn new(new_hash: &[u8]) -> Arc<Mutex<Model>> {
            Arc::new(Mutex::new(Model {
                slot0: slot(0, "1.0.0", &[1; 32]),
                slot1: None,
                received: 0,
                total: 0,
                new_hash: new_hash.to_vec(),
                boot_fails: false,
                down_until: None,
                swap: Duration::from_secs(2),
                uploads: 0,
            }))
        }

        fn slots(&self) -> Value {
            let mut v = vec![self.slot0.clone()];
            v.extend(self.slot1.clone());
            img::state_body(&v)
        }

        fn boot(&mut self) {
            let Some(s1) = self.slot1.clone() else { return };
            if !self.slot0.confirmed {
                let old = std::mem::replace(
                    &mut self.slot0,
                    slot(0, &s1.version, s1.hash.as_deref().unwrap()),
                );
                self.slot1 = Some(SlotState {
                    slot: 1,
                    active: false,
                    confirmed: false,
                    ..old
                });
            } else if s1.pending {
                let mut new = slot(0, &s1.version, s1.hash.as_deref().unwrap());
                new.confirmed = s1.permanent;
                let old = std::mem::replace(&mut self.slot0, new);
                self.slot1 = Some(SlotState {
                    slot: 1,
                    active: false,
                    confirmed: false,
                    ..old
                });
                if self.boot_fails && !s1.permanent {
                    self.boot();
                }
            }
        }

        /// The answer to one request, and whether the device resets after it.
        fn handle(&mut self, f: &Frame) -> (Value, bool) {
            let body = f.body().unwrap();
            match (f.header.group, f.header.cmd) {
                (os::GROUP, os::CMD_ECHO) => (
                    cbor::map([("r", cbor::get(&body, "d").unwrap().clone())]),
                    false,
                ),
                (os::GROUP, os::CMD_RESET) => (cbor::map([]), true),
                (img::GROUP, img::CMD_STATE) if f.header.op == crate::smp::header::Op::Read => {
                    (self.slots(), false)
                }
                (img::GROUP, img::CMD_STATE) => {
                    let confirm = cbor::flag(&body, "confirm").unwrap();
                    let hash = match cbor::get(&body, "hash") {
                        Some(Value::Bytes(b)) => Some(b.clone()),
                        _ => None,
                    };
                    if confirm && (hash.is_none() || hash == self.slot0.hash) {
                        self.slot0.confirmed = true;
                    } else if let Some(s1) = self.slot1.as_mut().filter(|s| s.hash == hash) {
                        s1.pending = true;
                        s1.permanent = confirm;
                    }
                    (self.slots(), false)
                }
                (img::GROUP, img::CMD_UPLOAD) => {
                    self.uploads += 1;
                    let r = UploadRequest::from_body(&body).unwrap();
                    let len = r.start.as_ref().map_or(0, |s| s.len);
                    if r.off == 0 {
                        self.received = 0;
                        self.slot1 = None;
                        self.total = len;
                    }
                    if r.off == self.received {
                        self.received += r.data.len() as u64;
                    }
                    let done = self.received == self.total;
                    if done {
                        self.slot1 = Some(slot(1, "2.0.0", &self.new_hash.clone()));
                        self.slot1.as_mut().unwrap().confirmed = false;
                    }
                    let rsp = UploadResponse {
                        off: Some(self.received),
                        matched: done.then_some(true),
                    };
                    (rsp.to_body(), false)
                }
                _ => (cbor::map([("rc", Value::from(8))]), false),
            }
        }
    }

    /// Serves one link until the device resets (the link is dropped with it).
    async fn serve(model: Arc<Mutex<Model>>, mut link: SmpLink) {
        while let Some(bytes) = link.to_device.recv().await {
            let f = Frame::decode(&bytes).unwrap();
            let (body, reset) = model.lock().unwrap().handle(&f);
            let h = f.header;
            let rsp = Frame::new(h.version, h.op.response(), h.group, h.cmd, h.seq, &body).unwrap();
            if link.from_device.send(rsp.encode()).await.is_err() {
                return;
            }
            if reset {
                let mut m = model.lock().unwrap();
                m.down_until = Some(tokio::time::Instant::now() + m.swap);
                m.boot();
                return;
            }
        }
    }

    /// What the relay's reconnect does: a new link, served unless the device is down.
    fn connect(model: &Arc<Mutex<Model>>) -> ChannelTransport {
        let (t, link) = channel::pair(4);
        let down = model
            .lock()
            .unwrap()
            .down_until
            .is_some_and(|u| tokio::time::Instant::now() < u);
        if !down {
            tokio::spawn(serve(model.clone(), link));
        }
        t
    }

    async fn run(
        model: &Arc<Mutex<Model>>,
        mode: UpdateMode,
        swap_time: Duration,
    ) -> (Result<UpdateReport, UpdateError>, Vec<UpdateStep>) {
        let image: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let hash = model.lock().unwrap().new_hash.clone();
        let mut c = SmpClient::new(
            connect(model),
            super::super::client::ClientSettings::default(),
        );
        let m = model.clone();
        let mut steps = Vec::new();
        let r = apply(
            &mut c,
            &image,
            &hash,
            mode,
            swap_time,
            move || {
                let t = connect(&m);
                async move { Ok(t) }
            },
            &mut |s| {
                if !matches!(s, UpdateStep::Uploading { .. }) {
                    steps.push(s)
                }
            },
        )
        .await;
        (r, steps)
    }

    #[tokio::test(start_paused = true)]
    async fn test_confirm_runs_the_new_image_confirmed_and_a_rerun_uploads_nothing() {
        let model = Model::new(&[7; 32]);
        let (r, steps) = run(&model, UpdateMode::TestConfirm, Duration::from_secs(10)).await;
        let r = r.unwrap();
        assert_eq!((r.version.as_str(), r.confirmed), ("2.0.0", true));
        assert_eq!(r.upload.bytes_sent, 3000);
        assert_eq!(
            steps,
            [
                UpdateStep::Testing,
                UpdateStep::Rebooting,
                UpdateStep::Confirming
            ]
        );
        let uploads = model.lock().unwrap().uploads;
        let (again, steps) = run(&model, UpdateMode::TestConfirm, Duration::from_secs(10)).await;
        let again = again.unwrap();
        assert_eq!((again.upload.chunks, again.confirmed), (0, true));
        assert!(steps.is_empty());
        assert_eq!(model.lock().unwrap().uploads, uploads);
    }

    #[tokio::test(start_paused = true)]
    async fn confirm_only_and_test_only() {
        let model = Model::new(&[7; 32]);
        let (r, steps) = run(&model, UpdateMode::ConfirmOnly, Duration::from_secs(10)).await;
        assert!(r.unwrap().confirmed);
        assert_eq!(steps, [UpdateStep::Confirming, UpdateStep::Rebooting]);
        let model = Model::new(&[7; 32]);
        let (r, steps) = run(&model, UpdateMode::TestOnly, Duration::from_secs(10)).await;
        let r = r.unwrap();
        assert_eq!((r.version.as_str(), r.confirmed), ("2.0.0", false));
        assert_eq!(steps, [UpdateStep::Testing, UpdateStep::Rebooting]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_test_image_that_does_not_boot_is_reverted() {
        let model = Model::new(&[7; 32]);
        model.lock().unwrap().boot_fails = true;
        let e = run(&model, UpdateMode::TestConfirm, Duration::from_secs(10))
            .await
            .0
            .unwrap_err();
        assert_eq!((e.step, e.reason.as_str()), ("verify", "reverted"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_that_stays_down_is_gone_after_the_swap_time() {
        let model = Model::new(&[7; 32]);
        model.lock().unwrap().swap = Duration::from_secs(3600);
        let t0 = tokio::time::Instant::now();
        let e = run(&model, UpdateMode::TestConfirm, Duration::from_secs(5))
            .await
            .0
            .unwrap_err();
        assert_eq!(
            (e.step, e.reason.as_str()),
            ("reconnect", "device_gone"),
            "{e}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_lost_mid_upload_is_link_lost() {
        let model = Model::new(&[7; 32]);
        // The adapter drops the link at once (the port is gone).
        model.lock().unwrap().down_until =
            Some(tokio::time::Instant::now() + Duration::from_secs(60));
        let e = run(&model, UpdateMode::TestConfirm, Duration::from_secs(5))
            .await
            .0
            .unwrap_err();
        assert_eq!((e.step, e.reason.as_str()), ("upload", "link_lost"), "{e}");
    }
}
