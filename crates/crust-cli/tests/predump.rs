//! Incremental dumps, criu's way: `crust pre-dump` writes the memory of a
//! running tree, a later pre-dump or dump with `--prev-images-dir` writes
//! only the pages changed since (the others are runs in the parent image),
//! and a restore reads them up the chain. The workload (dirtier) writes a
//! known pattern over 1 MiB of its 64 MiB between the steps and checks all
//! of its memory after the restore.

mod common;

use std::path::Path;

use common::job::{dump, ready_field, restore, Job, STEP};
use common::procstate::ProcState;
use common::{crit_decode_dir, crust, entries, flag_names, num, os, TempDir};
use serde_json::Value;

/// Pages each step of dirtier writes.
const STEP_PAGES: u64 = 256;

/// `crust pre-dump -t PID -D DIR EXTRA... --json`, which must succeed: its stats.
fn pre_dump(pid: i32, dir: &Path, extra: &[&str]) -> Value {
    let pid = pid.to_string();
    let mut args = vec![os("pre-dump"), os("-t"), os(&pid), os("-D"), dir.as_os_str(), os("--json")];
    args.extend(extra.iter().map(|s| os(s)));
    let out = crust(&args, STEP);
    assert!(out.status.success(), "pre-dump of {pid} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stats as JSON")
}

/// The workload takes a step: 1 MiB of its memory written.
fn step(job: &mut Job, n: u64) {
    job.signal(libc::SIGUSR2);
    assert_eq!(job.line(STEP), format!("STEP {n}"));
}

/// A pre-dump or dump after one step wrote about that step's pages: a few
/// more for the stack and libc's data, and the rest left to the parent.
fn assert_incremental(stats: &Value, pages: u64, what: &str) {
    let (written, skipped) = (num(&stats["pages_written"]), num(&stats["pages_skipped_parent"]));
    assert!((STEP_PAGES..STEP_PAGES + 64).contains(&written), "{what}: {written} pages written for a step of {STEP_PAGES}: {stats}");
    assert!(skipped >= pages - STEP_PAGES, "{what}: only {skipped} pages left to the parent: {stats}");
}

/// While a pre-dump's tracking lasts, the program sees no fd of it: the
/// keeper holds the userfaultfd (its vmas do show the `uw` flag).
fn assert_tracking_hidden(pid: i32) {
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let link = std::fs::read_link(e.path()).unwrap_or_default();
        assert!(!link.to_string_lossy().contains("userfaultfd"), "fd {:?} of {pid} is {}", e.file_name(), link.display());
    }
}

/// Whether any vma of `pid` is registered for write protection.
fn tracked_vmas(pid: i32) -> usize {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    smaps.lines().filter(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "uw")).count()
}

/// The keeper a pre-dump in `dir` left, from its note.
fn keeper_of(dir: &Path) -> i32 {
    let note: Value = serde_json::from_slice(&std::fs::read(dir.join("crust-tracking.json")).unwrap()).unwrap();
    num(&note["keeper"]) as i32
}

