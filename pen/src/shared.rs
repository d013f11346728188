//! What the data planes (the TCP engine, UDP, direct server return) share with each other and
//! with the main thread: the one lock around the balancer, the `-x` limits, rate-limited
//! messages, and how logs name clients, servers and failures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::addr::Backend;
use crate::balancer::{Balancer, Peer, Target};
use crate::reqlog::RequestLog;

/// The one lock around the balancer. Every access goes through `with`, which takes a closure:
/// the lock can therefore never be held across an `.await`. Beside it, the request log, which
/// needs no lock on the data path.
pub struct Shared {
    balancer: Mutex<Balancer>,
    pub reqlog: RequestLog,
}

impl Shared {
    pub fn new(balancer: Balancer) -> Arc<Self> {
        Arc::new(Shared {
            balancer: Mutex::new(balancer),
            reqlog: RequestLog::new(),
        })
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Balancer) -> R) -> R {
        f(&mut self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Balancer> {
        // A panic while holding the lock leaves a consistent-enough balancer (every mutation is
        // a few field updates); keep serving rather than poisoning the whole daemon.
        self.balancer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Limits on accepting: `-x` connection slots, and `-m` accepts per wake-up.
#[derive(Clone)]
pub struct Limits {
    pub slots: Arc<Semaphore>,
    pub multi_accept: usize,
}

/// At most one "out of descriptors" message per this interval.
const EXHAUSTION_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// At most one message per `EXHAUSTION_LOG_INTERVAL`, across every thread.
pub struct RateLimit {
    origin: OnceLock<Instant>,
    /// Milliseconds after `origin` of the last message, plus one (0 = never).
    last: AtomicU64,
}

impl RateLimit {
    pub const fn new() -> Self {
        RateLimit {
            origin: OnceLock::new(),
            last: AtomicU64::new(0),
        }
    }

    /// True if a message may be logged now (and records it).
    pub fn allow(&self, now: Instant) -> bool {
        let origin = *self.origin.get_or_init(|| now);
        let now_ms = now.saturating_duration_since(origin).as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due =
            last == 0 || now_ms.saturating_sub(last) >= EXHAUSTION_LOG_INTERVAL.as_millis() as u64;
        due && self
            .last
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// Running out of descriptors shows in accept and in upstream connects, on every thread.
pub(crate) static ACCEPT_FAILURE_LOG: RateLimit = RateLimit::new();
static LOCAL_FAILURE_LOG: RateLimit = RateLimit::new();

/// How logs name a target.
pub(crate) fn describe(target: Target) -> String {
    match target {
        Target::Server(id) => format!("server {}", id.0),
        Target::Emergency => "the emergency server".to_string(),
        Target::Abuse => "the abuse server".to_string(),
    }
}

/// How logs name a client.
pub(crate) fn describe_peer(peer: Peer) -> String {
    peer.ip.map_or("a Unix-socket client".to_string(), |ip| {
        format!("client {ip} port {}", peer.port)
    })
}

/// No server will take the client: it is closed.
pub(crate) fn no_server(peer: Peer) {
    // pen says this at debug level 1 ("No failover server found, giving up").
    info!("no server for {}; closing it", describe_peer(peer));
}

/// A connect that failed for want of our own descriptors or memory: no server is blamed.
pub(crate) fn local_failure(backend: &Backend, e: &std::io::Error, now: Instant) {
    if LOCAL_FAILURE_LOG.allow(now) {
        warn!("can't connect to {backend}: {e} (our resources, not the server's fault)");
    }
}

/// A connect that failed by the server's fault; the balancer blacklists it next.
pub(crate) fn log_connect_failure(target: Target, backend: &Backend, failure: &str) {
    info!(
        "{} ({backend}) failed: {failure}; blacklisting it",
        describe(target)
    );
}

/// One warning per 5 seconds while clients are held to `client_conn_max`.
pub(crate) fn client_limit_reached(shared: &Shared, peer: Peer) {
    static LOG: RateLimit = RateLimit::new();
    if LOG.allow(Instant::now()) {
        let (limit, closed) = shared.with(|b| (b.settings.client_conn_max, b.client_limited()));
        warn!(
            "{} has client_conn_max ({limit}) connections open: closing its new ones \
             ({closed} so far)",
            describe_peer(peer)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_one_message_per_interval() {
        let limit = RateLimit::new();
        let t0 = Instant::now();
        assert!(limit.allow(t0));
        assert!(!limit.allow(t0 + Duration::from_secs(1)));
        assert!(limit.allow(t0 + EXHAUSTION_LOG_INTERVAL));
        assert!(!limit.allow(t0 + EXHAUSTION_LOG_INTERVAL + Duration::from_millis(10)));
    }
}
