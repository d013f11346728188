//! Running as a daemon: detaching from the terminal, the pid file, the chroot jail and the
//! privilege drop. Nothing here knows about pen; penlogd uses the same calls.
//!
//! The order a daemon follows (pen 0.34.1's, with its holes closed):
//! 1. `lookup_user` while /etc/passwd is in reach;
//! 2. `detach` before any thread exists: the parent waits until the child says how start-up
//!    went, so a bind error shows in the parent's exit status;
//! 3. bind every socket (as root, so privileged ports work);
//! 4. `enter_jail` (chroot, then chdir into it) and `drop_privileges` (groups, gid, uid);
//! 5. `PidFile::create` (inside the jail, as the new user);
//! 6. `Readiness::ready`: stdio to /dev/null, and the parent exits 0.

mod fork;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};
use tracing::warn;

use fork::{ForkError, Forked};

/// What went wrong turning the process into a daemon. Each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Fork(#[from] ForkError),
    #[error("can't create the start-up pipe")]
    Pipe(#[source] nix::Error),
    #[error("can't open /dev/null")]
    DevNull(#[source] io::Error),
    #[error("can't start a new session")]
    Setsid(#[source] nix::Error),
    #[error("can't point standard input and output at /dev/null")]
    Redirect(#[source] nix::Error),
    #[error("can't tell the waiting parent that start-up is done")]
    Notify(#[source] io::Error),
    #[error("-u {0}: no such user")]
    NoSuchUser(String),
    #[error("-u {name}: can't look the user up")]
    UserLookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("-j {dir}: can't enter the jail")]
    Chroot {
        dir: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("-u {name}: can't {step}")]
    Privileges {
        name: String,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("-u {0}: root privileges could be regained after dropping them")]
    PrivilegesKept(String),
    #[error("-p {path}: can't write the pid file")]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

// ---- detaching --------------------------------------------------------------------------------

/// The byte the child sends when it is up. Anything else (EOF) means start-up failed.
const READY: u8 = b'R';

/// Held by the daemon while it starts: the write end of the pipe the parent waits on, and
/// /dev/null, opened before any chroot hides it.
#[derive(Debug)]
pub struct Readiness {
    pipe: File,
    devnull: File,
}

/// Fork into the background. Must be called before any thread is started (it refuses
/// otherwise).
///
/// In the parent it never returns: the parent waits until the child calls `Readiness::ready`
/// (then exits 0) or exits without doing so (then exits with the child's status, which is 1
/// after a start-up error; the child's message has already gone to the shared stderr).
///
/// In the child it returns the `Readiness` to report on. The child is in a new session (no
/// controlling terminal), with stdin on /dev/null; stdout and stderr stay where they were until
/// `ready`, so start-up messages and errors still reach whoever started the daemon.
pub fn detach() -> Result<Readiness, DaemonError> {
    let devnull = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(DaemonError::DevNull)?;
    let (read_end, write_end) = nix::unistd::pipe().map_err(DaemonError::Pipe)?;
    // Buffered output would otherwise be written twice, once by each process.
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    match fork::fork_single_threaded()? {
        Forked::Parent { child } => {
            drop(write_end);
            std::process::exit(wait_for_child(File::from(read_end), child))
        }
        Forked::Child => {
            drop(read_end);
            nix::unistd::setsid().map_err(DaemonError::Setsid)?;
            nix::unistd::dup2(devnull.as_raw_fd(), 0).map_err(DaemonError::Redirect)?;
            Ok(Readiness {
                pipe: File::from(write_end),
                devnull,
            })
        }
    }
}

/// The parent's side: the exit status to leave with.
fn wait_for_child(mut pipe: File, child: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    let mut byte = [0u8; 1];
    loop {
        match pipe.read(&mut byte) {
            Ok(1) if byte[0] == READY => return 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // EOF (or garbage): the child is exiting; its status is ours.
            _ => break,
        }
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
            Err(_) => return 1,
        }
    }
}

impl Readiness {
    /// Start-up is done: point stdin, stdout and stderr at /dev/null and let the parent exit 0.
    /// Whatever should still be heard from now on must go to syslog.
    pub fn ready(mut self) -> Result<(), DaemonError> {
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        for fd in [0, 1, 2] {
            nix::unistd::dup2(self.devnull.as_raw_fd(), fd).map_err(DaemonError::Redirect)?;
        }
        self.pipe.write_all(&[READY]).map_err(DaemonError::Notify)
    }
}

// ---- the pid file -----------------------------------------------------------------------------

/// The pid file: written (decimal, no newline, as pen 0.34.1 writes it) when created, removed
/// when dropped if it still holds this process's pid.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    pub fn create(path: &Path) -> Result<PidFile, DaemonError> {
        let pid = std::process::id();
        crate::safe_file::write_atomically(path, pid.to_string().as_bytes()).map_err(|source| {
            DaemonError::PidFile {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Another instance may have taken the file over; then it is theirs to remove.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim().parse::<u32>().ok() == Some(self.pid));
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                warn!("can't remove the pid file {}: {e}", self.path.display());
            }
        }
    }
}

// ---- jail and privileges ----------------------------------------------------------------------

/// A user to run as, looked up before any chroot hides /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

pub fn lookup_user(name: &str) -> Result<Identity, DaemonError> {
    match User::from_name(name) {
        Ok(Some(user)) => Ok(Identity {
            name: name.to_string(),
            uid: user.uid,
            gid: user.gid,
        }),
        Ok(None) => Err(DaemonError::NoSuchUser(name.to_string())),
        Err(source) => Err(DaemonError::UserLookup {
            name: name.to_string(),
            source,
        }),
    }
}

/// chroot into `dir` and make it the working directory, so that no relative path leads back
/// out (pen 0.34.1 left the working directory outside the jail).
pub fn enter_jail(dir: &Path) -> Result<(), DaemonError> {
    let fail = |source| DaemonError::Chroot {
        dir: dir.to_path_buf(),
        source,
    };
    keep_local_time();
    nix::unistd::chroot(dir).map_err(fail)?;
    nix::unistd::chdir("/").map_err(fail)
}

/// Become `who`: no supplementary groups (its own group is its primary one), then the group,
/// then the user (in that order: once the uid is dropped, the groups can no longer be changed).
/// Checks afterwards that root cannot be regained.
pub fn drop_privileges(who: &Identity) -> Result<(), DaemonError> {
    let fail = |step: &'static str| {
        move |source| DaemonError::Privileges {
            name: who.name.clone(),
            step,
            source,
        }
    };
    nix::unistd::setgroups(&[]).map_err(fail("drop the supplementary groups"))?;
    nix::unistd::setgid(who.gid).map_err(fail("set the group id"))?;
    nix::unistd::setuid(who.uid).map_err(fail("set the user id"))?;
    if !who.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(DaemonError::PrivilegesKept(who.name.clone()));
    }
    Ok(())
}

