//! The engine's timers: at most one deadline per token (a connection's connect, handshake,
//! `dummy` or idle timeout, or the engine's own pause of accepts), with time passed in.
//!
//! Setting a token's deadline replaces the one it had, and clearing it (the connection closed)
//! removes it, so what is held is what is live. A heap that only ever grew would keep each
//! connection's deadline until it came due, long after the connection had gone: with
//! `idle_timeout 600` and 10,000 short connections a second, six million entries.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

#[derive(Default)]
pub(super) struct Timers {
    by_time: BTreeSet<(Instant, u64)>,
    by_token: HashMap<u64, Instant>,
}

impl Timers {
    /// `token`'s deadline is now `at` (whatever it was before).
    pub fn set(&mut self, token: u64, at: Instant) {
        if let Some(old) = self.by_token.insert(token, at) {
            self.by_time.remove(&(old, token));
        }
        self.by_time.insert((at, token));
    }

    /// `token` has no deadline any more.
    pub fn clear(&mut self, token: u64) {
        if let Some(old) = self.by_token.remove(&token) {
            self.by_time.remove(&(old, token));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|&(at, _)| at)
    }

    /// A token whose deadline is `now` or earlier, earliest first; it no longer has one.
    pub fn pop_due(&mut self, now: Instant) -> Option<u64> {
        let &(at, token) = self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.pop_first();
        self.by_token.remove(&token);
        Some(token)
    }

    /// How many tokens have a deadline.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_token.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn due(t: &mut Timers, now: Instant) -> Vec<u64> {
        std::iter::from_fn(|| t.pop_due(now)).take(1000).collect()
    }

    #[test]
    fn deadlines_come_due_in_order_and_only_when_reached() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        t.set(7, t0 + 3 * s);
        t.set(5, t0 + s);
        t.set(9, t0 + s);
        assert_eq!(t.next(), Some(t0 + s));
        assert_eq!(due(&mut t, t0), Vec::<u64>::new());
        assert_eq!(due(&mut t, t0 + s), vec![5, 9]);
        assert_eq!(t.next(), Some(t0 + 3 * s));
        assert_eq!(due(&mut t, t0 + 10 * s), vec![7]);
        assert_eq!((t.next(), t.len()), (None, 0));
    }

    #[test]
    fn a_new_deadline_replaces_the_old_and_a_cleared_one_never_comes_due() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        // A connect timeout, then the idle timeout once relaying: only the second counts.
        t.set(4, t0 + 3 * s);
        t.set(4, t0 + 600 * s);
        assert_eq!(t.len(), 1);
        assert_eq!(due(&mut t, t0 + 10 * s), Vec::<u64>::new());
        assert_eq!(t.next(), Some(t0 + 600 * s));
        // Moved earlier, too.
        t.set(4, t0 + 2 * s);
        assert_eq!(due(&mut t, t0 + 2 * s), vec![4]);
        t.set(6, t0 + s);
        t.clear(6);
        t.clear(6);
        t.clear(8);
        assert_eq!(due(&mut t, t0 + 1000 * s), Vec::<u64>::new());
        assert_eq!(t.len(), 0);
    }

    /// What the engine does for each short connection under `idle_timeout 600`: a connect
    /// deadline, then an idle one, then the close. Nothing is left behind.
    #[test]
    fn short_connections_leave_nothing_behind() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for token in 0..100_000u64 {
            let now = t0 + Duration::from_micros(token * 100);
            t.set(token << 1, now + Duration::from_secs(3));
            t.set(token << 1, now + Duration::from_secs(600));
            t.clear(token << 1);
        }
        assert_eq!((t.len(), t.next()), (0, None));
    }
}
