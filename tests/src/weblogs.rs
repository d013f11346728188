//! Generated logs whose merge is known: a pen log (`client epoch server request`) and one
//! Apache log per web server (Combined, some lines Common, some cut after the request, some
//! garbage), with the time zone of each server's clock, daylight saving time included, and the
//! lines mergelogs must write.

use std::fmt::Write;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// How a web server's clock shows time.
#[derive(Debug, Clone, Copy)]
pub enum Zone {
    /// A fixed offset east of UTC, in minutes.
    Fixed(i64),
    /// Central European time: +0100, and +0200 from the last Sunday of March to the last
    /// Sunday of October (switching at 01:00 UTC).
    CentralEurope,
}

impl Zone {
    /// Offset east of UTC, in seconds, at `epoch`.
    pub fn offset(self, epoch: i64) -> i64 {
        match self {
            Zone::Fixed(minutes) => minutes * 60,
            Zone::CentralEurope => {
                let (year, _, _) = civil(epoch.div_euclid(86_400));
                let start = last_sunday(year, 3) * 86_400 + 3600;
                let end = last_sunday(year, 10) * 86_400 + 3600;
                if (start..end).contains(&epoch) {
                    7200
                } else {
                    3600
                }
            }
        }
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Day number of the last Sunday of `month` (1970-01-01 was a Thursday).
fn last_sunday(year: i64, month: i64) -> i64 {
    let next_month = if month == 12 {
        days_from_civil(year + 1, 1, 1)
    } else {
        days_from_civil(year, month + 1, 1)
    };
    let last = next_month - 1;
    last - (last + 4).rem_euclid(7)
}

/// `dd/Mon/yyyy:HH:MM:SS ±hhmm` for `epoch` as a clock `offset` seconds east of UTC shows it.
pub fn stamp(epoch: i64, offset: i64) -> String {
    let local = epoch + offset;
    let (y, m, d) = civil(local.div_euclid(86_400));
    let s = local.rem_euclid(86_400);
    let sign = if offset < 0 { '-' } else { '+' };
    let o = offset.abs();
    format!(
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} {sign}{:02}{:02}",
        MONTHS[(m - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60,
        o / 3600,
        o / 60 % 60
    )
}

/// A deterministic pseudo-random sequence (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// One web server of a fixture.
pub struct WebServer {
    /// As pen logs it, and as mergelogs is told.
    pub name: String,
    pub zone: Zone,
    /// The Apache log.
    pub log: String,
}

/// A generated set of logs and the merge they must give.
pub struct Fixture {
    pub pen_log: String,
    pub servers: Vec<WebServer>,
    /// The merged lines, in order, newline-terminated.
    pub merged: String,
    /// Web log lines that are not log lines at all (reported, not merged).
    pub garbage: usize,
    /// Lines that end right after the request (C mergelogs skips them).
    pub cut: usize,
}

/// `lines` requests per server, about `spacing` seconds apart on each, from `start`. Each
/// request is unique, so its right client is known; every 13th has no pen record (its client
/// is the server's name); every 40th web line is followed by a garbage line; every 9th is cut
/// after the request, every 5th is in Common format. Clients are IPv4 and IPv6.
pub fn generate(
    seed: u64,
    servers: &[(&str, Zone)],
    lines: usize,
    start: i64,
    spacing: i64,
) -> Fixture {
    let mut rng = Rng::new(seed);
    // (time, server index, line in the merged output)
    let mut merged: Vec<(i64, usize, usize, String)> = Vec::new();
    // (pen time, pen log line)
    let mut pen: Vec<(i64, String)> = Vec::new();
    let mut out_servers = Vec::new();
    let mut garbage = 0;
    let mut cut = 0;
    for (s, &(name, zone)) in servers.iter().enumerate() {
        let mut log = String::with_capacity(lines * 160);
        let mut t = start + s as i64;
        for i in 0..lines {
            t += 1 + rng.below(spacing.max(1) as u64 * 2) as i64;
            let client = if rng.below(4) == 0 {
                format!("2001:db8::{:x}", rng.below(0xffff) + 1)
            } else {
                format!("198.51.{}.{}", rng.below(256), rng.below(254) + 1)
            };
            let method = if rng.below(10) == 0 { "POST" } else { "GET" };
            let request = format!(
                "{method} /s{s}/item/{i}?q={} HTTP/1.1",
                rng.below(1_000_000)
            );
            let status = [200, 200, 200, 304, 404][rng.below(5) as usize];
            let size = rng.below(50_000);
            let user = if rng.below(20) == 0 { "frank" } else { "-" };
            let rest = if i % 9 == 4 {
                cut += 1;
                String::new()
            } else if i % 5 == 0 {
                format!(" {status} {size}")
            } else {
                format!(
                    " {status} {size} \"http://example.com/ref/{}\" \"Mozilla/5.0 (X11; Linux x86_64) test/{}\"",
                    rng.below(100),
                    rng.below(10)
                )
            };
            let recorded = i % 13 != 7;
            if recorded {
                // pen logs the request when it reads it, up to two seconds before the web
                // server logs it.
                let pen_time = t - rng.below(3) as i64;
                pen.push((pen_time, format!("{client} {pen_time} {name} {request}")));
            }
            let _ = writeln!(
                log,
                "{name} - {user} [{}] \"{request}\"{rest}",
                stamp(t, zone.offset(t))
            );
            if i % 40 == 39 {
                garbage += 1;
                log.push_str("garbage line without a time or a request\n");
            }
            let who = if recorded { client } else { name.to_string() };
            merged.push((
                t,
                s,
                merged.len(),
                format!("{who} - {user} [{}] \"{request}\"{rest}\n", stamp(t, 0)),
            ));
        }
        out_servers.push(WebServer {
            name: name.to_string(),
            zone,
            log,
        });
    }
    // pen writes its log in time order; a few records of servers nobody merges are mixed in.
    for k in 0..lines / 10 {
        let when = start + (k as i64) * spacing * 10;
        pen.push((
            when,
            format!("192.0.2.1 {when} 10.255.255.1 GET /elsewhere/{k} HTTP/1.0"),
        ));
    }
    pen.sort_by_key(|(t, _)| *t);
    let mut pen_log = String::with_capacity(pen.len() * 80);
    for (_, line) in &pen {
        pen_log.push_str(line);
        pen_log.push('\n');
    }
    merged.sort_by_key(|(t, s, n, _)| (*t, *s, *n));
    Fixture {
        pen_log,
        servers: out_servers,
        merged: merged.into_iter().map(|(_, _, _, l)| l).collect(),
        garbage,
        cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_zones() {
        assert_eq!(stamp(1_700_000_000, 0), "14/Nov/2023:22:13:20 +0000");
        assert_eq!(stamp(1_700_000_000, 3600), "14/Nov/2023:23:13:20 +0100");
        assert_eq!(
            stamp(1_700_000_000, -5 * 3600),
            "14/Nov/2023:17:13:20 -0500"
        );
        // 2024: summer time from 31 March 01:00 UTC to 27 October 01:00 UTC.
        let spring = days_from_civil(2024, 3, 31) * 86_400 + 3600;
        let autumn = days_from_civil(2024, 10, 27) * 86_400 + 3600;
        assert_eq!(last_sunday(2024, 3), days_from_civil(2024, 3, 31));
        let ce = Zone::CentralEurope;
        assert_eq!((ce.offset(spring - 1), ce.offset(spring)), (3600, 7200));
        assert_eq!((ce.offset(autumn - 1), ce.offset(autumn)), (7200, 3600));
        assert_eq!(
            stamp(autumn - 1, ce.offset(autumn - 1)),
            "27/Oct/2024:02:59:59 +0200"
        );
        assert_eq!(
            stamp(autumn, ce.offset(autumn)),
            "27/Oct/2024:02:00:00 +0100"
        );
    }
}
