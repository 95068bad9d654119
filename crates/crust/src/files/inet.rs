//! TCP and UDP sockets over IPv4 and IPv6: unbound, bound, listening (with
//! its backlog) and connected UDP, with the options servers set, a classic
//! BPF filter, and TCP connections that ended while their fd stays open
//! (restored shut down both ways); established TCP connections with their
//! state from files/tcp.rs; datagrams waiting in a UDP socket
//! (files/inet_queue.rs). TCP in other states, connections waiting in an
//! accept queue or being set up (unless `--skip-in-flight`), multicast
//! memberships, half-closed UDP sockets, raw sockets and sockets of another
//! network namespace are refused by name.
//!
//! Options: those CRIU's image has a field for are saved; every other option
//! crust knows is compared with a fresh socket of the same kind, and one set
//! otherwise refuses the dump (save it or refuse it). Queues and backlogs
//! come from sock_diag (inet_diag), one dump per family and protocol.
//!
//! Restore makes the socket inside the task (so it is of the task's network
//! namespace) and sets it up from crust through a copy of its fd: options,
//! bind, listen or connect. `crust check` makes and binds each socket in
//! crust the same way, so a port taken or an address missing is reported
//! before anything is created.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage};

use super::sockopts::{get_int, get_raw, set_int, set_raw};
use super::{fown_of, take_fd, FdRestorer, FileKind, FileTable, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::load::DumpImage;
use crate::images::proto::{FdTypes, FileEntry, InetSkEntry, IpOptsEntry, SkOptsEntry, SkPacketEntry, SkShutdown, TcpOptsEntry};

pub struct InetSocket;

impl FileKind for InetSocket {
    fn name(&self) -> &'static str {
        "inet socket"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Inetsk
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        // Asked of the socket's inode, without taking it into crust.
        fd.socket_protocol().is_some_and(|p| INET_PROTOS.contains(&p.as_str()))
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let proto = fd.socket_protocol().unwrap_or_default();
        if proto.starts_with("RAW") || proto.starts_with("PING") {
            return Err(fd.unsupported(&format!("raw inet sockets ({proto}) are")));
        }
        let sock = fd.take()?;
        let what = || format!("reading socket options of fd {} of process {}", fd.fd, fd.pid);
        if !super::in_tasks_netns(sock, fd.pid).ctx(what)? {
            return Err(fd.unsupported("inet sockets of another network namespace than their process's are"));
        }
        let family = get_int(sock, libc::SOL_SOCKET, libc::SO_DOMAIN).ctx(what)?;
        let ty = get_int(sock, libc::SOL_SOCKET, libc::SO_TYPE).ctx(what)?;
        let protocol = get_int(sock, libc::SOL_SOCKET, libc::SO_PROTOCOL).ctx(what)?;
        if !matches!(protocol, libc::IPPROTO_TCP | libc::IPPROTO_UDP) || !matches!(family, libc::AF_INET | libc::AF_INET6) {
            return Err(fd.unsupported(&format!("inet sockets of protocol {protocol} ({proto}) are")));
        }
        let local = sock_name(sock, false).ctx(what)?.unwrap_or_else(|| unspecified(family));
        let peer = sock_name(sock, true).ctx(what)?;
        if [Some(local), peer].iter().flatten().any(|a| matches!(a, SocketAddr::V6(v6) if v6.scope_id() != 0)) {
            return Err(fd.unsupported("inet sockets on a link-local IPv6 address with a scope id are"));
        }
        let ino = fd.stat.st_ino as u32;
        let cache = table.extras.get_mut::<DiagCache>();
        let diag = cache.of(fd.pid, family, protocol, ino, local.port())?;
        let state = if protocol == libc::IPPROTO_TCP {
            tcp_state(sock).ctx(what)?
        } else if peer.is_some() {
            TCP_ESTABLISHED
        } else {
            TCP_CLOSE
        };
        let mut backlog = 0;
        let mut closed = false;
        let mut queued = Vec::new();
        // A UDP socket's peek offset is kept (crust's own field), set again
        // once its queue is refilled; a TCP one's is refused (WATCHED).
        let peek_off = if protocol == libc::IPPROTO_UDP { get_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF).ctx(what)? } else { -1 };
        match (protocol, state) {
            (libc::IPPROTO_TCP, TCP_LISTEN) if table.tcp.skip_in_flight => {
                // --skip-in-flight: connections not accepted yet are left
                // out (reset when the listener closes), as criu does, and
                // the dump says so.
                if diag.rqueue != 0 || diag.syn_recv != 0 {
                    let (queued, setting_up) = (diag.rqueue, diag.syn_recv);
                    log::warn!(
                        "process {}: fd {} ({}): a listening TCP socket on {local}: {queued} connection{} waiting to be accepted and {setting_up} being set up (SYN_RECV) are left out (--skip-in-flight): their clients see a reset once the dumped tree is gone",
                        fd.pid, fd.fd, fd.link, plural(queued)
                    );
                }
                backlog = diag.wqueue;
            }
            (libc::IPPROTO_TCP, TCP_LISTEN) => {
                if diag.rqueue != 0 {
                    let n = diag.rqueue;
                    return Err(fd.unsupported(&format!("a listening TCP socket on {local} with {n} connection{} waiting to be accepted is", plural(n))));
                }
                if diag.syn_recv != 0 {
                    let n = diag.syn_recv;
                    return Err(fd.unsupported(&format!("a listening TCP socket on {local} with {n} connection{} being set up (SYN_RECV) is", plural(n))));
                }
                backlog = diag.wqueue;
            }
            (libc::IPPROTO_TCP, TCP_CLOSE) => {
                // A connection that ended (or failed) and is not closed yet:
                // the kernel shut it down both ways and let go of its port.
                // The same from a fresh socket shut down both ways, unless an
                // error waits to be read (poll says POLLERR; reading it
                // would take it from the program).
                closed = had_connection(sock).ctx(what)?;
                if closed && pending_error(sock).ctx(what)? {
                    return Err(fd.unsupported(&format!("a closed TCP connection (on {local}) with an error not yet read is")));
                }
            }
            // Saved (or refused by name) by the dump's connections (files/tcp.rs).
            (libc::IPPROTO_TCP, TCP_ESTABLISHED) => table.tcp.dump(fd, sock)?,
            (libc::IPPROTO_TCP, s) => {
                let peer = peer.map(|p| format!(" -> {p}")).unwrap_or_default();
                return Err(fd.unsupported(&format!("a TCP socket {local}{peer} in state {} is", state_name(s))));
            }
            _ => {
                if let Some((group, ifindex)) = joined_group(sock, family, fd.pid).ctx(what)? {
                    return Err(fd.unsupported(&format!("a UDP socket on {local} member of multicast group {group} (on interface {ifindex}) is")));
                }
                // A datagram built up and not sent (MSG_MORE without
                // UDP_CORK set) and an error not yet read (an ICMP error on a
                // connected socket, the error queue) have no place in the
                // images; poll shows the error without taking it.
                if diag.wqueue != 0 {
                    let n = diag.wqueue;
                    return Err(fd.unsupported(&format!("a UDP socket on {local} with {n} bytes not yet sent (MSG_MORE) is")));
                }
                if pending_error(sock).ctx(what)? {
                    return Err(fd.unsupported(&format!("a UDP socket on {local} with an error not yet read (POLLERR) is")));
                }
                if diag.rqueue != 0 {
                    queued = super::inet_queue::peek(fd, sock, family, local, diag.rqueue, peek_off)?;
                }
            }
        }
        // (A TCP connection the peer closed is CLOSE_WAIT, refused above.)
        if diag.shutdown != 0 {
            return Err(fd.unsupported(&format!("half-closed inet sockets ({local}, shut down for {}) are", shutdown_name(diag.shutdown))));
        }
        // Made in the socket's namespace, whose settings give its defaults.
        let (pid, n) = (fd.pid, fd.fd);
        let fresh = super::in_netns_of(pid, || {
            new_socket(family, ty, protocol).ctx(|| format!("making a fresh socket to compare fd {n} of process {pid} with"))
        })?;
        let connection = closed || (protocol == libc::IPPROTO_TCP && state == TCP_ESTABLISHED);
        check_others(fd, sock, &fresh, family, protocol, connection)?;
        let (mut opts, ip_opts, tcp_opts, v6only) = read_options(sock, &fresh, family, protocol).ctx(what)?;
        opts.so_filter = socket_filter(fd, sock)?;
        opts.crust_peek_off = (peek_off != -1).then_some(peek_off);
        let local = if closed { unspecified(family) } else { local };
        let id = table.new_id();
        super::unix::add_queued(table, super::inet_queue::entries(id, queued));
        let entry = InetSkEntry {
            id,
            ino,
            family: family as u32,
            r#type: ty as u32,
            proto: protocol as u32,
            state: state as u32,
            src_port: local.port() as u32,
            dst_port: peer.map_or(0, |p| p.port()) as u32,
            flags: fd.flags,
            backlog,
            src_addr: words(local.ip()),
            dst_addr: peer.map(|p| words(p.ip())).unwrap_or_default(),
            fown: fown_of(fd, table)?,
            opts,
            v6only,
            ip_opts: Some(ip_opts),
            tcp_opts,
            shutdown: closed.then_some(SkShutdown::Both as i32),
            ..Default::default()
        };
        Ok(FileEntry { r#type: FdTypes::Inetsk as i32, id, isk: Some(entry), ..Default::default() })
    }

    /// The datagrams queued on UDP sockets, from sk-queues.img (which
    /// files/unix.rs reads for its sockets too).
    fn load_images(&self, img: &mut DumpImage) -> Result<()> {
        let udp: std::collections::HashSet<u32> = img.files.values().filter(|f| f.isk.as_ref().is_some_and(|e| e.proto == libc::IPPROTO_UDP as u32)).map(|f| f.id).collect();
        let mut by_id: std::collections::HashMap<u32, Vec<super::inet_queue::Datagram>> = std::collections::HashMap::new();
        if !udp.is_empty() {
            let path = img.dir.join("sk-queues.img");
            let entries = crate::images::load::read_with_data::<SkPacketEntry>(&path, crate::images::Kind::SkQueues, |e| e.length as u64)?;
            for (e, data) in entries.into_iter().filter(|(e, _)| udp.contains(&e.id_for)) {
                by_id.entry(e.id_for).or_default().push(super::inet_queue::datagram(&e, data)?);
            }
        }
        img.extras.insert(Queued(by_id));
        Ok(())
    }

    /// The socket made and bound here, in crust, as the restore will: an
    /// address this host lacks, a port taken, a device missing. In a network
    /// namespace of the tree's own (made by the restore, with its addresses
    /// and no other socket), only the options are tried.
    fn check(&self, file: &FileEntry, img: &DumpImage) -> Option<String> {
        let e = file.isk.as_ref()?;
        let name = format!("file {} ({} socket {})", file.id, kind_name(e), describe(e));
        let trial = || -> Result<()> {
            restorable(file, e)?;
            let sock = new_socket(e.family as i32, e.r#type as i32, e.proto as i32).ctx(|| "making a trial socket".to_string())?;
            set_options(&sock, e)?;
            // A connection binds in repair mode, past sockets on its port
            // (files/tcp.rs checks what it needs).
            if is_connection(e) || crate::ns::is_own(img, "net") {
                return Ok(());
            }
            bind(&sock, e)
        };
        trial().err().map(|err| format!("{name}: {err}"))
    }

    fn restore(&self, file: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let e = file.isk.as_ref().ok_or_else(|| super::missing(file, "inet socket"))?;
        restorable(file, e)?;
        let (fd, sock) = make_socket(r, e)?;
        set_options(&sock, e)?;
        if is_connection(e) {
            let local = addr(e.family, &e.src_addr, e.src_port).ok_or_else(|| bad(e, "its address"))?;
            let peer = addr(e.family, &e.dst_addr, e.dst_port).ok_or_else(|| bad(e, "its peer address"))?;
            super::tcp::restore(r.image, e, &sock, local, peer)?;
            set_after_bind(&sock, e)?;
            return Ok(fd);
        }
        bind(&sock, e)?;
        if e.state == TCP_LISTEN as u32 {
            nix::sys::socket::listen(&sock, nix::sys::socket::Backlog::new(e.backlog as i32).map_err(|err| Error::Sys { context: context(e)(), err })?)
                .ctx(context(e))?;
        }
        if e.proto == libc::IPPROTO_UDP as u32 && e.state == TCP_ESTABLISHED as u32 {
            let peer = addr(e.family, &e.dst_addr, e.dst_port).ok_or_else(|| bad(e, "its peer address"))?;
            nix::sys::socket::connect(sock.as_raw_fd(), &storage(peer)).ctx(context(e))?;
        }
        if let Some(datagrams) = super::loaded::<Queued>(r.image, "sk-queues.img")?.0.get(&file.id) {
            super::inet_queue::refill(r.task.pid, &sock, datagrams, context(e))?;
        }
        if let Some(off) = e.opts.crust_peek_off.filter(|_| e.proto == libc::IPPROTO_UDP as u32) {
            set_int(&sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off).ctx(context(e))?;
        }
        set_after_bind(&sock, e)?;
        shut_down(&sock, e)?;
        Ok(fd)
    }
}

/// The datagrams queued on UDP sockets at dump, by file id.
struct Queued(std::collections::HashMap<u32, Vec<super::inet_queue::Datagram>>);

/// What sockfs calls the protocols this kind takes (system.sockprotoname);
/// raw and ping sockets are taken to be refused by name.
const INET_PROTOS: &[&str] = &["TCP", "TCPv6", "UDP", "UDPv6", "RAW", "RAWv6", "PING", "PINGv6"];

const TCP_ESTABLISHED: i32 = 1;

/// An established TCP connection (see files/tcp.rs).
fn is_connection(e: &InetSkEntry) -> bool {
    e.proto == libc::IPPROTO_TCP as u32 && e.state == TCP_ESTABLISHED as u32
}
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const TCP_SYN_RECV: u8 = 3;
/// How inet_diag reports a TCP socket that is bound but neither listening
/// nor connected (kernel 6.6 and later).
const TCP_BOUND_INACTIVE: u8 = 13;

fn state_name(s: i32) -> String {
    let name = match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => return format!("{s}"),
    };
    name.to_string()
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}



/// A socket made in crust (to compare, or to try a bind).
fn new_socket(family: i32, ty: i32, protocol: i32) -> nix::Result<OwnedFd> {
    // SAFETY: socket(2) takes plain integers and returns a new fd (or -1).
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) };
    let fd = Errno::result(fd)?;
    // SAFETY: the call just made this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The socket's own address (or its peer's); None when it has none.
