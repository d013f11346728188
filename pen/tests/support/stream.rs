//! Endless checked byte streams for the tests of sustained load (`sustained.rs`,
//! `fairness.rs`): one random 1 MiB block, rotated by a different amount for each block-sized
//! stretch of the stream, so that making and checking it are slice copies and compares (fast
//! even in a test build) while a lost, repeated or reordered piece still shows; and clients
//! that stream it through pen to an echo backend.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use super::{pattern, Pen, Stream, IO_TIMEOUT};

pub const BLOCK: usize = 1 << 20;

/// An endless deterministic byte stream (see the module comment).
#[derive(Clone)]
pub struct Data {
    block: Arc<Vec<u8>>,
    seed: u64,
}

impl Data {
    pub fn new(seed: u64) -> Data {
        Data {
            block: Arc::new(pattern(seed, BLOCK)),
            seed,
        }
    }

    /// Where the block-sized stretch `k` starts in the block.
    fn rotation(&self, k: u64) -> usize {
        let x = (k ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (x >> 40) as usize % BLOCK
    }

    /// Apply `f` to the pieces of the block that make up the stream at `pos..pos + len`, each
    /// with its offset from `pos`; stop at the first `false`.
    fn pieces(&self, mut pos: u64, len: usize, mut f: impl FnMut(usize, &[u8]) -> bool) {
        let mut done = 0;
        while done < len {
            let offset = (pos % BLOCK as u64) as usize;
            let start = (offset + self.rotation(pos / BLOCK as u64)) % BLOCK;
            let n = (len - done).min(BLOCK - offset).min(BLOCK - start);
            if !f(done, &self.block[start..start + n]) {
                return;
            }
            done += n;
            pos += n as u64;
        }
    }

    /// The stream's bytes at `pos..pos + out.len()`.
    pub fn fill(&self, pos: u64, out: &mut [u8]) {
        self.pieces(pos, out.len(), |at, piece| {
            out[at..at + piece.len()].copy_from_slice(piece);
            true
        });
    }

    /// The position of the first byte of `got` (read at `pos`) that differs from the stream.
    pub fn first_difference(&self, pos: u64, got: &[u8]) -> Option<u64> {
        let mut bad = None;
        self.pieces(pos, got.len(), |at, piece| {
            let here = &got[at..at + piece.len()];
            if here == piece {
                return true;
            }
            let i = here
                .iter()
                .zip(piece)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            bad = Some(pos + (at + i) as u64);
            false
        });
        bad
    }
}

/// Write sizes from 1 byte to 1 MiB, spread evenly over the powers of two (xorshift64).
pub struct Sizes(pub u64);

impl Sizes {
    pub fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let bits = (self.0 % 21) as u32;
        1 + (self.0 >> 8) as usize % (1usize << bits)
    }
}

/// How a reader's stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A clean EOF after this many bytes, all as expected.
    Eof(u64),
    /// A byte that differs from the stream, at this position.
    Differs(u64),
    /// An error after this many bytes.
    Failed(u64, ErrorKind),
}

/// Read `s` to its end, checking every byte against `data`.
pub fn read_checked(s: &mut impl Read, data: &Data) -> End {
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return End::Eof(pos),
            Ok(n) => {
                if let Some(at) = data.first_difference(pos, &buf[..n]) {
                    return End::Differs(at);
                }
                pos += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return End::Failed(pos, e.kind()),
        }
    }
}

/// Write `data` from its start until `more(written)` says stop, in writes of the sizes `sizes`
/// gives, then half-close. Returns the bytes written, or the error.
pub fn write_stream(
    s: &mut Stream,
    data: &Data,
    sizes: &mut dyn FnMut() -> usize,
    more: &dyn Fn(u64) -> Option<usize>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while let Some(limit) = more(pos) {
        let n = sizes().min(limit);
        data.fill(pos, &mut buf[..n]);
        s.write_all(&buf[..n])?;
        pos += n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    Ok(pos)
}

/// A client that streams `data` through `pen` from 127.0.0.N in 1 MiB writes until `deadline`
/// while another thread reads the echo, checking every byte. Joins to (bytes written or the
/// write's error, how the echo ended).
pub type Streamer = thread::JoinHandle<(Result<u64, ErrorKind>, End)>;

pub fn streamer(pen: &Pen, n: u8, data: Data, deadline: Instant) -> Streamer {
    let s = Stream::Tcp(pen.connect_from(n));
    thread::spawn(move || {
        let mut reader = s.try_clone().expect("clone the client socket");
        reader.set_read_timeout(Some(IO_TIMEOUT));
        let check = data.clone();
        let read = thread::spawn(move || read_checked(&mut reader, &check));
        let mut writer = s;
        let written = write_stream(&mut writer, &data, &mut || BLOCK, &|_| {
            (Instant::now() < deadline).then_some(BLOCK)
        });
        (written.map_err(|e| e.kind()), read.join().expect("reader"))
    })
}

/// Join the streamers: each wrote at least a block, and read back exactly what it wrote.
/// Returns the bytes moved each way, in all.
pub fn join_streamers(streamers: Vec<Streamer>) -> u64 {
    let mut total = 0;
    for (i, c) in streamers.into_iter().enumerate() {
        let (written, read) = c.join().expect("client thread");
        let written = written.unwrap_or_else(|e| panic!("client {i}: write failed: {e:?}"));
        assert_eq!(read, End::Eof(written), "client {i}");
        assert!(
            written >= BLOCK as u64,
            "client {i} moved only {written} bytes"
        );
        total += written;
    }
    total
}
