//! Unix sockets: connected pairs with both ends in the tree (socketpair, or
//! what a fork left of one), stream, datagram or seqpacket, with the bytes
//! queued in stream sockets. Bound, listening or half-closed sockets, and
//! peers outside the tree, are refused by name.
//!
//! The kernel says who a socket's peer is only through sock_diag netlink;
//! the request is one fixed message, written out here (the netlink crates
//! would be more to wire than the query itself).

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};

use super::{fown_of, take_fd, write_with_data, FdRestorer, FileKind, FileTable, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_with_data, DumpImage};
use crate::images::{ImageDir, Kind};
use crate::images::proto::{FdTypes, FileEntry, SkOptsEntry, SkPacketEntry, UnixSkEntry};

pub struct UnixSocket;

/// What a dump keeps for sk-queues.img, and every socket it met: its
/// inode, its peer's, and which fd it is (a peer must be in the tree too).
#[derive(Default)]
struct Dumped {
    queues: Vec<(SkPacketEntry, Vec<u8>)>,
    peers: Vec<(u32, u32, String)>,
}

/// The bytes queued on sockets at dump time, by the file id of the receiving end.
#[derive(Default)]
struct Queues(HashMap<u32, Vec<u8>>);

/// How a restore remembers the sockets it made, by inode.
const MADE: &str = "unix socket";

