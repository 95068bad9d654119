//! Helpers shared by the integration tests: spawning the bundled workloads and
//! cleaning them up, unique temporary directories, running `crust` and `crit`
//! with timeouts, and reading what /proc says about a process.
//!
//! Everything here runs real processes; nothing is mocked. Tests must run as root
//! (crust ptraces its targets).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod bundle;
pub mod container;
pub mod hosts;
pub mod job;
pub mod procstate;

/// The crust binary under test.
pub const CRUST: &str = env!("CARGO_BIN_EXE_crust");

pub fn workload_path(name: &str) -> PathBuf {
    Path::new(env!("CRUST_WORKLOAD_DIR")).join(name)
}

// ---------------------------------------------------------------------------
// Temporary directories

/// A directory unique to this test process, test and call (tempfile's,
/// named crust-test-TEST-...), removed on drop, also when the test panics.
pub struct TempDir {
    dir: tempfile::TempDir,
}

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("crust-test-{test}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for {test}: {e}"));
        TempDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // CRUST_TEST_KEEP=1 keeps the images of a failing test for a look.
        if std::env::var_os("CRUST_TEST_KEEP").is_some() && std::thread::panicking() {
            eprintln!("keeping {}", self.path().display());
            self.dir.disable_cleanup(true);
        }
    }
}

/// Writes `len` bytes of a known pattern to `path` and returns them.
pub fn write_pattern_file(path: &Path, len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed).collect();
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    data
}

// ---------------------------------------------------------------------------
// pidfds: refer to a process that is not our child without racing pid reuse.

pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is new and ours.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: r is a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

pub fn pidfd_kill(fd: &OwnedFd, sig: i32) {
    // SAFETY: plain syscall on an fd we own.
    unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0);
    }
}

/// Whether the process behind `fd` exits within `timeout` (zombie or reaped).
pub fn pidfd_wait_exit(fd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) };
        if r > 0 {
            return true;
        }
        if r == 0 || Instant::now() >= deadline {
            return false;
        }
    }
}

// ---------------------------------------------------------------------------
// Workloads

/// How to start a workload.
#[derive(Clone, Copy, Debug)]
pub struct SpawnOpts {
    /// Start it in a session of its own (setsid), so it is not a job of our shell.
    pub setsid: bool,
    /// Give it a copy of our fd `.0` as its fd `.1`.
    pub inherit_fd: Option<(RawFd, RawFd)>,
}

impl Default for SpawnOpts {
    fn default() -> Self {
        SpawnOpts { setsid: true, inherit_fd: None }
    }
}

