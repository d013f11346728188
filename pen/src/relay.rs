//! Relaying bytes between a client and its server, both directions at once: `Pumps`, which the
//! engine steps whenever one of the connection's sockets is ready (the idle timeout is the
//! engine's, on its timer heap).
//!
//! Memory: reads go into one scratch buffer per worker thread, and are written straight on. Only
//! what the destination does not take at once is kept, in a per-direction buffer, and while it is
//! kept that direction stops reading (back-pressure, as pen does). An idle connection therefore
//! holds no buffer at all, whatever the number of connections.
//!
//! Half-close: when one side sends EOF, everything it sent is delivered, then the other side's
//! write half is shut down; the opposite direction goes on until it ends too.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::balancer::{ConnCounters, FastClose};

/// Bytes read per call: pen reads 32 KiB; 64 KiB halves the syscalls of bulk transfers.
const CHUNK: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
    /// What a `Rewrite` makes of one read, before it is written (only used with `-H`).
    static REWRITTEN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A transformation of the client-to-server bytes (HTTP header insertion). The relay calls it
/// for every read and writes what it produces instead; with `Verbatim` the bytes go straight
/// from the read buffer, and the rewriting code is compiled out.
pub trait Rewrite {
    /// False only for `Verbatim`.
    const ACTIVE: bool;
    /// Append what to send for `input` to `out`. An error closes the connection, blamed on the
    /// client.
    fn rewrite(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()>;
    /// The client sent EOF: append anything still held back.
    fn finish(&mut self, out: &mut Vec<u8>);
}

/// No rewriting.
pub struct Verbatim;

impl Rewrite for Verbatim {
    const ACTIVE: bool = false;
    fn rewrite(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.extend_from_slice(input);
        Ok(())
    }
    fn finish(&mut self, _out: &mut Vec<u8>) {}
}

/// A stream the relay moves bytes between: tokio's reading and writing, and two hints with which
/// a socket sends a direction's last bytes and its FIN in one segment, as a server that writes
/// and closes does. Without them (the defaults, which TLS keeps) the FIN is a segment of its
/// own, which the peer acknowledges on its own too.
pub trait Endpoint: AsyncRead + AsyncWrite + Unpin {
    /// The peer's FIN has arrived and the last read emptied the socket, so the next read returns
    /// 0 (or an error). Only a hint: the relay still reads to find out.
    fn fin_follows(&self) -> bool {
        false
    }

    /// `poll_write` of bytes that a shutdown or the close follows at once, in the same call of
    /// the relay: the FIN may wait for them and ride on their last segment.
    fn poll_write_last(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write(cx, data)
    }
}

/// Which side of the connection an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides sent EOF and everything was delivered.
    Done,
    /// `tcp_fastclose`: one side finished and the connection was closed without waiting.
    FastClose,
    /// No traffic for `idle_timeout`.
    Idle,
    /// A read or write failed; the side says whose socket it was.
    Error(Side, io::Error),
}

/// One direction: reads from `src`, writes to `dst`.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet written (only when the destination pushed back).
    pending: Vec<u8>,
    written: usize,
    /// Bytes were written since the last flush. A TCP socket has nothing to flush; a TLS
    /// stream may hold encrypted records it could not send yet, and nothing else would push
    /// them out while this direction waits to read.
    unflushed: bool,
    eof: bool,
    /// EOF was forwarded (the destination's write half is shut down).
    done: bool,
}

