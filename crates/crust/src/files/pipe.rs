//! Pipes: both ends of one pipe share its inode (pipe_id), and the bytes sitting
//! in the pipe are saved once per pipe in pipes-data.img.

use std::io::Read;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::SFlag;

use super::{fown_of, FileTable, Handler, OpenFd};
use crate::error::{Context, Result};
use crate::images::proto::{FdTypes, FileEntry, PipeDataEntry, PipeEntry};

pub const HANDLER: Handler = Handler { name: "pipe", matches, dump };

fn matches(fd: &OpenFd) -> bool {
    fd.file_type() == SFlag::S_IFIFO && fd.link.starts_with("pipe:")
}

fn dump(fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
    let pipe_id = fd.stat.st_ino as u32;
    if !table.pipe_data.iter().any(|(d, _)| d.pipe_id == pipe_id) {
        let (data, size) = peek_pipe(fd)?;
        if !data.is_empty() {
            let entry = PipeDataEntry { pipe_id, bytes: data.len() as u32, size: Some(size) };
            table.pipe_data.push((entry, data));
        } else if size != 0 {
            table.pipe_data.push((PipeDataEntry { pipe_id, bytes: 0, size: Some(size) }, Vec::new()));
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
