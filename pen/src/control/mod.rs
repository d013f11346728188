//! pen's control language: the commands of `penctl`, `-o` and the config file, as typed values,
//! and their replies. This module is the only code that knows the text: parsing lives in
//! `parse`, reply formatting in `exec`. Parsing checks everything (numbers, ranges, keys) before
//! anything runs, so a malformed command changes nothing.
//!
//! This version covers the commands that drive selection and relaying; the control port, ACLs,
//! logs and statistics commands arrive with their features and are answered with a clear
//! "not available" line until then.

mod exec;

pub use exec::{execute, execute_setting};

use std::time::Duration;

use crate::balancer::FastClose;

/// One field change of `server N KEY VALUE ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerChange {
    /// A host name or address (resolved when the command runs).
    Address(String),
    Port(u16),
    Max(u32),
    Hard(u32),
    Weight(u32),
    Prio(u32),
    /// Blacklist for this long from now; zero lifts the blacklist.
    Blacklist(Duration),
}

/// A parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty line or a `#` comment: does nothing, replies nothing.
    Nothing,
    Blacklist(Option<Duration>),
    ClientsMax(Option<usize>),
    Hash(bool),
    IdleTimeout(Option<Duration>),
    Keepalive(bool),
    Mode,
    Prio(bool),
    Roundrobin(bool),
    Server {
        index: usize,
        changes: Vec<ServerChange>,
    },
    Servers,
    Stubborn(bool),
    TcpFastclose(FastClose),
    TcpNodelay(bool),
    Timeout(Option<Duration>),
    Tracking(Option<Duration>),
    Weight(bool),
    /// A pen 0.34.1 command whose feature is not in this version.
    NotAvailable(String),
    /// `no X` for an X without a `no` form: pen ignores these silently.
    IgnoredNo,
    /// Not a pen command at all.
    Unknown(String),
}

/// Why a command was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("{command}: missing {what}")]
    Missing {
        command: &'static str,
        what: &'static str,
    },
    #[error("{command}: '{value}' is not {expected}")]
    BadValue {
        command: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("server: unknown key '{0}' (expected acl, address, port, max, hard, blacklist, weight or prio)")]
    UnknownKey(String),
    #[error("server: '{0}' is not an address that resolves")]
    BadAddress(String),
    #[error("server {0}: a new server needs an address before a port is of any use")]
    NoAddress(usize),
}

/// The largest server index accepted: enough for any real pool, small enough that a typo
/// (pen 0.34.1 crashed on `server 2147483647`) cannot allocate a huge table.
pub const MAX_SERVERS: usize = 4096;
/// The largest client table `clients_max` may ask for.
pub const MAX_CLIENTS: usize = 100_000_000;

/// Commands of pen 0.34.1 that belong to features this version does not have yet.
const LATER: &[&str] = &[
    "abort_on_error",
    "acl",
    "ascii",
    "client_acl",
    "close",
    "conn_max",
    "connection",
    "control",
    "control_acl",
    "debug",
    "dsr_if",
    "dsr_ip",
    "dummy",
    "exit",
    "http",
    "idlers",
    "include",
    "listen",
    "log",
    "pending_max",
    "pid",
    "recent",
    "socket",
    "source",
    "ssl_ciphers",
    "ssl_client_renegotiation_interval",
    "ssl_ocsp_response",
    "ssl_option",
    "ssl_sni_path",
    "status",
    "tarpit_acl",
    "transparent",
    "web_stats",
    "write",
    "peek",
    "block",
    "delayed_forward",
    "epoll",
    "kqueue",
    "poll",
    "select",
];

/// Parse one line. Only spaces separate words, as in pen.
pub fn parse(line: &str) -> Result<Command, ControlError> {
    let line = line.split(['\r', '\n']).next().unwrap_or("");
    let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
    let Some((&first, args)) = words.split_first() else {
        return Ok(Command::Nothing);
    };
    if first.starts_with('#') {
        return Ok(Command::Nothing);
    }
    let arg = args.first().copied();
    let cmd = match first {
        "blacklist" => Command::Blacklist(arg.map(|a| secs("blacklist", a)).transpose()?),
        "clients_max" => Command::ClientsMax(
            arg.map(|a| count("clients_max", a, 1, MAX_CLIENTS))
                .transpose()?,
        ),
        "hash" => Command::Hash(true),
        "idle_timeout" => Command::IdleTimeout(arg.map(|a| secs("idle_timeout", a)).transpose()?),
        "keepalive" => Command::Keepalive(true),
        "mode" => Command::Mode,
        "prio" => Command::Prio(true),
        "roundrobin" => Command::Roundrobin(true),
        "server" => parse_server(args)?,
        "servers" => Command::Servers,
        "stubborn" => Command::Stubborn(true),
        "tcp_fastclose" => Command::TcpFastclose(match arg {
            None => {
                return Err(ControlError::Missing {
                    command: "tcp_fastclose",
                    what: "up, down, both or off",
                })
            }
            Some("up") => FastClose::Up,
            Some("down") => FastClose::Down,
            Some("both") => FastClose::Both,
            // pen: any other word means off.
            Some(_) => FastClose::Off,
        }),
        "tcp_nodelay" => Command::TcpNodelay(true),
        "timeout" => Command::Timeout(
            arg.map(|a| {
                let t = secs("timeout", a)?;
                if t.is_zero() {
                    Err(bad("timeout", a, "a number of seconds from 1"))
                } else {
                    Ok(t)
                }
            })
            .transpose()?,
        ),
        "tracking" => Command::Tracking(arg.map(|a| secs("tracking", a)).transpose()?),
        "weight" => Command::Weight(true),
        "no" => match arg {
            Some("hash") => Command::Hash(false),
            Some("keepalive") => Command::Keepalive(false),
            Some("prio") => Command::Prio(false),
            Some("roundrobin") => Command::Roundrobin(false),
            Some("stubborn") => Command::Stubborn(false),
            Some("tcp_nodelay") => Command::TcpNodelay(false),
            Some("weight") => Command::Weight(false),
            Some(w) if LATER.contains(&w) => Command::NotAvailable(format!("no {w}")),
            _ => Command::IgnoredNo,
        },
        w if LATER.contains(&w) => Command::NotAvailable(w.to_string()),
        w => Command::Unknown(w.to_string()),
    };
    Ok(cmd)
}

