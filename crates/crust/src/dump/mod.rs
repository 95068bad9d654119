//! `crust dump`: freeze a tree, write its state as CRIU images, then kill it or
//! let it run on.

mod memory;
mod predump;
mod refuse;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use procfs::process::Stat;

use crate::cgroups::{CgroupRecorder, CgroupRoot};
use crate::error::{Context, Error, Result};
use crate::files::tcp::{self, Connections};
use crate::files::{FileTable, OpenFd};
use crate::images::criu::{IMG_VERSION, SAME_AS_DUMPER, TASK_ALIVE, TASK_STOPPED, TASK_ZOMBIE};
use crate::images::meta::{DumpMeta, FileStamp, META};
use crate::images::proto::{
    core_entry::March, CoreEntry, DumpStatsEntry, InventoryEntry, Lsmtype, PstreeEntry, StatsEntry, TaskCoreEntry,
    TaskKobjIdsEntry, ThreadCoreEntry,
};
use crate::images::{FileSink, ImageDir, Kind};
use crate::mem::{self, Vma};
use crate::proc;
use crate::progress::{Phase, Progress};
use crate::remote::RemoteThread;
use crate::files::shmem::SharedMemory;
use crate::state::{self, ThreadDump};
use crate::tree::{FrozenProcess, FrozenTree};
use crate::notify::{Notify, Point};
use memory::PendingPages;
pub use predump::pre_dump;

#[derive(Clone, Debug, Default)]
pub struct DumpOptions {
    pub pid: i32,
    pub dir: PathBuf,
    pub leave_running: bool,
    pub shell_job: bool,
    /// `--cgroup-root`: record cgroup paths relative to these roots.
    pub cgroup_roots: Vec<CgroupRoot>,
    /// `--freeze-cgroup`: freeze the tree through this cgroup's freezer first.
    pub freeze_cgroup: Option<PathBuf>,
    /// `--ghost-limit`: the largest deleted file carried in the images.
    pub ghost_limit: Option<u64>,
    /// `--file-locks`: save the tree's file locks (flock, POSIX, OFD) instead
    /// of refusing them.
    pub file_locks: bool,
    /// `--ext-unix-sk`: a datagram unix socket connected to a named socket
    /// outside the tree is saved, to be connected to that name at restore.
    pub ext_unix_sk: bool,
    /// `--external pipe:[INO]`: a pipe the tree shares with processes
    /// outside it, saved as external (the restore must be given it).
    pub external: Vec<String>,
    /// Every pipe shared with processes outside the tree is external (what
    /// a container engine's RPC means: it gives the container's stdio back).
    pub external_pipes: bool,
    /// What to do with established TCP connections (`--tcp-established`,
    /// `--tcp-close`; refused without either).
    pub tcp: crate::files::tcp::Mode,
    /// `--empty-ns net`: the tree's own network namespace is left out (its
    /// caller configures it): recorded as the tree's own, with no images.
    pub empty_net: bool,
    /// `--skip-in-flight`: leave out connections not accepted yet.
    pub skip_in_flight: bool,
    /// `--prev-images-dir`: the images of the dump or pre-dump before this
    /// one (relative to `dir`, as criu takes it). Pages whose bytes are
    /// those the chain holds are not written again: their pagemap runs say
    /// they are in the parent image, and a `parent` link points to it.
    pub prev_images_dir: Option<PathBuf>,
    /// `--track-mem`: a later dump may take this one as its parent. Every
    /// dump may be one (pages are compared with the parent's, not tracked),
    /// so this only says so.
    pub track_mem: bool,
    /// Hears the pages being written (not those a streamed dump leaves out).
    pub progress: Progress,
    /// A live migration's dirty tracking and what the destination holds:
    /// pages the tracking vouches for are left to the destination's copy.
    pub handoff: crate::track::Handoff,
    /// Hears criu's points of a dump (pre-dump, network-lock, post-dump).
    pub notify: Notify,
    /// What the user says about the tree's namespaces (external mounts).
    pub ns: crate::ns::NsOptions,
}

