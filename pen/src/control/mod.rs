//! pen's control language: the commands of `penctl`, `-o`, `-F` config files and `include`, as
//! typed values, and their replies. This module is the only code that knows the text: parsing
//! lives in `parse`, running a command and its reply text in `exec`, the config file format
//! (reading with `include`, and `write`) in `file`.
//!
//! Parsing checks everything (numbers, ranges, keys, addresses: host names are resolved here,
//! before any lock is taken) so a malformed command changes nothing. Running a command is pure:
//! it changes the balancer and the [`HostView`] and returns the reply text plus, when the shell
//! has to act (rebind, open a log, write a file, close a connection, exit), an [`Action`] that
//! the shell performs after releasing the balancer lock.

mod exec;
pub mod file;
mod parse;

pub use exec::{check_origin, execute, execute_setting, HostView, Outcome};
pub use parse::parse;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::addr::ListenAddr;
use crate::balancer::{AclEntry, AclId, ConnId, FastClose, XffMode};

/// Where a command came from. Commands that name files are only taken from the operator's own
/// command line and config file, or over the control port inside a directory the operator
/// allowed (`control_files`), so that a control client can never overwrite or read arbitrary
/// files (C pen let anyone on the control port truncate any file pen could write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    CommandLine,
    ConfigFile,
    ControlPort,
}

/// The facts a command needs from outside the balancer.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now: std::time::Instant,
    /// Wall-clock time of `now`, for `write` headers and pages.
    pub wall: SystemTime,
    /// The listener's port, lent to a server given without one.
    pub default_port: Option<u16>,
    pub origin: Origin,
}

/// A TLS setting command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ssl {
    /// `ssl_ciphers [LIST]`: None goes back to the defaults.
    Ciphers(Option<String>),
    /// `ssl_client_renegotiation_interval S`: accepted; rustls never renegotiates.
    RenegotiationInterval(Duration),
    OcspResponse(PathBuf),
    Option(String),
    SniPath(PathBuf),
}

impl Ssl {
    /// The command's name.
    pub fn word(&self) -> &'static str {
        match self {
            Ssl::Ciphers(_) => "ssl_ciphers",
            Ssl::RenegotiationInterval(_) => "ssl_client_renegotiation_interval",
            Ssl::OcspResponse(_) => "ssl_ocsp_response",
            Ssl::Option(_) => "ssl_option",
            Ssl::SniPath(_) => "ssl_sni_path",
        }
    }
}

/// One field change of `server N KEY VALUE ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerChange {
    /// An address, already resolved, or a Unix socket path.
    Address(ServerAddress),
    Port(u16),
    Max(u32),
    Hard(u32),
    Weight(u32),
    Prio(u32),
    /// Blacklist for this long from now; zero lifts the blacklist.
    Blacklist(Duration),
    Acl(AclId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddress {
    Ip(IpAddr),
    Unix(PathBuf),
}

/// The on/off settings, each with a command `word` and `no word`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    AbortOnError,
    Ascii,
    Dummy,
    Hash,
    Http,
    Keepalive,
    Prio,
    Roundrobin,
    Stubborn,
    TcpNodelay,
    Transparent,
    Weight,
}

impl Toggle {
    pub const ALL: [Toggle; 12] = [
        Toggle::AbortOnError,
        Toggle::Ascii,
        Toggle::Dummy,
        Toggle::Hash,
        Toggle::Http,
        Toggle::Keepalive,
        Toggle::Prio,
        Toggle::Roundrobin,
        Toggle::Stubborn,
        Toggle::TcpNodelay,
        Toggle::Transparent,
        Toggle::Weight,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Toggle::AbortOnError => "abort_on_error",
            Toggle::Ascii => "ascii",
            Toggle::Dummy => "dummy",
            Toggle::Hash => "hash",
            Toggle::Http => "http",
            Toggle::Keepalive => "keepalive",
            Toggle::Prio => "prio",
            Toggle::Roundrobin => "roundrobin",
            Toggle::Stubborn => "stubborn",
            Toggle::TcpNodelay => "tcp_nodelay",
            Toggle::Transparent => "transparent",
            Toggle::Weight => "weight",
        }
    }

    fn from_word(w: &str) -> Option<Toggle> {
        Toggle::ALL.into_iter().find(|t| t.word() == w)
    }
}

