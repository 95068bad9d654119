//! Pseudo-terminal pairs held inside the tree: a master (an fd of /dev/ptmx,
//! as a tmux or screen server holds one per pane) and its slave /dev/pts/N
//! (the stdin, stdout and stderr of the pane's shell, and the controlling
//! terminal of its session). Both are terminal files of tty.rs (type TTY, as
//! in CRIU): the master's tty_info_entry has the rdev of /dev/ptmx and the
//! pair's index, the slave's the settings of the terminal (termios, window
//! size, exclusive mode), the session it is the controlling terminal of and
//! that session's foreground group.
//!
//! A restore opens /dev/ptmx in the task and asks for the same index: the
//! kernel hands out the lowest free one, so crust keeps opening until it
//! gets it; a higher one means the old index is taken here, and the
//! restore fails (programs remember their terminal's name), as `crust
//! check` says beforehand. The settings are given
//! through crust's copy of the master, before any slave is opened again;
//! slaves are opened through the master (TIOCGPTPEER), with their flags as
//! they were.
//! The session leader makes the slave its controlling terminal (TIOCSCTTY)
//! before its files are opened (a /dev/tty of the session needs it), and
//! gives its foreground to the saved group (TIOCSPGRP).
//!
//! Refused by name at dump time: a master whose slave no process of the tree
//! holds (held outside, or closed), a slave held outside the tree, a locked
//! pair, data queued in either direction (FIONREAD of the master: what the
//! slave wrote; of the slave: what the master wrote, in complete lines when
//! the slave is canonical), a foreground group no process of the tree is in.
//! A slave whose master is outside the tree is a shell job's terminal, as
//! before (tty.rs).
//!
//! A pair of a container's own devpts instance (the tree's mount namespace
//! mounts a devpts the host does not) carries that instance's device in
//! tty_info_entry's `dev` (the kernel's encoding, as mnt_entry's root_dev),
//! on both ends: its numbers are its instance's, so pairs are told apart by
//! (index, dev), and its holders outside the tree by device and instance,
//! not by name. The restore makes that devpts anew (ns::mnt) and opens the
//! pair from its `ptmx`, where every number is free: a new instance hands
//! out the old numbers in order. The host's /dev/pts has no `dev`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::stat::SFlag;

