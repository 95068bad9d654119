//! Restore on the same host: real workloads are dumped, restored by `crust
//! restore`, and check their own state afterwards (counters continue,
//! checksums equal, offsets and pipe data intact, signals still pending).
//!
//! Workloads write to a file here, not a pipe: a file survives the checkpoint
//! (the restored process reopens it), a pipe to the test would not.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::job::{assert_counting, counters, dump, ready_field, restore, Job, STEP};
use common::procstate::ProcState;
use common::{assert_clean_failure, crust, os, TempDir};

/// A restore that must succeed; the job takes over the restored root.
fn restore_ok(job: &mut Job, dir: &Path) {
    let out = restore(dir, &[]);
    assert!(out.status.success(), "restore from {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
}

/// Dumps the job into `images` (which kills it), reaps it and restores it;
/// what /proc shows of the tree is the same after as before.
fn dump_and_restore(job: &mut Job, images: &Path) {
    dump_and_restore_except(job, images, &[]);
}

/// [`dump_and_restore`], where /proc entries with a key containing one of
/// `may_differ` may differ (the caller says why).
fn dump_and_restore_except(job: &mut Job, images: &Path, may_differ: &[&str]) {
    dump_and_restore_doing(job, images, may_differ, || {});
}

/// [`dump_and_restore_except`], doing `meanwhile` between the dump and the restore.
fn dump_and_restore_doing(job: &mut Job, images: &Path, may_differ: &[&str], meanwhile: impl FnOnce()) {
    let before = ProcState::of_tree(job.pid);
    dump(job.pid, images, &[]);
    job.reap_original();
    meanwhile();
    restore_ok(job, images);
    before.assert_same(&ProcState::of_tree(job.pid), may_differ);
}

/// family on a file of DIR written with `seed`; the job, the file and the
/// pid of family's child.
fn start_family(dir: &TempDir, seed: u8) -> (Job, PathBuf, i32) {
    let file = dir.join("data");
    common::write_pattern_file(&file, 20_000, seed);
    let mut job = Job::start("family", &[file.to_str().unwrap()], dir.path());
    let child = ready_field(&job.ready(), "child");
    (job, file, child)
}

/// rseq registration of every thread, read with ptrace.
fn rseq_of(pid: i32) -> BTreeMap<i32, crust::ptrace::RseqConfig> {
    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut out = BTreeMap::new();
    for tid in tids {
        crust::ptrace::seize_and_stop(tid).expect("seize");
        out.insert(tid, crust::ptrace::rseq_config(tid).expect("rseq config"));
        crust::ptrace::detach(tid);
    }
    out
}

#[test]
fn test_mm_counts_on_after_restore_in_both_threads() {
    let dir = TempDir::new("restore-test-mm");
    let mut job = Job::start("test_mm", &[], dir.path());
    job.ready();
    for _ in 0..6 {
        job.line(STEP);
    }
    let rseq_before = rseq_of(job.pid);
    assert_eq!(rseq_before.len(), 3);
    assert!(rseq_before.values().all(|r| r.rseq_abi_size > 0), "glibc registers rseq in every thread");
    // Limits of its own, to see them come back.
    let mut nofile = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit on our own child.
    unsafe { libc::prlimit(job.pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut nofile) };
    let lowered = [(libc::RLIMIT_NOFILE, libc::rlimit { rlim_cur: 321, rlim_max: nofile.rlim_max - 1 }), (libc::RLIMIT_CORE, libc::rlimit { rlim_cur: 0, rlim_max: 4096 })];
    for (res, l) in lowered {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::prlimit(job.pid, res, &l, std::ptr::null_mut()) }, 0);
    }
    let limits_before = std::fs::read_to_string(format!("/proc/{}/limits", job.pid)).unwrap();
    let exe_before = std::fs::read_link(format!("/proc/{}/exe", job.pid)).unwrap();
    let cmdline_before = std::fs::read(format!("/proc/{}/cmdline", job.pid)).unwrap();
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    let before = job.drain();
    let last = counters(&job.history);
    assert_eq!(last.len(), 2, "both threads printed before the dump: {before:?}");

    restore_ok(&mut job, &images);
    let after: Vec<String> = (0..8).map(|_| job.line(STEP)).collect();
    let first = counters(&after[..2]);
    for (t, n) in &last {
        assert_eq!(first.get(t), Some(&(n + 1)), "{t} must continue from {n}; after restore: {after:?}");
    }
    assert_counting(&job.history[1..]);
    assert_eq!(rseq_of(job.pid), rseq_before, "rseq registration of each thread");
    assert_eq!(std::fs::read_link(format!("/proc/{}/exe", job.pid)).unwrap(), exe_before);
    assert_eq!(std::fs::read(format!("/proc/{}/cmdline", job.pid)).unwrap(), cmdline_before);
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/limits", job.pid)).unwrap(), limits_before, "resource limits");
    job.expect_ok();
}

/// Address ranges of /proc/PID/maps with permissions and path.
fn maps(pid: i32) -> Vec<(u64, u64, String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = f[0].split_once('-').unwrap();
            let path = f.get(5).map(|s| s.to_string()).unwrap_or_default();
            (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap(), f[1].to_string(), path)
        })
        .collect()
}

#[test]
fn memory_checksum_layout_and_holes_survive_restore() {
    let dir = TempDir::new("restore-memory");
    let file = dir.join("mapped");
    common::write_pattern_file(&file, 300_000, 7);
    let mut job = Job::start("memory", &[file.to_str().unwrap()], dir.path());
    job.ready();
    let before = maps(job.pid);
    dump_and_restore(&mut job, &dir.join("images"));
    let after = maps(job.pid);
    // Every original mapping is there with its permissions and file; nothing is
    // mapped where nothing was (the hole stays a hole). Neighbours may merge.
    for (s, e, perms, path) in &before {
        assert!(
            after.iter().any(|(a, b, p, f)| a <= s && e <= b && p == perms && f == path),
            "{s:#x}-{e:#x} {perms} {path} is not restored; after: {after:x?}"
        );
    }
    for (a, b, _, f) in &after {
        let mut x = *a;
        while x < *b {
            let covering = before.iter().find(|(s, e, _, _)| *s <= x && x < *e);
            let (_, e, _, _) = covering.unwrap_or_else(|| panic!("{x:#x} ({f}) is mapped after restore but was not before"));
            x = *e;
        }
    }
    job.expect_ok();
}

