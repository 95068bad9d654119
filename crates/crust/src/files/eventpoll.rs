//! epoll: the files it watches, each with its events and data, by the fd
//! number it was added under. A new epoll is made with the other files; the
//! targets are added to it once every fd of its process is at its number.

use nix::sys::stat::stat;

use super::{fown_of, FdRestorer, FileTable, FileKind, OpenFd};
use crate::error::{Error, Result};
use crate::images::proto::{EventpollFileEntry, EventpollTfdEntry, FdTypes, FileEntry};

pub struct Eventpoll;

impl FileKind for Eventpoll {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Eventpoll
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.link == "anon_inode:[eventpoll]"
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let id = table.new_id();
        let mut targets = Vec::new();
        for line in fd.info.lines().filter(|l| l.starts_with("tfd:")) {
            let (tfd, events, data, ino) = parse_target(line).ok_or_else(|| {
                Error::io_other(format!("process {}: fd {}: reading the epoll target {line:?}", fd.pid, fd.fd), "unexpected format")
            })?;
            // The restore adds the file at that fd number: it must still be there,
            // the very file (an inode alone does not tell: all eventfds share one).
            let here = stat(format!("/proc/{}/fd/{tfd}", fd.pid).as_str()).map(|st| st.st_ino);
            if here != Ok(ino) || !watches(fd.pid, fd.fd, tfd) {
                return Err(fd.unsupported(&format!("epolls watching a file no longer at its fd {tfd} are")));
            }
            // A one-shot entry that fired is disarmed; adding it back would arm it.
            let armed = events & !(EPOLLONESHOT | EPOLLET | EPOLLWAKEUP | EPOLLEXCLUSIVE) != 0;
            if events & EPOLLONESHOT != 0 && !armed {
                return Err(fd.unsupported("epolls holding a fired one-shot entry are"));
            }
            targets.push(EventpollTfdEntry { id, tfd, events, data, dev: None, inode: Some(ino), pos: None });
        }
        Ok(FileEntry {
            r#type: FdTypes::Eventpoll as i32,
            id,
            epfd: Some(EventpollFileEntry { id, flags: fd.flags, fown: fown_of(fd, &table.tree)?, tfd: targets }),
            ..Default::default()
        })
    }

    fn restore(&self, file: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        entry(file)?;
        let fd = r.task.call("epoll_create1", libc::SYS_epoll_create1, [0, 0, 0, 0, 0, 0])?;
        r.to_high(fd)
    }

    fn finish(&self, file: &FileEntry, fd: u64, r: &mut FdRestorer) -> Result<()> {
        for t in &entry(file)?.tfd {
            // struct epoll_event is packed on x86-64: u32 events, u64 data.
            let mut event = t.events.to_le_bytes().to_vec();
            event.extend_from_slice(&t.data.to_le_bytes());
            let addr = r.scratch.reset().put(&event)?;
            let what = format!("adding fd {} to epoll fd {fd}", t.tfd);
            r.task.call(&what, libc::SYS_epoll_ctl, [fd, libc::EPOLL_CTL_ADD as u64, t.tfd as u64, addr, 0, 0])?;
        }
        Ok(())
    }
}

/// One `tfd:` line of an epoll's fdinfo:
/// `tfd: N events: HEX data: HEX  pos:N ino:HEX sdev:HEX`.
fn parse_target(line: &str) -> Option<(u32, u32, u64, u64)> {
    let mut words = line.split_whitespace();
    let mut field = |name: &str| -> Option<String> {
        let w = words.next()?;
        match w.strip_prefix(name) {
            Some("") => words.next().map(str::to_string),
            Some(v) => Some(v.to_string()),
            None => None,
        }
    };
    let tfd = field("tfd:")?.parse().ok()?;
    let events = u32::from_str_radix(&field("events:")?, 16).ok()?;
    let data = u64::from_str_radix(&field("data:")?, 16).ok()?;
    let _pos = field("pos:")?;
    let ino = u64::from_str_radix(&field("ino:")?, 16).ok()?;
    Some((tfd, events, data, ino))
}

const EPOLLONESHOT: u32 = libc::EPOLLONESHOT as u32;
const EPOLLET: u32 = libc::EPOLLET as u32;
const EPOLLWAKEUP: u32 = libc::EPOLLWAKEUP as u32;
const EPOLLEXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;

/// kcmp(KCMP_EPOLL_TFD): is the file at fd `tfd` of `pid` the one epoll
/// `epfd` of `pid` watches under that number?
fn watches(pid: i32, epfd: i32, tfd: u32) -> bool {
    const KCMP_EPOLL_TFD: libc::c_int = 7;
    // struct kcmp_epoll_slot { efd, tfd, toff }
    let slot: [u32; 3] = [epfd as u32, tfd, 0];
    // The kernel reads the slot, alive here for the call.
    super::kcmp(pid, pid, KCMP_EPOLL_TFD, tfd as u64, slot.as_ptr() as u64)
}

fn entry(file: &FileEntry) -> Result<&EventpollFileEntry> {
    file.epfd.as_ref().ok_or_else(|| super::missing(file, "epoll"))
}

#[cfg(test)]
mod tests {
    use super::parse_target;

    #[test]
    fn fdinfo_target_lines_are_read() {
        let line = "tfd:        4 events: 80000019 data:                4  pos:0 ino:14c93e sdev:f";
        assert_eq!(parse_target(line), Some((4, 0x8000_0019, 4, 0x14c93e)));
        let line = "tfd:       12 events:       19 data: ffffffffffffffff  pos:7 ino:40e sdev:10";
        assert_eq!(parse_target(line), Some((12, 0x19, u64::MAX, 0x40e)));
        assert_eq!(parse_target("tfd: x events: 1"), None);
    }
}
