//! Migration between two hosts on one machine (tests/common/hosts.rs): each
//! host has its own network, pid, mount and uts namespaces, joined by a veth.
//! A tree is moved from A to B and back over ssh:// and tcp://; it must run in
//! B's namespaces, count on, keep its memory, and be gone from A. When the
//! destination refuses, the key is wrong or the connection is cut, the tree
//! runs on in A and nothing of it is left in B.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::hosts::{file_lines as lines, wait_file_line as wait_line, Host, HostChild, Hosts};
use common::{poll, proc_stat, workload_path, CRUST};

const WAIT: Duration = Duration::from_secs(60);

/// A workload started in `host`, in a session of its own, writing to `out`.
fn start(host: &Host, name: &str, args: &[&str], out: &Path) -> HostChild {
    host.start_writing_to(&workload_path(name), args, out)
}

/// The last t1 counter in a test_mm output file.
fn last_t1(out: &Path) -> i64 {
    lines(out).iter().filter_map(|l| l.strip_prefix("t1 ")?.parse().ok()).next_back().unwrap_or(-1)
}

/// t1 goes beyond `n` (the tree runs), within a bounded time.
fn counts_past(out: &Path, n: i64) {
    let past = poll(WAIT, Duration::from_millis(20), || (last_t1(out) > n + 1).then_some(()));
    assert!(past.is_some(), "test_mm stopped counting at {}", last_t1(out));
}

/// Each of t1's counters is the previous one plus one, across the moves.
fn assert_no_gap(out: &Path) {
    let t1: Vec<i64> = lines(out).iter().filter_map(|l| l.strip_prefix("t1 ")?.parse().ok()).collect();
    assert!(t1.windows(2).all(|w| w[1] == w[0] + 1), "t1 skipped or repeated: {t1:?}");
}

/// The live (not zombie) process with `host_pid` in `host`, as a pid of the
/// test's namespace.
fn live_in(host: &Host, host_pid: i32) -> Option<i32> {
    host.processes().into_iter().find(|&p| host.pid_in_host(p) == Some(host_pid) && !is_zombie(p))
}

/// Whether the process with `host_pid` is gone from `host` within a bounded time.
fn gone_from(host: &Host, host_pid: i32) -> bool {
    poll(WAIT, Duration::from_millis(20), || live_in(host, host_pid).is_none().then_some(())).is_some()
}

fn is_zombie(pid: i32) -> bool {
    proc_stat(pid).is_none_or(|s| s.state == 'Z')
}

/// The process with `host_pid` in `host`, as a pid of the test's namespace.
fn running_in(host: &Host, host_pid: i32) -> i32 {
    let found = poll(WAIT, Duration::from_millis(20), || live_in(host, host_pid));
    found.unwrap_or_else(|| panic!("no process {host_pid} in host {}", host.label()))
}

/// `crust migrate` run in `from`, in `cwd` if given, its stats images kept in
/// `stats_dir` if given (-D); its output.
fn migrate_in(
    from: &Host,
    host_pid: i32,
    to: &str,
    key: Option<&Path>,
    stats_dir: Option<&Path>,
    cwd: Option<&Path>,
) -> std::process::Output {
    let mut cmd = from.command(CRUST);
    cmd.args(["migrate", "-t", &host_pid.to_string(), "--to", to, "--json"]);
    if let Some(d) = stats_dir {
        cmd.arg("-D").arg(d);
    }
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    if let Some(c) = cwd {
        cmd.current_dir(c);
    }
    cmd.output(WAIT)
}

/// `crust migrate` run in `from`, its stats images kept in `stats_dir`; its output.
fn migrate_keeping(from: &Host, host_pid: i32, to: &str, key: Option<&Path>, stats_dir: &Path) -> std::process::Output {
    migrate_in(from, host_pid, to, key, Some(stats_dir), None)
}

