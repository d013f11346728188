//! Fuzz target: the `-H` rewriter (`pen::http::Rewriter`), which adds X-Forwarded-Proto and
//! X-Forwarded-For to every request head of a client's byte stream and must change nothing
//! else (man/pen.1, HTTP HEADER INSERTION).
//!
//! The target checks pen against a model written here from the man page's rules: the model
//! takes the whole stream at once and lists what happens to each byte (kept, removed, or bytes
//! added), so "only the head is ever changed" is checked piece by piece, and the streaming
//! rewriter is then checked to give the same bytes however the stream is cut into reads.
//!
//! The tests crate cannot name httparse, so the model recognises request heads with its own
//! copy of httparse 1.10's request grammar (strict mode, as pen uses it): the same bytes are
//! accepted, the same error is named, and a head cut short is "partial" at the same points.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use pen::balancer::XffMode;
use pen::http::{first_line_undecided, looks_like_http1, Proto, Rejected, Rewriter, MAX_HEAD};

/// pen's longest chunk-size line (`http::MAX_CHUNK_LINE`, private there).
const MAX_CHUNK_LINE: usize = 4096;
/// pen's most header lines in a head (`http::head::MAX_HEADERS`).
const MAX_HEADERS: usize = 100;
/// The longest stream a repeat directive may build: enough to cross `MAX_HEAD`.
const EXPANDED_MAX: usize = MAX_HEAD + 8 * 1024;
/// Streams up to this long are also fed one byte per read.
const BYTEWISE_MAX: usize = 2048;
/// Streams up to this long are also cut in two at every position.
const EVERY_CUT_MAX: usize = 64;

/// The `-H` rewriter fed a client's byte stream in reads cut at fuzzed points.
///
/// Input: `flags`, `cuts`, then the client address (none, 4 or 16 bytes, by `flags` bits 2-3),
/// an optional repeat directive (`flags` bit 4: 6 bytes, a slice of the stream repeated up to
/// `MAX_HEAD` + 8 KiB, to reach the size limits), `cuts % 17` cut points (2 bytes each, scaled
/// to the stream), then the stream. `flags` bit 0 picks `XffMode::Keep`, bit 1 `Proto::Https`.
///
/// Invariants:
/// - Model: fed as one read, pen sends exactly what the model says and refuses exactly when
///   and why the model refuses: a request line or header that httparse rejects (unless the
///   connection's first bytes, or the bytes after CONNECT/upgrade, do not look like HTTP/1.x:
///   then they pass untouched; the verdict rests on the first `MAX_HEAD` bytes, and waits for
///   the end of a first line of text), a head over `MAX_HEAD`, an invalid, conflicting or ambiguous
///   Content-Length/Transfer-Encoding, a chunk-size line that is not 1-16 hex digits, optional
///   blanks and an extension ending in CRLF (or longer than 4096 bytes), a chunk not followed
///   by CRLF. An upgrade request's body is followed like any other before the switch.
/// - Only heads change: walking pen's output with the model's pieces and putting back what
///   was removed (nothing but whole X-Forwarded-Proto lines, in append mode) and taking out
///   what was added (`X-Forwarded-Proto: <proto>` and `X-Forwarded-For: <client>` lines with
///   the line ending of the head's blank line, just before it, or `, <client>` at the end of
///   the last X-Forwarded-For value, in append mode) gives back the input byte for byte, up
///   to where pen stopped. Bodies, chunk framing, trailers and tunnelled bytes are untouched.
/// - Split independence: fed in any reads (the fuzzed cuts, one byte at a time, every cut in
///   two), pen sends the same bytes and refuses for the same reason, with one allowance: a
///   head refused as malformed in one read may, when it never gets its blank line before
///   EOF, be held and then passed on unchanged at EOF (man page: held bytes "can never form a
///   request").
pub fn xff_rewriter(data: &[u8]) {
    let Some(case) = Case::decode(data) else {
        return;
    };
    let stream = &case.stream[..];
    let (pieces, verdict) = Model::run(&case);
    let whole = case.run([stream].into_iter());
    check_verdict(&case, &verdict, &whole);
    check_pieces(&case, &pieces, whole.out());

    let mut cuts = case.cuts.clone();
    cuts.push(stream.len());
    let mut start = 0;
    let reads = cuts.iter().map(|&end| {
        let read = &stream[start..end];
        start = end;
        read
    });
    compare_split(&case, &whole, &case.run(reads), "the fuzzed cuts");
    if stream.len() <= BYTEWISE_MAX {
        let bytewise = case.run(stream.chunks(1));
        compare_split(&case, &whole, &bytewise, "one byte per read");
    }
    if stream.len() <= EVERY_CUT_MAX {
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            compare_split(&case, &whole, &case.run([a, b].into_iter()), "a cut in two");
        }
    }
}

