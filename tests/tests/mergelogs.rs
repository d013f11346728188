//! mergelogs on generated Apache logs whose right merge is known, under several TZ settings
//! (daylight saving time included), beside Debian's C mergelogs (pen 0.34.1); and the same logs
//! with malformed lines mixed in.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use pen_crosstests::logtools::{c_bin, our_bin, run, Run, Scratch};
use pen_crosstests::weblogs::{generate, stamp, Fixture, Zone};

/// 2024-10-27 00:00:00 UTC: central Europe leaves summer time an hour later.
const AUTUMN_2024: i64 = 1_729_987_200;
/// 2024-03-31 00:00:00 UTC: central Europe starts summer time an hour later.
const SPRING_2024: i64 = 1_711_843_200;
const LIMIT: Duration = Duration::from_secs(60);

/// Write a fixture's logs into `dir`; the `server:logfile` arguments.
fn write_fixture(dir: &Scratch, f: &Fixture) -> Vec<String> {
    std::fs::write(dir.join("pen.log"), &f.pen_log).expect("write pen.log");
    f.servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = format!("access{i}.log");
            std::fs::write(dir.join(&name), &s.log).expect("write a web log");
            let server = if s.name.contains(':') {
                format!("[{}]", s.name)
            } else {
                s.name.clone()
            };
            format!("{server}:{}", dir.arg(&name))
        })
        .collect()
}

fn mergelogs(bin: &Path, dir: &Scratch, extra: &[&str], logs: &[String], tz: &str) -> Run {
    let pen_log = dir.arg("pen.log");
    let mut args: Vec<&str> = vec!["-p", &pen_log];
    args.extend(extra);
    args.extend(logs.iter().map(String::as_str));
    run(bin, &args, b"", &[("TZ", tz)], LIMIT)
}

fn three_servers(start: i64, lines: usize) -> Fixture {
    generate(
        7,
        &[
            ("10.0.0.1", Zone::Fixed(0)),
            ("10.0.0.2", Zone::CentralEurope),
            ("10.0.0.3", Zone::Fixed(-300)),
        ],
        lines,
        start,
        3,
    )
}

#[test]
fn every_line_gets_its_client_whatever_tz_is() {
    // Without the zone files every TZ would silently be UTC, and this would prove nothing.
    for zone in [
        "Europe/Stockholm",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
    ] {
        assert!(
            Path::new("/usr/share/zoneinfo").join(zone).exists(),
            "/usr/share/zoneinfo/{zone} is missing: install tzdata (.ci/run does)"
        );
    }
    // Both daylight-saving changes of 2024 fall inside the logs: local times jump forward an
    // hour in spring and repeat an hour in autumn.
    for start in [SPRING_2024, AUTUMN_2024] {
        let fixture = three_servers(start, 3000);
        let dir = Scratch::new("tz");
        let logs = write_fixture(&dir, &fixture);
        for tz in [
            "UTC",
            "Europe/Stockholm",
            "America/New_York",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
        ] {
            let out = mergelogs(&our_bin("mergelogs"), &dir, &[], &logs, tz);
            assert_eq!(out.code(), Some(0), "TZ={tz}: {}", out.stderr);
            let got = out.stdout_text();
            if got != fixture.merged {
                let diff = got
                    .lines()
                    .zip(fixture.merged.lines())
                    .enumerate()
                    .find(|(_, (a, b))| a != b);
                panic!(
                    "TZ={tz}, start {start}: {} lines, want {}; first difference: {diff:?}",
                    got.lines().count(),
                    fixture.merged.lines().count()
                );
            }
            // Unreadable lines are reported, by file and line.
            assert!(
                out.stderr.contains("could not be read")
                    && out.stderr.contains("access0.log")
                    && out.stderr.contains("no [time] field"),
                "TZ={tz}: {}",
                out.stderr
            );
        }
    }
}

