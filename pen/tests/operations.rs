//! Reload and shutdown under load: a SIGHUP that changes the server list while long transfers
//! run, and a SIGTERM with many transfers open and one client that has stopped reading
//! (reliability catalogue D5, D6, F20).

mod support;

use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use pen::balancer::Snapshot;

use support::control::Controlled;
use support::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// How long a writer waits for its gate before giving up (the test has failed by then).
const GATE_WAIT: Duration = Duration::from_secs(15);

/// How much of the echo a reader takes before it tells the test its stream is under way: that
/// much has been through pen and the server and back, so pen has accepted the connection.
const FIRST_ECHO: usize = 64 * KIB;

/// A latch the test opens once: writers hold the end of their streams back until then. It opens
/// itself when dropped, so a failing test does not leave its writers waiting.
struct Gate(AtomicBool);

impl Gate {
    fn new() -> Gate {
        Gate(AtomicBool::new(false))
    }

    fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_open(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Wait (bounded) for the gate to open; false if it never did.
    fn wait(&self) -> bool {
        poll_until(GATE_WAIT, || self.is_open().then_some(())).is_some()
    }
}

/// Opens the gate when dropped, also when the test panics.
struct OpenOnDrop<'a>(&'a Gate);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.open();
    }
}

fn gate_never_opened() -> io::Error {
    io::Error::new(ErrorKind::TimedOut, "the test never opened the gate")
}

/// Read the echo of a stream to its end: the first `FIRST_ECHO` bytes, then a word to the test
/// on `under_way`, then the rest. The bytes, and how the stream ended.
fn read_echo(s: &mut Stream, under_way: &mpsc::Sender<()>) -> (Vec<u8>, io::Result<usize>) {
    let mut got = vec![0u8; FIRST_ECHO];
    if let Err(e) = s.read_exact(&mut got) {
        return (Vec::new(), Err(e));
    }
    let _ = under_way.send(());
    let end = s.read_to_end(&mut got);
    (got, end)
}

/// Check one stream's echo: complete, byte-exact, ended by a clean EOF.
#[track_caller]
fn assert_echoed(
    what: &str,
    sent: io::Result<()>,
    got: &[u8],
    end: io::Result<usize>,
    want: &[u8],
) {
    if let Err(e) = sent {
        panic!("{what}: sending failed: {e}");
    }
    if let Err(e) = end {
        panic!(
            "{what}: the echo ended in an error after {} of {} bytes: {e}",
            got.len(),
            want.len()
        );
    }
    assert_same_bytes(what, got, want);
}

// ---- reload ------------------------------------------------------------------------------------

/// One stream's upload in the reload test: the first MiB at once, then the middle paced (16 KiB
/// every 2 ms) while the gate is shut, so bytes are most likely moving when the HUP comes; the
/// last MiB only once the gate opens (after the reload), so every stream is surely still open
/// then; a half-close at the end.
fn upload_across_the_reload(s: &mut Stream, data: &[u8], seed: u64, gate: &Gate) -> io::Result<()> {
    let (head, rest) = data.split_at(MIB);
    let (middle, tail) = rest.split_at(rest.len() - MIB);
    write_in_chunks(s, head, seed)?;
    for chunk in middle.chunks(16 * KIB) {
        s.write_all(chunk)?;
        if !gate.is_open() {
            thread::sleep(Duration::from_millis(2));
        }
    }
    if !gate.wait() {
        return Err(gate_never_opened());
    }
    write_in_chunks(s, tail, seed + 1)?;
    s.shutdown(Shutdown::Write)
}

/// What identifies a client table entry and what it remembers (its byte counts move as its
/// connections close, so they are left out).
fn remembered(snap: &Snapshot, addresses: &[&str]) -> Vec<(usize, String, Option<i64>, u64)> {
    let mut entries: Vec<_> = snap
        .clients
        .iter()
        .filter(|e| addresses.contains(&e.address.as_str()))
        .map(|e| (e.slot, e.address.clone(), e.last_server, e.connects))
        .collect();
    entries.sort();
    entries
}

