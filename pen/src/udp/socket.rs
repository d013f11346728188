//! UDP sockets: the listening socket, which receives every client datagram and sends every
//! reply, and the connected upstream socket each session has towards its server.
//!
//! A listener bound to one address replies from that address with plain `sendto`. A wildcard
//! listener (`0.0.0.0`, `::`) learns the destination address of each datagram (IP_PKTINFO,
//! IPV6_RECVPKTINFO) and replies from it, so a client that sent to 127.0.0.3 hears back from
//! 127.0.0.3, not from whatever address the routing table prefers.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::libc;
use nix::sys::socket::{
    recvmmsg, sendmmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned,
    MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrStorage,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::net::BindError;

/// Where a client's datagram arrived, for a wildcard listener: the reply leaves from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalDst {
    pub addr: IpAddr,
    pub ifindex: u32,
}

/// Receive buffer asked for on the listener: it takes every client's datagrams, so bursts (a
/// flood of new source ports) queue here while sessions are being set up.
const LISTENER_RCVBUF: usize = 4 << 20;

/// Bind the listening socket. No SO_REUSEADDR or SO_REUSEPORT, so a second pen on the same
/// address fails to start instead of sharing (or stealing) the datagrams. A wildcard IPv6
/// listener takes IPv4 clients too, as the TCP listener does.
pub fn bind(addr: SocketAddr) -> Result<UdpSocket, BindError> {
    let io_err = |source| BindError::Io {
        addr: format!("udp {addr}"),
        source,
    };
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )
    .map_err(io_err)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false).map_err(io_err)?;
    }
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(LISTENER_RCVBUF);
    if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => setsockopt(&socket, sockopt::Ipv4PacketInfo, &true),
            SocketAddr::V6(_) => setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true),
        }
        .map_err(|e| io_err(e.into()))?;
    }
    socket.bind(&addr.into()).map_err(io_err)?;
    Ok(socket.into())
}

/// The listening socket (non-blocking).
pub struct Downstream {
    socket: UdpSocket,
    /// A wildcard listener: replies name their source address.
    pktinfo: bool,
    v6: bool,
}

impl AsFd for Downstream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Downstream {
    pub fn new(socket: UdpSocket) -> io::Result<Downstream> {
        let local = socket.local_addr()?;
        Ok(Downstream {
            socket,
            pktinfo: local.ip().is_unspecified(),
            v6: local.is_ipv6(),
        })
    }

    /// Receive what is waiting, up to a batch, without blocking: how many datagrams came (0
    /// when none was waiting). A short batch means the queue is empty for now.
    pub fn recv_batch(&self, batch: &mut Batch) -> io::Result<usize> {
        match batch.recv(self.socket.as_raw_fd()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    /// Send a datagram to a client without waiting; WouldBlock when the socket buffer is full
    /// (the datagram is then dropped, as a router would). Direct syscalls, as for upstream
    /// sockets: nothing waits for this socket to be writable.
    pub fn send_to(
        &self,
        buf: &[u8],
        to: SocketAddr,
        local: Option<LocalDst>,
    ) -> io::Result<usize> {
        let Some(local) = local.filter(|_| self.pktinfo) else {
            return self.socket.send_to(buf, to);
        };
        let fd = self.socket.as_raw_fd();
        let iov = [IoSlice::new(buf)];
        let sent = match (self.v6, to, local.addr) {
            (false, SocketAddr::V4(to), IpAddr::V4(src)) => {
                let pi = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(src).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::Ipv4PacketInfo(&pi)],
                    MsgFlags::empty(),
                    Some(&SockaddrIn::from(to)),
                )
            }
            (true, to, src) => {
                let to = match to {
                    SocketAddr::V6(v6) => v6,
                    SocketAddr::V4(v4) => {
                        SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0)
                    }
                };
                let src = match src {
                    IpAddr::V6(v6) => v6,
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                };
                let pi = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: src.octets(),
                    },
                    // Only a link-local source needs its interface named.
                    ipi6_ifindex: if src.is_unicast_link_local() {
                        local.ifindex
                    } else {
                        0
                    },
                };
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::Ipv6PacketInfo(&pi)],
                    MsgFlags::empty(),
                    Some(&SockaddrIn6::from(to)),
                )
            }
            (false, to, _) => return self.socket.send_to(buf, to),
        };
        sent.map_err(io::Error::from)
    }
}

