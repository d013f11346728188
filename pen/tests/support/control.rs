//! The control port in tests: pen started with `-C` on a free loopback port (and `-u root` when
//! the tests run as root, which pen otherwise refuses), and commands sent over raw sockets.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use super::{connect_from, free_port, poll_until, Listen, Pen, IO_TIMEOUT};

/// `-u root` when running as root: pen refuses a control port to root without `-u`.
pub fn user_args() -> Vec<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    if uid == "0" {
        vec!["-u".into(), "root".into()]
    } else {
        Vec::new()
    }
}

/// A pen with a control port.
pub struct Controlled {
    pub pen: Pen,
    pub control: SocketAddr,
}

impl Controlled {
    /// `pen -f -C 127.0.0.1:PORT [-u root] OPTS... 127.0.0.1:LPORT SERVERS...`, ready to answer.
    pub fn start(opts: &[&str], servers: &[String]) -> Controlled {
        let port = free_port(Ipv4Addr::LOCALHOST.into());
        let control = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let mut all: Vec<String> = vec!["-C".into(), control.to_string()];
        all.extend(user_args());
        all.extend(opts.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let pen = Pen::start_on(Listen::V4, &all, servers);
        let c = Controlled { pen, control };
        c.wait_ready();
        c
    }

    fn wait_ready(&self) {
        let ok = poll_until(Duration::from_secs(5), || {
            TcpStream::connect(self.control).ok().map(|_| ())
        });
        assert!(
            ok.is_some(),
            "control port {} never answered; stderr:\n{}",
            self.control,
            self.pen.stderr_text()
        );
    }

    /// Send one command and return the whole reply.
    pub fn ctl(&self, command: &str) -> String {
        ctl(self.control, command)
    }

    /// The same, from 127.0.0.N.
    pub fn ctl_from(&self, n: u8, command: &str) -> std::io::Result<String> {
        let mut s = connect_from(super::loopback(n), 0, self.control)?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

/// Send `command` and a newline to a control port and read the reply until EOF.
pub fn ctl(addr: SocketAddr, command: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the control port");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(format!("{command}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the reply");
    out
}

/// The same over a Unix control socket (`-C PATH`).
pub fn ctl_unix(path: &std::path::Path, command: &str) -> String {
    let mut s =
        std::os::unix::net::UnixStream::connect(path).expect("connect to the control socket");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(format!("{command}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the reply");
    out
}

impl Controlled {
    /// The balancer's state as the control port's `snapshot` command reports it.
    pub fn snapshot(&self) -> pen::balancer::Snapshot {
        serde_json::from_str(self.ctl("snapshot").trim()).expect("JSON snapshot")
    }
}
