//! Harness for pen's integration tests: the `pen` binary started on a free port, backends in
//! threads on port 0, clients bound to chosen 127.0.0.N sources, and /proc probes.
//!
//! Rules every helper follows: each wait is bounded (in time and in count), waits poll for an
//! event rather than sleeping a fixed time, every pen process is stopped by its PID, and every
//! backend thread ends (bounded) when its `Backend` is dropped.

// Each test crate uses a different part of the harness.
#![allow(dead_code)]

pub mod netns;
pub mod service;
pub mod tls;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};

pub mod control;
pub mod mmdb;
pub mod stream;
pub mod udp;

/// The binary under test.
pub const PEN: &str = env!("CARGO_BIN_EXE_pen");

/// Read and write timeout of every client and backend socket: the backstop that keeps a broken
/// pen from hanging a test forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long pen may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(5);

// ---- waiting ---------------------------------------------------------------------------------

/// Poll `f` until it returns Some, for at most `timeout`; None if it never did.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Poll `f` until it returns Some, for at most `timeout`; panic naming `what` otherwise.
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

// ---- temporary directories -------------------------------------------------------------------

/// A directory removed on drop (std has no tempfile).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Short: Unix socket paths must fit in 107 bytes.
        let path =
            std::env::temp_dir().join(format!("pen-{tag}-{}-{n}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---- deterministic data -----------------------------------------------------------------------

/// `len` pseudo-random bytes from `seed` (xorshift64*), the same on every run.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One row of /proc/PID/net/{tcp,tcp6,udp,udp6}, as the kernel writes it: addresses in its hex
/// form (`0100007F:1F90` for 127.0.0.1:8080), the state in hex (TCP: `0A` listening, `08`
/// CLOSE_WAIT).
#[derive(Debug, Clone)]
pub struct SocketRow {
    pub local: String,
    pub remote: String,
    pub state: String,
    pub inode: u64,
}

/// The sockets of protocol `proto` (`tcp` or `udp`; the IPv4 and IPv6 tables) of the network
/// namespace of process `pid`, so that a pen started in another namespace is seen too.
pub fn socket_rows(pid: u32, proto: &str) -> Vec<SocketRow> {
    [proto.to_string(), format!("{proto}6")]
        .iter()
        .filter_map(|t| fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    Some(SocketRow {
                        local: f.get(1)?.to_string(),
                        remote: f.get(2)?.to_string(),
                        state: f.get(3)?.to_string(),
                        inode: f.get(9)?.parse().ok()?,
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The kernel's hex form of an IPv4 socket address in /proc/net/tcp.
pub fn proc_tcp_addr(a: std::net::SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(a.ip().octets()),
        a.port()
    )
}

/// The TCP sockets process `pid` holds open in CLOSE_WAIT (the peer has closed, the process
/// has not), as "local remote" in the table's hex.
pub fn close_wait_sockets(pid: u32) -> Vec<String> {
    let mine = socket_inodes(pid);
    socket_rows(pid, "tcp")
        .into_iter()
        .filter(|r| r.state == "08" && mine.contains(&r.inode))
        .map(|r| format!("{} {}", r.local, r.remote))
        .collect()
}

/// What pen wrote to its pid file at `path`. pen writes it just after it starts listening,
/// which is all `Pen::start` waits for, so wait (bounded) for it to appear (it is written whole,
/// by a rename, so once there it is complete).
pub fn read_pid_file(path: &Path) -> String {
    wait_until("the pid file", IO_TIMEOUT, || fs::read_to_string(path).ok())
}

/// Write `data` in pseudo-random chunk sizes (1 byte to 64 KiB, from `seed`), so that the
/// relay sees reads and writes of every size.
pub fn write_in_chunks(s: &mut impl Write, data: &[u8], seed: u64) -> io::Result<()> {
    let sizes = pattern(seed, data.len() / 512 + 16);
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let r = u16::from_le_bytes([sizes[i % sizes.len()], sizes[(i + 1) % sizes.len()]]);
        let size = 1 + usize::from(r) % (64 * 1024);
        let end = (at + size).min(data.len());
        s.write_all(&data[at..end])?;
        at = end;
        i += 2;
    }
    Ok(())
}

/// Where two byte strings first differ (for readable assertion messages on megabytes).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Assert two large byte strings are equal without printing them.
#[track_caller]
pub fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if let Some(at) = first_difference(got, want) {
        panic!(
            "{what}: got {} bytes, want {}; first difference at byte {at}",
            got.len(),
            want.len()
        );
    }
}

// ---- streams of either family -----------------------------------------------------------------

/// A connected socket, TCP or Unix.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    pub fn set_timeouts(&self, t: Option<Duration>) {
        let _ = match self {
            Stream::Tcp(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
            Stream::Unix(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
        };
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) {
        let _ = match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        };
    }

    /// Close with a reset (SO_LINGER 0) instead of a FIN. Unix sockets just close.
    pub fn reset(self) {
        if let Stream::Tcp(s) = &self {
            let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Read one line (without the `\n`), a byte at a time (replies here are a few bytes).
pub fn read_line(r: &mut impl Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {:?}", String::from_utf8_lossy(&line)),
                ))
            }
            _ if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            _ if line.len() > 4096 => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"))
            }
            _ => line.push(byte[0]),
        }
    }
}