impl FileKind for UnixSocket {
    fn name(&self) -> &'static str {
        "unix socket"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Unixsk
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        // Asked by inode: taking a socket into crust would touch it (its net_cls
        // and net_prio marks become crust's), and a dump must not.
        fd.link.starts_with("socket:[") && matches!(diag(fd.stat.st_ino as u32), Ok(Some(_)))
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let ino = fd.stat.st_ino as u32;
        let d = diag(ino)?.ok_or_else(|| fd.unsupported("unix sockets of another network namespace are"))?;
        let sock = fd.take()?;
        let what = || format!("reading socket options of fd {} of process {}", fd.fd, fd.pid);
        let ty = getsockopt(&sock, sockopt::SockType).ctx(what)? as u32;
        if d.bound {
            return Err(fd.unsupported("bound (named) unix sockets are"));
        }
        let peer = match d.peer {
            Some(p) if d.state == TCP_ESTABLISHED || ty == libc::SOCK_DGRAM as u32 => p,
            _ => return Err(fd.unsupported("unix sockets that are not connected are")),
        };
        if d.shutdown != 0 {
            return Err(fd.unsupported("half-closed unix sockets are"));
        }
        // CRIU's image has no place for a peek offset.
        if getsockopt(&sock, PeekOff).ctx(what)? != -1 {
            return Err(fd.unsupported("unix sockets with a peek offset set are"));
        }
        let passcred = getsockopt(&sock, sockopt::PassCred).ctx(what)?;
        let passsec = getsockopt(&sock, PassSec).ctx(what)?;
        let id = table.new_id();
        if ty == libc::SOCK_STREAM as u32 {
            if d.queued != 0 {
                if passcred || passsec {
                    return Err(fd.unsupported("unix sockets receiving credentials with bytes queued are"));
                }
                let data = peek_stream(fd, sock)?;
                table.extras.get_mut::<Dumped>().queues.push((SkPacketEntry { id_for: id, length: data.len() as u32, ..Default::default() }, data));
            }
        } else {
            // Messages keep their bounds (and may be empty): any is refused.
            match peek_some(sock, &mut [0u8; 1]) {
                Err(Errno::EAGAIN) => {}
                _ => return Err(fd.unsupported("unix datagram and seqpacket sockets with messages queued are")),
            }
        }
        let snd = getsockopt(&sock, sockopt::SendTimeout).ctx(what)?;
        let rcv = getsockopt(&sock, sockopt::ReceiveTimeout).ctx(what)?;
        let opts = SkOptsEntry {
            so_sndbuf: getsockopt(&sock, sockopt::SndBuf).ctx(what)? as u32,
            so_rcvbuf: getsockopt(&sock, sockopt::RcvBuf).ctx(what)? as u32,
            so_snd_tmo_sec: snd.tv_sec() as u64,
            so_snd_tmo_usec: snd.tv_usec() as u64,
            so_rcv_tmo_sec: rcv.tv_sec() as u64,
            so_rcv_tmo_usec: rcv.tv_usec() as u64,
            so_priority: Some(getsockopt(&sock, sockopt::Priority).ctx(what)? as u32),
            so_rcvlowat: Some(getsockopt(&sock, RcvLowat).ctx(what)? as u32),
            so_mark: Some(getsockopt(&sock, sockopt::Mark).ctx(what)?),
            so_passcred: Some(passcred),
            so_passsec: Some(passsec),
            ..Default::default()
        };
        table.extras.get_mut::<Dumped>().peers.push((ino, peer, format!("process {}: fd {} ({})", fd.pid, fd.fd, fd.link)));
        let entry = UnixSkEntry {
            id,
            ino,
            r#type: ty,
            state: d.state as u32,
            flags: fd.flags,
            uflags: 0,
            backlog: 0,
            peer,
            fown: fown_of(fd, &table.tree)?,
            opts,
            name: Vec::new(),
            shutdown: None,
            ..Default::default()
        };
        Ok(FileEntry { r#type: FdTypes::Unixsk as i32, id, usk: Some(entry), ..Default::default() })
    }

    /// sk-queues.img, once every socket's peer is known to be in the tree.
    fn write_images(&self, table: &FileTable, dir: &mut ImageDir) -> Result<u64> {
        let Some(dumped) = table.extras.get::<Dumped>() else { return Ok(0) };
        for (me, peer, who) in &dumped.peers {
            if !dumped.peers.iter().any(|(ino, back, _)| ino == peer && back == me) {
                return Err(Error::unsupported(
                    who,
                    "its peer is outside the dumped tree: unix sockets connected outside the tree are not supported yet",
                ));
            }
        }
        write_with_data(dir, "sk-queues.img", Kind::SkQueues, &dumped.queues)
    }

    /// sk-queues.img; and every socket's peer must be in files.img, each the
    /// other's.
    fn load_images(&self, img: &mut DumpImage) -> Result<()> {
        let socks: HashMap<u32, u32> = img.files.values().filter_map(|f| f.usk.as_ref()).map(|u| (u.ino, u.peer)).collect();
        for (ino, peer) in &socks {
            if socks.get(peer) != Some(ino) {
                let what = format!("unix socket {ino}: its peer {peer} is not a socket of the images whose peer it is");
                return Err(Error::image(img.dir.join("files.img"), what));
            }
        }
        let path = img.dir.join("sk-queues.img");
        let mut queues: HashMap<u32, Vec<u8>> = HashMap::new();
        for (e, data) in read_with_data::<SkPacketEntry>(&path, Kind::SkQueues, |e| e.length as u64)? {
            let queue = queues.entry(e.id_for).or_default();
            queue.extend(data);
            if queue.len() > MAX_QUEUE {
                let what = format!("file {}: more than {MAX_QUEUE} bytes queued, more than a socket can hold", e.id_for);
                return Err(Error::Image { file: path, offset: 0, what });
            }
        }
        img.extras.insert(Queues(queues));
        Ok(())
    }

    fn shared_object(&self, file: &FileEntry) -> Option<u64> {
        file.usk.as_ref().map(|u| u.ino.min(u.peer) as u64)
    }

    fn restore(&self, file: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let u = entry(file)?;
        let queues = &super::loaded::<Queues>(r.image, "sk-queues.img")?.0;
        let queued = |id: u32| queues.get(&id);
        check_restorable(file, u, queued(file.id).is_some())?;
        let fd = match r.made(MADE, u.ino as u64) {
            // Made with its peer.
            Some(fd) => fd,
            None => {
                let peer_file = by_ino(r, u.peer)?;
                let peer = entry(peer_file)?;
                check_restorable(peer_file, peer, queued(peer_file.id).is_some())?;
                if peer.peer != u.ino {
                    return Err(Error::image("files.img", format!("unix sockets {} and {} are not each other's peers", u.ino, u.peer)));
                }
                let addr = r.scratch.reset().put(&[0u8; 8])?;
                r.task.call("socketpair", libc::SYS_socketpair, [libc::AF_UNIX as u64, u.r#type as u64, 0, addr, 0, 0])?;
                let mut fds = [0u8; 8];
                r.scratch.read(addr, &mut fds)?;
                let mine = r.to_high(u32::from_le_bytes(fds[0..4].try_into().expect("4 bytes")) as u64)?;
                let theirs = r.to_high(u32::from_le_bytes(fds[4..8].try_into().expect("4 bytes")) as u64)?;
                r.remember(MADE, u.ino as u64, mine);
                r.remember(MADE, u.peer as u64, theirs);
                let pid = r.task.pid;
                let (a, b) = (take_end(pid, mine, u)?, take_end(pid, theirs, peer)?);
                set_options(&a, u)?;
                set_options(&b, peer)?;
                // What was queued for one end is sent from the other.
                fill(&b, queued(file.id), u)?;
                fill(&a, queued(peer_file.id), peer)?;
                mine
            }
        };
        let status = u.flags & libc::O_NONBLOCK as u32;
        if status != 0 {
            r.task.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, status as u64, 0, 0, 0])?;
        }
        Ok(fd)
    }
}

const TCP_ESTABLISHED: u8 = 1;

/// The most bytes a restore queues on one socket: its sender's buffer is
/// widened to twice that and more, and a buffer size is an int.
const MAX_QUEUE: usize = (i32::MAX as usize - (64 << 10)) / 2;

/// What sock_diag says of one unix socket.
struct Diag {
    state: u8,
    peer: Option<u32>,
    bound: bool,
    queued: u32,
    shutdown: u8,
}

/// Ask sock_diag about the unix socket with inode `ino`; None if there is
/// none in crust's network namespace.
fn diag(ino: u32) -> Result<Option<Diag>> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_NAME: u32 = 0x01;
    const UDIAG_SHOW_PEER: u32 = 0x04;
    const UDIAG_SHOW_RQLEN: u32 = 0x10;
    const UNIX_DIAG_NAME: u16 = 0;
    const UNIX_DIAG_PEER: u16 = 2;
    const UNIX_DIAG_RQLEN: u16 = 4;
    const UNIX_DIAG_SHUTDOWN: u16 = 6;
    let what = || format!("asking sock_diag about unix socket {ino}");
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    let nl = socket(AddressFamily::Netlink, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkSockDiag).ctx(what)?;
    // nlmsghdr (16 bytes) + unix_diag_req (24 bytes).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&[0u8; 8]); // sequence number, port id
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    nix::unistd::write(&nl, &req).ctx(what)?;
    let mut buf = vec![0u8; 8192];
    let n = nix::unistd::read(&nl, &mut buf).ctx(what)?;
    let msg = &buf[..n];
    let u16_at = |b: &[u8], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let short = || Error::io_other(format!("asking sock_diag about unix socket {ino}"), "an answer crust cannot read");
    if msg.len() < 20 {
        return Err(short());
    }
    if u16_at(msg, 4) == libc::NLMSG_ERROR as u16 {
        return match Errno::from_raw(-(u32_at(msg, 16) as i32)) {
            Errno::ENOENT => Ok(None),
            errno => Err(Error::Sys { context: what(), err: errno }),
        };
    }
    let len = (u32_at(msg, 0) as usize).min(msg.len());
    // unix_diag_msg: family, type, state, pad, ino, cookie[2]; then attributes.
    if u16_at(msg, 4) != SOCK_DIAG_BY_FAMILY || len < 32 || msg[16] != libc::AF_UNIX as u8 || u32_at(msg, 20) != ino {
        return Err(short());
    }
    let mut d = Diag { state: msg[16 + 2], peer: None, bound: false, queued: 0, shutdown: 0 };
    let mut at = 16 + 16;
    while at + 4 <= len {
        let (alen, atype) = (u16_at(msg, at) as usize, u16_at(msg, at + 2));
        if alen < 4 || at + alen > len {
            break;
        }
        let payload = &msg[at + 4..at + alen];
        match atype {
            UNIX_DIAG_NAME => d.bound = true,
            UNIX_DIAG_PEER if payload.len() >= 4 => d.peer = Some(u32_at(payload, 0)),
            UNIX_DIAG_RQLEN if payload.len() >= 4 => d.queued = u32_at(payload, 0),
            UNIX_DIAG_SHUTDOWN if !payload.is_empty() => d.shutdown = payload[0],
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Ok(Some(d))
}

// Socket options nix does not name, made with nix's own helper.
sockopt_impl!(
    /// SO_PEEK_OFF: where the next MSG_PEEK starts (-1: peeking is not offset).
    PeekOff, Both, libc::SOL_SOCKET, libc::SO_PEEK_OFF, libc::c_int
);
sockopt_impl!(
    /// SO_PASSSEC: receive the peer's security context as a control message.
    PassSec, Both, libc::SOL_SOCKET, libc::SO_PASSSEC, bool
);
sockopt_impl!(
    /// SO_RCVLOWAT: the fewest bytes a read waits for.
    RcvLowat, Both, libc::SOL_SOCKET, libc::SO_RCVLOWAT, libc::c_int
);

/// The bytes queued in a stream socket, read with MSG_PEEK so they stay. A
/// peek stops where the writer changes: a peek offset walks past each
/// stretch, and is unset again after.
fn peek_stream(fd: &OpenFd, sock: &OwnedFd) -> Result<Vec<u8>> {
    let what = || format!("reading the data queued on fd {} of process {}", fd.fd, fd.pid);
    let queued = rustix::io::ioctl_fionread(sock).ctx(what)?;
    let mut data = vec![0u8; queued as usize];
    setsockopt(sock, PeekOff, &0).ctx(what)?;
    let mut got = 0;
    let read = (|| -> Result<()> {
        while got < data.len() {
            match peek_some(sock, &mut data[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EBADMSG) => return Err(fd.unsupported("unix sockets with fds in flight are")),
                Err(e) => return Err(e).ctx(what),
            }
        }
        Ok(())
    })();
    setsockopt(sock, PeekOff, &-1).ctx(what)?;
    read?;
    if got != data.len() {
        return Err(Error::io_other(what(), format!("{got} of {} queued bytes could be read", data.len())));
    }
    Ok(data)
}

/// One MSG_PEEK of queued bytes into `buf`. Control data (passed fds) cannot
/// be kept in the image: EBADMSG then. Fds a peek hands crust are copies made
/// for it, and closed here.
fn peek_some(sock: &OwnedFd, buf: &mut [u8]) -> std::result::Result<usize, Errno> {
    // Room for the most fds one message carries (SCM_MAX_FD), and credentials
    // and a pidfd beside them: a truncated control part would leave fds
    // installed here that could not be closed.
    let mut control = nix::cmsg_space!([std::os::fd::RawFd; 253], libc::ucred, std::os::fd::RawFd);
    let mut iov = [IoSliceMut::new(buf)];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    let msg = nix::sys::socket::recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut control), flags)?;
    let mut fds_in_flight = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            fds_in_flight = true;
            for fd in fds {
                let _ = nix::unistd::close(fd);
            }
        }
    }
    if fds_in_flight {
        return Err(Errno::EBADMSG);
    }
    Ok(msg.bytes)
}

