//! Memory a child shares with its parent copy-on-write, kept shared.
//!
//! A child is forked by its parent once the parent's memory is restored, so it
//! starts with the parent's pages shared copy-on-write, as the original child
//! did after its fork. It keeps each private mapping it also has in its image
//! at the same place (see [`kept_vmas`]), and of the pages there it writes
//! only those whose saved contents differ from the inherited ones: the images
//! do not say which pages were shared (CRIU's format has no mark for it), so
//! each is compared, as CRIU does. A page neither process wrote after the fork
//! thus ends up one physical page again.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::ranges::{split, subtract};
use crate::error::{Context, Error, Result};
use crate::images::criu::{PAGE_SIZE, VMA_ANON_SHARED, VMA_AREA_REGULAR, VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR};
use crate::images::load::ProcessImage;
use crate::images::proto::{MmEntry, PagemapEntry, VmaEntry};
use crate::task::Task;

/// Pages a restore wrote, and those it found in place already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCounts {
    /// Pages written into the tasks.
    pub restored: u64,
    /// Pages compared with the page the task inherited there.
    pub compared: u64,
    /// Of those, the ones equal to it: left shared with the parent.
    pub skipped_cow: u64,
}

impl std::ops::AddAssign for PageCounts {
    fn add_assign(&mut self, o: PageCounts) {
        self.restored += o.restored;
        self.compared += o.compared;
        self.skipped_cow += o.skipped_cow;
    }
}

fn is_private_regular(v: &VmaEntry) -> bool {
    let special = VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_ANON_SHARED;
    v.status & VMA_AREA_REGULAR != 0 && v.status & special == 0 && v.flags & libc::MAP_SHARED as u32 == 0
}

/// The vmas of `child` it keeps as inherited from `parent`: private ones the
/// parent's image has with the same bounds, kind (status, so anonymous or
/// file, heap, stack), mmap flags, backing (the same file at the same offset)
/// and madvise advice, unless the fork does not pass them on (MADV_DONTFORK)
/// or passes them on emptied (MADV_WIPEONFORK).
/// Only the protection may differ: it is set afterwards like any vma's. What
/// the kept vmas hold is then corrected page by page, so keeping one that was
/// not in fact inherited costs time, never correctness.
pub fn kept_vmas<'a>(child: &'a MmEntry, parent: &MmEntry) -> Vec<&'a VmaEntry> {
    let by_bounds: HashMap<(u64, u64), &VmaEntry> =
        parent.vmas.iter().filter(|u| is_private_regular(u)).map(|u| ((u.start, u.end), u)).collect();
    let not_inherited = (1u64 << libc::MADV_DONTFORK) | (1u64 << libc::MADV_WIPEONFORK);
    child
        .vmas
        .iter()
        .filter(|v| is_private_regular(v))
        .filter(|v| {
            by_bounds.get(&(v.start, v.end)).is_some_and(|u| {
                let anon = v.flags & libc::MAP_ANONYMOUS as u32 != 0;
                u.status == v.status
                    && u.flags == v.flags
                    && u.madv == v.madv
                    && u.madv.unwrap_or(0) & not_inherited == 0
                    && (anon || (u.shmid == v.shmid && u.pgoff == v.pgoff))
            })
        })
        .collect()
}

/// The address ranges, sorted and apart, where a child holds pages it
/// inherited in its kept vmas: where the parent's saved pages were put
/// (elsewhere in those vmas the parent holds nothing of its own).
pub fn inherited_pages(parent_pagemap: &[PagemapEntry], kept: &[&VmaEntry]) -> Vec<(u64, u64)> {
    let mut kept: Vec<(u64, u64)> = kept.iter().map(|v| (v.start, v.end)).collect();
    kept.sort_unstable();
    let mut out = Vec::new();
    for e in parent_pagemap {
        let (start, end) = (e.vaddr, e.vaddr.saturating_add(e.nr_pages as u64 * PAGE_SIZE));
        let first = kept.partition_point(|&(_, ke)| ke <= start);
        for &(ks, ke) in kept[first..].iter().take_while(|&&(ks, _)| ks < end) {
            out.push((start.max(ks), end.min(ke)));
        }
    }
    out.sort_unstable();
    out
}

