//! Registers: general-purpose ones and the xstate (FPU, SSE, AVX...), read
//! and set with ptrace; set last of all, just before the tree runs.

use super::{Component, ThreadDump};
use crate::arch;
use crate::error::{Error, Result};
use crate::images::load::{DumpImage, ThreadImage};
use crate::images::proto::CoreEntry;
use crate::ptrace;
use crate::task::Task;

pub struct Registers;

impl Component for Registers {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let info = core.thread_info.get_or_insert_with(Default::default);
        info.gpregs = arch::gpregs(t.rt.saved_regs());
        info.fpregs = arch::fpregs(t.rt.saved_xstate());
        Ok(())
    }

    /// The CPU must have every xstate component the threads used.
    fn problems(&self, img: &DumpImage) -> Vec<String> {
        let supported = cpu_xstate_features();
        let threads = img.processes.iter().flat_map(|p| &p.threads);
        threads
            .filter_map(|t| {
                let used = t.info.fpregs.xsave.as_ref().map_or(0, |x| x.xstate_bv);
                (used & !supported != 0).then(|| {
                    format!(
                        "thread {} uses CPU state components {:#x} that this CPU does not have (it has {supported:#x})",
                        t.tid,
                        used & !supported
                    )
                })
            })
            .collect()
    }

    fn restore_last(&self, task: &Task, thread: &ThreadImage) -> Result<()> {
        // The image's xstate laid over this CPU's, so that what it lacks keeps
        // this CPU's layout.
        let template = ptrace::xstate(task.tid)?;
        let xsave = arch::xsave_buffer(&thread.info.fpregs, &template)
            .map_err(|e| Error::unsupported(format!("thread {}", task.tid), e))?;
        ptrace::set_xstate(task.tid, &xsave)?;
        ptrace::set_regs(task.tid, arch::user_regs(&thread.info.gpregs))
    }
}

/// XSAVE components this CPU supports (CPUID leaf 0xD, sub-leaf 0).
fn cpu_xstate_features() -> u64 {
    let c = std::arch::x86_64::__cpuid_count(0xd, 0);
    (c.edx as u64) << 32 | c.eax as u64
}
