//! Statistics output: pen's HTML status page (`-w`, `status`) and its text statistics
//! (SIGUSR1 without `-w`), both rendered from a `balancer::Snapshot`.
//!
//! Taking the snapshot is the only part under the balancer lock; rendering and writing happen
//! after it is released, on the caller's thread (the main thread, never a data-plane thread).

mod html;
mod text;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use crate::balancer::{Balancer, Snapshot};
use crate::shared::Shared;

/// Why the status page was not written.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Neither `-w` nor `web_stats` named a file (pen: "Unable to create webstats").
    #[error("don't know where to write web stats; see -w option")]
    NoWebStats,
    #[error("can't render the status page")]
    Render(#[from] askama::Error),
    #[error("can't write the status page {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A snapshot of `b` now. Call it inside `Shared::with`; it does no I/O.
pub fn snapshot(b: &Balancer) -> Snapshot {
    Snapshot::build(b, Instant::now(), chrono::Local::now().fixed_offset())
}

/// A snapshot of the balancer behind `shared`, taken under its lock.
pub fn take(shared: &Shared) -> Snapshot {
    let wall = chrono::Local::now().fixed_offset();
    shared.with(|b| Snapshot::build(b, Instant::now(), wall))
}

/// pen's HTML status page.
pub fn render_html(snapshot: &Snapshot) -> Result<String, StatsError> {
    Ok(html::render(snapshot)?)
}

/// Render the page and replace `path` with it (atomically, never through a symlink, not
/// world-writable). Returns the page.
pub fn write_html(path: &Path, snapshot: &Snapshot) -> Result<String, StatsError> {
    let page = render_html(snapshot)?;
    crate::safe_file::write_atomically(path, page.as_bytes()).map_err(|source| {
        StatsError::Write {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(page)
}

/// The `web_stats` file and a snapshot, taken together under the lock.
fn take_with_path(shared: &Shared) -> (Option<Arc<Path>>, Snapshot) {
    let wall = chrono::Local::now().fixed_offset();
    shared.with(|b| {
        let path = b.settings.web_stats.clone();
        (path, Snapshot::build(b, Instant::now(), wall))
    })
}

/// Write the status page to the `web_stats` file of the settings and return it: SIGUSR1 with
/// `-w`, and the control port's `status`.
pub fn write_web_stats(shared: &Shared) -> Result<String, StatsError> {
    let (path, snapshot) = take_with_path(shared);
    let path = path.ok_or(StatsError::NoWebStats)?;
    write_html(&path, &snapshot)
}

/// pen's text statistics, one message per item (see `text`).
pub fn render_text(snapshot: &Snapshot) -> Vec<String> {
    text::items(snapshot)
}

/// Log the text statistics; they show at every debug level.
pub fn log_text(snapshot: &Snapshot) {
    for item in render_text(snapshot) {
        info!(target: crate::logging::REPORT, "{item}");
    }
}

/// SIGUSR1: the HTML page when a `web_stats` file is set, the text statistics otherwise.
pub fn on_usr1(shared: &Shared) {
    match take_with_path(shared) {
        (Some(path), snapshot) => {
            if let Err(e) = write_html(&path, &snapshot) {
                tracing::warn!("SIGUSR1: {:#}", anyhow::Error::new(e));
            }
        }
        (None, snapshot) => log_text(&snapshot),
    }
}

#[cfg(test)]
mod tests;
