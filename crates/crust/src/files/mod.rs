//! Open files: the fd table of each task and the files behind it.
//!
//! One module per kind of file, each with its dump and restore sides next to
//! each other and its own images, behind [`FileKind`]; [`KINDS`] dispatches an
//! fd to its kind. Adding a kind of fd means one new module and one new row in
//! the table.

pub mod eventfd;
pub mod eventpoll;
pub mod fanotify;
pub mod fifo;
pub mod ghost;
pub mod inet;
pub mod inet_queue;
pub mod inotify;
pub mod locks;
pub mod memfd;
pub mod netlink;
pub mod pidfd;
pub mod pipe;
pub mod pty;
pub mod reg;
pub mod shmem;
pub mod signalfd;
pub mod sockopts;
pub mod timerfd;
pub mod tcp;
pub mod tcp_repair;
pub mod tty;
pub mod unix;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;

use nix::sys::stat::{stat, FileStat, SFlag};

use crate::error::{Context, Error, Result};
use crate::images::load::{DumpImage, Extras, ProcessImage};
use crate::images::proto::{FdTypes, FdinfoEntry, FileEntry, FownEntry};
use crate::images::{ImageDir, Kind};
use crate::task::{Scratch, Task};

/// One fd of a stopped task, as /proc describes it.
pub struct OpenFd {
    pub pid: i32,
    pub fd: i32,
    /// Target of /proc/PID/fd/FD: a path, `pipe:[ino]`, `socket:[ino]`, `anon_inode:...`.
    pub link: String,
    pub stat: FileStat,
    pub pos: u64,
    /// Open flags of the file description (without O_CLOEXEC, which belongs to the fd).
    pub flags: u32,
    pub cloexec: bool,
    /// /proc/PID/fdinfo/FD, whose lines past the common ones depend on the kind.
    pub info: String,
    /// crust's copy of the fd, once something asked for it.
    taken: std::cell::OnceCell<OwnedFd>,
}

impl OpenFd {
    pub fn read(pid: i32, fd: i32) -> Result<OpenFd> {
        let path = format!("/proc/{pid}/fd/{fd}");
        let link = std::fs::read_link(&path).ctx(|| format!("reading {path}"))?.to_string_lossy().into_owned();
        let stat = stat(path.as_str()).ctx(|| format!("stat {path} ({link})"))?;
        let info_path = format!("/proc/{pid}/fdinfo/{fd}");
        let info = std::fs::read_to_string(&info_path).ctx(|| format!("reading {info_path}"))?;
        let field = |name: &str| {
            info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("0").to_string()
        };
        let pos = field("pos:").parse().unwrap_or(0);
        let raw_flags = u32::from_str_radix(&field("flags:"), 8).unwrap_or(0);
        let cloexec = raw_flags & libc::O_CLOEXEC as u32 != 0;
        Ok(OpenFd { pid, fd, link, stat, pos, flags: raw_flags & !(libc::O_CLOEXEC as u32), cloexec, info, taken: Default::default() })
    }

    /// A line of fdinfo particular to this kind of file (`eventfd-count:`...).
    pub fn info_field(&self, name: &str) -> Result<&str> {
        self.info
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| Error::io_other(format!("reading /proc/{}/fdinfo/{}", self.pid, self.fd), format!("no {name} line")))
    }

    /// A number on such a line, in `radix` (fdinfo prints some in hex or octal).
    pub fn info_number(&self, name: &str, radix: u32) -> Result<u64> {
        let v = self.info_field(name)?;
        u64::from_str_radix(v, radix)
            .map_err(|_| Error::io_other(format!("reading /proc/{}/fdinfo/{}", self.pid, self.fd), format!("{name} {v:?} is not a number")))
    }

    pub fn file_type(&self) -> SFlag {
        SFlag::from_bits_truncate(self.stat.st_mode & SFlag::S_IFMT.bits())
    }

    /// A copy of the task's fd in crust, without running code in the task;
    /// taken once, however many parts of the dump ask (its kind, its owner).
    pub fn take(&self) -> Result<&OwnedFd> {
        if let Some(fd) = self.taken.get() {
            return Ok(fd);
        }
        let fd = take_fd(self.pid, self.fd).ctx(|| format!("taking fd {} of process {} ({})", self.fd, self.pid, self.link))?;
        Ok(self.taken.get_or_init(|| fd))
    }

    /// For a socket, the protocol sockfs names it by ("TCP", "UDPv6",
    /// "NETLINK", "UNIX"...), asked of the socket's inode through /proc:
    /// taking the socket into crust would touch it (its net_cls and
    /// net_prio marks would become crust's).
    pub fn socket_protocol(&self) -> Option<String> {
        if !self.link.starts_with("socket:[") {
            return None;
        }
        let path = std::ffi::CString::new(format!("/proc/{}/fd/{}", self.pid, self.fd)).ok()?;
        let mut buf = [0u8; 64];
        // SAFETY: both names are NUL-terminated strings alive for the call,
        // and the kernel writes at most buf.len() bytes into buf.
        let n = unsafe { libc::getxattr(path.as_ptr(), c"system.sockprotoname".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        let name = &buf[..usize::try_from(n).ok()?];
        let name = name.split(|&b| b == 0).next().unwrap_or(name);
        Some(String::from_utf8_lossy(name).into_owned())
    }

    pub(crate) fn unsupported(&self, what: &str) -> Error {
        Error::unsupported(format!("process {}: fd {} ({})", self.pid, self.fd, self.link), format!("{what} not supported yet"))
    }
}

fn take_fd(pid: i32, fd: i32) -> std::io::Result<OwnedFd> {
    use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};
    let pid = Pid::from_raw(pid).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty())?;
    Ok(pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty())?)
}

