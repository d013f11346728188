//! The byte counters against the bytes actually delivered: per server, per client, per open
//! connection and in total, after large transfers both ways with and without TCP_NODELAY, after
//! a server reset mid-download, and with `-H` header insertion (reliability catalogue O3, D1).
//!
//! What pen counts (pen/src/relay.rs, balancer/snapshot.rs): a server's `sent` is the bytes pen
//! read from its clients, after `-H` rewriting, and its `received` the bytes pen read from it;
//! a client's `received` and `sent` are the same two numbers for its own connections, seen from
//! the client's side. A byte is counted when pen reads it, before it is written on, and the
//! snapshot includes live connections ("live connections included", pen(1)).

mod support;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::Duration;

use pen::balancer::Snapshot;

use support::control::Controlled;
use support::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Bytes moved each way, as the counters should show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Moved {
    /// Client to server: the server's `sent`, the client's `received`.
    up: u64,
    /// Server to client: the server's `received`, the client's `sent`.
    down: u64,
}

impl Moved {
    fn new(up: usize, down: usize) -> Moved {
        Moved {
            up: up as u64,
            down: down as u64,
        }
    }

    fn plus(self, other: Moved) -> Moved {
        Moved {
            up: self.up + other.up,
            down: self.down + other.down,
        }
    }
}

/// Check every counter of `snap` that covers pen's only server and the client 127.0.0.`client`
/// against `want`, and the number of connections each has had.
#[track_caller]
fn assert_counted(snap: &Snapshot, client: u8, want: Moved, connects: u64) {
    let server = &snap.servers[0];
    // A server's `sent` went to it (client -> server); its `received` came from it.
    let server_moved = Moved {
        up: server.sent,
        down: server.received,
    };
    assert_eq!(
        server_moved, want,
        "server 0's sent (up) and received (down)"
    );
    assert_eq!(server.connects, connects, "server 0's connects");
    let address = loopback(client).to_string();
    let entry = snap
        .clients
        .iter()
        .find(|c| c.address == address)
        .unwrap_or_else(|| panic!("no client table entry for {address}: {:?}", snap.clients));
    // A client's `received` came from it (client -> server); its `sent` went to it.
    let client_moved = Moved {
        up: entry.received,
        down: entry.sent,
    };
    assert_eq!(
        client_moved, want,
        "client {address}'s received (up) and sent (down)"
    );
    assert_eq!(entry.connects, connects, "client {address}'s connects");
    let totals = Moved {
        up: snap.counters.sent,
        down: snap.counters.received,
    };
    assert_eq!(totals, want, "the totals: sent (up) and received (down)");
}

/// The snapshot once pen has closed every connection (their bytes are then folded into the
/// servers' and clients' own counters).
fn settled(c: &Controlled) -> Snapshot {
    wait_until(
        "pen to close every connection",
        Duration::from_secs(5),
        || {
            let snap = c.snapshot();
            (snap.counters.conns_used == 0).then_some(snap)
        },
    )
}

/// A backend for `exchange`. Each connection takes the next job `(up, down)`: it reads exactly
/// `up` bytes (reported on the channel as soon as they are in) while it writes `down` in chunks
/// of every size, then waits for the client's EOF and half-closes. Not an echo: the directions
/// differ in size and content, so bytes that crossed over or were counted on the wrong side
/// would show.
fn exchanger(jobs: Vec<(usize, Vec<u8>)>) -> (Backend, mpsc::Receiver<Vec<u8>>) {
    let jobs = Mutex::new(VecDeque::from(jobs));
    let (tx, rx) = channel();
    let backend = Backend::tcp(move |mut s| {
        let Some((up, down)) = jobs.lock().unwrap().pop_front() else {
            return;
        };
        let Ok(mut writer) = s.try_clone() else {
            return;
        };
        let seed = down.len() as u64;
        let w = thread::spawn(move || write_in_chunks(&mut writer, &down, seed));
        let mut got = Vec::with_capacity(up);
        let _ = Read::by_ref(&mut s).take(up as u64).read_to_end(&mut got);
        let _ = tx.lock().unwrap().send(got);
        // Anything past `up` would be counted too, and show in the test's counts.
        let _ = drain(&mut s);
        let _ = w.join();
        let _ = s.shutdown(Shutdown::Write);
    });
    (backend, rx)
}

