//! A busybox container run by runc (Debian's runc and busybox-static, see
//! scripts/setup), for the tests of crust as the `criu` that container
//! engines run: [`Container`] makes an OCI bundle whose process counts on
//! its stdout (a pipe the test reads, as criu needs it), runs it detached,
//! and runs runc with crust first in PATH as `criu` ([`crust_as_criu`]).
//! Dropping it kills and deletes the container.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{collect_text, poll, run_with_timeout, CRUST};

pub const RUNC: &str = "runc";
/// A static busybox: the container's whole userland.
pub const BUSYBOX: &str = "/bin/busybox";

/// Whether runc and a static busybox are installed (the tests using them
/// say they are skipped otherwise).
pub fn runc_installed() -> bool {
    Path::new(BUSYBOX).exists() && Command::new(RUNC).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// A directory in `dir` holding only `criu`, a symlink to crust: put first
/// in PATH for runc alone, it makes runc run crust as criu.
pub fn crust_as_criu(dir: &Path) -> PathBuf {
    let bin = dir.join("criu-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(CRUST, bin.join("criu")).unwrap();
    bin
}

/// A runc container of busybox's shell counting: `0`, `1`, ... one line
/// every 100 ms on its stdout.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    out: Arc<Mutex<String>>,
}

impl Container {
    /// Makes the bundle in `dir`/bundle and runs it detached as `id`.
    pub fn counter(dir: &Path, id: &str) -> Container {
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let spec = run_with_timeout(Command::new(RUNC).arg("spec").current_dir(&bundle), Duration::from_secs(30));
        assert!(spec.status.success(), "runc spec: {}", String::from_utf8_lossy(&spec.stderr));
        let path = bundle.join("config.json");
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(["sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"]);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        // A container left by an earlier run under the same name goes first.
        let _ = Command::new(RUNC).args(["delete", "-f", id]).output();
        let mut run = Command::new(RUNC);
        run.args(["run", "-d", id]).current_dir(&bundle).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = run.spawn().expect("running runc");
        let out = collect_text(child.stdout.take().expect("piped stdout"));
        let status = super::wait_child(&mut child, Duration::from_secs(60)).expect("runc run -d returns");
        let c = Container { id: id.to_string(), bundle, out };
        assert!(status.success(), "runc run -d {id} failed: {status:?}");
        c
    }

    /// The last number the container printed (None before its first line).
    pub fn count(&self) -> Option<u64> {
        let text = self.out.lock().unwrap();
        // Whole lines only: the pipe may have given half of the last.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        whole.lines().rev().find_map(|l| l.trim().parse().ok())
    }

    /// What the container printed (since its last restore).
    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits (up to 30 s) until the container printed past `n`; the count then.
    pub fn counts_past(&self, n: Option<u64>) -> u64 {
        poll(Duration::from_secs(30), Duration::from_millis(20), || self.count().filter(|&c| Some(c) > n))
            .unwrap_or_else(|| panic!("container {} did not count past {n:?}: {:?}", self.id, self.out.lock().unwrap()))
    }

    /// `runc ARGS... ID`, with `criu_dir` first in its PATH (if given).
    pub fn runc(&self, args: &[&str], criu_dir: Option<&Path>) -> Output {
        let mut cmd = Command::new(RUNC);
        cmd.args(args).arg(&self.id).current_dir(&self.bundle);
        if let Some(dir) = criu_dir {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        run_with_timeout(&mut cmd, Duration::from_secs(60))
    }

    /// `runc restore -d ARGS... ID` with `criu_dir` first in its PATH: the
    /// restored container's stdio are new pipes of runc's (criu's
    /// inherit_fd), whose output the test reads from then on. runc's exit
    /// status and stderr.
    pub fn restore(&mut self, args: &[&str], criu_dir: &Path) -> (std::process::ExitStatus, String) {
        let path = std::env::var("PATH").unwrap_or_default();
        let mut cmd = Command::new(RUNC);
        cmd.args(["restore", "-d"]).args(args).arg(&self.id).current_dir(&self.bundle).env("PATH", format!("{}:{path}", criu_dir.display()));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running runc restore");
        let out = collect_text(child.stdout.take().expect("piped stdout"));
        let err = collect_text(child.stderr.take().expect("piped stderr"));
        let status = super::wait_child(&mut child, Duration::from_secs(60)).expect("runc restore -d returns");
        self.out = out;
        // runc's own words are written before it exits; the container's
        // stderr (the same pipe) stays open, so the text is read, not awaited.
        std::thread::sleep(Duration::from_millis(50));
        let err = err.lock().unwrap().clone();
        (status, err)
    }

    /// The container's init as runc's state gives it (0 when none).
    pub fn pid(&self) -> i32 {
        let out = self.runc(&["state"], None);
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        state["pid"].as_i64().unwrap_or(0) as i32
    }

    /// runc's word on the container's status ("running", "stopped", ...).
    pub fn status(&self) -> String {
        let out = self.runc(&["state"], None);
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        state["status"].as_str().unwrap_or("gone").to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(RUNC).args(["kill", &self.id, "KILL"]).output();
        let _ = Command::new(RUNC).args(["delete", "-f", &self.id]).output();
    }
}
