//! The control plane: runs control commands from every origin (the control port, `include`,
//! the config file at startup and on HUP) against the balancer and the shell's configuration,
//! then does what they ask of the shell (rebind the listener, resize the connection limit,
//! close a connection, write a file, exit).
//!
//! Locks: the balancer lock (`Shared`) and `host` are only ever taken in that order, each for
//! the length of a synchronous closure; DNS lookups, file reads and file writes happen before or
//! after, never under either lock, so a slow control client or disk never delays a connection.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use tokio::sync::{watch, Notify, Semaphore};
use tracing::{info, warn};

use crate::addr::ListenAddr;
use crate::control::{self, file, Action, Command, Context, ControlError, HostView, Origin};
use crate::net::BoundListener;
use crate::reqlog::LogTarget;
use crate::shared::Shared;

pub struct Admin {
    shared: Arc<Shared>,
    host: Mutex<HostView>,
    /// The main listener; every data-plane thread follows it (`listen` replaces it, and
    /// shutting down sets None so that its last descriptor closes).
    listeners: watch::Sender<Option<Arc<BoundListener>>>,
    /// The backlog `listen` binds with (`-q`).
    backlog: u32,
    /// `-x` connection slots, and how many permits the semaphore was given in all.
    slots: Arc<Semaphore>,
    permits: Mutex<usize>,
    /// Told by `exit` (with `-X`).
    pub exit: Notify,
    /// How many idlers `idlers::maintain` keeps open.
    pub idlers: watch::Sender<usize>,
    /// TLS termination, when `-E` turned it on (`ssl_*` commands change it).
    tls: Option<Arc<crate::tls::Tls>>,
    /// `-U`: the listener is the UDP plane's, which `listen` cannot move.
    udp: bool,
    /// A listener bound by `listen` before the command ran, waiting for its action.
    prebound: Mutex<Option<(ListenAddr, BoundListener)>>,
}

