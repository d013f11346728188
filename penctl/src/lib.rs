//! penctl: send one command to a running pen's control port and print whatever pen replies.
//!
//! It behaves as penctl 0.34.1 does, byte for byte where a script could notice: the same usage
//! line, the same address forms (`host:port` split at the last `:`, so `::1:10080` works; `/`
//! means a Unix socket), the same request (the words joined by single spaces, a newline, one
//! write), the same 1021-character limit, the same error texts and exit statuses. It adds
//! bracketed IPv6 (`[::1]:10080`), trying every address a name resolves to, a connect timeout and
//! a reply timeout, `--help` and `--version`.
//!
//! What it deliberately does not do: it does not know pen's control language (pen checks the
//! command and answers; penctl only carries the words and the reply), and it never retries a
//! command, because a command may change pen's state.
//!
//! The parts: `args` (the command line), `address` (the ADDRESS argument and its resolution) and
//! `exchange` (connect, send, copy the reply until EOF).

pub mod address;
pub mod args;
pub mod exchange;

use std::io;
use std::time::Duration;

/// Everything that makes penctl exit with status 1. The texts of penctl 0.34.1 are kept exactly
/// (scripts may match them); the conditions 0.34.1 did not have get texts in the same style.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no port given")]
    NoPort,
    /// An ADDRESS of 1024 or more characters (as penctl 0.34.1 counts).
    #[error("Overlong arg '{0}'")]
    OverlongArg(String),
    /// The command words, joined, are longer than `args::MAX_COMMAND`.
    #[error("Overlong argument list")]
    OverlongList,
    /// The resolver's own reason, as `gai_strerror` words it.
    #[error("getaddrinfo: {0}")]
    Resolve(String),
    #[error("error opening socket")]
    Socket,
    #[error("error connecting to server")]
    Connect,
    #[error("error connecting to server: no connection within {} seconds", seconds(.0))]
    ConnectTimeout(Duration),
    #[error("error writing to socket")]
    Send,
    #[error("error reading from socket")]
    Receive,
    #[error("error reading from socket: the reply did not end within {} seconds", seconds(.0))]
    ReplyTimeout(Duration),
    /// Standard output refused the reply (a closed pipe is `io::ErrorKind::BrokenPipe`).
    #[error("error writing to stdout")]
    Stdout(io::ErrorKind),
    #[error("port '{0}' is not a number from 1 to 65535 or a service name")]
    BadPort(String),
    #[error("missing ']' after the IPv6 address in '{0}'")]
    UnclosedBracket(String),
    #[error("expected ':' and a port after ']' in '{0}'")]
    JunkAfterBracket(String),
    #[error("Unix socket path '{0}' is longer than 107 bytes")]
    PathTooLong(String),
    #[error("unknown option '{0}' (see penctl --help)")]
    UnknownOption(String),
    #[error("option '{0}' needs a number of seconds")]
    MissingValue(&'static str),
    #[error("option '{option}': '{value}' is not a number of seconds")]
    BadSeconds { option: &'static str, value: String },
}

/// `5` for five seconds, `0.5` for half a second.
fn seconds(d: &Duration) -> String {
    d.as_secs_f64().to_string()
}
