//! penlog and penlogd, ours beside Debian's C ones (pen 0.34.1): the same datagrams, the same
//! merged lines, and every pairing of pen, penlog and penlogd talking to each other. Then what
//! only ours does: IPv6, malformed datagrams counted and dropped, datagram sizes around the
//! limit, rotation, the pid file.
//!
//! Where C's result is known from the transcripts, it is checked first: a failure there means
//! the C tools on this machine are not the ones the reference describes.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use pen_crosstests::logtools::{
    c_bin, our_bin, run, send_from, wait_for, Daemon, Scratch, Sink, WAIT,
};
use pen_crosstests::{c_pen, from_ip, our_pen, Backend, Pen, LISTEN};

fn lo(n: u8) -> SocketAddr {
    from_ip([127, 0, 0, n])
}

/// The counts penlogd logs on USR1, once it has logged them; it must still be running.
fn usr1_summary(daemon: &mut Daemon) -> String {
    assert!(
        daemon.try_wait().is_none(),
        "penlogd died: {}",
        daemon.stderr_text()
    );
    daemon.signal("USR1");
    wait_for("the USR1 summary", WAIT, || {
        daemon
            .stderr_text()
            .lines()
            .find(|l| l.contains("datagrams:"))
            .map(String::from)
    })
}

/// The lines of a file once it has `n` (bounded wait).
fn lines_of(path: &Path, n: usize) -> Vec<String> {
    wait_for(&format!("{n} lines in {}", path.display()), WAIT, || {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<String> = text.lines().map(String::from).collect();
        (lines.len() >= n && text.ends_with('\n')).then_some(lines)
    })
}

/// Feed `input` to `penlog 127.0.0.1 PORT [LOCAL]`.
fn penlog(bin: &Path, port: u16, local: Option<&str>, input: &[u8]) {
    let port = port.to_string();
    let mut args = vec!["127.0.0.1", port.as_str()];
    args.extend(local);
    let out = run(bin, &args, input, &[], WAIT);
    assert_eq!(
        out.code(),
        Some(0),
        "{} failed: {}",
        bin.display(),
        out.stderr
    );
}

// ---- penlog -----------------------------------------------------------------------------------

#[test]
fn penlog_sends_the_datagrams_c_penlog_sends() {
    let Some(c) = c_bin("penlog") else { return };
    let ours = our_bin("penlog");
    let long = "L".repeat(2500);
    let input = format!(
        "127.0.0.1 - - [22/Nov/2026:07:40:01 +0000] \"GET /a HTTP/1.0\" 200 10\n\n{long}\n{}\nlast line without newline",
        "y".repeat(1023)
    );
    let sent = |bin: &Path| {
        let sink = Sink::new();
        penlog(bin, sink.port(), None, input.as_bytes());
        sink.drain()
    };
    let (c_got, our_got) = (sent(&c), sent(&ours));
    let lens: Vec<usize> = c_got.iter().map(Vec::len).collect();
    assert_eq!(lens, [68, 1, 1023, 1023, 455, 1023, 1, 25], "C penlog");
    assert_eq!(our_got, c_got);
}

#[test]
fn penlog_usage_and_errors_as_c_penlog() {
    let Some(c) = c_bin("penlog") else { return };
    let ours = our_bin("penlog");
    for args in [
        &[][..],
        &["127.0.0.1"],
        &["no.such.host.invalid", "10000"],
        &["127.0.0.1", "10000", "10.255.255.1"],
    ] {
        let c_out = run(&c, args, b"x\n", &[], WAIT);
        let our_out = run(&ours, args, b"x\n", &[], WAIT);
        assert_eq!(c_out.code(), Some(1), "C penlog {args:?}");
        assert_eq!(
            our_out.code(),
            Some(1),
            "penlog {args:?}: {}",
            our_out.stderr
        );
        assert!(!our_out.stderr.is_empty(), "penlog {args:?} said nothing");
    }
    let usage = run(&ours, &[], b"", &[], WAIT);
    assert_eq!(
        usage.stderr.trim(),
        "Usage: penlog server_ip server_port [my_ip]"
    );
}

