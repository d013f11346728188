//! Catalogue L1 and D1 (reliability.md): sustained load in both directions, and a gigabyte each
//! way through one connection.
//!
//! L1: 64 clients from 64 addresses stream 1 MiB writes through pen to two echo backends and
//! read the echo at the same time, for `PEN_L1_SECS` seconds (10 by default; the catalogue's
//! full run is `PEN_L1_SECS=60 cargo test -p pen --test sustained`). Every echo is checked
//! byte for byte, pen's resident memory is sampled every second after the warm-up and must stay
//! within 10% (plus 1 MiB for the allocator's rounding), and pen's CPU must fall to nearly
//! nothing within a second of the last client's close.
//!
//! D1: 1 GiB up and 1 GiB down at the same time through one connection, written in chunks of
//! 1 byte to 1 MiB, with TCP_NODELAY (the default) and without it. Both ends check every
//! byte, and the server's byte counters equal what moved.
//!
//! The data is `support::stream`'s: checked byte for byte, cheaply.

mod support;

use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::control::Controlled;
use support::stream::{
    join_streamers, read_checked, streamer, write_stream, Data, End, Sizes, BLOCK,
};
use support::*;

const GIB: u64 = 1 << 30;

/// pen's resident memory each second from `from` until `until`.
fn sample_rss(pid: u32, from: Instant, until: Instant) -> Vec<u64> {
    thread::sleep(from.saturating_duration_since(Instant::now()));
    let mut samples = Vec::new();
    while Instant::now() < until && samples.len() < 3600 {
        samples.push(rss_kib(pid));
        thread::sleep(Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())));
    }
    samples
}

#[test]
fn sixty_four_clients_streaming_both_ways_are_echoed_exactly_with_flat_memory() {
    const CLIENTS: u8 = 64;
    const WARM_UP: Duration = Duration::from_secs(2);
    let run = secs_from_env("PEN_L1_SECS", 10).max(WARM_UP + Duration::from_secs(2));
    let (a, b) = (Backend::echo(), Backend::echo());
    let pen = Pen::start(&[], &[a.spec(), b.spec()]);
    let pid = pen.pid();
    let start = Instant::now();
    let deadline = start + run;
    let streamers = (0..CLIENTS)
        .map(|i| streamer(&pen, 100 + i, Data::new(1000 + u64::from(i)), deadline))
        .collect();
    let rss = sample_rss(pid, start + WARM_UP, deadline);
    let total = join_streamers(streamers);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "L1: {CLIENTS} clients, {:.0} MiB each way in {secs:.1} s ({:.0} MiB/s); pen RSS {rss:?} KiB",
        total as f64 / BLOCK as f64,
        total as f64 / BLOCK as f64 / secs
    );
    // What pen holds at a given moment varies by up to 64 KiB per connection and direction
    // (the bytes a full socket left over), so memory is judged by its trend: the second half
    // of the run peaks within 10% (plus 1 MiB) of the first half's peak.
    let (first, second) = rss.split_at(rss.len() / 2);
    let (first, second) = (first.iter().max().unwrap(), second.iter().max().unwrap());
    assert!(
        *second <= first + first / 10 + 1024,
        "pen's memory grew under steady load: {rss:?} KiB"
    );
    // Every connection has closed both ways: pen goes quiet.
    wait_until("pen's connections to close", Duration::from_secs(5), || {
        close_wait_sockets(pid).is_empty().then_some(())
    });
    thread::sleep(Duration::from_millis(200));
    let cpu = cpu_during(pid, || thread::sleep(Duration::from_secs(1)));
    assert!(
        cpu < 0.05,
        "pen used {cpu:.3} s of CPU in the second after the load"
    );
    pen.finish();
}

