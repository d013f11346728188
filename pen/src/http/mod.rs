//! HTTP header insertion (`-H`, the `http` command): every HTTP/1.x request a client sends gets
//! `X-Forwarded-For: <client>` and `X-Forwarded-Proto: http|https`, and nothing else changes.
//!
//! The `Rewriter` follows the client-to-server byte stream of one connection request by
//! request: it parses each request head with `httparse` (holding back a head that arrives in
//! pieces until it is whole), rewrites it, then follows the body by its `Content-Length` or its
//! chunked framing, passing body bytes through exactly as they came, to find where the next
//! request starts. So pipelined requests, heads split across reads, and any method are handled,
//! and a body can never be mistaken for a head (pen 0.34.1 rewrote the first `\r\n\r\n` of each
//! read, wherever it was).
//!
//! The rules for what is not a well-formed request (the man page says the same):
//! - The first bytes of a connection that are not an HTTP/1.x request line: the whole
//!   connection is passed through untouched (another protocol on an `-H` port).
//! - A head that starts as HTTP/1.x but is malformed, larger than `MAX_HEAD`, or whose body
//!   length is ambiguous (both Content-Length and Transfer-Encoding, a bad Content-Length, a
//!   Transfer-Encoding other than chunked): the connection is closed and that request is not
//!   forwarded. Passing it on unrewritten would let a client hide its own X-Forwarded-For from
//!   pen, and an ambiguous length is how requests are smuggled.
//! - After CONNECT or a protocol upgrade (`Connection: upgrade` with `Upgrade:`), and its body
//!   if it has one, the rest of the connection is passed through untouched (a WebSocket, for
//!   instance), unless what follows is another HTTP/1.x request: the server refused the switch,
//!   and the client must not be able to slip an unrewritten request through by asking for one
//!   first.

mod head;
// Which connections count as HTTP: a policy (generous on purpose), shared with the fuzz
// target's model of the rewriter.
pub use head::{first_line_undecided, looks_like_http1};
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::warn;

use crate::balancer::XffMode;
use crate::relay::Rewrite;
use crate::shared::RateLimit;
use head::{Framing, Parsed};

/// The largest request head pen rewrites (request line and headers).
pub const MAX_HEAD: usize = 64 * 1024;

/// The longest chunk-size line (size and extensions) of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// The scheme the client used, for X-Forwarded-Proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http,
    /// The client connection was TLS, terminated by pen.
    Https,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Http => "http",
            Proto::Https => "https",
        }
    }
}

/// Why a request was refused; the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Malformed(httparse::Error),
    HeadTooLarge,
    BadFraming(&'static str),
    BadChunk,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Malformed(e) => write!(f, "malformed request head: {e}"),
            Rejected::HeadTooLarge => write!(f, "request head larger than {MAX_HEAD} bytes"),
            Rejected::BadFraming(what) => write!(f, "request refused: {what}"),
            Rejected::BadChunk => write!(f, "malformed chunked body"),
        }
    }
}

/// Counts over every connection, for statistics.
pub struct Stats {
    /// Request heads rewritten.
    pub requests: AtomicU64,
    /// Connections that were not HTTP and passed through untouched.
    pub not_http: AtomicU64,
    /// Connections closed because of a request that could not be rewritten safely.
    pub rejected: AtomicU64,
}

pub static STATS: Stats = Stats {
    requests: AtomicU64::new(0),
    not_http: AtomicU64::new(0),
    rejected: AtomicU64::new(0),
};

static REJECT_LOG: RateLimit = RateLimit::new();

/// Where the rewriter is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a request head (bytes of an unfinished head are held in `held`).
    Head,
    /// Inside a body with this many bytes left.
    Body(u64),
    /// Reading a chunk-size line (held in `held`).
    ChunkSize,
    /// Inside a chunk with this many bytes left, then its CRLF.
    ChunkData(u64),
    /// The CRLF after a chunk's data; the number is how many of its bytes were seen.
    ChunkEnd(u8),
    /// The trailer section after the last chunk; true while inside a non-empty line.
    Trailers(bool),
    /// Everything passes through untouched from here on (not HTTP, or after a protocol
    /// switch).
    Tunnel,
}

/// The `-H` transformation of one client connection's bytes towards the server.
pub struct Rewriter {
    /// The X-Forwarded-For value: the client's address as text.
    client: String,
    proto: Proto,
    mode: XffMode,
    state: State,
    /// An unfinished head or chunk-size line. Empty (no allocation) between requests.
    held: Vec<u8>,
    /// `held` is a head whose first line has ended (it holds a LF). Kept, not searched for, so
    /// that a long line sent a byte at a time costs linear time.
    held_line_ended: bool,
    /// Heads rewritten on this connection.
    requests: u64,
    /// The last request asked to switch protocols (CONNECT, Upgrade): what follows is the new
    /// protocol, unless it is another HTTP/1.x request (the server refused the switch).
    switching: bool,
}

