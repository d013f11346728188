//! Fuzz targets: pen's address parsers, `pen::addr::parse_server` and `parse_listen`.
//!
//! Both parsers resolve a host name through the system resolver, and a service-name port
//! through /etc/services. The second is harmless; the first could wait on DNS, so each target
//! first asks `server_resolves` or `listen_resolves` (which split the text exactly as pen
//! does) and skips an input whose host part is neither an IP literal nor a path. The other
//! fuzz modules use the same two filters for the addresses inside command lines and control
//! commands.

use std::net::{IpAddr, Ipv6Addr};

use pen::addr::{self, AddrError, Backend, ListenAddr, ServerSpec};
use pen::control::{self, Command, ServerAddress, ServerChange};

/// Would `parse_listen(s)` ask the resolver? Mirrors its steps up to the lookup: a path, a
/// bare port or `[port]` never resolve, and a malformed bracket fails first.
pub(crate) fn listen_resolves(s: &str) -> bool {
    if s.is_empty() || s.contains('/') {
        return false;
    }
    let host = match s.strip_prefix('[') {
        Some(rest) => {
            let Some(close) = rest.find(']') else {
                return false;
            };
            if !rest[close + 1..].starts_with(':') {
                return false;
            }
            &rest[..close]
        }
        None => match s.rfind(':') {
            Some(i) => &s[..i],
            None => return false,
        },
    };
    host_resolves(host)
}

/// A server spec split as `parse_server` splits it: the host (inside brackets, or before the
/// first colon) and the fields after it. None where pen refuses the text before splitting
/// the fields (an empty spec, a bad bracket, an unbracketed IPv6 address, too many fields).
fn split_spec(s: &str) -> Option<(&str, Vec<&str>)> {
    if s.is_empty() {
        return None;
    }
    let (host, rest) = if let Some(inner) = s.strip_prefix('[') {
        let close = inner.find(']')?;
        let after = &inner[close + 1..];
        let rest = match after.strip_prefix(':') {
            Some(r) => Some(r),
            None if after.is_empty() => None,
            None => return None,
        };
        (&inner[..close], rest)
    } else if looks_like_unbracketed_ipv6(s) {
        return None;
    } else {
        match s.split_once(':') {
            Some((h, r)) => (h, Some(r)),
            None => (s, None),
        }
    };
    let fields: Vec<&str> = rest.map(|r| r.split(':').collect()).unwrap_or_default();
    if fields.len() > 5
        || (host.is_empty() && !s.starts_with('[') && rest.is_some_and(|r| r.starts_with(':')))
    {
        return None;
    }
    Some((host, fields))
}

/// Would `parse_server(s, default_port)` ask the resolver? Mirrors every check pen makes
/// before the lookup (brackets, unbracketed IPv6, field count, numbers, path, port).
pub(crate) fn server_resolves(s: &str, default_port: Option<u16>) -> bool {
    let Some((host, fields)) = split_spec(s) else {
        return false;
    };
    let count_ok = |t: &&str| t.parse::<u32>().is_ok_and(|n| n <= i32::MAX as u32);
    if !fields.iter().skip(1).all(count_ok) || host.contains('/') {
        return false;
    }
    let port_ok = || match fields.first() {
        Some(p) => port_parses(p),
        None => default_port.is_some(),
    };
    host_resolves(host) && port_ok()
}

/// `LogTarget::parse` (pen's `-l`) resolves the host of `HOST:PORT`.
pub(crate) fn log_resolves(v: &str) -> bool {
    if !control::log_is_network(v) {
        return false;
    }
    let split = match v.strip_prefix('[') {
        Some(rest) => rest.split_once("]:"),
        None => v.rsplit_once(':'),
    };
    let Some((host, port)) = split else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p != 0) && host_resolves(host)
}

/// pen's `resolve_host`: empty is an error, a literal is parsed, anything else is looked up.
fn host_resolves(host: &str) -> bool {
    !host.is_empty() && host.parse::<IpAddr>().is_err()
}

/// pen's `parse_port`, without the error: a number 1-65535 or a TCP service name.
fn port_parses(text: &str) -> bool {
    if text.is_empty() {
        return false;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    }
    let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
    addr::lookup_service(&services, text).is_some()
}

