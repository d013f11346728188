//! man/penlog.1, man/penlogd.1 and man/mergelogs.1 describe the options their `--help` lists:
//! every option of the usage text has one entry in the man page's OPTIONS section, and the
//! section has no entry for an option the program does not have.

use std::collections::BTreeSet;

use pen_crosstests::logtools::{our_bin, run, WAIT};
use pen_crosstests::man;

/// Option letters in a usage text: lines like `  -x ...`.
fn usage_options(usage: &str) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = usage
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix('-'))
        .filter_map(|rest| rest.chars().next())
        .filter(char::is_ascii_alphabetic)
        .map(|c| format!("-{c}"))
        .collect();
    set.extend(["--help".to_string(), "--version".to_string()]);
    set
}

/// Tags of the `.TP` entries of the OPTIONS section: `\fB\-x\fR ...` -> `-x`.
fn man_options(man: &str) -> BTreeSet<String> {
    man::tags(man, "OPTIONS")
        .iter()
        .map(|tag| {
            tag.strip_prefix("\\fB")
                .and_then(|t| t.split("\\fR").next())
                .unwrap_or_else(|| panic!("unexpected OPTIONS tag: {tag}"))
                .replace("\\-", "-")
        })
        .collect()
}

#[test]
fn man_pages_list_the_options_of_the_usage_texts() {
    for tool in ["penlog", "penlogd", "mergelogs"] {
        let out = run(&our_bin(tool), &["--help"], b"", &[], WAIT);
        assert_eq!(out.code(), Some(0), "{tool} --help");
        assert_eq!(
            man_options(&man::man_page(tool)),
            usage_options(&out.stdout_text()),
            "{tool}: man page OPTIONS against --help"
        );
    }
}
