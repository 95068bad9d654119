//! File locks the tree holds: flock, POSIX (fcntl F_SETLK) and open file
//! description (OFD, F_OFD_SETLK) locks, read or write, on whole files or
//! byte ranges. With `--file-locks` a dump saves them in filelocks.img as
//! CRIU does, each with the process and fd that hold it, and a restore takes
//! each again in that process once its fds are at their numbers, just before
//! the tree runs; a lock another process holds now on one of those files is
//! a problem `crust check` (and so the restore, before it makes anything)
//! names. Without `--file-locks` a lock stops the dump, named; leases and
//! lock kinds that cannot be taken again as they were always do.
//!
//! The locks of an fd are the `lock:` lines of its fdinfo: those of its open
//! file description (flock, OFD, leases), and the POSIX locks its process set
//! through it. /proc/locks is the cross-check: a POSIX lock of a process of
//! the tree that no fd showed would otherwise be lost without a word.

use std::collections::HashSet;

use nix::errno::Errno;

use super::OpenFd;
use crate::error::{Context, Error, Result};
use crate::images::load::{read_all, DumpImage, ProcessImage};
use crate::images::proto::FileLockEntry;
use crate::images::{ImageDir, Kind};
use crate::proc::who;
use crate::task::{Scratch, Task};

/// The image, as CRIU names it.
const IMAGE: &str = "filelocks.img";

/// The styles of lock in FileLockEntry.flag (CRIU's FL_POSIX, FL_FLOCK, FL_OFD).
const FL_POSIX: u32 = 1;
const FL_FLOCK: u32 = 2;
const FL_OFD: u32 = 4;

/// One lock as the kernel prints it in fdinfo and /proc/locks:
/// `1: POSIX  ADVISORY  WRITE 1234 fe:00:5678 0 EOF` (the end byte is
/// included; EOF: to the end of the file, however long it grows).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LockLine {
    /// FLOCK, POSIX, OFDLCK, LEASE, DELEG, ACCESS...
    kind: String,
    /// READ, WRITE (UNLCK for a lease being given up).
    mode: String,
    pid: i32,
    /// "MAJ:MIN:INO" of the file.
    file: String,
    start: i64,
    end: Option<i64>,
}

impl LockLine {
    /// The part after the id (`1:`), or None for a waiter (`1: -> ...`),
    /// which holds nothing.
    fn parse(text: &str) -> Option<LockLine> {
        let mut words = text.split_whitespace();
        words.next()?; // "1:"
        let kind = words.next()?;
        if kind == "->" {
            return None;
        }
        let rest: Vec<&str> = words.collect();
        // POSIX and FLOCK have "ADVISORY" before the mode, leases their state.
        let at = rest.iter().position(|w| matches!(*w, "READ" | "WRITE" | "UNLCK"))?;
        let [mode, pid, file, start, end] = rest.get(at..at + 5)? else { return None };
        Some(LockLine {
            kind: kind.to_string(),
            mode: mode.to_string(),
            pid: pid.parse().ok()?,
            file: file.to_string(),
            start: start.parse().ok()?,
            end: if *end == "EOF" { None } else { Some(end.parse().ok()?) },
        })
    }

    /// CRIU's style flag, for the kinds crust takes again.
    fn style(&self) -> Option<u32> {
        match self.kind.as_str() {
            "FLOCK" => Some(FL_FLOCK),
            "POSIX" => Some(FL_POSIX),
            "OFDLCK" => Some(FL_OFD),
            _ => None,
        }
    }

    /// F_RDLCK or F_WRLCK.
    fn lock_type(&self) -> Option<u32> {
        match self.mode.as_str() {
            "READ" => Some(libc::F_RDLCK as u32),
            "WRITE" => Some(libc::F_WRLCK as u32),
            _ => None,
        }
    }

    /// Its length as fcntl takes it: 0 for "to the end of the file".
    fn len(&self) -> i64 {
        self.end.map_or(0, |end| end + 1 - self.start)
    }
}

