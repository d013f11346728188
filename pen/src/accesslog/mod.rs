//! pen's log formats, and the web-server log lines they are matched with. This is the only code
//! that knows them; pen's request log writer, penlogd and mergelogs all go through it.
//!
//! * The request: the first line of what a client sent in one read, at most [`REQUEST_MAX`]
//!   bytes, with every byte that is not printable ASCII (or a tab) replaced by `.` ([`Request`]).
//! * pen's file log line: `client epoch server request\n` ([`pen::FileLine`]).
//! * pen's network record, one UDP datagram to penlogd: `+ client server request\n`
//!   ([`pen::NetRecord`]).
//! * Apache's Common and Combined log lines, as penlogd and mergelogs read them ([`web`]), and
//!   the time stamp in them ([`time`]).
//!
//! Everything here works on bytes, because log files and datagrams need not be UTF-8, and
//! nothing here does I/O.

pub mod pen;
pub mod time;
pub mod web;

pub use pen::{FileLine, NetRecord, PenLineError};
pub use web::{WebLine, WebLineError};

/// The longest request pen logs, in bytes (pen 0.34.1 cuts file log requests at 100).
pub const REQUEST_MAX: usize = 100;

/// The request part of one log record: the first line of a chunk read from a client, cut at
/// [`REQUEST_MAX`] bytes, sanitised. Fixed size, so that taking it on the data path allocates
/// nothing.
#[derive(Clone, Copy)]
pub struct Request {
    bytes: [u8; REQUEST_MAX],
    len: u8,
}

impl Request {
    /// The request of a chunk as pen logs it: up to the first CR or LF, at most
    /// [`REQUEST_MAX`] bytes, every byte that is not printable ASCII or a tab replaced by `.`
    /// (pen 0.34.1 replaced only bytes >= 0x80 and wrote control characters, NUL included, raw).
    pub fn from_chunk(chunk: &[u8]) -> Request {
        let mut bytes = [0u8; REQUEST_MAX];
        let mut len = 0;
        for &b in chunk.iter().take(REQUEST_MAX) {
            if b == b'\r' || b == b'\n' {
                break;
            }
            bytes[len] = if b == b'\t' || (0x20..0x7f).contains(&b) {
                b
            } else {
                b'.'
            };
            len += 1;
        }
        Request {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Request({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// True for bytes that may appear inside a log line: anything but control characters (a tab
/// is allowed). Bytes >= 0x80 are allowed: web logs need not be ASCII.
pub fn is_line_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_the_first_line_cut_and_sanitised() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n", b"GET /a HTTP/1.0"),
            (b"hello=world", b"hello=world"),
            (b"\r\n", b""),
            (b"", b""),
            // Transcript 46: UTF-8 bytes and a tab.
            (
                b"GET /caf\xc3\xa9\ttab HTTP/1.0\r\n",
                b"GET /caf..\ttab HTTP/1.0",
            ),
            (b"a\x00b\x1bc\x7fd\n", b"a.b.c.d"),
            (b"x\ry", b"x"),
        ];
        for (chunk, want) in cases {
            assert_eq!(
                Request::from_chunk(chunk).as_bytes(),
                *want,
                "{:?}",
                String::from_utf8_lossy(chunk)
            );
        }
        let long = [b"GET /".as_slice(), &[b'x'; 300]].concat();
        let r = Request::from_chunk(&long);
        assert_eq!(r.as_bytes().len(), REQUEST_MAX);
        assert_eq!(&r.as_bytes()[..5], b"GET /");
    }
}
