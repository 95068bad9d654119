//! pidfds (pidfd_open, clone with CLONE_PIDFD) of processes of the tree:
//! fdinfo names the process (`Pid:`), whose pid a restore gives back, so a new
//! pidfd of that pid in the task is one of the restored process. A pidfd of a
//! process outside the tree, or of one that has exited and been reaped, has
//! nothing to point to after a restore: refused by name.

use super::{fown_of, FdRestorer, FileKind, FileTable, OpenFd};
use crate::error::Result;
use crate::images::load::DumpImage;
use crate::images::proto::{FdTypes, FileEntry, PidfdEntry};

pub struct Pidfd;

/// PIDFD_THREAD: a pidfd of one thread (Linux 6.9), which is O_EXCL.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

impl FileKind for Pidfd {
    fn name(&self) -> &'static str {
        "pidfd"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Pidfd
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.link == "anon_inode:[pidfd]"
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let pid: i32 = fd.info_field("Pid:")?.parse().unwrap_or(-1);
        if pid <= 0 {
            return Err(fd.unsupported("a pidfd of a process that has exited and been reaped is"));
        }
        if !table.tree.contains(&pid) {
            return Err(fd.unsupported(&format!("a pidfd of process {pid}, outside the dumped tree, is")));
        }
        if fd.flags & PIDFD_THREAD != 0 {
            return Err(fd.unsupported("a pidfd of a thread (PIDFD_THREAD) is"));
        }
        let id = table.new_id();
        Ok(FileEntry {
            r#type: FdTypes::Pidfd as i32,
            id,
            pidfd: Some(PidfdEntry { id, ino: fd.stat.st_ino as u32, flags: fd.flags, nspid: table.pids.of(pid), fown: fown_of(fd, table)? }),
            ..Default::default()
        })
    }

    /// A pidfd several processes hold is made in the root before its
    /// children exist: only one of the root itself can be.
    fn check(&self, entry: &FileEntry, img: &DumpImage) -> Option<String> {
        let p = entry.pidfd.as_ref()?;
        let root = img.processes.first()?.pid();
        (p.nspid != root && super::shared_files(img).contains(&entry.id)).then(|| {
            format!("pidfd {} of process {} is held by several processes: this is not supported yet", entry.id, p.nspid)
        })
    }

    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let p = entry.pidfd.as_ref().ok_or_else(|| super::missing(entry, "pidfd"))?;
        let flags = p.flags & libc::O_NONBLOCK as u32;
        let what = format!("pidfd_open of process {}", p.nspid);
        let fd = r.task.call(&what, libc::SYS_pidfd_open, [p.nspid as u64, flags as u64, 0, 0, 0, 0])?;
        r.to_high(fd)
    }
}