/// The backend's side of D1: reads the upload, checking it against `up`, while it sends `len`
/// bytes of `down` in chunks of 1 byte to 1 MiB, then half-closes.
fn exchanging_backend(up: Data, down: Data, len: u64) -> (Backend, mpsc::Receiver<End>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = Backend::tcp(move |s| {
        let mut reader = s.try_clone().expect("clone the server socket");
        reader.set_read_timeout(Some(IO_TIMEOUT));
        let check = up.clone();
        let read = thread::spawn(move || read_checked(&mut reader, &check));
        let mut writer = s;
        let mut sizes = Sizes(7);
        let _ = write_stream(&mut writer, &down, &mut || sizes.next(), &|pos| {
            (pos < len).then(|| usize::try_from(len - pos).unwrap_or(usize::MAX))
        });
        let _ = tx
            .lock()
            .unwrap()
            .send(read.join().expect("backend reader"));
    });
    (backend, rx)
}

#[test]
fn a_gigabyte_each_way_at_once_arrives_exactly_with_and_without_tcp_nodelay() {
    let len = GIB;
    for (round, opts) in [vec![], vec!["-o", "no tcp_nodelay"]]
        .into_iter()
        .enumerate()
    {
        let (up, down) = (Data::new(1), Data::new(2));
        let (backend, uploads) = exchanging_backend(up.clone(), down.clone(), len);
        let c = Controlled::start(&opts, &[backend.spec()]);
        let started = Instant::now();
        let s = Stream::Tcp(c.pen.connect_from(20 + round as u8));
        let mut reader = s.try_clone().unwrap();
        reader.set_read_timeout(Some(IO_TIMEOUT));
        let read = thread::spawn(move || read_checked(&mut reader, &down));
        let mut writer = s;
        let mut sizes = Sizes(11);
        let written = write_stream(&mut writer, &up, &mut || sizes.next(), &|pos| {
            (pos < len).then(|| usize::try_from(len - pos).unwrap_or(usize::MAX))
        })
        .expect("the upload");
        assert_eq!(written, len);
        assert_eq!(
            read.join().unwrap(),
            End::Eof(len),
            "{opts:?}: the download"
        );
        let got_up = uploads
            .recv_timeout(Duration::from_secs(60))
            .expect("the backend's word on the upload");
        assert_eq!(got_up, End::Eof(len), "{opts:?}: the upload");
        eprintln!(
            "D1 {opts:?}: 1 GiB each way in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // O3: the server's counters equal what moved (pen counts a byte as it reads it).
        wait_until(
            "the counters to equal 1 GiB each way",
            Duration::from_secs(5),
            || {
                let server = &c.snapshot().servers[0];
                (server.sent == len && server.received == len).then_some(())
            },
        );
        c.pen.finish();
    }
}

/// The check the tests above rely on finds a changed byte, a lost one and a repeated stretch,
/// at the right position, and accepts the stream read in any split.
#[test]
fn the_stream_check_finds_a_changed_lost_or_repeated_byte() {
    let data = Data::new(5);
    let pieces = [1, 4095, BLOCK, BLOCK - 3, BLOCK + 79];
    let mut stream = vec![0u8; pieces.iter().sum()];
    data.fill(0, &mut stream);
    let mut pos = 0;
    for (i, n) in pieces.into_iter().enumerate() {
        assert_eq!(
            data.first_difference(pos as u64, &stream[pos..pos + n]),
            None,
            "piece {i}"
        );
        pos += n;
    }
    let mut changed = stream.clone();
    changed[BLOCK + 5] ^= 1;
    assert_eq!(data.first_difference(0, &changed), Some(BLOCK as u64 + 5));
    let mut lost = stream.clone();
    lost.remove(2 * BLOCK);
    assert!(data.first_difference(0, &lost).is_some());
    // The second block-sized stretch again instead of the third: a stretch never repeats.
    let mut repeated = stream[..2 * BLOCK].to_vec();
    repeated.extend_from_slice(&stream[BLOCK..2 * BLOCK]);
    assert_eq!(data.first_difference(0, &repeated), Some(2 * BLOCK as u64));
    // Another seed is another stream.
    assert_eq!(Data::new(6).first_difference(0, &stream[..4096]), Some(0));
}
