//! Regular files, directories, and the memory devices programs open
//! (/dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom): everything
//! that is reopened by path. As CRIU does, a device is a regular-file entry
//! whose mode says it is a character device; its device numbers, which the
//! entry has no field for, go to crust's notes (`crust-meta.json`) and are
//! checked before a restore reopens the path.

use nix::sys::stat::{stat, FileStat, SFlag};

use super::{fown_of, ghost, FdRestorer, FileTable, FileKind, OpenFd};
use crate::error::{Context, Result};
use crate::images::load::DumpImage;
use crate::images::meta::{on_pseudo_fs, DumpMeta, FileStamp, META};
use crate::images::proto::{FdTypes, FileEntry, RegFileEntry};

pub struct RegularFile;

impl FileKind for RegularFile {
    fn name(&self) -> &'static str {
        "regular file"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Reg
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        match fd.file_type() {
            SFlag::S_IFREG | SFlag::S_IFDIR => fd.link.starts_with('/'),
            SFlag::S_IFCHR => memory_device(fd.stat.st_rdev).is_some(),
            _ => false,
        }
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let id = table.new_id();
        let (name, deleted) = match fd.link.strip_suffix(ghost::DELETED) {
            Some(name) => {
                table.add_ghost(id, &format!("/proc/{}/fd/{}", fd.pid, fd.fd))?;
                (name.to_string(), true)
            }
            None => (fd.link.clone(), false),
        };
        let is_reg = fd.file_type() == SFlag::S_IFREG;
        if is_message_queue(fd) {
            // Its link names the queue inside the mqueue file system, not a
            // path to reopen it by.
            return Err(fd.unsupported("an open POSIX message queue (mq_open) is"));
        }
        if fd.file_type() == SFlag::S_IFCHR {
            check_device_path(fd, &name, &table.seen_at(&name))?;
        } else if !deleted {
            path_leads_to(&fd.stat, &table.seen_at(&name)).map_err(|why| fd.unsupported(&format!("a file whose path {why} is")))?;
        }
        Ok(FileEntry {
            r#type: FdTypes::Reg as i32,
            id,
            reg: Some(RegFileEntry {
                id,
                flags: fd.flags,
                pos: fd.pos,
                fown: fown_of(fd, table)?,
                name,
                size: is_reg.then_some(fd.stat.st_size as u64),
                mode: Some(fd.stat.st_mode),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Deleted files come with the images, and files under /proc/PID of a
    /// process of the tree appear with it; others must be here as they were.
    fn check(&self, entry: &FileEntry, img: &DumpImage) -> Option<String> {
        let reg = entry.reg.as_ref().filter(|_| !img.remaps.contains_key(&entry.id))?;
        let proc_pid = reg.name.strip_prefix("/proc/").and_then(|rest| rest.split('/').next()?.parse::<u32>().ok());
        if proc_pid.is_some_and(|pid| img.processes.iter().any(|p| p.pstree.threads.contains(&pid))) {
            return None;
        }
        // A file only read through an fd may have grown (a log followed by
        // `tail -f`), if it is the same file: its stamp says.
        let held = img.processes.iter().any(|p| p.fds.iter().any(|f| f.id == entry.id));
        // A copy (--root) has another inode: only its size can say it grew.
        let stamp = img.extras.get::<Stamps>().and_then(|s| s.0.get(&reg.name)).filter(|_| held && !crate::ns::moved(img, &reg.name));
        // A path on a mount the restore makes from the images: nothing to see yet.
        let at = crate::ns::restore_view(img, &reg.name)?;
        check(reg, &at, stamp).err()
    }

    /// crust's notes of the files only read: size, time, inode, last bytes.
    fn load_images(&self, img: &mut DumpImage) -> Result<()> {
        let meta: Option<DumpMeta> = std::fs::read(img.dir.join(META)).ok().and_then(|t| serde_json::from_slice(&t).ok());
        img.extras.insert(Stamps(meta.map(|m| m.files).unwrap_or_default()));
        Ok(())
    }

    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let reg = entry.reg.as_ref().ok_or_else(|| super::missing(entry, "regular file"))?;
        // Reopen, never create or truncate: the file must be the one the dump saw.
        let flags = reg.flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
        let fd = r.open_path(&reg.name, flags)?;
        if reg.pos != 0 {
            r.task.call(&format!("lseek in {}", reg.name), libc::SYS_lseek, [fd, reg.pos, libc::SEEK_SET as u64, 0, 0, 0])?;
        }
        Ok(fd)
    }
}

/// Major number of /dev/null, /dev/zero, /dev/urandom and their kin.
const MEM_MAJOR: u32 = 1;

/// The memory devices crust reopens, by minor: those without state of their
/// own that programs open. /dev/mem, /dev/kmsg, /dev/port and the others
/// are refused by their numbers.
const MEMORY_DEVICES: &[(u32, &str)] = &[(3, "null"), (5, "zero"), (7, "full"), (8, "random"), (9, "urandom")];

/// The name of memory device `rdev`, if crust reopens it.
pub fn memory_device(rdev: u64) -> Option<&'static str> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    MEMORY_DEVICES.iter().find(|&&(m, _)| major == MEM_MAJOR && minor == m).map(|&(_, name)| name)
}

/// A device is reopened by its path: the path must lead to that very device
/// (not to another node of another device, nor to nothing).
fn check_device_path(fd: &OpenFd, name: &str, seen_at: &str) -> Result<()> {
    let (major, minor) = (libc::major(fd.stat.st_rdev), libc::minor(fd.stat.st_rdev));
    match stat(seen_at) {
        Ok(st) if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFCHR.bits() && st.st_rdev == fd.stat.st_rdev => Ok(()),
        _ => Err(fd.unsupported(&format!("character device {major}:{minor} whose path {name} no longer leads to it is"))),
    }
}

/// Whether `fd` is a POSIX message queue (a file of the mqueue file system).
fn is_message_queue(fd: &OpenFd) -> bool {
    const MQUEUE_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x1980_0202);
    nix::sys::statfs::statfs(format!("/proc/{}/fd/{}", fd.pid, fd.fd).as_str()).is_ok_and(|fs| fs.filesystem_type() == MQUEUE_MAGIC)
}

/// A file is reopened by its path: the path, as the tree sees it, must lead
/// to that very file (`st`'s device and inode). It leads elsewhere, or
/// nowhere, when the file is on a mount another was mounted over, or on one
/// detached (`umount -l`, an old root left by pivot_root): the restore would
/// open another file. Says why not, in words that follow "whose path".
pub fn path_leads_to(st: &FileStat, seen_at: &str) -> std::result::Result<(), String> {
    const HIDDEN: &str = "the file is on a mount hidden by another or detached";
    match stat(seen_at) {
        Ok(now) if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) => Ok(()),
        Ok(_) => Err(format!("now names another file ({HIDDEN})")),
        Err(nix::errno::Errno::ENOENT) => Err(format!("now names no file ({HIDDEN})")),
        Err(e) => Err(format!("cannot be looked up ({e})")),
    }
}

