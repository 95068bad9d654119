//! Established TCP sockets as files: CRIU's inet_sk_entry, their state in
//! tcp-stream-<inode>.img (see [`super::tcp`]). Only established
//! connections: listening, bound and UDP sockets are another kind's.
//! Options saved: buffer sizes, SO_REUSEADDR, SO_KEEPALIVE, TCP_NODELAY and
//! TCP_CORK (in the stream).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use super::{fown_of, take_fd, FdRestorer, FileKind, FileTable, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::proto::{FdTypes, FileEntry, InetSkEntry, SkOptsEntry};

pub struct TcpConnection;

/// An address as CRIU's image holds it: 32-bit words in network order.
fn words(ip: IpAddr) -> Vec<u32> {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.chunks(4).map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes"))).collect()
}

fn addr(family: u32, w: &[u32], port: u32) -> Option<SocketAddr> {
    let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_ne_bytes()).collect();
    let ip = match (family as i32, bytes.len()) {
        (libc::AF_INET, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        (libc::AF_INET6, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

impl FileKind for TcpConnection {
    fn name(&self) -> &'static str {
        "TCP connection"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Inetsk
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.link.starts_with("socket:[") && super::tcp::connections(&[fd.pid]).is_ok_and(|c| c.iter().any(|c| c.ino == fd.stat.st_ino))
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let conn = table.tcp.established(fd).cloned().ok_or_else(|| fd.unsupported("this TCP socket is"))?;
        let sock = fd.take()?;
        table.tcp.dump(fd, sock)?;
        let what = || format!("reading socket options of fd {} of process {}", fd.fd, fd.pid);
        let family = getsockopt(sock, sockopt::SockType).ctx(what).map(|_| if conn.local.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 })?;
        let opts = SkOptsEntry {
            so_sndbuf: getsockopt(sock, sockopt::SndBuf).ctx(what)? as u32,
            so_rcvbuf: getsockopt(sock, sockopt::RcvBuf).ctx(what)? as u32,
            reuseaddr: Some(getsockopt(sock, sockopt::ReuseAddr).ctx(what)?),
            so_keepalive: Some(getsockopt(sock, sockopt::KeepAlive).ctx(what)?),
            ..Default::default()
        };
        let id = table.new_id();
        let entry = InetSkEntry {
            id,
            ino: fd.stat.st_ino as u32,
            family: family as u32,
            r#type: libc::SOCK_STREAM as u32,
            proto: libc::IPPROTO_TCP as u32,
            state: super::tcp::TCP_ESTABLISHED,
            src_port: conn.local.port() as u32,
            dst_port: conn.peer.port() as u32,
            flags: fd.flags,
            backlog: 0,
            src_addr: words(conn.local.ip()),
            dst_addr: words(conn.peer.ip()),
            fown: fown_of(fd, &table.tree)?,
            opts,
            ..Default::default()
        };
        Ok(FileEntry { r#type: FdTypes::Inetsk as i32, id, isk: Some(entry), ..Default::default() })
    }

    fn restore(&self, file: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let e = file.isk.as_ref().ok_or_else(|| super::missing(file, "inet socket"))?;
        let bad = || Error::image("files.img", format!("file {}: an inet socket crust cannot make", file.id));
        if e.proto != libc::IPPROTO_TCP as u32 || e.state != super::tcp::TCP_ESTABLISHED || e.r#type != libc::SOCK_STREAM as u32 {
            return Err(Error::unsupported(format!("file {} (inet socket {})", file.id, e.ino), "inet sockets other than established TCP connections are not supported yet"));
        }
        let local = addr(e.family, &e.src_addr, e.src_port).ok_or_else(bad)?;
        let peer = addr(e.family, &e.dst_addr, e.dst_port).ok_or_else(bad)?;
        let made = r.task.call("socket", libc::SYS_socket, [e.family as u64, libc::SOCK_STREAM as u64, libc::IPPROTO_TCP as u64, 0, 0, 0])?;
        let fd = r.to_high(made)?;
        let what = || format!("restoring TCP connection {local} -> {peer}");
        let sock = take_fd(r.task.pid, fd as i32).ctx(what)?;
        let o = &e.opts;
        // The kernel doubles what it is given, and reports the doubled value.
        setsockopt(&sock, sockopt::SndBufForce, &(o.so_sndbuf as usize / 2)).ctx(what)?;
        setsockopt(&sock, sockopt::RcvBufForce, &(o.so_rcvbuf as usize / 2)).ctx(what)?;
        if let Some(v) = o.so_keepalive {
            setsockopt(&sock, sockopt::KeepAlive, &v).ctx(what)?;
        }
        super::tcp::restore(r.image, e, &sock, local, peer)?;
        let status = e.flags & libc::O_NONBLOCK as u32;
        if status != 0 {
            r.task.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, status as u64, 0, 0, 0])?;
        }
        Ok(fd)
    }
}
