//! The control port against the running daemon, over raw sockets: replies, changes taking
//! effect on traffic, ACLs, the config file and HUP, and the robustness cases of the reliability
//! catalogue (B1-B5, B7, S1-S3, S6-S7, D6-D7).

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use support::control::{ctl, user_args, Controlled};
use support::*;

#[test]
fn getters_and_setters_reply_as_pen_does() {
    let a = Backend::named("a");
    let c = Controlled::start(&[], &[a.spec()]);
    let cases = [
        ("blacklist", "30\n"),
        ("blacklist 7", "7\n"),
        ("timeout 5", "5\n"),
        ("tracking", "0\n"),
        ("idle_timeout 0", "Idle timeout: 0 seconds\n"),
        (
            "mode",
            "no hash no roundrobin no stubborn no weight no prio\n",
        ),
        ("hash", ""),
        ("mode", "hash no roundrobin no stubborn no weight no prio\n"),
        ("no hash", ""),
        ("client_acl", "0\n"),
        ("control_acl", "0\n"),
        ("tarpit_acl", "tarpit_acl = -1"),
        ("clients_max", "2048\n"),
        ("exit", "Exit is not enabled; restart with -X flag\n"),
        ("bogus", "do_cmd: ignoring command starting with 'bogus'\n"),
        ("block", "do_cmd: ignoring command starting with 'block'\n"),
        ("no block", ""),
        (
            "tcp_fastclose",
            "do_cmd: ignoring tcp_fastclose without argument\n",
        ),
        ("epoll", ""),
        ("# a comment", ""),
        (
            "connection 3",
            "Connection 3:\nstate = 0\ndownfd = -1, upfd = -1\nclient = 0, server = 0\npend = 0\n",
        ),
        ("socket 12345", "Socket 12345 belongs to connection -1\n"),
    ];
    for (cmd, want) in cases {
        assert_eq!(c.ctl(cmd), want, "{cmd}");
    }
    assert_eq!(c.ctl("pid"), format!("{}\n", c.pen.pid()));
    assert_eq!(c.ctl("control"), format!("{}\n", c.control));
    assert_eq!(
        c.ctl("servers"),
        format!(
            "0 addr 127.0.0.1 port {} conn 0 max 0 hard 0 weight 0 prio 0 sx 0 rx 0\n",
            a.port()
        )
    );
    c.pen.finish();
}

#[test]
fn server_changes_apply_at_once_and_keep_open_connections() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let c = Controlled::start(&["-r"], &[a.spec()]);
    let (name, mut held) = c.pen.hold_from(2);
    assert_eq!(name, "a");
    assert_eq!(
        c.ctl(&format!("server 0 address 127.0.0.1 port {}", b.port())),
        ""
    );
    assert_eq!(
        c.pen.ask_from(3),
        "b",
        "new connections go to the new address"
    );
    // The connection opened before the change is still open to a.
    assert_eq!(a.open_connections(), 1, "the open connection was dropped");
    held.write_all(b"x").unwrap();
    // Growing the table, then blacklisting.
    c.ctl(&format!(
        "server 3 address 127.0.0.1 port {} weight 2",
        a.port()
    ));
    let servers = c.ctl("servers");
    assert_eq!(servers.lines().count(), 4, "{servers}");
    assert!(servers.contains("1 addr 0.0.0.0 port 0"), "{servers}");
    c.ctl("server 0 blacklist 60");
    for n in 4..8 {
        assert_eq!(c.pen.ask_from(n), "a", "server 0 blacklisted");
    }
    drop(held);
    c.pen.finish();
}

#[test]
fn denied_clients_go_to_the_abuse_server_and_never_to_the_emergency_server() {
    let (a, abuse, emergency) = (
        Backend::named("a"),
        Backend::named("abuse"),
        Backend::named("emergency"),
    );
    // Without -B, a denied client is closed even though -e is set (pen 0.34.1 bug B11).
    let c = Controlled::start(&["-e", &emergency.spec()], &[a.spec()]);
    c.ctl("acl 1 deny 127.0.0.5 255.255.255.255");
    c.ctl("client_acl 1");
    let mut s = c.pen.connect_from(5);
    assert!(ask(&mut s).is_err(), "denied client was served");
    assert_eq!(c.pen.ask_from(6), "a");
    // Entries are masked: 1.2.3.4 255.255.0.0 matches 1.2.x.x (bug B15).
    c.ctl("no acl 1");
    c.ctl("acl 1 deny 127.0.9.9 255.255.0.0");
    let mut s = c.pen.connect_from(5);
    assert!(ask(&mut s).is_err(), "masked deny entry did not match");
    c.pen.finish();

    let c = Controlled::start(&["-B", &abuse.spec()], &[a.spec()]);
    c.ctl("acl 2 permit 127.0.0.7");
    c.ctl("client_acl 2");
    assert_eq!(c.pen.ask_from(7), "a");
    assert_eq!(
        c.pen.ask_from(8),
        "abuse",
        "permit-only list denies the rest"
    );
    // A server ACL: server 0 takes only 127.0.0.7; others fail over to nothing and close.
    c.ctl("client_acl 0");
    c.ctl("server 0 acl 2");
    assert_eq!(c.pen.ask_from(7), "a");
    let mut s = c.pen.connect_from(9);
    assert!(ask(&mut s).is_err(), "server ACL let 127.0.0.9 in");
    c.pen.finish();
}

/// Reliability catalogue S1: a denied control peer is closed with nothing executed.
#[test]
fn control_acl_denies_without_executing() {
    let a = Backend::named("a");
    let c = Controlled::start(&[], &[a.spec()]);
    c.ctl("acl 3 permit 127.0.0.2");
    assert_eq!(c.ctl_from(2, "control_acl 3").unwrap(), "3\n");
    let denied = c.ctl_from(3, "blacklist 99");
    assert!(
        denied.as_ref().map_or(true, String::is_empty),
        "denied peer got {denied:?}"
    );
    assert_eq!(
        c.ctl_from(2, "blacklist").unwrap(),
        "30\n",
        "nothing executed"
    );
    wait_until("the denial is logged", Duration::from_secs(5), || {
        c.pen
            .stderr_text()
            .contains("denied by control_acl 3")
            .then_some(())
    });
    c.pen.finish();
}

