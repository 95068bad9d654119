//! `crust swrk FD`: criu's RPC as runc and podman speak it. A client of
//! the test's own (a SOCK_SEQPACKET socketpair, crust started with its end
//! as fd 3, one criu_req / criu_resp per packet) drives VERSION,
//! FEATURE_CHECK, CHECK, DUMP and RESTORE of test_mm with the notifications
//! answered and their order checked, PRE_DUMP then DUMP with parent_img,
//! options crust refuses, and damaged requests.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use common::job::{counters, restore, Job, STEP};
use common::{collect_text, wait_child, TempDir, CRUST};
use crust::rpc::proto::{
    CgroupRoot, CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp,
};
use prost::Message;

/// One `crust swrk 3`, and the test's end of its socket.
struct Swrk {
    sock: OwnedFd,
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Swrk {
    fn start() -> Swrk {
        Swrk::start_as(Path::new(CRUST), &["swrk", "3"])
    }

    /// `program args...` with the server's end of a fresh socketpair as fd 3.
    fn start_as(program: &Path, args: &[&str]) -> Swrk {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array it is given.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
        assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
        // SAFETY: both fds are new and ours alone.
        let (sock, server) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let server_fd = server.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: only dup2 and fcntl (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself would keep close-on-exec: clear it then.
                let r = if server_fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(server_fd, 3) };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        drop(server);
        let stderr = collect_text(child.stderr.take().expect("piped stderr"));
        Swrk { sock, child, stderr }
    }

    fn send_raw(&self, bytes: &[u8]) {
        // SAFETY: send from a live buffer of the given length.
        let r = unsafe { libc::send(self.sock.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        assert_eq!(r, bytes.len() as isize, "send: {}", std::io::Error::last_os_error());
    }

    fn send(&self, req: &CriuReq) {
        self.send_raw(&req.encode_to_vec());
    }

    /// The next response, as runc reads it (40 KiB at most).
    fn recv(&self) -> CriuResp {
        let mut buf = vec![0u8; 40 * 1024];
        let mut pfd = libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one live pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, STEP.as_millis() as i32) };
        assert_eq!(ready, 1, "no response within {STEP:?}; crust's stderr: {}", self.stderr.lock().unwrap());
        // SAFETY: recv into a live buffer of the given length.
        let n = unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n > 0, "no response (recv {n}); crust's stderr: {}", self.stderr.lock().unwrap());
        assert!((n as usize) < buf.len(), "a response too large for runc");
        CriuResp::decode(&buf[..n as usize]).expect("a criu_resp")
    }

    /// Sends `req`, answers every notification with `answer` (by its name),
    /// and returns them in order with their pids, and the final response.
    fn converse(&self, req: &CriuReq, answer: impl Fn(&str) -> bool) -> (Vec<(String, Option<i32>)>, CriuResp) {
        self.send(req);
        let mut heard = Vec::new();
        loop {
            let resp = self.recv();
            if resp.r#type != CriuReqType::Notify as i32 {
                return (heard, resp);
            }
            let n = resp.notify.expect("a notification carries criu_notify");
            let name = n.script.expect("a notification names its point");
            let ok = answer(&name);
            heard.push((name, n.pid));
            self.send(&CriuReq { r#type: CriuReqType::Notify as i32, notify_success: Some(ok), ..Default::default() });
        }
    }

    /// Closes the test's end and waits for crust: its exit status and stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        drop(self.sock);
        let status = wait_child(&mut self.child, STEP).expect("crust swrk exits once the socket is closed");
        // The reader thread ends with crust's stderr.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stderr)
    }
}

