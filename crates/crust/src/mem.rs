//! Memory: the vmas of a task, which of their pages hold state of their own, and
//! copying those pages out of the task.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;
use procfs::process::{MMPermissions, MMapPath, MemoryMaps, MemoryPageFlags, PageInfo, VmFlags};
use procfs::FromBufRead;

use crate::error::{Context, Error, Result};

use crate::images::criu::{
    PAGE_SIZE, VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_HEAP, VMA_AREA_REGULAR, VMA_AREA_STACK, VMA_AREA_VDSO,
    VMA_AREA_SYSVIPC, VMA_AREA_VSYSCALL, VMA_AREA_VVAR, VMA_FILE_PRIVATE, VMA_FILE_SHARED,
};

/// What a vma is, as far as dumping and restoring it is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    Anon,
    /// Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, or /dev/zero mapped
    /// shared): a shmem object, shared with the forks that inherited it.
    AnonShared,
    /// An attachment (shmat) of System V shared memory segment `id`, of key `key`.
    SysvShm { key: u32, id: i32 },
    File { path: PathBuf },
    Vdso,
    /// `[vvar]` or `[vvar_vclock]`: kernel data pages mapped next to the vdso.
    Vvar,
    Vsyscall,
}

/// One line of /proc/PID/smaps, in the terms the images use.
#[derive(Clone, Debug)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub prot: u32,
    /// mmap flags: MAP_PRIVATE/MAP_SHARED, MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_LOCKED (mlock), MAP_NORESERVE.
    pub flags: u32,
    pub status: u32,
    pub backing: Backing,
    /// madvise advice to give it again, as CRIU's vma_entry holds it: bit
    /// `1 << MADV_x` for each (see [`crate::inventory::MADVISED`]).
    pub madv: u64,
    /// It may be made writable (VmFlag `mw`): for a shared file mapping,
    /// its file was opened for writing.
    pub may_write: bool,
}

impl Vma {
    pub fn shared(&self) -> bool {
        self.flags & libc::MAP_SHARED as u32 != 0
    }

    pub fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE_SIZE
    }

    /// Whether its private pages are saved in the pages image.
    pub fn has_private_pages(&self) -> bool {
        matches!(self.backing, Backing::Anon | Backing::File { .. }) && !self.shared()
    }
}

/// How /proc/PID/maps names shared anonymous memory.
pub const SHARED_ANON_NAME: &str = "/dev/zero (deleted)";

/// The vmas of a task being dumped: anything crust cannot restore is an error.
pub fn read_vmas(pid: i32) -> Result<Vec<Vma>> {
    vmas(pid, true)
}

/// The layout of crust's own process or a fork of it: only the ranges and
/// the vdso matter, and crust's binary may have been replaced on disk.
pub fn read_layout(pid: i32) -> Result<Vec<Vma>> {
    vmas(pid, false)
}

