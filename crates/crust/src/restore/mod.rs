//! `crust restore`: bring a dumped tree back, with its pids, memory, files,
//! signal state and registers, and let it run on.
//!
//! No code is loaded into the new tasks. crust forks a copy of itself with the
//! root's pid (clone3 with set_tid), stops it under ptrace, and from then on
//! drives every task by syscalls injected at a `syscall` instruction of the
//! vdso: children and threads are made by clone3 inside their parents, crust's
//! mappings are replaced by the image's, files are opened, and finally every
//! thread gets its saved registers and is let go.

pub mod check;
pub mod layout;
pub mod load;
pub mod task;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::ptrace::{self as nix_ptrace, Options};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::arch;
use crate::dump::TASK_STOPPED;
use crate::cgroups::{CgroupRoot, Mode, Placement};
use crate::error::{Context, Error, Result};
use crate::files::{self, FdRestorer};
use crate::images::digest;
use crate::images::proto::{FdTypes, FileEntry, PagemapEntry};
use crate::mem;
use crate::ptrace;
use load::{DumpImage, ProcessImage};
use task::{Scratch, Task, SCRATCH_LEN};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub dir: PathBuf,
    /// The tree is a job of a shell: it joins crust's session instead of its own.
    pub shell_job: bool,
    /// How long to wait for pids of the image that are still taken (a killed
    /// process's pid is released only once it has been reaped).
    pub pid_wait: Duration,
    /// What to do with the recorded cgroups.
    pub manage_cgroups: Mode,
    /// Put the recorded cgroups under these roots.
    pub cgroup_roots: Vec<CgroupRoot>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreStats {
    /// The root came back stopped (it was a stopped job), by this signal.
    pub stop_signal: Option<i32>,
    pub processes: usize,
    pub threads: usize,
    pub pages_restored: u64,
    pub forking_time_us: u64,
    pub restore_time_us: u64,
}

impl RestoreStats {
    /// As CRIU's stats-restore holds it.
    pub fn entry(&self) -> crate::images::proto::StatsEntry {
        crate::images::proto::StatsEntry {
            dump: None,
            restore: Some(crate::images::proto::RestoreStatsEntry {
                pages_compared: 0,
                pages_skipped_cow: 0,
                forking_time: self.forking_time_us as u32,
                restore_time: self.restore_time_us as u32,
                pages_restored: Some(self.pages_restored),
            }),
        }
    }
}

/// A restored tree, running. Its root is a child of the calling process.
pub struct Restored {
    pub root: i32,
    pub stats: RestoreStats,
}

const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Everything created so far; killed (and reaped), and cgroups crust made
/// removed again, unless the restore succeeds.
struct Created {
    processes: Vec<i32>,
    threads: Vec<i32>,
    cgroups: Placement,
    /// The restoring terminal as it was before the job's settings.
    terminal: Option<files::tty::SavedTerminal>,
    done: bool,
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for &pid in &self.processes {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for &tid in self.threads.iter().chain(self.processes.iter().rev()) {
            let _ = waitpid(Pid::from_raw(tid), Some(WaitPidFlag::__WALL));
        }
        self.cgroups.undo();
        if let Some(t) = &self.terminal {
            t.put_back();
        }
    }
}

/// One process under construction: its leader, its other threads, its scratch area.
struct Proc<'a> {
    image: &'a ProcessImage,
    leader: Task,
    threads: Vec<Task>,
    scratch: Scratch,
}

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
        let fd = open_in(task, scratch, &p.pages_path.to_string_lossy(), flags)?;
        let pages = layout::fill_pages(task, &p.pagemap, fd)?;
        task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        Ok(pages)
    }
}

/// A restored tree, complete but held stopped: nothing of it has run yet.
/// Dropping it kills the tree and undoes what the restore changed.
pub struct Held {
    created: Created,
    /// Every task, and whether it goes on stopped (a stopped job).
    tasks: Vec<(i32, Option<Signal>)>,
    root: i32,
    stats: RestoreStats,
    start: Instant,
}

impl Held {
    pub fn root(&self) -> i32 {
        self.root
    }

    pub fn stats(&self) -> &RestoreStats {
        &self.stats
    }