fn entry(file: &FileEntry) -> Result<&UnixSkEntry> {
    file.usk.as_ref().ok_or_else(|| super::missing(file, "unix socket"))
}

/// The image's file of the unix socket with inode `ino`.
fn by_ino<'a>(r: &FdRestorer<'a>, ino: u32) -> Result<&'a FileEntry> {
    r.image
        .files
        .values()
        .find(|f| f.usk.as_ref().is_some_and(|u| u.ino == ino))
        .ok_or_else(|| Error::image("files.img", format!("no unix socket {ino}, the peer of another")))
}

/// An image entry crust can make again: a connected, unnamed, open pair end
/// (a CRIU image may hold others).
fn check_restorable(file: &FileEntry, u: &UnixSkEntry, queued: bool) -> Result<()> {
    let why = if !u.name.is_empty() {
        "bound (named) unix sockets are"
    } else if u.state != TCP_ESTABLISHED as u32 && u.r#type != libc::SOCK_DGRAM as u32 {
        "unix sockets that are not connected are"
    } else if u.shutdown.is_some_and(|s| s != 0) {
        "half-closed unix sockets are"
    } else if queued && u.r#type != libc::SOCK_STREAM as u32 {
        "unix datagram and seqpacket sockets with messages queued are"
    } else {
        return Ok(());
    };
    Err(Error::unsupported(format!("file {} (unix socket {})", file.id, u.ino), format!("{why} not supported yet")))
}

