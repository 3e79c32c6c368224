//! Signed MCUboot images made in Rust, for the demo (which must run without Python and imgtool;
//! the tests make theirs with `imgtool` and check these against `imgtool verify`).
//!
//! Layout as imgtool 2.x writes it (PROTOCOLS.md §A.6, MCUboot `bootutil/image.h`), with
//! `--header-size 0x200 --pad-header --align 4` and an ECDSA P-256 key:
//!
//! ```text
//! header (32 B: magic 0x96f3b83d, load_addr 0, hdr_size 0x200, protect_tlv_size 0, img_size,
//!         flags 0, version major.minor.revision+build), zero padding to 0x200
//! body (img_size bytes)
//! TLV info {0x6907, tlv_tot}  KEYHASH (0x01, 32 B) = SHA-256 of the public key (DER
//!         SubjectPublicKeyInfo)  SHA256 (0x10, 32 B) = SHA-256 of header + body
//!         ECDSA_SIG (0x22) = ECDSA P-256 / SHA-256 signature of header + body (ASN.1 DER)
//! ```

use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

/// `ih_magic`.
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
/// Header size the images use (imgtool `--header-size 0x200`).
pub const HEADER_SIZE: u16 = 0x200;

/// An ECDSA P-256 image signing key (the device trusts its public key).
pub struct SigningKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    /// A fresh key.
    ///
    /// Errors: the system random source failed.
    pub fn generate() -> anyhow::Result<SigningKey> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate an ECDSA P-256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("ECDSA key: {e}"))?;
        Ok(SigningKey {
            pair,
            pkcs8: pkcs8.as_ref().to_vec(),
        })
    }

    /// The private key as PKCS#8 PEM (what `imgtool keygen` writes; `imgtool verify -k` reads it).
    pub fn pkcs8_pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }

    /// The public key as DER SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, the
    /// uncompressed point), as imgtool hashes it for KEYHASH.
    pub fn public_spki_der(&self) -> Vec<u8> {
        // SEQUENCE { SEQUENCE { OID 1.2.840.10045.2.1, OID 1.2.840.10045.3.1.7 }, BIT STRING }
        const PREFIX: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        der
    }

    /// KEYHASH: SHA-256 of [`Self::public_spki_der`].
    pub fn key_hash(&self) -> [u8; 32] {
        sha256(&self.public_spki_der())
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// `major.minor.revision+build`, the MCUboot image version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
    /// Revision.
    pub revision: u16,
    /// Build number.
    pub build: u32,
}

impl Version {
    /// Parses `1.2.3` or `1.2.3+4`.
    pub fn parse(s: &str) -> Option<Version> {
        let (main, build) = match s.split_once('+') {
            Some((m, b)) => (m, b.parse().ok()?),
            None => (s, 0),
        };
        let mut it = main.split('.');
        let v = Version {
            major: it.next()?.parse().ok()?,
            minor: it.next().unwrap_or("0").parse().ok()?,
            revision: it.next().unwrap_or("0").parse().ok()?,
            build,
        };
        it.next().is_none().then_some(v)
    }
}

/// A signed image of `body` (the application binary) with `version`, signed by `key`.
/// Returns the whole file (header, body, TLVs). Its image hash (SHA256 TLV) is what
/// [`crate::smp_device::mcuboot::read`] computes; the SMP upload `sha` is the SHA-256 of the whole file.
pub fn build(body: &[u8], version: Version, key: &SigningKey) -> anyhow::Result<Vec<u8>> {
    let img_size = u32::try_from(body.len())?;
    let mut f = Vec::with_capacity(HEADER_SIZE as usize + body.len() + 160);
    f.extend(IMAGE_MAGIC.to_le_bytes());
    f.extend(0u32.to_le_bytes()); // load address
    f.extend(HEADER_SIZE.to_le_bytes());
    f.extend(0u16.to_le_bytes()); // protected TLV size
    f.extend(img_size.to_le_bytes());
    f.extend(0u32.to_le_bytes()); // flags
    f.push(version.major);
    f.push(version.minor);
    f.extend(version.revision.to_le_bytes());
    f.extend(version.build.to_le_bytes());
    f.extend(0u32.to_le_bytes()); // pad
    f.resize(HEADER_SIZE as usize, 0);
    f.extend_from_slice(body);
    let hash = sha256(&f);
    let sig = key
        .pair
        .sign(&SystemRandom::new(), &f)
        .map_err(|_| anyhow::anyhow!("ECDSA signing failed"))?;
    let tlvs: [(u8, &[u8]); 3] = [(0x01, &key.key_hash()), (0x10, &hash), (0x22, sig.as_ref())];
    let tot: usize = 4 + tlvs.iter().map(|(_, v)| 4 + v.len()).sum::<usize>();
    f.extend(0x6907u16.to_le_bytes());
    f.extend(u16::try_from(tot)?.to_le_bytes());
    for (kind, value) in tlvs {
        f.push(kind);
        f.push(0);
        f.extend(u16::try_from(value.len())?.to_le_bytes());
        f.extend_from_slice(value);
    }
    Ok(f)
}

/// A deterministic application body of `len` bytes (a recognisable pattern, not random, so the
/// demo's images are the same each run apart from the signature).
pub fn demo_body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_has_its_header_fields_and_a_hash_tlv_over_header_and_body() {
        let key = SigningKey::generate().unwrap();
        let body = demo_body(1000, 7);
        let v = Version::parse("1.4.2+9").unwrap();
        let img = build(&body, v, &key).unwrap();
        assert_eq!(&img[..4], &[0x3d, 0xb8, 0xf3, 0x96]);
        assert_eq!(u32::from_le_bytes(img[12..16].try_into().unwrap()), 1000);
        assert_eq!(&img[20..24], &[1, 4, 2, 0]);
        assert_eq!(u32::from_le_bytes(img[24..28].try_into().unwrap()), 9);
        let tlv = 0x200 + 1000;
        assert_eq!(&img[tlv..tlv + 2], &[0x07, 0x69]);
        let hash = crate::smp_device::mcuboot::read(&img).unwrap().computed;
        let at = img.windows(4).position(|w| w == [0x10, 0, 32, 0]).unwrap() + 4;
        assert_eq!(&img[at..at + 32], &hash);
        assert_eq!(key.key_hash(), sha256(&key.public_spki_der()));
        assert_eq!(key.public_spki_der().len(), 91);
    }

    #[test]
    fn versions_parse_as_imgtool_writes_them() {
        assert_eq!(
            Version::parse("2.0.1"),
            Some(Version {
                major: 2,
                minor: 0,
                revision: 1,
                build: 0
            })
        );
        assert_eq!(Version::parse("1.2.3.4"), None);
        assert_eq!(Version::parse("x"), None);
    }
}
