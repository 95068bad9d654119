//! Cgroups through real dumps and restores: what cgroup.img records (checked
//! with crit) and why (`crust explain`, the dump's "cgroups:" line), where each
//! `--manage-cgroups` mode puts the restored tree and what it does to the
//! cgroups' properties, `--cgroup-root` on both sides, and `--freeze-cgroup`.
//!
//! Every test makes its cgroups under a directory of its own in each hierarchy,
//! `crust-test-<test process pid>-cg<n>`, placed under the test process's own
//! cgroup there (so under /process_api/... in memory). [`Cgroups`] removes those
//! directories at the end, whatever happened, after killing whatever still runs
//! in them. Workloads write to a file (it survives the checkpoint; a pipe to the
//! test would not). Restored roots are handed to the test process, a child
//! subreaper, which reaps them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::job::{counters, dump, enter_cgroups, ready_field, Job, STEP};
use common::{assert_clean_failure, assert_running_untraced, crit_show, crust, dump_args, num, os, pidfd_kill, pidfd_open, proc_stat, run_with_timeout, TempDir, CRUST};

// ---------------------------------------------------------------------------
// Hierarchies of this host

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hier {
    /// As /proc/PID/cgroup names it ("" for cgroup v2).
    name: &'static str,
    mount: &'static str,
}

const CPU: Hier = Hier { name: "cpu", mount: "/sys/fs/cgroup/cpu" };
const MEMORY: Hier = Hier { name: "memory", mount: "/sys/fs/cgroup/memory" };
const PIDS: Hier = Hier { name: "pids", mount: "/sys/fs/cgroup/pids" };
const SYSTEMD: Hier = Hier { name: "name=systemd", mount: "/sys/fs/cgroup/systemd" };
const V2: Hier = Hier { name: "", mount: "/sys/fs/cgroup/unified" };
const FREEZER: Hier = Hier { name: "freezer", mount: "/sys/fs/cgroup/freezer" };

/// Every hierarchy a test here makes directories in (and cleans up).
const ALL: [Hier; 6] = [CPU, MEMORY, PIDS, SYSTEMD, V2, FREEZER];
/// Where the recording and restore tests put their workload.
const RECORDED: [Hier; 5] = [CPU, MEMORY, PIDS, SYSTEMD, V2];

impl Hier {
    /// How crust names the hierarchy to a user.
    fn shown(self) -> &'static str {
        if self.name.is_empty() {
            "cgroup2"
        } else {
            self.name
        }
    }

    /// The hierarchy's "cnames" in cgroup.img ("" for v2 has none).
    fn cnames(self) -> Vec<String> {
        if self.name.is_empty() {
            Vec::new()
        } else {
            vec![self.name.to_string()]
        }
    }
}

/// /proc/PID/cgroup: hierarchy name -> path.
fn membership(pid: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_else(|e| panic!("/proc/{pid}/cgroup: {e}"));
    text.lines()
        .map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next();
            (f.next().expect("hierarchy").to_string(), f.next().expect("path").to_string())
        })
        .collect()
}

/// The test process's own cgroup in `h` (and so that of every crust it runs).
fn own(h: Hier) -> String {
    membership("self").remove(h.name).unwrap_or_else(|| panic!("this process is in no {} cgroup", h.shown()))
}

fn join(a: &str, b: &str) -> String {
    let s = format!("{}/{}", a.trim_end_matches('/'), b.trim_matches('/'));
    let s = s.trim_end_matches('/').to_string();
    if s.is_empty() {
        "/".into()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------
// The test's own cgroups

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory of this test in every hierarchy of [`ALL`]; dropping it kills
/// every process still in one of them, reaps those that ended up our children,
/// and removes every directory under them, deepest first. Declare it before the
/// [`Job`]s whose processes live in it: locals drop in reverse order, so the
/// jobs kill and reap their own processes first.
struct Cgroups {
    id: String,
}

impl Cgroups {
    fn new() -> Cgroups {
        for h in ALL {
            assert!(Path::new(h.mount).join("cgroup.procs").exists(), "{} is not mounted at {}", h.shown(), h.mount);
        }
        let id = format!("crust-test-{}-cg{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let cg = Cgroups { id };
        for h in ALL {
            assert!(!cg.dir(h, "").exists(), "{} exists already", cg.dir(h, "").display());
        }
        cg
    }

    /// The path of `sub` in `h` as /proc/PID/cgroup and cgroup.img show it.
    fn path(&self, h: Hier, sub: &str) -> String {
        join(&join(&own(h), &self.id), sub)
    }

    fn dir(&self, h: Hier, sub: &str) -> PathBuf {
        Path::new(h.mount).join(self.path(h, sub).trim_start_matches('/'))
    }

    fn make(&self, h: Hier, sub: &str) -> PathBuf {
        let d = self.dir(h, sub);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }

    fn set(&self, h: Hier, sub: &str, file: &str, value: &str) {
        let p = self.dir(h, sub).join(file);
        std::fs::write(&p, value).unwrap_or_else(|e| panic!("writing {value} to {}: {e}", p.display()));
    }

    fn get(&self, h: Hier, sub: &str, file: &str) -> String {
        let p = self.dir(h, sub).join(file);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())).trim().to_string()
    }

    /// rmdir `sub` in `h` and everything under it; fails the test if it cannot.
    fn remove(&self, h: Hier, sub: &str) {
        if let Err(e) = remove_tree(&self.dir(h, sub)) {
            panic!("{e}");
        }
    }

    /// Every directory under this test's directories, in all hierarchies.
    fn dirs(&self) -> BTreeSet<PathBuf> {
        ALL.iter().flat_map(|h| subdirs(&self.dir(*h, ""))).collect()
    }

    /// Whether process `pid` is (or, a zombie, was) in one of this test's cgroups.
    fn holds(&self, pid: i32) -> bool {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        text.lines().any(|l| l.splitn(3, ':').nth(2).is_some_and(|p| p.split('/').any(|c| c == self.id)))
    }

    /// Processes listed in any of this test's cgroups.
    fn members(&self) -> BTreeSet<i32> {
        self.dirs()
            .iter()
            .flat_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect::<Vec<i32>>())
            .collect()
    }
}

