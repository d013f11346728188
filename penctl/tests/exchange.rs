//! penctl against test servers that record exactly what it sends and answer as pen might (or as
//! a broken pen might): the request bytes, every address form, the reply copied byte for byte,
//! and the timeouts that keep it from waiting for ever.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};

use support::*;

fn reply(pieces: &[&[u8]]) -> Answer {
    Answer::Reply(pieces.iter().map(|p| p.to_vec()).collect())
}

#[test]
fn sends_the_words_joined_by_single_spaces_and_a_newline_in_one_write() {
    let cases: [(&[&str], &[u8]); 4] = [
        (&["servers"], b"servers\n"),
        (&["server", "1", "weight", "3"], b"server 1 weight 3\n"),
        (&["a", "", "b"], b"a  b\n"),
        (&["client_acl", "-5"], b"client_acl -5\n"),
    ];
    for (words, want) in cases {
        let server = Server::tcp("127.0.0.1:0", reply(&[]));
        let mut args = vec![format!("127.0.0.1:{}", server.port())];
        args.extend(words.iter().map(|w| w.to_string()));
        let out = penctl(&args);
        assert_eq!(out.code(), Some(0), "{words:?}: {out:?}");
        assert_eq!(server.request(), vec![want.to_vec()], "{words:?}");
    }
}

#[test]
fn the_longest_command_is_sent_whole() {
    let server = Server::tcp("127.0.0.1:0", reply(&[b"ok\n"]));
    let word = "x".repeat(1021);
    let out = penctl(&[format!("127.0.0.1:{}", server.port()), word.clone()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(server.request().concat(), format!("{word}\n").into_bytes());
}

#[test]
fn the_reply_is_copied_byte_for_byte_until_eof_and_exit_is_0() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let cases: Vec<Vec<Vec<u8>>> = vec![
        vec![],
        vec![b"10\n".to_vec()],
        vec![b"tarpit_acl = -1".to_vec()],
        vec![
            b"0 addr 127.0.0.1 ".to_vec(),
            b"port 9001\n1 addr".to_vec(),
            b" ::1\n".to_vec(),
        ],
        vec![big.clone()],
    ];
    for pieces in cases {
        let server = Server::tcp("127.0.0.1:0", Answer::Reply(pieces.clone()));
        let out = penctl(&[format!("127.0.0.1:{}", server.port()), "servers".into()]);
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert_eq!(out.stdout, pieces.concat());
        assert_eq!(out.stderr, "");
    }
}

#[test]
fn an_error_text_from_pen_is_printed_and_exit_is_still_0() {
    let text = b"do_cmd: ignoring command starting with 'bogus'\n";
    let server = Server::tcp("127.0.0.1:0", reply(&[text]));
    let out = penctl(&[format!("127.0.0.1:{}", server.port()), "bogus".into()]);
    assert_eq!((out.code(), out.stdout.as_slice()), (Some(0), &text[..]));
}

#[test]
fn ipv6_unbracketed_as_pen_writes_it_and_bracketed() {
    require_ipv6();
    for form in ["::1:{}", "[::1]:{}", "[0:0:0:0:0:0:0:1]:{}"] {
        let server = Server::tcp("[::1]:0", reply(&[b"v6\n"]));
        let address = form.replace("{}", &server.port().to_string());
        let out = penctl(&[address.as_str(), "servers"]);
        assert_eq!(out.code(), Some(0), "{address}: {out:?}");
        assert_eq!(out.stdout_text(), "v6\n", "{address}");
        assert_eq!(server.request(), vec![b"servers\n".to_vec()]);
    }
}

#[test]
fn host_names_are_resolved() {
    let server = Server::tcp("127.0.0.1:0", reply(&[b"named\n"]));
    // localhost may resolve to ::1 first; penctl tries each address until one accepts.
    let out = penctl(&[format!("localhost:{}", server.port()), "mode".into()]);
    assert_eq!(
        (out.code(), out.stdout_text()),
        (Some(0), "named\n".into()),
        "{out:?}"
    );
}

#[test]
fn a_path_with_a_slash_is_a_unix_socket() {
    let dir = TempDir::new("unix");
    let path = dir.join("ctl.sock");
    let server = Server::unix(&path, reply(&[b"/x/ctl.sock\n"]));
    let out = penctl(&[path.as_os_str(), "control".as_ref()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout_text(), "/x/ctl.sock\n");
    assert_eq!(server.request(), vec![b"control\n".to_vec()]);
}

#[test]
fn a_server_that_never_answers_is_given_up_after_the_timeout() {
    let server = Server::tcp("127.0.0.1:0", Answer::Silent);
    let out = penctl(&[
        "--timeout".to_string(),
        "0.3".into(),
        format!("127.0.0.1:{}", server.port()),
        "servers".into(),
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        "error reading from socket: the reply did not end within 0.3 seconds\n"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(server.request(), vec![b"servers\n".to_vec()]);
}

#[test]
fn a_reply_that_never_ends_is_bounded_as_a_whole_and_what_came_is_printed() {
    // A byte every 20 ms would keep a per-read timeout waiting for ever; the limit is on the
    // whole reply.
    let server = Server::tcp("127.0.0.1:0", Answer::Trickle);
    let out = penctl(&[
        "--timeout=0.5".to_string(),
        format!("127.0.0.1:{}", server.port()),
        "status".into(),
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .starts_with("error reading from socket: the reply did not end within 0.5"),
        "{out:?}"
    );
    assert!(
        !out.stdout.is_empty() && out.stdout.iter().all(|&b| b == b'.'),
        "{out:?}"
    );
}

#[test]
fn a_reset_connection_is_a_read_error_after_the_part_that_arrived() {
    let server = Server::tcp("127.0.0.1:0", Answer::Reset(b"partial".to_vec()));
    let out = penctl(&[format!("127.0.0.1:{}", server.port()), "servers".into()]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_eq!(out.stderr, "error reading from socket\n");
    // The bytes sent before the reset may or may not be read before the RST is seen.
    assert!(b"partial".starts_with(&out.stdout), "{out:?}");
}

#[test]
fn a_pen_that_accepts_nothing_is_given_up_after_the_connect_timeout() {
    let hole = BlackHole::tcp();
    let ServerAddr::Tcp(addr) = hole.addr.clone() else {
        unreachable!()
    };
    let out = penctl(&[
        "--connect-timeout".to_string(),
        "0.3".into(),
        addr.to_string(),
        "servers".into(),
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        "error connecting to server: no connection within 0.3 seconds\n"
    );

    let dir = TempDir::new("hole");
    let path = dir.join("ctl.sock");
    let _hole = BlackHole::unix(&path);
    let out = penctl(&[
        "--connect-timeout".as_ref(),
        "0.3".as_ref(),
        path.as_os_str(),
        "servers".as_ref(),
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        "error connecting to server: no connection within 0.3 seconds\n"
    );
}

#[test]
fn a_closed_stdout_ends_it_quietly_with_status_1() {
    let server = Server::tcp("127.0.0.1:0", Answer::Reply(vec![vec![b'x'; 4 << 20]]));
    let mut child = Command::new(penctl_bin())
        .args([format!("127.0.0.1:{}", server.port()), "status".into()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run penctl");
    // Nobody reads stdout: the pipe fills, then its reader goes away.
    drop(child.stdout.take());
    let mut stderr = child.stderr.take().expect("stderr");
    let status = wait_bounded(&mut child, RUN_LIMIT);
    let mut text = String::new();
    let _ = stderr.read_to_string(&mut text);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{status:?} {text}");
    assert_eq!(text, "");
}
