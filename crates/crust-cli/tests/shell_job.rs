//! Shell jobs: a job started from an interactive bash on one terminal is
//! dumped from elsewhere and restored from an interactive bash on another
//! terminal, where it must go on: output, input, job control, terminal state.
//! The terminals are pty pairs opened by the test.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_clean_failure, crust, os, workload_path, TempDir, CRUST};

const WAIT: Duration = Duration::from_secs(30);

/// An interactive bash on a pty of its own, as on a user's terminal.
struct Terminal {
    master: File,
    seen: Arc<Mutex<String>>,
    bash: Child,
    /// Where in `seen` the caller has read up to.
    mark: usize,
}

impl Terminal {
    fn open(rows: u16, cols: u16) -> Terminal {
        // Both ends close-on-exec from the start: other tests fork concurrently.
        let flags = nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC;
        let master = nix::pty::posix_openpt(flags).expect("posix_openpt");
        nix::pty::grantpt(&master).expect("grantpt");
        nix::pty::unlockpt(&master).expect("unlockpt");
        let slave_path = nix::pty::ptsname_r(&master).expect("ptsname");
        let slave: OwnedFd = nix::fcntl::open(slave_path.as_str(), flags, nix::sys::stat::Mode::empty()).expect("open pty slave");
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        let sfd = slave.as_raw_fd();
        let mut cmd = Command::new("bash");
        cmd.args(["--norc", "--noprofile", "-i"])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("PS1", "$ ")
            .env("TERM", "dumb")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::ioctl(sfd, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for fd in 0..3 {
                    if libc::dup2(sfd, fd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let bash = cmd.spawn().expect("bash");
        drop(slave);
        let master = File::from(OwnedFd::from(master));
        let seen = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut t = Terminal { master, seen, bash, mark: 0 };
        t.expect("$ ");
        t
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn key(&mut self, byte: u8) {
        self.master.write_all(&[byte]).unwrap();
    }

    fn text(&self) -> String {
        self.seen.lock().unwrap().clone()
    }

    /// Wait until `what` appears after the mark; move the mark past it.
    fn expect(&mut self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            if let Some(at) = text[self.mark..].find(what) {
                let upto = self.mark + at + what.len();
                let got = text[self.mark..upto].to_string();
                self.mark = upto;
                return got;
            }
            assert!(Instant::now() < deadline, "{what:?} did not appear on the terminal; it shows: {:?}", &text[self.mark..]);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next `tN COUNT` line of test_mm after the mark, as (thread, count).
    fn next_count(&mut self, thread: &str) -> i64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            let rest = &text[self.mark..];
            for (off, line) in line_starts(rest) {
                let Some(n) = line.trim_end_matches('\r').strip_prefix(&format!("{thread} ")) else { continue };
                if let (Ok(n), true) = (n.parse(), rest[off..].contains('\n')) {
                    self.mark += off + line.len();
                    return n;
                }
            }
            assert!(Instant::now() < deadline, "no {thread} line; terminal shows: {rest:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn winsize(&self) -> (u16, u16) {
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize.
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        (ws.ws_row, ws.ws_col)
    }
}

/// Lines of `s` with the byte offset where each starts, complete lines only.
fn line_starts(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut off = 0;
    for l in s.split_inclusive('\n') {
        if l.ends_with('\n') {
            out.push((off, l.trim_end_matches('\n')));
        }
        off += l.len();
    }
    out
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // The whole session: bash, its jobs, a crust waiting in it.
        let sid = self.bash.id() as i32;
        for p in procs_in_session(sid) {
            // SAFETY: kill processes of a session this test made.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = self.bash.kill();
        let _ = self.bash.wait();
    }
}

fn procs_in_session(sid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(3)).and_then(|s| s.parse().ok()) == Some(sid)
        })
        .collect()
}

fn proc_stat_field(pid: i32, n: usize) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(n)).unwrap_or("").to_string()
}

/// The pid of the process running `comm` in session `sid`.
fn find(sid: i32, comm: &str) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        for p in procs_in_session(sid) {
            if std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().trim() == comm {
                return p;
            }
        }
        assert!(Instant::now() < deadline, "no {comm} in session {sid}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn dump_job(pid: i32, dir: &std::path::Path) {
    let out = crust(&[os("dump"), os("-t"), os(&pid.to_string()), os("-D"), dir.as_os_str(), os("--shell-job")], WAIT);
    assert!(out.status.success(), "dump: {}", String::from_utf8_lossy(&out.stderr));
}

