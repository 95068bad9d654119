//! The tcp:// transport and `crust serve`, its receiving agent.
//!
//! Both ends prove they hold the same pre-shared key (HMAC-SHA256 over fresh
//! nonces from each side) before anything else is said, and every frame after
//! that carries an HMAC under a session key with a sequence number, so nothing
//! from a peer without the key is ever written or restored, and frames cannot
//! be replayed or reordered. The link is authenticated, not encrypted: the
//! pages of the tree cross it in the clear (use ssh:// on untrusted networks).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{safe_name, RemoteRestore, Restored, Transport};
use crate::error::{Context, Error, Result};

type HmacSha256 = Hmac<Sha256>;

const HELLO: u8 = 1;
const FILE: u8 = 2;
const DATA: u8 = 3;
const END_FILE: u8 = 4;
const CHECK: u8 = 5;
const RESTORE: u8 = 6;
const OK: u8 = 20;
const ERR: u8 = 21;
const MAX_FRAME: usize = 8 << 20;
/// How long a peer may take to send the next frame of a transfer.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the destination may take to check or restore.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
const CHUNK: usize = 1 << 20;

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

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m
}

fn nonce() -> Result<[u8; 32]> {
    let mut n = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut n)).ctx(|| "reading /dev/urandom")?;
    Ok(n)
}

/// An authenticated, framed connection.
struct Channel {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    session: [u8; 32],
    sent: u64,
    received: u64,
    peer: String,
}

impl Channel {
    fn io_err(&self, what: &str, e: std::io::Error) -> Error {
        Error::Io { context: format!("{what} {}", self.peer), err: e }
    }

    fn send(&mut self, kind: u8, payload: &[u8]) -> Result<()> {
        let len = (payload.len() as u32).to_le_bytes();
        let tag = mac(&self.session, &[&self.sent.to_le_bytes(), &[kind], &len, payload]).finalize().into_bytes();
        self.sent += 1;
        let w = &mut self.writer;
        let r = w.write_all(&[kind]).and_then(|_| w.write_all(&len)).and_then(|_| w.write_all(payload));
        let r = r.and_then(|_| w.write_all(&tag)).and_then(|_| w.flush());
        r.map_err(|e| self.io_err("sending to", e))
    }

    fn recv(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.reader.read_exact(&mut head).map_err(|e| self.io_err("receiving from", e))?;
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(Error::Invalid(format!("{} sent a frame of {len} bytes", self.peer)));
        }
        let mut payload = vec![0u8; len];
        let mut tag = [0u8; 32];
        self.reader
            .read_exact(&mut payload)
            .and_then(|_| self.reader.read_exact(&mut tag))
            .map_err(|e| self.io_err("receiving from", e))?;
        mac(&self.session, &[&self.received.to_le_bytes(), &head[..1], &head[1..5], &payload])
            .verify_slice(&tag)
            .map_err(|_| Error::Invalid(format!("{}: a frame failed authentication", self.peer)))?;
        self.received += 1;
        Ok((head[0], payload))
    }

    /// The answer to a request: OK with its payload, or the peer's error. A
    /// restore of a large tree takes long: the wait is generous, not endless.
    fn answer(&mut self) -> Result<Vec<u8>> {
        let _ = self.reader.get_ref().set_read_timeout(Some(ANSWER_TIMEOUT));
        let answer = self.recv();
        let _ = self.reader.get_ref().set_read_timeout(Some(FRAME_TIMEOUT));
        match answer? {
            (OK, p) => Ok(p),
            (ERR, p) => Err(Error::Invalid(String::from_utf8_lossy(&p).into_owned())),
            (k, _) => Err(Error::Invalid(format!("{} answered with frame kind {k}", self.peer))),
        }
    }
}

