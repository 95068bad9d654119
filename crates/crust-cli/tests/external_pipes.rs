//! Pipes the tree shares with processes outside it (a shell pipeline's
//! reader, a container engine's stdio): refused unless the dump is told they
//! are external, and then restored only when the restore is given a pipe for
//! each (criu's `--inherit-fd fd[N]:pipe:[INO]`), which the tree then uses.
//!
//! Run: `cargo test -p crust-cli --test external_pipes` (as root).

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::*;

const STEP: Duration = Duration::from_secs(60);

/// The key of the pipe at `pid`'s fd `fd`.
fn pipe_key(pid: i32, fd: i32) -> String {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("fd link").to_string_lossy().into_owned();
    assert!(link.starts_with("pipe:["), "fd {fd} of {pid} is a pipe: {link}");
    link
}

/// test_mm's "tN COUNTER" line: (N, COUNTER).
fn counter(line: &str) -> (u32, u64) {
    let (t, n) = line.split_once(' ').unwrap_or_else(|| panic!("test_mm line {line:?}"));
    (t[1..].parse().expect("thread number"), n.parse().expect("counter"))
}

#[test]
fn a_pipe_to_a_process_outside_is_refused_unless_external_and_comes_back_only_when_given() {
    common::job::become_subreaper();
    let tmp = TempDir::new("ext-pipes");
    let images = tmp.join("images");
    // test_mm's stdout and stderr are pipes this test reads.
    let mut w = Workload::spawn("test_mm", &[]);
    w.ready();
    let pid = w.pid.to_string();
    let (out_key, err_key) = (pipe_key(w.pid, 1), pipe_key(w.pid, 2));

    // Not said to be external: refused, naming this process, and it runs on.
    let plain = crust(&[os("dump"), os("-t"), os(&pid), os("-D"), images.as_os_str()], STEP);
    let err = assert_clean_failure(&plain, "dump of a tree whose stdout is a pipe to the test");
    let me = std::process::id();
    assert!(err.contains(&format!("process {me}")) && err.contains(&format!("--external {out_key}")), "the refusal names the holder and the way: {err}");
    assert_no_inventory(&images);
    assert_running_untraced(w.pid, Duration::from_secs(2));
    w.drain();
    w.line(STEP);

    // Said to be external: dumped.
    let out = crust(&dump_args(&pid, &images, &[]), STEP);
    assert!(out.status.success(), "dump with --external: {}", String::from_utf8_lossy(&out.stderr));
    assert!(w.wait_eof(STEP), "the dump killed test_mm");
    let mut last = [0u64; 3];
    for l in w.drain().iter().chain(w.history.iter()).filter(|l| l.starts_with('t')) {
        let (t, n) = counter(l);
        last[t as usize] = last[t as usize].max(n);
    }
    let _ = w.wait_exit(STEP);

    // Restored without being given the pipes: refused before anything is made.
    let bare = crust(&[os("restore"), os("-D"), images.as_os_str(), os("-d")], STEP);
    let err = assert_clean_failure(&bare, "restore without the external pipes");
    assert!(err.contains(&format!("--inherit-fd fd[N]:{out_key}")) && err.contains(&err_key), "the refusal names both pipes: {err}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "no process is left after the refused restore");

    // Given two pipes of this test's: the restored test_mm writes into them.
    let (out_rd, out_wr) = nix::unistd::pipe().expect("pipe");
    let (_err_rd, err_wr) = nix::unistd::pipe().expect("pipe");
    let restored = restore_giving(&images, &[(&out_wr, 3, &out_key), (&err_wr, 4, &err_key)]);
    assert!(restored.status.success(), "restore given the pipes: {}", String::from_utf8_lossy(&restored.stderr));
    drop((out_wr, err_wr));
    assert_eq!(pipe_key(w.pid, 1), format!("pipe:[{}]", inode(&out_rd)), "its stdout is the pipe it was given");
    let mut lines = BufReader::new(std::fs::File::from(out_rd)).lines();
    let mut next = [None; 3];
    while next[1].is_none() || next[2].is_none() {
        let (t, n) = counter(&lines.next().expect("a line from the restored test_mm").expect("read"));
        next[t as usize].get_or_insert(n);
    }
    for t in 1..3 {
        assert_eq!(next[t], Some(last[t] + 1), "thread {t} counts on from {} in the pipe it was given", last[t]);
    }
    // SAFETY: kill and reap the restored root, handed to this subreaper.
    unsafe {
        libc::kill(w.pid, libc::SIGKILL);
        libc::waitpid(w.pid, std::ptr::null_mut(), 0);
    }
}

fn inode(fd: &OwnedFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("fd").ino()
}

/// `crust restore -d` with each (fd, N, KEY): our fd as crust's fd N, given
/// as `--inherit-fd fd[N]:KEY`.
fn restore_giving(images: &std::path::Path, given: &[(&OwnedFd, i32, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crust"));
    cmd.arg("restore").arg("-D").arg(images).arg("-d");
    let mut moves = Vec::new();
    for (fd, n, key) in given {
        cmd.arg("--inherit-fd").arg(format!("fd[{n}]:{key}"));
        moves.push((fd.as_raw_fd(), *n));
    }
    // SAFETY: only dup2, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for &(from, to) in &moves {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    run_with_timeout(&mut cmd, STEP)
}
