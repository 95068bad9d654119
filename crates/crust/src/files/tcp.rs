//! Established TCP connections of a dumped tree: found once the tree is
//! frozen, refused by name unless the dump was asked to take them
//! (`--tcp-established`, or `--tcp-close` to restore them closed), held
//! behind the network lock ([`crate::netlock`]) while their state is read
//! ([`tcp_repair`]), written as CRIU's tcp-stream-<inode>.img beside their
//! inet_sk_entry, and made again by the restore.
//!
//! Lifetime of what a dump holds ([`Connections`]):
//! - the lock is put in place before the first connection is read;
//! - each socket is in repair mode only while it is read; crust keeps its
//!   own copy of it;
//! - a dump that kills the tree puts every socket back in repair mode first
//!   ([`Connections::kill_silently`]), so that their last close sends
//!   neither FIN nor RST, and keeps the lock for the restore;
//! - a dump that fails or lets the tree run on drops them: the lock goes,
//!   then each socket sends its peer a window probe (restarting what the
//!   lock stalled);
//! - a crust killed half-way leaves the sockets as they were (out of repair
//!   mode) and the lock, which `crust network-unlock` removes; but a worker
//!   killed by SIGKILL in the moment it reads a socket leaves that one in
//!   repair mode (as it leaves a thread it runs calls in): nothing can undo it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::socket::{getsockopt, sockopt};

use super::tcp_repair::{self, Stream};
use super::{write_with_data, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_with_data, DumpImage};
use crate::images::proto::{InetSkEntry, TcpStreamEntry};
use crate::images::{ImageDir, Kind};
use crate::netlock::{self, Lock};

/// What a dump does with the established TCP connections it meets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Refuse them, naming each (criu without options).
    #[default]
    Refuse,
    /// Save them with TCP_REPAIR behind a network lock (`--tcp-established`).
    Established,
    /// Save them as sockets only, to be restored closed (`--tcp-close`).
    Close,
}

/// TCP states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
const TCP_CLOSE: u32 = 7;

/// A TCP socket of the tree with a peer, as /proc/net/tcp{,6} lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub pid: i32,
    pub fd: i32,
    pub ino: u64,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub state: u32,
}

impl Conn {
    pub fn who(&self) -> String {
        format!("process {}: fd {} (socket:[{}])", self.pid, self.fd, self.ino)
    }
}

fn state_name(s: u32) -> &'static str {
    const NAMES: [&str; 13] = [
        "?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN",
        "CLOSING", "NEW_SYN_RECV",
    ];
    NAMES.get(s as usize).copied().unwrap_or("?")
}

/// An address of /proc/net/tcp: the address's 32-bit words as the kernel
/// holds them (network order), each printed as a host-order hex number.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8).map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16)).collect::<std::result::Result<_, _>>().ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Every TCP socket with a peer (not listening, not closed) that the
/// processes `pids` hold, each once (at its first fd). Read from /proc
/// without touching the sockets.
/// A /proc/net table, read in large pieces: each read walks the kernel's
/// table again from where the last one stopped, so small ones cost more.
fn read_table(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(1 << 20);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

pub fn connections(pids: &[i32]) -> Result<Vec<Conn>> {
    let mut by_ino: HashMap<u64, (i32, i32)> = HashMap::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let mut fds: Vec<(i32, u64)> = dir
            .filter_map(|e| {
                let e = e.ok()?;
                let fd = e.file_name().to_str()?.parse().ok()?;
                let link = std::fs::read_link(e.path()).ok()?;
                let ino = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()?;
                Some((fd, ino))
            })
            .collect();
        fds.sort_unstable();
        for (fd, ino) in fds {
            by_ino.entry(ino).or_insert((pid, fd));
        }
    }
    let mut out = Vec::new();
    // Reading the tables walks the host's whole TCP hash (milliseconds a
    // read here): not for a tree without sockets.
    if by_ino.is_empty() {
        return Ok(out);
    }
    // Every process of the tree is in one network namespace (the dump
    // refuses others), crust's or its own: /proc/PID/net shows PID's.
    let netpid = by_ino.values().map(|&(pid, _)| pid).min().unwrap_or(0);
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{netpid}/net/{table}");
        let text = match read_table(&path) {
            // No IPv6 on this host: no tcp6 table.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            r => r.ctx(|| format!("reading {path}"))?,
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(peer), Some(state), Some(ino)) = (f.get(1), f.get(2), f.get(3), f.get(9)) else { continue };
            let Ok(ino) = ino.parse::<u64>() else { continue };
            let Some(&(pid, fd)) = by_ino.get(&ino) else { continue };
            let state = u32::from_str_radix(state, 16).unwrap_or(0);
            if matches!(state, TCP_LISTEN | TCP_CLOSE) {
                continue;
            }
            let (Some(local), Some(peer)) = (parse_addr(local), parse_addr(peer)) else {
                return Err(Error::io_other(format!("reading {path}"), format!("a line crust cannot read: {line}")));
            };
            out.push(Conn { pid, fd, ino, local, peer, state });
        }
    }
    out.sort_by_key(|c| (c.pid, c.fd));
    Ok(out)
}

