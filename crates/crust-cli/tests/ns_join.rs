//! Namespaces a tree shares with something outside it: a network namespace
//! kept by `ip netns add` (a bind mount at /run/netns/NAME), a uts
//! namespace another process is in. The dump refuses them, naming the
//! holder, unless the namespace is marked external (`--external
//! net[INO]:KEY`); the restore of such a dump needs one to join
//! (`--join-ns net:PATH`, `--join-ns uts:PID` through criu's command line)
//! and makes the tree in that very namespace.
//!
//! Each test has its own netns name and port.
//!
//! Run: `cargo test -p crust-cli --test ns_join` (as root).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::job::*;
use common::*;

/// A named network namespace (`ip netns add`), with its loopback up;
/// deleted when dropped.
struct NetNs(&'static str);

impl NetNs {
    fn add(name: &'static str) -> NetNs {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        for cmd in [vec!["netns", "add", name], vec!["-n", name, "link", "set", "lo", "up"]] {
            let out = Command::new("ip").args(&cmd).output().expect("running ip");
            assert!(out.status.success(), "ip {cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        NetNs(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).output();
    }
}

const JN1: &str = "/run/netns/crust-jn-serve";

/// In the new process before exec: into the named namespace of the first
/// test (one open and one setns: async-signal-safe).
fn enter_jn1() -> std::io::Result<()> {
    // SAFETY: open and setns on a constant nul-terminated path; the fd is
    // closed at exec.
    unsafe {
        let fd = libc::open(c"/run/netns/crust-jn-serve".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 || libc::setns(fd, libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn own_uts() -> std::io::Result<()> {
    // SAFETY: one syscall.
    match unsafe { libc::unshare(libc::CLONE_NEWUTS) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn ns_ino(pid: i32, kind: &str) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/{kind}")).unwrap().ino()
}

/// A line to netserve on 127.0.0.1:`port` inside the namespace at `path`,
/// from a thread of the test that joined it; the answer.
fn ask_inside(path: &str, port: &str, line: &str) -> String {
    let (path, addr, line) = (path.to_string(), format!("127.0.0.1:{port}"), line.to_string());
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on an fd alive for the call; only this thread moves.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "joining {path}");
        let s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10)).unwrap_or_else(|e| panic!("connecting to {addr} in {path}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut conn = BufReader::new(s);
        conn.get_mut().write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        conn.read_line(&mut answer).unwrap();
        answer.trim().to_string()
    })
    .join()
    .unwrap()
}

#[test]
fn a_tree_in_a_named_netns_is_refused_unless_external_and_joins_it_again() {
    let port = "17151";
    let netns = NetNs::add("crust-jn-serve");
    assert_eq!(netns.path(), JN1);
    let dir = TempDir::new("ns-join");
    let mine = ns_ino(std::process::id() as i32, "net");
    let images = dir.join("images");
    let mut job = Job::build("netserve", &[port]).pre_exec(enter_jn1).start(dir.path());
    job.ready();
    let ino = ns_ino(job.pid, "net");
    assert_eq!(ino, std::fs::metadata(JN1).unwrap().ino());
    assert_eq!(ask_inside(JN1, port, "hello"), "pong 1 hello");

    // Refused, naming the bind mount; the tree runs on.
    let pid = job.pid.to_string();
    let out = crust(&dump_args(&pid, &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a tree in a named netns");
    assert!(err.contains(JN1) && err.contains(&format!("net:[{ino}]")), "the refusal names the namespace and its bind mount: {err}");
    assert_eq!(ask_inside(JN1, port, "still"), "pong 1 still", "the refused dump left the tree running");

    let ext = format!("net[{ino}]:mynet");
    dump(job.pid, &images, &["--external", &ext]);
    job.reap_original();
    assert!(!images.join("netns-").exists());
    let found = std::fs::read_dir(&images).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("netdev-"));
    assert!(!found, "an external namespace is not saved");

    // Without one to join: refused before anything is made.
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "restore of an external netns without --join-ns");
    assert!(err.contains("--join-ns net:") && err.contains("mynet"), "the refusal says what to give: {err}");
    let out = restore(&images, &["--join-ns", "uts:/proc/self/ns/uts"]);
    job.assert_restore_failed(&out, "restore joining a kind the images have no external namespace of");
    let out = restore(&images, &["--join-ns", "net:/proc/self/ns/uts"]);
    let err = job.assert_restore_failed(&out, "restore joining a uts namespace as net");
    assert!(err.contains("not a net namespace"), "{err}");

    let out = restore(&images, &["--inherit-fd", "fd[0]:othernet"]);
    let err = job.assert_restore_failed(&out, "restore given a namespace by a key the images do not have");
    assert!(err.contains("fd[0]:othernet") && err.contains("--join-ns net:"), "{err}");

    // Given by its key on an fd of crust's, as runc gives its container's.
    let script = format!("exec {CRUST} restore -D {} -d --inherit-fd 'fd[7]:mynet' 7<{JN1}", images.display());
    let out = run_with_timeout(Command::new("sh").args(["-c", &script]), STEP);
    assert!(out.status.success(), "restore with --inherit-fd failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert_eq!(ns_ino(job.pid, "net"), ino, "the restored tree is in the namespace given by its key");
    assert_eq!(ask_inside(JN1, port, "fd"), "pong 1 fd");
    job.kill_restored();

    let join = format!("net:{JN1}");
    let out = restore(&images, &["--join-ns", &join]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert_eq!(ns_ino(job.pid, "net"), ino, "the restored tree is in the very namespace it was dumped in");
    assert_eq!(ns_ino(std::process::id() as i32, "net"), mine, "the test stayed in its own namespace");
    assert_eq!(ask_inside(JN1, port, "again"), "pong 1 again", "its listener works in the joined namespace");
    assert_eq!(ask_inside(JN1, port, "unix"), "pong 1 unix:u", "its unix pair works");
    job.kill_restored();
}

#[test]
fn a_uts_namespace_shared_with_an_outside_process_is_refused_naming_it_and_joined_through_criu_options() {
    let dir = TempDir::new("ns-join-uts");
    let images = dir.join("images");
    let mut job = Job::build("test_mm", &[]).pre_exec(own_uts).start(dir.path());
    job.ready();
    let mut outsider = Command::new("nsenter").args(["-t", &job.pid.to_string(), "-u", "sleep", "60"]).spawn().expect("nsenter");
    let outsider_pid = outsider.id() as i32;
    let ino = ns_ino(job.pid, "uts");
    poll(Duration::from_secs(10), Duration::from_millis(10), || (ns_ino(outsider_pid, "uts") == ino).then_some(())).expect("the outsider joined");
    let pid = job.pid.to_string();
    let out = crust(&dump_args(&pid, &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a tree sharing its uts namespace");
    assert!(err.contains(&format!("uts:[{ino}]")) && err.contains(&format!("process {outsider_pid} (sleep)")), "the refusal names the namespace and the outsider: {err}");
    job.line(STEP);

    // Marked external, it dumps, through criu's command line too; the
    // restore joins the outsider's namespace, named by its pid.
    let criu = dir.join("criu");
    std::os::unix::fs::symlink(CRUST, &criu).expect("linking criu to crust");
    let d = images.to_str().unwrap();
    let ext = format!("uts[{ino}]:myuts");
    let out = Command::new(&criu).args(["dump", "-D", d, "-t", &pid, "--external", &ext]).output().unwrap();
    assert!(out.status.success(), "criu dump with --external {ext}: {}", String::from_utf8_lossy(&out.stderr));
    job.reap_original();
    let out = Command::new(&criu).args(["restore", "-D", d, "-d"]).output().unwrap();
    let err = job.assert_restore_failed(&out, "criu restore of an external uts namespace without --join-ns");
    assert!(err.contains("--join-ns uts:"), "{err}");
    let join = format!("uts:{outsider_pid}");
    let out = Command::new(&criu).args(["restore", "-D", d, "-d", "--join-ns", &join]).output().unwrap();
    assert!(out.status.success(), "criu restore --join-ns {join}: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert_eq!(ns_ino(job.pid, "uts"), ino, "the restored tree is in the outsider's uts namespace");
    let lines: Vec<String> = (0..4).map(|_| job.line(STEP)).collect();
    assert_counting(&lines);
    job.kill_restored();
    let _ = outsider.kill();
    let _ = outsider.wait();
}
