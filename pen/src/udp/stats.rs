//! The UDP counters, over every session since startup: for the statistics output and the line
//! pen logs when it stops.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Datagrams not delivered: no server, a socket that could not take them, or replies that
    /// were still waiting on a session's socket when the session ended.
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
