//! Reading a dump back: every image a restore needs, checked for consistency
//! before anything is created. Errors name the image file (and offset).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::images::proto::{
    CgroupEntry, CoreEntry, FdinfoEntry, FileEntry, FsEntry, GhostChunkEntry, GhostFileEntry, InventoryEntry, MmEntry, PagemapEntry,
    PagemapHead, PstreeEntry, RemapFilePathEntry, TaskCoreEntry, TaskKobjIdsEntry, ThreadCoreEntry, ThreadInfoX86,
};
use crate::images::digest::{self, FileDigest};
use crate::images::{ImageReader, Kind};
use crate::images::criu::{PE_LAZY, PE_PARENT, PE_PRESENT, TASK_ZOMBIE};
use crate::images::criu::{PAGE_SIZE, VMA_ANON_SHARED, VMA_AREA_MEMFD, VMA_AREA_SYSVIPC, VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR};

/// The largest pid or tid Linux hands out (PID_MAX_LIMIT on 64-bit).
pub const MAX_PID: u32 = 1 << 22;

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
    /// Where the bytes of every page of `pagemap` lie (sorted by address):
    /// in `pages_path`, or, for runs in a parent image, in the nearest
    /// image of the chain that holds them.
    pub pages: Vec<PagesAt>,
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
    pub ghost_files: HashMap<u32, (GhostFileEntry, GhostData)>,
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

/// Whether vma `v` maps a file of files.img (by its id in `shmid`), as a
/// restore maps it (see `restore::layout::map_vmas`).
pub fn maps_file(v: &crate::images::proto::VmaEntry) -> bool {
    v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_ANON_SHARED | VMA_AREA_SYSVIPC) == 0
        && v.flags & libc::MAP_ANONYMOUS as u32 == 0
}

