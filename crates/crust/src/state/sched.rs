//! Scheduling: each thread's nice value, policy and priority. The nice value
//! is set again from outside, last.

use super::{Component, ThreadDump};
use crate::error::{Error, Result};
use crate::images::load::ThreadImage;
use crate::images::proto::CoreEntry;
use crate::proc;
use crate::task::Task;

pub struct Sched;

impl Component for Sched {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let policy = proc::sched_policy(t.tid);
        // What sched_getparam gives: 0 unless the policy is a real-time one.
        let prio = t.stat.rt_priority.unwrap_or(0);
        let thread = core.thread_core.get_or_insert_with(Default::default);
        thread.sched_nice = Some(t.stat.nice as i32);
        thread.sched_policy = Some(policy);
        thread.sched_prio = Some(prio);
        Ok(())
    }

    fn restore_last(&self, task: &Task, thread: &ThreadImage) -> Result<()> {
        // The policy first: sched_setscheduler keeps the nice value, which
        // setpriority then sets (for every policy; only normal ones use it).
        if let Some(policy) = thread.core.sched_policy {
            let now = proc::sched(task.tid);
            let prio = thread.core.sched_prio.unwrap_or(0);
            if now != (policy, prio) {
                let param = libc::sched_param { sched_priority: prio as i32 };
                // SAFETY: sched_setscheduler of one thread with a valid sched_param.
                if unsafe { libc::sched_setscheduler(task.tid, policy as i32, &param) } != 0 {
                    return Err(Error::io_other(
                        format!("thread {}", task.tid),
                        format!("restoring scheduling policy {policy} priority {prio}: {}", std::io::Error::last_os_error()),
                    ));
                }
            }
        }
        if let Some(nice) = thread.core.sched_nice {
            if let Some(tid) = rustix::process::Pid::from_raw(task.tid) {
                let _ = rustix::process::setpriority_process(Some(tid), nice);
            }
        }
        Ok(())
    }
}
