//! Fuzz targets: text from outside pen on its way into a page or a log.
//!
//! `html_escape`: pen's `-w` status page (`pen::stats::render_html`) and penstats-web's
//! dashboard, live part and Prometheus metrics, rendered from a snapshot whose every string is
//! fuzzed. A server address is a Unix socket path from the command line or the control port,
//! and penstats-web takes the whole snapshot as JSON from whatever answers at its `--pen`
//! address, so every string of a snapshot can come from outside; so can penstats-web's error
//! text (a failed poll) and its `--pen` argument.
//!
//! `log_escape`: the bytes of a client's read as the `-l` log records them
//! (`pen::accesslog::Request`, the file line and the penlogd datagram) and as the `-ddd`
//! traffic dump prints them (`pen::dump::format`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pen::accesslog::{is_line_byte, FileLine, NetRecord, Request, REQUEST_MAX};
use pen::balancer::{
    ClientStats, ConnStats, Counters, ServerKind, ServerStats, SettingsStats, Snapshot,
};
use penstats_web::history::{ServerKey, ServerSeries};
use penstats_web::metrics::{self, PollCounts};
use penstats_web::page::{self, Health, Live};

/// Field separator in the `html_escape` input.
const SEP: u8 = 0x1f;
/// Marker brackets: private-use characters that no escaper touches and no template holds.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// The strings of one rendering, by role.
const PEN: usize = 0;
const CHECKED_AT: usize = 1;
const ERROR: usize = 2;
const SINCE: usize = 3;
const LAST_OK: usize = 4;
const LOCAL_TIME: usize = 5;
const FASTCLOSE: usize = 6;
const WEB_STATS: usize = 7;
const SERVER: usize = 8; // four: two regular, the emergency and the abuse server
const CLIENT: usize = 12; // two
const FIELDS: usize = 14;

/// Text that reaches pen's `-w` HTML page and penstats-web's pages.
///
/// Input: a flags byte (health, numbers), then up to 14 strings separated by 0x1f (lossy
/// UTF-8), in the order of the constants above.
///
/// Invariants:
/// - Every page is the page rendered with a unique marker in place of each string, with each
///   marker then replaced by the string HTML-escaped as askama does (`"&'<>` as `&#34;`
///   `&#38;` `&#39;` `&#60;` `&#62;`, everything else verbatim). So the text can never add,
///   remove or alter markup: no `<`, `>`, `&`, `"` or `'` of it appears raw, and it cannot
///   change which rows, alerts or charts are shown. Checked for pen's status page, for
///   penstats-web's live part (pen up with a snapshot, pen down with history, starting) and
///   for the dashboard around it.
/// - Control bytes (other than the page's own line breaks) are NOT escaped, by pen or askama,
///   and appear verbatim: they are inert in HTML text and attribute values (the HTML parser
///   keeps them as characters; a NUL becomes U+FFFD), so the true invariant is the one above,
///   and the check asserts that verbatim copy rather than their absence.
/// - Metrics: each label value is escaped as the text format requires (`\` `"` and newline
///   as `\\` `\"` `\n`), so the exposition has the same lines as with the markers.
/// - `page::escape_text`, for the messages rendered without a template: no `<` or `>`, every
///   `&` starts `&amp;`, `&lt;` or `&gt;`, and unescaping gives back the text.
pub fn html_escape(data: &[u8]) {
    let (flags, rest) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let mut fields: Vec<String> = rest
        .split(|b| *b == SEP)
        .take(FIELDS)
        .map(|f| String::from_utf8_lossy(f).replace([OPEN, CLOSE], ""))
        .collect();
    fields.resize(FIELDS, String::new());
    let markers: Vec<String> = (0..FIELDS).map(|i| format!("{OPEN}{i}{CLOSE}")).collect();

    for (what, marked, real) in [
        (
            "pen's status page",
            pen_page(&markers, flags),
            pen_page(&fields, flags),
        ),
        (
            "penstats-web, pen up",
            live_page(&markers, flags, 0),
            live_page(&fields, flags, 0),
        ),
        (
            "penstats-web, pen down",
            live_page(&markers, flags, 1),
            live_page(&fields, flags, 1),
        ),
        (
            "penstats-web, starting",
            live_page(&markers, flags, 2),
            live_page(&fields, flags, 2),
        ),
    ] {
        let want = substitute(&marked, &fields, html);
        assert!(
            real == want,
            "{what}: the strings changed the page beyond their escaped text\n  strings: {fields:?}\n  page:    {real:?}\n  wanted:  {want:?}"
        );
    }

    let marked = metrics::render(Some(&snapshot(&markers, flags)), polls(flags));
    let real = metrics::render(Some(&snapshot(&fields, flags)), polls(flags));
    assert_eq!(
        real,
        substitute(&marked, &fields, label),
        "metrics: a label value is not escaped as the text format requires"
    );

    for text in &fields {
        let escaped = page::escape_text(text);
        assert!(!escaped.contains(['<', '>']), "{escaped:?}");
        let unescaped = escaped
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        assert_eq!(&unescaped, text, "escape_text does not round-trip");
        let amps = escaped.match_indices('&').count();
        let entities = ["&amp;", "&lt;", "&gt;"]
            .iter()
            .map(|e| escaped.matches(e).count())
            .sum::<usize>();
        assert_eq!(amps, entities, "a raw & in {escaped:?}");
    }
}

