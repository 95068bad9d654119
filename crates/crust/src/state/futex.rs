//! What the kernel does with futexes when a thread exits: the address it
//! clears and wakes (set_tid_address) and the robust futex list.

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::Result;
use crate::images::load::ThreadImage;
use crate::images::proto::CoreEntry;
use crate::proc;

pub struct Futex;

impl Component for Futex {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let buf = t.rt.scratch();
        t.rt.call("prctl(PR_GET_TID_ADDRESS)", libc::SYS_prctl, [libc::PR_GET_TID_ADDRESS as u64, buf, 0, 0, 0, 0])?;
        let clear_tid_addr = super::words(&t.rt.read_scratch(8)?).next().unwrap_or(0);
        core.thread_info.get_or_insert_with(Default::default).clear_tid_addr = clear_tid_addr;
        let (head, len) = proc::robust_list(t.tid)?;
        let tc = core.thread_core.get_or_insert_with(Default::default);
        (tc.futex_rla, tc.futex_rla_len) = (head, len);
        Ok(())
    }

    fn restore_thread(&self, t: &mut ThreadRestore, thread: &ThreadImage) -> Result<()> {
        t.task.call("set_tid_address", libc::SYS_set_tid_address, [thread.info.clear_tid_addr, 0, 0, 0, 0, 0])?;
        let c = &thread.core;
        if c.futex_rla_len != 0 {
            t.task.call("set_robust_list", libc::SYS_set_robust_list, [c.futex_rla, c.futex_rla_len as u64, 0, 0, 0, 0])?;
        }
        Ok(())
    }
}