/// The fown_entry of a file: who gets SIGIO or SIGURG for it (F_SETOWN_EX)
/// and by which signal (F_SETSIG), asked of crust's copy of the fd (the
/// owner belongs to the open description). An owner outside the tree is
/// refused: the restore could not name it.
fn fown_of(fd: &OpenFd, table: &FileTable) -> Result<FownEntry> {
    let tree = &table.tree;
    let what = || format!("reading the owner of fd {} of process {}", fd.fd, fd.pid);
    let file = fd.take()?;
    // struct f_owner_ex { int type; pid_t pid; }
    let mut owner_ex = [0i32; 2];
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex (two ints) at the
    // address given, which `owner_ex` is, alive for the call.
    let r = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(file), F_GETOWN_EX, owner_ex.as_mut_ptr()) };
    nix::errno::Errno::result(r).ctx(what)?;
    let owner = Owner { type_: owner_ex[0], pid: owner_ex[1] };
    // SAFETY: F_GETSIG takes no argument and writes no memory.
    let signum = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(file), F_GETSIG) };
    let signum = nix::errno::Errno::result(signum).ctx(what)?;
    let known = match owner.type_ {
        F_OWNER_TID => tree.iter().any(|p| std::path::Path::new(&format!("/proc/{p}/task/{}", owner.pid)).exists()),
        // A process, or a process group led by one.
        _ => tree.contains(&owner.pid),
    };
    if owner.pid != 0 && !known {
        return Err(fd.unsupported(&format!("signals for it going to {} {} outside the tree are", owner_kind(owner.type_), owner.pid)));
    }
    Ok(FownEntry { uid: 0, euid: 0, signum: signum as u32, pid_type: owner.type_ as u32, pid: table.pids.of(owner.pid) as u32 })
}

// fcntl(2) owner commands and types (include/uapi/asm-generic/fcntl.h),
// which the libc crate lacks.
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
const F_OWNER_TID: i32 = 0;
const F_OWNER_PGRP: i32 = 2;

/// A file's owner (struct f_owner_ex).
struct Owner {
    type_: i32,
    pid: i32,
}

fn owner_kind(kind: i32) -> &'static str {
    match kind {
        F_OWNER_TID => "thread",
        F_OWNER_PGRP => "process group",
        _ => "process",
    }
}

/// The open flags and owner of a file, for the kinds that have them.
fn flags_and_owner(entry: &FileEntry) -> Option<(u32, &FownEntry)> {
    let e = entry;
    e.reg.as_ref().map(|f| (f.flags, &f.fown))
        .or_else(|| e.pipe.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.efd.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.epfd.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.sgfd.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.tfd.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.ify.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.ffy.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.tty.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.memfd.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.pidfd.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.nlsk.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.isk.as_ref().map(|f| (f.flags, &f.fown)))
        .or_else(|| e.usk.as_ref().map(|f| (f.flags, &f.fown)))
}

