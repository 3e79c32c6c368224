//! MCUboot image parser (pure: no I/O beyond the `Read + Seek` it is given; never panics).
//!
//! The format is PROTOCOLS.md §A.6 (MCUboot `bootutil/image.h`; imgtool writes it):
//!
//! ```text
//! 0                hdr_size           hdr_size+img_size              +protect_tlv_size
//! | header (32 B)…  | body (img_size)  | protected TLVs 0x6908 (opt.) | TLVs 0x6907 | padding…
//! ```
//!
//! - Header, little-endian: magic `0x96f3b83d`, load address, `hdr_size`, `protect_tlv_size`,
//!   `img_size`, flags, version `major.minor.revision+build`.
//! - TLV areas: `{u16 magic, u16 tlv_tot}` (tot includes these 4 bytes), then entries
//!   `{u8 type, u8 pad, u16 len}` + value. The protected area (magic `0x6908`) is present iff
//!   `protect_tlv_size > 0` and its `tlv_tot` equals it.
//! - **Image hash** (the SHA256 TLV 0x10, what `imgtool verify` prints as "Image digest" and what
//!   the device reports as the slot hash): SHA-256 over bytes `[0, hdr_size + img_size +
//!   protect_tlv_size)`: header, body and protected TLVs.
//! - **File SHA-256**: over the whole file as uploaded, trailing padding included: the SMP upload
//!   `sha` (PROTOCOLS §A.2), a different value.
//!
//! Every error names the byte offset where the image stops making sense ([`ImageError`]).
//! Bounded: at most [`MAX_TLVS`] entries per area; the file is hashed in 64 KiB pieces, never
//! held whole ([`parse_reader`]), so a relay checks a cached image without loading it.

use ring::digest;
use std::io::{Read, Seek, SeekFrom};

/// `ih_magic` of an MCUboot image (file bytes `3d b8 f3 96`).
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
/// The legacy V1 magic (refused: MCUboot has not written it for years).
pub const IMAGE_MAGIC_V1: u32 = 0x96f3_b83c;
/// Magic of the unprotected TLV area.
pub const TLV_INFO_MAGIC: u16 = 0x6907;
/// Magic of the protected TLV area.
pub const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
/// Length of the fixed header, bytes.
pub const HEADER_LEN: u64 = 32;
/// Most TLV entries accepted in one area (real images have 3–8).
pub const MAX_TLVS: usize = 64;

/// TLV type: hash of the signing public key.
pub const TLV_KEYHASH: u8 = 0x01;
/// TLV type: the signing public key itself.
pub const TLV_PUBKEY: u8 = 0x02;
/// TLV type: SHA-256 image hash.
pub const TLV_SHA256: u8 = 0x10;

/// Image header flags (`ih_flags`, §A.6).
pub const FLAG_NAMES: &[(u32, &str)] = &[
    (0x01, "PIC"),
    (0x04, "ENCRYPTED_AES128"),
    (0x08, "ENCRYPTED_AES256"),
    (0x10, "NON_BOOTABLE"),
    (0x20, "RAM_LOAD"),
];

/// The name of a TLV type (PROTOCOLS §A.6 table, from smpclient's `mcuboot.py`), or `None`.
pub fn tlv_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        0x01 => "KEYHASH",
        0x02 => "PUBKEY",
        0x10 => "SHA256",
        0x11 => "SHA384",
        0x12 => "SHA512",
        0x20 => "RSA2048_PSS",
        0x21 => "ECDSA224",
        0x22 => "ECDSA_SIG",
        0x23 => "RSA3072_PSS",
        0x24 => "ED25519",
        0x25 => "SIG_PURE",
        0x30 => "ENC_RSA2048",
        0x31 => "ENC_KW",
        0x32 => "ENC_EC256",
        0x33 => "ENC_X25519",
        0x34 => "ENC_X25519_SHA512",
        0x40 => "DEPENDENCY",
        0x50 => "SEC_CNT",
        0x60 => "BOOT_RECORD",
        0x70 => "DECOMP_SIZE",
        0x71 => "DECOMP_SHA",
        0x72 => "DECOMP_SIGNATURE",
        0x73 => "COMP_DEC_SIZE",
        0x80 => "UUID_VID",
        0x81 => "UUID_CID",
        _ => return None,
    })
}

