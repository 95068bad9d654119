//! A tree in an ipc namespace of its own: its System V segments (attached
//! or not), semaphore sets, message queues and POSIX message queues come
//! back with their ids, keys, modes and contents; a segment of another
//! namespace attached by the tree is refused, and the tree runs on.
//!
//! Run: `cargo test -p crust-cli --test ns_ipc` (as root).

mod common;

use std::path::Path;
use std::process::Command;

use common::job::*;
use common::procstate::ProcState;
use common::*;

/// In the new process before exec: an ipc namespace of its own.
fn own_ipc() -> std::io::Result<()> {
    // SAFETY: one syscall.
    match unsafe { libc::unshare(libc::CLONE_NEWIPC) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn ns_inode(pid: impl std::fmt::Display) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/ipc")).map(|m| m.ino()).unwrap_or_else(|e| panic!("/proc/{pid}/ns/ipc: {e}"))
}

/// `ipcs ARG` inside `pid`'s ipc namespace.
fn ipcs(pid: i32, arg: &str) -> String {
    let out = Command::new("nsenter").arg("-t").arg(pid.to_string()).args(["-i", "--", "ipcs", arg]).output().expect("running nsenter");
    assert!(out.status.success(), "nsenter ipcs {arg} in {pid}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What ipcs shows of every kind, in `pid`'s namespace.
fn ipcs_all(pid: i32) -> Vec<String> {
    ["-m", "-s", "-q"].iter().map(|a| ipcs(pid, a)).collect()
}

fn restore_ok(job: &mut Job, dir: &Path) {
    let out = restore(dir, &[]);
    assert!(out.status.success(), "restore from {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
}

#[test]
fn an_ipc_namespace_comes_back_with_its_objects_ids_and_contents() {
    let dir = TempDir::new("ns-ipc");
    let images = dir.join("images");
    let mut job = Job::build("ipcns", &[]).pre_exec(own_ipc).start(dir.path());
    let ready = job.ready();
    assert_ne!(ns_inode(job.pid), ns_inode("self"), "the job has an ipc namespace of its own");
    let shm = ready_field(&ready, "shm");
    assert!(shm > 0, "the segment's id is not the first one: {ready}");
    let before = ipcs_all(job.pid);
    assert!(before[0].contains(&format!("{shm} ")), "ipcs -m shows segment {shm}: {}", before[0]);
    assert!(before[0].contains("dest"), "ipcs -m shows a segment removed while attached: {}", before[0]);
    let state = ProcState::of_tree(job.pid);
    dump(job.pid, &images, &[]);
    job.reap_original();
    let names: Vec<String> = std::fs::read_dir(&images).expect("images").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    for kind in ["var", "shm", "sem", "msg", "mqueue"] {
        assert!(names.iter().any(|n| n.starts_with(&format!("ipcns-{kind}-"))), "an ipcns-{kind} image among {names:?}");
    }
    restore_ok(&mut job, &images);
    assert_ne!(ns_inode(job.pid), ns_inode("self"), "the restored job has an ipc namespace of its own");
    assert_eq!(ipcs_all(job.pid), before, "ipcs shows the same objects inside the namespace");
    // Other tests may make objects in the host's namespace meanwhile: none
    // of the job's keys is there.
    let host = ipcs_all(std::process::id() as i32).concat();
    assert!(!host.contains("0x00c0de02") && !host.contains("0x00c0de03"), "the job's objects are not the host's: {host}");
    // Segment B is read-only in the job, so its mapping's file times are
    // compared: the segment is a new inode, made at the restore.
    let b = ready.split_whitespace().find_map(|w| w.strip_prefix("b=")).expect("b= in READY");
    let b = u64::from_str_radix(b, 16).expect("hex address");
    state.assert_same(&ProcState::of_tree(job.pid), &[&format!("map {b:x}-{:x} mtime", b + 8192)]);
    // Dumped again as restored, then it checks itself.
    let again = dir.join("again");
    dump(job.pid, &again, &[]);
    job.reap_original();
    restore_ok(&mut job, &again);
    assert_eq!(ipcs_all(job.pid), before, "ipcs shows the same objects after a second restore");
    job.expect_ok();
}

/// A segment of a namespace that is not the tree's own, attached by the
/// tree, is refused by name; the tree runs on with it.
fn foreign_segment_refused(mode: &str, own: bool, says: &str) {
    let dir = TempDir::new(&format!("ns-ipc-{mode}"));
    let images = dir.join("images");
    let mut job = Job::start("ipcns", &[mode], dir.path());
    let ready = job.ready();
    let shm = ready_field(&ready, "shm");
    assert_eq!(ns_inode(job.pid) != ns_inode("self"), own);
    let out = crust(&dump_args(&job.pid.to_string(), &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a tree attached to another namespace's segment");
    assert!(err.contains("System V shared memory") && err.contains(&format!("id {shm}")) && err.contains(says), "the refusal says why: {err}");
    assert_no_inventory(&images);
    job.expect_ok();
}

#[test]
fn a_segment_of_the_hosts_namespace_is_refused_and_the_tree_runs_on() {
    foreign_segment_refused("host", false, "host's ipc namespace");
}

#[test]
fn a_segment_of_a_namespace_the_process_left_is_refused_and_the_tree_runs_on() {
    foreign_segment_refused("other", true, "another ipc namespace");
}

/// A POSIX queue with a notification registered is refused by name (its
/// messages, taken and queued again, would fire it); it keeps its message.
#[test]
fn a_message_queue_with_a_notification_is_refused_and_keeps_its_messages() {
    let dir = TempDir::new("ns-ipc-notify");
    let images = dir.join("images");
    let mut job = Job::build("ipcns", &["notify"]).pre_exec(own_ipc).start(dir.path());
    job.ready();
    let out = crust(&dump_args(&job.pid.to_string(), &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a queue with a notification");
    // The process holds the queue open (mq_notify needs it), which is
    // refused first.
    assert!(err.contains("/crust-ipcns") && err.contains("message queue (mq_open)") && err.contains(&format!("process {}", job.pid)), "the refusal names the queue and the process: {err}");
    assert_no_inventory(&images);
    job.expect_ok();
}

/// A damaged ipc image is reported by file and offset, and the restore
/// leaves nothing; the images whole again restore.
#[test]
fn a_damaged_ipc_image_is_reported_by_file_and_offset() {
    let dir = TempDir::new("ns-ipc-damaged");
    let images = dir.join("images");
    let mut job = Job::build("ipcns", &[]).pre_exec(own_ipc).start(dir.path());
    job.ready();
    dump(job.pid, &images, &[]);
    job.reap_original();
    let shm = std::fs::read_dir(&images)
        .expect("images")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("ipcns-shm-"))
        .expect("an ipcns-shm image");
    let whole = std::fs::read(&shm).expect("reading the shm image");
    // Cut inside the first segment's pages.
    std::fs::write(&shm, &whole[..whole.len() / 2]).expect("cutting the shm image");
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "restore from a cut ipcns-shm image");
    let name = shm.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&name) && err.contains("offset") && err.contains("truncated"), "the error names the file and offset: {err}");
    std::fs::write(&shm, &whole).expect("mending the shm image");
    restore_ok(&mut job, &images);
    job.expect_ok();
}

// ---------------------------------------------------------------------------
// postgres: a real server on System V shared memory

const POSTGRES: &str = "/usr/lib/postgresql/15/bin";

/// The postgres user's uid and gid, for the server's pre_exec (a plain fn).
static PG_IDS: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();

/// In the server before exec: an ipc namespace of its own, then the
/// postgres user (the server refuses to run as root).
fn postgres_in_own_ipc() -> std::io::Result<()> {
    let (uid, gid) = *PG_IDS.get().expect("ids set before the start");
    // SAFETY: single syscalls on integers.
    unsafe {
        if libc::unshare(libc::CLONE_NEWIPC) != 0 || libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `psql -Atc SQL` over the server's socket in `dir`; its output, or None
/// when it fails.
fn psql(dir: &Path, sql: &str) -> Option<String> {
    let out = Command::new("psql")
        .args(["-h", &dir.to_string_lossy(), "-U", "postgres", "-d", "postgres", "-q", "-Atc", sql])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wait_psql(dir: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while psql(dir, "select 1").as_deref() != Some("1") {
        assert!(std::time::Instant::now() < deadline, "postgres does not answer on {}", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The server's children: each makes a session of its own (postgres
/// calls setsid in them), so ending the server's session leaves them; they
/// are killed and reaped by pid (ours once the server is gone: the tests
/// are a subreaper), those still a server's process on drop.
struct Children(Vec<i32>);

impl Children {
    fn of(pid: i32) -> Children {
        let all = std::fs::read_dir("/proc").expect("/proc").filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
        Children(all.filter(|&c| proc_stat(c).is_some_and(|st| st.ppid == pid)).collect())
    }

    /// Kill those still there and reap them all.
    fn end(&mut self) {
        for pid in self.0.drain(..) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            // SAFETY: kill and waitpid of a server's process, ours once the server is gone.
            unsafe {
                if String::from_utf8_lossy(&cmdline).contains("postgres") {
                    libc::kill(pid, libc::SIGKILL);
                }
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.end();
    }
}

/// The ids of a user, from `id`.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| Command::new("id").args([flag, user]).output().ok().filter(|o| o.status.success()).and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
    Some((id("-u")?, id("-g")?))
}

#[test]
fn postgres_in_an_ipc_namespace_of_its_own_answers_after_the_restore() {
    let Some(ids) = user_ids("postgres").filter(|_| Path::new(POSTGRES).join("postgres").exists()) else {
        eprintln!("skipped: Debian's postgresql 15 is not installed (scripts/setup installs it)");
        return;
    };
    PG_IDS.get_or_init(|| ids);
    let dir = TempDir::new("ns-ipc-pg");
    let images = dir.join("images");
    let chown = |p: &Path| std::os::unix::fs::chown(p, Some(ids.0), Some(ids.1)).unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    // The server's files are the postgres user's: its socket goes in `run`.
    let (data, run) = (dir.join("data"), dir.join("run"));
    for d in [&data, &run] {
        std::fs::create_dir(d).expect("a server dir");
        chown(d);
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod data");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let init = Command::new("setpriv")
        .args(["--reuid", &ids.0.to_string(), "--regid", &ids.1.to_string(), "--clear-groups"])
        .arg(format!("{POSTGRES}/initdb"))
        .args(["-D", &data.to_string_lossy(), "-A", "trust", "-U", "postgres"])
        .output()
        .expect("running initdb");
    assert!(init.status.success(), "initdb: {}", String::from_utf8_lossy(&init.stderr));
    let conf = format!(
        "listen_addresses = ''\nunix_socket_directories = '{}'\nshared_buffers = 16MB\nhuge_pages = off\n\
         dynamic_shared_memory_type = sysv\nlogging_collector = off\n",
        run.display()
    );
    let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).expect("postgresql.conf");
    std::io::Write::write_all(&mut f, conf.as_bytes()).expect("writing postgresql.conf");
    let server = Path::new(POSTGRES).join("postgres");
    let data_s = data.to_string_lossy().into_owned();
    let mut job = Job::build("postgres", &["-D", &data_s]).program(&server).pre_exec(postgres_in_own_ipc).start(dir.path());
    wait_psql(&run);
    assert_ne!(ns_inode(job.pid), ns_inode("self"), "the server has an ipc namespace of its own");
    assert_eq!(psql(&run, "create table t (x int); insert into t values (42); select sum(x) from t").as_deref(), Some("42"));
    let segments = ipcs(job.pid, "-m");
    assert!(segments.lines().filter(|l| l.starts_with("0x")).count() >= 2, "the server has System V segments: {segments}");
    let mut children = Children::of(job.pid);
    dump(job.pid, &images, &[]);
    job.reap_original();
    children.end();
    restore_ok(&mut job, &images);
    let _children = Children::of(job.pid);
    assert_eq!(ipcs(job.pid, "-m"), segments, "the same segments, attached as often");
    // A new backend, forked by the restored server, reads and writes.
    assert_eq!(psql(&run, "insert into t values (8); select sum(x) from t").as_deref(), Some("50"), "the restored server answers: {:?}", job.drain());
    job.kill_restored();
}
