//! The command line of the real binary: exit codes, where messages go, what they name, and that
//! bad input is refused before anything is bound.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use pen::cli::{Flag, Support, FLAGS};
use support::*;

/// Bad input never needs DNS to time out; a generous bound anyway.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn run(args: &[&str]) -> Output {
    run_pen(args, RUN_TIMEOUT)
}

#[test]
fn no_arguments_prints_usage_on_stdout_and_exits_0() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.starts_with("usage:"), "{out:?}");
    assert!(
        out.stdout.contains("-r "),
        "the usage lists the options: {out:?}"
    );
    assert_eq!(out.stderr, "");
}

#[test]
fn help_version_and_dash_n_exit_0() {
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    assert!(help.stdout.contains("usage:") && help.stdout.contains("--version"));
    assert!(help.stdout.contains("--check"), "{help:?}");
    let version = run(&["--version"]);
    assert_eq!(version.status.code(), Some(0), "{version:?}");
    assert!(version.stdout.starts_with("pen "), "{version:?}");
    let n = run(&["-N", "1", "2"]);
    assert_eq!(n.status.code(), Some(0), "{n:?}");
    assert!(n.stdout.starts_with("usage:"), "{n:?}");
}

#[test]
fn dash_i_prints_windows_only_and_exits_0() {
    let out = run(&["-i", "x"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // C pen prints it on stderr.
    assert_eq!(
        format!("{}{}", out.stdout, out.stderr).trim(),
        "Windows only"
    );
}

#[test]
fn unknown_option_exits_1_naming_it() {
    let out = run(&["-z", "1", "2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with("pen: ") && out.stderr.contains("'z'"),
        "{out:?}"
    );
    assert_eq!(out.stdout, "");
}

/// Each case gets a listen port we hold ourselves: if pen bound before validating, it would
/// report the port as busy instead of naming the bad argument.
#[test]
fn bad_input_exits_1_naming_the_argument_before_binding() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let l = held.local_addr().unwrap().to_string();
    let s = "127.0.0.1:9";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-b", "abc", &l, s], "-b abc"),
        (vec!["-t", "0", &l, s], "-t 0"),
        (vec!["-x", "0", &l, s], "-x 0"),
        (vec!["-c", "abc", &l, s], "-c abc"),
        (vec!["-T", "-1", &l, s], "-T -1"),
        (vec![&l, s, "-b"], "-b"),
        (vec!["99999", "127.0.0.1"], "99999"),
        (vec![&l, "127.0.0.1:80:x"], "127.0.0.1:80:x"),
        (vec![&l, "127.0.0.1:80:1:x"], "127.0.0.1:80:1:x"),
        (vec![&l, "nonexistent.invalid"], "nonexistent.invalid"),
        (vec![&l, "nonexistent.invalid:80"], "nonexistent.invalid"),
        (vec!["-e", "bad:host:x", &l, s], "bad:host:x"),
        (vec![&l, "::1:9004"], "::1:9004"),
        (vec![&l, "127.0.0.1:"], "127.0.0.1:"),
        (vec![&l, ":80"], ":80"),
        (vec![&l, "127.0.0.1:99999"], "127.0.0.1:99999"),
        (vec![&l, "127.0.0.1:0"], "127.0.0.1:0"),
        (vec![&l, "[::1"], "[::1"),
        (vec![&l, "[::1]:"], "[::1]:"),
        (vec![&l, "127.0.0.1:80:1:2:3:4:5"], "127.0.0.1:80:1:2:3:4:5"),
        (vec![&l, ""], "''"),
        (vec!["-o", "idle_timeout x", &l, s], "idle_timeout x"),
        (
            vec!["-o", "server 1 address 127.0.0.2\rport 99", &l, s],
            "-o 'server 1 address 127.0.0.2\\rport 99': a line break",
        ),
        (vec!["-f"], "no listen address"),
    ];
    for (args, named) in cases {
        let mut argv = vec!["-f"];
        argv.extend(args.iter().copied());
        let out = run(&argv);
        assert_eq!(out.status.code(), Some(1), "pen {argv:?}: {out:?}");
        assert!(
            out.stderr.starts_with("pen: ") && out.stderr.contains(named),
            "pen {argv:?}: stderr does not name {named:?}: {:?}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("can't bind"),
            "pen {argv:?} tried to bind before validating: {:?}",
            out.stderr
        );
        assert_eq!(out.stdout, "", "pen {argv:?}");
    }
    // And nobody listens on the port (pen left nothing behind). SO_REUSEADDR, so that another
    // test's connection that happens to use the same local port does not count.
    drop(held);
    let again = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    again.set_reuse_address(true).unwrap();
    let addr: std::net::SocketAddr = l.parse().unwrap();
    again
        .bind(&addr.into())
        .and_then(|()| again.listen(1))
        .expect("listen port free after the failed starts");
}

/// Every option whose feature is not in this build (pen's own table says which) is refused.
#[test]
fn options_of_later_features_exit_1_naming_the_option() {
    let later: Vec<&Flag> = FLAGS
        .iter()
        .filter(|f| matches!(f.support, Support::NotYet(_)))
        .collect();
    for f in later {
        let flag = format!("-{}", f.letter);
        let mut argv = vec!["-f", flag.as_str()];
        if f.arg.is_some() {
            argv.push("x");
        }
        argv.extend(["127.0.0.1:9", "127.0.0.1:10"]);
        let out = run(&argv);
        assert_eq!(out.status.code(), Some(1), "pen {argv:?}: {out:?}");
        assert!(
            out.stderr.starts_with(&format!("pen: -{}: ", f.letter))
                && out
                    .stderr
                    .contains("is not available in this version of pen"),
            "pen {argv:?}: {:?}",
            out.stderr
        );
    }
}

#[test]
fn obsolete_option_prints_a_notice_and_pen_still_runs() {
    let (a, b) = (Backend::named("A"), Backend::named("B"));
    let pen = Pen::start(&["-D"], &[a.spec(), b.spec()]);
    assert_eq!(pen.ask_from(2), "B");
    assert!(
        pen.stderr_text()
            .contains("Pen 0.26.0 removed the delayed forward feature"),
        "{}",
        pen.stderr_text()
    );
    pen.finish();
}

#[test]
fn no_effect_option_p_is_accepted() {
    let a = Backend::named("A");
    let pen = Pen::start(&["-P"], &[a.spec()]);
    assert_eq!(pen.ask_from(2), "A");
    pen.finish();
}

#[test]
fn options_after_positionals_apply() {
    let (a, b) = (Backend::named("A"), Backend::named("B"));
    let (sa, sb) = (a.spec(), b.spec());
    let pen = Pen::spawn(Listen::V4, &[], |l| {
        vec![l.into(), sa.clone(), sb.clone(), "-f".into(), "-r".into()]
    });
    // -r applied: the same client rotates instead of being tracked.
    let got = [pen.ask_from(2), pen.ask_from(2)];
    assert_eq!(got, ["B", "A"]);
    assert!(
        !pen.stderr_text().contains("daemon mode"),
        "-f was ignored: {}",
        pen.stderr_text()
    );
    pen.finish();
}

#[test]
fn clustered_and_attached_option_values() {
    let (a, b) = (Backend::named("A"), Backend::named("B"));
    let (sa, sb) = (a.spec(), b.spec());
    let pen = Pen::spawn(Listen::V4, &[], |l| {
        vec!["-fr".into(), "-b5".into(), l.into(), sa.clone(), sb.clone()]
    });
    let got = [pen.ask_from(2), pen.ask_from(2)];
    assert_eq!(got, ["B", "A"]);
    pen.finish();
}

#[test]
fn a_listen_port_in_use_exits_1() {
    let first = Pen::start(&[], &["127.0.0.1:9".to_string()]);
    let l = first.listen_arg.clone();
    let out = run(&["-f", &l, "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with("pen: ") && out.stderr.contains(&l),
        "{out:?}"
    );
    first.finish();
}

/// Pen's listening sockets on IPv4 TCP `port` (its own descriptors, in LISTEN state).
fn listening_sockets(pid: u32, port: u16) -> usize {
    let mine = socket_inodes(pid);
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1].ends_with(&local) && f[3] == "0A")
        .filter(|f| f[9].parse().is_ok_and(|inode: u64| mine.contains(&inode)))
        .count()
}