/// Whether a TLV type carries the image signature (RSA, ECDSA, Ed25519, pure signature).
pub fn is_signature(kind: u8) -> bool {
    (0x20..=0x25).contains(&kind)
}

/// An image version `major.minor.revision+build` (header offset 20: u8, u8, u16, u32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ImageVersion {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
    /// Revision.
    pub revision: u16,
    /// Build number.
    pub build: u32,
}

impl ImageVersion {
    /// Parses `M.m.r` or `M.m.r+b` (imgtool's `--version` syntax; `M.m` and `M` too, missing
    /// parts 0). Errors: anything else, or a part larger than its field.
    pub fn parse(s: &str) -> Result<ImageVersion, String> {
        let bad = || {
            format!("`{s}` is not an MCUboot version (major.minor.revision[+build], e.g. 1.2.3+4)")
        };
        let (main, build) = match s.split_once('+') {
            Some((m, b)) => (m, Some(b)),
            None => (s, None),
        };
        let num = |p: &str| -> Result<u64, String> {
            if p.is_empty() || p.len() > 10 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u64>().map_err(|_| bad())
        };
        let parts: Vec<&str> = main.split('.').collect();
        if parts.is_empty() || parts.len() > 3 {
            return Err(bad());
        }
        let mut v = [0u64; 3];
        for (i, p) in parts.iter().enumerate() {
            v[i] = num(p)?;
        }
        let build = build.map(num).transpose()?.unwrap_or(0);
        Ok(ImageVersion {
            major: u8::try_from(v[0]).map_err(|_| bad())?,
            minor: u8::try_from(v[1]).map_err(|_| bad())?,
            revision: u16::try_from(v[2]).map_err(|_| bad())?,
            build: u32::try_from(build).map_err(|_| bad())?,
        })
    }
}

/// A version as an SMP device reports it (Zephyr's `img_mgmt`: `1.2.3`, or `1.2.3.4` when the
/// build number is not 0) in imgtool's form, as jobs and `firmware inspect` show it (`1.2.3+4`),
/// so that an installer sees one spelling everywhere. Anything else is returned as it is.
pub fn version_as_imgtool(v: &str) -> String {
    let parts: Vec<&str> = v.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [a, b, c, d] if parts.iter().all(numeric) => format!("{a}.{b}.{c}+{d}"),
        _ => v.to_owned(),
    }
}

impl std::fmt::Display for ImageVersion {
    /// `major.minor.revision+build` (imgtool's form).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}.{}+{}",
            self.major, self.minor, self.revision, self.build
        )
    }
}

/// The 32-byte image header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// `ih_load_addr`.
    pub load_addr: u32,
    /// `ih_hdr_size`: bytes before the body (≥ 32; typically 0x200).
    pub hdr_size: u16,
    /// `ih_protect_tlv_size`: bytes of the protected TLV area (0: none).
    pub protect_tlv_size: u16,
    /// `ih_img_size`: body bytes.
    pub img_size: u32,
    /// `ih_flags` (see [`FLAG_NAMES`]).
    pub flags: u32,
    /// `ih_ver`.
    pub version: ImageVersion,
}

/// One TLV entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlv {
    /// Type byte.
    pub kind: u8,
    /// Offset of the entry's 4-byte header in the file.
    pub offset: u64,
    /// Whether it is in the protected area (covered by the image hash).
    pub protected: bool,
    /// The value (at most 65,535 bytes; the whole TLV area is at most 64 KiB).
    pub value: Vec<u8>,
}

