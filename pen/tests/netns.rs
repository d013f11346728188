//! Transparent proxying, source addresses and direct server return on a real network: network
//! namespaces for clients, pen and servers, joined by veth pairs. Needs root (CI runs as root).
//!
//! Transparent proxying and source addresses:
//!
//! ```text
//!   client ns            pen ns                          server ns
//!   c0 10.71.1.2  ---  p0 10.71.1.1   p1 10.71.2.1  ---  s0 10.71.2.2
//!      fd71:1::2           fd71:1::1     fd71:2::1          fd71:2::2
//! ```
//!
//! The server routes everything through pen (its default route), and pen treats whatever
//! arrives from the server side as local (policy routing: `iif p1 lookup 100`, `local default
//! dev lo table 100`), the usual TPROXY-style setup: replies to the client's address reach
//! pen's transparent socket instead of being forwarded.
//!
//! Direct server return: everyone on one Ethernet segment (a bridge in a namespace of its
//! own); the servers carry the virtual address 10.72.0.100 on `lo` and do not answer ARP for
//! it, so only pen does.
//!
//! ```text
//!   clients 10.72.1.1..40   pen 10.72.0.1   s1 10.72.0.11   s2 .12   s3 .13   (/16, bridge)
//! ```
//!
//! The transparent and source scenarios run the pen binary in the pen namespace (`ip netns
//! exec`), configured with `-o` and, in one test, the control port; most DSR scenarios run DSR
//! in-process there, with their settings given directly.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use pen::addr;
use pen::balancer::{Balancer, Server, ServerId, Settings, Target};
use pen::dsr::{Dsr, DsrConfig, DsrStats};
use pen::shared::Shared;
use support::netns::{veth, Netns, NsTask};
use support::{Listen, Pen, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// The three namespaces and their addresses.
struct Net {
    client: Netns,
    pen: Netns,
    server: Netns,
}

impl Net {
    fn new(tag: &str) -> Net {
        let net = Net {
            client: Netns::new(&format!("{tag}c")),
            pen: Netns::new(&format!("{tag}p")),
            server: Netns::new(&format!("{tag}s")),
        };
        veth(&net.client, "c0", &net.pen, "p0");
        veth(&net.pen, "p1", &net.server, "s0");
        net.client.ip("addr add 10.71.1.2/24 dev c0");
        net.client.ip("addr add fd71:1::2/64 dev c0 nodad");
        net.pen.ip("addr add 10.71.1.1/24 dev p0");
        net.pen.ip("addr add fd71:1::1/64 dev p0 nodad");
        net.pen.ip("addr add 10.71.2.1/24 dev p1");
        net.pen.ip("addr add 10.71.2.3/24 dev p1");
        net.pen.ip("addr add fd71:2::1/64 dev p1 nodad");
        net.server.ip("addr add 10.71.2.2/24 dev s0");
        net.server.ip("addr add fd71:2::2/64 dev s0 nodad");
        net.client.ip("route add default via 10.71.1.1");
        net.client.ip("-6 route add default via fd71:1::1");
        net.server.ip("route add default via 10.71.2.1");
        net.server.ip("-6 route add default via fd71:2::1");
        net.pen.ip("rule add iif p1 lookup 100");
        net.pen.ip("route add local default dev lo table 100");
        net.pen.ip("-6 rule add iif p1 lookup 100");
        net.pen.ip("-6 route add local default dev lo table 100");
        net
    }
}

/// A server in `ns` on `ip`: for each connection, reads a byte and answers `peer=ADDRESS`.
fn peer_reporter(ns: &Netns, ip: IpAddr) -> (SocketAddr, NsTask) {
    let (tx, rx) = mpsc::channel();
    let task = ns.spawn(move || async move {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("bind server");
        tx.send(listener.local_addr().unwrap()).unwrap();
        loop {
            let Ok((mut s, peer)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if s.read(&mut b).await.is_ok() {
                    let reply = format!("peer={}\n", peer.ip().to_canonical());
                    let _ = s.write_all(reply.as_bytes()).await;
                }
            });
        }
    });
    (rx.recv_timeout(WAIT).expect("server address"), task)
}

/// The pen binary in `ns` (`ip netns exec`), listening on `listen` (a port of its choosing),
/// balancing over `servers`, with `commands` given as `-o`. Stopped by PID when dropped.
fn pen_in(
    ns: &Netns,
    listen: IpAddr,
    servers: &[SocketAddr],
    commands: &[&str],
) -> (SocketAddr, Pen) {
    let family = if listen.is_ipv6() {
        Listen::V6
    } else {
        Listen::V4
    };
    let pen = Pen::spawn(family, &["ip", "netns", "exec", &ns.name], |l| {
        let port: u16 = l
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let mut args = vec!["-f".to_string()];
        for command in commands {
            args.extend(["-o".to_string(), command.to_string()]);
        }
        args.push(SocketAddr::new(listen, port).to_string());
        args.extend(servers.iter().map(|s| format_server(*s)));
        args
    });
    (SocketAddr::new(listen, pen.port()), pen)
}

