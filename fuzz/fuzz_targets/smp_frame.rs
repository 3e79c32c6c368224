//! The SMP frame codec (PROTOCOLS §A.1–A.3) on arbitrary bytes: header and frame decoding, the
//! CBOR body and every payload parser. Nothing panics; whatever decodes encodes back to the same
//! bytes (header, frame) or the same value (payloads).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate_adapters::smp::error::device_error;
use wardgate_adapters::smp::header::{Frame, Header};
use wardgate_adapters::smp::image::{self, UploadRequest, UploadResponse};
use wardgate_adapters::smp::os::{self, Params};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(data) {
        assert_eq!(&h.encode()[..], &data[..8]);
    }
    let Ok(frame) = Frame::decode(data) else {
        return;
    };
    assert_eq!(frame.encode(), data);
    let Ok(body) = frame.body() else {
        return;
    };
    let _ = device_error(&body);
    let _ = os::echo_response(&body);
    if let Ok(p) = Params::from_body(&body) {
        assert_eq!(Params::from_body(&p.to_body()), Ok(p));
    }
    if let Ok(slots) = image::parse_state(&body) {
        assert_eq!(image::parse_state(&image::state_body(&slots)), Ok(slots));
    }
    if let Ok(r) = UploadRequest::from_body(&body) {
        assert_eq!(UploadRequest::from_body(&r.to_body()), Ok(r));
    }
    if let Ok(r) = UploadResponse::from_body(&body) {
        assert_eq!(UploadResponse::from_body(&r.to_body()), Ok(r));
    }
    if let Ok(images) = image::parse_slot_info(&body) {
        for i in &images {
            let _ = i.upload_limit();
        }
        assert_eq!(
            image::parse_slot_info(&image::slot_info_body(&images)),
            Ok(images)
        );
    }
});
