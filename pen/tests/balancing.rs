//! Server selection through the real binary: round robin, tracking, hash, weights, soft and hard
//! limits, blacklisting and failover, the emergency server, the connect timeout, the connection
//! table limit, and the address families. Which backend answers shows what pen chose.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::control::Controlled;
use support::*;

fn specs(backends: &[&Backend]) -> Vec<String> {
    backends.iter().map(|b| b.spec()).collect()
}

#[test]
fn round_robin_starts_at_server_1_and_wraps() {
    let (a, b, c) = (
        Backend::named("A"),
        Backend::named("B"),
        Backend::named("C"),
    );
    let pen = Pen::start(&["-r"], &specs(&[&a, &b, &c]));
    // -r: the same client is not tracked, so it rotates too.
    let got: Vec<String> = (0..5).map(|_| pen.ask_from(2)).collect();
    assert_eq!(got, ["B", "C", "A", "B", "C"]);
    pen.finish();
}

#[test]
fn tracking_sends_a_client_back_and_rotates_new_clients() {
    let (a, b, c) = (
        Backend::named("A"),
        Backend::named("B"),
        Backend::named("C"),
    );
    let pen = Pen::start(&[], &specs(&[&a, &b, &c]));
    let got: Vec<(u8, String)> = [2, 2, 2, 3, 4, 5, 2, 3, 4]
        .into_iter()
        .map(|n| (n, pen.ask_from(n)))
        .collect();
    let want: Vec<(u8, String)> = [
        (2, "B"),
        (2, "B"),
        (2, "B"),
        (3, "C"),
        (4, "A"),
        (5, "B"),
        (2, "B"),
        (3, "C"),
        (4, "A"),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.to_string()))
    .collect();
    assert_eq!(got, want);
    pen.finish();
}

#[test]
fn tracking_ignores_the_source_port() {
    let (a, b) = (Backend::named("A"), Backend::named("B"));
    let pen = Pen::start(&[], &specs(&[&a, &b]));
    // Held connections have distinct source ports; the client is still the same.
    let (first, c1) = pen.hold_from(6);
    let (second, c2) = pen.hold_from(6);
    let (third, c3) = pen.hold_from(6);
    assert_eq!(
        (first.as_str(), second.as_str(), third.as_str()),
        ("B", "B", "B")
    );
    drop((c1, c2, c3));
    pen.finish();
}

#[test]
fn tracking_expires_after_dash_t() {
    let (a, b, c) = (
        Backend::named("A"),
        Backend::named("B"),
        Backend::named("C"),
    );
    let pen = Pen::start(&["-T", "1"], &specs(&[&a, &b, &c]));
    assert_eq!(pen.ask_from(2), "B");
    assert_eq!(pen.ask_from(2), "B", "within -T the client goes back");
    assert_eq!(pen.ask_from(3), "C");
    // Let the 1 s tracking time pass (time itself is what is tested here).
    thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        pen.ask_from(2),
        "A",
        "after -T the client is placed afresh (round robin: 2 -> 0)"
    );
    pen.finish();
}

/// pen's hash (reference §3.5): the address bytes read as a little-endian u32, XOR the source
/// port's network-order bytes read little-endian under -r, modulo the number of servers.
fn pen_hash(ip: Ipv4Addr, port: Option<u16>, n: u32) -> usize {
    let a = u32::from_le_bytes(ip.octets());
    let p = port.map_or(0, |p| u32::from(u16::from_le_bytes(p.to_be_bytes())));
    ((a ^ p) % n) as usize
}

#[test]
fn hash_places_clients_by_address() {
    let backends = [
        Backend::named("A"),
        Backend::named("B"),
        Backend::named("C"),
    ];
    let names = ["A", "B", "C"];
    let pen = Pen::start(&["-h"], &specs(&backends.iter().collect::<Vec<_>>()));
    let mut got = Vec::new();
    for n in 1..=9u8 {
        let ip = Ipv4Addr::new(127, 0, 4, n);
        let name = pen.ask_from_addr(ip, 0);
        assert_eq!(name, names[pen_hash(ip, None, 3)], "client {ip}");
        got.push(name);
    }
    // C pen's transcript 22 H1: .1 A, .2 B, .3 C, ...
    assert_eq!(got, ["A", "B", "C", "A", "B", "C", "A", "B", "C"]);
    pen.finish();
}

