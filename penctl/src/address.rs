//! The ADDRESS argument: pen's control port as `host:port`, `::1:port`, `[::1]:port` or a Unix
//! socket path, and its resolution.
//!
//! Parsing looks only at the text; `resolve` is the one place that reads /etc/services or asks
//! the resolver.

use std::ffi::{OsStr, OsString};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::Error;

/// penctl 0.34.1 refused (with "Overlong arg") a TCP address that did not fit its 1024-byte
/// buffer with a NUL.
pub const MAX_ADDRESS: usize = 1023;
/// The longest path a Unix socket address holds (sun_path without its NUL). penctl 0.34.1 cut
/// longer paths short silently and connected to whatever the shorter path named.
pub const UNIX_PATH_MAX: usize = 107;

/// The resolver's words for a name it cannot find, and for an unknown service name (glibc's
/// `gai_strerror` texts, which penctl 0.34.1 printed after "getaddrinfo: ").
const NO_NAME: &str = "Name or service not known";
const NO_SERVICE: &str = "Servname not supported for ai_socktype";

/// Where pen's control port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp { host: OsString, port: Port },
}

/// The part after the last `:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    Number(u16),
    /// A name from /etc/services, looked up when the address is resolved.
    Service(String),
}

impl Address {
    /// Read ADDRESS as penctl 0.34.1 did, plus brackets: anything containing `/` is a Unix
    /// socket path; otherwise `[host]:port`, or `host:port` split at the **last** `:` (so
    /// `::1:10080` is host `::1`, port 10080).
    pub fn parse(arg: &OsStr) -> Result<Address, Error> {
        let bytes = arg.as_bytes();
        let lossy = || arg.to_string_lossy().into_owned();
        if bytes.contains(&b'/') {
            if bytes.len() > UNIX_PATH_MAX {
                return Err(Error::PathTooLong(lossy()));
            }
            return Ok(Address::Unix(PathBuf::from(arg)));
        }
        if bytes.len() > MAX_ADDRESS {
            return Err(Error::OverlongArg(lossy()));
        }
        let (host, port) = match bytes.strip_prefix(b"[") {
            Some(inside) => {
                let close = inside
                    .iter()
                    .position(|&b| b == b']')
                    .ok_or_else(|| Error::UnclosedBracket(lossy()))?;
                match &inside[close + 1..] {
                    [] => return Err(Error::NoPort),
                    [b':', port @ ..] => (&inside[..close], port),
                    _ => return Err(Error::JunkAfterBracket(lossy())),
                }
            }
            None => {
                let colon = bytes
                    .iter()
                    .rposition(|&b| b == b':')
                    .ok_or(Error::NoPort)?;
                (&bytes[..colon], &bytes[colon + 1..])
            }
        };
        Ok(Address::Tcp {
            host: OsStr::from_bytes(host).to_os_string(),
            port: parse_port(port)?,
        })
    }
}

/// A port number 1–65535, or a service name. penctl 0.34.1 gave any text to getaddrinfo, which
/// took `+80`, ` 80` and `65616` (as port 80); those are refused here.
fn parse_port(text: &[u8]) -> Result<Port, Error> {
    let bad = || Error::BadPort(String::from_utf8_lossy(text).into_owned());
    if text.is_empty() {
        return Err(Error::NoPort);
    }
    if text.iter().all(u8::is_ascii_digit) {
        let digits = std::str::from_utf8(text).map_err(|_| bad())?;
        return match digits.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(Port::Number(n as u16)),
            _ => Err(bad()),
        };
    }
    let name = std::str::from_utf8(text).map_err(|_| bad())?;
    Ok(Port::Service(name.to_string()))
}

/// Every address `host` resolves to, in the resolver's order, with the port. The service name is
/// looked up first, as getaddrinfo does, so an unknown service is reported even for an unknown
/// host.
pub fn resolve(host: &OsStr, port: &Port) -> Result<Vec<SocketAddr>, Error> {
    let port = match port {
        Port::Number(n) => *n,
        Port::Service(name) => {
            let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
            pen::addr::lookup_service(&services, name)
                .ok_or_else(|| Error::Resolve(NO_SERVICE.into()))?
        }
    };
    let host = host
        .to_str()
        .ok_or_else(|| Error::Resolve(NO_NAME.into()))?;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Resolve(resolver_reason(&e)))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Resolve(NO_NAME.into()));
    }
    Ok(addrs)
}

