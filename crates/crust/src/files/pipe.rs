//! Pipes: both ends of one pipe share its inode (pipe_id), and the bytes sitting
//! in the pipe are saved once per pipe in pipes-data.img.

use std::collections::{BTreeSet, HashMap};

use nix::sys::time::TimeSpec;
use std::os::unix::fs::MetadataExt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::SFlag;

use super::{fown_of, write_with_data, FdRestorer, FileKind, FileTable, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_with_data, DumpImage};
use crate::images::proto::{FdTypes, FileEntry, PipeDataEntry, PipeEntry};
use crate::images::{ImageDir, Kind};

pub struct Pipe;

/// The bytes in each pipe, with its buffer size (pipes-data.img).
#[derive(Default)]
struct PipeData(Vec<(PipeDataEntry, Vec<u8>)>);

/// Pipes that processes outside the tree also hold, as the dump found them:
/// every pipe of the system, by inode, with the processes holding it (read
/// once per dump, when the tree's first pipe is met).
#[derive(Default)]
struct Holders(Option<HashMap<u64, Vec<i32>>>);

/// The keys (`pipe:[INO]`) of the tree's pipes held outside it too, which
/// the restore must be given (criu's `--inherit-fd fd[N]:pipe:[INO]`).
#[derive(Default)]
struct External(BTreeSet<String>);

/// The key a pipe is known by outside crust (its /proc/PID/fd link).
pub fn key(pipe_id: u32) -> String {
    format!("pipe:[{pipe_id}]")
}

/// The external pipes' keys the dump met, for crust's notes.
pub fn external_keys(table: &FileTable) -> BTreeSet<String> {
    table.extras.get::<External>().map(|e| e.0.clone()).unwrap_or_default()
}

// How a restore remembers the ends of the pipes it made.
const READ_END: &str = "pipe read end";
const WRITE_END: &str = "pipe write end";

impl FileKind for Pipe {
    fn name(&self) -> &'static str {
        "pipe"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Pipe
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.file_type() == SFlag::S_IFIFO && fd.link.starts_with("pipe:")
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let pipe_id = fd.stat.st_ino as u32;
        let saved = table.extras.get_mut::<PipeData>();
        if !saved.0.iter().any(|(d, _)| d.pipe_id == pipe_id) {
            check_outside_holders(fd, table)?;
            let (data, size) = peek_pipe(fd)?;
            // Kept for its buffer size even when empty.
            if !data.is_empty() || size != 0 {
                let entry = PipeDataEntry { pipe_id, bytes: data.len() as u32, size: Some(size) };
                table.extras.get_mut::<PipeData>().0.push((entry, data));
            }
        }
        let id = table.new_id();
        Ok(FileEntry {
            r#type: FdTypes::Pipe as i32,
            id,
            pipe: Some(PipeEntry { id, pipe_id, flags: fd.flags, fown: fown_of(fd, table)? }),
            ..Default::default()
        })
    }

    fn write_images(&self, table: &FileTable, dir: &mut ImageDir) -> Result<u64> {
        match table.extras.get::<PipeData>() {
            Some(saved) => write_with_data(dir, "pipes-data.img", Kind::PipesData, &saved.0),
            None => Ok(0),
        }
    }

    fn load_images(&self, img: &mut DumpImage) -> Result<()> {
        let path = img.dir.join("pipes-data.img");
        let saved = read_with_data::<PipeDataEntry>(&path, Kind::PipesData, |e| e.bytes as u64)?;
        for (e, _) in &saved {
            // A pipe's buffer size is an int (F_SETPIPE_SZ).
            if e.size.is_some_and(|size| i32::try_from(size).is_err()) {
                return Err(Error::Image { file: path, offset: 0, what: format!("pipe {}: buffer size {:?} is not one a pipe can have", e.pipe_id, e.size) });
            }
        }
        img.extras.insert(PipeData(saved));
        Ok(())
    }

    fn shared_object(&self, entry: &FileEntry) -> Option<u64> {
        entry.pipe.as_ref().map(|p| p.pipe_id as u64)
    }

    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let p = entry.pipe.as_ref().ok_or_else(|| super::missing(entry, "pipe"))?;
        if let Some(given) = super::inherited(r.image, &self::key(p.pipe_id)) {
            return reopen_given(p, given, r);
        }
        let key = p.pipe_id as u64;
        let (rd, wr) = match (r.made(READ_END, key), r.made(WRITE_END, key)) {
            (Some(rd), Some(wr)) => (rd, wr),
            _ => {
                let addr = r.scratch.reset().put(&[0u8; 8])?;
                r.task.call("pipe2", libc::SYS_pipe2, [addr, 0, 0, 0, 0, 0])?;
                let mut fds = [0u8; 8];
                r.scratch.read(addr, &mut fds)?;
                let rd = r.to_high(u32::from_le_bytes(fds[0..4].try_into().expect("4 bytes")) as u64)?;
                let wr = r.to_high(u32::from_le_bytes(fds[4..8].try_into().expect("4 bytes")) as u64)?;
                let saved = super::loaded::<PipeData>(r.image, "pipes-data.img")?.0.iter().find(|(e, _)| e.pipe_id == p.pipe_id);
                fill_pipe(r.task.pid, wr, saved)?;
                r.remember(READ_END, key, rd);
                r.remember(WRITE_END, key, wr);
                (rd, wr)
            }
        };
        let fd = if p.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32 { wr } else { rd };
        let status = p.flags & (libc::O_NONBLOCK | libc::O_DIRECT) as u32;
        if status != 0 {
            r.task.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, status as u64, 0, 0, 0])?;
        }
        Ok(fd)
    }
}

