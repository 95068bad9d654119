//! The stop of a stopped child as its parent knows it: when a child stops,
//! the kernel keeps a report for the parent's waitpid(WUNTRACED) until the
//! parent collects it, and sends the parent SIGCHLD. CRIU's images say a
//! process is stopped but not whether its parent has collected the report;
//! crust's notes (crust-meta.json, `stops_collected`) do.
//!
//! Dump: the parent is asked, by a waitid(WNOWAIT) run inside it, whether a
//! report is waiting (WNOWAIT leaves it there). Restore: the child is let go
//! first, stopped, while its parent is still held; the stop makes a fresh
//! report and a SIGCHLD, and the parent then collects the report if it had
//! before, and the SIGCHLD leaves it again unless one was pending at dump.

use crate::error::{Error, Result};
use crate::images::load::ProcessImage;
use crate::remote::RemoteThread;
use crate::task::{Scratch, Task};

// waitid(2) options (include/uapi/linux/wait.h).
const P_PID: u64 = 1;
const WNOHANG: u64 = 1;
const WSTOPPED: u64 = 2;
const WNOWAIT: u64 = 0x0100_0000;
/// Where si_pid lies in a siginfo_t (after signo, errno and code, the union
/// is 8-byte aligned).
const SI_PID_AT: usize = 16;
const SIGINFO_LEN: usize = 128;

/// Dump side: which of `children` (stopped processes whose parent is the
/// process of `parent`'s thread) have a stop report still waiting for it.
pub fn uncollected(parent: &RemoteThread, children: &[i32]) -> Result<Vec<i32>> {
    let mut waiting = Vec::new();
    for &child in children {
        let info = parent.scratch();
        // A report for another child cannot answer: the call names this one.
        parent.call("waitid(WNOWAIT)", libc::SYS_waitid, [P_PID, child as u64, info, WSTOPPED | WNOHANG | WNOWAIT, 0, 0])?;
        let b = parent.read_scratch(SI_PID_AT + 4)?;
        let si_pid = i32::from_le_bytes(b[SI_PID_AT..SI_PID_AT + 4].try_into().expect("4 bytes"));
        if si_pid == child {
            waiting.push(child);
        }
    }
    Ok(waiting)
}

/// Restore side, once `child` was let go stopped and before `parent` runs:
/// waits for the kernel to tell the parent of the stop, then collects the
/// report again if the parent had collected it when dumped, and drops the
/// SIGCHLD unless one was pending then.
pub fn settle(parent: &Task, scratch: &mut Scratch, parent_image: &ProcessImage, child: i32, collected: bool) -> Result<()> {
    let info = scratch.reset().put(&[0u8; SIGINFO_LEN])?;
    let reported = || -> Result<bool> {
        parent.call("waitid(WNOWAIT)", libc::SYS_waitid, [P_PID, child as u64, info, WSTOPPED | WNOHANG | WNOWAIT, 0, 0])?;
        let mut b = [0u8; 4];
        scratch.read(info + SI_PID_AT as u64, &mut b)?;
        Ok(i32::from_le_bytes(b) == child)
    };
    // The report is there once every thread of the child stopped; the
    // SIGCHLD follows it (none with SA_NOCLDSTOP).
    let signalled = !stop_needs_no_signal(parent_image);
    wait_for(child, "its parent to hear it stopped", || Ok(reported()? && (!signalled || sigchld_queued(parent.tid)?)))?;
    if collected {
        parent.call("waitid(WSTOPPED)", libc::SYS_waitid, [P_PID, child as u64, info, WSTOPPED | WNOHANG, 0, 0])?;
    }
    if signalled && !sigchld_pending(parent_image) {
        let set = scratch.put_u64s(&[1 << (libc::SIGCHLD - 1)])?;
        let no_wait = scratch.put_u64s(&[0, 0])?;
        parent.call("rt_sigtimedwait(SIGCHLD)", libc::SYS_rt_sigtimedwait, [set, info, no_wait, 8, 0, 0])?;
    }
    Ok(())
}

/// Polls `done` for up to 5 s.
fn wait_for(child: i32, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done()? {
        if std::time::Instant::now() > deadline {
            return Err(Error::Ptrace { tid: child, what: format!("a restored stopped process: timed out waiting for {what}") });
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    Ok(())
}

/// Whether SIGCHLD is pending for the whole process `pid` (ShdPnd).
fn sigchld_queued(pid: i32) -> Result<bool> {
    let status = crate::proc::read_string(&format!("/proc/{pid}/status"))?;
    let shd = status.lines().find_map(|l| l.strip_prefix("ShdPnd:")).map(str::trim).unwrap_or("0");
    Ok(u64::from_str_radix(shd, 16).unwrap_or(0) & (1 << (libc::SIGCHLD - 1)) != 0)
}

/// Whether the parent's SIGCHLD action ignores it or has SA_NOCLDSTOP: a
/// child's stop sends it no signal then (do_notify_parent_cldstop).
fn stop_needs_no_signal(p: &ProcessImage) -> bool {
    let at = crate::images::criu::sigaction_signals().position(|s| s == libc::SIGCHLD as u32);
    at.and_then(|i| p.task.sigactions.get(i))
        .is_some_and(|sa| sa.sigaction == libc::SIG_IGN as u64 || sa.flags & libc::SA_NOCLDSTOP as u64 != 0)
}

/// Whether SIGCHLD was pending in the process (or its leader) when dumped.
fn sigchld_pending(p: &ProcessImage) -> bool {
    let sigchld = |q: &Option<crate::images::proto::SignalQueueEntry>| {
        q.iter().flat_map(|q| &q.signals).any(|s| super::signals::signo(s) == libc::SIGCHLD as u64)
    };
    sigchld(&p.task.signals_s) || p.threads.first().is_some_and(|t| sigchld(&t.core.signals_p))
}
