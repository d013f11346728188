//! The ring of recent pen records and the match that gives a web log line its real client.
//!
//! pen 0.34.1's rule, kept: among the last N records, newest first, the first whose server is
//! the web line's source address and whose request starts with the web line's request (its
//! first 100 bytes) gives the client. Records are not consumed: two clients fetching the same
//! URL from the same server both get the newer one, as in pen. There is no time window.
//!
//! Fixed: all N slots can match (pen searched N-1), a web request of 100 bytes or more matches
//! a record cut at 100 (pen: never), and the search does not walk the whole ring. Records are
//! indexed by server, then by request in a sorted map, so a lookup is a range scan over the
//! requests that start with the web request, usually one key.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::ops::Bound;
use std::rc::Rc;

use pen::accesslog::REQUEST_MAX;

struct Entry {
    seq: u64,
    client: IpAddr,
    server: IpAddr,
    request: Rc<[u8]>,
}

/// The last `capacity` pen records.
pub struct Ring {
    capacity: usize,
    /// Oldest first; `entries[i].seq == first_seq + i`.
    entries: VecDeque<Entry>,
    next_seq: u64,
    /// server -> request -> the sequence numbers of the records with that request, oldest first.
    index: HashMap<IpAddr, BTreeMap<Rc<[u8]>, VecDeque<u64>>>,
}

