//! `/metrics`: the snapshot in the Prometheus text exposition format (version 0.0.4).
//!
//! Names follow Prometheus conventions: a `pen_` prefix, base units in the name (`_bytes`,
//! `_seconds`), `_total` on counters. Each server is labelled with pen's server number, its kind
//! (`regular`, `emergency`, `abuse`), address and port. When the last poll failed only `pen_up 0`
//! and penstats-web's own poll counters are exposed: a scraper sees that pen is down instead of
//! numbers that are no longer true.

use std::fmt::Write;

use pen::balancer::{ServerKind, ServerStats, Snapshot};

use crate::history::every_server;

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Poll outcomes since penstats-web started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollCounts {
    pub ok: u64,
    pub failed: u64,
}

/// The exposition: `snapshot` is the current one, None when the last poll failed.
pub fn render(snapshot: Option<&Snapshot>, polls: PollCounts) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let plain = |v: String| vec![(String::new(), v)];

    family(
        "pen_up",
        "gauge",
        "Whether the last poll of pen's control port got a snapshot.",
        &plain(u8::from(snapshot.is_some()).to_string()),
    );
    family(
        "penstats_web_polls_total",
        "counter",
        "Polls of pen's control port since penstats-web started, by result.",
        &[
            ("{result=\"ok\"}".to_string(), polls.ok.to_string()),
            ("{result=\"error\"}".to_string(), polls.failed.to_string()),
        ],
    );
    let Some(s) = snapshot else {
        return out;
    };

    family(
        "pen_snapshot_timestamp_seconds",
        "gauge",
        "When pen took the snapshot, in Unix seconds.",
        &plain(s.time.to_string()),
    );
    let servers: Vec<&ServerStats> = every_server(s).collect();
    let per_server = |value: ServerValue| -> Vec<(String, String)> {
        servers
            .iter()
            .map(|srv| (server_labels(srv), value(srv)))
            .collect()
    };
    let server_families: [(&str, &str, &str, ServerValue); 11] = [
        (
            "pen_server_connections",
            "gauge",
            "Open connections on the server (connecting or established).",
            |v| v.conns.to_string(),
        ),
        (
            "pen_server_connections_total",
            "counter",
            "Connections sent to the server since pen started.",
            |v| v.connects.to_string(),
        ),
        (
            "pen_server_sent_bytes_total",
            "counter",
            "Bytes sent to the server, open connections included.",
            |v| v.sent.to_string(),
        ),
        (
            "pen_server_received_bytes_total",
            "counter",
            "Bytes received from the server, open connections included.",
            |v| v.received.to_string(),
        ),
        (
            "pen_server_blacklisted",
            "gauge",
            "Whether new clients skip the server now (1) because a connect to it failed.",
            |v| u8::from(v.blacklisted).to_string(),
        ),
        (
            "pen_server_blacklist_remaining_seconds",
            "gauge",
            "Seconds until the server's blacklisting ends; 0 when it is not blacklisted.",
            |v| v.blacklist_remaining.to_string(),
        ),
        (
            "pen_server_last_failure_timestamp_seconds",
            "gauge",
            "When a connect to the server last failed, in Unix seconds; 0 if never.",
            |v| v.status.to_string(),
        ),
        (
            "pen_server_max_connections",
            "gauge",
            "The server's soft connection limit (maxc); 0 means none.",
            |v| v.maxc.to_string(),
        ),
        (
            "pen_server_hard_max_connections",
            "gauge",
            "The server's hard connection limit; 0 means none.",
            |v| v.hard.to_string(),
        ),
        ("pen_server_weight", "gauge", "The server's weight.", |v| {
            v.weight.to_string()
        }),
        (
            "pen_server_priority",
            "gauge",
            "The server's priority.",
            |v| v.prio.to_string(),
        ),
    ];
    for (name, kind, help, value) in server_families {
        family(name, kind, help, &per_server(value));
    }

    let c = &s.counters;
    let totals: [(&str, &str, &str, String); 6] = [
        (
            "pen_connections",
            "gauge",
            "Open connections.",
            c.conns_used.to_string(),
        ),
        (
            "pen_connections_max",
            "gauge",
            "Size of the connection table (-x).",
            s.settings.conn_max.to_string(),
        ),
        (
            "pen_clients",
            "gauge",
            "Entries in the client table.",
            c.clients_known.to_string(),
        ),
        (
            "pen_clients_max",
            "gauge",
            "Size of the client table (-c).",
            s.settings.clients_max.to_string(),
        ),
        (
            "pen_sent_bytes_total",
            "counter",
            "Bytes sent to every server, the emergency and abuse servers included.",
            c.sent.to_string(),
        ),
        (
            "pen_received_bytes_total",
            "counter",
            "Bytes received from every server.",
            c.received.to_string(),
        ),
    ];
    for (name, kind, help, value) in totals {
        family(name, kind, help, &plain(value));
    }
    if let Some(current) = s.current {
        family(
            "pen_current_server",
            "gauge",
            "pen's number of the server chosen most recently (-1 emergency, -2 abuse).",
            &plain(current.to_string()),
        );
    }
    out
}

