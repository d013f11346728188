//! The replies of `exec`, checked command by command against pen 0.34.1's, and the rules that
//! keep a failing or file-naming command from changing anything.

use std::num::NonZeroUsize;
use std::path::Path;

use super::*;
use crate::addr::ListenAddr;
use crate::balancer::{AclId, Balancer};
use crate::control::parse;
use std::time::{Duration, Instant, SystemTime};

fn ctx() -> Context {
    Context {
        now: Instant::now(),
        wall: SystemTime::now(),
        default_port: Some(8080),
        origin: Origin::ControlPort,
    }
}

fn host() -> HostView {
    HostView::new(
        Some(ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())),
        500,
    )
}

fn run(b: &mut Balancer, line: &str) -> Result<String, ControlError> {
    execute(&parse(line)?, b, &mut host(), &ctx()).map(|o| o.reply)
}

fn balancer() -> Balancer {
    Balancer::new(Default::default(), NonZeroUsize::new(2048).unwrap())
}

#[test]
fn replies_are_pens() {
    let mut b = balancer();
    assert_eq!(run(&mut b, "blacklist").unwrap(), "30\n");
    assert_eq!(run(&mut b, "blacklist 5").unwrap(), "5\n");
    assert_eq!(run(&mut b, "timeout").unwrap(), "3\n");
    assert_eq!(run(&mut b, "tracking 9").unwrap(), "9\n");
    assert_eq!(
        run(&mut b, "idle_timeout 4").unwrap(),
        "Idle timeout: 4 seconds\n"
    );
    assert_eq!(run(&mut b, "prio").unwrap(), "");
    assert_eq!(
        run(&mut b, "mode").unwrap(),
        "no hash no roundrobin no stubborn no weight prio\n"
    );
    assert_eq!(run(&mut b, "clients_max 10").unwrap(), "2048\n");
    assert_eq!(run(&mut b, "clients_max 4096").unwrap(), "4096\n");
    assert_eq!(
        run(&mut b, "bogus").unwrap(),
        "do_cmd: ignoring command starting with 'bogus'\n"
    );
    assert_eq!(
        run(&mut b, "tcp_fastclose").unwrap(),
        "do_cmd: ignoring tcp_fastclose without argument\n"
    );
    assert_eq!(run(&mut b, "client_acl 3").unwrap(), "3\n");
    assert_eq!(run(&mut b, "control_acl").unwrap(), "0\n");
    assert_eq!(run(&mut b, "tarpit_acl").unwrap(), "tarpit_acl = -1");
    assert_eq!(run(&mut b, "control").unwrap(), "(null)\n");
    assert_eq!(
        run(&mut b, "exit").unwrap(),
        "Exit is not enabled; restart with -X flag\n"
    );
    assert_eq!(
        run(&mut b, "connection 499").unwrap(),
        "Connection 499:\nstate = 0\ndownfd = -1, upfd = -1\nclient = 0, server = 0\npend = 0\n"
    );
    assert_eq!(
        run(&mut b, "connection 500").unwrap(),
        "Connection 500 out of range\n"
    );
    assert_eq!(
        run(&mut b, "socket 9").unwrap(),
        "Socket 9 belongs to connection -1\n"
    );
    assert_eq!(
        run(&mut b, "server 1 address 127.0.0.1 port 9001 weight 3").unwrap(),
        ""
    );
    assert_eq!(
        run(&mut b, "servers").unwrap(),
        "0 addr 0.0.0.0 port 0 conn 0 max 0 hard 0 weight 0 prio 0 sx 0 rx 0\n\
         1 addr 127.0.0.1 port 9001 conn 0 max 0 hard 0 weight 3 prio 0 sx 0 rx 0\n"
    );
}

#[test]
fn a_failing_command_changes_nothing() {
    let mut b = balancer();
    run(&mut b, "server 0 address 127.0.0.1 port 9001").unwrap();
    let before = run(&mut b, "servers").unwrap();
    assert!(run(&mut b, "server 3 port 80").is_err());
    assert!(
        run(&mut b, "close 0").is_err(),
        "an unused slot is not closed"
    );
    assert_eq!(run(&mut b, "servers").unwrap(), before);
}

