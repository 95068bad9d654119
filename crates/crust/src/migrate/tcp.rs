//! The tcp:// link and `crust serve`, its receiving agent.
//!
//! Both ends prove they hold the same pre-shared key (HMAC-SHA256 over fresh
//! nonces from each side) before anything else is said; keys for the session
//! are derived from the key and both nonces, and every frame after that is
//! sealed with them (AES-256-GCM, see `channel`): the tree's memory crosses
//! encrypted, and nothing from a peer without the key is written or restored.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::Mac;

use super::channel::{mac, Channel, SessionKeys, QUICK_TIMEOUT};
use super::receive::{receive, Session};
use crate::error::{Context, Error, Result};

/// The server's first byte: it takes the connection, or has no room for it.
const WELCOME: u8 = 0;
const BUSY: u8 = 1;

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

fn nonce() -> Result<[u8; 32]> {
    let mut n = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut n)).ctx(|| "reading /dev/urandom")?;
    Ok(n)
}

/// Mutual proof of the key, then the session key. The server speaks first.
/// Unbuffered, so that no byte of the first frame is read here.
fn handshake(mut stream: TcpStream, key: &[u8], server: bool) -> Result<Channel> {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "peer".into());
    stream.set_read_timeout(Some(QUICK_TIMEOUT)).ctx(|| "setting a timeout")?;
    stream.set_write_timeout(Some(QUICK_TIMEOUT)).ctx(|| "setting a timeout")?;
    let io = |e: std::io::Error| Error::Io { context: format!("handshake with {peer}"), err: e };
    let refused = || Error::Invalid(format!("{peer}: authentication failed (wrong or missing key)"));
    let (ns, nc) = if server {
        let ns = nonce()?;
        stream.write_all(&[WELCOME]).and_then(|_| stream.write_all(&ns)).map_err(io)?;
        let mut msg = [0u8; 64];
        stream.read_exact(&mut msg).map_err(io)?;
        let nc: [u8; 32] = msg[..32].try_into().expect("32 bytes");
        mac(key, &[b"crust-client-v1", &ns, &nc]).verify_slice(&msg[32..]).map_err(|_| refused())?;
        let tag = mac(key, &[b"crust-server-v1", &nc, &ns]).finalize().into_bytes();
        stream.write_all(&tag).map_err(io)?;
        (ns, nc)
    } else {
        let mut status = [0u8; 1];
        stream.read_exact(&mut status).map_err(io)?;
        if status[0] == BUSY {
            return Err(Error::Invalid(format!("{peer} is busy with as many migrations as it takes at once; try again later")));
        }
        let mut ns = [0u8; 32];
        stream.read_exact(&mut ns).map_err(io)?;
        let nc = nonce()?;
        let tag = mac(key, &[b"crust-client-v1", &ns, &nc]).finalize().into_bytes();
        stream.write_all(&nc).and_then(|_| stream.write_all(&tag)).map_err(io)?;
        let mut answer = [0u8; 32];
        stream.read_exact(&mut answer).map_err(|_| refused())?;
        mac(key, &[b"crust-server-v1", &nc, &ns]).verify_slice(&answer).map_err(|_| refused())?;
        (ns, nc)
    };
    let derive = |label: &[u8]| -> [u8; 32] { mac(key, &[label, &ns, &nc]).finalize().into_bytes().into() };
    let (to_server, to_client) = (derive(b"crust-to-server-v2"), derive(b"crust-to-client-v2"));
    let keys = if server {
        SessionKeys { send: to_client, recv: to_server }
    } else {
        SessionKeys { send: to_server, recv: to_client }
    };
    Channel::tcp(stream, keys, peer)
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

/// `crust serve`: accept migrations, one process per connection.
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
                let mut fds = [libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&listener), events: libc::POLLIN, revents: 0 }];
                // SAFETY: poll on one fd we own, for at most 200 ms.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, 200) };
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
        // SAFETY: serve is single-threaded; the child handles one connection and exits.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // A handler does not outlive its agent.
                // SAFETY: plain prctl on ourselves.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
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
    // SAFETY: alarm only arms a timer of this process.
    unsafe { libc::alarm(HANDSHAKE_SECONDS) };
    let handshake = handshake(stream, key, true);
    // SAFETY: as above, disarms it.
    unsafe { libc::alarm(0) };
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
