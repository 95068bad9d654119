//! `crust migrate`: move a running tree to another host in one command.
//!
//! The tree is dumped and kept frozen here; its images go to the destination,
//! which checks it can take them, builds the tree and holds it stopped; told
//! to go, it lets it run and says so, and only then is the tree killed here.
//! Any failure before the go resumes the tree where it was and leaves nothing
//! of it on the destination. A link lost after the go and before the answer
//! is the one case that cannot be settled (the destination kills its copy
//! only if it cannot send the answer): crust says so, and resumes it here.
//!
//! Established TCP connections (`--tcp-established`) move with the tree;
//! their address must move too, which is the operator's part (a floating
//! IP): see [`clients`] for the order of things, the two network locks and
//! the action script's points.

//!
//! With `--live`, the memory goes first in rounds while the tree runs (see
//! [`live`]); the check then comes at the freeze, after the rounds (a
//! refusal costs the transfer, and leaves the tree running as it was).

pub mod channel;
mod clients;
pub mod live;
pub mod receive;
pub mod ssh;
pub mod tcp;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cgroups::{CgroupRoot, Mode};
use crate::dump::{dump_frozen, DumpOptions, DumpStats};
use crate::error::{Error, Result};
use crate::images::FileSink;
use crate::notify::Point;
use crate::progress::Progress;
use crate::restore::RestoreStats;
use channel::{Channel, ANSWER_TIMEOUT, CHECK, CHUNK, DATA, END_FILE, FILE, GO, HELLO, QUICK_TIMEOUT, RESTORE};

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
        let bad = || format!("{s}: expected ssh://[user@]host[:port] or tcp://host:port (an IPv6 address in brackets)");
        if let Some(rest) = s.strip_prefix("ssh://") {
            let (user, hostport) = match rest.rsplit_once('@') {
                Some((u, h)) => (Some(u.to_string()), h),
                None => (None, rest),
            };
            // A user or host beginning with '-' would be an option of ssh's.
            if user.as_deref().is_some_and(|u| u.is_empty() || u.starts_with('-') || u.contains(char::is_whitespace)) {
                return Err(bad());
            }
            let (host, port) = host_port(hostport).ok_or_else(bad)?;
            return Ok(Destination::Ssh { user, host, port });
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = host_port(rest).ok_or_else(bad)?;
            return Ok(Destination::Tcp { host, port: port.ok_or_else(bad)? });
        }
        Err(bad())
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`: the host (without brackets)
/// and the port, if given (1 to 65535). None if it is none of these.
fn host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        // More than one ':' is an IPv6 address without its brackets: which part is the port?
        None if s.matches(':').count() > 1 => return None,
        None => match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    let port = match port {
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok().filter(|&p| p != 0)?),
        Some(_) => return None,
        None => None,
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%');
    (!host.is_empty() && !host.starts_with('-') && host.chars().all(plain)).then(|| (host.to_string(), port))
}

/// How the destination should restore: the options of `crust restore` that
/// travel with the images.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteRestore {
    /// The version of the migration protocol the source speaks.
    pub protocol: u32,
    pub shell_job: bool,
    pub manage_cgroups: String,
    pub cgroup_roots: Vec<String>,
    /// The restore's mode for established TCP connections: "established",
    /// "close" or "" (refused).
    pub tcp: String,
    /// The host ends of the tree's network namespace's veths there, as
    /// criu's `--external veth[IF]:HOSTIF[@BRIDGE]`.
    pub veths: Vec<String>,
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
        for v in &self.veths {
            a.extend(["--external".to_string(), v.clone()]);
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
    /// Where the stats images of the move are kept; none are written without it.
    pub stats_dir: Option<PathBuf>,
    /// Hears the pages being sent.
    pub progress: Progress,
    /// `--tcp-established` / `--tcp-close`: the tree's established TCP
    /// connections move with it (or arrive closed); refused without either.
    pub tcp: crate::files::tcp::Mode,
    /// Hears criu's points of the move (see [`clients`]).
    pub notify: crate::notify::Notify,
    /// `--ext-unix-sk`: unix sockets connected to a named socket outside
    /// the tree (a logger's /dev/log) are connected to that name there.
    pub ext_unix_sk: bool,
    /// `--live`: pre-copy rounds while the tree runs (see [`live`]).
    pub live: bool,
    /// The dump's options for the tree's namespaces (`--ext-mount-map`:
    /// the host paths of its external mounts are the same there).
    pub ns: crate::ns::NsOptions,
    /// `--external veth[IF]:HOSTIF[@BRIDGE]`: the host ends of the tree's
    /// veths, made there.
    pub veths: Vec<String>,
}

/// The version of the frames and their order; both ends must speak the same.
pub const PROTOCOL: u32 = 4;

/// What the destination reports once the tree runs there.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Restored {
    pub root: i32,
    pub stats: RestoreStats,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MigrateStats {
    pub dump: DumpStats,
    /// Freezing the tree and sending its images but the pages.
    pub dump_time_us: u64,
    /// From freezing the tree here to killing it once it ran there.
    pub frozen_time_us: u64,
    /// Sending the pages (the destination writes them into the new tasks as
    /// they arrive, so this overlaps the restore).
    pub transfer_time_us: u64,
    pub check_time_us: u64,
    /// Holding the connections there and the action script's pre-restore
    /// (where the operator moves their address).
    #[serde(default)]
    pub hold_time_us: u64,
    /// Killing the tree here once it runs there (its connections silenced
    /// first) and removing the lock here.
    #[serde(default)]
    pub kill_time_us: u64,
    /// From asking the destination to restore until the tree runs there.
    pub restore_time_us: u64,
    pub total_time_us: u64,
    pub bytes_sent: u64,
    pub remote: Restored,
    /// The pre-copy rounds of a live migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_copy: Option<live::PreCopyStats>,
}

/// The link to the destination: frames over tcp:// or ssh://.
struct Link {
    chan: Arc<Mutex<Channel>>,
    /// Bytes of images sent.
    sent: Arc<AtomicU64>,
    ssh: Option<ssh::SshSession>,
}

impl Link {
    fn open(opts: &MigrateOptions) -> Result<Link> {
        let (chan, ssh) = match &opts.to {
            Destination::Ssh { user, host, port } => {
                let (chan, session) = ssh::open(user.as_deref(), host, *port, &opts.remote_crust)?;
                (chan, Some(session))
            }
            Destination::Tcp { host, port } => {
                let key = opts.key.as_ref().ok_or_else(|| Error::Invalid("tcp:// needs --key FILE".into()))?;
                (tcp::connect(host, *port, &tcp::read_key(key)?)?, None)
            }
        };
        Ok(Link { chan: Arc::new(Mutex::new(chan)), sent: Arc::default(), ssh })
    }

    fn chan(&self) -> MutexGuard<'_, Channel> {
        self.chan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sink that sends image files over the link.
    fn sink(&self) -> Box<dyn FileSink> {
        Box::new(LinkSink { chan: self.chan.clone(), sent: self.sent.clone() })
    }

    /// Ask, and wait up to `timeout` for the answer.
    fn request(&self, kind: u8, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let mut chan = self.chan();
        chan.send(kind, payload)?;
        chan.answer_within(timeout)
    }

    /// The best account of a failure: the destination's reason if it gave
    /// one, else what the far side of ssh printed, else `err` itself.
    fn explain(&mut self, err: Error) -> Error {
        let err = self.chan().reason(err);
        match (&mut self.ssh, err) {
            (Some(ssh), err @ Error::Io { .. }) => {
                let said = ssh.said();
                if said.is_empty() {
                    err
                } else {
                    Error::Protocol(format!("{err}; {} said: {said}", ssh.target))
                }
            }
            (_, err) => err,
        }
    }

    /// Give up: the destination sees the link end and drops what it has.
    fn abort(&mut self) {
        self.chan().close();
        if let Some(ssh) = &mut self.ssh {
            ssh.kill();
        }
    }
}

/// Image files sent over the link as the dump writes them.
struct LinkSink {
    chan: Arc<Mutex<Channel>>,
    sent: Arc<AtomicU64>,
}

impl LinkSink {
    fn send(&self, kind: u8, payload: &[u8]) -> Result<()> {
        let mut chan = self.chan.lock().unwrap_or_else(|p| p.into_inner());
        // The destination speaks during a transfer only to give up.
        if chan.peer_spoke() {
            return Err(Error::Protocol(format!("{} stopped the transfer", chan.peer)));
        }
        chan.send(kind, payload)?;
        self.sent.fetch_add(payload.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl FileSink for LinkSink {
    fn begin(&mut self, name: &str) -> Result<()> {
        self.send(FILE, name.as_bytes())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<()> {
        bytes.chunks(CHUNK).try_for_each(|c| self.send(DATA, c))
    }

    fn end(&mut self) -> Result<()> {
        self.send(END_FILE, &[])
    }
}


pub fn migrate(opts: &MigrateOptions) -> Result<MigrateStats> {
    let start = Instant::now();
    let remote = RemoteRestore {
        protocol: PROTOCOL,
        shell_job: opts.shell_job,
        manage_cgroups: format!("{:?}", opts.manage_cgroups).to_lowercase(),
        cgroup_roots: opts
            .cgroup_roots
            .iter()
            .map(|r| format!("{}{}", r.controller.as_ref().map(|c| format!("{c}:")).unwrap_or_default(), r.path))
            .collect(),
        tcp: clients::mode_name(opts.tcp).to_string(),
        veths: opts.veths.clone(),
    };
    let mut link = Link::open(opts)?;
    let hello = serde_json::to_vec(&remote).map_err(|e| Error::io_other("encoding the hello", e))?;
    let said_hello = link.request(HELLO, &hello, QUICK_TIMEOUT);
    if let Err(e) = said_hello {
        let e = link.explain(e);
        link.abort();
        return Err(e);
    }
    // Live: the memory goes in rounds while the tree runs; the tracking is
    // handed to the dump, which leaves to the destination what it holds.
    let handoff = crate::track::Handoff::default();
    let mut pre_copy = None;
    if opts.live {
        match live::pre_copy(opts.pid, &link) {
            Ok((handed, stats)) => {
                handoff.put(handed);
                pre_copy = Some(stats);
            }
            Err(e) => {
                let e = link.explain(e);
                link.abort();
                return Err(e);
            }
        }
    }
    // The images but the pages go as the dump writes them; nothing on disk.
    let dump_opts = DumpOptions {
        pid: opts.pid,
        leave_running: false,
        shell_job: opts.shell_job,
        cgroup_roots: opts.cgroup_roots.clone(),
        tcp: opts.tcp,
        notify: opts.notify.clone(),
        ext_unix_sk: opts.ext_unix_sk,
        handoff,
        ns: opts.ns.clone(),
        ..Default::default()
    };
    let t = Instant::now();
    let dumped = dump_frozen(&dump_opts, Some(link.sink()));
    // Taken by the dump, or (if it failed before) closed here: no tracking
    // outlives this point.
    drop(dump_opts);
    let mut stats = MigrateStats { dump_time_us: t.elapsed().as_micros() as u64, pre_copy, ..Default::default() };
    let mut dumped = match dumped {
        Ok(d) => d,
        Err(e) => {
            let e = link.explain(e);
            link.abort();
            return Err(e);
        }
    };
    let mut go_sent = false;
    let mut moved = false;
    let result = (|| -> Result<Vec<u8>> {
        let t = Instant::now();
        moved = clients::hold_there(&link, opts)?;
        stats.hold_time_us = t.elapsed().as_micros() as u64;
        let t = Instant::now();
        link.request(CHECK, &[], ANSWER_TIMEOUT)?;
        stats.check_time_us = t.elapsed().as_micros() as u64;
        // The destination builds the tree while the pages come, and holds it.
        let t = Instant::now();
        link.chan().send(RESTORE, &[])?;
        dumped.send_pages(&mut *link.sink(), &opts.progress)?;
        stats.transfer_time_us = t.elapsed().as_micros() as u64;
        opts.notify.at(Point::PostDump, Some(opts.pid))?;
        let built = link.chan().answer_within(ANSWER_TIMEOUT)?;
        clients::built_there(opts, &built)?;
        // Built there: the last moment to give up cleanly.
        crate::cancel::check()?;
        go_sent = true;
        let running = link.request(GO, &[], QUICK_TIMEOUT)?;
        stats.restore_time_us = t.elapsed().as_micros() as u64;
        Ok(running)
    })();
    stats.bytes_sent = link.sent.load(Ordering::Relaxed);
    match result {
        Ok(running) => {
            // It runs there: whatever else its answer says, it dies here.
            let remote = serde_json::from_slice(&running).unwrap_or_else(|e| {
                log::warn!("the destination's stats are unreadable ({e}); its tree runs");
                Restored::default()
            });
            let t = Instant::now();
            stats.dump = dumped.kill_unlocked();
            stats.kill_time_us = t.elapsed().as_micros() as u64;
            stats.frozen_time_us = stats.dump.frozen_time_us;
            clients::running_there(opts, &remote);
            stats.remote = remote;
            stats.total_time_us = start.elapsed().as_micros() as u64;
            if let Some(dir) = &opts.stats_dir {
                // The tree runs there: a failure here is reported, not undone.
                if let Err(e) = write_stats(dir, &stats) {
                    log::error!("keeping the stats of the move: {e}");
                }
            }
            Ok(stats)
        }
        Err(e) => {
            dumped.resume();
            let e = clients::explain(link.explain(e), moved);
            let peer = link.chan().peer.clone();
            link.abort();
            if go_sent {
                // The one frame that can be lost either way: the destination
                // runs the tree once it has the go, and kills it only if it
                // cannot answer.
                return Err(Error::Protocol(format!(
                    "{e}\n{peer} got the go but its answer did not come back: the tree runs on here; \
                     if it runs there too (same pids), kill one of the two"
                )));
            }
            Err(e)
        }
    }
}

/// The stats of a move, kept as CRIU keeps them (stats-dump for this side,
/// stats-restore for the other; crit decodes both) and whole in
/// stats-migrate.json.
pub fn write_stats(dir: &Path, stats: &MigrateStats) -> Result<()> {
    // A directory made here is private; one that exists is left as it is:
    // the files themselves are 0600.
    if !dir.exists() {
        crate::images::create_private_dir(dir)?;
    }
    crate::images::write_image_file(&dir.join("stats-dump"), crate::images::Kind::Stats, &stats.dump.entry())?;
    crate::images::write_image_file(&dir.join("stats-restore"), crate::images::Kind::Stats, &stats.remote.stats.entry())?;
    let text = serde_json::to_vec_pretty(stats).map_err(|e| Error::io_other("encoding the stats", e))?;
    crate::images::write_file_atomically(&dir.join(STATS_JSON), &text)
}

/// The whole stats of a move, beside its stats images.
pub const STATS_JSON: &str = "stats-migrate.json";

/// A file name that may be written into a receiving directory.
pub(crate) fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::Destination;

    fn ssh(user: Option<&str>, host: &str, port: Option<u16>) -> Result<Destination, String> {
        Ok(Destination::Ssh { user: user.map(str::to_string), host: host.to_string(), port })
    }

    fn tcp(host: &str, port: u16) -> Result<Destination, String> {
        Ok(Destination::Tcp { host: host.to_string(), port })
    }

    #[test]
    fn destinations_are_parsed() {
        let cases = [
            ("ssh://host", ssh(None, "host", None)),
            ("ssh://root@10.200.1.2", ssh(Some("root"), "10.200.1.2", None)),
            ("ssh://me@host.example:2222", ssh(Some("me"), "host.example", Some(2222))),
            ("ssh://[::1]", ssh(None, "::1", None)),
            ("ssh://me@[fe80::1%eth0]:22", ssh(Some("me"), "fe80::1%eth0", Some(22))),
            ("tcp://10.0.0.1:7070", tcp("10.0.0.1", 7070)),
            ("tcp://[2001:db8::7]:7070", tcp("2001:db8::7", 7070)),
            ("tcp://host_1:1", tcp("host_1", 1)),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<Destination>(), want, "{s}");
        }
    }

    #[test]
    fn bad_destinations_are_refused_with_the_expected_form() {
        for s in [
            "", "host", "http://host", "ssh://", "ssh://me@", "ssh://@host", "ssh://-oProxyCommand=x", "ssh://-me@host",
            "ssh://host:", "ssh://host:0", "ssh://host:65536", "ssh://host:22x", "ssh://host:+22", "ssh://::1",
            "ssh://[::1", "ssh://[::1]22", "ssh://[]", "ssh://ho st", "ssh://a b@host", "tcp://host", "tcp://:7070",
            "tcp://host:port", "tcp://[::1]", "tcp://host:7070/path", "tcp://2001:db8::7:7070",
        ] {
            let err = s.parse::<Destination>().expect_err(s);
            assert!(err.contains("expected ssh://[user@]host[:port] or tcp://host:port"), "{s}: {err}");
        }
    }
}
