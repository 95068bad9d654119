//! TCP and UDP sockets (IPv4, IPv6): a workload of our own that checks every
//! option and serves a client after the restore; real servers from Debian
//! (python3 -m http.server, memcached) served a real client before the dump
//! and after the restore; and what a dump or a restore refuses, by name.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use common::job::{dump, restore, Job, STEP};
use common::procstate::ProcState;
use common::{assert_clean_failure, crust, dump_args, os, TempDir};

/// `n` ports free now for TCP and UDP on IPv4 and IPv6, below the ephemeral
/// range (where clients of other tests get theirs), and never the same
/// twice in this test process.
fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, 20_000 + (std::process::id() % 500) as u16 * 20, Ordering::SeqCst, Ordering::SeqCst);
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "no free ports left below 32000");
        // The dual-stack listener covers TCP on both families.
        let free = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind((Ipv6Addr::LOCALHOST, port)).is_ok();
        if free {
            ports.push(port);
        }
    }
    ports
}

/// Dump (which kills the job), reap, restore; /proc of the tree is the same after.
fn dump_and_restore(job: &mut Job, images: &Path, extra: &[&str]) {
    let before = ProcState::of_tree(job.pid);
    dump(job.pid, images, extra);
    job.reap_original();
    let out = restore(images, &[]);
    assert!(out.status.success(), "restore from {} failed: {}", images.display(), String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
}

/// Sends `line` on a new connection to `addr`; the stream, to read the answer later.
fn send_line(addr: SocketAddr, line: &str) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s
}

fn read_all(mut s: TcpStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn isk_entries(images: &Path) -> Vec<serde_json::Value> {
    let files = common::crit_show(&images.join("files.img"));
    files["entries"].as_array().unwrap().iter().filter_map(|e| e.get("isk").cloned()).collect()
}

#[test]
fn listening_bound_and_connected_sockets_keep_their_options_and_serve_after_restore() {
    let dir = TempDir::new("inet-workload");
    let p = free_ports(5);
    let args: Vec<String> = p.iter().map(u16::to_string).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = Job::start("inet", &args, dir.path());
    job.ready();
    let images = dir.join("images");
    dump_and_restore(&mut job, &images, &[]);

    // The images decode with crit, with what crust saw.
    let isk = isk_entries(&images);
    assert_eq!(isk.len(), 7, "seven inet sockets: {isk:?}");
    let by_port = |port: u16, proto: &str| {
        isk.iter().find(|e| common::num(&e["src_port"]) == port as u64 && e["proto"] == proto).unwrap_or_else(|| panic!("no socket on port {port}: {isk:?}"))
    };
    let tcp4 = by_port(p[0], "TCP");
    assert_eq!(common::num(&tcp4["backlog"]), 7, "{tcp4}");
    assert_eq!(tcp4["state"], "LISTEN", "{tcp4}");
    assert_eq!(tcp4["src_addr"][0], "127.0.0.1", "{tcp4}");
    assert_eq!(tcp4["opts"]["so_keepalive"], true, "{tcp4}");
    let tcp6 = by_port(p[1], "TCP");
    assert_eq!(common::num(&tcp6["backlog"]), 3, "{tcp6}");
    assert_eq!(tcp6["v6only"], false, "{tcp6}");
    assert_eq!(tcp6["opts"]["so_bound_dev"], "lo", "{tcp6}");
    let udpc = by_port(p[3], "UDP");
    assert_eq!(common::num(&udpc["dst_port"]), p[2] as u64, "{udpc}");

    // Clients of the restored listeners, over IPv4, and IPv6 to the dual-stack one.
    let c4 = send_line(SocketAddr::from(([127, 0, 0, 1], p[0])), "hello4\n");
    let c6 = send_line(SocketAddr::from((Ipv6Addr::LOCALHOST, p[1])), "hello6\n");
    job.expect_ok();
    assert_eq!(read_all(c4), "ok hello4\n");
    assert_eq!(read_all(c6), "ok hello6\n");
    assert!(job.history.iter().any(|l| l == "udp exchanged"), "{:?}", job.history);
}

/// One HTTP GET of `path` on `port`; the body.
fn http_get(port: u16, path: &str) -> String {
    let mut s = send_line(SocketAddr::from(([127, 0, 0, 1], port)), &format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n"));
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "GET {path}: {out}");
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

/// Waits until something listens on 127.0.0.1:`port`.
fn wait_listening(port: u16) {
    let up = common::poll(Duration::from_secs(20), Duration::from_millis(50), || TcpStream::connect(("127.0.0.1", port)).ok());
    assert!(up.is_some(), "nothing listens on port {port}");
}

/// Waits until the server on `port` has closed every connection the test
/// made to it (none left ESTABLISHED or in CLOSE_WAIT on its side): a dump
/// refuses a connection its peer closed but the server has not yet.
fn wait_server_closed(port: u16) {
    let open = || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let local = format!(":{port:04X}");
        // sl local_address rem_address st ...; 01 ESTABLISHED, 08 CLOSE_WAIT.
        table.lines().skip(1).any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() > 3 && w[1].ends_with(&local) && (w[3] == "01" || w[3] == "08")
        })
    };
    let closed = common::poll(Duration::from_secs(20), Duration::from_millis(10), || (!open()).then_some(()));
    assert!(closed.is_some(), "the server on port {port} keeps a connection of the test open");
}

