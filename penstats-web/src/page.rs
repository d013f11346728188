//! The dashboard's HTML: the page `/` and its live part, rendered with askama (every value from
//! pen is escaped by the template engine). The live part is rendered once per poll, by the
//! monitor, and sent as it is to every browser that watches (`/events`); the page embeds the
//! latest one, so it shows something useful before its script runs, or without it.
//!
//! The columns of the servers, clients and connections tables are those of pen's status page,
//! with a state column and the charts added to the servers.

use std::collections::HashMap;

use askama::Template;
use pen::balancer::{ServerKind, ServerStats, Snapshot};

use crate::chart::{self, Chart, Unit};
use crate::history::{every_server, ServerKey, ServerSeries};

/// At most this many client table entries and connections are listed; `/status.html` has all.
pub const MAX_ROWS: usize = 200;

/// How the last poll went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// No poll has finished yet.
    Starting,
    Up,
    Down {
        error: String,
        /// When the current outage began (penstats-web's clock).
        since: String,
        /// When pen last answered, if it ever did.
        last_ok: Option<String>,
    },
}

/// Everything the live part shows.
pub struct Live<'a> {
    /// pen's control port, as given.
    pub pen: &'a str,
    pub health: &'a Health,
    /// When the last poll ended (penstats-web's clock).
    pub checked_at: &'a str,
    pub interval_secs: f64,
    /// The snapshot of the last poll; None unless it succeeded.
    pub snapshot: Option<&'a Snapshot>,
    pub series: &'a [ServerSeries],
    pub window_secs: f64,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard<'a> {
    pen: &'a str,
    live: &'a str,
    interval_ms: u64,
}

#[derive(Template)]
#[template(path = "live.html")]
struct LiveTemplate<'a> {
    pen: &'a str,
    health: &'a Health,
    checked_at: &'a str,
    retry: String,
    window: String,
    snap: Option<SnapView<'a>>,
    /// Charts of the servers pen had before it became unreachable.
    history: Vec<ServerRow<'a>>,
}

struct SnapView<'a> {
    s: &'a Snapshot,
    alerts: Vec<String>,
    servers: Vec<ServerRow<'a>>,
    settings: Vec<(&'static str, String)>,
    clients: Vec<ClientRow<'a>>,
    clients_note: Option<String>,
    conns: Vec<ConnRow>,
    conns_note: Option<String>,
    current: String,
}

struct ServerRow<'a> {
    /// pen's number: `0`, `1`, ..., `-1` for the emergency server, `-2` for the abuse server.
    number: String,
    s: Option<&'a ServerStats>,
    address: &'a str,
    port: u16,
    state: String,
    /// CSS class of the row: `ok`, `blacklisted`, `full`, `emergency`, `abuse`, `in-use`.
    class: &'static str,
    conns_chart: Chart,
    bytes_chart: Chart,
}

struct ClientRow<'a> {
    slot: usize,
    address: &'a str,
    age: u64,
    last_server: String,
    connects: u64,
    sent: u64,
    received: u64,
}

struct ConnRow {
    slot: usize,
    client_fd: i32,
    server_fd: i32,
    pending_to_client: u64,
    pending_to_server: u64,
    client: String,
    server: String,
    state: &'static str,
}

/// The page `/`, around the latest live part.
pub fn dashboard(pen: &str, live: &str, interval_secs: f64) -> Result<String, askama::Error> {
    Dashboard {
        pen,
        live,
        interval_ms: (interval_secs * 1000.0).round() as u64,
    }
    .render()
}

