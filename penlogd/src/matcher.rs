//! penlogd's work on one datagram, without I/O: store a pen record, or turn a web line into
//! an output line with the real client, or count a malformed datagram. The socket loop feeds
//! it; the tests drive it directly.

use std::net::IpAddr;

use ipnet::IpNet;
use pen::accesslog::web;

use crate::datagram::{classify, Datagram, Malformed};
use crate::ring::Ring;

/// What penlogd has seen since it started.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    pub datagrams: u64,
    pub records: u64,
    pub web_lines: u64,
    /// Web lines written with a client from a pen record.
    pub matched: u64,
    pub malformed: [u64; Malformed::ALL.len()],
}

impl Counters {
    pub fn dropped(&self) -> u64 {
        self.malformed.iter().sum()
    }

    /// One line for the log: totals, and each kind of malformed datagram seen.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} datagrams: {} pen records, {} web lines ({} with their client, {} unchanged), {} dropped",
            self.datagrams,
            self.records,
            self.web_lines,
            self.matched,
            self.web_lines - self.matched,
            self.dropped()
        );
        let kinds: Vec<String> = Malformed::ALL
            .iter()
            .filter(|k| self.malformed[k.index()] > 0)
            .map(|k| format!("{} {}", self.malformed[k.index()], k.describe()))
            .collect();
        if !kinds.is_empty() {
            s.push_str(&format!(" ({})", kinds.join(", ")));
        }
        s
    }
}

/// What a well-formed datagram was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A pen record, remembered.
    Record,
    /// A web line written with the client of a pen record.
    Matched,
    /// A web line written as it came.
    Unchanged,
}

impl Handled {
    pub fn describe(self) -> &'static str {
        match self {
            Handled::Record => "pen record",
            Handled::Matched => "web line, with its client",
            Handled::Unchanged => "web line, no pen record for it",
        }
    }
}

pub struct Matcher {
    ring: Ring,
    /// `-a`: when not empty, only these sources are heard.
    allow: Vec<IpNet>,
    pub counters: Counters,
    client_text: String,
}

impl Matcher {
    pub fn new(ring_size: usize, allow: Vec<IpNet>) -> Matcher {
        Matcher {
            ring: Ring::new(ring_size),
            allow,
            counters: Counters::default(),
            client_text: String::with_capacity(64),
        }
    }

