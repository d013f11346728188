//! UDP balancing (`-U`) on real loopback sockets: sessions, reply addresses, selection, idle
//! expiry, the session-table limit, failover on ICMP port unreachable, IPv6, edge datagram
//! sizes, a flood of source ports, and the counters.

mod support;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use support::udp::{
    dead_udp_port, udp_ask, udp_client, udp_client_from, udp_reply, Answer, UdpBackend, UdpListen,
};
use support::{fd_count, ipv6_available, socket_inodes, wait_until, Pen};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The counters pen logs when it stops (needs `-d`).
fn final_counts(pen: Pen) -> String {
    pen.signal("TERM");
    let mut pen = pen;
    assert!(pen
        .wait_exit(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
    let stderr = pen.stderr_text();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
        .lines()
        .rfind(|l| l.contains("udp:") && l.contains("datagrams:"))
        .unwrap_or_else(|| panic!("no counters in:\n{stderr}"))
        .to_string()
}

#[test]
fn each_client_gets_its_own_replies_from_the_address_it_sent_to() {
    // D8: three clients, a backend answering twice; sessions pinned to one backend each.
    let a = UdpBackend::new("A", Answer::Times(2));
    let b = UdpBackend::new("B", Answer::Times(2));
    let pen = Pen::start_udp(&[], &[a.spec(), b.spec()]);
    let clients: Vec<_> = (1..=3).map(|i| udp_client_from(70 + i)).collect();
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            let msg = format!("c{i}r{round}");
            let (first, from) = udp_ask(c, pen.udp(), msg.as_bytes()).unwrap();
            let (second, from2) = udp_reply(c).unwrap();
            assert_eq!(
                (from, from2),
                (pen.udp(), pen.udp()),
                "replies come from pen's address"
            );
            assert_eq!(first, second);
            assert!(text(&first).ends_with(&msg), "{} got {}", msg, text(&first));
        }
    }
    // One session per client: each backend heard each of its clients from one socket only.
    let sessions = a.sources().len() + b.sources().len();
    assert_eq!(sessions, 3, "a: {:?} b: {:?}", a.sources(), b.sources());
    pen.finish();
}

#[test]
fn a_wildcard_listener_replies_from_the_address_the_client_targeted() {
    let a = UdpBackend::new("A", Answer::Echo);
    let pen = Pen::start_udp_with(UdpListen::AnyV4, &[], &[], &[a.spec()]);
    let port = pen.udp().port();
    for target in [3u8, 9, 1] {
        let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, target)), port);
        let c = udp_client_from(20 + target);
        let (reply, from) = udp_ask(&c, to, b"hi").unwrap();
        assert_eq!((text(&reply).as_str(), from), ("A:hi", to));
    }
    pen.finish();
    assert!(ipv6_available(), "::1 is needed for the dual-stack case");
    let pen = Pen::start_udp_with(UdpListen::AnyV6, &[], &[], &[a.spec()]);
    let port = pen.udp().port();
    for to in [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)), port),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
    ] {
        let c = udp_client(if to.is_ipv4() {
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        });
        let (reply, from) = udp_ask(&c, to, b"dual").unwrap();
        assert_eq!((text(&reply).as_str(), from), ("A:dual", to));
    }
    pen.finish();
}

#[test]
fn servers_are_chosen_as_for_tcp() {
    let a = UdpBackend::new("A", Answer::Echo);
    let b = UdpBackend::new("B", Answer::Echo);
    let servers = [a.spec(), b.spec()];
    // Tracking: new source ports of one client IP go to the same server.
    let pen = Pen::start_udp(&[], &servers);
    let names: HashSet<String> = (0..4)
        .map(|_| text(&udp_ask(&udp_client_from(31), pen.udp(), b"t").unwrap().0))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    pen.finish();
    // -r: every new session is placed round robin, starting at server 1 as pen does.
    let pen = Pen::start_udp(&["-r"], &servers);
    let names: Vec<String> = (0..4)
        .map(|_| text(&udp_ask(&udp_client_from(32), pen.udp(), b"r").unwrap().0))
        .collect();
    assert_eq!(names, ["B:r", "A:r", "B:r", "A:r"]);
    pen.finish();
    // Weight: with a weight of 0 against 1, and sessions held open, all go to the weighted one.
    let pen = Pen::start_udp(&["-W", "-r"], &[a.spec() + ":0:0:0", b.spec() + ":0:0:1"]);
    let clients: Vec<_> = (0..3).map(|_| udp_client_from(33)).collect();
    for c in &clients {
        assert_eq!(text(&udp_ask(c, pen.udp(), b"w").unwrap().0), "B:w");
    }
    pen.finish();
}

