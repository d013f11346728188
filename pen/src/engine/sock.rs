//! A socket on the engine and what epoll last told of it (`Sock`): reads and writes that never
//! wait, Nagle's rule, and the non-blocking connect to a server.

use std::io::{self, IoSlice, Read};
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::addr::Backend;
use crate::balancer::ConnOptions;
use crate::net::upstream_socket;

/// When a TCP socket turns Nagle's algorithm off (TCP_NODELAY). Nagle cannot hold back a
/// socket's first write: Linux delays a small segment only while an earlier small one is
/// unacknowledged, and none was sent before. So the option is set just before the second write,
/// and a connection that writes once each way (a request, a response, a close) costs no
/// setsockopt at all, while one that writes more behaves from then on as if it had been set at
/// the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nagle {
    /// Left as the socket has it.
    Keep,
    /// Turned off before the second write; true once the first write went out.
    OffAfterFirstWrite { written: bool },
    /// Turned off (or found off, under TLS).
    Off,
}

/// A socket and what epoll last told of it (edge-triggered: a flag stays set until a call
/// finds the socket empty or full).
pub(super) struct Sock {
    pub socket: Socket,
    tcp: bool,
    readable: bool,
    writable: bool,
    /// The peer sent its FIN or the socket failed: readable until a read says so, whatever a
    /// short read suggests (no further edge will come).
    closed: bool,
    nagle: Nagle,
}

impl Sock {
    pub fn new(socket: Socket, tcp: bool) -> Sock {
        Sock {
            socket,
            tcp,
            readable: false,
            writable: true,
            closed: false,
            nagle: Nagle::Keep,
        }
    }

    /// Record an epoll event.
    pub fn ready(&mut self, readable: bool, writable: bool, closed: bool) {
        self.readable |= readable;
        self.writable |= writable;
        self.closed |= closed;
    }

    pub(super) fn can_read(&self) -> bool {
        self.readable || self.closed
    }

    /// TCP_NODELAY from the second write on (see `Nagle`).
    pub fn set_nodelay(&mut self) {
        if self.tcp && self.nagle == Nagle::Keep {
            self.nagle = Nagle::OffAfterFirstWrite { written: false };
        }
    }

    /// TCP_NODELAY now: under TLS, whose handshake has already written.
    pub fn set_nodelay_now(&mut self) {
        if self.tcp {
            let _ = self.socket.set_nodelay(true);
            self.nagle = Nagle::Off;
        }
    }

