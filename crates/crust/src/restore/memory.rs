//! The memory of a process being restored: crust's mappings replaced by the
//! image's (see [`super::layout`]), the saved pages put in, the mm's bounds,
//! auxv and executable set. Shared memory objects are made by [`crate::shmem`],
//! memfds by [`crate::files::memfd`].

use std::collections::HashMap;

use super::layout;
use super::Proc;
use crate::error::Result;
use crate::files::{memfd, Inherited};
use crate::images::load::{DumpImage, ProcessImage};
use crate::mem::Vma;
use crate::task::{Scratch, Task};

/// Where the contents of the saved pages come from.
pub trait PageSource {
    /// Put the saved pages of process `p` into its memory (mapped, and
    /// writable at this point), telling `progress` the bytes of each piece
    /// put in place; returns how many pages.
    fn fill(&mut self, task: &Task, scratch: &mut Scratch, p: &ProcessImage, progress: &mut dyn FnMut(u64)) -> Result<u64>;
}

/// Pages in the images directory: each task reads its own with pread.
pub struct PagesInDir;

impl PageSource for PagesInDir {
    fn fill(&mut self, task: &Task, scratch: &mut Scratch, p: &ProcessImage, progress: &mut dyn FnMut(u64)) -> Result<u64> {
        let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u32;
        let fd = task.open(scratch, &p.pages_path.to_string_lossy(), flags)?;
        let pages = task.fill_pages(&p.pagemap, fd, progress)?;
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
    inherited: &Inherited,
    source: &mut dyn PageSource,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let task = &mut p.leader;
    layout::unmap_crust(task, crust_layout, &p.scratch)?;
    layout::move_vdso(task, &p.image.mm, crust_layout, &p.scratch)?;
    let mut opened: HashMap<(u32, u32), u64> = HashMap::new();
    {
        let scratch = &mut p.scratch;
        let task: &Task = task;
        layout::map_vmas(task, &p.image.mm, &p.image.pagemap, shmem_fds, |file_id, flags| {
            if let Some(fd) = opened.get(&(file_id, flags)) {
                return Ok(*fd);
            }
            let path = match memfd::path_to_map(img, inherited, file_id) {
                Some(path) => path?,
                None => img.reg_path(file_id)?.to_string(),
            };
            let fd = task.open(scratch, &path, flags | libc::O_CLOEXEC as u32)?;
            opened.insert((file_id, flags), fd);
            Ok(fd)
        })?;
    }
    let task: &Task = task;
    let pages = source.fill(task, &mut p.scratch, p.image, progress)?;
    layout::protect_vmas(task, &p.image.mm, &p.image.pagemap)?;
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