/// What a dump did, for the user and for stats-dump.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DumpStats {
    pub processes: usize,
    pub threads: usize,
    pub freezing_time_us: u64,
    pub frozen_time_us: u64,
    pub memdump_time_us: u64,
    pub memwrite_time_us: u64,
    pub pages_scanned: u64,
    pub pages_written: u64,
    /// Pages left out because the parent images hold them unchanged.
    #[serde(default)]
    pub pages_skipped_parent: u64,
    /// Of those, pages dirty tracking vouched for (not read).
    #[serde(default)]
    pub pages_tracked_clean: u64,
    /// Pages read to be compared with the parent images (not tracked).
    #[serde(default)]
    pub pages_compared: u64,
    pub bytes_written: u64,
    /// One line on what cgroup.img holds and why.
    pub cgroups: String,
}

impl DumpStats {
    /// As CRIU's stats-dump holds it.
    pub fn entry(&self) -> StatsEntry {
        StatsEntry {
            dump: Some(DumpStatsEntry {
                freezing_time: self.freezing_time_us as u32,
                frozen_time: self.frozen_time_us as u32,
                memdump_time: self.memdump_time_us as u32,
                memwrite_time: self.memwrite_time_us as u32,
                pages_scanned: self.pages_scanned,
                pages_skipped_parent: self.pages_skipped_parent,
                pages_written: self.pages_written,
                pages_lazy: 0,
                ..Default::default()
            }),
            restore: None,
        }
    }
}


fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// A tree whose images are written, still frozen: the caller decides whether
/// it dies (its state lives on elsewhere) or resumes (the move failed).
pub struct Dumped {
    /// The tree's TCP connections, and the lock holding them (dropped
    /// before the tree, which then runs on).
    connections: Connections,
    tree: FrozenTree,
    frozen_at: Instant,
    /// Pages not written yet (a streamed dump sends them last).
    pages: Vec<PendingPages>,
    pub stats: DumpStats,
}

impl Dumped {
    /// Bytes of pages still to send.
    pub fn pending_bytes(&self) -> u64 {
        self.pages.iter().map(PendingPages::bytes).sum()
    }

    /// Send the pages the dump left out, one pages-N.img after the other in
    /// the order of pstree.img; `progress` hears them as they go.
    pub fn send_pages(&mut self, sink: &mut dyn FileSink, progress: &Progress) -> Result<u64> {
        let mut sent = 0;
        let mut meter = progress.start(Phase::SendingPages, self.pending_bytes());
        for pending in std::mem::take(&mut self.pages) {
            sink.begin(&pending.name())?;
            pending.copy(&mut self.stats, &mut |chunk| {
                sink.data(chunk)?;
                sent += chunk.len() as u64;
                meter.add(chunk.len() as u64);
                Ok(())
            })?;
            sink.end()?;
        }
        self.stats.bytes_written += sent;
        Ok(sent)
    }

    /// The tree dies; its connections close silently, and their lock stays
    /// for the restore.
    pub fn kill(mut self) -> DumpStats {
        let tree = self.tree;
        let connections = std::mem::take(&mut self.connections);
        connections.kill_silently(|| tree.kill());
        self.stats.frozen_time_us = us(self.frozen_at.elapsed());
        self.stats
    }

    /// The tree dies, its connections silent, and their lock goes: they
    /// live on in a copy that already runs elsewhere (a migration).
    pub fn kill_unlocked(mut self) -> DumpStats {
        let tree = self.tree;
        let connections = std::mem::take(&mut self.connections);
        connections.kill_and_unlock(|| tree.kill());
        self.stats.frozen_time_us = us(self.frozen_at.elapsed());
        self.stats
    }

    /// The tree goes on: its connections' lock goes first.
    pub fn resume(mut self) -> DumpStats {
        drop(std::mem::take(&mut self.connections));
        drop(self.tree);
        self.stats.frozen_time_us = us(self.frozen_at.elapsed());
        self.stats
    }
}

pub fn dump(opts: &DumpOptions) -> Result<DumpStats> {
    let (tree, dir, stats, frozen_at, pages, connections) = write_images(opts, None)?;
    let d = Dumped { tree, frozen_at, pages, connections, stats };
    if opts.leave_running && !opts.notify.is_heard() {
        // Everything is read: the tree need not wait for the disk.
        let mut stats = d.resume();
        dir.commit_unless(crate::cancel::check)?;
        stats.frozen_time_us = us(frozen_at.elapsed());
        return Ok(stats);
    }
    // The tree dies only once its images are safely in place, and a dump
    // stopped while they were synced lets it run on. post-dump comes, as
    // criu's, with the images in place and the tree still frozen.
    dir.commit_unless(crate::cancel::check)?;
    opts.notify.at(Point::PostDump, Some(opts.pid))?;
    Ok(if opts.leave_running { d.resume() } else { d.kill() })
}

