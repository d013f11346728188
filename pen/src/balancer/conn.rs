//! One client connection as the balancer tracks it, and the counters the relay updates live.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{ClientKey, Target};

/// Bytes relayed by one connection, updated by the relay as it goes (one owner writes, the
/// statistics read), so counters are live without taking the balancer lock per chunk. The
/// descriptors and the bytes waiting for a slow reader are what pen's status page shows.
#[derive(Debug)]
pub struct ConnCounters {
    pub to_server: AtomicU64,
    pub to_client: AtomicU64,
    /// The client's socket descriptor (pen's `downfd`); -1 until known.
    client_fd: AtomicI32,
    /// The server's socket descriptor (pen's `upfd`); -1 until connected.
    server_fd: AtomicI32,
    /// Bytes read from the client and not yet taken by the server (pen's `upn`).
    pending_to_server: AtomicU64,
    /// Bytes read from the server and not yet taken by the client (pen's `downn`).
    pending_to_client: AtomicU64,
    /// The shell's kill switch for `close N`; the balancer never touches it.
    pub abort: tokio::sync::Notify,
    /// Set before `abort` when the grace period after TERM is over: the connection ends with a
    /// reset, so neither side can take the cut for a complete transfer.
    pub cut: std::sync::atomic::AtomicBool,
}

impl Default for ConnCounters {
    fn default() -> Self {
        ConnCounters {
            to_server: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            client_fd: AtomicI32::new(-1),
            server_fd: AtomicI32::new(-1),
            abort: tokio::sync::Notify::new(),
            cut: std::sync::atomic::AtomicBool::new(false),
            pending_to_server: AtomicU64::new(0),
            pending_to_client: AtomicU64::new(0),
        }
    }
}

impl ConnCounters {
    /// Record the connection's descriptors (for the status page; -1 for none).
    pub fn set_fds(&self, client: i32, server: i32) {
        self.client_fd.store(client, Ordering::Relaxed);
        self.server_fd.store(server, Ordering::Relaxed);
    }
    pub fn fds(&self) -> (i32, i32) {
        (
            self.client_fd.load(Ordering::Relaxed),
            self.server_fd.load(Ordering::Relaxed),
        )
    }
    /// Record the bytes the relay holds for each side because it is not reading fast enough.
    pub fn set_pending(&self, to_server: usize, to_client: usize) {
        self.pending_to_server
            .store(to_server as u64, Ordering::Relaxed);
        self.pending_to_client
            .store(to_client as u64, Ordering::Relaxed);
    }
    /// (bytes waiting for the server, bytes waiting for the client)
    pub fn pending(&self) -> (u64, u64) {
        (
            self.pending_to_server.load(Ordering::Relaxed),
            self.pending_to_client.load(Ordering::Relaxed),
        )
    }
    pub fn add_to_server(&self, n: usize) {
        self.to_server.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn add_to_client(&self, n: usize) {
        self.to_client.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn to_server(&self) -> u64 {
        self.to_server.load(Ordering::Relaxed)
    }
    pub fn to_client(&self) -> u64 {
        self.to_client.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Connected,
}

/// A client connection from accept to close.
#[derive(Debug, Clone)]
pub struct Conn {
    pub client: ClientKey,
    pub peer_port: u16,
    /// The first choice (the server failover comes back to last).
    pub initial: Option<Target>,
    /// The server it is connecting or connected to.
    pub target: Option<Target>,
    pub state: ConnState,
    /// Connects tried on regular servers: failover gives each server at most one try per
    /// connection, so a connection ends even when blacklisting is off.
    pub attempts: u32,
    pub counters: Arc<ConnCounters>,
    pub since: Instant,
}