use super::{take_fd, FdRestorer, FileTable, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::load::ProcessImage;
use crate::images::proto::{TtyInfoEntry, TtyPtyEntry, TtyType};

/// /dev/ptmx (and /dev/pts/ptmx) is character device 5:2.
fn ptmx_rdev() -> u64 {
    libc::makedev(5, 2)
}

/// An fd of a pty master.
pub(super) fn is_master(fd: &OpenFd) -> bool {
    fd.file_type() == SFlag::S_IFCHR && fd.stat.st_rdev == ptmx_rdev()
}

/// The settings of a master, as tty-info.img has them.
pub(super) fn is_master_info(info: &TtyInfoEntry) -> bool {
    info.r#type == TtyType::Pty as i32 && u64::from(info.rdev) == ptmx_rdev()
}

/// The index of the pair a master fd belongs to (fdinfo's `tty-index:`).
pub(super) fn master_index(fd: &OpenFd) -> Result<u32> {
    Ok(fd.info_number("tty-index:", 10)? as u32)
}

/// What a dump keeps about the masters and slaves it met, for the checks
/// made once every fd of the tree is dumped.
#[derive(Default)]
pub(super) struct Seen {
    /// By pair (index, instance): who holds the master, for messages.
    masters: Vec<(Pair, String)>,
    /// By pair: bytes queued towards the slave, who holds it, and its file
    /// (st_dev, st_rdev), to find holders outside the tree.
    slaves: Vec<(Pair, i32, String, (u64, u64))>,
}

/// A pair: its index and its devpts instance (None: the host's /dev/pts).
type Pair = (u32, Option<u32>);

fn pair_of(info: &TtyInfoEntry) -> Option<Pair> {
    Some((info.pty.as_ref()?.index, info.dev))
}

/// The devpts instance of a pty file of the tree, as tty_info_entry's `dev`:
/// None for the host's /dev/pts; for a container's own devpts (mounted in
/// the tree's mount namespace, not in crust's), its device. A pty of any
/// other instance is refused. A slave's file is on its instance; a master's
/// instance is its slave's, found by opening the slave O_PATH through the
/// master (TIOCGPTPEER), which neither opens the terminal nor needs it
/// unlocked.
pub(super) fn instance(fd: &OpenFd, table: &FileTable) -> Result<Option<u32>> {
    let name = who(fd);
    let st_dev = if is_master(fd) {
        let master = fd.take()?;
        // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
        let peer = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_PATH | libc::O_CLOEXEC) };
        if peer < 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| format!("TIOCGPTPEER of {name}"));
        }
        // SAFETY: a new fd of crust's own.
        let peer = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(peer) };
        nix::sys::stat::fstat(&peer).ctx(|| format!("stat of the slave of {name}"))?.st_dev
    } else {
        fd.stat.st_dev
    };
    let host = nix::sys::stat::stat("/dev/pts").ctx(|| "stat of the host's /dev/pts")?.st_dev;
    if st_dev == host {
        return Ok(None);
    }
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    let devpts_in = |pid: u32| -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let fstype = f.iter().position(|w| *w == "-").and_then(|i| f.get(i + 1))?;
            (*fstype == "devpts" && f.get(2) == Some(&format!("{major}:{minor}").as_str())).then(|| f[4].to_string())
        })
    };
    let refuse = |what: &str| Err(fd.unsupported(&format!("a pty of a devpts instance ({major}:{minor}) {what} is")));
    if table.view.is_none() {
        return refuse("other than the host's /dev/pts, in a tree without a mount namespace of its own,");
    }
    if let Some(at) = devpts_in(std::process::id()) {
        return refuse(&format!("the host mounts too (at {at}), not the container's own,"));
    }
    if devpts_in(fd.pid as u32).is_none() {
        return refuse("not mounted in the tree's mount namespace");
    }
    Ok(Some((major << 20) | (minor & 0xf_ffff)))
}

/// An int an ioctl of crust's copy of a terminal reads.
fn ioctl_int(fd: BorrowedFd, request: libc::Ioctl, what: &str, who: &str) -> Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: each request used here writes one int at the address given.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut v) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("{what} of {who}"));
    }
    Ok(v)
}

/// An ioctl of crust's copy of a terminal that takes an int by address.
fn ioctl_set(fd: BorrowedFd, request: libc::Ioctl, value: libc::c_int, what: &str) -> Result<()> {
    // SAFETY: each request used here reads one int at the address given.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, &value) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| what.to_string());
    }
    Ok(())
}

fn who(fd: &OpenFd) -> String {
    format!("fd {} of process {} ({})", fd.fd, fd.pid, fd.link)
}

/// The tty-info entry of a master: its index, packet mode. A locked pair or
/// one with bytes the slave wrote and the master has not read is refused.
pub(super) fn master_info(fd: &OpenFd, id: u32, dev: Option<u32>, table: &mut FileTable) -> Result<TtyInfoEntry> {
    let index = master_index(fd)?;
    let file = fd.take()?.as_fd();
    let name = who(fd);
    if ioctl_int(file, libc::TIOCGPTLCK, "TIOCGPTLCK", &name)? != 0 {
        return Err(fd.unsupported(&format!("a locked pty master (its slave /dev/pts/{index} cannot be opened) is")));
    }
    let queued = ioctl_int(file, libc::FIONREAD, "FIONREAD", &name)?;
    if queued > 0 {
        return Err(fd.unsupported(&format!("a pty master with {queued} bytes its slave /dev/pts/{index} wrote not read yet is")));
    }
    let packet = ioctl_int(file, libc::TIOCGPKT, "TIOCGPKT", &name)? != 0;
    table.extras.get_mut::<Seen>().masters.push(((index, dev), name));
    Ok(TtyInfoEntry {
        id,
        r#type: TtyType::Pty as i32,
        packet_mode: packet,
        rdev: ptmx_rdev() as u32,
        pty: Some(TtyPtyEntry { index }),
        dev,
        ..Default::default()
    })
}

