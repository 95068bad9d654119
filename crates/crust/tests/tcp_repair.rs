//! The TCP_REPAIR mechanism on its own (as root): a loopback connection with
//! bytes queued both ways is read out of one end's socket, that socket is
//! closed in repair mode (silently), and a new socket is made into the same
//! connection; the peer never notices: every byte arrives once, in order,
//! both ways, and no reset is seen.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crust::files::tcp_repair;

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A new TCP socket of the family of `addr`, nothing done with it yet.
fn fresh_socket(addr: SocketAddr) -> OwnedFd {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket(2) takes no pointers; the fd it returns is owned here.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn pattern(start: usize, len: usize) -> Vec<u8> {
    (start..start + len).map(|i| (i % 251) as u8).collect()
}

/// Move the client end of a connection to a new socket: `queued_up` bytes
/// from the client wait unread at the server, `queued_down` from the server
/// at the client; with a small server buffer, part of what the client sent
/// was never sent at all.
fn move_client(bind: &str, queued_up: usize, queued_down: usize, small_server_buffer: bool) {
    let listener = TcpListener::bind(bind).expect("listen");
    let server_addr = listener.local_addr().unwrap();
    if small_server_buffer {
        nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    }
    let client = TcpStream::connect(server_addr).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    client.set_nonblocking(true).unwrap();
    let up = pattern(0, queued_up);
    let mut sent = 0;
    // A full server buffer stops the client's writes part-way (EAGAIN).
    while sent < up.len() {
        match (&client).write(&up[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("client write: {e}"),
        }
    }
    let down = pattern(7, queued_down);
    server.write_all(&down).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let stream = tcp_repair::read(client.as_fd(), "the test's client").expect("read the connection");
    assert_eq!(stream.inq, down, "the receive queue holds what the server sent");
    assert!(stream.outq == up[sent - stream.entry.outq_len as usize..sent], "the send queue is the tail of what was written");
    if small_server_buffer {
        assert!(stream.entry.unsq_len.unwrap() > 0, "some bytes were never sent: {:?}", stream.entry);
    }
    // Reading left the socket usable: not in repair mode (a plain read works).
    let again = tcp_repair::read(client.as_fd(), "the test's client").expect("read again");
    assert_eq!(again.entry.inq_seq, stream.entry.inq_seq);

    // The old end goes silently, as when a dumped tree is killed.
    tcp_repair::enter(client.as_fd(), &|| "client".into()).unwrap();
    drop(client);
    let new = fresh_socket(local);
    tcp_repair::write(new.as_fd(), local, peer, &stream, false).expect("restore the connection");
    let mut client = TcpStream::from(new);
    client.set_nonblocking(false).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    server.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    // Down: what was queued, then more.
    let more_down = pattern(7 + queued_down, 5000);
    server.write_all(&more_down).unwrap();
    let mut got = vec![0u8; queued_down + more_down.len()];
    client.read_exact(&mut got).expect("the client reads what the server sent");
    assert_eq!(got[..queued_down], down[..]);
    assert_eq!(got[queued_down..], more_down[..]);
    // Up: what was written before (sent or not), then more; the server reads all of it.
    let more_up = pattern(sent, 3000);
    let writer = std::thread::spawn(move || {
        client.write_all(&more_up).unwrap();
        client
    });
    let mut got = vec![0u8; sent + 3000];
    server.read_exact(&mut got).expect("the server reads what the client sent");
    assert!(got == pattern(0, sent + 3000), "no byte lost or repeated");
    let client = writer.join().unwrap();
    drop(client);
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).expect("an orderly end (FIN), no reset");
    assert!(rest.is_empty());
}

#[test]
fn a_connection_moves_to_a_new_socket_with_its_queues() {
    if !root() {
        eprintln!("skipped: TCP_REPAIR needs CAP_NET_ADMIN");
        return;
    }
    move_client("127.0.0.1:0", 3000, 2000, false);
}

#[test]
fn empty_queues_and_ipv6() {
    if !root() {
        eprintln!("skipped: TCP_REPAIR needs CAP_NET_ADMIN");
        return;
    }
    move_client("[::1]:0", 0, 0, false);
}

#[test]
fn bytes_never_sent_are_sent_after_the_move() {
    if !root() {
        eprintln!("skipped: TCP_REPAIR needs CAP_NET_ADMIN");
        return;
    }
    move_client("127.0.0.1:0", 4 << 20, 1000, true);
}

#[test]
fn inconsistent_entries_are_refused() {
    let mut s = tcp_repair::Stream::default();
    s.entry.inq_len = 3;
    assert!(tcp_repair::check(&s).is_err());
    s.inq = vec![1, 2, 3];
    assert!(tcp_repair::check(&s).is_ok());
    s.entry.unsq_len = Some(1);
    assert!(tcp_repair::check(&s).is_err(), "more unsent than the send queue holds");
}

fn crust_tables() -> Vec<String> {
    let out = std::process::Command::new("nft").args(["list", "tables"]).output().expect("nft");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(crust::netlock::PREFIX)).map(str::to_string).collect()
}

#[test]
fn the_lock_holds_a_connections_packets_until_dropped() {
    if !root() {
        eprintln!("skipped: nftables needs CAP_NET_ADMIN");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let conn = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    let lock = crust::netlock::Lock::install(&[conn], "test").expect("install the lock");
    let name = lock.name().to_string();
    assert!(crust_tables().iter().any(|t| t.contains(&name)));
    let found = crust::netlock::list().unwrap();
    assert!(found.iter().any(|f| f.name == name && f.running == Some(std::process::id() as i32)), "{found:?}");
    client.write_all(b"held").unwrap();
    server.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 4];
    assert!(server.read(&mut buf).is_err(), "nothing passes the lock");
    drop(lock);
    assert!(!crust_tables().iter().any(|t| t.contains(&name)), "dropping the lock removes its table");
    server.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    server.read_exact(&mut buf).expect("retransmitted once the lock is gone");
    assert_eq!(&buf, b"held");
    // A kept lock stays until removed by name.
    let kept = crust::netlock::Lock::install(&[conn], "test").unwrap().keep();
    assert!(crust_tables().iter().any(|t| t.contains(&kept)));
    assert!(crust::netlock::remove(&kept).unwrap());
    assert!(!crust::netlock::remove(&kept).unwrap(), "already gone");
}