#[test]
fn hash_with_r_includes_the_source_port() {
    let backends = [
        Backend::named("A"),
        Backend::named("B"),
        Backend::named("C"),
    ];
    let names = ["A", "B", "C"];
    let pen = Pen::start(&["-h", "-r"], &specs(&backends.iter().collect::<Vec<_>>()));
    let ip = Ipv4Addr::new(127, 0, 4, 1);
    // C pen's transcript 22 H2 values first, then ports below the ephemeral range chosen so that
    // every server is predicted twice.
    let transcript = [47675u16, 38755, 49923, 39519, 54769, 32917];
    let mut per_server = [0usize; 3];
    let mut checked = 0;
    let start = 20_000 + (std::process::id() % 4000) as u16 * 3;
    let candidates = transcript.into_iter().chain(start..start + 400);
    for port in candidates {
        let want = pen_hash(ip, Some(port), 3);
        if per_server[want] >= 2 && checked >= transcript.len() {
            continue;
        }
        // A port some other socket holds cannot be our source port: skip it.
        let Ok(mut s) = connect_from(ip, port, pen.tcp()) else {
            continue;
        };
        let name = ask(&mut s).expect("answer");
        let _ = s.shutdown(Shutdown::Write);
        assert_eq!(name, names[want], "client {ip}:{port}");
        per_server[want] += 1;
        checked += 1;
        if per_server.iter().all(|&k| k >= 2) && checked >= 6 {
            break;
        }
    }
    assert!(
        per_server.iter().all(|&k| k >= 2),
        "too few usable source ports: {per_server:?}"
    );
    pen.finish();
}

#[test]
fn weights_1_and_3_give_a_b_b_b_a_b_b_b() {
    let (a, b) = (Backend::named("A"), Backend::named("B"));
    let pen = Pen::start(
        &["-W", "-r"],
        &[a.spec_with(":0:0:1"), b.spec_with(":0:0:3")],
    );
    let mut held = Vec::new();
    let mut got = Vec::new();
    for n in 1..=8u8 {
        let (name, s) = pen.hold_from_addr(Ipv4Addr::new(127, 0, 1, n));
        got.push(name);
        held.push(s);
    }
    assert_eq!(got, ["A", "B", "B", "B", "A", "B", "B", "B"]);
    drop(held);
    pen.finish();
}

#[test]
fn weight_without_weights_is_least_connections() {
    let (a, b) = (Backend::named("A"), Backend::named("B"));
    let pen = Pen::start(&["-W", "-r"], &specs(&[&a, &b]));
    let mut held = Vec::new();
    let mut got = Vec::new();
    for n in 1..=4u8 {
        let (name, s) = pen.hold_from(n);
        got.push(name);
        held.push(s);
    }
    assert_eq!(got, ["A", "B", "A", "B"]);
    drop(held);
    pen.finish();
}

#[test]
fn prio_picks_the_lowest_value_then_the_next_when_it_fails() {
    let (a, b, c) = (
        Backend::named("A"),
        Backend::named("B"),
        Backend::named("C"),
    );
    let pen = Pen::start(
        &["-o", "prio", "-r"],
        &[
            a.spec_with(":0:0:0:2"),
            b.spec_with(":0:0:0:1"),
            c.spec_with(":0:0:0:3"),
        ],
    );
    let got: Vec<String> = (0..3).map(|_| pen.ask_from(2)).collect();
    assert_eq!(got, ["B", "B", "B"], "transcript 22 P1");
    pen.finish();

    // The best server refuses: failover scans by index (to A), then A is the best available.
    let dead = Dead::new();
    let pen = Pen::start(
        &["-o", "prio", "-r"],
        &[
            format!("{}:0:0:0:1", dead.spec()),
            a.spec_with(":0:0:0:2"),
            c.spec_with(":0:0:0:3"),
        ],
    );
    let got: Vec<String> = (0..3).map(|_| pen.ask_from(2)).collect();
    assert_eq!(got, ["A", "A", "A"]);
    pen.finish();
}

#[test]
fn soft_and_hard_limits_as_in_transcript_22_m1() {
    // B at index 0 unlimited; A at index 1 with maxc 1, hard 2. All connections held.
    let (b, a) = (Backend::named("B"), Backend::named("A"));
    let pen = Pen::start(&[], &[b.spec(), a.spec_with(":1:2")]);
    let mut held = Vec::new();
    let mut got = Vec::new();
    for n in [1u8, 1, 1, 2, 3] {
        let (name, s) = pen.hold_from_addr(Ipv4Addr::new(127, 0, 5, n));
        got.push(format!("127.0.5.{n}->{name}"));
        held.push(s);
    }
    assert_eq!(
        got,
        [
            "127.0.5.1->A", // round robin's first pick
            "127.0.5.1->A", // returning client: room up to hard = 2
            "127.0.5.1->B", // A at hard: fail over
            "127.0.5.2->B", // round robin: index 0
            "127.0.5.3->B", // round robin: A, full for new clients: fail over
        ]
    );
    drop(held);
    pen.finish();
}

