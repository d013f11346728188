//! Control lines to [`Command`]s. Only spaces separate words, as in pen; everything after the
//! first CR or LF is ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use super::{
    Command, ControlError, ServerAddress, ServerChange, Ssl, Toggle, MAX_CLIENTS, MAX_CONNS,
    MAX_SERVERS,
};
use crate::addr;
use crate::balancer::{AclEntry, AclId, ConnId, FastClose, XffMode};
use crate::shared::Micros;

/// Commands of pen 0.34.1 whose feature this version does not have.
const LATER: &[&str] = &[];

/// Most idle upstream connections `idlers` may ask for.
const MAX_IDLERS: usize = 10_000;

/// Parse one line.
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
    if let Some(t) = Toggle::from_word(first) {
        return Ok(Command::Toggle(t, true));
    }
    let cmd = match first {
        "acl" => parse_acl(args)?,
        "blacklist" => Command::Blacklist(arg.map(|a| secs("blacklist", a)).transpose()?),
        "busy_poll" => Command::BusyPoll(arg.map(|v| micros("busy_poll", v)).transpose()?),
        "coalesce" => Command::Coalesce(arg.map(|v| micros("coalesce", v)).transpose()?),
        "client_acl" => Command::ClientAcl(arg.map(|a| acl_id("client_acl", a)).transpose()?),
        "client_conn_max" => Command::ClientConnMax(
            arg.map(|a| count("client_conn_max", a, 0, MAX_CONNS))
                .transpose()?,
        ),
        "clients_max" => Command::ClientsMax(
            arg.map(|a| count("clients_max", a, 1, MAX_CLIENTS))
                .transpose()?,
        ),
        "close" => Command::Close(ConnId(count(
            "close",
            need(arg, "close", "connection number")?,
            0,
            MAX_CONNS,
        )?)),
        "connection" => Command::Connection(ConnId(
            arg.map(|a| count("connection", a, 0, MAX_CONNS))
                .transpose()?
                .unwrap_or(0),
        )),
        "conn_max" => Command::ConnMax(
            arg.map(|a| count("conn_max", a, 1, MAX_CONNS))
                .transpose()?,
        ),
        "control" => Command::Control,
        "control_acl" => Command::ControlAcl(arg.map(|a| acl_id("control_acl", a)).transpose()?),
        "control_files" => {
            Command::ControlFiles(PathBuf::from(need(arg, "control_files", "directory")?))
        }
        "debug" => Command::Debug(
            arg.map(|a| count("debug", a, 0, 9).map(|n| n as u8))
                .transpose()?,
        ),
        "dsr_if" => Command::DsrIf(need(arg, "dsr_if", "interface name")?.to_string()),
        "dsr_ip" => {
            let a = need(arg, "dsr_ip", "address")?;
            Command::DsrIp(a.parse().map_err(|_| bad("dsr_ip", a, "an IP address"))?)
        }
        "epoll" => Command::EventLoop("epoll"),
        "kqueue" => Command::EventLoop("kqueue"),
        "poll" => Command::EventLoop("poll"),
        "select" => Command::EventLoop("select"),
        "exit" => Command::Exit,
        "geoip" => Command::GeoIp(arg.map(PathBuf::from)),
        "http_xff" => Command::HttpXff(
            arg.map(|a| match a {
                "append" => Ok(XffMode::Append),
                "keep" => Ok(XffMode::Keep),
                other => Err(bad("http_xff", other, "append or keep")),
            })
            .transpose()?,
        ),
        "idle_timeout" => Command::IdleTimeout(arg.map(|a| secs("idle_timeout", a)).transpose()?),
        "idlers" => Command::Idlers(arg.map(|a| count("idlers", a, 0, MAX_IDLERS)).transpose()?),
        "include" => Command::Include(PathBuf::from(need(arg, "include", "file name")?)),
        "listen" => Command::Listen(
            arg.map(|a| {
                addr::parse_listen(a)
                    .map(|l| (a.to_string(), l))
                    .map_err(|e| ControlError::Refused {
                        command: "listen",
                        reason: e.to_string(),
                    })
            })
            .transpose()?,
        ),
        "log" => Command::Log(
            arg.map(|a| check_log(a).map(|()| a.to_string()))
                .transpose()?,
        ),
        "mode" => Command::Mode,
        "peek" => Command::Peek(true),
        "pending_max" => Command::PendingMax(count(
            "pending_max",
            need(arg, "pending_max", "number")?,
            1,
            MAX_CONNS,
        )?),
        "pid" => Command::Pid,
        "recent" => Command::Recent(
            arg.map(|a| secs("recent", a))
                .transpose()?
                .unwrap_or(Duration::from_secs(300)),
        ),
        "server" => parse_server(args)?,
        "servers" => Command::Servers,
        "snapshot" => Command::Snapshot,
        "socket" => {
            let a = need(arg, "socket", "descriptor number")?;
            Command::Socket(
                a.parse::<u32>()
                    .map(i64::from)
                    .map_err(|_| bad("socket", a, "a descriptor number"))?,
            )
        }
        "source" => Command::Source(Some(resolve("source", need(arg, "source", "address")?)?)),
        "status" => Command::Status,
        "ssl_ciphers" => Command::Ssl(Ssl::Ciphers(arg.map(str::to_string))),
        "ssl_client_renegotiation_interval" => Command::Ssl(Ssl::RenegotiationInterval(secs(
            "ssl_client_renegotiation_interval",
            need(
                arg,
                "ssl_client_renegotiation_interval",
                "number of seconds",
            )?,
        )?)),
        "ssl_ocsp_response" => Command::Ssl(Ssl::OcspResponse(PathBuf::from(need(
            arg,
            "ssl_ocsp_response",
            "file name",
        )?))),
        "ssl_option" => Command::Ssl(Ssl::Option(need(arg, "ssl_option", "option")?.to_string())),
        "ssl_sni_path" => Command::Ssl(Ssl::SniPath(PathBuf::from(need(
            arg,
            "ssl_sni_path",
            "directory",
        )?))),
        "tarpit_acl" => Command::TarpitAcl(
            arg.map(|a| match a {
                "-1" => Ok(None),
                a => acl_id("tarpit_acl", a).map(Some),
            })
            .transpose()?,
        ),
        "tcp_fastclose" => Command::TcpFastclose(match arg {
            None => return Ok(Command::Ignored("tcp_fastclose without argument")),
            Some("up") => FastClose::Up,
            Some("down") => FastClose::Down,
            Some("both") => FastClose::Both,
            // pen: any other word means off.
            Some(_) => FastClose::Off,
        }),
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
        "web_stats" => Command::WebStats(arg.map(PathBuf::from)),
        "write" => Command::Write(arg.map(PathBuf::from)),
        "no" => match arg {
            Some(w) if Toggle::from_word(w).is_some() => {
                Command::Toggle(Toggle::from_word(w).expect("checked"), false)
            }
            Some("acl") => Command::NoAcl(acl_id(
                "no acl",
                need(args.get(1).copied(), "no acl", "list number")?,
            )?),
            Some("log") => Command::NoLog,
            Some("geoip") => Command::NoGeoIp,
            Some("web_stats") => Command::NoWebStats,
            Some("source") => Command::Source(None),
            Some("peek") => Command::Peek(false),
            _ => Command::IgnoredNo,
        },
        w if LATER.contains(&w) => Command::NotAvailable(w.to_string()),
        w => Command::Unknown(w.to_string()),
    };
    Ok(cmd)
}

