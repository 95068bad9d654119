//! The ssh:// link: the user's OpenSSH runs `crust receive` on the other host
//! and carries the migration's frames over its standard input and output. No
//! daemon, no new port; keys and known hosts are whatever ssh is configured
//! with, and ssh protects what crosses.

use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::channel::Channel;
use crate::error::{Context, Result};

/// Where `crust receive` keeps the images but the pages while it restores.
pub const REMOTE_WORKDIR: &str = "/var/tmp/crust-migrate";

/// The ssh process of a migration, and what the far side printed on stderr.
pub struct SshSession {
    pub target: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
}

/// Single-quote a word for the remote shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Start `crust receive` over ssh; the channel speaks to it.
pub fn open(user: Option<&str>, host: &str, port: Option<u16>, crust: &str) -> Result<(Channel, SshSession)> {
    let target = match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    };
    let mut cmd = Command::new("ssh");
    // A link that dies silently is noticed within half a minute, not hours.
    cmd.args(["-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"]);
    if let Some(p) = port {
        cmd.args(["-p", &p.to_string()]);
    }
    let remote = format!("{} receive -D {}", quote(crust), quote(REMOTE_WORKDIR));
    cmd.arg("--").arg(&target).arg(remote);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| format!("running ssh to {target}"))?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut errout = child.stderr.take().expect("piped");
    let stderr = Arc::new(Mutex::new(String::new()));
    {
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = errout.read(&mut buf) {
                stderr.lock().unwrap_or_else(|p| p.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let fd = stdout.as_fd().try_clone_to_owned().ctx(|| "duplicating ssh's output")?;
    let chan = Channel::pipes(Box::new(stdout), fd, Box::new(stdin), target.clone());
    Ok((chan, SshSession { target, child, stderr }))
}

impl SshSession {
    /// What ssh and the far side said on stderr, once ssh has ended (or
    /// been ended: the link failed, so the session is over either way).
    pub fn said(&mut self) -> String {
        self.end(Duration::from_secs(2));
        // The reader thread sees the end of stderr right after ssh exits.
        std::thread::sleep(Duration::from_millis(20));
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).trim().to_string()
    }

    /// End the session now; the far side sees its input end and gives up.
    pub fn kill(&mut self) {
        self.end(Duration::ZERO);
    }

    /// Wait up to `grace` for ssh to exit, then kill it.
    fn end(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SshSession {
    fn drop(&mut self) {
        // The far side exits once its input ends (the channel is gone by now).
        self.end(Duration::from_secs(5));
    }
}
