//! UDP balancing (`-U`): datagrams from one client address and port form a session bound to one
//! server, chosen by the same balancer as TCP connections (tracking, round robin, hash, weight,
//! prio, limits, the emergency server).
//!
//! Shape: one thread running one level-triggered epoll loop, as C pen does, rather than a
//! tokio runtime: a UDP relay has no streams to drive, and a plain loop does each request with
//! at most the four system calls it needs (receive from the client, send to the server,
//! receive the reply, send it back; client datagrams are received and, on a listener bound to
//! one address, replies sent up to 16 per call), hands an ended session's socket to the next
//! session (`spares`: a disconnect and a connect instead of a close, a new socket and an epoll
//! registration), and keeps no task per session. The listening socket receives every client
//! datagram (`recvmmsg`, 16 at a time); the session table (client address and port -> session)
//! finds or opens the session; the datagram goes out on the session's own socket, connected to
//! its server, and the server's replies go back through the listening socket, from the address
//! the client sent to. A session costs one descriptor, the kernel routes replies to the right
//! session, and an ICMP port unreachable from a server comes back as ECONNREFUSED on exactly
//! the session it concerns.
//!
//! Differences from pen 0.34.1, which opened two sockets per session and kept them until its
//! connection table wrapped round: sessions expire after `idle_timeout` (60 s when that is 0);
//! the table holds at most `-x` sessions (fewer if descriptors are short), recycling the least
//! recently used; a server that answers with ICMP port unreachable is blacklisted and its
//! sessions move to another server (the datagram that was refused is sent again there); every
//! datagram is counted, both ways.
//!
//! Invariants: everything here is owned by the UDP thread, except the balancer, reached through
//! `Shared::with`; nothing blocks but `epoll_wait`; no datagram is queued in pen (when a socket
//! cannot take one at once, it is dropped and counted, as a router would); the number of open
//! sockets, sessions' and kept ones together, is bounded by the table's capacity.

mod lifecycle;
mod session;
mod socket;
mod spares;
mod stats;
mod table;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tracing::{debug, info, warn};

use crate::balancer::{ConnCounters, Target};
use crate::shared::{RateLimit, Shared, Spin};
use session::Session;
use socket::{Batch, Downstream, LocalDst, Outbox, BATCH};
use spares::Spares;
use table::SessionTable;

pub use socket::is_server_failure;
pub use stats::{Stats, STATS};

/// Sessions with no traffic for this long end, when `idle_timeout` is 0 (pen's default).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// Receive batches of client datagrams per turn of the loop; more waiting stays for the next
/// turn (the loop is level-triggered), so replies are not starved.
const BATCHES_PER_TURN: usize = 4;

/// Descriptors kept free beside the sessions' sockets: stdio, the listener, epoll, the
/// runtime of the main thread.
const FD_RESERVE: u64 = 64;

/// Epoll tokens that are not sessions (sessions use their slot number).
const LISTENER: u64 = u64::MAX;
const STOP: u64 = u64::MAX - 1;

static LOCAL_FAILURE_LOG: RateLimit = RateLimit::new();

/// The running UDP data plane.
pub struct UdpPlane {
    stop: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
    local_addr: SocketAddr,
    /// The thread waits for this before serving (`go`), so that start-up (jail, user, request
    /// log, pid file) is complete before the first datagram is handled.
    go: Option<mpsc::Sender<()>>,
}