/// One decoded input.
struct Case {
    client: Option<IpAddr>,
    proto: Proto,
    mode: XffMode,
    /// Where reads end, ascending, within the stream.
    cuts: Vec<usize>,
    stream: Vec<u8>,
}

/// What pen did with a stream: everything sent (after `finish`), or the reason it refused
/// and what it had sent before.
#[derive(Debug)]
enum Outcome {
    Sent(Vec<u8>),
    Refused(Rejected, Vec<u8>),
}

impl Outcome {
    fn out(&self) -> &[u8] {
        match self {
            Outcome::Sent(out) | Outcome::Refused(_, out) => out,
        }
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

/// `v` (0..=65535) as a position in `0..=len`.
fn scale(v: u16, len: usize) -> usize {
    (usize::from(v) * (len + 1)) >> 16
}

impl Case {
    fn decode(data: &[u8]) -> Option<Case> {
        let mut rest = data;
        let flags = take(&mut rest, 1)?[0];
        let cut_count = usize::from(take(&mut rest, 1)?[0]) % 17;
        let mode = if flags & 1 == 0 {
            XffMode::Append
        } else {
            XffMode::Keep
        };
        let proto = if flags & 2 == 0 {
            Proto::Http
        } else {
            Proto::Https
        };
        let client = match (flags >> 2) & 3 {
            0 => None,
            2 => {
                let b: [u8; 16] = take(&mut rest, 16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => {
                let b: [u8; 4] = take(&mut rest, 4)?.try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            }
        };
        let repeat = if flags & 0x10 != 0 {
            let b = take(&mut rest, 6)?;
            let word = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
            Some((word(0), word(2), word(4)))
        } else {
            None
        };
        let mut cut_words = Vec::with_capacity(cut_count);
        for _ in 0..cut_count {
            let b = take(&mut rest, 2)?;
            cut_words.push(u16::from_be_bytes([b[0], b[1]]));
        }
        let mut stream = rest.to_vec();
        if let Some((a, b, times)) = repeat {
            let (a, b) = (scale(a, stream.len()), scale(b, stream.len()));
            let (a, b) = (a.min(b), a.max(b));
            let piece = stream[a..b].to_vec();
            if !piece.is_empty() {
                let room = EXPANDED_MAX.saturating_sub(stream.len()) / piece.len();
                let times = usize::from(times).min(room);
                let tail = stream.split_off(b);
                for _ in 0..times {
                    stream.extend_from_slice(&piece);
                }
                stream.extend_from_slice(&tail);
            }
        }
        let mut cuts: Vec<usize> = cut_words
            .into_iter()
            .map(|w| scale(w, stream.len()))
            .collect();
        cuts.sort_unstable();
        Some(Case {
            client,
            proto,
            mode,
            cuts,
            stream,
        })
    }

    /// Feed pen these reads, then EOF.
    fn run<'a>(&self, reads: impl Iterator<Item = &'a [u8]>) -> Outcome {
        let mut r = Rewriter::new(self.client, self.proto, self.mode);
        let mut out = Vec::new();
        for read in reads {
            if let Err(e) = r.feed(read, &mut out) {
                return Outcome::Refused(e, out);
            }
        }
        r.finish(&mut out);
        Outcome::Sent(out)
    }
}

/// What the model says happens to a stretch of the stream.
#[derive(Debug)]
enum Piece {
    /// Sent as it came.
    Same(Range<usize>),
    /// Not sent (an X-Forwarded-Proto line in append mode).
    Removed(Range<usize>),
    /// Sent, though not in the stream.
    Added(Addition),
}

/// What pen may add to a head.
#[derive(Debug, Clone, Copy)]
enum Addition {
    /// `X-Forwarded-Proto: <proto>`, with CRLF or LF.
    ProtoLine { crlf: bool },
    /// `X-Forwarded-For: <client>`, with CRLF or LF.
    ForLine { crlf: bool },
    /// `, <client>` after a client's X-Forwarded-For value, or ` <client>` after an empty one
    /// (append mode).
    AppendFor { empty: bool },
}

/// The bytes of each `Addition` for one case, made once.
struct Additions {
    proto: [Vec<u8>; 2],
    r#for: [Vec<u8>; 2],
    append: [Vec<u8>; 2],
}

impl Additions {
    fn new(case: &Case) -> Additions {
        let client = case
            .client
            .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
        let proto = match case.proto {
            Proto::Http => "http",
            Proto::Https => "https",
        };
        let lines = |text: String| {
            [
                format!("{text}\r\n").into_bytes(),
                format!("{text}\n").into_bytes(),
            ]
        };
        Additions {
            proto: lines(format!("X-Forwarded-Proto: {proto}")),
            r#for: lines(format!("X-Forwarded-For: {client}")),
            append: [
                format!(", {client}").into_bytes(),
                format!(" {client}").into_bytes(),
            ],
        }
    }

    fn bytes(&self, a: Addition) -> &[u8] {
        match a {
            Addition::ProtoLine { crlf } => &self.proto[usize::from(!crlf)],
            Addition::ForLine { crlf } => &self.r#for[usize::from(!crlf)],
            Addition::AppendFor { empty } => &self.append[usize::from(empty)],
        }
    }
}

/// The model's verdict: None when pen should send everything, or the `Debug` text of the
/// `Rejected` it should refuse with.
type Verdict = Option<String>;

fn check_verdict(case: &Case, verdict: &Verdict, whole: &Outcome) {
    let got = match whole {
        Outcome::Sent(_) => None,
        Outcome::Refused(r, _) => Some(format!("{r:?}")),
    };
    assert_eq!(
        &got,
        verdict,
        "fed as one read, pen's verdict differs from the model's (mode {:?}, stream {:?})",
        case.mode,
        String::from_utf8_lossy(&case.stream[..case.stream.len().min(400)])
    );
    if let Outcome::Refused(r, _) = whole {
        // The warning pen logs says what was wrong.
        let text = r.to_string();
        match r {
            Rejected::BadFraming(what) => assert!(text.contains(what), "{text}"),
            Rejected::Malformed(e) => assert!(text.contains(&e.to_string()), "{text}"),
            Rejected::HeadTooLarge => assert!(text.contains(&MAX_HEAD.to_string()), "{text}"),
            Rejected::BadChunk => assert!(text.contains("chunk"), "{text}"),
        }
    }
}

/// Walk pen's output with the model's pieces: undo every edit and get the input back.
fn check_pieces(case: &Case, pieces: &[Piece], out: &[u8]) {
    let input = &case.stream[..];
    let additions = Additions::new(case);
    let append = case.mode == XffMode::Append;
    let mut recovered: Vec<u8> = Vec::with_capacity(input.len());
    let mut at = 0;
    for piece in pieces {
        match piece {
            Piece::Same(r) => {
                let sent = out.get(at..at + r.len());
                assert!(
                    sent == Some(&input[r.clone()]),
                    "pen's output at {at} is not input {r:?} ({:?}) unchanged\n  pen sent: {:?}",
                    String::from_utf8_lossy(&input[r.clone()]),
                    String::from_utf8_lossy(&out[..out.len().min(600)])
                );
                recovered.extend_from_slice(&input[r.clone()]);
                at += r.len();
            }
            Piece::Added(a) => {
                assert!(
                    append || !matches!(a, Addition::AppendFor { .. }),
                    "the model appended to a client's X-Forwarded-For in keep mode"
                );
                let bytes = additions.bytes(*a);
                assert!(
                    out[at..].starts_with(bytes),
                    "pen did not add {:?} at {at}\n  pen sent: {:?}",
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&out[..out.len().min(600)])
                );
                at += bytes.len();
            }
            Piece::Removed(r) => {
                let line = &input[r.clone()];
                assert!(
                    append
                        && line.len() > 18
                        && line[..18].eq_ignore_ascii_case(b"x-forwarded-proto:")
                        && line.ends_with(b"\n"),
                    "the model removed {:?}",
                    String::from_utf8_lossy(line)
                );
                recovered.extend_from_slice(line);
            }
        }
    }
    assert_eq!(
        at,
        out.len(),
        "pen sent more than the model: {:?}",
        String::from_utf8_lossy(&out[at.min(out.len())..])
    );
    assert!(
        input.starts_with(&recovered),
        "undoing pen's edits does not give back the input"
    );
}

/// A run over other reads must give what the run over one read gave.
fn compare_split(case: &Case, whole: &Outcome, split: &Outcome, how: &str) {
    let show = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(600)]).into_owned();
    match (whole, split) {
        (Outcome::Sent(a), Outcome::Sent(b)) if a == b => {}
        (Outcome::Refused(r1, a), Outcome::Refused(r2, b)) if r1 == r2 && a == b => {}
        (Outcome::Refused(Rejected::Malformed(_), a), Outcome::Sent(b))
            if b.starts_with(a) && held_at_eof(&case.stream, &b[a.len()..]) => {}
        _ => panic!(
            "fed as {how} (cuts {:?}), pen differs from one read\n  one read: {:?} {:?}\n  split:    {:?} {:?}",
            case.cuts,
            match whole {
                Outcome::Sent(_) => None,
                Outcome::Refused(r, _) => Some(r),
            },
            show(whole.out()),
            match split {
                Outcome::Sent(_) => None,
                Outcome::Refused(r, _) => Some(r),
            },
            show(split.out()),
        ),
    }
}

