//! One plain TCP (or Unix) connection on the epoll engine: the non-blocking connect to its
//! server, the relay both ways, and `dummy`'s one answer. Nothing here waits: each call does
//! what the sockets allow now and says what it is waiting for; the engine calls again when
//! epoll reports readiness.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::addr::Backend;
use crate::balancer::{ConnCounters, ConnId, FastClose, Peer, Settings, Target};
use crate::http::{Proto, Rewriter};
use crate::net::{bind_source_socket, upstream_source, warn_source, Nagle};
use crate::relay::{RelayEnd, Rewrite, Side, CHUNK, READS_PER_POLL};
use crate::reqlog::RequestLog;

/// A socket and what epoll last told of it (edge-triggered: a flag stays set until a call
/// finds the socket empty or full).
pub(super) struct Sock {
    pub socket: Socket,
    tcp: bool,
    readable: bool,
    writable: bool,
    /// The peer sent its FIN or the socket failed: readable until a read says so, whatever a
    /// short read suggests (no further edge will come).
    closed: bool,
    nagle: Nagle,
}

impl Sock {
    pub fn new(socket: Socket, tcp: bool) -> Sock {
        Sock {
            socket,
            tcp,
            readable: false,
            writable: true,
            closed: false,
            nagle: Nagle::Keep,
        }
    }

    /// Record an epoll event.
    pub fn ready(&mut self, readable: bool, writable: bool, closed: bool) {
        self.readable |= readable;
        self.writable |= writable;
        self.closed |= closed;
    }

    fn can_read(&self) -> bool {
        self.readable || self.closed
    }

    /// TCP_NODELAY from the second write on (see `Nagle`).
    pub fn set_nodelay(&mut self) {
        if self.tcp && self.nagle == Nagle::Keep {
            self.nagle = Nagle::OffAfterFirstWrite { written: false };
        }
    }

    /// Make the close send a reset (see `Stream::reset_on_close`).
    pub fn reset_on_close(&self) {
        if self.tcp {
            let _ = self.socket.set_linger(Some(Duration::ZERO));
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = (&self.socket).read(buf);
        match &result {
            // A short read emptied the socket; the next data brings a new edge.
            Ok(n) if *n > 0 && *n < buf.len() => self.readable = false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.readable = false;
                self.closed = false;
            }
            _ => {}
        }
        result
    }

