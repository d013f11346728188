//! The fuzz targets on stable Rust (reliability catalogue §4.3): every input of the committed
//! corpus (`tests/fuzz/corpus/<target>/`) is replayed, then mutated for a bounded number of
//! rounds and time. libFuzzer (`tests/fuzz`, nightly) explores far more; this keeps what it
//! found, and the invariants, checked on every run.
//!
//! The mutations are seeded from the target's name, so a failure repeats; `PEN_FUZZ_SEED`
//! changes the seed and `PEN_FUZZ_ROUNDS` the number of mutated inputs per target. A failing
//! input is written to `target/fuzz-failures/` and named in the panic message.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pen_crosstests::fuzz::{Target, TARGETS};

/// Mutated inputs per target, unless `PEN_FUZZ_ROUNDS` says otherwise.
const ROUNDS: u64 = 4_000;
/// Wall-clock budget per target for the mutated inputs (the corpus always runs in full).
const BUDGET: Duration = Duration::from_secs(4);
/// Longest mutated input.
const MAX_LEN: usize = 4096;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The corpus of one target, in a stable order.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), data)
        })
        .collect()
}

/// xorshift64*: small, fast and reproducible; quality is beside the point here.
struct Rng(u64);

impl Rng {
    fn seeded(name: &str, extra: u64) -> Rng {
        // FNV-1a of the name, so each target has its own sequence.
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ extra;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Rng(h | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that steer parsers: separators, digits, brackets, line ends, escapes, quotes.
const INTERESTING: &[u8] = b":[]/ \t\r\n0129-.%\"<>&'#\\\x00\x7f\xff";

/// One mutation of `input` (libFuzzer's cheaper ones), using `others` for splicing.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, others: &[(String, Vec<u8>)]) {
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = rng.next() as u8;
        }
        2 => {
            let i = rng.below(len + 1);
            input.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            input.drain(start..end);
        }
        4 if len > 0 => {
            // Repeat a slice: long fields, many fields, deep nesting.
            let start = rng.below(len);
            let end = (start + 1 + rng.below(32)).min(len);
            let copy = input[start..end].repeat(1 + rng.below(8));
            let at = rng.below(len + 1);
            input.splice(at..at, copy);
        }
        5 if !others.is_empty() => {
            // Splice in a piece of another corpus entry.
            let other = &others[rng.below(others.len())].1;
            if !other.is_empty() {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(64)).min(other.len());
                let at = rng.below(len + 1);
                input.splice(at..at, other[start..end].iter().copied());
            }
        }
        6 if len > 0 => {
            // A digit run becomes a large or boundary number.
            const NUMBERS: &[&[u8]] = &[
                b"0",
                b"65535",
                b"65536",
                b"2147483647",
                b"4294967296",
                b"18446744073709551616",
                b"-1",
            ];
            let at = rng.below(len + 1);
            let n = NUMBERS[rng.below(NUMBERS.len())];
            input.splice(at..at, n.iter().copied());
        }
        7 if len > 1 => input.truncate(rng.below(len)),
        _ => {
            let at = rng.below(len + 1);
            input.insert(at, rng.next() as u8);
        }
    }
    input.truncate(MAX_LEN);
}

/// Run `target` on `data`; on a panic, keep the input and say where.
fn run_one(target: &Target, data: &[u8], what: &str) {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(data)));
    if let Err(cause) = outcome {
        let message = cause
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| cause.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{}-{:016x}", target.name, fnv(data)));
        let _ = std::fs::write(&file, data);
        panic!(
            "fuzz target {} failed on {what}: {message}\n  input ({} bytes): {:?}\n  saved as {}",
            target.name,
            data.len(),
            String::from_utf8_lossy(&data[..data.len().min(300)]),
            file.display()
        );
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Replay, then mutate, one target's corpus.
fn exercise(name: &str) {
    let target = pen_crosstests::fuzz::target(name).expect("a registered target");
    let seeds = corpus(name);
    assert!(
        !seeds.is_empty(),
        "{name}: the corpus in {} is empty",
        corpus_dir(name).display()
    );
    for (file, data) in &seeds {
        run_one(target, data, &format!("corpus file {file}"));
    }
    let rounds = env_u64("PEN_FUZZ_ROUNDS").unwrap_or(ROUNDS);
    let mut rng = Rng::seeded(name, env_u64("PEN_FUZZ_SEED").unwrap_or(0));
    let started = Instant::now();
    for round in 0..rounds {
        if started.elapsed() > BUDGET {
            break;
        }
        let mut input = seeds[rng.below(seeds.len())].1.clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, &seeds);
        }
        run_one(target, &input, &format!("mutated input {round}"));
    }
}

#[test]
fn every_target_has_a_corpus_and_a_libfuzzer_binary() {
    let targets_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for target in TARGETS {
        let bin = targets_dir.join(format!("{}.rs", target.name));
        assert!(bin.is_file(), "{} has no {}", target.name, bin.display());
        assert!(
            corpus_dir(target.name).is_dir(),
            "{} has no corpus",
            target.name
        );
    }
}

macro_rules! fuzz_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                exercise(stringify!($name));
            }
        )*
        #[test]
        fn every_target_is_tested() {
            let tested = [$(stringify!($name)),*];
            for target in TARGETS {
                assert!(tested.contains(&target.name), "{} has no test", target.name);
            }
        }
    };
}

fuzz_tests!(
    server_spec,
    listen_addr,
    command_line,
    config_file,
    control_stream,
    xff_rewriter,
    pen_log_line,
    web_log_line,
    timestamp,
    html_escape,
    log_escape,
);
