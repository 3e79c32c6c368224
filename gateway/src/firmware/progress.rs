//! What the relay tells upstream about each device of a job (issue 10 item 6): a CBOR map that
//! the uplink signs (COSE_Sign1, like every message of this gateway), encrypts like device status
//! (it names devices) and publishes **retained** on
//! `wardgate/v1/{site}/{ward}/{gateway}/firmware/{job}/progress/{device}` — one topic per device,
//! so the latest state of every device stays at the broker for an upstream that subscribes late
//! (`…/firmware/{job}/progress/+`). CDDL in docs/wire-format.md ("Firmware progress").
//!
//! States: `queued`, `downloading`, `verified`, `waiting` (with `reason`), `uploading` (`off`,
//! `len`, `rate_bps`), `testing`, `rebooting`, `confirming`, `done` (`version`), `failed` (`step`,
//! `reason`), `cancelled`. A refused job has no device: its `failed` goes to the device `-`.

use ciborium::Value;

/// Version of the progress payload.
pub const PROGRESS_VERSION: u64 = 1;

/// One progress report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Job id.
    pub job: String,
    /// Device id (`serial:…`, `ble:…`), or `-` for the job itself (a refused job).
    pub device: String,
    /// The state (module documentation).
    pub state: &'static str,
    /// Attempt number (1 = first), 0 before any attempt.
    pub attempt: u32,
    /// Upload: the device's offset, bytes.
    pub off: Option<u64>,
    /// Upload: the image length, bytes.
    pub len: Option<u64>,
    /// Upload: bytes per second since the upload started.
    pub rate_bps: Option<u64>,
    /// Why it waits or failed: a stable snake_case reason.
    pub reason: Option<String>,
    /// Which step failed (`download`, `verify`, `upload`, `test`, `reset`, `reconnect`,
    /// `confirm`, `accept`).
    pub step: Option<String>,
    /// The version the device runs (done).
    pub version: Option<String>,
    /// Waiting after a failed attempt: no new attempt before this, Unix ms (the back-off
    /// deadline, kept across restarts).
    pub retry_at_ms: Option<i64>,
    /// Gateway wall clock, Unix ms.
    pub time_ms: i64,
}

impl Progress {
    /// The topic suffix below the gateway's prefix: `firmware/{job}/progress/{device}`.
    pub fn topic_suffix(&self) -> String {
        let clean = |s: &str| s.replace(['/', '+', '#'], "_");
        format!(
            "firmware/{}/progress/{}",
            clean(&self.job),
            clean(&self.device)
        )
    }

    /// The CBOR payload (text keys; absent values left out).
    pub fn to_cbor(&self) -> Vec<u8> {
        let t = |s: &str| Value::Text(s.to_owned());
        let mut m = vec![
            (t("v"), Value::Integer(PROGRESS_VERSION.into())),
            (t("job"), t(&self.job)),
            (t("device"), t(&self.device)),
            (t("state"), t(self.state)),
            (t("attempt"), Value::Integer(self.attempt.into())),
            (t("time_ms"), Value::Integer(self.time_ms.into())),
        ];
        let mut num = |k: &str, v: Option<u64>| {
            if let Some(v) = v {
                m.push((t(k), Value::Integer(v.into())));
            }
        };
        num("off", self.off);
        num("len", self.len);
        num("rate_bps", self.rate_bps);
        if let Some(r) = self.retry_at_ms {
            m.push((t("retry_at_ms"), Value::Integer(r.into())));
        }
        for (k, v) in [
            ("reason", &self.reason),
            ("step", &self.step),
            ("version", &self.version),
        ] {
            if let Some(v) = v {
                m.push((t(k), t(v)));
            }
        }
        let mut out = Vec::new();
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::into_writer(&Value::Map(m), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_job_device_and_state_and_leaves_out_what_it_lacks() {
        let p = Progress {
            job: "fw-2026-12".into(),
            device: "serial:bed1".into(),
            state: "uploading",
            attempt: 1,
            off: Some(4096),
            len: Some(8192),
            rate_bps: Some(7000),
            time_ms: 1,
            ..Progress::default()
        };
        assert_eq!(p.topic_suffix(), "firmware/fw-2026-12/progress/serial:bed1");
        let v: Value = ciborium::from_reader(&p.to_cbor()[..]).unwrap();
        let Value::Map(m) = v else { panic!() };
        let keys: Vec<String> = m
            .iter()
            .map(|(k, _)| k.as_text().unwrap().to_owned())
            .collect();
        assert_eq!(
            keys,
            ["v", "job", "device", "state", "attempt", "time_ms", "off", "len", "rate_bps"]
        );
    }
}
