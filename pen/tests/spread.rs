//! How the data-plane threads share new clients (`engine::spread`, whose policy is unit-tested):
//! every thread waits on the one listening socket, and a thread that has accepted clearly more
//! than its share hands the next client to the thread with the fewest connections.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::*;

#[test]
fn clients_arriving_one_by_one_are_handed_on_and_all_served() {
    // One at a time, each client finds both threads asleep, and the kernel wakes the first that
    // waits on the listener for each: it accepts them all, and hands on about every other one
    // once it is past its share. (When the other thread happens to be the one awake, it accepts
    // that client itself, so the count of hand-overs is a range.)
    const CLIENTS: u8 = 30;
    let a = Backend::echo();
    let pen = Pen::spawn(Listen::V4, &["env", "PEN_THREADS=2"], |l| {
        vec![
            "-f".to_string(),
            "-d".to_string(),
            "-d".to_string(),
            l.to_string(),
            a.spec(),
        ]
    });
    let held: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let mut s = pen.connect_from(2 + n);
            echoes(&mut s, n);
            s
        })
        .collect();
    let handed = |stderr: &str| {
        stderr
            .lines()
            .filter(|l| l.contains("handed to data-plane thread"))
            .count()
    };
    let stderr = pen.stderr_text();
    let n = handed(&stderr);
    assert!(
        (3..=usize::from(CLIENTS) / 2 + 1).contains(&n),
        "{n} of {CLIENTS} clients handed on:\n{stderr}"
    );
    // The handed clients' connections are whole: each still relays, both ways.
    for (n, mut s) in (0..CLIENTS).zip(held) {
        echoes(&mut s, n);
    }
    // And the threads take new clients once those have gone.
    for n in 0..CLIENTS {
        echoes(&mut pen.connect_from(2 + n), n);
    }
    pen.finish();
}

/// Client `n`'s exchange through the echo backend comes back whole.
fn echoes(s: &mut TcpStream, n: u8) {
    let line = format!("client {n}\n");
    s.write_all(line.as_bytes()).expect("write");
    let mut back = vec![0u8; line.len()];
    s.read_exact(&mut back).expect("the echo");
    assert_eq!(back, line.as_bytes(), "client {n}");
}
