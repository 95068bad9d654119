//! Migration with clients attached (`crust migrate --tcp-established`): a
//! server in host A, its clients in host C (tests/common/hosts.rs,
//! [`Clients`]), its address a floating IP that the test, acting as the
//! operator, moves from A to B when the migration's action script hears
//! pre-restore. The clients keep their connections: no reset, no byte lost
//! or repeated either way; both network locks are in place while the address
//! moves, and none is left once the move is done or has failed.
//!
//! Servers: tcpconn (a byte stream checked both ways), redis (three RESP
//! clients, CLIENT ID unchanged), memcached (TCP client connected, UDP),
//! python3 -m http.server (a keep-alive connection), and a program logging
//! to a socket outside its tree (--ext-unix-sk, each host with its logger).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::hosts::{file_lines as lines, wait_file_line as wait_line, Clients, Host, HostChild, Hosts};
use common::{poll, workload_path, CRUST};

const WAIT: Duration = Duration::from_secs(60);

/// crust's network locks (nftables tables) in `host`.
fn locks_in(host: &Host) -> Vec<String> {
    let out = host.run(&["nft", "list", "tables"]);
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_prefix("table inet crust_lock_")).map(str::to_string).collect()
}

/// The process with `host_pid` in `host` (not a zombie), as the test sees it.
fn live_in(host: &Host, host_pid: i32) -> Option<i32> {
    host.processes()
        .into_iter()
        .find(|&p| host.pid_in_host(p) == Some(host_pid) && common::proc_stat(p).is_some_and(|s| s.state != 'Z'))
}

/// The operator's side of a move: an action script that logs every point
/// and, at pre-restore, asks the test to move the service address and waits
/// until it has.
struct Operator {
    dir: PathBuf,
    script: PathBuf,
}

impl Operator {
    fn new(tmp: &Path) -> Operator {
        let dir = tmp.join("operator");
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("action.sh");
        let text = format!(
            "#!/bin/sh\n\
             d={dir}\n\
             echo \"$CRTOOLS_SCRIPT_ACTION ${{CRTOOLS_INIT_PID:-none}}\" >> $d/points\n\
             if [ \"$CRTOOLS_SCRIPT_ACTION\" = pre-restore ]; then\n\
             \x20 touch $d/move\n\
             \x20 i=0; while [ ! -e $d/moved ]; do sleep 0.02; i=$((i+1)); [ $i -lt 3000 ] || exit 1; done\n\
             \x20 rm -f $d/move $d/moved\n\
             fi\n",
            dir = dir.display()
        );
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Operator { dir, script }
    }

    /// The points heard so far, with their pids.
    fn points(&self) -> Vec<String> {
        lines(&self.dir.join("points"))
    }

    /// Wait for the script to ask, check both locks are in place, run
    /// `meanwhile`, move the address to B, and tell the script.
    fn move_when_asked(&self, hosts: &Hosts, clients: &Clients, meanwhile: impl FnOnce()) {
        let asked = poll(WAIT, Duration::from_millis(10), || self.dir.join("move").exists().then_some(()));
        assert!(asked.is_some(), "the script never heard pre-restore: {:?}", self.points());
        assert_eq!(locks_in(&hosts.a).len(), 1, "the source holds the connections");
        assert_eq!(locks_in(&hosts.b).len(), 1, "the destination holds them before the address arrives");
        meanwhile();
        clients.move_service(hosts, 'b');
        // Long enough for a client's retransmission to reach B, where only
        // the lock stands between it and a reset (no socket is there yet).
        std::thread::sleep(Duration::from_millis(600));
        std::fs::write(self.dir.join("moved"), "").unwrap();
    }
}

/// `crust migrate --tcp-established` of `pid` from A to B's crust serve,
/// with the operator's script, started (not waited for).
fn migrate(hosts: &Hosts, pid: i32, key: &Path, op: &Operator) -> HostChild {
    migrate_with(hosts, pid, key, &["--tcp-established", "--action-script", op.script.to_str().unwrap()])
}