#[test]
fn family_child_file_offset_pipe_data_and_dev_null_survive_restore() {
    let dir = TempDir::new("restore-family");
    let (mut job, _file, child) = start_family(&dir, 3);
    dump_and_restore(&mut job, &dir.join("images"));
    let ppid = common::proc_stat(child).expect("child restored with its pid").ppid;
    assert_eq!(ppid, job.pid, "the child is the restored parent's child again");
    let pos = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", job.pid)).unwrap();
    assert!(pos.contains("pos:\t12345"), "file offset after restore: {pos}");
    job.expect_ok();
}

#[test]
fn pending_signals_handlers_altstack_and_itimer_survive_restore() {
    let dir = TempDir::new("restore-sigstate");
    let mut job = Job::start("sigstate", &[], dir.path());
    job.ready();
    let status = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let sig_lines = |s: String| s.lines().filter(|l| l.starts_with("Sig") || l.starts_with("ShdPnd")).map(str::to_string).collect::<Vec<_>>();
    let before = sig_lines(status(job.pid));
    dump_and_restore(&mut job, &dir.join("images"));
    assert_eq!(sig_lines(status(job.pid)), before, "pending, blocked, ignored and caught sets");
    job.expect_ok();
}

#[test]
fn scheduling_policy_nice_oom_score_adj_and_subreaper_survive_restore() {
    for policy in ["batch", "idle", "fifo", "rr", "other"] {
        let dir = TempDir::new(&format!("restore-attrs-{policy}"));
        let mut job = Job::start("attrs", &[policy], dir.path());
        job.ready();
        dump_and_restore(&mut job, &dir.join("images"));
        job.expect_ok();
    }
}

/// Capabilities (every set, per thread), securebits, no_new_privs and two
/// seccomp filters (one shared by three threads, one a thread's own) are
/// back after a restore, and the filters act. The shared filter kills the
/// process on munmap and the other fails capset and PR_SET_SECUREBITS:
/// crust runs all three after putting the filters back, so the restore
/// itself shows that they do not stop it.
#[test]
fn capabilities_securebits_no_new_privs_and_seccomp_filters_survive_restore() {
    let dir = TempDir::new("restore-secstate");
    let mut job = Job::start("secstate", &[], dir.path());
    job.ready();
    dump_and_restore(&mut job, &dir.join("images"));
    job.expect_ok();
}

/// The same state set the way container tools set it, by util-linux's
/// setpriv before exec (the kernel computes the sets after exec): a process
/// with no_new_privs, a reduced bounding set, an inheritable and ambient
/// capability, and securebits.
#[test]
fn capabilities_set_by_setpriv_before_exec_survive_restore() {
    let dir = TempDir::new("restore-setpriv");
    let attrs = common::workload_path("attrs");
    let args = [
        "--no-new-privs",
        "--bounding-set=-net_raw,-sys_boot",
        "--inh-caps=+kill,+net_bind_service",
        "--ambient-caps=+net_bind_service",
        "--securebits=+noroot",
        "--",
        attrs.to_str().unwrap(),
        "other",
    ];
    let mut job = Job::build("attrs", &args).program(Path::new("/usr/bin/setpriv")).start(dir.path());
    job.ready();
    let status = std::fs::read_to_string(format!("/proc/{}/status", job.pid)).unwrap();
    assert!(status.contains("NoNewPrivs:\t1") && status.contains("CapAmb:\t0000000000000400"), "setpriv did not set the state:\n{status}");
    dump_and_restore(&mut job, &dir.join("images"));
    job.expect_ok();
}

/// Each anonymous mapping of `pid` with its madvise and mlock VmFlags.
fn vm_flags(pid: i32) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out = Vec::new();
    let mut range = String::new();
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let advised: Vec<&str> = flags.split_whitespace().filter(|f| ["hg", "nh", "dd", "dc", "wf", "mg", "sr", "rr", "lo"].contains(f)).collect();
            if !range.contains('[') && !range.contains('/') {
                out.push(format!("{range} {}", advised.join(" ")));
            }
        } else if !line.contains(':') || line.split_whitespace().count() >= 5 {
            range = line.split_whitespace().next().unwrap_or("").to_string() + " " + line.split_whitespace().last().unwrap_or("");
        }
    }
    out
}

#[test]
fn madvise_advice_and_mlock_survive_restore() {
    let modes = [
        ("hugepage", "hg"),
        ("nohugepage", "nh"),
        ("dontdump", "dd"),
        ("dontfork", "dc"),
        ("wipeonfork", "wf"),
        ("mergeable", "mg"),
        ("sequential", "sr"),
        ("random", "rr"),
        ("mlock", "lo"),
    ];
    for (mode, flag) in modes {
        let dir = TempDir::new(&format!("restore-madvise-{mode}"));
        let mut job = Job::start("unusual", &[mode], dir.path());
        job.ready();
        let before = vm_flags(job.pid);
        assert!(before.iter().any(|m| m.split_whitespace().any(|f| f == flag)), "{mode}: no mapping with {flag}: {before:?}");
        dump_and_restore(&mut job, &dir.join("images"));
        assert_eq!(vm_flags(job.pid), before, "{mode}: mappings and their VmFlags");
        job.expect_ok();
    }
}

