//! Unix sockets, stream, datagram or seqpacket: connected pairs with both
//! ends in the tree (socketpair, or what a fork or an accept left of one),
//! sockets bound to a path or an abstract name, listening sockets with the
//! connections waiting in their accept queue, datagram sockets connected to
//! a named one, half-closed sockets, and the bytes and messages queued in
//! each (messages keep their bounds), with the peek offset over them. With `--ext-unix-sk`, a datagram socket
//! connected to a named socket outside the tree (a logger's /dev/log) is
//! connected to that name again at restore; criu's image records such a peer
//! as an entry of its own, with no fd, flagged external.
//!
//! A path socket is bound again at its path. The socket file found there at
//! restore is, as criu does, unlinked first when no live socket owns it (a
//! stale file left by the dumped socket); a live socket or another kind of
//! file there stops the restore. Sockets whose file was deleted or replaced
//! since they were bound, and names relative to a directory, are refused.
//!
//! An accepted connection carries its listener's name: as criu does, it is
//! not bound again (the name is the listener's, which holds it).
//!
//! Connections waiting to be accepted are connected again as their clients
//! are made, in the order of the files (criu's image keeps no accept order);
//! bytes a client sent on one are refused, as criu does: they wait in a
//! socket no fd reaches, which only accept() could read, and a dump must
//! leave the tree as it was.

mod diag;
mod queue;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};

use super::{fown_of, take_fd, write_with_data, FdRestorer, FileKind, FileTable, OpenFd, KINDS};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_with_data, DumpImage};
use crate::images::proto::{FdTypes, FileEntry, FilePermsEntry, ScmEntry, SkPacketEntry, UnixSkEntry};
use crate::images::{ImageDir, Kind};
use diag::{diag, held_by, holder, show_name, Diag, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};
use queue::MAX_QUEUE;

pub struct UnixSocket;

/// criu's flag (uflags) of an entry that stands for a peer outside the tree.
const USK_EXTERN: u32 = 1;

const STREAM: u32 = libc::SOCK_STREAM as u32;
const DGRAM: u32 = libc::SOCK_DGRAM as u32;
const SEQPACKET: u32 = libc::SOCK_SEQPACKET as u32;

/// What a dump keeps for sk-queues.img, and the outside peers it wrote an
/// entry for (by inode).
#[derive(Default)]
struct Dumped {
    queues: Vec<(SkPacketEntry, Vec<u8>)>,
    externs: HashSet<u32>,
    /// crust's copies of the files in flight, kept open until the dump ends:
    /// fds of the tree are matched to them by kcmp, and a number closed
    /// early could be reused by another file.
    in_flight: Vec<OwnedFd>,
    /// The sockets dumped as files in flight, by inode.
    flying: HashSet<u32>,
    /// The sockets being dumped (a socket in flight in its own queue, or in
    /// a loop of them, would be dumped without end).
    dumping: HashSet<u32>,
    /// Peers no process holds, which must turn up in flight in the tree's
    /// queues: (inode, the fd whose peer it is).
    peers_in_flight: Vec<(u32, String)>,
    /// The socket files (inode, device as the kernel encodes it) of the
    /// path sockets saved, which the restore binds again.
    rebound: HashSet<(u64, u64)>,
}

/// criu's scm_entry type of fds in flight.
const SCM_RIGHTS: u32 = libc::SCM_RIGHTS as u32;

/// One item queued on a socket: its bytes, and the file ids of the fds in
/// flight with them.
struct Packet {
    data: Vec<u8>,
    rights: Vec<u32>,
}

/// The socket files the restore makes again by binding the tree's sockets
/// (inode, device as the kernel encodes it): a tmpfs's saved contents need
/// not hold them.
pub fn rebound_files(table: &FileTable) -> HashSet<(u64, u64)> {
    table.extras.get::<Dumped>().map(|d| d.rebound.clone()).unwrap_or_default()
}

/// What was queued on sockets at dump time, by the file id of the receiving
/// end: one item per message (stream bytes may come in several).
#[derive(Default)]
struct Queues(HashMap<u32, Vec<Packet>>);

/// How a restore remembers the sockets it made, by inode.
const MADE: &str = "unix socket";

