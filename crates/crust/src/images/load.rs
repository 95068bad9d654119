//! Reading a dump back: every image a restore needs, checked for consistency
//! before anything is created. Errors name the image file (and offset).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::images::proto::{
    CgroupEntry, CoreEntry, FdinfoEntry, FileEntry, FsEntry, GhostFileEntry, InventoryEntry, MmEntry, PagemapEntry,
    PagemapHead, PstreeEntry, RemapFilePathEntry, TaskCoreEntry, TaskKobjIdsEntry, ThreadCoreEntry, ThreadInfoX86,
};
use crate::images::digest::{self, FileDigest};
use crate::images::{ImageReader, Kind};
use crate::images::criu::TASK_ZOMBIE;
use crate::images::criu::PAGE_SIZE;

/// Values of any type, one of each: what each kind of state loads of its own
/// images, found again by its type.
#[derive(Default)]
pub struct Extras(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

impl Extras {
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Box::new(value));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>()).and_then(|v| v.downcast_ref())
    }

    /// The value of type `T`, made with its default the first time.
    pub fn get_mut<T: Any + Send + Sync + Default>(&mut self) -> &mut T {
        let v = self.0.entry(TypeId::of::<T>()).or_insert_with(|| Box::new(T::default()));
        v.downcast_mut().expect("stored under its own type")
    }
}

/// One thread of a live process: its core image's parts, all present.
#[derive(Clone, Default)]
pub struct ThreadImage {
    pub tid: i32,
    pub info: ThreadInfoX86,
    pub core: ThreadCoreEntry,
}

/// One process of the dump. A zombie has only its pstree entry and exit status.
#[derive(Default)]
pub struct ProcessImage {
    pub pstree: PstreeEntry,
    /// Raw wait status of a zombie.
    pub zombie: Option<u32>,
    /// What belongs to the whole process (the leader's task_core_entry).
    pub task: TaskCoreEntry,
    /// Every thread, the leader first.
    pub threads: Vec<ThreadImage>,
    pub ids: TaskKobjIdsEntry,
    pub mm: MmEntry,
    pub pagemap: Vec<PagemapEntry>,
    pub pages_path: PathBuf,
    pub fds: Vec<FdinfoEntry>,
    pub fs: FsEntry,
}

impl ProcessImage {
    pub fn pid(&self) -> i32 {
        self.pstree.pid as i32
    }
}

/// A whole dump, as read from its directory.
pub struct DumpImage {
    pub dir: PathBuf,
    /// Parents before children, the root first.
    pub processes: Vec<ProcessImage>,
    pub files: HashMap<u32, FileEntry>,
    /// Shared anonymous memory objects, by shmid (their inode at dump time).
    pub shmem: HashMap<u64, ShmemImage>,
    /// Deleted files: the ghost standing in for each file id that has one.
    pub remaps: HashMap<u32, u32>,
    /// Ghost files by id: entry and contents.
    pub ghost_files: HashMap<u32, (GhostFileEntry, Vec<u8>)>,
    /// What each kind of file read of its own images (pipes-data.img...).
    pub extras: Extras,
    /// cgroup.img, if the dump has one.
    pub cgroups: Option<CgroupEntry>,
    /// Digests of the pages images, not checked yet.
    pub pages_digests: Vec<(String, FileDigest)>,
}

/// Whether a file entry holds the member its type names (a pipe entry for a
/// pipe...): kinds of files rely on it.
fn has_its_member(f: &FileEntry) -> bool {
    use crate::images::proto::FdTypes as T;
    match T::try_from(f.r#type) {
        Ok(T::Reg) => f.reg.is_some(),
        Ok(T::Pipe) => f.pipe.is_some(),
        Ok(T::Fifo) => f.fifo.is_some(),
        Ok(T::Inetsk) => f.isk.is_some(),
        Ok(T::Unixsk) => f.usk.is_some(),
        Ok(T::Eventfd) => f.efd.is_some(),
        Ok(T::Eventpoll) => f.epfd.is_some(),
        Ok(T::Inotify) => f.ify.is_some(),
        Ok(T::Signalfd) => f.sgfd.is_some(),
        Ok(T::Packetsk) => f.psk.is_some(),
        Ok(T::Tty) => f.tty.is_some(),
        Ok(T::Fanotify) => f.ffy.is_some(),
        Ok(T::Netlinksk) => f.nlsk.is_some(),
        Ok(T::Ns) => f.nsf.is_some(),
        Ok(T::Tunf) => f.tunf.is_some(),
        Ok(T::Ext) => f.ext.is_some(),
        Ok(T::Timerfd) => f.tfd.is_some(),
        Ok(T::Memfd) => f.memfd.is_some(),
        Ok(T::Bpfmap) => f.bpf.is_some(),
        Ok(T::Pidfd) => f.pidfd.is_some(),
        Ok(T::Und | T::CtlTty | T::AutofsPipe) | Err(_) => false,
    }
}