fn need<'a>(
    arg: Option<&'a str>,
    command: &'static str,
    what: &'static str,
) -> Result<&'a str, ControlError> {
    arg.ok_or(ControlError::Missing { command, what })
}

fn bad(command: &'static str, value: &str, expected: &'static str) -> ControlError {
    ControlError::BadValue {
        command,
        value: super::excerpt(value),
        expected,
    }
}

fn secs(command: &'static str, value: &str) -> Result<Duration, ControlError> {
    value
        .parse::<u32>()
        .map(|s| Duration::from_secs(s.into()))
        .map_err(|_| bad(command, value, "a number of seconds"))
}

/// The limit `busy_poll`'s and `coalesce`'s errors name, checked against `Micros::MAX` when pen
/// is built.
const MICROS_RANGE: &str = "a number of microseconds from 0 to 1000";
const _: () = assert!(Micros::MAX.as_micros() == 1000);

fn micros(command: &'static str, value: &str) -> Result<Duration, ControlError> {
    let max = Micros::MAX.as_micros() as u64;
    match value.parse::<u64>() {
        Ok(us) if us <= max => Ok(Duration::from_micros(us)),
        _ => Err(bad(command, value, MICROS_RANGE)),
    }
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

fn acl_id(command: &'static str, value: &str) -> Result<AclId, ControlError> {
    value
        .parse::<usize>()
        .ok()
        .and_then(AclId::new)
        .ok_or_else(|| bad(command, value, "an access list number from 0 to 9"))
}

fn resolve(command: &'static str, host: &str) -> Result<IpAddr, ControlError> {
    addr::resolve(host).map_err(|_| ControlError::BadAddress {
        command,
        value: super::excerpt(host),
    })
}

/// `log HOST:PORT` must name a port; a file name is checked when it is opened.
fn check_log(value: &str) -> Result<(), ControlError> {
    if super::log_is_network(value) {
        let (_, port) = value.rsplit_once(':').unwrap_or((value, ""));
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("log", value, "HOST:PORT with a port from 1 to 65535"));
        }
    }
    Ok(())
}

