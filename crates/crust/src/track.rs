//! Dirty-page tracking without soft-dirty: userfaultfd's asynchronous
//! write-protect mode (UFFD_FEATURE_WP_ASYNC) and PAGEMAP_SCAN.
//!
//! The target makes the userfaultfd and says hello to it (UFFDIO_API must be
//! called by a task of its mm: two syscalls injected); crust takes the fd
//! (pidfd_getfd), closes the target's copy (a third injected call) and does
//! the rest from outside: UFFDIO_REGISTER (MODE_WP) and UFFDIO_WRITEPROTECT on
//! each private anonymous vma, then ioctl(PAGEMAP_SCAN) on /proc/PID/pagemap,
//! which lists the pages written since (PAGE_IS_WRITTEN) and protects them
//! again in the same walk. A write to a protected page costs the program one
//! minor fault the kernel resolves by itself: nothing to handle, nothing the
//! program can see but that.
//!
//! Where the fd lives: in crust while crust runs (a live migration holds it
//! from the first round to the freeze), and between a `crust pre-dump` and
//! the dump after it in a small keeper process forked from crust (see
//! [`Keeper`]); never in the target's fd table beyond the three injected
//! calls. The registration belongs to the userfaultfd context: when its last
//! fd is closed the kernel unregisters the ranges and removes the protection
//! bits, so crust killed at any time takes the tracking with it, and a keeper
//! ends (taking it with it) when the next dump takes the fd, when a tracked
//! process exits, when the pre-dump that made it failed or was killed before
//! its images were in place, or after [`KEEPER_LIFETIME`].
//!
//! What tracking covers: private anonymous vmas registered while they stood.
//! A range whose vma was replaced, moved or grown into since (the scan finds
//! a vma without asynchronous write protection there: EPERM) is lost as a
//! whole; file mappings, shared memory and mappings made later are never
//! covered. The caller treats all of that as written (compares it or sends
//! it), never as clean. A page the kernel wrote without a fault (a page
//! pinned for DMA before the protection, io_uring fixed buffers) is not seen:
//! the same limit soft-dirty has.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::images::criu::PAGE_SIZE;
use crate::mem::{Backing, Vma};
use crate::remote::RemoteThread;

const UFFD_USER_MODE_ONLY: u64 = 1;
const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// _IOWR(0xaa, 0x3f, struct uffdio_api) and friends (linux/userfaultfd.h).
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_WRITEPROTECT: u64 = 0xc018_aa06;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// _IOWR('f', 16, struct pm_scan_arg) (linux/fs.h).
const PAGEMAP_SCAN: u64 = 0xc060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// The tracking of one process: crust's fd of its userfaultfd, and the
/// ranges registered on it that are still covered.
#[derive(Debug)]
pub struct ProcessTracking {
    pub pid: i32,
    uffd: OwnedFd,
    /// Sorted, apart.
    pub ranges: Vec<(u64, u64)>,
}

/// What a scan found in one process.
#[derive(Debug, Default)]
pub struct Scan {
    /// Pages written since the last protection (sorted, apart).
    pub written: Vec<(u64, u64)>,
    /// Ranges no longer covered (found lost by this scan; dropped from the
    /// tracking): to be taken as written.
    pub lost: Vec<(u64, u64)>,
}

impl Scan {
    /// Everything to take as written.
    pub fn dirty(&self) -> Vec<(u64, u64)> {
        crate::ranges::merge(self.written.iter().chain(&self.lost).copied().collect())
    }
}

/// The vmas tracking can cover: private anonymous memory (heap, stacks,
/// anonymous mappings). Not file mappings (userfaultfd write protection
/// takes only anonymous memory, shmem and hugetlb), nor shared memory
/// (other processes, outside the tree or not, write it through their own
/// page tables).
pub fn trackable(v: &Vma) -> bool {
    v.backing == Backing::Anon && !v.shared()
}

/// ioctl on an fd of crust's own; the raw errno on failure.
fn ioctl<T>(fd: RawFd, req: u64, arg: &mut T) -> std::result::Result<i64, i32> {
    // SAFETY: `arg` is a live, exclusively borrowed value of the layout
    // `req` expects (the structs above mirror the kernel's); the kernel
    // reads and writes only within it.
    let r = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    match r {
        -1 => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)),
        r => Ok(r as i64),
    }
}

