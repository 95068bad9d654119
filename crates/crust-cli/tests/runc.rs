//! runc 1.1.5 checkpoints and restores a busybox container with crust as
//! its criu (`crust swrk`, found first in a PATH of the test's own): the
//! container's counter goes on after the restore, runc says it runs, and
//! `runc exec` / `runc kill` work on it; `--leave-running` keeps it running
//! and its images restore once it is gone; a crust killed in the middle of
//! a checkpoint leaves it running. The bundle: tests/common/bundle.rs.
//! podman 4.3.1 (through runc) exports a checkpoint of such a container and
//! imports it again, twice over (a restored container checkpointed again).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bundle::{crust_as_criu, runc_installed, Container};
use common::{poll, proc_status_field, TempDir};

fn skip() -> bool {
    if runc_installed() {
        return false;
    }
    eprintln!("skipped: runc or /bin/busybox is missing (scripts/setup installs them)");
    true
}

/// The container's init, as runc names it, is pid 1 of the container's own
/// pid namespace.
fn assert_init_is_pid_1(c: &Container) {
    let pid = c.pid();
    assert!(pid > 0, "runc state names the init");
    let nspid = proc_status_field(pid, "NSpid").unwrap_or_default();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "the init is pid 1 in the container: NSpid {nspid}");
    let out = exec(c, &["cat", "/proc/1/cmdline"]);
    assert!(out.contains("while true"), "runc exec works and sees the counter as pid 1: {out:?}");
}

/// `runc exec ID ARGS...`: its stdout.
fn exec(c: &Container, args: &[&str]) -> String {
    let mut cmd = Command::new(common::bundle::RUNC);
    cmd.arg("exec").arg(&c.id).args(args).current_dir(&c.bundle);
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(out.status.success(), "runc exec {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `runc kill ID KILL`, and the container stopped.
fn kill(c: &Container) {
    let mut cmd = Command::new(common::bundle::RUNC);
    cmd.args(["kill", &c.id, "KILL"]).current_dir(&c.bundle);
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(out.status.success(), "runc kill: {}", String::from_utf8_lossy(&out.stderr));
    assert!(poll(Duration::from_secs(10), Duration::from_millis(20), || (c.status() == "stopped").then_some(())).is_some(), "runc kill stops it");
}

/// `runc checkpoint ARGS... --image-path IMAGES`: success, with the log
/// quoted if not.
fn checkpoint(c: &Container, criu: &Path, images: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let mut all = vec!["checkpoint", "--image-path", images.to_str().unwrap()];
    all.extend(args);
    let out = c.runc(&all, Some(criu));
    let took = start.elapsed();
    let log = std::fs::read_to_string(images.join("dump.log")).unwrap_or_default();
    assert!(out.status.success(), "runc checkpoint {args:?} with crust as criu: {}\n{log}", String::from_utf8_lossy(&out.stderr));
    took
}

fn restore(c: &mut Container, criu: &Path, images: &Path) -> Duration {
    let start = Instant::now();
    let (status, err) = c.restore(&["--image-path", images.to_str().unwrap()], criu);
    let took = start.elapsed();
    let log = std::fs::read_to_string(images.join("restore.log")).unwrap_or_default();
    assert!(status.success(), "runc restore with crust as criu: {status:?} {err}\n{log}");
    took
}

/// The first number the restored container printed: the count goes on
/// from where the checkpoint took it, not from 0.
fn first_count(c: &Container) -> u64 {
    c.counts_past(None);
    let text = c.output();
    text.lines().find_map(|l| l.trim().parse().ok()).expect("a number")
}

/// The processes whose parent is `parent`.
fn child_pids(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let pids = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|&p| proc_status_field(p, "PPid").and_then(|v| v.parse().ok()) == Some(parent)).collect()
}

#[test]
fn runc_checkpoint_then_restore_counts_on() {
    if skip() {
        return;
    }
    let tmp = TempDir::new("runc-cr");
    let id = format!("crust-runc-cr-{}", std::process::id());
    let mut c = Container::counter(tmp.path(), &id);
    let criu = crust_as_criu(tmp.path());
    let images = tmp.join("images");
    let before = c.counts_past(Some(2));
    let dumped = checkpoint(&c, &criu, &images, &[]);
    assert_eq!(c.status(), "gone", "runc checkpoint without --leave-running ends the container");
    // What the container wrote before it went is read to its end.
    std::thread::sleep(Duration::from_millis(100));
    let last = c.count().expect("counted");
    assert!(last >= before);
    let restored = restore(&mut c, &criu, &images);
    let first = first_count(&c);
    assert!(first > last && first <= last + 3, "the count goes on from {last}: first restored line {first}");
    c.counts_past(Some(first + 3));
    assert_eq!(c.status(), "running");
    assert_init_is_pid_1(&c);
    // In the cgroup runc made for it (criu's cg_root), not one below it.
    let cpu = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid())).unwrap_or_default();
    let cpu = cpu.lines().find(|l| l.split(':').nth(1) == Some("cpu")).unwrap_or_default().to_string();
    assert!(cpu.ends_with(&format!(":/{id}")), "the restored init's cpu cgroup: {cpu}");
    eprintln!("runc with crust as criu: checkpoint {dumped:?}, restore {restored:?}");
    kill(&c);
}

