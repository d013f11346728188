//! Generate benchmark logs: `genlogs DIR LINES` writes DIR/pen.log and DIR/access{0,1,2}.log
//! (three web servers, LINES lines each, Combined format, one of them with daylight saving
//! time) and DIR/merged.log, the merge mergelogs must produce. See tests/bench/logtools.sh.

use pen_crosstests::weblogs::{generate, Zone};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(lines)) = (args.first(), args.get(1).and_then(|n| n.parse().ok())) else {
        eprintln!("usage: genlogs DIR LINES");
        std::process::exit(1);
    };
    let f = generate(
        2026,
        &[
            ("10.0.0.1", Zone::Fixed(0)),
            ("10.0.0.2", Zone::CentralEurope),
            ("10.0.0.3", Zone::Fixed(-300)),
        ],
        lines,
        1_711_843_200,
        3,
    );
    let dir = std::path::Path::new(dir);
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("can't write {name}: {e}"));
    };
    write("pen.log", &f.pen_log);
    for (i, s) in f.servers.iter().enumerate() {
        write(&format!("access{i}.log"), &s.log);
    }
    write("merged.log", &f.merged);
}
