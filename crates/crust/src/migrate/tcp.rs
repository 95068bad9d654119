//! The tcp:// link and `crust serve`, its receiving agent.
//!
//! Both ends prove they hold the same pre-shared key (HMAC-SHA256 under it
//! over fresh nonces from each side, checked in constant time) before
//! anything else is said; a key for each direction of the session is then
//! derived from the key and both nonces (HKDF-SHA256), and every frame after
//! that is sealed with it (AES-256-GCM, see `channel`): the tree's memory
//! crosses encrypted, and nothing from a peer without the key is written or
//! restored. All of it is ring's, nonces from its `SystemRandom`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::signal::Signal;
use nix::unistd::alarm;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

use super::channel::{Channel, SessionKeys, QUICK_TIMEOUT};
use super::receive::{receive, Session};
use crate::error::{Context, Error, Result};

/// The server's first byte: the version of the handshake it speaks (it takes
/// the connection), or BUSY (it has no room for it). A crust serve of the
/// first handshake said 0, and derived its keys otherwise.
const HANDSHAKE_V1: u8 = 0;
const BUSY: u8 = 1;
const HANDSHAKE: u8 = 2;

const NONCE_LEN: usize = 32;
/// An HMAC-SHA256 tag.
const PROOF_LEN: usize = 32;

/// What each end's proof is over, besides both nonces (same length, so that
/// no proof of one can be read as the other's).
const CLIENT_PROOF: &[u8] = b"crust-tcp-v2 client proof";
const SERVER_PROOF: &[u8] = b"crust-tcp-v2 server proof";
/// HKDF's info for the key of each direction.
const TO_SERVER: &[u8] = b"crust-tcp-v2 to server";
const TO_CLIENT: &[u8] = b"crust-tcp-v2 to client";

/// A key file: at least 16 bytes, readable by its owner only.
pub fn read_key(path: &Path) -> Result<Vec<u8>> {
    let md = std::fs::metadata(path).ctx(|| format!("key file {}", path.display()))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(Error::Invalid(format!("key file {}: others may read it; chmod 600 it", path.display())));
    }
    let mut key = std::fs::read(path).ctx(|| format!("reading key file {}", path.display()))?;
    while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
        key.pop();
    }
    if key.len() < 16 {
        return Err(Error::Invalid(format!("key file {}: a key needs at least 16 bytes", path.display())));
    }
    Ok(key)
}

fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut n).map_err(|_| Error::io_other("drawing a nonce", "the system gave no random bytes"))?;
    Ok(n)
}

/// The bytes a proof is over: who proves, then both nonces, the prover's peer's first.
fn proof_input(who: &[u8], first: &[u8; NONCE_LEN], second: &[u8; NONCE_LEN]) -> Vec<u8> {
    [who, first, second].concat()
}

fn prove(key: &hmac::Key, who: &[u8], first: &[u8; NONCE_LEN], second: &[u8; NONCE_LEN]) -> hmac::Tag {
    hmac::sign(key, &proof_input(who, first, second))
}

/// Whether `tag` proves the key (in constant time).
fn proves(key: &hmac::Key, who: &[u8], first: &[u8; NONCE_LEN], second: &[u8; NONCE_LEN], tag: &[u8]) -> bool {
    hmac::verify(key, &proof_input(who, first, second), tag).is_ok()
}

/// The keys of a session: HKDF-SHA256 of the pre-shared key, salted with
/// both nonces (fresh each session), one key per direction.
fn session_keys(key: &[u8], ns: &[u8; NONCE_LEN], nc: &[u8; NONCE_LEN], server: bool) -> SessionKeys {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[&ns[..], &nc[..]].concat()).extract(key);
    let derive = |info: &[u8]| -> [u8; 32] {
        let mut k = [0u8; 32];
        let info = [info];
        // 32 bytes is far below HKDF-SHA256's limit (255 blocks): neither fails.
        prk.expand(&info, hkdf::HKDF_SHA256).and_then(|okm| okm.fill(&mut k)).expect("32 bytes of HKDF output");
        k
    };
    let (to_server, to_client) = (derive(TO_SERVER), derive(TO_CLIENT));
    if server {
        SessionKeys { send: to_client, recv: to_server }
    } else {
        SessionKeys { send: to_server, recv: to_client }
    }
}