    /// Let every task go at once.
    pub fn release(mut self) -> Result<Restored> {
        for &(tid, sig) in &self.tasks {
            nix_ptrace::detach(Pid::from_raw(tid), sig).ctx(|| format!("letting task {tid} go"))?;
        }
        self.created.done = true;
        self.created.cgroups.keep();
        self.stats.stop_signal = self.tasks.iter().find(|&&(tid, _)| tid == self.root).and_then(|&(_, sig)| sig).map(|s| s as i32);
        self.stats.restore_time_us = self.start.elapsed().as_micros() as u64;
        Ok(Restored { root: self.root, stats: std::mem::take(&mut self.stats) })
    }
}

/// Restore the tree in `opts.dir` and let it run.
pub fn restore(opts: &RestoreOptions) -> Result<Restored> {
    let img = load::load(&opts.dir)?;
    restore_held(opts, img, &mut PagesInDir)?.release()
}

/// Build the whole tree of `img`, its pages from `pages`, and hold it stopped.
pub fn restore_held(opts: &RestoreOptions, mut img: DumpImage, pages: &mut dyn PageSource) -> Result<Held> {
    let start = Instant::now();
    preflight(&img, opts)?;
    // Deleted files the tree holds are put back under a name while it opens
    // and maps them, and unlinked again when this returns.
    let _ghosts = files::ghost::materialize(&mut img)?;
    let img = &img;
    // The pages are checked on the other core while the tree is built; the
    // tree runs only if they are intact.
    let pages_check = {
        let dir = img.dir.clone();
        let digests = img.pages_digests.clone();
        std::thread::spawn(move || digests.iter().try_for_each(|(name, d)| digest::verify_file(&dir, name, d)))
    };
    // The new tasks keep their objects above every fd of the image: give them
    // (and crust, whose limits they inherit) all the room the hard limit allows.
    let mut nofile = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on crust itself.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) == 0 && nofile.rlim_cur < nofile.rlim_max {
            nofile.rlim_cur = nofile.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &nofile);
        }
    }
    // A shell job's terminal is the one crust runs on.
    // From here on, whatever fails is undone by `created`.
    let mut created =
        Created { processes: Vec::new(), threads: Vec::new(), cgroups: Placement::default(), terminal: None, done: false };
    let terminal = if opts.shell_job { files::tty::own_terminal() } else { None };
    if let (Some((_, fd)), Some(info)) = (&terminal, job_terminal(img)) {
        created.terminal = Some(files::tty::SavedTerminal::save(*fd)?);
        files::tty::apply_settings(*fd, info)?;
    }
    // Cgroups are checked and made before any task exists.
    if let Some(entry) = &img.cgroups {
        created.cgroups = Placement::prepare(entry, opts.manage_cgroups, &opts.cgroup_roots)?;
    }
    let mut stats = RestoreStats { processes: img.processes.len(), ..Default::default() };

    // The root: a copy of crust with the root's pid, stopped at birth.
    let root_img = &img.processes[0];
    let root_pid = root_img.pid();
    spawn_stopped(root_pid)?;
    created.processes.push(root_pid);
    created.cgroups.place(root_pid, cg_set(root_img))?;
    nix_ptrace::setoptions(
        Pid::from_raw(root_pid),
        Options::PTRACE_O_TRACEFORK
            | Options::PTRACE_O_TRACECLONE
            | Options::PTRACE_O_EXITKILL
            | Options::PTRACE_O_TRACESYSGOOD,
    )
    .ctx(|| format!("setting ptrace options on {root_pid}"))?;
    // Nothing may be delivered while crust works inside the tasks; forks and
    // threads inherit the mask, and each thread gets its own back at the end.
    ptrace::set_sigmask(root_pid, !0)?;
    let crust_layout = mem::read_layout(root_pid)?;
    for p in img.processes.iter().filter(|p| p.zombie.is_none()) {
        layout::check_vdso(&p.mm, &crust_layout, &format!("mm-{}.img", p.pid()))?;
    }
    let gadget = mem::vdso_syscall_gadget(root_pid, &crust_layout)?;
    let root = Task::new(root_pid, root_pid, gadget)?;
    // A fork inherits crust's rseq registration, which points into memory that
    // is about to go away: drop it before anything else.
    let rseq = ptrace::rseq_config(root_pid)?;
    if rseq.rseq_abi_size != 0 {
        root.call(
            "rseq unregister",
            libc::SYS_rseq,
            [rseq.rseq_abi_pointer, rseq.rseq_abi_size as u64, 1, rseq.signature as u64, 0, 0],
        )?;
    }
    let mut occupied: Vec<(u64, u64)> = crust_layout.iter().map(|v| (v.start, v.end)).collect();
    for p in &img.processes {
        occupied.extend(p.mm.vmas.iter().map(|v| (v.start, v.end)));
    }
    let scratch_addr = layout::free_gap(&occupied, SCRATCH_LEN)
        .ok_or_else(|| Error::Invalid("no address range is free for crust's scratch area".into()))?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    root.call("mmap of the scratch area", libc::SYS_mmap, [scratch_addr, SCRATCH_LEN, prot, flags, u64::MAX, 0])?;

    // Fds: crust's own go; objects shared by several processes are made in the
    // root, above every fd of the image, and inherited by the forks.
    let fd_base = img.processes.iter().flat_map(|p| p.fds.iter().map(|f| f.fd as u64 + 1)).max().unwrap_or(0).max(3);
    root.call("close_range", libc::SYS_close_range, [0, u32::MAX as u64, 0, 0, 0, 0])?;
    let mut root_scratch = Scratch::new(root_pid, scratch_addr)?;
    let shmem_fds;
    let (shared, shared_pipes, shared_sockets, next_high) = {
        let mut r = FdRestorer {
            task: &root,
            scratch: &mut root_scratch,
            image: img,
            pipes: HashMap::new(),
            sockets: HashMap::new(),
            next_high: fd_base,
            terminal: terminal.as_ref().map(|(path, _)| path.as_str()),
        };
        let mut shared = HashMap::new();
        for id in shared_files(img) {
            shared.insert(id, files::restore_file(&img.files[&id], &mut r)?);
        }
        shmem_fds = make_shared_memory(&mut r, img)?;
        (shared, r.pipes, r.sockets, r.next_high)
    };
    if root_img.pstree.sid == root_img.pstree.pid && !opts.shell_job {
        root.call("setsid", libc::SYS_setsid, [0; 6])?;
    }
    let mut procs = vec![Proc { image: root_img, leader: root, threads: Vec::new(), scratch: root_scratch }];

    // Children, each forked by its parent before anyone's memory changes.
    let fork_start = Instant::now();
    for p in &img.processes[1..] {
        let parent = procs
            .iter_mut()
            .find(|q| q.image.pid() == p.pstree.ppid as i32)
            .ok_or_else(|| Error::Invalid(format!("process {}: its parent {} is not in the image", p.pid(), p.pstree.ppid)))?;
        let child = clone_in(&parent.leader, &mut parent.scratch, p.pid(), 0, libc::SIGCHLD as u64)?;
        created.processes.push(child);
        wait_new_task(child)?;
        created.cgroups.place(child, cg_set(p))?;
        if let Some(status) = p.zombie {
            let mut scratch = Scratch::new(child, scratch_addr)?;
            make_zombie(Task::new(child, child, parent.leader.gadget())?, &mut scratch, status)?;
            continue;
        }
        let task = Task::new(child, child, parent.leader.gadget())?;
        if p.pstree.sid == p.pstree.pid {
            task.call("setsid", libc::SYS_setsid, [0; 6])?;
        }
        procs.push(Proc { image: p, leader: task, threads: Vec::new(), scratch: Scratch::new(child, scratch_addr)? });
    }
    set_process_groups(&procs, opts.shell_job)?;
    stats.forking_time_us = fork_start.elapsed().as_micros() as u64;

    let mut finished = HashSet::new();
    for p in &mut procs {
        stats.pages_restored += restore_memory(p, &crust_layout, img, &shmem_fds, pages)?;
        let mut r = FdRestorer {
            task: &p.leader,
            scratch: &mut p.scratch,
            image: img,
            pipes: shared_pipes.clone(),
            sockets: shared_sockets.clone(),
            next_high,
            terminal: terminal.as_ref().map(|(path, _)| path.as_str()),
        };
        restore_fds(p.image, img, &shared, &mut r, &mut finished)?;
        restore_process_state(p, img)?;
        for &(tid, _) in &p.image.cores[1..] {
            let t = clone_in(&p.leader, &mut p.scratch, tid, CLONE_THREAD_FLAGS, 0)?;
            created.threads.push(t);
            wait_new_task(t)?;
            p.threads.push(Task::new(p.image.pid(), t, p.leader.gadget())?);
        }
        restore_threads_state(p)?;
        stats.threads += p.image.cores.len();
    }
    for p in &procs {
        let len = p.scratch.len;
        p.leader.call("munmap of the scratch area", libc::SYS_munmap, [p.scratch.addr, len, 0, 0, 0, 0])?;
        set_priorities(p);
    }
    // Last: every thread gets its registers back, then all are let go at once.
    for p in &procs {
        for (task, (_, core)) in std::iter::once(&p.leader).chain(p.threads.iter()).zip(&p.image.cores) {
            let ti = core.thread_info.as_ref().expect("checked on load");
            let template = ptrace::xstate(task.tid)?;
            let xsave = arch::xsave_buffer(&ti.fpregs, &template)
                .map_err(|e| Error::Unsupported(format!("thread {}: {e}", task.tid)))?;
            ptrace::set_xstate(task.tid, &xsave)?;
            ptrace::set_regs(task.tid, arch::user_regs(&ti.gpregs))?;
            let tc = core.thread_core.as_ref().expect("checked on load");
            ptrace::set_sigmask(task.tid, tc.blk_sigset.unwrap_or(0))?;
        }
    }
    pages_check.join().map_err(|_| Error::Invalid("the check of the pages images failed".into()))??;
    let mut tasks = Vec::new();
    for p in &procs {
        // A stopped job goes on stopped, by the signal that stopped it (the
        // shell tells "Stopped" from "Stopped (signal)" by it).
        // SIGSTOP if that signal would not stop it now (blocked, or handled).
        let core = &p.image.cores[0].1;
        let blocked = core.thread_core.as_ref().and_then(|t| t.blk_sigset).unwrap_or(0);
        let stops = |tc: &crate::images::proto::TaskCoreEntry, sig: Signal| {
            let n = sig as u64;
            // sigactions lists signals 1..=64 but SIGKILL and SIGSTOP.
            let index = (1..=64u64).filter(|&s| s != libc::SIGKILL as u64 && s != libc::SIGSTOP as u64).position(|s| s == n);
            let default = index.and_then(|i| tc.sigactions.get(i)).is_some_and(|sa| sa.sigaction == libc::SIG_DFL as u64);
            default && blocked & (1 << (n - 1)) == 0
        };
        let stop = core.tc.as_ref().filter(|tc| tc.task_state == TASK_STOPPED).map(|tc| {
            let sig = tc.stop_signo.and_then(|s| Signal::try_from(s as i32).ok());
            let sig = sig.filter(|&s| matches!(s, Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU) && stops(tc, s));
            sig.unwrap_or(Signal::SIGSTOP)
        });
        for task in p.threads.iter().chain(std::iter::once(&p.leader)) {
            tasks.push((task.tid, stop));
        }
    }
    stats.restore_time_us = start.elapsed().as_micros() as u64;
    Ok(Held { created, tasks, root: root_pid, stats, start })
}

