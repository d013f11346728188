//! Sessions begin and end: opening one where the balancer places it (on a kept socket when
//! there is one), moving it when its server refuses a datagram, and ending it (its socket kept
//! for a later session, or closed).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use nix::sys::epoll::{EpollEvent, EpollFlags};
use tracing::{debug, info, warn};

use super::session::{Placed, Session};
use super::socket::{connect_upstream, LocalDst};
use super::spares::Spare;
use super::{End, Plane, LOCAL_FAILURE_LOG, STATS};
use crate::addr::Backend;
use crate::balancer::{Admission, Peer};
use crate::net;
use crate::shared::describe;

impl Plane {
    /// A new session for `client`, placed by the balancer; None if no server takes it.
    pub(super) fn open(
        &mut self,
        client: SocketAddr,
        local: Option<LocalDst>,
        now: Instant,
    ) -> Option<usize> {
        // Make room first, so that the new socket has a descriptor.
        if self.table.len() >= self.table.capacity() {
            self.recycle_one();
        }
        let peer = Peer {
            ip: Some(client.ip().to_canonical()),
            port: client.port(),
        };
        let admission = self.shared.with(|b| b.admit(peer, now));
        if admission == Admission::ClientLimit {
            crate::shared::client_limit_reached(&self.shared, peer);
            return None;
        }
        let placed = self.place(admission, now, true)?;
        let token = match placed.token {
            Some(token) => token,
            None => {
                let token = self.free.pop().unwrap_or(self.slots.len());
                let registered = self.epoll.add(
                    &placed.socket,
                    EpollEvent::new(EpollFlags::EPOLLIN, token as u64),
                );
                if let Err(e) = registered {
                    if LOCAL_FAILURE_LOG.allow(Instant::now()) {
                        warn!("udp: can't watch a new socket: {e}");
                    }
                    self.shared.with(|b| b.closed(placed.conn));
                    if token < self.slots.len() {
                        self.free.push(token);
                    }
                    return None;
                }
                token
            }
        };
        debug!(
            "udp: session {client} -> {} ({})",
            describe(placed.target),
            placed.backend
        );
        let seen = self.refusals.get(&placed.target).copied().unwrap_or(0);
        let session = Session::new(client, local, placed, seen, now);
        if token == self.slots.len() {
            self.slots.push(Some(session));
        } else {
            self.slots[token] = Some(session);
        }
        if let Some((_, old)) = self.table.insert(client, token, now) {
            self.finish(old, End::Recycled);
        }
        STATS.sessions.fetch_add(1, Ordering::Relaxed);
        STATS.live.fetch_add(1, Ordering::Relaxed);
        Some(token)
    }

    pub(super) fn recycle_one(&mut self) {
        if let Some((_, token)) = self.table.pop_lru() {
            self.finish(token, End::Recycled);
        }
    }

    /// Connect a socket to the backend the balancer chose, failing over as it says: a kept one
    /// when `reuse` and one of the family is kept, else a new one. None when no server is left
    /// (the balancer then no longer holds the connection slot).
    fn place(&mut self, mut admission: Admission, now: Instant, reuse: bool) -> Option<Placed> {
        loop {
            let Admission::Connect {
                conn,
                target,
                backend,
            } = admission
            else {
                return None;
            };
            let Backend::Tcp(addr) = backend else {
                // The command line refuses Unix-socket servers with -U; a server set to one
                // later cannot take datagrams.
                admission = self.shared.with(|b| b.connect_failed(conn, now));
                continue;
            };
            match self.upstream_socket(addr, reuse) {
                Ok((socket, token)) => {
                    let counters = self.shared.with(|b| {
                        b.connected(conn);
                        b.conn(conn).map(|c| c.counters.clone())
                    });
                    return Some(Placed {
                        conn,
                        target,
                        backend: addr,
                        socket,
                        counters: counters.unwrap_or_default(),
                        token,
                    });
                }
                Err(e) if net::is_local_failure(&e) => {
                    if LOCAL_FAILURE_LOG.allow(Instant::now()) {
                        warn!("udp: can't open a socket to {addr}: {e}; recycling a session");
                    }
                    self.shared.with(|b| b.closed(conn));
                    // Free descriptors: the kept sockets (of the other family, or none would
                    // have been needed), and a session's.
                    let tokens = self.spares.clear();
                    self.free.extend(tokens);
                    self.recycle_one();
                    return None;
                }
                Err(e) => {
                    info!(
                        "udp: {} ({addr}) failed: {e}; blacklisting it",
                        describe(target)
                    );
                    admission = self.shared.with(|b| b.connect_failed(conn, now));
                }
            }
        }
    }