#[test]
fn python_http_server_serves_a_file_before_and_after_restore() {
    let dir = TempDir::new("inet-http");
    let root = dir.join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello from before the dump\n").unwrap();
    let port = free_ports(1)[0];
    let port_s = port.to_string();
    let mut job = Job::build("http.server", &["-m", "http.server", "--bind", "127.0.0.1", "--directory", root.to_str().unwrap(), &port_s])
        .program(Path::new("/usr/bin/python3"))
        .start(dir.path());
    wait_listening(port);
    assert_eq!(http_get(port, "/hello.txt"), "hello from before the dump\n");
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    std::fs::write(root.join("after.txt"), "written after the dump\n").unwrap();
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert_eq!(http_get(port, "/hello.txt"), "hello from before the dump\n");
    assert_eq!(http_get(port, "/after.txt"), "written after the dump\n");
    job.end_session();
}

/// A memcached command over TCP; the answer up to `end`.
fn memcached_tcp(port: u16, cmd: &str, end: &str) -> String {
    let mut s = send_line(SocketAddr::from(([127, 0, 0, 1], port)), cmd);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&out).ends_with(end) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "memcached closed the connection after {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(out).unwrap()
}

/// A memcached command over UDP (8-byte frame header: id, sequence, count, reserved).
fn memcached_udp(port: u16, cmd: &str) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut msg = vec![0, 7, 0, 0, 0, 1, 0, 0];
    msg.extend_from_slice(cmd.as_bytes());
    s.send_to(&msg, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).expect("an answer from memcached over UDP");
    String::from_utf8_lossy(&buf[8..n]).into_owned()
}

#[test]
fn memcached_keeps_its_keys_and_answers_over_tcp_and_udp_after_restore() {
    let memcached = Path::new("/usr/bin/memcached");
    assert!(memcached.exists(), "memcached is not installed (scripts/setup installs it)");
    let dir = TempDir::new("inet-memcached");
    let ports = free_ports(2);
    let (tcp, udp) = (ports[0].to_string(), ports[1].to_string());
    let mut job = Job::build("memcached", &["-u", "root", "-l", "127.0.0.1", "-p", &tcp, "-U", &udp, "-t", "2"])
        .program(memcached)
        .start(dir.path());
    wait_listening(ports[0]);
    assert_eq!(memcached_tcp(ports[0], "set greeting 0 0 5\r\nhello\r\n", "\r\n"), "STORED\r\n");
    assert!(memcached_udp(ports[1], "get greeting\r\n").contains("hello"));
    wait_server_closed(ports[0]);
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert_eq!(memcached_tcp(ports[0], "get greeting\r\n", "END\r\n"), "VALUE greeting 0 5\r\nhello\r\nEND\r\n");
    assert!(memcached_udp(ports[1], "get greeting\r\n").contains("VALUE greeting 0 5\r\nhello"), "over UDP");
    assert_eq!(memcached_tcp(ports[0], "set later 0 0 2\r\nok\r\n", "\r\n"), "STORED\r\n");
    job.end_session();
}

