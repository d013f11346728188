//! Load for penlogd: `penlogd_load PORT LINES RATE [THREADS]` sends LINES pairs of datagrams
//! to 127.0.0.1:PORT, a pen record and then the web line it matches, at RATE web lines a second
//! in all (each of THREADS senders, default 2, paced in 1 ms steps), and prints the rate it
//! achieved. See tests/bench/logtools.sh.

use std::io::Write;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn send(port: u64, first: u64, step: u64, lines: u64, rate: u64) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = format!("127.0.0.1:{port}");
    let start = Instant::now();
    let per_ms = (rate / 1000).max(1);
    let (mut record, mut line) = (Vec::with_capacity(128), Vec::with_capacity(256));
    let mut sent = 0u64;
    let mut i = first;
    while i < lines {
        let due = start + Duration::from_millis(sent / per_ms);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        for _ in 0..per_ms {
            if i >= lines {
                break;
            }
            record.clear();
            line.clear();
            let _ = writeln!(
                record,
                "+ 198.51.{}.{} 127.0.0.1 GET /item/{i} HTTP/1.1",
                i / 250 % 250,
                i % 250 + 1
            );
            let _ = writeln!(
                line,
                "127.0.0.1 - - [22/Nov/2026:08:00:00 +0000] \"GET /item/{i} HTTP/1.1\" 200 512 \"-\" \"load/1.0\""
            );
            socket.send_to(&record, &to).expect("send");
            socket.send_to(&line, &to).expect("send");
            sent += 1;
            i += step;
        }
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or(0))
        .collect();
    let (port, lines, rate) = match args[..] {
        [p, l, r] | [p, l, r, _] => (p, l, r),
        _ => {
            eprintln!("usage: penlogd_load PORT LINES RATE [THREADS]");
            std::process::exit(1);
        }
    };
    let threads = args.get(3).copied().unwrap_or(2).max(1);
    let start = Instant::now();
    let senders: Vec<_> = (0..threads)
        .map(|t| std::thread::spawn(move || send(port, t, threads, lines, rate / threads)))
        .collect();
    for s in senders {
        let _ = s.join();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {lines} web lines (and as many pen records) in {secs:.2} s: {:.0} lines/s",
        lines as f64 / secs
    );
}
