//! The command line parser against pen's own command lines, and its errors.

use super::*;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn run(s: &str) -> Options {
    match parse(&args(s)).unwrap() {
        Invocation::Run(o) => *o,
        other => panic!("{s}: {other:?}"),
    }
}

fn err(s: &str) -> String {
    parse(&args(s)).unwrap_err().to_string()
}

#[test]
fn options_clusters_attached_values_and_options_after_positionals() {
    let o =
        run("-fr -b5 -T 7 127.0.0.1:8080 127.0.0.1:9001 -x 64 127.0.0.1:9002:3:4:5:6 -dd -d -c10");
    assert!(o.foreground && o.settings.roundrobin);
    assert_eq!(o.settings.blacklist_time, Duration::from_secs(5));
    assert_eq!(o.settings.tracking, Duration::from_secs(7));
    assert_eq!(o.conn_max.map(NonZeroUsize::get), Some(64));
    assert_eq!(o.clients_max.get(), 10);
    assert_eq!(o.debug, 3);
    assert_eq!(o.servers.len(), 2);
    assert_eq!(o.servers[1].prio, 6);
    assert_eq!(o.servers[0].backend.port(), 9001);
}

#[test]
fn defaults_match_pen() {
    let o = run("8080 127.0.0.1");
    assert_eq!(o.settings, Settings::default());
    assert_eq!(o.settings.blacklist_time, Duration::from_secs(30));
    assert_eq!(o.settings.connect_timeout, Duration::from_secs(3));
    assert_eq!(
        (o.clients_max.get(), o.backlog, o.multi_accept.get()),
        (2048, 500, 100)
    );
    assert_eq!(
        o.servers[0].backend.port(),
        8080,
        "default port = listen port"
    );
    assert!(!o.foreground);
}

#[test]
fn pen_quirks_kept() {
    let o = run("-m 0 -q 10 -D -n 1 127.0.0.1");
    assert_eq!((o.multi_accept.get(), o.backlog), (1, 50));
    assert_eq!(o.notices.len(), 4);
    assert!(matches!(parse(&args("-N 1 2")).unwrap(), Invocation::Usage));
    assert!(matches!(
        parse(&args("-i x")).unwrap(),
        Invocation::ExitWith("Windows only")
    ));
    assert!(matches!(parse(&[]).unwrap(), Invocation::Usage));
    assert!(matches!(parse(&args("--help")).unwrap(), Invocation::Help));
    assert!(matches!(
        parse(&args("--version")).unwrap(),
        Invocation::Version
    ));
}

#[test]
fn bad_input_names_the_argument() {
    let cases = [
        ("-z 1 2", "'z'"),
        ("--frobnicate 1", "--frobnicate"),
        ("-b", "-b requires an argument"),
        ("-b abc 1 2", "-b abc"),
        ("-t 0 1 2", "-t 0"),
        ("-c 0 1 2", "-c 0"),
        ("-x -5 1 2", "-x -5"),
        ("-f", "no listen address"),
        ("99999 127.0.0.1", "'99999'"),
        ("8080 127.0.0.1:80:x", "maxc 'x'"),
        ("8080 nonexistent.invalid", "nonexistent.invalid"),
        ("-e bad:host:x 8080 127.0.0.1", "-e"),
        ("-C 99999 8080 127.0.0.1", "-C '99999'"),
        ("-B bad:host:x 8080 127.0.0.1", "-B"),
        ("-l x:y 8080 127.0.0.1", "-l: 'x:y'"),
        ("-p", "-p requires an argument"),
        ("-o", "-o requires an argument"),
    ];
    for (line, want) in cases {
        let e = err(line);
        assert!(e.contains(want), "{line}: {e}");
    }
    let bad_command = ["-o", "blacklist x", "8080", "127.0.0.1"].map(String::from);
    let e = parse(&bad_command).unwrap_err().to_string();
    assert!(e.contains("-o 'blacklist x'") && e.contains("'x'"), "{e}");
}

#[test]
fn a_line_break_inside_an_o_command_is_refused_and_a_trailing_one_is_not() {
    // pen 0.34.1 ran `server 1 address 127.0.0.2` and dropped `port 99` without a word.
    for broken in [
        "server 1 address 127.0.0.2\rport 99",
        "server 1 address 127.0.0.2\nport 99",
        "no log\r\nblacklist 5",
    ] {
        for letter in ["-o", "-O"] {
            let args = [letter, broken, "8080", "127.0.0.1"].map(String::from);
            let e = parse(&args).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{letter} '"))
                    && e.contains(&broken.escape_debug().to_string())
                    && e.contains("line break"),
                "{broken:?}: {e}"
            );
        }
    }
    for trailing in ["blacklist 7\n", "blacklist 7\r\n"] {
        let args = ["-o", trailing, "8080", "127.0.0.1"].map(String::from);
        let Ok(Invocation::Run(o)) = parse(&args) else {
            panic!("{trailing:?} was refused");
        };
        assert_eq!(
            o.settings.blacklist_time,
            Duration::from_secs(7),
            "{trailing:?}"
        );
    }
}

