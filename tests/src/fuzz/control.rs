//! Fuzz target: pen's control port, from the bytes a control client sends to the replies and
//! the balancer state they leave behind.
//!
//! The bytes go through pen's own framing (`control_port::Framer`, what `read_line` runs on the
//! socket's reads), fed in different chunkings. Each command then goes through what `Admin::control_line` does, minus
//! the shell's I/O: `control::parse`, `check_origin` for the control port, and
//! `control::execute` on a real `Balancer` and `HostView`. The actions a command returns
//! (rebind, open a log, write a file) are checked, never performed, and `listen` is not bound.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use pen::addr::{self, Backend, ListenAddr};
use pen::balancer::{AclId, Acls, Balancer, Peer, Server, Settings, Target};
use pen::control::{self, file, Action, Command, Context, ControlError, HostView, Origin, Ssl};
use pen::control_port::{Framer, Request};

use super::addr::listen_resolves;

/// Would `control::parse(line)` ask the resolver? It resolves `source HOST`, `server N ...
/// address HOST` and the host of `listen HOST:PORT`; this splits the line as `parse` does
/// (up to the first CR or LF, words separated by spaces) and says yes when any of them is
/// neither an IP literal nor a path.
pub(crate) fn line_resolves(line: &str) -> bool {
    let line = line.split(['\r', '\n']).next().unwrap_or("");
    let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
    let literal = |w: &str| w.parse::<IpAddr>().is_ok();
    match words.as_slice() {
        ["source", host, ..] => !literal(host),
        ["listen", a, ..] => listen_resolves(a),
        ["server", _, pairs @ ..] => pairs
            .chunks(2)
            .any(|kv| matches!(kv, ["address", v] if !v.contains('/') && !literal(v))),
        _ => false,
    }
}

/// Everything a control command can change in the balancer: settings, lists, server slots
/// (blacklist deadlines included), the client and connection tables' sizes. Blank server
/// slots (never configured) are counted, not listed, so that a 4096-slot table costs little.
#[derive(Debug, PartialEq)]
pub(crate) struct State {
    settings: Settings,
    acls: Acls,
    slots: usize,
    /// `Server` has no `PartialEq`: its `Debug` text, for each slot that is not blank.
    servers: Vec<(usize, String)>,
    emergency: Option<String>,
    abuse: Option<String>,
    clients: (usize, usize),
    conns: (usize, usize),
    current: Option<Target>,
    geoip: Option<PathBuf>,
}

pub(crate) fn state(b: &Balancer) -> State {
    let text = |s: &Server| format!("{s:?}");
    State {
        settings: b.settings.clone(),
        acls: b.acls.clone(),
        slots: b.servers().len(),
        servers: b
            .servers()
            .iter()
            .enumerate()
            .filter(|(_, s)| !blank(s))
            .map(|(i, s)| (i, text(s)))
            .collect(),
        emergency: b.emergency().map(text),
        abuse: b.abuse().map(text),
        clients: (b.clients().len(), b.clients().capacity()),
        conns: (b.live_conns(), b.conn_max()),
        current: b.current(),
        geoip: b.geoip().map(|g| g.path().to_path_buf()),
    }
}

/// A slot as the table's growth leaves it. Every field is named, so that a new one cannot be
/// missed.
fn blank(s: &Server) -> bool {
    let Server {
        backend,
        maxc,
        hard,
        weight,
        prio,
        acl,
        conns,
        connects,
        last_failure,
        blacklisted_until,
        sent,
        received,
    } = s;
    backend.is_none()
        && [*maxc, *hard, *weight, *prio, *conns] == [0; 5]
        && [*connects, *sent, *received] == [0; 3]
        && *acl == AclId::default()
        && last_failure.is_none()
        && blacklisted_until.is_none()
}

/// pen's rule for a file named over the control port (`exec::is_inside`, private): an
/// absolute path under `dir` with no `..`.
fn inside(dir: &Path, path: &Path) -> bool {
    path.is_absolute()
        && path.starts_with(dir)
        && !path.components().any(|c| matches!(c, Component::ParentDir))
}