#[test]
fn eventfds_a_signalfd_with_its_pending_signal_timerfds_and_an_epoll_survive_restore() {
    let dir = TempDir::new("restore-anonfds");
    let mut job = Job::start("anonfds", &[], dir.path());
    job.ready();
    // Blocked, so it waits for the signalfd.
    job.signal(libc::SIGUSR2);
    let pending = || common::proc_status_field(job.pid, "ShdPnd").filter(|m| u64::from_str_radix(m, 16).unwrap_or(0) & (1 << 11) != 0);
    assert!(common::poll(STEP, std::time::Duration::from_millis(5), pending).is_some(), "SIGUSR2 pending");
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    let files = common::crit_show(&images.join("files.img"));
    let entries = files["entries"].as_array().expect("files.img entries");
    let counters: Vec<u64> = entries.iter().filter_map(|e| e.get("efd")).map(|e| common::num(&e["counter"])).collect();
    assert_eq!(counters, [42, 0x1_0000_0005], "eventfd counts as crit reads them");
    let masks: Vec<u64> = entries.iter().filter_map(|e| e.get("sgfd")).map(|e| common::num(&e["sigmask"])).collect();
    assert_eq!(masks, [1 << 11], "the signalfd reads SIGUSR2");
    let epoll: Vec<&serde_json::Value> = entries.iter().filter_map(|e| e.get("epfd")).collect();
    assert_eq!(epoll.len(), 1, "{files}");
    let mut data: Vec<u64> = epoll[0]["tfd"].as_array().unwrap().iter().map(|t| common::num(&t["data"])).collect();
    data.sort();
    assert_eq!(data, [7, 99, 0xA11CE], "the epoll's targets as crit reads them");
    let periods: Vec<u64> = entries.iter().filter_map(|e| e.get("tfd")).map(|t| common::num(&t["insec"])).collect();
    assert_eq!(periods, [0, 10_000_000, 0, 0], "the timerfds' periods as crit reads them");
    // The absolute timer is absolute again.
    let absolute = std::fs::read_dir(format!("/proc/{}/fdinfo", job.pid))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|info| info.contains("settime flags: 01"))
        .count();
    assert_eq!(absolute, 1, "one timerfd with TFD_TIMER_ABSTIME after restore");
    job.expect_ok();
}

#[test]
fn unix_socket_pairs_with_their_queued_bytes_survive_restore() {
    let dir = TempDir::new("restore-sockets");
    let mut job = Job::start("sockets", &[], dir.path());
    let child = ready_field(&job.ready(), "child");
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    assert_eq!(common::proc_stat(child).map(|s| s.ppid), Some(job.pid), "the child is back, its parent's child");
    let files = common::crit_show(&images.join("files.img"));
    let ends = files["entries"].as_array().unwrap().iter().filter(|e| e.get("usk").is_some()).count();
    assert_eq!(ends, 8, "four pairs, two ends each: {files}");
    let queues = common::crit_show(&images.join("sk-queues.img"));
    let mut lengths: Vec<u64> = queues["entries"].as_array().unwrap().iter().map(|e| common::num(&e["length"])).collect();
    lengths.sort();
    assert_eq!(lengths, [5, 9, 10, 200_000], "the bytes queued in the stream pairs: {queues}");
    job.expect_ok();
}

#[test]
fn a_leave_running_dump_leaves_unix_sockets_and_their_queues_as_they_were() {
    let dir = TempDir::new("dump-sockets-live");
    let mut job = Job::start("sockets", &[], dir.path());
    job.ready();
    dump(job.pid, &dir.join("images"), &["-R"]);
    // The workload reads every queue, option and peek offset itself.
    job.expect_ok();
}

/// Names in /proc/PID/maps that end with " (deleted)".
fn deleted_mappings(pid: i32) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let paths = text.lines().map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" "));
    paths.filter(|p| p.ends_with(" (deleted)")).collect()
}

#[test]
fn a_deleted_executable_and_a_deleted_mapped_file_come_back_deleted_with_their_contents() {
    let dir = TempDir::new("restore-deleted");
    // As an upgrade would: the program file is replaced while it runs.
    let exe = dir.join("memory-old");
    std::fs::copy(common::workload_path("memory"), &exe).unwrap();
    let file = dir.join("mapped");
    common::write_pattern_file(&file, 300_000, 5);
    let mut job = Job::build("memory", &[file.to_str().unwrap()]).program(&exe).start(dir.path());
    job.ready();
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(&exe, b"the upgrade").unwrap();
    std::fs::remove_file(&file).unwrap();
    let deleted = deleted_mappings(job.pid);
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    // Over the limit: refused, left running (the dump below takes it).
    let pid = job.pid.to_string();
    let small = dir.join("small");
    let out = crust(&[os("dump"), os("-t"), os(&pid), os("-D"), small.as_os_str(), os("--ghost-limit"), os("1K")], STEP);
    let err = assert_clean_failure(&out, "a dump with a deleted file over --ghost-limit");
    assert!(err.contains("more than --ghost-limit 1024"), "{err}");
    std::fs::remove_dir_all(&small).unwrap();
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    // Made again deleted from the start, in their own directory (the kernel
    // names such a file DIR/#INODE).
    let after = deleted_mappings(job.pid);
    assert_eq!(after.len(), 2, "{after:?}");
    let in_dir = format!("{}/#", dir.path().display());
    assert!(after.iter().all(|p| p.starts_with(&in_dir)), "{after:?}");
    let exe_link = std::fs::read_link(format!("/proc/{}/exe", job.pid)).unwrap().to_string_lossy().into_owned();
    assert!(after.contains(&exe_link), "the executable is one of the two: {exe_link} {after:?}");
    assert_eq!(std::fs::read(&exe).unwrap(), b"the upgrade", "the file now at the path is left alone");
    assert!(!file.exists(), "the deleted file stays deleted");
    let mut left: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect();
    left.sort();
    assert_eq!(left, ["images", "memory-old", "memory.out"], "nothing put back is left with a name");
    let remaps = common::crit_show(&images.join("remap-fpath.img"));
    assert_eq!(remaps["entries"].as_array().unwrap().len(), 2, "{remaps}");
    common::crit_show(&images.join("ghost-file-1.img"));
    // The mapped file's contents, checked by the workload itself.
    job.expect_ok();
}

#[test]
fn a_deleted_open_file_comes_back_at_its_offset_sparse_and_with_its_times() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let dir = TempDir::new("restore-deleted-fd");
    let (mut job, file, _child) = start_family(&dir, 4);
    // A hole of 8 MiB between family's pattern and a tail, and times of its own.
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(b"tail", 20_000 + (8 << 20)).unwrap();
    let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 123_456_000);
    f.set_times(std::fs::FileTimes::new().set_accessed(when).set_modified(when)).unwrap();
    drop(f);
    std::fs::remove_file(&file).unwrap();
    let held = format!("/proc/{}/fd/3", job.pid);
    let blocks = std::fs::metadata(&held).unwrap().blocks();
    dump_and_restore(&mut job, &dir.join("images"));
    let meta = std::fs::metadata(&held).unwrap();
    assert_eq!(meta.len(), 20_004 + (8 << 20), "size of the deleted file");
    assert!(meta.blocks() <= blocks + 8, "the hole is a hole again: {} blocks of 512 bytes, {blocks} before", meta.blocks());
    assert_eq!((meta.mtime(), meta.mtime_nsec(), meta.atime(), meta.atime_nsec()), (1_000_000_000, 123_456_000, 1_000_000_000, 123_456_000));
    let mut tail = [0; 4];
    std::fs::File::open(&held).unwrap().read_exact_at(&mut tail, 20_000 + (8 << 20)).unwrap();
    assert_eq!(&tail, b"tail");
    let link = std::fs::read_link(format!("/proc/{}/fd/3", job.pid)).unwrap().to_string_lossy().into_owned();
    assert!(link.starts_with(&format!("{}/#", dir.path().display())) && link.ends_with(" (deleted)"), "{link}");
    let pos = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", job.pid)).unwrap();
    assert!(pos.contains("pos:\t12345"), "file offset after restore: {pos}");
    assert!(!file.exists());
    job.expect_ok();
}

