//! Polling pen, against test control ports on loopback TCP and Unix sockets: the exact bytes
//! sent, a silent pen given up on in bounded time, polls that never pile up, replies that are
//! not snapshots, and a pen that comes back.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use penstats_web::address::Address;
use penstats_web::fetch::{self, FetchError};
use penstats_web::monitor::{self, Monitor, Polling, View};
use penstats_web::page::Health;
use support::REPLY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

/// How a test control port behaves.
#[derive(Clone, Copy)]
enum Pen {
    /// Read the command line, answer `REPLY`, close.
    Answers,
    /// Read the command line and never answer (hold the connection until the client leaves).
    Silent,
    /// Answer with this text instead of a snapshot.
    Says(&'static str),
}

/// What a test control port saw.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Vec<u8>>>,
    accepted: AtomicUsize,
    open: AtomicUsize,
    most_open: AtomicUsize,
}

async fn serve<S>(mut stream: S, pen: Pen, seen: Arc<Seen>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let now = seen.open.fetch_add(1, Ordering::SeqCst) + 1;
    seen.most_open.fetch_max(now, Ordering::SeqCst);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 4096 {
        match stream.read(&mut byte).await {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    seen.requests.lock().unwrap().push(line);
    match pen {
        Pen::Answers => {
            let _ = stream.write_all(REPLY.as_bytes()).await;
            let _ = stream.write_all(b"\n").await;
        }
        Pen::Says(text) => {
            let _ = stream.write_all(text.as_bytes()).await;
        }
        Pen::Silent => {
            // Until the client gives up and closes.
            let mut rest = [0u8; 64];
            while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
        }
    }
    let _ = stream.shutdown().await;
    seen.open.fetch_sub(1, Ordering::SeqCst);
}

async fn tcp_pen(pen: Pen) -> (Address, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, pen, s.clone()));
        }
    });
    (Address::parse(&format!("127.0.0.1:{port}")).unwrap(), seen)
}

fn unix_pen(path: &std::path::Path, pen: Pen) -> Arc<Seen> {
    let listener = UnixListener::bind(path).unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, pen, s.clone()));
        }
    });
    seen
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("penstats-web-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_snapshot_is_read_and_snapshot_is_all_that_is_sent() {
    let (address, seen) = tcp_pen(Pen::Answers).await;
    let snap = fetch::snapshot(&address, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(snap, support::snapshot());
    assert_eq!(*seen.requests.lock().unwrap(), vec![b"snapshot\n".to_vec()]);
}

#[tokio::test]
async fn a_control_port_on_a_unix_socket() {
    let dir = temp_dir("unix");
    let path = dir.join("pen.ctl");
    let seen = unix_pen(&path, Pen::Answers);
    let address = Address::parse(path.to_str().unwrap()).unwrap();
    let snap = fetch::snapshot(&address, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(snap.servers.len(), 2);
    assert_eq!(seen.requests.lock().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_silent_pen_is_given_up_on_after_the_timeout() {
    let (address, _seen) = tcp_pen(Pen::Silent).await;
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    let err = fetch::snapshot(&address, limit).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout(_)), "{err}");
    assert_eq!(err.to_string(), "pen did not answer within 0.3 seconds");
    // Bounded: the deadline, plus scheduling slack on a busy machine.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn replies_that_are_not_snapshots_and_closed_ports_are_explained() {
    let (address, _) = tcp_pen(Pen::Says(
        "do_cmd: ignoring command starting with 'snapshot'\n",
    ))
    .await;
    let err = fetch::snapshot(&address, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("pen 0.34.1 and older pens do not know"),
        "{err}"
    );
    let (address, _) = tcp_pen(Pen::Says("")).await;
    let err = fetch::snapshot(&address, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Empty), "{err}");

    // A port nobody listens on any more, so connects are refused.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    drop(socket);
    let address = Address::parse(&format!("127.0.0.1:{port}")).unwrap();
    let err = fetch::snapshot(&address, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "can't connect to pen's control port 127.0.0.1:{port}"
        )),
        "{err}"
    );
    let address = Address::Unix("/nonexistent/pen.ctl".into());
    let err = fetch::snapshot(&address, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/pen.ctl"), "{err}");
}

/// Wait (bounded) until the monitor publishes a view that `pred` accepts.
async fn wait_view(
    views: &mut watch::Receiver<Arc<View>>,
    pred: impl Fn(&View) -> bool,
) -> Arc<View> {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if pred(&views.borrow_and_update()) {
                return views.borrow().clone();
            }
            views.changed().await.expect("the monitor runs");
        }
    })
    .await;
    found.expect("no such view within 10 s")
}

fn start_monitor(
    pen: Address,
    interval: Duration,
    timeout: Duration,
) -> watch::Receiver<Arc<View>> {
    let monitor = Monitor::new(Polling {
        pen,
        interval,
        timeout,
        history: Duration::from_secs(60),
    });
    let (tx, rx) = watch::channel(Arc::new(monitor.starting()));
    tokio::spawn(monitor::run(monitor, tx));
    rx
}

#[tokio::test]
async fn a_slow_pen_never_has_more_than_one_poll_waiting() {
    let (address, seen) = tcp_pen(Pen::Silent).await;
    // Polls every 20 ms, each allowed 250 ms: a poller that did not wait for the previous poll
    // would have a dozen connections open at once.
    let mut views = start_monitor(
        address,
        Duration::from_millis(20),
        Duration::from_millis(250),
    );
    let view = wait_view(&mut views, |v| v.polls.failed >= 4).await;
    assert!(matches!(view.health, Health::Down { .. }));
    assert!(
        view.live.contains("did not answer within 0.25 seconds"),
        "{}",
        view.live
    );
    // One connection at a time; the test port may see the next one a moment before it sees the
    // previous one's close, hence 2.
    let most = seen.most_open.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} polls were waiting on pen at once");
    let accepted = seen.accepted.load(Ordering::SeqCst) as u64;
    assert!(
        accepted <= view.polls.failed + 1,
        "{accepted} connections for {} polls",
        view.polls.failed
    );
}

#[tokio::test]
async fn a_pen_that_comes_back_is_seen_again() {
    let dir = temp_dir("back");
    let path = dir.join("pen.ctl");
    let address = Address::parse(path.to_str().unwrap()).unwrap();
    let mut views = start_monitor(address, Duration::from_millis(50), Duration::from_secs(2));
    let down = wait_view(&mut views, |v| matches!(v.health, Health::Down { .. })).await;
    assert!(down.snapshot.is_none());
    assert!(down.live.contains("pen is unreachable"));

    let seen = unix_pen(&path, Pen::Answers);
    let up = wait_view(&mut views, |v| v.health == Health::Up).await;
    assert_eq!(up.snapshot.as_deref(), Some(&support::snapshot()));
    assert!(up.live.contains("data-server=\"1\""));
    assert!(up.polls.failed >= 1 && up.polls.ok >= 1);
    assert!(seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .all(|r| r == b"snapshot\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