/// A pipe that a process outside the tree holds too would come back as a
/// new pipe that process knows nothing of: refused, naming the process,
/// unless the dump was told the restore will be given it (`--external
/// pipe:[INO]`), which is then noted.
fn check_outside_holders(fd: &OpenFd, table: &mut FileTable) -> Result<()> {
    let ino = fd.stat.st_ino;
    let holders = table.extras.get_mut::<Holders>().0.get_or_insert_with(pipe_holders);
    let me = std::process::id() as i32;
    let outside: Vec<i32> = holders.get(&ino).into_iter().flatten().copied().filter(|p| *p != me && !table.tree.contains(p)).collect();
    let Some(&holder) = outside.first() else { return Ok(()) };
    let key = key(ino as u32);
    if table.external.contains(&key) || table.external_pipes {
        table.extras.get_mut::<External>().0.insert(key);
        return Ok(());
    }
    Err(Error::unsupported(
        format!("process {}: fd {} ({})", fd.pid, fd.fd, fd.link),
        format!(
            "{} outside the tree holds this pipe too ({} process(es) in all), and a restore would lose it: dump with --external {key}, \
             then give the restore a pipe of yours for it with --inherit-fd fd[N]:{key}",
            crate::proc::who(holder),
            outside.len()
        ),
    ))
}

/// Every pipe any process holds, by inode: /proc/*/fd read once.
fn pipe_holders() -> HashMap<u64, Vec<i32>> {
    let mut out: HashMap<u64, Vec<i32>> = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for pid in procs.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            let ino = link.to_str().and_then(|l| l.strip_prefix("pipe:[")?.strip_suffix(']')?.parse::<u64>().ok());
            if let Some(ino) = ino {
                let pids = out.entry(ino).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    out
}

/// An external pipe the restore was given as crust's fd `given`: opened in
/// the task through crust's /proc entry, in the direction the tree used.
/// Its bytes are not put back: they stayed in the pipe the caller holds.
fn reopen_given(p: &PipeEntry, given: i32, r: &mut FdRestorer) -> Result<u64> {
    let end = if p.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32 { WRITE_END } else { READ_END };
    if let Some(fd) = r.made(end, p.pipe_id as u64) {
        return Ok(fd);
    }
    let access = if end == WRITE_END { libc::O_WRONLY } else { libc::O_RDONLY };
    let flags = access | (p.flags as i32 & (libc::O_NONBLOCK | libc::O_DIRECT));
    let fd = if r.task.host_root.is_none() {
        let at = r.scratch.reset().put_str(&format!("/proc/{}/fd/{given}", std::process::id()))?;
        r.task.call("open of an inherited pipe", libc::SYS_openat, [libc::AT_FDCWD as u64, at, flags as u64, 0, 0, 0])?
    } else {
        // The task's root is the tree's own, whose /proc (if any) shows
        // the tree's pid namespace, not crust: the given pipe is passed to
        // the task, which opens it again through its own /proc entry.
        let passed = pass_fd(r, given)?;
        let at = r.scratch.reset().put_str(&format!("/proc/self/fd/{passed}"))?;
        let opened = r.task.call("open of an inherited pipe through the tree's /proc", libc::SYS_openat, [libc::AT_FDCWD as u64, at, flags as u64, 0, 0, 0]);
        r.task.call("close", libc::SYS_close, [passed, 0, 0, 0, 0, 0])?;
        opened?
    };
    let fd = r.to_high(fd)?;
    r.remember(end, p.pipe_id as u64, fd);
    Ok(fd)
}

/// Crust's fd `given` passed into the task (SCM_RIGHTS over a socketpair
/// the task makes, whose one end crust takes): its number there.
fn pass_fd(r: &mut FdRestorer, given: i32) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let what = || format!("passing the inherited fd {given} to process {}", r.task.pid);
    let pair = r.scratch.reset().put(&[0u8; 8])?;
    let kind = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64;
    r.task.call("socketpair", libc::SYS_socketpair, [libc::AF_UNIX as u64, kind, 0, pair, 0, 0])?;
    let mut ends = [0u8; 8];
    r.scratch.read(pair, &mut ends)?;
    let (send_end, recv_end) = (i32::from_ne_bytes(ends[..4].try_into().unwrap_or_default()), i32::from_ne_bytes(ends[4..].try_into().unwrap_or_default()));
    let sent = (|| {
        let mine = super::take_fd(r.task.pid, send_end).ctx(what)?;
        let iov = [std::io::IoSlice::new(b"f")];
        let fds = [given];
        nix::sys::socket::sendmsg::<()>(mine.as_raw_fd(), &iov, &[nix::sys::socket::ControlMessage::ScmRights(&fds)], nix::sys::socket::MsgFlags::empty(), None).ctx(what)?;
        // A msghdr of one byte's iovec and room for one fd's cmsg.
        let byte = r.scratch.reset().put(&[0u8; 8])?;
        let iov = r.scratch.put_u64s(&[byte, 1])?;
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        let space = unsafe { libc::CMSG_SPACE(4) } as u64;
        let control = r.scratch.put(&vec![0u8; space as usize])?;
        let msg = r.scratch.put_u64s(&[0, 0, iov, 1, control, space, 0])?;
        r.task.call("recvmsg of an inherited fd", libc::SYS_recvmsg, [recv_end as u64, msg, libc::MSG_CMSG_CLOEXEC as u64, 0, 0, 0])?;
        let mut cmsg = vec![0u8; space as usize];
        r.scratch.read(control, &mut cmsg)?;
        let (level, kind) = (i32::from_ne_bytes(cmsg[8..12].try_into().unwrap_or_default()), i32::from_ne_bytes(cmsg[12..16].try_into().unwrap_or_default()));
        if (level, kind) != (libc::SOL_SOCKET, libc::SCM_RIGHTS) {
            return Err(Error::Invalid(format!("{}: no fd arrived", what())));
        }
        Ok(i32::from_ne_bytes(cmsg[16..20].try_into().unwrap_or_default()) as u64)
    })();
    for end in [send_end, recv_end] {
        r.task.call("close", libc::SYS_close, [end as u64, 0, 0, 0, 0, 0])?;
    }
    sent
}

