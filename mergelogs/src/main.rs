//! mergelogs: merge web servers' access logs by time, giving every line the real client address
//! from pen's log (`pen -l FILE`) in place of pen's own address.
//!
//! `main` parses the command line and opens the files; `merge` interleaves the web logs and
//! `window` finds each line's client in the part of pen's log around its time.

mod merge;
#[cfg(test)]
mod testdata;
mod window;

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::process::ExitCode;

use anyhow::Context;
use pen::getopt::{self, Arg};
use pen::tool::{self, Invocation};

use crate::merge::{Rejected, WebLog};
use crate::window::Window;

const USAGE: &str = "\
Usage: mergelogs -p penlog [-c] [-d] [-j jitter] [-t seconds] [-r rejects] \\
        server1:logfile1 [server2:logfile2 ...]

  -c                Do not use penlog cache (no time window: the closest record wins)
  -d                Debugging (repeat for more)
  -p penlog         Log file from pen
  -j jitter         Jitter in seconds [600]
  -r filename       Where to put rejects (web log lines that could not be read)
  -t seconds        Subtract this from pen's times (pen's clock ahead of the web servers')
  server:logfile    Web server address (as pen logs it; [addr] for IPv6) and name of logfile
";

/// Rejected lines reported on stderr per web log, when they do not go to `-r`.
const REPORT_MAX: u64 = 10;
/// Buffer sizes: the merge reads and writes in large blocks.
const READ_BUFFER: usize = 256 * 1024;
const WRITE_BUFFER: usize = 256 * 1024;

#[derive(Debug)]
struct Options {
    pen_log: String,
    no_cache: bool,
    debug: u8,
    jitter: i64,
    shift: i64,
    rejects: Option<String>,
    /// (server name, log file)
    logs: Vec<(String, String)>,
}

/// `SERVER:LOGFILE`, split at the first colon, or `[IPV6]:LOGFILE`.
fn split_log_arg(arg: &str) -> anyhow::Result<(String, String)> {
    let (server, file) = match arg.strip_prefix('[') {
        Some(rest) => rest.split_once("]:"),
        None => arg.split_once(':'),
    }
    .with_context(|| format!("'{arg}' is not server:logfile"))?;
    anyhow::ensure!(!server.is_empty(), "'{arg}': no server before the colon");
    anyhow::ensure!(!file.is_empty(), "'{arg}': no log file after the colon");
    Ok((server.to_string(), file.to_string()))
}

