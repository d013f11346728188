//! The page and the text statistics against pen 0.34.1's own output.

use super::*;
use crate::balancer::{ClientStats, ConnStats, Counters, ServerKind, ServerStats, SettingsStats};

fn server(
    i: i64,
    port: u16,
    c: u32,
    limits: (u32, u32),
    bytes: (u64, u64),
    wp: (u32, u32),
) -> ServerStats {
    ServerStats {
        index: i,
        kind: ServerKind::Regular,
        address: "127.0.0.1".into(),
        port,
        status: 0,
        blacklisted: false,
        blacklist_remaining: 0,
        conns: c,
        connects: u64::from(c),
        maxc: limits.0,
        hard: limits.1,
        sent: bytes.0,
        received: bytes.1,
        weight: wp.0,
        prio: wp.1,
    }
}

fn client(slot: usize, ip: &str, age: u64, last: i64, bytes: (u64, u64)) -> ClientStats {
    ClientStats {
        slot,
        address: ip.into(),
        age,
        last_server: Some(last),
        connects: 1,
        sent: bytes.0,
        received: bytes.1,
    }
}

fn conn(slot: usize, fds: (i32, i32), client: usize, server: i64) -> ConnStats {
    ConnStats {
        slot,
        client_fd: fds.0,
        server_fd: fds.1,
        pending_to_client: 0,
        pending_to_server: 0,
        client: Some(client),
        server: Some(server),
        connected: true,
        age: 1,
        sent: 0,
        received: 0,
    }
}

/// The state of pen 0.34.1 in transcript 06: three servers, three short requests from .1, .2
/// and .3, then two held connections from .8 and .7.
fn transcript_06() -> Snapshot {
    Snapshot {
        time: 1_795_333_068,
        local_time: "2026-11-22 07:37:48".into(),
        current: Some(2),
        servers: vec![
            server(0, 9001, 0, (0, 0), (19, 73), (0, 0)),
            server(1, 9002, 1, (10, 20), (24, 80), (1, 2)),
            server(2, 9003, 1, (0, 0), (42, 146), (0, 0)),
        ],
        emergency: None,
        abuse: None,
        clients: vec![
            client(0, "127.0.0.1", 2, 1, (73, 19)),
            client(1, "127.0.0.2", 2, 2, (73, 19)),
            client(2, "127.0.0.3", 1, 0, (73, 19)),
            client(3, "127.0.0.8", 1, 1, (7, 5)),
            client(4, "127.0.0.7", 1, 2, (73, 23)),
        ],
        conns: vec![conn(0, (9, 11), 3, 1), conn(1, (12, 13), 4, 2)],
        settings: SettingsStats {
            blacklist_time: 30,
            tracking: 0,
            connect_timeout: 3,
            idle_timeout: 0,
            roundrobin: false,
            stubborn: false,
            hash: false,
            weight: false,
            prio: false,
            tcp_fastclose: "off".into(),
            tcp_nodelay: true,
            keepalive: false,
            web_stats: Some("/tmp/penlab/webstats.html".into()),
            clients_max: 2048,
            conn_max: 500,
        },
        counters: Counters {
            conns_used: 2,
            conn_last: 1,
            clients_known: 5,
            sent: 85,
            received: 299,
        },
    }
}

#[test]
fn the_page_is_pen_0_34_1_s_byte_for_byte() {
    let want = include_str!("testdata/pen-0.34.1-status.html");
    let got = render_html(&transcript_06()).unwrap();
    if got != want {
        let line = got
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "differs from pen's page at line {}:\n got: {:?}\nwant: {:?}",
            line + 1,
            got.lines().nth(line),
            want.lines().nth(line)
        );
    }
}

#[test]
fn missing_numbers_show_as_a_dash_and_text_is_escaped() {
    let mut s = transcript_06();
    s.clients[0].last_server = None;
    s.clients[1].address = "<script>".into();
    s.conns[0].client = None;
    s.current = None;
    let page = render_html(&s).unwrap();
    assert!(page.contains("Time 2026-11-22 07:37:48, 3 servers, 0 current<p>"));
    assert!(
        page.contains("<td>127.0.0.1</td>\n<td>2</td>\n<td>-</td>\n"),
        "{page}"
    );
    assert!(page.contains("<td>&#60;script&#62;</td>") || page.contains("<td>&lt;script&gt;</td>"));
    assert!(!page.contains("<script>"));
    assert!(
        page.contains("<td>0</td>\n<td>0</td>\n<td>-</td>\n<td>1</td>\n</tr>"),
        "{page}"
    );
}

#[test]
fn text_statistics_are_pen_s_with_the_client_section_as_intended() {
    let items = render_text(&transcript_06());
    assert_eq!(items[0], "Time 2026-11-22 07:37:48, 3 servers, 2 current");
    assert_eq!(
        items[2],
        "Server 1 status:\naddress 127.0.0.1\n0\nport 9002\n1 connections (10 soft, 20 hard)\n24 sent, 80 received\n"
    );
    assert_eq!(items[4], "Max number of clients: 2048");
    assert_eq!(items[5], "Active clients:");
    assert_eq!(
        items[9],
        "Client 3 status:\naddress 127.0.0.8\nlast used 1\nlast server 1\nconnects 1\nsent 7\nreceived 5\n"
    );
    assert_eq!(items[11], "Max number of connections: 500");
    assert_eq!(items[12], "Active connections:");
    assert_eq!(
        items[14],
        "Connection 1 status:\ndownfd = 12, upfd = 13\npending data 0 down, 0 up\nclient 4, server 2\n"
    );
    assert_eq!(items.len(), 15);
}

#[test]
fn a_snapshot_round_trips_through_json() {
    let s = transcript_06();
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"kind\":\"regular\""), "{json}");
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn the_page_is_written_atomically_and_the_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("pen-stats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("status.html");
    let page = write_html(&path, &transcript_06()).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), page);
    let missing = dir.join("no/such/dir/status.html");
    let e = anyhow::Error::new(write_html(&missing, &transcript_06()).unwrap_err());
    let e = format!("{e:#}");
    assert!(e.contains("no/such/dir/status.html"), "{e}");
    assert_eq!(e.matches("No such file").count(), 1, "the reason once: {e}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        StatsError::NoWebStats.to_string(),
        "don't know where to write web stats; see -w option"
    );
}
