//! Fuzz targets: the log lines shared by pen, penlogd and mergelogs (`pen::accesslog`).
//!
//! * `pen_log_line`: a line of pen's `-l FILE` log ([`FileLine`]) and the datagram pen sends to
//!   penlogd ([`NetRecord`]), read from the input as text and also written from values decoded
//!   from it.
//! * `web_log_line`: an Apache Common/Combined line as mergelogs reads it ([`WebLine`]), its
//!   rewrite with another client and time (mergelogs' output), and penlogd's view of it
//!   ([`web::quoted_request`], [`web::write_with_host`]).
//! * `timestamp`: the `dd/Mon/yyyy:HH:MM:SS ±hhmm` stamp ([`time::parse`], [`time::write_utc`]).
//!
//! The expectations are computed here by reference readings written independently of pen's
//! code (a different day count, `splitn` instead of pen's splitting), so a target fails when
//! the two disagree, not only when pen panics. Nothing here does I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pen::accesslog::{time, web, FileLine, NetRecord, Request, WebLine, WebLineError};

/// A line of pen's `-l` log, and a penlogd datagram.
///
/// Invariants:
/// 1. `FileLine::parse` of the input agrees with a reference reading: one trailing `\n` or
///    `\r\n` dropped, then `client SP epoch SP server [SP request]` split at the first three
///    spaces, the epoch `-?[0-9]{1,18}`; and when it refuses, its message names the first part
///    missing ("no fields", "no time", "the time is not a number"). The fields it returns are
///    the whole line: nothing is skipped or left over.
/// 2. `NetRecord::parse` of the input agrees with `+ SP client SP server SP request`, both
///    addresses IP literals (read by std, IPv4-mapped IPv6 made IPv4), with the message naming
///    what was wrong; a parsed record makes `is_record` true, and written again it parses to
///    the same record (and to the same bytes when its addresses were written canonically),
///    unless its request ends in CR (which pen never writes and penlogd refuses).
/// 3. Written from values decoded from the input (addresses or none, any `i64` epoch, a
///    request taken from the input as pen takes it, `Request::from_chunk`): a file line is
///    exactly one line and parses back to every field (an address as its text, none as
///    empty), except an epoch of 19 digits or more, which pen never writes (it is the clock)
///    and which parse refuses rather than misread: the 18-digit cap keeps mergelogs'
///    time arithmetic (`-t`, jitter) from overflowing. A network record fits penlogd's 1024
///    bytes, is a record by `is_record`, and parses back to both addresses (canonical) and the
///    request; with a Unix-socket end (no address, written as nothing, as pen 0.34.1 does) it
///    is refused, never misread.
pub fn pen_log_line(data: &[u8]) {
    check_file_line_parse(data);
    check_net_record_parse(data);

    let mut input = Input(data);
    let client = input.addr();
    let epoch = input.epoch();
    let server = input.addr();
    let request = Request::from_chunk(input.rest());
    check_file_line_write(client, epoch, server, request.as_bytes());
    check_net_record_write(client, server, request.as_bytes());
}