#[test]
fn penlog_never_waits_for_a_dead_penlogd() {
    // Nothing listens on the port: every datagram is refused, and penlog must still read its
    // input as fast as it comes (Apache blocks when its piped logger does not read).
    let port = pen_crosstests::logtools::free_udp_port();
    let line = "127.0.0.1 - - [22/Nov/2026:07:40:01 +0000] \"GET /a HTTP/1.0\" 200 10\n";
    let input = line.repeat(200_000);
    let out = run(
        &our_bin("penlog"),
        &["127.0.0.1", &port.to_string()],
        input.as_bytes(),
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

// ---- penlogd: matching, against C ---------------------------------------------------------------

/// Transcript 13's scenario: pen records, then web lines through C's penlog, the last from
/// 127.0.0.2 (a web server pen does not know).
fn transcript_13(penlogd: &Path, penlog_bin: &Path) -> Vec<String> {
    let dir = Scratch::new("t13");
    let out = dir.arg("out");
    let daemon = Daemon::start(penlogd, &["-f", "-b", "-l", &out]);
    let long = "L".repeat(120);
    for (n, request) in [
        (41, "GET /a HTTP/1.0".to_string()),
        (42, "GET /b HTTP/1.0".into()),
        (43, "GET /shared HTTP/1.0".into()),
        (44, "GET /shared HTTP/1.0".into()),
        (45, "GET /prefix-long-name HTTP/1.0".into()),
        (46, format!("GET /{long} HTTP/1.0")),
    ] {
        let record = format!("+ 127.0.0.{n} 127.0.0.1 {request}\n");
        send_from(lo(1), daemon.addr(), record.as_bytes());
    }
    let web = format!(
        "127.0.0.1 - - [22/Nov/2026:07:40:01 +0000] \"GET /a HTTP/1.0\" 200 10
127.0.0.1 - - [22/Nov/2026:07:40:02 +0000] \"GET /b HTTP/1.0\" 200 10
127.0.0.1 - - [22/Nov/2026:07:40:03 +0000] \"GET /shared HTTP/1.0\" 200 10
127.0.0.1 - - [22/Nov/2026:07:40:04 +0000] \"GET /shared HTTP/1.0\" 200 10
127.0.0.1 - - [22/Nov/2026:07:40:05 +0000] \"GET /prefix\" 200 10
127.0.0.1 - - [22/Nov/2026:07:40:06 +0000] \"GET /nomatch HTTP/1.0\" 404 10
127.0.0.1 - - [22/Nov/2026:07:40:07 +0000] \"GET /{long} HTTP/1.0\" 200 10
a line without quotes
127.0.0.1 - - [22/Nov/2026:07:40:08 +0000] \"GET /a HTTP/1.0\" 200 10
"
    );
    penlog(penlog_bin, daemon.port, None, web.as_bytes());
    penlog(
        penlog_bin,
        daemon.port,
        Some("127.0.0.2"),
        b"127.0.0.1 - - [22/Nov/2026:07:40:09 +0000] \"GET /a HTTP/1.0\" 200 10\n",
    );
    let lines = lines_of(&dir.join("out"), 9);
    drop(daemon);
    lines
}

#[test]
fn penlogd_merges_as_c_penlogd_does() {
    let (Some(c_penlogd), Some(c_penlog)) = (c_bin("penlogd"), c_bin("penlog")) else {
        return;
    };
    let host = |l: &String| l.split(' ').next().unwrap_or_default().to_string();
    let c = transcript_13(&c_penlogd, &c_penlog);
    assert_eq!(
        c.iter().map(host).collect::<Vec<_>>(),
        [
            "127.0.0.41",
            "127.0.0.42",
            "127.0.0.44",
            "127.0.0.44",
            "127.0.0.45",
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.41",
            "127.0.0.1"
        ],
        "C penlogd (transcript 13)"
    );
    for penlog_bin in [c_penlog, our_bin("penlog")] {
        let ours = transcript_13(&our_bin("penlogd"), &penlog_bin);
        // The same, but for the request of 100 bytes or more, which pen 0.34.1's penlogd
        // could never match.
        let mut want = c.clone();
        want[6] = want[6].replacen("127.0.0.1 ", "127.0.0.46 ", 1);
        assert_eq!(ours, want, "with {}", penlog_bin.display());
    }
}

#[test]
fn penlogd_ring_keeps_the_last_n_records() {
    // Transcript 16: `-n 3`, four records, four web lines. C matched only the last two (N-1
    // searchable slots); ours matches the last three.
    let Some(c) = c_bin("penlogd") else { return };
    let run_ring = |bin: &Path| {
        let dir = Scratch::new("ring");
        let out = dir.arg("out");
        let daemon = Daemon::start(bin, &["-f", "-b", "-n", "3", "-l", &out]);
        for n in 1..=4 {
            let record = format!("+ 192.0.2.{n} 127.0.0.1 GET /p{n} HTTP/1.0\n");
            send_from(lo(1), daemon.addr(), record.as_bytes());
        }
        for n in 1..=4 {
            let line = format!(
                "127.0.0.1 - - [22/Nov/2026:08:00:0{n} +0000] \"GET /p{n} HTTP/1.0\" 200 1\n"
            );
            send_from(lo(1), daemon.addr(), line.as_bytes());
        }
        let lines = lines_of(&dir.join("out"), 4);
        lines
            .iter()
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        run_ring(&c),
        ["127.0.0.1", "127.0.0.1", "192.0.2.3", "192.0.2.4"],
        "C penlogd (transcript 16)"
    );
    assert_eq!(
        run_ring(&our_bin("penlogd")),
        ["127.0.0.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
    );
}

// ---- every pairing with a real pen ---------------------------------------------------------------

/// One client request through pen from 127.0.0.N: send, half-close, read to the end. When it
/// returns, pen has read the request (and sent its record).
fn request_through(pen: &Pen, n: u8, path: &str) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&lo(n).into()).expect("bind client");
    socket
        .connect_timeout(&pen.addr().into(), WAIT)
        .expect("connect to pen");
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .expect("send request");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
}

#[test]
fn pen_penlog_and_penlogd_pair_up_in_every_combination() {
    let Some(c_pen_bin) = c_pen() else { return };
    let (Some(c_penlogd), Some(c_penlog)) = (c_bin("penlogd"), c_bin("penlog")) else {
        return;
    };
    let backend = Backend::start("web");
    let pens = [c_pen_bin, our_pen()];
    let penlogds = [c_penlogd, our_bin("penlogd")];
    let penlogs = [c_penlog, our_bin("penlog")];
    for pen_bin in &pens {
        for penlogd in &penlogds {
            for penlog_bin in &penlogs {
                let what = format!(
                    "{} -> {} <- {}",
                    pen_bin.display(),
                    penlogd.display(),
                    penlog_bin.display()
                );
                let dir = Scratch::new("pair");
                let out = dir.arg("out");
                let daemon = Daemon::start(penlogd, &["-f", "-b", "-d", "-d", "-l", &out]);
                let log_to = format!("127.0.0.1:{}", daemon.port);
                let pen = Pen::start(pen_bin, &["-f", "-l", &log_to, LISTEN, &backend.spec()]);
                let mut web = String::new();
                for n in 61..=63u8 {
                    request_through(&pen, n, &format!("/page{n}"));
                    web.push_str(&format!(
                        "127.0.0.1 - - [22/Nov/2026:08:00:{n} +0000] \"GET /page{n} HTTP/1.0\" 200 3\n"
                    ));
                }
                // pen's records first (ours sends them from a writer thread, a moment later):
                // both penlogds log each stored record at debug level 2.
                wait_for(&format!("3 pen records at penlogd ({what})"), WAIT, || {
                    let err = daemon.stderr_text();
                    let n = err
                        .lines()
                        .filter(|l| l.contains("store_pen(") || l.contains("pen record"))
                        .count();
                    (n >= 3).then_some(())
                });
                penlog(penlog_bin, daemon.port, None, web.as_bytes());
                let lines = lines_of(&dir.join("out"), 3);
                let hosts: Vec<&str> = lines
                    .iter()
                    .map(|l| l.split(' ').next().unwrap_or_default())
                    .collect();
                assert_eq!(hosts, ["127.0.0.61", "127.0.0.62", "127.0.0.63"], "{what}");
                drop(pen);
            }
        }
    }
}

// ---- what only ours does -----------------------------------------------------------------------

#[test]
fn penlogd_counts_and_drops_malformed_datagrams_and_survives_them() {
    // C penlogd dies on an IPv6 server field (transcript 14).
    if let Some(c) = c_bin("penlogd") {
        let mut daemon = Daemon::start(&c, &["-f"]);
        send_from(lo(1), daemon.addr(), b"+ 1.2.3.4 ::1 GET / HTTP/1.0\n");
        let status = wait_for("C penlogd to crash", WAIT, || daemon.try_wait());
        assert!(!status.success(), "C penlogd survived an IPv6 record");
    }
    let dir = Scratch::new("malformed");
    let out = dir.arg("out");
    let mut daemon = Daemon::start(&our_bin("penlogd"), &["-f", "-l", &out]);
    let to = daemon.addr();
    let malformed: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\n".to_vec(),
        [b"127.0.0.1 - - [x] \"GET /".to_vec(), vec![b'o'; 2000], b"\" 200 1\n".to_vec()].concat(),
        b"a line without quotes\n".to_vec(),
        b"127.0.0.1 - - [x] \"GET /nul\x00 HTTP/1.0\" 200 1\n".to_vec(),
        b"127.0.0.1 - - [x] \"GET /esc\x1b[2J HTTP/1.0\" 200 1\n".to_vec(),
        b"127.0.0.1 - - [x] \"GET /a HTTP/1.0\" 200 1\n6.6.6.6 - - [x] \"GET /forged HTTP/1.0\" 200 1\n"
            .to_vec(),
        b"+ only two\n".to_vec(),
        b"+ 1.2.3.4 no.such.host.invalid GET / HTTP/1.0\n".to_vec(),
        b"+\n".to_vec(),
    ];
    for d in &malformed {
        send_from(lo(1), to, d);
    }
    // Valid ones after all that: an IPv6 server record (C's crash) and its web line.
    send_from(lo(1), to, b"+ 203.0.113.9 ::1 GET /v6 HTTP/1.0\n");
    send_from(lo(1), to, b"+ 203.0.113.7 127.0.0.1 GET /ok HTTP/1.0\n");
    send_from(
        lo(1),
        to,
        b"127.0.0.1 - - [22/Nov/2026:08:00:00 +0000] \"GET /ok HTTP/1.0\" 200 1\n",
    );
    send_from(
        (Ipv6Addr::LOCALHOST, 0).into(),
        (Ipv6Addr::LOCALHOST, daemon.port).into(),
        b"::1 - - [22/Nov/2026:08:00:01 +0000] \"GET /v6 HTTP/1.0\" 200 1\n",
    );
    let lines = lines_of(&dir.join("out"), 2);
    assert_eq!(
        lines,
        [
            "203.0.113.7 - - [22/Nov/2026:08:00:00 +0000] \"GET /ok HTTP/1.0\" 200 1",
            "203.0.113.9 - - [22/Nov/2026:08:00:01 +0000] \"GET /v6 HTTP/1.0\" 200 1",
        ]
    );
    let summary = usr1_summary(&mut daemon);
    assert!(
        summary.contains(&format!("{} dropped", malformed.len())),
        "{summary}"
    );
    for kind in [
        "2 empty",
        "1 longer than 1024 bytes",
        "1 contains a NUL byte",
        "1 contains a control character",
        "1 contains a line break",
        "3 a bogus pen record",
        "1 a web line without a quoted request",
    ] {
        assert!(summary.contains(kind), "{kind}: {summary}");
    }
    assert_eq!(daemon.stop().and_then(|s| s.code()), Some(0));
}