impl Half {
    /// Move bytes from `src` to `dst` until one of them would block. Ready(Ok) once EOF has been
    /// forwarded. `progress` is set when any byte moved; `seen` gets every chunk as it was read
    /// (the request log's tap and the traffic dump), `count` the bytes sent on. At most `reads`
    /// reads: then `cx` is woken and the direction returns Pending, to come back next turn.
    #[allow(clippy::too_many_arguments)]
    fn poll_pump<R, W, X>(
        &mut self,
        reads: usize,
        other_done: bool,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        mut seen: impl FnMut(&[u8]),
        mut count: impl FnMut(usize),
        progress: &mut bool,
        rewrite: &mut X,
    ) -> Poll<Result<(), (bool, io::Error)>>
    where
        R: Endpoint,
        W: Endpoint,
        X: Rewrite,
    {
        // The bool in the error says whether it came from the source (true) or the destination.
        if self.done {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..reads.max(1) {
            while self.written < self.pending.len() {
                match Pin::new(&mut *dst).poll_write(cx, &self.pending[self.written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err((false, zero_write()))),
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.unflushed = true;
                        *progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((false, e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.pending.capacity() != 0 {
                // Drained: give the buffer back, so a connection that was pushed back once does
                // not keep it while idle.
                self.pending = Vec::new();
            }
            self.written = 0;
            if self.unflushed {
                match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((false, e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.eof && other_done {
                // The last direction to end: the close that follows sends the FIN, so a
                // separate shutdown would be one more syscall for nothing.
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return match Pin::new(&mut *dst).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => {
                        self.done = true;
                        Poll::Ready(Ok(()))
                    }
                    // The peer may already be gone; the direction is finished either way.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::NotConnected => {
                        self.done = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err((false, e))),
                    Poll::Pending => Poll::Pending,
                };
            }
            let step = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err((true, e))),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        // Finding the EOF is progress too: the turn that found it may have
                        // been this direction's last read, and the shutdown comes on the
                        // next turn, for which no readiness event will come.
                        *progress = true;
                        self.eof = true;
                        if X::ACTIVE {
                            // Held-back bytes go out before the EOF is forwarded.
                            rewrite.finish(&mut self.pending);
                            count(self.pending.len());
                        }
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Ok(())) => {
                        let read = buf.filled().len();
                        // The source's FIN came with these bytes (a server that answers and
                        // closes): read it now, so the bytes and the FIN leave in one segment.
                        let mut then_eof = None;
                        if src.fin_follows() && buf.remaining() > 0 {
                            then_eof = match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                                Poll::Ready(Ok(())) if buf.filled().len() == read => Some(Ok(())),
                                Poll::Ready(Err(e)) => Some(Err(e)),
                                // More bytes (sent on with these) or nothing yet.
                                Poll::Ready(Ok(())) | Poll::Pending => None,
                            };
                        }
                        let data = buf.filled();
                        seen(data);
                        crate::dump::chunk(data);
                        *progress = true;
                        let last = matches!(then_eof, Some(Ok(())));
                        let rewritten = if X::ACTIVE {
                            // What goes on is the rewriter's output, and at the EOF what it
                            // still held back.
                            REWRITTEN.with(|out| {
                                let mut out = out.borrow_mut();
                                out.clear();
                                let result = rewrite.rewrite(data, &mut out);
                                let last = last && result.is_ok();
                                if last {
                                    rewrite.finish(&mut out);
                                }
                                count(out.len());
                                self.send(cx, dst, &out, last).map(|()| result)
                            })
                        } else {
                            // Straight from the scratch buffer; only what does not fit is kept.
                            count(data.len());
                            self.send(cx, dst, data, last).map(|()| Ok(()))
                        };
                        match rewritten {
                            Err(e) => return Poll::Ready(Err(e)),
                            // The rewriter refused the client's bytes.
                            Ok(Err(e)) => return Poll::Ready(Err((true, e))),
                            Ok(Ok(())) => {}
                        }
                        match then_eof {
                            // The loop goes on to the shutdown (or the caller to the close).
                            Some(Ok(())) => self.eof = true,
                            Some(Err(e)) => return Poll::Ready(Err((true, e))),
                            None => {}
                        }
                        Poll::Ready(Ok(()))
                    }
                }
            });
            match step {
                Poll::Ready(Ok(())) => continue,
                other => return other,
            }
        }
        // Reads used up: let the thread's other connections run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Write `data` on to `dst` as far as it takes it now and keep the rest. `last`: the
    /// direction's EOF follows at once, so the bytes may carry the FIN (`write_last`).
    fn send<W: Endpoint>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut W,
        data: &[u8],
        last: bool,
    ) -> Result<(), (bool, io::Error)> {
        let sent = if last {
            write_last(cx, dst, data)?
        } else {
            write_now(cx, dst, data)?
        };
        self.unflushed |= sent > 0;
        self.pending.extend_from_slice(&data[sent..]);
        Ok(())
    }
}

/// Write as much of `data` as `dst` takes without blocking; how much it took.
fn write_now<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    dst: &mut W,
    data: &[u8],
) -> Result<usize, (bool, io::Error)> {
    let mut sent = 0;
    while sent < data.len() {
        match Pin::new(&mut *dst).poll_write(cx, &data[sent..]) {
            Poll::Ready(Ok(0)) => return Err((false, zero_write())),
            Poll::Ready(Ok(n)) => sent += n,
            Poll::Ready(Err(e)) => return Err((false, e)),
            Poll::Pending => break,
        }
    }
    Ok(sent)
}

