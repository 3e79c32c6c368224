//! Measuring helpers for the benches in `tests/benches/` (issue 11 "Measure"): medians and
//! percentiles, a child process's CPU time and peak RSS read from `/proc`, the harness
//! input and the count of what arrived ([`harness`]), the raw SQLite ceiling ([`raw`]) and the
//! in-process pipeline ([`pipeline`]) that both `throughput.rs` (the
//! one bench command, `scripts/bench`) and `pipeline.rs` run.

pub mod harness;
pub mod pipeline;
pub mod raw;

use crate::{Context, Result};
use std::time::{SystemTime, UNIX_EPOCH};

/// `$name` as a number, `default` when unset or not a number.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (the upper one of an even count); NaN when `v` is empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `q` quantile (0..=1, nearest rank below) of an ascending `sorted`; NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Microseconds since the Unix epoch, now.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Clock ticks per second of `/proc/PID/stat`'s times (`getconf CLK_TCK`; 100 if that fails,
/// the Linux value on every architecture we run on).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds process `pid` has used so far (`utime` + `stime`, fields 14 and
/// 15 of `/proc/PID/stat`, divided by `ticks` per second). Errors: the process is gone, or the
/// file does not have those fields.
pub fn cpu_seconds(pid: i32, ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    Ok((field(11)? + field(12)?) / ticks)
}

/// Peak resident set size of process `pid` so far, KiB (`VmHWM` of `/proc/PID/status`).
pub fn peak_rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no VmHWM"))
}

/// The machine's load averages over 1, 5 and 15 minutes (`/proc/loadavg`), as text.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentile_pick_ranks() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(median(&[]).is_nan());
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 51.0);
        assert_eq!(percentile(&s, 0.99), 100.0);
    }

    #[test]
    fn this_process_has_cpu_time_and_a_peak_rss() {
        let pid = std::process::id() as i32;
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until at least one clock tick is charged (bounded).
        while cpu_seconds(pid, clock_ticks()).unwrap() == 0.0 && t0.elapsed().as_secs() < 10 {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(cpu_seconds(pid, clock_ticks()).unwrap() > 0.0);
        assert!(peak_rss_kib(pid).unwrap() > 100);
        assert!(cpu_seconds(i32::MAX, 100.0).is_err());
    }
}
