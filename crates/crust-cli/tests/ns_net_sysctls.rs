//! The sysctls of a tree's own network namespace beyond CRIU's lists
//! (net.ipv4.tcp_*, ip_local_port_range, ping_group_range,
//! net.core.somaxconn...): those the tree changed are saved and written back
//! at restore; a changed neighbour table setting is refused by name, the
//! tree running on.
//!
//! Run: `cargo test -p crust-cli --test ns_net_sysctls` (as root).

mod common;

use std::process::Command;

use common::job::*;
use common::*;

/// In the new process before exec: a network namespace of its own.
fn own_net() -> std::io::Result<()> {
    // SAFETY: one syscall.
    match unsafe { libc::unshare(libc::CLONE_NEWNET) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// `sysctl` run in `pid`'s network namespace; it must succeed. Its stdout.
fn sysctl(pid: i32, args: &[&str]) -> String {
    let pid_s = pid.to_string();
    let mut cmd = vec!["nsenter", "-t", &pid_s, "-n", "sysctl"];
    cmd.extend(args);
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().expect("nsenter");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What the test sets, and one it leaves as a new namespace has it.
const CHANGED: &[(&str, &str)] = &[
    ("net.ipv4.tcp_keepalive_time", "1234"),
    ("net.ipv4.ip_local_port_range", "20000\t20999"),
    ("net.ipv4.ping_group_range", "0\t0"),
    ("net.core.somaxconn", "512"),
    ("net.ipv4.tcp_syn_retries", "3"),
    ("net.ipv6.route.gc_interval", "60"),
];
const SHOWN: &[&str] = &["net.ipv4.tcp_keepalive_time", "net.ipv4.ip_local_port_range", "net.ipv4.ping_group_range", "net.core.somaxconn", "net.ipv4.tcp_syn_retries", "net.ipv6.route.gc_interval", "net.ipv4.tcp_fin_timeout"];

#[test]
fn sysctls_a_tree_changed_in_its_network_namespace_come_back() {
    let dir = TempDir::new("ns-net-sysctls");
    let images = dir.join("images");
    let mut job = Job::build("test_mm", &[]).pre_exec(own_net).start(dir.path());
    job.ready();
    let defaults = sysctl(job.pid, &["-n", "net.ipv4.tcp_fin_timeout"]);
    let sets: Vec<String> = CHANGED.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec!["-q", "-w"];
    args.extend(sets.iter().map(String::as_str));
    sysctl(job.pid, &args);
    let mut shown = vec!["-n"];
    shown.extend(SHOWN);
    let before = sysctl(job.pid, &shown);
    let want: Vec<&str> = CHANGED.iter().map(|(_, v)| *v).chain([defaults.as_str()]).collect();
    assert_eq!(before, want.join("\n"), "the settings took");
    dump(job.pid, &images, &[]);
    job.reap_original();
    let netns = std::fs::read_dir(&images).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("netns-")).expect("netns-ID.img").path();
    crit_show(&netns);
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert_eq!(sysctl(job.pid, &shown), before, "the restored namespace's settings");
    job.kill_restored();
}

#[test]
fn a_changed_neighbour_setting_is_refused_by_name_and_the_tree_runs_on() {
    let dir = TempDir::new("ns-net-neigh");
    let images = dir.join("images");
    let mut job = Job::build("test_mm", &[]).pre_exec(own_net).start(dir.path());
    job.ready();
    sysctl(job.pid, &["-q", "-w", "net.ipv4.neigh.lo.mcast_solicit=5"]);
    let out = crust(&dump_args(&job.pid.to_string(), &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a namespace with a changed neighbour setting");
    assert!(err.contains("net.ipv4.neigh.lo.mcast_solicit") && err.contains("\"5\""), "the refusal names the setting and its value: {err}");
    assert_no_inventory(&images);
    job.drain();
    let next = job.line(STEP);
    assert!(next.starts_with('t'), "the tree counts on: {next}");
}
