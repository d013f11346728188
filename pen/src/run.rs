//! Starting and stopping the daemon: detaching, descriptor limits, the runtime, the listener,
//! the jail and the privilege drop, the pid file, signals.

mod config;
mod signals;

pub use config::{check, Checked};
use config::{configure, Configured};

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::addr::ListenAddr;
use crate::admin::Admin;
use crate::cli::Options;
use crate::control_port;
use crate::daemon;
use crate::dsr::{Dsr, DsrConfig, DsrError, Tarpit};
use crate::engine;
use crate::logging::{self, Syslog};
use crate::net::BoundListener;
use crate::shared::{Limits, Shared};
use crate::stats;
use crate::udp::UdpPlane;
use signals::{Event, Signals};

/// How long open connections may take to finish after TERM or INT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Descriptors kept aside for listeners, logs and the control plane when deriving `-x`.
const FD_RESERVE: u64 = 64;

/// Raise the soft descriptor limit to the hard one (as HAProxy does) and return it.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// pen's `-x` default is 500 because C pen preallocates its table. Connections here cost nothing
/// until they exist, so the default is what the descriptor limit allows (two per connection),
/// and never less than pen's 500.
pub fn default_conn_max(fd_limit: u64) -> NonZeroUsize {
    let n = (fd_limit.saturating_sub(FD_RESERVE) / 2).max(500);
    NonZeroUsize::new(usize::try_from(n).unwrap_or(usize::MAX)).unwrap_or(NonZeroUsize::MIN)
}

/// Where the data-plane threads are in their life; the main thread moves them along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serve,
    /// Stop accepting; let open connections finish.
    Drain,
    /// Grace period over: drop whatever is still open.
    Exit,
}

