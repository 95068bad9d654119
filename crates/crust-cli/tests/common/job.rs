//! Workloads that are dumped and restored by the tests: [`Job`], a workload
//! started in a session of its own, writing its output to a file (a file
//! survives the checkpoint, the restored process reopens it; a pipe to the test
//! would not), read line by line by polling.
//!
//! Restored roots are children of `crust restore`; when it exits they are
//! handed to the test process, a child subreaper ([`become_subreaper`]), which
//! reaps them. A job ends its whole session (original or restored) once it is
//! done with it, and on drop.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use super::{assert_clean_failure, crust, dump_args, os, pidfd_kill, pidfd_open, poll, proc_stat, proc_status_field, procs_in_session, wait_child, workload_path};

/// How long one step of a job (a line, a dump, a restore, an exit) may take.
pub const STEP: Duration = Duration::from_secs(60);

/// Makes the test process a child subreaper (once), so that restored roots
/// and orphans of a job's session are handed to it when their parent exits.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain prctl on this process.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER: {}", std::io::Error::last_os_error());
    });
}

/// Makes the command's process start a session of its own (setsid) before
/// it execs, holding only its stdio (see [`super::close_inherited_fds`]).
pub fn new_session(cmd: &mut Command) {
    // SAFETY: setsid and close_range are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            super::close_inherited_fds(None);
            if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
}

/// Gives the command stdin from /dev/null and stdout and stderr appended to
/// `out` (created, mode 0600, if missing).
pub fn output_to_file(cmd: &mut Command, out: &Path) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(out)
        .unwrap_or_else(|e| panic!("output file {}: {e}", out.display()));
    cmd.stdin(Stdio::null()).stdout(file.try_clone().expect("dup of the output file")).stderr(file);
}

/// Makes the command's process enter the cgroups `dirs` before it execs (it
/// writes "0", itself, to each cgroup.procs).
pub fn enter_cgroups(cmd: &mut Command, dirs: &[PathBuf]) {
    let files: Vec<CString> =
        dirs.iter().map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).expect("path without NUL")).collect();
    // SAFETY: only open, write and close (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for f in &files {
                let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if r != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
}

/// Ends session `sid` (a workload's, started with setsid, or its restored
/// copy): kills every process in it and reaps those that are ours (the test
/// process is a child subreaper: orphans of the session come to it). Waits
/// until no process of the session is left.
pub fn end_session(sid: i32) {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = procs_in_session(sid);
        if pids.is_empty() {
            return;
        }
        for pid in &pids {
            let Ok(fd) = pidfd_open(*pid) else { continue };
            match proc_stat(*pid) {
                Some(st) if st.session == sid && st.state == 'Z' && st.ppid == me => {
                    // SAFETY: waitpid on our own unreaped (zombie) child.
                    unsafe { libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) };
                }
                Some(st) if st.session == sid => pidfd_kill(&fd, libc::SIGKILL),
                _ => {}
            }
        }
        if Instant::now() > deadline {
            let msg = format!("processes {pids:?} of session {sid} are left");
            if std::thread::panicking() {
                eprintln!("{msg}");
                return;
            }
            panic!("{msg}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How to start a [`Job`]: see [`Job::build`].
pub struct JobBuilder<'a> {
    name: &'a str,
    args: &'a [&'a str],
    cgroups: &'a [PathBuf],
    output: Option<&'a str>,
    program: Option<&'a Path>,
    pre_exec: Option<fn() -> std::io::Result<()>>,
}

impl<'a> JobBuilder<'a> {
    /// The workload enters these cgroups (their directories) before it execs.
    pub fn cgroups(mut self, dirs: &'a [PathBuf]) -> Self {
        self.cgroups = dirs;
        self
    }

    /// Its output goes to `dir`/`file` instead of `dir`/NAME.out.
    pub fn output(mut self, file: &'a str) -> Self {
        self.output = Some(file);
        self
    }

    /// It runs from this copy of the workload's executable.
    pub fn program(mut self, exe: &'a Path) -> Self {
        self.program = Some(exe);
        self
    }

    /// It runs `f` in its new process before the exec (which must be
    /// async-signal-safe: to unshare namespaces and set them up).
    pub fn pre_exec(mut self, f: fn() -> std::io::Result<()>) -> Self {
        self.pre_exec = Some(f);
        self
    }

