//! Established TCP connections (`--tcp-established`, `--tcp-close`) and the
//! network lock that holds them between the dump and the restore: the
//! tcpconn workload (both ends in the tree, or the client outside it, in the
//! test), redis with a redis-cli client, memcached with a TCP client and
//! python3 -m http.server with a keep-alive one connected across the dump, and the
//! lock's lifetime (refused, failed and -R dumps, a crust killed mid-dump).
//! Each test has ports of its own.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::job::{dump, ready_field, restore, Job, STEP};
use common::{assert_clean_failure, crust, os, poll, TempDir};

/// crust's nftables tables in place (the network locks).
fn crust_tables() -> Vec<String> {
    let out = Command::new("nft").args(["list", "tables"]).output().expect("running nft");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_prefix("table inet ")).filter(|n| n.starts_with("crust_lock_")).map(str::to_string).collect()
}

/// crust's tables whose comment names the dump in `images` (other tests
/// make tables of their own meanwhile).
fn locks_for(images: &Path) -> Vec<String> {
    let dir = images.display().to_string();
    crust_tables()
        .into_iter()
        .filter(|t| {
            let out = Command::new("nft").args(["list", "table", "inet", t]).output().expect("running nft");
            String::from_utf8_lossy(&out.stdout).contains(&dir)
        })
        .collect()
}

/// Removes, when dropped, every lock a dump in its directory left: a test
/// that fails between its dump and its restore leaves no table behind.
struct Locks(std::path::PathBuf);

impl Drop for Locks {
    fn drop(&mut self) {
        for t in locks_for(&self.0) {
            let _ = Command::new("nft").args(["delete", "table", "inet", &t]).status();
        }
    }
}

/// The lock a dump in `images` left, from crust's notes.
fn kept_lock(images: &Path) -> Option<String> {
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(images.join("crust-meta.json")).ok()?).ok()?;
    meta["network_lock"].as_str().map(str::to_string)
}

fn restore_ok(job: &mut Job, images: &Path, extra: &[&str]) {
    let out = restore(images, extra);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
}

/// The number of tcp-stream images in `images`.
fn streams(images: &Path) -> usize {
    std::fs::read_dir(images).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("tcp-stream-")).count()
}

#[test]
fn a_connection_inside_the_tree_survives_with_its_queued_bytes() {
    let dir = TempDir::new("tcp-pair");
    let _locks = Locks(dir.path().to_path_buf());
    let mut job = Job::start("tcpconn", &["47101", "pair", "100000", "300000", "open"], dir.path());
    job.ready();
    let images = dir.join("images");
    dump(job.pid, &images, &["--tcp-established"]);
    assert_eq!(streams(&images), 2, "one tcp-stream image per end");
    let lock = kept_lock(&images).expect("the dump records its lock");
    assert!(crust_tables().contains(&lock), "the lock stays until the restore");
    let files = common::crit_show(&images.join("files.img"));
    let isk: Vec<_> = files["entries"].as_array().unwrap().iter().filter_map(|e| e.get("isk")).collect();
    let state = |s: &str| isk.iter().filter(|e| e["state"] == s).count();
    assert_eq!((state("ESTABLISHED"), state("LISTEN")), (2, 1), "both ends, and the listener: {files}");
    job.reap_original();
    restore_ok(&mut job, &images, &["--tcp-established"]);
    assert!(!crust_tables().contains(&lock), "the restore removes the lock once the tree runs");
    // Each end reads the other's bytes (queued, then new), then an orderly end.
    job.expect_ok();
}

#[test]
fn without_the_option_the_dump_refuses_naming_the_connection() {
    let dir = TempDir::new("tcp-refused");
    let _locks = Locks(dir.path().to_path_buf());
    let mut job = Job::start("tcpconn", &["47111", "pair", "1000", "1000", "open"], dir.path());
    let child = ready_field(&job.ready(), "child");
    let pid = job.pid.to_string();
    let images = dir.join("images");
    let out = crust(&[os("dump"), os("-t"), os(&pid), os("-D"), images.as_os_str()], STEP);
    let err = assert_clean_failure(&out, "a dump of a tree with an established connection");
    assert!(err.contains("established TCP connection") && err.contains("--tcp-established"), "{err}");
    assert!(err.contains(":47111") && (err.contains(&format!("process {pid}")) || err.contains(&format!("process {child}"))), "names the connection and its holder: {err}");
    assert_eq!(locks_for(&images), Vec::<String>::new(), "no lock left");
    job.expect_ok();
}

