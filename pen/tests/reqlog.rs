//! pen's request log on real sockets: `-l FILE` lines (one per read from the client, written
//! promptly, sanitised), rotation by `mv` and SIGHUP without a lost or split line, and
//! `-l HOST:PORT` datagrams to a penlogd over IPv4 and IPv6.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Send `data` and wait for the echo backend to return all of it, so that the next send is a
/// separate read on pen's side.
fn exchange(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("send to pen");
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).expect("echo through pen");
    assert_eq!(got, data);
}

/// The log's lines, once it has at least `n` of them.
fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    wait_until(&format!("{n} lines in {}", path.display()), WAIT, || {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<String> = text.lines().map(String::from).collect();
        (lines.len() >= n && text.ends_with('\n')).then_some(lines)
    })
}

/// `client epoch server request` -> (client, epoch, server, request).
fn fields(line: &str) -> (String, i64, String, String) {
    let mut parts = line.splitn(4, ' ');
    let mut next = || parts.next().unwrap_or_default().to_string();
    let (client, epoch, server, request) = (next(), next(), next(), next());
    let epoch = epoch
        .parse()
        .unwrap_or_else(|_| panic!("bad time in {line:?}"));
    (client, epoch, server, request)
}

#[test]
fn file_log_has_one_line_per_client_read_written_at_once() {
    let backend = Backend::echo();
    let dir = TempDir::new("reqlog");
    let log = dir.join("pen.log");
    let log_arg = log.display().to_string();
    let pen = Pen::start(&["-l", &log_arg], &[backend.spec()]);
    let before = now();

    let mut a = pen.connect_from(41);
    exchange(&mut a, b"POST /form HTTP/1.0\r\nContent-Length: 11\r\n\r\n");
    exchange(&mut a, b"hello=world");
    let mut b = pen.connect_from(42);
    exchange(&mut b, b"GET /caf\xc3\xa9\ttab HTTP/1.0\r\n");
    exchange(&mut b, b"\r\n");
    let mut c = pen.connect_from(43);
    let long = format!("GET /{} HTTP/1.0\r\n\r\n", "x".repeat(300));
    exchange(&mut c, long.as_bytes());
    exchange(&mut c, b"bin\x00\x01\x7f\xff\n");

    // Written without a HUP and without pen exiting (C pen kept them in a stdio buffer).
    let lines = wait_lines(&log, 6);
    let after = now();
    let got: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            let (client, epoch, server, request) = fields(l);
            assert!((before..=after).contains(&epoch), "{l}: time {epoch}");
            (client, server, request)
        })
        .collect();
    let line = |c: &str, r: &str| (c.to_string(), "127.0.0.1".to_string(), r.to_string());
    assert_eq!(
        got,
        [
            line("127.0.0.41", "POST /form HTTP/1.0"),
            line("127.0.0.41", "hello=world"),
            line("127.0.0.42", "GET /caf..\ttab HTTP/1.0"),
            line("127.0.0.42", ""),
            line("127.0.0.43", &format!("GET /{}", "x".repeat(95))),
            line("127.0.0.43", "bin...."),
        ]
    );
    drop((a, b, c));
    pen.finish();
}

