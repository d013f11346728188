//! A small harness for cross-tool tests: it finds the pen binaries (ours, built by this
//! workspace, and Debian's C pen 0.34.1), starts them on fresh loopback ports and stops them by
//! PID with bounded waits, runs named test backends that answer with their name, reserves "dead"
//! server ports that refuse connections, and opens clients from chosen `127.0.0.N` source
//! addresses and ports. It does not judge behaviour: the tests in `tests/` do that.
//!
//! Every wait here is bounded, so a hung or crashed pen fails a test instead of hanging it, and
//! every process it starts is stopped when its guard is dropped, even when a test panics.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

pub mod browser;
pub mod fuzz;
pub mod http;
pub mod logtools;
pub mod man;
pub mod penctl;
pub mod penstats_web;
pub mod status_page;
pub mod weblogs;

/// Placeholder in a pen command line for the listen address the harness picks.
pub const LISTEN: &str = "{listen}";
/// How long a pen may take to start listening.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopped pen gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a client waits for a backend's name (or for pen to close it).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Where Debian installs the C pen.
pub const C_PEN: &str = "/usr/bin/pen";

/// How often bounded waits look again.
const POLL: Duration = Duration::from_millis(10);
/// Attempts to start a pen on a fresh port before giving up (another process may take the
/// port between our probe and pen's bind).
const START_ATTEMPTS: usize = 5;

// ---- binaries -------------------------------------------------------------------------------

/// One of our binaries: `$ENV` if set, else `target/<profile>/<name>` beside this test's
/// `target/<profile>/deps/` (`cargo test --workspace` builds every binary of the workspace).
pub fn our_binary(name: &str, env: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(env) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "{env}={} does not name a file",
            bin.display()
        );
        return bin;
    }
    let exe = std::env::current_exe().expect("can't find the test executable's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is not under target/<profile>/deps/")
        .join(name);
    assert!(
        bin.is_file(),
        "our {name} binary is not at {}: run `cargo build --workspace --bins` first (with the \
         same profile as the tests), or point {env} at it",
        bin.display()
    );
    bin
}

/// Our pen (`$PEN_BIN` overrides).
pub fn our_pen() -> PathBuf {
    our_binary("pen", "PEN_BIN")
}

/// Debian's C pen 0.34.1. A missing C pen fails the calling test, because a skipped comparison
/// proves nothing; only `PEN_SKIP_C_PEN=1` turns that into a printed note and `None`.
pub fn c_pen() -> Option<PathBuf> {
    let bin = PathBuf::from(C_PEN);
    if bin.is_file() {
        return Some(bin);
    }
    if std::env::var("PEN_SKIP_C_PEN").as_deref() == Ok("1") {
        eprintln!(
            "NOT RUN: {C_PEN} is missing and PEN_SKIP_C_PEN=1 is set, so this comparison \
             with C pen 0.34.1 was skipped"
        );
        return None;
    }
    panic!(
        "{C_PEN} is missing: these tests compare our pen with Debian's C pen 0.34.1. Install it \
         (apt-get install -y pen), or set PEN_SKIP_C_PEN=1 to skip the comparisons knowingly"
    );
}

/// A binary's path, for messages.
fn label(bin: &Path) -> String {
    bin.display().to_string()
}

// ---- ports ----------------------------------------------------------------------------------

/// Ports handed out by `free_port` in this process, so two tests running in parallel never get
/// the same one even if the kernel offers it twice.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that is free right now: bind port 0, read the port, close. The caller binds
/// it again soon; `Pen::start` retries with another port if someone was faster.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("can't bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Whether process `pid` itself holds a socket listening on `addr` (TCP, `/proc/net/tcp`), not
/// just anyone: a port handed out by `free_port` can be taken by another test's listener in
/// the moment before pen binds it, and then pen exits while the port still listens.
///
/// Readiness is read from `/proc` rather than by connecting, because a probe connection would be
/// a client to pen: it would move the round-robin cursor, enter the client table and count
/// against limits, changing the very placements the tests compare.
pub fn listens(pid: u32, addr: SocketAddrV4) -> bool {
    owns_any(pid, &listen_inodes(&tcp_table_key(addr), false))
}

/// `addr` as `/proc/net/tcp` shows a local address: the in-memory u32 in hex (the octets
/// reversed on little-endian machines), a colon, the port in hex.
pub fn tcp_table_key(addr: SocketAddrV4) -> String {
    let ip = format!("{:08X}", u32::from_ne_bytes(addr.ip().octets()));
    format!("{ip}:{:04X}", addr.port())
}