fn vmas(pid: i32, strict: bool) -> Result<Vec<Vma>> {
    // A layout needs no VmFlags: /proc/PID/maps, which the kernel writes
    // without walking the page tables (smaps counts every page).
    let path = format!("/proc/{pid}/{}", if strict { "smaps" } else { "maps" });
    let text = std::fs::read(&path).ctx(|| format!("reading {path}"))?;
    let maps = MemoryMaps::from_buf_read(&text[..]).map_err(|e| Error::io_other(format!("reading {path}"), e))?;
    let raw = if strict { raw_vm_flags(&text) } else { Vec::new() };
    let mut out = Vec::new();
    for (i, m) in maps.into_iter().enumerate() {
        let mut prot = 0u32;
        if m.perms.contains(MMPermissions::READ) {
            prot |= libc::PROT_READ as u32;
        }
        if m.perms.contains(MMPermissions::WRITE) {
            prot |= libc::PROT_WRITE as u32;
        }
        if m.perms.contains(MMPermissions::EXECUTE) {
            prot |= libc::PROT_EXEC as u32;
        }
        let shared = m.perms.contains(MMPermissions::SHARED);
        let mut flags = if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE } as u32;
        if m.extension.vm_flags.contains(VmFlags::GD) {
            flags |= libc::MAP_GROWSDOWN as u32;
        }
        let mut status = VMA_AREA_REGULAR;
        let backing = match &m.pathname {
            MMapPath::Path(p) if shared && p.as_os_str() == SHARED_ANON_NAME => {
                status |= VMA_ANON_SHARED;
                flags |= libc::MAP_ANONYMOUS as u32;
                Backing::AnonShared
            }
            MMapPath::Path(p) => {
                status |= if shared { VMA_FILE_SHARED } else { VMA_FILE_PRIVATE };
                Backing::File { path: p.clone() }
            }
            MMapPath::Vdso => {
                status |= VMA_AREA_VDSO;
                Backing::Vdso
            }
            MMapPath::Vvar => {
                status |= VMA_AREA_VVAR;
                Backing::Vvar
            }
            MMapPath::Vsyscall => {
                status = VMA_AREA_VSYSCALL;
                Backing::Vsyscall
            }
            MMapPath::Other(s) if s == "vvar_vclock" || s == "[vvar_vclock]" => {
                status |= VMA_AREA_VVAR;
                Backing::Vvar
            }
            MMapPath::Heap => {
                status |= VMA_AREA_HEAP | VMA_ANON_PRIVATE;
                flags |= libc::MAP_ANONYMOUS as u32;
                Backing::Anon
            }
            MMapPath::Stack | MMapPath::TStack(_) => {
                status |= VMA_AREA_STACK | VMA_ANON_PRIVATE;
                flags |= libc::MAP_ANONYMOUS as u32;
                Backing::Anon
            }
            MMapPath::Anonymous => {
                flags |= libc::MAP_ANONYMOUS as u32;
                if shared && strict {
                    return Err(Error::unsupported(
                        format!("process {pid}: shared anonymous mapping {:#x}-{:#x}", m.address.0, m.address.1),
                        "shared memory is not supported yet",
                    ));
                }
                status |= VMA_ANON_PRIVATE;
                Backing::Anon
            }
            // Its inode number is the segment's id; whose segment it is,
            // the dump checks (crate::ns::ipc::check_attached).
            MMapPath::Vsys(key) if strict => {
                status |= VMA_AREA_SYSVIPC;
                let id = i32::try_from(m.inode).map_err(|_| Error::Invalid(format!("process {pid}: System V segment of inode {}", m.inode)))?;
                Backing::SysvShm { key: *key as u32, id }
            }
            other if strict => {
                return Err(Error::unsupported(
                    format!("process {pid}: mapping {:#x}-{:#x} of {other:?}", m.address.0, m.address.1),
                    "this kind of mapping is not supported yet",
                ))
            }
            _ => Backing::Anon,
        };
        let mut madv = 0;
        let mut locked = false;
        let mut noreserve = false;
        if strict && !matches!(backing, Backing::Vdso | Backing::Vvar | Backing::Vsyscall) {
            if let Some((flags, pkey)) = raw.get(i) {
                check_vm_flags(pid, m.address, flags, *pkey)?;
                for (name, advice) in crate::inventory::MADVISED {
                    if flags.iter().any(|f| f == name) {
                        madv |= 1u64 << advice;
                    }
                }
                if flags.iter().any(|f| f == "lo") {
                    locked = true;
                }
                noreserve = flags.iter().any(|f| f == "nr");
            }
        }
        if locked {
            flags |= libc::MAP_LOCKED as u32;
        }
        if noreserve {
            flags |= libc::MAP_NORESERVE as u32;
        }
        let may_write = m.extension.vm_flags.contains(VmFlags::MW);
        out.push(Vma { start: m.address.0, end: m.address.1, pgoff: m.offset, prot, flags, status, backing, madv, may_write });
    }
    Ok(out)
}

