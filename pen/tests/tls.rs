//! TLS termination: pen with `-E` in front of plain backends, client certificates, reload on
//! HUP, and clients that do not complete a handshake (reliability catalogue B9, B10). SNI,
//! OCSP stapling, run-time changes and S15 are in `tls_config.rs`.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use support::tls::{Ca, Client, Files, Setup};
use support::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---- hand-made handshakes ------------------------------------------------------------------

/// A ClientHello record as an old client sends it: no extensions, one RSA suite, the given
/// record and hello versions (0x0300 SSLv3, 0x0301 TLS 1.0, 0x0302 TLS 1.1).
fn old_client_hello(version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0, 2, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[1, 0]); // null compression
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16];
    record.extend_from_slice(&version.to_be_bytes());
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// An SSLv2-format ClientHello (the two-byte header with the top bit set).
fn sslv2_client_hello() -> Vec<u8> {
    let mut body = vec![1, 0, 2, 0, 3, 0, 0, 0, 16];
    body.extend_from_slice(&[0x01, 0x00, 0x80]); // SSL_CK_RC4_128_WITH_MD5
    body.extend_from_slice(&[9u8; 16]); // challenge
    let mut out = vec![0x80 | (body.len() >> 8) as u8, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// Send `bytes` to pen, then read until pen closes; the time it took (pen must close by
/// itself well before the harness timeout).
fn rejected(addr: SocketAddr, bytes: &[u8], close_write: bool) -> Duration {
    let started = Instant::now();
    let mut s = connect(addr).expect("connect to pen");
    s.write_all(bytes).expect("send");
    if close_write {
        let _ = s.shutdown(Shutdown::Write);
    }
    // An alert may come first; then EOF or a reset. A timeout means pen kept it open.
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!(
                    "pen kept a bad handshake open ({:?} sent)",
                    &bytes[..bytes.len().min(16)]
                )
            }
            Err(_) => break,
        }
    }
    started.elapsed()
}

// ---- pen with -E ---------------------------------------------------------------------------

#[test]
fn tls_is_terminated_and_plaintext_relayed_with_close_notify() {
    let setup = Setup::new();
    let echo = Backend::echo();
    let pen = setup.pen(&[], &[echo.spec()]);
    let client = Client::new(&setup.ca, None);
    let mut session = client.connect(pen.tcp(), "localhost").expect("handshake");
    assert_eq!(session.ask("hello over TLS\n").unwrap(), "hello over TLS");
    session.close();
    // The client closed; the backend's echo ends; pen ends the TLS stream properly.
    let rest = session.read_to_end().expect("clean end");
    assert!(rest.is_empty());
    // The same certificate file holding the key too (no -K), as in pen.
    let both = setup.files.write(
        "both.pem",
        format!(
            "{}{}",
            std::fs::read_to_string(setup.cert()).unwrap(),
            std::fs::read_to_string(setup.key()).unwrap()
        ),
    );
    let both = both.display().to_string();
    let pen2 = Pen::start(&["-E", &both], &[echo.spec()]);
    let mut session = client.connect(pen2.tcp(), "localhost").expect("handshake");
    assert_eq!(session.ask("one file\n").unwrap(), "one file");
    drop(session);
    pen.finish();
    pen2.finish();
}

#[test]
fn a_large_transfer_through_tls_is_byte_exact_both_ways() {
    let setup = Setup::new();
    let echo = Backend::echo();
    let pen = setup.pen(&[], &[echo.spec()]);
    let mut session = Client::new(&setup.ca, None)
        .connect(pen.tcp(), "localhost")
        .expect("handshake");
    let payload = pattern(42, 4 << 20);
    // One rustls connection cannot be read and written from two threads: send a chunk, read its
    // echo, repeat (each chunk fits in the socket buffers on the way).
    let mut got = vec![0u8; payload.len()];
    for (chunk, back) in payload.chunks(64 * 1024).zip(got.chunks_mut(64 * 1024)) {
        session.stream.write_all(chunk).unwrap();
        session.stream.flush().unwrap();
        session.stream.read_exact(back).unwrap();
    }
    assert_same_bytes("echo through TLS", &got, &payload);
    drop(session);
    pen.finish();
}

