//! Restartable sequences: glibc registers an rseq area in every thread; the
//! registration is read with ptrace and made again in each restored thread.

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::Result;
use crate::images::load::ThreadImage;
use crate::images::proto::{CoreEntry, RseqEntry};
use crate::ptrace;

pub struct Rseq;

impl Component for Rseq {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let rseq = ptrace::rseq_config(t.tid)?;
        core.thread_core.get_or_insert_with(Default::default).rseq_entry = (rseq.rseq_abi_size != 0).then_some(RseqEntry {
            rseq_abi_pointer: rseq.rseq_abi_pointer,
            rseq_abi_size: rseq.rseq_abi_size,
            signature: rseq.signature,
            rseq_cs_pointer: None,
        });
        Ok(())
    }

    fn restore_thread(&self, t: &mut ThreadRestore, thread: &ThreadImage) -> Result<()> {
        if let Some(rs) = &thread.core.rseq_entry {
            t.task.call("rseq", libc::SYS_rseq, [rs.rseq_abi_pointer, rs.rseq_abi_size as u64, 0, rs.signature as u64, 0, 0])?;
        }
        Ok(())
    }
}