#[test]
fn hup_rotation_loses_and_splits_no_line() {
    let backend = Backend::echo();
    let dir = TempDir::new("rotate");
    let log = dir.join("pen.log");
    let log_arg = log.display().to_string();
    let pen = Pen::start(&["-l", &log_arg], &[backend.spec()]);
    let addr = pen.tcp();

    // Clients send numbered requests, one connection each, as fast as pen answers.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..3)
        .map(|t| {
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::spawn(move || {
                for i in 0..100_000usize {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let mut s = connect_from(loopback(50 + t), 0, addr).expect("connect");
                    exchange(&mut s, format!("GET /{t}/{i} HTTP/1.0\r\n\r\n").as_bytes());
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Rotate three times while they run, each time once some lines went to the current file.
    let mut rotated = Vec::new();
    for n in 1..=3 {
        wait_until("lines in the current log", WAIT, || {
            (std::fs::metadata(&log).map_or(0, |m| m.len()) > 0).then_some(())
        });
        let old = dir.join(&format!("pen.log.{n}"));
        std::fs::rename(&log, &old).expect("mv pen.log");
        pen.signal("HUP");
        // pen creates the file again when it reopens it.
        wait_until("pen.log reopened", WAIT, || log.exists().then_some(()));
        rotated.push(old);
    }
    wait_until("lines after the last rotation", WAIT, || {
        (std::fs::metadata(&log).map_or(0, |m| m.len()) > 0).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    let total = sent.load(Ordering::SeqCst);
    rotated.push(log.clone());

    let mut seen = std::collections::HashSet::new();
    let all = wait_until("every request logged", WAIT, || {
        let mut lines = Vec::new();
        for f in &rotated {
            let text = std::fs::read_to_string(f).ok()?;
            if !text.is_empty() && !text.ends_with('\n') {
                return None; // a line being written
            }
            lines.extend(text.lines().map(String::from));
        }
        (lines.len() >= total).then_some(lines)
    });
    for f in &rotated {
        let text = std::fs::read_to_string(f).expect("read a log");
        assert!(!text.is_empty(), "{} is empty", f.display());
    }
    for line in &all {
        let (client, _, server, request) = fields(line);
        let (t, i) = request
            .strip_prefix("GET /")
            .and_then(|r| r.strip_suffix(" HTTP/1.0"))
            .and_then(|r| r.split_once('/'))
            .unwrap_or_else(|| panic!("split or foreign line: {line:?}"));
        assert_eq!(client, format!("127.0.0.{}", 50 + t.parse::<u8>().unwrap()));
        assert_eq!(server, "127.0.0.1");
        assert!(seen.insert((t.to_string(), i.to_string())), "twice: {line}");
    }
    assert_eq!(all.len(), total, "every request exactly once");
    pen.finish();
}

/// Receive one datagram (bounded wait).
fn datagram(socket: &UdpSocket) -> Vec<u8> {
    socket
        .set_read_timeout(Some(WAIT))
        .expect("set_read_timeout");
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf).expect("a datagram from pen");
    buf[..n].to_vec()
}

#[test]
fn network_log_sends_pen_records_over_ipv4_and_ipv6() {
    assert!(
        ipv6_available(),
        "this test needs IPv6 on loopback (::1), which is missing"
    );
    let backend = Backend::echo();
    for penlogd in [
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp"),
        UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind udp6"),
    ] {
        let to: SocketAddr = penlogd.local_addr().expect("local_addr");
        let target = to.to_string();
        let pen = Pen::start(&["-l", &target], &[backend.spec()]);
        let mut s = pen.connect_from(31);
        exchange(&mut s, b"GET /netlog HTTP/1.0\r\nHost: x\r\n\r\n");
        assert_eq!(
            String::from_utf8_lossy(&datagram(&penlogd)),
            "+ 127.0.0.31 127.0.0.1 GET /netlog HTTP/1.0\n",
            "to {target}"
        );
        drop(s);
        pen.finish();
    }
}

#[test]
fn bad_log_destinations_are_refused_naming_them() {
    let dir = TempDir::new("badlog");
    let link = dir.join("link");
    std::os::unix::fs::symlink(dir.join("target"), &link).expect("symlink");
    let link = link.display().to_string();
    for (value, want) in [
        ("x:y", "'x:y'"),
        ("no.such.host.invalid:514", "no.such.host.invalid"),
        ("/nonexistent/dir/pen.log", "/nonexistent/dir/pen.log"),
        (link.as_str(), link.as_str()),
    ] {
        let listen = format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST.into()));
        let out = run_pen(&["-f", "-l", value, &listen, "127.0.0.1:9"], WAIT);
        assert_eq!(out.status.code(), Some(1), "-l {value}: {}", out.stderr);
        assert!(
            out.stderr.contains("-l") && out.stderr.contains(want),
            "-l {value}: {}",
            out.stderr
        );
    }
    assert!(!dir.join("target").exists(), "written through a symlink");
}

#[test]
fn log_and_no_log_commands_switch_and_stop_both_kinds() {
    use support::control::Controlled;
    let backend = Backend::echo();
    let dir = TempDir::new("logcmd");
    let file = dir.join("switched.log");
    let file_arg = file.display().to_string();
    let penlogd = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
    let to = penlogd.local_addr().expect("local_addr").to_string();
    // Files named over the control port must be in the control_files directory.
    let files = format!("control_files {}", dir.path().display());
    let c = Controlled::start(&["-l", &to, "-o", &files], &[backend.spec()]);
    // pen 0.34.1 showed only the host after a network log (B9).
    assert_eq!(c.ctl("log"), format!("{to}\n"));
    let mut s = c.pen.connect_from(31);
    exchange(&mut s, b"GET /before-nolog HTTP/1.0\r\n\r\n");
    assert_eq!(
        String::from_utf8_lossy(&datagram(&penlogd)),
        "+ 127.0.0.31 127.0.0.1 GET /before-nolog HTTP/1.0\n"
    );
    // `no log` stops the network log too (pen 0.34.1 kept sending).
    assert_eq!(c.ctl("no log"), "");
    assert_eq!(c.ctl("log"), "");
    exchange(&mut s, b"GET /after-nolog HTTP/1.0\r\n\r\n");
    assert_eq!(c.ctl(&format!("log {file_arg}")), format!("{file_arg}\n"));
    exchange(&mut s, b"GET /after-switch HTTP/1.0\r\n\r\n");
    let lines = wait_lines(&file, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].ends_with(" 127.0.0.1 GET /after-switch HTTP/1.0"),
        "{lines:?}"
    );
    penlogd
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("set_read_timeout");
    let mut buf = [0u8; 2048];
    assert!(
        penlogd.recv_from(&mut buf).is_err(),
        "a datagram after `no log`"
    );
    // A destination that cannot be opened leaves the log where it was.
    let missing = dir.join("missing/pen.log").display().to_string();
    let reply = c.ctl(&format!("log {missing}"));
    assert!(reply.contains(&missing), "{reply}");
    assert_eq!(c.ctl("log"), format!("{file_arg}\n"));
    drop(s);
    c.pen.finish();
}

/// Catalogue S6 (pen P10; §3.4 "Files") for the request log at start: a `-l` path planted as a
/// symbolic link to a victim file is refused (the log is opened with O_NOFOLLOW): pen exits 1
/// naming the file and the reason, before it writes its pid file; the victim keeps its
/// content and the link stays as it was.
#[test]
fn a_log_path_planted_as_a_symlink_to_a_file_stops_pen_and_the_file_is_untouched() {
    let dir = TempDir::new("s6log");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").expect("write the victim");
    let log = dir.join("pen.log");
    std::os::unix::fs::symlink(&victim, &log).expect("symlink");
    let pid_file = dir.join("pen.pid");
    let (log_arg, pid_arg) = (log.display().to_string(), pid_file.display().to_string());
    let listen = format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST.into()));
    let out = run_pen(
        &["-f", "-l", &log_arg, "-p", &pid_arg, &listen, "127.0.0.1:9"],
        WAIT,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let want = format!("pen: -l: can't open log file {log_arg}: Too many levels of symbolic links");
    assert!(out.stderr.contains(&want), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read the victim"),
        "precious\n"
    );
    assert_eq!(std::fs::read_link(&log).expect("still a link"), victim);
    assert!(
        !pid_file.exists(),
        "a pid file for a pen that refused to start"
    );
}

/// Catalogue S6 for the request log at rotation: pen.log moved away and replaced by a symbolic
/// link to a victim before the SIGHUP that should reopen it. pen refuses to open the link,
/// says so in its log naming the file, keeps running and keeps logging to the file it had
/// (so no line is lost); the victim is untouched. Once the link is removed, the next HUP
/// creates pen.log again and logging goes on there.
#[test]
fn hup_after_the_log_was_replaced_by_a_symlink_keeps_the_old_file_and_spares_the_victim() {
    let backend = Backend::echo();
    let dir = TempDir::new("s6hup");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").expect("write the victim");
    let (log, rotated) = (dir.join("pen.log"), dir.join("pen.log.1"));
    let log_arg = log.display().to_string();
    let mut pen = Pen::start(&["-l", &log_arg], &[backend.spec()]);

    let mut s = pen.connect_from(61);
    exchange(&mut s, b"GET /before HTTP/1.0\r\n\r\n");
    drop(s);
    wait_lines(&log, 1);
    // The attack: the log moved away (as a rotation does) and a link planted in its place.
    std::fs::rename(&log, &rotated).expect("mv pen.log");
    std::os::unix::fs::symlink(&victim, &log).expect("symlink");
    pen.signal("HUP");
    let refusal =
        format!("SIGHUP: can't open log file {log_arg}: Too many levels of symbolic links");
    wait_until("pen to report the refused reopen", WAIT, || {
        pen.stderr_text().contains(&refusal).then_some(())
    });
    pen.assert_alive();
    let mut s = pen.connect_from(62);
    exchange(&mut s, b"GET /after HTTP/1.0\r\n\r\n");
    drop(s);
    let lines = wait_lines(&rotated, 2);
    assert!(lines[1].ends_with(" GET /after HTTP/1.0"), "{lines:?}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read the victim"),
        "precious\n"
    );
    assert_eq!(std::fs::read_link(&log).expect("still a link"), victim);

    // Repaired: the next HUP creates pen.log afresh.
    std::fs::remove_file(&log).expect("rm the link");
    pen.signal("HUP");
    wait_until("pen.log created again", WAIT, || log.exists().then_some(()));
    // pen creates the file a moment before its writer switches to it: a request may still go
    // to the old file, so ask until one lands in the new one.
    let line = wait_until("a line in the new pen.log", WAIT, || {
        let mut s = pen.connect_from(63);
        exchange(&mut s, b"GET /repaired HTTP/1.0\r\n\r\n");
        drop(s);
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .next()
            .filter(|_| text.ends_with('\n'))
            .map(String::from)
    });
    assert!(line.ends_with(" GET /repaired HTTP/1.0"), "{line:?}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read the victim"),
        "precious\n"
    );
    pen.finish();
}
