//! POSIX timers (timer_create) of a process: each timer's id, clock, signal,
//! sigev_value and notify target, from /proc/PID/timers, with its time left,
//! interval and overrun read by timer_gettime and timer_getoverrun inside the
//! process. A restore makes them again in the leader once every thread exists
//! (a SIGEV_THREAD_ID timer names its thread), with the same ids through
//! prctl(PR_TIMER_CREATE_RESTORE_IDS) (Linux 6.16+), and arms each with the
//! time it had left: a timer comes back with as long to run as it had, as
//! /proc does not tell a TIMER_ABSTIME timer from a relative one.
//!
//! A timer whose signal was pending at the dump (its siginfo is saved with
//! the others, SI_TIMER and its id) is made to queue it again itself: it is
//! armed to expire at once, on the period grid it had (TIMER_ABSTIME at the
//! last period's start), so that, as in the kernel it came from, it queues
//! no other signal until that one is taken, and then counts the periods
//! missed meanwhile as the signal's overruns and goes on at the same phase.
//! [`super::signals`] leaves that siginfo alone, so the signal is there once.
//! The overrun count of the signal last delivered (timer_getoverrun) cannot
//! be given to a new timer (timer_settime zeroes it): a dump that meets a
//! non-zero one refuses it.

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::{Error, Result};
use crate::images::load::{DumpImage, ThreadImage};
use crate::images::proto::{CoreEntry, PosixTimerEntry, SiginfoEntry, TaskCoreEntry};
use crate::proc;

pub struct PosixTimers;

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const RESTORE_IDS_OFF: u64 = 0;
const RESTORE_IDS_ON: u64 = 1;
const RESTORE_IDS_GET: u64 = 2;

const SIGEV_SIGNAL: u32 = 0;
const SIGEV_NONE: u32 = 1;
const SIGEV_THREAD_ID: u32 = 4;

const NSEC: u64 = 1_000_000_000;
const SI_TIMER: i32 = -2;
const TIMER_ABSTIME: u64 = 1;

impl Component for PosixTimers {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let Some(timers) = core.tc.as_mut().and_then(|tc| tc.timers.as_mut()) else { return Ok(()) };
        let path = format!("/proc/{}/timers", t.pid);
        let listed = parse(&proc::read_string(&path)?).map_err(|what| Error::io_other(format!("reading {path}"), what))?;
        let who = format!("process {} ({})", t.pid, t.status.name);
        // A CPU clock names its task as the process does: by its id in the
        // tree's pid namespace.
        let pids = &t.files.pids;
        let threads: Vec<i32> = proc_threads(t.pid)?.into_iter().map(|tid| pids.of(tid)).collect();
        let pid = pids.of(t.pid);
        // /proc lists the newest first; the image keeps them in the order
        // they were made, which a restore follows, so /proc lists them alike.
        for mut e in listed.into_iter().rev() {
            check_clock(&e, pid, &threads).map_err(|what| Error::unsupported(&who, format!("POSIX timer {}: {what}", e.it_id)))?;
            // The thread it signals, as the process names it.
            e.notify_thread_id = e.notify_thread_id.map(|tid| pids.of(tid) as _);
            let buf = t.rt.scratch();
            t.rt.call("timer_gettime", libc::SYS_timer_gettime, [e.it_id as u64, buf, 0, 0, 0, 0])?;
            let w: Vec<u64> = super::words(&t.rt.read_scratch(32)?).collect();
            (e.isec, e.insec, e.vsec, e.vnsec) = (w[0], w[1], w[2], w[3]);
            e.overrun = t.rt.call("timer_getoverrun", libc::SYS_timer_getoverrun, [e.it_id as u64, 0, 0, 0, 0, 0])? as u32;
            if e.overrun != 0 {
                let what = format!(
                    "POSIX timer {}: its last signal came with {} overruns (timer_getoverrun), a count a restored timer cannot be given back: not supported",
                    e.it_id, e.overrun
                );
                return Err(Error::unsupported(&who, what));
            }
            timers.posix.push(e);
        }
        Ok(())
    }

    /// In the leader, after every thread of the process exists.
    fn restore_thread(&self, t: &mut ThreadRestore, _thread: &ThreadImage) -> Result<()> {
        let Some(timers) = &t.process.task.timers else { return Ok(()) };
        if t.task.tid != t.task.pid || timers.posix.is_empty() {
            return Ok(());
        }
        let prctl = |what: &str, on: u64| t.task.call(what, libc::SYS_prctl, [PR_TIMER_CREATE_RESTORE_IDS, on, 0, 0, 0, 0]);
        prctl("prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)", RESTORE_IDS_ON)?;
        let made = timers.posix.iter().try_for_each(|e| create(t, e));
        prctl("prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)", RESTORE_IDS_OFF)?;
        made?;
        for e in &timers.posix {
            check_times(t, e)?;
            if signal_pending(t, e) {
                fire(t, e)?;
            } else {
                arm(t, e)?;
            }
        }
        Ok(())
    }

    fn problems(&self, img: &DumpImage) -> Vec<String> {
        let with_timers = img.processes.iter().find(|p| p.task.timers.as_ref().is_some_and(|t| !t.posix.is_empty()));
        let Some(p) = with_timers else { return Vec::new() };
        // SAFETY: a prctl that only reads a flag of crust's own process.
        let r = unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS as i32, RESTORE_IDS_GET, 0, 0, 0) };
        if r >= 0 {
            return Vec::new();
        }
        vec![format!(
            "process {} has POSIX timers, which are made again with their ids by prctl(PR_TIMER_CREATE_RESTORE_IDS): this kernel lacks it (Linux 6.16+ has it): {}",
            p.pid(),
            std::io::Error::last_os_error()
        )]
    }
}