#[test]
fn refused_server_is_blacklisted_then_used_again_after_dash_b() {
    let a = Backend::named("A");
    let dead = Dead::new();
    let b = Backend::named("B");
    let pen = Pen::start(&["-r", "-b", "2"], &[a.spec(), dead.spec(), b.spec()]);
    // Round robin picks the dead server 1 first: refused, blacklisted, failover to 2.
    assert_eq!(pen.ask_from(2), "B");
    let failed_at = Instant::now();
    // The server comes back at once, but stays blacklisted for 2 s.
    let d = dead.revive("D");
    // Failover did not move the cursor (still 1): 2, 0, then 1 is skipped.
    let got: Vec<String> = (0..3).map(|_| pen.ask_from(2)).collect();
    let quick = failed_at.elapsed() < Duration::from_millis(1500);
    if quick {
        assert_eq!(got, ["B", "A", "B"], "blacklisted server skipped");
        assert_eq!(
            d.accepted.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "blacklisted server contacted"
        );
    } else {
        eprintln!("machine too slow to check the blacklist window: {got:?}");
    }
    // After the blacklist time, round robin reaches it again (cursor at 2: 0, then 1).
    thread::sleep(Duration::from_millis(2500).saturating_sub(failed_at.elapsed()));
    let got: Vec<String> = (0..2).map(|_| pen.ask_from(2)).collect();
    if quick {
        assert_eq!(got, ["A", "D"]);
    } else {
        assert!(got.contains(&"D".to_string()), "{got:?}");
    }
    pen.finish();
}

/// The client's tracking entry as `snapshot` shows it: pen's number of its last server.
fn tracked_server(c: &Controlled, client: &str) -> Option<i64> {
    c.snapshot()
        .clients
        .iter()
        .find(|e| e.address == client)
        .unwrap_or_else(|| panic!("{client} is not in the client table"))
        .last_server
}

/// Catalogue F19. C pen 0.34.1 with `-P` (its default epoll build resets the client instead,
/// reference §13.2 B1) does exactly this: the server a client fails over to becomes its tracked
/// server, and the client stays there when the dead server's blacklist ends and when the server
/// comes back; new clients reach that server again through round robin.
#[test]
fn tracking_follows_failover_and_stays_after_the_server_returns() {
    let b = Backend::named("B");
    let a = Backend::named("A");
    let c = Controlled::start(&["-b", "1"], &[b.spec(), a.spec()]);
    assert_eq!(
        c.pen.ask_from(7),
        "A",
        "round robin's first pick is server 1"
    );
    assert_eq!(tracked_server(&c, "127.0.0.7"), Some(1));

    let dead = a.kill();
    assert_eq!(c.pen.ask_from(7), "B", "A refused: failover to B");
    assert_eq!(
        tracked_server(&c, "127.0.0.7"),
        Some(0),
        "the entry follows failover"
    );
    // Every connection placed on A, refused ones included.
    let tries_at_a = c.snapshot().servers[1].connects;
    assert_eq!(tries_at_a, 2);
    assert_eq!(c.pen.ask_from(7), "B");

    // A's blacklist ends while A is still down: the client goes straight to B, with no connect
    // to A first (that would count, and blacklist A again).
    wait_until("A's 1 s blacklist to end", Duration::from_secs(5), || {
        (!c.snapshot().servers[1].blacklisted).then_some(())
    });
    assert_eq!(c.pen.ask_from(7), "B");
    let snap = c.snapshot();
    assert_eq!(snap.servers[1].connects, tries_at_a, "pen tried A again");
    assert!(!snap.servers[1].blacklisted, "pen tried A again");

    // A comes back: the client stays on B; a new client reaches A (the cursor is still on 1:
    // 0, then 1).
    let a = dead.revive("A");
    assert_eq!(c.pen.ask_from(7), "B", "the client stays on B");
    assert_eq!(a.accepted.load(Ordering::SeqCst), 0);
    assert_eq!(c.pen.ask_from(8), "B");
    assert_eq!(c.pen.ask_from(9), "A", "A is back in the rotation");
    assert_eq!(c.pen.ask_from(7), "B");
    assert_eq!(tracked_server(&c, "127.0.0.7"), Some(0));
    c.pen.finish();
}

#[test]
fn failover_tries_each_server_once_then_closes_the_client() {
    let (d1, d2) = (Dead::new(), Dead::new());
    let pen = Pen::start(&["-r", "-b", "0"], &[d1.spec(), d2.spec()]);
    // Blacklisting off: every connection tries both servers, then is closed.
    for _ in 0..3 {
        let mut s = pen.connect_from(2);
        s.write_all_ignoring(b"?");
        assert!(
            matches!(drain(&mut s), Ok(0) | Err(_)),
            "the client got data with every server down"
        );
    }
    pen.finish();
}

/// Catalogue F16, without `-e`: with every server down, each client is closed at once (no
/// wait for `-t`, here 5 s), and `-d` says why, once per client: the connect failures that
/// blacklist the servers, then that no server was left for the client.
#[test]
fn all_servers_down_closes_each_client_at_once_and_says_so() {
    let (d1, d2) = (Dead::new(), Dead::new());
    let pen = Pen::start(&["-d", "-t", "5"], &[d1.spec(), d2.spec()]);
    // The first client finds both servers refusing; the next two find both blacklisted.
    for n in 2..5u8 {
        let mut s = pen.connect_from(n);
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("read timeout");
        s.write_all_ignoring(b"?");
        let end = drain(&mut s);
        assert!(
            matches!(end, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
            "client 127.0.0.{n} was not closed within 1 s: {end:?}; stderr:\n{}",
            pen.stderr_text()
        );
    }
    let turned_away = |stderr: &str| {
        (2..5u8)
            .filter(|n| {
                let who = format!("client 127.0.0.{n} ");
                stderr
                    .lines()
                    .any(|l| l.contains("no server for") && l.contains(&who))
            })
            .count()
    };
    let logged = poll_until(Duration::from_secs(5), || {
        let stderr = pen.stderr_text();
        (turned_away(&stderr) == 3).then_some(stderr)
    });
    let stderr = logged.unwrap_or_else(|| {
        panic!(
            "want a 'no server for client 127.0.0.N' line for N = 2, 3, 4 with -d:\n{}",
            pen.stderr_text()
        )
    });
    for (i, d) in [&d1, &d2].iter().enumerate() {
        let failed = format!("server {i} ({}) failed", d.spec());
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&failed) && l.contains("blacklisting")),
            "no line says server {i} failed:\n{stderr}"
        );
    }
    pen.finish();
}

