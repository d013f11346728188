//! Sockets: listeners (TCP or Unix), the upstream socket and its options, and one stream type
//! for both families on the main thread's runtime (the control port, the idlers).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};

use crate::addr::{Backend, ListenAddr};
use crate::balancer::{ConnOptions, Peer};

/// A connected stream on the main thread's runtime: a control-port client, or an idler's
/// connection to a server. (The data plane's sockets are the engine's own.)
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    /// Half-close: shut down the write side only, so the other direction keeps flowing.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What went wrong opening a listener.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("can't bind {addr}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{0}: another process is listening on this socket")]
    InUse(PathBuf),
}

/// A bound, listening socket, not yet tied to any runtime. Every data-plane thread accepts
/// from it, through a descriptor of its own (`socket`).
pub enum BoundListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl BoundListener {
    /// Bind and listen, with a backlog of `backlog` (`-q`). A wildcard IPv6 listener also
    /// accepts IPv4 clients, as pen's does. A Unix path is replaced only if it is a stale socket.
    ///
    /// A TCP listener sets SO_REUSEADDR but not SO_REUSEPORT: C pen sets it, so a second pen on
    /// the same port silently shares its traffic.
    pub fn bind(addr: &ListenAddr, backlog: u32) -> Result<BoundListener, BindError> {
        let io_err = |source| BindError::Io {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(sa) => {
                let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
                Ok(BoundListener::Tcp(
                    tcp_listener(*sa, backlog).map_err(io_err)?,
                ))
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let l = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
                l.set_nonblocking(true).map_err(io_err)?;
                Ok(BoundListener::Unix(l))
            }
        }
    }

    /// The control port: as `bind`, but a Unix socket is created with mode 0600 whatever the
    /// umask, so only pen's user can reach it.
    pub fn bind_private(addr: &ListenAddr, backlog: u32) -> Result<BoundListener, BindError> {
        use nix::sys::stat::{umask, Mode};
        if let ListenAddr::Unix(path) = addr {
            let old = umask(Mode::from_bits_truncate(0o177));
            let bound = Self::bind(addr, backlog);
            umask(old);
            let bound = bound?;
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|source| BindError::Io {
                    addr: addr.to_string(),
                    source,
                })?;
            return Ok(bound);
        }
        Self::bind(addr, backlog)
    }

    /// The bound address (useful when the port was 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            BoundListener::Tcp(l) => l.local_addr().ok(),
            BoundListener::Unix(_) => None,
        }
    }

    /// A descriptor of the listening socket, for a data-plane thread to accept from.
    pub fn socket(&self) -> io::Result<socket2::Socket> {
        Ok(match self {
            BoundListener::Tcp(l) => l.try_clone()?.into(),
            BoundListener::Unix(l) => l.try_clone()?.into(),
        })
    }

    /// Register with the current thread's runtime. Must run inside it.
    pub fn register(self) -> io::Result<Listener> {
        Ok(match self {
            BoundListener::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)?),
            BoundListener::Unix(l) => Listener::Unix(UnixListener::from_std(l)?),
        })
    }
}

/// One listening TCP socket: non-blocking, SO_REUSEADDR.
fn tcp_listener(sa: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(sa),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if sa.is_ipv6() && sa.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&sa.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// A listening socket registered with a runtime.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, sa) = l.accept().await?;
                let peer = Peer {
                    ip: Some(canonical(sa.ip())),
                    port: sa.port(),
                };
                Ok((Stream::Tcp(s), peer))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), Peer { ip: None, port: 0 }))
            }
        }
    }
}

/// An IPv4 client reaching an IPv6 wildcard listener arrives as `::ffff:a.b.c.d`; it is the same
/// client as `a.b.c.d` for tracking, hashing and logs (pen treated them as different).
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Remove `path` if it is a socket nobody listens on; refuse if it is anything else.
fn remove_stale_socket(path: &Path) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Io {
                addr: path.display().to_string(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket(path.to_path_buf()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(BindError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|source| BindError::Io {
        addr: path.display().to_string(),
        source,
    })
}

/// Open a connection to a server (an idler's) with the socket options the settings ask for.
/// `client` is the client's address, which `transparent` connects from.
pub async fn connect(
    backend: &Backend,
    settings: &ConnOptions,
    client: Option<IpAddr>,
) -> io::Result<Stream> {
    match backend {
        Backend::Tcp(sa) => {
            let socket = upstream_socket(*sa, settings, client)?;
            let socket = TcpSocket::from_std_stream(socket.into());
            Ok(Stream::Tcp(socket.connect(*sa).await?))
        }
        Backend::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
    }
}

/// A non-blocking socket for a connection to server `sa`, not yet connected, with the options
/// the settings ask for: keepalive, and the local address (`source`, or the client's own under
/// `transparent`; where that cannot be, a rate-limited warning and pen's own address, as in
/// pen). The engine and the idlers connect through it.
pub(crate) fn upstream_socket(
    sa: SocketAddr,
    settings: &ConnOptions,
    client: Option<IpAddr>,
) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(sa), Type::STREAM.nonblocking(), None)?;
    if settings.keepalive {
        socket.set_keepalive(true)?;
    }
    match upstream_source(settings, client, sa) {
        Ok(None) => {}
        Ok(Some(local)) => {
            if let Err(e) = bind_source(&socket, local, settings.source.is_none()) {
                warn_source(&format!(
                    "can't connect to {sa} from {local}: {e}; connecting from pen's own address"
                ));
            }
        }
        Err(why) => warn_source(&format!("{why}; connecting to {sa} from pen's own address")),
    }
    Ok(socket)
}