/// The live part.
pub fn live(l: &Live<'_>) -> Result<String, askama::Error> {
    let charts: HashMap<&ServerKey, &ServerSeries> = l.series.iter().map(|s| (&s.key, s)).collect();
    let snap = l.snapshot.map(|s| snap_view(s, &charts, l.window_secs));
    // While pen is unreachable its last numbers are not shown, but the charts are: they are
    // history, and their gap shows the outage.
    let history = match l.snapshot {
        Some(_) => Vec::new(),
        None => l
            .series
            .iter()
            .map(|series| ServerRow {
                number: series.key.index.to_string(),
                s: None,
                address: &series.key.address,
                port: series.key.port,
                state: String::new(),
                class: "ok",
                conns_chart: conns_chart(Some(series), l.window_secs),
                bytes_chart: bytes_chart(Some(series), l.window_secs),
            })
            .collect(),
    };
    LiveTemplate {
        pen: l.pen,
        health: l.health,
        checked_at: l.checked_at,
        retry: seconds(l.interval_secs),
        window: minutes(l.window_secs),
        snap,
        history,
    }
    .render()
}

fn snap_view<'a>(
    s: &'a Snapshot,
    charts: &HashMap<&ServerKey, &ServerSeries>,
    window: f64,
) -> SnapView<'a> {
    let servers = every_server(s)
        .map(|srv| {
            let series = charts.get(&ServerKey::of(srv)).copied();
            let (state, class) = server_state(srv);
            ServerRow {
                number: srv.index.to_string(),
                s: Some(srv),
                address: &srv.address,
                port: srv.port,
                state,
                class,
                conns_chart: conns_chart(series, window),
                bytes_chart: bytes_chart(series, window),
            }
        })
        .collect();
    let mut clients: Vec<_> = s.clients.iter().collect();
    // The most recently seen first: with a big table, those are the ones worth a look.
    clients.sort_by_key(|c| (c.age, c.slot));
    let clients_note = (clients.len() > MAX_ROWS).then(|| {
        format!(
            "Showing the {MAX_ROWS} most recently seen of {} entries; /status.html lists all.",
            clients.len()
        )
    });
    let conns_note = (s.conns.len() > MAX_ROWS).then(|| {
        format!(
            "Showing {MAX_ROWS} of {} connections; /status.html lists all.",
            s.conns.len()
        )
    });
    SnapView {
        s,
        alerts: alerts(s),
        servers,
        settings: settings(s),
        clients: clients
            .into_iter()
            .take(MAX_ROWS)
            .map(|c| ClientRow {
                slot: c.slot,
                address: &c.address,
                age: c.age,
                last_server: cell(c.last_server),
                connects: c.connects,
                sent: c.sent,
                received: c.received,
            })
            .collect(),
        clients_note,
        conns: s
            .conns
            .iter()
            .take(MAX_ROWS)
            .map(|c| ConnRow {
                slot: c.slot,
                client_fd: c.client_fd,
                server_fd: c.server_fd,
                pending_to_client: c.pending_to_client,
                pending_to_server: c.pending_to_server,
                client: cell(c.client.and_then(|n| i64::try_from(n).ok())),
                server: cell(c.server),
                state: if c.connected {
                    "established"
                } else {
                    "connecting"
                },
            })
            .collect(),
        conns_note,
        current: cell(s.current),
    }
}

/// The state column and the row's class.
fn server_state(s: &ServerStats) -> (String, &'static str) {
    if s.blacklisted {
        return (
            format!("blacklisted, {} s left", s.blacklist_remaining),
            "blacklisted",
        );
    }
    match s.kind {
        ServerKind::Emergency if s.conns > 0 => ("emergency, in use".into(), "in-use"),
        ServerKind::Emergency => ("emergency, idle".into(), "emergency"),
        ServerKind::Abuse if s.conns > 0 => ("abuse, in use".into(), "in-use"),
        ServerKind::Abuse => ("abuse, idle".into(), "abuse"),
        ServerKind::Regular if s.maxc > 0 && s.conns >= s.maxc => ("at its limit".into(), "full"),
        ServerKind::Regular => ("ok".into(), "ok"),
    }
}