/// `tail` is the end of the stream, an unfinished head: after any blank lines before its
/// request line, no blank line ends it.
fn held_at_eof(stream: &[u8], tail: &[u8]) -> bool {
    let start = tail
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(tail.len());
    let rest = &tail[start..];
    stream.ends_with(tail)
        && !rest.windows(2).any(|w| w == b"\n\n")
        && !rest.windows(3).any(|w| w == b"\n\r\n")
}

/// The rules of the man page, over the whole stream at once.
struct Model<'a> {
    case: &'a Case,
    input: &'a [u8],
    pieces: Vec<Piece>,
    /// Heads rewritten so far.
    requests: usize,
    /// The last head asked to switch protocols.
    switching: bool,
}

/// How a head's body is framed.
enum Body {
    None,
    Length(u64),
    Chunked,
}

impl<'a> Model<'a> {
    fn run(case: &'a Case) -> (Vec<Piece>, Verdict) {
        let mut m = Model {
            case,
            input: &case.stream,
            pieces: Vec::new(),
            requests: 0,
            switching: false,
        };
        let verdict = m.stream().err();
        (m.pieces, verdict)
    }

    fn same(&mut self, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        match self.pieces.last_mut() {
            Some(Piece::Same(last)) if last.end == r.start => last.end = r.end,
            _ => self.pieces.push(Piece::Same(r)),
        }
    }