/// A migration expected to fail: it must keep no stats.
fn migrate(from: &Host, host_pid: i32, to: &str, key: Option<&Path>) -> std::process::Output {
    let tmp = tempfile::Builder::new().prefix("crust-test-failed-migration-").tempdir().expect("a temp dir");
    let stats_dir = tmp.path().join("stats");
    let out = migrate_keeping(from, host_pid, to, key, &stats_dir);
    assert!(!stats_dir.join("stats-dump").exists(), "a failed migration kept stats");
    out
}

/// A migration expected to succeed. Its stats are printed and kept as images
/// crit decodes, with the same numbers.
fn migrate_ok(from: &Host, host_pid: i32, to: &str, key: Option<&Path>, stats_dir: &Path) -> serde_json::Value {
    let out = migrate_keeping(from, host_pid, to, key, stats_dir);
    assert!(out.status.success(), "migrate to {to} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("migrate --json");
    assert_eq!(stats["remote"]["root"].as_i64(), Some(host_pid as i64), "same pid over there: {stats}");
    assert!(stats["bytes_sent"].as_u64().unwrap() > 0);
    assert!(stats["frozen_time_us"].as_u64().unwrap() > 0);
    assert!(stats["transfer_time_us"].as_u64().unwrap() > 0, "{stats}");
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stats_dir.join("stats-migrate.json")).expect("stats-migrate.json")).unwrap();
    assert_eq!(kept, stats, "stats-migrate.json holds what was printed");
    common::assert_images_dir_permissions(stats_dir);
    let dump = &common::crit_show(&stats_dir.join("stats-dump"))["entries"][0]["dump"];
    assert_eq!(common::num(&dump["frozen_time"]), stats["dump"]["frozen_time_us"].as_u64().unwrap() as u32 as u64, "{dump}");
    assert_eq!(common::num(&dump["pages_written"]), stats["dump"]["pages_written"].as_u64().unwrap(), "{dump}");
    let restore = &common::crit_show(&stats_dir.join("stats-restore"))["entries"][0]["restore"];
    assert_eq!(common::num(&restore["pages_restored"]), stats["remote"]["stats"]["pages_restored"].as_u64().unwrap(), "{restore}");
    stats
}

/// A key file for crust serve and migrate.
fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![byte; 32]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// `crust serve` in `host`, its log in a file.
fn serve(host: &Host, key: &Path, workdir: &Path, log: &Path) -> HostChild {
    host.start_crust_serve(Path::new(CRUST), 7070, key, workdir, log)
}

fn session_dirs(workdir: &Path) -> Vec<String> {
    std::fs::read_dir(workdir)
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default()
}

#[test]
fn test_mm_goes_to_b_over_ssh_and_back_over_tcp() {
    let hosts = Hosts::new("migrate-mm");
    let sshd = hosts.start_sshd();
    let out = hosts.tmp().join("test_mm.out");
    let job = start(&hosts.a, "test_mm", &[], &out);
    let pid = job.host_pid();
    wait_line(&out, |l| l == "t1 2");

    let stats = migrate_ok(&hosts.a, pid, &sshd.url(), None, &hosts.tmp().join("stats-a-to-b"));
    let in_b = running_in(&hosts.b, pid);
    assert_eq!(common::hosts::ns_inode(in_b, "pid"), Some(hosts.b.pid_ns_inode()), "runs in B's pid namespace");
    assert_eq!(common::hosts::ns_inode(in_b, "net"), Some(hosts.b.net_ns_inode()), "and in B's network");
    assert!(gone_from(&hosts.a, pid), "gone from A");
    let n = last_t1(&out);
    counts_past(&out, n);
    assert!(stats["remote"]["stats"]["threads"].as_u64() == Some(3), "{stats}");

    // Back to A, over tcp:// to a crust serve there.
    let key = key_file(hosts.tmp(), "key", 0x5a);
    let workdir = hosts.tmp().join("serve-a");
    let _serve = serve(&hosts.a, &key, &workdir, &hosts.tmp().join("serve-a.log"));
    migrate_ok(&hosts.b, pid, &format!("tcp://{}:7070", hosts.a.ip()), Some(&key), &hosts.tmp().join("stats-b-to-a"));
    let in_a = running_in(&hosts.a, pid);
    assert_eq!(common::hosts::ns_inode(in_a, "pid"), Some(hosts.a.pid_ns_inode()));
    assert!(gone_from(&hosts.b, pid), "gone from B");
    let n = last_t1(&out);
    counts_past(&out, n);
    assert_no_gap(&out);
    assert!(session_dirs(&workdir).is_empty(), "serve keeps no images: {:?}", session_dirs(&workdir));
    // SAFETY: the migrated process belongs to this test.
    unsafe { libc::kill(in_a, libc::SIGKILL) };
}

