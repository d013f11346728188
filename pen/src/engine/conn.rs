//! One plain TCP (or Unix) connection on the epoll engine: its state (from the handshake to the
//! relay), the relay both ways, and `dummy`'s one answer. Nothing here waits: each call does
//! what the sockets allow now and says what it is waiting for; the engine calls again when
//! epoll reports readiness.

use std::cell::Cell;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::addr::Backend;
use crate::balancer::{ConnCounters, ConnId, ConnOptions, FastClose, Peer, Target};
use crate::http::{Proto, Rewriter};
use crate::relay::{Endpoint, Pumps, RelayEnd, Verbatim};
use crate::reqlog::RequestLog;

use super::client::Client;
use super::opening::Opener;
use super::sock::Sock;

/// What a connection is doing.
pub(super) enum State {
    /// TLS: the client's handshake, before it is admitted (so one that fails it never
    /// touches the balancer or a server).
    Handshake {
        deadline: Instant,
        timeout: Duration,
    },
    /// `dummy`: waiting for the client's first chunk, to answer it with the fixed page.
    Dummy { deadline: Instant },
    /// Between servers: admitted and not yet connecting, or a connect just failed. Only ever
    /// seen inside the one call that moves the connection on (to `Connecting` or closed), so
    /// no event or timer finds a connection here.
    Choosing,
    /// Connecting to a server the balancer chose.
    Connecting(Connecting),
    /// Relaying between the client and its server.
    Relaying(Relay),
}

pub(super) struct Connecting {
    pub conn: ConnId,
    pub target: Target,
    pub backend: Backend,
    pub server: Sock,
    pub deadline: Instant,
}

/// One client connection on the engine.
pub(super) struct Conn {
    pub client: Client,
    pub peer: Peer,
    pub options: ConnOptions,
    pub state: State,
    /// The balancer's connection, released when the engine closes this one.
    pub id: Option<ConnId>,
    pub _permit: tokio::sync::OwnedSemaphorePermit,
    /// On the engine's list of connections to run again (see `Engine::run_again`).
    pub queued: bool,
    /// The `coalesce` epoch of this connection's last event (`Coalesce::event`).
    pub mark: u32,
}

/// The relay state of one connection: the server socket, both directions (`relay::Pumps`), the
/// counters, the `-H` rewriter and the idle timeout.
pub(super) struct Relay {
    pub conn: ConnId,
    pub server: Sock,
    pumps: Pumps,
    pub counters: Arc<ConnCounters>,
    rewriter: Option<Rewriter>,
    pub idle: Duration,
    pub last_activity: Instant,
    fastclose: FastClose,
    client_ip: Option<IpAddr>,
    server_ip: Option<IpAddr>,
    /// Bytes have moved, and `opener` has said who sent them first.
    opened: bool,
}

/// What a relay step came to.
pub(super) enum Step {
    /// Waiting for readiness.
    Wait,
    /// A direction used its reads for this turn and has more: come back before sleeping.
    Again,
    /// The relay is over.
    End(RelayEnd),
}

thread_local! {
    /// Set when a relay step wants to run again (`Pumps` wakes its context then).
    static AGAIN: Cell<bool> = const { Cell::new(false) };
    static AGAIN_WAKER: Waker = Waker::from(Arc::new(SetAgain));
}

struct SetAgain;

impl Wake for SetAgain {
    fn wake(self: Arc<Self>) {
        AGAIN.set(true);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        AGAIN.set(true);
    }
}