/// Give the file at `fd` its owner, signal and O_ASYNC again, once every
/// process of the tree exists (the owner may be any of them).
fn set_owner(entry: &FileEntry, fd: u64, r: &mut FdRestorer) -> Result<()> {
    let Some((flags, fown)) = flags_and_owner(entry) else { return Ok(()) };
    if fown.pid != 0 {
        let owner = [(fown.pid_type as u64) | ((fown.pid as u64) << 32)];
        let at = r.scratch.reset().put_u64s(&owner)?;
        r.task.call("fcntl(F_SETOWN_EX)", libc::SYS_fcntl, [fd, F_SETOWN_EX as u64, at, 0, 0, 0])?;
    }
    if fown.signum != 0 {
        r.task.call("fcntl(F_SETSIG)", libc::SYS_fcntl, [fd, F_SETSIG as u64, fown.signum as u64, 0, 0, 0])?;
    }
    // open(2) ignores O_ASYNC: it is set once the owner is.
    if flags & libc::O_ASYNC as u32 != 0 {
        let now = r.task.call("fcntl(F_GETFL)", libc::SYS_fcntl, [fd, libc::F_GETFL as u64, 0, 0, 0, 0])?;
        r.task.call("fcntl(F_SETFL, O_ASYNC)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, now | libc::O_ASYNC as u64, 0, 0, 0])?;
    }
    Ok(())
}

/// A kind of file, dump and restore side by side: how to recognise its fds,
/// dump one, write and load its own images (if it has any), and open it again
/// in a task being restored. Adding a kind of fd is one module implementing
/// this and one line in [`KINDS`].
pub trait FileKind: Sync {
    /// What the kind is called in messages ("pipe", "unix socket").
    fn name(&self) -> &'static str;
    /// Its type in files.img.
    fn fd_type(&self) -> FdTypes;
    fn matches(&self, fd: &OpenFd) -> bool;
    /// The file entry of `fd`, whose description no fd dumped before shares.
    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry>;
    /// Its own images, once every fd of the tree is dumped, from what its
    /// `dump` kept in `table.extras`.
    fn write_images(&self, _table: &FileTable, _dir: &mut ImageDir) -> Result<u64> {
        Ok(0)
    }
    /// Those images read back, into `img.extras`.
    fn load_images(&self, _img: &mut DumpImage) -> Result<()> {
        Ok(())
    }
    /// The object behind the file that other files may share (a pipe, for
    /// both its ends): all are made in one process, and handed to the others.
    fn shared_object(&self, _entry: &FileEntry) -> Option<u64> {
        None
    }
    /// Objects of this kind that the tree shares (a memfd's inode), made in
    /// the root before anything forks for every process to inherit, and
    /// remembered in `r` for the files and mappings of them.
    fn make_in_root(&self, _r: &mut FdRestorer) -> Result<()> {
        Ok(())
    }
    /// What stands in the way of restoring the file on this host.
    fn check(&self, _entry: &FileEntry, _img: &DumpImage) -> Option<String> {
        None
    }
    /// Open the file again in the task being restored; returns its fd there.
    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64>;
    /// Complete the file once every fd of its process is at its number (an
    /// epoll names its targets by fd number).
    fn finish(&self, _entry: &FileEntry, _fd: u64, _r: &mut FdRestorer) -> Result<()> {
        Ok(())
    }
}

/// A file entry without the member its type names (the loader refuses
/// such images; this names the file should one get this far).
fn missing(entry: &FileEntry, member: &str) -> Error {
    Error::image("files.img", format!("file {}: {member} without its entry", entry.id))
}

/// Tried in order; the first that matches dumps the fd.
pub static KINDS: &[&dyn FileKind] = &[
    &tty::Terminal,
    &pipe::Pipe,
    &fifo::Fifo,
    &unix::UnixSocket,
    &netlink::NetlinkSocket,
    &inet::InetSocket,
    &eventfd::Eventfd,
    &signalfd::Signalfd,
    &timerfd::Timerfd,
    &eventpoll::Eventpoll,
    &inotify::Inotify,
    &fanotify::Fanotify,
    &memfd::Memfd,
    &pidfd::Pidfd,
    &reg::RegularFile,
];

/// The kind of a file of the images.
pub fn kind_of(entry: &FileEntry) -> Result<&'static dyn FileKind> {
    KINDS.iter().copied().find(|k| k.fd_type() as i32 == entry.r#type).ok_or_else(|| {
        Error::unsupported(format!("file {}", entry.id), format!("files of type {} are not supported yet", entry.r#type))
    })
}

/// Open the file of `entry` in the task being restored.
pub fn restore_file(entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
    kind_of(entry)?.restore(entry, r)
}

/// Complete the file of `entry`, now at fd `fd` with all its process's fds in place.
pub fn finish_file(entry: &FileEntry, fd: u64, r: &mut FdRestorer) -> Result<()> {
    kind_of(entry)?.finish(entry, fd, r)
}

/// Make, in the root, the objects kinds make there, then every file that more
/// than one process holds (or whose object another process holds), for the
/// forks to inherit.
pub fn make_shared(r: &mut FdRestorer) -> Result<()> {
    let img = r.image;
    KINDS.iter().try_for_each(|k| k.make_in_root(r))?;
    for id in shared_files(img) {
        // Made already, in flight in a queue made before it.
        if r.files.contains_key(&id) {
            continue;
        }
        let fd = restore_file(file(img, id)?, r)?;
        r.files.insert(id, fd);
    }
    Ok(())
}

/// File `id` of files.img (the loader checked every fd names one).
fn file(img: &DumpImage, id: u32) -> Result<&FileEntry> {
    img.files.get(&id).ok_or_else(|| Error::Image {
        file: img.dir.join("files.img"),
        offset: 0,
        what: format!("no file {id}"),
    })
}

/// The fd table of one process: every file made (or inherited from the
/// root), then each put at its number, then everything else closed; last,
/// files that name other fds (epolls) are completed, each once (`finished`)
/// in the first process that holds it.
pub fn restore_table(image: &ProcessImage, r: &mut FdRestorer, finished: &mut HashSet<u32>) -> Result<()> {
    let img = r.image;
    for fd in &image.fds {
        if !r.files.contains_key(&fd.id) {
            let made = restore_file(file(img, fd.id)?, r)?;
            r.files.insert(fd.id, made);
        }
    }
    for fd in &image.fds {
        let made = r.files.get(&fd.id).copied().ok_or_else(|| Error::Invalid(format!("fd {}: its file was not made", fd.fd)))?;
        r.task.call("dup2", libc::SYS_dup2, [made, fd.fd as u64, 0, 0, 0, 0])?;
        if fd.flags & libc::FD_CLOEXEC as u32 != 0 {
            let args = [fd.fd as u64, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64, 0, 0, 0];
            r.task.call("fcntl(F_SETFD)", libc::SYS_fcntl, args)?;
        }
    }
    // Every object was made above the image's fds: all above this process's go.
    let base = image.fds.iter().map(|f| f.fd as u64 + 1).max().unwrap_or(0);
    r.task.call("close_range", libc::SYS_close_range, [base, u32::MAX as u64, 0, 0, 0, 0])?;
    for fd in &image.fds {
        if finished.insert(fd.id) {
            let entry = file(img, fd.id)?;
            finish_file(entry, fd.fd as u64, r)?;
            set_owner(entry, fd.fd as u64, r)?;
        }
    }
    Ok(())
}

/// What a kind loaded of its own images; an error if they were never loaded
/// (an image read without `restore::load` would otherwise look empty).
pub fn loaded<'a, T: std::any::Any + Send + Sync>(img: &'a DumpImage, images: &str) -> Result<&'a T> {
    img.extras.get::<T>().ok_or_else(|| Error::image(img.dir.join(images), "not loaded with the rest of the images"))
}

