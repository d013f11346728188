//! The routes, driven in-process through tower's `oneshot` with views made by the real monitor:
//! what each route answers while pen answers and while it does not, the headers on every
//! response, escaping of everything that comes from pen, and the event stream.

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use futures_util::StreamExt;
use pen::balancer::Snapshot;
use penstats_web::web::{CSP, MAX_EVENT_STREAMS};
use support::{header, refused, snapshot, text, Harness};

/// Every route, and some paths that must not be routes.
const PATHS: &[&str] = &[
    "/",
    "/dashboard.js",
    "/dashboard.css",
    "/status.html",
    "/api/status",
    "/metrics",
    "/nope",
    "/../Cargo.toml",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/dashboard.js/..",
    "/api/status/extra",
    "//etc/passwd",
];

#[tokio::test]
async fn the_dashboard_shows_pens_tables_with_pens_columns() {
    let mut h = Harness::new();
    h.poll(Ok(snapshot()));
    let response = h.get("/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type"),
        "text/html; charset=utf-8"
    );
    let page = text(response).await;
    for column in [
        "<th>server</th><th>address</th><th>status</th><th>port</th><th>connections</th>\
         <th>max soft</th><th>max hard</th><th>sent</th><th>received</th><th>weight</th>\
         <th>prio</th>",
        "<th>client</th><th>address</th><th>age(secs)</th><th>last server</th>\
         <th>connects</th><th>sent</th><th>received</th>",
        "<th>connection</th><th>downfd</th><th>upfd</th><th>pending data down</th>\
         <th>pending data up</th><th>client</th><th>server</th>",
    ] {
        assert!(page.contains(column), "missing {column}");
    }
    assert!(
        page.contains("<tr class=\"ok\" data-server=\"0\">"),
        "{page}"
    );
    assert!(page.contains("<td class=\"received\">13170</td>"));
    // The blacklisted server is marked, and an alert says so.
    assert!(page.contains("<tr class=\"blacklisted\" data-server=\"1\">"));
    assert!(page.contains("blacklisted, 30 s left"));
    assert!(page.contains("1 of 2 servers blacklisted"));
    // pen's settings.
    assert!(page.contains(
        "<tr><th>mode</th><td>no hash no roundrobin no stubborn no weight no prio</td></tr>"
    ));
    assert!(page.contains("<tr><th>conn_max</th><td>9968</td></tr>"));
    // A chart for each server, drawn as inline SVG.
    assert_eq!(page.matches("<svg class=\"chart\"").count(), 4);
    assert!(page.contains("<polyline class=\"conns\""));
}