/// Mutual proof of the key. The server speaks first.
fn handshake(stream: TcpStream, key: &[u8], server: bool) -> Result<Channel> {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "peer".into());
    stream.set_read_timeout(Some(FRAME_TIMEOUT)).ctx(|| "setting a timeout")?;
    stream.set_write_timeout(Some(FRAME_TIMEOUT)).ctx(|| "setting a timeout")?;
    let mut reader = BufReader::new(stream.try_clone().ctx(|| "cloning a socket")?);
    let mut writer = BufWriter::new(stream);
    let io = |e: std::io::Error| Error::Io { context: format!("handshake with {peer}"), err: e };
    let refused = || Error::Invalid(format!("{peer}: authentication failed (wrong or missing key)"));
    let (ns, nc) = if server {
        let ns = nonce()?;
        writer.write_all(&ns).and_then(|_| writer.flush()).map_err(io)?;
        let mut msg = [0u8; 64];
        reader.read_exact(&mut msg).map_err(io)?;
        let nc: [u8; 32] = msg[..32].try_into().expect("32 bytes");
        mac(key, &[b"crust-client-v1", &ns, &nc]).verify_slice(&msg[32..]).map_err(|_| refused())?;
        let tag = mac(key, &[b"crust-server-v1", &nc, &ns]).finalize().into_bytes();
        writer.write_all(&tag).and_then(|_| writer.flush()).map_err(io)?;
        (ns, nc)
    } else {
        let mut ns = [0u8; 32];
        reader.read_exact(&mut ns).map_err(io)?;
        let nc = nonce()?;
        let tag = mac(key, &[b"crust-client-v1", &ns, &nc]).finalize().into_bytes();
        writer.write_all(&nc).and_then(|_| writer.write_all(&tag)).and_then(|_| writer.flush()).map_err(io)?;
        let mut answer = [0u8; 32];
        reader.read_exact(&mut answer).map_err(|_| refused())?;
        mac(key, &[b"crust-server-v1", &nc, &ns]).verify_slice(&answer).map_err(|_| refused())?;
        (ns, nc)
    };
    let session = mac(key, &[b"crust-session-v1", &ns, &nc]).finalize().into_bytes().into();
    Ok(Channel { reader, writer, session, sent: 0, received: 0, peer })
}

/// The sending side of a migration.
pub struct Client {
    chan: Arc<Mutex<Channel>>,
    streamed: Arc<AtomicU64>,
}

/// The images of a dump, sent as the dump writes them.
struct Stream {
    chan: Arc<Mutex<Channel>>,
    sent: Arc<AtomicU64>,
}

