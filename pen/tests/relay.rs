//! The data plane through the real binary: byte-exact transfers both ways at once, half-close in
//! each direction, a server that speaks first, a server that resets mid-stream, many concurrent
//! connections, and back-pressure: a peer that stops reading, or reads through a tiny window
//! (reliability catalogue F8, F9, F10).

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const MIB: usize = 1024 * 1024;

/// Write `data` in pseudo-random chunk sizes (see `write_in_chunks`), then half-close.
fn upload(s: &mut Stream, data: &[u8], seed: u64) -> std::io::Result<()> {
    write_in_chunks(s, data, seed)?;
    s.shutdown(Shutdown::Write)
}

fn read_all(s: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read to EOF");
    got
}

#[test]
fn eight_mib_each_way_at_once_byte_exact() {
    let up = pattern(1, 8 * MIB);
    let down = pattern(2, 8 * MIB);
    let (tx, rx) = channel::<Vec<u8>>();
    let down_for_backend = down.clone();
    // Not an echo: the backend sends its own stream while it receives the client's, so bytes
    // crossing over between directions would show.
    let backend = Backend::tcp(move |mut s| {
        let mut writer = s.try_clone().expect("clone");
        let down = down_for_backend.clone();
        let w = thread::spawn(move || upload(&mut writer, &down, 3));
        let got = read_all(&mut s);
        let _ = w.join();
        let _ = tx.lock().unwrap().send(got);
    });
    let pen = Pen::start(&[], &[backend.spec()]);

    let mut client = pen.connect();
    let mut writer = client.try_clone().unwrap();
    let up_for_writer = up.clone();
    let w = thread::spawn(move || upload(&mut writer, &up_for_writer, 4));
    let got_down = read_all(&mut client);
    w.join().unwrap().expect("upload");
    let got_up = rx.recv_timeout(IO_TIMEOUT).expect("backend result");
    assert_same_bytes("server -> client", &got_down, &down);
    assert_same_bytes("client -> server", &got_up, &up);
    drop(client);
    pen.finish();
}

#[test]
fn client_half_close_still_gets_the_whole_reply() {
    let request = pattern(5, 100 * 1024);
    let reply = pattern(6, MIB);
    let (tx, rx) = channel::<Vec<u8>>();
    let reply_for_backend = reply.clone();
    let backend = Backend::tcp(move |mut s| {
        let got = read_all(&mut s);
        let _ = tx.lock().unwrap().send(got);
        let _ = s.write_all(&reply_for_backend);
        // Closes at once.
    });
    let pen = Pen::start(&[], &[backend.spec()]);
    let mut client = pen.connect();
    client.write_all(&request).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let got = read_all(&mut client);
    assert_same_bytes("request", &rx.recv_timeout(IO_TIMEOUT).unwrap(), &request);
    assert_same_bytes("reply after the client's half-close", &got, &reply);
    drop(client);
    pen.finish();
}

#[test]
fn client_half_close_with_a_quick_small_reply() {
    // C pen 0.34.1 lost this reply under epoll (reference §3.2, transcript 10).
    let backend = Backend::tcp(|mut s| {
        let mut b = [0u8; 64];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        let _ = s.write_all(b"bye\n");
    });
    let pen = Pen::start(&[], &[backend.spec()]);
    for _ in 0..20 {
        let mut client = pen.connect();
        client.write_all(b"hello").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut client), b"bye\n");
    }
    pen.finish();
}

#[test]
fn server_half_close_keeps_the_other_direction_open() {
    let greeting = pattern(7, MIB);
    let after = pattern(8, 200 * 1024);
    let (tx, rx) = channel::<Vec<u8>>();
    let greeting_for_backend = greeting.clone();
    let backend = Backend::tcp(move |mut s| {
        if s.write_all(&greeting_for_backend).is_err() {
            return;
        }
        let _ = s.shutdown(Shutdown::Write);
        let got = read_all(&mut s);
        let _ = tx.lock().unwrap().send(got);
    });
    let pen = Pen::start(&[], &[backend.spec()]);
    let mut client = pen.connect();
    let got = read_all(&mut client);
    assert_same_bytes("server data before its half-close", &got, &greeting);
    // The server has finished sending; the client still can.
    client.write_all(&after).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let received = rx
        .recv_timeout(IO_TIMEOUT)
        .expect("backend saw the client's EOF");
    assert_same_bytes(
        "client data after the server's half-close",
        &received,
        &after,
    );
    drop(client);
    pen.finish();
}