    /// Starts it, in a session of its own, writing to a file in `dir`.
    pub fn start(self, dir: &Path) -> Job {
        let JobBuilder { name, args, cgroups, output, program, pre_exec } = self;
        become_subreaper();
        let out = match output {
            Some(f) => dir.join(f),
            None => dir.join(format!("{name}.out")),
        };
        let mut cmd = Command::new(program.map(Path::to_path_buf).unwrap_or_else(|| workload_path(name)));
        cmd.args(args);
        output_to_file(&mut cmd, &out);
        // The file is appended to: a job started again in the same directory
        // (a test's loop over modes) would otherwise read the lines of the one
        // before, and take its READY for its own before it has even exec'ed.
        let read = std::fs::metadata(&out).map_or(0, |m| m.len() as usize);
        new_session(&mut cmd);
        if !cgroups.is_empty() {
            enter_cgroups(&mut cmd, cgroups);
        }
        if let Some(f) = pre_exec {
            // SAFETY: the callers' functions make single syscalls only.
            unsafe { cmd.pre_exec(f) };
        }
        // A program file just written (a test's copy) may still be open for
        // writing in a child another test thread forked meanwhile, until that
        // child execs: exec fails with ETXTBSY for that moment.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.unwrap_or_else(|e| panic!("spawning {name}: {e}")),
            }
        };
        let pid = child.id() as i32;
        Job { name: name.into(), pid, out, read, history: Vec::new(), child: Some(child), restored: false, sid: pid, session_live: true }
    }
}

/// A workload started in a session of its own, writing to a file. Its root is
/// the original process (our child) until a dump kills it, then, after each
/// restore that [`Job::adopt_restored`] took over, the restored root (handed
/// to us). Dropping it kills and reaps its root and ends its session.
pub struct Job {
    pub name: String,
    pub pid: i32,
    out: PathBuf,
    read: usize,
    /// Every line read so far.
    pub history: Vec<String>,
    /// The original process, our child, until it is reaped.
    child: Option<Child>,
    /// A restored root handed to us, not yet reaped.
    restored: bool,
    /// Its session (setsid): the original's pid, kept by restores.
    sid: i32,
    /// Processes of the session may exist. While one does, no new process
    /// can get the pid `sid`; once it is empty, `sid` may name someone else's.
    session_live: bool,
}

impl Job {
    /// Starts the workload `name` with `args`, writing to `dir`/NAME.out.
    pub fn start(name: &str, args: &[&str], dir: &Path) -> Job {
        Job::build(name, args).start(dir)
    }

    /// A job to start with more options (cgroups, output file).
    pub fn build<'a>(name: &'a str, args: &'a [&'a str]) -> JobBuilder<'a> {
        JobBuilder { name, args, cgroups: &[], output: None, program: None, pre_exec: None }
    }

    /// The next complete line of output, waiting up to `timeout`.
    pub fn line(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.next_line() {
                return l;
            }
            assert!(Instant::now() < deadline, "{} ({}): no output line within {timeout:?}; so far {:?}", self.name, self.pid, self.history);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn next_line(&mut self) -> Option<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let rest = text.get(self.read..)?;
        let nl = rest.find('\n')?;
        let l = rest[..nl].to_string();
        self.read += nl + 1;
        self.history.push(l.clone());
        Some(l)
    }

    /// Every complete line written so far.
    pub fn drain(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_line()).collect()
    }

    /// Waits for the `READY ...` line; returns what follows `READY`.
    pub fn ready(&mut self) -> String {
        let l = self.line(STEP);
        l.strip_prefix("READY").unwrap_or_else(|| panic!("{}: expected READY, got {l:?}", self.name)).trim().to_string()
    }

    /// After a dump killed it: reap its root (the original, or a restored one)
    /// and what is left of its session, so that the pids are free again.
    pub fn reap_original(&mut self) {
        let status = match self.child.take() {
            Some(mut c) => c.wait().expect("waiting for the original"),
            None => {
                assert!(self.restored, "{}: no process to reap", self.name);
                let mut status = 0;
                // SAFETY: waitpid on our own unreaped child.
                let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
                assert_eq!(r, self.pid, "waitpid({}): {}", self.pid, std::io::Error::last_os_error());
                self.restored = false;
                ExitStatus::from_raw(status)
            }
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{}: the dump kills the original", self.name);
        // The rest of the tree, killed too, may have been handed to us.
        self.end_session();
    }

    /// Kill and reap what is left of the session.
    pub fn end_session(&mut self) {
        if self.session_live {
            end_session(self.sid);
            self.session_live = false;
        }
    }

    /// After a restore succeeded: its root is our child now (crust restore exited).
    pub fn adopt_restored(&mut self) {
        assert!(!self.restored && self.child.is_none());
        self.session_live = true;
        let ppid = proc_status_field(self.pid, "PPid").unwrap_or_else(|| panic!("restored process {} is not there", self.pid));
        assert_eq!(ppid, std::process::id().to_string(), "the restored root {} is handed to the test process", self.pid);
        self.restored = true;
    }

    /// Kill and reap the restored process; collect what it wrote.
    pub fn kill_restored(&mut self) {
        assert!(self.restored, "no restored process to kill");
        // SAFETY: kill and waitpid on our own unreaped child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
        self.restored = false;
        self.end_session();
        self.drain();
    }

    /// After a restore that should have failed: whether a process with the
    /// root's pid is there anyway. If so it is taken over (its session ended
    /// on drop, the root reaped if it is our child), so that the failing test
    /// leaves nothing behind.
    pub fn take_stray(&mut self) -> bool {
        let Some(ppid) = proc_status_field(self.pid, "PPid") else { return false };
        self.session_live = true;
        if !self.restored && ppid == std::process::id().to_string() {
            self.restored = true;
        }
        true
    }

    /// A restore that must fail: a clean error, and no process with the root's pid.
    pub fn assert_restore_failed(&mut self, out: &Output, what: &str) -> String {
        let stray = self.take_stray();
        let err = assert_clean_failure(out, what);
        assert!(!stray, "{what}: a process with pid {} is left after the failed restore", self.pid);
        err
    }

    /// The next lines show both test_mm threads counting on from `last`
    /// (each thread's counter before the dump), with no gap.
    pub fn assert_counts_on_from(&mut self, last: &BTreeMap<String, i64>) {
        let after: Vec<String> = (0..4).map(|_| self.line(STEP)).collect();
        let first = counters(&after[..2]);
        for (t, n) in last {
            assert_eq!(first.get(t), Some(&(n + 1)), "{t} continues from {n}: {after:?}");
        }
    }

    /// Sends `sig` to the root (the original or the restored one).
    pub fn signal(&self, sig: i32) {
        assert!(self.child.is_some() || self.restored);
        // SAFETY: kill on our own unreaped child.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Waits up to `timeout` for the root (the original or the restored one)
    /// to exit and reaps it; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(mut c) = self.child.take() {
            let Some(status) = wait_child(&mut c, timeout) else {
                self.child = Some(c);
                panic!("{}: did not exit within {timeout:?}", self.name);
            };
            return status;
        }
        assert!(self.restored, "{}: no process to wait for", self.name);
        let pid = self.pid;
        let status = poll(timeout, Duration::from_millis(10), || {
            let mut status = 0;
            // SAFETY: waitpid on our own unreaped child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            assert!(r >= 0, "waitpid({pid}): {}", std::io::Error::last_os_error());
            (r == pid).then_some(status)
        });
        let status = status.unwrap_or_else(|| panic!("{}: did not exit within {timeout:?}", self.name));
        self.restored = false;
        ExitStatus::from_raw(status)
    }

    /// SIGUSR1: the workload checks itself, prints OK and exits 0 (other lines,
    /// like test_mm's counters, are skipped). Its session is ended after.
    pub fn expect_ok(&mut self) {
        let after = if self.restored { " after restore" } else { "" };
        self.signal(libc::SIGUSR1);
        loop {
            let l = self.line(STEP);
            assert!(!l.starts_with("FAIL"), "{} reported {l:?}{after}", self.name);
            if l == "OK" {
                break;
            }
        }
        let status = self.wait_exit(STEP);
        self.end_session();
        assert!(status.success(), "{} exited with {status:?}", self.name);
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.restored {
            // SAFETY: kill and waitpid on our own unreaped child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
        self.end_session();
    }
}

