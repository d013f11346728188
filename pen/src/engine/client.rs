//! The client's side of a connection on the engine: a plain socket, or TLS (its handshake, then
//! the established stream), each over the engine's own `Sock`.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn;
use super::sock::Sock;
use crate::tls::{Handshake, TlsClient};

pub(super) enum Client {
    Plain(Sock),
    Handshaking(Box<Handshake<Sock>>),
    Tls(Box<TlsClient<Sock>>),
}

impl Client {
    /// The socket underneath; None only once a handshake has ended and before the connection
    /// moved on, which no event or timer sees.
    pub fn sock(&mut self) -> Option<&mut Sock> {
        match self {
            Client::Plain(sock) => Some(sock),
            Client::Handshaking(handshake) => handshake.io_mut(),
            Client::Tls(tls) => Some(tls.io_mut()),
        }
    }

    /// TCP_NODELAY: from the second write on for a plain client (see `Nagle`), at once under
    /// TLS, whose handshake has already written.
    pub fn set_nodelay(&mut self) {
        match self {
            Client::Plain(sock) => sock.set_nodelay(),
            Client::Handshaking(_) | Client::Tls(_) => {
                if let Some(sock) = self.sock() {
                    sock.set_nodelay_now();
                }
            }
        }
    }

    /// Make the close send a reset (see `Sock::reset_on_close`).
    pub fn reset_on_close(&mut self) {
        if let Some(sock) = self.sock() {
            sock.reset_on_close();
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Client::Plain(_))
    }

    /// `dummy`: read the client's first chunk and answer it. None while nothing has come yet;
    /// Some once the connection is finished with.
    pub fn dummy_step(&mut self) -> Option<()> {
        match self {
            Client::Plain(sock) => conn::dummy_step(sock),
            Client::Tls(tls) => conn::with_context(|cx| dummy_poll(&mut **tls, cx)).0,
            Client::Handshaking(_) => Some(()),
        }
    }

    /// Send close_notify and half-close, if the socket takes it now: the end of a relay that
    /// ended well, just before the close. A TLS client expects close_notify before the FIN, or
    /// it may take the end of the data for a truncation.
    pub fn notify_close(&mut self) {
        if let Client::Tls(tls) = self {
            if tls.is_shut_down() {
                return;
            }
            conn::with_context(|cx| {
                let _ = Pin::new(&mut **tls).poll_shutdown(cx);
            });
        }
    }
}

/// `dummy`'s answer over any stream: the page once the first chunk is in.
fn dummy_poll<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, cx: &mut Context<'_>) -> Option<()> {
    let mut buf = [0u8; 4096];
    let mut buf = ReadBuf::new(&mut buf);
    match Pin::new(&mut *s).poll_read(cx, &mut buf) {
        Poll::Pending => None,
        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
            // The page fits in any socket's buffer; what does not go at once is not retried.
            let _ = Pin::new(&mut *s).poll_write(cx, conn::DUMMY_PAGE);
            let _ = Pin::new(&mut *s).poll_shutdown(cx);
            Some(())
        }
        Poll::Ready(_) => Some(()),
    }
}
