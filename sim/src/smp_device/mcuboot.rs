//! What the simulated device's bootloader and image manager read from an uploaded MCUboot image
//! (PROTOCOLS §A.6): the 32-byte header (little-endian: magic `0x96F3B83D`, header size,
//! protected TLV size, image size, version), the SHA256 TLV (type 0x10) of the TLV areas, and
//! the hash MCUboot recomputes at boot (SHA-256 over header + body + protected TLVs).
//!
//! Pure and bounded: reads only inside the slice it is given, never panics on any input. The
//! gateway's own parser (`wardgate::firmware::image`) is not used: the simulated device must not
//! share the code it checks.

/// MCUboot image magic (`ih_magic`, file bytes `3d b8 f3 96`).
pub const IMAGE_MAGIC: u32 = 0x96F3_B83D;
/// Bytes of the fixed image header.
pub const HEADER_SIZE: usize = 32;
const TLV_INFO_MAGIC: u16 = 0x6907;
const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
const TLV_SHA256: u8 = 0x10;

/// What the device knows about an image in a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// `major.minor.revision`, with `.build` when the build number is not 0 (Zephyr's
    /// `img_mgmt_ver_str`).
    pub version: String,
    /// The value of the SHA256 TLV (what Zephyr's image state list reports as `hash`); the
    /// recomputed hash when the image has no such TLV.
    pub hash: Vec<u8>,
    /// SHA-256 over header + body + protected TLVs: what MCUboot checks at boot.
    pub computed: Vec<u8>,
}

impl ImageInfo {
    /// Whether MCUboot would accept the image at boot (its SHA256 TLV equals the recomputed
    /// hash; the signature is not checked by the simulation).
    pub fn valid(&self) -> bool {
        self.hash == self.computed
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Whether `data` starts with the MCUboot magic (what Zephyr checks on an upload's first chunk).
pub fn has_magic(data: &[u8]) -> bool {
    u32_at(data, 0) == Some(IMAGE_MAGIC)
}

/// Reads an image; `None` when `data` is not an MCUboot image (bad magic, header too small,
/// areas beyond the data).
pub fn read(data: &[u8]) -> Option<ImageInfo> {
    if !has_magic(data) {
        return None;
    }
    let hdr = usize::from(u16_at(data, 8)?);
    let prot = usize::from(u16_at(data, 10)?);
    let size = usize::try_from(u32_at(data, 12)?).ok()?;
    if hdr < HEADER_SIZE {
        return None;
    }
    let (major, minor) = (*data.get(20)?, *data.get(21)?);
    let revision = u16_at(data, 22)?;
    let build = u32_at(data, 24)?;
    let mut version = format!("{major}.{minor}.{revision}");
    if build != 0 {
        version.push_str(&format!(".{build}"));
    }
    let body_end = hdr.checked_add(size)?;
    let hashed_end = body_end.checked_add(prot)?;
    let hashed = data.get(..hashed_end)?;
    let computed = ring::digest::digest(&ring::digest::SHA256, hashed)
        .as_ref()
        .to_vec();
    // The protected area (if any) comes first, then the unprotected one; a SHA256 TLV is looked
    // for in both.
    let mut tlv_hash = None;
    let mut at = body_end;
    for magic in [TLV_PROT_INFO_MAGIC, TLV_INFO_MAGIC] {
        if magic == TLV_PROT_INFO_MAGIC && prot == 0 {
            continue;
        }
        if u16_at(data, at) != Some(magic) {
            break;
        }
        let total = usize::from(u16_at(data, at + 2)?);
        let end = at.checked_add(total)?.min(data.len());
        let mut p = at + 4;
        while p + 4 <= end {
            let kind = data[p];
            let len = usize::from(u16_at(data, p + 2)?);
            let value = data.get(p + 4..p + 4 + len)?;
            if kind == TLV_SHA256 && len == 32 && tlv_hash.is_none() {
                tlv_hash = Some(value.to_vec());
            }
            p += 4 + len;
        }
        at = at.checked_add(total)?;
    }
    Some(ImageInfo {
        version,
        hash: tlv_hash.unwrap_or_else(|| computed.clone()),
        computed,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal image: header (size 32), `body`, an unprotected TLV area with a SHA256 TLV.
    pub(crate) fn image(version: (u8, u8, u16, u32), body: &[u8], tamper: bool) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend(IMAGE_MAGIC.to_le_bytes());
        d.extend(0u32.to_le_bytes());
        d.extend(32u16.to_le_bytes());
        d.extend(0u16.to_le_bytes());
        d.extend((body.len() as u32).to_le_bytes());
        d.extend(0u32.to_le_bytes());
        d.push(version.0);
        d.push(version.1);
        d.extend(version.2.to_le_bytes());
        d.extend(version.3.to_le_bytes());
        d.extend(0u32.to_le_bytes());
        d.extend(body);
        let hash = ring::digest::digest(&ring::digest::SHA256, &d);
        d.extend(TLV_INFO_MAGIC.to_le_bytes());
        d.extend(40u16.to_le_bytes());
        d.extend([TLV_SHA256, 0, 32, 0]);
        d.extend(hash.as_ref());
        if tamper {
            d[40] ^= 1;
        }
        d
    }

    #[test]
    fn reads_version_and_hash_tlv() {
        let img = image((1, 2, 3, 0), &[7; 100], false);
        let info = read(&img).unwrap();
        assert_eq!(info.version, "1.2.3");
        assert_eq!(info.hash.len(), 32);
        assert!(info.valid());
        let info = read(&image((2, 0, 1, 42), &[1; 10], false)).unwrap();
        assert_eq!(info.version, "2.0.1.42");
        // A flipped body byte: the TLV still says the old hash, MCUboot would refuse it.
        let info = read(&image((1, 2, 3, 0), &[7; 100], true)).unwrap();
        assert!(!info.valid());
    }

    #[test]
    fn refuses_what_is_not_an_image_and_never_panics() {
        assert_eq!(read(&[]), None);
        assert_eq!(read(&[0xff; 64]), None);
        let img = image((1, 0, 0, 0), &[0; 50], false);
        for cut in 0..img.len() {
            let _ = read(&img[..cut]);
        }
        // Body beyond the data.
        assert_eq!(read(&img[..60]), None);
        let mut odd = img.clone();
        odd[8] = 4; // header size below 32
        odd[9] = 0;
        assert_eq!(read(&odd), None);
    }
}
