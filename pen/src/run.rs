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
use crate::net::Listener;
use crate::proxy::{self, Limits, Shared};

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

/// Run pen until TERM or INT. Returns once the listener is closed and open connections have
/// finished (or the grace period ran out).
pub fn run(options: Options) -> anyhow::Result<()> {
    let fd_limit = raise_fd_limit();
    let conn_max = options
        .conn_max
        .unwrap_or_else(|| default_conn_max(fd_limit));
    if (conn_max.get() as u64).saturating_mul(2) + FD_RESERVE > fd_limit {
        warn!(
            "-x {conn_max} needs about {} descriptors but the limit is {fd_limit}; \
             accepts will pause when descriptors run out",
            conn_max.get() * 2
        );
    }
    let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("can't start the runtime")?;
    runtime.block_on(serve(options, conn_max))
}

async fn serve(options: Options, conn_max: NonZeroUsize) -> anyhow::Result<()> {
    let listener = Listener::bind(&options.listen, options.backlog)?;
    let mut balancer = Balancer::new(options.settings.clone(), options.clients_max);
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
    let shared = Shared::new(balancer);
    let slots = Arc::new(Semaphore::new(conn_max.get()));
    let limits = Limits {
        slots: slots.clone(),
        conn_max: conn_max.get(),
        multi_accept: options.multi_accept.get(),
    };
    info!(
        "pen {} starting: listening on {}, {} servers, up to {conn_max} connections",
        env!("CARGO_PKG_VERSION"),
        listener
            .local_addr()
            .map_or_else(|| options.listen.to_string(), |a| a.to_string()),
        options.servers.len(),
    );
    let accepting = tokio::spawn(proxy::accept_loop(listener, shared, limits));
    wait_for_stop_signal().await?;
    info!("stopping: no new connections; waiting up to {SHUTDOWN_GRACE:?} for open ones");
    accepting.abort();
    let _ = accepting.await; // drops the listener
    let all = u32::try_from(conn_max.get()).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        warn!("grace period over; closing the connections still open");
    }
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("can't handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("can't handle SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
