//! The balancer's settings: what changes how servers are chosen, and what a connection reads
//! of them when it starts (`ConnOptions`), kept for its life.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::AclId;

/// The settings that change how servers are chosen, and the ones the relay reads when a
/// connection starts. All of them can change at run time; open connections keep what they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `-b`: how long a server that failed a connect is skipped. Zero disables blacklisting.
    pub blacklist_time: Duration,
    /// `-T`: how long a client is remembered. Zero means forever.
    pub tracking: Duration,
    /// `-r`: ignore the client table when choosing.
    pub roundrobin: bool,
    /// `-s`: never fail over.
    pub stubborn: bool,
    /// `-h`
    pub hash: bool,
    /// `-W`
    pub weight: bool,
    /// `prio`
    pub prio: bool,
    /// `-t`: upstream connect timeout.
    pub connect_timeout: Duration,
    /// `idle_timeout`: close connections with no traffic for this long. Zero: never.
    pub idle_timeout: Duration,
    pub fastclose: FastClose,
    /// `tcp_nodelay`: TCP_NODELAY on client and upstream sockets. On by default (pen: off), as
    /// in HAProxy and nginx: with Nagle's algorithm the tail of a response can wait for a
    /// delayed ACK, tens of milliseconds per request.
    pub tcp_nodelay: bool,
    /// `keepalive`: SO_KEEPALIVE on upstream sockets.
    pub keepalive: bool,
    /// `client_acl`: the list new clients are checked against.
    pub client_acl: AclId,
    /// `control_acl`: the list control connections are checked against.
    pub control_acl: AclId,
    /// `-a` / `ascii`: traffic dumps (debug level 3) as text rather than hex.
    pub ascii: bool,
    /// `dummy`: answer every client with pen's canned HTTP reply, contacting no server.
    pub dummy: bool,
    /// `-H` / `http`: X-Forwarded-For insertion.
    pub http: bool,
    /// `transparent`: upstream connections are made from the client's own address
    /// (IP_TRANSPARENT), so servers see the client. Needs CAP_NET_ADMIN and routing that
    /// brings the servers' replies back through pen.
    pub transparent: bool,
    /// `source ADDR`: upstream connections are made from this address (port chosen by the
    /// kernel). Takes precedence over `transparent`, as in pen.
    pub source: Option<IpAddr>,
    /// `dsr_if IFACE`: direct server return on this interface instead of relaying (read at
    /// start-up only).
    pub dsr_if: Option<String>,
    /// `-w` / `web_stats`: where SIGUSR1 and `status` write the HTML status page. An `Arc`, so
    /// that a copy of the settings costs no allocation.
    pub web_stats: Option<Arc<Path>>,
    /// What `-H` does with a client's own X-Forwarded-For and X-Forwarded-Proto.
    pub xff: XffMode,
    /// `client_conn_max N`: at most N open connections (UDP: sessions) per client address; a
    /// client at its limit has its new ones closed at once. 0: no limit (pen has none).
    pub client_conn_max: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            blacklist_time: Duration::from_secs(30),
            tracking: Duration::ZERO,
            roundrobin: false,
            stubborn: false,
            hash: false,
            weight: false,
            prio: false,
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::ZERO,
            fastclose: FastClose::Off,
            tcp_nodelay: true,
            keepalive: false,
            client_acl: AclId::default(),
            control_acl: AclId::default(),
            ascii: false,
            dummy: false,
            http: false,
            transparent: false,
            source: None,
            client_conn_max: 0,
            dsr_if: None,
            web_stats: None,
            xff: XffMode::Append,
        }
    }
}

/// What one connection reads of the settings after its admission, taken then and kept for its
/// life (the settings may change meanwhile): its connects, its relay, `dummy`'s wait. A
/// connection keeps this, not the whole `Settings` (a third of its size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnOptions {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub fastclose: FastClose,
    pub tcp_nodelay: bool,
    pub keepalive: bool,
    pub http: bool,
    pub xff: XffMode,
    pub transparent: bool,
    pub source: Option<IpAddr>,
}

impl Settings {
    /// The part of the settings a new connection keeps.
    pub fn conn_options(&self) -> ConnOptions {
        ConnOptions {
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            fastclose: self.fastclose,
            tcp_nodelay: self.tcp_nodelay,
            keepalive: self.keepalive,
            http: self.http,
            xff: self.xff,
            transparent: self.transparent,
            source: self.source,
        }
    }
}

/// `tcp_fastclose`: close the whole connection as soon as one side has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FastClose {
    #[default]
    Off,
    /// When the server has sent EOF and everything it sent was delivered.
    Up,
    /// When the client has sent EOF and everything it sent was delivered.
    Down,
    Both,
}

/// How `-H` treats the forwarding headers a client sent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XffMode {
    /// The client's address is appended to its own X-Forwarded-For (`given, client`), and its
    /// X-Forwarded-Proto is replaced: a client cannot pass itself off as another address.
    #[default]
    Append,
    /// pen 0.34.1: a header the client sent is kept as it is and not added. Only safe when
    /// every client is trusted.
    Keep,
}
