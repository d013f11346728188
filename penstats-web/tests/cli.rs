//! The binary: help, version, command-line errors with exit status 1, a listening address in
//! use, the address line, and SIGTERM ending the service even while a browser follows /events.

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

#[test]
fn sigterm_ends_the_service_even_with_a_browser_watching() {
    let mut service = Service::start(&[
        "--pen",
        "/nonexistent/pen.ctl",
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "0.2",
    ]);
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