/// Run `f` with a context whose waker marks the step to run again before the engine sleeps;
/// says whether it was woken.
pub(super) fn with_context<R>(f: impl FnOnce(&mut Context<'_>) -> R) -> (R, bool) {
    AGAIN.set(false);
    let r = AGAIN_WAKER.with(|waker| f(&mut Context::from_waker(waker)));
    (r, AGAIN.get())
}

impl Relay {
    /// `tls`: the client came over TLS (`-H` then says `X-Forwarded-Proto: https`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conn: ConnId,
        server: Sock,
        counters: Arc<ConnCounters>,
        settings: &ConnOptions,
        backend: &Backend,
        peer: Peer,
        tls: bool,
        now: Instant,
    ) -> Relay {
        let proto = if tls { Proto::Https } else { Proto::Http };
        Relay {
            conn,
            server,
            pumps: Pumps::default(),
            counters,
            rewriter: settings
                .http
                .then(|| Rewriter::new(peer.ip, proto, settings.xff)),
            idle: settings.idle_timeout,
            last_activity: now,
            fastclose: settings.fastclose,
            client_ip: peer.ip,
            server_ip: match backend {
                Backend::Tcp(sa) => Some(sa.ip()),
                Backend::Unix(_) => None,
            },
            opened: false,
        }
    }

    /// Who sent the connection's first bytes, once: from the first step that moved any. A step
    /// that moved both ways at once says nothing.
    pub fn opener(&mut self) -> Option<Opener> {
        if self.opened {
            return None;
        }
        let to_server = self.counters.to_server.load(Ordering::Relaxed) > 0;
        let to_client = self.counters.to_client.load(Ordering::Relaxed) > 0;
        self.opened = to_server || to_client;
        match (to_server, to_client) {
            (true, false) => Some(Opener::Client),
            (false, true) => Some(Opener::Server),
            _ => None,
        }
    }

    /// Move what the sockets allow, both ways, with at most `reads` reads per direction.
    pub fn step<C: Endpoint>(
        &mut self,
        reads: usize,
        client: &mut C,
        reqlog: &RequestLog,
        now: Instant,
    ) -> Step {
        let mut progress = false;
        let tap = reqlog.tap(self.client_ip, self.server_ip);
        let from_client = |data: &[u8]| tap.chunk(data);
        let (step, again) = with_context(|cx| {
            let (pumps, server, counters) = (&mut self.pumps, &mut self.server, &*self.counters);
            match self.rewriter.as_mut() {
                Some(rewriter) => pumps.poll_step(
                    reads,
                    cx,
                    client,
                    server,
                    counters,
                    self.fastclose,
                    from_client,
                    rewriter,
                    &mut progress,
                ),
                None => pumps.poll_step(
                    reads,
                    cx,
                    client,
                    server,
                    counters,
                    self.fastclose,
                    from_client,
                    &mut Verbatim,
                    &mut progress,
                ),
            }
        });
        if progress {
            self.last_activity = now;
        }
        match step {
            Poll::Ready(end) => Step::End(end),
            // Only a step that moved bytes may ask to run again before the engine sleeps: a
            // stream that wakes itself without progress (tokio-rustls does, on a rustls state
            // it calls abnormal) waits for epoll instead of spinning.
            Poll::Pending if again && progress => Step::Again,
            Poll::Pending => Step::Wait,
        }
    }
}

/// pen's `dummy` page.
pub(super) const DUMMY_PAGE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nContent-Type: text/html\r\n\r\nUlric was here.";

