//! A connect burst (reliability catalogue L2): thousands of clients at once, with pen's default
//! listen queue and with `-q 4096`. Every client is served, or refused at once; none hangs.

mod support;

use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use socket2::{Domain, Socket, Type};
use support::*;

/// Clients in each burst.
const BURST: usize = 5000;
/// Client threads; each makes `BURST / BURST_THREADS` clients.
const BURST_THREADS: usize = 8;
/// A client's connect gives up after this (the kernel retries a dropped SYN after 1 s, then 3 s).
const BURST_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A client waits this long for its answer.
const BURST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// pen's `-t` (its default, 3 s) plus 1.5 s: no client may wait longer than that in all.
const BURST_LONGEST_WAIT: Duration = Duration::from_millis(4500);
/// A refused client is told within this.
const BURST_LONGEST_REFUSAL: Duration = Duration::from_secs(2);
/// No new connect after this much of a burst, and no more reading after `BURST_GIVE_UP`. Each
/// blocking call is bounded too, so a burst ends within `BURST_GIVE_UP` plus 5 s, whatever pen
/// does.
const BURST_STOP_CONNECTING: Duration = Duration::from_secs(8);
const BURST_GIVE_UP: Duration = Duration::from_secs(12);
/// Descriptors the test needs: a client socket per connection (a thread holds its whole share at
/// once) and a server connection or two while it answers; pen, which inherits the limit, two
/// per connection.
const BURST_NOFILE: u64 = 3 * BURST as u64 + 1000;

/// What one burst thread saw.
#[derive(Default)]
struct BurstClients {
    attempts: usize,
    served: usize,
    /// Refused or reset (at connect, or closed without an answer), with how long each waited.
    refused: Vec<Duration>,
    /// Connects or reads that ran into their timeout.
    timed_out: Vec<String>,
    /// Anything else: a wrong answer, an unexpected error.
    failed: Vec<String>,
    /// Clients still unread when the thread gave up.
    abandoned: usize,
    /// The longest a served client waited: connect plus read, blocked on pen.
    slowest: Duration,
    /// Served clients that waited a second or more (a dropped SYN is sent again after 1 s).
    delayed: usize,
}

/// A client waiting for its answer: its line, the connection, and how long the connect took.
struct Pending {
    line: String,
    stream: TcpStream,
    waited: Duration,
}

impl BurstClients {
    /// A connect or read error, after `waited` in all.
    fn error(&mut self, what: &str, e: &std::io::Error, waited: Duration) {
        match e.kind() {
            ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => self.refused.push(waited),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                self.timed_out.push(format!("{what}: {e} after {waited:?}"))
            }
            _ => self.failed.push(format!("{what}: {e} after {waited:?}")),
        }
    }

    /// Read a pending client's answer (bounded by `BURST_READ_TIMEOUT`).
    fn finish(&mut self, mut p: Pending) {
        let started = Instant::now();
        let answer = p
            .stream
            .set_read_timeout(Some(BURST_READ_TIMEOUT))
            .and_then(|()| read_line(&mut p.stream));
        let waited = p.waited + started.elapsed();
        match answer {
            Ok(line) if line == p.line => {
                self.served += 1;
                self.slowest = self.slowest.max(waited);
                self.delayed += usize::from(waited >= Duration::from_secs(1));
            }
            Ok(line) => self.failed.push(format!("{}: answered {line:?}", p.line)),
            Err(e) => self.error(&format!("{}: read", p.line), &e, waited),
        }
    }
}

/// A connection to `to`, given up after `BURST_CONNECT_TIMEOUT`. Not bound first: connect picks
/// the source port, and may reuse one whose earlier connection (a previous burst's) is in
/// TIME_WAIT.
fn burst_connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.connect_timeout(&to.into(), BURST_CONNECT_TIMEOUT)?;
    let s = TcpStream::from(socket);
    s.set_write_timeout(Some(BURST_READ_TIMEOUT))?;
    Ok(s)
}

