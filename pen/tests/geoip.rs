//! GeoIP (`-g`): a country database built by the test itself (countries on loopback
//! addresses), opened at startup; a missing or broken file stops pen with its name.

mod support;

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use pen::balancer::{Balancer, Settings};
use pen::geoip::GeoIp;
use support::{free_port, mmdb, run_pen, Backend, Pen, TempDir};

fn write_db(dir: &TempDir) -> String {
    let bytes = mmdb::country_db(&[
        ("127.0.0.0/8", "SE"),
        ("127.0.0.2/32", "NO"),
        ("::1/128", "DE"),
    ]);
    let path = dir.join("GeoLite2-Country.mmdb");
    std::fs::write(&path, bytes).expect("write the test database");
    path.display().to_string()
}

#[test]
fn the_balancer_knows_the_country_of_loopback_clients_from_the_test_database() {
    let dir = TempDir::new("geo");
    let path = write_db(&dir);
    let mut b = Balancer::new(Settings::default(), NonZeroUsize::new(16).unwrap());
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(b.country(ip("127.0.0.1")), None, "no database yet");
    b.set_geoip(Some(Arc::new(GeoIp::open(path.as_ref()).unwrap())));
    assert_eq!(b.country(ip("127.0.0.1")), Some(*b"SE"));
    assert_eq!(b.country(ip("127.0.0.2")), Some(*b"NO"));
    assert_eq!(b.country(ip("::1")), Some(*b"DE"));
    assert_eq!(b.country(ip("::ffff:127.0.0.2")), Some(*b"NO"));
    assert_eq!(b.country(ip("192.0.2.1")), None);
}

#[test]
fn pen_opens_the_database_named_by_g_at_startup() {
    let dir = TempDir::new("geo");
    let path = write_db(&dir);
    let a = Backend::named("A");
    let pen = Pen::start(&["-d", "-g", &path], &[a.spec()]);
    assert_eq!(pen.ask_from(2), "A");
    let stderr = pen.stderr_text();
    assert!(
        stderr.contains(&format!("GeoIP: {path} (GeoLite2-Country)")),
        "{stderr}"
    );
    pen.finish();
}

#[test]
fn a_missing_or_broken_database_stops_pen_naming_the_file() {
    let dir = TempDir::new("geo");
    let junk = dir.join("junk.mmdb");
    std::fs::write(&junk, b"this is not a MaxMind database").unwrap();
    let junk = junk.display().to_string();
    let missing = dir.join("missing.mmdb").display().to_string();
    for (file, why) in [(&missing, "No such file"), (&junk, "not a MaxMind DB")] {
        // pen stops before it binds: the port is never used.
        let listen = format!("127.0.0.1:{}", free_port([127, 0, 0, 1].into()));
        let out = run_pen(
            &["-f", "-g", file, &listen, "127.0.0.1:9"],
            Duration::from_secs(5),
        );
        assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("pen: GeoIP database {file}: "))
                && out.stderr.contains(why),
            "{}",
            out.stderr
        );
    }
}

/// `acl N permit|deny country CC` end to end: `-g` at startup, then the `geoip` command to
/// switch databases at run time (a bad file keeps the one in use).
#[test]
fn country_access_lists_permit_and_deny_by_the_database() {
    let dir = TempDir::new("geo");
    let path = write_db(&dir);
    let (a, abuse) = (Backend::named("A"), Backend::named("abuse"));
    let c = support::control::Controlled::start(
        &[
            "-g",
            &path,
            "-B",
            &abuse.spec(),
            "-o",
            "acl 1 deny country NO",
            "-o",
            "client_acl 1",
            "-o",
            &format!("control_files {}", dir.path().display()),
        ],
        &[a.spec()],
    );
    assert_eq!(
        c.pen.ask_from(3),
        "A",
        "127.0.0.3 is SE: the deny-only list permits it"
    );
    assert_eq!(c.pen.ask_from(2), "abuse", "127.0.0.2 is NO: denied");
    // permit-only: only NO gets in; everyone else is denied.
    assert_eq!(c.ctl("no acl 1"), "");
    assert_eq!(c.ctl("acl 1 permit country no"), "");
    assert_eq!(c.pen.ask_from(2), "A");
    assert_eq!(c.pen.ask_from(3), "abuse");
    // The database in use, a bad replacement refused, then none: no client has a country.
    assert_eq!(c.ctl("geoip"), format!("{path}\n"));
    let junk = dir.join("junk.mmdb");
    std::fs::write(&junk, b"not a database").unwrap();
    let reply = c.ctl(&format!("geoip {}", junk.display()));
    assert!(
        reply.starts_with("geoip:") && reply.contains("junk.mmdb"),
        "{reply}"
    );
    assert_eq!(
        c.ctl("geoip"),
        format!("{path}\n"),
        "the old database stays"
    );
    assert_eq!(c.ctl("no geoip"), "");
    assert_eq!(c.ctl("geoip"), "");
    assert_eq!(
        c.pen.ask_from(2),
        "abuse",
        "no database: the permit entry matches nobody"
    );
    assert_eq!(c.ctl(&format!("geoip {path}")), format!("{path}\n"));
    assert_eq!(c.pen.ask_from(2), "A");
    c.pen.finish();
}
