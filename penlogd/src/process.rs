//! penlogd's process setup: chroot, privilege drop, pid file, background.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::unistd::{self, Gid, Uid};

/// A user to run as (`-u`).
pub struct User {
    name: String,
    uid: Uid,
    gid: Gid,
}

impl User {
    /// Look the user up now, before any chroot hides /etc/passwd.
    pub fn find(name: &str) -> anyhow::Result<User> {
        let user = unistd::User::from_name(name)
            .with_context(|| format!("-u {name}: can't look the user up"))?
            .with_context(|| format!("-u {name}: no such user"))?;
        Ok(User {
            name: name.to_string(),
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// Drop to the user's uid and primary gid, with no supplementary groups (pen 0.34.1's
    /// penlogd changed only the uid, keeping root's group).
    pub fn become_it(&self) -> anyhow::Result<()> {
        let context = || format!("-u {}: can't switch to this user", self.name);
        if Uid::effective() == self.uid && Gid::effective() == self.gid {
            return Ok(());
        }
        unistd::setgroups(&[]).with_context(context)?;
        unistd::setgid(self.gid).with_context(context)?;
        unistd::setuid(self.uid).with_context(context)?;
        Ok(())
    }
}

/// Change the root directory to `dir`, and the working directory into it (pen 0.34.1 did not
/// change directory, leaving the old one reachable).
pub fn chroot(dir: &Path) -> anyhow::Result<()> {
    let context = || format!("-j {}: can't chroot", dir.display());
    unistd::chroot(dir).with_context(context)?;
    unistd::chdir("/").with_context(context)?;
    Ok(())
}

/// The pid file: created before going to the background (so that an error shows), written
/// after (when the pid is final), removed at exit. Never written through a symbolic link.
pub struct PidFile {
    path: PathBuf,
    file: File,
}

impl PidFile {
    pub fn create(path: &Path) -> anyhow::Result<PidFile> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .with_context(|| format!("-p {}: can't create the pid file", path.display()))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write_pid(&self) -> anyhow::Result<()> {
        (&self.file)
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .with_context(|| format!("-p {}: can't write the pid", self.path.display()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Go to the background: fork (the parent exits 0), start a new session, and point stdin and
/// stderr (and stdout, unless the merged log goes there) at /dev/null. Must run before any
/// thread is started.
pub fn background(keep_stdout: bool) -> anyhow::Result<()> {
    unistd::daemon(true, true).context("can't go to the background")?;
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("can't open /dev/null")?;
    let mut fds = vec![0, 2];
    if !keep_stdout {
        fds.push(1);
    }
    for fd in fds {
        unistd::dup2(null.as_raw_fd(), fd).context("can't redirect stdio to /dev/null")?;
    }
    Ok(())
}
