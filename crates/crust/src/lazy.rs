//! Post-copy restore (lazy pages): the tree runs before its private anonymous
//! memory is there; a page it touches is put in on demand through
//! userfaultfd, and the rest is pushed in the background until all is there.
//!
//! Each restored process makes a userfaultfd by injected syscalls (the
//! UFFDIO_API call must come from a task of its mm), crust takes it with
//! pidfd_getfd and closes the task's copy, then registers the process's
//! private anonymous vmas holding saved pages in MISSING mode from its side.
//! Pages of other mappings (file-backed, shared) are put in at once, as a
//! plain restore does. A server thread in crust owns the userfaultfds: it
//! answers each fault with UFFDIO_COPY of the chunk holding the page (or
//! UFFDIO_ZEROPAGE where nothing was saved), and between faults copies what
//! is still missing. A process whose pages are all in has its userfaultfd
//! closed, which unregisters its ranges: nothing is left of it in the tree.
//!
//! The tree may fork, mremap, munmap or madvise(DONTNEED) meanwhile: the
//! userfaultfd asks for the non-cooperative events (FORK, REMAP, REMOVE,
//! UNMAP). A fork gives the child a userfaultfd of its own, with what its
//! parent still missed then; a move moves what is missing with it; pages
//! dropped or unmapped are missing no more (they read as zeros, as they
//! would have). The kernel refuses copies (EAGAIN) while an event is unread,
//! so what is missing is always known before a copy lands.
//!
//! A process forked during the restore gets its own copy of its pages (no
//! copy-on-write sharing with its parent): the parent's pages are not there
//! when it forks.
//!
//! What may not happen is the tree running on with missing memory: when the
//! pages cannot be had (an image unreadable, a copy refused for another
//! reason than the ones above), the server kills the tree (every process it
//! restored and their descendants) before closing the userfaultfds.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::images::criu::{PAGE_SIZE, VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR};
use crate::images::load::{PagesAt, ProcessImage};
use crate::restore::{fill_from_files, PageSink, PageSource, RestoreOptions, Restored};
use crate::task::{Scratch, Task};

const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const FEATURES: u64 = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;
/// _IOWR(0xaa, 0x3f, struct uffdio_api) and friends (linux/userfaultfd.h).
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_WAKE: u64 = 0x8010_aa02;
const UFFDIO_COPY: u64 = 0xc028_aa03;
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;
/// sizeof(struct uffd_msg).
const MSG_LEN: usize = 32;

/// Pages put in for one fault: the faulting page and those after it in the
/// same saved run (a program touching memory in order then faults once per
/// chunk, not per page).
const FAULT_CHUNK: u64 = 16 * PAGE_SIZE;
/// Pages pushed at a time in the background, between looks at the faults.
const PUSH_CHUNK: u64 = 64 * PAGE_SIZE;

/// Where the saved contents of a missing range start: source `src` of the
/// [`Fetch`], at `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub src: u32,
    pub off: u64,
}

/// Reads saved pages for the server.
pub trait Fetch: Send + 'static {
    /// Fill `buf` with the saved bytes at `loc`.
    fn fetch(&mut self, loc: Loc, buf: &mut [u8]) -> Result<()>;
}

/// The pages images of a local dump: a source is an open pages file, the
/// offset one in it.
#[derive(Clone, Default)]
pub struct LocalFiles(Arc<Mutex<Vec<(PathBuf, File)>>>);

impl LocalFiles {
    /// The source number of the file at `path`, opened on first use.
    fn source(&self, path: &std::path::Path) -> Result<u32> {
        let mut files = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = files.iter().position(|(p, _)| p == path) {
            return Ok(i as u32);
        }
        let f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        files.push((path.to_path_buf(), f));
        Ok(files.len() as u32 - 1)
    }
}