#[tokio::test]
async fn no_inline_script_or_style_and_the_script_is_a_fixed_route() {
    let mut h = Harness::new();
    h.poll(Ok(snapshot()));
    let page = text(h.get("/").await).await;
    let scripts: Vec<&str> = page.split("<script").skip(1).collect();
    assert_eq!(scripts.len(), 1);
    assert!(scripts[0].starts_with(" src=\"/dashboard.js\" defer></script>"));
    assert!(!page.contains("style="), "inline style: {page}");
    assert!(!page.contains("<style"), "inline style sheet");
    assert!(!page.contains(" on"), "no event handler attributes");
    assert!(page.contains("<link rel=\"stylesheet\" href=\"/dashboard.css\">"));

    let js = h.get("/dashboard.js").await;
    assert_eq!(
        header(&js, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert!(text(js).await.contains("new EventSource('/events')"));
    let css = h.get("/dashboard.css").await;
    assert_eq!(header(&css, "content-type"), "text/css; charset=utf-8");
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let mut h = Harness::new();
    h.poll(Ok(snapshot()));
    for path in PATHS {
        let r = h.get(path).await;
        assert_eq!(header(&r, "content-security-policy"), CSP, "{path}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&r, "cache-control"), "no-store", "{path}");
    }
    let r = h.request(Method::POST, "/", Some("localhost")).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&r, "content-security-policy"), CSP);
    let r = h.request(Method::GET, "/", Some("evil.example")).await;
    assert_eq!(header(&r, "content-security-policy"), CSP);
    let r = h.get("/events").await;
    assert_eq!(header(&r, "content-security-policy"), CSP);
    assert!(CSP.contains("default-src 'none'") && CSP.contains("script-src 'self'"));
    assert!(!CSP.contains("unsafe"), "{CSP}");
}

#[tokio::test]
async fn only_the_fixed_routes_exist() {
    let mut h = Harness::new();
    h.poll(Ok(snapshot()));
    for path in &PATHS[6..] {
        let r = h.get(path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let body = text(r).await;
        assert_eq!(body, "penstats-web: no such page\n", "{path}");
    }
    for (method, path) in [
        (Method::POST, "/api/status"),
        (Method::PUT, "/metrics"),
        (Method::DELETE, "/"),
    ] {
        let r = h.request(method.clone(), path, Some("localhost")).await;
        assert_eq!(
            r.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
    }
    let head = h.request(Method::HEAD, "/metrics", Some("localhost")).await;
    assert_eq!(head.status(), StatusCode::OK);
}

/// A snapshot whose every text field from pen carries markup.
fn hostile() -> Snapshot {
    let mut s = snapshot();
    s.servers[0].address = "/tmp/<script>alert(1)</script>\"'&.sock".into();
    s.clients[0].address = "<img src=x onerror=alert(2)>".into();
    s.local_time = "<b>now</b>".into();
    s.settings.web_stats = Some("/tmp/</td><script>x()</script>".into());
    s.settings.tcp_fastclose = "<i>off</i>".into();
    s
}

#[tokio::test]
async fn everything_from_pen_is_escaped() {
    let mut h = Harness::new();
    h.poll(Ok(hostile()));
    for path in ["/", "/status.html"] {
        let page = text(h.get(path).await).await;
        assert!(!page.contains("<script>"), "{path}: {page}");
        assert!(!page.contains("<img"), "{path}");
        assert!(!page.contains("<b>now"), "{path}");
        // askama writes `<` and `>` as numeric entities.
        let page = page.replace("&#60;", "&lt;").replace("&#62;", "&gt;");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}: {page}"
        );
        assert!(
            page.contains("&lt;img src=x onerror=alert(2)&gt;"),
            "{path}"
        );
    }
    let page = text(h.get("/").await).await;
    let page = page.replace("&#60;", "&lt;").replace("&#62;", "&gt;");
    assert!(page.contains("&lt;i&gt;off&lt;/i&gt;"));
    assert!(page.contains("/tmp/&lt;/td&gt;&lt;script&gt;x()&lt;/script&gt;"));
    let mut events = h.get("/events").await.into_body().into_data_stream();
    let first = events.next().await.expect("an event").expect("bytes");
    let first = String::from_utf8_lossy(&first);
    assert!(!first.contains("<script>"), "{first}");
    let metrics = text(h.get("/metrics").await).await;
    assert!(metrics.contains("address=\"/tmp/<script>alert(1)</script>\\\"'&.sock\""));
}

#[tokio::test]
async fn api_status_is_pens_snapshot_and_status_html_is_pens_page() {
    let mut h = Harness::new();
    h.poll(Ok(snapshot()));
    let r = h.get("/api/status").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "application/json");
    let back: Snapshot = serde_json::from_str(&text(r).await).expect("a snapshot");
    assert_eq!(back, snapshot());

    let r = h.get("/status.html").await;
    assert_eq!(r.status(), StatusCode::OK);
    let want = pen::stats::render_html(&snapshot()).unwrap();
    assert_eq!(text(r).await, want);

    let r = h.get("/metrics").await;
    assert_eq!(
        header(&r, "content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let metrics = text(r).await;
    assert!(metrics.contains("\npen_up 1\n"));
    assert!(metrics.contains(
        "\npen_server_received_bytes_total{server=\"0\",kind=\"regular\",address=\"127.0.0.1\",port=\"18001\"} 13170\n"
    ));
    assert!(metrics.contains(
        "\npen_server_blacklisted{server=\"1\",kind=\"regular\",address=\"127.0.0.1\",port=\"18002\"} 1\n"
    ));
    assert!(metrics.contains("\npen_clients 1\n"));
}

#[tokio::test]
async fn while_pen_is_unreachable_nothing_stale_is_served() {
    let mut h = Harness::new();
    let mut old = snapshot();
    old.servers[0].received = 777_000_111;
    old.counters.received = 777_000_111;
    h.poll(Ok(old));
    h.poll(Err(refused()));

    let r = h.get("/api/status").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("pen is unreachable since 1970-01-01 00:00:02: can't connect"),
        "{error}"
    );

    let r = h.get("/status.html").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!text(r).await.contains("777000111"));

    let metrics = text(h.get("/metrics").await).await;
    assert!(metrics.contains("\npen_up 0\n"), "{metrics}");
    assert!(!metrics.contains("777000111") && !metrics.contains("pen_server_"));

    let page = text(h.get("/").await).await;
    assert!(page.contains("data-state=\"down\""), "{page}");
    assert!(page.contains("pen is unreachable"));
    assert!(!page.contains("777000111"), "stale number on the page");
    assert!(!page.contains("id=\"servers\""));

    // Before the first poll there is nothing either.
    let fresh = Harness::new();
    let r = fresh.get("/api/status").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(text(r).await.contains("pen has not answered yet"));
    assert!(text(fresh.get("/").await)
        .await
        .contains("data-state=\"starting\""));
}

