//! TCP_REPAIR: reading an established TCP connection's state out of its
//! socket, and making a new socket into the same connection, without a packet
//! exchanged with the peer.
//!
//! In repair mode (`TCP_REPAIR`, CAP_NET_ADMIN) a socket's queues can be
//! selected (`TCP_REPAIR_QUEUE`), their sequence numbers read and set
//! (`TCP_QUEUE_SEQ`), their bytes peeked (`MSG_PEEK` on the selected queue)
//! and refilled (a send on the selected queue), the window read and set
//! (`TCP_REPAIR_WINDOW`), the options the handshake negotiated set again
//! (`TCP_REPAIR_OPTIONS`), and the timestamp clock moved (`TCP_TIMESTAMP`);
//! `connect` in repair mode makes the socket established at once, sending
//! nothing, and closing a socket in repair mode sends neither FIN nor RST
//! (include/uapi/linux/tcp.h, net/ipv4/tcp.c).
//!
//! What is read is CRIU's tcp_stream_entry, followed in its image by the
//! unread receive queue and the send queue (unacknowledged, then unsent).
//!
//! A dump keeps a socket in repair mode only while it reads it: leaving it
//! (without the window probe) lets a crust killed half-way leave the tree's
//! connections usable once the network lock is gone. The socket is put back
//! in repair mode just before the tree is killed ([`enter`]), so that its
//! last close is silent.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, setsockopt, sockopt, MsgFlags, SockaddrStorage};

use crate::error::{Context, Error, Result};
use crate::images::proto::TcpStreamEntry;

// include/uapi/linux/tcp.h
const TCP_MAXSEG: i32 = 2;
const TCP_INFO: i32 = 11;
const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_REPAIR_ON: i32 = 1;
const TCP_REPAIR_OFF: i32 = 0;
/// Leave repair mode without sending a window probe.
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
// Option codes of struct tcp_repair_opt (the TCP option kinds).
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
// tcpi_options bits of struct tcp_info: what the handshake negotiated.
pub const TCPI_OPT_TIMESTAMPS: u32 = 1;
pub const TCPI_OPT_SACK: u32 = 2;
pub const TCPI_OPT_WSCALE: u32 = 4;
// Socket ioctls (include/uapi/linux/sockios.h): bytes unread, bytes not
// acknowledged, bytes not sent.
const SIOCINQ: libc::c_ulong = 0x541B;
const SIOCOUTQ: libc::c_ulong = 0x5411;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// The most bytes a restore puts back in one queue: far more than a socket
/// buffer holds (the kernel caps them at a few MiB unless told otherwise),
/// well below what the sizes of the image can say.
pub const MAX_QUEUE: usize = 1 << 30;

/// An established connection as read from its socket: CRIU's
/// tcp_stream_entry, the unread bytes of its receive queue, and its send
/// queue (the bytes sent but not acknowledged, then those not sent yet).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stream {
    pub entry: TcpStreamEntry,
    pub inq: Vec<u8>,
    pub outq: Vec<u8>,
}

fn sys<T>(what: &dyn Fn() -> String, r: libc::c_int, v: T) -> Result<T> {
    Errno::result(r).map(|_| v).ctx(what)
}

/// setsockopt(IPPROTO_TCP, opt) with a plain value.
fn set<T: Copy>(sock: BorrowedFd<'_>, opt: i32, value: &T, what: &dyn Fn() -> String) -> Result<()> {
    // SAFETY: `value` points to a live T of size_of::<T>() bytes, which the
    // kernel only reads.
    let r = unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, opt, (value as *const T).cast(), std::mem::size_of::<T>() as u32)
    };
    sys(what, r, ())
}

/// getsockopt(IPPROTO_TCP, opt) into `buf`; the length the kernel wrote.
fn get(sock: BorrowedFd<'_>, opt: i32, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes at `buf`, which has them.
    let r = unsafe { libc::getsockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, opt, buf.as_mut_ptr().cast(), &mut len) };
    sys(what, r, len as usize)
}

fn get_u32(sock: BorrowedFd<'_>, opt: i32, what: &dyn Fn() -> String) -> Result<u32> {
    let mut b = [0u8; 4];
    get(sock, opt, &mut b, what)?;
    Ok(u32::from_ne_bytes(b))
}