/// `dir` and every directory below it, deepest first.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
        out.push(d);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// rmdir the cgroup `dir` and all below it, retrying while the kernel still
/// counts a just-killed task in it.
fn remove_tree(dir: &Path) -> Result<(), String> {
    for d in subdirs(dir) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(format!("rmdir {}: {e}", d.display())),
            }
        }
    }
    Ok(())
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        // Kill what still runs in our cgroups (the jobs ended their own
        // sessions already). A pidfd pins the process, so the check that it is
        // ours and the kill see the same one.
        let mut killed = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let members = self.members();
            if members.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!("processes {members:?} did not die"));
                break;
            }
            for pid in members {
                if let Ok(fd) = pidfd_open(pid) {
                    if self.holds(pid) {
                        pidfd_kill(&fd, libc::SIGKILL);
                        killed.insert(pid);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Those handed to us (orphans) are ours to reap.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !killed.is_empty() && Instant::now() < deadline {
            let me = std::process::id() as i32;
            killed.retain(|&pid| match proc_stat(pid) {
                Some(st) if st.ppid == me && st.state == 'Z' => {
                    // SAFETY: waitpid on our own unreaped (zombie) child.
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                    false
                }
                Some(st) => st.ppid == me,
                None => false,
            });
            std::thread::sleep(Duration::from_millis(10));
        }
        for h in ALL {
            if let Err(e) = remove_tree(&self.dir(h, "")) {
                problems.push(e);
            }
        }
        if !problems.is_empty() {
            if std::thread::panicking() {
                eprintln!("cleaning up cgroups {}: {problems:?}", self.id);
            } else {
                panic!("cleaning up cgroups {}: {problems:?}", self.id);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// crust and crit

/// The dump's one "cgroups:" line.
fn cgroups_line(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("cgroups:")).collect();
    assert_eq!(lines.len(), 1, "one cgroups: line in the dump's output: {stdout}");
    lines[0].to_string()
}

fn restore(dir: &Path, mode: Option<&str>, extra: &[&str]) -> Output {
    let mut args = Vec::new();
    if let Some(m) = mode {
        args.extend(["--manage-cgroups", m]);
    }
    args.extend(extra);
    common::job::restore(dir, &args)
}

fn explain(dir: &Path, mode: Option<&str>) -> String {
    let mut args = vec![os("explain"), dir.as_os_str()];
    if let Some(m) = mode {
        args.extend([os("--manage-cgroups"), os(m)]);
    }
    let out = crust(&args, STEP);
    assert!(out.status.success(), "explain {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// cgroup.img as crit decodes it.
struct CgImage {
    /// Set id -> its members (hierarchy name, path).
    sets: BTreeMap<u64, BTreeSet<(String, String)>>,
    /// Per hierarchy (cnames joined by ","): its recorded dirs.
    dirs: BTreeMap<String, Vec<Value>>,
}

impl CgImage {
    fn load(images: &Path) -> CgImage {
        let img = crit_show(&images.join("cgroup.img"));
        let entries = img["entries"].as_array().expect("entries");
        assert_eq!(entries.len(), 1, "cgroup.img holds one entry: {img}");
        let e = &entries[0];
        let mut sets = BTreeMap::new();
        for s in e["sets"].as_array().expect("sets") {
            let members = s["ctls"]
                .as_array()
                .map(|c| c.iter().map(|m| (m["name"].as_str().unwrap_or("").to_string(), m["path"].as_str().expect("path").to_string())).collect())
                .unwrap_or_default();
            assert!(sets.insert(num(&s["id"]), members).is_none(), "set ids are unique: {e}");
        }
        let mut dirs = BTreeMap::new();
        for c in e["controllers"].as_array().expect("controllers") {
            let cnames: Vec<&str> = c["cnames"].as_array().map(|v| v.iter().map(|n| n.as_str().expect("cname")).collect()).unwrap_or_default();
            let d = c["dirs"].as_array().cloned().unwrap_or_default();
            assert!(dirs.insert(cnames.join(","), d).is_none(), "one controllers entry per hierarchy: {e}");
        }
        CgImage { sets, dirs }
    }

    /// The recorded dir `path` of `h`.
    fn dir(&self, h: Hier, path: &str) -> &Value {
        let dirs = self.dirs.get(&h.cnames().join(",")).unwrap_or_else(|| panic!("no controllers entry for {}: {:?}", h.shown(), self.dirs.keys()));
        let found: Vec<&Value> = dirs.iter().filter(|d| d["dir_name"] == path).collect();
        assert_eq!(found.len(), 1, "{}: one dir {path} recorded: {dirs:?}", h.shown());
        found[0]
    }
}

/// Saved properties of a recorded dir: name -> value.
fn properties(dir: &Value) -> BTreeMap<String, String> {
    dir["properties"]
        .as_array()
        .map(|ps| ps.iter().map(|p| (p["name"].as_str().expect("name").to_string(), p["value"].as_str().expect("value").to_string())).collect())
        .unwrap_or_default()
}

/// (mode, uid, gid) of a recorded dir.
fn dir_perms(dir: &Value) -> (u64, u64, u64) {
    let p = &dir["dir_perms"];
    assert!(p.is_object(), "no dir_perms: {dir}");
    (num(&p["mode"]), num(&p["uid"]), num(&p["gid"]))
}

/// The cgroup set a task's core image names.
fn task_set(images: &Path, pid: i32) -> u64 {
    let core = crit_show(&images.join(format!("core-{pid}.img")));
    let e = &core["entries"][0];
    let v = if e["thread_core"]["cg_set"].is_null() { &e["tc"]["cg_set"] } else { &e["thread_core"]["cg_set"] };
    assert!(!v.is_null(), "core-{pid}.img names no cg_set: {e}");
    num(v)
}

fn perms_of(dir: &Path) -> (u64, u64, u64) {
    let md = std::fs::metadata(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    ((md.permissions().mode() & 0o7777) as u64, md.uid() as u64, md.gid() as u64)
}

// ---------------------------------------------------------------------------
// The recorded workload: test_mm in cpu, memory, pids, name=systemd and cgroup2

/// The properties the workload's cgroups have at dump time.
const SAVED: [(Hier, &str, &str); 5] = [
    (CPU, "cpu.shares", "512"),
    (CPU, "cpu.cfs_period_us", "100000"),
    (CPU, "cpu.cfs_quota_us", "50000"),
    (MEMORY, "memory.limit_in_bytes", "268435456"),
    (PIDS, "pids.max", "100"),
];
/// Other values for the same properties.
const OTHER: [(Hier, &str, &str); 5] = [
    (CPU, "cpu.shares", "2048"),
    (CPU, "cpu.cfs_period_us", "250000"),
    (CPU, "cpu.cfs_quota_us", "-1"),
    (MEMORY, "memory.limit_in_bytes", "134217728"),
    (PIDS, "pids.max", "50"),
];
/// Mode and owner of the workload's cpu cgroup.
const CPU_PERMS: (u64, u64, u64) = (0o750, 4321, 8765);
const JOB: &str = "job";

/// Makes (if missing) the workload's cgroup in `h` with the properties it has at dump time.
fn make_job_cgroup(cg: &Cgroups, h: Hier) -> PathBuf {
    let d = cg.make(h, JOB);
    set_props(cg, h, &SAVED);
    if h == CPU {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(CPU_PERMS.0 as u32)).expect("chmod");
        std::os::unix::fs::chown(&d, Some(CPU_PERMS.1 as u32), Some(CPU_PERMS.2 as u32)).expect("chown");
    }
    d
}

fn set_props(cg: &Cgroups, h: Hier, props: &[(Hier, &str, &str)]) {
    for (ph, file, value) in props {
        if *ph == h {
            // cpu.cfs_quota_us must fit the period: lift the quota before changing the period.
            if *file == "cpu.cfs_period_us" {
                cg.set(h, JOB, "cpu.cfs_quota_us", "-1");
            }
            cg.set(h, JOB, file, value);
        }
    }
}

/// Asserts the workload's cgroups have these property values now.
fn assert_props(cg: &Cgroups, want: &[(Hier, &str, &str)], what: &str) {
    let have: Vec<(Hier, &str, String)> = want.iter().map(|(h, f, _)| (*h, *f, cg.get(*h, JOB, f))).collect();
    let want: Vec<(Hier, &str, String)> = want.iter().map(|(h, f, v)| (*h, *f, v.to_string())).collect();
    assert_eq!(have, want, "{what}: properties of the workload's cgroups");
}

/// A test_mm dumped (and killed) in its cgroups, ready to be restored.
struct Dumped {
    // Drop order: the job (its process) first, then the cgroups, then the files.
    job: Job,
    cg: Cgroups,
    _dir: TempDir,
    images: PathBuf,
    /// Each thread's last counter before the dump.
    at_dump: BTreeMap<String, i64>,
}

fn dumped(test: &str) -> Dumped {
    let cg = Cgroups::new();
    let dirs: Vec<PathBuf> = RECORDED.iter().map(|h| make_job_cgroup(&cg, *h)).collect();
    let dir = TempDir::new(test);
    let mut job = Job::build("test_mm", &[]).cgroups(&dirs).start(dir.path());
    job.ready();
    job.line(STEP);
    job.line(STEP);
    let m = membership(&job.pid.to_string());
    for h in RECORDED {
        assert_eq!(m[h.name], cg.path(h, JOB), "the workload runs in its {} cgroup", h.shown());
    }
    let images = dir.join("images");
    let out = dump(job.pid, &images, &[]);
    assert!(cgroups_line(&out).starts_with("cgroups: recorded "), "{out}");
    job.reap_original();
    job.drain();
    let at_dump = counters(&job.history);
    assert_eq!(at_dump.len(), 2, "both threads printed before the dump: {:?}", job.history);
    Dumped { job, cg, _dir: dir, images, at_dump }
}

impl Dumped {
    fn restore(&self, mode: Option<&str>, extra: &[&str]) -> Output {
        restore(&self.images, mode, extra)
    }

    fn restore_ok(&mut self, mode: Option<&str>) {
        let out = self.restore(mode, &[]);
        assert!(out.status.success(), "restore with --manage-cgroups {mode:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        self.job.adopt_restored();
    }

    /// The restored process is in the workload's cgroups where it was recorded
    /// (in the restoring crust's, ours, in the other hierarchies).
    fn assert_in_job_cgroups(&self, what: &str) {
        let mut want = membership("self");
        for h in RECORDED {
            want.insert(h.name.to_string(), self.cg.path(h, JOB));
        }
        assert_eq!(membership(&self.job.pid.to_string()), want, "{what}: cgroups of the restored process");
    }

    /// The restored process runs: both threads count on from where the dump left them.
    fn assert_runs(&mut self, what: &str) {
        let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        while seen.len() < 2 || seen.values().any(|v| v.len() < 2) {
            let l = self.job.line(STEP);
            let (t, n) = l.split_once(' ').unwrap_or_else(|| panic!("{what}: unexpected line {l:?}"));
            seen.entry(t.to_string()).or_default().push(n.parse().unwrap_or_else(|_| panic!("{what}: unexpected line {l:?}")));
        }
        for (t, v) in &seen {
            let last = self.at_dump.get(t).unwrap_or_else(|| panic!("{what}: unknown thread {t}"));
            assert_eq!(v[0], last + 1, "{what}: {t} continues from the dump ({last}); after restore: {v:?}");
            assert_eq!(v[1], v[0] + 1, "{what}: {t} counts on: {v:?}");
        }
    }

    /// A restore that must fail before any task ran: a clean error, no process
    /// with the root's pid, no output from it.
    fn assert_fails_before_any_task_runs(&mut self, out: &Output, what: &str) -> String {
        let err = self.job.assert_restore_failed(out, what);
        std::thread::sleep(Duration::from_millis(300));
        let lines = self.job.drain();
        assert!(lines.is_empty(), "{what}: the restored tree ran and printed {lines:?}");
        err
    }

    fn remove_job_cgroups(&self) {
        for h in RECORDED {
            self.cg.remove(h, "");
        }
    }
}

/// The error names hierarchy `h` and the workload's path in it.
fn assert_names(err: &str, h: Hier, path: &str, what: &str) {
    assert!(err.contains(&format!("{}:", h.shown())) && err.contains(path), "{what}: the error must name {}:{path}: {err}", h.shown());
}

// ---------------------------------------------------------------------------
// Recording

#[test]
fn dump_records_cgroups_that_differ_from_crusts_and_explain_says_why() {
    let cg = Cgroups::new();
    let dirs: Vec<PathBuf> = RECORDED.iter().map(|h| make_job_cgroup(&cg, *h)).collect();
    let tmp = TempDir::new("cgroups-record");
    let mut job = Job::build("test_mm", &[]).cgroups(&dirs).start(tmp.path());
    job.ready();
    let pid = job.pid;
    let images = tmp.join("images");
    let out = dump(pid, &images, &[]);
    job.reap_original();

    // The dump says what it recorded.
    let line = cgroups_line(&out);
    assert!(line.starts_with("cgroups: recorded "), "{line}");
    for h in RECORDED {
        assert!(line.contains(&format!("{}:{}", h.shown(), cg.path(h, JOB))), "the cgroups line names {}: {line}", h.shown());
    }
    for name in ["cpuacct", "cpuset", "devices", "freezer", "blkio"] {
        assert!(!line.contains(&format!("{name}:")), "{name} is as crust's own, not recorded: {line}");
    }

    // cgroup.img: the task's set lists exactly the hierarchies where it differs
    // from crust (all others are where crust ran: this process's cgroups).
    let img = CgImage::load(&images);
    let set = task_set(&images, pid);
    let want: BTreeSet<(String, String)> = RECORDED.iter().map(|h| (h.name.to_string(), cg.path(*h, JOB))).collect();
    assert_eq!(img.sets.get(&set), Some(&want), "members of the task's set {set}; sets: {:?}", img.sets);
    assert_eq!(img.sets.get(&1), Some(&BTreeSet::new()), "set 1 is crust's own cgroups and lists nothing");
    assert_eq!(img.sets.len(), 2, "one set for crust's cgroups, one for the task: {:?}", img.sets);
    for h in RECORDED {
        assert!(img.dirs.contains_key(&h.cnames().join(",")), "a controllers entry for {}", h.shown());
    }
    for (cnames, dirs) in &img.dirs {
        let recorded = RECORDED.iter().any(|h| h.cnames().join(",") == *cnames);
        assert_eq!(dirs.len(), usize::from(recorded), "dirs recorded for {cnames:?}: {dirs:?}");
    }
    // Properties as the cgroups had them, and mode and owner.
    let cpu = img.dir(CPU, &cg.path(CPU, JOB));
    let want_props = |h: Hier| -> BTreeMap<String, String> {
        SAVED.iter().filter(|(ph, _, _)| *ph == h).map(|(_, f, v)| (f.to_string(), v.to_string())).collect()
    };
    assert_eq!(properties(cpu), want_props(CPU), "cpu properties: {cpu}");
    assert_eq!(dir_perms(cpu), CPU_PERMS, "cpu dir_perms: {cpu}");
    for h in [MEMORY, PIDS] {
        let d = img.dir(h, &cg.path(h, JOB));
        assert_eq!(properties(d), want_props(h), "{} properties: {d}", h.shown());
        assert_eq!(dir_perms(d), perms_of(&cg.dir(h, JOB)), "{} dir_perms: {d}", h.shown());
    }
    let d = img.dir(SYSTEMD, &cg.path(SYSTEMD, JOB));
    assert_eq!(properties(d), BTreeMap::new(), "name=systemd has no properties: {d}");
    // cgroup v2: whichever of its known files this host's cgroup has.
    let d = img.dir(V2, &cg.path(V2, JOB));
    let v2_files = ["cpuset.cpus", "cpuset.mems", "cpu.weight", "cpu.max", "memory.max", "pids.max"];
    let present: BTreeMap<String, String> = v2_files
        .iter()
        .filter(|f| cg.dir(V2, JOB).join(f).exists())
        .map(|f| (f.to_string(), cg.get(V2, JOB, f)))
        .collect();
    assert_eq!(properties(d), present, "cgroup2 properties: {d}");
    assert_eq!(dir_perms(d), perms_of(&cg.dir(V2, JOB)), "cgroup2 dir_perms: {d}");

    // explain: each membership and why it was recorded, and what a restore needs.
    let text = explain(&images, None);
    for h in RECORDED {
        let s = format!(
            "task {pid} (test_mm) is in {name}:{} while crust ran in {name}:{}, so it was recorded",
            cg.path(h, JOB),
            own(h),
            name = h.shown()
        );
        assert!(text.contains(&s), "explain must say {s:?}: {text}");
    }
    assert!(!text.contains("shared crust's cgroups"), "{text}");
    let cpu_line = text.lines().find(|l| l.trim_start().starts_with(&format!("cpu:{} ", cg.path(CPU, JOB)))).unwrap_or_else(|| panic!("explain describes the cpu cgroup: {text}"));
    for s in ["cpu.shares=512", "cpu.cfs_quota_us=50000", "mode 750, owner 4321:8765", "created with its properties if missing"] {
        assert!(cpu_line.contains(s), "explain's line on the cpu cgroup must say {s:?}: {cpu_line}");
    }
    let strict = explain(&images, Some("strict"));
    assert!(strict.contains("must not exist"), "explain --manage-cgroups strict: {strict}");

    // A workload in the same cgroups as the dumping crust: nothing to record.
    let mut shared = Job::build("test_mm", &[]).cgroups(&dirs).output("shared.out").start(tmp.path());
    shared.ready();
    shared.line(STEP);
    let images2 = tmp.join("images-shared");
    let pid_s = shared.pid.to_string();
    let mut cmd = Command::new(CRUST);
    cmd.args(dump_args(&pid_s, &images2, &[]));
    enter_cgroups(&mut cmd, &dirs);
    let out = run_with_timeout(&mut cmd, STEP);
    assert!(out.status.success(), "dump from inside the cgroups failed: {}", String::from_utf8_lossy(&out.stderr));
    shared.reap_original();
    shared.drain();
    let at_dump = counters(&shared.history);
    assert_eq!(cgroups_line(&String::from_utf8_lossy(&out.stdout)), "cgroups: every task shared crust's cgroups, nothing recorded");
    let img = CgImage::load(&images2);
    assert_eq!(task_set(&images2, shared.pid), 1, "the task is in crust's set");
    assert!(img.sets.values().all(BTreeSet::is_empty), "no set lists a member: {:?}", img.sets);
    assert!(img.dirs.values().all(Vec::is_empty), "no dir is recorded: {:?}", img.dirs);
    let text = explain(&images2, None);
    assert!(text.contains("all 1 task(s) shared crust's cgroups"), "explain: {text}");
    assert!(!text.contains("so it was recorded"), "explain: {text}");

    // Restored, it stays with the crust that restores it: in our cgroups.
    let out = restore(&images2, None, &[]);
    assert!(out.status.success(), "restore of the shared dump failed: {}", String::from_utf8_lossy(&out.stderr));
    shared.adopt_restored();
    assert_eq!(membership(&shared.pid.to_string()), membership("self"), "restored into the restoring crust's cgroups");
    let after: Vec<String> = (0..2).map(|_| shared.line(STEP)).collect();
    let first = counters(&after);
    for (t, n) in &first {
        assert_eq!(*n, at_dump[t] + 1, "{t} continues after restore: {after:?}");
    }
    shared.kill_restored();
}

// ---------------------------------------------------------------------------
// Restore, mode by mode

#[test]
fn soft_restore_creates_removed_cgroups_with_saved_properties_and_perms() {
    let mut d = dumped("cgroups-soft-create");
    d.remove_job_cgroups();
    d.restore_ok(None); // soft is the default
    for h in RECORDED {
        assert!(d.cg.dir(h, JOB).is_dir(), "{} cgroup created again", h.shown());
    }
    assert_props(&d.cg, &SAVED, "soft, created");
    assert_eq!(perms_of(&d.cg.dir(CPU, JOB)), CPU_PERMS, "mode and owner of the created cpu cgroup");
    d.assert_in_job_cgroups("soft, created");
    d.assert_runs("soft, created");
    d.job.kill_restored();
}

#[test]
fn soft_restore_uses_existing_cgroups_as_they_are() {
    let mut d = dumped("cgroups-soft-existing");
    for h in RECORDED {
        set_props(&d.cg, h, &OTHER);
    }
    d.restore_ok(Some("soft"));
    assert_props(&d.cg, &OTHER, "soft, existing");
    d.assert_in_job_cgroups("soft, existing");
    d.assert_runs("soft, existing");
    d.job.kill_restored();
}

#[test]
fn full_restore_sets_saved_properties_in_existing_and_creates_missing_cgroups() {
    let mut d = dumped("cgroups-full");
    for h in RECORDED {
        set_props(&d.cg, h, &OTHER);
    }
    d.cg.remove(MEMORY, JOB);
    d.restore_ok(Some("full"));
    assert!(d.cg.dir(MEMORY, JOB).is_dir(), "full creates the missing memory cgroup");
    assert_props(&d.cg, &SAVED, "full");
    d.assert_in_job_cgroups("full");
    d.assert_runs("full");
    d.job.kill_restored();
}

/// A restore in `mode` with the workload's cgroup in `missing` removed fails
/// cleanly and creates nothing; once that cgroup is there again (and all of
/// them have the OTHER properties) it restores into them, which then have the
/// properties `want`.
fn restore_needs_existing_cgroups(test: &str, mode: &str, missing: Hier, want: &[(Hier, &str, &str)]) {
    let mut d = dumped(test);
    d.cg.remove(missing, JOB);
    let before = d.cg.dirs();
    let out = d.restore(Some(mode), &[]);
    let what = format!("{mode} with the {} cgroup missing", missing.shown());
    let err = d.assert_fails_before_any_task_runs(&out, &what);
    assert_names(&err, missing, &d.cg.path(missing, JOB), &what);
    assert_eq!(d.cg.dirs(), before, "{mode} creates nothing");

    d.cg.make(missing, JOB);
    for h in RECORDED {
        set_props(&d.cg, h, &OTHER);
    }
    d.restore_ok(Some(mode));
    assert_props(&d.cg, want, mode);
    d.assert_in_job_cgroups(mode);
    d.assert_runs(mode);
    d.job.kill_restored();
}

#[test]
fn props_restore_needs_existing_cgroups_and_sets_their_properties() {
    restore_needs_existing_cgroups("cgroups-props", "props", CPU, &SAVED);
}

#[test]
fn none_restore_needs_existing_cgroups_and_leaves_their_properties() {
    restore_needs_existing_cgroups("cgroups-none", "none", MEMORY, &OTHER);
}

#[test]
fn ignore_restore_leaves_the_tree_in_the_restoring_crusts_cgroups() {
    let mut d = dumped("cgroups-ignore");
    for h in RECORDED {
        set_props(&d.cg, h, &OTHER);
    }
    d.restore_ok(Some("ignore"));
    assert_eq!(membership(&d.job.pid.to_string()), membership("self"), "ignore: in the restoring crust's cgroups");
    assert_props(&d.cg, &OTHER, "ignore");
    d.assert_runs("ignore, cgroups existing");
    d.job.kill_restored();

    d.remove_job_cgroups();
    d.restore_ok(Some("ignore"));
    assert_eq!(membership(&d.job.pid.to_string()), membership("self"), "ignore: in the restoring crust's cgroups");
    assert_eq!(d.cg.dirs(), BTreeSet::new(), "ignore creates nothing");
    d.assert_runs("ignore, cgroups missing");
    d.job.kill_restored();
}

#[test]
fn strict_restore_refuses_an_existing_cgroup_and_creates_missing_ones() {
    let mut d = dumped("cgroups-strict");
    // Only the pids cgroup exists: crust must not leave the others it might
    // have made before it came to pids.
    for h in [CPU, MEMORY, SYSTEMD, V2] {
        d.cg.remove(h, "");
    }
    let before = d.cg.dirs();
    let out = d.restore(Some("strict"), &[]);
    let err = d.assert_fails_before_any_task_runs(&out, "strict with the pids cgroup existing");
    assert_names(&err, PIDS, &d.cg.path(PIDS, JOB), "strict with the pids cgroup existing");
    assert_eq!(d.cg.dirs(), before, "strict leaves nothing it created");

    d.cg.remove(PIDS, "");
    d.restore_ok(Some("strict"));
    for h in RECORDED {
        assert!(d.cg.dir(h, JOB).is_dir(), "strict creates the {} cgroup", h.shown());
    }
    assert_props(&d.cg, &SAVED, "strict");
    assert_eq!(perms_of(&d.cg.dir(CPU, JOB)), CPU_PERMS, "mode and owner of the created cpu cgroup");
    d.assert_in_job_cgroups("strict");
    d.assert_runs("strict");
    d.job.kill_restored();
}

#[test]
fn restore_failing_after_its_tasks_exist_kills_them_and_removes_the_cgroups_it_made() {
    let mut d = dumped("cgroups-late-failure");
    // The pids cgroup exists and leaves room for one task: the restored root
    // is placed in it, then its threads cannot be made.
    for h in [CPU, MEMORY, SYSTEMD, V2] {
        d.cg.remove(h, "");
    }
    d.cg.set(PIDS, JOB, "pids.max", "1");
    let before = d.cg.dirs();
    let out = d.restore(None, &[]);
    d.assert_fails_before_any_task_runs(&out, "soft with pids.max 1");
    assert_eq!(d.cg.dirs(), before, "the cgroups crust made for the failed restore are removed");
    assert_eq!(d.cg.get(PIDS, JOB, "pids.max"), "1", "soft leaves an existing cgroup's properties");

    // With room for the threads the same images restore.
    d.cg.set(PIDS, JOB, "pids.max", "100");
    d.restore_ok(None);
    d.assert_in_job_cgroups("soft after pids.max was raised");
    d.assert_runs("soft after pids.max was raised");
    d.job.kill_restored();
}

#[test]
fn full_restore_failing_after_its_tasks_exist_puts_back_the_properties_it_changed() {
    let mut d = dumped("cgroups-full-late-failure");
    for h in RECORDED {
        set_props(&d.cg, h, &OTHER);
    }
    // The pids cgroup above the workload's leaves room for one task: full
    // sets the saved properties, places the root, then its threads cannot be made.
    d.cg.set(PIDS, "", "pids.max", "1");
    let before = d.cg.dirs();
    let out = d.restore(Some("full"), &[]);
    d.assert_fails_before_any_task_runs(&out, "full under pids.max 1");
    assert_eq!(d.cg.dirs(), before, "nothing created is left");
    assert_props(&d.cg, &OTHER, "full, failed after setting them: the properties as they were");

    d.cg.set(PIDS, "", "pids.max", "max");
    d.restore_ok(Some("full"));
    assert_props(&d.cg, &SAVED, "full");
    d.assert_runs("full after the limit was lifted");
    d.job.kill_restored();
}

/// Two processes whose cgroups nest: the parent in cpu:.../a/b, its child in
/// cpu:.../a. Each recorded cgroup carries its own properties and mode, and a
/// restore that creates them must give each its own, whichever is made first.
#[test]
fn nested_cgroups_of_a_tree_are_created_each_with_its_own_properties() {
    let cg = Cgroups::new();
    let a = cg.make(CPU, "a");
    let ab = cg.make(CPU, "a/b");
    cg.set(CPU, "a", "cpu.shares", "300");
    cg.set(CPU, "a/b", "cpu.shares", "600");
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let tmp = TempDir::new("cgroups-nested");
    let data = tmp.join("data");
    common::write_pattern_file(&data, 20_000, 9);
    let mut job = Job::build("family", &[data.to_str().unwrap()]).cgroups(&[ab]).start(tmp.path());
    let ready = job.ready();
    let child = ready_field(&ready, "child");
    std::fs::write(a.join("cgroup.procs"), child.to_string()).expect("moving the child");
    assert_eq!(membership(&child.to_string())["cpu"], cg.path(CPU, "a"));
    let images = tmp.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    let img = CgImage::load(&images);
    assert_eq!(properties(img.dir(CPU, &cg.path(CPU, "a")))["cpu.shares"], "300");
    assert_eq!(properties(img.dir(CPU, &cg.path(CPU, "a/b")))["cpu.shares"], "600");

    for mode in ["strict", "soft"] {
        cg.remove(CPU, "");
        let out = restore(&images, Some(mode), &[]);
        assert!(out.status.success(), "{mode} restore of the family failed: {}", String::from_utf8_lossy(&out.stderr));
        job.adopt_restored();
        assert_eq!(membership(&job.pid.to_string())["cpu"], cg.path(CPU, "a/b"), "{mode}: the parent's cgroup");
        assert_eq!(membership(&child.to_string())["cpu"], cg.path(CPU, "a"), "{mode}: the child's cgroup");
        assert_eq!(cg.get(CPU, "a/b", "cpu.shares"), "600", "{mode}: cpu.shares of .../a/b");
        assert_eq!(cg.get(CPU, "a", "cpu.shares"), "300", "{mode}: cpu.shares of .../a");
        assert_eq!(perms_of(&cg.dir(CPU, "a")).0, 0o700, "{mode}: mode of .../a");
        if mode == "strict" {
            job.expect_ok();
        } else {
            job.kill_restored();
        }
    }
}

// ---------------------------------------------------------------------------
// --cgroup-root

/// A cgroup that only a broken crust would make (outside this test's
/// directories); removed on drop if it is there. Declare it before the job.
struct Stray(PathBuf);

impl Drop for Stray {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = remove_tree(&self.0);
        }
    }
}

#[test]
fn cgroup_root_records_relative_paths_and_restores_under_another_root() {
    let cg = Cgroups::new();
    // The workload's cgroup has a name of this test's own: should crust put it
    // at the hierarchy's top instead of under the root, it is found and removed.
    let leaf = format!("{}-job", cg.id);
    let _stray = Stray(Path::new(CPU.mount).join(&leaf));
    let rel = format!("/{leaf}");
    let in_base = format!("base/{leaf}");
    let job_dir = cg.make(CPU, &in_base);
    cg.set(CPU, &in_base, "cpu.shares", "256");
    cg.set(CPU, &in_base, "cpu.cfs_quota_us", "50000");
    let tmp = TempDir::new("cgroups-root");
    let mut job = Job::build("test_mm", &[]).cgroups(&[job_dir]).start(tmp.path());
    job.ready();
    job.line(STEP);
    job.line(STEP);
    let pid = job.pid;
    let base = cg.path(CPU, "base");

    // A root the task is not under: the dump refuses, and leaves the task running.
    let elsewhere = cg.path(CPU, "elsewhere");
    let bad = tmp.join("images-bad");
    let pid_s = pid.to_string();
    let root_arg = format!("cpu:{elsewhere}");
    let out = crust(&dump_args(&pid_s, &bad, &["-R", "--cgroup-root", &root_arg]), STEP);
    let err = assert_clean_failure(&out, "dump with a cgroup root the task is not under");
    assert!(err.contains(&elsewhere) && err.contains(&cg.path(CPU, &in_base)), "the error names the root and the task's cgroup: {err}");
    common::assert_no_inventory(&bad);
    assert_running_untraced(pid, Duration::from_secs(10));
    let before = counters(&job.history);
    for _ in 0..4 {
        job.line(STEP);
    }
    let now = counters(&job.history);
    for (t, n) in &before {
        assert!(now[t] > *n, "{t} counts on after the refused dump: {:?}", job.history);
    }

    let images = tmp.join("images");
    let root_arg = format!("cpu:{base}");
    let out = dump(pid, &images, &["--cgroup-root", &root_arg]);
    job.reap_original();
    job.drain();
    let at_dump = counters(&job.history);
    assert!(cgroups_line(&out).contains(&format!("cpu:{rel}")), "{out}");
    let img = CgImage::load(&images);
    let set = task_set(&images, pid);
    assert_eq!(img.sets[&set], BTreeSet::from([("cpu".to_string(), rel.clone())]), "recorded relative to the root");
    let d = img.dir(CPU, &rel);
    assert_eq!(properties(d)["cpu.shares"], "256");
    let text = explain(&images, None);
    assert!(text.contains(&format!("relative to --cgroup-root cpu:{base}")), "explain: {text}");
    assert!(text.contains(&format!("task {pid} (test_mm) is in cpu:{rel} ")), "explain: {text}");

    // Restored under a tighter root: the saved quota does not fit under it.
    cg.remove(CPU, "base");
    let tight = cg.make(CPU, "tight");
    cg.set(CPU, "tight", "cpu.cfs_quota_us", "10000");
    let root_arg = format!("cpu:{}", cg.path(CPU, "tight"));
    let out = restore(&images, None, &["--cgroup-root", &root_arg]);
    let err = job.assert_restore_failed(&out, "restore under a root with a smaller quota");
    assert!(err.contains(&format!("cpu:{rel}")) && err.contains("cpu.cfs_quota_us"), "the error names the cgroup and the property: {err}");
    assert!(tight.is_dir() && !tight.join(&leaf).exists(), "the cgroup crust made under the root is removed");

    // Restored under another root.
    let other = cg.make(CPU, "other");
    let root_arg = format!("cpu:{}", cg.path(CPU, "other"));
    let explain_under = |root: &str| {
        let out = crust(&[os("explain"), images.as_os_str(), os("--cgroup-root"), os(root)], STEP);
        assert!(out.status.success(), "explain --cgroup-root: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let line = |text: &str| {
        let mine = |l: &&str| l.trim_start().starts_with(&format!("cpu:{rel} ")) && l.contains("saved properties");
        text.lines().find(mine).map(str::to_string).unwrap_or_default()
    };
    let before = explain_under(&root_arg);
    assert!(line(&before).ends_with("it does not exist on this host"), "explain looks under the given root: {before}");
    let out = restore(&images, None, &["--cgroup-root", &root_arg]);
    assert!(out.status.success(), "restore under another root failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    let mut want = membership("self");
    want.insert("cpu".into(), cg.path(CPU, &format!("other/{leaf}")));
    assert_eq!(membership(&pid.to_string()), want, "the restored task is in the other root's job cgroup");
    assert_eq!(cg.get(CPU, &format!("other/{leaf}"), "cpu.shares"), "256", "created with its saved properties");
    assert!(other.join(&leaf).is_dir() && !cg.dir(CPU, "base").exists(), "nothing is made under the old root");
    let after = explain_under(&root_arg);
    assert!(line(&after).ends_with("it exists on this host"), "explain sees the cgroup under the given root: {after}");
    let after: Vec<String> = (0..2).map(|_| job.line(STEP)).collect();
    for (t, n) in counters(&after) {
        assert_eq!(n, at_dump[&t] + 1, "{t} continues after restore: {after:?}");
    }
    job.kill_restored();
}

// ---------------------------------------------------------------------------
// --freeze-cgroup

fn freezer_state(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("freezer.state")).expect("freezer.state").trim().to_string()
}

/// Thaws the freezer cgroup when dropped: declared after the job, it is dropped
/// before it, so a test that fails with the cgroup frozen does not hang killing
/// and reaping frozen processes.
struct Thaw(PathBuf);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
    }
}

/// A task_state as crit shows it: a number, or a name from crit's own table
/// (which calls CRIU's TASK_ZOMBIE, 6, "Stopped").
fn task_state(v: &Value) -> u64 {
    match v.as_str() {
        Some("Alive") => 1,
        Some("Zombie") => 3,
        Some("Stopped") => 6,
        Some(other) => panic!("unknown task_state {other:?}"),
        None => num(v),
    }
}

/// The forker's fork count, read from its next "forks N" line.
fn next_forks(job: &mut Job) -> u64 {
    loop {
        let l = job.line(STEP);
        if let Some(n) = l.strip_prefix("forks ") {
            return n.parse().expect("fork count");
        }
        assert!(!l.starts_with("FAIL"), "forker: {l}");
    }
}

#[test]
fn freeze_cgroup_dumps_a_fast_forking_tree_and_thaws_it() {
    let cg = Cgroups::new();
    let freezer = cg.make(FREEZER, "tree");
    let tmp = TempDir::new("cgroups-freeze");
    let mut job = Job::build("forker", &[]).cgroups(std::slice::from_ref(&freezer)).start(tmp.path());
    let _thaw = Thaw(freezer.clone());
    job.ready();
    next_forks(&mut job);
    let pid = job.pid;
    let freezer_s = freezer.to_str().unwrap().to_string();
    for i in 0..5 {
        let images = tmp.join(format!("images-{i}"));
        let out = dump(pid, &images, &["-R", "--freeze-cgroup", &freezer_s]);
        assert_eq!(freezer_state(&freezer), "THAWED", "dump {i}: the cgroup is thawed after the dump: {out}");
        let pstree = crit_show(&images.join("pstree.img"));
        let procs = pstree["entries"].as_array().expect("pstree entries");
        assert!(procs.len() >= 2, "dump {i}: the forker's children are in the tree: {pstree}");
        assert_eq!(num(&procs[0]["pid"]), pid as u64, "dump {i}: the root first");
        for p in &procs[1..] {
            assert_eq!(num(&p["ppid"]), pid as u64, "dump {i}: every child is the forker's: {p}");
            let child = num(&p["pid"]);
            assert!(images.join(format!("core-{child}.img")).exists(), "dump {i}: the child {child} has its core image");
        }
        assert_running_untraced(pid, Duration::from_secs(10));
        let a = next_forks(&mut job);
        let b = next_forks(&mut job);
        assert!(b > a, "dump {i}: the forker forks on ({a} then {b})");
        std::fs::remove_dir_all(&images).unwrap();
    }
    job.expect_ok();
}

#[test]
fn freeze_cgroup_is_thawed_when_the_dump_fails() {
    let cg = Cgroups::new();
    let freezer = cg.make(FREEZER, "tree");
    let tmp = TempDir::new("cgroups-freeze-fail");
    let mut job = Job::build("forker", &[]).cgroups(std::slice::from_ref(&freezer)).start(tmp.path());
    let _thaw = Thaw(freezer.clone());
    job.ready();
    next_forks(&mut job);
    let pid = job.pid.to_string();
    let freezer_s = freezer.to_str().unwrap().to_string();

    // The images cannot be written: the path goes through a regular file.
    let file = tmp.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = crust(&dump_args(&pid, &file.join("images"), &["-R", "--freeze-cgroup", &freezer_s]), STEP);
    assert_clean_failure(&out, "dump into an unusable images dir");
    assert_eq!(freezer_state(&freezer), "THAWED", "the cgroup is thawed after the failed dump");
    assert_running_untraced(job.pid, Duration::from_secs(10));
    let a = next_forks(&mut job);
    assert!(next_forks(&mut job) > a, "the forker forks on");

    // A cgroup without a freezer: refused, nothing is touched.
    let cpu_dir = cg.make(CPU, "not-a-freezer");
    let images = tmp.join("images-not-a-freezer");
    let out = crust(&dump_args(&pid, &images, &["-R", "--freeze-cgroup", cpu_dir.to_str().unwrap()]), STEP);
    let err = assert_clean_failure(&out, "--freeze-cgroup naming a cgroup without a freezer");
    assert!(err.contains(cpu_dir.to_str().unwrap()), "the error names the cgroup: {err}");
    common::assert_no_inventory(&images);
    assert_running_untraced(job.pid, Duration::from_secs(10));

    // A failure while the cgroup is frozen: no process with that pid (pids
    // stay below pid_max).
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().to_string();
    let images = tmp.join("images");
    let out = crust(&dump_args(&pid_max, &images, &["-R", "--freeze-cgroup", &freezer_s]), STEP);
    assert_clean_failure(&out, "dump of a process that does not exist, through the freezer");
    assert_eq!(freezer_state(&freezer), "THAWED", "the cgroup is thawed after the failed dump");
    common::assert_no_inventory(&images);
    assert_running_untraced(job.pid, Duration::from_secs(10));
    let a = next_forks(&mut job);
    assert!(next_forks(&mut job) > a, "the forker forks on");
    job.expect_ok();
}

/// Zombies are part of a tree (a plain dump records them); dumping through the
/// freezer must record them too, not fail on them.
#[test]
fn freeze_cgroup_dumps_a_tree_with_zombies() {
    let cg = Cgroups::new();
    let freezer = cg.make(FREEZER, "tree");
    let tmp = TempDir::new("cgroups-freeze-zombies");
    let mut job = Job::build("orphans", &[]).cgroups(std::slice::from_ref(&freezer)).start(tmp.path());
    let _thaw = Thaw(freezer.clone());
    let ready = job.ready();
    let (exited, killed) = (ready_field(&ready, "exited"), ready_field(&ready, "killed"));
    let images = tmp.join("images");
    let pid_s = job.pid.to_string();
    let freezer_s = freezer.to_str().unwrap().to_string();
    let out = crust(&dump_args(&pid_s, &images, &["-R", "--freeze-cgroup", &freezer_s]), STEP);
    assert_eq!(freezer_state(&freezer), "THAWED", "the cgroup is thawed after the dump");
    assert_running_untraced(job.pid, Duration::from_secs(10));
    assert!(out.status.success(), "dump of a tree with zombies through the freezer failed: {}", String::from_utf8_lossy(&out.stderr));
    for (z, status) in [(exited, 7 << 8), (killed, libc::SIGTERM as u64)] {
        let core = crit_show(&images.join(format!("core-{z}.img")));
        let tc = &core["entries"][0]["tc"];
        assert_eq!(task_state(&tc["task_state"]), 6, "zombie {z} recorded as a zombie: {tc}");
        assert_eq!(num(&tc["exit_code"]), status, "zombie {z}'s wait status: {tc}");
    }
    job.expect_ok();
}
