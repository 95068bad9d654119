//! Seccomp filters of each thread, in CRIU's format: every filter of the tree
//! once in seccomp.img (its classic BPF program, its flags, and `prev`, the
//! filter installed before it), each thread's newest filter and mode in its
//! core. Filters are read with PTRACE_SECCOMP_GET_FILTER, oldest first.
//!
//! The kernel does not tell whether two threads share a filter object or
//! hold equal copies (kcmp has no seccomp kind); the two behave alike, so
//! equal programs with equal flags at the same place of equal chains are one
//! filter here. On restore, the part of the chain every thread of a process
//! has is installed in the leader before its threads are made, which inherit
//! it (shared, as after a TSYNC or a clone); the rest in each thread.
//!
//! Installing happens while crust still drives the task: its tracer options
//! carry PTRACE_O_SUSPEND_SECCOMP (see [`crate::ptrace::suspend_seccomp`]),
//! so no filter stops a syscall crust injects later; they act once the task
//! is let go. Strict mode is refused at dump (an injected call would kill
//! the task).

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::{Error, Result};
use crate::images::load::{read_one, DumpImage, ThreadImage};
use crate::images::proto::{CoreEntry, SeccompEntry, SeccompFilter, SeccompMode, TaskCoreEntry};
use crate::images::{ImageDir, Kind};
use crate::ptrace;

pub struct Seccomp;

/// The only filter flag the kernel reports back (PTRACE_SECCOMP_GET_METADATA).
const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
const SECCOMP_SET_MODE_FILTER: u64 = 1;

/// The filters met in a tree being dumped, each once; a filter's id is its
/// position, as in seccomp.img.
#[derive(Default)]
pub struct SeccompTable {
    filters: Vec<SeccompFilter>,
}

impl SeccompTable {
    /// The id of the newest filter of `chain` (oldest first), adding the
    /// filters not met yet.
    fn intern(&mut self, chain: &[ptrace::SeccompFilter]) -> Option<u32> {
        let mut prev = None;
        for f in chain {
            let entry = SeccompFilter { filter: f.program.clone(), prev, flags: Some(f.flags as u32) };
            let id = match self.filters.iter().position(|e| *e == entry) {
                Some(i) => i,
                None => {
                    self.filters.push(entry);
                    self.filters.len() - 1
                }
            };
            prev = Some(id as u32);
        }
        prev
    }

    /// seccomp.img, when any filter was met.
    pub fn write(&self, dir: &mut ImageDir) -> Result<u64> {
        if self.filters.is_empty() {
            return Ok(0);
        }
        let mut w = dir.writer("seccomp.img", Kind::Seccomp)?;
        w.entry(&SeccompEntry { seccomp_filters: self.filters.clone() })?;
        w.finish()
    }
}

/// seccomp.img of a dump being restored.
struct Filters(Vec<SeccompFilter>);

/// Read seccomp.img, if the dump has one, into `img`.
pub fn load_images(img: &mut DumpImage) -> Result<()> {
    let path = img.dir.join("seccomp.img");
    if path.exists() {
        let entry: SeccompEntry = read_one(&path, Kind::Seccomp)?;
        img.extras.insert(Filters(entry.seccomp_filters));
    }
    Ok(())
}

/// The filters of a thread, oldest first (by id); empty without any.
fn chain<'a>(img: &'a DumpImage, thread: &ThreadImage) -> Result<Vec<(u32, &'a SeccompFilter)>> {
    let bad = |what: String| Error::image(img.dir.join(format!("core-{}.img", thread.tid)), what);
    match thread.core.seccomp_mode.map(SeccompMode::try_from) {
        None | Some(Ok(SeccompMode::Disabled)) => return Ok(Vec::new()),
        Some(Ok(SeccompMode::Filter)) => {}
        Some(Ok(SeccompMode::Strict)) => return Err(bad("seccomp strict mode is not supported".into())),
        Some(Err(_)) => return Err(bad("unknown seccomp mode".into())),
    }
    let all = img.extras.get::<Filters>().map(|f| f.0.as_slice()).unwrap_or_default();
    let mut out = Vec::new();
    let mut next = thread.core.seccomp_filter;
    while let Some(id) = next {
        let f = all.get(id as usize).ok_or_else(|| bad(format!("seccomp filter {id} is not in seccomp.img")))?;
        if out.len() >= all.len() {
            return Err(bad("the chain of seccomp filters in seccomp.img loops".into()));
        }
        out.push((id, f));
        next = f.prev;
    }
    if out.is_empty() {
        return Err(bad("seccomp filter mode without a filter".into()));
    }
    out.reverse();
    Ok(out)
}