/// A running workload; killed (SIGKILL) and reaped when dropped, together with
/// any other process adopted with [`Workload::adopt`].
pub struct Workload {
    pub name: String,
    pub pid: i32,
    child: Child,
    lines: Receiver<String>,
    /// Every stdout line read so far.
    pub history: Vec<String>,
    stderr: Arc<Mutex<String>>,
    adopted: Vec<OwnedFd>,
    exited: Option<ExitStatus>,
}

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Workload {
    pub fn spawn(name: &str, args: &[&OsStr]) -> Workload {
        Workload::spawn_with(name, args, SpawnOpts::default())
    }

    pub fn spawn_with(name: &str, args: &[&OsStr], opts: SpawnOpts) -> Workload {
        let path = workload_path(name);
        let mut cmd = Command::new(&path);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let SpawnOpts { setsid, inherit_fd } = opts;
        // SAFETY: only async-signal-safe calls (setsid, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if setsid && libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some((from, to)) = inherit_fd {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                close_inherited_fds(inherit_fd.map(|(_, to)| to));
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", path.display()));
        let pid = child.id() as i32;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_buf = collect_text(child.stderr.take().expect("piped stderr"));
        Workload {
            name: name.to_string(),
            pid,
            child,
            lines: rx,
            history: Vec::new(),
            stderr: stderr_buf,
            adopted: Vec::new(),
            exited: None,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line, or None on timeout or end of output.
    pub fn try_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                self.history.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The next stdout line; fails the test on timeout or end of output.
    pub fn line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                self.history.push(l.clone());
                l
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "{} (pid {}): no output line within {timeout:?}; so far: {:?}; stderr: {}",
                self.name,
                self.pid,
                self.history,
                self.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "{} (pid {}): output ended (status {:?}); so far: {:?}; stderr: {}",
                self.name,
                self.pid,
                self.child.try_wait(),
                self.history,
                self.stderr()
            ),
        }
    }

    /// Whether stdout reached its end (all writers gone) within `timeout`.
    pub fn wait_eof(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => self.history.push(l),
                Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    /// Lines already read by the reader thread, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.lines.try_recv() {
            self.history.push(l.clone());
            out.push(l);
        }
        out
    }

    /// Waits for the `READY ...` line; returns what follows `READY `.
    pub fn ready(&mut self) -> String {
        let l = self.line(READY_TIMEOUT);
        match l.strip_prefix("READY") {
            Some(rest) => rest.trim().to_string(),
            None => panic!("{}: expected a READY line, got {l:?}; stderr: {}", self.name, self.stderr()),
        }
    }

    /// Kill another process (one that is not our child) when this workload is dropped.
    pub fn adopt(&mut self, pid: i32) {
        let fd = pidfd_open(pid).unwrap_or_else(|e| panic!("pidfd_open({pid}): {e}"));
        self.adopted.push(fd);
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall; the pid is our unreaped child, so it cannot be reused.
        let r = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(r, 0, "kill({}, {sig}): {}", self.pid, std::io::Error::last_os_error());
    }

    /// Waits up to `timeout` for the workload to exit and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let s = wait_child(&mut self.child, timeout)?;
        self.exited = Some(s);
        Some(s)
    }

    /// Sends SIGUSR1 and expects the workload to verify its state, print `OK`
    /// and exit 0 (other output lines, like test_mm's counters, are skipped).
    pub fn expect_ok_on_usr1(&mut self) {
        self.signal(libc::SIGUSR1);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(l) = self.try_line(left) else {
                panic!(
                    "{} (pid {}): no OK after SIGUSR1 (status {:?}); last lines: {:?}; stderr: {}",
                    self.name,
                    self.pid,
                    self.child.try_wait(),
                    tail(&self.history, 8),
                    self.stderr()
                );
            };
            if l == "OK" {
                break;
            }
            assert!(!l.starts_with("FAIL"), "{} (pid {}) reported {l:?} after SIGUSR1", self.name, self.pid);
        }
        let status = self.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("{} did not exit after OK", self.name));
        assert!(status.success(), "{} exited with {status:?} after OK", self.name);
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for fd in &self.adopted {
            pidfd_kill(fd, libc::SIGKILL);
        }
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn tail(v: &[String], n: usize) -> &[String] {
    &v[v.len().saturating_sub(n)..]
}

/// Reads `r` to its end on a thread of its own; what it reads (lossy UTF-8)
/// is appended to the returned text as it comes.
pub fn collect_text(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

// ---------------------------------------------------------------------------
// Waiting

/// Calls `f` every `every` until it gives a value, for up to `timeout` (at
/// least once); None if it never did.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Waits up to `timeout` for `child` to exit and reaps it; None if it still runs.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    poll(timeout, Duration::from_millis(5), || child.try_wait().expect("try_wait"))
}

// ---------------------------------------------------------------------------
// Running commands

/// Runs `crust ARGS` and returns its output; fails the test if it takes longer
/// than `timeout` (killing it first).
pub fn crust(args: &[&OsStr], timeout: Duration) -> Output {
    run_with_timeout(Command::new(CRUST).args(args), timeout)
}

pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_t = read_all(Box::new(out));
    let err_t = read_all(Box::new(err));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Output { status, stdout: out_t.join().expect("stdout reader"), stderr: err_t.join().expect("stderr reader") }
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// In a new process before it execs: closes every fd above stdio but
/// `keep`. Whatever the test process inherited without close-on-exec (a
/// shell's or CI runner's pipes) would otherwise be held by the workload,
/// shared with processes outside its tree, and refused by the dump.
pub fn close_inherited_fds(keep: Option<RawFd>) {
    let ranges = match keep {
        Some(k) if k >= 3 => [(3, k as u32 - 1), (k as u32 + 1, u32::MAX)],
        _ => [(3, u32::MAX), (1, 0)],
    };
    for (first, last) in ranges.into_iter().filter(|(f, l)| f <= l) {
        // SAFETY: close_range is async-signal-safe and only closes fds.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    }
}

/// [`close_inherited_fds`] as a `pre_exec` step: the new process keeps its stdio only.
pub fn only_stdio() -> std::io::Result<()> {
    close_inherited_fds(None);
    Ok(())
}

/// The arguments of `crust dump -t PID -D DIR EXTRA...`, saying that the
/// process's stdio pipes are external (see [`stdio_pipes_external`]).
pub fn dump_args<'a>(pid: &'a str, dir: &'a Path, extra: &[&'a str]) -> Vec<&'a OsStr> {
    let mut args = vec![os("dump"), os("-t"), os(pid), os("-D"), dir.as_os_str()];
    args.extend(extra.iter().map(|s| os(s)));
    args.extend(stdio_pipes_external(pid));
    args
}

/// `--external pipe:[INO]` for each pipe among the process's fds 0-2: a
/// [`Workload`]'s output reaches the test through pipes the test holds,
/// which a dump refuses unless told they are external (a restore must then
/// be given them back). The strings live as long as the test process.
pub fn stdio_pipes_external(pid: &str) -> Vec<&'static OsStr> {
    let mut out = Vec::new();
    for fd in 0..3 {
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) else { continue };
        let link = link.to_string_lossy().into_owned();
        if link.starts_with("pipe:[") && !out.iter().any(|a: &&OsStr| *a == OsStr::new(&link)) {
            out.push(os("--external"));
            out.push(OsStr::new(Box::leak(link.into_boxed_str())));
        }
    }
    out
}

/// Asserts the command failed the way a user error should: a non-zero exit code
/// (not a panic, not a signal), and an error message without panic text.
/// Returns stderr.
pub fn assert_clean_failure(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{what}: expected failure, got success; stdout: {stdout}; stderr: {stderr}");
    let code = out.status.code();
    assert!(code.is_some(), "{what}: killed by signal {:?}; stderr: {stderr}", out.status.signal());
    assert_ne!(code, Some(101), "{what}: exit code 101 is Rust's panic code; stderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{what}: panic text in stderr: {stderr}");
    assert!(!stderr.trim().is_empty(), "{what}: no error message on stderr");
    stderr
}

// ---------------------------------------------------------------------------
// crit

pub const CRIT: &str = "crit";

/// Decodes one image with `crit show`; fails the test unless crit exits 0.
pub fn crit_show(path: &Path) -> Value {
    let out = run_with_timeout(Command::new(CRIT).arg("show").arg(path), Duration::from_secs(60));
    assert!(
        out.status.success(),
        "crit show {} failed ({:?}): {}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("crit show {}: output is not JSON: {e}", path.display()))
}

/// Decodes every CRIU image in `dir` but the raw pages-*.img with crit (crust's
/// own JSON files beside them are not CRIU images), in parallel; returns the
/// decoded images by file name.
pub fn crit_decode_dir(dir: &Path) -> BTreeMap<String, Value> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        // `parent`: the link of a chain to the dump before it.
        .filter(|n| n != "parent")
        .filter(|n| {
            assert!(n.ends_with(".img") || n == "stats-dump" || n.starts_with("crust-") && n.ends_with(".json"), "unexpected file {n}");
            !(n.starts_with("pages-") || n.starts_with("crust-"))
        })
        .collect();
    assert!(!names.is_empty(), "no images in {}", dir.display());
    let handles: Vec<_> = names
        .into_iter()
        .map(|n| {
            let p = dir.join(&n);
            std::thread::spawn(move || (n, crit_show(&p)))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| match h.join() {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e),
        })
        .collect()
}

/// The entries of a decoded image.
pub fn entries<'a>(imgs: &'a BTreeMap<String, Value>, name: &str) -> &'a Vec<Value> {
    let img = imgs.get(name).unwrap_or_else(|| panic!("image {name} missing; have {:?}", imgs.keys().collect::<Vec<_>>()));
    img["entries"].as_array().unwrap_or_else(|| panic!("{name}: no entries array: {img}"))
}