#[test]
fn data_threads_share_one_listening_socket_and_a_second_pen_still_fails() {
    let a = Backend::named("A");
    let pen = Pen::spawn(Listen::V4, &["env", "PEN_THREADS=3"], |l| {
        vec!["-f".to_string(), l.to_string(), a.spec()]
    });
    assert_eq!(listening_sockets(pen.pid(), pen.port()), 1);
    // Every thread waits on that socket: each client is served, whichever accepts it.
    for i in 0..60u8 {
        assert_eq!(pen.ask_from(2 + i % 30), "A");
    }
    // A second pen on the address fails, with one thread or several: pen sets no
    // SO_REUSEPORT, so the kernel never lets two listeners share the address.
    let l = pen.listen_arg.clone();
    for threads in ["1", "3"] {
        let out = run_pen_with(
            &[("PEN_THREADS", threads)],
            &["-f", &l, "127.0.0.1:9"],
            RUN_TIMEOUT,
        );
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stderr.contains("in use"), "{out:?}");
    }
    assert_eq!(listening_sockets(pen.pid(), pen.port()), 1);
    assert_eq!(pen.ask_from(2), "A");
    pen.finish();
}

/// Regression: pen at commit 1a3e95c printed the OS error twice (`pen: can't bind
/// 127.0.0.1:P: Address already in use (os error 98): Address already in use (os error 98)`).
#[test]
fn bind_failure_message_states_the_os_error_once() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let l = held.local_addr().unwrap().to_string();
    let out = run(&["-f", &l, "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr.matches("os error 98").count(),
        1,
        "{:?}",
        out.stderr
    );
}

