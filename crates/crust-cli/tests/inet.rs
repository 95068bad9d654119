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
    dump(job.pid, &images, &["--shell-job"]);
    job.reap_original();
    std::fs::write(root.join("after.txt"), "written after the dump\n").unwrap();
    let out = restore(&images, &["--shell-job"]);
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
    let images = dir.join("images");
    dump(job.pid, &images, &["--shell-job"]);
    job.reap_original();
    let out = restore(&images, &["--shell-job"]);
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
    let out = crust(&dump_args(&pid, &images, &["--shell-job"]), STEP);
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