/// Send a byte and read the backend's one-line answer (its name, for `Backend::named`).
pub fn ask(s: &mut (impl Read + Write)) -> io::Result<String> {
    s.write_all(b"?")?;
    read_line(s)
}

/// The segments the TCP socket from `local` to `peer` has received, as `ss` counts them.
pub fn segs_in(local: SocketAddr, peer: SocketAddr) -> u32 {
    let ss = std::process::Command::new("ss")
        .args(["-Htin", "src", &local.to_string(), "dst", &peer.to_string()])
        .output()
        .expect("ss (iproute2)");
    let info = String::from_utf8_lossy(&ss.stdout);
    info.split_whitespace()
        .find_map(|t| t.strip_prefix("segs_in:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no segs_in in ss's answer for {local} to {peer}: {info:?}"))
}

/// Read until EOF or an error; the error kind, if any.
pub fn drain(r: &mut impl Read) -> Result<usize, io::ErrorKind> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.kind()),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// True if nothing arrives on `s` within `wait` (the connection stays open and silent).
pub fn stays_silent(s: &mut Stream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait));
    let mut b = [0u8; 1];
    let silent = matches!(s.read(&mut b), Err(ref e) if is_timeout(e));
    s.set_read_timeout(Some(IO_TIMEOUT));
    silent
}

// ---- clients ---------------------------------------------------------------------------------

/// A TCP connection to `to` from `src_ip:src_port` (port 0: any). Retries a few times if the
/// source address is briefly unavailable.
pub fn connect_from(src_ip: Ipv4Addr, src_port: u16, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(src_ip, src_port)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s = TcpStream::from(socket);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// A TCP connection to `to` with the harness timeouts.
pub fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Socket options for a test's own TCP socket, set before the handshake so that the window and
/// the MSS it announces already reflect them. None: the kernel's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    /// SO_RCVBUF (the kernel doubles it, and stops autotuning it).
    pub rcvbuf: Option<usize>,
    /// SO_SNDBUF (likewise).
    pub sndbuf: Option<usize>,
    /// TCP_MAXSEG: the MSS announced to the peer. Loopback's 64 KiB MTU makes the peer's send
    /// buffer autotune to megabytes at once; an Ethernet-sized MSS keeps it at tens of KiB, as
    /// on a real network.
    pub mss: Option<u32>,
}

impl Tuning {
    fn apply(&self, socket: &Socket) -> io::Result<()> {
        if let Some(size) = self.rcvbuf {
            socket.set_recv_buffer_size(size)?;
        }
        if let Some(size) = self.sndbuf {
            socket.set_send_buffer_size(size)?;
        }
        if let Some(mss) = self.mss {
            socket.set_mss(mss)?;
        }
        Ok(())
    }
}

