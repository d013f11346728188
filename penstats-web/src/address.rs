//! `--pen ADDRESS`: pen's control port in the forms penctl takes (`host:port`, pen's unbracketed
//! `::1:port`, `[::1]:port`, or a Unix socket path: anything containing `/`).
//!
//! Parsing reads only the text, except that a service name (`lb:pen-ctl`) is looked up in
//! /etc/services once, at start-up, so a typo is reported before the service runs. Host names
//! are resolved again for every poll (`connect_targets`), so a pen that moves is found.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The longest path a Unix socket address holds (sun_path without its NUL).
pub const UNIX_PATH_MAX: usize = 107;

/// What was wrong with `--pen ADDRESS`. Every variant names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("'{0}': no port given (expected host:port, [::1]:port or a socket path)")]
    NoPort(String),
    #[error("'{0}': no host given (expected host:port, e.g. 127.0.0.1:10080)")]
    NoHost(String),
    #[error("'{spec}': port '{port}' is not a number from 1 to 65535 or a known service name")]
    BadPort { spec: String, port: String },
    #[error("'{0}': missing ']' after the IPv6 address")]
    UnclosedBracket(String),
    #[error("'{0}': expected ':' and a port after ']'")]
    JunkAfterBracket(String),
    #[error("'{0}': Unix socket path is longer than 107 bytes")]
    PathTooLong(String),
}

/// Where pen's control port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl Address {
    /// Read ADDRESS as penctl does: a `/` makes it a Unix socket path; otherwise `[host]:port`,
    /// or `host:port` split at the last `:` (so `::1:10080` is host `::1`, port 10080).
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.contains('/') {
            if text.len() > UNIX_PATH_MAX {
                return Err(AddressError::PathTooLong(text.to_string()));
            }
            return Ok(Address::Unix(PathBuf::from(text)));
        }
        let (host, port) = match text.strip_prefix('[') {
            Some(inside) => {
                let close = inside
                    .find(']')
                    .ok_or_else(|| AddressError::UnclosedBracket(text.to_string()))?;
                match &inside[close + 1..] {
                    "" => return Err(AddressError::NoPort(text.to_string())),
                    after => match after.strip_prefix(':') {
                        Some(port) => (&inside[..close], port),
                        None => return Err(AddressError::JunkAfterBracket(text.to_string())),
                    },
                }
            }
            None => text
                .rsplit_once(':')
                .ok_or_else(|| AddressError::NoPort(text.to_string()))?,
        };
        if host.is_empty() {
            return Err(AddressError::NoHost(text.to_string()));
        }
        Ok(Address::Tcp {
            host: host.to_string(),
            port: parse_port(text, port)?,
        })
    }

    /// Every socket address to try for one poll, in the resolver's order. An IP literal needs no
    /// resolver; a name asks it afresh each time.
    pub async fn tcp_targets(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

impl fmt::Display for Address {
    /// The address as a person reads it: `/run/pen.ctl`, `127.0.0.1:10080`, `[::1]:10080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A port number 1-65535 or a TCP service name from /etc/services.
fn parse_port(spec: &str, text: &str) -> Result<u16, AddressError> {
    let bad = || AddressError::BadPort {
        spec: spec.to_string(),
        port: text.to_string(),
    };
    if text.is_empty() {
        return Err(AddressError::NoPort(spec.to_string()));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => u16::try_from(n).map_err(|_| bad()),
            _ => Err(bad()),
        };
    }
    let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
    pen::addr::lookup_service(&services, text).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn the_forms_penctl_takes() {
        let cases = [
            ("127.0.0.1:10080", tcp("127.0.0.1", 10080)),
            ("localhost:10080", tcp("localhost", 10080)),
            ("::1:10041", tcp("::1", 10041)),
            ("[::1]:10041", tcp("::1", 10041)),
            ("[fe80::1%lo]:7", tcp("fe80::1%lo", 7)),
            ("lb:010080", tcp("lb", 10080)),
            ("/run/pen.ctl", Address::Unix("/run/pen.ctl".into())),
            ("./ctl", Address::Unix("./ctl".into())),
        ];
        for (text, want) in cases {
            assert_eq!(Address::parse(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn service_names_come_from_etc_services() {
        let Ok(services) = std::fs::read_to_string("/etc/services") else {
            panic!("this test needs /etc/services (Debian package netbase)");
        };
        let want = pen::addr::lookup_service(&services, "http").expect("http in /etc/services");
        assert_eq!(Address::parse("lb:http").unwrap(), tcp("lb", want));
    }

    #[test]
    fn errors_name_the_address() {
        let cases = [
            ("127.0.0.1", "'127.0.0.1': no port given"),
            ("", "'': no port given"),
            ("host:", "'host:': no port given"),
            ("[::1]", "'[::1]': no port given"),
            (":10080", "':10080': no host given"),
            ("[::1:80", "'[::1:80': missing ']'"),
            ("[::1]80", "'[::1]80': expected ':'"),
            ("h:0", "'h:0': port '0' is not a number"),
            ("h:65536", "'h:65536': port '65536'"),
            ("h:no-such-service-x", "port 'no-such-service-x'"),
        ];
        for (text, want) in cases {
            let err = Address::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(want) || err.contains(want), "{text}: {err}");
        }
        let long = format!("/{}", "p".repeat(UNIX_PATH_MAX));
        let err = Address::parse(&long).unwrap_err().to_string();
        assert!(err.ends_with("longer than 107 bytes"), "{err}");
    }

    #[test]
    fn display_brackets_ipv6() {
        assert_eq!(Address::parse("::1:5").unwrap().to_string(), "[::1]:5");
        assert_eq!(Address::parse("h:5").unwrap().to_string(), "h:5");
        assert_eq!(Address::parse("/a/b").unwrap().to_string(), "/a/b");
    }
}
