//! The HTML status page of our pen beside C pen 0.34.1's, live: the same servers, the same held
//! client connections, SIGUSR1, and the two pages compared cell by cell. Only what differs from
//! run to run is left out: the time, the clients' ages and the socket descriptors.

use std::path::Path;
use std::time::{Duration, Instant};

use pen_crosstests::status_page::{structure, table_rows};
use pen_crosstests::{c_pen, from_ip, hold, our_pen, Backend, Pen, LISTEN};

/// Three servers (the second with limits, weight and prio), clients from .1, .2 and .3 held
/// open, then SIGUSR1: the page `bin` writes.
fn page_of(tag: &str, bin: &Path, a: &Backend, b: &Backend, c: &Backend) -> String {
    let dir = std::env::temp_dir().join(format!("pen-compat-stats-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("webstats.html");
    let (sb, path_arg) = (b.spec_with("10:20:1:2"), path.to_str().unwrap());
    let pen = Pen::start(
        bin,
        &[
            "-f",
            "-x",
            "500",
            "-w",
            path_arg,
            LISTEN,
            &a.spec(),
            &sb,
            &c.spec(),
        ],
    );
    let held: Vec<_> = [1, 2, 3]
        .iter()
        .map(|&n| hold(pen.addr(), Some(from_ip([127, 0, 0, n]))))
        .collect();
    let names: Vec<&str> = held.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["B", "C", "A"], "{}", bin.display());
    pen.signal("USR1");
    // C pen truncates and rewrites the file in place: wait for a whole page.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        if let Ok(page) = std::fs::read_to_string(&path) {
            if page.ends_with("</html>\n") {
                break page;
            }
        }
        assert!(Instant::now() < deadline, "{}: no page", bin.display());
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(held);
    drop(pen);
    let _ = std::fs::remove_dir_all(&dir);
    page
}

#[test]
fn the_status_page_matches_c_pen_s_cell_by_cell() {
    let Some(c_bin) = c_pen() else { return };
    let (a, b, c) = (
        Backend::start("A"),
        Backend::start("B"),
        Backend::start("C"),
    );
    let theirs = page_of("c", &c_bin, &a, &b, &c);
    let ours = page_of("ours", &our_pen(), &a, &b, &c);
    assert_eq!(
        structure(&ours),
        structure(&theirs),
        "ours:\n{ours}\nC pen's:\n{theirs}"
    );
    let summary = |page: &str| {
        let time = page.find("Time ").unwrap();
        let line = &page[time..page[time..].find('\n').unwrap() + time];
        line[line.find(',').unwrap()..].to_string()
    };
    assert_eq!(summary(&ours), summary(&theirs), "servers and current");
    let connections = |page: &str| {
        let at = page.find("Number of connections:").unwrap();
        page[at..at + page[at..].find('<').unwrap()].to_string()
    };
    assert_eq!(connections(&ours), connections(&theirs));
    assert_eq!(
        table_rows(&ours, "<table"),
        table_rows(&theirs, "<table"),
        "servers: ours\n{ours}\nC pen's:\n{theirs}"
    );
    let without = |mut rows: Vec<Vec<String>>, columns: &[usize]| {
        for row in &mut rows {
            for &c in columns {
                row[c].clear();
            }
        }
        rows
    };
    assert_eq!(
        without(table_rows(&ours, "<h2>Active clients</h2>"), &[2]),
        without(table_rows(&theirs, "<h2>Active clients</h2>"), &[2]),
        "clients, ages aside"
    );
    assert_eq!(
        without(table_rows(&ours, "<h2>Active connections</h2>"), &[1, 2]),
        without(table_rows(&theirs, "<h2>Active connections</h2>"), &[1, 2]),
        "connections, descriptors aside"
    );
}
