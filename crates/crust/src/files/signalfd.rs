//! signalfd: which signals it reads, and its status flags. The signals
//! themselves are the task's pending signals, restored with the task.

use super::{fown_of, FdRestorer, FileTable, FileKind, OpenFd};
use crate::error::Result;
use crate::images::proto::{FdTypes, FileEntry, SignalfdEntry};

pub struct Signalfd;

impl FileKind for Signalfd {
    fn name(&self) -> &'static str {
        "signalfd"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Signalfd
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.link == "anon_inode:[signalfd]"
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let sigmask = fd.info_number("sigmask:", 16)?;
        let id = table.new_id();
        Ok(FileEntry {
            r#type: FdTypes::Signalfd as i32,
            id,
            sgfd: Some(SignalfdEntry { id, flags: fd.flags, fown: fown_of(fd, table)?, sigmask }),
            ..Default::default()
        })
    }

    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let e = entry.sgfd.as_ref().ok_or_else(|| super::missing(entry, "signalfd"))?;
        let mask = r.scratch.reset().put(&e.sigmask.to_le_bytes())?;
        let nonblock = e.flags & libc::O_NONBLOCK as u32;
        let fd = r.task.call("signalfd4", libc::SYS_signalfd4, [u64::MAX, mask, 8, nonblock as u64, 0, 0])?;
        r.to_high(fd)
    }
}

