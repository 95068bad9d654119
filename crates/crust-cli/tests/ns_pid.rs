//! Trees in pid, time and cgroup namespaces of their own: the root is pid 1
//! of its pid namespace; the images hold the pids seen there, and a restore
//! makes a new namespace with the same pids inside, whatever the host pids
//! (two copies of one dump side by side); a time namespace's clocks go on
//! from where they were; a cgroup namespace shows the same cgroups inside.
//! A root that is not its pid namespace's init is refused and runs on.
//!
//! Run: `cargo test -p crust-cli --test ns_pid` (as root).

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use common::job::*;
use common::*;

/// The `pidns` workload: its outer process (our child, which made the
/// namespaces) and the namespace's init, the tree's root, by host pid.
struct Tree {
    outer: Option<Child>,
    /// The root as the host sees it (the original, then each restored one).
    root: i32,
    out: PathBuf,
    read: usize,
    history: Vec<String>,
    /// Roots restored and handed to us (reaped on drop).
    restored: Vec<i32>,
}

impl Tree {
    fn start(dir: &Path, opts: &str) -> (Tree, String) {
        Tree::start_with(dir, &[opts], &[])
    }

    /// `pidns ARGS...`, started in the cgroups `cgroups` (directories).
    fn start_with(dir: &Path, args: &[&str], cgroups: &[PathBuf]) -> (Tree, String) {
        become_subreaper();
        let out = dir.join("pidns.out");
        let mut cmd = Command::new(workload_path("pidns"));
        cmd.args(args);
        output_to_file(&mut cmd, &out);
        new_session(&mut cmd);
        if !cgroups.is_empty() {
            enter_cgroups(&mut cmd, cgroups);
        }
        let outer = cmd.spawn().expect("spawning pidns");
        let mut t = Tree { outer: Some(outer), root: 0, out, read: 0, history: Vec::new(), restored: Vec::new() };
        let mut ready = None;
        while t.root == 0 || ready.is_none() {
            let l = t.line();
            if let Some(r) = l.strip_prefix("ROOT ") {
                t.root = r.parse().expect("ROOT pid");
            } else if let Some(r) = l.strip_prefix("READY ") {
                ready = Some(r.to_string());
            }
        }
        (t, ready.unwrap_or_default())
    }

