//! nginx (Debian's package), master and two workers, serving pages on a
//! port of the test's own, through a dump and restore: a keep-alive
//! connection opened before the dump (an established TCP connection in a
//! worker, saved with --tcp-established) serves the next request after the
//! restore, and new connections are served too, the page byte for byte.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::job::{dump, restore, Job, STEP};
use common::procstate::ProcState;
use common::TempDir;

const NGINX: &str = "/usr/sbin/nginx";

/// A port nothing listens on now (the kernel's pick for a socket bound to
/// port 0, closed again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One GET on `conn` (kept alive); the body.
fn get(conn: &mut TcpStream, path: &str) -> Vec<u8> {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: crust\r\nConnection: keep-alive\r\n\r\n").expect("send a request");
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).expect("read the status line");
    assert!(status.starts_with("HTTP/1.1 200"), "status: {status:?}");
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a header");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0u8; length.expect("a Content-Length")];
    reader.read_exact(&mut body).expect("read the body");
    assert!(reader.buffer().is_empty(), "nothing after the body");
    body
}

fn connect(port: u16) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    c.set_read_timeout(Some(STEP)).unwrap();
    c
}

#[test]
fn nginx_serves_a_keep_alive_connection_across_a_dump_and_restore() {
    let dir = TempDir::new("nginx");
    let port = free_port();
    let root = dir.join("html");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let page = common::write_pattern_file(&root.join("page.bin"), 1 << 20, 7);
    let conf = dir.join("nginx.conf");
    let d = dir.path().display();
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 2; pid {d}/nginx.pid; error_log {d}/logs/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log {d}/logs/access.log; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;\n\
             fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp; keepalive_timeout 600;\n\
             server {{ listen 127.0.0.1:{port}; root {}; }} }}\n",
            root.display()
        ),
    )
    .unwrap();
    let prefix = format!("{d}/");
    let args = ["-p", prefix.as_str(), "-c", conf.to_str().unwrap()];
    let mut job = Job::build("nginx", &args).program(Path::new(NGINX)).start(dir.path());
    let up = common::poll(STEP, Duration::from_millis(20), || TcpStream::connect(("127.0.0.1", port)).ok());
    assert!(up.is_some(), "nginx did not listen on {port}: {:?}", std::fs::read_to_string(dir.join("logs/error.log")));
    let mut kept = connect(port);
    assert_eq!(get(&mut kept, "/page.bin"), page, "the page before the dump");

    let before = ProcState::of_tree(job.pid);
    let images = dir.join("images");
    dump(job.pid, &images, &["--tcp-established"]);
    job.reap_original();
    let out = restore(&images, &["--tcp-established"]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    before.assert_same(&ProcState::of_tree(job.pid), &[]);

    assert_eq!(get(&mut kept, "/page.bin"), page, "the page on the kept-alive connection after the restore");
    assert_eq!(get(&mut connect(port), "/page.bin"), page, "the page on a new connection");
}