/// A server that speaks first, sends more than the sockets hold and closes: a TLS client that
/// starts reading late still gets every byte (pen stops reading the server while the client's
/// socket is full, encrypted records included), then close_notify before the FIN.
#[test]
fn a_server_that_sends_and_closes_reaches_a_late_tls_reader_whole_with_close_notify() {
    let setup = Setup::new();
    let payload = pattern(7, 8 << 20);
    let sent = payload.clone();
    let talker = Backend::tcp(move |mut s| {
        let _ = s.write_all(&sent);
    });
    let pen = setup.pen(&[], &[talker.spec()]);
    let mut session = Client::new(&setup.ca, None)
        .connect(pen.tcp(), "localhost")
        .expect("handshake");
    // Let pen fill the client's socket and hold the rest.
    std::thread::sleep(Duration::from_millis(300));
    let mut got = Vec::new();
    // Ok only with close_notify: a TCP close without it is UnexpectedEof.
    session
        .stream
        .read_to_end(&mut got)
        .expect("the whole reply, then close_notify");
    assert_same_bytes("server-first reply through TLS", &got, &payload);
    drop(session);
    pen.finish();
}

/// `dummy` answers a TLS client too, over TLS, without a server.
#[test]
fn dummy_answers_over_tls() {
    let setup = Setup::new();
    let pen = setup.pen(&["-o", "dummy"], &[Dead::new().spec()]);
    let mut session = Client::new(&setup.ca, None)
        .connect(pen.tcp(), "localhost")
        .expect("handshake");
    session.stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    session.stream.flush().unwrap();
    let page = session.read_to_end().expect("the page");
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.starts_with("HTTP/1.1 200 OK\r\n") && page.ends_with("Ulric was here."),
        "{page:?}"
    );
    drop(session);
    pen.finish();
}

#[test]
fn client_certificates_are_required_and_checked_with_r() {
    let setup = Setup::new();
    let backend = Backend::named("A");
    let ca_file = setup.files.path("ca.pem");
    let pen = setup.pen(&["-R", "-G", &ca_file], &[backend.spec()]);
    // No certificate: refused, and no server was ever contacted.
    let mut anonymous = Client::new(&setup.ca, None)
        .connect(pen.tcp(), "localhost")
        .expect("TLS 1.3 reports the refusal after the client's flight");
    assert!(
        anonymous.ask("?").is_err(),
        "a client without a certificate got through"
    );
    // A certificate from another CA: refused.
    let stranger = Ca::new("someone else");
    let foreign = stranger.client("mallory");
    let mut session = Client::new(&setup.ca, Some(&foreign))
        .connect(pen.tcp(), "localhost")
        .expect("client flight");
    assert!(
        session.ask("?").is_err(),
        "a foreign certificate got through"
    );
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // A certificate from our CA: served.
    let alice = setup.ca.client("alice");
    let mut session = Client::new(&setup.ca, Some(&alice))
        .connect(pen.tcp(), "localhost")
        .expect("handshake");
    assert_eq!(session.ask("?").unwrap(), "A");
    drop(session);
    // -A: a directory of CA files works the same.
    let dir = Files::new();
    dir.write("our-ca.pem", setup.ca.pem());
    dir.write("README", "not a certificate");
    let ca_dir = dir.dir.path().display().to_string();
    let pen2 = setup.pen(&["-R", "-A", &ca_dir], &[backend.spec()]);
    let mut session = Client::new(&setup.ca, Some(&alice))
        .connect(pen2.tcp(), "localhost")
        .expect("handshake");
    assert_eq!(session.ask("?").unwrap(), "A");
    drop(session);
    pen.finish();
    pen2.finish();
}

