//! man/penstats-web.1 and the real binary say the same things: the OPTIONS entries are exactly
//! the options of `penstats-web --help` (with and without arguments alike), PAGES lists every
//! route, the metrics named are the metrics exposed, and the page has its sections.

// The shared reader of man pages; not every helper is used here.
#[allow(dead_code)]
#[path = "../../tests/src/man.rs"]
mod man;
mod support;

use std::collections::BTreeMap;

use support::process::run;

fn man_page() -> String {
    man::man_page("penstats-web")
}

/// The option names of a tag (`\fB\-\-pen\fR \fIADDRESS\fR`, `.BR \-h ", " \-\-help`) and
/// whether it takes an argument.
fn tag_options(tag: &str) -> (Vec<String>, bool) {
    let text = tag
        .replace("\\-", "-")
        .replace("\\fB", " ")
        .replace("\\fR", " ");
    let names = text
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .filter(|w| w.starts_with('-'))
        .map(str::to_string)
        .collect();
    (names, tag.contains("\\fI"))
}

/// Option name -> takes an argument, from `penstats-web --help`.
fn help_options() -> BTreeMap<String, bool> {
    let out = run(&["--help"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    man::help_options(&out.stdout)
}

#[test]
fn the_options_section_and_help_list_the_same_options() {
    let mut documented = BTreeMap::new();
    for tag in man::tags(&man_page(), "OPTIONS") {
        let (names, takes_arg) = tag_options(&tag);
        for name in names {
            documented.insert(name, takes_arg);
        }
    }
    let help = help_options();
    assert!(
        help.contains_key("--pen") && help.contains_key("--history"),
        "{help:?}"
    );
    assert_eq!(
        documented, help,
        "man/penstats-web.1 OPTIONS (left) against penstats-web --help (right)"
    );
}

#[test]
fn pages_lists_every_route() {
    let pages = man::tags(&man_page(), "PAGES").join(" ");
    for route in [
        "/",
        "/status.html",
        "/api/status",
        "/metrics",
        "/events",
        "/dashboard.js",
        "/dashboard.css",
    ] {
        assert!(
            pages.split([' ', '"', ',']).any(|w| w == route),
            "PAGES lacks {route}: {pages}"
        );
    }
}

#[test]
fn every_metric_exposed_is_documented() {
    let text: pen::balancer::Snapshot = support::snapshot();
    let exposition = penstats_web::metrics::render(Some(&text), Default::default());
    let man = man_page().replace("\\-", "-");
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(
                man.contains(&format!(".BR {name} ")) || man.contains(&format!(".B {name}")),
                "man/penstats-web.1 does not name the metric {name}"
            );
        }
    }
}

#[test]
fn the_man_page_has_its_sections() {
    let man = man_page();
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "PAGES",
        "SECURITY",
        "EXAMPLES",
        "\"EXIT STATUS\"",
        "DIAGNOSTICS",
        "\"SEE ALSO\"",
    ] {
        assert!(
            man.lines().any(|l| l == format!(".SH {section}")),
            "man/penstats-web.1 lacks section {section}"
        );
    }
}