    /// Requests one after the other; Err(reason) when pen must refuse.
    fn stream(&mut self) -> Result<(), String> {
        let len = self.input.len();
        let mut pos = 0;
        while pos < len {
            let rest = &self.input[pos..];
            // pen judges a head by its first MAX_HEAD bytes.
            let head = match parse_head(&rest[..rest.len().min(MAX_HEAD)]) {
                Head::Partial if rest.len() > MAX_HEAD => return Err("HeadTooLarge".into()),
                // Held until EOF, then sent as it is.
                Head::Partial => {
                    self.same(pos..len);
                    return Ok(());
                }
                Head::Invalid(e) => {
                    // At the start of a connection or after a protocol switch, bytes that are
                    // not HTTP/1.x pass untouched, and so, at EOF, does a first line that was
                    // never finished. The verdict rests on the first MAX_HEAD bytes.
                    let probe = &rest[..rest.len().min(MAX_HEAD)];
                    let may_tunnel = self.requests == 0 || self.switching;
                    let unfinished = rest.len() <= MAX_HEAD && first_line_undecided(probe);
                    if may_tunnel && (unfinished || !looks_like_http1(probe)) {
                        self.same(pos..len);
                        return Ok(());
                    }
                    return Err(format!("Malformed({e})"));
                }
                Head::Complete(h) => h,
            };
            if head.len > MAX_HEAD {
                return Err("HeadTooLarge".into());
            }
            let body = self.framing(rest, &head)?;
            self.rewrite(pos, &head);
            self.requests += 1;
            pos += head.len;
            match body {
                Body::None => {}
                Body::Length(n) => {
                    let end = usize::try_from(n).map_or(len, |n| len.min(pos + n));
                    self.same(pos..end);
                    pos = end;
                }
                Body::Chunked => match self.chunked(pos)? {
                    Some(end) => pos = end,
                    None => return Ok(()),
                },
            }
        }
        Ok(())
    }

