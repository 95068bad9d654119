//! `crust migrate`: move a running tree to another host in one command.
//!
//! The tree is dumped and kept frozen here; its images go to the destination,
//! which checks it can take them and restores them; only once it reports the
//! tree running there is the tree killed here. Any failure before that resumes
//! the tree where it was, and leaves nothing of it on the destination.

pub mod ssh;
pub mod tcp;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cgroups::{CgroupRoot, Mode};
use crate::dump::{dump_frozen, DumpOptions, DumpStats};
use crate::error::{Context, Error, Result};
use crate::restore::RestoreStats;

/// Where a tree goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `ssh://[user@]host[:port]`: the user's OpenSSH runs crust over there.
    Ssh { user: Option<String>, host: String, port: Option<u16> },
    /// `tcp://host:port`: a `crust serve` agent, authenticated by a shared key.
    Tcp { host: String, port: u16 },
}

impl std::str::FromStr for Destination {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s}: expected ssh://[user@]host[:port] or tcp://host:port");
        if let Some(rest) = s.strip_prefix("ssh://") {
            let (user, hostport) = match rest.split_once('@') {
                Some((u, h)) => (Some(u.to_string()), h),
                None => (None, rest),
            };
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.parse().map_err(|_| bad())?)),
                None => (hostport.to_string(), None),
            };
            if host.is_empty() || host.starts_with('-') {
                return Err(bad());
            }
            return Ok(Destination::Ssh { user, host, port });
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            return Ok(Destination::Tcp { host: host.to_string(), port: port.parse().map_err(|_| bad())? });
        }
        Err(bad())
    }
}

/// How the destination should restore: the options of `crust restore` that
/// travel with the images.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoteRestore {
    pub shell_job: bool,
    pub manage_cgroups: String,
    pub cgroup_roots: Vec<String>,
}

impl RemoteRestore {
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--manage-cgroups".to_string(), self.manage_cgroups.clone()];
        for r in &self.cgroup_roots {
            a.extend(["--cgroup-root".to_string(), r.clone()]);
        }
        if self.shell_job {
            a.push("--shell-job".into());
        }
        a
    }
}

#[derive(Clone, Debug)]
pub struct MigrateOptions {
    pub pid: i32,
    pub to: Destination,
    pub shell_job: bool,
    /// Pre-shared key file, for tcp://.
    pub key: Option<PathBuf>,
    /// crust's path on the destination, for ssh:// (default: this binary's path).
    pub remote_crust: String,
    pub manage_cgroups: Mode,
    pub cgroup_roots: Vec<CgroupRoot>,
    /// Show progress of the transfer on stderr.
    pub progress: bool,
}

/// What the destination reports once the tree runs there.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Restored {
    pub root: i32,
    pub stats: RestoreStats,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MigrateStats {
    pub dump: DumpStats,
    /// Freezing the tree and writing its images (streamed: and sending them).
    pub dump_time_us: u64,
    /// From freezing the tree here to killing it once it ran there.
    pub frozen_time_us: u64,
    pub transfer_time_us: u64,
    pub check_time_us: u64,
    pub restore_time_us: u64,
    pub total_time_us: u64,
    pub bytes_sent: u64,
    pub remote: Restored,
}

/// The steps a transport carries out on the destination.
pub trait Transport {
    /// A sink that takes the images as the dump writes them, if the transport
    /// can stream; `send` is then not called.
    fn stream(&mut self) -> Option<Box<dyn crate::images::FileSink>> {
        None
    }
    /// Bytes that went through the stream.
    fn streamed(&self) -> u64 {
        0
    }
    /// Send every file of the images directory (for a transport that does not
    /// stream); returns the bytes sent.
    fn send(&mut self, _dir: &Path, _progress: &mut dyn FnMut(u64, u64)) -> Result<u64> {
        Err(Error::Invalid("this transport streams the images as they are written".into()))
    }
    /// The destination checks it can restore them (all problems at once).
    fn check(&mut self) -> Result<()>;
    /// The destination restores the tree and reports it running.
    fn restore(&mut self) -> Result<Restored>;
    /// Forget everything sent (the migration failed).
    fn abort(&mut self);
}