/// A socket read, kept open by crust until the tree is killed or let go.
struct Held {
    sock: OwnedFd,
    reuseaddr: bool,
    who: String,
}

/// The connections of a dump: the lock holding them, the sockets read, and
/// their streams for the images, by inode.
#[derive(Default)]
pub struct Connections {
    mode: Mode,
    /// Why a refused connection could not be taken (a migration cannot).
    refusal: &'static str,
    met: Vec<Conn>,
    lock: Option<Lock>,
    held: Vec<Held>,
    streams: Vec<(u32, Stream)>,
    /// `--skip-in-flight`: connections in a listener's accept queue (or
    /// being set up) are left out instead of refused.
    pub skip_in_flight: bool,
}

impl Connections {
    /// The connections of the frozen processes `pids`: refused (the first
    /// named) in `Mode::Refuse`, `refusal` saying what to do; in
    /// `Mode::Established`, held by a network lock from now on (`note` says
    /// in it what it is for). States other than ESTABLISHED are refused.
    pub fn prepare(pids: &[i32], mode: Mode, refusal: &'static str, note: &str) -> Result<Connections> {
        let met = connections(pids)?;
        if let Some(c) = met.iter().find(|c| c.state != TCP_ESTABLISHED) {
            return Err(Error::unsupported(
                c.who(),
                format!("a TCP connection {} -> {} in state {} is not supported yet", c.local, c.peer, state_name(c.state)),
            ));
        }
        if let (Mode::Refuse, Some(c)) = (mode, met.first()) {
            return Err(refuse(c, refusal));
        }
        let lock = match mode {
            Mode::Established if !met.is_empty() => {
                let conns: Vec<netlock::Conn> = met.iter().map(|c| (c.local, c.peer)).collect();
                Some(Lock::install(&conns, note)?)
            }
            _ => None,
        };
        Ok(Connections { mode, refusal, met, lock, held: Vec::new(), streams: Vec::new(), skip_in_flight: false })
    }

    /// The lock in place, if any.
    pub fn lock_name(&self) -> Option<&str> {
        self.lock.as_ref().map(Lock::name)
    }

    /// Is the socket of `fd` one of the tree's established connections?
    pub fn established(&self, fd: &OpenFd) -> Option<&Conn> {
        self.met.iter().find(|c| c.ino == fd.stat.st_ino)
    }

