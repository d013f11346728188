//! Harness for penctl's tests: run the real binary with a bounded wait, and test servers that
//! record exactly what penctl sent and answer as a test needs (a reply, silence, a trickle, a
//! reset). Every wait is bounded and every thread ends by itself once penctl has gone.

#![allow(dead_code)] // each test file uses part of it

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

/// No run of penctl in these tests should come near this; it only keeps a broken test finite.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);
/// How long a test server waits for penctl's request, or for penctl to go away.
const SERVER_LIMIT: Duration = Duration::from_secs(20);

pub fn penctl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_penctl")
}

/// What a finished penctl left behind.
#[derive(Debug)]
pub struct Output {
    /// None if it had to be killed after `RUN_LIMIT`.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Wait for `child` for at most `limit`; kill it (by its PID) if it is still running.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Run penctl with `args`, stdin closed, and collect its output.
pub fn penctl<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut child = Command::new(penctl_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run penctl");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_bounded(&mut child, RUN_LIMIT);
    let collect =
        |rx: mpsc::Receiver<Vec<u8>>| rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    Output {
        status,
        stdout: collect(stdout),
        stderr: String::from_utf8_lossy(&collect(stderr)).into_owned(),
    }
}

/// How a test server answers once it has read the request line.
#[derive(Clone)]
pub enum Answer {
    /// Send these pieces (each with its own write), then close.
    Reply(Vec<Vec<u8>>),
    /// Send nothing and keep the connection open until penctl closes it.
    Silent,
    /// Send one byte every 20 ms until penctl closes the connection.
    Trickle,
    /// Send these bytes, then reset the connection (RST, not FIN).
    Reset(Vec<u8>),
}

/// A test server for one connection. `request` returns every chunk penctl's request arrived in.
pub struct Server {
    pub addr: ServerAddr,
    result: mpsc::Receiver<Vec<Vec<u8>>>,
}

#[derive(Debug, Clone)]
pub enum ServerAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Server {
    pub fn tcp(bind: &str, answer: Answer) -> Server {
        let listener = TcpListener::bind(bind)
            .unwrap_or_else(|e| panic!("test server can't bind {bind}: {e}"));
        let addr = listener.local_addr().expect("local_addr");
        let (tx, result) = mpsc::channel();
        thread::spawn(move || {
            if let Ok((conn, _)) = listener.accept() {
                let _ = tx.send(serve(Conn::Tcp(conn), answer));
            }
        });
        Server {
            addr: ServerAddr::Tcp(addr),
            result,
        }
    }

    pub fn unix(path: &Path, answer: Answer) -> Server {
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("test server can't bind {}: {e}", path.display()));
        let (tx, result) = mpsc::channel();
        thread::spawn(move || {
            if let Ok((conn, _)) = listener.accept() {
                let _ = tx.send(serve(Conn::Unix(conn), answer));
            }
        });
        Server {
            addr: ServerAddr::Unix(path.to_path_buf()),
            result,
        }
    }

    /// The port, for `host:PORT` forms.
    pub fn port(&self) -> u16 {
        match &self.addr {
            ServerAddr::Tcp(a) => a.port(),
            ServerAddr::Unix(_) => panic!("a Unix server has no port"),
        }
    }

    /// The chunks the request arrived in, once the server is done.
    pub fn request(&self) -> Vec<Vec<u8>> {
        self.result
            .recv_timeout(SERVER_LIMIT)
            .expect("the test server got no complete exchange")
    }
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_read_timeout(&self, t: Duration) {
        let _ = match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
            Conn::Unix(s) => s.set_read_timeout(Some(t)),
        };
    }

    fn reset(self) {
        if let Conn::Tcp(s) = self {
            let socket = socket2::Socket::from(s);
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Read until a newline (each `recv` kept as one chunk), then answer.
fn serve(mut conn: Conn, answer: Answer) -> Vec<Vec<u8>> {
    conn.set_read_timeout(SERVER_LIMIT);
    let mut chunks = Vec::new();
    let mut buf = [0u8; 4096];
    while !chunks.iter().any(|c: &Vec<u8>| c.contains(&b'\n')) {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => chunks.push(buf[..n].to_vec()),
        }
    }
    match answer {
        Answer::Reply(pieces) => {
            for piece in pieces {
                if conn.write_all(&piece).is_err() {
                    break;
                }
            }
        }
        Answer::Silent => {
            // Until penctl closes (read returns 0) or the bound passes.
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
        Answer::Trickle => {
            let deadline = Instant::now() + SERVER_LIMIT;
            while Instant::now() < deadline && conn.write_all(b".").is_ok() {
                thread::sleep(Duration::from_millis(20));
            }
        }
        Answer::Reset(bytes) => {
            let _ = conn.write_all(&bytes);
            conn.reset();
        }
    }
    chunks
}

/// A directory under the system temp dir, removed when dropped. Short paths, because a Unix
/// socket path must fit in 107 bytes.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("penctl-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// IPv6 loopback is needed by the tests that use it; CI has it, so its absence fails them.
pub fn require_ipv6() {
    if let Err(e) = TcpListener::bind("[::1]:0") {
        panic!("this test needs the IPv6 loopback address ::1, which can't be bound: {e}");
    }
}

/// A listening address that never completes a connection: its accept queue is full and nobody
/// accepts, so the kernel ignores further connection attempts (TCP drops the SYN, a Unix
/// connect would block). What pen looks like when it is stuck.
pub struct BlackHole {
    pub addr: ServerAddr,
    _listener: Socket,
    _queued: Vec<Socket>,
}

impl BlackHole {
    pub fn tcp() -> BlackHole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        listener.bind(&any.into()).expect("bind the black hole");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("local_addr");
        let target = SockAddr::from(addr);
        let mut queued = Vec::new();
        for _ in 0..64 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            match s.connect_timeout(&target, Duration::from_millis(300)) {
                Ok(()) => queued.push(s),
                Err(_) => {
                    return BlackHole {
                        addr: ServerAddr::Tcp(addr),
                        _listener: listener,
                        _queued: queued,
                    }
                }
            }
        }
        panic!("the accept queue of {addr} never filled up after 64 connections");
    }

    pub fn unix(path: &Path) -> BlackHole {
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
        let target = SockAddr::unix(path).expect("unix address");
        listener.bind(&target).expect("bind the black hole");
        listener.listen(0).expect("listen");
        let mut queued = Vec::new();
        for _ in 0..64 {
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            match s.connect(&target) {
                Ok(()) => queued.push(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return BlackHole {
                        addr: ServerAddr::Unix(path.to_path_buf()),
                        _listener: listener,
                        _queued: queued,
                    }
                }
                Err(e) => panic!("connect to the black hole {}: {e}", path.display()),
            }
        }
        panic!("the accept queue of {} never filled up", path.display());
    }
}
