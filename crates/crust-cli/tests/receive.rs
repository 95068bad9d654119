//! The destination of a migration, driven frame by frame: `crust receive`
//! (what ssh:// runs over there) is fed a real dump's images on its standard
//! input, the way `crust migrate` sends them, so that each step can be
//! watched: the tree is built and held stopped (nothing of it runs) until the
//! source says go; a link lost before that kills it unrun; a pages stream
//! that does not match its pagemap is refused. Nothing is left either way.
//!
//! Frames: a kind byte, a u32 LE length, the payload (ssh:// has no tags).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::job::{counters, dump, Job, STEP};
use common::{poll, proc_stat, TempDir, CRUST};

const HELLO: u8 = 1;
const FILE: u8 = 2;
const DATA: u8 = 3;
const END_FILE: u8 = 4;
const CHECK: u8 = 5;
const RESTORE: u8 = 6;
const GO: u8 = 7;
const OK: u8 = 20;
const ERR: u8 = 21;

struct Receiver {
    child: Child,
    input: Option<ChildStdin>,
    output: ChildStdout,
    workdir: PathBuf,
}

impl Receiver {
    fn start(workdir: &Path) -> Receiver {
        let mut child = Command::new(CRUST)
            .args(["receive", "-D"])
            .arg(workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning crust receive");
        let input = child.stdin.take();
        let output = child.stdout.take().expect("piped");
        Receiver { child, input, output, workdir: workdir.to_path_buf() }
    }

    fn try_send(&mut self, kind: u8, payload: &[u8]) -> std::io::Result<()> {
        let w = self.input.as_mut().expect("link open");
        let mut frame = vec![kind];
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(payload);
        w.write_all(&frame)
    }

    fn send(&mut self, kind: u8, payload: &[u8]) {
        self.try_send(kind, payload).expect("sending a frame to crust receive");
    }

    /// Sends a file the receiver may refuse part-way: it answers and closes
    /// the link as soon as it sees too many bytes, so a frame after that meets
    /// a closed pipe; the answer says what happened.
    fn send_file_until_refused(&mut self, name: &str, data: &[u8]) {
        let mut frames = vec![(FILE, name.as_bytes())];
        frames.extend(data.chunks(1 << 20).map(|c| (DATA, c)));
        frames.push((END_FILE, &[]));
        for (kind, payload) in frames {
            match self.try_send(kind, payload) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return,
                other => other.expect("sending a frame to crust receive"),
            }
        }
    }

    fn send_file(&mut self, name: &str, data: &[u8]) {
        self.send(FILE, name.as_bytes());
        for chunk in data.chunks(1 << 20) {
            self.send(DATA, chunk);
        }
        self.send(END_FILE, &[]);
    }

    fn answer(&mut self) -> (u8, String) {
        let mut head = [0u8; 5];
        self.output.read_exact(&mut head).expect("an answer from crust receive");
        let mut payload = vec![0u8; u32::from_le_bytes(head[1..].try_into().unwrap()) as usize];
        self.output.read_exact(&mut payload).expect("the answer's payload");
        (head[0], String::from_utf8_lossy(&payload).into_owned())
    }

    fn expect_ok(&mut self, what: &str) -> String {
        let (kind, text) = self.answer();
        assert_eq!(kind, OK, "{what}: crust receive answered {kind}: {text}");
        text
    }

    /// The images of `dir` but the pages, then the check; returns the pages files.
    fn send_images_and_check(&mut self, dir: &Path) -> Vec<(String, Vec<u8>)> {
        let hello = format!(r#"{{"protocol":{},"shell_job":false,"manage_cgroups":"soft","cgroup_roots":[]}}"#, crust::migrate::PROTOCOL);
        self.send(HELLO, hello.as_bytes());
        self.expect_ok("hello");
        let mut pages = Vec::new();
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for name in names {
            let data = std::fs::read(dir.join(&name)).unwrap();
            if name.starts_with("pages-") {
                pages.push((name, data));
            } else {
                self.send_file(&name, &data);
            }
        }
        self.send(CHECK, &[]);
        self.expect_ok("check");
        pages
    }

    /// Ends the link from this side; crust receive's exit status.
    fn close_and_wait(mut self) -> std::process::ExitStatus {
        self.input = None;
        let status = common::wait_child(&mut self.child, STEP).expect("crust receive exits once its input ends");
        assert!(
            !self.workdir.exists() || std::fs::read_dir(&self.workdir).unwrap().next().is_none(),
            "crust receive left {:?}",
            std::fs::read_dir(&self.workdir).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>()
        );
        status
    }
}

/// test_mm dumped into DIR/images (its original killed and reaped).
fn dumped_test_mm(dir: &TempDir) -> (Job, PathBuf) {
    let mut job = Job::start("test_mm", &[], dir.path());
    job.ready();
    for _ in 0..4 {
        job.line(STEP);
    }
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    job.drain();
    (job, images)
}

/// Every thread of `pid` is stopped under the receiver's ptrace.
fn all_threads_traced_stopped(pid: i32) -> bool {
    let tasks = common::proc_tasks(pid);
    !tasks.is_empty()
        && tasks.iter().all(|&t| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{t}/stat"))
                .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('t')))
                .unwrap_or(false)
        })
}

