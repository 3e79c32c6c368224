//! Just enough of the MCUboot image format (PROTOCOLS §A.6) to know what a device will report as
//! the slot hash after an upload: the SHA-256 over header + body + protected TLVs (the SHA256
//! TLV's value), and the header's version. The full parser with TLV checks is the gateway's
//! (`gateway/src/firmware/image.rs`); this one is for the SMP client and the bench command.

use ring::digest::{digest, SHA256};

/// `ih_magic` of an MCUboot image (file bytes `3d b8 f3 96`, little-endian).
pub const MAGIC: u32 = 0x96F3_B83D;

/// What the header says and the image hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// `ih_hdr_size`.
    pub hdr_size: u16,
    /// `ih_protect_tlv_size`.
    pub protect_tlv_size: u16,
    /// `ih_img_size` (body only).
    pub img_size: u32,
    /// `major.minor.revision+build`.
    pub version: String,
    /// SHA-256 of bytes `[0, hdr_size + img_size + protect_tlv_size)`: the slot hash.
    pub hash: [u8; 32],
}

/// Why a file is not an MCUboot image.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum McubootError {
    /// Shorter than the 32-byte header.
    #[error("shorter than an MCUboot header")]
    Short,
    /// Not the MCUboot magic.
    #[error("not an MCUboot image (magic {0:#010x})")]
    Magic(u32),
    /// The header's sizes run past the end of the file or hdr_size < 32.
    #[error("header sizes run past the end of the file")]
    Sizes,
}

/// Reads the header of `file` and hashes what the SHA256 TLV covers.
pub fn summary(file: &[u8]) -> Result<ImageSummary, McubootError> {
    let h = file.get(..32).ok_or(McubootError::Short)?;
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let magic = u32_at(0);
    if magic != MAGIC {
        return Err(McubootError::Magic(magic));
    }
    let hdr_size = u16_at(8);
    let protect_tlv_size = u16_at(10);
    let img_size = u32_at(12);
    let end = usize::from(hdr_size)
        .checked_add(usize::try_from(img_size).map_err(|_| McubootError::Sizes)?)
        .and_then(|e| e.checked_add(usize::from(protect_tlv_size)))
        .ok_or(McubootError::Sizes)?;
    if hdr_size < 32 || end > file.len() {
        return Err(McubootError::Sizes);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, &file[..end]).as_ref());
    Ok(ImageSummary {
        hdr_size,
        protect_tlv_size,
        img_size,
        version: format!("{}.{}.{}+{}", h[20], h[21], u16_at(22), u32_at(24)),
        hash,
    })
}

/// SHA-256 of the whole file: the upload's `sha`, its session id.
pub fn file_sha256(file: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, file).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a26_header_and_hash_range() {
        let mut file =
            hex::decode("3db8f39600000000000200007460000000000000000000000000000000000000")
                .unwrap();
        assert_eq!(summary(&file), Err(McubootError::Sizes));
        file.resize(512 + 24692 + 10, 0x5a);
        let s = summary(&file).unwrap();
        assert_eq!(
            (s.hdr_size, s.img_size, s.protect_tlv_size),
            (512, 24692, 0)
        );
        assert_eq!(s.version, "0.0.0+0");
        assert_eq!(s.hash, file_sha256(&file[..512 + 24692]));
        file[0] = 0x3c;
        assert_eq!(summary(&file), Err(McubootError::Magic(0x96F3_B83C)));
        assert_eq!(summary(&file[..10]), Err(McubootError::Short));
    }

    #[test]
    fn a28_protected_tlvs_are_hashed() {
        let mut file =
            hex::decode("3db8f3960000000000047b0060c2010000000000000000000000000000000000")
                .unwrap();
        file.resize(116_443 + 200, 0xff);
        let s = summary(&file).unwrap();
        assert_eq!(
            (s.hdr_size, s.protect_tlv_size, s.img_size),
            (1024, 123, 115_296)
        );
        assert_eq!(s.hash, file_sha256(&file[..116_443]));
    }
}