/// A parsed image: header, TLVs, the hashes. Owned and small (no body bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The header.
    pub header: Header,
    /// File length, bytes.
    pub file_size: u64,
    /// Offset of the first TLV area (`hdr_size + img_size`).
    pub tlv_offset: u64,
    /// End of the unprotected TLV area: bytes beyond it are padding (or the MCUboot trailer).
    pub tlv_end: u64,
    /// Every TLV entry, protected ones first, in file order.
    pub tlvs: Vec<Tlv>,
    /// SHA-256 over `[0, hdr_size + img_size + protect_tlv_size)`: what the SHA256 TLV must hold.
    pub computed_hash: [u8; 32],
    /// SHA-256 of the whole file (the SMP upload `sha`).
    pub file_sha256: [u8; 32],
}

/// Why a file is not a well-formed MCUboot image: the byte offset and what is wrong there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset} ({offset:#x}): {message}")]
pub struct ImageError {
    /// Where in the file.
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

fn err(offset: u64, message: impl Into<String>) -> ImageError {
    ImageError {
        offset,
        message: message.into(),
    }
}

impl ImageInfo {
    /// The SHA256 TLV's value, when there is exactly one (32 bytes). `None`: no SHA256 TLV.
    pub fn hash_tlv(&self) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|t| t.kind == TLV_SHA256)
            .map(|t| t.value.as_slice())
    }

    /// Whether the SHA256 TLV exists and equals the recomputed hash: the image is intact.
    pub fn hash_matches(&self) -> bool {
        self.hash_tlv() == Some(&self.computed_hash[..])
    }

    /// The key hash: the KEYHASH TLV, or SHA-256 of the PUBKEY TLV when the image carries the
    /// whole key instead (MCUboot `bootutil_find_key`). `None`: neither.
    pub fn key_hash(&self) -> Option<Vec<u8>> {
        if let Some(t) = self.tlvs.iter().find(|t| t.kind == TLV_KEYHASH) {
            return Some(t.value.clone());
        }
        self.tlvs
            .iter()
            .find(|t| t.kind == TLV_PUBKEY)
            .map(|t| digest::digest(&digest::SHA256, &t.value).as_ref().to_vec())
    }

    /// The signature TLV's type, when the image is signed (`None`: unsigned, hash only).
    pub fn signature_type(&self) -> Option<u8> {
        self.tlvs
            .iter()
            .find(|t| is_signature(t.kind) && !t.protected)
            .map(|t| t.kind)
    }

    /// Checks the image against what a job says it must be, in the order of FIRMWARE.md §5
    /// item 14: file size and SHA-256, then the MCUboot checks (the SHA256 TLV equals the
    /// recomputed hash, equals the job's `mcuboot_hash`; version; KEYHASH when the job names
    /// one). The header magic was checked by the parse. Returns the first failure.
    pub fn check_against(&self, want: &Expected) -> Result<(), CheckFailure> {
        if self.file_size != want.size {
            return Err(CheckFailure::SizeMismatch {
                file: self.file_size,
                job: want.size,
            });
        }
        if self.file_sha256 != want.sha256 {
            return Err(CheckFailure::Sha256Mismatch);
        }
        if !self.hash_matches() {
            return Err(CheckFailure::HashTlvMismatch);
        }
        if self.computed_hash != want.mcuboot_hash {
            return Err(CheckFailure::McubootHashMismatch);
        }
        if self.header.version != want.version {
            return Err(CheckFailure::VersionMismatch {
                image: self.header.version,
                job: want.version,
            });
        }
        if let Some(k) = &want.keyhash {
            match self.key_hash() {
                Some(have) if have == k[..] => {}
                Some(_) => return Err(CheckFailure::KeyhashMismatch),
                None => return Err(CheckFailure::KeyhashMissing),
            }
        }
        Ok(())
    }
}

