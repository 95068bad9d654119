//! Syscalls executed by a stopped task on crust's behalf.
//!
//! The task is made to run one `syscall` instruction that exists in its own
//! memory (in the vdso, so nothing has to be written into the task), with the
//! number and arguments in its registers, between its syscall-entry and
//! syscall-exit stops.

use std::fs::File;
use std::os::unix::fs::FileExt;

use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::error::{Context, Error, Result};
use crate::ptrace::{regs, set_regs, set_sigmask, sigmask, wait_task};

/// Point the task at the gadget with a syscall's number and arguments loaded.
fn load_call(tid: i32, base: &libc::user_regs_struct, gadget: u64, nr: i64, args: [u64; 6]) -> Result<()> {
    let mut r = *base;
    (r.rax, r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (nr as u64, args[0], args[1], args[2], args[3], args[4], args[5]);
    r.rip = gadget;
    // Not inside a syscall, as far as the kernel's restart logic is concerned.
    r.orig_rax = u64::MAX;
    set_regs(tid, r)
}

/// Run one syscall in stopped task `tid`, starting from registers `base`.
/// Returns the raw result (negative errno on failure) and, when the syscall
/// created a task that ptrace attached (fork/clone under TRACEFORK/TRACECLONE),
/// its id.
pub fn syscall(tid: i32, base: &libc::user_regs_struct, gadget: u64, nr: i64, args: [u64; 6]) -> Result<(i64, Option<i32>)> {
    load_call(tid, base, gadget, nr, args)?;
    let pid = Pid::from_raw(tid);
    let mut created = None;
    // Run to the syscall's entry stop, then to its exit stop. (Not single-step:
    // a tracer that dies mid-way would leave the trap flag armed in the task.)
    let (mut syscall_stops, mut group_stops) = (0, 0);
    while syscall_stops < 2 {
        ptrace::syscall(pid, None).ctx(|| format!("resuming task {tid} into a syscall"))?;
        match wait_task(pid).ctx(|| format!("waiting for task {tid}"))? {
            WaitStatus::PtraceSyscall(_) => syscall_stops += 1,
            WaitStatus::PtraceEvent(_, _, ev)
                if ev == libc::PTRACE_EVENT_FORK || ev == libc::PTRACE_EVENT_CLONE || ev == libc::PTRACE_EVENT_VFORK =>
            {
                let new = ptrace::getevent(pid).ctx(|| format!("reading new task id from task {tid}"))?;
                created = Some(new as i32);
            }
            // A stopped job's task, let go for the syscall, reports its group
            // stop again on the way; it goes on when resumed once more.
            WaitStatus::PtraceEvent(_, sig, libc::PTRACE_EVENT_STOP)
                if group_stops < 8 && matches!(sig, Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU) =>
            {
                group_stops += 1
            }
            other => {
                return Err(Error::Ptrace { tid, what: format!("unexpected stop {other:?} in an injected syscall (nr {nr})") })
            }
        }
    }
    let after = regs(tid)?;
    if after.rip != gadget + 2 {
        return Err(Error::Ptrace { tid, what: format!("injected syscall {nr} ended at {:#x}", after.rip) });
    }
    Ok((after.rax as i64, created))
}

/// Run a syscall that ends the task (exit_group, or a fatal signal sent to
/// itself), passing on any signal it stops with, until it is dead.
pub fn syscall_to_death(tid: i32, base: &libc::user_regs_struct, gadget: u64, nr: i64, args: [u64; 6]) -> Result<()> {
    load_call(tid, base, gadget, nr, args)?;
    let pid = Pid::from_raw(tid);
    let mut sig = None;
    loop {
        ptrace::cont(pid, sig).ctx(|| format!("resuming task {tid}"))?;
        match wait_task(pid).ctx(|| format!("waiting for task {tid}"))? {
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => return Ok(()),
            WaitStatus::Stopped(_, s) => sig = Some(s),
            _ => sig = None,
        }
    }
}

/// Turn a raw syscall result into a Result naming what failed.
pub fn check(tid: i32, what: &str, r: i64) -> Result<u64> {
    if (-4095..0).contains(&r) {
        Err(Error::InTask { tid, call: what.to_string(), errno: nix::errno::Errno::from_raw(-r as i32) })
    } else {
        Ok(r as u64)
    }
}

/// The memory of a task, read and written through /proc/PID/mem (which ignores
/// page protection).
pub struct TaskMem {
    tid: i32,
    file: File,
}

impl TaskMem {
    pub fn open(tid: i32) -> Result<TaskMem> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{tid}/mem"))
            .ctx(|| format!("opening memory of task {tid}"))?;
        Ok(TaskMem { tid, file })
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, addr).ctx(|| format!("reading memory of task {} at {addr:#x}", self.tid))
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.file.write_all_at(data, addr).ctx(|| format!("writing memory of task {} at {addr:#x}", self.tid))
    }
}