/// `write_now` for a direction's last bytes (`Endpoint::poll_write_last`): the first write
/// may hold them for the FIN; what the destination does not take goes out as usual later.
fn write_last<W: Endpoint>(
    cx: &mut Context<'_>,
    dst: &mut W,
    data: &[u8],
) -> Result<usize, (bool, io::Error)> {
    match Pin::new(&mut *dst).poll_write_last(cx, data) {
        Poll::Ready(Ok(0)) if !data.is_empty() => Err((false, zero_write())),
        Poll::Ready(Ok(n)) => Ok(n + write_now(cx, dst, &data[n..])?),
        Poll::Ready(Err(e)) => Err((false, e)),
        Poll::Pending => Ok(0),
    }
}

fn zero_write() -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, "peer accepted no bytes")
}

/// Both directions of one relay, without the idle timeout (the engine keeps it on its timer
/// heap). The engine steps it from readiness events; the caller must close both streams when it
/// is over: the last direction to end is not shut down separately, because that close sends its
/// FIN. `from_client` sees every chunk read from the client, as it was read (the request log's
/// tap; it must not block), and with `-H` the client's bytes pass through `rewrite` (the
/// server's byte counter counts what was sent, after rewriting).
#[derive(Default)]
pub struct Pumps {
    /// Client to server.
    up: Half,
    /// Server to client.
    down: Half,
}

impl Pumps {
    /// Move what the streams allow, both ways. Ready when the relay is over: both directions
    /// ended, one failed (blaming the side whose socket it was), or fast-close applies.
    /// Pending otherwise, each stream having registered for what it waits on; a direction that
    /// used its `reads` for this turn with more to read wakes `cx` before returning. `progress`
    /// is set when any byte moved (or an EOF was found).
    #[allow(clippy::too_many_arguments)]
    pub fn poll_step<C, S, X>(
        &mut self,
        reads: usize,
        cx: &mut Context<'_>,
        client: &mut C,
        server: &mut S,
        counters: &ConnCounters,
        fastclose: FastClose,
        from_client: impl Fn(&[u8]),
        rewrite: &mut X,
        progress: &mut bool,
    ) -> Poll<RelayEnd>
    where
        C: Endpoint,
        S: Endpoint,
        X: Rewrite,
    {
        let (up, down) = (&mut self.up, &mut self.down);
        let up_state = up.poll_pump(
            reads,
            down.done,
            cx,
            client,
            server,
            &from_client,
            |n| counters.add_to_server(n),
            progress,
            rewrite,
        );
        if let Poll::Ready(Err((from_src, e))) = up_state {
            let side = if from_src { Side::Client } else { Side::Server };
            return Poll::Ready(RelayEnd::Error(side, e));
        }
        let down_state = down.poll_pump(
            reads,
            up.done,
            cx,
            server,
            client,
            |_| {},
            |n| counters.add_to_client(n),
            progress,
            &mut Verbatim,
        );
        if let Poll::Ready(Err((from_src, e))) = down_state {
            let side = if from_src { Side::Server } else { Side::Client };
            return Poll::Ready(RelayEnd::Error(side, e));
        }
        counters.set_pending(
            up.pending.len() - up.written,
            down.pending.len() - down.written,
        );
        if up.done && down.done {
            return Poll::Ready(RelayEnd::Done);
        }
        let fast = match fastclose {
            FastClose::Off => false,
            FastClose::Up => down.done,
            FastClose::Down => up.done,
            FastClose::Both => up.done || down.done,
        };
        if fast {
            return Poll::Ready(RelayEnd::FastClose);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    impl Endpoint for DuplexStream {}

    /// Step the pumps whenever a stream is ready, as the engine does, until the relay is over.
    async fn relay_rewriting<X: Rewrite>(
        client: &mut DuplexStream,
        server: &mut DuplexStream,
        counters: &ConnCounters,
        fastclose: FastClose,
        rewrite: &mut X,
    ) -> RelayEnd {
        let mut pumps = Pumps::default();
        poll_fn(|cx| {
            let mut progress = false;
            let from_client = |_: &[u8]| {};
            pumps.poll_step(
                16, // reads per direction and step, as the engine gives a lone connection
                cx,
                client,
                server,
                counters,
                fastclose,
                from_client,
                rewrite,
                &mut progress,
            )
        })
        .await
    }

    async fn relay(
        client: &mut DuplexStream,
        server: &mut DuplexStream,
        counters: &ConnCounters,
        fastclose: FastClose,
    ) -> RelayEnd {
        relay_rewriting(client, server, counters, fastclose, &mut Verbatim).await
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        // Small duplex buffers force partial writes and back-pressure.
        let (mut client, mut pen_client) = duplex(1000);
        let (mut pen_server, mut server) = duplex(700);
        let counters = ConnCounters::default();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let reply: Vec<u8> = payload.iter().rev().copied().collect();
        // The caller closes both streams when the relay ends (that close carries the last FIN).
        let relay = async {
            let end = relay(&mut pen_client, &mut pen_server, &counters, FastClose::Off).await;
            drop((pen_client, pen_server));
            end
        };
        let client_side = async {
            client.write_all(&payload).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let server_side = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(&reply).await.unwrap();
            server.shutdown().await.unwrap();
            got
        };
        let (end, to_client, to_server) = tokio::join!(relay, client_side, server_side);
        assert!(matches!(end, RelayEnd::Done), "{end:?}");
        assert!(to_server == payload && to_client == reply);
        assert_eq!(counters.to_server(), payload.len() as u64);
        assert_eq!(counters.to_client(), reply.len() as u64);
    }

    /// Upper-cases what it is given and holds back the last byte until the next read or EOF.
    struct Shout(Option<u8>);

    impl Rewrite for Shout {
        const ACTIVE: bool = true;
        fn rewrite(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
            if input == b"!" {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "no shouting"));
            }
            out.extend(self.0.take());
            if let Some((last, rest)) = input.split_last() {
                out.extend(rest.iter().map(u8::to_ascii_uppercase));
                self.0 = Some(last.to_ascii_uppercase());
            }
            Ok(())
        }
        fn finish(&mut self, out: &mut Vec<u8>) {
            out.extend(self.0.take());
        }
    }

