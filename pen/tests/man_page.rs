//! man/pen.1 and `pen --help` describe the same options. Both are checked against
//! `pen::cli::FLAGS`, the one table the parser also reads: every option letter has exactly one
//! entry in the man page's OPTIONS section, marked as the table marks it (not yet available,
//! obsolete, without effect), and one line in the usage text. An option added, removed or
//! changed in the table fails here until the man page follows.

// The shared reader of man pages; not every helper is used here.
#[allow(dead_code)]
#[path = "../../tests/src/man.rs"]
mod man;

use pen::cli::{usage, Flag, Support, FLAGS};

fn man_page() -> String {
    man::man_page("pen")
}

/// One `.TP` entry of the OPTIONS section: its tag line as written, and its body as plain text
/// (font escapes removed, `\-` turned into `-`, whitespace collapsed, lower case).
struct Entry {
    tag: String,
    body: String,
}

fn option_entries(man: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut in_options = false;
    let mut lines = man.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with(".SH") {
            in_options = line.trim() == ".SH OPTIONS";
            continue;
        }
        if !in_options || line.trim() != ".TP" {
            continue;
        }
        let tag = lines.next().unwrap_or_default().to_string();
        let mut body = String::new();
        while let Some(next) = lines.peek() {
            if [".TP", ".SH", ".SS"].iter().any(|m| next.starts_with(m)) {
                break;
            }
            body.push_str(next);
            body.push('\n');
            lines.next();
        }
        entries.push(Entry {
            tag,
            body: man::plain(&body).to_lowercase(),
        });
    }
    entries
}

/// How the man page writes the start of an option's entry: `\fB\-x\fR`.
fn tag_of(flag: &Flag) -> String {
    format!("\\fB\\-{}\\fR", flag.letter)
}

#[test]
fn the_man_page_has_an_options_section_with_entries() {
    let entries = option_entries(&man_page());
    assert!(
        entries.len() >= FLAGS.len(),
        "only {} option entries found in man/pen.1",
        entries.len()
    );
}

#[test]
fn every_flag_has_exactly_one_man_entry_marked_as_flags_says() {
    let entries = option_entries(&man_page());
    for flag in FLAGS {
        let tag = tag_of(flag);
        let found: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.tag == tag || e.tag.starts_with(&format!("{tag} ")))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "-{}: entries {tag} in man/pen.1",
            flag.letter
        );
        let entry = found[0];
        assert_eq!(
            entry.tag.contains("\\fI"),
            flag.arg.is_some(),
            "-{}: the man page and FLAGS disagree on whether it takes an argument: {}",
            flag.letter,
            entry.tag
        );
        let body = &entry.body;
        match flag.support {
            Support::Yes => assert!(
                !body.contains("not yet available"),
                "-{} is available, but the man page says it is not: {body}",
                flag.letter
            ),
            Support::NotYet(feature) => assert!(
                body.contains("not yet available")
                    && body.contains(&format!("({})", feature.to_lowercase())),
                "-{}: the man page must say it is not yet available ({feature}): {body}",
                flag.letter
            ),
            Support::Obsolete(_) => assert!(
                body.contains("obsolete"),
                "-{}: the man page must say it is obsolete: {body}",
                flag.letter
            ),
            Support::NoEffect(why) => assert!(
                body.contains("no effect") && body.contains(&why.to_lowercase()),
                "-{}: the man page must say it has no effect ({why}): {body}",
                flag.letter
            ),
        }
    }
}

#[test]
fn every_man_entry_is_a_real_option() {
    let entries = option_entries(&man_page());
    for entry in &entries {
        let known = ["help", "version", "check"]
            .iter()
            .any(|long| entry.tag.starts_with(&format!("\\fB\\-\\-{long}\\fR")))
            || FLAGS.iter().any(|f| {
                let tag = tag_of(f);
                entry.tag == tag || entry.tag.starts_with(&format!("{tag} "))
            });
        assert!(
            known,
            "man/pen.1 documents an option pen does not have: {}",
            entry.tag
        );
    }
}

#[test]
fn usage_lists_every_flag_once_with_its_status() {
    let text = usage();
    for flag in FLAGS {
        let start = format!("  -{} ", flag.letter);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&start)).collect();
        assert_eq!(lines.len(), 1, "-{}: lines in the usage text", flag.letter);
        if let Some(arg) = flag.arg {
            assert!(
                lines[0].starts_with(&format!("{start}{arg}")),
                "-{}: usage line lacks its argument {arg}: {}",
                flag.letter,
                lines[0]
            );
        }
        if let Support::NotYet(feature) = flag.support {
            assert!(
                lines[0].contains("not yet available") && lines[0].contains(feature),
                "-{}: usage must say it is not yet available: {}",
                flag.letter,
                lines[0]
            );
        }
    }
    for long in ["--help", "--version"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(long)),
            "usage lacks {long}"
        );
    }
}

#[test]
fn the_man_page_lists_the_differences_from_pen_0_34_1() {
    let man = man_page();
    assert!(man.contains(".SH \"DIFFERENCES FROM PEN 0.34.1\""));
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "LISTEN",
        "SERVER",
        "\"SERVER SELECTION\"",
        "RELAYING",
        "SIGNALS",
        "FILES",
        "STATISTICS",
        "\"RUNNING AS A SERVICE\"",
        "\"EXIT STATUS\"",
        "\"SEE ALSO\"",
    ] {
        assert!(
            man.lines().any(|l| l == format!(".SH {section}")),
            "man/pen.1 lacks section {section}"
        );
    }
}