/// The inodes of the sockets in LISTEN state whose local address is `local`, from
/// `/proc/net/tcp` (or `/proc/net/tcp6` if `v6`).
pub fn listen_inodes(local: &str, v6: bool) -> Vec<u64> {
    let path = if v6 {
        "/proc/net/tcp6"
    } else {
        "/proc/net/tcp"
    };
    let Ok(table) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl, local_address, rem_address, st, tx:rx, tr:when, retrnsmt, uid, timeout, inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&local) && fields.get(3) == Some(&"0A"))
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Whether one of `inodes` is a socket among process `pid`'s open descriptors.
pub fn owns_any(pid: u32, inodes: &[u64]) -> bool {
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

// ---- backends -------------------------------------------------------------------------------

/// A test backend on `127.0.0.1:<free port>`. Every connection it accepts gets its name and a
/// newline at once; it then reads until the other side closes, and closes too. Holding a client
/// open therefore holds one connection on this backend.
pub struct Backend {
    name: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a backend");
        let addr = listener.local_addr().expect("backend local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let reply = format!("{name}\n");
        let acceptor = {
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let reply = reply.clone();
                    // Detached: it ends when pen closes the connection, or after the bounded
                    // read timeout below if pen never does.
                    thread::spawn(move || serve_name(conn, reply.as_bytes()));
                }
            })
        };
        Backend {
            name: name.to_string(),
            addr,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server spec for pen's command line: `127.0.0.1:PORT`.
    pub fn spec(&self) -> String {
        self.addr.to_string()
    }

    /// The server spec with extra fields: `spec_with("1:2")` is `127.0.0.1:PORT:1:2`
    /// (maxc, hard, weight, prio as in pen's `host:port:maxc:hard:weight:prio`).
    pub fn spec_with(&self, fields: &str) -> String {
        format!("{}:{fields}", self.addr)
    }
}

fn serve_name(mut conn: TcpStream, reply: &[u8]) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    if conn.write_all(reply).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag. If that connect fails the thread
        // is left detached rather than joined, so dropping stays bounded.
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok() {
            if let Some(acceptor) = self.acceptor.take() {
                let _ = acceptor.join();
            }
        }
    }
}

/// A server address that refuses every connection: a port bound (so nobody else gets it) but
/// never listened on, so connects to it are answered with a reset (ECONNREFUSED).
pub struct DeadServer {
    _socket: Socket,
    addr: SocketAddr,
}

impl DeadServer {
    pub fn new() -> DeadServer {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        socket.bind(&any.into()).expect("bind a dead port");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("dead port local_addr");
        DeadServer {
            _socket: socket,
            addr,
        }
    }

    pub fn spec(&self) -> String {
        self.addr.to_string()
    }
}

impl Default for DeadServer {
    fn default() -> Self {
        DeadServer::new()
    }
}

// ---- pen processes --------------------------------------------------------------------------

/// What a stopped or finished process left behind.
#[derive(Debug)]
pub struct Output {
    /// None when it had to be killed by the harness and no status could be read.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stderr without timestamped log lines (`YYYY-MM-DD HH:MM:SS: ...`), e.g. C pen's
    /// "Before:/After:" lines: what is left are pen's plain notices.
    pub fn stderr_notices(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter(|l| !is_log_line(l))
            .map(str::to_string)
            .collect()
    }
}

/// `YYYY-MM-DD HH:MM:SS: `, the prefix of pen's foreground log lines.
fn is_log_line(line: &str) -> bool {
    let b = line.as_bytes();
    let pattern = b"dddd-dd-dd dd:dd:dd:";
    b.len() >= pattern.len()
        && pattern.iter().zip(b).all(|(p, c)| match p {
            b'd' => c.is_ascii_digit(),
            p => p == c,
        })
}

/// Collects one pipe of a child in a thread; the result arrives on a channel so that reading it
/// can be bounded even if something else kept the pipe open.
struct Drain(mpsc::Receiver<Vec<u8>>);

impl Drain {
    fn start(mut pipe: impl Read + Send + 'static) -> Drain {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        Drain(rx)
    }

    fn collect(&self) -> String {
        let bytes = self
            .0
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn spawn_piped(bin: &Path, args: &[String]) -> (Child, Drain, Drain) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("can't run {}: {e}", label(bin)));
    let stdout = Drain::start(child.stdout.take().expect("piped stdout"));
    let stderr = Drain::start(child.stderr.take().expect("piped stderr"));
    (child, stdout, stderr)
}

/// Wait for `child` to exit, for at most `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => return None,
        }
    }
}

/// Stop `child` by PID: SIGTERM (through the `kill` command, as this crate has no signal
/// library), then SIGKILL if it is still running after `STOP_GRACE`.
fn stop_child(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let termed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if termed {
        if let Some(status) = wait_bounded(child, STOP_GRACE) {
            return Some(status);
        }
    }
    let _ = child.kill();
    wait_bounded(child, STOP_GRACE)
}

/// Run a pen that is expected to exit by itself (usage, `-i`), for at most `limit`; killed and
/// reported with `status: None` if it does not.
pub fn run_to_exit(bin: &Path, args: &[&str], limit: Duration) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (mut child, stdout, stderr) = spawn_piped(bin, &args);
    let status = wait_bounded(&mut child, limit);
    if status.is_none() {
        let _ = stop_child(&mut child);
    }
    Output {
        status,
        stdout: stdout.collect(),
        stderr: stderr.collect(),
    }
}