#[test]
fn memory_of_256_mib_goes_over_ssh_and_back_over_tcp_intact() {
    let hosts = Hosts::new("migrate-big");
    let sshd = hosts.start_sshd();
    let key = key_file(hosts.tmp(), "key", 0x33);
    let workdir = hosts.tmp().join("serve-a");
    let _serve = serve(&hosts.a, &key, &workdir, &hosts.tmp().join("serve-a.log"));
    let out = hosts.tmp().join("bigmem.out");
    let job = start(&hosts.a, "bigmem", &["256"], &out);
    let pid = job.host_pid();
    wait_line(&out, |l| l.starts_with("READY"));

    let pages = |stats: &serde_json::Value| stats["remote"]["stats"]["pages_restored"].as_u64().unwrap();
    let stats = migrate_ok(&hosts.a, pid, &sshd.url(), None, &hosts.tmp().join("stats-a-to-b"));
    assert!(stats["bytes_sent"].as_u64().unwrap() >= 256 << 20, "{stats}");
    assert!(pages(&stats) >= 65536, "{stats}");
    running_in(&hosts.b, pid);
    assert!(gone_from(&hosts.a, pid));
    let stats = migrate_ok(&hosts.b, pid, &format!("tcp://{}:7070", hosts.a.ip()), Some(&key), &hosts.tmp().join("stats-b-to-a"));
    assert!(stats["bytes_sent"].as_u64().unwrap() >= 256 << 20, "{stats}");
    assert!(pages(&stats) >= 65536, "{stats}");
    let in_a = running_in(&hosts.a, pid);
    assert!(gone_from(&hosts.b, pid));
    // SAFETY: our migrated process.
    unsafe { libc::kill(in_a, libc::SIGUSR1) };
    let verdict = wait_line(&out, |l| l == "OK" || l.starts_with("FAIL"));
    assert_eq!(verdict, "OK", "the memory checksum after two moves");
}

