//! Trees in namespaces of their own: each kind is saved with the tree and
//! made again at restore, holding what it held; what crust cannot save is
//! refused at dump, and the tree runs on.
//!
//! Run: `cargo test -p crust-cli --test namespaces` (as root).

mod common;

use std::path::Path;
use std::process::Command;

use common::job::*;
use common::procstate::ProcState;
use common::*;

fn restore_ok(job: &mut Job, dir: &Path) {
    let out = restore(dir, &[]);
    assert!(out.status.success(), "restore from {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
}

/// The inode of `pid`'s namespace of kind `ns`.
fn ns_inode(pid: impl std::fmt::Display, ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}")).map(|m| m.ino()).unwrap_or_else(|e| panic!("/proc/{pid}/ns/{ns}: {e}"))
}

/// `nsenter -t PID FLAGS -- CMD...`: its stdout, trimmed; it must succeed.
fn nsenter(pid: i32, flags: &[&str], cmd: &[&str]) -> String {
    let out = Command::new("nsenter").arg("-t").arg(pid.to_string()).args(flags).arg("--").args(cmd).output().expect("running nsenter");
    assert!(out.status.success(), "nsenter {flags:?} {cmd:?} in {pid}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------
// uts

const HOSTNAME: &str = "crust-uts-test";
const DOMAINNAME: &str = "crust-uts.example";

/// In the new process before exec: a uts namespace of its own, named.
fn own_uts() -> std::io::Result<()> {
    // SAFETY: single syscalls on constant, nul-free byte strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWUTS) != 0
            || libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()) != 0
            || libc::setdomainname(DOMAINNAME.as_ptr().cast(), DOMAINNAME.len()) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn a_uts_namespace_comes_back_with_its_names_and_the_hosts_stay() {
    let dir = TempDir::new("ns-uts");
    let images = dir.join("images");
    let host_name = nix_hostname();
    let mut job = Job::build("test_mm", &[]).pre_exec(own_uts).start(dir.path());
    job.ready();
    job.line(STEP);
    assert_ne!(ns_inode(job.pid, "uts"), ns_inode("self", "uts"), "the job has a uts namespace of its own");
    let before = ProcState::of_tree(job.pid);
    dump(job.pid, &images, &[]);
    job.reap_original();
    job.drain();
    let last = counters(&job.history);
    restore_ok(&mut job, &images);
    assert_ne!(ns_inode(job.pid, "uts"), ns_inode("self", "uts"), "the restored job has a uts namespace of its own");
    assert_eq!(nsenter(job.pid, &["-u"], &["hostname"]), HOSTNAME);
    assert_eq!(nsenter(job.pid, &["-u"], &["domainname"]), DOMAINNAME);
    assert_eq!(nix_hostname(), host_name, "the host's name is untouched");
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
    job.assert_counts_on_from(&last);
    // Dumped again, as restored: the namespace is the tree's own again.
    let again = dir.join("again");
    dump(job.pid, &again, &[]);
    job.reap_original();
    restore_ok(&mut job, &again);
    assert_eq!(nsenter(job.pid, &["-u"], &["hostname"]), HOSTNAME);
    job.kill_restored();
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name").trim().to_string()
}

// ---------------------------------------------------------------------------
// refusals

/// In the new process before exec: it unshares a pid namespace, so its next
/// child would be pid 1 there.
fn pending_pid_ns() -> std::io::Result<()> {
    // SAFETY: one syscall.
    match unsafe { libc::unshare(libc::CLONE_NEWPID) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[test]
fn a_process_whose_children_would_be_in_another_pid_namespace_is_refused_and_runs_on() {
    let dir = TempDir::new("ns-pending");
    let images = dir.join("images");
    // eintr: one thread (a process whose children go to another pid
    // namespace can make no thread).
    let mut job = Job::build("eintr", &[]).pre_exec(pending_pid_ns).start(dir.path());
    job.ready();
    let out = crust(&dump_args(&job.pid.to_string(), &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a process with a pid namespace for its children");
    assert!(err.contains("next children") && err.contains("pid namespace"), "the refusal says why: {err}");
    assert_no_inventory(&images);
    job.signal(libc::SIGUSR2);
    assert!(job.line(STEP).starts_with("pause returned -1 errno 4"), "it runs on: {:?}", job.history);
    job.expect_ok();
}

#[test]
fn a_thread_in_a_namespace_of_its_own_is_refused_and_runs_on() {
    let dir = TempDir::new("ns-thread");
    let images = dir.join("images");
    let mut job = Job::build("threadns", &[]).start(dir.path());
    let tid = job.ready();
    assert_ne!(ns_inode(format!("{}/task/{tid}", job.pid), "uts"), ns_inode(job.pid, "uts"), "the thread has a uts namespace of its own");
    let out = crust(&dump_args(&job.pid.to_string(), &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a process with a thread in a uts namespace of its own");
    assert!(err.contains(&format!("thread {tid}")) && err.contains("uts namespace"), "the refusal names the thread and the namespace: {err}");
    assert_no_inventory(&images);
    job.signal(libc::SIGUSR1);
    job.expect_ok();
}
