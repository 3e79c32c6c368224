//! Firmware job decode and verification (`wardgate::firmware::job`) with a fixed trust anchor
//! (the fuzz CA) and a fixed clock. The first byte picks: 0 the rest is a whole message
//! (COSE_Sign1 or anything): `verify` refuses or accepts it, never panics; 1 the rest is a
//! payload signed by the fixed firmware signer: it decodes or is refused with a reason; what
//! decodes encodes back to the same job and resolves against a fixed fleet without panicking;
//! 2 the rest is a payload signed by the fixed *gateway*: always refused (not a firmware signer).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use wardgate::config::devices::ConfiguredDevice;
use wardgate::firmware::job::{verify, Message, Reason};
use wardgate::firmware::target::Fleet;
use wardgate_fuzz::{ca_verifier, fixture};

/// The fixed clock (2026-12-07), inside the validity of the seed jobs in `corpus/firmware_job`
/// (made with `wardgate firmware job` and an imgtool image).
const NOW: u64 = 1_796_600_000;

fn fleet() -> Fleet {
    let d = |id: &str, name: &str| ConfiguredDevice {
        id: id.into(),
        name: name.into(),
    };
    Fleet::new(
        vec![
            d("serial:bed12", "bed12"),
            d("ble:A0:9E:1A:12:34:56", "bed12"),
            d("serial:bed14", "bed14"),
        ],
        BTreeMap::from([
            (
                "acme".to_owned(),
                vec!["serial:bed12".to_owned(), "bed14".to_owned()],
            ),
            ("polar".to_owned(), vec!["A0:9E:1A:12:34:56".to_owned()]),
        ]),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let trust = ca_verifier();
    let message = match sel % 3 {
        0 => rest.to_vec(),
        1 => fixture().firmware.sign(rest.to_vec()),
        _ => {
            let m = fixture().gateway.sign(rest.to_vec());
            let r = verify(&m, trust, NOW).expect_err("a gateway signed a firmware job");
            assert!(r.reason == Reason::NotAFirmwareSigner || r.reason == Reason::TooLarge);
            return;
        }
    };
    match verify(&message, trust, NOW) {
        Ok(v) => {
            let again = Message::from_cbor(&v.message.to_cbor()).expect("re-encoded job decodes");
            assert_eq!(again, v.message);
            if let Message::Job(j) = &v.message {
                let _ = fleet().resolve(&j.target.class, j.target.devices.as_deref());
            }
            let _ = v.message.to_json();
        }
        Err(r) => assert!(!r.reason.as_str().is_empty()),
    }
});
