//! Shared anonymous memory: a shmem object that several processes of the tree
//! map after a fork (a pre-forking server's shared zones). Each object is
//! saved once, by inode, as CRIU does: pagemap-shmem-INO.img (runs of pages,
//! by offset in the object) and a pages image. A restore makes it once, in the
//! root before anything forks, so that every process maps the same object.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::error::{Context, Error, Result};
use crate::files::FdRestorer;
use crate::images::load::{DumpImage, ShmemImage};
use crate::images::proto::{PagemapEntry, PagemapHead};
use crate::images::{ImageDir, Kind};
use crate::images::criu::{PAGE_SIZE, PE_PRESENT};
use crate::mem::Vma;

/// Pages images of shared memory are numbered from here (those of processes
/// from 1), so that the two never meet.
pub const PAGES_ID_BASE: u32 = 1 << 20;

/// The shared memory objects of a dump.
#[derive(Default)]
pub struct SharedMemory {
    /// (inode, a /proc path that opens it, pages id, bytes the vmas reach
    /// into it), in the order first seen.
    objects: Vec<(u64, String, u32, u64)>,
    by_inode: HashMap<u64, usize>,
}

impl SharedMemory {
    /// The shmem object behind shared anonymous vma `v` of `pid`: its inode,
    /// which names it in the images (vma_entry.shmid).
    pub fn note(&mut self, pid: i32, v: &Vma) -> Result<u64> {
        let source = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
        let ino = std::fs::metadata(&source).ctx(|| format!("stat {source}"))?.ino();
        // Only what some vma reaches is kept (a restore sizes the object so).
        let reach = v.pgoff + (v.end - v.start);
        match self.by_inode.get(&ino) {
            Some(&i) => self.objects[i].3 = self.objects[i].3.max(reach),
            None => {
                let pages_id = PAGES_ID_BASE + self.objects.len() as u32;
                self.by_inode.insert(ino, self.objects.len());
                self.objects.push((ino, source, pages_id, reach));
            }
        }
        Ok(ino)
    }

