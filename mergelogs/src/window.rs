//! The part of pen's log around the time of the web line being merged, indexed by server and
//! request, read from the pen log as the merge moves forward.
//!
//! For a web line at time t the window holds pen's records from t − jitter to t + jitter (plus
//! the first record after that, which tells that the window is complete). Records older than
//! that are dropped, so memory follows the number of records in 2 × jitter seconds, not the
//! size of the log. A record matches when its server is the web log's server and its request is
//! exactly the web line's request; of those within the window, the one closest in time wins,
//! the earliest on a tie. With `-c` nothing is ever dropped and there is no window: the whole
//! pen log is indexed and the closest record wins however far away it is.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead};
use std::rc::Rc;

use pen::accesslog::FileLine;

/// One pen record, in its (server, request) list.
struct Record {
    time: i64,
    client: Box<[u8]>,
}

/// A record's place in reading order, to drop it again.
struct Slot {
    time: i64,
    server: usize,
    request: Rc<[u8]>,
}

/// What reading the pen log has seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PenLogStats {
    pub lines: u64,
    /// Lines that are not pen log lines.
    pub skipped: u64,
    /// The line number of the first of those.
    pub first_skipped: Option<u64>,
    /// Records kept at once at most (the window's size).
    pub peak: usize,
}

pub struct Window<R> {
    reader: R,
    /// The servers of the command line, by name as pen prints them.
    servers: HashMap<Box<[u8]>, usize>,
    /// Per server: request -> its records, in reading order.
    index: Vec<HashMap<Rc<[u8]>, VecDeque<Record>>>,
    /// Every record kept, in reading order.
    order: VecDeque<Slot>,
    /// The time of the last line read, whether it was kept or not.
    newest: Option<i64>,
    eof: bool,
    /// `-t`: subtracted from pen's times.
    shift: i64,
    /// `-j`, or None for `-c` (no window).
    jitter: Option<i64>,
    line: Vec<u8>,
    pub stats: PenLogStats,
}

impl<R: BufRead> Window<R> {
    /// `servers` are the server names of the command line, in order: lookups name them by
    /// index.
    pub fn new(reader: R, servers: &[Vec<u8>], shift: i64, jitter: Option<i64>) -> Window<R> {
        let mut names = HashMap::new();
        for (i, s) in servers.iter().enumerate() {
            names.entry(s.clone().into_boxed_slice()).or_insert(i);
        }
        Window {
            reader,
            servers: names,
            index: servers.iter().map(|_| HashMap::new()).collect(),
            order: VecDeque::new(),
            newest: None,
            eof: false,
            shift,
            jitter,
            line: Vec::with_capacity(256),
            stats: PenLogStats::default(),
        }
    }

    /// The client of the pen record closest to `time` for `server` (an index into the servers
    /// given to `new`) and `request`; None when there is none in the window.
    pub fn lookup(
        &mut self,
        server: usize,
        time: i64,
        request: &[u8],
    ) -> io::Result<Option<&[u8]>> {
        match self.jitter {
            Some(jitter) => {
                self.drop_before(time.saturating_sub(jitter));
                let until = time.saturating_add(jitter);
                while !self.eof && self.newest.is_none_or(|n| n <= until) {
                    self.read_one()?;
                }
            }
            None => {
                while !self.eof {
                    self.read_one()?;
                }
            }
        }
        let Some(records) = self.index.get(server).and_then(|m| m.get(request)) else {
            return Ok(None);
        };
        let Some(best) = closest(records, time) else {
            return Ok(None);
        };
        let record = &records[best];
        let within = self
            .jitter
            .is_none_or(|j| record.time.abs_diff(time) <= j.unsigned_abs());
        Ok(within.then_some(&*record.client))
    }

    fn drop_before(&mut self, limit: i64) {
        while self.order.front().is_some_and(|s| s.time < limit) {
            let Some(slot) = self.order.pop_front() else {
                break;
            };
            let by_request = &mut self.index[slot.server];
            if let Some(records) = by_request.get_mut(&*slot.request) {
                records.pop_front();
                if records.is_empty() {
                    by_request.remove(&*slot.request);
                }
            }
        }
    }

    /// Read one line of the pen log into the window.
    fn read_one(&mut self) -> io::Result<()> {
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line)? == 0 {
            self.eof = true;
            return Ok(());
        }
        self.stats.lines += 1;
        let Ok(record) = FileLine::parse(&self.line) else {
            self.stats.skipped += 1;
            self.stats.first_skipped.get_or_insert(self.stats.lines);
            return Ok(());
        };
        let time = record.epoch.saturating_sub(self.shift);
        self.newest = Some(time);
        let Some(&server) = self.servers.get(record.server) else {
            return Ok(()); // a server nobody asked about
        };
        if record.request.is_empty() {
            return Ok(()); // matches nothing
        }
        if record.client.is_empty() {
            // A Unix-socket client: it has no address to put in the web log, whose line keeps
            // its own host (an empty one would make the line unreadable).
            return Ok(());
        }
        let by_request = &mut self.index[server];
        let request: Rc<[u8]> = match by_request.get_key_value(record.request) {
            Some((key, _)) => key.clone(),
            None => Rc::from(record.request),
        };
        by_request
            .entry(request.clone())
            .or_default()
            .push_back(Record {
                time,
                client: record.client.into(),
            });
        self.order.push_back(Slot {
            time,
            server,
            request,
        });
        self.stats.peak = self.stats.peak.max(self.order.len());
        Ok(())
    }
}