/// A TCP connection to `to` with the harness timeouts and `tuning`.
pub fn connect_tuned(to: SocketAddr, tuning: Tuning) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    tuning.apply(&socket)?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s = TcpStream::from(socket);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

pub fn loopback(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A free TCP port on `ip` (bound to port 0, then released). Another process may take it before
/// it is used: callers retry.
pub fn free_port(ip: std::net::IpAddr) -> u16 {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind port 0")
}

pub fn ipv6_available() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

// ---- process probes ----------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Whole seconds from the environment variable `name` (a long run's length, such as
/// `PEN_SOAK_SECS`), or `default`.
pub fn secs_from_env(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// User plus system CPU time the process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse().expect("utime");
    let stime: f64 = fields[12].parse().expect("stime");
    (utime + stime) / clock_ticks()
}

/// CPU seconds the process uses while `f` runs.
pub fn cpu_during(pid: u32, f: impl FnOnce()) -> f64 {
    let before = cpu_seconds(pid);
    f();
    cpu_seconds(pid) - before
}

/// Number of open descriptors of the process.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of the process (VmRSS), in KiB; 0 if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let v = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            v.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// The most a TCP socket's receive and send buffers can autotune to (the third fields of
/// `net.ipv4.tcp_rmem` and `tcp_wmem`), in bytes: what the kernel may hold for a socket whose
/// owner did not set a size. None if unreadable.
pub fn tcp_buffer_max() -> Option<(usize, usize)> {
    let max = |name: &str| -> Option<usize> {
        fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    };
    Some((max("tcp_rmem")?, max("tcp_wmem")?))
}

/// pen's descriptor count once two reads in a row agree (bounded).
pub fn stable_fd_count(pen: &Pen) -> usize {
    let pid = pen.pid();
    let mut last = fd_count(pid);
    poll_until(Duration::from_secs(2), || {
        let now = fd_count(pid);
        let stable = now == last;
        last = now;
        stable.then_some(now)
    })
    .unwrap_or(last)
}

/// Echo everything `s` sends until its EOF, then half-close.
pub fn echo_until_eof(mut s: Stream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Socket inodes the process holds open.
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let l = link.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Has the process installed a handler for signal `sig` (SigCgt in /proc/PID/status)?
pub fn catches_signal(pid: u32, sig: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

pub const SIGINT: u32 = 2;
pub const SIGTERM: u32 = 15;

/// Inodes of TCP sockets listening on `port` in the network namespace of process `pid` (so a
/// pen started in another namespace is seen too).
fn tcp_listen_inodes(pid: u32, port: u16) -> Vec<u64> {
    let want = format!(":{port:04X}");
    socket_rows(pid, "tcp")
        .into_iter()
        .filter(|r| r.local.ends_with(&want) && r.state == "0A")
        .map(|r| r.inode)
        .collect()
}

/// Inodes of Unix sockets listening at `path`.
fn unix_listen_inodes(path: &Path) -> Vec<u64> {
    let Ok(table) = fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let path = path.to_string_lossy();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = listening.
            let listening = u32::from_str_radix(f.get(3)?, 16).ok()? & 0x10000 != 0;
            (listening && f.get(7) == Some(&path.as_ref()))
                .then(|| f[6].parse().ok())
                .flatten()
        })
        .collect()
}

// ---- pen ---------------------------------------------------------------------------------------

/// Where pen listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// `127.0.0.1:PORT` on a free port.
    V4,
    /// `[::1]:PORT` on a free port.
    V6,
    /// A Unix socket at this path.
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub enum PenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A running pen, stopped by PID (SIGTERM, then SIGKILL) when dropped.
pub struct Pen {
    child: Child,
    pub addr: PenAddr,
    /// What was passed as LISTEN.
    pub listen_arg: String,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    exited: Option<ExitStatus>,
    _dir: Option<TempDir>,
}

/// What a pen run that exited by itself printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Wait for `child` to exit, for at most `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    poll_until(timeout, || child.try_wait().ok().flatten())
}

