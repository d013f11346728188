//! The decisions of direct server return, without I/O: for each frame, what to send (an ARP
//! reply, the frame readdressed to a server, a tarpit SYN+ACK, or nothing), which servers'
//! MAC addresses are known, and when to ask for them. Time is passed in.
//!
//! Server choice is weighted rendezvous hashing over the servers that are usable now
//! (configured with an IPv4 address, not blacklisted, MAC known): each flow key scores every
//! server and the best wins. The same key always lands on the same server while the set is
//! unchanged, and when a server leaves or joins only the flows that belong to it move; no
//! table needs rebuilding, so blacklisting and server changes take effect with the next frame.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::frame::{self, Frame, Mac, BROADCAST, PROTO_TCP, PROTO_UDP};

/// How often servers whose MAC is unknown are asked for it.
const ARP_UNKNOWN_EVERY: Duration = Duration::from_secs(1);
/// How often known servers are asked again, to notice a changed or vanished one.
const ARP_REFRESH_EVERY: Duration = Duration::from_secs(30);
/// A MAC not confirmed for this long is forgotten, and its server is no longer chosen.
const MAC_LIFETIME: Duration = Duration::from_secs(95);

/// A server as DSR sees it, from the balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    /// Not blacklisted.
    pub available: bool,
}

/// What the engine has done, for statistics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub forwarded: u64,
    /// Frames for the virtual address with no usable server.
    pub dropped: u64,
    pub arp_replies: u64,
    pub tarpitted: u64,
    /// IPv4 frames from the virtual address that reached pen: replies that did not bypass it.
    pub from_vip: u64,
}

#[derive(Debug, Clone, Copy)]
struct Learned {
    mac: Mac,
    seen: Instant,
}

pub struct Engine {
    our_mac: Mac,
    vip: Ipv4Addr,
    /// None: every port.
    port: Option<u16>,
    udp: bool,
    /// Hash on the client's port too (pen's `roundrobin` under DSR): each connection is placed
    /// on its own rather than each client.
    per_connection: bool,
    servers: Vec<ServerView>,
    macs: HashMap<Ipv4Addr, Learned>,
    last_unknown_arp: Option<Instant>,
    last_refresh_arp: Option<Instant>,
    pub counts: Counts,
}

impl Engine {
    pub fn new(our_mac: Mac, vip: Ipv4Addr, port: Option<u16>, udp: bool) -> Engine {
        Engine {
            our_mac,
            vip,
            port,
            udp,
            per_connection: false,
            servers: Vec::new(),
            macs: HashMap::new(),
            last_unknown_arp: None,
            last_refresh_arp: None,
            counts: Counts::default(),
        }
    }

    /// The servers and the per-connection setting as the balancer has them now.
    pub fn set_servers(&mut self, servers: Vec<ServerView>, per_connection: bool) {
        self.servers = servers;
        self.per_connection = per_connection;
    }

    /// Servers whose MAC is known.
    pub fn known_servers(&self) -> usize {
        self.servers
            .iter()
            .filter(|s| self.macs.contains_key(&s.ip))
            .count()
    }

    /// Handle one received frame; what to send goes into `out`.
    pub fn on_frame(
        &mut self,
        data: &[u8],
        now: Instant,
        tarpit: &dyn Fn(Ipv4Addr) -> bool,
        out: &mut Vec<Vec<u8>>,
    ) {
        let Some((dst_mac, src_mac)) = frame::macs(data) else {
            return;
        };
        // Our own frames (and the host's outgoing ones) come back on a packet socket.
        if src_mac == self.our_mac || (dst_mac != self.our_mac && dst_mac != BROADCAST) {
            return;
        }
        match frame::parse(data) {
            Frame::Arp(arp) => {
                if self.servers.iter().any(|s| s.ip == arp.sender_ip) {
                    self.macs.insert(
                        arp.sender_ip,
                        Learned {
                            mac: arp.sender_mac,
                            seen: now,
                        },
                    );
                }
                let ours = arp.target_ip == self.vip || tarpit(arp.target_ip);
                if arp.op == 1 && ours && arp.sender_ip != arp.target_ip {
                    out.push(frame::arp_reply(self.our_mac, &arp));
                    self.counts.arp_replies += 1;
                }
            }
            Frame::Ipv4(p) => {
                if p.src == self.vip {
                    self.counts.from_vip += 1;
                }
                if p.dst == self.vip {
                    let wanted = p.protocol == PROTO_TCP || (self.udp && p.protocol == PROTO_UDP);
                    let port_ok = match (self.port, p.ports) {
                        (None, _) => true,
                        (Some(want), Some((_, dport))) => dport == want,
                        // A later fragment has no ports; it follows its client.
                        (Some(_), None) => true,
                    };
                    if !(wanted && port_ok) {
                        return;
                    }
                    let key = flow_key(p.src, p.ports.map(|(sport, _)| sport), self.per_connection);
                    match self.choose(key) {
                        Some(mac) => {
                            out.push(frame::readdress(data, mac, self.our_mac));
                            self.counts.forwarded += 1;
                        }
                        None => self.counts.dropped += 1,
                    }
                } else if frame::is_syn(&p) && tarpit(p.dst) {
                    if let Some(reply) = frame::tarpit_syn_ack(self.our_mac, &p) {
                        out.push(reply);
                        self.counts.tarpitted += 1;
                    }
                }
            }
            Frame::Other => {}
        }
    }

