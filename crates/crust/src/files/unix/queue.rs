//! The data queued on unix sockets: read at dump time with MSG_PEEK so it
//! stays (a dump must leave the tree as it was), and sent again at restore
//! from the socket that is to have sent it.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrLike, UnixAddr};

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

/// The bytes queued in a stream socket, read with MSG_PEEK. A peek stops
/// where the writer changes: a peek offset walks past each stretch, and is
/// set back to the socket's own (`peek_off`) after.
pub fn peek_stream(fd: &OpenFd, sock: &OwnedFd, peek_off: i32) -> Result<Vec<u8>> {
    let what = || format!("reading the data queued on fd {} of process {}", fd.fd, fd.pid);
    let queued = rustix::io::ioctl_fionread(sock).ctx(what)?;
    let mut data = vec![0u8; queued as usize];
    setsockopt(sock, PeekOff, &0).ctx(what)?;
    let mut got = 0;
    let read = (|| -> Result<()> {
        while got < data.len() {
            match peek_some(sock, &mut data[got..]) {
                Ok((0, _)) => break,
                Ok((n, _)) => got += n,
                Err(Errno::EBADMSG) => return Err(fd.unsupported("unix sockets with fds in flight (SCM_RIGHTS) are")),
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
    Ok(data)
}

/// A message queued on a datagram or seqpacket socket: its bytes and the
/// name of the socket that sent it (empty: unnamed).
pub struct Message {
    pub data: Vec<u8>,
    pub sender: Vec<u8>,
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
                Err(Errno::EBADMSG) => return Err(fd.unsupported("unix sockets with fds in flight (SCM_RIGHTS) are")),
                Err(e) => return Err(e).ctx(what),
                // A peek offset does not move past an empty message: it
                // would be read again and again.
                Ok((0, _)) => return Err(fd.unsupported("empty datagrams queued on unix sockets are")),
                Ok((n, _)) if n >= buf.len() => return Err(fd.unsupported(&format!("datagrams of {MAX_MESSAGE} bytes and more are"))),
                Ok((n, sender)) => {
                    total += n;
                    if total > MAX_QUEUE {
                        return Err(Error::io_other(what(), "more bytes queued than a restore can queue again"));
                    }
                    out.push(Message { data: buf[..n].to_vec(), sender });
                }
            }
        }
    })();
    setsockopt(sock, PeekOff, &peek_off).ctx(what)?;
    read?;
    Ok(out)
}

/// One MSG_PEEK of queued bytes into `buf`, with the sender's name. Control
/// data (passed fds) cannot be kept in the image: EBADMSG then. Fds a peek
/// hands crust are copies made for it, and closed here.
pub fn peek_some(sock: &OwnedFd, buf: &mut [u8]) -> std::result::Result<(usize, Vec<u8>), Errno> {
    // Room for the most fds one message carries (SCM_MAX_FD), and credentials
    // and a pidfd beside them: a truncated control part would leave fds
    // installed here that could not be closed.
    let mut control = nix::cmsg_space!([std::os::fd::RawFd; 253], libc::ucred, std::os::fd::RawFd);
    let mut iov = [IoSliceMut::new(buf)];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    let msg = nix::sys::socket::recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut control), flags)?;
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
    // An unnamed sender's address is empty, shorter than its family: nix
    // asserts on such an address, so it is not looked into.
    let named = |a: &&UnixAddr| a.len() as usize > std::mem::size_of::<libc::sa_family_t>();
    let sender = msg.address.as_ref().filter(named).map(name_of).unwrap_or_default();
    Ok((msg.bytes, sender))
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

/// Send `data` from `sender` so that it waits in the queue of its peer `to`.
/// The sender's buffer bounds what it can have in flight: it is widened for
/// the copy and narrowed again.
pub fn fill(sender: &OwnedFd, data: Option<&Vec<u8>>, to: &UnixSkEntry) -> Result<()> {
    let Some(data) = data else { return Ok(()) };
    widened(sender, data.len(), to, || {
        let mut sent = 0;
        while sent < data.len() {
            sent += nix::sys::socket::send(sender.as_raw_fd(), &data[sent..], MsgFlags::MSG_DONTWAIT).ctx(context(to))?;
        }
        Ok(())
    })
}

/// Send each of `messages` from `sender`, to the name `to_name` (or to its
/// peer), so they wait in `to`'s queue with their bounds.
pub fn send_messages(sender: &OwnedFd, to_name: Option<&[u8]>, messages: &[Vec<u8>], to: &UnixSkEntry) -> Result<()> {
    let total: usize = messages.iter().map(|m| m.len() + 1024).sum();
    let addr = to_name.map(addr_of).transpose()?;
    widened(sender, total, to, || {
        for m in messages {
            let fd = sender.as_raw_fd();
            let n = match &addr {
                Some(a) => nix::sys::socket::sendto(fd, m, a, MsgFlags::MSG_DONTWAIT),
                None => nix::sys::socket::send(fd, m, MsgFlags::MSG_DONTWAIT),
            };
            let n = n.ctx(context(to))?;
            if n != m.len() {
                return Err(Error::io_other(context(to)(), format!("{n} of a message of {} bytes sent", m.len())));
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
