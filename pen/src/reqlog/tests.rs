//! The request log: records, rotation, destinations and the writer thread.

use super::*;

fn temp_path(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("pen-reqlog-{tag}-{}-{nanos:x}", std::process::id()))
}

#[test]
fn targets_are_classified_as_pen_does() {
    assert_eq!(
        LogTarget::parse("/var/log/pen:x.log").unwrap(),
        LogTarget::File("/var/log/pen:x.log".into())
    );
    assert_eq!(
        LogTarget::parse("pen.log").unwrap(),
        LogTarget::File("pen.log".into())
    );
    let net = LogTarget::parse("127.0.0.1:10080").unwrap();
    assert_eq!(net.to_string(), "127.0.0.1:10080");
    assert!(matches!(net, LogTarget::Net { addr, .. } if addr.port() == 10080));
    let v6 = LogTarget::parse("[::1]:514").unwrap();
    assert_eq!(v6.to_string(), "[::1]:514");
    assert_eq!(LogTarget::parse("::1:514").unwrap(), v6);
    for bad in ["x:y", "127.0.0.1:0", "127.0.0.1:", ":80", "[::1]80", ""] {
        assert!(LogTarget::parse(bad).is_err(), "{bad}");
    }
    let e = LogTarget::parse("no.such.host.invalid:80").unwrap_err();
    assert!(e.to_string().contains("no.such.host.invalid"), "{e}");
}

#[test]
fn file_log_is_written_promptly_rotated_and_stopped() {
    let path = temp_path("file");
    let rotated = path.with_extension("1");
    let log = RequestLog::new();
    assert!(log.target().is_none());
    log.set(LogTarget::File(path.clone())).unwrap();
    let tap = log.tap(
        Some("10.0.0.1".parse().unwrap()),
        Some("::1".parse().unwrap()),
    );
    tap.chunk(b"GET /one HTTP/1.0\r\nHost: x\r\n\r\n");
    // Prompt: visible without HUP or exit.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read(&path).map_or(0, |b| b.len()) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::rename(&path, &rotated).unwrap();
    tap.chunk(b"GET /two HTTP/1.0\r\n");
    log.reopen().unwrap();
    tap.chunk(b"GET /three HTTP/1.0\r\n");
    log.stop();
    tap.chunk(b"GET /four HTTP/1.0\r\n");
    assert!(log.target().is_none());
    log.close();
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
    let requests = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| {
                let f = FileLine::parse(l.as_bytes()).unwrap();
                assert_eq!((f.client, f.server), (&b"10.0.0.1"[..], &b"::1"[..]));
                String::from_utf8_lossy(f.request).into_owned()
            })
            .collect()
    };
    assert_eq!(requests(&old), ["GET /one HTTP/1.0", "GET /two HTTP/1.0"]);
    assert_eq!(requests(&new), ["GET /three HTTP/1.0"]);
}

#[test]
fn network_log_sends_pen_records_and_stop_stops_it() {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    let log = RequestLog::new();
    log.set(LogTarget::parse(&to.to_string()).unwrap()).unwrap();
    assert_eq!(log.target().unwrap().to_string(), to.to_string());
    let tap = log.tap(
        Some("127.0.0.31".parse().unwrap()),
        Some("127.0.0.1".parse().unwrap()),
    );
    tap.chunk(b"GET /netlog HTTP/1.0\r\n\r\n");
    let mut buf = [0u8; 2048];
    let n = receiver.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+ 127.0.0.31 127.0.0.1 GET /netlog HTTP/1.0\n");
    // `no log` stops the network log too (pen 0.34.1's B9).
    log.stop();
    tap.chunk(b"GET /after HTTP/1.0\r\n");
    log.close();
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(receiver.recv(&mut buf).is_err(), "a record after `no log`");
}

#[test]
fn files_are_not_written_through_symlinks() {
    let target = temp_path("victim");
    let link = temp_path("link");
    std::fs::write(&target, b"").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = RequestLog::new()
        .set(LogTarget::File(link.clone()))
        .unwrap_err();
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_file(&target);
    assert!(e.to_string().contains(&link.display().to_string()), "{e}");
}

#[test]
fn a_log_that_is_off_costs_no_thread() {
    let log = RequestLog::new();
    log.tap(None, None).chunk(b"GET / HTTP/1.0\r\n");
    assert!(log.inner.tx.get().is_none());
    assert!(lock(&log.inner.state).writer.is_none());
}
