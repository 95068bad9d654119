//! Shared by the benches (`mod common;`): starting the bundled workloads and
//! following their output, killing and reaping them (also on error), tmpfs
//! paths removed on drop, and the statistics the tables print.
//!
//! A workload's stdout and stderr go to a file (O_APPEND) that the bench polls,
//! not to a pipe: a restored process gets its pipes back empty and without a
//! reader, so its next write would kill it with SIGPIPE. A file also needs no
//! reader thread, which matters because restore forks the bench itself.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub const WORKLOAD_DIR: &str = env!("CRUST_WORKLOAD_DIR");

/// How often a file or a child is polled.
const POLL: Duration = Duration::from_millis(2);

/// Follows a file that a workload appends lines to.
pub struct Output {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
}

impl Output {
    fn open(path: &Path) -> Result<Output> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Output { path: path.to_path_buf(), file, buf: Vec::new() })
    }

    /// The next complete line, if one has been written.
    fn try_line(&mut self) -> Result<Option<String>> {
        if !self.buf.contains(&b'\n') {
            self.file.read_to_end(&mut self.buf).with_context(|| format!("reading {}", self.path.display()))?;
        }
        let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else { return Ok(None) };
        let line: Vec<u8> = self.buf.drain(..=nl).collect();
        Ok(Some(String::from_utf8_lossy(&line[..nl]).into_owned()))
    }

    /// Everything written so far, as lines (a last partial line is kept for later).
    pub fn drain(&mut self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        while let Some(l) = self.try_line()? {
            out.push(l);
        }
        Ok(out)
    }

    /// Forgets everything written so far.
    pub fn skip(&mut self) -> Result<()> {
        self.drain()?;
        self.buf.clear();
        Ok(())
    }

    pub fn len(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path).with_context(|| format!("stat {}", self.path.display()))?.len())
    }

    /// Cuts the file back to `len` bytes and follows it from there. A restore
    /// (crust's as criu's) refuses a regular file whose size changed since the
    /// dump, and every restored run of a workload appends to its output.
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .and_then(|f| f.set_len(len))
            .with_context(|| format!("truncating {}", self.path.display()))?;
        self.file.seek(SeekFrom::Start(len))?;
        self.buf.clear();
        Ok(())
    }
}

/// How a workload's process ended.
#[derive(Debug)]
pub enum End {
    Exited(i32),
    Signaled(Signal),
    /// Reaped by someone else: a dump that kills the tree reaps it itself when
    /// it is both the tree's tracer and its parent.
    ReapedElsewhere,
}

/// A workload in its own session, writing to an output file. Whatever process
/// has its pid (the one started, or a restored one that is our child too) is
/// killed and reaped on drop.
pub struct Workload {
    pub name: String,
    pid: i32,
    pub out: Output,
    live: bool,
}

impl Workload {
    /// Starts `WORKLOAD_DIR/name args...` with stdout and stderr appended to
    /// `out_path`. It gets SIGKILL if the bench dies (PR_SET_PDEATHSIG, which a
    /// dump saves and a restore puts back, so its restored copies too).
    pub fn spawn(name: &str, args: &[&str], out_path: &Path) -> Result<Workload> {
        Workload::spawn_with(name, args, out_path, true)
    }