/// A server that answers and closes sends its last bytes and its FIN in one segment; pen
/// passes them on the same way, so the client's kernel has one segment fewer to take and
/// acknowledges both at once (C pen sends the FIN on its own). Counted by `ss`: by the time the
/// client has read EOF its socket has received the SYN-ACK, pen's ACK of the request and the
/// reply with the FIN; a separate FIN would make four.
#[test]
fn a_reply_and_its_fin_leave_in_one_segment_as_they_came() {
    let backend = Backend::tcp(|s| {
        let Stream::Tcp(t) = s else { return };
        let mut b = [0u8; 64];
        if !matches!((&t).read(&mut b), Ok(n) if n > 0) {
            return;
        }
        // MSG_MORE holds the reply until the shutdown adds the FIN to it.
        let _ = socket2::SockRef::from(&t).send_with_flags(b"reply\n", nix::libc::MSG_MORE);
        let _ = t.shutdown(Shutdown::Write);
        let _ = drain(&mut &t);
    });
    let pen = Pen::start(&[], &[backend.spec()]);
    for _ in 0..3 {
        let mut client = pen.connect_from(2);
        client.write_all(b"ask\n").unwrap();
        assert_eq!(read_all(&mut client), b"reply\n");
        let segs = segs_in(client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert!(
            segs <= 3,
            "the client's socket received {segs} segments (want 3: the reply's FIN came on its \
             own)"
        );
    }
    pen.finish();
}

/// The banner comes at once: pen holds the handshake's last ACK back for a client's request
/// only when one is in (see the next test), and a held ACK would keep the server from even
/// accepting for 200 ms. The fastest of three must beat that.
#[test]
fn server_speaks_first() {
    let backend = Backend::banner("220 ready\r\n");
    let pen = Pen::start(&[], &[backend.spec()]);
    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let mut client = pen.connect();
        // The client sends nothing.
        assert_eq!(read_line(&mut client).expect("banner"), "220 ready\r");
        fastest = fastest.min(started.elapsed());
    }
    assert!(
        fastest < Duration::from_millis(150),
        "the banner took {fastest:?} at best"
    );
    pen.finish();
}

/// A backend that answers a client's first bytes with the number of segments its socket had
/// received by then (`ss`); it greets first ("220 hello") while `greet` is set.
fn segment_counter(greet: Arc<AtomicBool>) -> Backend {
    Backend::tcp(move |s| {
        let Stream::Tcp(t) = s else { return };
        if greet.load(Ordering::SeqCst) {
            let _ = (&t).write_all(b"220 hello\n");
        }
        let mut b = [0u8; 64];
        if !matches!((&t).read(&mut b), Ok(n) if n > 0) {
            return;
        }
        let segs = segs_in(t.local_addr().unwrap(), t.peer_addr().unwrap());
        let _ = (&t).write_all(format!("{segs}\n").as_bytes());
    })
}

/// A client whose request is in when pen connects: the request carries the handshake's last
/// ACK, so the server's socket has received two segments by then (the SYN, and the ACK with the
/// request), not three, and its server was woken once. To have the request in for certain, the
/// client waits in the listen queue: `-x 1` and a silent connection holding the one slot until
/// the request is sent. (Silent connections teach pen nothing, and two clients that spoke first
/// are fewer than it needs to hold the ACK on that alone: the next test.)
#[test]
fn a_request_in_hand_carries_the_handshakes_last_ack() {
    let backend = segment_counter(Arc::default());
    let pen = Pen::start(&["-x", "1"], &[backend.spec()]);
    for _ in 0..2 {
        let before = backend.accepted.load(Ordering::SeqCst);
        let holder = pen.connect();
        // Admitted and connected to the server before the next client comes.
        wait_until("the holder's server connection", IO_TIMEOUT, || {
            (backend.accepted.load(Ordering::SeqCst) > before).then_some(())
        });
        let mut client = pen.connect();
        client.write_all(b"ask\n").unwrap();
        thread::sleep(Duration::from_millis(50));
        drop(holder);
        let segs = read_line(&mut client).expect("the server's count");
        assert_eq!(
            segs, "2",
            "segments the server had received with the request (3: the ACK came alone)"
        );
    }
    pen.finish();
}

