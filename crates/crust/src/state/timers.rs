//! Interval timers (setitimer: real, virtual, profiling) of the process, read
//! from inside it.

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::Result;
use crate::images::proto::{CoreEntry, ItimerEntry, TaskCoreEntry, TaskTimersEntry};

pub struct Itimers;

const WHICH: [libc::c_int; 3] = [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF];

impl Component for Itimers {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let Some(tc) = core.tc.as_mut() else { return Ok(()) };
        let read = |which: libc::c_int| -> Result<ItimerEntry> {
            let buf = t.rt.scratch();
            t.rt.call("getitimer", libc::SYS_getitimer, [which as u64, buf, 0, 0, 0, 0])?;
            let w: Vec<u64> = super::words(&t.rt.read_scratch(32)?).collect();
            Ok(ItimerEntry { isec: w[0], iusec: w[1], vsec: w[2], vusec: w[3] })
        };
        let [real, virt, prof] = WHICH;
        tc.timers = Some(TaskTimersEntry { real: read(real)?, virt: read(virt)?, prof: read(prof)?, posix: Vec::new() });
        Ok(())
    }

    fn restore_process(&self, p: &mut ThreadRestore, tc: &TaskCoreEntry) -> Result<()> {
        let Some(t) = &tc.timers else { return Ok(()) };
        for (which, it) in WHICH.into_iter().zip([&t.real, &t.virt, &t.prof]) {
            if it.vsec != 0 || it.vusec != 0 {
                let v = p.scratch.reset().put_u64s(&[it.isec, it.iusec, it.vsec, it.vusec])?;
                p.task.call("setitimer", libc::SYS_setitimer, [which as u64, v, 0, 0, 0, 0])?;
            }
        }
        Ok(())
    }
}