impl FileKind for UnixSocket {
    fn name(&self) -> &'static str {
        "unix socket"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Unixsk
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        // Asked by inode: taking a socket into crust would touch it (its net_cls
        // and net_prio marks become crust's), and a dump must not.
        fd.link.starts_with("socket:[") && matches!(diag(fd.pid, fd.stat.st_ino as u32), Ok(Some(_)))
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let ino = fd.stat.st_ino as u32;
        let d = diag(fd.pid, ino)?.ok_or_else(|| fd.unsupported("unix sockets of another network namespace than their process's are"))?;
        let sock = fd.take()?;
        let what = || format!("reading socket options of fd {} of process {}", fd.fd, fd.pid);
        let ty = d.ty as u32;
        if ![STREAM, DGRAM, SEQPACKET].contains(&ty) {
            return Err(fd.unsupported(&format!("unix sockets of type {ty} are")));
        }
        if ![TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN].contains(&d.state) {
            return Err(fd.unsupported(&format!("unix sockets in state {} are", d.state)));
        }
        let name = d.name.clone().unwrap_or_default();
        let file_perms = if binds(ty, d.state as u32, &name) && name[0] != 0 { Some(socket_file(fd, &name, &d)?) } else { None };
        if let (Some(_), Some((ino, dev))) = (&file_perms, d.vfs) {
            table.extras.get_mut::<Dumped>().rebound.insert((ino as u64, dev as u64));
        }
        // Kept in a field of crust's own (CRIU's image has none), set again
        // once the queue is refilled.
        let peek_off = getsockopt(sock, PeekOff).ctx(what)?;
        let passcred = getsockopt(sock, sockopt::PassCred).ctx(what)?;
        let passsec = getsockopt(sock, super::sockopts::PassSec).ctx(what)?;
        let peer = peer_of(fd, table, &d)?;
        if d.state == TCP_LISTEN {
            for &client in &d.icons {
                waiting_client(fd, &table.tree, client)?;
            }
        }
        let id = table.new_id();
        let mut queued: Vec<(Vec<u8>, Vec<OwnedFd>)> = Vec::new();
        if d.state != TCP_LISTEN && ty == STREAM {
            if d.rqueue != 0 {
                if passcred || passsec {
                    return Err(fd.unsupported("unix sockets receiving credentials (SO_PASSCRED, SO_PASSSEC) with bytes queued are"));
                }
                queued.extend(queue::peek_stream(fd, sock, peek_off)?.into_iter().map(|c| (c.data, c.fds)));
            }
        } else if d.state != TCP_LISTEN {
            let messages = queue::peek_messages(fd, sock, peek_off)?;
            if !messages.is_empty() {
                // Each message carries its sender's credentials, which criu's image has no place for.
                if passcred || passsec {
                    return Err(fd.unsupported("messages queued on a unix socket receiving credentials (SO_PASSCRED, SO_PASSSEC) are"));
                }
                if peer != 0 && table.extras.get_mut::<Dumped>().externs.contains(&peer) {
                    return Err(fd.unsupported("messages queued on a unix socket from its peer outside the tree are"));
                }
                if peer == 0 && name.is_empty() {
                    return Err(fd.unsupported("messages queued on an unnamed, unconnected unix socket are"));
                }
            }
            for m in messages {
                // A connected socket hears only its peer; an unconnected one's
                // senders are sent from an unnamed socket again: criu's image
                // keeps no sender's name.
                if peer == 0 && !m.sender.is_empty() {
                    let from = show_name(&m.sender);
                    return Err(fd.unsupported(&format!("datagrams queued from the named socket {from} (criu's image keeps no sender name) are")));
                }
                queued.push((m.data, m.fds));
            }
        }
        table.extras.get_mut::<Dumped>().dumping.insert(ino);
        for (data, fds) in queued {
            let rights = in_flight(fd, table, fds)?;
            let scm = if rights.is_empty() { Vec::new() } else { vec![ScmEntry { r#type: SCM_RIGHTS, rights }] };
            let entry = SkPacketEntry { id_for: id, length: data.len() as u32, scm, ..Default::default() };
            table.extras.get_mut::<Dumped>().queues.push((entry, data));
        }
        table.extras.get_mut::<Dumped>().dumping.remove(&ino);
        let mut opts = super::sockopts::read(sock).ctx(what)?;
        opts.crust_peek_off = (peek_off != -1).then_some(peek_off);
        let entry = UnixSkEntry {
            id,
            ino,
            r#type: ty,
            state: d.state as u32,
            flags: fd.flags,
            uflags: 0,
            backlog: if d.state == TCP_LISTEN { d.wqueue } else { 0 },
            peer,
            fown: fown_of(fd, table)?,
            opts,
            name,
            // RCV_SHUTDOWN and SEND_SHUTDOWN are sk_shutdown's READ and WRITE.
            shutdown: (d.shutdown != 0).then_some(d.shutdown as i32 & 3),
            file_perms,
            ..Default::default()
        };
        Ok(FileEntry { r#type: FdTypes::Unixsk as i32, id, usk: Some(entry), ..Default::default() })
    }

    fn write_images(&self, table: &FileTable, dir: &mut ImageDir) -> Result<u64> {
        let Some(dumped) = table.extras.get::<Dumped>() else { return Ok(0) };
        if let Some((p, place)) = dumped.peers_in_flight.iter().find(|(p, _)| !dumped.flying.contains(p)) {
            let what = format!("its peer, unix socket {p}, is held by no process and is not in flight in the tree's queues: not supported");
            return Err(Error::unsupported(place.clone(), what));
        }
        write_with_data(dir, "sk-queues.img", Kind::SkQueues, &dumped.queues)
    }

    /// sk-queues.img; and every socket's peer must be a socket of files.img.
    fn load_images(&self, img: &mut DumpImage) -> Result<()> {
        let socks: HashSet<u32> = img.files.values().filter_map(|f| f.usk.as_ref()).map(|u| u.ino).collect();
        for u in img.files.values().filter_map(|f| f.usk.as_ref()) {
            if u.peer != 0 && !socks.contains(&u.peer) {
                let what = format!("unix socket {}: its peer {} is not a socket of the images", u.ino, u.peer);
                return Err(Error::image(img.dir.join("files.img"), what));
            }
        }
        let path = img.dir.join("sk-queues.img");
        let mut queues: HashMap<u32, Vec<Packet>> = HashMap::new();
        let mut sizes: HashMap<u32, usize> = HashMap::new();
        for (e, data) in read_with_data::<SkPacketEntry>(&path, Kind::SkQueues, |e| e.length as u64)? {
            let size = sizes.entry(e.id_for).or_default();
            *size += data.len();
            if *size > MAX_QUEUE {
                let what = format!("file {}: more than {MAX_QUEUE} bytes queued, more than a socket can hold", e.id_for);
                return Err(Error::Image { file: path, offset: 0, what });
            }
            let mut rights = Vec::new();
            for scm in &e.scm {
                if scm.r#type != SCM_RIGHTS {
                    let what = format!("file {}: control messages of type {} queued (crust sends fds, SCM_RIGHTS, again)", e.id_for, scm.r#type);
                    return Err(Error::Image { file: path, offset: 0, what });
                }
                if let Some(bad) = scm.rights.iter().find(|id| !img.files.contains_key(id)) {
                    let what = format!("file {}: file {bad} in flight is not in files.img", e.id_for);
                    return Err(Error::Image { file: path, offset: 0, what });
                }
                rights.extend_from_slice(&scm.rights);
            }
            queues.entry(e.id_for).or_default().push(Packet { data, rights });
        }
        img.extras.insert(Queues(queues));
        Ok(())
    }

    /// A pair's ends, a listener and its clients, a named socket and those
    /// connected to it may be held by different processes; the entry alone
    /// does not tell which of them go together, so all sockets that are
    /// connected or named are one object: the root makes them all if two
    /// processes hold any. A plain socket is its own.
    fn shared_object(&self, file: &FileEntry) -> Option<u64> {
        file.usk.as_ref().map(|u| if u.peer == 0 && u.name.is_empty() { u.ino as u64 } else { 0 })
    }

    fn check(&self, file: &FileEntry, img: &DumpImage) -> Option<String> {
        let u = file.usk.as_ref()?;
        if u.uflags & USK_EXTERN != 0 {
            // The peer outside the tree that sockets are to be connected to again.
            return match live_at(&u.name) {
                Ok(true) => None,
                Ok(false) => Some(format!("no socket is bound at {}, the peer outside the tree of a unix socket to connect again", show_name(&u.name))),
                Err(e) => Some(format!("looking for the peer outside the tree at {}: {e}", show_name(&u.name))),
            };
        }
        if !binds(u.r#type, u.state, &u.name) {
            return None;
        }
        // Abstract names are the network namespace's: one of the tree's
        // own is made new, with no socket in it.
        if u.name[0] == 0 && crate::ns::is_own(img, "net") {
            return None;
        }
        if u.name[0] == 0 {
            return match live_at(&u.name) {
                Ok(false) => None,
                Ok(true) => Some(format!("unix socket {} is to be bound at {}, but a live socket is bound there", u.ino, show_name(&u.name))),
                Err(e) => Some(format!("unix socket {} is to be bound at {}: {e}", u.ino, show_name(&u.name))),
            };
        }
        let path = show_name(&u.name);
        match path_taken(std::path::Path::new(&path)) {
            Ok(None) => None,
            Ok(Some(why)) => Some(format!("unix socket {} is to be bound at {path}, but {why}", u.ino)),
            Err(e) => Some(format!("unix socket {} is to be bound at {path}: {e}", u.ino)),
        }
    }

    fn restore(&self, file: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let u = entry(file)?;
        let fd = match r.made(MADE, u.ino as u64) {
            // Made with its peer.
            Some(fd) => fd,
            None => make(file, u, r)?,
        };
        let status = u.flags & libc::O_NONBLOCK as u32;
        if status != 0 {
            r.task.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, status as u64, 0, 0, 0])?;
        }
        Ok(fd)
    }
}

/// Entries for sk-queues.img from another kind of socket (a UDP socket's
/// datagrams, files/inet_queue.rs): the image holds every socket's queue.
pub(super) fn add_queued(table: &mut FileTable, entries: Vec<(SkPacketEntry, Vec<u8>)>) {
    table.extras.get_mut::<Dumped>().queues.extend(entries);
}

/// Dump the files in flight with a queued item (crust's copies, from the
/// peek) as files of the tree, and keep the copies open until the dump
/// ends; their file ids, in order. A file also open in the tree is found by
/// kcmp, as any shared description, and keeps its id. Regular files (seen
/// from crust's mount namespace: not when the tree has its own), pipes and
/// unix sockets are taken; any other kind is refused by name.
fn in_flight(fd: &OpenFd, table: &mut FileTable, fds: Vec<OwnedFd>) -> Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let mut ids = Vec::new();
    for f in fds {
        let file = OpenFd::read(crust(), f.as_raw_fd())?;
        let kind = KINDS.iter().find(|k| k.matches(&file)).map(|k| k.name());
        let refuse = |what: &str| Err(fd.unsupported(&format!("fds in flight (SCM_RIGHTS) on it {what} ({}) are", file.link)));
        match kind {
            Some("regular file") if table.view.is_some() => return refuse("of regular files, the tree having a mount namespace of its own"),
            Some("regular file" | "pipe") => {}
            Some("unix socket") if table.extras.get_mut::<Dumped>().dumping.contains(&(file.stat.st_ino as u32)) => {
                return refuse("of a unix socket being dumped (in flight in its own queue, or in a loop)")
            }
            Some("unix socket") => {
                table.extras.get_mut::<Dumped>().flying.insert(file.stat.st_ino as u32);
            }
            Some(other) => return refuse(&format!("of the kind {other}")),
            None => return refuse("of an unknown kind"),
        }
        // Named as a file in flight on the task's socket: its own place is crust's.
        let id = table.dump_fd(&file).map_err(|e| Error::unsupported(place(fd), format!("fds in flight (SCM_RIGHTS) on it, {}: {e}", file.link)))?.id;
        ids.push(id);
        table.extras.get_mut::<Dumped>().in_flight.push(f);
    }
    Ok(ids)
}

/// The files in flight in the images' queues: made in the root, before
/// anything forks, so that the process whose socket queues one and the
/// processes that hold it share it.
pub(super) fn in_flight_ids(img: &DumpImage) -> Vec<u32> {
    let Some(q) = img.extras.get::<Queues>() else { return Vec::new() };
    q.0.values().flatten().flat_map(|p| p.rights.iter().copied()).collect()
}

/// Is a socket of this type, state and name bound to its name by itself?
/// An accepted connection carries its listener's name, and is not.
fn binds(ty: u32, state: u32, name: &[u8]) -> bool {
    let accepted = ty != DGRAM && state == TCP_ESTABLISHED as u32;
    !name.is_empty() && !accepted
}

fn place(fd: &OpenFd) -> String {
    format!("process {}: fd {} ({})", fd.pid, fd.fd, fd.link)
}

/// ", held by process PID" if some process holds socket `ino`.
fn held(ino: u32) -> String {
    holder(ino).map(|pid| format!(", held by process {pid}")).unwrap_or_default()
}

/// The owner and mode of the socket file of a path name, which must still be
/// the one the socket made.
fn socket_file(fd: &OpenFd, name: &[u8], d: &Diag) -> Result<FilePermsEntry> {
    let path = show_name(name);
    if name[0] != b'/' {
        return Err(fd.unsupported(&format!("unix sockets bound at a relative path ({path}) are")));
    }
    // As the task sees the path.
    let seen = format!("/proc/{}/root{path}", fd.pid);
    let st = match nix::sys::stat::lstat(seen.as_str()) {
        Ok(st) => st,
        Err(nix::errno::Errno::ENOENT) => return Err(fd.unsupported(&format!("bound unix sockets whose file {path} was deleted are"))),
        Err(e) => return Err(e).ctx(|| format!("stat {seen}")),
    };
    let same = d.vfs.is_some_and(|(ino, dev)| {
        // The kernel's dev_t: major above 20 bits of minor.
        st.st_ino == ino as u64 && libc::major(st.st_dev) == dev >> 20 && libc::minor(st.st_dev) == dev & 0xfffff
    });
    if !same {
        return Err(fd.unsupported(&format!("bound unix sockets whose file {path} was replaced since they were bound are")));
    }
    Ok(FilePermsEntry { mode: st.st_mode, uid: st.st_uid, gid: st.st_gid })
}

/// The inode of the socket's peer for the image (0 if none). A connection
/// waiting to be accepted has no peer yet: its listener stands in, as in
/// criu's images. A peer outside the tree is refused, but for a datagram
/// socket connected to a named one under `--ext-unix-sk`.
fn peer_of(fd: &OpenFd, table: &mut FileTable, d: &Diag) -> Result<u32> {
    match d.peer {
        Some(p) if p != 0 => {
            let dumped = table.extras.get_mut::<Dumped>();
            if dumped.flying.contains(&p) || held_by(&table.tree, p) {
                return Ok(p);
            }
            // No process holds it (crust may, having peeked it): it may be
            // in flight in a queue of the tree not dumped yet.
            if holder(p).is_none_or(|h| h == crust()) {
                dumped.peers_in_flight.push((p, place(fd)));
                return Ok(p);
            }
            outside(fd, table, d, p)?;
            Ok(p)
        }
        Some(_) if d.ty as u32 == DGRAM => Err(fd.unsupported("datagram unix sockets connected to a socket since closed are")),
        _ if d.state == TCP_ESTABLISHED && d.ty as u32 != DGRAM => {
            let listener = diag::all(fd.pid, 1 << TCP_LISTEN)?.into_iter().find(|l| l.icons.contains(&d.ino));
            match listener {
                Some(l) => {
                    let name = show_name(l.name.as_deref().unwrap_or_default());
                    if d.wqueue != 0 {
                        // They wait in a socket no fd reaches: only accept() could read them.
                        return Err(fd.unsupported(&format!(
                            "bytes sent on a connection that {name} has not accepted yet are"
                        )));
                    }
                    if !held_by(&table.tree, l.ino) {
                        let what = format!("it waits to be accepted by unix socket {} ({name}{}), outside the dumped tree: not supported", l.ino, held(l.ino));
                        return Err(Error::unsupported(place(fd), what));
                    }
                    Ok(l.ino)
                }
                // Its peer closed: the kernel shut it down both ways.
                None if d.shutdown == 3 => Ok(0),
                None => Err(fd.unsupported("connected unix sockets whose peer is gone and that are not shut down are")),
            }
        }
        _ => Ok(0),
    }
}

/// A peer `p` outside the tree: an entry of its own under `--ext-unix-sk`,
/// or a refusal naming it and its holder.
fn outside(fd: &OpenFd, table: &mut FileTable, d: &Diag, p: u32) -> Result<()> {
    let pname = diag(fd.pid, p)?.and_then(|pd| pd.name).unwrap_or_default();
    let who = format!("unix socket {p} ({}{})", show_name(&pname), held(p));
    let refuse = |why: String| Err(Error::unsupported(place(fd), format!("its peer, {who}, is outside the dumped tree: {why}")));
    if d.ty as u32 != DGRAM {
        return refuse("a stream or seqpacket connection to outside the tree is not supported".into());
    }
    if pname.is_empty() {
        return refuse("it has no name to connect to again: not supported".into());
    }
    if !table.ext_unix_sk {
        return refuse(format!("not supported without --ext-unix-sk (which connects it to {} again at restore)", show_name(&pname)));
    }
    if table.extras.get_mut::<Dumped>().externs.insert(p) {
        let id = table.new_id();
        let usk = UnixSkEntry { id, ino: p, r#type: DGRAM, state: TCP_LISTEN as u32, uflags: USK_EXTERN, name: pname, ..Default::default() };
        table.files.push(FileEntry { r#type: FdTypes::Unixsk as i32, id, usk: Some(usk), ..Default::default() });
    }
    Ok(())
}

/// A connection waiting in a listener's accept queue: its client must be in
/// the tree, to be connected again at restore.
fn waiting_client(fd: &OpenFd, tree: &[i32], client: u32) -> Result<()> {
    if client == 0 {
        return Err(fd.unsupported("listening unix sockets with a connection waiting whose client was closed are"));
    }
    if !held_by(tree, client) {
        let what = format!("a connection waiting in its accept queue comes from unix socket {client}{}, outside the dumped tree: not supported", held(client));
        return Err(Error::unsupported(place(fd), what));
    }
    Ok(())
}

const LIVE: &str = "a live socket is bound there";

/// crust's pid: its network namespace is the host's.
fn crust() -> i32 {
    std::process::id() as i32
}

/// What stands in the way of binding a socket at `path`: None if nothing is
/// there, or a socket file no live socket owns (left by the dumped one).
fn path_taken(path: &std::path::Path) -> Result<Option<&'static str>> {
    let st = match nix::sys::stat::lstat(path) {
        Ok(st) => st,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("stat {}", path.display())),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Ok(Some("a file that is not a socket is there"));
    }
    let live = diag::all(crust(), u32::MAX)?.into_iter().any(|s| {
        s.vfs.is_some_and(|(ino, dev)| st.st_ino == ino as u64 && libc::major(st.st_dev) == dev >> 20 && libc::minor(st.st_dev) == dev & 0xfffff)
    });
    Ok(live.then_some(LIVE))
}

/// Is a live socket bound to `name` (a path as crust sees it, or an abstract name)?
fn live_at(name: &[u8]) -> Result<bool> {
    if name.first() == Some(&0) {
        return Ok(diag::all(crust(), u32::MAX)?.into_iter().any(|s| s.name.as_deref() == Some(name)));
    }
    Ok(path_taken(std::path::Path::new(&show_name(name)))? == Some(LIVE))
}

// Socket options nix does not name, made with nix's own helper.
sockopt_impl!(
    /// SO_PEEK_OFF: where the next MSG_PEEK starts (-1: peeking is not offset).
    PeekOff, Both, libc::SOL_SOCKET, libc::SO_PEEK_OFF, libc::c_int
);

fn entry(file: &FileEntry) -> Result<&UnixSkEntry> {
    file.usk.as_ref().ok_or_else(|| super::missing(file, "unix socket"))
}

/// The image's file of the unix socket with inode `ino`.
fn by_ino<'a>(r: &FdRestorer<'a>, ino: u32) -> Result<&'a FileEntry> {
    r.image
        .files
        .values()
        .find(|f| f.usk.as_ref().is_some_and(|u| u.ino == ino))
        .ok_or_else(|| Error::image("files.img", format!("no unix socket {ino}, the peer of another")))
}

