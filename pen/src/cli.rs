//! pen's command line: the option letters of pen 0.34.1, parsed as glibc getopt does (clustered
//! flags, attached or separate arguments, options after positionals, `--` to stop), plus
//! `--help`, `--version` and `--check`.
//!
//! `FLAGS` is the single table of options: the parser, the usage text and the man-page test all
//! read it. A hand-written parser rather than clap, because pen's grammar (options applied in
//! command-line order, repeated `-d`, obsolete letters that print a notice and carry on) is
//! getopt's, and clap would have to be bent into it.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::addr::{self, AddrError, Backend, ListenAddr, ServerSpec};
use crate::balancer::{Settings, DEFAULT_CLIENTS_MAX};
use crate::control::{self, Command, ControlError};
use crate::reqlog::{LogTarget, RequestLogError};
use crate::tls::{Protocols, TlsError, TlsOptions};

/// What an option letter does in this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Implemented.
    Yes,
    /// Obsolete in pen too: print this notice and carry on.
    Obsolete(&'static str),
    /// Accepted and ignored; the text says why (shown in --help and the man page).
    NoEffect(&'static str),
    /// pen's option whose feature is not in this build yet: refused with a clear message.
    NotYet(&'static str),
}

/// One option letter.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub letter: char,
    /// The argument's name in the usage text, if the option takes one.
    pub arg: Option<&'static str>,
    pub help: &'static str,
    pub support: Support,
}

const fn flag(
    letter: char,
    arg: Option<&'static str>,
    help: &'static str,
    support: Support,
) -> Flag {
    Flag {
        letter,
        arg,
        help,
        support,
    }
}

use Support::{NoEffect, NotYet, Obsolete, Yes};

/// Every option letter of pen 0.34.1, in the order of its usage text.
pub const FLAGS: &[Flag] = &[
    flag('B', Some("host:port"), "abuse server for clients denied by the client ACL", Yes),
    flag('C', Some("addr:port"), "control port (a bare port binds the loopback address only)", Yes),
    flag('T', Some("sec"), "client tracking time in seconds (0 = forever) [0]", Yes),
    flag('H', None, "add X-Forwarded-For and X-Forwarded-Proto headers to http requests", Yes),
    flag('U', None, "use udp protocol support", Yes),
    flag('O', Some("option"), "same as -o", Yes),
    flag('P', None, "use poll() rather than epoll (no effect: the runtime picks the event mechanism)", NoEffect("the runtime picks the event mechanism")),
    flag('W', None, "use weight for server selection", Yes),
    flag('X', None, "enable 'exit' command for control port", Yes),
    flag('a', None, "debugging dumps in ascii format", Yes),
    flag('b', Some("sec"), "blacklist time in seconds [30]", Yes),
    flag('c', Some("N"), "max number of clients [2048]", Yes),
    flag('d', None, "debugging on (repeat -d for more)", Yes),
    flag('e', Some("host:port"), "emergency server of last resort", Yes),
    flag('f', None, "stay in foreground", Yes),
    flag('h', None, "use hash for initial server selection", Yes),
    flag('j', Some("dir"), "run in chroot", Yes),
    flag('F', Some("file"), "name of configuration file", Yes),
    flag('l', Some("file"), "logging on: log requests to a file, or to penlogd at host:port", Yes),
    flag('g', Some("file"), "GeoIP2/GeoLite2 country database (.mmdb) for country access lists", Yes),
    flag('m', Some("N"), "accept up to N connections per wake-up [100]", Yes),
    flag('q', Some("N"), "listen queue (backlog) length [500]", Yes),
    flag('r', None, "bypass client tracking in server selection", Yes),
    flag('s', None, "stubborn selection, i.e. don't fail over", Yes),
    flag('t', Some("sec"), "connect timeout in seconds [3]", Yes),
    flag('u', Some("user"), "run as alternative user", Yes),
    flag('p', Some("file"), "write pid to file", Yes),
    flag('x', Some("N"), "max number of simultaneous connections [from the descriptor limit, at least 500]", Yes),
    flag('w', Some("file"), "save statistics in HTML format in a file", Yes),
    flag('o', Some("option"), "run a command in penctl format (see penctl(1)); its reply goes to stdout", Yes),
    flag('E', Some("certfile"), "use the given certificate in PEM format (turns on TLS termination)", Yes),
    flag('K', Some("keyfile"), "use the given key in PEM format (may be contained in cert)", Yes),
    flag('G', Some("cacertfile"), "file containing the CA's certificate (for -R)", Yes),
    flag('A', Some("cacertdir"), "directory containing CA certificates (for -R)", Yes),
    flag('Z', None, "use SSL compatibility mode (no effect: rustls has no compatibility workarounds to turn on)", NoEffect("rustls has no compatibility workarounds to turn on")),
    flag('R', None, "require valid peer certificate", Yes),
    flag('L', Some("protocol"), "TLS versions: ssl23, tls1 or tls1.2 (TLS 1.2 and 1.3, the default), tls1.3", Yes),
    flag('D', None, "obsolete", Obsolete("Pen 0.26.0 removed the delayed forward feature,\nmaking the -D option obsolete")),
    flag('N', None, "obsolete; prints this usage", Yes),
    flag('Q', None, "obsolete", Obsolete("Since Pen 0.26.0, kqueue is already the default on supported systems,\nmaking the -Q option obsolete")),
    flag('S', Some("N"), "obsolete", Obsolete("As of 0.28.1 the server table is expanded dynamically,\nmaking the -S option obsolete")),
    flag('n', None, "obsolete", Obsolete("Pen 0.26.0 and up uses only nonblocking sockets,\nmaking the -n option obsolete")),
    flag('i', Some("name"), "Windows only: prints \"Windows only\" and exits", Yes),
];

pub fn find_flag(letter: char) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.letter == letter)
}

