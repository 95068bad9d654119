//! Open files: the fd table of each task and the files behind it.
//!
//! One module per kind of file, each with its dump side (and later its restore
//! side) next to each other; [`HANDLERS`] dispatches an fd to its kind. Adding a
//! kind of fd means one new module and one new row in the table.

pub mod eventfd;
pub mod eventpoll;
pub mod ghost;
pub mod pipe;
pub mod reg;
pub mod signalfd;
pub mod timerfd;
pub mod tty;
pub mod unix;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::sys::stat::{stat, FileStat, SFlag};

use crate::error::{Context, Error, Result};
use crate::images::proto::{FdTypes, FdinfoEntry, FileEntry, FownEntry, PipeDataEntry, SkPacketEntry, TtyInfoEntry};
use crate::images::{ImageDir, Kind};
use crate::restore::load::DumpImage;
use crate::restore::task::{Scratch, Task};

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
        Ok(OpenFd { pid, fd, link, stat, pos, flags: raw_flags & !(libc::O_CLOEXEC as u32), cloexec, info })
    }

    /// A line of fdinfo particular to this kind of file (`eventfd-count:`...).
    pub fn info_field(&self, name: &str) -> Result<&str> {
        self.info
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| Error::Invalid(format!("/proc/{}/fdinfo/{} has no {name} line", self.pid, self.fd)))
    }

    /// A number on such a line, in `radix` (fdinfo prints some in hex or octal).
    pub fn info_number(&self, name: &str, radix: u32) -> Result<u64> {
        let v = self.info_field(name)?;
        u64::from_str_radix(v, radix)
            .map_err(|_| Error::Invalid(format!("process {}: fd {}: {name} {v:?} is not a number", self.pid, self.fd)))
    }

    pub fn file_type(&self) -> SFlag {
        SFlag::from_bits_truncate(self.stat.st_mode & SFlag::S_IFMT.bits())
    }

    /// A copy of the task's fd in crust, without running code in the task.
    pub fn take(&self) -> Result<OwnedFd> {
        take_fd(self.pid, self.fd).ctx(|| format!("taking fd {} of process {} ({})", self.fd, self.pid, self.link))
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::Unsupported(format!("process {}: fd {} ({}): {what} not supported yet", self.pid, self.fd, self.link))
    }
}

fn take_fd(pid: i32, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls; each returned fd is new and owned by us.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let r = libc::syscall(libc::SYS_pidfd_getfd, std::os::fd::AsRawFd::as_raw_fd(&pidfd), fd, 0);
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(r as i32))
    }
}

/// The fown_entry of a file: who gets SIGIO. crust does not restore async owners
/// yet, so it records none set and refuses files that have one.
fn fown_of(fd: &OpenFd) -> Result<FownEntry> {
    if fd.flags & libc::O_ASYNC as u32 != 0 {
        return Err(fd.unsupported("O_ASYNC files are"));
    }
    Ok(FownEntry::default())
}

/// A kind of file: how to recognise it, dump it, and open it again in a task
/// being restored (returning the fd there); `finish`, if any, completes it
/// once every fd of the process is at its number (an epoll names its
/// targets by fd number).
pub struct Handler {
    pub name: &'static str,
    pub fd_type: FdTypes,
    pub matches: fn(&OpenFd) -> bool,
    pub dump: fn(&OpenFd, &mut FileTable) -> Result<FileEntry>,
    pub restore: fn(&FileEntry, &mut FdRestorer) -> Result<u64>,
    pub finish: Option<FinishFn>,
}

/// Completes a file at its fd number: see [`Handler`].
pub type FinishFn = fn(&FileEntry, u64, &mut FdRestorer) -> Result<()>;

/// Tried in order; the first that matches handles the fd.
pub static HANDLERS: &[Handler] =
    &[tty::HANDLER, pipe::HANDLER, unix::HANDLER, eventfd::HANDLER, signalfd::HANDLER, timerfd::HANDLER, eventpoll::HANDLER, reg::HANDLER];

fn handler_of(entry: &FileEntry) -> Result<&'static Handler> {
    HANDLERS.iter().find(|h| h.fd_type as i32 == entry.r#type).ok_or_else(|| {
        Error::Unsupported(format!("file {}: files of type {} are not supported yet", entry.id, entry.r#type))
    })
}

/// Open the file of `entry` in the task being restored.
pub fn restore_file(entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
    (handler_of(entry)?.restore)(entry, r)
}

/// Complete the file of `entry`, now at fd `fd` with all its process's fds in place.
pub fn finish_file(entry: &FileEntry, fd: u64, r: &mut FdRestorer) -> Result<()> {
    match handler_of(entry)?.finish {
        Some(finish) => finish(entry, fd, r),
        None => Ok(()),
    }
}

/// What the restore side of a file kind works with: the task, its scratch area,
/// the images, and the fds already made in the task.
pub struct FdRestorer<'a> {
    pub task: &'a Task,
    pub scratch: &'a mut Scratch,
    pub image: &'a DumpImage,
    /// Ends of the pipes made so far, by pipe_id: (read fd, write fd) in the task.
    pub pipes: HashMap<u32, (u64, u64)>,
    /// Ends of the unix socket pairs made so far, by socket inode: fd in the task.
    pub sockets: HashMap<u32, u64>,
    /// New objects are kept at fds from here up, above every fd the image uses.
    pub next_high: u64,
    /// For a shell job: the restoring terminal, which takes the place of the
    /// job's terminal at dump time.
    pub terminal: Option<&'a str>,
}