/// Reliability catalogue B1: malformed commands get one error line and change nothing.
#[test]
fn malformed_commands_change_nothing() {
    let a = Backend::named("a");
    let c = Controlled::start(&[], &[a.spec()]);
    let before = (c.ctl("servers"), c.ctl("mode"), c.ctl("blacklist"));
    for cmd in [
        "   ",
        "source",
        "server",
        "server abc port x",
        "server -1 port 1",
        "server 2147483647 port 1",
        "server 100000000 port 1",
        "conn_max 99999999999",
        "clients_max 4294967296",
        "control_acl 10",
        "acl 10 permit 1.2.3.4",
        "acl 1 permit ::1/200",
        "blacklist -5",
        "socket 999999999999",
        "close -1",
        "close 7",
        "no acl",
        "ssl_client_renegotiation_interval",
        "ssl_ocsp_response",
        "listen bogus.invalid:1",
        "server 0 address nonexistent.invalid",
    ] {
        let reply = c.ctl(cmd);
        assert!(reply.lines().count() <= 1, "{cmd}: {reply:?}");
    }
    assert_eq!(
        (c.ctl("servers"), c.ctl("mode"), c.ctl("blacklist")),
        before
    );
    assert_eq!(c.pen.ask_from(2), "a");
    c.pen.finish();
}

/// Reliability catalogue B2, B3, B5: overlong and binary input, silent and slow clients,
/// fragmented commands. The data plane keeps working throughout.
#[test]
fn hostile_control_clients_are_cut_off_and_never_delay_traffic() {
    let a = Backend::named("a");
    let c = Controlled::start(&[], &[a.spec()]);
    // A silent client and a one-byte-a-second client, held open during the rest.
    let silent = TcpStream::connect(c.control).unwrap();
    let mut slow = TcpStream::connect(c.control).unwrap();
    slow.write_all(b"b").unwrap();
    // 1 MiB without a newline.
    let mut big = TcpStream::connect(c.control).unwrap();
    big.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = big.write_all(&vec![b'x'; 1 << 20]);
    let mut reply = String::new();
    let _ = big.read_to_string(&mut reply);
    assert!(
        reply.is_empty() || reply.contains("longer than"),
        "overlong: {reply:?}"
    );
    // Binary garbage with NULs.
    let garbage: Vec<u8> = pattern(7, 65536).iter().map(|b| b % 7).collect();
    let mut g = TcpStream::connect(c.control).unwrap();
    g.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = g.write_all(&garbage);
    let mut reply = Vec::new();
    let _ = g.read_to_end(&mut reply);
    assert!(reply.len() < 200, "garbage got {} bytes", reply.len());
    // Data plane and other control clients unaffected.
    let t = Instant::now();
    assert_eq!(c.pen.ask_from(2), "a");
    assert_eq!(c.ctl("blacklist"), "30\n");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "delayed {:?}",
        t.elapsed()
    );
    // A command split over three writes runs once, correctly.
    let mut f = TcpStream::connect(c.control).unwrap();
    f.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    for part in ["server 0 bla", "cklist 3", "0\n"] {
        f.write_all(part.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut reply = String::new();
    f.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "");
    // Blacklisted: with one server and no -e, clients are refused now.
    let mut s = c.pen.connect_from(3);
    assert!(ask(&mut s).is_err());
    c.ctl("server 0 blacklist 0");
    assert_eq!(c.pen.ask_from(3), "a");
    // The silent and slow clients are cut off within the control timeout (10 s).
    for (name, mut s) in [("silent", silent), ("slow", slow)] {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "{name} got a reply");
        assert!(
            t.elapsed() < Duration::from_secs(14),
            "{name} held {:?}",
            t.elapsed()
        );
    }
    c.pen.finish();
}

