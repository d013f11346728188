//! Running a parsed command against the balancer and the shell's configuration, and the exact
//! reply text pen 0.34.1 gives.

use std::fmt::Write;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    file, Action, Command, Context, ControlError, Origin, ServerAddress, ServerChange, Ssl, Toggle,
};
use crate::addr::{Backend, ListenAddr};
use crate::balancer::{AclId, Balancer, ClientKey, ConnState, Server, ServerId, Settings, Target};

/// The configuration that lives in the shell rather than the balancer: the shell keeps one,
/// hands a copy to each command (or to a whole config file, as one transaction) and keeps the
/// changed copy when the command succeeds, then performs the returned [`Action`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub pid: u32,
    /// `-C` as given; None without a control port.
    pub control: Option<String>,
    /// None until the command line or config file names one.
    pub listen: Option<ListenAddr>,
    /// The listener as the operator wrote it (`listen` replies with it, as pen does).
    pub listen_text: Option<String>,
    pub conn_max: usize,
    pub debug: u8,
    /// `-X`
    pub exit_enabled: bool,
    /// The request log as `log` shows it: a file name or `HOST:PORT`.
    pub log: Option<String>,
    /// `-F`: the file HUP re-reads and `write` writes by default.
    pub config_file: Option<PathBuf>,
    /// `control_files DIR`: the only directory control-port commands may name files in.
    pub control_files: Option<PathBuf>,
    /// The command-line flags `write` records in its header comment (` -f -X -c 4096 ...`).
    pub write_flags: String,
    pub abort_on_error: bool,
    pub pending_max: usize,
    pub dsr_ip: Option<IpAddr>,
    pub tarpit_acl: Option<AclId>,
    /// `idlers N`: idle upstream connections to keep open.
    pub idlers: usize,
    /// `busy_poll`: how long the data-plane loops poll before they sleep (0: they do not).
    pub busy_poll: Duration,
    /// `coalesce`: the longest nap of the TCP data-plane loops (0: none).
    pub coalesce: Duration,
}

impl HostView {
    pub fn new(listen: Option<ListenAddr>, conn_max: usize) -> HostView {
        HostView {
            pid: std::process::id(),
            control: None,
            listen_text: listen.as_ref().map(ToString::to_string),
            listen,
            conn_max,
            debug: 0,
            exit_enabled: false,
            log: None,
            config_file: None,
            control_files: None,
            write_flags: String::new(),
            abort_on_error: false,
            pending_max: 100,
            dsr_ip: None,
            tarpit_acl: None,
            idlers: 0,
            busy_poll: Duration::ZERO,
            coalesce: crate::shared::COALESCE_DEFAULT,
        }
    }
}

/// A command's reply, and what the shell must do for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub reply: String,
    pub action: Option<Action>,
}

impl From<String> for Outcome {
    fn from(reply: String) -> Outcome {
        Outcome {
            reply,
            action: None,
        }
    }
}