/// How many filters, from the oldest, every thread of the process has in common.
fn common_len(img: &DumpImage, threads: &[ThreadImage]) -> Result<usize> {
    let chains = threads.iter().map(|t| chain(img, t)).collect::<Result<Vec<_>>>()?;
    let Some((first, rest)) = chains.split_first() else { return Ok(0) };
    let mut n = first.len();
    for c in rest {
        n = n.min(first.iter().zip(c).take_while(|(a, b)| a.0 == b.0).count());
    }
    Ok(n)
}

/// Install `filters` in order, by seccomp(2) in the thread. It still has
/// crust's CAP_SYS_ADMIN, which installing without no_new_privs needs.
fn install(t: &mut ThreadRestore, filters: &[(u32, &SeccompFilter)]) -> Result<()> {
    for (id, f) in filters {
        let flags = f.flags.unwrap_or(0);
        let insns = f.filter.len() / 8;
        let program = t.scratch.reset().put(&f.filter)?;
        // struct sock_fprog: the instruction count (u16, padded), the program's address.
        let mut fprog = (insns as u64).to_le_bytes().to_vec();
        fprog.extend(program.to_le_bytes());
        let at = t.scratch.put(&fprog)?;
        t.task.call(&format!("seccomp filter {id}"), libc::SYS_seccomp, [SECCOMP_SET_MODE_FILTER, flags as u64, at, 0, 0, 0])?;
    }
    Ok(())
}

impl Component for Seccomp {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        // Strict mode and crust's lack of rights are refused before the dump
        // injects anything (dump::check_isolation).
        if t.status.seccomp != Some(SeccompMode::Filter as u32) {
            return Ok(());
        }
        let filters = ptrace::seccomp_filters(t.tid)?;
        if let Some(f) = filters.iter().find(|f| f.flags & !(SECCOMP_FILTER_FLAG_LOG as u64) != 0) {
            return Err(Error::unsupported(
                format!("process {} thread {}", t.pid, t.tid),
                format!("a seccomp filter has flags {:#x}: only SECCOMP_FILTER_FLAG_LOG is supported", f.flags),
            ));
        }
        let thread = core.thread_core.get_or_insert_with(Default::default);
        thread.seccomp_mode = Some(SeccompMode::Filter as i32);
        thread.seccomp_filter = t.seccomp.intern(&filters);
        Ok(())
    }

    fn restore_process(&self, p: &mut ThreadRestore, _tc: &TaskCoreEntry) -> Result<()> {
        let threads = &p.process.threads;
        let Some(leader) = threads.first() else { return Ok(()) };
        let n = common_len(p.image, threads)?;
        let shared = chain(p.image, leader)?;
        install(p, &shared[..n])
    }

    fn restore_thread(&self, t: &mut ThreadRestore, thread: &ThreadImage) -> Result<()> {
        let n = common_len(t.image, &t.process.threads)?;
        let own = chain(t.image, thread)?;
        install(t, &own[n..])
    }

    fn problems(&self, img: &DumpImage) -> Vec<String> {
        let mut out = Vec::new();
        for p in img.processes.iter().filter(|p| p.zombie.is_none()) {
            for thread in &p.threads {
                match chain(img, thread) {
                    Err(e) => out.push(e.to_string()),
                    Ok(c) if c.is_empty() => {}
                    Ok(c) => {
                        if !ptrace::can_suspend_seccomp() {
                            out.push(format!(
                                "thread {} of process {} has seccomp filters: restoring them needs CAP_SYS_ADMIN and no seccomp filter of crust's own (PTRACE_O_SUSPEND_SECCOMP)",
                                thread.tid,
                                p.pid()
                            ));
                        }
                        if let Some((id, f)) = c.iter().find(|(_, f)| f.flags.unwrap_or(0) & !SECCOMP_FILTER_FLAG_LOG != 0) {
                            out.push(format!("seccomp filter {id}: flags {:#x} are not supported", f.flags.unwrap_or(0)));
                        }
                        if let Some((id, _)) = c.iter().find(|(_, f)| f.filter.is_empty() || f.filter.len() % 8 != 0 || f.filter.len() > 4096 * 8) {
                            out.push(format!("seccomp filter {id}: its program is not a whole number of 1 to 4096 instructions"));
                        }
                    }
                }
            }
        }
        out
    }
}