/// Dump and keep the tree frozen, with its images in place: in `opts.dir`,
/// or, given a sink, streamed to it as they are written (nothing on disk).
/// A streamed dump leaves the pages out, for [`Dumped::send_pages`]: the
/// receiver can check the rest, and build the tree, before they come.
pub fn dump_frozen(opts: &DumpOptions, sink: Option<Box<dyn FileSink>>) -> Result<Dumped> {
    let streamed = sink.is_some();
    let (tree, dir, mut stats, frozen_at, pages, connections) = write_images(opts, sink)?;
    dir.commit_unless(crate::cancel::check)?;
    // A streamed dump's images are whole only once its pages are sent: its
    // caller says post-dump then.
    if !streamed {
        opts.notify.at(Point::PostDump, Some(opts.pid))?;
    }
    stats.frozen_time_us = us(frozen_at.elapsed());
    Ok(Dumped { tree, frozen_at, pages, connections, stats })
}

type Written = (FrozenTree, ImageDir, DumpStats, Instant, Vec<PendingPages>, Connections);

/// Freeze the tree and write all its images (not yet made visible); a
/// streamed dump returns its pages unwritten.
fn write_images(opts: &DumpOptions, sink: Option<Box<dyn FileSink>>) -> Result<Written> {
    opts.notify.at(Point::PreDump, Some(opts.pid))?;
    let start = Instant::now();
    let tree = match &opts.freeze_cgroup {
        Some(cg) => FrozenTree::seize_through_freezer(opts.pid, cg)?,
        None => FrozenTree::seize(opts.pid)?,
    };
    let frozen_at = Instant::now();
    check_session(&tree, opts)?;
    let mut own_ns = crate::ns::own_namespaces(&tree)?;
    let ext_ns = crate::ns::join::split_external(&tree, &mut own_ns, &opts.ns.external_ns)?;
    check_isolation(&tree)?;
    let streamed = sink.is_some();
    let dir = match sink {
        Some(sink) => ImageDir::stream(sink),
        None => ImageDir::create(&opts.dir)?,
    };
    let mut d = TreeDump::new(dir, opts, &tree, frozen_at - start)?;
    if own_ns.0.contains("pid") {
        d.files.pids = crate::tree::NsPids::read(&tree)?;
    }
    d.own_ns = own_ns;
    d.ext_ns = ext_ns;
    // The tracking ends here, before anything is read: it says what was
    // written, and its registration is gone from the vmas the dump reads.
    d.tracked = end_tracking(opts, d.parent.as_deref());
    if let Some(limit) = opts.ghost_limit {
        d.files.ghosts.limit = limit;
    }
    d.files.tree = tree.processes.iter().map(|p| p.pid).collect();
    d.files.view = crate::ns::dump_view(&d.own_ns, opts.pid);
    d.files.locks.file_locks = opts.file_locks;
    d.files.ext_unix_sk = opts.ext_unix_sk;
    d.files.external = opts.external.iter().cloned().collect();
    d.files.external_pipes = opts.external_pipes;
    d.files.locks.migrating = streamed;
    // From here until the tree dies or runs on, its connections are held.
    let (refusal, note) = match streamed {
        true => (tcp::MIGRATE_REFUSAL, "crust: network lock of a migration".to_string()),
        false => (tcp::DUMP_REFUSAL, format!("crust: network lock of the dump in {}", opts.dir.display())),
    };
    d.files.tcp = Connections::prepare(&d.files.tree, opts.tcp, refusal, &note)?;
    d.files.tcp.skip_in_flight = opts.skip_in_flight;
    opts.notify.at(Point::NetworkLock, Some(opts.pid))?;
    let mut root_ids = None;
    for (n, p) in tree.processes.iter().enumerate() {
        match p.zombie {
            Some(status) => d.zombie(p, status)?,
            None => {
                let ids = d.process(p, n as u32 + 1)?;
                root_ids.get_or_insert(ids);
            }
        }
    }
    d.shared_with_parent = d.shared_with_parents(&tree);
    d.mark_shared_pages(&tree);
    if !streamed {
        d.write_pages(&opts.progress)?;
    }
    d.pstree(&tree, opts.pid)?;
    d.shared(&tree)?;
    if let Some(ids) = &root_ids {
        let mut saved = d.own_ns.clone();
        if opts.empty_net {
            saved.0.remove("net");
        }
        let ns_opts = crate::ns::NsOptions { rebound_socket_files: crate::files::unix::rebound_files(&d.files), ..opts.ns.clone() };
        d.stats.bytes_written += crate::ns::dump(&saved, opts.pid, ids, &mut d.dir, &ns_opts)?;
    }
    d.inventory(root_ids)?;
    crate::cancel::check()?;
    d.stats.frozen_time_us = us(frozen_at.elapsed());
    // A streamed dump's numbers are whole only once its pages are sent: the
    // migration keeps them itself.
    if !streamed {
        let mut w = d.dir.writer("stats-dump", Kind::Stats)?;
        w.entry(&d.stats.entry())?;
        d.stats.bytes_written += w.finish()?;
    }
    let connections = std::mem::take(&mut d.files.tcp);
    Ok((tree, d.dir, d.stats, frozen_at, d.deferred, connections))
}

