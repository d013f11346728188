//! Our penctl against Debian's C pen 0.34.1 as a live peer, side by side with Debian's C penctl:
//! the same command to the same pen must print the same bytes, on the same streams, with the same
//! exit status. The control port is tried on IPv4, on IPv6 (pen's unbracketed `::1:port` and our
//! bracketed `[::1]:port`) and on a Unix socket.
//!
//! Our pen gets its control port from the control-port work; the scenarios take the pen binary
//! as an argument so that they can run against it too.

use std::path::Path;

use pen_crosstests::penctl::{c_penctl, our_penctl, run_penctl, Control, ControlledPen};
use pen_crosstests::{c_pen, Backend, DeadServer, Output};

/// Both penctls, or None when the C tools are missing and `PEN_SKIP_C_PEN=1` says to skip.
fn penctls() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    Some((c_penctl()?, our_penctl()))
}

fn assert_same(what: &str, c: &Output, ours: &Output) {
    assert!(c.status.is_some(), "{what}: C penctl did not finish: {c:?}");
    assert_eq!(
        (
            ours.status.and_then(|s| s.code()),
            &ours.stdout,
            &ours.stderr
        ),
        (c.status.and_then(|s| s.code()), &c.stdout, &c.stderr),
        "{what}: ours (left) and C penctl (right) differ"
    );
}

/// Run `args` through C penctl, then through ours, and require the same result. Returns ours.
fn compare(c: &Path, ours: &Path, args: &[&str]) -> Output {
    let c_out = run_penctl(c, args);
    let our_out = run_penctl(ours, args);
    assert_same(&args.join(" "), &c_out, &our_out);
    our_out
}

/// Read-only and idempotent commands, with the replies transcripts 03 and 05 show.
const COMMANDS: &[(&[&str], Option<&str>)] = &[
    (
        &["mode"],
        Some("no hash no roundrobin no stubborn no weight no prio\n"),
    ),
    (&["blacklist"], Some("30\n")),
    (&["timeout"], Some("3\n")),
    (&["tracking"], Some("0\n")),
    (&["client_acl"], Some("0\n")),
    (&["conn_max"], Some("500\n")),
    (&["idle_timeout"], Some("Idle timeout: 0 seconds\n")),
    (&["idlers"], Some("Idlers: 0/0\n")),
    (&["tarpit_acl"], Some("tarpit_acl = -1")),
    (
        &["connection", "500"],
        Some("Connection 500 out of range\n"),
    ),
    (
        &["bogus_command"],
        Some("do_cmd: ignoring command starting with 'bogus_command'\n"),
    ),
    (&["#comment"], Some("")),
    (&["no", "bogus"], Some("")),
    (&["recent"], Some("")),
    (&["servers"], None),
    (&["control"], None),
    (&["listen"], None),
];

fn same_replies_on(pen_bin: &Path, control: Control) {
    let Some((c, ours)) = penctls() else { return };
    let backends = [Backend::start("A"), Backend::start("B")];
    let servers: Vec<String> = backends.iter().map(Backend::spec).collect();
    // -x 500: C pen's default, which ours derives from the descriptor limit instead.
    let pen = ControlledPen::start(pen_bin, control, &["-x", "500"], &servers);
    let address = pen.address();
    for (words, want) in COMMANDS {
        let mut args = vec![address.as_str()];
        args.extend_from_slice(words);
        let out = compare(&c, &ours, &args);
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(0),
            "{args:?}: {out:?}"
        );
        if let Some(want) = want {
            assert_eq!(&out.stdout, want, "{args:?}");
        }
    }
    let servers = run_penctl(&ours, &[&address, "servers"]);
    for b in &backends {
        let line = format!("addr 127.0.0.1 port {} conn 0", b.addr().port());
        assert!(servers.stdout.contains(&line), "{line}: {servers:?}");
    }
}

#[test]
fn same_replies_as_c_penctl_from_c_pen_over_ipv4() {
    let Some(pen) = c_pen() else { return };
    same_replies_on(&pen, Control::v4());
}

#[test]
fn same_replies_as_c_penctl_from_c_pen_over_ipv6() {
    let Some(pen) = c_pen() else { return };
    same_replies_on(&pen, Control::v6());
}

