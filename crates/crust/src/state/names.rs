//! Thread names (comm): the process's in task_core_entry, each thread's own
//! in thread_core_entry.

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::Result;
use crate::images::load::ThreadImage;
use crate::images::proto::CoreEntry;
use crate::proc;

pub struct Names;

impl Component for Names {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let comm = proc::read_string(&format!("/proc/{}/task/{}/comm", t.pid, t.tid))?.trim_end_matches('\n').to_string();
        if let Some(tc) = core.tc.as_mut() {
            tc.comm = comm.clone();
        }
        core.thread_core.get_or_insert_with(Default::default).comm = Some(comm);
        Ok(())
    }

    fn restore_thread(&self, t: &mut ThreadRestore, thread: &ThreadImage) -> Result<()> {
        if let Some(comm) = &thread.core.comm {
            let name = t.scratch.reset().put_str(comm)?;
            t.task.call("prctl(PR_SET_NAME)", libc::SYS_prctl, [libc::PR_SET_NAME as u64, name, 0, 0, 0, 0])?;
        }
        Ok(())
    }
}