impl DumpImage {
    /// The path of a regular file of files.img (a mapped file, a cwd...).
    pub fn reg_path(&self, id: u32) -> Result<&str> {
        self.files
            .get(&id)
            .and_then(|f| f.reg.as_ref())
            .map(|r| r.name.as_str())
            .ok_or_else(|| invalid(&self.dir.join("files.img"), format!("file {id} is not a regular file")))
    }
}

fn invalid(path: &Path, what: impl Into<String>) -> Error {
    Error::Image { file: path.to_path_buf(), offset: 0, what: what.into() }
}

pub fn read_all<M: prost::Message + Default>(path: &Path, kind: Kind) -> Result<Vec<M>> {
    let mut r = ImageReader::open(path, kind)?;
    let mut out = Vec::new();
    while let Some(m) = r.read_entry()? {
        out.push(m);
    }
    Ok(out)
}

/// The entries of an optional image (none if it is absent), each followed by
/// raw bytes, `len` of them.
pub fn read_with_data<M: prost::Message + Default>(path: &Path, kind: Kind, len: impl Fn(&M) -> u64) -> Result<Vec<(M, Vec<u8>)>> {
    let mut out = Vec::new();
    if !path.exists() {
        return Ok(out);
    }
    let mut r = ImageReader::open(path, kind)?;
    while let Some(e) = r.read_entry::<M>()? {
        let data = r.raw(len(&e))?;
        out.push((e, data));
    }
    Ok(out)
}

pub fn read_one<M: prost::Message + Default>(path: &Path, kind: Kind) -> Result<M> {
    ImageReader::open(path, kind)?.one()
}

/// Where the contents of the pages are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// pages-N.img files in the directory, their sizes checked against the pagemaps.
    InDir,
    /// Sent separately (a migration streams them into the new tasks).
    Streamed,
}

