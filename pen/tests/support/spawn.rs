//! The pen under test: started on a free port and stopped by its PID (`Pen`), or run to
//! completion (`run_pen`).

use std::fs::{self, File};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::*;

/// Where pen listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// `127.0.0.1:PORT` on a free port.
    V4,
    /// `[::1]:PORT` on a free port.
    V6,
    /// A Unix socket at this path.
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub enum PenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A running pen, stopped by PID (SIGTERM, then SIGKILL) when dropped.
pub struct Pen {
    pub(super) child: Child,
    pub addr: PenAddr,
    /// What was passed as LISTEN.
    pub listen_arg: String,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    pub(super) exited: Option<ExitStatus>,
    pub(super) _dir: Option<TempDir>,
}

/// What a pen run that exited by itself printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Wait for `child` to exit, for at most `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    poll_until(timeout, || child.try_wait().ok().flatten())
}

/// Run pen with `args` to completion (it is expected to exit by itself) within `timeout`;
/// killed and reported as a panic if it does not.
pub fn run_pen(args: &[&str], timeout: Duration) -> Output {
    run_pen_with(&[], args, timeout)
}

/// `run_pen`, with these variables added to pen's environment.
pub fn run_pen_with(env: &[(&str, &str)], args: &[&str], timeout: Duration) -> Output {
    let dir = TempDir::new("run");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(PEN)
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn pen");
    let status = wait_child(&mut child, timeout);
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "pen {args:?} did not exit within {timeout:?}; stderr: {}",
            fs::read_to_string(&err).unwrap_or_default()
        )
    });
    Output {
        status,
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    }
}

impl Pen {
    /// `pen -f OPTS... 127.0.0.1:PORT SERVERS...`
    pub fn start(opts: &[&str], servers: &[String]) -> Pen {
        Pen::start_on(Listen::V4, opts, servers)
    }

    /// `pen -f OPTS... LISTEN SERVERS...`
    pub fn start_on(listen: Listen, opts: &[&str], servers: &[String]) -> Pen {
        Pen::spawn(listen, &[], |l| {
            let mut args = vec!["-f".to_string()];
            args.extend(opts.iter().map(|s| s.to_string()));
            args.push(l.to_string());
            args.extend(servers.iter().cloned());
            args
        })
    }

