//! Fuzz targets: pen's command line (`pen::cli::parse`) and its config files
//! (`pen::control::file::read` and `apply`).
//!
//! Neither may touch the network: an input that would make pen resolve a host name (a
//! listener, a server, `-e`, `-B`, `-C`, a network `-l`, or an address inside a control
//! command) is skipped, or, in a config file, that line is blanked. Config files are written
//! to a fresh directory under the system temp directory, removed afterwards.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use pen::addr::{self, AddrError, Backend, ListenAddr};
use pen::balancer::{Balancer, Settings};
use pen::cli::{self, CliError, Invocation};
use pen::control::{self, file, Command, Context, ControlError, HostView, Origin};
use pen::reqlog::RequestLogError;

use super::addr::{listen_resolves, log_resolves, server_resolves};
use super::control::{check_server_path, line_resolves, state as balancer_state, State};

/// The arguments as `cli::parse` sees them: option values with their letter, every option
/// letter, and the positionals (listener first). A copy of its getopt walk that carries on
/// past errors, so it sees at least every argument pen would look at.
#[derive(Default)]
struct Walk<'a> {
    values: Vec<(char, &'a str)>,
    letters: Vec<char>,
    positionals: Vec<&'a str>,
}

fn walk(args: &[String]) -> Walk<'_> {
    let mut w = Walk::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if a == "--" {
            w.positionals.extend(args[i..].iter().map(String::as_str));
            break;
        }
        if a.starts_with("--") {
            continue;
        }
        if !(a.starts_with('-') && a.len() > 1) {
            w.positionals.push(a);
            continue;
        }
        for (at, letter) in a[1..].char_indices() {
            w.letters.push(letter);
            let Some(flag) = cli::find_flag(letter) else {
                break;
            };
            if flag.arg.is_none() {
                continue;
            }
            let rest = &a[1 + at + letter.len_utf8()..];
            if !rest.is_empty() {
                w.values.push((letter, rest));
            } else if i < args.len() {
                w.values.push((letter, args[i].as_str()));
                i += 1;
            }
            break;
        }
    }
    w
}

/// Would `cli::parse` resolve a host name for these arguments?
fn resolves(w: &Walk) -> bool {
    let value = |&(letter, v): &(char, &str)| match letter {
        'C' => listen_resolves(v),
        'e' | 'B' => server_resolves(v, Some(1)),
        'l' => log_resolves(v),
        'o' | 'O' => line_resolves(v),
        _ => false,
    };
    w.values.iter().any(value)
        || w.positionals.first().is_some_and(|l| listen_resolves(l))
        || w.positionals
            .iter()
            .skip(1)
            .any(|s| server_resolves(s, Some(1)))
}

/// Does `message` name `spec` (or, for a path that is too long, that path inside it)?
fn names_spec(message: &str, spec: &str, e: &AddrError) -> bool {
    match e {
        AddrError::PathTooLong(path) => spec.contains(path.as_str()) && message.contains(path),
        _ => message.contains(&format!("'{spec}'")),
    }
}