/// The images of `dir`, read and checked; what kinds of files keep in images
/// of their own is read by them, into `extras` (see `restore::load`).
pub fn load(dir: &Path, pages: Pages) -> Result<DumpImage> {
    let dir = dir.canonicalize().ctx(|| format!("images directory {}", dir.display()))?;
    // Metadata is checked now; the bulk of the pages while the tree is built
    // (streamed pages are not files here: their link vouches for them).
    let mut pages_digests = Vec::new();
    for (name, digest) in digest::read_manifest(&dir)?.unwrap_or_default() {
        if Kind::of_file_name(&name) == Some(Kind::Pages) {
            if pages == Pages::InDir {
                pages_digests.push((name, digest));
            }
        } else {
            digest::verify_file(&dir, &name, &digest)?;
        }
    }
    let inventory: InventoryEntry = read_one(&dir.join("inventory.img"), Kind::Inventory)?;
    if inventory.img_version != 2 {
        return Err(invalid(&dir.join("inventory.img"), format!("image version {} is not supported", inventory.img_version)));
    }
    let pstree_path = dir.join("pstree.img");
    let pstree: Vec<PstreeEntry> = read_all(&pstree_path, Kind::Pstree)?;
    if pstree.is_empty() {
        return Err(invalid(&pstree_path, "no processes"));
    }
    let mut processes = Vec::new();
    for (n, p) in pstree.iter().enumerate() {
        if p.threads.first() != Some(&p.pid) {
            return Err(invalid(&pstree_path, format!("process {}: its first thread is not its leader", p.pid)));
        }
        if n > 0 && !pstree[..n].iter().any(|q| q.pid == p.ppid) {
            return Err(invalid(&pstree_path, format!("process {}: parent {} is not listed before it", p.pid, p.ppid)));
        }
        processes.push(load_process(&dir, p.clone(), pages)?);
    }
    let files_path = dir.join("files.img");
    let mut files = HashMap::new();
    for f in read_all::<FileEntry>(&files_path, Kind::Files)? {
        if !has_its_member(&f) {
            return Err(invalid(&files_path, format!("file {} of type {} lacks the entry its type names", f.id, f.r#type)));
        }
        files.insert(f.id, f);
    }
    for p in processes.iter().filter(|p| p.zombie.is_none()) {
        for fd in &p.fds {
            match files.get(&fd.id) {
                None => return Err(invalid(&files_path, format!("no file {} for fd {} of process {}", fd.id, fd.fd, p.pid()))),
                Some(f) if f.r#type != fd.r#type => {
                    return Err(invalid(
                        &dir.join(format!("fdinfo-{}.img", p.ids.files_id)),
                        format!("fd {} of process {} has type {}, but its file {} has type {}", fd.fd, p.pid(), fd.r#type, fd.id, f.r#type),
                    ))
                }
                Some(_) => {}
            }
        }
        for id in [p.fs.cwd_id, p.fs.root_id, p.mm.exe_file_id] {
            if !files.contains_key(&id) {
                return Err(invalid(&files_path, format!("no file {id} named by process {}", p.pid())));
            }
        }
    }
    let (remaps, ghost_files) = load_ghosts(&dir)?;
    let shmem = load_shmem(&dir, &processes)?;
    let cg_path = dir.join("cgroup.img");
    let cgroups = if cg_path.exists() { Some(read_one(&cg_path, Kind::Cgroup)?) } else { None };
    Ok(DumpImage { dir, processes, files, shmem, remaps, ghost_files, extras: Extras::default(), cgroups, pages_digests })
}

/// Every shared memory object the vmas name: its size (as far as they reach
/// into it) and its saved pages (always in the directory, streamed or not).
fn load_shmem(dir: &Path, processes: &[ProcessImage]) -> Result<HashMap<u64, ShmemImage>> {
    let mut sizes: HashMap<u64, u64> = HashMap::new();
    for v in processes.iter().flat_map(|p| p.mm.vmas.iter()).filter(|v| v.status & crate::images::criu::VMA_ANON_SHARED != 0) {
        let reach = v.pgoff + (v.end - v.start);
        let size = sizes.entry(v.shmid).or_default();
        *size = (*size).max(reach);
    }
    let mut out = HashMap::new();
    for (shmid, size) in sizes {
        let name = format!("pagemap-shmem-{shmid}.img");
        let (pagemap, pages_path) = read_pagemap(dir, &name, Pages::InDir, |e| check_run(e, size))?;
        out.insert(shmid, ShmemImage { size, pagemap, pages_path });
    }
    Ok(out)
}

/// A pagemap image, each run accepted by `check` (or refused with its
/// reason), and the pages image it indexes, whose size must match it (when
/// the pages are in the directory).
fn read_pagemap(
    dir: &Path,
    name: &str,
    pages_in: Pages,
    check: impl Fn(&PagemapEntry) -> std::result::Result<(), String>,
) -> Result<(Vec<PagemapEntry>, PathBuf)> {
    let pm_path = dir.join(name);
    let mut r = ImageReader::open(&pm_path, Kind::Pagemap)?;
    let head: PagemapHead = r.one()?;
    let mut pagemap = Vec::new();
    let mut pages = 0u64;
    while let Some(e) = r.read_entry::<PagemapEntry>()? {
        check(&e).map_err(|what| invalid(&pm_path, what))?;
        pages += e.nr_pages as u64;
        pagemap.push(e);
    }
    let pages_path = dir.join(format!("pages-{}.img", head.pages_id));
    let size = match pages_in {
        Pages::InDir => std::fs::metadata(&pages_path).map_err(|e| invalid(&pages_path, format!("cannot read: {e}")))?.len(),
        Pages::Streamed => pages * PAGE_SIZE,
    };
    if size != pages * PAGE_SIZE {
        return Err(Error::Image {
            file: pages_path,
            offset: size.min(pages * PAGE_SIZE),
            what: format!("holds {size} bytes, but {name} lists {} pages ({} bytes)", pages, pages * PAGE_SIZE),
        });
    }
    Ok((pagemap, pages_path))
}

type Ghosts = (HashMap<u32, u32>, HashMap<u32, (GhostFileEntry, Vec<u8>)>);

/// remap-fpath.img and the ghost files it names.
fn load_ghosts(dir: &Path) -> Result<Ghosts> {
    let mut remaps = HashMap::new();
    let mut ghost_files = HashMap::new();
    let path = dir.join("remap-fpath.img");
    if !path.exists() {
        return Ok((remaps, ghost_files));
    }
    for r in read_all::<RemapFilePathEntry>(&path, Kind::RemapFpath)? {
        if r.remap_type() != crate::images::proto::RemapType::Ghost {
            return Err(invalid(&path, format!("file {}: only ghost remaps are supported yet", r.orig_id)));
        }
        remaps.insert(r.orig_id, r.remap_id);
        if ghost_files.contains_key(&r.remap_id) {
            continue;
        }
        let gpath = dir.join(format!("ghost-file-{:x}.img", r.remap_id));
        let mut g = ImageReader::open(&gpath, Kind::GhostFile)?;
        let entry: GhostFileEntry = g.one()?;
        if entry.chunks == Some(true) {
            return Err(invalid(&gpath, "ghost files in chunks are not supported yet"));
        }
        // CRIU leaves the size out when the contents run to the end of the file.
        let data = match entry.size {
            Some(size) => g.raw(size)?,
            None => g.rest()?,
        };
        ghost_files.insert(r.remap_id, (entry, data));
    }
    Ok((remaps, ghost_files))
}

fn load_process(dir: &Path, pstree: PstreeEntry, pages_in: Pages) -> Result<ProcessImage> {
    let pid = pstree.pid;
    let leader_path = dir.join(format!("core-{pid}.img"));
    let leader: CoreEntry = read_one(&leader_path, Kind::Core)?;
    if let Some(tc) = leader.tc.as_ref().filter(|tc| tc.task_state == TASK_ZOMBIE) {
        if pstree.threads.len() != 1 {
            return Err(invalid(&leader_path, "a zombie with threads"));
        }
        return Ok(ProcessImage { zombie: Some(tc.exit_code), pstree, ..Default::default() });
    }
    let (Some(task), Some(ids)) = (leader.tc, leader.ids) else {
        return Err(invalid(&leader_path, "leader's core without task state"));
    };
    let mut threads = Vec::new();
    for &tid in &pstree.threads {
        let path = dir.join(format!("core-{tid}.img"));
        let core: CoreEntry = read_one(&path, Kind::Core)?;
        let (Some(info), Some(core)) = (core.thread_info, core.thread_core) else {
            return Err(invalid(&path, "core without x86-64 thread state"));
        };
        threads.push(ThreadImage { tid: tid as i32, info, core });
    }
    let mm_path = dir.join(format!("mm-{pid}.img"));
    let mm: MmEntry = read_one(&mm_path, Kind::Mm)?;
    for v in &mm.vmas {
        if v.start >= v.end || v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0 {
            return Err(invalid(&mm_path, format!("vma {:#x}-{:#x} is not a page-aligned range", v.start, v.end)));
        }
    }
    let inside = |a: u64| mm.vmas.iter().any(|v| v.start <= a && a < v.end);
    let (pagemap, pages_path) = read_pagemap(dir, &format!("pagemap-{pid}.img"), pages_in, |e| {
        let end = (e.nr_pages as u64).checked_mul(PAGE_SIZE).and_then(|len| e.vaddr.checked_add(len));
        let Some(end) = end.filter(|_| e.nr_pages > 0) else {
            return Err(format!("a run of {} pages at {:#x} is not a range", e.nr_pages, e.vaddr));
        };
        if e.vaddr % PAGE_SIZE != 0 || !inside(e.vaddr) || !inside(end - 1) {
            return Err(format!("pages at {:#x}-{end:#x} lie outside the process's memory", e.vaddr));
        }
        if e.in_parent == Some(true) {
            return Err("incremental dumps (pages in a parent image) are not supported yet".into());
        }
        Ok(())
    })?;
    let fds: Vec<FdinfoEntry> = read_all(&dir.join(format!("fdinfo-{}.img", ids.files_id)), Kind::Fdinfo)?;
    let fs: FsEntry = read_one(&dir.join(format!("fs-{pid}.img")), Kind::Fs)?;
    Ok(ProcessImage { pstree, zombie: None, task, threads, ids, mm, pagemap, pages_path, fds, fs })
}

/// One shared memory object of an image, to make again.
pub struct ShmemImage {
    /// Bytes the vmas that map it reach into it.
    pub size: u64,
    pub pagemap: Vec<PagemapEntry>,
    pub pages_path: std::path::PathBuf,
}

/// Check a run of an object's pagemap lies inside it.
pub fn check_run(e: &PagemapEntry, size: u64) -> std::result::Result<(), String> {
    let end = (e.nr_pages as u64).checked_mul(PAGE_SIZE).and_then(|l| e.vaddr.checked_add(l));
    match end {
        Some(end) if e.nr_pages > 0 && e.vaddr.is_multiple_of(PAGE_SIZE) && end <= size => Ok(()),
        _ => Err(format!("a run of {} pages at offset {:#x} is not inside the object ({size} bytes)", e.nr_pages, e.vaddr)),
    }
}
