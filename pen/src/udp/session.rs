//! One UDP session: a client address and port bound to one server through a connected upstream
//! socket of its own.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use super::socket::LocalDst;
use crate::balancer::{ConnCounters, ConnId, Target};

/// The largest client datagram kept for re-sending when its server turns out to be gone (an
/// ICMP port unreachable comes back for it): enough for DNS, RADIUS and syslog messages, small
/// enough that a table full of sessions costs little.
const KEEP_MAX: usize = 2048;

/// Where the balancer put a session, with its connected socket.
pub struct Placed {
    pub conn: ConnId,
    pub target: Target,
    pub backend: SocketAddr,
    pub socket: UdpSocket,
    pub counters: Arc<ConnCounters>,
    /// A kept socket (`spares`) is already registered with epoll, under this token.
    pub token: Option<usize>,
}

pub struct Session {
    pub client: SocketAddr,
    /// Wildcard listener: the address the client sent to, which replies come from.
    pub local: Option<LocalDst>,
    /// The balancer's connection slot; the same across failovers.
    pub conn: ConnId,
    pub target: Target,
    pub backend: SocketAddr,
    /// Connected to `backend`; closing it (dropping the session) also takes it out of the
    /// UDP thread's epoll set.
    pub socket: UdpSocket,
    pub counters: Arc<ConnCounters>,
    /// How many times its server had refused a datagram when the session was placed there.
    pub refusals_seen: u64,
    /// The last datagram either way.
    pub last_activity: Instant,
    /// The last datagram sent upstream (a reused buffer), valid while `unanswered`.
    kept: Vec<u8>,
    /// A datagram was kept and no reply has come since (an empty datagram counts too).
    unanswered: bool,
    /// The balancer has released (or forgotten) the connection slot.
    pub released: bool,
}

impl Session {
    pub fn new(
        client: SocketAddr,
        local: Option<LocalDst>,
        placed: Placed,
        refusals_seen: u64,
        now: Instant,
    ) -> Session {
        Session {
            client,
            local,
            conn: placed.conn,
            target: placed.target,
            backend: placed.backend,
            socket: placed.socket,
            counters: placed.counters,
            refusals_seen,
            last_activity: now,
            kept: Vec::new(),
            unanswered: false,
            released: false,
        }
    }

    /// Another server took over; the old socket closes.
    pub fn move_to(&mut self, placed: Placed, refusals_seen: u64) {
        debug_assert_eq!(placed.conn, self.conn);
        self.target = placed.target;
        self.backend = placed.backend;
        self.socket = placed.socket;
        self.refusals_seen = refusals_seen;
    }

    /// Remember a datagram about to go upstream, for failover.
    pub fn keep(&mut self, data: &[u8]) {
        self.unanswered = data.len() <= KEEP_MAX;
        if self.unanswered {
            self.kept.clear();
            self.kept.extend_from_slice(data);
        }
    }

    /// The server answered: nothing to re-send any more.
    pub fn answered(&mut self) {
        self.unanswered = false;
    }

    /// The datagram to send again after a failover, if one is kept.
    pub fn kept(&self) -> Option<&[u8]> {
        self.unanswered.then_some(&self.kept[..])
    }
}