    fn line(&mut self) -> String {
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            if let Some(nl) = text.get(self.read..).and_then(|r| r.find('\n')) {
                let l = text[self.read..self.read + nl].to_string();
                self.read += nl + 1;
                self.history.push(l.clone());
                return l;
            }
            assert!(std::time::Instant::now() < deadline, "pidns: no line within {STEP:?}; so far {:?}", self.history);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lines until both threads have counted once more; every line read.
    fn counts(&mut self) -> Vec<String> {
        let start = self.history.len();
        let mut seen = (false, false);
        while !(seen.0 && seen.1) {
            let l = self.line();
            seen.0 |= l.starts_with("t1 ");
            seen.1 |= l.starts_with("t2 ");
        }
        self.history[start..].to_vec()
    }

    /// After the dump killed the tree: its outer process exits with it.
    fn reap_outer(&mut self) {
        if let Some(mut c) = self.outer.take() {
            let status = wait_child(&mut c, STEP).expect("the outer process exits once its namespace's init is killed");
            assert!(!status.success(), "the outer process reports its init killed: {status:?}");
        }
    }

    /// `crust restore -d --pidfile`: the new root's host pid.
    fn restore(&mut self, images: &Path) -> i32 {
        let pidfile = images.with_extension(format!("pid{}", self.restored.len()));
        let out = restore(images, &["--pidfile", pidfile.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "restore from {} failed: {}", images.display(), String::from_utf8_lossy(&out.stderr));
        let pid: i32 = std::fs::read_to_string(&pidfile).expect("the pidfile").trim().parse().expect("a pid in the pidfile");
        self.restored.push(pid);
        assert_eq!(ppid(pid), std::process::id() as i32, "the restored root {pid} is handed to the test process");
        pid
    }

    /// SIGUSR1 to a restored root `pid`: it checks itself and exits 0.
    fn check_and_end(&mut self, pid: i32) -> ExitStatus {
        // SAFETY: kill on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        let status = poll(STEP, Duration::from_millis(10), || {
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            (r == pid).then_some(status)
        });
        self.restored.retain(|&p| p != pid);
        ExitStatus::from_raw(status.unwrap_or_else(|| panic!("restored root {pid} did not exit; lines {:?}", self.history)))
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // The namespace's processes die with its init.
        for &pid in &self.restored {
            // SAFETY: kill and waitpid on our own children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        if let Some(mut c) = self.outer.take() {
            // SAFETY: a kill of the init, by pid, while its parent (our child) lives.
            unsafe { libc::kill(self.root, libc::SIGKILL) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn status_field(pid: i32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let line = text.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line.trim().to_string()
}

fn ppid(pid: i32) -> i32 {
    status_field(pid, "PPid:").parse().expect("PPid")
}

/// A field of /proc/PID/status that has a value per pid namespace
/// (NSpid...): the innermost one, the process's own namespace's.
fn inner(pid: i32, key: &str) -> i32 {
    status_field(pid, key).split_whitespace().last().unwrap_or_else(|| panic!("{key} of {pid}")).parse().expect("a pid")
}

/// A process's pid inside its own pid namespace.
fn inner_pid(pid: i32) -> i32 {
    inner(pid, "NSpid:")
}

/// The children of `pid` (host pids), by their pid inside its namespace.
fn children_inside(pid: i32) -> BTreeMap<i32, i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).expect("children");
    text.split_whitespace().map(|c| c.parse::<i32>().expect("a pid")).map(|c| (inner_pid(c), c)).collect()
}

fn ns_inode(pid: impl std::fmt::Display, ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}")).map(|m| m.ino()).unwrap_or_else(|e| panic!("/proc/{pid}/ns/{ns}: {e}"))
}

/// The tree's state as it sees it: its pids, its children's, their groups
/// and sessions, the zombie, by pid inside the namespace.
fn state_inside(root: i32) -> Vec<String> {
    let mut out = vec![format!("root {} sid {}", inner_pid(root), inner(root, "NSsid:"))];
    for (inside, host) in children_inside(root) {
        let state = status_field(host, "State:");
        out.push(format!("child {inside} pgid {} sid {} state {}", inner(host, "NSpgid:"), inner(host, "NSsid:"), &state[..1]));
    }
    out
}

fn last_counts(lines: &[String]) -> BTreeMap<String, i64> {
    counters(lines)
}

/// The first count of each thread after a restore is the next one.
fn assert_counts_on(t: &mut Tree, last: &BTreeMap<String, i64>) {
    let after = t.counts();
    let mut first: BTreeMap<String, i64> = BTreeMap::new();
    for l in &after {
        if let Some((k, v)) = l.split_once(' ').filter(|(k, _)| k.starts_with('t')) {
            first.entry(k.to_string()).or_insert(v.parse().expect("a count"));
        }
    }
    for (k, n) in last {
        assert_eq!(first.get(k), Some(&(n + 1)), "{k} goes on from {n}: {after:?}");
    }
}

#[test]
fn a_pid_namespace_comes_back_with_the_same_pids_inside_twice_side_by_side_and_dumps_again() {
    let dir = TempDir::new("ns-pid");
    let images = dir.join("images");
    let (mut t, ready) = Tree::start(dir.path(), "");
    assert_eq!(ready_field(&ready, "pid"), 1, "the root is its namespace's init: {ready}");
    let (child, zombie) = (ready_field(&ready, "child"), ready_field(&ready, "zombie"));
    t.counts();
    assert_ne!(ns_inode(t.root, "pid"), ns_inode("self", "pid"));
    let before = state_inside(t.root);
    let stopped = ready_field(&ready, "stopped");
    assert_eq!(before.len(), 4, "the root, its child, its zombie and its stopped child: {before:?}");
    assert!(before.iter().any(|l| l == &format!("child {stopped} pgid 1 sid 1 state T")), "{before:?}");
    assert!(before.iter().any(|l| l == &format!("child {zombie} pgid 1 sid 1 state Z")), "{before:?}");
    assert!(before.iter().any(|l| l == &format!("child {child} pgid {child} sid 1 state S")), "{before:?}");
    dump(t.root, &images, &[]);
    t.reap_outer();
    let last = last_counts(&t.history);

    // The images hold the pids inside: criu's names and pstree.
    for name in ["core-1.img", "mm-1.img", "pagemap-1.img", "ids-1.img", "fs-1.img", &format!("core-{zombie}.img"), &format!("mm-{child}.img")] {
        assert!(images.join(name).exists(), "{name} in the images");
    }
    let pstree = crit_show(&images.join("pstree.img"));
    let root_entry = &pstree["entries"][0];
    assert_eq!((num(&root_entry["pid"]), num(&root_entry["sid"]), num(&root_entry["pgid"])), (1, 1, 1), "{root_entry}");

    let first = t.restore(&images);
    t.root = first;
    assert_eq!(inner_pid(first), 1, "the restored root is pid 1 inside");
    assert_ne!(ns_inode(first, "pid"), ns_inode("self", "pid"), "in a pid namespace of its own");
    assert_eq!(state_inside(first), before, "pids, groups, sessions and the zombie inside");
    assert_counts_on(&mut t, &last);

    // A second copy from the same images, while the first runs.
    let second = t.restore(&images);
    assert_ne!(second, first);
    assert_ne!(ns_inode(second, "pid"), ns_inode(first, "pid"), "each copy has a pid namespace of its own");
    assert_eq!(state_inside(second), before);
    assert!(t.check_and_end(second).success(), "the second copy checks itself: {:?}", t.history);
    assert_eq!(inner_pid(first), 1, "the first copy runs on");

    // The restored tree is dumped again, and restored again.
    t.counts();
    let again = dir.join("again");
    dump(first, &again, &[]);
    // SAFETY: waitpid on our own child, killed by the dump.
    unsafe { libc::waitpid(first, std::ptr::null_mut(), 0) };
    t.restored.retain(|&p| p != first);
    let last = last_counts(&t.history);
    let third = t.restore(&again);
    t.root = third;
    assert_eq!(state_inside(third), before);
    assert_counts_on(&mut t, &last);
    assert!(t.check_and_end(third).success(), "the tree restored twice checks itself: {:?}", t.history);
}

#[test]
fn a_root_that_is_not_its_pid_namespaces_init_is_refused_and_runs_on() {
    let dir = TempDir::new("ns-pid-notinit");
    let images = dir.join("images");
    let (mut t, ready) = Tree::start(dir.path(), "");
    let child = ready_field(&ready, "child");
    let host_child = children_inside(t.root)[&child];
    // (--shell-job: its session's leader, the init, is outside what is dumped.)
    let out = crust(&dump_args(&host_child.to_string(), &images, &["--shell-job"]), STEP);
    let err = assert_clean_failure(&out, "dump of a process that is not its pid namespace's init");
    assert!(err.contains("pid namespace") && err.contains("init"), "the refusal says why: {err}");
    assert!(!images.join("inventory.img").exists(), "no images are left");
    assert_eq!(state_inside(t.root).len(), 4, "the tree is whole");
    t.counts();
    t.counts();
}

#[test]
fn a_time_namespace_keeps_its_clocks_going_on() {
    let dir = TempDir::new("ns-time");
    let images = dir.join("images");
    let (mut t, _) = Tree::start(dir.path(), "t");
    assert_ne!(ns_inode(t.root, "time"), ns_inode("self", "time"));
    t.counts();
    t.counts();
    dump(t.root, &images, &[]);
    t.reap_outer();
    let mono = |lines: &[String]| lines.iter().filter_map(|l| l.strip_prefix("mono ")?.parse::<i64>().ok()).collect::<Vec<_>>();
    let before = *mono(&t.history).last().expect("mono lines before the dump");
    assert!(before > 100_000_000, "the namespace's clock is 100000 s ahead: {before} ms");
    let timens = std::fs::read_dir(&images).expect("the images").flatten().map(|e| e.path()).find(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("timens-"))
    });
    let timens = crit_show(&timens.expect("a timens-ID.img"));
    assert!(num(&timens["entries"][0]["monotonic"]["tv_sec"]) >= 100_000, "timens-1.img holds the clock inside: {timens}");
    std::thread::sleep(Duration::from_secs(2));
    let root = t.restore(&images);
    t.root = root;
    assert_ne!(ns_inode(root, "time"), ns_inode("self", "time"), "in a time namespace of its own");
    // The workload prints its clock between its counters: read until one comes.
    let mut after = Vec::new();
    for _ in 0..20 {
        after = mono(&t.counts());
        if !after.is_empty() {
            break;
        }
    }
    let first = *after.first().expect("a mono line after the restore");
    assert!(first >= before, "CLOCK_MONOTONIC does not go back: {before} then {first}");
    assert!(first < before + 1500, "CLOCK_MONOTONIC goes on from the dump, not counting the time away: {before} then {first}");
    assert!(t.check_and_end(root).success(), "{:?}", t.history);
}

