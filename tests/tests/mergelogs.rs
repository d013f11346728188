//! mergelogs on generated Apache logs whose right merge is known, under several TZ settings
//! (daylight saving time included), beside Debian's C mergelogs (pen 0.34.1).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use pen_crosstests::logtools::{c_bin, our_bin, run, Run, Scratch};
use pen_crosstests::weblogs::{generate, Fixture, Zone};

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
