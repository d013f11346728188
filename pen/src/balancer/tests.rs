//! Scenario tests: each rule of pen's server selection, with time passed in.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use super::*;
use crate::addr::{Backend, ServerSpec};

const SEC: Duration = Duration::from_secs(1);

fn spec(port: u16) -> ServerSpec {
    ServerSpec {
        backend: Backend::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
        maxc: 0,
        hard: 0,
        weight: 0,
        prio: 0,
    }
}

/// A balancer with servers on ports 9000, 9001, ... (so server i is port 9000+i).
fn balancer(n: u16, settings: Settings) -> Balancer {
    let mut b = Balancer::new(settings, NonZeroUsize::new(2048).unwrap());
    for i in 0..n {
        b.add_server(&spec(9000 + i));
    }
    b
}

fn peer(last: u8) -> Peer {
    Peer {
        ip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))),
        port: 40000,
    }
}

fn port_of(a: &Admission) -> Option<u16> {
    match a {
        Admission::Connect {
            backend: Backend::Tcp(sa),
            ..
        } => Some(sa.port()),
        _ => None,
    }
}

fn conn_of(a: &Admission) -> ConnId {
    match a {
        Admission::Connect { conn, .. } => *conn,
        Admission::Refuse | Admission::ClientLimit => panic!("refused: {a:?}"),
    }
}

/// Admit one connection, connect it and close it at once; return the server index it used.
fn short(b: &mut Balancer, p: Peer, now: Instant) -> Option<u16> {
    let a = b.admit(p, now);
    let port = port_of(&a)?;
    b.connected(conn_of(&a));
    b.closed(conn_of(&a));
    Some(port - 9000)
}

fn rr() -> Settings {
    Settings {
        roundrobin: true,
        ..Settings::default()
    }
}

#[test]
fn round_robin_starts_at_server_1_and_wraps() {
    let now = Instant::now();
    let mut b = balancer(3, rr());
    let got: Vec<_> = (0..7).map(|_| short(&mut b, peer(1), now)).collect();
    assert_eq!(got, [1, 2, 0, 1, 2, 0, 1].map(Some));
}

#[test]
fn round_robin_skips_blacklisted_servers() {
    let now = Instant::now();
    let mut b = balancer(3, rr());
    b.blacklist(Target::Server(ServerId(2)), now, 10 * SEC);
    let got: Vec<_> = (0..4).map(|_| short(&mut b, peer(1), now)).collect();
    assert_eq!(got, [1, 0, 1, 0].map(Some));
}

#[test]
fn tracking_sends_a_client_back_to_its_server_and_r_ignores_it() {
    let now = Instant::now();
    let mut b = balancer(3, Settings::default());
    assert_eq!(short(&mut b, peer(1), now), Some(1));
    assert_eq!(short(&mut b, peer(2), now), Some(2));
    for _ in 0..3 {
        assert_eq!(short(&mut b, peer(1), now), Some(1));
    }
    assert_eq!(
        short(&mut b, peer(3), now),
        Some(0),
        "new clients continue the rotation"
    );
    b.settings.roundrobin = true;
    assert_eq!(short(&mut b, peer(1), now), Some(1));
    assert_eq!(short(&mut b, peer(1), now), Some(2));
}

#[test]
fn tracking_time_expires_the_client() {
    let t0 = Instant::now();
    let settings = Settings {
        tracking: 5 * SEC,
        ..Settings::default()
    };
    let mut b = balancer(3, settings);
    assert_eq!(short(&mut b, peer(1), t0), Some(1));
    assert_eq!(short(&mut b, peer(1), t0 + 4 * SEC), Some(1));
    assert_eq!(
        short(&mut b, peer(1), t0 + 8 * SEC),
        Some(1),
        "seen at +4s, so still within"
    );
    assert_eq!(
        short(&mut b, peer(1), t0 + 14 * SEC),
        Some(2),
        "forgotten: round robin"
    );
}