impl Stream {
    fn send(&self, kind: u8, payload: &[u8]) -> Result<()> {
        self.chan.lock().unwrap_or_else(|p| p.into_inner()).send(kind, payload)?;
        self.sent.fetch_add(payload.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl crate::images::FileSink for Stream {
    fn begin(&mut self, name: &str) -> Result<()> {
        self.send(FILE, name.as_bytes())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<()> {
        bytes.chunks(CHUNK).try_for_each(|c| self.send(DATA, c))
    }

    fn end(&mut self) -> Result<()> {
        self.send(END_FILE, &[])
    }
}

impl Client {
    pub fn connect(host: &str, port: u16, key: &[u8], restore: RemoteRestore) -> Result<Client> {
        let addr = (host, port)
            .to_socket_addrs()
            .ctx(|| format!("resolving {host}:{port}"))?
            .next()
            .ok_or_else(|| Error::Invalid(format!("{host}:{port}: no address")))?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ctx(|| format!("connecting to {addr}"))?;
        let mut chan = handshake(stream, key, false)?;
        let hello = serde_json::to_vec(&restore).map_err(|e| Error::Invalid(e.to_string()))?;
        chan.send(HELLO, &hello)?;
        Ok(Client { chan: Arc::new(Mutex::new(chan)), streamed: Arc::default() })
    }

    fn chan(&self) -> std::sync::MutexGuard<'_, Channel> {
        self.chan.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Transport for Client {
    fn stream(&mut self) -> Option<Box<dyn crate::images::FileSink>> {
        Some(Box::new(Stream { chan: self.chan.clone(), sent: self.streamed.clone() }))
    }

    fn streamed(&self) -> u64 {
        self.streamed.load(Ordering::Relaxed)
    }

    fn check(&mut self) -> Result<()> {
        let mut chan = self.chan();
        chan.send(CHECK, &[])?;
        chan.answer().map(|_| ())
    }

    fn restore(&mut self) -> Result<Restored> {
        let mut chan = self.chan();
        chan.send(RESTORE, &[])?;
        let answer = chan.answer()?;
        serde_json::from_slice(&answer).map_err(|e| Error::Invalid(format!("{}: bad answer to restore: {e}", chan.peer)))
    }

    fn abort(&mut self) {
        let _ = self.chan().writer.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

pub struct ServeOptions {
    pub listen: String,
    pub key: PathBuf,
    pub dir: PathBuf,
}

/// `crust serve`: accept migrations, one process per connection.
pub fn serve(opts: &ServeOptions) -> Result<()> {
    let key = read_key(&opts.key)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.dir)
        .ctx(|| format!("creating {}", opts.dir.display()))?;
    let listener = TcpListener::bind(&opts.listen).ctx(|| format!("listening on {}", opts.listen))?;
    log::warn!("crust serve: listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    // Sessions of handlers that died without cleaning up (killed mid-transfer).
    for e in std::fs::read_dir(&opts.dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("session-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    listener.set_nonblocking(true).ctx(|| "setting the listener non-blocking")?;
    loop {
        reap_handlers(&opts.dir);
        let stream = match listener.accept() {
            Ok((s, _)) => s,
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
            Ok(nix::unistd::ForkResult::Parent { .. }) => {}
            Err(e) => log::error!("crust serve: fork: {e}"),
        }
    }
}

/// Reap finished connection handlers and remove whatever session directory a
/// handler could not remove itself (it was killed, say).
fn reap_handlers(workdir: &Path) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        match status.pid() {
            Some(pid) if !matches!(status, WaitStatus::StillAlive) => {
                let _ = std::fs::remove_dir_all(workdir.join(format!("session-{pid}")));
            }
            _ => break,
        }
    }
}

fn handle(stream: TcpStream, key: &[u8], workdir: &Path) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut chan = match handshake(stream, key, true) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("crust serve: refused a connection: {e}");
            return;
        }
    };
    let session = workdir.join(format!("session-{}", std::process::id()));
    let result = std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&session)
        .ctx(|| format!("creating {}", session.display()))
        .and_then(|_| receive(&mut chan, &session));
    if let Err(e) = result {
        log::warn!("crust serve: migration from {peer} ended: {e}");
        let _ = chan.send(ERR, e.to_string().as_bytes());
    }
    let _ = std::fs::remove_dir_all(&session);
}

fn receive(chan: &mut Channel, session: &Path) -> Result<()> {
    let mut restore = RemoteRestore::default();
    let mut file: Option<BufWriter<File>> = None;
    loop {
        let (kind, payload) = chan.recv()?;
        match kind {
            HELLO => restore = serde_json::from_slice(&payload).map_err(|e| Error::Invalid(format!("bad hello: {e}")))?,
            FILE => {
                let name = String::from_utf8_lossy(&payload).into_owned();
                if !safe_name(&name) {
                    return Err(Error::Invalid(format!("refusing a file named {name:?}")));
                }
                let path = session.join(&name);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .ctx(|| format!("creating {}", path.display()))?;
                file = Some(BufWriter::with_capacity(CHUNK, f));
            }
            DATA => {
                let f = file.as_mut().ok_or_else(|| Error::Invalid("data outside a file".into()))?;
                f.write_all(&payload).ctx(|| "writing a received image")?;
            }
            END_FILE => {
                let mut f = file.take().ok_or_else(|| Error::Invalid("end of no file".into()))?;
                f.flush().ctx(|| "writing a received image")?;
            }
            CHECK => {
                let opts = restore_options(&restore, session)?;
                let img = crate::restore::load::load(session)?;
                let problems = crate::restore::check::problems(&img, &opts);
                if problems.is_empty() {
                    chan.send(OK, &[])?;
                } else {
                    chan.send(ERR, format!("the destination cannot restore the tree:\n  {}", problems.join("\n  ")).as_bytes())?;
                }
            }
            RESTORE => {
                let opts = restore_options(&restore, session)?;
                let restored = crate::restore::restore(&opts)?;
                let answer = Restored { root: restored.root, stats: restored.stats };
                let text = serde_json::to_vec(&answer).map_err(|e| Error::Invalid(e.to_string()))?;
                if let Err(e) = chan.send(OK, &text) {
                    // The source cannot learn that the tree runs here, so it
                    // resumes it there: this copy must not run on as well.
                    kill_tree(answer.root);
                    return Err(e);
                }
                log::warn!("crust serve: restored a tree, root pid {}", answer.root);
                return Ok(());
            }
            k => return Err(Error::Invalid(format!("unexpected frame kind {k}"))),
        }
    }
}

/// SIGKILL a process and all its descendants, parents first (so none forks).
fn kill_tree(root: i32) {
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        // Stopped first, so that its children can still be listed.
        // SAFETY: plain kills of a tree this agent just restored.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            queue.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn restore_options(r: &RemoteRestore, dir: &Path) -> Result<crate::restore::RestoreOptions> {
    let manage_cgroups = if r.manage_cgroups.is_empty() { "soft" } else { r.manage_cgroups.as_str() };
    Ok(crate::restore::RestoreOptions {
        dir: dir.to_path_buf(),
        shell_job: r.shell_job,
        pid_wait: Duration::from_secs(2),
        manage_cgroups: manage_cgroups.parse().map_err(Error::Invalid)?,
        cgroup_roots: r.cgroup_roots.iter().map(|c| c.parse()).collect::<std::result::Result<_, _>>().map_err(Error::Invalid)?,
    })
}
