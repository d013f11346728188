//! Config files: reading a file of control commands (with `include`), applying it as one
//! transaction, and rendering the running configuration in pen's `write` format (reference §2.3).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::exec::{execute, HostView};
use super::{parse, Action, Command, Context, ControlError, Toggle};
use crate::addr::Backend;
use crate::balancer::{AclId, Balancer, ACL_LISTS};

/// Deepest `include` nesting accepted (pen 0.34.1 recursed until it crashed).
const MAX_INCLUDE_DEPTH: usize = 16;
/// Largest config file read: far beyond any real one.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// One command of a config file, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub file: String,
    pub line: usize,
    pub command: Command,
}

/// Read and parse `path` and everything it includes. Nothing is applied; any error (an
/// unreadable file, a bad command, an include loop) names the file and line.
pub fn read(path: &Path) -> Result<Vec<Line>, ControlError> {
    read_within(path, None)
}

/// `read`, where every file (the first and each one it includes, symbolic links resolved)
/// must be inside `within` when given: `include` over the control port stays in
/// `control_files`.
pub fn read_within(path: &Path, within: Option<&Path>) -> Result<Vec<Line>, ControlError> {
    let within = within
        .map(|dir| {
            dir.canonicalize().map_err(|e| ControlError::File {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let mut out = Vec::new();
    read_into(path, within.as_deref(), &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn read_into(
    path: &Path,
    within: Option<&Path>,
    stack: &mut Vec<PathBuf>,
    out: &mut Vec<Line>,
) -> Result<(), ControlError> {
    let name = path.display().to_string();
    let file_error = |reason: String| ControlError::File {
        path: name.clone(),
        reason,
    };
    let canonical = path
        .canonicalize()
        .map_err(|e| file_error(format!("cannot read config file: {e}")))?;
    if within.is_some_and(|dir| !canonical.starts_with(dir)) {
        return Err(file_error(
            "outside the control_files directory (over the control port, files must be in it)"
                .into(),
        ));
    }
    if stack.contains(&canonical) {
        return Err(file_error("include loop: the file includes itself".into()));
    }
    if stack.len() >= MAX_INCLUDE_DEPTH {
        return Err(file_error(format!(
            "includes nested deeper than {MAX_INCLUDE_DEPTH}"
        )));
    }
    let meta = std::fs::metadata(&canonical).map_err(|e| file_error(e.to_string()))?;
    if !meta.is_file() {
        return Err(file_error("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(file_error(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let bytes = std::fs::read(&canonical).map_err(|e| file_error(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // Name the line of the first byte that is not UTF-8, as every other error does.
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        ControlError::InFile {
            file: name.clone(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            error: Box::new(ControlError::Refused {
                command: "config file",
                reason: "not UTF-8 text".into(),
            }),
        }
    })?;
    stack.push(canonical);
    for (i, text) in text.lines().enumerate() {
        let at = |error: ControlError| ControlError::InFile {
            file: name.clone(),
            line: i + 1,
            error: Box::new(error),
        };
        // The control port refuses a command with a NUL byte as not text; so does a file
        // (pen 0.34.1 cut the line short there, a path included).
        if text.contains('\0') {
            return Err(at(ControlError::Refused {
                command: "config file",
                reason: "a NUL byte: not a line of text".into(),
            }));
        }
        // `lines` took a CR before the LF; one left inside the line would end the command
        // there and silently drop the rest (pen 0.34.1 did), and a file with CR-only line
        // endings would be one line of which only the first command ran.
        if text.contains('\r') {
            return Err(at(ControlError::Refused {
                command: "config file",
                reason: "a carriage return inside the line (a file with CR line endings?)".into(),
            }));
        }
        let command = parse(text).map_err(at)?;
        if let Command::Include(inner) = &command {
            // A relative include is relative to the including file, not to pen's cwd.
            let inner = match path.parent() {
                Some(dir) if inner.is_relative() => dir.join(inner),
                _ => inner.clone(),
            };
            read_into(&inner, within, stack, out).map_err(at)?;
            continue;
        }
        out.push(Line {
            file: name.clone(),
            line: i + 1,
            command,
        });
    }
    stack.pop();
    Ok(())
}

/// What applying a file produced: the replies (pen prints them on stdout) and the shell's work.
#[derive(Debug, Default)]
pub struct Applied {
    pub replies: Vec<String>,
    pub actions: Vec<Action>,
}

/// Apply `lines` as one transaction: on copies first, so on any error nothing changes and the
/// error names the line. Each access list a file mentions is defined completely by that file
/// (its first `acl N` line starts the list afresh), so re-reading the same file gives the same
/// state (pen 0.34.1 appended the entries again on every HUP).
pub fn apply(
    lines: &[Line],
    b: &mut Balancer,
    host: &mut HostView,
    ctx: &Context,
) -> Result<Applied, ControlError> {
    let mut nb = b.clone();
    let mut nh = host.clone();
    let mut fresh = [false; ACL_LISTS];
    let mut applied = Applied::default();
    for l in lines {
        match &l.command {
            Command::Acl { list, .. } if !fresh[list.index()] => {
                nb.acls.clear(*list);
                fresh[list.index()] = true;
            }
            Command::NoAcl(list) => fresh[list.index()] = true,
            _ => {}
        }
        let outcome =
            execute(&l.command, &mut nb, &mut nh, ctx).map_err(|error| ControlError::InFile {
                file: l.file.clone(),
                line: l.line,
                error: Box::new(error),
            })?;
        applied.replies.push(outcome.reply);
        applied.actions.extend(outcome.action);
    }
    *b = nb;
    *host = nh;
    Ok(applied)
}

/// The running configuration in pen's `write` format, loadable with `-F` or `include`. Unlike
/// pen 0.34.1 it always records weights and prios, skips blank server slots (which could not
/// be loaded back), keeps the port of a network log, and adds the settings pen forgot
/// (`idle_timeout`, `keepalive`, `transparent`, `dummy`, `source`) after pen's own lines, and
/// this pen's own settings (`http_xff`, `busy_poll`, `coalesce`, `client_conn_max`, `geoip`)
/// last.
pub fn render(b: &Balancer, host: &HostView, ctx: &Context, target: &Path) -> String {
    let s = &b.settings;
    let mut out = String::new();
    let time = chrono::DateTime::<chrono::Local>::from(ctx.wall).format("%Y-%m-%d %H:%M:%S");
    let _ = writeln!(out, "# Generated by pen {time}");
    let _ = writeln!(
        out,
        "# pen{} -F '{}' -C {} {}",
        host.write_flags,
        target.display(),
        host.control.as_deref().unwrap_or("(null)"),
        host.listen_text.as_deref().unwrap_or("(null)")
    );
    for i in 0..ACL_LISTS {
        let id = AclId::new(i).expect("in range");
        let _ = writeln!(out, "no acl {i}");
        for e in b.acls.entries(id) {
            let _ = writeln!(out, "acl {i} {e}");
        }
    }
    let toggle = |out: &mut String, t: Toggle, on: bool| {
        let _ = writeln!(out, "{}{}", if on { "" } else { "no " }, t.word());
    };
    toggle(&mut out, Toggle::Ascii, s.ascii);
    let _ = writeln!(out, "blacklist {}", s.blacklist_time.as_secs());
    let _ = writeln!(out, "client_acl {}", s.client_acl);
    let _ = writeln!(out, "control_acl {}", s.control_acl);
    let _ = writeln!(out, "debug {}", host.debug);
    toggle(&mut out, Toggle::Hash, s.hash);
    toggle(&mut out, Toggle::Http, s.http);
    match &host.log {
        Some(l) => {
            let _ = writeln!(out, "log {l}");
        }
        None => out.push_str("no log\n"),
    }
    toggle(&mut out, Toggle::Roundrobin, s.roundrobin);
    for (i, srv) in b.servers().iter().enumerate() {
        let Some(backend) = &srv.backend else {
            continue;
        };
        let (addr, port) = match backend {
            Backend::Tcp(sa) => (sa.ip().to_string(), sa.port()),
            Backend::Unix(p) => (p.display().to_string(), 1),
        };
        let _ = writeln!(
            out,
            "server {i} acl {} address {addr} port {port} max {} hard {} weight {} prio {}",
            srv.acl, srv.maxc, srv.hard, srv.weight, srv.prio
        );
    }
    toggle(&mut out, Toggle::Stubborn, s.stubborn);
    let _ = writeln!(out, "tcp_fastclose {}", s.fastclose.word());
    toggle(&mut out, Toggle::TcpNodelay, s.tcp_nodelay);
    let _ = writeln!(out, "timeout {}", s.connect_timeout.as_secs());
    let _ = writeln!(out, "tracking {}", s.tracking.as_secs());
    match &s.web_stats {
        Some(p) => {
            let _ = writeln!(out, "web_stats {}", p.display());
        }
        None => out.push_str("no web_stats\n"),
    }
    toggle(&mut out, Toggle::Weight, s.weight);
    toggle(&mut out, Toggle::Prio, s.prio);
    let _ = writeln!(out, "idle_timeout {}", s.idle_timeout.as_secs());
    toggle(&mut out, Toggle::Keepalive, s.keepalive);
    toggle(&mut out, Toggle::Transparent, s.transparent);
    toggle(&mut out, Toggle::Dummy, s.dummy);
    match s.source {
        Some(ip) => {
            let _ = writeln!(out, "source {ip}");
        }
        None => out.push_str("no source\n"),
    }
    let _ = writeln!(out, "http_xff {}", s.xff.word());
    if !host.busy_poll.is_zero() {
        // Only when set: pen 0.34.1 does not know the command.
        let _ = writeln!(out, "busy_poll {}", host.busy_poll.as_micros());
    }
    if host.coalesce != crate::shared::COALESCE_DEFAULT {
        // Only when changed: pen 0.34.1 does not know the command.
        let _ = writeln!(out, "coalesce {}", host.coalesce.as_micros());
    }
    if s.client_conn_max > 0 {
        // Only when set: pen 0.34.1 does not know the command.
        let _ = writeln!(out, "client_conn_max {}", s.client_conn_max);
    }
    match b.geoip() {
        Some(g) => {
            let _ = writeln!(out, "geoip {}", g.path().display());
        }
        None => out.push_str("no geoip\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::ListenAddr;
    use crate::control::Origin;
    use std::num::NonZeroUsize;
    use std::time::{Instant, SystemTime};

    fn ctx() -> Context {
        Context {
            now: Instant::now(),
            wall: SystemTime::now(),
            default_port: Some(8080),
            origin: Origin::ConfigFile,
        }
    }

    fn setup() -> (Balancer, HostView) {
        (
            Balancer::new(Default::default(), NonZeroUsize::new(64).unwrap()),
            HostView::new(
                Some(ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())),
                500,
            ),
        )
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pen-file-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn written_config_loads_back_to_the_same_state_and_rereads_idempotently() {
        let d = dir();
        let (mut b, mut h) = setup();
        let lines = [
            "acl 2 deny 10.0.0.0 255.0.0.0",
            "acl 2 permit ::1/128",
            "server 0 address 127.0.0.1 port 9001 weight 3 prio 2 acl 2",
            "server 2 address /tmp/pen.sock",
            "weight",
            "blacklist 7",
            "log 127.0.0.1:9999",
            "busy_poll 8",
            "coalesce 0",
        ];
        let src = d.join("in.cfg");
        std::fs::write(&src, lines.join("\n")).unwrap();
        let parsed = read(&src).unwrap();
        apply(&parsed, &mut b, &mut h, &ctx()).unwrap();
        apply(&parsed, &mut b, &mut h, &ctx()).unwrap();
        assert_eq!(
            b.acls.entries(AclId::new(2).unwrap()).len(),
            2,
            "idempotent"
        );

        let out = d.join("out.cfg");
        let text = render(&b, &h, &ctx(), &out);
        assert!(
            text.contains(
                "server 0 acl 2 address 127.0.0.1 port 9001 max 0 hard 0 weight 3 prio 2\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("server 1 "),
            "blank slots are skipped: {text}"
        );
        assert!(text.contains("log 127.0.0.1:9999\n"));
        assert!(text.contains("busy_poll 8\n"), "{text}");
        assert!(text.contains("coalesce 0\n"), "{text}");
        std::fs::write(&out, &text).unwrap();

        let (mut b2, mut h2) = setup();
        apply(&read(&out).unwrap(), &mut b2, &mut h2, &ctx()).unwrap();
        let again = render(&b2, &h2, &ctx(), &out);
        let body = |t: &str| t.lines().skip(2).collect::<Vec<_>>().join("\n");
        assert_eq!(body(&again), body(&text));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_bad_line_applies_nothing_and_names_the_line() {
        let d = dir();
        let (mut b, mut h) = setup();
        let f = d.join("bad.cfg");
        std::fs::write(
            &f,
            "blacklist 9\nserver 0 address 127.0.0.1 port 9\nserver 1 port 80\n",
        )
        .unwrap();
        let lines = read(&f).unwrap();
        let e = apply(&lines, &mut b, &mut h, &ctx())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.cfg:3:"), "{e}");
        assert_eq!(b.settings.blacklist_time.as_secs(), 30);
        assert!(b.servers().is_empty());

        std::fs::write(&f, "blacklist 9\nblacklist x\n").unwrap();
        let e = read(&f).unwrap_err().to_string();
        assert!(e.contains("bad.cfg:2:") && e.contains("'x'"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Over the control port an allowed file cannot include one outside `control_files`, not
    /// by an absolute path, `..`, or a symbolic link.
    #[test]
    fn confined_reads_stay_inside_the_directory() {
        let d = dir();
        let allowed = d.join("allowed");
        std::fs::create_dir_all(&allowed).unwrap();
        let outside = d.join("secret.cfg");
        std::fs::write(&outside, "blacklist 1\n").unwrap();
        let ok = allowed.join("ok.cfg");
        std::fs::write(&ok, "tracking 5\n").unwrap();
        assert_eq!(read_within(&ok, Some(&allowed)).unwrap().len(), 1);
        for (name, text) in [
            ("abs.cfg", format!("include {}\n", outside.display())),
            ("dots.cfg", "include ../secret.cfg\n".to_string()),
        ] {
            let f = allowed.join(name);
            std::fs::write(&f, text).unwrap();
            let e = read_within(&f, Some(&allowed)).unwrap_err().to_string();
            assert!(e.contains("outside the control_files"), "{name}: {e}");
            assert!(
                read(&f).is_ok(),
                "{name}: the operator's own reads are not confined"
            );
        }
        let link = allowed.join("link.cfg");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let e = read_within(&link, Some(&allowed)).unwrap_err().to_string();
        assert!(e.contains("outside the control_files"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Found by the `config_file` fuzz target: a NUL byte made a server path (or a log file
    /// name) that could never be used; reliability catalogue B7 wants a `file:line` error.
    #[test]
    fn a_line_with_a_nul_byte_is_refused_and_named() {
        let d = dir();
        let f = d.join("nul.cfg");
        std::fs::write(&f, "blacklist 1\nserver 1 address /a\0b\n").unwrap();
        let e = read(&f).unwrap_err().to_string();
        assert!(e.contains("nul.cfg:2:") && e.contains("NUL"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_carriage_return_inside_a_line_is_refused_and_crlf_files_are_fine() {
        let d = dir();
        let f = d.join("cr.cfg");
        // CR-only line endings: one line, of which only the first command would have run.
        std::fs::write(&f, "blacklist 1\rtracking 5\rserver 1 address 127.0.0.1\r").unwrap();
        let e = read(&f).unwrap_err().to_string();
        assert!(
            e.contains("cr.cfg:1:") && e.contains("carriage return"),
            "{e}"
        );
        std::fs::write(&f, "blacklist 1\nserver 1 address 127.0.0.1\rport 80\n").unwrap();
        let e = read(&f).unwrap_err().to_string();
        assert!(e.contains("cr.cfg:2:"), "{e}");
        std::fs::write(&f, "blacklist 1\r\ntracking 5\r\n").unwrap();
        assert_eq!(read(&f).unwrap().len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn include_loops_and_missing_files_are_errors() {
        let d = dir();
        let a = d.join("a.cfg");
        let b = d.join("b.cfg");
        std::fs::write(&a, "blacklist 1\ninclude b.cfg\n").unwrap();
        std::fs::write(&b, "include a.cfg\n").unwrap();
        let e = read(&a).unwrap_err().to_string();
        assert!(e.contains("include loop"), "{e}");
        std::fs::write(&b, "tracking 5\n").unwrap();
        assert_eq!(read(&a).unwrap().len(), 2);
        let e = read(&d.join("missing.cfg")).unwrap_err().to_string();
        assert!(e.contains("missing.cfg"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Bytes that are not UTF-8 are refused with the line they are on, like any other error.
    #[test]
    fn text_that_is_not_utf8_is_refused_naming_its_line() {
        let d = dir();
        let f = d.join("latin1.cfg");
        std::fs::write(&f, b"blacklist 1\n\n# caf\xe9\ntracking 5\n").unwrap();
        let e = read(&f).unwrap_err().to_string();
        assert_eq!(e, format!("{}:3: config file: not UTF-8 text", f.display()));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