/// What a job says the image is (FIRMWARE.md §5 `image`), for [`ImageInfo::check_against`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// MCUboot version.
    pub version: ImageVersion,
    /// File size, bytes.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: [u8; 32],
    /// The SHA256 TLV (image hash).
    pub mcuboot_hash: [u8; 32],
    /// The KEYHASH TLV, when the job names one.
    pub keyhash: Option<[u8; 32]>,
}

/// Why an image is not the one a job names. [`CheckFailure::reason`] is the stable
/// machine-readable string that goes upstream in `failed` progress messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailure {
    /// The file is not a well-formed MCUboot image (magic, sizes, TLV areas).
    #[error("not a well-formed MCUboot image: {0}")]
    Malformed(ImageError),
    /// The file's size differs from the job's `size`.
    #[error("the file has {file} bytes, the job says {job}")]
    SizeMismatch {
        /// File size.
        file: u64,
        /// Job's size.
        job: u64,
    },
    /// The file's SHA-256 differs from the job's `sha256`.
    #[error("the file's SHA-256 is not the job's sha256")]
    Sha256Mismatch,
    /// The SHA256 TLV is missing or differs from the recomputed image hash (corrupt image).
    #[error("the image's SHA256 TLV is missing or does not match its contents")]
    HashTlvMismatch,
    /// The image hash differs from the job's `mcuboot_hash`.
    #[error("the image hash is not the job's mcuboot_hash")]
    McubootHashMismatch,
    /// The header's version differs from the job's.
    #[error("the image is version {image}, the job says {job}")]
    VersionMismatch {
        /// Image header version.
        image: ImageVersion,
        /// Job's version.
        job: ImageVersion,
    },
    /// KEYHASH differs from the job's `keyhash`.
    #[error("the image is signed for another key (KEYHASH is not the job's keyhash)")]
    KeyhashMismatch,
    /// The job names a key hash, the image carries none.
    #[error("the job names a keyhash but the image has no KEYHASH or PUBKEY TLV")]
    KeyhashMissing,
}

impl CheckFailure {
    /// The stable snake_case reason (wire contract, `docs/wire-format.md`).
    pub fn reason(&self) -> &'static str {
        match self {
            CheckFailure::Malformed(_) => "image_malformed",
            CheckFailure::SizeMismatch { .. } => "image_size_mismatch",
            CheckFailure::Sha256Mismatch => "image_sha256_mismatch",
            CheckFailure::HashTlvMismatch => "image_hash_invalid",
            CheckFailure::McubootHashMismatch => "image_hash_not_job",
            CheckFailure::VersionMismatch { .. } => "image_version_mismatch",
            CheckFailure::KeyhashMismatch => "image_keyhash_mismatch",
            CheckFailure::KeyhashMissing => "image_keyhash_missing",
        }
    }
}

/// Parses an image held in memory.
pub fn parse(bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    parse_reader(&mut std::io::Cursor::new(bytes))
}