impl ProcessTracking {
    /// Make the process's userfaultfd by syscalls injected in its thread
    /// `rt` (stopped), take it, and protect `vmas`' trackable ranges. The
    /// target's copy of the fd is closed before this returns, whatever fails.
    pub fn start(pid: i32, rt: &RemoteThread, vmas: &[Vma]) -> Result<ProcessTracking> {
        let flags = libc::O_CLOEXEC as u64 | libc::O_NONBLOCK as u64 | UFFD_USER_MODE_ONLY;
        let fd = rt.call("userfaultfd", libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
        let taken = (|| {
            let mut api = [0u8; 24];
            api[..8].copy_from_slice(&UFFD_API.to_le_bytes());
            api[8..16].copy_from_slice(&(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED).to_le_bytes());
            let at = rt.scratch();
            crate::remote::TaskMem::open(pid)?.write(at, &api)?;
            rt.call("ioctl(UFFDIO_API)", libc::SYS_ioctl, [fd, UFFDIO_API, at, 0, 0, 0])?;
            take_fd(pid, fd as i32).ctx(|| format!("taking the userfaultfd of process {pid}"))
        })();
        let closed = rt.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
        let uffd = taken?;
        closed?;
        let mut t = ProcessTracking { pid, uffd, ranges: Vec::new() };
        let wanted = crate::ranges::merge(vmas.iter().filter(|v| trackable(v)).map(|v| (v.start, v.end)).collect());
        t.protect(&wanted);
        Ok(t)
    }

    /// Register and write-protect `ranges` (from crust: only UFFDIO_API
    /// needs the target's mm). A range the kernel refuses (a vma another
    /// userfaultfd holds, one gone meanwhile) is left untracked.
    fn protect(&mut self, ranges: &[(u64, u64)]) {
        let fd = self.uffd.as_raw_fd();
        for &(start, end) in ranges {
            let mut reg = [start, end - start, UFFDIO_REGISTER_MODE_WP, 0];
            if let Err(e) = ioctl(fd, UFFDIO_REGISTER, &mut reg) {
                log::debug!("process {}: not tracking {start:#x}-{end:#x}: UFFDIO_REGISTER: errno {e}", self.pid);
                continue;
            }
            let mut wp = [start, end - start, UFFDIO_WRITEPROTECT_MODE_WP];
            match ioctl(fd, UFFDIO_WRITEPROTECT, &mut wp) {
                Ok(_) => self.ranges.push((start, end)),
                Err(e) => log::debug!("process {}: not tracking {start:#x}-{end:#x}: UFFDIO_WRITEPROTECT: errno {e}", self.pid),
            }
        }
    }

    /// The pages written since the protection (or the last re-arming scan).
    /// `rearm`: protect them again in the same walk (a pre-copy round);
    /// `zero_pages`: count pages mapped to the zero page as written too (a
    /// clean page that was dropped and read again maps the zero page with
    /// its protection kept: its old contents are not its contents).
    pub fn scan(&mut self, rearm: bool, zero_pages: bool) -> Result<Scan> {
        let pagemap = File::open(format!("/proc/{}/pagemap", self.pid)).ctx(|| format!("opening /proc/{}/pagemap", self.pid))?;
        let mut out = Scan::default();
        let mut kept = Vec::new();
        let mut regions = vec![PageRegion::default(); 4096];
        let categories = PAGE_IS_WRITTEN | if zero_pages { PAGE_IS_PFNZERO } else { 0 };
        for &(start, end) in &self.ranges {
            let mut at = start;
            let mut written = Vec::new();
            let mut lost = false;
            while at < end {
                let mut arg = PmScanArg {
                    size: std::mem::size_of::<PmScanArg>() as u64,
                    flags: PM_SCAN_CHECK_WPASYNC | if rearm { PM_SCAN_WP_MATCHING } else { 0 },
                    start: at,
                    end,
                    vec: regions.as_mut_ptr() as u64,
                    vec_len: regions.len() as u64,
                    category_anyof_mask: categories,
                    return_mask: categories,
                    ..Default::default()
                };
                match ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) {
                    Ok(n) => {
                        written.extend(regions[..n as usize].iter().map(|r| (r.start, r.end)));
                        // A full vector stops the walk early; it goes on from there.
                        if arg.walk_end <= at || arg.walk_end > end {
                            return Err(Error::Invalid(format!(
                                "PAGEMAP_SCAN of process {} stopped at {:#x}, scanning from {at:#x}",
                                self.pid, arg.walk_end
                            )));
                        }
                        at = arg.walk_end;
                    }
                    Err(libc::EPERM) => {
                        lost = true;
                        break;
                    }
                    Err(e) => {
                        return Err(Error::Io {
                            context: format!("scanning the written pages of process {} at {at:#x}", self.pid),
                            err: std::io::Error::from_raw_os_error(e),
                        })
                    }
                }
            }
            if lost {
                out.lost.push((start, end));
            } else {
                out.written.extend(written);
                kept.push((start, end));
            }
        }
        self.ranges = kept;
        out.written = crate::ranges::merge(out.written);
        Ok(out)
    }

