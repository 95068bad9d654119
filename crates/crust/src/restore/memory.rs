//! The memory of a process being restored: what it started with replaced by
//! the image's (see [`super::layout`]; what a child inherited from its parent
//! is kept where it can be, see [`super::inherit`]), the saved pages put in,
//! the mm's bounds, auxv and executable set. Shared memory objects are made by
//! [`crate::files::shmem`], memfds by [`crate::files::memfd`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use super::inherit::{self, PageCounts, PageSink, Piece};
use super::layout;
use super::Proc;
use crate::error::{Context, Result};
use crate::files::{memfd, Inherited};
use crate::images::load::{DumpImage, PagesAt, ProcessImage};
use crate::images::proto::VmaEntry;
use crate::mem::Vma;
use crate::ranges::subtract;
use crate::task::{Scratch, Task};

/// Where the contents of the saved pages come from.
pub trait PageSource {
    /// Put the saved pages of process `p` into its memory (mapped, and
    /// writable at this point) through `sink`, which compares those over
    /// inherited pages and tells the progress meter.
    fn fill(&mut self, task: &Task, scratch: &mut Scratch, p: &ProcessImage, sink: &mut PageSink) -> Result<()>;
}

/// Pages in the images directory (and, for a dump of a chain, in its
/// parents'): the task reads its own with pread; those over inherited pages
/// crust reads, to compare them first with its parent's, also in the images.
pub struct PagesInDir;

impl PageSource for PagesInDir {
    fn fill(&mut self, task: &Task, scratch: &mut Scratch, p: &ProcessImage, sink: &mut PageSink) -> Result<()> {
        sink.compare_with_parent_image()?;
        fill_from_files(task, scratch, &p.pages, sink)
    }
}

/// The pages of `runs` from the pages images they are in (files here): the
/// task reads its own with pread; those over inherited pages crust reads,
/// to compare them first.
pub fn fill_from_files<'a>(task: &Task, scratch: &mut Scratch, runs: impl IntoIterator<Item = &'a PagesAt>, sink: &mut PageSink) -> Result<()> {
    // Each pages image read from, opened once: in the task, in crust.
    let mut fds: HashMap<&Path, u64> = HashMap::new();
    let mut files: HashMap<&Path, File> = HashMap::new();
    let result = (|| {
        for run in runs {
            for (at, n, under) in sink.pieces(run.vaddr, run.len) {
                let from = run.offset + (at - run.vaddr);
                match under {
                    Piece::Same => sink.keep(n),
                    Piece::Inherited => {
                        let file = match files.entry(&run.path) {
                            Entry::Occupied(f) => f.into_mut(),
                            Entry::Vacant(v) => v.insert(File::open(&run.path).ctx(|| format!("opening {}", run.path.display()))?),
                        };
                        inherit::put_from_file(sink, file, from, at, n)?;
                    }
                    Piece::Fresh => {
                        let fd = match fds.get(run.path.as_path()) {
                            Some(fd) => *fd,
                            None => {
                                let fd = task.open_host(scratch, &run.path.to_string_lossy(), (libc::O_RDONLY | libc::O_CLOEXEC) as u32)?;
                                *fds.entry(&run.path).or_insert(fd)
                            }
                        };
                        task.fill_run(fd, at, n, from, &mut |b| sink.written_by_task(b))?;
                    }
                }
            }
        }
        Ok(())
    })();
    for fd in fds.into_values() {
        task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    result
}

/// What a new task starts with: the mappings it has now, and of them what it
/// keeps (inherited from its parent).
pub(super) struct Start<'a> {
    pub here: Vec<Vma>,
    pub kept: Vec<&'a VmaEntry>,
    /// Where it holds pages of its parent in the kept vmas (sorted, apart).
    pub inherited: Vec<(u64, u64)>,
    /// Of those, where the dump saw the parent's own pages: the same contents.
    pub same: Vec<(u64, u64)>,
    /// Its parent, whose memory it has.
    pub parent: Option<&'a ProcessImage>,
}

