//! ptrace plumbing: seizing and releasing tasks, register sets, signal queues.
//!
//! nix covers seize/interrupt/regs/step; the requests it lacks (GETSIGMASK,
//! PEEKSIGINFO, GET_RSEQ_CONFIGURATION, the variable-size XSTATE regset) are
//! thin libc calls here, each an unsafe block that passes only locals.

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
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// The most instructions a classic BPF program may have (BPF_MAXINSNS).
const BPF_MAXINSNS: usize = 4096;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Room for any xstate layout the kernel may hand us (2432 B here, 2688 B on Intel AVX-512).
const XSTATE_MAX: usize = 16 << 10;

/// How a task looked when we stopped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// Running (or sleeping) before we came: our interrupt stopped it.
    Interrupted,
    /// It was already in a group stop (a stopped job), by this signal.
    GroupStop(Signal),
}

/// Seize `tid` and wait until it is in a ptrace stop.
pub fn seize_and_stop(tid: i32) -> Result<StopKind> {
    seize_no_wait(tid)?;
    wait_for_stop(tid)
}

/// waitpid for one traced task, not cut short by a signal to crust: a task
/// left running in the middle of crust's work could not be put back.
pub fn wait_task(pid: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Seize `tid` and ask it to stop, without waiting (its cgroup may be frozen).
pub fn seize_no_wait(tid: i32) -> Result<()> {
    let pid = Pid::from_raw(tid);
    ptrace::seize(pid, ptrace::Options::PTRACE_O_TRACESYSGOOD | suspend_seccomp()).ctx(|| format!("seizing task {tid}"))?;
    ptrace::interrupt(pid).ctx(|| format!("interrupting task {tid}"))
}

/// Whether crust may suspend the seccomp filters of the tasks it traces
/// (PTRACE_O_SUSPEND_SECCOMP, made for checkpoint tools): it needs
/// CAP_SYS_ADMIN and no seccomp mode of its own. The same holds for reading
/// filters with PTRACE_SECCOMP_GET_FILTER.
pub fn can_suspend_seccomp() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        let me = std::process::id() as i32;
        crate::proc::status(me, me).is_ok_and(|st| st.seccomp.unwrap_or(0) == 0 && st.capeff & (1 << 21) /* CAP_SYS_ADMIN */ != 0)
    })
}

/// PTRACE_O_SUSPEND_SECCOMP when crust may set it, else nothing: every
/// syscall crust injects into a task with a filter (at dump and at restore,
/// once its filters are back) then passes, whatever the filter says. A task
/// with a filter is refused when crust may not.
pub fn suspend_seccomp() -> ptrace::Options {
    if can_suspend_seccomp() {
        ptrace::Options::from_bits_retain(libc::PTRACE_O_SUSPEND_SECCOMP)
    } else {
        ptrace::Options::empty()
    }
}

/// One seccomp filter of a stopped thread: its classic BPF program (8-byte
/// sock_filter instructions) and its flags (the kernel tells only
/// SECCOMP_FILTER_FLAG_LOG).
pub struct SeccompFilter {
    pub program: Vec<u8>,
    pub flags: u64,
}

/// The seccomp filters of stopped thread `tid`, oldest first (as the kernel
/// numbers them). Needs [`can_suspend_seccomp`]'s rights.
pub fn seccomp_filters(tid: i32) -> Result<Vec<SeccompFilter>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; BPF_MAXINSNS * 8];
    for index in 0u64.. {
        // SAFETY: buf holds BPF_MAXINSNS instructions, the most a filter has.
        let n = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as *mut libc::c_void, buf.as_mut_ptr()) };
        if n < 0 {
            match Errno::last() {
                Errno::ENOENT => break,
                e => return Err(Error::Ptrace { tid, what: format!("PTRACE_SECCOMP_GET_FILTER of filter {index}: {e}") }),
            }
        }
        let len = (n as usize).min(BPF_MAXINSNS) * 8;
        // struct seccomp_metadata: the filter's index in, its flags out.
        let mut meta = [index, 0u64];
        // SAFETY: meta is the 16-byte struct the request reads and writes.
        let r = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_METADATA, tid, std::mem::size_of_val(&meta) as *mut libc::c_void, meta.as_mut_ptr()) };
        if r < 0 {
            return Err(Error::Ptrace { tid, what: format!("PTRACE_SECCOMP_GET_METADATA of filter {index}: {}", Errno::last()) });
        }
        out.push(SeccompFilter { program: buf[..len].to_vec(), flags: meta[1] });
    }
    Ok(out)
}

/// Wait for the stop that PTRACE_INTERRUPT asked for. A signal that arrives first is
/// passed on (it would have been delivered anyway) and we wait again.
pub fn wait_for_stop(tid: i32) -> Result<StopKind> {
    let pid = Pid::from_raw(tid);
    loop {
        let status = wait_task(pid).ctx(|| format!("waiting for task {tid} to stop"))?;
        match status {
            WaitStatus::PtraceEvent(_, sig, libc::PTRACE_EVENT_STOP) => {
                return Ok(match sig {
                    Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU => StopKind::GroupStop(sig),
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
                return Err(Error::Ptrace { tid, what: "it exited while it was being stopped".into() });
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
    // SAFETY: nix's getregset wants a fixed-size type, and the XSAVE area's size
    // varies by CPU. The kernel writes at most iov_len bytes into `buf`, which
    // `iov` describes and which outlives the call, then sets iov_len to what
    // it wrote; it writes nothing else of ours.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE as usize, &mut iov as *mut libc::iovec) };
    Errno::result(r).ctx(|| format!("reading xstate of task {tid}"))?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn sigmask(tid: i32) -> Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: no wrapper for PTRACE_GETSIGMASK exists. With addr = 8 (the
    // sigset size) the kernel writes exactly 8 bytes into `mask`, a live u64.
    let r = unsafe { libc::ptrace(PTRACE_GETSIGMASK, tid, 8usize, &mut mask as *mut u64) };
    Errno::result(r).ctx(|| format!("reading signal mask of task {tid}"))?;
    Ok(mask)
}

pub fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    // SAFETY: no wrapper for PTRACE_SETSIGMASK exists. With addr = 8 the
    // kernel only reads 8 bytes from `mask`, a live u64.
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
        // SAFETY: no wrapper for PTRACE_PEEKSIGINFO exists. The kernel reads
        // `args` (the struct it expects, repr(C)) and writes at most `nr`
        // siginfos of 128 bytes into `batch`, which has room for exactly `nr`;
        // both are locals that outlive the call.
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
    // SAFETY: no wrapper for PTRACE_GET_RSEQ_CONFIGURATION exists. The kernel
    // writes at most addr = size_of::<RseqConfig>() bytes into `conf`, a live
    // repr(C) struct laid out as struct ptrace_rseq_configuration.
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

pub fn set_xstate(tid: i32, buf: &[u8]) -> Result<()> {
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: as for xstate(): the kernel reads at most iov_len bytes from
    // `buf`, which outlives the call, and writes nothing through that pointer
    // (the *mut is only iovec's type); it may write the length back into
    // `iov`, a live local.
    let r = unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE as usize, &mut iov as *mut libc::iovec) };
    Errno::result(r).ctx(|| format!("setting xstate of task {tid}"))?;
    Ok(())
}