#[test]
fn refusals_wrong_key_and_cut_connections_leave_the_tree_in_a_and_nothing_in_b() {
    let hosts = Hosts::new("migrate-fail");
    let sshd = hosts.start_sshd();
    let key = key_file(hosts.tmp(), "key", 0x11);
    let wrong = key_file(hosts.tmp(), "wrong", 0x22);
    let workdir = hosts.tmp().join("serve-b");
    let serve_log = hosts.tmp().join("serve-b.log");
    let mut serve_b = serve(&hosts.b, &key, &workdir, &serve_log);
    let out = hosts.tmp().join("test_mm.out");
    let job = start(&hosts.a, "test_mm", &[], &out);
    let pid = job.host_pid();
    wait_line(&out, |l| l == "t1 1");
    let still_in_a = |what: &str| {
        assert!(live_in(&hosts.a, pid).is_some(), "{what}: the tree left A");
        let n = last_t1(&out);
        counts_past(&out, n);
        let of_tree = |p: i32| common::hosts::cmdline(p).contains("test_mm");
        assert!(!hosts.b.processes().into_iter().any(of_tree), "{what}: something of the tree is in B");
        assert!(session_dirs(&workdir).is_empty(), "{what}: images left in B: {:?}", session_dirs(&workdir));
        // Images sent over ssh go to /var/tmp/crust-migrate/session-*; other
        // tests may be migrating at the same moment, so wait for none to remain.
        let leftovers = || session_dirs(Path::new("/var/tmp/crust-migrate"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !leftovers().is_empty() {
            assert!(Instant::now() < deadline, "{what}: ssh images left: {:?}", leftovers());
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // Wrong key: refused, logged, nothing restored.
    let o = migrate(&hosts.a, pid, &format!("tcp://{}:7070", hosts.b.ip()), Some(&wrong));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("authentication failed"), "{}", String::from_utf8_lossy(&o.stderr));
    wait_line(&serve_log, |l| l.contains("refused"));
    still_in_a("wrong key");

    // The destination refuses in preflight: the pid is taken in B.
    hosts.b.set_last_pid(pid - 1);
    let squatter = hosts.b.spawn(&["sleep", "1000"]);
    assert_eq!(squatter.host_pid(), pid, "the test needs pid {pid} taken in B");
    for to in [sshd.url(), format!("tcp://{}:7070", hosts.b.ip())] {
        let o = migrate(&hosts.a, pid, &to, Some(&key));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && err.contains(&format!("pid {pid} is taken")), "{to}: {err}");
        still_in_a(&format!("pid taken, {to}"));
    }
    drop(squatter);

    // A file the tree needs is missing in B (hidden by a mount in B's namespace).
    let data_dir = hosts.tmp().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let file = data_dir.join("file");
    common::write_pattern_file(&file, 300_000, 9);
    let mem_out = hosts.tmp().join("memory.out");
    let mem = start(&hosts.a, "memory", &[file.to_str().unwrap()], &mem_out);
    wait_line(&mem_out, |l| l.starts_with("READY"));
    hosts.b.run_ok(&["mount", "-t", "tmpfs", "none", data_dir.to_str().unwrap()]);
    let o = migrate(&hosts.a, mem.host_pid(), &format!("tcp://{}:7070", hosts.b.ip()), Some(&key));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && err.contains(file.to_str().unwrap()) && err.contains("missing"), "{err}");
    still_in_a("file missing");
    // SAFETY: our workload.
    unsafe { libc::kill(mem.pid(), libc::SIGUSR1) };
    assert_eq!(wait_line(&mem_out, |l| l == "OK" || l.starts_with("FAIL")), "OK", "memory intact after the refused move");

    // The connection is cut mid-transfer: B's receiving crust dies.
    let big_out = hosts.tmp().join("bigmem.out");
    let big = start(&hosts.a, "bigmem", &["512"], &big_out);
    wait_line(&big_out, |l| l.starts_with("READY"));
    let mut cmd = hosts.a.command(CRUST);
    cmd.args(["migrate", "-t", &big.host_pid().to_string(), "--to", &format!("tcp://{}:7070", hosts.b.ip()), "--key"])
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut migrating = cmd.spawn();
    let deadline = Instant::now() + WAIT;
    while !session_dirs(&workdir).iter().any(|s| std::fs::read_dir(workdir.join(s)).map(|d| d.count() > 3).unwrap_or(false)) {
        assert!(Instant::now() < deadline, "the transfer never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The agent and its connection handler die: the connection is cut.
    serve_b.kill();
    for p in hosts.b.processes() {
        if common::hosts::cmdline(p).contains(" serve ") {
            // SAFETY: a crust serve of this test's host B.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    let status = migrating.wait_timeout(WAIT).expect("migrate ends after the cut");
    assert!(!status.success(), "a cut migration must fail");
    let deadline = Instant::now() + WAIT;
    // A new serve cleans up what the killed one left.
    let _serve_again = serve(&hosts.b, &key, &workdir, &hosts.tmp().join("serve-b2.log"));
    while !session_dirs(&workdir).is_empty() {
        assert!(Instant::now() < deadline, "session left after the cut");
        std::thread::sleep(Duration::from_millis(20));
    }
    still_in_a("connection cut");
    // SAFETY: our workload.
    unsafe { libc::kill(big.pid(), libc::SIGUSR1) };
    assert_eq!(wait_line(&big_out, |l| l == "OK" || l.starts_with("FAIL")), "OK", "bigmem intact after the cut");
}

#[test]
fn serve_turns_away_connections_beyond_max_sessions() {
    let hosts = Hosts::new("migrate-busy");
    let key = key_file(hosts.tmp(), "key", 0x44);
    let workdir = hosts.tmp().join("serve-b");
    let log = hosts.tmp().join("serve-b.log");
    let _serve = hosts.b.start_crust_serve_with(Path::new(CRUST), 7070, &key, &workdir, &log, &["--max-sessions", "1"]);
    let out = hosts.tmp().join("test_mm.out");
    let job = start(&hosts.a, "test_mm", &[], &out);
    let pid = job.host_pid();
    wait_line(&out, |l| l == "t1 1");
    let to = format!("tcp://{}:7070", hosts.b.ip());

    // A connection that never says a word holds the only session.
    let idle = hosts.a.connect((hosts.b.ip(), 7070).into());
    let o = migrate(&hosts.a, pid, &to, Some(&key));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && err.contains("busy"), "{err}");
    wait_line(&log, |l| l.contains("turned away"));
    assert!(live_in(&hosts.a, pid).is_some(), "turned away: the tree runs on in A");
    let n = last_t1(&out);
    counts_past(&out, n);

    // A peer gets a few seconds to prove the key, not more: the idle
    // connection, still open, loses its session, and the migration gets it.
    // Its stats go into a directory that exists, which keeps its mode.
    let stats_dir = hosts.tmp().join("stats");
    std::fs::create_dir(&stats_dir).unwrap();
    std::fs::set_permissions(&stats_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let o = migrate_keeping(&hosts.a, pid, &to, Some(&key), &stats_dir);
        if o.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains("busy") && Instant::now() < deadline, "{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
    let in_b = running_in(&hosts.b, pid);
    assert!(gone_from(&hosts.a, pid));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&stats_dir), 0o755, "an existing stats directory keeps its mode");
    assert_eq!(mode(&stats_dir.join("stats-dump")), 0o600);
    // SAFETY: the migrated process belongs to this test.
    unsafe { libc::kill(in_b, libc::SIGKILL) };
}

#[test]
fn shared_memory_of_a_parent_and_child_moves_over_tcp_still_shared() {
    let hosts = Hosts::new("migrate-shm");
    let key = key_file(hosts.tmp(), "key", 0x66);
    let workdir = hosts.tmp().join("serve-b");
    let _serve = serve(&hosts.b, &key, &workdir, &hosts.tmp().join("serve-b.log"));
    let out = hosts.tmp().join("sharedmem.out");
    let job = start(&hosts.a, "sharedmem", &[], &out);
    let pid = job.host_pid();
    wait_line(&out, |l| l.starts_with("READY"));
    migrate_ok(&hosts.a, pid, &format!("tcp://{}:7070", hosts.b.ip()), Some(&key), &hosts.tmp().join("stats"));
    let in_b = running_in(&hosts.b, pid);
    assert!(gone_from(&hosts.a, pid));
    // SAFETY: our migrated process.
    unsafe { libc::kill(in_b, libc::SIGUSR1) };
    let verdict = wait_line(&out, |l| l == "OK" || l.starts_with("FAIL"));
    assert_eq!(verdict, "OK", "contents, and sharing with the child, after the move");
    assert!(session_dirs(&workdir).is_empty(), "nothing left in B's work dir");
}

#[test]
fn a_pre_forking_tree_moves_over_ssh_with_its_memory_still_shared() {
    let hosts = Hosts::new("migrate-prefork");
    let sshd = hosts.start_sshd();
    let out = hosts.tmp().join("prefork.out");
    let job = start(&hosts.a, "prefork", &["64"], &out);
    let pid = job.host_pid();
    let ready = wait_line(&out, |l| l.starts_with("READY"));
    let host_pids: Vec<i32> = std::iter::once(pid).chain(common::field_list(&ready, "children").into_iter().map(|p| p as i32)).collect();
    let untouched = common::field_list(&ready, "untouched")[0];
    let in_a: Vec<i32> = host_pids.iter().map(|&p| running_in(&hosts.a, p)).collect();
    let before = common::tree_memory(&in_a);
    let stats = migrate_ok(&hosts.a, pid, &sshd.url(), None, &hosts.tmp().join("stats"));
    let in_b: Vec<i32> = host_pids.iter().map(|&p| running_in(&hosts.b, p)).collect();
    let after = common::tree_memory(&in_b);
    assert!(common::within(after.0, before.0, 10), "Pss total {} KiB in B, {} KiB in A", after.0, before.0);
    let frame = common::page_frame(in_b[0], untouched);
    for &c in &in_b[1..] {
        assert_eq!(common::page_frame(c, untouched), frame, "the page no one wrote is one page in B");
    }
    let skipped = stats["remote"]["stats"]["pages_skipped_cow"].as_u64().unwrap();
    assert!(skipped >= 4 * (16384 - 20), "the workers' heaps stay shared: {stats}");
    // SAFETY: our migrated process.
    unsafe { libc::kill(in_b[0], libc::SIGUSR1) };
    let verdict = wait_line(&out, |l| l == "OK" || l.starts_with("FAIL"));
    assert_eq!(verdict, "OK", "every worker's heap after the move");
}

#[test]
fn stats_are_written_only_where_dash_d_says() {
    let hosts = Hosts::new("migrate-stats");
    let key = key_file(hosts.tmp(), "key", 0x77);
    let _serve_a = serve(&hosts.a, &key, &hosts.tmp().join("serve-a"), &hosts.tmp().join("serve-a.log"));
    let _serve_b = serve(&hosts.b, &key, &hosts.tmp().join("serve-b"), &hosts.tmp().join("serve-b.log"));
    let out = hosts.tmp().join("test_mm.out");
    let job = start(&hosts.a, "test_mm", &[], &out);
    let pid = job.host_pid();
    wait_line(&out, |l| l == "t1 1");
    let cwd = hosts.tmp().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let names = |dir: &Path| -> Vec<String> {
        let mut n: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    };
    let in_cwd = || names(&cwd);

    // Without -D: the move succeeds and writes no stats, in its cwd or elsewhere.
    let o = migrate_in(&hosts.a, pid, &format!("tcp://{}:7070", hosts.b.ip()), Some(&key), None, Some(&cwd));
    assert!(o.status.success(), "migrate without -D: {}", String::from_utf8_lossy(&o.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).expect("migrate --json");
    assert_eq!(printed["remote"]["root"].as_i64(), Some(pid as i64), "{printed}");
    running_in(&hosts.b, pid);
    assert!(gone_from(&hosts.a, pid));
    assert!(in_cwd().is_empty(), "a migrate without -D left files in its cwd: {:?}", in_cwd());

    // With -D: the stats are kept there, and still nothing in the cwd.
    let stats_dir = hosts.tmp().join("stats");
    let o = migrate_in(&hosts.b, pid, &format!("tcp://{}:7070", hosts.a.ip()), Some(&key), Some(&stats_dir), Some(&cwd));
    assert!(o.status.success(), "migrate -D: {}", String::from_utf8_lossy(&o.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).expect("migrate --json");
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stats_dir.join("stats-migrate.json")).expect("stats-migrate.json")).unwrap();
    assert_eq!(kept, printed);
    assert_eq!(names(&stats_dir), ["stats-dump", "stats-migrate.json", "stats-restore"]);
    common::assert_images_dir_permissions(&stats_dir);
    assert!(in_cwd().is_empty(), "a migrate with -D left files in its cwd: {:?}", in_cwd());
    let in_a = running_in(&hosts.a, pid);
    assert!(gone_from(&hosts.b, pid));
    // SAFETY: the migrated process belongs to this test.
    unsafe { libc::kill(in_a, libc::SIGKILL) };
}