/// Every thread of `pid` is in a group stop (state T), and none is traced.
fn stopped_untraced(pid: i32) -> bool {
    let tasks = common::proc_tasks(pid);
    !tasks.is_empty()
        && tasks.iter().all(|t| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap_or_default();
            let field = |f: &str| status.lines().find_map(|l| l.strip_prefix(f)).unwrap_or("").trim().to_string();
            field("State:").starts_with('T') && field("TracerPid:") == "0"
        })
}

#[test]
fn a_stopped_job_is_dumped_and_restored_stopped_and_counts_on_when_continued() {
    let dir = TempDir::new("restore-stopped");
    let mut job = Job::start("test_mm", &[], dir.path());
    job.ready();
    for _ in 0..4 {
        job.line(STEP);
    }
    job.signal(libc::SIGSTOP);
    let stopped = || stopped_untraced(job.pid).then_some(());
    assert!(common::poll(STEP, std::time::Duration::from_millis(5), stopped).is_some(), "SIGSTOP stopped it");
    std::thread::sleep(std::time::Duration::from_millis(200));
    job.drain();
    let last = counters(&job.history);
    let pid = job.pid;
    let stays_stopped = |what: &str| {
        let settled = || stopped_untraced(pid).then_some(());
        assert!(common::poll(STEP, std::time::Duration::from_millis(5), settled).is_some(), "{what}");
    };
    // A -R dump leaves it stopped as it was.
    dump(pid, &dir.join("live"), &["-R"]);
    stays_stopped("stopped and untraced after a -R dump");
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    stays_stopped("restored stopped");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(job.drain().is_empty(), "nothing runs while it is stopped");
    job.signal(libc::SIGCONT);
    job.assert_counts_on_from(&last);
    job.expect_ok();
}

#[test]
fn shared_anonymous_memory_comes_back_with_its_contents_and_still_shared() {
    let dir = TempDir::new("restore-sharedmem");
    let mut job = Job::start("sharedmem", &[], dir.path());
    let child = ready_field(&job.ready(), "child");
    let shared = |pid: i32| -> Vec<(u64, u64)> {
        maps(pid).into_iter().filter(|(_, _, perms, _)| perms.ends_with('s')).map(|(a, b, _, _)| (a, b)).collect()
    };
    let before = shared(job.pid);
    assert_eq!(before.len(), 3, "three shared mappings: {before:?}");
    // The child alone shares memory with a process outside what is dumped.
    let child_s = child.to_string();
    let out = crust(&common::dump_args(&child_s, &dir.join("child"), &["--shell-job"]), STEP);
    let err = assert_clean_failure(&out, "dump of a process sharing memory with one outside the tree");
    assert!(err.contains("outside the dumped tree"), "{err}");
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    assert_eq!(shared(job.pid), before, "the parent's shared mappings, where they were");
    assert_eq!(shared(child), before, "the child's, the same");
    let objects: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("pagemap-shmem-"))
        .collect();
    assert_eq!(objects.len(), 3, "each object saved once: {objects:?}");
    let shown = crust(&[os("show"), images.as_os_str()], STEP);
    assert!(shown.status.success() && String::from_utf8_lossy(&shown.stdout).contains("pagemap-shmem-"), "crust show");
    for o in &objects {
        common::crit_show(&images.join(o));
    }
    // The contents, and that parent and child still share them, checked by the workload.
    job.expect_ok();
}

#[test]
fn twenty_dump_restore_cycles_keep_counters_monotonic() {
    let dir = TempDir::new("restore-cycles");
    let mut job = Job::start("test_mm", &[], dir.path());
    job.ready();
    // Both threads have started (a thread being started has every signal
    // blocked for a moment, which the comparison would see).
    job.line(STEP);
    job.line(STEP);
    for i in 0..20 {
        job.line(STEP);
        let images = dir.join(format!("images-{i}"));
        dump_and_restore(&mut job, &images);
        job.line(STEP);
        std::fs::remove_dir_all(&images).unwrap();
    }
    for _ in 0..4 {
        job.line(STEP);
    }
    assert_counting(&job.history[1..]);
    let last = counters(&job.history);
    assert!(last.values().all(|&n| n >= 20), "both threads counted through all cycles: {last:?}");
    job.expect_ok();
}

#[test]
fn leave_running_dump_then_kill_and_restore_resumes_from_the_dump() {
    let dir = TempDir::new("restore-leave-running");
    let mut job = Job::start("test_mm", &[], dir.path());
    job.ready();
    for _ in 0..4 {
        job.line(STEP);
    }
    let images = dir.join("images");
    job.drain();
    let before_dump = counters(&job.history);
    dump(job.pid, &images, &["-R"]);
    job.drain();
    let after_dump = counters(&job.history);
    // Let the original run on well past the dump, then kill it.
    for _ in 0..6 {
        job.line(STEP);
    }
    job.signal(libc::SIGKILL);
    job.reap_original();
    job.drain();
    let at_kill = counters(&job.history);
    let killed_at = job.history.len();
    restore_ok(&mut job, &images);
    let after: Vec<String> = (0..6).map(|_| job.line(STEP)).collect();
    let first = counters(&after[..2]);
    assert_eq!(first.len(), 2, "both threads print after restore: {after:?}");
    for (t, n) in &first {
        let (low, high) = (before_dump[t] + 1, after_dump[t] + 1);
        assert!(at_kill[t] > high, "{t}: the original must have run on past the dump ({} vs {high})", at_kill[t]);
        assert!((low..=high).contains(n), "{t} restarts at {n}: it must continue from the dump ({low}..={high}), not from the kill ({})", at_kill[t]);
    }
    assert_counting(&job.history[killed_at..]);
    job.expect_ok();
}