#[test]
fn a_failed_dump_and_a_leave_running_dump_leave_no_lock_and_a_live_connection() {
    let dir = TempDir::new("tcp-failed");
    let _locks = Locks(dir.path().to_path_buf());
    let lock = format!("flock:{}", dir.join("tcpconn.lock").display());
    let mut job = Job::start("tcpconn", &["47121", "pair", "50000", "50000", "open", &lock], dir.path());
    job.ready();
    let pid = job.pid.to_string();
    // Refused for its flock, after the connections were locked and read.
    let images = dir.join("images");
    let out = crust(&[os("dump"), os("-t"), os(&pid), os("-D"), images.as_os_str(), os("--tcp-established")], STEP);
    let err = assert_clean_failure(&out, "a dump of a tree holding a flock");
    assert!(err.contains("lock"), "{err}");
    assert_eq!(locks_for(&images), Vec::<String>::new(), "a failed dump removes its lock");
    // -R: the sockets leave repair mode, the lock goes.
    dump(job.pid, &dir.join("images-r"), &["--tcp-established", "--file-locks", "-R"]);
    assert_eq!(locks_for(&dir.join("images-r")), Vec::<String>::new(), "a -R dump removes its lock");
    assert!(kept_lock(&dir.join("images-r")).is_some(), "it had one");
    job.expect_ok();
}

#[test]
fn tcp_close_restores_connections_closed() {
    let dir = TempDir::new("tcp-close");
    let _locks = Locks(dir.path().to_path_buf());
    let mut job = Job::start("tcpconn", &["47131", "pair", "1000", "1000", "closed"], dir.path());
    job.ready();
    let images = dir.join("images");
    dump(job.pid, &images, &["--tcp-close"]);
    assert_eq!(streams(&images), 0, "no state is kept");
    assert_eq!(kept_lock(&images), None, "nor locked");
    job.reap_original();
    // The images hold connections: a restore must be told what to do with them.
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "a restore of connections without --tcp-close");
    assert!(err.contains("--tcp-close"), "{err}");
    restore_ok(&mut job, &images, &["--tcp-close"]);
    job.expect_ok();
}

/// The byte at offset i of the workload's server stream / of the client's.
fn down(i: usize) -> u8 {
    (i.wrapping_mul(7) + i / 251) as u8
}
fn up(i: usize) -> u8 {
    (i.wrapping_mul(13) + i / 241 + 1) as u8
}