#[test]
fn same_replies_as_c_penctl_from_c_pen_over_a_unix_socket() {
    let Some(pen) = c_pen() else { return };
    let dir = std::env::temp_dir().join(format!("penctl-cross-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    same_replies_on(&pen, Control::Unix(dir.join("ctl.sock")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Our pen's control port gives the replies C pen gives, through both penctls.
#[test]
fn our_pen_replies_as_c_pen_does_over_ipv4_ipv6_and_a_unix_socket() {
    let pen = pen_crosstests::our_pen();
    same_replies_on(&pen, Control::v4());
    same_replies_on(&pen, Control::v6());
    let dir = std::env::temp_dir().join(format!("penctl-ours-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    same_replies_on(&pen, Control::Unix(dir.join("ctl.sock")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bracketed_ipv6_reaches_the_same_pen_as_pens_own_notation() {
    let Some(pen_bin) = c_pen() else { return };
    let Some((c, ours)) = penctls() else { return };
    let backend = Backend::start("A");
    let control = Control::v6();
    let Control::V6(port) = control else {
        unreachable!()
    };
    let pen = ControlledPen::start(&pen_bin, control, &[], &[backend.spec()]);
    let pen_form = run_penctl(&c, &[&pen.address(), "servers"]);
    assert_eq!(
        pen_form.status.and_then(|s| s.code()),
        Some(0),
        "{pen_form:?}"
    );
    let bracketed = format!("[::1]:{port}");
    assert_same(
        "[::1]:port",
        &pen_form,
        &run_penctl(&ours, &[&bracketed, "servers"]),
    );
    // C penctl does not know brackets.
    let c_bracketed = run_penctl(&c, &[&bracketed, "servers"]);
    assert_eq!(
        c_bracketed.status.and_then(|s| s.code()),
        Some(1),
        "{c_bracketed:?}"
    );
}

#[test]
fn a_setter_through_our_penctl_changes_pen_and_both_getters_show_it() {
    let Some(pen_bin) = c_pen() else { return };
    setters_through_both_penctls(&pen_bin);
}

/// The same with our pen: setters through either penctl, replies the same.
#[test]
fn setters_through_both_penctls_change_our_pen() {
    setters_through_both_penctls(&pen_crosstests::our_pen());
}

fn setters_through_both_penctls(pen_bin: &Path) {
    let Some((c, ours)) = penctls() else { return };
    let backend = Backend::start("A");
    let pen = ControlledPen::start(pen_bin, Control::v4(), &[], &[backend.spec()]);
    let address = pen.address();
    let run = |bin: &Path, words: &[&str]| {
        let mut args = vec![address.as_str()];
        args.extend_from_slice(words);
        let out = run_penctl(bin, &args);
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(0),
            "{words:?}: {out:?}"
        );
        out.stdout
    };
    assert_eq!(run(&ours, &["blacklist", "17"]), "17\n");
    assert_eq!(run(&ours, &["blacklist"]), "17\n");
    assert_eq!(run(&c, &["blacklist"]), "17\n");
    assert_eq!(run(&ours, &["hash"]), "");
    assert_eq!(
        run(&c, &["mode"]),
        "hash no roundrobin no stubborn no weight no prio\n"
    );
    assert_eq!(run(&ours, &["server", "0", "weight", "7"]), "");
    let servers = run(&c, &["servers"]);
    assert!(servers.contains(" weight 7 "), "{servers}");
    compare(&c, &ours, &[&address, "servers"]);
}

#[test]
fn the_1021_character_limit_matches_c_penctl_on_a_live_pen() {
    let Some(pen_bin) = c_pen() else { return };
    let Some((c, ours)) = penctls() else { return };
    let backend = Backend::start("A");
    let pen = ControlledPen::start(&pen_bin, Control::v4(), &[], &[backend.spec()]);
    let address = pen.address();
    let longest = "x".repeat(1021);
    let out = compare(&c, &ours, &[&address, &longest]);
    assert!(
        out.stdout
            .starts_with("do_cmd: ignoring command starting with 'xxx"),
        "{out:?}"
    );
    let (a, b) = ("a".repeat(500), "b".repeat(520));
    compare(&c, &ours, &[&address, &a, &b]);
    let too_long = "x".repeat(1022);
    let out = compare(&c, &ours, &[&address, &too_long]);
    assert_eq!(out.stderr, "Overlong argument list\n");
    let b = "b".repeat(521);
    compare(&c, &ours, &[&address, &a, &b]);
}

#[test]
fn usage_and_errors_match_c_penctl() {
    let Some((c, ours)) = penctls() else { return };
    let dead = DeadServer::new();
    let dead = dead.spec();
    let long_address = format!("{}:1", "h".repeat(1022));
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["127.0.0.1:10001"],
        vec!["127.0.0.1", "servers"],
        vec![&dead, "servers"],
        vec!["no.such.host.invalid:1", "servers"],
        vec!["/nonexistent/dir/ctl.sock", "servers"],
        vec![":1", "servers"],
        vec!["127.0.0.1:no-such-service", "servers"],
        vec![&long_address, "servers"],
    ];
    for args in cases {
        compare(&c, &ours, &args);
    }
}