/// Before anything is created: the pids (waiting a little for ones being
/// released), then every other check, all problems reported together.
fn preflight(img: &DumpImage, opts: &RestoreOptions) -> Result<()> {
    check::wait_for_pids(img, opts.pid_wait)?;
    let problems = check::problems(img, opts);
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!("this host cannot restore {}:\n  {}", img.dir.display(), problems.join("\n  "))))
}

/// The cgroup set of a process (crust's own set when none was recorded).
fn cg_set(p: &ProcessImage) -> u32 {
    let core = p.cores.first().map(|(_, c)| c);
    core.and_then(|c| c.thread_core.as_ref()?.cg_set)
        .or_else(|| core.and_then(|c| c.tc.as_ref()?.cg_set))
        .unwrap_or(crate::cgroups::SAME_AS_DUMPER)
}

/// The terminal of the job's session at dump time, if it had one.
fn job_terminal(img: &DumpImage) -> Option<&crate::images::proto::TtyInfoEntry> {
    let sid = img.processes[0].pstree.sid;
    img.tty_infos.values().find(|t| t.sid == sid).or_else(|| img.tty_infos.values().next())
}

/// Files that more than one process holds, and the ends of pipes and socket
/// pairs whose other end another process holds: made once, in the root.
fn shared_files(img: &DumpImage) -> Vec<u32> {
    // Both ends of one pipe, or of one socket pair, share a key.
    let pair_of = |f: &FileEntry| match (&f.pipe, &f.usk) {
        (Some(p), _) => Some((FdTypes::Pipe, p.pipe_id)),
        (_, Some(u)) => Some((FdTypes::Unixsk, u.ino.min(u.peer))),
        _ => None,
    };
    let mut users: HashMap<u32, Vec<i32>> = HashMap::new();
    let mut pair_users: HashMap<(FdTypes, u32), Vec<i32>> = HashMap::new();
    for p in &img.processes {
        for fd in &p.fds {
            users.entry(fd.id).or_default().push(p.pid());
            if let Some(key) = img.files.get(&fd.id).and_then(pair_of) {
                pair_users.entry(key).or_default().push(p.pid());
            }
        }
    }
    let spans = |v: &Vec<i32>| v.iter().any(|&p| p != v[0]);
    let mut ids: Vec<u32> = users
        .iter()
        .filter(|(id, v)| spans(v) || pair_of(&img.files[*id]).is_some_and(|key| spans(&pair_users[&key])))
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    ids
}

