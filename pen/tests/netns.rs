//! Transparent proxying and source addresses on a real network: network namespaces for a
//! client, pen and a server, joined by veth pairs. Needs root (CI runs as root).
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
//! pen's transparent socket instead of being forwarded. pen's data path runs in-process, in
//! the pen namespace (the `source` and `transparent` commands reach the binary with the
//! control port).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use pen::addr::{self, ListenAddr};
use pen::balancer::{Balancer, Server, ServerId, Settings};
use pen::net::BoundListener;
use pen::proxy::{self, Limits, Shared};
use support::netns::{veth, Netns, NsTask};
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

/// pen's data path in `ns`, listening on `listen` (port 0), balancing over `servers`.
fn pen_in(
    ns: &Netns,
    listen: SocketAddr,
    servers: &[SocketAddr],
    settings: Settings,
) -> (SocketAddr, NsTask) {
    let (tx, rx) = mpsc::channel();
    let specs: Vec<_> = servers
        .iter()
        .map(|s| addr::parse_server(&format_server(*s), None).expect("server spec"))
        .collect();
    let task = ns.spawn(move || async move {
        let mut balancer = Balancer::new(settings, NonZeroUsize::new(64).unwrap());
        for (i, spec) in specs.iter().enumerate() {
            balancer.replace_server(ServerId(i), Server::from_spec(spec));
        }
        let bound = BoundListener::bind(&ListenAddr::Tcp(listen), 64).expect("bind pen");
        tx.send(bound.local_addr().unwrap()).unwrap();
        let limits = Limits {
            slots: Arc::new(tokio::sync::Semaphore::new(64)),
            multi_accept: 16,
        };
        let listener = bound.register().expect("register");
        proxy::accept_loop(listener, Shared::new(balancer), limits, None).await;
    });
    (rx.recv_timeout(WAIT).expect("pen address"), task)
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
    let listen4: SocketAddr = "10.71.1.1:0".parse().unwrap();
    let listen6: SocketAddr = "[fd71:1::1]:0".parse().unwrap();

    // Plain: the server sees pen.
    let (pen, _p) = pen_in(&net.pen, listen4, &[server4], Settings::default());
    assert_eq!(ask_from(&net.client, pen), "peer=10.71.2.1");

    // transparent, IPv4 and IPv6: the server sees the client.
    let transparent = Settings {
        transparent: true,
        ..Settings::default()
    };
    let (pen, _p) = pen_in(&net.pen, listen4, &[server4], transparent.clone());
    assert_eq!(ask_from(&net.client, pen), "peer=10.71.1.2");
    let (pen6, _p6) = pen_in(&net.pen, listen6, &[server6], transparent.clone());
    assert_eq!(ask_from(&net.client, pen6), "peer=fd71:1::2");

    // An IPv6 client to an IPv4 server cannot be transparent: pen connects from its own address.
    let (pen_mixed, _pm) = pen_in(&net.pen, listen6, &[server4], transparent.clone());
    assert_eq!(ask_from(&net.client, pen_mixed), "peer=10.71.2.1");

    // source wins over transparent.
    let both = Settings {
        source: Some("10.71.2.3".parse().unwrap()),
        ..transparent
    };
    let (pen, _p) = pen_in(&net.pen, listen4, &[server4], both);
    assert_eq!(ask_from(&net.client, pen), "peer=10.71.2.3");
}