/// Every lock of the tree, as the dump meets them fd by fd.
#[derive(Default)]
pub struct Locks {
    /// `--file-locks`: save them; without it a lock stops the dump.
    pub file_locks: bool,
    /// The dump is a migration's, which cannot carry locks: the tree holds
    /// them here until it runs there, where they would be taken again.
    pub migrating: bool,
    entries: Vec<FileLockEntry>,
    /// Locks saved, each once: flock and OFD locks belong to an open file
    /// description (by file id), POSIX locks to a process (by pid).
    saved: HashSet<(Holder, LockLine)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Holder {
    Description(u32),
    Process(i32),
}

/// The locks held through one fd, read before its file is dumped (a lease
/// is named before what it brings, O_ASYNC), saved after (with its file id).
pub struct Held(Vec<(LockLine, u32, u32)>);

impl Locks {
    /// The locks held through `open`; an error naming the first that cannot
    /// be saved (any, without --file-locks).
    pub fn read(&self, open: &OpenFd) -> Result<Held> {
        let mut held = Vec::new();
        for text in open.info.lines().filter_map(|l| l.strip_prefix("lock:")) {
            let Some(line) = LockLine::parse(text) else {
                if text.split_whitespace().nth(1) == Some("->") {
                    continue;
                }
                return Err(refusal(open, format!("holds a lock crust cannot read ({:?})", text.trim())));
            };
            let (Some(style), Some(lock_type)) = (line.style(), line.lock_type()) else {
                return Err(refusal(open, refused_kind(&line)));
            };
            if !self.file_locks {
                let hint = if self.migrating {
                    "crust migrate cannot carry file locks (the tree holds them here until it runs there); \
                     crust dump --file-locks saves them"
                } else {
                    "dump with --file-locks to save it"
                };
                return Err(refusal(open, format!("holds {}: {hint}", describe(&line))));
            }
            held.push((line, style, lock_type));
        }
        Ok(Held(held))
    }