impl Rewriter {
    /// `client` is None for a Unix-socket client (its X-Forwarded-For says `unknown`).
    pub fn new(client: Option<IpAddr>, proto: Proto, mode: XffMode) -> Rewriter {
        Rewriter {
            client: client.map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
            proto,
            mode,
            state: State::Head,
            held: Vec::new(),
            held_line_ended: false,
            requests: 0,
            switching: false,
        }
    }

    /// Append to `out` what to send the server for these bytes from the client. After an
    /// error the connection must be closed; `out` then holds what may still be sent first.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Rejected> {
        self.step(input, out)
            .inspect_err(|r| self.note_rejection(*r))
    }

    fn step(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Rejected> {
        while !input.is_empty() {
            input = match self.state {
                State::Tunnel => {
                    out.extend_from_slice(input);
                    &[]
                }
                State::Body(left) => {
                    let (now, rest) = split(input, left);
                    out.extend_from_slice(now);
                    self.state = match left - now.len() as u64 {
                        0 => State::Head,
                        left => State::Body(left),
                    };
                    rest
                }
                State::ChunkData(left) => {
                    let (now, rest) = split(input, left);
                    out.extend_from_slice(now);
                    self.state = match left - now.len() as u64 {
                        0 => State::ChunkEnd(0),
                        left => State::ChunkData(left),
                    };
                    rest
                }
                State::ChunkEnd(seen) => {
                    let want = [b'\r', b'\n'][usize::from(seen)];
                    if input[0] != want {
                        return Err(Rejected::BadChunk);
                    }
                    out.push(want);
                    self.state = if seen == 0 {
                        State::ChunkEnd(1)
                    } else {
                        State::ChunkSize
                    };
                    &input[1..]
                }
                State::Trailers(in_line) => self.trailers(in_line, input, out),
                State::ChunkSize => self.chunk_size(input, out)?,
                State::Head => self.head(input, out)?,
            };
        }
        Ok(())
    }

    /// The client sent EOF: pass on whatever was held back (an unfinished head or chunk-size
    /// line), unchanged. It can never become a request.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.held = Vec::new();
        self.held_line_ended = false;
    }

    fn head<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], Rejected> {
        if self.held.is_empty() {
            // The usual case: the whole head is in this read; parse it where it is.
            let parsed = self.parse(input, out)?;
            return match parsed {
                Some(len) => Ok(&input[len..]),
                None => {
                    self.held.extend_from_slice(input);
                    self.held_line_ended = input.contains(&b'\n');
                    Ok(&[])
                }
            };
        }
        let old = self.held.len();
        self.held.extend_from_slice(input);
        // Parse again only when the head may have become complete (or the limit is reached):
        // re-parsing on every small read would be quadratic in the head's size.
        let from = old.saturating_sub(3);
        let new = &self.held[from..];
        let may_end =
            new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n");
        let line_ended = input.contains(&b'\n');
        let first_line = line_ended && !self.held_line_ended;
        self.held_line_ended |= line_ended;
        if !(may_end || first_line || self.held.len() > MAX_HEAD) {
            return Ok(&[]);
        }
        let held = std::mem::take(&mut self.held);
        let held_line_ended = std::mem::replace(&mut self.held_line_ended, false);
        match self.parse(&held, out)? {
            Some(len) => self.step(&held[len..], out)?,
            None => {
                self.held = held;
                self.held_line_ended = held_line_ended;
            }
        }
        Ok(&[])
    }

    /// Parse a head at the start of `buf`. Some(length) once it was rewritten into `out` (or
    /// the connection turned out not to be HTTP and `buf` was passed through: then the whole
    /// of `buf`); None while it is unfinished.
    fn parse(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, Rejected> {
        // Only the first MAX_HEAD bytes are parsed, so that the verdict on a head does not
        // depend on how many bytes past the limit happened to arrive in the same read.
        let window = &buf[..buf.len().min(MAX_HEAD)];
        let parsed = head::parse_and_rewrite(window, &self.client, self.proto, self.mode, out);
        match parsed? {
            Parsed::Complete {
                len,
                framing,
                switching,
            } => {
                self.requests += 1;
                self.switching = switching;
                STATS.requests.fetch_add(1, Ordering::Relaxed);
                self.state = match framing {
                    Framing::None => State::Head,
                    Framing::Length(n) => State::Body(n),
                    Framing::Chunked => State::ChunkSize,
                };
                Ok(Some(len))
            }
            Parsed::Partial if buf.len() <= MAX_HEAD => Ok(None),
            // Still a valid start of a request after MAX_HEAD bytes: HTTP, too large.
            // (Bytes past the limit are not looked at: one that would make the head invalid
            // cannot make it "another protocol" after 64 KiB.)
            Parsed::Partial => Err(Rejected::HeadTooLarge),
            Parsed::Invalid(e) => self.not_a_request(buf, Rejected::Malformed(e), out),
        }
    }

    /// The start of the stream is not a request head pen can rewrite: another protocol
    /// (passed through) or broken HTTP (refused).
    fn not_a_request(
        &mut self,
        buf: &[u8],
        reason: Rejected,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, Rejected> {
        // Decide on the first MAX_HEAD bytes only: how much more came in the same read must
        // not change the verdict.
        let probe = &buf[..buf.len().min(MAX_HEAD)];
        let may_tunnel = self.requests == 0 || self.switching;
        if may_tunnel && buf.len() <= MAX_HEAD && head::first_line_undecided(probe) {
            // An unfinished first line (`FOO  /`, cut by the client before "HTTP/1.1") may
            // still turn out to be HTTP, or not: wait for the rest of it, as for a partial head.
            // Deciding on the piece would make the verdict depend on how the bytes were split.
            return Ok(None);
        }
        if may_tunnel && !head::looks_like_http1(probe) {
            if self.requests == 0 {
                STATS.not_http.fetch_add(1, Ordering::Relaxed);
            }
            self.state = State::Tunnel;
            out.extend_from_slice(buf);
            return Ok(Some(buf.len()));
        }
        Err(reason)
    }

    fn note_rejection(&self, reason: Rejected) {
        STATS.rejected.fetch_add(1, Ordering::Relaxed);
        if REJECT_LOG.allow(Instant::now()) {
            warn!(
                "-H: closing the connection of client {}: {reason}",
                self.client
            );
        }
    }

    fn chunk_size<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], Rejected> {
        let Some(nl) = input.iter().position(|b| *b == b'\n') else {
            if self.held.len() + input.len() > MAX_CHUNK_LINE {
                return Err(Rejected::BadChunk);
            }
            self.held.extend_from_slice(input);
            return Ok(&[]);
        };
        let (line_end, rest) = input.split_at(nl + 1);
        let size = if self.held.is_empty() {
            // The same limit as for a line that came in pieces.
            if line_end.len() > MAX_CHUNK_LINE {
                return Err(Rejected::BadChunk);
            }
            let size = parse_chunk_size(line_end)?;
            out.extend_from_slice(line_end);
            size
        } else {
            self.held.extend_from_slice(line_end);
            if self.held.len() > MAX_CHUNK_LINE {
                return Err(Rejected::BadChunk);
            }
            let size = parse_chunk_size(&self.held)?;
            out.extend_from_slice(&self.held);
            self.held = Vec::new();
            size
        };
        self.state = match size {
            0 => State::Trailers(false),
            n => State::ChunkData(n),
        };
        Ok(rest)
    }

    fn trailers<'a>(&mut self, mut in_line: bool, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        for (i, b) in input.iter().enumerate() {
            match b {
                b'\n' if !in_line => {
                    out.extend_from_slice(&input[..=i]);
                    self.state = State::Head;
                    return &input[i + 1..];
                }
                b'\n' => in_line = false,
                b'\r' => {}
                _ => in_line = true,
            }
        }
        out.extend_from_slice(input);
        self.state = State::Trailers(in_line);
        &[]
    }
}

/// The chunk size of a complete chunk-size line (ending in CRLF).
fn parse_chunk_size(line: &[u8]) -> Result<u64, Rejected> {
    // RFC 9112: chunk-size = 1*HEXDIG. httparse reads a line with no digits ("\r\n",
    // ";ext\r\n") as size 0, the last chunk; a server that refuses it, or reads it otherwise,
    // would frame what follows differently from pen.
    if !line.first().is_some_and(u8::is_ascii_hexdigit) {
        return Err(Rejected::BadChunk);
    }
    match httparse::parse_chunk_size(line) {
        Ok(httparse::Status::Complete((used, size))) if used == line.len() => Ok(size),
        _ => Err(Rejected::BadChunk),
    }
}

/// The first `n` bytes of `input` (or all of it) and the rest.
fn split(input: &[u8], n: u64) -> (&[u8], &[u8]) {
    let at = usize::try_from(n).map_or(input.len(), |n| n.min(input.len()));
    input.split_at(at)
}

impl Rewrite for Rewriter {
    const ACTIVE: bool = true;

    fn rewrite(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.feed(input, out)
            .map_err(|r| io::Error::new(io::ErrorKind::InvalidData, r.to_string()))
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        Rewriter::finish(self, out);
    }
}
