//! The data plane through the real binary: byte-exact transfers both ways at once, half-close in
//! each direction, a server that speaks first, a server that resets mid-stream, and many
//! concurrent connections.

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;

use support::*;

const MIB: usize = 1024 * 1024;

/// Write `data` in pseudo-random chunk sizes (1 byte to 64 KiB), then half-close.
fn write_in_chunks(s: &mut Stream, data: &[u8], seed: u64) -> std::io::Result<()> {
    let sizes = pattern(seed, data.len() / 512 + 16);
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let r = u16::from_le_bytes([sizes[i % sizes.len()], sizes[(i + 1) % sizes.len()]]);
        let size = 1 + usize::from(r) % (64 * 1024);
        let end = (at + size).min(data.len());
        s.write_all(&data[at..end])?;
        at = end;
        i += 2;
    }
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
        let w = thread::spawn(move || write_in_chunks(&mut writer, &down, 3));
        let got = read_all(&mut s);
        let _ = w.join();
        let _ = tx.lock().unwrap().send(got);
    });
    let pen = Pen::start(&[], &[backend.spec()]);
    let mut client = pen.connect();
    let mut writer = client.try_clone().unwrap();
    let up_for_writer = up.clone();
    let w = thread::spawn(move || write_in_chunks(&mut writer, &up_for_writer, 4));
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

#[test]
fn server_speaks_first() {
    let backend = Backend::banner("220 ready\r\n");
    let pen = Pen::start(&[], &[backend.spec()]);
    let mut client = pen.connect();
    // The client sends nothing.
    assert_eq!(read_line(&mut client).expect("banner"), "220 ready\r");
    drop(client);
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
