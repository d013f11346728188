//! Catalogue L8 (reliability.md): soak for leaks.
//!
//! Clients connect, send data, half-close, read the echo and close, in a loop. They come from
//! 10,000 addresses in 127.1.0.0/16, so the client table (`-c 2048`) keeps evicting. Three
//! backends switch at random every 2 s between `echo`, `accept-rst` (accept, then reset) and
//! `hang` (accept, read, never answer). One of them always echoes.
//!
//! The test checks that pen leaks nothing. After the load stops, pen's descriptor count returns
//! to its idle baseline and no server connection stays open. Its resident memory is within 10%
//! of the figure taken after the warm-up. The control port answers during the load, and its
//! view afterwards is consistent. An echo that differs from what was sent fails the test.
//!
//! The run lasts `PEN_SOAK_SECS` seconds, 120 by default. The catalogue's 10 minutes are
//! `PEN_SOAK_SECS=600 cargo test -p pen --test soak -- --nocapture`; its slow variant (1 hour)
//! is `PEN_SOAK_SECS=3600`.

mod support;

use std::collections::BTreeSet;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::control::Controlled;
use support::*;

const ECHO: u8 = 0;
const ACCEPT_RST: u8 = 1;
const HANG: u8 = 2;

/// Client threads.
const CLIENTS: usize = 8;
/// Distinct client addresses.
const CLIENT_IPS: u64 = 10_000;
/// pen's client table size (`-c`).
const TABLE: usize = 2048;
/// How long a client waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a `hang` backend holds a connection at most.
const HANG_BOUND: Duration = Duration::from_secs(10);
/// How often the backends' modes are re-rolled.
const REROLL: Duration = Duration::from_secs(2);
/// How often pen is probed during the load.
const PROBE: Duration = Duration::from_secs(5);