/// askama's HTML escaping, written out.
fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '&' => out.push_str("&#38;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&#60;"),
            '>' => out.push_str("&#62;"),
            c => out.push(c),
        }
    }
    out
}

/// A Prometheus label value, as the text format (0.0.4) says to escape it.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `page` with every marker replaced by `escape` of its string.
fn substitute(page: &str, fields: &[String], escape: fn(&str) -> String) -> String {
    let mut out = String::with_capacity(page.len());
    let mut rest = page;
    while let Some(open) = rest.find(OPEN) {
        out.push_str(&rest[..open]);
        let after = &rest[open + OPEN.len_utf8()..];
        let close = after.find(CLOSE).expect("a marker is closed");
        let index: usize = after[..close].parse().expect("a marker holds its index");
        out.push_str(&escape(&fields[index]));
        rest = &after[close + CLOSE.len_utf8()..];
    }
    out.push_str(rest);
    out
}

fn polls(flags: u8) -> PollCounts {
    PollCounts {
        ok: u64::from(flags),
        failed: u64::from(flags >> 4),
    }
}

fn server(index: i64, kind: ServerKind, address: &str, flags: u8) -> ServerStats {
    let blacklisted = flags & (1 << (index.rem_euclid(4))) != 0;
    ServerStats {
        index,
        kind,
        address: address.to_string(),
        port: if index == 1 { 1 } else { 8080 },
        status: if blacklisted { 1_795_351_300 } else { 0 },
        blacklisted,
        blacklist_remaining: if blacklisted { 7 } else { 0 },
        conns: u32::from(flags & 3),
        connects: u64::from(flags),
        maxc: u32::from(flags >> 6),
        hard: 0,
        sent: 1000,
        received: 20_000,
        weight: 1,
        prio: 0,
    }
}

/// A snapshot whose every string is one of `s`.
fn snapshot(s: &[String], flags: u8) -> Snapshot {
    Snapshot {
        time: 1_795_351_309,
        local_time: s[LOCAL_TIME].clone(),
        current: (flags & 4 != 0).then_some(0),
        servers: vec![
            server(0, ServerKind::Regular, &s[SERVER], flags),
            server(1, ServerKind::Regular, &s[SERVER + 1], flags),
        ],
        emergency: Some(server(-1, ServerKind::Emergency, &s[SERVER + 2], flags)),
        abuse: Some(server(-2, ServerKind::Abuse, &s[SERVER + 3], flags)),
        clients: (0..2)
            .map(|i| ClientStats {
                slot: i,
                address: s[CLIENT + i].clone(),
                age: u64::from(flags) + i as u64,
                last_server: (i == 0).then_some(1),
                connects: 3,
                sent: 10,
                received: 20,
            })
            .collect(),
        conns: vec![ConnStats {
            slot: 0,
            client_fd: 9,
            server_fd: -1,
            pending_to_client: 5,
            pending_to_server: 0,
            client: Some(1),
            server: None,
            connected: flags & 8 != 0,
            age: 3,
            sent: 7,
            received: 9,
        }],
        settings: SettingsStats {
            blacklist_time: 30,
            tracking: 0,
            connect_timeout: 3,
            idle_timeout: 0,
            roundrobin: flags & 16 != 0,
            stubborn: false,
            hash: false,
            weight: false,
            prio: false,
            tcp_fastclose: s[FASTCLOSE].clone(),
            tcp_nodelay: true,
            keepalive: false,
            web_stats: Some(s[WEB_STATS].clone()),
            clients_max: 2048,
            conn_max: 500,
        },
        counters: Counters {
            conns_used: 1,
            conn_last: 0,
            clients_known: 2,
            sent: 4000,
            received: 80_000,
        },
    }
}