/// Run `cmd`. On error nothing was changed.
pub fn execute(
    cmd: &Command,
    b: &mut Balancer,
    host: &mut HostView,
    ctx: &Context,
) -> Result<Outcome, ControlError> {
    check_origin(cmd, host, ctx.origin)?;
    if let Some(reply) = execute_setting(cmd, &mut b.settings) {
        return Ok(reply.into());
    }
    let act = |reply: String, action: Action| Outcome {
        reply,
        action: Some(action),
    };
    let outcome = match cmd {
        Command::Acl { list, entry } => {
            b.acls.add(*list, *entry)?;
            Outcome::default()
        }
        Command::NoAcl(list) => {
            b.acls.clear(*list);
            Outcome::default()
        }
        Command::ClientsMax(v) => {
            if let Some(n) = v.and_then(NonZeroUsize::new) {
                b.grow_clients(n);
            }
            format!("{}\n", b.clients().capacity()).into()
        }
        Command::Close(id) => {
            if b.conn(*id).is_none() {
                return Err(ControlError::NoConnection(id.0));
            }
            act(
                format!("Forcibly closing connection {}\n", id.0),
                Action::Close(*id),
            )
        }
        Command::Connection(id) => connection(b, host, id.0).into(),
        Command::ConnMax(v) => match v {
            Some(n) => {
                host.conn_max = *n;
                b.set_conn_max(*n);
                act(format!("{n}\n"), Action::ConnMax(*n))
            }
            None => format!("{}\n", host.conn_max).into(),
        },
        Command::Control => format!("{}\n", host.control.as_deref().unwrap_or("(null)")).into(),
        Command::ControlFiles(dir) => {
            host.control_files = Some(dir.clone());
            Outcome::default()
        }
        Command::Debug(v) => match v {
            Some(n) => {
                host.debug = *n;
                act(format!("{n}\n"), Action::Debug(*n))
            }
            None => format!("{}\n", host.debug).into(),
        },
        Command::Toggle(Toggle::AbortOnError, on) => {
            host.abort_on_error = *on;
            Outcome::default()
        }
        Command::DsrIp(ip) => {
            host.dsr_ip = Some(*ip);
            Outcome::default()
        }
        Command::Exit => {
            if !host.exit_enabled {
                return Ok("Exit is not enabled; restart with -X flag\n"
                    .to_string()
                    .into());
            }
            act(String::new(), Action::Exit)
        }
        Command::Include(path) => {
            return Err(ControlError::Refused {
                command: "include",
                reason: format!("{}: include is read by the config reader", path.display()),
            })
        }
        Command::Listen(addr) => match addr {
            Some((text, a)) => {
                host.listen = Some(a.clone());
                host.listen_text = Some(text.clone());
                act(format!("{text}\n"), Action::Listen(a.clone()))
            }
            None => format!("{}\n", host.listen_text.as_deref().unwrap_or("(null)")).into(),
        },
        Command::Log(v) => match v {
            Some(target) => {
                host.log = Some(target.clone());
                act(format!("{target}\n"), Action::Log(target.clone()))
            }
            None => host
                .log
                .as_ref()
                .map(|l| format!("{l}\n"))
                .unwrap_or_default()
                .into(),
        },
        Command::NoLog => {
            host.log = None;
            act(String::new(), Action::NoLog)
        }
        Command::BusyPoll(v) => get_set_micros(&mut host.busy_poll, *v, Action::BusyPoll),
        Command::Coalesce(v) => get_set_micros(&mut host.coalesce, *v, Action::Coalesce),
        Command::Idlers(v) => {
            // pen replies with the numbers before the change.
            let reply = format!("Idlers: {}/{}\n", b.idlers(), host.idlers);
            match v {
                Some(n) => {
                    host.idlers = *n;
                    act(reply, Action::Idlers(*n))
                }
                None => reply.into(),
            }
        }
        Command::Ssl(Ssl::RenegotiationInterval(_)) => Outcome::default(),
        Command::Ssl(ssl) => act(String::new(), Action::Tls(ssl.clone())),
        Command::GeoIp(None) => b
            .geoip()
            .map(|g| format!("{}\n", g.path().display()))
            .unwrap_or_default()
            .into(),
        Command::GeoIp(Some(path)) => act(
            format!("{}\n", path.display()),
            Action::GeoIp(Some(path.clone())),
        ),
        Command::NoGeoIp => act(String::new(), Action::GeoIp(None)),
        Command::PendingMax(n) => {
            host.pending_max = *n;
            Outcome::default()
        }
        Command::Pid => format!("{}\n", host.pid).into(),
        Command::Recent(window) => recent(b, ctx, *window).into(),
        Command::Servers => servers(b).into(),
        Command::Server { index, changes } => {
            let server = changed_server(b, *index, changes, ctx)?;
            b.replace_server(ServerId(*index), server);
            Outcome::default()
        }
        Command::Socket(fd) => {
            let owner = b
                .conns()
                .find(|(_, c)| {
                    let (down, up) = c.counters.fds();
                    i64::from(down) == *fd || i64::from(up) == *fd
                })
                .map_or(-1, |(id, _)| id.0 as i64);
            format!("Socket {fd} belongs to connection {owner}\n").into()
        }
        Command::TarpitAcl(v) => {
            if let Some(v) = v {
                host.tarpit_acl = *v;
            }
            // pen sends this one without a newline.
            format!(
                "tarpit_acl = {}",
                host.tarpit_acl.map_or(-1, |a| a.index() as i64)
            )
            .into()
        }
        Command::WebStats(v) => {
            if let Some(p) = v {
                b.settings.web_stats = Some(p.as_path().into());
            }
            b.settings
                .web_stats
                .as_ref()
                .map(|p| format!("{}\n", p.display()))
                .unwrap_or_default()
                .into()
        }
        Command::NoWebStats => {
            b.settings.web_stats = None;
            Outcome::default()
        }
        Command::Write(path) => {
            let Some(path) = path.clone().or_else(|| host.config_file.clone()) else {
                return Err(ControlError::Missing {
                    command: "write",
                    what: "file name (and pen has no -F file)",
                });
            };
            let contents = file::render(b, host, ctx, &path);
            act(
                String::new(),
                Action::WriteFile {
                    on_error: format!("write: cannot write {}\n", path.display()),
                    path,
                    contents,
                },
            )
        }
        Command::Status | Command::Snapshot => {
            return Err(ControlError::Refused {
                command: if matches!(cmd, Command::Status) {
                    "status"
                } else {
                    "snapshot"
                },
                reason: "only the control port answers it: it reports and changes nothing".into(),
            })
        }
        other => unreachable!("{other:?} is a setting, handled above"),
    };
    Ok(outcome)
}

