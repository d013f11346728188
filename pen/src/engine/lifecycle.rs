//! The life of one connection on the engine after its accept: connect (failing over as the
//! balancer says), the relay, and its end (`close N`, timeouts, the shutdown cut), each step
//! run when epoll, a timer or the mailbox says the connection can move.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use nix::sys::epoll::EpollFlags;
use tracing::{debug, info};

use super::client::Client;
use super::conn::{self, Connecting, Relay, State, Step};
use super::mailbox::token_waker;
use super::opening;
use super::sock;
use super::{edge, slot_of, Engine, RESUME_ACCEPT};
use crate::balancer::Admission;
use crate::net;
use crate::relay::{RelayEnd, Side};
use crate::shared;

impl Engine {
    /// Connect as the balancer says: the next server, or close the client if there is none.
    pub(super) fn connect(&mut self, token: u64, mut admission: Admission, now: Instant) {
        // The connect's last ACK waits for the client's first bytes (`engine::opening`) if
        // this thread's clients speak first, or if this one's bytes are in already. (Under TLS
        // the bytes on the socket need not be a request, and rustls may hold the first.)
        let hold_ack = self.openings.hold()
            || match &self.conn(token).client {
                Client::Plain(sock) => sock.has_input(),
                Client::Handshaking(_) | Client::Tls(_) => false,
            };
        loop {
            let Admission::Connect {
                conn,
                target,
                backend,
            } = admission
            else {
                shared::no_server(self.conn(token).peer);
                return self.close(token);
            };
            let c = self.conn(token);
            c.id = Some(conn);
            let failure = match sock::start_connect(&backend, &c.options, c.peer.ip, hold_ack) {
                Ok(server) => {
                    let server_token = token | 1;
                    if let Err(e) = self.epoll.add(server.socket.as_fd(), edge(server_token)) {
                        debug!("can't register the connection to {backend}: {e}");
                        return self.close(token);
                    }
                    let c = self.conn(token);
                    let deadline = now + c.options.connect_timeout;
                    c.state = State::Connecting(Connecting {
                        conn,
                        target,
                        backend,
                        server,
                        deadline,
                    });
                    self.timers.set(token, deadline);
                    return;
                }
                Err(e) if net::is_local_failure(&e) => {
                    shared::local_failure(&backend, &e, now);
                    return self.close(token);
                }
                Err(e) => e.to_string(),
            };
            admission = self.connect_failed(token, conn, target, &backend, &failure, now);
        }
    }

    /// Blacklist the server and ask the balancer where to go next.
    pub(super) fn connect_failed(
        &mut self,
        token: u64,
        conn: crate::balancer::ConnId,
        target: crate::balancer::Target,
        backend: &crate::addr::Backend,
        failure: &str,
        now: Instant,
    ) -> Admission {
        shared::log_connect_failure(target, backend, failure);
        let admission = self.setup.shared.with(|b| b.connect_failed(conn, now));
        if admission == Admission::Refuse {
            // The balancer already forgot the connection.
            self.conn(token).id = None;
        }
        admission
    }