#[test]
fn failover_scans_from_the_failed_server_and_keeps_the_cursor() {
    let now = Instant::now();
    let mut b = balancer(4, rr());
    let a = b.admit(peer(1), now);
    assert_eq!(port_of(&a), Some(9001));
    let a = b.connect_failed(conn_of(&a), now);
    assert_eq!(port_of(&a), Some(9002), "failed server + 1");
    let a = b.connect_failed(conn_of(&a), now);
    assert_eq!(port_of(&a), Some(9003));
    b.connected(conn_of(&a));
    assert!(b.servers()[1].is_blacklisted(now) && b.servers()[2].is_blacklisted(now));
    // The cursor stayed on 1; 2 is blacklisted, so the next new client gets 3.
    assert_eq!(short(&mut b, peer(2), now), Some(3));
    assert_eq!(short(&mut b, peer(3), now), Some(0));
}

#[test]
fn failover_tries_each_server_once_then_the_emergency_server() {
    let now = Instant::now();
    let mut b = balancer(3, rr());
    b.settings.blacklist_time = Duration::ZERO; // so every server stays eligible
    b.set_emergency(Some(&spec(9999)));
    let mut a = b.admit(peer(1), now);
    let mut tried = vec![];
    while let Some(p) = port_of(&a) {
        tried.push(p);
        a = b.connect_failed(conn_of(&a), now);
    }
    assert_eq!(tried, [9001, 9002, 9000, 9999]);
    assert_eq!(b.live_conns(), 0);
}

#[test]
fn every_server_blacklisted_goes_to_the_emergency_server_or_refuses() {
    let now = Instant::now();
    let mut b = balancer(2, Settings::default());
    for i in 0..2 {
        b.blacklist(Target::Server(ServerId(i)), now, 30 * SEC);
    }
    assert_eq!(b.admit(peer(1), now), Admission::Refuse);
    b.set_emergency(Some(&spec(9999)));
    assert_eq!(port_of(&b.admit(peer(1), now)), Some(9999));
}

#[test]
fn a_single_server_fails_over_straight_to_the_emergency_server() {
    let now = Instant::now();
    let mut b = balancer(1, Settings::default());
    b.set_emergency(Some(&spec(9999)));
    let a = b.admit(peer(1), now);
    assert_eq!(port_of(&a), Some(9000));
    assert_eq!(port_of(&b.connect_failed(conn_of(&a), now)), Some(9999));
}

#[test]
fn emergency_failure_does_not_fail_over_again() {
    let now = Instant::now();
    let mut b = balancer(1, Settings::default());
    b.set_emergency(Some(&spec(9999)));
    let a = b.admit(peer(1), now);
    let a = b.connect_failed(conn_of(&a), now);
    assert_eq!(b.connect_failed(conn_of(&a), now), Admission::Refuse);
}

#[test]
fn stubborn_never_fails_over_nor_uses_the_emergency_server() {
    let now = Instant::now();
    let settings = Settings {
        stubborn: true,
        ..Settings::default()
    };
    let mut b = balancer(3, settings);
    b.set_emergency(Some(&spec(9999)));
    let a = b.admit(peer(1), now);
    assert_eq!(b.connect_failed(conn_of(&a), now), Admission::Refuse);
    // Server 1 is now blacklisted, and it is this client's server: stubborn refuses.
    assert_eq!(b.admit(peer(1), now), Admission::Refuse);
}

#[test]
fn blacklist_expires_after_its_time() {
    let t0 = Instant::now();
    let settings = Settings {
        blacklist_time: 2 * SEC,
        ..rr()
    };
    let mut b = balancer(2, settings);
    let a = b.admit(peer(1), t0);
    assert_eq!(port_of(&a), Some(9001));
    let next = b.connect_failed(conn_of(&a), t0);
    b.closed(conn_of(&next));
    assert_eq!(
        short(&mut b, peer(1), t0 + SEC),
        Some(0),
        "still blacklisted"
    );
    assert_eq!(short(&mut b, peer(1), t0 + 2 * SEC), Some(1), "expired");
    assert_eq!(b.servers()[1].last_failure, Some(t0));
}

