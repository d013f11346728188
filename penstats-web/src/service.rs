//! Running the service: bind the listener, start the monitor, serve until SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::args::Config;
use crate::monitor::{self, Monitor};
use crate::web::{self, AppState};

/// How long open requests get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serve `config` until a termination signal. Prints one line on stdout once listening:
/// `penstats-web: serving http://ADDRESS:PORT/ for pen at PEN` (with the port chosen for
/// `--listen ...:0`).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("can't listen on {}", config.listen))?;
    let local = listener
        .local_addr()
        .context("can't read the listening address")?;
    let monitor = Monitor::new(config.polling.clone());
    let (views, latest) = watch::channel(Arc::new(monitor.starting()));
    let pen = config.polling.pen.to_string();
    let state = AppState::new(latest, &pen, config.polling.interval, local.ip());
    let app = web::router(state);

    // The poller owns the only sender: when it stops, every event stream ends, so a graceful
    // shutdown is not held up by browsers that would watch for ever.
    let poller = tokio::spawn(monitor::run(monitor, views));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    println!("penstats-web: serving http://{local}/ for pen at {pen}");
    let mut server = tokio::spawn(async move { serve.await });

    tokio::select! {
        result = &mut server => {
            poller.abort();
            return result.context("the web server stopped")?.context("the web server failed");
        }
        () = terminated() => {}
    }
    poller.abort();
    let _ = stop_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result
            .context("the web server stopped")?
            .context("the web server failed"),
        // Requests still open after the grace period are dropped with the runtime.
        Err(_) => Ok(()),
    }
}

/// SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process is stopped by the default actions instead.
        _ => std::future::pending().await,
    }
}