#[test]
fn an_established_connection_is_refused_by_name_and_the_server_goes_on() {
    let dir = TempDir::new("inet-established");
    let port = free_ports(1)[0];
    let port_s = port.to_string();
    let root = dir.join("www");
    std::fs::create_dir(&root).unwrap();
    let mut job = Job::build("http.server", &["-m", "http.server", "--bind", "127.0.0.1", "--directory", root.to_str().unwrap(), &port_s])
        .program(Path::new("/usr/bin/python3"))
        .start(dir.path());
    wait_listening(port);
    // A connection the server accepts and waits on (an unfinished request).
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = client.local_addr().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = job.pid.to_string();
    let images = dir.join("images");
    let out = crust(&dump_args(&pid, &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump with an established connection");
    let want = format!("an established TCP connection 127.0.0.1:{port} -> {local}");
    assert!(err.contains(&want) && err.contains("--tcp-established"), "{err}");
    assert!(err.contains(&format!("process {}", job.pid)), "{err}");
    drop(client);
    // The server was left running.
    assert_eq!(http_get(port, "/"), http_get(port, "/"));
    job.end_session();
}

#[test]
fn a_port_taken_at_restore_names_its_holder_and_check_names_it_too() {
    let dir = TempDir::new("inet-taken");
    let p = free_ports(5);
    let args: Vec<String> = p.iter().map(u16::to_string).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = Job::start("inet", &args, dir.path());
    job.ready();
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    // Someone else takes the first listener's port meanwhile.
    let thief = TcpListener::bind(("127.0.0.1", p[0])).unwrap();
    let me = format!("process {}", std::process::id());
    let out = crust(&[os("check"), os("--images"), images.as_os_str()], STEP);
    let err = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check passed with port {} taken: {err}", p[0]);
    assert!(err.contains(&format!("port {} is already taken", p[0])) && err.contains(&me), "{err}");
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "restore with a port taken");
    assert!(err.contains(&format!("port {} is already taken", p[0])) && err.contains(&me), "{err}");
    drop(thief);
    // Nothing was left behind: the restore can be made again, and works.
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    let c4 = send_line(SocketAddr::from(([127, 0, 0, 1], p[0])), "again\n");
    let c6 = send_line(SocketAddr::from((Ipv6Addr::LOCALHOST, p[1])), "again6\n");
    job.expect_ok();
    assert_eq!(read_all(c4), "ok again\n");
    assert_eq!(read_all(c6), "ok again6\n");
}

/// A python3 program holding one socket of `case`, printing READY (and
/// LISTENING first, for the cases a client must reach before READY).
const SOCKETS_PY: &str = r#"
import os, socket, sys, time
case, port = sys.argv[1], int(sys.argv[2])
keep = []
if case == "backlog":
    s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen(5); keep.append(s)
elif case == "packet":
    keep.append(socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)))
elif case == "close-wait":
    l = socket.socket(); l.bind(("127.0.0.1", port)); l.listen(1)
    print("LISTENING", flush=True)
    c, _ = l.accept(); l.close(); keep.append(c)
elif case == "fin-wait":
    # Connected to the test's listener, shut down for writing: the FIN is
    # acknowledged, the peer's never comes.
    c = socket.create_connection(("127.0.0.1", port)); c.shutdown(socket.SHUT_WR)
    while c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 5:
        time.sleep(0.01)
    keep.append(c)
elif case == "raw":
    keep.append(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
elif case == "defer-accept":
    s = socket.socket(); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    s.bind(("127.0.0.1", port)); s.listen(5); keep.append(s)
elif case == "multicast":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("239.1.2.3") + socket.inet_aton("127.0.0.1"))
    keep.append(s)
elif case == "half-closed":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("127.0.0.1", port)); s.shutdown(socket.SHUT_WR)
    keep.append(s)
elif case == "prefork":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(16)
    for i in range(2):
        if os.fork() == 0:
            while True:
                c, _ = s.accept(); c.sendall(b"served by %d\n" % os.getpid()); c.close()
    keep.append(s)
