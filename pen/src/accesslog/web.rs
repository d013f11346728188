//! Web server log lines in Apache's Common or Combined format (or anything that starts like
//! them), as penlogd and mergelogs read them:
//!
//! ```text
//! host SP ident SP user SP [time] SP "request" rest
//! 127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "ref" "agent"
//! ```
//!
//! Only the host, the time and the request matter; what lies between them and after the
//! request is kept as it is. The request ends at the first `"` that Apache did not escape
//! (Apache writes `\"` for a quote inside it), and may be followed by nothing at all (a Common
//! line cut after the request is still read; pen 0.34.1's mergelogs skipped it).

use super::time::{self, TimeError};

/// Why a line is not a web log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebLineError {
    #[error("no host field")]
    NoHost,
    #[error("no [time] field")]
    NoTime,
    #[error("no quoted request")]
    NoRequest,
    #[error("the request has no closing quote")]
    UnclosedRequest,
    #[error(transparent)]
    Time(#[from] TimeError),
}

/// A parsed web log line, borrowing from the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebLine<'a> {
    /// The first field: the client as the web server saw it (pen's address, behind pen).
    pub host: &'a [u8],
    /// Between the host and `[`, its trailing space included (`- frank `).
    pub before_time: &'a [u8],
    /// Inside the brackets.
    pub time: &'a [u8],
    /// Between `]` and the opening quote (usually one space).
    pub after_time: &'a [u8],
    /// Inside the quotes, as the log wrote it.
    pub request: &'a [u8],
    /// After the closing quote, without the newline (status, size, referer, agent, ...).
    pub rest: &'a [u8],
}

fn find(s: &[u8], b: u8) -> Option<usize> {
    s.iter().position(|&c| c == b)
}

