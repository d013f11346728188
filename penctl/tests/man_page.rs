//! man/penctl.1 and the real `penctl` say the same things: the options of `penctl --help` are
//! exactly the OPTIONS entries (with and without arguments alike), the usage line is the one the
//! binary prints, COMMANDS has an entry for every control command of pen 0.34.1 and for
//! `snapshot`, and DIAGNOSTICS lists every message penctl can print.

mod support;
// The shared reader of man pages; not every helper is used here.
#[allow(dead_code)]
#[path = "../../tests/src/man.rs"]
mod man;

use std::collections::BTreeMap;
use std::time::Duration;

use penctl::Error;
use support::penctl;

fn man_page() -> String {
    man::man_page("penctl")
}

/// The bold words of a tag: `\fBno acl\fR \fIL\fR` gives `["no acl"]`.
fn bold_parts(tag: &str) -> Vec<String> {
    tag.split("\\fB")
        .skip(1)
        .filter_map(|part| part.split("\\fR").next())
        .map(|s| s.replace("\\-", "-"))
        .collect()
}

/// Option name -> takes an argument, from `penctl --help`.
fn help_options() -> BTreeMap<String, bool> {
    let out = penctl(&["--help"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    man::help_options(&out.stdout_text())
}

#[test]
fn the_options_section_and_help_list_the_same_options() {
    let mut documented = BTreeMap::new();
    for tag in man::tags(&man_page(), "OPTIONS") {
        for name in bold_parts(&tag) {
            documented.insert(name, tag.contains("\\fI"));
        }
    }
    let help = help_options();
    assert!(help.contains_key("--timeout") && help.contains_key("--connect-timeout"));
    assert_eq!(
        documented, help,
        "man/penctl.1 OPTIONS (left) against penctl --help (right)"
    );
}

#[test]
fn the_usage_line_is_the_one_penctl_prints() {
    let out = penctl::<&str>(&[]);
    let usage = out.stdout_text();
    assert_eq!(usage, "usage: penctl host:port command\n");
    assert!(
        man::plain(&man_page()).contains(usage.trim()),
        "man/penctl.1 lacks {usage:?}"
    );
}

/// Every command of pen 0.34.1 (reference §2.2), and `snapshot`.
const COMMANDS: &[&str] = &[
    "abort_on_error",
    "no abort_on_error",
    "acl",
    "no acl",
    "ascii",
    "no ascii",
    "blacklist",
    "block",
    "client_acl",
    "clients_max",
    "close",
    "connection",
    "conn_max",
    "control",
    "control_acl",
    "debug",
    "delayed_forward",
    "dsr_if",
    "dsr_ip",
    "dummy",
    "no dummy",
    "epoll",
    "exit",
    "hash",
    "no hash",
    "http",
    "no http",
    "idle_timeout",
    "idlers",
    "include",
    "keepalive",
    "no keepalive",
    "kqueue",
    "listen",
    "log",
    "no log",
    "mode",
    "peek",
    "no peek",
    "pending_max",
    "pid",
    "poll",
    "prio",
    "no prio",
    "recent",
    "roundrobin",
    "no roundrobin",
    "select",
    "server",
    "servers",
    "snapshot",
    "socket",
    "source",
    "ssl_ciphers",
    "ssl_client_renegotiation_interval",
    "ssl_ocsp_response",
    "ssl_option",
    "ssl_sni_path",
    "status",
    "stubborn",
    "no stubborn",
    "tarpit_acl",
    "tcp_fastclose",
    "tcp_nodelay",
    "no tcp_nodelay",
    "timeout",
    "tracking",
    "transparent",
    "no transparent",
    "web_stats",
    "no web_stats",
    "weight",
    "no weight",
    "write",
];

#[test]
fn commands_has_an_entry_for_every_control_command_with_its_reply() {
    let man = man_page();
    let tags = man::tags(&man, "COMMANDS");
    // The commands an entry is about: the first bold words of each comma-separated form
    // (`\fBhash\fR, \fBno hash\fR`), not the keywords after them (`server N ... \fBacl\fR`).
    let named: Vec<String> = tags
        .iter()
        .flat_map(|t| {
            t.split(", ")
                .filter_map(|form| bold_parts(form).into_iter().next())
        })
        .collect();
    for command in COMMANDS {
        assert!(
            named.iter().any(|n| n == command),
            "COMMANDS has no entry for '{command}'"
        );
    }
    // Every entry says what pen replies.
    let section = man
        .split(".SH COMMANDS")
        .nth(1)
        .and_then(|s| s.split("\n.SH ").next())
        .expect("a COMMANDS section");
    for entry in section.split("\n.TP\n").skip(1) {
        let entry = man::plain(entry);
        assert!(entry.contains("Reply"), "no reply documented: {entry}");
    }
}

#[test]
fn diagnostics_lists_every_message() {
    // Placeholders: MARK for text arguments, 7777 seconds for durations.
    const MARK: &str = "\u{1}";
    let seven = Duration::from_secs(7777);
    let errors = [
        Error::NoPort,
        Error::OverlongArg(MARK.into()),
        Error::OverlongList,
        Error::Resolve(MARK.into()),
        Error::Socket,
        Error::Connect,
        Error::ConnectTimeout(seven),
        Error::Send,
        Error::Receive,
        Error::ReplyTimeout(seven),
        Error::Stdout(std::io::ErrorKind::Other),
        Error::BadPort(MARK.into()),
        Error::UnclosedBracket(MARK.into()),
        Error::JunkAfterBracket(MARK.into()),
        Error::PathTooLong(MARK.into()),
        Error::UnknownOption(MARK.into()),
        Error::MissingValue(MARK),
        Error::BadSeconds {
            option: MARK,
            value: MARK.into(),
        },
    ];
    // A new variant fails to compile here until it is added above (and documented).
    for e in &errors {
        match e {
            Error::NoPort
            | Error::OverlongArg(_)
            | Error::OverlongList
            | Error::Resolve(_)
            | Error::Socket
            | Error::Connect
            | Error::ConnectTimeout(_)
            | Error::Send
            | Error::Receive
            | Error::ReplyTimeout(_)
            | Error::Stdout(_)
            | Error::BadPort(_)
            | Error::UnclosedBracket(_)
            | Error::JunkAfterBracket(_)
            | Error::PathTooLong(_)
            | Error::UnknownOption(_)
            | Error::MissingValue(_)
            | Error::BadSeconds { .. } => {}
        }
    }
    let documented: Vec<String> = man::tags(&man_page(), "DIAGNOSTICS")
        .iter()
        .map(|t| man::plain(t))
        .collect();
    for e in &errors {
        let text = e.to_string().replace("7777", MARK);
        let pieces: Vec<&str> = text.split(MARK).filter(|p| !p.is_empty()).collect();
        let in_order = |tag: &String| {
            let mut rest = tag.as_str();
            pieces.iter().all(|p| match rest.find(p) {
                Some(i) => {
                    rest = &rest[i + p.len()..];
                    true
                }
                None => false,
            })
        };
        assert!(
            documented.iter().any(in_order),
            "DIAGNOSTICS lacks {text:?}; it has {documented:#?}"
        );
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
        "ADDRESS",
        "COMMANDS",
        "\"EXIT STATUS\"",
        "DIAGNOSTICS",
        "\"DIFFERENCES FROM PENCTL 0.34.1\"",
        "\"SEE ALSO\"",
    ] {
        assert!(
            man.lines().any(|l| l == format!(".SH {section}")),
            "man/penctl.1 lacks section {section}"
        );
    }
}