/// The VmFlags of each vma of an smaps text, as the kernel names them (procfs
/// drops the names it does not know), with its memory protection key.
fn raw_vm_flags(smaps: &[u8]) -> Vec<(Vec<String>, u32)> {
    let mut out: Vec<(Vec<String>, u32)> = Vec::new();
    for line in String::from_utf8_lossy(smaps).lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.0 = flags.split_whitespace().map(str::to_string).collect();
            }
        } else if let Some(key) = line.strip_prefix("ProtectionKey:") {
            if let Some(last) = out.last_mut() {
                last.1 = key.trim().parse().unwrap_or(u32::MAX);
            }
        } else if line.split_whitespace().next().is_some_and(|w| w.contains('-') && w.chars().all(|c| c.is_ascii_hexdigit() || c == '-')) {
            out.push((Vec::new(), 0));
        }
    }
    out
}

/// A vma crust would map again without one of its flags, or with a memory
/// protection key, refuses the dump (see [`crate::inventory::VM_FLAGS`]).
fn check_vm_flags(pid: i32, (start, end): (u64, u64), flags: &[String], pkey: u32) -> Result<()> {
    use crate::inventory::{vm_flag, Fate};
    let place = || format!("process {pid}: mapping {start:#x}-{end:#x}");
    let mut refused = Vec::new();
    for f in flags {
        match vm_flag(f) {
            Err(why) => refused.push(why),
            Ok(Fate::Refused(why)) => refused.push(format!("VmFlag {f:?}: {why}")),
            Ok(_) => {}
        }
    }
    if !refused.is_empty() {
        return Err(Error::unsupported(place(), refused.join("; ")));
    }
    if pkey != 0 {
        return Err(Error::unsupported(place(), format!("memory protection key {pkey}: pkeys are not supported yet")));
    }
    Ok(())
}

/// Address of a `syscall` instruction (0f 05) in the task's vdso: a gadget for
/// injected syscalls that needs no change to the task's memory.
pub fn vdso_syscall_gadget(pid: i32, vmas: &[Vma]) -> Result<u64> {
    let vdso = vmas
        .iter()
        .find(|v| v.backing == Backing::Vdso)
        .ok_or_else(|| Error::unsupported(format!("process {pid}"), "it has no [vdso] mapping"))?;
    let mem = File::open(format!("/proc/{pid}/mem")).ctx(|| format!("opening memory of process {pid}"))?;
    let mut code = vec![0u8; (vdso.end - vdso.start) as usize];
    mem.read_exact_at(&mut code, vdso.start).ctx(|| format!("reading vdso of process {pid}"))?;
    code.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|off| vdso.start + off as u64)
        .ok_or_else(|| Error::unsupported(format!("process {pid}"), "no syscall instruction in its vdso"))
}

/// A run of consecutive pages to save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    pub vaddr: u64,
    pub nr_pages: u64,
}

/// The pages of a process to save (see [`private_page_runs`]).
pub struct SavedPages {
    pub runs: Vec<PageRun>,
    /// The physical frame of each page of `runs`, in order (0 where unknown:
    /// swapped out, or frames hidden from a dumper without CAP_SYS_ADMIN).
    pub frames: Vec<u64>,
    /// Pages of the private vmas looked at.
    pub scanned: u64,
    /// How many pages come before each run.
    before: Vec<u64>,
}

impl SavedPages {
    /// The frame of the saved page at `vaddr`, if it is saved and known.
    pub fn frame_at(&self, vaddr: u64) -> Option<u64> {
        let i = self.runs.partition_point(|r| r.vaddr + r.nr_pages * PAGE_SIZE <= vaddr);
        let r = self.runs.get(i).filter(|r| r.vaddr <= vaddr)?;
        self.frames.get((self.before[i] + (vaddr - r.vaddr) / PAGE_SIZE) as usize).copied().filter(|&f| f != 0)
    }
}