/// `inet_aton`'s forms, as pen's `acl` takes them: `a.b.c.d`, `a.b.c`, `a.b`, `a`, where the
/// last part fills the remaining bytes.
fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u32> = s
        .split('.')
        .map(|p| p.parse::<u32>().ok())
        .collect::<Option<_>>()?;
    let (last, head) = parts.split_last()?;
    if head.len() > 3 || head.iter().any(|&b| b > 255) {
        return None;
    }
    let bits = 8 * (4 - head.len() as u32);
    if bits < 32 && *last >= 1 << bits {
        return None;
    }
    let value = head.iter().fold(0u32, |acc, &b| (acc << 8) | b);
    let value = if head.is_empty() {
        *last
    } else {
        (value << bits) | last
    };
    Some(Ipv4Addr::from(value))
}

fn parse_acl(args: &[&str]) -> Result<Command, ControlError> {
    let list = acl_id("acl", need(args.first().copied(), "acl", "list number")?)?;
    let permit = match need(args.get(1).copied(), "acl", "permit or deny")? {
        "permit" => true,
        "deny" => false,
        other => return Err(bad("acl", other, "permit or deny")),
    };
    let what = need(args.get(2).copied(), "acl", "address")?;
    let entry = if what == "country" {
        let cc = need(args.get(3).copied(), "acl", "country code")?;
        match cc.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                AclEntry::country(permit, [a.to_ascii_uppercase(), b.to_ascii_uppercase()])
            }
            _ => return Err(bad("acl", cc, "a two-letter country code")),
        }
    } else if what.contains(':') {
        let (a, len) = match what.split_once('/') {
            Some((a, l)) => (
                a,
                l.parse::<u8>()
                    .ok()
                    .filter(|l| *l <= 128)
                    .ok_or_else(|| bad("acl", l, "a prefix length from 0 to 128"))?,
            ),
            None => (what, 128),
        };
        let a: Ipv6Addr = a.parse().map_err(|_| bad("acl", a, "an IPv6 address"))?;
        AclEntry::v6(permit, a, len)
    } else {
        let a = inet_aton(what).ok_or_else(|| bad("acl", what, "an IPv4 address"))?;
        let mask = match args.get(3) {
            Some(m) => inet_aton(m).ok_or_else(|| bad("acl", m, "an IPv4 mask"))?,
            None => Ipv4Addr::BROADCAST,
        };
        AclEntry::v4(permit, a, mask)
    };
    Ok(Command::Acl { list, entry })
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
                // The command line's rule, limit (`sun_path`) and words.
                "address" if value.contains('/') => ServerChange::Address(ServerAddress::Unix(
                    addr::unix_path(value).map_err(|_| ControlError::Refused {
                        command: "server",
                        reason: addr::AddrError::PathTooLong(super::excerpt(value)).to_string(),
                    })?,
                )),
                "address" => ServerChange::Address(ServerAddress::Ip(resolve("server", value)?)),
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
                "acl" => ServerChange::Acl(acl_id("server", value)?),
                other => return Err(ControlError::UnknownKey(super::excerpt(other))),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Command::Server { index, changes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::QUOTE_MAX;

    /// A long value is quoted by its start and its length; a short one whole, as pen quotes it.
    #[test]
    fn errors_quote_at_most_an_excerpt_of_a_long_value() {
        let short = parse("blacklist x7").unwrap_err().to_string();
        assert_eq!(short, "blacklist: 'x7' is not a number of seconds");
        let long = format!("blacklist {}", "9".repeat(1 << 20));
        let error = parse(&long).unwrap_err().to_string();
        let quoted = format!("'{}... ({} bytes)'", "9".repeat(QUOTE_MAX), 1 << 20);
        assert_eq!(
            error,
            format!("blacklist: {quoted} is not a number of seconds")
        );
        // Cut at a character boundary: never half of a multi-byte character.
        let wide = format!("server 0 frob{} 1", "é".repeat(300));
        let error = parse(&wide).unwrap_err().to_string();
        assert!(error.contains("... (604 bytes)"), "{error}");
        assert!(error.len() < QUOTE_MAX + 200, "{}", error.len());
    }

    #[test]
    fn parses_pen_forms() {
        let ok = [
            ("", Command::Nothing),
            ("   ", Command::Nothing),
            ("# comment", Command::Nothing),
            ("#x y", Command::Nothing),
            ("prio", Command::Toggle(Toggle::Prio, true)),
            ("no  prio", Command::Toggle(Toggle::Prio, false)),
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
            ("no block", Command::IgnoredNo),
            ("block", Command::Unknown("block".into())),
            ("no frobnicate", Command::IgnoredNo),
            ("frobnicate 1", Command::Unknown("frobnicate".into())),
            ("recent", Command::Recent(Duration::from_secs(300))),
            ("connection", Command::Connection(ConnId(0))),
            ("tarpit_acl -1", Command::TarpitAcl(Some(None))),
            ("epoll", Command::EventLoop("epoll")),
            (
                "acl 3 deny 10.1 255.255.0.0",
                Command::Acl {
                    list: AclId::new(3).unwrap(),
                    entry: AclEntry::v4(
                        false,
                        Ipv4Addr::new(10, 0, 0, 1),
                        Ipv4Addr::new(255, 255, 0, 0),
                    ),
                },
            ),
            (
                "acl 0 permit country se",
                Command::Acl {
                    list: AclId::new(0).unwrap(),
                    entry: AclEntry::country(true, *b"SE"),
                },
            ),
            ("no acl 4", Command::NoAcl(AclId::new(4).unwrap())),
            (
                "server 2 port 80 weight 3 blacklist 0 acl 1",
                Command::Server {
                    index: 2,
                    changes: vec![
                        ServerChange::Port(80),
                        ServerChange::Weight(3),
                        ServerChange::Blacklist(Duration::ZERO),
                        ServerChange::Acl(AclId::new(1).unwrap()),
                    ],
                },
            ),
        ];
        for (line, want) in ok {
            assert_eq!(parse(line).unwrap(), want, "{line:?}");
        }
    }

    /// Found by the `control_stream` fuzz target: the command line refuses a Unix server
    /// path longer than `sun_path` holds, and so must `server N address`.
    #[test]
    fn server_unix_path_has_the_command_line_limit() {
        let longest = format!("/{}", "x".repeat(106));
        assert_eq!(
            parse(&format!("server 0 address {longest}")).unwrap(),
            Command::Server {
                index: 0,
                changes: vec![ServerChange::Address(ServerAddress::Unix(longest.into()))],
            }
        );
        let e = parse(&format!("server 0 address /{}", "x".repeat(107)))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("server: '/xxx")
                && e.ends_with("': Unix socket path is longer than 107 bytes"),
            "{e}"
        );
    }

    #[test]
    fn inet_aton_forms() {
        assert_eq!(inet_aton("10.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(inet_aton("10.1.2"), Some(Ipv4Addr::new(10, 1, 0, 2)));
        assert_eq!(inet_aton("16909060"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(inet_aton("1.2.3.256"), None);
        assert_eq!(inet_aton("1.2.3.4.5"), None);
        assert_eq!(inet_aton("x"), None);
    }

    /// Reliability catalogue B1: every malformed command is one clear error.
    #[test]
    fn bad_commands_are_errors_naming_the_value() {
        let bad = [
            ("blacklist -5", "'-5'"),
            ("blacklist x", "'x'"),
            ("timeout 0", "'0'"),
            ("source", "missing address"),
            ("source nonexistent.invalid", "'nonexistent.invalid'"),
            ("server", "missing server number"),
            ("server abc port x", "'abc'"),
            ("server -1 port 1", "'-1'"),
            ("server 2147483647 port 1", "'2147483647'"),
            ("server 0 port", "missing value"),
            ("server 0 port 0", "'0'"),
            ("server 0 colour red", "unknown key 'colour'"),
            ("server 0 acl 10", "'10'"),
            ("conn_max 99999999999", "'99999999999'"),
            ("clients_max 4294967296000", "'4294967296000'"),
            ("control_acl 10", "'10'"),
            ("client_acl -1", "'-1'"),
            ("acl 10 permit 1.2.3.4", "'10'"),
            ("acl 1 permit ::1/200", "'200'"),
            ("acl 1 allow 1.2.3.4", "'allow'"),
            ("acl 1 permit", "missing address"),
            ("acl 1 permit 1.2.3.999", "'1.2.3.999'"),
            ("acl 1 permit country XYZ", "'XYZ'"),
            ("no acl", "missing list number"),
            ("no acl x", "'x'"),
            ("socket 999999999999", "'999999999999'"),
            ("close -1", "'-1'"),
            ("close", "missing connection number"),
            ("include", "missing file name"),
            ("listen bogus.invalid:1", "listen"),
            ("log host:0", "'host:0'"),
            ("dsr_ip x", "'x'"),
            ("debug 99", "'99'"),
            ("pending_max 0", "'0'"),
        ];
        for (line, want) in bad {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
