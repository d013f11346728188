//! The client table: who connected, when, and which server they were given last.
//!
//! pen keys clients by address family and IP (the port is ignored) in a fixed-size table and
//! scans it linearly. Here the table is an LRU map: lookup, insert and eviction are O(1) whatever
//! `clients_max` is, and the least recently seen client is the one evicted when it is full, as in
//! pen. Each entry keeps a stable slot number, which is what pen's status page shows.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::Target;

/// What identifies a client. All Unix-socket clients share one entry, as in pen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Ip(IpAddr),
    Unix,
    /// Not a client: an idle upstream connection pen keeps open (`idlers`). Never in the table.
    Idler,
}

/// A client as the table remembers it.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    /// Stable slot number in `0..clients_max` (pen's client index).
    pub slot: usize,
    /// Source port of the most recent connection.
    pub port: u16,
    pub last_seen: Instant,
    /// The server this client was sent to last (tracking).
    pub server: Option<Target>,
    pub connects: u64,
    /// Bytes sent to the client (pen's `csx`).
    pub sent: u64,
    /// Bytes received from the client (pen's `crx`).
    pub received: u64,
}

#[derive(Clone)]
pub struct ClientTable {
    /// Unbounded underneath, with the capacity enforced here, so memory follows the clients
    /// actually seen rather than `clients_max` (a table of a million costs nothing until used).
    map: LruCache<ClientKey, ClientEntry>,
    capacity: NonZeroUsize,
    /// Slots never used yet are handed out in order; evicted entries give theirs to the newcomer.
    next_slot: usize,
}

impl ClientTable {
    pub fn new(capacity: NonZeroUsize) -> Self {
        ClientTable {
            map: LruCache::unbounded(),
            capacity,
            next_slot: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Grow the table (pen's `clients_max` never shrinks it either).
    pub fn grow(&mut self, capacity: NonZeroUsize) {
        self.capacity = self.capacity.max(capacity);
    }

    /// Record a connection from `key` at `now` and return its entry.
    ///
    /// A client last seen more than `tracking` ago (when `tracking` is non-zero) is forgotten and
    /// starts afresh: pen 0.34.1 kept sending such a client to its old server (reference §3.4);
    /// here expiry really expires.
    pub fn visit(
        &mut self,
        key: ClientKey,
        port: u16,
        now: Instant,
        tracking: Duration,
    ) -> &mut ClientEntry {
        let expired = |e: &ClientEntry| {
            !tracking.is_zero() && now.saturating_duration_since(e.last_seen) > tracking
        };
        if self.map.get(&key).is_none_or(expired) {
            let (len, cap) = (self.map.len(), self.capacity.get());
            let slot = match self.map.peek(&key).map(|old| old.slot) {
                Some(slot) => slot,
                None if len < cap => {
                    self.next_slot += 1;
                    self.next_slot - 1
                }
                None => self.map.pop_lru().map(|(_, old)| old.slot).unwrap_or(0),
            };
            let fresh = ClientEntry {
                slot,
                port,
                last_seen: now,
                server: None,
                connects: 0,
                sent: 0,
                received: 0,
            };
            self.map.push(key, fresh);
        }
        let entry = self
            .map
            .get_mut(&key)
            .expect("the entry was found or inserted just above");
        entry.last_seen = now;
        entry.port = port;
        entry.connects += 1;
        entry
    }

    /// Look at an entry without making it more recent.
    pub fn peek(&self, key: &ClientKey) -> Option<&ClientEntry> {
        self.map.peek(key)
    }

    pub fn peek_mut(&mut self, key: &ClientKey) -> Option<&mut ClientEntry> {
        self.map.peek_mut(key)
    }

    /// Every entry, most recently seen first.
    pub fn iter(&self) -> impl Iterator<Item = (&ClientKey, &ClientEntry)> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> ClientKey {
        ClientKey::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }

    fn table(n: usize) -> ClientTable {
        ClientTable::new(NonZeroUsize::new(n).unwrap())
    }

    #[test]
    fn same_ip_any_port_is_one_client() {
        let t0 = Instant::now();
        let mut t = table(4);
        t.visit(ip(1), 1000, t0, Duration::ZERO);
        let e = t.visit(ip(1), 2000, t0, Duration::ZERO);
        assert_eq!((e.slot, e.connects, e.port), (0, 2, 2000));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn full_table_evicts_least_recently_seen_and_reuses_its_slot() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = table(3);
        t.visit(ip(1), 1, t0, Duration::ZERO).server =
            Some(Target::Server(super::super::ServerId(0)));
        t.visit(ip(2), 1, t0 + s, Duration::ZERO);
        t.visit(ip(3), 1, t0 + 2 * s, Duration::ZERO);
        t.visit(ip(1), 1, t0 + 3 * s, Duration::ZERO); // 1 is now the most recent
        let e = t.visit(ip(4), 1, t0 + 4 * s, Duration::ZERO);
        assert_eq!(
            e.slot, 1,
            "client 2 was least recently seen; 4 takes its slot"
        );
        assert!(t.peek(&ip(2)).is_none());
        assert_eq!(t.peek(&ip(1)).unwrap().connects, 2);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn tracking_time_really_expires_a_returning_client() {
        let t0 = Instant::now();
        let tracking = Duration::from_secs(10);
        let mut t = table(8);
        let e = t.visit(ip(1), 1, t0, tracking);
        e.server = Some(Target::Emergency);
        e.sent = 99;
        let e = t.visit(ip(1), 1, t0 + Duration::from_secs(10), tracking);
        assert_eq!(
            (e.server, e.connects),
            (Some(Target::Emergency), 2),
            "within the window"
        );
        let e = t.visit(ip(1), 1, t0 + Duration::from_secs(21), tracking);
        assert_eq!(
            (e.server, e.connects, e.sent),
            (None, 1, 0),
            "expired: a new client"
        );
        assert_eq!(e.slot, 0, "it keeps its slot");
    }

    #[test]
    fn zero_tracking_never_expires() {
        let t0 = Instant::now();
        let mut t = table(2);
        t.visit(ip(1), 1, t0, Duration::ZERO).server = Some(Target::Abuse);
        let e = t.visit(
            ip(1),
            1,
            t0 + Duration::from_secs(1_000_000),
            Duration::ZERO,
        );
        assert_eq!(e.server, Some(Target::Abuse));
    }

    #[test]
    fn grow_keeps_entries_and_never_shrinks() {
        let t0 = Instant::now();
        let mut t = table(1);
        t.visit(ip(1), 1, t0, Duration::ZERO);
        t.grow(NonZeroUsize::new(3).unwrap());
        t.grow(NonZeroUsize::new(2).unwrap());
        assert_eq!(t.capacity(), 3);
        t.visit(ip(2), 1, t0, Duration::ZERO);
        assert!(t.peek(&ip(1)).is_some());
        assert_eq!(t.visit(ip(3), 1, t0, Duration::ZERO).slot, 2);
    }
}
