//! One control exchange: connect to pen, send the command line in one write, copy everything pen
//! sends to the output until pen closes the connection.
//!
//! Every wait is bounded when the request asks for limits: the connect by `connect_timeout` (for
//! each address a name resolves to), the whole reply by `timeout`: the time spent waiting for pen,
//! added up over every read. Time spent writing the reply to a slow standard output (`| less`)
//! does not count, so a big reply read slowly is not cut off, while a pen that trickles is.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::address::{self, Address};
use crate::args::Request;
use crate::Error;

/// How often a Unix connect is tried again while pen's accept queue is full (a non-blocking
/// connect to a Unix socket reports that with EAGAIN instead of waiting).
const UNIX_RETRY: Duration = Duration::from_millis(10);
/// The read size; pen's replies are small, `status` a few kilobytes.
const CHUNK: usize = 16 * 1024;

/// Deliver the request and copy the reply to `out`.
pub fn run(request: &Request, out: &mut impl Write) -> Result<(), Error> {
    let mut socket = connect(&request.address, request.connect_timeout)?;
    send(&mut socket, &request.line, request.timeout)?;
    copy_reply(&mut socket, out, request.timeout)
}

/// Connect to pen's control port. A name may resolve to several addresses (`localhost` to `::1`
/// and `127.0.0.1`); each is tried in turn, and the first that accepts is used.
pub fn connect(address: &Address, limit: Option<Duration>) -> Result<Socket, Error> {
    match address {
        Address::Unix(path) => connect_unix(path, limit),
        Address::Tcp { host, port } => {
            let mut failure = Error::Connect;
            for addr in address::resolve(host, port)? {
                match connect_tcp(addr, limit) {
                    Ok(socket) => return Ok(socket),
                    Err(e) => failure = e,
                }
            }
            Err(failure)
        }
    }
}

fn connect_tcp(addr: SocketAddr, limit: Option<Duration>) -> Result<Socket, Error> {
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(|_| Error::Socket)?;
    let target = SockAddr::from(addr);
    let result = match limit {
        Some(limit) => socket.connect_timeout(&target, limit),
        None => socket.connect(&target),
    };
    match result {
        Ok(()) => Ok(socket),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            Err(Error::ConnectTimeout(limit.unwrap_or_default()))
        }
        Err(_) => Err(Error::Connect),
    }
}

fn connect_unix(path: &Path, limit: Option<Duration>) -> Result<Socket, Error> {
    let target = SockAddr::unix(path)
        .map_err(|_| Error::PathTooLong(path.to_string_lossy().into_owned()))?;
    let Some(limit) = limit else {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|_| Error::Socket)?;
        return socket
            .connect(&target)
            .map(|()| socket)
            .map_err(|_| Error::Connect);
    };
    let deadline = Instant::now() + limit;
    loop {
        // A fresh socket for every attempt: a failed connect leaves a socket in no defined state.
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|_| Error::Socket)?;
        // Non-blocking, a Unix connect either completes at once or fails; a full accept queue
        // fails with EAGAIN, and is tried again until the deadline.
        socket.set_nonblocking(true).map_err(|_| Error::Socket)?;
        match socket.connect(&target) {
            Ok(()) => {
                socket.set_nonblocking(false).map_err(|_| Error::Socket)?;
                return Ok(socket);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::ConnectTimeout(limit));
                }
                thread::sleep(left.min(UNIX_RETRY));
            }
            Err(_) => return Err(Error::Connect),
        }
    }
}

/// Send the command line. It is at most 1022 bytes, so one write carries all of it, as pen
/// 0.34.1's single `recv` expects; a short write (which a fresh connection does not do) is
/// finished rather than lost.
fn send(socket: &mut Socket, line: &[u8], limit: Option<Duration>) -> Result<(), Error> {
    socket.set_write_timeout(limit).map_err(|_| Error::Send)?;
    let mut rest = line;
    while !rest.is_empty() {
        match socket.write(rest) {
            Ok(0) => return Err(Error::Send),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Error::Send),
        }
    }
    Ok(())
}

