//! Shared pieces of penstats-web's tests: snapshots, views made by the real `Monitor`, and the
//! router driven in-process with tower's `oneshot`.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, Response};
use axum::Router;
use chrono::{DateTime, FixedOffset};
use pen::balancer::Snapshot;
use penstats_web::address::Address;
use penstats_web::fetch::FetchError;
use penstats_web::monitor::{Monitor, Polling, View};
use penstats_web::web::{self, AppState};
use tokio::sync::watch;
use tower::ServiceExt;

/// A reply of our pen's control port to `snapshot` (two servers, the second blacklisted, one
/// client), as penctl printed it.
pub const REPLY: &str = r#"{"time":1795351309,"local_time":"2026-11-22 12:41:49","current":0,"servers":[{"index":0,"kind":"regular","address":"127.0.0.1","port":18001,"status":0,"blacklisted":false,"blacklist_remaining":0,"conns":0,"maxc":0,"hard":0,"sent":158,"received":13170,"weight":0,"prio":0},{"index":1,"kind":"regular","address":"127.0.0.1","port":18002,"status":1795351309,"blacklisted":true,"blacklist_remaining":30,"conns":0,"maxc":0,"hard":0,"sent":0,"received":0,"weight":0,"prio":0}],"emergency":null,"abuse":null,"clients":[{"slot":0,"address":"127.0.0.1","age":0,"last_server":0,"connects":2,"sent":13170,"received":158}],"conns":[],"settings":{"blacklist_time":30,"tracking":0,"connect_timeout":3,"idle_timeout":0,"roundrobin":false,"stubborn":false,"hash":false,"weight":false,"prio":false,"tcp_fastclose":"off","tcp_nodelay":true,"keepalive":false,"web_stats":null,"clients_max":2048,"conn_max":9968},"counters":{"conns_used":0,"conn_last":0,"clients_known":1,"sent":158,"received":13170}}"#;

pub fn snapshot() -> Snapshot {
    serde_json::from_str(REPLY).expect("REPLY is a snapshot")
}

pub fn polling() -> Polling {
    Polling {
        pen: Address::parse("127.0.0.1:10080").unwrap(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        history: Duration::from_secs(300),
    }
}

pub fn wall(secs: i64) -> DateTime<FixedOffset> {
    DateTime::from_timestamp(secs, 0)
        .unwrap()
        .with_timezone(&FixedOffset::east_opt(0).unwrap())
}

pub fn refused() -> FetchError {
    FetchError::Connect {
        address: "127.0.0.1:10080".into(),
        source: std::io::ErrorKind::ConnectionRefused.into(),
    }
}

/// Feeds views to a router as the poll loop would.
pub struct Harness {
    pub monitor: Monitor,
    pub views: watch::Sender<Arc<View>>,
    pub app: Router,
    t0: Instant,
    polls: i64,
}

impl Harness {
    pub fn new() -> Harness {
        let monitor = Monitor::new(polling());
        let (views, latest) = watch::channel(Arc::new(monitor.starting()));
        let state = AppState::new(
            latest,
            "127.0.0.1:10080",
            Duration::from_secs(1),
            "127.0.0.1".parse().unwrap(),
        );
        Harness {
            monitor,
            views,
            app: web::router(state),
            t0: Instant::now(),
            polls: 0,
        }
    }

    /// One poll's result, published.
    pub fn poll(&mut self, result: Result<Snapshot, FetchError>) {
        self.polls += 1;
        let at = self.t0 + Duration::from_secs(self.polls as u64);
        let view = self.monitor.update(result, at, wall(self.polls));
        self.views.send_replace(Arc::new(view));
    }

    pub async fn get(&self, path: &str) -> Response<Body> {
        self.request(Method::GET, path, Some("127.0.0.1:10081"))
            .await
    }

    pub async fn request(&self, method: Method, path: &str, host: Option<&str>) -> Response<Body> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let request = request.body(Body::empty()).expect("a valid request");
        self.app
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible")
    }
}

pub async fn text(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .expect("a body");
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}

pub fn header<'a>(response: &'a Response<Body>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}
pub mod process;