    pub(super) fn on_event(&mut self, token: u64, flags: EpollFlags, now: Instant) {
        if !self.live(token) {
            return;
        }
        let readable = flags.intersects(EpollFlags::EPOLLIN);
        let writable = flags.intersects(EpollFlags::EPOLLOUT);
        let closed =
            flags.intersects(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
        let error = flags.intersects(EpollFlags::EPOLLERR);
        let server_side = token & 1 == 1;
        let (slots, coalesce) = (&mut self.slots, &mut self.coalesce);
        let c = slots[slot_of(token)]
            .conn
            .as_deref_mut()
            .expect("a live connection's token");
        coalesce.event(&mut c.mark);
        let server = match &mut c.state {
            State::Handshake { .. } | State::Dummy { .. } | State::Choosing => None,
            State::Connecting(connecting) => Some(&mut connecting.server),
            State::Relaying(relay) => Some(&mut relay.server),
        };
        match (server_side, server) {
            (false, _) => {
                if let Some(client) = c.client.sock() {
                    client.ready(readable, writable || error, closed);
                }
            }
            (true, Some(server)) => server.ready(readable, writable || error, closed),
            (true, None) => return,
        }
        if !server_side && error && matches!(c.state, State::Connecting(_)) {
            // The client reset while its server was slow to answer: it is gone for good.
            if let State::Connecting(connecting) = &c.state {
                debug!(
                    "client {:?} reset the connection while pen connected to {}",
                    c.peer, connecting.backend
                );
            }
            return self.close(token);
        }
        self.drive(token & !1, now);
    }

    /// Do what the connection's sockets allow now.
    pub(super) fn drive(&mut self, token: u64, now: Instant) {
        if !self.live(token) {
            return;
        }
        let reqlog = &self.setup.shared.reqlog;
        let reads = self.turn_reads;
        let c = self.slots[slot_of(token)]
            .conn
            .as_deref_mut()
            .expect("checked live");
        match &mut c.state {
            State::Handshake { .. } => self.shake(token, now),
            State::Dummy { .. } => {
                if c.client.dummy_step().is_some() {
                    self.close(token);
                }
            }
            State::Choosing => {}
            State::Connecting(connecting) => {
                if let Some(result) = sock::connect_result(&mut connecting.server) {
                    self.connected(token, result, now);
                }
            }
            State::Relaying(relay) => {
                let step = match &mut c.client {
                    Client::Plain(client) => relay.step(reads, client, reqlog, now),
                    Client::Tls(client) => relay.step(reads, &mut **client, reqlog, now),
                    Client::Handshaking(_) => Step::End(RelayEnd::Error(
                        Side::Client,
                        io::Error::other("relaying before the TLS handshake ended"),
                    )),
                };
                if let Some(opener) = relay.opener() {
                    self.openings.opened_by(opener);
                }
                match step {
                    Step::Wait => {}
                    Step::Again => self.run_again(token),
                    Step::End(end) => self.relay_ended(token, end),
                }
            }
        }
    }

    /// Move a TLS handshake on; once it is over, admit the client (or close it).
    fn shake(&mut self, token: u64, now: Instant) {
        let c = self.conn(token);
        let Client::Handshaking(handshake) = &mut c.client else {
            return;
        };
        let (result, again) = conn::with_context(|cx| Pin::new(&mut **handshake).poll(cx));
        match result {
            Poll::Pending if again => self.run_again(token),
            Poll::Pending => {}
            Poll::Ready(Ok(tls)) => {
                c.client = Client::Tls(Box::new(tls));
                self.admit(token, now);
            }
            Poll::Ready(Err(e)) => {
                debug!(
                    "TLS handshake with {} failed: {e}",
                    shared::describe_peer(c.peer)
                );
                self.close(token);
            }
        }
    }

    /// A connect finished, one way or the other.
    pub(super) fn connected(&mut self, token: u64, result: io::Result<()>, now: Instant) {
        let c = self.conn(token);
        let State::Connecting(connecting) = std::mem::replace(&mut c.state, State::Choosing) else {
            return;
        };
        let Connecting {
            conn,
            target,
            backend,
            server,
            ..
        } = connecting;
        if let Err(e) = result {
            drop(server);
            if net::is_local_failure(&e) {
                // Our descriptors or memory, not the server's fault: no blame, no failover.
                shared::local_failure(&backend, &e, now);
                return self.close(token);
            }
            let admission = self.connect_failed(token, conn, target, &backend, &e.to_string(), now);
            return self.connect(token, admission, now);
        }
        let counters = self.setup.shared.with(|b| {
            b.connected(conn);
            b.conn(conn).map(|c| c.counters.clone())
        });
        let Some(counters) = counters else {
            return self.close(token);
        };
        // `close N` and the end of the grace period post this connection's token.
        let abort_waker = token_waker(self.setup.mailbox(), token);
        let c = self.conn(token);
        {
            use std::os::fd::AsRawFd;
            let client_fd = c.client.sock().map_or(-1, |s| s.socket.as_raw_fd());
            counters.set_fds(client_fd, server.socket.as_raw_fd());
        }
        let fired = {
            let mut cx = Context::from_waker(&abort_waker);
            std::pin::pin!(counters.abort.fired())
                .poll(&mut cx)
                .is_ready()
        };
        let tls = c.client.is_tls();
        let relay = Relay::new(
            conn, server, counters, &c.options, &backend, c.peer, tls, now,
        );
        if relay.idle.is_zero() {
            self.timers.clear(token);
        } else {
            self.timers.set(token, now + relay.idle);
        }
        let c = self.conn(token);
        c.state = State::Relaying(relay);
        if fired {
            return self.on_abort(token);
        }
        self.drive(token, now);
        self.time_held_ack(token, now);
    }

    /// The connect held its last ACK for the client's first bytes and they are not in yet: send
    /// it on its own at `opening::HOLD` (by the relay's timer), in case the server speaks first.
    fn time_held_ack(&mut self, token: u64, now: Instant) {
        if !self.live(token) {
            return;
        }
        let State::Relaying(relay) = &self.conn(token).state else {
            return;
        };
        if relay.server.ack_held() {
            let mut at = now + opening::HOLD;
            if !relay.idle.is_zero() {
                at = at.min(relay.last_activity + relay.idle);
            }
            self.timers.set(token, at);
        }
    }

    pub(super) fn relay_ended(&mut self, token: u64, end: RelayEnd) {
        let c = self.conn(token);
        let State::Relaying(relay) = &c.state else {
            return;
        };
        match end {
            RelayEnd::Error(side, e) => {
                debug!("connection {}: {side:?} error: {e}", relay.conn.0);
                // A socket that failed (a reset, a keepalive timeout) ends the other side with
                // a reset too: a FIN would make a cut transfer look complete. (An `-H` refusal
                // is no socket error: that ends in FINs.)
                if e.raw_os_error().is_some() {
                    match side {
                        Side::Server => c.client.reset_on_close(),
                        Side::Client => relay.server.reset_on_close(),
                    }
                }
            }
            end => {
                debug!("connection {}: {end:?}", relay.conn.0);
                c.client.notify_close();
            }
        }
        self.close(token);
    }

    /// `close N`, or the end of the shutdown grace period.
    pub(super) fn on_abort(&mut self, token: u64) {
        if !self.live(token) {
            return;
        }
        let c = self.conn(token);
        let State::Relaying(relay) = &c.state else {
            return;
        };
        if relay.counters.abort.is_cut() {
            info!(
                "connection {}: reset, the shutdown grace period is over",
                relay.conn.0
            );
            c.client.reset_on_close();
            relay.server.reset_on_close();
        } else {
            info!("connection {}: closed by the control port", relay.conn.0);
        }
        self.close(token);
    }

    pub(super) fn run_timers(&mut self, now: Instant) {
        while let Some(token) = self.timers.pop_due(now) {
            if token == RESUME_ACCEPT {
                self.accept_paused_until = None;
                continue;
            }
            self.contain(token, |e| e.on_timer(token, now));
        }
    }

    /// This connection's deadline has come (each is still checked against now and its state).
    pub(super) fn on_timer(&mut self, token: u64, now: Instant) {
        if !self.live(token) {
            return;
        }
        let c = self.conn(token);
        match &mut c.state {
            State::Dummy { deadline } if now >= *deadline => self.close(token),
            State::Handshake { deadline, timeout } if now >= *deadline => {
                debug!(
                    "TLS handshake with {} failed: no handshake within {timeout:?}",
                    shared::describe_peer(c.peer)
                );
                self.close(token);
            }
            State::Handshake { .. } | State::Dummy { .. } | State::Choosing => {}
            State::Connecting(connecting) if now >= connecting.deadline => {
                let (conn, target, backend) = (
                    connecting.conn,
                    connecting.target,
                    connecting.backend.clone(),
                );
                c.state = State::Choosing;
                let admission =
                    self.connect_failed(token, conn, target, &backend, "connect timeout", now);
                self.connect(token, admission, now);
            }
            State::Connecting(_) => {}
            State::Relaying(relay) => {
                // `opening::HOLD` is over (`time_held_ack`), or an idle deadline that is later.
                relay.server.release_ack();
                if relay.idle.is_zero() {
                    return;
                }
                let due = relay.last_activity + relay.idle;
                if now >= due {
                    self.relay_ended(token, RelayEnd::Idle);
                } else {
                    self.timers.set(token, due);
                }
            }
        }
    }
}