/// Clients that speak first teach pen (per data-plane thread) to hold each connect's last ACK
/// for the client's bytes, so the server's socket gets two segments, not three, even when the
/// client waits a little before it sends. A server that then speaks first gets the ACK after
/// pen's 10 ms, not the kernel's 200 ms, and holding stops.
#[test]
fn connects_learn_to_hold_their_ack_and_a_banner_still_comes_soon() {
    let greet = Arc::new(AtomicBool::new(false));
    let backend = segment_counter(greet.clone());
    let pen = Pen::spawn(Listen::V4, &["env", "PEN_THREADS=1"], |l| {
        vec!["-f".to_string(), l.to_string(), backend.spec()]
    });
    let mut seen = Vec::new();
    for _ in 0..10 {
        let mut client = pen.connect();
        // Long enough for pen to have connected before the bytes come.
        thread::sleep(Duration::from_millis(2));
        client.write_all(b"hi\n").unwrap();
        let segs = read_line(&mut client).expect("the server's count");
        seen.push(segs.parse::<u32>().expect("a number"));
    }
    let held = seen[4..].iter().filter(|&&n| n == 2).count();
    assert!(
        held >= 3,
        "segments the server had received with the request: {seen:?} (2: the ACK came with it)"
    );

    greet.store(true, Ordering::SeqCst);
    let mut banners = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let mut client = pen.connect();
        assert_eq!(read_line(&mut client).expect("banner"), "220 hello");
        banners.push(started.elapsed());
        client.write_all(b"bye\n").unwrap();
        read_line(&mut client).expect("the server's count");
    }
    assert!(
        banners[0] >= Duration::from_millis(5) && banners[0] < Duration::from_millis(150),
        "the first banner after the clients took {:?} (held, then sent at 10 ms)",
        banners[0]
    );
    assert!(
        banners[1] < Duration::from_millis(150),
        "the next banner took {:?}",
        banners[1]
    );
    pen.finish();
}