/// Catalogue D6: a SIGHUP that changes the server list while 20 long echo streams run. The
/// `-F` file names server A (an echo); the HUP comes with every stream under way (64 KiB echoed)
/// and at least 1 MiB of each still to send, and the rewritten file names B instead. Every stream then
/// completes byte for byte on A (none is reset, cut short or moved: A accepted exactly one
/// connection per stream); new clients go to B; the client table keeps its entries from before
/// the reload. The table remembers a server slot, not an address (man pen.1, SERVER SELECTION),
/// and the new file gives slot 0 to B, so a tracked client returning after the reload goes to B
/// as well.
#[test]
fn sighup_with_a_new_server_list_keeps_long_streams_and_the_client_table() {
    const STREAMS: usize = 20;
    const LEN: usize = 4 * MIB;
    let a = Backend::echo();
    let b = Backend::named("b");
    let dir = TempDir::new("reload");
    let cfg = dir.join("pen.cfg");
    let server = |be: &Backend| format!("server 0 address 127.0.0.1 port {}\n", be.port());
    fs::write(&cfg, server(&a)).unwrap();
    let cfg_arg = cfg.display().to_string();
    // Client tracking is on: no -r.
    let c = Controlled::start(&["-F", &cfg_arg], &[]);

    // Three clients for the table, each served by A.
    let tracked = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    for n in 2..5 {
        let mut s = c.pen.connect_from(n);
        s.write_all(b"hello\n").unwrap();
        assert_eq!(read_line(&mut s).unwrap(), "hello", "127.0.0.{n} through A");
    }
    let before = remembered(&c.snapshot(), &tracked);
    assert_eq!(
        before.len(),
        3,
        "client table before the reload: {before:?}"
    );
    assert!(
        before.iter().all(|e| e.2 == Some(0)),
        "every tracked client on server 0: {before:?}"
    );

    let data: Vec<Vec<u8>> = (0..STREAMS).map(|i| pattern(100 + i as u64, LEN)).collect();
    let gate = Gate::new();
    let (under_way_tx, under_way) = mpsc::channel();
    thread::scope(|scope| {
        let _open = OpenOnDrop(&gate);
        let mut streams = Vec::new();
        for (i, want) in data.iter().enumerate() {
            let mut s = c.pen.connect();
            s.set_read_timeout(Some(Duration::from_secs(30)));
            let mut w = s.try_clone().expect("clone the client socket");
            let gate = &gate;
            let writer =
                scope.spawn(move || upload_across_the_reload(&mut w, want, i as u64, gate));
            let tx = under_way_tx.clone();
            let reader = scope.spawn(move || read_echo(&mut s, &tx));
            streams.push((writer, reader));
        }
        for n in 0..STREAMS {
            under_way
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("only {n} of {STREAMS} streams under way"));
        }

        fs::write(&cfg, server(&b)).unwrap();
        c.pen.signal("HUP");
        let b_first = format!("0 addr 127.0.0.1 port {} ", b.port());
        wait_until("the re-read to name B", Duration::from_secs(5), || {
            c.ctl("servers").starts_with(&b_first).then_some(())
        });
        // Every stream is still open (each holds its last MiB until the gate opens).
        let snap = c.snapshot();
        assert!(
            snap.conns.len() >= STREAMS,
            "{} connections open after the reload, {STREAMS} streams",
            snap.conns.len()
        );
        assert_eq!(
            remembered(&snap, &tracked),
            before,
            "the client table after the reload"
        );
        assert_eq!(c.pen.ask_from(50), "b", "a new client after the reload");
        assert_eq!(
            c.pen.ask_from(2),
            "b",
            "a tracked client returns to its slot, now B"
        );

        gate.open();
        for (i, (writer, reader)) in streams.into_iter().enumerate() {
            let sent = writer.join().expect("writer thread");
            let (got, end) = reader.join().expect("reader thread");
            assert_echoed(&format!("stream {i}"), sent, &got, end, &data[i]);
        }
    });
    assert_eq!(
        a.accepted.load(Ordering::SeqCst),
        STREAMS + 3,
        "connections to A: one per stream and tracked client, none reconnected"
    );
    assert_eq!(b.accepted.load(Ordering::SeqCst), 2, "connections to B");
    c.pen.finish();
}