#[test]
fn control_port_binds_loopback_for_a_bare_port() {
    let o = run("-C 1234 -X -F /etc/pen.cfg -B 127.0.0.1:99 8080 127.0.0.1");
    let (text, addr) = o.control.unwrap();
    assert_eq!(text, "1234");
    assert_eq!(addr.to_string(), "127.0.0.1:1234");
    assert!(o.exit_enabled);
    assert_eq!(o.abuse.unwrap().backend.to_string(), "127.0.0.1:99");
    let o = run("-C [::1]:1234 8080 127.0.0.1");
    assert_eq!(o.control.unwrap().1.to_string(), "[::1]:1234");
    let o = run("-F /etc/pen.cfg");
    assert!(o.listen.is_none(), "the config file may name the listener");
}

#[test]
fn service_options() {
    let o = run("-p /run/pen.pid -u nobody -j /var/empty -w status.html -a 8080 127.0.0.1");
    assert_eq!(o.pid_file, Some(PathBuf::from("/run/pen.pid")));
    assert_eq!(o.user.as_deref(), Some("nobody"));
    assert_eq!(o.jail, Some(PathBuf::from("/var/empty")));
    assert_eq!(
        o.settings.web_stats.as_deref(),
        Some(std::path::Path::new("status.html"))
    );
    assert!(o.ascii);
    for flag in ["-p", "-u", "-j", "-w"] {
        let line = [flag, "", "8080", "127.0.0.1"].map(String::from);
        let e = parse(&line).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{flag} '': expected a ")), "{e}");
    }
}

#[test]
fn udp_http_and_geoip_options() {
    let o = run("-U -H -g /var/lib/GeoIP/x.mmdb 8080 127.0.0.1 [::1]:53");
    assert!(o.udp && o.settings.http);
    assert_eq!(o.geoip, Some(PathBuf::from("/var/lib/GeoIP/x.mmdb")));
    assert!(!run("8080 127.0.0.1").udp);
    for line in [
        "-U /tmp/pen.sock 127.0.0.1:53",
        "-U 8080 /tmp/s.sock",
        "-U -e /tmp/e.sock 8080 127.0.0.1",
    ] {
        let e = err(line);
        assert!(
            e.starts_with("-U: UDP needs IP addresses") && e.contains(".sock"),
            "{line}: {e}"
        );
    }
    assert!(err("-g").contains("-g requires an argument"));
}

#[test]
fn o_commands_apply_in_order_with_the_flags() {
    let line = [
        "-o",
        "prio",
        "-r",
        "-o",
        "no roundrobin",
        "-O",
        "blacklist 4",
        "-o",
        "server 0 weight 2",
        "-o",
        "mode",
        "1",
        "127.0.0.1:9",
    ];
    let o = match parse(&line.map(String::from)).unwrap() {
        Invocation::Run(o) => *o,
        other => panic!("{other:?}"),
    };
    assert!(o.settings.prio && !o.settings.roundrobin);
    assert_eq!(o.settings.blacklist_time, Duration::from_secs(4));
    assert_eq!(
        o.replies,
        [
            "",
            "",
            "4\n",
            "no hash no roundrobin no stubborn no weight prio\n"
        ]
    );
    assert_eq!(o.commands.len(), 1);
}

#[test]
fn every_letter_of_pen_0_34_1_is_known() {
    let pen = "B:C:F:O:S:T:b:c:e:i:j:l:m:o:p:q:t:u:w:x:DHNPQWXUadfhnrsE:K:G:A:ZRL:";
    let mut chars = pen.chars().peekable();
    while let Some(c) = chars.next() {
        let takes_arg = chars.peek() == Some(&':');
        if takes_arg {
            chars.next();
        }
        let f = find_flag(c).unwrap_or_else(|| panic!("-{c} missing"));
        assert_eq!(f.arg.is_some(), takes_arg, "-{c}");
    }
    // Letters this pen adds: -g (the GeoIP database; pen 0.34.1 opened fixed paths).
    let added = "g";
    assert_eq!(
        FLAGS.len(),
        pen.chars().filter(|c| *c != ':').count() + added.len()
    );
}
