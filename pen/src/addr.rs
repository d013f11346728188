//! Addresses as pen's command line writes them: listeners (`port`, `host:port`, `::1:8080`,
//! `[::1]:8080`, `/path/to/socket`) and server specs (`host[:port[:maxc[:hard[:weight[:prio]]]]]`).
//!
//! Parsing is split from resolution: `parse_*` only looks at the text, `resolve_*` turns a host
//! name into an address (the only place that may touch DNS or /etc/services).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Where pen accepts clients (or control connections).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// The port that servers given without one inherit (pen's "default port"). Unix listeners
    /// have none.
    pub fn default_port(&self) -> Option<u16> {
        match self {
            ListenAddr::Tcp(sa) => Some(sa.port()),
            ListenAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(sa) => write!(f, "{sa}"),
            ListenAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Where a server (backend) is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Backend {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Backend {
    /// The address as pen prints it in `servers` and logs (no port, no brackets).
    pub fn host_string(&self) -> String {
        match self {
            Backend::Tcp(sa) => sa.ip().to_string(),
            Backend::Unix(p) => p.display().to_string(),
        }
    }

    /// The port as pen prints it; pen shows 1 for Unix-socket servers.
    pub fn port(&self) -> u16 {
        match self {
            Backend::Tcp(sa) => sa.port(),
            Backend::Unix(_) => 1,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Tcp(sa) => write!(f, "{sa}"),
            Backend::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A server spec from the command line, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub backend: Backend,
    pub maxc: u32,
    pub hard: u32,
    pub weight: u32,
    pub prio: u32,
}

/// What was wrong with an address or a spec. Every variant names the text it refers to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("'{0}': empty address")]
    Empty(String),
    #[error("'{spec}': empty {field}")]
    EmptyField { spec: String, field: &'static str },
    #[error("'{spec}': port '{port}' is not a number from 1 to 65535 or a known service name")]
    BadPort { spec: String, port: String },
    #[error("'{spec}': {field} '{value}' is not a number from 0 to 2147483647")]
    BadNumber {
        spec: String,
        field: &'static str,
        value: String,
    },
    #[error("'{0}': too many fields (expected host[:port[:maxc[:hard[:weight[:prio]]]]])")]
    TooManyFields(String),
    #[error("'{0}': missing ']' after an IPv6 address")]
    UnclosedBracket(String),
    #[error("'{0}': expected ':' after ']'")]
    JunkAfterBracket(String),
    #[error("'{0}': IPv6 server addresses must be written in brackets, as in [::1]:8080")]
    UnbracketedIpv6(String),
    #[error("'{0}': unknown or invalid address")]
    Unresolvable(String),
    #[error("'{spec}': no port given, and the listener (a Unix socket) has none to lend")]
    NoPort { spec: String },
    #[error("'{0}': Unix socket path is longer than 107 bytes")]
    PathTooLong(String),
}

/// The longest path a Unix socket address can hold (sun_path minus its NUL).
const UNIX_PATH_MAX: usize = 107;

/// A Unix socket path (a listen address or server with a `/`): at most `UNIX_PATH_MAX` bytes,
/// or it could never be bound or connected to.
pub fn unix_path(s: &str) -> Result<PathBuf, AddrError> {
    if s.len() > UNIX_PATH_MAX {
        return Err(AddrError::PathTooLong(s.to_string()));
    }
    Ok(PathBuf::from(s))
}

/// Parse a listener address as pen does, plus brackets. No DNS for literals; names resolve.
pub fn parse_listen(s: &str) -> Result<ListenAddr, AddrError> {
    if s.is_empty() {
        return Err(AddrError::Empty(s.to_string()));
    }
    if s.contains('/') {
        return unix_path(s).map(ListenAddr::Unix);
    }
    let (host, port) = split_host_port(s)?;
    let (ip, port) = match port {
        Some(port) => (resolve_host(s, host)?, parse_port(s, port)?),
        // No ':' at all: the whole string is the port and the host is every IPv4 address.
        None => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), parse_port(s, host)?),
    };
    Ok(ListenAddr::Tcp(SocketAddr::new(ip, port)))
}

/// Split `host:port`, `[v6]:port` or pen's unbracketed `v6:port` (at the last colon).
/// Returns the host and, if there was a colon, the port text.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), AddrError> {
    if let Some(rest) = s.strip_prefix('[') {
        let close = rest
            .find(']')
            .ok_or_else(|| AddrError::UnclosedBracket(s.to_string()))?;
        let host = &rest[..close];
        let after = &rest[close + 1..];
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(AddrError::JunkAfterBracket(s.to_string())),
        };
    }
    match s.rfind(':') {
        Some(i) => Ok((&s[..i], Some(&s[i + 1..]))),
        None => Ok((s, None)),
    }
}

/// A port number 1–65535 or a service name from /etc/services.
fn parse_port(spec: &str, text: &str) -> Result<u16, AddrError> {
    let bad = || AddrError::BadPort {
        spec: spec.to_string(),
        port: text.to_string(),
    };
    if text.is_empty() {
        return Err(AddrError::EmptyField {
            spec: spec.to_string(),
            field: "port",
        });
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
            _ => Err(bad()),
        };
    }
    let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
    lookup_service(&services, text).ok_or_else(bad)
}