/// Reliability catalogue S2, S3: loopback-only bare port, 0600 Unix socket, root needs -u.
#[test]
fn control_port_binding_rules() {
    let a = Backend::named("a");
    let dir = TempDir::new("ctl");
    let sock = dir.join("pen.ctl");
    let sock_arg = sock.display().to_string();
    let user = user_args();
    let pen = Pen::spawn(
        Listen::V4,
        &["sh", "-c", "umask 000; exec \"$0\" \"$@\""],
        |l| {
            let mut v = vec!["-f".to_string(), "-C".into(), sock_arg.clone()];
            v.extend(user.iter().cloned());
            v.push(l.to_string());
            v.push(a.spec());
            v
        },
    );
    wait_until("the control socket", Duration::from_secs(5), || {
        sock.exists().then_some(())
    });
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o} under umask 000");
    assert_eq!(support::control::ctl_unix(&sock, "blacklist"), "30\n");
    pen.finish();

    // A bare port binds 127.0.0.1 only.
    let port = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let mut args = vec!["-C".to_string(), port.to_string()];
    args.extend(user_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pen = Pen::start(&args, &[a.spec()]);
    wait_until("the control port", Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    assert!(listening.contains(&local), "not bound to 127.0.0.1");
    assert!(
        !listening.contains(&format!("00000000:{port:04X}")),
        "bound to 0.0.0.0"
    );
    pen.finish();

    // As root, no control port without -u.
    if user_args().is_empty() {
        return; // not root: pen may open it (checked above)
    }
    let port = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let pen = Pen::start(&["-C", &port.to_string()], &[a.spec()]);
    wait_until("the refusal", Duration::from_secs(5), || {
        pen.stderr_text()
            .contains("Won't open control port running as root; use -u to run as different user")
            .then_some(())
    });
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    pen.finish();
}

/// Reliability catalogue D6, D7: HUP re-reads the file as one transaction; open connections
/// survive it; a bad file keeps the old configuration.
#[test]
fn hup_rereads_the_config_file_atomically() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let dir = TempDir::new("cfg");
    let cfg = dir.join("pen.cfg");
    let server =
        |n: usize, be: &Backend| format!("server {n} address 127.0.0.1 port {}", be.port());
    std::fs::write(
        &cfg,
        format!("{}\nblacklist 11\nacl 1 deny 127.0.0.9\n", server(0, &a)),
    )
    .unwrap();
    let cfg_arg = cfg.display().to_string();
    let files = format!("control_files {}", dir.path().display());
    let c = Controlled::start(&["-d", "-r", "-o", &files, "-F", &cfg_arg], &[]);
    assert_eq!(c.ctl("blacklist"), "11\n");
    assert_eq!(c.pen.ask_from(2), "a");
    let (_, mut held) = c.pen.hold_from(3);

    // A good change: the new server list applies to new connections only.
    std::fs::write(
        &cfg,
        format!("{}\nblacklist 12\nacl 1 deny 127.0.0.9\n", server(0, &b)),
    )
    .unwrap();
    c.pen.signal("HUP");
    wait_until("the re-read", Duration::from_secs(5), || {
        (c.ctl("blacklist") == "12\n").then_some(())
    });
    assert_eq!(c.pen.ask_from(4), "b");
    assert_eq!(a.open_connections(), 1, "the open connection was dropped");
    held.write_all(b"x").unwrap();
    c.pen.signal("HUP");
    wait_until("a second re-read", Duration::from_secs(5), || {
        c.pen.stderr_text().matches("re-read").nth(1).map(|_| ())
    });
    // Re-reading the same file gives the same state: one ACL entry, not two.
    let written = dir.join("written.cfg");
    assert_eq!(c.ctl(&format!("write {}", written.display())), "");
    let text = std::fs::read_to_string(&written).unwrap();
    assert_eq!(
        text.matches("acl 1 deny 127.0.0.9 255.255.255.255").count(),
        1,
        "{text}"
    );
    // The configuration part of `servers` (connection and byte counts move with traffic).
    let config = |servers: String| -> Vec<String> {
        servers
            .lines()
            .map(|l| l.split(" conn ").next().unwrap_or("").to_string())
            .collect()
    };
    let before = config(c.ctl("servers"));

    // A bad line 3: nothing of the file applies.
    std::fs::write(
        &cfg,
        format!("{}\nblacklist 13\nserver 1 port 80\n", server(0, &a)),
    )
    .unwrap();
    c.pen.signal("HUP");
    wait_until("the rejection", Duration::from_secs(5), || {
        c.pen.stderr_text().contains("pen.cfg:3:").then_some(())
    });
    assert_eq!(c.ctl("blacklist"), "12\n");
    assert_eq!(config(c.ctl("servers")), before);
    assert_eq!(c.pen.ask_from(5), "b");
    drop(held);
    c.pen.finish();
}

/// `write` produces a file that loads back to the same configuration; over the control port
/// only inside `control_files` (reliability catalogue S6, S7).
#[test]
fn write_round_trips_and_never_follows_symlinks() {
    let a = Backend::named("a");
    let dir = TempDir::new("write");
    let files = dir.path().display().to_string();
    let c = Controlled::start(
        &["-o", &format!("control_files {files}"), "-W"],
        &[a.spec_with(":0:0:3:2")],
    );
    c.ctl("acl 4 permit 127.0.0.0 255.0.0.0");
    c.ctl("server 0 acl 4");
    // The victim: a symlink at the target path must be replaced, not followed.
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let out = dir.join("out.cfg");
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    assert_eq!(c.ctl(&format!("write {}", out.display())), "");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains(&format!(
            "server 0 acl 4 address 127.0.0.1 port {} max 0 hard 0 weight 3 prio 2\n",
            a.port()
        )),
        "{text}"
    );
    assert!(
        text.contains("acl 4 permit 127.0.0.0 255.0.0.0\n"),
        "{text}"
    );
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o002, 0, "world-writable: {mode:o}");
    // Outside the directory: refused, nothing written.
    let outside = std::env::temp_dir().join(format!("pen-outside-{}", std::process::id()));
    let reply = c.ctl(&format!("write {}", outside.display()));
    assert!(reply.contains("control_files"), "{reply}");
    assert!(!outside.exists());
    // It loads back: a second pen started from it writes the same body.
    let out_arg = out.display().to_string();
    let c2 = Controlled::start(
        &["-o", &format!("control_files {files}"), "-F", &out_arg],
        &[],
    );
    let again = dir.join("again.cfg");
    c2.ctl(&format!("write {}", again.display()));
    let body = |t: &str| t.lines().skip(2).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&std::fs::read_to_string(&again).unwrap()), body(&text));
    assert_eq!(c2.pen.ask_from(2), "a");
    c.pen.finish();
    c2.pen.finish();
}

/// Catalogue S7 over a real control port: the commands that touch files, aimed at files
/// outside the allowed directory, are refused whether `control_files` is unset or set to
/// another directory. Each refusal names its command in the reply and in pen's log, and no
/// file is created, truncated, read or deleted (`status` after a refused `web_stats` writes
/// nothing either).
#[test]
fn file_commands_outside_control_files_are_refused_logged_and_touch_nothing() {
    let a = Backend::named("a");
    let dir = TempDir::new("s7");
    let victim = dir.join("victim");
    let secret = dir.join("secret.cfg");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::write(&secret, "server 0 address 127.0.0.9 port 9\n").unwrap();
    let allowed = TempDir::new("s7-allowed");
    let confined = format!("control_files {}", allowed.path().display());
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    for opts in [vec![], vec!["-o", confined.as_str()]] {
        let c = Controlled::start(&opts, &[a.spec()]);
        let servers = c.ctl("servers");
        let v = victim.display();
        let cases = [
            ("write", format!("write {}", dir.join("evil").display())),
            ("log", format!("log {}", dir.join("keys").display())),
            ("web_stats", format!("web_stats {v}")),
            ("include", format!("include {}", secret.display())),
            ("listen", format!("listen {v}")),
            ("geoip", format!("geoip {}", secret.display())),
            (
                "ssl_sni_path",
                format!("ssl_sni_path {}", dir.path().display()),
            ),
            (
                "write",
                format!(
                    "write {}/../{}/evil",
                    allowed.path().display(),
                    dir.path().display()
                ),
            ),
        ];
        for (word, line) in &cases {
            let mark = c.pen.stderr_text().len();
            let reply = c.ctl(line);
            assert!(
                reply.starts_with(&format!("{word}: '")) && reply.contains("control_files DIR"),
                "{opts:?} {line}: {reply:?}"
            );
            let logged = wait_until(
                &format!("{line}: the refusal logged"),
                Duration::from_secs(5),
                || {
                    let text = c.pen.stderr_text();
                    let line = text
                        .get(mark..)?
                        .lines()
                        .find(|l| l.contains("control: "))?;
                    Some(line.to_string())
                },
            );
            assert!(
                logged.ends_with(&format!("control: {}", reply.trim_end())),
                "{logged}"
            );
        }
        // `status` would write the page web_stats named: nothing is written anywhere.
        c.ctl("status");
        assert_eq!(listing(), ["secret.cfg", "victim"], "{opts:?}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            c.ctl("servers"),
            servers,
            "{opts:?}: the include was not read"
        );
        assert_eq!(c.pen.ask_from(2), "a");
        c.pen.finish();
    }
}

