//! UDP sockets: the listening socket, which receives every client datagram and sends every
//! reply, and the connected upstream socket each session has towards its server.
//!
//! A listener bound to one address replies from that address with plain `sendto`. A wildcard
//! listener (`0.0.0.0`, `::`) learns the destination address of each datagram (IP_PKTINFO,
//! IPV6_RECVPKTINFO) and replies from it, so a client that sent to 127.0.0.3 hears back from
//! 127.0.0.3, not from whatever address the routing table prefers.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use nix::libc;
use nix::sys::socket::{
    recvmmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrStorage,
};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

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
pub fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, BindError> {
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

/// The listening socket, registered with the UDP thread's runtime.
pub struct Downstream {
    socket: UdpSocket,
    /// A wildcard listener: replies name their source address.
    pktinfo: bool,
    v6: bool,
}

impl Downstream {
    /// Must run inside the runtime that will drive it.
    pub fn register(socket: std::net::UdpSocket) -> io::Result<Downstream> {
        let local = socket.local_addr()?;
        let socket = UdpSocket::from_std(socket)?;
        let pktinfo = local.ip().is_unspecified();
        Ok(Downstream {
            socket,
            pktinfo,
            v6: local.is_ipv6(),
        })
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Receive the datagrams waiting on the listener, up to `LISTEN_BATCH` per system call,
    /// and hand each to `each(data, sender, where it was sent)`. Ok while more may be waiting;
    /// WouldBlock once the queue is drained.
    pub fn try_recv_batch(
        &self,
        mut each: impl FnMut(&[u8], SocketAddr, Option<LocalDst>),
    ) -> io::Result<()> {
        LISTEN.with(|batch| {
            let mut batch = batch.borrow_mut();
            self.socket.try_io(Interest::READABLE, || {
                let n = batch.recv(self.socket.as_raw_fd())?;
                for i in 0..n {
                    let (data, from, local) = batch.get(i);
                    if let Some(from) = from {
                        each(data, from, local);
                    }
                }
                drained(n, LISTEN_BATCH)
            })
        })
    }

    /// Send a datagram to a client without waiting; WouldBlock when the socket buffer is full
    /// (the datagram is then dropped, as a router would). Direct syscalls, as for upstream
    /// sockets: nothing waits for this socket to be writable.
    pub fn try_send_to(
        &self,
        buf: &[u8],
        to: SocketAddr,
        local: Option<LocalDst>,
    ) -> io::Result<usize> {
        let Some(local) = local.filter(|_| self.pktinfo) else {
            return SockRef::from(&self.socket).send_to(buf, &to.into());
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
            (false, to, _) => return SockRef::from(&self.socket).send_to(buf, &to.into()),
        };
        sent.map_err(io::Error::from)
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
const LISTEN_BATCH: usize = 16;
/// Datagrams taken from an upstream socket per system call: usually one reply is waiting, and
/// asking for two tells whether the queue is now empty without a second call.
const REPLY_BATCH: usize = 2;
/// Room for one datagram: the largest UDP payload fits.
const SLOT: usize = 65_536;

thread_local! {
    static LISTEN: RefCell<Batch<LISTEN_BATCH>> = RefCell::new(Batch::new());
    static REPLIES: RefCell<Batch<REPLY_BATCH>> = RefCell::new(Batch::new());
}

/// Ok after a full batch (more may be waiting); WouldBlock after a short one, so that tokio
/// forgets the socket's readiness without another system call to find it empty. Safe with
/// edge-triggered epoll: a datagram arriving after the call raises a new event.
fn drained(received: usize, batch: usize) -> io::Result<()> {
    if received < batch {
        Err(io::ErrorKind::WouldBlock.into())
    } else {
        Ok(())
    }
}

/// Buffers and headers for receiving up to N datagrams with one `recvmmsg`, reused for every
/// call on the UDP thread.
struct Batch<const N: usize> {
    bufs: Box<[u8]>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Length, sender and destination of each datagram of the last call.
    meta: Vec<(usize, Option<SocketAddr>, Option<LocalDst>)>,
}

impl<const N: usize> Batch<N> {
    fn new() -> Self {
        Batch {
            bufs: vec![0; N * SLOT].into_boxed_slice(),
            headers: MultiHeaders::preallocate(N, Some(nix::cmsg_space!(libc::in6_pktinfo))),
            meta: Vec::with_capacity(N),
        }
    }

    /// Receive what is waiting, up to N datagrams, without blocking; how many came.
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let Batch {
            bufs,
            headers,
            meta,
        } = self;
        let mut slots = bufs.chunks_mut(SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; N] =
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

    fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>, Option<LocalDst>) {
        let (len, from, local) = self.meta[i];
        (&self.bufs[i * SLOT..i * SLOT + len], from, local)
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

/// Receive the replies waiting on a session's upstream socket and hand each to `each`. Ok while
/// more may be waiting; WouldBlock once drained; other errors are the socket's (an ICMP error
/// from the server shows here as ECONNREFUSED).
pub fn try_recv_replies(socket: &UdpSocket, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    REPLIES.with(|batch| {
        let mut batch = batch.borrow_mut();
        socket.try_io(Interest::READABLE, || {
            let n = batch.recv(socket.as_raw_fd())?;
            for i in 0..n {
                each(batch.get(i).0);
            }
            drained(n, REPLY_BATCH)
        })
    })
}

/// A new socket connected to a server: the kernel then delivers only that server's datagrams to
/// it, and reports an ICMP port unreachable from it as ECONNREFUSED. Must run inside a runtime.
pub fn connect_upstream(server: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    socket.connect(&server.into())?;
    UdpSocket::from_std(socket.into())
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
