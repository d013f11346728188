//! The binary: help, version, command-line errors with exit status 1, a listening address in
//! use, the address line, SIGTERM ending the service even while a browser follows /events, and
//! paths that try to climb out of the fixed routes, sent as raw bytes.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use support::process::{get, run, Service, LIMIT};

#[test]
fn help_and_version() {
    let out = run(&["--help"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out
        .stdout
        .starts_with("usage: penstats-web --pen ADDRESS [--listen ADDRESS:PORT] [options]\n"));
    assert_eq!(out.stderr, "");
    let out = run(&["-V"]);
    assert_eq!(out.code(), Some(0));
    assert_eq!(
        out.stdout,
        format!("penstats-web {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_command_line_exits_1_with_one_message() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "penstats-web: --pen ADDRESS is required"),
        (
            &["--pen", "nohost"],
            "penstats-web: --pen 'nohost': no port given",
        ),
        (
            &["--pen", "h:1", "--listen", "h:80"],
            "penstats-web: --listen 'h:80'",
        ),
        (
            &["--pen", "h:1", "--interval", "0"],
            "penstats-web: option '--interval': '0'",
        ),
        (
            &["--pen", "h:1", "--bogus"],
            "penstats-web: unknown option '--bogus'",
        ),
    ];
    for (args, want) in cases {
        let out = run(args);
        assert_eq!(out.code(), Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.starts_with(want), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "");
    }
}

#[test]
fn a_listening_address_in_use_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["--pen", "/nonexistent/pen.ctl", "--listen", &addr]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .starts_with(&format!("penstats-web: can't listen on {addr}: ")),
        "{}",
        out.stderr
    );
}

/// The service on a free loopback port, refreshing every 0.2 s, with no pen behind it.
fn service_without_pen() -> Service {
    Service::start(&[
        "--pen",
        "/nonexistent/pen.ctl",
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "0.2",
    ])
}

#[test]
fn sigterm_ends_the_service_even_with_a_browser_watching() {
    let mut service = service_without_pen();
    let (status, _, body) = get(service.addr, "/");
    assert_eq!(status, 200);
    assert!(body.contains("pen at <span class=\"pen-address\">/nonexistent/pen.ctl</span>"));

    // A browser following the event stream.
    let mut events = TcpStream::connect(service.addr).unwrap();
    events.set_read_timeout(Some(LIMIT)).unwrap();
    write!(events, "GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reader = BufReader::new(events);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 200 OK\r\n");
    // Until the first poll has failed (and been reported), so that its message is on stderr.
    let mut seen = false;
    for _ in 0..1000 {
        line.clear();
        if reader.read_line(&mut line).expect("the event stream") == 0 {
            break;
        }
        if line.contains("pen is unreachable") {
            seen = true;
            break;
        }
    }
    assert!(seen, "no event told of the failed poll");

    let out = service.stop();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("penstats-web: pen at /nonexistent/pen.ctl is unreachable: can't connect"),
        "{}",
        out.stderr
    );
    // The event stream was ended properly (the last chunk of a chunked body), not cut off when
    // the grace period ran out.
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut rest).expect("EOF");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.ends_with("\r\n0\r\n\r\n"), "{rest:?}");
}

/// Send `request` as it is on a new connection and read the reply until the service closes it,
/// each read bounded by `LIMIT`: the status code (None without a status line) and the reply.
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (Option<u16>, String) {
    let mut stream = TcpStream::connect_timeout(&addr, LIMIT).expect("connect to penstats-web");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.set_write_timeout(Some(LIMIT)).unwrap();
    stream.write_all(request).expect("send the request");
    let mut reply = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(&mut stream, &mut reply) {
        // A reset after the reply (the service closing on unread bytes) still leaves the reply.
        assert!(
            !reply.is_empty(),
            "{:?}: no reply: {e}",
            String::from_utf8_lossy(request)
        );
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    (status, reply)
}

/// Path traversal sent as raw bytes to the running service: dot segments plain, percent-encoded
/// and with encoded slashes, a double slash, an absolute-form URI, a NUL byte, a raw space and
/// backslashes in the path. Every one is answered 404 by the router (only its fixed paths
/// exist) or 400 by the HTTP parser, never with a file's contents; and the service goes on
/// answering its real routes (reliability catalogue S9).
#[test]
fn path_traversal_over_a_raw_socket_gets_only_404_or_400() {
    let mut service = service_without_pen();
    let headers = "Host: localhost\r\nConnection: close\r\n\r\n";
    let cases: Vec<(Vec<u8>, u16)> = [
        ("GET /../../etc/passwd HTTP/1.1", 404),
        ("GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1", 404),
        ("GET //etc/passwd HTTP/1.1", 404),
        ("GET /..%2f..%2fetc/passwd HTTP/1.1", 404),
        ("GET /dashboard.js/../../../../etc/passwd HTTP/1.1", 404),
        ("GET http://127.0.0.1/../../etc/passwd HTTP/1.1", 404),
        ("GET /..\\..\\etc\\passwd HTTP/1.1", 404),
        ("GET /etc/\0passwd HTTP/1.1", 400),
        ("GET /etc/ passwd HTTP/1.1", 400),
    ]
    .iter()
    .map(|(line, want)| (format!("{line}\r\n{headers}").into_bytes(), *want))
    .collect();
    for (request, want) in &cases {
        let what = String::from_utf8_lossy(request);
        let (status, reply) = raw(service.addr, request);
        assert!(!reply.contains("root:"), "{what:?}: {reply}");
        assert!(
            matches!(status, Some(400 | 404)),
            "{what:?}: not 400 or 404: {reply}"
        );
        assert_eq!(status, Some(*want), "{what:?}: {reply}");
        if *want == 404 {
            assert!(
                reply.ends_with("\r\n\r\npenstats-web: no such page\n"),
                "{what:?}: {reply}"
            );
        }
    }
    // The real routes still answer.
    for (path, want) in [
        ("/", 200),
        ("/dashboard.js", 200),
        ("/metrics", 200),
        ("/api/status", 503),
    ] {
        let (status, _, _) = get(service.addr, path);
        assert_eq!(status, want, "GET {path}");
    }
    let out = service.stop();
    assert_eq!(out.code(), Some(0), "{out:?}");
}