fn parse(args: &[String]) -> anyhow::Result<Invocation<Options>> {
    if args.is_empty() {
        return Ok(Invocation::Usage);
    }
    let mut pen_log = None;
    let mut o = Options {
        pen_log: String::new(),
        no_cache: false,
        debug: 0,
        jitter: 600,
        shift: 0,
        rejects: None,
        logs: Vec::new(),
    };
    for arg in getopt::parse("p:j:t:r:cd", args)? {
        match arg {
            Arg::Long("help") => return Ok(Invocation::Usage),
            Arg::Long(_) => return Ok(Invocation::Version),
            Arg::Opt('p', Some(v)) => pen_log = Some(v),
            Arg::Opt('c', _) => o.no_cache = true,
            Arg::Opt('d', _) => o.debug = o.debug.saturating_add(1),
            Arg::Opt('j', Some(v)) => {
                o.jitter = v
                    .parse()
                    .ok()
                    .filter(|j: &i64| (0..=i64::from(u32::MAX)).contains(j))
                    .with_context(|| format!("-j '{v}': expected a number of seconds"))?
            }
            Arg::Opt('t', Some(v)) => {
                o.shift = v
                    .parse()
                    .ok()
                    .filter(|t: &i64| t.unsigned_abs() <= u64::from(u32::MAX))
                    .with_context(|| format!("-t '{v}': expected a number of seconds"))?
            }
            Arg::Opt('r', Some(v)) => o.rejects = Some(v),
            Arg::Opt(c, _) => anyhow::bail!("option -{c} is not handled"),
            Arg::Positional(p) => o.logs.push(split_log_arg(&p)?),
        }
    }
    o.pen_log = pen_log.context("no pen log given (-p penlog)")?;
    anyhow::ensure!(
        !o.logs.is_empty(),
        "no web server log given (server:logfile)"
    );
    Ok(Invocation::Run(o))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match tool::options("mergelogs", USAGE, parse(&args)) {
        Ok(options) => options,
        Err(status) => return status,
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mergelogs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open(path: &str, what: &str) -> anyhow::Result<BufReader<File>> {
    let file = File::open(path).with_context(|| format!("can't open {what} '{path}'"))?;
    Ok(BufReader::with_capacity(READ_BUFFER, file))
}

fn run(o: &Options) -> anyhow::Result<()> {
    let pen_log = open(&o.pen_log, "pen log")?;
    // Servers are matched by name with pen's log; the same name twice is one server.
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut logs = Vec::new();
    for (server, file) in &o.logs {
        let index = match names.iter().position(|n| n == server.as_bytes()) {
            Some(i) => i,
            None => {
                names.push(server.as_bytes().to_vec());
                names.len() - 1
            }
        };
        logs.push(WebLog {
            server: index,
            reader: open(file, "log file")?,
        });
    }
    let mut rejects_file = match &o.rejects {
        Some(path) => {
            Some(BufWriter::new(File::create(path).with_context(|| {
                format!("can't create rejects file '{path}'")
            })?))
        }
        None => None,
    };
    let jitter = (!o.no_cache).then_some(o.jitter);
    let mut window = Window::new(pen_log, &names, o.shift, jitter);
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, stdout.lock());
    let mut rejected_per_log = vec![0u64; o.logs.len()];
    let summary = merge::merge(&mut window, &names, logs, &mut out, |r: Rejected<'_>| {
        rejected_per_log[r.log] += 1;
        match &mut rejects_file {
            Some(file) => {
                file.write_all(r.line)?;
                if !r.line.ends_with(b"\n") {
                    file.write_all(b"\n")?;
                }
            }
            None if rejected_per_log[r.log] <= REPORT_MAX => eprintln!(
                "mergelogs: {}:{}: {}: {}",
                o.logs[r.log].1,
                r.line_number,
                r.why,
                String::from_utf8_lossy(pen::accesslog::pen::strip_newline(r.line))
            ),
            None => {}
        }
        Ok(())
    })
    .context("merging")?;
    out.flush().context("writing the merged log")?;
    if let Some(mut file) = rejects_file {
        file.flush().context("writing the rejects file")?;
    }
    for (i, &n) in rejected_per_log.iter().enumerate() {
        if n > 0 {
            let whereto = match &o.rejects {
                Some(path) => format!("written to {path}"),
                None if n > REPORT_MAX => format!("the first {REPORT_MAX} shown above"),
                None => "shown above".to_string(),
            };
            eprintln!(
                "mergelogs: {}: {n} line{} could not be read ({whereto})",
                o.logs[i].1,
                if n == 1 { "" } else { "s" }
            );
        }
    }
    let stats = &window.stats;
    if stats.skipped > 0 {
        let (n, what) = match stats.skipped {
            1 => (1, "line is not a pen log line; skipped"),
            n => (n, "lines are not pen log lines; skipped"),
        };
        eprintln!(
            "mergelogs: {}: {n} {what} (the first is line {})",
            o.pen_log,
            stats.first_skipped.unwrap_or(0)
        );
    }
    if o.debug > 0 {
        eprintln!(
            "mergelogs: {} lines written, {} with a client from pen's log, {} rejected; \
             {} pen log lines read, at most {} records held",
            summary.written, summary.matched, summary.rejected, stats.lines, stats.peak
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn command_lines() {
        let Invocation::Run(o) = parse(&args(
            "-c -dd -j 5 -t -3600 -r rej -p pen.log 10.0.0.1:a.log [::1]:b:c.log",
        ))
        .unwrap() else {
            panic!("not a run")
        };
        assert!(o.no_cache);
        assert_eq!((o.debug, o.jitter, o.shift), (2, 5, -3600));
        assert_eq!(o.rejects.as_deref(), Some("rej"));
        assert_eq!(
            o.logs,
            [
                ("10.0.0.1".to_string(), "a.log".to_string()),
                ("::1".to_string(), "b:c.log".to_string())
            ]
        );
        assert!(matches!(parse(&[]).unwrap(), Invocation::Usage));
    }

    #[test]
    fn bad_command_lines_name_what_was_wrong() {
        for (line, want) in [
            ("10.0.0.1:a.log", "no pen log"),
            ("-p pen.log", "no web server log"),
            (
                "-p pen.log access1.log",
                "'access1.log' is not server:logfile",
            ),
            ("-p pen.log :a.log", "no server"),
            ("-p pen.log 10.0.0.1:", "no log file"),
            ("-p pen.log [::1:a.log", "not server:logfile"),
            ("-a x -p pen.log s:f", "'a'"),
            ("-j -1 -p pen.log s:f", "-j '-1'"),
            ("-t x -p pen.log s:f", "-t 'x'"),
            ("-p", "'p'"),
        ] {
            let e = match parse(&args(line)) {
                Err(e) => format!("{e:#}"),
                Ok(_) => panic!("{line}: accepted"),
            };
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
