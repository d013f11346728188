//! pen's request log (`-l FILE`, `-l HOST:PORT`, the `log` command): one record per chunk a
//! client sends, written by one writer thread so that the data path never waits on a disk or
//! a network.
//!
//! The data path calls [`Tap::chunk`] for every read from a client. When logging is off that is
//! one relaxed atomic load. When it is on, the chunk's request (at most 100 bytes, no
//! allocation) goes into a bounded channel with `try_send`; if the writer has fallen behind and
//! the channel is full, the record is dropped and counted, never waited for.
//!
//! The writer thread owns the destination (a file, or a UDP socket to penlogd). It stamps each
//! record with the time, formats it through [`crate::accesslog`], and writes a whole batch at
//! once: it flushes whenever the channel is empty, so a record reaches the file within
//! milliseconds (pen 0.34.1 kept its log in a stdio buffer until HUP or exit). Files are opened
//! and names resolved on the caller's thread (the control plane), never on the writer and
//! never on a data-plane thread; the writer receives them ready to use. The thread starts with
//! the first `set` and ends when the [`RequestLog`] is closed or dropped.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::warn;

use crate::accesslog::{FileLine, NetRecord, Request};
use crate::addr;

/// Records waiting for the writer. About 150 bytes each; a burst larger than this while the
/// writer is stalled is dropped (and counted) rather than held.
const CHANNEL_CAPACITY: usize = 4096;
/// Records formatted between two flushes at most, so a steady stream is still flushed often.
const BATCH: usize = 1024;
/// A file write is issued once this much is buffered, even within a batch.
const FILE_BUFFER: usize = 64 * 1024;
/// How long `set`, `stop` and `reopen` wait for the writer to take the new destination.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one "records dropped" or "write failed" warning per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Where the request log goes, as `-l` and the `log` command name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Appended to; reopened on HUP.
    File(PathBuf),
    /// Datagrams to penlogd. `host` is kept as written, for the `log` reply.
    Net { host: String, addr: SocketAddr },
}

/// What was wrong with a log destination.
#[derive(Debug, thiserror::Error)]
pub enum RequestLogError {
    #[error("'{value}': expected HOST:PORT (write ./{value} for a file whose name has a colon)")]
    BadTarget { value: String },
    #[error("'{value}': {error}")]
    Host {
        value: String,
        error: addr::AddrError,
    },
    #[error("can't open log file {path}: {error}")]
    Open { path: String, error: io::Error },
    #[error("can't open log file {path}: not a regular file")]
    NotAFile { path: String },
    #[error("can't create a socket for the network log to {addr}: {error}")]
    Socket { addr: SocketAddr, error: io::Error },
    #[error("can't start the request log writer: {0}")]
    Thread(io::Error),
    #[error("the request log writer did not answer")]
    WriterGone,
}

impl LogTarget {
    /// Classify and resolve a `-l` / `log` value as pen does: a value containing `:` that does
    /// not start with `/` is a network destination `HOST:PORT` (IPv6 as `[::1]:PORT` or pen's
    /// unbracketed `::1:PORT`), anything else a file name.
    pub fn parse(value: &str) -> Result<LogTarget, RequestLogError> {
        if !value.contains(':') || value.starts_with('/') {
            if value.is_empty() {
                return Err(RequestLogError::BadTarget {
                    value: value.to_string(),
                });
            }
            return Ok(LogTarget::File(PathBuf::from(value)));
        }
        let bad = || RequestLogError::BadTarget {
            value: value.to_string(),
        };
        let (host, port) = match value.strip_prefix('[') {
            Some(rest) => {
                let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
                (host, port)
            }
            None => value.rsplit_once(':').ok_or_else(bad)?,
        };
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        if host.is_empty() {
            return Err(bad());
        }
        let ip = addr::resolve(host).map_err(|error| RequestLogError::Host {
            value: value.to_string(),
            error,
        })?;
        Ok(LogTarget::Net {
            host: host.to_string(),
            addr: SocketAddr::new(ip, port),
        })
    }
}

impl fmt::Display for LogTarget {
    /// The destination as the `log` command shows it and `write` saves it: the file name, or
    /// `HOST:PORT` (pen 0.34.1 showed only HOST after a network log, so the saved
    /// configuration could not be loaded back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogTarget::File(path) => write!(f, "{}", path.display()),
            LogTarget::Net { host, addr } if host.contains(':') => {
                write!(f, "[{host}]:{}", addr.port())
            }
            LogTarget::Net { host, addr } => write!(f, "{host}:{}", addr.port()),
        }
    }
}

/// One request, as the data path hands it to the writer.
struct Record {
    client: Option<IpAddr>,
    server: Option<IpAddr>,
    request: Request,
}