#[test]
fn prio_picks_the_lowest_value_and_backs_up_on_blacklist() {
    let now = Instant::now();
    let settings = Settings { prio: true, ..rr() };
    let mut b = balancer(3, settings);
    for (i, p) in [2, 1, 3].into_iter().enumerate() {
        b.server_mut(ServerId(i)).unwrap().prio = p;
    }
    assert_eq!(short(&mut b, peer(1), now), Some(1));
    assert_eq!(short(&mut b, peer(2), now), Some(1));
    b.blacklist(Target::Server(ServerId(1)), now, 30 * SEC);
    assert_eq!(short(&mut b, peer(3), now), Some(0));
}

#[test]
fn weight_is_weighted_least_connections() {
    // pen transcript 22 W2: weights 1 and 3, eight held connections: A B B B A B B B.
    let now = Instant::now();
    let settings = Settings {
        weight: true,
        ..rr()
    };
    let mut b = balancer(2, settings);
    b.server_mut(ServerId(0)).unwrap().weight = 1;
    b.server_mut(ServerId(1)).unwrap().weight = 3;
    let got: Vec<_> = (1..=8)
        .map(|i| {
            let a = b.admit(peer(i), now);
            b.connected(conn_of(&a));
            port_of(&a).unwrap() - 9000
        })
        .collect();
    assert_eq!(got, [0, 1, 1, 1, 0, 1, 1, 1]);
    // Short sequential connections always see zero connections: the lowest index wins.
    let mut b = balancer(2, b.settings.clone());
    b.server_mut(ServerId(0)).unwrap().weight = 1;
    b.server_mut(ServerId(1)).unwrap().weight = 3;
    assert!((1..=4).all(|i| short(&mut b, peer(i), now) == Some(0)));
}

#[test]
fn weight_without_any_weights_is_least_connections_not_refusal() {
    let now = Instant::now();
    let settings = Settings {
        weight: true,
        ..rr()
    };
    let mut b = balancer(2, settings);
    let got: Vec<_> = (1..=4)
        .map(|i| port_of(&b.admit(peer(i), now)).unwrap() - 9000)
        .collect();
    assert_eq!(got, [0, 1, 0, 1]);
}

#[test]
fn hash_places_clients_as_c_pen_does() {
    // pen transcript 22 H1 (addresses) and H2 (-h -r: address XOR source port).
    let now = Instant::now();
    let mut b = balancer(
        3,
        Settings {
            hash: true,
            ..Settings::default()
        },
    );
    for (last, want) in (1..=9).zip([0, 1, 2, 0, 1, 2, 0, 1, 2]) {
        let p = Peer {
            ip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 4, last))),
            port: 1,
        };
        assert_eq!(short(&mut b, p, now), Some(want), "127.0.4.{last}");
    }
    b.settings.roundrobin = true;
    for (port, want) in [
        (47675, 0),
        (38755, 0),
        (49923, 1),
        (39519, 2),
        (54769, 2),
        (32917, 1),
    ] {
        let p = Peer {
            ip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 4, 1))),
            port,
        };
        assert_eq!(short(&mut b, p, now), Some(want), "port {port}");
    }
    let v6 = Peer {
        ip: Some("::1:7".parse().unwrap()),
        port: 1,
    };
    assert_eq!(select::hash(v6, false), 7);
}

