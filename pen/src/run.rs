//! Starting and stopping the daemon: descriptor limits, the runtime, the listener, signals.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use std::time::Instant;

use crate::balancer::{Balancer, Server, ServerId};
use crate::cli::Options;
use crate::control;
use crate::geoip::GeoIp;
use std::sync::mpsc;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::addr::ListenAddr;
use crate::net::BoundListener;
use crate::proxy::{self, Limits, Shared};
use crate::udp::UdpPlane;

/// How long open connections may take to finish after TERM or INT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Descriptors kept aside for listeners, logs and the control plane when deriving `-x`.
const FD_RESERVE: u64 = 64;

/// Raise the soft descriptor limit to the hard one (as HAProxy does) and return it.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// pen's `-x` default is 500 because C pen preallocates its table. Connections here cost nothing
/// until they exist, so the default is what the descriptor limit allows (two per connection),
/// and never less than pen's 500.
pub fn default_conn_max(fd_limit: u64) -> NonZeroUsize {
    let n = (fd_limit.saturating_sub(FD_RESERVE) / 2).max(500);
    NonZeroUsize::new(usize::try_from(n).unwrap_or(usize::MAX)).unwrap_or(NonZeroUsize::MIN)
}

/// Where the data-plane threads are in their life; the main thread moves them along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serve,
    /// Stop accepting; let open connections finish.
    Drain,
    /// Grace period over: drop whatever is still open.
    Exit,
}

/// Run pen until TERM or INT. Returns once the listener is closed and open connections have
/// finished (or the grace period ran out).
///
/// Threads: one data-plane thread per core, each with its own single-threaded runtime and its
/// own descriptor of the listening socket; a connection lives on the thread that accepted it, so
/// no thread ever wakes another to run it. The main thread handles signals (and is where the
/// control plane will live), so nothing it does can delay a connection.
pub fn run(options: Options) -> anyhow::Result<()> {
    let fd_limit = raise_fd_limit();
    let conn_max = options
        .conn_max
        .unwrap_or_else(|| default_conn_max(fd_limit));
    // (UDP sessions need one descriptor each; the UDP plane sizes its table itself.)
    if !options.udp && (conn_max.get() as u64).saturating_mul(2) + FD_RESERVE > fd_limit {
        warn!(
            "-x {conn_max} needs about {} descriptors but the limit is {fd_limit}; \
             accepts will pause when descriptors run out",
            conn_max.get() * 2
        );
    }
    let shared = Shared::new(build_balancer(&options)?);
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("can't start the runtime")?;
    // Signal handlers go in before anything is bound: a TERM that arrives as soon as the port
    // answers must stop pen cleanly, not kill it with the default action.
    let mut signals = control.block_on(async { Signals::install() })?;
    if options.udp {
        let ListenAddr::Tcp(listen) = options.listen else {
            anyhow::bail!("-U: UDP needs an IP listen address");
        };
        let plane = UdpPlane::start(listen, shared, conn_max)?;
        info!(
            "pen {} starting: listening on udp {}, {} servers",
            env!("CARGO_PKG_VERSION"),
            plane.local_addr(),
            options.servers.len(),
        );
        control.block_on(signals.wait_for_stop());
        info!("stopping");
        plane.stop();
        return Ok(());
    }
    let bound = BoundListener::bind(&options.listen, options.backlog)?;
    let slots = Arc::new(Semaphore::new(conn_max.get()));
    let threads = data_threads();
    let (phase_tx, phase_rx) = watch::channel(Phase::Serve);
    let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let listener = bound
            .try_clone()
            .context("can't share the listening socket")?;
        let limits = Limits {
            slots: slots.clone(),
            multi_accept: options.multi_accept.get(),
        };
        let (shared, phase, ready) = (shared.clone(), phase_rx.clone(), ready_tx.clone());
        let worker = std::thread::Builder::new()
            .name(format!("pen-data-{i}"))
            .spawn(move || data_plane(listener, shared, limits, phase, ready))
            .context("can't start a data-plane thread")?;
        workers.push(worker);
    }
    drop(ready_tx);
    for _ in 0..threads {
        ready_rx
            .recv()
            .context("a data-plane thread died while starting")?
            .context("can't register the listener")?;
    }
    info!(
        "pen {} starting: listening on {}, {} servers, up to {conn_max} connections, {threads} threads",
        env!("CARGO_PKG_VERSION"),
        bound.local_addr().map_or_else(|| options.listen.to_string(), |a| a.to_string()),
        options.servers.len(),
    );
    drop(bound);
    control.block_on(async {
        signals.wait_for_stop().await;
        info!("stopping: no new connections; waiting up to {SHUTDOWN_GRACE:?} for open ones");
        let _ = phase_tx.send(Phase::Drain);
        let all = u32::try_from(conn_max.get()).unwrap_or(u32::MAX);
        if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
            .await
            .is_err()
        {
            warn!("grace period over; closing the connections still open");
        }
    });
    let _ = phase_tx.send(Phase::Exit);
    for worker in workers {
        if worker.join().is_err() {
            warn!("a data-plane thread panicked");
        }
    }
    Ok(())
}