#[test]
fn listen_exit_conn_max_and_close_at_run_time() {
    let a = Backend::echo();
    let c = Controlled::start(&["-X"], &[a.spec()]);
    let old = c.pen.tcp();
    // A listen on a port in use is refused and keeps the old listener.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reply = c.ctl(&format!("listen {}", taken.local_addr().unwrap()));
    assert!(reply.starts_with("listen:"), "{reply}");
    assert_eq!(c.ctl("listen"), format!("{}\n", c.pen.listen_arg));
    drop(taken);
    // dummy mode answers without a server.
    c.ctl("dummy");
    let mut d = c.pen.connect();
    d.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    d.read_to_string(&mut page).unwrap();
    assert!(page.ends_with("\r\n\r\nUlric was here."), "{page:?}");
    c.ctl("no dummy");
    let new_port = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    assert_eq!(
        c.ctl(&format!("listen 127.0.0.1:{new_port}")),
        format!("127.0.0.1:{new_port}\n")
    );
    let mut s = wait_until("the new listener", Duration::from_secs(5), || {
        connect(std::net::SocketAddr::from(([127, 0, 0, 1], new_port))).ok()
    });
    s.write_all(b"ping\n").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping\n");
    wait_until("the old listener to close", Duration::from_secs(5), || {
        TcpStream::connect(old).is_err().then_some(())
    });
    // close N ends a live connection.
    let conn = wait_until("the connection", Duration::from_secs(5), || {
        (0..8).find(|n| c.ctl(&format!("connection {n}")).contains("state = 2"))
    });
    assert_eq!(
        c.ctl(&format!("close {conn}")),
        format!("Forcibly closing connection {conn}\n")
    );
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "connection still open");
    let _ = s.shutdown(Shutdown::Both);
    assert_eq!(c.ctl("conn_max 7"), "7\n");
    assert_eq!(c.ctl("conn_max"), "7\n");
    // exit with -X.
    let mut pen = c.pen;
    assert_eq!(ctl(c.control, "exit"), "");
    let status = pen.wait_exit(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn idlers_keep_upstream_connections_open_and_are_replaced() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let c = Controlled::start(&[], &[a.spec(), b.spec()]);
    assert_eq!(c.ctl("idlers 2"), "Idlers: 0/0\n");
    wait_until("two idlers", Duration::from_secs(5), || {
        (c.ctl("idlers") == "Idlers: 2/2\n").then_some(())
    });
    // pen's connect completes with the kernel's handshake, before the backend's accept loop
    // has taken the connection: wait (bounded) for both backends to hold theirs.
    wait_until(
        "the backends to accept both idlers",
        Duration::from_secs(5),
        || (a.open_connections() + b.open_connections() == 2).then_some(()),
    );
    let servers = c.ctl("servers");
    assert!(servers.contains("conn 1"), "{servers}");
    assert_eq!(c.ctl("idlers 0"), "Idlers: 2/2\n");
    wait_until("the idlers to close", Duration::from_secs(5), || {
        (a.open_connections() + b.open_connections() == 0).then_some(())
    });
    assert_eq!(c.pen.ask_from(2), "b");
    c.pen.finish();
}

/// `snapshot` is the machine-readable form of what `status` shows; `status` writes the
/// `web_stats` page and sends it back, or says it cannot.
#[test]
fn snapshot_and_status_on_the_control_port() {
    let a = Backend::named("a");
    let dir = TempDir::new("status");
    let page = dir.join("status.html");
    let c = Controlled::start(&["-w", page.to_str().unwrap()], &[a.spec()]);
    assert_eq!(c.pen.ask_from(2), "a");
    let (_, held) = c.pen.hold_from(3);
    // The first client has its answer, but pen may not have seen it close yet: wait (bounded)
    // until only the held connection is left.
    let (json, snap) = wait_until("one open connection", Duration::from_secs(5), || {
        let json = c.ctl("snapshot");
        assert!(
            json.ends_with('\n') && json.matches('\n').count() == 1,
            "{json}"
        );
        let snap: pen::balancer::Snapshot =
            serde_json::from_str(json.trim()).expect("JSON snapshot");
        (snap.conns.len() == 1).then_some((json, snap))
    });
    assert_eq!(snap.servers.len(), 1);
    assert_eq!(snap.servers[0].port, a.port());
    assert_eq!(snap.servers[0].conns, 1, "{json}");
    let clients: Vec<&str> = snap.clients.iter().map(|c| c.address.as_str()).collect();
    assert!(
        clients.contains(&"127.0.0.2") && clients.contains(&"127.0.0.3"),
        "{clients:?}"
    );
    assert_eq!(snap.conns.len(), 1, "{json}");
    assert!(snap.settings.web_stats.is_some());

    let html = c.ctl("status");
    assert!(
        html.starts_with("<html>\n<head>\n<title>Pen status page</title>"),
        "{html}"
    );
    assert_eq!(std::fs::read_to_string(&page).unwrap(), html);
    assert_eq!(c.ctl("no web_stats"), "");
    assert_eq!(c.ctl("status"), "Unable to create webstats\n");
    drop(held);
    c.pen.finish();
}

