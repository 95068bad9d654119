//! A process's memory in the images: its layout and bounds (mm-PID.img, with
//! the files it maps in files.img) and the pages that hold contents of their
//! own (pagemap-PID.img, pages-N.img).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{us, DumpStats, TreeDump};
use crate::error::{Context, Result};
use crate::files::{memfd, FileTable};
use crate::images::criu::{PAGE_SIZE, PE_PARENT, PE_PRESENT, VMA_AREA_MEMFD};
use crate::images::proto::{MmEntry, PagemapEntry, PagemapHead, VmaEntry};
use crate::images::Kind;
use crate::mem::{self, Backing, PageReader, Vma};
use crate::proc;
use crate::progress::{Phase, Progress};
use crate::ranges::split;
use crate::files::shmem::SharedMemory;

impl TreeDump {
    /// mm-PID.img, then the pages. `brk` was read inside the process.
    pub(super) fn memory(&mut self, pid: i32, index: u32, vmas: &[Vma], brk: u64) -> Result<()> {
        let stat = proc::stat(pid, pid)?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ctx(|| format!("reading /proc/{pid}/exe"))?;
        let exe_file_id = self.files.path_id(&exe.to_string_lossy(), libc::O_RDONLY as u32, &format!("/proc/{pid}/exe"))?;
        let vmas_entries = vmas.iter().map(|v| vma_entry(pid, v, &mut self.files, &mut self.shmem)).collect::<Result<Vec<_>>>()?;
        let mm = MmEntry {
            mm_start_code: stat.startcode,
            mm_end_code: stat.endcode,
            mm_start_data: stat.start_data.unwrap_or(0),
            mm_end_data: stat.end_data.unwrap_or(0),
            mm_start_stack: stat.startstack,
            mm_start_brk: stat.start_brk.unwrap_or(0),
            mm_brk: brk,
            mm_arg_start: stat.arg_start.unwrap_or(0),
            mm_arg_end: stat.arg_end.unwrap_or(0),
            mm_env_start: stat.env_start.unwrap_or(0),
            mm_env_end: stat.env_end.unwrap_or(0),
            exe_file_id,
            mm_saved_auxv: proc::auxv(pid)?,
            vmas: vmas_entries,
            dumpable: None,
            thp_disabled: Some(thp_disabled(pid)?),
            ..Default::default()
        };
        let mut w = self.dir.writer(&format!("mm-{}.img", self.files.pids.of(pid)), Kind::Mm)?;
        w.entry(&mm)?;
        self.stats.bytes_written += w.finish()?;
        self.pages(pid, index, vmas)
    }

    /// pagemap-PID.img: the runs of saved pages; their contents
    /// (pages-N.img) are written once every process's are known. With a
    /// parent image, the pages it holds unchanged are runs in the parent.
    pub(super) fn pages(&mut self, pid: i32, pages_id: u32, vmas: &[Vma]) -> Result<()> {
        let saved = mem::private_page_runs(pid, vmas)?;
        self.stats.pages_scanned += saved.scanned;
        let in_parent = self.in_parent(pid, &saved)?;
        // The pagemap first, whole, then the pages: images are written one at a
        // time (a streamed dump cannot interleave them).
        let mut map = self.dir.writer(&format!("pagemap-{}.img", self.files.pids.of(pid)), Kind::Pagemap)?;
        map.entry(&PagemapHead { pages_id })?;
        for run in &saved.runs {
            for (vaddr, len, parent) in split(&in_parent, run.vaddr, run.nr_pages * PAGE_SIZE) {
                let flags = if parent { PE_PARENT } else { PE_PRESENT };
                let entry = PagemapEntry { vaddr, nr_pages: (len / PAGE_SIZE) as u32, in_parent: None, flags: Some(flags) };
                map.entry(&entry)?;
            }
        }
        self.stats.bytes_written += map.finish()?;
        self.deferred.push(PendingPages { pid, pages_id, saved, shared: Vec::new(), in_parent });
        Ok(())
    }

