//! Making the tasks of a tree: the root as a stopped fork of crust with the
//! root's pid, then children and threads by clone3 inside their parents, each
//! with its id (set_tid); zombies, and process groups and sessions.

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::Proc;
use crate::error::{Context, Error, Result};
use crate::ptrace;
use crate::task::{Scratch, Task};

/// crust forks itself with `pid`, in new namespaces of the kinds `namespaces`
/// names, and the child waits, stopped, for crust to take it over; as a
/// child of crust's parent if `sibling`. Returns its pid as crust sees it:
/// `pid`, or in a new pid namespace (where it is `pid`, 1) whatever pid was
/// free.
pub(super) fn spawn_stopped(pid: i32, namespaces: nix::sched::CloneFlags, sibling: bool) -> Result<i32> {
    if sibling {
        return spawn_sibling(pid, namespaces);
    }
    // set_tid names the pid in the innermost namespace first: only that one.
    let set_tid = [pid as libc::pid_t];
    let flags = namespaces.bits() as u32 as u64;
    let args = CloneArgs { flags, exit_signal: libc::SIGCHLD as u64, set_tid: set_tid.as_ptr() as u64, set_tid_size: 1, ..Default::default() };
    // SAFETY: the kernel reads `args` (size given) and the one pid `set_tid`
    // points at, both alive on this stack for the call. Without CLONE_VM and
    // with no stack given, clone3 is a fork: the child runs on its own copy of
    // this stack and memory. crust may have other threads (the pages check, a
    // test harness), whose locks the child could inherit held: so the child
    // below only makes single syscalls (nix's thin wrappers: no allocation, no
    // lock, only errno is touched) until crust, its tracer, replaces all of
    // its memory; it never returns from this function.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    if r == 0 {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        let _ = nix::sys::ptrace::traceme();
        let _ = nix::sys::signal::raise(Signal::SIGSTOP);
        // SAFETY: _exit(2) ends the child at once, running no atexit handler
        // nor destructor of the state it copied from crust; reached only if
        // the child is let go without being taken over.
        unsafe { libc::_exit(127) };
    }
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EEXIST) => Error::Invalid(format!("pid {pid} was taken while crust restored it")),
            _ => Error::Io { context: format!("creating process {pid}"), err: e },
        });
    }
    let host = r as i32;
    wait_new_task(host)?;
    Ok(host)
}

/// criu's rst_sibling, which runc asks for: the root is a child of crust's
/// parent (CLONE_PARENT), which waits on it as on any child of its own. Not
/// being crust's child, it cannot make crust its tracer (PTRACE_TRACEME
/// names the parent): it waits, on a pidfd of crust (readable once crust is
/// gone; a pid would not do, crust has none in a new pid namespace), until
/// crust seizes it (with EXITKILL: a crust that dies takes it along) and
/// stops it. Its parent's death does not end it before: that parent gets it
/// only once it runs.
fn spawn_sibling(pid: i32, namespaces: nix::sched::CloneFlags) -> Result<i32> {
    // Held to the end of this function: the child has its own copy.
    let crust_pidfd = rustix::process::pidfd_open(rustix::process::getpid(), rustix::process::PidfdFlags::empty())
        .map_err(|e| Error::Io { context: "pidfd_open of crust itself".into(), err: e.into() })?;
    let crust = std::os::fd::AsRawFd::as_raw_fd(&crust_pidfd);
    let set_tid = [pid as libc::pid_t];
    let args = CloneArgs {
        // clone3 takes no exit signal with CLONE_PARENT: the child's is
        // crust's own (SIGCHLD), as its parent expects of a child.
        flags: libc::CLONE_PARENT as u64 | namespaces.bits() as u32 as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: as in spawn_stopped: the kernel reads `args` and `set_tid`,
    // alive on this stack; the child is a fork that only makes single
    // syscalls (kill, nanosleep: no allocation, no lock) until crust takes
    // it over and replaces its memory, and never returns from here.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    if r == 0 {
        let mut gone = libc::pollfd { fd: crust, events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes the pollfd on this stack; _exit
        // ends the child without running anything it copied from crust.
        unsafe {
            while libc::poll(&mut gone, 1, -1) != 1 {}
            libc::_exit(127);
        }
    }
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EEXIST) => Error::Invalid(format!("pid {pid} was taken while crust restored it")),
            _ => Error::Io { context: format!("creating process {pid} as a sibling of crust"), err: e },
        });
    }
    let host = r as i32;
    let task = Pid::from_raw(host);
    let taken = nix::sys::ptrace::seize(task, nix::sys::ptrace::Options::PTRACE_O_EXITKILL)
        .and_then(|()| nix::sys::ptrace::interrupt(task))
        .ctx(|| format!("taking over the new process {pid}"));
    if let Err(e) = taken {
        let _ = nix::sys::signal::kill(task, Signal::SIGKILL);
        return Err(e);
    }
    wait_new_task(host)?;
    Ok(host)
}

