//! One client connection as the balancer tracks it, and the counters the relay updates live.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::{ClientKey, Target};

/// Bytes relayed by one connection, updated by the relay as it goes (one owner writes, the
/// statistics read), so counters are live without taking the balancer lock per chunk. The
/// descriptors and the bytes waiting for a slow reader are what pen's status page shows.
#[derive(Debug)]
pub struct ConnCounters {
    pub to_server: AtomicU64,
    pub to_client: AtomicU64,
    /// The client's socket descriptor (pen's `downfd`); -1 until known.
    client_fd: AtomicI32,
    /// The server's socket descriptor (pen's `upfd`); -1 until connected.
    server_fd: AtomicI32,
    /// Bytes read from the client and not yet taken by the server (pen's `upn`).
    pending_to_server: AtomicU64,
    /// Bytes read from the server and not yet taken by the client (pen's `downn`).
    pending_to_client: AtomicU64,
    /// The shell's kill switch (`close N`, the end of the shutdown grace period); the balancer
    /// never touches it.
    pub abort: Abort,
}

impl Default for ConnCounters {
    fn default() -> Self {
        ConnCounters {
            to_server: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            client_fd: AtomicI32::new(-1),
            server_fd: AtomicI32::new(-1),
            abort: Abort::default(),
            pending_to_server: AtomicU64::new(0),
            pending_to_client: AtomicU64::new(0),
        }
    }
}

/// A kill switch for one connection, fired from the control plane and watched by the
/// connection's own task. The task checks it on every wake-up, so a check takes no lock: the
/// waker is stored once, and again only if the task's waker changes.
#[derive(Debug, Default)]
pub struct Abort {
    fired: AtomicBool,
    /// Fired at the end of the grace period after TERM: the connection ends with a reset, so
    /// neither side can take the cut for a complete transfer (otherwise: `close N`).
    cut: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Abort {
    /// `close N`: end the connection.
    pub fn close(&self) {
        self.fire();
    }

    /// End the connection with resets.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        self.fire();
    }

    /// Whether it was fired by `cut`.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Completes once fired (at once if it already was). Meant to be polled beside the
    /// connection's relay on each of its wake-ups: a poll takes no lock unless the task's waker
    /// changed.
    pub fn fired(&self) -> Fired<'_> {
        Fired {
            abort: self,
            registered: None,
        }
    }
}

/// The future of `Abort::fired`.
pub struct Fired<'a> {
    abort: &'a Abort,
    /// A copy of the waker last stored in `abort`.
    registered: Option<Waker>,
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let abort = self.abort;
        if abort.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        *abort.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
        self.registered = Some(waker);
        // Fired between the first check and the store: `fire` may have found no waker.
        if abort.fired.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl ConnCounters {
    /// Record the connection's descriptors (for the status page; -1 for none).
    pub fn set_fds(&self, client: i32, server: i32) {
        self.client_fd.store(client, Ordering::Relaxed);
        self.server_fd.store(server, Ordering::Relaxed);
    }
    pub fn fds(&self) -> (i32, i32) {
        (
            self.client_fd.load(Ordering::Relaxed),
            self.server_fd.load(Ordering::Relaxed),
        )
    }
    /// Record the bytes the relay holds for each side because it is not reading fast enough.
    pub fn set_pending(&self, to_server: usize, to_client: usize) {
        self.pending_to_server
            .store(to_server as u64, Ordering::Relaxed);
        self.pending_to_client
            .store(to_client as u64, Ordering::Relaxed);
    }
    /// (bytes waiting for the server, bytes waiting for the client)
    pub fn pending(&self) -> (u64, u64) {
        (
            self.pending_to_server.load(Ordering::Relaxed),
            self.pending_to_client.load(Ordering::Relaxed),
        )
    }
    pub fn add_to_server(&self, n: usize) {
        self.to_server.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn add_to_client(&self, n: usize) {
        self.to_client.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn to_server(&self) -> u64 {
        self.to_server.load(Ordering::Relaxed)
    }
    pub fn to_client(&self) -> u64 {
        self.to_client.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Connected,
}

/// A client connection from accept to close.
#[derive(Debug, Clone)]
pub struct Conn {
    pub client: ClientKey,
    pub peer_port: u16,
    /// The first choice (the server failover comes back to last).
    pub initial: Option<Target>,
    /// The server it is connecting or connected to.
    pub target: Option<Target>,
    pub state: ConnState,
    /// Connects tried on regular servers: failover gives each server at most one try per
    /// connection, so a connection ends even when blacklisting is off.
    pub attempts: u32,
    pub counters: Arc<ConnCounters>,
    pub since: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }
    fn woken(count: &Count) -> usize {
        count.0.load(Ordering::Relaxed)
    }

    #[test]
    fn an_abort_wakes_the_last_waker_it_was_polled_with_and_stays_fired() {
        let abort = Abort::default();
        let (first, first_waker) = waker();
        let (second, second_waker) = waker();
        let mut fired = std::pin::pin!(abort.fired());
        let mut cx = Context::from_waker(&first_waker);
        assert!(fired.as_mut().poll(&mut cx).is_pending());
        assert!(fired.as_mut().poll(&mut cx).is_pending());
        // The task's waker changed: the new one must be the one woken.
        let mut cx = Context::from_waker(&second_waker);
        assert!(fired.as_mut().poll(&mut cx).is_pending());
        abort.close();
        assert_eq!((woken(&first), woken(&second)), (0, 1));
        assert!(fired.as_mut().poll(&mut cx).is_ready());
        assert!(std::pin::pin!(abort.fired()).poll(&mut cx).is_ready());
        assert!(!abort.is_cut());
    }

    #[test]
    fn an_abort_fired_before_its_first_poll_is_seen_and_cut_is_told_apart() {
        let abort = Abort::default();
        abort.cut();
        let (count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(std::pin::pin!(abort.fired()).poll(&mut cx).is_ready());
        assert!(abort.is_cut());
        assert_eq!(woken(&count), 0);
    }
}
