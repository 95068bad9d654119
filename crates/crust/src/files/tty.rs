//! Terminals: the slave side of a pseudo-terminal (/dev/pts/N), its master
//! (/dev/ptmx, see pty.rs for pairs the tree holds both ends of), and
//! /dev/tty, the controlling terminal. A pty's settings (termios, window
//! size, session and foreground group) go to tty-info.img once per terminal;
//! each open file of it to files.img. /dev/tty is a terminal of type CTTY, as
//! in CRIU. A slave whose master is not in the tree is a shell job's terminal.

use std::os::fd::AsRawFd;

use nix::sys::stat::SFlag;
use nix::sys::termios::tcgetattr;
use rustix::termios::tcgetwinsize;

use super::{fown_of, pty, FdRestorer, FileTable, FileKind, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_all, DumpImage, ProcessImage};
use crate::images::{ImageDir, Kind};
use crate::images::proto::{
    FdTypes, FileEntry, TermiosEntry, TtyFileEntry, TtyInfoEntry, TtyPtyEntry, TtyType, WinsizeEntry,
};

pub struct Terminal;

/// The settings of each terminal (tty-info.img), found by their id.
#[derive(Default)]
struct Infos(Vec<TtyInfoEntry>);

impl FileKind for Terminal {
    fn name(&self) -> &'static str {
        "terminal"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Tty
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        pts_index(fd).is_some() || is_ctty(fd) || pty::is_master(fd)
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let rdev = fd.stat.st_rdev as u32;
        if is_ctty(fd) {
            check_own_terminal(fd)?;
        }
        // Every master has the rdev of /dev/ptmx: its pair's index tells them apart.
        let index = if pty::is_master(fd) { Some(pty::master_index(fd)?) } else { pts_index(fd) };
        // A container's devpts numbers its ptys from 0 as the host's does.
        let dev = if index.is_some() { pty::instance(fd, table)? } else { None };
        let same = |t: &TtyInfoEntry| t.rdev == rdev && t.pty.as_ref().map(|p| p.index) == index && t.dev == dev;
        let info_id = match table.extras.get_mut::<Infos>().0.iter().find(|t| same(t)) {
            Some(t) => t.id,
            None => {
                let id = table.new_id();
                let info = match index {
                    Some(_) if pty::is_master(fd) => pty::master_info(fd, id, dev, table)?,
                    Some(index) => {
                        let mut info = tty_info(fd, id, index)?;
                        info.dev = dev;
                        pty::slave_info(fd, index, &mut info, table)?;
                        info
                    }
                    None => ctty_info(id, rdev),
                };
                table.extras.get_mut::<Infos>().0.push(info);
                id
            }
        };
        let id = table.new_id();
        Ok(FileEntry {
            r#type: FdTypes::Tty as i32,
            id,
            tty: Some(TtyFileEntry { id, tty_info_id: info_id, flags: fd.flags, fown: fown_of(fd, table)?, ..Default::default() }),
            ..Default::default()
        })
    }

    fn write_images(&self, table: &FileTable, dir: &mut ImageDir) -> Result<u64> {
        let Some(infos) = table.extras.get::<Infos>().filter(|i| !i.0.is_empty()) else { return Ok(0) };
        pty::check_pairs(table, &infos.0)?;
        let mut w = dir.writer("tty-info.img", Kind::TtyInfo)?;
        for t in &infos.0 {
            w.entry(t)?;
        }
        w.finish()
    }

    fn load_images(&self, img: &mut DumpImage) -> Result<()> {
        let path = img.dir.join("tty-info.img");
        let infos = if path.exists() { read_all::<TtyInfoEntry>(&path, Kind::TtyInfo)? } else { Vec::new() };
        // Every terminal file names its terminal's settings.
        for t in img.files.values().filter_map(|f| f.tty.as_ref()) {
            if !infos.iter().any(|i| i.id == t.tty_info_id) {
                return Err(Error::image(&path, format!("no terminal {} for file {}", t.tty_info_id, t.id)));
            }
        }
        img.extras.insert(Infos(infos));
        Ok(())
    }

    /// Pty pairs of the tree, for whichever process holds their files.
    fn make_in_root(&self, r: &mut FdRestorer) -> Result<()> {
        let img = r.image;
        let Some(infos) = img.extras.get::<Infos>() else { return Ok(()) };
        for master in infos.0.iter().filter(|i| pty::is_master_info(i)) {
            pty::pair(r, master, &infos.0)?;
        }
        Ok(())
    }

    fn check(&self, entry: &FileEntry, img: &DumpImage) -> Option<String> {
        terminal_problem(entry, img)
    }

    /// A shell job's terminal becomes the restoring terminal. Without --shell-job
    /// a terminal is not reopened by its number: pty numbers are reused, and the
    /// one with the same number may be someone else's session now.
    /// /dev/tty is opened again in the task: the controlling terminal of the
    /// restored process, which with --shell-job is the restoring terminal.
    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let t = entry.tty.as_ref().ok_or_else(|| super::missing(entry, "terminal"))?;
        let infos = &super::loaded::<Infos>(r.image, "tty-info.img")?.0;
        let info = infos.iter().find(|i| i.id == t.tty_info_id).ok_or_else(|| super::missing(entry, "terminal settings"))?;
        if pty::is_master_info(info) {
            return pty::restore_master(r, t.flags, info, infos);
        }
        if let Some(master) = pty::master_of(info, infos) {
            return pty::restore_slave(r, t.flags, info, master, infos);
        }
        let ctty = info.r#type == TtyType::Ctty as i32;
        match r.terminal {
            Some(_) if ctty => r.open_path(CTTY_PATH, t.flags),
            // The session's terminal is a pty of the tree, made its
            // controlling terminal before its files were opened.
            // (The task's pid as the images have it: asked inside.)
            None if ctty && pty::session_has_pty(r.image, r.task.call("getpid", libc::SYS_getpid, [0; 6])? as i32, infos) => {
                r.open_path(CTTY_PATH, t.flags)
            }
            Some(term) => r.open_path(term, t.flags | libc::O_NOCTTY as u32),
            None => Err(Error::Invalid(
                "the tree uses a terminal: restore it with --shell-job, from the terminal it should use".into(),
            )),
        }
    }
}