/// Every kind's own images, and the file locks, read into `img.extras`.
pub fn load_images(img: &mut DumpImage) -> Result<()> {
    KINDS.iter().try_for_each(|k| k.load_images(img))?;
    tcp::load(img)?;
    locks::load(img)
}

/// Files the restore's caller gives the tree in place of files it shared
/// with processes outside at dump (criu's `--inherit-fd fd[N]:KEY`): by key
/// (`pipe:[INO]`), the fd in crust that stands for it.
#[derive(Clone, Debug, Default)]
pub struct InheritFds(pub BTreeMap<String, i32>);

/// The keys of the files the dump found shared with processes outside the
/// tree (from crust's notes): each must be given at restore.
#[derive(Clone, Debug, Default)]
pub struct ExternalFiles(pub std::collections::BTreeSet<String>);

/// criu's `fd[N]:KEY` form of an inherited fd: (N, KEY).
pub fn parse_inherit_fd(arg: &str) -> std::result::Result<(i32, String), String> {
    let bad = || format!("{arg}: expected fd[N]:KEY, as fd[3]:pipe:[12345]");
    let rest = arg.strip_prefix("fd[").ok_or_else(bad)?;
    let (n, key) = rest.split_once("]:").ok_or_else(bad)?;
    let n: i32 = n.parse().map_err(|_| bad())?;
    if n < 0 {
        return Err(bad());
    }
    Ok((n, inherit_key(key).map_err(|e| format!("{arg}: {e}"))?))
}

/// The key of an inherited fd: a pipe's, as [`parse_external`] gives it,
/// or any other (an external namespace's, `--external net[INO]:KEY`),
/// which the restore's preflight refuses unless the images name it.
pub fn inherit_key(key: &str) -> std::result::Result<String, String> {
    match key.starts_with("pipe:") || key.is_empty() {
        true => parse_external(key),
        false => Ok(key.to_string()),
    }
}