impl UdpPlane {
    /// Bind `listen` and start the UDP thread, which serves once `go` is called (datagrams
    /// wait in the socket until then). `sessions_max` is `-x`; it is lowered to what the
    /// descriptor limit allows (one descriptor per session).
    pub fn start(
        listen: SocketAddr,
        shared: Arc<Shared>,
        sessions_max: NonZeroUsize,
    ) -> anyhow::Result<UdpPlane> {
        let socket = socket::bind(listen)?;
        let local_addr = socket.local_addr().context("udp listener")?;
        let capacity = sessions_for_descriptors(sessions_max);
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("udp: epoll")?;
        let stop = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .context("udp: eventfd")?,
        );
        let down = Downstream::new(socket).context("udp listener")?;
        epoll
            .add(&down, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))
            .context("udp: epoll")?;
        epoll
            .add(&*stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))
            .context("udp: epoll")?;
        let plane = Plane {
            shared,
            epoll,
            down,
            table: SessionTable::new(capacity),
            slots: Vec::new(),
            free: Vec::new(),
            spares: Spares::default(),
            refusals: HashMap::new(),
        };
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pen-udp".into())
            .spawn(move || {
                let _ = ready_tx.send(());
                // Released by `go`, or by `stop` dropping the sender (then the stop event ends
                // the loop at once).
                let _ = go_rx.recv();
                plane.run();
            })
            .context("can't start the UDP thread")?;
        ready_rx
            .recv()
            .context("the UDP thread died while starting")?;
        info!("udp: up to {capacity} sessions, idle ones end after idle_timeout (60 s when 0)");
        Ok(UdpPlane {
            stop,
            thread: Some(thread),
            local_addr,
            go: Some(go_tx),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// End every session and the thread.
    /// Start serving.
    pub fn go(&mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
    }

    pub fn stop(mut self) {
        let _ = self.stop.write(1);
        self.go.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("the UDP thread panicked");
            }
        }
        info!("udp: {STATS}");
    }
}