    /// Start `WRAPPER... pen ARGS(listen)...` and wait until pen listens and handles SIGTERM. A
    /// TCP listen port that another process took in the meantime is replaced by a fresh one (up
    /// to 5 tries).
    pub fn spawn(listen: Listen, wrapper: &[&str], args: impl Fn(&str) -> Vec<String>) -> Pen {
        let dir = TempDir::new("pen");
        let mut last_err = String::new();
        for attempt in 0..5 {
            let (listen_arg, addr) = match &listen {
                Listen::V4 => {
                    let port = free_port(Ipv4Addr::LOCALHOST.into());
                    (
                        format!("127.0.0.1:{port}"),
                        PenAddr::Tcp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)),
                    )
                }
                Listen::V6 => {
                    let port = free_port(Ipv6Addr::LOCALHOST.into());
                    (
                        format!("[::1]:{port}"),
                        PenAddr::Tcp(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)),
                    )
                }
                Listen::Unix(path) => (path.display().to_string(), PenAddr::Unix(path.clone())),
            };
            let full_args = args(&listen_arg);
            let mut pen = Pen::launch(&dir, attempt, wrapper, &full_args, addr, listen_arg);
            match pen.wait_listening() {
                Ok(()) => {
                    pen._dir = Some(dir);
                    return pen;
                }
                Err(status) => {
                    last_err = format!(
                        "pen {full_args:?} exited with {status:?} before listening; stderr:\n{}",
                        pen.stderr_text()
                    );
                    let retry = matches!(pen.addr, PenAddr::Tcp(_))
                        && status.is_some()
                        && pen.stderr_text().contains("in use");
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("{last_err}");
    }

    /// Start `WRAPPER... pen ARGS...` (attempt number `attempt`: its stdout and stderr go to
    /// files of that number in `dir`), without waiting for anything.
    pub(crate) fn launch(
        dir: &TempDir,
        attempt: usize,
        wrapper: &[&str],
        args: &[String],
        addr: PenAddr,
        listen_arg: String,
    ) -> Pen {
        let stderr_path = dir.join(&format!("stderr.{attempt}"));
        let stdout_path = dir.join(&format!("stdout.{attempt}"));
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(PEN);
                c
            }
            None => Command::new(PEN),
        };
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("stdout file"))
            .stderr(File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn pen");
        Pen {
            child,
            addr,
            listen_arg,
            stderr_path,
            stdout_path,
            exited: None,
            _dir: None,
        }
    }

    /// Wait until pen holds a listening socket on its address and handles SIGTERM and SIGINT
    /// (so that stopping it is graceful). Err(exit status) if it exited (None: it neither exited
    /// nor got ready in time; it has been killed).
    fn wait_listening(&mut self) -> Result<(), Option<ExitStatus>> {
        let pid = self.pid();
        let addr = self.addr.clone();
        let outcome = poll_until(START_TIMEOUT, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(Err(Some(status)));
            }
            let listening = match &addr {
                PenAddr::Tcp(sa) => tcp_listen_inodes(pid, sa.port()),
                PenAddr::Unix(path) => unix_listen_inodes(path),
            };
            let mine = socket_inodes(pid);
            let handlers = catches_signal(pid, SIGTERM) && catches_signal(pid, SIGINT);
            (handlers && listening.iter().any(|i| mine.contains(i))).then_some(Ok(()))
        });
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(status)) => {
                self.exited = status;
                Err(status)
            }
            None => {
                let _ = self.child.kill();
                self.exited = self.child.wait().ok();
                Err(None)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The TCP address pen listens on.
    pub fn tcp(&self) -> SocketAddr {
        match &self.addr {
            PenAddr::Tcp(sa) => *sa,
            PenAddr::Unix(p) => panic!("pen listens on {}", p.display()),
        }
    }

    pub fn port(&self) -> u16 {
        self.tcp().port()
    }

    /// A new client connection (any source address).
    pub fn connect(&self) -> Stream {
        match &self.addr {
            PenAddr::Tcp(sa) => Stream::Tcp(connect(*sa).expect("connect to pen")),
            PenAddr::Unix(p) => {
                let s = UnixStream::connect(p).expect("connect to pen");
                let s = Stream::Unix(s);
                s.set_timeouts(Some(IO_TIMEOUT));
                s
            }
        }
    }

    /// A new TCP client connection from 127.0.0.N.
    pub fn connect_from(&self, n: u8) -> TcpStream {
        connect_from(loopback(n), 0, self.tcp()).expect("connect to pen")
    }

    /// Connect from 127.0.0.N, ask the backend's name, and close.
    pub fn ask_from(&self, n: u8) -> String {
        self.ask_from_addr(loopback(n), 0)
    }

    /// Connect from `ip:port` (port 0: any), ask the backend's name, and close.
    pub fn ask_from_addr(&self, ip: Ipv4Addr, port: u16) -> String {
        let mut s = connect_from(ip, port, self.tcp())
            .unwrap_or_else(|e| panic!("connect from {ip}:{port}: {e}"));
        let name = ask(&mut s).unwrap_or_else(|e| {
            panic!(
                "client {ip}:{port}: no answer: {e}; pen stderr:\n{}",
                self.stderr_text()
            )
        });
        let _ = s.shutdown(Shutdown::Write);
        name
    }

    /// Connect from 127.0.0.N, ask the backend's name, and keep the connection open.
    pub fn hold_from(&self, n: u8) -> (String, TcpStream) {
        self.hold_from_addr(loopback(n))
    }

    /// Connect from `ip`, ask the backend's name, and keep the connection open.
    pub fn hold_from_addr(&self, ip: Ipv4Addr) -> (String, TcpStream) {
        let mut s = connect_from(ip, 0, self.tcp()).expect("connect to pen");
        let name = ask(&mut s).unwrap_or_else(|e| {
            panic!(
                "client {ip}: no answer: {e}; pen stderr:\n{}",
                self.stderr_text()
            )
        });
        (name, s)
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Still running?
    pub fn is_alive(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    #[track_caller]
    pub fn assert_alive(&mut self) {
        let alive = self.is_alive();
        assert!(
            alive,
            "pen exited ({:?}); stderr:\n{}",
            self.exited,
            self.stderr_text()
        );
    }

    pub fn signal(&self, sig: &str) {
        if self.exited.is_none() {
            send_signal(self.pid(), sig);
        }
    }

    /// Wait for pen to exit by itself, for at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_child(&mut self.child, timeout);
        }
        self.exited
    }

    /// SIGTERM, then check pen exits 0 within `timeout`, without a panic on stderr. The test's
    /// connections must be closed first (pen waits for open ones).
    #[track_caller]
    pub fn finish_within(mut self, timeout: Duration) {
        self.signal("TERM");
        let status = self.wait_exit(timeout);
        let stderr = self.stderr_text();
        assert!(
            status.is_some_and(|s| s.success()),
            "pen did not exit 0 within {timeout:?} of SIGTERM: {status:?}; stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "pen panicked; stderr:\n{stderr}"
        );
    }

    /// `finish_within` 5 s.
    #[track_caller]
    pub fn finish(self) {
        self.finish_within(Duration::from_secs(5));
    }
}

impl Drop for Pen {
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        send_signal(self.pid(), "TERM");
        if wait_child(&mut self.child, Duration::from_secs(3)).is_none() {
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, Duration::from_secs(5));
        }
    }
}
