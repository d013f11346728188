//! penstats-web against our running pen, with traffic flowing through pen: the JSON, the
//! metrics, pen's status page and the dashboard follow pen's counters; a stopped pen is reported
//! as unreachable with no numbers left standing; control ports on IPv6 and Unix sockets work.
//! And the dashboard in a real headless browser (chromium): it shows the servers table and sees
//! a counter change after traffic passes through pen, without a reload.

use std::time::Duration;

use pen_crosstests::browser::Browser;
use pen_crosstests::http::Reply;
use pen_crosstests::penctl::{Control, ControlledPen};
use pen_crosstests::penstats_web::Dashboard;
use pen_crosstests::{ask, hold, our_pen, Backend};
use serde_json::Value;

/// Long enough for several polls (0.2 s apart) on a busy machine.
const SETTLE: Duration = Duration::from_secs(20);

fn json(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

/// The value of the sample line `name` (with its labels, if any) in a metrics text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn server_label(index: usize, backend: &Backend) -> String {
    format!(
        "{{server=\"{index}\",kind=\"regular\",address=\"127.0.0.1\",port=\"{}\"}}",
        backend.addr().port()
    )
}

#[test]
fn the_dashboard_follows_a_running_pen_with_traffic() {
    let backends = [Backend::start("A"), Backend::start("B")];
    let servers: Vec<String> = backends.iter().map(Backend::spec).collect();
    let pen = ControlledPen::start(&our_pen(), Control::v4(), &[], &servers);
    let dashboard = Dashboard::start(&pen.address(), &[]);

    let status = dashboard.get_until("/api/status", SETTLE, |r| r.status == 200);
    let snap = json(&status);
    let ports: Vec<u64> = snap["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["port"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = backends
        .iter()
        .map(|b| u64::from(b.addr().port()))
        .collect();
    assert_eq!(ports, want);
    assert_eq!(status.header("content-type"), Some("application/json"));
    assert!(status
        .header("content-security-policy")
        .is_some_and(|csp| csp.starts_with("default-src 'none'")));

    // One connection held open: penstats-web sees it on the server that took it.
    let (name, client) = hold(pen.pen.addr(), None);
    let index = backends
        .iter()
        .position(|b| b.name() == name)
        .unwrap_or_else(|| panic!("pen answered {name:?}"));
    let label = server_label(index, &backends[index]);
    let conns_name = format!("pen_server_connections{label}");
    dashboard.get_until("/metrics", SETTLE, |r| {
        metric(&r.body, &conns_name) == Some(1.0) && metric(&r.body, "pen_connections") == Some(1.0)
    });
    let snap = json(&dashboard.get("/api/status"));
    assert_eq!(snap["counters"]["conns_used"], 1);
    assert_eq!(snap["conns"].as_array().unwrap().len(), 1);
    drop(client);

    // Short connections: every backend answers with its name and a newline, 2 bytes each.
    for _ in 0..4 {
        let reply = ask(pen.pen.addr(), None);
        assert!(reply == "A" || reply == "B", "{reply}");
    }
    let metrics = dashboard.get_until("/metrics", SETTLE, |r| {
        metric(&r.body, "pen_received_bytes_total") == Some(10.0)
            && metric(&r.body, "pen_connections") == Some(0.0)
    });
    assert_eq!(metric(&metrics.body, "pen_up"), Some(1.0));
    assert_eq!(metric(&metrics.body, "pen_clients"), Some(1.0));
    let received: f64 = (0..2)
        .map(|i| {
            let name = format!(
                "pen_server_received_bytes_total{}",
                server_label(i, &backends[i])
            );
            metric(&metrics.body, &name).unwrap_or_else(|| panic!("no {name}"))
        })
        .sum();
    assert_eq!(received, 10.0);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    let page = dashboard.get("/status.html");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>Pen status page</title>"));
    for b in &backends {
        assert!(page.body.contains(&format!("<td>{}</td>", b.addr().port())));
    }
    let live = dashboard.get("/");
    assert!(live.body.contains("data-state=\"up\""));
    assert!(live.body.contains("id=\"servers\""));
    assert!(live.body.contains("<td class=\"received\">"));

    // pen goes away: nothing stale is served, and the page says why.
    let out = pen.pen.stop();
    assert!(out.status.is_some(), "{out:?}");
    let gone = dashboard.get_until("/api/status", SETTLE, |r| r.status == 503);
    assert!(json(&gone)["error"]
        .as_str()
        .unwrap()
        .starts_with("pen is unreachable since "));
    let metrics = dashboard.get("/metrics");
    assert_eq!(metric(&metrics.body, "pen_up"), Some(0.0));
    assert_eq!(metric(&metrics.body, "pen_received_bytes_total"), None);
    assert_eq!(dashboard.get("/status.html").status, 503);
    let page = dashboard.get("/");
    assert!(page.body.contains("pen is unreachable"), "{}", page.body);
    assert!(!page.body.contains("id=\"servers\""));
}

#[test]
fn control_ports_on_ipv6_and_unix_sockets() {
    let dir = std::env::temp_dir().join(format!("penstats-web-cross-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let backend = Backend::start("A");
    for control in [Control::v6(), Control::Unix(dir.join("ctl.sock"))] {
        let pen = ControlledPen::start(&our_pen(), control, &[], &[backend.spec()]);
        assert_eq!(ask(pen.pen.addr(), None), "A");
        let mut args = vec![pen.address()];
        if let Control::V6(port) = pen.control {
            // Both IPv6 forms: pen's unbracketed one (above) and the bracketed one.
            args.push(format!("[::1]:{port}"));
        }
        for address in args {
            let dashboard = Dashboard::start(&address, &[]);
            let reply = dashboard.get_until("/api/status", SETTLE, |r| {
                r.status == 200 && json(r)["servers"][0]["received"] == 2
            });
            assert_eq!(json(&reply)["counters"]["clients_known"], 1, "{address}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The text of an element, or null when there is none.
fn text_of(selector: &str) -> String {
    format!(
        "var e = document.querySelector({}); return e ? e.textContent : null;",
        Value::from(selector)
    )
}

#[test]
fn the_dashboard_in_a_headless_browser_sees_traffic_without_a_reload() {
    let backends = [Backend::start("A"), Backend::start("B")];
    let servers: Vec<String> = backends.iter().map(Backend::spec).collect();
    let pen = ControlledPen::start(&our_pen(), Control::v4(), &[], &servers);
    let dashboard = Dashboard::start(&pen.address(), &[]);
    let browser = Browser::start();
    browser.open(&dashboard.url("/"));

    // The servers table, with pen's two servers, and the live link up.
    let rows = browser.wait_for(
        "return document.querySelectorAll('#servers tbody tr').length;",
        SETTLE,
        |v| v == 2,
    );
    assert_eq!(rows, 2);
    browser.wait_for(
        "return document.getElementById('link').className;",
        SETTLE,
        |v| v == "link link-ok",
    );
    let ports = browser.eval(
        "return Array.from(document.querySelectorAll('#servers td.port')).map(e => e.textContent);",
    );
    let want: Vec<String> = backends
        .iter()
        .map(|b| b.addr().port().to_string())
        .collect();
    assert_eq!(ports, Value::from(want));
    assert_eq!(browser.eval(&text_of("#total-received")), "0");

    // A mark that a reload would wipe out.
    browser.eval("window.penstatsMark = 'still here'; return null;");
    for _ in 0..3 {
        ask(pen.pen.addr(), None);
    }
    // The counter changes on the page, through the event stream alone.
    browser.wait_for(&text_of("#total-received"), SETTLE, |v| v == "6");
    assert_eq!(browser.eval("return window.penstatsMark;"), "still here");
    let state = browser.eval("return document.getElementById('state').dataset.state;");
    assert_eq!(state, "up");
    // The charts are drawn, as inline SVG.
    let charts =
        browser.eval("return document.querySelectorAll('#servers svg.chart polyline').length;");
    assert!(charts.as_u64().unwrap_or(0) >= 4, "{charts}");

    // pen stops: the page says so and the servers table goes.
    let out = pen.pen.stop();
    assert!(out.status.is_some(), "{out:?}");
    browser.wait_for(
        "return document.getElementById('state').dataset.state;",
        SETTLE,
        |v| v == "down",
    );
    assert_eq!(
        browser.eval("return document.querySelector('#servers') === null;"),
        true
    );
    assert_eq!(browser.eval("return window.penstatsMark;"), "still here");

    // penstats-web stops: the page marks what it shows as not current.
    let mut dashboard = dashboard;
    dashboard.stop();
    let link = browser.wait_for(&text_of("#link"), SETTLE, |v| {
        v.as_str().is_some_and(|t| t.contains("not current"))
    });
    assert!(
        link.as_str().unwrap().contains("Lost contact")
            || link.as_str().unwrap().contains("No update")
    );
    assert_eq!(
        browser.eval("return document.getElementById('live').classList.contains('stale');"),
        true
    );
}
