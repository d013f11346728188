//! `coalesce`: when a data-plane loop has many connections in play, it naps briefly before
//! waiting for events, instead of sleeping in `epoll_wait` until the first one arrives. It is
//! the loop's version of a network card's adaptive interrupt coalescing.
//!
//! Why: a loop asleep in `epoll_wait` is woken by whoever makes a socket ready, and that
//! wake-up is paid for on that sender's core: a client or server on the same machine, or the
//! core that takes the network card's interrupts. In a virtual machine, each one is an
//! interrupt through the hypervisor. A loop that naps is not waiting on its sockets, so the
//! bytes that arrive meanwhile only queue. After the nap, one `epoll_wait` that does not sleep
//! takes them all at once. On the benchmark's keep-alive load (100 connections, balancer on a
//! core of its own), this woke pen about a sixth as often per request. Its clients and servers,
//! on the other core, then served about 10 % more requests. pen also used about 10 % less CPU
//! per request, because each turn handled more events.
//!
//! What it costs: an event that arrives during a nap waits for the nap's end. The nap is
//! therefore kept to a small share of the time the loop's connections themselves take between
//! two events (`SHARE`), and none is taken unless `MIN_ACTIVE` connections had events in the
//! last `EPOCH`. A client alone, or a few of them, never waits. Neither does a connection that
//! is the only one talking while thousands sit idle: the count is of connections with events,
//! not of open ones.
//!
//! New connections wait for the loop more than old ones: a connection's first events are a
//! chain (accepted and connected, the request forwarded, the reply forwarded) and the client and
//! server behind it can do nothing until each link is done. With a new connection per request
//! (the benchmark's `http-close`, balancer on a core of its own), full naps left the other core
//! idle 6 % of the time, against under 1 % without naps. So the nap is cut by the share of new
//! connections among the active ones (to about 40 µs there from 100): the other core idled
//! about 3 % of the time, its CPU per connection stayed lower than without naps, and
//! connections per second rose by about 7 %.
//!
//! Pure: time is passed in. The engine tells it of each event and each wait, and asks it for
//! the nap.

use std::time::{Duration, Instant};

/// How often the load is measured: the nap for the next epoch comes from this one's events.
pub(super) const EPOCH: Duration = Duration::from_millis(5);
/// Fewer connections with events in an epoch than this: no nap. With a few connections,
/// each of them waits for the loop, and a nap takes from their throughput (measured: naps of
/// a quarter of their gap cost 8 keep-alive connections 16–23 % and 16 of them 2–7 %).
pub(super) const MIN_ACTIVE: u64 = 32;
/// The nap is this fraction of a connection's mean time between two of its events.
pub(super) const SHARE: u64 = 8;
/// Shorter naps than this are not taken: the timer costs more than they save.
pub(super) const MIN_NAP: Duration = Duration::from_micros(10);
/// Naps in a row that found nothing, after which the loop sleeps until an event.
pub(super) const EMPTY_NAPS: u32 = 1;

/// One loop's measure of its load, and the nap it gives.
#[derive(Debug)]
pub(super) struct Coalesce {
    epoch_start: Instant,
    /// The current epoch's mark: a connection whose mark differs has not had an event in it yet.
    mark: u32,
    events: u64,
    active: u64,
    /// Connections opened in this epoch.
    opened: u64,
    /// The nap this epoch's load allows (before `max` and the next timer).
    nap: Duration,
    empty_naps: u32,
}

impl Coalesce {
    pub fn new(now: Instant) -> Self {
        Coalesce {
            epoch_start: now,
            // Connections start with mark 0, so 1 counts each one's first event.
            mark: 1,
            events: 0,
            active: 0,
            opened: 0,
            nap: Duration::ZERO,
            empty_naps: 0,
        }
    }

    /// An event for a connection, whose mark (`Conn::mark`) is updated.
    pub fn event(&mut self, conn_mark: &mut u32) {
        self.events += 1;
        if *conn_mark != self.mark {
            *conn_mark = self.mark;
            self.active += 1;
        }
    }

    /// A connection was opened (a client accepted).
    pub fn opened(&mut self) {
        self.opened += 1;
    }

