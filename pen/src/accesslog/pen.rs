//! pen's own records: the line of the `-l FILE` log and the datagram of the `-l HOST:PORT` log.
//!
//! File line: `client epoch server request\n`. Network record: `+ client server request\n`.
//! Addresses are printed without a port, IPv6 without brackets; a Unix-socket client or server
//! is printed as nothing, as pen 0.34.1 does.

use std::io::Write;
use std::net::IpAddr;

/// Why a line or datagram is not one of pen's records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PenLineError {
    #[error("not a pen log line: {0}")]
    FileLine(&'static str),
    #[error("not a pen record: {0}")]
    NetRecord(&'static str),
}

/// One line of pen's `-l FILE` log, borrowed from the text it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLine<'a> {
    pub client: &'a [u8],
    /// Seconds since the epoch when pen read the request.
    pub epoch: i64,
    pub server: &'a [u8],
    pub request: &'a [u8],
}

/// Write an address as pen logs it (nothing for a Unix socket).
fn write_addr(out: &mut Vec<u8>, addr: Option<IpAddr>) {
    if let Some(ip) = addr {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{ip}");
    }
}

/// Strip one trailing `\n` or `\r\n`.
pub fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Split at the first space: (before, after); None without a space.
fn split_space(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|&b| b == b' ')?;
    Some((&s[..at], &s[at + 1..]))
}

impl<'a> FileLine<'a> {
    /// Append this record as one line, newline included.
    pub fn write(
        out: &mut Vec<u8>,
        client: Option<IpAddr>,
        epoch: i64,
        server: Option<IpAddr>,
        request: &[u8],
    ) {
        write_addr(out, client);
        let _ = write!(out, " {epoch} ");
        write_addr(out, server);
        out.push(b' ');
        out.extend_from_slice(request);
        out.push(b'\n');
    }

    /// Parse one line (with or without its newline). The request is everything after the third
    /// space, and may be empty (pen logs the lone CRLF of a split request that way).
    pub fn parse(line: &'a [u8]) -> Result<FileLine<'a>, PenLineError> {
        let line = strip_newline(line);
        let (client, rest) = split_space(line).ok_or(PenLineError::FileLine("no fields"))?;
        let (epoch, rest) = split_space(rest).ok_or(PenLineError::FileLine("no time"))?;
        let (server, request) = split_space(rest).unwrap_or((rest, b""));
        let epoch = parse_epoch(epoch).ok_or(PenLineError::FileLine("the time is not a number"))?;
        Ok(FileLine {
            client,
            epoch,
            server,
            request,
        })
    }
}

/// Decimal seconds, optionally negative, at most 18 digits (no overflow possible).
fn parse_epoch(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
    Some(if negative { -n } else { n })
}

/// One record of pen's network log, as penlogd receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetRecord<'a> {
    pub client: IpAddr,
    pub server: IpAddr,
    /// May be empty.
    pub request: &'a [u8],
}

impl<'a> NetRecord<'a> {
    /// Append this record as one datagram's payload, newline included. `client` and `server`
    /// of None (Unix sockets) are written as nothing, as pen 0.34.1 does.
    pub fn write(
        out: &mut Vec<u8>,
        client: Option<IpAddr>,
        server: Option<IpAddr>,
        request: &[u8],
    ) {
        out.extend_from_slice(b"+ ");
        write_addr(out, client);
        out.push(b' ');
        write_addr(out, server);
        out.push(b' ');
        out.extend_from_slice(request);
        out.push(b'\n');
    }

    /// True when a datagram is meant as a pen record (its first byte is `+`); anything else is
    /// a web server's log line.
    pub fn is_record(datagram: &[u8]) -> bool {
        datagram.first() == Some(&b'+')
    }