/// What a slave's dump adds: its exclusive mode, the session it is the
/// controlling terminal of and that session's foreground group (from /proc:
/// asking the terminal needs it to be crust's own), and the bytes queued
/// towards it, refused later if its master is in the tree.
pub(super) fn slave_info(fd: &OpenFd, index: u32, info: &mut TtyInfoEntry, table: &mut FileTable) -> Result<()> {
    let file = fd.take()?.as_fd();
    let name = who(fd);
    info.exclusive = ioctl_int(file, libc::TIOCGEXCL, "TIOCGEXCL", &name)? != 0;
    let rdev = fd.stat.st_rdev as i32;
    for &pid in &table.tree {
        let st = crate::proc::stat(pid, pid)?;
        if st.tty_nr == rdev {
            info.sid = table.pids.of(st.session) as u32;
            info.pgrp = table.pids.of(st.tpgid.max(0)) as u32;
            break;
        }
    }
    let queued = ioctl_int(file, libc::FIONREAD, "FIONREAD", &name)?;
    let seen = ((index, info.dev), queued, name, (fd.stat.st_dev, fd.stat.st_rdev));
    table.extras.get_mut::<Seen>().slaves.push(seen);
    Ok(())
}

/// Once every fd of the tree is dumped: each master's slave is held in the
/// tree and nowhere else, nothing is queued towards it, and its foreground
/// group has a process of the tree in it.
pub(super) fn check_pairs(table: &FileTable, infos: &[TtyInfoEntry]) -> Result<()> {
    let Some(seen) = table.extras.get::<Seen>() else { return Ok(()) };
    for (pair, master) in &seen.masters {
        let index = pair.0;
        let refuse = |what: String| Error::unsupported(format!("pty master {master}"), format!("{what} not supported"));
        let Some(slave) = infos.iter().find(|i| !is_master_info(i) && pair_of(i) == Some(*pair)) else {
            return Err(refuse(format!("a pty whose slave /dev/pts/{index} no process of the tree holds (held outside it, or closed) is")));
        };
        let file = seen.slaves.iter().find(|s| s.0 == *pair).map(|s| s.3);
        if let Some(pid) = file.and_then(|f| outside_holder(f, &table.tree)) {
            return Err(refuse(format!("a pty whose slave /dev/pts/{index} process {pid} outside the tree holds too is")));
        }
        if let Some((_, queued, holder, _)) = seen.slaves.iter().find(|(p, q, _, _)| p == pair && *q > 0) {
            return Err(refuse(format!("a pty with {queued} bytes written to its slave ({holder}) not read yet is")));
        }
        if slave.pgrp != 0 && !table.tree.iter().any(|&p| crate::proc::stat(p, p).is_ok_and(|s| table.pids.of(s.pgrp) as u32 == slave.pgrp)) {
            return Err(refuse(format!("a pty whose foreground process group {} has no process of the tree in it is", slave.pgrp)));
        }
    }
    Ok(())
}

/// A process outside the tree with an fd of the slave whose file has
/// (st_dev, st_rdev) `file`: the same device on the same devpts instance
/// (a container's /dev/pts/0 is not the host's, though both are named so).
fn outside_holder(file: (u64, u64), tree: &[i32]) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let procs = std::fs::read_dir("/proc").ok()?;
    procs.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter(|p| !tree.contains(p)).find(|pid| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        let named_pts = |f: &std::fs::DirEntry| std::fs::read_link(f.path()).is_ok_and(|l| l.starts_with("/dev/pts/"));
        fds.flatten().filter(named_pts).any(|f| std::fs::metadata(f.path()).is_ok_and(|m| (m.dev(), m.rdev()) == file))
    })
}