/// An Apache Common/Combined log line, its time stamp and its rewrite.
///
/// Invariants:
/// 1. `WebLine::parse` agrees with a reference reading, error kind included (`NoHost`,
///    `NoTime`, `NoRequest`, `UnclosedRequest`). A parsed line is exactly
///    `host SP+ before_time [time] after_time "request" rest` (plus the newline dropped): every
///    byte is in a field or the spaces after the host, in order; the host has no space,
///    `before_time` does not start with a space and has no `[`, the time no `]`, `after_time`
///    no `"`, and the request ends at a quote that no backslash escapes.
/// 2. `epoch()` is `time::parse` of the time field.
/// 3. The line rewritten with a new client and time (mergelogs' `write_with`) is one line that
///    parses again with that client as its host, the UTC stamp of that time as its time (and
///    that epoch back from it when the stamp is in years 0000-9999; refused beyond), and the
///    same `before_time`, `after_time`, request and rest. One exception: a rest ending in CR
///    loses that CR, because the newline written after it makes a CRLF line end.
/// 4. penlogd's view agrees with mergelogs': when no `"` comes before the request's opening
///    quote, `quoted_request` gives the same request.
/// 5. `write_with_host` (penlogd's output for a matched line) writes the client, then the line
///    from its first space, then a newline, or nothing when the line has no space; a parsed
///    line so rewritten parses with the client as host and every other field unchanged (the
///    same CR exception).
pub fn web_log_line(data: &[u8]) {
    let line = without_newline(data);
    let parsed = WebLine::parse(data);
    let expected = reference_web_line(line);
    assert_eq!(
        parsed.as_ref().map(|_| ()).map_err(Clone::clone),
        expected,
        "WebLine::parse disagrees with the reference reading"
    );

    // penlogd's output line.
    let client: &[u8] = CLIENTS[data.len() % CLIENTS.len()];
    let mut out = Vec::new();
    let wrote = web::write_with_host(&mut out, data, client);
    match line.iter().position(|&b| b == b' ') {
        None => assert!(
            !wrote && out.is_empty(),
            "a line without a space was written"
        ),
        Some(space) => {
            assert!(wrote, "a line with a space was not written");
            assert_eq!(out, [client, &line[space..], b"\n"].concat());
        }
    }

    let Ok(l) = parsed else { return };
    check_web_line_fields(line, &l);
    assert_eq!(l.epoch(), time::parse(l.time), "epoch() is not time::parse");

    // The line before the request's opening quote.
    let before_request = &line[..line.len() - l.rest.len() - l.request.len() - 2];
    if !before_request.contains(&b'"') {
        assert_eq!(
            web::quoted_request(data),
            Some(l.request),
            "penlogd reads another request than mergelogs"
        );
    }

    if wrote {
        let again = WebLine::parse(&out).expect("penlogd's output line parses");
        assert_eq!(
            (again.host, again.before_time, again.time, again.after_time),
            (client, l.before_time, l.time, l.after_time)
        );
        let rest = l.rest.strip_suffix(b"\r").unwrap_or(l.rest);
        assert_eq!((again.request, again.rest), (l.request, rest));
    }

    // mergelogs' output line: the line's own time, one derived from the input, and the two
    // edges of what a stamp can hold.
    let derived = FIRST_EPOCH + (fnv(data) % (END_EPOCH - FIRST_EPOCH) as u64) as i64;
    let epochs = [
        l.epoch().unwrap_or(derived),
        derived,
        FIRST_EPOCH - 1,
        END_EPOCH,
    ];
    for epoch in epochs {
        for client in CLIENTS {
            check_rewrite(&l, client, epoch);
        }
    }
}

/// A log time stamp (`10/Oct/2000:13:55:36 -0700`).
///
/// Invariants:
/// 1. `time::parse` accepts exactly the stamps a reference reading accepts, and gives the
///    same epoch: `dd/Mon/yyyy:HH:MM:SS` with an English month name (case as Apache writes
///    it), a day that exists in that month (leap years Gregorian), hour < 24, minute < 60,
///    second <= 60 (a leap second), then nothing (UTC) or one space and `+hhmm`/`-hhmm` with
///    hh < 24 and mm < 60; and the instant in UTC within years 0000-9999, the years a stamp
///    can be written back in. The reference counts days by leap years, not by pen's eras.
/// 2. `write_utc` of an accepted stamp's epoch is a 26-byte `+0000` stamp that parses back to
///    that epoch, with or without its zone.
/// 3. `write_utc` of any `i64` (taken from the input) does not panic; its stamp parses back to
///    the same epoch when the instant is within years 0000-9999, and is refused otherwise.
pub fn timestamp(data: &[u8]) {
    let parsed = time::parse(data);
    assert_eq!(
        parsed.as_ref().ok(),
        reference_stamp(data).as_ref(),
        "time::parse disagrees with the reference reading ({parsed:?})"
    );
    if let Ok(epoch) = parsed {
        check_write_utc(epoch);
    }

    let mut input = Input(data);
    let raw = i64::from_le_bytes(input.array());
    let span = END_EPOCH - FIRST_EPOCH;
    let near = i64::from(input.byte()) - 128;
    for epoch in [
        raw,
        FIRST_EPOCH + raw.rem_euclid(span),
        FIRST_EPOCH + near,
        END_EPOCH + near,
        near * 86_400 + raw.rem_euclid(86_400),
        i64::MIN,
        i64::MAX,
    ] {
        check_write_utc(epoch);
    }
}

/// Clients a rewrite puts in the host field: IPv4, IPv6 and a server name as mergelogs gets it
/// from its command line.
const CLIENTS: [&[u8]; 3] = [b"203.0.113.7", b"2001:db8::7", b"web1.example"];

/// The first second of year 0000 and the first second of year 10000, UTC.
const FIRST_EPOCH: i64 = -62_167_219_200;
const END_EPOCH: i64 = 253_402_300_800;

