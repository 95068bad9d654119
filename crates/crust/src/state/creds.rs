//! Credentials of each thread (ids, groups, securebits; capabilities as far
//! as the ids imply them) and the parent-death signal, which a change of
//! credentials clears and so is set after them.

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::Result;
use crate::images::load::ThreadImage;
use crate::images::proto::{CoreEntry, CredsEntry};
use crate::proc;
use crate::task::{Scratch, Task};

pub struct Creds;

impl Component for Creds {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let buf = t.rt.scratch();
        t.rt.call("prctl(PR_GET_PDEATHSIG)", libc::SYS_prctl, [libc::PR_GET_PDEATHSIG as u64, buf, 0, 0, 0, 0])?;
        let pdeath = u32::from_le_bytes(t.rt.read_scratch(4)?.try_into().expect("4 bytes"));
        let secbits = t.rt.call("prctl(PR_GET_SECUREBITS)", libc::SYS_prctl, [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0])?;
        let thread = core.thread_core.get_or_insert_with(Default::default);
        thread.creds = Some(proc::creds(t.status, secbits as u32));
        thread.pdeath_sig = Some(pdeath);
        Ok(())
    }

    fn restore_thread(&self, t: &mut ThreadRestore, thread: &ThreadImage) -> Result<()> {
        if let Some(c) = &thread.core.creds {
            set_ids(t.task, t.scratch, c)?;
        }
        let sig = thread.core.pdeath_sig.unwrap_or(0) as u64;
        t.task.call("prctl(PR_SET_PDEATHSIG)", libc::SYS_prctl, [libc::PR_SET_PDEATHSIG as u64, sig, 0, 0, 0, 0])?;
        Ok(())
    }
}

/// Groups, gids, uids (per thread, as the kernel keeps them), each only if it
/// differs. Capabilities beyond what the ids imply are not set (a dump refuses them).
fn set_ids(task: &Task, scratch: &mut Scratch, c: &CredsEntry) -> Result<()> {
    let st = proc::status(task.pid, task.tid)?;
    if st.groups != c.groups {
        let words: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let a = scratch.reset().put(&words)?;
        task.call("setgroups", libc::SYS_setgroups, [c.groups.len() as u64, a, 0, 0, 0, 0])?;
    }
    if (st.rgid, st.egid, st.sgid) != (c.gid, c.egid, c.sgid) {
        task.call("setresgid", libc::SYS_setresgid, [c.gid as u64, c.egid as u64, c.sgid as u64, 0, 0, 0])?;
    }
    if (st.ruid, st.euid, st.suid) != (c.uid, c.euid, c.suid) {
        task.call("setresuid", libc::SYS_setresuid, [c.uid as u64, c.euid as u64, c.suid as u64, 0, 0, 0])?;
    }
    Ok(())
}
