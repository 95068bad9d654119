//! Pipes: both ends of one pipe share its inode (pipe_id), and the bytes sitting
//! in the pipe are saved once per pipe in pipes-data.img.

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
