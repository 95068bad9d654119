//! rtnetlink, spoken by hand over a NETLINK_ROUTE socket of the thread's
//! network namespace.
//!
//! Why not a crate (netlink-packet-route): the images are the kernel's own
//! messages, kept byte for byte as `ip addr save` / `ip route save` write
//! them and sent back as `ip ... restore` sends them; a typed model would
//! parse and re-emit them, and could drop an attribute it does not know.
//! What is built here besides is three small requests (a link's flags, a
//! veth pair, a bridge port), and the engine already speaks sock_diag so.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};

pub const NLMSG_HDRLEN: usize = 16;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_GETRULE: u16 = 34;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const ACK: u16 = libc::NLM_F_ACK as u16;
const DUMP: u16 = libc::NLM_F_DUMP as u16;
pub const CREATE: u16 = libc::NLM_F_CREATE as u16;
pub const EXCL: u16 = libc::NLM_F_EXCL as u16;

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A NETLINK_ROUTE socket.
pub struct Rtnl {
    sock: OwnedFd,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> nix::Result<Rtnl> {
        let sock = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)?;
        Ok(Rtnl { sock, seq: 0 })
    }

    fn send(&mut self, msg: &mut [u8]) -> nix::Result<u32> {
        self.seq += 1;
        msg[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        nix::unistd::write(&self.sock, msg)?;
        Ok(self.seq)
    }

    /// The next datagram of replies.
    fn recv(&self, buf: &mut [u8]) -> nix::Result<usize> {
        // SAFETY: `buf` is ours and writable for its length.
        let n = unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        Errno::result(n).map(|n| n as usize)
    }

    /// Every message of a dump of `ty` whose request body is `body` (the
    /// family header), each whole (header included), as the kernel sent it.
    pub fn dump(&mut self, ty: u16, body: &[u8]) -> nix::Result<Vec<Vec<u8>>> {
        let mut msg = header(ty, REQUEST | DUMP);
        msg.extend_from_slice(body);
        let seq = self.send(&mut msg)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n]) {
                if u32_at(m, 8) != seq {
                    continue;
                }
                match u16_at(m, 4) {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = -(u32_at(m, 16) as i32);
                        return Err(Errno::from_raw(errno));
                    }
                    _ => out.push(m.to_vec()),
                }
            }
        }
    }

    /// Send a request (a whole message, its length and sequence filled in
    /// here) and wait for its acknowledgement.
    pub fn request(&mut self, msg: &[u8]) -> nix::Result<()> {
        let mut msg = msg.to_vec();
        let flags = u16_at(&msg, 6) | REQUEST | ACK;
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        let seq = self.send(&mut msg)?;
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n]) {
                if u32_at(m, 8) == seq && u16_at(m, 4) == NLMSG_ERROR {
                    let errno = -(u32_at(m, 16) as i32);
                    return if errno == 0 { Ok(()) } else { Err(Errno::from_raw(errno)) };
                }
            }
        }
    }
}

/// The messages of one datagram.
pub fn messages(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            break;
        }
        out.push(&b[..len]);
        b = &b[align(len).min(b.len())..];
    }
    out
}

/// A message header with `ty` and `flags`; length and sequence come at send.
pub fn header(ty: u16, flags: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(256);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&[0u8; 8]);
    m
}

/// struct ifinfomsg: family, type, index, flags, change.
pub fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// Append attribute `ty` holding `data`.
pub fn attr(m: &mut Vec<u8>, ty: u16, data: &[u8]) {
    m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(data);
    m.resize(align(m.len()), 0);
}

/// Open a nested attribute `ty`; [`end_nest`] closes it.
pub fn begin_nest(m: &mut Vec<u8>, ty: u16) -> usize {
    let at = m.len();
    attr(m, ty, &[]);
    at
}

pub fn end_nest(m: &mut [u8], at: usize) {
    let len = (m.len() - at) as u16;
    m[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// The attributes in `b` (type without the nested/byte-order bits, data).
pub fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16_at(b, 0) as usize;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((u16_at(b, 2) & 0x3fff, &b[4..len]));
        b = &b[align(len).min(b.len())..];
    }
    out
}

/// The data of attribute `ty` among `attrs`.
pub fn find<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, d)| *d)
}

/// A nul-terminated string attribute.
pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data.split(|&c| c == 0).next().unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_nest_and_read_back() {
        let mut m = header(RTM_NEWLINK, 0);
        m.extend_from_slice(&ifinfomsg(5, 1, 1));
        attr(&mut m, 3, b"eth0\0");
        let at = begin_nest(&mut m, 18);
        attr(&mut m, 1, b"veth\0");
        end_nest(&mut m, at);
        let a = attrs(&m[NLMSG_HDRLEN + 16..]);
        assert_eq!(text(find(&a, 3).unwrap()), "eth0");
        let info = attrs(find(&a, 18).unwrap());
        assert_eq!(text(find(&info, 1).unwrap()), "veth");
        assert_eq!(m.len() % 4, 0);
    }
}