fn sock_name(sock: &OwnedFd, peer: bool) -> nix::Result<Option<SocketAddr>> {
    let got = if peer {
        nix::sys::socket::getpeername::<SockaddrStorage>(sock.as_raw_fd())
    } else {
        nix::sys::socket::getsockname::<SockaddrStorage>(sock.as_raw_fd())
    };
    let a = match got {
        Err(Errno::ENOTCONN) => return Ok(None),
        other => other?,
    };
    Ok(if let Some(v4) = a.as_sockaddr_in() {
        Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())))
    } else {
        a.as_sockaddr_in6().map(|v6| SocketAddr::V6(SocketAddrV6::new(v6.ip(), v6.port(), v6.flowinfo(), v6.scope_id())))
    })
}

fn unspecified(family: i32) -> SocketAddr {
    if family == libc::AF_INET6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    }
}

/// Did the socket take part in a connection (TCP_INFO's tcpi_segs_out or
/// tcpi_segs_in, which connect(AF_UNSPEC) resets)?
fn had_connection(sock: &OwnedFd) -> nix::Result<bool> {
    let info = get_raw(sock, libc::IPPROTO_TCP, libc::TCP_INFO, 144)?;
    Ok(info.get(136..144).is_some_and(|segs| segs.iter().any(|&b| b != 0)))
}