/// Run pen with `args` to completion (it is expected to exit by itself) within `timeout`;
/// killed and reported as a panic if it does not.
pub fn run_pen(args: &[&str], timeout: Duration) -> Output {
    run_pen_with(&[], args, timeout)
}

/// `run_pen`, with these variables added to pen's environment.
pub fn run_pen_with(env: &[(&str, &str)], args: &[&str], timeout: Duration) -> Output {
    let dir = TempDir::new("run");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(PEN)
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn pen");
    let status = wait_child(&mut child, timeout);
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "pen {args:?} did not exit within {timeout:?}; stderr: {}",
            fs::read_to_string(&err).unwrap_or_default()
        )
    });
    Output {
        status,
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    }
}

impl Pen {
    /// `pen -f OPTS... 127.0.0.1:PORT SERVERS...`
    pub fn start(opts: &[&str], servers: &[String]) -> Pen {
        Pen::start_on(Listen::V4, opts, servers)
    }

    /// `pen -f OPTS... LISTEN SERVERS...`
    pub fn start_on(listen: Listen, opts: &[&str], servers: &[String]) -> Pen {
        Pen::spawn(listen, &[], |l| {
            let mut args = vec!["-f".to_string()];
            args.extend(opts.iter().map(|s| s.to_string()));
            args.push(l.to_string());
            args.extend(servers.iter().cloned());
            args
        })
    }