fn ioctl_int(sock: BorrowedFd<'_>, req: libc::c_ulong, what: &dyn Fn() -> String) -> Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: these socket ioctls write one int at the address given.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), req, &mut n) };
    sys(what, r, n as u32)
}

/// Put the socket in repair mode.
pub fn enter(sock: BorrowedFd<'_>, what: &dyn Fn() -> String) -> Result<()> {
    set(sock, TCP_REPAIR, &TCP_REPAIR_ON, &|| format!("{}: entering repair mode (TCP_REPAIR)", what()))
}

/// Take the socket out of repair mode; with `probe`, the kernel sends the
/// peer a window probe, which restarts a transfer the peer had stalled. Out
/// of repair mode the socket has lost SO_REUSEADDR (the kernel resets it):
/// `reuseaddr` sets it again.
pub fn leave(sock: BorrowedFd<'_>, probe: bool, reuseaddr: bool, what: &dyn Fn() -> String) -> Result<()> {
    let what = || format!("{}: leaving repair mode", what());
    set(sock, TCP_REPAIR, &if probe { TCP_REPAIR_OFF } else { TCP_REPAIR_OFF_NO_WP }, &what)?;
    if reuseaddr {
        setsockopt(&sock, sockopt::ReuseAddr, &true).ctx(what)?;
    }
    Ok(())
}

/// Read the state of the established connection of `sock`, leaving it as it
/// was (out of repair mode, SO_REUSEADDR as before). `who` names it in errors.
pub fn read(sock: BorrowedFd<'_>, who: &str) -> Result<Stream> {
    let what = || format!("reading the TCP state of {who}");
    let reuseaddr = getsockopt(&sock, sockopt::ReuseAddr).ctx(what)?;
    enter(sock, &what)?;
    let read = read_in_repair(sock, who);
    let left = leave(sock, false, reuseaddr, &what);
    let stream = read?;
    left?;
    Ok(stream)
}

