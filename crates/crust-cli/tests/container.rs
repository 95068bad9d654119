//! A container with every kind of state a container has, dumped and restored
//! whole: its own mount, uts, ipc and network namespaces (a busybox root
//! file system with proc, devpts and tmpfs; a host name; a System V segment;
//! a veth to the host with an address), a tree of two processes (a counting
//! shell under no_new_privs with capabilities dropped, and an HTTP server
//! the host reaches through the veth). Everything is checked from outside
//! after the restore: the state inside is the same, the server answers, the
//! count goes on.
//!
//! Run: `cargo test -p crust-cli --test container` (as root).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use std::process::Command;
use std::time::Duration;

use common::container::{mounts, Container, Options};
use common::procstate::ProcState;
use common::job::*;
use common::*;

const HOST_IF: &str = "vh-crust-ctr1";
const HOST_ADDR: &str = "10.200.91.1/24";
const BOX_ADDR: &str = "10.200.91.2";

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn inside(pid: i32, flag: &str, cmd: &[&str]) -> String {
    let pid_s = pid.to_string();
    let mut args = vec!["nsenter", "-t", &pid_s, flag, "--"];
    args.extend(cmd);
    run(&args)
}

/// The host end of the veth, removed when the test ends however it ends.
struct HostEnd;

impl Drop for HostEnd {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", HOST_IF]).output();
    }
}

/// GET `path` from the container's server through the veth.
fn http_get(path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&format!("{BOX_ADDR}:8080").parse().unwrap(), Duration::from_secs(10)).expect("connecting to the container's server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("the server's reply");
    assert!(reply.lines().next().is_some_and(|l| l.contains(" 200 ")), "the server answers {path}: {reply}");
    reply.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string()
}

/// What is compared before and after, as seen from outside.
fn state(pid: i32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mut out: Vec<String> = status.lines().filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs") || l.starts_with("Seccomp")).map(str::to_string).collect();
    out.push(inside(pid, "-u", &["hostname"]));
    out.push(inside(pid, "-i", &["ipcs", "-m"]).lines().filter(|l| l.starts_with("0x")).map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join(";"));
    let addrs = inside(pid, "-n", &["ip", "-o", "-4", "addr", "show"]);
    out.extend(addrs.lines().map(|l| l.split_whitespace().take(4).skip(1).collect::<Vec<_>>().join(" ")));
    out.extend(mounts(pid));
    out
}

#[test]
fn a_container_with_its_namespaces_security_state_and_server_comes_back_whole() {
    let dir = TempDir::new("container");
    let images = dir.join("images");
    let _ = Command::new("ip").args(["link", "del", HOST_IF]).output();
    let setup = "mkdir -p $R/lib64 && mount --bind /lib64 $R/lib64\n\
                 cp /usr/bin/setpriv $R/bin/setpriv\n\
                 hostname crust-box\n\
                 ipcmk -M 8192 -p 0600 >/dev/null";
    let after = "/bin/busybox httpd -f -p 8080 -h /run </dev/null >/dev/null 2>&1 &";
    let prefix = "/bin/setpriv --no-new-privs --inh-caps=-all --bounding-set=-sys_module,-sys_rawio,-mknod --";
    let opts = Options { unshare: &["--uts", "--ipc", "--net"], extra_setup: setup, after_pivot: after, exec_prefix: prefix, ..Default::default() };
    let mut c = Container::start("ctr", dir.path(), &opts);
    let pid = c.job.pid;
    let _host_end = HostEnd;
    run(&["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", &pid.to_string()]);
    run(&["ip", "addr", "add", HOST_ADDR, "dev", HOST_IF]);
    run(&["ip", "link", "set", HOST_IF, "up"]);
    inside(pid, "-n", &["ip", "addr", "add", &format!("{BOX_ADDR}/24"), "dev", "eth0"]);
    inside(pid, "-n", &["ip", "link", "set", "eth0", "up"]);
    inside(pid, "-n", &["ip", "link", "set", "lo", "up"]);
    let served: u64 = poll(STEP, Duration::from_millis(50), || http_get_quiet("/count")).expect("the server answers through the veth");
    assert!(served > 0);
    let before = state(pid);
    assert!(before.iter().any(|l| l == "NoNewPrivs:\t1"), "the counter runs under no_new_privs: {before:#?}");
    assert!(before.iter().any(|l| l == "crust-box"), "{before:#?}");

    dump(pid, &images, &["--ext-mount-map", "auto"]);
    c.job.reap_original();
    let last = c.last_count();
    // The killed container's namespace, and the veth with it, go a moment later.
    let gone = || (!Command::new("ip").args(["link", "show", HOST_IF]).output().is_ok_and(|o| o.status.success())).then_some(());
    assert!(poll(STEP, Duration::from_millis(20), gone).is_some(), "the dumped container's veth went with it");
    let out = restore(&images, &["--external", &format!("veth[eth0]:{HOST_IF}")]);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    c.job.adopt_restored();
    c.assert_counts_on_from(last);
    // The host end was made again by the restore: give it its address.
    run(&["ip", "addr", "replace", HOST_ADDR, "dev", HOST_IF]);
    assert_eq!(state(pid), before, "the container's state as seen from outside");
    let served: u64 = http_get("/count").parse().expect("a number");
    assert!(served > last, "the restored server serves the restored count: {served} after {last}");
    c.job.kill_restored();
}