#[test]
fn restore_refuses_a_taken_pid_and_names_its_holder() {
    let dir = TempDir::new("restore-pid-taken");
    let mut job = Job::start("test_mm", &[], dir.path());
    job.ready();
    let images = dir.join("images");
    dump(job.pid, &images, &["-R"]);
    let out = crust(&[os("restore"), os("-D"), images.as_os_str(), os("-d"), os("--pid-wait"), os("0.2")], STEP);
    let err = assert_clean_failure(&out, "restore over a running original");
    assert!(err.contains(&format!("pid {} is taken", job.pid)) && err.contains("test_mm"), "message: {err}");
    // The original runs on untouched.
    let n = job.history.len();
    job.line(STEP);
    job.line(STEP);
    assert_counting(&job.history[n.saturating_sub(1)..]);
}

#[test]
fn restore_refuses_missing_or_changed_files_and_leaves_nothing() {
    let dir = TempDir::new("restore-files");
    let (mut job, file, child) = start_family(&dir, 5);
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    let pid = job.pid;
    let gone = |p: i32| !Path::new(&format!("/proc/{p}")).exists();

    // family reads and writes its file at offset 12345: cutting the file below
    // that offset must be refused.
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(10_000).unwrap();
    let err = job.assert_restore_failed(&restore(&images, &[]), "restore with a file that shrank");
    assert!(err.contains(file.to_str().unwrap()) && err.contains("shrank"), "message: {err}");
    assert!(gone(pid) && gone(child), "nothing may be left after a failed restore");

    std::fs::remove_file(&file).unwrap();
    let err = job.assert_restore_failed(&restore(&images, &[]), "restore with a missing file");
    assert!(err.contains(file.to_str().unwrap()) && err.contains("missing"), "message: {err}");
    assert!(gone(pid) && gone(child), "nothing may be left after a failed restore");
}

/// A way to damage an image file, by its path.
type Damage = Box<dyn Fn(&Path)>;

#[test]
fn corrupted_truncated_and_missing_images_are_refused_by_file() {
    let dir = TempDir::new("restore-corrupt");
    let mut job = Job::start("test_mm", &[], dir.path());
    job.ready();
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    let pid = job.pid;
    let names: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    let case = dir.join("case");
    let mut cases = 0;
    for name in &names {
        let len = std::fs::metadata(images.join(name)).unwrap().len();
        let mut damages: Vec<(String, Damage)> = Vec::new();
        for cut in [0, 4, 8, len / 2, len.saturating_sub(1)] {
            if cut < len {
                damages.push((format!("cut at {cut}"), Box::new(move |p: &Path| {
                    std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(cut).unwrap()
                })));
            }
        }
        for at in [0, 8, len / 2, len.saturating_sub(1)] {
            if at < len {
                damages.push((format!("byte flipped at {at}"), Box::new(move |p: &Path| {
                    let mut b = std::fs::read(p).unwrap();
                    b[at as usize] ^= 0x5a;
                    std::fs::write(p, b).unwrap();
                })));
            }
        }
        if name != crust::images::digest::MANIFEST {
            damages.push(("missing".into(), Box::new(|p: &Path| std::fs::remove_file(p).unwrap())));
        }
        for (what, damage) in damages {
            let _ = std::fs::remove_dir_all(&case);
            std::fs::create_dir_all(&case).unwrap();
            for n in &names {
                std::fs::copy(images.join(n), case.join(n)).unwrap();
            }
            damage(&case.join(name));
            let out = restore(&case, &[]);
            let err = job.assert_restore_failed(&out, &format!("{name} {what}"));
            assert!(err.contains(name.as_str()), "{name} {what}: the error must name the file: {err}");
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{name} {what}: a process was left behind");
            cases += 1;
        }
    }
    assert!(cases > 100, "{cases} cases");
    // The undamaged images still restore.
    restore_ok(&mut job, &images);
    job.line(STEP);
    job.expect_ok();
}

#[test]
fn zombies_and_reparented_children_come_back() {
    let dir = TempDir::new("restore-orphans");
    let mut job = Job::start("orphans", &[], dir.path());
    let ready = job.ready();
    let (_grandchild, exited, killed) = (ready_field(&ready, "grandchild"), ready_field(&ready, "exited"), ready_field(&ready, "killed"));
    // A zombie killed by SIGKILL, whose disposition cannot be set again.
    let slain = ready_field(&ready, "slain");
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    let show = crust(&[os("show"), images.as_os_str()], STEP);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let state = |pid: i32| shown[format!("core-{pid}.img")][0]["tc"]["task_state"].as_u64();
    assert_eq!(state(exited), Some(6), "zombie recorded as such");
    assert_eq!(state(killed), Some(6));
    assert_eq!(state(slain), Some(6));
    assert_eq!(shown[format!("core-{slain}.img")][0]["tc"]["exit_code"].as_u64(), Some(libc::SIGKILL as u64));
    assert_eq!(shown[format!("core-{exited}.img")][0]["tc"]["exit_code"].as_u64(), Some(7 << 8));
    job.reap_original();
    restore_ok(&mut job, &images);
    for z in [exited, killed, slain] {
        let stat = common::proc_stat(z);
        assert_eq!(stat.map(|s| s.state), Some('Z'), "{z} is a zombie again: {stat:?}");
    }
    job.expect_ok();
}

/// A parent's wait for its stopped children: the stop it had collected with
/// waitpid(WUNTRACED) is not reported again after the restore, the one it
/// had not is, and it gets no SIGCHLD it had not had; after a dump that
/// leaves the tree running as well, and for a parent that ignores SIGCHLD
/// (no signal to wait for; the workload checks all of it).
#[test]
fn a_parent_still_hears_of_exactly_the_stops_it_had_not_collected() {
    for (leave_running, args) in [(true, &[][..]), (false, &[][..]), (false, &["ignore"][..])] {
        let dir = TempDir::new("restore-childstops");
        let mut job = Job::start("childstops", args, dir.path());
        let ready = job.ready();
        let (waiting, collected) = (ready_field(&ready, "waiting"), ready_field(&ready, "collected"));
        let images = dir.join("images");
        if leave_running {
            let before = ProcState::of_tree(job.pid);
            dump(job.pid, &images, &["-R"]);
            before.assert_same(&ProcState::of_tree(job.pid), &[]);
        } else {
            dump_and_restore(&mut job, &images);
            let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(images.join("crust-meta.json")).unwrap()).unwrap();
            assert_eq!(meta["stops_collected"], serde_json::json!([collected]), "waiting {waiting}");
        }
        job.expect_ok();
    }
}