/// Is an error waiting on the socket (sk_err, or its error queue)?
fn pending_error(sock: &OwnedFd) -> nix::Result<bool> {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(sock.as_fd(), nix::poll::PollFlags::empty())];
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO)?;
    Ok(fds[0].revents().is_some_and(|r| r.contains(nix::poll::PollFlags::POLLERR)))
}

/// tcpi_state, the first byte of TCP_INFO.
fn tcp_state(sock: &OwnedFd) -> nix::Result<i32> {
    Ok(get_raw(sock, libc::IPPROTO_TCP, libc::TCP_INFO, 8)?.first().copied().unwrap_or(0) as i32)
}

/// An address as the image keeps it: 32-bit words in network order.
fn words(ip: IpAddr) -> Vec<u32> {
    match ip {
        IpAddr::V4(a) => vec![u32::from_ne_bytes(a.octets())],
        IpAddr::V6(a) => a.octets().chunks(4).map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes"))).collect(),
    }
}

/// The address of an image entry, if it is well formed.
pub(super) fn addr(family: u32, w: &[u32], port: u32) -> Option<SocketAddr> {
    let port = u16::try_from(port).ok()?;
    let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_ne_bytes()).collect();
    match (family as i32, bytes.len()) {
        (libc::AF_INET, 4) => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)), port)),
        (libc::AF_INET, 0) => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
        (libc::AF_INET6, 16) => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)), port)),
        (libc::AF_INET6, 0) => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)),
        _ => None,
    }
}

fn storage(a: SocketAddr) -> SockaddrStorage {
    match a {
        SocketAddr::V4(v4) => {
            let s = SockaddrIn::from(v4);
            // SAFETY: a sockaddr_in of its own length.
            unsafe { SockaddrStorage::from_raw(s.as_ptr(), Some(s.len())) }.expect("a sockaddr_in")
        }
        SocketAddr::V6(v6) => {
            let s = SockaddrIn6::from(v6);
            // SAFETY: a sockaddr_in6 of its own length.
            unsafe { SockaddrStorage::from_raw(s.as_ptr(), Some(s.len())) }.expect("a sockaddr_in6")
        }
    }
}

fn kind_name(e: &InetSkEntry) -> &'static str {
    match (e.proto as i32, e.family as i32) {
        (libc::IPPROTO_TCP, libc::AF_INET6) => "TCPv6",
        (libc::IPPROTO_TCP, _) => "TCP",
        (_, libc::AF_INET6) => "UDPv6",
        _ => "UDP",
    }
}

/// "1.2.3.4:80", and " -> peer" when connected.
fn describe(e: &InetSkEntry) -> String {
    let local = addr(e.family, &e.src_addr, e.src_port).map_or_else(|| "?".into(), |a| a.to_string());
    match addr(e.family, &e.dst_addr, e.dst_port) {
        Some(p) if e.dst_port != 0 => format!("{local} -> {p}"),
        _ => local,
    }
}

fn context(e: &InetSkEntry) -> impl Fn() -> String + '_ {
    move || format!("setting up {} socket {} (inode {}) of the image", kind_name(e), describe(e), e.ino)
}

fn bad(e: &InetSkEntry, what: &str) -> Error {
    Error::image("files.img", format!("inet socket {}: {what} is malformed", e.ino))
}

/// What sock_diag says of one socket, and of the connections being set up
/// on its port.
#[derive(Clone, Copy, Default)]
struct Diag {
    /// Bytes queued to read (UDP), or connections waiting in the accept queue (a listener).
    rqueue: u32,
    /// A listener's backlog.
    wqueue: u32,
    /// Connections in SYN_RECV on the port of a listener.
    syn_recv: u32,
    /// Directions shut down (RCV_SHUTDOWN 1, SEND_SHUTDOWN 2).
    shutdown: u8,
}

/// One inet_diag dump per family and protocol, for every socket of a dump
/// (the tree is frozen: what it says stays true).
#[derive(Default)]
struct DiagCache {
    dumps: std::collections::HashMap<(i32, i32), Dumped>,
}

#[derive(Default)]
struct Dumped {
    by_inode: std::collections::HashMap<u32, Diag>,
    syn_recv_by_port: std::collections::HashMap<u16, u32>,
}

impl DiagCache {
    /// What inet_diag says of the socket with inode `ino` (bound to `port`)
    /// of process `pid` (asked in its network namespace: every process of
    /// the tree is in one). An unbound socket is in no table: all zero then.
    fn of(&mut self, pid: i32, family: i32, protocol: i32, ino: u32, port: u16) -> Result<Diag> {
        let dumped = match self.dumps.entry((family, protocol)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut d = Dumped::default();
                super::in_netns_of(pid, || {
                    diag_dump(family as u8, protocol as u8, |m| {
                        if m.state == TCP_SYN_RECV && m.inode == 0 {
                            *d.syn_recv_by_port.entry(m.sport).or_default() += 1;
                        } else if m.inode != 0 {
                            d.by_inode.insert(m.inode, Diag { rqueue: m.rqueue, wqueue: m.wqueue, syn_recv: 0, shutdown: m.shutdown });
                        }
                    })
                    .ctx(|| format!("asking sock_diag about inet socket {ino}"))
                })?;
                v.insert(d)
            }
        };
        let mut diag = dumped.by_inode.get(&ino).copied().unwrap_or_default();
        if protocol == libc::IPPROTO_TCP && port != 0 {
            diag.syn_recv = dumped.syn_recv_by_port.get(&port).copied().unwrap_or(0);
        }
        Ok(diag)
    }
}

fn shutdown_name(how: u8) -> &'static str {
    match how {
        1 => "reading",
        2 => "writing",
        _ => "reading and writing",
    }
}

