//! The TCP data plane: one edge-triggered epoll loop per data-plane thread, as C pen runs one
//! level-triggered loop, instead of a tokio runtime with a task per connection. TLS clients
//! run here too: their handshake is a future (`tls::Handshake`) polled from readiness events
//! like any other step, with its timeout among this loop's `Timers`.
//!
//! Why: measured on the benchmark's keep-alive load, the kernel's work per request was the same
//! for pen-rs on tokio and for C pen, and the difference was user space: tokio's per-event
//! machinery (the driver's readiness dispatch, the task's wake, schedule and poll) cost about
//! 1.5 µs per request more than C pen's whole loop. A plain loop that reads and writes straight
//! from the event costs what C pen's does.
//!
//! What a connection goes through here, in order: the TLS handshake under `-E`, admission,
//! the connect with the `-t` timeout (given up at once if the client resets), failover as the
//! balancer says, the relay (`relay::Pumps`) with back-pressure and half-close,
//! `tcp_fastclose`, the idle timeout, `-H` rewriting, `close N` and the reset at the end of the
//! shutdown grace period.
//!
//! Everything a thread owns stays on it. Other threads reach it only through its `Mailbox`: an
//! eventfd in its epoll set and a list of tokens, posted by wakers. `close N` wakes the
//! connection's token through `Abort`, a freed `-x` slot wakes the thread through the
//! semaphore's waker, and the main thread nudges every thread when the phase or the listener
//! changes.

mod client;
mod coalesce;
mod conn;
mod lifecycle;
mod mailbox;
mod opening;
mod sock;
mod spread;
mod timers;

pub use mailbox::Mailbox;
pub use spread::Loads;

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use socket2::Socket;
use tokio::sync::{watch, AcquireError, OwnedSemaphorePermit};
use tracing::{debug, error, warn};

use crate::balancer::{Admission, ConnOptions, Peer};
use crate::net::{self, BoundListener};
use crate::run::Phase;
use crate::shared::{self, Limits, Shared, Spin};
use crate::tls::Tls;
use coalesce::Coalesce;

use client::Client;
use conn::{Conn, State};
use mailbox::{token_waker, NUDGE};
use sock::Sock;
use timers::Timers;

/// Tokens with the top bit set are not connections.
const LISTENER: u64 = 1 << 63;
const MAILBOX: u64 = (1 << 63) | 1;
/// A timer entry that resumes accepting after descriptors ran out.
const RESUME_ACCEPT: u64 = (1 << 63) | 3;

/// How long to pause accepting when the process is out of descriptors or memory.
const EXHAUSTION_PAUSE: Duration = Duration::from_millis(100);
/// The timer slack of a data-plane thread, in nanoseconds: its naps end on time.
const NAP_SLACK_NS: u64 = 1_000;
/// Events taken per epoll_wait.
const EVENTS: usize = 256;
/// The longest sleep without a timer due (the mailbox wakes the loop for anything else).
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Reads (of up to 64 KiB) per direction that one turn of the loop shares between the
/// connections that used all of theirs in the turn before. A connection waiting for its event
/// waits for at most a turn, so however many saturated connections share its thread, that is
/// about 2 MiB of copying (16 reads each way), not 1 MiB per saturated connection and
/// direction. A lone bulk transfer still gets all 16 per turn.
const TURN_READS: usize = 16;