impl Fetch for LocalFiles {
    fn fetch(&mut self, loc: Loc, buf: &mut [u8]) -> Result<()> {
        let files = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (path, f) = files.get(loc.src as usize).ok_or_else(|| Error::Invalid(format!("lazy pages: no source {}", loc.src)))?;
        f.read_exact_at(buf, loc.off).ctx(|| format!("reading {} bytes of {} at {}", buf.len(), path.display(), loc.off))
    }
}

/// What is still missing in one address space: ranges by start, each with
/// its end and where its contents are.
#[derive(Clone, Debug, Default)]
struct Missing(BTreeMap<u64, (u64, Loc)>);

impl Missing {
    fn insert(&mut self, start: u64, end: u64, loc: Loc) {
        if start < end {
            self.0.insert(start, (end, loc));
        }
    }

    /// Removes and returns the parts of [start, end) still missing.
    fn take(&mut self, start: u64, end: u64) -> Vec<(u64, u64, Loc)> {
        let first = match self.0.range(..=start).next_back() {
            Some((&s, &(e, _))) if e > start => s,
            _ => start,
        };
        let hit: Vec<u64> = self.0.range(first..end).map(|(&s, _)| s).collect();
        let mut out = Vec::new();
        for s in hit {
            let Some((e, loc)) = self.0.remove(&s) else { continue };
            let (from, to) = (s.max(start), e.min(end));
            self.insert(s, from, loc);
            self.insert(to, e, Loc { src: loc.src, off: loc.off + (to - s) });
            out.push((from, to, Loc { src: loc.src, off: loc.off + (from - s) }));
        }
        out
    }

    /// The missing run holding `addr`, cut to at most `max` bytes from it.
    fn at(&mut self, addr: u64, max: u64) -> Option<(u64, u64, Loc)> {
        let (_, &(e, _)) = self.0.range(..=addr).next_back()?;
        if e <= addr {
            return None;
        }
        self.take(addr, e.min(addr + max)).into_iter().next()
    }

    /// The first missing run, cut to at most `max` bytes.
    fn first(&mut self, max: u64) -> Option<(u64, u64, Loc)> {
        let (&s, &(e, _)) = self.0.iter().next()?;
        self.take(s, e.min(s + max)).into_iter().next()
    }

    /// mremap moved [from, from + len) to `to`.
    fn moved(&mut self, from: u64, to: u64, len: u64) {
        for (s, e, loc) in self.take(from, from + len) {
            self.insert(s - from + to, e - from + to, loc);
        }
    }

    fn bytes(&self) -> u64 {
        self.0.iter().map(|(s, (e, _))| e - s).sum()
    }
}

/// One address space being filled: crust's fd of its userfaultfd, what it
/// still misses, the faults waiting for an answer.
struct Space {
    uffd: OwnedFd,
    missing: Missing,
    faults: VecDeque<u64>,
}

/// How a copy into a space went.
enum Put {
    Done,
    /// An event is unread: read it, then try again.
    Again,
    /// The address space is gone (the process exited or exec'd).
    Gone,
}

/// Numbers of a fill, for the stats and the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FillStats {
    /// Address spaces filled (restored processes and children forked during the fill).
    pub spaces: u64,
    /// Faults answered.
    pub faults: u64,
    /// Pages put in to answer faults.
    pub pages_on_fault: u64,
    /// Pages pushed in the background.
    pub pages_pushed: u64,
    /// Zero pages put in (faults where nothing was saved).
    pub zero_pages: u64,
    /// Pages missing no more because the tree dropped or unmapped them.
    pub pages_dropped: u64,
    /// From the server's start to the last page in.
    pub fill_time_us: u64,
}

/// ioctl on a userfaultfd of crust's; the raw errno on failure.
fn ioctl<T>(fd: &OwnedFd, req: u64, arg: &mut T) -> std::result::Result<(), i32> {
    // SAFETY: `arg` is a live, exclusively borrowed value of the layout
    // `req` expects (the arrays mirror the kernel's structs); the kernel
    // reads and writes only within it.
    match unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) } {
        -1 => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)),
        _ => Ok(()),
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