    /// The server of a session refused a datagram (ICMP unreachable): blacklist it, move the
    /// session to the next server and send its last datagram again there, or end the session
    /// when no server is left.
    pub(super) fn fail_over(&mut self, token: usize, error: &io::Error, now: Instant) {
        let Some(session) = self.session(token) else {
            return;
        };
        let (target, backend, conn) = (session.target, session.backend, session.conn);
        info!(
            "udp: {} ({backend}) refused a datagram: {error}; blacklisting it",
            describe(target)
        );
        *self.refusals.entry(target).or_default() += 1;
        STATS.failed_over.fetch_add(1, Ordering::Relaxed);
        let admission = self.shared.with(|b| b.connect_failed(conn, now));
        // A fresh socket: the session keeps its token, which a kept socket is not registered
        // under.
        let placed = self.place(admission, now, false);
        let Some(placed) = placed else {
            // The balancer has already let go of the connection slot.
            if let Some(session) = self.session(token) {
                session.released = true;
            }
            self.end(token, End::NoServer);
            return;
        };
        let registered = self.epoll.add(
            &placed.socket,
            EpollEvent::new(EpollFlags::EPOLLIN, token as u64),
        );
        let seen = self.refusals.get(&placed.target).copied().unwrap_or(0);
        let Some(session) = self.session(token) else {
            return;
        };
        debug!(
            "udp: session {} moved to {} ({})",
            session.client,
            describe(placed.target),
            placed.backend
        );
        // The old socket closes here, which takes it out of the epoll set.
        session.move_to(placed, seen);
        if registered.is_err() {
            self.end(token, End::NoServer);
            return;
        }
        if let Some(data) = session.kept() {
            match session.socket.send(data) {
                Ok(n) => {
                    session.counters.add_to_server(n);
                    STATS.to_servers.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    STATS.dropped.fetch_add(1, Ordering::Relaxed);
                    debug!("udp: datagram from {} dropped: {e}", session.client);
                }
            }
        }
    }

    /// End a session that may still be in the table.
    pub(super) fn end(&mut self, token: usize, why: End) {
        let client = self.session(token).map(|s| s.client);
        if let Some(client) = client {
            if self.table.peek(&client) == Some(&token) {
                self.table.remove(&client);
            }
        }
        self.finish(token, why);
    }

    /// End a session already out of the table: release its connection slot, and keep its
    /// socket for a later session (`spares`) or close it (which also takes it out of the epoll
    /// set).
    pub(super) fn finish(&mut self, token: usize, why: End) {
        let Some(session) = self.slots.get_mut(token).and_then(Option::take) else {
            return; // ended already
        };
        if !session.released {
            self.shared.with(|b| b.closed(session.conn));
        }
        STATS.live.fetch_sub(1, Ordering::Relaxed);
        match why {
            End::Idle => STATS.expired.fetch_add(1, Ordering::Relaxed),
            End::Recycled => STATS.recycled.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        debug!("udp: session {} ended ({why:?})", session.client);
        // Kept sockets and sessions together stay within the descriptors the table was sized
        // for.
        let room = self.table.len() + self.spares.len() < self.table.capacity();
        let spare = Spare {
            token,
            socket: session.socket,
        };
        if why == End::Shutdown || !room {
            self.free.push(token);
            return;
        }
        match self.spares.keep(spare, session.backend.is_ipv6()) {
            // Replies that came for the old session and were never read: not delivered.
            Ok(dropped) => {
                STATS.dropped.fetch_add(dropped, Ordering::Relaxed);
            }
            Err((spare, error)) => {
                if let Some(e) = error {
                    debug!("udp: can't keep a session's socket: {e}");
                }
                drop(spare.socket);
                self.free.push(spare.token);
            }
        }
    }

    /// A socket connected to `server`: a kept one if `reuse` allows and one of its family is
    /// kept (with the token it is registered under), else a new one.
    fn upstream_socket(
        &mut self,
        server: SocketAddr,
        reuse: bool,
    ) -> io::Result<(std::net::UdpSocket, Option<usize>)> {
        if let Some(spare) = reuse.then(|| self.spares.take(server.is_ipv6())).flatten() {
            return match spare.socket.connect(server) {
                Ok(()) => Ok((spare.socket, Some(spare.token))),
                Err(e) => {
                    drop(spare.socket);
                    self.free.push(spare.token);
                    Err(e)
                }
            };
        }
        connect_upstream(server).map(|socket| (socket, None))
    }
}
