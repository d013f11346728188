//! The last minutes of every server, from one snapshot per poll: open connections, and the
//! connection and byte rates worked out from pen's counters. Pure: the caller passes the time of each
//! poll, so the arithmetic is tested without a clock.
//!
//! A failed poll is recorded as a gap, so a chart shows a break where pen could not be asked
//! instead of a line drawn across the outage. A counter that goes down (pen restarted, or the
//! slot given another server) counts as a reset: the rate starts again from the new value.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pen::balancer::{ServerStats, Snapshot};

/// What identifies a server across polls: its number and its address. A slot that is given
/// another address by `server N address ...` starts a new history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey {
    pub index: i64,
    pub address: String,
    pub port: u16,
}

impl ServerKey {
    pub fn of(s: &ServerStats) -> ServerKey {
        ServerKey {
            index: s.index,
            address: s.address.clone(),
            port: s.port,
        }
    }
}

#[derive(Debug, Clone)]
struct Point {
    /// Shared with the same server's points in other samples: one allocation per server, not
    /// one per poll.
    key: Arc<ServerKey>,
    conns: u32,
    connects: u64,
    sent: u64,
    received: u64,
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    /// None: the poll failed.
    points: Option<Vec<Point>>,
}

/// A series as runs of `(seconds ago, value)`, oldest first; a new run starts after every gap.
pub type Runs = Vec<Vec<(f64, f64)>>;

/// The charts' data for one server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSeries {
    pub key: ServerKey,
    /// Open connections at each poll.
    pub conns: Runs,
    /// New connections per second, between one poll and the next.
    pub connect_rate: Runs,
    /// Bytes per second sent to the server, between one poll and the next.
    pub sent_rate: Runs,
    /// Bytes per second received from the server.
    pub received_rate: Runs,
}

/// The samples of the last `window`.
#[derive(Debug)]
pub struct History {
    window: Duration,
    samples: VecDeque<Sample>,
}

impl History {
    pub fn new(window: Duration) -> History {
        History {
            window,
            samples: VecDeque::new(),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Record the poll that ended at `at`: its snapshot, or None when it failed.
    pub fn record(&mut self, at: Instant, snapshot: Option<&Snapshot>) {
        let last = self.samples.iter().rev().find_map(|s| s.points.as_ref());
        let points = snapshot.map(|s| {
            every_server(s)
                .enumerate()
                .map(|(i, srv)| {
                    let key = ServerKey::of(srv);
                    let key = match last.and_then(|ps| find(ps, i, &key)) {
                        Some(known) => known.key.clone(),
                        None => Arc::new(key),
                    };
                    Point {
                        key,
                        conns: srv.conns,
                        connects: srv.connects,
                        sent: srv.sent,
                        received: srv.received,
                    }
                })
                .collect()
        });
        self.samples.push_back(Sample { at, points });
        // One sample older than the window is kept: it is the start of the first rate.
        while self.samples.len() > 2
            && self.samples[1].at + self.window < at
            && self.samples[0].at + self.window < at
        {
            self.samples.pop_front();
        }
    }

    /// Number of samples held (for tests and for bounding memory).
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The series of the servers in the newest sample, as of `now`, within the window.
    pub fn series(&self, now: Instant) -> Vec<ServerSeries> {
        let Some(newest) = self.samples.iter().rev().find_map(|s| s.points.as_ref()) else {
            return Vec::new();
        };
        newest
            .iter()
            .enumerate()
            .map(|(i, p)| self.series_of(i, &p.key, now))
            .collect()
    }

    /// The series of the server `key`, which is usually at `position` in every sample.
    fn series_of(&self, position: usize, key: &ServerKey, now: Instant) -> ServerSeries {
        let mut out = ServerSeries {
            key: key.clone(),
            conns: Vec::new(),
            connect_rate: Vec::new(),
            sent_rate: Vec::new(),
            received_rate: Vec::new(),
        };
        let limit = self.window.as_secs_f64();
        let mut previous: Option<(Instant, &Point)> = None;
        // Whether the last run of the connections, and of the rates, ends at the previous
        // sample (no gap since); if not, the next point starts a new run.
        let mut open = false;
        let mut rate_open = false;
        for sample in &self.samples {
            let point = sample
                .points
                .as_ref()
                .and_then(|ps| find(ps, position, key));
            let Some(point) = point else {
                previous = None;
                open = false;
                rate_open = false;
                continue;
            };
            let ago = now.saturating_duration_since(sample.at).as_secs_f64();
            if ago <= limit {
                push(&mut out.conns, open, ago, f64::from(point.conns));
                if let Some((then, before)) = previous {
                    let dt = sample.at.saturating_duration_since(then).as_secs_f64();
                    if dt > 0.0 {
                        let rate = |new: u64, old: u64| {
                            let delta = if new >= old { new - old } else { new };
                            delta as f64 / dt
                        };
                        push(
                            &mut out.connect_rate,
                            rate_open,
                            ago,
                            rate(point.connects, before.connects),
                        );
                        push(
                            &mut out.sent_rate,
                            rate_open,
                            ago,
                            rate(point.sent, before.sent),
                        );
                        push(
                            &mut out.received_rate,
                            rate_open,
                            ago,
                            rate(point.received, before.received),
                        );
                        rate_open = true;
                    }
                }
                open = true;
            }
            previous = Some((sample.at, point));
        }
        out
    }
}

/// The point of `key` in `points`: at `position` (where it was last time, almost always), or
/// searched for.
fn find<'a>(points: &'a [Point], position: usize, key: &ServerKey) -> Option<&'a Point> {
    match points.get(position) {
        Some(p) if *p.key == *key => Some(p),
        _ => points.iter().find(|p| *p.key == *key),
    }
}

