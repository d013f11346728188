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
    /// A connect's last handshake ACK is being held for pen's first write (`start_connect`).
    ack_held: bool,
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
            ack_held: false,
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

    /// Whether the peer's bytes are waiting to be read, asked without taking them (a peek).
    pub fn has_input(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::uninit()];
        matches!(self.socket.peek(&mut byte), Ok(1))
    }

    /// Whether the connect's last ACK still waits for a first write (`start_connect`).
    pub fn ack_held(&self) -> bool {
        self.ack_held
    }

    /// Send a held ACK on its own now (TCP_QUICKACK on sends a pending ACK at once).
    pub fn release_ack(&mut self) {
        if self.ack_held {
            self.ack_held = false;
            let _ = self.socket.set_quickack(true);
        }
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
                Ok(n) => {
                    // The first segment carried a held ACK.
                    self.ack_held = false;
                    sent += n;
                }
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
                Ok(n) => {
                    self.ack_held = false;
                    return Ok(n);
                }
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
        let this = self.get_mut();
        // The FIN carries a held ACK.
        this.ack_held = false;
        Poll::Ready(this.socket.shutdown(std::net::Shutdown::Write))
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
///
/// `hold_ack`: the handshake's last ACK waits for pen's first write and goes out with it
/// (TCP_QUICKACK off before the connect: Linux then holds that ACK for a first write, up to
/// 200 ms). `engine::opening` says when, and why; `Sock::release_ack` sends it on its own.
pub(super) fn start_connect(
    backend: &Backend,
    settings: &ConnOptions,
    client: Option<IpAddr>,
    hold_ack: bool,
) -> io::Result<Sock> {
    let mut held = false;
    let (socket, addr, tcp) = match backend {
        Backend::Tcp(sa) => {
            let socket = upstream_socket(*sa, settings, client)?;
            // Only a saving: without it the ACK goes on its own, as it always did.
            held = hold_ack && socket.set_quickack(false).is_ok();
            (socket, SockAddr::from(*sa), true)
        }
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
    sock.ack_held = held;
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
            let mut upstream = start_connect(&backend, &settings, None, false).unwrap();
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

    #[test]
    fn has_input_peeks_without_taking_the_bytes() {
        use std::io::Write;
        let (mut peer, ours) = pair();
        assert!(!ours.has_input(), "nothing sent yet");
        peer.write_all(b"x").unwrap();
        assert!(ours.has_input());
        let mut got = [0u8; 4];
        assert_eq!(
            (&ours.socket).read(&mut got).unwrap(),
            1,
            "the peek took nothing"
        );
        assert_eq!(got[0], b'x');
    }

    /// Accept once within a bounded wait; None if the server's side is still not complete.
    fn accept_within(
        listener: &std::net::TcpListener,
        wait: Duration,
    ) -> Option<std::net::TcpStream> {
        let until = std::time::Instant::now() + wait;
        loop {
            match listener.accept() {
                Ok((s, _)) => return Some(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A held ACK waits for pen's first write: the server's kernel completes the connection
    /// (and its accept returns) only then, with the request already in. Not held, the server
    /// can accept at once; released, too.
    #[test]
    fn a_held_ack_goes_with_the_first_write_or_when_released() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let backend = Backend::Tcp(listener.local_addr().unwrap());
        let settings = Settings::default().conn_options();

        let _silent = start_connect(&backend, &settings, None, false).unwrap();
        assert!(
            accept_within(&listener, Duration::from_secs(5)).is_some(),
            "no request waiting: the ACK goes at once"
        );

        let mut upstream = start_connect(&backend, &settings, None, true).unwrap();
        // Loopback finishes the handshake inside connect(); Linux holds the ACK up to 200 ms.
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            accept_within(&listener, Duration::ZERO).is_none(),
            "the server's side completed before pen wrote"
        );
        upstream.ready(false, true, false);
        assert_eq!(upstream.write_now(b"request", 0).unwrap(), 7);
        let mut server = accept_within(&listener, Duration::from_secs(5)).expect("accepted");
        server.set_nonblocking(false).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = [0u8; 7];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"request");
        assert!(!upstream.ack_held(), "the request carried it");

        // Nothing to write after all (a server that speaks first): the ACK goes on its own.
        let mut upstream = start_connect(&backend, &settings, None, true).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(accept_within(&listener, Duration::ZERO).is_none());
        assert!(upstream.ack_held());
        upstream.release_ack();
        assert!(
            accept_within(&listener, Duration::from_secs(5)).is_some(),
            "released, the server's side completes without a write"
        );
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
