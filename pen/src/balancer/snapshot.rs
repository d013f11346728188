//! A snapshot of the balancer: everything pen's status page and text statistics show, and a
//! little more (blacklist state, settings, totals), as plain owned data.
//!
//! Building one is pure: the caller passes `now` (for ages and blacklists) and the wall-clock
//! time (for pen's timestamps), so a snapshot is a deterministic function of the balancer. It
//! serializes and deserializes with serde, so the same type is the JSON of the control port
//! and what a dashboard reads back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use super::{Balancer, ClientKey, FastClose, Server, Target};

/// Which kind of slot a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerKind {
    Regular,
    /// `-e`: reached only through failover; not listed on pen's status page.
    Emergency,
    /// `-B`: where denied clients go; not listed on pen's status page.
    Abuse,
}

/// One server slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// pen's server number: the slot index, -1 for the emergency server, -2 for the abuse one.
    pub index: i64,
    pub kind: ServerKind,
    /// The address as pen prints it (no port, no brackets); `0.0.0.0` for a blank slot.
    pub address: String,
    /// The port as pen prints it (1 for a Unix-socket server, 0 for a blank slot).
    pub port: u16,
    /// pen's `status` column: when the server last failed a connect (Unix seconds), or 0.
    pub status: i64,
    /// Skipped for new clients right now.
    pub blacklisted: bool,
    /// Seconds until the blacklist ends (rounded up); 0 when not blacklisted.
    pub blacklist_remaining: u64,
    /// Connections on the server (connecting or established).
    pub conns: u32,
    /// Connections ever sent to the server (a counter: rates come from its differences).
    #[serde(default)]
    pub connects: u64,
    /// Soft limit (`maxc`); 0 = none.
    pub maxc: u32,
    pub hard: u32,
    /// Bytes sent to the server, live connections included.
    pub sent: u64,
    /// Bytes received from the server, live connections included.
    pub received: u64,
    pub weight: u32,
    pub prio: u32,
}

/// One client table entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStats {
    /// The entry's slot in the client table (pen's client number).
    pub slot: usize,
    /// The client's IP address, or `unix` for Unix-socket clients.
    pub address: String,
    /// Seconds since the client was last seen.
    pub age: u64,
    /// pen's number of the server it was sent to last; None if it never got one.
    pub last_server: Option<i64>,
    pub connects: u64,
    /// Bytes sent to the client, live connections included.
    pub sent: u64,
    /// Bytes received from the client, live connections included.
    pub received: u64,
}

/// One open connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnStats {
    /// The connection slot (pen's connection number).
    pub slot: usize,
    /// The client's socket descriptor (pen's `downfd`), -1 if unknown.
    pub client_fd: i32,
    /// The server's socket descriptor (pen's `upfd`), -1 while connecting.
    pub server_fd: i32,
    /// Bytes read from the server that the client has not taken yet (pen's "pending data down").
    pub pending_to_client: u64,
    /// Bytes read from the client that the server has not taken yet (pen's "pending data up").
    pub pending_to_server: u64,
    /// The client's slot in the client table; None if the entry was since evicted.
    pub client: Option<usize>,
    /// pen's number of the server it is on; None between a failed connect and the next.
    pub server: Option<i64>,
    /// The connect to the server has completed.
    pub connected: bool,
    /// Seconds since the client connected.
    pub age: u64,
    /// Bytes sent to the client so far.
    pub sent: u64,
    /// Bytes received from the client so far.
    pub received: u64,
}

/// The settings that shape selection and relaying, in seconds and words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsStats {
    pub blacklist_time: u64,
    pub tracking: u64,
    pub connect_timeout: u64,
    pub idle_timeout: u64,
    pub roundrobin: bool,
    pub stubborn: bool,
    pub hash: bool,
    pub weight: bool,
    pub prio: bool,
    /// `off`, `up`, `down` or `both`.
    pub tcp_fastclose: String,
    pub tcp_nodelay: bool,
    pub keepalive: bool,
    pub web_stats: Option<String>,
    /// Size of the client table (`-c`).
    pub clients_max: usize,
    /// Size of the connection table (`-x`).
    pub conn_max: usize,
}

/// Totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Open connections (pen's `connections_used`).
    pub conns_used: usize,
    /// The connection slot handed out most recently (pen's `connections_last`).
    pub conn_last: usize,
    /// Entries in the client table.
    pub clients_known: usize,
    /// Bytes sent to every server, the emergency and abuse servers included.
    pub sent: u64,
    /// Bytes received from every server.
    pub received: u64,
}

/// Everything the status page shows, at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken, in Unix seconds.
    pub time: i64,
    /// The same instant as pen prints it: local time, `YYYY-MM-DD HH:MM:SS`.
    pub local_time: String,
    /// pen's number of the server chosen most recently; None before the first choice.
    pub current: Option<i64>,
    /// The regular server slots, in order.
    pub servers: Vec<ServerStats>,
    pub emergency: Option<ServerStats>,
    pub abuse: Option<ServerStats>,
    /// Client table entries, by slot.
    pub clients: Vec<ClientStats>,
    /// Open connections, by slot.
    pub conns: Vec<ConnStats>,
    pub settings: SettingsStats,
    pub counters: Counters,
}

/// pen's number for a target: the index, -1 for the emergency server, -2 for the abuse server.
pub fn pen_number(target: Target) -> i64 {
    match target {
        Target::Server(id) => i64::try_from(id.0).unwrap_or(i64::MAX),
        Target::Emergency => -1,
        Target::Abuse => -2,
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

fn secs_rounded_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Snapshot {
    /// Take a snapshot of `b` as of `now` (monotonic) and `wall` (the same instant on the
    /// wall clock, in the local time zone pen prints).
    pub fn build(b: &Balancer, now: Instant, wall: DateTime<FixedOffset>) -> Snapshot {
        let wall_secs = wall.timestamp();
        let server = |kind: ServerKind, target: Target, s: &Server| {
            let (sent, received) = b.server_bytes(target);
            let (address, port) = match &s.backend {
                Some(backend) => (backend.host_string(), backend.port()),
                None => ("0.0.0.0".to_string(), 0),
            };
            let status = s.last_failure.map_or(0, |failed| {
                let ago = now.saturating_duration_since(failed).as_secs();
                wall_secs.saturating_sub(i64::try_from(ago).unwrap_or(i64::MAX))
            });
            let remaining = s
                .blacklisted_until
                .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
            ServerStats {
                index: pen_number(target),
                kind,
                address,
                port,
                status,
                blacklisted: s.is_blacklisted(now),
                blacklist_remaining: secs_rounded_up(remaining),
                conns: s.conns,
                connects: s.connects,
                maxc: s.maxc,
                hard: s.hard,
                sent,
                received,
                weight: s.weight,
                prio: s.prio,
            }
        };
        let servers: Vec<ServerStats> = b
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let target = Target::Server(super::ServerId(i));
                server(ServerKind::Regular, target, s)
            })
            .collect();
        let emergency = b
            .emergency
            .as_ref()
            .map(|s| server(ServerKind::Emergency, Target::Emergency, s));
        let abuse = b
            .abuse
            .as_ref()
            .map(|s| server(ServerKind::Abuse, Target::Abuse, s));

        // Live connections' bytes belong to their clients too.
        let mut live: HashMap<ClientKey, (u64, u64)> = HashMap::new();
        for (_, c) in b.conns() {
            let e = live.entry(c.client).or_default();
            e.0 += c.counters.to_client();
            e.1 += c.counters.to_server();
        }
        let mut clients: Vec<ClientStats> = b
            .clients
            .iter()
            .map(|(key, e)| {
                let (sent, received) = live.get(key).copied().unwrap_or_default();
                ClientStats {
                    slot: e.slot,
                    address: client_address(key),
                    age: secs(now.saturating_duration_since(e.last_seen)),
                    last_server: e.server.map(pen_number),
                    connects: e.connects,
                    sent: e.sent + sent,
                    received: e.received + received,
                }
            })
            .collect();
        clients.sort_by_key(|c| c.slot);

        // Idlers have no client, and pen leaves them out of its connections table.
        let conns: Vec<ConnStats> = b
            .conns()
            .filter(|(_, c)| c.client != ClientKey::Idler)
            .map(|(id, c)| {
                let (client_fd, server_fd) = c.counters.fds();
                let (pending_to_server, pending_to_client) = c.counters.pending();
                ConnStats {
                    slot: id.0,
                    client_fd,
                    server_fd,
                    pending_to_client,
                    pending_to_server,
                    client: b.clients.peek(&c.client).map(|e| e.slot),
                    server: c.target.map(pen_number),
                    connected: c.state == super::ConnState::Connected,
                    age: secs(now.saturating_duration_since(c.since)),
                    sent: c.counters.to_client(),
                    received: c.counters.to_server(),
                }
            })
            .collect();

        let s = &b.settings;
        let settings = SettingsStats {
            blacklist_time: secs(s.blacklist_time),
            tracking: secs(s.tracking),
            connect_timeout: secs(s.connect_timeout),
            idle_timeout: secs(s.idle_timeout),
            roundrobin: s.roundrobin,
            stubborn: s.stubborn,
            hash: s.hash,
            weight: s.weight,
            prio: s.prio,
            tcp_fastclose: match s.fastclose {
                FastClose::Off => "off",
                FastClose::Up => "up",
                FastClose::Down => "down",
                FastClose::Both => "both",
            }
            .to_string(),
            tcp_nodelay: s.tcp_nodelay,
            keepalive: s.keepalive,
            web_stats: s.web_stats.as_ref().map(|p| p.display().to_string()),
            clients_max: b.clients.capacity(),
            conn_max: b.conn_max,
        };
        let every_server = servers.iter().chain(&emergency).chain(&abuse);
        let (sent, received) =
            every_server.fold((0, 0), |(up, down), s| (up + s.sent, down + s.received));
        let counters = Counters {
            conns_used: b.live_conns,
            conn_last: b.last_conn,
            clients_known: b.clients.len(),
            sent,
            received,
        };
        Snapshot {
            time: wall_secs,
            local_time: wall.format("%Y-%m-%d %H:%M:%S").to_string(),
            current: b.current.map(pen_number),
            servers,
            emergency,
            abuse,
            clients,
            conns,
            settings,
            counters,
        }
    }
}

