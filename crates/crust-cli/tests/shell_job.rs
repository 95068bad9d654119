//! Shell jobs: a job started from an interactive bash on one terminal is
//! dumped from elsewhere and restored from an interactive bash on another
//! terminal, where it must go on: output, input, job control, terminal state.
//! The terminals are pty pairs opened by the test.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_clean_failure, crust, dump_args, poll, proc_stat, procs_in_session, workload_path, TempDir, CRUST};

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
                common::close_inherited_fds(None);
                Ok(())
            });
        }
        let bash = cmd.spawn().expect("bash");
        drop(slave);
        let master = File::from(OwnedFd::from(master));
        let seen = common::collect_text(master.try_clone().unwrap());
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

    /// The count of the next complete line after the mark that `count` finds
    /// one in; moves the mark past that line.
    fn next_counted(&mut self, what: &str, count: impl Fn(&str) -> Option<i64>) -> i64 {
        let found = poll(WAIT, Duration::from_millis(10), || {
            let text = self.text();
            let rest = &text[self.mark..];
            line_starts(rest).into_iter().find_map(|(off, line)| Some((count(line)?, off + line.len())))
        });
        let (n, upto) = found.unwrap_or_else(|| panic!("no {what}; terminal shows: {:?}", &self.text()[self.mark..]));
        self.mark += upto;
        n
    }

    /// The last count that `count` finds in a complete line printed so far
    /// (the job is gone); moves the mark to the end.
    fn last_counted(&mut self, what: &str, settle: Duration, count: impl Fn(&str) -> Option<i64>) -> i64 {
        std::thread::sleep(settle);
        let text = self.text();
        let last = line_starts(&text).into_iter().filter_map(|(_, l)| count(l)).last().unwrap_or_else(|| panic!("{what} printed"));
        self.mark = text.len();
        last
    }

    /// The next `tN COUNT` line of test_mm after the mark: its count.
    fn next_count(&mut self, thread: &str) -> i64 {
        self.next_counted(&format!("{thread} line"), |l| thread_count(l, thread))
    }

    fn winsize(&self) -> (u16, u16) {
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize.
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        (ws.ws_row, ws.ws_col)
    }
}

/// COUNT of a `THREAD COUNT` line of test_mm.
fn thread_count(line: &str, thread: &str) -> Option<i64> {
    line.trim_end_matches('\r').strip_prefix(&format!("{thread} "))?.parse().ok()
}