struct Server<F: Fetch> {
    fetch: F,
    spaces: Vec<Space>,
    /// The tree's processes (crust's pids), to kill if its pages cannot be had.
    pids: Arc<Mutex<Vec<i32>>>,
    buf: Vec<u8>,
    stats: FillStats,
    next: usize,
}

impl<F: Fetch> Server<F> {
    /// Put [start, end) from `loc` into space `i`; what did not go in stays missing.
    fn copy(&mut self, i: usize, start: u64, end: u64, loc: Loc) -> Result<Put> {
        let len = (end - start) as usize;
        self.buf.resize(len, 0);
        self.fetch.fetch(loc, &mut self.buf[..len])?;
        let mut at = start;
        loop {
            let space = &mut self.spaces[i];
            let mut arg = [at, self.buf.as_ptr() as u64 + (at - start), end - at, 0, 0];
            let r = ioctl(&space.uffd, UFFDIO_COPY, &mut arg);
            let copied = (arg[4] as i64).max(0) as u64;
            match r {
                Ok(()) => return Ok(Put::Done),
                Err(libc::EAGAIN) => {
                    at += copied;
                    space.missing.insert(at, end, Loc { src: loc.src, off: loc.off + (at - start) });
                    return Ok(Put::Again);
                }
                Err(libc::ESRCH) => return Ok(Put::Gone),
                // The range is no longer registered (unmapped, the event on
                // its way): nothing to fill there.
                Err(libc::ENOENT) => return Ok(Put::Done),
                // A page already there: only the zero page of a fault
                // answered before can be; skip it.
                Err(libc::EEXIST) => {
                    at += copied + PAGE_SIZE;
                    if at >= end {
                        return Ok(Put::Done);
                    }
                }
                Err(e) => {
                    return Err(Error::Io { context: format!("UFFDIO_COPY at {at:#x}"), err: std::io::Error::from_raw_os_error(e) });
                }
            }
        }
    }

    /// Answer the fault at `addr` in space `i`.
    fn serve(&mut self, i: usize, addr: u64) -> Result<Put> {
        if let Some((s, e, loc)) = self.spaces[i].missing.at(addr, FAULT_CHUNK) {
            let put = self.copy(i, s, e, loc)?;
            if let Put::Done = put {
                self.stats.pages_on_fault += (e - s) / PAGE_SIZE;
            }
            return Ok(put);
        }
        let space = &self.spaces[i];
        let mut zero = [addr, PAGE_SIZE, 0, 0];
        match ioctl(&space.uffd, UFFDIO_ZEROPAGE, &mut zero) {
            Ok(()) => {
                self.stats.zero_pages += 1;
                Ok(Put::Done)
            }
            Err(libc::EAGAIN) => Ok(Put::Again),
            Err(libc::ESRCH) => Ok(Put::Gone),
            // There already (copied meanwhile) or gone: wake whoever waits.
            Err(libc::EEXIST) | Err(libc::ENOENT) => {
                let mut range = [addr, PAGE_SIZE];
                let _ = ioctl(&space.uffd, UFFDIO_WAKE, &mut range);
                Ok(Put::Done)
            }
            Err(e) => Err(Error::Io { context: format!("UFFDIO_ZEROPAGE at {addr:#x}"), err: std::io::Error::from_raw_os_error(e) }),
        }
    }