/// A destination, opened and ready.
enum Sink {
    File(File),
    Net(UdpSocket, SocketAddr),
}

enum Msg {
    Record(Record),
    /// Switch to this destination (None: stop logging); acknowledge once done.
    Switch(Option<Sink>, SyncSender<()>),
    /// Write what is buffered and end the thread.
    Quit,
}

/// The handle the rest of pen holds: cheap to clone, shared by every thread.
#[derive(Clone, Default)]
pub struct RequestLog {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Whether the data path should produce records at all.
    on: AtomicBool,
    /// Records dropped because the channel was full; the writer reports and resets it.
    dropped: Arc<AtomicU64>,
    /// Set once, by the first `set`; the writer thread lives as long as this sender.
    tx: OnceLock<SyncSender<Msg>>,
    /// The current destination (for the `log` reply and `reopen`) and the writer thread.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    target: Option<LogTarget>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        close(self);
    }
}

/// Stop the writer: it writes what it holds, and the thread is joined.
fn close(inner: &Inner) {
    inner.on.store(false, Ordering::SeqCst);
    let writer = lock(&inner.state).writer.take();
    if let Some(tx) = inner.tx.get() {
        let _ = tx.send(Msg::Quit);
    }
    if let Some(writer) = writer {
        let _ = writer.join();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state is two fields replaced whole; a panic elsewhere cannot leave it half-written.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open a log file for appending: created with mode 0640 (never world-writable), never through
/// a symbolic link, and only if it is a regular file. penlogd opens its output the same way.
pub fn open_log_file(path: &std::path::Path) -> Result<File, RequestLogError> {
    let shown = path.display().to_string();
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| RequestLogError::Open {
            path: shown.clone(),
            error,
        })?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        Ok(_) => Err(RequestLogError::NotAFile { path: shown }),
        Err(error) => Err(RequestLogError::Open { path: shown, error }),
    }
}

fn open_sink(target: &LogTarget) -> Result<Sink, RequestLogError> {
    match target {
        LogTarget::File(path) => open_log_file(path).map(Sink::File),
        LogTarget::Net { addr, .. } => {
            let local: SocketAddr = match addr {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(local)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|error| RequestLogError::Socket { addr: *addr, error })?;
            Ok(Sink::Net(socket, *addr))
        }
    }
}

impl RequestLog {
    /// A request log that logs nothing until `set`.
    pub fn new() -> RequestLog {
        RequestLog::default()
    }

    /// Log to `target` from now on, instead of wherever the log went before (`-l`, `log X`).
    /// The file is opened (or the socket created) here, so errors come back to the caller.
    pub fn set(&self, target: LogTarget) -> Result<(), RequestLogError> {
        let sink = open_sink(&target)?;
        let mut state = lock(&self.inner.state);
        self.switch(&mut state, Some(sink))?;
        state.target = Some(target);
        self.inner.on.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Stop logging, to a file and to the network alike (`no log`; pen 0.34.1 kept sending
    /// datagrams). Records already taken are still written.
    pub fn stop(&self) {
        self.inner.on.store(false, Ordering::SeqCst);
        let mut state = lock(&self.inner.state);
        if state.target.take().is_some() {
            let _ = self.switch(&mut state, None);
        }
    }

    /// Close and reopen the log file (HUP), so that `mv pen.log pen.log.1; kill -HUP` rotates
    /// it: every line before the switch is complete in the old file, every line after it in
    /// the new one. Nothing to do for a network log or no log.
    pub fn reopen(&self) -> Result<(), RequestLogError> {
        let mut state = lock(&self.inner.state);
        let Some(target @ LogTarget::File(_)) = state.target.clone() else {
            return Ok(());
        };
        let sink = open_sink(&target)?;
        self.switch(&mut state, Some(sink))
    }

    /// Where the log goes now, for the `log` command's reply; None when it is off.
    pub fn target(&self) -> Option<LogTarget> {
        lock(&self.inner.state).target.clone()
    }

    /// Records dropped since the last writer report because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Write out everything taken so far and end the writer thread (at exit).
    pub fn close(&self) {
        close(&self.inner);
    }

    /// The data path's view of this log for one connection.
    pub fn tap(&self, client: Option<IpAddr>, server: Option<IpAddr>) -> Tap<'_> {
        Tap {
            inner: &self.inner,
            client,
            server,
        }
    }

    /// Hand the writer a new destination and wait (bounded) until it has taken it, so that
    /// when this returns no record will go to the old one any more.
    fn switch(&self, state: &mut State, sink: Option<Sink>) -> Result<(), RequestLogError> {
        let tx = match self.inner.tx.get() {
            Some(tx) => tx,
            None => {
                let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
                let dropped = self.inner.dropped.clone();
                let writer = std::thread::Builder::new()
                    .name("pen-reqlog".into())
                    .spawn(move || Writer::new(dropped).run(rx))
                    .map_err(RequestLogError::Thread)?;
                state.writer = Some(writer);
                self.inner.tx.get_or_init(|| tx)
            }
        };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        tx.send(Msg::Switch(sink, ack_tx))
            .map_err(|_| RequestLogError::WriterGone)?;
        match ack_rx.recv_timeout(CONTROL_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(RecvTimeoutError::Timeout) => {
                warn!("request log: the writer is slow to switch destinations (a stuck disk?)");
                Ok(())
            }
            Err(RecvTimeoutError::Disconnected) => Err(RequestLogError::WriterGone),
        }
    }
}

/// One connection's tap on the request log: the data path calls `chunk` with every read from
/// the client.
pub struct Tap<'a> {
    inner: &'a Inner,
    client: Option<IpAddr>,
    server: Option<IpAddr>,
}