/// Inherited pages the child did not have when it was dumped (it unmapped or
/// discarded them after the fork) are dropped: anonymous memory reads as
/// zeros again, a private file mapping as its file.
pub fn drop_unsaved(task: &Task, inherited: &[(u64, u64)], pagemap: &[PagemapEntry]) -> Result<()> {
    let saved: Vec<(u64, u64)> = pagemap.iter().map(|e| (e.vaddr, e.vaddr.saturating_add(e.nr_pages as u64 * PAGE_SIZE))).collect();
    for (start, end) in subtract(inherited, &saved) {
        task.call("madvise(MADV_DONTNEED) of an inherited page", libc::SYS_madvise, [start, end - start, libc::MADV_DONTNEED as u64, 0, 0, 0])?;
    }
    Ok(())
}

/// Where a process's saved pages go: straight into its memory where it holds
/// nothing inherited; where it does, page by page only where they differ.
pub struct PageSink<'a> {
    pid: i32,
    inherited: &'a [(u64, u64)],
    /// Of those, where the contents are known to be the same.
    same: &'a [(u64, u64)],
    parent: Option<&'a ProcessImage>,
    before: Before,
    counts: PageCounts,
    progress: &'a mut dyn FnMut(u64),
    buf: Vec<u8>,
}

/// Where the contents of the pages a child inherited are read from.
enum Before {
    /// The task's memory, through /proc/PID/mem (opened when first needed):
    /// process_vm_readv would pin the pages, and the kernel copies a shared
    /// anonymous page it pins for reading (a pinned page must stay the one
    /// the task sees), unsharing every page it reads; /proc/PID/mem only
    /// takes a reference.
    Memory(Option<File>),
    /// The parent's pages images (its dump's, and its chain's), which hold
    /// what the parent's restore put there: read from the page cache, faster
    /// than through the task's page tables. Its runs: (start, end, offset in
    /// the file, which of `files`).
    ParentImage { files: Vec<File>, runs: Vec<(u64, u64, u64, usize)> },
}

/// What lies under a piece of saved pages in the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Nothing inherited: written as it is.
    Fresh,
    /// Pages inherited from the parent: compared first.
    Inherited,
    /// Pages inherited that the dump saw were the parent's own physical
    /// pages (see `DumpMeta::shared_with_parent`), so the same contents.
    Same,
}

/// Bytes compared at once.
const CHUNK: usize = 1 << 20;

