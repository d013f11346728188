//! The server side of one TLS connection over any non-blocking transport: the handshake as a
//! future that needs no task and no timer (`Handshake`), and the stream it ends in
//! (`TlsClient`). The epoll engine polls both straight from readiness events, with its own
//! sockets underneath; nothing here registers with a context, so a transport that returns
//! Pending without registering (the engine's) is as good as a tokio one.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::{AcceptedAlert, Acceptor};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::{Accept, TlsStream};
use tokio_rustls::StartHandshake;

use super::config::Contexts;

/// A client's handshake: first its ClientHello, which picks the configuration by the SNI name
/// it asks for, then the rest under that configuration. Resolves to the established stream,
/// or to an error once any alert TLS allows has been sent. The caller bounds it in time
/// (`timeout`).
pub struct Handshake<IO> {
    contexts: Arc<Contexts>,
    phase: Phase<IO>,
}

enum Phase<IO> {
    Hello {
        io: IO,
        acceptor: Acceptor,
        /// A malformed or unacceptable ClientHello's alert, being sent before the error.
        alert: Option<(rustls::Error, AcceptedAlert)>,
    },
    Rest(Accept<IO>),
    Over,
}

impl<IO> Handshake<IO> {
    pub(super) fn new(contexts: Arc<Contexts>, io: IO) -> Handshake<IO> {
        Handshake {
            contexts,
            phase: Phase::Hello {
                io,
                acceptor: Acceptor::default(),
                alert: None,
            },
        }
    }

    /// How long the client may take: the handshake timeout of the configuration it started
    /// under.
    pub fn timeout(&self) -> Duration {
        self.contexts.handshake_timeout
    }

    /// The transport, to tell it of readiness; None once the handshake is over.
    pub fn io_mut(&mut self) -> Option<&mut IO> {
        match &mut self.phase {
            Phase::Hello { io, .. } => Some(io),
            Phase::Rest(accept) => accept.get_mut(),
            Phase::Over => None,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Future for Handshake<IO> {
    type Output = io::Result<TlsClient<IO>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Hello {
                    io,
                    acceptor,
                    alert,
                } => {
                    let mut io = Sync { io, cx };
                    if let Some((error, mut pending)) = alert.take() {
                        match pending.write(&mut io) {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                *alert = Some((error, pending));
                                return Poll::Pending;
                            }
                            // Sent (or unsendable): the handshake has failed.
                            Ok(0) | Err(_) => {
                                return over(
                                    this,
                                    io::Error::new(io::ErrorKind::InvalidData, error),
                                )
                            }
                            Ok(_) => {
                                *alert = Some((error, pending));
                                continue;
                            }
                        }
                    }
                    match acceptor.read_tls(&mut io) {
                        Ok(0) => return over(this, io::ErrorKind::UnexpectedEof.into()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                        Err(e) => return over(this, e),
                    }
                    match acceptor.accept() {
                        Ok(None) => {}
                        Ok(Some(accepted)) => {
                            let Phase::Hello { io, .. } =
                                std::mem::replace(&mut this.phase, Phase::Over)
                            else {
                                unreachable!("in the Hello phase");
                            };
                            let name = accepted.client_hello().server_name().map(str::to_owned);
                            let config = this.contexts.choose(name.as_deref());
                            let start = StartHandshake::from_parts(accepted, io);
                            this.phase = Phase::Rest(start.into_stream(config));
                        }
                        Err((error, pending)) => *alert = Some((error, pending)),
                    }
                }
                Phase::Rest(accept) => {
                    let result = std::task::ready!(Pin::new(accept).poll(cx));
                    this.phase = Phase::Over;
                    return Poll::Ready(result.map(|stream| TlsClient {
                        stream,
                        shut_down: false,
                    }));
                }
                Phase::Over => return Poll::Ready(Err(io::Error::other("handshake already over"))),
            }
        }
    }
}

fn over<IO, T>(handshake: &mut Handshake<IO>, e: io::Error) -> Poll<io::Result<T>> {
    handshake.phase = Phase::Over;
    Poll::Ready(Err(e))
}

/// rustls's blocking-style reads and writes over a non-blocking transport: Pending becomes
/// WouldBlock.
struct Sync<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
}

impl<IO: AsyncRead + Unpin> Read for Sync<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Write for Sync<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A client whose handshake completed: reads give plaintext, writes are encrypted.
#[derive(Debug)]
pub struct TlsClient<IO> {
    stream: TlsStream<IO>,
    /// close_notify went out and the transport was half-closed.
    shut_down: bool,
}

impl<IO> TlsClient<IO> {
    /// The transport underneath.
    pub fn io(&self) -> &IO {
        self.stream.get_ref().0
    }

    pub fn io_mut(&mut self) -> &mut IO {
        self.stream.get_mut().0
    }

    /// Has a shutdown (close_notify, then the half-close) been done?
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsClient<IO> {
    /// A client that closes its TCP connection without TLS's close_notify is treated as having
    /// sent EOF, as a plain TCP client would be: the relay half-closes towards the server and
    /// lets the other direction finish, instead of failing both.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut self.get_mut().stream;
        let read = Pin::new(&mut *this).poll_read(cx, buf);
        // Reading can make rustls queue a message of its own (the refusal of a renegotiation,
        // the answer to a key update). Send it now: the relay writes to this stream only when
        // the server has something to say. Best effort: if the socket is full it goes out
        // with the next write.
        if this.get_ref().1.wants_write() {
            let _ = Pin::new(&mut *this).poll_flush(cx);
        }
        match read {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsClient<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// close_notify, then the transport's half-close.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.shut_down |= matches!(done, Poll::Ready(Ok(())));
        done
    }
}

/// TLS records hide where the peer's FIN falls: the relay's defaults.
impl<IO: AsyncRead + AsyncWrite + Unpin> crate::relay::Endpoint for TlsClient<IO> {}