    /// Parse a record (with or without its newline). Client and server must be IP addresses,
    /// IPv4 or IPv6: penlogd never resolves names (pen 0.34.1's penlogd crashed on anything
    /// `gethostbyname` could not resolve, an IPv6 address included).
    pub fn parse(datagram: &'a [u8]) -> Result<NetRecord<'a>, PenLineError> {
        let line = strip_newline(datagram);
        let rest = line
            .strip_prefix(b"+ ")
            .ok_or(PenLineError::NetRecord("does not start with '+ '"))?;
        let (client, rest) = split_space(rest).ok_or(PenLineError::NetRecord("too few fields"))?;
        let (server, request) =
            split_space(rest).ok_or(PenLineError::NetRecord("too few fields"))?;
        let client = parse_ip(client).ok_or(PenLineError::NetRecord("bad client address"))?;
        let server = parse_ip(server).ok_or(PenLineError::NetRecord("bad server address"))?;
        Ok(NetRecord {
            client,
            server,
            request,
        })
    }
}

fn parse_ip(s: &[u8]) -> Option<IpAddr> {
    let ip: IpAddr = std::str::from_utf8(s).ok()?.parse().ok()?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn file_lines_as_pen_writes_them() {
        // Transcript 46.
        let mut out = Vec::new();
        FileLine::write(
            &mut out,
            ip("127.0.16.1"),
            1795335121,
            ip("127.0.0.1"),
            b"POST /form HTTP/1.0",
        );
        FileLine::write(&mut out, ip("127.0.16.2"), 1795335122, ip("127.0.0.1"), b"");
        FileLine::write(&mut out, None, 7, ip("::1"), b"x y");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "127.0.16.1 1795335121 127.0.0.1 POST /form HTTP/1.0\n\
             127.0.16.2 1795335122 127.0.0.1 \n \
             7 ::1 x y\n"
        );
    }

    #[test]
    fn file_lines_parse_back() {
        let l =
            FileLine::parse(b"203.0.113.1 1700000000 10.0.0.1 GET /index.html HTTP/1.0\n").unwrap();
        assert_eq!(
            (l.client, l.epoch, l.server, l.request),
            (
                &b"203.0.113.1"[..],
                1700000000,
                &b"10.0.0.1"[..],
                &b"GET /index.html HTTP/1.0"[..]
            )
        );
        let empty = FileLine::parse(b"127.0.16.2 1795335122 127.0.0.1 \n").unwrap();
        assert_eq!(empty.request, b"");
        let v6 = FileLine::parse(b"::1 5 ::2 GET / HTTP/1.1").unwrap();
        assert_eq!((v6.client, v6.server), (&b"::1"[..], &b"::2"[..]));
        for bad in [
            &b"bogus line"[..],
            b"",
            b"1.2.3.4 12x 5.6.7.8 GET /",
            b"1.2.3.4  5.6.7.8 GET /",
            b"1.2.3.4 99999999999999999999 5.6.7.8 GET /",
        ] {
            assert!(
                FileLine::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn net_records_as_pen_sends_them() {
        // Transcript 12.
        let mut out = Vec::new();
        NetRecord::write(
            &mut out,
            ip("127.0.0.31"),
            ip("127.0.0.1"),
            b"GET /netlog HTTP/1.0",
        );
        assert_eq!(out, b"+ 127.0.0.31 127.0.0.1 GET /netlog HTTP/1.0\n");
        let r = NetRecord::parse(&out).unwrap();
        assert_eq!(r.client, ip("127.0.0.31").unwrap());
        assert_eq!(r.request, b"GET /netlog HTTP/1.0");
    }

    #[test]
    fn net_records_of_any_family_and_bad_ones() {
        let r = NetRecord::parse(b"+ 2001:db8::1 ::1 GET / HTTP/1.0\n").unwrap();
        assert_eq!(r.server, ip("::1").unwrap());
        let mapped = NetRecord::parse(b"+ ::ffff:1.2.3.4 ::ffff:5.6.7.8 GET /").unwrap();
        assert_eq!(mapped.client, ip("1.2.3.4").unwrap());
        assert_eq!(mapped.server, ip("5.6.7.8").unwrap());
        assert_eq!(
            NetRecord::parse(b"+ 1.2.3.4 5.6.7.8 ").unwrap().request,
            b""
        );
        for bad in [
            &b"+ only two"[..],
            b"+ 1.2.3.4 no.such.host.invalid GET / HTTP/1.0",
            b"+ 1.2.3.4 localhost GET /",
            b"+1.2.3.4 5.6.7.8 GET /",
            b"+ 1.2.3.4",
            b"+ ",
            b"GET /",
        ] {
            assert!(
                NetRecord::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(NetRecord::is_record(b"+ x"));
        assert!(!NetRecord::is_record(b"1.2.3.4 - - [..."));
    }
}