pub fn migrate(opts: &MigrateOptions) -> Result<MigrateStats> {
    let start = Instant::now();
    let remote = RemoteRestore {
        shell_job: opts.shell_job,
        manage_cgroups: format!("{:?}", opts.manage_cgroups).to_lowercase(),
        cgroup_roots: opts
            .cgroup_roots
            .iter()
            .map(|r| format!("{}{}", r.controller.as_ref().map(|c| format!("{c}:")).unwrap_or_default(), r.path))
            .collect(),
    };
    let mut transport: Box<dyn Transport> = match &opts.to {
        Destination::Ssh { user, host, port } => {
            Box::new(ssh::Ssh::new(user.clone(), host.clone(), *port, opts.remote_crust.clone(), remote))
        }
        Destination::Tcp { host, port } => {
            let key = opts.key.as_ref().ok_or_else(|| Error::Invalid("tcp:// needs --key FILE".into()))?;
            Box::new(tcp::Client::connect(host, *port, &tcp::read_key(key)?, remote)?)
        }
    };
    // Images stream to the destination as they are written where the transport
    // can (tcp://); otherwise they are staged in memory (tmpfs), not on disk.
    let sink = transport.stream();
    let streaming = sink.is_some();
    let staging = if streaming { PathBuf::new() } else { fresh_staging_dir()? };
    let dump_opts = DumpOptions {
        pid: opts.pid,
        dir: staging.clone(),
        leave_running: false,
        shell_job: opts.shell_job,
        cgroup_roots: opts.cgroup_roots.clone(),
        freeze_cgroup: None,
    };
    let t = Instant::now();
    let dumped = dump_frozen(&dump_opts, sink);
    let dump_time_us = t.elapsed().as_micros() as u64;
    let dumped = match dumped {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            transport.abort();
            return Err(e);
        }
    };
    let mut stats = MigrateStats { dump_time_us, ..Default::default() };
    let mut show = |done: u64, total: u64| {
        if opts.progress && total > 0 {
            let width = 40;
            let filled = (done * width / total) as usize;
            eprint!(
                "\rsending [{}{}] {:>6.1}/{:.1} MiB",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                done as f64 / 1048576.0,
                total as f64 / 1048576.0
            );
            if done == total {
                eprintln!();
            }
        }
    };
    let result = (|| -> Result<Restored> {
        if streaming {
            stats.bytes_sent = transport.streamed();
        } else {
            let t = Instant::now();
            stats.bytes_sent = transport.send(&staging, &mut show)?;
            stats.transfer_time_us = t.elapsed().as_micros() as u64;
        }
        let t = Instant::now();
        transport.check()?;
        stats.check_time_us = t.elapsed().as_micros() as u64;
        let t = Instant::now();
        let r = transport.restore()?;
        stats.restore_time_us = t.elapsed().as_micros() as u64;
        Ok(r)
    })();
    match result {
        Ok(remote) => {
            stats.dump = dumped.kill();
            let _ = std::fs::remove_dir_all(&staging);
            stats.frozen_time_us = stats.dump.frozen_time_us;
            stats.remote = remote;
            stats.total_time_us = start.elapsed().as_micros() as u64;
            Ok(stats)
        }
        Err(e) => {
            dumped.resume();
            let _ = std::fs::remove_dir_all(&staging);
            transport.abort();
            Err(e)
        }
    }
}

/// A new private directory in tmpfs (or the temp dir), never one that exists.
fn fresh_staging_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = base.join(format!("crust-migrate-{}-{nonce}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).ctx(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The files of an images directory, sorted, with their sizes.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let e = e.ctx(|| format!("listing {}", dir.display()))?;
        let md = e.metadata().ctx(|| format!("stat {}", e.path().display()))?;
        if md.is_file() {
            out.push((e.file_name().to_string_lossy().into_owned(), md.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// A file name that may be written into a receiving directory.
pub(crate) fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}
