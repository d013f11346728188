//! Wall-clock jumps (reliability catalogue O2). pen measures every duration (blacklist, connect
//! and idle timeouts, tracking) on the monotonic clock and reads the wall clock only for the
//! times it shows. The test runs the real binary under libfaketime (Debian's `libfaketime`,
//! which `.ci/run` installs) with the wall clock faked and the monotonic clock left alone, and
//! moves the wall clock an hour forward and then two hours back while a blacklist runs.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::control::{user_args, Controlled};
use support::*;

/// libfaketime's thread-safe library (pen is multi-threaded), wherever the architecture puts it.
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib").ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
            .find(|p| p.exists())
    });
    found.expect("libfaketime is not installed (apt-get install libfaketime; .ci/run does)")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Server 1 refuses, so the first client blacklists it for `-b 3` and fails over to server 0.
/// A jump of the wall clock an hour forward does not end that blacklist (a wall-clock deadline
/// would be long past), a jump two hours back does not stretch it (a wall-clock deadline would
/// be two hours away): it ends 3 s after the failure, by the monotonic clock. What pen shows
/// follows the wall clock: the snapshot's time, and the time stamps of the lines it logs.
#[test]
fn wall_clock_jumps_move_the_times_pen_shows_but_no_duration() {
    let dir = TempDir::new("clock");
    let offset = dir.join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let preload = format!("LD_PRELOAD={}", libfaketime().display());
    let timestamp_file = format!("FAKETIME_TIMESTAMP_FILE={}", offset.display());
    let wrapper = [
        "env",
        preload.as_str(),
        "DONT_FAKE_MONOTONIC=1",
        "FAKETIME_NO_CACHE=1",
        timestamp_file.as_str(),
    ];
    let b = Backend::named("B");
    let dead = Dead::new();
    let control = SocketAddr::new(
        Ipv4Addr::LOCALHOST.into(),
        free_port(Ipv4Addr::LOCALHOST.into()),
    );
    let pen = Pen::spawn(Listen::V4, &wrapper, |l| {
        let mut args: Vec<String> = ["-f", "-r", "-b", "3", "-C", &control.to_string()]
            .map(String::from)
            .to_vec();
        args.extend(user_args());
        args.extend([l.to_string(), b.spec(), dead.spec()]);
        args
    });
    let c = Controlled { pen, control };
    wait_until("the control port", IO_TIMEOUT, || {
        std::net::TcpStream::connect(control).ok()
    });
    let skew = || c.snapshot().time - unix_now();
    assert!(skew().abs() <= 2, "the wall clock is not faked yet");

    // Round robin's first pick is server 1: refused, blacklisted, failover to server 0.
    assert_eq!(c.pen.ask_from(2), "B");
    let failed = Instant::now();
    let blacklisted = || c.snapshot().servers[1].blacklisted;
    assert!(blacklisted(), "the refusing server is blacklisted");

    // An hour forward.
    std::fs::write(&offset, "+1h\n").unwrap();
    let forward = skew();
    assert!(
        (3590..=3610).contains(&forward),
        "pen's wall clock did not jump an hour: {forward} s ahead"
    );
    let still = blacklisted();
    if failed.elapsed() < Duration::from_millis(2500) {
        assert!(still, "an hour's jump forward ended a 3 s blacklist");
    } else {
        eprintln!("machine too slow to check the blacklist right after the jump");
    }
    // What pen logs now carries the jumped time: USR1's statistics are logged at any `-d`.
    // Every line logged before the jump is stamped earlier than this (an hour earlier).
    let jumped = c.snapshot().local_time;
    c.pen.signal("USR1");
    wait_until("statistics stamped an hour ahead", IO_TIMEOUT, || {
        c.pen
            .stderr_text()
            .lines()
            .any(|l| l.get(..jumped.len()).is_some_and(|t| t >= jumped.as_str()))
            .then_some(())
    });

    // Two hours back: the blacklist still ends 3 s after the failure.
    std::fs::write(&offset, "-1h\n").unwrap();
    let back = skew();
    assert!(
        (-3610..=-3590).contains(&back),
        "pen's wall clock did not jump back: {back} s"
    );
    wait_until("the blacklist to end", Duration::from_secs(10), || {
        (!blacklisted()).then_some(())
    });
    let ended = failed.elapsed();
    assert!(
        ended >= Duration::from_millis(2900),
        "the blacklist ended early, after {ended:?}"
    );
    // Server 1 answers again (it was never really dead to round robin: the cursor is at 1).
    let d = dead.revive("D");
    let got: Vec<String> = (0..2).map(|_| c.pen.ask_from(2)).collect();
    assert!(got.contains(&"D".to_string()), "{got:?}");
    drop(d);
    c.pen.finish();
}