/// Catalogue F16, with `-e`: the emergency server serves while every server is down, and once
/// a server is back and its blacklist (`-b 1`) is over, clients go to it again: new clients,
/// and clients last sent to the emergency server (tracking never holds a client there).
#[test]
fn emergency_server_serves_while_all_are_down_and_servers_take_over_on_recovery() {
    let (d1, d2) = (Dead::new(), Dead::new());
    let e = Backend::named("E");
    let es = e.spec();
    let pen = Pen::start(&["-b", "1", "-e", &es], &[d1.spec(), d2.spec()]);
    // Both blacklists end 1 s after the failures, so no sooner than 1 s after this.
    let before_failures = Instant::now();
    assert_eq!(pen.ask_from(2), "E", "both servers refuse: failover to -e");
    assert_eq!(pen.ask_from(3), "E", "both servers blacklisted");
    let a = d1.revive("A");
    // Blacklisted for 1 s even though it is back (checked only if this machine was quick).
    let during = pen.ask_from(4);
    if before_failures.elapsed() < Duration::from_millis(700) {
        assert_eq!(during, "E", "a blacklisted server was used");
        assert_eq!(a.accepted.load(Ordering::SeqCst), 0);
    }
    // Once the blacklist is over, new clients reach A (directly, or through failover from the
    // server still down). Each try is a new client; bounded in time and count.
    let mut tries = 0u8;
    let recovered = poll_until(Duration::from_secs(4), || {
        if tries == 100 {
            return Some(false);
        }
        tries += 1;
        (pen.ask_from(10 + tries) == "A").then_some(true)
    });
    assert_eq!(
        recovered,
        Some(true),
        "no client reached the recovered server within 4 s ({tries} tries)"
    );
    assert!(
        before_failures.elapsed() >= Duration::from_secs(1),
        "the recovered server was used {:?} after it was blacklisted for 1 s",
        before_failures.elapsed()
    );
    let e_before = e.accepted.load(Ordering::SeqCst);
    let got: Vec<String> = [2, 3, 4, 5, 6].map(|n| pen.ask_from(n)).into();
    assert_eq!(got, ["A"; 5], "clients 127.0.0.2-6 after the recovery");
    assert_eq!(e.accepted.load(Ordering::SeqCst), e_before);
    pen.finish();
}

#[test]
fn emergency_server_serves_when_all_servers_refuse() {
    let (d1, d2) = (Dead::new(), Dead::new());
    let e = Backend::named("E");
    let a = Backend::named("A");
    let es = e.spec();
    let pen = Pen::start(&["-e", &es], &[d1.spec(), d2.spec()]);
    assert_eq!(pen.ask_from(2), "E");
    assert_eq!(
        pen.ask_from(3),
        "E",
        "both servers blacklisted: straight to -e"
    );
    pen.finish();
    // With a working server, -e is not used.
    let pen = Pen::start(&["-e", &es], &[a.spec()]);
    assert_eq!(pen.ask_from(2), "A");
    pen.finish();
}

#[test]
fn stubborn_never_fails_over_nor_uses_the_emergency_server() {
    let dead = Dead::new();
    let (a, e) = (Backend::named("A"), Backend::named("E"));
    let es = e.spec();
    // Round robin's first pick is server 1, the dead one.
    let pen = Pen::start(&["-s", "-r", "-e", &es], &[a.spec(), dead.spec()]);
    let mut s = pen.connect_from(2);
    s.write_all_ignoring(b"?");
    assert!(
        matches!(drain(&mut s), Ok(0) | Err(_)),
        "stubborn client was served"
    );
    assert_eq!(e.accepted.load(Ordering::SeqCst), 0);
    assert_eq!(a.accepted.load(Ordering::SeqCst), 0);
    drop(s);
    pen.finish();
}