#[test]
fn zero_length_and_largest_datagrams_are_relayed_both_ways() {
    let m = UdpBackend::new("M", Answer::Mirror);
    let pen = Pen::start_udp(&[], &[m.spec()]);
    let c = udp_client_from(40);
    for len in [0usize, 1, 1472, 9000, 65_507] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 31 + i / 7) as u8).collect();
        let (reply, from) = udp_ask(&c, pen.udp(), &payload).unwrap();
        assert_eq!(from, pen.udp());
        assert!(reply == payload, "{len} bytes: got {} back", reply.len());
    }
    pen.finish();
    assert!(ipv6_available(), "::1 is needed for the IPv6 case");
    let m6 = UdpBackend::on(IpAddr::V6(Ipv6Addr::LOCALHOST), "M", Answer::Mirror);
    let pen = Pen::start_udp_with(UdpListen::V6, &[], &[], &[m6.spec()]);
    let c = udp_client(IpAddr::V6(Ipv6Addr::LOCALHOST));
    for len in [0usize, 65_527] {
        let payload = vec![7u8; len];
        let (reply, _) = udp_ask(&c, pen.udp(), &payload).unwrap();
        assert_eq!(reply.len(), len);
    }
    pen.finish();
}

#[test]
fn ipv6_listeners_and_servers_in_every_combination() {
    assert!(ipv6_available(), "::1 is needed for the IPv6 tests");
    let a4 = UdpBackend::new("A4", Answer::Echo);
    let a6 = UdpBackend::on(IpAddr::V6(Ipv6Addr::LOCALHOST), "A6", Answer::Echo);
    for (listen, server, name) in [
        (UdpListen::V6, &a6, "A6"),
        (UdpListen::V6, &a4, "A4"),
        (UdpListen::V4, &a6, "A6"),
    ] {
        let pen = Pen::start_udp_with(listen, &[], &[], &[server.spec()]);
        let c = udp_client(if pen.udp().is_ipv6() {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        });
        let (reply, from) = udp_ask(&c, pen.udp(), b"six").unwrap();
        assert_eq!((text(&reply), from), (format!("{name}:six"), pen.udp()));
        pen.finish();
    }
}

