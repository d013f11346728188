//! The signals pen handles (TERM, INT, HUP, USR1, USR2) and what each asks for.

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals pen handles, installed once at startup.
pub(super) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    /// Must run inside the runtime that will wait for them.
    pub(super) fn install() -> anyhow::Result<Signals> {
        let handle = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("can't handle {name}"))
        };
        Ok(Signals {
            term: handle(SignalKind::terminate(), "SIGTERM")?,
            int: handle(SignalKind::interrupt(), "SIGINT")?,
            hup: handle(SignalKind::hangup(), "SIGHUP")?,
            usr1: handle(SignalKind::user_defined1(), "SIGUSR1")?,
            usr2: handle(SignalKind::user_defined2(), "SIGUSR2")?,
        })
    }

    /// The next signal that asks for something.
    pub(super) async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.term.recv() => Event::Stop,
            _ = self.int.recv() => Event::Stop,
            _ = self.hup.recv() => Event::Reload,
            _ = self.usr1.recv() => Event::Stats,
            _ = self.usr2.recv() => Event::Abort,
        }
    }
}

/// What a signal asks for.
pub(super) enum Event {
    /// TERM, INT: stop accepting, let connections finish, exit.
    Stop,
    /// HUP: re-read the config file.
    Reload,
    /// USR1: statistics.
    Stats,
    /// USR2: pen aborted; logged and ignored here.
    Abort,
}
