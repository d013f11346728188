//! One poll of pen: connect to its control port, send `snapshot`, read the reply until pen closes
//! the connection, and read it back as `pen::balancer::Snapshot`, the very type pen serialized.
//!
//! `snapshot` is the only command penstats-web ever sends: the service is read-only. The whole
//! exchange is bounded by one deadline, and the reply by a size cap, so a slow, silent or
//! runaway pen costs one connection and a bounded wait, never more.

use std::io;
use std::time::Duration;

use pen::balancer::Snapshot;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::address::Address;

/// The one request penstats-web sends.
pub const REQUEST: &[u8] = b"snapshot\n";
/// The largest reply read. A snapshot of a pen with a full default client table (2048 entries)
/// and thousands of connections is a few megabytes.
pub const MAX_REPLY: u64 = 64 << 20;
/// How much of a reply that is not a snapshot is quoted in the error.
const QUOTE: usize = 120;

/// Why a poll got no snapshot. The texts are shown on the dashboard and logged.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("can't resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("can't connect to pen's control port {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("can't send the command to pen: {0}")]
    Send(#[source] io::Error),
    #[error("can't read pen's reply: {0}")]
    Receive(#[source] io::Error),
    #[error("pen did not answer within {} seconds", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("pen's reply is larger than {} MiB", MAX_REPLY >> 20)]
    TooLarge,
    #[error(
        "pen closed the control connection without a reply (is this pen's control port? \
         does its control_acl let this host in?)"
    )]
    Empty,
    #[error(
        "pen's reply is not a snapshot ({reason}); pen 0.34.1 and older pens do not know the \
         snapshot command. It began: {start:?}"
    )]
    NotSnapshot { start: String, reason: String },
}

/// Ask pen at `address` for a snapshot, giving up after `limit` in all (resolving, connecting,
/// sending and reading together).
pub async fn snapshot(address: &Address, limit: Duration) -> Result<Snapshot, FetchError> {
    let reply = tokio::time::timeout(limit, exchange(address))
        .await
        .map_err(|_| FetchError::Timeout(limit))??;
    parse(&reply)
}

async fn exchange(address: &Address) -> Result<Vec<u8>, FetchError> {
    match address {
        Address::Unix(path) => {
            let stream = UnixStream::connect(path)
                .await
                .map_err(|source| FetchError::Connect {
                    address: address.to_string(),
                    source,
                })?;
            talk(stream).await
        }
        Address::Tcp { host, port } => {
            let targets =
                Address::tcp_targets(host, *port)
                    .await
                    .map_err(|source| FetchError::Resolve {
                        host: host.clone(),
                        source,
                    })?;
            // A name may resolve to several addresses (localhost to ::1 and 127.0.0.1); the
            // first that accepts is asked.
            let mut failure = FetchError::NoAddress { host: host.clone() };
            for target in targets {
                match TcpStream::connect(target).await {
                    Ok(stream) => return talk(stream).await,
                    Err(source) => {
                        failure = FetchError::Connect {
                            address: target.to_string(),
                            source,
                        }
                    }
                }
            }
            Err(failure)
        }
    }
}

/// Send the command and read everything until EOF, at most `MAX_REPLY` bytes.
async fn talk(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> Result<Vec<u8>, FetchError> {
    stream.write_all(REQUEST).await.map_err(FetchError::Send)?;
    let mut reply = Vec::new();
    (&mut stream)
        .take(MAX_REPLY + 1)
        .read_to_end(&mut reply)
        .await
        .map_err(FetchError::Receive)?;
    if reply.len() as u64 > MAX_REPLY {
        return Err(FetchError::TooLarge);
    }
    Ok(reply)
}

/// Read a reply as a snapshot.
pub fn parse(reply: &[u8]) -> Result<Snapshot, FetchError> {
    if reply.iter().all(u8::is_ascii_whitespace) {
        return Err(FetchError::Empty);
    }
    serde_json::from_slice(reply).map_err(|e| {
        let text = String::from_utf8_lossy(reply);
        let start: String = text.trim_end().chars().take(QUOTE).collect();
        FetchError::NotSnapshot {
            start,
            reason: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply of our pen's control port, as `penctl HOST:PORT snapshot` printed it.
    pub const REPLY: &str = r#"{"time":1795351309,"local_time":"2026-11-22 12:41:49","current":0,"servers":[{"index":0,"kind":"regular","address":"127.0.0.1","port":18001,"status":0,"blacklisted":false,"blacklist_remaining":0,"conns":0,"maxc":0,"hard":0,"sent":158,"received":13170,"weight":0,"prio":0},{"index":1,"kind":"regular","address":"127.0.0.1","port":18002,"status":1795351309,"blacklisted":true,"blacklist_remaining":30,"conns":0,"maxc":0,"hard":0,"sent":0,"received":0,"weight":0,"prio":0}],"emergency":null,"abuse":null,"clients":[{"slot":0,"address":"127.0.0.1","age":0,"last_server":0,"connects":2,"sent":13170,"received":158}],"conns":[],"settings":{"blacklist_time":30,"tracking":0,"connect_timeout":3,"idle_timeout":0,"roundrobin":false,"stubborn":false,"hash":false,"weight":false,"prio":false,"tcp_fastclose":"off","tcp_nodelay":true,"keepalive":false,"web_stats":null,"clients_max":2048,"conn_max":9968},"counters":{"conns_used":0,"conn_last":0,"clients_known":1,"sent":158,"received":13170}}
"#;

    #[test]
    fn a_real_reply_reads_as_a_snapshot() {
        let snap = parse(REPLY.as_bytes()).unwrap();
        assert_eq!(snap.servers.len(), 2);
        assert!(snap.servers[1].blacklisted);
        assert_eq!(snap.clients[0].connects, 2);
        assert_eq!(snap.counters.received, 13170);
    }

    #[test]
    fn other_replies_are_explained() {
        let err = parse(b"do_cmd: ignoring command starting with 'snapshot'\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("pen's reply is not a snapshot ("),
            "{text}"
        );
        assert!(
            text.ends_with("It began: \"do_cmd: ignoring command starting with 'snapshot'\""),
            "{text}"
        );
        assert!(matches!(parse(b""), Err(FetchError::Empty)));
        assert!(matches!(parse(b"\n"), Err(FetchError::Empty)));
        let long = "x".repeat(1000);
        let text = parse(long.as_bytes()).unwrap_err().to_string();
        assert!(text.len() < 400, "the quote is cut: {text}");
        // Valid JSON of another shape is not a snapshot either.
        assert!(matches!(
            parse(br#"{"time":1}"#),
            Err(FetchError::NotSnapshot { .. })
        ));
    }
}