#[test]
fn runc_checkpoint_leave_running_then_restore_after_it_is_gone() {
    if skip() {
        return;
    }
    let tmp = TempDir::new("runc-leave");
    let id = format!("crust-runc-leave-{}", std::process::id());
    let mut c = Container::counter(tmp.path(), &id);
    let criu = crust_as_criu(tmp.path());
    let images = tmp.join("images");
    let before = c.counts_past(Some(2));
    checkpoint(&c, &criu, &images, &["--leave-running"]);
    // It counts on: what it printed by the time runc returned is read.
    std::thread::sleep(Duration::from_millis(100));
    let at_dump = c.count().expect("counted");
    assert_eq!(c.status(), "running");
    c.counts_past(Some(at_dump + 3));
    kill(&c);
    let out = c.runc(&["delete"], None);
    assert!(out.status.success(), "runc delete: {}", String::from_utf8_lossy(&out.stderr));
    restore(&mut c, &criu, &images);
    let first = first_count(&c);
    assert!(first > before && first <= at_dump + 1, "the count goes on from the checkpoint's (between {before} and {at_dump}): {first}");
    c.counts_past(Some(first + 3));
    assert_eq!(c.status(), "running");
    assert_init_is_pid_1(&c);
}

/// crust SIGKILLed while it holds the container (seized, in the middle of
/// the dump): runc's checkpoint fails, the container runs on, thawed.
#[test]
fn a_crust_killed_during_runc_checkpoint_leaves_the_container_running() {
    if skip() {
        return;
    }
    let tmp = TempDir::new("runc-killed");
    let id = format!("crust-runc-killed-{}", std::process::id());
    let c = Container::counter(tmp.path(), &id);
    let criu = crust_as_criu(tmp.path());
    let images = tmp.join("images");
    c.counts_past(Some(2));
    let init = c.pid();
    let path = std::env::var("PATH").unwrap_or_default();
    let mut runc = Command::new(common::bundle::RUNC);
    runc.args(["checkpoint", "--image-path", images.to_str().unwrap(), &id]).current_dir(&c.bundle).env("PATH", format!("{}:{path}", criu.display()));
    let mut runc = runc.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("runc checkpoint");
    let err = common::collect_text(runc.stderr.take().unwrap());
    // The container seized by crust: crust is runc's child named criu.
    let seized = poll(Duration::from_secs(20), Duration::from_micros(500), || {
        let tracer: i32 = proc_status_field(init, "TracerPid")?.parse().ok()?;
        (tracer != 0).then_some(tracer)
    });
    let swrk = child_pids(runc.id() as i32).into_iter().find(|&p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "criu"));
    let (Some(_), Some(swrk)) = (seized, swrk) else { panic!("crust never seized the container (runc: {})", err.lock().unwrap()) };
    // SAFETY: kill of crust, a child of our runc.
    unsafe { libc::kill(swrk, libc::SIGKILL) };
    let status = common::wait_child(&mut runc, Duration::from_secs(30)).expect("runc ends");
    assert!(!status.success() && status.signal().is_none(), "runc reports the failure: {status:?} {}", err.lock().unwrap());
    assert!(!images.join("inventory.img").exists(), "no images");
    assert!(poll(Duration::from_secs(10), Duration::from_millis(10), || (proc_status_field(init, "TracerPid").as_deref() == Some("0")).then_some(())).is_some(), "crust's worker let the container go");
    assert_eq!(c.status(), "running");
    let freezer = std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/{id}/freezer.state")).unwrap_or_default();
    assert!(freezer.is_empty() || freezer.trim() == "THAWED", "the container's cgroup is thawed: {freezer}");
    let now = c.count().expect("counted");
    c.counts_past(Some(now + 3));
    assert_init_is_pid_1(&c);
}