#[test]
fn server_reset_mid_stream_closes_that_client_only() {
    // Server 0 sends some bytes and resets; server 1 echoes. Round robin: first client -> 1.
    let resetter = Backend::tcp(|mut s| {
        let mut b = [0u8; 1];
        if !matches!(s.read(&mut b), Ok(1)) {
            return;
        }
        let _ = s.write_all(&pattern(9, 64 * 1024));
        s.reset();
    });
    let echo = Backend::echo();
    let pen = Pen::start(&["-r"], &[resetter.spec(), echo.spec()]);
    let mut steady = pen.connect();
    steady.write_all(b"one\n").unwrap();
    assert_eq!(read_line(&mut steady).unwrap(), "one");

    let mut victim = pen.connect();
    victim.write_all(b"?").unwrap();
    victim.set_read_timeout(Some(std::time::Duration::from_secs(3)));
    // It must end (EOF or a reset), not hang: the read timeout is the bound.
    match drain(&mut victim) {
        Ok(_) => {}
        Err(kind) => assert!(
            !matches!(
                kind,
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the client of a reset server was not closed within 3 s"
        ),
    }
    steady.write_all(b"two\n").unwrap();
    assert_eq!(
        read_line(&mut steady).unwrap(),
        "two",
        "other connection affected"
    );
    drop((steady, victim));
    pen.finish();
}

/// Catalogue F5, both ways: a reset on one side is passed on as a reset, after the bytes that
/// came before it, so the other side can tell a cut transfer from a complete one. (C pen
/// closes the other side with a FIN.)
#[test]
fn a_reset_is_passed_on_as_a_reset_both_ways() {
    // The server sends part of a reply, then resets.
    let resetter = Backend::tcp(|mut s| {
        let mut b = [0u8; 1];
        if matches!(s.read(&mut b), Ok(1)) {
            let _ = s.write_all(b"partial");
            std::thread::sleep(Duration::from_millis(100));
            s.reset();
        }
    });
    let pen = Pen::start(&[], &[resetter.spec()]);
    let mut client = pen.connect();
    client.write_all(b"?").unwrap();
    let mut partial = [0u8; 7];
    client.read_exact(&mut partial).unwrap();
    assert_eq!(&partial, b"partial");
    assert_eq!(
        drain(&mut client),
        Err(std::io::ErrorKind::ConnectionReset),
        "the server's reset reached the client as a clean close"
    );
    drop(client);
    pen.finish();

    // The client sends part of an upload, then resets: the server must see the reset too.
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let sink = Backend::tcp(move |mut s| {
        let _ = tx.lock().unwrap().send(drain(&mut s));
    });
    let pen = Pen::start(&[], &[sink.spec()]);
    let mut client = pen.connect();
    client.write_all(&pattern(3, 10_000)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    client.reset();
    let seen = rx
        .recv_timeout(IO_TIMEOUT)
        .expect("the server's read ended");
    assert_eq!(
        seen,
        Err(std::io::ErrorKind::ConnectionReset),
        "the client's reset reached the server as a clean close"
    );
    pen.finish();
}

#[test]
fn server_dying_mid_stream_closes_the_client() {
    // The backend writes part of a reply and the whole backend goes away.
    let (tx, rx) = channel::<()>();
    let backend = Backend::tcp(move |mut s| {
        let mut b = [0u8; 1];
        if matches!(s.read(&mut b), Ok(1)) {
            let _ = s.write_all(b"partial");
            let _ = tx.lock().unwrap().send(());
            // Hold until the test kills the backend.
            let _ = drain(&mut s);
        }
    });
    let pen = Pen::start(&[], &[backend.spec()]);
    let mut client = pen.connect();
    client.write_all(b"?").unwrap();
    rx.recv_timeout(IO_TIMEOUT)
        .expect("backend got the request");
    let mut partial = [0u8; 7];
    client.read_exact(&mut partial).unwrap();
    drop(backend); // shuts down every backend connection
    assert!(
        matches!(
            drain(&mut client),
            Ok(_) | Err(std::io::ErrorKind::ConnectionReset)
        ),
        "the client was not closed when its server died"
    );
    drop(client);
    pen.finish();
}

#[test]
fn two_hundred_concurrent_connections_echo() {
    let echo = Backend::echo();
    let pen = Pen::start(&[], &[echo.spec()]);
    let mut clients: Vec<Stream> = (0..200).map(|_| pen.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("message {i}\n").as_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(read_line(c).unwrap(), format!("message {i}"));
    }
    drop(clients);
    pen.finish();
}

#[test]
fn two_hundred_clients_in_parallel_threads() {
    let echo = Backend::echo();
    let pen = Pen::start(&[], &[echo.spec()]);
    let addr = pen.tcp();
    let workers: Vec<_> = (0..200u64)
        .map(|i| {
            thread::spawn(move || {
                let data = pattern(100 + i, 20_000);
                let mut s = Stream::Tcp(connect(addr).expect("connect"));
                let mut w = s.try_clone().unwrap();
                let sent = data.clone();
                let writer =
                    thread::spawn(move || w.write_all(&sent).and(w.shutdown(Shutdown::Write)));
                let got = read_all(&mut s);
                writer.join().unwrap().expect("write");
                first_difference(&got, &data).map(|at| (i, at))
            })
        })
        .collect();
    let failures: Vec<_> = workers
        .into_iter()
        .filter_map(|w| w.join().expect("worker"))
        .collect();
    assert!(
        failures.is_empty(),
        "connections with corrupt data: {failures:?}"
    );
    pen.finish();
}

#[test]
fn idle_timeout_closes_a_silent_connection_only() {
    let echo = Backend::echo();
    let pen = Pen::start(&["-o", "idle_timeout 2"], &[echo.spec()]);
    let mut silent = pen.connect();
    silent.write_all(b"hi\n").unwrap();
    assert_eq!(read_line(&mut silent).unwrap(), "hi");
    let since = std::time::Instant::now();
    let mut busy = pen.connect();
    // The busy one talks every 300 ms for 3 s, past the 2 s idle timeout.
    for i in 0..10 {
        busy.write_all(format!("{i}\n").as_bytes()).unwrap();
        assert_eq!(
            read_line(&mut busy).unwrap(),
            i.to_string(),
            "busy connection cut"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(
        drain(&mut silent),
        Ok(0),
        "the idle connection was not closed"
    );
    assert!(
        since.elapsed() >= std::time::Duration::from_millis(1900),
        "closed after {:?}, before the idle timeout",
        since.elapsed()
    );
    drop((silent, busy));
    pen.finish();
}

#[test]
fn fastclose_up_closes_when_the_server_finishes() {
    let (tx, rx) = channel::<Vec<u8>>();
    let backend = Backend::tcp(move |mut s| {
        let _ = s.write_all(b"bye\n");
        let _ = s.shutdown(Shutdown::Write);
        // Without fastclose pen would keep this side open while the client is.
        let got = read_all(&mut s);
        let _ = tx.lock().unwrap().send(got);
    });
    let pen = Pen::start(&["-o", "tcp_fastclose up"], &[backend.spec()]);
    let mut client = pen.connect();
    assert_eq!(read_all(&mut client), b"bye\n");
    // The client never closes; pen must close the server side itself.
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("pen did not close the server connection under tcp_fastclose up");
    assert!(got.is_empty());
    drop(client);
    pen.finish();
}

// ---- back-pressure (F8, F9, F10) ----------------------------------------------------------------

/// How long a peer does not read.
const STALL: Duration = Duration::from_millis(1500);

/// The stream a stalled peer is offered: larger than every kernel buffer on its path (see
/// `kernel_capacity`), so that pen, not the kernel, would have to hold the rest.
const STREAM: usize = 64 * MIB;

/// Buffer size of the test's own sockets on the stalled path (the kernel doubles it), so that
/// what the kernel may hold does not depend on autotuning at our end.
const PINNED: usize = 256 * 1024;

/// How much pen's resident memory may grow while a peer does not read. Pen keeps at most one
/// 64 KiB read per direction, and each worker thread has a 64 KiB scratch buffer that may be
/// touched for the first time; the rest is allocator slack. The kernel socket buffers, which
/// hold megabytes here, are kernel memory and not in pen's RSS. A relay that went on reading
/// would hold tens of MiB of the stream instead.
const RSS_GROWTH_KIB: u64 = 8 * 1024;

/// CPU pen may use during a stall: once the kernel buffers have filled (some MiB of copying,
/// well under 0.1 s) it has nothing to do until the peer reads. A relay that polled a
/// full socket instead of waiting for it to become writable would use the whole stall.
const STALL_CPU: f64 = 0.2;

/// The most stream bytes the kernel can hold on a stalled path besides pen: pen's two sockets
/// autotune up to the system maximum (one receives, one sends), the test's two sockets are
/// pinned at `PINNED` (doubled by the kernel), and 1 MiB covers pen's own 64 KiB and the
/// kernel's per-packet overshoot. None if the sysctls cannot be read.
fn kernel_capacity() -> Option<usize> {
    let (rmem, wmem) = tcp_buffer_max()?;
    Some(rmem + wmem + 2 * 2 * PINNED + MIB)
}

fn pinned_send() -> Tuning {
    Tuning {
        sndbuf: Some(PINNED),
        ..Tuning::default()
    }
}

fn pinned_receive() -> Tuning {
    Tuning {
        rcvbuf: Some(PINNED),
        ..Tuning::default()
    }
}

/// What pen did while a peer did not read for `STALL`.
struct Stall {
    /// Peak VmRSS growth over the value before the stream started, in KiB.
    rss_growth_kib: u64,
    /// CPU seconds pen used.
    cpu: f64,
    /// Bytes the sender had handed to its kernel when the stall ended.
    sent: usize,
}

/// Watch pen for `STALL` (sampling its RSS every 20 ms, so at most about 75 samples), starting
/// from `base_kib`; `sent` counts the sender's progress.
fn watch_stall(pid: u32, base_kib: u64, sent: &AtomicUsize) -> Stall {
    let mut peak = base_kib;
    let cpu = cpu_during(pid, || {
        let end = Instant::now() + STALL;
        while Instant::now() < end {
            peak = peak.max(rss_kib(pid));
            thread::sleep(Duration::from_millis(20));
        }
        peak = peak.max(rss_kib(pid));
    });
    Stall {
        rss_growth_kib: peak.saturating_sub(base_kib),
        cpu,
        sent: sent.load(Ordering::SeqCst),
    }
}

/// Pen held back instead of buffering, and waited instead of spinning.
#[track_caller]
fn assert_back_pressure(stall: &Stall, base_kib: u64) {
    eprintln!(
        "stall: pen RSS {base_kib} KiB + {} KiB, CPU {:.3} s; sender got {} bytes out",
        stall.rss_growth_kib, stall.cpu, stall.sent
    );
    assert!(base_kib > 0, "no VmRSS for pen");
    assert!(
        stall.rss_growth_kib <= RSS_GROWTH_KIB,
        "pen's RSS grew by {} KiB (from {base_kib} KiB) while the peer did not read",
        stall.rss_growth_kib
    );
    assert!(
        stall.cpu < STALL_CPU,
        "pen used {:.2} s of CPU in a {STALL:?} stall: it spins on a full socket",
        stall.cpu
    );
    // The sender must have blocked: pen held no more than the kernel buffers allow. Only
    // meaningful if those are smaller than the stream (with tcp_rmem's maximum at 32 MiB, they
    // are about 38 MiB).
    match kernel_capacity() {
        Some(capacity) if capacity < STREAM => assert!(
            stall.sent <= capacity,
            "the sender got {} bytes out during the stall, more than the {capacity} the \
             kernel buffers hold: pen buffered the rest",
            stall.sent
        ),
        other => eprintln!(
            "not checked that the sender blocked: kernel buffers of {other:?} bytes may hold \
             the whole {STREAM}-byte stream"
        ),
    }
}

/// Write `data` in 64 KiB pieces, counting each piece once the kernel took it.
fn write_counting(s: &mut impl Write, data: &[u8], sent: &AtomicUsize) -> std::io::Result<()> {
    for piece in data.chunks(64 * 1024) {
        s.write_all(piece)?;
        sent.fetch_add(piece.len(), Ordering::SeqCst);
    }
    Ok(())
}

#[test]
fn a_client_that_does_not_read_holds_the_server_back() {
    // F8: the server streams as fast as it can; the client reads nothing for 1.5 s, then
    // everything.
    let data = Arc::new(pattern(21, STREAM));
    let sent = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = channel::<std::io::Result<()>>();
    let (data_for_backend, sent_for_backend) = (data.clone(), sent.clone());
    let backend = Backend::tcp_tuned(pinned_send(), move |mut s| {
        // Starts on the client's signal, so pen's memory can be measured before.
        let mut go = [0u8; 1];
        let result = s
            .read_exact(&mut go)
            .and_then(|()| write_counting(&mut s, &data_for_backend, &sent_for_backend))
            .and_then(|()| s.shutdown(Shutdown::Write));
        let _ = tx.lock().unwrap().send(result);
    });
    let pen = Pen::start(&[], &[backend.spec()]);
    let mut client = connect_tuned(pen.tcp(), pinned_receive()).expect("connect");
    wait_until("the backend connection", IO_TIMEOUT, || {
        (backend.open_connections() == 1).then_some(())
    });
    let base = rss_kib(pen.pid());
    client.write_all(b"g").unwrap();
    let stall = watch_stall(pen.pid(), base, &sent);
    // Now read at full speed.
    let got = read_all(&mut client);
    let result = rx.recv_timeout(IO_TIMEOUT).expect("backend result");
    assert_back_pressure(&stall, base);
    result.expect("the backend's stream");
    assert_same_bytes("server -> stalled client", &got, &data);
    drop(client);
    pen.finish();
}

#[test]
fn a_server_that_does_not_read_holds_the_client_back() {
    // F9: the client uploads as fast as it can; the server reads nothing for 1.5 s, then
    // everything.
    let data = Arc::new(pattern(22, STREAM));
    let sent = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = channel::<Vec<u8>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let backend = Backend::tcp_tuned(pinned_receive(), move |mut s| {
        // Told to read by the test; a test that failed before drops the sender, which ends this.
        if go_rx.lock().unwrap().recv_timeout(IO_TIMEOUT).is_ok() {
            let got = read_all(&mut s);
            let _ = tx.lock().unwrap().send(got);
        }
    });
    let pen = Pen::start(&[], &[backend.spec()]);
    let client = connect_tuned(pen.tcp(), pinned_send()).expect("connect");
    wait_until("the backend connection", IO_TIMEOUT, || {
        (backend.open_connections() == 1).then_some(())
    });
    let base = rss_kib(pen.pid());
    let mut writer = client.try_clone().unwrap();
    let (data_for_writer, sent_for_writer) = (data.clone(), sent.clone());
    let w = thread::spawn(move || {
        write_counting(&mut writer, &data_for_writer, &sent_for_writer)
            .and_then(|()| writer.shutdown(Shutdown::Write))
    });
    let stall = watch_stall(pen.pid(), base, &sent);
    go_tx.send(()).expect("backend waiting");
    let got = rx.recv_timeout(IO_TIMEOUT).expect("backend result");
    let upload = w.join().expect("writer thread");
    assert_back_pressure(&stall, base);
    upload.expect("upload");
    assert_same_bytes("stalled server <- client", &got, &data);
    drop(client);
    pen.finish();
}

#[test]
fn a_server_with_a_tiny_window_gets_every_byte_without_pen_spinning() {
    // F10: the server's receive buffer is 4 KiB and it reads 1 KiB at a time with a pause after
    // each read, so pen's writes stop short again and again and it must wait for the window to
    // reopen. (The catalogue's 1 byte per ms would take half an hour for 2 MiB.) The server
    // also announces an Ethernet-sized MSS: with loopback's, pen's send buffer autotunes to
    // 4 MiB at once, takes the whole 2 MiB in one go and pen never waits at all.
    const TINY: usize = 4096;
    const SIZE: usize = 2 * MIB;
    let data = pattern(23, SIZE);
    let (tx, rx) = channel::<(Vec<u8>, Duration)>();
    let backend = Backend::tcp_tuned(
        Tuning {
            rcvbuf: Some(TINY),
            mss: Some(1460),
            ..Tuning::default()
        },
        move |mut s| {
            let started = Instant::now();
            let deadline = started + Duration::from_secs(20);
            let mut got = Vec::with_capacity(SIZE);
            let mut buf = [0u8; 1024];
            // Ends at EOF, on an error, or at the deadline; each read is at most 1 KiB and the
            // total is bounded by what the client sends.
            while Instant::now() < deadline {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                thread::sleep(Duration::from_millis(1));
            }
            let _ = tx.lock().unwrap().send((got, started.elapsed()));
        },
    );
    let pen = Pen::start(&[], &[backend.spec()]);
    let mut client = pen.connect();
    let mut writer = client.try_clone().unwrap();
    let data_for_writer = data.clone();
    let w = thread::spawn(move || upload(&mut writer, &data_for_writer, 24));
    let mut received = None;
    let cpu = cpu_during(pen.pid(), || {
        received = rx.recv_timeout(Duration::from_secs(30)).ok();
    });
    let upload = w.join().expect("writer thread");
    let (got, took) = received.expect("backend result");
    upload.expect("upload");
    eprintln!("tiny window: {SIZE} bytes in {took:?}, pen CPU {cpu:.3} s");
    assert_same_bytes("client -> server through a tiny window", &got, &data);
    // Waiting for writability costs a wake-up each time pen's send buffer drains by a third or
    // so (tens of KiB); polling the full socket would cost the whole transfer time.
    assert!(
        cpu < took.as_secs_f64() / 10.0,
        "pen used {cpu:.2} s of CPU to relay {SIZE} bytes into a {TINY}-byte window in {took:?}"
    );
    let _ = drain(&mut client);
    drop(client);
    pen.finish();
}

/// Catalogue F13: a client that half-closes while its server neither answers nor closes is not
/// held forever: `idle_timeout` closes it like any silent connection (pen 0.34.1 only closed
/// connections that were not half-closed).
#[test]
fn idle_timeout_also_closes_a_half_closed_connection() {
    let (tx, rx) = channel::<usize>();
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    // Reads what comes, never writes, and holds its end open until the test releases it.
    let mute = Backend::tcp(move |mut s| {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        let _ = tx.lock().unwrap().send(n);
        let _ = s.read(&mut buf); // the FIN pen forwards, or pen's close
        let _ = released
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(5));
    });
    let pen = Pen::start(&["-o", "idle_timeout 1"], &[mute.spec()]);
    let mut c = pen.connect();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(7));
    let since = Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(5)));
    assert_eq!(drain(&mut c), Ok(0), "the half-closed connection was held");
    let waited = since.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "closed after {waited:?}, with idle_timeout 1"
    );
    let _ = release.send(());
    pen.finish();
}