/// Uids need no names: a task running as a uid and gid that have no entry
/// in /etc/passwd or /etc/group comes back with them, counting on.
#[test]
fn a_task_under_a_uid_without_a_name_is_restored() {
    const ID: u32 = 43210;
    assert!(matches!(nix::unistd::User::from_uid(ID.into()), Ok(None)), "uid {ID} has a name here");
    let dir = TempDir::new("restore-nameless-uid");
    let exe = common::workload_path("test_mm");
    let (uid, gid) = (format!("--reuid={ID}"), format!("--regid={ID}"));
    let args = [uid.as_str(), gid.as_str(), "--clear-groups", exe.to_str().unwrap()];
    let mut job = Job::build("test_mm", &args).program(Path::new("/usr/bin/setpriv")).start(dir.path());
    job.ready();
    // test_mm starts its two threads after READY.
    let threads = common::poll(STEP, std::time::Duration::from_millis(5), || (common::proc_tasks(job.pid).len() == 3).then_some(()));
    assert!(threads.is_some(), "test_mm did not start its threads");
    let ids = |pid: i32| -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        tasks
            .map(|t| std::fs::read_to_string(t.unwrap().path().join("status")).unwrap())
            .flat_map(|s| s.lines().filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:")).map(str::to_string).collect::<Vec<_>>())
            .collect()
    };
    let before = ids(job.pid);
    assert!(before.iter().all(|l| l.split_whitespace().skip(1).all(|v| v == ID.to_string())), "{before:?}");
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    assert_eq!(ids(job.pid), before, "every thread keeps its ids");
    let lines: Vec<String> = (0..6).map(|_| job.line(STEP)).collect();
    assert_counting(&lines);
    job.expect_ok();
}

/// Files of proc and sysfs have no size of their own, and /proc/PID of a
/// process of the tree exists only once it is restored: neither stops the
/// restore, and each fd reads what it read before, at its offset.
#[test]
fn proc_and_sysfs_files_held_open_come_back() {
    let dir = TempDir::new("restore-procfiles");
    let mut job = Job::start("procfiles", &[], dir.path());
    let child = ready_field(&job.ready(), "child");
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    assert_eq!(common::proc_stat(child).map(|s| s.ppid), Some(job.pid), "the child is back");
    job.expect_ok();
}

/// A process whose root was changed with chroot comes back in the same root
/// with the same cwd (the cwd is entered before the root changes).
#[test]
fn a_chrooted_process_keeps_its_root_and_cwd() {
    let dir = TempDir::new("restore-chrooted");
    let root = dir.join("root");
    std::fs::create_dir(&root).unwrap();
    let mut job = Job::start("chrooted", &[root.to_str().unwrap()], dir.path());
    job.ready();
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    let link = |what: &str| std::fs::read_link(format!("/proc/{}/{what}", job.pid)).unwrap();
    assert_eq!(link("root"), root, "root");
    assert_eq!(link("cwd"), root.join("sub"), "cwd");
    job.expect_ok();
}

#[test]
fn the_state_comparison_sees_a_changed_attribute() {
    let dir = TempDir::new("restore-compare");
    let mut job = Job::start("test_mm", &[], dir.path());
    job.ready();
    job.line(STEP);
    job.line(STEP);
    let before = ProcState::of_tree(job.pid);
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
    std::fs::write(format!("/proc/{}/oom_score_adj", job.pid), "7").unwrap();
    let changed = std::panic::catch_unwind(|| before.assert_same(&ProcState::of_tree(job.pid), &[]));
    let err = *changed.expect_err("a changed oom_score_adj is seen").downcast::<String>().unwrap();
    assert!(err.contains(&format!("{} oom_score_adj", job.pid)), "{err}");
    before.assert_same(&ProcState::of_tree(job.pid), &["oom_score_adj"]);
    job.expect_ok();
}

/// /dev/null, zero, full, random and urandom come back as those devices,
/// with their flags and close-on-exec (the workload checks each);
/// files.img holds them as regular files whose mode is a character device.
#[test]
fn character_devices_come_back_with_their_flags() {
    let dir = TempDir::new("restore-devices");
    let mut job = Job::start("devices", &[], dir.path());
    job.ready();
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    let files = common::crit_show(&images.join("files.img"));
    let devices: Vec<String> = files["entries"]
        .as_array()
        .expect("files.img entries")
        .iter()
        .filter_map(|e| e.get("reg"))
        .filter(|r| common::num(&r["mode"]) as u32 & libc::S_IFMT == libc::S_IFCHR)
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    for dev in ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"] {
        assert!(devices.iter().any(|d| d == dev), "{dev} in files.img: {devices:?}");
    }
    job.expect_ok();
}

/// A device is reopened by its path: if another device is there at restore
/// time, the restore is refused, naming both; the right device restores.
#[test]
fn a_device_node_that_became_another_device_is_refused() {
    let dir = TempDir::new("restore-device-node");
    let node = dir.join("node");
    let mknod = |minor: u32| {
        let _ = std::fs::remove_file(&node);
        nix::sys::stat::mknod(&node, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::from_bits_truncate(0o600), libc::makedev(1, minor))
            .expect("mknod");
    };
    mknod(5);
    let mut job = Job::start("devices", &["node", node.to_str().unwrap()], dir.path());
    job.ready();
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    mknod(3);
    let err = job.assert_restore_failed(&restore(&images, &[]), "restore with another device at the path");
    assert!(err.contains(node.to_str().unwrap()) && err.contains("character device 1:5") && err.contains("1:3"), "message: {err}");
    assert!(!Path::new(&format!("/proc/{}", job.pid)).exists(), "nothing is left of a refused restore");
    mknod(5);
    restore_ok(&mut job, &images);
    job.expect_ok();
}