    /// The ranges covered that no scan found written: `ranges` less `scan`.
    pub fn clean(&self, scan: &Scan) -> Vec<(u64, u64)> {
        crate::ranges::subtract(&self.ranges, &scan.dirty())
    }
}

pub(crate) fn take_fd(pid: i32, fd: i32) -> std::io::Result<OwnedFd> {
    use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};
    let pid = Pid::from_raw(pid).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty())?;
    Ok(pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty())?)
}

/// Pages of `ranges` of process `pid` that hold something (present or
/// swapped), as sorted runs.
pub fn populated(pid: i32, ranges: &[(u64, u64)]) -> Result<Vec<(u64, u64)>> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).ctx(|| format!("opening /proc/{pid}/pagemap"))?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut buf = Vec::new();
    const BATCH: u64 = 1 << 16;
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let n = ((end - at) / PAGE_SIZE).min(BATCH);
            buf.resize(n as usize * 8, 0);
            pagemap.read_exact_at(&mut buf, at / PAGE_SIZE * 8).ctx(|| format!("reading /proc/{pid}/pagemap"))?;
            for (i, e) in buf.chunks_exact(8).enumerate() {
                let e = u64::from_le_bytes(e.try_into().expect("chunks of 8"));
                // Bit 63 present, bit 62 swapped.
                if e & (3 << 62) == 0 {
                    continue;
                }
                let page = at + i as u64 * PAGE_SIZE;
                match out.last_mut() {
                    Some(last) if last.1 == page => last.1 += PAGE_SIZE,
                    _ => out.push((page, page + PAGE_SIZE)),
                }
            }
            at += n * PAGE_SIZE;
        }
    }
    Ok(out)
}

/// How long a keeper holds the tracking of a pre-dump no dump came for.
pub const KEEPER_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The file of a pre-dump's images that names its keeper.
pub const TRACKING_JSON: &str = "crust-tracking.json";

/// A pre-dump's tracking, as its images directory names it: the keeper
/// process holding the fds, and what each fd covers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeeperNote {
    pub keeper: i32,
    /// The keeper's start time (clock ticks after boot, /proc/PID/stat): a
    /// pid used again by another process is not taken for it.
    pub start_time: u64,
    pub processes: Vec<KeptProcess>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeptProcess {
    pub pid: i32,
    /// The fd number in the keeper.
    pub fd: i32,
    pub ranges: Vec<(u64, u64)>,
}

/// The name the keeper goes by (/proc/PID/comm).
const KEEPER_NAME: &[u8] = b"crust-track\0";

/// A keeper just forked, holding the tracking until its pre-dump's images
/// are in place ([`Keeper::committed`]); dropped before, it ends, and the
/// tracking with it.
pub struct Keeper {
    pub note: KeeperNote,
    /// crust's end of the pipe the keeper watches: a byte says the pre-dump
    /// is in place; end of file without it, that it is not.
    commit: Option<OwnedFd>,
}