/// Local time inside a jail: /etc/localtime will be out of reach, so when TZ is not set, set it
/// to the POSIX rule at the end of /etc/localtime (TZif version 2 and later end with one), which
/// needs no file. Without this, times in the status page would silently become UTC.
fn keep_local_time() {
    if std::env::var_os("TZ").is_some() {
        return;
    }
    let Ok(data) = std::fs::read("/etc/localtime") else {
        return;
    };
    if let Some(rule) = posix_tz_footer(&data) {
        // Only threads could race with this, and a daemon enters its jail before starting any.
        std::env::set_var("TZ", rule);
    }
}

/// The POSIX TZ rule that ends a TZif file of version 2 or later: the text between the last
/// two newlines.
fn posix_tz_footer(data: &[u8]) -> Option<String> {
    if !data.starts_with(b"TZif") || data.get(4).is_none_or(|v| *v < b'2') {
        return None;
    }
    let body = data.strip_suffix(b"\n")?;
    let start = body.iter().rposition(|b| *b == b'\n')? + 1;
    let rule = std::str::from_utf8(&body[start..]).ok()?;
    (!rule.is_empty() && rule.is_ascii()).then(|| rule.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_posix_rule_is_read_from_a_tzif_footer() {
        let mut tzif = b"TZif2".to_vec();
        tzif.extend_from_slice(&[0; 40]);
        tzif.extend_from_slice(b"\nCET-1CEST,M3.5.0,M10.5.0/3\n");
        assert_eq!(
            posix_tz_footer(&tzif).as_deref(),
            Some("CET-1CEST,M3.5.0,M10.5.0/3")
        );
        let mut v1 = tzif.clone();
        v1[4] = 0;
        assert_eq!(posix_tz_footer(&v1), None, "version 1 has no footer");
        assert_eq!(posix_tz_footer(b"not a zone file\nUTC0\n"), None);
        if let Ok(real) = std::fs::read("/etc/localtime") {
            assert!(
                posix_tz_footer(&real).is_some(),
                "this system's zone has a rule"
            );
        }
    }

    #[test]
    fn an_unknown_user_is_named() {
        let e = lookup_user("no-such-user-for-pen").unwrap_err().to_string();
        assert_eq!(e, "-u no-such-user-for-pen: no such user");
        assert_eq!(lookup_user("root").unwrap().uid, Uid::from_raw(0));
    }

    #[test]
    fn the_pid_file_holds_the_pid_and_goes_away_on_drop_unless_taken_over() {
        let dir = std::env::temp_dir().join(format!("pen-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pen.pid");
        let pid = PidFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::process::id().to_string()
        );
        drop(pid);
        assert!(!path.exists());
        let pid = PidFile::create(&path).unwrap();
        std::fs::write(&path, "1").unwrap(); // another instance took it over
        drop(pid);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = PidFile::create(&dir.join("gone/pen.pid")).unwrap_err();
        assert!(e.to_string().starts_with("-p "), "{e}");
    }
}