/// What stands in the way of restoring the terminal of `entry` here.
fn terminal_problem(entry: &FileEntry, img: &DumpImage) -> Option<String> {
    let infos = &img.extras.get::<Infos>()?.0;
    let t = entry.tty.as_ref()?;
    let info = infos.iter().filter(|i| i.id == t.tty_info_id);
    info.flat_map(|i| pty::problems(img, std::slice::from_ref(i), infos)).next()
}

/// Right after process `image` made its session: if its session's
/// controlling terminal was a pty of the tree, it takes that terminal.
pub fn take_terminal(image: &ProcessImage, r: &mut FdRestorer) -> Result<()> {
    let img = r.image;
    let Some(infos) = img.extras.get::<Infos>() else { return Ok(()) };
    pty::take_terminal(image, r, &infos.0)
}

/// Once the fds of process `image` are in place: if it leads a session
/// whose controlling terminal is a pty of the tree, it gives that terminal's
/// foreground to the saved group.
pub fn set_foreground(image: &ProcessImage, r: &mut FdRestorer) -> Result<()> {
    let img = r.image;
    let Some(infos) = img.extras.get::<Infos>() else { return Ok(()) };
    pty::set_foreground(image, r, &infos.0)
}

/// Majors of Unix98 pty slaves (/dev/pts/N).
const PTS_MAJORS: std::ops::RangeInclusive<u64> = 136..=143;

fn pts_index(fd: &OpenFd) -> Option<u32> {
    let rdev = fd.stat.st_rdev;
    let major = libc::major(rdev) as u64;
    (fd.file_type() == SFlag::S_IFCHR && PTS_MAJORS.contains(&major))
        .then(|| ((major - PTS_MAJORS.start()) as u32) * 256 + libc::minor(rdev))
}

/// /dev/tty, which stands for the controlling terminal of whoever opens it.
const CTTY_PATH: &str = "/dev/tty";

/// /dev/tty is character device 5:0.
fn is_ctty(fd: &OpenFd) -> bool {
    fd.file_type() == SFlag::S_IFCHR && fd.stat.st_rdev == libc::makedev(5, 0)
}

/// A /dev/tty file reaches the terminal that was its opener's controlling
/// terminal when it was opened; it is reopened as the restored process's
/// controlling terminal, so it must be the process's controlling terminal
/// still (not one left behind by setsid).
fn check_own_terminal(fd: &OpenFd) -> Result<()> {
    let tty = fd.take()?;
    let mut dev: u32 = 0;
    // SAFETY: TIOCGDEV writes one u32, the device number of the terminal behind the file.
    let r = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGDEV, &mut dev) };
    if r < 0 {
        let what = || format!("reading the terminal behind {} (fd {} of process {})", fd.link, fd.fd, fd.pid);
        return Err(std::io::Error::last_os_error()).ctx(what);
    }
    let ctty = crate::proc::stat(fd.pid, fd.pid)?.tty_nr as u32;
    if dev != ctty {
        return Err(fd.unsupported("/dev/tty of a terminal other than the process's controlling terminal is"));
    }
    Ok(())
}