fn read_in_repair(sock: BorrowedFd<'_>, who: &str) -> Result<Stream> {
    let what = || format!("reading the TCP state of {who}");
    let inq_len = ioctl_int(sock, SIOCINQ, &what)?;
    let outq_len = ioctl_int(sock, SIOCOUTQ, &what)?;
    let unsq_len = ioctl_int(sock, SIOCOUTQNSD, &what)?;
    let (inq_seq, inq) = read_queue(sock, TCP_RECV_QUEUE, inq_len as usize, &what)?;
    let (outq_seq, outq) = read_queue(sock, TCP_SEND_QUEUE, outq_len as usize, &what)?;
    // struct tcp_info: tcpi_options is byte 5; byte 6 holds tcpi_snd_wscale
    // (low 4 bits) and tcpi_rcv_wscale (high 4 bits).
    let mut info = [0u8; 8];
    if get(sock, TCP_INFO, &mut info, &what)? < 7 {
        return Err(Error::io_other(what(), "a short TCP_INFO"));
    }
    let opt_mask = info[5] as u32 & (TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE);
    let (snd_wscale, rcv_wscale) = ((info[6] & 0xf) as u32, (info[6] >> 4) as u32);
    // In repair mode TCP_MAXSEG is the peer's MSS as negotiated (mss_clamp).
    let mss_clamp = get_u32(sock, TCP_MAXSEG, &what)?;
    let timestamp = get_u32(sock, TCP_TIMESTAMP, &what)?;
    let mut w = [0u8; 20];
    if get(sock, TCP_REPAIR_WINDOW, &mut w, &what)? != 20 {
        return Err(Error::io_other(what(), "a short TCP_REPAIR_WINDOW"));
    }
    let word = |i: usize| u32::from_ne_bytes(w[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let nodelay = getsockopt(&sock, sockopt::TcpNoDelay).ctx(what)?;
    let mut cork = [0u8; 4];
    get(sock, libc::TCP_CORK, &mut cork, &what)?;
    let entry = TcpStreamEntry {
        inq_len,
        inq_seq,
        outq_len,
        outq_seq,
        opt_mask,
        snd_wscale,
        mss_clamp,
        rcv_wscale: Some(rcv_wscale),
        timestamp: Some(timestamp),
        cork: Some(u32::from_ne_bytes(cork) != 0),
        nodelay: Some(nodelay),
        unsq_len: Some(unsq_len),
        snd_wl1: Some(word(0)),
        snd_wnd: Some(word(1)),
        max_window: Some(word(2)),
        rcv_wnd: Some(word(3)),
        rcv_wup: Some(word(4)),
    };
    Ok(Stream { entry, inq, outq })
}

/// The sequence number past the end of a queue (`TCP_QUEUE_SEQ`: rcv_nxt
/// for the receive queue, write_seq for the send queue), and its bytes.
fn read_queue(sock: BorrowedFd<'_>, queue: i32, len: usize, what: &dyn Fn() -> String) -> Result<(u32, Vec<u8>)> {
    set(sock, TCP_REPAIR_QUEUE, &queue, what)?;
    let seq = get_u32(sock, TCP_QUEUE_SEQ, what)?;
    let mut data = vec![0u8; len];
    if len > 0 {
        // One peek copies the whole queue (it does not stop between segments).
        let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut data, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT).ctx(what)?;
        if n != len {
            let name = if queue == TCP_RECV_QUEUE { "receive" } else { "send" };
            return Err(Error::io_other(what(), format!("{n} of the {len} bytes of the {name} queue could be read")));
        }
    }
    Ok((seq, data))
}

/// Check that an entry of an image can be written to a socket: lengths that
/// agree with each other and with the bytes given.
pub fn check(s: &Stream) -> std::result::Result<(), String> {
    let e = &s.entry;
    let unsent = e.unsq_len.unwrap_or(0);
    if e.inq_len as usize != s.inq.len() || e.outq_len as usize != s.outq.len() {
        return Err(format!("queue lengths {} and {} for {} and {} bytes", e.inq_len, e.outq_len, s.inq.len(), s.outq.len()));
    }
    if unsent > e.outq_len {
        return Err(format!("{unsent} bytes unsent of a send queue of {}", e.outq_len));
    }
    if s.inq.len() > MAX_QUEUE || s.outq.len() > MAX_QUEUE {
        return Err(format!("queues of more than {MAX_QUEUE} bytes"));
    }
    if e.snd_wscale > 14 || e.rcv_wscale.unwrap_or(0) > 14 {
        return Err(format!("window scales {} and {} (at most 14)", e.snd_wscale, e.rcv_wscale.unwrap_or(0)));
    }
    Ok(())
}

/// Make `sock`, a new TCP socket of the connection's family that nothing
/// used yet, into the connection `local` - `peer` that `s` describes, and
/// take it out of repair mode (with a window probe). Nothing reaches the
/// peer but that probe and the bytes that were not sent yet; a network lock
/// holds them back until the connection's process runs again. `reuseaddr`
/// is the socket's SO_REUSEADDR, which leaving repair mode clears.
pub fn write(sock: BorrowedFd<'_>, local: SocketAddr, peer: SocketAddr, s: &Stream, reuseaddr: bool) -> Result<()> {
    let what = || format!("restoring the TCP connection {local} - {peer}");
    check(s).map_err(|e| Error::Invalid(format!("{}: {e}", what())))?;
    let e = &s.entry;
    enter(sock, &what)?;
    // The queues start where the saved bytes start; writing them moves the
    // sequence numbers to where they were.
    set(sock, TCP_REPAIR_QUEUE, &TCP_SEND_QUEUE, &what)?;
    set(sock, TCP_QUEUE_SEQ, &e.outq_seq.wrapping_sub(e.outq_len), &what)?;
    set(sock, TCP_REPAIR_QUEUE, &TCP_RECV_QUEUE, &what)?;
    set(sock, TCP_QUEUE_SEQ, &e.inq_seq.wrapping_sub(e.inq_len), &what)?;
    // In repair mode the socket may take the address of one still bound.
    nix::sys::socket::bind(sock.as_raw_fd(), &SockaddrStorage::from(local)).ctx(what)?;
    match nix::sys::socket::connect(sock.as_raw_fd(), &SockaddrStorage::from(peer)) {
        Err(Errno::EADDRNOTAVAIL) => {
            return Err(Error::Invalid(format!(
                "{}: a socket of this host already has these two addresses (an earlier connection between them, in TIME_WAIT say)",
                what()
            )))
        }
        r => r.ctx(what)?,
    }
    // struct tcp_repair_opt { u32 opt_code; u32 opt_val; }, before any byte is queued.
    let mut opts: Vec<[u32; 2]> = vec![[TCPOPT_MSS, e.mss_clamp]];
    if e.opt_mask & TCPI_OPT_WSCALE != 0 {
        opts.push([TCPOPT_WINDOW, e.snd_wscale | (e.rcv_wscale.unwrap_or(0) << 16)]);
    }
    if e.opt_mask & TCPI_OPT_SACK != 0 {
        opts.push([TCPOPT_SACK_PERM, 0]);
    }
    if e.opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        opts.push([TCPOPT_TIMESTAMP, 0]);
    }
    // SAFETY: `opts` is a live array of opts.len() pairs of u32, which is the
    // layout of struct tcp_repair_opt; the kernel reads it only.
    let r = unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts.as_ptr().cast(), (opts.len() * 8) as u32)
    };
    sys(&what, r, ())?;
    if let (true, Some(ts)) = (e.opt_mask & TCPI_OPT_TIMESTAMPS != 0, e.timestamp) {
        set(sock, TCP_TIMESTAMP, &ts, &what)?;
    }
    let unsent = e.unsq_len.unwrap_or(0) as usize;
    let sent = s.outq.len() - unsent;
    // The queues must fit the buffers while they are filled.
    let buffers = (getsockopt(&sock, sockopt::SndBuf).ctx(what)?, getsockopt(&sock, sockopt::RcvBuf).ctx(what)?);
    let room = |len: usize| len.saturating_mul(2).saturating_add(1 << 20).min(i32::MAX as usize) / 2;
    setsockopt(&sock, sockopt::SndBufForce, &room(s.outq.len()).max(buffers.0 / 2)).ctx(what)?;
    setsockopt(&sock, sockopt::RcvBufForce, &room(s.inq.len()).max(buffers.1 / 2)).ctx(what)?;
    set(sock, TCP_REPAIR_QUEUE, &TCP_RECV_QUEUE, &what)?;
    send_all(sock, &s.inq, &what)?;
    // The bytes the peer may have seen go in as sent already.
    set(sock, TCP_REPAIR_QUEUE, &TCP_SEND_QUEUE, &what)?;
    send_all(sock, &s.outq[..sent], &what)?;
    if let (Some(snd_wl1), Some(snd_wnd), Some(max_window), Some(rcv_wnd), Some(rcv_wup)) =
        (e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup)
    {
        let w = [snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup];
        // SAFETY: `w` is five u32, the layout of struct tcp_repair_window,
        // which the kernel reads only.
        let r = unsafe { libc::setsockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, w.as_ptr().cast(), 20) };
        sys(&what, r, ())?;
    }
    leave(sock, true, reuseaddr, &what)?;
    // The bytes never sent are sent as any others.
    send_all(sock, &s.outq[sent..], &what)?;
    // The kernel doubles what it is given, and reports the doubled value.
    setsockopt(&sock, sockopt::SndBufForce, &(buffers.0 / 2)).ctx(what)?;
    setsockopt(&sock, sockopt::RcvBufForce, &(buffers.1 / 2)).ctx(what)?;
    if let Some(v) = e.nodelay {
        setsockopt(&sock, sockopt::TcpNoDelay, &v).ctx(what)?;
    }
    if let Some(true) = e.cork {
        set(sock, libc::TCP_CORK, &1i32, &what)?;
    }
    Ok(())
}

/// Queue `data` on `sock` (the buffers have room for it).
fn send_all(sock: BorrowedFd<'_>, data: &[u8], what: &dyn Fn() -> String) -> Result<()> {
    let mut at = 0;
    // A send into the receive queue takes a few pages at a time.
    while at < data.len() {
        match nix::sys::socket::send(sock.as_raw_fd(), &data[at..], MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Err(Error::io_other(what(), format!("the socket took {at} of {} bytes", data.len()))),
            Ok(n) => at += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e).ctx(|| format!("{}: {at} of {} bytes queued", what(), data.len())),
        }
    }
    Ok(())
}
