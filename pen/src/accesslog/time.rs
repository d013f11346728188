//! The time stamp of web server logs, `dd/Mon/yyyy:HH:MM:SS ±hhmm`, converted to and from
//! seconds since the epoch. The conversion is pure arithmetic: the zone offset in the stamp
//! says everything, so the result does not depend on the TZ variable or the local zone
//! (pen 0.34.1's mergelogs went through `mktime` with an uninitialised `tm_isdst` and shifted
//! some lines by an hour).

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// 01/Jan/0000:00:00:00 +0000 and 01/Jan/10000:00:00:00 +0000: the instants `write_utc` writes
/// with a four-digit year, so the only ones `parse` accepts.
const FIRST: i64 = -62_167_219_200;
const END: i64 = 253_402_300_800;

/// Why a time stamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad time stamp: {0}")]
pub struct TimeError(pub &'static str);

/// Days from 1970-01-01 to the given proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (the inverse of `days_from_civil`): (year, month 1-12, day 1-31).
fn civil_from_days(z: i64) -> (i64, usize, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as usize, d)
}

fn days_in_month(y: i64, m: usize) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn digits(s: &[u8], what: &'static str) -> Result<i64, TimeError> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(TimeError(what));
    }
    Ok(s.iter().fold(0i64, |n, &d| n * 10 + i64::from(d - b'0')))
}

