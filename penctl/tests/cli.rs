//! The command line of the real binary: usage, help and version, and every error penctl finds
//! on its own: exact texts on stderr, nothing on stdout, exit status 1, and no connection to pen
//! when the command line is at fault.

mod support;

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::unix::ffi::OsStringExt;

use support::*;

const USAGE: &str = "usage: penctl host:port command\n";

/// penctl failed with exactly this line on stderr and printed nothing else.
fn assert_fails_with(out: &Output, line: &str) {
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_eq!(out.stderr, format!("{line}\n"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn fewer_than_two_arguments_print_the_usage_line_on_stdout_and_exit_0() {
    for args in [
        &[][..],
        &["127.0.0.1:10080"],
        &["x"],
        &["--timeout", "3", "h:1"],
    ] {
        let out = penctl(args);
        assert_eq!(out.code(), Some(0), "{args:?}: {out:?}");
        assert_eq!(out.stdout_text(), USAGE, "{args:?}");
        assert_eq!(out.stderr, "", "{args:?}");
    }
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    for args in [&["--help"][..], &["-h"], &["--help", "h:1", "servers"]] {
        let out = penctl(args);
        assert_eq!(out.code(), Some(0), "{out:?}");
        let text = out.stdout_text();
        assert!(text.starts_with("usage: penctl"), "{text}");
        for option in ["--timeout", "--connect-timeout", "--version"] {
            assert!(text.contains(option), "--help lacks {option}: {text}");
        }
        assert_eq!(out.stderr, "");
    }
    for args in [&["--version"][..], &["-V"]] {
        let out = penctl(args);
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert!(out.stdout_text().starts_with("penctl "), "{out:?}");
    }
}

#[test]
fn an_address_without_a_port_is_refused_as_0_34_1_words_it() {
    for address in ["127.0.0.1", "localhost", "[::1]", "host:"] {
        assert_fails_with(&penctl(&[address, "servers"]), "no port given");
    }
}

#[test]
fn bad_addresses_are_named() {
    let cases = [
        ("[::1:80", "missing ']' after the IPv6 address in '[::1:80'"),
        ("[::1]80", "expected ':' and a port after ']' in '[::1]80'"),
        (
            "127.0.0.1:0",
            "port '0' is not a number from 1 to 65535 or a service name",
        ),
        (
            "127.0.0.1:65616",
            "port '65616' is not a number from 1 to 65535 or a service name",
        ),
        (
            "127.0.0.1:no-such-service",
            "getaddrinfo: Servname not supported for ai_socktype",
        ),
    ];
    for (address, line) in cases {
        assert_fails_with(&penctl(&[address, "servers"]), line);
    }
}

#[test]
fn an_unknown_host_reports_the_resolvers_reason() {
    let out = penctl(&["no.such.host.invalid:10080", "servers"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.starts_with("getaddrinfo: "), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

#[test]
fn a_refused_port_and_a_missing_socket_cannot_be_connected() {
    // Bound but not listening: connects to it are refused.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    let out = penctl(&[format!("127.0.0.1:{port}"), "servers".into()]);
    assert_fails_with(&out, "error connecting to server");

    let dir = TempDir::new("missing");
    let path = dir.join("no.sock");
    let out = penctl(&[path.as_os_str(), "servers".as_ref()]);
    assert_fails_with(&out, "error connecting to server");
}

#[test]
fn the_1021_character_limit_is_checked_before_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    for words in [
        vec!["x".repeat(1022)],
        vec!["a".repeat(500), "b".repeat(521)],
        vec!["server".into(), "1".into(), "x".repeat(1013)],
    ] {
        let mut args = vec![address.clone()];
        args.extend(words);
        assert_fails_with(&penctl(&args), "Overlong argument list");
    }
    assert!(
        listener.accept().is_err(),
        "penctl connected although its command line was refused"
    );
}

#[test]
fn an_address_of_1024_characters_is_an_overlong_arg() {
    let address = format!("{}:1", "h".repeat(1022));
    assert_fails_with(
        &penctl(&[address.as_str(), "servers"]),
        &format!("Overlong arg '{address}'"),
    );
    let path = format!("/tmp/{}", "p".repeat(200));
    assert_fails_with(
        &penctl(&[path.as_str(), "servers"]),
        &format!("Unix socket path '{path}' is longer than 107 bytes"),
    );
}

#[test]
fn bad_options_are_named_and_exit_1() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["-x", "h:1", "servers"],
            "unknown option '-x' (see penctl --help)",
        ),
        (
            &["--timeout"],
            "option '--timeout' needs a number of seconds",
        ),
        (
            &["--timeout", "soon", "h:1", "servers"],
            "option '--timeout': 'soon' is not a number of seconds",
        ),
        (
            &["--connect-timeout=-1", "h:1", "servers"],
            "option '--connect-timeout': '-1' is not a number of seconds",
        ),
        (
            &["--timeout", "1e9999", "h:1", "servers"],
            "option '--timeout': '1e9999' is not a number of seconds",
        ),
    ];
    for (args, line) in cases {
        assert_fails_with(&penctl(args), line);
    }
}

#[test]
fn arguments_that_are_not_utf8_never_crash_it() {
    let bytes = |b: &[u8]| OsString::from_vec(b.to_vec());
    let cases = [
        vec![bytes(b"\xff\xfe"), bytes(b"servers")],
        vec![bytes(b"h\xff:1"), bytes(b"servers")],
        vec![bytes(b"h:\xff"), bytes(b"servers")],
        vec![bytes(b"--timeout=\xff"), bytes(b"h:1"), bytes(b"x")],
        vec![bytes(b"-\xff"), bytes(b"h:1"), bytes(b"x")],
    ];
    for args in cases {
        let out = penctl(&args);
        assert_eq!(out.code(), Some(1), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
    }
}
