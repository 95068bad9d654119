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
mod inherit;
pub mod layout;
mod memory;
mod spawn;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::ptrace::{self as nix_ptrace, Options};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cgroups::{CgroupRoot, Mode, Placement};
use crate::error::{Context, Error, Result};
use crate::files::{self, FdRestorer, Inherited};
use crate::images::criu::{PAGE_SIZE, SAME_AS_DUMPER, TASK_STOPPED};
use crate::images::digest;
use crate::images::meta::DumpMeta;
use crate::images::load::{self, DumpImage, Pages, ProcessImage};
use crate::mem::{self, Vma};
use crate::progress::{Phase, Progress};
use crate::ptrace;
use crate::state::{self, signals, ThreadRestore};
use crate::task::{Scratch, Task, SCRATCH_LEN};
pub use inherit::{PageCounts, PageSink};
pub use memory::{fill_from_files, PageSource, PagesInDir};
use memory::Start;
use crate::notify::{Notify, Point};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub dir: PathBuf,
    /// The tree is a job of a shell: it joins crust's session instead of its own.
    pub shell_job: bool,
    /// A shell job restored in the foreground of crust's terminal, which
    /// crust then waits for as a shell waits for a job: it gets a process
    /// group of its own and the terminal's foreground, so that Ctrl-C and
    /// Ctrl-Z reach it and not crust. Without it a shell job joins crust's
    /// process group.
    pub job_control: bool,
    /// How long to wait for pids of the image that are still taken (a killed
    /// process's pid is released only once it has been reaped).
    pub pid_wait: Duration,
    /// What to do with the recorded cgroups.
    pub manage_cgroups: Mode,
    /// Put the recorded cgroups under these roots.
    pub cgroup_roots: Vec<CgroupRoot>,
    /// Hears the saved pages being put into the new tasks.
    pub progress: Progress,
    /// Give every process its own copy of all its pages, none kept shared
    /// with its parent: the restore as crust did it before keeping
    /// copy-on-write sharing, slower and bigger; for comparison.
    pub private_copies: bool,
    /// What to do with the established TCP connections of the images:
    /// restore them (`--tcp-established`) or make them closed sockets
    /// (`--tcp-close`); refused without either, as criu does.
    pub tcp: files::tcp::Mode,
    /// Hears criu's points of a restore (pre-restore to post-resume).
    pub notify: Notify,
    /// `--inherit-fd fd[N]:KEY`: crust's fd N stands for the file the dump
    /// found shared with processes outside the tree under KEY (`pipe:[INO]`).
    pub inherit_fds: BTreeMap<String, i32>,
    /// criu's rst_sibling: the root is a child of crust's parent, not of
    /// crust (runc waits on the tree it asked criu to restore).
    pub sibling: bool,
    /// Where the tree's namespaces find what is outside them (`--root`,
    /// external mounts).
    pub ns: crate::ns::NsOptions,
    /// The host ends of the network namespace's veths, `--empty-ns net`.
    pub net: crate::ns::net::NetOptions,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreStats {
    /// The root came back stopped (it was a stopped job), by this signal.
    pub stop_signal: Option<i32>,
    pub processes: usize,
    pub threads: usize,
    /// Pages written into the tasks.
    pub pages_restored: u64,
    /// Pages compared with the page a child inherited from its parent there.
    pub pages_compared: u64,
    /// Of those, the ones found equal: left shared with the parent.
    pub pages_skipped_cow: u64,
    /// Time spent making the tasks (clone3 of each process; its memory not counted).
    pub forking_time_us: u64,
    pub restore_time_us: u64,
}

impl RestoreStats {
    /// As CRIU's stats-restore holds it.
    pub fn entry(&self) -> crate::images::proto::StatsEntry {
        crate::images::proto::StatsEntry {
            dump: None,
            restore: Some(crate::images::proto::RestoreStatsEntry {
                pages_compared: self.pages_compared,
                pages_skipped_cow: self.pages_skipped_cow,
                forking_time: self.forking_time_us as u32,
                restore_time: self.restore_time_us as u32,
                pages_restored: Some(self.pages_restored),
            }),
        }
    }
}

/// A restored tree, running. Its root is a child of the calling process
/// (of its parent with [`RestoreOptions::sibling`]).
pub struct Restored {
    pub root: i32,
    pub stats: RestoreStats,
}