/// Reliability catalogue S7: no file names over the control port unless confined.
#[test]
fn control_port_file_names_are_confined() {
    let mut b = balancer();
    for line in [
        "write /tmp/x/evil",
        "log /tmp/x/keys",
        "web_stats /tmp/x/victim",
        "include /etc/shadow",
        "listen /tmp/x/victim",
        "control_files /",
    ] {
        let e = run(&mut b, line).unwrap_err().to_string();
        assert!(e.contains("control"), "{line}: {e}");
    }
    let mut h = host();
    h.control_files = Some("/var/lib/pen".into());
    let ok = execute(
        &parse("web_stats /var/lib/pen/s.html").unwrap(),
        &mut b,
        &mut h,
        &ctx(),
    );
    assert!(ok.is_ok());
    let escape = parse("web_stats /var/lib/pen/../../../etc/passwd").unwrap();
    assert!(execute(&escape, &mut b, &mut h, &ctx()).is_err());
    assert_eq!(
        b.settings.web_stats.as_deref(),
        Some(Path::new("/var/lib/pen/s.html"))
    );
    // The network log names no file.
    assert_eq!(
        run(&mut b, "log 127.0.0.1:9999").unwrap(),
        "127.0.0.1:9999\n"
    );
}

#[test]
fn acls_and_server_acls() {
    let mut b = balancer();
    run(&mut b, "acl 1 permit 127.0.0.2").unwrap();
    run(&mut b, "acl 1 deny ::1/128").unwrap();
    assert_eq!(b.acls.entries(AclId::new(1).unwrap()).len(), 2);
    run(&mut b, "server 0 address 127.0.0.1 port 9 acl 1").unwrap();
    assert_eq!(b.servers()[0].acl, AclId::new(1).unwrap());
    run(&mut b, "no acl 1").unwrap();
    assert!(b.acls.entries(AclId::new(1).unwrap()).is_empty());
}

#[test]
fn status_and_snapshot_outside_the_control_port_are_refused_and_say_why() {
    let mut b = balancer();
    for cmd in ["status", "snapshot"] {
        let e = run(&mut b, cmd).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{cmd}: ")) && e.contains("only the control port answers it"),
            "{e}"
        );
    }
}

/// `busy_poll` (not in pen 0.34.1): microseconds, 0 to 1000, replied as set; a bad value is
/// refused naming the command, the value and the range, and changes nothing.
#[test]
fn busy_poll_takes_microseconds_and_refuses_what_is_out_of_range() {
    let mut b = balancer();
    let mut h = host();
    let mut exec = |line: &str| {
        parse(line)
            .and_then(|c| execute(&c, &mut b, &mut h, &ctx()))
            .map(|o| (o.reply, o.action))
    };
    assert_eq!(exec("busy_poll").unwrap(), ("0\n".to_string(), None));
    assert_eq!(
        exec("busy_poll 8").unwrap(),
        (
            "8\n".to_string(),
            Some(Action::BusyPoll(Duration::from_micros(8)))
        )
    );
    assert_eq!(exec("busy_poll").unwrap(), ("8\n".to_string(), None));
    for bad in ["1001", "-1", "8us", "0x10", "99999999999999999999"] {
        let e = exec(&format!("busy_poll {bad}")).unwrap_err().to_string();
        assert!(
            e.contains("busy_poll") && e.contains(bad) && e.contains("from 0 to 1000"),
            "{bad}: {e}"
        );
    }
    assert_eq!(exec("busy_poll").unwrap(), ("8\n".to_string(), None));
    assert_eq!(
        exec("busy_poll 0").unwrap(),
        ("0\n".to_string(), Some(Action::BusyPoll(Duration::ZERO)))
    );
}

/// `coalesce` (not in pen 0.34.1): microseconds, 100 by default, 0 (off) to 1000, replied as
/// set; a bad value is refused naming the command, the value and the range, and changes
/// nothing.
#[test]
fn coalesce_takes_microseconds_and_refuses_what_is_out_of_range() {
    let mut b = balancer();
    let mut h = host();
    let mut exec = |line: &str| {
        parse(line)
            .and_then(|c| execute(&c, &mut b, &mut h, &ctx()))
            .map(|o| (o.reply, o.action))
    };
    assert_eq!(exec("coalesce").unwrap(), ("100\n".to_string(), None));
    for bad in ["1001", "-1", "50us"] {
        let e = exec(&format!("coalesce {bad}")).unwrap_err().to_string();
        assert!(
            e.contains("coalesce") && e.contains(bad) && e.contains("from 0 to 1000"),
            "{bad}: {e}"
        );
    }
    assert_eq!(exec("coalesce").unwrap(), ("100\n".to_string(), None));
    assert_eq!(
        exec("coalesce 0").unwrap(),
        ("0\n".to_string(), Some(Action::Coalesce(Duration::ZERO)))
    );
    assert_eq!(
        exec("coalesce 1000").unwrap(),
        (
            "1000\n".to_string(),
            Some(Action::Coalesce(Duration::from_micros(1000)))
        )
    );
    assert_eq!(exec("coalesce").unwrap(), ("1000\n".to_string(), None));
}
