//! `coalesce` (not in pen 0.34.1) on real loopback sockets: the setting as the command line
//! and the control port see it, and a data-plane loop that naps between events loses none of
//! them and still keeps its timers.
//!
//! How long the naps are, and when the loop takes none, is the pure policy's
//! (`engine::coalesce`, unit-tested with time passed in); what it gains is for the benchmark.
//! Here, 96 clients each send an exchange every 2 ms, which is about 1 ms between two events of
//! one connection. With at least 32 of them on each data-plane thread, the policy then gives
//! naps of about 125 µs, under `coalesce 1000`.

mod support;

use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use support::control::Controlled;
use support::{echo_until_eof, pattern, Backend};

const CLIENTS: usize = 96;
const EXCHANGES: usize = 600;
const PACE: Duration = Duration::from_millis(2);

#[test]
fn clients_exchanging_through_naps_lose_nothing_and_timers_still_fire() {
    let backend = Backend::tcp(echo_until_eof);
    let pen = Controlled::start(
        &["-O", "coalesce 1000", "-O", "idle_timeout 1"],
        &[backend.spec()],
    );
    assert_eq!(pen.ctl("coalesce"), "1000\n");

    // One client that goes quiet: its idle timeout must fire while the loop naps.
    let mut quiet = pen.pen.connect();
    quiet.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    quiet.read_exact(&mut got).unwrap();
    let quiet_since = Instant::now();
    let quiet_watch = thread::spawn(move || {
        quiet.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = [0u8; 16];
        let n = quiet.read(&mut buf);
        (n.map_err(|e| e.kind()), quiet_since.elapsed())
    });

    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut s = pen.pen.connect();
            let start = start.clone();
            thread::spawn(move || {
                s.set_timeouts(Some(Duration::from_secs(10)));
                start.wait();
                let mut got = [0u8; 200];
                for n in 0..EXCHANGES {
                    let len = 1 + (i * 7 + n * 13) % 200;
                    let want = pattern((i * EXCHANGES + n) as u64, len);
                    s.write_all(&want).unwrap();
                    s.read_exact(&mut got[..len]).unwrap();
                    assert_eq!(&got[..len], &want[..], "client {i}, exchange {n}");
                    thread::sleep(PACE);
                }
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        c.join().unwrap_or_else(|_| panic!("client {i} failed"));
    }

    let (read, after) = quiet_watch.join().unwrap();
    assert_eq!(read, Ok(0), "the quiet client was closed, not reset");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "idle_timeout 1 closed the quiet client after {after:?}"
    );

    // The setting changes at run time, and a bad value is refused and changes nothing.
    assert_eq!(pen.ctl("coalesce 0"), "0\n");
    for bad in ["1001", "-5", "soon"] {
        let reply = pen.ctl(&format!("coalesce {bad}"));
        assert!(
            reply.contains("coalesce") && reply.contains(bad) && reply.contains("0 to 1000"),
            "coalesce {bad}: {reply:?}"
        );
    }
    assert_eq!(pen.ctl("coalesce"), "0\n");
    pen.pen.finish();
}

#[test]
fn coalesce_defaults_to_100_microseconds_and_a_bad_value_stops_pen_before_it_binds() {
    let backend = Backend::tcp(echo_until_eof);
    let pen = Controlled::start(&[], &[backend.spec()]);
    assert_eq!(pen.ctl("coalesce"), "100\n");
    pen.pen.finish();

    let out = support::run_pen(
        &["-f", "-O", "coalesce 2000", "127.0.0.1:1", "127.0.0.1:2"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("coalesce") && out.stderr.contains("2000"),
        "{out:?}"
    );
}
