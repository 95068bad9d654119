//! ptrace plumbing: seizing and releasing tasks, register sets, signal queues,
//! and syscalls run inside a stopped task.
//!
//! nix covers seize/interrupt/regs/step; the requests it lacks (GETSIGMASK,
//! PEEKSIGINFO, GET_RSEQ_CONFIGURATION, the XSTATE regset) are thin libc calls here.

use std::fs::File;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Context, Error, Result};

const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Room for any xstate layout the kernel may hand us (2432 B here, 2688 B on Intel AVX-512).
const XSTATE_MAX: usize = 16 << 10;

/// How a task looked when we stopped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// Running (or sleeping) before we came: our interrupt stopped it.
    Interrupted,
    /// It was already in a group stop (a stopped job).
    GroupStop,
}

/// Seize `tid` and wait until it is in a ptrace stop.
pub fn seize_and_stop(tid: i32) -> Result<StopKind> {
    let pid = Pid::from_raw(tid);
    ptrace::seize(pid, ptrace::Options::empty()).ctx(|| format!("seizing task {tid}"))?;
    ptrace::interrupt(pid).ctx(|| format!("interrupting task {tid}"))?;
    wait_for_stop(tid)
}

/// Wait for the stop that PTRACE_INTERRUPT asked for. A signal that arrives first is
/// passed on (it would have been delivered anyway) and we wait again.
fn wait_for_stop(tid: i32) -> Result<StopKind> {
    let pid = Pid::from_raw(tid);
    loop {
        let status = waitpid(pid, Some(WaitPidFlag::__WALL)).ctx(|| format!("waiting for task {tid} to stop"))?;
        match status {
            WaitStatus::PtraceEvent(_, sig, libc::PTRACE_EVENT_STOP) => {
                return Ok(match sig {
                    Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU => StopKind::GroupStop,
                    _ => StopKind::Interrupted,
                });
            }
            WaitStatus::Stopped(_, sig) => {
                ptrace::cont(pid, sig).ctx(|| format!("passing signal {sig} on to task {tid}"))?;
            }
            WaitStatus::PtraceEvent(..) | WaitStatus::PtraceSyscall(_) | WaitStatus::Continued(_) | WaitStatus::StillAlive => {
                ptrace::cont(pid, None).ctx(|| format!("resuming task {tid}"))?;
            }
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                return Err(Error::Invalid(format!("task {tid} exited while it was being stopped")));
            }
        }
    }
}

pub fn detach(tid: i32) {
    let _ = ptrace::detach(Pid::from_raw(tid), None);
}

pub fn regs(tid: i32) -> Result<libc::user_regs_struct> {
    ptrace::getregs(Pid::from_raw(tid)).ctx(|| format!("reading registers of task {tid}"))
}

pub fn set_regs(tid: i32, regs: libc::user_regs_struct) -> Result<()> {
    ptrace::setregs(Pid::from_raw(tid), regs).ctx(|| format!("setting registers of task {tid}"))
}

/// The raw XSAVE area of a thread (FPU, SSE, AVX, AVX-512 state).
pub fn xstate(tid: i32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: iov points at a live buffer of iov_len bytes; the kernel shrinks iov_len.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE as usize, &mut iov as *mut libc::iovec) };
    Errno::result(r).ctx(|| format!("reading xstate of task {tid}"))?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn sigmask(tid: i32) -> Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: the kernel writes 8 bytes into `mask`.
    let r = unsafe { libc::ptrace(PTRACE_GETSIGMASK, tid, 8usize, &mut mask as *mut u64) };
    Errno::result(r).ctx(|| format!("reading signal mask of task {tid}"))?;
    Ok(mask)
}

pub fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    // SAFETY: the kernel reads 8 bytes from `mask`.
    let r = unsafe { libc::ptrace(PTRACE_SETSIGMASK, tid, 8usize, &mask as *const u64) };
    Errno::result(r).ctx(|| format!("setting signal mask of task {tid}"))?;
    Ok(())
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Pending signals without dequeuing them: the thread's own queue, or with
/// `shared` the process-wide one. Each is a raw 128-byte siginfo.
pub fn pending_signals(tid: i32, shared: bool) -> Result<Vec<[u8; 128]>> {
    let mut out = Vec::new();
    loop {
        let mut batch = [[0u8; 128]; 32];
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: batch.len() as i32,
        };
        // SAFETY: `batch` has room for `nr` siginfos of 128 bytes.
        let r = unsafe { libc::ptrace(PTRACE_PEEKSIGINFO, tid, &args as *const PeekSiginfoArgs, batch.as_mut_ptr()) };
        let n = Errno::result(r).ctx(|| format!("reading pending signals of task {tid}"))? as usize;
        out.extend_from_slice(&batch[..n]);
        if n < batch.len() {
            return Ok(out);
        }
    }
}