/// The path and device number of a character device entry, for crust's notes.
pub fn device_of(reg: &RegFileEntry, table: &FileTable) -> Option<(String, u64)> {
    let is_chr = reg.mode? & SFlag::S_IFMT.bits() == SFlag::S_IFCHR.bits();
    let st = stat(table.seen_at(&reg.name).as_str()).ok().filter(|_| is_chr)?;
    Some((reg.name.clone(), st.st_rdev))
}

/// Before a restore: the character device at `path` must be the one the dump
/// saw (`rdev`), or the task would reopen another device.
pub fn check_device(path: &str, rdev: u64) -> std::result::Result<(), String> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let st = stat(path).map_err(|e| format!("{path}: character device {major}:{minor} needed by the restore, but {e}"))?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFCHR.bits() || st.st_rdev != rdev {
        let now = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
        return Err(format!("{path}: it was character device {major}:{minor} at dump time, it is not now (mode {:o}, device {}:{})", st.st_mode, now.0, now.1));
    }
    Ok(())
}

/// A regular-file entry for a file known only by path: a mapped file, the
/// executable, a cwd or root directory; `source` opens it (the path itself,
/// or a /proc link to a deleted one).
pub fn entry_for_path(id: u32, path: &str, flags: u32, source: &str) -> Result<FileEntry> {
    let st = stat(source).ctx(|| format!("stat {path}"))?;
    let is_reg = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits();
    Ok(FileEntry {
        r#type: FdTypes::Reg as i32,
        id,
        reg: Some(RegFileEntry {
            id,
            flags,
            pos: 0,
            name: path.to_string(),
            size: is_reg.then_some(st.st_size as u64),
            mode: Some(st.st_mode),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The stamps of the files only read, by path, from crust's notes.
#[derive(Default)]
struct Stamps(std::collections::BTreeMap<String, FileStamp>);

/// Before a restore: the file must be there. A file the task only reads (and
/// every mapped file and executable) must have the size it had at dump time: a
/// changed file would hand the task other data. Unless it only grew: a file
/// read through an fd (`stamp`) that is the same inode as at dump time, with
/// the same last bytes before its old end, was appended to (a log), which a
/// reader sees as it would have had it run on. A file replaced (another inode:
/// logrotate, an editor's save) or rewritten is refused. A file the task writes
/// may have grown meanwhile (a log the original went on writing after a
/// --leave-running dump), but not shrunk below the saved offset.
fn check(reg: &RegFileEntry, at: &str, stamp: Option<&FileStamp>) -> std::result::Result<(), String> {
    let st = stat(at).map_err(|e| {
        let why = if e == nix::errno::Errno::ENOENT { "it is missing".to_string() } else { e.to_string() };
        format!("{}: needed by the restore, but {why}", reg.name)
    })?;
    // proc, sysfs and cgroupfs files have no size of their own.
    let is_reg = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits() && !on_pseudo_fs(at);
    let (Some(size), true) = (reg.size, is_reg) else { return Ok(()) };
    let now = st.st_size as u64;
    let read_only = reg.flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32;
    if read_only && now != size {
        let refused = match stamp {
            Some(stamp) if now > size => {
                stamp.grown_at(at).err().map(|why| format!("it grew since the dump ({size} bytes then, {now} now), but {why}"))
            }
            _ => Some(format!("its size changed since the dump ({size} bytes then, {now} now)")),
        };
        if let Some(why) = refused {
            return Err(format!("{}: {why}", reg.name));
        }
    }
    if now < reg.pos {
        return Err(format!("{}: it shrank since the dump to {now} bytes, below the saved offset {}", reg.name, reg.pos));
    }
    Ok(())
}