/// What `control_port::read_line` makes of a connection whose successive `read` calls return
/// `reads` (at most 1024 bytes each, its buffer); an empty read or the end of `reads` is EOF.
/// The framing is pen's own (`Framer`); only the socket is left out.
fn read_request<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> Request {
    let mut framer = Framer::default();
    for chunk in reads {
        assert!(chunk.len() <= 1024, "a read returns at most the buffer");
        if chunk.is_empty() {
            break;
        }
        if let Some(request) = framer.push(chunk) {
            return request;
        }
    }
    framer.finish()
}

/// `control_files`: a directory that does not exist, so that `include` can read nothing.
const CONTROL_FILES: &str = "/nonexistent-pen-fuzz/files";
/// The `-F` file, outside `control_files`; never written (actions are not performed).
const CONFIG_FILE: &str = "/nonexistent-pen-fuzz/pen.cfg";

/// The state a control client talks to: three servers (IPv4, IPv6, Unix), two open
/// connections, a `control_files` directory that does not exist (so nothing inside it can be
/// read), and a `-F` file outside it.
fn setup(now: Instant) -> (Balancer, HostView) {
    let mut b = Balancer::new(
        Settings::default(),
        NonZeroUsize::new(64).expect("non-zero"),
    );
    for spec in [
        "127.0.0.1:9001",
        "[::1]:9002:5:10:2:1",
        "/run/pen-fuzz.sock",
    ] {
        let spec = addr::parse_server(spec, Some(8080)).expect("a valid spec");
        b.add_server(&spec);
    }
    b.set_conn_max(500);
    for ip in [Some("127.0.0.5".parse().expect("an address")), None] {
        b.admit(Peer { ip, port: 40000 }, now);
    }
    let first = b.conns().next().map(|(id, _)| id);
    if let Some(first) = first {
        b.connected(first);
    }
    let listen = addr::parse_listen("127.0.0.1:8080").expect("a valid listener");
    let mut host = HostView::new(Some(listen), 500);
    host.pid = 4242;
    host.control = Some("127.0.0.1:10080".into());
    host.config_file = Some(PathBuf::from(CONFIG_FILE));
    host.control_files = Some(PathBuf::from(CONTROL_FILES));
    (b, host)
}

/// Check "a refused command changes nothing" while the server table has at most this many
/// slots: the check copies the balancer before each command, and `server 4095 ...` would make
/// that copy cost more than the command.
const CHECKED_SLOTS: usize = 64;

/// Server slots a command may use. Listing a slot (`servers`, `write`) costs microseconds in
/// a debug build, so `server N` beyond it is parsed but not run (`MAX_SERVERS` is 4096).
const SLOTS: usize = 256;
/// Bytes of replies and written files a session may produce before it stops: that bounds the
/// commands whose cost grows with the tables they list.
const OUTPUT_BUDGET: usize = 64 << 10;

/// One control session: the state, and what it replied.
struct Session {
    b: Balancer,
    host: HostView,
    ctx: Context,
    replies: Vec<String>,
    /// What is left of `OUTPUT_BUDGET`.
    budget: usize,
    /// The bytes the client has sent so far in its commands (pen echoes stored text, such as a
    /// server's path, in later replies).
    sent: [bool; 256],
    /// Check the invariants of each command (off for the reference run).
    check: bool,
}

impl Session {
    fn new(now: Instant, check: bool) -> Session {
        let (b, host) = setup(now);
        let ctx = Context {
            now,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            default_port: host.listen.as_ref().and_then(ListenAddr::default_port),
            origin: Origin::ControlPort,
        };
        Session {
            b,
            host,
            ctx,
            replies: Vec::new(),
            budget: OUTPUT_BUDGET,
            sent: [false; 256],
            check,
        }
    }

