//! The configuration a start (or `--check`) reads: the command line, the `-o` commands and the
//! `-F` file, applied to a new balancer and the shell's view of itself, with the GeoIP database
//! and the TLS certificate loaded. Nothing here binds, forks or writes.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tracing::info;

use super::{default_conn_max, raise_fd_limit};
use crate::addr::ListenAddr;
use crate::balancer::{Balancer, Server, ServerId};
use crate::cli::Options;
use crate::control::{self, HostView};
use crate::daemon;
use crate::geoip::GeoIp;
use crate::tls::Tls;

/// Everything the command line and the `-F` file configure, read and checked, before anything
/// is bound or opened for writing.
pub(super) struct Configured {
    pub(super) host: HostView,
    pub(super) balancer: Balancer,
    /// Actions of `-o` and `-F` commands that run once the control plane is up.
    pub(super) config_actions: Vec<control::Action>,
    pub(super) listen: ListenAddr,
    /// `-U`: the address the UDP plane listens on (an IP listen address is checked for here).
    pub(super) udp: Option<SocketAddr>,
    pub(super) tls: Option<Arc<Tls>>,
    /// What the `-o` commands and the `-F` file's commands answered (pen prints it on stdout as it
    /// starts).
    pub(super) replies: String,
}

/// Build the balancer and the host's view from `options` and the `-F` file, load the GeoIP
/// database and the TLS certificate and key. Binds nothing and writes nothing.
pub(super) fn configure(options: &Options, conn_max: NonZeroUsize) -> anyhow::Result<Configured> {
    let mut host = host_view(options, conn_max.get());
    let (mut balancer, mut startup_actions, mut replies) = build_balancer(options, &mut host)?;
    if let Some(path) = &options.config_file {
        let (actions, text) = load_config_file(path, &mut balancer, &mut host)?;
        startup_actions.extend(actions);
        replies.push_str(&text);
    }
    // TLS settings from -o and -F shape the configuration built below; the other actions run
    // once the control plane is up.
    let mut tls_options = options.tls.clone();
    let mut config_actions = Vec::new();
    for action in startup_actions {
        match action {
            control::Action::Tls(ssl) => {
                if !tls_options.enabled() {
                    anyhow::bail!(
                        "{}: TLS is not on (give the certificate with -E)",
                        ssl.word()
                    );
                }
                crate::tls::apply_command(&mut tls_options, &ssl).context("TLS")?;
            }
            other => config_actions.push(other),
        }
    }
    let listen = host
        .listen
        .clone()
        .context("no listen address: give one on the command line or in the -F file")?;
    let udp = match (&listen, options.udp) {
        (_, false) => None,
        (ListenAddr::Tcp(addr), true) => Some(*addr),
        (ListenAddr::Unix(_), true) => anyhow::bail!("-U: UDP needs an IP listen address"),
    };
    balancer.set_conn_max(host.conn_max);
    let tls = match tls_options.enabled() {
        true => Some(Arc::new(Tls::new(tls_options).context("TLS")?)),
        false => None,
    };
    Ok(Configured {
        host,
        balancer,
        config_actions,
        listen,
        udp,
        tls,
        replies,
    })
}

/// `--check`: read and check the whole configuration as a start would (the command line, the
/// `-F` file and what it includes, the user of `-u`, the GeoIP database, the TLS certificate
/// and key), then stop. Nothing is bound, forked, written or chrooted; no pid file is made.
/// Returns a one-line summary and what the commands answered; an error names what is wrong.
pub fn check(options: &Options) -> anyhow::Result<Checked> {
    if let Some(user) = options.user.as_deref() {
        daemon::lookup_user(user)?;
    }
    if let Some(dir) = &options.jail {
        anyhow::ensure!(dir.is_dir(), "-j {}: not a directory", dir.display());
    }
    let conn_max = options
        .conn_max
        .unwrap_or_else(|| default_conn_max(raise_fd_limit()));
    let configured = configure(options, conn_max)?;
    let servers = configured.balancer.servers().len();
    let mode = if options.udp { "UDP" } else { "TCP" };
    let summary = format!(
        "pen: configuration is valid: {mode} on {}, {servers} server{}{}",
        configured.listen,
        if servers == 1 { "" } else { "s" },
        if configured.tls.is_some() {
            ", TLS"
        } else {
            ""
        },
    );
    Ok(Checked {
        summary,
        replies: configured.replies,
    })
}

