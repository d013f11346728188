//! Who opens a connection's conversation (the client with a request, or the server with a
//! banner), as this thread's recent connections showed; and so whether a connect to a server
//! holds back the handshake's last ACK until the client's first bytes can go with it
//! (`sock::start_connect`). Pure: the engine reports each connection's first bytes.
//!
//! Held, that ACK saves a segment, and the server is woken once, for a connection whose
//! request is already in, instead of once for the connection and again for the request. On
//! the benchmark's `http-close` (pen pinned to one core, the load and the servers on the other)
//! that was 9 µs less CPU per connection on each side. But a server that speaks first (SMTP,
//! FTP, POP3, MySQL) cannot even accept the connection until the ACK comes, so:
//! - a connection holds it only once the last `LEARNED` connections were all opened by the
//!   client, or when the client's bytes are in already;
//! - one opened by the server stops the holding at once;
//! - a held ACK goes on its own after `HOLD` if the client has still said nothing (the kernel
//!   would wait 200 ms).

use std::time::Duration;

/// Consecutive connections opened by the client after which connects hold their last ACK.
pub(super) const LEARNED: u8 = 4;

/// How long a held ACK waits for the client's first bytes.
pub(super) const HOLD: Duration = Duration::from_millis(10);

/// Which side's bytes came first on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opener {
    Client,
    Server,
}

/// What this thread has learnt of who opens its connections.
#[derive(Debug, Default)]
pub(super) struct Openings {
    /// Connections opened by the client in a row, up to `LEARNED`.
    streak: u8,
}

impl Openings {
    /// Whether a new connection's connect holds its last ACK for the client's first bytes.
    pub fn hold(&self) -> bool {
        self.streak >= LEARNED
    }

    /// A connection's first bytes came from `opener`.
    pub fn opened_by(&mut self, opener: Opener) {
        self.streak = match opener {
            Opener::Client => (self.streak + 1).min(LEARNED),
            Opener::Server => 0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(openers: &[Opener]) -> bool {
        let mut o = Openings::default();
        for &opener in openers {
            o.opened_by(opener);
        }
        o.hold()
    }

    #[test]
    fn connects_hold_only_after_enough_clients_in_a_row() {
        use Opener::{Client as C, Server as S};
        let cases: &[(&[Opener], bool)] = &[
            (&[], false),
            (&[C, C, C], false),
            (&[C, C, C, C], true),
            (&[C; 100], true),
            // One banner and holding stops, until the clients have shown it again.
            (&[C, C, C, C, S], false),
            (&[C, C, C, C, S, C, C, C], false),
            (&[C, C, C, C, S, C, C, C, C], true),
            (&[S; 10], false),
        ];
        for (openers, hold) in cases {
            assert_eq!(after(openers), *hold, "{openers:?}");
        }
    }
}