#[test]
fn soft_limit_and_hard_limit_for_returning_clients() {
    // pen transcript 22 M1: server 0 unlimited, server 1 maxc 1 hard 2, connections held.
    let now = Instant::now();
    let mut b = balancer(2, Settings::default());
    let s1 = b.server_mut(ServerId(1)).unwrap();
    s1.maxc = 1;
    s1.hard = 2;
    let got: Vec<_> = [1, 1, 1, 2, 3]
        .into_iter()
        .map(|c| port_of(&b.admit(peer(c), now)).unwrap() - 9000)
        .collect();
    assert_eq!(got, [1, 1, 0, 0, 0]);
    assert_eq!(b.servers()[1].conns, 2);
    assert_eq!(b.servers()[0].conns, 3);
}

#[test]
fn soft_limit_without_hard_gives_returning_clients_nothing_extra() {
    let now = Instant::now();
    let mut b = balancer(2, Settings::default());
    b.server_mut(ServerId(1)).unwrap().maxc = 1;
    let got: Vec<_> = [1, 1]
        .into_iter()
        .map(|c| port_of(&b.admit(peer(c), now)).unwrap() - 9000)
        .collect();
    assert_eq!(got, [1, 0]);
}

#[test]
fn counters_fold_into_servers_and_clients_on_close() {
    let now = Instant::now();
    let mut b = balancer(2, rr());
    let a = b.admit(peer(1), now);
    let id = conn_of(&a);
    b.connected(id);
    let c = b.conn(id).unwrap().counters.clone();
    c.add_to_server(10);
    c.add_to_client(300);
    assert_eq!(b.servers()[1].conns, 1);
    b.closed(id);
    let s = &b.servers()[1];
    assert_eq!((s.conns, s.sent, s.received), (0, 10, 300));
    let client = b
        .clients()
        .peek(&ClientKey::Ip(peer(1).ip.unwrap()))
        .unwrap();
    assert_eq!(
        (client.sent, client.received, client.connects),
        (300, 10, 1)
    );
    b.closed(id); // closing twice is harmless
    assert_eq!(b.live_conns(), 0);
}

#[test]
fn connection_slots_are_reused_most_recent_first() {
    let now = Instant::now();
    let mut b = balancer(1, Settings::default());
    let a = conn_of(&b.admit(peer(1), now));
    let c = conn_of(&b.admit(peer(2), now));
    assert_eq!((a, c), (ConnId(0), ConnId(1)));
    b.closed(a);
    assert_eq!(conn_of(&b.admit(peer(3), now)), ConnId(0));
}

#[test]
fn blank_server_slots_are_never_chosen() {
    let now = Instant::now();
    let mut b = balancer(3, rr());
    b.server_mut(ServerId(1)).unwrap().backend = None;
    let got: Vec<_> = (0..3).map(|_| short(&mut b, peer(1), now)).collect();
    assert_eq!(got, [2, 0, 2].map(Some));
}

#[test]
fn no_servers_at_all_refuses() {
    let now = Instant::now();
    let mut b = balancer(0, Settings::default());
    assert_eq!(b.admit(peer(1), now), Admission::Refuse);
    assert_eq!(b.live_conns(), 0);
}