    /// What `control_port::handle` sends back for a request (None: it closes silently).
    fn request(&mut self, request: Request) {
        let reply = match request {
            Request::Line(line) if line_resolves(&line) => "(skipped: resolves a name)".into(),
            Request::Line(line) if !self.check => self.command(&line),
            Request::Line(line) => {
                for &c in line.as_bytes() {
                    self.sent[usize::from(c)] = true;
                }
                let reply = self.command(&line);
                for (i, &c) in reply.as_bytes().iter().enumerate() {
                    let control = c < 0x20 || c == 0x7f;
                    assert!(
                        !control || c == b'\n' || self.sent[usize::from(c)],
                        "{line:?}: the reply has a control byte {c:#04x} of pen's own at {i}: {reply:?}"
                    );
                }
                reply
            }
            Request::Nothing => return,
            refused => refused.refusal().unwrap_or_default(),
        };
        self.budget = self.budget.saturating_sub(reply.len());
        self.replies.push(reply);
    }

    /// `Admin::control_line_blocking` for one line.
    fn command(&mut self, line: &str) -> String {
        let check = self.check;
        let refuse = |e: ControlError| {
            let reply = format!("{e}\n");
            assert!(
                !check || !reply[..reply.len() - 1].contains(['\n', '\r']),
                "{line:?}: a refusal is one line: {reply:?}"
            );
            reply
        };
        let cmd = match control::parse(line) {
            Ok(c) => c,
            Err(e) => return refuse(e),
        };
        if let Err(e) = control::check_origin(&cmd, &self.host, Origin::ControlPort) {
            return refuse(e);
        }
        match cmd {
            Command::Include(path) => {
                let Some(dir) = self.host.control_files.clone() else {
                    return refuse(ControlError::Refused {
                        command: "include",
                        reason: "no control_files directory is set".into(),
                    });
                };
                let applied = file::read_within(&path, Some(&dir))
                    .and_then(|lines| file::apply(&lines, &mut self.b, &mut self.host, &self.ctx));
                match applied {
                    Ok(applied) => applied.replies.concat(),
                    Err(e) => refuse(e),
                }
            }
            // The page and the JSON depend on the clock; the shell answers them, not `execute`.
            Command::Status => match &self.b.settings.web_stats {
                None => "Unable to create webstats\n".into(),
                Some(path) => {
                    let dir = self.host.control_files.as_deref().expect("set in setup");
                    assert!(
                        !check || inside(dir, path),
                        "{line:?}: web_stats {path:?} outside"
                    );
                    "(status page)\n".into()
                }
            },
            Command::Snapshot => "(snapshot)\n".into(),
            Command::Server { index, .. } if index >= SLOTS => "(skipped: slot)\n".into(),
            cmd => {
                let before = (self.check && self.b.servers().len() <= CHECKED_SLOTS)
                    .then(|| (self.b.clone(), self.host.clone()));
                let host_before = self.check.then(|| self.host.clone());
                match control::execute(&cmd, &mut self.b, &mut self.host, &self.ctx) {
                    Ok(outcome) => {
                        if let (Some(action), Some(host)) = (&outcome.action, &host_before) {
                            check_action(line, action, host);
                        }
                        if let (true, Command::Server { index, .. }) = (check, &cmd) {
                            check_server_path(line, &self.b.servers()[*index]);
                        }
                        if let Some(Action::WriteFile { contents, .. }) = &outcome.action {
                            self.budget = self.budget.saturating_sub(contents.len());
                        }
                        outcome.reply
                    }
                    Err(e) => {
                        if let Some((b, host)) = before {
                            assert_eq!(
                                state(&self.b),
                                state(&b),
                                "{line:?} failed ({e}) but changed the balancer"
                            );
                            assert!(
                                self.host == host,
                                "{line:?} failed ({e}) but changed the host view"
                            );
                        }
                        refuse(e)
                    }
                }
            }
        }
    }
}

/// A server slot holds only what the command line would accept: a Unix path of at most 107
/// bytes (the size of `sun_path`, `addr::parse_server`'s limit).
pub(crate) fn check_server_path(what: &str, server: &Server) {
    if let Some(Backend::Unix(path)) = &server.backend {
        let len = path.as_os_str().len();
        assert!(
            len <= 107,
            "{what:?}: a server path of {len} bytes was accepted"
        );
    }
}