impl Admin {
    pub fn new(
        shared: Arc<Shared>,
        host: HostView,
        listeners: watch::Sender<Option<Arc<BoundListener>>>,
        backlog: u32,
        slots: Arc<Semaphore>,
        tls: Option<Arc<crate::tls::Tls>>,
        udp: bool,
    ) -> Admin {
        let permits = Mutex::new(host.conn_max);
        Admin {
            shared,
            host: Mutex::new(host),
            listeners,
            backlog,
            slots,
            permits,
            exit: Notify::new(),
            idlers: watch::Sender::new(0),
            prebound: Mutex::new(None),
            tls,
            udp,
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn host(&self) -> MutexGuard<'_, HostView> {
        self.host.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the shell's configuration.
    pub fn host_view(&self) -> HostView {
        self.host().clone()
    }

    fn context(&self, origin: Origin) -> Context {
        Context {
            now: Instant::now(),
            wall: SystemTime::now(),
            default_port: self
                .host()
                .listen
                .as_ref()
                .and_then(ListenAddr::default_port),
            origin,
        }
    }

    /// One line from the control port; returns the reply to send. Blocking work (parsing may
    /// resolve names, `include` reads files) runs on a blocking thread.
    pub async fn control_line(self: &Arc<Self>, line: String) -> String {
        let this = self.clone();
        let job = tokio::task::spawn_blocking(move || this.control_line_blocking(&line));
        let (reply, actions) = match job.await {
            Ok(r) => r,
            Err(e) => (format!("control: internal error: {e}\n"), Vec::new()),
        };
        let mut reply = reply;
        for action in actions {
            if let Err(text) = self.perform(action) {
                reply = text;
            }
        }
        reply
    }

    fn control_line_blocking(&self, line: &str) -> (String, Vec<Action>) {
        let refuse = |e: ControlError| {
            warn!("control: {e}");
            (format!("{e}\n"), Vec::new())
        };
        let cmd = match control::parse(line) {
            Ok(c) => c,
            Err(e) => return refuse(e),
        };
        if let Err(e) = control::check_origin(&cmd, &self.host(), Origin::ControlPort) {
            return refuse(e);
        }
        if self.udp && matches!(cmd, Command::Listen(Some(_))) {
            return refuse(ControlError::Refused {
                command: "listen",
                reason: "a UDP pen (-U) cannot move its listener; restart it".into(),
            });
        }
        // `listen`: bind first, so that a port in use changes nothing at all.
        if let Command::Listen(Some((_, addr))) = &cmd {
            match BoundListener::bind(addr, self.backlog) {
                Ok(bound) => {
                    *self.prebound.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((addr.clone(), bound));
                }
                Err(e) => {
                    return refuse(ControlError::Refused {
                        command: "listen",
                        reason: e.to_string(),
                    })
                }
            }
        }
        match cmd {
            Command::Include(path) => match self.apply_file(&path, Origin::ControlPort) {
                Ok(applied) => (applied.replies.concat(), applied.actions),
                Err(e) => refuse(e),
            },
            // pen's `status`: write the web_stats page, then send it back.
            Command::Status => match crate::stats::write_web_stats(&self.shared) {
                Ok(page) => (page, Vec::new()),
                Err(e) => {
                    warn!("status: {e}");
                    ("Unable to create webstats\n".to_string(), Vec::new())
                }
            },
            // Everything `status` shows, as one JSON object (for penstats-web and scripts).
            Command::Snapshot => {
                let snapshot = crate::stats::take(&self.shared);
                match serde_json::to_string(&snapshot) {
                    Ok(json) => (json + "\n", Vec::new()),
                    Err(e) => refuse(ControlError::Refused {
                        command: "snapshot",
                        reason: e.to_string(),
                    }),
                }
            }
            cmd => {
                let ctx = self.context(Origin::ControlPort);
                let done = self.shared.with(|b| {
                    let mut host = self.host();
                    let done = control::execute(&cmd, b, &mut host, &ctx);
                    crate::dump::set_ascii(b.settings.ascii);
                    done
                });
                match done {
                    Ok(o) => (o.reply, o.action.into_iter().collect()),
                    Err(e) => refuse(e),
                }
            }
        }
    }

    /// Read a config file (outside the locks) and apply it as one transaction.
    pub fn apply_file(&self, path: &Path, origin: Origin) -> Result<file::Applied, ControlError> {
        // Over the control port every file read stays in `control_files`, nested includes too.
        let within = match origin {
            Origin::ControlPort => self.host().control_files.clone(),
            _ => None,
        };
        let lines = match (&within, origin) {
            (None, Origin::ControlPort) => {
                return Err(ControlError::Refused {
                    command: "include",
                    reason: "no control_files directory is set".into(),
                })
            }
            _ => file::read_within(path, within.as_deref())?,
        };
        let ctx = self.context(origin);
        self.shared.with(|b| {
            let mut host = self.host();
            file::apply(&lines, b, &mut host, &ctx)
        })
    }

    /// SIGHUP: re-read the `-F` file. On any error the old configuration stays in force.
    pub fn reload(&self) {
        let Some(path) = self.host().config_file.clone() else {
            warn!("SIGHUP: no configuration file (-F) to re-read");
            return;
        };
        let listening = {
            let h = self.host();
            (h.listen.clone(), h.listen_text.clone())
        };
        match self.apply_file(&path, Origin::ConfigFile) {
            Ok(applied) => {
                for action in applied.actions {
                    let relisten = matches!(action, Action::Listen(_));
                    if let Err(e) = self.perform(action) {
                        warn!("{}: {}", path.display(), e.trim_end());
                        if relisten {
                            let mut h = self.host();
                            (h.listen, h.listen_text) = listening.clone();
                        }
                    }
                }
                info!("SIGHUP: re-read {}", path.display());
            }
            Err(e) => warn!("SIGHUP: {e}; keeping the running configuration"),
        }
    }

    /// Do what a command asked of the shell. Err is the reply to send instead.
    pub fn perform(&self, action: Action) -> Result<(), String> {
        match action {
            Action::Listen(_) if self.udp => {
                return Err("listen: a UDP pen (-U) cannot move its listener\n".into());
            }
            Action::Listen(addr) => {
                let prebound = self
                    .prebound
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .filter(|(a, _)| *a == addr)
                    .map(|(_, b)| b);
                let bound = match prebound {
                    Some(b) => b,
                    None => BoundListener::bind(&addr, self.backlog).map_err(|e| {
                        // The old listener stays.
                        warn!("listen: {e}");
                        format!("listen: {e}\n")
                    })?,
                };
                info!("listening on {addr}");
                self.listeners.send_replace(Some(Arc::new(bound)));
            }
            Action::ConnMax(n) => self.resize(n),
            Action::Debug(n) => crate::logging::set_debug(n),
            Action::BusyPoll(window) => self.shared.busy_poll.set(window),
            Action::Coalesce(max) => self.shared.coalesce.set(max),
            Action::Idlers(n) => {
                self.idlers.send_replace(n);
            }
            Action::Close(id) => {
                if let Some(c) = self.shared.with(|b| b.conn(id).map(|c| c.counters.clone())) {
                    c.abort.close();
                }
            }
            Action::Exit => self.exit.notify_one(),
            Action::Log(target) => {
                // Resolves a name or opens a file: the control plane's thread, never a
                // data-plane one. On failure the log keeps going where it went.
                let opened = LogTarget::parse(&target).and_then(|t| self.shared.reqlog.set(t));
                if let Err(e) = opened {
                    warn!("log: {e}");
                    self.host().log = self.shared.reqlog.target().map(|t| t.to_string());
                    return Err(format!("log: {e}\n"));
                }
            }
            Action::NoLog => self.shared.reqlog.stop(),
            Action::GeoIp(None) => self.shared.with(|b| b.set_geoip(None)),
            Action::GeoIp(Some(path)) => match crate::geoip::GeoIp::open(&path) {
                // Read whole here, outside the lock; a bad file keeps the database in use.
                Ok(db) => {
                    let db = Arc::new(db);
                    self.shared.with(|b| b.set_geoip(Some(db)));
                }
                Err(e) => {
                    warn!("geoip: {e}");
                    return Err(format!("geoip: {e}\n"));
                }
            },
            Action::Tls(ssl) => {
                let Some(tls) = &self.tls else {
                    return Err(format!(
                        "{}: TLS is not on (start pen with -E)\n",
                        ssl.word()
                    ));
                };
                // Reads files: the control plane's blocking thread or the main thread.
                if let Err(e) = tls.update(|o| crate::tls::apply_command(o, &ssl)) {
                    warn!("{}: {e}", ssl.word());
                    return Err(format!("{}: {e}\n", ssl.word()));
                }
            }
            Action::WriteFile {
                path,
                contents,
                on_error,
            } => {
                if let Err(e) = crate::safe_file::write_atomically(&path, contents.as_bytes()) {
                    warn!("{}: {e}", path.display());
                    return Err(on_error);
                }
            }
        }
        Ok(())
    }

    /// Stop listening: the data-plane threads drop their descriptors, and this the last one.
    pub fn close_listener(&self) {
        self.listeners.send_replace(None);
    }

    /// `conn_max N`: the accept loops stop taking connections beyond N. Connections already
    /// open above a lowered limit keep running; the limit catches up as they close.
    fn resize(&self, n: usize) {
        let mut total = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        if n > *total {
            self.slots.add_permits(n - *total);
        } else if n < *total {
            let cut = *total - n;
            let now = self.slots.forget_permits(cut);
            if now < cut {
                let slots = self.slots.clone();
                let rest = u32::try_from(cut - now).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(p) = slots.acquire_many_owned(rest).await {
                        p.forget();
                    }
                });
            }
        }
        *total = n;
    }
}