/// Everything created so far; killed (and reaped), and cgroups crust made
/// removed again, unless the restore succeeds.
#[derive(Default)]
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
        crate::tree::reap_all(self.threads.iter().chain(&self.processes).copied().collect());
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

impl Proc<'_> {
    /// Every thread, the leader first, beside its image.
    fn tasks(&self) -> impl Iterator<Item = (&Task, &load::ThreadImage)> {
        std::iter::once(&self.leader).chain(&self.threads).zip(&self.image.threads)
    }
}

/// A restored tree, complete but held stopped: nothing of it has run yet.
/// Dropping it kills the tree and undoes what the restore changed.
pub struct Held {
    created: Created,
    /// Every process: its pid, its other threads, and whether it goes on
    /// stopped (a stopped job) and by which signal.
    tasks: Vec<(i32, Vec<i32>, Option<Signal>)>,
    root: i32,
    stats: RestoreStats,
    start: Instant,
    /// A shell job's terminal.
    terminal: Option<JobTerminal>,
}

impl Held {
    pub fn root(&self) -> i32 {
        self.root
    }

    pub fn stats(&self) -> &RestoreStats {
        &self.stats
    }

    /// [`Held::release`], with pre-resume said first.
    pub fn release_telling(self, notify: &Notify) -> Result<Restored> {
        notify.at(Point::PreResume, Some(self.root))?;
        self.release()
    }

    /// Let every task go at once; a shell job with its terminal's
    /// foreground first, if it is to have it, and told afterwards if the
    /// terminal's window size is not the one it knew.
    pub fn release(mut self) -> Result<Restored> {
        let job_group = nix::unistd::getpgid(Some(Pid::from_raw(self.root))).ctx(|| "reading the job's process group")?;
        let foreground = self.terminal.as_ref().filter(|t| t.foreground);
        if let Some(t) = foreground {
            nix::unistd::tcsetpgrp(t.fd, job_group).ctx(|| "giving the job the terminal's foreground")?;
        }
        let released = self.tasks.iter().try_for_each(|(pid, threads, stop)| let_go(*pid, threads, *stop));
        if let (Err(_), Some(t)) = (&released, foreground) {
            let _ = nix::unistd::tcsetpgrp(t.fd, nix::unistd::getpgrp());
        }
        released?;
        if self.terminal.as_ref().is_some_and(|t| t.resized) {
            let _ = nix::sys::signal::killpg(job_group, Signal::SIGWINCH);
        }
        self.created.done = true;
        self.created.cgroups.keep();
        self.stats.stop_signal = self.tasks.iter().find(|(pid, ..)| *pid == self.root).and_then(|(.., sig)| *sig).map(|s| s as i32);
        self.stats.restore_time_us = self.start.elapsed().as_micros() as u64;
        Ok(Restored { root: self.root, stats: std::mem::take(&mut self.stats) })
    }
}

/// Lets the threads of a process go; a stopped job's leader first, with the
/// stop signal, which it takes and so stops the whole process: its other
/// threads, let go once it has, join the stop without running and with no
/// stop signal left pending in them (as one signal to the process leaves).
fn let_go(pid: i32, threads: &[i32], stop: Option<Signal>) -> Result<()> {
    nix_ptrace::detach(Pid::from_raw(pid), stop).ctx(|| format!("letting task {pid} go"))?;
    if stop.is_some() && !threads.is_empty() {
        wait_group_stop(pid)?;
    }
    for &tid in threads {
        nix_ptrace::detach(Pid::from_raw(tid), None).ctx(|| format!("letting task {tid} go"))?;
    }
    Ok(())
}

/// Waits (up to 5 s) for process `pid` to be in a group stop.
fn wait_group_stop(pid: i32) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if crate::proc::stat(pid, pid).is_ok_and(|s| s.state == 'T') {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Ptrace { tid: pid, what: "a restored stopped job did not stop within 5 s".into() });
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Read a dump: its images (checked and typed) and every kind of file's own.
pub fn load(dir: &Path, pages: Pages) -> Result<DumpImage> {
    let mut img = load::load(dir, pages)?;
    let meta = DumpMeta::read(dir);
    crate::ns::load_images(&mut img, crate::ns::OwnNamespaces(meta.own_namespaces))?;
    img.extras.insert(files::ExternalFiles(meta.external_files));
    img.extras.insert(crate::ns::join::ExternalNamespaces(meta.external_namespaces));
    files::load_images(&mut img)?;
    state::load_images(&mut img)?;
    Ok(img)
}

