//! The data plane: the accept loop and the life of one client connection, driving the balancer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::addr::Backend;
use crate::balancer::{Admission, Balancer, ConnId, Peer, Target};
use crate::http::{Proto, Rewriter};
use crate::net::{self, Listener, Stream};
use crate::relay::{self, RelayEnd, RelayOptions, Side};
use crate::reqlog::RequestLog;
use crate::tls::Tls;

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

/// Limits the accept loop: `-x` connection slots, and `-m` accepts per wake-up.
#[derive(Clone)]
pub struct Limits {
    pub slots: Arc<Semaphore>,
    pub multi_accept: usize,
}

/// How long to pause accepting when the process is out of descriptors or memory.
const EXHAUSTION_PAUSE: Duration = Duration::from_millis(100);
/// How long a finished TLS connection may take to send its close_notify.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);
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

/// Accept clients until the future is dropped. One connection's error never stops the loop;
/// running out of descriptors pauses it instead of spinning. With a full connection table
/// (`-x`), the client just accepted waits for a slot, and the next ones wait in the kernel's
/// backlog. The slot is taken after the accept, not before: each thread has a listening socket
/// of its own, and a slot held by a thread whose socket is quiet would leave a client queued on
/// another thread's socket waiting. With `tls`, every client shakes hands before it is admitted.
pub async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    limits: Limits,
    tls: Option<Arc<Tls>>,
) {
    let mut accepted_in_a_row = 0;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(permit) = limits.slots.clone().acquire_owned().await else {
                    return; // the semaphore was closed: shutting down
                };
                tokio::spawn(serve(shared.clone(), stream, peer, permit, tls.clone()));
                // `-m`: after this many accepts in a row, let the connections run first.
                accepted_in_a_row += 1;
                if accepted_in_a_row >= limits.multi_accept {
                    accepted_in_a_row = 0;
                    tokio::task::yield_now().await;
                }
            }
            Err(e) if net::is_local_failure(&e) => {
                if ACCEPT_FAILURE_LOG.allow(Instant::now()) {
                    warn!("accept: {e}; pausing new connections until descriptors free up");
                }
                tokio::time::sleep(EXHAUSTION_PAUSE).await;
            }
            Err(e) => debug!("accept: {e}"),
        }
    }
}

/// Releases the connection's place in the balancer however the task ends (even if cancelled).
struct ConnGuard<'a> {
    shared: &'a Shared,
    conn: Option<ConnId>,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.conn.take() {
            self.shared.with(|b| b.closed(id));
        }
    }
}

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

