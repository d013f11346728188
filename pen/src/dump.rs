//! Traffic dumps, pen's debug level 3 (`-ddd`): every chunk read from a client or a server is
//! logged as `N: ` followed by its bytes in hex (`47 45 54 `), or with `-a` (`ascii`) as text
//! with unprintable bytes shown as `.`.
//!
//! The check costs one comparison per chunk when dumps are off (tracing caches the decision per
//! call site), so the relay calls `chunk` unconditionally.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Level;

/// The tracing target of dumps.
pub const TARGET: &str = "pen::dump";

static ASCII: AtomicBool = AtomicBool::new(false);

/// `-a` / `ascii`: dump as text rather than hex.
pub fn set_ascii(on: bool) {
    ASCII.store(on, Ordering::Relaxed);
}

pub fn ascii() -> bool {
    ASCII.load(Ordering::Relaxed)
}

/// Dump one chunk of relayed data, if the debug level asks for dumps.
#[inline]
pub fn chunk(data: &[u8]) {
    if tracing::enabled!(target: TARGET, Level::TRACE) {
        tracing::trace!(target: TARGET, "{}", format(data, ascii()));
    }
}

/// pen's dump line (without its newline).
pub fn format(data: &[u8], ascii: bool) -> String {
    let mut out = format!("{}: ", data.len());
    for &b in data {
        if ascii {
            // pen prints isprint() and isspace() characters as they are.
            let shown = b.is_ascii_graphic() || b == b' ' || (b'\t'..=b'\r').contains(&b);
            out.push(if shown { char::from(b) } else { '.' });
        } else {
            let _ = write!(out, "{b:02x} ");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_look_like_pens() {
        // From pen 0.34.1 at -ddd (transcript 38).
        assert_eq!(
            format(b"GET /dump HTTP/1.0\r\n\r\n", false),
            "22: 47 45 54 20 2f 64 75 6d 70 20 48 54 54 50 2f 31 2e 30 0d 0a 0d 0a "
        );
        assert_eq!(
            format(b"GET /dump HTTP/1.0\r\n\r\n", true),
            "22: GET /dump HTTP/1.0\r\n\r\n"
        );
        assert_eq!(format(b"\x00a\xff\x7f", true), "4: .a..");
    }
}
