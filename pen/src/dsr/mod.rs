//! Direct server return (`dsr_if IFACE`, reference §7.2): pen does not relay connections at
//! all. It answers ARP for the virtual address (the listen address) with its own MAC, so
//! clients send their frames to pen; it forwards each frame for the virtual address to the
//! chosen server by rewriting the destination MAC; and the servers, which carry the virtual
//! address on a non-ARPing interface, answer the clients directly. Optionally it answers for
//! a tarpit: SYNs to addresses the tarpit ACL matches get a forged SYN+ACK and nothing more.
//!
//! One thread owns a raw `AF_PACKET` socket on the interface (through `pnet_datalink`, so
//! this crate stays free of `unsafe`). Decisions are in `engine` (pure, time passed in); the
//! server list is read from the balancer every 100 ms, so blacklisting, weights and server
//! changes made through the control commands apply to new flows at once.

mod engine;
mod frame;

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender};
use tracing::{info, warn};

pub use engine::{Counts, ServerView};

use crate::addr::Backend;
use crate::balancer::Balancer;
use crate::shared::{RateLimit, Shared};

/// The tarpit ACL: does this address belong to the tarpit?
pub type Tarpit = Arc<dyn Fn(Ipv4Addr) -> bool + Send + Sync>;

/// What DSR needs to start.
#[derive(Clone)]
pub struct DsrConfig {
    /// `dsr_if`: the Ethernet interface clients and servers share.
    pub interface: String,
    /// The virtual address (the listen address).
    pub vip: Ipv4Addr,
    /// The balanced port; None: every port.
    pub port: Option<u16>,
    /// `-U`: forward UDP as well as TCP.
    pub udp: bool,
    /// `tarpit_acl`.
    pub tarpit: Option<Tarpit>,
}

#[derive(Debug, thiserror::Error)]
pub enum DsrError {
    #[error("dsr_if {0}: no such interface")]
    NoInterface(String),
    #[error("dsr_if {0}: not an Ethernet interface (it has no MAC address)")]
    NotEthernet(String),
    #[error("dsr_if {interface}: can't open a raw socket on it (direct server return needs root or CAP_NET_RAW): {error}")]
    Open { interface: String, error: io::Error },
    #[error("direct server return needs an IPv4 listen address (the virtual address), not {0}")]
    NotIpv4(String),
}

/// Live counters, readable while DSR runs.
#[derive(Debug, Default)]
pub struct DsrStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub arp_replies: AtomicU64,
    pub tarpitted: AtomicU64,
    pub from_vip: AtomicU64,
    /// Servers whose MAC address is known.
    pub known_servers: AtomicU64,
}

impl DsrStats {
    fn store(&self, c: Counts, known: usize) {
        self.forwarded.store(c.forwarded, Ordering::Relaxed);
        self.dropped.store(c.dropped, Ordering::Relaxed);
        self.arp_replies.store(c.arp_replies, Ordering::Relaxed);
        self.tarpitted.store(c.tarpitted, Ordering::Relaxed);
        self.from_vip.store(c.from_vip, Ordering::Relaxed);
        self.known_servers.store(known as u64, Ordering::Relaxed);
    }
}

/// Direct server return, running on its own thread until dropped.
pub struct Dsr {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<DsrStats>,
}

/// How long a read waits before the thread looks at the clock, the balancer and `stop`.
const TICK: Duration = Duration::from_millis(100);

