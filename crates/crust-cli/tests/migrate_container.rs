//! The whole container (tests/common/container.rs: pid, mount, uts,
//! ipc, net and cgroup namespaces of its own, a counting shell, busybox
//! httpd, a veth to its host) moved from host A to host B
//! (tests/common/hosts.rs) with `crust migrate`: `--ext-mount-map auto`
//! names its bind mounts of host paths (the same paths on B), `--external
//! veth[eth0]:HOSTIF` the host end its veth gets on B. It counts on there
//! with no gap, serves through its new host end, and keeps its host name,
//! System V segment and security state; it is gone from A.
//!
//! Run: `cargo test -p crust-cli --test migrate_container` (as root).

mod common;

use std::path::Path;
use std::time::Duration;

use common::container::{command, Options};
use common::hosts::{file_lines, nspid, wait_file_line, Host, Hosts};
use common::{poll, proc_status_field, CRUST};

const WAIT: Duration = Duration::from_secs(60);

/// The numbers the container counted so far.
fn counts(out: &Path) -> Vec<u64> {
    file_lines(out).iter().filter_map(|l| l.parse().ok()).collect()
}

/// The count goes beyond `n` within a bounded time.
fn counts_past(out: &Path, n: u64) {
    let past = poll(WAIT, Duration::from_millis(20), || (counts(out).last().copied().unwrap_or(0) > n + 2).then_some(()));
    assert!(past.is_some(), "the container stopped counting at {:?}", counts(out).last());
}

/// The number the container's httpd serves as /count, fetched in `host`.
fn served(host: &Host, addr: &str) -> Option<u64> {
    // (busybox wget -T crashes: timeout(1) bounds it instead.)
    let out = host.run(&["timeout", "10", common::container::BUSYBOX, "wget", "-q", "-O", "-", &format!("http://{addr}:8080/count")]);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// What the container's root shows of itself that must be the same after the move.
fn own_state(host: &Host, test_pid: i32, host_pid: i32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{test_pid}/status")).expect("the container's status");
    let mut out: Vec<String> = status.lines().filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs") || l.starts_with("Seccomp")).map(str::to_string).collect();
    let pid = host_pid.to_string();
    out.push(host.run_ok(&["nsenter", "-t", &pid, "-u", "hostname"]).trim().to_string());
    let shm = host.run_ok(&["nsenter", "-t", &pid, "-i", "ipcs", "-m"]);
    out.extend(shm.lines().filter(|l| l.starts_with("0x")).map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")));
    out.push(nspid(test_pid).expect("NSpid").last().expect("a pid").to_string());
    out
}

#[test]
fn a_whole_container_moves_to_host_b_and_counts_on_there() {
    const NET: &str = "10.200.148";
    let hosts = Hosts::new("migrate-container");
    let sshd = hosts.start_sshd();
    let opts = Options {
        unshare: &["--uts", "--ipc", "--net", "--cgroup"],
        extra_setup: "mkdir -p $R/lib64 && mount --bind /lib64 $R/lib64\n\
                      cp /usr/bin/setpriv $R/bin/setpriv\n\
                      hostname crust-box\n\
                      ipcmk -M 8192 -p 0600 >/dev/null",
        after_pivot: "/bin/busybox httpd -f -p 8080 -h /run </dev/null >/dev/null 2>&1 &",
        exec_prefix: "/bin/setpriv --no-new-privs --inh-caps=-all --bounding-set=-sys_module,-sys_rawio,-mknod --",
        pid_ns: true,
    };
    let (program, args, _root) = command("mig", hosts.tmp(), &opts);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = hosts.tmp().join("mig.out");
    let mut unshare = hosts.a.start_writing_to(&program, &args, &out);
    wait_file_line(&out, |l| l.parse::<u64>().is_ok());
    let u = unshare.pid();
    let init: i32 = poll(WAIT, Duration::from_millis(20), || std::fs::read_to_string(format!("/proc/{u}/task/{u}/children")).ok()?.split_whitespace().next()?.parse().ok())
        .expect("unshare's child, the container's init");
    // NSpid: the test's pid, A's, the container's own (1).
    let in_a = nspid(init).filter(|v| v.len() == 3 && v[2] == 1).expect("the container's init in a pid namespace of A's")[1];
    let in_a_s = in_a.to_string();
    hosts.a.run_ok(&["ip", "link", "add", "vc-a", "type", "veth", "peer", "name", "eth0", "netns", &in_a_s]);
    hosts.a.run_ok(&["ip", "addr", "add", &format!("{NET}.1/24"), "dev", "vc-a"]);
    hosts.a.run_ok(&["ip", "link", "set", "vc-a", "up"]);
    hosts.a.run_ok(&["nsenter", "-t", &in_a_s, "-n", "sh", "-c", &format!("ip addr add {NET}.2/24 dev eth0 && ip link set eth0 up && ip link set lo up")]);
    let box_addr = format!("{NET}.2");
    assert!(poll(WAIT, Duration::from_millis(50), || served(&hosts.a, &box_addr)).is_some(), "the container serves in A");
    let before = own_state(&hosts.a, init, in_a);
    assert!(before.contains(&"NoNewPrivs:\t1".to_string()) && before.contains(&"crust-box".to_string()), "{before:?}");

    let mut cmd = hosts.a.command(CRUST);
    cmd.args(["migrate", "-t", &in_a_s, "--to", &sshd.url(), "--json", "--ext-mount-map", "auto", "--external", "veth[eth0]:vc-b"]);
    let moved = cmd.output(WAIT);
    assert!(moved.status.success(), "migrate: {}", String::from_utf8_lossy(&moved.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&moved.stdout).expect("migrate --json");
    let in_b = stats["remote"]["root"].as_i64().expect("the root's pid in B") as i32;
    assert!(unshare.wait_timeout(WAIT).is_some(), "the container is gone from A (its unshare exits)");

    // Its init there, as the test sees it: pid 1 of its own namespace, under B's init.
    let b_init = hosts.b.init_pid().to_string();
    let found = poll(WAIT, Duration::from_millis(20), || {
        common::hosts::all_pids().into_iter().find(|&p| nspid(p).is_some_and(|v| v.len() == 3 && v[1] == in_b && v[2] == 1) && proc_status_field(p, "PPid").as_deref() == Some(b_init.as_str()))
    });
    let there = found.expect("the container's init in B");
    let n = counts(&out).last().copied().unwrap_or(0);
    counts_past(&out, n);
    let all = counts(&out);
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "the count skipped or repeated across the move: {all:?}");
    assert_eq!(own_state(&hosts.b, there, in_b), before, "its state in B");
    hosts.b.run_ok(&["ip", "addr", "add", &format!("{NET}.1/24"), "dev", "vc-b"]);
    let got = poll(WAIT, Duration::from_millis(50), || served(&hosts.b, &box_addr)).expect("the container serves through its veth in B");
    assert!(got > n, "it serves its own count: {got} after {n}");
    assert!(served(&hosts.a, &box_addr).is_none(), "nothing answers in A");
}
