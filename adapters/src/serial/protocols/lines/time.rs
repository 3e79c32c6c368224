//! Device time stamps as text: the formats a `lines` mapping's `time` field may name, and the
//! strict `YYYY-MM-DDThh:mm:ss` of a plug-in's `device_time` ([`parse_device_time`]).
//!
//! Whatever the format, the result is [`Reading::device_time`](crate::observation::Reading)'s
//! form, `YYYY-MM-DDThh:mm:ss` (docs/wire-format.md): seconds precision, no offset. A clock that
//! counts from the Unix epoch, or a stamp with a UTC offset (`Z`, `+01:00`), gives UTC (as the
//! BLE vendor profiles' `unix_time` does); a stamp without an offset is the device's local time,
//! kept as written. Fractions of a second are dropped (the wire format has none).
//!
//! | format | example |
//! |---|---|
//! | `unix_s` | `1718000000` (a fraction is allowed: `1718000000.25`) |
//! | `unix_ms` | `1718000000250` |
//! | `unix_us` | `1718000000250000` |
//! | `iso8601` | `2024-06-10T06:13:20`, `2024-06-10 06:13:20.25`, `…Z`, `…+02:00`, `…+0200` |
//! | a pattern | `%d.%m.%Y %H:%M:%S`, `%m/%d/%y %H:%M:%S` |
//!
//! Pattern directives: `%Y` (4-digit year), `%y` (2-digit year, 2000–2099), `%m`, `%d`, `%H`,
//! `%M`, `%S` (1 or 2 digits), `%f` (1–9 digits of a fraction, dropped), `%z` (`Z`, `±hh:mm` or
//! `±hhmm`: converted to UTC), `%%`; any other character must appear as written. A pattern must
//! give the year, month, day, hour and minute (`%S` may be absent: second 0).
//!
//! Pure: no I/O, never panics. Errors say what was expected at which character.

use crate::ble::decode::DateTime;

/// How a `time` field writes its time stamp (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    /// Seconds since 1970-01-01T00:00:00Z (UTC), optionally with a fraction.
    UnixS,
    /// Milliseconds since the Unix epoch (UTC).
    UnixMs,
    /// Microseconds since the Unix epoch (UTC).
    UnixUs,
    /// `YYYY-MM-DD[T ]hh:mm:ss[.f][Z|±hh:mm|±hhmm]`.
    Iso8601,
    /// A strftime-like pattern.
    Pattern(Vec<Tok>),
}

/// One element of a [`TimeFormat::Pattern`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// `%Y`.
    Year4,
    /// `%y`.
    Year2,
    /// `%m`.
    Month,
    /// `%d`.
    Day,
    /// `%H`.
    Hour,
    /// `%M`.
    Minute,
    /// `%S`.
    Second,
    /// `%f`.
    Fraction,
    /// `%z`.
    Offset,
    /// A character that must appear as written.
    Literal(char),
}

