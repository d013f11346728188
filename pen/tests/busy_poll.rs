//! `busy_poll` (not in pen 0.34.1) on real loopback sockets: a data-plane loop keeps polling
//! between events that come less than the window apart, so it is not put to sleep and woken
//! for each of them; it sleeps as before once the traffic stops; the control port sets, shows
//! and refuses values; the TCP engine and the UDP plane both follow it.
//!
//! What is counted: the voluntary context switches of pen's threads (`/proc/PID/task/*/status`),
//! one each time a thread sleeps. A request-reply exchange through pen leaves its thread with
//! nothing to do while the server answers and while the client reads the reply and writes the
//! next request, so without `busy_poll` it sleeps once or twice per exchange (measured: 0.8 to
//! 2); with a window of 1 ms it should hardly sleep between exchanges that follow each other
//! within microseconds.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use support::control::Controlled;
use support::udp::{udp_ask, udp_client, Answer, UdpBackend};
use support::{cpu_during, echo_until_eof, Backend, Pen, Stream};

/// Exchanges measured per setting.
const EXCHANGES: usize = 400;

/// Voluntary context switches of every thread of `pid`.
fn sleeps(pid: u32) -> u64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task");
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// One 4-byte request and its echo.
fn exchange(s: &mut Stream) {
    s.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
}

/// How often pen's threads slept during `EXCHANGES` back-to-back exchanges on `s`.
fn sleeps_during_exchanges(pid: u32, s: &mut Stream) -> u64 {
    let before = sleeps(pid);
    for _ in 0..EXCHANGES {
        exchange(s);
    }
    sleeps(pid) - before
}

#[test]
fn tcp_busy_poll_keeps_the_loop_awake_between_close_events_and_lets_it_sleep_when_idle() {
    let backend = Backend::tcp(echo_until_eof);
    let pen = Controlled::start(&["-O", "busy_poll 1000"], &[backend.spec()]);
    let pid = pen.pen.pid();
    assert_eq!(pen.ctl("busy_poll"), "1000\n");
    let mut s = pen.pen.connect();
    for _ in 0..20 {
        exchange(&mut s);
    }

    let polling = sleeps_during_exchanges(pid, &mut s);
    // Off, on the same connection: the loop sleeps between exchanges again.
    assert_eq!(pen.ctl("busy_poll 0"), "0\n");
    exchange(&mut s);
    let sleeping = sleeps_during_exchanges(pid, &mut s);
    eprintln!(
        "{EXCHANGES} exchanges: pen slept {polling} times with busy_poll 1000, {sleeping} without"
    );
    assert!(
        sleeping >= EXCHANGES as u64 / 4,
        "without busy_poll pen sleeps between exchanges ({sleeping} sleeps in {EXCHANGES})"
    );
    // A loaded machine can hold the client up for more than the window now and then; most
    // exchanges still come within it.
    assert!(
        polling * 4 < EXCHANGES as u64 && polling * 4 < sleeping,
        "busy_poll 1000: {polling} sleeps in {EXCHANGES} exchanges (without: {sleeping})"
    );

    // The window ends: once the traffic stops, pen sleeps and costs no CPU.
    assert_eq!(pen.ctl("busy_poll 1000"), "1000\n");
    for _ in 0..50 {
        exchange(&mut s);
    }
    let idle_cpu = cpu_during(pid, || std::thread::sleep(Duration::from_secs(1)));
    assert!(
        idle_cpu < 0.1,
        "pen used {idle_cpu:.3} s of CPU in the second after its traffic stopped"
    );

    // A bad value is refused, named, and changes nothing.
    for bad in ["1001", "-5", "fast"] {
        let reply = pen.ctl(&format!("busy_poll {bad}"));
        assert!(
            reply.contains("busy_poll") && reply.contains(bad) && reply.contains("0 to 1000"),
            "busy_poll {bad}: {reply:?}"
        );
    }
    assert_eq!(pen.ctl("busy_poll"), "1000\n");
    exchange(&mut s);
    drop(s);
    pen.pen.finish();
}

#[test]
fn a_bad_busy_poll_on_the_command_line_stops_pen_before_it_binds() {
    let out = support::run_pen(
        &["-f", "-O", "busy_poll 5000", "127.0.0.1:1", "127.0.0.1:2"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("busy_poll") && out.stderr.contains("5000"),
        "{out:?}"
    );
}

#[test]
fn udp_busy_poll_keeps_the_loop_awake_between_close_datagrams_and_lets_it_sleep_when_idle() {
    let backend = UdpBackend::new("A", Answer::Echo);
    let mut pen = Pen::start_udp(&["-O", "busy_poll 1000"], &[backend.spec()]);
    let pid = pen.pid();
    let client = udp_client(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let ask = |client: &std::net::UdpSocket| {
        let (reply, _) = udp_ask(client, pen.udp(), b"ping").expect("a reply");
        assert_eq!(reply, b"A:ping");
    };
    for _ in 0..20 {
        ask(&client);
    }
    let before = sleeps(pid);
    for _ in 0..EXCHANGES {
        ask(&client);
    }
    let polling = sleeps(pid) - before;
    eprintln!("{EXCHANGES} UDP exchanges: pen slept {polling} times with busy_poll 1000");
    assert!(
        polling * 4 < EXCHANGES as u64,
        "busy_poll 1000: {polling} sleeps in {EXCHANGES} exchanges"
    );
    let idle_cpu = cpu_during(pid, || std::thread::sleep(Duration::from_secs(1)));
    assert!(
        idle_cpu < 0.1,
        "pen -U used {idle_cpu:.3} s of CPU in the second after its traffic stopped"
    );
    pen.assert_alive();
    pen.finish();
}
