//! Running a parsed command against the balancer, and the exact reply text pen 0.34.1 gives.

use std::fmt::Write;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use super::{Command, ControlError, ServerChange};
use crate::addr::{self, Backend};
use crate::balancer::{Balancer, FastClose, Server, ServerId, Settings, Target};

/// Run `cmd` and return its reply (often empty, as in pen). On error nothing was changed.
/// `default_port` is the listener's port, given to a server whose address is set without one.
pub fn execute(
    cmd: &Command,
    b: &mut Balancer,
    now: Instant,
    default_port: Option<u16>,
) -> Result<String, ControlError> {
    if let Some(reply) = execute_setting(cmd, &mut b.settings) {
        return Ok(reply);
    }
    let reply = match cmd {
        Command::ClientsMax(v) => {
            if let Some(n) = v.and_then(NonZeroUsize::new) {
                b.grow_clients(n);
            }
            format!("{}\n", b.clients().capacity())
        }
        Command::Servers => servers(b),
        Command::Server { index, changes } => {
            let server = changed_server(b, *index, changes, now, default_port)?;
            b.replace_server(ServerId(*index), server);
            String::new()
        }
        other => unreachable!("{other:?} is a setting, handled above"),
    };
    Ok(reply)
}

/// Run a command that only touches settings (no server or client table); None for the others.
/// The command line uses this to apply `-o` in order with the other options.
pub fn execute_setting(cmd: &Command, s: &mut Settings) -> Option<String> {
    let reply = match cmd {
        Command::Nothing | Command::IgnoredNo => String::new(),
        Command::Blacklist(v) => get_set_secs(&mut s.blacklist_time, *v),
        Command::Timeout(v) => get_set_secs(&mut s.connect_timeout, *v),
        Command::Tracking(v) => get_set_secs(&mut s.tracking, *v),
        Command::IdleTimeout(v) => {
            if let Some(v) = v {
                s.idle_timeout = *v;
            }
            format!("Idle timeout: {} seconds\n", s.idle_timeout.as_secs())
        }
        Command::Hash(on) => flag(&mut s.hash, *on),
        Command::Keepalive(on) => flag(&mut s.keepalive, *on),
        Command::Prio(on) => flag(&mut s.prio, *on),
        Command::Roundrobin(on) => flag(&mut s.roundrobin, *on),
        Command::Stubborn(on) => flag(&mut s.stubborn, *on),
        Command::TcpNodelay(on) => flag(&mut s.tcp_nodelay, *on),
        Command::Weight(on) => flag(&mut s.weight, *on),
        Command::TcpFastclose(f) => {
            s.fastclose = *f;
            String::new()
        }
        Command::Mode => {
            let no = |on: bool| if on { "" } else { "no " };
            format!(
                "{}hash {}roundrobin {}stubborn {}weight {}prio\n",
                no(s.hash),
                no(s.roundrobin),
                no(s.stubborn),
                no(s.weight),
                no(s.prio)
            )
        }
        Command::NotAvailable(what) => format!("{what}: not available in this version of pen\n"),
        Command::Unknown(word) => format!("do_cmd: ignoring command starting with '{word}'\n"),
        Command::ClientsMax(_) | Command::Servers | Command::Server { .. } => return None,
    };
    Some(reply)
}

fn get_set_secs(field: &mut Duration, value: Option<Duration>) -> String {
    if let Some(v) = value {
        *field = v;
    }
    format!("{}\n", field.as_secs())
}

fn flag(field: &mut bool, on: bool) -> String {
    *field = on;
    String::new()
}

/// pen's `servers` listing, one line per regular slot, with live byte counts.
fn servers(b: &Balancer) -> String {
    let mut out = String::new();
    for (i, s) in b.servers().iter().enumerate() {
        let (sent, received) = b.server_bytes(Target::Server(ServerId(i)));
        let (addr, port) = match &s.backend {
            Some(backend) => (backend.host_string(), backend.port()),
            None => ("0.0.0.0".to_string(), 0),
        };
        let _ = writeln!(
            out,
            "{i} addr {addr} port {port} conn {} max {} hard {} weight {} prio {} sx {sent} rx {received}",
            s.conns, s.maxc, s.hard, s.weight, s.prio
        );
    }
    out
}