elif case == "other-netns":
    # A UDP socket made in a network namespace of its own, passed here.
    import subprocess
    a, b = socket.socketpair()
    code = "import socket, sys; b = socket.socket(fileno=int(sys.argv[1])); u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); socket.send_fds(b, [b'x'], [u.fileno()])"
    subprocess.run(["unshare", "-n", sys.executable, "-c", code, str(b.fileno())], pass_fds=[b.fileno()], check=True)
    _, fds, _, _ = socket.recv_fds(a, 1, 1)
    a.close(); b.close()
    keep.append(socket.socket(fileno=fds[0]))
elif case in ("closed", "reset"):
    # A connection that ended, its fd still open: closed both ways in turn,
    # or reset by the peer (an error waits to be read).
    l = socket.socket(); l.bind(("127.0.0.1", port)); l.listen(1)
    print("LISTENING", flush=True)
    c, _ = l.accept(); l.close()
    if case == "closed":
        assert c.recv(10) == b""
        c.shutdown(socket.SHUT_WR)
    # Until the last ACK (or the reset) is in: TCP_CLOSE (7).
    while c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 7:
        time.sleep(0.01)
    keep.append(c)
    def check(sig, frame):
        assert c.recv(10) == b"", "reads see the end"
        try:
            c.send(b"x")
            print("FAIL a write succeeded", flush=True)
        except BrokenPipeError:
            print("OK", flush=True)
        sys.exit(0)
    import signal
    signal.signal(signal.SIGUSR1, check)
elif case == "bound":
    addr = sys.argv[3]
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind((addr, port)); keep.append(u)
    t = socket.socket(socket.AF_INET6); t.bind((addr, port)); t.listen(5); keep.append(t)
print("READY", flush=True)
while True:
    time.sleep(1)
"#;

fn python_sockets(dir: &TempDir, case: &str, port: u16, extra: &[&str]) -> Job {
    let script = dir.join("sockets.py");
    std::fs::write(&script, SOCKETS_PY).unwrap();
    let port = port.to_string();
    let mut args = vec![script.to_str().unwrap(), case, &port];
    args.extend_from_slice(extra);
    Job::build(case, &args).program(Path::new("/usr/bin/python3")).start(dir.path())
}