/// Which pages of the private vmas hold contents of their own: anonymous pages
/// that were ever touched (present or swapped), and copied-on-write pages of
/// private file mappings. Untouched pages and pages still shared with the file
/// are left out: a restore gets them from the file or as zero pages.
pub fn private_page_runs(pid: i32, vmas: &[Vma]) -> Result<SavedPages> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).ctx(|| format!("opening /proc/{pid}/pagemap"))?;
    let mut runs: Vec<PageRun> = Vec::new();
    let mut frames = Vec::new();
    let mut scanned = 0u64;
    let mut buf = Vec::new();
    // At most this many pagemap entries at once, whatever the size of a vma.
    const BATCH: u64 = 1 << 16;
    for vma in vmas.iter().filter(|v| v.has_private_pages()) {
        let pages = vma.pages();
        scanned += pages;
        let is_file = matches!(vma.backing, Backing::File { .. });
        let mut first = 0;
        while first < pages {
            let n = (pages - first).min(BATCH);
            buf.resize(n as usize * 8, 0);
            pagemap
                .read_exact_at(&mut buf, (vma.start / PAGE_SIZE + first) * 8)
                .ctx(|| format!("reading /proc/{pid}/pagemap"))?;
            for (i, e) in buf.chunks_exact(8).enumerate() {
                // procfs reads the entry; crust reads the file itself, in big batches.
                let (own, frame) = match PageInfo::parse_info(u64::from_le_bytes(e.try_into().expect("chunks of 8"))) {
                    PageInfo::SwapPage(_) => (true, 0),
                    PageInfo::MemoryPage(f) => {
                        (f.contains(MemoryPageFlags::PRESENT) && !(is_file && f.contains(MemoryPageFlags::FILE)), f.get_page_frame_number().0)
                    }
                };
                if !own {
                    continue;
                }
                frames.push(frame);
                let vaddr = vma.start + (first + i as u64) * PAGE_SIZE;
                match runs.last_mut() {
                    Some(r) if r.vaddr + r.nr_pages * PAGE_SIZE == vaddr && r.nr_pages < u32::MAX as u64 => r.nr_pages += 1,
                    _ => runs.push(PageRun { vaddr, nr_pages: 1 }),
                }
            }
            first += n;
        }
    }
    let before = runs.iter().scan(0, |n, r| Some(std::mem::replace(n, *n + r.nr_pages))).collect();
    Ok(SavedPages { runs, frames, scanned, before })
}

/// Reads page contents out of a stopped task: process_vm_readv where the pages
/// are readable, /proc/PID/mem (which ignores protection) where they are not.
pub struct PageReader {
    pid: i32,
    mem: File,
}

impl PageReader {
    pub fn new(pid: i32) -> Result<PageReader> {
        let mem = File::open(format!("/proc/{pid}/mem")).ctx(|| format!("opening memory of process {pid}"))?;
        Ok(PageReader { pid, mem })
    }

    /// Read pages at `vaddr`; through /proc/PID/mem where `shared` (pages
    /// the task shares copy-on-write with another process): process_vm_readv
    /// pins the pages it reads, and the kernel gives a task its own copy of a
    /// shared anonymous page before pinning it, which would undo the sharing
    /// in the tree left running; /proc/PID/mem only takes a reference.
    pub fn read_pages(&self, vaddr: u64, buf: &mut [u8], shared: bool) -> Result<()> {
        if shared {
            return self.mem.read_exact_at(buf, vaddr).ctx(|| format!("reading memory of process {} at {vaddr:#x}", self.pid));
        }
        self.read(vaddr, buf)
    }

    pub fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<()> {
        let remote = [RemoteIoVec { base: vaddr as usize, len: buf.len() }];
        let len = buf.len();
        if let Ok(n) = process_vm_readv(Pid::from_raw(self.pid), &mut [IoSliceMut::new(buf)], &remote) {
            if n == len {
                return Ok(());
            }
        }
        self.mem
            .read_exact_at(buf, vaddr)
            .ctx(|| format!("reading memory of process {} at {vaddr:#x}", self.pid))
    }
}