/// Everything pen needs to start, validated and resolved.
#[derive(Debug, Clone)]
pub struct Options {
    /// None when only the config file (`-F`) names the listener.
    pub listen: Option<ListenAddr>,
    /// The listener as written, for `listen` and `write`.
    pub listen_text: Option<String>,
    pub servers: Vec<ServerSpec>,
    pub emergency: Option<ServerSpec>,
    /// `-B`: where clients denied by `client_acl` go.
    pub abuse: Option<ServerSpec>,
    /// `-C` as given, and parsed.
    pub control: Option<(String, ListenAddr)>,
    /// `-X`: the `exit` command works.
    pub exit_enabled: bool,
    /// `-F`
    pub config_file: Option<PathBuf>,
    pub settings: Settings,
    pub clients_max: NonZeroUsize,
    /// `-x`; None = derived from the descriptor limit at startup.
    pub conn_max: Option<NonZeroUsize>,
    pub backlog: u32,
    pub multi_accept: NonZeroUsize,
    pub foreground: bool,
    pub debug: u8,
    pub ascii: bool,
    /// `-l`: the request log's destination.
    pub log: Option<LogTarget>,
    /// `-p`: the pid file.
    pub pid_file: Option<PathBuf>,
    /// `-u`: the user to run as.
    pub user: Option<String>,
    /// `-j`: the chroot jail.
    pub jail: Option<PathBuf>,
    /// `-E` and the other TLS options; TLS is on when `tls.cert` is set.
    pub tls: TlsOptions,
    /// `-U`: balance UDP instead of TCP.
    pub udp: bool,
    /// `-g`: the country database to open at startup.
    pub geoip: Option<PathBuf>,
    /// Notices to print on stderr before starting (obsolete options, bumped values).
    pub notices: Vec<String>,
    /// Replies of `-o` commands already applied, for stdout.
    pub replies: Vec<String>,
    /// `-o` commands that need the server or client table, in order; they run before the
    /// positional servers are set, so those win, as in pen.
    pub commands: Vec<Command>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Options>),
    /// `--check`: check the configuration as a start would, bind nothing, exit 0 or 1.
    Check(Box<Options>),
    /// Print the usage text on stdout and exit 0 (no arguments, `-N`, as pen does).
    Usage,
    Help,
    Version,
    /// `-i`: print this and exit 0, as pen does.
    ExitWith(&'static str),
}

/// A command line pen refuses. Every variant names the offending argument.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid option -- '{0}' (see pen --help)")]
    UnknownOption(String),
    #[error("option -{0} requires an argument")]
    MissingArgument(char),
    #[error("-{flag} {value}: {expected}")]
    BadValue {
        flag: char,
        value: String,
        expected: &'static str,
    },
    #[error("-{flag}: {feature} is not available in this version of pen")]
    NotYet { flag: char, feature: &'static str },
    #[error("no listen address given (usage: pen [options] [host:]port server ...)")]
    NoListen,
    #[error("listen address {0}")]
    Listen(AddrError),
    #[error("server {0}")]
    Server(AddrError),
    #[error("-{flag} {source}")]
    FlagServer { flag: char, source: AddrError },
    #[error("-l: {0}")]
    Log(RequestLogError),
    #[error("-{flag} {source}")]
    Tls { flag: char, source: TlsError },
    #[error("-{0} needs TLS on the listener: give the certificate with -E")]
    TlsWithoutCert(char),
    #[error("-U: UDP needs IP addresses; {0} is a Unix socket")]
    UdpUnix(String),
    #[error("-{flag} '{text}': {source}")]
    Command {
        flag: char,
        text: String,
        source: ControlError,
    },
    #[error(
        "-{flag} '{text}': a line break inside the command (give each command its own -{flag})"
    )]
    CommandLineBreak { flag: char, text: String },
}

