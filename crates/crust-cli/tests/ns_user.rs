//! User namespaces: a process alone in a user namespace of its own, with
//! maps that move its ids (0 inside is 100000 outside) and setgroups denied,
//! dumped and restored: the maps, setgroups and its ids inside and outside
//! are the same after; what crust does not restore is refused by name.
//!
//! Run: `cargo test -p crust-cli --test ns_user` (as root).

mod common;

use std::path::Path;

use common::job::*;
use common::*;

/// The holder: unshares a user namespace, waits for its maps (written by
/// the test), becomes 0 inside, says READY, and on each SIGUSR1 prints its
/// ids as it sees them.
const HOLDER: &str = "import ctypes, os, signal, sys, time\n\
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0: sys.exit('unshare')\n\
    print('UNSHARED', flush=True)\n\
    while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n\
    os.setresgid(0, 0, 0)\n\
    os.setresuid(0, 0, 0)\n\
    ids = lambda *a: print('IDS', os.getresuid(), os.getresgid(), flush=True)\n\
    signal.signal(signal.SIGUSR1, ids)\n\
    print('READY', os.getpid(), flush=True)\n\
    while True: time.sleep(1)\n";

/// What is compared before and after, as seen from outside.
fn outside(pid: i32) -> Vec<String> {
    let mut out: Vec<String> = ["uid_map", "gid_map", "setgroups"].iter().map(|f| std::fs::read_to_string(format!("/proc/{pid}/{f}")).expect("a map")).collect();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    out.extend(status.lines().filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:") || l.starts_with("Cap")).map(str::to_string));
    out
}

/// Its ids as it sees them inside.
fn inside(job: &mut Job) -> String {
    job.signal(libc::SIGUSR1);
    loop {
        let l = job.line(STEP);
        if let Some(ids) = l.strip_prefix("IDS ") {
            return ids.to_string();
        }
    }
}

#[test]
fn a_process_in_a_user_namespace_comes_back_with_its_maps_and_ids() {
    let dir = TempDir::new("ns-user");
    let flag = dir.join("mapped");
    let flag_s = flag.to_str().expect("a UTF-8 temp path");
    let mut job = Job::build("userns", &["-c", HOLDER, flag_s]).program(Path::new("/usr/bin/python3")).start(dir.path());
    assert_eq!(job.line(STEP), "UNSHARED");
    let pid = job.pid;
    std::fs::write(format!("/proc/{pid}/setgroups"), "deny").expect("setgroups");
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 100000 65536\n").expect("uid_map");
    std::fs::write(format!("/proc/{pid}/gid_map"), "0 100000 65536\n").expect("gid_map");
    std::fs::write(&flag, "").unwrap();
    assert_eq!(job.ready(), pid.to_string());
    let before = (outside(pid), inside(&mut job));
    assert!(before.0.iter().any(|l| l.starts_with("Uid:\t100000\t100000")), "0 inside is 100000 outside: {before:?}");
    assert_eq!(before.1, "(0, 0, 0) (0, 0, 0)");
    let images = dir.join("images");
    dump(pid, &images, &[]);
    job.reap_original();
    let userns = std::fs::read_dir(&images).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with("userns-")).expect("a userns image");
    let shown = crit_show(&userns);
    assert!(shown.to_string().contains("100000"), "crit reads the maps: {shown}");
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert_eq!((outside(pid), inside(&mut job)), before, "maps, setgroups and ids inside and outside");
    job.kill_restored();
}

#[test]
fn a_user_namespace_with_two_processes_is_refused_by_name() {
    let dir = TempDir::new("ns-user-refused");
    let mut job = Job::build("userns2", &["--user", "--map-root-user", "--", "/bin/sh", "-c", "sleep 1000 & echo READY $$; wait"]).program(Path::new("/usr/bin/unshare")).start(dir.path());
    let pid: i32 = job.ready().parse().expect("the shell's pid");
    let images = dir.join("images");
    let out = crust(&dump_args(&pid.to_string(), &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of two processes in a user namespace");
    assert!(err.contains("user namespace of its own") && err.contains(&format!("process {pid}")) && err.contains("not supported"), "{err}");
    assert_no_inventory(&images);
    assert_running_untraced(pid, std::time::Duration::from_secs(5));
}