/// `--check` (reliability catalogue B8): the whole configuration is read and checked as a start
/// would, then pen exits, 0 with a summary on stdout or 1 naming what is wrong. The listen and
/// control ports are held by the test, so a `--check` that bound anything would fail; the pid
/// file must never appear.
#[test]
fn check_mode_validates_the_configuration_and_binds_nothing() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let l = held.local_addr().unwrap().to_string();
    let control = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = control.local_addr().unwrap().to_string();
    let files = support::tls::Files::new();
    let pid = files.path("pen.pid");
    let ca = support::tls::Ca::new("check CA");
    let cert = files.leaf("site", &ca.server(&["localhost"]));
    let key = files.path("site.key");
    let good_cfg = files.write(
        "good.cfg",
        "server 1 address 127.0.0.3 port 81\nblacklist 5\n",
    );
    let bad_cfg = files.write("bad.cfg", "blacklist 5\nblacklist abc\n");
    let geoip = files.write("not-a.mmdb", "not a database");

    let good = run(&[
        "--check",
        "-p",
        &pid,
        "-C",
        &c,
        "-F",
        good_cfg.to_str().unwrap(),
        &l,
        "127.0.0.1:80",
        "127.0.0.2",
    ]);
    assert_eq!(good.status.code(), Some(0), "{good:?}");
    assert_eq!(
        good.stdout.trim(),
        format!("pen: configuration is valid: TCP on {l}, 2 servers"),
        "{good:?}"
    );
    let tls = run(&[
        "--check",
        "-E",
        &cert.display().to_string(),
        "-K",
        &key,
        &l,
        "127.0.0.1:80",
    ]);
    assert_eq!(tls.status.code(), Some(0), "{tls:?}");
    assert!(tls.stdout.contains(", TLS"), "{tls:?}");

    let cert_text = cert.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--check", &l, "127.0.0.1:99999"], "99999"),
        (
            vec!["--check", "-F", "/nonexistent.cfg", &l, "127.0.0.1"],
            "/nonexistent.cfg",
        ),
        (
            vec!["--check", "-F", bad_cfg.to_str().unwrap(), &l, "127.0.0.1"],
            "abc",
        ),
        (
            vec!["--check", "-u", "no-such-user-here", &l, "127.0.0.1"],
            "no-such-user-here",
        ),
        (
            vec!["--check", "-j", "/nonexistent-jail", &l, "127.0.0.1"],
            "/nonexistent-jail",
        ),
        (
            vec!["--check", "-g", geoip.to_str().unwrap(), &l, "127.0.0.1"],
            "not-a.mmdb",
        ),
        (
            vec!["--check", "-E", "/nonexistent.pem", &l, "127.0.0.1"],
            "/nonexistent.pem",
        ),
        // The key does not match the certificate's kind of file: the certificate as its key.
        (
            vec![
                "--check",
                "-E",
                &cert_text,
                "-K",
                &cert_text,
                &l,
                "127.0.0.1",
            ],
            "key",
        ),
    ];
    for (args, named) in cases {
        let mut args = args;
        args.splice(1..1, ["-p", pid.as_str()]);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            out.stderr.starts_with("pen: ") && out.stderr.contains(named),
            "{args:?}: the message should name {named:?}: {out:?}"
        );
        assert_eq!(out.stdout, "", "{args:?}: {out:?}");
    }
    assert!(
        !std::path::Path::new(&pid).exists(),
        "--check never writes a pid file"
    );
}

