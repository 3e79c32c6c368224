//! The MQTT contract both sides share (DESIGN §5), in one place: the topics
//! `wardgate/v1/{site}/{ward}/{gateway}/…` and the TCP options of every MQTT connection. Used by
//! the gateway's uplink and by the upstream receiver alike.

use crate::batch::Origin;

/// `wardgate/v1/{site}/{ward}/{gateway}`.
pub fn prefix(o: &Origin) -> String {
    format!("wardgate/v1/{}/{}/{}", o.site, o.ward, o.gateway)
}

/// Signed batches, QoS 1: `…/batch`.
pub fn batch(o: &Origin) -> String {
    format!("{}/batch", prefix(o))
}

/// Gateway status, retained, also the Last Will (`offline`): `…/status`.
pub fn status(o: &Origin) -> String {
    format!("{}/status", prefix(o))
}

/// Upstream acknowledgements (ack mode `upstream`), subscribed: `…/ack`.
pub fn ack(o: &Origin) -> String {
    format!("{}/ack", prefix(o))
}

/// Per-device status, retained: `…/device/{device}/status`. The device id's `/` (none are
/// produced by wardgate) would be replaced by `_` to keep one topic level.
pub fn device_status(o: &Origin, device: &str) -> String {
    format!(
        "{}/device/{}/status",
        prefix(o),
        device.replace(['/', '+', '#'], "_")
    )
}

/// Firmware jobs and cancels from upstream (signed; usually retained), subscribed by a gateway
/// with a `[firmware]` section: `…/firmware/job`.
pub fn firmware_job(o: &Origin) -> String {
    format!("{}/firmware/job", prefix(o))
}

/// Splits a batch topic into (site, ward, gateway); `None` if it is not one.
pub fn parse_batch(topic: &str) -> Option<(&str, &str, &str)> {
    let mut it = topic.split('/');
    match (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) {
        (Some("wardgate"), Some("v1"), Some(site), Some(ward), Some(gw), Some("batch"), None) => {
            Some((site, ward, gw))
        }
        _ => None,
    }
}

/// TCP options for MQTT connections: no Nagle delay (a batch or an ack must not wait 40 ms for
/// a delayed ACK on the peer).
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n.set_connection_timeout(10);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_contract() {
        let o = Origin {
            gateway: "gw1".into(),
            site: "s".into(),
            ward: "w".into(),
        };
        assert_eq!(batch(&o), "wardgate/v1/s/w/gw1/batch");
        assert_eq!(status(&o), "wardgate/v1/s/w/gw1/status");
        assert_eq!(ack(&o), "wardgate/v1/s/w/gw1/ack");
        assert_eq!(
            device_status(&o, "serial:bed1"),
            "wardgate/v1/s/w/gw1/device/serial:bed1/status"
        );
        assert_eq!(
            parse_batch("wardgate/v1/s/w/gw1/batch"),
            Some(("s", "w", "gw1"))
        );
        assert_eq!(parse_batch("wardgate/v1/s/w/gw1/status"), None);
    }
}
