//! Harness pieces for penstats-web tests: our `penstats-web` binary started against a pen's
//! control port on a free loopback port, found from the line it prints, and stopped by PID.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{self, Reply};
use crate::{stop_child, Drain, Output};

/// How long penstats-web may take to print its address.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Our `penstats-web` (`$PENSTATS_WEB_BIN` overrides).
pub fn our_penstats_web() -> PathBuf {
    crate::our_binary("penstats-web", "PENSTATS_WEB_BIN")
}

/// A running penstats-web. Dropping it stops the process.
pub struct Dashboard {
    child: Option<Child>,
    addr: SocketAddr,
    stderr: Drain,
}

impl Dashboard {
    /// Start penstats-web for the control port `pen` (in penctl's notation), listening on a
    /// free loopback port, polling every 0.2 s, with `extra` arguments.
    pub fn start(pen: &str, extra: &[&str]) -> Dashboard {
        let bin = our_penstats_web();
        let mut args = vec!["--pen", pen, "--listen", "127.0.0.1:0", "--interval", "0.2"];
        args.extend(extra);
        let mut child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("can't run {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = Drain::start(child.stderr.take().expect("piped stderr"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(START_TIMEOUT);
        let addr = line.as_deref().ok().and_then(|line| {
            line.strip_prefix("penstats-web: serving http://")?
                .split('/')
                .next()?
                .parse()
                .ok()
        });
        let mut dashboard = Dashboard {
            child: Some(child),
            addr: "127.0.0.1:0".parse().expect("an address"),
            stderr,
        };
        match addr {
            Some(addr) => dashboard.addr = addr,
            None => {
                let out = dashboard.stop();
                panic!("penstats-web {args:?} did not start: first line {line:?}, {out:?}");
            }
        }
        dashboard
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/` and `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path`; panics if penstats-web does not answer.
    pub fn get(&self, path: &str) -> Reply {
        http::get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// GET `path` until `pred` accepts the reply, for at most `limit`; returns that reply, or
    /// panics with the last one.
    pub fn get_until(&self, path: &str, limit: Duration, pred: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = Instant::now() + limit;
        loop {
            let reply = self.get(path);
            if pred(&reply) {
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path}: not as expected after {limit:?}; last reply: {reply:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop it (SIGTERM, then SIGKILL) and return what it printed on stderr.
    pub fn stop(&mut self) -> Output {
        let status = self.child.take().and_then(|mut c| stop_child(&mut c));
        Output {
            status,
            stdout: String::new(),
            stderr: self.stderr.collect(),
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}