#[test]
fn penlogd_allow_list_hears_only_the_listed_addresses() {
    let dir = Scratch::new("allow");
    let out = dir.arg("out");
    let daemon = Daemon::start(
        &our_bin("penlogd"),
        &["-f", "-a", "127.0.0.1", "-a", "127.0.0.8/30", "-l", &out],
    );
    let to = daemon.addr();
    send_from(lo(2), to, b"+ 6.6.6.6 127.0.0.1 GET /x HTTP/1.0\n");
    send_from(lo(9), to, b"+ 5.5.5.5 127.0.0.1 GET /x HTTP/1.0\n");
    send_from(lo(12), to, b"127.0.0.1 - - [t] \"GET /x HTTP/1.0\" 200 1\n");
    send_from(lo(1), to, b"127.0.0.1 - - [t] \"GET /x HTTP/1.0\" 200 1\n");
    assert_eq!(
        lines_of(&dir.join("out"), 1),
        ["5.5.5.5 - - [t] \"GET /x HTTP/1.0\" 200 1"]
    );
}

#[test]
fn penlogd_hup_rotation_loses_and_splits_no_line() {
    let dir = Scratch::new("rotate");
    let out = dir.join("out");
    let out_arg = dir.arg("out");
    let daemon = Daemon::start(&our_bin("penlogd"), &["-f", "-l", &out_arg]);
    let to = daemon.addr();
    let mut sent = 0;
    let mut send_batch = |from: usize, count: usize| {
        for i in from..from + count {
            let line = format!(
                "10.0.0.1 - - [22/Nov/2026:08:00:00 +0000] \"GET /r/{i} HTTP/1.0\" 200 1\n"
            );
            send_from(lo(1), to, line.as_bytes());
        }
        sent += count;
    };
    let mut files = Vec::new();
    for round in 0..3 {
        send_batch(round * 500, 500);
        lines_of(&out, 1);
        let old = dir.join(&format!("out.{round}"));
        std::fs::rename(&out, &old).expect("mv out");
        daemon.signal("HUP");
        wait_for("out reopened", WAIT, || out.exists().then_some(()));
        files.push(old);
    }
    send_batch(1500, 500);
    files.push(out.clone());
    let all = wait_for("every line written", WAIT, || {
        let mut lines = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).ok()?;
            if !text.is_empty() && !text.ends_with('\n') {
                return None;
            }
            lines.extend(text.lines().map(String::from));
        }
        (lines.len() >= sent).then_some(lines)
    });
    let mut seen: Vec<usize> = all
        .iter()
        .map(|l| {
            l.split("GET /r/")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("split or foreign line: {l:?}"))
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..sent).collect::<Vec<_>>());
}