/// Connect to pen from 127.0.0.`from`, send `up` in chunks of every size while reading exactly
/// `down_len` bytes, and return what was read with the connection, still open both ways.
fn exchange(pen: &Pen, from: u8, up: &[u8], down_len: usize) -> (Vec<u8>, TcpStream) {
    let mut s = pen.connect_from(from);
    let mut writer = s.try_clone().expect("clone");
    let up = up.to_vec();
    let seed = up.len() as u64 + 1;
    let w = thread::spawn(move || write_in_chunks(&mut writer, &up, seed));
    let mut got = Vec::with_capacity(down_len);
    let _ = Read::by_ref(&mut s)
        .take(down_len as u64)
        .read_to_end(&mut got);
    w.join().expect("writer thread").expect("upload");
    (got, s)
}

/// Half-close `s` and read to the end: the server half-closes once it has the EOF, and sends
/// nothing more.
fn finish(mut s: TcpStream) {
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("the server's EOF");
    assert!(rest.is_empty(), "{} bytes after the download", rest.len());
}

/// One whole `exchange` (`up` from 127.0.0.`from`, `down` from the server), checked byte for
/// byte at both ends, then closed.
fn transfer(pen: &Pen, uploads: &mpsc::Receiver<Vec<u8>>, from: u8, up: &[u8], down: &[u8]) {
    let (got_down, s) = exchange(pen, from, up, down.len());
    assert_same_bytes("server -> client", &got_down, down);
    let got_up = uploads
        .recv_timeout(IO_TIMEOUT)
        .expect("the backend's bytes");
    assert_same_bytes("client -> server", &got_up, up);
    finish(s);
}

/// Catalogue O3 after D1: 3 MiB up and 5 MiB down at once through one connection, byte-exact at
/// both ends. While the connection is still open (every byte delivered, neither side closed),
/// the server's, the client's, the connection's and the total counters already equal the bytes
/// moved each way (pen's statistics include live connections); once it has closed they are the
/// same (folding a connection into the totals neither loses nor doubles a byte); and a second
/// connection from the same client address adds exactly its own bytes to all of them.
#[test]
fn the_counters_equal_the_bytes_moved_each_way_live_after_the_close_and_cumulatively() {
    const CLIENT: u8 = 31;
    let (up, down) = (pattern(1, 3 * MIB), pattern(2, 5 * MIB));
    let (up2, down2) = (pattern(3, MIB + 7), pattern(4, 2 * MIB + 13));
    let (backend, uploads) = exchanger(vec![(up.len(), down.clone()), (up2.len(), down2.clone())]);
    let c = Controlled::start(&[], &[backend.spec()]);
    assert!(c.snapshot().settings.tcp_nodelay, "TCP_NODELAY by default");

    let (got_down, s) = exchange(&c.pen, CLIENT, &up, down.len());
    assert_same_bytes("server -> client", &got_down, &down);
    let got_up = uploads
        .recv_timeout(IO_TIMEOUT)
        .expect("the backend's bytes");
    assert_same_bytes("client -> server", &got_up, &up);
    let first = Moved::new(up.len(), down.len());
    // Live: everything has been read by pen (a byte is counted as it is read), nothing closed.
    let live = c.snapshot();
    assert_eq!(live.counters.conns_used, 1, "the connection is still open");
    assert_counted(&live, CLIENT, first, 1);
    let conn = &live.conns[0];
    // A connection's `received` came from the client, its `sent` went to the client.
    assert_eq!(
        Moved {
            up: conn.received,
            down: conn.sent
        },
        first,
        "the open connection's received (up) and sent (down)"
    );

    finish(s);
    assert_counted(&settled(&c), CLIENT, first, 1);

    transfer(&c.pen, &uploads, CLIENT, &up2, &down2);
    let both = first.plus(Moved::new(up2.len(), down2.len()));
    assert_counted(&settled(&c), CLIENT, both, 2);
    c.pen.finish();
}

