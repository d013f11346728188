//! `-H` end to end: what the backend receives, byte for byte, for keep-alive, pipelined and
//! split requests with bodies (B11), a spoofed X-Forwarded-For (S11), malformed heads, other
//! protocols, and IPv6 clients.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use support::{
    assert_same_bytes, channel, connect_from, loopback, pattern, segs_in, Backend, Listen, Pen,
    Stream,
};

/// A backend that reads its connection to EOF, reports every byte, then answers `done`.
fn recorder() -> (Backend, std::sync::mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = channel();
    let backend = Backend::tcp(move |mut s: Stream| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = tx.lock().unwrap().send(got);
        let _ = s.write_all(b"done");
    });
    (backend, rx)
}

/// What the backend received for a connection that wrote `pieces` and half-closed.
fn through_pen(
    pen: &Pen,
    from: u8,
    pieces: &[&[u8]],
    rx: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> Vec<u8> {
    let mut s = connect_from(loopback(from), 0, pen.tcp()).expect("connect");
    for p in pieces {
        s.write_all(p).expect("write");
    }
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the backend's bytes")
}

/// `head` (ending in its blank line) with pen's two lines inserted before the blank line.
fn rewritten(head: &str, client: &str) -> String {
    let (eol, cut) = if head.ends_with("\r\n\r\n") {
        ("\r\n", 2)
    } else {
        ("\n", 1)
    };
    format!(
        "{}X-Forwarded-Proto: http{eol}X-Forwarded-For: {client}{eol}{eol}",
        &head[..head.len() - cut]
    )
}

#[test]
fn keep_alive_and_pipelined_requests_with_bodies_arrive_byte_exact() {
    let (backend, rx) = recorder();
    let pen = Pen::start(&["-H"], &[backend.spec()]);
    let big = pattern(7, 1 << 20);
    let lf_body = b"a\r\n\r\nX-Forwarded-For: 6.6.6.6\r\n\n\nGET / HTTP/1.1\r\n\r\n".to_vec();
    let chunks: Vec<Vec<u8>> = [1usize, 4096, 70_000, 3]
        .iter()
        .map(|n| pattern(*n as u64, *n))
        .collect();
    let mut chunked = Vec::new();
    for c in &chunks {
        chunked.extend_from_slice(format!("{:x};x=y\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");

    let heads = [
        format!(
            "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            big.len()
        ),
        "PUT /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
        format!("post /lf HTTP/1.0\nContent-Length: {}\n\n", lf_body.len()),
        "GET /last HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
    ];
    let bodies: [&[u8]; 4] = [&big, &chunked, &lf_body, b""];
    let mut input = Vec::new();
    let mut want = Vec::new();
    for (head, body) in heads.iter().zip(bodies) {
        input.extend_from_slice(head.as_bytes());
        input.extend_from_slice(body);
        want.extend_from_slice(rewritten(head, "127.0.0.41").as_bytes());
        want.extend_from_slice(body);
    }
    // Written in pieces that cut heads, chunk-size lines and bodies at odd places.
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut rest = &input[..];
    for size in [1usize, 2, 30, 999, 65_536, 7, 100_000].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*size).min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    let got = through_pen(&pen, 41, &pieces, &rx);
    assert_same_bytes("what the backend received", &got, &want);
    pen.finish();
}

/// A request and its FIN that come in one segment leave in one, with the inserted lines: the
/// backend's socket has received the SYN, the ACK that ends the handshake and the request
/// with its FIN when it reads EOF (a separate FIN would make four). Before, pen read the FIN
/// on its own after `-H`'s rewriting and sent it as a segment of its own.
#[test]
fn a_request_and_its_fin_leave_in_one_segment_as_they_came() {
    let (tx, rx) = channel();
    let backend = Backend::tcp(move |s: Stream| {
        let Stream::Tcp(mut t) = s else { return };
        let mut got = Vec::new();
        let _ = t.read_to_end(&mut got);
        let segs = segs_in(t.local_addr().unwrap(), t.peer_addr().unwrap());
        let _ = tx.lock().unwrap().send((got, segs));
        let _ = t.write_all(b"done");
    });
    let pen = Pen::start(&["-H"], &[backend.spec()]);
    let head = "GET / HTTP/1.0\r\nHost: a\r\n\r\n";
    for _ in 0..3 {
        let s = connect_from(loopback(2), 0, pen.tcp()).expect("connect");
        // MSG_MORE holds the request until the shutdown adds the FIN to it.
        socket2::SockRef::from(&s)
            .send_with_flags(head.as_bytes(), nix::libc::MSG_MORE)
            .expect("send");
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut answer = Vec::new();
        let _ = (&s).read_to_end(&mut answer);
        assert_eq!(answer, b"done");
        let (got, segs) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the backend's bytes");
        assert_same_bytes("the request", &got, rewritten(head, "127.0.0.2").as_bytes());
        assert!(
            segs <= 3,
            "the backend's socket received {segs} segments (want 3: the FIN came on its own)"
        );
    }
    pen.finish();
}

#[test]
fn a_spoofed_x_forwarded_for_is_appended_to_never_trusted() {
    let (backend, rx) = recorder();
    let pen = Pen::start(&["-H"], &[backend.spec()]);
    let got = through_pen(
        &pen,
        42,
        &[b"GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n"],
        &rx,
    );
    assert_eq!(
        String::from_utf8(got).unwrap(),
        "GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6, 127.0.0.42\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
    pen.finish();
}

#[test]
fn malformed_or_oversized_heads_close_the_connection_unforwarded() {
    let (backend, rx) = recorder();
    let pen = Pen::start(&["-H"], &[backend.spec()]);
    let ok = b"GET /ok HTTP/1.1\r\n\r\n";
    let mut oversized = b"GET /big HTTP/1.1\r\n".to_vec();
    while oversized.len() < 70_000 {
        oversized.extend_from_slice(format!("X-Pad: {}\r\n", "p".repeat(2000)).as_bytes());
    }
    oversized.extend_from_slice(b"\r\n");
    for bad in [
        &b"GET / HTTP/1.1\r\n: empty name\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX: nul\0here\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        &oversized,
    ] {
        let mut s = connect_from(loopback(43), 0, pen.tcp()).expect("connect");
        // The first request is fine; the second is refused: the backend gets only the first.
        let _ = s.write_all(&[&ok[..], bad].concat());
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(answer.is_empty(), "the client is closed without an answer");
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the backend's bytes");
        assert_eq!(
            String::from_utf8_lossy(&got),
            rewritten("GET /ok HTTP/1.1\r\n\r\n", "127.0.0.43")
        );
    }
    let stderr = pen.stderr_text();
    assert!(
        stderr.contains("-H: closing the connection of client 127.0.0.43"),
        "{stderr}"
    );
    pen.finish();
}

#[test]
fn other_protocols_pass_through_untouched() {
    let echo = Backend::echo();
    let pen = Pen::start(&["-H"], &[echo.spec()]);
    let mut payload =
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03http/1.1 GET / HTTP/1.1\r\n\r\n".to_vec();
    payload.extend_from_slice(&pattern(3, 200_000));
    let mut s = connect_from(loopback(44), 0, pen.tcp()).expect("connect");
    let mut reader = s.try_clone().unwrap();
    let expect = payload.clone();
    let read = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got);
        got
    });
    s.write_all(&payload).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = read.join().unwrap();
    assert_same_bytes("echoed", &got, &expect);
    pen.finish();
}

