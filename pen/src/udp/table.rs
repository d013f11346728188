//! The session table: UDP sessions keyed by client address and port, with a fixed capacity.
//! Pure bookkeeping with time passed in, so the rules are tested without sockets:
//!
//! - A datagram from the client makes its session the most recently used.
//! - When the table is full, a new session recycles the least recently used one.
//! - A session with no traffic either way for the idle timeout expires. Replies do not reorder
//!   the table (that would cost a hash lookup per reply); the expiry sweep gives a session
//!   whose server is still talking a second chance instead, so a session that only hears from
//!   its server expires between one and two idle timeouts after the last reply.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

struct Entry<V> {
    value: V,
    /// The last datagram from the client (the table's order).
    last_client: Instant,
}

pub struct SessionTable<V> {
    map: LruCache<SocketAddr, Entry<V>>,
    capacity: NonZeroUsize,
}

impl<V> SessionTable<V> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        SessionTable {
            // Unbounded underneath: memory follows the sessions that exist, not the capacity.
            map: LruCache::unbounded(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    /// The session of `client`, made the most recently used: a datagram came from it.
    pub fn touch(&mut self, client: &SocketAddr, now: Instant) -> Option<&V> {
        let entry = self.map.get_mut(client)?;
        entry.last_client = now;
        Some(&entry.value)
    }

    /// Add a session. If the table is full, the least recently used session is taken out to
    /// make room and returned (the caller ends it).
    pub fn insert(
        &mut self,
        client: SocketAddr,
        value: V,
        now: Instant,
    ) -> Option<(SocketAddr, V)> {
        let recycled = if self.map.len() >= self.capacity.get() && !self.map.contains(&client) {
            self.pop_lru()
        } else {
            None
        };
        self.map.push(
            client,
            Entry {
                value,
                last_client: now,
            },
        );
        recycled
    }

    /// The session of `client`, leaving the order alone.
    pub fn peek(&self, client: &SocketAddr) -> Option<&V> {
        self.map.peek(client).map(|e| &e.value)
    }

    pub fn remove(&mut self, client: &SocketAddr) -> Option<V> {
        self.map.pop(client).map(|e| e.value)
    }

    /// Take out the least recently used session.
    pub fn pop_lru(&mut self) -> Option<(SocketAddr, V)> {
        self.map.pop_lru().map(|(k, e)| (k, e.value))
    }

    /// Take out every session idle for at least `idle`. `last_activity` is a session's last
    /// datagram either way; a session that is only hearing from its server is moved to the
    /// front and kept. Stops at the first session whose client spoke within `idle`: every
    /// session after it in the table's order did too.
    pub fn expire(
        &mut self,
        now: Instant,
        idle: Duration,
        last_activity: impl Fn(&V) -> Instant,
    ) -> Vec<(SocketAddr, V)> {
        let mut expired = Vec::new();
        for _ in 0..self.map.len() {
            let Some((client, entry)) = self.map.peek_lru() else {
                break;
            };
            if now.saturating_duration_since(entry.last_client) < idle {
                break;
            }
            let client = *client;
            let active = last_activity(&entry.value).max(entry.last_client);
            if now.saturating_duration_since(active) >= idle {
                if let Some(entry) = self.map.pop(&client) {
                    expired.push((client, entry.value));
                }
            } else if let Some(entry) = self.map.get_mut(&client) {
                // Second chance: the server spoke recently. It moves to the front as if its
                // client had spoken now, which keeps the table in time order (so the walk can
                // stop early) at the price of expiring such a session up to `idle` late.
                entry.last_client = now;
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::net::{IpAddr, Ipv4Addr};

    fn client(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    fn table(n: usize) -> SessionTable<Cell<Instant>> {
        SessionTable::new(NonZeroUsize::new(n).unwrap())
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_full_table_recycles_the_least_recently_used_session() {
        let t0 = Instant::now();
        let mut t = table(2);
        assert!(t.insert(client(1), Cell::new(t0), t0).is_none());
        assert!(t.insert(client(2), Cell::new(t0), t0 + S).is_none());
        assert!(t.touch(&client(1), t0 + 2 * S).is_some());
        let (gone, _) = t.insert(client(3), Cell::new(t0), t0 + 3 * S).unwrap();
        assert_eq!(gone, client(2), "1 spoke more recently than 2");
        assert_eq!(t.len(), 2);
        assert!(t.touch(&client(2), t0).is_none());
        assert!(t.remove(&client(1)).is_some());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn idle_sessions_expire_and_talking_servers_keep_theirs() {
        let t0 = Instant::now();
        let idle = 10 * S;
        let mut t = table(8);
        for port in 1..=4 {
            t.insert(client(port), Cell::new(t0), t0);
        }
        // Session 2's server replied at 8 s; session 4's client spoke at 9 s.
        t.touch(&client(2), t0).unwrap().set(t0 + 8 * S);
        t.touch(&client(4), t0 + 9 * S);
        let expired: Vec<_> = t
            .expire(t0 + 10 * S, idle, Cell::get)
            .into_iter()
            .map(|(c, _)| c.port())
            .collect();
        assert_eq!(expired, [1, 3]);
        assert_eq!(t.len(), 2);
        // 4 goes at 19 s; 2 got its second chance at 10 s and goes at 20 s (its server has
        // been silent since 8 s: a session heard only from its server expires within 2 x idle).
        let ports = |v: Vec<(SocketAddr, Cell<Instant>)>| -> Vec<u16> {
            v.into_iter().map(|(c, _)| c.port()).collect()
        };
        assert!(t.expire(t0 + 18 * S, idle, Cell::get).is_empty());
        assert_eq!(ports(t.expire(t0 + 19 * S, idle, Cell::get)), [4]);
        assert_eq!(ports(t.expire(t0 + 20 * S, idle, Cell::get)), [2]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn the_sweep_stops_at_the_first_recent_client() {
        let t0 = Instant::now();
        let mut t = table(1000);
        for port in 1..=1000 {
            t.insert(
                client(port),
                Cell::new(t0),
                t0 + Duration::from_millis(port.into()),
            );
        }
        let expired = t.expire(t0 + Duration::from_millis(10_100), 10 * S, Cell::get);
        assert_eq!(expired.len(), 100);
        assert_eq!(t.len(), 900);
    }
}
