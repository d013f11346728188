//! UDP pieces of the harness: pen started with `-U` (waiting until its UDP socket is bound),
//! UDP backends in threads, and clients bound to chosen sources.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{
    catches_signal, poll_until, socket_inodes, socket_rows, Pen, PenAddr, TempDir, SIGINT, SIGTERM,
};

/// How long a client waits for a reply before calling it lost.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// Where pen's UDP listener goes.
#[derive(Debug, Clone, Copy)]
pub enum UdpListen {
    /// `127.0.0.1:PORT`
    V4,
    /// `[::1]:PORT`
    V6,
    /// `0.0.0.0:PORT`
    AnyV4,
    /// `[::]:PORT` (takes IPv4 clients too)
    AnyV6,
}

impl UdpListen {
    fn ip(self) -> IpAddr {
        match self {
            UdpListen::V4 => Ipv4Addr::LOCALHOST.into(),
            UdpListen::V6 => Ipv6Addr::LOCALHOST.into(),
            UdpListen::AnyV4 => Ipv4Addr::UNSPECIFIED.into(),
            UdpListen::AnyV6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }
}

/// A free UDP port on `ip` (bound to port 0, then released).
pub fn free_udp_port(ip: IpAddr) -> u16 {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind udp port 0")
}

impl Pen {
    /// `WRAPPER... pen -f -U OPTS... LISTEN SERVERS...`, once its UDP socket is bound and it
    /// handles SIGTERM. A port another process took meanwhile is replaced (up to 5 tries).
    pub fn start_udp_with(
        listen: UdpListen,
        wrapper: &[&str],
        opts: &[&str],
        servers: &[String],
    ) -> Pen {
        let dir = TempDir::new("pen-udp");
        let mut last_err = String::new();
        for attempt in 0..5 {
            let port = free_udp_port(listen.ip());
            let addr = SocketAddr::new(listen.ip(), port);
            let listen_arg = match addr {
                SocketAddr::V4(a) => a.to_string(),
                SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            };
            let mut args: Vec<String> = ["-f", "-U"]
                .iter()
                .chain(opts)
                .map(|s| s.to_string())
                .collect();
            args.push(listen_arg.clone());
            args.extend(servers.iter().cloned());
            let mut pen = Pen::launch(
                &dir,
                attempt,
                wrapper,
                &args,
                PenAddr::Tcp(addr),
                listen_arg,
            );
            let pid = pen.pid();
            let ready = poll_until(Duration::from_secs(5), || {
                if let Ok(Some(status)) = pen.child.try_wait() {
                    return Some(Err(status));
                }
                let mine = socket_inodes(pid);
                let want = format!(":{port:04X}");
                let bound = socket_rows(pid, "udp")
                    .iter()
                    .any(|r| r.local.ends_with(&want) && mine.contains(&r.inode));
                let handlers = catches_signal(pid, SIGTERM) && catches_signal(pid, SIGINT);
                (bound && handlers).then_some(Ok(()))
            });
            match ready {
                Some(Ok(())) => {
                    pen._dir = Some(dir);
                    return pen;
                }
                Some(Err(status)) => {
                    pen.exited = Some(status);
                    last_err = format!(
                        "pen -U exited with {status} before binding; stderr:\n{}",
                        pen.stderr_text()
                    );
                    if !pen.stderr_text().contains("in use") {
                        break;
                    }
                }
                None => {
                    last_err = format!(
                        "pen -U did not bind in time; stderr:\n{}",
                        pen.stderr_text()
                    );
                    break;
                }
            }
        }
        panic!("{last_err}");
    }

    /// `pen -f -U OPTS... 127.0.0.1:PORT SERVERS...`
    pub fn start_udp(opts: &[&str], servers: &[String]) -> Pen {
        Pen::start_udp_with(UdpListen::V4, &[], opts, servers)
    }

