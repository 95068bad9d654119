//! Unix sockets beyond connected pairs: bound, listening with connections
//! waiting, datagram and seqpacket queues, half-closed, and a datagram
//! socket connected to a logger outside the tree (`--ext-unix-sk`). The
//! workload (unixsk) checks itself after the restore.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::job::{dump, restore, Job, STEP};
use common::procstate::ProcState;
use common::{assert_clean_failure, crust, dump_args, num, TempDir};

fn restore_ok(job: &mut Job, dir: &Path) {
    let out = restore(dir, &[]);
    assert!(out.status.success(), "restore from {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
}

/// The unix socket entries of files.img.
fn sockets(images: &Path) -> Vec<serde_json::Value> {
    let files = common::crit_show(&images.join("files.img"));
    files["entries"].as_array().unwrap().iter().filter_map(|e| e.get("usk").cloned()).collect()
}

/// A socket's name as crit shows it, without the path's terminating NUL
/// (kept in the image as the kernel reports it; crit writes "=00").
fn name_of(usk: &serde_json::Value) -> String {
    let name = usk["name"].as_str().unwrap_or_default();
    name.strip_suffix("=00").unwrap_or(name).to_string()
}

#[test]
fn bound_listening_queued_and_half_closed_unix_sockets_survive_restore() {
    let dir = TempDir::new("unixsk-all");
    let dir_s = dir.path().to_str().unwrap().to_string();
    let mut job = Job::start("unixsk", &["all", &dir_s], dir.path());
    job.ready();
    let images = dir.join("images");
    let before = ProcState::of_tree(job.pid);
    dump(job.pid, &images, &[]);
    job.reap_original();
    // The dumped sockets' files stay behind, stale: the restore unlinks them
    // and binds again.
    for f in ["listen.sock", "dgram.sock"] {
        assert!(std::fs::symlink_metadata(dir.join(f)).is_ok(), "{f} is left by the dumped socket");
    }
    restore_ok(&mut job, &images);
    // An accepted connection is not bound to its listener's name again (as
    // criu does): the /proc view of the tree is otherwise the same.
    before.assert_same(&ProcState::of_tree(job.pid), &[]);

    let socks = sockets(&images);
    let listener = socks.iter().find(|u| name_of(u).ends_with("listen.sock") && u["state"] == "LISTEN").expect("the listener");
    assert_eq!(num(&listener["backlog"]), 7, "{listener}");
    assert!(listener.get("file_perms").is_some(), "the socket file's mode and owner are kept: {listener}");
    let waiting = socks.iter().filter(|u| num(&u["peer"]) == num(&listener["ino"])).count();
    assert_eq!(waiting, 2, "two connections wait to be accepted, their peer is the listener: {socks:?}");
    let queues = common::crit_show(&images.join("sk-queues.img"));
    let mut lengths: Vec<u64> = queues["entries"].as_array().unwrap().iter().map(|e| num(&e["length"])).collect();
    lengths.sort();
    // ping, pong, first, second message, from e, abstract, a, bb, ccc, g1, g22, tail, left
    assert_eq!(lengths, [1, 2, 2, 3, 3, 4, 4, 4, 4, 5, 6, 8, 14], "one entry per message: {queues}");
    job.expect_ok();
}

#[test]
fn a_program_logging_to_a_socket_outside_its_tree_moves_with_ext_unix_sk() {
    let dir = TempDir::new("unixsk-syslog");
    let log = dir.join("log.sock");
    let listener = UnixDatagram::bind(&log).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut job = Job::start("unixsk", &["syslog", log.to_str().unwrap()], dir.path());
    job.ready();
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"before");

    // Without the option: refused, naming the peer and its holder (this test).
    let images = dir.join("refused");
    let pid_s = job.pid.to_string();
    let out = crust(&dump_args(&pid_s, &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a socket connected outside the tree");
    let holder = format!("held by process {}", std::process::id());
    assert!(err.contains(log.to_str().unwrap()) && err.contains(&holder) && err.contains("--ext-unix-sk"), "{err}");

    let images = dir.join("images");
    dump(job.pid, &images, &["--ext-unix-sk"]);
    job.reap_original();
    let socks = sockets(&images);
    let ext = socks.iter().find(|u| num(&u["uflags"]) == 1).expect("an entry for the peer outside the tree");
    assert_eq!(name_of(ext), log.to_str().unwrap());
    // With the logger gone, crust check says so before anything is made.
    drop(listener);
    std::fs::remove_file(&log).unwrap();
    let check = crust(&[common::os("check"), common::os("--images"), images.as_os_str()], STEP);
    let text = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(!check.status.success() && text.contains(&format!("no socket is bound at {}", log.display())), "crust check: {text}");
    let listener = UnixDatagram::bind(&log).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    restore_ok(&mut job, &images);
    job.expect_ok();
    let n = listener.recv(&mut buf).unwrap();
    assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("after {}", job.pid), "the restored program logs to the same listener");
}

#[test]
fn a_leave_running_dump_leaves_every_unix_socket_and_queue_as_it_was() {
    let dir = TempDir::new("unixsk-live");
    let dir_s = dir.path().to_str().unwrap().to_string();
    let mut job = Job::start("unixsk", &["all", &dir_s], dir.path());
    job.ready();
    dump(job.pid, &dir.join("images"), &["-R"]);
    // The workload reads every queue in order, accepts, checks its names.
    job.expect_ok();
}

#[test]
fn a_restore_does_not_take_a_path_a_live_socket_or_another_file_holds() {
    let dir = TempDir::new("unixsk-taken");
    let dir_s = dir.path().to_str().unwrap().to_string();
    let mut job = Job::start("unixsk", &["all", &dir_s], dir.path());
    job.ready();
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    let path = dir.join("dgram.sock");
    std::fs::remove_file(&path).unwrap();
    let squatter = UnixDatagram::bind(&path).unwrap();
    // Found before anything is made: by crust check, and by the restore's own check.
    let says = format!("to be bound at {}, but a live socket is bound there", path.display());
    let check = crust(&[common::os("check"), common::os("--images"), images.as_os_str()], STEP);
    let text = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(!check.status.success() && text.contains(&says), "crust check: {text}");
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "a restore onto a live socket's path");
    assert!(err.contains(&says), "{err}");
    drop(squatter);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"not a socket").unwrap();
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "a restore onto a regular file's path");
    assert!(err.contains(&format!("to be bound at {}, but a file that is not a socket is there", path.display())), "{err}");
    std::fs::remove_file(&path).unwrap();
    // An abstract name a live socket holds, likewise.
    use std::os::linux::net::SocketAddrExt;
    let name = format!("crust-unixsk-dgram-{}", job.pid);
    let squatter = UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "a restore onto a live socket's abstract name");
    assert!(err.contains(&format!("to be bound at @{name}, but a live socket is bound there")), "{err}");
    drop(squatter);
    // With the names free again, the same images restore.
    restore_ok(&mut job, &images);
    job.expect_ok();
}