#[test]
fn agrees_with_c_mergelogs_wherever_c_gets_the_time_right() {
    let Some(c) = c_bin("mergelogs") else { return };
    let fixture = generate(
        11,
        &[("10.0.0.1", Zone::Fixed(0)), ("10.0.0.2", Zone::Fixed(60))],
        2000,
        AUTUMN_2024,
        3,
    );
    let dir = Scratch::new("vs-c");
    let logs = write_fixture(&dir, &fixture);
    let c_out = mergelogs(&c, &dir, &[], &logs, "UTC");
    let ours = mergelogs(&our_bin("mergelogs"), &dir, &[], &logs, "UTC");
    assert_eq!(c_out.code(), Some(0), "C mergelogs: {}", c_out.stderr);
    assert_eq!(ours.stdout_text(), fixture.merged);
    // C skips lines that end right after the request.
    let total = fixture.merged.lines().count();
    assert_eq!(
        c_out.stdout_text().lines().count(),
        total - fixture.cut,
        "C mergelogs"
    );
    // The request identifies a line; compare wherever C printed the right time (its
    // uninitialised tm_isdst shifts some lines by an hour, and with them their match).
    let request = |l: &str| l.split('"').nth(1).unwrap_or_default().to_string();
    let time = |l: &str| l.split(['[', ']']).nth(1).unwrap_or_default().to_string();
    let our_lines: HashMap<String, String> = fixture
        .merged
        .lines()
        .map(|l| (request(l), l.to_string()))
        .collect();
    let c_text = c_out.stdout_text();
    let mut compared = 0;
    for c_line in c_text.lines() {
        let ours = &our_lines[&request(c_line)];
        if time(c_line) == time(ours) {
            assert_eq!(c_line, ours);
            compared += 1;
        }
    }
    eprintln!(
        "C mergelogs had the right time on {compared} of {} lines",
        total - fixture.cut
    );
    assert!(
        compared > (total - fixture.cut) / 2,
        "only {compared} lines had C's time right"
    );
}

/// mergelogs -d says how many pen records it held at most.
fn peak_records(stderr: &str) -> usize {
    stderr
        .split("at most ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak in: {stderr}"))
}

#[test]
fn memory_follows_the_jitter_window_not_the_log_size() {
    let peak = |lines: usize| {
        let fixture = generate(3, &[("10.0.0.1", Zone::Fixed(0))], lines, AUTUMN_2024, 1);
        let dir = Scratch::new("window");
        let logs = write_fixture(&dir, &fixture);
        let out = mergelogs(
            &our_bin("mergelogs"),
            &dir,
            &["-d", "-j", "60"],
            &logs,
            "UTC",
        );
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        assert_eq!(out.stdout_text(), fixture.merged);
        peak_records(&out.stderr)
    };
    let (small, large) = (peak(2_000), peak(40_000));
    eprintln!("records held at most: {small} for 2,000 lines, {large} for 40,000");
    // About one record a second (and one in ten of another server) within 2 x 60 seconds.
    assert!(small <= 200 && large <= 200, "peaks {small} and {large}");
}

#[test]
fn rejects_go_to_the_r_file() {
    let fixture = three_servers(AUTUMN_2024, 500);
    let dir = Scratch::new("rejects");
    let logs = write_fixture(&dir, &fixture);
    let rejects = dir.arg("rejects");
    let out = mergelogs(&our_bin("mergelogs"), &dir, &["-r", &rejects], &logs, "UTC");
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout_text(), fixture.merged);
    let text = std::fs::read_to_string(&rejects).expect("rejects file");
    assert_eq!(text.lines().count(), fixture.garbage);
    assert!(text.lines().all(|l| l.starts_with("garbage line")));
    assert!(
        out.stderr.contains(&format!("written to {rejects}")),
        "{}",
        out.stderr
    );
}

#[test]
fn ipv6_servers_and_clients() {
    let dir = Scratch::new("v6");
    std::fs::write(
        dir.join("pen.log"),
        "2001:db8::7 1700000000 ::1 GET /six HTTP/1.1\n",
    )
    .expect("pen.log");
    std::fs::write(
        dir.join("access.log"),
        "::1 - - [14/Nov/2023:22:13:20 +0000] \"GET /six HTTP/1.1\" 200 1\n\
         ::1 - - [14/Nov/2023:22:13:21 +0000] \"GET /none HTTP/1.1\" 200 1\n",
    )
    .expect("access.log");
    let logs = [format!("[::1]:{}", dir.arg("access.log"))];
    let out = mergelogs(&our_bin("mergelogs"), &dir, &[], &logs, "UTC");
    assert_eq!(
        out.stdout_text(),
        "2001:db8::7 - - [14/Nov/2023:22:13:20 +0000] \"GET /six HTTP/1.1\" 200 1\n\
         ::1 - - [14/Nov/2023:22:13:21 +0000] \"GET /none HTTP/1.1\" 200 1\n"
    );
}