/// A copy of pen's private rule (`addr::looks_like_unbracketed_ipv6`): such a spec is refused
/// before any lookup.
fn looks_like_unbracketed_ipv6(s: &str) -> bool {
    let is_v6 = |t: &str| t.parse::<Ipv6Addr>().is_ok();
    s.matches(':').count() >= 2
        && (is_v6(s)
            || s.split(':').next().is_some_and(str::is_empty)
            || s.rsplit_once(':').is_some_and(|(h, _)| is_v6(h)))
}

/// The spec as a command line would give it: `host:port:maxc:hard:weight:prio`, with
/// brackets around an IPv6 address, and around a path that brackets or colons would
/// otherwise split. A Unix server's port field is pen's 1 (ignored when parsed).
fn spec_text(spec: &ServerSpec) -> String {
    let host = match &spec.backend {
        Backend::Tcp(sa) if sa.is_ipv6() => format!("[{}]", sa.ip()),
        Backend::Tcp(sa) => sa.ip().to_string(),
        Backend::Unix(p) => {
            let p = p.display().to_string();
            if p.contains(':') || p.starts_with('[') {
                format!("[{p}]")
            } else {
                p
            }
        }
    };
    format!(
        "{host}:{}:{}:{}:{}:{}",
        spec.backend.port(),
        spec.maxc,
        spec.hard,
        spec.weight,
        spec.prio
    )
}

/// A server spec (`host[:port[:maxc[:hard[:weight[:prio]]]]]`, brackets, Unix paths).
///
/// The input is the spec; a leading `\x01` byte is dropped and means "the listener has no port
/// to lend" (a Unix listener), otherwise the listener's port is 8080. Inputs that are not
/// UTF-8, or would make pen look up a host name, are skipped.
///
/// Invariants:
/// - An accepted spec is what was written: the host (an IP literal, or a path of at most 107
///   bytes containing `/`), the port (1 to 65535; the listener's when none is written), and
///   maxc, hard, weight and prio from fields 2 to 5 (0 when missing, at most 2147483647).
/// - It round-trips through the command-line form (`spec_text`): parsing that gives the same
///   spec.
/// - It round-trips through the form `write` saves servers in (`server N acl 0 address A port
///   P max M hard H weight W prio P`, with pen's `host_string` and `port`): the control parser
///   gives back exactly those fields. Skipped for a path containing a space or a line end,
///   which pen's control language cannot carry in one word.
/// - A refused spec's message quotes the whole spec (`'spec': ...`), or, for a path that is too
///   long, the path.
pub fn server_spec(data: &[u8]) {
    let (text, default_port) = match data.split_first() {
        Some((1, rest)) => (rest, None),
        _ => (data, Some(8080)),
    };
    let Ok(s) = std::str::from_utf8(text) else {
        return;
    };
    if server_resolves(s, default_port) {
        return;
    }
    let spec = match addr::parse_server(s, default_port) {
        Ok(spec) => spec,
        Err(e) => {
            let message = e.to_string();
            let named = match &e {
                AddrError::PathTooLong(path) => {
                    assert!(s.contains(path.as_str()), "{s:?}: {message}");
                    path.as_str()
                }
                _ => s,
            };
            assert!(
                message.starts_with(&format!("'{named}'")),
                "the error does not name {s:?}: {message}"
            );
            return;
        }
    };
    let (host, fields) = split_spec(s).expect("pen split it");
    let counts = [spec.maxc, spec.hard, spec.weight, spec.prio];
    for (i, n) in counts.into_iter().enumerate() {
        assert!(n <= i32::MAX as u32, "{s:?}: count {n}");
        let written = fields.get(i + 1).map_or(Ok(0), |t| t.parse::<u32>());
        assert_eq!(Ok(n), written, "{s:?}: count {i} is not the one written");
    }
    match &spec.backend {
        Backend::Tcp(sa) => {
            assert_ne!(sa.port(), 0, "{s:?}: port 0 accepted");
            assert_eq!(host.parse(), Ok(sa.ip()), "{s:?}: not the address written");
            let port = match fields.first() {
                Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok(),
                Some(_) => Some(sa.port()),
                None => default_port,
            };
            assert_eq!(port, Some(sa.port()), "{s:?}: not the port written");
        }
        Backend::Unix(p) => {
            let p = p.display().to_string();
            assert!(p.contains('/') && p.len() <= 107, "{s:?}: path {p:?}");
            assert_eq!(p, host, "{s:?}: not the path written");
        }
    }

    let again = spec_text(&spec);
    assert_eq!(
        addr::parse_server(&again, default_port).as_ref(),
        Ok(&spec),
        "{s:?} printed as {again:?} does not parse back"
    );

    let address = spec.backend.host_string();
    if address.contains([' ', '\r', '\n']) {
        return;
    }
    let line = format!(
        "server 0 acl 0 address {address} port {} max {} hard {} weight {} prio {}",
        spec.backend.port(),
        spec.maxc,
        spec.hard,
        spec.weight,
        spec.prio
    );
    let want_address = match &spec.backend {
        Backend::Tcp(sa) => ServerAddress::Ip(sa.ip()),
        Backend::Unix(p) => ServerAddress::Unix(p.clone()),
    };
    let want = Command::Server {
        index: 0,
        changes: vec![
            ServerChange::Acl(pen::balancer::AclId::new(0).expect("list 0")),
            ServerChange::Address(want_address),
            ServerChange::Port(spec.backend.port()),
            ServerChange::Max(spec.maxc),
            ServerChange::Hard(spec.hard),
            ServerChange::Weight(spec.weight),
            ServerChange::Prio(spec.prio),
        ],
    };
    assert_eq!(
        control::parse(&line),
        Ok(want),
        "{s:?} as pen writes it: {line:?}"
    );
}