/// Mutual proof of the key, then the session keys. The server speaks first:
/// its handshake version and nonce; the client answers with its nonce and
/// proof, the server with its proof. Unbuffered, so that no byte of the first
/// frame is read here.
fn handshake(mut stream: TcpStream, key: &[u8], server: bool) -> Result<Channel> {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "peer".into());
    stream.set_read_timeout(Some(QUICK_TIMEOUT)).ctx(|| "setting a timeout")?;
    stream.set_write_timeout(Some(QUICK_TIMEOUT)).ctx(|| "setting a timeout")?;
    let io = |e: std::io::Error| Error::Io { context: format!("handshake with {peer}"), err: e };
    let refused = || Error::Protocol(format!("{peer}: authentication failed (wrong or missing key)"));
    let mac_key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let (ns, nc) = if server {
        let ns = nonce()?;
        stream.write_all(&[HANDSHAKE]).and_then(|_| stream.write_all(&ns)).map_err(io)?;
        let mut msg = [0u8; NONCE_LEN + PROOF_LEN];
        stream.read_exact(&mut msg).map_err(io)?;
        let nc: [u8; NONCE_LEN] = msg[..NONCE_LEN].try_into().expect("32 bytes");
        if !proves(&mac_key, CLIENT_PROOF, &ns, &nc, &msg[NONCE_LEN..]) {
            return Err(refused());
        }
        stream.write_all(prove(&mac_key, SERVER_PROOF, &nc, &ns).as_ref()).map_err(io)?;
        (ns, nc)
    } else {
        let mut status = [0u8; 1];
        stream.read_exact(&mut status).map_err(io)?;
        match status[0] {
            HANDSHAKE => {}
            BUSY => {
                return Err(Error::Protocol(format!(
                    "{peer} is busy with as many migrations as it takes at once; try again later"
                )))
            }
            HANDSHAKE_V1 => {
                return Err(Error::Protocol(format!(
                    "{peer} runs an older crust serve (tcp:// handshake 1, this crust speaks {HANDSHAKE}); update crust there"
                )))
            }
            v => {
                return Err(Error::Protocol(format!(
                    "{peer} speaks tcp:// handshake {v}, this crust {HANDSHAKE}: run the same crust on both hosts"
                )))
            }
        }
        let mut ns = [0u8; NONCE_LEN];
        stream.read_exact(&mut ns).map_err(io)?;
        let nc = nonce()?;
        let tag = prove(&mac_key, CLIENT_PROOF, &ns, &nc);
        stream.write_all(&nc).and_then(|_| stream.write_all(tag.as_ref())).map_err(io)?;
        let mut answer = [0u8; PROOF_LEN];
        stream.read_exact(&mut answer).map_err(|_| refused())?;
        if !proves(&mac_key, SERVER_PROOF, &nc, &ns, &answer) {
            return Err(refused());
        }
        (ns, nc)
    };
    Channel::tcp(stream, session_keys(key, &ns, &nc, server), peer)
}

/// Connect to a `crust serve` and prove the key.
pub fn connect(host: &str, port: u16, key: &[u8]) -> Result<Channel> {
    let addr = (host, port)
        .to_socket_addrs()
        .ctx(|| format!("resolving {host}:{port}"))?
        .next()
        .ok_or_else(|| Error::Invalid(format!("{host}:{port}: no address")))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ctx(|| format!("connecting to {addr}"))?;
    handshake(stream, key, false)
}

pub struct ServeOptions {
    pub listen: String,
    pub key: PathBuf,
    pub dir: PathBuf,
    /// Migrations taken at once; more connections are turned away.
    pub max_sessions: usize,
}