impl<'a> Start<'a> {
    /// A fork of crust: all of it goes.
    pub fn crust(layout: &[Vma]) -> Start<'a> {
        Start { here: layout.to_vec(), kept: Vec::new(), inherited: Vec::new(), same: Vec::new(), parent: None }
    }

    /// A child forked by its restored `parent`: it has the parent's memory,
    /// and keeps what its image has alike unless `private_copies`.
    /// `shared_at_dump`: the pages it shared physically with its parent when
    /// dumped (sorted, apart).
    pub fn forked(
        pid: i32,
        image: &'a ProcessImage,
        parent: &'a ProcessImage,
        private_copies: bool,
        shared_at_dump: &[(u64, u64)],
    ) -> Result<Start<'a>> {
        let kept = if private_copies { Vec::new() } else { inherit::kept_vmas(&image.mm, &parent.mm) };
        let inherited = inherit::inherited_pages(&parent.pagemap, &kept);
        let same = subtract(&inherited, &subtract(&inherited, shared_at_dump));
        Ok(Start { here: crate::mem::read_layout(pid)?, kept, inherited, same, parent: Some(parent) })
    }
}

/// Replace what the task started with by the image's memory. Returns the
/// pages written and compared.
pub(super) fn restore(
    p: &mut Proc,
    start: Start,
    img: &DumpImage,
    shmem_fds: &HashMap<u64, u64>,
    inherited: &Inherited,
    source: &mut dyn PageSource,
    progress: &mut dyn FnMut(u64),
) -> Result<PageCounts> {
    let task = &mut p.leader;
    let mut keep: Vec<(u64, u64)> = start.kept.iter().map(|v| (v.start, v.end)).collect();
    keep.push((p.scratch.addr, p.scratch.addr + p.scratch.len));
    keep.sort_unstable();
    layout::unmap_all_but(task, &start.here, &keep)?;
    layout::move_vdso(task, &p.image.mm, &start.here, &p.scratch)?;
    let mut opened: HashMap<(u32, u32), u64> = HashMap::new();
    {
        let scratch = &mut p.scratch;
        let task: &Task = task;
        layout::map_vmas(task, &p.image.mm, &p.image.pagemap, &start.kept, shmem_fds, |file_id, flags| {
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
    let mut sink = PageSink::new(task.pid, &start.inherited, &start.same, start.parent, progress);
    source.fill(task, &mut p.scratch, p.image, &mut sink)?;
    let counts = sink.counts();
    inherit::drop_unsaved(task, &start.inherited, &p.image.pagemap)?;
    layout::protect_vmas(task, &p.image.mm, &p.image.pagemap)?;
    // The mm's own bounds, auxv and executable. An executable the task has
    // from its parent already stays: the kernel refuses to replace one that
    // is still mapped, even by itself.
    let mm = &p.image.mm;
    let exe = img.reg_path(mm.exe_file_id)?;
    let inherited_exe = match start.parent {
        Some(parent) => img.reg_path(parent.mm.exe_file_id)? == exe,
        None => false,
    };
    let exe_fd = if inherited_exe { None } else { Some(task.open(&mut p.scratch, exe, (libc::O_RDONLY | libc::O_CLOEXEC) as u32)?) };
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
    map.push((mm.mm_saved_auxv.len() as u64 * 8) | (exe_fd.unwrap_or(u32::MAX as u64) << 32));
    let map_addr = p.scratch.put_u64s(&map)?;
    task.call("prctl(PR_SET_MM_MAP)", libc::SYS_prctl, [libc::PR_SET_MM as u64, libc::PR_SET_MM_MAP as u64, map_addr, map.len() as u64 * 8, 0, 0])?;
    for fd in opened.into_values().chain(exe_fd) {
        task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    Ok(counts)
}