/// Catalogue F19, as C pen 0.34.1 does it (with `-P`; its default epoll build resets the client
/// instead, reference §13.2 B1): the failover server becomes the client's tracked server, so the
/// client is not sent back to the dead server once its blacklist ends, nor when it comes back.
/// New clients reach it again through round robin.
#[test]
fn tracking_follows_failover_and_stays_after_the_server_returns() {
    let t0 = Instant::now();
    let settings = Settings {
        blacklist_time: 2 * SEC,
        ..Settings::default()
    };
    let mut b = balancer(2, settings);
    let tracked = |b: &Balancer, p: Peer| {
        b.clients()
            .peek(&ClientKey::Ip(p.ip.unwrap()))
            .and_then(|c| c.server)
    };
    let a = Target::Server(ServerId(1));
    let other = Target::Server(ServerId(0));
    assert_eq!(
        short(&mut b, peer(7), t0),
        Some(1),
        "round robin's first pick"
    );
    assert_eq!(short(&mut b, peer(6), t0), Some(0));
    assert_eq!(short(&mut b, peer(5), t0), Some(1));
    assert_eq!(tracked(&b, peer(7)), Some(a));

    // Server 1 dies: client 7 goes back to it, is refused, and fails over to server 0.
    let t1 = t0 + SEC;
    let first = b.admit(peer(7), t1);
    assert_eq!(port_of(&first), Some(9001), "tracking sends it to server 1");
    let next = b.connect_failed(conn_of(&first), t1);
    assert_eq!(port_of(&next), Some(9000), "failover to server 0");
    b.connected(conn_of(&next));
    b.closed(conn_of(&next));
    assert_eq!(
        tracked(&b, peer(7)),
        Some(other),
        "the entry follows failover"
    );
    assert_eq!(b.servers()[1].connects, 3);

    // Client 5, also on server 1, comes while it is blacklisted: placed on server 0 without a
    // connect to server 1, and tracked there too.
    assert_eq!(short(&mut b, peer(5), t1), Some(0));
    assert_eq!(tracked(&b, peer(5)), Some(other));
    assert_eq!(short(&mut b, peer(7), t1), Some(0));

    // The blacklist has ended (server 1 may be up or not): the clients stay on server 0, and
    // nothing is sent to server 1 on their behalf.
    let t2 = t1 + 3 * SEC;
    assert!(!b.servers()[1].is_blacklisted(t2));
    for p in [7, 5, 7] {
        assert_eq!(short(&mut b, peer(p), t2), Some(0), "client {p}");
    }
    assert_eq!(b.servers()[1].connects, 3, "server 1 was tried again");
    assert_eq!(tracked(&b, peer(7)), Some(other));

    // New clients: the round-robin cursor is still on 1 (failover did not move it, and tracked
    // clients do not use it), so 0 then 1, which is back in the rotation.
    assert_eq!(short(&mut b, peer(8), t2), Some(0));
    assert_eq!(short(&mut b, peer(9), t2), Some(1));
    assert_eq!(short(&mut b, peer(7), t2), Some(0));
}

#[test]
fn client_conn_max_caps_open_connections_per_client_address() {
    let now = Instant::now();
    let mut b = balancer(
        2,
        Settings {
            client_conn_max: 2,
            ..rr()
        },
    );
    let first = b.admit(peer(1), now);
    let second = b.admit(
        Peer {
            port: 40001,
            ..peer(1)
        },
        now,
    );
    assert!(port_of(&first).is_some() && port_of(&second).is_some());
    // The third from the same address is turned away, whatever its port; the balancer keeps
    // nothing of it and no server counts it.
    assert_eq!(b.admit(peer(1), now), Admission::ClientLimit);
    assert_eq!(b.live_conns, 2);
    // Another address is not held back, nor a Unix-socket client.
    assert!(port_of(&b.admit(peer(2), now)).is_some());
    let unix = Peer { ip: None, port: 0 };
    assert!(port_of(&b.admit(unix, now)).is_some());
    assert!(port_of(&b.admit(unix, now)).is_some());
    assert!(port_of(&b.admit(unix, now)).is_some());
    // One closes: room for one more, and only one.
    b.connected(conn_of(&first));
    b.closed(conn_of(&first));
    let third = b.admit(peer(1), now);
    assert!(port_of(&third).is_some());
    assert_eq!(b.admit(peer(1), now), Admission::ClientLimit);
    assert_eq!(b.client_limited(), 2);
    // A connection refused after failing over everywhere gives its place back too.
    let _ = b.connect_failed(conn_of(&second), now);
    let refused = b.connect_failed(conn_of(&second), now);
    assert_eq!(refused, Admission::Refuse, "both servers blacklisted");
    assert_eq!(b.open_by(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))), 1);
    // 0 lifts the limit.
    b.settings.client_conn_max = 0;
    b.settings.blacklist_time = Duration::ZERO;
    for _ in 0..5 {
        assert_ne!(b.admit(peer(1), now), Admission::ClientLimit);
    }
}