/// Restore the tree in `opts.dir` and let it run; then the network lock
/// the dump left holding its connections goes. A restore that fails leaves
/// that lock: the images can still be restored, and until then the peers
/// wait instead of being reset.
pub fn restore(opts: &RestoreOptions) -> Result<Restored> {
    restore_with(opts, &mut PagesInDir)
}

/// [`restore`], the saved pages put in by `pages` (a lazy restore's leaves
/// some for later, see [`crate::lazy`]).
pub fn restore_with(opts: &RestoreOptions, pages: &mut dyn PageSource) -> Result<Restored> {
    let img = load(&opts.dir, Pages::InDir)?;
    let lock = network_lock(&opts.dir);
    let restored = restore_held(opts, img, pages).and_then(|held| held.release_telling(&opts.notify));
    if let Some(name) = lock {
        match &restored {
            Ok(_) => {
                if let Err(e) = crate::netlock::remove(&name) {
                    log::warn!("the tree runs, but its connections are still held: {e}; remove the lock with `crust network-unlock -D {}`", opts.dir.display());
                }
            }
            Err(_) => log::warn!(
                "the network lock {name} of this dump still holds its TCP connections, for another restore; \
                 `crust network-unlock -D {}` removes it (their peers then see resets)",
                opts.dir.display()
            ),
        }
    }
    let restored = restored?;
    opts.notify.at(Point::NetworkUnlock, Some(restored.root))?;
    opts.notify.at(Point::PostResume, Some(restored.root))?;
    Ok(restored)
}

/// The network lock a dump in `dir` left in place, from crust's notes.
pub fn network_lock(dir: &Path) -> Option<String> {
    DumpMeta::read(dir).network_lock
}

/// Build the whole tree of `img`, its pages from `pages`, and hold it stopped.
pub fn restore_held(opts: &RestoreOptions, mut img: DumpImage, pages: &mut dyn PageSource) -> Result<Held> {
    opts.notify.at(Point::PreRestore, None)?;
    let start = Instant::now();
    img.extras.insert(files::tcp::RestoreMode(opts.tcp));
    img.extras.insert(files::InheritFds(opts.inherit_fds.clone()));
    img.extras.insert(opts.ns.clone());
    img.extras.insert(opts.net.clone());
    preflight(&img, opts)?;
    // Deleted files the tree holds are made again for it to open and map.
    let mut ghosts = files::ghost::materialize(&mut img)?;
    let img = &img;
    let pages_check = check_pages_meanwhile(img);
    raise_nofile_limit();
    // From here on, whatever fails is undone by `created`.
    let mut created = Created::default();
    let job_tty = job_terminal(img, opts, &mut created)?;
    let terminal = job_tty.as_ref().map(|t| t.path.as_str());
    // Cgroups are checked and made before any task exists.
    if let Some(entry) = &img.cgroups {
        created.cgroups = Placement::prepare(entry, opts.manage_cgroups, &opts.cgroup_roots)?;
    }
    let mut stats = RestoreStats { processes: img.processes.len(), ..Default::default() };
    let (mut root, crust_layout) = make_root(img, opts.sibling, &crate::ns::join::given(img, &opts.ns.join_ns, &opts.inherit_fds), &mut created)?;
    let mut ns_root = crate::ns::NsRoot { pid: root.leader.tid, task: &root.leader, scratch: &mut root.scratch, opts: &opts.ns, host_root: None };
    crate::ns::restore(img, &mut ns_root)?;
    root.leader.host_root = ns_root.host_root;
    ghosts.place_in(img, root.leader.tid)?;
    opts.notify.at(Point::SetupNamespaces, Some(root.leader.tid))?;
    opts.notify.at(Point::PostSetupNamespaces, Some(root.leader.tid))?;
    let (inherited, shmem_fds) = make_shared(&mut root, img, terminal)?;
    let live = img.processes.iter().filter(|p| p.zombie.is_none());
    let page_bytes = live.flat_map(|p| &p.pagemap).map(|e| e.nr_pages as u64 * PAGE_SIZE).sum();
    let shared_at_dump = shared_at_dump(img);
    let mut memory = Memory {
        img,
        shared_at_dump: &shared_at_dump,
        shmem_fds: &shmem_fds,
        inherited: &inherited,
        pages,
        meter: opts.progress.start(Phase::RestoringPages, page_bytes),
        counts: PageCounts::default(),
    };
    let mut procs = make_tree(root, &crust_layout, opts, &mut memory, &mut created, &mut stats)?;
    stats.pages_restored = memory.counts.restored;
    stats.pages_compared = memory.counts.compared;
    stats.pages_skipped_cow = memory.counts.skipped_cow;
    let mut finished = HashSet::new();
    for i in 0..procs.len() {
        let p = &procs[i];
        // An fd table shared with the parent is the parent's, restored with it.
        let parent = procs[..i].iter().find(|q| q.image.pid() == p.image.pstree.ppid as i32);
        let shares_table = parent.is_some_and(|q| clone_flags_sharing(p.image, q.image) & libc::CLONE_FILES as u64 != 0);
        let p = &mut procs[i];
        if !shares_table {
            let mut r = FdRestorer::new(&p.leader, &mut p.scratch, img, &inherited, terminal);
            files::restore_table(p.image, &mut r, &mut finished)?;
            files::tty::set_foreground(p.image, &mut r)?;
        }
        make_threads(p, img, &mut created)?;
        stats.threads += p.image.threads.len();
    }
    let stopped_first = stop_children_first(&mut procs, img)?;
    for p in procs.iter_mut().filter(|p| !stopped_first.contains(&p.leader.tid)) {
        finish(p, img)?;
    }
    ghosts.put_back_times()?;
    crate::ns::finish(img, procs[0].leader.tid)?;
    pages_check.join().map_err(|_| Error::Invalid("the check of the pages images failed".into()))??;
    let tasks = procs
        .iter()
        .filter(|p| !stopped_first.contains(&p.leader.tid))
        .map(|p| (p.leader.tid, p.threads.iter().map(|t| t.tid).collect(), stop_signal(p.image)))
        .collect();
    let root = procs[0].leader.tid;
    stats.restore_time_us = start.elapsed().as_micros() as u64;
    opts.notify.at(Point::PostRestore, Some(root))?;
    Ok(Held { created, tasks, root, stats, start, terminal: job_tty })
}