    /// A wait ended at `now` having found `found` events; `napped` if it followed a nap.
    /// `max` is the `coalesce` setting: the longest nap, zero for none.
    pub fn waited(&mut self, found: usize, napped: bool, now: Instant, max: Duration) {
        if found > 0 {
            self.empty_naps = 0;
        } else if napped {
            self.empty_naps += 1;
        }
        let length = now.saturating_duration_since(self.epoch_start);
        if length < EPOCH {
            return;
        }
        self.nap = if length > 2 * EPOCH || self.active < MIN_ACTIVE || self.events == 0 {
            // A pause in the traffic (the epoch only ends on a wake-up), or too few
            // connections to share a nap.
            Duration::ZERO
        } else {
            // Mean time between two events of one connection, as a share.
            let gap = length.as_micros() as u64 * self.active / self.events;
            let nap = (gap / SHARE).min(max.as_micros() as u64);
            // A new connection's first events are a chain of round trips (accepted, connected,
            // the request forwarded, the reply), each of which a nap delays, while the clients
            // and servers behind the chain wait with nothing else to do. So the nap is cut by
            // the share of new connections among the active ones.
            let steady = self.active.saturating_sub(self.opened);
            let nap = Duration::from_micros(nap * steady / self.active);
            if nap < MIN_NAP {
                Duration::ZERO
            } else {
                nap
            }
        };
        self.epoch_start = now;
        self.mark = self.mark.wrapping_add(1).max(1);
        self.events = 0;
        self.active = 0;
        self.opened = 0;
    }