    /// Of the saved pages of `pid`, those the parent images (or a live
    /// migration's destination) hold as they are: pages dirty tracking
    /// vouches for, and, where it does not cover, pages compared equal.
    fn in_parent(&mut self, pid: i32, saved: &mem::SavedPages) -> Result<Vec<(u64, u64)>> {
        let all: Vec<(u64, u64)> = saved.runs.iter().map(|r| (r.vaddr, r.vaddr + r.nr_pages * PAGE_SIZE)).collect();
        let pages = |r: &[(u64, u64)]| r.iter().map(|(s, e)| (e - s) / PAGE_SIZE).sum::<u64>();
        let (vouched, rest) = match (self.tracked.get(&pid), &self.parent) {
            // A live migration's: `clean` is already what the destination holds.
            (Some(t), None) => (crate::ranges::intersect(&all, &t.clean), Vec::new()),
            (Some(t), Some(parent)) => {
                let chain = crate::images::load::pages_of(parent, self.files.pids.of(pid) as u32)?.iter().map(|p| (p.vaddr, p.vaddr + p.len)).collect();
                let clean = crate::ranges::intersect(&all, &t.clean);
                (crate::ranges::intersect(&clean, &crate::ranges::merge(chain)), crate::ranges::subtract(&all, &t.covered))
            }
            (None, _) => (Vec::new(), all),
        };
        self.stats.pages_tracked_clean += pages(&vouched);
        let compared = match &self.parent {
            Some(parent) if !rest.is_empty() => {
                self.stats.pages_compared += pages(&rest);
                unchanged(pid, self.files.pids.of(pid), &rest, parent)?
            }
            _ => Vec::new(),
        };
        Ok(crate::ranges::merge(vouched.into_iter().chain(compared).collect()))
    }

    /// Every process's pages-N.img, in the order of pstree.img; `progress`
    /// hears them as they are written.
    pub(super) fn write_pages(&mut self, progress: &Progress) -> Result<()> {
        let pages = std::mem::take(&mut self.deferred);
        let mut meter = progress.start(Phase::DumpingPages, pages.iter().map(PendingPages::bytes).sum());
        for pending in pages {
            let mut w = self.dir.writer(&pending.name(), Kind::Pages)?;
            pending.copy(&mut self.stats, &mut |chunk| {
                w.raw(chunk)?;
                meter.add(chunk.len() as u64);
                Ok(())
            })?;
            self.stats.bytes_written += w.finish()?;
        }
        Ok(())
    }
}

/// Whether THP is disabled for the process (PR_SET_THP_DISABLE), as its
/// status shows it.
fn thp_disabled(pid: i32) -> Result<bool> {
    let status = proc::read_string(&format!("/proc/{pid}/status"))?;
    Ok(status.lines().any(|l| l.strip_prefix("THP_enabled:").is_some_and(|v| v.trim() == "0")))
}

fn vma_entry(pid: i32, v: &Vma, files: &mut FileTable, shmem: &mut SharedMemory) -> Result<VmaEntry> {
    let mut status = v.status;
    let mut fdflags = None;
    let shmid = match &v.backing {
        Backing::File { path, .. } => {
            // A shared mapping that may be made writable (even if it is not
            // now) was mapped from a file open for writing: it is again.
            let writable_shared = v.shared() && (v.may_write || v.prot & libc::PROT_WRITE as u32 != 0);
            let flags = if writable_shared { libc::O_RDWR } else { libc::O_RDONLY } as u32;
            fdflags = Some(flags);
            let source = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
            let path = path.to_string_lossy();
            if memfd::is_memfd(&path, &source) {
                status |= VMA_AREA_MEMFD;
                memfd::mapping_file(files, &path, flags, &source)? as u64
            } else {
                files.path_id(&path, flags, &source)? as u64
            }
        }
        Backing::AnonShared => shmem.note(pid, v)?,
        Backing::SysvShm { id, .. } => *id as u64,
        _ => 0,
    };
    Ok(VmaEntry {
        start: v.start,
        end: v.end,
        pgoff: v.pgoff,
        shmid,
        prot: v.prot,
        flags: v.flags,
        status,
        fd: -1,
        madv: (v.madv != 0).then_some(v.madv),
        fdflags,
    })
}

/// The saved pages of a child that were its parent's own physical pages when
/// they were dumped (shared copy-on-write since a fork): (start, end) runs.
/// A restore that made the child keep its parent's pages there need not
/// look at them (see `restore::inherit`).
pub(super) fn shared_with_parent(child: &PendingPages, parent: &PendingPages) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut frames = child.saved.frames.iter();
    for run in &child.saved.runs {
        for vaddr in (0..run.nr_pages).map(|i| run.vaddr + i * PAGE_SIZE) {
            let frame = frames.next().copied().unwrap_or(0);
            if frame == 0 || parent.saved.frame_at(vaddr) != Some(frame) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 == vaddr => last.1 += PAGE_SIZE,
                _ => out.push((vaddr, vaddr + PAGE_SIZE)),
            }
        }
    }
    out
}

