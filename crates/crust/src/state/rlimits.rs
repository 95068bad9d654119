//! Resource limits of the process, from /proc/PID/limits (prlimit(2) on
//! another user's process needs CAP_SYS_RESOURCE, which root lacks here).

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::Result;
use crate::images::proto::{CoreEntry, TaskCoreEntry};
use crate::proc;

pub struct Rlimits;

impl Component for Rlimits {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        if let Some(tc) = core.tc.as_mut() {
            tc.rlimits = Some(proc::rlimits(t.pid)?);
        }
        Ok(())
    }

    /// Set by the task itself while it still has crust's credentials. A hard
    /// limit above the current one cannot be restored here (no
    /// CAP_SYS_RESOURCE): it stays at the current one.
    fn restore_process(&self, p: &mut ThreadRestore, tc: &TaskCoreEntry) -> Result<()> {
        for (res, l) in tc.rlimits.iter().flat_map(|r| r.rlimits.iter()).enumerate() {
            let cur = p.scratch.reset().put_u64s(&[0, 0])?;
            p.task.call("prlimit64", libc::SYS_prlimit64, [0, res as u64, 0, cur, 0, 0])?;
            let mut now = [0u8; 16];
            p.scratch.read(cur, &mut now)?;
            let hard_now = u64::from_le_bytes(now[8..16].try_into().expect("8 bytes"));
            let max = l.max.min(hard_now);
            let new = p.scratch.put_u64s(&[l.cur.min(max), max])?;
            if let Err(e) = p.task.call("prlimit64", libc::SYS_prlimit64, [0, res as u64, new, 0, 0, 0]) {
                log::warn!("process {}: resource limit {res} not restored: {e}", p.process.pid());
            }
        }
        Ok(())
    }
}