    /// Start `WRAPPER... pen ARGS(listen)...` and wait until pen listens and handles SIGTERM. A
    /// TCP listen port that another process took in the meantime is replaced by a fresh one (up
    /// to 5 tries).
    pub fn spawn(listen: Listen, wrapper: &[&str], args: impl Fn(&str) -> Vec<String>) -> Pen {
        let dir = TempDir::new("pen");
        let mut last_err = String::new();
        for attempt in 0..5 {
            let (listen_arg, addr) = match &listen {
                Listen::V4 => {
                    let port = free_port(Ipv4Addr::LOCALHOST.into());
                    (
                        format!("127.0.0.1:{port}"),
                        PenAddr::Tcp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)),
                    )
                }
                Listen::V6 => {
                    let port = free_port(Ipv6Addr::LOCALHOST.into());
                    (
                        format!("[::1]:{port}"),
                        PenAddr::Tcp(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)),
                    )
                }
                Listen::Unix(path) => (path.display().to_string(), PenAddr::Unix(path.clone())),
            };
            let full_args = args(&listen_arg);
            let mut pen = Pen::launch(&dir, attempt, wrapper, &full_args, addr, listen_arg);
            match pen.wait_listening() {
                Ok(()) => {
                    pen._dir = Some(dir);
                    return pen;
                }
                Err(status) => {
                    last_err = format!(
                        "pen {full_args:?} exited with {status:?} before listening; stderr:\n{}",
                        pen.stderr_text()
                    );
                    let retry = matches!(pen.addr, PenAddr::Tcp(_))
                        && status.is_some()
                        && pen.stderr_text().contains("in use");
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("{last_err}");
    }

    /// Start `WRAPPER... pen ARGS...` (attempt number `attempt`: its stdout and stderr go to
    /// files of that number in `dir`), without waiting for anything.
    pub(crate) fn launch(
        dir: &TempDir,
        attempt: usize,
        wrapper: &[&str],
        args: &[String],
        addr: PenAddr,
        listen_arg: String,
    ) -> Pen {
        let stderr_path = dir.join(&format!("stderr.{attempt}"));
        let stdout_path = dir.join(&format!("stdout.{attempt}"));
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(PEN);
                c
            }
            None => Command::new(PEN),
        };
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("stdout file"))
            .stderr(File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn pen");
        Pen {
            child,
            addr,
            listen_arg,
            stderr_path,
            stdout_path,
            exited: None,
            _dir: None,
        }
    }

    /// Wait until pen holds a listening socket on its address and handles SIGTERM and SIGINT
    /// (so that stopping it is graceful). Err(exit status) if it exited (None: it neither exited
    /// nor got ready in time; it has been killed).
    fn wait_listening(&mut self) -> Result<(), Option<ExitStatus>> {
        let pid = self.pid();
        let addr = self.addr.clone();
        let outcome = poll_until(START_TIMEOUT, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(Err(Some(status)));
            }
            let listening = match &addr {
                PenAddr::Tcp(sa) => tcp_listen_inodes(pid, sa.port()),
                PenAddr::Unix(path) => unix_listen_inodes(path),
            };
            let mine = socket_inodes(pid);
            let handlers = catches_signal(pid, SIGTERM) && catches_signal(pid, SIGINT);
            (handlers && listening.iter().any(|i| mine.contains(i))).then_some(Ok(()))
        });
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(status)) => {
                self.exited = status;
                Err(status)
            }
            None => {
                let _ = self.child.kill();
                self.exited = self.child.wait().ok();
                Err(None)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The TCP address pen listens on.
    pub fn tcp(&self) -> SocketAddr {
        match &self.addr {
            PenAddr::Tcp(sa) => *sa,
            PenAddr::Unix(p) => panic!("pen listens on {}", p.display()),
        }
    }

    pub fn port(&self) -> u16 {
        self.tcp().port()
    }

    /// A new client connection (any source address).
    pub fn connect(&self) -> Stream {
        match &self.addr {
            PenAddr::Tcp(sa) => Stream::Tcp(connect(*sa).expect("connect to pen")),
            PenAddr::Unix(p) => {
                let s = UnixStream::connect(p).expect("connect to pen");
                let s = Stream::Unix(s);
                s.set_timeouts(Some(IO_TIMEOUT));
                s
            }
        }
    }

    /// A new TCP client connection from 127.0.0.N.
    pub fn connect_from(&self, n: u8) -> TcpStream {
        connect_from(loopback(n), 0, self.tcp()).expect("connect to pen")
    }

    /// Connect from 127.0.0.N, ask the backend's name, and close.
    pub fn ask_from(&self, n: u8) -> String {
        self.ask_from_addr(loopback(n), 0)
    }

    /// Connect from `ip:port` (port 0: any), ask the backend's name, and close.
    pub fn ask_from_addr(&self, ip: Ipv4Addr, port: u16) -> String {
        let mut s = connect_from(ip, port, self.tcp())
            .unwrap_or_else(|e| panic!("connect from {ip}:{port}: {e}"));
        let name = ask(&mut s).unwrap_or_else(|e| {
            panic!(
                "client {ip}:{port}: no answer: {e}; pen stderr:\n{}",
                self.stderr_text()
            )
        });
        let _ = s.shutdown(Shutdown::Write);
        name
    }

    /// Connect from 127.0.0.N, ask the backend's name, and keep the connection open.
    pub fn hold_from(&self, n: u8) -> (String, TcpStream) {
        self.hold_from_addr(loopback(n))
    }

    /// Connect from `ip`, ask the backend's name, and keep the connection open.
    pub fn hold_from_addr(&self, ip: Ipv4Addr) -> (String, TcpStream) {
        let mut s = connect_from(ip, 0, self.tcp()).expect("connect to pen");
        let name = ask(&mut s).unwrap_or_else(|e| {
            panic!(
                "client {ip}: no answer: {e}; pen stderr:\n{}",
                self.stderr_text()
            )
        });
        (name, s)
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Still running?
    pub fn is_alive(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    #[track_caller]
    pub fn assert_alive(&mut self) {
        let alive = self.is_alive();
        assert!(
            alive,
            "pen exited ({:?}); stderr:\n{}",
            self.exited,
            self.stderr_text()
        );
    }

    pub fn signal(&self, sig: &str) {
        if self.exited.is_none() {
            send_signal(self.pid(), sig);
        }
    }

    /// Wait for pen to exit by itself, for at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_child(&mut self.child, timeout);
        }
        self.exited
    }

    /// SIGTERM, then check pen exits 0 within `timeout`, without a panic on stderr. The test's
    /// connections must be closed first (pen waits for open ones).
    #[track_caller]
    pub fn finish_within(mut self, timeout: Duration) {
        self.signal("TERM");
        let status = self.wait_exit(timeout);
        let stderr = self.stderr_text();
        assert!(
            status.is_some_and(|s| s.success()),
            "pen did not exit 0 within {timeout:?} of SIGTERM: {status:?}; stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "pen panicked; stderr:\n{stderr}"
        );
    }

    /// `finish_within` 5 s.
    #[track_caller]
    pub fn finish(self) {
        self.finish_within(Duration::from_secs(5));
    }
}