/// A listen address (`port`, `host:port`, `::1:8080`, `[::1]:8080`, a path).
///
/// The input is the address; inputs that are not UTF-8, or would make pen look up a host name,
/// are skipped.
///
/// Invariants:
/// - A TCP listener has a port from 1 to 65535, and its printed form (`[v6]:port` or
///   `v4:port`) parses back to the same address; so does pen's unbracketed `v6:port`.
/// - A bare port listens on every IPv4 address, and `-C` (`cli::control_listen`) turns that
///   into 127.0.0.1 only; every other form means the same for `-C` as for the listener.
/// - A Unix listener is the input itself: it contains `/`, is at most 107 bytes, and prints
///   as itself.
/// - A refused address's message quotes it (`'addr': ...`), for `-C` too.
pub fn listen_addr(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if listen_resolves(s) {
        return;
    }
    let parsed = addr::parse_listen(s);
    let control = pen::cli::control_listen(s);
    let listen = match parsed {
        Ok(l) => l,
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("'{s}'")),
                "the error does not name {s:?}: {message}"
            );
            assert_eq!(control, Err(e), "{s:?}: -C refuses it differently");
            return;
        }
    };
    match &listen {
        ListenAddr::Tcp(sa) => {
            assert_ne!(sa.port(), 0, "{s:?}: port 0 accepted");
            assert_eq!(listen.default_port(), Some(sa.port()));
            let printed = listen.to_string();
            assert_eq!(
                addr::parse_listen(&printed).as_ref(),
                Ok(&listen),
                "{s:?} printed as {printed:?} does not parse back"
            );
            if sa.is_ipv6() {
                let pen_form = format!("{}:{}", sa.ip(), sa.port());
                assert_eq!(
                    addr::parse_listen(&pen_form).as_ref(),
                    Ok(&listen),
                    "{s:?}: pen's unbracketed form {pen_form:?} differs"
                );
            }
            if s.contains(':') {
                assert_eq!(control.as_ref(), Ok(&listen), "{s:?}: -C differs");
            } else {
                assert!(sa.ip().is_unspecified() && sa.is_ipv4(), "{s:?}: {sa}");
                let local = ListenAddr::Tcp((std::net::Ipv4Addr::LOCALHOST, sa.port()).into());
                assert_eq!(control, Ok(local), "{s:?}: -C with a bare port");
            }
        }
        ListenAddr::Unix(p) => {
            assert_eq!(p.as_os_str(), s, "{s:?}: the path changed");
            assert!(
                s.contains('/') && s.len() <= 107,
                "{s:?} accepted as a path"
            );
            assert_eq!(listen.to_string(), s);
            assert_eq!(listen.default_port(), None);
            assert_eq!(control.as_ref(), Ok(&listen), "{s:?}: -C differs");
        }
    }
}