impl TimeFormat {
    /// Parses a format name or pattern. Errors: an unknown `%` directive, a directive given
    /// twice, a pattern without a year, month, day, hour or minute.
    pub fn parse(spec: &str) -> Result<TimeFormat, String> {
        match spec {
            "unix_s" => return Ok(TimeFormat::UnixS),
            "unix_ms" => return Ok(TimeFormat::UnixMs),
            "unix_us" => return Ok(TimeFormat::UnixUs),
            "iso8601" => return Ok(TimeFormat::Iso8601),
            _ => {}
        }
        if !spec.contains('%') {
            return Err(format!(
                "time format {spec:?} is not unix_s, unix_ms, unix_us, iso8601 or a pattern \
                 like \"%d.%m.%Y %H:%M:%S\""
            ));
        }
        let mut toks = Vec::new();
        let mut chars = spec.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                toks.push(Tok::Literal(c));
                continue;
            }
            let t = match chars.next() {
                Some('Y') => Tok::Year4,
                Some('y') => Tok::Year2,
                Some('m') => Tok::Month,
                Some('d') => Tok::Day,
                Some('H') => Tok::Hour,
                Some('M') => Tok::Minute,
                Some('S') => Tok::Second,
                Some('f') => Tok::Fraction,
                Some('z') => Tok::Offset,
                Some('%') => Tok::Literal('%'),
                Some(o) => {
                    return Err(format!(
                        "time format {spec:?}: unknown directive %{o} (known: %Y %y %m %d %H %M %S %f %z %%)"
                    ))
                }
                None => return Err(format!("time format {spec:?} ends with a lone %")),
            };
            if t != Tok::Literal('%') && toks.contains(&t) {
                return Err(format!("time format {spec:?}: a directive appears twice"));
            }
            toks.push(t);
        }
        let has = |t: &Tok| toks.contains(t);
        if !(has(&Tok::Year4) || has(&Tok::Year2)) || has(&Tok::Year4) && has(&Tok::Year2) {
            return Err(format!(
                "time format {spec:?} needs exactly one year (%Y or %y)"
            ));
        }
        for (t, what) in [
            (Tok::Month, "%m"),
            (Tok::Day, "%d"),
            (Tok::Hour, "%H"),
            (Tok::Minute, "%M"),
        ] {
            if !has(&t) {
                return Err(format!("time format {spec:?} has no {what}"));
            }
        }
        Ok(TimeFormat::Pattern(toks))
    }

    /// The device time (`YYYY-MM-DDThh:mm:ss`) of `text` in this format. Errors: what does not
    /// fit, in words.
    pub fn apply(&self, text: &str) -> Result<String, String> {
        let text = text.trim();
        let iso = |t: Option<DateTime>| {
            t.and_then(|t| t.to_iso())
                .ok_or_else(|| format!("time {text:?} is outside the years 1582–9999"))
        };
        match self {
            TimeFormat::UnixS => {
                let (int, frac) = text.split_once('.').unwrap_or((text, ""));
                if !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("time {text:?} is not a number of seconds"));
                }
                iso(DateTime::from_unix_seconds(unix_integer(text, int)?))
            }
            TimeFormat::UnixMs => iso(DateTime::from_unix_seconds(
                unix_integer(text, text)?.div_euclid(1_000),
            )),
            TimeFormat::UnixUs => iso(DateTime::from_unix_seconds(
                unix_integer(text, text)?.div_euclid(1_000_000),
            )),
            TimeFormat::Iso8601 => iso8601(text),
            TimeFormat::Pattern(toks) => pattern(toks, text),
        }
    }
}

/// A whole number of epoch units (an optional sign, at most 18 digits).
fn unix_integer(text: &str, digits: &str) -> Result<i64, String> {
    let d = digits.strip_prefix('-').unwrap_or(digits);
    if d.is_empty() || d.len() > 18 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("time {text:?} is not a whole number"));
    }
    digits
        .parse()
        .map_err(|_| format!("time {text:?} is not a whole number"))
}

/// The parts of a time stamp as read.
#[derive(Default)]
struct Parts {
    year: Option<u16>,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// Offset east of UTC, minutes.
    offset: Option<i32>,
}

impl Parts {
    fn finish(self, text: &str) -> Result<String, String> {
        let t = DateTime {
            year: self.year.unwrap_or(0),
            month: self.month,
            day: self.day,
            hours: self.hour,
            minutes: self.minute,
            seconds: self.second,
        };
        if !t.is_complete() {
            return Err(format!(
                "time {text:?} is not a date and time (month, day, hour, minute or second out of range)"
            ));
        }
        let t = match self.offset {
            Some(off) => t
                .add_minutes(-off)
                .ok_or_else(|| format!("time {text:?} is outside the years 1582–9999"))?,
            None => t,
        };
        t.to_iso()
            .ok_or_else(|| format!("time {text:?} is not a date and time"))
    }
}

