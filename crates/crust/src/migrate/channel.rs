//! The framed connection a migration speaks, over tcp:// or over ssh://.
//!
//! A frame is a kind byte, a u32 LE length and the payload. On tcp:// the
//! payload is sealed with AES-256-GCM under a key of the session and of its
//! direction, with the frame's sequence number as nonce and the kind and
//! length as associated data, and followed by the 16-byte tag: the pages
//! cross encrypted, and nothing from a peer without the key is acted on, nor
//! can frames be replayed or reordered. ssh:// has its own protection, and
//! frames go over it as they are.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

use crate::error::{Error, Result};

/// The options of the restore (JSON), first of all.
pub const HELLO: u8 = 1;
/// An image file begins: its name.
pub const FILE: u8 = 2;
pub const DATA: u8 = 3;
pub const END_FILE: u8 = 4;
/// Will the images sent so far restore there? Answered OK or ERR.
pub const CHECK: u8 = 5;
/// Build the tree; its pages follow. Answered OK (the tree is built, held
/// stopped) or ERR.
pub const RESTORE: u8 = 6;
/// Let the held tree run. Answered OK once it does.
pub const GO: u8 = 7;
/// Hold the established TCP connections of the images sent so far with a
/// network lock there, before their address moves there. Answered OK once
/// they are held (or there are none) or ERR.
pub const LOCK: u8 = 8;
/// A pre-copy round begins (`crust migrate --live`): its number (text, from
/// 1). Its files (pagemap and pages images, digests) go to a directory of
/// their own, each round's `parent` the round before, as a pre-dump chain.
pub const ROUND: u8 = 9;
/// The round's files are all there: the final dump's `parent` is this round.
pub const END_ROUND: u8 = 10;
pub const OK: u8 = 20;
pub const ERR: u8 = 21;

const MAX_FRAME: usize = 8 << 20;
/// How long a peer may take to send the next frame (the source may scan a
/// large mapping between two), or to take one in.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the destination may take to check or restore.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a peer may take to answer a request that needs no work.
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of an image sent in one frame.
pub const CHUNK: usize = 1 << 20;

/// The keys of a tcp:// session, one per direction.
pub struct SessionKeys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

/// AES-256-GCM (ring's, several times faster here than a portable one: the
/// pages of the tree all go through it).
struct Sealing {
    send: LessSafeKey,
    recv: LessSafeKey,
}

impl Sealing {
    fn new(keys: &SessionKeys) -> Sealing {
        let key = |k: &[u8; 32]| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("a 32-byte key"));
        Sealing { send: key(&keys.send), recv: key(&keys.recv) }
    }
}

/// Sequence numbers never repeat within a session, and each direction has a
/// key of its own, so no nonce is used twice under a key.
fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&seq.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

pub struct Channel {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: BufWriter<Box<dyn Write + Send>>,
    /// A duplicate of the fd `reader` reads from, polled to see whether the
    /// peer has said something.
    poll_fd: OwnedFd,
    /// The socket of a tcp:// link, for timeouts and shutdown.
    socket: Option<TcpStream>,
    /// A tcp:// link seals every frame.
    sealing: Option<Sealing>,
    sent: u64,
    received: u64,
    pub peer: String,
}

impl Channel {
    /// A tcp:// link whose peer proved it holds the key (see `tcp::handshake`).
    pub fn tcp(socket: TcpStream, keys: SessionKeys, peer: String) -> Result<Channel> {
        let clone = |s: &TcpStream| s.try_clone().map_err(|e| Error::Io { context: format!("connection to {peer}"), err: e });
        let (r, w, poll_fd) = (clone(&socket)?, clone(&socket)?, OwnedFd::from(clone(&socket)?));
        // Waits for a frame are bounded by `wait_readable`; these bound a
        // frame that stalls halfway, and a peer that stops taking frames in.
        let _ = socket.set_read_timeout(Some(FRAME_TIMEOUT));
        let _ = socket.set_write_timeout(Some(FRAME_TIMEOUT));
        // Frames are flushed whole: waiting to coalesce them only delays
        // the small requests and answers (by the peer's delayed ACK).
        let _ = socket.set_nodelay(true);
        Ok(Channel {
            reader: BufReader::with_capacity(CHUNK, Box::new(r)),
            writer: BufWriter::with_capacity(CHUNK, Box::new(w)),
            poll_fd,
            socket: Some(socket),
            sealing: Some(Sealing::new(&keys)),
            sent: 0,
            received: 0,
            peer,
        })
    }