#[test]
fn a_client_outside_the_tree_keeps_its_connection_to_a_restored_server() {
    let dir = TempDir::new("tcp-outside");
    let _locks = Locks(dir.path().to_path_buf());
    // Few enough bytes queued that the server's window stays open: what the
    // client sends while the server is gone leaves at once.
    let (n, m) = (20_000usize, 300_000usize);
    let (ns, ms) = (n.to_string(), m.to_string());
    let mut job = Job::start("tcpconn", &["47141", "server", &ns, &ms, "open"], dir.path());
    job.ready();
    let mut client = TcpStream::connect("127.0.0.1:47141").unwrap();
    assert_eq!(job.line(STEP), "CONNECTED");
    // N bytes queued for the server, which reads nothing before SIGUSR1.
    let upstream: Vec<u8> = (0..n + m).map(up).collect();
    client.write_all(&upstream[..n]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let images = dir.join("images");
    dump(job.pid, &images, &["--tcp-established"]);
    job.reap_original();
    // The server is gone: what the client sends now waits behind the lock
    // (no reset), and arrives once the server is back.
    client.set_nonblocking(true).unwrap();
    let early = client.write(&upstream[n..n + 1000]).expect("the connection is alive meanwhile");
    client.set_nonblocking(false).unwrap();
    assert_eq!(early, 1000);
    // Sent, and sent again, into the lock.
    std::thread::sleep(Duration::from_millis(500));
    restore_ok(&mut job, &images, &["--tcp-established"]);
    job.signal(libc::SIGUSR1);
    let mut writer = client.try_clone().unwrap();
    let rest = upstream[n + early..].to_vec();
    let w = std::thread::spawn(move || {
        writer.write_all(&rest).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    client.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("the server's stream, then EOF, no reset");
    w.join().unwrap();
    assert_eq!(got.len(), n + m, "every byte of the server's stream, once");
    assert!(got.iter().enumerate().all(|(i, b)| *b == down(i)), "in order");
    assert_eq!(job.line(STEP), "OK", "the server read the client's stream whole");
}

/// A dump killed half-way (its worker, by SIGKILL) cannot remove its lock:
/// the tree runs on, held, until `crust network-unlock` removes it; killing
/// the `crust` command instead lets the worker clean up itself.
///
/// The worker is killed at the network-lock point (an action script holds
/// it there): the lock is in place and nothing of the tree is touched yet.
/// A worker killed at any other moment may be inside a thread's injected
/// calls (the thread goes on with crust's registers and every signal
/// blocked) or reading a socket in repair mode, which no process can undo
/// after a SIGKILL: killed at random, 6 in 20 runs ended so.
#[test]
fn a_crust_killed_mid_dump_leaves_a_lock_that_network_unlock_removes() {
    let dir = TempDir::new("tcp-killed");
    let _locks = Locks(dir.path().to_path_buf());
    let mut job = Job::start("tcpconn", &["47151", "pair", "10000", "10000", "open", "mem:768"], dir.path());
    job.ready();
    let images = dir.join("images");
    let (at_lock, go) = (dir.join("at-lock"), dir.join("go"));
    let script = dir.join("hold-at-lock.sh");
    let hold = format!(
        "[ \"$CRTOOLS_SCRIPT_ACTION\" = network-lock ] || exit 0\necho $$ > {}\nwhile [ ! -e {} ]; do sleep 0.02; done\n",
        at_lock.display(),
        go.display()
    );
    std::fs::write(&script, hold).unwrap();
    for kill_worker in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crust"));
        cmd.args(["dump", "-t", &job.pid.to_string(), "-D"]).arg(&images).arg("--tcp-established");
        if kill_worker {
            cmd.arg("--action-script").arg(format!("sh {}", script.display()));
        }
        let mut crust = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let held = kill_worker.then(|| {
            let pid = poll(STEP, Duration::from_millis(5), || std::fs::read_to_string(&at_lock).ok()?.trim().parse::<i32>().ok());
            pid.expect("the dump reaches its network lock")
        });
        let new_lock = poll(STEP, Duration::from_millis(2), || locks_for(&images).into_iter().next());
        let lock = new_lock.expect("the dump locks the connections");
        let victim = if kill_worker {
            let children = std::fs::read_to_string(format!("/proc/{}/task/{}/children", crust.id(), crust.id())).unwrap();
            children.split_whitespace().next().expect("crust's worker").parse::<i32>().unwrap()
        } else {
            crust.id() as i32
        };
        // SAFETY: kill(2) of a process this test started (or its child).
        unsafe { libc::kill(victim, libc::SIGKILL) };
        let _ = crust.wait();
        if let Some(script_pid) = held {
            // The script, orphaned, ends; it may be handed to this process to reap.
            std::fs::write(&go, b"").unwrap();
            let ended = poll(STEP, Duration::from_millis(20), || {
                // SAFETY: waitpid on a pid that may be our child; ECHILD otherwise.
                unsafe { libc::waitpid(script_pid, std::ptr::null_mut(), libc::WNOHANG) };
                (!Path::new(&format!("/proc/{script_pid}")).exists()).then_some(())
            });
            assert!(ended.is_some(), "the action script {script_pid} is still there");
        }
        if kill_worker {
            assert!(crust_tables().contains(&lock), "a killed worker cannot remove its lock");
            let out = common::crust(&[os("network-unlock")], STEP);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("removed {lock}")), "{}", String::from_utf8_lossy(&out.stdout));
        } else {
            let gone = poll(STEP, Duration::from_millis(20), || (!crust_tables().contains(&lock)).then_some(()));
            assert!(gone.is_some(), "the worker of a killed crust removes its lock");
        }
        assert_eq!(locks_for(&images), Vec::<String>::new());
        let _ = std::fs::remove_dir_all(&images);
        // The tree was let go, its connections usable.
        common::assert_running_untraced(job.pid, STEP);
    }
    job.expect_ok();
}

