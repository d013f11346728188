//! Harness pieces for penctl tests: our `penctl` and Debian's C `penctl`, and a pen started with
//! a control port (`-C`) on IPv4, IPv6 or a Unix socket, ready when its control port listens.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::{
    free_port, listen_inodes, owns_any, run_to_exit, tcp_table_key, Output, Pen, LISTEN,
    READY_TIMEOUT,
};

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

    /// Whether process `pid` listens on this control address (its own socket, not just anyone's:
    /// see `listens`).
    fn is_ready(&self, pid: u32) -> bool {
        let inodes = match self {
            Control::V4(port) => listen_inodes(
                &tcp_table_key(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port)),
                false,
            ),
            // ::1 as /proc prints it: four 32-bit words in host order.
            Control::V6(port) => listen_inodes(
                &format!("00000000000000000000000001000000:{port:04X}"),
                true,
            ),
            Control::Unix(path) => unix_listen_inodes(path),
        };
        owns_any(pid, &inodes)
    }
}

/// The inodes of the Unix sockets bound to `path` in LISTEN state, from /proc/net/unix (no probe
/// connection, which pen would take as a control command).
fn unix_listen_inodes(path: &Path) -> Vec<u64> {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let path = path.display().to_string();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num, RefCount, Protocol, Flags, Type, St (01: unconnected, a listener), Inode, Path
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(7) == Some(&path.as_str()) && fields.get(5) == Some(&"01"))
                .then(|| fields.get(6)?.parse().ok())
                .flatten()
        })
        .collect()
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
        let pid = pen.pid().expect("a started pen runs");
        let deadline = Instant::now() + READY_TIMEOUT;
        while !control.is_ready(pid) {
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