#[test]
fn usage_and_errors_as_c_mergelogs() {
    let Some(c) = c_bin("mergelogs") else { return };
    let ours = our_bin("mergelogs");
    let dir = Scratch::new("errors");
    std::fs::write(dir.join("pen.log"), "").expect("pen.log");
    std::fs::write(dir.join("access.log"), "").expect("access.log");
    let (pen_log, access) = (dir.arg("pen.log"), dir.arg("access.log"));
    let server_log = format!("10.0.0.1:{access}");
    let missing_log = format!("10.0.0.1:{}", dir.arg("nonexistent"));
    let missing_pen = dir.arg("nonexistent");
    // (arguments, C's exit status, ours, what ours must say)
    type Case<'a> = (Vec<&'a str>, Option<i32>, Option<i32>, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], Some(0), Some(0), "Usage: mergelogs"),
        (vec![&server_log], Some(1), Some(1), "-p"),
        (
            vec!["-p", &missing_pen, &server_log],
            Some(1),
            Some(1),
            "nonexistent",
        ),
        (
            vec!["-p", &pen_log, &access],
            Some(1),
            Some(1),
            "is not server:logfile",
        ),
        (
            vec!["-p", &pen_log, &missing_log],
            Some(1),
            Some(1),
            "nonexistent",
        ),
        // C prints its usage and exits 0 for an unknown option; ours exits 1.
        (
            vec!["-a", "x", "-p", &pen_log, &server_log],
            Some(0),
            Some(1),
            "'a'",
        ),
        (vec!["-p", &pen_log, &server_log], Some(0), Some(0), ""),
    ];
    for (args, c_code, our_code, want) in cases {
        let c_out = run(&c, &args, b"", &[("TZ", "UTC")], LIMIT);
        let our_out = run(&ours, &args, b"", &[("TZ", "UTC")], LIMIT);
        assert_eq!(c_out.code(), c_code, "C mergelogs {args:?}");
        assert_eq!(
            our_out.code(),
            our_code,
            "mergelogs {args:?}: {}",
            our_out.stderr
        );
        let said = format!("{}{}", our_out.stdout_text(), our_out.stderr);
        assert!(said.contains(want), "mergelogs {args:?}: {said}");
    }
}

/// mergelogs -d's counts: lines written, those with a client from pen's log, lines rejected.
fn written_counts(stderr: &str) -> (usize, usize, usize) {
    let line = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("mergelogs: "))
        .find(|l| l.contains(" lines written, "))
        .unwrap_or_else(|| panic!("no -d summary in: {stderr}"));
    let n: Vec<usize> = line
        .split(';')
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    match n[..] {
        [written, matched, rejected] => (written, matched, rejected),
        _ => panic!("not a -d summary: {line}"),
    }
}