    /// Memory shared with a process outside the tree would be split by a
    /// restore: refuse it. Its inode shows in the maps of every process
    /// that maps it.
    pub fn check_within(&self, tree: &[i32]) -> Result<()> {
        if self.objects.is_empty() {
            return Ok(());
        }
        use procfs::process::MMapPath;
        for p in procfs::process::all_processes().into_iter().flatten().flatten() {
            let pid = p.pid();
            if tree.contains(&pid) {
                continue;
            }
            let maps = p.maps().map(|m| m.0).unwrap_or_default();
            let shared_anon = |m: &&procfs::process::MemoryMap| {
                matches!(&m.pathname, MMapPath::Path(path) if path.as_os_str() == crate::mem::SHARED_ANON_NAME)
            };
            for m in maps.iter().filter(shared_anon) {
                let ino = m.inode;
                if self.by_inode.contains_key(&ino) {
                    return Err(Error::unsupported(
                        format!("shared memory {ino}"),
                        format!("is shared with process {pid}, outside the dumped tree: not supported yet"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// pagemap-shmem-INO.img and pages-ID.img of each object.
    pub fn write(&self, dir: &mut ImageDir) -> Result<u64> {
        let mut bytes = 0;
        for (ino, source, pages_id, reach) in &self.objects {
            bytes += write_object(dir, *ino, source, *pages_id, *reach)?;
        }
        Ok(bytes)
    }
}

/// pagemap-shmem-INO.img and pages-ID.img of the shmem object `ino` (shared
/// anonymous memory or a memfd), up to `reach` bytes: the runs of pages that
/// hold data (SEEK_DATA), read through `source`, a /proc path that opens it.
pub fn write_object(dir: &mut ImageDir, ino: u64, source: &str, pages_id: u32, reach: u64) -> Result<u64> {
    let what = || format!("reading shared memory {ino} through {source}");
    let file = File::open(source).ctx(what)?;
    let size = file.metadata().ctx(what)?.len().min(reach);
    let runs = data_runs(&file, size).ctx(what)?;
    let mut map = dir.writer(&format!("pagemap-shmem-{ino}.img"), Kind::ShmemPagemap)?;
    map.entry(&PagemapHead { pages_id })?;
    for &(off, len) in &runs {
        let nr_pages = (len / PAGE_SIZE) as u32;
        map.entry(&PagemapEntry { vaddr: off, nr_pages, in_parent: None, flags: Some(PE_PRESENT) })?;
    }
    let mut bytes = map.finish()?;
    let mut pages = dir.writer(&format!("pages-{pages_id}.img"), Kind::Pages)?;
    let mut buf = vec![0u8; 1 << 20];
    for &(off, len) in &runs {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            read_page_padded(&file, &mut buf[..n], off + done).ctx(what)?;
            pages.raw(&buf[..n])?;
            done += n as u64;
        }
    }
    bytes += pages.finish()?;
    Ok(bytes)
}

/// Read `buf` from `file` at `offset`; the part past its end (a memfd's size
/// need not be a whole number of pages) reads as zeros.
fn read_page_padded(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Page-aligned runs (offset, length) of `file` that hold data, up to `size`.
fn data_runs(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    let mut runs = Vec::new();
    let mut at = 0i64;
    while (at as u64) < size {
        let data = match lseek(file, at, Whence::SeekData) {
            Ok(data) => data,
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(file, data, Whence::SeekHole)?;
        let start = data as u64 / PAGE_SIZE * PAGE_SIZE;
        let end = (hole as u64).min(size).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if end > start {
            runs.push((start, end - start));
        }
        at = hole;
    }
    Ok(runs)
}

/// Every shared memory object, made in the root before anything forks (so
/// that every process inherits the same one): a shared anonymous mapping,
/// filled inside the root (its pages are charged to the tree's cgroup, not
/// crust's), whose object the root keeps by an fd through
/// /proc/self/map_files. Returns the fd of each, by shmid.
pub fn make(r: &mut FdRestorer, img: &DumpImage) -> Result<HashMap<u64, u64>> {
    let mut fds = HashMap::new();
    let mut ids: Vec<&u64> = img.shmem.keys().collect();
    ids.sort_unstable();
    for &shmid in ids {
        let obj = &img.shmem[&shmid];
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
        let addr = r.task.call("mmap of shared memory", libc::SYS_mmap, [0, obj.size, prot, flags, u64::MAX, 0])?;
        let made = fill_at(r, addr, obj, shmid).and_then(|()| {
            let path = format!("/proc/self/map_files/{addr:x}-{:x}", addr.saturating_add(obj.size));
            r.open_low(&path, (libc::O_RDWR | libc::O_CLOEXEC) as u32)
        });
        r.task.call("munmap", libc::SYS_munmap, [addr, obj.size, 0, 0, 0, 0])?;
        // Inherited by the forks: not close-on-exec once moved up.
        let fd = r.to_high(made?)?;
        fds.insert(shmid, fd);
    }
    Ok(fds)
}

/// Fill the object of `fd` (a memfd, already of its size) with its saved
/// pages, through a mapping of it in the task.
pub fn fill(r: &mut FdRestorer, fd: u64, obj: &ShmemImage, shmid: u64) -> Result<()> {
    if obj.pagemap.is_empty() {
        return Ok(());
    }
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let addr = r.task.call("mmap of a memfd", libc::SYS_mmap, [0, obj.size, prot, libc::MAP_SHARED as u64, fd, 0])?;
    let filled = fill_at(r, addr, obj, shmid);
    r.task.call("munmap", libc::SYS_munmap, [addr, obj.size, 0, 0, 0, 0])?;
    filled
}

/// The saved pages of `obj`, put into its mapping at `addr` in the task.
fn fill_at(r: &mut FdRestorer, addr: u64, obj: &ShmemImage, shmid: u64) -> Result<()> {
    // Each run lies inside the object (the loader checked), which is mapped at `addr`.
    let at_addr: Vec<_> = obj
        .pagemap
        .iter()
        .map(|e| match addr.checked_add(e.vaddr) {
            Some(vaddr) => Ok(PagemapEntry { vaddr, ..*e }),
            None => Err(Error::image("pagemap-shmem", format!("object {shmid}: a run at offset {:#x} lies beyond 2^64", e.vaddr))),
        })
        .collect::<Result<_>>()?;
    let pages = r.open_low(&obj.pages_path.to_string_lossy(), (libc::O_RDONLY | libc::O_CLOEXEC) as u32)?;
    let filled = r.task.fill_pages(&at_addr, pages, &mut |_| {});
    r.task.call("close", libc::SYS_close, [pages, 0, 0, 0, 0, 0])?;
    filled.map(|_| ())
}