/// A small xorshift64 generator (no extra crates).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The `n`th client address: 127.1.X.Y, never 127.0.0.1.
fn client_ip(n: u64) -> Ipv4Addr {
    let n = n % CLIENT_IPS;
    Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// Connections accepted in each mode, over all backends.
type ModeCounts = Arc<[AtomicUsize; 3]>;

/// A backend whose behaviour is read from `mode` at each accept.
fn switchable(mode: Arc<AtomicU8>, counts: ModeCounts) -> Backend {
    Backend::tcp(move |s| {
        let m = mode.load(Ordering::SeqCst);
        counts[usize::from(m)].fetch_add(1, Ordering::SeqCst);
        match m {
            ACCEPT_RST => s.reset(),
            HANG => hang(s),
            _ => echo(s),
        }
    })
}

/// Echo everything until EOF, then half-close; a stuck peer cannot hold the thread forever.
fn echo(s: Stream) {
    s.set_timeouts(Some(IO_TIMEOUT));
    echo_until_eof(s);
}

/// Read and never answer. Hold the socket until pen closes it or resets it, or for
/// `HANG_BOUND`. An EOF may only be pen's half-close, so it is held on after one.
fn hang(mut s: Stream) {
    let until = Instant::now() + HANG_BOUND;
    s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => thread::sleep(Duration::from_millis(200)),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// What one client cycle ended with.
#[derive(Default)]
struct Outcomes {
    intact: AtomicUsize,
    reset: AtomicUsize,
    closed_early: AtomicUsize,
    timed_out: AtomicUsize,
    connect_failed: AtomicUsize,
    /// Bytes came back that were not what was sent (or a clean EOF cut the echo short).
    corrupt: AtomicUsize,
    first_corruption: Mutex<Option<String>>,
}

impl Outcomes {
    fn summary(&self) -> String {
        let n = |a: &AtomicUsize| a.load(Ordering::SeqCst);
        format!(
            "intact {}, reset {}, closed early {}, timed out {}, connect failed {}, corrupt {}",
            n(&self.intact),
            n(&self.reset),
            n(&self.closed_early),
            n(&self.timed_out),
            n(&self.connect_failed),
            n(&self.corrupt)
        )
    }

    fn corruption(&self, what: String) {
        self.corrupt.fetch_add(1, Ordering::SeqCst);
        self.first_corruption.lock().unwrap().get_or_insert(what);
    }

    /// Count an I/O error by kind.
    fn failed(&self, e: &io::Error) {
        let counter = match e.kind() {
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => &self.reset,
            ErrorKind::WouldBlock | ErrorKind::TimedOut => &self.timed_out,
            _ => &self.closed_early,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// One connect/transfer/close cycle from `ip`, with `len` bytes of `pattern(seed, ...)`.
fn cycle(pen: SocketAddr, ip: Ipv4Addr, seed: u64, len: usize, out: &Outcomes) {
    let mut s = match connect_from(ip, 0, pen) {
        Ok(s) => s,
        Err(_) => {
            out.connect_failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let _ = s.set_read_timeout(Some(REPLY_TIMEOUT));
    let _ = s.set_write_timeout(Some(REPLY_TIMEOUT));
    let data = pattern(seed, len);
    if let Err(e) = s.write_all(&data) {
        out.failed(&e);
        return;
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::with_capacity(len);
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > len {
                    break Ok(());
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    // Whatever came back must be the start of what was sent.
    if !data.starts_with(&got) {
        let at = first_difference(&got, &data).unwrap_or(0);
        out.corruption(format!(
            "client {ip}: sent {len} bytes, got {} back, first difference at byte {at}",
            got.len()
        ));
        return;
    }
    match end {
        Ok(()) if got.len() == len => {
            out.intact.fetch_add(1, Ordering::SeqCst);
        }
        Ok(()) if got.is_empty() => {
            out.closed_early.fetch_add(1, Ordering::SeqCst);
        }
        Ok(()) => out.corruption(format!(
            "client {ip}: sent {len} bytes, got only the first {} back, then a clean EOF",
            got.len()
        )),
        Err(e) => out.failed(&e),
    }
}

/// Client loop: cycles until `deadline` or `stop`.
fn client(id: u64, pen: SocketAddr, deadline: Instant, stop: &AtomicBool, out: &Outcomes) {
    let mut rng = Rng::new(0x5eed_0000 + id);
    let mut n = 0u64;
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        let ip = client_ip(rng.below(CLIENT_IPS));
        let len = 1024 + rng.below(63 * 1024 + 1) as usize;
        cycle(pen, ip, (id << 40) | n, len, out);
        n += 1;
    }
}

/// Re-roll the modes every `REROLL` until `deadline` or `stop`, one backend always echoing.
fn driver(modes: &[Arc<AtomicU8>], deadline: Instant, stop: &AtomicBool) {
    let mut rng = Rng::new(0xd21e);
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        // Half echo, a quarter each of the failure modes.
        let mut rolled: Vec<u8> = modes
            .iter()
            .map(|_| match rng.below(4) {
                0 => ACCEPT_RST,
                1 => HANG,
                _ => ECHO,
            })
            .collect();
        if !rolled.contains(&ECHO) {
            rolled[rng.below(modes.len() as u64) as usize] = ECHO;
        }
        // Switch the echoing ones first, so one echoes at every instant.
        let mut order: Vec<usize> = (0..modes.len()).collect();
        order.sort_by_key(|&i| rolled[i] != ECHO);
        for i in order {
            modes[i].store(rolled[i], Ordering::SeqCst);
        }
        let next = Instant::now() + REROLL;
        while Instant::now() < next.min(deadline) && !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One control command, answered in full within `limit`.
fn ctl_within(control: SocketAddr, command: &str, limit: Duration) -> Result<String, String> {
    let started = Instant::now();
    let run = || -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&control, limit)?;
        s.set_read_timeout(Some(limit))?;
        s.set_write_timeout(Some(limit))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    };
    let reply = run().map_err(|e| format!("control command {command:?}: {e}"))?;
    let took = started.elapsed();
    if took > limit {
        return Err(format!("control command {command:?} took {took:?}"));
    }
    Ok(reply)
}

/// RSS samples `every` apart.
fn rss_samples(pid: u32, n: usize, every: Duration) -> Vec<u64> {
    (0..n)
        .map(|i| {
            if i > 0 {
                thread::sleep(every);
            }
            rss_kib(pid)
        })
        .collect()
}

#[test]
fn soak_leaves_no_descriptors_memory_or_connections_behind() {
    let load = secs_from_env("PEN_SOAK_SECS", 120).max(Duration::from_secs(4));
    let warm_up = Duration::from_secs(15).min(load / 4);

    let modes: Vec<Arc<AtomicU8>> = (0..3).map(|_| Arc::new(AtomicU8::new(ECHO))).collect();
    let counts: ModeCounts = Arc::default();
    let backends: Vec<Backend> = modes
        .iter()
        .map(|m| switchable(m.clone(), counts.clone()))
        .collect();
    let specs: Vec<String> = backends.iter().map(Backend::spec).collect();
    let table = TABLE.to_string();
    // -t 1, -b 1: connect timeout and blacklist time of a second, so failover churns. The
    // idle timeout lets pen close a connection whose server hangs.
    let mut c = Controlled::start(
        &["-t", "1", "-b", "1", "-c", &table, "-o", "idle_timeout 3"],
        &specs,
    );
    let pid = c.pen.pid();
    let pen_addr = c.pen.tcp();
    let control = c.control;

    // 1. pen's idle descriptor baseline, after one served client.
    {
        let data = pattern(1, 4096);
        let mut s = c.pen.connect_from(9);
        s.write_all(&data).expect("send to pen");
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("the echo through pen");
        assert_same_bytes("the first client's echo", &got, &data);
    }
    wait_until(
        "the first client's server connection to close",
        Duration::from_secs(5),
        || {
            backends
                .iter()
                .all(|b| b.open_connections() == 0)
                .then_some(())
        },
    );
    let fd_baseline = stable_fd_count(&c.pen);
    eprintln!(
        "soak: {} s of load, warm-up {warm_up:?}; idle descriptors {fd_baseline}",
        load.as_secs()
    );

    let outcomes = Outcomes::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let deadline = started + load;
    // 2. and 3.: the RSS baseline after the warm-up, probes during the load.
    let (rss_baseline, probes, during) = thread::scope(|scope| {
        for id in 0..CLIENTS as u64 {
            let (outcomes, stop) = (&outcomes, &stop);
            scope.spawn(move || client(id, pen_addr, deadline, stop, outcomes));
        }
        scope.spawn(|| driver(&modes, deadline, &stop));
        let mut rss_baseline = None;
        let mut probes = 0;
        let mut next_probe = started + PROBE;
        let failure = loop {
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            if rss_baseline.is_none() && now >= started + warm_up {
                let samples = rss_samples(pid, 3, Duration::from_millis(500));
                rss_baseline = Some(samples.iter().sum::<u64>() / samples.len() as u64);
                eprintln!(
                    "soak: RSS after the warm-up {samples:?} KiB; {}",
                    outcomes.summary()
                );
            }
            if now >= next_probe {
                next_probe += PROBE;
                probes += 1;
                if !c.pen.is_alive() {
                    break Some("pen exited during the load".to_string());
                }
                match ctl_within(control, "servers", Duration::from_secs(2)) {
                    Ok(reply) if reply.lines().count() == 3 => {}
                    Ok(reply) => break Some(format!("`servers` answered {reply:?}")),
                    Err(e) => break Some(e),
                }
            }
            if outcomes.corrupt.load(Ordering::SeqCst) > 0 {
                break Some("corrupt data".to_string());
            }
            thread::sleep(Duration::from_millis(100));
        };
        stop.store(true, Ordering::SeqCst);
        (rss_baseline, probes, failure)
    });
    eprintln!(
        "soak: load ran {:?}, {probes} probes; {}",
        started.elapsed(),
        outcomes.summary()
    );
    let accepted: Vec<usize> = counts.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    eprintln!("soak: server connections accepted in echo, accept-rst, hang modes: {accepted:?}");
    if let Some(first) = outcomes.first_corruption.lock().unwrap().as_ref() {
        panic!("data corruption: {first}; {}", outcomes.summary());
    }
    if let Some(what) = during {
        c.pen.assert_alive();
        panic!(
            "during the load: {what}; {}; pen's stderr:\n{}",
            outcomes.summary(),
            c.pen.stderr_text()
        );
    }
    let rss_baseline = rss_baseline.expect("the warm-up ended before the load");

    // 4. Back to echo everywhere: descriptors and server connections return to idle.
    for m in &modes {
        m.store(ECHO, Ordering::SeqCst);
    }
    let settled = poll_until(Duration::from_secs(20), || {
        let n = fd_count(pid);
        let open: Vec<usize> = backends.iter().map(Backend::open_connections).collect();
        (n.abs_diff(fd_baseline) <= 3 && open.iter().all(|&o| o == 0)).then_some(n)
    });
    let stopped = Instant::now();
    let fds_after = fd_count(pid);
    let open_after: Vec<usize> = backends.iter().map(Backend::open_connections).collect();
    eprintln!("soak: descriptors idle {fd_baseline}, after the load {fds_after}; server connections open {open_after:?}");
    assert!(
        settled.is_some(),
        "20 s after the load, pen holds {fds_after} descriptors (idle baseline {fd_baseline}, \
         slack 3) and the servers hold {open_after:?} connections (want 0 each); \
         pen's stderr:\n{}",
        c.pen.stderr_text()
    );
    c.pen.assert_alive();

    // 5. Memory: several samples once pen is idle; the lowest stands for the settled figure.
    let rss_after = rss_samples(pid, 5, Duration::from_secs(1));
    let rss_settled = *rss_after.iter().min().unwrap();
    let limit = rss_baseline + rss_baseline / 10;
    eprintln!(
        "soak: RSS baseline {rss_baseline} KiB, after the load {rss_after:?} KiB \
         (settled {rss_settled}, limit {limit}), {:?} after it stopped",
        stopped.elapsed()
    );
    assert!(
        rss_settled <= limit,
        "RSS after the load {rss_settled} KiB, more than 110% of the post-warm-up \
         {rss_baseline} KiB"
    );

    // 6. The control port's view. `snapshot` is the status page's data as JSON (unlike
    // `status`, it writes no file); `recent` is the client table as text. Both are read-only.
    // No server connection or open connection may be left, the table is within `-c`, and the
    // two views of the table name the same clients.
    let snap = c.snapshot();
    for s in &snap.servers {
        assert_eq!(
            s.conns, 0,
            "server {} still counts connections: {s:?}",
            s.index
        );
    }
    assert!(
        snap.conns.is_empty(),
        "open connections left: {:?}",
        snap.conns
    );
    assert_eq!(snap.settings.clients_max, TABLE);
    assert!(
        snap.clients.len() <= TABLE && snap.counters.clients_known <= TABLE,
        "{} clients in the table ({} known), more than -c {TABLE}",
        snap.clients.len(),
        snap.counters.clients_known
    );
    let recent = c.ctl("recent 86400");
    let mut listed = BTreeSet::new();
    for line in recent.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f.as_slice() {
            [addr, "connects", n, "sx", sx, "rx", rx] => addr
                .parse::<Ipv4Addr>()
                .ok()
                .filter(|_| [n, sx, rx].iter().all(|v| v.parse::<u64>().is_ok())),
            _ => None,
        };
        let ip = parsed.unwrap_or_else(|| panic!("`recent` line {line:?} does not parse"));
        assert!(
            ip == loopback(9) || ip.octets()[..2] == [127, 1],
            "`recent` lists {ip}, which no client used"
        );
        assert!(listed.insert(ip), "`recent` lists {ip} twice");
    }
    let in_snapshot: BTreeSet<Ipv4Addr> = snap
        .clients
        .iter()
        .filter_map(|cl| cl.address.parse().ok())
        .collect();
    eprintln!(
        "soak: client table {} entries (snapshot), {} (recent)",
        snap.clients.len(),
        listed.len()
    );
    assert!(
        listed.len() <= TABLE,
        "`recent` lists {} clients, more than -c {TABLE}",
        listed.len()
    );
    assert_eq!(
        listed, in_snapshot,
        "`recent` and `snapshot` disagree on the client table"
    );

    // 7. Every mode was exercised.
    let n = |a: &AtomicUsize| a.load(Ordering::SeqCst);
    assert!(
        n(&outcomes.intact) > 0,
        "no client was served: {}",
        outcomes.summary()
    );
    assert!(
        n(&outcomes.reset) > 0,
        "no reset seen (accept-rst): {}",
        outcomes.summary()
    );
    assert!(
        n(&outcomes.timed_out) + n(&outcomes.closed_early) > 0,
        "no timeout or early close seen (hang): {}",
        outcomes.summary()
    );

    c.pen.finish();
}
