//! `crust migrate --live` between the two test hosts (tests/common/hosts.rs):
//! the memory goes in pre-copy rounds while the tree runs and writes, the
//! freeze sends only what was written since. The workload (dirtier) writes a
//! known pattern over 1 MiB per step, steps taken all along the move, and
//! checks all its memory at the end; nothing of the tracking may be left in
//! it (no userfaultfd fd, no vma registered), also when crust is killed in
//! the middle of a round.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hosts::{file_lines as lines, wait_file_line as wait_line, Host, HostChild, Hosts};
use common::{poll, proc_stat, workload_path, CRUST};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// Pages of the workload's memory: 256 MiB.
const PAGES: u64 = 65536;

/// A workload started in `host`, in a session of its own, writing to `out`.
fn start(host: &Host, name: &str, args: &[&str], out: &Path) -> HostChild {
    host.start_writing_to(&workload_path(name), args, out)
}

fn live_in(host: &Host, host_pid: i32) -> Option<i32> {
    host.processes().into_iter().find(|&p| host.pid_in_host(p) == Some(host_pid) && proc_stat(p).is_some_and(|s| s.state != 'Z'))
}

fn running_in(host: &Host, host_pid: i32) -> i32 {
    let found = poll(WAIT, Duration::from_millis(20), || live_in(host, host_pid));
    found.unwrap_or_else(|| panic!("no process {host_pid} in host {}", host.label()))
}

fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![byte; 32]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Its vmas registered for write protection, and its fds that are userfaultfds.
fn tracking_left(pid: i32) -> (usize, usize) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let vmas = smaps.lines().filter(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "uw" || f == "um")).count();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("userfaultfd"))).count())
        .unwrap_or(0);
    (vmas, fds)
}

/// The children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Takes a step of the workload (SIGUSR2: 1 MiB written) every `every`
/// until dropped: a writer of about 1 MiB / `every`.
struct Stepper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stepper {
    fn start(pid: i32, every: Duration) -> Stepper {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // SAFETY: a signal to the test's own workload (gone once moved: ESRCH).
                unsafe { libc::kill(pid, libc::SIGUSR2) };
                std::thread::sleep(every);
            }
        });
        Stepper { stop, thread: Some(thread) }
    }
}

