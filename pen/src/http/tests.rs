//! The rewriter against pen's transcript cases (T11), the malformed and split cases of the
//! reliability catalogue (B11 a-i, S11), and body framing.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21));

fn rewriter(mode: XffMode) -> Rewriter {
    Rewriter::new(Some(CLIENT), Proto::Http, mode)
}

/// Feed `chunks` one read at a time; the bytes sent, or the rejection.
fn run_with(mut r: Rewriter, chunks: &[&[u8]]) -> Result<Vec<u8>, Rejected> {
    let mut out = Vec::new();
    for c in chunks {
        r.feed(c, &mut out)?;
    }
    r.finish(&mut out);
    Ok(out)
}

fn run(chunks: &[&[u8]]) -> Result<Vec<u8>, Rejected> {
    run_with(rewriter(XffMode::Append), chunks)
}

fn one(input: &[u8]) -> String {
    String::from_utf8(run(&[input]).expect("accepted")).unwrap()
}

/// Every way of cutting `input` in two and in three gives the same bytes as one read.
fn same_however_split(input: &[u8]) -> Vec<u8> {
    let whole = run(&[input]).expect("accepted in one read");
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        assert_eq!(run(&[a, b]).unwrap(), whole, "split at {i}");
    }
    let step = (input.len() / 40).max(1);
    for i in (0..input.len()).step_by(step) {
        for j in (i..input.len()).step_by(step) {
            let (a, rest) = input.split_at(i);
            let (b, c) = rest.split_at(j - i);
            assert_eq!(run(&[a, b, c]).unwrap(), whole, "split at {i} and {j}");
        }
    }
    whole
}