/// Why an upstream connection cannot come from the address the settings ask for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceSkipped {
    #[error("source address {0} is not of the server's address family")]
    SourceFamily(IpAddr),
    #[error("no transparency for incompatible families (client {client})")]
    ClientFamily { client: IpAddr },
}

/// The local address an upstream connection to `server` should be made from: `source` if set,
/// else the client's address under `transparent` (a Unix-socket client has none), else none.
pub fn upstream_source(
    settings: &ConnOptions,
    client: Option<IpAddr>,
    server: SocketAddr,
) -> Result<Option<IpAddr>, SourceSkipped> {
    let same_family = |ip: IpAddr| ip.is_ipv4() == server.is_ipv4();
    match (settings.source, settings.transparent, client) {
        (Some(source), _, _) if same_family(source) => Ok(Some(source)),
        (Some(source), _, _) => Err(SourceSkipped::SourceFamily(source)),
        (None, true, Some(client)) if same_family(client) => Ok(Some(client)),
        (None, true, Some(client)) => Err(SourceSkipped::ClientFamily { client }),
        _ => Ok(None),
    }
}

/// Bind the upstream socket to `local` (port 0). IP_BIND_ADDRESS_NO_PORT leaves the port to
/// connect(), so many connections from one address to different servers share ports as they
/// would without a bind. A transparent bind (to the client's address, not one of ours) needs
/// IP_TRANSPARENT, which the kernel honours on IPv6 sockets too.
fn bind_source(socket: &socket2::Socket, local: IpAddr, transparent: bool) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    if transparent {
        socket.set_ip_transparent(true)?;
    }
    if local.is_ipv4() {
        // Best effort: without it the bind still works, with a port of its own.
        let _ = setsockopt(socket, sockopt::IpBindAddressNoPort, &true);
    }
    socket.bind(&SocketAddr::new(local, 0).into())
}

/// One message per 5 seconds about source addresses, however many connections hit it.
fn warn_source(message: &str) {
    static LOG: crate::shared::RateLimit = crate::shared::RateLimit::new();
    if LOG.allow(std::time::Instant::now()) {
        tracing::warn!("{message}");
    }
}

/// Whose fault a failed connect is. Only a server's fault blacklists it; running out of our
/// own descriptors or buffers must not take healthy servers out of rotation. The same errors
/// on accept mean "back off instead of spinning".
pub fn is_local_failure(e: &io::Error) -> bool {
    use nix::errno::Errno;
    let local = [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM];
    e.raw_os_error()
        .is_some_and(|code| local.iter().any(|&l| l as i32 == code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::Settings;

    fn settings(source: Option<&str>, transparent: bool) -> ConnOptions {
        Settings {
            source: source.map(|s| s.parse().unwrap()),
            transparent,
            ..Settings::default()
        }
        .conn_options()
    }

    #[test]
    fn source_wins_over_transparent_and_families_must_match() {
        let v4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        let client4: IpAddr = "192.0.2.7".parse().unwrap();
        let client6: IpAddr = "2001:db8::7".parse().unwrap();
        let cases = [
            (settings(None, false), Some(client4), v4, Ok(None)),
            (settings(None, true), Some(client4), v4, Ok(Some(client4))),
            (settings(None, true), Some(client6), v6, Ok(Some(client6))),
            (settings(None, true), None, v4, Ok(None)),
            (
                settings(None, true),
                Some(client4),
                v6,
                Err(SourceSkipped::ClientFamily { client: client4 }),
            ),
            (
                settings(Some("10.0.0.9"), true),
                Some(client4),
                v4,
                Ok(Some("10.0.0.9".parse().unwrap())),
            ),
            (
                settings(Some("10.0.0.9"), false),
                None,
                v6,
                Err(SourceSkipped::SourceFamily("10.0.0.9".parse().unwrap())),
            ),
        ];
        for (s, client, server, want) in cases {
            assert_eq!(
                upstream_source(&s, client, server),
                want,
                "{s:?} {client:?}"
            );
        }
    }

    /// The address the server sees for a connection made with `settings`.
    async fn seen_by_server(settings: &ConnOptions) -> IpAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend::Tcp(listener.local_addr().unwrap());
        let (connected, accepted) = tokio::join!(
            connect(&backend, settings, Some("127.0.0.99".parse().unwrap())),
            listener.accept()
        );
        connected.expect("connect");
        accepted.expect("accept").1.ip()
    }

    #[tokio::test]
    async fn source_binds_upstream_connections_and_a_bad_one_falls_back() {
        assert_eq!(
            seen_by_server(&settings(None, false)).await,
            IpAddr::from([127, 0, 0, 1])
        );
        assert_eq!(
            seen_by_server(&settings(Some("127.0.0.2"), false)).await,
            IpAddr::from([127, 0, 0, 2])
        );
        // An address that is not ours: pen connects from its own, as C pen does.
        assert_eq!(
            seen_by_server(&settings(Some("192.0.2.1"), false)).await,
            IpAddr::from([127, 0, 0, 1])
        );
    }
}
