//! Pipes: both ends of one pipe share its inode (pipe_id), and the bytes sitting
//! in the pipe are saved once per pipe in pipes-data.img.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::SFlag;

use super::{fown_of, FdRestorer, FileTable, Handler, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::proto::{FdTypes, FileEntry, PipeDataEntry, PipeEntry};

pub const HANDLER: Handler = Handler { name: "pipe", fd_type: FdTypes::Pipe, matches, dump, restore, finish: None };

fn matches(fd: &OpenFd) -> bool {
    fd.file_type() == SFlag::S_IFIFO && fd.link.starts_with("pipe:")
}

fn dump(fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
    let pipe_id = fd.stat.st_ino as u32;
    if !table.pipe_data.iter().any(|(d, _)| d.pipe_id == pipe_id) {
        let (data, size) = peek_pipe(fd)?;
        // Kept for its buffer size even when empty.
        if !data.is_empty() || size != 0 {
            let entry = PipeDataEntry { pipe_id, bytes: data.len() as u32, size: Some(size) };
            table.pipe_data.push((entry, data));
        }
    }
    let id = table.new_id();
    Ok(FileEntry {
        r#type: FdTypes::Pipe as i32,
        id,
        pipe: Some(PipeEntry { id, pipe_id, flags: fd.flags, fown: fown_of(fd)? }),
        ..Default::default()
    })
}

/// The bytes queued in a pipe, copied with tee(2) so they stay in it, and the
/// pipe's buffer size.
fn peek_pipe(fd: &OpenFd) -> Result<(Vec<u8>, u32)> {
    let what = || format!("reading the data in pipe {} (fd {} of process {})", fd.link, fd.fd, fd.pid);
    // A read end of the same pipe, whichever end the task holds.
    let path = format!("/proc/{}/fd/{}", fd.pid, fd.fd);
    let src = nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .ctx(what)?;
    let size = fcntl(&src, FcntlArg::F_GETPIPE_SZ).ctx(what)?;
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).ctx(what)?;
    fcntl(&wr, FcntlArg::F_SETPIPE_SZ(size)).ctx(what)?;
    let mut data = Vec::new();
    // SAFETY: tee between two pipe fds we own; no memory is passed.
    let n = unsafe { libc::tee(src.as_raw_fd(), wr.as_raw_fd(), size as usize, libc::SPLICE_F_NONBLOCK) };
    match Errno::result(n) {
        Ok(n) if n > 0 => {
            drop(wr);
            std::fs::File::from(rd).read_to_end(&mut data).ctx(what)?;
        }
        Ok(_) | Err(Errno::EAGAIN) => {}
        Err(e) => return Err(e).ctx(what),
    }
    Ok((data, size as u32))
}

fn restore(entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
    let p = entry.pipe.as_ref().ok_or_else(|| Error::Invalid(format!("file {}: pipe without its entry", entry.id)))?;
    let (rd, wr) = match r.pipes.get(&p.pipe_id) {
        Some(ends) => *ends,
        None => {
            let addr = r.scratch.reset().put(&[0u8; 8])?;
            r.task.call("pipe2", libc::SYS_pipe2, [addr, 0, 0, 0, 0, 0])?;
            let mut fds = [0u8; 8];
            r.scratch.read(addr, &mut fds)?;
            let rd = r.to_high(u32::from_le_bytes(fds[0..4].try_into().expect("4 bytes")) as u64)?;
            let wr = r.to_high(u32::from_le_bytes(fds[4..8].try_into().expect("4 bytes")) as u64)?;
            fill_pipe(r.task.pid, wr, r.image.pipe_data.get(&p.pipe_id))?;
            r.pipes.insert(p.pipe_id, (rd, wr));
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

/// Put the saved bytes (and buffer size) back into a new pipe, from crust,
/// through another open of the task's write end.
fn fill_pipe(pid: i32, wr: u64, saved: Option<&(Vec<u8>, Option<u32>)>) -> Result<()> {
    let Some((data, size)) = saved else { return Ok(()) };
    let path = format!("/proc/{pid}/fd/{wr}");
    let what = || format!("refilling pipe {path}");
    let mut pipe = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&path).ctx(what)?;
    if let Some(size) = size {
        fcntl(&pipe, FcntlArg::F_SETPIPE_SZ(*size as i32)).ctx(what)?;
    }
    std::io::Write::write_all(&mut pipe, data).ctx(what)
}
