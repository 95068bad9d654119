//! The memory of a process being restored: crust's mappings replaced by the
//! image's (see [`super::layout`]), the saved pages put in, the mm's bounds,
//! auxv and executable set; and shared memory objects, made once in the root.

use std::collections::HashMap;

use super::layout;
use super::Proc;
use crate::error::{Error, Result};
use crate::files::FdRestorer;
use crate::images::load::{DumpImage, ProcessImage};
use crate::images::proto::PagemapEntry;
use crate::mem::Vma;
use crate::task::{Scratch, Task};

/// Where the contents of the saved pages come from.
pub trait PageSource {
    /// Put the saved pages of process `p` into its memory (mapped, and
    /// writable at this point); returns how many pages.
    fn fill(&mut self, task: &Task, scratch: &mut Scratch, p: &ProcessImage) -> Result<u64>;
}

/// Pages in the images directory: each task reads its own with pread.
pub struct PagesInDir;

impl PageSource for PagesInDir {
    fn fill(&mut self, task: &Task, scratch: &mut Scratch, p: &ProcessImage) -> Result<u64> {
        let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u32;
        let fd = task.open(scratch, &p.pages_path.to_string_lossy(), flags)?;
        let pages = layout::fill_pages(task, &p.pagemap, fd)?;
        task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        Ok(pages)
    }
}

/// Replace crust's copy with the image's memory. Returns the pages restored.
pub(super) fn restore(
    p: &mut Proc,
    crust_layout: &[Vma],
    img: &DumpImage,
    shmem_fds: &HashMap<u64, u64>,
    source: &mut dyn PageSource,
) -> Result<u64> {
    let task = &mut p.leader;
    layout::unmap_crust(task, crust_layout, &p.scratch)?;
    layout::move_vdso(task, &p.image.mm, crust_layout, &p.scratch)?;
    let mut opened: HashMap<(u32, u32), u64> = HashMap::new();
    {
        let scratch = &mut p.scratch;
        let task: &Task = task;
        layout::map_vmas(task, &p.image.mm, shmem_fds, |file_id, flags| {
            if let Some(fd) = opened.get(&(file_id, flags)) {
                return Ok(*fd);
            }
            let fd = task.open(scratch, img.reg_path(file_id)?, flags | libc::O_CLOEXEC as u32)?;
            opened.insert((file_id, flags), fd);
            Ok(fd)
        })?;
    }
    let task: &Task = task;
    let pages = source.fill(task, &mut p.scratch, p.image)?;
    layout::protect_vmas(task, &p.image.mm)?;
    // The mm's own bounds, auxv and executable.
    let mm = &p.image.mm;
    let exe_fd = task.open(&mut p.scratch, img.reg_path(mm.exe_file_id)?, (libc::O_RDONLY | libc::O_CLOEXEC) as u32)?;
    let auxv = p.scratch.reset().put_u64s(&mm.mm_saved_auxv)?;
    let mut map = vec![
        mm.mm_start_code,
        mm.mm_end_code,
        mm.mm_start_data,
        mm.mm_end_data,
        mm.mm_start_brk,
        mm.mm_brk,
        mm.mm_start_stack,
        mm.mm_arg_start,
        mm.mm_arg_end,
        mm.mm_env_start,
        mm.mm_env_end,
        auxv,
    ];
    map.push((mm.mm_saved_auxv.len() as u64 * 8) | (exe_fd << 32));
    let map_addr = p.scratch.put_u64s(&map)?;
    task.call("prctl(PR_SET_MM_MAP)", libc::SYS_prctl, [libc::PR_SET_MM as u64, libc::PR_SET_MM_MAP as u64, map_addr, map.len() as u64 * 8, 0, 0])?;
    for fd in opened.into_values().chain([exe_fd]) {
        task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    Ok(pages)
}

/// Every shared memory object, made in the root before anything forks (so
/// that every process inherits the same one): a shared anonymous mapping,
/// filled inside the root (its pages are charged to the tree's cgroup, not
/// crust's), whose object the root keeps by an fd through
/// /proc/self/map_files. Returns the fd of each, by shmid.
pub(super) fn make_shared(r: &mut FdRestorer, img: &DumpImage) -> Result<HashMap<u64, u64>> {
    let mut fds = HashMap::new();
    let mut ids: Vec<&u64> = img.shmem.keys().collect();
    ids.sort_unstable();
    for &shmid in ids {
        let obj = &img.shmem[&shmid];
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
        let addr = r.task.call("mmap of shared memory", libc::SYS_mmap, [0, obj.size, prot, flags, u64::MAX, 0])?;
        let made = (|| -> Result<u64> {
            // Each run lies inside the object (the loader checked), which is mapped at `addr`.
            let at_addr: Vec<_> = obj
                .pagemap
                .iter()
                .map(|e| match addr.checked_add(e.vaddr) {
                    Some(vaddr) => Ok(PagemapEntry { vaddr, ..e.clone() }),
                    None => Err(Error::Invalid(format!("shared memory {shmid}: a run at offset {:#x} lies beyond 2^64", e.vaddr))),
                })
                .collect::<Result<_>>()?;
            let pages = r.open_low(&obj.pages_path.to_string_lossy(), (libc::O_RDONLY | libc::O_CLOEXEC) as u32)?;
            let filled = layout::fill_pages(r.task, &at_addr, pages);
            r.task.call("close", libc::SYS_close, [pages, 0, 0, 0, 0, 0])?;
            filled?;
            let path = format!("/proc/self/map_files/{addr:x}-{:x}", addr.saturating_add(obj.size));
            r.open_low(&path, (libc::O_RDWR | libc::O_CLOEXEC) as u32)
        })();
        r.task.call("munmap", libc::SYS_munmap, [addr, obj.size, 0, 0, 0, 0])?;
        // Inherited by the forks: not close-on-exec once moved up.
        let fd = r.to_high(made?)?;
        fds.insert(shmid, fd);
    }
    Ok(fds)
}