/// What an operator should notice first.
fn alerts(s: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let listed = s.servers.iter().filter(|v| v.port != 0).count();
    let blacklisted = s.servers.iter().filter(|v| v.blacklisted).count();
    if listed > 0 && blacklisted >= listed {
        out.push(match &s.emergency {
            Some(_) => {
                "Every server is blacklisted: new clients go to the emergency server.".into()
            }
            None => "Every server is blacklisted: new clients are refused.".into(),
        });
    } else if blacklisted > 0 {
        out.push(format!(
            "{blacklisted} of {listed} servers blacklisted (a connect to them failed)."
        ));
    }
    if let Some(e) = s.emergency.as_ref().filter(|e| e.conns > 0) {
        out.push(format!(
            "The emergency server is in use: {} connection{}.",
            e.conns,
            plural(u64::from(e.conns))
        ));
    }
    if let Some(a) = s.abuse.as_ref().filter(|a| a.conns > 0) {
        out.push(format!(
            "The abuse server holds {} connection{} of clients denied by client_acl.",
            a.conns,
            plural(u64::from(a.conns))
        ));
    }
    out
}

fn settings(s: &Snapshot) -> Vec<(&'static str, String)> {
    let t = &s.settings;
    let flag = |on: bool, name: &str| {
        if on {
            name.to_string()
        } else {
            format!("no {name}")
        }
    };
    let onoff = |on: bool| if on { "on" } else { "off" }.to_string();
    let secs_or = |n: u64, zero: &str| {
        if n == 0 {
            format!("0 ({zero})")
        } else {
            format!("{n} s")
        }
    };
    vec![
        (
            "mode",
            [
                flag(t.hash, "hash"),
                flag(t.roundrobin, "roundrobin"),
                flag(t.stubborn, "stubborn"),
                flag(t.weight, "weight"),
                flag(t.prio, "prio"),
            ]
            .join(" "),
        ),
        ("blacklist", format!("{} s", t.blacklist_time)),
        ("timeout (connect)", format!("{} s", t.connect_timeout)),
        (
            "tracking",
            secs_or(t.tracking, "clients are never forgotten"),
        ),
        ("idle_timeout", secs_or(t.idle_timeout, "off")),
        ("tcp_fastclose", t.tcp_fastclose.clone()),
        ("tcp_nodelay", onoff(t.tcp_nodelay)),
        ("keepalive", onoff(t.keepalive)),
        (
            "web_stats",
            t.web_stats.clone().unwrap_or_else(|| "none".into()),
        ),
        ("clients_max", t.clients_max.to_string()),
        ("conn_max", t.conn_max.to_string()),
    ]
}

fn conns_chart(series: Option<&ServerSeries>, window: f64) -> Chart {
    let empty = Vec::new();
    let (open, new) = series.map_or((&empty, &empty), |s| (&s.conns, &s.connect_rate));
    chart::draw(window, Unit::Count, &[("conns", open), ("connects", new)])
}

fn bytes_chart(series: Option<&ServerSeries>, window: f64) -> Chart {
    let empty = Vec::new();
    let (sent, received) = series.map_or((&empty, &empty), |s| (&s.sent_rate, &s.received_rate));
    chart::draw(
        window,
        Unit::BytesPerSecond,
        &[("sent", sent), ("received", received)],
    )
}