/// `crust serve`: accept migrations, one process per connection. It forks a
/// handler for each, so it must run in a process with no other thread (as the
/// crust command does).
pub fn serve(opts: &ServeOptions) -> Result<()> {
    let key = read_key(&opts.key)?;
    if opts.max_sessions == 0 {
        return Err(Error::Invalid("--max-sessions must be at least 1".into()));
    }
    Session::private_workdir(&opts.dir)?;
    let listener = TcpListener::bind(&opts.listen).ctx(|| format!("listening on {}", opts.listen))?;
    log::warn!("crust serve: listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    Session::remove_stale(&opts.dir);
    listener.set_nonblocking(true).ctx(|| "setting the listener non-blocking")?;
    let mut handlers = 0usize;
    loop {
        handlers -= reap_handlers(&opts.dir);
        let (mut stream, from) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Wait for a connection, 200 ms at most: ended handlers are reaped each turn.
                let _ = poll(&mut [PollFd::new(listener.as_fd(), PollFlags::POLLIN)], 200u16);
                continue;
            }
            Err(e) => {
                log::error!("crust serve: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        if handlers >= opts.max_sessions {
            log::warn!("crust serve: turned away {from}: {handlers} migration(s) already running");
            let _ = stream.write_all(&[BUSY]);
            continue;
        }
        // SAFETY: `crust serve` runs no other thread, so the child cannot
        // inherit a lock that some thread held while it forked; it handles
        // this one connection and exits, never back in this loop.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // A handler does not outlive its agent.
                if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
                    log::warn!("crust serve: a handler that may outlive its agent: {e}");
                }
                drop(listener);
                handle(stream, &key, &opts.dir);
                std::process::exit(0);
            }
            Ok(nix::unistd::ForkResult::Parent { .. }) => handlers += 1,
            Err(e) => log::error!("crust serve: fork: {e}"),
        }
    }
}

/// Reap finished connection handlers and remove whatever session directory a
/// handler could not remove itself (it was killed, say); returns how many ended.
fn reap_handlers(workdir: &Path) -> usize {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut ended = 0;
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        match status.pid() {
            Some(pid) if !matches!(status, WaitStatus::StillAlive) => {
                let _ = std::fs::remove_dir_all(workdir.join(format!("session-{pid}")));
                ended += 1;
            }
            _ => break,
        }
    }
    ended
}

/// How long a peer has to prove the key, in all: a peer without it must not
/// hold one of the sessions long by sending its bytes slowly.
const HANDSHAKE_SECONDS: u32 = 10;