#[test]
fn penlogd_pid_file_is_written_and_removed_on_term() {
    let dir = Scratch::new("pid");
    let pid_file = dir.join("penlogd.pid");
    let pid_arg = dir.arg("penlogd.pid");
    let mut daemon = Daemon::start(&our_bin("penlogd"), &["-f", "-p", &pid_arg]);
    // penlogd writes it (atomically) once it has bound its port and dropped privileges, a
    // moment after the port shows as bound.
    let written = wait_for("the pid file", WAIT, || {
        std::fs::read_to_string(&pid_file).ok()
    });
    assert_eq!(written.trim(), daemon.pid().to_string());
    assert_eq!(daemon.stop().and_then(|s| s.code()), Some(0));
    assert!(!pid_file.exists(), "pid file left behind");
}

#[test]
fn penlogd_usage_and_errors() {
    let ours = our_bin("penlogd");
    let usage = run(&ours, &[], b"", &[], WAIT);
    assert_eq!(usage.code(), Some(0));
    assert!(usage
        .stdout_text()
        .starts_with("Usage:\n  penlogd [options] port"));
    for (args, want) in [
        (&["-z", "1"][..], "'z'"),
        (&["-f", "0"], "'0'"),
        (&["-f", "-n", "0", "1"], "-n '0'"),
        (&["-f", "-u", "no-such-user-here", "1"], "no-such-user-here"),
    ] {
        let out = run(&ours, args, b"", &[], WAIT);
        assert_eq!(out.code(), Some(1), "{args:?}");
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    // A port already taken: exit 1 before anything else.
    let taken = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = run(&ours, &["-f", &port], b"", &[], WAIT);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&port), "{}", out.stderr);
}