/// Catalogue F2: a server that never answers the SYN (a full accept queue drops it) costs the
/// client `-t` and no more. With `-t 1` the client is answered by the next server after at least
/// 0.9 s (the blackhole was tried first) and at most 2.5 s (`-t` plus 1.5 s of slack for a busy
/// CI machine). The blackholed server, and only it, is then blacklisted (`-b`, 30 s by
/// default), and the next clients skip it.
#[test]
fn connect_timeout_fails_over_from_a_blackhole() {
    let a = Backend::named("A");
    let hole = Blackhole::new();
    let b = Backend::named("B");
    let c = Controlled::start(&["-r", "-t", "1"], &[a.spec(), hole.spec(), b.spec()]);
    let started = Instant::now();
    assert_eq!(c.pen.ask_from(2), "B", "server 1 hangs: failover to 2");
    let failed_over = started.elapsed();
    eprintln!("failover from the blackhole with -t 1 took {failed_over:?}");
    assert!(
        failed_over >= Duration::from_millis(900),
        "answered after {failed_over:?}: the blackhole was not tried first"
    );
    assert!(
        failed_over < Duration::from_millis(2500),
        "answered after {failed_over:?}: the failover waited well past -t 1; stderr:\n{}",
        c.pen.stderr_text()
    );
    let snap = c.snapshot();
    let blacklisted: Vec<bool> = snap.servers.iter().map(|s| s.blacklisted).collect();
    assert_eq!(
        blacklisted,
        [false, true, false],
        "only the blackholed server 1 is blacklisted: {:?}",
        snap.servers
    );
    // Cursor still 1: 2, 0, then 1 is blacklisted (-b 30) and skipped.
    let got: Vec<String> = (0..3).map(|_| c.pen.ask_from(2)).collect();
    assert_eq!(got, ["B", "A", "B"]);
    c.pen.finish();
}

/// Catalogue F3: `-t` bounds the connect to the server, not the connection after it. A client
/// that stays silent for twice `-t` keeps its connection and is answered.
#[test]
fn connect_timeout_does_not_apply_after_connect() {
    let echo = Backend::echo();
    let pen = Pen::start(&["-t", "1"], &[echo.spec()]);
    let mut s = Stream::Tcp(pen.connect_from(2));
    wait_until(
        "pen to connect to the server",
        Duration::from_secs(5),
        || (echo.accepted.load(Ordering::SeqCst) == 1).then_some(()),
    );
    // The silence is what is tested: it must outlast -t (which pen would enforce on a timer).
    assert!(
        stays_silent(&mut s, Duration::from_secs(2)),
        "pen closed a connection silent for 2 s with -t 1; stderr:\n{}",
        pen.stderr_text()
    );
    for round in ["after the silence", "and again"] {
        s.write_all(round.as_bytes()).expect("send");
        let mut got = vec![0u8; round.len()];
        s.read_exact(&mut got).expect("the echo");
        assert_eq!(got, round.as_bytes());
    }
    assert_eq!(
        (
            echo.accepted.load(Ordering::SeqCst),
            echo.open_connections()
        ),
        (1, 1),
        "the server connection was replaced or closed"
    );
    drop(s);
    pen.finish();
}

#[test]
fn connection_limit_x_queues_clients_without_spinning() {
    let a = Backend::named("A");
    let pen = Pen::start(&["-x", "2"], &[a.spec()]);
    let (_, first) = pen.hold_from(2);
    let (_, second) = pen.hold_from(3);
    // The third waits: in the kernel's backlog, or accepted by a thread that waits for a slot.
    let mut third = Stream::Tcp(pen.connect_from(4));
    third.write_all_ignoring(b"?");
    assert!(
        stays_silent(&mut third, Duration::from_millis(500)),
        "a third connection was served with -x 2"
    );
    let cpu = cpu_during(pen.pid(), || thread::sleep(Duration::from_secs(1)));
    assert!(
        cpu < 0.2,
        "pen used {cpu:.2} s of CPU in 1 s with its table full"
    );
    drop(first);
    assert_eq!(
        read_line(&mut third).expect("served after a slot freed"),
        "A"
    );
    drop((second, third));
    pen.finish();
}

#[test]
fn connection_limit_x_holds_whichever_thread_accepts() {
    // Four threads and four slots: every slot serves a client, whichever thread accepts it or
    // is handed it (no idle thread keeps a slot to itself).
    let a = Backend::named("A");
    let pen = Pen::spawn(Listen::V4, &["env", "PEN_THREADS=4"], |l| {
        vec!["-f".into(), "-x".into(), "4".into(), l.into(), a.spec()]
    });
    let held: Vec<_> = (2..6).map(|n| pen.hold_from(n).1).collect();
    let mut fifth = Stream::Tcp(pen.connect_from(6));
    fifth.write_all_ignoring(b"?");
    assert!(
        stays_silent(&mut fifth, Duration::from_millis(500)),
        "a fifth connection was served with -x 4"
    );
    drop(held);
    assert_eq!(
        read_line(&mut fifth).expect("served after the slots freed"),
        "A"
    );
    drop(fifth);
    pen.finish();
}

#[test]
fn ipv6_listener_and_ipv6_server() {
    // CI has ::1; a machine without it must say so rather than pass quietly.
    assert!(ipv6_available(), "no IPv6 loopback ([::1]) on this machine");
    let v6 = Backend::named_v6("V6");
    let v4 = Backend::named("V4");
    let pen = Pen::start_on(Listen::V6, &["-r"], &[v6.spec(), v4.spec()]);
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut s = pen.connect();
        got.push(ask(&mut s).expect("answer"));
    }
    assert_eq!(got, ["V4", "V6"]);
    pen.finish();
}

