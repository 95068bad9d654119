//! Turning the address space of a fresh task (a copy of crust) into the one in
//! the image: unmap crust's mappings, move the vdso and its data pages to where
//! the image had them, map the image's vmas and fill them from the pages image.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::images::proto::{MmEntry, PagemapEntry, VmaEntry};
use crate::images::criu::{PAGE_SIZE, VMA_ANON_SHARED, VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR};
use crate::mem::Backing;
use crate::ranges::{intersect, merge, subtract};
use crate::task::{Scratch, Task};

/// Lowest and highest addresses crust places its own temporary mappings at.
const LOW: u64 = 0x1000_0000;
const HIGH: u64 = 0x7ff0_0000_0000;

/// The highest address between LOW and HIGH where `len` bytes are free of
/// every range in `occupied`, with a page of gap on each side; `what` names the
/// mapping in the error when there is none. `occupied` mixes address spaces
/// (the image's and the task's), so its ranges may overlap, nest, lie below
/// LOW (a non-PIE binary and its brk) or above HIGH (the stack, and the mmap
/// base itself when ASLR puts it there): only the free space is looked at.
pub fn free_gap(occupied: &[(u64, u64)], len: u64, what: &str) -> Result<u64> {
    let busy = merge(occupied.to_vec());
    let need = len.checked_add(2 * PAGE_SIZE);
    let free = subtract(&[(LOW, HIGH)], &busy);
    if let Some(&(_, end)) = free.iter().rev().find(|&&(start, end)| need.is_some_and(|n| end - start >= n)) {
        return Ok(end - PAGE_SIZE - len);
    }
    let within: Vec<String> = intersect(&[(LOW, HIGH)], &busy).iter().map(|(s, e)| format!("{s:#x}-{e:#x}")).collect();
    Err(Error::Invalid(format!(
        "no free range of {len:#x} bytes (and a guard page each side) between {LOW:#x} and {HIGH:#x} for {what}; \
         occupied there: {}",
        within.join(", ")
    )))
}

fn is_vdso_group(status: u32) -> bool {
    status & (VMA_AREA_VDSO | VMA_AREA_VVAR) != 0
}

/// The image's [vvar]/[vvar_vclock]/[vdso] mappings, in address order.
fn image_vdso_group(mm: &MmEntry) -> Vec<&VmaEntry> {
    let mut g: Vec<&VmaEntry> = mm.vmas.iter().filter(|v| is_vdso_group(v.status)).collect();
    g.sort_by_key(|v| v.start);
    g
}

/// Check that this kernel's vdso layout is the image's: the same mappings with
/// the same sizes at the same distances from each other. A different vdso
/// cannot host the code pointers glibc keeps into it.
pub fn check_vdso(mm: &MmEntry, here: &[crate::mem::Vma], image_name: &str) -> Result<()> {
    let img = image_vdso_group(mm);
    let mut cur: Vec<&crate::mem::Vma> =
        here.iter().filter(|v| matches!(v.backing, Backing::Vdso | Backing::Vvar)).collect();
    cur.sort_by_key(|v| v.start);
    // Sorted by start, and each start below its end (the loader checked): no wrap.
    let img_shape: Vec<(u64, u64, bool)> = img
        .iter()
        .map(|v| (v.start.wrapping_sub(img[0].start), v.end.wrapping_sub(v.start), v.status & VMA_AREA_VDSO != 0))
        .collect();
    let cur_shape: Vec<(u64, u64, bool)> =
        cur.iter().map(|v| (v.start - cur[0].start, v.end - v.start, v.backing == Backing::Vdso)).collect();
    if img_shape != cur_shape {
        return Err(Error::unsupported(
            image_name,
            format!(
                "the image's vdso layout (offset, size, is-vdso) {img_shape:x?} differs from this kernel's \
                 {cur_shape:x?}; restoring across kernels with different vdsos is not supported yet"
            ),
        ));
    }
    Ok(())
}