#[test]
fn penlogd_daemon_mode_runs_in_the_background_with_its_pid_file() {
    let dir = Scratch::new("daemon");
    let pid_file = dir.join("penlogd.pid");
    let port = pen_crosstests::logtools::free_udp_port();
    let out = dir.arg("out");
    let started = run(
        &our_bin("penlogd"),
        &["-p", &dir.arg("penlogd.pid"), "-l", &out, &port.to_string()],
        b"",
        &[],
        WAIT,
    );
    assert_eq!(started.code(), Some(0), "{}", started.stderr);
    // The parent returns only once the daemon is ready: its pid file is there already.
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .expect("the pid file, written before the parent returned");
    // Stopped by the PID it wrote, whatever happens below (if that PID is still a penlogd).
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("penlogd") {
                pen_crosstests::logtools::signal(self.0, "KILL");
            }
        }
    }
    let _stop = Stop(pid);
    wait_for("the daemon's port", WAIT, || {
        pen_crosstests::logtools::udp_bound(port).then_some(())
    });
    let to: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    send_from(lo(1), to, b"+ 192.0.2.5 127.0.0.1 GET /d HTTP/1.0\n");
    send_from(lo(1), to, b"127.0.0.1 - - [t] \"GET /d HTTP/1.0\" 200 1\n");
    assert_eq!(
        lines_of(&dir.join("out"), 1),
        ["192.0.2.5 - - [t] \"GET /d HTTP/1.0\" 200 1"]
    );
    pen_crosstests::logtools::signal(pid, "TERM");
    wait_for("the daemon to exit and remove its pid file", WAIT, || {
        (!pid_file.exists() && !Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
}

#[test]
fn penlogd_daemon_start_up_errors_show_in_the_exit_status() {
    let taken = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = run(&our_bin("penlogd"), &[&port], b"", &[], WAIT);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&port), "{}", out.stderr);
}