/// Thread `t` of a burst begun at `started`: connect its share of the clients, each sending its
/// line, as fast as it can, then read their answers in turn.
fn burst_thread(t: usize, to: SocketAddr, started: Instant) -> BurstClients {
    let mut seen = BurstClients::default();
    let mut pending = Vec::new();
    for i in 0..BURST / BURST_THREADS {
        if started.elapsed() > BURST_STOP_CONNECTING {
            break;
        }
        seen.attempts += 1;
        let line = format!("client {t}.{i}");
        let connecting = Instant::now();
        match burst_connect(to) {
            Ok(mut stream) => {
                let waited = connecting.elapsed();
                match stream.write_all(format!("{line}\n").as_bytes()) {
                    Ok(()) => pending.push(Pending {
                        line,
                        stream,
                        waited,
                    }),
                    Err(e) => seen.error(&format!("{line}: write"), &e, waited),
                }
            }
            Err(e) => seen.error(&format!("{line}: connect"), &e, connecting.elapsed()),
        }
    }
    let mut pending = pending.into_iter();
    while let Some(p) = pending.next() {
        if started.elapsed() > BURST_GIVE_UP {
            seen.abandoned = pending.len() + 1;
            break;
        }
        seen.finish(p);
    }
    seen
}

/// A server that answers each connection's first line with the same line, then closes: its
/// connections, and their threads, end as soon as they have answered. Its listen queue is
/// 4096 (std's is 128), so that only pen's own queue is tested.
fn line_answering_backend() -> Backend {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())
        .expect("bind backend");
    socket.listen(4096).expect("listen");
    Backend::serve(
        AnyListener::Tcp(socket.into()),
        Arc::new(|mut s: Stream| {
            if let Ok(line) = read_line(&mut s) {
                let _ = s.write_all(format!("{line}\n").as_bytes());
            }
        }),
    )
}

/// The kernel's count of connections its listen queues had no room for (TcpExt
/// ListenOverflows in /proc/net/netstat), for this network namespace; None if unreadable.
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The listen queue lengths of the TCP sockets listening on `port` (ss's Send-Q for a listener).
fn listen_queues(port: u16) -> Vec<u32> {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) is needed: .ci/run installs it");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect()
}

/// Raise this process's soft descriptor limit to its hard limit, which must allow
/// `BURST_NOFILE`; pen, started afterwards, inherits it (and raises its own soft limit too).
fn raise_descriptor_limit() {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit(RLIMIT_NOFILE)");
    assert!(
        hard >= BURST_NOFILE,
        "the descriptor hard limit is {hard}; this test and pen each need {BURST_NOFILE}"
    );
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .unwrap_or_else(|e| panic!("cannot raise RLIMIT_NOFILE from {soft} to {hard}: {e}"));
    }
}

