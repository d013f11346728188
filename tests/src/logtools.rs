//! Harness for the log tools (penlog, penlogd, mergelogs), ours and Debian's C ones: finding the
//! binaries, running a daemon until it has bound its UDP port, running a filter with input and
//! environment, sending datagrams from chosen source addresses, and generating Apache logs
//! whose right answers are known.
//!
//! Every wait is bounded, and every process started here is stopped by its PID.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::STOP_GRACE;

/// How long a daemon may take to bind, a filter to finish, an output line to appear.
pub const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// Our binary `name`, built beside our pen.
pub fn our_bin(name: &str) -> PathBuf {
    crate::our_binary(name, &format!("{}_BIN", name.to_uppercase()))
}

/// Debian's C tool `name` (from the `pen` package). Missing, it fails the test, unless
/// `PEN_SKIP_C_PEN=1` says to skip comparisons knowingly (then None).
pub fn c_bin(name: &str) -> Option<PathBuf> {
    crate::c_pen()?;
    let bin = Path::new("/usr/bin").join(name);
    assert!(
        bin.is_file(),
        "{} is missing: the `pen` package ships it (apt-get install -y pen)",
        bin.display()
    );
    Some(bin)
}

/// Poll `f` until it returns Some, at most `timeout`; panic naming `what` otherwise.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(POLL);
    }
}

/// A directory removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "pen-logtools-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create a scratch directory");
        Scratch(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `join` as a string, for command lines.
    pub fn arg(&self, name: &str) -> String {
        self.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A UDP port nobody uses right now (bound to port 0 on every IPv4 address, then released).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind udp port 0")
}

/// Whether a UDP socket is bound to `port` (any address, IPv4 or IPv6), from /proc.
pub fn udp_bound(port: u16) -> bool {
    !udp_inodes(port).is_empty()
}

/// Whether process `pid` itself has a UDP socket bound to `port` (someone else's socket on a port
/// `free_udp_port` handed out would look the same to `udp_bound`).
pub fn udp_bound_by(pid: u32, port: u16) -> bool {
    crate::owns_any(pid, &udp_inodes(port))
}

/// The inodes of the UDP sockets bound to `port`, on any address, IPv4 or IPv6.
fn udp_inodes(port: u16) -> Vec<u64> {
    let want = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    // sl, local_address, rem_address, st, tx:rx, tr:when, retrnsmt, uid, timeout,
                    // inode
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields
                        .get(1)?
                        .ends_with(&want)
                        .then(|| fields.get(9)?.parse().ok())
                        .flatten()
                })
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// Has the process a handler for SIGTERM (SigCgt in /proc/PID/status)?
pub fn catches_term(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << 14) != 0)
}

/// Send `sig` (a name like "HUP") to `pid` with the `kill` command.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A penlogd (ours or C) in the foreground on a free UDP port. Dropping it stops it.
pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: Scratch,
}

impl Daemon {
    /// Start `bin ARGS... PORT` and wait until the port is bound and TERM is handled.
    pub fn start(bin: &Path, args: &[&str]) -> Daemon {
        let mut failures = String::new();
        for _ in 0..5 {
            let dir = Scratch::new("daemon");
            let port = free_udp_port();
            let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
            let child = Command::new(bin)
                .args(args)
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(File::create(&stdout).expect("stdout file"))
                .stderr(File::create(&stderr).expect("stderr file"))
                .spawn()
                .unwrap_or_else(|e| panic!("can't run {}: {e}", bin.display()));
            let mut d = Daemon {
                child: Some(child),
                port,
                stdout,
                stderr,
                _dir: dir,
            };
            let pid = d.pid();
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = d.try_wait() {
                    failures.push_str(&format!(
                        "\n  exited ({status}) on port {port}: {}",
                        d.stderr_text()
                    ));
                    break;
                }
                if udp_bound_by(pid, port) && catches_term(pid) {
                    return d;
                }
                if Instant::now() >= deadline {
                    panic!("{} did not bind port {port} within {WAIT:?}", bin.display());
                }
                thread::sleep(POLL);
            }
        }
        panic!("{} did not start:{failures}", bin.display());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Where to send datagrams: 127.0.0.1 and the port.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// SIGTERM, and the exit status (None if it had to be killed).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        signal(child.id(), "TERM");
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// What a finished filter run printed.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Run `bin ARGS` with `input` on stdin and `env` added, to completion within `limit`
/// (killed by PID and a panic otherwise).
pub fn run(bin: &Path, args: &[&str], input: &[u8], env: &[(&str, &str)], limit: Duration) -> Run {
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("can't run {}: {e}", bin.display()));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let feeder = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {args:?} did not finish within {limit:?}", bin.display());
        }
        thread::sleep(POLL);
    };
    let _ = feeder.join();
    Run {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
    }
}

/// Send one datagram to `to` from `from` (an address of this machine; port 0 = any).
pub fn send_from(from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    let socket = UdpSocket::bind(from).unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket
        .send_to(payload, to)
        .unwrap_or_else(|e| panic!("send to {to}: {e}"));
}

/// A UDP receiver on 127.0.0.1 (a stand-in penlogd that keeps the raw datagrams).
pub struct Sink {
    socket: UdpSocket,
}

impl Sink {
    pub fn new() -> Sink {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a udp sink");
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("set_read_timeout");
        Sink { socket }
    }

    pub fn port(&self) -> u16 {
        self.socket.local_addr().map_or(0, |a| a.port())
    }

    /// Every datagram until none arrives for half a second (bounded by `WAIT` overall).
    pub fn drain(&self) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            match self.socket.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(_) => break,
            }
        }
        got
    }
}

impl Default for Sink {
    fn default() -> Self {
        Sink::new()
    }
}