/// `source` over the control port and from `-o`: the server sees the address pen connects
/// from (127.0.0.N are local, so no privilege is needed).
#[test]
fn source_changes_the_address_servers_see() {
    let peer = Backend::tcp(|mut s: Stream| {
        let mut b = [0u8; 1];
        if !matches!(s.read(&mut b), Ok(1)) {
            return;
        }
        let who = match &s {
            Stream::Tcp(t) => t
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
            Stream::Unix(_) => "unix".into(),
        };
        let _ = s.write_all(format!("{who}\n").as_bytes());
        let _ = drain(&mut s);
    });
    let c = Controlled::start(&["-o", "source 127.0.0.5"], &[peer.spec()]);
    assert_eq!(c.pen.ask_from(2), "127.0.0.5");
    assert_eq!(c.ctl("source 127.0.0.6"), "");
    assert_eq!(c.pen.ask_from(2), "127.0.0.6");
    assert_eq!(c.ctl("no source"), "");
    assert_eq!(c.pen.ask_from(2), "127.0.0.1");
    let reply = c.ctl("source nonexistent.invalid");
    assert!(reply.contains("nonexistent.invalid"), "{reply}");
    assert_eq!(
        c.pen.ask_from(2),
        "127.0.0.1",
        "a bad source changed nothing"
    );
    c.pen.finish();
}

/// The `ssl_*` commands: refused with a reason when TLS is off, and over the control port only
/// inside `control_files` when they name files.
#[test]
fn ssl_commands_need_tls_and_name_files_only_where_allowed() {
    let a = Backend::named("a");
    let c = Controlled::start(&[], &[a.spec()]);
    let reply = c.ctl("ssl_ciphers HIGH");
    assert_eq!(reply, "ssl_ciphers: TLS is not on (start pen with -E)\n");
    let reply = c.ctl("ssl_sni_path /etc");
    assert!(reply.contains("control_files"), "{reply}");
    assert_eq!(c.ctl("ssl_client_renegotiation_interval 60"), "");
    assert!(c.ctl("ssl_ocsp_response").contains("missing file name"));
    c.pen.finish();
    // Without -E, an ssl_* command at start-up stops pen before it binds.
    let port = free_port(std::net::Ipv4Addr::LOCALHOST.into()).to_string();
    let out = run_pen(
        &["-f", "-o", "ssl_option no_tlsv1.2", &port, &a.spec()],
        Duration::from_secs(5),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("TLS is not on"), "{}", out.stderr);
}

/// Catalogue B4: a control client that sends a command with a large reply and never reads it.
/// The reply (`snapshot` with 3 000 clients in the table, hundreds of KiB) cannot fit in the
/// socket buffers of a connection with a small receive buffer and MSS, so pen's write is stuck.
/// It is stuck on the control connection's own task: meanwhile the data plane answers within
/// 1 s and another control command within 2 s. pen drops the stuck connection when its write
/// deadline (`CONTROL_TIMEOUT`, 10 s) runs out, without sending the rest of the reply, and its
/// descriptors return to what they were before.
#[test]
fn a_control_client_that_never_reads_is_dropped_at_the_write_deadline() {
    use pen::control_port::CONTROL_TIMEOUT;
    const CLIENTS: u32 = 3000;
    let a = Backend::named("a");
    let c = Controlled::start(&["-c", "10000"], &[a.spec()]);
    let pid = c.pen.pid();
    for i in 0..CLIENTS {
        let ip = std::net::Ipv4Addr::new(127, 10, (i / 250) as u8, 1 + (i % 250) as u8);
        assert_eq!(c.pen.ask_from_addr(ip, 0), "a", "client {ip}");
    }
    let known = wait_until(
        "every client connection to end",
        Duration::from_secs(10),
        || {
            let snap = c.snapshot();
            (snap.counters.conns_used == 0 && a.open_connections() == 0)
                .then_some(snap.clients.len())
        },
    );
    assert!(
        known >= CLIENTS as usize,
        "{known} clients in the table, {CLIENTS} seen"
    );
    let full = c.ctl("snapshot").len();
    assert!(
        full > 256 * 1024,
        "the reply is only {full} bytes: too small to fill the socket buffers"
    );
    let baseline = stable_fd_count(&c.pen);

    // A small receive buffer, and a small MSS so that pen's send buffer stays small too.
    let tuning = Tuning {
        rcvbuf: Some(4096),
        mss: Some(536),
        ..Tuning::default()
    };
    let mut stuck = connect_tuned(c.control, tuning).expect("connect to the control port");
    let sent_at = Instant::now();
    stuck.write_all(b"snapshot\n").unwrap();
    // The reply has begun: its first bytes wait in our receive buffer (peeking leaves them
    // there, so the window stays shut).
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let peeked = stuck.peek(&mut [0u8; 1]).expect("the reply to begin");
    assert_eq!(peeked, 1);
    let held = |s: &TcpStream| holds_connection(pid, c.control, s.local_addr().unwrap());
    assert!(held(&stuck), "pen does not hold the control connection");

    let t = Instant::now();
    assert_eq!(c.pen.ask_from(2), "a");
    let served_in = t.elapsed();
    let t = Instant::now();
    assert_eq!(c.ctl("blacklist"), "30\n");
    let answered_in = t.elapsed();
    assert!(
        served_in < Duration::from_secs(1) && answered_in < Duration::from_secs(2),
        "with a control reply stuck, a client was served in {served_in:?} and a control \
         command answered in {answered_in:?}"
    );
    assert!(
        held(&stuck),
        "pen dropped the stuck control connection early"
    );

    // pen drops the connection at its write deadline: its socket leaves pen's descriptors.
    // Watching them, unlike reading, leaves the window shut.
    let dropped_after = poll_until(CONTROL_TIMEOUT + Duration::from_secs(10), || {
        (!held(&stuck)).then(|| sent_at.elapsed())
    })
    .expect("pen to drop the stuck control connection");
    assert!(
        dropped_after >= CONTROL_TIMEOUT - Duration::from_secs(1)
            && dropped_after < CONTROL_TIMEOUT + Duration::from_secs(5),
        "the stuck control connection was dropped {dropped_after:?} after its command, with a \
         {CONTROL_TIMEOUT:?} write deadline"
    );
    // What pen had handed to the kernel arrives, then the end; never the whole reply.
    let mut got = Vec::new();
    let end = stuck.read_to_end(&mut got).map_err(|e| e.kind());
    assert!(
        matches!(end, Ok(_) | Err(std::io::ErrorKind::ConnectionReset)),
        "the stuck control connection did not end: {end:?}"
    );
    assert!(
        got.len() < full,
        "the whole {full}-byte reply arrived: pen's write was never stuck"
    );
    let settled = poll_until(Duration::from_secs(5), || {
        (fd_count(pid) <= baseline).then_some(())
    });
    assert!(
        settled.is_some(),
        "pen holds {} descriptors, {baseline} before the stuck control client",
        fd_count(pid)
    );
    assert_eq!(c.pen.ask_from(3), "a");
    c.pen.finish();
}