/// What the tracking of a live migration (handed over) or of the pre-dump
/// this dump follows (taken from its keeper) says at the freeze; the
/// tracking is over once this returns.
fn end_tracking(opts: &DumpOptions, parent: Option<&std::path::Path>) -> BTreeMap<i32, crate::track::Tracked> {
    if let Some(handed) = opts.handoff.take() {
        let mut tracked = crate::track::final_scan(handed.tracked);
        // Only what the destination holds can be left to it.
        for (pid, t) in &mut tracked {
            let held = handed.held.get(pid).map(Vec::as_slice).unwrap_or_default();
            t.clean = crate::ranges::intersect(&t.clean, held);
        }
        return tracked;
    }
    match parent {
        Some(dir) => crate::track::final_scan(crate::track::take_from_keeper(dir)),
        None => BTreeMap::new(),
    }
}

/// By parent: its live children that are stopped.
fn stopped_children(tree: &FrozenTree) -> BTreeMap<i32, Vec<i32>> {
    let mut out: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in tree.processes.iter().filter(|p| p.stopped.is_some() && p.zombie.is_none()) {
        out.entry(p.ppid).or_default().push(p.pid);
    }
    out
}

/// A dump being written: the images, and what is gathered across processes.
struct TreeDump {
    /// The images of the dump before it in a chain, if any (see
    /// [`DumpOptions::prev_images_dir`]).
    parent: Option<PathBuf>,
    dir: ImageDir,
    files: FileTable,
    seccomp: state::SeccompTable,
    /// Shared anonymous memory: like files, shared between processes and
    /// written once, after all of them.
    shmem: SharedMemory,
    cgroups: CgroupRecorder,
    /// Namespaces met, by (kind, inode): their ids are positions here, from 1.
    namespaces: Vec<(&'static str, u64)>,
    stats: DumpStats,
    /// Pages not written yet: all of them are known before any is written
    /// (and a streamed dump sends them last).
    deferred: Vec<PendingPages>,
    /// By child: the pages it shared physically with its parent (see
    /// [`memory::shared_with_parent`]), for crust's notes.
    shared_with_parent: BTreeMap<i32, Vec<(u64, u64)>>,
    /// The live processes dumped so far, with their ids.
    dumped: Vec<(i32, TaskKobjIdsEntry)>,
    /// By parent: its stopped children, and of those, the ones whose stop
    /// it had already collected with wait (see [`state::child_stops`]).
    stopped_children: BTreeMap<i32, Vec<i32>>,
    stops_collected: Vec<i32>,
    /// The tree's own namespaces, saved with it.
    own_ns: crate::ns::OwnNamespaces,
    /// The tree's namespaces marked external: not saved, only named.
    ext_ns: crate::ns::join::ExternalNamespaces,
    /// By process: what dirty tracking says (see [`end_tracking`]).
    tracked: BTreeMap<i32, crate::track::Tracked>,
}

impl TreeDump {
    fn new(mut dir: ImageDir, opts: &DumpOptions, tree: &FrozenTree, freezing: Duration) -> Result<TreeDump> {
        let parent = match &opts.prev_images_dir {
            Some(rel) => {
                let parent = opts.dir.join(rel);
                if !parent.join("inventory.img").exists() {
                    return Err(Error::Invalid(format!("--prev-images-dir {}: no dump or pre-dump is in {}", rel.display(), parent.display())));
                }
                // As criu links it: `parent`, relative to the images directory.
                dir.symlink("parent", rel)?;
                Some(parent)
            }
            None => None,
        };
        Ok(TreeDump {
            parent,
            dir,
            files: FileTable::default(),
            seccomp: state::SeccompTable::default(),
            shmem: SharedMemory::default(),
            cgroups: CgroupRecorder::new(opts.cgroup_roots.clone())?,
            namespaces: Vec::new(),
            stats: DumpStats {
                processes: tree.processes.len(),
                threads: tree.thread_count(),
                freezing_time_us: us(freezing),
                ..Default::default()
            },
            deferred: Vec::new(),
            shared_with_parent: BTreeMap::new(),
            dumped: Vec::new(),
            stopped_children: stopped_children(tree),
            stops_collected: Vec::new(),
            own_ns: Default::default(),
            ext_ns: Default::default(),
            tracked: BTreeMap::new(),
        })
    }

