//! UDP balancing (`-U`): datagrams from one client address and port form a session bound to one
//! server, chosen by the same balancer as TCP connections (tracking, round robin, hash, weight,
//! prio, limits, the emergency server).
//!
//! Shape: one thread with its own single-threaded runtime. The listening socket receives every
//! client datagram; the session table (client address and port -> session) finds or opens the
//! session; the datagram goes out on the session's own socket, connected to its server. Each
//! session has a small task that waits on that socket and sends the server's replies to the
//! client through the listening socket, from the address the client sent to. A session costs
//! one descriptor, the kernel routes replies to the right session, and an ICMP port unreachable
//! from a server comes back as ECONNREFUSED on exactly the sessions it concerns.
//!
//! Differences from pen 0.34.1, which opened two sockets per session and kept them until its
//! connection table wrapped round: sessions expire after `idle_timeout` (60 s when that is 0);
//! the table holds at most `-x` sessions (fewer if descriptors are short), recycling the least
//! recently used; a server that answers with ICMP port unreachable is blacklisted and its
//! sessions move to another server (the datagram that was refused is sent again there); every
//! datagram is counted, both ways.
//!
//! Invariants: everything here lives on the UDP thread (`Rc`, `RefCell`), except the balancer,
//! reached through `Shared::with` (never across an await); no datagram is queued in pen (when a
//! socket cannot take one at once, it is dropped and counted, as a router would); the number of
//! open sockets is bounded by the table's capacity.

mod session;
mod socket;
mod table;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::LocalSet;
use tracing::{debug, info, warn};

use crate::addr::Backend;
use crate::balancer::{Admission, ConnCounters, ConnId, Peer, Target};
use crate::net;
use crate::proxy::{describe, RateLimit, Shared};
use session::Session;
use socket::{connect_upstream, Downstream, LocalDst};
use table::SessionTable;

pub use socket::is_server_failure;

/// Sessions with no traffic for this long end, when `idle_timeout` is 0 (pen's default).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// Receive batches (of up to 16 datagrams) per wake-up before the sessions' tasks get a turn.
const BATCHES_PER_WAKE: usize = 2;

/// Descriptors kept free beside the sessions' sockets: stdio, the runtime, the listener, and the
/// sockets of sessions ended in the current burst, which close when their tasks are dropped.
const FD_RESERVE: u64 = 128;

/// Counters over every session since startup, for statistics and the log.
pub struct Stats {
    pub sessions: AtomicU64,
    /// Ended after `idle_timeout` (or 60 s) without traffic.
    pub expired: AtomicU64,
    /// Ended to make room in a full table.
    pub recycled: AtomicU64,
    /// Moved to another server after an ICMP error.
    pub failed_over: AtomicU64,
    pub from_clients: AtomicU64,
    pub to_servers: AtomicU64,
    pub from_servers: AtomicU64,
    pub to_clients: AtomicU64,
    /// Datagrams not delivered: no server, or a socket that could not take them.
    pub dropped: AtomicU64,
    /// Sessions open now.
    pub live: AtomicU64,
}

pub static STATS: Stats = Stats {
    sessions: AtomicU64::new(0),
    expired: AtomicU64::new(0),
    recycled: AtomicU64::new(0),
    failed_over: AtomicU64::new(0),
    from_clients: AtomicU64::new(0),
    to_servers: AtomicU64::new(0),
    from_servers: AtomicU64::new(0),
    to_clients: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    live: AtomicU64::new(0),
};

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "{} sessions ({} open, {} expired, {} recycled, {} failed over); datagrams: {} from clients, {} to servers, {} from servers, {} to clients, {} dropped",
            n(&self.sessions),
            n(&self.live),
            n(&self.expired),
            n(&self.recycled),
            n(&self.failed_over),
            n(&self.from_clients),
            n(&self.to_servers),
            n(&self.from_servers),
            n(&self.to_clients),
            n(&self.dropped),
        )
    }
}

static LOCAL_FAILURE_LOG: RateLimit = RateLimit::new();