impl Ring {
    /// A ring of `capacity` records (at least 1).
    pub fn new(capacity: usize) -> Ring {
        let capacity = capacity.max(1);
        Ring {
            capacity,
            entries: VecDeque::with_capacity(capacity.min(1 << 16)),
            next_seq: 0,
            index: HashMap::new(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Remember a pen record, forgetting the oldest when full. The request is cut at 100 bytes
    /// (pen's own limit). A record with an empty request can never match and is not stored.
    pub fn store(&mut self, client: IpAddr, server: IpAddr, request: &[u8]) {
        let request = &request[..request.len().min(REQUEST_MAX)];
        if request.is_empty() {
            return;
        }
        if self.entries.len() == self.capacity {
            self.evict_oldest();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let by_request = self.index.entry(server).or_default();
        let request: Rc<[u8]> = match by_request.get_key_value(request) {
            Some((key, _)) => key.clone(),
            None => Rc::from(request),
        };
        by_request
            .entry(request.clone())
            .or_default()
            .push_back(seq);
        self.entries.push_back(Entry {
            seq,
            client,
            server,
            request,
        });
    }

    fn evict_oldest(&mut self) {
        let Some(old) = self.entries.pop_front() else {
            return;
        };
        let Some(by_request) = self.index.get_mut(&old.server) else {
            return;
        };
        if let Some(seqs) = by_request.get_mut(&*old.request) {
            debug_assert_eq!(seqs.front(), Some(&old.seq));
            seqs.pop_front();
            if seqs.is_empty() {
                by_request.remove(&*old.request);
            }
        }
        if by_request.is_empty() {
            self.index.remove(&old.server);
        }
    }

    /// The client of the newest record for `server` whose request starts with `web_request`
    /// (its first 100 bytes). None for an empty web request.
    pub fn find(&self, server: IpAddr, web_request: &[u8]) -> Option<IpAddr> {
        let wanted = &web_request[..web_request.len().min(REQUEST_MAX)];
        if wanted.is_empty() {
            return None;
        }
        let by_request = self.index.get(&server)?;
        let newest = by_request
            .range::<[u8], _>((Bound::Included(wanted), Bound::Unbounded))
            .take_while(|(request, _)| request.starts_with(wanted))
            .filter_map(|(_, seqs)| seqs.back())
            .max()?;
        let first = self.entries.front()?.seq;
        let entry = self.entries.get(usize::try_from(newest - first).ok()?)?;
        debug_assert_eq!(entry.seq, *newest);
        Some(entry.client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn transcript_13_matches() {
        let web = ip("127.0.0.1");
        let mut ring = Ring::new(1000);
        let long = format!("GET /{} HTTP/1.0", "L".repeat(120));
        for (client, request) in [
            ("127.0.0.41", "GET /a HTTP/1.0"),
            ("127.0.0.42", "GET /b HTTP/1.0"),
            ("127.0.0.43", "GET /shared HTTP/1.0"),
            ("127.0.0.44", "GET /shared HTTP/1.0"),
            ("127.0.0.45", "GET /prefix-long-name HTTP/1.0"),
            ("127.0.0.46", long.as_str()),
        ] {
            ring.store(ip(client), web, request.as_bytes());
        }
        let find = |r: &str| ring.find(web, r.as_bytes()).map(|c| c.to_string());
        assert_eq!(find("GET /a HTTP/1.0").as_deref(), Some("127.0.0.41"));
        assert_eq!(find("GET /b HTTP/1.0").as_deref(), Some("127.0.0.42"));
        // Not consumed: both lines get the newest.
        assert_eq!(find("GET /shared HTTP/1.0").as_deref(), Some("127.0.0.44"));
        assert_eq!(find("GET /shared HTTP/1.0").as_deref(), Some("127.0.0.44"));
        assert_eq!(find("GET /prefix").as_deref(), Some("127.0.0.45"));
        assert_eq!(find("GET /nomatch HTTP/1.0"), None);
        // Fixed: a request of 100 bytes or more matches the record pen cut at 100.
        assert_eq!(find(&long).as_deref(), Some("127.0.0.46"));
        // Another source address is another server.
        assert_eq!(ring.find(ip("127.0.0.2"), b"GET /a HTTP/1.0"), None);
        assert_eq!(find(""), None);
    }

    #[test]
    fn every_slot_is_usable_and_the_oldest_goes_first() {
        // Transcript 16: with -n 3, pen 0.34.1 could match only 2 of 4 records; all 3 of
        // the last 3 match here.
        let server = ip("127.0.0.1");
        let mut ring = Ring::new(3);
        for n in 1..=4 {
            ring.store(
                ip(&format!("192.0.2.{n}")),
                server,
                format!("GET /p{n} HTTP/1.0").as_bytes(),
            );
        }
        assert_eq!(ring.len(), 3);
        let got: Vec<Option<String>> = (1..=4)
            .map(|n| {
                ring.find(server, format!("GET /p{n} HTTP/1.0").as_bytes())
                    .map(|c| c.to_string())
            })
            .collect();
        assert_eq!(
            got,
            [
                None,
                Some("192.0.2.2".into()),
                Some("192.0.2.3".into()),
                Some("192.0.2.4".into())
            ]
        );
    }

    #[test]
    fn newest_wins_across_keys_and_eviction_keeps_the_index_right() {
        let server = ip("10.0.0.1");
        let mut ring = Ring::new(4);
        ring.store(ip("1.1.1.1"), server, b"GET /x HTTP/1.0");
        ring.store(ip("2.2.2.2"), server, b"GET /xy HTTP/1.0");
        ring.store(ip("3.3.3.3"), ip("10.0.0.2"), b"GET /x HTTP/1.0");
        // "GET /x" is a prefix of both requests of 10.0.0.1: the newer record wins.
        assert_eq!(ring.find(server, b"GET /x"), Some(ip("2.2.2.2")));
        assert_eq!(ring.find(server, b"GET /x HTTP/1.0"), Some(ip("1.1.1.1")));
        // Push everything out, many times over, with repeated keys.
        for i in 0..100u8 {
            ring.store(ip(&format!("9.9.9.{i}")), server, b"GET /x HTTP/1.0");
        }
        assert_eq!(ring.find(server, b"GET /x HTTP/1.0"), Some(ip("9.9.9.99")));
        assert_eq!(ring.find(server, b"GET /xy"), None);
        assert_eq!(ring.find(ip("10.0.0.2"), b"GET /x"), None);
        assert_eq!(ring.len(), 4);
        assert_eq!(
            ring.index.len(),
            1,
            "servers with no record left are forgotten"
        );
        ring.store(ip("1.2.3.4"), server, b"");
        assert_eq!(ring.len(), 4, "empty requests are not stored");
    }

    #[test]
    fn ipv6_servers_and_clients() {
        let mut ring = Ring::new(10);
        ring.store(ip("2001:db8::7"), ip("::1"), b"GET / HTTP/1.1");
        assert_eq!(
            ring.find(ip("::1"), b"GET / HTTP/1.1"),
            Some(ip("2001:db8::7"))
        );
    }
}
