//! How other threads wake an engine: the main thread when the phase or the listener changes,
//! the `-x` semaphore when a slot frees up, `close N` and the shutdown cut for one connection,
//! and another engine that hands it a client to serve (`spread`).

use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use nix::sys::eventfd::{EfdFlags, EventFd};
use socket2::Socket;
use tokio::sync::OwnedSemaphorePermit;

use crate::balancer::Peer;

/// Posted to the mailbox when something other than a connection needs a look.
pub(super) const NUDGE: u64 = (1 << 63) | 2;

/// How other threads wake an engine: tokens and clients posted to lists, and an eventfd in its
/// epoll set.
pub struct Mailbox {
    pub(super) event: EventFd,
    posted: Mutex<Posted>,
}

/// What was posted since the engine last looked.
#[derive(Default)]
pub(super) struct Posted {
    pub tokens: Vec<u64>,
    pub clients: Vec<Handed>,
}

/// A client another engine accepted, with its `-x` slot, for this one to serve.
pub(super) struct Handed {
    pub socket: Socket,
    pub peer: Peer,
    pub permit: OwnedSemaphorePermit,
}

impl Mailbox {
    pub fn new() -> io::Result<Arc<Mailbox>> {
        let event =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Arc::new(Mailbox {
            event,
            posted: Mutex::new(Posted::default()),
        }))
    }

    pub(super) fn post(&self, token: u64) {
        self.add(|posted| posted.tokens.push(token));
    }

    /// Give the engine a client to serve.
    pub(super) fn hand(&self, client: Handed) {
        self.add(|posted| posted.clients.push(client));
    }

    fn add(&self, f: impl FnOnce(&mut Posted)) {
        let first = {
            let mut posted = self.posted.lock().unwrap_or_else(|e| e.into_inner());
            let first = posted.tokens.is_empty() && posted.clients.is_empty();
            f(&mut posted);
            first
        };
        // One eventfd write per batch: the loop takes both whole lists when it wakes.
        if first {
            let _ = self.event.write(1);
        }
    }

    /// Have the engine look at its phase, its listener and the `-x` slots.
    pub fn nudge(&self) {
        self.post(NUDGE);
    }

    pub(super) fn take(&self) -> Posted {
        let _ = self.event.read();
        std::mem::take(&mut *self.posted.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A waker that posts one token.
struct TokenWaker {
    mailbox: Arc<Mailbox>,
    token: u64,
}

impl Wake for TokenWaker {
    fn wake(self: Arc<Self>) {
        self.mailbox.post(self.token);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.mailbox.post(self.token);
    }
}

pub(super) fn token_waker(mailbox: &Arc<Mailbox>, token: u64) -> Waker {
    Waker::from(Arc::new(TokenWaker {
        mailbox: mailbox.clone(),
        token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mailbox_keeps_every_token_and_signals_once_per_batch() {
        let mailbox = Mailbox::new().unwrap();
        let waker = token_waker(&mailbox, 42);
        mailbox.post(5);
        waker.wake_by_ref();
        mailbox.nudge();
        assert_eq!(mailbox.take().tokens, [5, 42, NUDGE]);
        // take() consumed the one signal the batch made.
        assert!(mailbox.event.read().is_err(), "nothing left to read");
        waker.wake();
        assert_eq!(mailbox.event.read().unwrap(), 1);
        assert_eq!(mailbox.take().tokens, [42]);
    }

    #[test]
    fn a_handed_client_arrives_with_its_slot_in_the_same_batch_as_tokens() {
        let mailbox = Mailbox::new().unwrap();
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, addr) = listener.accept().unwrap();
        let peer = Peer {
            ip: Some(addr.ip()),
            port: addr.port(),
        };
        mailbox.hand(Handed {
            socket: socket.into(),
            peer,
            permit: slots.clone().try_acquire_owned().unwrap(),
        });
        mailbox.post(7);
        assert_eq!(mailbox.event.read().unwrap(), 1, "one signal for both");
        let posted = mailbox.take();
        assert_eq!(posted.tokens, [7]);
        assert_eq!(posted.clients.len(), 1);
        assert_eq!(posted.clients[0].peer, peer);
        assert_eq!(
            slots.available_permits(),
            0,
            "the slot travels with the client"
        );
        drop(posted);
        assert_eq!(slots.available_permits(), 1);
        assert!(mailbox.take().clients.is_empty());
    }
}
