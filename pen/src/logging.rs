//! Diagnostics in pen's format: `YYYY-MM-DD HH:MM:SS: message` (local time) on stderr.
//! `-d` raises the level: none shows warnings and errors, `-d` adds what pen logs at level 1
//! (startup, blacklisting), `-dd` every step of every connection, `-ddd` and more everything.
//! The `debug N` control command changes the level of the running daemon.

use std::sync::OnceLock;

use tracing::Level;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

struct PenTime;

impl FormatTime for PenTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write!(w, "{}:", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"))
    }
}

pub fn level_for(debug: u8) -> Level {
    match debug {
        0 => Level::WARN,
        1 => Level::INFO,
        2 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

type Handle = reload::Handle<LevelFilter, tracing_subscriber::Registry>;

/// Set once by `init`; `set_debug` changes the level through it.
static LEVEL: OnceLock<Handle> = OnceLock::new();

/// Install the stderr logger. Safe to call once; later calls are ignored.
pub fn init(debug: u8) {
    let (filter, handle) = reload::Layer::new(LevelFilter::from_level(level_for(debug)));
    let fmt = tracing_subscriber::fmt::layer()
        .with_timer(PenTime)
        .with_level(false)
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr);
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = LEVEL.set(handle);
    }
}

/// `debug N`: change the level of the running daemon.
pub fn set_debug(debug: u8) {
    if let Some(handle) = LEVEL.get() {
        let _ = handle.modify(|f| *f = LevelFilter::from_level(level_for(debug)));
    }
}
