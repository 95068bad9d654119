//! The data queued on unix sockets: read at dump time with MSG_PEEK so it
//! stays (a dump must leave the tree as it was), and sent again at restore
//! from the socket that is to have sent it.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrLike, UnixAddr};

use super::{context, PeekOff};
use crate::error::{Context, Error, Result};
use crate::files::OpenFd;
use crate::images::proto::UnixSkEntry;

/// The most bytes a restore queues on one socket: its sender's buffer is
/// widened to twice that and more, and a buffer size is an int.
pub const MAX_QUEUE: usize = (i32::MAX as usize - (64 << 10)) / 2;

/// The largest datagram a dump reads (the kernel caps one at the sender's
/// buffer, at most twice net.core.wmem_max).
const MAX_MESSAGE: usize = 8 << 20;

/// A stretch of the bytes queued on a stream socket, with the fds in flight
/// that came with it (crust's copies, made by the peek).
pub struct Chunk {
    pub data: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// The bytes queued in a stream socket, read with MSG_PEEK, in stretches
/// that each end with a message that carried fds (or with the queue). A
/// peek glues the bytes of messages without fds to the next one with fds,
/// and no peek tells where that one began (a peek that fills its buffer
/// still picks up the fds of the message after): as in criu's images, the
/// fds come back with the first byte of the stretch, which a receiver
/// reading in small steps gets a little earlier. A peek stops where the
/// writer changes: a peek offset walks past each stretch, and is set back
/// to the socket's own (`peek_off`) after.
pub fn peek_stream(fd: &OpenFd, sock: &OwnedFd, peek_off: i32) -> Result<Vec<Chunk>> {
    let what = || format!("reading the data queued on fd {} of process {}", fd.fd, fd.pid);
    let queued = rustix::io::ioctl_fionread(sock).ctx(what)?;
    let mut data = vec![0u8; queued as usize];
    setsockopt(sock, PeekOff, &0).ctx(what)?;
    let mut got = 0;
    // Where each stretch ends, and the fds that came with it.
    let mut stretches: Vec<(usize, Vec<OwnedFd>)> = Vec::new();
    let read = (|| -> Result<()> {
        while got < data.len() {
            match peek_some(sock, &mut data[got..]) {
                Ok((0, _, _)) => break,
                Ok((n, _, fds)) => {
                    got += n;
                    stretches.push((got, fds));
                }
                Err(Errno::EBADMSG) => return Err(fd.unsupported("more fds in flight than one message carries (SCM_MAX_FD) are")),
                Err(e) => return Err(e).ctx(what),
            }
        }
        Ok(())
    })();
    setsockopt(sock, PeekOff, &peek_off).ctx(what)?;
    read?;
    if got != data.len() {
        return Err(Error::io_other(what(), format!("{got} of {} queued bytes could be read", data.len())));
    }
    let mut from = 0;
    let mut chunks = Vec::new();
    for (end, fds) in stretches {
        chunks.push(Chunk { data: data[from..end].to_vec(), fds });
        from = end;
    }
    Ok(chunks)
}

/// A message queued on a datagram or seqpacket socket: its bytes, the
/// name of the socket that sent it (empty: unnamed) and the fds in flight
/// with it (crust's copies, made by the peek).
pub struct Message {
    pub data: Vec<u8>,
    pub sender: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Every message queued on a datagram or seqpacket socket, in order, read
/// with MSG_PEEK: the peek offset moves past one message at each read, and
/// is set back to the socket's own (`peek_off`) after.
pub fn peek_messages(fd: &OpenFd, sock: &OwnedFd, peek_off: i32) -> Result<Vec<Message>> {
    let what = || format!("reading the messages queued on fd {} of process {}", fd.fd, fd.pid);
    setsockopt(sock, PeekOff, &0).ctx(what)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut total = 0usize;
    let read = (|| -> Result<()> {
        loop {
            match peek_some(sock, &mut buf) {
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EBADMSG) => return Err(fd.unsupported("more fds in flight than one message carries (SCM_MAX_FD) are")),
                Err(e) => return Err(e).ctx(what),
                // A peek offset does not move past an empty message: it
                // would be read again and again.
                Ok((0, _, _)) => return Err(fd.unsupported("empty datagrams queued on unix sockets are")),
                Ok((n, _, _)) if n >= buf.len() => return Err(fd.unsupported(&format!("datagrams of {MAX_MESSAGE} bytes and more are"))),
                Ok((n, sender, fds)) => {
                    total += n;
                    if total > MAX_QUEUE {
                        return Err(Error::io_other(what(), "more bytes queued than a restore can queue again"));
                    }
                    out.push(Message { data: buf[..n].to_vec(), sender, fds });
                }
            }
        }
    })();
    setsockopt(sock, PeekOff, &peek_off).ctx(what)?;
    read?;
    Ok(out)
}

/// One MSG_PEEK of queued bytes into `buf`, with the sender's name and the
/// fds in flight with them: a peek installs copies of them in crust, owned
/// here. A truncated control part (more fds than it has room for): EBADMSG.
pub fn peek_some(sock: &OwnedFd, buf: &mut [u8]) -> std::result::Result<(usize, Vec<u8>, Vec<OwnedFd>), Errno> {
    use std::os::fd::FromRawFd;
    // Room for the most fds one message carries (SCM_MAX_FD), and credentials
    // and a pidfd beside them: a truncated control part would leave fds
    // installed here that could not be closed.
    let mut control = nix::cmsg_space!([std::os::fd::RawFd; 253], libc::ucred, std::os::fd::RawFd);
    let mut iov = [IoSliceMut::new(buf)];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
    let msg = nix::sys::socket::recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut control), flags)?;
    let mut in_flight = Vec::new();
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the peek just installed these fds in crust, and
            // nothing else owns them.
            in_flight.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(Errno::EBADMSG);
    }
    // An unnamed sender's address is empty, shorter than its family: nix
    // asserts on such an address, so it is not looked into.
    let named = |a: &&UnixAddr| a.len() as usize > std::mem::size_of::<libc::sa_family_t>();
    let sender = msg.address.as_ref().filter(named).map(name_of).unwrap_or_default();
    Ok((msg.bytes, sender, in_flight))
}

