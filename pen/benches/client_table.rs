//! What one connection costs the balancer core as its client table grows: issue 2 asks that a
//! table of a million clients cost the same per connection as one of 2048 (catalogue L7). This
//! is a benchmark, not a test: it prints figures and asserts nothing.
//!
//!     cargo bench -p pen --bench client_table
//!
//! Each case admits connections from distinct IPv4 client addresses (127.x.y.z), connects and
//! closes each at once: `admit` (client-table lookup, server
//! choice, the new client's insertion and, when the table is full, the least recently seen
//! client's eviction), `connected` and `closed`. Time is passed in, as the daemon does.
//!
//! The cases:
//! - `new clients, table full`: every connection is from a client never seen, into a full
//!   table, so each one evicts. At 2048 and at 1,000,000 slots.
//! - `new clients, table filling`: the same into an empty table; the one of 2048 fills and then
//!   evicts, the one of a million never does.
//! - `returning clients`: every client is in the table and comes back (a lookup hit). The
//!   table of a million spreads over about 150 MiB, so its accesses miss the CPU cache more:
//!   that is memory, not the algorithm, and it shows here.
//!
//! Each figure is the best of several passes (the least disturbed by the rest of the machine).
//!
//! Then the same question end to end, as the catalogue's L7 asks it: a real pen (this
//! workspace's release binary) with `-c 2048` and with `-c 1000000`, in turn, twice each, and
//! 100,000 clients from distinct addresses (127.2.0.0/16 and up) each connecting once through
//! it to an echo server, 32 at a time. It prints connect-to-echo latency (p50, p99), pen's CPU
//! per connection and its RSS at the end.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pen::addr::{Backend, ServerSpec};
use pen::balancer::{Admission, Balancer, Peer, Settings};

const SERVERS: u16 = 5;
const PASSES: usize = 5;

fn balancer(clients_max: usize) -> Balancer {
    let mut b = Balancer::new(Settings::default(), NonZeroUsize::new(clients_max).unwrap());
    for i in 0..SERVERS {
        b.add_server(&ServerSpec {
            backend: Backend::Tcp(SocketAddr::from(([127, 0, 0, 1], 9000 + i))),
            maxc: 0,
            hard: 0,
            weight: 0,
            prio: 0,
        });
    }
    b
}

/// Client number `n` (up to 2^24 distinct addresses).
fn peer(n: u32) -> Peer {
    let [_, x, y, z] = n.to_be_bytes();
    Peer {
        ip: Some(IpAddr::V4(Ipv4Addr::new(127, x, y, z))),
        port: 40000,
    }
}

/// One short connection; panics if the balancer refuses it (it never should here).
fn connection(b: &mut Balancer, p: Peer, now: Instant) {
    match b.admit(p, now) {
        Admission::Connect { conn, .. } => {
            b.connected(conn);
            b.closed(black_box(conn));
        }
        other => panic!("refused: {other:?}"),
    }
}

/// Nanoseconds per connection for clients `first..first + count`, the balancer prepared by
/// `setup` afresh for each pass; the best pass.
fn measure(setup: impl Fn() -> (Balancer, Instant), first: u32, count: u32) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..PASSES {
        let (mut b, start) = setup();
        let t0 = Instant::now();
        for i in 0..count {
            let now = start + Duration::from_micros(u64::from(i));
            connection(&mut b, peer(first + i), now);
        }
        let ns = t0.elapsed().as_nanos() as f64 / f64::from(count);
        best = best.min(ns);
        drop(black_box(b));
    }
    best
}

/// A balancer whose table holds clients `0..n`, seen in that order.
fn filled(clients_max: usize, n: u32) -> (Balancer, Instant) {
    let mut b = balancer(clients_max);
    let start = Instant::now();
    for i in 0..n {
        connection(&mut b, peer(i), start);
    }
    (b, start + Duration::from_secs(1))
}

fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    const SMALL: usize = 2048;
    const LARGE: usize = 1_000_000;
    const RUN: u32 = 200_000;

    // Memory first, before any other table has been allocated and freed.
    let before = vm_rss_kib();
    let (b, _) = filled(LARGE, LARGE as u32);
    let after = vm_rss_kib();
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "memory: a full table of 1,000,000 clients adds {} MiB of RSS ({} bytes per client)",
            after.saturating_sub(before) / 1024,
            after.saturating_sub(before) * 1024 / LARGE as u64
        );
    }
    drop(black_box(b));

    println!("client table: ns per connection (admit, connected, closed), best of {PASSES}");
    println!(
        "{:<44} {:>10} {:>12} {:>7}",
        "case", "2048", "1,000,000", "ratio"
    );
    let row = |name: &str, small: f64, large: f64| {
        println!(
            "{name:<44} {small:>10.0} {large:>12.0} {:>7.2}",
            large / small
        );
    };

    // Full tables, then RUN clients never seen: each evicts the least recently seen.
    let small = measure(|| filled(SMALL, SMALL as u32), 1 << 23, RUN);
    let large = measure(|| filled(LARGE, LARGE as u32), 1 << 23, RUN);
    row("new clients, table full (each evicts)", small, large);

    // Empty tables, RUN new clients: the small one starts evicting after 2048.
    let small = measure(|| (balancer(SMALL), Instant::now()), 0, RUN);
    let large = measure(|| (balancer(LARGE), Instant::now()), 0, RUN);
    row("new clients, table filling", small, large);

    // Every client already in the table comes back, in the order it was first seen (so each
    // is the least recently seen at its turn: the worst order for a cache).
    let small = measure(|| filled(SMALL, SMALL as u32), 0, SMALL as u32);
    let large = measure(|| filled(LARGE, LARGE as u32), 0, LARGE as u32);
    row("returning clients (every one a hit)", small, large);

    end_to_end();
}

// ---- end to end: a real pen ---------------------------------------------------------------

const E2E_CLIENTS: u32 = 100_000;
const E2E_CONCURRENCY: u32 = 32;

/// Client address number `n`: 127.2.0.1 and up, never .0 or .255 in the last byte.
fn client_ip(n: u32) -> Ipv4Addr {
    let (high, low) = (n / 250, n % 250);
    Ipv4Addr::new(
        127,
        2 + (high / 256) as u8,
        (high % 256) as u8,
        low as u8 + 1,
    )
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    l.local_addr().expect("probe address").port()
}

struct Pen(Child);

impl Drop for Pen {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Pen {
    /// (utime + stime in clock ticks, VmRSS in KiB) from /proc.
    fn usage(&self) -> (u64, u64) {
        let pid = self.0.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit(')').next().unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let cpu = ticks(11) + ticks(12); // utime and stime are fields 14 and 15 of the line
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (cpu, rss)
    }
}

fn start_pen(clients_max: usize, backend: SocketAddr) -> (Pen, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_pen"))
        .args(["-f", "-c", &clients_max.to_string()])
        .arg(listen.to_string())
        .arg(backend.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pen");
    let pen = Pen(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "pen did not listen on {listen}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (pen, listen)
}

/// One client: connect from `ip`, send a byte, read it back, close. Its latency.
async fn one_client(ip: Ipv4Addr, pen: SocketAddr) -> std::io::Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t0 = Instant::now();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    let mut stream = socket.connect(pen).await?;
    stream.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    Ok(t0.elapsed())
}

/// Echo every connection's bytes until its EOF.
async fn echo_server(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn end_to_end() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let backend = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the echo server");
        let addr = listener.local_addr().expect("echo server address");
        tokio::spawn(echo_server(listener));
        addr
    });
    println!();
    println!(
        "end to end: {E2E_CLIENTS} clients from distinct addresses, each connecting once, \
         {E2E_CONCURRENCY} at a time"
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>14} {:>10} {:>8}",
        "-c", "conn/s", "p50 µs", "p99 µs", "pen µs/conn", "RSS MiB", "errors"
    );
    for clients_max in [2048, 1_000_000, 2048, 1_000_000] {
        let (pen, listen) = start_pen(clients_max, backend);
        let (cpu0, _) = pen.usage();
        let t0 = Instant::now();
        let (mut latencies, errors) = runtime.block_on(async move {
            let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let mut tasks = Vec::new();
            for _ in 0..E2E_CONCURRENCY {
                let next = next.clone();
                tasks.push(tokio::spawn(async move {
                    let (mut done, mut errors) = (Vec::new(), 0u32);
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= E2E_CLIENTS {
                            return (done, errors);
                        }
                        let attempt = tokio::time::timeout(
                            Duration::from_secs(5),
                            one_client(client_ip(n), listen),
                        );
                        match attempt.await {
                            Ok(Ok(latency)) => done.push(latency),
                            _ => errors += 1,
                        }
                    }
                }));
            }
            let (mut all, mut errors) = (Vec::new(), 0);
            for task in tasks {
                let (done, failed) = task.await.expect("a client task");
                all.extend(done);
                errors += failed;
            }
            (all, errors)
        });
        let elapsed = t0.elapsed();
        let (cpu1, rss) = pen.usage();
        drop(pen);
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        let tick_us = 1e6 / 100.0; // USER_HZ
        println!(
            "{:<12} {:>10.0} {:>10.0} {:>10.0} {:>14.1} {:>10.1} {:>8}",
            clients_max,
            f64::from(E2E_CLIENTS) / elapsed.as_secs_f64(),
            at(0.50),
            at(0.99),
            (cpu1 - cpu0) as f64 * tick_us / f64::from(E2E_CLIENTS),
            rss as f64 / 1024.0,
            errors
        );
    }
}