/// One burst of `BURST` clients against a pen started with `opts`, which are named `label` and
/// give each of its listening sockets a queue of `queue` (before the kernel's cap).
fn connect_burst(backend: &Backend, label: &str, opts: &[&str], queue: u32) {
    let mut pen = Pen::start(opts, &[backend.spec()]);
    let (pid, addr) = (pen.pid(), pen.tcp());
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX);
    let queues = listen_queues(addr.port());
    assert!(
        !queues.is_empty() && queues.iter().all(|&q| q == queue.min(somaxconn)),
        "{label}: pen's listen queues are {queues:?}, want {queue} (somaxconn {somaxconn})"
    );
    // One client first, so that whatever pen sets up on its first connection is in the baseline.
    let mut first = burst_connect(addr).expect("connect the first client");
    first.write_all(b"first\n").unwrap();
    first.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(read_line(&mut first).expect("the first answer"), "first");
    drop(first);
    let baseline = stable_fd_count(&pen);
    let overflows_before = listen_overflows();

    let started = Instant::now();
    let threads: Vec<BurstClients> = thread::scope(|scope| {
        let handles: Vec<_> = (0..BURST_THREADS)
            .map(|t| scope.spawn(move || burst_thread(t, addr, started)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("burst thread"))
            .collect()
    });
    let took = started.elapsed();

    let attempts: usize = threads.iter().map(|t| t.attempts).sum();
    let served: usize = threads.iter().map(|t| t.served).sum();
    let refused: Vec<Duration> = threads.iter().flat_map(|t| t.refused.clone()).collect();
    let timed_out: Vec<&String> = threads.iter().flat_map(|t| &t.timed_out).collect();
    let failed: Vec<&String> = threads.iter().flat_map(|t| &t.failed).collect();
    let abandoned: usize = threads.iter().map(|t| t.abandoned).sum();
    let slowest = threads.iter().map(|t| t.slowest).max().unwrap_or_default();
    let delayed: usize = threads.iter().map(|t| t.delayed).sum();
    let slowest_refusal = refused.iter().max().copied().unwrap_or_default();
    let overflows = listen_overflows()
        .zip(overflows_before)
        .map(|(after, before)| after - before);
    eprintln!(
        "connect burst, {label} ({queues:?}): {attempts} clients in {took:?}: {served} served \
         ({delayed} waited 1 s or more, the slowest {slowest:?}), {} refused (the slowest told \
         after {slowest_refusal:?}), {} timed out; listen queue overflows (all tests'): \
         {overflows:?}",
        refused.len(),
        timed_out.len()
    );

    assert_eq!(
        (attempts, abandoned),
        (BURST, 0),
        "{label}: clients tried, and given up unread, within {BURST_GIVE_UP:?}"
    );
    assert!(
        timed_out.is_empty(),
        "{label}: {} clients hung until their timeout (connect {BURST_CONNECT_TIMEOUT:?}, read \
         {BURST_READ_TIMEOUT:?}), e.g. {:?}; stderr:\n{}",
        timed_out.len(),
        &timed_out[..timed_out.len().min(5)],
        pen.stderr_text()
    );
    assert!(
        failed.is_empty(),
        "{label}: {} clients failed otherwise, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(served + refused.len(), BURST, "{label}: served or refused");
    assert!(
        slowest <= BURST_LONGEST_WAIT,
        "{label}: a served client waited {slowest:?} (connect plus answer), more than pen's -t \
         (3 s) plus 1.5 s"
    );
    assert!(
        slowest_refusal <= BURST_LONGEST_REFUSAL,
        "{label}: a refused client was told only after {slowest_refusal:?}"
    );

    pen.assert_alive();
    let settled = poll_until(Duration::from_secs(5), || {
        (fd_count(pid) <= baseline).then_some(())
    });
    assert!(
        settled.is_some(),
        "{label}: pen holds {} descriptors after the burst, {baseline} before",
        fd_count(pid)
    );
    let cpu = cpu_during(pid, || thread::sleep(Duration::from_secs(1)));
    assert!(
        cpu < 0.2,
        "{label}: pen used {cpu:.2} s of CPU in the second after the burst"
    );
    let left = close_wait_sockets(pid);
    assert!(
        left.is_empty(),
        "{label}: pen's sockets in CLOSE_WAIT: {left:?}"
    );
    pen.finish();
}

/// Catalogue L2: 5 000 clients connect as fast as 8 threads can (each thread connects its whole
/// share of 625 before it reads an answer, so the connects come as one burst), once with the
/// default listen queue (500 on each of pen's listening sockets, checked with ss) and once with
/// `-q 4096`. Each client sends a line and waits for it to come back through pen from the
/// server. Every client is served, or refused or reset within 2 s; none runs into its timeout
/// (connect 3 s, answer 5 s), and none waits, connect and answer together, longer than pen's
/// `-t` (3 s) plus 1.5 s: a SYN that finds the queue full is dropped, and the kernel sends it
/// again after 1 s. Afterwards pen's descriptors are back at their baseline, it holds no socket
/// in CLOSE_WAIT, and it uses next to no CPU for a second. Never a rate: how long a burst takes
/// is only printed, with the numbers refused and delayed, the slowest client and the kernel's
/// count of listen queue overflows.
#[test]
fn a_burst_of_5000_connects_is_served_or_refused_at_once_with_either_listen_queue() {
    raise_descriptor_limit();
    let backend = line_answering_backend();
    connect_burst(&backend, "default listen queue", &[], 500);
    connect_burst(&backend, "-q 4096", &["-q", "4096"], 4096);
}