/// Injected syscalls at dump time, for state only visible from inside the task
/// (signal handlers, sigaltstack, brk, itimers). All signals stay blocked while
/// they run; registers, signal mask and the scratch bytes used below the stack
/// pointer are put back by `finish` (or on drop), so the task is left as it was.
pub struct RemoteThread {
    tid: i32,
    gadget: u64,
    saved_regs: libc::user_regs_struct,
    saved_mask: u64,
    saved_xstate: Vec<u8>,
    mem: TaskMem,
    scratch: u64,
    saved_scratch: Vec<u8>,
    restored: bool,
}

/// Bytes of scratch memory a remote call may use for its results.
pub const SCRATCH_LEN: usize = 256;
/// The x86-64 ABI lets leaf code use 128 bytes below %rsp; stay clear of them.
const RED_ZONE: u64 = 128;

impl RemoteThread {
    /// `gadget` is the address of a `syscall` instruction in the thread's memory;
    /// `writable` says whether an address range is mapped writable in the task.
    pub fn start(tid: i32, gadget: u64, writable: impl Fn(u64, u64) -> bool) -> Result<RemoteThread> {
        let saved_regs = regs(tid)?;
        let scratch = saved_regs.rsp.wrapping_sub(RED_ZONE + SCRATCH_LEN as u64) & !0xf;
        if !writable(scratch, scratch + SCRATCH_LEN as u64) {
            return Err(Error::unsupported(
                format!("task {tid}"),
                format!("no writable stack below its stack pointer {:#x} for crust's scratch data", saved_regs.rsp),
            ));
        }
        let mem = TaskMem::open(tid)?;
        let mut saved_scratch = vec![0u8; SCRATCH_LEN];
        mem.read(scratch, &mut saved_scratch)?;
        let saved_mask = sigmask(tid)?;
        let saved_xstate = crate::ptrace::xstate(tid)?;
        set_sigmask(tid, !0)?;
        Ok(RemoteThread { tid, gadget, saved_regs, saved_mask, saved_xstate, mem, scratch, saved_scratch, restored: false })
    }

    /// The thread's registers as they were before crust ran anything in it.
    pub fn saved_regs(&self) -> &libc::user_regs_struct {
        &self.saved_regs
    }

    /// Its signal mask as it was (all signals are blocked meanwhile).
    pub fn saved_mask(&self) -> u64 {
        self.saved_mask
    }

    /// Its xstate (FPU, SSE, AVX...) as it was before crust ran anything in it.
    pub fn saved_xstate(&self) -> &[u8] {
        &self.saved_xstate
    }

    pub fn scratch(&self) -> u64 {
        self.scratch
    }

    pub fn read_scratch(&self, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len.min(SCRATCH_LEN)];
        self.mem.read(self.scratch, &mut buf)?;
        Ok(buf)
    }

    /// Run one syscall; its raw result (a negative errno when it failed).
    pub fn call_raw(&self, nr: i64, args: [u64; 6]) -> Result<i64> {
        Ok(syscall(self.tid, &self.saved_regs, self.gadget, nr, args)?.0)
    }

    /// Run one syscall; a failure is an error naming `what`.
    pub fn call(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let (r, _) = syscall(self.tid, &self.saved_regs, self.gadget, nr, args)?;
        check(self.tid, what, r)
    }

    pub fn finish(mut self) -> Result<()> {
        self.restore()
    }

    /// Every part is attempted, whatever fails: the first error is returned.
    fn restore(&mut self) -> Result<()> {
        self.restored = true;
        let stack = self.mem.write(self.scratch, &self.saved_scratch);
        let regs = set_regs(self.tid, self.saved_regs);
        let mask = set_sigmask(self.tid, self.saved_mask);
        stack.and(regs).and(mask)
    }
}

impl Drop for RemoteThread {
    fn drop(&mut self) {
        if !self.restored {
            if let Err(e) = self.restore() {
                log::error!("task {}: could not put its state back: {e}", self.tid);
            }
        }
    }
}
