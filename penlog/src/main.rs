//! penlog: read a web server's log lines on stdin and send each one to penlogd as one UDP
//! datagram, as Apache's piped log `CustomLog "|penlog host port" common` runs it.
//!
//! Lines are sent unchanged, newline included; a line longer than 1023 bytes goes as several
//! datagrams of at most 1023 bytes, as pen 0.34.1's penlog (which read with `fgets` into a
//! 1024-byte buffer) sent it. Sending never waits: if the socket cannot take a datagram at
//! once, or penlogd is not there, the line is dropped and counted, so a dead penlogd can never
//! hold up the web server that writes to this program.

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The largest datagram: pen 0.34.1's `fgets` into 1024 bytes leaves room for 1023.
const PIECE_MAX: usize = 1023;
/// At most one "can't send" message on stderr per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

const USAGE: &str = "Usage: penlog server_ip server_port [my_ip]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("--version") => {
            println!(
                "penlog {} (compatible with pen 0.34.1)",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    if !(2..=3).contains(&args.len()) {
        eprintln!("{USAGE}");
        return ExitCode::FAILURE;
    }
    match run(&args[0], &args[1], args.get(2).map(String::as_str)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("penlog: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What stops penlog before it reads anything, or a failed read of stdin.
#[derive(Debug)]
enum Error {
    Port(String),
    Resolve(String, io::Error),
    NoAddress(String),
    Local(String),
    Socket(String, io::Error),
    Read(io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Port(p) => write!(f, "'{p}' is not a port number from 1 to 65535"),
            Error::Resolve(h, e) => write!(f, "can't resolve '{h}': {e}"),
            Error::NoAddress(h) => write!(f, "'{h}' has no address of the local address's family"),
            Error::Local(a) => write!(f, "'{a}' is not an IP address"),
            Error::Socket(a, e) => write!(f, "problem creating socket on {a}: {e}"),
            Error::Read(e) => write!(f, "can't read standard input: {e}"),
        }
    }
}

/// Where to send, and from where: penlogd identifies a web server by the datagram's source
/// address, which must be the address pen uses for that server.
fn open(host: &str, port: &str, local: Option<&str>) -> Result<(UdpSocket, SocketAddr), Error> {
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::Port(port.to_string()))?;
    let local: Option<IpAddr> = local
        .map(|l| l.parse().map_err(|_| Error::Local(l.to_string())))
        .transpose()?;
    let candidates: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Resolve(host.to_string(), e))?
        .collect();
    let to = match local {
        Some(l) => candidates
            .into_iter()
            .find(|a| a.is_ipv4() == l.is_ipv4())
            .ok_or_else(|| Error::NoAddress(host.to_string()))?,
        None => candidates
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoAddress(host.to_string()))?,
    };
    let from = local.unwrap_or(match to {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let socket = UdpSocket::bind((from, 0))
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .map_err(|e| Error::Socket(from.to_string(), e))?;
    Ok((socket, to))
}

/// Read the next line, or the next `PIECE_MAX` bytes of a longer one, into `piece`. False at
/// the end of input.
fn next_piece(input: &mut impl BufRead, piece: &mut Vec<u8>) -> io::Result<bool> {
    piece.clear();
    while piece.len() < PIECE_MAX {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        let room = &buf[..buf.len().min(PIECE_MAX - piece.len())];
        if let Some(newline) = room.iter().position(|&b| b == b'\n') {
            piece.extend_from_slice(&room[..=newline]);
            input.consume(newline + 1);
            return Ok(true);
        }
        let n = room.len();
        piece.extend_from_slice(room);
        input.consume(n);
    }
    Ok(!piece.is_empty())
}

fn run(host: &str, port: &str, local: Option<&str>) -> Result<(), Error> {
    let (socket, to) = open(host, port, local)?;
    let stdin = io::stdin();
    let mut input = io::BufReader::with_capacity(64 * 1024, stdin.lock());
    let mut piece = Vec::with_capacity(PIECE_MAX);
    let mut lost: u64 = 0;
    let mut last_warning: Option<Instant> = None;
    while next_piece(&mut input, &mut piece).map_err(Error::Read)? {
        if let Err(e) = socket.send_to(&piece, to) {
            lost += 1;
            let now = Instant::now();
            if last_warning.is_none_or(|t| now.duration_since(t) >= WARN_INTERVAL) {
                last_warning = Some(now);
                let _ = writeln!(
                    io::stderr(),
                    "penlog: can't send to {to}: {e} ({lost} lines lost so far)"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(input: &[u8]) -> Vec<Vec<u8>> {
        let mut r = io::BufReader::with_capacity(100, input);
        let mut out = Vec::new();
        let mut piece = Vec::new();
        while next_piece(&mut r, &mut piece).unwrap() {
            out.push(piece.clone());
        }
        out
    }

    #[test]
    fn lines_are_split_as_fgets_splits_them() {
        assert_eq!(pieces(b"a\nbb\n\nc"), [&b"a\n"[..], b"bb\n", b"\n", b"c"]);
        let long = [vec![b'x'; 2500], b"\nnext\n".to_vec()].concat();
        let got = pieces(&long);
        let lens: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(lens, [1023, 1023, 455, 5]);
        assert_eq!(got.concat(), long);
        // Exactly 1023 bytes and the newline: the newline goes alone, as with fgets.
        let edge = [vec![b'y'; 1023], b"\n".to_vec()].concat();
        assert_eq!(
            pieces(&edge).iter().map(Vec::len).collect::<Vec<_>>(),
            [1023, 1]
        );
        assert!(pieces(b"").is_empty());
    }

    #[test]
    fn bad_arguments_name_what_was_wrong() {
        let e = open("127.0.0.1", "http", None).unwrap_err().to_string();
        assert!(e.contains("'http'"), "{e}");
        let e = open("127.0.0.1", "0", None).unwrap_err().to_string();
        assert!(e.contains("'0'"), "{e}");
        let e = open("no.such.host.invalid", "9", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no.such.host.invalid"), "{e}");
        let e = open("127.0.0.1", "9", Some("not-an-ip"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not-an-ip"), "{e}");
        let e = open("127.0.0.1", "9", Some("::1")).unwrap_err().to_string();
        assert!(e.contains("family"), "{e}");
        let (_, to) = open("::1", "9", None).unwrap();
        assert!(to.is_ipv6());
    }
}
