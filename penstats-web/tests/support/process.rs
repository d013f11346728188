//! The real `penstats-web` binary as a process: run it to completion, or start it as a service
//! and find its address from the line it prints. Every wait is bounded, and a started service
//! is stopped by its PID when its guard is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// No run in these tests comes near this; it keeps a broken test finite.
pub const LIMIT: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_penstats-web")
}

#[derive(Debug)]
pub struct Output {
    /// None if it had to be killed after `LIMIT`.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// Wait for `child` for at most `limit`; kill it if it is still running.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Run penstats-web with `args` to completion (bounded).
pub fn run(args: &[&str]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run penstats-web");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = wait_bounded(&mut child, LIMIT);
    Output {
        status,
        stdout: out.recv_timeout(LIMIT).unwrap_or_default(),
        stderr: err.recv_timeout(LIMIT).unwrap_or_default(),
    }
}

/// A running penstats-web.
pub struct Service {
    child: Option<Child>,
    pub addr: SocketAddr,
    stderr: Option<mpsc::Receiver<String>>,
}

impl Service {
    /// Start it with `args` (which should include `--listen 127.0.0.1:0`) and wait, bounded, for
    /// its "serving http://ADDRESS/" line.
    pub fn start(args: &[&str]) -> Service {
        let mut child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start penstats-web");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = drain(child.stderr.take().expect("stderr"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep reading so the service never blocks on a full pipe.
            for _ in lines {}
        });
        let mut service = Service {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            stderr: Some(stderr),
        };
        let line = match rx.recv_timeout(LIMIT) {
            Ok(line) => line,
            Err(_) => {
                let out = service.stop();
                panic!("penstats-web printed no address: {out:?}");
            }
        };
        let addr = line
            .strip_prefix("penstats-web: serving http://")
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        service.addr = addr;
        service
    }

    /// Send SIGTERM and wait (bounded) for the exit.
    pub fn stop(&mut self) -> Output {
        let Some(mut child) = self.child.take() else {
            panic!("stopped twice");
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = wait_bounded(&mut child, LIMIT);
        Output {
            status,
            stdout: String::new(),
            stderr: self
                .stderr
                .take()
                .and_then(|rx| rx.recv_timeout(LIMIT).ok())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET `path` over plain HTTP/1.0 (the server closes after the reply): the status code, the
/// head and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, LIMIT).expect("connect to penstats-web");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("the reply");
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}