/// An image entry crust can make again (a CRIU image may hold others).
fn check_restorable(file: &FileEntry, u: &UnixSkEntry) -> Result<()> {
    if u.uflags & USK_EXTERN != 0 {
        return Err(Error::image("files.img", format!("file {}: a peer outside the tree, which no fd may hold", file.id)));
    }
    let why = if ![STREAM, DGRAM, SEQPACKET].contains(&u.r#type) {
        format!("unix sockets of type {} are", u.r#type)
    } else if ![TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN].map(u32::from).contains(&u.state) {
        format!("unix sockets in state {} are", u.state)
    } else if u.uflags != 0 {
        format!("unix sockets with criu's flags {:#x} (service, callback or inherited sockets) are", u.uflags)
    } else if u.deleted == Some(true) {
        "bound unix sockets whose file was deleted are".into()
    } else if u.name_dir.is_some() || (binds(u.r#type, u.state, &u.name) && !matches!(u.name[0], 0 | b'/')) {
        "unix sockets bound at a relative path are".into()
    } else {
        return Ok(());
    };
    Err(Error::unsupported(format!("file {} (unix socket {})", file.id, u.ino), format!("{why} not supported yet")))
}

fn context(u: &UnixSkEntry) -> impl Fn() -> String + '_ {
    move || format!("setting up unix socket {} of the image", u.ino)
}

/// A copy in crust of the task's socket at `fd`, to set it up from here.
fn take_end(pid: i32, fd: u64, u: &UnixSkEntry) -> Result<OwnedFd> {
    take_fd(pid, fd as i32).ctx(context(u))
}

/// What was queued for the file `id`, with crust's copies of the files in
/// flight made for the task (or found made: the tree's own fds of them).
fn queued<'a>(r: &mut FdRestorer<'a>, id: u32) -> Result<Vec<queue::Outgoing<'a>>> {
    let Some(packets) = super::loaded::<Queues>(r.image, "sk-queues.img")?.0.get(&id) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for p in packets {
        let mut fds = Vec::new();
        for &right in &p.rights {
            let at = match r.files.get(&right) {
                Some(&fd) => fd,
                None => {
                    let made = super::restore_file(super::file(r.image, right)?, r)?;
                    r.files.insert(right, made);
                    made
                }
            };
            fds.push(take_fd(r.task.pid, at as i32).ctx(|| format!("taking file {right}, in flight to file {id}"))?);
        }
        out.push(queue::Outgoing { data: &p.data, fds });
    }
    Ok(out)
}

