//! `crust dump`: freeze a tree, write its state as CRIU images, then kill it or
//! let it run on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::arch;
use crate::cgroups::{CgroupRecorder, CgroupReport, CgroupRoot};
use crate::error::{Context, Error, Result};
use crate::files::{FileTable, OpenFd};
use crate::images::proto::{
    core_entry::March, CoreEntry, DumpStatsEntry, FsEntry, InventoryEntry, ItimerEntry, Lsmtype, MmEntry,
    PagemapEntry, PagemapHead, PstreeEntry, RseqEntry, SaEntry, SiginfoEntry, SignalQueueEntry, StatsEntry,
    TaskCoreEntry, TaskKobjIdsEntry, TaskTimersEntry, ThreadCoreEntry, ThreadInfoX86, ThreadSasEntry, VmaEntry,
};
use crate::images::{FileSink, ImageDir, Kind};
use crate::mem::{self, Backing, PageReader, Vma, PAGE_SIZE};
use crate::proc;
use crate::ptrace;
use crate::remote::RemoteThread;
use crate::tree::{FrozenProcess, FrozenTree};

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
}

/// crust's notes beside the images, for `crust explain` and preflight checks.
pub const META: &str = "crust-meta.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DumpMeta {
    pub cgroups: CgroupReport,
    /// Size and modification time of every file the tree only reads (mapped
    /// files, executables, read-only fds): a restore elsewhere needs the same.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, FileStamp>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileStamp {
    pub fn of(path: &str) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        Some(FileStamp { size: md.len(), mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128 })
    }
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
                pages_skipped_parent: 0,
                pages_written: self.pages_written,
                pages_lazy: 0,
                ..Default::default()
            }),
            restore: None,
        }
    }
}

// task_core_entry.task_state values (CRIU's).
const TASK_ALIVE: u32 = 1;
pub const TASK_STOPPED: u32 = 3;
pub const TASK_ZOMBIE: u32 = 6;
const PE_PRESENT: u32 = 4;
const IMG_VERSION: u32 = 2;

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// A tree whose images are written, still frozen: the caller decides whether
/// it dies (its state lives on elsewhere) or resumes (the move failed).
pub struct Dumped {
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
    /// the order of pstree.img; `progress` hears the bytes sent so far.
    pub fn send_pages(&mut self, sink: &mut dyn FileSink, progress: &mut dyn FnMut(u64)) -> Result<u64> {
        let mut sent = 0;
        for pending in std::mem::take(&mut self.pages) {
            sink.begin(&pending.name())?;
            pending.copy(&mut self.stats, &mut |chunk| {
                sink.data(chunk)?;
                sent += chunk.len() as u64;
                progress(sent);
                Ok(())
            })?;
            sink.end()?;
        }
        self.stats.bytes_written += sent;
        Ok(sent)
    }

    pub fn kill(mut self) -> DumpStats {
        self.tree.kill();
        self.stats.frozen_time_us = us(self.frozen_at.elapsed());
        self.stats
    }

    pub fn resume(mut self) -> DumpStats {
        drop(self.tree);
        self.stats.frozen_time_us = us(self.frozen_at.elapsed());
        self.stats
    }
}

pub fn dump(opts: &DumpOptions) -> Result<DumpStats> {
    let (tree, dir, stats, frozen_at, pages) = write_images(opts, None)?;
    let d = Dumped { tree, frozen_at, pages, stats };
    if opts.leave_running {
        // Everything is read: the tree need not wait for the disk.
        let mut stats = d.resume();
        dir.commit()?;
        stats.frozen_time_us = us(frozen_at.elapsed());
        Ok(stats)
    } else {
        // The tree dies only once its images are safely in place.
        dir.commit()?;
        Ok(d.kill())
    }
}

/// Dump and keep the tree frozen, with its images in place: in `opts.dir`,
/// or, given a sink, streamed to it as they are written (nothing on disk).
/// A streamed dump leaves the pages out, for [`Dumped::send_pages`]: the
/// receiver can check the rest, and build the tree, before they come.
pub fn dump_frozen(opts: &DumpOptions, sink: Option<Box<dyn FileSink>>) -> Result<Dumped> {
    let (tree, dir, mut stats, frozen_at, pages) = write_images(opts, sink)?;
    dir.commit()?;
    stats.frozen_time_us = us(frozen_at.elapsed());
    Ok(Dumped { tree, frozen_at, pages, stats })
}

type Written = (FrozenTree, ImageDir, DumpStats, Instant, Vec<PendingPages>);

