//! One request head: parse it with `httparse`, decide how its body is framed, and write it out
//! with the forwarding headers added. Only the head is ever changed; the bytes of every header
//! line that is kept are copied as they came.

use std::ops::Range;

use super::{Proto, Rejected};
use crate::balancer::XffMode;

/// The most header lines a request may have (HAProxy's default is 101).
pub const MAX_HEADERS: usize = 100;

/// How the bytes after a head are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: the next byte starts the next request.
    None,
    /// A body of exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What parsing the start of the buffer found.
pub enum Parsed {
    /// A whole head of this many bytes, rewritten into the output, and the framing after it.
    /// `switching`: CONNECT or a protocol upgrade; after its body (if any), the connection may
    /// be a tunnel.
    Complete {
        len: usize,
        framing: Framing,
        switching: bool,
    },
    /// Not finished yet.
    Partial,
    /// Not a valid HTTP/1.x request head.
    Invalid(httparse::Error),
}

/// Parse the head at the start of `buf`; if it is complete, append it to `out` with the
/// forwarding headers inserted (`client` is the X-Forwarded-For value).
pub fn parse_and_rewrite(
    buf: &[u8],
    client: &str,
    proto: Proto,
    mode: XffMode,
    out: &mut Vec<u8>,
) -> Result<Parsed, Rejected> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Ok(Parsed::Invalid(e)),
    };
    if len > super::MAX_HEAD {
        return Err(Rejected::HeadTooLarge);
    }
    let offset = |s: &[u8]| s.as_ptr() as usize - buf.as_ptr() as usize;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut upgrade_header = false;
    let mut connection_upgrade = false;
    // Where the value of the last X-Forwarded-For ends (and whether it is empty).
    let mut xff: Option<Range<usize>> = None;
    // Whole lines of X-Forwarded-Proto (removed in Append mode).
    let mut xfp_lines: Vec<Range<usize>> = Vec::new();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(h.value)?;
            if length.is_some_and(|l| l != n) {
                return Err(Rejected::BadFraming("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // Only the last coding decides; it must be chunked for a request to be framed.
            chunked = h
                .value
                .split(|b| *b == b',')
                .map(trim)
                .rfind(|c| !c.is_empty())
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            let start = offset(h.value);
            xff = Some(start..start + h.value.len());
        } else if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            let start = offset(name);
            let value_end = offset(h.value) + h.value.len();
            let end = buf[value_end..len]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(len, |p| value_end + p + 1);
            xfp_lines.push(start..end);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_header = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= h
                .value
                .split(|b| *b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"));
        }
    }
    // Request smuggling defences (RFC 9112 section 6): a request whose length is ambiguous is
    // refused rather than forwarded, because the server might frame it differently.
    if transfer_encoding {
        if length.is_some() {
            return Err(Rejected::BadFraming(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if req.version == Some(0) {
            return Err(Rejected::BadFraming(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !chunked {
            return Err(Rejected::BadFraming(
                "Transfer-Encoding whose last coding is not chunked",
            ));
        }
    }
    // A request that asks to switch protocols still has its body read first (RFC 9110
    // section 7.8, RFC 7540 section 3.2); a server that ignores the Upgrade reads it and then
    // the next request, so that is where pen must look for one.
    let switching = req
        .method
        .is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"))
        || (upgrade_header && connection_upgrade);
    let framing = if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };

    // The head ends with an empty line, "\r\n" or "\n"; new lines go just before it, with the
    // same line ending.
    let eol: &[u8] = if len >= 2 && buf[len - 2] == b'\r' {
        b"\r\n"
    } else {
        b"\n"
    };
    let insert_at = len - eol.len();
    let keep = mode == XffMode::Keep;
    // Keep mode (pen 0.34.1): a header the client sent stays as it is and is not added.
    let add_proto = !keep || xfp_lines.is_empty();
    let add_for = xff.is_none();
    let mut edits: Vec<Edit> = Vec::new();
    if !keep {
        edits.extend(xfp_lines.into_iter().map(Edit::Drop));
        edits.extend(xff.map(Edit::AppendFor));
    }
    edits.sort_by_key(Edit::start);

    out.reserve(len + 64 + client.len());
    let mut cursor = 0;
    for edit in edits {
        out.extend_from_slice(&buf[cursor..edit.start()]);
        match edit {
            Edit::Drop(line) => cursor = line.end,
            Edit::AppendFor(value) => {
                out.extend_from_slice(if value.is_empty() { b" " } else { b", " });
                out.extend_from_slice(client.as_bytes());
                cursor = value.end;
            }
        }
    }
    out.extend_from_slice(&buf[cursor..insert_at]);
    if add_proto {
        out.extend_from_slice(b"X-Forwarded-Proto: ");
        out.extend_from_slice(proto.as_str().as_bytes());
        out.extend_from_slice(eol);
    }
    if add_for {
        out.extend_from_slice(b"X-Forwarded-For: ");
        out.extend_from_slice(client.as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(&buf[insert_at..len]);
    Ok(Parsed::Complete {
        len,
        framing,
        switching,
    })
}

/// A change to a header line the client sent.
enum Edit {
    /// Remove this whole line (an X-Forwarded-Proto in Append mode).
    Drop(Range<usize>),
    /// Append the client's address to this X-Forwarded-For value.
    AppendFor(Range<usize>),
}

impl Edit {
    fn start(&self) -> usize {
        match self {
            Edit::Drop(r) => r.start,
            Edit::AppendFor(r) => r.end,
        }
    }
}

/// A Content-Length value: digits, or a list of equal digit strings (`5, 5`). Anything else,
/// empty included (HAProxy CVE-2023-40225), is refused.
fn content_length(value: &[u8]) -> Result<u64, Rejected> {
    let bad = Rejected::BadFraming("invalid Content-Length");
    let mut found: Option<u64> = None;
    for part in value.split(|b| *b == b',') {
        let part = trim(part);
        if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad);
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(bad);
        }
        found = Some(n);
    }
    found.ok_or(bad)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |p| p + 1);
    &s[start..end]
}

/// Could `buf`, which failed to parse as a request head, be meant as HTTP/1.x? Used to tell
/// malformed HTTP (refused) from another protocol (passed through untouched) when the first
/// request of a connection does not parse. Generous on purpose: anything a lenient server might
/// still take for a request must not slip past the rewriting unrewritten.
pub fn looks_like_http1(buf: &[u8]) -> bool {
    let (rest, line) = first_line(buf);
    // Text (a TLS ClientHello can carry "http/1.1" in its ALPN list), naming HTTP/1.x.
    known_method(rest)
        || (line.iter().all(|b| is_text(*b))
            && line
                .windows(6)
                .any(|w| w[..5].eq_ignore_ascii_case(b"HTTP/") && w[5] != b'2'))
}

/// Can more bytes still change what `looks_like_http1` says of `buf`? While its first line is
/// unfinished and text so far, and does not start with a known method: a later byte can name
/// HTTP/1.x, or turn the line into something else. Deciding on a piece would make the verdict
/// depend on how the client split its bytes.
pub fn first_line_undecided(buf: &[u8]) -> bool {
    let (rest, line) = first_line(buf);
    line.len() == rest.len() && line.iter().all(|b| is_text(*b)) && !known_method(rest)
}

/// `buf` after any blank lines, and its first line (without its LF).
fn first_line(buf: &[u8]) -> (&[u8], &[u8]) {
    let start = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    let line = &rest[..rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len())];
    (rest, line)
}

fn known_method(rest: &[u8]) -> bool {
    const METHODS: &[&[u8]] = &[
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
        b"CONNECT ",
    ];
    METHODS
        .iter()
        .any(|m| rest.len() >= m.len() && rest[..m.len()].eq_ignore_ascii_case(m))
}

fn is_text(b: u8) -> bool {
    b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\r')
}
