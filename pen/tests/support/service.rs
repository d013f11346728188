//! Harness for running pen as a service: pen started as a daemon (once its parent exits it is
//! no longer our child, so this process makes itself the subreaper that inherits it and can
//! still wait for it), /proc probes of credentials and sessions, a stand-in syslog socket,
//! waiting for a file to be replaced, and pen's log split into its messages.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{free_port, poll_until, wait_until, Output, Pen, TempDir, PEN};

/// Fail (never skip) a test that needs root, saying why.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root ({why}); CI runs as root"
    );
}

/// Make this process the subreaper of its descendants, so that a daemon whose parent exited
/// is reparented to us and can be waited for (and never lingers as a zombie).
pub fn become_subreaper() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// A pen that detached: found through its pid file, stopped by PID when dropped.
pub struct Daemon {
    pub pid: u32,
    pub listen: SocketAddr,
    pub pid_file: PathBuf,
    exited: Option<WaitStatus>,
}

/// What starting a daemon gave: the parent's exit and output, and the daemon if it is up.
pub struct Started {
    pub parent: Output,
    pub daemon: Option<Daemon>,
}

impl Daemon {
    /// `pen -p PID_FILE ARGS... 127.0.0.1:PORT SERVERS...` without `-f`, with `env` added to the
    /// environment; returns once the parent has exited (within 10 s). A listen port taken by
    /// another process in the meantime is replaced (up to 5 tries).
    pub fn start(
        pid_file: &Path,
        args: &[&str],
        servers: &[String],
        env: &[(&str, &Path)],
    ) -> Started {
        become_subreaper();
        let out_dir = TempDir::new("daemon");
        for attempt in 0..5 {
            let port = free_port(Ipv4Addr::LOCALHOST.into());
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let (out, err) = (
                out_dir.join(&format!("stdout.{attempt}")),
                out_dir.join(&format!("stderr.{attempt}")),
            );
            let mut cmd = Command::new(PEN);
            cmd.arg("-p")
                .arg(pid_file)
                .args(args)
                .arg(listen.to_string());
            cmd.args(servers);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(fs::File::create(&out).unwrap())
                .stderr(fs::File::create(&err).unwrap())
                .spawn()
                .expect("spawn pen");
            let status = poll_until(Duration::from_secs(10), || child.try_wait().ok().flatten())
                .unwrap_or_else(|| {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the parent pen did not exit within 10 s")
                });
            let parent = Output {
                status,
                stdout: fs::read_to_string(&out).unwrap_or_default(),
                stderr: fs::read_to_string(&err).unwrap_or_default(),
            };
            if !status.success() {
                if parent.stderr.contains("in use") && attempt < 4 {
                    continue;
                }
                return Started {
                    parent,
                    daemon: None,
                };
            }
            let pid = fs::read_to_string(pid_file)
                .unwrap_or_else(|e| {
                    panic!(
                        "no pid file {} once the parent exited 0: {e}",
                        pid_file.display()
                    )
                })
                .trim()
                .parse()
                .expect("a pid in the pid file");
            let daemon = Daemon {
                pid,
                listen,
                pid_file: pid_file.to_path_buf(),
                exited: None,
            };
            return Started {
                parent,
                daemon: Some(daemon),
            };
        }
        unreachable!("the loop returns on its last attempt")
    }

    pub fn signal(&self, sig: Signal) {
        if self.exited.is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), sig);
        }
    }

    /// Wait (as its subreaper) for the daemon to exit, for at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<WaitStatus> {
        if self.exited.is_none() {
            let pid = Pid::from_raw(self.pid as i32);
            self.exited = poll_until(timeout, || match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => None,
                Ok(status) => Some(status),
                Err(e) => panic!("waitpid({pid}): {e} (not our descendant?)"),
            });
        }
        self.exited
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        self.signal(Signal::SIGTERM);
        if self.wait_exit(Duration::from_secs(3)).is_none() {
            self.signal(Signal::SIGKILL);
            let _ = self.wait_exit(Duration::from_secs(5));
        }
    }
}

// ---- /proc ------------------------------------------------------------------------------------