/// The running UDP data plane.
pub struct UdpPlane {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl UdpPlane {
    /// Bind `listen` and start the UDP thread. `sessions_max` is `-x`; it is lowered to what
    /// the descriptor limit allows (one descriptor per session).
    pub fn start(
        listen: SocketAddr,
        shared: Arc<Shared>,
        sessions_max: NonZeroUsize,
    ) -> anyhow::Result<UdpPlane> {
        let socket = socket::bind(listen)?;
        let local_addr = socket.local_addr().context("udp listener")?;
        let capacity = sessions_for_descriptors(sessions_max);
        let (stop, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pen-udp".into())
            .spawn(move || udp_thread(socket, shared, capacity, stop_rx, ready_tx))
            .context("can't start the UDP thread")?;
        ready_rx
            .recv()
            .context("the UDP thread died while starting")?
            .context("can't register the UDP listener")?;
        info!("udp: up to {capacity} sessions, idle ones end after idle_timeout (60 s when 0)");
        Ok(UdpPlane {
            stop: Some(stop),
            thread: Some(thread),
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// End every session and the thread.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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

fn udp_thread(
    socket: std::net::UdpSocket,
    shared: Arc<Shared>,
    capacity: NonZeroUsize,
    stop: oneshot::Receiver<()>,
    ready: mpsc::Sender<io::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    LocalSet::new().block_on(&runtime, async move {
        let down = match Downstream::register(socket) {
            Ok(down) => down,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let plane = Rc::new(Plane {
            shared,
            down,
            table: RefCell::new(SessionTable::new(capacity)),
            refusals: RefCell::default(),
        });
        let _ = ready.send(Ok(()));
        tokio::select! {
            () = plane.clone().listen() => {}
            () = plane.clone().sweep() => {}
            _ = stop => {}
        }
        plane.shutdown();
    });
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
    Error,
    Shutdown,
}

/// Where the balancer put a session, with its connected socket.
pub(crate) struct Placed {
    conn: ConnId,
    target: Target,
    backend: SocketAddr,
    socket: UdpSocket,
    counters: Arc<ConnCounters>,
}

/// The UDP thread's state.
pub(crate) struct Plane {
    shared: Arc<Shared>,
    down: Downstream,
    table: RefCell<SessionTable<Rc<Session>>>,
    /// Per server, how many times it refused a datagram. A session placed on it before the
    /// latest refusal is moved on its next datagram, so one ICMP error moves every session of
    /// a dead server, not just the one that heard it.
    refusals: RefCell<HashMap<Target, Rc<Cell<u64>>>>,
}

impl Plane {
    async fn listen(self: Rc<Self>) {
        loop {
            if let Err(e) = self.down.readable().await {
                warn!("udp: listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            // A few batches, then let the sessions' tasks run.
            let mut drained = false;
            for _ in 0..BATCHES_PER_WAKE {
                let now = Instant::now();
                let got = self.down.try_recv_batch(|data, client, local| {
                    self.on_datagram(data, client, local, now);
                });
                match got {
                    Ok(()) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        // Not expected on an unconnected socket; never spin on it.
                        debug!("udp: receive: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                drained = true;
                break;
            }
            if !drained {
                tokio::task::yield_now().await;
            }
        }
    }

    fn on_datagram(
        self: &Rc<Self>,
        data: &[u8],
        client: SocketAddr,
        local: Option<LocalDst>,
        now: Instant,
    ) {
        STATS.from_clients.fetch_add(1, Ordering::Relaxed);
        let found = self.table.borrow_mut().touch(&client, now).cloned();
        let session = match found {
            Some(s) if !s.is_stale() => s,
            found => {
                if let Some(stale) = found {
                    self.end(&stale, End::Moved);
                }
                match self.open(client, local, now) {
                    Some(s) => s,
                    None => {
                        STATS.dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        };
        session.send(self, data, now);
    }

    /// A new session for `client`, placed by the balancer; None if no server takes it.
    fn open(
        self: &Rc<Self>,
        client: SocketAddr,
        local: Option<LocalDst>,
        now: Instant,
    ) -> Option<Rc<Session>> {
        // Make room first, so that the new socket has a descriptor.
        let full = {
            let table = self.table.borrow();
            table.len() >= table.capacity()
        };
        if full {
            self.recycle_one();
        }
        let peer = Peer {
            ip: Some(client.ip().to_canonical()),
            port: client.port(),
        };
        let admission = self.shared.with(|b| b.admit(peer, now));
        let placed = self.place(admission, now)?;
        let refusals = self.refusals_of(placed.target);
        debug!(
            "udp: session {client} -> {} ({})",
            describe(placed.target),
            placed.backend
        );
        let session = Rc::new(Session::new(client, local, placed, refusals, now));
        let evicted = self.table.borrow_mut().insert(client, session.clone(), now);
        if let Some((_, old)) = evicted {
            self.finish(&old, End::Recycled);
        }
        let task = tokio::task::spawn_local(session::run(self.clone(), session.clone()));
        session.set_task(task.abort_handle());
        STATS.sessions.fetch_add(1, Ordering::Relaxed);
        STATS.live.fetch_add(1, Ordering::Relaxed);
        Some(session)
    }

    fn recycle_one(&self) {
        let oldest = self.table.borrow_mut().pop_lru();
        if let Some((_, old)) = oldest {
            self.finish(&old, End::Recycled);
        }
    }

    /// Open a socket to the backend the balancer chose, failing over as it says. None when no
    /// server is left (the balancer then no longer holds the connection slot).
    fn place(&self, mut admission: Admission, now: Instant) -> Option<Placed> {
        loop {
            let Admission::Connect {
                conn,
                target,
                backend,
            } = admission
            else {
                return None;
            };
            let Backend::Tcp(addr) = backend else {
                // The command line refuses Unix-socket servers with -U; a server set to one
                // later cannot take datagrams.
                admission = self.shared.with(|b| b.connect_failed(conn, now));
                continue;
            };
            match connect_upstream(addr) {
                Ok(socket) => {
                    let counters = self.shared.with(|b| {
                        b.connected(conn);
                        b.conn(conn).map(|c| c.counters.clone())
                    });
                    return Some(Placed {
                        conn,
                        target,
                        backend: addr,
                        socket,
                        counters: counters.unwrap_or_default(),
                    });
                }
                Err(e) if net::is_local_failure(&e) => {
                    if LOCAL_FAILURE_LOG.allow(Instant::now()) {
                        warn!("udp: can't open a socket to {addr}: {e}; recycling sessions");
                    }
                    self.shared.with(|b| b.closed(conn));
                    // Sockets of ended sessions close when their tasks are dropped, after this
                    // burst: free a few for the datagrams that follow.
                    for _ in 0..4 {
                        self.recycle_one();
                    }
                    return None;
                }
                Err(e) => {
                    info!(
                        "udp: {} ({addr}) failed: {e}; blacklisting it",
                        describe(target)
                    );
                    admission = self.shared.with(|b| b.connect_failed(conn, now));
                }
            }
        }
    }

    /// The server of `session` refused a datagram (ICMP unreachable): blacklist it, move the
    /// session to the next server and send its last datagram again there. False if no server
    /// is left; the session has then ended.
    fn fail_over(self: &Rc<Self>, session: &Rc<Session>, error: &io::Error, now: Instant) -> bool {
        let target = session.target();
        info!(
            "udp: {} ({}) refused a datagram: {error}; blacklisting it",
            describe(target),
            session.backend()
        );
        let refusals = self.refusals_of(target).0;
        refusals.set(refusals.get() + 1);
        STATS.failed_over.fetch_add(1, Ordering::Relaxed);
        let admission = self.shared.with(|b| b.connect_failed(session.conn, now));
        match self.place(admission, now) {
            Some(placed) => {
                debug!(
                    "udp: session {} moved to {} ({})",
                    session.client,
                    describe(placed.target),
                    placed.backend
                );
                let refusals = self.refusals_of(placed.target);
                session.move_to(placed, refusals);
                session.resend_kept();
                true
            }
            None => {
                // The balancer has already let go of the connection slot.
                session.release();
                self.end(session, End::NoServer);
                false
            }
        }
    }

    /// The refusal counter of `target`, and its value now.
    fn refusals_of(&self, target: Target) -> (Rc<Cell<u64>>, u64) {
        let cell = self
            .refusals
            .borrow_mut()
            .entry(target)
            .or_default()
            .clone();
        let seen = cell.get();
        (cell, seen)
    }

    /// End a session that may still be in the table.
    fn end(&self, session: &Rc<Session>, why: End) {
        {
            let mut table = self.table.borrow_mut();
            if table
                .peek(&session.client)
                .is_some_and(|s| Rc::ptr_eq(s, session))
            {
                table.remove(&session.client);
            }
        }
        self.finish(session, why);
    }

    /// End a session already out of the table: stop its task, release its connection slot.
    fn finish(&self, session: &Rc<Session>, why: End) {
        if session.release() {
            self.shared.with(|b| b.closed(session.conn));
        }
        if !session.stop() {
            return; // ended already
        }
        STATS.live.fetch_sub(1, Ordering::Relaxed);
        match why {
            End::Idle => STATS.expired.fetch_add(1, Ordering::Relaxed),
            End::Recycled => STATS.recycled.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        debug!("udp: session {} ended ({why:?})", session.client);
    }

    /// End the sessions idle for `idle_timeout` (or `DEFAULT_IDLE`), every fraction of it.
    async fn sweep(self: Rc<Self>) {
        loop {
            let idle = self.idle_timeout();
            let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            tokio::time::sleep(period).await;
            let idle = self.idle_timeout();
            let expired = self
                .table
                .borrow_mut()
                .expire(Instant::now(), idle, |s| s.last_activity.get());
            for (_, session) in expired {
                self.finish(&session, End::Idle);
            }
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

    fn shutdown(&self) {
        loop {
            let next = self.table.borrow_mut().pop_lru();
            let Some((_, session)) = next else { break };
            self.finish(&session, End::Shutdown);
        }
    }
}