/// Catalogue D1 with `-o "no tcp_nodelay"` (Nagle's algorithm left on, pen 0.34.1's default):
/// the same 3 MiB up and 5 MiB down at once, written in chunks of 1 byte to 64 KiB, arrive
/// byte-exact at both ends, and the counters (O3) equal the bytes moved each way, as with
/// TCP_NODELAY (the test above); so does a second, smaller transfer, added to the first.
#[test]
fn without_tcp_nodelay_a_transfer_is_byte_exact_and_counted_the_same() {
    const CLIENT: u8 = 32;
    let (up, down) = (pattern(5, 3 * MIB), pattern(6, 5 * MIB));
    let (up2, down2) = (pattern(7, 100 * KIB + 1), pattern(8, 3));
    let (backend, uploads) = exchanger(vec![(up.len(), down.clone()), (up2.len(), down2.clone())]);
    let c = Controlled::start(&["-o", "no tcp_nodelay"], &[backend.spec()]);
    assert!(
        !c.snapshot().settings.tcp_nodelay,
        "-o \"no tcp_nodelay\" was not applied"
    );
    transfer(&c.pen, &uploads, CLIENT, &up, &down);
    let first = Moved::new(up.len(), down.len());
    assert_counted(&settled(&c), CLIENT, first, 1);
    transfer(&c.pen, &uploads, CLIENT, &up2, &down2);
    let both = first.plus(Moved::new(up2.len(), down2.len()));
    assert_counted(&settled(&c), CLIENT, both, 2);
    c.pen.finish();
}

/// Catalogue O3 after F5: the server takes a 200 KiB upload, sends 1 MiB of a download, and
/// resets. The client has the whole 1 MiB before the reset (the server waits for its word) and
/// then sees the reset (pen(1): a cut transfer "never looks complete to the other end"). The
/// counters show exactly the bytes delivered each way: the reset neither adds nor loses any.
#[test]
fn after_a_server_reset_the_counters_equal_the_bytes_delivered() {
    const CLIENT: u8 = 33;
    const UP: usize = 200 * KIB + 3;
    let down = pattern(9, MIB + 5);
    let (tx, rx) = channel::<Vec<u8>>();
    let (go, went) = mpsc::channel::<()>();
    let went = Mutex::new(went);
    let down_for_backend = down.clone();
    let backend = Backend::tcp(move |mut s| {
        let mut got = Vec::with_capacity(UP);
        let _ = Read::by_ref(&mut s).take(UP as u64).read_to_end(&mut got);
        let _ = tx.lock().unwrap().send(got);
        if write_in_chunks(&mut s, &down_for_backend, 10).is_err() {
            return;
        }
        // A test that failed first drops `go`, which ends the wait.
        let _ = went.lock().unwrap().recv_timeout(IO_TIMEOUT);
        s.reset();
    });
    let c = Controlled::start(&[], &[backend.spec()]);
    let mut s = c.pen.connect_from(CLIENT);
    let up = pattern(11, UP);
    s.write_all(&up).expect("upload");
    let got_up = rx.recv_timeout(IO_TIMEOUT).expect("the backend's bytes");
    assert_same_bytes("client -> server", &got_up, &up);
    let mut got_down = vec![0u8; down.len()];
    s.read_exact(&mut got_down).expect("the download");
    assert_same_bytes("server -> client before the reset", &got_down, &down);
    go.send(()).expect("the backend waits");
    assert_eq!(
        drain(&mut s),
        Err(ErrorKind::ConnectionReset),
        "after the bytes, the server's reset"
    );
    drop(s);
    assert_counted(&settled(&c), CLIENT, Moved::new(UP, down.len()), 1);
    c.pen.finish();
}

