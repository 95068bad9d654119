//! Process attributes read and set by prctl and friends: the child-subreaper
//! flag (saved), the THP-disable flag (saved in mm-PID.img), oom_score_adj
//! (saved, written from outside), and membarrier registrations (refused: no
//! image holds them).

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::{Context, Error, Result};
use crate::images::proto::{CoreEntry, TaskCoreEntry};

pub struct Prctl;

// membarrier(2) commands.
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: u64 = 1 << 3;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: u64 = 1 << 5;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: u64 = 1 << 7;

impl Component for Prctl {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let Some(tc) = core.tc.as_mut() else { return Ok(()) };
        let at = t.rt.scratch();
        t.rt.call("prctl(PR_GET_CHILD_SUBREAPER)", libc::SYS_prctl, [libc::PR_GET_CHILD_SUBREAPER as u64, at, 0, 0, 0, 0])?;
        let flag = t.rt.read_scratch(4)?;
        tc.child_subreaper = Some(u32::from_le_bytes(flag[..4].try_into().expect("4 bytes")) != 0);
        // THP disabled (bit 0) is saved from /proc (mm-PID.img's
        // thp_disabled); disabled except where madvised (6.18) has no field.
        let thp = t.rt.call("prctl(PR_GET_THP_DISABLE)", libc::SYS_prctl, [libc::PR_GET_THP_DISABLE as u64, 0, 0, 0, 0, 0])?;
        if thp & !1 != 0 {
            return Err(Error::unsupported(
                format!("process {}", t.pid),
                format!("it set PR_SET_THP_DISABLE with PR_THP_DISABLE_EXCEPT_ADVISED (flags {thp:#x}): not supported yet"),
            ));
        }
        // A private expedited barrier fails with EPERM unless the process
        // registered for it; when it did, it is one harmless barrier. (Global
        // expedited registrations cannot be seen from /proc or by a call.)
        for (cmd, name) in [
            (MEMBARRIER_CMD_PRIVATE_EXPEDITED, "MEMBARRIER_CMD_PRIVATE_EXPEDITED"),
            (MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, "MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE"),
            (MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, "MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ"),
        ] {
            if t.rt.call_raw(libc::SYS_membarrier, [cmd, 0, 0, 0, 0, 0])? == 0 {
                return Err(Error::unsupported(
                    format!("process {}", t.pid),
                    format!("it registered for membarrier {name}: membarrier registrations are not supported yet"),
                ));
            }
        }
        Ok(())
    }

    fn restore_process(&self, p: &mut ThreadRestore, tc: &TaskCoreEntry) -> Result<()> {
        if let Some(disabled) = p.process.mm.thp_disabled {
            p.task.call("prctl(PR_SET_THP_DISABLE)", libc::SYS_prctl, [libc::PR_SET_THP_DISABLE as u64, disabled as u64, 0, 0, 0, 0])?;
        }
        if tc.child_subreaper == Some(true) {
            p.task.call("prctl(PR_SET_CHILD_SUBREAPER)", libc::SYS_prctl, [libc::PR_SET_CHILD_SUBREAPER as u64, 1, 0, 0, 0, 0])?;
        }
        if let Some(adj) = tc.oom_score_adj {
            let path = format!("/proc/{}/oom_score_adj", p.task.tid);
            let now: i32 = std::fs::read_to_string(&path).ctx(|| format!("reading {path}"))?.trim().parse().unwrap_or(0);
            if now != adj {
                std::fs::write(&path, adj.to_string()).ctx(|| format!("restoring oom_score_adj {adj}: writing {path}"))?;
            }
        }
        Ok(())
    }
}
