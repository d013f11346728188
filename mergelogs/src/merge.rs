//! The merge: web logs interleaved by time (each is read in order, one line ahead), every line
//! written with the client of the closest matching pen record, or with its server's name when
//! there is none.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufRead, Write};

use pen::accesslog::{WebLine, WebLineError};

use crate::window::Window;

/// One web server's log.
pub struct WebLog<R> {
    /// The server's index among the servers given to the window.
    pub server: usize,
    pub reader: R,
}

/// A web log line that could not be read.
pub struct Rejected<'a> {
    /// Which web log (index into the logs given to `merge`).
    pub log: usize,
    pub line_number: u64,
    pub line: &'a [u8],
    pub why: WebLineError,
}

/// What the merge did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub written: u64,
    /// Lines written with a client from pen's log.
    pub matched: u64,
    pub rejected: u64,
}

struct Cursor<R> {
    log: WebLog<R>,
    line: Vec<u8>,
    line_number: u64,
    time: i64,
}

impl<R: BufRead> Cursor<R> {
    /// Move to the next line that parses; false at the end of the log.
    fn advance(
        &mut self,
        index: usize,
        reject: &mut impl FnMut(Rejected<'_>) -> io::Result<()>,
    ) -> io::Result<bool> {
        loop {
            self.line.clear();
            if self.log.reader.read_until(b'\n', &mut self.line)? == 0 {
                return Ok(false);
            }
            self.line_number += 1;
            let parsed =
                WebLine::parse(&self.line).and_then(|l| l.epoch().map_err(WebLineError::from));
            match parsed {
                Ok(time) => {
                    self.time = time;
                    return Ok(true);
                }
                Err(why) => reject(Rejected {
                    log: index,
                    line_number: self.line_number,
                    line: &self.line,
                    why,
                })?,
            }
        }
    }
}

/// Merge `logs` into `out`. `names` are the servers' names (what a line with no match gets as
/// its client), indexed like the window's servers.
pub fn merge<P: BufRead, R: BufRead>(
    window: &mut Window<P>,
    names: &[Vec<u8>],
    logs: Vec<WebLog<R>>,
    out: &mut impl Write,
    mut reject: impl FnMut(Rejected<'_>) -> io::Result<()>,
) -> io::Result<Summary> {
    let mut summary = Summary::default();
    let mut cursors: Vec<Cursor<R>> = logs
        .into_iter()
        .map(|log| Cursor {
            log,
            line: Vec::with_capacity(512),
            line_number: 0,
            time: 0,
        })
        .collect();
    // Smallest time first; the lowest log index on a tie, as pen 0.34.1's mergelogs.
    let mut next = BinaryHeap::with_capacity(cursors.len());
    let mut counting = |r: Rejected<'_>| {
        summary.rejected += 1;
        reject(r)
    };
    for (i, cursor) in cursors.iter_mut().enumerate() {
        if cursor.advance(i, &mut counting)? {
            next.push(Reverse((cursor.time, i)));
        }
    }
    let mut buf = Vec::with_capacity(1024);
    while let Some(Reverse((time, i))) = next.pop() {
        let cursor = &mut cursors[i];
        if let Ok(line) = WebLine::parse(&cursor.line) {
            let server = cursor.log.server;
            buf.clear();
            match window.lookup(server, time, line.request)? {
                Some(client) => {
                    line.write_with(&mut buf, client, time);
                    summary.matched += 1;
                }
                None => line.write_with(&mut buf, &names[server], time),
            }
            out.write_all(&buf)?;
            summary.written += 1;
        }
        if cursor.advance(i, &mut counting)? {
            next.push(Reverse((cursor.time, i)));
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::PEN_LOG;

    const ACCESS1: &str = r#"10.0.0.99 - - [14/Nov/2023:22:13:20 +0000] "GET /index.html HTTP/1.0" 200 100
10.0.0.99 - - [14/Nov/2023:22:13:26 +0000] "GET /a.png HTTP/1.1" 200 5 "http://ref/" "UA/1.0"
garbage line that does not parse
10.0.0.99 - - [14/Nov/2023:23:18:20 +0100] "GET /index.html HTTP/1.0" 200 100
10.0.0.99 - - [14/Nov/2023:22:20:00 +0000] "GET /nomatch HTTP/1.0" 404 0
10.0.0.99 - frank [14/Nov/2023:22:46:40 +0000] "GET /far HTTP/1.0" 200 1
10.0.0.99 - - [14/Nov/2023:22:13:21 +0000] "GET /index.html HTTP/1.0"
"#;

    const ACCESS2: &str = r#"10.0.0.98 - - [14/Nov/2023:22:13:21 +0000] "GET /index.html HTTP/1.0" 200 100
10.0.0.98 - - [14/Nov/2023:22:28:20 +0000] "GET /late HTTP/1.0" 200 1
"#;

    fn run(pen_log: &str, logs: &[&'static str]) -> (String, Summary, Vec<(usize, u64)>) {
        let names = [b"10.0.0.1".to_vec(), b"10.0.0.2".to_vec()];
        let mut window = Window::new(pen_log.as_bytes(), &names, 0, Some(600));
        let logs = logs
            .iter()
            .enumerate()
            .map(|(i, text)| WebLog {
                server: i,
                reader: text.as_bytes(),
            })
            .collect();
        let mut out = Vec::new();
        let mut rejected = Vec::new();
        let summary = merge(&mut window, &names, logs, &mut out, |r| {
            rejected.push((r.log, r.line_number));
            Ok(())
        })
        .unwrap();
        (String::from_utf8(out).unwrap(), summary, rejected)
    }

    #[test]
    fn transcript_15_without_the_hour_bug() {
        let (out, summary, rejected) = run(PEN_LOG, &[ACCESS1, ACCESS2]);
        // C mergelogs printed the /a.png line at 21:13:26 (B6) and skipped the last line of
        // access1.log (nothing after the request). The late 22:13:21 line of access1.log comes
        // after 22:46:40 because each log is read in order.
        assert_eq!(
            out,
            r#"203.0.113.1 - - [14/Nov/2023:22:13:20 +0000] "GET /index.html HTTP/1.0" 200 100
203.0.113.2 - - [14/Nov/2023:22:13:21 +0000] "GET /index.html HTTP/1.0" 200 100
203.0.113.3 - - [14/Nov/2023:22:13:26 +0000] "GET /a.png HTTP/1.1" 200 5 "http://ref/" "UA/1.0"
203.0.113.4 - - [14/Nov/2023:22:18:20 +0000] "GET /index.html HTTP/1.0" 200 100
10.0.0.1 - - [14/Nov/2023:22:20:00 +0000] "GET /nomatch HTTP/1.0" 404 0
203.0.113.5 - - [14/Nov/2023:22:28:20 +0000] "GET /late HTTP/1.0" 200 1
203.0.113.6 - frank [14/Nov/2023:22:46:40 +0000] "GET /far HTTP/1.0" 200 1
10.0.0.1 - - [14/Nov/2023:22:13:21 +0000] "GET /index.html HTTP/1.0"
"#
        );
        assert_eq!(rejected, [(0, 3)]);
        assert_eq!(
            summary,
            Summary {
                written: 8,
                matched: 6,
                rejected: 1
            }
        );
    }

    #[test]
    fn ties_go_to_the_first_log_and_empty_logs_are_fine() {
        let a = "h - - [14/Nov/2023:22:13:20 +0000] \"GET /a HTTP/1.0\" 200 1\n";
        let b = "h - - [14/Nov/2023:22:13:20 +0000] \"GET /b HTTP/1.0\" 200 1\n";
        let (out, _, _) = run("", &[b, a]);
        assert!(
            out.starts_with("10.0.0.1 - - [14/Nov/2023:22:13:20 +0000] \"GET /b"),
            "{out}"
        );
        let (out, summary, _) = run("", &["", ""]);
        assert_eq!((out.as_str(), summary.written), ("", 0));
    }
}