/// A number as crit prints it: a JSON number, or a string "0x..." or decimal.
pub fn num(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_i64().map(|i| i as u64)).unwrap_or_else(|| panic!("not an integer: {v}")),
        Value::String(s) => {
            let s = s.trim();
            if let Some(h) = s.strip_prefix("0x") {
                u64::from_str_radix(h, 16).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
            } else {
                s.parse().unwrap_or_else(|e| panic!("bad number {s:?}: {e}"))
            }
        }
        other => panic!("expected a number, got {other}"),
    }
}

/// Flag names as crit prints them ("A | B"); empty for "".
pub fn flag_names(v: &Value) -> BTreeSet<String> {
    match v {
        Value::String(s) => s.split('|').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect(),
        other => panic!("expected flag names, got {other}"),
    }
}

// ---------------------------------------------------------------------------
// /proc

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub path: String,
}

pub fn proc_maps(pid: i32) -> Vec<MapLine> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_else(|e| panic!("/proc/{pid}/maps: {e}"));
    text.lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next().expect("range");
            let perms = it.next().expect("perms").to_string();
            let offset = u64::from_str_radix(it.next().expect("offset"), 16).expect("offset hex");
            let _dev = it.next();
            let _inode = it.next();
            let path = it.collect::<Vec<_>>().join(" ");
            let (s, e) = range.split_once('-').expect("range dash");
            MapLine {
                start: u64::from_str_radix(s, 16).expect("start"),
                end: u64::from_str_radix(e, 16).expect("end"),
                perms,
                offset,
                path,
            }
        })
        .collect()
}

/// Pss and Rss of processes `pids` together, in KiB (smaps_rollup).
pub fn tree_memory(pids: &[i32]) -> (u64, u64) {
    let (mut pss, mut rss) = (0, 0);
    for pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_else(|e| panic!("smaps_rollup of {pid}: {e}"));
        let field = |name: &str| -> u64 {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} for {pid}: {text}"));
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        pss += field("Pss:");
        rss += field("Rss:");
    }
    (pss, rss)
}

/// The physical frame of the present page at `addr` in `pid` (pagemap shows
/// frames to root).
pub fn page_frame(pid: i32, addr: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap_or_else(|e| panic!("pagemap of {pid}: {e}"));
    let mut e = [0u8; 8];
    pagemap.read_exact_at(&mut e, addr / 4096 * 8).unwrap();
    let e = u64::from_le_bytes(e);
    assert!(e & (1 << 63) != 0, "page {addr:#x} of {pid} is present");
    let pfn = e & ((1 << 55) - 1);
    assert!(pfn != 0, "pagemap shows frames to root");
    pfn
}

/// The numbers after `key=` in a line (`children=1,2,3`).
pub fn field_list(line: &str, key: &str) -> Vec<u64> {
    let prefix = format!("{key}=");
    let v = line.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("no {prefix} in {line:?}"));
    v.split(',').map(|n| n.parse().unwrap_or_else(|e| panic!("{prefix}{v}: {e}"))).collect()
}

/// Whether `after` is within `percent` % of `before`.
pub fn within(after: u64, before: u64, percent: u64) -> bool {
    after.abs_diff(before) * 100 <= before * percent
}

pub fn proc_tasks(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"))
        .map(|e| e.expect("entry").file_name().to_string_lossy().parse().expect("tid"))
        .collect()
}

/// What /proc/PID/stat says of a process (the fields after its comm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
}

/// /proc/PID/stat; None if there is no such process.
pub fn proc_stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some(Stat { state: f.first()?.chars().next()?, ppid: f.get(1)?.parse().ok()?, pgrp: f.get(2)?.parse().ok()?, session: f.get(3)?.parse().ok()? })
}

/// Every process of session `sid`.
pub fn procs_in_session(sid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|st| st.session == sid))
        .collect()
}

pub fn proc_status_field(pid: i32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_string()))
}

/// What /proc/PID/task/TID/syscall says of a thread blocked in a syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockedSyscall {
    pub nr: u64,
    pub sp: u64,
    pub pc: u64,
}