/// Does process `pid` hold, as one of its descriptors, its end of the IPv4 TCP connection between
/// its `local` address and `remote`? A socket pen has closed may live on in the kernel (sending
/// what is left, then its FIN), but no longer as pen's.
fn holds_connection(pid: u32, local: SocketAddr, remote: SocketAddr) -> bool {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => proc_tcp_addr(a),
        SocketAddr::V6(_) => panic!("holds_connection: IPv4 only"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let mine = socket_inodes(pid);
    socket_rows(pid, "tcp")
        .iter()
        .any(|r| r.local == local && r.remote == remote && mine.contains(&r.inode))
}

// ---- B7: bad config files through the binary --------------------------------------------------

/// How long a pen that is expected to exit by itself may take (bad input never waits on DNS).
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// One config file of the B7 table.
struct ConfigCase {
    name: &'static str,
    text: Vec<u8>,
    /// None for a file pen takes. Otherwise the line pen's message names after the file (None
    /// when it names the file only) and what the message must say was wrong.
    error: Option<(Option<usize>, Vec<String>)>,
}

/// The B7 table. Every bad file first points server 0 at port `other` and sets `blacklist 77`,
/// so that applying part of it would show in `servers` and `blacklist`. `dir` is a directory.
fn config_cases(dir: &std::path::Path, other: u16) -> Vec<ConfigCase> {
    let head = format!("server 0 address 127.0.0.1 port {other}\nblacklist 77\n");
    let after_head = |tail: &[u8]| [head.as_bytes(), tail].concat();
    let ok = |name, text: &[u8]| ConfigCase {
        name,
        text: text.to_vec(),
        error: None,
    };
    let bad = |name, text: Vec<u8>, line, reasons: &[&str]| ConfigCase {
        name,
        text,
        error: Some((line, reasons.iter().map(|r| r.to_string()).collect())),
    };
    let mib = 1 << 20;
    let line_5_of_10 = [
        "# line 5 of 10 is wrong: a new server without an address (found when applying)",
        &format!("server 0 address 127.0.0.1 port {other}"),
        "blacklist 77",
        "tracking 5",
        "server 3 port 80",
        "blacklist 78",
        "",
        "no hash",
        "timeout 3",
        "# the end",
    ]
    .join("\n");
    vec![
        ok("empty", b""),
        ok("comments-only", b"# pen.cfg\n\n   # indented\n#\n   \n"),
        ok(
            "1-MiB-comment",
            format!("# {}\n", "x".repeat(mib)).as_bytes(),
        ),
        bad(
            "1-MiB-value",
            after_head(format!("blacklist {}\n", "9".repeat(mib)).as_bytes()),
            Some(3),
            &["blacklist: '999", "is not a number of seconds"],
        ),
        // A Latin-1 e-acute in a comment, the way a real file gets invalid UTF-8.
        bad(
            "not-UTF-8",
            after_head(b"# caf\xe9 (Latin-1)\n"),
            Some(3),
            &["not UTF-8 text"],
        ),
        bad(
            "include-directory",
            after_head(format!("include {}\n", dir.display()).as_bytes()),
            Some(3),
            &[&format!("{}: not a regular file", dir.display())],
        ),
        // An unreadable file, when the tests run as root: a mode-0 file is still readable
        // (CAP_DAC_OVERRIDE), and a FIFO, a socket or a dangling symlink fail before any read
        // ("not a regular file", "cannot read"), the paths a directory and a missing file
        // already take. /proc/self/mem is a regular file that anyone may open and stat, but
        // reading it from offset 0 fails with EIO (the first page is never mapped), for root
        // and every other user alike: pen's read itself fails. (/proc/self is pen itself.)
        bad(
            "include-unreadable",
            after_head(b"include /proc/self/mem\n"),
            Some(3),
            &["/proc/self/mem: ", "(os error "],
        ),
        bad(
            "line-5-of-10",
            line_5_of_10.into_bytes(),
            Some(5),
            &["server 3: a new server needs an address"],
        ),
    ]
}

/// What pen's message about a bad `path` starts with: `PATH:LINE: ` or `PATH: `.
fn blame(path: &std::path::Path, line: Option<usize>) -> String {
    match line {
        Some(n) => format!("{}:{n}: ", path.display()),
        None => format!("{}: ", path.display()),
    }
}

/// The start of `text`, for assertion messages (a message may quote a 1 MiB line).
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(400) {
        Some((end, _)) => format!("{}... ({} bytes)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

/// The configuration in a `servers` reply: every field but the live counts (conn, sx, rx).
fn server_config(servers: &str) -> Vec<String> {
    servers
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            let mut kept = vec![words[0].to_string()];
            for pair in words[1..].chunks(2) {
                if !matches!(pair[0], "conn" | "sx" | "rx") {
                    kept.push(pair.join(" "));
                }
            }
            kept.join(" ")
        })
        .collect()
}

/// Reliability catalogue B7 at start-up, through the binary (pen P11): empty and comments-only
/// files, and a 1 MiB comment line, start pen and it serves, and `--check` passes them. A 1 MiB
/// value, invalid UTF-8, `include` of a directory and of a file that cannot be read, and an
/// error on line 5 of 10 stop `pen -f -F` and `pen --check -F` with exit status 1 and one
/// message naming the file and line and what was wrong. The listen port is held by the test,
/// so a pen that bound before reading its file would report the port as busy instead; it is
/// free once the test lets it go.
#[test]
fn bad_config_files_stop_the_start_before_binding_and_name_file_and_line() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let dir = TempDir::new("b7");
    let sub = dir.join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let l = held.local_addr().unwrap().to_string();
    let server = a.spec();
    for case in config_cases(&sub, b.port()) {
        let name = case.name;
        let path = dir.join(&format!("{name}.cfg"));
        std::fs::write(&path, &case.text).unwrap();
        let p = path.to_str().unwrap();
        let Some((line, reasons)) = &case.error else {
            let check = run_pen(&["--check", "-F", p, &l, &server], RUN_TIMEOUT);
            assert_eq!(check.status.code(), Some(0), "{name}: {check:?}");
            assert_eq!(
                check.stdout.trim(),
                format!("pen: configuration is valid: TCP on {l}, 1 server"),
                "{name}"
            );
            let pen = Pen::start(&["-F", p], std::slice::from_ref(&server));
            assert_eq!(pen.ask_from(2), "a", "{name}");
            assert_eq!(pen.stdout_text(), "", "{name}: nothing in it replies");
            pen.finish();
            continue;
        };
        let want = format!("pen: -F {}", blame(&path, *line));
        for mode in ["-f", "--check"] {
            let out = run_pen(&[mode, "-F", p, &l, &server], RUN_TIMEOUT);
            let said = excerpt(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name} {mode}: {said}");
            assert!(
                out.stderr.starts_with(&want),
                "{name} {mode}: the message should start {want:?}: {said}"
            );
            for reason in reasons {
                assert!(
                    out.stderr.contains(reason.as_str()),
                    "{name} {mode}: the message should say {reason:?}: {said}"
                );
            }
            assert_eq!(
                out.stderr.lines().count(),
                1,
                "{name} {mode}: one message: {said}"
            );
            assert!(
                !out.stderr.contains("can't bind") && !out.stderr.contains("in use"),
                "{name} {mode}: pen tried to bind before reading its file: {said}"
            );
            assert_eq!(
                out.stdout, "",
                "{name} {mode}: nothing applied, nothing replied"
            );
        }
    }
    // Nobody listens on the port. SO_REUSEADDR, so that another test's connection that happens
    // to use the same local port does not count.
    drop(held);
    let again = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    again.set_reuse_address(true).unwrap();
    let addr: SocketAddr = l.parse().unwrap();
    again
        .bind(&addr.into())
        .and_then(|()| again.listen(1))
        .expect("listen port free after the failed starts");
}