/// Cgroups of a test's own (cgroup v2 and v1's pids), removed on drop once
/// their processes are gone.
struct OwnCgroups(Vec<PathBuf>);

impl OwnCgroups {
    fn new(name: &str) -> OwnCgroups {
        let name = format!("crust-test-{name}-{}", std::process::id());
        let dirs: Vec<PathBuf> = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids"].iter().map(|m| Path::new(m).join(&name)).collect();
        for d in &dirs {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("making {}: {e}", d.display()));
        }
        OwnCgroups(dirs)
    }
}

impl Drop for OwnCgroups {
    fn drop(&mut self) {
        for d in &self.0 {
            // Its last processes may still be dying.
            let gone = poll(Duration::from_secs(10), Duration::from_millis(20), || std::fs::remove_dir(d).ok());
            if gone.is_none() {
                eprintln!("cgroup {} is left", d.display());
            }
        }
    }
}

#[test]
fn a_cgroup_namespace_shows_the_same_cgroups_inside() {
    let dir = TempDir::new("ns-cgroup");
    let images = dir.join("images");
    // Cgroups other than crust's: the namespace's root is there.
    let cgroups = OwnCgroups::new("nscg");
    let (mut t, _) = Tree::start_with(dir.path(), &["c"], &cgroups.0);
    assert_ne!(ns_inode(t.root, "cgroup"), ns_inode("self", "cgroup"));
    let inside = |pid: i32| {
        let out = Command::new("nsenter").args(["-t", &pid.to_string(), "-C", "--", "cat", &format!("/proc/{pid}/cgroup")]).output().expect("nsenter");
        assert!(out.status.success(), "nsenter: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = inside(t.root);
    assert!(before.lines().all(|l| l.ends_with(":/")), "the root is at its namespace's root: {before}");
    let outside = std::fs::read_to_string(format!("/proc/{}/cgroup", t.root)).expect("its cgroups");
    assert!(outside.contains("crust-test-nscg-"), "in the test's cgroups: {outside}");
    dump(t.root, &images, &[]);
    t.reap_outer();
    let root = t.restore(&images);
    t.root = root;
    assert_ne!(ns_inode(root, "cgroup"), ns_inode("self", "cgroup"), "in a cgroup namespace of its own");
    assert_eq!(inside(root), before);
    assert_eq!(std::fs::read_to_string(format!("/proc/{root}/cgroup")).expect("its cgroups"), outside, "in the same cgroups");
    t.counts();
    assert!(t.check_and_end(root).success(), "{:?}", t.history);
}

/// Another workload as the init of a pid namespace of its own: it checks
/// itself after the restore. Those whose state holds pids: pidfds, POSIX
/// timers signalling a thread and on a thread's CPU clock, POSIX locks.
/// (childstops reads /proc by the pids it sees, which needs a proc of its
/// namespace's: a mount namespace of its own; pidns has a stopped child.)
fn workload_as_init(name: &str, args: &[&str], dump_extra: &[&str]) {
    let dir = TempDir::new(&format!("ns-pid-{name}"));
    let images = dir.join("images");
    let program = workload_path(name);
    let mut all = vec!["x", program.to_str().expect("utf-8 path")];
    all.extend(args);
    let (mut t, ready) = Tree::start_with(dir.path(), &all, &[]);
    assert_eq!(inner_pid(t.root), 1, "{name} is its namespace's init: {ready}");
    dump(t.root, &images, dump_extra);
    t.reap_outer();
    let root = t.restore(&images);
    t.root = root;
    assert_eq!(inner_pid(root), 1);
    // SAFETY: kill on our own child.
    unsafe { libc::kill(root, libc::SIGUSR1) };
    loop {
        let l = t.line();
        assert!(!l.starts_with("FAIL"), "{name} in a pid namespace, restored: {l}; {:?}", t.history);
        if l == "OK" {
            break;
        }
    }
    let status = t.check_and_end(root);
    assert!(status.success(), "{name}: {status:?}; {:?}", t.history);
}

/// The processes the pidfds of `pid` name, by their pids inside (the
/// pidfds workload's own check reads /proc, the host's here, by those).
fn pidfd_targets(pid: i32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fds").flatten() {
        let link = std::fs::read_link(e.path()).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
        if link != "anon_inode:[pidfd]" {
            continue;
        }
        let fd = e.file_name().to_string_lossy().into_owned();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
        let target: i32 = info.lines().find_map(|l| l.strip_prefix("Pid:")).expect("Pid:").trim().parse().expect("a pid");
        out.push((fd, inner_pid(target)));
    }
    out.sort();
    out
}

#[test]
fn pidfds_inside_a_pid_namespace_name_the_same_processes() {
    let dir = TempDir::new("ns-pid-pidfds");
    let images = dir.join("images");
    let program = workload_path("pidfds");
    let (mut t, ready) = Tree::start_with(dir.path(), &["x", program.to_str().expect("utf-8 path")], &[]);
    let before = pidfd_targets(t.root);
    let child = ready_field(&ready, "child");
    assert_eq!(before.iter().map(|(_, p)| *p).collect::<std::collections::BTreeSet<_>>(), [1, child].into(), "{before:?}");
    dump(t.root, &images, &[]);
    t.reap_outer();
    let root = t.restore(&images);
    t.root = root;
    assert_eq!(pidfd_targets(root), before, "each pidfd names the same process inside");
}

#[test]
fn posix_timers_inside_a_pid_namespace() {
    workload_as_init("ptimers", &[], &[]);
}

#[test]
fn file_locks_inside_a_pid_namespace() {
    let dir = TempDir::new("ns-pid-locks-files");
    workload_as_init("locks", &[dir.path().to_str().expect("utf-8 path")], &["--file-locks"]);
}

/// A pre-dump and a dump on top of it: both name the pages images by the
/// pids inside, so the dump leaves the unchanged pages to the pre-dump, and
/// the tree comes back from the chain.
#[test]
fn a_pre_dump_chain_in_a_pid_namespace() {
    let dir = TempDir::new("ns-pid-predump");
    let (pre, images) = (dir.join("pre"), dir.join("images"));
    let (mut t, _) = Tree::start(dir.path(), "");
    let root = t.root.to_string();
    let out = crust(&[os("pre-dump"), os("-t"), os(&root), os("-D"), pre.as_os_str(), os("--track-mem")], STEP);
    assert!(out.status.success(), "pre-dump: {}", String::from_utf8_lossy(&out.stderr));
    assert!(pre.join("pagemap-1.img").exists() && pre.join("pagemap-2.img").exists(), "pagemaps by the pids inside");
    t.counts();
    let stats = dump(t.root, &images, &["--track-mem", "--prev-images-dir", "../pre", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats as JSON");
    assert!(num(&stats["pages_skipped_parent"]) > 0, "pages left to the pre-dump: {stats}");
    t.reap_outer();
    let last = last_counts(&t.history);
    let root = t.restore(&images);
    t.root = root;
    assert_eq!(inner_pid(root), 1);
    assert_counts_on(&mut t, &last);
    assert!(t.check_and_end(root).success(), "{:?}", t.history);
}
