//! The ssh:// transport: the user's OpenSSH carries a tar stream of the images
//! and runs crust over there (`crust check`, then `crust restore`), all in one
//! session (each ssh connection costs a few hundred ms). No daemon, no new
//! port; keys and known hosts are whatever ssh is configured with.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{list_files, RemoteRestore, Restored, Transport};
use crate::error::{Context, Error, Result};

pub struct Ssh {
    target: String,
    port: Option<u16>,
    crust: String,
    restore: RemoteRestore,
    /// The images directory over there, once created.
    remote_dir: Option<String>,
    /// The session that receives, checks and restores.
    session: Option<std::process::Child>,
}

/// Single-quote a word for the remote shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Ssh {
    pub fn new(user: Option<String>, host: String, port: Option<u16>, crust: String, restore: RemoteRestore) -> Ssh {
        let target = match user {
            Some(u) => format!("{u}@{host}"),
            None => host,
        };
        Ssh { target, port, crust, restore, remote_dir: None, session: None }
    }

    fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        if let Some(p) = self.port {
            c.args(["-p", &p.to_string()]);
        }
        c.arg("--").arg(&self.target).arg(remote);
        c
    }

    /// Run a remote command; its failure is an error carrying what it printed.
    fn run(&self, what: &str, remote: &str) -> Result<String> {
        let out = self
            .command(remote)
            .stdin(Stdio::null())
            .output()
            .ctx(|| format!("running ssh to {}", self.target))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Error::Invalid(format!("{what} on {} failed: {}", self.target, err.trim())));
        }
        Ok(text)
    }

    fn crust_cmd(&self, args: &[String]) -> String {
        std::iter::once(quote(&self.crust)).chain(args.iter().map(|a| quote(a))).collect::<Vec<_>>().join(" ")
    }
}

/// Counts what goes through, and reports it.
struct Counting<'a, W: Write> {
    inner: W,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        (self.progress)(self.done.min(self.total), self.total);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Transport for Ssh {
    fn send(&mut self, dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<u64> {
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let remote_dir = format!("/var/tmp/crust-migrate-{}-{nonce}", std::process::id());
        let mut check = vec!["check".to_string(), "--images".into(), remote_dir.clone()];
        check.extend(self.restore.args());
        let mut restore = vec!["restore".to_string(), "-D".into(), remote_dir.clone(), "-d".into(), "--json".into()];
        restore.extend(self.restore.args());
        // Receive, check (its report on stderr), restore (its JSON on stdout),
        // and drop the images whatever happened.
        let remote = format!(
            "umask 077 && mkdir -p {d} && tar -C {d} -xf - && {check} >&2 && {restore}; rc=$?; rm -rf {d}; exit $rc",
            d = quote(&remote_dir),
            check = self.crust_cmd(&check),
            restore = self.crust_cmd(&restore),
        );
        let mut child = self
            .command(&remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(|| format!("running ssh to {}", self.target))?;
        self.remote_dir = Some(remote_dir);
        let files = list_files(dir)?;
        // The tar stream is the files plus a header block for each.
        let total = files.iter().map(|(_, n)| n.div_ceil(512) * 512 + 512).sum::<u64>() + 1024;
        let stdin = child.stdin.take().expect("piped");
        self.session = Some(child);
        let mut out = Counting { inner: std::io::BufWriter::with_capacity(1 << 20, stdin), done: 0, total, progress };
        let sent = {
            let mut tar = tar::Builder::new(&mut out);
            files
                .iter()
                .try_for_each(|(name, _)| tar.append_path_with_name(dir.join(name), name))
                .and_then(|_| tar.finish())
        };
        let sent = sent.and_then(|_| out.flush());
        let done = out.done;
        drop(out);
        sent.map_err(|e| Error::Invalid(format!("sending the images to {} failed: {e}", self.target)))?;
        Ok(done)
    }

    /// Checked in the same session, before it restores.
    fn check(&mut self) -> Result<()> {
        Ok(())
    }

    fn restore(&mut self) -> Result<Restored> {
        let child = self.session.take().expect("sent first");
        let out = child.wait_with_output().ctx(|| format!("waiting for ssh to {}", self.target))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Error::Invalid(format!("on {}: {}", self.target, err.trim())));
        }
        // The session removed the images.
        self.remote_dir = None;
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim())
            .map_err(|e| Error::Invalid(format!("crust restore on {} answered {text:?}: {e}", self.target)))
    }

    fn abort(&mut self) {
        if let Some(mut child) = self.session.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.remote_dir.take() {
            let _ = self.run("cleaning up", &format!("rm -rf {}", quote(&dir)));
        }
    }
}