/// crust forks itself with `pid` and the child waits, stopped, for crust to
/// take it over.
fn spawn_stopped(pid: i32) -> Result<()> {
    let set_tid = [pid as libc::pid_t];
    let args = CloneArgs { exit_signal: libc::SIGCHLD as u64, set_tid: set_tid.as_ptr() as u64, set_tid_size: 1, ..Default::default() };
    // SAFETY: a fork; the child runs only async-signal-safe raw syscalls and then
    // stops, and never returns into crust's code once crust has taken it over.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    if r == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::raise(libc::SIGSTOP);
            libc::_exit(127);
        }
    }
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EEXIST) => Error::Invalid(format!("pid {pid} was taken while crust restored it")),
            _ => Error::Io { context: format!("creating process {pid}"), err: e },
        });
    }
    wait_new_task(pid)
}

/// The first stop of a task created under ptrace.
fn wait_new_task(tid: i32) -> Result<()> {
    match waitpid(Pid::from_raw(tid), Some(WaitPidFlag::__WALL)).ctx(|| format!("waiting for new task {tid}"))? {
        WaitStatus::Stopped(_, Signal::SIGSTOP) | WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP) => Ok(()),
        other => Err(Error::Invalid(format!("new task {tid} did not stop as expected: {other:?}"))),
    }
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// clone3 inside `task`, giving the new task id `id`.
fn clone_in(task: &Task, scratch: &mut Scratch, id: i32, flags: u64, exit_signal: u64) -> Result<i32> {
    let set_tid = scratch.reset().put(&id.to_le_bytes())?;
    let args = CloneArgs { flags, exit_signal, set_tid, set_tid_size: 1, ..Default::default() };
    // SAFETY: CloneArgs is plain old data.
    let bytes = unsafe {
        std::slice::from_raw_parts(&args as *const CloneArgs as *const u8, std::mem::size_of::<CloneArgs>())
    };
    let addr = scratch.put(bytes)?;
    let what = format!("clone3 of task {id}");
    task.call_clone(&what, libc::SYS_clone3, [addr, bytes.len() as u64, 0, 0, 0, 0]).map_err(|e| match e {
        Error::Invalid(m) if m.contains("EEXIST") => Error::Invalid(format!("pid {id} was taken while crust restored it")),
        other => other,
    })
}

