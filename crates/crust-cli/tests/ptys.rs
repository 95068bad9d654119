//! Pseudo-terminal pairs inside the tree: a server holding a master with
//! its child on the slave comes back whole (settings, session, foreground
//! group, data flowing both ways); what cannot come back is refused by name
//! and the tree goes on as it was.

mod common;

use std::path::Path;

use common::job::{dump, end_session, ready_field, restore, Job};
use common::procstate::ProcState;
use common::{assert_clean_failure, crust, dump_args, TempDir};

/// A restore needs the pty numbers its tree had: the tests of this file
/// take turns, so that one does not take the number another's tree freed.
static PTYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    PTYS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Dumps the job into `images` (which kills it), reaps it and what is left
/// of the session `other` (the shell's, apart from the job's) and restores
/// it; what /proc shows of the tree is the same after as before.
fn dump_and_restore(job: &mut Job, images: &Path, other: i32) {
    let before = ProcState::of_tree(job.pid);
    dump(job.pid, images, &[]);
    job.reap_original();
    end_session(other);
    let out = restore(images, &[]);
    assert!(out.status.success(), "restore from {} failed: {}", images.display(), String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
}

/// A pty pair inside the tree: a server on the master, a shell on the slave
/// leading a session of its own with it as its controlling terminal, a job
/// of the shell in the terminal's foreground. The pair comes back under its
/// number with its termios, window size and packet mode, the shell's session
/// and the job's foreground group (the /proc comparison checks tty_nr and
/// tpgid of each process), and the job answers what the server types; the
/// workload checks it all through its master.
#[test]
fn pty_pair_comes_back_with_its_session_foreground_and_settings() {
    let _turn = one_at_a_time();
    let dir = TempDir::new("ptys-pair");
    let mut job = Job::start("ptys", &[], dir.path());
    let ready = job.ready();
    let (shell, fg, index) = (ready_field(&ready, "shell"), ready_field(&ready, "job"), ready_field(&ready, "index"));
    let images = dir.join("images");
    dump_and_restore(&mut job, &images, shell);
    let infos = common::crit_show(&images.join("tty-info.img"));
    let infos = infos["entries"].as_array().expect("tty-info.img entries");
    let of_index = |e: &&serde_json::Value| e["pty"]["index"].as_u64() == Some(index as u64);
    let master = infos.iter().filter(of_index).find(|e| common::num(&e["rdev"]) == 0x502).expect("the master's entry");
    assert_eq!(master["packet_mode"].as_bool(), Some(true), "packet mode as crit reads it: {master}");
    let slave = infos.iter().filter(of_index).find(|e| common::num(&e["rdev"]) != 0x502).expect("the slave's entry");
    assert_eq!((common::num(&slave["sid"]), common::num(&slave["pgrp"])), (shell as u64, fg as u64), "session and foreground: {slave}");
    assert_eq!(common::num(&slave["winsize"]["ws_col"]), 101);
    let st = common::proc_stat(fg).expect("the job is back");
    assert_eq!((st.session, st.pgrp), (shell, fg));
    job.expect_ok();
    end_session(shell);
}

/// Each pty the restore could not bring back whole is refused by name, and
/// the tree runs on untouched: a master whose slave nobody holds, data
/// queued either way, a locked pair, a slave held outside the tree too.
#[test]
fn ptys_that_cannot_come_back_whole_are_refused() {
    let _turn = one_at_a_time();
    let dir = TempDir::new("ptys-refused");
    let cases = [
        ("alone", "whose slave /dev/pts/{index} no process of the tree holds"),
        ("output", "bytes its slave /dev/pts/{index} wrote not read yet"),
        ("typed", "a pty with 6 bytes written to its slave"),
        ("locked", "a locked pty master"),
        ("outside", "whose slave /dev/pts/{index} process {test} outside the tree holds too"),
    ];
    for (mode, says) in cases {
        let arg = if mode == "outside" { "" } else { mode };
        let case = dir.join(mode);
        std::fs::create_dir(&case).unwrap();
        let mut job = Job::start("ptys", &[arg], &case);
        let ready = job.ready();
        let index = ready_field(&ready, "index");
        let shell = (mode != "alone").then(|| ready_field(&ready, "shell"));
        // The test holds the slave too.
        let _held = (mode == "outside").then(|| std::fs::File::open(format!("/dev/pts/{index}")).expect("opening the slave"));
        let before = ProcState::of_tree(job.pid);
        let images = case.join("images");
        let out = crust(&dump_args(&job.pid.to_string(), &images, &[]), common::job::STEP);
        let err = assert_clean_failure(&out, &format!("dump of a tree with a pty ({mode})"));
        let says = says.replace("{index}", &index.to_string()).replace("{test}", &std::process::id().to_string());
        assert!(err.contains(&says) && err.contains("not supported"), "{mode}: {err}");
        assert!(err.contains(&format!("process {}", job.pid)), "{mode}: the refusal names the master's holder: {err}");
        before.assert_same(&ProcState::of_tree(job.pid), &[]);
        job.expect_ok();
        if let Some(sid) = shell {
            end_session(sid);
        }
    }
}

/// tmux at `sock`, with a clean environment.
fn tmux(sock: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new("tmux");
    cmd.arg("-S")
        .arg(sock)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", sock.parent().unwrap())
        .stdin(std::process::Stdio::null());
    // SAFETY: close_range only, between fork and exec. The tmux server keeps
    // what its first client inherited: nothing of the test's but stdio.
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, common::only_stdio) };
    let out = cmd.output().expect("running tmux");
    assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A tmux server of a test and its pane's shell: both ended on drop (a
