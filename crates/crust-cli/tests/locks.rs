//! File locks: a dump refuses a tree holding one unless told `--file-locks`,
//! naming the process, fd and file, and leaves the tree running with its
//! locks; with `--file-locks` the locks go into filelocks.img and a restore
//! takes each again in its process, so that other processes find them held
//! by their owners, and the owners can release them; a lock someone else
//! took meanwhile is named by `crust check` and stops the restore before it
//! makes anything; leases are refused even with `--file-locks`. Checked with
//! the workload `locks` (flock, POSIX and OFD locks, read and write, ranges,
//! in two processes) and with sqlite3 in the middle of a transaction.
//!
//! Run as root: `cargo test -p crust-cli --test locks`.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::procstate::ProcState;
use common::job::{dump, ready_field, restore, Job, STEP};
use common::{assert_clean_failure, Workload, assert_running_untraced, crit_decode_dir, crust, dump_args, entries, num, run_with_timeout, TempDir};

/// The lines of /proc/locks on the files `paths` (without their ids, waiters
/// left out), sorted: what a process of its own sees of their locks.
fn locks_on(paths: &[PathBuf]) -> Vec<String> {
    let inodes: Vec<String> = paths
        .iter()
        .map(|p| {
            let md = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            format!(":{}", md.ino())
        })
        .collect();
    let text = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
    let mut lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(_, rest)| rest))
        .filter(|l| !l.starts_with("->"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| l.split_whitespace().nth(4).is_some_and(|file| inodes.iter().any(|i| file.ends_with(i.as_str()))))
        .collect();
    lines.sort();
    lines
}