// ---- shutdown ----------------------------------------------------------------------------------

/// One client's upload in the shutdown test: the first half, then (once the gate opens, after
/// SIGTERM) the rest and a half-close.
fn upload_across_the_stop(s: &mut Stream, data: &[u8], seed: u64, gate: &Gate) -> io::Result<()> {
    let (head, tail) = data.split_at(data.len() / 2);
    write_in_chunks(s, head, seed)?;
    if !gate.wait() {
        return Err(gate_never_opened());
    }
    write_in_chunks(s, tail, seed + 1)?;
    s.shutdown(Shutdown::Write)
}

/// Write to `s` without ever reading until pen stops taking bytes (none taken for 500 ms): the
/// echo server's replies fill the client's receive window, then pen's buffers toward the
/// client, then the server's, so pen is stuck flushing to this client. The bytes written.
fn write_until_stuck(s: &TcpStream) -> usize {
    // A blocking write with a send timeout returns what it wrote, or fails when it could write
    // nothing for that long.
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .expect("send timeout");
    let chunk = pattern(9, 64 * KIB);
    let started = Instant::now();
    let mut total = 0;
    let mut w = s;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(10) && total < 512 * MIB,
            "pen took {total} bytes in {:?} from a client that never reads, without pushing \
             back",
            started.elapsed()
        );
        match w.write(&chunk) {
            Ok(n) => total += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("the stalled client's write failed after {total} bytes: {e}"),
        }
    }
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("send timeout");
    total
}

/// Wait (at most 30 s) for `s` to be closed or reset by its peer, without reading from it (which
/// would unblock pen's flush). When, and the events: EPOLLERR with EPOLLHUP is a reset,
/// EPOLLRDHUP alone a FIN.
fn wait_for_peer_close(s: &TcpStream) -> Option<(Instant, EpollFlags)> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
    // Not EPOLLIN: the data already queued must not wake us. EPOLLERR and EPOLLHUP always do.
    epoll
        .add(s, EpollEvent::new(EpollFlags::EPOLLRDHUP, 0))
        .expect("epoll add");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = [EpollEvent::empty()];
    while Instant::now() < deadline {
        match epoll.wait(&mut events, 1000u16) {
            Ok(1) => return Some((Instant::now(), events[0].events())),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("epoll_wait: {e}"),
        }
    }
    None
}