/// Waits (bounded) until the thread is blocked in a syscall and returns it. A
/// restart_syscall (a sleep resumed after a stop, e.g. by an earlier dump) is
/// waited out: the next sleep of the workload's loop is a fresh call.
pub fn blocked_syscall(pid: i32, tid: i32) -> BlockedSyscall {
    let path = format!("/proc/{pid}/task/{tid}/syscall");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() == 9 && f[0] != libc::SYS_restart_syscall.to_string() {
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
            return BlockedSyscall { nr: f[0].parse().expect("syscall nr"), sp: hex(f[7]), pc: hex(f[8]) };
        }
        assert!(Instant::now() < deadline, "{path}: thread never seen blocked in a syscall ({text:?})");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Asserts that within `timeout` the process is neither stopped nor traced.
pub fn assert_running_untraced(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let state = proc_status_field(pid, "State").unwrap_or_else(|| panic!("process {pid} is gone"));
        let tracer = proc_status_field(pid, "TracerPid").expect("TracerPid");
        let stopped = state.starts_with('t') || state.starts_with('T');
        if !stopped && tracer == "0" && !state.starts_with('Z') {
            return;
        }
        assert!(
            Instant::now() < deadline && !state.starts_with('Z'),
            "process {pid} is left in state {state:?} with TracerPid {tracer}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// Images directory

/// Asserts DIR is 0700, holds only regular files of mode 0600 and no staging directory.
pub fn assert_images_dir_permissions(dir: &Path) {
    let md = std::fs::metadata(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(md.is_dir());
    assert_eq!(md.permissions().mode() & 0o7777, 0o700, "mode of images dir {}", dir.display());
    for e in std::fs::read_dir(dir).expect("read images dir") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".crust-staging-"), "staging directory {name} left behind in {}", dir.display());
        let md = std::fs::symlink_metadata(e.path()).expect("metadata");
        assert!(md.is_file(), "{name} in {} is not a regular file", dir.display());
        assert_eq!(md.permissions().mode() & 0o7777, 0o600, "mode of {name} in {}", dir.display());
    }
}

pub fn staging_dirs(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with(".crust-staging-"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Asserts a failed dump left no finished-looking images behind.
pub fn assert_no_inventory(dir: &Path) {
    assert!(!dir.join("inventory.img").exists(), "{} has an inventory.img after a failed dump", dir.display());
}

/// The saved pages of one process: its pagemap runs and the pages image.
pub struct Pages {
    /// (vaddr, nr_pages, offset in the pages file)
    pub runs: Vec<(u64, u64, u64)>,
    pub data: Vec<u8>,
}

pub const PAGE: u64 = 4096;

impl Pages {
    /// Reads pagemap-PID.img (decoded by crit) and the pages image it names; checks
    /// the two agree in size and the runs are sorted and disjoint.
    pub fn load(dir: &Path, imgs: &BTreeMap<String, Value>, pid: i32) -> Pages {
        let pm = entries(imgs, &format!("pagemap-{pid}.img"));
        let pages_id = num(&pm[0]["pages_id"]);
        let data = std::fs::read(dir.join(format!("pages-{pages_id}.img")))
            .unwrap_or_else(|e| panic!("pages-{pages_id}.img: {e}"));
        let mut runs = Vec::new();
        let mut off = 0;
        let mut prev_end = 0;
        for e in &pm[1..] {
            let vaddr = num(&e["vaddr"]);
            let nr = num(&e["nr_pages"]);
            assert!(nr > 0, "empty pagemap run at {vaddr:#x}");
            assert_eq!(vaddr % PAGE, 0, "unaligned pagemap run {vaddr:#x}");
            assert!(vaddr >= prev_end, "pagemap runs out of order or overlapping at {vaddr:#x}");
            prev_end = vaddr + nr * PAGE;
            let flags = flag_names(&e["flags"]);
            assert!(flags.contains("PE_PRESENT"), "pagemap run at {vaddr:#x} has flags {flags:?}");
            runs.push((vaddr, nr, off));
            off += nr * PAGE;
        }
        assert_eq!(data.len() as u64, off, "pages-{pages_id}.img size vs pagemap-{pid}.img pages");
        Pages { runs, data }
    }

    /// The saved bytes at [addr, addr+len), if all of them were saved.
    pub fn get(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let (v, n, off) = *self.runs.iter().find(|(v, n, _)| *v <= addr && addr < v + n * PAGE)?;
        if addr + len > v + n * PAGE {
            return None;
        }
        let s = (off + addr - v) as usize;
        Some(&self.data[s..s + len as usize])
    }
}