    /// The MAC of the server for this flow key, among the usable servers.
    fn choose(&self, key: u64) -> Option<Mac> {
        self.servers
            .iter()
            .filter(|s| s.available)
            .filter_map(|s| Some((s, self.macs.get(&s.ip)?.mac)))
            .map(|(s, mac)| (score(key, s), mac))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, mac)| mac)
    }

    /// Which server (index into the views) a flow key goes to.
    #[cfg(test)]
    fn server_for(&self, client: Ipv4Addr, port: Option<u16>) -> Option<usize> {
        let mac = self.choose(flow_key(client, port, self.per_connection))?;
        self.servers
            .iter()
            .position(|s| self.macs.get(&s.ip).map(|l| l.mac) == Some(mac))
    }

    /// ARP requests due now: servers with no MAC every second, all of them every 30 seconds;
    /// MACs not confirmed for 95 seconds are forgotten first.
    pub fn arp_due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.macs
            .retain(|_, l| now.saturating_duration_since(l.seen) < MAC_LIFETIME);
        let due = |last: Option<Instant>, every| {
            last.is_none_or(|t| now.saturating_duration_since(t) >= every)
        };
        let refresh = due(self.last_refresh_arp, ARP_REFRESH_EVERY);
        let unknown = due(self.last_unknown_arp, ARP_UNKNOWN_EVERY);
        let mut out = Vec::new();
        let mut asked = Vec::new();
        for s in &self.servers {
            let wanted = refresh || (unknown && !self.macs.contains_key(&s.ip));
            if wanted && !asked.contains(&s.ip) {
                asked.push(s.ip);
                out.push(frame::arp_request(
                    self.our_mac,
                    Ipv4Addr::UNSPECIFIED,
                    s.ip,
                ));
            }
        }
        if refresh {
            self.last_refresh_arp = Some(now);
        }
        if unknown {
            self.last_unknown_arp = Some(now);
        }
        out
    }
}

/// The client address, and its port when placing each connection on its own.
fn flow_key(client: Ipv4Addr, port: Option<u16>, per_connection: bool) -> u64 {
    let ip = u64::from(u32::from(client));
    match (per_connection, port) {
        (true, Some(p)) => ip | (u64::from(p) << 32),
        _ => ip,
    }
}