/// Parse `args` (without the program name).
pub fn parse(args: &[String]) -> Result<Invocation, CliError> {
    if args.is_empty() {
        return Ok(Invocation::Usage);
    }
    let mut raw = Raw::default();
    let mut positionals: Vec<&str> = Vec::new();
    let mut check = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        match arg.as_str() {
            "--" => {
                positionals.extend(args[i..].iter().map(String::as_str));
                break;
            }
            "--help" => return Ok(Invocation::Help),
            "--version" => return Ok(Invocation::Version),
            "--check" => check = true,
            a if a.starts_with("--") => return Err(CliError::UnknownOption(a.to_string())),
            a if a.starts_with('-') && a.len() > 1 => {
                for (at, letter) in a[1..].char_indices() {
                    let flag = find_flag(letter)
                        .ok_or_else(|| CliError::UnknownOption(letter.to_string()))?;
                    let value = match flag.arg {
                        None => None,
                        Some(_) => {
                            let rest = &a[1 + at + letter.len_utf8()..];
                            if !rest.is_empty() {
                                Some(rest.to_string())
                            } else if i < args.len() {
                                i += 1;
                                Some(args[i - 1].clone())
                            } else {
                                return Err(CliError::MissingArgument(letter));
                            }
                        }
                    };
                    if let Some(early) = raw.apply(flag, value.as_deref())? {
                        return Ok(early);
                    }
                    if flag.arg.is_some() {
                        break;
                    }
                }
            }
            a => positionals.push(a),
        }
    }
    let options = Box::new(raw.finish(&positionals)?);
    Ok(if check {
        Invocation::Check(options)
    } else {
        Invocation::Run(options)
    })
}

/// Options as given, before the positionals are known.
#[derive(Default)]
struct Raw {
    settings: Settings,
    clients_max: Option<NonZeroUsize>,
    conn_max: Option<NonZeroUsize>,
    backlog: Option<u32>,
    multi_accept: Option<NonZeroUsize>,
    emergency: Option<String>,
    abuse: Option<String>,
    control: Option<(String, ListenAddr)>,
    exit_enabled: bool,
    config_file: Option<PathBuf>,
    foreground: bool,
    debug: u8,
    ascii: bool,
    log: Option<LogTarget>,
    pid_file: Option<PathBuf>,
    user: Option<String>,
    jail: Option<PathBuf>,
    tls: TlsOptions,
    /// The TLS flags given (K, G, A, R, L), which make sense only with -E.
    tls_flags: Vec<char>,
    udp: bool,
    geoip: Option<PathBuf>,
    notices: Vec<String>,
    replies: Vec<String>,
    commands: Vec<Command>,
}

fn number<T: std::str::FromStr>(
    flag: char,
    value: &str,
    expected: &'static str,
) -> Result<T, CliError> {
    value.parse().map_err(|_| CliError::BadValue {
        flag,
        value: value.to_string(),
        expected,
    })
}

/// A non-empty argument: a file, directory or user name.
fn name(flag: char, value: &str, expected: &'static str) -> Result<String, CliError> {
    if value.is_empty() {
        return Err(CliError::BadValue {
            flag,
            value: "''".to_string(),
            expected,
        });
    }
    Ok(value.to_string())
}

fn seconds(flag: char, value: &str) -> Result<Duration, CliError> {
    number::<u32>(flag, value, "expected a number of seconds")
        .map(|s| Duration::from_secs(s.into()))
}

fn positive(flag: char, value: &str) -> Result<NonZeroUsize, CliError> {
    let n: usize = number(flag, value, "expected a positive number")?;
    // Bounded so that a typo cannot ask for terabytes of table.
    match NonZeroUsize::new(n) {
        Some(n) if n.get() <= 100_000_000 => Ok(n),
        _ => Err(CliError::BadValue {
            flag,
            value: value.to_string(),
            expected: "expected a number from 1 to 100000000",
        }),
    }
}