#[test]
fn unix_listener_and_unix_server() {
    let dir = TempDir::new("unix");
    let u = Backend::named_unix(&dir.join("backend.sock"), "U");
    let a = Backend::named("A");
    let pen = Pen::start_on(
        Listen::Unix(dir.join("pen.sock")),
        &["-r"],
        &[u.spec(), a.spec()],
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let mut s = pen.connect();
        got.push(ask(&mut s).expect("answer"));
    }
    assert_eq!(got, ["A", "U", "A"]);
    pen.finish();
}

#[test]
fn unix_listener_replaces_a_stale_socket() {
    let dir = TempDir::new("stale");
    let path = dir.join("pen.sock");
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(path.exists(), "the stale socket file stays after close");
    let a = Backend::named("A");
    let pen = Pen::start_on(Listen::Unix(path), &[], &[a.spec()]);
    let mut s = pen.connect();
    assert_eq!(ask(&mut s).expect("answer"), "A");
    drop(s);
    pen.finish();
}

#[test]
fn unix_listener_path_that_is_a_regular_file_is_kept() {
    let dir = TempDir::new("file");
    let path = dir.join("precious");
    fs::write(&path, "do not delete").unwrap();
    let a = Backend::named("A");
    let out = run_pen(
        &["-f", path.to_str().unwrap(), &a.spec()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with("pen: ") && out.stderr.contains(path.to_str().unwrap()),
        "{out:?}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "do not delete");
}

/// What one thread of a connect storm saw.
#[derive(Debug, Default)]
struct StormThread {
    clients: usize,
    slowest: Duration,
    /// Clients not closed promptly, and connects that failed.
    failures: Vec<String>,
}

/// Catalogue L6: a connect storm while every server refuses. A failed connect blacklists its
/// server for `-b` (2 s); while both servers are blacklisted there is no first choice and no
/// emergency server, so pen closes the client without connecting anywhere (man page, "server
/// selection"). Four threads connect for 2.5 s, each as fast as it can up to 250 clients a
/// second (1 000 a second in all, the catalogue's load; at most 700 clients each). Each client
/// is closed well inside the 2 s connect timeout (in under 1 s). Each server is tried again only
/// once its blacklist is over: at most floor(storm / 2 s) + 1 rounds of tries, and a round has at
/// most one try per connection pen holds before the first failure of the round is known, here
/// at most 4 (each thread waits for its client's end before the next). So not the catalogue's
/// "1 per window": tries already under way when a server fails cannot be taken back. After the
/// storm pen's descriptors are back at their baseline and it uses next to no CPU.
#[test]
fn connect_storm_against_refusing_servers_is_throttled_by_the_blacklist() {
    const THREADS: u8 = 4;
    const PER_THREAD: usize = 700;
    /// Each thread's pace at most: 250 clients a second.
    const GAP: Duration = Duration::from_millis(4);
    const STORM: Duration = Duration::from_millis(2500);
    const BLACKLIST: Duration = Duration::from_secs(2);
    let (d1, d2) = (Dead::new(), Dead::new());
    let c = Controlled::start(&["-b", "2", "-t", "2"], &[d1.spec(), d2.spec()]);
    let (pid, addr) = (c.pen.pid(), c.pen.tcp());
    let baseline = stable_fd_count(&c.pen);

    let started = Instant::now();
    let threads: Vec<StormThread> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let mut seen = StormThread::default();
                    while seen.clients < PER_THREAD && started.elapsed() < STORM {
                        // The pace is only an upper bound: a slow machine just makes fewer.
                        let due = started + GAP * seen.clients as u32;
                        thread::sleep(due.saturating_duration_since(Instant::now()));
                        let opened = Instant::now();
                        let mut s = match connect_from(loopback(10 + t), 0, addr) {
                            Ok(s) => s,
                            Err(e) => {
                                seen.failures.push(format!("connect: {e}"));
                                break;
                            }
                        };
                        s.set_read_timeout(Some(Duration::from_secs(1)))
                            .expect("read timeout");
                        let end = drain(&mut s);
                        let took = opened.elapsed();
                        seen.clients += 1;
                        seen.slowest = seen.slowest.max(took);
                        if !matches!(end, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)) {
                            seen.failures
                                .push(format!("client {}: {end:?} after {took:?}", seen.clients));
                        }
                    }
                    seen
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("storm thread"))
            .collect()
    });
    let storm = started.elapsed();
    let clients: usize = threads.iter().map(|t| t.clients).sum();
    let failures: Vec<&String> = threads.iter().flat_map(|t| &t.failures).collect();
    assert!(
        failures.is_empty(),
        "clients not closed within 1 s (or not connected): {failures:?}; stderr:\n{}",
        c.pen.stderr_text()
    );

    let rounds = (storm.as_secs_f64() / BLACKLIST.as_secs_f64()).floor() as u64 + 1;
    let most = rounds * u64::from(THREADS);
    let tries: Vec<u64> = c.snapshot().servers.iter().map(|s| s.connects).collect();
    eprintln!(
        "{clients} clients in {storm:?} (slowest closed after {:?}); tries per server: {tries:?}",
        threads.iter().map(|t| t.slowest).max()
    );
    for (i, &n) in tries.iter().enumerate() {
        assert!(
            (1..=most).contains(&n),
            "server {i} was tried {n} times for {clients} clients in {storm:?}: want 1 to \
             {most} ({rounds} blacklist rounds of at most {THREADS})"
        );
    }

    let settled = poll_until(Duration::from_secs(5), || {
        (fd_count(pid) <= baseline).then_some(())
    });
    assert!(
        settled.is_some(),
        "pen holds {} descriptors after the storm, {baseline} before",
        fd_count(pid)
    );
    let cpu = cpu_during(pid, || thread::sleep(Duration::from_secs(1)));
    assert!(
        cpu < 0.2,
        "pen used {cpu:.2} s of CPU in the second after the storm"
    );
    c.pen.finish();
}

