//! The process's execution domain (personality(2)), set in the leader before
//! its threads are made, so that they inherit it.

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::Result;
use crate::images::proto::{CoreEntry, TaskCoreEntry};
use crate::proc;

pub struct Personality;

impl Component for Personality {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        if let Some(tc) = core.tc.as_mut() {
            tc.personality = proc::personality(t.pid)?;
        }
        Ok(())
    }

    fn restore_process(&self, p: &mut ThreadRestore, tc: &TaskCoreEntry) -> Result<()> {
        p.task.call("personality", libc::SYS_personality, [tc.personality as u64, 0, 0, 0, 0, 0])?;
        Ok(())
    }
}