#[test]
fn udp_on_a_unix_socket_path_is_refused_before_anything_is_made() {
    let dir = TempDir::new("udp-unix");
    let path = dir.join("pen.sock");
    let listen = path.to_str().unwrap();
    // On the command line, and from an -F file's `listen`, which only the start can check.
    let cfg = dir.join("pen.cfg");
    std::fs::write(&cfg, format!("listen {listen}\n")).unwrap();
    let cfg = cfg.to_str().unwrap();
    for (args, says) in [
        (
            vec!["-f", "-U", listen, "127.0.0.1:53"],
            "UDP needs IP addresses",
        ),
        (
            vec!["--check", "-U", listen, "127.0.0.1:53"],
            "UDP needs IP addresses",
        ),
        (
            vec!["-f", "-U", "-F", cfg, "127.0.0.1:53"],
            "-U: UDP needs an IP listen address",
        ),
        (
            vec!["--check", "-U", "-F", cfg, "127.0.0.1:53"],
            "-U: UDP needs an IP listen address",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.contains(says), "{args:?}: {out:?}");
        assert!(!path.exists(), "{args:?} made the socket file");
    }
}

// ---- Unix socket path lengths (catalogue O5) ----------------------------------------------------

/// A path of exactly `len` bytes: `dir`, a slash, and a file name padded with `fill` (a
/// character of one or more bytes; the name ends in `p`s to reach the length exactly).
fn path_of_len(dir: &TempDir, len: usize, fill: char) -> std::path::PathBuf {
    let base = dir.path().to_str().expect("UTF-8 temp dir").len() + 1;
    assert!(
        base + 8 <= len,
        "the temp dir {} is too long for a {len}-byte path",
        dir.path().display()
    );
    let mut name = String::new();
    while base + name.len() + fill.len_utf8() <= len {
        name.push(fill);
    }
    while base + name.len() < len {
        name.push('p');
    }
    let path = dir.path().join(name);
    assert_eq!(path.as_os_str().len(), len);
    path
}

