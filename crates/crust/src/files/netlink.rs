//! Netlink sockets a program keeps open (route, generic, audit...): their
//! protocol, bound port id, multicast groups, connected destination and
//! socket options, in CRIU's netlink_sk_entry. Messages waiting to be read
//! cannot be sent again by anyone but the kernel, and a dump in progress
//! cannot be resumed: both are refused. The netlink flags (NETLINK_EXT_ACK,
//! which iproute2 sets, and the like) have no place in CRIU's image: crust
//! keeps them in a field of its own.
//!
//! Known by the protocol sockfs names it by; its row in /proc/PID/net/netlink
//! (a bound socket's protocol and queued bytes), the rest read through
//! crust's copy of the socket. The table has a bound socket of another
//! network namespace elsewhere: such a socket is refused.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{getsockopt, sockopt};

use super::sockopts::{get_int, set_int};
use super::{fown_of, take_fd, FdRestorer, FileKind, FileTable, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::proto::{FdTypes, FileEntry, NetlinkSkEntry};

pub struct NetlinkSocket;

const SOL_NETLINK: i32 = 270;
// Netlink socket options (include/uapi/linux/netlink.h).
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
/// Flags a socket can have, which CRIU's image cannot carry: crust keeps
/// them in its own field of the entry (crust_nl_flags).
const FLAGS: &[(i32, &str)] = &[
    (3, "NETLINK_PKTINFO"),
    (4, "NETLINK_BROADCAST_ERROR"),
    (5, "NETLINK_NO_ENOBUFS"),
    (8, "NETLINK_LISTEN_ALL_NSID"),
    (10, "NETLINK_CAP_ACK"),
    (11, "NETLINK_EXT_ACK"),
    (12, "NETLINK_GET_STRICT_CHK"),
];
/// netlink_sk_entry's state of a connected socket (NETLINK_CONNECTED).
const CONNECTED: u32 = 1;

/// A row of /proc/PID/net/netlink.
struct Row {
    protocol: Option<u32>,
    queued: u64,
    dumping: bool,
}

fn row(fd: &OpenFd) -> Option<Row> {
    let ino = fd.stat.st_ino.to_string();
    let table = std::fs::read_to_string(format!("/proc/{}/net/netlink", fd.pid)).ok()?;
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    table.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|w| w.len() >= 10 && w[9] == ino).map(|w| Row {
        protocol: w[1].parse().ok(),
        queued: w[4].parse().unwrap_or(u64::MAX),
        dumping: w[6] != "0",
    })
}

impl FileKind for NetlinkSocket {
    fn name(&self) -> &'static str {
        "netlink socket"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Netlinksk
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.socket_protocol().as_deref() == Some("NETLINK")
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        // A socket never bound (nor autobound by a send) is not in the table,
        // and cannot have received anything.
        let row = row(fd).unwrap_or(Row { protocol: None, queued: 0, dumping: false });
        if row.queued != 0 {
            return Err(fd.unsupported(&format!("netlink sockets with messages waiting to be read ({} bytes) are", row.queued)));
        }
        if row.dumping {
            return Err(fd.unsupported("netlink sockets in the middle of a dump the kernel is sending are"));
        }
        let sock = fd.take()?;
        let what = || format!("reading netlink socket fd {} of process {}", fd.fd, fd.pid);
        if !super::in_tasks_netns(sock, fd.pid).ctx(what)? {
            return Err(fd.unsupported("netlink sockets of another network namespace than their process's are"));
        }
        let mut nl_flags = 0;
        for &(opt, _) in FLAGS {
            if get_int(sock, SOL_NETLINK, opt).ctx(what)? != 0 {
                nl_flags |= 1 << opt;
            }
        }
        if filter_len(sock).ctx(what)? != 0 {
            return Err(fd.unsupported("sockets with a BPF filter attached (SO_ATTACH_FILTER) are"));
        }
        let (portid, _) = name_of(sock, false).ctx(what)?;
        let (dst_portid, dst_groups) = name_of(sock, true).ctx(what)?;
        let dst_group = if dst_groups == 0 { 0 } else { dst_groups.trailing_zeros() + 1 };
        // netlink_sk_entry has no type: CRIU makes every one SOCK_RAW, and
        // a SOCK_DGRAM one would come back reporting another type.
        if getsockopt(sock, sockopt::SockType).ctx(what)? != nix::sys::socket::SockType::Raw {
            return Err(fd.unsupported("netlink sockets of a type other than SOCK_RAW (CRIU's image keeps no type) are"));
        }
        let opts = super::sockopts::read(sock).ctx(what)?;
        let id = table.new_id();
        let entry = NetlinkSkEntry {
            id,
            ino: fd.stat.st_ino as u32,
            protocol: match row.protocol {
                Some(p) => p,
                None => get_int(sock, libc::SOL_SOCKET, libc::SO_PROTOCOL).ctx(what)? as u32,
            },
            state: if dst_portid != 0 || dst_group != 0 { CONNECTED } else { 0 },
            flags: fd.flags,
            portid,
            groups: memberships(sock).ctx(what)?,
            dst_portid,
            dst_group,
            fown: fown_of(fd, table)?,
            opts,
            ns_id: None,
            crust_nl_flags: (nl_flags != 0).then_some(nl_flags),
        };
        Ok(FileEntry { r#type: FdTypes::Netlinksk as i32, id, nlsk: Some(entry), ..Default::default() })
    }

    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let e = entry.nlsk.as_ref().ok_or_else(|| super::missing(entry, "netlink socket"))?;
        let what = || format!("making netlink socket {} (protocol {}, port id {}) again", e.ino, e.protocol, e.portid);
        // Made by the task, so that it belongs to the task's network namespace.
        let args = [libc::AF_NETLINK as u64, libc::SOCK_RAW as u64, e.protocol as u64, 0, 0, 0];
        let fd = r.task.call("socket(AF_NETLINK)", libc::SYS_socket, args)?;
        let fd = r.to_high(fd)?;
        let sock = take_fd(r.task.pid, fd as i32).ctx(what)?;
        super::sockopts::set(&sock, &e.opts, &what)?;
        if e.portid != 0 {
            bind(&sock, e.portid).map_err(|err| match err {
                nix::errno::Errno::EADDRINUSE => Error::Invalid(format!("{}: port id {} is taken here by another netlink socket", what(), e.portid)),
                err => Error::Sys { context: what(), err },
            })?;
        }
        for &(opt, name) in FLAGS.iter().filter(|(opt, _)| e.crust_nl_flags.unwrap_or(0) & (1 << opt) != 0) {
            set_int(&sock, SOL_NETLINK, opt, 1).ctx(|| format!("{}: setting {name}", what()))?;
        }
        for (word, bits) in e.groups.iter().enumerate() {
            for bit in (0..32).filter(|b| bits & (1 << b) != 0) {
                let group = (word * 32 + bit + 1) as i32;
                set_int(&sock, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group).ctx(|| format!("{}: joining group {group}", what()))?;
            }
        }
        if e.state == CONNECTED {
            let groups = if e.dst_group == 0 { 0 } else { 1u32 << (e.dst_group - 1) };
            connect(&sock, e.dst_portid, groups).ctx(what)?;
        }
        let status = e.flags & libc::O_NONBLOCK as u32;
        if status != 0 {
            r.task.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, status as u64, 0, 0, 0])?;
        }
        Ok(fd)
    }
}