fn req(kind: CriuReqType, opts: Option<CriuOpts>) -> CriuReq {
    CriuReq { r#type: kind as i32, opts, ..Default::default() }
}

/// The images directory opened as runc opens it: an fd of the caller's.
fn open_dir(dir: &Path) -> std::fs::File {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::File::open(dir).unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
}

/// The options runc sends for a checkpoint of a tree in the host's
/// namespaces (no root, no external mounts), with notifications on.
fn runc_like(images: &std::fs::File, pid: Option<i32>) -> CriuOpts {
    CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        pid,
        log_level: Some(4),
        log_file: Some("crust.log".into()),
        manage_cgroups: Some(true),
        manage_cgroups_mode: Some(crust::rpc::proto::CriuCgMode::Soft as i32),
        notify_scripts: Some(true),
        shell_job: Some(false),
        leave_running: Some(false),
        tcp_established: Some(false),
        ext_unix_sk: Some(false),
        file_locks: Some(false),
        empty_ns: Some(0),
        orphan_pts_master: Some(true),
        auto_dedup: Some(false),
        lazy_pages: Some(false),
        config_file: Some("/nonexistent/criu/runc.conf".into()),
        ..Default::default()
    }
}

fn names(heard: &[(String, Option<i32>)]) -> Vec<&str> {
    heard.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn version_features_and_check_on_one_connection() {
    let s = Swrk::start();
    let v = s.converse(&req(CriuReqType::Version, None), |_| true).1;
    assert!(v.success && v.r#type == CriuReqType::Version as i32, "{v:?}");
    let v = v.version.expect("VERSION answers criu_version");
    // As runc reads it: major * 10000 + minor * 100 (+ sublevel; a gitid rounds up).
    let number = v.major_number * 10000 + v.minor_number * 100 + v.sublevel.unwrap_or(0);
    assert_eq!((number, v.gitid), (crust::CRIU_COMPAT_VERSION.number() as i32, None), "crust provides criu 3.17's behaviour");

    let asked = CriuReq { features: Some(CriuFeatures { mem_track: Some(true), lazy_pages: Some(true), pidfd_store: None }), ..req(CriuReqType::FeatureCheck, None) };
    let f = s.converse(&asked, |_| true).1;
    assert!(f.success, "{f:?}");
    let f = f.features.expect("FEATURE_CHECK answers criu_features");
    assert_eq!((f.mem_track, f.lazy_pages, f.pidfd_store), (Some(true), Some(false), None), "only what was asked, truthfully");

    let c = s.converse(&req(CriuReqType::Check, None), |_| true).1;
    assert!(c.success && c.r#type == CriuReqType::Check as i32, "{c:?}");
    let (status, stderr) = s.finish();
    assert!(status.success(), "crust swrk ends 0 when the caller closes: {status:?} {stderr}");
}

#[test]
fn dump_and_restore_with_every_notification_answered() {
    let tmp = TempDir::new("swrk-dump-restore");
    let mut job = Job::start("test_mm", &[], tmp.path());
    job.ready();
    for _ in 0..4 {
        job.line(STEP);
    }
    let images_path = tmp.join("images");
    let images = open_dir(&images_path);

    let s = Swrk::start();
    let (heard, resp) = s.converse(&req(CriuReqType::Dump, Some(runc_like(&images, Some(job.pid)))), |_| true);
    assert!(resp.success, "dump over RPC failed: {resp:?}");
    assert_eq!(resp.r#type, CriuReqType::Dump as i32);
    assert_eq!(names(&heard), ["pre-dump", "network-lock", "post-dump"], "dump's notifications in criu's order");
    assert!(images_path.join("inventory.img").exists(), "post-dump came before the images were in place?");
    let (status, stderr) = s.finish();
    assert!(status.success(), "criu must exit 0 after a DUMP (runc checks): {status:?} {stderr}");
    let log = std::fs::read_to_string(images_path.join("crust.log")).expect("the log file asked for, in the images dir");
    assert!(log.contains("DUMP done"), "{log}");
    job.reap_original();
    job.drain();
    let last = counters(&job.history);
    assert_eq!(last.len(), 2, "both threads counted before the dump: {:?}", job.history);

    let s = Swrk::start();
    let mut opts = runc_like(&images, None);
    opts.rst_sibling = Some(true);
    opts.log_file = Some("restore.log".into());
    // While crust waits for the answer to post-restore, it surely runs:
    // the root's parent then is the caller (rst_sibling), not crust.
    let parent_at_post_restore = std::cell::RefCell::new(None);
    let (heard, resp) = s.converse(&req(CriuReqType::Restore, Some(opts)), |n| {
        if n == "post-restore" {
            *parent_at_post_restore.borrow_mut() = common::proc_status_field(job.pid, "PPid");
        }
        true
    });
    assert!(resp.success, "restore over RPC failed: {resp:?}");
    assert_eq!(resp.restore.as_ref().map(|r| r.pid), Some(job.pid), "the response names the restored root");
    assert_eq!(
        names(&heard),
        ["pre-restore", "setup-namespaces", "post-setup-namespaces", "post-restore", "pre-resume", "network-unlock", "post-resume"],
        "restore's notifications"
    );
    let post_restore = heard.iter().find(|(n, _)| n == "post-restore").unwrap();
    assert_eq!(post_restore.1, Some(job.pid), "post-restore carries the restored root's pid (runc waits on it)");
    let ppid = parent_at_post_restore.into_inner();
    assert_eq!(ppid, Some(std::process::id().to_string()), "rst_sibling: the root is the caller's child, not crust's");
    let (status, stderr) = s.finish();
    assert!(status.success(), "criu must exit 0 after a RESTORE: {status:?} {stderr}");
    job.adopt_restored();
    job.assert_counts_on_from(&last);
    job.expect_ok();
}

#[test]
fn a_failed_notification_stops_the_dump_and_the_tree_runs_on() {
    let tmp = TempDir::new("swrk-notify-fails");
    let mut job = Job::start("test_mm", &[], tmp.path());
    job.ready();
    let images_path = tmp.join("images");
    let images = open_dir(&images_path);
    let s = Swrk::start();
    let (heard, resp) = s.converse(&req(CriuReqType::Dump, Some(runc_like(&images, Some(job.pid)))), |n| n != "network-lock");
    assert_eq!(names(&heard), ["pre-dump", "network-lock"], "nothing is sent after the failed step");
    assert!(!resp.success, "{resp:?}");
    let msg = resp.cr_errmsg.unwrap_or_default();
    assert!(msg.contains("network-lock"), "the error names the step the caller failed: {msg}");
    let (status, _) = s.finish();
    assert!(!status.success() && status.code() != Some(101), "{status:?}");
    assert!(!images_path.join("inventory.img").exists(), "a failed dump leaves no images");
    let before = job.drain().len();
    for _ in 0..4 {
        job.line(STEP);
    }
    assert!(job.history.len() >= before + 4, "the tree runs on");
    job.expect_ok();
}

#[test]
fn pre_dump_then_dump_with_parent_img_on_one_connection() {
    let tmp = TempDir::new("swrk-pre-dump");
    let mut job = Job::start("test_mm", &[], tmp.path());
    job.ready();
    let pre_path = tmp.join("pre");
    let final_path = tmp.join("final");
    let (pre, fin) = (open_dir(&pre_path), open_dir(&final_path));

    let s = Swrk::start();
    // runc's order: the feature check, then the pre-dump.
    let asked = CriuReq { features: Some(CriuFeatures { mem_track: Some(true), ..Default::default() }), ..req(CriuReqType::FeatureCheck, None) };
    assert_eq!(s.converse(&asked, |_| true).1.features.and_then(|f| f.mem_track), Some(true));
    let mut opts = runc_like(&pre, Some(job.pid));
    opts.track_mem = Some(true);
    let (heard, resp) = s.converse(&req(CriuReqType::PreDump, Some(opts)), |_| true);
    assert!(resp.success && resp.r#type == CriuReqType::PreDump as i32, "{resp:?}");
    assert_eq!(names(&heard), ["pre-dump", "post-dump"]);
    for _ in 0..4 {
        job.line(STEP);
    }
    // The connection stays open after a PRE_DUMP for the next request.
    let mut opts = runc_like(&fin, Some(job.pid));
    opts.parent_img = Some("../pre".into());
    opts.track_mem = Some(true);
    let (_, resp) = s.converse(&req(CriuReqType::Dump, Some(opts)), |_| true);
    assert!(resp.success, "{resp:?}");
    let (status, stderr) = s.finish();
    assert!(status.success(), "{status:?} {stderr}");
    assert_eq!(std::fs::read_link(final_path.join("parent")).unwrap(), Path::new("../pre"), "the dump is a child of the pre-dump");
    let stats = common::crit_show(&final_path.join("stats-dump"));
    let skipped = common::num(&stats["entries"][0]["dump"]["pages_skipped_parent"]);
    assert!(skipped > 0, "pages unchanged since the pre-dump are left to it: {stats}");
    job.reap_original();
    job.drain();
    let last = counters(&job.history);
    let out = restore(&final_path, &[]);
    assert!(out.status.success(), "restore of the chain: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    job.assert_counts_on_from(&last);
    job.expect_ok();
}

#[test]
fn options_crust_cannot_honour_are_refused_and_the_tree_runs_on() {
    let tmp = TempDir::new("swrk-refused");
    let mut job = Job::start("test_mm", &[], tmp.path());
    job.ready();
    let images_path = tmp.join("images");
    let images = open_dir(&images_path);
    let s = Swrk::start();
    let mut opts = runc_like(&images, Some(job.pid));
    opts.lazy_pages = Some(true);
    opts.skip_mnt = vec!["/etc/hosts".into()];
    opts.cg_root = vec![CgroupRoot { ctrl: Some("memory".into()), path: "/x".into() }];
    let (heard, resp) = s.converse(&req(CriuReqType::Dump, Some(opts)), |_| true);
    assert!(heard.is_empty(), "nothing started: {heard:?}");
    assert!(!resp.success, "{resp:?}");
    let msg = resp.cr_errmsg.clone().unwrap_or_default();
    assert!(msg.contains("lazy_pages") && msg.contains("skip_mnt"), "every refused option is named: {msg}");
    assert!(!msg.contains("cg_root"), "cg_root is taken: {msg}");
    let (status, _) = s.finish();
    assert!(!status.success() && status.code() != Some(101), "{status:?}");
    let log = std::fs::read_to_string(images_path.join("crust.log")).expect("the log file is written for a refusal too");
    assert!(log.contains("Error (crust):") && log.contains("lazy_pages"), "runc quotes the log's Error lines: {log}");
    assert!(!images_path.join("inventory.img").exists());

    // A field crust's schema lacks is refused by number, not dropped.
    let s = Swrk::start();
    // type DUMP (field 1), then opts (field 2) with field 99 (varint 1) in them.
    let mut opts = runc_like(&images, Some(job.pid)).encode_to_vec();
    opts.extend([0x98, 0x06, 0x01]);
    let mut raw = vec![0x08, CriuReqType::Dump as u8, 0x12];
    prost::encoding::encode_varint(opts.len() as u64, &mut raw);
    raw.extend(&opts);
    s.send_raw(&raw);
    let resp = s.recv();
    assert!(!resp.success, "{resp:?}");
    assert!(resp.cr_errmsg.unwrap_or_default().contains("criu_opts field 99"));
    let (status, _) = s.finish();
    assert!(!status.success() && status.code() != Some(101), "{status:?}");

    let before = job.drain().len();
    for _ in 0..4 {
        job.line(STEP);
    }
    assert!(job.history.len() >= before + 4, "the tree runs on");
    job.expect_ok();
}

#[test]
fn damaged_and_unknown_requests_get_clear_errors() {
    // An unknown request type: answered, and the connection goes on.
    let s = Swrk::start();
    let r = s.converse(&CriuReq { r#type: 77, ..Default::default() }, |_| true).1;
    assert!(!r.success && r.cr_errmsg.unwrap_or_default().contains("77"));
    let r = s.converse(&req(CriuReqType::PageServer, None), |_| true).1;
    assert!(!r.success && r.cr_errmsg.unwrap_or_default().contains("PAGE_SERVER"));
    let r = s.converse(&req(CriuReqType::Version, None), |_| true).1;
    assert!(r.success);
    let (status, _) = s.finish();
    assert!(status.success());

    // Bytes that are no criu_req: an error response, and crust ends with a message.
    let s = Swrk::start();
    s.send_raw(&[0xff, 0xff, 0xff, 0x01]);
    let r = s.recv();
    assert!(!r.success, "{r:?}");
    assert!(r.cr_errmsg.as_deref().unwrap_or_default().contains("damaged"), "{r:?}");
    let (status, stderr) = s.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("damaged") && !stderr.contains("panicked"), "{stderr}");

    // A DUMP naming an fd the caller does not have.
    let s = Swrk::start();
    let opts = CriuOpts { images_dir_fd: 999, pid: Some(1), ..Default::default() };
    let r = s.converse(&req(CriuReqType::Dump, Some(opts)), |_| true).1;
    assert!(!r.success && r.cr_errmsg.unwrap_or_default().contains("images_dir_fd 999"));
    s.finish();

    // crust swrk with no socket at all.
    let out = common::crust(&[common::os("swrk"), common::os("7")], STEP);
    let err = common::assert_clean_failure(&out, "swrk on a closed fd");
    assert!(err.contains("fd 7"), "{err}");
}

#[test]
fn crust_named_criu_serves_swrk() {
    let tmp = TempDir::new("swrk-argv0");
    let criu = tmp.join("criu");
    std::os::unix::fs::symlink(CRUST, &criu).unwrap();
    let s = Swrk::start_as(&criu, &["swrk", "3"]);
    let v = s.converse(&req(CriuReqType::Version, None), |_| true).1;
    assert_eq!(v.version.map(|v| (v.major_number, v.minor_number)), Some((3, 17)));
    let (status, _) = s.finish();
    assert!(status.success());
}

/// crust killed in the middle of a DUMP (at network-lock, the tree frozen
/// and crust's worker waiting for the answer): the worker puts the tree back
/// and goes, the caller sees the socket close instead of waiting forever, and
/// the tree runs on.
#[test]
fn a_crust_killed_during_a_dump_leaves_the_tree_running() {
    let tmp = TempDir::new("swrk-killed");
    let mut job = Job::start("test_mm", &[], tmp.path());
    job.ready();
    let images_path = tmp.join("images");
    let images = open_dir(&images_path);
    let s = Swrk::start();
    s.send(&req(CriuReqType::Dump, Some(runc_like(&images, Some(job.pid)))));
    for expected in ["pre-dump", "network-lock"] {
        let n = s.recv();
        assert_eq!(n.notify.and_then(|n| n.script).as_deref(), Some(expected));
        if expected == "pre-dump" {
            s.send(&CriuReq { r#type: CriuReqType::Notify as i32, notify_success: Some(true), ..Default::default() });
        }
    }
    // SAFETY: kill of our own child, crust swrk.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGKILL) };
    let mut pfd = libc::pollfd { fd: s.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll on one live pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(ready, 1, "the socket is closed once crust's worker is gone");
    let mut byte = [0u8; 64];
    // SAFETY: recv into a live buffer.
    let n = unsafe { libc::recv(s.sock.as_raw_fd(), byte.as_mut_ptr().cast(), byte.len(), 0) };
    assert_eq!(n, 0, "no answer, only the end of the conversation");
    let (status, _) = s.finish();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let state = common::proc_stat(job.pid).expect("the tree is there").state;
    assert!(!matches!(state, 't' | 'T'), "the tree is not left stopped: state {state}");
    assert!(!images_path.join("inventory.img").exists());
    let before = job.drain().len();
    for _ in 0..4 {
        job.line(STEP);
    }
    assert!(job.history.len() >= before + 4, "the tree runs on");
    job.expect_ok();
}