    /// How the body after `head` is framed, or why the request is refused (RFC 9112 section
    /// 6; the man page's list). Also notes whether the request asks to switch protocols.
    fn framing(&mut self, rest: &[u8], head: &ParsedHead) -> Result<Body, String> {
        let bad = |what: &str| Err(format!("BadFraming({what:?})"));
        let mut length: Option<u64> = None;
        let mut te = false;
        let mut chunked = false;
        let mut upgrade = false;
        let mut connection_upgrade = false;
        for h in &head.headers {
            let name = &rest[h.name.clone()];
            let value = &rest[h.value.clone()];
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("content-length") {
                // A list of equal decimal numbers of at most 18 digits.
                let mut n: Option<u64> = None;
                for part in value.split(|b| *b == b',').map(trim) {
                    let v = std::str::from_utf8(part)
                        .ok()
                        .filter(|p| !p.is_empty() && p.len() <= 18)
                        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|p| p.parse::<u64>().ok());
                    match v {
                        Some(v) if n.is_none_or(|n| n == v) => n = Some(v),
                        _ => return bad("invalid Content-Length"),
                    }
                }
                let Some(n) = n else {
                    return bad("invalid Content-Length");
                };
                if length.is_some_and(|l| l != n) {
                    return bad("conflicting Content-Length headers");
                }
                length = Some(n);
            } else if is("transfer-encoding") {
                te = true;
                let codings: Vec<&[u8]> = value
                    .split(|b| *b == b',')
                    .map(trim)
                    .filter(|c| !c.is_empty())
                    .collect();
                chunked = codings
                    .last()
                    .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            } else if is("upgrade") {
                upgrade = true;
            } else if is("connection") {
                connection_upgrade |= value
                    .split(|b| *b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"));
            }
        }
        if te {
            if length.is_some() {
                return bad("both Transfer-Encoding and Content-Length");
            }
            if head.version == 0 {
                return bad("Transfer-Encoding in an HTTP/1.0 request");
            }
            if !chunked {
                return bad("Transfer-Encoding whose last coding is not chunked");
            }
        }
        self.switching = rest[head.method.clone()].eq_ignore_ascii_case(b"CONNECT")
            || (upgrade && connection_upgrade);
        Ok(if chunked {
            Body::Chunked
        } else {
            match length {
                None | Some(0) => Body::None,
                Some(n) => Body::Length(n),
            }
        })
    }

