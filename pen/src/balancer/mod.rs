//! The balancer: servers, the client table, server selection, blacklisting, failover and the
//! counters pen shows. A pure state machine: it never does I/O, never reads a clock and never
//! spawns. Callers pass `now` and report what happened (a connect failed, a connection closed),
//! so every pen decision can be tested synchronously (see the scenario tests in `tests.rs`).
//!
//! The flow of one client connection:
//! `admit` (client table, initial choice, admission) -> the caller connects to the returned
//! backend -> `connected` or `connect_failed` (blacklist, failover: maybe another backend) ->
//! ... -> `closed` (counters folded into the server and client totals).

mod acl;
mod clients;
mod conn;
mod select;
mod settings;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use acl::{AclEntry, AclFull, AclId, Acls, CountryLookup, NoCountries, Rule, ACL_LISTS};
pub use clients::{ClientEntry, ClientKey, ClientTable};
pub use conn::{Conn, ConnCounters, ConnState};
pub use settings::{ConnOptions, FastClose, Settings, XffMode};
pub use snapshot::{
    ClientStats, ConnStats, Counters, ServerKind, ServerStats, SettingsStats, Snapshot,
};

use crate::addr::{Backend, ServerSpec};
use crate::geoip::GeoIp;

/// Index of a regular server slot (pen's server number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub usize);

/// Where a connection goes: a regular server or one of pen's two hidden slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Server(ServerId),
    /// `-e`: the server of last resort, reached only through failover.
    Emergency,
    /// `-B`: where clients denied by `client_acl` are sent.
    Abuse,
}

/// Index of a connection slot (pen's connection number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// A server slot. A slot with no backend is blank (the table grew past it) and is never chosen.
#[derive(Debug, Clone, Default)]
pub struct Server {
    pub backend: Option<Backend>,
    /// Soft limit on connections; 0 = none.
    pub maxc: u32,
    /// Extra room for returning clients, up to this many connections.
    pub hard: u32,
    pub weight: u32,
    pub prio: u32,
    /// `server N acl A`: clients this list denies are never sent here.
    pub acl: AclId,
    /// Connections assigned to this server: connecting or established.
    pub conns: u32,
    /// Connections ever assigned to this server (failover counts each server tried).
    pub connects: u64,
    pub last_failure: Option<Instant>,
    pub blacklisted_until: Option<Instant>,
    /// Bytes sent to the server by connections that have closed (live ones are in `Conn`).
    pub sent: u64,
    /// Bytes received from the server by connections that have closed.
    pub received: u64,
}

impl Server {
    pub fn from_spec(spec: &ServerSpec) -> Self {
        Server {
            backend: Some(spec.backend.clone()),
            maxc: spec.maxc,
            hard: spec.hard,
            weight: spec.weight,
            prio: spec.prio,
            ..Server::default()
        }
    }

    pub fn is_blacklisted(&self, now: Instant) -> bool {
        self.blacklisted_until.is_some_and(|until| now < until)
    }

    /// Usable for an initial choice: configured and not blacklisted.
    fn is_available(&self, now: Instant) -> bool {
        self.backend.is_some() && !self.is_blacklisted(now)
    }
}

/// The client side of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// None for a Unix-socket client.
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl Peer {
    fn key(&self) -> ClientKey {
        match self.ip {
            Some(ip) => ClientKey::Ip(ip),
            None => ClientKey::Unix,
        }
    }
}

/// What to do with a new client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Connect to `backend`; report the outcome with `connected` or `connect_failed`.
    Connect {
        conn: ConnId,
        target: Target,
        backend: Backend,
    },
    /// No server will take it: close the client.
    Refuse,
    /// The client already has `client_conn_max` connections open: close this one. The
    /// balancer kept nothing of it.
    ClientLimit,
}

/// The balancer's whole state. Cloned only to try a configuration transaction (a config file
/// re-read on HUP) before committing it.
#[derive(Clone)]
pub struct Balancer {
    pub settings: Settings,
    pub acls: Acls,
    servers: Vec<Server>,
    emergency: Option<Server>,
    abuse: Option<Server>,
    clients: ClientTable,
    conns: Vec<Option<Conn>>,
    /// Free connection slots; the most recently freed is reused first, as pen does.
    free_conns: Vec<usize>,
    live_conns: usize,
    /// Round-robin cursor: the server picked last. Starts at 0, so the first pick is server 1.
    rr_cursor: usize,
    /// The server chosen most recently (the status page's "current").
    current: Option<Target>,
    /// The size of the connection table (`-x`), for the status page; the limit itself is
    /// enforced where connections are accepted. 0 until set.
    conn_max: usize,
    /// The connection slot handed out most recently (pen's `connections_last`).
    last_conn: usize,
    /// The country database for `country` access-list entries (read once, looked up in memory).
    geoip: Option<Arc<GeoIp>>,
    /// Open connections per client address (for `client_conn_max`), kept by `insert_conn` and
    /// `closed`; an address with none has no entry.
    open_per_client: HashMap<IpAddr, usize>,
    /// New connections closed by `client_conn_max`, since start.
    client_limited: u64,
}