impl<'a> PageSink<'a> {
    /// A sink for the pages of task `pid`, which holds pages of `parent`'s
    /// at `inherited`, those at `same` (a part of them) known to be the
    /// saved ones.
    pub fn new(
        pid: i32,
        inherited: &'a [(u64, u64)],
        same: &'a [(u64, u64)],
        parent: Option<&'a ProcessImage>,
        progress: &'a mut dyn FnMut(u64),
    ) -> PageSink<'a> {
        PageSink { pid, inherited, same, parent, before: Before::Memory(None), counts: PageCounts::default(), progress, buf: Vec::new() }
    }

    /// Compare with the parent's pages image instead of the task's memory
    /// (where the images are at hand).
    pub fn compare_with_parent_image(&mut self) -> Result<()> {
        let Some(parent) = self.parent.filter(|_| !self.inherited.is_empty()) else { return Ok(()) };
        // Each pages image of the parent's (its own, its chain's) once.
        let mut files: Vec<(&std::path::Path, File)> = Vec::new();
        let mut runs = Vec::with_capacity(parent.pages.len());
        for p in &parent.pages {
            let i = match files.iter().position(|(path, _)| *path == p.path.as_path()) {
                Some(i) => i,
                None => {
                    files.push((&p.path, File::open(&p.path).ctx(|| format!("opening {}", p.path.display()))?));
                    files.len() - 1
                }
            };
            runs.push((p.vaddr, p.vaddr.saturating_add(p.len), p.offset, i));
        }
        let files = files.into_iter().map(|(_, f)| f).collect();
        self.before = Before::ParentImage { files, runs };
        Ok(())
    }

    /// Read what the task inherited at `vaddr` into `buf`.
    fn read_before(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<()> {
        match &mut self.before {
            Before::Memory(mem) => {
                if mem.is_none() {
                    let path = format!("/proc/{}/mem", self.pid);
                    *mem = Some(File::open(&path).ctx(|| format!("opening {path}"))?);
                }
                let mem = mem.as_ref().expect("opened above");
                mem.read_exact_at(buf, vaddr).ctx(|| format!("reading memory of process {} at {vaddr:#x}", self.pid))
            }
            Before::ParentImage { files, runs } => {
                let mut done = 0usize;
                while done < buf.len() {
                    let at = vaddr + done as u64;
                    let i = runs.partition_point(|&(_, end, _, _)| end <= at);
                    let &(start, end, offset, file) = runs.get(i).filter(|r| r.0 <= at).ok_or_else(|| {
                        Error::Invalid(format!("process {}: inherited page {at:#x} is not in its parent's pages", self.pid))
                    })?;
                    let n = ((end - at) as usize).min(buf.len() - done);
                    let from = offset + (at - start);
                    files[file].read_exact_at(&mut buf[done..done + n], from).ctx(|| format!("reading the parent's saved pages at offset {from}"))?;
                    done += n;
                }
                Ok(())
            }
        }
    }

    pub fn counts(&self) -> PageCounts {
        self.counts
    }

    /// The parts of `len` bytes at `vaddr`, in order, each with what lies
    /// under it.
    pub fn pieces(&self, vaddr: u64, len: u64) -> Vec<(u64, u64, Piece)> {
        let mut out = Vec::new();
        for (at, n, inherited) in split(self.inherited, vaddr, len) {
            if !inherited {
                out.push((at, n, Piece::Fresh));
                continue;
            }
            for (at, n, same) in split(self.same, at, n) {
                out.push((at, n, if same { Piece::Same } else { Piece::Inherited }));
            }
        }
        out
    }

    /// `bytes` of pages left as inherited without a look: known to be the same.
    pub fn keep(&mut self, bytes: u64) {
        self.counts.skipped_cow += bytes / PAGE_SIZE;
        (self.progress)(bytes);
    }

    /// `bytes` of pages the task read into place itself, over nothing inherited.
    pub fn written_by_task(&mut self, bytes: u64) {
        self.counts.restored += bytes / PAGE_SIZE;
        (self.progress)(bytes);
    }

    /// Put whole pages `data` at `vaddr`.
    pub fn put(&mut self, vaddr: u64, data: &[u8]) -> Result<()> {
        if !vaddr.is_multiple_of(PAGE_SIZE) || !(data.len() as u64).is_multiple_of(PAGE_SIZE) {
            return Err(Error::Invalid(format!("pages put at {vaddr:#x} ({} bytes) are not whole pages", data.len())));
        }
        for (addr, len, under) in self.pieces(vaddr, data.len() as u64) {
            let piece = &data[(addr - vaddr) as usize..][..len as usize];
            match under {
                Piece::Same => self.keep(len),
                Piece::Inherited => {
                    for (i, chunk) in piece.chunks(CHUNK).enumerate() {
                        self.put_over_inherited(addr + (i * CHUNK) as u64, chunk)?;
                    }
                    (self.progress)(len);
                }
                Piece::Fresh => {
                    write_pages(self.pid, addr, piece)?;
                    self.counts.restored += len / PAGE_SIZE;
                    (self.progress)(len);
                }
            }
        }
        Ok(())
    }

    /// Compare each page with the inherited one and write the runs that differ.
    fn put_over_inherited(&mut self, vaddr: u64, data: &[u8]) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(data.len(), 0);
        self.read_before(vaddr, &mut buf)?;
        self.buf = buf;
        let page = PAGE_SIZE as usize;
        let mut differ: Option<usize> = None;
        for i in (0..data.len()).step_by(page).chain([data.len()]) {
            let same = i < data.len() && data[i..i + page] == self.buf[i..i + page];
            let end = i == data.len();
            match differ {
                Some(from) if same || end => {
                    write_pages(self.pid, vaddr + from as u64, &data[from..i])?;
                    differ = None;
                }
                None if !same && !end => differ = Some(i),
                _ => {}
            }
            if !end {
                self.counts.compared += 1;
                self.counts.skipped_cow += same as u64;
                self.counts.restored += !same as u64;
            }
        }
        Ok(())
    }
}