/// Append a point to the open run, or start a new run.
fn push(runs: &mut Runs, open: bool, ago: f64, value: f64) {
    match runs.last_mut() {
        Some(run) if open => run.push((ago, value)),
        _ => runs.push(vec![(ago, value)]),
    }
}

/// The regular servers, then the emergency and abuse servers.
pub fn every_server(s: &Snapshot) -> impl Iterator<Item = &ServerStats> {
    s.servers.iter().chain(&s.emergency).chain(&s.abuse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{server, snapshot};

    fn snap(servers: &[(u32, u64, u64)]) -> Snapshot {
        let list = servers
            .iter()
            .enumerate()
            .map(|(i, &(conns, sent, received))| {
                let mut s = server(i as i64, "10.0.0.1", 80 + i as u16);
                s.conns = conns;
                s.sent = sent;
                s.received = received;
                s
            })
            .collect();
        snapshot(list)
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn rates_are_differences_over_time() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60));
        h.record(secs(t0, 0), Some(&snap(&[(1, 100, 1000)])));
        h.record(secs(t0, 2), Some(&snap(&[(3, 300, 1000)])));
        h.record(secs(t0, 4), Some(&snap(&[(0, 500, 5000)])));
        let series = h.series(secs(t0, 4));
        assert_eq!(series.len(), 1);
        let s = &series[0];
        assert_eq!(s.key.port, 80);
        assert_eq!(s.conns, vec![vec![(4.0, 1.0), (2.0, 3.0), (0.0, 0.0)]]);
        assert_eq!(s.sent_rate, vec![vec![(2.0, 100.0), (0.0, 100.0)]]);
        assert_eq!(s.received_rate, vec![vec![(2.0, 0.0), (0.0, 2000.0)]]);
    }

    #[test]
    fn the_connection_rate_comes_from_the_connects_counter() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60));
        let with = |connects: u64| {
            let mut s = snap(&[(0, 0, 0)]);
            s.servers[0].connects = connects;
            s
        };
        h.record(secs(t0, 0), Some(&with(10)));
        h.record(secs(t0, 2), Some(&with(30)));
        h.record(secs(t0, 4), Some(&with(5)));
        let s = &h.series(secs(t0, 4))[0];
        // 20 in 2 s; then a reset (pen restarted): the rate starts again from the new value.
        assert_eq!(s.connect_rate, vec![vec![(2.0, 10.0), (0.0, 2.5)]]);
    }

    #[test]
    fn a_failed_poll_breaks_every_line() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60));
        h.record(secs(t0, 0), Some(&snap(&[(1, 0, 0)])));
        h.record(secs(t0, 1), Some(&snap(&[(1, 10, 0)])));
        h.record(secs(t0, 2), None);
        h.record(secs(t0, 3), Some(&snap(&[(2, 40, 0)])));
        h.record(secs(t0, 4), Some(&snap(&[(2, 60, 0)])));
        let s = &h.series(secs(t0, 4))[0];
        assert_eq!(
            s.conns,
            vec![vec![(4.0, 1.0), (3.0, 1.0)], vec![(1.0, 2.0), (0.0, 2.0)]]
        );
        // No rate spans the gap: 10 -> 40 is never divided by 2 seconds.
        assert_eq!(s.sent_rate, vec![vec![(3.0, 10.0)], vec![(0.0, 20.0)]]);
    }

    #[test]
    fn a_counter_that_goes_down_is_a_reset() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60));
        h.record(secs(t0, 0), Some(&snap(&[(0, 5000, 0)])));
        h.record(secs(t0, 1), Some(&snap(&[(0, 30, 0)])));
        let s = &h.series(secs(t0, 1))[0];
        assert_eq!(s.sent_rate, vec![vec![(0.0, 30.0)]]);
    }

    #[test]
    fn a_server_given_another_address_starts_afresh() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60));
        h.record(secs(t0, 0), Some(&snap(&[(7, 0, 0)])));
        let mut moved = snap(&[(1, 0, 0)]);
        moved.servers[0].address = "10.0.0.2".into();
        h.record(secs(t0, 1), Some(&moved));
        let s = &h.series(secs(t0, 1))[0];
        assert_eq!(s.key.address, "10.0.0.2");
        assert_eq!(s.conns, vec![vec![(0.0, 1.0)]]);
        assert!(s.sent_rate.is_empty());
    }

    #[test]
    fn old_samples_leave_the_window_and_memory() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(10));
        for t in 0..100 {
            h.record(secs(t0, t), Some(&snap(&[(t as u32, t * 10, 0)])));
        }
        assert!(h.len() <= 12, "{} samples kept", h.len());
        let s = &h.series(secs(t0, 99))[0];
        let ages: Vec<f64> = s.conns[0].iter().map(|p| p.0).collect();
        assert_eq!(ages.first(), Some(&10.0));
        assert_eq!(ages.last(), Some(&0.0));
        // The first rate in the window uses the sample just before it.
        assert_eq!(s.sent_rate[0].first(), Some(&(10.0, 10.0)));
    }

    #[test]
    fn a_server_that_moves_in_the_list_keeps_its_history() {
        let t0 = Instant::now();
        let mut before = snap(&[(0, 0, 0)]);
        before.emergency = Some(server(-1, "10.0.0.9", 80));
        let mut after = snap(&[(0, 0, 0), (0, 0, 0)]);
        let mut e = server(-1, "10.0.0.9", 80);
        e.conns = 4;
        after.emergency = Some(e);
        let mut h = History::new(Duration::from_secs(10));
        h.record(t0, Some(&before));
        h.record(t0 + Duration::from_secs(1), Some(&after));
        let series = h.series(t0 + Duration::from_secs(1));
        let keys: Vec<i64> = series.iter().map(|s| s.key.index).collect();
        assert_eq!(keys, [0, 1, -1]);
        assert_eq!(series[2].conns, vec![vec![(1.0, 0.0), (0.0, 4.0)]]);
        assert_eq!(series[1].conns, vec![vec![(0.0, 0.0)]]);
    }

    #[test]
    fn emergency_and_abuse_servers_have_series_too() {
        let t0 = Instant::now();
        let mut snap = snap(&[(0, 0, 0)]);
        snap.emergency = Some(server(-1, "10.0.0.9", 80));
        let mut h = History::new(Duration::from_secs(10));
        h.record(t0, Some(&snap));
        let keys: Vec<i64> = h.series(t0).iter().map(|s| s.key.index).collect();
        assert_eq!(keys, [0, -1]);
        assert!(History::new(Duration::from_secs(1)).series(t0).is_empty());
    }
}