/// timer_create with the saved id, which the kernel takes from the timer_t
/// passed in while PR_TIMER_CREATE_RESTORE_IDS is on.
fn create(t: &mut ThreadRestore, e: &PosixTimerEntry) -> Result<()> {
    let bad = |what: String| Error::image(core_image(t), format!("POSIX timer {}: {what}", e.it_id));
    let (notify, tid) = match e.it_sigev_notify {
        SIGEV_SIGNAL | SIGEV_NONE => (e.it_sigev_notify, 0),
        SIGEV_THREAD_ID => (SIGEV_THREAD_ID, e.notify_thread_id.ok_or_else(|| bad("SIGEV_THREAD_ID without a thread".into()))?),
        n => return Err(bad(format!("notify kind {n}"))),
    };
    // struct sigevent: sigev_value (8 bytes), sigev_signo, sigev_notify, the
    // thread id, padded to 64 bytes.
    let mut sev = [0u8; 64];
    sev[0..8].copy_from_slice(&e.sival_ptr.to_le_bytes());
    sev[8..12].copy_from_slice(&e.si_signo.to_le_bytes());
    sev[12..16].copy_from_slice(&notify.to_le_bytes());
    sev[16..20].copy_from_slice(&tid.to_le_bytes());
    let scratch = t.scratch.reset();
    let sev_addr = scratch.put(&sev)?;
    let id_addr = scratch.put(&e.it_id.to_le_bytes())?;
    let what = format!("timer_create of POSIX timer {} (clock {})", e.it_id, e.clock_id as i32);
    t.task.call(&what, libc::SYS_timer_create, [e.clock_id as i32 as i64 as u64, sev_addr, id_addr, 0, 0, 0])?;
    let mut got = [0u8; 4];
    t.scratch.read(id_addr, &mut got)?;
    if u32::from_le_bytes(got) != e.it_id {
        return Err(Error::Invalid(format!("{what} made timer {} instead", u32::from_le_bytes(got))));
    }
    Ok(())
}

/// Times a timespec can hold.
fn check_times(t: &ThreadRestore, e: &PosixTimerEntry) -> Result<()> {
    if e.vnsec >= NSEC || e.insec >= NSEC || e.vsec > i64::MAX as u64 || e.isec > i64::MAX as u64 {
        let what = format!("POSIX timer {}: times {}.{} and {}.{}", e.it_id, e.vsec, e.vnsec, e.isec, e.insec);
        return Err(Error::image(core_image(t), what));
    }
    Ok(())
}

fn core_image(t: &ThreadRestore) -> std::path::PathBuf {
    t.image.dir.join(format!("core-{}.img", t.process.pid()))
}

/// timer_settime with the saved time left and interval; a timer with no
/// time left stays disarmed.
fn arm(t: &mut ThreadRestore, e: &PosixTimerEntry) -> Result<()> {
    if e.vsec == 0 && e.vnsec == 0 {
        return Ok(());
    }
    let spec = t.scratch.reset().put_u64s(&[e.isec, e.insec, e.vsec, e.vnsec])?;
    t.task.call(&format!("timer_settime of POSIX timer {}", e.it_id), libc::SYS_timer_settime, [e.it_id as u64, 0, spec, 0, 0, 0])?;
    Ok(())
}

/// Arm the timer to expire now, at the start of the period it was in (the
/// kernel forwards a periodic timer from there when its signal is taken).
fn fire(t: &mut ThreadRestore, e: &PosixTimerEntry) -> Result<()> {
    let now = t.scratch.reset().put_u64s(&[0, 0])?;
    let what = format!("clock_gettime({}) for POSIX timer {}", e.clock_id as i32, e.it_id);
    t.task.call(&what, libc::SYS_clock_gettime, [e.clock_id as i32 as i64 as u64, now, 0, 0, 0, 0])?;
    let mut b = [0u8; 16];
    t.scratch.read(now, &mut b)?;
    let w: Vec<u64> = super::words(&b).collect();
    let now = w[0].saturating_mul(NSEC).saturating_add(w[1]);
    let interval = e.isec.saturating_mul(NSEC).saturating_add(e.insec);
    let left = e.vsec.saturating_mul(NSEC).saturating_add(e.vnsec);
    // A CPU clock of a new process is near 0: never before its 1st ns.
    let at = now.saturating_sub(interval.saturating_sub(left)).max(1);
    let spec = t.scratch.reset().put_u64s(&[e.isec, e.insec, at / NSEC, at % NSEC])?;
    let what = format!("timer_settime of POSIX timer {} (its signal was pending)", e.it_id);
    t.task.call(&what, libc::SYS_timer_settime, [e.it_id as u64, TIMER_ABSTIME, spec, 0, 0, 0])?;
    Ok(())
}

