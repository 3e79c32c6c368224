//! The plug-in launcher: what a plug-in's process runs first, so that it starts with **only**
//! stdin, stdout and stderr open.
//!
//! A child inherits every descriptor of its parent that is not close-on-exec. The daemon's own
//! files are (Rust's standard library, tokio, SQLite and the serial port crate all open with
//! `O_CLOEXEC`), but one left open by a library — or by the simulated devices that share a
//! process with the daemon in `wardgate demo` and the tests — would go with the plug-in: a
//! serial port's `flock` held by a plug-in after the daemon closed it, a pty that never hangs
//! up. Closing them between `fork` and `exec` needs `unsafe` code (`pre_exec`), which the
//! workspace denies; so the daemon starts its own binary with [`LAUNCH_ARG`], which closes
//! every descriptor above 2 and `execv`s the plug-in in the same process (same pid, process
//! group, environment and working directory).
//!
//! `wardgate`'s `main` calls [`launch`] when its first argument is [`LAUNCH_ARG`]
//! (`ExecAdapter::with_launcher`).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

/// The first argument that makes the `wardgate` binary a plug-in launcher.
pub const LAUNCH_ARG: &str = "__wardgate-exec-plugin";

/// Closes every descriptor above 2, then replaces the process with `argv[0]` (a path) called
/// with `argv`. Returns only when that fails: the exit status (126: cannot execute, 127: not
/// found or no program given), after saying why on stderr (the daemon logs the plug-in's
/// stderr).
pub fn launch(argv: &[OsString]) -> u8 {
    let Some(program) = argv.first() else {
        eprintln!("wardgate plug-in launcher: no program given");
        return 127;
    };
    close_inherited();
    let cstr = |s: &OsString| CString::new(s.as_bytes()).ok();
    let (Some(path), Some(args)) = (
        cstr(program),
        argv.iter().map(cstr).collect::<Option<Vec<CString>>>(),
    ) else {
        eprintln!("wardgate plug-in launcher: a NUL character in the program or its arguments");
        return 127;
    };
    let err = match nix::unistd::execv(&path, &args) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!(
        "wardgate plug-in launcher: cannot execute {}: {}",
        program.to_string_lossy(),
        err.desc()
    );
    if err == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    }
}

/// Closes every open descriptor above 2 (from `/proc/self/fd`; without `/proc`, 3 to 65535).
fn close_inherited() {
    let listed: Option<Vec<i32>> = std::fs::read_dir("/proc/self/fd").ok().map(|d| {
        d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    });
    // The directory's own descriptor is closed once `read_dir` is dropped (above); closing it
    // again fails harmlessly.
    let fds = listed.unwrap_or_else(|| (3..65_536).collect());
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        let _ = nix::unistd::close(fd);
    }
}