/// Catalogue O3 after F5, the race: the server writes 4 MiB as fast as the path takes them and
/// resets at once, while the client has not started reading (it waits 300 ms), so the reset can
/// overtake bytes still on their way. What pen counts as received from the server (the
/// server's `received`, the client's `sent`) is the bytes it read from the server's socket,
/// counted as they are read (relay.rs): never fewer than the client got (the client's bytes are
/// the stream's first bytes, in order) and never more than the server wrote. It can be more
/// than the client got: bytes pen had read but not yet delivered when it passed the reset on
/// are counted, though the client never sees them (pen 0.34.1 counted a client's `csx` as the
/// bytes written to it instead, which a reset can cut short in the same way).
#[test]
fn after_a_racing_reset_pen_counts_what_it_read_from_the_server() {
    const CLIENT: u8 = 34;
    let down = pattern(12, 4 * MIB);
    let (tx, rx) = channel::<Result<(), ErrorKind>>();
    let down_for_backend = down.clone();
    let backend = Backend::tcp(move |mut s| {
        let mut go = [0u8; 1];
        if s.read_exact(&mut go).is_err() {
            return;
        }
        let wrote = s.write_all(&down_for_backend).map_err(|e| e.kind());
        s.reset();
        let _ = tx.lock().unwrap().send(wrote);
    });
    let c = Controlled::start(&[], &[backend.spec()]);
    let mut s = c.pen.connect_from(CLIENT);
    s.write_all(b"g").expect("the go byte");
    thread::sleep(Duration::from_millis(300));
    let mut got = Vec::new();
    let end = Read::by_ref(&mut s)
        .take(down.len() as u64 + 1)
        .read_to_end(&mut got)
        .map_err(|e| e.kind());
    // The server writes all 4 MiB once the client reads, at the latest.
    assert_eq!(
        rx.recv_timeout(IO_TIMEOUT).expect("the backend's write"),
        Ok(()),
        "the server's 4 MiB"
    );
    assert!(got.len() <= down.len(), "{} bytes for 4 MiB", got.len());
    assert_same_bytes("what the client got", &got, &down[..got.len()]);
    assert!(
        matches!(end, Err(ErrorKind::ConnectionReset)) || got.len() == down.len(),
        "the client saw {end:?} after {} of {} bytes: a cut transfer must end in a reset",
        got.len(),
        down.len()
    );
    drop(s);

    let snap = settled(&c);
    let read_from_server = snap.servers[0].received;
    eprintln!(
        "racing reset: the server wrote {}, pen counted {read_from_server}, the client got {}",
        down.len(),
        got.len()
    );
    assert!(
        (got.len() as u64..=down.len() as u64).contains(&read_from_server),
        "pen counted {read_from_server} bytes from the server, which wrote {} and whose \
         client got {}",
        down.len(),
        got.len()
    );
    // Everything else is exact: the go byte up, and the client's count is the server's.
    assert_counted(&snap, CLIENT, Moved::new(1, read_from_server as usize), 1);
    c.pen.finish();
}

/// Catalogue O3 with `-H` (and B11's rewriting): two keep-alive requests, the first with a
/// 100 KiB body, written in chunks of every size. The server receives them with pen's two lines
/// inserted into each head, and its `sent` counter equals what it received, inserted lines
/// included (pen(1), HTTP HEADER INSERTION: "The server's byte counts include the inserted
/// lines"). The client's `received` is that same number, not what the client sent: pen counts
/// one stream per direction, the client's bytes as rewritten, for the server and the client
/// alike, as pen 0.34.1 did (crx, pen-reference §3.9; pen(1) says nothing of the client's
/// side). The reply, which `-H` never touches, is counted as it came, on both sides.
#[test]
fn with_header_insertion_the_counters_include_the_inserted_lines() {
    const CLIENT: u8 = 35;
    let (tx, rx) = channel::<Vec<u8>>();
    let reply = pattern(13, 300 * KIB);
    let reply_for_backend = reply.clone();
    let backend = Backend::tcp(move |mut s| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = tx.lock().unwrap().send(got);
        let _ = s.write_all(&reply_for_backend);
    });
    let c = Controlled::start(&["-H"], &[backend.spec()]);

    let body = pattern(14, 100 * KIB);
    let heads = [
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
        "GET /next HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
    ];
    let inserted = format!(
        "X-Forwarded-Proto: http\r\nX-Forwarded-For: {}\r\n",
        loopback(CLIENT)
    );
    let mut request = Vec::new();
    let mut want = Vec::new();
    for (head, body) in heads.iter().zip([&body[..], b""]) {
        let cut = head.len() - 2; // before the blank line's CRLF
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(body);
        want.extend_from_slice(&head.as_bytes()[..cut]);
        want.extend_from_slice(inserted.as_bytes());
        want.extend_from_slice(&head.as_bytes()[cut..]);
        want.extend_from_slice(body);
    }

    let mut s = c.pen.connect_from(CLIENT);
    write_in_chunks(&mut s, &request, 15).expect("the requests");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut got_reply = Vec::new();
    s.read_to_end(&mut got_reply).expect("the reply");
    let got = rx.recv_timeout(IO_TIMEOUT).expect("the backend's bytes");
    assert_same_bytes("what the server received", &got, &want);
    assert_same_bytes("the reply", &got_reply, &reply);
    assert_eq!(got.len(), request.len() + 2 * inserted.len());
    drop(s);

    // Up: what the server received, after rewriting (not the client's request.len()).
    assert_counted(&settled(&c), CLIENT, Moved::new(got.len(), reply.len()), 1);
    c.pen.finish();
}
