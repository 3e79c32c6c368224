//! Time zones of maintenance windows (`[firmware] timezone`, a job's `tz`): `UTC`, a fixed
//! `±HH:MM` offset, or a zone of the system's tz database (`/usr/share/zoneinfo`, TZif, RFC
//! 8536) read with `tz-rs`, so a window follows daylight saving. Used by `check-config` (a zone
//! `run` cannot load is an error) and by the firmware relay's policy.

use super::schema::TimeOfDay;

/// A time zone: UTC, a fixed offset, or a tz database zone.
#[derive(Clone, Debug, PartialEq)]
pub enum Zone {
    /// Fixed offset from UTC, seconds east.
    Fixed(i32),
    /// A zone of the tz database (its rules, daylight saving included).
    Tz(tz::TimeZone),
}

impl Zone {
    /// `UTC`, `±HH:MM`, or an IANA name read from `/usr/share/zoneinfo/NAME` (`TZDIR` if set).
    ///
    /// Errors: the name does not parse, or its file is missing or not TZif.
    pub fn parse(name: &str) -> Result<Zone, String> {
        if name == "UTC" {
            return Ok(Zone::Fixed(0));
        }
        if let Some((sign, rest)) = name
            .strip_prefix('+')
            .map(|r| (1, r))
            .or_else(|| name.strip_prefix('-').map(|r| (-1, r)))
        {
            let t = TimeOfDay::parse(rest)
                .ok_or_else(|| format!("time zone `{name}`: an offset is ±HH:MM"))?;
            return Ok(Zone::Fixed(sign * i32::from(t.0) * 60));
        }
        if name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(format!("time zone `{name}` is not a tz database name"));
        }
        let dir = std::env::var_os("TZDIR").unwrap_or_else(|| "/usr/share/zoneinfo".into());
        let path = std::path::Path::new(&dir).join(name);
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("time zone `{name}`: {}: {e}", path.display()))?;
        tz::TimeZone::from_tz_data(&bytes)
            .map(Zone::Tz)
            .map_err(|e| {
                format!(
                    "time zone `{name}`: {}: not a TZif file ({e})",
                    path.display()
                )
            })
    }

    /// The offset from UTC at `unix_s`, seconds east (0 when the zone has no rule for it).
    pub fn offset_at(&self, unix_s: u64) -> i32 {
        match self {
            Zone::Fixed(o) => *o,
            Zone::Tz(tz) => i64::try_from(unix_s)
                .ok()
                .and_then(|t| tz.find_local_time_type(t).ok())
                .map(|t| t.ut_offset())
                .unwrap_or(0),
        }
    }

    /// Minutes after local midnight at `unix_s`.
    pub fn minute_of_day(&self, unix_s: u64) -> u16 {
        let local = unix_s as i64 + i64::from(self.offset_at(unix_s));
        (local.rem_euclid(86_400) / 60) as u16
    }
}
