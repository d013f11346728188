//! The HTTP side: a fixed set of routes, each answered from the latest `View` (no route ever
//! reaches pen or the filesystem), and the headers every response carries.
//!
//! - `/` the dashboard; `/dashboard.js` and `/dashboard.css` its script and style, compiled in;
//! - `/events` server-sent events: the live part of the dashboard after every poll;
//! - `/status.html` pen's classic status page; `/api/status` the snapshot as JSON;
//! - `/metrics` the Prometheus text format.
//!
//! Everything else is 404, every method but GET and HEAD 405.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::metrics;
use crate::monitor::View;
use crate::page;

/// No script or style but ours, from our own fixed routes; nothing else loads at all.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self'; connect-src 'self'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";
/// At most this many browsers follow `/events` at once; more get 503.
pub const MAX_EVENT_STREAMS: usize = 64;
/// A comment line on quiet event streams, so proxies and browsers keep them open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    views: watch::Receiver<Arc<View>>,
    pen: Arc<str>,
    interval_secs: f64,
    streams: Arc<Semaphore>,
    /// Listening on a loopback address: only requests for a loopback host are served, so a
    /// web page elsewhere cannot reach the dashboard through DNS rebinding.
    loopback_only: bool,
}

impl AppState {
    pub fn new(
        views: watch::Receiver<Arc<View>>,
        pen: &str,
        interval: Duration,
        listen: IpAddr,
    ) -> AppState {
        AppState {
            views,
            pen: pen.into(),
            interval_secs: interval.as_secs_f64(),
            streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
            loopback_only: listen.is_loopback(),
        }
    }

    fn latest(&self) -> Arc<View> {
        self.views.borrow().clone()
    }
}

/// The router, with the security headers on every response (404s included).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
        .route("/events", get(events))
        .route("/status.html", get(status_page))
        .route("/api/status", get(api_status))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Refuse foreign Host headers on a loopback listener, and put the security headers on
/// whatever the router answers.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = if state.loopback_only && !is_loopback_host(request.headers()) {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "penstats-web listens on a loopback address and answers only requests for \
             localhost or a loopback address\n",
        )
            .into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 4] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Whether the Host header names this machine's loopback: `localhost`, `127.x.y.z` or `[::1]`,
/// with or without a port. A request without Host (HTTP/1.0) is from a local tool, not a page.
fn is_loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip: IpAddr| ip.is_loopback())
}

async fn dashboard(State(state): State<AppState>) -> Response {
    let view = state.latest();
    match page::dashboard(&state.pen, &view.live, state.interval_secs) {
        Ok(html) => Html(html).into_response(),
        Err(e) => internal(&e),
    }
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// The live part after every poll, as `message` events whose id is the poll's number. The
/// first event is the latest view, so a new browser needs no other request.
async fn events(State(state): State<AppState>) -> Response {
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("penstats-web: {MAX_EVENT_STREAMS} event streams are open already\n"),
        )
            .into_response();
    };
    Sse::new(view_events(state.views.clone(), permit))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// The stream of events; it holds its permit until the browser goes away. A browser that reads
/// slowly skips views (the watch channel keeps only the latest), it never makes them queue.
fn view_events(
    mut views: watch::Receiver<Arc<View>>,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    views.mark_changed();
    stream::unfold((views, permit), |(mut views, permit)| async move {
        views.changed().await.ok()?;
        let view = views.borrow_and_update().clone();
        let event = Event::default()
            .id(view.seq.to_string())
            .data(view.live.trim_end());
        Some((Ok(event), (views, permit)))
    })
}

async fn status_page(State(state): State<AppState>) -> Response {
    let view = state.latest();
    match &view.snapshot {
        Some(snapshot) => match pen::stats::render_html(snapshot) {
            Ok(html) => Html(html).into_response(),
            Err(e) => internal(&e),
        },
        None => unavailable_html(&view),
    }
}

async fn api_status(State(state): State<AppState>) -> Response {
    let view = state.latest();
    let (status, body) = match &view.snapshot {
        Some(snapshot) => match serde_json::to_string(&**snapshot) {
            Ok(json) => (StatusCode::OK, json),
            Err(e) => return internal(&e),
        },
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": unavailable_reason(&view) }).to_string(),
        ),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let view = state.latest();
    let text = metrics::render(view.snapshot.as_deref(), view.polls);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "penstats-web: no such page\n").into_response()
}

/// Why there is no snapshot to serve.
fn unavailable_reason(view: &View) -> String {
    match &view.health {
        page::Health::Down { error, since, .. } => {
            format!("pen is unreachable since {since}: {error}")
        }
        _ => "pen has not answered yet".to_string(),
    }
}

fn unavailable_html(view: &View) -> Response {
    let reason = page::escape_text(&unavailable_reason(view));
    let page = format!(
        "<!DOCTYPE html>\n<html><head><title>pen status unavailable</title></head>\n\
         <body><h1>pen status unavailable</h1><p>{reason}</p></body></html>\n"
    );
    (StatusCode::SERVICE_UNAVAILABLE, Html(page)).into_response()
}

fn internal(e: &dyn std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("penstats-web: {e}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "127.0.0.1:10081",
            "127.1.2.3",
            "[::1]:10081",
            "[::1]",
        ] {
            assert!(is_loopback_host(&host(ok)), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:10081",
            "10.0.0.1:80",
            "localhost.evil.example",
            "[::2]:1",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_host(&host(bad)), "{bad}");
        }
        assert!(is_loopback_host(&HeaderMap::new()));
    }
}
