//! Post-copy restore: `crust restore --lazy-pages` lets the tree run before
//! its private anonymous memory is in; crust answers its faults through
//! userfaultfd and pushes the rest meanwhile, then exits. The workloads hold
//! a known pattern in a large region and check it; nothing of the
//! userfaultfd may be left in the tree afterwards (fds, registered vmas,
//! the rest of /proc as before the dump).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::job::{dump, restore, Job, STEP};
use common::procstate::ProcState;
use common::{wait_child, CRUST};
use serde_json::Value;

/// Its fds that are userfaultfds, and its vmas registered with one.
fn uffd_left(pid: i32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("userfaultfd"))).count())
        .unwrap_or(0);
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let vmas = smaps.lines().filter(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "um" || f == "uw")).count();
    (fds, vmas)
}

/// `job` dumped (which kills it) to `dir`/images, and reaped: those images.
fn dump_to(job: &mut Job, dir: &Path) -> std::path::PathBuf {
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    images
}

/// `crust restore -D DIR -d --lazy-pages --json` started; its stdout lines.
struct LazyRestore {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl LazyRestore {
    fn start(dir: &Path) -> LazyRestore {
        let mut child = Command::new(CRUST)
            .args(["restore", "-d", "--lazy-pages", "--json", "-D"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting crust restore");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        LazyRestore { child, lines }
    }

    /// The next line of JSON it prints.
    fn json(&mut self) -> Value {
        let l = self.lines.next().unwrap_or_else(|| panic!("crust restore said nothing more: {}", self.stderr())).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"))
    }

    fn stderr(&mut self) -> String {
        let _ = self.child.kill();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }

    /// Whether crust still runs (serving pages).
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn finish(mut self) {
        let status = wait_child(&mut self.child, STEP).expect("crust restore --lazy-pages did not end");
        assert!(status.success(), "crust restore --lazy-pages: {status:?}: {}", self.stderr());
    }
}

#[test]
fn lazy_restore_runs_before_the_fill_and_leaves_nothing() {
    let tmp = common::TempDir::new("lazy-restore");
    let mut job = Job::start("dirtier", &["256"], tmp.path());
    job.ready();
    let before = ProcState::of_tree(job.pid);
    let images = dump_to(&mut job, tmp.path());

    let started = Instant::now();
    let mut lazy = LazyRestore::start(&images);
    let restored = lazy.json();
    let released = started.elapsed();
    assert_eq!(restored["root"].as_i64(), Some(job.pid as i64), "{restored}");
    // It runs, and answers, while crust still fills its memory.
    // SAFETY: a signal to the restored workload.
    unsafe { libc::kill(job.pid, libc::SIGUSR2) };
    assert_eq!(job.line(STEP), "STEP 1");
    let first_run = started.elapsed();
    assert!(lazy.running(), "the fill was over before the tree ran ({first_run:?})");
    let fill = lazy.json();
    let filled = started.elapsed();
    lazy.finish();
    let stats = &fill["lazy_pages"];
    assert!(stats["pages_pushed"].as_u64().unwrap() > 60000, "most of 256 MiB is pushed in the background: {fill}");
    assert!(stats["faults"].as_u64().unwrap() > 0, "{fill}");
    job.adopt_restored();
    assert_eq!(uffd_left(job.pid), (0, 0), "userfaultfd fds and registered vmas left in {}", job.pid);
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
    job.expect_ok();

    // The same images restored whole, for comparison.
    let plain = Instant::now();
    let out = restore(&images, &[]);
    let plain = plain.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    job.expect_ok();
    eprintln!(
        "256 MiB: lazy restore ran after {:.1} ms (released {:.1} ms), filled after {:.1} ms; plain restore {:.1} ms; first run / plain = {:.2}",
        first_run.as_secs_f64() * 1e3,
        released.as_secs_f64() * 1e3,
        filled.as_secs_f64() * 1e3,
        plain.as_secs_f64() * 1e3,
        first_run.as_secs_f64() / plain.as_secs_f64()
    );
    assert!(first_run < plain, "the lazy restore ran after {first_run:?}, a plain one takes {plain:?}");
}

/// The tree forks, mremaps, madvises and munmaps while its pages are being
/// filled: the child gets what its parent missed, moved pages follow, dropped
/// ones read as zeros.
#[test]
fn lazy_restore_survives_fork_mremap_and_madvise_during_the_fill() {
    let tmp = common::TempDir::new("lazy-events");
    let mut job = Job::start("lazyfill", &["256"], tmp.path());
    job.ready();
    let images = dump_to(&mut job, tmp.path());
    let mut lazy = LazyRestore::start(&images);
    lazy.json();
    // SAFETY: a signal to the restored workload: it forks and changes its memory at once.
    unsafe { libc::kill(job.pid, libc::SIGUSR1) };
    let fill = lazy.json();
    lazy.finish();
    let stats = &fill["lazy_pages"];
    assert!(stats["spaces"].as_u64().unwrap() >= 2, "the child's fork was seen during the fill: {fill}");
    assert!(stats["pages_dropped"].as_u64().unwrap() > 0, "the madvise or munmap came during the fill: {fill}");
    job.adopt_restored();
    let mut lines = Vec::new();
    loop {
        let l = job.line(STEP);
        assert!(!l.contains("FAIL"), "{l}: {lines:?}");
        lines.push(l.clone());
        if l == "OK" {
            break;
        }
    }
    assert!(lines.contains(&"CHILD OK".to_string()), "{lines:?}");
    assert!(job.wait_exit(STEP).success());
}

/// crust killed in the middle of the fill: the tree must not run on with
/// its memory missing (reading zeros); its guard kills it, and goes.
#[test]
fn crust_killed_during_the_fill_takes_the_tree_with_it() {
    let tmp = common::TempDir::new("lazy-killed");
    let mut job = Job::start("dirtier", &["256"], tmp.path());
    job.ready();
    let images = dump_to(&mut job, tmp.path());
    let mut lazy = LazyRestore::start(&images);
    lazy.json();
    let guard = common::poll(Duration::from_secs(5), Duration::from_millis(5), || {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", lazy.child.id())).unwrap_or_default();
        kids.split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "crust-lazy"))
    });
    lazy.child.kill().unwrap();
    let _ = lazy.child.wait();
    job.adopt_restored();
    let status = job.wait_exit(STEP);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the tree was killed, not left running on missing memory");
    assert!(job.drain().iter().all(|l| !l.starts_with("FAIL")));
    let guard = guard.expect("crust's guard process (crust-lazy)");
    // It ends (handed to the test process, a subreaper: reaped here).
    let gone = common::poll(STEP, Duration::from_millis(10), || {
        // SAFETY: reaping the guard, handed to this process.
        let r = unsafe { libc::waitpid(guard, std::ptr::null_mut(), libc::WNOHANG) };
        (r == guard || !Path::new(&format!("/proc/{guard}")).exists()).then_some(())
    });
    assert!(gone.is_some(), "the guard {guard} ends");
}