/// Every id of the pstree entries is a pid Linux could hand out (a restore
/// makes them with these numbers), none twice, and each process is listed
/// after its parent (the root first) with its leader first among its threads.
fn check_pstree(path: &Path, pstree: &[(u64, PstreeEntry)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (n, (at, p)) in pstree.iter().enumerate() {
        let bad = |what: String| Error::Image { file: path.to_path_buf(), offset: *at, what: format!("process {}: {what}", p.pid) };
        for (name, id) in [("pid", p.pid), ("parent", p.ppid), ("process group", p.pgid), ("session", p.sid)] {
            // The root's parent, group or session may be outside the dump (0 when unknown).
            if id > MAX_PID || (id == 0 && name == "pid") {
                return Err(bad(format!("{name} {id} is not a pid (1 to {MAX_PID})")));
            }
        }
        if p.threads.first() != Some(&p.pid) {
            return Err(bad("its first thread is not its leader".into()));
        }
        for &tid in &p.threads {
            if tid == 0 || tid > MAX_PID {
                return Err(bad(format!("thread {tid} is not a pid (1 to {MAX_PID})")));
            }
            if !seen.insert(tid) {
                return Err(bad(format!("thread {tid} is listed twice in the tree")));
            }
        }
        if n > 0 && !pstree[..n].iter().any(|(_, q)| q.pid == p.ppid) {
            return Err(bad(format!("parent {} is not listed before it", p.ppid)));
        }
    }
    Ok(())
}

/// Every entry of an image, with the offset it starts at (for errors about it).
fn read_located<M: prost::Message + Default>(path: &Path, kind: Kind) -> Result<Vec<(u64, M)>> {
    let mut r = ImageReader::open(path, kind)?;
    let mut out = Vec::new();
    loop {
        let at = r.offset;
        match r.read_entry()? {
            Some(m) => out.push((at, m)),
            None => return Ok(out),
        }
    }
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
    let pstree: Vec<(u64, PstreeEntry)> = read_located(&pstree_path, Kind::Pstree)?;
    if pstree.is_empty() {
        return Err(invalid(&pstree_path, "no processes"));
    }
    check_pstree(&pstree_path, &pstree)?;
    let mut processes = Vec::new();
    for (_, p) in pstree {
        processes.push(load_process(&dir, p, pages, &mut pages_digests)?);
    }
    check_sharing(&dir, &processes)?;
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
        for v in p.mm.vmas.iter().filter(|v| maps_file(v)) {
            let file = u32::try_from(v.shmid).ok().and_then(|id| files.get(&id));
            let (found, kind) = match v.status & VMA_AREA_MEMFD != 0 {
                true => (file.and_then(|f| f.memfd.as_ref()).is_some(), "memfd"),
                false => (file.and_then(|f| f.reg.as_ref()).is_some(), "regular file"),
            };
            if !found {
                return Err(invalid(
                    &dir.join(format!("mm-{}.img", p.pid())),
                    format!("vma {:#x}-{:#x} maps file {}, which is not a {kind} of files.img", v.start, v.end, v.shmid),
                ));
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
    for p in processes {
        for v in p.mm.vmas.iter().filter(|v| v.status & VMA_ANON_SHARED != 0) {
            // Checked when the process was read; a vma of another source is refused here.
            let reach = v.end.checked_sub(v.start).and_then(|len| v.pgoff.checked_add(len)).ok_or_else(|| {
                invalid(&dir.join(format!("mm-{}.img", p.pid())), format!("vma {:#x}-{:#x} reaches beyond 2^64", v.start, v.end))
            })?;
            let size = sizes.entry(v.shmid).or_default();
            *size = (*size).max(reach);
        }
    }
    let mut out = HashMap::new();
    for (shmid, size) in sizes {
        out.insert(shmid, read_shmem(dir, shmid, size)?);
    }
    Ok(out)
}

/// The saved pages of shmem object `shmid` (shared anonymous memory or a
/// memfd) of `size` bytes: pagemap-shmem-SHMID.img and its pages image.
pub fn read_shmem(dir: &Path, shmid: u64, size: u64) -> Result<ShmemImage> {
    let name = format!("pagemap-shmem-{shmid}.img");
    let (pagemap, pages_path) = read_pagemap(dir, &name, Pages::InDir, |e| check_run(e, size))?;
    let pagemap = pagemap.into_iter().map(|(_, e)| e).collect();
    Ok(ShmemImage { size, pagemap, pages_path })
}

/// A pagemap image (each entry with its offset), each run accepted by
/// `check` (or refused with its reason), and the pages image it indexes,
/// whose size must match the runs present in it (when the pages are in the
/// directory).
fn read_pagemap(
    dir: &Path,
    name: &str,
    pages_in: Pages,
    check: impl Fn(&PagemapEntry) -> std::result::Result<(), String>,
) -> Result<(Vec<(u64, PagemapEntry)>, PathBuf)> {
    let pm_path = dir.join(name);
    let mut r = ImageReader::open(&pm_path, Kind::Pagemap)?;
    let head: PagemapHead = r.one()?;
    let mut pagemap = Vec::new();
    // Bytes of the pages image the runs so far take up.
    let mut bytes = 0u64;
    loop {
        let at = r.offset;
        let Some(e) = r.read_entry::<PagemapEntry>()? else { break };
        let located = |what: String| Error::Image { file: pm_path.clone(), offset: at, what };
        check(&e).map_err(located)?;
        if !in_parent(&e) {
            bytes = (e.nr_pages as u64)
                .checked_mul(PAGE_SIZE)
                .and_then(|len| bytes.checked_add(len))
                .ok_or_else(|| located(format!("the runs up to this one hold more than 2^64 bytes ({} more pages)", e.nr_pages)))?;
        }
        pagemap.push((at, e));
    }
    let pages = bytes / PAGE_SIZE;
    let pages_path = dir.join(format!("pages-{}.img", head.pages_id));
    let size = match pages_in {
        Pages::InDir => std::fs::metadata(&pages_path).map_err(|e| invalid(&pages_path, format!("cannot read: {e}")))?.len(),
        Pages::Streamed => bytes,
    };
    if size != bytes {
        return Err(Error::Image {
            file: pages_path,
            offset: size.min(bytes),
            what: format!("holds {size} bytes, but {name} lists {pages} pages ({bytes} bytes)"),
        });
    }
    Ok((pagemap, pages_path))
}

/// What a ghost file holds: its bytes as runs at offsets (one run at 0 for a
/// file without holes), the rest holes up to the entry's size.
pub type GhostData = Vec<(u64, Vec<u8>)>;

type Ghosts = (HashMap<u32, u32>, HashMap<u32, (GhostFileEntry, GhostData)>);

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
        let data = if entry.chunks == Some(true) {
            ghost_chunks(&mut g, entry.size)?
        } else {
            // CRIU leaves the size out when the contents run to the end of the file.
            let data = match entry.size {
                Some(size) => g.raw(size)?,
                None => g.rest()?,
            };
            vec![(0, data)]
        };
        ghost_files.insert(r.remap_id, (entry, data));
    }
    Ok((remaps, ghost_files))
}

/// The runs of a sparse ghost file: each ghost_chunk_entry followed by its
/// bytes, in order, within the file's size.
fn ghost_chunks(g: &mut ImageReader, size: Option<u64>) -> Result<GhostData> {
    let size = size.ok_or_else(|| g.error("a ghost file in chunks without a size"))?;
    let mut chunks: GhostData = Vec::new();
    let mut end = 0;
    while let Some(c) = g.read_entry::<GhostChunkEntry>()? {
        let c_end = c.off.checked_add(c.len).filter(|&e| c.off >= end && e <= size);
        let Some(c_end) = c_end else {
            return Err(g.error(format!("chunk of {} bytes at {} overlaps another or ends past the size {size}", c.len, c.off)));
        };
        chunks.push((c.off, g.raw(c.len)?));
        end = c_end;
    }
    Ok(chunks)
}

/// Processes that are not threads of one another share an fd table or fs
/// state only with their parent (made again with CLONE_FILES, CLONE_FS), and
/// never their memory or signal handlers.
fn check_sharing(dir: &Path, processes: &[ProcessImage]) -> Result<()> {
    let live: Vec<&ProcessImage> = processes.iter().filter(|p| p.zombie.is_none()).collect();
    for (i, p) in live.iter().enumerate() {
        for q in &live[..i] {
            let (a, b) = (&p.ids, &q.ids);
            let shared = [("memory", a.vm_id == b.vm_id), ("signal handlers", a.sighand_id == b.sighand_id)];
            let with_parent = [("fd table", a.files_id == b.files_id), ("fs state", a.fs_id == b.fs_id)];
            let what = shared.iter().find(|s| s.1).or_else(|| with_parent.iter().find(|s| s.1 && q.pid() != p.pstree.ppid as i32));
            if let Some((what, _)) = what {
                let ids = dir.join(format!("ids-{}.img", p.pid()));
                return Err(invalid(&ids, format!("process {} shares its {what} with process {}, which crust cannot make again", p.pid(), q.pid())));
            }
        }
    }
    Ok(())
}

/// One process's images; the digests of the parent pages images it reads
/// from go to `digests`, to be checked with the dump's own.
fn load_process(dir: &Path, pstree: PstreeEntry, pages_in: Pages, digests: &mut Vec<(String, FileDigest)>) -> Result<ProcessImage> {
    let pid = pstree.pid;
    let leader_path = dir.join(format!("core-{pid}.img"));
    let leader: CoreEntry = read_one(&leader_path, Kind::Core)?;
    if let Some(tc) = leader.tc.as_ref().filter(|tc| tc.task_state == TASK_ZOMBIE) {
        if pstree.threads.len() != 1 {
            return Err(invalid(&leader_path, "a zombie with threads"));
        }
        // A wait status: an exit code (signal 0), or the signal that killed it.
        let (code, sig) = (tc.exit_code, tc.exit_code & 0x7f);
        let (exited, killed) = (sig == 0 && code & 0x80 == 0, (1..=64).contains(&sig) && code & 0xff00 == 0);
        if code > 0xffff || !(exited || killed) {
            return Err(invalid(&leader_path, format!("zombie's exit status {:#x} is not one a process can die with", tc.exit_code)));
        }
        return Ok(ProcessImage { zombie: Some(tc.exit_code), pstree, ..Default::default() });
    }
    let Some(task) = leader.tc else {
        return Err(invalid(&leader_path, "leader's core without task state"));
    };
    // criu keeps the ids in ids-PID.img only (the core's own field is of
    // older images); crust writes both, the same.
    let ids_path = dir.join(format!("ids-{pid}.img"));
    let ids = match (ids_path.exists(), leader.ids) {
        (true, _) => read_one(&ids_path, Kind::Ids)?,
        (false, Some(ids)) => ids,
        (false, None) => return Err(invalid(&ids_path, "missing, and the leader's core has no ids either")),
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
    let mut r = ImageReader::open(&mm_path, Kind::Mm)?;
    let mm_at = r.offset;
    let mm: MmEntry = r.one()?;
    let bad_vma = |what: String| Error::Image { file: mm_path.clone(), offset: mm_at, what };
    for v in &mm.vmas {
        if v.start >= v.end || !v.start.is_multiple_of(PAGE_SIZE) || !v.end.is_multiple_of(PAGE_SIZE) {
            return Err(bad_vma(format!("vma {:#x}-{:#x} is not a page-aligned range", v.start, v.end)));
        }
        // The offset of its first page in the file or object it maps, and of its last.
        if !v.pgoff.is_multiple_of(PAGE_SIZE) || v.pgoff.checked_add(v.end - v.start).is_none() {
            return Err(bad_vma(format!("vma {:#x}-{:#x}: offset {:#x} is not a page-aligned offset of its length", v.start, v.end, v.pgoff)));
        }
    }
    let inside = |a: u64| mm.vmas.iter().any(|v| v.start <= a && a < v.end);
    let (pagemap, pages_path) = read_pagemap(dir, &format!("pagemap-{pid}.img"), pages_in, |e| {
        let end = check_page_run(e)?;
        if !e.vaddr.is_multiple_of(PAGE_SIZE) || !inside(e.vaddr) || !inside(end - 1) {
            return Err(format!("pages at {:#x}-{end:#x} lie outside the process's memory", e.vaddr));
        }
        Ok(())
    })?;
    let pages = locate(dir, pid, &format!("pagemap-{pid}.img"), &pagemap, &pages_path, 0, digests)?;
    let pagemap = pagemap.into_iter().map(|(_, e)| e).collect();
    let fdinfo_path = dir.join(format!("fdinfo-{}.img", ids.files_id));
    let mut fds = Vec::new();
    let mut numbers = std::collections::HashSet::new();
    for (at, fd) in read_located::<FdinfoEntry>(&fdinfo_path, Kind::Fdinfo)? {
        // An fd is an int; a restore puts each at its number.
        if fd.fd > i32::MAX as u32 || !numbers.insert(fd.fd) {
            let what = format!("fd {} of process {pid} is not a free fd number", fd.fd);
            return Err(Error::Image { file: fdinfo_path, offset: at, what });
        }
        fds.push(fd);
    }
    let fs: FsEntry = read_one(&dir.join(format!("fs-{pid}.img")), Kind::Fs)?;
    Ok(ProcessImage { pstree, zombie: None, task, threads, ids, mm, pagemap, pages_path, pages, fds, fs })
}

/// Where the bytes of saved pages lie: those of the `len` bytes at `vaddr`
/// are at `offset` in the pages image `path` (of this dump or of a parent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PagesAt {
    pub vaddr: u64,
    pub len: u64,
    pub path: PathBuf,
    pub offset: u64,
}

/// Whether a run's pages are in the parent image (criu's PE_PARENT, or the
/// older `in_parent`) rather than in this dump's pages image.
fn in_parent(e: &PagemapEntry) -> bool {
    e.in_parent == Some(true) || e.flags.unwrap_or(PE_PRESENT) & PE_PARENT != 0
}

/// A run of a process's pagemap is a range (its place is checked by the
/// caller), its pages either in this dump's pages image or in the parent
/// image (also for streamed pages: a live migration's pre-copy rounds left
/// the parent chain on the destination). Returns its end.
fn check_page_run(e: &PagemapEntry) -> std::result::Result<u64, String> {
    let end = (e.nr_pages as u64).checked_mul(PAGE_SIZE).and_then(|len| e.vaddr.checked_add(len));
    let Some(end) = end.filter(|_| e.nr_pages > 0) else {
        return Err(format!("a run of {} pages at {:#x} is not a range", e.nr_pages, e.vaddr));
    };
    let flags = e.flags.unwrap_or(PE_PRESENT);
    if flags & PE_LAZY != 0 {
        return Err("lazy pages (post-copy) are not supported yet".into());
    }
    match (in_parent(e), flags & PE_PRESENT != 0) {
        (true, true) => Err(format!("a run at {:#x} said to be both here and in the parent image (flags {flags:#x})", e.vaddr)),
        (false, false) => Err(format!("a run at {:#x} whose pages are nowhere (flags {flags:#x})", e.vaddr)),
        _ => Ok(end),
    }
}

/// A run of a parent image's pagemap (which has no mm image to check it
/// against): a page-aligned range.
fn check_parent_run(e: &PagemapEntry) -> std::result::Result<(), String> {
    check_page_run(e)?;
    match e.vaddr.is_multiple_of(PAGE_SIZE) {
        true => Ok(()),
        false => Err(format!("a run at {:#x} is not page-aligned", e.vaddr)),
    }
}

/// How many images a chain may have above a dump: a loop of `parent` links
/// is an error, not a hang.
const MAX_CHAIN: usize = 64;

/// Where the bytes of every run of `pagemap` (image `name` of `dir`) lie,
/// sorted by address: runs present in `pages_path` at their place in it,
/// runs in the parent image looked up in `dir/parent` (criu's link to the
/// previous dump of a chain), and so on up the chain. A run no parent holds
/// is an error naming the pagemap and the run's offset in it; so is any
/// fault of a parent's images. The digests of the parents' pages images
/// go to `digests` (names relative to the first dump's directory).
fn locate(
    dir: &Path,
    pid: u32,
    name: &str,
    pagemap: &[(u64, PagemapEntry)],
    pages_path: &Path,
    depth: usize,
    digests: &mut Vec<(String, FileDigest)>,
) -> Result<Vec<PagesAt>> {
    let pm_path = dir.join(name);
    let mut out = Vec::new();
    let mut wanted = Vec::new();
    let mut offset = 0;
    for (at, e) in pagemap {
        // Checked when read: the run is a range, and the sum of runs fits.
        let len = e.nr_pages as u64 * PAGE_SIZE;
        if in_parent(e) {
            wanted.push((e.vaddr, e.vaddr + len, *at));
        } else {
            out.push(PagesAt { vaddr: e.vaddr, len, path: pages_path.to_path_buf(), offset });
            offset += len;
        }
    }
    if let Some(&(start, end, at)) = wanted.first() {
        let pm_name = format!("pagemap-{pid}.img");
        let located = |what: String| Error::Image { file: pm_path.clone(), offset: at, what };
        if depth >= MAX_CHAIN {
            return Err(located(format!("more than {MAX_CHAIN} parent images above it (a loop of parent links?)")));
        }
        // Where the link leads, so that errors name the parent's own files.
        let link = dir.join("parent");
        let parent = link.canonicalize().map_err(|e| {
            located(format!("pages {start:#x}-{end:#x} are in the parent image, but {} leads to none ({e})", link.display()))
        })?;
        if !parent.join(&pm_name).exists() {
            let what = format!("pages {start:#x}-{end:#x} are in the parent image, but there is no {}", parent.join(&pm_name).display());
            return Err(located(what));
        }
        let theirs = parent_pages(&parent, pid, &pm_name, depth, digests)?;
        for (start, end, at) in wanted {
            let mut pos = start;
            let first = theirs.partition_point(|p| p.vaddr + p.len <= start);
            for p in &theirs[first..] {
                if p.vaddr > pos || pos >= end {
                    break;
                }
                let to = end.min(p.vaddr + p.len);
                out.push(PagesAt { vaddr: pos, len: to - pos, path: p.path.clone(), offset: p.offset + (pos - p.vaddr) });
                pos = to;
            }
            if pos < end {
                let what = format!("page {pos:#x} is in the parent image, but {} does not hold it", parent.join(&pm_name).display());
                return Err(Error::Image { file: pm_path.clone(), offset: at, what });
            }
        }
    }
    out.sort_by_key(|p| p.vaddr);
    if let Some(w) = out.windows(2).find(|w| w[0].vaddr + w[0].len > w[1].vaddr) {
        return Err(invalid(&pm_path, format!("runs at {:#x} and {:#x} overlap", w[0].vaddr, w[1].vaddr)));
    }
    Ok(out)
}

/// The pages of process `pid` in the parent images directory `parent`
/// (checked against its manifest), wherever up the chain they lie.
fn parent_pages(parent: &Path, pid: u32, pm_name: &str, depth: usize, digests: &mut Vec<(String, FileDigest)>) -> Result<Vec<PagesAt>> {
    let manifest = digest::read_manifest(parent)?;
    if let Some(d) = manifest.as_ref().and_then(|m| m.get(pm_name)) {
        digest::verify_file(parent, pm_name, d)?;
    }
    let (pagemap, pages_path) = read_pagemap(parent, pm_name, Pages::InDir, check_parent_run)?;
    let pages_name = pages_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(d) = manifest.as_ref().and_then(|m| m.get(&pages_name)) {
        let prefix = "parent/".repeat(depth + 1);
        digests.push((format!("{prefix}{pages_name}"), d.clone()));
    }
    locate(parent, pid, pm_name, &pagemap, &pages_path, depth + 1, digests)
}

/// Where the saved pages of process `pid` in the dump (or pre-dump) in `dir`
/// lie, following its chain of parents: none if it has no pagemap there (a
/// process the dump did not know). For a dump that writes only what changed
/// since `dir`.
pub fn pages_of(dir: &Path, pid: u32) -> Result<Vec<PagesAt>> {
    let name = format!("pagemap-{pid}.img");
    if !dir.join(&name).exists() {
        return Ok(Vec::new());
    }
    let (pagemap, pages_path) = read_pagemap(dir, &name, Pages::InDir, check_parent_run)?;
    locate(dir, pid, &name, &pagemap, &pages_path, 0, &mut Vec::new())
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