/// Open the socket of `file` in the task, with whatever it must be made with.
fn make(file: &FileEntry, u: &UnixSkEntry, r: &mut FdRestorer) -> Result<u64> {
    check_restorable(file, u)?;
    if u.peer != 0 {
        let peer_file = by_ino(r, u.peer)?;
        let peer = entry(peer_file)?;
        if peer.peer == u.ino && peer.uflags & USK_EXTERN == 0 {
            return make_pair(file, u, peer_file, peer, r);
        }
        return make_standalone(file, u, Some((peer_file, peer)), r);
    }
    if u.state == TCP_ESTABLISHED as u32 && u.r#type != DGRAM {
        return make_semi_closed(file, u, r);
    }
    make_standalone(file, u, None, r)
}

/// socketpair(2) in the task; both ends moved above the image's fds.
fn socketpair(r: &mut FdRestorer, ty: u32) -> Result<(u64, u64)> {
    let addr = r.scratch.reset().put(&[0u8; 8])?;
    r.task.call("socketpair", libc::SYS_socketpair, [libc::AF_UNIX as u64, ty as u64, 0, addr, 0, 0])?;
    let mut fds = [0u8; 8];
    r.scratch.read(addr, &mut fds)?;
    let a = u32::from_le_bytes(fds[0..4].try_into().expect("4 bytes")) as u64;
    let b = u32::from_le_bytes(fds[4..8].try_into().expect("4 bytes")) as u64;
    Ok((r.to_high(a)?, r.to_high(b)?))
}

