//! The socket options CRIU's sk_opts_entry holds that every kind of socket
//! has alike (buffers, timeouts, priority, low-water mark, mark, passing of
//! credentials and security contexts): read from crust's copy of a socket at
//! dump, set on the new one at restore. Each kind adds its own, through the
//! raw getsockopt/setsockopt helpers at the end, for options nix does not name.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};

use crate::error::{Context, Error, Result};
use crate::images::proto::SkOptsEntry;

// Socket options nix does not name, made with nix's own helper.
sockopt_impl!(
    /// SO_PASSSEC: receive the peer's security context as a control message.
    PassSec, Both, libc::SOL_SOCKET, libc::SO_PASSSEC, bool
);
sockopt_impl!(
    /// SO_RCVLOWAT: the fewest bytes a read waits for.
    RcvLowat, Both, libc::SOL_SOCKET, libc::SO_RCVLOWAT, libc::c_int
);

/// The common options of `sock`.
pub fn read(sock: &OwnedFd) -> nix::Result<SkOptsEntry> {
    let snd = getsockopt(sock, sockopt::SendTimeout)?;
    let rcv = getsockopt(sock, sockopt::ReceiveTimeout)?;
    Ok(SkOptsEntry {
        so_sndbuf: getsockopt(sock, sockopt::SndBuf)? as u32,
        so_rcvbuf: getsockopt(sock, sockopt::RcvBuf)? as u32,
        so_snd_tmo_sec: snd.tv_sec() as u64,
        so_snd_tmo_usec: snd.tv_usec() as u64,
        so_rcv_tmo_sec: rcv.tv_sec() as u64,
        so_rcv_tmo_usec: rcv.tv_usec() as u64,
        so_priority: Some(getsockopt(sock, sockopt::Priority)? as u32),
        so_rcvlowat: Some(getsockopt(sock, RcvLowat)? as u32),
        so_mark: Some(getsockopt(sock, sockopt::Mark)?),
        so_passcred: Some(getsockopt(sock, sockopt::PassCred)?),
        so_passsec: Some(getsockopt(sock, PassSec)?),
        ..Default::default()
    })
}

/// Sets the common options of `o` on `sock`; `what` names the socket in errors.
pub fn set(sock: &OwnedFd, o: &SkOptsEntry, what: &dyn Fn() -> String) -> Result<()> {
    // The kernel doubles what it is given, and reports the doubled value.
    setsockopt(sock, sockopt::SndBufForce, &(o.so_sndbuf as usize / 2)).ctx(what)?;
    setsockopt(sock, sockopt::RcvBufForce, &(o.so_rcvbuf as usize / 2)).ctx(what)?;
    let tv = |s: u64, us: u64| match (i64::try_from(s), i64::try_from(us)) {
        (Ok(s), Ok(us)) if us < 1_000_000 => Ok(nix::sys::time::TimeVal::new(s, us)),
        _ => Err(Error::Invalid(format!("{}: a timeout of {s} s and {us} us", what()))),
    };
    setsockopt(sock, sockopt::SendTimeout, &tv(o.so_snd_tmo_sec, o.so_snd_tmo_usec)?).ctx(what)?;
    setsockopt(sock, sockopt::ReceiveTimeout, &tv(o.so_rcv_tmo_sec, o.so_rcv_tmo_usec)?).ctx(what)?;
    setsockopt(sock, sockopt::PassCred, &o.so_passcred.unwrap_or(false)).ctx(what)?;
    if let Some(v) = o.so_passsec {
        setsockopt(sock, PassSec, &v).ctx(what)?;
    }
    if let Some(v) = o.so_priority {
        setsockopt(sock, sockopt::Priority, &(v as libc::c_int)).ctx(what)?;
    }
    if let Some(v) = o.so_rcvlowat {
        setsockopt(sock, RcvLowat, &(v as libc::c_int)).ctx(what)?;
    }
    if let Some(v) = o.so_mark {
        setsockopt(sock, sockopt::Mark, &v).ctx(what)?;
    }
    Ok(())
}

/// Option `opt` of `level` as raw bytes, at most `len` of them.
pub fn get_raw(sock: &OwnedFd, level: i32, opt: i32, len: usize) -> nix::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut n = len as libc::socklen_t;
    // SAFETY: the kernel writes at most `n` bytes at buf, which holds `len`,
    // and the length back into `n`.
    let r = unsafe { libc::getsockopt(sock.as_raw_fd(), level, opt, buf.as_mut_ptr().cast(), &mut n) };
    nix::errno::Errno::result(r)?;
    buf.truncate((n as usize).min(len));
    Ok(buf)
}

/// An int option.
pub fn get_int(sock: &OwnedFd, level: i32, opt: i32) -> nix::Result<i32> {
    let b = get_raw(sock, level, opt, 4)?;
    let mut v = [0u8; 4];
    v[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
    Ok(i32::from_ne_bytes(v))
}

/// Sets an option to raw bytes.
pub fn set_raw(sock: &OwnedFd, level: i32, opt: i32, val: &[u8]) -> nix::Result<()> {
    // SAFETY: the kernel reads `val.len()` bytes at val.
    let r = unsafe { libc::setsockopt(sock.as_raw_fd(), level, opt, val.as_ptr().cast(), val.len() as libc::socklen_t) };
    nix::errno::Errno::result(r).map(drop)
}

/// Sets an int option.
pub fn set_int(sock: &OwnedFd, level: i32, opt: i32, v: i32) -> nix::Result<()> {
    set_raw(sock, level, opt, &v.to_ne_bytes())
}