/// A zombie is made by letting a new child die the way the original did; its
/// parent, stopped under crust, has not reaped it when the tree resumes.
fn make_zombie(task: Task, scratch: &mut Scratch, status: u32) -> Result<()> {
    let sig = status & 0x7f;
    if sig == 0 {
        return task.call_to_death(libc::SYS_exit_group, [((status >> 8) & 0xff) as u64, 0, 0, 0, 0, 0]);
    }
    // A fatal signal: default action, unblocked, no core file.
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit of our own new child.
    unsafe { libc::prlimit(task.pid, libc::RLIMIT_CORE, &no_core, std::ptr::null_mut()) };
    ptrace::set_sigmask(task.tid, !(1u64 << (sig - 1)))?;
    let default_action = scratch.reset().put_u64s(&[libc::SIG_DFL as u64, 0, 0, 0])?;
    task.call(&format!("rt_sigaction({sig})"), libc::SYS_rt_sigaction, [sig as u64, default_action, 0, 8, 0, 0])?;
    let pid = task.pid as u64;
    task.call_to_death(libc::SYS_tgkill, [pid, pid, sig as u64, 0, 0, 0])
}

/// Process groups: leaders make their groups first, then members join. The
/// group of a shell job (the root's) is crust's own, so that the restoring
/// shell's job control (Ctrl-Z, fg) reaches the job through crust.
fn set_process_groups(procs: &[Proc], shell_job: bool) -> Result<()> {
    let in_tree = |pid: u32| procs.iter().any(|p| p.image.pstree.pid == pid);
    let job_group = procs[0].image.pstree.pgid;
    let mut order: Vec<&Proc> = procs.iter().collect();
    order.sort_by_key(|p| p.image.pstree.pgid != p.image.pstree.pid);
    for p in order {
        let (pid, pgid) = (p.image.pstree.pid, p.image.pstree.pgid);
        if shell_job && pgid == job_group {
            continue;
        }
        if in_tree(pgid) && nix::unistd::getpgid(Some(Pid::from_raw(pid as i32))).map(|g| g.as_raw() as u32) != Ok(pgid) {
            p.leader.call("setpgid", libc::SYS_setpgid, [0, pgid as u64, 0, 0, 0, 0])?;
        }
    }
    Ok(())
}