/// [`http_get`], None while the server is not up yet.
fn http_get_quiet(path: &str) -> Option<u64> {
    let mut s = TcpStream::connect_timeout(&format!("{BOX_ADDR}:8080").parse().ok()?, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply.split("\r\n\r\n").nth(1)?.trim().parse().ok()
}


// ---------------------------------------------------------------------------
// The whole container: in a pid namespace too, restored twice side by side,
// dumped again once restored.

/// The setup of the test container, for [`full_container`].
fn full_setup() -> String {
    format!(
        "mkdir -p $R/lib64 && mount --bind /lib64 $R/lib64\n\
         cp /usr/bin/setpriv $R/bin/setpriv\n\
         cp {} $R/bin/seccomp-exec\n\
         hostname crust-box\n\
         ipcmk -M 8192 -p 0600 >/dev/null",
        workload_path("seccomp_exec").display()
    )
}
const FULL_AFTER: &str = "/bin/busybox httpd -f -p 8080 -h /run </dev/null >/dev/null 2>&1 &";
/// no_new_privs, capabilities dropped and a seccomp filter, in that order
/// (a filter needs no_new_privs without CAP_SYS_ADMIN).
const FULL_PREFIX: &str = "/bin/setpriv --no-new-privs --inh-caps=-all --bounding-set=-sys_module,-sys_rawio,-mknod -- /bin/seccomp-exec";

/// The test container: every namespace but the user's (pid, mount,
/// uts, ipc, net, cgroup), a shell counting, busybox httpd serving /run,
/// no_new_privs, capabilities dropped, a seccomp filter, a System V
/// segment, a host name.
fn full_container(name: &str, dir: &std::path::Path) -> Container {
    let setup = full_setup();
    let opts = Options {
        unshare: &["--uts", "--ipc", "--net", "--cgroup"],
        extra_setup: &setup,
        after_pivot: FULL_AFTER,
        exec_prefix: FULL_PREFIX,
        pid_ns: true,
    };
    Container::start(name, dir, &opts)
}

/// A veth to the container `pid`'s network: `host` on the host side (with
/// `net`.1/24), eth0 inside (`net`.2/24), both up.
fn wire(pid: i32, host: &str, net: &str) {
    run(&["ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &pid.to_string()]);
    run(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", host]);
    run(&["ip", "link", "set", host, "up"]);
    inside(pid, "-n", &["ip", "addr", "add", &format!("{net}.2/24"), "dev", "eth0"]);
    inside(pid, "-n", &["ip", "link", "set", "eth0", "up"]);
    inside(pid, "-n", &["ip", "link", "set", "lo", "up"]);
}

/// Host devices and network namespaces of a test, removed when it ends.
struct Cleanup(Vec<&'static str>, Vec<&'static str>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for l in &self.0 {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        for n in &self.1 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// The number the container's httpd serves as /count, GET through `netns`'s
/// network ("" for the host's) from `addr`.
fn served_count(netns: &str, addr: &str) -> Option<u64> {
    let url = format!("http://{addr}:8080/count");
    // (busybox wget -T crashes: timeout(1) bounds it instead.)
    let wget = ["timeout", "10", common::container::BUSYBOX, "wget", "-q", "-O", "-", &url];
    let out = match netns {
        "" => Command::new(wget[0]).args(&wget[1..]).output(),
        n => Command::new("ip").args(["netns", "exec", n]).args(wget).output(),
    };
    String::from_utf8_lossy(&out.ok()?.stdout).trim().parse().ok()
}

/// What may differ in /proc between a container and its copy: the ids of
/// the mounts (each copy's are new), the counter's place in its output (it
/// counts on), the inode of the FIFO it waits on (in a tmpfs made again
/// from the images: new inodes).
const COPY_MAY_DIFFER: &[&str] = &["mnt_id", "1 fdinfo 1 pos", "1 fdinfo 2 pos", "1 fdinfo 3 ino"];

/// What a copy shows of itself, from outside ([`state`]), and its /proc as
/// its own pid namespace shows it.
fn copy_state(pid: i32) -> (Vec<String>, ProcState) {
    (state(pid), ProcState::of_tree_in(&format!("/proc/{pid}/root/proc"), 1))
}

fn ns_inode(pid: i32, ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}")).unwrap_or_else(|e| panic!("/proc/{pid}/ns/{ns}: {e}")).ino()
}

#[test]
fn a_whole_container_in_its_own_pid_namespace_runs_twice_side_by_side_and_is_dumped_again() {
    const HOST_A: &str = "vh-crust-c2a";
    const HOST_B: &str = "vh-crust-c2b";
    const SIDE: &str = "crust-ctr2-side";
    const NET: &str = "10.200.147";
    let box_addr = format!("{NET}.2");
    let dir = TempDir::new("container-pidns");
    let images = dir.join("images");
    let _cleanup = Cleanup(vec![HOST_A, HOST_B], vec![SIDE]);
    // What a run killed midway left.
    drop(Cleanup(vec![HOST_A, HOST_B], vec![SIDE]));
    let mut c = full_container("full", dir.path());
    assert_ne!(ns_inode(c.init, "pid"), ns_inode(std::process::id() as i32, "pid"), "the container has a pid namespace of its own");
    wire(c.init, HOST_A, NET);
    let served = poll(STEP, Duration::from_millis(50), || served_count("", &box_addr)).expect("the server answers through the veth");
    assert!(served > 0);
    let (before, procs) = copy_state(c.init);
    assert!(before.iter().any(|l| l == "NoNewPrivs:\t1") && before.iter().any(|l| l == "crust-box"), "{before:#?}");
    assert!(before.iter().any(|l| l == "Seccomp:\t2") && before.iter().any(|l| l == "Seccomp_filters:\t1"), "the init has its seccomp filter: {before:#?}");
    assert!(procs.get("1 stat ppid") == Some("0") && procs.get("1 stat session") == Some("1"), "the init of its own pid namespace, a session leader");

    dump(c.init, &images, &["--ext-mount-map", "auto"]);
    c.reap_after_dump();
    let last = c.last_count();
    let gone = || (!Command::new("ip").args(["link", "show", HOST_A]).output().is_ok_and(|o| o.status.success())).then_some(());
    assert!(poll(STEP, Duration::from_millis(20), gone).is_some(), "the dumped container's veth went with it");

    // The first copy, its veth's host end named as before.
    let mut first = c.restore_copy(&images, &["--external", &format!("veth[eth0]:{HOST_A}")]);
    c.assert_counts_on_from(last);
    run(&["ip", "addr", "replace", &format!("{NET}.1/24"), "dev", HOST_A]);
    let (after, after_procs) = copy_state(first.pid);
    assert_eq!(after, before, "the first copy's state as seen from outside");
    procs.assert_same(&after_procs, COPY_MAY_DIFFER);
    let served = served_count("", &box_addr).expect("the first copy serves through its veth");
    assert!(served > last, "it serves its own count: {served} after {last}");

    // The second copy from the same images beside it: its veth's host end
    // is another one, which the test moves to a network of its own (the
    // copy has the same address inside: a segment of its own, as two
    // copies of one container on one host get from their engine).
    let mut second = c.restore_copy(&images, &["--external", &format!("veth[eth0]:{HOST_B}")]);
    assert_ne!(second.pid, first.pid);
    for ns in ["pid", "mnt", "uts", "ipc", "net", "cgroup"] {
        assert_ne!(ns_inode(second.pid, ns), ns_inode(first.pid, ns), "each copy has a {ns} namespace of its own");
    }
    run(&["ip", "netns", "add", SIDE]);
    run(&["ip", "link", "set", HOST_B, "netns", SIDE]);
    run(&["ip", "-n", SIDE, "addr", "add", &format!("{NET}.1/24"), "dev", HOST_B]);
    run(&["ip", "-n", SIDE, "link", "set", HOST_B, "up"]);
    let (after, after_procs) = copy_state(second.pid);
    assert_eq!(after, before, "the second copy's state as seen from outside");
    procs.assert_same(&after_procs, COPY_MAY_DIFFER);
    second.assert_counts_past(last);
    let served = poll(STEP, Duration::from_millis(50), || served_count(SIDE, &box_addr)).expect("the second copy serves through its veth");
    assert!(served > last, "{served} after {last}");
    first.assert_counts_past(second.count());
    assert!(served_count("", &box_addr).is_some(), "the first copy serves on");
    second.end();

    // The first copy, a tree crust restored, dumped again and restored
    // again, its images on another mount than the root file system's (the
    // restore reads them from inside the tree's new mount namespace).
    let shm = tempfile::Builder::new().prefix("crust-test-container-again-").tempdir_in("/dev/shm").expect("a temp dir in /dev/shm");
    let again = shm.path().join("images");
    c.job.drain();
    dump(first.pid, &again, &["--ext-mount-map", "auto"]);
    first.end();
    let last = c.last_count();
    assert!(poll(STEP, Duration::from_millis(20), gone).is_some(), "the dumped copy's veth went with it");
    let third = c.restore_copy(&again, &["--external", &format!("veth[eth0]:{HOST_A}")]);
    c.assert_counts_on_from(last);
    run(&["ip", "addr", "replace", &format!("{NET}.1/24"), "dev", HOST_A]);
    let (after, after_procs) = copy_state(third.pid);
    assert_eq!(after, before, "the copy restored twice: its state as seen from outside");
    procs.assert_same(&after_procs, COPY_MAY_DIFFER);
    let served = served_count("", &box_addr).expect("the copy restored twice serves through its veth");
    assert!(served > last, "{served} after {last}");
}