/// What a hanging server saw: each read's result and when it returned.
type ServerReads = mpsc::Receiver<(Instant, Result<usize, std::io::ErrorKind>)>;

/// A server that accepts and reads, and never writes nor closes: it reports every read (the
/// request, then more data, or the EOF or reset that ends its connection) and ends at EOF or on
/// an error.
fn hanging_server() -> (Backend, ServerReads) {
    let (tx, rx) = channel();
    let backend = Backend::tcp(move |mut s| {
        let mut buf = [0u8; 1024];
        loop {
            let read = s.read(&mut buf).map_err(|e| e.kind());
            let _ = tx.lock().unwrap().send((Instant::now(), read));
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        }
    });
    (backend, rx)
}

/// Catalogue F7: a server that takes the request, then neither answers nor closes. With
/// `-o idle_timeout 2`, pen closes both sides of the connection 2 s after its last byte: the
/// client sees its end, and so does the server (EOF or reset), each between 1.5 s and 4 s after
/// the request was sent (the upper bound is loose for slow machines).
#[test]
fn idle_timeout_closes_both_sides_when_the_server_hangs() {
    let (hang, reads) = hanging_server();
    let pen = Pen::start(&["-o", "idle_timeout 2"], &[hang.spec()]);
    let window = Duration::from_millis(1500)..Duration::from_secs(4);
    let mut c = pen.connect();
    let sent = Instant::now();
    c.write_all(b"request").unwrap();
    let (_, request) = reads
        .recv_timeout(Duration::from_secs(5))
        .expect("the request to reach the server");
    assert_eq!(request, Ok(7));

    c.set_read_timeout(Some(Duration::from_secs(6)));
    let end = drain(&mut c);
    let client_closed = sent.elapsed();
    assert!(
        matches!(end, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "the client's connection did not end within 6 s: {end:?}"
    );
    assert!(
        window.contains(&client_closed),
        "the client's connection ended {client_closed:?} after the request, with idle_timeout 2"
    );
    let (at, server_end) = reads
        .recv_timeout(Duration::from_secs(5))
        .expect("the server's connection to end");
    let server_closed = at.duration_since(sent);
    assert!(
        matches!(server_end, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "the server read {server_end:?}"
    );
    assert!(
        window.contains(&server_closed),
        "the server's connection ended {server_closed:?} after the request, with idle_timeout 2"
    );
    wait_until(
        "the server to close its side",
        Duration::from_secs(5),
        || (hang.open_connections() == 0).then_some(()),
    );
    drop(c);
    pen.finish();
}

/// Catalogue F7, the default: `idle_timeout` is 0 unless set, and 0 means none (as in pen
/// 0.34.1). A connection whose server hangs stays open, here for 4.5 s (over twice the timeout
/// above), and still carries what the client sends next.
#[test]
fn without_idle_timeout_a_connection_to_a_hanging_server_stays_open() {
    let (hang, reads) = hanging_server();
    let c = support::control::Controlled::start(&[], &[hang.spec()]);
    assert_eq!(c.ctl("idle_timeout"), "Idle timeout: 0 seconds\n");
    let mut s = c.pen.connect();
    s.write_all(b"request").unwrap();
    let (_, request) = reads
        .recv_timeout(Duration::from_secs(5))
        .expect("the request to reach the server");
    assert_eq!(request, Ok(7));
    // The silence is what is tested: it must outlast a timeout pen would enforce on a timer.
    assert!(
        stays_silent(&mut s, Duration::from_millis(4500)),
        "pen ended a silent connection with no idle timeout; stderr:\n{}",
        c.pen.stderr_text()
    );
    let early = reads.try_recv().ok();
    assert!(early.is_none(), "the server's side ended: {early:?}");
    assert_eq!(hang.open_connections(), 1);
    s.write_all(b"more").unwrap();
    let (_, more) = reads
        .recv_timeout(Duration::from_secs(5))
        .expect("more to reach the server");
    assert_eq!(more, Ok(4), "after the silence");
    drop(s);
    c.pen.finish();
}