/// The external files a dump can take (`--external KEY`): pipes, by the
/// key their /proc link shows.
pub fn parse_external(arg: &str) -> std::result::Result<String, String> {
    let ino = arg.strip_prefix("pipe:[").and_then(|r| r.strip_suffix(']')).and_then(|n| n.parse::<u32>().ok());
    match ino {
        Some(ino) => Ok(pipe::key(ino)),
        None => Err(format!("{arg:?} is not a pipe: crust takes external pipes (pipe:[INO]) here; other kinds of external objects are not supported yet")),
    }
}

/// The fd of crust that the restore was given for the file known as `key`.
fn inherited(img: &DumpImage, key: &str) -> Option<i32> {
    img.extras.get::<InheritFds>()?.0.get(key).copied()
}

/// What stands in the way of restoring the files of `img` (and their locks) here.
pub fn problems(img: &DumpImage) -> Vec<String> {
    let mut files: Vec<&FileEntry> = img.files.values().collect();
    files.sort_unstable_by_key(|f| f.id);
    let mut out: Vec<String> = files.into_iter().filter_map(|f| kind_of(f).ok()?.check(f, img)).collect();
    out.extend(locks::problems(img));
    out
}

/// Files more than one process holds, and files whose object (a pipe, a
/// socket pair) another process holds too: made once, in the root.
pub(crate) fn shared_files(img: &DumpImage) -> Vec<u32> {
    let object = |id: u32| {
        let f = img.files.get(&id)?;
        Some((f.r#type, kind_of(f).ok()?.shared_object(f)?))
    };
    let mut users: HashMap<u32, Vec<i32>> = HashMap::new();
    let mut object_users: HashMap<(i32, u64), Vec<i32>> = HashMap::new();
    for p in &img.processes {
        for fd in &p.fds {
            users.entry(fd.id).or_default().push(p.pid());
            if let Some(key) = object(fd.id) {
                object_users.entry(key).or_default().push(p.pid());
            }
        }
    }
    let spans = |v: &[i32]| v.iter().any(|&p| Some(&p) != v.first());
    let mut ids: Vec<u32> = users
        .iter()
        .filter(|(id, v)| spans(v) || object(**id).and_then(|key| object_users.get(&key)).is_some_and(|v| spans(v)))
        .map(|(id, _)| *id)
        .chain(unix::in_flight_ids(img))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What the root made for every process before anything forked, which each
/// process inherits: files several processes share, by file id, and the
/// objects behind them, all above every fd of the image.
#[derive(Clone, Default)]
pub struct Inherited {
    files: HashMap<u32, u64>,
    made: HashMap<(&'static str, u64), u64>,
    next_high: u64,
}

impl Inherited {
    /// Nothing yet; new objects go at fds from `base` up.
    pub fn above(base: u64) -> Inherited {
        Inherited { next_high: base, ..Default::default() }
    }

    /// An object the root made (see [`FdRestorer::made`]).
    pub fn made(&self, kind: &'static str, key: u64) -> Option<u64> {
        self.made.get(&(kind, key)).copied()
    }
}

/// What the restore side of a file kind works with: the task, its scratch area,
/// the images, and the fds already made in the task.
pub struct FdRestorer<'a> {
    pub task: &'a Task,
    pub scratch: &'a mut Scratch,
    pub image: &'a DumpImage,
    /// Files made so far, by file id, and the objects behind them (by kind
    /// and key), with their fd in the task.
    files: HashMap<u32, u64>,
    made: HashMap<(&'static str, u64), u64>,
    /// New objects are kept at fds from here up, above every fd the image uses.
    next_high: u64,
    /// For a shell job: the restoring terminal, which takes the place of the
    /// job's terminal at dump time.
    pub terminal: Option<&'a str>,
}

impl<'a> FdRestorer<'a> {
    pub fn new(task: &'a Task, scratch: &'a mut Scratch, image: &'a DumpImage, from: &Inherited, terminal: Option<&'a str>) -> Self {
        let Inherited { files, made, next_high } = from.clone();
        FdRestorer { task, scratch, image, files, made, next_high, terminal }
    }

    /// What forks of this task inherit from it.
    pub fn into_inherited(self) -> Inherited {
        Inherited { files: self.files, made: self.made, next_high: self.next_high }
    }

    /// An object made before (`kind` names its sort, `key` the object).
    pub fn made(&self, kind: &'static str, key: u64) -> Option<u64> {
        self.made.get(&(kind, key)).copied()
    }

    pub fn remember(&mut self, kind: &'static str, key: u64, fd: u64) {
        self.made.insert((kind, key), fd);
    }

    /// Move a new fd of the task above every fd the image uses.
    pub fn to_high(&mut self, fd: u64) -> Result<u64> {
        let high = self.task.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [fd, libc::F_DUPFD as u64, self.next_high, 0, 0, 0])?;
        self.task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        self.next_high = high + 1;
        Ok(high)
    }

    /// open(2) inside the task; the fd is left where the kernel put it.
    pub fn open_low(&mut self, path: &str, flags: u32) -> Result<u64> {
        self.task.open(self.scratch, path, flags)
    }

    pub fn open_path(&mut self, path: &str, flags: u32) -> Result<u64> {
        let fd = self.open_low(path, flags)?;
        self.to_high(fd)
    }
}

/// An fd dumped: (pid, fd, file id).
type SeenFd = (i32, i32, u32);

/// Everything that goes into files.img and its companions, with the ids shared
/// between tasks: one entry per open file description, however many fds and
/// tasks share it.
#[derive(Default)]
pub struct FileTable {
    next_id: u32,
    pub files: Vec<FileEntry>,
    /// fds already dumped, by inode, to find shared descriptions with kcmp.
    seen: HashMap<(u64, u64), Vec<SeenFd>>,
    /// Files known by path alone (mapped files, cwd, root, exe), by (path, flags);
    /// a deleted file's path carries its inode.
    by_path: HashMap<(String, u32), u32>,
    /// What each kind keeps for its own images, by type.
    pub extras: Extras,
    /// Deleted files held by the tree, with their contents.
    pub ghosts: ghost::Ghosts,
    /// The processes of the tree being dumped (what a pidfd may point to).
    pub tree: Vec<i32>,
    /// Their pids as the images hold them (in the tree's pid namespace).
    pub pids: crate::tree::NsPids,
    /// File locks held by the tree.
    pub locks: locks::Locks,
    /// `--ext-unix-sk`: unix sockets may have a peer outside the tree.
    pub ext_unix_sk: bool,
    /// `--external KEY`: files held outside the tree too (`pipe:[INO]`),
    /// which the restore will be given.
    pub external: std::collections::BTreeSet<String>,
    /// Every pipe held outside the tree too is external (an engine's RPC,
    /// which gives back the pipes of a container's stdio at restore).
    pub external_pipes: bool,
    /// Established TCP connections of the tree, and the lock holding them.
    pub tcp: tcp::Connections,
    /// Where the tree's paths are seen from crust, when the tree has a mount
    /// namespace of its own (crate::ns::dump_view).
    pub view: Option<String>,
}

impl FileTable {
    /// The path crust reaches the tree's file `path` by.
    pub fn seen_at(&self, path: &str) -> String {
        match &self.view {
            Some(root) => format!("{root}{path}"),
            None => path.to_string(),
        }
    }

    pub fn new_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// The id of a regular file known by path (not through a task's fd);
    /// `source` is a /proc path that opens it even if it was deleted.
    pub fn path_id(&mut self, path: &str, flags: u32, source: &str) -> Result<u32> {
        // Two deleted files may have had one name (a library upgraded twice).
        let key = match path.strip_suffix(ghost::DELETED) {
            Some(_) => {
                let st = stat(source).ctx(|| format!("stat {source}"))?;
                format!("{path}#{}:{}", st.st_dev, st.st_ino)
            }
            None => path.to_string(),
        };
        if let Some(id) = self.by_path.get(&(key.clone(), flags)) {
            return Ok(*id);
        }
        let id = self.new_id();
        let entry = match path.strip_suffix(ghost::DELETED) {
            Some(name) => {
                self.add_ghost(id, source)?;
                reg::entry_for_path(id, name, flags, source)?
            }
            None => {
                // Mapped files, cwd, root and exe are reopened by path too.
                let st = stat(source).ctx(|| format!("stat {source}"))?;
                let seen_at = self.seen_at(path);
                reg::path_leads_to(&st, &seen_at)
                    .map_err(|why| Error::unsupported(format!("{source} ({path})"), format!("a file whose path {why} is not supported yet")))?;
                reg::entry_for_path(id, path, flags, &seen_at)?
            }
        };
        self.files.push(entry);
        self.by_path.insert((key, flags), id);
        Ok(id)
    }

    /// Dump one fd: find the description it shares with an fd seen before, or
    /// dump the file through its kind's handler.
    pub fn dump_fd(&mut self, fd: &OpenFd) -> Result<FdinfoEntry> {
        let key = (fd.stat.st_dev, fd.stat.st_ino);
        let existing = self.seen.get(&key).and_then(|list| {
            list.iter().find(|(pid, n, _)| same_description(fd.pid, fd.fd, *pid, *n)).map(|(_, _, id)| *id)
        });
        let kind = KINDS.iter().find(|k| k.matches(fd)).ok_or_else(|| fd.unsupported(&describe_unknown(fd)))?;
        let (id, file_type) = match existing {
            Some(id) => {
                let ty = self.files.iter().find(|f| f.id == id).map(|f| f.r#type).unwrap_or_default();
                (id, ty)
            }
            None => {
                log::debug!("process {}: fd {} ({}) is a {}", fd.pid, fd.fd, fd.link, kind.name());
                let entry = kind.dump(fd, self)?;
                let ty = entry.r#type;
                let id = entry.id;
                self.files.push(entry);
                self.seen.entry(key).or_default().push((fd.pid, fd.fd, id));
                (id, ty)
            }
        };
        Ok(FdinfoEntry {
            id,
            flags: if fd.cloexec { libc::FD_CLOEXEC as u32 } else { 0 },
            r#type: file_type,
            fd: fd.fd as u32,
            ..Default::default()
        })
    }

    /// files.img and every kind's own images.
    pub fn write(&self, dir: &mut ImageDir) -> Result<u64> {
        let mut bytes = 0;
        let mut w = dir.writer("files.img", Kind::Files)?;
        for f in &self.files {
            w.entry(f)?;
        }
        bytes += w.finish()?;
        for kind in KINDS {
            bytes += kind.write_images(self, dir)?;
        }
        bytes += self.ghosts.write(dir)?;
        bytes += self.locks.write(dir)?;
        bytes += self.tcp.write(dir)?;
        Ok(bytes)
    }
}

/// An image of entries each followed by its raw bytes; none if there are none.
pub fn write_with_data<M: prost::Message>(dir: &mut ImageDir, name: &str, kind: Kind, items: &[(M, Vec<u8>)]) -> Result<u64> {
    if items.is_empty() {
        return Ok(0);
    }
    let mut w = dir.writer(name, kind)?;
    for (entry, data) in items {
        w.entry(entry)?;
        w.raw(data)?;
    }
    w.finish()
}

/// kcmp(KCMP_FILE): do two fds refer to one open file description?
fn same_description(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> bool {
    const KCMP_FILE: libc::c_int = 0;
    kcmp(pid1, pid2, KCMP_FILE, fd1 as u64, fd2 as u64)
}

/// kcmp(2): is the object `kind` of `pid1` at `idx1` the same kernel object
/// as the one of `pid2` at `idx2`? False when they differ or the call fails.
pub(crate) fn kcmp(pid1: i32, pid2: i32, kind: libc::c_int, idx1: u64, idx2: u64) -> bool {
    // SAFETY: no wrapper exists (nix, rustix). kcmp writes no memory of ours:
    // it only compares kernel objects, and the one argument that can be an
    // address (KCMP_EPOLL_TFD's slot) is read by the kernel with
    // copy_from_user, which fails with EFAULT on a bad address, not UB.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, idx1, idx2) };
    r == 0
}

/// Whether a socket (crust's copy) belongs to the network namespace of its
/// process `pid`: crust's, or the tree's own (saved with it, and made again
/// before the sockets). One made in another is refused (the restore would
/// make it in the task's).
pub(crate) fn in_tasks_netns(sock: &OwnedFd, pid: i32) -> nix::Result<bool> {
    use std::os::fd::{AsRawFd, FromRawFd};
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd (or -1).
    let ns = nix::errno::Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSKNS) })?;
    // SAFETY: the ioctl just made this fd, and nothing else owns it.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    let theirs = nix::sys::stat::fstat(&ns)?;
    let task = stat(format!("/proc/{pid}/ns/net").as_str())?;
    Ok((theirs.st_dev, theirs.st_ino) == (task.st_dev, task.st_ino))
}

/// Run `work` in the network namespace of process `pid` (sock_diag and
/// /proc/net answer for the namespace of who asks): in crust itself when it
/// is crust's, else on a thread that joined it.
pub(crate) fn in_netns_of<T: Send>(pid: i32, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let (mine, theirs) = (stat("/proc/self/ns/net"), stat(format!("/proc/{pid}/ns/net").as_str()));
    match (mine, theirs) {
        (Ok(a), Ok(b)) if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) => crate::ns::in_namespace(pid, "net", work),
        _ => work(),
    }
}

/// The family of a socket, found by its inode in the tables of
/// /proc/PID/net (taking the socket into crust would touch it).
fn socket_family(fd: &OpenFd) -> &'static str {
    let ino = fd.stat.st_ino.to_string();
    let tables = [
        ("unix", "unix"),
        ("tcp", "inet"),
        ("udp", "inet"),
        ("raw", "inet"),
        ("tcp6", "inet6"),
        ("udp6", "inet6"),
        ("raw6", "inet6"),
        ("netlink", "netlink"),
        ("packet", "packet"),
    ];
    for (table, family) in tables {
        let text = std::fs::read_to_string(format!("/proc/{}/net/{table}", fd.pid)).unwrap_or_default();
        if text.lines().skip(1).any(|l| l.split_whitespace().any(|w| w == ino)) {
            return family;
        }
    }
    ""
}

