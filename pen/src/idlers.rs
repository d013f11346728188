//! `idlers N`: pen keeps N upstream connections open with no client ("reliable idlers"), each
//! placed by round robin with failover and counted on its server; one that its server closes is
//! replaced. They run on the main thread's runtime: they carry no traffic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use crate::balancer::{Admission, ConnId};
use crate::net;
use crate::shared::Shared;

/// After an idler ends (its server closed it, or no server took it), wait this long before
/// opening another, so that a dead pool is not hammered.
const RETRY: Duration = Duration::from_secs(1);

/// Keep `*wanted.borrow()` idlers open until `wanted`'s sender is gone.
pub async fn maintain(shared: Arc<Shared>, mut wanted: watch::Receiver<usize>) {
    let mut open: JoinSet<()> = JoinSet::new();
    loop {
        let target = *wanted.borrow_and_update();
        while open.len() < target {
            open.spawn(idle(shared.clone()));
        }
        if open.len() > target {
            // Fewer wanted: close them all and open the right number again (rare, and cheap).
            open.shutdown().await;
            continue;
        }
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { break },
            Some(_) = open.join_next() => tokio::time::sleep(RETRY).await,
        }
    }
    open.shutdown().await;
}

/// Releases the idler's place in the balancer however it ends.
struct Guard<'a>(&'a Shared, Option<ConnId>);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.1.take() {
            self.0.with(|b| b.closed(id));
        }
    }
}

/// One idler: connect (failing over as the balancer says), then wait for the server to close.
async fn idle(shared: Arc<Shared>) {
    let (mut admission, settings) =
        shared.with(|b| (b.admit_idler(Instant::now()), b.settings.conn_options()));
    let mut guard = Guard(&shared, None);
    loop {
        let Admission::Connect { conn, backend, .. } = admission else {
            return;
        };
        guard.1 = Some(conn);
        let attempt = tokio::time::timeout(
            settings.connect_timeout,
            net::connect(&backend, &settings, None),
        )
        .await;
        match attempt {
            Ok(Ok(mut upstream)) => {
                shared.with(|b| b.connected(conn));
                let mut buf = [0u8; 512];
                while matches!(upstream.read(&mut buf).await, Ok(n) if n > 0) {}
                debug!("idler {}: {backend} closed it", conn.0);
                return;
            }
            _ => {
                admission = shared.with(|b| b.connect_failed(conn, Instant::now()));
                if admission == Admission::Refuse {
                    guard.1 = None;
                }
            }
        }
    }
}
