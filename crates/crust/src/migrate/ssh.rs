//! The ssh:// transport: the user's OpenSSH carries a tar stream of the images
//! and runs crust over there (`crust check`, `crust restore`). No daemon, no
//! new port; keys and known hosts are whatever ssh is configured with.

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
        Ssh { target, port, crust, restore, remote_dir: None }
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
        let remote = format!("umask 077 && mkdir -p {0} && tar -C {0} -xf -", quote(&remote_dir));
        let mut child = self
            .command(&remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(|| format!("running ssh to {}", self.target))?;
        self.remote_dir = Some(remote_dir);
        let files = list_files(dir)?;
        // The tar stream is the files plus a header block for each.
        let total = files.iter().map(|(_, n)| n.div_ceil(512) * 512 + 512).sum::<u64>() + 1024;
        let stdin = child.stdin.take().expect("piped");
        let mut out = Counting { inner: std::io::BufWriter::with_capacity(1 << 20, stdin), done: 0, total, progress };
        let sent = {
            let mut tar = tar::Builder::new(&mut out);
            let mut result = Ok(());
            for (name, _) in &files {
                result = tar.append_path_with_name(dir.join(name), name);
                if result.is_err() {
                    break;
                }
            }
            result.and_then(|_| tar.finish())
        };
        let flushed = out.flush();
        let done = out.done;
        drop(out);
        let status = child.wait_with_output().ctx(|| format!("waiting for ssh to {}", self.target))?;
        if !status.status.success() || sent.is_err() || flushed.is_err() {
            return Err(Error::Invalid(format!(
                "sending the images to {} failed: {}{}",
                self.target,
                String::from_utf8_lossy(&status.stderr).trim(),
                sent.err().map(|e| format!(" ({e})")).unwrap_or_default()
            )));
        }
        Ok(done)
    }

    fn check(&mut self) -> Result<()> {
        let dir = self.remote_dir.clone().expect("sent first");
        let mut args = vec!["check".to_string(), "--images".into(), dir];
        args.extend(self.restore.args());
        self.run("crust check", &self.crust_cmd(&args)).map(|_| ())
    }

    fn restore(&mut self) -> Result<Restored> {
        let dir = self.remote_dir.clone().expect("sent first");
        let mut args = vec!["restore".to_string(), "-D".into(), dir.clone(), "-d".into(), "--json".into()];
        args.extend(self.restore.args());
        // The images are not needed once the tree runs (or failed to).
        let remote = format!("{}; rc=$?; rm -rf {}; exit $rc", self.crust_cmd(&args), quote(&dir));
        let out = self.run("crust restore", &remote)?;
        self.remote_dir = None;
        serde_json::from_str(out.trim())
            .map_err(|e| Error::Invalid(format!("crust restore on {} answered {out:?}: {e}", self.target)))
    }

    fn abort(&mut self) {
        if let Some(dir) = self.remote_dir.take() {
            let _ = self.run("cleaning up", &format!("rm -rf {}", quote(&dir)));
        }
    }
}