/// The master of a slave's pair, if the tree held it.
pub(super) fn master_of<'a>(slave: &TtyInfoEntry, infos: &'a [TtyInfoEntry]) -> Option<&'a TtyInfoEntry> {
    let pair = pair_of(slave)?;
    if is_master_info(slave) || slave.r#type != TtyType::Pty as i32 {
        return None;
    }
    infos.iter().find(|i| is_master_info(i) && pair_of(i) == Some(pair))
}

/// The slave of a master's pair (check_pairs made sure there is one).
fn slave_of<'a>(master: &TtyInfoEntry, infos: &'a [TtyInfoEntry]) -> Result<&'a TtyInfoEntry> {
    infos.iter().find(|i| master_of(i, infos).is_some_and(|m| m.id == master.id)).ok_or_else(|| {
        Error::Invalid(format!("tty-info.img: pty master {} has no slave", master.id))
    })
}

/// Most ptys opened and closed again to get a pair its old index.
const MAX_TRIES: usize = 1024;

/// The pair of `master` in the task: made once (with the settings of its
/// slave), then found again. Returns the master's fd.
/// Every pair is made in the root, before anything forks: its master is
/// there for any process to take.
pub(super) fn pair(r: &mut FdRestorer, master: &TtyInfoEntry, infos: &[TtyInfoEntry]) -> Result<u64> {
    let want = master.pty.as_ref().map_or(0, |p| p.index);
    // Made pairs are remembered by their master's entry: two instances may
    // each have a pair of one number.
    if let Some(fd) = r.made("pty master", master.id.into()) {
        return Ok(fd);
    }
    let slave = slave_of(master, infos)?;
    let ptmx = ptmx_of(r.image, master);
    let mut spare = Vec::new();
    let (fd, file, index) = loop {
        let fd = r.open_low(&ptmx, (libc::O_RDWR | libc::O_NOCTTY) as u32)?;
        let file = take_fd(r.task.pid, fd as i32).ctx(|| format!("taking the new pty master of process {}", r.task.pid))?;
        let index = ioctl_int(file.as_fd(), libc::TIOCGPTN, "TIOCGPTN", "a new pty master")? as u32;
        if index >= want || spare.len() >= MAX_TRIES {
            break (fd, file, index);
        }
        spare.push(fd);
    };
    for s in spare {
        r.task.call("close of a spare pty", libc::SYS_close, [s, 0, 0, 0, 0, 0])?;
    }
    if index != want {
        // Programs keep their terminal's name (ttyname, tmux's pane_tty):
        // another number would be state changed under them.
        r.task.call("close of a pty", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        let why = if index > want {
            format!("is taken here (the kernel handed out /dev/pts/{index})")
        } else {
            format!("could not be reached: {MAX_TRIES} lower numbers are free here")
        };
        return Err(Error::Invalid(format!("pty /dev/pts/{want} {why}: the pair cannot come back under its number")));
    }
    settle(&file, master, slave)?;
    let fd = r.to_high(fd)?;
    r.remember("pty master", master.id.into(), fd);
    Ok(fd)
}

/// Where the task opens a new master of the pair of `master`: the `ptmx` of
/// the container's devpts the restore made anew (inside the tree's new
/// root), or the host's /dev/ptmx. A `dev` the tree's mounts do not make
/// (criu's images may give the host's) is the host's.
fn ptmx_of(img: &crate::images::load::DumpImage, master: &TtyInfoEntry) -> String {
    match master.dev.and_then(|dev| crate::ns::own_devpts(img, dev)) {
        Some(at) => format!("{}/ptmx", at.trim_end_matches('/')),
        None => "/dev/ptmx".to_string(),
    }
}

/// The pair's settings, through crust's copy of the master (termios and
/// window size of a master are its slave's): unlocked, then the slave's
/// termios and window size, the master's packet mode.
fn settle(file: &OwnedFd, master: &TtyInfoEntry, slave: &TtyInfoEntry) -> Result<()> {
    let fd = file.as_fd();
    ioctl_set(fd, libc::TIOCSPTLCK, 0, "unlocking a new pty")?;
    if let Some(t) = &slave.termios {
        super::tty::set_termios(fd, t, slave.id)?;
    }
    if let Some(w) = &slave.winsize {
        let bad = |v: u32| Error::Invalid(format!("tty-info.img: terminal {}: window size {v} is out of range", slave.id));
        let size = |v: u32| u16::try_from(v).map_err(|_| bad(v));
        let ws = rustix::termios::Winsize {
            ws_row: size(w.ws_row)?,
            ws_col: size(w.ws_col)?,
            ws_xpixel: size(w.ws_xpixel)?,
            ws_ypixel: size(w.ws_ypixel)?,
        };
        rustix::termios::tcsetwinsize(fd, ws).ctx(|| "setting a pty's window size")?;
    }
    ioctl_set(fd, libc::TIOCPKT, master.packet_mode.into(), "setting a pty master's packet mode")
}

/// The master file of a pair, its open flags as they were.
pub(super) fn restore_master(r: &mut FdRestorer, flags: u32, master: &TtyInfoEntry, infos: &[TtyInfoEntry]) -> Result<u64> {
    let fd = pair(r, master, infos)?;
    r.task.call("fcntl(F_SETFL) of a pty master", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, flags as u64, 0, 0, 0])?;
    Ok(fd)
}