impl Keeper {
    /// Fork a keeper holding `tracked` (crust's copies are closed here).
    pub fn spawn(tracked: Vec<ProcessTracking>) -> Result<Keeper> {
        use std::os::fd::IntoRawFd;
        let (read_end, write_end) = nix::unistd::pipe().map_err(|e| Error::io_other("making the keeper's pipe", e))?;
        let mut pidfds = Vec::new();
        for t in &tracked {
            let pid = rustix::process::Pid::from_raw(t.pid).ok_or_else(|| Error::Invalid(format!("{} is not a pid", t.pid)))?;
            let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                .map_err(|e| Error::io_other(format!("pidfd of process {}", t.pid), e))?;
            pidfds.push(fd);
        }
        // Everything the keeper needs is made before the fork: a fork of a
        // threaded program may only make async-signal-safe calls.
        let mut keep: Vec<RawFd> = tracked.iter().map(|t| t.uffd.as_raw_fd()).collect();
        keep.extend(pidfds.iter().map(|p| p.as_raw_fd()));
        keep.push(read_end.as_raw_fd());
        keep.sort_unstable();
        let mut polled: Vec<libc::pollfd> =
            pidfds.iter().map(|p| libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        polled.push(libc::pollfd { fd: read_end.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        let deadline = KEEPER_LIFETIME.as_secs() as i64;
        // SAFETY: the child only makes raw syscalls (setsid, prctl,
        // close_range, poll, read, clock_gettime, _exit) on memory made
        // before the fork, and never returns.
        let child = unsafe { libc::fork() };
        if child < 0 {
            return Err(Error::io_other("forking the tracking keeper", std::io::Error::last_os_error()));
        }
        if child == 0 {
            // SAFETY: as above: async-signal-safe calls on memory of our own.
            unsafe { keeper_main(&keep, &mut polled, deadline) }
        }
        drop(read_end);
        drop(pidfds);
        let start_time = procfs::process::Process::new(child)
            .and_then(|p| p.stat())
            .map(|s| s.starttime)
            .map_err(|e| Error::io_other(format!("reading /proc/{child}/stat"), e))?;
        let processes = tracked.iter().map(|t| KeptProcess { pid: t.pid, fd: t.uffd.as_raw_fd(), ranges: t.ranges.clone() }).collect();
        // crust's copies go: the keeper's are the only ones left.
        drop(tracked);
        // SAFETY: a fresh fd from pipe(), owned here alone.
        let commit = Some(unsafe { OwnedFd::from_raw_fd(write_end.into_raw_fd()) });
        Ok(Keeper { note: KeeperNote { keeper: child, start_time, processes }, commit })
    }

    /// The pre-dump's images are in place: the keeper holds on for the dump.
    pub fn committed(mut self) {
        if let Some(fd) = self.commit.take() {
            // SAFETY: writing one byte from a live buffer to our own fd.
            let _ = unsafe { libc::write(fd.as_raw_fd(), b"1".as_ptr().cast(), 1) };
        }
    }
}

/// The keeper: it holds the fds in `keep`, closes every other, and ends
/// when a tracked process ends (a pidfd is readable), when the pipe from
/// crust ends without a byte (the pre-dump failed or crust was killed),
/// when crust takes the fds (it kills the keeper), or after `lifetime` s.
///
/// # Safety
/// Only in the child of a fork: makes raw syscalls and never returns.
unsafe fn keeper_main(keep: &[RawFd], polled: &mut [libc::pollfd], lifetime: i64) -> ! {
    libc::setsid();
    // crust's worker catches these to stop cleanly; the keeper just ends.
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        libc::signal(sig, libc::SIG_DFL);
    }
    libc::prctl(libc::PR_SET_NAME, KEEPER_NAME.as_ptr() as libc::c_ulong, 0, 0, 0);
    // Close everything but `keep` (sorted): the holes between its fds.
    let mut from: u32 = 0;
    for &fd in keep {
        if (fd as u32) > from {
            libc::syscall(libc::SYS_close_range, from, fd as u32 - 1, 0);
        }
        from = fd as u32 + 1;
    }
    libc::syscall(libc::SYS_close_range, from, u32::MAX, 0);
    let now = || {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec
    };
    let end = now() + lifetime;
    let pipe = polled.len() - 1;
    let mut watching_pipe = true;
    loop {
        let n = if watching_pipe { polled.len() } else { pipe };
        let r = libc::poll(polled.as_mut_ptr(), n as libc::nfds_t, 1000);
        if now() >= end {
            libc::_exit(0);
        }
        if r <= 0 {
            continue;
        }
        if polled[..pipe].iter().any(|p| p.revents != 0) {
            libc::_exit(0);
        }
        if watching_pipe && polled[pipe].revents != 0 {
            let mut b = 0u8;
            if libc::read(polled[pipe].fd, (&mut b as *mut u8).cast(), 1) != 1 {
                libc::_exit(0);
            }
            watching_pipe = false;
        }
    }
}

/// The tracking a pre-dump in `dir` left with its keeper, taken over from it
/// (the keeper is ended): none if it left none, or the keeper is gone (ended
/// by itself, or taken by another dump). What cannot be taken is left to
/// the byte comparison, and said in the log.
pub fn take_from_keeper(dir: &Path) -> Vec<ProcessTracking> {
    let path = dir.join(TRACKING_JSON);
    let Ok(text) = std::fs::read(&path) else { return Vec::new() };
    let note: KeeperNote = match serde_json::from_slice(&text) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("{}: unreadable ({e}): comparing pages instead", path.display());
            return Vec::new();
        }
    };
    let alive = procfs::process::Process::new(note.keeper).and_then(|p| Ok((p.stat()?.starttime, p.stat()?.comm)));
    match alive {
        Ok((start, comm)) if start == note.start_time && comm.as_bytes() == &KEEPER_NAME[..KEEPER_NAME.len() - 1] => {}
        _ => {
            log::info!("the tracking of {} ended (its keeper {} is gone): comparing pages instead", dir.display(), note.keeper);
            return Vec::new();
        }
    }
    let Some(pid) = rustix::process::Pid::from_raw(note.keeper) else { return Vec::new() };
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else { return Vec::new() };
    let mut out = Vec::new();
    for p in &note.processes {
        match rustix::process::pidfd_getfd(&pidfd, p.fd, rustix::process::PidfdGetfdFlags::empty()) {
            Ok(uffd) if is_userfaultfd(&uffd) => out.push(ProcessTracking { pid: p.pid, uffd, ranges: p.ranges.clone() }),
            _ => log::warn!("the tracking of process {} could not be taken from keeper {}: comparing its pages", p.pid, note.keeper),
        }
    }
    // The keeper's copies go with it; it is waited for (its fds are closed
    // once its pidfd says it exited), so that when crust closes its own the
    // kernel really ends the tracking.
    let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    let mut polled = [libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: one pollfd of a live array, for a live fd.
    if unsafe { libc::poll(polled.as_mut_ptr(), 1, 5000) } != 1 {
        log::warn!("keeper {} did not end: the tracking of {} may outlive this dump", note.keeper, dir.display());
    }
    out
}

fn is_userfaultfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).is_ok_and(|l| l.as_os_str() == "anon_inode:[userfaultfd]")
}