/// `crust migrate` of `pid` from A to B's crust serve with `extra`, started.
fn migrate_with(hosts: &Hosts, pid: i32, key: &Path, extra: &[&str]) -> HostChild {
    let mut cmd = hosts.a.command(CRUST);
    cmd.args(["migrate", "-t", &pid.to_string(), "--to", &format!("tcp://{}:7070", hosts.b.ip()), "--json"])
        .args(extra)
        .arg("--key")
        .arg(key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn()
}

/// Host A and B with crust serve in B, and C with the service address on A.
fn setup(test: &str, key_byte: u8) -> (Hosts, Clients, PathBuf, HostChild) {
    let hosts = Hosts::new(test);
    let clients = hosts.start_clients();
    clients.move_service(&hosts, 'a');
    let key = key_file(hosts.tmp(), key_byte);
    let serve = hosts.b.start_crust_serve(Path::new(CRUST), 7070, &key, &hosts.tmp().join("serve-b"), &hosts.tmp().join("serve-b.log"));
    (hosts, clients, key, serve)
}

/// Move `pid` to B with its clients, the operator moving the address; it
/// runs in B (its pid as the test sees it), gone from A, no lock left.
fn move_to_b(hosts: &Hosts, clients: &Clients, key: &Path, pid: i32, meanwhile: impl FnOnce()) -> i32 {
    let op = Operator::new(hosts.tmp());
    let migrating = migrate(hosts, pid, key, &op);
    op.move_when_asked(hosts, clients, meanwhile);
    let (ok, err) = finish(migrating);
    assert!(ok, "migrate failed: {err}");
    let in_b = poll(WAIT, Duration::from_millis(20), || live_in(&hosts.b, pid)).expect("it runs in B");
    assert!(live_in(&hosts.a, pid).is_none(), "gone from A");
    assert_eq!((locks_in(&hosts.a), locks_in(&hosts.b)), (vec![], vec![]), "no lock left");
    in_b
}

/// A UDP socket in `host`'s network (bound there, on a thread that enters it).
fn udp_in(host: &Host) -> UdpSocket {
    let ns = host.ns_path("net");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).unwrap();
        // SAFETY: setns of this thread only (network namespaces allow that).
        assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) }, 0);
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    })
    .join()
    .unwrap()
}

/// The end of a migration started by [`migrate`]: success and its stderr.
fn finish(mut m: HostChild) -> (bool, String) {
    let mut err = String::new();
    m.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = m.wait_timeout(WAIT).expect("migrate ends");
    (status.success(), err)
}

