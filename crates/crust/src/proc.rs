//! Small readers of /proc and of per-task state crust can query from outside.

use procfs::process::{Process, Stat, Status};

use crate::error::{Context, Error, Result};
use crate::images::proto::{CredsEntry, RlimitEntry, TaskRlimitsEntry};

pub fn process(pid: i32) -> Result<Process> {
    Process::new(pid).map_err(|e| Error::io_other(format!("process {pid}"), e))
}

pub fn stat(pid: i32, tid: i32) -> Result<Stat> {
    process(pid)?
        .task_from_tid(tid)
        .and_then(|t| t.stat())
        .map_err(|e| Error::io_other(format!("reading /proc/{pid}/task/{tid}/stat"), e))
}

pub fn status(pid: i32, tid: i32) -> Result<Status> {
    process(pid)?
        .task_from_tid(tid)
        .and_then(|t| t.status())
        .map_err(|e| Error::io_other(format!("reading /proc/{pid}/task/{tid}/status"), e))
}

/// What procfs read from /proc, as the I/O error it comes from: a missing
/// or forbidden file keeps its errno, anything procfs could not parse says so.
pub fn io_error(e: procfs::ProcError) -> std::io::Error {
    match e {
        procfs::ProcError::Io(err, _) => err,
        procfs::ProcError::NotFound(_) => std::io::Error::from_raw_os_error(libc::ENOENT),
        procfs::ProcError::PermissionDenied(_) => std::io::Error::from_raw_os_error(libc::EACCES),
        other => std::io::Error::other(other.to_string()),
    }
}

/// A process's directory in /proc by name: a pid, or "self".
pub fn process_at(pid: &str) -> std::io::Result<Process> {
    Process::new_with_root(format!("/proc/{pid}").into()).map_err(io_error)
}

pub fn read_string(path: &str) -> Result<String> {
    std::fs::read_to_string(path).ctx(|| format!("reading {path}"))
}

/// A 64-bit capability set as CRIU stores it: two 32-bit words, low first.
fn cap_words(v: u64) -> Vec<u32> {
    vec![v as u32, (v >> 32) as u32]
}

/// Credentials of a thread (securebits come from inside the task, see dump).
pub fn creds(st: &Status, secbits: u32) -> CredsEntry {
    CredsEntry {
        uid: st.ruid,
        gid: st.rgid,
        euid: st.euid,
        egid: st.egid,
        suid: st.suid,
        sgid: st.sgid,
        fsuid: st.fuid,
        fsgid: st.fgid,
        cap_inh: cap_words(st.capinh),
        cap_prm: cap_words(st.capprm),
        cap_eff: cap_words(st.capeff),
        cap_bnd: cap_words(st.capbnd.unwrap_or(0)),
        cap_amb: cap_words(st.capamb.unwrap_or(0)),
        no_new_privs: Some(st.nonewprivs.unwrap_or(0) as u32),
        secbits,
        groups: st.groups.clone(),
        ..Default::default()
    }
}

/// Resource limits of a process, from /proc/PID/limits (prlimit(2) on another
/// user's process needs CAP_SYS_RESOURCE, which root lacks here), in
/// RLIMIT_* order.
pub fn rlimits(pid: i32) -> Result<TaskRlimitsEntry> {
    use procfs::process::{Limit, LimitValue};
    let l = process(pid)?.limits().map_err(|e| Error::io_other(format!("reading /proc/{pid}/limits"), e))?;
    let value = |v: &LimitValue| match v {
        LimitValue::Unlimited => libc::RLIM_INFINITY,
        LimitValue::Value(n) => *n,
    };
    let entry = |x: &Limit| RlimitEntry { cur: value(&x.soft_limit), max: value(&x.hard_limit) };
    let ordered = [
        &l.max_cpu_time,
        &l.max_file_size,
        &l.max_data_size,
        &l.max_stack_size,
        &l.max_core_file_size,
        &l.max_resident_set,
        &l.max_processes,
        &l.max_open_files,
        &l.max_locked_memory,
        &l.max_address_space,
        &l.max_file_locks,
        &l.max_pending_signals,
        &l.max_msgqueue_size,
        &l.max_nice_priority,
        &l.max_realtime_priority,
        &l.max_realtime_timeout,
    ];
    Ok(TaskRlimitsEntry { rlimits: ordered.into_iter().map(entry).collect() })
}

/// The saved auxiliary vector as (type, value) words, up to and including AT_NULL.
pub fn auxv(pid: i32) -> Result<Vec<u64>> {
    let path = format!("/proc/{pid}/auxv");
    let raw = std::fs::read(&path).ctx(|| format!("reading {path}"))?;
    let mut words: Vec<u64> =
        raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    if let Some(end) = words.chunks_exact(2).position(|p| p[0] == 0) {
        words.truncate(end * 2 + 2);
    }
    Ok(words)
}

pub fn personality(pid: i32) -> Result<u32> {
    let text = read_string(&format!("/proc/{pid}/personality"))?;
    u32::from_str_radix(text.trim(), 16)
        .map_err(|_| Error::io_other(format!("reading /proc/{pid}/personality"), format!("unexpected {text:?}")))
}

/// The robust futex list head of a thread.
pub fn robust_list(tid: i32) -> Result<(u64, u32)> {
    let mut head: u64 = 0;
    let mut len: libc::size_t = 0;
    // SAFETY: no wrapper exists. The kernel writes one pointer-sized value
    // into `head` and one size_t into `len`, both locals alive for the call
    // and of those sizes (u64 is a pointer's size on x86-64); nothing else.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head as *mut u64, &mut len as *mut libc::size_t) };
    nix::errno::Errno::result(r).ctx(|| format!("reading robust futex list of task {tid}"))?;
    Ok((head, len as u32))
}

/// Inode of one of a process's namespaces (e.g. "pid", "net").
pub fn ns_inode(pid: i32, ns: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}")).ok().map(|m| m.ino())
}

/// The namespace `ns` of thread `tid` of process `pid`: namespaces belong to
/// threads (one may unshare alone), /proc/PID/ns shows the leader's only.
pub fn thread_ns_inode(pid: i32, tid: i32, ns: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/task/{tid}/ns/{ns}")).ok().map(|m| m.ino())
}

/// Scheduling policy of a thread, with SCHED_RESET_ON_FORK if it is set
/// (the policy field of /proc/PID/stat leaves that flag out; its real-time
/// priority is there, see [`Stat::rt_priority`]).
pub fn sched_policy(tid: i32) -> u32 {
    // SAFETY: no wrapper exists (nix, rustix); the call takes a tid by value
    // and passes no memory.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    policy.max(0) as u32
}

/// Scheduling policy (as [`sched_policy`]) and real-time priority of a thread.
pub fn sched(tid: i32) -> (u32, u32) {
    let prio = stat(tid, tid).ok().and_then(|s| s.rt_priority).unwrap_or(0);
    (sched_policy(tid), prio)
}

/// "process PID (comm)", as refusals name a process.
pub fn who(pid: i32) -> String {
    let comm = read_string(&format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("process {pid} ({})", comm.trim())
}