fn bad(command: &'static str, value: &str, expected: &'static str) -> ControlError {
    ControlError::BadValue {
        command,
        value: value.to_string(),
        expected,
    }
}

fn secs(command: &'static str, value: &str) -> Result<Duration, ControlError> {
    value
        .parse::<u32>()
        .map(|s| Duration::from_secs(s.into()))
        .map_err(|_| bad(command, value, "a number of seconds"))
}

fn count(
    command: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<usize, ControlError> {
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(command, value, "a number in range")),
    }
}

fn parse_server(args: &[&str]) -> Result<Command, ControlError> {
    let Some((index, pairs)) = args.split_first() else {
        return Err(ControlError::Missing {
            command: "server",
            what: "server number",
        });
    };
    let index = count("server", index, 0, MAX_SERVERS - 1)?;
    if pairs.len() % 2 != 0 {
        return Err(ControlError::Missing {
            command: "server",
            what: "value after the last key",
        });
    }
    let number = |v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|n| *n <= i32::MAX as u32)
            .ok_or_else(|| bad("server", v, "a number from 0 to 2147483647"))
    };
    let changes = pairs
        .chunks(2)
        .map(|kv| {
            let (key, value) = (kv[0], kv[1]);
            Ok(match key {
                "address" => ServerChange::Address(value.to_string()),
                "port" => ServerChange::Port(
                    value
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| bad("server", value, "a port from 1 to 65535"))?,
                ),
                "max" => ServerChange::Max(number(value)?),
                "hard" => ServerChange::Hard(number(value)?),
                "weight" => ServerChange::Weight(number(value)?),
                "prio" => ServerChange::Prio(number(value)?),
                "blacklist" => ServerChange::Blacklist(secs("server", value)?),
                "acl" => {
                    return Err(ControlError::UnknownKey(
                        "acl (access lists are not available in this version)".into(),
                    ))
                }
                other => return Err(ControlError::UnknownKey(other.to_string())),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Command::Server { index, changes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pen_forms() {
        let ok = [
            ("", Command::Nothing),
            ("   ", Command::Nothing),
            ("# comment", Command::Nothing),
            ("#x y", Command::Nothing),
            ("prio", Command::Prio(true)),
            ("no  prio", Command::Prio(false)),
            ("blacklist", Command::Blacklist(None)),
            (
                "blacklist 7\nignored",
                Command::Blacklist(Some(Duration::from_secs(7))),
            ),
            (
                "tcp_fastclose nonsense",
                Command::TcpFastclose(FastClose::Off),
            ),
            ("tcp_fastclose both", Command::TcpFastclose(FastClose::Both)),
            ("no block", Command::NotAvailable("no block".into())),
            ("no frobnicate", Command::IgnoredNo),
            ("frobnicate 1", Command::Unknown("frobnicate".into())),
            ("status", Command::NotAvailable("status".into())),
            (
                "server 2 port 80 weight 3 blacklist 0",
                Command::Server {
                    index: 2,
                    changes: vec![
                        ServerChange::Port(80),
                        ServerChange::Weight(3),
                        ServerChange::Blacklist(Duration::ZERO),
                    ],
                },
            ),
        ];
        for (line, want) in ok {
            assert_eq!(parse(line).unwrap(), want, "{line:?}");
        }
    }

    #[test]
    fn bad_commands_are_errors_naming_the_value() {
        let bad = [
            ("blacklist -5", "'-5'"),
            ("blacklist x", "'x'"),
            ("timeout 0", "'0'"),
            ("server", "missing server number"),
            ("server abc port 1", "'abc'"),
            ("server -1 port 1", "'-1'"),
            ("server 2147483647 port 1", "'2147483647'"),
            ("server 0 port", "missing value"),
            ("server 0 port 0", "'0'"),
            ("server 0 colour red", "unknown key 'colour'"),
            ("clients_max 4294967296000", "'4294967296000'"),
            ("tcp_fastclose", "missing"),
        ];
        for (line, want) in bad {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