#[test]
fn sockets_crust_cannot_restore_exactly_are_refused_by_name_and_left_as_they_were() {
    let cases: &[(&str, &str)] = &[
        ("backlog", "with 1 connection waiting to be accepted"),
        ("packet", "packet sockets are not supported yet"),
        ("close-wait", "in state CLOSE_WAIT"),
        ("fin-wait", "in state FIN_WAIT2 is not supported yet"),
        ("raw", "raw inet sockets (RAW) are not supported yet"),
        ("defer-accept", "inet sockets with TCP_DEFER_ACCEPT set ("),
        ("multicast", "member of multicast group 239.1.2.3 (on interface 1)"),
        ("half-closed", "shut down for writing"),
        ("reset", "a closed TCP connection (on 127.0.0.1:"),
        ("other-netns", "inet sockets of another network namespace than their process's are not supported yet"),
    ];
    for &(case, want) in cases {
        let dir = TempDir::new(&format!("inet-refused-{case}"));
        let port = free_ports(1)[0];
        let listener = (case == "fin-wait").then(|| TcpListener::bind(("127.0.0.1", port)).unwrap());
        let mut job = python_sockets(&dir, case, port, &[]);
        let mut client = None;
        if case == "close-wait" {
            assert_eq!(job.line(STEP), "LISTENING");
            drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
        if case == "reset" {
            assert_eq!(job.line(STEP), "LISTENING");
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            // SO_LINGER {on, 0 s}: close sends a reset.
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: setsockopt reads one struct linger from `linger`, alive for the call.
            let r = unsafe { libc::setsockopt(std::os::fd::AsRawFd::as_raw_fd(&c), libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as u32) };
            assert_eq!(r, 0);
            drop(c);
        }
        job.ready();
        if case == "backlog" {
            client = Some(TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
        std::thread::sleep(Duration::from_millis(200));
        let pid = job.pid.to_string();
        let out = crust(&dump_args(&pid, &dir.join("images"), &[]), STEP);
        let err = assert_clean_failure(&out, case);
        assert!(err.contains(want) && err.contains(&format!("process {}: fd ", job.pid)), "{case}: {err}");
        common::assert_running_untraced(job.pid, STEP);
        drop(client);
        drop(listener);
        job.end_session();
    }
}

/// An IPv6 address on lo for the life of the test, removed on drop.
struct LoAddress(String);

impl LoAddress {
    fn add(addr: &str) -> LoAddress {
        let ok = std::process::Command::new("ip").args(["-6", "addr", "add", &format!("{addr}/128"), "dev", "lo", "nodad"]).status().unwrap().success();
        assert!(ok, "adding {addr} to lo");
        LoAddress(addr.to_string())
    }

    fn remove(&self) {
        let mut ip = std::process::Command::new("ip");
        // Once removed, it is not there to remove again: ip's complaint is not news.
        let _ = ip.args(["-6", "addr", "del", &format!("{}/128", self.0), "dev", "lo"]).stderr(std::process::Stdio::null()).status();
    }
}

impl Drop for LoAddress {
    fn drop(&mut self) {
        self.remove();
    }
}

#[test]
fn an_address_missing_at_restore_is_reported_by_check_and_nothing_is_made() {
    let dir = TempDir::new("inet-address");
    let addr = format!("fd00:c0de::{:x}", std::process::id() % 0xffff);
    let lo = LoAddress::add(&addr);
    let port = free_ports(1)[0];
    let mut job = python_sockets(&dir, "bound", port, &[&addr]);
    job.ready();
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    lo.remove();
    let out = crust(&[os("check"), os("--images"), images.as_os_str()], STEP);
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check passed without {addr}: {text}");
    let want = format!("address {addr} is not present on this host");
    assert_eq!(text.matches(&want).count(), 2, "both sockets (UDP and TCP) reported at once: {text}");
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "restore without the address");
    assert!(err.contains(&want), "{err}");
    // With the address back, the same images restore.
    let _lo = LoAddress::add(&addr);
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert!(TcpStream::connect((addr.parse::<Ipv6Addr>().unwrap(), port)).is_ok(), "the restored listener accepts");
    job.end_session();
}

/// "served by PID" from a prefork worker.
fn served_by(port: u16) -> i32 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.trim().strip_prefix("served by ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("answer {out:?}"))
}

#[test]
fn a_listener_shared_by_forked_workers_is_one_socket_again_and_they_accept_on_it() {
    let dir = TempDir::new("inet-prefork");
    let port = free_ports(1)[0];
    let mut job = python_sockets(&dir, "prefork", port, &[]);
    job.ready();
    let workers: std::collections::BTreeSet<i32> = (0..6).map(|_| served_by(port)).collect();
    let images = dir.join("images");
    dump_and_restore(&mut job, &images, &[]);
    let isk = isk_entries(&images);
    assert_eq!(isk.len(), 1, "one listening socket, however many processes hold it: {isk:?}");
    for _ in 0..6 {
        let by = served_by(port);
        assert!(workers.contains(&by) || common::proc_stat(by).is_some_and(|s| s.ppid == job.pid), "served by {by}, not a worker of {}", job.pid);
    }
    job.end_session();
}

#[test]
fn a_connection_that_ended_with_its_fd_open_reads_the_end_after_restore() {
    let dir = TempDir::new("inet-closed");
    let port = free_ports(1)[0];
    let mut job = python_sockets(&dir, "closed", port, &[]);
    assert_eq!(job.line(STEP), "LISTENING");
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    job.ready();
    // The server's end was shut down both ways in turn: the client reads the end.
    assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0);
    let images = dir.join("images");
    dump_and_restore(&mut job, &images, &[]);
    let isk = isk_entries(&images);
    let closed = isk.iter().find(|e| e["state"] == "CLOSE").unwrap_or_else(|| panic!("no closed socket: {isk:?}"));
    assert_eq!(closed["shutdown"], "BOTH", "{closed}");
    job.expect_ok();
}

/// Starts udpqueue on four free ports and queues the datagram it expects
/// from outside its tree (from 127.0.0.3:P4, a socket gone before the dump
/// ends).
fn udpqueue(dir: &TempDir) -> Job {
    let p = free_ports(4);
    let args: Vec<String> = p.iter().map(u16::to_string).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = Job::start("udpqueue", &args, dir.path());
    job.ready();
    let outside = UdpSocket::bind(("127.0.0.3", p[3])).unwrap();
    outside.send_to(b"outside", ("127.0.0.1", p[0])).unwrap();
    job
}

/// Datagrams queued on UDP sockets (IPv4, IPv6 and IPv4-mapped senders, an
/// empty one, one of 60000 bytes, one on a connected socket, one from a
/// sender outside the tree, another from a sender whose port is still
/// taken) are read back after the restore, in order, each from its sender
/// and to its address; sk-queues.img holds them.
#[test]
fn udp_datagrams_queued_are_read_back_in_order_from_their_senders_after_restore() {
    let dir = TempDir::new("inet-udpqueue");
    let mut job = udpqueue(&dir);
    let images = dir.join("images");
    dump_and_restore(&mut job, &images, &[]);
    let queues = common::crit_show(&images.join("sk-queues.img"));
    assert_eq!(queues["entries"].as_array().map(Vec::len), Some(7), "seven datagrams: {queues}");
    job.expect_ok();
}

/// A dump that lets the tree run on leaves every datagram queued, and the
/// options it peeked with as they were.
#[test]
fn a_leave_running_dump_leaves_udp_queues_as_they_were() {
    let dir = TempDir::new("inet-udpqueue-running");
    let mut job = udpqueue(&dir);
    dump(job.pid, &dir.join("images"), &["--leave-running"]);
    job.expect_ok();
}

/// Peek offsets (SO_PEEK_OFF) of unix stream and datagram sockets and of a
/// UDP socket, over queued data, and of a unix socket with nothing queued:
/// each is the same after the restore and a peek starts where it did
/// (the queues refilled first); the dump peeked through them and left them.
#[test]
fn peek_offsets_of_unix_and_udp_sockets_are_kept() {
    let dir = TempDir::new("inet-peekoff");
    let port = free_ports(1)[0].to_string();
    let mut job = Job::start("peekoff", &[&port], dir.path());
    job.ready();
    dump_and_restore(&mut job, &dir.join("images"), &[]);
    job.expect_ok();
}

/// Two UDP sockets: one holding a datagram built up with MSG_MORE and not
/// sent, one connected to a port nobody listens on, holding the ICMP error
/// of its last send, not yet read. SIGUSR1 checks both are as they were.
const UDP_PENDING_PY: &str = r#"
import errno, signal, socket, sys, time
kind = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
if kind == "more":
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    s.sendto(b"held", socket.MSG_MORE, sink.getsockname())
else:
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))
    port = gone.getsockname()[1]
    gone.close()
    s.connect(("127.0.0.1", port))
    s.send(b"x")
    time.sleep(0.2)