fn key_file(dir: &Path, byte: u8) -> PathBuf {
    let p = dir.join("key");
    std::fs::write(&p, vec![byte; 32]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The byte at offset i of tcpconn's server stream / of its client's.
fn down(i: usize) -> u8 {
    (i.wrapping_mul(7) + i / 251) as u8
}
fn up(i: usize) -> u8 {
    (i.wrapping_mul(13) + i / 241 + 1) as u8
}

#[test]
fn a_server_moves_to_b_and_its_client_in_c_keeps_the_connection_both_ways() {
    let hosts = Hosts::new("migrate-clients");
    let clients = hosts.start_clients();
    clients.move_service(&hosts, 'a');
    let key = key_file(hosts.tmp(), 0x5c);
    let _serve = hosts.b.start_crust_serve(Path::new(CRUST), 7070, &key, &hosts.tmp().join("serve-b"), &hosts.tmp().join("serve-b.log"));
    let (n, m) = (20_000usize, 300_000usize);
    let out = hosts.tmp().join("tcpconn.out");
    let listen = format!("{}:47201", clients.service());
    let job = hosts.a.start_writing_to(&workload_path("tcpconn"), &[&listen, "server", &n.to_string(), &m.to_string(), "open"], &out);
    wait_line(&out, |l| l.starts_with("READY"));
    let mut client = clients.host.connect(SocketAddr::from((clients.service(), 47201)));
    wait_line(&out, |l| l == "CONNECTED");
    let upstream: Vec<u8> = (0..n + m).map(up).collect();
    client.write_all(&upstream[..n]).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let op = Operator::new(hosts.tmp());
    let migrating = migrate(&hosts, job.host_pid(), &key, &op);
    // While the tree is held on both sides, the client sends more: it waits
    // (retransmitted) behind the locks, and arrives once the server runs in B.
    let mut early = 0;
    op.move_when_asked(&hosts, &clients, || {
        client.set_nonblocking(true).unwrap();
        early = client.write(&upstream[n..n + 1000]).expect("the connection is alive meanwhile");
        client.set_nonblocking(false).unwrap();
    });
    let (ok, err) = finish(migrating);
    assert!(ok, "migrate failed: {err}");
    let in_b = poll(WAIT, Duration::from_millis(20), || live_in(&hosts.b, job.host_pid())).expect("the server runs in B");
    assert!(live_in(&hosts.a, job.host_pid()).is_none(), "gone from A");
    assert_eq!(locks_in(&hosts.a), Vec::<String>::new(), "no lock left in A");
    assert_eq!(locks_in(&hosts.b), Vec::<String>::new(), "no lock left in B");
    let pid = job.host_pid();
    let heard: Vec<String> = op.points();
    let names: Vec<&str> = heard.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        ["pre-dump", "network-lock", "pre-restore", "post-dump", "post-restore", "pre-resume", "network-unlock", "post-resume"],
        "{heard:?}"
    );
    assert!(heard[4].ends_with(&format!(" {pid}")), "post-restore names the root: {heard:?}");

    // SAFETY: our migrated server.
    unsafe { libc::kill(in_b, libc::SIGUSR1) };
    let mut writer = client.try_clone().unwrap();
    let rest = upstream[n + early..].to_vec();
    let w = std::thread::spawn(move || {
        writer.write_all(&rest).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("the server's stream, then EOF, no reset");
    w.join().unwrap();
    assert_eq!(got.len(), n + m, "every byte of the server's stream, once");
    assert!(got.iter().enumerate().all(|(i, b)| *b == down(i)), "in order");
    assert_eq!(wait_line(&out, |l| l == "OK" || l.starts_with("FAIL")), "OK", "the server read the client's stream whole");
}

/// A RESP client (redis's protocol) on one connection.
struct Resp {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Resp {
    fn new(s: TcpStream) -> Resp {
        s.set_read_timeout(Some(WAIT)).unwrap();
        Resp { w: s.try_clone().unwrap(), r: BufReader::new(s) }
    }

    fn send(&mut self, args: &[&str]) {
        let mut m = format!("*{}\r\n", args.len());
        for a in args {
            m += &format!("${}\r\n{a}\r\n", a.len());
        }
        self.w.write_all(m.as_bytes()).unwrap();
    }

    /// One reply, as text: a status, an error, an integer or a bulk string.
    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("a reply, no reset");
        let line = line.trim_end().to_string();
        match line.split_at(1) {
            ("$", "-1") => "(nil)".into(),
            ("$", len) => {
                let mut b = vec![0; len.parse::<usize>().unwrap() + 2];
                self.r.read_exact(&mut b).unwrap();
                String::from_utf8_lossy(&b[..b.len() - 2]).into_owned()
            }
            ("", _) => panic!("the connection ended"),
            (_, rest) => rest.to_string(),
        }
    }

    fn ask(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.reply()
    }
}

/// redis-server in A on the service address, keys set, three clients in C
/// connected across the move (one with a command sent while the tree is
/// held): each is the same connection after (CLIENT ID), sees the keys and
/// the others' writes; a new client connects in B.
#[test]
fn redis_moves_to_b_with_its_clients_in_c_connected() {
    let hosts = Hosts::new("migrate-redis");
    let clients = hosts.start_clients();
    clients.move_service(&hosts, 'a');
    let key = key_file(hosts.tmp(), 0x6d);
    let _serve = hosts.b.start_crust_serve(Path::new(CRUST), 7070, &key, &hosts.tmp().join("serve-b"), &hosts.tmp().join("serve-b.log"));
    let port = 47211;
    let conf = hosts.tmp().join("redis.conf");
    let conf_text = format!("port {port}\nbind {}\nprotected-mode no\ndaemonize no\nsave \"\"\nappendonly no\ndir {}\n", clients.service(), hosts.tmp().display());
    std::fs::write(&conf, conf_text).unwrap();
    let out = hosts.tmp().join("redis.out");
    let job = hosts.a.start_writing_to(Path::new("/usr/bin/redis-server"), &[conf.to_str().unwrap()], &out);
    let addr = SocketAddr::from((clients.service(), port));
    wait_line(&out, |l| l.contains("Ready to accept connections"));
    let mut conns: Vec<Resp> = (0..3).map(|_| Resp::new(clients.host.connect(addr))).collect();
    let ids: Vec<String> = conns.iter_mut().map(|c| c.ask(&["CLIENT", "ID"])).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(c.ask(&["SET", &format!("key{i}"), &format!("value{i}")]), "OK");
    }
    assert_eq!(conns[0].ask(&["INCR", "counter"]), "1");

    let op = Operator::new(hosts.tmp());
    let migrating = migrate(&hosts, job.host_pid(), &key, &op);
    op.move_when_asked(&hosts, &clients, || conns[1].send(&["INCR", "counter"]));
    let (ok, err) = finish(migrating);
    assert!(ok, "migrate failed: {err}");
    assert!(poll(WAIT, Duration::from_millis(20), || live_in(&hosts.b, job.host_pid())).is_some(), "redis runs in B");
    assert!(live_in(&hosts.a, job.host_pid()).is_none(), "gone from A");
    assert_eq!((locks_in(&hosts.a), locks_in(&hosts.b)), (vec![], vec![]), "no lock left");

    assert_eq!(conns[1].reply(), "2", "the command sent while the tree was held is answered once");
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(c.ask(&["CLIENT", "ID"]), ids[i], "client {i} is the same connection");
        assert_eq!(c.ask(&["GET", &format!("key{}", (i + 1) % 3)]), format!("value{}", (i + 1) % 3));
    }
    assert_eq!(conns[2].ask(&["INCR", "counter"]), "3");
    let mut fresh = Resp::new(clients.host.connect(addr));
    assert_eq!(fresh.ask(&["GET", "counter"]), "3", "a new client is served in B");
    assert_ne!(fresh.ask(&["CLIENT", "ID"]), ids[2]);
}

/// A move that fails after the operator moved the address (B refuses: the
/// pid is taken there): the error says to move the address back; once it
/// is, the client's connection goes on in A (held meanwhile, not reset),
/// and neither host keeps a lock.
#[test]
fn a_move_refused_after_the_address_moved_leaves_the_connection_in_a_and_no_lock() {
    let hosts = Hosts::new("migrate-clients-fail");
    let clients = hosts.start_clients();
    clients.move_service(&hosts, 'a');
    let key = key_file(hosts.tmp(), 0x7e);
    let _serve = hosts.b.start_crust_serve(Path::new(CRUST), 7070, &key, &hosts.tmp().join("serve-b"), &hosts.tmp().join("serve-b.log"));
    let (n, m) = (5_000usize, 50_000usize);
    let out = hosts.tmp().join("tcpconn.out");
    let listen = format!("{}:47221", clients.service());
    let job = hosts.a.start_writing_to(&workload_path("tcpconn"), &[&listen, "server", &n.to_string(), &m.to_string(), "open"], &out);
    wait_line(&out, |l| l.starts_with("READY"));
    let mut client = clients.host.connect(SocketAddr::from((clients.service(), 47221)));
    wait_line(&out, |l| l == "CONNECTED");
    let upstream: Vec<u8> = (0..n + m).map(up).collect();
    client.write_all(&upstream[..n]).unwrap();
    hosts.b.set_last_pid(job.host_pid() - 1);
    let squatter = hosts.b.spawn(&["sleep", "1000"]);
    assert_eq!(squatter.host_pid(), job.host_pid(), "the test needs the pid taken in B");

    let op = Operator::new(hosts.tmp());
    let migrating = migrate(&hosts, job.host_pid(), &key, &op);
    op.move_when_asked(&hosts, &clients, || {});
    let (ok, err) = finish(migrating);
    assert!(!ok, "the move must fail");
    assert!(err.contains("is taken") && err.contains("move the address back"), "{err}");
    assert!(live_in(&hosts.a, job.host_pid()).is_some(), "the server runs on in A");
    assert_eq!((locks_in(&hosts.a), locks_in(&hosts.b)), (vec![], vec![]), "no lock left on either side");
    clients.move_service(&hosts, 'a');
    job.signal(libc::SIGUSR1);
    let mut writer = client.try_clone().unwrap();
    let rest = upstream[n..].to_vec();
    let w = std::thread::spawn(move || {
        writer.write_all(&rest).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("the server's stream, then EOF, no reset");
    w.join().unwrap();
    assert_eq!(got.len(), n + m);
    assert!(got.iter().enumerate().all(|(i, b)| *b == down(i)), "in order");
    assert_eq!(wait_line(&out, |l| l == "OK" || l.starts_with("FAIL")), "OK");
}

/// memcached in A on the service address, a TCP client in C connected across
/// the move (a command sent while the tree is held is answered once, after),
/// and UDP from C answered in B.
#[test]
fn memcached_moves_to_b_with_a_tcp_client_connected_and_answers_udp_there() {
    let (hosts, clients, key, _serve) = setup("migrate-memcached", 0x4d);
    let (tcp, udp) = (47231u16, 47232u16);
    let svc = clients.service().to_string();
    let out = hosts.tmp().join("memcached.out");
    let args = ["-u", "root", "-l", &svc, "-p", &tcp.to_string(), "-U", &udp.to_string(), "-t", "2"];
    let job = hosts.a.start_writing_to(Path::new("/usr/bin/memcached"), &args, &out);
    let addr = SocketAddr::from((clients.service(), tcp));
    let conn = poll(WAIT, Duration::from_millis(50), || {
        std::panic::catch_unwind(|| clients.host.connect(addr)).ok()
    });
    let mut conn = conn.expect("memcached listens");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut answer = |conn: &mut TcpStream, cmd: &str| -> String {
        if !cmd.is_empty() {
            conn.write_all(cmd.as_bytes()).unwrap();
        }
        let mut line = String::new();
        reader.read_line(&mut line).expect("an answer, no reset");
        line
    };
    assert_eq!(answer(&mut conn, "set greeting 0 0 5\r\nhello\r\n"), "STORED\r\n");
    assert_eq!(answer(&mut conn, "set n 0 0 1\r\n1\r\n"), "STORED\r\n");
    let udp_client = udp_in(&clients.host);
    let ask_udp = |cmd: &str| -> String {
        let mut msg = vec![0, 7, 0, 0, 0, 1, 0, 0];
        msg.extend_from_slice(cmd.as_bytes());
        udp_client.send_to(&msg, (clients.service(), udp)).unwrap();
        let mut buf = [0u8; 2048];
        let n = udp_client.recv(&mut buf).expect("an answer over UDP");
        String::from_utf8_lossy(&buf[8..n]).into_owned()
    };
    assert!(ask_udp("get greeting\r\n").contains("hello"));

    let mut during = conn.try_clone().unwrap();
    move_to_b(&hosts, &clients, &key, job.host_pid(), || during.write_all(b"incr n 1\r\n").unwrap());
    assert_eq!(answer(&mut conn, ""), "2\r\n", "the command sent while held is answered once");
    assert_eq!(answer(&mut conn, "incr n 1\r\n"), "3\r\n", "the same connection goes on");
    assert!(ask_udp("get greeting\r\n").contains("VALUE greeting 0 5\r\nhello"), "UDP answered in B");
    assert_eq!(answer(&mut conn, "get n\r\n"), "VALUE n 0 1\r\n");
}

/// One GET on a kept-alive HTTP/1.1 connection; the body.
fn http_get(conn: &mut TcpStream, path: &str) -> String {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: crust\r\n\r\n").unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).expect("a status line, no reset");
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    assert!(reader.buffer().is_empty());
    String::from_utf8(body).unwrap()
}

/// python3 -m http.server (HTTP/1.1) in A on the service address: a
/// keep-alive connection from C serves the next request from B, and a new
/// one is served there too.
#[test]
fn python_http_server_moves_to_b_with_a_keep_alive_client() {
    let (hosts, clients, key, _serve) = setup("migrate-http", 0x48);
    let root = hosts.tmp().join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello from A\n").unwrap();
    let port = 47241u16;
    let out = hosts.tmp().join("http.out");
    let svc = clients.service().to_string();
    let args = ["-m", "http.server", "-b", &svc, "-p", "HTTP/1.1", "-d", root.to_str().unwrap(), &port.to_string()];
    let job = hosts.a.start_writing_to(Path::new("/usr/bin/python3"), &args, &out);
    let addr = SocketAddr::from((clients.service(), port));
    let conn = poll(WAIT, Duration::from_millis(50), || std::panic::catch_unwind(|| clients.host.connect(addr)).ok());
    let mut conn = conn.expect("http.server listens");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(http_get(&mut conn, "/hello.txt"), "hello from A\n");
    move_to_b(&hosts, &clients, &key, job.host_pid(), || {});
    std::fs::write(root.join("later.txt"), "written during the move\n").unwrap();
    assert_eq!(http_get(&mut conn, "/later.txt"), "written during the move\n", "the kept-alive connection");
    let mut fresh = clients.host.connect(addr);
    fresh.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(http_get(&mut fresh, "/hello.txt"), "hello from A\n", "a new connection, served in B");
}

/// nginx, master and two workers, in A on the service address: a
/// keep-alive connection from C gets the next page from B, and a new one is
/// served there too.
#[test]
fn nginx_moves_to_b_with_a_keep_alive_client() {
    let (hosts, clients, key, _serve) = setup("migrate-nginx", 0x4e);
    let d = hosts.tmp().join("nginx");
    for sub in ["html", "logs", "tmp"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("html/hello.txt"), "hello from A\n").unwrap();
    let port = 47251u16;
    let svc = clients.service();
    let dd = d.display();
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 2; pid {dd}/nginx.pid; error_log {dd}/logs/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log {dd}/logs/access.log; client_body_temp_path {dd}/tmp; proxy_temp_path {dd}/tmp;\n\
             fastcgi_temp_path {dd}/tmp; uwsgi_temp_path {dd}/tmp; scgi_temp_path {dd}/tmp; keepalive_timeout 600;\n\
             server {{ listen {svc}:{port}; root {dd}/html; }} }}\n"
        ),
    )
    .unwrap();
    let prefix = format!("{dd}/");
    let args = ["-p", prefix.as_str(), "-c", conf.to_str().unwrap()];
    let job = hosts.a.start_writing_to(Path::new("/usr/sbin/nginx"), &args, &hosts.tmp().join("nginx.out"));
    let addr = SocketAddr::from((svc, port));
    let conn = poll(WAIT, Duration::from_millis(50), || std::panic::catch_unwind(|| clients.host.connect(addr)).ok());
    let mut conn = conn.expect("nginx listens");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(http_get(&mut conn, "/hello.txt"), "hello from A\n");
    move_to_b(&hosts, &clients, &key, job.host_pid(), || {});
    std::fs::write(d.join("html/later.txt"), "written during the move\n").unwrap();
    assert_eq!(http_get(&mut conn, "/later.txt"), "written during the move\n", "the kept-alive connection");
    let mut fresh = clients.host.connect(addr);
    fresh.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(http_get(&mut fresh, "/hello.txt"), "hello from A\n", "a new connection, served in B");
}