    /// The address pen's UDP listener is bound to.
    pub fn udp(&self) -> SocketAddr {
        self.tcp()
    }
}

/// A UDP client socket bound to `ip`, port 0.
pub fn udp_client(ip: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind udp client");
    s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
    s
}

/// A UDP client from 127.0.0.N.
pub fn udp_client_from(n: u8) -> UdpSocket {
    udp_client(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
}

/// Send `payload` to `to` and wait for one reply: its bytes and its source.
pub fn udp_ask(s: &UdpSocket, to: SocketAddr, payload: &[u8]) -> io::Result<(Vec<u8>, SocketAddr)> {
    s.send_to(payload, to)?;
    udp_reply(s)
}

/// The next datagram on `s` (REPLY_TIMEOUT at most).
pub fn udp_reply(s: &UdpSocket) -> io::Result<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = s.recv_from(&mut buf)?;
    buf.truncate(n);
    Ok((buf, from))
}

/// What a UDP backend saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub from: SocketAddr,
    pub payload: Vec<u8>,
}

/// How a UDP backend answers each datagram.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// `NAME:` + the payload (all of it).
    Echo,
    /// `Echo`, this many times.
    Times(usize),
    /// `Echo` after this long (in its own thread, so later datagrams are not held up).
    After(Duration),
    /// The whole payload back, unchanged.
    Mirror,
    /// `Echo`, but held until this many datagrams have come, then all sent back to back (so
    /// that pen finds many sessions' replies waiting at once).
    Burst(usize),
}

/// A UDP backend in a thread; stopped (bounded) on drop.
pub struct UdpBackend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpBackend {
    pub fn new(name: &str, answer: Answer) -> UdpBackend {
        UdpBackend::on(IpAddr::V4(Ipv4Addr::LOCALHOST), name, answer)
    }

    pub fn on(ip: IpAddr, name: &str, answer: Answer) -> UdpBackend {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind udp backend");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = socket.local_addr().expect("local addr");
        let (seen, received, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let prefix = format!("{name}:").into_bytes();
        let (seen2, received2, stop2) = (seen.clone(), received.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let socket = Arc::new(socket);
            let mut buf = vec![0u8; 65_536];
            let mut held: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let payload = buf[..n].to_vec();
                received2.fetch_add(1, Ordering::SeqCst);
                seen2.lock().unwrap().push(Seen {
                    from,
                    payload: payload.clone(),
                });
                let reply = match answer {
                    Answer::Mirror => payload,
                    _ => [&prefix[..], &payload].concat(),
                };
                match answer {
                    Answer::Echo | Answer::Mirror => {
                        let _ = socket.send_to(&reply, from);
                    }
                    Answer::Times(k) => {
                        for _ in 0..k {
                            let _ = socket.send_to(&reply, from);
                        }
                    }
                    Answer::Burst(k) => {
                        held.push((reply, from));
                        if held.len() >= k {
                            for (reply, to) in held.drain(..) {
                                let _ = socket.send_to(&reply, to);
                            }
                        }
                    }
                    Answer::After(delay) => {
                        let socket = socket.clone();
                        thread::spawn(move || {
                            thread::sleep(delay);
                            let _ = socket.send_to(&reply, from);
                        });
                    }
                }
            }
        });
        UdpBackend {
            addr,
            seen,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Its address as a pen server spec.
    pub fn spec(&self) -> String {
        match self.addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        }
    }

    /// The distinct pen-side sources it has heard from (one per session).
    pub fn sources(&self) -> HashSet<SocketAddr> {
        self.seen.lock().unwrap().iter().map(|s| s.from).collect()
    }

    /// The source of the datagram that carried `payload` (the last one, if several did).
    pub fn source_of(&self, payload: &[u8]) -> Option<SocketAddr> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.payload == payload)
            .map(|s| s.from)
    }

    /// Stop it now: its port then answers with ICMP port unreachable.
    pub fn kill(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A UDP port with nothing bound to it: datagrams sent there get ICMP port unreachable.
pub fn dead_udp_port() -> SocketAddr {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    s.local_addr().expect("local addr")
}