/// The uid, gid and supplementary groups of a process, from /proc.
fn ids(pid: u32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

#[test]
fn penlogd_runs_as_its_user_in_its_jail() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(String::from))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "this test needs root (to drop privileges and chroot); CI runs as root"
    );
    let dir = Scratch::new("jail");
    let jail = dir.join("jail");
    std::fs::create_dir(&jail).expect("mkdir jail");
    let chown = std::process::Command::new("chown")
        .args(["nobody:nogroup", &jail.display().to_string()])
        .status()
        .expect("chown");
    assert!(chown.success());
    let jail_arg = jail.display().to_string();
    let mut daemon = Daemon::start(
        &our_bin("penlogd"),
        &[
            "-f",
            "-u",
            "nobody",
            "-j",
            &jail_arg,
            "-l",
            "/merged.log",
            "-p",
            "/penlogd.pid",
        ],
    );
    let pid = daemon.pid();
    assert_eq!(
        ids(pid),
        (
            "65534 65534 65534 65534".to_string(),
            "65534 65534 65534 65534".to_string(),
            String::new()
        ),
        "uid, gid, no supplementary groups"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).expect("root link"),
        jail
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd link"),
        jail
    );
    let to = daemon.addr();
    send_from(lo(1), to, b"+ 192.0.2.7 127.0.0.1 GET /j HTTP/1.0\n");
    send_from(lo(1), to, b"127.0.0.1 - - [t] \"GET /j HTTP/1.0\" 200 1\n");
    let merged = jail.join("merged.log");
    assert_eq!(
        lines_of(&merged, 1),
        ["192.0.2.7 - - [t] \"GET /j HTTP/1.0\" 200 1"]
    );
    // Rotation inside the jail, as the user.
    std::fs::rename(&merged, jail.join("merged.log.1")).expect("mv");
    daemon.signal("HUP");
    wait_for("merged.log reopened in the jail", WAIT, || {
        merged.exists().then_some(())
    });
    send_from(lo(1), to, b"127.0.0.1 - - [t] \"GET /j HTTP/1.0\" 200 2\n");
    assert_eq!(
        lines_of(&merged, 1),
        ["192.0.2.7 - - [t] \"GET /j HTTP/1.0\" 200 2"]
    );
    assert_eq!(daemon.stop().and_then(|s| s.code()), Some(0));
    assert!(!jail.join("penlogd.pid").exists(), "pid file left behind");
}