fn gone(pid: i32) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let state = proc_stat_field(pid, 0);
        if state.is_empty() || state == "Z" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn job_moves_to_another_terminal_with_output_job_control_and_settings() {
    let dir = TempDir::new("shell-job-test-mm");
    let images = dir.join("images");
    let mut a = Terminal::open(33, 91);
    a.type_line("stty -echoctl");
    a.expect("$ ");
    a.type_line(&workload_path("test_mm").display().to_string());
    let pid = find(a.bash.id() as i32, "test_mm");
    let before = a.next_count("t1");

    // Without --shell-job the dump refuses, naming the shell that leads the session.
    let out = crust(&[os("dump"), os("-t"), os(&pid.to_string()), os("-D"), images.as_os_str()], WAIT);
    let err = assert_clean_failure(&out, "dump of a shell job without --shell-job");
    assert!(err.contains("--shell-job") && err.contains(&format!("{} bash", a.bash.id())), "message: {err}");
    assert!(a.next_count("t1") > before, "the refused dump left the job running");

    dump_job(pid, &images);
    assert!(gone(pid), "the dump ends the job");
    let last = a.next_count_or_last("t1");

    let mut b = Terminal::open(24, 80);
    assert_eq!(b.winsize(), (24, 80));
    b.type_line(&format!("{CRUST} restore --shell-job -D {}", images.display()));
    let first = b.next_count("t1");
    assert_eq!(first, last + 1, "t1 continues on the new terminal");
    let mark_a = a.text().len();
    let next = b.next_count("t1");
    assert_eq!(next, first + 1);
    assert_eq!(b.winsize(), (33, 91), "the job's window size is applied to the new terminal");
    let termios = nix::sys::termios::tcgetattr(&b.master).unwrap();
    assert!(!termios.local_flags.contains(nix::sys::termios::LocalFlags::ECHOCTL), "the job's termios is applied");
    assert_eq!(proc_stat_field(pid, 3), b.bash.id().to_string(), "the job is in the new terminal's session");
    assert!(!a.text()[mark_a..].contains("t1 "), "nothing more on the old terminal");

    // Job control through the restoring shell: Ctrl-Z stops the job, fg resumes it.
    b.key(0x1a);
    b.expect("Stopped");
    let deadline = Instant::now() + WAIT;
    while proc_stat_field(pid, 0) != "T" {
        assert!(Instant::now() < deadline, "Ctrl-Z did not stop the restored job");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopped_at = b.text().len();
    std::thread::sleep(Duration::from_millis(400));
    assert!(!b.text()[stopped_at..].contains("t1 "), "a stopped job prints nothing");
    b.type_line("fg");
    let resumed = b.next_count("t1");
    assert!(resumed > next, "fg resumes the job where it was");
    b.key(0x03);
    assert!(gone(pid), "Ctrl-C ends the restored job");
}

impl Terminal {
    /// The last `tN COUNT` printed so far for `thread` (the job is gone).
    fn next_count_or_last(&mut self, thread: &str) -> i64 {
        std::thread::sleep(Duration::from_millis(200));
        let text = self.text();
        let last = line_starts(&text)
            .into_iter()
            .filter_map(|(_, l)| l.trim_end_matches('\r').strip_prefix(&format!("{thread} "))?.parse().ok())
            .last()
            .expect("the job printed");
        self.mark = text.len();
        last
    }
}

#[test]
fn program_reading_its_terminal_reads_the_new_one() {
    let dir = TempDir::new("shell-job-tr");
    let images = dir.join("images");
    let mut a = Terminal::open(24, 80);
    a.type_line("tr a-z A-Z");
    let tr = find(a.bash.id() as i32, "tr");
    a.type_line("before");
    a.expect("BEFORE");
    dump_job(tr, &images);
    assert!(gone(tr));
    let mut b = Terminal::open(24, 80);
    b.type_line(&format!("{CRUST} restore -j -D {}", images.display()));
    b.expect("restored");
    b.type_line("after");
    b.expect("AFTER");
    assert!(!a.text().contains("AFTER"));
    b.key(0x04);
    b.expect("$ ");
    assert!(gone(tr), "end of input ends tr, and crust returns to the shell");
}

#[test]
fn pipeline_job_is_dumped_and_restored_as_one_with_its_pipe() {
    let dir = TempDir::new("shell-job-pipeline");
    let images = dir.join("images");
    let mut a = Terminal::open(24, 80);
    a.type_line("sh -c 'i=0; while :; do i=$((i+1)); echo \"n $i\"; sleep 0.1; done | cat -n; exit 0'");
    let sh = find(a.bash.id() as i32, "sh");
    let before = a.next_count_numbered();
    dump_job(sh, &images);
    assert!(gone(sh));
    let last = a.next_count_or_last_numbered();
    assert!(last >= before);
    let mut b = Terminal::open(24, 80);
    b.type_line(&format!("{CRUST} restore -j -D {}", images.display()));
    let first = b.next_count_numbered();
    assert_eq!(first, last + 1, "cat -n goes on numbering the producer's lines");
    assert_eq!(b.next_count_numbered(), first + 1);
    b.key(0x03);
    assert!(gone(sh));
}

impl Terminal {
    /// The next `cat -n` line number.
    fn next_count_numbered(&mut self) -> i64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            let rest = &text[self.mark..];
            for (off, line) in line_starts(rest) {
                let mut w = line.split_whitespace();
                if let (Some(Ok(n)), Some("n")) = (w.next().map(str::parse::<i64>), w.next()) {
                    self.mark += off + line.len();
                    return n;
                }
            }
            assert!(Instant::now() < deadline, "no numbered line; terminal shows: {rest:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn next_count_or_last_numbered(&mut self) -> i64 {
        std::thread::sleep(Duration::from_millis(300));
        let text = self.text();
        let last = line_starts(&text)
            .into_iter()
            .filter_map(|(_, l)| {
                let mut w = l.split_whitespace();
                match (w.next().map(str::parse::<i64>), w.next()) {
                    (Some(Ok(n)), Some("n")) => Some(n),
                    _ => None,
                }
            })
            .last()
            .expect("the pipeline printed");
        self.mark = text.len();
        last
    }
}

#[test]
fn background_job_with_output_to_a_file_restores_detached() {
    let dir = TempDir::new("shell-job-background");
    let images = dir.join("images");
    let out = dir.join("out");
    let mut a = Terminal::open(24, 80);
    a.type_line(&format!("{} > {} 2>&1 &", workload_path("test_mm").display(), out.display()));
    let pid = find(a.bash.id() as i32, "test_mm");
    let count = |out: &std::path::Path| std::fs::read_to_string(out).unwrap_or_default().lines().filter(|l| l.starts_with("t1 ")).count();
    let deadline = Instant::now() + WAIT;
    while count(&out) < 3 {
        assert!(Instant::now() < deadline, "the background job does not write");
        std::thread::sleep(Duration::from_millis(20));
    }
    dump_job(pid, &images);
    assert!(gone(pid));
    let n = count(&out);
    let mut b = Terminal::open(24, 80);
    b.type_line(&format!("{CRUST} restore -j -d -D {}", images.display()));
    b.expect("restored");
    b.expect("$ ");
    let deadline = Instant::now() + WAIT;
    while count(&out) < n + 3 {
        assert!(Instant::now() < deadline, "the restored job does not write to its file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&out).unwrap();
    let t1: Vec<i64> = text.lines().filter_map(|l| l.strip_prefix("t1 ")?.parse().ok()).collect();
    assert!(t1.windows(2).all(|w| w[1] == w[0] + 1), "t1 counts on without a gap: {t1:?}");
    // SAFETY: the restored job belongs to this test.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(gone(pid));
    drop(b);
}

#[test]
fn job_of_another_user_keeps_its_credentials_when_root_restores_it() {
    let dir = TempDir::new("shell-job-user");
    let images = dir.join("images");
    let mut a = Terminal::open(24, 80);
    a.type_line(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups {}",
        workload_path("test_mm").display()
    ));
    let pid = find(a.bash.id() as i32, "test_mm");
    let last = {
        a.next_count("t1");
        a.next_count("t1")
    };
    let ids = |pid: i32| -> Vec<String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:") || l.starts_with("Groups:")).map(str::to_string).collect()
    };
    let before = ids(pid);
    assert!(before[0].contains("65534"), "the job runs as nobody: {before:?}");
    dump_job(pid, &images);
    assert!(gone(pid));
    let last = a.next_count_or_last("t1").max(last);
    let mut b = Terminal::open(24, 80);
    b.type_line(&format!("{CRUST} restore -j -D {}", images.display()));
    assert_eq!(b.next_count("t1"), last + 1, "the job counts on under root's terminal");
    assert_eq!(ids(pid), before, "credentials are the dumped ones");
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        assert!(status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().skip(1).all(|u| u == "65534")), "every thread: {status}");
    }
    b.key(0x03);
    assert!(gone(pid));
}