/// Commands that name files: from the control port only inside `control_files`.
pub fn check_origin(cmd: &Command, host: &HostView, origin: Origin) -> Result<(), ControlError> {
    if origin != Origin::ControlPort {
        return Ok(());
    }
    if matches!(cmd, Command::ControlFiles(_)) {
        return Err(ControlError::Refused {
            command: "control_files",
            reason: "only the command line and the config file may set it".into(),
        });
    }
    let Some((command, path)) = cmd.file() else {
        return Ok(());
    };
    let allowed = host
        .control_files
        .as_deref()
        .is_some_and(|dir| is_inside(dir, &path));
    if allowed {
        Ok(())
    } else {
        Err(ControlError::Refused {
            command,
            reason: format!(
                "'{}': file names are only accepted over the control port inside the \
                 directory set with 'control_files DIR' (pen -o)",
                path.display()
            ),
        })
    }
}

/// Is `path` lexically inside `dir` (no `..`, absolute, under it)?
fn is_inside(dir: &Path, path: &Path) -> bool {
    use std::path::Component;
    path.is_absolute()
        && path.starts_with(dir)
        && !path.components().any(|c| matches!(c, Component::ParentDir))
}

/// Run a command that only touches settings (no server or client table); None for the others.
/// The command line uses this to apply `-o` in order with the other options.
pub fn execute_setting(cmd: &Command, s: &mut Settings) -> Option<String> {
    let reply = match cmd {
        Command::Nothing | Command::IgnoredNo | Command::EventLoop(_) => String::new(),
        Command::Blacklist(v) => get_set_secs(&mut s.blacklist_time, *v),
        Command::Timeout(v) => get_set_secs(&mut s.connect_timeout, *v),
        Command::Tracking(v) => get_set_secs(&mut s.tracking, *v),
        Command::IdleTimeout(v) => {
            if let Some(v) = v {
                s.idle_timeout = *v;
            }
            format!("Idle timeout: {} seconds\n", s.idle_timeout.as_secs())
        }
        Command::ClientAcl(v) => {
            if let Some(v) = v {
                s.client_acl = *v;
            }
            format!("{}\n", s.client_acl)
        }
        Command::ClientConnMax(v) => {
            if let Some(v) = v {
                s.client_conn_max = *v;
            }
            format!("{}\n", s.client_conn_max)
        }
        Command::ControlAcl(v) => {
            if let Some(v) = v {
                s.control_acl = *v;
            }
            format!("{}\n", s.control_acl)
        }
        Command::Toggle(t, on) => {
            let field = match t {
                Toggle::AbortOnError => return None,
                Toggle::Ascii => &mut s.ascii,
                Toggle::Dummy => &mut s.dummy,
                Toggle::Hash => &mut s.hash,
                Toggle::Http => &mut s.http,
                Toggle::Keepalive => &mut s.keepalive,
                Toggle::Prio => &mut s.prio,
                Toggle::Roundrobin => &mut s.roundrobin,
                Toggle::Stubborn => &mut s.stubborn,
                Toggle::TcpNodelay => &mut s.tcp_nodelay,
                Toggle::Transparent => &mut s.transparent,
                Toggle::Weight => &mut s.weight,
            };
            *field = *on;
            String::new()
        }
        Command::Source(ip) => {
            s.source = *ip;
            String::new()
        }
        Command::HttpXff(v) => {
            if let Some(v) = v {
                s.xff = *v;
            }
            format!("{}\n", s.xff.word())
        }
        // Read at start-up only: direct server return replaces the listener.
        Command::DsrIf(name) => {
            s.dsr_if = Some(name.clone());
            String::new()
        }
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
        Command::Peek(true) => {
            "peek: not supported (pen 0.34.1 never finished it; it only swallowed client data)\n"
                .to_string()
        }
        Command::Peek(false) => String::new(),
        Command::NotAvailable(what) => format!("{what}: not available in this version of pen\n"),
        Command::Unknown(word) => format!(
            "do_cmd: ignoring command starting with '{}'\n",
            super::excerpt(word)
        ),
        Command::Ignored(what) => format!("do_cmd: ignoring {what}\n"),
        _ => return None,
    };
    Some(reply)
}