#[test]
fn idle_sessions_expire_and_their_late_replies_are_dropped() {
    // D9: idle timeout 1 s; the backend answers the first datagram after 2 s.
    let slow = UdpBackend::new("S", Answer::After(Duration::from_millis(2000)));
    let pen = Pen::start_udp(&["-d", "-d", "-o", "idle_timeout 1"], &[slow.spec()]);
    // A first session, once expired, shows the descriptors pen holds with none.
    let warm = udp_client_from(51);
    warm.send_to(b"warm", pen.udp()).unwrap();
    let expired = |n: usize| pen.stderr_text().matches("ended (Idle)").count() == n;
    wait_until(
        "the first session to expire",
        Duration::from_secs(5),
        || expired(1).then_some(()),
    );
    // Its socket is kept for the next session, disconnected from the server.
    let baseline = fd_count(pen.pid());
    let c = udp_client_from(50);
    c.send_to(b"late", pen.udp()).unwrap();
    let before = wait_until("the backend to get 'late'", Duration::from_secs(3), || {
        slow.source_of(b"late")
    });
    assert_ne!(
        Some(before),
        slow.source_of(b"warm"),
        "the kept socket got a new port"
    );
    assert_eq!(fd_count(pen.pid()), baseline, "the kept socket was used");
    wait_until("the session to expire", Duration::from_secs(5), || {
        expired(2).then_some(())
    });
    // The reply comes at 2 s, to a port no socket has any more: the client never sees it.
    assert!(udp_reply(&c).is_err(), "a late reply reached the client");
    assert_eq!(slow.received.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(fd_count(pen.pid()), baseline, "one socket, kept");
    // The next datagram opens a new session, from a new port.
    c.send_to(b"again", pen.udp()).unwrap();
    let again = wait_until("the backend to get 'again'", Duration::from_secs(3), || {
        slow.source_of(b"again")
    });
    assert_ne!(again, before);
    let counts = final_counts(pen);
    assert!(
        counts.contains("3 sessions") && counts.contains("2 expired"),
        "{counts}"
    );
}

#[test]
fn a_full_table_recycles_the_least_recently_used_session() {
    let a = UdpBackend::new("A", Answer::Echo);
    let pen = Pen::start_udp(&["-d", "-x", "2"], &[a.spec()]);
    let (ca, cb, cc) = (
        udp_client_from(61),
        udp_client_from(62),
        udp_client_from(63),
    );
    for (c, m) in [(&ca, "a1"), (&cb, "b1"), (&cc, "c1")] {
        assert_eq!(
            text(&udp_ask(c, pen.udp(), m.as_bytes()).unwrap().0),
            format!("A:{m}")
        );
    }
    // c1 recycled a (least recently used); a2 recycles b; c stays.
    assert_eq!(text(&udp_ask(&ca, pen.udp(), b"a2").unwrap().0), "A:a2");
    assert_eq!(text(&udp_ask(&cc, pen.udp(), b"c2").unwrap().0), "A:c2");
    assert_ne!(
        a.source_of(b"a1"),
        a.source_of(b"a2"),
        "a got a new session"
    );
    assert_eq!(a.source_of(b"c1"), a.source_of(b"c2"), "c kept its session");
    let counts = final_counts(pen);
    assert!(
        counts.contains("4 sessions") && counts.contains("2 recycled"),
        "{counts}"
    );
}

/// An ended session's socket serves the next session, and that is as safe as closing it: the
/// old session's late reply goes to a port the socket no longer has, so it never reaches the
/// new client.
#[test]
fn a_recycled_sessions_socket_serves_the_next_session_without_its_late_replies() {
    let slow = UdpBackend::new("S", Answer::After(Duration::from_millis(600)));
    let pen = Pen::start_udp(&["-d", "-x", "1"], &[slow.spec()]);
    let (a, b) = (udp_client_from(71), udp_client_from(72));
    a.send_to(b"a", pen.udp()).unwrap();
    let from_a = wait_until("the backend to get 'a'", Duration::from_secs(3), || {
        slow.source_of(b"a")
    });
    let sockets: HashSet<u64> = socket_inodes(pen.pid()).into_iter().collect();
    // The table holds one session: b's recycles a's, and takes its socket.
    b.send_to(b"b", pen.udp()).unwrap();
    let from_b = wait_until("the backend to get 'b'", Duration::from_secs(3), || {
        slow.source_of(b"b")
    });
    assert_ne!(from_a, from_b, "the kept socket connected from a new port");
    let now: HashSet<u64> = socket_inodes(pen.pid()).into_iter().collect();
    assert_eq!(now, sockets, "b's session reused a's socket");
    // Both replies come 0.6 s after their queries: b gets its own, and never a's.
    let (reply, from) = udp_reply(&b).expect("b's reply");
    assert_eq!((text(&reply), from), ("S:b".to_string(), pen.udp()));
    assert!(udp_reply(&b).is_err(), "a's reply reached b");
    assert!(udp_reply(&a).is_err(), "a's session was recycled");
    let counts = final_counts(pen);
    assert!(
        counts.contains("2 sessions") && counts.contains("1 recycled"),
        "{counts}"
    );
}

#[test]
fn icmp_port_unreachable_blacklists_the_server_and_moves_its_sessions() {
    // Round robin starts at server 1, the dead one: the first datagram is refused there,
    // sent again to server 0, and answered.
    let a = UdpBackend::new("A", Answer::Echo);
    let dead = dead_udp_port();
    let pen = Pen::start_udp(&["-d", "-r"], &[a.spec(), dead.to_string()]);
    let c = udp_client_from(80);
    assert_eq!(
        text(&udp_ask(&c, pen.udp(), b"first").unwrap().0),
        "A:first"
    );
    assert!(
        pen.stderr_text().contains("refused a datagram"),
        "{}",
        pen.stderr_text()
    );
    // Blacklisted: new sessions skip it.
    for i in 0..4 {
        let m = format!("n{i}");
        let c = udp_client_from(81);
        assert_eq!(
            text(&udp_ask(&c, pen.udp(), m.as_bytes()).unwrap().0),
            format!("A:{m}")
        );
    }
    pen.finish();

    // Two sessions on a server that dies: the first to hear the ICMP error moves, and so does
    // the other one on its next datagram. No datagram is lost.
    let a = UdpBackend::new("A", Answer::Echo);
    let b = UdpBackend::new("B", Answer::Echo);
    let pen = Pen::start_udp(&["-d", "-r"], &[a.spec(), b.spec()]);
    let clients: Vec<_> = (0..4).map(|_| udp_client_from(82)).collect();
    let first: Vec<String> = clients
        .iter()
        .map(|c| text(&udp_ask(c, pen.udp(), b"x").unwrap().0))
        .collect();
    assert_eq!(first, ["B:x", "A:x", "B:x", "A:x"]);
    b.kill();
    for (i, c) in clients.iter().enumerate() {
        let m = format!("after{i}");
        let (reply, _) = udp_ask(c, pen.udp(), m.as_bytes())
            .unwrap_or_else(|e| panic!("client {i}: {e}; stderr:\n{}", pen.stderr_text()));
        assert_eq!(text(&reply), format!("A:{m}"));
    }
    let counts = final_counts(pen);
    assert!(counts.contains("1 failed over"), "{counts}");
}

#[test]
fn every_datagram_is_counted_both_ways() {
    // pen 0.34.1 did not count the first datagram of a session, nor any reply.
    let a = UdpBackend::new("A", Answer::Times(2));
    let pen = Pen::start_udp(&["-d"], &[a.spec()]);
    for n in 0..3u8 {
        let c = udp_client_from(90 + n);
        for _ in 0..2 {
            udp_ask(&c, pen.udp(), b"count").unwrap();
            udp_reply(&c).unwrap();
        }
    }
    let counts = final_counts(pen);
    assert!(
        counts.contains("3 sessions")
            && counts.contains(
                "6 from clients, 6 to servers, 12 from servers, 12 to clients, 0 dropped"
            ),
        "{counts}"
    );
}

#[test]
fn replies_that_arrive_together_each_reach_their_own_client_and_are_counted() {
    // pen sends the replies it finds waiting in one turn together (sendmmsg, 16 at a time):
    // 50 sessions' replies arrive at once, of 50 different sizes, and each must reach the
    // client that asked, whole, and be counted once.
    const CLIENTS: usize = 50;
    let a = UdpBackend::new("A", Answer::Burst(CLIENTS));
    let pen = Pen::start_udp(&["-d"], &[a.spec()]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| udp_client_from(100 + (i % 5) as u8))
        .collect();
    let payload = |i: usize| -> Vec<u8> {
        let mut p = format!("client{i}:").into_bytes();
        p.extend((0..i * 11).map(|k| (k * 7 + i) as u8));
        p
    };
    for (i, c) in clients.iter().enumerate() {
        c.send_to(&payload(i), pen.udp()).unwrap();
    }
    for (i, c) in clients.iter().enumerate() {
        let (got, from) = udp_reply(c).unwrap_or_else(|e| {
            panic!(
                "client {i}: {e}; the backend had {} datagrams",
                a.received.load(std::sync::atomic::Ordering::SeqCst)
            )
        });
        assert_eq!(from, pen.udp());
        assert!(
            got == [&b"A:"[..], &payload(i)].concat(),
            "client {i} got {} bytes: {:?}",
            got.len(),
            text(&got[..got.len().min(20)])
        );
    }
    let counts = final_counts(pen);
    let want = format!(
        "{CLIENTS} from clients, {CLIENTS} to servers, {CLIENTS} from servers, {CLIENTS} to clients, 0 dropped"
    );
    assert!(counts.contains(&want), "{counts}");
}

#[test]
fn a_flood_of_source_ports_cannot_exhaust_descriptors() {
    // D10: far more source ports than pen has descriptors for.
    assert!(
        Command::new("prlimit").arg("--version").output().is_ok(),
        "prlimit (util-linux) is needed: .ci/run installs it"
    );
    let a = UdpBackend::new("A", Answer::Echo);
    let mut pen = Pen::start_udp_with(
        UdpListen::V4,
        &["prlimit", "--nofile=200:200", "--"],
        &["-d", "-x", "5000"],
        &[a.spec()],
    );
    // The baseline once pen has served a first query: by then every descriptor start-up opens
    // (the UDP thread's epoll and eventfd, the control plane's) exists; less that session's own.
    let first = udp_client_from(99);
    udp_ask(&first, pen.udp(), b"first").expect("the first query");
    let baseline = fd_count(pen.pid()) - 1;
    // Sessions: 136, the limit less the 64 descriptors pen keeps aside.
    let most = baseline + 136;
    // One query at a time, each from a new port: every one is answered.
    for i in 0..1500u32 {
        let c = udp_client_from(100 + (i % 50) as u8);
        let m = format!("q{i}");
        let (reply, _) = udp_ask(&c, pen.udp(), m.as_bytes())
            .unwrap_or_else(|e| panic!("query {i}: {e}; stderr:\n{}", pen.stderr_text()));
        assert_eq!(text(&reply), format!("A:{m}"));
        if i % 100 == 0 {
            assert!(
                fd_count(pen.pid()) <= most,
                "{} descriptors",
                fd_count(pen.pid())
            );
        }
    }
    // A burst: 800 sockets send at once; pen stays within its descriptors and keeps serving.
    let burst: Vec<_> = (0..800u32)
        .map(|i| udp_client_from(150 + (i % 50) as u8))
        .collect();
    for c in &burst {
        let _ = c.send_to(b"burst", pen.udp());
    }
    // The table holds 136 sessions, so the burst's first senders are recycled, perhaps before
    // their replies come back; the last ones keep theirs. Look at every sender, for 5 s at most.
    for c in &burst {
        c.set_nonblocking(true).unwrap();
    }
    wait_until(
        "a reply to any sender of the burst",
        Duration::from_secs(5),
        || burst.iter().any(|c| udp_reply(c).is_ok()).then_some(()),
    );
    assert!(
        fd_count(pen.pid()) <= most,
        "{} descriptors",
        fd_count(pen.pid())
    );
    drop(burst);
    pen.assert_alive();
    let c = udp_client_from(99);
    assert_eq!(
        text(&udp_ask(&c, pen.udp(), b"after").unwrap().0),
        "A:after"
    );
    let stderr = pen.stderr_text();
    assert!(
        stderr.contains("136 sessions at most: the descriptor limit is 200"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("can't open a socket"),
        "ran out of descriptors:\n{stderr}"
    );
    let counts = final_counts(pen);
    assert!(counts.contains(" recycled"), "{counts}");
}

/// A UDP pen has the same control plane: its sessions show in `servers` and `snapshot`, the
/// selection can change at run time, and `listen` is refused rather than half-done.
#[test]
fn the_control_port_works_with_udp() {
    let (a, b) = (
        UdpBackend::new("A", Answer::Echo),
        UdpBackend::new("B", Answer::Echo),
    );
    let port = support::free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let control: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut opts = vec!["-C".to_string(), control.to_string()];
    opts.extend(support::control::user_args());
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let pen = Pen::start_udp(&opts, &[a.spec(), b.spec()]);
    let ctl = |cmd: &str| {
        support::wait_until("the control port", Duration::from_secs(5), || {
            std::net::TcpStream::connect(control).ok()
        });
        support::control::ctl(control, cmd)
    };
    let c = udp_client_from(61);
    let (reply, _) = udp_ask(&c, pen.udp(), b"one").unwrap();
    assert!(reply.ends_with(b":one"), "{reply:?}");
    let servers = ctl("servers");
    assert!(servers.contains(" conn 1 "), "{servers}");
    let snap: pen::balancer::Snapshot = serde_json::from_str(ctl("snapshot").trim()).unwrap();
    assert_eq!(snap.conns.len(), 1, "one session");
    assert!(ctl("listen 127.0.0.1:1").starts_with("listen:"));
    assert_eq!(ctl("server 0 blacklist 60"), "");
    let d = udp_client_from(62);
    udp_ask(&d, pen.udp(), b"two").unwrap();
    // Round robin starts at server 1; with server 0 blacklisted the next session goes there too.
    assert!(a.sources().is_empty(), "server 0 is blacklisted");
    assert_eq!(b.sources().len(), 2);
    pen.finish();
}

/// `-l` with `-U`: every client datagram is a line of the request log, the first of each
/// session included.
#[test]
fn every_client_datagram_is_logged() {
    let a = UdpBackend::new("A", Answer::Echo);
    let dir = support::TempDir::new("udplog");
    let log = dir.join("pen.log");
    let log_arg = log.display().to_string();
    let pen = Pen::start_udp(&["-l", &log_arg], &[a.spec()]);
    let c = udp_client_from(71);
    for q in [&b"query one"[..], b"query two"] {
        udp_ask(&c, pen.udp(), q).unwrap();
    }
    let d = udp_client_from(72);
    udp_ask(&d, pen.udp(), b"other client").unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let found = support::poll_until(Duration::from_secs(5), || {
        let lines: Vec<String> = read().lines().map(String::from).collect();
        (lines.len() >= 3).then_some(lines)
    });
    let Some(lines) = found else {
        panic!("log: {:?}; stderr:\n{}", read(), pen.stderr_text());
    };
    let client_and_request = |l: &str| {
        let f: Vec<&str> = l.splitn(4, ' ').collect();
        (f[0].to_string(), f[2].to_string(), f[3].to_string())
    };
    let got: Vec<_> = lines.iter().map(|l| client_and_request(l)).collect();
    assert_eq!(
        got,
        [
            ("127.0.0.71".into(), "127.0.0.1".into(), "query one".into()),
            ("127.0.0.71".into(), "127.0.0.1".into(), "query two".into()),
            (
                "127.0.0.72".into(),
                "127.0.0.1".into(),
                "other client".into()
            ),
        ]
    );
    pen.finish();
}