fn format_server(s: SocketAddr) -> String {
    match s {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// From the client namespace: connect to pen at `to`, send a byte, return the answer line.
fn ask_from(ns: &Netns, to: SocketAddr) -> String {
    let (tx, rx) = mpsc::channel();
    let _task = ns.spawn(move || async move {
        let answer = async {
            let mut s = tokio::net::TcpStream::connect(to).await?;
            s.write_all(b"?").await?;
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).await? == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&line).into_owned())
        };
        let result = tokio::time::timeout(WAIT, answer).await;
        let _ = tx.send(match result {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "error: timed out".to_string(),
        });
    });
    rx.recv_timeout(WAIT + Duration::from_secs(5))
        .unwrap_or_else(|_| "error: no answer".to_string())
}

#[test]
fn transparent_makes_servers_see_the_client_ipv4_and_ipv6_and_source_wins() {
    let net = Net::new("tp");
    let (server4, _s4) = peer_reporter(&net.server, "10.71.2.2".parse().unwrap());
    let (server6, _s6) = peer_reporter(&net.server, "fd71:2::2".parse().unwrap());
    let listen4: IpAddr = "10.71.1.1".parse().unwrap();
    let listen6: IpAddr = "fd71:1::1".parse().unwrap();

    // Plain: the server sees pen.
    let (pen, _p) = pen_in(&net.pen, listen4, &[server4], &[]);
    assert_eq!(ask_from(&net.client, pen), "peer=10.71.2.1");

    // transparent, IPv4 and IPv6: the server sees the client.
    let (pen, _p) = pen_in(&net.pen, listen4, &[server4], &["transparent"]);
    assert_eq!(ask_from(&net.client, pen), "peer=10.71.1.2");
    let (pen6, _p6) = pen_in(&net.pen, listen6, &[server6], &["transparent"]);
    assert_eq!(ask_from(&net.client, pen6), "peer=fd71:1::2");

    // An IPv6 client to an IPv4 server cannot be transparent: pen connects from its own address.
    let (pen_mixed, _pm) = pen_in(&net.pen, listen6, &[server4], &["transparent"]);
    assert_eq!(ask_from(&net.client, pen_mixed), "peer=10.71.2.1");

    // source wins over transparent.
    let both = ["transparent", "source 10.71.2.3"];
    let (pen, _p) = pen_in(&net.pen, listen4, &[server4], &both);
    assert_eq!(ask_from(&net.client, pen), "peer=10.71.2.3");
}

// ---- direct server return ------------------------------------------------------------------

const VIP: Ipv4Addr = Ipv4Addr::new(10, 72, 0, 100);
const TRAP: Ipv4Addr = Ipv4Addr::new(10, 72, 0, 66);
const CLIENTS: u8 = 40;

/// One Ethernet segment: a bridge in its own namespace, and a client, pen and three servers
/// plugged into it.
struct Segment {
    _switch: Netns,
    client: Netns,
    pen: Netns,
    servers: Vec<Netns>,
}

impl Segment {
    fn new() -> Segment {
        let switch = Netns::new("dsw");
        switch.ip("link add br0 type bridge");
        switch.ip("link set br0 up");
        let plug = |ns: &Netns, inside: &str, port: &str| {
            veth(ns, inside, &switch, port);
            switch.ip(&format!("link set {port} master br0"));
        };
        let client = Netns::new("dcl");
        plug(&client, "c0", "swc");
        for n in 0..CLIENTS {
            client.ip(&format!("addr add 10.72.1.{}/16 dev c0", 1 + n));
        }
        let pen = Netns::new("dpen");
        plug(&pen, "p0", "swp");
        pen.ip("addr add 10.72.0.1/16 dev p0");
        let servers: Vec<Netns> = (1..=3)
            .map(|i| {
                let s = Netns::new(&format!("ds{i}"));
                plug(&s, "s0", &format!("sw{i}"));
                // The virtual address is theirs too, on lo, and never announced.
                s.sh("echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore && echo 2 > /proc/sys/net/ipv4/conf/all/arp_announce");
                s.ip(&format!("addr add 10.72.0.{}/16 dev s0", 10 + i));
                s.ip(&format!("addr add {VIP}/32 dev lo"));
                s
            })
            .collect();
        Segment {
            _switch: switch,
            client,
            pen,
            servers,
        }
    }
}