/// A parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty line or a `#` comment: does nothing, replies nothing.
    Nothing,
    Toggle(Toggle, bool),
    Acl {
        list: AclId,
        entry: AclEntry,
    },
    NoAcl(AclId),
    Blacklist(Option<Duration>),
    /// `busy_poll [MICROSECONDS]` (new): how long the data-plane loops poll before they sleep.
    BusyPoll(Option<Duration>),
    /// `coalesce [MICROSECONDS]` (new): the longest nap the TCP data-plane loops take before
    /// they wait for events, when many connections are busy.
    Coalesce(Option<Duration>),
    ClientAcl(Option<AclId>),
    /// `client_conn_max [N]`: open connections allowed per client address (0: no limit).
    ClientConnMax(Option<usize>),
    ClientsMax(Option<usize>),
    Close(ConnId),
    Connection(ConnId),
    ConnMax(Option<usize>),
    Control,
    ControlAcl(Option<AclId>),
    /// `control_files DIR`: where control-port commands may name files (not over the port).
    ControlFiles(PathBuf),
    Debug(Option<u8>),
    DsrIf(String),
    DsrIp(IpAddr),
    /// `epoll`, `kqueue`, `poll`, `select`: accepted and ignored (tokio picks the mechanism).
    EventLoop(&'static str),
    Exit,
    /// `geoip [FILE]`: the country database for `country` entries (new; pen used fixed paths).
    GeoIp(Option<PathBuf>),
    NoGeoIp,
    /// `http_xff [append|keep]` (new): what `-H` does with a client's own X-Forwarded-For.
    HttpXff(Option<XffMode>),
    IdleTimeout(Option<Duration>),
    Idlers(Option<usize>),
    /// Expanded by the config reader; reaching `execute` means it came over the control port.
    Include(PathBuf),
    /// The address as written (pen replies with it) and parsed.
    Listen(Option<(String, ListenAddr)>),
    Log(Option<String>),
    NoLog,
    Mode,
    PendingMax(usize),
    Peek(bool),
    Pid,
    Recent(Duration),
    Server {
        index: usize,
        changes: Vec<ServerChange>,
    },
    Servers,
    Snapshot,
    Socket(i64),
    /// The TLS settings (`ssl_*`), applied by the shell to the TLS configuration.
    Ssl(Ssl),
    Source(Option<IpAddr>),
    Status,
    TarpitAcl(Option<Option<AclId>>),
    TcpFastclose(FastClose),
    Timeout(Option<Duration>),
    Tracking(Option<Duration>),
    WebStats(Option<PathBuf>),
    NoWebStats,
    Write(Option<PathBuf>),
    /// A pen 0.34.1 command whose feature is not in this version.
    NotAvailable(String),
    /// `no X` for an X without a `no` form: pen ignores these silently.
    IgnoredNo,
    /// Not a pen command at all.
    Unknown(String),
    /// pen's `do_cmd: ignoring ...` for a known command used wrongly.
    Ignored(&'static str),
}

impl Command {
    /// The command's word and the file it would read or write, if any (for the control-port
    /// file rule).
    pub fn file(&self) -> Option<(&'static str, PathBuf)> {
        match self {
            Command::Include(p) => Some(("include", p.clone())),
            Command::Write(Some(p)) => Some(("write", p.clone())),
            Command::WebStats(Some(p)) => Some(("web_stats", p.clone())),
            Command::GeoIp(Some(p)) => Some(("geoip", p.clone())),
            Command::Log(Some(l)) if !log_is_network(l) => Some(("log", PathBuf::from(l))),
            Command::Listen(Some((_, ListenAddr::Unix(p)))) => Some(("listen", p.clone())),
            Command::Ssl(s @ (Ssl::OcspResponse(p) | Ssl::SniPath(p))) => {
                Some((s.word(), p.clone()))
            }
            _ => None,
        }
    }
}

/// pen's rule for `-l`/`log`: a value with `:` that does not start with `/` is `HOST:PORT`.
pub fn log_is_network(value: &str) -> bool {
    value.contains(':') && !value.starts_with('/')
}

/// Something the shell must do after the balancer lock is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Close the listener and listen here instead.
    Listen(ListenAddr),
    ConnMax(usize),
    /// Poll this long after the last events before sleeping (`busy_poll`).
    BusyPoll(Duration),
    /// Nap at most this long before waiting for events (`coalesce`).
    Coalesce(Duration),
    Debug(u8),
    /// Keep this many idle upstream connections open.
    Idlers(usize),
    /// Change the TLS configuration (rebuilt all or nothing).
    Tls(Ssl),
    /// Open this country database and use it (None: no database).
    GeoIp(Option<PathBuf>),
    /// Force-close a connection.
    Close(ConnId),
    Exit,
    /// Start (or switch) the request log: a file path or `HOST:PORT`.
    Log(String),
    NoLog,
    /// Write `contents` to `path` atomically (temp file and rename, never through a symlink).
    /// If that fails, reply `on_error` instead of the command's reply.
    WriteFile {
        path: PathBuf,
        contents: String,
        on_error: String,
    },
}

/// The longest text from a command that an error or a reply quotes whole.
pub const QUOTE_MAX: usize = 256;

/// Text from a command as an error or a reply quotes it: whole up to `QUOTE_MAX` bytes, else
/// its start (cut at a character boundary) and its length. A config-file line may be a MiB
/// long: a message that long is useless on a terminal and lost on syslog. The control port's
/// lines are at most 4096 bytes, and pen 0.34.1's were never longer, so only such text is cut.
pub fn excerpt(text: &str) -> String {
    excerpt_within(text, QUOTE_MAX)
}

/// `text` whole up to `max` bytes, else its start (cut at a character boundary), `...` and its
/// length in bytes. Syslog cuts its overlong messages the same way.
pub fn excerpt_within(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
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
    #[error("{command}: '{value}' is not an address that resolves")]
    BadAddress {
        command: &'static str,
        value: String,
    },
    #[error("server {0}: a new server needs an address before a port is of any use")]
    NoAddress(usize),
    #[error("{0}")]
    AclFull(#[from] crate::balancer::AclFull),
    #[error("connection {0}: no such connection")]
    NoConnection(usize),
    #[error("{command}: {reason}")]
    Refused {
        command: &'static str,
        reason: String,
    },
    #[error("{file}:{line}: {error}")]
    InFile {
        file: String,
        line: usize,
        error: Box<ControlError>,
    },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// The largest server index accepted: enough for any real pool, small enough that a typo
/// (pen 0.34.1 crashed on `server 2147483647`) cannot allocate a huge table.
pub const MAX_SERVERS: usize = 4096;
/// The largest client table `clients_max` may ask for.
pub const MAX_CLIENTS: usize = 100_000_000;
/// The largest connection limit `conn_max` may ask for.
pub const MAX_CONNS: usize = 10_000_000;