/// A running pen, listening on a port the harness chose. Dropping it stops the process.
pub struct Pen {
    bin: PathBuf,
    child: Option<Child>,
    addr: SocketAddrV4,
    stdout: Drain,
    stderr: Drain,
}

impl Pen {
    /// Start `bin` with `args`, where the `LISTEN` placeholder is replaced by
    /// `127.0.0.1:<free port>`, and wait (bounded) until it listens. If it exits first, which is
    /// what a port taken in the meantime looks like, try again with another port.
    pub fn start(bin: &Path, args: &[&str]) -> Pen {
        assert!(args.contains(&LISTEN), "pen's arguments need LISTEN");
        let mut failures = String::new();
        for _ in 0..START_ATTEMPTS {
            let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port());
            let listen = addr.to_string();
            let argv: Vec<String> = args
                .iter()
                .map(|a| {
                    if *a == LISTEN {
                        listen.clone()
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let (child, stdout, stderr) = spawn_piped(bin, &argv);
            let mut pen = Pen {
                bin: bin.to_path_buf(),
                child: Some(child),
                addr,
                stdout,
                stderr,
            };
            match pen.wait_listening() {
                Ok(()) => return pen,
                Err(why) => {
                    let out = pen.stop();
                    failures.push_str(&format!(
                        "\n  {} {}: {why}; stdout: {:?}; stderr: {:?}",
                        label(bin),
                        argv.join(" "),
                        out.stdout,
                        out.stderr
                    ));
                }
            }
        }
        panic!("pen did not start listening after {START_ATTEMPTS} attempts:{failures}");
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let child = self.child.as_mut().expect("a started pen has a child");
        loop {
            if listens(child.id(), self.addr) {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status}) before listening"));
            }
            if Instant::now() >= deadline {
                return Err(format!("not listening after {READY_TIMEOUT:?}"));
            }
            thread::sleep(POLL);
        }
    }

    /// The process's ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr.into()
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Send `signal` (a name such as `USR1`) to the running pen.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Stop the process (SIGTERM, then SIGKILL) and return what it printed.
    pub fn stop(mut self) -> Output {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Output {
        let status = self.child.take().and_then(|mut c| stop_child(&mut c));
        Output {
            status,
            stdout: self.stdout.collect(),
            stderr: self.stderr.collect(),
        }
    }
}

impl Drop for Pen {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_inner();
        }
    }
}

// ---- clients --------------------------------------------------------------------------------

/// `127.0.0.N`-style source address with any port.
pub fn from_ip(ip: [u8; 4]) -> SocketAddr {
    (Ipv4Addr::from(ip), 0).into()
}

/// A client connection, optionally from a chosen source address and port (all of 127.0.0.0/8
/// is local on Linux, so any `127.x.y.z` can be bound without configuration).
pub struct Client {
    stream: TcpStream,
}

impl Client {
    pub fn connect(to: SocketAddr, from: Option<SocketAddr>) -> io::Result<Client> {
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
        if let Some(from) = from {
            // Lets a fixed source port be bound again while an earlier connection from it is
            // in TIME_WAIT (to a different pen, so the 4-tuples never clash).
            socket.set_reuse_address(true)?;
            socket.bind(&from.into())?;
        }
        socket.connect_timeout(&to.into(), REPLY_TIMEOUT)?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Client { stream })
    }

    /// The first line the backend sent (its name), or what happened instead: `<eof>` (closed
    /// without data), `<reset>`, `<timeout>` or `<error: ...>`.
    pub fn reply(&mut self) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) if got.is_empty() => return "<eof>".into(),
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.contains(&b'\n') {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return match e.kind() {
                        io::ErrorKind::ConnectionReset => "<reset>".into(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "<timeout>".into(),
                        _ => format!("<error: {e}>"),
                    };
                }
            }
        }
        let text = String::from_utf8_lossy(&got);
        text.lines().next().unwrap_or_default().to_string()
    }

    /// Close both directions now (dropping does the same).
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// One short connection: connect from `from`, read the backend's name, close. Connect errors
/// are reported in the result (`<connect error: ...>`) so that sequences can be compared.
pub fn ask(to: SocketAddr, from: Option<SocketAddr>) -> String {
    match Client::connect(to, from) {
        Ok(mut client) => {
            let reply = client.reply();
            client.close();
            reply
        }
        Err(e) => format!("<connect error: {e}>"),
    }
}

/// Open a connection and keep it: returns the reply and the client (to be dropped later).
pub fn hold(to: SocketAddr, from: Option<SocketAddr>) -> (String, Option<Client>) {
    match Client::connect(to, from) {
        Ok(mut client) => {
            let reply = client.reply();
            (reply, Some(client))
        }
        Err(e) => (format!("<connect error: {e}>"), None),
    }
}
