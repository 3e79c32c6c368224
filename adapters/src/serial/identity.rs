//! The identity gate (DESIGN §11: ports renumbered after reboot): readings pass only once the
//! device has reported the configured serial number on this connection. Pure: no I/O; the
//! serial adapter (`adapter.rs`) reports its verdicts.

/// What the identity check says about one reported serial number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityVerdict {
    /// No serial number is configured: nothing to check.
    Unchecked,
    /// It matches the configured one (first time on this connection, or again after a mismatch).
    Confirmed,
    /// It matches, as it did before.
    StillConfirmed,
    /// It differs from the configured one and from the last mismatching one: report it.
    Mismatch,
    /// It is the same wrong number as before: already reported.
    StillMismatch,
}

/// Per-connection identity gate (see the module documentation). Pure: no I/O.
#[derive(Clone, Debug)]
pub struct IdentityGate {
    /// The configured serial number, if any.
    expected: Option<String>,
    /// The last serial number the device reported on this connection.
    last: Option<String>,
    /// Whether readings may pass.
    open: bool,
}

impl IdentityGate {
    /// A gate for one connection: open when nothing is configured, closed until a match otherwise.
    pub fn new(expected: Option<&str>) -> Self {
        IdentityGate {
            expected: expected.map(str::to_owned),
            last: None,
            open: expected.is_none(),
        }
    }

    /// Whether readings may pass now.
    pub fn admits(&self) -> bool {
        self.open
    }

    /// Records a serial number reported by the device (compared exactly, surrounding spaces
    /// ignored).
    pub fn observe(&mut self, reported: &str) -> IdentityVerdict {
        let reported = reported.trim();
        let previous = self.last.replace(reported.to_owned());
        let Some(expected) = &self.expected else {
            return IdentityVerdict::Unchecked;
        };
        if reported == expected.trim() {
            let was_open = std::mem::replace(&mut self.open, true);
            if was_open {
                IdentityVerdict::StillConfirmed
            } else {
                IdentityVerdict::Confirmed
            }
        } else {
            self.open = false;
            if previous.as_deref() == Some(reported) {
                IdentityVerdict::StillMismatch
            } else {
                IdentityVerdict::Mismatch
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_gate_without_a_configured_number_admits_everything() {
        let mut g = IdentityGate::new(None);
        assert!(g.admits());
        assert_eq!(g.observe("123"), IdentityVerdict::Unchecked);
        assert!(g.admits());
    }

    #[test]
    fn identity_gate_holds_readings_until_the_configured_number_is_seen() {
        let mut g = IdentityGate::new(Some("0000092845"));
        assert!(
            !g.admits(),
            "readings before the first identity are held back"
        );
        assert_eq!(g.observe("0000092845"), IdentityVerdict::Confirmed);
        assert!(g.admits());
        assert_eq!(g.observe(" 0000092845 "), IdentityVerdict::StillConfirmed);
    }

    #[test]
    fn identity_gate_drops_readings_after_a_mismatch_until_it_matches_again() {
        let mut g = IdentityGate::new(Some("A1"));
        assert_eq!(g.observe("B2"), IdentityVerdict::Mismatch);
        assert!(!g.admits());
        assert_eq!(
            g.observe("B2"),
            IdentityVerdict::StillMismatch,
            "reported once"
        );
        assert_eq!(
            g.observe("C3"),
            IdentityVerdict::Mismatch,
            "a new wrong number is reported"
        );
        assert_eq!(g.observe("A1"), IdentityVerdict::Confirmed);
        assert!(g.admits());
        assert_eq!(g.observe("B2"), IdentityVerdict::Mismatch);
        assert!(!g.admits());
    }
}