/// What `--check` found in a valid configuration.
pub struct Checked {
    /// One line for stdout.
    pub summary: String,
    /// What the `-o` commands and the `-F` file answered, as a start prints it on stdout
    /// (`do_cmd: ignoring command ...` for an unknown one): `--check` prints it on stderr.
    pub replies: String,
}

/// The shell's part of the configuration, as the command line sets it.
fn host_view(options: &Options, conn_max: usize) -> HostView {
    let mut host = HostView::new(options.listen.clone(), conn_max);
    host.listen_text = options.listen_text.clone();
    host.control = options.control.as_ref().map(|(text, _)| text.clone());
    host.exit_enabled = options.exit_enabled;
    host.config_file = options.config_file.clone();
    host.debug = options.debug;
    host.log = options.log.as_ref().map(ToString::to_string);
    let mut flags = String::new();
    if options.foreground {
        flags.push_str(" -f");
    }
    if options.exit_enabled {
        flags.push_str(" -X");
    }
    if options.clients_max.get() != crate::balancer::DEFAULT_CLIENTS_MAX {
        flags.push_str(&format!(" -c {}", options.clients_max));
    }
    if let Some(e) = &options.emergency {
        flags.push_str(&format!(" -e {}", e.backend));
    }
    if let Some(a) = &options.abuse {
        flags.push_str(&format!(" -B {}", a.backend));
    }
    if let Some(u) = &options.user {
        flags.push_str(&format!(" -u '{u}'"));
    }
    if let Some(x) = options.conn_max {
        flags.push_str(&format!(" -x {x}"));
    }
    if options.udp {
        flags.insert_str(0, " -U");
    }
    host.write_flags = flags;
    host
}

/// `-F` at startup: read and apply the file (its replies go to stdout, as pen's do). An error
/// stops pen before it binds anything.
fn load_config_file(
    path: &std::path::Path,
    balancer: &mut Balancer,
    host: &mut HostView,
) -> anyhow::Result<(Vec<control::Action>, String)> {
    let lines = control::file::read(path).map_err(|e| anyhow::anyhow!("-F {e}"))?;
    let ctx = control::Context {
        now: Instant::now(),
        wall: std::time::SystemTime::now(),
        default_port: host
            .listen
            .as_ref()
            .and_then(crate::addr::ListenAddr::default_port),
        origin: control::Origin::ConfigFile,
    };
    let applied = control::file::apply(&lines, balancer, host, &ctx)
        .map_err(|e| anyhow::anyhow!("-F {e}"))?;
    // Startup binds the listener itself, after this; the other actions run once it is up.
    let actions = applied
        .actions
        .into_iter()
        .filter(|a| !matches!(a, control::Action::Listen(_) | control::Action::ConnMax(_)))
        .collect();
    Ok((actions, applied.replies.concat()))
}

/// The balancer as the command line describes it: settings, `-o` commands, then the servers.
/// Also returns what the `-o` commands asked of the shell, and what they answered.
fn build_balancer(
    options: &Options,
    host: &mut HostView,
) -> anyhow::Result<(Balancer, Vec<control::Action>, String)> {
    let mut actions = Vec::new();
    let mut replies = String::new();
    let mut balancer = Balancer::new(options.settings.clone(), options.clients_max);
    // `-g`: the country database for `country` access-list entries, read whole at start-up.
    if let Some(path) = &options.geoip {
        let geoip = GeoIp::open(path)?;
        info!(
            "GeoIP: {} ({})",
            geoip.path().display(),
            geoip.database_type()
        );
        balancer.set_geoip(Some(Arc::new(geoip)));
    }
    let ctx = control::Context {
        now: Instant::now(),
        wall: std::time::SystemTime::now(),
        default_port: options
            .listen
            .as_ref()
            .and_then(crate::addr::ListenAddr::default_port),
        origin: control::Origin::CommandLine,
    };
    for cmd in &options.commands {
        let outcome = control::execute(cmd, &mut balancer, host, &ctx)
            .map_err(|e| anyhow::anyhow!("-o: {e}"))?;
        replies.push_str(&outcome.reply);
        actions.extend(outcome.action);
    }
    for (i, spec) in options.servers.iter().enumerate() {
        balancer.replace_server(ServerId(i), Server::from_spec(spec));
    }
    balancer.set_emergency(options.emergency.as_ref());
    balancer.set_abuse(options.abuse.as_ref());
    Ok((balancer, actions, replies))
}