/// N of a `N  n M` line of `cat -n` numbering the pipeline's producer.
fn numbered(line: &str) -> Option<i64> {
    let mut w = line.split_whitespace();
    match (w.next().map(str::parse::<i64>), w.next()) {
        (Some(Ok(n)), Some("n")) => Some(n),
        _ => None,
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

/// The state of process `pid` (None once it is reaped).
fn state(pid: i32) -> Option<char> {
    proc_stat(pid).map(|s| s.state)
}

/// The pid of the process running `comm` in session `sid`.
fn find(sid: i32, comm: &str) -> i32 {
    let found = poll(WAIT, Duration::from_millis(10), || {
        procs_in_session(sid).into_iter().find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().trim() == comm)
    });
    found.unwrap_or_else(|| panic!("no {comm} in session {sid}"))
}

fn dump_job(pid: i32, dir: &std::path::Path) {
    let pid_s = pid.to_string();
    let out = crust(&dump_args(&pid_s, dir, &["--shell-job"]), WAIT);
    assert!(out.status.success(), "dump: {}", String::from_utf8_lossy(&out.stderr));
}

/// Whether the process ends (is reaped, or a zombie) within a bounded time.
fn gone(pid: i32) -> bool {
    poll(WAIT, Duration::from_millis(10), || matches!(state(pid), None | Some('Z')).then_some(())).is_some()
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
    let pid_s = pid.to_string();
    let out = crust(&dump_args(&pid_s, &images, &[]), WAIT);
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
    assert_eq!(b.winsize(), (24, 80), "the new terminal keeps its window size");
    let termios = nix::sys::termios::tcgetattr(&b.master).unwrap();
    assert!(!termios.local_flags.contains(nix::sys::termios::LocalFlags::ECHOCTL), "the job's termios is applied");
    assert_eq!(proc_stat(pid).map(|s| s.session), Some(b.bash.id() as i32), "the job is in the new terminal's session");
    assert!(!a.text()[mark_a..].contains("t1 "), "nothing more on the old terminal");

    // Job control through the restoring shell: Ctrl-Z stops the job, fg resumes it.
    b.key(0x1a);
    b.expect("Stopped");
    let stopped = poll(WAIT, Duration::from_millis(10), || (state(pid) == Some('T')).then_some(()));
    assert!(stopped.is_some(), "Ctrl-Z did not stop the restored job");
    let stopped_at = b.text().len();
    std::thread::sleep(Duration::from_millis(400));
    assert!(!b.text()[stopped_at..].contains("t1 "), "a stopped job prints nothing");
    b.type_line("fg");
    let resumed = b.next_count("t1");
    assert!(resumed > next, "fg resumes the job where it was");
    b.key(0x03);
    assert!(gone(pid), "Ctrl-C ends the restored job");
}

#[test]
fn job_stopped_with_ctrl_z_comes_back_stopped_and_fg_continues_it() {
    let dir = TempDir::new("shell-job-stopped");
    let images = dir.join("images");
    let mut a = Terminal::open(24, 80);
    a.type_line(&workload_path("test_mm").display().to_string());
    let pid = find(a.bash.id() as i32, "test_mm");
    a.next_count("t1");
    a.key(0x1a);
    a.expect("Stopped");
    let stopped = poll(WAIT, Duration::from_millis(10), || (state(pid) == Some('T')).then_some(()));
    assert!(stopped.is_some(), "Ctrl-Z stopped the job");
    let last = a.last_counted("the job", Duration::from_millis(300), |l| thread_count(l, "t1"));

    dump_job(pid, &images);
    assert!(gone(pid), "the dump ends the job");

    let mut b = Terminal::open(24, 80);
    b.type_line(&format!("{CRUST} restore --shell-job -D {}", images.display()));
    b.expect("Stopped");
    let restored = poll(WAIT, Duration::from_millis(10), || (state(pid) == Some('T')).then_some(()));
    assert!(restored.is_some(), "the job is back, stopped");
    let mark = b.text().len();
    std::thread::sleep(Duration::from_millis(400));
    assert!(!b.text()[mark..].contains("t1 "), "a stopped job prints nothing");
    b.type_line("fg");
    assert_eq!(b.next_count("t1"), last + 1, "fg continues it where Ctrl-Z stopped it");
    b.key(0x03);
    assert!(gone(pid), "Ctrl-C ends the restored job");
}

impl Terminal {
    /// The last `tN COUNT` printed so far for `thread` (the job is gone).
    fn next_count_or_last(&mut self, thread: &str) -> i64 {
        self.last_counted("the job", Duration::from_millis(200), |l| thread_count(l, thread))
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
        self.next_counted("numbered line", numbered)
    }

    fn next_count_or_last_numbered(&mut self) -> i64 {
        self.last_counted("the pipeline", Duration::from_millis(300), numbered)
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

/// A job holding /dev/tty (with /dev/null, zero, full, random, urandom) gets
/// it back as its controlling terminal, the restoring one: what it writes
/// there shows on the new terminal, not the old.
#[test]
fn dev_tty_is_reopened_as_the_restoring_terminal() {
    let dir = TempDir::new("shell-job-dev-tty");
    let images = dir.join("images");
    let mut a = Terminal::open(24, 80);
    a.type_line(&format!("{} tty", workload_path("devices").display()));
    a.expect("READY");
    let pid = find(a.bash.id() as i32, "devices");
    dump_job(pid, &images);
    assert!(gone(pid), "the dump ends the job");
    let mut b = Terminal::open(24, 80);
    b.type_line(&format!("{CRUST} restore --shell-job -D {}", images.display()));
    // Back once it runs as itself, untraced: while the restore builds it,
    // it is a fork of crust, briefly running too, and a signal then would
    // hit crust's work.
    let untraced = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let has = |line: [&str; 2]| status.lines().any(|l| l.split_whitespace().eq(line));
        has(["Name:", "devices"]) && has(["TracerPid:", "0"])
    };
    let back = poll(WAIT, Duration::from_millis(10), || (matches!(state(pid), Some('S' | 'R')) && untraced()).then_some(()));
    assert!(back.is_some(), "the job is back");
    // SAFETY: a signal to the restored job.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    b.expect("via /dev/tty");
    b.expect("OK");
    assert!(!a.text().contains("via /dev/tty"), "nothing on the old terminal");
    assert!(gone(pid));
}

/// vim bounds regex matching for 'hlsearch' and 'incsearch' with a POSIX
/// timer (made at its first search, then re-armed for each): restored
/// without it, every search shows E1286 (could not set timeout) or E1285.
#[test]
fn vim_with_a_posix_timer_searches_and_substitutes_after_a_restore() {
    let dir = TempDir::new("shell-job-vim");
    let images = dir.join("images");
    let file = dir.join("text");
    std::fs::write(&file, "one foo two\nthree foo four\nfive six\n").unwrap();
    let mut a = Terminal::open(24, 80);
    a.type_line(&format!(
        "TERM=xterm vim -u NONE -N -n -i NONE -c 'set hlsearch incsearch redrawtime=2000' {}",
        file.display()
    ));
    let pid = find(a.bash.id() as i32, "vim");
    a.expect("five six");
    a.type_line("/foo");
    a.type_line(":echo 'before-' . 41");
    a.expect("before-41");
    let timers = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap();
    assert!(timers.contains("ID:"), "vim has a POSIX timer after a search: {timers:?}");

    dump_job(pid, &images);
    assert!(gone(pid), "the dump ends vim");

    let mut b = Terminal::open(24, 80);
    b.type_line(&format!("{CRUST} restore --shell-job -D {}", images.display()));
    let restored = poll(WAIT, Duration::from_millis(10), || (state(pid).is_some_and(|s| s != 'Z')).then_some(()));
    assert!(restored.is_some(), "vim is back");
    let mark = b.text().len();
    b.key(0x0c);
    b.type_line("/foo");
    b.type_line("n");
    b.type_line(":%s/foo/bar/g");
    b.type_line("/bar");
    b.type_line(":echo 'after-' . (line('$') + 39) . '-' . getline(2)");
    b.expect("after-42-three bar four");
    std::thread::sleep(Duration::from_millis(300));
    let screen = &b.text()[mark..];
    for e in ["E1285", "E1286", "E1287"] {
        assert!(!screen.contains(e), "vim shows {e} after the restore: {screen:?}");
    }
    b.type_line(":q!");
    assert!(gone(pid), ":q! ends the restored vim");
}

/// `n COUNT` of winsize.
fn numbered_n(line: &str) -> Option<i64> {
    line.trim_end_matches('\r').strip_prefix("n ")?.parse().ok()
}

#[test]
fn a_foreground_job_gets_its_own_group_the_terminal_ctrl_c_and_the_new_window_size() {
    let dir = TempDir::new("shell-job-winch");
    let images = dir.join("images");
    let mut a = Terminal::open(50, 150);
    a.type_line(&workload_path("winsize").display().to_string());
    a.expect("size 50x150");
    let pid = find(a.bash.id() as i32, "winsize");
    a.next_counted("a count", numbered_n);
    dump_job(pid, &images);
    assert!(gone(pid), "the dump ends the job");
    let last = a.last_counted("the job", Duration::from_millis(200), numbered_n);

    let mut b = Terminal::open(20, 74);
    b.type_line(&format!("{CRUST} restore --shell-job -D {}", images.display()));
    // SIGWINCH: the program asks the terminal, which kept its own size.
    b.expect("size 20x74");
    assert_eq!(b.winsize(), (20, 74), "the new terminal keeps its window size");
    assert!(b.next_counted("a count", numbered_n) > last, "the program counts on");
    let crust_pid = find(b.bash.id() as i32, "crust");
    let (job, crust_group) = (proc_stat(pid).expect("the job").pgrp, proc_stat(crust_pid).expect("crust").pgrp);
    assert_eq!(job, pid, "the job leads a process group of its own");
    assert_ne!(job, crust_group, "the job is not in crust's process group");
    let foreground = nix::unistd::tcgetpgrp(&b.master).expect("tcgetpgrp").as_raw();
    assert_eq!(foreground, job, "the job is the terminal's foreground group");

    // Ctrl-C reaches the program, not crust; crust then ends as it did.
    b.key(0x03);
    assert!(gone(pid), "Ctrl-C ends the restored program");
    assert!(gone(crust_pid), "crust ends with the job");
    b.type_line("echo status=$?");
    b.expect("status=130");
}