/// SplitMix64: a fast, well-mixed 64-bit hash step.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Weighted rendezvous score of `server` for `key`: weight / -ln(u), u uniform in (0, 1)
/// from the hash of the key and the server's address (so it does not depend on the slot).
/// Weight 0 counts as 1, as in pen.
fn score(key: u64, server: &ServerView) -> f64 {
    let id = u64::from(u32::from(server.ip)) << 16 | u64::from(server.port);
    let h = mix(key ^ mix(id));
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(server.weight.max(1)) / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Mac = [2, 0, 0, 0, 0, 1];
    const CLIENT: Mac = [2, 0, 0, 0, 0, 2];
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    fn server(n: u8, weight: u32) -> ServerView {
        ServerView {
            ip: Ipv4Addr::new(10, 0, 0, 10 + n),
            port: 80,
            weight,
            available: true,
        }
    }

    fn server_mac(n: u8) -> Mac {
        [2, 0, 0, 0, 1, n]
    }

    /// An engine that knows the MACs of `servers`.
    fn engine(servers: Vec<ServerView>) -> Engine {
        let mut e = Engine::new(US, VIP, Some(80), false);
        e.set_servers(servers.clone(), false);
        let now = Instant::now();
        for (i, s) in servers.iter().enumerate() {
            let reply = {
                let mut f = frame::arp_request(server_mac(i as u8), s.ip, Ipv4Addr::UNSPECIFIED);
                f[0..6].copy_from_slice(&US);
                f[21] = 2; // op: reply
                f
            };
            e.on_frame(&reply, now, &|_| false, &mut Vec::new());
        }
        assert_eq!(e.known_servers(), servers.len());
        e
    }

    fn shares(e: &Engine, n: usize) -> Vec<usize> {
        let mut count = vec![0; n];
        for i in 0..20_000u32 {
            let client = Ipv4Addr::from(0x0a01_0000 + i);
            count[e.server_for(client, None).expect("a server")] += 1;
        }
        count
    }

    #[test]
    fn weights_set_the_shares() {
        let e = engine(vec![server(0, 1), server(1, 3), server(2, 0)]);
        let c = shares(&e, 3);
        // 1 : 3 : 1 (weight 0 counts as 1), within 2 percentage points.
        for (got, want) in c.iter().zip([0.2, 0.6, 0.2]) {
            let share = *got as f64 / 20_000.0;
            assert!((share - want).abs() < 0.02, "{c:?}");
        }
    }

    #[test]
    fn blacklisting_or_removing_a_server_moves_only_its_clients() {
        let mut e = engine(vec![server(0, 1), server(1, 1), server(2, 1)]);
        let clients: Vec<Ipv4Addr> = (0..3000u32)
            .map(|i| Ipv4Addr::from(0x0a01_0000 + i))
            .collect();
        let before: Vec<_> = clients.iter().map(|c| e.server_for(*c, None)).collect();
        let mut views = vec![server(0, 1), server(1, 1), server(2, 1)];
        views[1].available = false;
        e.set_servers(views, false);
        for (c, was) in clients.iter().zip(&before) {
            let now = e.server_for(*c, None);
            assert_ne!(now, Some(1), "a blacklisted server was chosen");
            if *was != Some(1) {
                assert_eq!(now, *was, "{c} moved although its server is fine");
            }
        }
        // Back again: everyone returns to where they were.
        e.set_servers(vec![server(0, 1), server(1, 1), server(2, 1)], false);
        let after: Vec<_> = clients.iter().map(|c| e.server_for(*c, None)).collect();
        assert_eq!(after, before);
    }

    #[test]
    fn frames_for_the_vip_go_to_the_chosen_server_and_arp_is_answered() {
        let mut e = engine(vec![server(0, 1), server(1, 1)]);
        let now = Instant::now();
        let mut out = Vec::new();
        let who_has = frame::arp_request(CLIENT, Ipv4Addr::new(10, 0, 0, 2), VIP);
        e.on_frame(&who_has, now, &|_| false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(frame::macs(&out[0]), Some((CLIENT, US)));
        out.clear();
        // A SYN to the VIP on the balanced port: readdressed, IP packet untouched.
        let syn = syn(Ipv4Addr::new(10, 0, 0, 2), VIP, 80);
        e.on_frame(&syn, now, &|_| false, &mut out);
        assert_eq!(out.len(), 1);
        let chosen = e.server_for(Ipv4Addr::new(10, 0, 0, 2), None).unwrap();
        assert_eq!(frame::macs(&out[0]), Some((server_mac(chosen as u8), US)));
        assert_eq!(out[0][12..], syn[12..]);
        out.clear();
        // Another port, another address, our own frames: nothing.
        e.on_frame(
            &self::syn(Ipv4Addr::new(10, 0, 0, 2), VIP, 81),
            now,
            &|_| false,
            &mut out,
        );
        e.on_frame(
            &self::syn(Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 7), 80),
            now,
            &|_| false,
            &mut out,
        );
        let mut echo = syn.clone();
        echo[6..12].copy_from_slice(&US);
        e.on_frame(&echo, now, &|_| false, &mut out);
        assert!(out.is_empty());
        assert_eq!(e.counts.forwarded, 1);
    }

    #[test]
    fn the_tarpit_answers_arp_and_syns_for_its_addresses() {
        let mut e = engine(vec![server(0, 1)]);
        let now = Instant::now();
        let trap = Ipv4Addr::new(10, 0, 0, 66);
        let tarpit = |ip: Ipv4Addr| ip == trap;
        let mut out = Vec::new();
        e.on_frame(
            &frame::arp_request(CLIENT, Ipv4Addr::new(10, 0, 0, 2), trap),
            now,
            &tarpit,
            &mut out,
        );
        e.on_frame(
            &syn(Ipv4Addr::new(10, 0, 0, 2), trap, 22),
            now,
            &tarpit,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(e.counts.tarpitted, 1);
        assert!(
            matches!(frame::parse(&out[1]), Frame::Ipv4(p) if p.src == trap && p.tcp.map(|t| t.0) == Some(0x12))
        );
    }

    #[test]
    fn arp_requests_for_unknown_servers_then_refreshes_then_forgetting() {
        let mut e = Engine::new(US, VIP, None, false);
        e.set_servers(vec![server(0, 1), server(1, 1)], false);
        let t0 = Instant::now();
        assert_eq!(e.arp_due(t0).len(), 2, "both unknown at first");
        assert_eq!(e.arp_due(t0 + Duration::from_millis(500)).len(), 0);
        assert_eq!(e.arp_due(t0 + Duration::from_secs(1)).len(), 2);
        let mut reply = frame::arp_request(server_mac(0), server(0, 1).ip, Ipv4Addr::UNSPECIFIED);
        reply[0..6].copy_from_slice(&US);
        reply[21] = 2;
        e.on_frame(
            &reply,
            t0 + Duration::from_secs(1),
            &|_| false,
            &mut Vec::new(),
        );
        assert_eq!(
            e.arp_due(t0 + Duration::from_secs(2)).len(),
            1,
            "only the unknown one"
        );
        assert_eq!(
            e.arp_due(t0 + Duration::from_secs(30)).len(),
            2,
            "the refresh asks all"
        );
        assert_eq!(e.known_servers(), 1);
        e.arp_due(t0 + Duration::from_secs(100));
        assert_eq!(e.known_servers(), 0, "a silent server is forgotten");
    }

    fn syn(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&US);
        f.extend_from_slice(&CLIENT);
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }
}