    /// Read the messages of space `i`: events are applied at once, faults queued.
    fn read_messages(&mut self, i: usize) -> Result<()> {
        let mut msgs = [0u8; MSG_LEN * 64];
        loop {
            // SAFETY: reading into a buffer of crust's of that length.
            let n = unsafe { libc::read(self.spaces[i].uffd.as_raw_fd(), msgs.as_mut_ptr().cast(), msgs.len()) };
            if n <= 0 {
                return Ok(());
            }
            for m in msgs[..n as usize].chunks_exact(MSG_LEN) {
                let space = &mut self.spaces[i];
                match m[0] {
                    UFFD_EVENT_PAGEFAULT => {
                        self.stats.faults += 1;
                        space.faults.push_back(u64_at(m, 16) & !(PAGE_SIZE - 1));
                    }
                    UFFD_EVENT_FORK => {
                        let fd = u32::from_le_bytes(m[8..12].try_into().unwrap_or_default()) as i32;
                        // SAFETY: the kernel installed this fd in crust's table for this message.
                        let uffd = unsafe { OwnedFd::from_raw_fd(fd) };
                        let missing = space.missing.clone();
                        self.spaces.push(Space { uffd, missing, faults: VecDeque::new() });
                        self.stats.spaces += 1;
                    }
                    UFFD_EVENT_REMAP => space.missing.moved(u64_at(m, 8), u64_at(m, 16), u64_at(m, 24)),
                    UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP => {
                        let dropped: u64 = space.missing.take(u64_at(m, 8), u64_at(m, 16)).iter().map(|(s, e, _)| e - s).sum();
                        self.stats.pages_dropped += dropped / PAGE_SIZE;
                    }
                    other => log::debug!("lazy pages: userfaultfd message {other:#x} ignored"),
                }
            }
        }
    }

    /// One turn: read what the spaces say, answer faults, push one chunk
    /// if `push` (not while the restore is still going: it needs the cores
    /// more, and the tree runs sooner).
    fn turn(&mut self, push: bool) -> Result<()> {
        let mut blocked = HashSet::new();
        let mut polled: Vec<libc::pollfd> =
            self.spaces.iter().map(|s| libc::pollfd { fd: s.uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        let idle = !push || self.spaces.iter().all(|s| s.missing.0.is_empty() && s.faults.is_empty());
        // SAFETY: a poll on an array of crust's.
        unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as _, if idle { 10 } else { 0 }) };
        for (i, p) in polled.iter().enumerate() {
            if p.revents != 0 {
                self.read_messages(i)?;
            }
        }
        let mut gone = HashSet::new();
        for i in 0..self.spaces.len() {
            while let Some(&addr) = self.spaces[i].faults.front() {
                match self.serve(i, addr)? {
                    Put::Done => drop(self.spaces[i].faults.pop_front()),
                    Put::Again => {
                        blocked.insert(i);
                        break;
                    }
                    Put::Gone => {
                        gone.insert(i);
                        break;
                    }
                }
            }
        }
        // One chunk pushed, from each space in turn.
        let n = if push { self.spaces.len() } else { 0 };
        for k in 0..n {
            let i = (self.next + k) % n;
            if blocked.contains(&i) || gone.contains(&i) {
                continue;
            }
            let Some((s, e, loc)) = self.spaces[i].missing.first(PUSH_CHUNK) else { continue };
            match self.copy(i, s, e, loc)? {
                Put::Done => self.stats.pages_pushed += (e - s) / PAGE_SIZE,
                Put::Again => {}
                Put::Gone => {
                    gone.insert(i);
                }
            }
            self.next = i + 1;
            break;
        }
        // A space with nothing missing is done: closing its userfaultfd
        // unregisters its ranges (faults waiting then see plain memory).
        let mut i = 0;
        self.spaces.retain(|s| {
            let keep = !gone.contains(&i) && !s.missing.0.is_empty();
            i += 1;
            keep
        });
        Ok(())
    }

    fn run(mut self, new: Receiver<Space>, stop: Arc<AtomicBool>) -> Result<FillStats> {
        let start = Instant::now();
        let mut sealed = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(self.stats);
            }
            loop {
                match new.try_recv() {
                    Ok(s) => {
                        self.stats.spaces += 1;
                        self.spaces.push(s);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        sealed = true;
                        break;
                    }
                }
            }
            if sealed && self.spaces.is_empty() {
                self.stats.fill_time_us = start.elapsed().as_micros() as u64;
                return Ok(self.stats);
            }
            if let Err(e) = self.turn(sealed) {
                // The tree must not run on with memory missing: it dies
                // before the userfaultfds close.
                log::error!("lazy pages: {e}; killing the restored tree, its memory cannot be filled");
                kill_tree(&self.pids.lock().unwrap_or_else(|e| e.into_inner()));
                return Err(e);
            }
        }
    }
}