/// `text`'s lines with `extra` inserted after the first `after` of them.
fn insert_after(text: &str, after: usize, extra: &[String]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.splice(after..after, extra.iter().cloned());
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Malformed web log lines (a time stamp of 150 characters before its first `/`, no brackets,
/// no quotes, two 10,000-character lines, an unknown month) are skipped and reported by file,
/// line and reason (or written to the `-r` file, and counted by `-d`), mergelogs exits 0, and
/// every other line merges exactly as it does without them. A well-formed line out of time
/// order is not an error: it is written after the line before it in its log, with its own time;
/// malformed and out-of-order pen log lines change nothing either (reliability catalogue B13:
/// pen 0.34.1's mergelogs `sscanf`ed the time stamp into `char dd[100]`).
#[test]
fn malformed_lines_are_skipped_and_reported_and_change_nothing_else() {
    let fixture = three_servers(AUTUMN_2024, 300);
    let dir = Scratch::new("malformed");
    let logs = write_fixture(&dir, &fixture);
    let access1 = dir.arg("access1.log");
    let clean = mergelogs(&our_bin("mergelogs"), &dir, &["-d"], &logs, "UTC");
    assert_eq!(clean.code(), Some(0), "{}", clean.stderr);
    assert_eq!(clean.stdout_text(), fixture.merged);
    let clean_lines: Vec<String> = clean.stdout_text().lines().map(String::from).collect();

    // In the log of 10.0.0.2 (a +0100/+0200 clock), after its third line; each bad line, with
    // the reason mergelogs gives. The fixture's own garbage lines start at line 41.
    let huge_stamp = {
        let head = "10.0.0.2 - - [";
        let tail = "] \"GET /bad/huge-stamp HTTP/1.1\" 200 1";
        format!(
            "{head}{}{tail}",
            "9".repeat(10_000 - head.len() - tail.len())
        )
    };
    let bad: Vec<(String, &str)> = vec![
        (
            format!(
                "10.0.0.2 - - [{}/Oct/2024:01:00:00 +0100] \"GET /bad/long-day HTTP/1.1\" 200 1",
                "1".repeat(150)
            ),
            "bad time stamp: expected dd/Mon/yyyy:HH:MM:SS",
        ),
        (
            "10.0.0.2 - - 27/Oct/2024:01:00:00 +0100 \"GET /bad/no-brackets HTTP/1.1\" 200 1"
                .to_string(),
            "no [time] field",
        ),
        (
            "10.0.0.2 - - [27/Oct/2024:01:00:00 +0100] GET /bad/no-quotes HTTP/1.1 200 1"
                .to_string(),
            "no quoted request",
        ),
        (huge_stamp, "bad time stamp: expected dd/Mon/yyyy:HH:MM:SS"),
        ("x".repeat(10_000), "no host field"),
        (
            "10.0.0.2 - - [27/Okt/2024:01:00:00 +0100] \"GET /bad/month HTTP/1.1\" 200 1"
                .to_string(),
            "bad time stamp: month",
        ),
    ];
    assert_eq!((bad[3].0.len(), bad[4].0.len()), (10_000, 10_000));
    // A day before every other line (the server's clock at +0200); no pen record asks for it.
    let late_time = AUTUMN_2024 - 86_400;
    let late = format!(
        "10.0.0.2 - - [{}] \"GET /late/out-of-order HTTP/1.1\" 200 1",
        stamp(late_time, 7200)
    );
    let mut inserted: Vec<String> = bad.iter().map(|(l, _)| l.clone()).collect();
    inserted.push(late);
    std::fs::write(
        dir.join("access1.log"),
        insert_after(&fixture.servers[1].log, 3, &inserted),
    )
    .expect("rewrite access1.log");
    // pen's log: three lines that are not pen log lines after its fifth, and a record a day
    // out of order for a request no web line has.
    let pen_bad = [
        "garbage".to_string(),
        "y".repeat(10_000),
        "192.0.2.9 not-a-time 10.0.0.1 GET /s0/item/0 HTTP/1.1".to_string(),
        format!("192.0.2.10 {late_time} 10.0.0.1 GET /pen/out-of-order HTTP/1.1"),
    ];
    std::fs::write(
        dir.join("pen.log"),
        insert_after(&fixture.pen_log, 5, &pen_bad),
    )
    .expect("rewrite pen.log");

    // The line before the late one in its log; the late line follows it, with its UTC time.
    let before_late = fixture.servers[1]
        .log
        .lines()
        .nth(2)
        .and_then(|l| l.split('"').nth(1))
        .expect("a third line with a request")
        .to_string();
    let at = clean_lines
        .iter()
        .position(|l| l.contains(&format!("\"{before_late}\"")))
        .expect("the line before the late one, merged");
    let mut want = clean_lines.clone();
    want.insert(
        at + 1,
        format!(
            "10.0.0.2 - - [{}] \"GET /late/out-of-order HTTP/1.1\" 200 1",
            stamp(late_time, 0)
        ),
    );
    let want: String = want.iter().map(|l| format!("{l}\n")).collect();
    let pen_log = dir.arg("pen.log");
    let pen_skipped = format!(
        "mergelogs: {pen_log}: 3 lines are not pen log lines; skipped (the first is line 6)"
    );
    let garbage_in = |log: usize| {
        fixture.servers[log]
            .log
            .lines()
            .filter(|l| l.starts_with("garbage line"))
            .count()
    };

    // Reported on stderr: the first ten of each log by file, line and reason, then a count.
    let out = mergelogs(&our_bin("mergelogs"), &dir, &[], &logs, "UTC");
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    if out.stdout_text() != want {
        let got = out.stdout_text();
        let diff = got
            .lines()
            .zip(want.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b);
        panic!(
            "{} lines, want {}; first difference: {diff:?}",
            got.lines().count(),
            want.lines().count()
        );
    }
    for (i, (line, why)) in bad.iter().enumerate() {
        let report = format!("mergelogs: {access1}:{}: {why}: {line}\n", i + 4);
        assert!(
            out.stderr.contains(&report),
            "{report:.200}\n{}",
            out.stderr
        );
    }
    assert!(
        !out.stderr.contains("out-of-order"),
        "a well-formed line was reported: {}",
        out.stderr
    );
    let count = format!(
        "mergelogs: {access1}: {} lines could not be read (the first 10 shown above)",
        bad.len() + garbage_in(1)
    );
    assert!(out.stderr.contains(&count), "{count}\n{}", out.stderr);
    assert!(out.stderr.contains(&pen_skipped), "{}", out.stderr);

    // With -r: the same lines, whole, in the rejects file; -d counts them.
    let rejects = dir.arg("rejects");
    let out = mergelogs(
        &our_bin("mergelogs"),
        &dir,
        &["-d", "-r", &rejects],
        &logs,
        "UTC",
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout_text(), want);
    let text = std::fs::read_to_string(&rejects).expect("rejects file");
    assert_eq!(text.lines().count(), fixture.garbage + bad.len());
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("garbage line"))
        .collect();
    let bad_lines: Vec<&str> = bad.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(ours, bad_lines);
    let (clean_counts, counts) = (written_counts(&clean.stderr), written_counts(&out.stderr));
    assert_eq!(
        (clean_counts.0, clean_counts.2),
        (clean_lines.len(), fixture.garbage)
    );
    assert_eq!(
        counts,
        (
            clean_counts.0 + 1,
            clean_counts.1,
            fixture.garbage + bad.len()
        ),
        "lines written, with a client, rejected"
    );
    assert!(out.stderr.contains(&pen_skipped), "{}", out.stderr);
}
