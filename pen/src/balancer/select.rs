//! The initial server choice, in pen's order of precedence:
//! tracking (unless `roundrobin`) -> prio -> weight -> hash -> round robin.

use std::net::IpAddr;
use std::time::Instant;

use super::{Balancer, Peer, ServerId, Target};

impl Balancer {
    /// Choose where a new connection should go first. `None` means no regular server is
    /// eligible; failover then tries the emergency server.
    pub(super) fn initial_choice(
        &mut self,
        peer: Peer,
        remembered: Option<Target>,
        now: Instant,
    ) -> Option<Target> {
        let n = self.servers.len();
        if !self.settings.roundrobin {
            // Tracking: a client goes back to its server. pen ignores a remembered emergency or
            // abuse server, so such a client is placed afresh.
            if let Some(Target::Server(id)) = remembered {
                if id.0 < n {
                    return Some(Target::Server(id));
                }
            }
        }
        if self.settings.prio {
            return self.by_prio(now);
        }
        if self.settings.weight {
            return self.by_weight(now);
        }
        if self.settings.hash {
            return (n > 0).then(|| {
                Target::Server(ServerId(hash(peer, self.settings.roundrobin) as usize % n))
            });
        }
        self.round_robin(now)
    }

    fn available(&self, now: Instant) -> impl Iterator<Item = (usize, &super::Server)> {
        self.servers
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.is_available(now))
    }

    /// The available server with the lowest prio value; the first one on ties.
    fn by_prio(&self, now: Instant) -> Option<Target> {
        self.available(now)
            .min_by_key(|(i, s)| (s.prio, *i))
            .map(|(i, _)| Target::Server(ServerId(i)))
    }

    /// pen's weighted least-connections: the available server minimising `256 * conns / weight`
    /// (integer division, first on ties) among those with a weight.
    ///
    /// When no available server has a weight, pen 0.34.1 refused every client (reference §13.2
    /// B7); here they are then all treated as weight 1, which is plain least-connections.
    fn by_weight(&self, now: Instant) -> Option<Target> {
        let any_weighted = self.available(now).any(|(_, s)| s.weight > 0);
        self.available(now)
            .filter_map(|(i, s)| {
                let weight = match (any_weighted, s.weight) {
                    (true, 0) => return None,
                    (true, w) => w,
                    (false, _) => 1,
                };
                Some((256 * u64::from(s.conns) / u64::from(weight), i))
            })
            .min()
            .map(|(_, i)| Target::Server(ServerId(i)))
    }

    /// Next available server after the cursor, wrapping; the cursor then points at it.
    pub(super) fn round_robin(&mut self, now: Instant) -> Option<Target> {
        let n = self.servers.len();
        for step in 1..=n {
            let i = (self.rr_cursor + step) % n;
            if self.servers[i].is_available(now) {
                self.rr_cursor = i;
                return Some(Target::Server(ServerId(i)));
            }
        }
        None
    }
}

/// pen's hash, so that a client lands on the server C pen would give it: the IPv4 address bytes
/// read as a little-endian u32 (what pen's x86 build does with network-order memory), XOR the
/// source port's network-order bytes read little-endian when `with_port` (`-r`). IPv6 clients
/// hash to their last address byte, Unix clients to 0. The caller takes it modulo the number of
/// server slots.
pub fn hash(peer: Peer, with_port: bool) -> u32 {
    match peer.ip {
        Some(IpAddr::V4(v4)) => {
            let a = u32::from_le_bytes(v4.octets());
            let p = u32::from(u16::from_le_bytes(peer.port.to_be_bytes()));
            if with_port {
                a ^ p
            } else {
                a
            }
        }
        Some(IpAddr::V6(v6)) => u32::from(v6.octets()[15]),
        None => 0,
    }
}