impl Drop for Pen {
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        send_signal(self.pid(), "TERM");
        if wait_child(&mut self.child, Duration::from_secs(3)).is_none() {
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, Duration::from_secs(5));
        }
    }
}

// ---- backends ----------------------------------------------------------------------------------

/// A listener of either family.
pub enum AnyListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl AnyListener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            AnyListener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            AnyListener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }
}

/// Where a backend listens.
#[derive(Debug, Clone)]
pub enum BackendAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

type Handler = Arc<dyn Fn(Stream) + Send + Sync>;

/// Counts live threads; the count drops when the guard does, even on panic.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: &Arc<AtomicUsize>) -> LiveGuard {
        live.fetch_add(1, Ordering::SeqCst);
        LiveGuard(live.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A backend server: an accept thread and one thread per connection running `handler`.
/// Dropping it closes the listener and shuts down every open connection, then waits (bounded)
/// for its threads to end.
pub struct Backend {
    pub addr: BackendAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    open: Arc<Mutex<HashMap<usize, Stream>>>,
}

impl Backend {
    /// A TCP backend on 127.0.0.1, port 0.
    pub fn tcp(handler: impl Fn(Stream) + Send + Sync + 'static) -> Backend {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind backend");
        Backend::serve(AnyListener::Tcp(l), Arc::new(handler))
    }

    /// A TCP backend on 127.0.0.1, port 0, whose connections have `tuning`. It is set on the
    /// listener, before it listens: accepted sockets inherit it, and the handshake announces it.
    pub fn tcp_tuned(tuning: Tuning, handler: impl Fn(Stream) + Send + Sync + 'static) -> Backend {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        tuning.apply(&socket).expect("backend socket options");
        socket
            .bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())
            .expect("bind backend");
        socket.listen(128).expect("listen");
        Backend::serve(AnyListener::Tcp(socket.into()), Arc::new(handler))
    }

    /// Run `handler` for every connection accepted on `listener`.
    pub fn serve(listener: AnyListener, handler: Handler) -> Backend {
        let addr = match &listener {
            AnyListener::Tcp(l) => BackendAddr::Tcp(l.local_addr().expect("local addr")),
            AnyListener::Unix(_, p) => BackendAddr::Unix(p.clone()),
        };
        let backend = Backend {
            addr,
            accepted: Arc::default(),
            stop: Arc::default(),
            live: Arc::default(),
            open: Arc::default(),
        };
        let (stop, live, open, accepted) = (
            backend.stop.clone(),
            backend.live.clone(),
            backend.open.clone(),
            backend.accepted.clone(),
        );
        let guard = LiveGuard::new(&live);
        thread::spawn(move || {
            let _guard = guard;
            let mut next_id = 0;
            loop {
                let stream = listener.accept();
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else {
                    // EMFILE and the like: do not spin.
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                stream.set_timeouts(Some(IO_TIMEOUT * 6));
                let id = next_id;
                next_id += 1;
                if let Ok(clone) = stream.try_clone() {
                    open.lock().unwrap().insert(id, clone);
                }
                let (open, handler) = (open.clone(), handler.clone());
                let guard = LiveGuard::new(&live);
                thread::spawn(move || {
                    let _guard = guard;
                    handler(stream);
                    open.lock().unwrap().remove(&id);
                });
            }
        });
        backend
    }

    /// Its address as a pen server spec (`127.0.0.1:PORT`, `[::1]:PORT` or the socket path).
    pub fn spec(&self) -> String {
        match &self.addr {
            BackendAddr::Tcp(SocketAddr::V4(a)) => a.to_string(),
            BackendAddr::Tcp(SocketAddr::V6(a)) => format!("[{}]:{}", a.ip(), a.port()),
            BackendAddr::Unix(p) => p.display().to_string(),
        }
    }

    /// `spec()` plus extra fields (`":1:2"`, `":0:0:3"`).
    pub fn spec_with(&self, fields: &str) -> String {
        format!("{}{fields}", self.spec())
    }

    pub fn port(&self) -> u16 {
        match &self.addr {
            BackendAddr::Tcp(sa) => sa.port(),
            BackendAddr::Unix(_) => panic!("a Unix backend has no port"),
        }
    }

    /// Connections currently open on the backend side.
    pub fn open_connections(&self) -> usize {
        self.open.lock().unwrap().len()
    }

    // -- the usual behaviours --

    /// Reads until it has at least one byte, answers `NAME\n`, then holds the connection until
    /// the peer closes.
    pub fn named(name: &str) -> Backend {
        Backend::tcp(named_handler(name))
    }

    pub fn named_v6(name: &str) -> Backend {
        let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind [::1]:0");
        Backend::serve(AnyListener::Tcp(l), Arc::new(named_handler(name)))
    }

    pub fn named_unix(path: &Path, name: &str) -> Backend {
        let l = UnixListener::bind(path).expect("bind unix backend");
        Backend::serve(
            AnyListener::Unix(l, path.to_path_buf()),
            Arc::new(named_handler(name)),
        )
    }

    /// Echoes everything; half-closes after the peer's EOF.
    pub fn echo() -> Backend {
        Backend::tcp(echo_until_eof)
    }

    /// Speaks first: writes `text`, then holds the connection until the peer closes.
    pub fn banner(text: &'static str) -> Backend {
        Backend::tcp(move |mut s| {
            if s.write_all(text.as_bytes()).is_ok() {
                let _ = drain(&mut s);
            }
        })
    }

    fn stop_and_wait(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept thread.
        match &self.addr {
            BackendAddr::Tcp(sa) => {
                let _ = TcpStream::connect_timeout(sa, Duration::from_secs(1));
            }
            BackendAddr::Unix(p) => {
                let _ = UnixStream::connect(p);
            }
        }
        for s in self.open.lock().unwrap().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let live = self.live.clone();
        let done = poll_until(Duration::from_secs(5), || {
            (live.load(Ordering::SeqCst) == 0).then_some(())
        });
        if done.is_none() {
            eprintln!(
                "warning: {} backend threads still running after 5 s",
                live.load(Ordering::SeqCst)
            );
        }
        if let BackendAddr::Unix(p) = &self.addr {
            let _ = fs::remove_file(p);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}

fn named_handler(name: &str) -> impl Fn(Stream) + Send + Sync + 'static {
    let reply = format!("{name}\n");
    move |mut s: Stream| {
        let mut b = [0u8; 1];
        if !matches!(s.read(&mut b), Ok(1)) {
            return;
        }
        if s.write_all(reply.as_bytes()).is_ok() {
            let _ = drain(&mut s);
        }
    }
}

/// A port where connects are refused: a socket bound to 127.0.0.1 that does not listen (so no
/// other process can take the port). `revive` makes it listen.
pub struct Dead {
    socket: Socket,
    pub addr: SocketAddr,
}

impl Dead {
    pub fn new() -> Dead {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())
            .expect("bind");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet");
        Dead { socket, addr }
    }

    pub fn spec(&self) -> String {
        self.addr.to_string()
    }

    /// Start listening on the same port, as a `named` backend.
    pub fn revive(self, name: &str) -> Backend {
        self.socket.listen(128).expect("listen");
        let l: TcpListener = self.socket.into();
        Backend::serve(AnyListener::Tcp(l), Arc::new(named_handler(name)))
    }
}

impl Default for Dead {
    fn default() -> Self {
        Dead::new()
    }
}

/// A listener whose accept queue is full, so further SYNs are dropped and connects hang: the
/// loopback stand-in for an unreachable host.
pub struct Blackhole {
    _listener: Socket,
    _fillers: Vec<TcpStream>,
    pub addr: SocketAddr,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        listener
            .bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())
            .expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        // Fill the queue until a connect no longer completes.
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => fillers.push(s),
                Err(_) => {
                    return Blackhole {
                        _listener: listener,
                        _fillers: fillers,
                        addr,
                    }
                }
            }
        }
        panic!("could not fill the accept queue of a backlog-0 listener");
    }

    pub fn spec(&self) -> String {
        self.addr.to_string()
    }
}

