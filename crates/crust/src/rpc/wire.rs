//! The transport of criu's RPC: one bare protobuf message per packet of a
//! SOCK_SEQPACKET socket (no length prefix); and a look at a request's
//! raw fields, so that an option crust's schema does not know is refused
//! rather than dropped by the decoder.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, MsgFlags};
use prost::Message;

use super::proto::{CriuReq, CriuResp};
use crate::error::{Context, Error, Result};

/// The largest request crust takes: criu's clients send a few KiB (a
/// container's mounts); a packet past this is refused, not cut.
const MAX_REQUEST: usize = 1 << 20;

/// The caller's end of the conversation.
pub struct Conn {
    fd: OwnedFd,
}

impl Conn {
    pub fn new(fd: OwnedFd) -> Conn {
        Conn { fd }
    }

    /// The process that made the socket (SO_PEERCRED): the fds named in a
    /// request are its own, seen through /proc/PID/fd.
    pub fn peer_pid(&self) -> Result<i32> {
        let cred = nix::sys::socket::getsockopt(&self.fd, nix::sys::socket::sockopt::PeerCredentials)
            .ctx(|| "reading the caller's credentials from the RPC socket (is FD a unix socket?)")?;
        Ok(cred.pid())
    }

    /// The next packet, raw; None once the caller closed its end.
    pub fn recv_raw(&self) -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; MAX_REQUEST];
        let (len, truncated) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, None, MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(msg) => break (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC)),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).ctx(|| "reading a request from the RPC socket"),
            }
        };
        if truncated {
            return Err(Error::Invalid(format!("a request larger than {MAX_REQUEST} bytes came: crust takes none so large")));
        }
        if len == 0 {
            return Ok(None);
        }
        buf.truncate(len);
        Ok(Some(buf))
    }

    /// The next request; None once the caller closed its end.
    pub fn recv(&self) -> Result<Option<(CriuReq, Vec<u8>)>> {
        let Some(raw) = self.recv_raw()? else { return Ok(None) };
        decode(raw)
    }

    /// The next request, waited for in the middle of a dump or restore: a
    /// stop asked of crust meanwhile (its parent gone, a signal) ends the
    /// wait with [`Error::Cancelled`], so that the work is undone and the
    /// socket closed, instead of holding the tree while the caller waits too.
    pub fn recv_during_work(&self) -> Result<Option<(CriuReq, Vec<u8>)>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        loop {
            crate::cancel::check()?;
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(100u8)) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => break,
                Err(e) => return Err(e).ctx(|| "waiting for the caller's answer on the RPC socket"),
            }
        }
        self.recv()
    }

    /// One response.
    pub fn send(&self, resp: &CriuResp) -> Result<()> {
        let bytes = resp.encode_to_vec();
        loop {
            match nix::sys::socket::send(self.fd.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).ctx(|| "sending a response on the RPC socket"),
            }
        }
    }
}

fn decode(raw: Vec<u8>) -> Result<Option<(CriuReq, Vec<u8>)>> {
    let req = CriuReq::decode(raw.as_slice()).map_err(|e| Error::Invalid(format!("a damaged request ({} bytes) is not a criu_req: {e}", raw.len())))?;
    Ok(Some((req, raw)))
}

/// The field numbers crust's schema declares, of criu_req and criu_opts.
const REQ_FIELDS: std::ops::RangeInclusive<u64> = 1..=6;
const OPTS_FIELDS: &[u64] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
    32, 33, 34, 35, 36, 37, 38, 39, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74,
];

/// Field numbers of `raw` (a criu_req) that crust's schema does not
/// declare: in the request itself and in its options.
pub fn unknown_fields(raw: &[u8]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (number, value) in fields(raw)? {
        if !REQ_FIELDS.contains(&number) {
            out.push(format!("criu_req field {number}"));
        } else if number == 2 {
            let opts = value.ok_or_else(|| Error::Invalid("criu_req.opts is not a message".into()))?;
            out.extend(fields(opts)?.into_iter().filter(|(n, _)| !OPTS_FIELDS.contains(n)).map(|(n, _)| format!("criu_opts field {n}")));
        }
    }
    Ok(out)
}

/// One field of a message: its number, and the bytes of a length-delimited value.
type Field<'a> = (u64, Option<&'a [u8]>);

/// The fields of one message, in order.
fn fields(mut b: &[u8]) -> Result<Vec<Field<'_>>> {
    let bad = || Error::Invalid("a damaged request: its protobuf encoding breaks off".into());
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b).ok_or_else(bad)?;
        let value = match key & 7 {
            0 => {
                varint(&mut b).ok_or_else(bad)?;
                None
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                b = b.get(n..).ok_or_else(bad)?;
                None
            }
            2 => {
                let len = usize::try_from(varint(&mut b).ok_or_else(bad)?).map_err(|_| bad())?;
                let v = b.get(..len).ok_or_else(bad)?;
                b = &b[len..];
                Some(v)
            }
            _ => return Err(bad()),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::proto::{CriuOpts, CriuReqType};

    #[test]
    fn declared_fields_pass_and_others_are_named() {
        let req = CriuReq {
            r#type: CriuReqType::Dump as i32,
            opts: Some(CriuOpts { images_dir_fd: 3, leave_running: Some(true), file_validation_method: Some(1), ..Default::default() }),
            ..Default::default()
        };
        let mut raw = req.encode_to_vec();
        assert_eq!(unknown_fields(&raw).unwrap(), Vec::<String>::new());
        // criu_req field 9, varint 1.
        raw.extend([9 << 3, 1]);
        assert_eq!(unknown_fields(&raw).unwrap(), ["criu_req field 9"]);
        assert!(unknown_fields(&[0x12, 0x05, 0x08]).is_err(), "a cut message is an error");
    }
}
