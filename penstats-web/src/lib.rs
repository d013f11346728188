//! penstats-web: a live statistics dashboard for a running pen. It asks pen's control port for a
//! `snapshot` (pen's state as JSON, `pen::balancer::Snapshot`) every interval and serves it as a
//! page that updates itself, as pen's classic status page, as JSON and as Prometheus metrics.
//!
//! What it deliberately does not do: it never sends pen anything but `snapshot` (it is
//! read-only), it never scrapes HTML, it serves only its fixed routes (nothing reaches the
//! filesystem), it never shows an old snapshot as if it were current, and it has no
//! authentication of its own (it listens on loopback unless told otherwise).
//!
//! The parts: `args` (the command line), `address` (the `--pen` forms), `fetch` (one bounded
//! poll of pen), `monitor` (the poll loop and the `View` it publishes), `history` and `chart`
//! (the last minutes, and their SVG geometry), `page` (askama templates), `metrics` (the
//! Prometheus text), `web` (the axum routes and headers) and `service` (binding, signals).

pub mod address;
pub mod args;
pub mod chart;
pub mod fetch;
pub mod history;
pub mod metrics;
pub mod monitor;
pub mod page;
pub mod service;
pub mod web;

#[cfg(test)]
mod testdata;