    /// One live process: each thread's core, its memory, its fd table, its ids.
    fn process(&mut self, p: &FrozenProcess, index: u32) -> Result<TaskKobjIdsEntry> {
        let vmas = mem::read_vmas(p.pid)?;
        crate::ns::ipc::check_attached(p.pid, self.own_ns.0.contains("ipc"), &vmas)?;
        let mut ids = self.kobj_ids(p.pid, index);
        self.shared_with_others(p, &mut ids)?;
        let cg_set = self.cgroups.set_of(p.pid)?;
        let mut brk = 0;
        for &tid in &p.threads {
            crate::cancel::check()?;
            let leader_brk = self.thread(p, tid, &vmas, &ids, cg_set)?;
            brk = leader_brk.unwrap_or(brk);
        }
        self.memory(p.pid, index, &vmas, brk)?;
        // An fd table shared with the parent is the parent's, dumped with it.
        if ids.files_id == index {
            self.fds(p.pid, index)?;
        }
        let mut w = self.dir.writer(&format!("ids-{}.img", self.files.pids.of(p.pid)), Kind::Ids)?;
        w.entry(&ids)?;
        self.stats.bytes_written += w.finish()?;
        self.dumped.push((p.pid, ids));
        Ok(ids)
    }

    /// What a process shares with one dumped before it without being its
    /// thread (kcmp): an fd table or fs state shared with its parent
    /// (clone with CLONE_FILES, CLONE_FS) takes the parent's id, and is
    /// made shared again by the restore; anything else shared is refused.
    fn shared_with_others(&self, p: &FrozenProcess, ids: &mut TaskKobjIdsEntry) -> Result<()> {
        const KCMP_VM: i32 = 1;
        const KCMP_FILES: i32 = 2;
        const KCMP_FS: i32 = 3;
        const KCMP_SIGHAND: i32 = 4;
        for (other, other_ids) in &self.dumped {
            let same = |kind| crate::files::kcmp(p.pid, *other, kind, 0, 0);
            let refuse = |what: &str| {
                Error::unsupported(format!("process {}", p.pid), format!("it shares its {what} with process {other} without being its thread: not supported"))
            };
            if same(KCMP_VM) {
                return Err(refuse("memory (CLONE_VM, as a vfork child before it execs)"));
            }
            if same(KCMP_SIGHAND) {
                return Err(refuse("signal handlers (CLONE_SIGHAND)"));
            }
            for (kind, what, id, parents) in
                [(KCMP_FILES, "fd table (CLONE_FILES)", &mut ids.files_id, other_ids.files_id), (KCMP_FS, "cwd, root and umask (CLONE_FS)", &mut ids.fs_id, other_ids.fs_id)]
            {
                if same(kind) {
                    if *other != p.ppid {
                        return Err(refuse(&format!("{what}, and it is not its parent")));
                    }
                    *id = parents;
                }
            }
        }
        Ok(())
    }