/// Reliability catalogue B7 and D7 at run time: each file of the B7 table swapped in for the
/// running `-F` file, then SIGHUP. A good file (empty, comments only, a 1 MiB comment) is
/// re-read and changes nothing; a bad one is refused whole (each points server 0 elsewhere and
/// sets `blacklist 77` before its error) with one log line naming the file and line and what
/// was wrong, and the old configuration stays fully in effect: `servers` and `blacklist` are
/// unchanged and clients still go to server 0's old address.
#[test]
fn bad_config_files_at_sighup_keep_the_running_configuration() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let dir = TempDir::new("b7hup");
    let sub = dir.join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    let cfg = dir.join("pen.cfg");
    std::fs::write(
        &cfg,
        format!(
            "server 0 address 127.0.0.1 port {} weight 3\nblacklist 11\n",
            a.port()
        ),
    )
    .unwrap();
    // -d: a successful re-read is logged at the info level, which is shown with -d only.
    let c = Controlled::start(&["-d", "-F", cfg.to_str().unwrap()], &[]);
    let state = || (server_config(&c.ctl("servers")), c.ctl("blacklist"));
    let before = state();
    assert_eq!(
        before,
        (
            vec![format!(
                "0 addr 127.0.0.1 port {} max 0 hard 0 weight 3 prio 0",
                a.port()
            )],
            "11\n".to_string()
        )
    );
    assert_eq!(c.pen.ask_from(2), "a");
    for case in config_cases(&sub, b.port()) {
        let name = case.name;
        let mark = c.pen.stderr_text().len();
        std::fs::write(&cfg, &case.text).unwrap();
        c.pen.signal("HUP");
        let log = wait_until(
            &format!("{name}: pen's word on the re-read"),
            Duration::from_secs(5),
            || {
                let text = c.pen.stderr_text();
                let new = text.get(mark..)?;
                (new.contains("SIGHUP: re-read") || new.contains("keeping the running"))
                    .then(|| new.to_string())
            },
        );
        let said = excerpt(&log);
        match &case.error {
            None => assert!(
                log.contains(&format!("SIGHUP: re-read {}", cfg.display()))
                    && !log.contains("keeping the running"),
                "{name}: {said}"
            ),
            Some((line, reasons)) => {
                let want = format!("SIGHUP: {}", blame(&cfg, *line));
                assert!(log.contains(&want), "{name}: should say {want:?}: {said}");
                for reason in reasons {
                    assert!(
                        log.contains(reason.as_str()),
                        "{name}: should say {reason:?}: {said}"
                    );
                }
                assert!(
                    log.contains("keeping the running configuration")
                        && !log.contains("SIGHUP: re-read"),
                    "{name}: {said}"
                );
            }
        }
        assert_eq!(state(), before, "{name}: the configuration changed");
        assert_eq!(c.pen.ask_from(2), "a", "{name}: clients go elsewhere");
    }
    assert_eq!(b.open_connections(), 0);
    c.pen.finish();
}

