//! What the data planes (the TCP engine, UDP, direct server return) share with each other and
//! with the main thread: the one lock around the balancer, the `-x` limits, `busy_poll` and
//! `coalesce`, rate-limited messages, and how logs name clients, servers and failures.

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
    /// `busy_poll`: how long a data-plane loop goes on polling for events, rather than
    /// sleeping, after it last found some. Zero (the default) is off: a loop sleeps as soon as
    /// it has nothing to do.
    ///
    /// Why: a loop that sleeps must be woken, and the wake-up is paid for by whoever makes it
    /// ready: the kernel, on the core of the client or server that sent the bytes. In a
    /// virtual machine that wakes an idle core with an interrupt that exits to the hypervisor,
    /// this costs the sender's core microseconds per wake-up. A balancer with a core to itself
    /// can spend its idle time polling instead (HAProxy's `busy-polling`), so its clients' and
    /// servers' cores do more work.
    pub busy_poll: Micros,
    /// `coalesce`: the longest nap a TCP data-plane loop takes before it waits for events
    /// (`engine::coalesce`); zero for none.
    pub coalesce: Micros,
}

impl Shared {
    pub fn new(balancer: Balancer) -> Arc<Self> {
        Arc::new(Shared {
            balancer: Mutex::new(balancer),
            reqlog: RequestLog::new(),
            busy_poll: Micros::default(),
            coalesce: Micros::new(COALESCE_DEFAULT),
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

/// `coalesce`'s default: naps of up to 100 µs.
pub const COALESCE_DEFAULT: Duration = Duration::from_micros(100);

/// A loop setting in microseconds (`busy_poll`, `coalesce`), from 0 to `Micros::MAX`, read by
/// the data-plane loops on every turn, so kept out of the lock.
#[derive(Debug, Default)]
pub struct Micros {
    micros: AtomicU64,
}

impl Micros {
    /// The largest value `busy_poll` and `coalesce` take.
    pub const MAX: Duration = Duration::from_millis(1);

    pub fn new(value: Duration) -> Self {
        let setting = Micros::default();
        setting.set(value);
        setting
    }

    pub fn set(&self, value: Duration) {
        let micros = value.min(Self::MAX).as_micros() as u64;
        self.micros.store(micros, Ordering::Relaxed);
    }

    pub fn get(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }
}

/// One loop's side of `busy_poll`: when it last found events.
#[derive(Debug, Default)]
pub struct Spin {
    last_found: Option<Instant>,
}

impl Spin {
    /// A poll at `now` found `events` events.
    pub fn found(&mut self, events: usize, now: Instant) {
        if events > 0 {
            self.last_found = Some(now);
        }
    }

    /// Whether the loop should poll again at once rather than sleep: it found events less
    /// than `window` before `now`.
    pub fn polling(&self, window: Duration, now: Instant) -> bool {
        self.last_found
            .is_some_and(|at| now.saturating_duration_since(at) < window)
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

    #[test]
    fn a_loop_polls_only_within_the_window_after_it_last_found_events() {
        let us = Duration::from_micros;
        let t0 = Instant::now();
        let mut spin = Spin::default();
        // Never found anything: it sleeps, whatever the window.
        assert!(!spin.polling(us(1000), t0));
        spin.found(3, t0);
        assert!(spin.polling(us(8), t0 + us(7)));
        assert!(!spin.polling(us(8), t0 + us(8)));
        // Off: never polls.
        assert!(!spin.polling(Duration::ZERO, t0));
        // An empty poll does not extend the window; a poll that finds events does.
        spin.found(0, t0 + us(5));
        assert!(!spin.polling(us(8), t0 + us(9)));
        spin.found(1, t0 + us(5));
        assert!(spin.polling(us(8), t0 + us(9)));
        // A clock that went backwards (it cannot, but) keeps polling rather than panicking.
        assert!(spin.polling(us(8), t0));
    }

    #[test]
    fn a_loop_setting_is_capped_at_its_maximum() {
        let b = Micros::default();
        assert_eq!(b.get(), Duration::ZERO);
        b.set(Duration::from_micros(8));
        assert_eq!(b.get(), Duration::from_micros(8));
        b.set(Duration::from_secs(5));
        assert_eq!(b.get(), Micros::MAX);
        assert_eq!(Micros::new(COALESCE_DEFAULT).get(), COALESCE_DEFAULT);
    }
}
