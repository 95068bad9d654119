//! Freezing a process tree: seize every thread of every process under the root,
//! catching threads and children that appear meanwhile, and let them go again.

use std::collections::HashSet;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use procfs::process::Process;

use crate::error::{Error, Result};
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
    /// The process was a stopped job before we came.
    pub stopped: bool,
    /// A zombie: dead, not yet reaped by its parent; its raw wait status.
    pub zombie: Option<u32>,
}

/// A tree whose every thread is in a ptrace stop. Dropping it lets every thread
/// run on exactly as before (unless it was killed).
pub struct FrozenTree {
    /// Parents before children.
    pub processes: Vec<FrozenProcess>,
    seized: Vec<i32>,
}

fn proc_err(pid: i32, e: procfs::ProcError) -> Error {
    match e {
        procfs::ProcError::NotFound(_) => Error::Invalid(format!("process {pid} does not exist")),
        other => Error::Invalid(format!("reading /proc/{pid}: {other}")),
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
        let mut tree = FrozenTree { processes: Vec::new(), seized: Vec::new() };
        let mut queue = vec![root];
        let mut i = 0;
        while i < queue.len() {
            let pid = queue[i];
            i += 1;
            let p = tree.seize_process(pid)?;
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
            tree.processes.push(p);
        }
        Ok(tree)
    }

    /// Seize all threads of `pid`, again and again until no new thread shows up.
    fn seize_process(&mut self, pid: i32) -> Result<FrozenProcess> {
        let proc = Process::new(pid).map_err(|e| proc_err(pid, e))?;
        let stat = proc.stat().map_err(|e| proc_err(pid, e))?;
        if stat.state == 'Z' {
            // Nothing to seize: a zombie is only its pid and exit status.
            return Ok(FrozenProcess {
                pid,
                ppid: stat.ppid,
                pgid: stat.pgrp,
                sid: stat.session,
                threads: vec![pid],
                stopped: false,
                zombie: Some(stat.exit_code.unwrap_or(0) as u32),
            });
        }
        let mut threads: Vec<i32> = Vec::new();
        let mut done: HashSet<i32> = HashSet::new();
        let mut stopped = false;
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
                match ptrace::seize_and_stop(tid) {
                    Ok(kind) => {
                        self.seized.push(tid);
                        if tid == pid {
                            stopped = kind == StopKind::GroupStop;
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
    /// the kernel has taken them down, non-leader threads first.
    pub fn kill(mut self) {
        for p in &self.processes {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        let mut order: Vec<i32> = self.seized.iter().copied().filter(|t| !self.processes.iter().any(|p| p.pid == *t)).collect();
        order.extend(self.processes.iter().rev().map(|p| p.pid));
        for tid in order {
            // Consume the tracer's exit notification so the real parent can reap.
            let _ = waitpid(Pid::from_raw(tid), Some(WaitPidFlag::__WALL));
        }
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

/// Children of every thread of a (frozen) process.
fn children(p: &FrozenProcess) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for tid in &p.threads {
        let path = format!("/proc/{}/task/{tid}/children", p.pid);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Io { context: format!("reading {path}"), err: e })?;
        out.extend(text.split_whitespace().filter_map(|s| s.parse::<i32>().ok()));
    }
    Ok(out)
}