/// Two sockets each the other's peer: a socketpair, each end bound if it was.
fn make_pair(file: &FileEntry, u: &UnixSkEntry, peer_file: &FileEntry, peer: &UnixSkEntry, r: &mut FdRestorer) -> Result<u64> {
    check_restorable(peer_file, peer)?;
    let (mine, theirs) = socketpair(r, u.r#type)?;
    r.remember(MADE, u.ino as u64, mine);
    r.remember(MADE, u.peer as u64, theirs);
    for (fd, e) in [(mine, u), (theirs, peer)] {
        if binds(e.r#type, e.state, &e.name) {
            bind_at(r, fd, e)?;
        }
    }
    let pid = r.task.pid;
    let (a, b) = (take_end(pid, mine, u)?, take_end(pid, theirs, peer)?);
    set_options(&a, u)?;
    set_options(&b, peer)?;
    // What was queued for one end is sent from the other.
    fill_from(&b, &queued(r, file.id)?, u)?;
    fill_from(&a, &queued(r, peer_file.id)?, peer)?;
    set_peek_off(&a, u)?;
    set_peek_off(&b, peer)?;
    shut(&a, u)?;
    shut(&b, peer)?;
    Ok(mine)
}

/// A connected socket whose peer was closed (the kernel shut it down both
/// ways): one end of a socketpair whose other end sends its queue and closes.
fn make_semi_closed(file: &FileEntry, u: &UnixSkEntry, r: &mut FdRestorer) -> Result<u64> {
    if u.shutdown != Some(3) {
        return Err(Error::image("files.img", format!("unix socket {}: connected, without a peer, and not shut down", u.ino)));
    }
    let (mine, other) = socketpair(r, u.r#type)?;
    r.remember(MADE, u.ino as u64, mine);
    let pid = r.task.pid;
    let a = take_end(pid, mine, u)?;
    set_options(&a, u)?;
    let queue = queued(r, file.id)?;
    fill_from(&take_end(pid, other, u)?, &queue, u)?;
    set_peek_off(&a, u)?;
    r.task.call("close", libc::SYS_close, [other, 0, 0, 0, 0, 0])?;
    Ok(mine)
}

/// A socket of its own: bound, listening, connected to a named peer (made
/// first if it is the tree's), with the messages queued for it.
fn make_standalone(file: &FileEntry, u: &UnixSkEntry, peer: Option<(&FileEntry, &UnixSkEntry)>, r: &mut FdRestorer) -> Result<u64> {
    let low = r.task.call("socket", libc::SYS_socket, [libc::AF_UNIX as u64, u.r#type as u64, 0, 0, 0, 0])?;
    let fd = r.to_high(low)?;
    r.remember(MADE, u.ino as u64, fd);
    if binds(u.r#type, u.state, &u.name) {
        bind_at(r, fd, u)?;
    }
    let pid = r.task.pid;
    let sock = take_end(pid, fd, u)?;
    if u.state == TCP_LISTEN as u32 {
        let backlog = nix::sys::socket::Backlog::new(u.backlog.min(i32::MAX as u32) as i32).ctx(context(u))?;
        nix::sys::socket::listen(&sock, backlog).ctx(context(u))?;
    }
    set_options(&sock, u)?;
    let mut sender = None;
    if let Some((peer_file, p)) = peer {
        if p.name.is_empty() {
            return Err(Error::image("files.img", format!("unix socket {}: its peer {} has no name to connect to", u.ino, p.ino)));
        }
        if p.uflags & USK_EXTERN == 0 {
            let pfd = match r.made(MADE, p.ino as u64) {
                Some(fd) => fd,
                None => make(peer_file, p, r)?,
            };
            sender = Some(take_end(pid, pfd, p)?);
        }
        let addr = sockaddr(&p.name);
        let at = r.scratch.reset().put(&addr)?;
        let what = format!("connect to {}", show_name(&p.name));
        r.task.call(&what, libc::SYS_connect, [fd, at, addr.len() as u64, 0, 0, 0])?;
    }
    let messages = queued(r, file.id)?;
    if !messages.is_empty() {
        let bad = |why: &str| Error::image("files.img", format!("unix socket {}: messages queued, but {why}", u.ino));
        if u.r#type != DGRAM {
            return Err(bad("it is not a datagram socket, nor one of a pair"));
        }
        if u.name.is_empty() {
            return Err(bad("it has no name to send them to"));
        }
        // A connected datagram socket hears only its peer.
        let from = match (u.peer, sender) {
            (0, _) => new_socket(u)?,
            (_, Some(s)) => s,
            (_, None) => return Err(bad("its peer is outside the tree")),
        };
        queue::send_messages(&from, Some(&u.name), &messages, u)?;
    }
    set_peek_off(&sock, u)?;
    shut(&sock, u)?;
    Ok(fd)
}

/// An unnamed datagram socket of crust's, to send what unnamed senders had queued.
fn new_socket(u: &UnixSkEntry) -> Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).ctx(context(u))
}

/// struct sockaddr_un for a name of the image (a path or an abstract name).
fn sockaddr(name: &[u8]) -> Vec<u8> {
    let mut addr = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    addr.extend_from_slice(name);
    addr
}

/// bind(2) in the task, so that a path resolves as the task sees it. A
/// socket file no live socket owns is unlinked first, as criu does: it is
/// the dumped socket's, left when it closed.
fn bind_at(r: &mut FdRestorer, fd: u64, u: &UnixSkEntry) -> Result<()> {
    let name = &u.name;
    let seen = (name[0] != 0).then(|| std::path::PathBuf::from(format!("/proc/{}/root{}", r.task.pid, show_name(name))));
    if let Some(seen) = &seen {
        if let Some(why) = path_taken(seen)? {
            return Err(Error::Invalid(format!("unix socket {} cannot be bound at {} again: {why}", u.ino, show_name(name))));
        }
        match std::fs::remove_file(seen) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).ctx(|| format!("unlinking the stale socket file {}", seen.display())),
            _ => {}
        }
    }
    let addr = sockaddr(name);
    let at = r.scratch.reset().put(&addr)?;
    r.task.call(&format!("bind to {}", show_name(name)), libc::SYS_bind, [fd, at, addr.len() as u64, 0, 0, 0])?;
    if let (Some(seen), Some(p)) = (&seen, &u.file_perms) {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(seen, Some(p.uid), Some(p.gid)).ctx(|| format!("chown {}", seen.display()))?;
        std::fs::set_permissions(seen, std::fs::Permissions::from_mode(p.mode & 0o7777)).ctx(|| format!("chmod {}", seen.display()))?;
    }
    Ok(())
}