/// Replace crust's copy with the image's memory. Returns the pages restored.
fn restore_memory(
    p: &mut Proc,
    crust_layout: &[mem::Vma],
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
            let path = file_path(img, file_id)?;
            let fd = open_in(task, scratch, path, flags | libc::O_CLOEXEC as u32)?;
            opened.insert((file_id, flags), fd);
            Ok(fd)
        })?;
    }
    let task: &Task = task;
    let pages = source.fill(task, &mut p.scratch, p.image)?;
    layout::protect_vmas(task, &p.image.mm)?;
    // The mm's own bounds, auxv and executable.
    let mm = &p.image.mm;
    let exe_fd = open_in(task, &mut p.scratch, file_path(img, mm.exe_file_id)?, (libc::O_RDONLY | libc::O_CLOEXEC) as u32)?;
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

fn file_path(img: &DumpImage, id: u32) -> Result<&str> {
    img.files
        .get(&id)
        .and_then(|f: &FileEntry| f.reg.as_ref())
        .map(|r| r.name.as_str())
        .ok_or_else(|| Error::Invalid(format!("files.img: file {id} is not a regular file")))
}

fn open_in(task: &Task, scratch: &mut Scratch, path: &str, flags: u32) -> Result<u64> {
    let addr = scratch.reset().put_str(path)?;
    task.call(&format!("opening {path}"), libc::SYS_openat, [libc::AT_FDCWD as u64, addr, flags as u64, 0, 0, 0])
}

/// Every shared memory object, made in the root before anything forks (so
/// that every process inherits the same one): a shared anonymous mapping,
/// filled inside the root (its pages are charged to the tree's cgroup, not
/// crust's), whose object the root keeps by an fd through
/// /proc/self/map_files. Returns the fd of each, by shmid.
fn make_shared_memory(r: &mut FdRestorer, img: &DumpImage) -> Result<HashMap<u64, u64>> {
    let mut fds = HashMap::new();
    let mut ids: Vec<&u64> = img.shmem.keys().collect();
    ids.sort_unstable();
    for &shmid in ids {
        let obj = &img.shmem[&shmid];
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
        let addr = r.task.call("mmap of shared memory", libc::SYS_mmap, [0, obj.size, prot, flags, u64::MAX, 0])?;
        let made = (|| -> Result<u64> {
            let pages = r.open_low(&obj.pages_path.to_string_lossy(), (libc::O_RDONLY | libc::O_CLOEXEC) as u32)?;
            let at_addr: Vec<_> =
                obj.pagemap.iter().map(|e| PagemapEntry { vaddr: addr + e.vaddr, ..*e }).collect();
            let filled = layout::fill_pages(r.task, &at_addr, pages);
            r.task.call("close", libc::SYS_close, [pages, 0, 0, 0, 0, 0])?;
            filled?;
            let path = format!("/proc/self/map_files/{addr:x}-{:x}", addr + obj.size);
            r.open_low(&path, (libc::O_RDWR | libc::O_CLOEXEC) as u32)
        })();
        r.task.call("munmap", libc::SYS_munmap, [addr, obj.size, 0, 0, 0, 0])?;
        // Inherited by the forks: not close-on-exec once moved up.
        let fd = r.to_high(made?)?;
        fds.insert(shmid, fd);
    }
    Ok(fds)
}