#[test]
fn what_unix_sockets_cannot_carry_is_refused_by_name() {
    let dir = TempDir::new("unixsk-refused");
    let dir_s = dir.path().to_str().unwrap().to_string();
    let cases = [
        ("named-sender", format!("datagrams queued from the named socket {dir_s}/s.sock")),
        ("deleted", format!("bound unix sockets whose file {dir_s}/r.sock was deleted are not supported yet")),
        ("credentials", "messages queued on a unix socket receiving credentials (SO_PASSCRED, SO_PASSSEC) are not supported yet".to_string()),
    ];
    for (mode, says) in cases {
        let _ = std::fs::remove_file(dir.join("r.sock"));
        let _ = std::fs::remove_file(dir.join("s.sock"));
        let mut job = Job::start("unixsk", &[mode, &dir_s], dir.path());
        job.ready();
        let before = ProcState::of_tree(job.pid);
        let pid_s = job.pid.to_string();
        let out = crust(&dump_args(&pid_s, &dir.join(mode), &[]), STEP);
        let err = assert_clean_failure(&out, mode);
        assert!(err.contains(&says) && err.contains(&format!("process {}", job.pid)), "{mode}: {err}");
        before.assert_same(&ProcState::of_tree(job.pid), &[]);
        job.expect_ok();
    }
}

fn tmux(sock: &Path, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("tmux");
    cmd.arg("-S").arg(sock).args(args);
    // SAFETY: close_range only, between fork and exec. The tmux server keeps
    // what its first client inherited: nothing of the test's but stdio.
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, common::only_stdio) };
    let out = common::run_with_timeout(&mut cmd, STEP);
    assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reap `pid` if it was handed to this process (a subreaper), and wait until it is gone.
