//! penlogd: receive pen's records and web servers' log lines over UDP, and write the web lines
//! with the real client address that pen saw in place of pen's own address.
//!
//! `main` only parses the command line and sets up the process; the work is in `matcher`
//! (one datagram, no I/O), `ring` (the recent pen records) and `serve` (the socket loop).

mod datagram;
mod matcher;
mod ring;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ipnet::IpNet;
use pen::daemon;
use pen::getopt::{self, Arg};
use pen::logging::Syslog;
use pen::tool::{self, Invocation};
use tracing::{info, warn};

use crate::matcher::Matcher;
use crate::serve::{Bind, Output};

const USAGE: &str = "\
Usage:
  penlogd [options] port

  -a addr[/len] accept datagrams only from these addresses (repeatable)
  -b        write every line at once (lines are written promptly anyway)
  -d        debugging on (repeat for more)
  -f        stay in foreground
  -j dir    run in chroot
  -l file   write log to file
  -n N      number of pen log entries to cache [1000]
  -p file   write pid to file
  -u user   run as alternative user
  port      UDP port to listen on (IPv6 and IPv4), or addr:port
";

/// The largest ring penlogd accepts (`-n`): about 100 bytes a record.
const RING_MAX: usize = 10_000_000;

#[derive(Debug)]
struct Options {
    allow: Vec<IpNet>,
    line_buffered: bool,
    debug: u8,
    foreground: bool,
    jail: Option<PathBuf>,
    output: Option<PathBuf>,
    ring: usize,
    pid_file: Option<PathBuf>,
    user: Option<String>,
    bind: Bind,
}

fn parse(args: &[String]) -> anyhow::Result<Invocation<Box<Options>>> {
    if args.is_empty() {
        return Ok(Invocation::Usage);
    }
    let mut o = Options {
        allow: Vec::new(),
        line_buffered: false,
        debug: 0,
        foreground: false,
        jail: None,
        output: None,
        ring: 1000,
        pid_file: None,
        user: None,
        bind: Bind::Port(0),
    };
    let mut port = None;
    for arg in getopt::parse("a:bdfj:l:n:p:u:", args)? {
        match arg {
            Arg::Long("help") => return Ok(Invocation::Usage),
            Arg::Long(_) => return Ok(Invocation::Version),
            Arg::Opt('a', Some(v)) => o.allow.push(parse_net(&v)?),
            Arg::Opt('b', _) => o.line_buffered = true,
            Arg::Opt('d', _) => o.debug = o.debug.saturating_add(1),
            Arg::Opt('f', _) => o.foreground = true,
            Arg::Opt('j', Some(v)) => o.jail = Some(v.into()),
            Arg::Opt('l', Some(v)) => o.output = Some(v.into()),
            Arg::Opt('n', Some(v)) => {
                o.ring = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=RING_MAX).contains(n))
                    .with_context(|| format!("-n '{v}': expected a number from 1 to {RING_MAX}"))?
            }
            Arg::Opt('p', Some(v)) => o.pid_file = Some(v.into()),
            Arg::Opt('u', Some(v)) => o.user = Some(v),
            Arg::Opt(c, _) => anyhow::bail!("option -{c} is not handled"),
            Arg::Positional(p) if port.is_none() => port = Some(p),
            Arg::Positional(p) => anyhow::bail!("unexpected argument '{p}' after the port"),
        }
    }
    let port = port.context("no port given")?;
    o.bind = parse_bind(&port)?;
    Ok(Invocation::Run(Box::new(o)))
}

fn parse_net(v: &str) -> anyhow::Result<IpNet> {
    let net = v
        .parse::<IpNet>()
        .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| anyhow::anyhow!("-a '{v}': expected an address or address/length"))?;
    // Sources are compared in their canonical form: IPv4 as IPv4, even over IPv6.
    Ok(match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(v4.into(), v6.prefix_len().saturating_sub(96))
                .unwrap_or(IpNet::from(std::net::IpAddr::from(v4))),
            None => net,
        },
        IpNet::V4(_) => net,
    })
}