/// Before anything is created: the pids (waiting a little for ones being
/// released), then every other check, all problems reported together.
fn preflight(img: &DumpImage, opts: &RestoreOptions) -> Result<()> {
    check::wait_for_pids(img, opts.pid_wait)?;
    let problems = check::problems(img, opts);
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Host { dir: img.dir.clone(), problems })
}

/// The pages are checked on the other core while the tree is built; the
/// tree runs only if they are intact.
fn check_pages_meanwhile(img: &DumpImage) -> std::thread::JoinHandle<Result<()>> {
    let dir = img.dir.clone();
    let digests = img.pages_digests.clone();
    std::thread::spawn(move || digests.iter().try_for_each(|(name, d)| digest::verify_file(&dir, name, d)))
}

/// The new tasks keep their objects above every fd of the image: give them
/// (and crust, whose limits they inherit) all the room the hard limit allows.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The terminal a shell job is restored on.
struct JobTerminal {
    path: String,
    fd: std::os::fd::BorrowedFd<'static>,
    /// Its window size is not the one the job last knew.
    resized: bool,
    /// The job gets its foreground (`RestoreOptions::job_control`).
    foreground: bool,
}

/// A shell job's terminal is the one crust runs on: it gets the job's
/// settings (put back if the restore fails).
fn job_terminal(img: &DumpImage, opts: &RestoreOptions, created: &mut Created) -> Result<Option<JobTerminal>> {
    if !opts.shell_job {
        return Ok(None);
    }
    let Some((path, fd)) = files::tty::own_terminal() else { return Ok(None) };
    let mut resized = false;
    if let Some(info) = files::tty::job_terminal(img) {
        created.terminal = Some(files::tty::SavedTerminal::save(fd)?);
        resized = files::tty::apply_settings(fd, info)?;
    }
    Ok(Some(JobTerminal { path, fd, resized, foreground: opts.job_control }))
}