/// The server slot as it will be after `changes`, checked completely before anything is set.
fn changed_server(
    b: &Balancer,
    index: usize,
    changes: &[ServerChange],
    now: Instant,
    default_port: Option<u16>,
) -> Result<Server, ControlError> {
    let mut server = b.servers().get(index).cloned().unwrap_or_default();
    for change in changes {
        match change {
            ServerChange::Address(host) => {
                let port = server
                    .backend
                    .as_ref()
                    .map(Backend::port)
                    .or(default_port)
                    .unwrap_or(0);
                server.backend = Some(if host.contains('/') {
                    Backend::Unix(host.into())
                } else {
                    let ip =
                        addr::resolve(host).map_err(|_| ControlError::BadAddress(host.clone()))?;
                    Backend::Tcp(std::net::SocketAddr::new(ip, port))
                });
            }
            ServerChange::Port(p) => match &mut server.backend {
                Some(Backend::Tcp(sa)) => sa.set_port(*p),
                Some(Backend::Unix(_)) => {}
                None => return Err(ControlError::NoAddress(index)),
            },
            ServerChange::Max(n) => server.maxc = *n,
            ServerChange::Hard(n) => server.hard = *n,
            ServerChange::Weight(n) => server.weight = *n,
            ServerChange::Prio(n) => server.prio = *n,
            ServerChange::Blacklist(t) => {
                server.blacklisted_until = (!t.is_zero()).then(|| now + *t);
            }
        }
    }
    if matches!(server.backend, Some(Backend::Tcp(sa)) if sa.port() == 0) {
        return Err(ControlError::Missing {
            command: "server",
            what: "port (the listener has none to lend)",
        });
    }
    Ok(server)
}

impl FastClose {
    /// The word `write` and `tcp_fastclose` use.
    pub fn word(self) -> &'static str {
        match self {
            FastClose::Off => "off",
            FastClose::Up => "up",
            FastClose::Down => "down",
            FastClose::Both => "both",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::parse;

    fn run(b: &mut Balancer, line: &str) -> Result<String, ControlError> {
        execute(&parse(line)?, b, Instant::now(), Some(8080))
    }

    #[test]
    fn replies_are_pens() {
        let mut b = Balancer::new(Default::default(), NonZeroUsize::new(2048).unwrap());
        assert_eq!(run(&mut b, "blacklist").unwrap(), "30\n");
        assert_eq!(run(&mut b, "blacklist 5").unwrap(), "5\n");
        assert_eq!(run(&mut b, "timeout").unwrap(), "3\n");
        assert_eq!(run(&mut b, "tracking 9").unwrap(), "9\n");
        assert_eq!(
            run(&mut b, "idle_timeout 4").unwrap(),
            "Idle timeout: 4 seconds\n"
        );
        assert_eq!(run(&mut b, "prio").unwrap(), "");
        assert_eq!(
            run(&mut b, "mode").unwrap(),
            "no hash no roundrobin no stubborn no weight prio\n"
        );
        assert_eq!(run(&mut b, "clients_max 10").unwrap(), "2048\n");
        assert_eq!(run(&mut b, "clients_max 4096").unwrap(), "4096\n");
        assert_eq!(
            run(&mut b, "bogus").unwrap(),
            "do_cmd: ignoring command starting with 'bogus'\n"
        );
        assert_eq!(
            run(&mut b, "server 1 address 127.0.0.1 port 9001 weight 3").unwrap(),
            ""
        );
        assert_eq!(
            run(&mut b, "servers").unwrap(),
            "0 addr 0.0.0.0 port 0 conn 0 max 0 hard 0 weight 0 prio 0 sx 0 rx 0\n\
             1 addr 127.0.0.1 port 9001 conn 0 max 0 hard 0 weight 3 prio 0 sx 0 rx 0\n"
        );
    }

    #[test]
    fn a_failing_server_command_changes_nothing() {
        let mut b = Balancer::new(Default::default(), NonZeroUsize::new(8).unwrap());
        run(&mut b, "server 0 address 127.0.0.1 port 9001").unwrap();
        let before = run(&mut b, "servers").unwrap();
        assert!(run(&mut b, "server 0 weight 5 address nonexistent.invalid").is_err());
        assert!(run(&mut b, "server 3 port 80").is_err());
        assert_eq!(run(&mut b, "servers").unwrap(), before);
    }
}