/// The slave of the master at `master_fd` opened in the task, above the
/// image's fds, through the master (TIOCGPTPEER): its open flags are exactly
/// those given (an open of /dev/pts/N would add O_LARGEFILE, which a slave
/// opened that way, as openpty does, lacks), never as the controlling
/// terminal, and whatever /dev/pts is mounted here.
fn open_slave(r: &mut FdRestorer, master_fd: u64, flags: u32) -> Result<u64> {
    let flags = flags | libc::O_NOCTTY as u32;
    let fd = r.task.call("ioctl(TIOCGPTPEER)", libc::SYS_ioctl, [master_fd, libc::TIOCGPTPEER, flags.into(), 0, 0, 0])?;
    r.to_high(fd)
}

/// A slave file of a pair: the slave opened again (never as the controlling
/// terminal: that is the session leader's to take), exclusive if it was.
pub(super) fn restore_slave(r: &mut FdRestorer, flags: u32, slave: &TtyInfoEntry, master: &TtyInfoEntry, infos: &[TtyInfoEntry]) -> Result<u64> {
    let master_fd = pair(r, master, infos)?;
    let fd = open_slave(r, master_fd, flags)?;
    if slave.exclusive {
        r.task.call("ioctl(TIOCEXCL)", libc::SYS_ioctl, [fd, libc::TIOCEXCL, 0, 0, 0, 0])?;
    }
    Ok(fd)
}

/// The pty of the tree whose slave was the controlling terminal of the
/// session process `image` led, if any.
fn led_terminal<'a>(image: &ProcessImage, infos: &'a [TtyInfoEntry]) -> Option<(&'a TtyInfoEntry, &'a TtyInfoEntry)> {
    let pid = image.pid() as u32;
    infos.iter().filter(|i| i.sid == pid).find_map(|i| Some((i, master_of(i, infos)?)))
}