/// The fd table: every object made (or inherited from the root), then each
/// put at its number, then everything else closed; last, files that name
/// other fds (epolls) are completed, each once (`finished`) in the first
/// process that holds it.
fn restore_fds(
    image: &ProcessImage,
    img: &DumpImage,
    shared: &HashMap<u32, u64>,
    r: &mut FdRestorer,
    finished: &mut HashSet<u32>,
) -> Result<()> {
    let mut objects = shared.clone();
    for fd in &image.fds {
        if let std::collections::hash_map::Entry::Vacant(e) = objects.entry(fd.id) {
            let fd_obj = files::restore_file(&img.files[&fd.id], r)?;
            e.insert(fd_obj);
        }
    }
    for fd in &image.fds {
        let obj = objects[&fd.id];
        r.task.call("dup2", libc::SYS_dup2, [obj, fd.fd as u64, 0, 0, 0, 0])?;
        if fd.flags & libc::FD_CLOEXEC as u32 != 0 {
            r.task.call("fcntl(F_SETFD)", libc::SYS_fcntl, [fd.fd as u64, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64, 0, 0, 0])?;
        }
        if fd.r#type != img.files[&fd.id].r#type {
            return Err(Error::Invalid(format!(
                "fdinfo of process {}: fd {} has type {} but its file {} is {}",
                image.pid(),
                fd.fd,
                FdTypes::try_from(fd.r#type).map(|t| t.as_str_name()).unwrap_or("?"),
                fd.id,
                img.files[&fd.id].r#type
            )));
        }
    }
    // Every object was made above the image's fds: all above this process's go.
    let base = image.fds.iter().map(|f| f.fd as u64 + 1).max().unwrap_or(0);
    r.task.call("close_range", libc::SYS_close_range, [base, u32::MAX as u64, 0, 0, 0, 0])?;
    for fd in &image.fds {
        if finished.insert(fd.id) {
            files::finish_file(&img.files[&fd.id], fd.fd as u64, r)?;
        }
    }
    Ok(())
}

/// Per-process state: cwd, root, umask, personality, signal handlers, itimers.
fn restore_process_state(p: &mut Proc, img: &DumpImage) -> Result<()> {
    let task = &p.leader;
    let root = file_path(img, p.image.fs.root_id)?;
    if root != "/" {
        let a = p.scratch.reset().put_str(root)?;
        task.call(&format!("chroot to {root}"), libc::SYS_chroot, [a, 0, 0, 0, 0, 0])?;
    }
    let cwd = file_path(img, p.image.fs.cwd_id)?;
    let a = p.scratch.reset().put_str(cwd)?;
    task.call(&format!("chdir to {cwd}"), libc::SYS_chdir, [a, 0, 0, 0, 0, 0])?;
    if let Some(umask) = p.image.fs.umask {
        task.call("umask", libc::SYS_umask, [umask as u64, 0, 0, 0, 0, 0])?;
    }
    let tc = p.image.cores[0].1.tc.as_ref().expect("checked on load");
    task.call("personality", libc::SYS_personality, [tc.personality as u64, 0, 0, 0, 0, 0])?;
    let signals = (1..=64u64).filter(|&s| s != libc::SIGKILL as u64 && s != libc::SIGSTOP as u64);
    for (sig, sa) in signals.zip(&tc.sigactions) {
        let act = p.scratch.reset().put_u64s(&[sa.sigaction, sa.flags, sa.restorer, sa.mask])?;
        task.call(&format!("rt_sigaction({sig})"), libc::SYS_rt_sigaction, [sig, act, 0, 8, 0, 0])?;
    }
    // Resource limits, set by the task itself while it still has crust's
    // credentials. A hard limit above the current one cannot be restored here
    // (no CAP_SYS_RESOURCE): it stays at the current one.
    for (res, l) in tc.rlimits.iter().flat_map(|r| r.rlimits.iter()).enumerate() {
        let cur = p.scratch.reset().put_u64s(&[0, 0])?;
        task.call("prlimit64", libc::SYS_prlimit64, [0, res as u64, 0, cur, 0, 0])?;
        let mut now = [0u8; 16];
        p.scratch.read(cur, &mut now)?;
        let hard_now = u64::from_le_bytes(now[8..16].try_into().expect("8 bytes"));
        let max = l.max.min(hard_now);
        let new = p.scratch.put_u64s(&[l.cur.min(max), max])?;
        if let Err(e) = task.call("prlimit64", libc::SYS_prlimit64, [0, res as u64, new, 0, 0, 0]) {
            log::warn!("process {}: resource limit {res} not restored: {e}", p.image.pid());
        }
    }
    if let Some(t) = &tc.timers {
        for (which, it) in [(libc::ITIMER_REAL, &t.real), (libc::ITIMER_VIRTUAL, &t.virt), (libc::ITIMER_PROF, &t.prof)] {
            if it.vsec != 0 || it.vusec != 0 {
                let v = p.scratch.reset().put_u64s(&[it.isec, it.iusec, it.vsec, it.vusec])?;
                task.call("setitimer", libc::SYS_setitimer, [which as u64, v, 0, 0, 0, 0])?;
            }
        }
    }
    if let Some(q) = &tc.signals_s {
        for s in &q.signals {
            let sig = signo(s);
            let info = p.scratch.reset().put(&s.siginfo)?;
            task.call("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo, [p.image.pid() as u64, sig, info, 0, 0, 0])?;
        }
    }
    Ok(())
}

/// The signal number of a saved siginfo (its first field).
fn signo(s: &crate::images::proto::SiginfoEntry) -> u64 {
    s.siginfo.get(0..4).map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as u64)
}

