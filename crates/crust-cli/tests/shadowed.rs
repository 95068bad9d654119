//! Files reopened by path at restore whose path no longer leads to them: on a
//! mount another was mounted over, or on one detached (`umount -l`). A
//! restore would open whatever the path names now, so the dump refuses them,
//! naming the fd or mapping, and the process runs on.
//!
//! Run as root: `cargo test -p crust-cli --test shadowed`.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DUMP_TIMEOUT: Duration = Duration::from_secs(60);

/// Mounts over a directory of the test, every one of them detached on drop
/// (before the temp dir holding it goes).
struct Mounts(PathBuf);

impl Mounts {
    fn tmpfs(&self) {
        let dir = cstr(&self.0);
        // SAFETY: plain C strings, no data argument.
        let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), dir.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
        assert_eq!(rc, 0, "mount tmpfs on {}: {}", self.0.display(), std::io::Error::last_os_error());
    }

    /// Detaches the top mount on the directory (`umount -l`).
    fn detach(&self) -> bool {
        // SAFETY: a plain C string.
        unsafe { libc::umount2(cstr(&self.0).as_ptr(), libc::MNT_DETACH) == 0 }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        while self.detach() {}
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in a temp path")
}

/// `sleep` holding `file` open as its fd 3, in a session of its own; killed
/// and reaped on drop.
struct Holder(std::process::Child);

impl Holder {
    fn start(file: &Path) -> Holder {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exec 3<\"$0\"; exec sleep 1000"]).arg(file);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                close_inherited_fds(None);
                if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
            });
        }
        let h = Holder(cmd.spawn().expect("spawn sh"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{}/comm", h.pid())).unwrap_or_default().trim() != "sleep" {
            assert!(Instant::now() < deadline, "sleep did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        h
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A dump of `pid` that must be refused, naming `names`; the process runs on.
fn assert_refused(pid: i32, images: &Path, names: &[&str]) {
    let pid_s = pid.to_string();
    let out = crust(&dump_args(&pid_s, images, &[]), DUMP_TIMEOUT);
    let err = assert_clean_failure(&out, "dump of a file whose path leads elsewhere");
    for name in names {
        assert!(err.contains(name), "the refusal does not name {name:?}: {err}");
    }
    assert_running_untraced(pid, Duration::from_secs(5));
    assert_no_inventory(images);
}

#[test]
fn an_fd_on_a_mount_hidden_by_another_or_detached_is_refused_and_the_process_runs_on() {
    let dir = TempDir::new("shadowed-fd");
    let d = dir.join("d");
    std::fs::create_dir(&d).unwrap();
    let mounts = Mounts(d.clone());
    // The file is on a tmpfs of its own, so that detaching it leaves nothing
    // at its path.
    mounts.tmpfs();
    let file = d.join("f");
    std::fs::write(&file, "AAAA").unwrap();
    let holder = Holder::start(&file);
    let pid = holder.pid().to_string();
    let file_s = file.to_str().unwrap();

    // Nothing hidden: the dump goes through.
    let out = crust(&dump_args(&pid, &dir.join("plain"), &["--leave-running"]), DUMP_TIMEOUT);
    assert!(out.status.success(), "plain dump: {}", String::from_utf8_lossy(&out.stderr));
    assert_running_untraced(holder.pid(), Duration::from_secs(5));

    // Another tmpfs over the directory, with a file of the same size at the
    // same path: a restore would hand the process "BBBB".
    mounts.tmpfs();
    std::fs::write(&file, "BBBB").unwrap();
    assert_refused(holder.pid(), &dir.join("hidden"), &[&format!("process {pid}: fd 3 ({file_s})"), "now names another file", "hidden by another or detached"]);

    // The mount the file is on detached: the kernel names the file from the
    // detached mount's root ("/f"), where there is no such file here (or
    // another: its inode says).
    assert!(mounts.detach() && mounts.detach(), "umount -l {}", d.display());
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap(), Path::new("/f"));
    let why = if Path::new("/f").exists() { "now names another file" } else { "now names no file" };
    assert_refused(holder.pid(), &dir.join("detached"), &[&format!("process {pid}: fd 3 (/f)"), why]);
}

#[test]
fn a_mapped_file_on_a_hidden_mount_is_refused_and_the_process_runs_on() {
    let dir = TempDir::new("shadowed-map");
    let d = dir.join("d");
    std::fs::create_dir(&d).unwrap();
    let file = d.join("mapped");
    // The memory workload maps FILE privately and closes its fd.
    write_pattern_file(&file, 256 * 1024, 1);
    let mut w = Workload::spawn("memory", &[file.as_os_str()]);
    w.ready();

    let mounts = Mounts(d.clone());
    mounts.tmpfs();
    write_pattern_file(&file, 256 * 1024, 2);
    let pid = w.pid.to_string();
    assert_refused(w.pid, &dir.join("hidden"), &[&format!("/proc/{pid}/map_files/"), file.to_str().unwrap(), "now names another file"]);
    // It runs on, its mapping as it was.
    drop(mounts);
    w.expect_ok_on_usr1();
}