/// `wanted`, or fewer if the descriptor limit cannot hold that many sessions.
fn sessions_for_descriptors(wanted: NonZeroUsize) -> NonZeroUsize {
    use nix::sys::resource::{getrlimit, Resource};
    let fds = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let fit = usize::try_from(fds.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    match NonZeroUsize::new(fit.max(16)) {
        Some(fit) if fit < wanted => {
            info!("udp: {fit} sessions at most: the descriptor limit is {fds}");
            fit
        }
        _ => wanted,
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Idle,
    /// Recycled to make room.
    Recycled,
    /// Its server refused another session; this one is placed again.
    Moved,
    /// No server would take it after a failure.
    NoServer,
    Shutdown,
}

/// Replies waiting for the end of the turn, each with its session's counters.
type Replies = Outbox<Arc<ConnCounters>>;

/// The UDP thread's state.
struct Plane {
    shared: Arc<Shared>,
    epoll: Epoll,
    down: Downstream,
    /// Client address and port -> slot.
    table: SessionTable<usize>,
    /// The sessions; a session's slot number is its epoll token.
    slots: Vec<Option<Session>>,
    free: Vec<usize>,
    /// Sockets of ended sessions, for new ones; their tokens are in neither `slots` nor `free`.
    spares: Spares,
    /// Per server, how many times it refused a datagram. A session placed on it before the
    /// latest refusal is moved on its next datagram, so one ICMP error moves every session of
    /// a dead server, not just the one that heard it.
    refusals: HashMap<Target, u64>,
}

impl Plane {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 256];
        let mut batch = Batch::new();
        // Replies read in a turn, sent to their clients together at its end. (Made here, as
        // `batch`: their system-call headers hold pointers, so they stay on this thread.)
        let mut outbox = Outbox::new();
        let mut next_sweep = Instant::now();
        let mut spin = Spin::default();
        loop {
            let before = Instant::now();
            let window = self.shared.busy_poll.get();
            let timeout = if spin.polling(window, before) {
                EpollTimeout::ZERO
            } else {
                let wait = next_sweep.saturating_duration_since(before);
                EpollTimeout::try_from(wait).unwrap_or(EpollTimeout::MAX)
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("udp: epoll_wait: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let now = Instant::now();
            spin.found(n, now);
            for event in &events[..n] {
                match event.data() {
                    STOP => {
                        self.shutdown();
                        return;
                    }
                    LISTENER => self.relay_from_clients(&mut batch, now),
                    token => self.relay_reply(token as usize, &mut outbox, now),
                }
            }
            self.send_replies(&mut outbox);
            if now >= next_sweep {
                let idle = self.idle_timeout();
                self.sweep(now, idle);
                next_sweep =
                    now + (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            }
        }
    }

    /// The listener is readable: handle a few batches of client datagrams.
    fn relay_from_clients(&mut self, batch: &mut Batch, now: Instant) {
        for _ in 0..BATCHES_PER_TURN {
            let n = match self.down.recv_batch(batch) {
                Ok(n) => n,
                Err(e) => {
                    // Not expected on an unconnected socket.
                    debug!("udp: receive: {e}");
                    return;
                }
            };
            for i in 0..n {
                if let (data, Some(client), local) = batch.get(i) {
                    self.on_datagram(data, client, local, now);
                }
            }
            if n < BATCH {
                return;
            }
        }
    }

    fn on_datagram(
        &mut self,
        data: &[u8],
        client: SocketAddr,
        local: Option<LocalDst>,
        now: Instant,
    ) {
        STATS.from_clients.fetch_add(1, Ordering::Relaxed);
        let token = match self.table.touch(&client, now).copied() {
            Some(token) if !self.is_stale(token) => token,
            found => {
                if let Some(stale) = found {
                    self.end(stale, End::Moved);
                }
                match self.open(client, local, now) {
                    Some(token) => token,
                    None => {
                        STATS.dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        };
        // The request log sees every client datagram, as the TCP relay's every read (one
        // relaxed load when logging is off).
        if let Some(backend) = self.session(token).map(|s| s.backend.ip()) {
            self.shared
                .reqlog
                .tap(Some(client.ip()), Some(backend))
                .chunk(data);
        }
        let Some(session) = self.session(token) else {
            return;
        };
        session.last_activity = now;
        session.keep(data);
        match session.socket.send(data) {
            Ok(n) => {
                session.counters.add_to_server(n);
                STATS.to_servers.fetch_add(1, Ordering::Relaxed);
            }
            // An ICMP error from an earlier datagram: move, and send this one there.
            Err(e) if is_server_failure(&e) => self.fail_over(token, &e, now),
            Err(e) => {
                STATS.dropped.fetch_add(1, Ordering::Relaxed);
                debug!("udp: datagram from {client} dropped: {e}");
            }
        }
    }

    /// A session's socket is readable (or has an error): take one reply, for the end of the
    /// turn. Level-triggered, so another waiting reply brings the socket back in the next
    /// turn, and no call is spent finding the socket empty.
    fn relay_reply(&mut self, token: usize, outbox: &mut Replies, now: Instant) {
        let Some(Some(session)) = self.slots.get_mut(token) else {
            return; // ended earlier in this turn
        };
        match session.socket.recv(outbox.slot()) {
            Ok(n) => {
                STATS.from_servers.fetch_add(1, Ordering::Relaxed);
                session.last_activity = now;
                session.answered();
                outbox.push(n, session.client, session.local, session.counters.clone());
                if outbox.is_full() {
                    self.send_replies(outbox);
                }
            }
            // An event for a socket that has since been replaced or drained.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if is_server_failure(&e) => self.fail_over(token, &e, now),
            Err(e) => debug!("udp: session {}: {e}", session.client),
        }
    }

    /// Send the replies taken so far to their clients, and count them.
    fn send_replies(&self, outbox: &mut Replies) {
        outbox.send(&self.down, |counters, outcome| match outcome {
            Ok(n) => {
                counters.add_to_client(n);
                STATS.to_clients.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                STATS.dropped.fetch_add(1, Ordering::Relaxed);
                debug!("udp: a reply was dropped: {e}");
            }
        });
    }

    fn session(&mut self, token: usize) -> Option<&mut Session> {
        self.slots.get_mut(token).and_then(Option::as_mut)
    }

    /// Its server refused a datagram since the session was placed there.
    fn is_stale(&self, token: usize) -> bool {
        self.slots
            .get(token)
            .and_then(Option::as_ref)
            .is_some_and(|s| self.refusals.get(&s.target).copied().unwrap_or(0) != s.refusals_seen)
    }

    /// End the sessions idle for `idle`.
    fn sweep(&mut self, now: Instant, idle: Duration) {
        let slots = &self.slots;
        let expired = self.table.expire(now, idle, |token| {
            slots
                .get(*token)
                .and_then(Option::as_ref)
                .map_or(now, |s| s.last_activity)
        });
        for (_, token) in expired {
            self.finish(token, End::Idle);
        }
    }

    fn idle_timeout(&self) -> Duration {
        let idle = self.shared.with(|b| b.settings.idle_timeout);
        if idle.is_zero() {
            DEFAULT_IDLE
        } else {
            idle
        }
    }

    fn shutdown(&mut self) {
        while let Some((_, token)) = self.table.pop_lru() {
            self.finish(token, End::Shutdown);
        }
        let tokens = self.spares.clear();
        self.free.extend(tokens);
    }
}