/// Seconds since the epoch of a stamp like `14/Nov/2023:23:18:20 +0100`. Month names are
/// English and case-sensitive, as Apache writes them. A stamp without a zone is taken as UTC.
pub fn parse(stamp: &[u8]) -> Result<i64, TimeError> {
    let (clock, zone) = match stamp.iter().position(|&b| b == b' ') {
        Some(at) => (&stamp[..at], Some(&stamp[at + 1..])),
        None => (stamp, None),
    };
    // dd/Mon/yyyy:HH:MM:SS
    if clock.len() != 20
        || clock[2] != b'/'
        || clock[6] != b'/'
        || clock[11] != b':'
        || clock[14] != b':'
        || clock[17] != b':'
    {
        return Err(TimeError("expected dd/Mon/yyyy:HH:MM:SS"));
    }
    let day = digits(&clock[0..2], "day")?;
    let month = MONTHS
        .iter()
        .position(|m| m[..] == clock[3..6])
        .ok_or(TimeError("month"))?
        + 1;
    let year = digits(&clock[7..11], "year")?;
    let hour = digits(&clock[12..14], "hour")?;
    let minute = digits(&clock[15..17], "minute")?;
    let second = digits(&clock[18..20], "second")?;
    if day < 1 || day > days_in_month(year, month) {
        return Err(TimeError("day out of range"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(TimeError("time of day out of range"));
    }
    let offset = match zone {
        None => 0,
        Some(z) => {
            if z.len() != 5 {
                return Err(TimeError("expected a zone like +0100"));
            }
            let sign = match z[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(TimeError("expected a zone like +0100")),
            };
            let (zh, zm) = (digits(&z[1..3], "zone")?, digits(&z[3..5], "zone")?);
            if zh > 23 || zm > 59 {
                return Err(TimeError("zone out of range"));
            }
            sign * (zh * 3600 + zm * 60)
        }
    };
    let days = days_from_civil(year, month as i64, day);
    let epoch = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    // A zone (or a leap second) can carry a stamp of year 0000 or 9999 into year -1 or 10000,
    // which has no four-digit UTC stamp: refusing it means every stamp read can be written out
    // in UTC (mergelogs' output) and read back.
    if !(FIRST..END).contains(&epoch) {
        return Err(TimeError("outside the years 0000-9999 in UTC"));
    }
    Ok(epoch)
}

/// Append `epoch` as a UTC stamp, `dd/Mon/yyyy:HH:MM:SS +0000` (how mergelogs writes times).
/// A year outside 0000-9999 is written in full (signed, or five digits or more), which `parse`
/// refuses; `parse` never returns such an epoch.
pub fn write_utc(out: &mut Vec<u8>, epoch: i64) {
    let (days, secs) = (epoch.div_euclid(86_400), epoch.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let two = |out: &mut Vec<u8>, n: i64| {
        out.push(b'0' + (n / 10 % 10) as u8);
        out.push(b'0' + (n % 10) as u8);
    };
    two(out, d);
    out.push(b'/');
    out.extend_from_slice(MONTHS[m - 1]);
    out.push(b'/');
    if (0..10_000).contains(&y) {
        two(out, y / 100);
        two(out, y % 100);
    } else {
        out.extend_from_slice(y.to_string().as_bytes());
    }
    out.push(b':');
    two(out, secs / 3600);
    out.push(b':');
    two(out, secs / 60 % 60);
    out.push(b':');
    two(out, secs % 60);
    out.extend_from_slice(b" +0000");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(epoch: i64) -> String {
        let mut out = Vec::new();
        write_utc(&mut out, epoch);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn stamps_convert_with_their_zone_whatever_tz_is() {
        // Transcript 15: 1700000000 is 14/Nov/2023:22:13:20 UTC.
        assert_eq!(parse(b"14/Nov/2023:22:13:20 +0000"), Ok(1_700_000_000));
        assert_eq!(parse(b"14/Nov/2023:23:18:20 +0100"), Ok(1_700_000_300));
        assert_eq!(parse(b"14/Nov/2023:17:13:20 -0500"), Ok(1_700_000_000));
        assert_eq!(parse(b"14/Nov/2023:22:13:20"), Ok(1_700_000_000));
        assert_eq!(parse(b"01/Jan/1970:00:00:00 +0000"), Ok(0));
        assert_eq!(parse(b"29/Feb/2024:12:00:00 +0000"), Ok(1_709_208_000));
        // Either side of a DST change in Europe: the offset in the stamp decides.
        assert_eq!(
            parse(b"31/Mar/2024:01:59:59 +0100").unwrap() + 1,
            parse(b"31/Mar/2024:03:00:00 +0200").unwrap()
        );
        for bad in [
            &b"14/nov/2023:22:13:20 +0000"[..],
            b"14/Nov/2023:24:13:20 +0000",
            b"30/Feb/2024:12:00:00 +0000",
            b"14/Nov/2023:22:13:20 +000",
            b"14/Nov/2023:22:13:20 0000x",
            b"14/Nov/2023 22:13:20",
            b"",
            b"xx/Nov/2023:22:13:20 +0000",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn stamps_whose_utc_year_has_no_four_digits_are_refused() {
        // The fuzz target `timestamp` found these: they parsed, but their UTC stamp did not.
        for bad in [
            &b"01/Jan/0000:00:30:00 +0100"[..],
            b"31/Dec/9999:23:30:00 -0100",
            b"31/Dec/9999:23:59:60 +0000",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(b"01/Jan/0000:00:00:00 +0000"), Ok(FIRST));
        assert_eq!(parse(b"01/Jan/0000:00:30:00 -0100"), Ok(FIRST + 5400));
        assert_eq!(parse(b"31/Dec/9999:23:59:59 +0000"), Ok(END - 1));
        assert_eq!(utc(FIRST), "01/Jan/0000:00:00:00 +0000");
        assert_eq!(utc(END - 1), "31/Dec/9999:23:59:59 +0000");
        assert_eq!(parse(utc(FIRST - 1).as_bytes()).ok(), None);
        assert_eq!(parse(utc(END).as_bytes()).ok(), None);
    }

    #[test]
    fn utc_stamps_round_trip() {
        assert_eq!(utc(1_700_000_000), "14/Nov/2023:22:13:20 +0000");
        assert_eq!(utc(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(utc(1_709_208_000), "29/Feb/2024:12:00:00 +0000");
        // Every day over a few centuries, at a few times of day.
        for day in (-50_000..80_000).step_by(7) {
            for secs in [0, 1, 43_199, 86_399] {
                let t = day * 86_400 + secs;
                assert_eq!(parse(utc(t).as_bytes()), Ok(t), "{t}");
            }
        }
    }
}