impl Blackhole {
    /// Start accepting again: the next connection that is not one of the fillers (pen's, once
    /// the kernel retries its SYN) goes to `handler`, in a thread. Waits for it at most 10 s.
    pub fn open(self, handler: impl FnOnce(TcpStream) + Send + 'static) -> thread::JoinHandle<()> {
        let fillers: Vec<SocketAddr> = self
            ._fillers
            .iter()
            .filter_map(|f| f.local_addr().ok())
            .collect();
        let listener = self._listener;
        thread::spawn(move || {
            listener.set_nonblocking(true).expect("nonblocking");
            let mut kept = Vec::new(); // fillers, closed when the thread ends
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, from)) => {
                        let s: TcpStream = s.into();
                        s.set_nonblocking(false).expect("blocking");
                        if from.as_socket().is_some_and(|a| fillers.contains(&a)) {
                            kept.push(s);
                            continue;
                        }
                        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                        handler(s);
                        return;
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    }
}

impl Default for Blackhole {
    fn default() -> Self {
        Blackhole::new()
    }
}

/// A channel to get a result out of a backend handler (the first connection's, typically).
pub fn channel<T: Send + 'static>() -> (Arc<Mutex<mpsc::Sender<T>>>, mpsc::Receiver<T>) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(Mutex::new(tx)), rx)
}

