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
    let opts = Options { unshare: &["--uts", "--ipc", "--net"], extra_setup: setup, after_pivot: after, exec_prefix: prefix };
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