/// One number of a server, as the exposition writes it.
type ServerValue = fn(&ServerStats) -> String;

fn server_labels(s: &ServerStats) -> String {
    let kind = match s.kind {
        ServerKind::Regular => "regular",
        ServerKind::Emergency => "emergency",
        ServerKind::Abuse => "abuse",
    };
    format!(
        "{{server=\"{}\",kind=\"{kind}\",address=\"{}\",port=\"{}\"}}",
        s.index,
        escape_label(&s.address),
        s.port
    )
}

/// A label value as the text format requires: `\`, `"` and newline escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{server, snapshot};

    fn sample() -> Snapshot {
        let mut a = server(0, "10.0.0.1", 80);
        a.conns = 3;
        a.sent = 100;
        a.received = 2000;
        let mut b = server(1, "/run/app \"x\"\\\n.sock", 1);
        b.blacklisted = true;
        b.blacklist_remaining = 12;
        b.status = 1_795_351_300;
        let mut s = snapshot(vec![a, b]);
        s.emergency = Some(server(-1, "10.0.0.9", 80));
        s.counters.conns_used = 3;
        s.counters.clients_known = 2;
        s.counters.sent = 100;
        s.counters.received = 2000;
        s
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
    }

    #[test]
    fn servers_and_totals_with_conventional_names() {
        let text = render(Some(&sample()), PollCounts { ok: 7, failed: 1 });
        assert_eq!(line(&text, "pen_up "), "pen_up 1");
        assert_eq!(
            line(&text, "pen_server_connections{server=\"0\""),
            "pen_server_connections{server=\"0\",kind=\"regular\",address=\"10.0.0.1\",port=\"80\"} 3"
        );
        assert!(line(&text, "pen_server_sent_bytes_total{server=\"0\"").ends_with(" 100"));
        assert!(line(&text, "pen_server_received_bytes_total{server=\"0\"").ends_with(" 2000"));
        assert_eq!(
            line(&text, "pen_server_blacklisted{server=\"1\""),
            "pen_server_blacklisted{server=\"1\",kind=\"regular\",address=\"/run/app \\\"x\\\"\\\\\\n.sock\",port=\"1\"} 1"
        );
        assert!(line(
            &text,
            "pen_server_connections{server=\"-1\",kind=\"emergency\""
        )
        .ends_with(" 0"));
        assert_eq!(line(&text, "pen_clients "), "pen_clients 2");
        assert_eq!(
            line(&text, "pen_connections_max "),
            "pen_connections_max 500"
        );
        assert_eq!(
            line(&text, "pen_sent_bytes_total "),
            "pen_sent_bytes_total 100"
        );
        assert_eq!(line(&text, "pen_current_server "), "pen_current_server 0");
        assert_eq!(
            line(&text, "penstats_web_polls_total{result=\"error\"}"),
            "penstats_web_polls_total{result=\"error\"} 1"
        );
        assert_eq!(
            line(&text, "# TYPE pen_server_sent_bytes_total"),
            "# TYPE pen_server_sent_bytes_total counter"
        );
    }

    #[test]
    fn every_family_has_help_and_type_once_and_every_line_is_well_formed() {
        let text = render(Some(&sample()), PollCounts::default());
        let mut types = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(types.insert(name.to_string()), "{name} twice");
                assert!(["gauge", "counter"].contains(&kind), "{l}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
            } else if !l.starts_with("# HELP ") {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(types.contains(name), "{l}: no TYPE before it");
                let value = l.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{l}");
            }
        }
        assert!(types.len() >= 18, "{types:?}");
    }

    #[test]
    fn when_pen_is_down_nothing_stale_is_exposed() {
        let text = render(None, PollCounts { ok: 3, failed: 2 });
        assert_eq!(line(&text, "pen_up "), "pen_up 0");
        assert!(!text.contains("pen_server_"), "{text}");
        assert!(!text.contains("pen_clients"), "{text}");
    }
}
