//! What sock_diag netlink says of unix sockets: the only place the kernel
//! tells a socket's peer, its name and file, its accept queue and shutdown
//! state. The requests are fixed messages, written out here (the netlink
//! crates would be more to wire than the queries themselves).

use nix::errno::Errno;

use crate::error::{Context, Error, Result};

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

/// What sock_diag says of one unix socket.
pub struct Diag {
    pub ino: u32,
    pub ty: u8,
    pub state: u8,
    /// The peer's inode; 0 when the peer is a connection not accepted yet
    /// (it has no inode) or was closed.
    pub peer: Option<u32>,
    /// The address it is bound to (a path, or an abstract name starting with
    /// a NUL); accepted sockets carry their listener's.
    pub name: Option<Vec<u8>>,
    /// Inode and device (the kernel's encoding) of the socket file of a path name.
    pub vfs: Option<(u32, u32)>,
    /// Listening: connections waiting; else bytes (stream) queued to read.
    pub rqueue: u32,
    /// Listening: the backlog; else bytes sent and not yet read by the peer.
    pub wqueue: u32,
    /// RCV_SHUTDOWN (1) and SEND_SHUTDOWN (2).
    pub shutdown: u8,
    /// Listening: the client sockets of the connections waiting, in accept order.
    pub icons: Vec<u32>,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SHOW: u32 = 0x01 | 0x02 | 0x04 | 0x08 | 0x10; // name, vfs, peer, icons, rqlen

fn request(ino: u32, states: u32, flags: u16) -> Vec<u8> {
    // nlmsghdr (16 bytes) + unix_diag_req (24 bytes).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&[0u8; 8]); // sequence number, port id
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&SHOW.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    req
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A sock_diag socket of the network namespace of process `pid` (made
/// there, it answers for that namespace wherever it is used).
fn socket(pid: i32) -> Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    crate::files::in_netns_of(pid, || {
        socket(AddressFamily::Netlink, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkSockDiag)
            .ctx(|| format!("making a sock_diag socket in the network namespace of process {pid}"))
    })
}

/// Ask sock_diag about the unix socket with inode `ino`; None if there is
/// none in the network namespace of process `pid`.
pub fn diag(pid: i32, ino: u32) -> Result<Option<Diag>> {
    let what = || format!("asking sock_diag about unix socket {ino}");
    let nl = socket(pid)?;
    nix::unistd::write(&nl, &request(ino, u32::MAX, libc::NLM_F_REQUEST as u16)).ctx(what)?;
    // An accept queue of 4096 connections names 16 KiB of clients.
    let mut buf = vec![0u8; 64 << 10];
    let n = nix::unistd::read(&nl, &mut buf).ctx(what)?;
    let msg = &buf[..n];
    if msg.len() >= 20 && u16_at(msg, 4) == libc::NLMSG_ERROR as u16 {
        return match Errno::from_raw(-(u32_at(msg, 16) as i32)) {
            Errno::ENOENT => Ok(None),
            errno => Err(Error::Sys { context: what(), err: errno }),
        };
    }
    let d = parse(msg).ok_or_else(|| Error::io_other(what(), "an answer crust cannot read"))?;
    if d.ino != ino {
        return Err(Error::io_other(what(), format!("an answer about socket {}", d.ino)));
    }
    Ok(Some(d))
}

/// Every unix socket of the network namespace of process `pid` in one of
/// `states` (a mask of 1 << state).
pub fn all(pid: i32, states: u32) -> Result<Vec<Diag>> {
    let what = || "asking sock_diag for the unix sockets".to_string();
    let nl = socket(pid)?;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    nix::unistd::write(&nl, &request(0, states, flags)).ctx(what)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = nix::unistd::read(&nl, &mut buf).ctx(what)?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32_at(&buf, at) as usize;
            let ty = u16_at(&buf, at + 4);
            if len < 16 || at + len > n {
                return Err(Error::io_other(what(), "an answer crust cannot read"));
            }
            match ty {
                t if t == libc::NLMSG_DONE as u16 => return Ok(out),
                t if t == libc::NLMSG_ERROR as u16 => {
                    let errno = Errno::from_raw(-(u32_at(&buf, at + 16) as i32));
                    return Err(Error::Sys { context: what(), err: errno });
                }
                _ => out.push(parse(&buf[at..at + len]).ok_or_else(|| Error::io_other(what(), "an answer crust cannot read"))?),
            }
            at += (len + 3) & !3;
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

/// One unix_diag_msg with its attributes.
fn parse(msg: &[u8]) -> Option<Diag> {
    const UNIX_DIAG_NAME: u16 = 0;
    const UNIX_DIAG_VFS: u16 = 1;
    const UNIX_DIAG_PEER: u16 = 2;
    const UNIX_DIAG_ICONS: u16 = 3;
    const UNIX_DIAG_RQLEN: u16 = 4;
    const UNIX_DIAG_SHUTDOWN: u16 = 6;
    if msg.len() < 32 || u16_at(msg, 4) != SOCK_DIAG_BY_FAMILY || msg[16] != libc::AF_UNIX as u8 {
        return None;
    }
    let len = (u32_at(msg, 0) as usize).min(msg.len());
    // unix_diag_msg: family, type, state, pad, ino, cookie[2]; then attributes.
    let mut d = Diag {
        ino: u32_at(msg, 20),
        ty: msg[17],
        state: msg[18],
        peer: None,
        name: None,
        vfs: None,
        rqueue: 0,
        wqueue: 0,
        shutdown: 0,
        icons: Vec::new(),
    };
    let mut at = 32;
    while at + 4 <= len {
        let (alen, atype) = (u16_at(msg, at) as usize, u16_at(msg, at + 2));
        if alen < 4 || at + alen > len {
            break;
        }
        let p = &msg[at + 4..at + alen];
        match atype {
            UNIX_DIAG_NAME => d.name = Some(p.to_vec()),
            UNIX_DIAG_VFS if p.len() >= 8 => d.vfs = Some((u32_at(p, 0), u32_at(p, 4))),
            UNIX_DIAG_PEER if p.len() >= 4 => d.peer = Some(u32_at(p, 0)),
            UNIX_DIAG_ICONS => d.icons = p.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
            UNIX_DIAG_RQLEN if p.len() >= 8 => (d.rqueue, d.wqueue) = (u32_at(p, 0), u32_at(p, 4)),
            UNIX_DIAG_SHUTDOWN if !p.is_empty() => d.shutdown = p[0],
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Some(d)
}

/// A name as people write it: a path (the kernel keeps its terminating
/// NUL), or `@name` for an abstract one.
pub fn show_name(name: &[u8]) -> String {
    match name.split_first() {
        None => "(unnamed)".into(),
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest).replace('\0', "@")),
        Some(_) => String::from_utf8_lossy(name).trim_end_matches('\0').to_string(),
    }
}

/// The first process (of all) with an fd on socket `ino`, to name a peer's holder.
pub fn holder(ino: u32) -> Option<i32> {
    let link = format!("socket:[{ino}]");
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str())) {
            return Some(pid);
        }
    }
    None
}

/// Does a process of `tree` hold socket `ino`?
pub fn held_by(tree: &[i32], ino: u32) -> bool {
    let link = format!("socket:[{ino}]");
    tree.iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .is_ok_and(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str())))
    })
}