    /// Make the close that follows send a reset (SO_LINGER 0) rather than a FIN, for a
    /// connection cut short: the peer sees an error, not what looks like a complete transfer.
    /// Nothing on a Unix socket.
    pub fn reset_on_close(&self) {
        if self.tcp {
            let _ = self.socket.set_linger(Some(Duration::ZERO));
        }
    }

    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = (&self.socket).read(buf);
        match &result {
            // A short read emptied the socket; the next data brings a new edge.
            Ok(n) if *n > 0 && *n < buf.len() => self.readable = false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.readable = false;
                self.closed = false;
            }
            _ => {}
        }
        result
    }

    /// Write as much of `data` as the socket takes now. `flags` go to the first send only
    /// (`MSG_MORE` for bytes a FIN follows).
    pub(super) fn write_now(
        &mut self,
        data: &[u8],
        mut flags: nix::libc::c_int,
    ) -> io::Result<usize> {
        let mut sent = 0;
        while sent < data.len() && self.writable {
            self.before_send();
            let wrote = self.socket.send_with_flags(&data[sent..], flags);
            flags = 0;
            match wrote {
                Ok(0) => return Err(zero_write()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }
}

impl Sock {
    /// `Nagle`'s step before each send.
    fn before_send(&mut self) {
        match self.nagle {
            Nagle::OffAfterFirstWrite { written: false } => {
                self.nagle = Nagle::OffAfterFirstWrite { written: true }
            }
            Nagle::OffAfterFirstWrite { written: true } => {
                let _ = self.socket.set_nodelay(true);
                self.nagle = Nagle::Off;
            }
            Nagle::Keep | Nagle::Off => {}
        }
    }

    /// Send what of `bufs` the socket takes now, in one call: rustls hands over a TLS flight
    /// as several records, which then leave together.
    fn write_vectored_now(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        while total > 0 && self.writable {
            self.before_send();
            match self.socket.send_vectored(bufs) {
                Ok(0) => return Err(zero_write()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(0)
    }
}

fn zero_write() -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, "peer accepted no bytes")
}

/// The relay (`relay::Pumps`) drives a `Sock` as it drives a tokio stream: Pending means "wait
/// for epoll", which the engine does; nothing is registered with the context.
impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.can_read() {
            match this.read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Pending
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().write_now(data, 0) {
            Ok(0) if !data.is_empty() => Poll::Pending,
            result => Poll::Ready(result),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().write_vectored_now(bufs) {
            Ok(0) if bufs.iter().any(|b| !b.is_empty()) => Poll::Pending,
            result => Poll::Ready(result),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.shutdown(std::net::Shutdown::Write))
    }
}

/// The FIN rides on the last bytes: epoll reported it (`closed`) and a short read emptied the
/// socket, so the relay reads the 0 before it writes; then those bytes go out with `MSG_MORE`,
/// which holds the segment until the shutdown (or the close) that follows at once adds the FIN.
impl crate::relay::Endpoint for Sock {
    fn fin_follows(&self) -> bool {
        self.closed && !self.readable
    }

    fn poll_write_last(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let flags = if self.tcp { nix::libc::MSG_MORE } else { 0 };
        match self.get_mut().write_now(data, flags) {
            Ok(0) if !data.is_empty() => Poll::Pending,
            result => Poll::Ready(result),
        }
    }
}

/// Start a non-blocking connect to `backend` with the socket options the settings ask for
/// (`net::upstream_socket`, as the idlers' connects have them). The socket is writable once
/// the connect has finished; `connect_result` then says how.
pub(super) fn start_connect(
    backend: &Backend,
    settings: &ConnOptions,
    client: Option<IpAddr>,
) -> io::Result<Sock> {
    let (socket, addr, tcp) = match backend {
        Backend::Tcp(sa) => (
            upstream_socket(*sa, settings, client)?,
            SockAddr::from(*sa),
            true,
        ),
        Backend::Unix(path) => (
            Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?,
            SockAddr::unix(path)?,
            false,
        ),
    };
    match socket.connect(&addr) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let mut sock = Sock::new(socket, tcp);
    sock.writable = false;
    if settings.tcp_nodelay {
        sock.set_nodelay();
    }
    Ok(sock)
}

/// How a pending connect stands, once its socket has reported an event.
pub(super) fn connect_result(server: &mut Sock) -> Option<io::Result<()>> {
    if !server.writable && !server.closed {
        // No event from the server's socket yet (the client's woke the connection).
        return None;
    }
    match server.socket.take_error() {
        Ok(Some(e)) | Err(e) => Some(Err(e)),
        Ok(None) if server.writable => Some(Ok(())),
        Ok(None) => None,
    }
}

/// A socket pair: the peer's end (blocking, for the test) and pen's (non-blocking).
#[cfg(test)]
pub(super) fn test_pair() -> (std::os::unix::net::UnixStream, Sock) {
    let (peer, ours) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (peer, Sock::new(Socket::from(ours), false))
}

#[cfg(test)]
mod tests {
    use super::test_pair as pair;
    use super::*;
    use crate::balancer::Settings;

    /// TCP_NODELAY as the socket has it now.
    fn nodelay(s: &Sock) -> bool {
        s.socket.nodelay().unwrap()
    }

    #[test]
    fn tcp_nodelay_goes_on_before_the_second_write_and_never_without_the_setting() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = Backend::Tcp(listener.local_addr().unwrap());
        for tcp_nodelay in [true, false] {
            let settings = Settings {
                tcp_nodelay,
                ..Settings::default()
            }
            .conn_options();
            let mut upstream = start_connect(&backend, &settings, None).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // Accepted, so the connect is over: the socket is writable.
            upstream.ready(false, true, false);
            assert!(!nodelay(&upstream), "set before any write");
            assert_eq!(upstream.write_now(b"first", 0).unwrap(), 5);
            assert!(!nodelay(&upstream), "a single write needs no setsockopt");
            assert_eq!(upstream.write_now(b"second", 0).unwrap(), 6);
            assert_eq!(nodelay(&upstream), tcp_nodelay, "tcp_nodelay {tcp_nodelay}");
            assert_eq!(upstream.write_now(b"third", 0).unwrap(), 5);
            assert_eq!(nodelay(&upstream), tcp_nodelay);
            let mut got = [0u8; 16];
            let mut n = 0;
            while n < got.len() {
                n += server.read(&mut got[n..]).unwrap();
            }
            assert_eq!(&got, b"firstsecondthird");
        }
    }

    /// rustls hands a TLS flight over as several records: one call sends them, in order.
    #[test]
    fn a_vectored_write_sends_every_slice_in_order_in_one_call() {
        let (mut peer, mut ours) = pair();
        let bufs = [
            IoSlice::new(b"one "),
            IoSlice::new(b""),
            IoSlice::new(b"two"),
        ];
        let sent = ours.write_vectored_now(&bufs).unwrap();
        assert_eq!(sent, 7);
        let mut got = [0u8; 7];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one two");
        // Nothing to send is no send at all.
        assert_eq!(ours.write_vectored_now(&[IoSlice::new(b"")]).unwrap(), 0);
    }
}