/// Every group the socket is a member of, 32 to a word (bit n of word w is
/// group 32w + n + 1), as CRIU keeps them.
fn memberships(sock: &OwnedFd) -> nix::Result<Vec<u32>> {
    let mut words = vec![0u32; 8];
    loop {
        let mut len = (words.len() * 4) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `words`, and says
        // in `len` how many it needs.
        let r = unsafe { libc::getsockopt(sock.as_raw_fd(), SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, words.as_mut_ptr().cast(), &mut len) };
        nix::errno::Errno::result(r)?;
        let need = (len as usize).div_ceil(4);
        if need <= words.len() {
            words.truncate(need);
            while words.last() == Some(&0) {
                words.pop();
            }
            return Ok(words);
        }
        words = vec![0; need];
    }
}

/// The number of instructions of an attached BPF filter (0: none).
fn filter_len(sock: &OwnedFd) -> nix::Result<i32> {
    let mut len: libc::socklen_t = 0;
    // SAFETY: with a zero length, SO_GET_FILTER writes nothing but the
    // filter's length into `len`.
    let r = unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_GET_FILTER, std::ptr::null_mut(), &mut len) };
    nix::errno::Errno::result(r).map(|_| len as i32)
}

/// The socket's own address (port id, groups), or its peer's.
fn name_of(sock: &OwnedFd, peer: bool) -> nix::Result<(u32, u32)> {
    // SAFETY: a zeroed sockaddr_nl is a valid value of it.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let p = (&mut addr as *mut libc::sockaddr_nl).cast();
    // SAFETY: the kernel writes at most `len` bytes of an address into `addr`.
    let r = unsafe { if peer { libc::getpeername(sock.as_raw_fd(), p, &mut len) } else { libc::getsockname(sock.as_raw_fd(), p, &mut len) } };
    nix::errno::Errno::result(r).map(|_| (addr.nl_pid, addr.nl_groups))
}

fn address(portid: u32, groups: u32) -> libc::sockaddr_nl {
    // SAFETY: a zeroed sockaddr_nl is a valid value of it.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_pid = portid;
    addr.nl_groups = groups;
    addr
}

fn bind(sock: &OwnedFd, portid: u32) -> nix::Result<()> {
    let addr = address(portid, 0);
    let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: bind reads `len` bytes of `addr`, alive for the call.
    let r = unsafe { libc::bind(sock.as_raw_fd(), (&addr as *const libc::sockaddr_nl).cast(), len) };
    nix::errno::Errno::result(r).map(drop)
}

fn connect(sock: &OwnedFd, portid: u32, groups: u32) -> nix::Result<()> {
    let addr = address(portid, groups);
    let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: connect reads `len` bytes of `addr`, alive for the call.
    let r = unsafe { libc::connect(sock.as_raw_fd(), (&addr as *const libc::sockaddr_nl).cast(), len) };
    nix::errno::Errno::result(r).map(drop)
}

