//! pen's text statistics (SIGUSR1 without `-w`): one message per item, in pen 0.34.1's words.
//!
//! pen 0.34.1 printed garbage for each client (a misplaced comma shifted its arguments: bug B5
//! of the reference). This prints the fields its format string meant: slot, address, seconds
//! since last seen, last server, connects, bytes sent and received.

use std::fmt::Write;

use crate::balancer::Snapshot;

fn or_dash(n: Option<impl std::fmt::Display>) -> String {
    n.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// The messages, in order. Multi-line items end with a newline, as pen's do.
pub fn items(s: &Snapshot) -> Vec<String> {
    let mut out = Vec::with_capacity(6 + s.servers.len() + s.clients.len() + s.conns.len());
    out.push(format!(
        "Time {}, {} servers, {} current",
        s.local_time,
        s.servers.len(),
        s.current.unwrap_or(0)
    ));
    for v in &s.servers {
        out.push(format!(
            "Server {} status:\naddress {}\n{}\nport {}\n{} connections ({} soft, {} hard)\n{} sent, {} received\n",
            v.index, v.address, v.status, v.port, v.conns, v.maxc, v.hard, v.sent, v.received
        ));
    }
    out.push(format!("Max number of clients: {}", s.settings.clients_max));
    out.push("Active clients:".to_string());
    for c in &s.clients {
        let mut item = String::new();
        let _ = write!(
            item,
            "Client {} status:\naddress {}\nlast used {}\nlast server {}\nconnects {}\nsent {}\nreceived {}\n",
            c.slot,
            c.address,
            c.age,
            or_dash(c.last_server),
            c.connects,
            c.sent,
            c.received
        );
        out.push(item);
    }
    out.push(format!(
        "Max number of connections: {}",
        s.settings.conn_max
    ));
    out.push("Active connections:".to_string());
    for c in &s.conns {
        out.push(format!(
            "Connection {} status:\ndownfd = {}, upfd = {}\npending data {} down, {} up\nclient {}, server {}\n",
            c.slot,
            c.client_fd,
            c.server_fd,
            c.pending_to_client,
            c.pending_to_server,
            or_dash(c.client),
            or_dash(c.server)
        ));
    }
    out
}