/// A cursor over the characters of a time stamp.
struct Cursor<'a> {
    text: &'a str,
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor {
            text,
            rest: text.as_bytes(),
        }
    }
    fn at(&self) -> usize {
        self.text.len() - self.rest.len()
    }
    fn fail(&self, what: &str) -> String {
        format!(
            "time {:?}: expected {what} at character {}",
            self.text,
            self.at() + 1
        )
    }
    /// Between `min` and `max` ASCII digits, as a number.
    fn digits(&mut self, min: usize, max: usize, what: &str) -> Result<u32, String> {
        let n = self
            .rest
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if n < min {
            return Err(self.fail(what));
        }
        let v = self.rest[..n]
            .iter()
            .fold(0u32, |v, b| v * 10 + u32::from(b - b'0'));
        self.rest = &self.rest[n..];
        Ok(v)
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.rest.first() == Some(&c) {
            self.rest = &self.rest[1..];
            true
        } else {
            false
        }
    }
    fn literal(&mut self, c: char) -> Result<(), String> {
        let mut b = [0u8; 4];
        let s = c.encode_utf8(&mut b).as_bytes();
        if self.rest.starts_with(s) {
            self.rest = &self.rest[s.len()..];
            Ok(())
        } else {
            Err(self.fail(&format!("{c:?}")))
        }
    }
    /// `Z`, `±hh:mm` or `±hhmm`, as minutes east of UTC.
    fn offset(&mut self) -> Result<i32, String> {
        if self.eat(b'Z') || self.eat(b'z') {
            return Ok(0);
        }
        let sign = if self.eat(b'+') {
            1
        } else if self.eat(b'-') {
            -1
        } else {
            return Err(self.fail("a UTC offset (Z, +hh:mm)"));
        };
        let h = self.digits(2, 2, "the offset's hours")?;
        self.eat(b':');
        let m = self.digits(2, 2, "the offset's minutes")?;
        if h > 14 || m > 59 {
            return Err(self.fail("an offset of at most ±14:00"));
        }
        Ok(sign * (h * 60 + m) as i32)
    }
}

fn small(v: u32) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

/// `YYYY-MM-DD[T ]hh:mm:ss[.f][Z|±hh:mm|±hhmm]`.
fn iso8601(text: &str) -> Result<String, String> {
    let mut c = Cursor::new(text);
    let mut p = Parts {
        year: Some(c.digits(4, 4, "a 4-digit year")? as u16),
        ..Parts::default()
    };
    c.literal('-')?;
    p.month = small(c.digits(2, 2, "a 2-digit month")?);
    c.literal('-')?;
    p.day = small(c.digits(2, 2, "a 2-digit day")?);
    if !(c.eat(b'T') || c.eat(b' ') || c.eat(b't')) {
        return Err(c.fail("T between date and time"));
    }
    p.hour = small(c.digits(2, 2, "2-digit hours")?);
    c.literal(':')?;
    p.minute = small(c.digits(2, 2, "2-digit minutes")?);
    c.literal(':')?;
    p.second = small(c.digits(2, 2, "2-digit seconds")?);
    if c.eat(b'.') || c.eat(b',') {
        c.digits(1, 9, "the digits of a fraction")?;
    }
    if !c.rest.is_empty() {
        p.offset = Some(c.offset()?);
    }
    if !c.rest.is_empty() {
        return Err(c.fail("the end of the time stamp"));
    }
    p.finish(text)
}

fn pattern(toks: &[Tok], text: &str) -> Result<String, String> {
    let mut c = Cursor::new(text);
    let mut p = Parts::default();
    for t in toks {
        match t {
            Tok::Year4 => p.year = Some(c.digits(4, 4, "a 4-digit year")? as u16),
            Tok::Year2 => p.year = Some(2000 + c.digits(2, 2, "a 2-digit year")? as u16),
            Tok::Month => p.month = small(c.digits(1, 2, "the month")?),
            Tok::Day => p.day = small(c.digits(1, 2, "the day")?),
            Tok::Hour => p.hour = small(c.digits(1, 2, "the hours")?),
            Tok::Minute => p.minute = small(c.digits(1, 2, "the minutes")?),
            Tok::Second => p.second = small(c.digits(1, 2, "the seconds")?),
            Tok::Fraction => {
                c.digits(1, 9, "the digits of a fraction")?;
            }
            Tok::Offset => p.offset = Some(c.offset()?),
            Tok::Literal(l) => c.literal(*l)?,
        }
    }
    if !c.rest.is_empty() {
        return Err(c.fail("the end of the time stamp"));
    }
    p.finish(text)
}

