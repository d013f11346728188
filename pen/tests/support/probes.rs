//! What the tests read of a process from /proc: its sockets, descriptors, CPU time, memory
//! and signal dispositions.

use std::fs;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::*;

/// One row of /proc/PID/net/{tcp,tcp6,udp,udp6}, as the kernel writes it: addresses in its hex
/// form (`0100007F:1F90` for 127.0.0.1:8080), the state in hex (TCP: `0A` listening, `08`
/// CLOSE_WAIT).
#[derive(Debug, Clone)]
pub struct SocketRow {
    pub local: String,
    pub remote: String,
    pub state: String,
    pub inode: u64,
}

/// The sockets of protocol `proto` (`tcp` or `udp`; the IPv4 and IPv6 tables) of the network
/// namespace of process `pid`, so that a pen started in another namespace is seen too.
pub fn socket_rows(pid: u32, proto: &str) -> Vec<SocketRow> {
    [proto.to_string(), format!("{proto}6")]
        .iter()
        .filter_map(|t| fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    Some(SocketRow {
                        local: f.get(1)?.to_string(),
                        remote: f.get(2)?.to_string(),
                        state: f.get(3)?.to_string(),
                        inode: f.get(9)?.parse().ok()?,
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The kernel's hex form of an IPv4 socket address in /proc/net/tcp.
pub fn proc_tcp_addr(a: std::net::SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(a.ip().octets()),
        a.port()
    )
}

/// The TCP sockets process `pid` holds open in CLOSE_WAIT (the peer has closed, the process
/// has not), as "local remote" in the table's hex.
pub fn close_wait_sockets(pid: u32) -> Vec<String> {
    let mine = socket_inodes(pid);
    socket_rows(pid, "tcp")
        .into_iter()
        .filter(|r| r.state == "08" && mine.contains(&r.inode))
        .map(|r| format!("{} {}", r.local, r.remote))
        .collect()
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Whole seconds from the environment variable `name` (a long run's length, such as
/// `PEN_SOAK_SECS`), or `default`.
pub fn secs_from_env(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// User plus system CPU time the process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse().expect("utime");
    let stime: f64 = fields[12].parse().expect("stime");
    (utime + stime) / clock_ticks()
}

/// CPU seconds the process uses while `f` runs.
pub fn cpu_during(pid: u32, f: impl FnOnce()) -> f64 {
    let before = cpu_seconds(pid);
    f();
    cpu_seconds(pid) - before
}

/// Number of open descriptors of the process.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of the process (VmRSS), in KiB; 0 if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let v = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            v.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// The most a TCP socket's receive and send buffers can autotune to (the third fields of
/// `net.ipv4.tcp_rmem` and `tcp_wmem`), in bytes: what the kernel may hold for a socket whose
/// owner did not set a size. None if unreadable.
pub fn tcp_buffer_max() -> Option<(usize, usize)> {
    let max = |name: &str| -> Option<usize> {
        fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    };
    Some((max("tcp_rmem")?, max("tcp_wmem")?))
}

/// pen's descriptor count once two reads in a row agree (bounded).
pub fn stable_fd_count(pen: &Pen) -> usize {
    let pid = pen.pid();
    let mut last = fd_count(pid);
    poll_until(Duration::from_secs(2), || {
        let now = fd_count(pid);
        let stable = now == last;
        last = now;
        stable.then_some(now)
    })
    .unwrap_or(last)
}

/// Echo everything `s` sends until its EOF, then half-close.
pub fn echo_until_eof(mut s: Stream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Socket inodes the process holds open.
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let l = link.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Has the process installed a handler for signal `sig` (SigCgt in /proc/PID/status)?
pub fn catches_signal(pid: u32, sig: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

pub const SIGINT: u32 = 2;
pub const SIGTERM: u32 = 15;

/// Inodes of TCP sockets listening on `port` in the network namespace of process `pid` (so a
/// pen started in another namespace is seen too).
pub(super) fn tcp_listen_inodes(pid: u32, port: u16) -> Vec<u64> {
    let want = format!(":{port:04X}");
    socket_rows(pid, "tcp")
        .into_iter()
        .filter(|r| r.local.ends_with(&want) && r.state == "0A")
        .map(|r| r.inode)
        .collect()
}

/// Inodes of Unix sockets listening at `path`.
pub(super) fn unix_listen_inodes(path: &Path) -> Vec<u64> {
    let Ok(table) = fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let path = path.to_string_lossy();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = listening.
            let listening = u32::from_str_radix(f.get(3)?, 16).ok()? & 0x10000 != 0;
            (listening && f.get(7) == Some(&path.as_ref()))
                .then(|| f[6].parse().ok())
                .flatten()
        })
        .collect()
}