impl Raw {
    /// Apply one option. Returns an invocation that ends parsing early (`-i`, `-N`).
    fn apply(&mut self, flag: &Flag, value: Option<&str>) -> Result<Option<Invocation>, CliError> {
        let letter = flag.letter;
        match flag.support {
            NotYet(feature) => {
                return Err(CliError::NotYet {
                    flag: letter,
                    feature,
                })
            }
            Obsolete(notice) => {
                self.notices.push(notice.to_string());
                return Ok(None);
            }
            NoEffect(_) | Yes => {}
        }
        let v = value.unwrap_or("");
        let s = &mut self.settings;
        match letter {
            'P' | 'Z' => {}
            'a' => self.ascii = true,
            'W' => s.weight = true,
            'b' => s.blacklist_time = seconds(letter, v)?,
            'c' => self.clients_max = Some(positive(letter, v)?),
            'd' => self.debug = self.debug.saturating_add(1),
            'e' => self.emergency = Some(v.to_string()),
            'B' => self.abuse = Some(v.to_string()),
            'C' => {
                let addr = control_listen(v).map_err(|e| CliError::FlagServer {
                    flag: 'C',
                    source: e,
                })?;
                self.control = Some((v.to_string(), addr));
            }
            'X' => self.exit_enabled = true,
            'F' => self.config_file = Some(PathBuf::from(v)),
            'f' => self.foreground = true,
            'h' => s.hash = true,
            'j' => self.jail = Some(name(letter, v, "expected a directory")?.into()),
            'p' => self.pid_file = Some(name(letter, v, "expected a file name")?.into()),
            'u' => self.user = Some(name(letter, v, "expected a user name")?),
            'l' => self.log = Some(LogTarget::parse(v).map_err(CliError::Log)?),
            'w' => {
                let path = PathBuf::from(name(letter, v, "expected a file name")?);
                s.web_stats = Some(path.into());
            }
            'g' => self.geoip = Some(PathBuf::from(v)),
            'H' => s.http = true,
            'U' => self.udp = true,
            'm' => {
                let n: i64 = number(letter, v, "expected a number")?;
                if n < 1 {
                    self.notices.push("multi_accept bumped to 1".into());
                }
                let n = usize::try_from(n.clamp(1, 1_000_000)).unwrap_or(1);
                self.multi_accept = NonZeroUsize::new(n);
            }
            'q' => {
                let n: i64 = number(letter, v, "expected a number")?;
                if n < 50 {
                    self.notices.push("listen_queue bumped to 50".into());
                }
                self.backlog = Some(u32::try_from(n.clamp(50, 1 << 20)).unwrap_or(50));
            }
            'r' => s.roundrobin = true,
            's' => s.stubborn = true,
            't' => {
                let t = seconds(letter, v)?;
                if t.is_zero() {
                    return Err(CliError::BadValue {
                        flag: letter,
                        value: v.to_string(),
                        expected: "the connect timeout must be at least 1 second",
                    });
                }
                s.connect_timeout = t;
            }
            'T' => s.tracking = seconds(letter, v)?,
            'x' => self.conn_max = Some(positive(letter, v)?),
            'E' => self.tls.cert = Some(v.into()),
            'K' | 'G' | 'A' | 'R' | 'L' => {
                self.tls_flags.push(letter);
                let tls = &mut self.tls;
                match letter {
                    'K' => tls.key = Some(v.into()),
                    'G' => tls.ca_file = Some(v.into()),
                    'A' => tls.ca_dir = Some(v.into()),
                    'R' => tls.require_client_cert = true,
                    _ => {
                        tls.protocols = Protocols::parse(v).map_err(|source| CliError::Tls {
                            flag: letter,
                            source,
                        })?
                    }
                }
            }

            'o' | 'O' => {
                // One -o is one command. pen 0.34.1 ended it at the first CR or LF and
                // silently dropped the rest; a line ending at the very end is harmless.
                let text = v.strip_suffix('\n').unwrap_or(v);
                let text = text.strip_suffix('\r').unwrap_or(text);
                if text.contains(['\r', '\n']) {
                    return Err(CliError::CommandLineBreak {
                        flag: letter,
                        text: v.escape_debug().to_string(),
                    });
                }
                let cmd = control::parse(text).map_err(|source| CliError::Command {
                    flag: letter,
                    text: v.to_string(),
                    source,
                })?;
                match control::execute_setting(&cmd, s) {
                    Some(reply) => self.replies.push(reply),
                    None => self.commands.push(cmd),
                }
            }
            'N' => return Ok(Some(Invocation::Usage)),
            'i' => return Ok(Some(Invocation::ExitWith("Windows only"))),
            other => unreachable!("option -{other} is in FLAGS as supported but has no handler"),
        }
        Ok(None)
    }