fn pen_page(s: &[String], flags: u8) -> String {
    pen::stats::render_html(&snapshot(s, flags)).expect("pen's page renders")
}

/// penstats-web's dashboard around its live part: `state` 0 pen up (with a snapshot and
/// charts), 1 pen down (charts of the history only), 2 starting.
fn live_page(s: &[String], flags: u8, state: u8) -> String {
    let snap = snapshot(s, flags);
    let run = |base: f64| vec![vec![(240.0, base), (120.0, base * 2.0), (0.0, base * 1.5)]];
    let series: Vec<ServerSeries> = page_servers(&snap)
        .map(|srv| ServerSeries {
            key: ServerKey::of(srv),
            conns: run(f64::from(flags)),
            connect_rate: run(0.5),
            sent_rate: run(1e6),
            received_rate: Vec::new(),
        })
        .collect();
    let health = match state {
        0 => Health::Up,
        1 => Health::Down {
            error: s[ERROR].clone(),
            since: s[SINCE].clone(),
            last_ok: Some(s[LAST_OK].clone()),
        },
        _ => Health::Starting,
    };
    let live = page::live(&Live {
        pen: &s[PEN],
        health: &health,
        checked_at: &s[CHECKED_AT],
        interval_secs: 1.0,
        snapshot: (state == 0).then_some(&snap),
        series: &series,
        window_secs: 300.0,
    })
    .expect("the live part renders");
    page::dashboard(&s[PEN], &live, 1.0).expect("the dashboard renders")
}

fn page_servers(s: &Snapshot) -> impl Iterator<Item = &ServerStats> {
    s.servers.iter().chain(&s.emergency).chain(&s.abuse)
}