/// One client connection: the TLS handshake if the listener has TLS (before anything else, so
/// a client that fails it never touches the balancer or a server), then choose a server,
/// connect (failing over as the balancer says), relay.
async fn serve(
    shared: Arc<Shared>,
    client: Stream,
    peer: Peer,
    _permit: OwnedSemaphorePermit,
    tls: Option<Arc<Tls>>,
) {
    let mut client = match tls {
        None => client,
        // Boxed: the handshake's state is kilobytes, and a plain TCP connection should not
        // carry (and move) that much room in its task.
        Some(tls) => match Box::pin(tls.accept(client)).await {
            Ok(client) => client,
            Err(e) => {
                debug!("TLS handshake with {} failed: {e}", describe_peer(peer));
                return;
            }
        },
    };
    let (admission, settings) = shared.with(|b| {
        let admission = (!b.settings.dummy).then(|| b.admit(peer, Instant::now()));
        (admission, b.settings.conn_options())
    });
    if settings.tcp_nodelay {
        client.set_nodelay();
    }
    let Some(mut admission) = admission else {
        // Boxed, like the handshake: its read buffer would otherwise make every task bigger.
        Box::pin(dummy(client, &settings)).await;
        return;
    };
    let mut guard = ConnGuard {
        shared: &shared,
        conn: None,
    };
    if admission == Admission::ClientLimit {
        client_limit_reached(&shared, peer);
        return;
    }
    loop {
        let Admission::Connect {
            conn,
            target,
            backend,
        } = admission
        else {
            no_server(peer);
            return;
        };
        guard.conn = Some(conn);
        let attempt = tokio::time::timeout(
            settings.connect_timeout,
            net::connect(&backend, &settings, peer.ip),
        );
        // A client that resets while the server is slow to answer is gone for good: drop the
        // pending connect and free its socket and slot now, not at `-t`.
        let attempt = tokio::select! {
            biased;
            attempt = attempt => attempt,
            () = client.reset_by_peer() => {
                debug!("client {peer:?} reset the connection while pen connected to {backend}");
                return;
            }
        };
        let failure = match attempt {
            Ok(Ok(mut upstream)) => {
                let counters = shared.with(|b| {
                    b.connected(conn);
                    b.conn(conn).map(|c| c.counters.clone())
                });
                let Some(counters) = counters else { return };
                counters.set_fds(client.raw_fd(), upstream.raw_fd());
                let options = RelayOptions {
                    idle_timeout: settings.idle_timeout,
                    fastclose: settings.fastclose,
                };
                let server_ip = match &backend {
                    Backend::Tcp(sa) => Some(sa.ip()),
                    Backend::Unix(_) => None,
                };
                let tap = shared.reqlog.tap(peer.ip, server_ip);
                let from_client = |data: &[u8]| tap.chunk(data);
                // `-H`: the client's requests pass through the rewriter (X-Forwarded-For and
                // X-Forwarded-Proto); otherwise the relay compiles the rewriting out.
                // Outside tokio's cooperative budget: the relay takes at most READS_PER_POLL
                // reads per direction before it yields by itself, and the budget's bookkeeping
                // on every read and write would only add to each request's cost.
                let relayed = tokio::task::unconstrained(async {
                    if settings.http {
                        let proto = if client.is_tls() {
                            Proto::Https
                        } else {
                            Proto::Http
                        };
                        let mut rewriter = Rewriter::new(peer.ip, proto, settings.xff);
                        relay::relay_rewriting(
                            &mut client,
                            &mut upstream,
                            &counters,
                            options,
                            from_client,
                            &mut rewriter,
                        )
                        .await
                    } else {
                        relay::relay(&mut client, &mut upstream, &counters, options, from_client)
                            .await
                    }
                });
                tokio::select! {
                    // The relay first: `close N` is rare, and its branch needs no fairness.
                    // The switch is polled on every wake-up; polling it takes no lock.
                    biased;
                    end = relayed => match end {
                        RelayEnd::Error(side, e) => {
                            debug!("connection {}: {side:?} error: {e}", conn.0);
                            // A socket that failed (a reset, a keepalive timeout) ends the other
                            // side with a reset too: a FIN would make a cut transfer look
                            // complete. (An `-H` refusal is no socket error: that ends in FINs.)
                            if e.raw_os_error().is_some() {
                                match side {
                                    Side::Server => client.reset_on_close(),
                                    Side::Client => upstream.reset_on_close(),
                                }
                            }
                        }
                        end => {
                            debug!("connection {}: {end:?}", conn.0);
                            if client.is_tls() {
                                // The relay leaves the last FIN to the close; a TLS client also
                                // expects close_notify before it, or it may take the end of the
                                // data for a truncation.
                                let _ = tokio::time::timeout(CLOSE_NOTIFY_WAIT, client.shutdown())
                                    .await;
                            }
                        }
                    },
                    () = counters.abort.fired() => {
                        if counters.abort.is_cut() {
                            info!("connection {}: reset, the shutdown grace period is over", conn.0);
                            client.reset_on_close();
                            upstream.reset_on_close();
                        } else {
                            info!("connection {}: closed by the control port", conn.0);
                        }
                    }
                }
                return;
            }
            Ok(Err(e)) if net::is_local_failure(&e) => {
                local_failure(&backend, &e, Instant::now());
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timeout".to_string(),
        };
        log_connect_failure(target, &backend, &failure);
        admission = shared.with(|b| b.connect_failed(conn, Instant::now()));
        if admission == Admission::Refuse {
            // The balancer already forgot the connection.
            guard.conn = None;
        }
    }
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

/// pen's `dummy` mode: answer the client's first chunk with a fixed page, contacting no server.
async fn dummy(mut client: Stream, settings: &crate::balancer::ConnOptions) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PAGE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nContent-Type: text/html\r\n\r\nUlric was here.";
    let wait = if settings.idle_timeout.is_zero() {
        Duration::from_secs(60)
    } else {
        settings.idle_timeout
    };
    let mut buf = [0u8; 4096];
    if let Ok(Ok(n)) = tokio::time::timeout(wait, client.read(&mut buf)).await {
        if n > 0 {
            let _ = tokio::time::timeout(wait, async {
                client.write_all(PAGE).await?;
                client.shutdown().await
            })
            .await;
        }
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
