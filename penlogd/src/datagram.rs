//! What one datagram to penlogd is: a pen record (`+ client server request`), a web server's
//! log line, or something malformed that is counted and dropped.
//!
//! A datagram is one line: at most one trailing newline, no other line break, no NUL and no
//! other control character but tab. That is what guarantees one output line per input line at
//! most, whatever anyone on the network sends (pen 0.34.1 wrote web datagrams out as they came,
//! embedded newlines and all).

use pen::accesslog::{is_line_byte, pen::strip_newline, web, NetRecord};

/// The longest datagram accepted: pen sends at most 1024 bytes, penlog at most 1023.
pub const DATAGRAM_MAX: usize = 1024;

/// A datagram that is neither a pen record nor a web log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Empty,
    Oversize,
    Nul,
    ControlCharacter,
    EmbeddedNewline,
    /// Starts with `+` but is not `+ client-ip server-ip request`.
    BadRecord,
    /// A web line without a quoted request.
    NoQuotes,
    /// From an address not in the `-a` allow-list.
    NotAllowed,
}

impl Malformed {
    pub const ALL: [Malformed; 8] = [
        Malformed::Empty,
        Malformed::Oversize,
        Malformed::Nul,
        Malformed::ControlCharacter,
        Malformed::EmbeddedNewline,
        Malformed::BadRecord,
        Malformed::NoQuotes,
        Malformed::NotAllowed,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn describe(self) -> &'static str {
        match self {
            Malformed::Empty => "empty",
            Malformed::Oversize => "longer than 1024 bytes",
            Malformed::Nul => "contains a NUL byte",
            Malformed::ControlCharacter => "contains a control character",
            Malformed::EmbeddedNewline => "contains a line break",
            Malformed::BadRecord => "a bogus pen record",
            Malformed::NoQuotes => "a web line without a quoted request",
            Malformed::NotAllowed => "from an address not allowed by -a",
        }
    }
}

/// A well-formed datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    Record(NetRecord<'a>),
    /// A web server's log line (without its newline) and its request.
    Web {
        line: &'a [u8],
        request: &'a [u8],
    },
}

/// Classify one datagram.
pub fn classify(datagram: &[u8]) -> Result<Datagram<'_>, Malformed> {
    if datagram.len() > DATAGRAM_MAX {
        return Err(Malformed::Oversize);
    }
    let line = strip_newline(datagram);
    if line.is_empty() {
        return Err(Malformed::Empty);
    }
    if let Some(&bad) = line.iter().find(|&&b| !is_line_byte(b)) {
        return Err(match bad {
            0 => Malformed::Nul,
            b'\n' | b'\r' => Malformed::EmbeddedNewline,
            _ => Malformed::ControlCharacter,
        });
    }
    if NetRecord::is_record(line) {
        return NetRecord::parse(line)
            .map(Datagram::Record)
            .map_err(|_| Malformed::BadRecord);
    }
    let request = web::quoted_request(line).ok_or(Malformed::NoQuotes)?;
    Ok(Datagram::Web { line, request })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_web_lines() {
        let Ok(Datagram::Record(r)) = classify(b"+ 127.0.0.41 127.0.0.1 GET /a HTTP/1.0\n") else {
            panic!("not a record")
        };
        assert_eq!(r.request, b"GET /a HTTP/1.0");
        let line = b"127.0.0.1 - - [22/Nov/2026:07:40:01 +0000] \"GET /a HTTP/1.0\" 200 10\n";
        assert_eq!(
            classify(line),
            Ok(Datagram::Web {
                line: &line[..line.len() - 1],
                request: b"GET /a HTTP/1.0"
            })
        );
        // A tab is fine, and so are bytes above 0x7f; a datagram without a newline too.
        assert!(classify(b"h - - [t] \"GET /\tcaf\xc3\xa9\" 200 1").is_ok());
        let longest = [&b"h \""[..], &[b'x'; 1020], b"\""].concat();
        assert_eq!(longest.len(), DATAGRAM_MAX);
        assert!(classify(&longest).is_ok());
    }

    #[test]
    fn malformed_datagrams() {
        let oversize = [vec![b'"'; 2], vec![b'a'; 1100]].concat();
        let cases: &[(&[u8], Malformed)] = &[
            (b"", Malformed::Empty),
            (b"\n", Malformed::Empty),
            (b"\r\n", Malformed::Empty),
            (&oversize, Malformed::Oversize),
            (b"a line without quotes\n", Malformed::NoQuotes),
            (b"h \"GET /\x00\" 200", Malformed::Nul),
            (b"h \"GET /\x1b[31m\" 200", Malformed::ControlCharacter),
            (b"h \"GET /\x7f\" 200", Malformed::ControlCharacter),
            (
                b"h - - [t] \"GET /\" 200 1\n1.2.3.4 - - [t] \"GET /forged\" 200 1\n",
                Malformed::EmbeddedNewline,
            ),
            (b"h \"GET /\"\rx", Malformed::EmbeddedNewline),
            (b"+ only two\n", Malformed::BadRecord),
            (
                b"+ 1.2.3.4 no.such.host.invalid GET / HTTP/1.0",
                Malformed::BadRecord,
            ),
            (b"+", Malformed::BadRecord),
        ];
        for (datagram, want) in cases {
            assert_eq!(
                classify(datagram),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(datagram)
            );
        }
        assert_eq!(Malformed::ALL.len(), Malformed::NotAllowed.index() + 1);
    }
}