/// SIGKILL to `pids` and all their descendants.
fn kill_tree(pids: &[i32]) {
    let mut todo: Vec<i32> = pids.to_vec();
    let mut seen = HashSet::new();
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        for t in tasks {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            todo.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
    }
}

/// The server thread, running from the first registration.
struct Running {
    new: Option<Sender<Space>>,
    /// The tree's processes, as they are registered.
    pids: Arc<Mutex<Vec<i32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<FillStats>>>,
}

impl Running {
    fn start<F: Fetch>(fetch: F) -> Running {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let pids = Arc::new(Mutex::new(Vec::new()));
        let server = Server { fetch, spaces: Vec::new(), pids: pids.clone(), buf: Vec::new(), stats: FillStats::default(), next: 0 };
        let s = stop.clone();
        let thread = std::thread::spawn(move || server.run(rx, s));
        Running { new: Some(tx), pids, stop, thread: Some(thread) }
    }
}

/// The pages source of a lazy restore: pages of private anonymous memory
/// are left to the server, the others put in at once.
pub struct LazyPages {
    files: LocalFiles,
    running: Running,
    /// From the first registration on.
    guard: Option<Guard>,
}

impl LazyPages {
    pub fn local() -> LazyPages {
        let files = LocalFiles::default();
        LazyPages { running: Running::start(files.clone()), files, guard: None }
    }

    /// The restore is done: no process comes any more. The fill goes on,
    /// guarded against crust's death.
    pub fn seal(mut self) -> Fill {
        drop(self.running.new.take());
        Fill { thread: self.running.thread.take(), guard: self.guard.take() }
    }
}

