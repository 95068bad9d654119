//! Reading a dump back: every image a restore needs, checked for consistency
//! before anything is created. Errors name the image file (and offset).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::images::proto::{
    CgroupEntry, CoreEntry, FdinfoEntry, FileEntry, FsEntry, InventoryEntry, MmEntry, PagemapEntry, PagemapHead, PipeDataEntry,
    GhostFileEntry, PstreeEntry, RemapFilePathEntry, SkPacketEntry, TaskKobjIdsEntry, TtyInfoEntry,
};
use crate::images::digest::{self, FileDigest};
use crate::images::{ImageReader, Kind};
use crate::dump::TASK_ZOMBIE;
use crate::mem::PAGE_SIZE;

/// One process of the dump. A zombie has only its pstree entry and exit status.
#[derive(Default)]
pub struct ProcessImage {
    pub pstree: PstreeEntry,
    /// Raw wait status of a zombie.
    pub zombie: Option<u32>,
    /// Core of every thread, the leader first.
    pub cores: Vec<(i32, CoreEntry)>,
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
    /// Data queued in pipes, by pipe_id, with the pipe's buffer size.
    pub pipe_data: HashMap<u32, (Vec<u8>, Option<u32>)>,
    /// Shared anonymous memory objects, by shmid (their inode at dump time).
    pub shmem: HashMap<u64, crate::shmem::ShmemImage>,
    /// Deleted files: the ghost standing in for each file id that has one.
    pub remaps: HashMap<u32, u32>,
    /// Ghost files by id: entry and contents.
    pub ghost_files: HashMap<u32, (GhostFileEntry, Vec<u8>)>,
    /// Data queued on unix sockets, by the file id of the receiving end.
    pub sk_queues: HashMap<u32, Vec<u8>>,
    /// Terminals, by tty-info id.
    pub tty_infos: HashMap<u32, TtyInfoEntry>,
    /// cgroup.img, if the dump has one.
    pub cgroups: Option<CgroupEntry>,
    /// Digests of the pages images, not checked yet.
    pub pages_digests: Vec<(String, FileDigest)>,
}

fn invalid(path: &Path, what: impl Into<String>) -> Error {
    Error::Image { file: path.to_path_buf(), offset: 0, what: what.into() }
}

fn read_all<M: prost::Message + Default>(path: &Path, kind: Kind) -> Result<Vec<M>> {
    let mut r = ImageReader::open(path, kind)?;
    let mut out = Vec::new();
    while let Some(m) = r.next()? {
        out.push(m);
    }
    Ok(out)
}

fn read_one<M: prost::Message + Default>(path: &Path, kind: Kind) -> Result<M> {
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

pub fn load(dir: &Path) -> Result<DumpImage> {
    load_with(dir, Pages::InDir)
}

pub fn load_with(dir: &Path, pages: Pages) -> Result<DumpImage> {
    let dir = dir.canonicalize().map_err(|e| Error::Invalid(format!("images directory {}: {e}", dir.display())))?;
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
        files.insert(f.id, f);
    }
    for p in processes.iter().filter(|p| p.zombie.is_none()) {
        for fd in &p.fds {
            if !files.contains_key(&fd.id) {
                return Err(invalid(&files_path, format!("no file {} for fd {} of process {}", fd.id, fd.fd, p.pid())));
            }
        }
        for id in [p.fs.cwd_id, p.fs.root_id, p.mm.exe_file_id] {
            if !files.contains_key(&id) {
                return Err(invalid(&files_path, format!("no file {id} named by process {}", p.pid())));
            }
        }
    }
    let mut pipe_data = HashMap::new();
    let pd_path = dir.join("pipes-data.img");
    if pd_path.exists() {
        let mut r = ImageReader::open(&pd_path, Kind::PipesData)?;
        while let Some(e) = r.next::<PipeDataEntry>()? {
            let data = r.raw(e.bytes as usize)?;
            pipe_data.insert(e.pipe_id, (data, e.size));
        }
    }
    let mut sk_queues: HashMap<u32, Vec<u8>> = HashMap::new();
    let skq_path = dir.join("sk-queues.img");
    if skq_path.exists() {
        let mut r = ImageReader::open(&skq_path, Kind::SkQueues)?;
        while let Some(e) = r.next::<SkPacketEntry>()? {
            let data = r.raw(e.length as usize)?;
            sk_queues.entry(e.id_for).or_default().extend(data);
        }
    }
    let (remaps, ghost_files) = load_ghosts(&dir)?;
    let shmem = load_shmem(&dir, &processes)?;
    let mut tty_infos = HashMap::new();
    let tty_path = dir.join("tty-info.img");
    if tty_path.exists() {
        for t in read_all::<TtyInfoEntry>(&tty_path, Kind::TtyInfo)? {
            tty_infos.insert(t.id, t);
        }
    }
    let cg_path = dir.join("cgroup.img");
    let cgroups = if cg_path.exists() { Some(read_one(&cg_path, Kind::Cgroup)?) } else { None };
    Ok(DumpImage { dir, processes, files, pipe_data, shmem, remaps, ghost_files, sk_queues, tty_infos, cgroups, pages_digests })
}

/// Every shared memory object the vmas name: its size (as far as they reach
/// into it) and its saved pages (always in the directory, streamed or not).
fn load_shmem(dir: &Path, processes: &[ProcessImage]) -> Result<HashMap<u64, crate::shmem::ShmemImage>> {
    let mut sizes: HashMap<u64, u64> = HashMap::new();
    for v in processes.iter().flat_map(|p| p.mm.vmas.iter()).filter(|v| v.status & crate::mem::VMA_ANON_SHARED != 0) {
        let reach = v.pgoff + (v.end - v.start);
        let size = sizes.entry(v.shmid).or_default();
        *size = (*size).max(reach);
    }
    let mut out = HashMap::new();
    for (shmid, size) in sizes {
        let name = format!("pagemap-shmem-{shmid}.img");
        let (pagemap, pages_path) = read_pagemap(dir, &name, Pages::InDir, |e| crate::shmem::check_run(e, size))?;
        out.insert(shmid, crate::shmem::ShmemImage { size, pagemap, pages_path });
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
    while let Some(e) = r.next::<PagemapEntry>()? {
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
            Some(size) => g.raw(size as usize)?,
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
    let mut cores = Vec::new();
    for &tid in &pstree.threads {
        let path = dir.join(format!("core-{tid}.img"));
        let core: CoreEntry = read_one(&path, Kind::Core)?;
        if core.thread_info.is_none() || core.thread_core.is_none() {
            return Err(invalid(&path, "core without x86-64 thread state"));
        }
        if tid == pid && (core.tc.is_none() || core.ids.is_none()) {
            return Err(invalid(&path, "leader's core without task state"));
        }
        cores.push((tid as i32, core));
    }
    let ids = cores[0].1.ids.expect("checked above");
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
    Ok(ProcessImage { pstree, zombie: None, cores, ids, mm, pagemap, pages_path, fds, fs })
}