    /// The pieces of the head at `pos`: client lines kept or dropped, ours added before the
    /// blank line.
    fn rewrite(&mut self, pos: usize, head: &ParsedHead) {
        let rest = &self.input[pos..];
        let append = self.case.mode == XffMode::Append;
        let is = |h: &Header, n: &str| rest[h.name.clone()].eq_ignore_ascii_case(n.as_bytes());
        let last_xff = head.headers.iter().rposition(|h| is(h, "x-forwarded-for"));
        let any_xfp = head.headers.iter().any(|h| is(h, "x-forwarded-proto"));
        let mut cursor = pos;
        for (i, h) in head.headers.iter().enumerate() {
            if append && is(h, "x-forwarded-proto") {
                self.same(cursor..pos + h.line.start);
                self.pieces
                    .push(Piece::Removed(pos + h.line.start..pos + h.line.end));
                cursor = pos + h.line.end;
            } else if append && Some(i) == last_xff {
                self.same(cursor..pos + h.value.end);
                let empty = h.value.is_empty();
                self.pieces
                    .push(Piece::Added(Addition::AppendFor { empty }));
                cursor = pos + h.value.end;
            }
        }
        // The blank line that ends the head, and its line ending.
        let crlf = rest[..head.len].ends_with(b"\r\n");
        let blank = pos + head.len - if crlf { 2 } else { 1 };
        self.same(cursor..blank);
        if append || !any_xfp {
            self.pieces.push(Piece::Added(Addition::ProtoLine { crlf }));
        }
        if last_xff.is_none() {
            self.pieces.push(Piece::Added(Addition::ForLine { crlf }));
        }
        self.same(blank..pos + head.len);
    }

    /// A chunked body from `pos`: Some(where the next request starts), None at EOF.
    fn chunked(&mut self, mut pos: usize) -> Result<Option<usize>, String> {
        let input = self.input;
        loop {
            let Some(nl) = input[pos..].iter().position(|b| *b == b'\n') else {
                if input.len() - pos > MAX_CHUNK_LINE {
                    return Err("BadChunk".into());
                }
                self.same(pos..input.len());
                return Ok(None);
            };
            let line = &input[pos..pos + nl + 1];
            let size = chunk_size(line).ok_or("BadChunk")?;
            self.same(pos..pos + line.len());
            pos += line.len();
            if size == 0 {
                return Ok(self.trailers(pos));
            }
            let end = usize::try_from(size).map_or(input.len(), |n| input.len().min(pos + n));
            self.same(pos..end);
            pos = end;
            // CRLF after the data.
            for want in [b'\r', b'\n'] {
                match input.get(pos) {
                    None => return Ok(None),
                    Some(&b) if b == want => {
                        self.same(pos..pos + 1);
                        pos += 1;
                    }
                    Some(_) => return Err("BadChunk".into()),
                }
            }
        }
    }

    /// The trailer section from `pos`: lines up to one made of nothing but CRs. Some(its end),
    /// None at EOF.
    fn trailers(&mut self, pos: usize) -> Option<usize> {
        let input = self.input;
        let mut line_start = pos;
        for (i, &b) in input.iter().enumerate().skip(pos) {
            if b == b'\n' {
                if input[line_start..i].iter().all(|b| *b == b'\r') {
                    self.same(pos..i + 1);
                    return Some(i + 1);
                }
                line_start = i + 1;
            }
        }
        self.same(pos..input.len());
        None
    }
}