    #[tokio::test]
    async fn a_rewrite_applies_client_to_server_only_and_its_bytes_are_counted() {
        let (mut client, mut pen_client) = duplex(64);
        let (mut pen_server, mut server) = duplex(64);
        let counters = ConnCounters::default();
        let relay = async {
            let end = relay_rewriting(
                &mut pen_client,
                &mut pen_server,
                &counters,
                FastClose::Off,
                &mut Shout(None),
            )
            .await;
            drop((pen_client, pen_server));
            end
        };
        let client_side = async {
            client.write_all(b"hello ").await.unwrap();
            client.write_all(b"world").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let server_side = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(b"quiet reply").await.unwrap();
            server.shutdown().await.unwrap();
            got
        };
        let (end, to_client, to_server) = tokio::join!(relay, client_side, server_side);
        assert!(matches!(end, RelayEnd::Done), "{end:?}");
        assert_eq!(
            to_server, b"HELLO WORLD",
            "the held-back byte went out at EOF"
        );
        assert_eq!(to_client, b"quiet reply");
        assert_eq!((counters.to_server(), counters.to_client()), (11, 11));
    }

    #[tokio::test]
    async fn a_rewrite_error_ends_the_relay_blamed_on_the_client() {
        let (mut client, mut pen_client) = duplex(64);
        let (mut pen_server, _server) = duplex(64);
        let counters = ConnCounters::default();
        client.write_all(b"!").await.unwrap();
        let end = relay_rewriting(
            &mut pen_client,
            &mut pen_server,
            &counters,
            FastClose::Off,
            &mut Shout(None),
        )
        .await;
        assert!(
            matches!(&end, RelayEnd::Error(Side::Client, e) if e.kind() == io::ErrorKind::InvalidData),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn fastclose_up_ends_when_the_server_is_done() {
        let (_client, mut pen_client) = duplex(64);
        let (mut pen_server, mut server) = duplex(64);
        let counters = ConnCounters::default();
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        let end = relay(&mut pen_client, &mut pen_server, &counters, FastClose::Up).await;
        assert!(matches!(end, RelayEnd::FastClose), "{end:?}");
        assert_eq!(counters.to_client(), 3);
    }
}