/// The bytes queued in a pipe (or a named FIFO), copied with tee(2) so they
/// stay in it, and the pipe's buffer size.
pub(super) fn peek_pipe(fd: &OpenFd) -> Result<(Vec<u8>, u32)> {
    let what = || format!("reading the data in pipe {} (fd {} of process {})", fd.link, fd.fd, fd.pid);
    // A read end of the same pipe, whichever end the task holds.
    let path = format!("/proc/{}/fd/{}", fd.pid, fd.fd);
    let src = nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .ctx(what)?;
    let size = fcntl(&src, FcntlArg::F_GETPIPE_SZ).ctx(what)?;
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).ctx(what)?;
    fcntl(&wr, FcntlArg::F_SETPIPE_SZ(size)).ctx(what)?;
    let mut data = Vec::new();
    match nix::fcntl::tee(&src, &wr, size as usize, nix::fcntl::SpliceFFlags::SPLICE_F_NONBLOCK) {
        Ok(n) if n > 0 => {
            drop(wr);
            std::fs::File::from(rd).read_to_end(&mut data).ctx(what)?;
        }
        Ok(_) | Err(Errno::EAGAIN) => {}
        Err(e) => return Err(e).ctx(what),
    }
    Ok((data, size as u32))
}

/// Put the saved bytes (and buffer size) back into a new pipe (or a named
/// FIFO), from crust, through another open of the task's fd `wr`, which
/// must have a reader.
pub(super) fn fill_pipe(pid: i32, wr: u64, saved: Option<&(PipeDataEntry, Vec<u8>)>) -> Result<()> {
    let Some((PipeDataEntry { size, .. }, data)) = saved else { return Ok(()) };
    let path = format!("/proc/{pid}/fd/{wr}");
    let what = || format!("refilling pipe {path}");
    let mut pipe = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&path).ctx(what)?;
    if let Some(size) = size {
        let size = i32::try_from(*size).map_err(|_| Error::image("pipes-data.img", format!("{}: pipe buffer size {size} is not an int", what())))?;
        fcntl(&pipe, FcntlArg::F_SETPIPE_SZ(size)).ctx(what)?;
    }
    // Writing makes the pipe look written now: its times are put back.
    let md = pipe.metadata().ctx(what)?;
    std::io::Write::write_all(&mut pipe, data).ctx(what)?;
    let (atime, mtime) = (TimeSpec::new(md.atime(), md.atime_nsec()), TimeSpec::new(md.mtime(), md.mtime_nsec()));
    nix::sys::stat::futimens(&pipe, &atime, &mtime).ctx(what)
}