fn wait_gone(pid: i32) {
    // SAFETY: waitpid on a pid that may be our child; ECHILD otherwise.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    let gone = common::poll(STEP, Duration::from_millis(20), || {
        // SAFETY: as above.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert!(gone.is_some(), "process {pid} is still there");
}

/// A real server holding a listening unix socket (and pty masters): a tmux
/// server answers its clients at its socket path after the restore, with
/// its session, window and pane contents.
#[test]
fn a_tmux_server_answers_at_its_socket_after_restore() {
    let dir = TempDir::new("unixsk-tmux");
    let sock = dir.join("tmux.sock");
    tmux(&sock, &["new-session", "-d", "-s", "t", "echo hello-from-tmux; exec sleep 1000"]);
    let pid: i32 = tmux(&sock, &["display-message", "-p", "#{pid}"]).trim().parse().unwrap();
    let shown = common::poll(STEP, Duration::from_millis(20), || tmux(&sock, &["capture-pane", "-p", "-t", "t"]).contains("hello-from-tmux").then_some(()));
    assert!(shown.is_some(), "the pane shows its output");
    // The server and its pane's process, which the dump kills and this
    // process (a subreaper) may be handed to reap.
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let tree: Vec<i32> = std::iter::once(pid).chain(children.split_whitespace().map(|c| c.parse().unwrap())).collect();
    let images = dir.join("images");
    dump(pid, &images, &[]);
    tree.iter().for_each(|&p| wait_gone(p));
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore of tmux failed: {}", String::from_utf8_lossy(&out.stderr));
    let pane = tmux(&sock, &["capture-pane", "-p", "-t", "t"]);
    let windows_before = tmux(&sock, &["list-windows", "-t", "t"]).lines().count();
    // "t:" is the session: a bare "t" is first looked up as a window name
    // prefix, and the window is named "tmux" (its pane's process before the
    // exec) until tmux's rename, up to 500 ms after the pane starts: then it
    // means window 0, and new-window fails with "index 0 in use".
    tmux(&sock, &["new-window", "-t", "t:", "exec sleep 1000"]);
    let windows = tmux(&sock, &["list-windows", "-t", "t"]).lines().count();
    tmux(&sock, &["kill-server"]);
    tree.iter().for_each(|&p| wait_gone(p));
    assert!(pane.contains("hello-from-tmux"), "the pane keeps its contents: {pane:?}");
    assert_eq!((windows_before, windows), (1, 2), "the restored server makes a new window");
}

/// A program with fds in flight (SCM_RIGHTS, sent and not yet received) on
/// a stream or datagram socket pair, after a few plain bytes: a pipe's write
/// end, a regular file at offset 4 that the program keeps open too, and one
/// end of a socket pair whose other end it keeps. After the restore it
/// receives them, in order, and checks each: the pipe carries its bytes to
/// the read end, the file's offset is the one of its own fd (one open file),
/// the socket talks to its peer. The socket pair comes first in one run (its
/// kept end is dumped before the queue that holds its peer) and last in the
/// other.
const IN_FLIGHT_PY: &str = r#"
import array, os, signal, socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "stream" else socket.SOCK_DGRAM
if kind == socket.SOCK_DGRAM:
    c1, c2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
a, b = socket.socketpair(socket.AF_UNIX, kind)
r, w = os.pipe()
f = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT, 0o600)
os.write(f, b"0123456789")
os.lseek(f, 4, os.SEEK_SET)
if kind == socket.SOCK_STREAM:
    c1, c2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