    /// A link over a pair of pipes (ssh's standard input and output), which
    /// carry their own protection. `poll_fd` is a duplicate of the fd
    /// `reader` reads from.
    pub fn pipes(reader: Box<dyn Read + Send>, poll_fd: OwnedFd, writer: Box<dyn Write + Send>, peer: String) -> Channel {
        Channel {
            reader: BufReader::with_capacity(CHUNK, reader),
            writer: BufWriter::with_capacity(CHUNK, writer),
            poll_fd,
            socket: None,
            sealing: None,
            sent: 0,
            received: 0,
            peer,
        }
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> Error {
        Error::Io { context: format!("{what} {}", self.peer), err: e }
    }

    pub fn send(&mut self, kind: u8, payload: &[u8]) -> Result<()> {
        let mut head = [kind, 0, 0, 0, 0];
        head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let sealed = match &self.sealing {
            Some(s) => {
                let mut body = payload.to_vec();
                let tag = s
                    .send
                    .seal_in_place_separate_tag(nonce(self.sent), Aad::from(&head), &mut body)
                    .map_err(|_| Error::Protocol(format!("sealing a frame for {}", self.peer)))?;
                Some((body, tag))
            }
            None => None,
        };
        self.sent += 1;
        let w = &mut self.writer;
        let r = match &sealed {
            Some((body, tag)) => w.write_all(&head).and_then(|_| w.write_all(body)).and_then(|_| w.write_all(tag.as_ref())),
            None => w.write_all(&head).and_then(|_| w.write_all(payload)),
        };
        r.and_then(|_| w.flush()).map_err(|e| self.io_err("sending to", e))
    }

    /// The next frame, which must begin within FRAME_TIMEOUT.
    pub fn recv(&mut self) -> Result<(u8, Vec<u8>)> {
        self.recv_within(FRAME_TIMEOUT)
    }

    /// The next frame, which must begin within `timeout`. The wait gives up
    /// early if crust is asked to stop (a pipe has no timeout of its own).
    pub fn recv_within(&mut self, timeout: Duration) -> Result<(u8, Vec<u8>)> {
        self.wait_readable(timeout)?;
        let mut head = [0u8; 5];
        self.reader.read_exact(&mut head).map_err(|e| self.io_err("receiving from", e))?;
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(Error::Protocol(format!("{} sent a frame of {len} bytes", self.peer)));
        }
        let mut payload = vec![0u8; len];
        self.reader.read_exact(&mut payload).map_err(|e| self.io_err("receiving from", e))?;
        if let Some(s) = &self.sealing {
            let mut tag = [0u8; 16];
            self.reader.read_exact(&mut tag).map_err(|e| self.io_err("receiving from", e))?;
            s.recv
                .open_in_place_separate_tag(nonce(self.received), Aad::from(&head), Tag::from(tag), &mut payload, 0..)
                .map_err(|_| Error::Protocol(format!("{}: a frame failed authentication", self.peer)))?;
        }
        self.received += 1;
        Ok((head[0], payload))
    }