/// One data-plane thread per core the process may run on, unless `PEN_THREADS` says otherwise
/// (a tuning knob, like HAProxy's `nbthread`; values outside 1..=1024 are ignored).
fn data_threads() -> usize {
    std::env::var("PEN_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=1024).contains(n))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

/// The balancer as the command line describes it: settings, `-o` commands, then the servers.
fn build_balancer(options: &Options) -> anyhow::Result<Balancer> {
    let mut balancer = Balancer::new(options.settings.clone(), options.clients_max);
    if let Some(path) = &options.geoip {
        let geoip = GeoIp::open(path)?;
        info!(
            "GeoIP: {} ({})",
            geoip.path().display(),
            geoip.database_type()
        );
        balancer.set_geoip(Some(Arc::new(geoip)));
    }
    let port = options.listen.default_port();
    for cmd in &options.commands {
        let reply = control::execute(cmd, &mut balancer, Instant::now(), port)
            .map_err(|e| anyhow::anyhow!("-o: {e}"))?;
        print!("{reply}");
    }
    for (i, spec) in options.servers.iter().enumerate() {
        balancer.replace_server(ServerId(i), Server::from_spec(spec));
    }
    balancer.set_emergency(options.emergency.as_ref());
    Ok(balancer)
}

/// One data-plane thread: accept and serve until told to drain, then keep serving the open
/// connections until told to exit (dropping the runtime closes whatever is left).
fn data_plane(
    listener: BoundListener,
    shared: Arc<Shared>,
    limits: Limits,
    mut phase: watch::Receiver<Phase>,
    ready: mpsc::Sender<std::io::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match listener.register() {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        // Keep this thread's timer wheel from ever being empty: tokio wakes its own driver (an
        // eventfd write and an extra epoll round) whenever a new timer is due before every
        // pending one, which a lone connect timeout always is. A one-second tick costs one
        // wake-up a second and saves that on every connection.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
            }
        });
        tokio::select! {
            () = proxy::accept_loop(listener, shared, limits) => {}
            _ = phase.wait_for(|p| *p >= Phase::Drain) => {}
        }
        let _ = phase.wait_for(|p| *p >= Phase::Exit).await;
    });
}

/// The signals pen handles, installed once at startup.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

impl Signals {
    /// Must run inside the runtime that will wait for them.
    fn install() -> anyhow::Result<Signals> {
        let handle = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("can't handle {name}"))
        };
        Ok(Signals {
            term: handle(SignalKind::terminate(), "SIGTERM")?,
            int: handle(SignalKind::interrupt(), "SIGINT")?,
            hup: handle(SignalKind::hangup(), "SIGHUP")?,
            usr1: handle(SignalKind::user_defined1(), "SIGUSR1")?,
        })
    }

    /// Wait for TERM or INT. HUP and USR1 (reload and statistics in pen) are caught and logged
    /// so that an operator's habitual `kill -HUP` does not stop the balancer; their actions come
    /// with the configuration-file and statistics features.
    async fn wait_for_stop(&mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => warn!("SIGHUP: no configuration file or log to reopen in this version; ignored"),
                _ = self.usr1.recv() => warn!("SIGUSR1: statistics output is not in this version; ignored"),
            }
        }
    }
}