/// A precise name for an fd no handler takes, e.g. "inet sockets are".
fn describe_unknown(fd: &OpenFd) -> String {
    if fd.link.starts_with("socket:") {
        let name = socket_family(fd);
        return format!("{name}{}sockets are", if name.is_empty() { "" } else { " " });
    }
    if let Some(kind) = fd.link.strip_prefix("anon_inode:") {
        return format!("{} files are", kind.trim_matches(|c| c == '[' || c == ']'));
    }
    match fd.file_type() {
        SFlag::S_IFIFO => "FIFOs without a path are".into(),
        SFlag::S_IFCHR => {
            let (major, minor) = (libc::major(fd.stat.st_rdev), libc::minor(fd.stat.st_rdev));
            format!("character device {major}:{minor} (crust reopens /dev/null, zero, full, random, urandom, tty and pty slaves) is")
        }
        SFlag::S_IFBLK => "block devices are".into(),
        _ => "files of this kind are".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::proto::{PipeEntry, PstreeEntry, RegFileEntry, UnixSkEntry};

    fn image(procs: &[(u32, &[u32])], files: Vec<FileEntry>) -> DumpImage {
        let processes = procs
            .iter()
            .map(|&(pid, ids)| ProcessImage {
                pstree: PstreeEntry { pid, threads: vec![pid], ..Default::default() },
                fds: ids.iter().enumerate().map(|(fd, &id)| FdinfoEntry { id, fd: fd as u32, ..Default::default() }).collect(),
                ..Default::default()
            })
            .collect();
        DumpImage {
            dir: "/nonexistent".into(),
            processes,
            files: files.into_iter().map(|f| (f.id, f)).collect(),
            shmem: HashMap::new(),
            remaps: HashMap::new(),
            ghost_files: HashMap::new(),
            extras: Extras::default(),
            cgroups: None,
            pages_digests: Vec::new(),
        }
    }

    fn reg(id: u32) -> FileEntry {
        FileEntry { r#type: FdTypes::Reg as i32, id, reg: Some(RegFileEntry { id, ..Default::default() }), ..Default::default() }
    }

    fn pipe(id: u32, pipe_id: u32) -> FileEntry {
        let pipe = PipeEntry { id, pipe_id, ..Default::default() };
        FileEntry { r#type: FdTypes::Pipe as i32, id, pipe: Some(pipe), ..Default::default() }
    }

    fn unix(id: u32, ino: u32, peer: u32) -> FileEntry {
        let usk = UnixSkEntry { id, ino, peer, ..Default::default() };
        FileEntry { r#type: FdTypes::Unixsk as i32, id, usk: Some(usk), ..Default::default() }
    }

    #[test]
    fn files_and_objects_several_processes_hold_are_shared() {
        let files = vec![
            reg(1),
            reg(2),
            // A pipe whose ends live in two processes, and one kept in one.
            pipe(3, 70),
            pipe(4, 70),
            pipe(5, 80),
            pipe(6, 80),
            // A socket pair split by a fork, and one kept in one process
            // (connected unix sockets are one object: it is shared too).
            unix(7, 10, 11),
            unix(8, 11, 10),
            unix(9, 12, 13),
            unix(10, 13, 12),
            // A regular file and a pipe with the same key as an object: kinds do not mix.
            pipe(11, 1),
        ];
        let img = image(
            &[(100, &[1, 1, 2, 3, 5, 6, 7, 9, 10, 11]), (200, &[2, 4, 8]), (300, &[1 /* and a file no one wrote */, 99])],
            files,
        );
        assert_eq!(shared_files(&img), [1, 2, 3, 4, 7, 8, 9, 10]);
        // Alone, nothing is shared, however often a process holds a file.
        let img = image(&[(100, &[1, 1, 3, 4, 7, 8])], vec![reg(1), pipe(3, 70), pipe(4, 70), unix(7, 10, 11), unix(8, 11, 10)]);
        assert!(shared_files(&img).is_empty());
        assert!(shared_files(&image(&[], vec![])).is_empty());
    }
}