/// memfds held by a parent and its child: contents (with a hole), names,
/// seals, offsets, flags, shared and separate descriptions, a shared mapping
/// and a memfd only mapped; the workload checks each, and that the child's
/// writes reach the parent (one inode, still shared). crit reads memfd.img.
#[test]
fn memfds_come_back_with_contents_seals_and_still_shared() {
    let dir = TempDir::new("restore-memfds");
    let mut job = Job::start("memfds", &[], dir.path());
    let child = ready_field(&job.ready(), "child");
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    assert_eq!(common::proc_stat(child).map(|s| s.ppid), Some(job.pid), "the child is back");
    let inodes = common::crit_show(&images.join("memfd.img"));
    let mut names: Vec<(String, String)> = inodes["entries"]
        .as_array()
        .expect("memfd.img entries")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), common::flag_names(&e["seals"]).into_iter().collect::<Vec<_>>().join(" ")))
        .collect();
    names.sort();
    let expected = [("crust-mapped-only", "F_SEAL_SEAL"), ("crust-sealed", "F_SEAL_SEAL F_SEAL_WRITE"), ("crust-shared", "F_SEAL_GROW F_SEAL_SHRINK")];
    assert_eq!(names, expected.map(|(n, s)| (n.to_string(), s.to_string())), "names and seals as crit reads them");
    job.expect_ok();
}

/// An inotify instance comes back with its watches, their masks and their
/// numbers (1, 2 and 4: a removed watch left 3 out), nothing queued, and each
/// watch reports its events again; the workload checks it all.
#[test]
fn inotify_watches_come_back_with_their_numbers_and_report_events() {
    let dir = TempDir::new("restore-inotify");
    let watched = dir.join("watched");
    std::fs::create_dir(&watched).unwrap();
    let mut job = Job::start("inotify", &[watched.to_str().unwrap()], dir.path());
    job.ready();
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    let files = common::crit_show(&images.join("files.img"));
    let mut wds: Vec<u64> = files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("ify"))
        .flat_map(|i| i["wd"].as_array().unwrap().iter().map(|w| common::num(&w["wd"])))
        .collect();
    wds.sort();
    assert_eq!(wds, [1, 2, 4], "watch numbers as crit reads them");
    job.expect_ok();
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

/// `tail -f` (GNU coreutils, which follows with inotify) of a log that grows
/// while tail is dumped: the restore accepts the log, read only but grown (the
/// same inode, the same bytes before its old end), and tail prints the lines
/// appended meanwhile. Its restored watch sees the next write, as the
/// original's would have: writes made while no tail ran raise no event, so
/// tail prints them with the next line, in order. A log rewritten in place,
/// or replaced by another file, is refused by name.
#[test]
fn tail_f_prints_what_a_log_gained_while_dumped_and_a_replaced_log_is_refused() {
    let dir = TempDir::new("restore-tail");
    let log = dir.join("app.log");
    std::fs::write(&log, "first\n").unwrap();
    let log_s = log.to_str().unwrap();
    let mut job = Job::build("tail", &["-f", log_s]).program(Path::new("/usr/bin/tail")).start(dir.path());
    assert_eq!(job.line(STEP), "first");
    let watching = || std::fs::read_dir(format!("/proc/{}/fdinfo", job.pid)).ok()?.flatten().find(|e| {
        std::fs::read_to_string(e.path()).unwrap_or_default().contains("inotify wd:")
    });
    assert!(common::poll(STEP, std::time::Duration::from_millis(10), watching).is_some(), "tail follows the log with inotify");
    append(&log, "before the dump\n");
    assert_eq!(job.line(STEP), "before the dump");

    let images = dir.join("images");
    // The log (tail's fd 3) grew meanwhile: its modification time moved on.
    dump_and_restore_doing(&mut job, &images, &["fd 3 mtime"], || append(&log, "while dumped 1\nwhile dumped 2\n"));
    append(&log, "after the restore\n");
    for expected in ["while dumped 1", "while dumped 2", "after the restore"] {
        assert_eq!(job.line(STEP), expected);
    }

    let images = dir.join("images-2");
    dump(job.pid, &images, &[]);
    job.reap_original();
    // Rewritten in place: the same inode, longer, but its old end changed.
    let old = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, format!("{}X\nmore\n", &old[..old.len() - 1])).unwrap();
    let err = job.assert_restore_failed(&restore(&images, &[]), "restore with the log rewritten");
    assert!(err.contains(log_s) && err.contains("its bytes before the old end"), "message: {err}");
    // Replaced, as logrotate does: another file renamed over it.
    let new = dir.join("app.log.new");
    std::fs::write(&new, format!("{old}rotated\n")).unwrap();
    std::fs::rename(&new, &log).unwrap();
    let err = job.assert_restore_failed(&restore(&images, &[]), "restore with the log replaced");
    assert!(err.contains(log_s) && err.contains("it was replaced"), "message: {err}");
    assert!(err.contains("inotify watch 1") && err.contains("Stale file handle"), "the watch's file is gone too: {err}");
}

/// A pidfd of a child and a non-blocking one of the process itself point to
/// the restored processes: the workload ends and reaps its child through its
/// pidfd.
#[test]
fn pidfds_point_to_the_restored_processes() {
    let dir = TempDir::new("restore-pidfds");
    let mut job = Job::start("pidfds", &[], dir.path());
    let child = ready_field(&job.ready(), "child");
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    assert_eq!(common::proc_stat(child).map(|s| s.ppid), Some(job.pid), "the child is back");
    job.expect_ok();
}

#[test]
fn a_removed_working_directory_comes_back_removed() {
    let dir = TempDir::new("restore-removed-cwd");
    let gone = dir.join("cwd");
    let mut job = Job::start("removedcwd", &[gone.to_str().unwrap()], dir.path());
    job.ready();
    dump_and_restore(&mut job, &dir.join("images"));
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", job.pid)).unwrap().to_string_lossy().into_owned();
    assert!(cwd.starts_with(&format!("{}/", dir.path().display())) && cwd.ends_with(" (deleted)"), "{cwd}");
    let left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| n == "images" || n.ends_with(".out")), "nothing made by the restore is left: {left:?}");
    job.expect_ok();
}

/// kcmp(2) of two processes' `kind` (KCMP_FILES 2, KCMP_FS 3): the same object?
fn kcmp_same(pid1: i32, pid2: i32, kind: i32) -> bool {
    // SAFETY: kcmp compares kernel objects and writes no memory.
    unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, 0, 0) == 0 }
}