fn redis_cli(port: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", port]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// redis-server with keys set, and a redis-cli client connected across the
/// dump and restore: the same connection (CLIENT ID) answers before and after.
#[test]
fn redis_and_a_connected_client_survive_the_dump() {
    let dir = TempDir::new("tcp-redis");
    let _locks = Locks(dir.path().to_path_buf());
    let port = "47161";
    let conf = format!("port {port}\nbind 127.0.0.1\ndaemonize no\nsave \"\"\nappendonly no\ndir {}\n", dir.path().display());
    std::fs::write(dir.join("redis.conf"), conf).unwrap();
    let mut job = Job::build("redis-server", &[dir.join("redis.conf").to_str().unwrap()]).program(Path::new("/usr/bin/redis-server")).start(dir.path());
    let ok = poll(STEP, Duration::from_millis(50), || (redis_cli(port, &["PING"]) == "PONG").then_some(()));
    assert!(ok.is_some(), "redis answers");
    assert_eq!(redis_cli(port, &["SET", "greeting", "hello"]), "OK");
    // One client connection kept open: commands on stdin, answers on stdout.
    let mut cli = Command::new("redis-cli").args(["-p", port]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut to_cli = cli.stdin.take().unwrap();
    let from_cli = std::io::BufReader::new(cli.stdout.take().unwrap());
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in from_cli.lines().map_while(|l| l.ok()) {
            sink.lock().unwrap().push(l);
        }
    });
    let ask = |to_cli: &mut std::process::ChildStdin, cmd: &str| -> String {
        let n = lines.lock().unwrap().len();
        writeln!(to_cli, "{cmd}").unwrap();
        to_cli.flush().unwrap();
        let start = Instant::now();
        loop {
            if let Some(l) = lines.lock().unwrap().get(n) {
                return l.clone();
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no answer to {cmd}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let id = ask(&mut to_cli, "CLIENT ID");
    assert_eq!(ask(&mut to_cli, "GET greeting"), "hello");
    let images = dir.join("images");
    dump(job.pid, &images, &["--tcp-established"]);
    job.reap_original();
    restore_ok(&mut job, &images, &["--tcp-established"]);
    assert_eq!(ask(&mut to_cli, "CLIENT ID"), id, "the same connection");
    assert_eq!(ask(&mut to_cli, "GET greeting"), "hello");
    assert_eq!(ask(&mut to_cli, "SET after restore"), "OK");
    assert_eq!(redis_cli(port, &["GET", "after"]), "restore", "a new client sees it");
    drop(to_cli);
    let _ = cli.wait();
    job.kill_restored();
}

/// A connection waiting in the listener's accept queue is refused by name;
/// with --skip-in-flight it is left out (criu's option), the dump says so
/// naming the listener, and the rest of the tree comes back. The client
/// left out sees a reset (not a connection that hangs), and the restored
/// listener takes new connections.
#[test]
fn skip_in_flight_leaves_out_connections_not_accepted() {
    let dir = TempDir::new("tcp-inflight");
    let _locks = Locks(dir.path().to_path_buf());
    let mut job = Job::start("tcpconn", &["47171", "pair", "1000", "1000", "open"], dir.path());
    job.ready();
    let mut waiting = TcpStream::connect("127.0.0.1:47171").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let pid = job.pid.to_string();
    let images = dir.join("images");
    let out = crust(&[os("dump"), os("-t"), os(&pid), os("-D"), images.as_os_str(), os("--tcp-established")], STEP);
    let err = assert_clean_failure(&out, "a dump of a listener with a connection waiting");
    assert!(err.contains("with 1 connection waiting to be accepted") && err.contains(&format!("process {pid}: fd ")), "{err}");
    let out = crust(&[os("dump"), os("-t"), os(&pid), os("-D"), images.as_os_str(), os("--tcp-established"), os("--skip-in-flight")], STEP);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "dump with --skip-in-flight: {said}");
    assert!(
        said.contains(&format!("process {pid}: fd ")) && said.contains("127.0.0.1:47171: 1 connection waiting to be accepted and 0 being set up (SYN_RECV) are left out (--skip-in-flight)"),
        "the dump says what it left out: {said}"
    );
    job.reap_original();
    // The client left out is reset, not left hanging.
    waiting.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = [0u8; 1];
    let got = waiting.read(&mut buf);
    assert!(matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "the client left out reads {got:?}");
    restore_ok(&mut job, &images, &["--tcp-established"]);
    assert!(TcpStream::connect("127.0.0.1:47171").is_ok(), "the restored listener takes a new connection");
    job.expect_ok();
}

/// memcached with a TCP client connected across the dump and restore (a
/// command sent while it is gone is answered once, after), and UDP.
#[test]
fn memcached_and_a_connected_tcp_client_survive_the_dump() {
    let dir = TempDir::new("tcp-memcached");
    let _locks = Locks(dir.path().to_path_buf());
    let (tcp, udp) = ("47181", "47182");
    let mut job = Job::build("memcached", &["-u", "root", "-l", "127.0.0.1", "-p", tcp, "-U", udp, "-t", "2"])
        .program(Path::new("/usr/bin/memcached"))
        .start(dir.path());
    let conn = poll(STEP, Duration::from_millis(50), || TcpStream::connect(("127.0.0.1", 47181)).ok());
    let mut conn = conn.expect("memcached listens");
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut answer = |conn: &mut TcpStream, cmd: &str| -> String {
        use std::io::BufRead;
        if !cmd.is_empty() {
            conn.write_all(cmd.as_bytes()).unwrap();
        }
        let mut line = String::new();
        reader.read_line(&mut line).expect("an answer, no reset");
        line
    };
    assert_eq!(answer(&mut conn, "set n 0 0 1\r\n1\r\n"), "STORED\r\n");
    let images = dir.join("images");
    dump(job.pid, &images, &["--tcp-established"]);
    job.reap_original();
    conn.write_all(b"incr n 1\r\n").unwrap();
    restore_ok(&mut job, &images, &["--tcp-established"]);
    assert_eq!(answer(&mut conn, ""), "2\r\n", "the command sent while it was gone, answered once");
    assert_eq!(answer(&mut conn, "incr n 1\r\n"), "3\r\n");
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    u.send_to(b"\x00\x07\x00\x00\x00\x01\x00\x00get n\r\n", ("127.0.0.1", 47182)).unwrap();
    let mut buf = [0u8; 512];
    let n = u.recv(&mut buf).expect("an answer over UDP");
    assert!(String::from_utf8_lossy(&buf[8..n]).contains("VALUE n 0 1\r\n3"), "{:?}", String::from_utf8_lossy(&buf[8..n]));
    job.kill_restored();
}

/// python3 -m http.server (HTTP/1.1) with a keep-alive connection across the
/// dump and restore.
#[test]
fn python_http_server_serves_a_keep_alive_connection_after_restore() {
    let dir = TempDir::new("tcp-http");
    let _locks = Locks(dir.path().to_path_buf());
    let root = dir.join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("a.txt"), "before\n").unwrap();
    let args = ["-m", "http.server", "-b", "127.0.0.1", "-p", "HTTP/1.1", "-d", root.to_str().unwrap(), "47191"];
    let mut job = Job::build("http.server", &args).program(Path::new("/usr/bin/python3")).start(dir.path());
    let conn = poll(STEP, Duration::from_millis(50), || TcpStream::connect(("127.0.0.1", 47191)).ok());
    let mut conn = conn.expect("http.server listens");
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let get = |conn: &mut TcpStream, path: &str| -> String {
        use std::io::BufRead;
        write!(conn, "GET {path} HTTP/1.1\r\nHost: crust\r\n\r\n").unwrap();
        let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
        let (mut line, mut len) = (String::new(), 0usize);
        r.read_line(&mut line).expect("a status line, no reset");
        assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    };
    assert_eq!(get(&mut conn, "/a.txt"), "before\n");
    let images = dir.join("images");
    dump(job.pid, &images, &["--tcp-established"]);
    job.reap_original();
    std::fs::write(root.join("b.txt"), "after\n").unwrap();
    restore_ok(&mut job, &images, &["--tcp-established"]);
    assert_eq!(get(&mut conn, "/b.txt"), "after\n", "the kept-alive connection");
    job.kill_restored();
}