/// The end of a quoted string that starts right after an opening quote: the index of the
/// closing quote, skipping backslash escapes.
fn closing_quote(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

impl<'a> WebLine<'a> {
    /// Parse a line (with or without its newline). The time is only located here; `epoch`
    /// converts it.
    pub fn parse(line: &'a [u8]) -> Result<WebLine<'a>, WebLineError> {
        let line = super::pen::strip_newline(line);
        let space = find(line, b' ').ok_or(WebLineError::NoHost)?;
        let host = &line[..space];
        if host.is_empty() {
            return Err(WebLineError::NoHost);
        }
        let mut rest = &line[space..];
        while let Some(r) = rest.strip_prefix(b" ") {
            rest = r;
        }
        let open = find(rest, b'[').ok_or(WebLineError::NoTime)?;
        let before_time = &rest[..open];
        let rest = &rest[open + 1..];
        let close = find(rest, b']').ok_or(WebLineError::NoTime)?;
        let time = &rest[..close];
        let rest = &rest[close + 1..];
        let quote = find(rest, b'"').ok_or(WebLineError::NoRequest)?;
        let after_time = &rest[..quote];
        let rest = &rest[quote + 1..];
        let end = closing_quote(rest).ok_or(WebLineError::UnclosedRequest)?;
        Ok(WebLine {
            host,
            before_time,
            time,
            after_time,
            request: &rest[..end],
            rest: &rest[end + 1..],
        })
    }

    /// Seconds since the epoch of the line's time stamp.
    pub fn epoch(&self) -> Result<i64, TimeError> {
        time::parse(self.time)
    }

    /// Append the line with `client` as its host and `epoch` written as a UTC stamp, newline
    /// included: `client before_time[stamp]after_time"request"rest` (mergelogs' output).
    pub fn write_with(&self, out: &mut Vec<u8>, client: &[u8], epoch: i64) {
        out.extend_from_slice(client);
        out.push(b' ');
        out.extend_from_slice(self.before_time);
        out.push(b'[');
        time::write_utc(out, epoch);
        out.push(b']');
        out.extend_from_slice(self.after_time);
        out.push(b'"');
        out.extend_from_slice(self.request);
        out.push(b'"');
        out.extend_from_slice(self.rest);
        out.push(b'\n');
    }
}

/// The request of a web log line as penlogd sees it: the request field of a Common or Combined
/// line, as mergelogs reads it (so an escaped quote in the user field, `us\"er`, is not taken
/// for the request's); else, for other formats, the text inside the first pair of quotes (the
/// closing quote being the first one not escaped). None without one.
pub fn quoted_request(line: &[u8]) -> Option<&[u8]> {
    if let Ok(web) = WebLine::parse(line) {
        return Some(web.request);
    }
    let open = find(line, b'"')?;
    let rest = &line[open + 1..];
    closing_quote(rest).map(|end| &rest[..end])
}

/// Append `line` with its first field replaced by `client`, plus a newline: penlogd's output
/// for a line it matched. False (nothing written) when the line has no space.
pub fn write_with_host(out: &mut Vec<u8>, line: &[u8], client: &[u8]) -> bool {
    let line = super::pen::strip_newline(line);
    let Some(space) = find(line, b' ') else {
        return false;
    };
    out.extend_from_slice(client);
    out.extend_from_slice(&line[space..]);
    out.push(b'\n');
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn penlogd_reads_the_request_field_past_an_escaped_quote_in_the_user() {
        let line = b"10.0.0.9 - us\\\"er [14/Nov/2023:22:13:26 +0000] \"GET /x HTTP/1.1\" 200 5\n";
        assert_eq!(quoted_request(line).map(s), Some("GET /x HTTP/1.1"));
        // Not a Common line: the first pair of quotes, as before.
        assert_eq!(quoted_request(b"x \"GET /y\" z").map(s), Some("GET /y"));
        assert_eq!(quoted_request(b"no quotes"), None);
    }

    #[test]
    fn common_and_combined_lines() {
        let l = WebLine::parse(
            b"10.0.0.99 - - [14/Nov/2023:22:13:26 +0000] \"GET /a.png HTTP/1.1\" 200 5 \"http://ref/\" \"UA/1.0\"\n",
        )
        .unwrap();
        assert_eq!(s(l.host), "10.0.0.99");
        assert_eq!(s(l.before_time), "- - ");
        assert_eq!(s(l.time), "14/Nov/2023:22:13:26 +0000");
        assert_eq!(s(l.after_time), " ");
        assert_eq!(s(l.request), "GET /a.png HTTP/1.1");
        assert_eq!(s(l.rest), " 200 5 \"http://ref/\" \"UA/1.0\"");
        assert_eq!(l.epoch(), Ok(1_700_000_006));
        let mut out = Vec::new();
        l.write_with(&mut out, b"203.0.113.3", 1_700_000_006);
        assert_eq!(
            s(&out),
            "203.0.113.3 - - [14/Nov/2023:22:13:26 +0000] \"GET /a.png HTTP/1.1\" 200 5 \"http://ref/\" \"UA/1.0\"\n"
        );

        let frank = WebLine::parse(
            b"10.0.0.99   - frank [14/Nov/2023:22:46:40 +0000] \"GET /far HTTP/1.0\" 200 1",
        )
        .unwrap();
        assert_eq!(s(frank.before_time), "- frank ");
        // Nothing after the request: still a line (C mergelogs skipped it).
        let cut = WebLine::parse(
            b"10.0.0.99 - - [14/Nov/2023:22:13:21 +0000] \"GET /index.html HTTP/1.0\"",
        )
        .unwrap();
        assert_eq!(s(cut.rest), "");
        // An escaped quote inside the request.
        let esc =
            WebLine::parse(br#"h - - [14/Nov/2023:22:13:21 +0000] "GET /a\"b\\ HTTP/1.0" 400 0"#)
                .unwrap();
        assert_eq!(s(esc.request), r#"GET /a\"b\\ HTTP/1.0"#);
        assert_eq!(s(esc.rest), " 400 0");
        let empty = WebLine::parse(b"h - - [14/Nov/2023:22:13:21 +0000] \"\" 400 0").unwrap();
        assert_eq!(empty.request, b"");
    }

    #[test]
    fn lines_that_are_not_web_log_lines() {
        let cases: &[(&[u8], WebLineError)] = &[
            (b"garbage line that does not parse", WebLineError::NoTime),
            (b"", WebLineError::NoHost),
            (b" - - [x] \"GET /\" 1", WebLineError::NoHost),
            (b"nospace", WebLineError::NoHost),
            (
                b"h - - [14/Nov/2023:22:13:21 +0000 \"GET /\"",
                WebLineError::NoTime,
            ),
            (
                b"h - - [14/Nov/2023:22:13:21 +0000] GET / 200",
                WebLineError::NoRequest,
            ),
            (
                b"h - - [14/Nov/2023:22:13:21 +0000] \"GET / 200",
                WebLineError::UnclosedRequest,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(
                WebLine::parse(line).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let bad_time = WebLine::parse(b"h - - [yesterday] \"GET /\" 200 1").unwrap();
        assert!(bad_time.epoch().is_err());
    }

    #[test]
    fn penlogd_request_and_host_replacement() {
        let line = b"127.0.0.1 - - [22/Nov/2026:07:40:01 +0000] \"GET /a HTTP/1.0\" 200 10\n";
        assert_eq!(quoted_request(line), Some(&b"GET /a HTTP/1.0"[..]));
        assert_eq!(quoted_request(b"a line without quotes"), None);
        assert_eq!(quoted_request(b"one \" quote"), None);
        let mut out = Vec::new();
        assert!(write_with_host(&mut out, line, b"127.0.0.41"));
        assert_eq!(
            s(&out),
            "127.0.0.41 - - [22/Nov/2026:07:40:01 +0000] \"GET /a HTTP/1.0\" 200 10\n"
        );
        assert!(!write_with_host(&mut out, b"\"x\"", b"c"));
    }
}