#[test]
fn bad_handshakes_are_rejected_without_touching_a_server() {
    let setup = Setup::new();
    let backend = Backend::named("A");
    let mut pen = setup.pen(&[], &[backend.spec()]);
    let addr = pen.tcp();
    let hello = old_client_hello(0x0301);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        ("random bytes", pattern(7, 3000), false),
        ("SSLv2 ClientHello", sslv2_client_hello(), false),
        ("SSLv3 ClientHello", old_client_hello(0x0300), false),
        ("TLS 1.0 ClientHello", hello.clone(), false),
        ("TLS 1.1 ClientHello", old_client_hello(0x0302), false),
        (
            "truncated ClientHello, then EOF",
            hello[..20].to_vec(),
            true,
        ),
        ("nothing, then EOF", Vec::new(), true),
    ];
    for (what, bytes, close) in cases {
        let took = rejected(addr, &bytes, close);
        assert!(
            took < Duration::from_secs(5),
            "{what}: pen took {took:?} to close"
        );
    }
    // A TLS 1.2-only client still gets through (TLS 1.2 is offered by default) ...
    let tls12 = Client::with_versions(&setup.ca, &[&rustls::version::TLS12]);
    let mut session = tls12.connect(addr, "localhost").expect("TLS 1.2 handshake");
    assert_eq!(session.ask("?").unwrap(), "A");
    drop(session);
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the good client may reach the server"
    );
    pen.assert_alive();
    pen.finish();
}

#[test]
fn silent_clients_time_out_and_free_their_slot() {
    let setup = Setup::new();
    let backend = Backend::named("A");
    // One data-plane thread: with several, another thread could accept the second client (and
    // take the slot) before the first.
    let (cert, key) = (setup.cert(), setup.key());
    let spec = backend.spec();
    let mut pen = Pen::spawn(Listen::V4, &["env", "PEN_THREADS=1"], |l| {
        ["-f", "-E", &cert, "-K", &key, "-x", "1", l, &spec]
            .map(String::from)
            .to_vec()
    });
    // One connection slot, taken by a client that starts a ClientHello and goes quiet. The
    // clock starts before it connects: pen's handshake timeout starts at its accept.
    let started = Instant::now();
    let mut silent = connect(pen.tcp()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    silent.write_all(&old_client_hello(0x0303)[..10]).unwrap();
    // The next client waits in the listen backlog until the silent one is dropped.
    let client = Client::new(&setup.ca, None);
    let mut session = client
        .connect_within(pen.tcp(), "localhost", Duration::from_secs(30))
        .expect("handshake once the slot is free");
    assert_eq!(session.ask("?").unwrap(), "A");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "the second client was served after {waited:?}, while the first still held the slot"
    );
    let mut b = [0u8; 16];
    assert!(
        matches!(silent.read(&mut b), Ok(0) | Err(_)),
        "the silent client was not closed"
    );
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    drop(session);
    pen.assert_alive();
    pen.finish();
}

#[test]
fn memory_stays_flat_over_thousands_of_bad_handshakes() {
    let setup = Setup::new();
    let backend = Backend::named("A");
    let pen = setup.pen(&[], &[backend.spec()]);
    let addr = pen.tcp();
    let hello = old_client_hello(0x0303);
    // (bytes, then close our side): each is refused at once, none waits for the timeout.
    let bad: [(Vec<u8>, bool); 4] = [
        (b"GET / HTTP/1.0\r\n\r\n".to_vec(), false),
        (hello[..30].to_vec(), true),
        (old_client_hello(0x0301), false),
        (pattern(3, 600), true),
    ];
    let round = |n: usize| {
        for i in 0..n {
            let (bytes, close) = &bad[i % bad.len()];
            let _ = rejected(addr, bytes, *close);
        }
    };
    round(500);
    let before = rss_kib(pen.pid());
    round(3000);
    let after = rss_kib(pen.pid());
    assert!(before > 0, "no VmRSS for pen");
    assert!(
        after <= before + 2048,
        "pen grew from {before} KiB to {after} KiB over 3000 bad handshakes"
    );
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    pen.finish();
}