/// Check that a refusal names what it refuses.
fn check_error(args: &[String], w: &Walk, e: &CliError) {
    let m = e.to_string();
    let given = |letter: char| w.values.iter().filter(move |(l, _)| *l == letter);
    let named = match e {
        CliError::UnknownOption(o) => {
            m.contains(o.as_str()) && args.iter().any(|a| a.contains(o.as_str()))
        }
        CliError::MissingArgument(c) => {
            m.contains(&format!("-{c}")) && args.last().is_some_and(|a| a.ends_with(*c))
        }
        CliError::BadValue { flag, value, .. } => {
            m.contains(&format!("-{flag} {value}"))
                && (value == "''" || given(*flag).any(|(_, v)| v == value))
        }
        CliError::NotYet { flag, .. } => m.contains(&format!("-{flag}")),
        CliError::NoListen => w.positionals.is_empty(),
        CliError::Listen(source) => w
            .positionals
            .first()
            .is_some_and(|l| names_spec(&m, l, source)),
        CliError::Server(source) => w
            .positionals
            .iter()
            .skip(1)
            .any(|s| names_spec(&m, s, source)),
        CliError::FlagServer { flag, source } => {
            m.starts_with(&format!("-{flag} "))
                && given(*flag).any(|(_, v)| names_spec(&m, v, source))
        }
        CliError::Log(source) => match source {
            RequestLogError::BadTarget { value } | RequestLogError::Host { value, .. } => {
                m.contains(&format!("'{value}'")) && given('l').any(|(_, v)| v == value)
            }
            _ => false,
        },
        CliError::Tls { flag, .. } => given(*flag).any(|(_, v)| m.contains(v)),
        CliError::TlsWithoutCert(c) => m.contains(&format!("-{c}")) && w.letters.contains(c),
        CliError::UdpUnix(path) => {
            m.contains(path.as_str()) && args.iter().any(|a| a.contains(path.as_str()))
        }
        CliError::Command { flag, text, .. } => {
            m.contains(&format!("'{text}'")) && given(*flag).any(|(_, v)| v == text)
        }
        CliError::CommandLineBreak { flag, text } => {
            m.contains(&format!("'{text}'"))
                && given(*flag).any(|(_, v)| v.escape_debug().to_string() == *text)
        }
    };
    assert!(named, "{args:?}: the error does not name the argument: {m}");
}

/// Longer command lines are skipped: each service-name port costs a scan of /etc/services,
/// and a few dozen arguments already reach every branch.
const MAX_ARGS: usize = 32;

/// pen's command line: the input split into arguments at NUL bytes.
///
/// Inputs that are not UTF-8, have more than `MAX_ARGS` arguments, or would make pen resolve a
/// host name, are skipped.
///
/// Invariants:
/// - Parsing has no effects: the same arguments parse to the same result twice (a bound or
///   opened socket would make the second parse differ or fail), and `Options` holds addresses,
///   never sockets.
/// - A refusal names the offending argument: the unknown option, the option missing its
///   value, the bad value with its option letter, the listener or server spec (quoted), the
///   `-l` target, the `-o` command text (escaped when it has a line break inside).
/// - An accepted command line keeps the listener as written and parsed, turns each further
///   positional into one server in order (with the listener's port lent), binds a bare `-C`
///   port to 127.0.0.1 only, keeps every value within pen's bounds (connect timeout >= 1 s,
///   client table <= 10^8, `-x` <= 10^8, `-m` 1..=10^6, `-q` 50..=2^20), and has no TLS flag
///   without `-E`, and no Unix address with `-U`.
pub fn command_line(data: &[u8]) {
    let args: Vec<String> = if data.is_empty() {
        Vec::new()
    } else {
        let parts: Result<Vec<String>, _> = data
            .split(|&b| b == 0)
            .map(|a| String::from_utf8(a.to_vec()))
            .collect();
        match parts {
            Ok(a) => a,
            Err(_) => return,
        }
    };
    if args.len() > MAX_ARGS {
        return;
    }
    let w = walk(&args);
    if resolves(&w) {
        return;
    }
    let first = cli::parse(&args);
    let second = cli::parse(&args);
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "{args:?}: parsing twice differs"
    );
    let o = match first {
        Err(e) => return check_error(&args, &w, &e),
        Ok(Invocation::Run(o)) => o,
        Ok(Invocation::Usage) => {
            assert!(
                args.is_empty() || w.letters.contains(&'N'),
                "{args:?}: usage"
            );
            return;
        }
        Ok(_) => return,
    };
    if let Some((&listen, servers)) = w.positionals.split_first() {
        assert_eq!(o.listen_text.as_deref(), Some(listen), "{args:?}");
        let parsed = addr::parse_listen(listen).expect("accepted once");
        assert_eq!(o.listen.as_ref(), Some(&parsed), "{args:?}");
        let port = parsed.default_port();
        let want: Vec<_> = servers
            .iter()
            .map(|s| addr::parse_server(s, port).expect("accepted once"))
            .collect();
        assert_eq!(o.servers, want, "{args:?}: servers");
    } else {
        assert!(o.servers.is_empty(), "{args:?}");
        assert!(o.listen.is_some() || o.config_file.is_some(), "{args:?}");
    }
    if let Some((text, ListenAddr::Tcp(sa))) = &o.control {
        if !text.contains(':') {
            assert_eq!(
                sa.ip(),
                std::net::Ipv4Addr::LOCALHOST,
                "{args:?}: -C {text} is not loopback-only"
            );
        }
    }
    let s = &o.settings;
    assert!(s.connect_timeout >= Duration::from_secs(1), "{args:?}: -t");
    assert!(o.clients_max.get() <= 100_000_000, "{args:?}: -c");
    assert!(
        o.conn_max.is_none_or(|n| n.get() <= 100_000_000),
        "{args:?}: -x"
    );
    assert!(
        (1..=1_000_000).contains(&o.multi_accept.get()),
        "{args:?}: -m"
    );
    assert!((50..=1 << 20).contains(&o.backlog), "{args:?}: -q");
    if !o.tls.enabled() {
        let tls_flags = ['K', 'G', 'A', 'R', 'L'];
        assert!(
            !w.letters.iter().any(|l| tls_flags.contains(l)),
            "{args:?}: a TLS flag without -E"
        );
    }
    if o.udp {
        let unix = |b: &Backend| matches!(b, Backend::Unix(_));
        assert!(
            !matches!(o.listen, Some(ListenAddr::Unix(_))),
            "{args:?}: -U"
        );
        assert!(
            !o.servers
                .iter()
                .chain(&o.emergency)
                .any(|s| unix(&s.backend)),
            "{args:?}: -U with a Unix server"
        );
    }
}