    /// Save the locks `held` through `open`, whose file is `file_id` of
    /// files.img, and whose process the images name `image_pid`.
    pub fn save(&mut self, open: &OpenFd, file_id: u32, held: Held, image_pid: i32) {
        for (line, style, lock_type) in held.0 {
            let holder = if style == FL_POSIX { Holder::Process(open.pid) } else { Holder::Description(file_id) };
            let entry = FileLockEntry { flag: style, r#type: lock_type, pid: image_pid, fd: open.fd, start: line.start, len: line.len() };
            if self.saved.insert((holder, line)) {
                self.entries.push(entry);
            }
        }
    }

    /// Every POSIX lock /proc/locks shows for a process of the tree was met
    /// through one of its fds (flock and OFD locks belong to descriptions,
    /// which other processes may hold). Done when locks are saved: reading
    /// /proc/locks waits for an RCU grace period (the kernel takes its lock
    /// list's percpu rwsem for writing), 10 to 40 ms here, and a dump that
    /// saves none refuses any lock an fd shows (a POSIX lock goes when any
    /// fd of its file closes, so one held has an fd that shows it).
    pub fn check_all_met(&self, pids: &[i32]) -> Result<()> {
        if !self.file_locks {
            return Ok(());
        }
        let text = std::fs::read_to_string("/proc/locks").ctx(|| "reading /proc/locks")?;
        for line in text.lines().filter_map(LockLine::parse) {
            if line.kind != "POSIX" || !pids.contains(&line.pid) {
                continue;
            }
            if !self.saved.contains(&(Holder::Process(line.pid), line.clone())) {
                return Err(Error::unsupported(
                    who(line.pid),
                    format!("it holds {} on file {}, through no fd crust found: it cannot be saved", describe(&line), line.file),
                ));
            }
        }
        Ok(())
    }

    /// filelocks.img, if any lock was saved.
    pub fn write(&self, dir: &mut ImageDir) -> Result<u64> {
        if self.entries.is_empty() {
            return Ok(0);
        }
        let mut w = dir.writer(IMAGE, Kind::FileLocks)?;
        for e in &self.entries {
            w.entry(e)?;
        }
        w.finish()
    }
}

/// "process P (comm): fd N (path)" refusing `what`.
fn refusal(open: &OpenFd, what: String) -> Error {
    Error::unsupported(format!("{}: fd {} ({})", who(open.pid), open.fd, open.link), what)
}

/// Why a lock of another kind cannot be saved.
fn refused_kind(line: &LockLine) -> String {
    match line.kind.as_str() {
        "LEASE" | "DELEG" => format!("holds a {} lease: file leases (F_SETLEASE) are not supported yet, not even with --file-locks", line.mode),
        kind => format!(
            "holds a {kind} {} lock: only flock, POSIX and OFD read and write locks can be taken again as they were",
            line.mode
        ),
    }
}

/// "a WRITE flock lock", "a READ POSIX (fcntl) lock on bytes 5-14".
fn describe(line: &LockLine) -> String {
    let name = match line.kind.as_str() {
        "FLOCK" => "flock",
        "POSIX" => "POSIX (fcntl)",
        "OFDLCK" => "OFD (open file description)",
        other => other,
    };
    let range = match (line.kind.as_str(), line.end) {
        ("FLOCK", _) => String::new(),
        (_, Some(end)) => format!(" on bytes {}-{end}", line.start),
        (_, None) if line.start == 0 => " on the whole file".to_string(),
        (_, None) => format!(" on bytes {} to the end of the file", line.start),
    };
    format!("a {} {name} lock{range}", line.mode)
}

/// filelocks.img's entries, as read back.
pub struct Loaded(Vec<FileLockEntry>);

/// filelocks.img (absent: no locks), into `img.extras`; each lock must be
/// of a style and type crust takes, and name a live process of the image
/// and one of its fds.
pub fn load(img: &mut DumpImage) -> Result<()> {
    let path = img.dir.join(IMAGE);
    let entries = if path.exists() { read_all::<FileLockEntry>(&path, Kind::FileLocks)? } else { Vec::new() };
    for (n, e) in entries.iter().enumerate() {
        let fault = |what: String| Error::image(&path, format!("lock {n}: {what}"));
        if ![FL_POSIX, FL_FLOCK, FL_OFD].contains(&e.flag) {
            return Err(fault(format!("flag {:#x} is not one of POSIX (1), FLOCK (2), OFD (4)", e.flag)));
        }
        if e.r#type != libc::F_RDLCK as u32 && e.r#type != libc::F_WRLCK as u32 {
            return Err(fault(format!("type {} is neither F_RDLCK (0) nor F_WRLCK (1)", e.r#type)));
        }
        if e.start < 0 || e.len < 0 || e.start.checked_add(e.len).is_none() {
            return Err(fault(format!("range start {} length {} is not one of a file", e.start, e.len)));
        }
        let process = img.processes.iter().find(|p| p.pid() == e.pid && p.zombie.is_none());
        let process = process.ok_or_else(|| fault(format!("process {} is not a live process of the images", e.pid)))?;
        if !process.fds.iter().any(|f| f.fd as i32 == e.fd) {
            return Err(fault(format!("process {} has no fd {}", e.pid, e.fd)));
        }
    }
    img.extras.insert(Loaded(entries));
    Ok(())
}

/// Locks of the images that another process holds now, on a file the
/// restore opens by its path: they could not be taken again. (A deleted
/// file is made anew: no one else can hold it.)
pub fn problems(img: &DumpImage) -> Vec<String> {
    let Some(Loaded(entries)) = img.extras.get::<Loaded>() else { return Vec::new() };
    // Reading /proc/locks costs an RCU grace period: only when there are locks.
    if entries.is_empty() {
        return Vec::new();
    }
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let now: Vec<LockLine> = text.lines().filter_map(LockLine::parse).collect();
    entries
        .iter()
        .filter_map(|e| {
            let process = img.processes.iter().find(|p| p.pid() == e.pid)?;
            let id = process.fds.iter().find(|f| f.fd as i32 == e.fd)?.id;
            if img.remaps.contains_key(&id) {
                return None;
            }
            let path = img.reg_path(id).ok()?;
            let st = nix::sys::stat::stat(path).ok()?;
            let mut mine = entry_line(e);
            mine.file = format!("{:02x}:{:02x}:{}", libc::major(st.st_dev), libc::minor(st.st_dev), st.st_ino);
            let other = now.iter().find(|l| conflict(&mine, l))?;
            Some(format!(
                "{path}: {} of process {} (fd {}) cannot be taken again: process {} holds {} on it now",
                describe(&mine),
                e.pid,
                e.fd,
                other.pid,
                describe(other)
            ))
        })
        .collect()
}

/// Would lock `b`, on its file, stand in the way of taking `a`? flock and
/// fcntl (POSIX, OFD) locks never meet on Linux; two read locks never do.
fn conflict(a: &LockLine, b: &LockLine) -> bool {
    if a.file != b.file || (a.kind == "FLOCK") != (b.kind == "FLOCK") || b.style().is_none() {
        return false;
    }
    if a.mode != "WRITE" && b.mode != "WRITE" {
        return false;
    }
    let end = |l: &LockLine| l.end.unwrap_or(i64::MAX);
    a.kind == "FLOCK" || (a.start <= end(b) && b.start <= end(a))
}

/// Take again, in `task`, the locks its process held; its fds are at their
/// numbers. Never waits: a lock someone else holds now fails the restore.
pub fn restore(img: &DumpImage, process: &ProcessImage, task: &Task, scratch: &mut Scratch) -> Result<()> {
    let Loaded(entries) = super::loaded::<Loaded>(img, IMAGE)?;
    for e in entries.iter().filter(|e| e.pid == process.pid()) {
        let what = format!("taking again {} on fd {}", describe_entry(e), e.fd);
        let taken = match e.flag {
            FL_FLOCK => {
                let op = if e.r#type == libc::F_WRLCK as u32 { libc::LOCK_EX } else { libc::LOCK_SH };
                task.call(&what, libc::SYS_flock, [e.fd as u64, (op | libc::LOCK_NB) as u64, 0, 0, 0, 0])
            }
            style => {
                let cmd = if style == FL_OFD { libc::F_OFD_SETLK } else { libc::F_SETLK };
                let addr = scratch.reset().put(&flock_struct(e))?;
                task.call(&what, libc::SYS_fcntl, [e.fd as u64, cmd as u64, addr, 0, 0, 0])
            }
        };
        taken.map_err(|err| match err {
            Error::InTask { errno: Errno::EAGAIN | Errno::EACCES, .. } => Error::Invalid(format!(
                "process {}: {what}: another process holds a conflicting lock on the file now",
                e.pid
            )),
            other => other,
        })?;
    }
    Ok(())
}

/// struct flock of x86-64 for `e`: l_type, l_whence (SEEK_SET), l_start,
/// l_len, l_pid (0, as F_OFD_SETLK requires and F_SETLK ignores).
fn flock_struct(e: &FileLockEntry) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..2].copy_from_slice(&(e.r#type as i16).to_le_bytes());
    b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
    b[8..16].copy_from_slice(&e.start.to_le_bytes());
    b[16..24].copy_from_slice(&e.len.to_le_bytes());
    b
}

/// The lock of an entry, as the kernel would print it (but for its file).
fn entry_line(e: &FileLockEntry) -> LockLine {
    let kind = match e.flag {
        FL_FLOCK => "FLOCK",
        FL_OFD => "OFDLCK",
        _ => "POSIX",
    };
    let mode = if e.r#type == libc::F_WRLCK as u32 { "WRITE" } else { "READ" };
    let end = (e.len > 0).then(|| e.start + e.len - 1);
    LockLine { kind: kind.into(), mode: mode.into(), pid: e.pid, file: String::new(), start: e.start, end }
}

/// The lock of an entry, in the words of [`describe`].
fn describe_entry(e: &FileLockEntry) -> String {
    describe(&entry_line(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines_of_every_kind_are_read_as_the_kernel_prints_them() {
        let l = LockLine::parse("1: POSIX  ADVISORY  READ 31754 fe:00:10011085 5 14").unwrap();
        assert_eq!((l.style(), l.lock_type(), l.pid, l.start, l.len()), (Some(FL_POSIX), Some(0), 31754, 5, 10));
        assert_eq!(l.file, "fe:00:10011085");
        let l = LockLine::parse("3: FLOCK  ADVISORY  WRITE 31754 fe:00:10011085 0 EOF").unwrap();
        assert_eq!((l.style(), l.lock_type(), l.len()), (Some(FL_FLOCK), Some(1), 0));
        let l = LockLine::parse("1: OFDLCK ADVISORY  WRITE -1 fe:00:10011085 50 59").unwrap();
        assert_eq!((l.style(), l.pid, l.len()), (Some(FL_OFD), -1, 10));
        let l = LockLine::parse("2: LEASE  ACTIVE    READ 400 00:1a:77 0 EOF").unwrap();
        assert_eq!((l.style(), l.mode.as_str()), (None, "READ"));
        assert!(refused_kind(&l).contains("leases"));
        assert_eq!(LockLine::parse("1: -> POSIX  ADVISORY  WRITE 500 fe:00:1 0 EOF"), None);
        assert_eq!(LockLine::parse("1: POSIX  ADVISORY"), None);
    }

    #[test]
    fn locks_are_described_by_kind_mode_and_range() {
        let d = |s: &str| describe(&LockLine::parse(s).unwrap());
        assert_eq!(d("1: FLOCK  ADVISORY  WRITE 1 fe:00:1 0 EOF"), "a WRITE flock lock");
        assert_eq!(d("1: POSIX  ADVISORY  READ 1 fe:00:1 5 14"), "a READ POSIX (fcntl) lock on bytes 5-14");
        assert_eq!(d("1: OFDLCK ADVISORY  WRITE -1 fe:00:1 0 EOF"), "a WRITE OFD (open file description) lock on the whole file");
        assert_eq!(d("1: POSIX  ADVISORY  WRITE 1 fe:00:1 7 EOF"), "a WRITE POSIX (fcntl) lock on bytes 7 to the end of the file");
        let e = FileLockEntry { flag: FL_POSIX, r#type: 0, pid: 1, fd: 3, start: 5, len: 10 };
        assert_eq!(describe_entry(&e), "a READ POSIX (fcntl) lock on bytes 5-14");
    }

    #[test]
    fn locks_conflict_by_family_mode_and_range() {
        let l = |s: &str| LockLine::parse(s).unwrap();
        let posix_w = l("1: POSIX  ADVISORY  WRITE 1 fe:00:1 10 19");
        let posix_r = l("1: POSIX  ADVISORY  READ 1 fe:00:1 10 19");
        assert!(conflict(&posix_w, &l("1: OFDLCK ADVISORY  READ -1 fe:00:1 19 EOF")));
        assert!(!conflict(&posix_w, &l("1: OFDLCK ADVISORY  READ -1 fe:00:1 20 EOF")));
        assert!(!conflict(&posix_w, &l("1: POSIX  ADVISORY  WRITE 2 fe:00:2 10 19")), "another file");
        assert!(!conflict(&posix_r, &l("1: POSIX  ADVISORY  READ 2 fe:00:1 0 EOF")));
        assert!(conflict(&posix_r, &l("1: POSIX  ADVISORY  WRITE 2 fe:00:1 0 EOF")));
        assert!(!conflict(&posix_w, &l("1: FLOCK  ADVISORY  WRITE 2 fe:00:1 0 EOF")), "flock and fcntl locks never meet");
        let flock_r = l("1: FLOCK  ADVISORY  READ 1 fe:00:1 0 EOF");
        assert!(conflict(&flock_r, &l("1: FLOCK  ADVISORY  WRITE 2 fe:00:1 0 EOF")));
        assert!(!conflict(&flock_r, &l("1: FLOCK  ADVISORY  READ 2 fe:00:1 0 EOF")));
    }
}