/// Queue what was queued for `to` by sending it from `sender`: one stream
/// of bytes, or each message with its bounds.
fn fill_from(sender: &OwnedFd, data: &[queue::Outgoing], to: &UnixSkEntry) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if to.r#type == STREAM {
        return queue::fill(sender, data, to);
    }
    queue::send_messages(sender, None, data, to)
}

/// shutdown(2) as the image says, once the queues are filled.
fn shut(sock: &OwnedFd, u: &UnixSkEntry) -> Result<()> {
    use nix::sys::socket::Shutdown;
    let how = match u.shutdown {
        Some(1) => Shutdown::Read,
        Some(2) => Shutdown::Write,
        Some(3) => Shutdown::Both,
        _ => return Ok(()),
    };
    nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(sock), how).ctx(context(u))
}

/// The peek offset the socket had, once its queue is refilled (an offset
/// into it).
fn set_peek_off(sock: &OwnedFd, u: &UnixSkEntry) -> Result<()> {
    match u.opts.crust_peek_off {
        Some(off) => setsockopt(sock, PeekOff, &off).ctx(context(u)),
        None => Ok(()),
    }
}

fn set_options(sock: &OwnedFd, u: &UnixSkEntry) -> Result<()> {
    super::sockopts::set(sock, &u.opts, &context(u))
}