/// Find a TCP service name (or alias) in the text of /etc/services.
pub fn lookup_service(services: &str, name: &str) -> Option<u16> {
    services.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let service = words.next()?;
        let (port, proto) = words.next()?.split_once('/')?;
        let named = service == name || words.any(|alias| alias == name);
        (named && proto == "tcp")
            .then(|| port.parse().ok())
            .flatten()
    })
}

/// Resolve a host name or address literal (first result), as `server N address` needs.
pub fn resolve(host: &str) -> Result<IpAddr, AddrError> {
    resolve_host(host, host)
}

/// Resolve a host: literals directly, names through the system resolver (first result).
fn resolve_host(spec: &str, host: &str) -> Result<IpAddr, AddrError> {
    if host.is_empty() {
        return Err(AddrError::EmptyField {
            spec: spec.to_string(),
            field: "host",
        });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    (host, 0u16)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|sa| sa.ip())
        .ok_or_else(|| AddrError::Unresolvable(spec.to_string()))
}

fn looks_like_unbracketed_ipv6(s: &str) -> bool {
    let is_v6 = |t: &str| t.parse::<std::net::Ipv6Addr>().is_ok();
    s.matches(':').count() >= 2
        && (is_v6(s)
            || s.split(':').next().is_some_and(str::is_empty)
            || s.rsplit_once(':').is_some_and(|(h, _)| is_v6(h)))
}

fn parse_count(spec: &str, field: &'static str, text: &str) -> Result<u32, AddrError> {
    match text.parse::<u32>() {
        Ok(n) if n <= i32::MAX as u32 => Ok(n),
        _ => Err(AddrError::BadNumber {
            spec: spec.to_string(),
            field,
            value: text.to_string(),
        }),
    }
}