/// Run pen until TERM or INT. Returns once the listener is closed and open connections have
/// finished (or the grace period ran out), and the pid file is removed.
///
/// Without `-f` the process forks first, before any thread exists; the parent waits (see
/// `daemon::detach`) until the readiness signal below, so a start-up error shows in its exit
/// status, and this function then runs in the child.
///
/// Threads: one data-plane thread per core, each with its own event loop (the epoll engine,
/// TLS included) and its own descriptor of the listening socket; a connection lives on the
/// thread that accepted it, so no thread ever wakes another to run it.
/// The main thread runs the control plane (signals, the control port, config re-reads), so
/// nothing it does can delay a connection. With `-U` the UDP plane's one thread replaces the
/// data-plane threads; with `dsr_if`, the DSR thread.
pub fn run(options: Options) -> anyhow::Result<()> {
    // Looked up while /etc/passwd is in reach, and before forking, so a typo fails at once.
    let user = options
        .user
        .as_deref()
        .map(daemon::lookup_user)
        .transpose()?;
    let readiness = if options.foreground {
        None
    } else {
        Some(daemon::detach()?)
    };
    let fd_limit = raise_fd_limit();
    let conn_max = options
        .conn_max
        .unwrap_or_else(|| default_conn_max(fd_limit));
    // (UDP sessions need one descriptor each; the UDP plane sizes its table itself.)
    if !options.udp && (conn_max.get() as u64).saturating_mul(2) + FD_RESERVE > fd_limit {
        warn!(
            "-x {conn_max} needs about {} descriptors but the limit is {fd_limit}; \
             accepts will pause when descriptors run out",
            conn_max.get() * 2
        );
    }
    let Configured {
        host,
        balancer,
        config_actions,
        listen,
        udp: udp_listen,
        tls,
        replies,
    } = configure(&options, conn_max)?;
    print!("{replies}");
    let slots = Arc::new(Semaphore::new(host.conn_max));
    let shared = Shared::new(balancer);
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("can't start the runtime")?;
    // Signal handlers go in before anything is bound: a TERM that arrives as soon as the port
    // answers must stop pen cleanly, not kill it with the default action.
    let mut signals = control.block_on(async { Signals::install() })?;
    if let Some(interface) = shared.with(|b| b.settings.dsr_if.clone()) {
        // Direct server return relays nothing: no listener, no data-plane threads.
        let tarpit = admin_tarpit(&shared, host.tarpit_acl);
        let dsr = start_dsr(&listen, &interface, tarpit, shared)?;
        // DSR needs root for its raw socket, so no jail or user change; the pid file and the
        // daemon's readiness as in the relaying modes.
        let pid_file = options
            .pid_file
            .as_deref()
            .map(daemon::PidFile::create)
            .transpose()?;
        if let Some(readiness) = readiness {
            if let Some(syslog) = connect_syslog() {
                logging::use_syslog(syslog);
            }
            readiness.ready()?;
        }
        control.block_on(async {
            while !matches!(signals.next().await, Event::Stop) {
                warn!("signal ignored in direct server return mode");
            }
        });
        drop(dsr);
        drop(pid_file);
        return Ok(());
    }
    let control_listener = bind_control(&options)?;
    // `-U`: the UDP plane (its own thread) instead of the TCP listener and data-plane threads;
    // the control plane, signals and the process steps are the same.
    let threads = if options.udp { 0 } else { data_threads() };
    let (bound, udp) = if let Some(addr) = udp_listen {
        let plane = UdpPlane::start(addr, shared.clone(), NonZeroUsize::MIN.max(conn_max))?;
        (None, Some(plane))
    } else {
        (
            Some(Arc::new(BoundListener::bind(&listen, options.backlog)?)),
            None,
        )
    };
    let (listeners_tx, listeners_rx) = watch::channel(bound.clone());
    let admin = Arc::new(Admin::new(
        shared.clone(),
        host,
        listeners_tx,
        options.backlog,
        slots.clone(),
        tls.clone(),
        udp.is_some(),
    ));
    // Every socket that may need root (a port below 1024) is bound above this line. Then, in
    // pen's order: the jail, the privilege drop, the pid file (inside the jail, as the user).
    // The syslog socket is connected first, while the jail does not hide it yet.
    let syslog = readiness.as_ref().and_then(|_| connect_syslog());
    if let Some(dir) = &options.jail {
        daemon::enter_jail(dir)?;
    }
    if let Some(user) = &user {
        daemon::drop_privileges(user)?;
    }
    // The request log, as pen opens it: inside the jail and as the user, so that HUP can reopen
    // it there.
    if let Some(target) = &options.log {
        shared.reqlog.set(target.clone()).context("-l")?;
    }
    let pid_file = options
        .pid_file
        .as_deref()
        .map(daemon::PidFile::create)
        .transpose()?;
    let mut udp = udp;
    if let Some(plane) = udp.as_mut() {
        plane.go();
    }
    let (phase_tx, phase_rx) = watch::channel(Phase::Serve);
    let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
    let mut workers = Vec::with_capacity(threads);
    let mailboxes = (0..threads)
        .map(|_| engine::Mailbox::new())
        .collect::<std::io::Result<Arc<[_]>>>()
        .context("can't start a data-plane thread")?;
    let loads = Arc::new(engine::Loads::new(threads));
    // Each thread runs the epoll engine (see `engine`).
    for i in 0..threads {
        let setup = engine::Setup {
            index: i,
            listeners: listeners_rx.clone(),
            shared: shared.clone(),
            limits: Limits {
                slots: slots.clone(),
                multi_accept: options.multi_accept.get(),
            },
            phase: phase_rx.clone(),
            peers: mailboxes.clone(),
            loads: loads.clone(),
            tls: tls.clone(),
        };
        let ready = ready_tx.clone();
        let worker = std::thread::Builder::new()
            .name(format!("pen-data-{i}"))
            .spawn(move || engine::run(setup, ready))
            .context("can't start a data-plane thread")?;
        workers.push(worker);
    }
    let nudge_all = move || mailboxes.iter().for_each(|m| m.nudge());
    drop(ready_tx);
    for _ in 0..threads {
        ready_rx
            .recv()
            .context("a data-plane thread died while starting")?
            .context("can't register the listener")?;
    }
    // Readiness: everything is bound, the pid file is written. A daemon's waiting parent exits 0
    // now, and from here on messages go to syslog.
    if let Some(readiness) = readiness {
        if let Some(syslog) = syslog {
            logging::use_syslog(syslog);
        }
        readiness.ready()?;
    }
    match (&bound, &udp) {
        (Some(bound), _) => info!(
            "pen {} starting: listening on {}, {} servers, up to {conn_max} connections, {threads} threads",
            env!("CARGO_PKG_VERSION"),
            bound.local_addr().map_or_else(|| listen.to_string(), |a| a.to_string()),
            options.servers.len(),
        ),
        (None, Some(plane)) => info!(
            "pen {} starting: listening on udp {}, {} servers, up to {conn_max} sessions",
            env!("CARGO_PKG_VERSION"),
            plane.local_addr(),
            options.servers.len(),
        ),
        (None, None) => {}
    }
    drop(bound);
    control.block_on(async {
        for action in config_actions {
            if let Err(e) = admin.perform(action) {
                warn!("-F: {}", e.trim_end());
            }
        }
        // The engines follow `listen` (a new listener, or none) when nudged.
        let mut listener_changes = listeners_rx.clone();
        let nudge = nudge_all.clone();
        tokio::spawn(async move {
            while listener_changes.changed().await.is_ok() {
                nudge();
            }
        });
        tokio::spawn(crate::idlers::maintain(
            shared.clone(),
            admin.idlers.subscribe(),
        ));
        if let Some(l) = control_listener {
            match l.register() {
                Ok(l) => {
                    tokio::spawn(control_port::serve(l, admin.clone()));
                }
                Err(e) => warn!("can't register the control port: {e}"),
            }
        }
        loop {
            tokio::select! {
                stop = signals.next() => match stop {
                    Event::Stop => break,
                    Event::Reload => {
                        // pen's order: reopen the request log, then re-read the config file.
                        if let Err(e) = shared.reqlog.reopen() {
                            warn!("SIGHUP: {e}");
                        }
                        // TLS files: a bad one keeps the configuration in use.
                        if let Some(tls) = &tls {
                            match tls.reload() {
                                Ok(()) => info!("SIGHUP: TLS certificates and keys reloaded"),
                                Err(e) => warn!("SIGHUP: TLS reload failed, keeping the old certificates: {e}"),
                            }
                        }
                        let admin = admin.clone();
                        let _ = tokio::task::spawn_blocking(move || admin.reload()).await;
                    }
                    Event::Stats => stats::on_usr1(&shared),
                    // pen 0.34.1 called abort(): a core dump, and a stale pid file left behind.
                    Event::Abort => warn!("SIGUSR2: ignored (pen 0.34.1 aborted here)"),
                },
                () = admin.exit.notified() => {
                    info!("exit: asked for on the control port");
                    break;
                }
            }
        }
        info!("stopping: no new connections; waiting up to {SHUTDOWN_GRACE:?} for open ones");
        let _ = phase_tx.send(Phase::Drain);
        nudge_all();
        admin.close_listener();
        admin.idlers.send_replace(0);
        // UDP has no connections to wait for: its sessions end with the plane.
        if let Some(plane) = udp {
            let _ = tokio::task::spawn_blocking(move || plane.stop()).await;
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while shared.with(|b| b.live_conns()) > 0 {
            if tokio::time::Instant::now() >= deadline {
                warn!("grace period over; resetting the connections still open");
                cut_open_connections(&shared).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let _ = phase_tx.send(Phase::Exit);
    nudge_all();
    for worker in workers {
        if worker.join().is_err() {
            warn!("a data-plane thread panicked");
        }
    }
    shared.reqlog.close();
    drop(pid_file);
    Ok(())
}

/// How long connections cut at the end of the grace period may take to send their resets.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// End every open connection with a reset (catalogue D5: a transfer cut at shutdown must look
/// cut to both sides, not complete), then wait a little for them to go.
async fn cut_open_connections(shared: &Shared) {
    let open: Vec<_> = shared.with(|b| b.conns().map(|(_, c)| c.counters.clone()).collect());
    for counters in open {
        counters.abort.cut();
    }
    let deadline = tokio::time::Instant::now() + CUT_WAIT;
    while shared.with(|b| b.live_conns()) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The control port, unless pen runs as root without `-u` (pen's rule: an unauthenticated
/// port should not command a root process unless the operator insists with `-u root`).
fn bind_control(options: &Options) -> anyhow::Result<Option<BoundListener>> {
    let Some((_, addr)) = &options.control else {
        return Ok(None);
    };
    if nix::unistd::geteuid().is_root() && options.user.is_none() {
        warn!("Won't open control port running as root; use -u to run as different user");
        return Ok(None);
    }
    let bound = BoundListener::bind_private(addr, options.backlog).context("control port (-C)")?;
    Ok(Some(bound))
}

/// The syslog socket for a daemon's messages. Without one they would be lost, so say so while
/// stderr still reaches someone.
fn connect_syslog() -> Option<Syslog> {
    match Syslog::connect_default("pen") {
        Ok(syslog) => Some(syslog),
        Err(e) => {
            warn!("can't reach syslog ({e}); pen's messages will be lost once it is in the background");
            None
        }
    }
}

/// `tarpit_acl N`: the addresses list N permits get pen's forged SYN+ACK.
fn admin_tarpit(shared: &Arc<Shared>, acl: Option<crate::balancer::AclId>) -> Option<Tarpit> {
    let acl = acl?;
    let shared = shared.clone();
    Some(Arc::new(move |ip: std::net::Ipv4Addr| {
        shared.with(|b| b.permits(acl, Some(ip.into())))
    }))
}

/// `dsr_if`: the listen address is the virtual address, IPv4 only.
fn start_dsr(
    listen: &ListenAddr,
    interface: &str,
    tarpit: Option<Tarpit>,
    shared: Arc<Shared>,
) -> anyhow::Result<Dsr> {
    let ListenAddr::Tcp(SocketAddr::V4(vip)) = listen else {
        return Err(DsrError::NotIpv4(listen.to_string()).into());
    };
    let config = DsrConfig {
        interface: interface.to_string(),
        vip: *vip.ip(),
        port: Some(vip.port()),
        udp: false,
        tarpit,
    };
    Ok(Dsr::start(config, shared)?)
}

/// One data-plane thread per core the process may run on, unless `PEN_THREADS` says otherwise
/// (a tuning knob, like HAProxy's `nbthread`; values outside 1..=1024 are ignored).
fn data_threads() -> usize {
    std::env::var("PEN_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=1024).contains(n))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}