/// Request bytes as they reach the access log.
///
/// Input: a flags byte (client and server address kinds), the addresses (4 or 16 bytes
/// each, when present), 8 bytes of epoch, then the chunk a client sent.
///
/// Invariants:
/// - `Request::from_chunk`: the chunk's first line (up to the first CR or LF), cut at 100
///   bytes, with every byte that is not printable ASCII or a tab replaced by `.` and every
///   other byte kept: so never a newline, a control byte (ESC, NUL, DEL) or a byte >= 0x80.
/// - The `-l FILE` line is `client SP epoch SP server SP request LF`: exactly one newline, at
///   the end, every other byte a log-line byte (`is_line_byte`), and `FileLine::parse` gives
///   back the addresses as pen prints them (nothing for a Unix socket), the epoch and the
///   request.
/// - The `-l HOST:PORT` datagram is `+ client SP server SP request LF`, made only of bytes
///   penlogd accepts; with both addresses it parses back to them and the request, and with a
///   Unix-socket end (printed as nothing, as pen 0.34.1 does) it is refused, never misread.
/// - The `-ddd` dump: `N: ` and then, in hex, `xx ` for every byte (decoding back to the
///   chunk), or with `-a` one character per byte: the byte itself if it is printable ASCII or
///   ASCII white space, `.` otherwise. The ASCII dump keeps tab, LF, VT, FF and CR verbatim,
///   as pen 0.34.1's `isprint() || isspace()` did and the man page documents ("unprintable
///   bytes as dots"): a dump line can span lines, but never holds ESC, another control byte,
///   DEL or a byte >= 0x80, so it cannot drive a terminal.
pub fn log_escape(data: &[u8]) {
    let mut rest = data;
    let flags = take(&mut rest, 1).map_or(0, |b| b[0]);
    let Some(client) = address(&mut rest, flags) else {
        return;
    };
    let Some(server) = address(&mut rest, flags >> 2) else {
        return;
    };
    let Some(epoch) = take(&mut rest, 8) else {
        return;
    };
    // pen writes the time of day; parse_epoch takes up to 18 digits.
    let epoch = i64::from_be_bytes(epoch.try_into().expect("8 bytes")) % 1_000_000_000_000_000_000;
    let chunk = rest;

    let request = Request::from_chunk(chunk);
    let logged = request.as_bytes();
    let line_len = chunk
        .iter()
        .position(|b| matches!(b, b'\r' | b'\n'))
        .unwrap_or(chunk.len())
        .min(REQUEST_MAX);
    assert_eq!(
        logged.len(),
        line_len,
        "the request is the first line, cut at 100 bytes"
    );
    for (&got, &sent) in logged.iter().zip(chunk) {
        let printable = sent == b'\t' || (0x20..0x7f).contains(&sent);
        assert_eq!(got, if printable { sent } else { b'.' }, "{chunk:?}");
    }

    let text = |ip: Option<IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
    let mut line = Vec::new();
    FileLine::write(&mut line, client, epoch, server, logged);
    check_one_line(&line, "file line");
    let parsed = FileLine::parse(&line).expect("pen's own log line parses");
    assert_eq!(parsed.client, text(client).as_bytes());
    assert_eq!(parsed.epoch, epoch);
    assert_eq!(parsed.server, text(server).as_bytes());
    assert_eq!(parsed.request, logged);

    let mut datagram = Vec::new();
    NetRecord::write(&mut datagram, client, server, logged);
    check_one_line(&datagram, "datagram");
    assert!(NetRecord::is_record(&datagram));
    match (client, server, NetRecord::parse(&datagram)) {
        (Some(c), Some(s), Ok(r)) => {
            assert_eq!((r.client, r.server), (c.to_canonical(), s.to_canonical()));
            assert_eq!(r.request, logged);
        }
        (Some(_), Some(_), Err(e)) => panic!("pen's own record does not parse: {e}"),
        (_, _, Ok(r)) => panic!("a record with a Unix-socket end was read as {r:?}"),
        (_, _, Err(_)) => {}
    }

    let prefix = format!("{}: ", chunk.len());
    let hex = pen::dump::format(chunk, false);
    let bytes = hex
        .strip_prefix(&prefix)
        .expect("the dump starts with the length");
    let decoded: Vec<u8> = bytes
        .as_bytes()
        .chunks(3)
        .map(|c| {
            assert!(c.len() == 3 && c[2] == b' ', "{hex:?}");
            let h = std::str::from_utf8(&c[..2]).expect("ASCII");
            assert_eq!(h, h.to_ascii_lowercase());
            u8::from_str_radix(h, 16).expect("two hex digits")
        })
        .collect();
    assert_eq!(decoded, chunk, "the hex dump decodes back to the chunk");
    let ascii = pen::dump::format(chunk, true);
    let shown = ascii
        .strip_prefix(&prefix)
        .expect("the dump starts with the length");
    assert_eq!(shown.len(), chunk.len(), "one character per byte");
    for (got, &sent) in shown.bytes().zip(chunk) {
        let kept = sent.is_ascii_graphic() || sent == b' ' || (b'\t'..=b'\r').contains(&sent);
        assert_eq!(got, if kept { sent } else { b'.' }, "{chunk:?}");
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

/// An address by `kind & 3`: a Unix socket (None), IPv4, IPv6. Outer None: input too short.
fn address(rest: &mut &[u8], kind: u8) -> Option<Option<IpAddr>> {
    Some(match kind & 3 {
        0 => None,
        2 => {
            let b: [u8; 16] = take(rest, 16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => {
            let b: [u8; 4] = take(rest, 4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
    })
}

/// One log line: a newline at the end and nowhere else, only log-line bytes before it.
fn check_one_line(line: &[u8], what: &str) {
    let (last, body) = line.split_last().expect("not empty");
    assert_eq!(*last, b'\n', "{what} ends with a newline");
    assert!(
        body.iter().all(|&b| is_line_byte(b) && b.is_ascii()),
        "{what} holds a control or non-ASCII byte: {:?}",
        String::from_utf8_lossy(line)
    );
}