#[test]
fn a_request_gets_proto_then_for_before_the_blank_line_as_pen_does() {
    assert_eq!(
        one(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"),
        "GET /one HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: http\r\nX-Forwarded-For: 127.0.0.21\r\n\r\n"
    );
}

#[test]
fn every_request_of_a_keep_alive_or_pipelined_connection_is_rewritten() {
    let req = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n";
    let want = "GET /p HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: http\r\nX-Forwarded-For: 127.0.0.21\r\n\r\n";
    let two = run(&[req, req]).unwrap();
    assert_eq!(String::from_utf8(two).unwrap(), want.repeat(2));
    let pipelined = [&req[..], &req[..], &req[..]].concat();
    assert_eq!(one(&pipelined), want.repeat(3), "B11 (e): pipelined");
}

#[test]
fn a_head_split_over_reads_is_rewritten_once_complete() {
    // B11 (a) and T11 #5: pen passed split heads through unrewritten.
    let out = same_however_split(b"GET /split HTTP/1.0\r\nHost: x\r\nAccept: */*\r\n\r\n");
    assert!(String::from_utf8(out).unwrap().ends_with(
        "Accept: */*\r\nX-Forwarded-Proto: http\r\nX-Forwarded-For: 127.0.0.21\r\n\r\n"
    ));
}

#[test]
fn lf_only_heads_get_lf_lines_and_their_bodies_are_untouched() {
    // B11 (b) and (c): the body holds a blank line and an X-Forwarded-For line.
    let body = b"a\r\n\r\nX-Forwarded-For: 6.6.6.6\r\n\nz";
    let req = [
        format!(
            "post /lower HTTP/1.0\nHost: x\nContent-Length: {}\n\n",
            body.len()
        )
        .as_bytes(),
        body,
    ]
    .concat();
    let out = same_however_split(&req);
    let want = [
        format!(
            "post /lower HTTP/1.0\nHost: x\nContent-Length: {}\nX-Forwarded-Proto: http\nX-Forwarded-For: 127.0.0.21\n\n",
            body.len()
        )
        .as_bytes(),
        body,
    ]
    .concat();
    assert_eq!(out, want);
}

#[test]
fn any_method_is_rewritten() {
    // B11 (d); pen only rewrote GET, POST and HEAD.
    for method in ["put", "DELETE", "OPTIONS", "PATCH", "PROPFIND"] {
        let out = one(format!("{method} / HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert!(
            out.contains("X-Forwarded-For: 127.0.0.21\r\n"),
            "{method}: {out}"
        );
    }
}

#[test]
fn a_client_cannot_spoof_its_address_or_scheme_in_append_mode() {
    // S11: the backend sees "6.6.6.6, 127.0.0.21", never only the spoofed address.
    assert_eq!(
        one(b"GET / HTTP/1.1\r\nx-forwarded-for: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nHost: x\r\n\r\n"),
        "GET / HTTP/1.1\r\nx-forwarded-for: 6.6.6.6, 127.0.0.21\r\nHost: x\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
    // Several X-Forwarded-For lines are one list: the last one is extended.
    assert_eq!(
        one(b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2  \r\n\r\n"),
        "GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 127.0.0.21  \r\nX-Forwarded-Proto: http\r\n\r\n"
    );
    assert_eq!(
        one(b"GET / HTTP/1.1\r\nX-Forwarded-For:\r\n\r\n"),
        "GET / HTTP/1.1\r\nX-Forwarded-For: 127.0.0.21\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
}

#[test]
fn keep_mode_is_pen_0_34_1() {
    // T11 #4 and #7: a header the client sent is kept and not added again.
    let keep = |input: &[u8]| {
        String::from_utf8(run_with(rewriter(XffMode::Keep), &[input]).unwrap()).unwrap()
    };
    assert_eq!(
        keep(b"GET /xff HTTP/1.0\r\nx-forwarded-for: 9.9.9.9\r\n\r\n"),
        "GET /xff HTTP/1.0\r\nx-forwarded-for: 9.9.9.9\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
    assert_eq!(
        keep(b"GET /proto HTTP/1.0\r\nX-Forwarded-Proto: https\r\n\r\n"),
        "GET /proto HTTP/1.0\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 127.0.0.21\r\n\r\n"
    );
}

#[test]
fn bodies_pass_byte_for_byte_and_the_next_request_is_found_after_them() {
    // A body that looks like a request head must not be rewritten.
    let fake = b"GET /fake HTTP/1.1\r\nHost: y\r\n\r\n";
    let first = [
        format!("POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n", fake.len()).as_bytes(),
        fake,
    ]
    .concat();
    let second = b"GET /b HTTP/1.1\r\n\r\n";
    let out = same_however_split(&[&first[..], second].concat());
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("X-Forwarded-For").count(), 2, "{text}");
    assert!(text.contains("\r\n\r\nGET /fake HTTP/1.1\r\nHost: y\r\n\r\nGET /b HTTP/1.1\r\n"));
}

#[test]
fn chunked_bodies_with_extensions_and_trailers_are_followed() {
    let body = b"5;ext=1\r\nhello\r\n10\r\nGET / HTTP/1.1\r\n\r\n0\r\nTrailer: x\r\n\r\n";
    let input = [
        &b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        body,
        b"GET /next HTTP/1.1\r\n\r\n",
    ]
    .concat();
    let out = same_however_split(&input);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("X-Forwarded-For").count(), 2, "{text}");
    let body_at = text.find("\r\n\r\n").unwrap() + 4;
    assert!(text[body_at..].starts_with(std::str::from_utf8(body).unwrap()));
}

#[test]
fn ambiguous_or_broken_framing_is_refused() {
    let refused = [
        &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3x\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
    ];
    for input in refused {
        assert!(
            run(&[input]).is_err(),
            "{:?} should be refused",
            String::from_utf8_lossy(input)
        );
    }
    let same = one(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok");
    assert!(same.ends_with("\r\n\r\nok"), "{same}");
}

#[test]
fn malformed_heads_are_refused_never_corrupted() {
    // B11 (h) empty header name, (i) NUL in a header, and other broken heads after a valid
    // request line: the connection is closed, nothing of that request is sent.
    for input in [
        &b"GET / HTTP/1.1\r\n: empty\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nFolded: a\r\n b\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 \r\n\r\n",
    ] {
        let mut r = rewriter(XffMode::Append);
        let mut out = Vec::new();
        assert!(
            r.feed(input, &mut out).is_err(),
            "{:?}",
            String::from_utf8_lossy(input)
        );
        assert!(out.is_empty(), "nothing of a refused request is sent");
    }
    // A bad second request: the first one went through, the bad one is not sent.
    let mut r = rewriter(XffMode::Append);
    let mut out = Vec::new();
    let input = b"GET /ok HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n: x\r\n\r\n";
    assert!(r.feed(input, &mut out).is_err());
    assert!(String::from_utf8(out)
        .unwrap()
        .ends_with("127.0.0.21\r\n\r\n"));
}

#[test]
fn heads_over_the_limit_are_refused_and_a_large_first_read_is_fine() {
    // B11 (f): more than MAX_HEAD bytes of header.
    let mut big = b"GET / HTTP/1.1\r\n".to_vec();
    let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
    while big.len() <= MAX_HEAD {
        big.extend_from_slice(filler.as_bytes());
    }
    assert_eq!(run(&[&big]), Err(Rejected::HeadTooLarge));
    // Complete, but too large all the same.
    assert_eq!(run(&[&big, b"\r\n"]), Err(Rejected::HeadTooLarge));
    let halves = big.split_at(big.len() / 2);
    assert_eq!(run(&[halves.0, halves.1]), Err(Rejected::HeadTooLarge));
    // A request line that never ends is HTTP too large, not another protocol.
    let mut line = b"GET /".to_vec();
    line.resize(MAX_HEAD + 10, b'a');
    assert_eq!(run(&[&line]), Err(Rejected::HeadTooLarge));
    // B11 (g): a first read of exactly 32768 bytes starting "GET ", then the end of the head.
    let mut first = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    first.resize(32768, b'b');
    let out = run(&[&first, b"\r\n\r\n"]).unwrap();
    assert_eq!(&out[..32768], &first[..]);
    assert!(out.ends_with(b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-For: 127.0.0.21\r\n\r\n"));
}

#[test]
fn other_protocols_pass_through_untouched() {
    let cases: [&[u8]; 5] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03GET / HTTP/1.1\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\nGET / HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"EHLO mail.example\r\nMAIL FROM:<a@b>\r\n",
        b"PING\r\n",
    ];
    for input in cases {
        assert_eq!(
            run(&[input]).unwrap(),
            input,
            "{:?}",
            String::from_utf8_lossy(input)
        );
        let (a, b) = input.split_at(3);
        // Passed on as soon as its first line ends: a protocol whose client then waits for an
        // answer must not hang.
        let mut r = rewriter(XffMode::Append);
        let mut out = Vec::new();
        for byte in input.chunks(1) {
            r.feed(byte, &mut out).unwrap();
        }
        assert_eq!(
            out,
            input,
            "held back: {:?}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(
            run(&[a, b, b"GET / HTTP/1.1\r\n\r\n"]).unwrap(),
            [input, b"GET / HTTP/1.1\r\n\r\n"].concat()
        );
    }
}

#[test]
fn after_connect_or_an_upgrade_the_connection_is_a_tunnel() {
    let ws = b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n";
    let frames = b"\x81\x05hello GET / HTTP/1.1\r\n\r\n";
    let out = run(&[ws, frames]).unwrap();
    assert!(out.ends_with(frames));
    assert_eq!(
        String::from_utf8_lossy(&out)
            .matches("X-Forwarded-For")
            .count(),
        1
    );
    let out = run(&[b"CONNECT host:443 HTTP/1.1\r\n\r\n", b"\x16\x03\x01"]).unwrap();
    assert!(out.ends_with(b"127.0.0.21\r\n\r\n\x16\x03\x01"));
}

#[test]
fn a_refused_upgrade_cannot_smuggle_an_unrewritten_request() {
    // The server answered the upgrade request with an error and kept the connection: the next
    // request is HTTP again, and gets rewritten like any other.
    let ws = b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    let next = b"GET /admin HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n";
    let out = String::from_utf8(run(&[ws, next]).unwrap()).unwrap();
    assert!(
        out.contains("X-Forwarded-For: 10.0.0.1, 127.0.0.21\r\n"),
        "{out}"
    );
    let out = String::from_utf8(run(&[&[&ws[..], &next[..]].concat()]).unwrap()).unwrap();
    assert!(
        out.contains("X-Forwarded-For: 10.0.0.1, 127.0.0.21\r\n"),
        "{out}"
    );
}

#[test]
fn proto_and_client_address_forms() {
    let mut out = Vec::new();
    let mut r = Rewriter::new(Some("::1".parse().unwrap()), Proto::Https, XffMode::Append);
    r.feed(b"GET / HTTP/1.1\r\n\r\n", &mut out).unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .ends_with("X-Forwarded-Proto: https\r\nX-Forwarded-For: ::1\r\n\r\n"));
    let mut out = Vec::new();
    let mut r = Rewriter::new(None, Proto::Http, XffMode::Append);
    r.feed(b"GET / HTTP/1.1\r\n\r\n", &mut out).unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("X-Forwarded-For: unknown\r\n"));
}

#[test]
fn bytes_held_back_at_eof_are_sent_unchanged() {
    assert_eq!(
        run(&[b"GET / HTTP/1.1\r\nHost"]).unwrap(),
        b"GET / HTTP/1.1\r\nHost"
    );
    let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let out = run(&[chunked, b"1f"]).unwrap();
    assert!(out.ends_with(b"\r\n\r\n1f"));
}

#[test]
fn leading_blank_lines_between_requests_pass_through() {
    let out = one(b"\r\nGET / HTTP/1.1\r\n\r\n");
    assert!(
        out.starts_with("\r\nGET / HTTP/1.1\r\nX-Forwarded-Proto"),
        "{out}"
    );
}

#[test]
fn a_first_line_is_judged_whole_however_it_is_split() {
    // Found by the xff_rewriter fuzz target: "GET\t/" or " GET" fail httparse at once, and cut
    // before "HTTP/1.1" the piece did not look like HTTP, so the whole connection was passed
    // through unrewritten; in one read it is refused.
    let next = b"GET /admin HTTP/1.1\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n";
    for (first, rest) in [
        (&b"GET\t"[..], &b"/ HTTP/1.1\r\n\r\n"[..]),
        (b" ", b"GET / HTTP/1.1\r\n\r\n"),
        (b"FOO  ", b"/ HTTP/1.1\r\n\r\n"),
    ] {
        let whole = [first, rest, next].concat();
        assert!(matches!(run(&[&whole]), Err(Rejected::Malformed(_))));
        assert_eq!(run(&[first, rest, next]), run(&[&whole]), "{first:?}");
    }
    // And the other way round: a line of text naming HTTP/1.1 was refused at once, though a
    // control byte later in the line makes it another protocol, passed through in one read.
    let (first, rest) = (&b"FOO / HTTP/1.1 x"[..], &b"\x01\r\n\r\n"[..]);
    let whole = [first, rest, next].concat();
    assert_eq!(run(&[&whole]).unwrap(), whole);
    assert_eq!(run(&[first, rest, next]), run(&[&whole]));
    // An undecided piece is held like a partial head: passed on unchanged at EOF.
    assert_eq!(run(&[b"FETCH\t/x"]).unwrap(), b"FETCH\t/x");
    // Another protocol is still recognised at its first byte.
    let mut r = rewriter(XffMode::Append);
    let mut out = Vec::new();
    r.feed(b"\x16\x03", &mut out).unwrap();
    assert_eq!(out, b"\x16\x03");
}

#[test]
fn chunk_size_lines_need_a_digit_and_fit_the_limit_in_any_read() {
    // Found by the xff_rewriter fuzz target. httparse reads a line with no digits as the last
    // chunk; RFC 9112 refuses it.
    let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    for line in [&b"\r\n"[..], b";ext\r\n", b" \r\n", b"\t;x\r\n"] {
        let input = [&head[..], line, b"\r\nGET / HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(run(&[&input]), Err(Rejected::BadChunk), "{line:?}");
    }
    // A chunk-size line over MAX_CHUNK_LINE was refused when it came in pieces but not when
    // it came in one read.
    let mut line = b"1;".to_vec();
    line.resize(MAX_CHUNK_LINE + 10, b'e');
    line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    let input = [&head[..], &line].concat();
    assert_eq!(run(&[&input]), Err(Rejected::BadChunk));
    let (a, b) = input.split_at(head.len() + 100);
    assert_eq!(run(&[a, b]), Err(Rejected::BadChunk));
}

#[test]
fn an_upgrade_request_with_a_body_cannot_smuggle_the_next_request() {
    // Found by the xff_rewriter fuzz target. A server that ignores Upgrade reads the body and
    // then the next request; pen took the body for the new protocol and passed everything
    // after it through, a spoofed X-Forwarded-For included.
    let body = b"hello\r\n\r\n";
    let upgrade = format!(
        "POST / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let next = b"GET /admin HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n";
    let input = [upgrade.as_bytes(), body, next].concat();
    let out = String::from_utf8(same_however_split(&input)).unwrap();
    assert!(
        out.ends_with("X-Forwarded-For: 10.0.0.1, 127.0.0.21\r\nX-Forwarded-Proto: http\r\n\r\n"),
        "{out}"
    );
    // After the body, the new protocol still passes untouched.
    let chunked = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let frames = b"\x81\x05hello";
    let out = run(&[chunked, frames]).unwrap();
    assert!(out.ends_with(b"0\r\n\r\n\x81\x05hello"));
}

#[test]
fn only_the_first_max_head_bytes_decide() {
    // Found by the xff_rewriter fuzz target: a first line of MAX_HEAD token bytes then a
    // newline was "another protocol" (passed through) in one read, but "too large" when the
    // limit was reached before the newline arrived.
    let mut line = vec![b'`'; MAX_HEAD + 10];
    line.push(b'\n');
    assert_eq!(run(&[&line]), Err(Rejected::HeadTooLarge));
    let (a, b) = line.split_at(MAX_HEAD + 1);
    assert_eq!(run(&[a, b]), Err(Rejected::HeadTooLarge));
}

#[test]
fn a_target_with_bytes_above_ascii_is_rewritten_whatever_the_method() {
    // Raw UTF-8 in a path (WebDAV clients send it): a lenient server takes these requests, so
    // they must not pass unrewritten with the client's own X-Forwarded-For.
    for method in ["GET", "PROPFIND"] {
        let input = format!("{method} /caf\u{e9} HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n");
        let out = String::from_utf8(same_however_split(input.as_bytes())).unwrap();
        assert!(
            out.contains("X-Forwarded-For: 1.2.3.4, 127.0.0.21\r\n"),
            "{out}"
        );
    }
}

#[test]
fn a_head_sent_a_byte_at_a_time_is_judged_as_in_one_read() {
    // A long first line, then headers, one byte per read (the rewriter keeps what it learnt
    // of the held bytes instead of searching them again on every read).
    let mut head = b"GET /".to_vec();
    head.resize(40_000, b'a');
    head.extend_from_slice(
        b" HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 9.9.9.9\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    );
    let bytes: Vec<&[u8]> = head.chunks(1).collect();
    assert_eq!(run(&bytes), run(&[&head]));
    assert!(run(&[&head])
        .unwrap()
        .ends_with(b"X-Forwarded-For: 127.0.0.21\r\n\r\n"));
    let mut line = b"GET /".to_vec();
    line.resize(MAX_HEAD + 10, b'a');
    let bytes: Vec<&[u8]> = line.chunks(1).collect();
    assert_eq!(run(&bytes), Err(Rejected::HeadTooLarge));
}