    /// Like `spawn`, but with `die_with_bench` false nothing ties the
    /// workload's life to the bench's: for a tree that someone else (criu)
    /// restores as its child and leaves behind.
    pub fn spawn_with(name: &str, args: &[&str], out_path: &Path, die_with_bench: bool) -> Result<Workload> {
        let exe = Path::new(WORKLOAD_DIR).join(name);
        let out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(out_path)
            .with_context(|| format!("creating {}", out_path.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&exe);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: setsid, prctl and close_range are async-signal-safe. The
        // child leads its own session so neither dump nor restore needs
        // shell_job, and it inherits no fds beyond 0-2 (a profiler's leaked
        // eventfd, say, would make the dump fail on an unsupported file).
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if die_with_bench && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
        // From here on the pid is reaped with waitpid, by Drop if nothing else
        // (std's Child does not wait on drop).
        let w = Workload {
            name: format!("{name} {}", args.join(" ")).trim().to_string(),
            pid: child.id() as i32,
            out: Output::open(out_path)?,
            live: true,
        };
        Ok(w)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The process now running under this workload's pid is a restored one, our child.
    pub fn adopt(&mut self, pid: i32) -> Result<()> {
        if self.live {
            bail!("{}: restored as {pid} while {} is not reaped", self.name, self.pid);
        }
        self.pid = pid;
        self.live = true;
        Ok(())
    }

    /// Waits for a line starting with `prefix`, skipping others.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.out.try_line()? {
                Some(l) if l.starts_with(prefix) => return Ok(l),
                Some(l) if l.starts_with("FAIL") => bail!("{}: {l}", self.name),
                Some(_) => continue,
                None => {}
            }
            if let Some(status) = self.try_wait()? {
                // It may have printed the line just before it exited.
                if let Some(l) = self.out.drain()?.into_iter().find(|l| l.starts_with(prefix)) {
                    return Ok(l);
                }
                bail!("{}: exited ({status:?}) before printing {prefix:?}", self.name);
            }
            if Instant::now() > deadline {
                bail!("{}: no {prefix:?} line within {timeout:?}", self.name);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Reaps the process if it has ended; None while it runs.
    pub fn try_wait(&mut self) -> Result<Option<End>> {
        if !self.live {
            bail!("{}: pid {} was already reaped", self.name, self.pid);
        }
        let end = match waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => End::Exited(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => End::Signaled(sig),
            // Still running, or stopped or continued: not an end.
            Ok(_) => return Ok(None),
            Err(Errno::ECHILD) => End::ReapedElsewhere,
            Err(e) => return Err(e).with_context(|| format!("waitpid {}", self.pid)),
        };
        self.live = false;
        Ok(Some(end))
    }

    /// Waits for the process to end (for one a dump killed, say) and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<End> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("{} (pid {}) did not end within {timeout:?}", self.name, self.pid);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Fails if the process has ended, after giving it `grace` to crash.
    pub fn check_running(&mut self, grace: Duration) -> Result<()> {
        std::thread::sleep(grace);
        if let Some(s) = self.try_wait()? {
            bail!("{} (pid {}) ended: {s:?}", self.name, self.pid);
        }
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> Result<()> {
        kill(Pid::from_raw(self.pid), Signal::SIGKILL).with_context(|| format!("killing {}", self.pid))?;
        self.wait_exit(Duration::from_secs(30))?;
        Ok(())
    }

    /// SIGUSR1 makes both workloads check themselves, print OK and exit 0.
    pub fn verify(&mut self) -> Result<()> {
        kill(Pid::from_raw(self.pid), Signal::SIGUSR1).context("sending SIGUSR1")?;
        self.expect_line("OK", Duration::from_secs(30))?;
        match self.wait_exit(Duration::from_secs(10))? {
            End::Exited(0) => Ok(()),
            s => bail!("{} printed OK but ended with {s:?}", self.name),
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.live {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(self.pid), None);
        }
    }
}

/// Removes what benches killed before they could clean up (by Ctrl-C, say)
/// left in /dev/shm: the paths of bench processes that no longer exist.
pub fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else { return };
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("crust-bench-").and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            remove(&e.path());
        }
    }
}

/// A path under /dev/shm (tmpfs), in a directory of its own (tempfile's,
/// named crust-bench-PID-TAGN-...), which is removed on drop with whatever
/// the path has become.
pub struct TmpPath(pub PathBuf, tempfile::TempDir);

impl TmpPath {
    fn tempdir(tag: &str, n: usize) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("crust-bench-{}-{tag}{n}-", std::process::id()))
            .tempdir_in("/dev/shm")
            .context("creating a temp dir in /dev/shm")
    }

    /// A path that does not exist yet, for a file or a directory.
    pub fn new(tag: &str, n: usize) -> Result<TmpPath> {
        let dir = TmpPath::tempdir(tag, n)?;
        Ok(TmpPath(dir.path().join(format!("{tag}{n}")), dir))
    }

    /// A fresh, empty directory.
    pub fn dir(tag: &str, n: usize) -> Result<TmpPath> {
        let dir = TmpPath::tempdir(tag, n)?;
        Ok(TmpPath(dir.path().to_path_buf(), dir))
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

/// Removes a file or a directory tree.
fn remove(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

pub fn median<T: Copy + PartialOrd>(v: &[T]) -> T {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    s[s.len() / 2]
}

pub fn min_max(v: &[f64]) -> (f64, f64) {
    (v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(0.0, f64::max))
}

/// The note printed beside a range whose max is far from its min.
pub fn noisy(ranges: &[(f64, f64)]) -> &'static str {
    if ranges.iter().any(|&(lo, hi)| hi > 1.5 * lo) {
        "  (noisy: max > 1.5 x min)"
    } else {
        ""
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `CRUST_BENCH_FILTER=<substring>` runs only the matching workloads (e.g. for profiling).
pub fn selected(name: &str, args: &[&str]) -> bool {
    let filter = std::env::var("CRUST_BENCH_FILTER").unwrap_or_default();
    format!("{name} {}", args.join(" ")).contains(filter.as_str())
}
