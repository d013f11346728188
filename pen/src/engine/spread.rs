//! Which data-plane thread serves a new client.
//!
//! Every thread waits on the one listening socket, registered with EPOLLEXCLUSIVE: for a new
//! client the kernel wakes one thread that is asleep in `epoll_wait` (the first registered, if
//! it is), and a thread that is running finds the client at its next wait. So a client goes to a
//! thread that is free to take it now, and no thread is woken for a client that a running one
//! takes anyway. With an SO_REUSEPORT group instead (one socket per thread, the kernel choosing
//! by a hash of the addresses), a client waited for its own thread even while the other was
//! idle, and that thread was woken for it. Measured on the benchmark's `http-close` load with
//! clients, servers and pen sharing two cores, the free thread taking the client was worth
//! 5–8 % more connections per second.
//!
//! Left to that alone, the spread of connections follows which thread was free at each
//! arrival. Connections that stay (a keep-alive load opening all its connections at once) can
//! land mostly on one thread and stay there: measured, 100 of them split 209 : 58 in CPU between
//! two threads in one run of five, which cost that run a fifth of its requests. So the thread
//! that accepts a client hands it to the least loaded thread when that one has clearly fewer
//! connections (`SLACK`, `SLACK_SHARE`), through its mailbox; most clients never move.
//!
//! The policy (`pick`) is pure; `Loads` is the one count per thread that all of them read;
//! `Engine::place` and `Engine::take_client` are the engine's side.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use socket2::Socket;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use super::mailbox::Handed;
use super::Engine;
use crate::balancer::Peer;
use crate::shared;

/// A thread keeps a client unless another has more than this many fewer connections…
pub(super) const SLACK: usize = 2;
/// …plus this share of that other thread's own.
pub(super) const SLACK_SHARE: usize = 8;

/// The thread to serve a client that thread `own` accepted, given each thread's connections.
pub(super) fn pick(own: usize, threads: usize, load: impl Fn(usize) -> usize) -> usize {
    if threads <= 1 {
        return own;
    }
    let (least, min) = (0..threads)
        .map(|i| (i, load(i)))
        .min_by_key(|&(_, n)| n)
        .unwrap_or((own, 0));
    if load(own) > min + SLACK + min / SLACK_SHARE {
        least
    } else {
        own
    }
}

/// Each data-plane thread's connections: open ones, and clients handed to it that it has not
/// taken yet. Counted by whoever gives the thread a client, uncounted by the thread when the
/// client goes.
pub struct Loads(Box<[Count]>);

/// One thread's count, on a cache line of its own: each changes with every connection.
#[derive(Default)]
#[repr(align(64))]
struct Count(AtomicUsize);

impl Loads {
    pub fn new(threads: usize) -> Loads {
        Loads((0..threads.max(1)).map(|_| Count::default()).collect())
    }

    pub(super) fn add(&self, thread: usize) {
        self.0[thread].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn remove(&self, thread: usize) {
        self.0[thread].0.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn get(&self, thread: usize) -> usize {
        self.0[thread].0.load(Ordering::Relaxed)
    }

    /// `pick` over the counts as they are now.
    pub(super) fn pick(&self, own: usize) -> usize {
        pick(own, self.0.len(), |i| self.get(i))
    }
}

impl Engine {
    /// A client this thread accepted: serve it here, or hand it to a thread with clearly fewer
    /// connections (`spread`).
    pub(super) fn place(
        &mut self,
        socket: Socket,
        peer: Peer,
        permit: OwnedSemaphorePermit,
        now: Instant,
    ) {
        let own = self.setup.index;
        let to = self.setup.loads.pick(own);
        self.setup.loads.add(to);
        let client = Handed {
            socket,
            peer,
            permit,
        };
        if to == own {
            self.take_client(client, now);
        } else {
            debug!(
                "{}: handed to data-plane thread {to}, which has fewer connections",
                shared::describe_peer(peer)
            );
            self.setup.peers[to].hand(client);
        }
    }

    /// Serve a client counted in this thread's load; uncount it if it never got a slot.
    pub(super) fn take_client(&mut self, client: Handed, now: Instant) {
        if !self.start(client.socket, client.peer, client.permit, now) {
            self.setup.loads.remove(self.setup.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick_of(own: usize, loads: &[usize]) -> usize {
        pick(own, loads.len(), |i| loads[i])
    }

    #[test]
    fn a_thread_keeps_its_client_unless_another_has_clearly_fewer() {
        assert_eq!(pick_of(0, &[500]), 0, "one thread keeps everything");
        assert_eq!(pick_of(0, &[0, 0]), 0);
        assert_eq!(pick_of(1, &[0, 2]), 1, "within SLACK");
        assert_eq!(pick_of(1, &[0, 3]), 0, "past SLACK");
        // SLACK_SHARE: 40 + 2 + 40/8 = 47.
        assert_eq!(pick_of(0, &[47, 40]), 0);
        assert_eq!(pick_of(0, &[48, 40]), 1);
        // The least loaded of several, the first of equals.
        assert_eq!(pick_of(2, &[9, 4, 20, 4]), 1);
        assert_eq!(
            pick_of(1, &[9, 4, 20, 4]),
            1,
            "the least loaded keeps its own"
        );
    }

    #[test]
    fn a_burst_accepted_by_one_thread_ends_up_spread() {
        // 100 clients arriving while thread 0 alone is free to accept them (a keep-alive load
        // connecting at once), each counted where it goes.
        for threads in [2, 3, 4] {
            let loads = Loads::new(threads);
            for _ in 0..100 {
                let to = loads.pick(0);
                loads.add(to);
            }
            let counts: Vec<usize> = (0..threads).map(|i| loads.get(i)).collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert_eq!(counts.iter().sum::<usize>(), 100);
            assert!(
                max - min <= SLACK + 1 + min / SLACK_SHARE,
                "{threads} threads: {counts:?}"
            );
        }
    }

    #[test]
    fn counts_go_down_as_connections_end() {
        let loads = Loads::new(2);
        loads.add(1);
        loads.add(1);
        loads.remove(1);
        assert_eq!((loads.get(0), loads.get(1)), (0, 1));
        assert_eq!(Loads::new(0).get(0), 0, "never an empty table");
    }
}