/// A socket address as the image keeps names: a path, or a NUL and an
/// abstract name; empty if unnamed.
pub fn name_of(a: &UnixAddr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(p) = a.path() {
        return p.as_os_str().as_bytes().to_vec();
    }
    if let Some(n) = a.as_abstract() {
        let mut v = vec![0u8];
        v.extend_from_slice(n);
        return v;
    }
    Vec::new()
}

/// The address for a name of the image.
pub fn addr_of(name: &[u8]) -> Result<UnixAddr> {
    use std::os::unix::ffi::OsStrExt;
    let r = match name.split_first() {
        Some((0, rest)) => UnixAddr::new_abstract(rest),
        // A path keeps its terminating NUL in the image, as the kernel reports it.
        _ => UnixAddr::new(std::ffi::OsStr::from_bytes(name.strip_suffix(b"\0").unwrap_or(name))),
    };
    r.map_err(|e| Error::Invalid(format!("unix socket name {}: {e}", super::diag::show_name(name))))
}

/// What a restore queues again: bytes, and the fds in flight with them
/// (crust's copies of files made for the tree).
pub struct Outgoing<'a> {
    pub data: &'a [u8],
    pub fds: Vec<OwnedFd>,
}

/// One send(2), or sendmsg(2) with SCM_RIGHTS if there are fds, to `addr`
/// if given.
fn send_one(sender: &OwnedFd, data: &[u8], fds: &[OwnedFd], addr: Option<&UnixAddr>) -> nix::Result<usize> {
    let raw: Vec<std::os::fd::RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    nix::sys::socket::sendmsg(sender.as_raw_fd(), &[IoSlice::new(data)], cmsgs, MsgFlags::MSG_DONTWAIT, addr)
}

/// Send `chunks` from `sender` so that they wait in the queue of its peer
/// `to`, each chunk's fds with its first byte. The sender's buffer bounds
/// what it can have in flight: it is widened for the copy and narrowed again.
pub fn fill(sender: &OwnedFd, chunks: &[Outgoing], to: &UnixSkEntry) -> Result<()> {
    let len = chunks.iter().map(|c| c.data.len()).sum();
    widened(sender, len, to, || {
        for c in chunks {
            let mut sent = send_one(sender, c.data, &c.fds, None).ctx(context(to))?;
            while sent < c.data.len() {
                sent += send_one(sender, &c.data[sent..], &[], None).ctx(context(to))?;
            }
        }
        Ok(())
    })
}

/// Send each of `messages` from `sender`, to the name `to_name` (or to its
/// peer), so they wait in `to`'s queue with their bounds and fds.
pub fn send_messages(sender: &OwnedFd, to_name: Option<&[u8]>, messages: &[Outgoing], to: &UnixSkEntry) -> Result<()> {
    let total: usize = messages.iter().map(|m| m.data.len() + 1024).sum();
    let addr = to_name.map(addr_of).transpose()?;
    widened(sender, total, to, || {
        for m in messages {
            let n = send_one(sender, m.data, &m.fds, addr.as_ref()).ctx(context(to))?;
            if n != m.data.len() {
                return Err(Error::io_other(context(to)(), format!("{n} of a message of {} bytes sent", m.data.len())));
            }
        }
        Ok(())
    })
}

fn widened(sender: &OwnedFd, len: usize, to: &UnixSkEntry, send: impl FnOnce() -> Result<()>) -> Result<()> {
    let what = context(to);
    let before = getsockopt(sender, sockopt::SndBuf).ctx(&what)?;
    // At most MAX_QUEUE bytes (the loader's limit): twice that and more is still an int.
    let room = len.checked_mul(2).and_then(|n| n.checked_add(64 << 10)).filter(|&n| n <= i32::MAX as usize);
    let room = room.ok_or_else(|| Error::Invalid(format!("{}: {len} bytes queued, more than a socket holds", what())))?;
    setsockopt(sender, sockopt::SndBufForce, &room).ctx(&what)?;
    send()?;
    setsockopt(sender, sockopt::SndBufForce, &(before / 2)).ctx(&what)
}
