//! Logging: journald (through systemd-journal-logger) when started by systemd, stderr otherwise.
//!
//! Level from `WARDGATE_LOG` (`error`, `warn`, `info`, `debug`, `trace`; default `info`). Clinical
//! values are logged at `debug` at most; secrets never.

use log::{LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{:<5} {}: {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Installs the logger once; later calls do nothing.
pub fn init_logging() {
    let level = std::env::var("WARDGATE_LOG")
        .ok()
        .and_then(|s| s.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some()
        && systemd_journal_logger::connected_to_journal();
    let installed = if journald {
        systemd_journal_logger::JournalLog::new()
            .map(|j| j.with_syslog_identifier("wardgate".into()).install())
            .is_ok()
    } else {
        log::set_logger(&Stderr).is_ok()
    };
    if installed {
        // Dependencies (rustls, rumqttc) log at info about every handshake: keep them quieter.
        log::set_max_level(level);
    }
}
