//! Messages to the local syslog daemon: RFC 3164 datagrams on its Unix socket, facility user,
//! as openlog(ident, LOG_PID, LOG_USER) would send them.
//!
//! The socket is connected when the daemon starts, before any chroot hides it; if the syslog
//! daemon restarts, the next message reconnects (which only works outside a jail).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::Level;

/// Where syslog listens, unless `PEN_SYSLOG_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/dev/log";

/// LOG_USER.
const FACILITY_USER: u8 = 1;

/// syslog severities pen uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Err = 3,
    Warning = 4,
    Info = 6,
    Debug = 7,
}

impl Severity {
    pub fn from_level(level: Level) -> Severity {
        match level {
            Level::ERROR => Severity::Err,
            Level::WARN => Severity::Warning,
            Level::INFO => Severity::Info,
            _ => Severity::Debug,
        }
    }
}

/// A connection to the syslog daemon.
#[derive(Debug)]
pub struct Syslog {
    socket: UnixDatagram,
    path: PathBuf,
    ident: String,
    pid: u32,
}

impl Syslog {
    /// Connect to the socket named by `PEN_SYSLOG_SOCKET`, or `/dev/log`.
    pub fn connect_default(ident: &str) -> io::Result<Syslog> {
        let path = std::env::var_os("PEN_SYSLOG_SOCKET")
            .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
        Syslog::connect(&path, ident)
    }

    pub fn connect(path: &Path, ident: &str) -> io::Result<Syslog> {
        let socket = UnixDatagram::unbound()?;
        socket
            .connect(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Syslog {
            socket,
            path: path.to_path_buf(),
            ident: ident.to_string(),
            pid: std::process::id(),
        })
    }

    /// Send one message; a lost message is not worth failing anything for.
    pub fn send(&self, severity: Severity, message: &str) {
        let line = format_line(
            severity,
            &self.ident,
            self.pid,
            &chrono::Local::now().format("%b %e %H:%M:%S").to_string(),
            message,
        );
        if self.socket.send(line.as_bytes()).is_err() && self.socket.connect(&self.path).is_ok() {
            let _ = self.socket.send(line.as_bytes());
        }
    }
}

/// The longest message sent whole (rsyslog's default limit is 8 KiB). A longer one is cut, and
/// says so: the socket would refuse a datagram much longer, and the message would be lost.
pub const MAX_MESSAGE: usize = 8000;

/// `<PRI>Mmm dd hh:mm:ss ident[pid]: message`, without a trailing newline; a message longer
/// than `MAX_MESSAGE` bytes is cut (at a character boundary) and ends in `... (N bytes)`.
pub fn format_line(
    severity: Severity,
    ident: &str,
    pid: u32,
    stamp: &str,
    message: &str,
) -> String {
    let pri = FACILITY_USER * 8 + severity as u8;
    let message = crate::control::excerpt_within(message.trim_end_matches('\n'), MAX_MESSAGE);
    format!("<{pri}>{stamp} {ident}[{pid}]: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_rfc3164_with_facility_user() {
        assert_eq!(
            format_line(Severity::Info, "pen", 42, "Nov  2 07:38:05", "Time x\n"),
            "<14>Nov  2 07:38:05 pen[42]: Time x"
        );
        assert_eq!(
            format_line(Severity::Err, "penlogd", 7, "Jan 10 00:00:00", "a\nb\n\n"),
            "<11>Jan 10 00:00:00 penlogd[7]: a\nb"
        );
        let long = "x".repeat(1 << 20);
        let line = format_line(Severity::Warning, "pen", 1, "Jan 10 00:00:00", &long);
        let kept = format!("<12>Jan 10 00:00:00 pen[1]: {}", "x".repeat(MAX_MESSAGE));
        assert_eq!(line, format!("{kept}... (1048576 bytes)"));
        assert_eq!(Severity::from_level(Level::TRACE), Severity::Debug);
        assert_eq!(Severity::from_level(Level::WARN), Severity::Warning);
    }

    #[test]
    fn messages_reach_the_socket() {
        let path = std::env::temp_dir().join(format!("pen-syslog-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let log = Syslog::connect(&path, "pen").unwrap();
        log.send(Severity::Warning, "hello\n");
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(got.starts_with("<12>"), "{got}");
        assert!(
            got.ends_with(&format!(" pen[{}]: hello", std::process::id())),
            "{got}"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(Syslog::connect(&path, "pen").is_err());
    }
}
