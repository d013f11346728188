//! TLS configurations the control commands set (`ssl_sni_path`, `ssl_ocsp_response`,
//! `ssl_ciphers`, `ssl_option`), through the library's `tls::Tls` on real loopback sockets:
//! SNI, OCSP stapling, all-or-nothing changes, and sessions that never cross configurations
//! (reliability catalogue S15).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use pen::tls::{Tls, TlsOptions};
use support::tls::{Ca, Client, Files, OneNameStore, Setup};

/// `pen::tls::Tls` accepting on a real loopback socket; each handshaken client gets one line:
/// `ok`. Stopped when dropped.
struct TlsServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsServer {
    fn start(tls: Arc<Tls>) -> TlsServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let handshake = tls.handshake(tcp);
                            let within = handshake.timeout();
                            let Ok(Ok(mut s)) = tokio::time::timeout(within, handshake).await
                            else {
                                return;
                            };
                            let mut b = [0u8; 1];
                            if s.read(&mut b).await.is_ok() {
                                let _ = s.write_all(b"ok\n").await;
                                let _ = s.flush().await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        TlsServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn options(setup: &Setup) -> TlsOptions {
    TlsOptions {
        cert: Some(setup.files.dir.join("server.crt")),
        key: Some(setup.files.dir.join("server.key")),
        ..TlsOptions::default()
    }
}

#[test]
fn sni_serves_each_name_its_certificate_and_ocsp_response() {
    let setup = Setup::new();
    let sni = Files::new();
    let a = setup.ca.server(&["a.test"]);
    let b = setup.ca.server(&["b.test"]);
    sni.leaf("a.test", &a);
    sni.leaf("b.test", &b);
    sni.write("b.test.ocsp", b"OCSP for b");
    sni.write("notes.txt", "ignored");
    let default_ocsp = setup.files.write("default.ocsp", b"OCSP for the default");
    let mut opts = options(&setup);
    opts.sni_dir = Some(sni.dir.path().to_path_buf());
    opts.ocsp_file = Some(default_ocsp);
    let server = TlsServer::start(Arc::new(Tls::new(opts).expect("build")));
    let client = Client::new(&setup.ca, None);
    let mut s = client.connect(server.addr, "a.test").expect("a.test");
    assert_eq!(s.seen.cert.as_ref(), Some(&a.der));
    assert!(s.seen.ocsp.is_empty(), "a.test has no OCSP file");
    assert_eq!(s.ask("?").unwrap(), "ok");
    let s = client
        .connect(server.addr, "B.TEST")
        .expect("b.test, any case");
    assert_eq!(s.seen.cert.as_ref(), Some(&b.der));
    assert_eq!(s.seen.ocsp, b"OCSP for b");
    // An unknown name, or none, gets the default certificate with its stapled response.
    let s = client.connect(server.addr, "localhost").expect("default");
    assert_eq!(s.seen.ocsp, b"OCSP for the default");
    assert_ne!(s.seen.cert.as_ref(), Some(&a.der));
}

#[test]
fn control_changes_apply_all_or_nothing() {
    let setup = Setup::new();
    let tls = Arc::new(Tls::new(options(&setup)).expect("build"));
    let server = TlsServer::start(tls.clone());
    let client = Client::new(&setup.ca, None);
    assert!(client
        .connect(server.addr, "localhost")
        .unwrap()
        .seen
        .ocsp
        .is_empty());
    // ssl_ocsp_response: stapled from the next handshake on.
    let ocsp = setup.files.write("r.ocsp", b"fresh response");
    tls.update(|o| {
        o.ocsp_file = Some(ocsp.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(
        client.connect(server.addr, "localhost").unwrap().seen.ocsp,
        b"fresh response"
    );
    // A bad change leaves everything as it was.
    let e = tls
        .update(|o| {
            o.sni_dir = Some("/nonexistent/sni".into());
            Ok(())
        })
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/sni"), "{e}");
    assert_eq!(tls.options().sni_dir, None);
    let e = tls.update(|o| o.set_ciphers(Some("RC4-MD5"))).unwrap_err();
    assert!(e.to_string().contains("RC4-MD5"), "{e}");
    assert_eq!(
        client.connect(server.addr, "localhost").unwrap().seen.ocsp,
        b"fresh response"
    );
    // ssl_option no_tlsv1.2 at run time: TLS 1.2 clients are refused from then on.
    let tls12 = Client::with_versions(&setup.ca, &[&rustls::version::TLS12]);
    assert!(tls12.connect(server.addr, "localhost").is_ok());
    tls.update(|o| o.set_option("no_tlsv1.2")).unwrap();
    assert!(tls12.connect(server.addr, "localhost").is_err());
}

#[test]
fn a_session_never_resumes_under_another_sni_configuration() {
    // S15: two SNI names, each trusting a different client CA, with -R. A client resumes on
    // a.test without showing its certificate again; offering that session to b.test must not
    // skip b.test's check.
    let setup = Setup::new();
    let ca_a = Ca::new("CA of a");
    let ca_b = Ca::new("CA of b");
    let sni = Files::new();
    sni.leaf("a.test", &setup.ca.server(&["a.test"]));
    sni.leaf("b.test", &setup.ca.server(&["b.test"]));
    sni.write("a.test.ca", ca_a.pem());
    sni.write("b.test.ca", ca_b.pem());
    let mut opts = options(&setup);
    opts.sni_dir = Some(sni.dir.path().to_path_buf());
    opts.require_client_cert = true;
    opts.ca_file = Some(setup.files.path("ca.pem").into());
    let server = TlsServer::start(Arc::new(Tls::new(opts).expect("build")));
    let store = OneNameStore::new();
    let client = Client::with_store(&setup.ca, Some(&ca_a.client("alice")), Some(store));
    let mut first = client.connect(server.addr, "a.test").expect("a.test");
    assert_eq!(first.ask("?").unwrap(), "ok");
    drop(first);
    let mut again = client.connect(server.addr, "a.test").expect("a.test again");
    assert_eq!(again.ask("?").unwrap(), "ok");
    assert!(again.resumed(), "resumption within a.test works");
    drop(again);
    // The same stored session offered to b.test: a full handshake, and alice's certificate is
    // not from b.test's CA.
    let mut cross = client
        .connect(server.addr, "b.test")
        .expect("client flight");
    assert!(!cross.resumed(), "a.test's session resumed on b.test");
    assert!(
        cross.ask("?").is_err(),
        "b.test accepted a certificate from a.test's CA"
    );
}

/// The `ssl_*` commands through the control port of a running pen with `-E`: a bad cipher name
/// is refused and changes nothing; a good change applies to the next handshake.
#[test]
fn ssl_commands_over_the_control_port() {
    let ca = Ca::new("control CA");
    let files = Files::new();
    files.leaf("server", &ca.server(&["localhost"]));
    let echo = support::Backend::echo();
    let (cert, key) = (files.path("server.crt"), files.path("server.key"));
    let c = support::control::Controlled::start(&["-E", &cert, "-K", &key], &[echo.spec()]);
    let reply = c.ctl("ssl_ciphers NO-SUCH-CIPHER");
    assert!(
        reply.starts_with("ssl_ciphers:") && reply.contains("NO-SUCH-CIPHER"),
        "{reply}"
    );
    let client = Client::new(&ca, None);
    let mut session = client.connect(c.pen.tcp(), "localhost").expect("handshake");
    assert_eq!(session.ask("still fine\n").unwrap(), "still fine");
    drop(session);
    assert_eq!(c.ctl("ssl_option no_tlsv1.2"), "");
    let tls12 = Client::with_versions(&ca, &[&rustls::version::TLS12]);
    assert!(
        tls12.connect(c.pen.tcp(), "localhost").is_err(),
        "TLS 1.2 still accepted after ssl_option no_tlsv1.2"
    );
    let mut session = client
        .connect(c.pen.tcp(), "localhost")
        .expect("TLS 1.3 handshake");
    assert_eq!(session.ask("1.3\n").unwrap(), "1.3");
    drop(session);
    c.pen.finish();
}