/// If process `image` led a session whose controlling terminal was a pty of
/// the tree, that pty becomes its controlling terminal again: right after
/// its setsid, before it forks the rest of its session (each process has its
/// own reference to its controlling terminal, taken at fork) and before its
/// files are opened (which may include /dev/tty).
pub(super) fn take_terminal(image: &ProcessImage, r: &mut FdRestorer, infos: &[TtyInfoEntry]) -> Result<()> {
    let pid = image.pid() as u32;
    let Some((slave, master)) = led_terminal(image, infos) else { return Ok(()) };
    // The last close of a slave takes it from the session it is the
    // controlling terminal of: the fd opened here stays (above the image's
    // fds, closed with the others of its kind) until the process's own fds
    // of the slave are in place, which it must have.
    let holds = image.fds.iter().any(|f| r.image.files.get(&f.id).and_then(|e| e.tty.as_ref()).is_some_and(|t| t.tty_info_id == slave.id));
    if !holds {
        let want = master.pty.as_ref().map_or(0, |p| p.index);
        return Err(Error::unsupported(
            format!("process {pid}"),
            format!("leading a session whose controlling terminal is pty /dev/pts/{want} without an fd of it is not supported"),
        ));
    }
    let master_fd = pair(r, master, infos)?;
    let fd = open_slave(r, master_fd, libc::O_RDWR as u32)?;
    r.task.call("ioctl(TIOCSCTTY)", libc::SYS_ioctl, [fd, libc::TIOCSCTTY, 0, 0, 0, 0])?;
    Ok(())
}

/// Once the fds of process `image` are in place and every process group
/// exists: the leader of a session gives its terminal's foreground to the
/// saved group, through its own fd of the slave (take_terminal made sure
/// there is one).
pub(super) fn set_foreground(image: &ProcessImage, r: &mut FdRestorer, infos: &[TtyInfoEntry]) -> Result<()> {
    let Some((slave, _)) = led_terminal(image, infos) else { return Ok(()) };
    if slave.pgrp == 0 {
        return Ok(());
    }
    let img = r.image;
    let is_slave = |id: u32| img.files.get(&id).and_then(|e| e.tty.as_ref()).is_some_and(|t| t.tty_info_id == slave.id);
    let Some(fd) = image.fds.iter().find(|f| is_slave(f.id)) else { return Ok(()) };
    let at = r.scratch.reset().put(&(slave.pgrp as i32).to_ne_bytes())?;
    r.task.call("ioctl(TIOCSPGRP)", libc::SYS_ioctl, [fd.fd as u64, libc::TIOCSPGRP, at, 0, 0, 0])?;
    Ok(())
}

/// Whether the session of process `pid` had a pty of the tree as its
/// controlling terminal (its /dev/tty files then lead there).
pub(super) fn session_has_pty(img: &crate::images::load::DumpImage, pid: i32, infos: &[TtyInfoEntry]) -> bool {
    let sid = img.processes.iter().find(|p| p.pid() == pid).map(|p| p.pstree.sid);
    sid.is_some_and(|sid| infos.iter().any(|i| i.sid == sid && master_of(i, infos).is_some()))
}

/// What stands in the way of restoring a pair's controlling terminal: its
/// session leader must be a live process of the image.
pub(super) fn problems(img: &crate::images::load::DumpImage, these: &[TtyInfoEntry], infos: &[TtyInfoEntry]) -> Vec<String> {
    let live = |sid: u32| img.processes.iter().any(|p| p.pstree.pid == sid && p.zombie.is_none());
    let leaderless = these
        .iter()
        .filter(|i| i.sid != 0 && master_of(i, infos).is_some() && !live(i.sid))
        .map(|i| format!("pty {}: the leader of session {}, whose controlling terminal it is, is not a live process of the image", i.id, i.sid));
    let taken = these
        .iter()
        .filter(|i| is_master_info(i) && i.dev.is_none_or(|dev| crate::ns::own_devpts(img, dev).is_none()))
        .filter_map(|i| i.pty.as_ref())
        .filter(|p| std::path::Path::new(&format!("/dev/pts/{}", p.index)).exists())
        .map(|p| format!("pty /dev/pts/{} is taken here: the pair cannot come back under its number", p.index));
    leaderless.chain(taken).collect()
}
