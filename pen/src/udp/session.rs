//! One UDP session: a client address and port bound to one server through a connected upstream
//! socket, and the task that carries the server's replies back to the client.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;
use tracing::debug;

use super::socket::{is_server_failure, try_recv_replies, LocalDst};
use super::{Placed, Plane, STATS};
use crate::balancer::{ConnCounters, ConnId, Target};

/// The largest client datagram kept for re-sending when its server turns out to be gone (an
/// ICMP port unreachable comes back for it): enough for DNS, RADIUS and syslog messages, small
/// enough that a table full of sessions costs little.
const KEEP_MAX: usize = 2048;

/// Receive calls (of up to two replies) per wake-up before other sessions get a turn.
const BATCHES_PER_WAKE: usize = 16;

pub(super) struct Session {
    pub client: SocketAddr,
    /// Wildcard listener: the address the client sent to, which replies come from.
    pub local: Option<LocalDst>,
    /// The balancer's connection slot; the same across failovers.
    pub conn: ConnId,
    target: Cell<Target>,
    backend: Cell<SocketAddr>,
    upstream: RefCell<Rc<UdpSocket>>,
    counters: Arc<ConnCounters>,
    /// The refusal count of its server when the session was placed there (see `Plane::moved`).
    refusals: RefCell<(Rc<Cell<u64>>, u64)>,
    /// The last datagram either way.
    pub last_activity: Cell<Instant>,
    /// The last datagram sent upstream, while no reply has come since (for failover).
    /// (A reused buffer: no allocation per datagram once it has grown to the session's size.)
    kept: RefCell<Vec<u8>>,
    /// `kept` holds a datagram (an empty datagram is a datagram too).
    unanswered: Cell<bool>,
    task: RefCell<Option<AbortHandle>>,
    /// The balancer has released (or forgotten) the connection slot.
    released: Cell<bool>,
}

impl Session {
    pub fn new(
        client: SocketAddr,
        local: Option<LocalDst>,
        placed: Placed,
        refusals: (Rc<Cell<u64>>, u64),
        now: Instant,
    ) -> Session {
        Session {
            client,
            local,
            conn: placed.conn,
            target: Cell::new(placed.target),
            backend: Cell::new(placed.backend),
            upstream: RefCell::new(Rc::new(placed.socket)),
            counters: placed.counters,
            refusals: RefCell::new(refusals),
            last_activity: Cell::new(now),
            kept: RefCell::new(Vec::new()),
            unanswered: Cell::new(false),
            task: RefCell::new(None),
            released: Cell::new(false),
        }
    }

    pub fn target(&self) -> Target {
        self.target.get()
    }

    pub fn backend(&self) -> SocketAddr {
        self.backend.get()
    }

    /// Its server refused another session since this one was placed there.
    pub fn is_stale(&self) -> bool {
        let (cell, seen) = &*self.refusals.borrow();
        cell.get() != *seen
    }

    pub fn set_task(&self, task: AbortHandle) {
        *self.task.borrow_mut() = Some(task);
    }