    /// Save the connection of `fd` (crust's copy `sock`), met while dumping
    /// the files: its stream for tcp-stream-<ino>.img (`Mode::Established`),
    /// nothing more (`Mode::Close`).
    pub fn dump(&mut self, fd: &OpenFd, sock: &OwnedFd) -> Result<()> {
        let Some(conn) = self.established(fd).cloned() else {
            // Established after the tree froze (a connection completing in
            // the kernel): not behind the lock.
            return Err(fd.unsupported("a TCP connection established while the tree was frozen is"));
        };
        match self.mode {
            Mode::Refuse => Err(refuse(&conn, self.refusal)),
            Mode::Close => Ok(()),
            Mode::Established => {
                let who = format!("{} {} -> {}", conn.who(), conn.local, conn.peer);
                let copy = sock.try_clone().ctx(|| format!("keeping {who}"))?;
                let reuseaddr = getsockopt(&copy, sockopt::ReuseAddr).ctx(|| format!("reading SO_REUSEADDR of {who}"))?;
                // Held before it is read: whatever happens next, it is let go as it should.
                self.held.push(Held { sock: copy, reuseaddr, who: who.clone() });
                let stream = tcp_repair::read(sock.as_fd(), &who)?;
                self.streams.push((fd.stat.st_ino as u32, stream));
                Ok(())
            }
        }
    }

    /// tcp-stream-<ino>.img of each connection read.
    pub fn write(&self, dir: &mut ImageDir) -> Result<u64> {
        let mut bytes = 0;
        for (ino, s) in &self.streams {
            let data = [s.inq.as_slice(), s.outq.as_slice()].concat();
            bytes += write_with_data(dir, &Kind::TcpStream.file_name(*ino as u64), Kind::TcpStream, &[(s.entry, data)])?;
        }
        Ok(bytes)
    }

    /// The tree dies (`kill`) with its connections silent: each socket back
    /// in repair mode first, so that its last close sends neither FIN nor
    /// RST. The lock stays, for the restore; its name is returned.
    pub fn kill_silently(mut self, kill: impl FnOnce()) -> Option<String> {
        for h in &self.held {
            if let Err(e) = tcp_repair::enter(h.sock.as_fd(), &|| h.who.clone()) {
                // Its close may then send a FIN or RST, which the lock drops.
                log::warn!("{e}");
            }
        }
        kill();
        self.held.clear();
        self.lock.take().map(Lock::keep)
    }

    /// [`Connections::kill_silently`], and the lock goes too: the
    /// connections live on elsewhere (a migration), not in a later restore.
    pub fn kill_and_unlock(mut self, kill: impl FnOnce()) {
        let lock = self.lock.take();
        self.kill_silently(kill);
        drop(lock);
    }
}

impl Drop for Connections {
    /// The tree goes on (or the dump failed): the lock goes, then each
    /// socket probes its peer's window, restarting what the lock stalled.
    fn drop(&mut self) {
        drop(self.lock.take());
        for h in self.held.drain(..) {
            let probe = tcp_repair::enter(h.sock.as_fd(), &|| h.who.clone())
                .and_then(|()| tcp_repair::leave(h.sock.as_fd(), true, h.reuseaddr, &|| h.who.clone()));
            if let Err(e) = probe {
                log::warn!("{e}");
            }
        }
    }
}

fn refuse(c: &Conn, refusal: &str) -> Error {
    Error::unsupported(c.who(), format!("an established TCP connection {} -> {}: {refusal}", c.local, c.peer))
}

/// What a dump without options says of a connection.
pub const DUMP_REFUSAL: &str = "dump it with --tcp-established (or --tcp-close to restore it closed)";
/// What a migration without options says of one.
pub const MIGRATE_REFUSAL: &str = "migrate it with --tcp-established (or --tcp-close to restore it closed)";

/// The streams of the images (tcp-stream-<ino>.img), by socket inode.
#[derive(Default)]
pub struct Streams {
    by_ino: HashMap<u32, Stream>,
}

/// How the restore was asked to bring connections back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreMode(pub Mode);

/// The established TCP sockets of the images.
fn established_entries(img: &DumpImage) -> impl Iterator<Item = &InetSkEntry> {
    img.files.values().filter_map(|f| f.isk.as_ref()).filter(|e| e.proto == libc::IPPROTO_TCP as u32 && e.state == TCP_ESTABLISHED)
}

