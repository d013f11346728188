//! Sockets of ended sessions, kept for new sessions. Opening a socket, registering it with
//! epoll and closing it again is most of what a one-query session costs (a DNS client that
//! picks a new source port per query makes every query one); a kept socket costs a disconnect
//! and a connect instead.
//!
//! Reuse is as safe as closing: `socket::disconnect` makes the kernel release the old port, so
//! a late reply to it finds no socket (and its sender gets the ICMP error a closed socket would
//! have caused), drops what had already arrived, and the next `connect` picks a new port. A
//! kept socket stays registered with epoll under its old token, with nothing to read.

use std::io;
use std::net::UdpSocket;

use super::socket::disconnect;

/// At most this many sockets are kept: enough for a sweep that ends many sessions at once to
/// feed the sessions that follow, few enough that an idle pen holds few descriptors.
pub const SPARES_MAX: usize = 256;

/// A kept socket and the epoll token it is registered under.
pub struct Spare {
    pub token: usize,
    pub socket: UdpSocket,
}

/// Kept sockets, by address family (a socket can only connect to servers of its own).
#[derive(Default)]
pub struct Spares {
    v4: Vec<Spare>,
    v6: Vec<Spare>,
}

impl Spares {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Keep an IPv4 (or, with `v6`, IPv6) session's socket for a later session. Ok with the
    /// number of datagrams that had arrived for the old session and were dropped; the socket is
    /// handed back (to be closed) when there is no room or it cannot be disconnected.
    pub fn keep(&mut self, spare: Spare, v6: bool) -> Result<u64, (Spare, Option<io::Error>)> {
        if self.len() >= SPARES_MAX {
            return Err((spare, None));
        }
        match disconnect(&spare.socket) {
            Ok(dropped) => {
                if v6 { &mut self.v6 } else { &mut self.v4 }.push(spare);
                Ok(dropped)
            }
            Err(e) => Err((spare, Some(e))),
        }
    }

    /// A kept socket of the family, if any.
    pub fn take(&mut self, v6: bool) -> Option<Spare> {
        if v6 { &mut self.v6 } else { &mut self.v4 }.pop()
    }

    /// Give up every kept socket (closing them frees their descriptors); their tokens.
    pub fn clear(&mut self) -> Vec<usize> {
        self.v4
            .drain(..)
            .chain(self.v6.drain(..))
            .map(|s| s.token)
            .collect()
    }
}