a.send(b"hd")
for tag, fd in ((b"p", w), (b"f", f), (b"s", c2.fileno())):
    a.sendmsg([tag], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
os.close(w)
c2.close()
def fail(*what):
    print("FAIL", *what, flush=True); sys.exit(1)
def check(*_):
    data, fds = b"", array.array("i")
    b.setblocking(False)
    while True:
        try:
            msg, anc, flags, _ = b.recvmsg(16, socket.CMSG_SPACE(3 * fds.itemsize))
        except BlockingIOError:
            break
        data += msg
        for level, t, cdata in anc:
            if level == socket.SOL_SOCKET and t == socket.SCM_RIGHTS:
                fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    if data != b"hdpfs" or len(fds) != 3:
        fail("the fds in flight are gone:", data, list(fds))
    p, g, s = fds
    os.write(p, b"ok")
    if os.read(r, 2) != b"ok":
        fail("the pipe in flight does not write to the read end")
    if os.lseek(g, 0, os.SEEK_CUR) != 4 or os.lseek(f, 0, os.SEEK_CUR) != 4:
        fail("the file in flight is not at offset 4")
    os.lseek(g, 7, os.SEEK_SET)
    if os.lseek(f, 0, os.SEEK_CUR) != 7:
        fail("the file in flight and the program's own fd are two open files")
    if os.read(g, 3) != b"789":
        fail("the file in flight reads wrong")
    s = socket.socket(fileno=s)
    s.send(b"ping")
    if c1.recv(4) != b"ping":
        fail("the socket in flight does not reach its peer")
    c1.send(b"pong")
    if s.recv(4) != b"pong":
        fail("the socket in flight does not hear its peer")
    print("OK", flush=True)
    sys.exit(0)
signal.signal(signal.SIGUSR1, check)
print("READY", flush=True)
while True:
    signal.pause()
"#;

#[test]
fn fds_in_flight_come_back_in_flight_and_work() {
    let dir = TempDir::new("unixsk-in-flight");
    let script = dir.join("in_flight.py");
    std::fs::write(&script, IN_FLIGHT_PY).unwrap();
    for kind in ["stream", "dgram"] {
        let file = dir.join(format!("{kind}.data"));
        let mut job = Job::build("in_flight", &[script.to_str().unwrap(), kind, file.to_str().unwrap()])
            .program(Path::new("/usr/bin/python3"))
            .start(dir.path());
        job.ready();
        let images = dir.join(kind);
        let before = ProcState::of_tree(job.pid);
        dump(job.pid, &images, &[]);
        job.reap_original();
        let queues = common::crit_show(&images.join("sk-queues.img"));
        let rights: Vec<_> = queues["entries"].as_array().unwrap().iter().filter_map(|e| e.get("scm")).collect();
        assert_eq!(rights.len(), 3, "{kind}: three items carry fds: {queues}");
        // A stream's plain bytes go with the fds after them (no peek tells
        // where they part); datagrams keep their bounds.
        let lengths: Vec<u64> = queues["entries"].as_array().unwrap().iter().map(|e| num(&e["length"])).collect();
        let expected: &[u64] = if kind == "stream" { &[3, 1, 1] } else { &[2, 1, 1, 1] };
        assert_eq!(lengths, expected, "{kind}: {queues}");
        restore_ok(&mut job, &images);
        before.assert_same(&ProcState::of_tree(job.pid), &[]);
        job.expect_ok();
    }
}

/// A kind of file crust does not take in flight (an eventfd) is refused by
/// name, and the dump leaves it in flight: it is still there to receive.
const EVENTFD_IN_FLIGHT_PY: &str = r#"
import array, os, signal, socket, sys
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
e = os.eventfd(0)
a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [e]))])
os.close(e)
def check(*_):
    fds = array.array("i")
    msg, anc, flags, _ = b.recvmsg(16, socket.CMSG_SPACE(fds.itemsize))
    for level, t, data in anc:
        if level == socket.SOL_SOCKET and t == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if msg != b"x" or len(fds) != 1:
        print("FAIL the fd in flight is gone", msg, list(fds), flush=True); sys.exit(1)
    os.eventfd_write(fds[0], 5)
    print("OK" if os.eventfd_read(fds[0]) == 5 else "FAIL the eventfd does not count", flush=True)
    sys.exit(0)
signal.signal(signal.SIGUSR1, check)
print("READY", flush=True)
while True:
    signal.pause()
"#;

#[test]
fn an_eventfd_in_flight_is_refused_by_name_and_left_in_flight() {
    let dir = TempDir::new("unixsk-eventfd-in-flight");
    let script = dir.join("in_flight.py");
    std::fs::write(&script, EVENTFD_IN_FLIGHT_PY).unwrap();
    let mut job = Job::build("in_flight", &[script.to_str().unwrap()]).program(Path::new("/usr/bin/python3")).start(dir.path());
    job.ready();
    let before = ProcState::of_tree(job.pid);
    let pid_s = job.pid.to_string();
    let out = crust(&dump_args(&pid_s, &dir.join("images"), &[]), STEP);
    let err = assert_clean_failure(&out, "eventfd");
    assert!(err.contains("fds in flight (SCM_RIGHTS)") && err.contains("eventfd") && err.contains(&format!("process {}", job.pid)), "{err}");
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
    job.expect_ok();
}
