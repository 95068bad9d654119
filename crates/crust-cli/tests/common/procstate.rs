//! What /proc shows of a process tree, snapshotted before a dump and after
//! the restore, and compared: a kind of state a restore loses shows up as a
//! failing diff here, even when no test was written for it.
//!
//! A snapshot is a flat map from "PID what" (or "PID/TID what") to what /proc
//! says. Values that cannot be equal after any restore are left out, each
//! for a reason given where it is left out: statistics (the status fields the
//! inventory marks not needed, ctxt switches, times), time left on timers,
//! the offset of an O_APPEND file. Inode numbers of objects made again by
//! the restore (pipes, sockets, anonymous inodes, deleted files) are replaced
//! by the order in which the snapshot first met them, so what is compared is
//! which fds and mappings share an object, not its number.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crust::inventory::{status_field, Fate};

/// What /proc shows of every task of a tree.
pub struct ProcState {
    root: i32,
    entries: BTreeMap<String, String>,
}

impl ProcState {
    /// A snapshot of the tree of `root` (its processes found through the
    /// children of each of their threads), once it has settled: the same in
    /// two reads 20 ms apart (a thread being started has every signal
    /// blocked for a moment), or the last of 25 reads.
    pub fn of_tree(root: i32) -> ProcState {
        ProcState::of_tree_in("/proc", root)
    }

    /// [`ProcState::of_tree`] as the proc mounted at `proc` shows it: a pid
    /// namespace's own (`/proc/INIT/root/proc`), where pids, parents and
    /// sessions are those inside, the same in every copy of a container.
    pub fn of_tree_in(proc: &str, root: i32) -> ProcState {
        let mut last = ProcState::read(proc, root);
        for _ in 0..25 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let now = ProcState::read(proc, root);
            if now.entries == last.entries {
                break;
            }
            last = now;
        }
        last
    }

    fn read(proc: &str, root: i32) -> ProcState {
        let mut s = Snapshot { proc: proc.to_string(), entries: BTreeMap::new(), objects: HashMap::new() };
        for pid in tree_pids(proc, root) {
            s.process(pid);
        }
        ProcState { root, entries: s.entries }
    }

    /// Asserts that `after` shows the same state, except for entries whose
    /// key contains one of `may_differ` (each test says why it passes one).
    pub fn assert_same(&self, after: &ProcState, may_differ: &[&str]) {
        let allowed = |k: &str| may_differ.iter().any(|m| k.contains(m));
        let mut diff = String::new();
        for (k, v) in &self.entries {
            match after.entries.get(k) {
                _ if allowed(k) => {}
                Some(w) if w == v => {}
                Some(w) => writeln!(diff, "  {k}:\n    before: {v}\n    after:  {w}").unwrap(),
                None => writeln!(diff, "  {k}: gone (was {v})").unwrap(),
            }
        }
        for (k, w) in &after.entries {
            if !self.entries.contains_key(k) && !allowed(k) {
                writeln!(diff, "  {k}: new ({w})").unwrap();
            }
        }
        assert!(diff.is_empty(), "state of the tree of {} differs after the restore:\n{diff}", self.root);
    }

    /// The snapshot's value for `key`, if it has one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }
}

/// The pids of the tree of `root`, parents before children.
fn tree_pids(proc: &str, root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        for tid in task_ids(proc, pid) {
            let children = std::fs::read_to_string(format!("{proc}/{pid}/task/{tid}/children")).unwrap_or_default();
            out.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
        i += 1;
    }
    out
}