#[tokio::test]
async fn the_event_stream_sends_the_live_part_after_every_poll() {
    let mut h = Harness::new();
    h.poll(Ok(snapshot()));
    let r = h.get("/events").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let mut events = r.into_body().into_data_stream();
    // The latest view comes first, at once.
    let first = next_event(&mut events).await;
    assert!(first.starts_with("id: 1\ndata: "), "{first}");
    assert!(
        first.contains("data: <tr class=\"ok\" data-server=\"0\">"),
        "{first}"
    );
    assert!(first.ends_with("\n\n"));

    let mut more = snapshot();
    more.servers[0].received = 99_999;
    h.poll(Ok(more));
    let second = next_event(&mut events).await;
    assert!(second.starts_with("id: 2\n"), "{second}");
    assert!(second.contains("<td class=\"received\">99999</td>"));

    h.poll(Err(refused()));
    let third = next_event(&mut events).await;
    assert!(third.starts_with("id: 3\n") && third.contains("data-state=\"down\""));

    // When the poller stops (shutdown), the stream ends instead of holding the server open.
    drop(h.views);
    let end = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn event_streams_are_limited() {
    let mut h = Harness::new();
    h.poll(Ok(snapshot()));
    let mut open = Vec::new();
    for _ in 0..MAX_EVENT_STREAMS {
        let r = h.get("/events").await;
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    let r = h.get("/events").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A browser that leaves gives its place back.
    open.pop();
    assert_eq!(h.get("/events").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_foreign_host_name_is_refused_on_a_loopback_listener() {
    let mut h = Harness::new();
    h.poll(Ok(snapshot()));
    for host in ["evil.example", "evil.example:10081", "10.1.2.3:10081"] {
        let r = h.request(Method::GET, "/api/status", Some(host)).await;
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(!text(r).await.contains("13170"));
    }
    for host in ["localhost:10081", "127.0.0.1:10081", "[::1]:10081"] {
        let r = h.request(Method::GET, "/api/status", Some(host)).await;
        assert_eq!(r.status(), StatusCode::OK, "{host}");
    }
}

async fn next_event(events: &mut axum::body::BodyDataStream) -> String {
    let chunk = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream goes on")
        .expect("bytes");
    String::from_utf8(chunk.to_vec()).unwrap()
}