fn parse_bind(v: &str) -> anyhow::Result<Bind> {
    if let Ok(port) = v.parse::<u16>() {
        anyhow::ensure!(port != 0, "port '{v}': expected a number from 1 to 65535");
        return Ok(Bind::Port(port));
    }
    let addr: SocketAddr = v.parse().map_err(|_| {
        anyhow::anyhow!("port '{v}': expected a port number, addr:port or [addr]:port")
    })?;
    anyhow::ensure!(addr.port() != 0, "'{v}': the port must not be 0");
    Ok(Bind::Addr(addr))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match tool::options("penlogd", USAGE, parse(&args)) {
        Ok(options) => options,
        Err(status) => return status,
    };
    match run(*options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("penlogd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Set up the process, then serve until TERM, in pen's order (see `pen::daemon`): look the user
/// up (before any chroot hides /etc/passwd); fork without `-f` (before any thread exists; the
/// parent waits for readiness, so a start-up error shows in its exit status); install the signal
/// handlers; bind (as root, so a port below 1024 works); chroot and drop privileges; open the
/// output (inside the jail and as the user, so that HUP can reopen it); write the pid file;
/// report ready; serve.
fn run(o: Options) -> anyhow::Result<()> {
    pen::logging::init(o.debug.max(1));
    let user = o.user.as_deref().map(daemon::lookup_user).transpose()?;
    let readiness = if o.foreground {
        None
    } else {
        Some(daemon::detach()?)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("can't start the runtime")?;
    let signals = runtime
        .block_on(async { serve::Signals::install() })
        .context("can't handle signals")?;
    let socket = serve::bind(o.bind).with_context(|| match o.bind {
        Bind::Port(p) => format!("can't bind UDP port {p}"),
        Bind::Addr(a) => format!("can't bind {a}"),
    })?;
    // Connected before any chroot hides /dev/log.
    let syslog = readiness.as_ref().and_then(|_| {
        Syslog::connect_default("penlogd")
            .inspect_err(|e| {
                warn!("can't reach syslog ({e}); messages will be lost once in the background")
            })
            .ok()
    });
    if let Some(jail) = &o.jail {
        daemon::enter_jail(jail)?;
    }
    if let Some(user) = &user {
        daemon::drop_privileges(user)?;
    }
    let output = match &o.output {
        Some(path) => Output::file(path.clone())?,
        None => Output::stdout().context("can't use standard output")?,
    };
    let pid_file = o
        .pid_file
        .as_deref()
        .map(daemon::PidFile::create)
        .transpose()?;
    if let Some(readiness) = readiness {
        if let Some(syslog) = syslog {
            pen::logging::use_syslog(syslog);
        }
        readiness.ready()?;
    }
    let matcher = Matcher::new(o.ring, o.allow);
    let counters = runtime
        .block_on(serve::serve(
            socket,
            signals,
            matcher,
            output,
            o.line_buffered,
        ))
        .context("receiving datagrams")?;
    info!("exiting: {}", counters.summary());
    drop(pid_file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn options(s: &str) -> Options {
        match parse(&args(s)).unwrap() {
            Invocation::Run(o) => *o,
            _ => panic!("{s}: not a run"),
        }
    }

    #[test]
    fn command_lines() {
        let o = options("-fb -dd -n 3 -l out.log -a 10.0.0.0/8 -a ::1 10080");
        assert!(o.foreground && o.line_buffered);
        assert_eq!((o.debug, o.ring), (2, 3));
        assert_eq!(o.output, Some("out.log".into()));
        assert_eq!(o.allow.len(), 2);
        assert_eq!(o.bind, Bind::Port(10080));
        assert_eq!(
            options("-f [::1]:9000").bind,
            Bind::Addr("[::1]:9000".parse().unwrap())
        );
        let mapped = options("-a ::ffff:127.0.0.0/104 -f 1").allow;
        assert_eq!(mapped, ["127.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert!(matches!(parse(&[]).unwrap(), Invocation::Usage));
        assert!(matches!(parse(&args("--help")).unwrap(), Invocation::Usage));
    }

    #[test]
    fn bad_command_lines_name_what_was_wrong() {
        for (line, want) in [
            ("-z 1", "'z'"),
            ("-f", "no port"),
            ("-f 0", "'0'"),
            ("-f http", "'http'"),
            ("-n 0 1", "-n '0'"),
            ("-n x 1", "-n 'x'"),
            ("-a 10.0.0.0/33 1", "-a '10.0.0.0/33'"),
            ("-f 1 2", "'2'"),
            ("-l", "'l'"),
        ] {
            let e = match parse(&args(line)) {
                Err(e) => format!("{e:#}"),
                Ok(_) => panic!("{line}: accepted"),
            };
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
