//! Datagrams waiting to be read on a UDP socket. A dump peeks them through
//! crust's copy of the socket (MSG_PEEK, a peek offset walking past each;
//! both undone after, so the tree keeps its queue), with each one's source
//! and the address it was sent to (IP_PKTINFO / IPV6_RECVPKTINFO, turned on
//! for the peek only). They go to sk-queues.img beside unix sockets' queues:
//! criu's sk_packet_entry, its reserved field 3 for the source and a field
//! of crust's own for the destination.
//!
//! A restore queues them again by sending each from a raw socket of the
//! task's network namespace as an IP packet with the original source and
//! destination: a socket bound to the source would need its port free and
//! its address present, which neither a client still running on this host
//! nor a peer on another host leaves. A packet to a local address loops
//! back with its route already chosen, so any source is delivered. The
//! restored socket is then peeked again: a datagram its options or filter
//! turned away fails the restore instead of going missing.

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage};

use super::sockopts::{get_int, set_int};
use super::OpenFd;
use crate::error::{Context, Error, Result};
use crate::images::proto::SkPacketEntry;

/// One datagram of a queue: its bytes, where from and where to.
pub struct Datagram {
    pub data: Vec<u8>,
    pub from: SocketAddr,
    pub to: SocketAddr,
}

/// The largest UDP payload (and what one peek reads).
const MAX_DATAGRAM: usize = 65535;

/// Every datagram queued on `sock` (crust's copy of fd `fd`), in order,
/// left queued, and its peek offset set back to `peek_off`. `local` is the
/// socket's address; `rmem` what sock_diag counts queued (each datagram
/// takes a few hundred bytes of it at least, which bounds how many a peek
/// can meet).
pub fn peek(fd: &OpenFd, sock: &OwnedFd, family: i32, local: SocketAddr, rmem: u32, peek_off: i32) -> Result<Vec<Datagram>> {
    let what = || format!("reading the datagrams queued on fd {} of process {}", fd.fd, fd.pid);
    let (level, opt) = pktinfo_opt(family);
    let had_pktinfo = get_int(sock, level, opt).ctx(what)?;
    set_int(sock, level, opt, 1).ctx(what)?;
    let peeked = set_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).ctx(what).and_then(|()| peek_all(fd, sock, local, rmem));
    // Undone whatever the peek met: the tree keeps its options.
    let undone = set_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, peek_off).and_then(|()| set_int(sock, level, opt, had_pktinfo)).ctx(what);
    let got = peeked?;
    undone?;
    Ok(got)
}

fn pktinfo_opt(family: i32) -> (i32, i32) {
    if family == libc::AF_INET6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    }
}

fn peek_all(fd: &OpenFd, sock: &OwnedFd, local: SocketAddr, rmem: u32) -> Result<Vec<Datagram>> {
    let what = || format!("reading the datagrams queued on fd {} of process {}", fd.fd, fd.pid);
    let most = rmem as usize / 256 + 1;
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut out = Vec::new();
    loop {
        let mut control = nix::cmsg_space!(libc::in6_pktinfo, [u8; 256]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        let msg = match nix::sys::socket::recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, Some(&mut control), flags) {
            Err(Errno::EAGAIN) => return Ok(out),
            other => other.ctx(what)?,
        };
        let n = msg.bytes;
        let mut to = None;
        for c in msg.cmsgs().into_iter().flatten() {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(pi) => to = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr)))),
                ControlMessageOwned::Ipv6PacketInfo(pi) => to = Some(IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr))),
                _ => {}
            }
        }
        let from = msg.address.as_ref().and_then(socket_addr);
        let (Some(from), Some(to)) = (from, to) else {
            return Err(Error::io_other(what(), "a datagram without its source or destination address"));
        };
        if n > MAX_DATAGRAM || msg.flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(fd.unsupported(&format!("a UDP socket on {local} with a datagram of more than {MAX_DATAGRAM} bytes queued (GRO) is")));
        }
        out.push(Datagram { data: buf[..n].to_vec(), from, to: SocketAddr::new(to, local.port()) });
        if out.len() > most {
            return Err(Error::io_other(what(), format!("more datagrams than the {rmem} bytes queued can hold")));
        }
    }
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6(SocketAddrV6::new(v6.ip(), v6.port(), v6.flowinfo(), v6.scope_id())))
}

/// A socket address as the image keeps it: the kernel's sockaddr_in or
/// sockaddr_in6.
fn encode(a: SocketAddr) -> Vec<u8> {
    fn bytes(s: &impl SockaddrLike) -> Vec<u8> {
        // SAFETY: a sockaddr of `len` bytes, alive for the copy.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() as usize) }.to_vec()
    }
    match a {
        SocketAddr::V4(v4) => bytes(&SockaddrIn::from(v4)),
        SocketAddr::V6(v6) => bytes(&SockaddrIn6::from(v6)),
    }
}

/// The address of [`encode`]'s bytes, if they are one.
fn decode(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET if b.len() >= 8 => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&b[4..8]).ok()?)), port)),
        libc::AF_INET6 if b.len() >= 24 => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).ok()?)), port)),
        _ => None,
    }
}

/// The image's entries of `datagrams`, queued for the file `id`.
pub fn entries(id: u32, datagrams: Vec<Datagram>) -> Vec<(SkPacketEntry, Vec<u8>)> {
    datagrams
        .into_iter()
        .map(|d| {
            let e = SkPacketEntry { id_for: id, length: d.data.len() as u32, addr: Some(encode(d.from)), crust_dst_addr: Some(encode(d.to)), ..Default::default() };
            (e, d.data)
        })
        .collect()
}