/// Reliability catalogue B7, "clear `file:line` error", for a long line: pen's message about a
/// bad value quotes at most an excerpt of it. The bound is twice the longest command the
/// control port takes (`MAX_LINE`), room for any real line and far below a syslog datagram.
/// (It once quoted the whole value: a 1 MiB line made a 1 MiB message, at start-up and in the
/// SIGHUP log line, and as a daemon pen could not send it to syslog at all, so the reason a
/// re-read was refused was lost.)
#[test]
fn a_config_error_quotes_at_most_an_excerpt_of_a_long_line() {
    let bound = 2 * pen::control_port::MAX_LINE;
    let a = Backend::named("a");
    let dir = TempDir::new("b7long");
    let bad = dir.join("long.cfg");
    std::fs::write(
        &bad,
        format!("blacklist 7\nblacklist {}\n", "9".repeat(1 << 20)),
    )
    .unwrap();
    let l = format!(
        "127.0.0.1:{}",
        free_port(std::net::Ipv4Addr::LOCALHOST.into())
    );
    let check = run_pen(
        &["--check", "-F", bad.to_str().unwrap(), &l, &a.spec()],
        RUN_TIMEOUT,
    );
    assert_eq!(check.status.code(), Some(1), "{}", excerpt(&check.stderr));
    assert!(
        check.stderr.contains(&blame(&bad, Some(2))),
        "{}",
        excerpt(&check.stderr)
    );

    let cfg = dir.join("pen.cfg");
    std::fs::write(&cfg, "blacklist 11\n").unwrap();
    let c = Controlled::start(&["-F", cfg.to_str().unwrap()], &[a.spec()]);
    std::fs::copy(&bad, &cfg).unwrap();
    c.pen.signal("HUP");
    let logged = wait_until("the refusal", Duration::from_secs(5), || {
        c.pen
            .stderr_text()
            .lines()
            .find(|l| l.contains("keeping the running configuration"))
            .map(str::len)
    });
    assert_eq!(c.ctl("blacklist"), "11\n");
    c.pen.finish();
    let printed = check.stderr.len();
    assert!(
        printed <= bound && logged <= bound,
        "an error about a 1 MiB line should quote at most {bound} bytes of it: \
         --check printed {printed} bytes, the SIGHUP log line is {logged} bytes"
    );
}

/// `--check` reports the commands of the `-F` file that a start ignores, on standard error,
/// and still passes (pen.1, `--check`: "Commands of the -F file that pen ignores when it starts
/// (unknown commands) are reported the same way, on standard error, and do not fail the check").
/// A start reports them on standard output, as pen 0.34.1 does; `--check`'s standard output is
/// its one-line summary only. (`--check` once dropped what the file's commands answered.)
#[test]
fn check_reports_the_config_file_commands_a_start_ignores() {
    let a = Backend::named("a");
    let dir = TempDir::new("b7unknown");
    let cfg = dir.join("pen.cfg");
    std::fs::write(&cfg, "blacklist 7\nbogus 1\n").unwrap();
    let p = cfg.to_str().unwrap();
    let ignored = "do_cmd: ignoring command starting with 'bogus'";
    let pen = Pen::start(&["-F", p], &[a.spec()]);
    assert_eq!(pen.stdout_text(), format!("7\n{ignored}\n"));
    assert_eq!(pen.ask_from(2), "a");
    pen.finish();
    let l = format!(
        "127.0.0.1:{}",
        free_port(std::net::Ipv4Addr::LOCALHOST.into())
    );
    let check = run_pen(&["--check", "-F", p, &l, &a.spec()], RUN_TIMEOUT);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(
        check.stderr.contains(ignored),
        "--check does not report the ignored command: {check:?}"
    );
    assert!(
        check.stdout.starts_with("pen: configuration is valid:")
            && check.stdout.lines().count() == 1,
        "{check:?}"
    );
}

// ---- B5: two commands in one write --------------------------------------------------------------

/// Send `bytes` to a control port in one write and read the reply until pen closes.
fn ctl_one_write(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the control port");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    // pen closes once it has replied; were anything it did not read still queued, the close
    // would be a reset, which may follow the reply.
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading the reply to {bytes:?}: {e}"),
    }
    String::from_utf8(out).expect("a text reply")
}

/// Reliability catalogue B5, two commands in one write (pen P3). pen takes one command per
/// connection (pen.1, `-C`), up to the first CR or LF (control_port.rs, `Framer`): the first
/// command runs exactly once and is answered alone; whatever follows its line end is neither
/// run nor answered. `acl` appends an entry each time it runs, so `write` shows how often it
/// did. (A command split over three writes 100 ms apart is covered by
/// `hostile_control_clients_are_cut_off_and_never_delay_traffic`.)
#[test]
fn two_commands_in_one_write_run_the_first_once_and_ignore_the_rest() {
    let a = Backend::named("a");
    let dir = TempDir::new("b5");
    let files = format!("control_files {}", dir.path().display());
    let c = Controlled::start(&["-o", &files], &[a.spec()]);
    let cases: [(&[u8], &str); 5] = [
        (b"blacklist 5\nblacklist 6\n", "5\n"),
        // A getter after a setter: one reply, not two.
        (b"blacklist 7\nblacklist\n", "7\n"),
        // A setter after a getter: not run.
        (b"blacklist\nblacklist 9\n", "7\n"),
        (b"blacklist 8\r\nblacklist 9\r\n", "8\n"),
        (
            b"acl 1 permit 127.0.0.7\nacl 1 permit 127.0.0.7\nacl 1 permit 127.0.0.8\n",
            "",
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            ctl_one_write(c.control, bytes),
            want,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert_eq!(c.ctl("blacklist"), "8\n");
    let written = dir.join("acls.cfg");
    assert_eq!(c.ctl(&format!("write {}", written.display())), "");
    let text = std::fs::read_to_string(&written).unwrap();
    let entries: Vec<&str> = text.lines().filter(|l| l.starts_with("acl 1 ")).collect();
    assert_eq!(
        entries,
        ["acl 1 permit 127.0.0.7 255.255.255.255"],
        "{text}"
    );
    assert_eq!(c.pen.ask_from(2), "a");
    c.pen.finish();
}