/// A server in `ns` on `port` (0: any), answering each connection with `name`.
fn named_server(ns: &Netns, port: u16, name: &'static str) -> (u16, NsTask) {
    let (tx, rx) = mpsc::channel();
    let task = ns.spawn(move || async move {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .await
            .expect("bind server");
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if s.read(&mut b).await.is_ok() {
                    let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                }
            });
        }
    });
    (rx.recv_timeout(WAIT).expect("server port"), task)
}

/// From the client namespace, one connection from each client address to `to`: the answers.
fn ask_all(ns: &Netns, to: SocketAddr) -> HashMap<Ipv4Addr, String> {
    let (tx, rx) = mpsc::channel();
    let _task = ns.spawn(move || async move {
        let mut answers = HashMap::new();
        for n in 0..CLIENTS {
            let src = Ipv4Addr::new(10, 72, 1, 1 + n);
            let answer = async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(src.into(), 0))?;
                let mut s = socket.connect(to).await?;
                s.write_all(b"?").await?;
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).await? == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                Ok::<_, std::io::Error>(String::from_utf8_lossy(&line).into_owned())
            };
            let line = match tokio::time::timeout(WAIT, answer).await {
                Ok(Ok(line)) => line,
                Ok(Err(e)) => format!("error: {e}"),
                Err(_) => "error: timed out".to_string(),
            };
            answers.insert(src, line);
        }
        let _ = tx.send(answers);
    });
    rx.recv_timeout(WAIT * u32::from(CLIENTS) + WAIT)
        .expect("the clients' answers")
}

/// How many clients each answer got.
fn tally(answers: &HashMap<Ipv4Addr, String>) -> HashMap<String, usize> {
    let mut t = HashMap::new();
    for a in answers.values() {
        *t.entry(a.clone()).or_insert(0) += 1;
    }
    t
}

#[test]
fn direct_server_return_spreads_clients_follows_the_balancer_and_replies_bypass_pen() {
    let net = Segment::new();
    let (port, _s1) = named_server(&net.servers[0], 0, "s1");
    let (_, _s2) = named_server(&net.servers[1], port, "s2");
    let (_, _s3) = named_server(&net.servers[2], port, "s3");
    let server = |i: u8| format!("10.72.0.{}:{port}", 10 + i);

    let mut balancer = Balancer::new(Settings::default(), NonZeroUsize::new(64).unwrap());
    for (slot, i) in [1u8, 2].iter().enumerate() {
        let spec = addr::parse_server(&server(*i), None).unwrap();
        balancer.replace_server(ServerId(slot), Server::from_spec(&spec));
    }
    let shared = Shared::new(balancer);
    let (tx, rx) = mpsc::channel::<Arc<DsrStats>>();
    let config = DsrConfig {
        interface: "p0".into(),
        vip: VIP,
        port: Some(port),
        udp: false,
        tarpit: Some(Arc::new(|ip| ip == TRAP)),
    };
    let pen_shared = shared.clone();
    let _pen = net.pen.spawn(move || async move {
        let dsr = Dsr::start(config, pen_shared).expect("start DSR on p0");
        tx.send(dsr.stats.clone()).unwrap();
        std::future::pending::<()>().await;
        drop(dsr);
    });
    let stats = rx.recv_timeout(WAIT).expect("DSR started");
    support::wait_until("pen to learn both servers' MACs", WAIT, || {
        (stats.known_servers.load(Ordering::Relaxed) == 2).then_some(())
    });

    // Every client is served, by both servers between them, and no reply came through pen.
    let vip = SocketAddr::new(VIP.into(), port);
    let first = ask_all(&net.client, vip);
    let t = tally(&first);
    assert_eq!(
        t.get("s1").copied().unwrap_or(0) + t.get("s2").copied().unwrap_or(0),
        CLIENTS as usize,
        "{t:?}"
    );
    assert!(
        t.get("s1") > Some(&5) && t.get("s2") > Some(&5),
        "both servers get clients: {t:?}"
    );
    assert!(stats.forwarded.load(Ordering::Relaxed) > 0);
    assert!(
        stats.arp_replies.load(Ordering::Relaxed) > 0,
        "pen answers ARP for the VIP"
    );
    assert_eq!(
        stats.from_vip.load(Ordering::Relaxed),
        0,
        "replies passed through pen"
    );
    // The same client goes to the same server.
    assert_eq!(ask_all(&net.client, vip), first);

    // Blacklisting s1 sends everyone to s2.
    shared.with(|b| {
        b.blacklist(
            Target::Server(ServerId(0)),
            Instant::now(),
            Duration::from_secs(600),
        )
    });
    let moved = support::wait_until("DSR to follow the blacklist", WAIT, || {
        let answers = ask_all(&net.client, vip);
        (tally(&answers).get("s2") == Some(&(CLIENTS as usize))).then_some(answers)
    });
    assert_eq!(tally(&moved).len(), 1);

    // Lifting it and replacing s2 by s3: s1 and s3 share the clients, s2 has none.
    shared.with(|b| {
        b.blacklist(Target::Server(ServerId(0)), Instant::now(), Duration::ZERO);
        let spec = addr::parse_server(&server(3), None).unwrap();
        b.replace_server(ServerId(1), Server::from_spec(&spec));
    });
    let changed = support::wait_until("DSR to follow the server change", WAIT * 2, || {
        let t = tally(&ask_all(&net.client, vip));
        (t.contains_key("s1") && t.contains_key("s3") && t.len() == 2).then_some(t)
    });
    assert_eq!(changed.values().sum::<usize>(), CLIENTS as usize);
    assert_eq!(stats.from_vip.load(Ordering::Relaxed), 0);

    // The tarpit: a connect to a trapped address completes (a forged SYN+ACK) and nothing
    // answers after that.
    let (tx, rx) = mpsc::channel();
    let _trap = net.client.spawn(move || async move {
        let connected =
            tokio::time::timeout(WAIT, tokio::net::TcpStream::connect((TRAP, 22))).await;
        let _ = tx.send(matches!(connected, Ok(Ok(_))));
    });
    assert!(
        rx.recv_timeout(WAIT * 2).unwrap(),
        "the tarpit did not answer the SYN"
    );
    // The DSR thread publishes its counters as it goes: wait for them, bounded.
    support::wait_until("the tarpit count", WAIT, || {
        (stats.tarpitted.load(Ordering::Relaxed) >= 1).then_some(())
    });
}