/// Each busy connection's share of `TURN_READS`, at least one read.
fn reads_per_step(busy: usize) -> usize {
    (TURN_READS / busy.max(1)).max(1)
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// What the data-plane thread is given.
pub struct Setup {
    pub index: usize,
    pub listeners: watch::Receiver<Option<Arc<BoundListener>>>,
    pub shared: Arc<Shared>,
    pub limits: Limits,
    pub phase: watch::Receiver<Phase>,
    /// Every data-plane thread's mailbox, by index: this one's (`mailbox`) wakes it, the
    /// others take the clients it hands on.
    pub peers: Arc<[Arc<Mailbox>]>,
    /// Every data-plane thread's connections (`spread`).
    pub loads: Arc<Loads>,
    /// TLS termination on the listener: every client shakes hands before it is admitted.
    pub tls: Option<Arc<Tls>>,
}

impl Setup {
    /// This thread's own mailbox.
    fn mailbox(&self) -> &Arc<Mailbox> {
        &self.peers[self.index]
    }
}

/// One slot of the connection table; a token carries the slot's generation, so an event for a
/// connection that has gone never reaches the one that took its slot.
#[derive(Default)]
struct Slot {
    generation: u32,
    conn: Option<Box<Conn>>,
}

struct Engine {
    setup: Setup,
    epoll: Epoll,
    listener: Option<Socket>,
    /// The listener has had an edge and has not been found empty since.
    listener_ready: bool,
    /// A client accepted while every `-x` slot was taken, waiting for one.
    waiting: Option<(Socket, Peer)>,
    acquire: Option<Acquire>,
    nudge_waker: Waker,
    accept_paused_until: Option<Instant>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Each connection's one deadline (by its client token), and `RESUME_ACCEPT`'s.
    timers: Timers,
    /// Connections with reads left over from their last turn, each once (`run_again`).
    again: Vec<u64>,
    /// Reads per direction a relay step takes this turn (`reads_per_step`).
    turn_reads: usize,
    draining: bool,
    /// The measure of this thread's load that gives its naps (`coalesce`).
    coalesce: Coalesce,
    /// Who opens this thread's connections, and so whether connects hold their last ACK.
    openings: opening::Openings,
}

/// Generations wrap below 2^31, so a connection's token never has the top bit set.
const GENERATION_MASK: u32 = 0x7fff_ffff;

fn token(slot: u32, generation: u32, server: bool) -> u64 {
    (u64::from(generation) << 32) | (u64::from(slot) << 1) | u64::from(server)
}

/// Run the engine on this thread until the phase is `Exit`. `ready` hears once that the
/// listener is registered (or why not).
pub fn run(setup: Setup, ready: std::sync::mpsc::Sender<io::Result<()>>) {
    let engine = match Engine::new(setup) {
        Ok(engine) => engine,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    engine.serve();
}

impl Engine {
    fn new(mut setup: Setup) -> io::Result<Engine> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            setup.mailbox().event.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, MAILBOX),
        )?;
        let bound = setup.listeners.borrow_and_update().clone();
        let bound = bound.ok_or_else(|| io::Error::other("no listener"))?;
        let nudge_waker = token_waker(setup.mailbox(), NUDGE);
        let mut engine = Engine {
            setup,
            epoll,
            listener: None,
            listener_ready: false,
            waiting: None,
            acquire: None,
            nudge_waker,
            accept_paused_until: None,
            slots: Vec::new(),
            free: Vec::new(),
            timers: Timers::default(),
            again: Vec::new(),
            turn_reads: TURN_READS,
            draining: false,
            coalesce: Coalesce::new(Instant::now()),
            openings: opening::Openings::default(),
        };
        engine.take_listener(&bound)?;
        Ok(engine)
    }

    /// Accept on `bound` from now on. Every thread waits on the one socket, and EPOLLEXCLUSIVE
    /// has the kernel wake one of those asleep for a new client, not all (`spread`).
    fn take_listener(&mut self, bound: &BoundListener) -> io::Result<()> {
        let socket = bound.socket()?;
        socket.set_nonblocking(true)?;
        self.epoll.add(
            socket.as_fd(),
            EpollEvent::new(
                EpollFlags::EPOLLIN | EpollFlags::EPOLLET | EpollFlags::EPOLLEXCLUSIVE,
                LISTENER,
            ),
        )?;
        self.listener = Some(socket);
        self.listener_ready = true;
        Ok(())
    }

    fn serve(mut self) {
        let mut events = vec![EpollEvent::empty(); EVENTS];
        let mut now = Instant::now();
        let mut spin = Spin::default();
        // Naps of tens of microseconds: the kernel's default slack (50 µs) would double them.
        if let Err(e) = nix::sys::prctl::set_timerslack(NAP_SLACK_NS) {
            debug!("timer slack: {e}");
        }
        loop {
            let window = self.setup.shared.busy_poll.get();
            let busy = !self.again.is_empty()
                || (self.listener_ready && self.may_accept(now))
                || (!window.is_zero() && spin.polling(window, Instant::now()));
            let wait = if busy {
                Duration::ZERO
            } else {
                self.timers
                    .next()
                    .map_or(MAX_SLEEP, |at| at.saturating_duration_since(now))
                    .min(MAX_SLEEP)
            };
            let coalesce = self.setup.shared.coalesce.get();
            let nap = self.coalesce.nap(wait, coalesce);
            let timeout = match nap {
                Some(nap) => {
                    // Not waiting on the sockets: what arrives meanwhile queues unannounced,
                    // and one epoll_wait that does not sleep takes it all.
                    nap_for(nap);
                    EpollTimeout::ZERO
                }
                None => {
                    // Round up, so a timer is never found a little early and waited for again.
                    let ms = wait.as_micros().div_ceil(1000);
                    EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
                }
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => {
                    warn!("epoll_wait: {e}");
                    std::thread::sleep(EXHAUSTION_PAUSE);
                    0
                }
            };
            now = Instant::now();
            spin.found(n, now);
            self.coalesce.waited(n, nap.is_some(), now, coalesce);
            self.turn_reads = reads_per_step(self.again.len());
            let mut mail = false;
            for event in &events[..n] {
                match event.data() {
                    LISTENER => self.listener_ready = true,
                    MAILBOX => mail = true,
                    token => self.contain(token, |e| e.on_event(token, event.events(), now)),
                }
            }
            if mail {
                let posted = self.setup.mailbox().take();
                for token in posted.tokens {
                    if token == NUDGE {
                        if self.on_nudge(now) {
                            return self.exit();
                        }
                    } else {
                        self.contain(token, |e| e.on_abort(token));
                    }
                }
                for client in posted.clients {
                    self.contain(LISTENER, |e| e.take_client(client, now));
                }
            }
            for token in std::mem::take(&mut self.again) {
                if self.live(token) {
                    self.conn(token).queued = false;
                }
                self.contain(token, |e| e.drive(token, now));
            }
            self.run_timers(now);
            if self.listener_ready {
                self.contain(LISTENER, |e| e.accept(now));
            }
        }
    }

    /// Run `f` for one connection (or the listener). A panic there is a bug in pen: like a
    /// panicking task on tokio, it ends that connection and nothing else, and the loop goes on.
    fn contain(&mut self, token: u64, f: impl FnOnce(&mut Self)) {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if let Err(panic) = run {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            error!(
                "data-plane thread {}: a bug ended a connection: {what}",
                self.setup.index
            );
            if token & LISTENER == 0 {
                let closed =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.close(token)));
                if closed.is_err() {
                    // Not even the release worked: forget the connection without it.
                    if let Some(slot) = self.slots.get_mut(slot_of(token)) {
                        slot.conn = None;
                    }
                }
            }
        }
    }

    fn may_accept(&self, now: Instant) -> bool {
        self.listener.is_some()
            && self.waiting.is_none()
            && self.accept_paused_until.is_none_or(|t| now >= t)
    }

    /// The phase, the listener or the slots may have changed. True when it is time to exit.
    fn on_nudge(&mut self, now: Instant) -> bool {
        let phase = *self.setup.phase.borrow();
        if phase >= Phase::Exit {
            return true;
        }
        if phase >= Phase::Drain && !self.draining {
            self.draining = true;
            self.drop_listener();
            self.waiting = None;
            self.acquire = None;
        }
        if !self.draining && self.setup.listeners.has_changed().unwrap_or(false) {
            let bound = self.setup.listeners.borrow_and_update().clone();
            self.drop_listener();
            match bound {
                Some(bound) => {
                    if let Err(e) = self.take_listener(&bound) {
                        warn!("can't take up the new listener: {e}");
                    }
                }
                None => self.waiting = None,
            }
        }
        self.poll_acquire(now);
        false
    }

    /// Stop accepting on this thread's listening socket. Its registration goes explicitly: the
    /// socket is shared (the main thread, or every thread for a Unix listener, holds a
    /// descriptor of it), so closing ours would leave it in the epoll set.
    fn drop_listener(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = self.epoll.delete(listener.as_fd());
        }
        self.listener_ready = false;
    }

    /// A client is waiting for a `-x` slot: see whether one is free.
    fn poll_acquire(&mut self, now: Instant) {
        let Some(acquire) = self.acquire.as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(&self.nudge_waker);
        match acquire.as_mut().poll(&mut cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(permit)) => {
                self.acquire = None;
                if let Some((socket, peer)) = self.waiting.take() {
                    self.place(socket, peer, permit, now);
                }
            }
            Poll::Ready(Err(_)) => {
                // The semaphore was closed: shutting down.
                self.acquire = None;
                self.waiting = None;
            }
        }
    }

    /// Accept up to `-m` clients, then let the connections run.
    fn accept(&mut self, now: Instant) {
        for _ in 0..self.setup.limits.multi_accept {
            if !self.may_accept(now) {
                return;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept4(nix::libc::SOCK_NONBLOCK | nix::libc::SOCK_CLOEXEC) {
                Ok((socket, addr)) => {
                    let peer = match addr.as_socket() {
                        Some(sa) => Peer {
                            ip: Some(sa.ip().to_canonical()),
                            port: sa.port(),
                        },
                        None => Peer { ip: None, port: 0 },
                    };
                    match self.setup.limits.slots.clone().try_acquire_owned() {
                        Ok(permit) => self.place(socket, peer, permit, now),
                        Err(tokio::sync::TryAcquireError::NoPermits) => {
                            self.waiting = Some((socket, peer));
                            let slots = self.setup.limits.slots.clone();
                            self.acquire = Some(Box::pin(slots.acquire_owned()));
                            self.poll_acquire(now);
                        }
                        Err(tokio::sync::TryAcquireError::Closed) => return,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(e) if net::is_local_failure(&e) => {
                    if shared::ACCEPT_FAILURE_LOG.allow(now) {
                        warn!("accept: {e}; pausing new connections until descriptors free up");
                    }
                    self.accept_paused_until = Some(now + EXHAUSTION_PAUSE);
                    self.timers.set(RESUME_ACCEPT, now + EXHAUSTION_PAUSE);
                    return;
                }
                Err(e) => debug!("accept: {e}"),
            }
        }
    }

    /// A new client: register it, then admit it (or answer it, under `dummy`). A TLS client
    /// shakes hands first, and is admitted once that is over (`admit`). False if it got no
    /// slot (refused, or epoll would not have it).
    fn start(
        &mut self,
        socket: Socket,
        peer: Peer,
        permit: OwnedSemaphorePermit,
        now: Instant,
    ) -> bool {
        let tcp = peer.ip.is_some();
        let client = Sock::new(socket, tcp);
        if let Some(tls) = &self.setup.tls {
            let handshake = tls.handshake(client);
            let timeout = handshake.timeout();
            let deadline = now + timeout;
            let client = Client::Handshaking(Box::new(handshake));
            // Replaced by the settings at admission, as they are then.
            let options = self.setup.shared.with(|b| b.settings.conn_options());
            let state = State::Handshake { deadline, timeout };
            let Some(token) = self.register(client, peer, options, state, permit) else {
                return false;
            };
            self.timers.set(token, deadline);
            return true;
        }
        let (admission, settings) = admission(&self.setup.shared, peer, now);
        if admission == Some(Admission::ClientLimit) {
            // Refused before it costs a slot or an epoll registration.
            shared::client_limit_reached(&self.setup.shared, peer);
            return false;
        }
        let client = Client::Plain(client);
        let Some(token) = self.register(client, peer, settings, State::Choosing, permit) else {
            if let Some(Admission::Connect { conn, .. }) = admission {
                self.setup.shared.with(|b| b.closed(conn));
            }
            return false;
        };
        self.admitted(token, admission, settings, now);
        true
    }

    /// Give a new client a slot and its socket a place in the epoll set; its token, or None
    /// (and the client closed) if epoll refused it.
    fn register(
        &mut self,
        mut client: Client,
        peer: Peer,
        options: ConnOptions,
        state: State,
        permit: OwnedSemaphorePermit,
    ) -> Option<u64> {
        let sock = client.sock()?;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        self.coalesce.opened();
        let generation = self.slots[slot as usize].generation;
        let client_token = token(slot, generation, false);
        if let Err(e) = self.epoll.add(sock.socket.as_fd(), edge(client_token)) {
            debug!("can't register {}: {e}", shared::describe_peer(peer));
            self.free.push(slot);
            return None;
        }
        self.slots[slot as usize].conn = Some(Box::new(Conn {
            client,
            peer,
            options,
            state,
            id: None,
            _permit: permit,
            queued: false,
            mark: 0,
        }));
        Some(client_token)
    }

    /// A TLS client's handshake is over: admit it as `start` does a plain one.
    fn admit(&mut self, token: u64, now: Instant) {
        let peer = self.conn(token).peer;
        let (admission, settings) = admission(&self.setup.shared, peer, now);
        if admission == Some(Admission::ClientLimit) {
            shared::client_limit_reached(&self.setup.shared, peer);
            return self.close(token);
        }
        self.admitted(token, admission, settings, now);
    }

    /// Move an admitted client on, with the settings it keeps: answer it under `dummy`
    /// (`admission` None), else connect as the balancer says.
    fn admitted(
        &mut self,
        token: u64,
        admission: Option<Admission>,
        settings: ConnOptions,
        now: Instant,
    ) {
        let c = self.conn(token);
        if settings.tcp_nodelay {
            c.client.set_nodelay();
        }
        c.options = settings;
        match admission {
            None => {
                let deadline = now + conn::dummy_wait(&settings);
                c.state = State::Dummy { deadline };
                self.timers.set(token, deadline);
                // A TLS client's first chunk may have come with the handshake's last flight.
                self.drive(token, now);
            }
            Some(admission) => {
                c.state = State::Choosing;
                self.connect(token, admission, now);
            }
        }
    }

    fn conn(&mut self, token: u64) -> &mut Conn {
        self.slots[slot_of(token)]
            .conn
            .as_deref_mut()
            .expect("a live connection's token")
    }

    /// Run a connection again before the engine next sleeps, once however often it asks. A
    /// connection that is on the list and also has an event is driven for the event as well; if
    /// both turns asked to be queued, it would be on the next list twice, then three times,
    /// and a few saturated connections would fill ever longer turns between two epoll_waits
    /// while the rest waited for their events (seconds, under sustained load).
    fn run_again(&mut self, token: u64) {
        let c = self.conn(token);
        if !c.queued {
            c.queued = true;
            self.again.push(token);
        }
    }

    /// The connection a token names, if it is still the one the token was made for.
    fn live(&self, token: u64) -> bool {
        self.slots
            .get(slot_of(token))
            .is_some_and(|s| s.generation == (token >> 32) as u32 && s.conn.is_some())
    }

    /// End a connection: release it in the balancer and close its sockets.
    fn close(&mut self, token: u64) {
        let slot = &mut self.slots[slot_of(token)];
        let Some(conn) = slot.conn.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1) & GENERATION_MASK;
        self.free.push(slot_of(token) as u32);
        self.setup.loads.remove(self.setup.index);
        self.timers.clear(token & !1);
        if let Some(id) = conn.id {
            self.setup.shared.with(|b| b.closed(id));
        }
    }

    /// The grace period is over: drop whatever is still open.
    fn exit(mut self) {
        for i in 0..self.slots.len() {
            let generation = self.slots[i].generation;
            self.close(token(i as u32, generation, false));
        }
    }
}

/// Admit `peer` (None under `dummy`, which answers without a server) and take the settings a
/// connection keeps, under one lock.
fn admission(shared: &Shared, peer: Peer, now: Instant) -> (Option<Admission>, ConnOptions) {
    shared.with(|b| {
        let admission = (!b.settings.dummy).then(|| b.admit(peer, now));
        (admission, b.settings.conn_options())
    })
}

/// A nap of `nap`: first the core goes to whatever else is ready to run on it (the clients and
/// servers on this machine, another data-plane thread), whose work is what the nap waits for.
/// Only if nothing was (the yield came straight back) does the thread sleep. A sleeping nap on
/// a core that others wanted left it idle while they waited on pen: with pen, its clients and
/// its servers sharing two cores (the benchmark's `unpinned` layout), the cores idled
/// 12–13 % of the time under `http-close` with sleeping naps and 6–8 % with yielding ones.
fn nap_for(nap: Duration) {
    let start = Instant::now();
    let _ = nix::sched::sched_yield();
    if start.elapsed() < YIELDED {
        std::thread::sleep(nap);
    }
}

/// A yield that took this long ran something else: more than the system call alone costs.
const YIELDED: Duration = Duration::from_micros(5);

fn slot_of(token: u64) -> usize {
    ((token & 0xffff_ffff) >> 1) as usize
}

/// Edge-triggered interest in everything a connection's socket can report.
fn edge(token: u64) -> EpollEvent {
    EpollEvent::new(
        EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET,
        token,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turns_reads_are_shared_between_its_busy_connections() {
        assert_eq!(
            reads_per_step(0),
            TURN_READS,
            "nothing left over: a full turn"
        );
        assert_eq!(reads_per_step(1), TURN_READS);
        assert_eq!(reads_per_step(2), TURN_READS / 2);
        assert_eq!(reads_per_step(5), 3);
        assert_eq!(reads_per_step(TURN_READS), 1);
        assert_eq!(reads_per_step(10_000), 1, "never none");
    }

    #[test]
    fn connection_tokens_never_look_like_the_engines_own_and_decode() {
        let wrapped = GENERATION_MASK.wrapping_add(1) & GENERATION_MASK;
        assert_eq!(wrapped, 0, "generations wrap below the top bit");
        for (slot, generation, server) in [
            (0, 0, false),
            (0, GENERATION_MASK, false),
            (7, 3, true),
            (u32::MAX >> 1, GENERATION_MASK, true),
        ] {
            let t = token(slot, generation, server);
            assert_eq!(t & LISTENER, 0, "{t:#x}");
            assert!(![LISTENER, MAILBOX, NUDGE, RESUME_ACCEPT].contains(&t));
            assert_eq!(slot_of(t), slot as usize);
            assert_eq!(t & 1 == 1, server);
            assert_eq!((t >> 32) as u32, generation);
        }
    }
}