/// The number after `key=` in a READY line (`child=123 ...`).
pub fn ready_field(ready: &str, key: &str) -> i32 {
    let prefix = format!("{key}=");
    let v = ready.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str()));
    let v = v.unwrap_or_else(|| panic!("no {prefix} in READY line {ready:?}"));
    v.parse().unwrap_or_else(|e| panic!("{prefix}{v} in READY line {ready:?}: {e}"))
}

// ---------------------------------------------------------------------------
// crust dump and restore of a job

/// `crust dump -t PID -D DIR EXTRA...`, which must succeed; its stdout.
pub fn dump(pid: i32, dir: &Path, extra: &[&str]) -> String {
    let pid_s = pid.to_string();
    let out = crust(&dump_args(&pid_s, dir, extra), STEP);
    assert!(out.status.success(), "dump of {pid} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `crust restore -D DIR -d EXTRA...`.
pub fn restore(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![os("restore"), os("-D"), dir.as_os_str(), os("-d")];
    args.extend(extra.iter().map(|s| os(s)));
    crust(&args, STEP)
}

// ---------------------------------------------------------------------------
// test_mm's output

/// `t1 N` / `t2 N` lines: the last counter of each thread seen in `lines`.
pub fn counters(lines: &[String]) -> BTreeMap<String, i64> {
    let mut last = BTreeMap::new();
    for l in lines {
        if let Some((t, n)) = l.split_once(' ') {
            if let (true, Ok(n)) = (t.starts_with('t'), n.parse::<i64>()) {
                last.insert(t.to_string(), n);
            }
        }
    }
    last
}

/// Each thread's counter goes up by exactly one from line to line.
pub fn assert_counting(lines: &[String]) {
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for l in lines {
        let Some((t, n)) = l.split_once(' ') else { continue };
        let Ok(n) = n.parse::<i64>() else { continue };
        if let Some(prev) = last.get(t) {
            assert_eq!(n, prev + 1, "{t} jumped from {prev} to {n}; lines: {lines:?}");
        }
        last.insert(t.to_string(), n);
    }
}