/// A dump without --file-locks must fail cleanly naming the lock and leave
/// the tree running, its locks still held.
fn assert_dump_refused(pid: i32, images: &Path, held: &[PathBuf], names: &[&str]) {
    let before = locks_on(held);
    let out = crust(&dump_args(&pid.to_string(), images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a tree holding file locks without --file-locks");
    for word in [format!("process {pid}"), "fd ".into(), "--file-locks".into()].iter().chain(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()) {
        assert!(err.contains(word.as_str()), "the refusal does not say {word:?}: {err}");
    }
    assert_running_untraced(pid, Duration::from_secs(5));
    assert_eq!(locks_on(held), before, "the refused dump changed the locks");
}

/// What F_GETLK says of a write lock wanted on [start, start+len) of `path`
/// by the test process: the type and owner of the lock in the way.
fn conflicting_lock(path: &Path, start: i64, len: i64) -> (i16, i32) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    // SAFETY: flock is plain old data; all zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: F_GETLK reads and writes one struct flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    assert_eq!(r, 0, "F_GETLK: {}", std::io::Error::last_os_error());
    (fl.l_type, fl.l_pid)
}

#[test]
fn flock_posix_and_ofd_locks_come_back_held_by_their_owners() {
    let dir = TempDir::new("locks");
    let mut job = Job::start("locks", &[dir.path().to_str().unwrap()], dir.path());
    let child = ready_field(&job.ready(), "child");
    let files = [dir.join("data"), dir.join("shared")];
    let before = locks_on(&files);
    assert_eq!(before.len(), 8, "the workload's locks: {before:?}");
    let images = dir.join("images");
    assert_dump_refused(job.pid, &images, &files, &["data", "flock"]);

    let state = ProcState::of_tree(job.pid);
    dump(job.pid, &images, &["--file-locks"]);
    job.reap_original();
    assert!(locks_on(&files).is_empty(), "locks are left after the dump killed the tree: {:?}", locks_on(&files));

    // filelocks.img as CRIU reads it: (flag, type, pid, start, len) of each lock.
    let imgs = crit_decode_dir(&images);
    let mut saved: Vec<(u64, u64, i64, i64, i64)> = entries(&imgs, "filelocks.img")
        .iter()
        .map(|e| (num(&e["flag"]), num(&e["type"]), num(&e["pid"]) as i64, num(&e["start"]) as i64, num(&e["len"]) as i64))
        .collect();
    saved.sort();
    let (p, c) = (job.pid as i64, child as i64);
    let (posix, flock, ofd, rd, wr) = (1, 2, 4, 0, 1);
    let mut want = vec![
        (posix, wr, p, 0, 10),
        (posix, rd, p, 20, 10),
        (posix, wr, p, 100, 0),
        (posix, rd, c, 80, 10),
        (flock, wr, p, 0, 0),
        (flock, rd, p, 0, 0),
        (ofd, wr, p, 40, 10),
        (ofd, rd, p, 60, 10),
    ];
    want.sort();
    assert_eq!(saved, want);

    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    state.assert_same(&ProcState::of_tree(job.pid), &[]);
    assert_eq!(locks_on(&files), before, "the restored tree does not hold the locks it held");
    assert_eq!(conflicting_lock(&files[0], 0, 10), (libc::F_WRLCK as i16, job.pid));
    assert_eq!(conflicting_lock(&files[0], 80, 10), (libc::F_RDLCK as i16, child));
    // The workload checks every lock from a process of its own, releases them, checks they are gone.
    job.expect_ok();
    assert!(locks_on(&files).is_empty());
}

#[test]
fn a_lock_taken_by_another_process_meanwhile_is_named_by_check_and_restore() {
    let dir = TempDir::new("locks-taken");
    let mut job = Job::start("locks", &[dir.path().to_str().unwrap()], dir.path());
    job.ready();
    let images = dir.join("images");
    dump(job.pid, &images, &["--file-locks"]);
    job.reap_original();
    // While the tree is dumped, someone else takes the data file's flock.
    let intruder = std::fs::File::open(dir.join("data")).expect("open");
    // SAFETY: flock on an fd of ours.
    assert_eq!(unsafe { libc::flock(intruder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    // `crust check` names it, and the restore refuses before making anything.
    let me = std::process::id();
    let says = format!("data: a WRITE flock lock of process {} (fd 3) cannot be taken again: process {me} holds a WRITE flock lock on it now", job.pid);
    let out = crust(&[common::os("check"), common::os("--images"), images.as_os_str()], STEP);
    let err = assert_clean_failure(&out, "check of images whose lock someone else holds");
    assert!(err.contains(&says), "{err}");
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "restore of a lock held by someone else");
    assert!(err.contains(&says), "{err}");
    // Unlocked, not only closed: a child another test thread forks may hold
    // a copy of the fd until it execs, and the lock with it.
    // SAFETY: flock on an fd of ours.
    assert_eq!(unsafe { libc::flock(intruder.as_raw_fd(), libc::LOCK_UN) }, 0);
    drop(intruder);
    // Nothing of the failed restore holds a lock; the next restore takes them all.
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    job.expect_ok();
}

#[test]
fn leases_are_refused_even_with_file_locks() {
    let dir = TempDir::new("locks-lease");
    let mut w = Workload::spawn("unusual", &[common::os("lease")]);
    w.ready();
    let images = dir.join("images");
    let out = crust(&dump_args(&w.pid.to_string(), &images, &["--file-locks"]), STEP);
    let err = assert_clean_failure(&out, "dump of a process holding a lease, with --file-locks");
    let says = format!("process {}", w.pid);
    assert!(err.contains(&says) && err.contains("fd 3") && err.contains("holds a WRITE lease: file leases (F_SETLEASE) are not supported yet"), "{err}");
    assert_running_untraced(w.pid, Duration::from_secs(5));
    w.expect_ok_on_usr1();
}

/// sqlite3 reading SQL from a FIFO it holds open read-write (so it never
/// sees its end), writing to the job's output file.
struct Sqlite {
    job: Job,
    db: PathBuf,
    fifo: PathBuf,
}

impl Sqlite {
    fn start(dir: &TempDir) -> Sqlite {
        let (db, fifo) = (dir.join("test.db"), dir.join("sql.fifo"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).expect("mkfifo");
        let script = format!("exec sqlite3 -batch '{}' 0<>'{}'", db.display(), fifo.display());
        let job = Job::build("sqlite", &["-c", &script]).program(Path::new("/bin/sh")).start(dir.path());
        Sqlite { job, db, fifo }
    }

    /// Sends `sql`, then waits for sqlite3 to print `marker` (a SELECT of it
    /// follows the SQL): every statement before it is done.
    fn run(&mut self, sql: &str, marker: &str) {
        let mut f = std::fs::OpenOptions::new().write(true).open(&self.fifo).expect("open the FIFO");
        writeln!(f, "{sql}\nSELECT '{marker}';").expect("write to sqlite3");
        drop(f);
        loop {
            let l = self.job.line(STEP);
            assert!(!l.contains("Error"), "sqlite3: {l:?}");
            if l == marker {
                return;
            }
        }
    }

    /// `.quit`: sqlite3 exits 0.
    fn quit(&mut self) {
        let mut f = std::fs::OpenOptions::new().write(true).open(&self.fifo).expect("open the FIFO");
        writeln!(f, ".quit").expect("write to sqlite3");
        drop(f);
        let status = self.job.wait_exit(STEP);
        self.job.end_session();
        assert!(status.success(), "sqlite3 exited with {status:?}: {:?}", self.job.drain());
    }

    /// Another sqlite3 on the database: its output and whether it succeeded.
    fn other(&self, sql: &str) -> (bool, String) {
        let out = run_with_timeout(Command::new("sqlite3").arg("-batch").arg(&self.db).arg(sql), STEP);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text.trim().to_string())
    }

    fn assert_writers_locked_out(&self, when: &str) {
        let (ok, text) = self.other("INSERT INTO t VALUES (-1, 'intruder');");
        assert!(!ok && text.contains("database is locked"), "{when}: another writer got: ok {ok}, {text:?}");
        // Readers are let in, and see only what was committed.
        assert_eq!(self.other("SELECT count(*) FROM t;"), (true, "100".to_string()), "{when}");
    }
}

/// INSERTs of rows from..to (v = n * 7).
fn inserts(from: u32, to: u32) -> String {
    (from..to).map(|n| format!("INSERT INTO t VALUES ({n}, 'row {}');", n * 7)).collect::<Vec<_>>().join("\n")
}

#[test]
fn sqlite_mid_transaction_keeps_its_lock_and_commits_after_restore() {
    let dir = TempDir::new("locks-sqlite");
    let mut s = Sqlite::start(&dir);
    s.run(&format!("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT);\n{}", inserts(0, 100)), "created");
    s.run(&format!("BEGIN;\n{}", inserts(100, 150)), "first half");
    s.assert_writers_locked_out("mid-transaction, before any dump");

    let images = dir.join("images");
    assert_dump_refused(s.job.pid, &images, std::slice::from_ref(&s.db), &["test.db", "POSIX"]);
    // It goes on as before, in its transaction.
    s.run(&inserts(150, 200), "second half");
    s.assert_writers_locked_out("after the refused dump");

    let state = ProcState::of_tree(s.job.pid);
    dump(s.job.pid, &images, &["--file-locks"]);
    s.job.reap_original();
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    s.job.adopt_restored();
    state.assert_same(&ProcState::of_tree(s.job.pid), &[]);
    s.assert_writers_locked_out("after the restore");

    s.run(&format!("{}\nCOMMIT;", inserts(200, 250)), "committed");
    s.quit();
    // Every row, none lost and none of the intruders'.
    let (ok, text) = s.other("SELECT count(*), sum(n), min(n), group_concat(DISTINCT length(v) > 0) FROM t;");
    assert!(ok, "{text}");
    assert_eq!(text, format!("250|{}|0|1", (0..250).sum::<u32>()));
    assert_eq!(s.other("SELECT v FROM t WHERE n = 249;"), (true, format!("row {}", 249 * 7)));
}