def check(*_):
    if kind == "more":
        s.sendto(b"!", sink.getsockname())
        ok = sink.recv(100) == b"held!"
    else:
        ok = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    print("OK" if ok else "FAIL the socket lost its state", flush=True)
    sys.exit(0)
signal.signal(signal.SIGUSR1, check)
print("READY", flush=True)
while True:
    signal.pause()
"#;

#[test]
fn udp_sockets_with_data_not_sent_or_an_error_not_read_are_refused_and_keep_it() {
    let dir = TempDir::new("inet-udp-pending");
    let script = dir.join("udp_pending.py");
    std::fs::write(&script, UDP_PENDING_PY).unwrap();
    for (kind, says) in [("more", "not yet sent"), ("error", "error not yet read")] {
        let mut job = Job::build(&format!("udp_pending_{kind}"), &[script.to_str().unwrap(), kind]).program(Path::new("/usr/bin/python3")).start(dir.path());
        job.ready();
        let out = crust(&dump_args(&job.pid.to_string(), &dir.join(format!("images-{kind}")), &[]), STEP);
        let err = assert_clean_failure(&out, kind);
        assert!(err.contains("UDP socket") && err.contains(says) && err.contains(&format!("process {}", job.pid)), "{kind}: the refusal says why: {err}");
        job.expect_ok();
    }
}
