//! A private `dbus-daemon` for tests and the demo: no root, no system bus, no hardware.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::Error;

/// Where the daemon binary is looked up.
pub const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

/// A private D-Bus daemon listening on a unix socket in its own temporary directory.
///
/// Point a client at it with `DBUS_SYSTEM_BUS_ADDRESS=<bus.address()>` (libdbus reads the
/// variable when the connection is opened). The daemon is killed, by PID, on drop.
pub struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("address", &self.address)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Bus {
    /// Starts `dbus-daemon` with a generated configuration: a `custom` bus on a unix socket
    /// under a fresh temporary directory, EXTERNAL authentication, and a policy that allows
    /// everything (any name may be owned, any message sent). Returns once the daemon has
    /// printed its address (i.e. it is listening).
    ///
    /// Fails with [`Error::DaemonMissing`] when `/usr/bin/dbus-daemon` is absent
    /// (`apt-get install dbus-daemon`), so callers can skip with a reason.
    pub fn start() -> Result<Bus, Error> {
        Self::start_with(Path::new(DBUS_DAEMON))
    }

    /// As [`Bus::start`] with an explicit daemon binary.
    pub fn start_with(daemon: &Path) -> Result<Bus, Error> {
        if !daemon.exists() {
            return Err(Error::DaemonMissing(daemon.to_path_buf()));
        }
        let dir = tempfile::Builder::new()
            .prefix("wardgate-blesim-")
            .tempdir()
            .map_err(|e| Error::Io("creating the bus directory".into(), e))?;
        let socket: PathBuf = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, config_xml(&socket))
            .map_err(|e| Error::Io(format!("writing {}", config.display()), e))?;
        // The daemon's stderr goes to a file in the bus directory (as root it warns that it
        // cannot raise the fd limit); its content is quoted if startup fails.
        let log_path = dir.path().join("dbus-daemon.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| Error::Io(format!("creating {}", log_path.display()), e))?;
        let mut child = Command::new(daemon)
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .arg("--print-address=1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| Error::Io(format!("spawning {}", daemon.display()), e))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let address = line.trim().to_string();
        if read.is_err() || address.is_empty() {
            let _ = child.kill();
            let status = child.wait().ok();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(Error::DaemonFailed(format!(
                "{} printed no address (exit: {status:?}): {}",
                daemon.display(),
                log.trim()
            )));
        }
        Ok(Bus {
            child,
            address,
            _dir: dir,
        })
    }

    /// The bus address, e.g. `unix:path=/tmp/wardgate-blesim-XXXX/bus,guid=...`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        // `Child::kill` signals exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_xml(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>wardgate-blesim</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}