    /// Handle one datagram from `source`; a web line's output line (newline included) is
    /// appended to `out`. At most one line is written per datagram.
    pub fn handle(
        &mut self,
        source: IpAddr,
        datagram: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Handled, Malformed> {
        self.counters.datagrams += 1;
        let source = source.to_canonical();
        let datagram = match self.classify_allowed(source, datagram) {
            Ok(d) => d,
            Err(kind) => {
                self.counters.malformed[kind.index()] += 1;
                return Err(kind);
            }
        };
        match datagram {
            Datagram::Record(r) => {
                self.counters.records += 1;
                self.ring.store(r.client, r.server, r.request);
                Ok(Handled::Record)
            }
            Datagram::Web { line, request } => {
                self.counters.web_lines += 1;
                let matched = self.ring.find(source, request).is_some_and(|client| {
                    use std::fmt::Write;
                    self.client_text.clear();
                    let _ = write!(self.client_text, "{client}");
                    web::write_with_host(out, line, self.client_text.as_bytes())
                });
                if matched {
                    self.counters.matched += 1;
                    Ok(Handled::Matched)
                } else {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                    Ok(Handled::Unchanged)
                }
            }
        }
    }

    fn classify_allowed<'a>(
        &self,
        source: IpAddr,
        datagram: &'a [u8],
    ) -> Result<Datagram<'a>, Malformed> {
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&source)) {
            return Err(Malformed::NotAllowed);
        }
        classify(datagram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn run(m: &mut Matcher, source: &str, datagrams: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for d in datagrams {
            let _ = m.handle(ip(source), d, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn transcript_13_end_to_end() {
        let mut m = Matcher::new(1000, Vec::new());
        run(
            &mut m,
            "127.0.0.1",
            &[
                b"+ 127.0.0.41 127.0.0.1 GET /a HTTP/1.0\n",
                b"+ 127.0.0.42 127.0.0.1 GET /b HTTP/1.0\n",
            ],
        );
        let out = run(
            &mut m,
            "127.0.0.1",
            &[
                b"127.0.0.1 - - [22/Nov/2026:07:40:01 +0000] \"GET /a HTTP/1.0\" 200 10\n",
                b"127.0.0.1 - - [22/Nov/2026:07:40:06 +0000] \"GET /nomatch HTTP/1.0\" 404 10\n",
                b"a line without quotes\n",
                b"127.0.0.1 - - [22/Nov/2026:07:40:08 +0000] \"GET /b HTTP/1.0\" 200 10",
            ],
        );
        assert_eq!(
            out,
            "127.0.0.41 - - [22/Nov/2026:07:40:01 +0000] \"GET /a HTTP/1.0\" 200 10\n\
             127.0.0.1 - - [22/Nov/2026:07:40:06 +0000] \"GET /nomatch HTTP/1.0\" 404 10\n\
             127.0.0.42 - - [22/Nov/2026:07:40:08 +0000] \"GET /b HTTP/1.0\" 200 10\n"
        );
        // From another address: another server, so no match.
        let other = run(
            &mut m,
            "127.0.0.2",
            &[b"127.0.0.1 - - [22/Nov/2026:07:40:09 +0000] \"GET /a HTTP/1.0\" 200 10\n"],
        );
        assert!(other.starts_with("127.0.0.1 - -"), "{other}");
        assert_eq!(m.counters.records, 2);
        assert_eq!((m.counters.web_lines, m.counters.matched), (4, 2));
        assert_eq!(m.counters.malformed[Malformed::NoQuotes.index()], 1);
        assert!(m
            .counters
            .summary()
            .contains("1 a web line without a quoted request"));
    }

    #[test]
    fn ipv6_records_and_v4_mapped_sources() {
        // pen 0.34.1's penlogd crashed on the first of these (transcript 14).
        let mut m = Matcher::new(10, Vec::new());
        run(&mut m, "::1", &[b"+ 1.2.3.4 ::1 GET / HTTP/1.0\n"]);
        let out = run(&mut m, "::1", &[b"::1 - - [t] \"GET / HTTP/1.0\" 200 1\n"]);
        assert_eq!(out, "1.2.3.4 - - [t] \"GET / HTTP/1.0\" 200 1\n");
        run(
            &mut m,
            "::ffff:10.0.0.1",
            &[b"+ 2001:db8::9 10.0.0.1 GET /x HTTP/1.0\n"],
        );
        let out = run(
            &mut m,
            "::ffff:10.0.0.1",
            &[b"10.0.0.1 - - [t] \"GET /x HTTP/1.0\" 200 1\n"],
        );
        assert_eq!(out, "2001:db8::9 - - [t] \"GET /x HTTP/1.0\" 200 1\n");
    }

    #[test]
    fn allow_list_drops_strangers() {
        let allow = vec!["127.0.0.0/30".parse().unwrap(), "::1/128".parse().unwrap()];
        let mut m = Matcher::new(10, allow);
        let mut out = Vec::new();
        assert_eq!(
            m.handle(
                ip("127.0.0.9"),
                b"+ 6.6.6.6 127.0.0.1 GET / HTTP/1.0",
                &mut out
            ),
            Err(Malformed::NotAllowed)
        );
        assert_eq!(
            m.handle(ip("127.0.0.9"), b"x - - [t] \"GET /\" 200 1", &mut out),
            Err(Malformed::NotAllowed)
        );
        assert!(out.is_empty());
        assert!(m
            .handle(
                ip("::ffff:127.0.0.1"),
                b"+ 5.5.5.5 127.0.0.1 GET / HTTP/1.0",
                &mut out
            )
            .is_ok());
        assert!(m
            .handle(
                ip("127.0.0.1"),
                b"x - - [t] \"GET / HTTP/1.0\" 200 1",
                &mut out
            )
            .is_ok());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "5.5.5.5 - - [t] \"GET / HTTP/1.0\" 200 1\n"
        );
    }
}