/// A field of /proc/PID/status, without its name (`Uid` -> "0\t0\t0\t0").
pub fn status_field(pid: u32, name: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The session id of a process (/proc/PID/stat, the field after the parenthesised name).
pub fn session_of(pid: u32) -> u32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let after_name = &stat[stat.rfind(')').expect("(comm)") + 2..];
    // state ppid pgrp session ...
    after_name
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap()
}

/// Where descriptor `fd` of a process points.
pub fn fd_target(pid: u32, fd: u32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("/proc/PID/fd/N")
}

// ---- files ------------------------------------------------------------------------------------

pub fn inode(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Wait until `path` is a different file from `before` (pen replaces its pages by renaming a
/// new file over them, so the inode changes), and read it.
pub fn wait_replaced(path: &Path, before: Option<u64>) -> String {
    wait_until(
        &format!("{} to be rewritten", path.display()),
        Duration::from_secs(10),
        || match inode(path) {
            Some(now) if Some(now) != before => fs::read_to_string(path).ok(),
            _ => None,
        },
    )
}

// ---- logs -------------------------------------------------------------------------------------

/// pen's stderr as its messages: a line starting with pen's time stamp begins one (the stamp
/// is removed), other lines belong to the message before.
pub fn log_messages(stderr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in stderr.lines() {
        match strip_stamp(line) {
            Some(text) => out.push(text.to_string()),
            None => {
                if let Some(last) = out.last_mut() {
                    last.push('\n');
                    last.push_str(line);
                }
            }
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS: text` -> `text`.
fn strip_stamp(line: &str) -> Option<&str> {
    let (stamp, text) = (line.get(..21)?, line.get(21..)?);
    let shape = stamp.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b' ',
        13 | 16 | 19 => b == b':',
        20 => b == b' ',
        _ => b.is_ascii_digit(),
    });
    shape.then_some(text)
}

/// Signal USR1 until pen's text statistics show no open connection; then signal once more
/// after `then` and return that report's messages. The reports are told apart by counting.
pub fn text_report_after(pen: &Pen, then: impl FnOnce()) -> Vec<String> {
    let reports = |pen: &Pen| {
        let messages = log_messages(&pen.stderr_text());
        let starts: Vec<usize> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.starts_with("Time "))
            .map(|(i, _)| i)
            .collect();
        (messages, starts)
    };
    // Report `n` (counting from 0), once complete: its items are logged one by one, and it is
    // complete when it lists as many connections as its server items count.
    let report = |pen: &Pen, n: usize| -> Vec<String> {
        pen.signal("USR1");
        wait_until("a text report", Duration::from_secs(10), || {
            let (messages, starts) = reports(pen);
            let start = *starts.get(n)?;
            let end = starts.get(n + 1).copied().unwrap_or(messages.len());
            let items = &messages[start..end];
            let active = items.iter().position(|m| m == "Active connections:")?;
            let conns = items.len() - active - 1;
            let open: usize = items
                .iter()
                .filter_map(|m| m.strip_prefix("Server "))
                .filter_map(|m| m.lines().nth(4)?.split(' ').next()?.parse::<usize>().ok())
                .sum();
            (conns >= open).then(|| items.to_vec())
        })
    };
    let mut n = 0;
    wait_until(
        "pen to forget its connections",
        Duration::from_secs(10),
        || {
            let items = report(pen, n);
            n += 1;
            (!items.iter().any(|m| m.starts_with("Connection "))).then_some(())
        },
    );
    then();
    report(pen, n)
}

/// A stand-in for the syslog daemon: a datagram socket pen is pointed at with
/// `PEN_SYSLOG_SOCKET`.
pub struct FakeSyslog {
    socket: UnixDatagram,
    pub path: PathBuf,
    received: Vec<String>,
}

impl FakeSyslog {
    pub fn new(dir: &TempDir) -> FakeSyslog {
        let path = dir.join("log.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the fake syslog socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        FakeSyslog {
            socket,
            path,
            received: Vec::new(),
        }
    }

    /// Receive until a datagram contains `text`; every datagram so far.
    pub fn wait_for(&mut self, text: &str) -> &[String] {
        let socket = &self.socket;
        let received = &mut self.received;
        let found = poll_until(Duration::from_secs(10), || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = socket.recv(&mut buf) {
                received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            received.iter().any(|m| m.contains(text)).then_some(())
        });
        assert!(
            found.is_some(),
            "no syslog message containing {text:?}; got {received:?}"
        );
        &self.received
    }
}
