//! eventfd: a counter. Its value and status flags are all there is to it; the
//! restore makes a new one and adds the saved count to it.

use super::{fown_of, FdRestorer, FileTable, FileKind, OpenFd};
use crate::error::Result;
use crate::images::proto::{EventfdFileEntry, FdTypes, FileEntry};

pub struct Eventfd;

impl FileKind for Eventfd {
    fn name(&self) -> &'static str {
        "eventfd"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Eventfd
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.link == "anon_inode:[eventfd]"
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        // CRIU's image has no place for semaphore mode: refuse rather than lose
        // it. Kernels before 6.4 do not say; they are not this project's.
        match fd.info_field("eventfd-semaphore:") {
            Ok("0") => {}
            Ok(_) => return Err(fd.unsupported("eventfds in semaphore mode are")),
            Err(_) => log::warn!("process {}: fd {}: the kernel does not say whether this eventfd is a semaphore", fd.pid, fd.fd),
        }
        let counter = fd.info_number("eventfd-count:", 16)?;
        let id = table.new_id();
        Ok(FileEntry {
            r#type: FdTypes::Eventfd as i32,
            id,
            efd: Some(EventfdFileEntry { id, flags: fd.flags, fown: fown_of(fd, table)?, counter }),
            ..Default::default()
        })
    }

    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let e = entry.efd.as_ref().ok_or_else(|| super::missing(entry, "eventfd"))?;
        let nonblock = e.flags & libc::O_NONBLOCK as u32;
        let fd = r.task.call("eventfd2", libc::SYS_eventfd2, [0, nonblock as u64, 0, 0, 0, 0])?;
        // eventfd2 takes a 32-bit initial value; a write adds any 64-bit count.
        if e.counter != 0 {
            let value = r.scratch.reset().put(&e.counter.to_le_bytes())?;
            r.task.call("write to an eventfd", libc::SYS_write, [fd, value, 8, 0, 0, 0])?;
        }
        r.to_high(fd)
    }
}