/// Replies gathered during one turn of the loop, for their clients: on a listener bound to one
/// address they leave together, with one `sendmmsg` per `BATCH`, instead of one `sendto` each
/// (a turn typically finds many sessions' replies waiting). A wildcard listener names each
/// reply's source address in its own control message, which `sendmmsg` cannot vary per
/// message, so there each reply is sent by itself. Nothing waits here beyond the turn.
pub struct Outbox<T> {
    bufs: Box<[u8]>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Length, client, source address and the caller's tag of each reply held.
    meta: Vec<(usize, SocketAddr, Option<LocalDst>, T)>,
}

impl<T> Outbox<T> {
    pub fn new() -> Self {
        Outbox {
            bufs: vec![0; BATCH * SLOT].into_boxed_slice(),
            headers: MultiHeaders::preallocate(BATCH, None),
            meta: Vec::with_capacity(BATCH),
        }
    }

    /// Where the next reply is to be read; `push` keeps it. Full after `BATCH` replies: `send`
    /// first.
    pub fn slot(&mut self) -> &mut [u8] {
        let i = self.meta.len();
        &mut self.bufs[i * SLOT..(i + 1) * SLOT]
    }

    /// Keep the `len` bytes just read into `slot`, for `to`.
    pub fn push(&mut self, len: usize, to: SocketAddr, local: Option<LocalDst>, tag: T) {
        debug_assert!(!self.is_full() && len <= SLOT);
        self.meta.push((len, to, local, tag));
    }

    pub fn is_full(&self) -> bool {
        self.meta.len() == BATCH
    }

    /// Send every reply held through `down`, then tell `sent` how each went (bytes sent or the
    /// error), in order. A reply the socket could not take is dropped, as `send_to` says.
    pub fn send(&mut self, down: &Downstream, mut sent: impl FnMut(T, io::Result<usize>)) {
        let mut done = 0;
        if !down.pktinfo {
            done = self.send_batch(down.socket.as_raw_fd());
        }
        // Past the batch: a wildcard listener's replies, or the rest after a reply the kernel
        // refused (`sendmmsg` stops at the first error without saying which; sending it alone
        // finds the error, and the ones after it still go).
        let mut meta = std::mem::take(&mut self.meta);
        for (i, (len, to, local, tag)) in meta.drain(..).enumerate() {
            let outcome = if i < done {
                Ok(len)
            } else {
                down.send_to(&self.bufs[i * SLOT..i * SLOT + len], to, local)
            };
            sent(tag, outcome);
        }
        self.meta = meta;
    }