/// Of the pages `saved` of process `pid` (frozen), those whose bytes are the
/// ones the images in `parent` (and its chain) hold for the same address:
/// sorted ranges. A page is left to the parent only when its bytes were
/// compared equal, so nothing is assumed clean: not even a damaged parent
/// image can make the dump lose a write.
fn unchanged(pid: i32, image_pid: i32, saved: &[(u64, u64)], parent: &Path) -> Result<Vec<(u64, u64)>> {
    let theirs = crate::images::load::pages_of(parent, image_pid as u32)?;
    if theirs.is_empty() {
        return Ok(Vec::new());
    }
    let reader = PageReader::new(pid)?;
    let mut files: HashMap<&Path, File> = HashMap::new();
    const CHUNK: u64 = 1 << 20;
    let (mut now, mut before) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in saved {
        let first = theirs.partition_point(|p| p.vaddr + p.len <= start);
        for p in theirs[first..].iter().take_while(|p| p.vaddr < end) {
            let file = match files.entry(&p.path) {
                Entry::Occupied(f) => f.into_mut(),
                Entry::Vacant(v) => v.insert(File::open(&p.path).ctx(|| format!("opening {}", p.path.display()))?),
            };
            let (mut at, to) = (start.max(p.vaddr), end.min(p.vaddr + p.len));
            while at < to {
                crate::cancel::check()?;
                let n = (to - at).min(CHUNK) as usize;
                // Through /proc/PID/mem: pages shared copy-on-write with
                // another process of the tree stay shared (see `read_pages`).
                reader.read_pages(at, &mut now[..n], true)?;
                let from = p.offset + (at - p.vaddr);
                file.read_exact_at(&mut before[..n], from).ctx(|| format!("reading {} at offset {from}", p.path.display()))?;
                for (i, (a, b)) in now[..n].chunks_exact(PAGE_SIZE as usize).zip(before[..n].chunks_exact(PAGE_SIZE as usize)).enumerate() {
                    if a != b {
                        continue;
                    }
                    let page = at + i as u64 * PAGE_SIZE;
                    match out.last_mut() {
                        Some(last) if last.1 == page => last.1 += PAGE_SIZE,
                        _ => out.push((page, page + PAGE_SIZE)),
                    }
                }
                at += n as u64;
            }
        }
    }
    Ok(out)
}

/// The saved pages of one process, read from it (still frozen) when written.
pub(super) struct PendingPages {
    pid: i32,
    pages_id: u32,
    saved: mem::SavedPages,
    /// Saved pages the parent images hold unchanged (sorted, apart): not written.
    in_parent: Vec<(u64, u64)>,
    /// Saved pages it shares with its parent or a child (sorted, apart):
    /// read without pinning them (see [`PageReader::read_pages`]).
    pub(super) shared: Vec<(u64, u64)>,
}

impl PendingPages {
    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    pub(super) fn name(&self) -> String {
        format!("pages-{}.img", self.pages_id)
    }

    /// Bytes of pages to write.
    pub(super) fn bytes(&self) -> u64 {
        let all: u64 = self.saved.runs.iter().map(|r| r.nr_pages * PAGE_SIZE).sum();
        all - self.in_parent.iter().map(|(s, e)| e - s).sum::<u64>()
    }

    /// Read the pages a chunk at a time and hand each chunk to `out`.
    pub(super) fn copy(&self, stats: &mut DumpStats, out: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let t = Instant::now();
        let reader = PageReader::new(self.pid)?;
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut read_time = Duration::ZERO;
        let runs = self.saved.runs.iter().flat_map(|r| split(&self.in_parent, r.vaddr, r.nr_pages * PAGE_SIZE));
        for (vaddr, len, in_parent) in runs {
            if in_parent {
                stats.pages_skipped_parent += len / PAGE_SIZE;
                continue;
            }
            for (start, len, shared) in split(&self.shared, vaddr, len) {
                let (mut addr, end) = (start, start + len);
                while addr < end {
                    crate::cancel::check()?;
                    let n = (end - addr).min(CHUNK) as usize;
                    let r = Instant::now();
                    reader.read_pages(addr, &mut buf[..n], shared)?;
                    read_time += r.elapsed();
                    out(&buf[..n])?;
                    addr += n as u64;
                }
            }
            stats.pages_written += len / PAGE_SIZE;
        }
        stats.memdump_time_us += us(read_time);
        stats.memwrite_time_us += us(t.elapsed().saturating_sub(read_time));
        Ok(())
    }
}