/// Writes that may fail because pen already closed the connection.
trait WriteIgnoring {
    fn write_all_ignoring(&mut self, data: &[u8]);
}

impl<W: std::io::Write> WriteIgnoring for W {
    fn write_all_ignoring(&mut self, data: &[u8]) {
        let _ = self.write_all(data);
    }
}

// ---- address families (catalogue O4) ------------------------------------------------------------

/// `Controlled::start`, but with pen listening on IPv6: `[::1]:PORT`, or the wildcard `[::]:PORT`
/// when `wildcard` (pen makes that socket dual-stack itself, whatever net.ipv6.bindv6only says).
/// The control port stays on 127.0.0.1.
fn controlled_v6(wildcard: bool, opts: &[&str], servers: &[String]) -> Controlled {
    assert!(ipv6_available(), "no IPv6 loopback ([::1]) on this machine");
    let port = free_port(Ipv4Addr::LOCALHOST.into());
    let control = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let mut fixed: Vec<String> = vec!["-f".into(), "-C".into(), control.to_string()];
    fixed.extend(support::control::user_args());
    fixed.extend(opts.iter().map(|s| s.to_string()));
    let pen = Pen::spawn(Listen::V6, &[], |l| {
        let listen = if wildcard {
            l.replacen("[::1]", "[::]", 1)
        } else {
            l.to_string()
        };
        let mut args = fixed.clone();
        args.push(listen);
        args.extend(servers.iter().cloned());
        args
    });
    let ready = poll_until(Duration::from_secs(5), || TcpStream::connect(control).ok());
    assert!(
        ready.is_some(),
        "control port {control} never answered; stderr:\n{}",
        pen.stderr_text()
    );
    Controlled { pen, control }
}

/// Connect to `to` from whatever source the kernel picks, ask the backend's name, and close.
/// An IPv6 socket has IPV6_V6ONLY off, so that it can reach a v4-mapped address whatever
/// net.ipv6.bindv6only says.
fn ask_at(to: SocketAddr) -> std::io::Result<String> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if to.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let mut s = TcpStream::from(socket);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let name = ask(&mut s)?;
    let _ = s.shutdown(Shutdown::Write);
    Ok(name)
}

/// Catalogue O4: an IPv6 client access list with a /64 prefix, end to end on a `[::1]` listener
/// (the client is ::1, the only loopback IPv6 address). `acl N permit|deny ADDR/LEN` takes the
/// prefix; pen's rule decides (first matching entry of the client's family, else the opposite of
/// the last entry). Inside a permitted /64 the client is served; outside it (the next /64,
/// `0:0:0:1::/64`, which differs from ::1's only in the prefix's last bit) a permit-only list
/// denies it, and without `-B` a denied client is closed without any server being contacted.
/// With `-B`, a client inside a denied /64 goes to the abuse server, and one outside a deny-only
/// list is served.
#[test]
fn ipv6_client_acl_with_a_64_prefix_permits_inside_and_denies_outside() {
    let (a, abuse) = (Backend::named("A"), Backend::named("abuse"));
    let c = controlled_v6(
        false,
        &["-o", "acl 1 permit ::/64", "-o", "client_acl 1"],
        &[a.spec()],
    );
    let pen_at = c.pen.tcp();
    assert_eq!(
        ask_at(pen_at).expect("::1 is inside ::/64"),
        "A",
        "::1 inside ::/64"
    );
    assert_eq!(c.ctl("no acl 1"), "");
    assert_eq!(c.ctl("acl 1 permit 0:0:0:1::/64"), "");
    let served_before = a.accepted.load(Ordering::SeqCst);
    let denied = ask_at(pen_at);
    assert!(
        denied.is_err(),
        "::1 is outside 0:0:0:1::/64 and the list only permits: want closed, got {denied:?}"
    );
    assert_eq!(
        a.accepted.load(Ordering::SeqCst),
        served_before,
        "a denied client reached the server"
    );
    // The list is what changed: back to the client's /64, it is served again.
    assert_eq!(c.ctl("no acl 1"), "");
    assert_eq!(c.ctl("acl 1 permit ::/64"), "");
    assert_eq!(ask_at(pen_at).expect("served again"), "A");
    c.pen.finish();

    let c = controlled_v6(
        false,
        &[
            "-B",
            &abuse.spec(),
            "-o",
            "acl 2 deny ::/64",
            "-o",
            "client_acl 2",
        ],
        &[a.spec()],
    );
    let pen_at = c.pen.tcp();
    assert_eq!(
        ask_at(pen_at).expect("an answer"),
        "abuse",
        "::1 inside the denied ::/64 goes to -B"
    );
    assert_eq!(c.ctl("no acl 2"), "");
    assert_eq!(c.ctl("acl 2 deny fd00::/64"), "");
    assert_eq!(
        ask_at(pen_at).expect("an answer"),
        "A",
        "::1 outside the deny-only fd00::/64 is permitted"
    );
    c.pen.finish();
}