fn client_address(key: &ClientKey) -> String {
    match key {
        ClientKey::Ip(ip) => ip.to_string(),
        ClientKey::Unix => "unix".to_string(),
        ClientKey::Idler => "idler".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Backend, ServerSpec};
    use crate::balancer::{Admission, Peer, Settings};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::num::NonZeroUsize;

    fn spec(port: u16, maxc: u32, hard: u32, weight: u32, prio: u32) -> ServerSpec {
        ServerSpec {
            backend: Backend::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
            maxc,
            hard,
            weight,
            prio,
        }
    }

    fn peer(last: u8) -> Peer {
        Peer {
            ip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))),
            port: 40000,
        }
    }

    fn wall(secs: i64) -> DateTime<FixedOffset> {
        DateTime::from_timestamp(secs, 0)
            .unwrap()
            .with_timezone(&FixedOffset::east_opt(3600).unwrap())
    }

    fn conn(a: &Admission) -> crate::balancer::ConnId {
        match a {
            Admission::Connect { conn, .. } => *conn,
            Admission::Refuse | Admission::ClientLimit => panic!("refused"),
        }
    }

    #[test]
    fn a_snapshot_shows_servers_clients_and_connections_as_pen_does() {
        let t0 = Instant::now();
        let mut b = Balancer::new(Settings::default(), NonZeroUsize::new(2048).unwrap());
        b.set_conn_max(500);
        b.add_server(&spec(9001, 0, 0, 0, 0));
        b.add_server(&spec(9002, 10, 20, 1, 2));
        b.set_emergency(Some(&spec(9009, 0, 0, 0, 0)));
        // A short connection from .1 (round robin: server 1) that moved 19 bytes up, 73 down.
        let a = b.admit(peer(1), t0);
        let c = conn(&a);
        b.connected(c);
        let counters = b.conn(c).unwrap().counters.clone();
        counters.add_to_server(19);
        counters.add_to_client(73);
        b.closed(c);
        // A connection from .2 still open on server 0, with bytes waiting for the client.
        let a = b.admit(peer(2), t0 + Duration::from_secs(1));
        let open = conn(&a);
        b.connected(open);
        let counters = b.conn(open).unwrap().counters.clone();
        counters.set_fds(9, 11);
        counters.set_pending(0, 5);
        counters.add_to_client(7);
        // Server 1 fails a connect 2 s before the snapshot: blacklisted for 30 s.
        let fail = conn(&b.admit(peer(3), t0 + Duration::from_secs(2)));
        let _ = b.connect_failed(fail, t0 + Duration::from_secs(2));

        let now = t0 + Duration::from_secs(4);
        let snap = Snapshot::build(&b, now, wall(1_795_334_209));
        assert_eq!(snap.local_time, "2026-11-22 08:56:49");
        assert_eq!(snap.time, 1_795_334_209);
        assert_eq!(snap.servers.len(), 2);
        let s1 = &snap.servers[1];
        assert_eq!(
            (s1.index, s1.port, s1.maxc, s1.hard, s1.weight, s1.prio),
            (1, 9002, 10, 20, 1, 2)
        );
        assert_eq!((s1.sent, s1.received), (19, 73));
        assert_eq!(
            s1.status,
            1_795_334_209 - 2,
            "last failure, in Unix seconds"
        );
        assert!(s1.blacklisted);
        assert_eq!(s1.blacklist_remaining, 28);
        let s0 = &snap.servers[0];
        assert_eq!((s0.conns, s0.status, s0.blacklisted), (2, 0, false));
        assert_eq!((s0.sent, s0.received), (0, 7), "live bytes count");
        let e = snap.emergency.as_ref().unwrap();
        assert_eq!((e.index, e.kind, e.port), (-1, ServerKind::Emergency, 9009));
        assert!(snap.abuse.is_none());
        assert_eq!(
            snap.current,
            Some(0),
            "the failed-over connection went to 0"
        );

        let addrs: Vec<_> = snap.clients.iter().map(|c| c.address.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1", "127.0.0.2", "127.0.0.3"], "by slot");
        let c0 = &snap.clients[0];
        assert_eq!(
            (c0.slot, c0.age, c0.last_server, c0.connects),
            (0, 4, Some(1), 1)
        );
        assert_eq!((c0.sent, c0.received), (73, 19));
        assert_eq!(snap.clients[1].sent, 7, "live bytes count");

        assert_eq!(snap.conns.len(), 2);
        let open = snap.conns.iter().find(|c| c.client == Some(1)).unwrap();
        assert_eq!((open.client_fd, open.server_fd), (9, 11));
        assert_eq!((open.pending_to_client, open.pending_to_server), (5, 0));
        assert_eq!((open.server, open.connected, open.age), (Some(0), true, 3));
        assert_eq!(snap.counters.conns_used, 2);
        assert_eq!(snap.counters.clients_known, 3);
        assert_eq!((snap.counters.sent, snap.counters.received), (19, 80));
        assert_eq!(
            (snap.settings.conn_max, snap.settings.clients_max),
            (500, 2048)
        );
        assert_eq!(snap.settings.tcp_fastclose, "off");
    }

    #[test]
    fn a_fresh_balancer_has_no_current_server_and_blank_slots_show_as_pen_does() {
        let mut b = Balancer::new(Settings::default(), NonZeroUsize::new(8).unwrap());
        b.replace_server(super::super::ServerId(1), Server::default());
        let snap = Snapshot::build(&b, Instant::now(), wall(0));
        assert_eq!(snap.current, None);
        assert_eq!(snap.servers.len(), 2);
        assert_eq!(
            (snap.servers[0].address.as_str(), snap.servers[0].port),
            ("0.0.0.0", 0)
        );
        assert!(snap.clients.is_empty() && snap.conns.is_empty());
    }
}
