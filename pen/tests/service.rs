//! pen as a service, through the real binary: daemon mode and its exit status, the pid file,
//! syslog, the privilege drop and the chroot jail (checked in /proc), every signal, the HTML
//! status page against pen 0.34.1's (transcript 06), the text statistics (transcript 07), the
//! cron-driven report of the README, and the debug-level traffic dumps.

#[path = "../../tests/src/status_page.rs"]
mod status_page;
mod support;

use std::fs;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use status_page::{structure, table_rows};
use support::control;
use support::service::*;
use support::*;

const SIGUSR1: u32 = 10;
const SIGUSR2: u32 = 12;

/// Send `sig` to pen and wait until the page at `path` is replaced; return it.
fn refresh(pen: &Pen, path: &Path) -> String {
    let before = inode(path);
    pen.signal("USR1");
    wait_replaced(path, before)
}

/// Refresh the page until pen itself says no connection is open (its sockets close a moment
/// before it forgets the connection, so the descriptor count is not enough); return it.
fn refresh_until_idle(pen: &Pen, path: &Path) -> String {
    wait_until(
        "pen to forget its connections",
        Duration::from_secs(10),
        || {
            let page = refresh(pen, path);
            page.contains(" 0 used, ").then_some(page)
        },
    )
}

// ---- daemon mode --------------------------------------------------------------------------------

#[test]
fn daemon_parent_exits_0_once_serving_and_the_daemon_stops_cleanly_on_term() {
    let a = Backend::named("A");
    let dir = TempDir::new("daemon");
    let pid_file = dir.join("pen.pid");
    let started = Daemon::start(&pid_file, &[], &[a.spec()], &[]);
    assert!(
        started.parent.status.success(),
        "parent: {:?}",
        started.parent
    );
    let mut daemon = started.daemon.expect("a daemon");
    // Serving as soon as the parent is gone: the sockets were bound before it exited.
    let mut client = connect(daemon.listen).expect("pen listens once its parent has exited");
    assert_eq!(ask(&mut client).unwrap(), "A");
    drop(client);

    let pid_text = fs::read_to_string(&pid_file).unwrap();
    assert_eq!(
        pid_text,
        daemon.pid.to_string(),
        "decimal, no newline, as pen"
    );
    let mode = fs::metadata(&pid_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o022, 0, "pid file mode {mode:o}");
    assert_eq!(session_of(daemon.pid), daemon.pid, "a session of its own");
    for fd in 0..3 {
        assert_eq!(fd_target(daemon.pid, fd), Path::new("/dev/null"), "fd {fd}");
    }

    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(
        matches!(status, Some(WaitStatus::Exited(_, 0))),
        "TERM: {status:?}"
    );
    assert!(!pid_file.exists(), "the pid file is removed on exit");
}