/// Catalogue O4: on a dual-stack wildcard listener (`[::]:PORT`) an IPv4 client arrives as
/// ::ffff:127.0.0.1 whether it connects with an IPv4 socket to 127.0.0.1 or with an IPv6 socket
/// to ::ffff:127.0.0.1, and pen treats both as the IPv4 client 127.0.0.1 (man page: "treated as
/// IPv4 clients for tracking"): all three connections go to the tracked server, and the client
/// table has one entry, `127.0.0.1`, with three connects. ::1, a different client, is placed by
/// round robin on the other server and gets an entry of its own.
#[test]
fn v4_mapped_and_ipv4_clients_are_one_tracked_client_on_a_wildcard_listener() {
    let (a, b) = (Backend::named("A"), Backend::named("B"));
    let c = controlled_v6(true, &[], &[a.spec(), b.spec()]);
    let port = c.pen.port();
    let v4 = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let mapped = SocketAddr::new(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), port);
    let v6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port);
    let got: Vec<String> = [v4, mapped, v4]
        .iter()
        .map(|&to| ask_at(to).unwrap_or_else(|e| panic!("client to {to}: {e}")))
        .collect();
    assert_eq!(
        got,
        ["B", "B", "B"],
        "round robin's first pick (server 1), then tracking"
    );
    assert_eq!(
        ask_at(v6).expect("::1 answered"),
        "A",
        "::1 is a new client"
    );

    let snap = c.snapshot();
    let mut clients: Vec<(&str, Option<i64>, u64)> = snap
        .clients
        .iter()
        .map(|e| (e.address.as_str(), e.last_server, e.connects))
        .collect();
    clients.sort();
    assert_eq!(
        clients,
        [("127.0.0.1", Some(1), 3), ("::1", Some(0), 1)],
        "client table (address, last server, connects)"
    );
    c.pen.finish();
}

/// Catalogue O4: the listener's family and a server's are independent. An IPv4 listener relays
/// to an IPv6 server given as `[::1]:PORT`, and an IPv6 listener (`[::1]:PORT`) to an IPv4
/// server; each server sees pen connect from its own family's loopback address.
#[test]
fn ipv4_listener_to_ipv6_server_and_ipv6_listener_to_ipv4_server() {
    assert!(ipv6_available(), "no IPv6 loopback ([::1]) on this machine");
    let (peers_tx, peers) = channel::<SocketAddr>();
    let peer_named = move |name: &'static str| {
        let tx = peers_tx.clone();
        Arc::new(move |mut s: Stream| {
            if let Stream::Tcp(t) = &s {
                if let Ok(peer) = t.peer_addr() {
                    let _ = tx.lock().unwrap().send(peer);
                }
            }
            let mut b = [0u8; 1];
            if matches!(s.read(&mut b), Ok(1))
                && s.write_all(format!("{name}\n").as_bytes()).is_ok()
            {
                let _ = drain(&mut s);
            }
        })
    };
    let v6 = Backend::serve(
        AnyListener::Tcp(
            std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind [::1]:0"),
        ),
        peer_named("V6"),
    );
    let v4 = Backend::serve(
        AnyListener::Tcp(
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"),
        ),
        peer_named("V4"),
    );
    assert!(v6.spec().starts_with("[::1]:"), "{}", v6.spec());

    let pen4 = Pen::start(&[], &[v6.spec()]);
    assert_eq!(pen4.ask_from(2), "V6", "IPv4 listener, IPv6 server");
    let peer = peers.recv_timeout(IO_TIMEOUT).expect("the server's peer");
    assert_eq!(peer.ip(), IpAddr::from(Ipv6Addr::LOCALHOST));

    let pen6 = Pen::start_on(Listen::V6, &[], &[v4.spec()]);
    assert!(pen6.tcp().is_ipv6());
    let mut s = pen6.connect();
    assert_eq!(
        ask(&mut s).expect("an answer"),
        "V4",
        "IPv6 listener, IPv4 server"
    );
    drop(s);
    let peer = peers.recv_timeout(IO_TIMEOUT).expect("the server's peer");
    assert_eq!(peer.ip(), IpAddr::from(Ipv4Addr::LOCALHOST));

    pen4.finish();
    pen6.finish();
}
