//! Omron local names (see the [parent module](super) for the specification sources).

/// An Omron health device's local name, `BLEsmart_<model 8 hex><MAC 12 hex>`: lower-case
/// `s` (`BLEsmart_`) while in pairing mode, upper-case (`BLESmart_`) in transfer mode.
/// Source: StanfordSpezi/SpeziDevices `SpeziOmronTests.swift` (`testOmronLocalNames`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OmronName {
    /// Model code, 8 hex digits (e.g. `00000160` = BP5250).
    pub model: String,
    /// MAC address, 12 hex digits.
    pub mac: String,
    /// `true` in pairing mode (`BLEsmart_`), `false` in transfer mode (`BLESmart_`).
    pub pairing_mode: bool,
}

/// Parses an Omron local name; `None` if it is not one.
pub fn parse_omron_name(name: &str) -> Option<OmronName> {
    let (pairing_mode, rest) = if let Some(r) = name.strip_prefix("BLEsmart_") {
        (true, r)
    } else {
        (false, name.strip_prefix("BLESmart_")?)
    };
    if rest.len() != 20 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(OmronName {
        model: rest[..8].to_string(),
        mac: rest[8..].to_string(),
        pairing_mode,
    })
}
