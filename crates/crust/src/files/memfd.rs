//! memfds (memfd_create): files without a path, in memory. As in CRIU, each
//! inode is saved once in memfd.img (name, owner, size, seals) with its
//! contents as a shmem object (pagemap-shmem-INO.img and a pages image);
//! each open file of it goes to files.img as a memfd file (flags, offset), and
//! a mapping of it names such a file (vma status VMA_AREA_MEMFD), so that a
//! memfd mapped but no longer open is saved too.
//!
//! A restore makes every inode once, in the root before anything forks, so
//! that all the processes of the tree share it, as they did; each file is
//! then a new open of it through /proc/self/fd, and each mapping maps it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use nix::fcntl::{fcntl, FcntlArg};

use super::{fown_of, ghost, FdRestorer, FileKind, FileTable, Inherited, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::criu::PAGE_SIZE;
use crate::images::load::{read_all, read_shmem, DumpImage, ShmemImage};
use crate::images::proto::{FdTypes, FileEntry, FownEntry, MemfdFileEntry, MemfdInodeEntry};
use crate::images::{ImageDir, Kind};
use super::shmem;

pub struct Memfd;

/// How /proc links and maps name a memfd: `/memfd:NAME (deleted)`.
const PREFIX: &str = "/memfd:";

/// Pages images of memfds are numbered from here, apart from those of
/// processes and of shared anonymous memory.
const PAGES_ID_BASE: u32 = shmem::PAGES_ID_BASE + (1 << 19);

/// The seal MFD_NOEXEC_SEAL sets.
const F_SEAL_EXEC: u32 = libc::F_SEAL_EXEC as u32;

/// The kind of object a memfd inode is remembered as in a task being restored.
const MADE: &str = "memfd";

/// The inodes met in a dump, and the files made for mappings.
#[derive(Default)]
struct Inodes {
    /// Each inode's entry and a /proc path that opens it, in the order met.
    list: Vec<(MemfdInodeEntry, String)>,
    by_ino: HashMap<u64, u32>,
    /// Files of mappings, by (inode number, open flags).
    mapped: HashMap<(u64, u32), u32>,
}

/// The inodes of a dump read back, with their contents.
#[derive(Default)]
struct Loaded(Vec<(MemfdInodeEntry, ShmemImage)>);

impl FileKind for Memfd {
    fn name(&self) -> &'static str {
        "memfd"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Memfd
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        is_memfd(&fd.link, &format!("/proc/{}/fd/{}", fd.pid, fd.fd))
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let inode_id = note_inode(table, &fd.link, &format!("/proc/{}/fd/{}", fd.pid, fd.fd))?;
        let id = table.new_id();
        Ok(file_entry(id, fd.flags, fd.pos, fown_of(fd, table)?, inode_id))
    }

    fn write_images(&self, table: &FileTable, dir: &mut ImageDir) -> Result<u64> {
        let Some(inodes) = table.extras.get::<Inodes>().filter(|i| !i.list.is_empty()) else { return Ok(0) };
        let mut w = dir.writer("memfd.img", Kind::MemfdInode)?;
        for (entry, _) in &inodes.list {
            w.entry(entry)?;
        }
        let mut bytes = w.finish()?;
        for (i, (entry, source)) in inodes.list.iter().enumerate() {
            bytes += shmem::write_object(dir, entry.shmid as u64, source, PAGES_ID_BASE + i as u32, entry.size)?;
        }
        Ok(bytes)
    }

    fn load_images(&self, img: &mut DumpImage) -> Result<()> {
        let path = img.dir.join("memfd.img");
        let entries = if path.exists() { read_all::<MemfdInodeEntry>(&path, Kind::MemfdInode)? } else { Vec::new() };
        for m in img.files.values().filter_map(|f| f.memfd.as_ref()) {
            if !entries.iter().any(|e| e.inode_id == m.inode_id as u64) {
                return Err(Error::image(&path, format!("no memfd inode {} for file {}", m.inode_id, m.id)));
            }
        }
        let mut loaded = Vec::new();
        for e in entries {
            // Its pages cover the last, partial page too.
            let contents = read_shmem(&img.dir, e.shmid as u64, e.size.div_ceil(PAGE_SIZE) * PAGE_SIZE)?;
            loaded.push((e, contents));
        }
        img.extras.insert(Loaded(loaded));
        Ok(())
    }

    fn make_in_root(&self, r: &mut FdRestorer) -> Result<()> {
        let inodes = &super::loaded::<Loaded>(r.image, "memfd.img")?.0;
        for (entry, contents) in inodes {
            let fd = make_inode(r, entry, contents)?;
            r.remember(MADE, entry.inode_id, fd);
        }
        Ok(())
    }

    /// A new open of the inode made in the root, with the file's flags and offset.
    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let m = entry.memfd.as_ref().ok_or_else(|| super::missing(entry, "memfd"))?;
        let inode = r.made(MADE, m.inode_id as u64).ok_or_else(|| no_inode(m.inode_id))?;
        let flags = m.flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
        let fd = r.open_path(&format!("/proc/self/fd/{inode}"), flags)?;
        if m.pos != 0 {
            r.task.call("lseek in a memfd", libc::SYS_lseek, [fd, m.pos, libc::SEEK_SET as u64, 0, 0, 0])?;
        }
        Ok(fd)
    }
}

fn no_inode(inode_id: u32) -> Error {
    Error::Invalid(format!("memfd inode {inode_id} was not made in the root"))
}