#[test]
fn tracking_leaves_nothing_after_the_dump_or_when_its_keeper_ends() {
    let tmp = TempDir::new("predump-tracking");
    let mut job = Job::start("dirtier", &["32"], tmp.path());
    let pages = ready_field(&job.ready(), "pages") as u64;
    let before = ProcState::of_tree(job.pid);
    // Abandoned: the keeper ends (killed here, as its lifetime would end it):
    // the kernel drops the registration with the last fd.
    let first = tmp.join("abandoned");
    pre_dump(job.pid, &first, &[]);
    assert!(tracked_vmas(job.pid) > 0, "the pre-dump tracks");
    assert_tracking_hidden(job.pid);
    let keeper = keeper_of(&first);
    assert_eq!(std::fs::read_to_string(format!("/proc/{keeper}/comm")).unwrap().trim(), "crust-track");
    // SAFETY: a plain kill of the keeper this test's pre-dump made.
    unsafe { libc::kill(keeper, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tracked_vmas(job.pid) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(tracked_vmas(job.pid), 0, "the keeper's end ends the tracking");
    // A dump after it compares, since nothing tracks any more.
    let pre = tmp.join("pre");
    pre_dump(job.pid, &pre, &[]);
    step(&mut job, 1);
    let out = dump(job.pid, &tmp.join("final"), &["--leave-running", "--prev-images-dir", "../pre", "--json"]);
    let stats: Value = serde_json::from_str(&out).expect("stats as JSON");
    assert_incremental(&stats, pages, "dump after a pre-dump");
    assert!(num(&stats["pages_tracked_clean"]) >= pages - STEP_PAGES, "{stats}");
    // The dump took the tracking and ended it: the tree runs on as it was.
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
    assert_eq!(tracked_vmas(job.pid), 0);
    step(&mut job, 2);
    job.expect_ok();
}

/// The pagemap runs of `pid` in a dump, as crit decodes them: (flags, pages).
fn runs(imgs: &std::collections::BTreeMap<String, Value>, pid: i32) -> Vec<(std::collections::BTreeSet<String>, u64)> {
    entries(imgs, &format!("pagemap-{pid}.img")).iter().skip(1).map(|e| (flag_names(&e["flags"]), num(&e["nr_pages"]))).collect()
}

fn restore_ok(job: &mut Job, dir: &Path) {
    let out = restore(dir, &[]);
    assert!(out.status.success(), "restore from {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
}

/// dirtier, pre-dumped whole into `pre1`, then after a step pre-dumped into
/// `pre2` on top of it, then after another step dumped into `final` on top of
/// that (killed). Returns the job, the pages of its memory, and the dirs.
fn chain_of_three(tmp: &TempDir) -> (Job, u64, [std::path::PathBuf; 3], ProcState) {
    let mut job = Job::start("dirtier", &["64"], tmp.path());
    let pages = ready_field(&job.ready(), "pages") as u64;
    let dirs = [tmp.join("pre1"), tmp.join("pre2"), tmp.join("final")];
    // Before any tracking: what the restored tree must be again.
    let before = ProcState::of_tree(job.pid);

    let full = pre_dump(job.pid, &dirs[0], &["--track-mem"]);
    assert!(num(&full["pages_written"]) >= pages, "the first pre-dump writes all: {full}");
    assert_eq!(num(&full["pages_skipped_parent"]), 0);
    step(&mut job, 1);
    let second = pre_dump(job.pid, &dirs[1], &["--track-mem", "--prev-images-dir", "../pre1"]);
    assert_incremental(&second, pages, "second pre-dump");
    step(&mut job, 2);
    assert_tracking_hidden(job.pid);

    let out = dump(job.pid, &dirs[2], &["--track-mem", "--prev-images-dir", "../pre2", "--json"]);
    let last: Value = serde_json::from_str(&out).expect("stats as JSON");
    assert_incremental(&last, pages, "dump");
    // The steps' pages were found by the tracking, not by comparing: only
    // the few pages it does not cover (libraries' data) were read twice.
    for (stats, what) in [(&second, "second pre-dump"), (&last, "dump")] {
        assert!(num(&stats["pages_tracked_clean"]) >= pages - STEP_PAGES, "{what}: tracking vouched for too few pages: {stats}");
        assert!(num(&stats["pages_compared"]) < 256, "{what}: too many pages compared: {stats}");
    }
    job.reap_original();
    (job, pages, dirs, before)
}

#[test]
fn chain_of_three_restores_with_only_changed_pages_written() {
    let tmp = TempDir::new("predump-chain");
    let (mut job, pages, dirs, before) = chain_of_three(&tmp);
    let pid = job.pid;

    // Each dump links to its parent as criu does; the pages images shrink.
    for (dir, parent) in [(&dirs[1], "../pre1"), (&dirs[2], "../pre2")] {
        assert_eq!(std::fs::read_link(dir.join("parent")).unwrap(), Path::new(parent));
    }
    let size = |d: &Path| std::fs::metadata(d.join("pages-1.img")).unwrap().len();
    assert!(size(&dirs[2]) * 50 < size(&dirs[0]), "the dump's pages image is a fraction of the full one");
    // crit decodes every image of the chain; pre-dumps hold memory only.
    for (i, dir) in dirs.iter().enumerate() {
        let imgs = crit_decode_dir(dir);
        let runs = runs(&imgs, pid);
        let in_parent: u64 = runs.iter().filter(|(f, _)| f.contains("PE_PARENT")).map(|r| r.1).sum();
        let present: u64 = runs.iter().filter(|(f, _)| f.contains("PE_PRESENT")).map(|r| r.1).sum();
        assert_eq!(present * 4096, size(dir), "{}: present runs fill the pages image", dir.display());
        if i == 0 {
            assert_eq!(in_parent, 0);
        } else {
            assert!(in_parent >= pages - STEP_PAGES, "{}: {in_parent} pages in the parent", dir.display());
        }
        if i < 2 {
            let names: Vec<&String> = imgs.keys().collect();
            assert!(names.iter().all(|n| n.starts_with("pagemap-") || *n == "inventory.img" || *n == "stats-dump"), "pre-dump images: {names:?}");
        }
    }
    // crust show follows the chain; crust check reads it.
    let out = crust(&[os("show"), dirs[2].as_os_str()], STEP);
    assert!(out.status.success(), "show: {}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(shown["parent"]["parent"]["inventory.img"].is_array(), "show holds the chain: {shown}");
    let out = crust(&[os("check"), os("--images"), dirs[2].as_os_str()], STEP);
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));

    restore_ok(&mut job, &dirs[2]);
    before.assert_same(&ProcState::of_tree(pid), &[]);
    // The step counter goes on; then all 64 MiB are checked.
    step(&mut job, 3);
    job.expect_ok();
    assert!(job.history.iter().any(|l| l == "CHECKED steps=3"), "{:?}", job.history);
}

#[test]
fn a_missing_or_damaged_parent_fails_the_restore_cleanly() {
    let tmp = TempDir::new("predump-broken");
    let (mut job, _, dirs, _) = chain_of_three(&tmp);
    let pid = job.pid;
    // `check` reads the chain's images but not the bulk of the pages
    // (their digests are checked while a restore builds the tree).
    let fails = |job: &mut Job, what: &str, expect: &[&str], check_fails: bool| {
        let out = restore(&dirs[2], &[]);
        let err = job.assert_restore_failed(&out, what);
        for e in expect {
            assert!(err.contains(e), "{what}: the error names {e:?}: {err}");
        }
        let out = crust(&[os("check"), os("--images"), dirs[2].as_os_str()], STEP);
        assert_eq!(!out.status.success(), check_fails, "{what}: check: {}", String::from_utf8_lossy(&out.stderr));
    };

    // The first pre-dump gone: the second's pagemap names what it misses.
    let away = tmp.join("pre1.away");
    std::fs::rename(&dirs[0], &away).unwrap();
    fails(&mut job, "first parent missing", &[&format!("pre2/pagemap-{pid}.img"), "offset", "parent"], true);
    std::fs::rename(&away, &dirs[0]).unwrap();

    // Its pages image cut short.
    let pages = dirs[0].join("pages-1.img");
    let whole = std::fs::read(&pages).unwrap();
    std::fs::write(&pages, &whole[..whole.len() - 4096]).unwrap();
    fails(&mut job, "parent's pages image truncated", &["pre1/pages-1.img"], true);

    // Its pagemap damaged.
    std::fs::write(&pages, &whole).unwrap();
    let pagemap = dirs[0].join(format!("pagemap-{pid}.img"));
    let map = std::fs::read(&pagemap).unwrap();
    std::fs::write(&pagemap, &map[..map.len() - 3]).unwrap();
    fails(&mut job, "parent's pagemap damaged", &[&format!("pre1/pagemap-{pid}.img")], true);
    std::fs::write(&pagemap, &map).unwrap();

    // A byte of the parent's pages changed: its digest tells.
    let mut bad = whole.clone();
    bad[whole.len() / 2] ^= 0xff;
    std::fs::write(&pages, &bad).unwrap();
    fails(&mut job, "parent's pages changed", &["pages-1.img"], false);

    // Made whole again, the chain restores.
    std::fs::write(&pages, &whole).unwrap();
    restore_ok(&mut job, &dirs[2]);
    job.expect_ok();
    assert!(job.history.iter().any(|l| l == "CHECKED steps=2"), "{:?}", job.history);
}