impl FdRestorer<'_> {
    /// Move a new fd of the task above every fd the image uses.
    pub fn to_high(&mut self, fd: u64) -> Result<u64> {
        let high = self.task.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [fd, libc::F_DUPFD as u64, self.next_high, 0, 0, 0])?;
        self.task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        self.next_high = high + 1;
        Ok(high)
    }

    /// open(2) inside the task; the fd is left where the kernel put it.
    pub fn open_low(&mut self, path: &str, flags: u32) -> Result<u64> {
        let addr = self.scratch.reset().put_str(path)?;
        let what = format!("opening {path}");
        self.task.call(&what, libc::SYS_openat, [libc::AT_FDCWD as u64, addr, flags as u64, 0, 0, 0])
    }

    pub fn open_path(&mut self, path: &str, flags: u32) -> Result<u64> {
        let fd = self.open_low(path, flags)?;
        self.to_high(fd)
    }
}

/// Everything that goes into files.img and its companions, with the ids shared
/// between tasks: one entry per open file description, however many fds and
/// tasks share it.
#[derive(Default)]
pub struct FileTable {
    next_id: u32,
    pub files: Vec<FileEntry>,
    /// fds already dumped, by inode, to find shared descriptions with kcmp.
    #[allow(clippy::type_complexity)]
    seen: HashMap<(u64, u64), Vec<(i32, i32, u32)>>,
    /// Files known by path alone (mapped files, cwd, root, exe), by (path, flags);
    /// a deleted file's path carries its inode.
    by_path: HashMap<(String, u32), u32>,
    pub pipe_data: Vec<(PipeDataEntry, Vec<u8>)>,
    /// Bytes queued on unix sockets, for sk-queues.img.
    pub sk_queues: Vec<(SkPacketEntry, Vec<u8>)>,
    /// Every unix socket dumped: its inode, its peer's, and which fd it is.
    pub unix_peers: Vec<(u32, u32, String)>,
    pub tty_infos: Vec<TtyInfoEntry>,
    /// Deleted files held by the tree, with their contents.
    pub ghosts: ghost::Ghosts,
    /// Shared anonymous memory mapped by the tree: not files, but like them
    /// shared between processes and written once, after all of them.
    pub shmem: crate::shmem::SharedMemory,
}

impl FileTable {
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
            None => reg::entry_for_path(id, path, flags, path)?,
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
        let handler = HANDLERS
            .iter()
            .find(|h| (h.matches)(fd))
            .ok_or_else(|| fd.unsupported(&describe_unknown(fd)))?;
        let (id, file_type) = match existing {
            Some(id) => {
                let ty = self.files.iter().find(|f| f.id == id).map(|f| f.r#type).unwrap_or_default();
                (id, ty)
            }
            None => {
                log::debug!("process {}: fd {} ({}) is a {}", fd.pid, fd.fd, fd.link, handler.name);
                let entry = (handler.dump)(fd, self)?;
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

    /// files.img, pipes-data.img, sk-queues.img and tty-info.img, once every
    /// socket's peer is known to be in the tree.
    pub fn write(&self, dir: &mut ImageDir) -> Result<u64> {
        for (me, peer, who) in &self.unix_peers {
            if !self.unix_peers.iter().any(|(ino, back, _)| ino == peer && back == me) {
                return Err(Error::Unsupported(format!(
                    "{who}: its peer is outside the dumped tree: unix sockets connected outside the tree are not supported yet"
                )));
            }
        }
        let mut bytes = 0;
        let mut w = dir.writer("files.img", Kind::Files)?;
        for f in &self.files {
            w.entry(f)?;
        }
        bytes += w.finish()?;
        bytes += write_with_data(dir, "pipes-data.img", Kind::PipesData, &self.pipe_data)?;
        bytes += write_with_data(dir, "sk-queues.img", Kind::SkQueues, &self.sk_queues)?;
        bytes += self.ghosts.write(dir)?;
        bytes += self.shmem.write(dir)?;
        if !self.tty_infos.is_empty() {
            let mut w = dir.writer("tty-info.img", Kind::TtyInfo)?;
            for t in &self.tty_infos {
                w.entry(t)?;
            }
            bytes += w.finish()?;
        }
        Ok(bytes)
    }
}

/// An image of entries each followed by its raw bytes; none if there are none.
fn write_with_data<M: prost::Message>(dir: &mut ImageDir, name: &str, kind: Kind, items: &[(M, Vec<u8>)]) -> Result<u64> {
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
    // SAFETY: kcmp only compares kernel objects.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) };
    r == 0
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
        SFlag::S_IFIFO => "named FIFOs are".into(),
        SFlag::S_IFCHR => "character devices other than ttys and memory devices are".into(),
        SFlag::S_IFBLK => "block devices are".into(),
        _ => "files of this kind are".into(),
    }
}