    /// Write as much of `data` as the socket takes now.
    fn write_now(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < data.len() && self.writable {
            match self.nagle {
                Nagle::OffAfterFirstWrite { written: false } => {
                    self.nagle = Nagle::OffAfterFirstWrite { written: true }
                }
                Nagle::OffAfterFirstWrite { written: true } => {
                    let _ = self.socket.set_nodelay(true);
                    self.nagle = Nagle::Off;
                }
                Nagle::Keep | Nagle::Off => {}
            }
            match (&self.socket).write(&data[sent..]) {
                Ok(0) => return Err(zero_write()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }
}

fn zero_write() -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, "peer accepted no bytes")
}

/// Start a non-blocking connect to `backend` with the socket options the settings ask for
/// (as `net::connect` does on tokio). The socket is writable once the connect has finished;
/// `connect_result` then says how.
pub(super) fn start_connect(
    backend: &Backend,
    settings: &Settings,
    client: Option<IpAddr>,
) -> io::Result<Sock> {
    let (socket, addr, tcp) = match backend {
        Backend::Tcp(sa) => {
            let socket = Socket::new(Domain::for_address(*sa), Type::STREAM.nonblocking(), None)?;
            if settings.keepalive {
                socket.set_keepalive(true)?;
            }
            match upstream_source(settings, client, *sa) {
                Ok(None) => {}
                Ok(Some(local)) => {
                    if let Err(e) = bind_source_socket(&socket, local, settings.source.is_none()) {
                        warn_source(&format!(
                            "can't connect to {sa} from {local}: {e}; connecting from pen's own address"
                        ));
                    }
                }
                Err(why) => {
                    warn_source(&format!("{why}; connecting to {sa} from pen's own address"))
                }
            }
            (socket, SockAddr::from(*sa), true)
        }
        Backend::Unix(path) => (
            Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?,
            SockAddr::unix(path)?,
            false,
        ),
    };
    match socket.connect(&addr) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let mut sock = Sock::new(socket, tcp);
    sock.writable = false;
    if settings.tcp_nodelay {
        sock.set_nodelay();
    }
    Ok(sock)
}

/// How a pending connect stands, once its socket has reported an event.
pub(super) fn connect_result(server: &mut Sock) -> Option<io::Result<()>> {
    if !server.writable && !server.closed {
        // No event from the server's socket yet (the client's woke the connection).
        return None;
    }
    match server.socket.take_error() {
        Ok(Some(e)) | Err(e) => Some(Err(e)),
        Ok(None) if server.writable => Some(Ok(())),
        Ok(None) => None,
    }
}

/// What a connection is doing.
pub(super) enum State {
    /// `dummy`: waiting for the client's first chunk, to answer it with the fixed page.
    Dummy { deadline: Instant },
    /// Connecting to a server the balancer chose.
    Connecting(Box<Connecting>),
    /// Relaying between the client and its server.
    Relaying(Box<Relay>),
}

pub(super) struct Connecting {
    pub conn: ConnId,
    pub target: Target,
    pub backend: Backend,
    pub server: Sock,
    pub deadline: Instant,
}

/// One client connection on the engine.
pub(super) struct Conn {
    pub client: Sock,
    pub peer: Peer,
    pub settings: Settings,
    pub state: State,
    /// The balancer's connection, released when the engine closes this one.
    pub id: Option<ConnId>,
    pub _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The relay state of one connection (`relay::relay`'s, without a task around it).
pub(super) struct Relay {
    pub conn: ConnId,
    pub server: Sock,
    up: Half,
    down: Half,
    pub counters: Arc<ConnCounters>,
    rewriter: Option<Rewriter>,
    pub idle: Duration,
    pub last_activity: Instant,
    fastclose: FastClose,
    client_ip: Option<IpAddr>,
    server_ip: Option<IpAddr>,
}

/// What a relay step came to.
pub(super) enum Step {
    /// Waiting for readiness.
    Wait,
    /// A direction used its reads for this turn and has more: come back before sleeping.
    Again,
    /// The relay is over.
    End(RelayEnd),
}

impl Relay {
    pub fn new(
        conn: ConnId,
        server: Sock,
        counters: Arc<ConnCounters>,
        settings: &Settings,
        backend: &Backend,
        peer: Peer,
        now: Instant,
    ) -> Relay {
        Relay {
            conn,
            server,
            up: Half::default(),
            down: Half::default(),
            counters,
            rewriter: settings
                .http
                .then(|| Rewriter::new(peer.ip, Proto::Http, settings.xff)),
            idle: settings.idle_timeout,
            last_activity: now,
            fastclose: settings.fastclose,
            client_ip: peer.ip,
            server_ip: match backend {
                Backend::Tcp(sa) => Some(sa.ip()),
                Backend::Unix(_) => None,
            },
        }
    }

    /// Move what the sockets allow, both ways.
    pub fn step(&mut self, client: &mut Sock, reqlog: &RequestLog, now: Instant) -> Step {
        let mut progress = false;
        let tap = reqlog.tap(self.client_ip, self.server_ip);
        let counters = &*self.counters;
        let up = self.up.pump(
            self.down.done,
            client,
            &mut self.server,
            |data| tap.chunk(data),
            |n| counters.add_to_server(n),
            &mut progress,
            self.rewriter.as_mut(),
        );
        let up = match up {
            Ok(step) => step,
            Err((from_src, e)) => {
                let side = if from_src { Side::Client } else { Side::Server };
                return Step::End(RelayEnd::Error(side, e));
            }
        };
        let down = self.down.pump(
            self.up.done,
            &mut self.server,
            client,
            |_| {},
            |n| counters.add_to_client(n),
            &mut progress,
            None::<&mut Rewriter>,
        );
        let down = match down {
            Ok(step) => step,
            Err((from_src, e)) => {
                let side = if from_src { Side::Server } else { Side::Client };
                return Step::End(RelayEnd::Error(side, e));
            }
        };
        counters.set_pending(self.up.pending_len(), self.down.pending_len());
        if self.up.done && self.down.done {
            return Step::End(RelayEnd::Done);
        }
        let fast = match self.fastclose {
            FastClose::Off => false,
            FastClose::Up => self.down.done,
            FastClose::Down => self.up.done,
            FastClose::Both => self.up.done || self.down.done,
        };
        if fast {
            return Step::End(RelayEnd::FastClose);
        }
        if progress {
            self.last_activity = now;
        }
        if up || down {
            Step::Again
        } else {
            Step::Wait
        }
    }
}

/// One direction: reads from `src`, writes to `dst` (`relay::Half`, on plain sockets).
#[derive(Default)]
struct Half {
    /// Bytes read but not yet written (only when the destination pushed back).
    pending: Vec<u8>,
    written: usize,
    eof: bool,
    /// EOF was forwarded (the destination's write half is shut down).
    done: bool,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; CHUNK].into_boxed_slice());
    static REWRITTEN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Half {
    fn pending_len(&self) -> usize {
        self.pending.len() - self.written
    }

    /// Move bytes until a socket would block. Ok(true) if the read budget ran out with more to
    /// read. The error's bool says whether it came from the source.
    #[allow(clippy::too_many_arguments)]
    fn pump<X: Rewrite>(
        &mut self,
        other_done: bool,
        src: &mut Sock,
        dst: &mut Sock,
        seen: impl Fn(&[u8]),
        count: impl Fn(usize),
        progress: &mut bool,
        mut rewrite: Option<&mut X>,
    ) -> Result<bool, (bool, io::Error)> {
        if self.done {
            return Ok(false);
        }
        for _ in 0..READS_PER_POLL {
            if self.written < self.pending.len() {
                let n = dst
                    .write_now(&self.pending[self.written..])
                    .map_err(|e| (false, e))?;
                self.written += n;
                *progress |= n > 0;
                if self.written < self.pending.len() {
                    return Ok(false);
                }
            }
            if self.pending.capacity() != 0 {
                // Drained: give the buffer back, so an idle connection holds none.
                self.pending = Vec::new();
            }
            self.written = 0;
            if self.eof && other_done {
                // The last direction to end: the close that follows sends the FIN.
                self.done = true;
                return Ok(false);
            }
            if self.eof {
                return match dst.socket.shutdown(std::net::Shutdown::Write) {
                    Ok(()) => {
                        self.done = true;
                        Ok(false)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        self.done = true;
                        Ok(false)
                    }
                    Err(e) => Err((false, e)),
                };
            }
            if !src.can_read() {
                return Ok(false);
            }
            let moved = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let n = match src.read(&mut scratch[..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
                    Err(e) => return Err((true, e)),
                };
                if n == 0 {
                    self.eof = true;
                    if let Some(rewrite) = rewrite.as_deref_mut() {
                        // Held-back bytes go out before the EOF is forwarded.
                        rewrite.finish(&mut self.pending);
                        count(self.pending.len());
                    }
                    return Ok(true);
                }
                let data = &scratch[..n];
                *progress = true;
                seen(data);
                crate::dump::chunk(data);
                match rewrite.as_deref_mut() {
                    Some(rewrite) => REWRITTEN.with(|out| {
                        let mut out = out.borrow_mut();
                        out.clear();
                        let result = rewrite.rewrite(data, &mut out);
                        count(out.len());
                        let sent = dst.write_now(&out).map_err(|e| (false, e))?;
                        self.pending.extend_from_slice(&out[sent..]);
                        result.map_err(|e| (true, e))?;
                        Ok(true)
                    }),
                    None => {
                        count(n);
                        let sent = dst.write_now(data).map_err(|e| (false, e))?;
                        self.pending.extend_from_slice(&data[sent..]);
                        Ok(true)
                    }
                }
            })?;
            if !moved {
                return Ok(false);
            }
        }
        // Budget used up with more to read: the engine comes back after the other
        // connections had their turn.
        Ok(src.can_read() || self.written < self.pending.len())
    }
}

/// pen's `dummy` page.
const DUMMY_PAGE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nContent-Type: text/html\r\n\r\nUlric was here.";

/// `dummy`: read the client's first chunk and answer it. None while nothing has come yet;
/// Some once the connection is finished with.
pub(super) fn dummy_step(client: &mut Sock) -> Option<()> {
    if !client.can_read() {
        return None;
    }
    let mut buf = [0u8; 4096];
    match client.read(&mut buf) {
        Ok(0) => Some(()),
        Ok(_) => {
            // The page fits in any socket's buffer; what does not go at once is not retried.
            let _ = client.write_now(DUMMY_PAGE);
            let _ = client.socket.shutdown(std::net::Shutdown::Write);
            Some(())
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(_) => Some(()),
    }
}

/// How long `dummy` waits for the client's first chunk.
pub(super) fn dummy_wait(settings: &Settings) -> Duration {
    if settings.idle_timeout.is_zero() {
        Duration::from_secs(60)
    } else {
        settings.idle_timeout
    }
}