    /// One thread's core image: every component of [`state`], read with
    /// ptrace, from /proc and by syscalls run inside the thread. Returns the
    /// brk of a leader (mm-PID.img holds it).
    fn thread(&mut self, p: &FrozenProcess, tid: i32, vmas: &[Vma], ids: &TaskKobjIdsEntry, cg_set: u32) -> Result<Option<u64>> {
        let pid = p.pid;
        let gadget = mem::vdso_syscall_gadget(pid, vmas)?;
        let writable = |a: u64, b: u64| vmas.iter().any(|v| v.start <= a && b <= v.end && v.prot & libc::PROT_WRITE as u32 != 0);
        let rt = RemoteThread::start(tid, gadget, writable)?;
        let status = proc::status(pid, tid)?;
        let stat = proc::stat(pid, tid)?;
        let mut core = core_of(p, tid, &stat, ids, cg_set);
        let mut t = ThreadDump {
            pid,
            tid,
            rt: &rt,
            status: &status,
            stat: &stat,
            files: &mut self.files,
            seccomp: &mut self.seccomp,
            dir: &mut self.dir,
            bytes_written: 0,
        };
        state::dump_thread(&mut t, &mut core)?;
        self.stats.bytes_written += t.bytes_written;
        let brk = if tid == pid { Some(rt.call("brk", libc::SYS_brk, [0; 6])?) } else { None };
        if let Some(children) = self.stopped_children.get(&pid).filter(|_| tid == pid) {
            // Asked inside the parent: by the children's ids there.
            let inside: Vec<i32> = children.iter().map(|&c| self.files.pids.of(c)).collect();
            let waiting = state::child_stops::uncollected(&rt, &inside)?;
            self.stops_collected.extend(inside.iter().filter(|c| !waiting.contains(c)));
        }
        rt.finish()?;
        let mut w = self.dir.writer(&format!("core-{}.img", self.files.pids.of(tid)), Kind::Core)?;
        w.entry(&core)?;
        self.stats.bytes_written += w.finish()?;
        Ok(brk)
    }