/// Whether the signal of timer `e` was pending in the process or one of
/// its threads.
fn signal_pending(t: &ThreadRestore, e: &PosixTimerEntry) -> bool {
    let threads = t.process.threads.iter().flat_map(|th| &th.core.signals_p);
    let mut queued = t.process.task.signals_s.iter().chain(threads).flat_map(|q| &q.signals);
    e.it_sigev_notify != SIGEV_NONE && queued.any(|s| timer_id(s) == Some((e.it_id, e.si_signo)))
}

/// Whether a saved pending signal is one a timer of the process queued,
/// which restoring the timer queues again.
pub fn queued_by_timer(tc: &TaskCoreEntry, s: &SiginfoEntry) -> bool {
    let posix = tc.timers.iter().flat_map(|t| &t.posix);
    let mut timers = posix.filter(|e| e.it_sigev_notify != SIGEV_NONE);
    timer_id(s).is_some_and(|id| timers.any(|e| (e.it_id, e.si_signo) == id))
}

/// The timer id and signal of a timer's siginfo (si_code SI_TIMER).
fn timer_id(s: &SiginfoEntry) -> Option<(u32, u32)> {
    let word = |at: usize| Some(u32::from_le_bytes(s.siginfo.get(at..at + 4)?.try_into().ok()?));
    (word(8)? as i32 == SI_TIMER).then_some((word(16)?, word(0)?))
}

/// The timers /proc/PID/timers lists, times not filled in yet:
/// "ID: 3", "signal: 14/00007ffd12345678", "notify: signal/tid.1234", "ClockID: 1".
fn parse(text: &str) -> std::result::Result<Vec<PosixTimerEntry>, String> {
    let mut out: Vec<PosixTimerEntry> = Vec::new();
    for line in text.lines() {
        let (key, value) = line.split_once(':').ok_or_else(|| format!("line {line:?}"))?;
        let value = value.trim();
        let bad = || format!("{key} {value:?}");
        if key == "ID" {
            out.push(PosixTimerEntry { it_id: value.parse().map_err(|_| bad())?, ..Default::default() });
            continue;
        }
        let e = out.last_mut().ok_or_else(|| format!("{key} before any ID"))?;
        match key {
            "signal" => {
                let (signo, value) = value.split_once('/').ok_or_else(bad)?;
                e.si_signo = signo.parse().map_err(|_| bad())?;
                e.sival_ptr = u64::from_str_radix(value, 16).map_err(|_| bad())?;
            }
            "notify" => {
                let (kind, target) = value.split_once('/').ok_or_else(bad)?;
                let (whom, id) = target.split_once('.').ok_or_else(bad)?;
                e.it_sigev_notify = match (kind, whom) {
                    ("signal", "pid") => SIGEV_SIGNAL,
                    ("none", "pid") => SIGEV_NONE,
                    ("signal", "tid") => SIGEV_THREAD_ID,
                    _ => return Err(format!("notify kind {value:?}")),
                };
                if e.it_sigev_notify == SIGEV_THREAD_ID {
                    e.notify_thread_id = Some(id.parse().map_err(|_| bad())?);
                }
            }
            "ClockID" => e.clock_id = value.parse::<i32>().map_err(|_| bad())? as u32,
            _ => return Err(format!("unknown field {key:?}")),
        }
    }
    Ok(out)
}

/// Whether the timer's clock exists again in the restored process: a fixed
/// clock, or the CPU time of this process or of one of its threads. A
/// thread's own CPU clock (CLOCK_THREAD_CPUTIME_ID) counts the thread that
/// made the timer, which /proc does not tell when there are several.
fn check_clock(e: &PosixTimerEntry, pid: i32, threads: &[i32]) -> std::result::Result<(), String> {
    let clock = e.clock_id as i32;
    if clock >= 0 {
        return Ok(());
    }
    // A CPU clock: !pid << 3 | per-thread (4) | kind (0 prof, 1 virt, 2 sched).
    let owner = !(clock >> 3);
    let per_thread = clock & 4 != 0;
    match (owner, per_thread) {
        (0, false) => Ok(()),
        (0, true) if threads.len() == 1 => Ok(()),
        (0, true) => Err(format!(
            "it runs on the CPU clock of the thread that made it (CLOCK_THREAD_CPUTIME_ID), which /proc does not tell among {} threads: not supported",
            threads.len()
        )),
        (p, false) if p == pid => Ok(()),
        (p, true) if threads.contains(&p) => Ok(()),
        (p, _) => Err(format!("it runs on the CPU clock of task {p}, outside process {pid}: not supported")),
    }
}

/// The thread ids of a process.
fn proc_threads(pid: i32) -> Result<Vec<i32>> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|err| Error::Io { context: format!("reading {dir}"), err })?;
    Ok(entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
}