// ---- a server that dies and comes back ---------------------------------------------------------

impl Backend {
    /// Stop this TCP backend and keep its port refusing connects: to pen, the server has died.
    /// `revive` on the result brings it back on the same port.
    pub fn kill(self) -> Dead {
        let BackendAddr::Tcp(addr) = &self.addr else {
            panic!("kill: not a TCP backend");
        };
        let addr = *addr;
        drop(self);
        Dead::at(addr)
    }
}

impl Dead {
    /// A refusing port at `addr`, which a listener has just given up. SO_REUSEADDR lets it share
    /// the port with that listener's connections in TIME_WAIT, never with a listening socket; the
    /// retries cover the moment the old listener's thread takes to close it.
    pub fn at(addr: SocketAddr) -> Dead {
        let socket = wait_until(
            &format!("{addr} to be free"),
            Duration::from_secs(5),
            || {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).ok()?;
                s.set_reuse_address(true).ok()?;
                s.bind(&addr.into()).ok()?;
                Some(s)
            },
        );
        Dead { socket, addr }
    }
}

// ---- the balancer's state, through the control port ---------------------------------------------

impl control::Controlled {
    /// The balancer's state as the control port's `snapshot` command reports it.
    pub fn snapshot(&self) -> pen::balancer::Snapshot {
        serde_json::from_str(self.ctl("snapshot").trim()).expect("JSON snapshot")
    }
}
