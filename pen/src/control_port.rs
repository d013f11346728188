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

/// Why a control connection got no command.
enum Request {
    Line(String),
    TooLong,
    NotText,
    Nothing,
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
        Request::TooLong => format!("control: command longer than {MAX_LINE} bytes; ignored\n"),
        Request::NotText => "control: command is not text; ignored\n".to_string(),
        Request::Nothing => return,
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
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(_) => return Request::Nothing,
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&c| c == b'\n' || c == b'\r') {
            buf.truncate(end);
            break;
        }
        if buf.len() > MAX_LINE {
            return Request::TooLong;
        }
    }
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