/// A thread's rseq registration as the kernel knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pad: u32,
}

pub fn rseq_config(tid: i32) -> Result<RseqConfig> {
    let mut conf = RseqConfig::default();
    // SAFETY: the kernel writes at most size_of::<RseqConfig>() bytes into `conf`.
    let r = unsafe {
        libc::ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            std::mem::size_of::<RseqConfig>(),
            &mut conf as *mut RseqConfig,
        )
    };
    Errno::result(r).ctx(|| format!("reading rseq configuration of task {tid}"))?;
    Ok(conf)
}

/// Syscalls run by a stopped thread on crust's behalf, at dump time for the state
/// that is only visible from inside (signal handlers, sigaltstack, brk, itimers).
///
/// The thread executes a `syscall` instruction that already exists in its own
/// memory (found in the vdso), with all signals blocked; its registers, signal mask
/// and the scratch bytes used below its stack pointer are put back by `finish`,
/// so nothing of the target is changed.
pub struct RemoteThread {
    tid: i32,
    gadget: u64,
    saved_regs: libc::user_regs_struct,
    saved_mask: u64,
    mem: File,
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
        let scratch = (saved_regs.rsp - RED_ZONE - SCRATCH_LEN as u64) & !0xf;
        if !writable(scratch, scratch + SCRATCH_LEN as u64) {
            return Err(Error::Unsupported(format!(
                "task {tid}: no writable stack below its stack pointer {:#x} for crust's scratch data",
                saved_regs.rsp
            )));
        }
        let mem = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{tid}/mem"))
            .ctx(|| format!("opening memory of task {tid}"))?;
        let mut saved_scratch = vec![0u8; SCRATCH_LEN];
        mem.read_exact_at(&mut saved_scratch, scratch).ctx(|| format!("reading stack of task {tid}"))?;
        let saved_mask = sigmask(tid)?;
        set_sigmask(tid, !0)?;
        Ok(RemoteThread { tid, gadget, saved_regs, saved_mask, mem, scratch, saved_scratch, restored: false })
    }

    pub fn scratch(&self) -> u64 {
        self.scratch
    }

    pub fn read_scratch(&self, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len.min(SCRATCH_LEN)];
        self.mem.read_exact_at(&mut buf, self.scratch).ctx(|| format!("reading scratch of task {}", self.tid))?;
        Ok(buf)
    }

    /// Run one syscall in the thread and return its raw result (negative errno on failure).
    pub fn syscall(&self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let mut r = self.saved_regs;
        r.rax = nr as u64;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        r.rip = self.gadget;
        // Not inside a syscall as far as the kernel's restart logic is concerned.
        r.orig_rax = u64::MAX;
        set_regs(self.tid, r)?;
        let pid = Pid::from_raw(self.tid);
        ptrace::step(pid, None).ctx(|| format!("stepping task {}", self.tid))?;
        match waitpid(pid, Some(WaitPidFlag::__WALL)).ctx(|| format!("waiting for task {}", self.tid))? {
            WaitStatus::Stopped(_, Signal::SIGTRAP) => {}
            other => {
                return Err(Error::Invalid(format!("task {}: unexpected stop {other:?} in an injected syscall", self.tid)))
            }
        }
        let after = regs(self.tid)?;
        if after.rip != self.gadget + 2 {
            return Err(Error::Invalid(format!("task {}: injected syscall ended at {:#x}", self.tid, after.rip)));
        }
        Ok(after.rax as i64)
    }

    /// Put back registers, signal mask and scratch bytes.
    pub fn finish(mut self) -> Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> Result<()> {
        self.restored = true;
        self.mem
            .write_all_at(&self.saved_scratch, self.scratch)
            .ctx(|| format!("restoring stack of task {}", self.tid))?;
        set_regs(self.tid, self.saved_regs)?;
        set_sigmask(self.tid, self.saved_mask)
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
