//! pen: a load balancer for TCP services, compatible with pen 0.34.1 (same command line, same
//! behaviour where pen was right), using every core: one single-threaded tokio runtime per core.
//!
//! The crate is both the `pen` daemon and the library the other pen tools share. Its parts:
//! `addr` (address and server-spec syntax), `cli` (the command line), `control` (the control
//! language: typed commands and their replies), `balancer` (the pure selection state machine:
//! no I/O, no clock), and the tokio shell around it (`net`, `relay`, `proxy`, `run`, `logging`).
//!
//! What it deliberately does not do: no HTTP awareness beyond what pen's `-H` needs, no active
//! health checks (servers are blacklisted only when a connect fails, as in pen), no re-resolution
//! of server names after startup.

pub mod addr;
pub mod balancer;
pub mod cli;
pub mod control;
pub mod geoip;
pub mod http;
pub mod logging;
pub mod net;
pub mod proxy;
pub mod relay;
pub mod run;
pub mod udp;
