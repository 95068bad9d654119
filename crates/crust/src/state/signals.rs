//! Signals: dispositions (handlers) and signals pending for the process, the
//! mask and pending signals of each thread, and each thread's alternate
//! signal stack. Handlers and the altstack are only visible from inside the
//! task; pending signals and masks come through ptrace.

use nix::sys::signal::Signal;

use super::{posix_timers, Component, ThreadDump, ThreadRestore};
use crate::error::Result;
use crate::images::criu::sigaction_signals;
use crate::images::load::ThreadImage;
use crate::images::proto::{CoreEntry, SaEntry, SiginfoEntry, SignalQueueEntry, TaskCoreEntry, ThreadSasEntry};
use crate::ptrace;
use crate::task::Task;

pub struct Signals;

impl Component for Signals {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let blocked = t.rt.saved_mask();
        if let Some(tc) = core.tc.as_mut() {
            tc.sigactions = sigactions(t)?;
            tc.signals_s = queue(ptrace::pending_signals(t.tid, true)?);
            tc.blk_sigset = blocked;
        }
        let buf = t.rt.scratch();
        t.rt.call("sigaltstack", libc::SYS_sigaltstack, [0, buf, 0, 0, 0, 0])?;
        let b = t.rt.read_scratch(24)?;
        let thread = core.thread_core.get_or_insert_with(Default::default);
        thread.sas = Some(ThreadSasEntry {
            ss_sp: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            ss_flags: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            ss_size: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        });
        thread.blk_sigset = Some(blocked);
        thread.signals_p = queue(ptrace::pending_signals(t.tid, false)?);
        Ok(())
    }

    fn restore_process(&self, p: &mut ThreadRestore, tc: &TaskCoreEntry) -> Result<()> {
        // Every signal waits, blocked, until restore_last sets each thread's
        // own mask: the signals queued here, and those of timers armed later,
        // must not be delivered in the middle of crust's injected syscalls.
        // Threads made after this inherit the mask.
        ptrace::set_sigmask(p.task.tid, !0)?;
        for (sig, sa) in sigaction_signals().zip(&tc.sigactions) {
            let act = p.scratch.reset().put_u64s(&[sa.sigaction, sa.flags, sa.restorer, sa.mask])?;
            p.task.call(&format!("rt_sigaction({sig})"), libc::SYS_rt_sigaction, [sig as u64, act, 0, 8, 0, 0])?;
        }
        let pid = p.process.pid() as u64;
        // A timer's signal is queued again by its restored timer.
        for s in tc.signals_s.iter().flat_map(|q| &q.signals).filter(|s| !posix_timers::queued_by_timer(tc, s)) {
            let info = p.scratch.reset().put(&s.siginfo)?;
            p.task.call("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo, [pid, signo(s), info, 0, 0, 0])?;
        }
        Ok(())
    }

    fn restore_thread(&self, t: &mut ThreadRestore, thread: &ThreadImage) -> Result<()> {
        if let Some(sas) = &thread.core.sas {
            // SS_ONSTACK is the kernel's report, not a setting.
            let flags = sas.ss_flags & !(libc::SS_ONSTACK as u32);
            let ss = t.scratch.reset().put_u64s(&[sas.ss_sp, flags as u64, sas.ss_size])?;
            t.task.call("sigaltstack", libc::SYS_sigaltstack, [ss, 0, 0, 0, 0, 0])?;
        }
        let pid = t.process.pid() as u64;
        let by_timer = |s: &&SiginfoEntry| posix_timers::queued_by_timer(&t.process.task, s);
        for s in thread.core.signals_p.iter().flat_map(|q| &q.signals).filter(|s| !by_timer(s)) {
            let info = t.scratch.reset().put(&s.siginfo)?;
            // Sent from inside: by the ids the images hold, the tree's own.
            let args = [pid, thread.tid as u64, signo(s), info, 0, 0];
            t.task.call("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo, args)?;
        }
        Ok(())
    }

    fn restore_last(&self, task: &Task, thread: &ThreadImage) -> Result<()> {
        ptrace::set_sigmask(task.tid, thread.core.blk_sigset.unwrap_or(0))
    }
}

/// Every disposition, in sigactions order. Only signals /proc says are
/// handled or ignored are asked for; the others are SIG_DFL.
fn sigactions(t: &ThreadDump) -> Result<Vec<SaEntry>> {
    let not_default = t.status.sigcgt | t.status.sigign;
    let buf = t.rt.scratch();
    let mut out = Vec::new();
    for sig in sigaction_signals() {
        if not_default & (1 << (sig - 1)) == 0 {
            out.push(SaEntry::default());
            continue;
        }
        t.rt.call("rt_sigaction", libc::SYS_rt_sigaction, [sig as u64, 0, buf, 8, 0, 0])?;
        let w: Vec<u64> = super::words(&t.rt.read_scratch(32)?).collect();
        out.push(SaEntry { sigaction: w[0], flags: w[1], restorer: w[2], mask: w[3], ..Default::default() });
    }
    Ok(out)
}

fn queue(raw: Vec<[u8; 128]>) -> Option<SignalQueueEntry> {
    (!raw.is_empty()).then(|| SignalQueueEntry { signals: raw.into_iter().map(|s| SiginfoEntry { siginfo: s.to_vec() }).collect() })
}

/// The signal number of a saved siginfo (its first field).
pub(super) fn signo(s: &SiginfoEntry) -> u64 {
    s.siginfo.get(0..4).map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as u64)
}

/// Whether `sig` stops a process with these dispositions and this mask: it
/// is not blocked and its action is the default.
pub fn would_stop(tc: &TaskCoreEntry, blocked: u64, sig: Signal) -> bool {
    let n = sig as u32;
    let default = sigaction_signals()
        .position(|s| s == n)
        .and_then(|i| tc.sigactions.get(i))
        .is_some_and(|sa| sa.sigaction == libc::SIG_DFL as u64);
    default && blocked & (1 << (n - 1)) == 0
}