#[test]
fn the_tree_is_held_stopped_until_go_and_then_counts_on() {
    let dir = TempDir::new("receive-go");
    let (mut job, images) = dumped_test_mm(&dir);
    let last = counters(&job.history);
    let mut rx = Receiver::start(&dir.join("work"));
    let pages = rx.send_images_and_check(&images);
    assert_eq!(pages.len(), 1, "test_mm is one process");
    rx.send(RESTORE, &[]);
    rx.send_file(&pages[0].0, &pages[0].1);
    let built = rx.expect_ok("restore");
    assert!(built.contains(&format!("\"root\":{}", job.pid)), "{built}");
    assert!(all_threads_traced_stopped(job.pid), "the built tree waits, stopped");
    std::thread::sleep(Duration::from_millis(300));
    assert!(job.drain().is_empty(), "nothing of the tree runs before go");

    rx.send(GO, &[]);
    rx.expect_ok("go");
    assert!(rx.close_and_wait().success());
    job.adopt_restored();
    job.assert_counts_on_from(&last);
    job.expect_ok();
}

#[test]
fn a_link_lost_before_go_kills_the_held_tree_unrun() {
    let dir = TempDir::new("receive-lost");
    let (mut job, images) = dumped_test_mm(&dir);
    let mut rx = Receiver::start(&dir.join("work"));
    let pages = rx.send_images_and_check(&images);
    rx.send(RESTORE, &[]);
    rx.send_file(&pages[0].0, &pages[0].1);
    rx.expect_ok("restore");
    assert!(all_threads_traced_stopped(job.pid));
    assert!(!rx.close_and_wait().success(), "no go: the receive fails");
    let gone = poll(STEP, Duration::from_millis(10), || proc_stat(job.pid).is_none().then_some(()));
    assert!(gone.is_some(), "the held tree is killed");
    assert!(job.drain().is_empty(), "and it never ran");
}

#[test]
fn pages_that_do_not_match_the_pagemap_are_refused_and_nothing_is_left() {
    let dir = TempDir::new("receive-bad-pages");
    let (mut job, images) = dumped_test_mm(&dir);
    for (extra, what) in [(4096usize, "more bytes than"), (0, "fewer bytes than")] {
        let mut rx = Receiver::start(&dir.join("work"));
        let pages = rx.send_images_and_check(&images);
        let (name, mut data) = pages.into_iter().next().unwrap();
        if extra > 0 {
            data.extend(std::iter::repeat_n(0u8, extra));
        } else {
            data.truncate(data.len() - 4096);
        }
        rx.send(RESTORE, &[]);
        rx.send_file_until_refused(&name, &data);
        let (kind, text) = rx.answer();
        assert_eq!(kind, ERR, "{what}: {text}");
        assert!(text.contains(what) && text.contains(&name), "{text}");
        assert!(!rx.close_and_wait().success());
        assert!(proc_stat(job.pid).is_none(), "{what}: a process with pid {} is left", job.pid);
        assert!(job.drain().is_empty());
    }
}

#[test]
fn a_shared_workdir_and_another_protocol_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("receive-refusals");
    // Others could swap the images in a directory they can write.
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = common::crust(&[common::os("receive"), common::os("-D"), shared.as_os_str()], STEP);
    let err = common::assert_clean_failure(&out, "receive into a directory others can write");
    assert!(err.contains("others cannot write"), "{err}");

    let mut rx = Receiver::start(&dir.join("work"));
    rx.send(HELLO, br#"{"protocol":1,"shell_job":false}"#);
    let (kind, text) = rx.answer();
    assert_eq!(kind, ERR, "{text}");
    assert!(text.contains(&format!("protocol {}", crust::migrate::PROTOCOL)) && text.contains("same crust"), "{text}");
    assert!(!rx.close_and_wait().success());
}