/// A command from the control port may make the shell touch a file only inside
/// `control_files` (or write the `-F` file, with `write` alone).
fn check_action(line: &str, action: &Action, host: &HostView) {
    let dir = host.control_files.as_deref().expect("set in setup");
    let file = match action {
        Action::WriteFile { path, .. } if Some(path) == host.config_file.as_ref() => None,
        Action::WriteFile { path, .. } => Some(path.clone()),
        Action::Log(target) if !control::log_is_network(target) => Some(PathBuf::from(target)),
        Action::GeoIp(Some(path)) => Some(path.clone()),
        Action::Listen(ListenAddr::Unix(path)) => Some(path.clone()),
        Action::Tls(Ssl::OcspResponse(path) | Ssl::SniPath(path)) => Some(path.clone()),
        _ => None,
    };
    if let Some(path) = file {
        assert!(
            inside(dir, &path),
            "{line:?}: the control port made pen touch {path:?}, outside {dir:?}"
        );
    }
}

/// Chunk sizes derived from the input: an FNV-1a hash seeds xorshift, mostly short reads
/// (1-8 bytes), sometimes up to a full 1024-byte read.
struct Splits(u64);

impl Splits {
    fn of(data: &[u8]) -> Splits {
        let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Splits(h | 1)
    }

    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let r = self.0 as usize;
        if r.is_multiple_of(8) {
            1 + (r >> 3) % 1024
        } else {
            1 + (r >> 3) % 8
        }
    }
}

/// Connections run per input; the rest is ignored. Each command costs a few microseconds in a
/// debug build (a refused one, checked against a copy of the state, a few dozen), and a
/// 4 KiB input could otherwise hold 2048 of them.
const MAX_CONNECTIONS: usize = 128;

/// Run the stream: one connection per command, each ending after its `\n` (as `penctl`
/// sends it), read in chunks of `size()` bytes (at most 1024, `read_line`'s buffer).
fn run(data: &[u8], now: Instant, check: bool, mut size: impl FnMut() -> usize) -> Session {
    let mut session = Session::new(now, check);
    for conn in data.split_inclusive(|&c| c == b'\n').take(MAX_CONNECTIONS) {
        let mut reads = Vec::new();
        let mut rest = conn;
        while !rest.is_empty() {
            let (read, tail) = rest.split_at(size().clamp(1, 1024).min(rest.len()));
            reads.push(read);
            rest = tail;
        }
        session.request(read_request(reads));
        if session.budget == 0 {
            break;
        }
    }
    session
}

/// Control-port commands fed as a byte stream split at arbitrary points.
///
/// The input is a sequence of control connections, each ending after a `\n` (the first
/// `MAX_CONNECTIONS` are run, until `OUTPUT_BUDGET` is spent); every command runs on the same
/// balancer. Commands that would resolve a host name, or use a server slot from `SLOTS` up,
/// are skipped.
///
/// Invariants:
/// - Split independence: reading each connection in short reads at points derived from the
///   input, and in whole 1024-byte reads, gives the same replies and the same final state.
/// - A server slot a command sets has a Unix path of at most 107 bytes, as on the command line.
/// - A command refused by `execute` leaves the balancer (`state`) and the host view as
///   they were; every refusal (parse, origin or execute) is exactly one line.
/// - No reply holds a control byte (below 0x20, or 0x7f) other than `\n` unless the client
///   sent that byte itself in a command of the session: pen adds no control bytes of its own
///   (it does echo the client's: a server path or an unknown word comes back as sent), and
///   the framing means no `\r` or NUL ever reaches a command.
/// - Over the control port, a command makes the shell write, open or bind a file only inside
///   `control_files` (`write` with no argument writes the `-F` file), and `web_stats` is only
///   ever set inside it.
pub fn control_stream(data: &[u8]) {
    let now = Instant::now();
    let mut splits = Splits::of(data);
    let split = run(data, now, true, || splits.next());
    let whole = run(data, now, false, || 1024);
    assert_eq!(split.replies, whole.replies, "replies depend on the split");
    assert_eq!(
        state(&split.b),
        state(&whole.b),
        "the state depends on the split"
    );
    assert!(
        split.host == whole.host,
        "the host view depends on the split"
    );
}