/// Per-thread state, in each thread: tid address, robust list, sigaltstack,
/// rseq, name, parent-death signal, pending signals, credentials.
fn restore_threads_state(p: &mut Proc) -> Result<()> {
    let pid = p.image.pid() as u64;
    for (task, (_, core)) in std::iter::once(&p.leader).chain(p.threads.iter()).zip(&p.image.cores) {
        let ti = core.thread_info.as_ref().expect("checked on load");
        let tc = core.thread_core.as_ref().expect("checked on load");
        task.call("set_tid_address", libc::SYS_set_tid_address, [ti.clear_tid_addr, 0, 0, 0, 0, 0])?;
        if tc.futex_rla_len != 0 {
            task.call("set_robust_list", libc::SYS_set_robust_list, [tc.futex_rla, tc.futex_rla_len as u64, 0, 0, 0, 0])?;
        }
        if let Some(sas) = &tc.sas {
            // SS_ONSTACK is the kernel's report, not a setting.
            let flags = sas.ss_flags & !(libc::SS_ONSTACK as u32);
            let ss = p.scratch.reset().put_u64s(&[sas.ss_sp, flags as u64, sas.ss_size])?;
            task.call("sigaltstack", libc::SYS_sigaltstack, [ss, 0, 0, 0, 0, 0])?;
        }
        if let Some(rs) = &tc.rseq_entry {
            task.call("rseq", libc::SYS_rseq, [rs.rseq_abi_pointer, rs.rseq_abi_size as u64, 0, rs.signature as u64, 0, 0])?;
        }
        if let Some(comm) = &tc.comm {
            let name = p.scratch.reset().put_str(comm)?;
            task.call("prctl(PR_SET_NAME)", libc::SYS_prctl, [libc::PR_SET_NAME as u64, name, 0, 0, 0, 0])?;
        }
        // Credentials before the parent-death signal: changing them clears it.
        if let Some(c) = &tc.creds {
            restore_creds(task, &mut p.scratch, c)?;
        }
        task.call("prctl(PR_SET_PDEATHSIG)", libc::SYS_prctl, [libc::PR_SET_PDEATHSIG as u64, tc.pdeath_sig.unwrap_or(0) as u64, 0, 0, 0, 0])?;
        if let Some(q) = &tc.signals_p {
            for s in &q.signals {
                let sig = signo(s);
                let info = p.scratch.reset().put(&s.siginfo)?;
                task.call("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo, [pid, task.tid as u64, sig, info, 0, 0])?;
            }
        }
    }
    Ok(())
}

/// Credentials, as far as crust may set them: groups, gids, uids (per thread,
/// as the kernel keeps them). Capabilities beyond what the ids imply are not set.
fn restore_creds(task: &Task, scratch: &mut Scratch, c: &crate::images::proto::CredsEntry) -> Result<()> {
    let st = crate::proc::status(task.pid, task.tid)?;
    if st.groups != c.groups {
        let words: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let a = scratch.reset().put(&words)?;
        task.call("setgroups", libc::SYS_setgroups, [c.groups.len() as u64, a, 0, 0, 0, 0])?;
    }
    if (st.rgid, st.egid, st.sgid) != (c.gid, c.egid, c.sgid) {
        task.call("setresgid", libc::SYS_setresgid, [c.gid as u64, c.egid as u64, c.sgid as u64, 0, 0, 0])?;
    }
    if (st.ruid, st.euid, st.suid) != (c.uid, c.euid, c.suid) {
        task.call("setresuid", libc::SYS_setresuid, [c.uid as u64, c.euid as u64, c.suid as u64, 0, 0, 0])?;
    }
    Ok(())
}

/// Scheduling priority of each thread, set from outside.
fn set_priorities(p: &Proc) {
    for (task, (_, core)) in std::iter::once(&p.leader).chain(p.threads.iter()).zip(&p.image.cores) {
        if let Some(nice) = core.thread_core.as_ref().and_then(|t| t.sched_nice) {
            // SAFETY: setpriority of one thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, task.tid as libc::id_t, nice) };
        }
    }
}