/// Parses an image from a file (or anything seekable), reading it in 64 KiB pieces.
pub fn parse_reader<R: Read + Seek>(r: &mut R) -> Result<ImageInfo, ImageError> {
    let io = |e: std::io::Error| err(0, format!("cannot read: {e}"));
    let file_size = r.seek(SeekFrom::End(0)).map_err(io)?;
    let mut h = [0u8; HEADER_LEN as usize];
    if file_size < HEADER_LEN {
        return Err(err(
            file_size,
            format!("{file_size} bytes: shorter than the 32-byte MCUboot header"),
        ));
    }
    read_at(r, 0, &mut h)?;
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let magic = u32_at(0);
    if magic != IMAGE_MAGIC {
        let what = if magic == IMAGE_MAGIC_V1 {
            " (the legacy V1 magic)".to_owned()
        } else {
            String::new()
        };
        return Err(err(
            0,
            format!(
                "magic {magic:#010x}{what}, expected {IMAGE_MAGIC:#010x}: not an MCUboot image"
            ),
        ));
    }
    let header = Header {
        load_addr: u32_at(4),
        hdr_size: u16_at(8),
        protect_tlv_size: u16_at(10),
        img_size: u32_at(12),
        flags: u32_at(16),
        version: ImageVersion {
            major: h[20],
            minor: h[21],
            revision: u16_at(22),
            build: u32_at(24),
        },
    };
    if u64::from(header.hdr_size) < HEADER_LEN {
        return Err(err(
            8,
            format!(
                "hdr_size {} is smaller than the 32-byte header",
                header.hdr_size
            ),
        ));
    }
    let tlv_offset = u64::from(header.hdr_size) + u64::from(header.img_size);
    if tlv_offset > file_size {
        return Err(err(
            12,
            format!(
                "hdr_size {} + img_size {} = {tlv_offset} is beyond the end of the {file_size}-byte file (truncated?)",
                header.hdr_size, header.img_size
            ),
        ));
    }
    let mut tlvs = Vec::new();
    let mut at = tlv_offset;
    if header.protect_tlv_size > 0 {
        let tot = area(r, file_size, at, TLV_PROT_INFO_MAGIC, true, &mut tlvs)?;
        if tot != u64::from(header.protect_tlv_size) {
            return Err(err(
                at + 2,
                format!(
                    "protected TLV area size {tot} is not the header's protect_tlv_size {}",
                    header.protect_tlv_size
                ),
            ));
        }
        at += tot;
    }
    let tot = area(r, file_size, at, TLV_INFO_MAGIC, false, &mut tlvs)?;
    let tlv_end = at + tot;
    let hashes = tlvs
        .iter()
        .filter(|t| t.kind == TLV_SHA256)
        .collect::<Vec<_>>();
    if hashes.len() > 1 {
        return Err(err(
            hashes[1].offset,
            "a second SHA256 TLV (exactly one allowed)",
        ));
    }
    if let Some(t) = hashes.first() {
        if t.protected || t.value.len() != 32 {
            return Err(err(
                t.offset,
                format!(
                    "SHA256 TLV of {} bytes{}: expected 32 bytes in the unprotected area",
                    t.value.len(),
                    if t.protected {
                        " in the protected area"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    let hashed_len = tlv_offset + u64::from(header.protect_tlv_size);
    let (computed_hash, file_sha256) = hash(r, hashed_len, file_size)?;
    Ok(ImageInfo {
        header,
        file_size,
        tlv_offset,
        tlv_end,
        tlvs,
        computed_hash,
        file_sha256,
    })
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
    r.seek(SeekFrom::Start(offset))
        .and_then(|_| r.read_exact(buf))
        .map_err(|e| err(offset, format!("cannot read {} bytes: {e}", buf.len())))
}

/// Reads the TLV area at `at` (its info header and entries) into `out`; returns its `tlv_tot`.
fn area<R: Read + Seek>(
    r: &mut R,
    file_size: u64,
    at: u64,
    magic: u16,
    protected: bool,
    out: &mut Vec<Tlv>,
) -> Result<u64, ImageError> {
    let name = if protected {
        "protected TLV area"
    } else {
        "TLV area"
    };
    if at + 4 > file_size {
        return Err(err(
            at,
            format!(
                "the file ends where the {name} (magic {magic:#06x}) should start (truncated?)"
            ),
        ));
    }
    let mut info = [0u8; 4];
    read_at(r, at, &mut info)?;
    let found = u16::from_le_bytes([info[0], info[1]]);
    if found != magic {
        return Err(err(
            at,
            format!("{name} magic {found:#06x}, expected {magic:#06x}"),
        ));
    }
    let tot = u64::from(u16::from_le_bytes([info[2], info[3]]));
    if tot < 4 {
        return Err(err(
            at + 2,
            format!("{name} size {tot} is smaller than its 4-byte header"),
        ));
    }
    let end = at + tot;
    if end > file_size {
        return Err(err(
            at + 2,
            format!(
                "{name} of {tot} bytes runs past the end of the {file_size}-byte file (truncated?)"
            ),
        ));
    }
    let mut body = vec![0u8; (tot - 4) as usize];
    read_at(r, at + 4, &mut body)?;
    let mut i = 0usize;
    let mut count = 0usize;
    while i < body.len() {
        let off = at + 4 + i as u64;
        if body.len() - i < 4 {
            return Err(err(
                off,
                format!("{} stray bytes at the end of the {name}", body.len() - i),
            ));
        }
        count += 1;
        if count > MAX_TLVS {
            return Err(err(off, format!("more than {MAX_TLVS} TLVs in the {name}")));
        }
        let kind = body[i];
        let len = usize::from(u16::from_le_bytes([body[i + 2], body[i + 3]]));
        let start = i + 4;
        if body.len() - start < len {
            return Err(err(
                off,
                format!(
                    "TLV {kind:#04x} of {len} bytes runs past the end of the {name} ({} bytes left)",
                    body.len() - start
                ),
            ));
        }
        out.push(Tlv {
            kind,
            offset: off,
            protected,
            value: body[start..start + len].to_vec(),
        });
        i = start + len;
    }
    Ok(tot)
}

/// (SHA-256 of the first `hashed_len` bytes, SHA-256 of all `file_size` bytes), in one pass.
fn hash<R: Read + Seek>(
    r: &mut R,
    hashed_len: u64,
    file_size: u64,
) -> Result<([u8; 32], [u8; 32]), ImageError> {
    let mut image = digest::Context::new(&digest::SHA256);
    let mut file = digest::Context::new(&digest::SHA256);
    r.seek(SeekFrom::Start(0))
        .map_err(|e| err(0, format!("cannot read: {e}")))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    while pos < file_size {
        let want = (file_size - pos).min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..want])
            .map_err(|e| err(pos, format!("cannot read: {e}")))?;
        let chunk = &buf[..want];
        if pos < hashed_len {
            let n = (hashed_len - pos).min(want as u64) as usize;
            image.update(&chunk[..n]);
        }
        file.update(chunk);
        pos += want as u64;
    }
    let out = |c: digest::Context| {
        let mut a = [0u8; 32];
        a.copy_from_slice(c.finish().as_ref());
        a
    };
    Ok((out(image), out(file)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An image as imgtool lays it out: header, body, optional protected TLVs, then the
    /// unprotected area with the SHA256 TLV (correct unless tampered afterwards), a KEYHASH and
    /// a fake ECDSA signature; `pad` bytes of 0xff after it.
    pub(crate) fn build(
        version: ImageVersion,
        body: &[u8],
        protected: &[(u8, Vec<u8>)],
        pad: usize,
    ) -> Vec<u8> {
        let prot_len: usize = if protected.is_empty() {
            0
        } else {
            4 + protected.iter().map(|(_, v)| 4 + v.len()).sum::<usize>()
        };
        let mut f = Vec::new();
        f.extend(IMAGE_MAGIC.to_le_bytes());
        f.extend(0u32.to_le_bytes());
        f.extend(0x200u16.to_le_bytes());
        f.extend((prot_len as u16).to_le_bytes());
        f.extend((body.len() as u32).to_le_bytes());
        f.extend(0u32.to_le_bytes());
        f.push(version.major);
        f.push(version.minor);
        f.extend(version.revision.to_le_bytes());
        f.extend(version.build.to_le_bytes());
        f.resize(0x200, 0);
        f.extend(body);
        if prot_len > 0 {
            f.extend(TLV_PROT_INFO_MAGIC.to_le_bytes());
            f.extend((prot_len as u16).to_le_bytes());
            for (k, v) in protected {
                f.extend([*k, 0]);
                f.extend((v.len() as u16).to_le_bytes());
                f.extend(v);
            }
        }
        let hash = digest::digest(&digest::SHA256, &f);
        let tlvs: Vec<(u8, Vec<u8>)> = vec![
            (TLV_SHA256, hash.as_ref().to_vec()),
            (TLV_KEYHASH, vec![0xab; 32]),
            (0x22, vec![0x30; 70]),
        ];
        let tot = 4 + tlvs.iter().map(|(_, v)| 4 + v.len()).sum::<usize>();
        f.extend(TLV_INFO_MAGIC.to_le_bytes());
        f.extend((tot as u16).to_le_bytes());
        for (k, v) in tlvs {
            f.extend([k, 0]);
            f.extend((v.len() as u16).to_le_bytes());
            f.extend(v);
        }
        f.extend(vec![0xffu8; pad]);
        f
    }

    fn v(s: &str) -> ImageVersion {
        ImageVersion::parse(s).unwrap()
    }

    #[test]
    fn a_well_formed_image_gives_its_fields_and_hashes() {
        let img = build(v("1.2.3+4"), &[7u8; 4096], &[], 0);
        let i = parse(&img).unwrap();
        assert_eq!(i.header.hdr_size, 0x200);
        assert_eq!(i.header.img_size, 4096);
        assert_eq!(i.header.version.to_string(), "1.2.3+4");
        assert_eq!(
            i.tlv_offset, 0x1200,
            "as imgtool dumpinfo: TLV area at 0x1200"
        );
        assert!(i.hash_matches());
        assert_eq!(
            i.computed_hash.as_slice(),
            digest::digest(&digest::SHA256, &img[..0x1200]).as_ref()
        );
        assert_eq!(
            i.file_sha256.as_slice(),
            digest::digest(&digest::SHA256, &img).as_ref()
        );
        assert_eq!(i.key_hash().unwrap(), vec![0xab; 32]);
        assert_eq!(i.signature_type(), Some(0x22));
        assert_eq!(i.tlv_end, img.len() as u64);
    }

    /// PROTOCOLS §A.7 A-28 shape: protected TLVs are covered by the hash; trailing 0xff padding
    /// is allowed and is part of the file SHA-256 only.
    #[test]
    fn protected_tlvs_are_hashed_and_padding_is_not() {
        let img = build(v("0.0.0"), &[1u8; 100], &[(0x50, vec![1, 0, 0, 0])], 1000);
        let i = parse(&img).unwrap();
        assert_eq!(i.header.protect_tlv_size, 12);
        assert!(i.hash_matches());
        assert_eq!(
            i.computed_hash.as_slice(),
            digest::digest(&digest::SHA256, &img[..0x200 + 100 + 12]).as_ref()
        );
        assert!(i.tlvs[0].protected && i.tlvs[0].kind == 0x50);
        assert_eq!(i.file_size, img.len() as u64);
        // A flipped byte in the protected area breaks the hash.
        let mut bad = img.clone();
        bad[0x200 + 100 + 8] ^= 1;
        assert!(!parse(&bad).unwrap().hash_matches());
    }

    /// PROTOCOLS §A.7 A-26: the header of smpclient's hello_world fixture.
    #[test]
    fn vector_a26_header() {
        let h = hex::decode("3db8f39600000000000200007460000000000000000000000000000000000000")
            .unwrap();
        // Only the header: the TLV area is missing, at byte 512 + 24692.
        let e = parse(&h).unwrap_err();
        assert_eq!(e.offset, 12, "{e}");
        assert!(e.message.contains("24692"), "{e}");
    }

    #[test]
    fn tampering_and_truncation_are_named_with_their_offset() {
        let img = build(v("1.0.0"), &[9u8; 600], &[], 0);
        let mut body = img.clone();
        body[0x300] ^= 0x55;
        let i = parse(&body).unwrap();
        assert!(!i.hash_matches(), "a flipped body byte breaks the hash");
        let mut magic = img.clone();
        magic[0] = 0;
        let e = parse(&magic).unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("not an MCUboot image"));
        let e = parse(&img[..img.len() - 10]).unwrap_err();
        assert_eq!(e.offset, 0x200 + 600 + 2, "{e}");
        assert!(e.message.contains("truncated"), "{e}");
        let mut tlv_magic = img.clone();
        tlv_magic[0x200 + 600] = 0x08;
        let e = parse(&tlv_magic).unwrap_err();
        assert_eq!(e.offset, 0x200 + 600);
        assert!(
            e.message.contains("0x6908") && e.message.contains("0x6907"),
            "{e}"
        );
        assert!(parse(&img[..20]).unwrap_err().message.contains("shorter"));
        let mut small_hdr = img.clone();
        small_hdr[8] = 16;
        small_hdr[9] = 0;
        assert_eq!(parse(&small_hdr).unwrap_err().offset, 8);
    }

    #[test]
    fn a_tlv_that_overruns_its_area_is_refused() {
        let mut img = build(v("1.0.0"), &[0u8; 64], &[], 0);
        let first = 0x200 + 64 + 4;
        img[first + 2] = 0xff; // SHA256 TLV length 0x00ff > the area
        let e = parse(&img).unwrap_err();
        assert_eq!(e.offset, first as u64);
        assert!(e.message.contains("runs past"), "{e}");
    }

    #[test]
    fn versions_parse_like_imgtool_and_refuse_overflow() {
        assert_eq!(
            v("1.2.3+4"),
            ImageVersion {
                major: 1,
                minor: 2,
                revision: 3,
                build: 4
            }
        );
        assert_eq!(v("1.2.3"), v("1.2.3+0"));
        assert_eq!(v("2"), v("2.0.0+0"));
        for bad in [
            "",
            "1..2",
            "256.0.0",
            "1.2.65536",
            "1.2.3+",
            "1.2.3.4",
            "a.b.c",
            "1.2.3+-1",
        ] {
            assert!(ImageVersion::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_against_reports_the_first_difference() {
        let img = build(v("1.2.3+4"), &[7u8; 1000], &[], 0);
        let i = parse(&img).unwrap();
        let good = Expected {
            version: v("1.2.3+4"),
            size: img.len() as u64,
            sha256: i.file_sha256,
            mcuboot_hash: i.computed_hash,
            keyhash: Some([0xab; 32]),
        };
        assert_eq!(i.check_against(&good), Ok(()));
        let reason = |e: Expected| i.check_against(&e).unwrap_err().reason();
        assert_eq!(
            reason(Expected {
                size: 1,
                ..good.clone()
            }),
            "image_size_mismatch"
        );
        assert_eq!(
            reason(Expected {
                sha256: [0; 32],
                ..good.clone()
            }),
            "image_sha256_mismatch"
        );
        assert_eq!(
            reason(Expected {
                mcuboot_hash: [0; 32],
                ..good.clone()
            }),
            "image_hash_not_job"
        );
        assert_eq!(
            reason(Expected {
                version: v("1.2.3"),
                ..good.clone()
            }),
            "image_version_mismatch"
        );
        assert_eq!(
            reason(Expected {
                keyhash: Some([1; 32]),
                ..good.clone()
            }),
            "image_keyhash_mismatch"
        );
        let mut bad = img.clone();
        bad[0x250] ^= 1;
        let b = parse(&bad).unwrap();
        let want = Expected {
            sha256: b.file_sha256,
            ..good
        };
        assert_eq!(
            b.check_against(&want).unwrap_err().reason(),
            "image_hash_invalid"
        );
    }

    #[test]
    fn device_versions_are_shown_in_imgtool_form() {
        assert_eq!(version_as_imgtool("1.2.3.4"), "1.2.3+4");
        assert_eq!(version_as_imgtool("1.2.3"), "1.2.3");
        assert_eq!(version_as_imgtool("1.2.3+4"), "1.2.3+4");
        assert_eq!(version_as_imgtool("1.2.x.4"), "1.2.x.4");
        assert_eq!(version_as_imgtool("1..3.4"), "1..3.4");
    }
}