impl Drop for LazyPages {
    /// A restore that failed: the server stops (the tree is killed by the restore).
    fn drop(&mut self) {
        drop(self.running.new.take());
        if let Some(t) = self.running.thread.take() {
            self.running.stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
    }
}

/// A vma whose saved pages are left to the server.
fn lazy_vma(status: u32) -> bool {
    status & VMA_ANON_PRIVATE != 0 && status & (VMA_ANON_SHARED | VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL) == 0
}

impl PageSource for LazyPages {
    fn fill(&mut self, task: &Task, scratch: &mut Scratch, p: &ProcessImage, sink: &mut PageSink) -> Result<()> {
        let anon: Vec<(u64, u64)> = p.mm.vmas.iter().filter(|v| lazy_vma(v.status)).map(|v| (v.start, v.end)).collect();
        let mut eager = Vec::new();
        let mut missing = Missing::default();
        for run in &p.pages {
            for (at, n, inside) in crate::ranges::split(&anon, run.vaddr, run.len) {
                let off = run.offset + (at - run.vaddr);
                if inside {
                    missing.insert(at, at + n, Loc { src: self.files.source(&run.path)?, off });
                } else {
                    eager.push(PagesAt { vaddr: at, len: n, path: run.path.clone(), offset: off });
                }
            }
        }
        fill_from_files(task, scratch, &eager, sink)?;
        if missing.0.is_empty() {
            return Ok(());
        }
        // The first process registered is the root: the guard kills it
        // and its descendants, every other process of the tree.
        if self.guard.is_none() {
            self.guard = Some(Guard::start(&[task.pid])?);
        }
        let uffd = make_uffd(task, scratch)?;
        let used: Vec<(u64, u64)> = anon.iter().copied().filter(|&(s, e)| missing.0.range(..e).next_back().is_some_and(|(_, &(me, _))| me > s)).collect();
        for (s, e) in used {
            let mut reg = [s, e - s, UFFDIO_REGISTER_MODE_MISSING, 0];
            ioctl(&uffd, UFFDIO_REGISTER, &mut reg).map_err(|e| Error::Io {
                context: format!("registering {s:#x}-{:#x} of process {} for lazy pages", reg[0] + reg[1], task.pid),
                err: std::io::Error::from_raw_os_error(e),
            })?;
        }
        log::debug!("process {}: {} bytes left for lazy pages", task.pid, missing.bytes());
        self.running.pids.lock().unwrap_or_else(|e| e.into_inner()).push(task.pid);
        let space = Space { uffd, missing, faults: VecDeque::new() };
        self.running.new.as_ref().map(|tx| tx.send(space)).transpose().map_err(|_| Error::Invalid("the lazy pages server stopped".into()))?;
        Ok(())
    }
}

/// The task makes a userfaultfd asking for the non-cooperative events; crust
/// takes it. The task's copy is closed before this returns, whatever fails.
fn make_uffd(task: &Task, scratch: &mut Scratch) -> Result<OwnedFd> {
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = task.call("userfaultfd", libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    let taken = (|| {
        let at = scratch.reset().put_u64s(&[UFFD_API, FEATURES, 0])?;
        task.call("ioctl(UFFDIO_API)", libc::SYS_ioctl, [fd, UFFDIO_API, at, 0, 0, 0])?;
        crate::track::take_fd(task.pid, fd as i32).ctx(|| format!("taking the userfaultfd of process {}", task.pid))
    })();
    let closed = task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
    let uffd = taken?;
    closed?;
    Ok(uffd)
}

/// The fill of a lazily restored tree, going on in crust. Dropping it
/// waits for the fill: the tree's memory must be all in before crust goes.
pub struct Fill {
    thread: Option<JoinHandle<Result<FillStats>>>,
    guard: Option<Guard>,
}

impl Fill {
    /// Wait until every page is in (or the tree is gone).
    pub fn wait(mut self) -> Result<FillStats> {
        self.end()
    }

    fn end(&mut self) -> Result<FillStats> {
        let r = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Invalid("the lazy pages server panicked".into())),
            None => Ok(FillStats::default()),
        };
        // Every userfaultfd is closed now (the server's spaces are gone
        // with it): the guard has nothing left to guard.
        drop(self.guard.take());
        r
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// crust killed while the fill goes on must not leave the tree running with
/// pages missing (its userfaultfds closed, they would read as zeros). The
/// guard is a process sharing crust's fd table (clone with CLONE_FILES), so
/// every userfaultfd, also those forks bring later, stays open while it
/// lives. It waits for crust to end: if crust ends before it is told to go
/// (killed by crust once the fill is over), it kills the tree (the restored
/// processes and their descendants), then exits, closing the fds.
struct Guard {
    pid: i32,
    /// The pidfd of crust it polls (one fd of the shared table).
    crust: i32,
}

impl Guard {
    fn start(pids: &[i32]) -> Result<Guard> {
        use rustix::process::{pidfd_open, Pid, PidfdFlags};
        let me = Pid::from_raw(std::process::id() as i32).ok_or_else(|| Error::Invalid("crust's own pid".into()))?;
        let crust = pidfd_open(me, PidfdFlags::empty()).ctx(|| "pidfd_open of crust itself")?;
        let roots: Vec<i32> = pids.to_vec();
        // SAFETY: a fork (no CLONE_VM) that shares the fd table; the child
        // runs only guard_main, which makes raw syscalls on memory it owns
        // (its copy of `roots`, stack buffers) and never returns.
        let pid = unsafe { libc::syscall(libc::SYS_clone, (libc::CLONE_FILES | libc::SIGCHLD) as u64, 0u64, 0u64, 0u64, 0u64) };
        if pid == 0 {
            // SAFETY: see above.
            unsafe { guard_main(crust.as_raw_fd(), &roots) }
        }
        if pid < 0 {
            return Err(Error::Io { context: "starting the lazy pages guard".into(), err: std::io::Error::last_os_error() });
        }
        // Closing it here would close it for the guard too (one table).
        Ok(Guard { pid: pid as i32, crust: std::os::fd::IntoRawFd::into_raw_fd(crust) })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill and reap crust's own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WALL);
            libc::close(self.crust);
        }
    }
}

/// The guard: waits for crust to end, then kills the tree. Async-signal-safe
/// only (it runs in a fork of a threaded process): raw syscalls, stack buffers.
unsafe fn guard_main(crust: i32, roots: &[i32]) -> ! {
    libc::prctl(libc::PR_SET_NAME, c"crust-lazy".as_ptr() as libc::c_ulong, 0, 0, 0);
    let mut p = libc::pollfd { fd: crust, events: libc::POLLIN, revents: 0 };
    while libc::poll(&mut p, 1, -1) != 1 {}
    // Processes are killed before they are looked into: none forks again.
    let mut todo = [0i32; 4096];
    let mut n = 0;
    for &r in roots.iter().take(todo.len()) {
        todo[n] = r;
        n += 1;
    }
    let mut done = 0;
    while done < n {
        let pid = todo[done];
        done += 1;
        libc::kill(pid, libc::SIGKILL);
        n = push_children(pid, &mut todo, n);
    }
    libc::_exit(0)
}

/// Appends the children of every thread of `pid` (/proc/PID/task/*/children)
/// to `todo[n..]`; the new count.
unsafe fn push_children(pid: i32, todo: &mut [i32], mut n: usize) -> usize {
    let mut path = [0u8; 64];
    let len = put_path(&mut path, &[b"/proc/", &num(pid as u64)[..], b"/task"]);
    let dir = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_DIRECTORY);
    if dir < 0 {
        return n;
    }
    let _ = len;
    let mut buf = [0u8; 4096];
    loop {
        let got = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
        if got <= 0 {
            break;
        }
        let mut at = 0usize;
        while at < got as usize {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            at += reclen;
            if name.first().is_none_or(|b| !b.is_ascii_digit()) {
                continue;
            }
            let mut cpath = [0u8; 96];
            put_path(&mut cpath, &[b"/proc/", &num(pid as u64)[..], b"/task/", name, b"/children"]);
            let fd = libc::open(cpath.as_ptr().cast(), libc::O_RDONLY);
            if fd < 0 {
                continue;
            }
            let mut text = [0u8; 4096];
            let r = libc::read(fd, text.as_mut_ptr().cast(), text.len());
            libc::close(fd);
            let mut v: i64 = -1;
            for &b in text.iter().take(r.max(0) as usize).chain(std::iter::once(&b' ')) {
                if b.is_ascii_digit() {
                    v = v.max(0) * 10 + (b - b'0') as i64;
                } else if v >= 0 {
                    if n < todo.len() {
                        todo[n] = v as i32;
                        n += 1;
                    }
                    v = -1;
                }
            }
        }
    }
    libc::close(dir);
    n
}

/// The decimal digits of `v`, NUL-padded.
fn num(v: u64) -> [u8; 20] {
    let mut out = [0u8; 20];
    let mut digits = [0u8; 20];
    let (mut v, mut k) = (v, 0);
    loop {
        digits[k] = b'0' + (v % 10) as u8;
        k += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..k {
        out[i] = digits[k - 1 - i];
    }
    out
}

/// `parts` (each up to its first NUL) one after another in `buf`, NUL-ended.
fn put_path(buf: &mut [u8], parts: &[&[u8]]) -> usize {
    let mut at = 0;
    for part in parts {
        for &b in part.iter().take_while(|&&b| b != 0) {
            if at + 1 < buf.len() {
                buf[at] = b;
                at += 1;
            }
        }
    }
    buf[at] = 0;
    at
}

/// `crust restore --lazy-pages`: the tree in `opts.dir` runs before its
/// private anonymous memory is in; the returned [`Fill`] puts it in.
pub fn restore(opts: &RestoreOptions) -> Result<(Restored, Fill)> {
    let mut opts = opts.clone();
    opts.private_copies = true;
    let mut pages = LazyPages::local();
    let restored = crate::restore::restore_with(&opts, &mut pages)?;
    Ok((restored, pages.seal()))
}
