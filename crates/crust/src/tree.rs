//! Freezing a process tree: seize every thread of every process under the root,
//! catching threads and children that appear meanwhile, and let them go again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use procfs::process::Process;

use crate::error::{Context, Error, Result};
use crate::ptrace::{self, StopKind};

/// One process of a frozen tree.
#[derive(Clone, Debug)]
pub struct FrozenProcess {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Thread ids, the leader (== pid) first.
    pub threads: Vec<i32>,
    /// The process was a stopped job before we came, stopped by this signal.
    pub stopped: Option<nix::sys::signal::Signal>,
    /// A zombie: dead, not yet reaped by its parent; its raw wait status.
    pub zombie: Option<u32>,
}

/// A tree whose every thread is in a ptrace stop. Dropping it lets every thread
/// run on exactly as before (unless it was killed).
pub struct FrozenTree {
    /// Parents before children.
    pub processes: Vec<FrozenProcess>,
    seized: Vec<i32>,
    /// Stops already collected (when the tree was seized through the freezer).
    stops: HashMap<i32, StopKind>,
}

fn proc_err(pid: i32, e: procfs::ProcError) -> Error {
    match e {
        procfs::ProcError::NotFound(_) => Error::Invalid(format!("process {pid} does not exist")),
        other => Error::io_other(format!("reading /proc/{pid}"), other),
    }
}

impl FrozenTree {
    pub fn seize(root: i32) -> Result<FrozenTree> {
        if root <= 0 {
            return Err(Error::Invalid(format!("{root} is not a process id")));
        }
        let me = std::process::id() as i32;
        let status = Process::new(root).and_then(|p| p.status()).map_err(|e| proc_err(root, e))?;
        if status.tgid != root {
            return Err(Error::Invalid(format!(
                "{root} is a thread of process {}, not a process: dump the process",
                status.tgid
            )));
        }
        if root == me {
            return Err(Error::Invalid("crust cannot dump itself".into()));
        }
        let mut tree = FrozenTree { processes: Vec::new(), seized: Vec::new(), stops: HashMap::new() };
        tree.walk(root)?;
        Ok(tree)
    }

    /// Every process under `root`, parents first, each with all its threads stopped.
    fn walk(&mut self, root: i32) -> Result<()> {
        let me = std::process::id() as i32;
        let mut queue = vec![root];
        let mut i = 0;
        while i < queue.len() {
            let pid = queue[i];
            i += 1;
            let p = match self.seize_process(pid) {
                // A child that exited and whose pid went to an unrelated process.
                Ok(p) if pid != root && !self.processes.iter().any(|q| q.pid == p.ppid) => {
                    for &tid in &p.threads {
                        ptrace::detach(tid);
                        self.seized.retain(|&t| t != tid);
                    }
                    continue;
                }
                Ok(p) => p,
                // A child that exited between being listed and being seized.
                Err(_) if pid != root && !Path::new(&format!("/proc/{pid}")).exists() => continue,
                Err(e) => return Err(e),
            };
            if pid == root && p.zombie.is_some() {
                return Err(Error::Invalid(format!("process {root} is a zombie: there is nothing to dump")));
            }
            for child in children(&p)? {
                if child == me {
                    return Err(Error::Invalid(format!("crust itself is in the tree of {root}")));
                }
                if !queue.contains(&child) {
                    queue.push(child);
                }
            }
            self.processes.push(p);
        }
        Ok(())
    }

    /// Freeze the cgroup the tree lives in, seize every thread while nothing can
    /// run or fork, thaw, and collect the stops: a consistent snapshot of a tree
    /// that forks fast. The cgroup is thawed whatever happens.
    pub fn seize_through_freezer(root: i32, cgroup: &Path) -> Result<FrozenTree> {
        let freezer = Freezer::freeze(cgroup)?;
        let mut tree = FrozenTree { processes: Vec::new(), seized: Vec::new(), stops: HashMap::new() };
        let mut queue = vec![root];
        let mut i = 0;
        while i < queue.len() {
            let pid = queue[i];
            i += 1;
            let Ok(proc) = Process::new(pid) else {
                continue; // exited before the freeze
            };
            if proc.stat().map(|s| s.state == 'Z').unwrap_or(false) {
                continue; // nothing to seize: the walk below records it
            }
            let Ok(tasks) = proc.tasks() else {
                continue; // exited before the freeze
            };
            for task in tasks.flatten() {
                ptrace::seize_no_wait(task.tid)?;
                tree.seized.push(task.tid);
                queue.extend(task.children().unwrap_or_default().into_iter().map(|c| c as i32));
            }
        }
        freezer.thaw()?;
        for &tid in &tree.seized.clone() {
            let kind = ptrace::wait_for_stop(tid)?;
            tree.stops.insert(tid, kind);
        }
        // Now the usual walk: it finds everything seized, and anything missed.
        tree.walk(root)?;
        Ok(tree)
    }

