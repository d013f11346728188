//! Snapshots for unit tests, built field by field.

use pen::balancer::{Counters, ServerKind, ServerStats, SettingsStats, Snapshot};

pub fn server(index: i64, address: &str, port: u16) -> ServerStats {
    ServerStats {
        index,
        kind: match index {
            -1 => ServerKind::Emergency,
            -2 => ServerKind::Abuse,
            _ => ServerKind::Regular,
        },
        address: address.to_string(),
        port,
        status: 0,
        blacklisted: false,
        blacklist_remaining: 0,
        conns: 0,
        connects: 0,
        maxc: 0,
        hard: 0,
        sent: 0,
        received: 0,
        weight: 0,
        prio: 0,
    }
}

pub fn snapshot(servers: Vec<ServerStats>) -> Snapshot {
    Snapshot {
        time: 1_795_351_309,
        local_time: "2026-11-22 12:41:49".to_string(),
        current: Some(0),
        servers,
        emergency: None,
        abuse: None,
        clients: Vec::new(),
        conns: Vec::new(),
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
            tcp_fastclose: "off".to_string(),
            tcp_nodelay: true,
            keepalive: false,
            web_stats: None,
            clients_max: 2048,
            conn_max: 500,
        },
        counters: Counters {
            conns_used: 0,
            conn_last: 0,
            clients_known: 0,
            sent: 0,
            received: 0,
        },
    }
}