/// The same with the real binary in the pen namespace: `-o transparent` on the command line,
/// then `no transparent` and `source` over a control port on a Unix socket (the control port
/// a test in the root namespace can reach).
#[test]
fn the_binary_takes_transparent_and_source_from_o_and_the_control_port() {
    let net = Net::new("tb");
    let (server4, _s4) = peer_reporter(&net.server, "10.71.2.2".parse().unwrap());
    let dir = TempDir::new("tb");
    let ctl = dir.join("ctl.sock");
    let ctl_arg = ctl.display().to_string();
    let ns = net.pen.name.clone();
    let server = server4.to_string();
    let pen = Pen::spawn(Listen::V4, &["ip", "netns", "exec", &ns], |l| {
        let port = l.rsplit(':').next().unwrap_or("0");
        let mut args: Vec<String> = ["-f", "-o", "transparent", "-C", &ctl_arg]
            .map(String::from)
            .to_vec();
        args.extend(support::control::user_args());
        args.push(format!("10.71.1.1:{port}"));
        args.push(server.clone());
        args
    });
    let at: SocketAddr = format!("10.71.1.1:{}", pen.port()).parse().unwrap();
    assert_eq!(
        ask_from(&net.client, at),
        "peer=10.71.1.2",
        "-o transparent"
    );
    let ask_ctl = |cmd: &str| support::control::ctl_unix(&ctl, cmd);
    assert_eq!(ask_ctl("no transparent"), "");
    assert_eq!(
        ask_from(&net.client, at),
        "peer=10.71.2.1",
        "no transparent"
    );
    assert_eq!(ask_ctl("source 10.71.2.3"), "");
    assert_eq!(ask_from(&net.client, at), "peer=10.71.2.3", "source");
    pen.finish();
}

/// `dsr_if` in daemon mode: the parent exits 0 once DSR runs, the pid file names the daemon,
/// and TERM stops it and removes the pid file.
#[test]
fn dsr_as_a_daemon_reports_readiness_and_keeps_a_pid_file() {
    let (a, b) = (Netns::new("dda"), Netns::new("ddb"));
    veth(&a, "d0", &b, "d1");
    a.ip("addr add 10.73.0.1/24 dev d0");
    let dir = TempDir::new("dsrd");
    let pid_file = dir.join("pen.pid");
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &a.name, support::PEN, "-p"])
        .arg(&pid_file)
        .args(["-o", "dsr_if d0", "10.73.0.100:80", "10.73.0.2:80"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run pen");
    assert!(
        status.status.success(),
        "the parent did not exit 0: {status:?}"
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    support::send_signal(pid, "TERM");
    // Gone, or a zombie waiting for a reaper (PID 1 here reaps late).
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    support::wait_until("the daemon to stop", WAIT, || {
        (!pid_file.exists() && !running()).then_some(())
    });
}