    fn finish(self, positionals: &[&str]) -> Result<Options, CliError> {
        if let (false, Some(&letter)) = (self.tls.enabled(), self.tls_flags.first()) {
            return Err(CliError::TlsWithoutCert(letter));
        }
        // The listener: the first positional, else a `-o listen`, else (when `-F` is given)
        // whatever the config file says.
        let (listen_text, listen, servers) = match positionals.split_first() {
            Some((l, rest)) => (
                Some(l.to_string()),
                Some(addr::parse_listen(l).map_err(CliError::Listen)?),
                rest,
            ),
            None => {
                let from_o = self.commands.iter().rev().find_map(|c| match c {
                    Command::Listen(Some(l)) => Some(l.clone()),
                    _ => None,
                });
                if from_o.is_none() && self.config_file.is_none() {
                    return Err(CliError::NoListen);
                }
                let (text, listen) = from_o.unzip();
                (text, listen, &[][..])
            }
        };
        let port = listen.as_ref().and_then(ListenAddr::default_port);
        let servers = servers
            .iter()
            .map(|s| addr::parse_server(s, port).map_err(CliError::Server))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = |flag: char, v: Option<String>| {
            v.map(|e| {
                addr::parse_server(&e, port).map_err(|source| CliError::FlagServer { flag, source })
            })
            .transpose()
        };
        let emergency = spec('e', self.emergency)?;
        let abuse = spec('B', self.abuse)?;
        if self.udp {
            let unix = |b: &Backend| matches!(b, Backend::Unix(_));
            let bad = match &listen {
                Some(ListenAddr::Unix(p)) => Some(p.display().to_string()),
                _ => servers
                    .iter()
                    .chain(&emergency)
                    .find(|s| unix(&s.backend))
                    .map(|s| s.backend.to_string()),
            };
            if let Some(bad) = bad {
                return Err(CliError::UdpUnix(bad));
            }
        }
        Ok(Options {
            listen,
            listen_text,
            servers,
            emergency,
            abuse,
            control: self.control,
            exit_enabled: self.exit_enabled,
            config_file: self.config_file,
            settings: self.settings,
            clients_max: self
                .clients_max
                .unwrap_or(NonZeroUsize::new(DEFAULT_CLIENTS_MAX).expect("non-zero constant")),
            conn_max: self.conn_max,
            backlog: self.backlog.unwrap_or(500),
            multi_accept: self
                .multi_accept
                .unwrap_or(NonZeroUsize::new(100).expect("non-zero constant")),
            foreground: self.foreground,
            debug: self.debug,
            ascii: self.ascii,
            log: self.log,
            pid_file: self.pid_file,
            user: self.user,
            jail: self.jail,
            tls: self.tls,
            udp: self.udp,
            geoip: self.geoip,
            notices: self.notices,
            replies: self.replies,
            commands: self.commands,
        })
    }
}

/// `-C`: like a listener, except that a bare port binds the loopback address only (C pen bound
/// every address, exposing an unauthenticated control port to the network).
pub fn control_listen(v: &str) -> Result<ListenAddr, AddrError> {
    match addr::parse_listen(v)? {
        ListenAddr::Tcp(sa) if !v.contains(':') => Ok(ListenAddr::Tcp(std::net::SocketAddr::new(
            std::net::Ipv4Addr::LOCALHOST.into(),
            sa.port(),
        ))),
        other => Ok(other),
    }
}

/// The usage text (pen's layout, listing this build's options), for `pen` alone and `--help`.
pub fn usage() -> String {
    let mut out = String::from(
        "usage:\n  pen [options] [host:]port h1[:p1[:maxc1[:hard1[:weight1[:prio1]]]]] [h2[:p2[:maxc2[:hard2[:weight2[:prio2]]]]]] ...\n\n",
    );
    for f in FLAGS {
        let left = match f.arg {
            Some(a) => format!("-{} {a}", f.letter),
            None => format!("-{}", f.letter),
        };
        let note = match f.support {
            NotYet(feature) => format!(" (not yet available: {feature})"),
            _ => String::new(),
        };
        out.push_str(&format!("  {left:<16} {}{note}\n", f.help));
    }
    out.push_str(
        "  --check          check the configuration (nothing is bound) and exit\n  --help           print this text\n  --version        print the version\n\nexample:\n  pen smtp mailhost1:smtp mailhost2:25 mailhost3\n",
    );
    out
}

#[cfg(test)]
mod tests;
