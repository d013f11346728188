//! Reading the workspace's man pages in tests: the page of a program, its text without groff
//! markup, the `.TP` tags of a section, and the options a `--help` text lists, to compare. One file for every crate's man-page test: the
//! crates of `pen`, `penctl` and `penstats-web` include it with `#[path]` (they cannot depend on
//! this crate, which depends on `pen`), and this crate exports it as `man`.

/// The man page of `name` (`man/NAME.1`), read from the workspace. The including crate's
/// directory is a child of the workspace root, as every member's is.
pub fn man_page(name: &str) -> String {
    let path = format!("{}/../man/{name}.1", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("can't read {path}: {e}"))
}

/// The text of groff source: font escapes and quotes removed, `\-` made `-`, macro names
/// dropped (their arguments are text), whitespace collapsed to single spaces.
pub fn plain(groff: &str) -> String {
    let text = groff
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
        .replace("\\(lq", "")
        .replace("\\(rq", "")
        .replace("\\&", "");
    let words: Vec<&str> = text
        .lines()
        .map(|l| match l.strip_prefix('.') {
            Some(rest) => rest.split_once(' ').map_or("", |(_, args)| args),
            None => l,
        })
        .flat_map(str::split_whitespace)
        .collect();
    words.join(" ").replace('"', "")
}

/// The raw tag lines of the `.TP` entries of one section (`.SS` subsections included).
pub fn tags(man: &str, section: &str) -> Vec<String> {
    let mut tags = Vec::new();
    let mut inside = false;
    let mut lines = man.lines();
    while let Some(line) = lines.next() {
        if let Some(name) = line.strip_prefix(".SH ") {
            inside = name.trim_matches('"') == section;
        } else if inside && line.trim() == ".TP" {
            tags.push(lines.next().unwrap_or_default().to_string());
        }
    }
    tags
}

/// The options of a `--help` text (lines `  -x, --long ARG  ...`): name -> takes an argument.
/// An argument is a word of capitals after the names (`SECS`, `ADDRESS:PORT`); a description
/// that starts with a capital is not one.
pub fn help_options(help: &str) -> std::collections::BTreeMap<String, bool> {
    let mut options = std::collections::BTreeMap::new();
    for line in help.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with("  ") || !words.first().is_some_and(|w| w.starts_with('-')) {
            continue;
        }
        let names: Vec<&str> = words
            .iter()
            .take_while(|w| w.starts_with('-'))
            .map(|w| w.trim_end_matches(','))
            .collect();
        let takes_arg = words.get(names.len()).is_some_and(|w| {
            w.chars().any(|c| c.is_ascii_uppercase()) && !w.chars().any(|c| c.is_lowercase())
        });
        for name in names {
            options.insert(name.to_string(), takes_arg);
        }
    }
    options
}