fn get_set_secs(field: &mut Duration, value: Option<Duration>) -> String {
    if let Some(v) = value {
        *field = v;
    }
    format!("{}\n", field.as_secs())
}

/// pen's `servers` listing, one line per regular slot, with live byte counts.
/// A loop setting in microseconds (`busy_poll`, `coalesce`): the reply is the value, and a
/// new value is the shell's to apply.
fn get_set_micros(
    field: &mut Duration,
    value: Option<Duration>,
    apply: fn(Duration) -> Action,
) -> Outcome {
    let reply = |d: Duration| format!("{}\n", d.as_micros());
    match value {
        Some(d) => {
            *field = d;
            Outcome {
                reply: reply(d),
                action: Some(apply(d)),
            }
        }
        None => reply(*field).into(),
    }
}

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

/// pen's number for a target: the server index, -1 emergency, -2 abuse.
pub(super) fn target_number(t: Option<Target>) -> i64 {
    match t {
        Some(Target::Server(id)) => id.0 as i64,
        Some(Target::Emergency) => -1,
        Some(Target::Abuse) => -2,
        None => -1,
    }
}

fn connection(b: &Balancer, host: &HostView, n: usize) -> String {
    if n >= host
        .conn_max
        .max(b.conns().map(|(id, _)| id.0 + 1).max().unwrap_or(0))
    {
        return format!("Connection {n} out of range\n");
    }
    let Some(c) = b.conn(crate::balancer::ConnId(n)) else {
        return format!(
            "Connection {n}:\nstate = 0\ndownfd = -1, upfd = -1\nclient = 0, server = 0\npend = 0\n"
        );
    };
    let (down, up) = c.counters.fds();
    let state = match c.state {
        ConnState::Connecting => 1,
        ConnState::Connected => 2,
    };
    let client = b.clients().peek(&c.client).map_or(-1, |e| e.slot as i64);
    format!(
        "Connection {n}:\nstate = {state}\ndownfd = {down}, upfd = {up}\nclient = {client}, server = {}\npend = 0\n",
        target_number(c.target)
    )
}

/// Clients seen within `window`, most recent first.
fn recent(b: &Balancer, ctx: &Context, window: Duration) -> String {
    let mut out = String::new();
    for (key, e) in b.clients().iter() {
        if ctx.now.saturating_duration_since(e.last_seen) > window {
            continue;
        }
        let addr = match key {
            ClientKey::Ip(ip) => ip.to_string(),
            ClientKey::Unix => "unix".to_string(),
            ClientKey::Idler => continue,
        };
        let _ = writeln!(
            out,
            "{addr} connects {} sx {} rx {}",
            e.connects, e.sent, e.received
        );
    }
    out
}

/// The server slot as it will be after `changes`, checked completely before anything is set.
fn changed_server(
    b: &Balancer,
    index: usize,
    changes: &[ServerChange],
    ctx: &Context,
) -> Result<Server, ControlError> {
    let mut server = b.servers().get(index).cloned().unwrap_or_default();
    for change in changes {
        match change {
            ServerChange::Address(ServerAddress::Unix(path)) => {
                server.backend = Some(Backend::Unix(path.clone()));
            }
            ServerChange::Address(ServerAddress::Ip(ip)) => {
                let port = match &server.backend {
                    Some(Backend::Tcp(sa)) => Some(sa.port()),
                    _ => ctx.default_port,
                };
                server.backend = Some(Backend::Tcp(std::net::SocketAddr::new(
                    *ip,
                    port.unwrap_or(0),
                )));
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
            ServerChange::Acl(a) => server.acl = *a,
            ServerChange::Blacklist(t) => {
                server.blacklisted_until = (!t.is_zero()).then(|| ctx.now + *t);
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

impl crate::balancer::XffMode {
    /// The word `http_xff` and `write` use.
    pub fn word(self) -> &'static str {
        match self {
            crate::balancer::XffMode::Append => "append",
            crate::balancer::XffMode::Keep => "keep",
        }
    }
}

impl crate::balancer::FastClose {
    /// The word `write` and `tcp_fastclose` use.
    pub fn word(self) -> &'static str {
        use crate::balancer::FastClose;
        match self {
            FastClose::Off => "off",
            FastClose::Up => "up",
            FastClose::Down => "down",
            FastClose::Both => "both",
        }
    }
}

#[cfg(test)]
#[path = "exec_tests.rs"]
mod tests;