/// Hold, on this host, the established connections of `img` (a network
/// lock named in `note`), before their address moves here and until their
/// sockets are made again: a packet of theirs arriving meanwhile would meet
/// no socket and be answered with a reset. None if the images hold none.
pub fn lock_images(img: &DumpImage, note: &str) -> Result<Option<Lock>> {
    let mut conns = Vec::new();
    for e in established_entries(img) {
        let local = super::inet::addr(e.family, &e.src_addr, e.src_port);
        let peer = super::inet::addr(e.family, &e.dst_addr, e.dst_port);
        let (Some(local), Some(peer)) = (local, peer) else {
            return Err(Error::Invalid(format!("established TCP connection (socket {}): an address the image cannot hold", e.ino)));
        };
        conns.push((local, peer));
    }
    if conns.is_empty() {
        return Ok(None);
    }
    Lock::install(&conns, note).map(Some)
}

/// Read tcp-stream-<ino>.img of every established socket of the images
/// that has one (a dump with --tcp-close writes none).
pub fn load(img: &mut DumpImage) -> Result<()> {
    let mut by_ino = HashMap::new();
    for e in established_entries(img) {
        let path = img.dir.join(Kind::TcpStream.file_name(e.ino as u64));
        let len = |t: &TcpStreamEntry| t.inq_len as u64 + t.outq_len as u64;
        let mut entries = read_with_data::<TcpStreamEntry>(&path, Kind::TcpStream, len)?;
        if entries.is_empty() {
            continue;
        }
        if entries.len() > 1 {
            return Err(Error::image(&path, "more than one entry"));
        }
        let (entry, mut data) = entries.remove(0);
        let outq = data.split_off(entry.inq_len as usize);
        let stream = Stream { entry, inq: data, outq };
        tcp_repair::check(&stream).map_err(|what| Error::image(&path, what))?;
        by_ino.insert(e.ino, stream);
    }
    img.extras.insert(Streams { by_ino });
    Ok(())
}

/// What stands in the way of restoring the connections of `img` with `mode`.
pub fn problems(img: &DumpImage, mode: Mode) -> Vec<String> {
    let streams = img.extras.get::<Streams>();
    let mut out = Vec::new();
    for e in established_entries(img) {
        let has_stream = streams.is_some_and(|s| s.by_ino.contains_key(&e.ino));
        let what = match mode {
            Mode::Refuse => "restoring it needs --tcp-established (or --tcp-close to restore it closed)",
            Mode::Established if !has_stream => "its state was not dumped (a dump with --tcp-close): restore it with --tcp-close",
            _ => continue,
        };
        out.push(format!("established TCP connection (socket {}): {what}", e.ino));
    }
    out
}

/// Make crust's copy `sock` of a new socket into the established connection
/// of `e` (Mode::Established), or leave it a fresh unconnected socket, as
/// criu's --tcp-close does (reads fail with ENOTCONN, writes with EPIPE).
/// `local`/`peer` are the entry's addresses.
pub fn restore(img: &DumpImage, e: &InetSkEntry, sock: &OwnedFd, local: SocketAddr, peer: SocketAddr) -> Result<()> {
    let mode = img.extras.get::<RestoreMode>().copied().unwrap_or_default().0;
    let streams = super::loaded::<Streams>(img, &Kind::TcpStream.file_name(e.ino as u64))?;
    match (mode, streams.by_ino.get(&e.ino)) {
        (Mode::Close, _) => Ok(()),
        (Mode::Established, Some(stream)) => {
            tcp_repair::write(sock.as_fd(), local, peer, stream, e.opts.reuseaddr.unwrap_or(false))
        }
        _ => Err(Error::Invalid(format!("established TCP connection {local} -> {peer} (socket {}): {}", e.ino, problems(img, mode).join("; ")))),
    }
}