fn context(u: &UnixSkEntry) -> impl Fn() -> String + '_ {
    move || format!("setting up unix socket {} of the image", u.ino)
}

/// A copy in crust of the task's end at `fd`, to set it up from here.
fn take_end(pid: i32, fd: u64, u: &UnixSkEntry) -> Result<OwnedFd> {
    take_fd(pid, fd as i32).ctx(context(u))
}

fn set_options(sock: &OwnedFd, u: &UnixSkEntry) -> Result<()> {
    let what = context(u);
    let o = &u.opts;
    // The kernel doubles what it is given, and reports the doubled value.
    setsockopt(sock, sockopt::SndBufForce, &(o.so_sndbuf as usize / 2)).ctx(&what)?;
    setsockopt(sock, sockopt::RcvBufForce, &(o.so_rcvbuf as usize / 2)).ctx(&what)?;
    let tv = |s: u64, us: u64| match (i64::try_from(s), i64::try_from(us)) {
        (Ok(s), Ok(us)) if us < 1_000_000 => Ok(nix::sys::time::TimeVal::new(s, us)),
        _ => Err(Error::Invalid(format!("{}: a timeout of {s} s and {us} us", what()))),
    };
    setsockopt(sock, sockopt::SendTimeout, &tv(o.so_snd_tmo_sec, o.so_snd_tmo_usec)?).ctx(&what)?;
    setsockopt(sock, sockopt::ReceiveTimeout, &tv(o.so_rcv_tmo_sec, o.so_rcv_tmo_usec)?).ctx(&what)?;
    setsockopt(sock, sockopt::PassCred, &o.so_passcred.unwrap_or(false)).ctx(&what)?;
    if let Some(v) = o.so_passsec {
        setsockopt(sock, PassSec, &v).ctx(&what)?;
    }
    if let Some(v) = o.so_priority {
        setsockopt(sock, sockopt::Priority, &(v as libc::c_int)).ctx(&what)?;
    }
    if let Some(v) = o.so_rcvlowat {
        setsockopt(sock, RcvLowat, &(v as libc::c_int)).ctx(&what)?;
    }
    if let Some(v) = o.so_mark {
        setsockopt(sock, sockopt::Mark, &v).ctx(&what)?;
    }
    Ok(())
}

/// Send `data` from `sender` so that it waits in the queue of its peer `to`.
/// The sender's buffer bounds what it can have in flight: it is widened for
/// the copy and narrowed again.
fn fill(sender: &OwnedFd, data: Option<&Vec<u8>>, to: &UnixSkEntry) -> Result<()> {
    let Some(data) = data else { return Ok(()) };
    let what = context(to);
    let before = getsockopt(sender, sockopt::SndBuf).ctx(&what)?;
    // At most MAX_QUEUE bytes (the loader's limit): twice that and more is still an int.
    let room = data.len().checked_mul(2).and_then(|n| n.checked_add(64 << 10)).filter(|&n| n <= i32::MAX as usize);
    let room = room.ok_or_else(|| Error::Invalid(format!("{}: {} bytes queued, more than a socket holds", what(), data.len())))?;
    setsockopt(sender, sockopt::SndBufForce, &room).ctx(&what)?;
    let mut sent = 0;
    while sent < data.len() {
        sent += nix::sys::socket::send(sender.as_raw_fd(), &data[sent..], nix::sys::socket::MsgFlags::MSG_DONTWAIT).ctx(&what)?;
    }
    setsockopt(sender, sockopt::SndBufForce, &(before / 2)).ctx(&what)
}