/// A directory of its own under the system temp directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pen-fuzz-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("a fresh temp directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lines of a config file kept (the rest is cut off), and server slots a line may use
/// (`server N` from here up is blanked). A `servers` or `write` line lists every slot, and the
/// file is applied three times: this keeps a 4 KiB input within milliseconds in a debug build.
const MAX_LINES: usize = 64;
const SLOTS: usize = 8;

/// Keep the first `MAX_LINES` lines, and blank the lines that would resolve a host name, use a
/// server slot from `SLOTS` up, or include a file outside the directory (an absolute path or
/// `..`: reading /proc or /dev is no part of the test). A file that is not UTF-8 is kept as it
/// is (cut to `MAX_LINES`): pen refuses it before parsing any line.
fn confine(bytes: &[u8]) -> Vec<u8> {
    let cut = bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(MAX_LINES - 1)
        .map_or(bytes.len(), |(i, _)| i + 1);
    let bytes = &bytes[..cut];
    let Ok(text) = std::str::from_utf8(bytes) else {
        return bytes.to_vec();
    };
    let escapes = |line: &str| {
        let line = line.split(['\r', '\n']).next().unwrap_or("");
        let mut words = line.split(' ').filter(|w| !w.is_empty());
        match (words.next(), words.next()) {
            (Some("include"), Some(p)) => {
                let p = Path::new(p);
                p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir))
            }
            (Some("server"), Some(n)) => n.parse::<usize>().is_ok_and(|n| n >= SLOTS),
            _ => false,
        }
    };
    text.split('\n')
        .map(|line| {
            if line_resolves(line) || escapes(line) {
                ""
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

/// The state a config file is applied to: pen started as `pen 127.0.0.1:8080 127.0.0.1:9001`
/// with `-F main.cfg`.
fn setup(config: &Path) -> (Balancer, HostView) {
    let mut b = Balancer::new(
        Settings::default(),
        NonZeroUsize::new(64).expect("non-zero"),
    );
    b.add_server(&addr::parse_server("127.0.0.1:9001", Some(8080)).expect("a valid spec"));
    b.set_conn_max(500);
    let listen = addr::parse_listen("127.0.0.1:8080").expect("a valid listener");
    let mut host = HostView::new(Some(listen), 500);
    host.pid = 4242;
    host.config_file = Some(config.to_path_buf());
    (b, host)
}

/// The text of line `n` (from 1) of `file`, as `read` splits it.
fn source_line(cache: &mut Lines, file: &str, n: usize) -> Option<String> {
    let lines = cache.entry(file.to_string()).or_insert_with(|| {
        let bytes = std::fs::read(file).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect()
    });
    n.checked_sub(1).and_then(|i| lines.get(i)).cloned()
}

/// The files read so far, split into lines.
type Lines = HashMap<String, Vec<String>>;

/// A `read` error names a file and, for a bad line, the line: the line is there, and it either
/// fails to parse with exactly that error or is an `include` whose file failed.
fn check_read_error(cache: &mut Lines, top: &Path, e: &ControlError) {
    match e {
        ControlError::File { path, .. } => {
            assert_eq!(path, &top.display().to_string(), "{e}");
        }
        ControlError::InFile { file, line, error } => {
            assert_eq!(file, &top.display().to_string(), "{e}");
            if matches!(&**error, ControlError::Refused { reason, .. } if reason == "not UTF-8 text")
            {
                // The named line holds the first byte that is not UTF-8.
                let bytes = std::fs::read(file).unwrap_or_default();
                let invalid = std::str::from_utf8(&bytes)
                    .err()
                    .unwrap_or_else(|| panic!("{e}: {file} is UTF-8"));
                let valid = &bytes[..invalid.valid_up_to()];
                let want = valid.iter().filter(|&&b| b == b'\n').count() + 1;
                assert_eq!(*line, want, "{e}");
                return;
            }
            let text = source_line(cache, file, *line)
                .unwrap_or_else(|| panic!("{e}: there is no line {line} in {file}"));
            if text.contains('\0') {
                assert!(e.to_string().contains("NUL"), "{e}: line {text:?}");
                return;
            }
            if text.contains('\r') {
                assert!(
                    e.to_string().contains("carriage return"),
                    "{e}: line {text:?}"
                );
                return;
            }
            match (control::parse(&text), &**error) {
                (
                    Ok(Command::Include(inner)),
                    nested @ (ControlError::File { .. } | ControlError::InFile { .. }),
                ) => {
                    let inner = match top.parent() {
                        Some(dir) if inner.is_relative() => dir.join(inner),
                        _ => inner,
                    };
                    check_read_error(cache, &inner, nested);
                }
                (Err(parsed), error) => assert_eq!(&parsed, error, "{e}: line {text:?}"),
                (parsed, _) => panic!("{e}: line {line} ({text:?}) parses as {parsed:?}"),
            }
        }
        other => panic!("read failed with an error naming no file: {other}"),
    }
}

/// The state `apply` is judged by: the balancer and the host view.
fn state(b: &Balancer, host: &HostView) -> (State, HostView) {
    (balancer_state(b), host.clone())
}

/// A config file of control commands (pen's `-F`), as one transaction.
///
/// The input up to its first NUL byte is `main.cfg`, the rest (if any) `inc.cfg`, in a fresh
/// temp directory; `main.cfg` is read with `file::read` (following `include`) and applied with
/// `file::apply` to a running pen's state. Each file is cut to `MAX_LINES` lines, and lines
/// that would resolve a host name, use a server slot from `SLOTS` up, or include a file
/// outside the directory are blanked first (`confine`).
///
/// Invariants:
/// - Every line `read` returns is attributed to its file and line: that line parses to that
///   command. A refusal names the top file and, for a bad line, its number; that line fails
///   to parse with exactly the error given, or is an `include` whose file is refused (checked
///   down the include chain).
/// - A line with a NUL byte is refused, naming it (reliability B7; the control port refuses
///   such a command as not text), never taken; so is one with a CR left inside it (after the
///   CR of a CRLF ending), which would end its command there.
/// - `apply` is a transaction: on error the balancer and host view are unchanged and the error
///   names a line of the file; on success there is one reply per command, and every server
///   slot has a Unix path of at most 107 bytes, as on the command line.
/// - Re-reading is idempotent (SIGHUP): applying the same lines again succeeds and leaves the
///   same state.
/// - `write` round-trips: the state rendered in `write` format, read back and applied to a
///   fresh pen, renders the same (after the two header comment lines), and has the same
///   settings, lists, servers, log and debug level (`saved`).
pub fn config_file(data: &[u8]) {
    let (main, inc) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let dir = TempDir::new("config");
    let main_path = dir.0.join("main.cfg");
    std::fs::write(&main_path, confine(main)).expect("write main.cfg");
    if let Some(inc) = inc {
        std::fs::write(dir.0.join("inc.cfg"), confine(inc)).expect("write inc.cfg");
    }
    let mut cache = HashMap::new();
    let lines = match file::read(&main_path) {
        Ok(lines) => lines,
        Err(e) => return check_read_error(&mut cache, &main_path, &e),
    };
    for l in &lines {
        assert!(!matches!(l.command, Command::Include(_)), "an include left");
        let text = source_line(&mut cache, &l.file, l.line)
            .unwrap_or_else(|| panic!("{}:{}: no such line", l.file, l.line));
        assert!(
            !text.contains(['\0', '\r']),
            "{}:{}: a line with a NUL byte or a CR inside was taken: {text:?}",
            l.file,
            l.line
        );
        assert_eq!(
            control::parse(&text).as_ref(),
            Ok(&l.command),
            "{}:{}: {text:?}",
            l.file,
            l.line
        );
    }

    let ctx = Context {
        now: Instant::now(),
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        default_port: Some(8080),
        origin: Origin::ConfigFile,
    };
    let (mut b, mut host) = setup(&main_path);
    let before = state(&b, &host);
    let applied = match file::apply(&lines, &mut b, &mut host, &ctx) {
        Ok(applied) => applied,
        Err(e) => {
            assert_eq!(
                state(&b, &host),
                before,
                "a refused file changed the state: {e}"
            );
            let ControlError::InFile { file, line, .. } = &e else {
                panic!("apply failed without naming a line: {e}");
            };
            assert!(
                lines.iter().any(|l| &l.file == file && l.line == *line),
                "{e}: names no command of the file"
            );
            return;
        }
    };
    assert_eq!(applied.replies.len(), lines.len(), "one reply per command");
    for server in b.servers() {
        check_server_path("config file", server);
    }

    let once = state(&b, &host);
    file::apply(&lines, &mut b, &mut host, &ctx).expect("the same file applies again");
    assert_eq!(
        state(&b, &host),
        once,
        "re-reading the file changed the state"
    );

    let written = dir.0.join("written.cfg");
    let text = file::render(&b, &host, &ctx, &written);
    std::fs::write(&written, &text).expect("write written.cfg");
    let reread =
        file::read(&written).unwrap_or_else(|e| panic!("write output unreadable: {e}\n{text}"));
    let (mut b2, mut host2) = setup(&main_path);
    file::apply(&reread, &mut b2, &mut host2, &ctx)
        .unwrap_or_else(|e| panic!("write output does not load: {e}\n{text}"));
    let again = file::render(&b2, &host2, &ctx, &written);
    let body = |t: &str| t.lines().skip(2).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&again), body(&text), "write output loads differently");
    assert_eq!(
        saved(&b2, &host2),
        saved(&b, &host),
        "write lost part of the configuration:\n{text}"
    );
}

/// What `write` promises to save (reference §2.3, plus the settings this version adds): the
/// toggles and timers, the access lists, every server slot with an address, the log, the
/// debug level.
fn saved(b: &Balancer, host: &HostView) -> String {
    let s = &b.settings;
    let servers: Vec<String> = b
        .servers()
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let backend = v.backend.as_ref()?;
            let acl = v.acl.index();
            Some(format!(
                "{i} {backend:?} acl {acl} {} {} {} {}",
                v.maxc, v.hard, v.weight, v.prio
            ))
        })
        .collect();
    let toggles = [
        s.ascii,
        s.hash,
        s.http,
        s.roundrobin,
        s.stubborn,
        s.weight,
        s.prio,
        s.keepalive,
        s.transparent,
        s.dummy,
        s.tcp_nodelay,
    ];
    let times = [
        s.blacklist_time,
        s.tracking,
        s.connect_timeout,
        s.idle_timeout,
    ];
    format!(
        "{toggles:?}\n{times:?}\n{:?} {} {} {:?} {:?} {:?}\n{:?}\n{servers:?}\nlog {:?} debug {}",
        s.fastclose,
        s.client_acl,
        s.control_acl,
        s.source,
        s.xff,
        s.web_stats,
        b.acls,
        host.log,
        host.debug
    )
}