/// The resolver's reason without std's preamble, so that the message reads as penctl 0.34.1's
/// `getaddrinfo: <gai_strerror text>`.
fn resolver_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.strip_prefix("failed to lookup address information: ") {
        Some(reason) => reason.to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Address, Error> {
        Address::parse(OsStr::new(s))
    }

    fn tcp(host: &str, port: Port) -> Address {
        Address::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn forms() {
        let cases = [
            ("127.0.0.1:10080", tcp("127.0.0.1", Port::Number(10080))),
            ("localhost:10080", tcp("localhost", Port::Number(10080))),
            ("::1:10041", tcp("::1", Port::Number(10041))),
            (":::10041", tcp("::", Port::Number(10041))),
            ("[::1]:10041", tcp("::1", Port::Number(10041))),
            ("[fe80::1%lo]:7", tcp("fe80::1%lo", Port::Number(7))),
            ("host:http", tcp("host", Port::Service("http".into()))),
            (":80", tcp("", Port::Number(80))),
            ("lb:010080", tcp("lb", Port::Number(10080))),
            ("/tmp/pen.ctl", Address::Unix("/tmp/pen.ctl".into())),
            ("./ctl", Address::Unix("./ctl".into())),
            ("a:b/c", Address::Unix("a:b/c".into())),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn errors() {
        let cases = [
            ("127.0.0.1", "no port given"),
            ("", "no port given"),
            ("host:", "no port given"),
            ("[::1]", "no port given"),
            ("[::1]:", "no port given"),
            ("[::1:80", "missing ']' after the IPv6 address in '[::1:80'"),
            ("[::1]80", "expected ':' and a port after ']' in '[::1]80'"),
            (
                "h:0",
                "port '0' is not a number from 1 to 65535 or a service name",
            ),
            ("h:65536", "port '65536'"),
            ("h:99999999999999999999", "port '99999999999999999999'"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text}: {err}");
        }
    }

    #[test]
    fn length_limits_as_penctl_0_34_1() {
        let fits = format!("{}:1", "h".repeat(MAX_ADDRESS - 2));
        assert!(parse(&fits).is_ok());
        let long = format!("{}:1", "h".repeat(MAX_ADDRESS - 1));
        let err = parse(&long).unwrap_err().to_string();
        assert_eq!(err, format!("Overlong arg '{long}'"));
        let path = format!("/{}", "p".repeat(UNIX_PATH_MAX - 1));
        assert!(parse(&path).is_ok());
        let err = parse(&format!("{path}p")).unwrap_err().to_string();
        assert!(err.contains("longer than 107 bytes"), "{err}");
    }

    #[test]
    fn resolution() {
        let v4 = resolve(OsStr::new("127.0.0.1"), &Port::Number(7)).unwrap();
        assert_eq!(v4, vec!["127.0.0.1:7".parse().unwrap()]);
        let v6 = resolve(OsStr::new("::1"), &Port::Number(7)).unwrap();
        assert_eq!(v6, vec!["[::1]:7".parse().unwrap()]);
        // A short IPv4 form goes to the system resolver, which accepts it as penctl 0.34.1 did.
        let short = resolve(OsStr::new("127.1"), &Port::Number(7)).unwrap();
        assert_eq!(short, vec!["127.0.0.1:7".parse().unwrap()]);
        let err = resolve(
            OsStr::new("127.0.0.1"),
            &Port::Service("no-such-svc".into()),
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "getaddrinfo: Servname not supported for ai_socktype"
        );
        // The reserved .invalid domain never resolves; the resolver's reason is kept.
        let err = resolve(OsStr::new("no.such.host.invalid"), &Port::Number(7)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("getaddrinfo: ") && !text.contains("failed to lookup"),
            "{text}"
        );
    }
}