/// A number, or `-` where there is none (as pen's page).
fn cell(n: Option<i64>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn seconds(s: f64) -> String {
    format!("{} s", (s * 1000.0).round() / 1000.0)
}

fn minutes(s: f64) -> String {
    if s >= 120.0 && s % 60.0 == 0.0 {
        format!("last {} min", s / 60.0)
    } else {
        format!("last {} s", s.round())
    }
}

/// `&`, `<` and `>` as entities, for the few messages not rendered by a template.
pub fn escape_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{server, snapshot};
    use pen::balancer::ClientStats;

    fn render(s: &Snapshot) -> String {
        live(&Live {
            pen: "127.0.0.1:10080",
            health: &Health::Up,
            checked_at: "2026-11-22 12:00:00",
            interval_secs: 1.0,
            snapshot: Some(s),
            series: &[],
            window_secs: 300.0,
        })
        .unwrap()
    }

    #[test]
    fn every_server_blacklisted_and_the_emergency_server_in_use_are_told_first() {
        let mut a = server(0, "10.0.0.1", 80);
        a.blacklisted = true;
        a.blacklist_remaining = 5;
        let mut s = snapshot(vec![a]);
        assert_eq!(
            alerts(&s),
            ["Every server is blacklisted: new clients are refused."]
        );
        let mut e = server(-1, "10.0.0.9", 80);
        e.conns = 1;
        s.emergency = Some(e);
        assert_eq!(
            alerts(&s),
            [
                "Every server is blacklisted: new clients go to the emergency server.",
                "The emergency server is in use: 1 connection."
            ]
        );
        let html = render(&s);
        assert!(
            html.contains("<tr class=\"in-use\" data-server=\"-1\">"),
            "{html}"
        );
        assert!(html.contains("<td class=\"state\">emergency, in use</td>"));
        assert!(html.contains("<tr class=\"blacklisted\" data-server=\"0\">"));
        assert!(html.contains("blacklisted, 5 s left"));
    }

    #[test]
    fn abuse_and_limits_have_their_states() {
        let mut full = server(0, "10.0.0.1", 80);
        full.maxc = 2;
        full.conns = 2;
        let mut s = snapshot(vec![full, server(1, "10.0.0.2", 80)]);
        let mut abuse = server(-2, "10.0.0.66", 80);
        abuse.conns = 3;
        s.abuse = Some(abuse);
        assert_eq!(server_state(&s.servers[0]), ("at its limit".into(), "full"));
        assert_eq!(server_state(&s.servers[1]), ("ok".into(), "ok"));
        assert_eq!(
            alerts(&s),
            ["The abuse server holds 3 connections of clients denied by client_acl."]
        );
        assert!(render(&s).contains("<tr class=\"in-use\" data-server=\"-2\">"));
    }

    #[test]
    fn a_big_client_table_is_cut_to_the_most_recently_seen() {
        let mut s = snapshot(vec![server(0, "10.0.0.1", 80)]);
        s.clients = (0..MAX_ROWS + 50)
            .map(|slot| ClientStats {
                slot,
                address: format!("10.1.{}.{}", slot / 256, slot % 256),
                // The highest slots were seen most recently.
                age: (MAX_ROWS + 50 - slot) as u64,
                last_server: None,
                connects: 1,
                sent: 0,
                received: 0,
            })
            .collect();
        let html = render(&s);
        assert!(html.contains(&format!(
            "Showing the {MAX_ROWS} most recently seen of {} entries",
            MAX_ROWS + 50
        )));
        let clients = html.split("id=\"clients\"").nth(1).unwrap();
        let clients = clients.split("</table>").next().unwrap();
        assert_eq!(clients.matches("<tr><td>").count(), MAX_ROWS);
        assert!(
            clients.contains("<td>10.1.0.249</td><td>1</td>"),
            "newest first"
        );
        assert!(!clients.contains("<td>10.1.0.49</td>"), "oldest left out");
        assert!(clients.contains("<td>-</td>"), "no last server is a dash");
    }

    #[test]
    fn settings_read_as_pen_names_them() {
        let mut s = snapshot(vec![]);
        s.settings.roundrobin = true;
        s.settings.tracking = 60;
        let rows = settings(&s);
        assert_eq!(
            rows[0],
            (
                "mode",
                "no hash roundrobin no stubborn no weight no prio".into()
            )
        );
        assert!(rows.contains(&("tracking", "60 s".into())));
        assert!(rows.contains(&("idle_timeout", "0 (off)".into())));
        assert!(rows.contains(&("web_stats", "none".into())));
    }
}
