//! Harness for pen's integration tests: the `pen` binary started on a free port (`spawn.rs`),
//! backends in threads on port 0 (`backend.rs`), clients bound to chosen 127.0.0.N sources
//! (here), and /proc probes (`probes.rs`); all of it is reached as `support::NAME`.
//!
//! Rules every helper follows: each wait is bounded (in time and in count), waits poll for an
//! event rather than sleeping a fixed time, every pen process is stopped by its PID, and every
//! backend thread ends (bounded) when its `Backend` is dropped.

// Each test crate uses a different part of the harness.
#![allow(dead_code)]

pub mod netns;
pub mod service;
pub mod tls;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};

mod backend;
pub mod control;
pub mod mmdb;
mod probes;
mod spawn;
pub mod stream;
pub mod udp;

// Everything at `support::`, as before the split; a test crate that uses none of a part's
// items would otherwise be told its glob is unused.
#[allow(unused_imports)]
pub use backend::*;
#[allow(unused_imports)]
pub use probes::*;
#[allow(unused_imports)]
pub use spawn::*;

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