    /// How long to nap before a wait that would otherwise sleep up to `wait`, or None to
    /// sleep in `epoll_wait`.
    pub fn nap(&self, wait: Duration, max: Duration) -> Option<Duration> {
        let nap = self.nap.min(max);
        (!nap.is_zero() && nap <= wait && self.empty_naps < EMPTY_NAPS).then_some(nap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(100);
    const LONG: Duration = Duration::from_secs(60);

    /// One epoch of `conns` connections with `each` events apiece, ended by a wait at its end.
    fn epoch(
        c: &mut Coalesce,
        start: Instant,
        conns: usize,
        each: usize,
        max: Duration,
    ) -> Instant {
        let mut marks = vec![0u32; conns];
        for _ in 0..each {
            for mark in &mut marks {
                c.event(mark);
            }
        }
        let end = start + EPOCH;
        c.waited(1, false, end, max);
        end
    }

    #[test]
    fn no_nap_until_an_epoch_has_been_measured() {
        let now = Instant::now();
        let mut c = Coalesce::new(now);
        assert_eq!(c.nap(LONG, MAX), None);
        let mut mark = 0;
        for _ in 0..1000 {
            c.event(&mut mark);
        }
        c.waited(1, false, now + EPOCH / 2, MAX);
        assert_eq!(c.nap(LONG, MAX), None, "the epoch is not over");
    }

    #[test]
    fn many_busy_connections_nap_a_share_of_their_gap_up_to_the_setting() {
        let now = Instant::now();
        let mut c = Coalesce::new(now);
        // 100 connections, 5 events each in 5 ms: one event per connection every 1,000 µs.
        let at = epoch(&mut c, now, 100, 5, MAX);
        assert_eq!(
            c.nap(LONG, MAX),
            Some(MAX),
            "1,000 / 8 = 125 µs, held to 100"
        );
        assert_eq!(
            c.nap(LONG, Duration::from_micros(1000)),
            Some(Duration::from_micros(100)),
            "the nap was measured against the setting of its epoch"
        );
        // The same load measured against a larger setting.
        epoch(&mut c, at, 100, 5, Duration::from_micros(1000));
        assert_eq!(
            c.nap(LONG, Duration::from_micros(1000)),
            Some(Duration::from_micros(125))
        );
        // 40 connections, 25 events each: 200 µs between a connection's events, a 25 µs nap.
        epoch(&mut c, at + EPOCH, 40, 25, MAX);
        assert_eq!(c.nap(LONG, MAX), Some(Duration::from_micros(25)));
    }

    #[test]
    fn few_connections_never_nap_however_busy() {
        let now = Instant::now();
        let mut c = Coalesce::new(now);
        // One client, or 31, each with many events: they wait for the loop, so no nap.
        let at = epoch(&mut c, now, 1, 500, MAX);
        assert_eq!(c.nap(LONG, MAX), None);
        epoch(&mut c, at, (MIN_ACTIVE - 1) as usize, 2, MAX);
        assert_eq!(c.nap(LONG, MAX), None);
    }

    #[test]
    fn each_connection_counts_once_per_epoch() {
        let now = Instant::now();
        let mut c = Coalesce::new(now);
        // 32 connections with 100 events each, then the same connections in the next epoch.
        let mut marks = vec![0u32; 32];
        for _ in 0..100 {
            for mark in &mut marks {
                c.event(mark);
            }
        }
        c.waited(1, false, now + EPOCH, MAX);
        // 5,000 µs × 32 / 3,200 = 50 µs between events: a 6 µs nap is too short to take.
        assert_eq!(c.nap(LONG, MAX), None);
        for _ in 0..5 {
            for mark in &mut marks {
                c.event(mark);
            }
        }
        c.waited(1, false, now + 2 * EPOCH, MAX);
        // Counted again in the new epoch: 32 connections, 160 events, 1,000 µs apart.
        assert_eq!(c.nap(LONG, MAX), Some(MAX));
    }

    #[test]
    fn new_connections_cut_the_nap_by_their_share_of_the_active_ones() {
        let now = Instant::now();
        let mut c = Coalesce::new(now);
        // 100 active connections, 5 events each (a 125 µs share, held to 100), half of them
        // opened in the epoch: a 50 µs nap.
        for _ in 0..50 {
            c.opened();
        }
        let at = epoch(&mut c, now, 100, 5, MAX);
        assert_eq!(c.nap(LONG, MAX), Some(Duration::from_micros(50)));
        // Every active connection opened in the epoch: no nap.
        for _ in 0..100 {
            c.opened();
        }
        let at = epoch(&mut c, at, 100, 5, MAX);
        assert_eq!(c.nap(LONG, MAX), None);
        for _ in 0..95 {
            c.opened();
        }
        epoch(&mut c, at, 100, 5, MAX);
        assert_eq!(c.nap(LONG, MAX), None, "5 µs is under MIN_NAP");
    }

    #[test]
    fn a_pause_in_the_traffic_ends_the_naps() {
        let now = Instant::now();
        let mut c = Coalesce::new(now);
        let at = epoch(&mut c, now, 100, 5, MAX);
        assert_eq!(c.nap(LONG, MAX), Some(MAX));
        // The next wake-up comes a second later: the load measured over that second is stale.
        let mut marks = vec![0u32; 100];
        for mark in &mut marks {
            c.event(mark);
        }
        c.waited(1, false, at + Duration::from_secs(1), MAX);
        assert_eq!(c.nap(LONG, MAX), None);
    }

    #[test]
    fn a_nap_that_finds_nothing_is_followed_by_a_sleep_until_an_event() {
        let now = Instant::now();
        let mut c = Coalesce::new(now);
        let at = epoch(&mut c, now, 100, 5, MAX);
        assert_eq!(c.nap(LONG, MAX), Some(MAX));
        c.waited(0, true, at + MAX, MAX);
        assert_eq!(
            c.nap(LONG, MAX),
            None,
            "nothing came: sleep until something does"
        );
        c.waited(3, false, at + 2 * MAX, MAX);
        assert_eq!(c.nap(LONG, MAX), Some(MAX), "events again: nap again");
    }

    #[test]
    fn the_setting_and_the_next_timer_bound_the_nap() {
        let now = Instant::now();
        let mut c = Coalesce::new(now);
        epoch(&mut c, now, 100, 5, MAX);
        assert_eq!(
            c.nap(LONG, Duration::from_micros(40)),
            Some(Duration::from_micros(40))
        );
        assert_eq!(
            c.nap(Duration::from_micros(99), MAX),
            None,
            "a timer is due first"
        );
        assert_eq!(c.nap(Duration::ZERO, MAX), None, "work is waiting: no nap");
        assert_eq!(c.nap(LONG, Duration::ZERO), None, "coalesce 0 is off");
        let mut c = Coalesce::new(now);
        epoch(&mut c, now, 100, 5, Duration::ZERO);
        assert_eq!(
            c.nap(LONG, MAX),
            None,
            "an epoch measured while off gives no nap"
        );
    }
}