#[test]
fn daemon_start_up_failure_shows_in_the_parent_s_exit_status_and_message() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let dir = TempDir::new("daemonfail");
    let pid_file = dir.join("pen.pid");
    let out = run_pen(
        &["-p", pid_file.to_str().unwrap(), &taken, "127.0.0.1:9"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("pen: can't bind") && out.stderr.contains(&taken),
        "{out:?}"
    );
    assert!(!pid_file.exists(), "no pid file for a pen that never ran");
    assert_eq!(out.stderr.matches("os error 98").count(), 1, "{out:?}");

    // A pid file that cannot be written: after binding, before the parent is told.
    let missing = dir.join("no/such/dir/pen.pid");
    let free = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let listen = format!("127.0.0.1:{free}");
    let out = run_pen(
        &["-p", missing.to_str().unwrap(), &listen, "127.0.0.1:9"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let want = format!(
        "pen: -p {}: can't write the pid file: No such file",
        missing.display()
    );
    assert!(out.stderr.contains(&want), "{out:?}");

    // A user that does not exist fails before anything is forked or bound.
    let out = run_pen(
        &["-u", "no-such-user-for-pen", "127.0.0.1:9", "127.0.0.1:9"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("pen: -u no-such-user-for-pen: no such user"),
        "{out:?}"
    );
}

#[test]
fn a_daemon_logs_to_syslog_with_facility_user_and_ident_pen() {
    let a = Backend::named("A");
    let dir = TempDir::new("syslog");
    let mut syslog = FakeSyslog::new(&dir);
    let pid_file = dir.join("pen.pid");
    let started = Daemon::start(
        &pid_file,
        &[],
        &[a.spec()],
        &[("PEN_SYSLOG_SOCKET", &syslog.path)],
    );
    assert!(started.parent.status.success(), "{:?}", started.parent);
    assert_eq!(
        started.parent.stderr, "",
        "nothing on stderr when syslog is there"
    );
    let daemon = started.daemon.expect("a daemon");
    // USR1 without -w: the text statistics, one message each.
    daemon.signal(Signal::SIGUSR1);
    let got = syslog.wait_for("Active connections:").to_vec();
    let ident = format!(" pen[{}]: ", daemon.pid);
    let time = got
        .iter()
        .find(|m| m.contains("servers, ") && m.contains(" current"))
        .expect("the Time line");
    assert!(
        time.starts_with("<14>") && time.contains(&ident),
        "user.info, ident pen: {time:?}"
    );
    assert!(
        got.iter()
            .any(|m| m.contains(&format!("{ident}Server 0 status:\naddress 127.0.0.1\n"))),
        "{got:?}"
    );
}

// ---- privileges and jail ------------------------------------------------------------------------

#[test]
fn u_drops_to_the_user_s_uid_and_gid_and_no_supplementary_group() {
    require_root("only root can change its user");
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let a = Backend::named("A");
    let dir = TempDir::new("user");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let pid_file = dir.join("pen.pid");
    let pen = Pen::start(
        &["-u", "nobody", "-p", pid_file.to_str().unwrap()],
        &[a.spec()],
    );
    let pid = pen.pid();
    assert_eq!(
        status_field(pid, "Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}")
    );
    assert_eq!(
        status_field(pid, "Gid"),
        format!("{gid}\t{gid}\t{gid}\t{gid}")
    );
    assert_eq!(status_field(pid, "Groups"), "", "no supplementary groups");
    assert_eq!(pen.ask_from(2), "A", "still serving");
    assert_eq!(
        fs::metadata(&pid_file).unwrap().uid(),
        uid,
        "written as the user"
    );
    pen.finish();
    assert!(!pid_file.exists(), "the user could remove its pid file");
}

#[test]
fn j_chroots_into_the_jail_and_paths_are_inside_it() {
    require_root("only root can chroot");
    let a = Backend::named("A");
    let jail = TempDir::new("jail");
    let pen = Pen::start(
        &[
            "-j",
            jail.path().to_str().unwrap(),
            "-p",
            "/pen.pid",
            "-w",
            "status.html",
        ],
        &[a.spec()],
    );
    let pid = pen.pid();
    let root = fs::read_link(format!("/proc/{pid}/root")).unwrap();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(root, jail.path());
    assert_eq!(
        cwd,
        jail.path(),
        "the working directory is inside the jail too"
    );
    assert_eq!(
        fs::read_to_string(jail.join("pen.pid")).unwrap(),
        pid.to_string()
    );
    assert_eq!(pen.ask_from(2), "A");
    // The relative -w path is relative to the jail's root.
    let page = refresh(&pen, &jail.join("status.html"));
    assert!(page.contains("<td>127.0.0.2</td>"), "{page}");
    pen.finish();
    assert!(!jail.join("pen.pid").exists());
}

/// Catalogue S4 (pen P9; §3.4 "Start as root"): `-u nobody -j JAIL` together, the jail an empty
/// directory (nobody's ids are looked up before the chroot, so it needs no /etc). In /proc:
/// every uid and gid is nobody's, no supplementary group, no capability
/// left (effective, permitted or ambient), so with no saved uid 0 either, setuid(0) cannot
/// succeed; the root and the working directory are the jail. The control port, which pen
/// opens as root only with -u, works; a file-writing command allowed by `control_files /`
/// reaches the file system and fails for lack of permission, and the jail stays empty.
#[test]
fn u_and_j_together_leave_no_privilege_and_no_way_out_of_the_jail() {
    require_root("only root can chroot and change its user");
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let a = Backend::named("A");
    let jail = TempDir::new("s4jail");
    // Root's, and not writable by nobody: what the catalogue's /var/empty is.
    fs::set_permissions(jail.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let control = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST.into())));
    let control_arg = control.to_string();
    let pen = Pen::start(
        &[
            "-u",
            "nobody",
            "-j",
            jail.path().to_str().unwrap(),
            "-C",
            &control_arg,
            "-o",
            "control_files /",
        ],
        &[a.spec()],
    );
    let pid = pen.pid();
    let all = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
    assert_eq!(
        status_field(pid, "Uid"),
        all(uid),
        "real, effective, saved, fs"
    );
    assert_eq!(
        status_field(pid, "Gid"),
        all(gid),
        "real, effective, saved, fs"
    );
    assert_eq!(status_field(pid, "Groups"), "", "no supplementary groups");
    for caps in ["CapEff", "CapPrm", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    let root = fs::read_link(format!("/proc/{pid}/root")).unwrap();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(root, jail.path(), "/proc/PID/root");
    assert_eq!(cwd, jail.path(), "/proc/PID/cwd: the jail's own root");
    assert_eq!(pen.ask_from(2), "A", "still serving");

    // The control port is open under these conditions, and answers.
    wait_until("the control port", Duration::from_secs(5), || {
        std::net::TcpStream::connect(control).ok()
    });
    assert_eq!(control::ctl(control, "blacklist"), "30\n");
    // File-writing commands, inside `control_files` so that the file system is what refuses.
    let tag = std::process::id();
    let (cfg, log) = (format!("/pen-s4-{tag}.cfg"), format!("/pen-s4-{tag}.log"));
    assert_eq!(
        control::ctl(control, &format!("write {cfg}")),
        format!("write: cannot write {cfg}\n")
    );
    let reply = control::ctl(control, &format!("log {log}"));
    assert!(
        reply.starts_with(&format!(
            "log: can't open log file {log}: Permission denied"
        )),
        "{reply}"
    );
    wait_until(
        "the write failure in pen's log",
        Duration::from_secs(5),
        || {
            pen.stderr_text()
                .contains(&format!("{cfg}: Permission denied"))
                .then_some(())
        },
    );
    let left: Vec<_> = fs::read_dir(jail.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files created in the jail: {left:?}");
    for escaped in [&cfg, &log] {
        assert!(
            !Path::new(escaped).exists(),
            "{escaped} written outside the jail"
        );
    }
    assert_eq!(control::ctl(control, "log"), "", "no request log was set");
    pen.finish();
}

// ---- signals ------------------------------------------------------------------------------------

#[test]
fn term_and_int_stop_pen_with_status_0_and_remove_the_pid_file() {
    let a = Backend::named("A");
    for sig in ["TERM", "INT"] {
        let dir = TempDir::new("stop");
        let pid_file = dir.join("pen.pid");
        let mut pen = Pen::start(&["-p", pid_file.to_str().unwrap()], &[a.spec()]);
        assert_eq!(read_pid_file(&pid_file), pen.pid().to_string());
        // An open connection is let finish within the grace period.
        let (name, mut held) = pen.hold_from(3);
        assert_eq!(name, "A");
        pen.signal(sig);
        wait_until("pen to stop listening", Duration::from_secs(10), || {
            connect(pen.tcp()).is_err().then_some(())
        });
        assert!(pen.is_alive(), "{sig}: pen waits for the open connection");
        held.shutdown(Shutdown::Write).unwrap();
        let _ = drain(&mut held);
        let status = pen.wait_exit(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "{sig}: {status:?}");
        assert!(!pid_file.exists(), "{sig}: pid file removed");
    }
}

#[test]
fn usr2_and_hup_leave_pen_running_and_say_so() {
    let a = Backend::named("A");
    let dir = TempDir::new("usr2");
    let pid_file = dir.join("pen.pid");
    let mut pen = Pen::start(&["-p", pid_file.to_str().unwrap()], &[a.spec()]);
    pen.signal("USR2");
    pen.signal("HUP");
    wait_until("both signals to be logged", Duration::from_secs(10), || {
        let err = pen.stderr_text();
        (err.contains("SIGUSR2: ignored") && err.contains("SIGHUP:")).then_some(())
    });
    pen.assert_alive();
    assert_eq!(pen.ask_from(2), "A");
    assert!(pid_file.exists(), "no abort, no stale pid file");
    pen.finish();
}

// ---- statistics ---------------------------------------------------------------------------------

/// Transcript 06's scenario: servers 0..2 (server 1 with limits, weight and prio), three short
/// requests from .1, .2, .3, then two held connections from .8 and .7, and SIGUSR1.
#[test]
fn usr1_writes_the_html_page_with_pen_0_34_1_s_structure() {
    let (a, b, c) = (
        Backend::named("A"),
        Backend::named("B"),
        Backend::named("C"),
    );
    let dir = TempDir::new("webstats");
    let page_path = dir.join("webstats.html");
    let pen = Pen::start(
        &["-x", "500", "-w", page_path.to_str().unwrap()],
        &[a.spec(), b.spec_with(":10:20:1:2"), c.spec()],
    );
    // One at a time, each forgotten before the next, so that every one uses slot 0 as in pen's
    // run (the connection slots a page shows depend on the order connections ended).
    let names: Vec<String> = [1, 2, 3]
        .iter()
        .map(|&n| {
            let name = pen.ask_from(n);
            refresh_until_idle(&pen, &page_path);
            name
        })
        .collect();
    assert_eq!(names, ["B", "C", "A"], "round robin from server 1");
    let (_, held_8) = pen.hold_from(8);
    let (_, held_7) = pen.hold_from(7);
    let page = refresh(&pen, &page_path);

    let want = include_str!("../src/stats/testdata/pen-0.34.1-status.html");
    assert_eq!(
        structure(&page),
        structure(want),
        "pen 0.34.1's page, values aside:\n{page}"
    );
    assert!(page.contains(", 3 servers, 2 current<p>"), "{page}");
    assert!(
        page.contains("Number of connections: 500 max, 2 used, 1 last<p>"),
        "{page}"
    );
    let servers = table_rows(&page, "<table");
    let ports = [a.port(), b.port(), c.port()].map(|p| p.to_string());
    for (i, row) in servers.iter().enumerate() {
        // server, address, status, port, connections, max soft, max hard, ..., weight, prio
        let (limits, wp) = if i == 1 {
            (["10", "20"], ["1", "2"])
        } else {
            (["0", "0"], ["0", "0"])
        };
        let conns = if i == 0 { "0" } else { "1" };
        assert_eq!(
            [&row[0], &row[1], &row[2], &row[3], &row[4], &row[5], &row[6], &row[9], &row[10]],
            [
                &i.to_string(),
                "127.0.0.1",
                "0",
                &ports[i],
                conns,
                limits[0],
                limits[1],
                wp[0],
                wp[1]
            ],
            "server row {i}: {row:?}"
        );
    }
    assert_eq!(
        (servers[0][7].as_str(), servers[0][8].as_str()),
        ("1", "2"),
        "bytes of .3's request"
    );
    let clients = table_rows(&page, "<h2>Active clients</h2>");
    let seen: Vec<(&str, &str, &str)> = clients
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str(), r[3].as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("0", "127.0.0.1", "1"),
            ("1", "127.0.0.2", "2"),
            ("2", "127.0.0.3", "0"),
            ("3", "127.0.0.8", "1"),
            ("4", "127.0.0.7", "2")
        ]
    );
    let conns = table_rows(&page, "<h2>Active connections</h2>");
    let slots: Vec<(&str, &str, &str, &str)> = conns
        .iter()
        .map(|r| (r[0].as_str(), r[3].as_str(), r[5].as_str(), r[6].as_str()))
        .collect();
    assert_eq!(slots, [("0", "0", "3", "1"), ("1", "0", "4", "2")]);
    for row in &conns {
        let fds: Vec<i32> = [&row[1], &row[2]]
            .iter()
            .map(|f| f.parse().unwrap())
            .collect();
        assert!(fds.iter().all(|&fd| fd > 2), "real descriptors: {row:?}");
    }
    drop((held_8, held_7));
    pen.finish();
}

#[test]
fn the_page_replaces_a_symlink_instead_of_writing_through_it() {
    let a = Backend::named("A");
    let dir = TempDir::new("symlink");
    let victim = dir.join("victim");
    fs::write(&victim, "precious").unwrap();
    let page_path = dir.join("status.html");
    symlink(&victim, &page_path).unwrap();
    let pen = Pen::start(&["-w", page_path.to_str().unwrap()], &[a.spec()]);
    let page = refresh(&pen, &page_path);
    assert!(page.starts_with("<html>\n"), "{page}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    let meta = fs::symlink_metadata(&page_path).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o002, 0, "not world-writable");
    pen.finish();
}

/// The entries of a directory, by name, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Catalogue S5 (pen P10; §3.4 "Files"): under umask 000 every file pen creates has its own
/// fixed mode, not the umask's: the pid file and the status page 0644, the request log 0640
/// (when first opened and when HUP creates it again after a rotation), the control socket
/// 0600; none group- or world-writable, all owned by pen's user. Nothing is created but the
/// configured paths: no temporary file left beside them, nothing in pen's working directory.
#[test]
fn under_umask_000_each_file_gets_its_fixed_mode_and_nothing_else_is_created() {
    let a = Backend::named("A");
    let dir = TempDir::new("s5");
    let (cwd, files) = (dir.join("cwd"), dir.join("files"));
    fs::create_dir(&cwd).unwrap();
    fs::create_dir(&files).unwrap();
    let path = |name: &str| files.join(name).display().to_string();
    let (pid_file, page, log, sock) = (
        path("pen.pid"),
        path("status.html"),
        path("pen.log"),
        path("pen.ctl"),
    );
    let wrapper = format!("umask 000; cd '{}' && exec \"$0\" \"$@\"", cwd.display());
    let user = control::user_args();
    let pen = Pen::spawn(Listen::V4, &["sh", "-c", &wrapper], |l| {
        let mut v: Vec<String> = ["-f", "-p", &pid_file, "-w", &page, "-l", &log, "-C", &sock]
            .map(String::from)
            .to_vec();
        v.extend(user.iter().cloned());
        v.push(l.to_string());
        v.push(a.spec());
        v
    });
    let umask = status_field(pen.pid(), "Umask");
    assert_eq!(umask, "0000", "the wrapper's umask reached pen");
    // One request, so that a log line is written; one USR1, so that the page is.
    assert_eq!(pen.ask_from(2), "A");
    wait_until("a line in the request log", Duration::from_secs(10), || {
        fs::read_to_string(&log).ok().filter(|t| t.ends_with('\n'))
    });
    refresh(&pen, Path::new(&page));
    wait_until("the control socket", Duration::from_secs(5), || {
        Path::new(&sock).exists().then_some(())
    });
    // A rotation: HUP creates the log again, under the same umask.
    fs::rename(&log, path("pen.log.1")).unwrap();
    pen.signal("HUP");
    wait_until("the log reopened", Duration::from_secs(10), || {
        Path::new(&log).exists().then_some(())
    });

    let euid = nix::unistd::geteuid().as_raw();
    for (file, want) in [
        (&pid_file, 0o644),
        (&page, 0o644),
        (&path("pen.log.1"), 0o640),
        (&log, 0o640),
        (&sock, 0o600),
    ] {
        let meta = fs::symlink_metadata(file).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        assert_eq!(mode, want, "{file}: mode {mode:o}, want {want:o}");
        assert_eq!(meta.uid(), euid, "{file}: owner");
    }
    assert_eq!(
        entries(&files),
        ["pen.ctl", "pen.log", "pen.log.1", "pen.pid", "status.html"],
        "only the configured paths (and the rotated log)"
    );
    for name in entries(&files) {
        let mode = fs::symlink_metadata(files.join(&name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o022,
            0,
            "{name}: group- or world-writable ({mode:o})"
        );
    }
    assert!(
        entries(&cwd).is_empty(),
        "created in pen's working directory: {:?}",
        entries(&cwd)
    );
    pen.finish();
}

/// Catalogue S6 (pen P10; §3.4 "Files") for the pid file: a `-p` path planted as a symbolic
/// link, to a victim file or to a name that does not exist yet, is replaced by a regular file
/// (pen writes a new file and renames it over the link); the victim is untouched and no file
/// appears at the dangling link's target. A pid file replaced by a link while pen runs is left
/// alone at exit (it no longer holds pen's pid), and so is its target.
#[test]
fn a_pid_file_path_planted_as_a_symlink_is_replaced_never_written_through() {
    let a = Backend::named("A");
    let dir = TempDir::new("s6pid");
    let victim = dir.join("victim");
    fs::write(&victim, "precious").unwrap();
    let missing = dir.join("created-through-the-link");
    for target in [&victim, &missing] {
        let pid_file = dir.join("pen.pid");
        symlink(target, &pid_file).unwrap();
        let pen = Pen::start(&["-p", pid_file.to_str().unwrap()], &[a.spec()]);
        // pen writes the pid file a moment after it starts listening: wait until the link is
        // gone, or until something was written through it.
        poll_until(Duration::from_secs(5), || {
            let replaced = fs::symlink_metadata(&pid_file).is_ok_and(|m| m.is_file());
            let through = missing.exists() || fs::read(&victim).unwrap() != b"precious";
            (replaced || through).then_some(())
        });
        let meta = fs::symlink_metadata(&pid_file).unwrap();
        assert!(
            meta.file_type().is_file(),
            "link to {}: not replaced by a regular file",
            target.display()
        );
        assert_eq!(meta.permissions().mode() & 0o022, 0, "writable by others");
        assert_eq!(
            fs::read_to_string(&pid_file).unwrap(),
            pen.pid().to_string()
        );
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!missing.exists(), "a file created through a dangling link");
        pen.finish();
        assert!(!pid_file.exists(), "pid file removed at exit");
    }

    // Swapped for a link while pen runs: at exit pen reads "precious", not its pid, and
    // leaves both the link and the victim as they are.
    let pid_file = dir.join("pen.pid");
    let pen = Pen::start(&["-p", pid_file.to_str().unwrap()], &[a.spec()]);
    assert_eq!(read_pid_file(&pid_file), pen.pid().to_string());
    fs::remove_file(&pid_file).unwrap();
    symlink(&victim, &pid_file).unwrap();
    pen.finish();
    assert!(fs::symlink_metadata(&pid_file)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(
        entries(dir.path()),
        ["pen.pid", "victim"],
        "no temporary file left"
    );
}

/// Transcript 07's scenario: two servers, one finished connection from .9 and one open from
/// .10, then SIGUSR1 without -w. pen 0.34.1 printed garbage for each client (bug B5).
#[test]
fn usr1_without_w_logs_the_text_statistics_in_their_intended_form() {
    let (a, b) = (Backend::named("A"), Backend::named("B"));
    let pen = Pen::start(&["-x", "500"], &[a.spec(), b.spec()]);
    assert_eq!(pen.ask_from(9), "B");
    let mut held = None;
    let items = text_report_after(&pen, || {
        let (name, conn) = pen.hold_from(10);
        assert_eq!(name, "A");
        held = Some(conn);
    });
    assert!(items[0].ends_with(", 2 servers, 0 current"), "{items:?}");
    let server = |i: usize, port: u16, conns: u32| {
        format!(
            "Server {i} status:\naddress 127.0.0.1\n0\nport {port}\n{conns} connections (0 soft, 0 hard)\n1 sent, 2 received\n"
        )
    };
    assert_eq!(items[1], server(0, a.port(), 1));
    assert_eq!(items[2], server(1, b.port(), 0));
    assert_eq!(items[3], "Max number of clients: 2048");
    assert_eq!(items[4], "Active clients:");
    let client = |item: &str, slot: u32, ip: &str, server: u32| {
        let head = format!("Client {slot} status:\naddress {ip}\nlast used ");
        let tail = format!("\nlast server {server}\nconnects 1\nsent 2\nreceived 1\n");
        let age = item.strip_prefix(&head).and_then(|r| r.strip_suffix(&tail));
        assert!(
            age.is_some_and(|a| a.parse::<u64>().is_ok()),
            "client {slot}: {item:?}"
        );
    };
    client(&items[5], 0, "127.0.0.9", 1);
    client(&items[6], 1, "127.0.0.10", 0);
    assert_eq!(items[7], "Max number of connections: 500");
    assert_eq!(items[8], "Active connections:");
    let conn = items[9]
        .strip_prefix("Connection 0 status:\ndownfd = ")
        .and_then(|r| r.strip_suffix("\npending data 0 down, 0 up\nclient 1, server 0\n"));
    assert!(
        conn.is_some_and(|fds| fds.contains(", upfd = ")),
        "{:?}",
        items[9]
    );
    drop(held);
    pen.finish();
}

/// The cron recipe of README.md, run as written: a script that signals pen through its pid
/// file and prints the refreshed page.
#[test]
fn the_readme_s_cron_script_refreshes_the_page_through_the_pid_file() {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("#!/bin/sh\n# pen-status")
        .expect("the pen-status script in README.md");
    let script = &readme[start..];
    let script = &script[..script.find("```").expect("end of the script block")];
    let dir = TempDir::new("cron");
    let script_path = dir.join("pen-status");
    fs::write(&script_path, script).unwrap();
    fs::set_permissions(&script_path, fs::Permissions::from_mode(0o755)).unwrap();

    let a = Backend::named("A");
    let (pid_file, page_path) = (dir.join("pen.pid"), dir.join("status.html"));
    let started = Daemon::start(
        &pid_file,
        &["-w", page_path.to_str().unwrap()],
        &[a.spec()],
        &[],
    );
    let daemon = started
        .daemon
        .unwrap_or_else(|| panic!("{:?}", started.parent));
    let run = |expect: &str| {
        let out = Command::new(&script_path)
            .arg(&pid_file)
            .arg(&page_path)
            .output()
            .expect("run the script");
        let page = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{out:?}");
        assert!(
            page.starts_with("<html>\n") && page.contains(expect),
            "{page}"
        );
        page
    };
    run("Pen status page");
    let mut client = support::connect_from(loopback(5), 0, daemon.listen).unwrap();
    assert_eq!(ask(&mut client).unwrap(), "A");
    run("<td>127.0.0.5</td>");
    drop(client);
}

#[test]
fn debug_level_3_dumps_traffic_in_hex_or_with_a_in_ascii() {
    let a = Backend::named("A");
    for (opts, want) in [
        (&["-ddd"][..], ["1: 3f \n", "2: 41 0a \n"]),
        (&["-ddd", "-a"][..], ["1: ?\n", "2: A\n"]),
    ] {
        let pen = Pen::start(opts, &[a.spec()]);
        assert_eq!(pen.ask_from(2), "A");
        let found = poll_until(Duration::from_secs(10), || {
            let err = pen.stderr_text();
            want.iter()
                .all(|w| err.contains(&format!(": {w}")))
                .then_some(())
        });
        assert!(found.is_some(), "{opts:?}: {}", pen.stderr_text());
        pen.finish();
    }
}

#[test]
fn hup_usr1_and_usr2_are_caught_so_they_never_kill_pen() {
    let a = Backend::named("A");
    let pen = Pen::start(&[], &[a.spec()]);
    for (sig, name) in [(1, "HUP"), (SIGUSR1, "USR1"), (SIGUSR2, "USR2")] {
        assert!(catches_signal(pen.pid(), sig), "SIG{name} not caught");
    }
    pen.finish();
}

/// Catalogue B15: a storm of signals (1,000 SIGHUP in about a second, with SIGUSR1 among them)
/// while clients keep asking: no hang, no spinning afterwards, every request answered, and the
/// control port still answers.
#[test]
fn a_signal_storm_under_load_leaves_pen_serving() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let a = Backend::named("A");
    let mut c = support::control::Controlled::start(&[], &[a.spec()]);
    let pid = nix::unistd::Pid::from_raw(c.pen.pid() as i32);
    let (stop, served, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let addr = c.pen.tcp();
    let traffic = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        std::thread::spawn(move || {
            // Bounded: the test stops it, and at most 100,000 requests.
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let answer = connect(addr).and_then(|mut s| ask(&mut s));
                match answer {
                    Ok(name) if name == "A" => served.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    let started = std::time::Instant::now();
    for i in 0..1000 {
        let sig = if i % 100 == 99 {
            Signal::SIGUSR1
        } else {
            Signal::SIGHUP
        };
        nix::sys::signal::kill(pid, sig).expect("pen is there to signal");
        std::thread::sleep(Duration::from_micros(800));
    }
    let storm = started.elapsed();
    let during = served.load(Ordering::SeqCst);
    // Traffic goes on after the storm, and the control port answers.
    wait_until(
        "requests to be served after the storm",
        Duration::from_secs(5),
        || (served.load(Ordering::SeqCst) >= during + 20).then_some(()),
    );
    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    let port = a.spec().rsplit(':').next().unwrap().to_string();
    let servers = c.ctl("servers");
    assert!(
        servers.contains(&format!("port {port}")),
        "the control port's `servers` reply: {servers:?}"
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed");
    assert!(during > 0, "nothing was served during the {storm:?} storm");
    // Settled: no thread spins on what the storm left behind.
    let cpu = cpu_during(c.pen.pid(), || std::thread::sleep(Duration::from_secs(1)));
    assert!(
        cpu < 0.3,
        "pen used {cpu:.2} s of CPU in the second after the storm"
    );
    c.pen.assert_alive();
    c.pen.finish();
}