impl Tap<'_> {
    /// Log one chunk read from the client. Never blocks: a full channel drops the record.
    #[inline]
    pub fn chunk(&self, data: &[u8]) {
        if self.inner.on.load(Ordering::Relaxed) {
            self.send(data);
        }
    }

    #[cold]
    fn send(&self, data: &[u8]) {
        let Some(tx) = self.inner.tx.get() else {
            return;
        };
        let record = Record {
            client: self.client,
            server: self.server,
            request: Request::from_chunk(data),
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(Msg::Record(record)) {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread's state.
struct Writer {
    sink: Option<Sink>,
    /// Formatted file lines not yet written.
    buf: Vec<u8>,
    /// One datagram being formatted.
    datagram: Vec<u8>,
    dropped: Arc<AtomicU64>,
    dropped_total: u64,
    failed: u64,
    last_warning: Option<Instant>,
}

impl Writer {
    fn new(dropped: Arc<AtomicU64>) -> Writer {
        Writer {
            sink: None,
            buf: Vec::with_capacity(FILE_BUFFER + 1024),
            datagram: Vec::with_capacity(256),
            dropped,
            dropped_total: 0,
            failed: 0,
            last_warning: None,
        }
    }

    /// Take messages until told to quit (or every sender is gone), writing after each batch.
    fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            if !self.handle(msg) {
                break;
            }
            let mut quit = false;
            for _ in 0..BATCH {
                match rx.try_recv() {
                    Ok(msg) => {
                        if !self.handle(msg) {
                            quit = true;
                            break;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        quit = true;
                        break;
                    }
                }
            }
            self.flush();
            self.report();
            if quit {
                break;
            }
        }
        self.flush();
        self.report();
    }

    /// False when the thread should end.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Record(record) => self.record(&record),
            Msg::Switch(sink, ack) => {
                self.flush();
                self.sink = sink;
                let _ = ack.send(());
            }
            Msg::Quit => return false,
        }
        true
    }

    fn record(&mut self, r: &Record) {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        match &self.sink {
            Some(Sink::File(_)) => {
                FileLine::write(
                    &mut self.buf,
                    r.client,
                    epoch,
                    r.server,
                    r.request.as_bytes(),
                );
                if self.buf.len() >= FILE_BUFFER {
                    self.flush();
                }
            }
            Some(Sink::Net(socket, to)) => {
                self.datagram.clear();
                NetRecord::write(&mut self.datagram, r.client, r.server, r.request.as_bytes());
                // Unacknowledged UDP, as pen: a missing penlogd must not matter.
                if socket.send_to(&self.datagram, to).is_err() {
                    self.failed += 1;
                }
            }
            None => {}
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Some(Sink::File(file)) = &mut self.sink {
            if let Err(e) = write_all(file, &self.buf) {
                self.failed += 1;
                if self.may_warn() {
                    warn!("request log: write failed: {e}; records lost");
                }
            }
        }
        self.buf.clear();
    }

    /// Warn (rate-limited) about records dropped because the writer was behind.
    fn report(&mut self) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        self.dropped_total += dropped;
        if dropped > 0 && self.may_warn() {
            warn!(
                "request log: {} records dropped so far because the writer fell behind",
                self.dropped_total
            );
        }
    }

    fn may_warn(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARN_INTERVAL);
        if due {
            self.last_warning = Some(now);
        }
        due
    }
}

/// `write_all` that also rides out EAGAIN (the file is opened non-blocking so that opening a
/// FIFO by mistake cannot hang the caller).
fn write_all(file: &mut File, mut buf: &[u8]) -> io::Result<()> {
    let mut stalls = 0;
    while !buf.is_empty() {
        match file.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && stalls < 100 => {
                stalls += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
