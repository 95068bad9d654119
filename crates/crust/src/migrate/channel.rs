//! The framed connection a migration speaks, over tcp:// or over ssh://.
//!
//! A frame is a kind byte, a u32 LE length and the payload; on tcp:// it is
//! followed by an HMAC-SHA256 tag under the session key over a sequence
//! number, the kind, the length and the payload, so that nothing from a peer
//! without the key is acted on and frames cannot be replayed or reordered
//! (ssh:// has its own protection, and no tags).

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

pub(crate) type HmacSha256 = Hmac<Sha256>;

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
pub const OK: u8 = 20;
pub const ERR: u8 = 21;

const MAX_FRAME: usize = 8 << 20;
/// How long a peer may take to send the next frame of a transfer.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the destination may take to check or restore.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes of an image sent in one frame.
pub const CHUNK: usize = 1 << 20;

pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m
}

pub struct Channel {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: BufWriter<Box<dyn Write + Send>>,
    /// What `reader` reads from, to see whether the peer has said something.
    read_fd: RawFd,
    /// The socket of a tcp:// link, for timeouts and shutdown.
    socket: Option<TcpStream>,
    /// Session key of a tcp:// link: every frame carries a tag.
    session: Option<[u8; 32]>,
    sent: u64,
    received: u64,
    pub peer: String,
}

impl Channel {
    /// A tcp:// link whose peer proved it holds the key (see `tcp::handshake`).
    pub fn tcp(socket: TcpStream, session: [u8; 32], peer: String) -> Result<Channel> {
        let clone = |s: &TcpStream| s.try_clone().map_err(|e| Error::Io { context: format!("connection to {peer}"), err: e });
        let (r, w) = (clone(&socket)?, clone(&socket)?);
        let _ = socket.set_read_timeout(Some(FRAME_TIMEOUT));
        let read_fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        Ok(Channel {
            reader: BufReader::with_capacity(CHUNK, Box::new(r)),
            writer: BufWriter::with_capacity(CHUNK, Box::new(w)),
            read_fd,
            socket: Some(socket),
            session: Some(session),
            sent: 0,
            received: 0,
            peer,
        })
    }

    /// A link over a pair of pipes (ssh's standard input and output), which
    /// carry their own protection.
    pub fn pipes(reader: Box<dyn Read + Send>, read_fd: RawFd, writer: Box<dyn Write + Send>, peer: String) -> Channel {
        Channel {
            reader: BufReader::with_capacity(CHUNK, reader),
            writer: BufWriter::with_capacity(CHUNK, writer),
            read_fd,
            socket: None,
            session: None,
            sent: 0,
            received: 0,
            peer,
        }
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> Error {
        Error::Io { context: format!("{what} {}", self.peer), err: e }
    }

    fn tag(&self, seq: u64, kind: u8, len: &[u8; 4], payload: &[u8]) -> Option<[u8; 32]> {
        let key = self.session.as_ref()?;
        Some(mac(key, &[&seq.to_le_bytes(), &[kind], len, payload]).finalize().into_bytes().into())
    }

    pub fn send(&mut self, kind: u8, payload: &[u8]) -> Result<()> {
        let len = (payload.len() as u32).to_le_bytes();
        let tag = self.tag(self.sent, kind, &len, payload);
        self.sent += 1;
        let w = &mut self.writer;
        let mut r = w.write_all(&[kind]).and_then(|_| w.write_all(&len)).and_then(|_| w.write_all(payload));
        if let Some(tag) = tag {
            r = r.and_then(|_| w.write_all(&tag));
        }
        r.and_then(|_| w.flush()).map_err(|e| self.io_err("sending to", e))
    }

    pub fn recv(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.reader.read_exact(&mut head).map_err(|e| self.io_err("receiving from", e))?;
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(Error::Invalid(format!("{} sent a frame of {len} bytes", self.peer)));
        }
        let mut payload = vec![0u8; len];
        self.reader.read_exact(&mut payload).map_err(|e| self.io_err("receiving from", e))?;
        if let Some(key) = self.session {
            let mut tag = [0u8; 32];
            self.reader.read_exact(&mut tag).map_err(|e| self.io_err("receiving from", e))?;
            let len = head[1..5].try_into().expect("4 bytes");
            mac(&key, &[&self.received.to_le_bytes(), &head[..1], len, &payload])
                .verify_slice(&tag)
                .map_err(|_| Error::Invalid(format!("{}: a frame failed authentication", self.peer)))?;
        }
        self.received += 1;
        Ok((head[0], payload))
    }

    /// The answer to a request: OK with its payload, or the peer's error. A
    /// restore of a large tree takes long: the wait is generous, not endless.
    pub fn answer(&mut self) -> Result<Vec<u8>> {
        self.set_timeout(ANSWER_TIMEOUT);
        let answer = self.recv();
        self.set_timeout(FRAME_TIMEOUT);
        match answer? {
            (OK, p) => Ok(p),
            (ERR, p) => Err(Error::Invalid(String::from_utf8_lossy(&p).into_owned())),
            (k, _) => Err(Error::Invalid(format!("{} answered with frame kind {k}", self.peer))),
        }
    }

    /// Wait at most `timeout` for the peer's next frame (tcp:// only; a pipe waits).
    pub fn recv_within(&mut self, timeout: Duration) -> Result<(u8, Vec<u8>)> {
        self.set_timeout(timeout);
        let frame = self.recv();
        self.set_timeout(FRAME_TIMEOUT);
        frame
    }

    fn set_timeout(&self, t: Duration) {
        if let Some(s) = &self.socket {
            let _ = s.set_read_timeout(Some(t));
        }
    }

    /// Whether the peer has sent something we have not read: while we stream
    /// to it, that is its answer come early (it gave up).
    pub fn peer_spoke(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let mut fds = [libc::pollfd { fd: self.read_fd, events: libc::POLLIN, revents: 0 }];
        // SAFETY: poll of one fd this channel reads from, without waiting.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) > 0 }
    }

    /// If the peer gave up and said why, its reason; else `err` as it is.
    pub fn reason(&mut self, err: Error) -> Error {
        if !self.peer_spoke() {
            return err;
        }
        match self.recv_within(Duration::from_secs(1)) {
            Ok((ERR, p)) => Error::Invalid(String::from_utf8_lossy(&p).into_owned()),
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
            let deadline = std::time::Instant::now() + FRAME_TIMEOUT;
            let mut buf = vec![0u8; 1 << 16];
            while std::time::Instant::now() < deadline {
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