/// Copy everything pen sends to `out` until pen closes the connection, writing each piece as it
/// arrives (a long `status` page shows as it comes).
pub fn copy_reply(
    socket: &mut impl ReadWithTimeout,
    out: &mut impl Write,
    limit: Option<Duration>,
) -> Result<(), Error> {
    // What is left of the time penctl may spend waiting for pen.
    let mut left = limit;
    let mut buf = vec![0u8; CHUNK];
    loop {
        if let Some(budget) = left {
            if budget.is_zero() {
                return Err(Error::ReplyTimeout(limit.unwrap_or_default()));
            }
            socket.set_read_limit(budget).map_err(|_| Error::Receive)?;
        }
        let started = Instant::now();
        let read = socket.read(&mut buf);
        left = left.map(|budget| budget.saturating_sub(started.elapsed()));
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Error::ReplyTimeout(limit.unwrap_or_default()))
            }
            Err(_) => return Err(Error::Receive),
        };
        out.write_all(&buf[..n])
            .and_then(|()| out.flush())
            .map_err(|e| Error::Stdout(e.kind()))?;
    }
    out.flush().map_err(|e| Error::Stdout(e.kind()))
}

/// A readable connection whose reads can be bounded in time: the socket, or a test double.
pub trait ReadWithTimeout: Read {
    fn set_read_limit(&mut self, limit: Duration) -> io::Result<()>;
}

impl ReadWithTimeout for Socket {
    fn set_read_limit(&mut self, limit: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads from a script of results; the limit it was given is recorded.
    struct Script {
        steps: Vec<io::Result<Vec<u8>>>,
        limits: Vec<Duration>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.steps.is_empty() {
                return Ok(0);
            }
            let bytes = self.steps.remove(0)?;
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
    }

    impl ReadWithTimeout for Script {
        fn set_read_limit(&mut self, limit: Duration) -> io::Result<()> {
            self.limits.push(limit);
            Ok(())
        }
    }

    fn script(steps: Vec<io::Result<Vec<u8>>>) -> Script {
        Script {
            steps,
            limits: Vec::new(),
        }
    }

    #[test]
    fn copies_every_piece_until_eof() {
        let mut s = script(vec![
            Ok(b"0 addr ".to_vec()),
            Err(io::ErrorKind::Interrupted.into()),
            Ok(b"127.0.0.1\n".to_vec()),
        ]);
        let mut out = Vec::new();
        copy_reply(&mut s, &mut out, Some(Duration::from_secs(30))).unwrap();
        assert_eq!(out, b"0 addr 127.0.0.1\n");
        assert!(s.limits.iter().all(|l| *l <= Duration::from_secs(30)));
        assert_eq!(s.limits.len(), 4);
    }

    #[test]
    fn no_limit_sets_no_timeout() {
        let mut s = script(vec![Ok(b"x".to_vec())]);
        let mut out = Vec::new();
        copy_reply(&mut s, &mut out, None).unwrap();
        assert_eq!((out, s.limits.len()), (b"x".to_vec(), 0));
    }

    #[test]
    fn time_spent_writing_to_a_slow_reader_does_not_count() {
        struct Slow(Vec<u8>);
        impl Write for Slow {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                thread::sleep(Duration::from_millis(40));
                self.0.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let pieces: Vec<io::Result<Vec<u8>>> = (0..3).map(|_| Ok(b"page".to_vec())).collect();
        let mut s = script(pieces);
        let mut out = Slow(Vec::new());
        // 120 ms go to the reader, far more than the limit; the reads themselves take no time.
        copy_reply(&mut s, &mut out, Some(Duration::from_millis(30))).unwrap();
        assert_eq!(out.0, b"pagepagepage");
    }

    #[test]
    fn errors_keep_what_was_printed() {
        for (kind, want) in [
            (
                io::ErrorKind::WouldBlock,
                "error reading from socket: the reply did not end within 2 seconds",
            ),
            (
                io::ErrorKind::TimedOut,
                "error reading from socket: the reply did not end within 2 seconds",
            ),
            (io::ErrorKind::ConnectionReset, "error reading from socket"),
        ] {
            let mut s = script(vec![Ok(b"part".to_vec()), Err(kind.into())]);
            let mut out = Vec::new();
            let err = copy_reply(&mut s, &mut out, Some(Duration::from_secs(2))).unwrap_err();
            assert_eq!(
                (err.to_string().as_str(), out.as_slice()),
                (want, &b"part"[..])
            );
        }
    }

    #[test]
    fn a_closed_stdout_is_reported_with_its_kind() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut s = script(vec![Ok(b"x".to_vec())]);
        let err = copy_reply(&mut s, &mut Closed, None).unwrap_err();
        assert!(
            matches!(err, Error::Stdout(io::ErrorKind::BrokenPipe)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "error writing to stdout");
    }
}
