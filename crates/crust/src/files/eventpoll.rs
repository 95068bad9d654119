//! epoll: the files it watches, each with its events and data, by the fd
//! number it was added under. A new epoll is made with the other files; the
//! targets are added to it once every fd of its process is at its number.
//!
//! A target whose fd was closed since (or now holds another file) is found
//! at another fd of the process by kcmp(KCMP_EPOLL_TFD), as CRIU does; the
//! restore puts it at its old number for the time of the epoll_ctl (moving
//! the file there now aside and back), so it is watched under that number
//! again. A target that no fd of the process holds (only another process, or
//! a mapping) is refused.

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
        let mut targets: Vec<EventpollTfdEntry> = Vec::new();
        for line in fd.info.lines().filter(|l| l.starts_with("tfd:")) {
            let (tfd, events, data, ino) = parse_target(line).ok_or_else(|| {
                Error::io_other(format!("process {}: fd {}: reading the epoll target {line:?}", fd.pid, fd.fd), "unexpected format")
            })?;
            // The restore adds the file at that fd number: it must still be there,
            // the very file (an inode alone does not tell: all eventfds share one).
            // Several targets may have been added under one number (a file,
            // then another that took its number): kcmp tells them apart by
            // their rank among those.
            let rank = targets.iter().filter(|t| t.tfd == tfd).count() as u32;
            let here = stat(format!("/proc/{}/fd/{tfd}", fd.pid).as_str()).map(|st| st.st_ino);
            let holder_fd = if here == Ok(ino) && watches(fd.pid, fd.fd, tfd, rank, tfd) {
                None
            } else {
                let holder = holder(fd.pid, fd.fd, tfd, rank).ok_or_else(|| {
                    fd.unsupported(&format!("epolls watching a file closed at its fd {tfd} that no other fd of the process holds are"))
                })?;
                Some(holder)
            };
            // A one-shot entry that fired is disarmed; adding it back would arm it.
            let armed = events & !(EPOLLONESHOT | EPOLLET | EPOLLWAKEUP | EPOLLEXCLUSIVE) != 0;
            if events & EPOLLONESHOT != 0 && !armed {
                return Err(fd.unsupported("epolls holding a fired one-shot entry are"));
            }
            targets.push(EventpollTfdEntry { id, tfd, events, data, dev: None, inode: Some(ino), pos: None, holder_fd });
        }
        Ok(FileEntry {
            r#type: FdTypes::Eventpoll as i32,
            id,
            epfd: Some(EventpollFileEntry { id, flags: fd.flags, fown: fown_of(fd, table)?, tfd: targets }),
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
            match t.holder_fd {
                Some(holder) if holder != t.tfd => add_from(r, fd, t, holder)?,
                _ => add(r, fd, t)?,
            }
        }
        Ok(())
    }
}

/// epoll_ctl(ADD) of target `t` in the task, at its fd number.
fn add(r: &mut FdRestorer, fd: u64, t: &EventpollTfdEntry) -> Result<()> {
    // struct epoll_event is packed on x86-64: u32 events, u64 data.
    let mut event = t.events.to_le_bytes().to_vec();
    event.extend_from_slice(&t.data.to_le_bytes());
    let addr = r.scratch.reset().put(&event)?;
    let what = format!("adding fd {} to epoll fd {fd}", t.tfd);
    r.task.call(&what, libc::SYS_epoll_ctl, [fd, libc::EPOLL_CTL_ADD as u64, t.tfd as u64, addr, 0, 0])?;
    Ok(())
}

/// Target `t`, whose file is at fd `holder` now, added under its old number:
/// the file is put there for the time of the epoll_ctl, and whatever was
/// there (another file, with its FD_CLOEXEC) put back.
fn add_from(r: &mut FdRestorer, fd: u64, t: &EventpollTfdEntry, holder: u32) -> Result<()> {
    let tfd = t.tfd as u64;
    let fd_flags = r.task.call("fcntl(F_GETFD)", libc::SYS_fcntl, [tfd, libc::F_GETFD as u64, 0, 0, 0, 0]);
    let aside = match fd_flags {
        Ok(flags) => Some((r.task.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [tfd, libc::F_DUPFD as u64, 0, 0, 0, 0])?, flags)),
        Err(Error::InTask { errno: nix::errno::Errno::EBADF, .. }) => None,
        Err(e) => return Err(e),
    };
    r.task.call("dup2", libc::SYS_dup2, [holder as u64, tfd, 0, 0, 0, 0])?;
    add(r, fd, t)?;
    match aside {
        Some((saved, flags)) => {
            r.task.call("dup2", libc::SYS_dup2, [saved, tfd, 0, 0, 0, 0])?;
            r.task.call("fcntl(F_SETFD)", libc::SYS_fcntl, [tfd, libc::F_SETFD as u64, flags, 0, 0, 0])?;
            r.task.call("close", libc::SYS_close, [saved, 0, 0, 0, 0, 0])?;
        }
        None => {
            r.task.call("close", libc::SYS_close, [tfd, 0, 0, 0, 0, 0])?;
        }
    }
    Ok(())
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

/// kcmp(KCMP_EPOLL_TFD): is the file at fd `candidate` of `pid` the one
/// epoll `epfd` of `pid` watches as the `rank`th (from 0) target added under
/// number `tfd`?
fn watches(pid: i32, epfd: i32, tfd: u32, rank: u32, candidate: u32) -> bool {
    const KCMP_EPOLL_TFD: libc::c_int = 7;
    // struct kcmp_epoll_slot { efd, tfd, toff }
    let slot: [u32; 3] = [epfd as u32, tfd, rank];
    // The kernel reads the slot, alive here for the call.
    super::kcmp(pid, pid, KCMP_EPOLL_TFD, candidate as u64, slot.as_ptr() as u64)
}

/// Another fd of `pid` that holds the file epoll `epfd` watches as its
/// `rank`th target under number `tfd`.
fn holder(pid: i32, epfd: i32, tfd: u32, rank: u32) -> Option<u32> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut fds: Vec<u32> = fds.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    fds.sort_unstable();
    fds.into_iter().find(|&n| watches(pid, epfd, tfd, rank, n))
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
