//! Fuzz targets (reliability catalogue §4.3). Each target takes arbitrary bytes and panics only
//! when pen's code panics or breaks an invariant the target states. The same functions run
//! under libFuzzer (`tests/fuzz`, nightly) and in the stable test suite, which replays the
//! committed corpus and mutates it for a bounded time (`tests/tests/fuzz.rs`).
//!
//! A target must not touch the network or the clock, and must return quickly for any input:
//! inputs that would make pen resolve a host name are skipped, since a name lookup can wait
//! on DNS.

pub mod addr;
pub mod cli;
pub mod control;
pub mod escape;
pub mod logs;
pub mod xff;

/// A named fuzz target.
pub struct Target {
    /// Also the name of its libFuzzer binary and of its corpus directory.
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "server_spec",
        run: addr::server_spec,
    },
    Target {
        name: "listen_addr",
        run: addr::listen_addr,
    },
    Target {
        name: "command_line",
        run: cli::command_line,
    },
    Target {
        name: "config_file",
        run: cli::config_file,
    },
    Target {
        name: "control_stream",
        run: control::control_stream,
    },
    Target {
        name: "xff_rewriter",
        run: xff::xff_rewriter,
    },
    Target {
        name: "pen_log_line",
        run: logs::pen_log_line,
    },
    Target {
        name: "web_log_line",
        run: logs::web_log_line,
    },
    Target {
        name: "timestamp",
        run: logs::timestamp,
    },
    Target {
        name: "html_escape",
        run: escape::html_escape,
    },
    Target {
        name: "log_escape",
        run: escape::log_escape,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