/// The datagram of an image entry and its bytes (bad addresses are the image's fault).
pub fn datagram(e: &SkPacketEntry, data: Vec<u8>) -> Result<Datagram> {
    let bad = |what: &str| Error::image("sk-queues.img", format!("a datagram queued for file {}: {what}", e.id_for));
    let from = e.addr.as_deref().and_then(decode).ok_or_else(|| bad("its source address is malformed"))?;
    let to = e.crust_dst_addr.as_deref().and_then(decode).ok_or_else(|| bad("its destination address is malformed"))?;
    if data.len() > MAX_DATAGRAM {
        return Err(bad(&format!("{} bytes, more than a datagram holds", data.len())));
    }
    Ok(Datagram { data, from, to })
}

/// Queue `datagrams` on the restored socket `sock` of process `pid` again
/// (see the module's note), and check they all arrived.
pub fn refill(pid: i32, sock: &OwnedFd, datagrams: &[Datagram], what: impl Fn() -> String + Sync) -> Result<()> {
    if datagrams.is_empty() {
        return Ok(());
    }
    super::in_netns_of(pid, || {
        let mut raw: [Option<OwnedFd>; 2] = [None, None];
        for d in datagrams {
            let (from, to) = (unmapped(d.from), unmapped(d.to));
            let v6 = match (from.ip(), to.ip()) {
                (IpAddr::V4(_), IpAddr::V4(_)) => false,
                (IpAddr::V6(_), IpAddr::V6(_)) => true,
                _ => return Err(Error::image("sk-queues.img", format!("{}: a datagram from {from} to {to}", what()))),
            };
            let slot = &mut raw[v6 as usize];
            if slot.is_none() {
                *slot = Some(raw_socket(v6).ctx(&what)?);
            }
            let s = slot.as_ref().expect("made above");
            let packet = packet(from, to, &d.data);
            // A raw IPv6 socket takes the protocol in the port field: none.
            let dest = SocketAddr::new(to.ip(), 0);
            let sent = match dest {
                SocketAddr::V4(a) => nix::sys::socket::sendto(s.as_raw_fd(), &packet, &SockaddrIn::from(a), MsgFlags::empty()),
                SocketAddr::V6(a) => nix::sys::socket::sendto(s.as_raw_fd(), &packet, &SockaddrIn6::from(a), MsgFlags::empty()),
            };
            let sent = sent.ctx(|| format!("{}: queueing a datagram from {from} again", what()))?;
            if sent != packet.len() {
                return Err(Error::io_other(what(), format!("{sent} of a packet of {} bytes sent", packet.len())));
            }
        }
        Ok(())
    })?;
    arrived(sock, datagrams.len(), &what)
}

/// An IPv4-mapped address (an IPv6 socket's view of an IPv4 peer) as IPv4.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        a => a,
    }
}

/// A raw socket that sends whole IP packets (IPPROTO_RAW: the header is the caller's).
fn raw_socket(v6: bool) -> nix::Result<OwnedFd> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket(2) takes plain integers and returns a new fd (or -1).
    let fd = Errno::result(unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) })?;
    // SAFETY: the call just made this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The IP packet of a UDP datagram from `from` to `to` (same family).
fn packet(from: SocketAddr, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let udp_len = 8 + data.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(data);
    match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            // The kernel fills in the total length, the id and the header
            // checksum; a UDP checksum of 0 means none (IPv4 allows it).
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, libc::IPPROTO_UDP as u8, 0, 0];
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&udp);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // IPv6 requires the UDP checksum (over a pseudo-header).
            let mut sum: u32 = 0;
            let mut add = |b: &[u8]| {
                for c in b.chunks(2) {
                    sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
                }
            };
            add(&s.octets());
            add(&d.octets());
            add(&(udp_len as u32).to_be_bytes());
            add(&[0, 0, 0, libc::IPPROTO_UDP as u8]);
            add(&udp);
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            let check = match !(sum as u16) {
                0 => 0xffff,
                c => c,
            };
            udp[6..8].copy_from_slice(&check.to_be_bytes());
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(udp_len as u16).to_be_bytes());
            p.extend_from_slice(&[libc::IPPROTO_UDP as u8, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&udp);
            p
        }
        _ => unreachable!("the caller checked the families"),
    }
}

/// Wait (a second at most: a packet looped back is delivered by the
/// sender's softirq, at once as a rule) until `n` datagrams are queued on
/// `sock`; counted by peeking, with a peek offset undone after.
fn arrived(sock: &OwnedFd, n: usize, what: &impl Fn() -> String) -> Result<()> {
    let start = Instant::now();
    loop {
        set_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).ctx(what)?;
        let mut count = 0;
        // Each read whole: the peek offset moves by what a peek copies.
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let counted = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match nix::sys::socket::recvmsg::<()>(sock.as_raw_fd(), &mut iov, None, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
                Ok(_) => count += 1,
                Err(Errno::EAGAIN) => break Ok(count),
                Err(e) => break Err(e),
            }
            if count > n {
                break Ok(count);
            }
        };
        set_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, -1).ctx(what)?;
        let count = counted.ctx(what)?;
        if count == n {
            return Ok(());
        }
        if count > n || start.elapsed() > Duration::from_secs(1) {
            return Err(Error::Invalid(format!("{}: {count} of the {n} datagrams queued at dump could be queued again (its options or filter turned the others away)", what())));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
