//! Scheduling: each thread's nice value, policy and priority. The nice value
//! is set again from outside, last.

use super::{Component, ThreadDump};
use crate::error::Result;
use crate::images::load::ThreadImage;
use crate::images::proto::CoreEntry;
use crate::proc;
use crate::task::Task;

pub struct Sched;

impl Component for Sched {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let (policy, prio) = proc::sched(t.tid);
        let thread = core.thread_core.get_or_insert_with(Default::default);
        thread.sched_nice = Some(t.stat.nice as i32);
        thread.sched_policy = Some(policy);
        thread.sched_prio = Some(prio);
        Ok(())
    }

    fn restore_last(&self, task: &Task, thread: &ThreadImage) -> Result<()> {
        if let Some(nice) = thread.core.sched_nice {
            // SAFETY: setpriority of one thread; no memory is passed.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, task.tid as libc::id_t, nice) };
        }
        Ok(())
    }
}