/// One socket of an inet_diag dump.
struct DiagMsg {
    state: u8,
    sport: u16,
    rqueue: u32,
    wqueue: u32,
    inode: u32,
    shutdown: u8,
}

/// Every socket of `family` and `protocol` in the calling thread's network namespace.
fn diag_dump(family: u8, protocol: u8, mut each: impl FnMut(&DiagMsg)) -> nix::Result<()> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const INET_DIAG_SHUTDOWN: u16 = 8;
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    let nl = socket(AddressFamily::Netlink, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkSockDiag)?;
    // nlmsghdr (16 bytes) + inet_diag_req_v2 (56 bytes): every state, no id.
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&[0u8; 8]); // sequence number, port id
    req.extend_from_slice(&[family, protocol, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    nix::unistd::write(&nl, &req)?;
    let mut buf = vec![0u8; 64 << 10];
    let u16_at = |b: &[u8], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    loop {
        let n = nix::unistd::read(&nl, &mut buf)?;
        if n == 0 {
            return Err(Errno::EPROTO);
        }
        let mut at = 0;
        while at + 16 <= n {
            let len = u32_at(&buf, at) as usize;
            if len < 16 || at + len > n {
                return Err(Errno::EPROTO);
            }
            let ty = u16_at(&buf, at + 4);
            let body = &buf[at + 16..at + len];
            if ty == libc::NLMSG_DONE as u16 {
                return Ok(());
            }
            if ty == libc::NLMSG_ERROR as u16 {
                let code = if body.len() >= 4 { -(u32_at(body, 0) as i32) } else { libc::EPROTO };
                return Err(Errno::from_raw(code));
            }
            // inet_diag_msg: family, state, timer, retrans, id (48 bytes),
            // expires, rqueue, wqueue, uid, inode.
            if ty == SOCK_DIAG_BY_FAMILY && body.len() >= 72 {
                // Attributes follow; INET_DIAG_SHUTDOWN comes unasked.
                let mut shutdown = 0;
                let mut a = 72;
                while a + 4 <= body.len() {
                    let (alen, atype) = (u16_at(body, a) as usize, u16_at(body, a + 2));
                    if alen < 4 || a + alen > body.len() {
                        break;
                    }
                    if atype == INET_DIAG_SHUTDOWN && alen > 4 {
                        shutdown = body[a + 4];
                    }
                    a += (alen + 3) & !3;
                }
                each(&DiagMsg {
                    state: body[1],
                    sport: u16::from_be_bytes([body[4], body[5]]),
                    rqueue: u32_at(body, 56),
                    wqueue: u32_at(body, 60),
                    inode: u32_at(body, 68),
                    shutdown,
                });
            }
            at += (len + 3) & !3;
        }
    }
}

/// Who holds `port` of `protocol` here: each process with a socket on it,
/// found by inode in /proc/*/fd.
fn holders(protocol: i32, port: u16) -> String {
    let mut inodes = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let _ = diag_dump(family as u8, protocol as u8, |m| {
            if m.sport == port && m.inode != 0 && m.state != TCP_BOUND_INACTIVE {
                inodes.push(m.inode);
            }
        });
    }
    let links: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let held = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten().any(|f| {
            std::fs::read_link(f.path()).is_ok_and(|l| links.iter().any(|s| l.as_os_str() == s.as_str()))
        });
        if held {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push(format!("process {pid} ({})", comm.trim()));
        }
    }
    if found.is_empty() {
        "a socket no process here holds (another network namespace's, or one closing)".to_string()
    } else {
        found.join(", ")
    }
}