/// The index of the record closest to `time` (the earliest of equals), assuming times do not
/// go backwards, as in a log.
fn closest(records: &VecDeque<Record>, time: i64) -> Option<usize> {
    let after = records.partition_point(|r| r.time < time);
    let before = after.checked_sub(1);
    let pick_before = match (before, records.get(after)) {
        (None, None) => return None,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (Some(b), Some(a)) => time - records[b].time <= a.time - time,
    };
    if pick_before {
        // The earliest record with that same time.
        let t = records[before?].time;
        Some(records.partition_point(|r| r.time < t))
    } else {
        Some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::PEN_LOG;

    fn window(shift: i64, jitter: Option<i64>) -> Window<&'static [u8]> {
        let servers = [b"10.0.0.1".to_vec(), b"10.0.0.2".to_vec()];
        Window::new(PEN_LOG.as_bytes(), &servers, shift, jitter)
    }

    fn find(w: &mut Window<&'static [u8]>, server: usize, t: i64, request: &str) -> Option<String> {
        w.lookup(server, t, request.as_bytes())
            .unwrap()
            .map(|c| String::from_utf8_lossy(c).into_owned())
    }

    #[test]
    fn transcript_15_default_run() {
        let mut w = window(0, Some(600));
        let got = [
            find(&mut w, 0, 1_700_000_000, "GET /index.html HTTP/1.0"),
            find(&mut w, 0, 1_700_000_006, "GET /a.png HTTP/1.1"),
            find(&mut w, 1, 1_700_000_001, "GET /index.html HTTP/1.0"),
            find(&mut w, 0, 1_700_000_300, "GET /index.html HTTP/1.0"),
            find(&mut w, 0, 1_700_000_400, "GET /nomatch HTTP/1.0"),
            find(&mut w, 1, 1_700_000_900, "GET /late HTTP/1.0"),
            find(&mut w, 0, 1_700_002_000, "GET /far HTTP/1.0"),
        ];
        let want = [
            Some("203.0.113.1"),
            Some("203.0.113.3"),
            Some("203.0.113.2"),
            Some("203.0.113.4"),
            None,
            Some("203.0.113.5"),
            Some("203.0.113.6"),
        ];
        assert_eq!(got, want.map(|w| w.map(String::from)));
        assert_eq!(w.stats.skipped, 1);
        assert_eq!(w.stats.first_skipped, Some(6));
    }

    #[test]
    fn a_unix_socket_client_names_no_host() {
        // pen logs a Unix-socket client with an empty address.
        let log = " 1700000000 10.0.0.1 GET /u HTTP/1.1\n";
        let servers = [b"10.0.0.1".to_vec()];
        let mut w = Window::new(log.as_bytes(), &servers, 0, Some(60));
        assert_eq!(
            w.lookup(0, 1_700_000_000, b"GET /u HTTP/1.1").unwrap(),
            None
        );
        assert_eq!(w.stats.skipped, 0, "a well-formed line, just not a match");
    }

    #[test]
    fn the_window_is_a_hard_limit_and_c_has_none() {
        // pen's times shifted by an hour: nothing is within 600 s (C mergelogs still matched
        // the first line, because nothing had been dropped yet).
        let mut w = window(3600, Some(600));
        assert_eq!(
            find(&mut w, 0, 1_700_000_000, "GET /index.html HTTP/1.0"),
            None
        );
        // Without a window (-c), the closest record wins however far away.
        let mut c = window(3600, None);
        assert_eq!(
            find(&mut c, 0, 1_700_000_000, "GET /index.html HTTP/1.0").as_deref(),
            Some("203.0.113.4")
        );
        assert_eq!(
            find(&mut c, 0, 1_700_000_000, "GET /far HTTP/1.0").as_deref(),
            Some("203.0.113.6")
        );
    }

    #[test]
    fn closest_prefers_the_earliest_of_equals() {
        let records: VecDeque<Record> = [10, 20, 20, 30, 40]
            .iter()
            .enumerate()
            .map(|(i, &time)| Record {
                time,
                client: vec![b'a' + i as u8].into(),
            })
            .collect();
        let pick = |t| closest(&records, t).map(|i| records[i].client[0] as char);
        assert_eq!(pick(0), Some('a'));
        assert_eq!(
            pick(15),
            Some('a'),
            "10 and 20 are equally far: the earlier"
        );
        assert_eq!(pick(20), Some('b'), "the first of two at 20");
        assert_eq!(pick(24), Some('b'));
        assert_eq!(pick(25), Some('b'));
        assert_eq!(pick(26), Some('d'));
        assert_eq!(pick(99), Some('e'));
        assert_eq!(closest(&VecDeque::new(), 5), None);
    }

    #[test]
    fn memory_follows_the_window_not_the_log() {
        // 100,000 records, one a second, on one server and a few requests.
        let mut log = String::new();
        for i in 0..100_000i64 {
            log.push_str(&format!(
                "10.1.{}.{} {} 10.0.0.1 GET /p{} HTTP/1.1\n",
                i / 250 % 250,
                i % 250,
                i,
                i % 7
            ));
        }
        let servers = [b"10.0.0.1".to_vec()];
        let mut w = Window::new(log.as_bytes(), &servers, 0, Some(60));
        for t in (0..100_000i64).step_by(10) {
            let want = format!("10.1.{}.{}", t / 250 % 250, t % 250);
            let got = w
                .lookup(0, t, format!("GET /p{} HTTP/1.1", t % 7).as_bytes())
                .unwrap();
            assert_eq!(got, Some(want.as_bytes()));
        }
        assert!(w.stats.peak <= 2 * 60 + 2, "peak {}", w.stats.peak);
    }
}