/// The root: a copy of crust with the root's pid, stopped at birth, under
/// ptrace, with every signal blocked (forks and threads inherit the mask;
/// each thread gets its own back at the end), without crust's rseq
/// registration, and with a scratch area where no image vma lies. Returns it
/// with crust's memory layout, which every process starts from.
fn make_root<'a>(img: &'a DumpImage, sibling: bool, join: &[crate::ns::join::JoinNs], created: &mut Created) -> Result<(Proc<'a>, Vec<Vma>)> {
    let image = &img.processes[0];
    // In a pid namespace of its own, the root's pid is 1 there and any here.
    // Its external namespaces are joined, not made: it is forked in them.
    let flags = crate::ns::recorded(img).clone_flags()?;
    let pid = crate::ns::join::joined(img, join, || spawn::spawn_stopped(image.pid(), flags, sibling))?;
    created.processes.push(pid);
    created.cgroups.place(pid, cg_set(image))?;
    // Forks and threads inherit the options: seccomp filters restored early
    // (see state::seccomp) cannot stop what crust injects afterwards.
    let options = Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_EXITKILL
        | Options::PTRACE_O_TRACESYSGOOD
        | ptrace::suspend_seccomp();
    nix_ptrace::setoptions(Pid::from_raw(pid), options).ctx(|| format!("setting ptrace options on {pid}"))?;
    ptrace::set_sigmask(pid, !0)?;
    let crust_layout = mem::read_layout(pid)?;
    for p in img.processes.iter().filter(|p| p.zombie.is_none()) {
        layout::check_vdso(&p.mm, &crust_layout, &format!("mm-{}.img", p.pid()))?;
    }
    let root = Task::new(pid, pid, mem::vdso_syscall_gadget(pid, &crust_layout)?)?;
    // A fork inherits crust's rseq registration, which points into memory that
    // is about to go away: drop it before anything else.
    let rseq = ptrace::rseq_config(pid)?;
    if rseq.rseq_abi_size != 0 {
        let args = [rseq.rseq_abi_pointer, rseq.rseq_abi_size as u64, 1, rseq.signature as u64, 0, 0];
        root.call("rseq unregister", libc::SYS_rseq, args)?;
    }
    let mut occupied: Vec<(u64, u64)> = crust_layout.iter().map(|v| (v.start, v.end)).collect();
    occupied.extend(img.processes.iter().flat_map(|p| p.mm.vmas.iter().map(|v| (v.start, v.end))));
    let scratch_addr = layout::free_gap(&occupied, SCRATCH_LEN, "crust's scratch area")?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    root.call("mmap of the scratch area", libc::SYS_mmap, [scratch_addr, SCRATCH_LEN, prot, flags, u64::MAX, 0])?;
    let scratch = Scratch::new(pid, scratch_addr)?;
    Ok((Proc { image, leader: root, threads: Vec::new(), scratch }, crust_layout))
}

/// In the root, before anything forks: crust's own fds go; files and memory
/// several processes share are made, above every fd of the image, for the
/// forks to inherit. Returns them, with the fd of each shared memory object.
fn make_shared(root: &mut Proc, img: &DumpImage, terminal: Option<&str>) -> Result<(Inherited, HashMap<u64, u64>)> {
    // All but crust's root, kept (above the image's fds) to read the images
    // through until the fd tables are made.
    match root.leader.host_root {
        Some(keep) => {
            root.leader.call("close_range", libc::SYS_close_range, [0, keep - 1, 0, 0, 0, 0])?;
            root.leader.call("close_range", libc::SYS_close_range, [keep + 1, u32::MAX as u64, 0, 0, 0, 0])?;
        }
        None => root.leader.call("close_range", libc::SYS_close_range, [0, u32::MAX as u64, 0, 0, 0, 0]).map(drop)?,
    }
    let base = img.processes.iter().flat_map(|p| p.fds.iter().map(|f| f.fd as u64 + 1)).max().unwrap_or(0).max(3);
    let mut r = FdRestorer::new(&root.leader, &mut root.scratch, img, &Inherited::above(base), terminal);
    files::make_shared(&mut r)?;
    let shmem_fds = crate::files::shmem::make(&mut r, img)?;
    Ok((r.into_inherited(), shmem_fds))
}

/// From crust's notes beside the images (none in CRIU's): by pid, the pages
/// a process shared physically with its parent when dumped, sorted and merged.
fn shared_at_dump(img: &DumpImage) -> BTreeMap<i32, Vec<(u64, u64)>> {
    DumpMeta::read(&img.dir).shared_with_parent.into_iter().map(|(pid, ranges)| (pid, crate::ranges::merge(ranges))).collect()
}

