//! POSIX timers (timer_create): the workload `ptimers` makes timers on every
//! kind of clock and delivery, dumped into the core image's posix timers
//! and restored with their ids; it checks them itself after the restore.
//!
//! Run as root: `cargo test -p crust-cli --test posix_timers`.

mod common;

use common::job::{dump, ready_field, restore, Job};
use common::procstate::ProcState;
use common::{crit_decode_dir, entries, num, TempDir};

/// /proc/PID/timers: the ID, signal, notify and ClockID of every timer,
/// the notify target as pid or tid (the same after a restore).
fn proc_timers(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_else(|e| panic!("/proc/{pid}/timers: {e}"))
}

/// The pending and blocked signal sets of every thread of `pid`.
fn signal_sets(pid: i32) -> Vec<String> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort();
    let status = |tid: i32| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    let sets = |tid: i32| status(tid).lines().filter(|l| ["SigPnd", "ShdPnd", "SigBlk"].iter().any(|k| l.starts_with(k))).map(|l| format!("{tid} {l}")).collect::<Vec<_>>();
    tids.into_iter().flat_map(sets).collect()
}

#[test]
fn posix_timers_come_back_with_their_ids_clocks_targets_and_times() {
    let dir = TempDir::new("posix-timers");
    let mut job = Job::start("ptimers", &[], dir.path());
    let worker = ready_field(&job.ready(), "worker");
    let before = proc_timers(job.pid);
    let sets = signal_sets(job.pid);
    let state = ProcState::of_tree(job.pid);
    assert!(before.contains(&format!("notify: signal/tid.{worker}")), "{before}");
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();

    let imgs = crit_decode_dir(&images);
    let core = &entries(&imgs, &format!("core-{}.img", job.pid))[0];
    let posix = core["tc"]["timers"]["posix"].as_array().unwrap_or_else(|| panic!("no posix timers: {core}"));
    assert_eq!(posix.len(), 10, "{posix:?}");
    let thread = posix.iter().find(|t| num(&t["it_sigev_notify"]) == 4).unwrap_or_else(|| panic!("no SIGEV_THREAD_ID timer: {posix:?}"));
    assert_eq!(num(&thread["notify_thread_id"]), worker as u64, "{thread}");
    assert_eq!(num(&thread["isec"]) * 1_000_000_000 + num(&thread["insec"]), 300_000_000, "{thread}");

    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert_eq!(proc_timers(job.pid), before, "the same timers, ids, clocks, signals, values and targets");
    assert_eq!(signal_sets(job.pid), sets, "timers' signals pending in the same threads");
    state.assert_same(&ProcState::of_tree(job.pid), &[]);
    job.expect_ok();
}