fn file_entry(id: u32, flags: u32, pos: u64, fown: FownEntry, inode_id: u32) -> FileEntry {
    FileEntry {
        r#type: FdTypes::Memfd as i32,
        id,
        memfd: Some(MemfdFileEntry { id, flags, pos, fown, inode_id }),
        ..Default::default()
    }
}

/// Whether `path` (an fd's link, a mapping's path) is a memfd; `source` is a
/// /proc path that opens it. A memfd lives on the kernel's internal shmem (or
/// hugetlbfs) mount, which no process sees.
pub fn is_memfd(path: &str, source: &str) -> bool {
    if !path.starts_with(PREFIX) || !path.ends_with(ghost::DELETED) {
        return false;
    }
    std::fs::File::open(source).is_ok_and(|f| !ghost::visible_mount(&f, source))
}

/// The file in files.img that a mapping of memfd `path` (opened with
/// `flags`, through `source`) names, made once per inode and flags.
pub fn mapping_file(table: &mut FileTable, path: &str, flags: u32, source: &str) -> Result<u32> {
    let inode_id = note_inode(table, path, source)?;
    let ino = std::fs::metadata(source).ctx(|| format!("stat {source}"))?.ino();
    if let Some(&id) = table.extras.get_mut::<Inodes>().mapped.get(&(ino, flags)) {
        return Ok(id);
    }
    let id = table.new_id();
    table.files.push(file_entry(id, flags, 0, FownEntry::default(), inode_id));
    table.extras.get_mut::<Inodes>().mapped.insert((ino, flags), id);
    Ok(id)
}

/// The inode behind `source` in memfd.img (added the first time it is met): its id.
fn note_inode(table: &mut FileTable, path: &str, source: &str) -> Result<u32> {
    let what = || format!("reading the memfd behind {source} ({path})");
    let file = std::fs::File::open(source).ctx(what)?;
    let md = file.metadata().ctx(what)?;
    if let Some(&id) = table.extras.get_mut::<Inodes>().by_ino.get(&md.ino()) {
        return Ok(id);
    }
    let refuse = |why: &str| Error::unsupported(format!("{source} ({path})"), format!("{why} not supported yet"));
    let fs = nix::sys::statfs::fstatfs(&file).ctx(what)?;
    if fs.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC {
        return Err(refuse("memfds of huge pages (MFD_HUGETLB) are"));
    }
    let seals = fcntl(&file, FcntlArg::F_GET_SEALS).ctx(what)? as u32;
    // memfd_create makes the inode 0777, or 0666 with MFD_NOEXEC_SEAL (which
    // seals F_SEAL_EXEC): a restore makes it so again; a mode changed since
    // (fchmod) has no place in memfd.img.
    let exec_sealed = seals & F_SEAL_EXEC != 0;
    let mode = md.mode() & 0o7777;
    if mode != 0o777 && !(exec_sealed && mode == 0o666) {
        return Err(refuse(&format!("a memfd whose mode was changed to {mode:o} is")));
    }
    let name = path.strip_prefix(PREFIX).and_then(|n| n.strip_suffix(ghost::DELETED)).unwrap_or_default();
    let inodes = table.extras.get_mut::<Inodes>();
    let inode_id = inodes.list.len() as u32 + 1;
    let entry = MemfdInodeEntry {
        name: name.to_string(),
        uid: md.uid(),
        gid: md.gid(),
        size: md.len(),
        shmid: md.ino() as u32,
        seals,
        inode_id: inode_id as u64,
        hugetlb_flag: None,
    };
    inodes.list.push((entry, source.to_string()));
    inodes.by_ino.insert(md.ino(), inode_id);
    Ok(inode_id)
}

/// The memfd of `entry` made in the task, its contents put in, then its owner
/// and seals set (seals last: they may forbid writing and resizing). Returns
/// its fd, above every fd of the image.
fn make_inode(r: &mut FdRestorer, entry: &MemfdInodeEntry, contents: &ShmemImage) -> Result<u64> {
    let name = r.scratch.reset().put_str(&entry.name)?;
    let fd = r.task.call("memfd_create", libc::SYS_memfd_create, [name, libc::MFD_ALLOW_SEALING as u64, 0, 0, 0, 0])?;
    let fd = r.to_high(fd)?;
    r.task.call("ftruncate of a memfd", libc::SYS_ftruncate, [fd, entry.size, 0, 0, 0, 0])?;
    shmem::fill(r, fd, contents, entry.shmid as u64)?;
    r.task.call("fchown of a memfd", libc::SYS_fchown, [fd, entry.uid as u64, entry.gid as u64, 0, 0, 0])?;
    if entry.seals & F_SEAL_EXEC != 0 {
        r.task.call("fchmod of a memfd", libc::SYS_fchmod, [fd, 0o666, 0, 0, 0, 0])?;
    }
    if entry.seals != 0 {
        r.task.call("fcntl(F_ADD_SEALS)", libc::SYS_fcntl, [fd, libc::F_ADD_SEALS as u64, entry.seals as u64, 0, 0, 0])?;
    }
    Ok(fd)
}

/// The path that opens memfd file `file_id` in a process being restored (to map it).
pub fn path_to_map(img: &DumpImage, inherited: &Inherited, file_id: u32) -> Option<Result<String>> {
    let m = img.files.get(&file_id)?.memfd.as_ref()?;
    Some(inherited.made(MADE, m.inode_id as u64).map(|fd| format!("/proc/self/fd/{fd}")).ok_or_else(|| no_inode(m.inode_id)))
}
