//! penlogd's socket loop: receive datagrams, hand them to the matcher, write the output, and
//! react to signals (HUP reopens the output file, USR1 logs the counters, TERM and INT stop).
//!
//! Datagrams are taken in batches while the socket has them, and the output is written once
//! per batch: under load that is one write per few hundred lines, and when traffic is light
//! every line is written as soon as it arrived.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{debug, info, warn};

use crate::datagram::DATAGRAM_MAX;
use crate::matcher::{Counters, Matcher};

/// Datagrams handled between two output writes at most.
const BATCH: usize = 512;
/// The receive buffer asked for: room for bursts while the output is being written.
const RECV_BUFFER: usize = 32 << 20;
/// At most one warning about dropped datagrams or failed writes per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Where penlogd listens: a port on every address (IPv6 and IPv4), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    Port(u16),
    Addr(SocketAddr),
}

/// Bind the UDP socket. A bare port listens on IPv6 and IPv4 at once (pen 0.34.1's penlogd
/// was IPv4 only), or on IPv4 alone where the machine has no IPv6.
pub fn bind(at: Bind) -> io::Result<std::net::UdpSocket> {
    let socket = match at {
        Bind::Addr(addr) => {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            s.bind(&addr.into())?;
            s
        }
        Bind::Port(port) => {
            let dual = || -> io::Result<Socket> {
                let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
                s.set_only_v6(false)?;
                s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
                Ok(s)
            };
            match dual() {
                Ok(s) => s,
                Err(e) if e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {
                    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
                    s
                }
                Err(e) => return Err(e),
            }
        }
    };
    // Room for bursts while penlogd is not scheduled. Root may go past net.core.rmem_max;
    // anyone else gets what that allows.
    if nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &RECV_BUFFER,
    )
    .is_err()
    {
        let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The merged log: standard output, or a file appended to and reopened on HUP.
pub struct Output {
    file: File,
    /// The file's name, to reopen it; None for standard output.
    path: Option<PathBuf>,
}

impl Output {
    /// Standard output, as it is now: a daemon points fd 1 at /dev/null once it is ready, but
    /// `penlogd 10080 > merged.log` keeps writing where the shell sent it.
    pub fn stdout() -> io::Result<Output> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Output {
            file: File::from(fd),
            path: None,
        })
    }

    pub fn file(path: PathBuf) -> Result<Output, pen::reqlog::RequestLogError> {
        Ok(Output {
            file: pen::reqlog::open_log_file(&path)?,
            path: Some(path),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all(bytes)
    }

    /// Open the file again by its name (after `mv out out.1`). Everything written so far went
    /// to the old file whole.
    fn reopen(&mut self) -> Result<(), pen::reqlog::RequestLogError> {
        if let Some(path) = &self.path {
            self.file = pen::reqlog::open_log_file(path)?;
        }
        Ok(())
    }
}

/// The signals penlogd handles. Installed before the port is bound, so that a TERM sent as soon
/// as the port answers is a clean stop rather than the default action.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

impl Signals {
    /// Must run inside the runtime that will serve.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Rate-limits warnings.
struct Quiet(Option<Instant>);

impl Quiet {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .0
            .is_none_or(|last| now.duration_since(last) >= WARN_INTERVAL);
        if due {
            self.0 = Some(now);
        }
        due
    }
}

/// Serve until TERM or INT; returns the counters. `line_buffered` (`-b`) writes after every
/// line instead of after every batch.
pub async fn serve(
    socket: std::net::UdpSocket,
    mut signals: Signals,
    mut matcher: Matcher,
    mut output: Output,
    line_buffered: bool,
) -> io::Result<Counters> {
    let socket = UdpSocket::from_std(socket)?;
    // One byte more than the largest datagram, to see when one was larger.
    let mut buf = vec![0u8; DATAGRAM_MAX + 1];
    let mut out = Vec::with_capacity(BATCH * 256);
    let mut warnings = Quiet(None);
    loop {
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => {
                if let Err(e) = output.reopen() {
                    warn!("SIGHUP: {e}; still writing to the old file");
                }
            }
            _ = signals.usr1.recv() => info!("{}", matcher.counters.summary()),
            ready = socket.readable() => {
                ready?;
                for _ in 0..BATCH {
                    let (n, source) = match socket.try_recv_from(&mut buf) {
                        Ok(got) => got,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            debug!("recvfrom: {e}");
                            break;
                        }
                    };
                    match matcher.handle(source.ip(), &buf[..n], &mut out) {
                        Ok(handled) => debug!(
                            "{} from {source}: {}",
                            handled.describe(),
                            String::from_utf8_lossy(&buf[..n]).trim_end()
                        ),
                        Err(kind) => {
                            debug!("dropped a datagram from {source}: {}", kind.describe());
                            if warnings.allow() {
                                warn!(
                                    "dropped a datagram from {source}: {} ({} dropped so far)",
                                    kind.describe(),
                                    matcher.counters.dropped()
                                );
                            }
                        }
                    }
                    if line_buffered {
                        write_out(&mut output, &mut out, &mut warnings);
                    }
                }
                write_out(&mut output, &mut out, &mut warnings);
            }
        }
    }
    write_out(&mut output, &mut out, &mut warnings);
    Ok(matcher.counters)
}

fn write_out(output: &mut Output, out: &mut Vec<u8>, warnings: &mut Quiet) {
    if let Err(e) = output.write(out) {
        if warnings.allow() {
            warn!("can't write the output: {e}; lines lost");
        }
    }
    out.clear();
}