/// Parse and resolve a server spec. `default_port` is the listener's port (None for a Unix
/// listener, where a TCP server must then name its port).
pub fn parse_server(s: &str, default_port: Option<u16>) -> Result<ServerSpec, AddrError> {
    if s.is_empty() {
        return Err(AddrError::Empty(s.to_string()));
    }
    let (host, rest): (&str, Option<&str>) = if let Some(inner) = s.strip_prefix('[') {
        let close = inner
            .find(']')
            .ok_or_else(|| AddrError::UnclosedBracket(s.to_string()))?;
        let after = &inner[close + 1..];
        let rest = match after.strip_prefix(':') {
            Some(r) => Some(r),
            None if after.is_empty() => None,
            None => return Err(AddrError::JunkAfterBracket(s.to_string())),
        };
        (&inner[..close], rest)
    } else if looks_like_unbracketed_ipv6(s) {
        // `::1:9004` could be [::1]:9004 or [::1:9004]; pen fails on it, we ask for brackets.
        return Err(AddrError::UnbracketedIpv6(s.to_string()));
    } else {
        match s.split_once(':') {
            Some((h, r)) => (h, Some(r)),
            None => (s, None),
        }
    };
    let fields: Vec<&str> = rest.map(|r| r.split(':').collect()).unwrap_or_default();
    if fields.len() > 5 {
        // An unbracketed IPv6 address splits into many empty or hex fields.
        if host.is_empty() || host.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(AddrError::UnbracketedIpv6(s.to_string()));
        }
        return Err(AddrError::TooManyFields(s.to_string()));
    }
    if host.is_empty() && !s.starts_with('[') && rest.is_some_and(|r| r.starts_with(':')) {
        return Err(AddrError::UnbracketedIpv6(s.to_string()));
    }
    let number = |i: usize, name: &'static str| -> Result<u32, AddrError> {
        fields
            .get(i)
            .map(|t| parse_count(s, name, t))
            .unwrap_or(Ok(0))
    };
    let maxc = number(1, "maxc")?;
    let hard = number(2, "hard")?;
    let weight = number(3, "weight")?;
    let prio = number(4, "prio")?;
    let backend = if host.contains('/') {
        Backend::Unix(unix_path(host)?)
    } else {
        let port = match fields.first() {
            Some(p) => parse_port(s, p)?,
            None => default_port.ok_or_else(|| AddrError::NoPort {
                spec: s.to_string(),
            })?,
        };
        Backend::Tcp(SocketAddr::new(resolve_host(s, host)?, port))
    };
    Ok(ServerSpec {
        backend,
        maxc,
        hard,
        weight,
        prio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> ListenAddr {
        ListenAddr::Tcp(s.parse().unwrap())
    }

    #[test]
    fn listen_forms() {
        let cases = [
            ("8080", tcp("0.0.0.0:8080")),
            ("127.0.0.1:8080", tcp("127.0.0.1:8080")),
            ("::1:8080", tcp("[::1]:8080")),
            (":::8080", tcp("[::]:8080")),
            ("[::1]:8080", tcp("[::1]:8080")),
            ("localhost:8080", tcp("127.0.0.1:8080")),
            ("/tmp/pen.sock", ListenAddr::Unix("/tmp/pen.sock".into())),
        ];
        for (text, want) in cases {
            assert_eq!(parse_listen(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn listen_errors_name_the_argument() {
        for bad in [
            "",
            "0",
            "65536",
            "127.0.0.1:",
            "127.0.0.1:x9",
            "[::1",
            "[::1]x",
            "nonexistent.invalid:80",
        ] {
            let err = parse_listen(bad).unwrap_err().to_string();
            assert!(
                err.contains(&format!("'{}", &bad[..bad.len().min(3)])),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn server_forms() {
        let s = parse_server("127.0.0.1:9001:10:20:3:4", Some(80)).unwrap();
        assert_eq!(s.backend, Backend::Tcp("127.0.0.1:9001".parse().unwrap()));
        assert_eq!((s.maxc, s.hard, s.weight, s.prio), (10, 20, 3, 4));
        let s = parse_server("127.0.0.1", Some(80)).unwrap();
        assert_eq!(s.backend, Backend::Tcp("127.0.0.1:80".parse().unwrap()));
        let s = parse_server("[::1]:9004:1", Some(80)).unwrap();
        assert_eq!(s.backend, Backend::Tcp("[::1]:9004".parse().unwrap()));
        assert_eq!(s.maxc, 1);
        let s = parse_server("[::1]", Some(80)).unwrap();
        assert_eq!(s.backend, Backend::Tcp("[::1]:80".parse().unwrap()));
        let s = parse_server("/run/app.sock", None).unwrap();
        assert_eq!(s.backend, Backend::Unix("/run/app.sock".into()));
        assert_eq!(s.backend.port(), 1);
    }

    #[test]
    fn server_errors() {
        let cases: [(&str, Option<u16>, &str); 12] = [
            ("host:", Some(1), "empty port"),
            (":80", Some(1), "empty host"),
            ("127.0.0.1:99999", Some(1), "port '99999'"),
            ("127.0.0.1:0", Some(1), "port '0'"),
            ("127.0.0.1:80:abc", Some(1), "maxc 'abc'"),
            ("127.0.0.1:80:1:2:3:-4", Some(1), "prio '-4'"),
            ("[::1", Some(1), "missing ']'"),
            ("::1:9004", Some(1), "in brackets"),
            ("fe80::1", Some(1), "in brackets"),
            (
                "nonexistent.invalid:80",
                Some(1),
                "unknown or invalid address",
            ),
            ("127.0.0.1:1:2:3:4:5:6", Some(1), "too many fields"),
            ("127.0.0.1", None, "no port given"),
        ];
        for (text, port, want) in cases {
            let err = parse_server(text, port).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn services_file() {
        let text = "# comment\nsmtp\t\t25/tcp\t\tmail\nhttp 80/tcp www # WWW\ndomain 53/udp\n";
        assert_eq!(lookup_service(text, "smtp"), Some(25));
        assert_eq!(lookup_service(text, "mail"), Some(25));
        assert_eq!(lookup_service(text, "www"), Some(80));
        assert_eq!(lookup_service(text, "domain"), None);
        assert_eq!(lookup_service(text, "nope"), None);
    }
}
