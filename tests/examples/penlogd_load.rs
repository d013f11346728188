//! Load for penlogd: `penlogd_load PORT LINES RATE` sends LINES pairs of datagrams to
//! 127.0.0.1:PORT, a pen record and then the web line it matches, at RATE web lines a second
//! (paced in 1 ms steps), and prints the rate it achieved. See tests/bench/logtools.sh.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or(0))
        .collect();
    let [port, lines, rate] = args[..] else {
        eprintln!("usage: penlogd_load PORT LINES RATE");
        std::process::exit(1);
    };
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = format!("127.0.0.1:{port}");
    let start = Instant::now();
    let per_ms = (rate / 1000).max(1);
    let mut sent = 0u64;
    let mut record = Vec::with_capacity(128);
    let mut line = Vec::with_capacity(256);
    while sent < lines {
        let due = start + Duration::from_millis(sent / per_ms);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        for _ in 0..per_ms.min(lines - sent) {
            let i = sent;
            record.clear();
            line.clear();
            use std::io::Write;
            let _ = write!(
                record,
                "+ 198.51.{}.{} 127.0.0.1 GET /item/{i} HTTP/1.1\n",
                i / 250 % 250,
                i % 250 + 1
            );
            let _ = write!(
                line,
                "127.0.0.1 - - [22/Nov/2026:08:00:00 +0000] \"GET /item/{i} HTTP/1.1\" 200 512 \"-\" \"load/1.0\"\n"
            );
            socket.send_to(&record, &to).expect("send");
            socket.send_to(&line, &to).expect("send");
            sent += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("sent {sent} web lines (and as many pen records) in {secs:.2} s: {:.0} lines/s", sent as f64 / secs);
}
