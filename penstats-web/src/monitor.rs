//! The one task that talks to pen: it polls the control port every interval, one poll at a time,
//! and publishes what it learnt as a `View` on a watch channel. Web requests only read the
//! latest view, so the number of browsers and scrapers never changes how often pen is asked,
//! and a slow pen delays the next poll instead of piling up connections.
//!
//! A view never carries a snapshot older than its own poll: when a poll fails, the view says
//! pen is unreachable and holds no numbers, only the history for the charts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use pen::balancer::Snapshot;
use tokio::sync::watch;

use crate::address::Address;
use crate::fetch::{self, FetchError};
use crate::history::History;
use crate::metrics::PollCounts;
use crate::page::{self, Health, Live};

/// What the web side shows, as of the last poll.
#[derive(Debug)]
pub struct View {
    /// Counts the polls; 0 before the first.
    pub seq: u64,
    pub health: Health,
    /// When the last poll ended, on penstats-web's clock (`YYYY-MM-DD HH:MM:SS`).
    pub checked_at: String,
    /// The snapshot of the last poll, None unless it succeeded.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The live part of the dashboard, rendered once for every viewer.
    pub live: String,
    pub polls: PollCounts,
}

/// How to poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polling {
    pub pen: Address,
    pub interval: Duration,
    /// The bound on one poll, from connect to the end of the reply.
    pub timeout: Duration,
    /// How far back the charts go.
    pub history: Duration,
}

/// The monitor's memory between polls. `update` is synchronous and takes the time from its
/// caller, so the whole state machine is tested without a pen or a clock.
pub struct Monitor {
    polling: Polling,
    pen_text: String,
    history: History,
    seq: u64,
    polls: PollCounts,
    down_since: Option<String>,
    last_ok: Option<String>,
}

impl Monitor {
    pub fn new(polling: Polling) -> Monitor {
        Monitor {
            pen_text: polling.pen.to_string(),
            history: History::new(polling.history),
            polling,
            seq: 0,
            polls: PollCounts::default(),
            down_since: None,
            last_ok: None,
        }
    }

    pub fn polling(&self) -> &Polling {
        &self.polling
    }

    /// The view before any poll has finished.
    pub fn starting(&self) -> View {
        self.view(Health::Starting, String::new(), None, Instant::now())
    }

    /// Take in the result of the poll that ended at `now` (`wall` on the wall clock).
    pub fn update(
        &mut self,
        result: Result<Snapshot, FetchError>,
        now: Instant,
        wall: DateTime<FixedOffset>,
    ) -> View {
        self.seq += 1;
        let checked_at = wall.format("%Y-%m-%d %H:%M:%S").to_string();
        match result {
            Ok(snapshot) => {
                self.polls.ok += 1;
                self.history.record(now, Some(&snapshot));
                self.down_since = None;
                self.last_ok = Some(checked_at.clone());
                self.view(Health::Up, checked_at, Some(Arc::new(snapshot)), now)
            }
            Err(e) => {
                self.polls.failed += 1;
                self.history.record(now, None);
                let since = self.down_since.get_or_insert(checked_at.clone()).clone();
                let health = Health::Down {
                    error: e.to_string(),
                    since,
                    last_ok: self.last_ok.clone(),
                };
                self.view(health, checked_at, None, now)
            }
        }
    }

    fn view(
        &self,
        health: Health,
        checked_at: String,
        snapshot: Option<Arc<Snapshot>>,
        now: Instant,
    ) -> View {
        let series = self.history.series(now);
        let live = page::live(&Live {
            pen: &self.pen_text,
            health: &health,
            checked_at: &checked_at,
            interval_secs: self.polling.interval.as_secs_f64(),
            snapshot: snapshot.as_deref(),
            series: &series,
            window_secs: self.polling.history.as_secs_f64(),
        })
        // The templates only format values they were given; this cannot fail in practice, and
        // if it did the page says so instead of showing an old rendering.
        .unwrap_or_else(|e| {
            format!(
                "<div id=\"state\" class=\"state state-down\">can't render the dashboard: {}</div>",
                page::escape_text(&e.to_string())
            )
        });
        View {
            seq: self.seq,
            health,
            checked_at,
            snapshot,
            live,
            polls: self.polls,
        }
    }
}

/// Poll pen for ever, publishing each view on `views`. Polls never overlap: the next one starts
/// an interval after the previous one was started, or at once when it took longer than that.
pub async fn run(mut monitor: Monitor, views: watch::Sender<Arc<View>>) {
    let polling = monitor.polling().clone();
    let mut ticks = tokio::time::interval(polling.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up: Option<bool> = None;
    loop {
        ticks.tick().await;
        let result = fetch::snapshot(&polling.pen, polling.timeout).await;
        match (&result, was_up) {
            (Ok(_), Some(false)) => eprintln!("penstats-web: pen at {} answers again", polling.pen),
            (Err(e), None | Some(true)) => {
                eprintln!("penstats-web: pen at {} is unreachable: {e}", polling.pen)
            }
            _ => {}
        }
        was_up = Some(result.is_ok());
        let view = monitor.update(result, Instant::now(), chrono::Local::now().fixed_offset());
        views.send_replace(Arc::new(view));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{server, snapshot};

    fn monitor() -> Monitor {
        Monitor::new(Polling {
            pen: Address::parse("127.0.0.1:10080").unwrap(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            history: Duration::from_secs(300),
        })
    }

    fn wall(secs: i64) -> DateTime<FixedOffset> {
        DateTime::from_timestamp(secs, 0)
            .unwrap()
            .with_timezone(&FixedOffset::east_opt(0).unwrap())
    }

    fn refused() -> FetchError {
        FetchError::Connect {
            address: "127.0.0.1:10080".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        }
    }

    #[test]
    fn an_outage_hides_the_numbers_and_says_since_when() {
        let mut m = monitor();
        let t0 = Instant::now();
        let mut srv = server(0, "10.0.0.1", 80);
        srv.sent = 987_654_321;
        let up = m.update(Ok(snapshot(vec![srv])), t0, wall(0));
        assert_eq!((up.seq, &up.health), (1, &Health::Up));
        assert!(up.snapshot.is_some());
        assert!(up.live.contains("987654321"), "{}", up.live);

        let t1 = t0 + Duration::from_secs(1);
        let down = m.update(Err(refused()), t1, wall(1));
        assert!(down.snapshot.is_none());
        assert!(
            !down.live.contains("987654321"),
            "stale number: {}",
            down.live
        );
        assert!(down.live.contains("pen is unreachable"), "{}", down.live);
        assert!(
            down.live.contains("since 1970-01-01 00:00:01"),
            "{}",
            down.live
        );
        assert!(down.live.contains("Last answer: 1970-01-01 00:00:00"));
        assert!(down.live.contains("id=\"history\""), "the charts stay");

        let later = m.update(Err(refused()), t1 + Duration::from_secs(5), wall(6));
        match &later.health {
            Health::Down { since, .. } => assert_eq!(since, "1970-01-01 00:00:01"),
            other => panic!("{other:?}"),
        }
        assert_eq!(later.polls, PollCounts { ok: 1, failed: 2 });

        let back = m.update(Ok(snapshot(vec![])), t1 + Duration::from_secs(6), wall(7));
        assert_eq!(back.health, Health::Up);
    }

    #[test]
    fn before_the_first_poll_the_page_says_it_is_asking() {
        let m = monitor();
        let v = m.starting();
        assert_eq!((v.seq, &v.health), (0, &Health::Starting));
        assert!(v.live.contains("first snapshot"), "{}", v.live);
        assert!(!m.starting().live.contains("<table"));
    }
}
