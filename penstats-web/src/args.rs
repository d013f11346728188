//! penstats-web's command line. Everything is checked before anything is bound or asked, so a
//! bad command line exits 1 with one message that names the argument.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::address::{Address, AddressError};
use crate::monitor::Polling;

/// Where the dashboard listens unless told: loopback only.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10081);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(300);
/// The charts keep at most this many polls.
pub const MAX_SAMPLES: u64 = 10_000;
/// Shortest poll interval and poll timeout.
const MIN_SECONDS: Duration = Duration::from_millis(100);
/// Longest interval, timeout and history: a day.
const MAX_SECONDS: f64 = 86_400.0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("--pen ADDRESS is required: pen's control port, as given to pen -C (see penstats-web --help)")]
    NoPen,
    #[error("--pen {0}")]
    Pen(#[from] AddressError),
    #[error("unknown option '{0}' (see penstats-web --help)")]
    UnknownOption(String),
    #[error("unexpected argument '{0}' (every argument is an option; see penstats-web --help)")]
    Unexpected(String),
    #[error("option '{0}' needs a value")]
    MissingValue(&'static str),
    #[error("--listen '{0}': expected ADDRESS:PORT with an IP address, such as 127.0.0.1:10081 or [::1]:10081")]
    BadListen(String),
    #[error("option '{option}': '{value}' is not a number of seconds from 0.1 to 86400")]
    BadSeconds { option: &'static str, value: String },
    #[error(
        "--history {history} with --interval {interval} keeps more than {MAX_SAMPLES} polls; \
         shorten the history or poll less often"
    )]
    TooManySamples { history: String, interval: String },
    #[error("arguments must be valid UTF-8")]
    NotUtf8,
}

/// A valid command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub polling: Polling,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Help,
    Version,
    Run(Config),
}

/// The text of `--help`; man/penstats-web.1 documents the same options (a test checks).
pub fn help() -> String {
    format!(
        "\
usage: penstats-web --pen ADDRESS [--listen ADDRESS:PORT] [options]

A live statistics dashboard for a running pen, read from its control port.

Options:
  --pen ADDRESS          pen's control port (pen -C): host:port, ::1:port or
                         [::1]:port, or a Unix socket path (anything with a '/')
  --listen ADDRESS:PORT  where the dashboard listens (default {listen});
                         port 0 picks a free port. It has no authentication:
                         keep it on loopback or behind a proxy that has
  --interval SECS        ask pen for a snapshot every SECS seconds (default {interval})
  --timeout SECS         give up on one poll after SECS seconds (default {timeout})
  --history SECS         how far back the charts go (default {history})
  -h, --help             print this help and exit
  -V, --version          print the version and exit

Pages: / (the dashboard), /status.html (pen's status page), /api/status (the
snapshot as JSON), /metrics (Prometheus). penstats-web only ever sends pen the
read-only command 'snapshot'.
",
        listen = DEFAULT_LISTEN,
        interval = DEFAULT_INTERVAL.as_secs(),
        timeout = DEFAULT_TIMEOUT.as_secs(),
        history = DEFAULT_HISTORY.as_secs(),
    )
}

pub fn version() -> String {
    format!("penstats-web {}\n", env!("CARGO_PKG_VERSION"))
}

/// Read the arguments (without the program name).
pub fn parse(args: &[std::ffi::OsString]) -> Result<Invocation, ArgsError> {
    let args: Vec<&str> = args
        .iter()
        .map(|a| a.to_str().ok_or(ArgsError::NotUtf8))
        .collect::<Result<_, _>>()?;
    let mut pen = None;
    let mut listen = DEFAULT_LISTEN;
    let mut interval = DEFAULT_INTERVAL;
    let mut timeout = DEFAULT_TIMEOUT;
    let mut history = DEFAULT_HISTORY;
    let mut rest = args.as_slice();
    while let Some((&word, tail)) = rest.split_first() {
        rest = tail;
        match word {
            "-h" | "--help" => return Ok(Invocation::Help),
            "-V" | "--version" => return Ok(Invocation::Version),
            _ => {}
        }
        if !word.starts_with("--") {
            return Err(if word.starts_with('-') && word.len() > 1 {
                ArgsError::UnknownOption(word.to_string())
            } else {
                ArgsError::Unexpected(word.to_string())
            });
        }
        let (name, attached) = match word.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (word, None),
        };
        let option: &'static str = match name {
            "--pen" => "--pen",
            "--listen" => "--listen",
            "--interval" => "--interval",
            "--timeout" => "--timeout",
            "--history" => "--history",
            _ => return Err(ArgsError::UnknownOption(word.to_string())),
        };
        let value = match attached {
            Some(value) => value,
            None => {
                let (&value, tail) = rest.split_first().ok_or(ArgsError::MissingValue(option))?;
                rest = tail;
                value
            }
        };
        match option {
            "--pen" => pen = Some(Address::parse(value)?),
            "--listen" => listen = parse_listen(value)?,
            "--interval" => interval = parse_seconds(option, value)?,
            "--timeout" => timeout = parse_seconds(option, value)?,
            _ => history = parse_seconds(option, value)?,
        }
    }
    let pen = pen.ok_or(ArgsError::NoPen)?;
    if history.as_secs_f64() / interval.as_secs_f64() > MAX_SAMPLES as f64 {
        return Err(ArgsError::TooManySamples {
            history: history.as_secs_f64().to_string(),
            interval: interval.as_secs_f64().to_string(),
        });
    }
    Ok(Invocation::Run(Config {
        listen,
        polling: Polling {
            pen,
            interval,
            timeout,
            history,
        },
    }))
}