/// Freeze the tree and write all its images (not yet made visible); a
/// streamed dump returns its pages unwritten.
fn write_images(opts: &DumpOptions, sink: Option<Box<dyn FileSink>>) -> Result<Written> {
    let start = Instant::now();
    let tree = match &opts.freeze_cgroup {
        Some(cg) => FrozenTree::seize_through_freezer(opts.pid, cg)?,
        None => FrozenTree::seize(opts.pid)?,
    };
    let frozen_at = Instant::now();
    let mut stats = DumpStats {
        processes: tree.processes.len(),
        threads: tree.thread_count(),
        freezing_time_us: us(frozen_at - start),
        ..Default::default()
    };
    check_session(&tree, opts)?;
    check_isolation(&tree)?;

    let mut pending = Vec::new();
    let (mut dir, mut deferred) = match sink {
        Some(sink) => (ImageDir::stream(sink), Some(&mut pending)),
        None => (ImageDir::create(&opts.dir)?, None),
    };
    let mut files = FileTable::default();
    if let Some(limit) = opts.ghost_limit {
        files.ghosts.limit = limit;
    }
    let mut cgroups = CgroupRecorder::new(opts.cgroup_roots.clone())?;
    let mut kobj = KobjIds::default();
    let mut root_ids = None;
    for (n, p) in tree.processes.iter().enumerate() {
        if let Some(status) = p.zombie {
            stats.bytes_written += dump_zombie(p, status, &mut dir)?;
            continue;
        }
        let ids =
            dump_process(p, n as u32 + 1, &mut dir, &mut files, &mut cgroups, &mut kobj, &mut stats, deferred.as_deref_mut())?;
        root_ids.get_or_insert(ids);
    }
    let mut w = dir.writer("pstree.img", Kind::Pstree)?;
    for p in &tree.processes {
        w.entry(&PstreeEntry {
            pid: p.pid as u32,
            ppid: if p.pid == opts.pid { 0 } else { p.ppid as u32 },
            pgid: p.pgid as u32,
            sid: p.sid as u32,
            threads: p.threads.iter().map(|&t| t as u32).collect(),
        })?;
    }
    stats.bytes_written += w.finish()?;
    let pids: Vec<i32> = tree.processes.iter().map(|p| p.pid).collect();
    files.shmem.check_within(&pids)?;
    stats.bytes_written += files.write(&mut dir)?;
    let mut w = dir.writer("cgroup.img", Kind::Cgroup)?;
    w.entry(&cgroups.entry()?)?;
    stats.bytes_written += w.finish()?;
    stats.cgroups = cgroups.summary();
    // Deleted files travel in the images: nothing to compare them with.
    let read_only = files
        .files
        .iter()
        .filter(|f| !files.ghosts.holds(f.id))
        .filter_map(|f| f.reg.as_ref())
        .filter(|r| r.flags & libc::O_ACCMODE as u32 == 0);
    let stamps = read_only.filter_map(|r| Some((r.name.clone(), FileStamp::of(&r.name)?))).collect();
    stats.bytes_written += dir.write_json(META, &DumpMeta { cgroups: cgroups.report(), files: stamps })?;
    let mut w = dir.writer("inventory.img", Kind::Inventory)?;
    w.entry(&InventoryEntry {
        img_version: IMG_VERSION,
        fdinfo_per_id: Some(true),
        root_ids,
        ns_per_id: Some(true),
        root_cg_set: Some(crate::cgroups::SAME_AS_DUMPER),
        lsmtype: Some(Lsmtype::NoLsm as i32),
        ..Default::default()
    })?;
    stats.bytes_written += w.finish()?;

    crate::cancel::check()?;
    stats.frozen_time_us = us(frozen_at.elapsed());
    // A streamed dump's numbers are whole only once its pages are sent: the
    // migration keeps them itself.
    if deferred.is_none() {
        let mut w = dir.writer("stats-dump", Kind::Stats)?;
        w.entry(&stats.entry())?;
        stats.bytes_written += w.finish()?;
    }
    Ok((tree, dir, stats, frozen_at, pending))
}