/// failed test included).
struct Server<'a> {
    sock: &'a Path,
    pids: [i32; 2],
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux").arg("-S").arg(self.sock).arg("kill-server").output();
        self.pids.iter().for_each(|&p| end_session(p));
    }
}

/// What the pane shows, once it shows `want` (within 10 s).
fn pane_showing(sock: &Path, want: &str) -> String {
    let mut shown = String::new();
    let found = common::poll(std::time::Duration::from_secs(10), std::time::Duration::from_millis(50), || {
        shown = String::from_utf8_lossy(&tmux(sock, &["capture-pane", "-p"]).stdout).into_owned();
        shown.contains(want).then_some(())
    });
    assert!(found.is_some(), "the pane does not show {want:?}: {shown}");
    shown
}

/// A real tmux server (a daemon holding the pane's pty master and a
/// listening unix socket at its -S path) with a bash in its pane, dumped
/// and restored: the same client commands reach it at the same socket, the
/// pane still shows what it showed, and its shell runs what is typed.
#[test]
fn tmux_server_and_its_pane_come_back() {
    let _turn = one_at_a_time();
    common::job::become_subreaper();
    let dir = TempDir::new("ptys-tmux");
    let sock = dir.join("tmux.sock");
    let shell = "env -i PS1='$ ' TERM=dumb bash --norc --noprofile";
    tmux(&sock, &["-f", "/dev/null", "new-session", "-d", "-x", "100", "-y", "30", shell]);
    let field = |f: &str| -> i32 {
        String::from_utf8_lossy(&tmux(&sock, &["display-message", "-p", f]).stdout).trim().parse().expect("a pid")
    };
    let (server, pane) = (field("#{pid}"), field("#{pane_pid}"));
    let _running = Server { sock: &sock, pids: [server, pane] };
    tmux(&sock, &["send-keys", "echo before-$((6*7))", "Enter"]);
    pane_showing(&sock, "before-42");
    let before = ProcState::of_tree(server);
    let images = dir.join("images");
    dump(server, &images, &[]);
    // The server is the test's (a child subreaper's) since tmux daemonized;
    // its pane's shell, in a session of its own, comes to the test too.
    end_session(server);
    end_session(pane);
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore of tmux failed: {}", String::from_utf8_lossy(&out.stderr));
    // tmux's server was forked by its client (outside the tree) and then grew
    // its heap: the kernel keeps the part grown after the fork as a vma of
    // its own (another anon_vma chain), which a restore maps as one [heap].
    // Memory, not terminals: the server's mappings may differ so.
    let server_maps = format!("{server} map ");
    before.assert_same(&ProcState::of_tree(server), &[&server_maps]);
    tmux(&sock, &["send-keys", "echo after-$((6*7))", "Enter"]);
    let shown = pane_showing(&sock, "after-42");
    assert!(shown.contains("before-42"), "the pane lost what it showed: {shown}");
}

/// A pty whose number is taken on the restoring host cannot come back as
/// itself: `crust check` and the restore say so, nothing is left behind, and
/// once the number is free again the restore succeeds.
#[test]
fn a_pty_whose_number_is_taken_here_is_reported_and_nothing_is_made() {
    let _turn = one_at_a_time();
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let dir = TempDir::new("ptys-taken");
    let mut job = Job::start("ptys", &[], dir.path());
    let ready = job.ready();
    let (shell, index) = (ready_field(&ready, "shell"), ready_field(&ready, "index"));
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    end_session(shell);
    // Take /dev/pts/INDEX: the kernel hands out the lowest free number.
    let mut held = Vec::new();
    loop {
        // SAFETY: open(2) of a path literal; the fd is owned at once.
        let fd = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        assert!(fd >= 0, "open /dev/ptmx: {}", std::io::Error::last_os_error());
        // SAFETY: a new fd of our own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut n: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int.
        assert_eq!(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut n) }, 0);
        held.push(fd);
        assert!(n as i32 <= index, "/dev/pts/{index} was taken by someone else meanwhile");
        if n as i32 == index {
            break;
        }
    }
    let says = format!("pty /dev/pts/{index} is taken here");
    let check = crust(&[common::os("check"), common::os("--images"), images.as_os_str()], common::job::STEP);
    assert!(!check.status.success() && String::from_utf8_lossy(&check.stderr).contains(&says), "check: {check:?}");
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "a restore with the pty's number taken");
    assert!(err.contains(&says), "{err}");
    drop(held);
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore once the number is free: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    job.expect_ok();
    end_session(shell);
}