#[test]
fn ipv6_clients_are_written_without_brackets() {
    assert!(support::ipv6_available(), "::1 is needed for the IPv6 test");
    let (backend, rx) = recorder();
    let pen = Pen::start_on(Listen::V6, &["-H"], &[backend.spec()]);
    let addr: SocketAddr = pen.tcp();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        String::from_utf8(got).unwrap(),
        rewritten("GET / HTTP/1.1\r\n\r\n", "::1")
    );
    pen.finish();
}

#[test]
fn without_h_nothing_is_touched() {
    let (backend, rx) = recorder();
    let pen = Pen::start(&[], &[backend.spec()]);
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(through_pen(&pen, 45, &[req], &rx), req);
    pen.finish();
}

/// `http`, `no http` and `http_xff` on the control port: insertion switches for new
/// connections, and pen 0.34.1's keep-the-client's-header behaviour is one command away.
#[test]
fn http_and_http_xff_commands_switch_insertion_at_run_time() {
    let (backend, rx) = recorder();
    let c = support::control::Controlled::start(&[], &[backend.spec()]);
    let spoof: &[u8] = b"GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    let got = through_pen(&c.pen, 42, &[spoof], &rx);
    assert_eq!(got, spoof, "without -H nothing is touched");
    assert_eq!(c.ctl("http"), "");
    assert_eq!(c.ctl("http_xff"), "append\n");
    let got = String::from_utf8(through_pen(&c.pen, 42, &[spoof], &rx)).unwrap();
    assert!(
        got.contains("X-Forwarded-For: 6.6.6.6, 127.0.0.42\r\n"),
        "{got}"
    );
    assert_eq!(c.ctl("http_xff keep"), "keep\n");
    let got = String::from_utf8(through_pen(&c.pen, 42, &[spoof], &rx)).unwrap();
    assert!(got.contains("X-Forwarded-For: 6.6.6.6\r\n"), "{got}");
    assert!(!got.contains("127.0.0.42"), "{got}");
    assert!(c.ctl("http_xff sometimes").contains("'sometimes'"));
    assert_eq!(c.ctl("no http"), "");
    let got = through_pen(&c.pen, 42, &[spoof], &rx);
    assert_eq!(got, spoof);
    c.pen.finish();
}