/// Unmap everything the task has now (`here`) but the vdso group and the
/// ranges in `keep` (sorted, apart: the scratch area, inherited vmas).
/// Adjacent mappings go in one munmap (each is an injected syscall).
pub fn unmap_all_but(task: &Task, here: &[crate::mem::Vma], keep: &[(u64, u64)]) -> Result<()> {
    let mapped: Vec<(u64, u64)> = here
        .iter()
        .filter(|v| !matches!(v.backing, Backing::Vdso | Backing::Vvar | Backing::Vsyscall))
        .map(|v| (v.start, v.end))
        .collect();
    let mut gone: Vec<(u64, u64)> = Vec::new();
    for (start, end) in subtract(&mapped, keep) {
        match gone.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => gone.push((start, end)),
        }
    }
    for (start, end) in gone {
        task.call("munmap", libc::SYS_munmap, [start, end - start, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// Move the vdso group to the image's addresses, in two passes through a free
/// slot so no move overlaps another; the task's gadget moves with it.
pub fn move_vdso(task: &mut Task, mm: &MmEntry, here: &[crate::mem::Vma], scratch: &Scratch) -> Result<()> {
    let img = image_vdso_group(mm);
    let mut cur: Vec<(u64, u64, bool)> = here
        .iter()
        .filter(|v| matches!(v.backing, Backing::Vdso | Backing::Vvar))
        .map(|v| (v.start, v.end, v.backing == Backing::Vdso))
        .collect();
    cur.sort_unstable();
    if cur.is_empty() || cur.iter().zip(&img).all(|(c, i)| c.0 == i.start) {
        return Ok(());
    }
    let span = cur.last().expect("non-empty").1 - cur[0].0;
    let img_span = (img[0].start, img.last().expect("same length").end);
    let mut occupied: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    occupied.push((cur[0].0, cur.last().expect("non-empty").1));
    occupied.push((scratch.addr, scratch.addr + scratch.len));
    occupied.push(img_span);
    let temp = free_gap(&occupied, span, "the vdso to move through")?;
    let vdso_offset = |g: &[(u64, u64, bool)]| g.iter().find(|v| v.2).map(|v| v.0).unwrap_or(0);
    let gadget_off = task.gadget() - vdso_offset(&cur);
    for target_base in [temp, img_span.0] {
        let base = cur[0].0;
        let mut moved = Vec::new();
        for &(start, end, is_vdso) in &cur {
            let to = target_base + (start - base);
            task.call(
                "mremap of the vdso",
                libc::SYS_mremap,
                [start, end - start, end - start, (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64, to, 0],
            )?;
            moved.push((to, to + (end - start), is_vdso));
        }
        cur = moved;
        task.set_gadget(vdso_offset(&cur) + gadget_off);
    }
    Ok(())
}

/// Whether a private vma is mapped writable at first, for its pages to be
/// filled in: when it is writable, or has pages to fill. A private mapping
/// ever writable is charged to the commit limit ("ac" in its VmFlags, kept
/// when it is made read-only again); one that never was is not, and is
/// mapped with its own protection at once so that it is not either. Having
/// pages of its own says it was written, so writable (only a debugger's
/// writes through ptrace make pages in a mapping that never was).
fn filled_writable(v: &VmaEntry, pagemap: &[PagemapEntry]) -> bool {
    let writable = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    if v.flags & libc::MAP_SHARED as u32 != 0 || v.prot & writable == writable {
        return false;
    }
    // The pagemap is sorted by address: the first run ending after the start.
    let i = pagemap.partition_point(|e| e.vaddr + e.nr_pages as u64 * PAGE_SIZE <= v.start);
    v.prot & libc::PROT_WRITE as u32 != 0 || pagemap.get(i).is_some_and(|e| e.vaddr < v.end)
}

/// Map every vma of the image but the vdso group (already in place) and those
/// `kept` as inherited (already there); private ones with pages writable at
/// first, so the pages can be filled in. `open` opens a file inside the task.
pub fn map_vmas(
    task: &Task,
    mm: &MmEntry,
    pagemap: &[PagemapEntry],
    kept: &[&VmaEntry],
    shmem_fds: &HashMap<u64, u64>,
    mut open: impl FnMut(u32, u32) -> Result<u64>,
) -> Result<()> {
    for v in &mm.vmas {
        if is_vdso_group(v.status) || v.status & VMA_AREA_VSYSCALL != 0 {
            continue;
        }
        let shared = v.flags & libc::MAP_SHARED as u32 != 0;
        let anon = v.flags & libc::MAP_ANONYMOUS as u32 != 0;
        let prot = if filled_writable(v, pagemap) { v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32 } else { v.prot };
        if kept.iter().any(|k| k.start == v.start) {
            // Already there, with the parent's pages and protection; a
            // child does not inherit mlock.
            task.call("mprotect of an inherited vma", libc::SYS_mprotect, [v.start, v.end - v.start, prot as u64, 0, 0, 0])?;
            if v.flags & libc::MAP_LOCKED as u32 != 0 {
                task.call("mlock of an inherited vma", libc::SYS_mlock, [v.start, v.end - v.start, 0, 0, 0, 0])?;
            }
            continue;
        }
        if crate::ns::ipc::is_attachment(v) {
            crate::ns::ipc::attach(task, v)?;
            advise(task, v)?;
            continue;
        }
        let keep = (libc::MAP_SHARED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN | libc::MAP_LOCKED | libc::MAP_NORESERVE) as u32;
        let mut flags = (v.flags & keep) as u64 | libc::MAP_FIXED as u64;
        let len = v.end.checked_sub(v.start).ok_or_else(|| Error::Invalid(format!("vma {:#x}-{:#x} ends before it starts", v.start, v.end)))?;
        let (fd, off) = if v.status & VMA_ANON_SHARED != 0 {
            // The object made in the root, inherited: mapped through its fd.
            flags &= !(libc::MAP_ANONYMOUS as u64);
            let fd = shmem_fds
                .get(&v.shmid)
                .ok_or_else(|| Error::image(format!("mm-{}.img", task.pid), format!("vma {:#x}-{:#x}: no shared memory {}", v.start, v.end, v.shmid)))?;
            (*fd, v.pgoff)
        } else if anon {
            (u64::MAX, 0)
        } else {
            // The open mode the dump saw (CRIU's fdflags), else what the
            // protection needs.
            let writable_shared = shared && v.prot & libc::PROT_WRITE as u32 != 0;
            let oflags = v.fdflags.unwrap_or(if writable_shared { libc::O_RDWR } else { libc::O_RDONLY } as u32);
            let file = u32::try_from(v.shmid).map_err(|_| Error::Invalid(format!("vma {:#x}-{:#x}: no file {}", v.start, v.end, v.shmid)))?;
            (open(file, oflags)?, v.pgoff)
        };
        let at = task.call("mmap", libc::SYS_mmap, [v.start, len, prot as u64, flags, fd, off])?;
        if at != v.start {
            return Err(Error::Ptrace { tid: task.tid, what: format!("mmap of {:#x}-{:#x} landed at {at:#x}", v.start, v.end) });
        }
        advise(task, v)?;
    }
    Ok(())
}

/// The madvise advice vma `v` had, given again.
fn advise(task: &Task, v: &VmaEntry) -> Result<()> {
    for advice in (0..64).filter(|b| v.madv.unwrap_or(0) & (1u64 << b) != 0) {
        task.call("madvise", libc::SYS_madvise, [v.start, v.end - v.start, advice, 0, 0, 0])?;
    }
    Ok(())
}

/// Give every private vma mapped writable to be filled its saved protection back.
pub fn protect_vmas(task: &Task, mm: &MmEntry, pagemap: &[PagemapEntry]) -> Result<()> {
    for v in &mm.vmas {
        if is_vdso_group(v.status) || v.status & VMA_AREA_VSYSCALL != 0 || !filled_writable(v, pagemap) {
            continue;
        }
        task.call("mprotect", libc::SYS_mprotect, [v.start, v.end.saturating_sub(v.start), v.prot as u64, 0, 0, 0])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_apart(at: u64, len: u64, occupied: &[(u64, u64)]) {
        assert!(at >= LOW && at + len <= HIGH, "{at:#x} out of bounds");
        for &(s, e) in occupied {
            assert!(at + len + PAGE_SIZE <= s || at >= e + PAGE_SIZE, "{at:#x} overlaps {s:#x}-{e:#x}");
        }
    }

    #[test]
    fn free_gap_avoids_every_range_with_a_guard_page() {
        let occupied = [(0x7fe0_0000_0000, HIGH), (0x5000_0000, 0x6000_0000), (0x7fd0_0000_0000, 0x7fdf_ffff_f000)];
        let len = 1 << 20;
        assert_apart(free_gap(&occupied, len, "a test").unwrap(), len, &occupied);
        let err = free_gap(&[(LOW, HIGH)], len, "a test").unwrap_err().to_string();
        assert!(err.contains("for a test") && err.contains("0x10000000-0x7ff000000000"), "{err}");
    }

    /// What move_vdso saw restoring a busybox-static shell (non-PIE, at
    /// 0x400000, its brk below LOW) with ASLR off (and, rarely, with it on):
    /// the image's and the task's vdso above HIGH, the scratch area just
    /// below it. Every range in the bounds was then blocked by the one below
    /// it, and the brk, below LOW, ended the search: free space between LOW
    /// and the scratch area was not looked at.
    #[test]
    fn free_gap_finds_room_below_the_only_range_within_the_bounds() {
        let occupied = [
            (0x400000, 0x401000),
            (0x401000, 0x585000),
            (0x585000, 0x5db000),
            (0x5db000, 0x5e2000),
            (0x5e2000, 0x5e5000),
            (0x5e5000, 0x5ec000),
            (0x5ec000, 0x60e000),
            (0x7fff_f7ff_7000, 0x7fff_f7ff_b000),
            (0x7fff_f7ff_b000, 0x7fff_f7ff_d000),
            (0x7fff_f7ff_d000, 0x7fff_f7ff_f000),
            (0x7fff_fffd_e000, 0x7fff_ffff_f000),
            (0xffff_ffff_ff60_0000, 0xffff_ffff_ff60_1000),
            (0x7fff_f7fc_2000, 0x7fff_f7fc_a000),
            (0x7fef_ffef_f000, 0x7fef_ffff_f000),
            (0x7fff_f7ff_7000, 0x7fff_f7ff_f000),
        ];
        let at = free_gap(&occupied, 0x8000, "a test").unwrap();
        assert_apart(at, 0x8000, &occupied);
        assert_eq!(at, 0x7fef_ffef_f000 - PAGE_SIZE - 0x8000, "the highest slot");
    }

    #[test]
    fn free_gap_sees_past_overlapping_and_straddling_ranges() {
        // A range nested in a wider one (different address spaces overlap):
        // the space above the inner one is still taken by the outer one.
        let occupied = [(0x7000_0000_0000, 0x7fe0_0000_0000), (0x7100_0000_0000, 0x7100_0001_0000), (0x7fe0_0000_1000, 0x7fff_0000_0000)];
        let at = free_gap(&occupied, 0x8000, "a test").unwrap();
        assert_apart(at, 0x8000, &occupied);
        // Ranges straddling each bound leave only what lies between them.
        let occupied = [(0x100_0000, LOW + 0x10_0000), (LOW + 0x20_0000, 0x8000_0000_0000)];
        assert_eq!(free_gap(&occupied, 0x8000, "a test").unwrap(), LOW + 0x20_0000 - PAGE_SIZE - 0x8000);
        assert!(free_gap(&occupied, 0x10_0000, "a test").is_err(), "no room for a guard page each side");
    }
}