/// A multicast group the socket joined, with the interface, if any: the
/// image has no place for memberships. The kernel lists the groups of each
/// interface, not who joined them: each is asked of the socket
/// (MCAST_MSFILTER answers EADDRNOTAVAIL for a group it is not in).
fn joined_group(sock: &OwnedFd, family: i32, pid: i32) -> nix::Result<Option<(IpAddr, u32)>> {
    const MCAST_MSFILTER: i32 = 48;
    // struct group_filter up to its source list: interface, padding, the group
    // (a sockaddr_storage), mode, number of sources.
    const SIZE: usize = 144;
    let mut groups: Vec<(IpAddr, u32)> = Vec::new();
    // /proc/net/igmp: "Idx Device : ..." lines, each followed by tab-led
    // lines whose first word is a group (its network-order bytes as a
    // native-endian hex word).
    let igmp = std::fs::read_to_string(format!("/proc/{pid}/net/igmp")).unwrap_or_default();
    let mut ifindex = 0;
    for line in igmp.lines().skip(1) {
        let first = line.split_whitespace().next().unwrap_or("");
        if !line.starts_with('\t') {
            ifindex = first.parse().unwrap_or(0);
        } else if let Ok(g) = u32::from_str_radix(first, 16) {
            groups.push((IpAddr::V4(Ipv4Addr::from(g.to_ne_bytes())), ifindex));
        }
    }
    if family == libc::AF_INET6 {
        // /proc/net/igmp6: index, device, the group in hex, users, flags, timer.
        let igmp6 = std::fs::read_to_string(format!("/proc/{pid}/net/igmp6")).unwrap_or_default();
        for line in igmp6.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let (Some(idx), Some(hex)) = (w.first().and_then(|i| i.parse().ok()), w.get(2)) else { continue };
            if let Ok(g) = u128::from_str_radix(hex, 16) {
                groups.push((IpAddr::V6(Ipv6Addr::from(g)), idx));
            }
        }
    }
    for (group, ifindex) in groups {
        let mut gf = [0u8; SIZE];
        gf[0..4].copy_from_slice(&ifindex.to_ne_bytes());
        let level = match group {
            IpAddr::V4(g) => {
                gf[8..10].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                gf[12..16].copy_from_slice(&g.octets());
                libc::IPPROTO_IP
            }
            IpAddr::V6(g) => {
                gf[8..10].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                gf[16..32].copy_from_slice(&g.octets());
                libc::IPPROTO_IPV6
            }
        };
        let mut n = SIZE as libc::socklen_t;
        // SAFETY: the kernel reads and writes at most `n` bytes at gf, which holds SIZE.
        let r = unsafe { libc::getsockopt(sock.as_raw_fd(), level, MCAST_MSFILTER, gf.as_mut_ptr().cast(), &mut n) };
        match Errno::result(r) {
            Ok(_) => return Ok(Some((group, ifindex))),
            Err(Errno::EADDRNOTAVAIL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// A sysctl-free way to know an option's default: a fresh socket's value.
struct Watched {
    level: i32,
    opt: i32,
    name: &'static str,
    len: usize,
    /// Which sockets it is asked of (V4/V6, TCP/UDP bits).
    on: u8,
    /// It follows the connection (the MSS, the window): asked only of
    /// sockets that never had one.
    conn: bool,
}

const V4: u8 = 1;
const V6: u8 = 2;
const TCP: u8 = 4;
const UDP: u8 = 8;
const ALL: u8 = V4 | V6 | TCP | UDP;

const fn w(level: i32, opt: i32, name: &'static str, on: u8) -> Watched {
    Watched { level, opt, name, len: 4, on, conn: false }
}

/// Options CRIU's image has no field for: a dump refuses a socket that has
/// one set otherwise than a fresh socket of its kind.
const WATCHED: &[Watched] = &[
    w(libc::SOL_SOCKET, 1, "SO_DEBUG", ALL),
    w(libc::SOL_SOCKET, 29, "SO_TIMESTAMP", ALL),
    w(libc::SOL_SOCKET, 35, "SO_TIMESTAMPNS", ALL),
    w(libc::SOL_SOCKET, 37, "SO_TIMESTAMPING", ALL),
    w(libc::SOL_SOCKET, 40, "SO_RXQ_OVFL", ALL),
    w(libc::SOL_SOCKET, 41, "SO_WIFI_STATUS", ALL),
    // A UDP socket's is kept (crust_peek_off).
    w(libc::SOL_SOCKET, 42, "SO_PEEK_OFF", V4 | V6 | TCP),
    w(libc::SOL_SOCKET, 43, "SO_NOFCS", ALL),
    w(libc::SOL_SOCKET, 44, "SO_LOCK_FILTER", ALL),
    w(libc::SOL_SOCKET, 45, "SO_SELECT_ERR_QUEUE", ALL),
    w(libc::SOL_SOCKET, 46, "SO_BUSY_POLL", ALL),
    w(libc::SOL_SOCKET, 47, "SO_MAX_PACING_RATE", ALL),
    w(libc::SOL_SOCKET, 60, "SO_ZEROCOPY", ALL),
    w(libc::SOL_SOCKET, 69, "SO_PREFER_BUSY_POLL", ALL),
    w(libc::SOL_SOCKET, 70, "SO_BUSY_POLL_BUDGET", ALL),
    w(libc::SOL_SOCKET, 73, "SO_RESERVE_MEM", ALL),
    w(libc::SOL_SOCKET, 75, "SO_RCVMARK", ALL),
    w(libc::SOL_SOCKET, 76, "SO_PASSPIDFD", ALL),
    Watched { level: libc::SOL_SOCKET, opt: 61, name: "SO_TXTIME", len: 8, on: ALL, conn: false },
    // IP options; asked of IPv6 sockets too (they apply to v4-mapped
    // traffic). Multicast ones only of UDP: TCP does not multicast, and an
    // accepted socket takes its multicast TTL from the peer's SYN.
    Watched { level: libc::IPPROTO_IP, opt: 4, name: "IP_OPTIONS", len: 40, on: ALL, conn: false },
    w(libc::IPPROTO_IP, 1, "IP_TOS", V6 | TCP | UDP),
    w(libc::IPPROTO_IP, 2, "IP_TTL", V6 | TCP | UDP),
    w(libc::IPPROTO_IP, 6, "IP_RECVOPTS", ALL),
    w(libc::IPPROTO_IP, 7, "IP_RETOPTS", ALL),
    w(libc::IPPROTO_IP, 10, "IP_MTU_DISCOVER", ALL),
    w(libc::IPPROTO_IP, 11, "IP_RECVERR", ALL),
    w(libc::IPPROTO_IP, 12, "IP_RECVTTL", ALL),
    w(libc::IPPROTO_IP, 13, "IP_RECVTOS", ALL),
    w(libc::IPPROTO_IP, 18, "IP_PASSSEC", ALL),
    w(libc::IPPROTO_IP, 19, "IP_TRANSPARENT", ALL),
    w(libc::IPPROTO_IP, 20, "IP_RECVORIGDSTADDR", ALL),
    w(libc::IPPROTO_IP, 21, "IP_MINTTL", ALL),
    w(libc::IPPROTO_IP, 22, "IP_NODEFRAG", ALL),
    w(libc::IPPROTO_IP, 23, "IP_CHECKSUM", ALL),
    w(libc::IPPROTO_IP, 24, "IP_BIND_ADDRESS_NO_PORT", ALL),
    w(libc::IPPROTO_IP, 25, "IP_RECVFRAGSIZE", ALL),
    w(libc::IPPROTO_IP, 26, "IP_RECVERR_RFC4884", ALL),
    w(libc::IPPROTO_IP, 32, "IP_MULTICAST_IF", V4 | V6 | UDP),
    w(libc::IPPROTO_IP, 33, "IP_MULTICAST_TTL", V4 | V6 | UDP),
    w(libc::IPPROTO_IP, 34, "IP_MULTICAST_LOOP", V4 | V6 | UDP),
    w(libc::IPPROTO_IP, 49, "IP_MULTICAST_ALL", V4 | V6 | UDP),
    w(libc::IPPROTO_IP, 50, "IP_UNICAST_IF", ALL),
    w(libc::IPPROTO_IP, 51, "IP_LOCAL_PORT_RANGE", ALL),
    w(libc::IPPROTO_IP, 8, "IP_PKTINFO", V6 | TCP | UDP),
    w(libc::IPPROTO_IP, 15, "IP_FREEBIND", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 2, "IPV6_2292PKTINFO", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 3, "IPV6_2292HOPOPTS", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 4, "IPV6_2292DSTOPTS", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 5, "IPV6_2292RTHDR", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 8, "IPV6_2292HOPLIMIT", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 11, "IPV6_FLOWINFO", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 17, "IPV6_MULTICAST_IF", V6 | UDP),
    w(libc::IPPROTO_IPV6, 18, "IPV6_MULTICAST_HOPS", V6 | UDP),
    w(libc::IPPROTO_IPV6, 19, "IPV6_MULTICAST_LOOP", V6 | UDP),
    w(libc::IPPROTO_IPV6, 23, "IPV6_MTU_DISCOVER", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 25, "IPV6_RECVERR", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 29, "IPV6_MULTICAST_ALL", V6 | UDP),
    w(libc::IPPROTO_IPV6, 31, "IPV6_RECVERR_RFC4884", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 33, "IPV6_FLOWINFO_SEND", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 51, "IPV6_RECVHOPLIMIT", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 53, "IPV6_RECVHOPOPTS", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 56, "IPV6_RECVRTHDR", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 58, "IPV6_RECVDSTOPTS", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 60, "IPV6_RECVPATHMTU", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 62, "IPV6_DONTFRAG", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 66, "IPV6_RECVTCLASS", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 70, "IPV6_AUTOFLOWLABEL", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 72, "IPV6_ADDR_PREFERENCES", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 73, "IPV6_MINHOPCOUNT", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 74, "IPV6_RECVORIGDSTADDR", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 75, "IPV6_TRANSPARENT", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 76, "IPV6_UNICAST_IF", V6 | TCP | UDP),
    w(libc::IPPROTO_IPV6, 77, "IPV6_RECVFRAGSIZE", V6 | TCP | UDP),
    Watched { level: libc::IPPROTO_TCP, opt: 2, name: "TCP_MAXSEG", len: 4, on: V4 | V6 | TCP, conn: true },
    w(libc::IPPROTO_TCP, 7, "TCP_SYNCNT", V4 | V6 | TCP),
    w(libc::IPPROTO_TCP, 8, "TCP_LINGER2", V4 | V6 | TCP),
    w(libc::IPPROTO_TCP, 9, "TCP_DEFER_ACCEPT", V4 | V6 | TCP),
    Watched { level: libc::IPPROTO_TCP, opt: 10, name: "TCP_WINDOW_CLAMP", len: 4, on: V4 | V6 | TCP, conn: true },
    Watched { level: libc::IPPROTO_TCP, opt: 13, name: "TCP_CONGESTION", len: 16, on: V4 | V6 | TCP, conn: false },
    w(libc::IPPROTO_TCP, 16, "TCP_THIN_LINEAR_TIMEOUTS", V4 | V6 | TCP),
    w(libc::IPPROTO_TCP, 18, "TCP_USER_TIMEOUT", V4 | V6 | TCP),
    w(libc::IPPROTO_TCP, 23, "TCP_FASTOPEN", V4 | V6 | TCP),
    w(libc::IPPROTO_TCP, 25, "TCP_NOTSENT_LOWAT", V4 | V6 | TCP),
    w(libc::IPPROTO_TCP, 27, "TCP_SAVE_SYN", V4 | V6 | TCP),
    w(libc::IPPROTO_TCP, 30, "TCP_FASTOPEN_CONNECT", V4 | V6 | TCP),
    Watched { level: libc::IPPROTO_TCP, opt: 31, name: "TCP_ULP", len: 16, on: V4 | V6 | TCP, conn: false },
    w(libc::IPPROTO_TCP, 34, "TCP_FASTOPEN_NO_COOKIE", V4 | V6 | TCP),
    w(libc::IPPROTO_TCP, 36, "TCP_INQ", V4 | V6 | TCP),
    w(libc::IPPROTO_TCP, 37, "TCP_TX_DELAY", V4 | V6 | TCP),
    w(libc::IPPROTO_UDP, 1, "UDP_CORK", V4 | V6 | UDP),
    w(libc::IPPROTO_UDP, 100, "UDP_ENCAP", V4 | V6 | UDP),
    w(libc::IPPROTO_UDP, 101, "UDP_NO_CHECK6_TX", V4 | V6 | UDP),
    w(libc::IPPROTO_UDP, 102, "UDP_NO_CHECK6_RX", V4 | V6 | UDP),
    w(libc::IPPROTO_UDP, 103, "UDP_SEGMENT", V4 | V6 | UDP),
    w(libc::IPPROTO_UDP, 104, "UDP_GRO", V4 | V6 | UDP),
];

fn kind_bits(family: i32, protocol: i32) -> (u8, u8) {
    (if family == libc::AF_INET6 { V6 } else { V4 }, if protocol == libc::IPPROTO_TCP { TCP } else { UDP })
}

/// Refuse the socket if an option without a field in the image differs
/// from a fresh socket's.
fn check_others(fd: &OpenFd, sock: &OwnedFd, fresh: &OwnedFd, family: i32, protocol: i32, had_connection: bool) -> Result<()> {
    let (fam, proto) = kind_bits(family, protocol);
    for o in WATCHED.iter().filter(|o| o.on & fam != 0 && o.on & proto != 0 && !(o.conn && had_connection)) {
        let (mine, base) = (get_raw(sock, o.level, o.opt, o.len), get_raw(fresh, o.level, o.opt, o.len));
        if mine != base {
            let show = |v: &nix::Result<Vec<u8>>| match v {
                Ok(b) if b.len() == 4 => i32::from_ne_bytes(b[..4].try_into().expect("4 bytes")).to_string(),
                Ok(b) if b.iter().all(|c| c.is_ascii_graphic() || *c == 0) => format!("{:?}", String::from_utf8_lossy(b).trim_end_matches('\0')),
                Ok(b) => format!("{b:02x?}"),
                Err(e) => e.desc().to_string(),
            };
            return Err(fd.unsupported(&format!("inet sockets with {} set ({}, a fresh socket has {}) are", o.name, show(&mine), show(&base))));
        }
    }
    Ok(())
}

/// The classic BPF filter attached to the socket (SO_ATTACH_FILTER), one
/// struct sock_filter per word as CRIU keeps it; an eBPF program
/// (SO_ATTACH_BPF) has no such form and is refused.
fn socket_filter(fd: &OpenFd, sock: &OwnedFd) -> Result<Vec<u64>> {
    let what = || format!("reading the socket filter of fd {} of process {}", fd.fd, fd.pid);
    // SO_GET_FILTER counts in instructions (8 bytes each), both ways; with
    // none asked it says how many there are.
    let mut n: libc::socklen_t = 0;
    // SAFETY: with a length of 0 the kernel writes nothing at the (null)
    // buffer, only the count into `n`.
    let r = unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_GET_FILTER, std::ptr::null_mut(), &mut n) };
    match Errno::result(r) {
        Err(Errno::EACCES) => return Err(fd.unsupported("inet sockets with an eBPF socket filter (SO_ATTACH_BPF) are")),
        other => other.ctx(what)?,
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut prog = vec![0u64; n as usize];
    let mut got = n;
    // SAFETY: the kernel writes at most `n` instructions of 8 bytes at prog, which holds `n` u64.
    let r = unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_GET_FILTER, prog.as_mut_ptr().cast(), &mut got) };
    Errno::result(r).ctx(what)?;
    prog.truncate(got as usize);
    Ok(prog)
}