    fn wait_readable(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.peer_spoke() {
                return Ok(());
            }
            crate::cancel::check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Protocol(format!("{} said nothing for {} s", self.peer, timeout.as_secs())));
            }
            let slice = left.min(Duration::from_millis(200)).as_millis() as u16;
            // Readable, hung up, interrupted or not: the loop looks again.
            let _ = poll(&mut [PollFd::new(self.poll_fd.as_fd(), PollFlags::POLLIN)], slice);
        }
    }

    /// The answer to a request: OK with its payload, or the peer's error.
    pub fn answer_within(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        match self.recv_within(timeout)? {
            (OK, p) => Ok(p),
            (ERR, p) => Err(Error::Protocol(String::from_utf8_lossy(&p).into_owned())),
            (k, _) => Err(Error::Protocol(format!("{} answered with frame kind {k}", self.peer))),
        }
    }

    /// Whether the peer has sent something we have not read (or hung up):
    /// while we stream to it, that is its answer come early (it gave up).
    pub fn peer_spoke(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let mut fds = [PollFd::new(self.poll_fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
    }

    /// If the peer gave up and said why, its reason; else `err` as it is.
    pub fn reason(&mut self, err: Error) -> Error {
        if !self.peer_spoke() {
            return err;
        }
        match self.recv_within(Duration::from_secs(1)) {
            Ok((ERR, p)) => Error::Protocol(String::from_utf8_lossy(&p).into_owned()),
            _ => err,
        }
    }

    /// Say that we failed, then read and drop what the peer still sends until
    /// it stops (bounded), so that our close does not reset the connection
    /// before the peer has read why.
    pub fn fail(&mut self, why: &str) {
        let _ = self.send(ERR, why.as_bytes());
        if let Some(s) = &self.socket {
            let _ = s.shutdown(std::net::Shutdown::Write);
            let deadline = Instant::now() + FRAME_TIMEOUT;
            let mut buf = vec![0u8; 1 << 16];
            while Instant::now() < deadline {
                match self.reader.get_mut().read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }

    /// Cut the link (the migration is abandoned).
    pub fn close(&mut self) {
        if let Some(s) = &self.socket {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Two ends of a loopback TCP connection.
    fn socket_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn keys(send: u8, recv: u8) -> SessionKeys {
        SessionKeys { send: [send; 32], recv: [recv; 32] }
    }

    /// The bytes one sealed frame puts on the wire.
    fn wire_bytes(kind: u8, payload: &[u8]) -> Vec<u8> {
        let (a, mut b) = socket_pair();
        let mut sender = Channel::tcp(a, keys(1, 2), "test".into()).unwrap();
        sender.send(kind, payload).unwrap();
        sender.send(kind, payload).unwrap();
        drop(sender);
        let mut raw = Vec::new();
        b.read_to_end(&mut raw).unwrap();
        raw
    }

    /// A receiving channel fed `raw` from the wire.
    fn receiver(raw: &[u8], k: SessionKeys) -> Channel {
        let (mut c, d) = socket_pair();
        c.write_all(raw).unwrap();
        Channel::tcp(d, k, "test".into()).unwrap()
    }

    #[test]
    fn tcp_frames_cross_encrypted_and_arrive_intact_in_order() {
        let secret = b"the tree's memory: password=hunter2".repeat(100);
        let raw = wire_bytes(DATA, &secret);
        assert_eq!(raw.len(), 2 * (5 + secret.len() + 16), "head, sealed payload and tag, twice");
        assert!(!raw.windows(8).any(|w| w == b"hunter2=" || w == b"password"), "the payload is not on the wire in the clear");
        assert_ne!(raw[5..5 + 64], raw[raw.len() / 2 + 5..raw.len() / 2 + 5 + 64], "the same payload seals differently each frame");
        let mut rx = receiver(&raw, keys(2, 1));
        assert_eq!(rx.recv().unwrap(), (DATA, secret.clone()));
        assert_eq!(rx.recv().unwrap(), (DATA, secret));
    }

    #[test]
    fn tampered_replayed_or_foreign_frames_are_refused() {
        let raw = wire_bytes(FILE, b"core-1.img");
        let one = raw.len() / 2;
        let failed = |mut rx: Channel, case: &str| {
            let e = rx.recv().map(|f| format!("{case}: accepted {f:?}")).unwrap_or_else(|e| e.to_string());
            assert!(e.contains("failed authentication"), "{e}");
        };
        for at in [0, 1, 7, one - 1] {
            let mut bad = raw[..one].to_vec();
            bad[at] ^= 0x40;
            if at == 1 {
                // A changed length: the frame ends elsewhere; pad so it can be read whole.
                bad.extend(vec![0u8; 1 << 16]);
            }
            failed(receiver(&bad, keys(2, 1)), &format!("byte {at} changed"));
        }
        // The second frame alone, first: its sequence number does not match.
        failed(receiver(&raw[one..], keys(2, 1)), "second frame first");
        // A key of another session.
        failed(receiver(&raw, keys(2, 3)), "another session's key");
    }
}