/// A logger of a host's own: a datagram socket bound at `path` (inside the
/// host's mount namespace), each message a line of `out`.
fn logger(host: &Host, path: &Path, out: &Path) -> HostChild {
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])\n\
                  print('listening', flush=True)\n\
                  while True:\n\
                  \x20   m = s.recv(4096)\n\
                  \x20   print(m.decode(), flush=True)\n";
    let child = host.start_writing_to(Path::new("/usr/bin/python3"), &["-c", script, path.to_str().unwrap()], out);
    wait_line(out, |l| l == "listening");
    child
}

/// A program logging to a datagram socket outside its tree (each host has
/// its own logger at the same path, as each has its own /dev/log) moves
/// with --ext-unix-sk, refused by name without it, and logs to B's logger.
#[test]
fn a_program_logging_outside_its_tree_moves_with_ext_unix_sk() {
    let (hosts, _clients, key, _serve) = setup("migrate-log", 0x4c);
    let dev = hosts.tmp().join("dev");
    std::fs::create_dir(&dev).unwrap();
    for h in [&hosts.a, &hosts.b] {
        h.run_ok(&["mount", "-t", "tmpfs", "none", dev.to_str().unwrap()]);
    }
    let log = dev.join("log");
    let (log_a, log_b) = (hosts.tmp().join("log-a.txt"), hosts.tmp().join("log-b.txt"));
    let _logger_a = logger(&hosts.a, &log, &log_a);
    let _logger_b = logger(&hosts.b, &log, &log_b);
    let out = hosts.tmp().join("unixsk.out");
    let job = hosts.a.start_writing_to(&workload_path("unixsk"), &["syslog", log.to_str().unwrap()], &out);
    wait_line(&out, |l| l.starts_with("READY"));
    wait_line(&log_a, |l| l == "before");
    let (ok, err) = finish(migrate_with(&hosts, job.host_pid(), &key, &[]));
    assert!(!ok && err.contains("--ext-unix-sk") && err.contains(log.to_str().unwrap()), "refused without the option: {err}");
    assert!(live_in(&hosts.a, job.host_pid()).is_some(), "runs on in A");
    let (ok, err) = finish(migrate_with(&hosts, job.host_pid(), &key, &["--ext-unix-sk"]));
    assert!(ok, "migrate failed: {err}");
    let in_b = poll(WAIT, Duration::from_millis(20), || live_in(&hosts.b, job.host_pid())).expect("it runs in B");
    assert!(live_in(&hosts.a, job.host_pid()).is_none(), "gone from A");
    // SAFETY: our migrated workload.
    unsafe { libc::kill(in_b, libc::SIGUSR1) };
    assert_eq!(wait_line(&out, |l| l == "OK" || l.starts_with("FAIL")), "OK");
    wait_line(&log_b, |l| l == format!("after {}", job.host_pid()));
    assert_eq!(lines(&log_a), ["listening", "before"], "nothing more reached A's logger");
}