/// An IP address and a port; a name would be resolved to one address and hide the choice.
fn parse_listen(text: &str) -> Result<SocketAddr, ArgsError> {
    text.parse::<SocketAddr>()
        .map_err(|_| ArgsError::BadListen(text.to_string()))
}

/// Seconds as a plain decimal (`2`, `0.5`), from 0.1 to a day.
fn parse_seconds(option: &'static str, text: &str) -> Result<Duration, ArgsError> {
    let bad = || ArgsError::BadSeconds {
        option,
        value: text.to_string(),
    };
    let plain = text.bytes().any(|b| b.is_ascii_digit())
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1;
    if !plain {
        return Err(bad());
    }
    let secs: f64 = text.parse().map_err(|_| bad())?;
    if !(MIN_SECONDS.as_secs_f64()..=MAX_SECONDS).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn run(words: &[&str]) -> Config {
        match parse(&os(words)).unwrap() {
            Invocation::Run(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn err(words: &[&str]) -> String {
        parse(&os(words)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let c = run(&["--pen", "127.0.0.1:10080"]);
        assert_eq!(c.listen, "127.0.0.1:10081".parse().unwrap());
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.polling.pen.to_string(), "127.0.0.1:10080");
        assert_eq!(c.polling.interval, DEFAULT_INTERVAL);
        assert_eq!(c.polling.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.polling.history, DEFAULT_HISTORY);
    }

    #[test]
    fn every_option_in_both_spellings() {
        let c = run(&[
            "--listen=[::1]:0",
            "--pen",
            "/run/pen.ctl",
            "--interval",
            "0.5",
            "--timeout=3",
            "--history",
            "600",
        ]);
        assert_eq!(c.listen, "[::1]:0".parse().unwrap());
        assert_eq!(c.polling.pen, Address::Unix("/run/pen.ctl".into()));
        assert_eq!(c.polling.interval, Duration::from_millis(500));
        assert_eq!(c.polling.timeout, Duration::from_secs(3));
        assert_eq!(c.polling.history, Duration::from_secs(600));
        assert_eq!(parse(&os(&["-h"])).unwrap(), Invocation::Help);
        assert_eq!(
            parse(&os(&["--pen", "x:1", "--version"])).unwrap(),
            Invocation::Version
        );
    }

    #[test]
    fn errors_name_the_argument() {
        assert!(err(&[]).starts_with("--pen ADDRESS is required"));
        assert_eq!(
            err(&["--pen", "127.0.0.1"]),
            "--pen '127.0.0.1': no port given (expected host:port, [::1]:port or a socket path)"
        );
        assert_eq!(err(&["--pen"]), "option '--pen' needs a value");
        assert_eq!(
            err(&["--pens", "x:1"]),
            "unknown option '--pens' (see penstats-web --help)"
        );
        assert_eq!(
            err(&["-p", "x:1"]),
            "unknown option '-p' (see penstats-web --help)"
        );
        assert!(err(&["x:1"]).starts_with("unexpected argument 'x:1'"));
        assert!(err(&["--pen", "x:1", "--listen", "localhost:80"])
            .starts_with("--listen 'localhost:80'"));
        assert!(err(&["--pen", "x:1", "--listen", "8080"]).starts_with("--listen '8080'"));
        for bad in ["0", "0.05", "-1", "1e3", "inf", "x", "", "1.2.3", "100000"] {
            assert_eq!(
                err(&["--pen", "x:1", "--interval", bad]),
                format!(
                    "option '--interval': '{bad}' is not a number of seconds from 0.1 to 86400"
                )
            );
        }
        assert!(
            err(&["--pen", "x:1", "--interval", "0.1", "--history", "86400"])
                .starts_with("--history 86400 with --interval 0.1 keeps more than 10000 polls")
        );
    }
}