/// Copy `data` into process `pid` at `addr`, straight (one copy, by
/// process_vm_writev; /proc/PID/mem would go through a bounce page).
pub fn write_pages(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    use nix::sys::uio::{process_vm_writev, RemoteIoVec};
    let mut done = 0;
    while done < data.len() {
        let local = [std::io::IoSlice::new(&data[done..])];
        let remote = [RemoteIoVec { base: (addr as usize) + done, len: data.len() - done }];
        match process_vm_writev(nix::unistd::Pid::from_raw(pid), &local, &remote) {
            Ok(0) => return Err(Error::Ptrace { tid: pid, what: format!("no memory at {:#x} for its pages", addr + done as u64) }),
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::Sys { context: format!("writing pages of process {pid} at {:#x}", addr + done as u64), err: e }),
        }
    }
    Ok(())
}

/// Read `len` bytes of a pages image at `offset` and put them in place by
/// `sink`, a chunk at a time.
pub fn put_from_file(sink: &mut PageSink, file: &File, offset: u64, vaddr: u64, len: u64) -> Result<()> {
    let mut buf = vec![0u8; (len as usize).min(CHUNK)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset + done).ctx(|| format!("reading saved pages at offset {}", offset + done))?;
        sink.put(vaddr + done, &buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, flags: i32, status: u32) -> VmaEntry {
        VmaEntry { start, end, flags: flags as u32, status, prot: 3, ..Default::default() }
    }

    #[test]
    fn only_private_vmas_alike_in_both_are_kept() {
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let st = VMA_AREA_REGULAR | crate::images::criu::VMA_ANON_PRIVATE;
        let parent = MmEntry {
            vmas: vec![vma(0x1000, 0x5000, anon, st), vma(0x8000, 0x9000, anon, st), vma(0xa000, 0xb000, libc::MAP_SHARED | libc::MAP_ANONYMOUS, VMA_AREA_REGULAR | VMA_ANON_SHARED)],
            ..Default::default()
        };
        let mut other_prot = vma(0x1000, 0x5000, anon, st);
        other_prot.prot = 1;
        let child = MmEntry {
            vmas: vec![other_prot, vma(0x8000, 0xa000, anon, st), vma(0xa000, 0xb000, libc::MAP_SHARED | libc::MAP_ANONYMOUS, VMA_AREA_REGULAR | VMA_ANON_SHARED)],
            ..Default::default()
        };
        let kept: Vec<u64> = kept_vmas(&child, &parent).iter().map(|v| v.start).collect();
        assert_eq!(kept, [0x1000], "same bounds and kind; a grown vma and shared memory are not kept");
        let pm = [PagemapEntry { vaddr: 0x0, nr_pages: 3, ..Default::default() }, PagemapEntry { vaddr: 0x4000, nr_pages: 6, ..Default::default() }];
        let k = kept_vmas(&child, &parent);
        assert_eq!(inherited_pages(&pm, &k), [(0x1000, 0x3000), (0x4000, 0x5000)]);
    }

    #[test]
    fn pieces_split_at_inherited_ranges() {
        let mut progress = |_| {};
        let sink = PageSink::new(1, &[(0x2000, 0x4000), (0x6000, 0x7000)], &[(0x3000, 0x4000)], None, &mut progress);
        use Piece::*;
        assert_eq!(
            sink.pieces(0x1000, 0x7000),
            [(0x1000, 0x1000, Fresh), (0x2000, 0x1000, Inherited), (0x3000, 0x1000, Same), (0x4000, 0x2000, Fresh), (0x6000, 0x1000, Inherited), (0x7000, 0x1000, Fresh)]
        );
        assert_eq!(sink.pieces(0x3000, 0x1000), [(0x3000, 0x1000, Same)]);
        assert_eq!(sink.pieces(0x8000, 0x1000), [(0x8000, 0x1000, Fresh)]);
    }
}