/// Values decoded from the input, a byte at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0; N];
        for b in &mut a {
            *b = self.byte();
        }
        a
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }

    /// None (a Unix socket), IPv4, IPv6, or IPv4-mapped IPv6.
    fn addr(&mut self) -> Option<IpAddr> {
        match self.byte() % 4 {
            0 => None,
            1 => Some(IpAddr::V4(Ipv4Addr::from(self.array::<4>()))),
            2 => Some(IpAddr::V6(Ipv6Addr::from(self.array::<16>()))),
            _ => Some(IpAddr::V6(
                Ipv4Addr::from(self.array::<4>()).to_ipv6_mapped(),
            )),
        }
    }

    /// Mostly ordinary times, often the edges of what a file line can hold.
    fn epoch(&mut self) -> i64 {
        let tag = self.byte();
        match tag % 4 {
            0 => i64::from(i32::from_le_bytes(self.array())),
            1 => {
                // Around 10^18, where the epoch gets its 19th digit, either sign.
                let n = 999_999_999_999_999_998 + i64::from(tag / 4 % 4);
                if tag >= 128 {
                    -n
                } else {
                    n
                }
            }
            2 => [i64::MIN, i64::MAX, 0, -1][usize::from(tag / 4 % 4)],
            _ => i64::from_le_bytes(self.array()),
        }
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A line without its one trailing `\n` or `\r\n` (or lone `\r`).
fn without_newline(line: &[u8]) -> &[u8] {
    let line = match line.last() {
        Some(b'\n') => &line[..line.len() - 1],
        _ => line,
    };
    match line.last() {
        Some(b'\r') => &line[..line.len() - 1],
        _ => line,
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// pen's file line and network record

/// A file line's fields: (client, epoch, server, request).
type FileFields<'a> = (&'a [u8], i64, &'a [u8], &'a [u8]);

/// The reference reading of a file line: its fields, or the message of what is missing.
fn reference_file_line(data: &[u8]) -> Result<FileFields<'_>, &'static str> {
    let fields: Vec<&[u8]> = without_newline(data).splitn(4, |&b| b == b' ').collect();
    match fields[..] {
        [_] => Err("no fields"),
        [_, _] => Err("no time"),
        [client, epoch, server, ref request @ ..] => {
            let digits = epoch.strip_prefix(b"-").unwrap_or(epoch);
            if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
                return Err("the time is not a number");
            }
            let epoch = std::str::from_utf8(epoch)
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("18 digits fit an i64");
            Ok((
                client,
                epoch,
                server,
                request.first().copied().unwrap_or(b""),
            ))
        }
        [] => unreachable!("splitn yields at least one field"),
    }
}

fn check_file_line_parse(data: &[u8]) {
    let got = FileLine::parse(data)
        .map(|l| (l.client, l.epoch, l.server, l.request))
        .map_err(|e| e.to_string());
    let want = reference_file_line(data).map_err(|m| format!("not a pen log line: {m}"));
    assert_eq!(
        got,
        want,
        "FileLine::parse of {:?} disagrees with the reference reading",
        show(data)
    );
}

fn check_file_line_write(
    client: Option<IpAddr>,
    epoch: i64,
    server: Option<IpAddr>,
    request: &[u8],
) {
    let mut out = Vec::new();
    FileLine::write(&mut out, client, epoch, server, request);
    assert_eq!(
        out.iter().position(|&b| b == b'\n'),
        Some(out.len() - 1),
        "a file line is not exactly one line: {:?}",
        show(&out)
    );
    let text = |a: Option<IpAddr>| a.map(|ip| ip.to_string()).unwrap_or_default();
    let (client_text, server_text) = (text(client), text(server));
    match FileLine::parse(&out) {
        Ok(l) => {
            assert!(
                epoch.unsigned_abs() < 1_000_000_000_000_000_000,
                "epoch {epoch} of 19 digits was read back"
            );
            assert_eq!(
                (l.client, l.epoch, l.server, l.request),
                (
                    client_text.as_bytes(),
                    epoch,
                    server_text.as_bytes(),
                    request
                ),
                "{:?} did not read back",
                show(&out)
            );
        }
        Err(e) => assert!(
            epoch.unsigned_abs() >= 1_000_000_000_000_000_000,
            "pen's own line {:?} did not parse: {e}",
            show(&out)
        ),
    }
}

/// The reference reading of a network record: (client, server, request) or the message of
/// what was wrong.
fn reference_net_record(data: &[u8]) -> Result<(IpAddr, IpAddr, &[u8]), &'static str> {
    let line = without_newline(data);
    if line.len() < 2 || line[0] != b'+' || line[1] != b' ' {
        return Err("does not start with '+ '");
    }
    let fields: Vec<&[u8]> = line[2..].splitn(3, |&b| b == b' ').collect();
    let [client, server, request] = fields[..] else {
        return Err("too few fields");
    };
    let ip = |s: &[u8]| -> Option<IpAddr> {
        let ip: IpAddr = std::str::from_utf8(s).ok()?.parse().ok()?;
        Some(match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        })
    };
    let client = ip(client).ok_or("bad client address")?;
    let server = ip(server).ok_or("bad server address")?;
    Ok((client, server, request))
}