fn handle(stream: TcpStream, key: &[u8], workdir: &Path) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    // SIGALRM's default action ends this handler if the handshake takes longer.
    alarm::set(HANDSHAKE_SECONDS);
    let handshake = handshake(stream, key, true);
    alarm::cancel();
    let mut chan = match handshake {
        Ok(c) => c,
        Err(e) => {
            log::warn!("crust serve: refused a connection: {e}");
            return;
        }
    };
    match receive(&mut chan, workdir) {
        Ok(r) => log::warn!("crust serve: restored a tree from {peer}, root pid {}", r.root),
        Err(e) => log::warn!("crust serve: migration from {peer} ended: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::channel::DATA;

    const KEY: &[u8] = b"a pre-shared key of 32 bytes....";

    /// Both ends of a loopback TCP connection: (client's, server's).
    fn socket_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// A handshake between a client holding `client_key` and a server holding `server_key`.
    fn both(client_key: &[u8], server_key: &[u8]) -> (Result<Channel>, Result<Channel>) {
        let (c, s) = socket_pair();
        let server_key = server_key.to_vec();
        let server = std::thread::spawn(move || handshake(s, &server_key, true));
        let client = handshake(c, client_key, false);
        (client, server.join().unwrap())
    }

    #[test]
    fn ends_with_the_same_key_talk_both_ways() {
        let (client, server) = both(KEY, KEY);
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        client.send(DATA, b"to the server").unwrap();
        assert_eq!(server.recv().unwrap(), (DATA, b"to the server".to_vec()));
        server.send(DATA, b"to the client").unwrap();
        assert_eq!(client.recv().unwrap(), (DATA, b"to the client".to_vec()));
    }

    #[test]
    fn a_wrong_key_is_refused_by_both_ends() {
        let (client, server) = both(b"another key of 32 bytes.........", KEY);
        let e = client.err().expect("the client is refused").to_string();
        assert!(e.contains("authentication failed"), "{e}");
        let e = server.err().expect("the server refuses").to_string();
        assert!(e.contains("authentication failed"), "{e}");
    }

    #[test]
    fn a_server_without_the_key_is_refused_by_the_client() {
        // A fake server that sends a nonce and answers with a proof made
        // without the key (it cannot make one with it).
        let (c, mut s) = socket_pair();
        let fake = std::thread::spawn(move || {
            s.write_all(&[HANDSHAKE]).unwrap();
            s.write_all(&[7u8; NONCE_LEN]).unwrap();
            let mut msg = [0u8; NONCE_LEN + PROOF_LEN];
            s.read_exact(&mut msg).unwrap();
            let nc: [u8; NONCE_LEN] = msg[..NONCE_LEN].try_into().unwrap();
            let guess = hmac::Key::new(hmac::HMAC_SHA256, b"a guessed key");
            s.write_all(prove(&guess, SERVER_PROOF, &nc, &[7u8; NONCE_LEN]).as_ref()).unwrap();
            msg
        });
        let e = handshake(c, KEY, false).err().expect("refused").to_string();
        assert!(e.contains("authentication failed"), "{e}");
        let sent = fake.join().unwrap();
        assert!(!sent.windows(8).any(|w| KEY.windows(8).any(|k| k == w)), "the key does not cross");
    }

    #[test]
    fn a_replayed_client_proof_is_refused() {
        // Record what a client with the key says to a server nonce...
        let (c, mut s) = socket_pair();
        let client = std::thread::spawn(move || handshake(c, KEY, false).map(|_| ()));
        s.write_all(&[HANDSHAKE]).unwrap();
        s.write_all(&[1u8; NONCE_LEN]).unwrap();
        let mut recorded = [0u8; NONCE_LEN + PROOF_LEN];
        s.read_exact(&mut recorded).unwrap();
        drop(s);
        assert!(client.join().unwrap().is_err(), "no answer from the server: refused");
        // ...and replay it to a real server: its nonce is fresh, so the proof is not.
        let (mut c, s) = socket_pair();
        let server = std::thread::spawn(move || handshake(s, KEY, true));
        let mut hello = [0u8; 1 + NONCE_LEN];
        c.read_exact(&mut hello).unwrap();
        assert_eq!(hello[0], HANDSHAKE);
        assert_ne!(hello[1..], [1u8; NONCE_LEN], "a fresh nonce");
        c.write_all(&recorded).unwrap();
        let e = server.join().unwrap().err().expect("the replay is refused").to_string();
        assert!(e.contains("authentication failed"), "{e}");
    }

    #[test]
    fn nonces_are_fresh() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(a, b);
        assert_ne!(a, [0u8; NONCE_LEN]);
    }

    #[test]
    fn each_direction_has_its_key_and_each_session_its_keys() {
        let (ns, nc) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let server = session_keys(KEY, &ns, &nc, true);
        let client = session_keys(KEY, &ns, &nc, false);
        assert_eq!(client.send, server.recv);
        assert_eq!(client.recv, server.send);
        assert_ne!(client.send, client.recv, "a key per direction");
        for other in [
            session_keys(KEY, &[3u8; NONCE_LEN], &nc, false),
            session_keys(KEY, &ns, &[3u8; NONCE_LEN], false),
            session_keys(b"another key of 32 bytes.........", &ns, &nc, false),
            session_keys(KEY, &nc, &ns, false),
        ] {
            assert_ne!(other.send, client.send);
            assert_ne!(other.recv, client.recv);
        }
        assert!(!client.send.windows(8).any(|w| KEY.windows(8).any(|k| k == w)), "not the key itself");
    }

    #[test]
    fn a_busy_or_older_server_is_named_as_such() {
        for (first, expected) in [(BUSY, "busy"), (HANDSHAKE_V1, "older crust serve"), (9, "handshake 9")] {
            let (c, mut s) = socket_pair();
            s.write_all(&[first]).unwrap();
            s.write_all(&[0u8; NONCE_LEN]).unwrap();
            let e = handshake(c, KEY, false).err().expect("refused").to_string();
            assert!(e.contains(expected), "{first}: {e}");
        }
    }
}