/// A plug-in's `device_time`: exactly `YYYY-MM-DDThh:mm:ss`, a real calendar time (the wire
/// format's device time, device local time). Returns it unchanged.
pub fn parse_device_time(text: &str) -> Result<String, String> {
    if text.len() != 19 || text.as_bytes().get(10) != Some(&b'T') {
        return Err(format!(
            "device_time {:?} is not YYYY-MM-DDThh:mm:ss",
            text.chars().take(40).collect::<String>()
        ));
    }
    let t = iso8601(text)?;
    if t != text {
        return Err(format!("device_time {text:?} is not YYYY-MM-DDThh:mm:ss"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(fmt: &str, text: &str) -> Result<String, String> {
        TimeFormat::parse(fmt).unwrap().apply(text)
    }

    #[test]
    fn epoch_clocks_give_utc() {
        assert_eq!(
            at("unix_s", "1718000000").as_deref(),
            Ok("2024-06-10T06:13:20")
        );
        assert_eq!(
            at("unix_s", "1718000000.75").as_deref(),
            Ok("2024-06-10T06:13:20")
        );
        assert_eq!(
            at("unix_ms", "1718000000999").as_deref(),
            Ok("2024-06-10T06:13:20")
        );
        assert_eq!(
            at("unix_us", "1718000000999999").as_deref(),
            Ok("2024-06-10T06:13:20")
        );
        assert_eq!(at("unix_s", "0").as_deref(), Ok("1970-01-01T00:00:00"));
        for bad in ["", "12a", "1e9", "1.2.3", "99999999999999999999", "1.x"] {
            assert!(at("unix_s", bad).is_err(), "{bad}");
        }
        assert!(at("unix_s", "-99999999999").is_err(), "before 1582");
    }

    #[test]
    fn iso_stamps_keep_local_time_and_convert_offsets_to_utc() {
        assert_eq!(
            at("iso8601", "2024-06-10T06:13:20").as_deref(),
            Ok("2024-06-10T06:13:20")
        );
        assert_eq!(
            at("iso8601", "2024-06-10 06:13:20.123").as_deref(),
            Ok("2024-06-10T06:13:20")
        );
        assert_eq!(
            at("iso8601", "2024-06-10T06:13:20Z").as_deref(),
            Ok("2024-06-10T06:13:20")
        );
        assert_eq!(
            at("iso8601", "2024-01-01T00:30:00+01:00").as_deref(),
            Ok("2023-12-31T23:30:00")
        );
        assert_eq!(
            at("iso8601", "2024-06-10T23:13:20-0230").as_deref(),
            Ok("2024-06-11T01:43:20")
        );
        for bad in [
            "2024-02-30T00:00:00",
            "2024-06-10",
            "2024-06-10T24:00:00",
            "2024-6-10T06:13:20",
            "2024-06-10T06:13:20 junk",
            "2024-06-10T06:13:20+15:00",
        ] {
            assert!(at("iso8601", bad).is_err(), "{bad}");
        }
        assert!(at("iso8601", "2024-02-29T12:00:00").is_ok(), "leap day");
    }

    #[test]
    fn patterns_read_what_devices_print() {
        assert_eq!(
            at("%m/%d/%y %H:%M:%S", "12/01/05 11:56:29").as_deref(),
            Ok("2005-12-01T11:56:29")
        );
        assert_eq!(
            at("%d.%m.%Y %H:%M", "1.2.2024 7:05").as_deref(),
            Ok("2024-02-01T07:05:00")
        );
        assert_eq!(
            at("%Y%m%d%H%M%S.%f%z", "20240610061320.5+0200").as_deref(),
            Ok("2024-06-10T04:13:20")
        );
        assert_eq!(
            at("%Y-%m-%d %H:%M:%S", "2024-06-10 06:13:2x").unwrap_err(),
            "time \"2024-06-10 06:13:2x\": expected the end of the time stamp at character 19"
        );
        assert!(at("%d.%m.%Y %H:%M", "31.4.2024 7:05").is_err());
    }

    #[test]
    fn bad_formats_are_refused_with_a_reason() {
        for (f, why) in [
            ("epoch", "is not unix_s"),
            ("%Y-%m-%d %H", "has no %M"),
            ("%Y-%m-%d %H:%M %Q", "unknown directive %Q"),
            ("%Y %y %m %d %H %M", "exactly one year"),
            ("%Y %m %d %H %M %M", "appears twice"),
            ("%Y %m %d %H %M %", "lone %"),
        ] {
            let e = TimeFormat::parse(f).unwrap_err();
            assert!(e.contains(why), "{f}: {e}");
        }
    }

    #[test]
    fn a_plugin_device_time_is_exactly_the_wire_form() {
        assert_eq!(
            parse_device_time("2024-06-10T06:13:20").as_deref(),
            Ok("2024-06-10T06:13:20")
        );
        for bad in [
            "2024-06-10 06:13:20",
            "2024-06-10T06:13:20Z",
            "2024-13-10T06:13:20",
            "",
            "2024-06-10T06:13:2",
        ] {
            assert!(parse_device_time(bad).is_err(), "{bad}");
        }
    }
}
