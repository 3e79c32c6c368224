//! The gateway/receiver config loader (`wardgate::config::parse_any`) on arbitrary UTF-8 text:
//! it returns the config or `FILE:line:col` diagnostics, never panics. The path is one that does
//! not exist, so relative paths resolve under it (the file checks then only stat, and open,
//! paths the text names).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match wardgate::config::parse_any(Path::new("/nonexistent/wardgate-fuzz/wardgate.toml"), text) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = w.to_string();
            }
        }
        Err(d) => {
            assert!(!d.0.is_empty(), "an error without a diagnostic");
            let _ = d.to_string();
        }
    }
});
