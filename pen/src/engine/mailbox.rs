//! How other threads wake an engine: the main thread when the phase or the listener changes,
//! the `-x` semaphore when a slot frees up, `close N` and the shutdown cut for one connection.

use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// Posted to the mailbox when something other than a connection needs a look.
pub(super) const NUDGE: u64 = (1 << 63) | 2;

/// How other threads wake an engine: tokens posted to a list, and an eventfd in its epoll set.
pub struct Mailbox {
    pub(super) event: EventFd,
    posted: Mutex<Vec<u64>>,
}

impl Mailbox {
    pub fn new() -> io::Result<Arc<Mailbox>> {
        let event =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Arc::new(Mailbox {
            event,
            posted: Mutex::new(Vec::new()),
        }))
    }

    pub(super) fn post(&self, token: u64) {
        let first = {
            let mut posted = self.posted.lock().unwrap_or_else(|e| e.into_inner());
            posted.push(token);
            posted.len() == 1
        };
        // One eventfd write per batch: the loop takes the whole list when it wakes.
        if first {
            let _ = self.event.write(1);
        }
    }

    /// Have the engine look at its phase, its listener and the `-x` slots.
    pub fn nudge(&self) {
        self.post(NUDGE);
    }

    pub(super) fn take(&self) -> Vec<u64> {
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
        assert_eq!(mailbox.take(), [5, 42, NUDGE]);
        // take() consumed the one signal the batch made.
        assert!(mailbox.event.read().is_err(), "nothing left to read");
        waker.wake();
        assert_eq!(mailbox.event.read().unwrap(), 1);
        assert_eq!(mailbox.take(), [42]);
    }
}
