//! Reliability catalogue S16: a second pen started on the ports of a running one fails at once,
//! names the address it could not have, and takes nothing from the first. pen 0.34.1 sets
//! SO_REUSEPORT on every listener, so its second instance silently shares the first one's
//! traffic (reference P13).

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::control::Controlled;
use support::udp::{udp_ask, udp_client, Answer, UdpBackend};
use support::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// The second pen's exit: status 1 and one line naming `what` and the address in use.
fn assert_refused(out: &Output, what: &str, addr: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = format!("{what}{addr}: Address already in use");
    assert!(out.stderr.contains(&line), "should say {line:?}: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

/// The first pen still relays, and its control port still answers, for every one of
/// 20 clients and 5 commands (a shared socket would hand some of them to the second).
fn assert_first_intact(c: &Controlled) {
    for n in 0..20u8 {
        assert_eq!(c.pen.ask_from(2 + n), "a");
    }
    for _ in 0..5 {
        assert_eq!(c.ctl("blacklist"), "30\n");
    }
}

#[test]
fn a_second_pen_on_the_same_listen_and_control_ports_fails_and_takes_nothing() {
    let a = Backend::named("a");
    let first = Controlled::start(&[], &[a.spec()]);
    let listen = first.pen.listen_arg.clone();
    let control = first.control.to_string();
    let user = support::control::user_args();
    let user: Vec<&str> = user.iter().map(String::as_str).collect();

    // Both ports taken: the control port is bound first, and named as such.
    let mut args = vec!["-f", "-C", &control];
    args.extend(&user);
    let both: Vec<&str> = args
        .iter()
        .copied()
        .chain([listen.as_str(), "127.0.0.1:9"])
        .collect();
    assert_refused(
        &run_pen(&both, RUN_TIMEOUT),
        "control port (-C): can't bind ",
        &control,
    );

    // Only the control port taken: the second pen's own listen port is left free.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let own = held.local_addr().unwrap().to_string();
    drop(held);
    let control_only: Vec<&str> = args
        .iter()
        .copied()
        .chain([own.as_str(), "127.0.0.1:9"])
        .collect();
    assert_refused(
        &run_pen(&control_only, RUN_TIMEOUT),
        "control port (-C): can't bind ",
        &control,
    );
    TcpListener::bind(&own).expect("the refused pen left its listen port bound");

    // Only the listen port taken, with a control port of its own (or none).
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_control = other.local_addr().unwrap().to_string();
    drop(other);
    let mut listen_only = vec!["-f", "-C", &other_control];
    listen_only.extend(&user);
    listen_only.extend([listen.as_str(), "127.0.0.1:9"]);
    assert_refused(&run_pen(&listen_only, RUN_TIMEOUT), "can't bind ", &listen);
    TcpListener::bind(&other_control).expect("the refused pen left its control port bound");
    assert_refused(
        &run_pen(&["-f", &listen, "127.0.0.1:9"], RUN_TIMEOUT),
        "can't bind ",
        &listen,
    );

    assert_first_intact(&first);
    first.pen.finish();
}

#[test]
fn a_second_pen_on_the_same_unix_control_socket_fails_and_leaves_it_to_the_first() {
    let a = Backend::named("a");
    let dir = TempDir::new("second-control");
    let path = dir.join("ctl.sock").display().to_string();
    let user = support::control::user_args();
    let mut opts = vec!["-C", &path];
    opts.extend(user.iter().map(String::as_str));
    let first = Pen::start(&opts, &[a.spec()]);
    let ask = || support::control::ctl_unix(std::path::Path::new(&path), "blacklist");
    assert_eq!(ask(), "30\n");

    let own = format!(
        "127.0.0.1:{}",
        free_port(std::net::Ipv4Addr::LOCALHOST.into())
    );
    let mut args = vec!["-f"];
    args.extend(&opts);
    args.extend([own.as_str(), "127.0.0.1:9"]);
    let out = run_pen(&args, RUN_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "control port (-C): {path}: another process is listening on this socket"
        )),
        "{out:?}"
    );
    TcpListener::bind(&own).expect("the refused pen left its listen port bound");
    // The socket is still the first pen's: not removed, not replaced.
    for _ in 0..5 {
        assert_eq!(ask(), "30\n");
    }
    assert_eq!(first.ask_from(2), "a");
    first.finish();
}

#[test]
fn a_second_udp_pen_on_the_same_port_fails_and_takes_no_datagrams() {
    let a = UdpBackend::new("a", Answer::Echo);
    let first = Pen::start_udp(&[], &[a.spec()]);
    let addr = first.udp().to_string();
    let out = run_pen(&["-f", "-U", &addr, "127.0.0.1:9"], RUN_TIMEOUT);
    assert_refused(&out, "can't bind udp ", &addr);
    // Every datagram still reaches the first pen (a shared port would split them).
    for i in 0..20 {
        let client = udp_client(std::net::Ipv4Addr::LOCALHOST.into());
        let msg = format!("ping {i}");
        let (reply, _) = udp_ask(&client, first.udp(), msg.as_bytes()).expect("a reply");
        assert_eq!(reply, format!("a:{msg}").into_bytes());
    }
    first.finish();
}
