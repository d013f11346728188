//! pen: a load balancer for TCP services, compatible with pen 0.34.1 (same command line, same
//! behaviour where pen was right), using every core: one epoll loop per core for the data plane
//! (`engine`), and a tokio runtime on the main thread for the control plane.
//!
//! The crate is both the `pen` daemon and the library the other pen tools share. Its parts:
//! `addr` (address and server-spec syntax), `cli` (the command line), `control` (the control
//! language: typed commands and their replies), `balancer` (the pure selection state machine:
//! no I/O, no clock), `accesslog` (pen's log formats, shared with penlogd and mergelogs),
//! `getopt` (the option grammar of the smaller tools), the shell around it (`engine`, `net`,
//! `relay`, `shared`, `reqlog`, `run`, `logging`, `dump`), the process plumbing (`daemon`: fork,
//! pid file, chroot, privileges; `safe_file`), and the statistics output (`stats`: pen's HTML
//! page and text statistics), `tls` (TLS termination) and `dsr` (direct server return).
//!
//! What it deliberately does not do: no HTTP awareness beyond what pen's `-H` needs, no active
//! health checks (servers are blacklisted only when a connect fails, as in pen), no re-resolution
//! of server names after startup.

pub mod accesslog;
pub mod addr;
pub mod admin;
pub mod balancer;
pub mod cli;
pub mod control;
pub mod control_port;
pub mod daemon;
pub mod dsr;
pub mod dump;
pub mod engine;
pub mod geoip;
pub mod getopt;
pub mod http;
pub mod idlers;
pub mod logging;
pub mod net;
pub mod relay;
pub mod reqlog;
pub mod run;
pub mod safe_file;
pub mod shared;
pub mod stats;
pub mod tls;
pub mod tool;
pub mod udp;