#[test]
fn penlogd_in_the_background_keeps_writing_to_its_standard_output() {
    let dir = Scratch::new("bg-stdout");
    let port = pen_crosstests::logtools::free_udp_port();
    let out_path = dir.join("merged.log");
    let pid_file = dir.join("penlogd.pid");
    let status = std::process::Command::new(our_bin("penlogd"))
        .args(["-p", &dir.arg("penlogd.pid"), &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("create merged.log"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run penlogd");
    assert!(status.success());
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .expect("pid file");
    let to: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    send_from(lo(1), to, b"+ 192.0.2.8 127.0.0.1 GET /o HTTP/1.0\n");
    send_from(lo(1), to, b"127.0.0.1 - - [t] \"GET /o HTTP/1.0\" 200 1\n");
    let lines = lines_of(&out_path, 1);
    pen_crosstests::logtools::signal(pid, "TERM");
    wait_for("the daemon to exit", WAIT, || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert_eq!(lines, ["192.0.2.8 - - [t] \"GET /o HTTP/1.0\" 200 1"]);
}

/// `head`, filled with `fill` and ended with `tail` to exactly `len` bytes.
fn exactly(len: usize, head: &str, fill: u8, tail: &str) -> Vec<u8> {
    let pad = len
        .checked_sub(head.len() + tail.len())
        .unwrap_or_else(|| panic!("{head:?} and {tail:?} are longer than {len}"));
    let d = [head.as_bytes(), &vec![fill; pad], tail.as_bytes()].concat();
    assert_eq!(d.len(), len);
    d
}

/// Datagrams of exactly 0, 1023, 1024, 1025 and 65507 bytes (the largest UDP payload over
/// IPv4), as pen records, as web lines and as garbage: up to 1024 bytes, newline included, each
/// is handled as its kind (records stored, web lines written with their client, garbage
/// without quotes dropped as such, the empty one dropped as empty); from 1025 bytes on, each is
/// dropped and counted as longer than 1024 bytes, whole: neither a record nor a line cut to
/// 1024 bytes is used or written. penlogd stays up and handles a good record and line after
/// them, and its counters say exactly that (reliability catalogue B12: pen 0.34.1's penlogd
/// wrote past its buffer on a 1024-byte datagram).
#[test]
fn penlogd_datagram_sizes_at_and_around_its_limit() {
    let dir = Scratch::new("sizes");
    let out = dir.arg("out");
    let mut daemon = Daemon::start(&our_bin("penlogd"), &["-f", "-l", &out]);
    let to = daemon.addr();
    const SIZES: [usize; 4] = [1023, 1024, 1025, 65507];
    // The request for size n: its first 100 bytes (what the ring keeps and matches) name n.
    let request = |n: usize| format!("GET /size{n:05}?");
    // Records from 192.0.2.1-4, each request padded to make the datagram n bytes.
    for (k, n) in SIZES.iter().enumerate() {
        let head = format!("+ 192.0.2.{} 127.0.0.1 {}", k + 1, request(*n));
        send_from(lo(1), to, &exactly(*n, &head, b'q', " HTTP/1.0\n"));
    }
    let web_head = |n: usize| {
        format!(
            "127.0.0.1 - - [22/Nov/2026:08:00:00 +0000] \"{}",
            request(n)
        )
    };
    let web_tail = " HTTP/1.0\" 200 1\n";
    // Web lines of each size, for the records above.
    let web: Vec<Vec<u8>> = SIZES
        .iter()
        .map(|&n| exactly(n, &web_head(n), b'q', web_tail))
        .collect();
    for d in &web {
        send_from(lo(1), to, d);
    }
    // Short web lines asking for the records of 1025 and 65507 bytes: had either been cut to
    // 1024 bytes and stored, these would get its client.
    let short: Vec<Vec<u8>> = [1025, 65507]
        .iter()
        .map(|&n| exactly(300, &web_head(n), b'q', web_tail))
        .collect();
    for d in &short {
        send_from(lo(1), to, d);
    }
    // Garbage: nothing, and lines without quotes.
    send_from(lo(1), to, b"");
    for n in SIZES {
        send_from(lo(1), to, &exactly(n, "garbage ", b'g', "\n"));
    }
    // And after all that, a good record and its line.
    send_from(lo(1), to, b"+ 203.0.113.5 127.0.0.1 GET /after HTTP/1.0\n");
    send_from(
        lo(1),
        to,
        b"127.0.0.1 - - [22/Nov/2026:08:00:01 +0000] \"GET /after HTTP/1.0\" 200 1\n",
    );

    let text = |d: &[u8]| String::from_utf8_lossy(d).trim_end().to_string();
    let with_client = |d: &[u8], client: &str| text(d).replacen("127.0.0.1 ", client, 1);
    let want = [
        with_client(&web[0], "192.0.2.1 "),
        with_client(&web[1], "192.0.2.2 "),
        text(&short[0]),
        text(&short[1]),
        "203.0.113.5 - - [22/Nov/2026:08:00:01 +0000] \"GET /after HTTP/1.0\" 200 1".to_string(),
    ];
    let lines = lines_of(&dir.join("out"), want.len());
    assert_eq!(lines.len(), want.len(), "lines written");
    for (i, (got, want)) in lines.iter().zip(&want).enumerate() {
        assert!(
            got == want,
            "line {i}: {} bytes, want {}: {got:.120} / {want:.120}",
            got.len(),
            want.len()
        );
    }
    let summary = usr1_summary(&mut daemon);
    assert!(
        summary.ends_with(
            "17 datagrams: 3 pen records, 5 web lines (3 with their client, 2 unchanged), \
             9 dropped (1 empty, 6 longer than 1024 bytes, 2 a web line without a quoted request)"
        ),
        "{summary}"
    );
    assert_eq!(daemon.stop().and_then(|s| s.code()), Some(0));
    // Nothing more was written at exit.
    let text = std::fs::read_to_string(dir.join("out")).expect("out");
    assert_eq!(text.lines().count(), want.len());
}