/// What tracking says of one process at the freeze of a dump.
#[derive(Clone, Debug, Default)]
pub struct Tracked {
    /// The ranges still covered (sorted, apart).
    pub covered: Vec<(u64, u64)>,
    /// Of those, the pages not written since the protection: as the images
    /// the tracking started with hold them.
    pub clean: Vec<(u64, u64)>,
}

/// By process: what its tracking says, found by a final scan of a frozen
/// tree. The tracking ends here: its fds are closed, so the kernel removes
/// the registration and the protection before the dump reads the vmas.
pub fn final_scan(tracked: Vec<ProcessTracking>) -> BTreeMap<i32, Tracked> {
    let mut out = BTreeMap::new();
    for mut t in tracked {
        match t.scan(false, true) {
            Ok(scan) => {
                let clean = t.clean(&scan);
                out.insert(t.pid, Tracked { covered: t.ranges.clone(), clean });
            }
            Err(e) => log::warn!("{e}: process {}'s pages are taken as written", t.pid),
        }
    }
    out
}

/// Start tracking every live process of a frozen tree (in its leader), for
/// the vmas `vmas_of` gives. A process whose tracking cannot start is left
/// untracked (said in the log): a later dump compares or sends its pages.
pub fn start_tree(tree: &crate::tree::FrozenTree, mut vmas_of: impl FnMut(i32) -> Option<Vec<Vma>>) -> Vec<ProcessTracking> {
    let mut out = Vec::new();
    for p in tree.processes.iter().filter(|p| p.zombie.is_none()) {
        let Some(vmas) = vmas_of(p.pid) else { continue };
        let started = (|| {
            let gadget = crate::mem::vdso_syscall_gadget(p.pid, &vmas)?;
            let writable = |a: u64, b: u64| vmas.iter().any(|v| v.start <= a && b <= v.end && v.prot & libc::PROT_WRITE as u32 != 0);
            let rt = RemoteThread::start(p.pid, gadget, writable)?;
            let t = ProcessTracking::start(p.pid, &rt, &vmas);
            rt.finish()?;
            t
        })();
        match started {
            Ok(t) => out.push(t),
            Err(e) => log::warn!("process {}: dirty tracking could not start ({e}): its pages will be compared or sent whole", p.pid),
        }
    }
    out
}

/// A live migration's tracking, handed from its pre-copy rounds to the dump
/// at the freeze, with what the destination holds of each process.
#[derive(Clone, Debug, Default)]
pub struct Handoff(std::sync::Arc<std::sync::Mutex<Option<Handed>>>);

#[derive(Debug, Default)]
pub struct Handed {
    pub tracked: Vec<ProcessTracking>,
    /// By process: the pages the destination holds as they were at the
    /// last protection (sorted, apart).
    pub held: BTreeMap<i32, Vec<(u64, u64)>>,
}

impl Handoff {
    pub fn put(&self, handed: Handed) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(handed);
    }

    pub fn take(&self) -> Option<Handed> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