fn ctty_info(id: u32, rdev: u32) -> TtyInfoEntry {
    TtyInfoEntry { id, r#type: TtyType::Ctty as i32, rdev, ..Default::default() }
}

fn tty_info(fd: &OpenFd, id: u32, index: u32) -> Result<TtyInfoEntry> {
    let what = || format!("reading terminal settings of {} (fd {} of process {})", fd.link, fd.fd, fd.pid);
    let tty = fd.take()?;
    let t = tcgetattr(tty).ctx(what)?;
    let ws = tcgetwinsize(tty).ctx(what)?;
    // Session and foreground group of the terminal, 0 when it is nobody's controlling tty.
    let sid = nix::sys::termios::tcgetsid(tty).map_or(0, |p| p.as_raw() as u32);
    let pgrp = nix::unistd::tcgetpgrp(tty).map_or(0, |p| p.as_raw() as u32);
    let raw: libc::termios = t.clone().into();
    Ok(TtyInfoEntry {
        id,
        r#type: TtyType::Pty as i32,
        locked: false,
        exclusive: false,
        packet_mode: false,
        sid,
        pgrp,
        rdev: fd.stat.st_rdev as u32,
        termios: Some(TermiosEntry {
            c_iflag: raw.c_iflag,
            c_oflag: raw.c_oflag,
            c_cflag: raw.c_cflag,
            c_lflag: raw.c_lflag,
            c_line: raw.c_line as u32,
            c_ispeed: raw.c_ispeed,
            c_ospeed: raw.c_ospeed,
            c_cc: raw.c_cc.iter().map(|&c| c as u32).collect(),
        }),
        winsize: Some(WinsizeEntry {
            ws_row: ws.ws_row as u32,
            ws_col: ws.ws_col as u32,
            ws_xpixel: ws.ws_xpixel as u32,
            ws_ypixel: ws.ws_ypixel as u32,
        }),
        pty: Some(TtyPtyEntry { index }),
        ..Default::default()
    })
}

/// The terminal of the job's session at dump time, if it had one.
pub fn job_terminal(img: &DumpImage) -> Option<&TtyInfoEntry> {
    let all = &img.extras.get::<Infos>()?.0;
    // Not a pty the tree holds both ends of: that one is made again, not the job's.
    let outside = |t: &&TtyInfoEntry| !pty::is_master_info(t) && pty::master_of(t, all).is_none();
    let infos: Vec<&TtyInfoEntry> = all.iter().filter(|t| t.r#type == TtyType::Pty as i32).filter(outside).collect();
    let sid = img.processes[0].pstree.sid;
    infos.iter().find(|t| t.sid == sid).or_else(|| infos.first()).copied()
}

/// The terminal crust runs on (the first of stdin, stdout, stderr that is one).
pub fn own_terminal() -> Option<(String, std::os::fd::BorrowedFd<'static>)> {
    [0, 1, 2].into_iter().find_map(|fd| {
        // SAFETY: no safe 'static handle to fds 0-2 exists (std's borrow the
        // Stdin value). crust never closes fds 0, 1 or 2, so each stays open
        // for the whole life of the process, as a BorrowedFd<'static> requires.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if !nix::unistd::isatty(fd).unwrap_or(false) {
            return None;
        }
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        Some((path.to_string_lossy().into_owned(), fd))
    })
}

/// A terminal's settings, to put back when a restore that changed them fails.
pub struct SavedTerminal {
    fd: std::os::fd::BorrowedFd<'static>,
    termios: nix::sys::termios::Termios,
}

impl SavedTerminal {
    pub fn save(fd: std::os::fd::BorrowedFd<'static>) -> Result<SavedTerminal> {
        let termios = tcgetattr(fd).ctx(|| "reading this terminal's settings")?;
        Ok(SavedTerminal { fd, termios })
    }

    pub fn put_back(&self) {
        let _ = nix::sys::termios::tcsetattr(self.fd, nix::sys::termios::SetArg::TCSANOW, &self.termios);
    }
}

/// Give terminal `term` (or, through a pty master, its slave) the saved
/// termios of terminal `id`.
pub(super) fn set_termios(term: std::os::fd::BorrowedFd, t: &TermiosEntry, id: u32) -> Result<()> {
    let what = || format!("setting the termios of terminal {id}");
    let bad = |field: &str, v: u32| Error::Invalid(format!("tty-info.img: terminal {id}: {field} {v} is out of range"));
    let byte = |field: &str, v: u32| u8::try_from(v).map_err(|_| bad(field, v));
    let mut raw: libc::termios = tcgetattr(term).ctx(what)?.into();
    raw.c_iflag = t.c_iflag;
    raw.c_oflag = t.c_oflag;
    raw.c_cflag = t.c_cflag;
    raw.c_lflag = t.c_lflag;
    raw.c_line = byte("c_line", t.c_line)?;
    for (dst, &src) in raw.c_cc.iter_mut().zip(&t.c_cc) {
        *dst = byte("c_cc", src)?;
    }
    raw.c_ispeed = t.c_ispeed;
    raw.c_ospeed = t.c_ospeed;
    nix::sys::termios::tcsetattr(term, nix::sys::termios::SetArg::TCSANOW, &raw.into()).ctx(what)
}

/// Give the restoring terminal the job's saved settings. Its window size is
/// the truth (the size of the window it is shown in): it is left as it is.
/// Returns whether it differs from the job's saved one, which the job must
/// then be told of (SIGWINCH).
pub fn apply_settings(term: std::os::fd::BorrowedFd, info: &TtyInfoEntry) -> Result<bool> {
    let what = || "applying the job's terminal settings".to_string();
    if let Some(t) = &info.termios {
        set_termios(term, t, info.id)?;
    }
    let now = tcgetwinsize(term).ctx(what)?;
    let resized = info.winsize.as_ref().is_some_and(|w| (w.ws_row, w.ws_col) != (u32::from(now.ws_row), u32::from(now.ws_col)));
    Ok(resized)
}