/// Names in `dir` (to show that nothing was created there, at the path or cut short).
fn entries(dir: &TempDir) -> Vec<String> {
    std::fs::read_dir(dir.path())
        .expect("read the temp dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// Catalogue O5: sun_path holds 108 bytes with the terminating NUL, so 107 bytes is the longest
/// usable Unix socket path. pen listens at paths of 100 and 107 bytes and relays a client to a
/// server; a server at a 107-byte path is reached as well.
#[test]
fn unix_socket_paths_of_100_and_107_bytes_listen_and_relay() {
    let dir = TempDir::new("len");
    let a = Backend::named("A");
    for len in [100, 107] {
        let path = path_of_len(&dir, len, 'l');
        let pen = Pen::start_on(Listen::Unix(path.clone()), &[], &[a.spec()]);
        let mut s = pen.connect();
        assert_eq!(
            ask(&mut s).expect("an answer"),
            "A",
            "pen listening at a {len}-byte path"
        );
        drop(s);
        pen.finish();
    }
    let server = path_of_len(&dir, 107, 's');
    let u = Backend::named_unix(&server, "U");
    let pen = Pen::start(&[], &[u.spec()]);
    assert_eq!(pen.ask_from(2), "U", "a server at a 107-byte path");
    pen.finish();
}

/// Catalogue O5 (pen P14: C pen cut a long path short with snprintf and bound that): a Unix
/// socket path of 108 bytes or more can never be bound or connected to, so pen refuses it at
/// start-up, before binding anything, with exit status 1 and a message naming the path and the
/// limit. Nothing is created, neither at the path nor at the path cut to 107 bytes (both would
/// be in the same directory). The limit is in bytes: 108 bytes of two-byte characters count as
/// 108. The same for a server, the emergency and abuse servers, the control socket, a config
/// file's `listen`, and an `-o 'server N address PATH'`. The listen port is held by the test, so a pen that bound before
/// checking would report the port as busy instead.
#[test]
fn unix_socket_paths_of_108_bytes_and_more_are_refused_before_binding() {
    let dir = TempDir::new("long");
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let l = held.local_addr().unwrap().to_string();
    let s = "127.0.0.1:9";
    let paths: Vec<String> = [(108, 'p'), (200, 'p'), (108, 'é')]
        .into_iter()
        .map(|(len, fill)| path_of_len(&dir, len, fill).display().to_string())
        .collect();
    // Elsewhere, so that `dir` stays empty.
    let config_dir = TempDir::new("cfg");
    let config = config_dir.join("pen.cfg");
    for path in &paths {
        let p = path.as_str();
        let server_with_fields = format!("{p}:0:5");
        std::fs::write(&config, format!("listen {p}\n")).unwrap();
        let cfg = config.to_str().unwrap();
        let cases: Vec<Vec<&str>> = vec![
            vec!["-f", p, s],
            vec!["-f", &l, p],
            vec!["-f", &l, &server_with_fields],
            vec!["-f", "-e", p, &l, s],
            vec!["-f", "-B", p, &l, s],
            vec!["-f", "-C", p, &l, s],
            vec!["-f", "-F", cfg, s],
            vec!["--check", p, s],
        ];
        for argv in cases {
            let out = run(&argv);
            assert_eq!(out.status.code(), Some(1), "pen {argv:?}: {out:?}");
            assert!(
                out.stderr.starts_with("pen: ")
                    && out.stderr.contains(&format!("'{p}'"))
                    && out.stderr.contains("longer than 107 bytes"),
                "pen {argv:?}: the message should name the path and the limit: {:?}",
                out.stderr
            );
            assert!(
                !out.stderr.contains("can't bind") && !out.stderr.contains("in use"),
                "pen {argv:?} tried to bind before checking: {:?}",
                out.stderr
            );
            assert_eq!(
                entries(&dir),
                Vec::<String>::new(),
                "pen {argv:?} created something"
            );
        }
        // The control command that sets a server's address says it in the same words.
        let command = format!("server 0 address {p}");
        let argv = ["-f", "-o", &command, &l, s];
        let out = run(&argv);
        assert_eq!(out.status.code(), Some(1), "pen {argv:?}: {out:?}");
        assert!(
            out.stderr.starts_with("pen: -o ")
                && out.stderr.contains(&format!("'{p}'"))
                && out
                    .stderr
                    .contains("Unix socket path is longer than 107 bytes"),
            "pen {argv:?}: {:?}",
            out.stderr
        );
        assert_eq!(entries(&dir), Vec::<String>::new(), "pen {argv:?}");
    }
}