/// What crust cannot restore yet must stop the dump, not be lost on restore:
/// namespaces of a task's own (a container: a container-aware dump is needed),
/// seccomp filters, no_new_privs, and capabilities other than its uid implies.
fn check_isolation(tree: &FrozenTree) -> Result<()> {
    const NAMESPACES: [&str; 8] = ["pid", "net", "ipc", "uts", "mnt", "user", "cgroup", "time"];
    let me = std::process::id() as i32;
    let own = proc::status(me, me)?;
    for p in tree.processes.iter().filter(|p| p.zombie.is_none()) {
        let comm = proc::read_string(&format!("/proc/{}/comm", p.pid)).unwrap_or_default();
        let who = format!("process {} ({})", p.pid, comm.trim());
        for ns in NAMESPACES {
            if proc::ns_inode(p.pid, ns) != proc::ns_inode(me, ns) {
                return Err(Error::Unsupported(format!(
                    "{who} is in a {ns} namespace of its own: dumping processes inside namespaces (containers) is not supported yet"
                )));
            }
        }
        for &tid in &p.threads {
            let st = proc::status(p.pid, tid)?;
            if st.seccomp.unwrap_or(0) != 0 {
                return Err(Error::Unsupported(format!("{who}: thread {tid} has a seccomp filter: seccomp is not supported yet")));
            }
            if st.nonewprivs.unwrap_or(0) != 0 {
                return Err(Error::Unsupported(format!("{who}: thread {tid} has no_new_privs set: that is not supported yet")));
            }
            // What setresuid from crust's credentials gives: crust's sets for
            // root, empty effective/permitted/inheritable/ambient sets otherwise.
            let root = st.euid == 0 || st.ruid == 0 || st.suid == 0;
            let want = if root { (own.capinh, own.capprm, own.capeff) } else { (0, 0, 0) };
            let caps_ok = (st.capinh, st.capprm, st.capeff) == want
                && st.capbnd == own.capbnd
                && st.capamb.unwrap_or(0) == 0;
            if !caps_ok {
                return Err(Error::Unsupported(format!(
                    "{who}: thread {tid} has capabilities other than its uid implies: restoring them is not supported yet"
                )));
            }
        }
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

/// A zombie is its pstree entry and a core with its exit status, as in CRIU.
fn dump_zombie(p: &FrozenProcess, status: u32, dir: &mut ImageDir) -> Result<u64> {
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
    let mut w = dir.writer(&format!("core-{}.img", p.pid), Kind::Core)?;
    w.entry(&core)?;
    w.finish()
}

/// Small ids for kernel objects that tasks may share (namespaces, fd tables, ...).
#[derive(Default)]
struct KobjIds {
    namespaces: Vec<(String, u64)>,
}

impl KobjIds {
    fn ns(&mut self, pid: i32, ns: &str) -> Option<u32> {
        let ino = proc::ns_inode(pid, ns)?;
        let key = (ns.to_string(), ino);
        let pos = self.namespaces.iter().position(|k| *k == key).unwrap_or_else(|| {
            self.namespaces.push(key);
            self.namespaces.len() - 1
        });
        Some(pos as u32 + 1)
    }
}

/// State only visible from inside the process: gathered by syscalls run in it.
struct InsideProcess {
    sigactions: Vec<SaEntry>,
    brk: u64,
    timers: TaskTimersEntry,
}

struct InsideThread {
    sas: ThreadSasEntry,
    clear_tid_addr: u64,
    pdeath_sig: u32,
    secbits: u32,
}

/// `handled` is the set of signals (bit n-1 for signal n) whose disposition is
/// not the default, from /proc: only those are asked for, the rest are SIG_DFL.
fn inside_process(rt: &RemoteThread, handled: u64) -> Result<InsideProcess> {
    let buf = rt.scratch();
    let mut sigactions = Vec::new();
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        if handled & (1 << (sig - 1)) == 0 {
            sigactions.push(SaEntry::default());
            continue;
        }
        rt.call("rt_sigaction", libc::SYS_rt_sigaction, [sig, 0, buf, 8, 0, 0])?;
        let b = rt.read_scratch(32)?;
        let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        sigactions.push(SaEntry { sigaction: word(0), flags: word(1), restorer: word(2), mask: word(3), ..Default::default() });
    }
    let brk = rt.call("brk", libc::SYS_brk, [0; 6])?;
    let itimer = |which: u64| -> Result<ItimerEntry> {
        rt.call("getitimer", libc::SYS_getitimer, [which, buf, 0, 0, 0, 0])?;
        let b = rt.read_scratch(32)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Ok(ItimerEntry { isec: w(0), iusec: w(1), vsec: w(2), vusec: w(3) })
    };
    let timers = TaskTimersEntry {
        real: itimer(libc::ITIMER_REAL as u64)?,
        virt: itimer(libc::ITIMER_VIRTUAL as u64)?,
        prof: itimer(libc::ITIMER_PROF as u64)?,
        posix: Vec::new(),
    };
    Ok(InsideProcess { sigactions, brk, timers })
}

fn inside_thread(rt: &RemoteThread) -> Result<InsideThread> {
    let buf = rt.scratch();
    rt.call("sigaltstack", libc::SYS_sigaltstack, [0, buf, 0, 0, 0, 0])?;
    let b = rt.read_scratch(24)?;
    let sas = ThreadSasEntry {
        ss_sp: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        ss_flags: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
        ss_size: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
    };
    rt.call("prctl(PR_GET_TID_ADDRESS)", libc::SYS_prctl, [libc::PR_GET_TID_ADDRESS as u64, buf, 0, 0, 0, 0])?;
    let clear_tid_addr = u64::from_le_bytes(rt.read_scratch(8)?.try_into().expect("8 bytes"));
    rt.call("prctl(PR_GET_PDEATHSIG)", libc::SYS_prctl, [libc::PR_GET_PDEATHSIG as u64, buf, 0, 0, 0, 0])?;
    let pdeath_sig = u32::from_le_bytes(rt.read_scratch(4)?.try_into().expect("4 bytes"));
    let secbits = rt.call("prctl(PR_GET_SECUREBITS)", libc::SYS_prctl, [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0])?;
    Ok(InsideThread { sas, clear_tid_addr, pdeath_sig, secbits: secbits as u32 })
}

fn signal_queue(raw: Vec<[u8; 128]>) -> Option<SignalQueueEntry> {
    (!raw.is_empty()).then(|| SignalQueueEntry { signals: raw.into_iter().map(|s| SiginfoEntry { siginfo: s.to_vec() }).collect() })
}

#[allow(clippy::too_many_arguments)]
fn dump_process(
    p: &FrozenProcess,
    index: u32,
    dir: &mut ImageDir,
    files: &mut FileTable,
    cgroups: &mut CgroupRecorder,
    kobj: &mut KobjIds,
    stats: &mut DumpStats,
    deferred: Option<&mut Vec<PendingPages>>,
) -> Result<TaskKobjIdsEntry> {
    let pid = p.pid;
    let vmas = mem::read_vmas(pid)?;
    let gadget = mem::vdso_syscall_gadget(pid, &vmas)?;
    let writable = |a: u64, b: u64| {
        vmas.iter().any(|v| v.start <= a && b <= v.end && v.prot & libc::PROT_WRITE as u32 != 0)
    };

    // The same numbers name this process's memory, fd table, fs and signal handlers:
    // crust does not support processes sharing them without being threads.
    let ids = TaskKobjIdsEntry {
        vm_id: index,
        files_id: index,
        fs_id: index,
        sighand_id: index,
        pid_ns_id: kobj.ns(pid, "pid"),
        net_ns_id: kobj.ns(pid, "net"),
        ipc_ns_id: kobj.ns(pid, "ipc"),
        uts_ns_id: kobj.ns(pid, "uts"),
        mnt_ns_id: kobj.ns(pid, "mnt"),
        user_ns_id: kobj.ns(pid, "user"),
        cgroup_ns_id: kobj.ns(pid, "cgroup"),
        time_ns_id: kobj.ns(pid, "time"),
    };
    let cg_set = cgroups.set_of(pid)?;
    let leader_stat = proc::stat(pid, pid)?;
    let leader_status = proc::status(pid, pid)?;

    // Per-thread state, the leader first; the leader also answers for the process.
    let mut inside_proc = None;
    for &tid in &p.threads {
        crate::cancel::check()?;
        let regs = ptrace::regs(tid)?;
        let xsave = ptrace::xstate(tid)?;
        let rt = RemoteThread::start(tid, gadget, writable)?;
        if tid == pid {
            inside_proc = Some(inside_process(&rt, leader_status.sigcgt | leader_status.sigign)?);
        }
        let inside = inside_thread(&rt)?;
        rt.finish()?;

        let st = proc::stat(pid, tid)?;
        let status = proc::status(pid, tid)?;
        let (futex_rla, futex_rla_len) = proc::robust_list(tid)?;
        let (sched_policy, sched_prio) = proc::sched(tid);
        let rseq = ptrace::rseq_config(tid)?;
        let comm = proc::read_string(&format!("/proc/{pid}/task/{tid}/comm"))?.trim_end_matches('\n').to_string();
        let thread_core = ThreadCoreEntry {
            futex_rla,
            futex_rla_len,
            sched_nice: Some(st.nice as i32),
            sched_policy: Some(sched_policy),
            sched_prio: Some(sched_prio),
            blk_sigset: Some(ptrace::sigmask(tid)?),
            sas: Some(inside.sas),
            pdeath_sig: Some(inside.pdeath_sig),
            signals_p: signal_queue(ptrace::pending_signals(tid, false)?),
            creds: Some(proc::creds(&status, inside.secbits)),
            comm: Some(comm.clone()),
            rseq_entry: (rseq.rseq_abi_size != 0).then_some(RseqEntry {
                rseq_abi_pointer: rseq.rseq_abi_pointer,
                rseq_abi_size: rseq.rseq_abi_size,
                signature: rseq.signature,
                rseq_cs_pointer: None,
            }),
            cg_set: Some(cg_set),
            ..Default::default()
        };
        let tc = if tid == pid {
            let inside = inside_proc.as_ref().expect("leader dumped first");
            Some(TaskCoreEntry {
                task_state: if p.stopped.is_some() { TASK_STOPPED } else { TASK_ALIVE },
                stop_signo: p.stopped.map(|sig| sig as u32),
                exit_code: 0,
                personality: proc::personality(pid)?,
                flags: leader_stat.flags,
                blk_sigset: thread_core.blk_sigset.unwrap_or(0),
                comm,
                timers: Some(inside.timers.clone()),
                rlimits: Some(proc::rlimits(pid)?),
                cg_set: Some(cg_set),
                signals_s: signal_queue(ptrace::pending_signals(tid, true)?),
                loginuid: proc::read_string(&format!("/proc/{pid}/loginuid")).ok().and_then(|s| s.trim().parse().ok()),
                oom_score_adj: proc::read_string(&format!("/proc/{pid}/oom_score_adj"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
                sigactions: inside.sigactions.clone(),
                ..Default::default()
            })
        } else {
            None
        };
        let core = CoreEntry {
            mtype: March::X8664 as i32,
            thread_info: Some(ThreadInfoX86 {
                clear_tid_addr: inside.clear_tid_addr,
                gpregs: arch::gpregs(&regs),
                fpregs: arch::fpregs(&xsave),
                tls: Vec::new(),
            }),
            ids: (tid == pid).then_some(ids),
            tc,
            thread_core: Some(thread_core),
            ..Default::default()
        };
        let mut w = dir.writer(&format!("core-{tid}.img"), Kind::Core)?;
        w.entry(&core)?;
        stats.bytes_written += w.finish()?;
    }
    let inside = inside_proc.expect("the leader is always among the threads");

    // Memory: the layout, then the pages that hold contents of their own.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ctx(|| format!("reading /proc/{pid}/exe"))?;
    let exe_file_id = files.path_id(&exe.to_string_lossy(), libc::O_RDONLY as u32, &format!("/proc/{pid}/exe"))?;
    let mut vma_entries = Vec::new();
    for v in &vmas {
        vma_entries.push(vma_entry(pid, v, files)?);
    }
    let mm = MmEntry {
        mm_start_code: leader_stat.startcode,
        mm_end_code: leader_stat.endcode,
        mm_start_data: leader_stat.start_data.unwrap_or(0),
        mm_end_data: leader_stat.end_data.unwrap_or(0),
        mm_start_stack: leader_stat.startstack,
        mm_start_brk: leader_stat.start_brk.unwrap_or(0),
        mm_brk: inside.brk,
        mm_arg_start: leader_stat.arg_start.unwrap_or(0),
        mm_arg_end: leader_stat.arg_end.unwrap_or(0),
        mm_env_start: leader_stat.env_start.unwrap_or(0),
        mm_env_end: leader_stat.env_end.unwrap_or(0),
        exe_file_id,
        mm_saved_auxv: proc::auxv(pid)?,
        vmas: vma_entries,
        dumpable: None,
        ..Default::default()
    };
    let mut w = dir.writer(&format!("mm-{pid}.img"), Kind::Mm)?;
    w.entry(&mm)?;
    stats.bytes_written += w.finish()?;
    dump_pages(pid, index, &vmas, dir, stats, deferred)?;

    // Files: fd table, cwd and root.
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ctx(|| format!("listing /proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    let mut w = dir.writer(&format!("fdinfo-{index}.img"), Kind::Fdinfo)?;
    for fd in fds {
        let open = OpenFd::read(pid, fd)?;
        w.entry(&files.dump_fd(&open)?)?;
    }
    stats.bytes_written += w.finish()?;
    let dir_flags = (libc::O_RDONLY | libc::O_DIRECTORY) as u32;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ctx(|| format!("reading /proc/{pid}/cwd"))?;
    let root = std::fs::read_link(format!("/proc/{pid}/root")).ctx(|| format!("reading /proc/{pid}/root"))?;
    let fs = FsEntry {
        cwd_id: files.path_id(&cwd.to_string_lossy(), dir_flags, &format!("/proc/{pid}/cwd"))?,
        root_id: files.path_id(&root.to_string_lossy(), dir_flags, &format!("/proc/{pid}/root"))?,
        umask: leader_status.umask,
    };
    let mut w = dir.writer(&format!("fs-{pid}.img"), Kind::Fs)?;
    w.entry(&fs)?;
    stats.bytes_written += w.finish()?;
    let mut w = dir.writer(&format!("ids-{pid}.img"), Kind::Ids)?;
    w.entry(&ids)?;
    stats.bytes_written += w.finish()?;
    Ok(ids)
}

fn vma_entry(pid: i32, v: &Vma, files: &mut FileTable) -> Result<VmaEntry> {
    let shmid = match &v.backing {
        Backing::File { path, .. } => {
            let writable_shared = v.shared() && v.prot & libc::PROT_WRITE as u32 != 0;
            let flags = if writable_shared { libc::O_RDWR } else { libc::O_RDONLY } as u32;
            let source = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
            files.path_id(&path.to_string_lossy(), flags, &source)? as u64
        }
        Backing::AnonShared => files.shmem.note(pid, v)?,
        _ => 0,
    };
    Ok(VmaEntry {
        start: v.start,
        end: v.end,
        pgoff: v.pgoff,
        shmid,
        prot: v.prot,
        flags: v.flags,
        status: v.status,
        fd: -1,
        madv: None,
        fdflags: None,
    })
}

/// pagemap-PID.img and pages-N.img: the runs of saved pages and their
/// contents; the contents left for later if `deferred` is given.
fn dump_pages(
    pid: i32,
    pages_id: u32,
    vmas: &[Vma],
    dir: &mut ImageDir,
    stats: &mut DumpStats,
    deferred: Option<&mut Vec<PendingPages>>,
) -> Result<()> {
    let (runs, scanned) = mem::private_page_runs(pid, vmas)?;
    stats.pages_scanned += scanned;
    // The pagemap first, whole, then the pages: images are written one at a
    // time (a streamed dump cannot interleave them).
    let mut map = dir.writer(&format!("pagemap-{pid}.img"), Kind::Pagemap)?;
    map.entry(&PagemapHead { pages_id })?;
    for run in &runs {
        map.entry(&PagemapEntry { vaddr: run.vaddr, nr_pages: run.nr_pages as u32, in_parent: None, flags: Some(PE_PRESENT) })?;
    }
    stats.bytes_written += map.finish()?;
    let pending = PendingPages { pid, pages_id, runs };
    match deferred {
        Some(list) => list.push(pending),
        None => {
            let mut w = dir.writer(&pending.name(), Kind::Pages)?;
            pending.copy(stats, &mut |chunk| w.raw(chunk))?;
            stats.bytes_written += w.finish()?;
        }
    }
    Ok(())
}

/// The saved pages of one process, read from it (still frozen) when written.
struct PendingPages {
    pid: i32,
    pages_id: u32,
    runs: Vec<mem::PageRun>,
}

impl PendingPages {
    fn name(&self) -> String {
        format!("pages-{}.img", self.pages_id)
    }

    fn bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.nr_pages * PAGE_SIZE).sum()
    }

    /// Read the pages a chunk at a time and hand each chunk to `out`.
    fn copy(&self, stats: &mut DumpStats, out: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let t = Instant::now();
        let reader = PageReader::new(self.pid)?;
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut read_time = Duration::ZERO;
        for run in &self.runs {
            let mut addr = run.vaddr;
            let end = run.vaddr + run.nr_pages * PAGE_SIZE;
            while addr < end {
                crate::cancel::check()?;
                let n = (end - addr).min(CHUNK) as usize;
                let r = Instant::now();
                reader.read(addr, &mut buf[..n])?;
                read_time += r.elapsed();
                out(&buf[..n])?;
                addr += n as u64;
            }
            stats.pages_written += run.nr_pages;
        }
        stats.memdump_time_us += us(read_time);
        stats.memwrite_time_us += us(t.elapsed().saturating_sub(read_time));
        Ok(())
    }
}