fn task_ids(proc: &str, pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("{proc}/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    tids.sort();
    tids
}

/// The fields of /proc/PID/stat compared (after the comm): ppid, pgrp,
/// session, tty_nr, tpgid, priority, nice, num_threads, exit_signal,
/// rt_priority, policy, by their numbers in proc(5).
const STAT_FIELDS: &[(usize, &str)] = &[
    (4, "ppid"),
    (5, "pgrp"),
    (6, "session"),
    (7, "tty_nr"),
    (8, "tpgid"),
    (18, "priority"),
    (19, "nice"),
    (20, "num_threads"),
    (38, "exit_signal"),
    (40, "rt_priority"),
    (41, "policy"),
];

/// Per-thread attributes compared for each thread (a process's own ones are
/// its main thread's).
const THREAD_STAT_FIELDS: &[&str] = &["priority", "nice", "rt_priority", "policy"];

/// Files of /proc/PID compared whole.
const PROCESS_FILES: &[&str] =
    &["cmdline", "environ", "limits", "oom_score_adj", "timers", "personality", "coredump_filter", "cgroup", "loginuid"];

struct Snapshot {
    /// Where the proc read is mounted.
    proc: String,
    entries: BTreeMap<String, String>,
    /// Objects without a stable number (pipes, sockets, anonymous and
    /// deleted inodes), by the number the kernel gave them: their order of
    /// first appearance.
    objects: HashMap<u64, usize>,
}

impl Snapshot {
    fn put(&mut self, key: String, value: impl Into<String>) {
        self.entries.insert(key, value.into());
    }

    fn object(&mut self, ino: u64) -> String {
        let next = self.objects.len();
        format!("#{}", self.objects.entry(ino).or_insert(next))
    }

    fn process(&mut self, pid: i32) {
        let Ok(stat) = std::fs::read_to_string(format!("{}/{pid}/stat", self.proc)) else { return };
        let zombie = stat_fields(&stat).get(3).is_some_and(|s| s == "Z");
        for (n, name) in STAT_FIELDS {
            if let Some(v) = stat_fields(&stat).get(n - 1) {
                self.put(format!("{pid} stat {name}"), v.clone());
            }
        }
        self.status(&format!("{pid}"), &format!("{}/{pid}/status", self.proc));
        if zombie {
            return;
        }
        for file in PROCESS_FILES {
            if let Ok(v) = std::fs::read_to_string(format!("{}/{pid}/{file}", self.proc)) {
                self.put(format!("{pid} {file}"), v);
            }
        }
        for link in ["exe", "cwd", "root"] {
            let target = self.link(&format!("{}/{pid}/{link}", self.proc));
            self.put(format!("{pid} {link}"), target);
        }
        self.maps(pid);
        self.fds(pid);
        for tid in task_ids(&self.proc, pid) {
            self.thread(pid, tid);
        }
    }

    fn thread(&mut self, pid: i32, tid: i32) {
        let dir = format!("{}/{pid}/task/{tid}", self.proc);
        let key = format!("{pid}/{tid}");
        if let Ok(stat) = std::fs::read_to_string(format!("{dir}/stat")) {
            let fields = stat_fields(&stat);
            for (n, name) in STAT_FIELDS.iter().filter(|(_, name)| THREAD_STAT_FIELDS.contains(name)) {
                if let Some(v) = fields.get(n - 1) {
                    self.put(format!("{key} stat {name}"), v.clone());
                }
            }
        }
        self.status(&key, &format!("{dir}/status"));
        for file in ["comm", "children", "timerslack_ns"] {
            if let Ok(v) = std::fs::read_to_string(format!("{dir}/{file}")) {
                self.put(format!("{key} {file}"), v);
            }
        }
    }

    /// The status fields the inventory says are state (statistics and
    /// values the kernel recomputes are left out). A running task may be
    /// asleep or on a CPU at either moment: only other states are compared.
    fn status(&mut self, key: &str, path: &str) {
        let Ok(status) = std::fs::read_to_string(path) else { return };
        for (name, value) in status.lines().filter_map(|l| l.split_once(':')) {
            let value = value.trim();
            let value = match name {
                "State" if value.starts_with('R') || value.starts_with('S') => "running or sleeping",
                // "queued/limit": the count is of the signals queued to
                // every process of the user; the limit is in limits.
                "SigQ" => continue,
                // The task's pid and its count of fds allocated are kept
                // under other names; the ptrace tracer is gone after both.
                _ => match status_field(name) {
                    Some(Fate::NotNeeded(_)) => continue,
                    _ => value,
                },
            };
            self.put(format!("{key} status {name}"), value);
        }
    }

    /// Each mapping: range, protection, offset, file (device and inode of
    /// deleted and anonymous shared ones by order) and its VmFlags.
    fn maps(&mut self, pid: i32) {
        let Ok(smaps) = std::fs::read_to_string(format!("{}/{pid}/smaps", self.proc)) else { return };
        let mut current: Option<(String, String)> = None;
        for line in smaps.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                if let Some((range, desc)) = current.take() {
                    let written = desc.starts_with("rw") && desc[..4].ends_with('s');
                    if let Some(mtime) = file_mtime(&format!("{}/{pid}/map_files/{range}", self.proc)).filter(|_| !written) {
                        self.put(format!("{pid} map {range} mtime"), mtime);
                    }
                    let flags: Vec<&str> = flags.split_whitespace().collect();
                    self.put(format!("{pid} map {range}"), format!("{desc} [{}]", flags.join(" ")));
                }
            } else if words.len() >= 5 && words[0].contains('-') && !words[0].ends_with(':') {
                let path = words[5..].join(" ");
                let ino: u64 = words[4].parse().unwrap_or(0);
                let stable = path.starts_with('/') && !path.ends_with("(deleted)") || ino == 0;
                let (dev, ino) = if stable { (words[3].to_string(), words[4].to_string()) } else { ("-".into(), self.object(ino)) };
                // A deleted file is made again unnamed (DIR/#INODE).
                let path = if path.ends_with(" (deleted)") && path.starts_with('/') && ino != "0" { "(deleted)".into() } else { path };
                current = Some((words[0].to_string(), format!("{} {} {dev} {ino} {path}", words[1], words[2])));
            }
        }
    }

    fn fds(&mut self, pid: i32) {
        let Ok(dir) = std::fs::read_dir(format!("{}/{pid}/fd", self.proc)) else { return };
        let mut fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        fds.sort();
        // Each fd's fdinfo and open flags, read once.
        let infos: Vec<(i32, String, u64)> = fds
            .into_iter()
            .map(|fd| {
                let info = std::fs::read_to_string(format!("{}/{pid}/fdinfo/{fd}", self.proc)).unwrap_or_default();
                let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).and_then(|f| u64::from_str_radix(f.trim(), 8).ok());
                (fd, info, flags.unwrap_or(u64::MAX))
            })
            .collect();
        // Every fd's object first: an epoll's targets may come after it.
        for (fd, _, flags) in &infos {
            let target = self.link(&format!("{}/{pid}/fd/{fd}", self.proc));
            self.put(format!("{pid} fd {fd}"), target);
            // Files the tree may write change their times themselves.
            if flags & libc::O_ACCMODE as u64 == libc::O_RDONLY as u64 {
                if let Some(mtime) = file_mtime(&format!("{}/{pid}/fd/{fd}", self.proc)) {
                    self.put(format!("{pid} fd {fd} mtime"), mtime);
                }
            }
        }
        for (fd, info, flags) in infos {
            let append = flags & libc::O_APPEND as u64 != 0;
            // Files of proc and sysfs get inode numbers as they are looked up.
            let link = &self.entries[&format!("{pid} fd {fd}")];
            let stable = link.starts_with('/') && !link.starts_with("/proc/") && !link.starts_with("/sys/");
            // Lines that repeat (epoll targets, locks) come in an order of
            // kernel addresses: compared as a sorted list.
            let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for line in info.lines() {
                let Some((name, value)) = line.split_once(':') else { continue };
                let value = value.trim();
                let value = match name {
                    // Where an O_APPEND file's offset is matters to no
                    // write; the workloads' output files grow meanwhile.
                    "pos" if append => continue,
                    // Time left and expirations of a running timerfd.
                    "it_value" | "ticks" => continue,
                    // A number the kernel gives each eventfd.
                    "eventfd-id" => continue,
                    "ino" if !stable => self.object(value.parse().unwrap_or(0)),
                    // "N: TYPE ...": N is the lock's place in /proc/locks.
                    "lock" => value.split_once(':').map_or(value, |(_, l)| l.trim()).split_whitespace().collect::<Vec<_>>().join(" "),
                    "tfd" => self.epoll_target(value),
                    _ => value.to_string(),
                };
                lines.entry(name.to_string()).or_default().push(value);
            }
            for (name, mut values) in lines {
                values.sort();
                self.put(format!("{pid} fdinfo {fd} {name}"), values.join(" | "));
            }
        }
    }

    /// An epoll target: "FD events: E data: D pos:P ino:HEX sdev:S", its
    /// inode (hex) by order when the snapshot met it as an unstable object.
    fn epoll_target(&mut self, value: &str) -> String {
        let words = value.split_whitespace().map(|w| match w.strip_prefix("ino:").and_then(|h| u64::from_str_radix(h, 16).ok()) {
            Some(ino) if self.objects.contains_key(&ino) => format!("ino:{}", self.object(ino)),
            _ => w.to_string(),
        });
        words.collect::<Vec<_>>().join(" ")
    }

    /// Where a /proc link points; "pipe:[N]", "socket:[N]" and deleted files
    /// with their inode by order.
    fn link(&mut self, path: &str) -> String {
        let target = std::fs::read_link(path).map(|t| t.to_string_lossy().into_owned()).unwrap_or_else(|e| format!("({e})"));
        if let Some((kind, rest)) = target.split_once(":[") {
            if let Some(ino) = rest.strip_suffix(']').and_then(|n| n.parse().ok()) {
                return format!("{kind}:{}", self.object(ino));
            }
        }
        if target.ends_with(" (deleted)") {
            if let Ok(meta) = std::fs::metadata(path) {
                return format!("(deleted) {}", self.object(std::os::unix::fs::MetadataExt::ino(&meta)));
            }
        }
        target
    }
}

/// The fields of a stat line, the comm (which may hold spaces) as one.
fn stat_fields(stat: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return Vec::new() };
    let mut out = vec![stat[..open].trim().to_string(), stat[open + 1..close].to_string()];
    out.extend(stat[close + 1..].split_whitespace().map(str::to_string));
    out
}

/// The modification time of a regular file an fd or mapping refers to (a
/// restore must not touch the files it reopens); None for other objects
/// and for files of proc and sysfs, whose times are the time of reading.
fn file_mtime(path: &str) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // Anonymous pipes are made at the restore, their times with them; CRIU's
    // images keep no times of theirs.
    let target = std::fs::read_link(path).ok().filter(|t| t.starts_with("/"))?;
    // memfds too: memfd.img keeps no times either.
    if target.to_string_lossy().starts_with("/memfd:") {
        return None;
    }
    if target.starts_with("/proc") || target.starts_with("/sys") || target.starts_with("/dev") {
        return None;
    }
    let meta = std::fs::metadata(path).ok()?;
    // To the microsecond: CRIU's images keep a deleted file's times so.
    let kind = meta.file_type();
    (kind.is_file() || kind.is_fifo()).then(|| format!("{}.{:06}", meta.mtime(), meta.mtime_nsec() / 1000))
}