/// pen's default client table size (`-c`).
pub const DEFAULT_CLIENTS_MAX: usize = 2048;

impl Balancer {
    pub fn new(settings: Settings, clients_max: NonZeroUsize) -> Self {
        Balancer {
            settings,
            acls: Acls::default(),
            servers: Vec::new(),
            emergency: None,
            abuse: None,
            clients: ClientTable::new(clients_max),
            conns: Vec::new(),
            free_conns: Vec::new(),
            live_conns: 0,
            rr_cursor: 0,
            current: None,
            conn_max: 0,
            last_conn: 0,
            geoip: None,
            open_per_client: HashMap::new(),
            client_limited: 0,
        }
    }

    /// Use this country database from now on (None: no database; country entries never match).
    pub fn set_geoip(&mut self, geoip: Option<Arc<GeoIp>>) {
        self.geoip = geoip;
    }

    pub fn geoip(&self) -> Option<&Arc<GeoIp>> {
        self.geoip.as_ref()
    }

    /// The country of a client address, for `country` access-list entries; None without a
    /// database or when the database has no country for it (loopback, private addresses).
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        self.geoip.as_ref()?.country(ip)
    }

    // ---- configuration -------------------------------------------------------------------

    pub fn add_server(&mut self, spec: &ServerSpec) -> ServerId {
        self.servers.push(Server::from_spec(spec));
        ServerId(self.servers.len() - 1)
    }

    pub fn set_emergency(&mut self, spec: Option<&ServerSpec>) {
        self.emergency = spec.map(Server::from_spec);
    }

    pub fn set_abuse(&mut self, spec: Option<&ServerSpec>) {
        self.abuse = spec.map(Server::from_spec);
    }

    /// Does list `acl` let this peer in? (`ip` None: a Unix-domain peer, always let in.)
    pub fn permits(&self, acl: AclId, ip: Option<IpAddr>) -> bool {
        match &self.geoip {
            Some(db) => self.acls.permits(acl, ip, &**db),
            None => self.acls.permits(acl, ip, &NoCountries),
        }
    }

    pub fn abuse(&self) -> Option<&Server> {
        self.abuse.as_ref()
    }

    pub fn emergency(&self) -> Option<&Server> {
        self.emergency.as_ref()
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Set a server slot, growing the table with blank slots if needed. Connections already
    /// counted on the slot stay counted, so limits keep holding across the change.
    pub fn replace_server(&mut self, id: ServerId, mut server: Server) {
        if self.servers.len() <= id.0 {
            self.servers.resize_with(id.0 + 1, Server::default);
        }
        let old = &self.servers[id.0];
        server.conns = old.conns;
        server.connects = old.connects;
        server.sent = old.sent;
        server.received = old.received;
        server.last_failure = old.last_failure;
        self.servers[id.0] = server;
    }

    /// Bytes sent to and received from a server: closed connections plus live ones.
    pub fn server_bytes(&self, target: Target) -> (u64, u64) {
        let Some(s) = self.slot(target) else {
            return (0, 0);
        };
        self.conns()
            .filter(|(_, c)| c.target == Some(target))
            .fold((s.sent, s.received), |(up, down), (_, c)| {
                (up + c.counters.to_server(), down + c.counters.to_client())
            })
    }

    pub fn server_mut(&mut self, id: ServerId) -> Option<&mut Server> {
        self.servers.get_mut(id.0)
    }

    /// Blacklist a server for `time` from `now` (pen's `server N blacklist T`; 0 lifts it).
    pub fn blacklist(&mut self, target: Target, now: Instant, time: Duration) {
        if let Some(s) = self.slot_mut(target) {
            s.blacklisted_until = (!time.is_zero()).then(|| now + time);
        }
    }

    pub fn clients(&self) -> &ClientTable {
        &self.clients
    }

    pub fn grow_clients(&mut self, n: NonZeroUsize) {
        self.clients.grow(n);
    }

    /// Live connections with their slot numbers.
    pub fn conns(&self) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (ConnId(i), c)))
    }

    pub fn live_conns(&self) -> usize {
        self.live_conns
    }

    pub fn current(&self) -> Option<Target> {
        self.current
    }

    /// The connection table size (`-x`) the caller enforces, as the statistics report it.
    pub fn set_conn_max(&mut self, n: usize) {
        self.conn_max = n;
    }

    pub fn conn_max(&self) -> usize {
        self.conn_max
    }

    fn slot(&self, target: Target) -> Option<&Server> {
        match target {
            Target::Server(id) => self.servers.get(id.0),
            Target::Emergency => self.emergency.as_ref(),
            Target::Abuse => self.abuse.as_ref(),
        }
    }

    fn slot_mut(&mut self, target: Target) -> Option<&mut Server> {
        match target {
            Target::Server(id) => self.servers.get_mut(id.0),
            Target::Emergency => self.emergency.as_mut(),
            Target::Abuse => self.abuse.as_mut(),
        }
    }

    // ---- the life of a connection ----------------------------------------------------------

    /// A client connected: remember it, choose a server, and reserve a place on it.
    ///
    /// A client that `client_acl` denies goes to the abuse server (`-B`) or is refused; it is
    /// never sent to the emergency server (pen 0.34.1 did that when `-B` was not given).
    pub fn admit(&mut self, peer: Peer, now: Instant) -> Admission {
        let key = peer.key();
        let limit = self.settings.client_conn_max;
        if limit > 0 && peer.ip.is_some_and(|ip| self.open_by(ip) >= limit) {
            self.client_limited += 1;
            return Admission::ClientLimit;
        }
        if !self.permits(self.settings.client_acl, peer.ip) {
            let id = self.insert_conn(Conn {
                client: key,
                peer_port: peer.port,
                initial: Some(Target::Abuse),
                target: None,
                state: ConnState::Connecting,
                attempts: 0,
                counters: Arc::default(),
                since: now,
            });
            let placed = self
                .try_server(Target::Abuse, id, now)
                .then_some(Target::Abuse);
            return self.connect_or_refuse(id, placed);
        }
        let remembered = self
            .clients
            .visit(key, peer.port, now, self.settings.tracking)
            .server;
        let initial = self.initial_choice(peer, remembered, now);
        let id = self.insert_conn(Conn {
            client: key,
            peer_port: peer.port,
            initial,
            target: None,
            state: ConnState::Connecting,
            attempts: 0,
            counters: Arc::default(),
            since: now,
        });
        let placed = match initial {
            Some(t) if self.try_server(t, id, now) => Some(t),
            _ => self.failover(id, initial, now),
        };
        self.connect_or_refuse(id, placed)
    }

    /// `idlers N`: an upstream connection with no client, placed by round robin with failover
    /// like pen's "reliable idlers". It counts on its server until `closed`.
    pub fn admit_idler(&mut self, now: Instant) -> Admission {
        let initial = self.round_robin(now);
        let id = self.insert_conn(Conn {
            client: ClientKey::Idler,
            peer_port: 0,
            initial,
            target: None,
            state: ConnState::Connecting,
            attempts: 0,
            counters: Arc::default(),
            since: now,
        });
        let placed = match initial {
            Some(t) if self.try_server(t, id, now) => Some(t),
            _ => self.failover(id, initial, now),
        };
        self.connect_or_refuse(id, placed)
    }

    /// Idle upstream connections that are established.
    pub fn idlers(&self) -> usize {
        self.conns()
            .filter(|(_, c)| c.client == ClientKey::Idler && c.state == ConnState::Connected)
            .count()
    }

    /// The connect to the current target succeeded.
    pub fn connected(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            conn.state = ConnState::Connected;
        }
    }

    /// The connect to the current target failed (refused, unreachable or timed out): blacklist
    /// that server and fail over. Returns the next backend to try, or `Refuse` (the connection
    /// is then gone).
    pub fn connect_failed(&mut self, id: ConnId, now: Instant) -> Admission {
        let Some(failed) = self.conn_mut(id).and_then(|c| c.target.take()) else {
            return Admission::Refuse;
        };
        let blacklist_time = self.settings.blacklist_time;
        if let Some(s) = self.slot_mut(failed) {
            s.conns = s.conns.saturating_sub(1);
            s.last_failure = Some(now);
            if !blacklist_time.is_zero() {
                s.blacklisted_until = Some(now + blacklist_time);
            }
        }
        let next = self.failover(id, Some(failed), now);
        self.connect_or_refuse(id, next)
    }

    /// The connection is over: release its server and add its bytes to the totals.
    pub fn closed(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.0).and_then(Option::take) else {
            return;
        };
        self.free_conns.push(id.0);
        self.live_conns -= 1;
        if let ClientKey::Ip(ip) = conn.client {
            if let std::collections::hash_map::Entry::Occupied(mut open) =
                self.open_per_client.entry(ip)
            {
                *open.get_mut() -= 1;
                if *open.get() == 0 {
                    open.remove();
                }
            }
        }
        let (up, down) = (conn.counters.to_server(), conn.counters.to_client());
        if let Some(s) = conn.target.and_then(|t| self.slot_mut(t)) {
            s.conns = s.conns.saturating_sub(1);
            s.sent += up;
            s.received += down;
        }
        if let Some(c) = self.clients.peek_mut(&conn.client) {
            c.sent += down;
            c.received += up;
        }
    }

    /// Connections (UDP: sessions) open from `ip`.
    pub fn open_by(&self, ip: IpAddr) -> usize {
        self.open_per_client.get(&ip).copied().unwrap_or(0)
    }

    /// New connections closed by `client_conn_max` since start.
    pub fn client_limited(&self) -> u64 {
        self.client_limited
    }

    pub fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.0).and_then(Option::as_ref)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.0).and_then(Option::as_mut)
    }

    fn insert_conn(&mut self, conn: Conn) -> ConnId {
        self.live_conns += 1;
        if let ClientKey::Ip(ip) = conn.client {
            *self.open_per_client.entry(ip).or_default() += 1;
        }
        let id = match self.free_conns.pop() {
            Some(i) => {
                self.conns[i] = Some(conn);
                ConnId(i)
            }
            None => {
                self.conns.push(Some(conn));
                ConnId(self.conns.len() - 1)
            }
        };
        self.last_conn = id.0;
        id
    }

    fn connect_or_refuse(&mut self, id: ConnId, target: Option<Target>) -> Admission {
        let backend = target.and_then(|t| self.slot(t)?.backend.clone());
        match (target, backend) {
            (Some(target), Some(backend)) => Admission::Connect {
                conn: id,
                target,
                backend,
            },
            _ => {
                self.closed(id);
                Admission::Refuse
            }
        }
    }

    /// pen's `try_server`: may this connection go to `target` now? If so, reserve a place on
    /// it, point the connection and the client at it, and return true.
    fn try_server(&mut self, target: Target, id: ConnId, now: Instant) -> bool {
        let Some(conn) = self.conn(id) else {
            return false;
        };
        let client = conn.client;
        if let (Target::Server(sid), ClientKey::Ip(ip)) = (target, client) {
            match self.servers.get(sid.0) {
                Some(s) if self.permits(s.acl, Some(ip)) => {}
                _ => return false,
            }
        }
        let sticky = self.clients.peek(&client).and_then(|c| c.server) == Some(target);
        let Some(s) = self.slot_mut(target) else {
            return false;
        };
        if s.backend.is_none() || s.is_blacklisted(now) {
            return false;
        }
        // The soft limit; `hard` gives returning clients extra room.
        if s.maxc != 0 && s.conns >= s.maxc && (!sticky || s.conns >= s.hard) {
            return false;
        }
        s.conns += 1;
        s.connects += 1;
        if let Some(conn) = self.conn_mut(id) {
            conn.target = Some(target);
            conn.attempts += u32::from(matches!(target, Target::Server(_)));
        }
        if let Some(c) = self.clients.peek_mut(&client) {
            c.server = Some(target);
        }
        self.current = Some(target);
        true
    }

    /// pen's failover: scan from the failed server + 1 round to the first choice (tried last),
    /// then the emergency server; no server is tried twice for one connection. Stubborn mode, and connections already on the emergency or
    /// abuse server, never fail over.
    fn failover(&mut self, id: ConnId, from: Option<Target>, now: Instant) -> Option<Target> {
        if self.settings.stubborn || matches!(from, Some(Target::Emergency | Target::Abuse)) {
            return None;
        }
        let n = self.servers.len();
        if let (true, Some(Target::Server(ServerId(mut s)))) = (n > 1, from) {
            let initial = match self.conn(id).and_then(|c| c.initial) {
                Some(Target::Server(ServerId(i))) => i,
                _ => s,
            };
            let attempts = self.conn(id).map_or(0, |c| c.attempts as usize);
            for _ in attempts..n {
                s = (s + 1) % n;
                if self.try_server(Target::Server(ServerId(s)), id, now) {
                    return Some(Target::Server(ServerId(s)));
                }
                if s == initial {
                    break;
                }
            }
        }
        self.try_server(Target::Emergency, id, now)
            .then_some(Target::Emergency)
    }
}