impl Dsr {
    /// Open the interface (in the calling thread's network namespace) and start forwarding.
    pub fn start(config: DsrConfig, shared: Arc<Shared>) -> Result<Dsr, DsrError> {
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == config.interface)
            .ok_or_else(|| DsrError::NoInterface(config.interface.clone()))?;
        let mac = iface
            .mac
            .filter(|m| !m.is_zero())
            .ok_or_else(|| DsrError::NotEthernet(config.interface.clone()))?
            .octets();
        let settings = Config {
            // Big enough for any frame the interface can hand over (GRO can merge segments).
            read_buffer_size: 65536 + 64,
            write_buffer_size: 65536 + 64,
            read_timeout: Some(TICK),
            write_timeout: Some(Duration::from_secs(1)),
            promiscuous: false,
            ..Config::default()
        };
        let open_err = |error| DsrError::Open {
            interface: config.interface.clone(),
            error,
        };
        let (tx, rx) = match pnet_datalink::channel(&iface, settings).map_err(open_err)? {
            Channel::Ethernet(tx, rx) => (tx, rx),
            _ => return Err(open_err(io::Error::other("not an Ethernet channel"))),
        };
        info!(
            "direct server return on {} ({}) for {}{}",
            config.interface,
            iface.mac.map(|m| m.to_string()).unwrap_or_default(),
            config.vip,
            config.port.map(|p| format!(":{p}")).unwrap_or_default()
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(DsrStats::default());
        let engine = engine::Engine::new(mac, config.vip, config.port, config.udp);
        let worker = Worker {
            engine,
            tx,
            rx,
            shared,
            tarpit: config.tarpit,
            stop: stop.clone(),
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("pen-dsr".into())
            .spawn(move || worker.run())
            .map_err(open_err)?;
        Ok(Dsr {
            stop,
            thread: Some(thread),
            stats,
        })
    }
}

impl Drop for Dsr {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The thread wakes at least every TICK.
            let _ = t.join();
        }
    }
}

/// The usable servers as DSR sees them: IPv4 TCP servers, with weight and availability.
pub fn server_views(b: &Balancer, now: Instant) -> Vec<ServerView> {
    b.servers()
        .iter()
        .filter_map(|s| match &s.backend {
            Some(Backend::Tcp(sa)) => match sa.ip() {
                IpAddr::V4(ip) => Some(ServerView {
                    ip,
                    port: sa.port(),
                    weight: s.weight,
                    available: !s.is_blacklisted(now),
                }),
                IpAddr::V6(_) => None,
            },
            _ => None,
        })
        .collect()
}

struct Worker {
    engine: engine::Engine,
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
    shared: Arc<Shared>,
    tarpit: Option<Tarpit>,
    stop: Arc<AtomicBool>,
    stats: Arc<DsrStats>,
}

static SEND_FAILURES: RateLimit = RateLimit::new();
static READ_FAILURES: RateLimit = RateLimit::new();

impl Worker {
    fn run(mut self) {
        let no_tarpit = |_: Ipv4Addr| false;
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut last_refresh: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if last_refresh.is_none_or(|t| now.saturating_duration_since(t) >= TICK) {
                last_refresh = Some(now);
                let (views, per_connection) = self
                    .shared
                    .with(|b| (server_views(b, now), b.settings.roundrobin));
                self.engine.set_servers(views, per_connection);
                out.extend(self.engine.arp_due(now));
            }
            match self.rx.next() {
                Ok(data) => {
                    let tarpit: &dyn Fn(Ipv4Addr) -> bool = match &self.tarpit {
                        Some(t) => t.as_ref(),
                        None => &no_tarpit,
                    };
                    self.engine.on_frame(data, now, tarpit, &mut out);
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => {
                    if READ_FAILURES.allow(now) {
                        warn!("direct server return: reading frames: {e}");
                    }
                    // Do not spin on a persistent error.
                    std::thread::sleep(TICK);
                }
            }
            for frame in out.drain(..) {
                if let Some(Err(e)) = self.tx.send_to(&frame, None) {
                    if SEND_FAILURES.allow(now) {
                        warn!(
                            "direct server return: sending a {}-byte frame: {e}",
                            frame.len()
                        );
                    }
                }
            }
            self.stats
                .store(self.engine.counts, self.engine.known_servers());
        }
        self.stats
            .store(self.engine.counts, self.engine.known_servers());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::Settings;
    use std::num::NonZeroUsize;

    #[test]
    fn a_missing_interface_is_an_error_naming_it() {
        let shared = Shared::new(Balancer::new(
            Settings::default(),
            NonZeroUsize::new(8).unwrap(),
        ));
        let config = DsrConfig {
            interface: "pen-no-such0".into(),
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port: Some(80),
            udp: false,
            tarpit: None,
        };
        let e = Dsr::start(config, shared).err().expect("no such interface");
        assert_eq!(e.to_string(), "dsr_if pen-no-such0: no such interface");
    }
}
