//! Diagnostics in pen's format: `YYYY-MM-DD HH:MM:SS: message` (local time) on stderr.
//! `-d` raises the level: none shows warnings and errors, `-d` adds what pen logs at level 1
//! (startup, blacklisting), `-dd` every step of every connection, `-ddd` and more everything.

use tracing::Level;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

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

/// Install the stderr logger. Safe to call once; later calls are ignored.
pub fn init(debug: u8) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level_for(debug))
        .with_timer(PenTime)
        .with_level(false)
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}