    /// `sendmmsg` the replies held; how many the kernel took from the front (0 on an error).
    fn send_batch(&mut self, fd: RawFd) -> usize {
        if self.meta.len() < 2 {
            return 0; // one reply: plain sendto is the cheaper call
        }
        let iovs: Vec<[IoSlice<'_>; 1]> = self
            .meta
            .iter()
            .enumerate()
            .map(|(i, (len, ..))| [IoSlice::new(&self.bufs[i * SLOT..i * SLOT + len])])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = self
            .meta
            .iter()
            .map(|(_, to, ..)| Some(SockaddrStorage::from(*to)))
            .collect();
        let none: [ControlMessage<'_>; 0] = [];
        match sendmmsg(fd, &mut self.headers, &iovs, addrs, none, MsgFlags::empty()) {
            Ok(results) => results.count(),
            Err(_) => 0,
        }
    }
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox::new()
    }
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Datagrams taken from the listener per system call.
pub const BATCH: usize = 16;
/// Room for one datagram: the largest UDP payload fits.
const SLOT: usize = 65_536;

/// Buffers and headers for receiving up to `BATCH` datagrams with one `recvmmsg`, reused for
/// every call.
pub struct Batch {
    bufs: Box<[u8]>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Length, sender and destination of each datagram of the last call.
    meta: Vec<(usize, Option<SocketAddr>, Option<LocalDst>)>,
}

impl Batch {
    pub fn new() -> Self {
        Batch {
            bufs: vec![0; BATCH * SLOT].into_boxed_slice(),
            headers: MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(libc::in6_pktinfo))),
            meta: Vec::with_capacity(BATCH),
        }
    }

    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let Batch {
            bufs,
            headers,
            meta,
        } = self;
        let mut slots = bufs.chunks_mut(SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
        let received = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
        meta.clear();
        for msg in received {
            let from = msg.address.as_ref().and_then(socket_addr);
            let local = msg
                .cmsgs()
                .ok()
                .and_then(|mut cmsgs| cmsgs.find_map(local_dst));
            meta.push((msg.bytes, from, local));
        }
        Ok(meta.len())
    }

    /// Datagram `i` of the last call: its bytes, its sender, where it was sent.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>, Option<LocalDst>) {
        let (len, from, local) = self.meta[i];
        (&self.bufs[i * SLOT..i * SLOT + len], from, local)
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

fn local_dst(c: ControlMessageOwned) -> Option<LocalDst> {
    match c {
        ControlMessageOwned::Ipv4PacketInfo(pi) => Some(LocalDst {
            addr: IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_spec_dst.s_addr))),
            ifindex: u32::try_from(pi.ipi_ifindex).unwrap_or(0),
        }),
        ControlMessageOwned::Ipv6PacketInfo(pi) => Some(LocalDst {
            addr: IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr)),
            ifindex: pi.ipi6_ifindex,
        }),
        _ => None,
    }
}

/// A new non-blocking socket connected to a server: the kernel then delivers only that
/// server's datagrams to it, and reports an ICMP port unreachable from it as ECONNREFUSED.
pub fn connect_upstream(server: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    socket.connect(&server.into())?;
    Ok(socket.into())
}

/// At most this many datagrams are read off a socket being freed for reuse; what is queued on
/// it cannot grow once it is disconnected, so only a broken socket reaches this.
const DRAIN_MAX: usize = 4096;

/// Free a session's socket for another session: dissolve its association with the server, so
/// that the kernel releases its port (a late reply to that port then finds no socket, exactly as
/// if this one had been closed, and the next `connect` picks a new port), then read and drop
/// whatever had already arrived, and any error an ICMP message left on it. Returns how many
/// datagrams were dropped. An error means the socket must not be reused; close it instead.
pub fn disconnect(socket: &UdpSocket) -> io::Result<u64> {
    rustix::net::connect_unspec(socket)?;
    let mut dropped = 0;
    // A one-byte buffer still takes a whole datagram off the queue.
    let mut buf = [0u8; 1];
    for _ in 0..DRAIN_MAX {
        match socket.recv(&mut buf) {
            Ok(_) => dropped += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(dropped),
            // A pending error is reported once, then cleared.
            Err(e) if is_server_failure(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "datagrams kept arriving after disconnecting",
    ))
}

/// Errors on a connected upstream socket that mean the server is not there: an ICMP port or
/// host unreachable came back. They blacklist the server and move its sessions.
pub fn is_server_failure(e: &io::Error) -> bool {
    use nix::errno::Errno;
    let failures = [
        Errno::ECONNREFUSED,
        Errno::EHOSTUNREACH,
        Errno::ENETUNREACH,
        Errno::EHOSTDOWN,
    ];
    e.raw_os_error()
        .is_some_and(|code| failures.iter().any(|&f| f as i32 == code))
}