/// Attach the image's classic BPF filter to the socket.
fn attach_filter(sock: &OwnedFd, prog: &[u64], what: impl Fn() -> String) -> Result<()> {
    if prog.is_empty() {
        return Ok(());
    }
    let len = u16::try_from(prog.len()).map_err(|_| Error::Invalid(format!("{}: a socket filter of {} instructions", what(), prog.len())))?;
    let fprog = libc::sock_fprog { len, filter: prog.as_ptr() as *mut libc::sock_filter };
    // SAFETY: the kernel reads the sock_fprog and the `len` instructions it
    // points to (prog, 8 bytes each, alive for the call).
    let r = unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, (&fprog as *const libc::sock_fprog).cast(), std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t)
    };
    Errno::result(r).map(drop).ctx(what)
}

const SO_BUF_LOCK: i32 = 72;
const SOCK_SNDBUF_LOCK: u32 = 1;
const SOCK_RCVBUF_LOCK: u32 = 2;

/// The options the image has fields for. Values that follow sysctls (TTL,
/// keepalive timings) are kept only where they differ from a fresh
/// socket's, so the restored socket follows this host's sysctls as the
/// original did.
fn read_options(sock: &OwnedFd, fresh: &OwnedFd, family: i32, protocol: i32) -> nix::Result<(SkOptsEntry, IpOptsEntry, Option<TcpOptsEntry>, Option<bool>)> {
    let int = |level, opt| get_int(sock, level, opt);
    let flag = |level, opt| get_int(sock, level, opt).map(|v| v != 0);
    let differs = |level, opt| -> nix::Result<Option<u32>> {
        let v = get_int(sock, level, opt)?;
        Ok((v != get_int(fresh, level, opt)?).then_some(v as u32))
    };
    let sol = libc::SOL_SOCKET;
    let tv = |opt| -> nix::Result<(u64, u64)> {
        let b = get_raw(sock, sol, opt, 16)?;
        let half = |at: usize| b.get(at..at + 8).map_or(0, |s| i64::from_ne_bytes(s.try_into().expect("8 bytes")) as u64);
        Ok((half(0), half(8)))
    };
    let (snd_s, snd_us) = tv(libc::SO_SNDTIMEO)?;
    let (rcv_s, rcv_us) = tv(libc::SO_RCVTIMEO)?;
    let linger = get_raw(sock, sol, libc::SO_LINGER, 8)?;
    let linger_at = |at: usize| linger.get(at..at + 4).map_or(0, |s| i32::from_ne_bytes(s.try_into().expect("4 bytes")));
    let dev = get_raw(sock, sol, libc::SO_BINDTODEVICE, libc::IFNAMSIZ)?;
    let dev = String::from_utf8_lossy(dev.split(|&c| c == 0).next().unwrap_or(&[])).into_owned();
    let opts = SkOptsEntry {
        so_sndbuf: int(sol, libc::SO_SNDBUF)? as u32,
        so_rcvbuf: int(sol, libc::SO_RCVBUF)? as u32,
        so_snd_tmo_sec: snd_s,
        so_snd_tmo_usec: snd_us,
        so_rcv_tmo_sec: rcv_s,
        so_rcv_tmo_usec: rcv_us,
        reuseaddr: Some(flag(sol, libc::SO_REUSEADDR)?),
        so_priority: Some(int(sol, libc::SO_PRIORITY)? as u32),
        so_rcvlowat: Some(int(sol, libc::SO_RCVLOWAT)? as u32),
        so_mark: Some(int(sol, libc::SO_MARK)? as u32),
        // Unix and netlink sockets only, on newer kernels.
        so_passcred: unsupported_is_none(flag(sol, libc::SO_PASSCRED))?,
        so_passsec: unsupported_is_none(flag(sol, libc::SO_PASSSEC))?,
        so_dontroute: Some(flag(sol, libc::SO_DONTROUTE)?),
        so_no_check: Some(flag(sol, libc::SO_NO_CHECK)?),
        so_bound_dev: (!dev.is_empty()).then_some(dev),
        so_reuseport: Some(flag(sol, libc::SO_REUSEPORT)?),
        so_broadcast: Some(flag(sol, libc::SO_BROADCAST)?),
        so_keepalive: Some(flag(sol, libc::SO_KEEPALIVE)?),
        so_oobinline: Some(int(sol, libc::SO_OOBINLINE)? as u32),
        so_linger: (linger_at(0) != 0).then_some(linger_at(4) as u32),
        so_buf_lock: Some(int(sol, SO_BUF_LOCK)? as u32 & (SOCK_SNDBUF_LOCK | SOCK_RCVBUF_LOCK)),
        ..Default::default()
    };
    let v6 = family == libc::AF_INET6;
    let ip_opts = if v6 {
        IpOptsEntry {
            freebind: Some(flag(libc::IPPROTO_IPV6, 78)?),
            pktinfo: Some(flag(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)?),
            tos: differs(libc::IPPROTO_IPV6, libc::IPV6_TCLASS)?,
            ttl: differs(libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS)?,
            ..Default::default()
        }
    } else {
        IpOptsEntry {
            freebind: Some(flag(libc::IPPROTO_IP, libc::IP_FREEBIND)?),
            pktinfo: Some(flag(libc::IPPROTO_IP, libc::IP_PKTINFO)?),
            tos: differs(libc::IPPROTO_IP, libc::IP_TOS)?,
            ttl: differs(libc::IPPROTO_IP, libc::IP_TTL)?,
            ..Default::default()
        }
    };
    let tcp = libc::IPPROTO_TCP;
    let tcp_opts = if protocol == tcp {
        Some(TcpOptsEntry {
            cork: Some(flag(tcp, libc::TCP_CORK)?),
            nodelay: Some(flag(tcp, libc::TCP_NODELAY)?),
            keepcnt: differs(tcp, libc::TCP_KEEPCNT)?,
            keepidle: differs(tcp, libc::TCP_KEEPIDLE)?,
            keepintvl: differs(tcp, libc::TCP_KEEPINTVL)?,
        })
    } else {
        None
    };
    let v6only = if v6 { Some(flag(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?) } else { None };
    Ok((opts, ip_opts, tcp_opts, v6only))
}

/// An option this kernel does not have for the socket: None.
fn unsupported_is_none<T>(v: nix::Result<T>) -> nix::Result<Option<T>> {
    match v {
        Err(Errno::EOPNOTSUPP | Errno::ENOPROTOOPT) => Ok(None),
        other => other.map(Some),
    }
}

/// An image entry crust can make again (a CRIU image may hold others).
fn restorable(file: &FileEntry, e: &InetSkEntry) -> Result<()> {
    let why = match (e.proto as i32, e.state as i32) {
        (libc::IPPROTO_TCP, TCP_CLOSE | TCP_LISTEN | TCP_ESTABLISHED) | (libc::IPPROTO_UDP, TCP_CLOSE | TCP_ESTABLISHED) => None,
        (libc::IPPROTO_TCP, s) => Some(format!("TCP sockets in state {} are", state_name(s))),
        (p, _) => Some(format!("inet sockets of protocol {p} are")),
    };
    if let Some(why) = why {
        return Err(Error::unsupported(format!("file {} (inet socket {})", file.id, e.ino), format!("{why} not supported yet")));
    }
    if !matches!(e.family as i32, libc::AF_INET | libc::AF_INET6) || !matches!(e.r#type as i32, libc::SOCK_STREAM | libc::SOCK_DGRAM) {
        return Err(bad(e, "its family or type"));
    }
    if addr(e.family, &e.src_addr, e.src_port).is_none() || addr(e.family, &e.dst_addr, e.dst_port).is_none() {
        return Err(bad(e, "an address"));
    }
    Ok(())
}

/// The socket made inside the task (so it belongs to the task's network
/// namespace), moved above the image's fds: its fd there, and crust's copy.
pub(crate) fn make_socket(r: &mut FdRestorer, e: &InetSkEntry) -> Result<(u64, OwnedFd)> {
    let made = r.task.call("socket", libc::SYS_socket, [e.family as u64, e.r#type as u64, e.proto as u64, 0, 0, 0])?;
    let fd = r.to_high(made)?;
    let sock = take_fd(r.task.pid, fd as i32).ctx(context(e))?;
    // The status flags belong to the open file, which crust's copy shares.
    let status = e.flags & libc::O_NONBLOCK as u32;
    if status != 0 {
        nix::fcntl::fcntl(&sock, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::from_bits_truncate(status as i32))).ctx(context(e))?;
    }
    Ok((fd, sock))
}

/// Every option of the image that must be in place before bind (and the
/// others, which may as well be), on crust's copy of the socket.
pub(crate) fn set_options(sock: &OwnedFd, e: &InetSkEntry) -> Result<()> {
    let what = context(e);
    let o = &e.opts;
    let sol = libc::SOL_SOCKET;
    let set = |level, opt, v: i32| set_int(sock, level, opt, v).ctx(&what);
    // Sizes set by the program lock them against autotuning; the kernel
    // doubles what it is given and reports the doubled value.
    let lock = o.so_buf_lock.unwrap_or(SOCK_SNDBUF_LOCK | SOCK_RCVBUF_LOCK);
    if lock & SOCK_SNDBUF_LOCK != 0 {
        set(sol, libc::SO_SNDBUFFORCE, (o.so_sndbuf / 2) as i32)?;
    }
    if lock & SOCK_RCVBUF_LOCK != 0 {
        set(sol, libc::SO_RCVBUFFORCE, (o.so_rcvbuf / 2) as i32)?;
    }
    if o.so_buf_lock.is_some() {
        set(sol, SO_BUF_LOCK, lock as i32)?;
    }
    let tv = |s: u64, us: u64| -> Result<Vec<u8>> {
        match (i64::try_from(s), i64::try_from(us)) {
            (Ok(s), Ok(us)) if us < 1_000_000 => Ok([s.to_ne_bytes(), us.to_ne_bytes()].concat()),
            _ => Err(Error::Invalid(format!("{}: a timeout of {s} s and {us} us", what()))),
        }
    };
    set_raw(sock, sol, libc::SO_SNDTIMEO, &tv(o.so_snd_tmo_sec, o.so_snd_tmo_usec)?).ctx(&what)?;
    set_raw(sock, sol, libc::SO_RCVTIMEO, &tv(o.so_rcv_tmo_sec, o.so_rcv_tmo_usec)?).ctx(&what)?;
    let flags = [
        (libc::SO_PASSCRED, o.so_passcred),
        (libc::SO_PASSSEC, o.so_passsec),
        (libc::SO_DONTROUTE, o.so_dontroute),
        (libc::SO_NO_CHECK, o.so_no_check),
        (libc::SO_REUSEPORT, o.so_reuseport),
        (libc::SO_BROADCAST, o.so_broadcast),
        (libc::SO_KEEPALIVE, o.so_keepalive),
    ];
    // Off is a fresh socket's state (and some are refused on inet sockets).
    for (opt, _) in flags.iter().filter(|(_, v)| *v == Some(true)) {
        set(sol, *opt, 1)?;
    }
    if let Some(v) = o.so_oobinline {
        set(sol, libc::SO_OOBINLINE, v as i32)?;
    }
    // Setting the low-water mark of a TCP socket may grow its receive buffer: only if it was set.
    if let Some(v) = o.so_rcvlowat.filter(|&v| v != 1) {
        set(sol, libc::SO_RCVLOWAT, v as i32)?;
    }
    if let Some(v) = o.so_mark.filter(|&v| v != 0) {
        set(sol, libc::SO_MARK, v as i32)?;
    }
    if let Some(l) = o.so_linger {
        let linger = [1i32.to_ne_bytes(), (l as i32).to_ne_bytes()].concat();
        set_raw(sock, sol, libc::SO_LINGER, &linger).ctx(&what)?;
    }
    if let Some(dev) = o.so_bound_dev.as_ref().filter(|d| !d.is_empty()) {
        set_raw(sock, sol, libc::SO_BINDTODEVICE, dev.as_bytes()).map_err(|err| match err {
            Errno::ENODEV => Error::Invalid(format!("{}: it is bound to device {dev}, which this host does not have", what())),
            err => Error::Sys { context: what(), err },
        })?;
    }
    let v6 = e.family == libc::AF_INET6 as u32;
    if let Some(v) = e.v6only.filter(|_| v6) {
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v as i32)?;
    }
    if let Some(ip) = &e.ip_opts {
        let (level, freebind, pktinfo, tos, ttl) = if v6 {
            (libc::IPPROTO_IPV6, 78, libc::IPV6_RECVPKTINFO, libc::IPV6_TCLASS, libc::IPV6_UNICAST_HOPS)
        } else {
            (libc::IPPROTO_IP, libc::IP_FREEBIND, libc::IP_PKTINFO, libc::IP_TOS, libc::IP_TTL)
        };
        if let Some(v) = ip.freebind {
            set(level, freebind, v as i32)?;
        }
        if let Some(v) = ip.pktinfo {
            set(level, pktinfo, v as i32)?;
        }
        if let Some(v) = ip.tos {
            set(level, tos, v as i32)?;
        }
        if let Some(v) = ip.ttl {
            set(level, ttl, v as i32)?;
        }
    }
    attach_filter(sock, &o.so_filter, &what)?;
    // After the TOS, which sets the priority from itself.
    if let Some(v) = o.so_priority {
        set(sol, libc::SO_PRIORITY, v as i32)?;
    }
    if let Some(t) = &e.tcp_opts {
        let tcp = libc::IPPROTO_TCP;
        let all = [(libc::TCP_NODELAY, t.nodelay.map(u32::from)), (libc::TCP_CORK, t.cork.map(u32::from)), (libc::TCP_KEEPCNT, t.keepcnt), (libc::TCP_KEEPIDLE, t.keepidle), (libc::TCP_KEEPINTVL, t.keepintvl)];
        for (opt, v) in all {
            if let Some(v) = v {
                set(tcp, opt, v as i32)?;
            }
        }
    }
    Ok(())
}

/// Bind to the image's address, if it had one. A TCP socket may bind past
/// connections of the dumped tree still closing on its port (TIME_WAIT), as
/// a restarted server with SO_REUSEADDR would; a socket listening there
/// still stops it. The holder of a taken port is named.
pub(crate) fn bind(sock: &OwnedFd, e: &InetSkEntry) -> Result<()> {
    let local = addr(e.family, &e.src_addr, e.src_port).ok_or_else(|| bad(e, "its address"))?;
    if local.port() == 0 && local.ip().is_unspecified() {
        return Ok(());
    }
    let what = context(e);
    let tcp = e.proto == libc::IPPROTO_TCP as u32;
    // UDP sockets of the tree may share a port by SO_REUSEADDR: theirs, before bind.
    let reuse = tcp || e.opts.reuseaddr == Some(true);
    set_int(sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse as i32).ctx(&what)?;
    match nix::sys::socket::bind(sock.as_raw_fd(), &storage(local)) {
        Ok(()) => Ok(()),
        Err(Errno::EADDRINUSE) => {
            let proto = if tcp { "TCP" } else { "UDP" };
            Err(Error::Invalid(format!("{}: {proto} port {} is already taken on this host, by {}", what(), local.port(), holders(e.proto as i32, local.port()))))
        }
        Err(Errno::EADDRNOTAVAIL) => Err(Error::Invalid(format!("{}: address {} is not present on this host", what(), local.ip()))),
        Err(err) => Err(Error::Sys { context: what(), err }),
    }
}

/// Shut the socket down as the image says. An unconnected socket takes the
/// flags (its reads see EOF, its writes EPIPE) and says ENOTCONN.
fn shut_down(sock: &OwnedFd, e: &InetSkEntry) -> Result<()> {
    use nix::sys::socket::Shutdown;
    let how = match e.shutdown.and_then(|s| SkShutdown::try_from(s).ok()) {
        None | Some(SkShutdown::None) => return Ok(()),
        Some(SkShutdown::Read) => Shutdown::Read,
        Some(SkShutdown::Write) => Shutdown::Write,
        Some(SkShutdown::Both) => Shutdown::Both,
    };
    match nix::sys::socket::shutdown(sock.as_raw_fd(), how) {
        Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
        Err(err) => Err(Error::Sys { context: context(e)(), err }),
    }
}

/// Options that had to wait for bind: SO_REUSEADDR, which a TCP bind borrowed.
pub(crate) fn set_after_bind(sock: &OwnedFd, e: &InetSkEntry) -> Result<()> {
    let v = e.opts.reuseaddr.unwrap_or(false);
    set_int(sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, v as i32).ctx(context(e))
}