/// What restoring a process's memory needs, and the pages counted so far.
struct Memory<'m> {
    img: &'m DumpImage,
    /// By pid: the pages a process shared physically with its parent when dumped.
    shared_at_dump: &'m BTreeMap<i32, Vec<(u64, u64)>>,
    shmem_fds: &'m HashMap<u64, u64>,
    /// What the root made for everyone (memfds, by inode).
    inherited: &'m Inherited,
    pages: &'m mut dyn PageSource,
    meter: crate::progress::Meter<'m>,
    counts: PageCounts,
}

impl Memory<'_> {
    fn restore(&mut self, p: &mut Proc, start: Start) -> Result<()> {
        let meter = &mut self.meter;
        self.counts += memory::restore(p, start, self.img, self.shmem_fds, self.inherited, self.pages, &mut |n| meter.add(n))?;
        Ok(())
    }
}

/// Every live process, the root first, in the order of pstree.img (parents
/// before their children; a migration sends the pages in that order). Each
/// process's memory is restored before it forks its children, so that they
/// inherit its pages copy-on-write as the originals did (see [`inherit`]);
/// children get their sessions and process groups; zombies die at once.
fn make_tree<'a>(
    mut root: Proc<'a>,
    crust_layout: &[Vma],
    opts: &RestoreOptions,
    memory: &mut Memory<'a>,
    created: &mut Created,
    stats: &mut RestoreStats,
) -> Result<Vec<Proc<'a>>> {
    let img = memory.img;
    if root.image.pstree.sid == root.image.pstree.pid && !opts.shell_job {
        root.leader.call("setsid", libc::SYS_setsid, [0; 6])?;
        let mut r = FdRestorer::new(&root.leader, &mut root.scratch, img, memory.inherited, None);
        files::tty::take_terminal(root.image, &mut r)?;
    }
    let scratch_addr = root.scratch.addr;
    let mut procs = vec![root];
    memory.restore(&mut procs[0], Start::crust(crust_layout))?;
    let mut forking = Duration::ZERO;
    for p in &img.processes[1..] {
        let fork_start = Instant::now();
        let parent = procs
            .iter_mut()
            .find(|q| q.image.pid() == p.pstree.ppid as i32)
            .ok_or_else(|| Error::image(img.dir.join("pstree.img"), format!("process {}: its parent {} is not in the image", p.pid(), p.pstree.ppid)))?;
        let child = spawn::clone_in(&parent.leader, &mut parent.scratch, p.pid(), clone_flags_sharing(p, parent.image), libc::SIGCHLD as u64)?;
        created.processes.push(child);
        spawn::wait_new_task(child)?;
        created.cgroups.place(child, cg_set(p))?;
        let mut task = Task::new(child, child, parent.leader.gadget())?;
        task.host_root = parent.leader.host_root;
        let parent_image = parent.image;
        let mut scratch = Scratch::new(child, scratch_addr)?;
        if p.pstree.sid == p.pstree.pid {
            task.call("setsid", libc::SYS_setsid, [0; 6])?;
            files::tty::take_terminal(p, &mut FdRestorer::new(&task, &mut scratch, img, memory.inherited, None))?;
        }
        forking += fork_start.elapsed();
        let mut proc = Proc { image: p, leader: task, threads: Vec::new(), scratch };
        if p.zombie.is_none() {
            let shared = memory.shared_at_dump.get(&p.pid()).map(Vec::as_slice).unwrap_or_default();
            memory.restore(&mut proc, Start::forked(child, p, parent_image, opts.private_copies, shared)?)?;
        }
        procs.push(proc);
    }
    stats.forking_time_us = forking.as_micros() as u64;
    // Zombies die once in their sessions and groups (a group whose leader
    // is a zombie can still be joined).
    spawn::set_process_groups(&procs, opts.shell_job && !opts.job_control)?;
    let (zombies, live): (Vec<Proc>, Vec<Proc>) = procs.into_iter().partition(|p| p.image.zombie.is_some());
    for mut z in zombies {
        if let Some(status) = z.image.zombie {
            spawn::make_zombie(z.leader, &mut z.scratch, status)?;
        }
    }
    Ok(live)
}