#[test]
fn hup_reloads_certificates_without_dropping_connections_and_keeps_them_on_bad_files() {
    let setup = Setup::new();
    let echo = Backend::echo();
    let pen = setup.pen(&[], &[echo.spec()]);
    let client = Client::new(&setup.ca, None);
    let mut old = client.connect(pen.tcp(), "localhost").expect("handshake");
    let first = old.seen.cert.clone().expect("server certificate");
    assert_eq!(old.ask("before\n").unwrap(), "before");
    // New certificate and key in place, then HUP: new clients see it.
    let replacement = setup.ca.server(&["localhost"]);
    setup.files.leaf("server", &replacement);
    pen.signal("HUP");
    wait_until("the new certificate", Duration::from_secs(5), || {
        let s = client.connect(pen.tcp(), "localhost").ok()?;
        (s.seen.cert.as_ref() == Some(&replacement.der)).then_some(())
    });
    // The connection made before the reload goes on, with its old certificate.
    assert_eq!(old.ask("after\n").unwrap(), "after");
    assert_ne!(first, replacement.der);
    // A broken certificate file: the reload fails, pen says so and keeps the last good one.
    setup
        .files
        .write("server.crt", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    pen.signal("HUP");
    wait_until("the reload failure message", Duration::from_secs(5), || {
        pen.stderr_text()
            .contains("keeping the old certificates")
            .then_some(())
    });
    assert!(
        pen.stderr_text().contains("server.crt"),
        "{}",
        pen.stderr_text()
    );
    let mut session = client.connect(pen.tcp(), "localhost").expect("handshake");
    assert_eq!(session.seen.cert.as_ref(), Some(&replacement.der));
    assert_eq!(session.ask("still\n").unwrap(), "still");
    drop((old, session));
    pen.finish();
}

#[test]
fn bad_tls_files_and_flags_stop_startup_with_a_clear_message() {
    let setup = Setup::new();
    let other = setup.ca.server(&["localhost"]);
    setup.files.write("other.key", &other.key_pem);
    setup.files.write("garbage.pem", "hello");
    let (cert, key) = (setup.cert(), setup.key());
    let missing = setup.files.path("missing.pem");
    let garbage = setup.files.path("garbage.pem");
    let other_key = setup.files.path("other.key");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["-E", &missing], vec!["missing.pem", "No such file"]),
        (
            vec!["-E", &garbage, "-K", &key],
            vec!["garbage.pem", "no certificate"],
        ),
        (
            vec!["-E", &cert],
            vec!["server.crt", "no private key", "-K"],
        ),
        (
            vec!["-E", &cert, "-K", &other_key],
            vec!["does not belong", "other.key"],
        ),
        (vec!["-E", &cert, "-K", &garbage], vec!["garbage.pem"]),
        (
            vec!["-E", &cert, "-K", &key, "-L", "ssl3"],
            vec!["-L ssl3", "SSLv3", "not offered"],
        ),
        (
            vec!["-E", &cert, "-K", &key, "-L", "tls1.1"],
            vec!["TLS 1.1"],
        ),
        (
            vec!["-E", &cert, "-K", &key, "-L", "bogus"],
            vec!["protocol version bogus not known"],
        ),
        (vec!["-R", "-G", &cert], vec!["-R needs TLS", "-E"]),
        (
            vec!["-E", &cert, "-K", &key, "-R", "-G", &missing],
            vec!["missing.pem"],
        ),
    ];
    let listen = format!("127.0.0.1:{}", free_port([127, 0, 0, 1].into()));
    for (flags, wants) in cases {
        let mut args = vec!["-f"];
        args.extend(flags.iter().copied());
        args.extend([listen.as_str(), "127.0.0.1:9"]);
        let out = run_pen(&args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {}", out.stderr);
        for want in wants {
            assert!(
                out.stderr.contains(want),
                "{flags:?}: want {want:?} in {}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

#[test]
fn l_tls1_3_refuses_tls_1_2_clients_and_z_is_accepted() {
    let setup = Setup::new();
    let backend = Backend::named("A");
    let pen = setup.pen(&["-L", "tls1.3", "-Z"], &[backend.spec()]);
    let tls12 = Client::with_versions(&setup.ca, &[&rustls::version::TLS12]);
    assert!(tls12.connect(pen.tcp(), "localhost").is_err());
    let mut session = Client::new(&setup.ca, None)
        .connect(pen.tcp(), "localhost")
        .expect("TLS 1.3");
    assert_eq!(session.ask("?").unwrap(), "A");
    drop(session);
    pen.finish();
}

#[test]
fn renegotiation_is_refused_and_other_connections_carry_on() {
    let setup = Setup::new();
    let echo = Backend::echo();
    let mut pen = setup.pen(&[], &[echo.spec()]);
    let mut other = Client::new(&setup.ca, None)
        .connect(pen.tcp(), "localhost")
        .expect("handshake");
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect"])
        .arg(pen.tcp().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl s_client (Debian package openssl; .ci/run installs it)");
    let mut stdin = child.stdin.take().unwrap();
    // "R" alone on s_client's first read of its input asks for a renegotiation. The input
    // stays open, so that s_client ends only because of what the server did.
    stdin.write_all(b"R\n").unwrap();
    let status = poll_until(Duration::from_secs(10), || child.try_wait().ok().flatten());
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        child.wait().expect("reap s_client")
    });
    drop(stdin);
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let said = format!("{out}{err}");
    assert!(
        said.contains("RENEGOTIATING"),
        "s_client did not try: {said}"
    );
    assert!(
        !status.success() && said.contains("no renegotiation"),
        "renegotiation was not refused: {status:?}\n{out}\n{err}"
    );
    assert_eq!(other.ask("fine\n").unwrap(), "fine");
    drop(other);
    pen.assert_alive();
    pen.finish();
}

/// `-E` with `-H`: requests that arrived over TLS say `X-Forwarded-Proto: https`.
#[test]
fn x_forwarded_proto_says_https_on_tls_connections() {
    let setup = Setup::new();
    let (tx, rx) = channel();
    let backend = Backend::tcp(move |mut s: Stream| {
        // One request head, then answer with it as one line.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && matches!(s.read(&mut b), Ok(1)) {
            head.push(b[0]);
        }
        let _ = tx.lock().unwrap().send(head);
        let _ = s.write_all(b"ok\n");
        let _ = drain(&mut s);
    });
    let pen = setup.pen(&["-H"], &[backend.spec()]);
    let client = Client::new(&setup.ca, None);
    let mut session = client.connect(pen.tcp(), "localhost").expect("handshake");
    assert_eq!(
        session.ask("GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
        "ok"
    );
    let head = String::from_utf8(rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert!(head.contains("X-Forwarded-Proto: https\r\n"), "{head}");
    assert!(head.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{head}");
    drop(session);
    pen.finish();
}

/// Reliability catalogue S13: a core file can hold the TLS key, so pen must not raise the core
/// size limit it was given (C pen raises it to the hard maximum: reference bug P9). Started
/// with a soft limit of 0 under a hard limit of "unlimited", and with its key loaded and a
/// handshake done, pen still has a soft limit of 0.
#[test]
fn pen_does_not_raise_the_core_size_limit_it_was_given() {
    assert!(
        std::process::Command::new("prlimit")
            .arg("--version")
            .output()
            .is_ok(),
        "prlimit (util-linux) is needed: .ci/run installs it"
    );
    let setup = Setup::new();
    let echo = Backend::echo();
    let (cert, key, server) = (setup.cert(), setup.key(), echo.spec());
    let pen = Pen::spawn(Listen::V4, &["prlimit", "--core=0:unlimited", "--"], |l| {
        ["-f", "-E", &cert, "-K", &key, l, &server]
            .map(String::from)
            .to_vec()
    });
    let client = Client::new(&setup.ca, None);
    let mut session = client.connect(pen.tcp(), "localhost").expect("handshake");
    assert_eq!(session.ask("key in use\n").unwrap(), "key in use");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pen.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        (fields[4], fields[5]),
        ("0", "unlimited"),
        "soft and hard core limits: {core}"
    );
    drop(session);
    pen.finish();
}