    /// Seize all threads of `pid`, again and again until no new thread shows up.
    fn seize_process(&mut self, pid: i32) -> Result<FrozenProcess> {
        let proc = Process::new(pid).map_err(|e| proc_err(pid, e))?;
        let stat = proc.stat().map_err(|e| proc_err(pid, e))?;
        if stat.state == 'Z' {
            // A leader that exited while its other threads run is not a zombie.
            let threads = proc.tasks().map(|t| t.count()).unwrap_or(1);
            if threads > 1 {
                return Err(Error::unsupported(
                    format!("process {pid} ({})", stat.comm),
                    format!("its main thread has exited while {} other thread(s) run: not supported yet", threads - 1),
                ));
            }
            // Nothing to seize: a zombie is only its pid and exit status.
            return Ok(FrozenProcess {
                pid,
                ppid: stat.ppid,
                pgid: stat.pgrp,
                sid: stat.session,
                threads: vec![pid],
                stopped: None,
                zombie: Some(stat.exit_code.unwrap_or(0) as u32),
            });
        }
        let mut threads: Vec<i32> = Vec::new();
        let mut done: HashSet<i32> = HashSet::new();
        let mut stopped = None;
        loop {
            let mut new = Vec::new();
            for t in proc.tasks().map_err(|e| proc_err(pid, e))?.flatten() {
                if !done.contains(&t.tid) {
                    new.push(t.tid);
                }
            }
            if new.is_empty() {
                break;
            }
            new.sort_by_key(|&t| (t != pid, t));
            for tid in new {
                crate::cancel::check()?;
                done.insert(tid);
                let kind = match self.stops.get(&tid) {
                    Some(k) => Ok(*k),
                    None => ptrace::seize_and_stop(tid).inspect(|_| self.seized.push(tid)),
                };
                match kind {
                    Ok(kind) => {
                        if let (true, StopKind::GroupStop(sig)) = (tid == pid, kind) {
                            stopped = Some(sig);
                        }
                        threads.push(tid);
                    }
                    // A thread that exited between listing and seizing.
                    Err(_) if std::fs::metadata(format!("/proc/{pid}/task/{tid}")).is_err() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if threads.first() != Some(&pid) {
            return Err(Error::Invalid(format!("process {pid} exited while it was being frozen")));
        }
        // Read ids again now that nothing in the process can change them.
        let stat = proc.stat().map_err(|e| proc_err(pid, e))?;
        Ok(FrozenProcess { pid, ppid: stat.ppid, pgid: stat.pgrp, sid: stat.session, threads, stopped, zombie: None })
    }

    pub fn thread_count(&self) -> usize {
        self.seized.len()
    }

    /// Kill every process of the tree (after a successful dump) and wait until
    /// the kernel has taken them down.
    pub fn kill(mut self) {
        for p in &self.processes {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        let mut tids = self.seized.clone();
        tids.extend(self.processes.iter().map(|p| p.pid).filter(|p| !self.seized.contains(p)));
        reap_all(tids);
        self.seized.clear();
    }
}

impl Drop for FrozenTree {
    fn drop(&mut self) {
        for &tid in &self.seized {
            ptrace::detach(tid);
        }
    }
}

/// Takes the exit of each of `tids` (killed tasks crust traces or forked),
/// so that their real parents can reap them, in whatever order they come:
/// a leader is reported only after its other threads, and the init of a pid
/// namespace only after every other task there, including its own other
/// threads, which for a traced one means after crust took its exit. Gives
/// up after 10 s (a task crust could not take).
pub fn reap_all(mut tids: Vec<i32>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !tids.is_empty() && std::time::Instant::now() < deadline {
        tids.retain(|&tid| matches!(waitpid(Pid::from_raw(tid), Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)), Ok(nix::sys::wait::WaitStatus::StillAlive)));
        if !tids.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Children of every thread of a (frozen) process.
fn children(p: &FrozenProcess) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    let proc = Process::new(p.pid).map_err(|e| proc_err(p.pid, e))?;
    for &tid in &p.threads {
        let children = proc.task_from_tid(tid).and_then(|t| t.children()).map_err(|e| proc_err(p.pid, e))?;
        out.extend(children.into_iter().map(|c| c as i32));
    }
    Ok(out)
}

/// Pids as the tree sees them, in its own pid namespace: what its images
/// hold. crust itself goes on with its own view (the host's) for ptrace and
/// /proc; the images are translated as they are written.
#[derive(Clone, Debug, Default)]
pub struct NsPids(Option<HashMap<i32, i32>>);

impl NsPids {
    /// Every thread of `tree` (in a pid namespace of its own), by the last
    /// number of its NSpid: its id in the innermost namespace, the tree's.
    pub fn read(tree: &FrozenTree) -> Result<NsPids> {
        let mut map = HashMap::new();
        for p in &tree.processes {
            for &tid in &p.threads {
                let path = format!("/proc/{}/task/{tid}/status", p.pid);
                let text = std::fs::read_to_string(&path).ctx(|| format!("reading {path}"))?;
                let inner = text.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|l| l.split_whitespace().last()?.parse().ok());
                let inner = inner.ok_or_else(|| Error::Invalid(format!("{path} has no NSpid line")))?;
                map.insert(tid, inner);
            }
        }
        Ok(NsPids(Some(map)))
    }

    /// The id in the tree's pid namespace of `host`, one of crust's; 0 for
    /// one outside that namespace (a session or group leader outside it,
    /// which the tree sees as 0 too).
    pub fn of(&self, host: i32) -> i32 {
        match &self.0 {
            None => host,
            Some(map) => map.get(&host).copied().unwrap_or(0),
        }
    }

    /// Whether the tree has a pid namespace of its own.
    pub fn translated(&self) -> bool {
        self.0.is_some()
    }
}

/// A cgroup frozen through its freezer (v1 freezer.state or v2 cgroup.freeze);
/// thawed on drop.
struct Freezer {
    dir: PathBuf,
    v1: bool,
    thawed: bool,
}

impl Freezer {
    fn freeze(dir: &Path) -> Result<Freezer> {
        let v1 = dir.join("freezer.state").exists();
        if !v1 && !dir.join("cgroup.freeze").exists() {
            return Err(Error::Invalid(format!("{}: not a cgroup with a freezer (no freezer.state or cgroup.freeze)", dir.display())));
        }
        let f = Freezer { dir: dir.to_path_buf(), v1, thawed: true };
        if f.frozen()? {
            return Err(Error::Invalid(format!(
                "{}: the cgroup is frozen already; thaw it first, or dump without --freeze-cgroup",
                dir.display()
            )));
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let me = [std::process::id() as i32, nix::unistd::getppid().as_raw()];
        if procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).any(|p| me.contains(&p)) {
            return Err(Error::Invalid(format!("{}: crust itself is in this cgroup and would freeze with the tree", dir.display())));
        }
        let mut f = f;
        f.thawed = false;
        f.set(true)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !f.frozen()? {
            if std::time::Instant::now() > deadline {
                return Err(Error::Invalid(format!("{}: the cgroup did not freeze within 10 s", dir.display())));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(f)
    }

    fn set(&self, frozen: bool) -> Result<()> {
        let (file, value) = match (self.v1, frozen) {
            (true, true) => ("freezer.state", "FROZEN"),
            (true, false) => ("freezer.state", "THAWED"),
            (false, true) => ("cgroup.freeze", "1"),
            (false, false) => ("cgroup.freeze", "0"),
        };
        let path = self.dir.join(file);
        std::fs::write(&path, value).ctx(|| format!("writing {value} to {}", path.display()))
    }

    fn frozen(&self) -> Result<bool> {
        let (file, want) = if self.v1 { ("freezer.state", "FROZEN") } else { ("cgroup.events", "frozen 1") };
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
        Ok(text.lines().any(|l| l.trim() == want))
    }

    fn thaw(mut self) -> Result<()> {
        self.thawed = true;
        self.set(false)
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        if !self.thawed {
            let _ = self.set(false);
        }
    }
}