/// `podman ARGS...` (runc as its runtime, `criu` first in PATH): stdout, or
/// the test fails with stderr.
fn podman(criu: &Path, args: &[&str]) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc"]).args(args).env("PATH", format!("{}:{path}", criu.display()));
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last number a podman container logged.
fn podman_count(criu: &Path, name: &str) -> Option<u64> {
    podman(criu, &["logs", name]).lines().rev().find_map(|l| l.trim().parse().ok())
}

/// The podman container and image of a test, removed at its end.
struct PodmanLeftovers(String, String);

impl Drop for PodmanLeftovers {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", &self.0]).output();
        let _ = Command::new("podman").args(["rmi", "-f", &self.1]).output();
    }
}

#[test]
fn podman_checkpoint_export_and_restore_import_count_on() {
    if skip() || Command::new("podman").arg("--version").output().is_err() {
        eprintln!("skipped: podman is missing (scripts/setup installs it)");
        return;
    }
    let tmp = TempDir::new("podman-cr");
    let name = format!("crust-podman-{}", std::process::id());
    let image = format!("localhost/{name}");
    let _leftovers = PodmanLeftovers(name.clone(), image.clone());
    let criu = crust_as_criu(tmp.path());
    // A busybox image of the test's own (no registry here).
    let rootfs = tmp.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(common::bundle::BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep")).unwrap();
    let tar = tmp.join("rootfs.tar");
    let out = Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").output().unwrap();
    assert!(out.status.success());
    podman(&criu, &["import", tar.to_str().unwrap(), &image]);
    // The ulimits podman asks of the runtime by default are above root's hard limits here (DESIGN.md 6).
    let counter = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done";
    podman(&criu, &["run", "-d", "--name", &name, "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", &image, "sh", "-c", counter]);
    let counts_past = |n: u64, within: u64| poll(Duration::from_secs(within), Duration::from_millis(50), || podman_count(&criu, &name).filter(|&c| c > n));
    // Past 30 (3 s): a container counting again from 0 would not pass the
    // count of the checkpoint in the 2 s given after a restore.
    assert!(counts_past(30, 30).is_some(), "the container counts");
    for round in 0..2 {
        let export = tmp.join(format!("checkpoint-{round}.tar.gz"));
        let start = Instant::now();
        podman(&criu, &["container", "checkpoint", "--export", export.to_str().unwrap(), &name]);
        let dumped = start.elapsed();
        let last = podman_count(&criu, &name).expect("counted");
        podman(&criu, &["rm", "-f", &name]);
        let start = Instant::now();
        podman(&criu, &["container", "restore", "--import", export.to_str().unwrap()]);
        let restored = start.elapsed();
        let now = counts_past(last, 2).unwrap_or_else(|| panic!("round {round}: the restored container counts on past {last} at once"));
        assert!(counts_past(now + 2, 30).is_some(), "round {round}: it goes on counting");
        eprintln!("podman with crust as criu, round {round}: checkpoint --export {dumped:?}, restore --import {restored:?}");
    }
}