fn check_net_record_parse(data: &[u8]) {
    let parsed = NetRecord::parse(data);
    let got = parsed
        .as_ref()
        .map(|r| (r.client, r.server, r.request))
        .map_err(|e| e.to_string());
    let want = reference_net_record(data).map_err(|m| format!("not a pen record: {m}"));
    assert_eq!(
        got,
        want,
        "NetRecord::parse of {:?} disagrees with the reference reading",
        show(data)
    );
    let Ok(r) = parsed else { return };
    assert!(
        NetRecord::is_record(data),
        "a parsed record is not a record"
    );
    if r.request.ends_with(b"\r") {
        // Written again, that CR and the newline make a CRLF line end. pen's requests stop at
        // the first CR, and penlogd refuses control characters before parsing.
        return;
    }
    let mut out = Vec::new();
    NetRecord::write(&mut out, Some(r.client), Some(r.server), r.request);
    assert_eq!(
        NetRecord::parse(&out),
        Ok(r),
        "{:?} rewritten does not read back",
        show(data)
    );
    let line = without_newline(data);
    if line.starts_with(format!("+ {} {} ", r.client, r.server).as_bytes()) {
        assert_eq!(without_newline(&out), line);
    }
}

fn check_net_record_write(client: Option<IpAddr>, server: Option<IpAddr>, request: &[u8]) {
    let mut out = Vec::new();
    NetRecord::write(&mut out, client, server, request);
    // penlogd's DATAGRAM_MAX.
    assert!(out.len() <= 1024, "a record of {} bytes", out.len());
    assert!(NetRecord::is_record(&out));
    let parsed = NetRecord::parse(&out);
    match (client, server) {
        (Some(c), Some(s)) => assert_eq!(
            parsed,
            Ok(NetRecord {
                client: c.to_canonical(),
                server: s.to_canonical(),
                request
            }),
            "{:?} did not read back",
            show(&out)
        ),
        _ => assert!(
            parsed.is_err(),
            "a record without an address was read: {:?}",
            show(&out)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Web log lines

/// Where the quoted string starting at `s` ends: Some(index of the closing quote) when a quote
/// follows an even run of escapes. Written as a state machine, unlike pen's skip-by-two.
fn reference_closing_quote(s: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return Some(i);
        }
    }
    None
}

/// The reference verdict on a web line (without its newline).
fn reference_web_line(line: &[u8]) -> Result<(), WebLineError> {
    let Some((host, rest)) = line.split_first_at(b' ') else {
        return Err(WebLineError::NoHost);
    };
    if host.is_empty() {
        return Err(WebLineError::NoHost);
    }
    let (_, rest) = rest.split_first_at(b'[').ok_or(WebLineError::NoTime)?;
    let (_, rest) = rest.split_first_at(b']').ok_or(WebLineError::NoTime)?;
    let (_, rest) = rest.split_first_at(b'"').ok_or(WebLineError::NoRequest)?;
    reference_closing_quote(rest).ok_or(WebLineError::UnclosedRequest)?;
    Ok(())
}

trait SplitAt {
    fn split_first_at(&self, b: u8) -> Option<(&[u8], &[u8])>;
}

impl SplitAt for [u8] {
    fn split_first_at(&self, b: u8) -> Option<(&[u8], &[u8])> {
        let mut parts = self.splitn(2, move |&c| c == b);
        let before = parts.next()?;
        parts.next().map(|after| (before, after))
    }
}

/// The fields of a parsed line are the whole line, in order, each as the format says.
fn check_web_line_fields(line: &[u8], l: &WebLine<'_>) {
    let fixed = l.host.len()
        + l.before_time.len()
        + l.time.len()
        + l.after_time.len()
        + l.request.len()
        + l.rest.len()
        + 4;
    assert!(fixed <= line.len(), "the fields are longer than the line");
    let spaces = line.len() - fixed;
    assert!(spaces >= 1, "no space after the host");
    let rebuilt = [
        l.host,
        &vec![b' '; spaces],
        l.before_time,
        b"[",
        l.time,
        b"]",
        l.after_time,
        b"\"",
        l.request,
        b"\"",
        l.rest,
    ]
    .concat();
    assert_eq!(show(&rebuilt), show(line), "the fields are not the line");
    assert!(!l.host.is_empty() && !l.host.contains(&b' '));
    assert!(!l.before_time.starts_with(b" ") && !l.before_time.contains(&b'['));
    assert!(!l.time.contains(&b']') && !l.after_time.contains(&b'"'));
    let with_quote = [l.request, b"\""].concat();
    assert_eq!(
        reference_closing_quote(&with_quote),
        Some(l.request.len()),
        "the request does not end at its first unescaped quote"
    );
}

fn check_rewrite(l: &WebLine<'_>, client: &[u8], epoch: i64) {
    let mut out = Vec::new();
    l.write_with(&mut out, client, epoch);
    assert_eq!(out.last(), Some(&b'\n'));
    let again = WebLine::parse(&out).unwrap_or_else(|e| {
        panic!(
            "mergelogs' line {:?} does not parse: {e} (was {:?})",
            show(&out),
            l
        )
    });
    let mut stamp = Vec::new();
    time::write_utc(&mut stamp, epoch);
    assert_eq!(
        (again.host, again.before_time, again.time, again.after_time),
        (client, l.before_time, &stamp[..], l.after_time),
        "the rewrite of {l:?} reads back differently"
    );
    let rest = l.rest.strip_suffix(b"\r").unwrap_or(l.rest);
    assert_eq!((again.request, again.rest), (l.request, rest));
    match again.epoch() {
        Ok(t) => assert_eq!(t, epoch, "stamp {:?}", show(&stamp)),
        Err(e) => assert!(
            !(FIRST_EPOCH..END_EPOCH).contains(&epoch),
            "stamp {:?} of {epoch} refused: {e}",
            show(&stamp)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Time stamps

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// Days from 0000-01-01 to the first of January of `y` (y >= 0): 365 a year plus a day per
/// leap year before it (years 0, 4, 8, ... but not 100, 200, 300, 500, ...).
fn days_before_year(y: i64) -> i64 {
    365 * y + (y + 3) / 4 - (y + 99) / 100 + (y + 399) / 400
}

/// The reference reading of a stamp: its epoch, or None.
fn reference_stamp(s: &[u8]) -> Option<i64> {
    let (clock, zone) = match s.len() {
        20 => (s, None),
        26 if s[20] == b' ' => (&s[..20], Some(&s[21..])),
        _ => return None,
    };
    let number = |from: usize, to: usize| -> Option<i64> {
        let text = std::str::from_utf8(&clock[from..to]).ok()?;
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    let separators = [(2, b'/'), (6, b'/'), (11, b':'), (14, b':'), (17, b':')];
    if separators.iter().any(|&(at, c)| clock[at] != c) {
        return None;
    }
    let month = "JanFebMarAprMayJunJulAugSepOctNovDec"
        .as_bytes()
        .chunks(3)
        .position(|m| m == &clock[3..6])?;
    let (day, year) = (number(0, 2)?, number(7, 11)?);
    let (hour, minute, second) = (number(12, 14)?, number(15, 17)?, number(18, 20)?);
    let mut lengths = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if is_leap(year) {
        lengths[1] = 29;
    }
    if !(1..=lengths[month]).contains(&day) || hour >= 24 || minute >= 60 || second > 60 {
        return None;
    }
    let offset = match zone {
        None => 0,
        Some(z) => {
            let sign = match z[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits = std::str::from_utf8(&z[1..]).ok()?;
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let (h, m): (i64, i64) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
            if h >= 24 || m >= 60 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_before_year(year) - days_before_year(1970)
        + lengths[..month].iter().sum::<i64>()
        + day
        - 1;
    let epoch = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let first = (days_before_year(0) - days_before_year(1970)) * 86_400;
    let end = (days_before_year(10_000) - days_before_year(1970)) * 86_400;
    (first..end).contains(&epoch).then_some(epoch)
}

fn check_write_utc(epoch: i64) {
    let mut out = Vec::new();
    time::write_utc(&mut out, epoch);
    let parsed = time::parse(&out);
    if !(FIRST_EPOCH..END_EPOCH).contains(&epoch) {
        assert!(
            parsed.is_err(),
            "{epoch}, outside years 0000-9999, was written as {:?} and read as {parsed:?}",
            show(&out)
        );
        return;
    }
    assert_eq!(out.len(), 26, "{epoch} was written as {:?}", show(&out));
    assert!(out.ends_with(b" +0000"));
    assert_eq!(parsed, Ok(epoch), "{:?}", show(&out));
    assert_eq!(time::parse(&out[..20]), Ok(epoch), "{:?}", show(&out));
}