/// The clone flags that make a child share what it shared with its parent
/// (its fd table, its fs state).
fn clone_flags_sharing(p: &ProcessImage, parent: &ProcessImage) -> u64 {
    let mut flags = 0;
    if p.ids.files_id == parent.ids.files_id {
        flags |= libc::CLONE_FILES as u64;
    }
    if p.ids.fs_id == parent.ids.fs_id {
        flags |= libc::CLONE_FS as u64;
    }
    flags
}

/// The process's own state in its leader, then its other threads (which
/// inherit it), then each thread's own state.
fn make_threads(p: &mut Proc, img: &DumpImage, created: &mut Created) -> Result<()> {
    let mut leader = ThreadRestore { task: &p.leader, scratch: &mut p.scratch, image: img, process: p.image };
    state::restore_process(&mut leader)?;
    const THREAD_FLAGS: u64 = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    for thread in &p.image.threads[1..] {
        let tid = spawn::clone_in(&p.leader, &mut p.scratch, thread.tid, THREAD_FLAGS, 0)?;
        created.threads.push(tid);
        spawn::wait_new_task(tid)?;
        p.threads.push(Task::new(p.leader.pid, tid, p.leader.gadget())?);
    }
    let tasks = std::iter::once(&p.leader).chain(&p.threads).zip(&p.image.threads);
    for (task, thread) in tasks {
        let mut t = ThreadRestore { task, scratch: &mut p.scratch, image: img, process: p.image };
        state::restore_thread(&mut t, thread)?;
    }
    Ok(())
}

/// Last for each process: the file locks are taken again (nothing closes
/// an fd after this, which would drop a POSIX lock), crust's scratch area
/// goes, every thread gets its registers back.
fn finish(p: &mut Proc, img: &DumpImage) -> Result<()> {
    files::locks::restore(img, p.image, &p.leader, &mut p.scratch)?;
    p.leader.call("munmap of the scratch area", libc::SYS_munmap, [p.scratch.addr, p.scratch.len, 0, 0, 0, 0])?;
    p.tasks().try_for_each(|(task, thread)| state::restore_last(task, thread))
}

/// Stopped processes whose parent is in the tree are finished and let go
/// first, deepest first, so that each stops while its parent is still held:
/// the parent then hears of the stop as it had when dumped (see
/// [`state::child_stops`]). Returns their pids (crust's view).
fn stop_children_first(procs: &mut [Proc], img: &DumpImage) -> Result<HashSet<i32>> {
    let collected = DumpMeta::read(&img.dir).stops_collected;
    let mut done = HashSet::new();
    for i in (0..procs.len()).rev() {
        let Some(stop) = stop_signal(procs[i].image) else { continue };
        let ppid = procs[i].image.pstree.ppid as i32;
        let Some(j) = procs.iter().position(|q| q.image.pid() == ppid) else { continue };
        finish(&mut procs[i], img)?;
        let (pid, threads): (i32, Vec<i32>) = (procs[i].leader.tid, procs[i].threads.iter().map(|t| t.tid).collect());
        let_go(pid, &threads, Some(stop))?;
        done.insert(pid);
        // The parent is asked by the child's id inside the tree, the images'.
        let child = procs[i].image.pid();
        let parent = &mut procs[j];
        state::child_stops::settle(&parent.leader, &mut parent.scratch, parent.image, child, collected.contains(&child))?;
    }
    Ok(done)
}

/// A stopped job goes on stopped, by the signal that stopped it (the shell
/// tells "Stopped" from "Stopped (signal)" by it); by SIGSTOP if that signal
/// would not stop it now (blocked, or handled).
fn stop_signal(p: &ProcessImage) -> Option<Signal> {
    let tc = &p.task;
    if tc.task_state != TASK_STOPPED {
        return None;
    }
    let blocked = p.threads.first().and_then(|t| t.core.blk_sigset).unwrap_or(0);
    let sig = tc.stop_signo.and_then(|s| Signal::try_from(i32::try_from(s).ok()?).ok());
    let sig = sig.filter(|&s| matches!(s, Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU) && signals::would_stop(tc, blocked, s));
    Some(sig.unwrap_or(Signal::SIGSTOP))
}

/// The cgroup set of a process (crust's own set when none was recorded).
fn cg_set(p: &ProcessImage) -> u32 {
    p.threads.first().and_then(|t| t.core.cg_set).or(p.task.cg_set).unwrap_or(SAME_AS_DUMPER)
}