/// Catalogue F20 and D5: SIGTERM with 40 echo transfers of 1.5 MiB in flight (half sent, half
/// to come) and one client that has stopped reading while pen still has data for it. pen
/// refuses new connects within 3 s of the signal (its listener is closed first; 3 s, not pen's
/// immediate close, for a loaded 2-core machine), still refuses them later, and lets every
/// transfer that can finish finish byte for byte. The stalled connection is reset when the
/// 10 s grace period ends (seen between 9 and 16 s after the signal): its client sees
/// ECONNRESET after the bytes already queued, never a clean EOF. pen then exits 0 within 16 s
/// of the signal, without a panic, and removes its pid file. The one-connection versions are
/// in robustness.rs.
#[test]
fn sigterm_with_many_transfers_and_a_stalled_client_finishes_them_resets_it_and_exits_0() {
    const CLIENTS: usize = 40;
    const LEN: usize = 3 * MIB / 2;
    let echo = Backend::echo();
    let dir = TempDir::new("term");
    let pid_file = dir.join("pen.pid");
    let mut pen = Pen::start(&["-p", pid_file.to_str().unwrap()], &[echo.spec()]);
    let addr = pen.tcp();
    assert_eq!(read_pid_file(&pid_file), pen.pid().to_string());

    // Small buffers on the stalled client's side, so that little is needed to fill them.
    let tuning = Tuning {
        rcvbuf: Some(64 * KIB),
        sndbuf: Some(64 * KIB),
        mss: None,
    };
    let stalled = connect_tuned(addr, tuning).expect("connect the stalled client");
    let pushed = write_until_stuck(&stalled);
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        1,
        "the stalled client's connection reached the server ({pushed} bytes written)"
    );

    let data: Vec<Vec<u8>> = (0..CLIENTS).map(|i| pattern(200 + i as u64, LEN)).collect();
    let gate = Gate::new();
    let (under_way_tx, under_way) = mpsc::channel();
    let term = thread::scope(|scope| {
        let _open = OpenOnDrop(&gate);
        let watcher = scope.spawn(|| wait_for_peer_close(&stalled));
        let mut transfers = Vec::new();
        for (i, want) in data.iter().enumerate() {
            let mut s = pen.connect();
            s.set_read_timeout(Some(Duration::from_secs(20)));
            let mut w = s.try_clone().expect("clone the client socket");
            let gate = &gate;
            let writer = scope.spawn(move || upload_across_the_stop(&mut w, want, i as u64, gate));
            let tx = under_way_tx.clone();
            let reader = scope.spawn(move || read_echo(&mut s, &tx));
            transfers.push((writer, reader));
        }
        for n in 0..CLIENTS {
            under_way
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("only {n} of {CLIENTS} transfers under way"));
        }

        pen.signal("TERM");
        let term = Instant::now();
        wait_until(
            "new connects to be refused after SIGTERM",
            Duration::from_secs(3),
            || match connect(addr) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(()),
                _ => None,
            },
        );
        pen.assert_alive();

        gate.open();
        for (i, (writer, reader)) in transfers.into_iter().enumerate() {
            let sent = writer.join().expect("writer thread");
            let (got, end) = reader.join().expect("reader thread");
            assert_echoed(&format!("transfer {i}"), sent, &got, end, &data[i]);
        }
        let refused = connect(addr).map(drop).map_err(|e| e.kind());
        assert_eq!(
            refused,
            Err(ErrorKind::ConnectionRefused),
            "a connect once the transfers are done ({:?} after SIGTERM)",
            term.elapsed()
        );

        let (closed_at, events) = watcher
            .join()
            .expect("watcher thread")
            .expect("the stalled connection was still open 30 s after it was made");
        let cut_after = closed_at
            .checked_duration_since(term)
            .unwrap_or_else(|| panic!("the stalled connection was closed before SIGTERM"));
        assert!(
            cut_after >= Duration::from_secs(9) && cut_after <= Duration::from_secs(16),
            "the stalled connection ended {cut_after:?} after SIGTERM (grace period 10 s); \
             events {events:?}"
        );
        term
    });

    // Reading now takes the bytes pen had delivered before the cut, then the reset.
    let end = drain(&mut &stalled);
    assert_eq!(
        end.map(|_| ()),
        Err(ErrorKind::ConnectionReset),
        "the stalled client's connection, cut at the end of the grace period, must end in a \
         reset, not look complete"
    );

    let left = (term + Duration::from_secs(16)).saturating_duration_since(Instant::now());
    let status = pen.wait_exit(left);
    let stderr = pen.stderr_text();
    assert!(
        status.is_some_and(|s| s.success()),
        "pen did not exit 0 within 16 s of SIGTERM: {status:?}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "pen panicked; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("grace period over"),
        "the stalled connection was not cut by the grace period; stderr:\n{stderr}"
    );
    assert!(!pid_file.exists(), "the pid file is left after exit");
}
