//! Named FIFOs, as CRIU stores them: a FIFO entry (the FIFO's inode as its
//! pipe_id) naming a regular-file entry of files.img with the path and the
//! open flags, and the bytes queued in the FIFO, saved once per FIFO in
//! fifo-data.img without taking them out of it.
//!
//! A restore reopens the path in the task. An O_RDONLY or O_WRONLY open of a
//! FIFO waits for the other side, so a helper opened O_RDWR (both sides) is
//! held while the FIFO is opened with its saved flags and its bytes are put
//! back, then closed.

use nix::sys::stat::{stat, SFlag};

use super::pipe::{fill_pipe, peek_pipe};
use super::reg::RegularFile;
use super::{ghost, write_with_data, FdRestorer, FileKind, FileTable, OpenFd};
use crate::error::{Error, Result};
use crate::images::load::{read_with_data, DumpImage};
use crate::images::proto::{FdTypes, FifoEntry, FileEntry, PipeDataEntry, RegFileEntry};
use crate::images::{ImageDir, Kind};

pub struct Fifo;

/// The bytes in each FIFO, with its buffer size (fifo-data.img).
#[derive(Default)]
struct FifoData(Vec<(PipeDataEntry, Vec<u8>)>);

/// How a restore remembers the FIFOs whose bytes are back in them.
const REFILLED: &str = "fifo refilled";

impl FileKind for Fifo {
    fn name(&self) -> &'static str {
        "named FIFO"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Fifo
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.file_type() == SFlag::S_IFIFO && fd.link.starts_with('/')
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        if fd.link.ends_with(ghost::DELETED) {
            return Err(fd.unsupported("deleted named FIFOs are"));
        }
        let pipe_id = fd.stat.st_ino as u32;
        if !table.extras.get_mut::<FifoData>().0.iter().any(|(d, _)| d.pipe_id == pipe_id) {
            let (data, size) = peek_pipe(fd)?;
            let entry = PipeDataEntry { pipe_id, bytes: data.len() as u32, size: Some(size) };
            table.extras.get_mut::<FifoData>().0.push((entry, data));
        }
        // Path, flags and owner as for any file reopened by path.
        let regf = RegularFile.dump(fd, table)?;
        let regf_id = regf.id;
        table.files.push(regf);
        let id = table.new_id();
        Ok(FileEntry {
            r#type: FdTypes::Fifo as i32,
            id,
            fifo: Some(FifoEntry { id, pipe_id, regf_id: Some(regf_id) }),
            ..Default::default()
        })
    }

    fn write_images(&self, table: &FileTable, dir: &mut ImageDir) -> Result<u64> {
        match table.extras.get::<FifoData>() {
            Some(saved) => write_with_data(dir, "fifo-data.img", Kind::FifoData, &saved.0),
            None => Ok(0),
        }
    }

    /// fifo-data.img; and every FIFO must name its path's regular-file entry.
    fn load_images(&self, img: &mut DumpImage) -> Result<()> {
        for f in img.files.values().filter_map(|f| f.fifo.as_ref()) {
            if f.regf_id.and_then(|id| img.files.get(&id)).and_then(|r| r.reg.as_ref()).is_none() {
                let what = format!("FIFO {} names no regular-file entry for its path", f.id);
                return Err(Error::image(img.dir.join("files.img"), what));
            }
        }
        let saved = read_with_data::<PipeDataEntry>(&img.dir.join("fifo-data.img"), Kind::FifoData, |e| e.bytes as u64)?;
        img.extras.insert(FifoData(saved));
        Ok(())
    }

    /// Every open of one FIFO spanning processes is made in the root, so
    /// that its bytes go back once.
    fn shared_object(&self, entry: &FileEntry) -> Option<u64> {
        entry.fifo.as_ref().map(|f| f.pipe_id as u64)
    }

    /// The path must be there (in the words of the regular-file entry's own
    /// check, so the two report it once), and still be a FIFO.
    fn check(&self, entry: &FileEntry, img: &DumpImage) -> Option<String> {
        let (fifo, reg) = match parts(entry, img) {
            Ok(p) => p,
            Err(e) => return Some(e.to_string()),
        };
        if let Some(problem) = img.files.get(&fifo.regf_id?).and_then(|regf| RegularFile.check(regf, img)) {
            return Some(problem);
        }
        // A FIFO on a mount the restore makes (a tmpfs from the images) is
        // not there yet: nothing to look at.
        let at = crate::ns::restore_view(img, &reg.name)?;
        match stat(at.as_str()) {
            Ok(st) if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFIFO.bits() => None,
            Ok(_) => Some(format!("{}: a named FIFO at dump time, but no longer one", reg.name)),
            Err(e) => Some(format!("{}: {e}", reg.name)),
        }
    }

    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let (fifo, reg) = parts(entry, r.image)?;
        let name = reg.name.as_str();
        let helper = r.open_low(name, (libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) as u32)?;
        // Reopen, never create; O_DIRECT (packet mode) cannot be given to
        // open(2) on a FIFO, only set after.
        let strip = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_DIRECT;
        let fd = r.open_path(name, reg.flags & !(strip as u32))?;
        if reg.flags & libc::O_DIRECT as u32 != 0 {
            let status = reg.flags & (libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME) as u32;
            r.task.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, status as u64, 0, 0, 0])?;
        }
        let key = fifo.pipe_id as u64;
        if r.made(REFILLED, key).is_none() {
            let saved = super::loaded::<FifoData>(r.image, "fifo-data.img")?.0.iter().find(|(e, _)| e.pipe_id == fifo.pipe_id);
            fill_pipe(r.task.pid, helper, saved)?;
            r.remember(REFILLED, key, fd);
        }
        r.task.call("close", libc::SYS_close, [helper, 0, 0, 0, 0, 0])?;
        Ok(fd)
    }
}

/// The FIFO entry of a file and the regular-file entry with its path and flags.
fn parts<'a>(entry: &'a FileEntry, img: &'a DumpImage) -> Result<(&'a FifoEntry, &'a RegFileEntry)> {
    let fifo = entry.fifo.as_ref().ok_or_else(|| super::missing(entry, "FIFO"))?;
    let reg = fifo.regf_id.and_then(|id| img.files.get(&id)).and_then(|f| f.reg.as_ref());
    let reg = reg.ok_or_else(|| super::missing(entry, "FIFO regular-file"))?;
    Ok((fifo, reg))
}