/// The first stop of a task created under ptrace.
pub(super) fn wait_new_task(tid: i32) -> Result<()> {
    match waitpid(Pid::from_raw(tid), Some(WaitPidFlag::__WALL)).ctx(|| format!("waiting for new task {tid}"))? {
        WaitStatus::Stopped(_, Signal::SIGSTOP) | WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP) => Ok(()),
        other => Err(Error::Ptrace { tid, what: format!("a new task did not stop as expected: {other:?}") }),
    }
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

impl CloneArgs {
    /// The struct as clone3 reads it: its fields in order, each a u64.
    fn words(&self) -> [u64; 11] {
        let a = self;
        [a.flags, a.pidfd, a.child_tid, a.parent_tid, a.exit_signal, a.stack, a.stack_size, a.tls, a.set_tid, a.set_tid_size, a.cgroup]
    }
}

/// clone3 inside `task`, giving the new task id `id` (in the task's pid
/// namespace); returns its id as crust sees it.
pub(super) fn clone_in(task: &Task, scratch: &mut Scratch, id: i32, flags: u64, exit_signal: u64) -> Result<i32> {
    let set_tid = scratch.reset().put(&id.to_le_bytes())?;
    let args = CloneArgs { flags, exit_signal, set_tid, set_tid_size: 1, ..Default::default() };
    let addr = scratch.put_u64s(&args.words())?;
    let what = format!("clone3 of task {id}");
    task.call_clone(&what, libc::SYS_clone3, [addr, std::mem::size_of::<CloneArgs>() as u64, 0, 0, 0, 0]).map_err(|e| match e {
        Error::InTask { errno: Errno::EEXIST, .. } => Error::Invalid(format!("pid {id} was taken while crust restored it")),
        other => other,
    })
}

/// A zombie is made by letting a new child die the way the original did; its
/// parent, stopped under crust, has not reaped it when the tree resumes.
pub(super) fn make_zombie(task: Task, scratch: &mut Scratch, status: u32) -> Result<()> {
    let sig = status & 0x7f;
    // The loader let only exit codes and signals 1 to 64 through.
    let mask = (1..=64).contains(&sig).then(|| 1u64 << (sig - 1));
    if sig == 0 {
        return task.call_to_death(libc::SYS_exit_group, [((status >> 8) & 0xff) as u64, 0, 0, 0, 0, 0]);
    }
    // A fatal signal: default action, unblocked, no core file.
    let no_core = rustix::process::Rlimit { current: Some(0), maximum: Some(0) };
    if let Some(pid) = rustix::process::Pid::from_raw(task.pid) {
        let _ = rustix::process::prlimit(Some(pid), rustix::process::Resource::Core, no_core);
    }
    let mask = mask.ok_or_else(|| Error::image("pstree.img", format!("a zombie's exit status {status:#x} names no signal")))?;
    ptrace::set_sigmask(task.tid, !mask)?;
    // SIGKILL and SIGSTOP have no disposition to set (always the default).
    if sig != libc::SIGKILL as u32 && sig != libc::SIGSTOP as u32 {
        let default_action = scratch.reset().put_u64s(&[libc::SIG_DFL as u64, 0, 0, 0])?;
        task.call(&format!("rt_sigaction({sig})"), libc::SYS_rt_sigaction, [sig as u64, default_action, 0, 8, 0, 0])?;
    }
    // The signal is sent from inside: by the id the task has there.
    let pid = task.call("getpid", libc::SYS_getpid, [0; 6])?;
    task.call_to_death(libc::SYS_tgkill, [pid, pid, sig as u64, 0, 0, 0])
}

/// Process groups: leaders make their groups first, then members join. The
/// group of a shell job (the root's) is crust's own when `in_crust_group`,
/// so that the restoring shell's job control (Ctrl-Z, fg) reaches the job
/// through crust; else a group of its own, led by its leader if that is in
/// the tree, by the root if not.
pub(super) fn set_process_groups(procs: &[Proc], in_crust_group: bool) -> Result<()> {
    let in_tree = |pid: u32| procs.iter().any(|p| p.image.pstree.pid == pid);
    let root = procs[0].image.pstree.pid;
    let job_group = procs[0].image.pstree.pgid;
    let group_of = |pgid: u32| match pgid == job_group {
        true if in_crust_group => None,
        true if !in_tree(job_group) => Some(root),
        _ => in_tree(pgid).then_some(pgid),
    };
    let mut order: Vec<&Proc> = procs.iter().collect();
    order.sort_by_key(|p| group_of(p.image.pstree.pgid) != Some(p.image.pstree.pid));
    for p in order {
        let Some(pgid) = group_of(p.image.pstree.pgid) else { continue };
        // Asked inside: the group's id there (the tree's pid namespace).
        if p.leader.call("getpgid", libc::SYS_getpgid, [0; 6])? != pgid as u64 {
            p.leader.call("setpgid", libc::SYS_setpgid, [0, pgid as u64, 0, 0, 0, 0])?;
        }
    }
    Ok(())
}

