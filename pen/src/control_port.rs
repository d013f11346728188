//! The control port (`-C`): one command per connection, the reply is everything until EOF, as
//! in pen. Unlike pen 0.34.1, whose blocking `recv` let one silent client freeze the whole
//! balancer, every control connection runs on its own task with a size cap and deadlines, on
//! the main thread's runtime, away from the data plane.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::admin::Admin;
use crate::net::{Listener, Stream};

/// Longest command line accepted (pen read at most 4095 bytes).
pub const MAX_LINE: usize = 4096;
/// A control client has this long to send its command, and again to read the reply.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Control connections served at once; more are closed at once.
const MAX_CONTROL_CLIENTS: usize = 32;

/// Accept control connections until the future is dropped.
pub async fn serve(listener: Listener, admin: Arc<Admin>) {
    let busy = Arc::new(Semaphore::new(MAX_CONTROL_CLIENTS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                debug!("control accept: {e}");
                // Out of descriptors: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (permitted, acl) = admin.shared().with(|b| {
            (
                b.permits(b.settings.control_acl, peer.ip),
                b.settings.control_acl,
            )
        });
        if !permitted {
            warn!(
                "control connection from {} denied by control_acl {acl}",
                peer.ip
                    .map_or_else(|| "unix".to_string(), |ip| ip.to_string())
            );
            continue;
        }
        let Ok(permit) = busy.clone().try_acquire_owned() else {
            warn!("control: {MAX_CONTROL_CLIENTS} control connections already open; closing a new one");
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            handle(stream, admin).await;
            drop(permit);
        });
    }
}

/// What a control connection's bytes make: one command line, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Line(String),
    TooLong,
    NotText,
    Nothing,
}

impl Request {
    /// The reply to a request that is not a command; None for a line or for nothing at all.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Request::TooLong => Some(format!(
                "control: command longer than {MAX_LINE} bytes; ignored\n"
            )),
            Request::NotText => Some("control: command is not text; ignored\n".to_string()),
            Request::Line(_) | Request::Nothing => None,
        }
    }
}

/// The framing of a control connection, apart from its socket: the bytes of each read go in,
/// one request comes out, up to the first CR or LF (or EOF), at most `MAX_LINE` bytes.
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Add one read's bytes; Some once the request is decided (a line end, or too long).
    pub fn push(&mut self, chunk: &[u8]) -> Option<Request> {
        self.buf.extend_from_slice(chunk);
        if let Some(end) = self.buf.iter().position(|&c| c == b'\n' || c == b'\r') {
            self.buf.truncate(end);
            return Some(self.finish());
        }
        (self.buf.len() > MAX_LINE).then_some(Request::TooLong)
    }

    /// The request once the client sent EOF (or a line end was found).
    pub fn finish(&mut self) -> Request {
        let buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            return Request::Nothing;
        }
        if buf.len() > MAX_LINE {
            return Request::TooLong;
        }
        match String::from_utf8(buf) {
            Ok(s) if !s.contains('\0') => Request::Line(s),
            _ => Request::NotText,
        }
    }
}

async fn handle(mut stream: Stream, admin: Arc<Admin>) {
    let request = match tokio::time::timeout(CONTROL_TIMEOUT, read_line(&mut stream)).await {
        Ok(r) => r,
        Err(_) => {
            debug!("control: no command within {CONTROL_TIMEOUT:?}; closing");
            return;
        }
    };
    let reply = match request {
        Request::Line(line) => admin.control_line(line).await,
        Request::Nothing => return,
        refused => refused.refusal().unwrap_or_default(),
    };
    let write = async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(CONTROL_TIMEOUT, write).await.is_err() {
        debug!("control: the client did not read its reply within {CONTROL_TIMEOUT:?}");
    }
}

/// Read up to the first newline (or EOF), at most `MAX_LINE` bytes.
async fn read_line(stream: &mut Stream) -> Request {
    let mut framer = Framer::default();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => return framer.finish(),
            Ok(n) => {
                if let Some(request) = framer.push(&chunk[..n]) {
                    return request;
                }
            }
            Err(_) => return Request::Nothing,
        }
    }
}