/// `dummy`: read the client's first chunk and answer it. None while nothing has come yet;
/// Some once the connection is finished with.
pub(super) fn dummy_step(client: &mut Sock) -> Option<()> {
    if !client.can_read() {
        return None;
    }
    let mut buf = [0u8; 4096];
    match client.read(&mut buf) {
        Ok(0) => Some(()),
        Ok(_) => {
            // The page fits in any socket's buffer; what does not go at once is not retried.
            let _ = client.write_now(DUMMY_PAGE, 0);
            let _ = client.socket.shutdown(std::net::Shutdown::Write);
            Some(())
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(_) => Some(()),
    }
}

/// How long `dummy` waits for the client's first chunk.
pub(super) fn dummy_wait(settings: &ConnOptions) -> Duration {
    if settings.idle_timeout.is_zero() {
        Duration::from_secs(60)
    } else {
        settings.idle_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::super::sock::test_pair as pair;
    use super::super::TURN_READS;
    use super::*;
    use crate::balancer::Settings;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A relay between two socket pairs: the client's peer end, pen's client socket, the
    /// server's peer end, and the relay (which holds pen's server socket).
    fn relay() -> (UnixStream, Sock, UnixStream, Relay) {
        let (client_peer, client) = pair();
        let (server_peer, server) = pair();
        let backend = Backend::Unix("/nonexistent".into());
        let peer = Peer { ip: None, port: 0 };
        let relay = Relay::new(
            ConnId(0),
            server,
            Arc::new(ConnCounters::default()),
            &Settings::default().conn_options(),
            &backend,
            peer,
            false,
            Instant::now(),
        );
        (client_peer, client, server_peer, relay)
    }

    /// Step as the engine does: again at once while the relay asks to (its reads for the turn
    /// were used up), then what it waits for.
    fn settle(relay: &mut Relay, reads: usize, client: &mut Sock, reqlog: &RequestLog) -> Step {
        for _ in 0..1000 {
            match relay.step(reads, client, reqlog, Instant::now()) {
                Step::Again => continue,
                other => return other,
            }
        }
        panic!("the relay asked to run again 1000 times in a row");
    }

    fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        s.read_exact(&mut buf).unwrap();
        buf
    }

    fn at_eof(s: &mut UnixStream) -> bool {
        matches!(s.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn a_relay_moves_both_ways_forwards_each_eof_and_ends_when_both_are_done() {
        let reqlog = RequestLog::new();
        let (mut client_peer, mut client, mut server_peer, mut relay) = relay();

        client_peer.write_all(b"hello").unwrap();
        client.ready(true, false, false);
        let step = settle(&mut relay, TURN_READS, &mut client, &reqlog);
        assert!(matches!(step, Step::Wait));
        assert_eq!(read_exactly(&mut server_peer, 5), b"hello");

        // The server answers and half-closes: the client gets the reply, then EOF.
        server_peer.write_all(b"world").unwrap();
        server_peer.shutdown(std::net::Shutdown::Write).unwrap();
        relay.server.ready(true, false, true);
        let step = settle(&mut relay, TURN_READS, &mut client, &reqlog);
        assert!(matches!(step, Step::Wait));
        assert_eq!(read_exactly(&mut client_peer, 5), b"world");
        assert!(at_eof(&mut client_peer));

        // The client may still send after the server's EOF (half-close), then ends too.
        client_peer.write_all(b"late").unwrap();
        client_peer.shutdown(std::net::Shutdown::Write).unwrap();
        client.ready(true, false, true);
        let end = settle(&mut relay, TURN_READS, &mut client, &reqlog);
        assert!(matches!(end, Step::End(RelayEnd::Done)), "ended");
        assert_eq!(read_exactly(&mut server_peer, 4), b"late");
        assert_eq!(
            (relay.counters.to_server(), relay.counters.to_client()),
            (9, 5)
        );
        // The last direction is not shut down: closing the sockets sends that EOF.
        drop(relay);
        assert!(at_eof(&mut server_peer));
    }

    /// Edge-triggered epoll reports data and a FIN that arrive together once. The short read
    /// of the data must not hide the FIN behind it.
    #[test]
    fn data_and_eof_reported_in_one_event_are_both_relayed() {
        let reqlog = RequestLog::new();
        let (mut client_peer, mut client, mut server_peer, mut relay) = relay();
        client_peer.write_all(b"x").unwrap();
        client_peer.shutdown(std::net::Shutdown::Write).unwrap();
        client.ready(true, false, true);
        let step = settle(&mut relay, TURN_READS, &mut client, &reqlog);
        assert!(matches!(step, Step::Wait));
        assert_eq!(read_exactly(&mut server_peer, 1), b"x");
        assert!(at_eof(&mut server_peer), "the client's EOF was forwarded");
    }

    /// Regression: a step whose only news was the EOF (found by its turn's last read, with no
    /// byte moved) waited for a readiness event that never comes, so the EOF was not forwarded
    /// and the client's peer hung. It asks to run again, as a step that moved bytes does.
    #[test]
    fn an_eof_found_by_a_turns_last_read_is_forwarded_on_the_next_turn() {
        let reqlog = RequestLog::new();
        let (mut client_peer, mut client, mut server_peer, mut relay) = relay();
        client_peer.write_all(b"x").unwrap();
        client.ready(true, false, false);
        // One read per turn, as each of 16 or more busy connections gets.
        assert!(matches!(
            settle(&mut relay, 1, &mut client, &reqlog),
            Step::Wait
        ));
        assert_eq!(read_exactly(&mut server_peer, 1), b"x");
        // The FIN alone, announced without the hint that a FIN follows the data, so the relay
        // finds it by reading.
        client_peer.shutdown(std::net::Shutdown::Write).unwrap();
        client.ready(true, false, false);
        let step = settle(&mut relay, 1, &mut client, &reqlog);
        assert!(
            matches!(step, Step::Wait),
            "the server's side is still open"
        );
        assert!(at_eof(&mut server_peer), "the client's EOF was forwarded");
    }

    #[test]
    fn a_destination_that_pushes_back_keeps_the_rest_and_gets_it_when_writable() {
        let reqlog = RequestLog::new();
        let now = Instant::now();
        let (client_peer, mut client, mut server_peer, mut relay) = relay();
        server_peer.set_nonblocking(true).unwrap();
        // More than the socket pair holds, so the write to the server falls short.
        let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            let mut client_peer = client_peer.try_clone().unwrap();
            std::thread::spawn(move || client_peer.write_all(&data))
        };
        // First nobody reads the server's end, until a write to it falls short and the relay
        // keeps the rest (a reader as fast as the relay would hide the push-back).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut saw_pending = false;
        while !saw_pending && Instant::now() < deadline {
            client.ready(true, false, false);
            let _ = relay.step(TURN_READS, &mut client, &reqlog, now);
            saw_pending = relay.counters.pending().0 > 0;
            if !saw_pending {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Then the server drains, and each time it made room the relay hears it is writable.
        let mut got = Vec::new();
        let mut buf = vec![0; 256 * 1024];
        while got.len() < data.len() && Instant::now() < deadline {
            match server_peer.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("server read: {e}"),
            }
            relay.server.ready(false, true, false);
            client.ready(true, false, false);
            let _ = relay.step(TURN_READS, &mut client, &reqlog, now);
        }
        writer.join().unwrap().unwrap();
        assert!(saw_pending, "the server pushed back at least once");
        assert!(got == data, "every byte, in order");
        drop(client_peer);
    }
}
