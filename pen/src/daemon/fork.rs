//! fork(2), the only `unsafe` in the workspace.
//!
//! nix marks `fork` unsafe because in a multi-threaded process the child inherits only the
//! calling thread: a lock that another thread held at the moment of the fork (the allocator's,
//! stdio's, a `Mutex`) stays locked forever in the child, and the child may then only call
//! async-signal-safe functions. In a process with a single thread no other thread can hold
//! anything, so the child is an ordinary process that may run any code.
//!
//! The invariant, "exactly one thread exists", is checked here at run time rather than assumed:
//! the kernel's own count in /proc/self/status is read just before forking, and the fork is
//! refused if it is not 1. The callers fork before starting any runtime or thread, so the check
//! only fails if that order is ever broken, and then with an error rather than a child that
//! deadlocks.
#![allow(unsafe_code)]

use std::io;

use nix::unistd::{ForkResult, Pid};

/// Which side of the fork this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    Parent { child: Pid },
    Child,
}

/// Why the process was not forked.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("can't fork: {0} threads are running, and forking is only safe with one")]
    Threads(usize),
    #[error("can't count this process's threads")]
    Count(#[source] io::Error),
    #[error("can't fork")]
    Fork(#[source] nix::Error),
}

/// The number of threads of this process, as the kernel counts them.
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Threads: line"))
}

/// Fork, if and only if this process has exactly one thread.
pub fn fork_single_threaded() -> Result<Forked, ForkError> {
    let threads = thread_count().map_err(ForkError::Count)?;
    if threads != 1 {
        return Err(ForkError::Threads(threads));
    }
    // SAFETY: the process has exactly one thread (checked just above; nothing between the check
    // and the fork starts one), so no lock can be held by a thread the child lacks, and the
    // child may run arbitrary code. This is the precondition nix documents for `fork`.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Ok(Forked::Parent { child }),
        Ok(ForkResult::Child) => Ok(Forked::Child),
        Err(e) => Err(ForkError::Fork(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_threads_and_refuses_to_fork_a_multi_threaded_process() {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let extra = std::thread::spawn(move || {
            started_tx.send(()).unwrap();
            let _ = stop_rx.recv();
        });
        started_rx.recv().unwrap();
        let n = thread_count().unwrap();
        assert!(n >= 2, "this thread and the extra one: {n}");
        match fork_single_threaded() {
            Err(ForkError::Threads(t)) => assert!(t >= 2),
            other => panic!("forked a multi-threaded process: {other:?}"),
        }
        stop_tx.send(()).unwrap();
        extra.join().unwrap();
    }
}
