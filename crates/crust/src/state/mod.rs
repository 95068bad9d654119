//! The state of a process and its threads beside memory and files, one module
//! per kind (signals, credentials, rseq, timers, limits, fs...), each with its
//! dump and restore sides together behind [`Component`]. [`COMPONENTS`] lists
//! them in the order a restore sets them; adding a kind of state is one new
//! module and one line there.

pub mod child_stops;
mod creds;
mod fs;
mod futex;
mod names;
mod personality;
mod posix_timers;
mod prctl;
mod regs;
mod rlimits;
mod rseq;
mod sched;
mod seccomp;
pub mod signals;
mod timers;

use procfs::process::{Stat, Status};

use crate::error::Result;
use crate::files::FileTable;
use crate::images::load::{DumpImage, ProcessImage, ThreadImage};
use crate::images::proto::{CoreEntry, TaskCoreEntry};
use crate::images::ImageDir;
use crate::remote::RemoteThread;
use crate::task::{Scratch, Task};

pub use seccomp::SeccompTable;

/// One thread of a frozen process being dumped.
pub struct ThreadDump<'a> {
    pub pid: i32,
    pub tid: i32,
    /// Syscalls run inside the thread; it also keeps the thread's registers,
    /// xstate and signal mask as they were before crust touched them.
    pub rt: &'a RemoteThread,
    pub status: &'a Status,
    pub stat: &'a Stat,
    pub files: &'a mut FileTable,
    /// The seccomp filters of the tree, each once (seccomp.img).
    pub seccomp: &'a mut SeccompTable,
    pub dir: &'a mut ImageDir,
    /// Bytes of images written so far.
    pub bytes_written: u64,
}

/// One thread of a process being restored, driven by injected syscalls.
pub struct ThreadRestore<'a> {
    pub task: &'a Task,
    pub scratch: &'a mut Scratch,
    pub image: &'a DumpImage,
    pub process: &'a ProcessImage,
}

/// One kind of per-process or per-thread state.
pub trait Component: Sync {
    /// Save this state of one thread into its core image; the leader's core
    /// (with `tc`) also carries what belongs to the whole process.
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()>;

    /// Put back what belongs to the whole process, in its leader, before its
    /// other threads exist.
    fn restore_process(&self, _p: &mut ThreadRestore, _tc: &TaskCoreEntry) -> Result<()> {
        Ok(())
    }

    /// Put back one thread's own part, by syscalls in that thread.
    fn restore_thread(&self, _t: &mut ThreadRestore, _thread: &ThreadImage) -> Result<()> {
        Ok(())
    }

    /// What stands in the way of restoring this state of `img` on this host.
    fn problems(&self, _img: &DumpImage) -> Vec<String> {
        Vec::new()
    }

    /// Set from outside the thread, once crust's scratch area is gone and
    /// just before the tree runs (registers, the signal mask).
    fn restore_last(&self, _task: &Task, _thread: &ThreadImage) -> Result<()> {
        Ok(())
    }
}

/// Every component, in the order a restore sets them: credentials after
/// limits (which need crust's); seccomp filters, then capabilities,
/// securebits and no_new_privs last of what is set inside a thread (crust
/// needs its own capabilities until then), the registers last.
pub static COMPONENTS: &[&dyn Component] = &[
    &fs::Fs,
    &personality::Personality,
    &signals::Signals,
    &rlimits::Rlimits,
    &timers::Itimers,
    &posix_timers::PosixTimers,
    &futex::Futex,
    &rseq::Rseq,
    &names::Names,
    &creds::Creds,
    &sched::Sched,
    &prctl::Prctl,
    &seccomp::Seccomp,
    &creds::Capabilities,
    &regs::Registers,
];

/// Read the images components have of their own (seccomp.img) into `img`.
pub fn load_images(img: &mut DumpImage) -> Result<()> {
    seccomp::load_images(img)
}

/// What stands in the way of restoring `img` here, for every component.
pub fn problems(img: &DumpImage) -> Vec<String> {
    COMPONENTS.iter().flat_map(|c| c.problems(img)).collect()
}

/// Dump every component of one thread into `core`.
pub fn dump_thread(t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
    COMPONENTS.iter().try_for_each(|c| c.dump(t, core))
}

/// Restore the process-wide state of a process in its leader.
pub fn restore_process(p: &mut ThreadRestore) -> Result<()> {
    let tc = &p.process.task;
    COMPONENTS.iter().try_for_each(|c| c.restore_process(p, tc))
}

/// Restore one thread's own state.
pub fn restore_thread(t: &mut ThreadRestore, thread: &ThreadImage) -> Result<()> {
    COMPONENTS.iter().try_for_each(|c| c.restore_thread(t, thread))
}

/// The last settings of one thread, from outside.
pub fn restore_last(task: &Task, thread: &ThreadImage) -> Result<()> {
    COMPONENTS.iter().try_for_each(|c| c.restore_last(task, thread))
}

/// Little-endian u64 words of a buffer read from a task.
fn words(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
}
