//! Harness pieces for penctl tests: our `penctl` and Debian's C `penctl`, and a pen started with
//! a control port (`-C`) on IPv4, IPv6 or a Unix socket, ready when its control port listens.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::{free_port, is_listening, run_to_exit, Output, Pen, LISTEN, READY_TIMEOUT};

/// Where Debian installs the C penctl (it comes with the pen package).
pub const C_PENCTL: &str = "/usr/bin/penctl";
/// No penctl run in these tests comes near this; it keeps a broken test finite.
pub const PENCTL_LIMIT: Duration = Duration::from_secs(30);

/// Our `penctl` (`$PENCTL_BIN` overrides).
pub fn our_penctl() -> PathBuf {
    crate::our_binary("penctl", "PENCTL_BIN")
}

/// Debian's C penctl, under the same rule as `c_pen`: missing, it fails the test unless
/// `PEN_SKIP_C_PEN=1` says to skip comparisons knowingly.
pub fn c_penctl() -> Option<PathBuf> {
    let bin = PathBuf::from(C_PENCTL);
    if bin.is_file() {
        return Some(bin);
    }
    crate::c_pen()?;
    panic!("{C_PENCTL} is missing although the C pen is installed (apt-get install -y pen)");
}

/// Run a penctl to completion (bounded).
pub fn run_penctl(bin: &Path, args: &[&str]) -> Output {
    run_to_exit(bin, args, PENCTL_LIMIT)
}

/// Whether this process runs as root (pen then needs `-u` for a control port).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Where a pen's control port is.
#[derive(Debug, Clone)]
pub enum Control {
    V4(u16),
    V6(u16),
    Unix(PathBuf),
}

impl Control {
    /// A fresh IPv4 loopback control port.
    pub fn v4() -> Control {
        Control::V4(free_port())
    }

    /// A fresh IPv6 loopback control port. Fails the test if `::1` is missing (CI has it).
    pub fn v6() -> Control {
        let listener = TcpListener::bind("[::1]:0").unwrap_or_else(|e| {
            panic!("this test needs the IPv6 loopback address ::1, which can't be bound: {e}")
        });
        Control::V6(listener.local_addr().expect("local_addr").port())
    }

    /// The `-C` argument, in pen's own notation (unbracketed IPv6).
    pub fn arg(&self) -> String {
        match self {
            Control::V4(port) => format!("127.0.0.1:{port}"),
            Control::V6(port) => format!("::1:{port}"),
            Control::Unix(path) => path.display().to_string(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Control::V4(port) => is_listening(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port)),
            Control::V6(port) => is_listening_v6_loopback(*port),
            Control::Unix(path) => std::fs::read_to_string("/proc/net/unix").is_ok_and(|t| {
                t.lines()
                    .any(|l| l.ends_with(&format!(" {}", path.display())))
            }),
        }
    }
}

/// Whether `[::1]:port` is in LISTEN state, from /proc/net/tcp6 (no probe connection, which
/// pen would take as a control command).
fn is_listening_v6_loopback(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp6") else {
        return false;
    };
    // ::1 as /proc prints it: four 32-bit words in host order.
    let want = format!("00000000000000000000000001000000:{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    })
}

/// A pen with a control port. Dropping it stops pen.
pub struct ControlledPen {
    pub pen: Pen,
    pub control: Control,
}

impl ControlledPen {
    /// Start `bin` as `pen -f [-u root] -C CONTROL EXTRA... LISTEN SERVERS...` and wait until
    /// both the listener and the control port listen. As root, pen refuses a control port
    /// without `-u`, so `-u root` is added then.
    pub fn start(bin: &Path, control: Control, extra: &[&str], servers: &[String]) -> Self {
        let ctl = control.arg();
        let mut args: Vec<&str> = vec!["-f"];
        if running_as_root() {
            args.extend(["-u", "root"]);
        }
        args.extend(["-C", &ctl]);
        args.extend(extra);
        args.push(LISTEN);
        args.extend(servers.iter().map(String::as_str));
        let pen = Pen::start(bin, &args);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !control.is_ready() {
            assert!(
                Instant::now() < deadline,
                "{} {args:?}: the control port {ctl} is not listening after {READY_TIMEOUT:?}",
                bin.display()
            );
            thread::sleep(Duration::from_millis(10));
        }
        ControlledPen { pen, control }
    }

    /// The control address for penctl, in pen's notation.
    pub fn address(&self) -> String {
        self.control.arg()
    }
}