#[test]
fn an_fd_table_and_fs_state_shared_with_the_parent_are_shared_again() {
    let dir = TempDir::new("restore-sharing");
    let mut job = Job::start("sharing", &[], dir.path());
    let child = ready_field(&job.ready(), "child");
    assert!(kcmp_same(job.pid, child, 2) && kcmp_same(job.pid, child, 3), "the workload shares");
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    assert!(!images.join(format!("fdinfo-{}.img", 2)).exists(), "one fd table, saved once");
    assert!(kcmp_same(job.pid, child, 2), "the fd table is shared again");
    assert!(kcmp_same(job.pid, child, 3), "the fs state is shared again");
    job.expect_ok();
}

#[test]
fn the_thp_disable_prctl_survives_restore() {
    let dir = TempDir::new("restore-thp-disable");
    let mut job = Job::start("unusual", &["thp-disable"], dir.path());
    job.ready();
    assert_eq!(common::proc_status_field(job.pid, "THP_enabled").as_deref(), Some("0"));
    // The /proc comparison checks THP_enabled again after the restore.
    dump_and_restore(&mut job, &dir.join("images"));
    assert_eq!(common::proc_status_field(job.pid, "THP_enabled").as_deref(), Some("0"));
    job.expect_ok();
}

#[test]
fn an_o_async_pipe_keeps_its_owner_and_signal() {
    let dir = TempDir::new("restore-async");
    let mut job = Job::start("unusual", &["async"], dir.path());
    job.ready();
    // The workload writes to the pipe after the restore and waits for its SIGUSR2.
    dump_and_restore(&mut job, &dir.join("images"));
    job.expect_ok();
}

/// The netlink tests take turns: the route socket of one hears the links
/// the other makes, and a dump refuses messages waiting unread.
static LINK_EVENTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn hearing_link_events() -> std::sync::MutexGuard<'static, ()> {
    LINK_EVENTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Netlink sockets a program keeps open come back with their port ids,
/// multicast groups (both words of the list) and buffer, and still talk to
/// the kernel (the workload checks); a reply left unread is refused by
/// name, the process left as it was.
#[test]
fn netlink_sockets_keep_their_port_ids_and_groups() {
    let _turn = hearing_link_events();
    let dir = TempDir::new("restore-netlink");
    std::fs::create_dir_all(dir.join("queued")).unwrap();
    let mut queued = Job::start("netlink", &["queued"], &dir.join("queued"));
    queued.ready();
    let before = ProcState::of_tree(queued.pid);
    let out = crust(&common::dump_args(&queued.pid.to_string(), &dir.join("refused"), &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a netlink socket with a reply unread");
    assert!(err.contains(&format!("process {}", queued.pid)) && err.contains("netlink sockets with messages waiting to be read"), "{err}");
    before.assert_same(&ProcState::of_tree(queued.pid), &[]);
    let mut job = Job::start("netlink", &[], dir.path());
    let ready = job.ready();
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    let files = common::crit_show(&images.join("files.img"));
    let sockets: Vec<&serde_json::Value> = files["entries"].as_array().unwrap().iter().filter_map(|f| f.get("nlsk")).collect();
    assert_eq!(sockets.len(), 3, "three netlink sockets in files.img: {sockets:?}");
    let route = ready_field(&ready, "route") as u64;
    assert!(sockets.iter().any(|s| common::num(&s["portid"]) == route && s["groups"].as_array().is_some_and(|g| g.len() == 2)), "{sockets:?}");
    job.expect_ok();
}

/// A real program on netlink: `ip monitor link` (iproute2, which sets
/// NETLINK_EXT_ACK) still hears of new links after a dump and restore.
#[test]
fn ip_monitor_still_hears_of_new_links_after_a_restore() {
    let _turn = hearing_link_events();
    let dir = TempDir::new("restore-ipmonitor");
    let mut job = Job::build("ipmonitor", &["-c", "exec ip monitor link"]).program(Path::new("/bin/sh")).start(dir.path());
    let listening = common::poll(STEP, std::time::Duration::from_millis(10), || {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", job.pid)).ok()?;
        let fd = std::fs::read_link(format!("/proc/{}/fd/3", job.pid)).ok()?;
        (comm.trim() == "ip" && fd.to_string_lossy().starts_with("socket:")).then_some(())
    });
    assert!(listening.is_some(), "ip monitor did not start");
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    // A veth pair of this test's own (veth is built in; dummy is a module).
    let name = format!("crnl{}", std::process::id() % 100_000);
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().expect("run ip").success();
    struct Link<'a>(&'a str);
    impl Drop for Link<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["link", "del", self.0]).status();
        }
    }
    assert!(ip(&["link", "add", &name, "type", "veth", "peer", "name", &format!("{name}p")]), "ip link add");
    let _link = Link(&name);
    loop {
        let l = job.line(STEP);
        if l.contains(&name) {
            break;
        }
    }
}

/// A thread interrupted in a syscall keeps the kernel's restart state: a
/// process stopped in pause() with a handled signal pending comes back
/// stopped, and when continued, the handler runs and pause() fails with
/// EINTR, as without the dump (crust used to issue pause() again itself,
/// after the handler, and it slept on); and with no signal, pause() sleeps on.
#[test]
fn an_interrupted_pause_fails_with_eintr_when_a_handler_runs_after_the_restore() {
    let dir = TempDir::new("restore-eintr");
    let mut job = Job::start("eintr", &[], dir.path());
    job.ready();
    let pid = job.pid;
    let stopped = move || stopped_untraced(pid);
    job.signal(libc::SIGSTOP);
    assert!(common::poll(STEP, std::time::Duration::from_millis(2), || stopped().then_some(())).is_some(), "not stopped");
    job.signal(libc::SIGUSR2);
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    assert!(stopped(), "restored stopped");
    job.signal(libc::SIGCONT);
    assert_eq!(job.line(STEP), "pause returned -1 errno 4 usr2 1");
    // Back in pause(), through another dump and restore with nothing pending.
    dump_and_restore(&mut job, &images.with_extension("2"));
    job.signal(libc::SIGUSR2);
    assert_eq!(job.line(STEP), "pause returned -1 errno 4 usr2 2");
    job.expect_ok();
}