impl Drop for Stepper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `crust migrate --live` from `from`, expected to succeed: its stats.
fn migrate_live(from: &Host, host_pid: i32, to: &str, key: Option<&Path>, stats_dir: &Path) -> Value {
    let mut cmd = from.command(CRUST);
    cmd.args(["migrate", "--live", "-t", &host_pid.to_string(), "--to", to, "--json", "-D"]).arg(stats_dir);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    let out = cmd.output(WAIT);
    assert!(out.status.success(), "migrate --live to {to} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stats: Value = serde_json::from_slice(&out.stdout).expect("migrate --json");
    let kept: Value = serde_json::from_slice(&std::fs::read(stats_dir.join("stats-migrate.json")).unwrap()).unwrap();
    assert_eq!(kept, stats, "stats-migrate.json holds the rounds too");
    stats
}

/// The rounds sent the memory once and then less; the freeze sent little and
/// left the rest to the destination's copy.
fn assert_pre_copied(stats: &Value) {
    eprintln!("rounds {} frozen {} dump {}", stats["pre_copy"], stats["frozen_time_us"], stats["dump"]);
    let rounds = stats["pre_copy"]["rounds"].as_array().unwrap_or_else(|| panic!("no rounds: {stats}"));
    assert!(rounds.len() >= 2, "{stats}");
    let pages = |r: &Value| r["pages"].as_u64().unwrap();
    assert!(pages(&rounds[0]) >= PAGES, "round 1 sends everything: {stats}");
    // Later rounds send what was written meanwhile (the writer's pace times
    // the round before's length: less than half on a busy machine), each
    // shrinking to 3/4 of the one before but the last (the rule that stops them).
    assert!(pages(&rounds[1]) < PAGES / 2, "round 2 sends what was written during round 1: {stats}");
    assert!(rounds[1..rounds.len() - 1].windows(2).all(|w| pages(&w[1]) * 4 <= pages(&w[0]) * 3), "rounds shrink: {stats}");
    let dump = &stats["dump"];
    assert!(dump["pages_skipped_parent"].as_u64().unwrap() >= PAGES * 9 / 10, "the freeze leaves to the rounds: {stats}");
    assert!(dump["pages_written"].as_u64().unwrap() < PAGES / 4, "the freeze sends little: {stats}");
}

#[test]
fn a_writing_tree_moves_live_over_ssh_and_back_over_tcp_with_its_memory_right() {
    let hosts = Hosts::new("migrate-live");
    let sshd = hosts.start_sshd();
    let key = key_file(hosts.tmp(), "key", 0x44);
    let workdir = hosts.tmp().join("serve-a");
    let _serve = hosts.a.start_crust_serve(Path::new(CRUST), 7070, &key, &workdir, &hosts.tmp().join("serve-a.log"));
    let out = hosts.tmp().join("dirtier.out");
    let job = start(&hosts.a, "dirtier", &["256"], &out);
    let pid = job.host_pid();
    wait_line(&out, |l| l.starts_with("READY"));

    let in_a = running_in(&hosts.a, pid);
    let stepper = Stepper::start(in_a, Duration::from_millis(50));
    let stats = migrate_live(&hosts.a, pid, &sshd.url(), None, &hosts.tmp().join("stats-a-to-b"));
    drop(stepper);
    assert_pre_copied(&stats);
    let in_b = running_in(&hosts.b, pid);
    assert_eq!(tracking_left(in_b), (0, 0), "the moved tree holds nothing of the tracking");

    let stepper = Stepper::start(in_b, Duration::from_millis(50));
    let stats = migrate_live(&hosts.b, pid, &format!("tcp://{}:7070", hosts.a.ip()), Some(&key), &hosts.tmp().join("stats-b-to-a"));
    drop(stepper);
    assert_pre_copied(&stats);
    let in_a = running_in(&hosts.a, pid);
    assert_eq!(tracking_left(in_a), (0, 0));
    // SAFETY: our migrated process.
    unsafe { libc::kill(in_a, libc::SIGUSR1) };
    let verdict = wait_line(&out, |l| l == "OK" || l.starts_with("FAIL"));
    assert_eq!(verdict, "OK", "the memory after two live moves: {:?}", lines(&out));
    let steps = lines(&out).iter().filter(|l| l.starts_with("STEP ")).count();
    assert!(steps >= 2, "the workload wrote during the moves: {steps} steps");
}

#[test]
fn crust_killed_in_a_round_leaves_the_tree_running_untracked_and_nothing_in_b() {
    let hosts = Hosts::new("migrate-live-kill");
    let key = key_file(hosts.tmp(), "key", 0x55);
    let workdir = hosts.tmp().join("serve-b");
    let _serve = hosts.b.start_crust_serve(Path::new(CRUST), 7070, &key, &workdir, &hosts.tmp().join("serve-b.log"));
    let out = hosts.tmp().join("dirtier.out");
    let job = start(&hosts.a, "dirtier", &["256"], &out);
    let pid = job.host_pid();
    wait_line(&out, |l| l.starts_with("READY"));
    let in_a = running_in(&hosts.a, pid);
    let before = std::fs::read_to_string(format!("/proc/{in_a}/maps")).unwrap();
    let _stepper = Stepper::start(in_a, Duration::from_millis(20));

    let mut cmd = hosts.a.command(CRUST);
    cmd.args(["migrate", "--live", "-t", &pid.to_string(), "--to", &format!("tcp://{}:7070", hosts.b.ip()), "--key"]).arg(&key);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut crust = cmd.spawn();
    // Killed once the tracking is in place, while the first round sends.
    let tracked = poll(WAIT, Duration::from_millis(2), || (tracking_left(in_a).0 > 0).then_some(()));
    assert!(tracked.is_some(), "the tracking never started");
    std::thread::sleep(Duration::from_millis(30));
    // crust and its worker (the fork that does the work) at once.
    let worker = children(crust.pid());
    crust.kill();
    for p in worker {
        // SAFETY: crust's worker, started by this test.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }

    // The kernel ends the tracking with crust's fds: nothing is left.
    let gone = poll(Duration::from_secs(10), Duration::from_millis(20), || (tracking_left(in_a) == (0, 0)).then_some(()));
    assert!(gone.is_some(), "tracking left in the tree: {:?}", tracking_left(in_a));
    assert_eq!(std::fs::read_to_string(format!("/proc/{in_a}/maps")).unwrap(), before, "the tree's maps are as they were");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&workdir).is_ok_and(|mut d| d.next().is_some()) {
        assert!(Instant::now() < deadline, "images left in B");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(live_in(&hosts.b, pid).is_none(), "nothing of the tree runs in B");
    drop(_stepper);
    // SAFETY: our workload.
    unsafe { libc::kill(in_a, libc::SIGUSR1) };
    let verdict = wait_line(&out, |l| l == "OK" || l.starts_with("FAIL"));
    assert_eq!(verdict, "OK", "the tree ran on intact: {:?}", lines(&out));
}