/// The size of a chunk-size line (RFC 9112 section 7.1: `1*16HEXDIG [BWS] [";" ext] CRLF`,
/// extensions being any bytes but CR and LF, as httparse accepts them), or None if it is not
/// one, or longer than pen's limit.
fn chunk_size(line: &[u8]) -> Option<u64> {
    if line.len() > MAX_CHUNK_LINE {
        return None;
    }
    let body = line.strip_suffix(b"\r\n")?;
    if body.iter().any(|b| matches!(b, b'\r' | b'\n')) {
        return None;
    }
    let digits = body.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let after = &body[digits..];
    let blanks = after
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let after = &after[blanks..];
    if !after.is_empty() && after[0] != b';' {
        return None;
    }
    let hex = std::str::from_utf8(&body[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
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

/// What the start of a buffer is, by httparse's rules.
enum Head {
    Complete(ParsedHead),
    Partial,
    /// httparse's error, as its `Debug` names it.
    Invalid(&'static str),
}

struct ParsedHead {
    /// Through the blank line.
    len: usize,
    method: Range<usize>,
    /// The minor version: 0 or 1.
    version: u8,
    headers: Vec<Header>,
}

struct Header {
    name: Range<usize>,
    /// Without the blanks around it.
    value: Range<usize>,
    /// The whole line, line ending included.
    line: Range<usize>,
}

/// httparse's tchar (method and header name).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// httparse's request-target bytes.
fn is_uri_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// httparse's header value bytes.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80
}

/// `httparse::Request::parse` with 100 header slots and the default (strict) config,
/// rewritten byte by byte from httparse 1.10.1: where it stops, what it reports.
fn parse_head(b: &[u8]) -> Head {
    use Head::{Invalid, Partial};
    // A byte, or the partial result.
    macro_rules! at {
        ($i:expr) => {
            match b.get($i) {
                Some(&c) => c,
                None => return Partial,
            }
        };
    }
    // A line end at `$i` ('\r' must be followed by '\n'): the index after it.
    macro_rules! eol {
        ($i:expr, $err:expr) => {
            match at!($i) {
                b'\r' => match at!($i + 1) {
                    b'\n' => $i + 2,
                    _ => return Invalid($err),
                },
                b'\n' => $i + 1,
                _ => return Invalid($err),
            }
        };
    }
    let mut i = 0;
    // Blank lines before the request line.
    while matches!(at!(i), b'\r' | b'\n') {
        i = eol!(i, "NewLine");
    }
    let method_start = i;
    if !is_token(at!(i)) {
        return Invalid("Token");
    }
    loop {
        i += 1;
        match at!(i) {
            b' ' => break,
            c if is_token(c) => {}
            _ => return Invalid("Token"),
        }
    }
    let method = method_start..i;
    i += 1;
    let uri_start = i;
    while is_uri_byte(at!(i)) {
        i += 1;
    }
    if b[i] != b' ' || i == uri_start || std::str::from_utf8(&b[uri_start..i]).is_err() {
        return Invalid("Token");
    }
    i += 1;
    let version = if b.len() - i >= 8 {
        match &b[i..i + 8] {
            b"HTTP/1.0" => 0,
            b"HTTP/1.1" => 1,
            _ => return Invalid("Version"),
        }
    } else {
        let have = &b[i..];
        if b"HTTP/1.".iter().zip(have).any(|(want, got)| want != got) {
            return Invalid("Version");
        }
        return Partial;
    };
    i += 8;
    i = eol!(i, "NewLine");
    let mut headers = Vec::new();
    loop {
        let line_start = i;
        match at!(i) {
            b'\r' | b'\n' => {
                let len = eol!(i, "NewLine");
                return Head::Complete(ParsedHead {
                    len,
                    method,
                    version,
                    headers,
                });
            }
            c if !is_token(c) => return Invalid("HeaderName"),
            _ => {}
        }
        while is_token(at!(i)) {
            i += 1;
        }
        if b[i] != b':' {
            return Invalid("HeaderName");
        }
        let name = line_start..i;
        i += 1;
        while matches!(at!(i), b' ' | b'\t') {
            i += 1;
        }
        let value_start = i;
        let value_end;
        match at!(i) {
            b'\r' | b'\n' => {
                // An empty value, where the line ends.
                value_end = i;
                i = eol!(i, "HeaderValue");
            }
            c if is_value_byte(c) => {
                while is_value_byte(at!(i)) {
                    i += 1;
                }
                let end = i;
                i = eol!(i, "HeaderValue");
                value_end = value_start
                    + b[value_start..end]
                        .iter()
                        .rposition(|c| !matches!(c, b' ' | b'\t'))
                        .map_or(0, |p| p + 1);
            }
            _ => return Invalid("HeaderValue"),
        }
        if headers.len() == MAX_HEADERS {
            return Invalid("TooManyHeaders");
        }
        headers.push(Header {
            name,
            value: value_start..value_end,
            line: line_start..i,
        });
    }
}
