//! Diagnostics, through `tracing`. In the foreground they go to stderr in pen's format,
//! `YYYY-MM-DD HH:MM:SS: message` (local time); once daemonized, to syslog (facility user).
//!
//! The debug level (`-d`, repeatable; the control port's `debug N` later) maps onto tracing
//! levels: none shows warnings and errors, `-d` adds what pen logs at level 1 (start-up,
//! blacklisting), `-dd` every step of every connection, `-ddd` and more also traffic dumps. It
//! can change at run time: `set_debug` rebuilds tracing's per-call-site cache, so a disabled
//! message costs one comparison, whatever the level was before.
//!
//! Reports an operator asked for (the text statistics of SIGUSR1) use the target `REPORT` and
//! are shown at every level.

mod syslog;

use std::io::{self, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

pub use syslog::{Severity, Syslog, DEFAULT_SOCKET};

/// The target of messages shown at every debug level.
pub const REPORT: &str = "pen::report";

/// The current debug level (`-d` count).
static DEBUG: AtomicU8 = AtomicU8::new(0);

/// Set once the process is a daemon; from then on every message goes there.
static SYSLOG: OnceLock<Syslog> = OnceLock::new();

pub fn level_for(debug: u8) -> Level {
    match debug {
        0 => Level::WARN,
        1 => Level::INFO,
        2 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// Install the logger at debug level `debug`. Safe to call more than once; later calls only
/// set the level.
pub fn init(debug: u8) {
    DEBUG.store(debug, Ordering::Relaxed);
    let layer = tracing_subscriber::fmt::layer()
        .event_format(PenFormat)
        .with_writer(PenWriter)
        .with_filter(DebugLevel);
    let subscriber = tracing_subscriber::registry().with(layer);
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        set_debug(debug);
    }
}

/// The debug level now.
pub fn debug_level() -> u8 {
    DEBUG.load(Ordering::Relaxed)
}

/// Change the debug level at run time.
pub fn set_debug(debug: u8) {
    DEBUG.store(debug, Ordering::Relaxed);
    tracing::callsite::rebuild_interest_cache();
}

/// From now on, send every message to `syslog` instead of stderr (for good: a daemon has no
/// stderr). Returns false if messages already go to a syslog.
pub fn use_syslog(syslog: Syslog) -> bool {
    SYSLOG.set(syslog).is_ok()
}

fn allowed(meta: &Metadata<'_>) -> bool {
    meta.target() == REPORT || *meta.level() <= level_for(debug_level())
}

/// The `-d` level, read at each call site's registration (and again after `set_debug`).
struct DebugLevel;

impl<S> Filter<S> for DebugLevel {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        allowed(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if allowed(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // Reports are INFO events, shown at every level.
        Some(LevelFilter::from_level(level_for(debug_level())).max(LevelFilter::INFO))
    }
}

/// pen's line: the local time and the message; syslog adds its own time stamp.
struct PenFormat;

impl<S, N> FormatEvent<S, N> for PenFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if SYSLOG.get().is_none() {
            write!(
                writer,
                "{}: ",
                chrono::Local::now().format("%Y-%m-%d %H:%M:%S")
            )?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Where one formatted message goes: stderr, or one syslog datagram at the event's severity.
struct PenWriter;

impl<'a> MakeWriter<'a> for PenWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter::new(Severity::Info)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter {
        EventWriter::new(Severity::from_level(*meta.level()))
    }
}

/// Collects one message and sends it when dropped.
struct EventWriter {
    severity: Severity,
    message: Vec<u8>,
}

impl EventWriter {
    fn new(severity: Severity) -> Self {
        EventWriter {
            severity,
            message: Vec::new(),
        }
    }
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.message.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        match SYSLOG.get() {
            Some(syslog) => syslog.send(self.severity, &String::from_utf8_lossy(&self.message)),
            None => {
                let _ = io::stderr().lock().write_all(&self.message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_levels_map_onto_tracing_levels() {
        assert_eq!(level_for(0), Level::WARN);
        assert_eq!(level_for(1), Level::INFO);
        assert_eq!(level_for(2), Level::DEBUG);
        assert_eq!(level_for(3), Level::TRACE);
        assert_eq!(level_for(9), Level::TRACE);
    }
}
