//! Shared helpers of the fuzz targets: the split/unsplit check of the serial decoders, the
//! invariants every decoder output must hold, and fixed signing identities (deterministic, so
//! the signed seeds in `corpus/` made by `examples/make_corpus.rs` keep verifying).

use std::sync::{Arc, OnceLock};
use wardgate::signing::{Signer, Verifier};
use wardgate::uplink::acks::AckPolicy;
use wardgate_adapters::observation::Reading;
use wardgate_adapters::serial::protocols::{Decoded, Protocol};

/// A reading a decoder may emit: a finite value (special values become no reading).
pub fn check_reading(r: &Reading) {
    assert!(r.value.is_finite(), "non-finite reading {r:?}");
}

/// Tiny deterministic generator (xorshift64*), seeded from the input.
pub struct Rng(u64);

impl Rng {
    /// Seeded with the FNV-1a hash of `data`.
    pub fn from_data(data: &[u8]) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h | 1)
    }
    /// Next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn run(mut p: Box<dyn Protocol>, chunks: &[&[u8]]) -> (Vec<Decoded>, u64) {
    let _ = p.on_open();
    let _ = p.keepalive();
    let _ = p.reports_identity();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, &mut out);
    }
    p.flush(&mut out);
    (out, p.frames_ok())
}

/// Feeds `data` to fresh decoders whole, one byte at a time, and in pseudo-random chunks
/// (seeded by the data): the three runs must decode the same, nothing may panic, readings are
/// finite and error offsets lie inside the stream.
pub fn check_serial(make: fn() -> Box<dyn Protocol>, data: &[u8]) {
    let whole = run(make(), &[data]);
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    let one_by_one = run(make(), &bytes);
    assert_eq!(whole, one_by_one, "whole vs byte-by-byte");
    let mut rng = Rng::from_data(data);
    let mut chunks = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // Mostly short chunks (frame-sized), sometimes empty or long.
        let n = match rng.next() % 8 {
            0 => 0,
            1 => (rng.next() % 512) as usize,
            _ => (rng.next() % 16) as usize,
        }
        .min(rest.len());
        let (a, b) = rest.split_at(n);
        chunks.push(a);
        rest = b;
    }
    let split = run(make(), &chunks);
    assert_eq!(whole, split, "whole vs split");
    for d in &whole.0 {
        match d {
            Decoded::Reading(r) => check_reading(r),
            Decoded::Waveform { reading, waveform } => {
                check_reading(reading);
                assert_eq!(waveform.problem(), None, "{waveform:?}");
                assert_eq!(reading.value, waveform.physical(waveform.samples[0]));
            }
            Decoded::Error { offset, .. } => {
                assert!(*offset <= data.len() as u64, "error offset {offset} past the stream")
            }
            Decoded::Identity(_) => {}
        }
    }
}

/// Site, ward and gateway id of the fixed gateway identity.
pub const SITE: &str = "s";
/// Ward of the fixed gateway.
pub const WARD: &str = "w";
/// Id of the fixed gateway.
pub const GATEWAY: &str = "gw-1";
/// The batch topic of the fixed gateway.
pub const TOPIC: &str = "wardgate/v1/s/w/gw-1/batch";

/// Fixed test-only identities: a CA, a gateway and a receiver certificate it issued (Ed25519,
/// keys from fixed seeds: NOT secrets, never use them outside fuzzing).
pub struct Fixture {
    /// The CA certificate (DER) and its PEM.
    pub ca_der: Vec<u8>,
    /// PEM of the CA (what `Verifier::add_ca_file` reads).
    pub ca_pem: String,
    /// Gateway `gw-1` of `s`/`w` (SAN `urn:wardgate:s:w:gw-1`), clientAuth, issued by the CA.
    pub gateway_der: Vec<u8>,
    /// Receiver `up-a` (SAN `urn:wardgate-receiver:up-a`), clientAuth, issued by the CA.
    pub receiver_der: Vec<u8>,
    /// Signs as the gateway (`x5chain` = gateway certificate, CA).
    pub gateway: Signer,
    /// Signs as the receiver (`x5chain` = receiver certificate, CA).
    pub receiver: Signer,
    /// Signs as firmware signer `release` (SAN `urn:wardgate-firmware:release`; `x5chain` =
    /// its certificate, CA).
    pub firmware: Signer,
}

fn ed25519_pkcs8(seed: u8) -> Vec<u8> {
    // PKCS#8 v1 of an Ed25519 key (RFC 8410): fixed prefix, then the 32-byte seed.
    let mut der = hex_decode("302e020100300506032b657004220420");
    der.extend([seed; 32]);
    der
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn key(seed: u8) -> rcgen::KeyPair {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(ed25519_pkcs8(seed));
    rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519).unwrap()
}

fn leaf(
    uri: &str,
    cn: &str,
    serial: u64,
    seed: u8,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> (Vec<u8>, Signer) {
    let k = key(seed);
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.serial_number = Some(serial.into());
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    let cert = p.signed_by(&k, ca, ca_key).unwrap();
    let der = cert.der().to_vec();
    let signer = Signer::new(
        &der.clone().into(),
        &rustls_pki_types::PrivateKeyDer::Pkcs8(ed25519_pkcs8(seed).into()),
    )
    .unwrap()
    .with_chain(vec![der.clone().into(), ca.der().clone()]);
    (der, signer)
}

/// The fixture (built once).
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ca_key = key(1);
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "wardgate fuzz CA (test only)");
        p.serial_number = Some(1u64.into());
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let (gateway_der, gateway) =
            leaf("urn:wardgate:s:w:gw-1", GATEWAY, 2, 2, &ca, &ca_key);
        let (receiver_der, receiver) =
            leaf("urn:wardgate-receiver:up-a", "up-a", 3, 3, &ca, &ca_key);
        let (_, firmware) =
            leaf("urn:wardgate-firmware:release", "release", 4, 4, &ca, &ca_key);
        Fixture {
            ca_der: ca.der().to_vec(),
            ca_pem: ca.pem(),
            gateway_der,
            receiver_der,
            gateway,
            receiver,
            firmware,
        }
    })
}

/// A verifier trusting the CA (through `x5chain`), plus `listed` certificates.
fn verifier(listed: &[&[u8]]) -> Verifier {
    let f = fixture();
    let mut v = Verifier::default();
    for c in listed {
        v.add(&c.to_vec().into(), "listed").unwrap();
    }
    // Verifier trusts a CA only from a PEM file.
    let path = std::env::temp_dir().join(format!("wardgate-fuzz-ca-{}.pem", std::process::id()));
    std::fs::write(&path, &f.ca_pem).unwrap();
    v.add_ca_file(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    v
}

/// The receiver's verifier: lists the gateway certificate and trusts the CA.
pub fn receiver_verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| verifier(&[&fixture().gateway_der]))
}

/// A verifier that trusts the CA only (every signer goes through the `x5chain` path).
pub fn ca_verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| verifier(&[]))
}

/// The gateway's ack policy: gateway `gw-1`, the receiver certificate listed, and the CA.
pub fn ack_policy() -> &'static AckPolicy {
    static P: OnceLock<AckPolicy> = OnceLock::new();
    P.get_or_init(|| AckPolicy {
        gateway: GATEWAY.into(),
        receivers: Arc::new(verifier(&[&fixture().receiver_der])),
    })
}