    /// The fd table: fdinfo-N.img, and each open file once in the file table.
    fn fds(&mut self, pid: i32, index: u32) -> Result<()> {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ctx(|| format!("listing /proc/{pid}/fd"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        let mut w = self.dir.writer(&format!("fdinfo-{index}.img"), Kind::Fdinfo)?;
        for fd in fds {
            let open = OpenFd::read(pid, fd)?;
            let locks = self.files.locks.read(&open)?;
            let entry = self.files.dump_fd(&open)?;
            let image_pid = self.files.pids.of(pid);
            self.files.locks.save(&open, entry.id, locks, image_pid);
            w.entry(&entry)?;
        }
        self.stats.bytes_written += w.finish()?;
        Ok(())
    }

    /// A zombie is its pstree entry and a core with its exit status, as in CRIU.
    fn zombie(&mut self, p: &FrozenProcess, status: u32) -> Result<()> {
        let comm = proc::read_string(&format!("/proc/{}/comm", p.pid)).unwrap_or_default();
        let core = CoreEntry {
            mtype: March::X8664 as i32,
            tc: Some(TaskCoreEntry {
                task_state: TASK_ZOMBIE,
                exit_code: status,
                comm: comm.trim_end().to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut w = self.dir.writer(&format!("core-{}.img", self.files.pids.of(p.pid)), Kind::Core)?;
        w.entry(&core)?;
        self.stats.bytes_written += w.finish()?;
        Ok(())
    }

    fn pstree(&mut self, tree: &FrozenTree, root: i32) -> Result<()> {
        let mut w = self.dir.writer("pstree.img", Kind::Pstree)?;
        let ns = |pid: i32| self.files.pids.of(pid) as u32;
        for p in &tree.processes {
            w.entry(&PstreeEntry {
                pid: ns(p.pid),
                ppid: if p.pid == root { 0 } else { ns(p.ppid) },
                pgid: ns(p.pgid),
                sid: ns(p.sid),
                threads: p.threads.iter().map(|&t| ns(t)).collect(),
            })?;
        }
        self.stats.bytes_written += w.finish()?;
        Ok(())
    }

    /// What processes share, known once all are dumped: files (with every
    /// kind's own images), shared memory, cgroups, and crust's notes.
    fn shared(&mut self, tree: &FrozenTree) -> Result<()> {
        let pids: Vec<i32> = tree.processes.iter().map(|p| p.pid).collect();
        self.shmem.check_within(&pids)?;
        self.files.locks.check_all_met(&pids)?;
        self.stats.bytes_written += self.files.write(&mut self.dir)?;
        self.stats.bytes_written += self.shmem.write(&mut self.dir)?;
        self.stats.bytes_written += self.seccomp.write(&mut self.dir)?;
        let mut w = self.dir.writer("cgroup.img", Kind::Cgroup)?;
        w.entry(&self.cgroups.entry()?)?;
        self.stats.bytes_written += w.finish()?;
        self.stats.cgroups = self.cgroups.summary();
        // Deleted files travel in the images: nothing to compare them with.
        let files = &self.files;
        let read_only = files
            .files
            .iter()
            .filter(|f| !files.ghosts.holds(f.id))
            .filter_map(|f| f.reg.as_ref())
            .filter(|r| r.flags & libc::O_ACCMODE as u32 == 0);
        let stamps = read_only.filter_map(|r| Some((r.name.clone(), FileStamp::of(&files.seen_at(&r.name))?))).collect();
        let shared_with_parent = std::mem::take(&mut self.shared_with_parent).into_iter().map(|(pid, r)| (self.files.pids.of(pid), r)).collect();
        let devices = files.files.iter().filter_map(|f| f.reg.as_ref()).filter_map(|r| crate::files::reg::device_of(r, files)).collect();
        let stops_collected = std::mem::take(&mut self.stops_collected);
        let network_lock = files.tcp.lock_name().map(str::to_string);
        let own_namespaces = self.own_ns.0.clone();
        let external_files = crate::files::pipe::external_keys(files);
        let external_namespaces = self.ext_ns.0.clone();
        let meta = DumpMeta { cgroups: self.cgroups.report(), files: stamps, shared_with_parent, devices, stops_collected, network_lock, own_namespaces, external_files, external_namespaces };
        self.stats.bytes_written += self.dir.write_json(META, &meta)?;
        Ok(())
    }

    /// By child: the pages it shared physically with its parent (see
    /// [`memory::shared_with_parent`]).
    fn shared_with_parents(&self, tree: &FrozenTree) -> BTreeMap<i32, Vec<(u64, u64)>> {
        let pages_of = |pid: i32| self.deferred.iter().find(|p| p.pid() == pid);
        let mut out = BTreeMap::new();
        for p in &tree.processes {
            let (Some(child), Some(parent)) = (pages_of(p.pid), pages_of(p.ppid)) else { continue };
            let shared = memory::shared_with_parent(child, parent);
            if !shared.is_empty() {
                out.insert(p.pid, shared);
            }
        }
        out
    }

    /// Each process's pages it shares with its parent or a child, so that
    /// reading them leaves them shared.
    fn mark_shared_pages(&mut self, tree: &FrozenTree) {
        let ppid = |pid: i32| tree.processes.iter().find(|p| p.pid == pid).map(|p| p.ppid);
        let mut shared: BTreeMap<i32, Vec<(u64, u64)>> = BTreeMap::new();
        for (&child, ranges) in &self.shared_with_parent {
            shared.entry(child).or_default().extend(ranges);
            if let Some(parent) = ppid(child) {
                shared.entry(parent).or_default().extend(ranges);
            }
        }
        for pending in &mut self.deferred {
            pending.shared = crate::ranges::merge(shared.remove(&pending.pid()).unwrap_or_default());
        }
    }

    fn inventory(&mut self, root_ids: Option<TaskKobjIdsEntry>) -> Result<()> {
        let mut w = self.dir.writer("inventory.img", Kind::Inventory)?;
        w.entry(&InventoryEntry {
            img_version: IMG_VERSION,
            fdinfo_per_id: Some(true),
            root_ids,
            ns_per_id: Some(true),
            root_cg_set: Some(SAME_AS_DUMPER),
            lsmtype: Some(Lsmtype::NoLsm as i32),
            ..Default::default()
        })?;
        self.stats.bytes_written += w.finish()?;
        Ok(())
    }

    /// The ids of what a process holds. Its memory, fd table, fs and signal
    /// handlers share its number: crust does not support processes sharing
    /// them without being threads. Namespaces get small ids of their own.
    fn kobj_ids(&mut self, pid: i32, index: u32) -> TaskKobjIdsEntry {
        let mut ns = |kind: &'static str| {
            let ino = proc::ns_inode(pid, kind)?;
            let pos = self.namespaces.iter().position(|k| *k == (kind, ino)).unwrap_or_else(|| {
                self.namespaces.push((kind, ino));
                self.namespaces.len() - 1
            });
            Some(pos as u32 + 1)
        };
        TaskKobjIdsEntry {
            vm_id: index,
            files_id: index,
            fs_id: index,
            sighand_id: index,
            pid_ns_id: ns("pid"),
            net_ns_id: ns("net"),
            ipc_ns_id: ns("ipc"),
            uts_ns_id: ns("uts"),
            mnt_ns_id: ns("mnt"),
            user_ns_id: ns("user"),
            cgroup_ns_id: ns("cgroup"),
            time_ns_id: ns("time"),
        }
    }
}

/// The frame of a thread's core image that the components of [`state`] fill:
/// the leader's also holds the process's ids and task state. Its flags,
/// loginuid and oom_score_adj are kept for tools that read the images.
fn core_of(p: &FrozenProcess, tid: i32, stat: &Stat, ids: &TaskKobjIdsEntry, cg_set: u32) -> CoreEntry {
    let leader = tid == p.pid;
    let process = leader.then(|| proc::process(p.pid).ok()).flatten();
    CoreEntry {
        mtype: March::X8664 as i32,
        thread_info: Some(Default::default()),
        ids: leader.then_some(*ids),
        tc: leader.then(|| TaskCoreEntry {
            task_state: if p.stopped.is_some() { TASK_STOPPED } else { TASK_ALIVE },
            stop_signo: p.stopped.map(|sig| sig as u32),
            flags: stat.flags,
            cg_set: Some(cg_set),
            loginuid: process.as_ref().and_then(|p| p.loginuid().ok()),
            oom_score_adj: process.as_ref().and_then(|p| p.oom_score_adj().ok()).map(i32::from),
            ..Default::default()
        }),
        thread_core: Some(ThreadCoreEntry { cg_set: Some(cg_set), ..Default::default() }),
        ..Default::default()
    }
}

/// What crust cannot restore yet must stop the dump, not be lost on restore:
/// seccomp strict mode, and seccomp filters crust may not suspend (any
/// syscall it injects could be stopped or kill the task). Namespaces are
/// [`crate::ns`]'s to judge.
fn check_isolation(tree: &FrozenTree) -> Result<()> {
    let own_state = refuse::Own::read()?;
    for p in tree.processes.iter().filter(|p| p.zombie.is_none()) {
        let who = proc::who(p.pid);
        for &tid in &p.threads {
            match proc::status(p.pid, tid)?.seccomp.unwrap_or(0) {
                0 => {}
                1 => return Err(Error::unsupported(&who, format!("thread {tid} is in seccomp strict mode: not supported"))),
                _ if !crate::ptrace::can_suspend_seccomp() => {
                    return Err(Error::unsupported(
                        &who,
                        format!("thread {tid} has a seccomp filter, and crust may not suspend it (that needs CAP_SYS_ADMIN and no seccomp filter of crust's own)"),
                    ))
                }
                _ => {}
            }
        }
        refuse::check_process(p, &who, &own_state)?;
    }
    Ok(())
}

/// A tree whose session or process group lives outside it belongs to a shell's
/// job; like criu, dump it only when the user says so with --shell-job.
fn check_session(tree: &FrozenTree, opts: &DumpOptions) -> Result<()> {
    if opts.shell_job {
        return Ok(());
    }
    let inside = |pid: i32| tree.processes.iter().any(|p| p.pid == pid);
    for p in &tree.processes {
        for (what, leader) in [("session", p.sid), ("process group", p.pgid)] {
            if !inside(leader) {
                let comm = proc::read_string(&format!("/proc/{leader}/comm")).unwrap_or_default();
                return Err(Error::Invalid(format!(
                    "process {} belongs to {what} {leader}, whose leader ({leader} {}) is not in the dumped tree; \
                     if it is a job started from a shell, dump it with --shell-job",
                    p.pid,
                    comm.trim()
                )));
            }
        }
    }
    Ok(())
}