    /// Stop the reply task (its socket closes when the task is dropped, on the next turn of
    /// the UDP thread's scheduler). True the first time: the session has just ended.
    pub fn stop(&self) -> bool {
        match self.task.borrow_mut().take() {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Mark the connection slot as released; true the first time (the caller releases it).
    pub fn release(&self) -> bool {
        !self.released.replace(true)
    }

    /// Another server took over the session.
    pub fn move_to(&self, placed: Placed, refusals: (Rc<Cell<u64>>, u64)) {
        debug_assert_eq!(placed.conn, self.conn);
        self.target.set(placed.target);
        self.backend.set(placed.backend);
        *self.upstream.borrow_mut() = Rc::new(placed.socket);
        *self.refusals.borrow_mut() = refusals;
    }

    /// Forward a client datagram to the server.
    pub fn send(self: &Rc<Self>, plane: &Rc<Plane>, data: &[u8], now: Instant) {
        self.last_activity.set(now);
        let keep = data.len() <= KEEP_MAX;
        if keep {
            let mut kept = self.kept.borrow_mut();
            kept.clear();
            kept.extend_from_slice(data);
        }
        self.unanswered.set(keep);
        let sent = send_now(&self.upstream.borrow(), data);
        match sent {
            Ok(n) => {
                self.counters.add_to_server(n);
                STATS.to_servers.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if is_server_failure(&e) => {
                // An ICMP error from an earlier datagram: move, and re-send this one there.
                plane.fail_over(self, &e, now);
            }
            Err(e) => {
                STATS.dropped.fetch_add(1, Ordering::Relaxed);
                debug!("udp: datagram from {} dropped: {e}", self.client);
            }
        }
    }

    /// Send the kept datagram again, to the server that just took over.
    pub fn resend_kept(&self) {
        if !self.unanswered.get() {
            return;
        }
        let data = self.kept.borrow();
        let sent = send_now(&self.upstream.borrow(), &data);
        match sent {
            Ok(n) => {
                self.counters.add_to_server(n);
                STATS.to_servers.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                STATS.dropped.fetch_add(1, Ordering::Relaxed);
                debug!("udp: datagram from {} dropped: {e}", self.client);
            }
        }
    }

    /// A reply from the server: to the client, from the address it sent to.
    fn reply(&self, plane: &Plane, data: &[u8]) {
        STATS.from_servers.fetch_add(1, Ordering::Relaxed);
        self.last_activity.set(Instant::now());
        self.unanswered.set(false);
        match plane.down.try_send_to(data, self.client, self.local) {
            Ok(n) => {
                self.counters.add_to_client(n);
                STATS.to_clients.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                STATS.dropped.fetch_add(1, Ordering::Relaxed);
                debug!("udp: reply to {} dropped: {e}", self.client);
            }
        }
    }
}

/// Send on a connected socket now, or fail with WouldBlock. A direct syscall: tokio's
/// `try_send` would refuse a socket it has not yet seen writable, as every new one is.
fn send_now(socket: &UdpSocket, data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send(data)
}

/// The reply task: wait for the upstream socket, relay what the server sends, and fail over
/// when the server turns out to be gone. Ends when the session does (aborted) or when no
/// server will take the session any more.
pub(super) async fn run(plane: Rc<Plane>, session: Rc<Session>) {
    loop {
        let socket = session.upstream.borrow().clone();
        // An ICMP error shows as EPOLLERR only, not as readable: wait for both.
        let ready = match socket.ready(Interest::READABLE | Interest::ERROR).await {
            Ok(ready) => ready,
            Err(e) => {
                debug!("udp: session {}: {e}", session.client);
                plane.end(&session, super::End::Error);
                return;
            }
        };
        let mut failure: Option<io::Error> = None;
        let mut batches = 0;
        if ready.is_readable() {
            while batches < BATCHES_PER_WAKE {
                match try_recv_replies(&socket, |data| session.reply(&plane, data)) {
                    Ok(()) => batches += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if is_server_failure(&e) => {
                        failure = Some(e);
                        break;
                    }
                    Err(e) => {
                        debug!("udp: session {}: {e}", session.client);
                        break;
                    }
                }
            }
        }
        if failure.is_none() && ready.is_error() {
            if let Ok(Some(e)) = socket.take_error() {
                if is_server_failure(&e) {
                    failure = Some(e);
                } else {
                    debug!("udp: session {}: {e}", session.client);
                }
            }
            // take_error cleared the socket's error; clear tokio's record of it too, or the
            // next wait would return at once.
            let _ = socket.try_io(Interest::ERROR, || {
                Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
            });
        }
        if let Some(e) = failure {
            if !plane.fail_over(&session, &e, Instant::now()) {
                return;
            }
        } else if batches == BATCHES_PER_WAKE {
            tokio::task::yield_now().await;
        }
    }
}
