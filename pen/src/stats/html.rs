//! pen's HTML status page (`-w FILE` on SIGUSR1, and `status`): the structure of pen 0.34.1's
//! page exactly, byte for byte, from the askama template `pen/templates/status.html`. (Like
//! Jinja, askama drops one newline at the end of a template file; the template ends with two
//! because the page ends with one.)
//!
//! The hidden emergency and abuse servers are not listed, as in pen. Where pen printed a number
//! that this pen does not have (the last server of a client that never got one, the client
//! of a connection whose table entry was since evicted) the cell shows `-`.

use askama::Template;

use crate::balancer::{ServerStats, Snapshot};

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage<'a> {
    time: &'a str,
    current: i64,
    servers: &'a [ServerStats],
    clients_max: usize,
    clients: Vec<ClientRow<'a>>,
    conn_max: usize,
    conns_used: usize,
    conn_last: usize,
    conns: Vec<ConnRow>,
}

struct ClientRow<'a> {
    slot: usize,
    address: &'a str,
    age: u64,
    last_server: Cell,
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
    client: Cell,
    server: Cell,
}

/// A number, or `-` where there is none.
struct Cell(Option<i64>);

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("-"),
        }
    }
}

/// The page for `snapshot`.
pub fn render(snapshot: &Snapshot) -> Result<String, askama::Error> {
    let page = StatusPage {
        time: &snapshot.local_time,
        // Before the first choice pen's `current` is still its initial 0.
        current: snapshot.current.unwrap_or(0),
        servers: &snapshot.servers,
        clients_max: snapshot.settings.clients_max,
        clients: snapshot
            .clients
            .iter()
            .map(|c| ClientRow {
                slot: c.slot,
                address: &c.address,
                age: c.age,
                last_server: Cell(c.last_server),
                connects: c.connects,
                sent: c.sent,
                received: c.received,
            })
            .collect(),
        conn_max: snapshot.settings.conn_max,
        conns_used: snapshot.counters.conns_used,
        conn_last: snapshot.counters.conn_last,
        conns: snapshot
            .conns
            .iter()
            .map(|c| ConnRow {
                slot: c.slot,
                client_fd: c.client_fd,
                server_fd: c.server_fd,
                pending_to_client: c.pending_to_client,
                pending_to_server: c.pending_to_server,
                client: Cell(c.client.and_then(|s| i64::try_from(s).ok())),
                server: Cell(c.server),
            })
            .collect(),
    };
    page.render()
}
