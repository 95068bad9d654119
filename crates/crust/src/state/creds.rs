//! Credentials of each thread and the parent-death signal, which a change of
//! credentials clears and so is set after them: ids and groups first
//! ([`Creds`]), keeping crust's capabilities across the change of uid
//! (SECBIT_NO_SETUID_FIXUP); capabilities (inheritable, ambient, bounding,
//! permitted, effective), securebits and no_new_privs last of what is set in
//! the thread ([`Capabilities`]), since they may take away what crust needs.

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::Result;
use crate::images::load::{DumpImage, ThreadImage};
use crate::images::proto::{CoreEntry, CredsEntry};
use crate::proc;
use crate::task::{Scratch, Task};

pub struct Creds;

impl Component for Creds {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        let buf = t.rt.scratch();
        t.rt.call("prctl(PR_GET_PDEATHSIG)", libc::SYS_prctl, [libc::PR_GET_PDEATHSIG as u64, buf, 0, 0, 0, 0])?;
        let pdeath = u32::from_le_bytes(t.rt.read_scratch(4)?.try_into().expect("4 bytes"));
        let secbits = t.rt.call("prctl(PR_GET_SECUREBITS)", libc::SYS_prctl, [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0])?;
        let thread = core.thread_core.get_or_insert_with(Default::default);
        thread.creds = Some(proc::creds(t.status, secbits as u32));
        thread.pdeath_sig = Some(pdeath);
        Ok(())
    }

    fn restore_thread(&self, t: &mut ThreadRestore, thread: &ThreadImage) -> Result<()> {
        if let Some(c) = &thread.core.creds {
            set_ids(t.task, t.scratch, c)?;
        }
        let sig = thread.core.pdeath_sig.unwrap_or(0) as u64;
        t.task.call("prctl(PR_SET_PDEATHSIG)", libc::SYS_prctl, [libc::PR_SET_PDEATHSIG as u64, sig, 0, 0, 0, 0])?;
        Ok(())
    }
}

/// Groups, gids, uids (per thread, as the kernel keeps them), each only if it
/// differs. A change of uid keeps the capabilities ([`Capabilities`] sets them).
/// The ids are compared as crust sees them (as the images keep them) and
/// set from inside the task, through its user namespace's maps (the
/// identity in crust's own).
fn set_ids(task: &Task, scratch: &mut Scratch, c: &CredsEntry) -> Result<()> {
    let st = proc::status(task.pid, task.tid)?;
    let (uids, gids) = (IdMap::of(task.tid, "uid_map")?, IdMap::of(task.tid, "gid_map")?);
    if st.groups != c.groups {
        let inside: Vec<u32> = c.groups.iter().map(|&g| gids.inside(g)).collect::<Result<_>>()?;
        let words: Vec<u8> = inside.iter().flat_map(|g| g.to_le_bytes()).collect();
        let a = scratch.reset().put(&words)?;
        task.call("setgroups", libc::SYS_setgroups, [c.groups.len() as u64, a, 0, 0, 0, 0])?;
    }
    if (st.rgid, st.egid, st.sgid) != (c.gid, c.egid, c.sgid) {
        let [g, e, s] = [c.gid, c.egid, c.sgid].map(|id| gids.inside(id).map(u64::from));
        task.call("setresgid", libc::SYS_setresgid, [g?, e?, s?, 0, 0, 0])?;
    }
    if (st.ruid, st.euid, st.suid) != (c.uid, c.euid, c.suid) {
        let [u, e, s] = [c.uid, c.euid, c.suid].map(|id| uids.inside(id).map(u64::from));
        task.call("prctl(PR_SET_SECUREBITS)", libc::SYS_prctl, [libc::PR_SET_SECUREBITS as u64, SECBIT_NO_SETUID_FIXUP, 0, 0, 0, 0])?;
        task.call("setresuid", libc::SYS_setresuid, [u?, e?, s?, 0, 0, 0])?;
    }
    Ok(())
}

/// A task's /proc/TID/uid_map or gid_map: (inside, outside, count) lines.
struct IdMap {
    path: String,
    extents: Vec<(u32, u32, u32)>,
}

impl IdMap {
    fn of(tid: i32, which: &str) -> Result<IdMap> {
        let path = format!("/proc/{tid}/{which}");
        let text = std::fs::read_to_string(&path).map_err(|err| crate::error::Error::Io { context: format!("reading {path}"), err })?;
        let extents = text
            .lines()
            .filter_map(|l| {
                let n: Vec<u32> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
                (n.len() == 3).then(|| (n[0], n[1], n[2]))
            })
            .collect();
        Ok(IdMap { path, extents })
    }

    /// Id `id` as crust sees it, as the task sees it.
    fn inside(&self, id: u32) -> Result<u32> {
        let found = self.extents.iter().find(|&&(_, out, n)| id >= out && id - out < n).map(|&(first, out, _)| first + (id - out));
        found.ok_or_else(|| crate::error::Error::Invalid(format!("id {id} of the images is not mapped in the restored task's user namespace ({})", self.path)))
    }
}

const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;

/// The capability sets of a thread, 64 bits each.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Caps {
    inh: u64,
    prm: u64,
    eff: u64,
    bnd: u64,
    amb: u64,
}

impl Caps {
    fn of_image(c: &CredsEntry) -> Caps {
        // Two 32-bit words, low first; a word missing is an empty one.
        let set = |w: &[u32]| w.first().copied().unwrap_or(0) as u64 | (w.get(1).copied().unwrap_or(0) as u64) << 32;
        Caps { inh: set(&c.cap_inh), prm: set(&c.cap_prm), eff: set(&c.cap_eff), bnd: set(&c.cap_bnd), amb: set(&c.cap_amb) }
    }

    fn of_status(st: &procfs::process::Status) -> Caps {
        Caps { inh: st.capinh, prm: st.capprm, eff: st.capeff, bnd: st.capbnd.unwrap_or(0), amb: st.capamb.unwrap_or(0) }
    }
}

/// Capabilities, securebits and no_new_privs of each thread.
pub struct Capabilities;

impl Component for Capabilities {
    /// Saved with the ids by [`Creds`]. An LSM label is refused: this
    /// kernel has no LSM to set one with, so it would be lost.
    fn dump(&self, t: &mut ThreadDump, _core: &mut CoreEntry) -> Result<()> {
        // Without an LSM the read fails (EINVAL).
        if let Ok(label) = std::fs::read_to_string(format!("/proc/{}/task/{}/attr/current", t.pid, t.tid)) {
            let label = label.trim_matches(|c: char| c == '\0' || c.is_whitespace());
            if !label.is_empty() && label != "unconfined" {
                return Err(crate::error::Error::unsupported(
                    format!("process {} thread {}", t.pid, t.tid),
                    format!("it has the LSM label {label:?}: LSM labels are not supported"),
                ));
            }
        }
        Ok(())
    }

    fn restore_thread(&self, t: &mut ThreadRestore, thread: &ThreadImage) -> Result<()> {
        let Some(c) = &thread.core.creds else { return Ok(()) };
        let want = Caps::of_image(c);
        let st = proc::status(t.task.pid, t.task.tid)?;
        let now = Caps::of_status(&st);
        // Ambient capabilities are raised while crust's permitted set is
        // still there and before securebits may forbid it; each needs to be
        // inheritable already.
        if now.amb != want.amb {
            if now.amb != 0 {
                t.task.call("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", libc::SYS_prctl, [PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0])?;
            }
            if want.amb != 0 {
                capset(t.task, t.scratch, Caps { inh: want.inh | want.amb, ..now })?;
                for cap in bits(want.amb) {
                    t.task.call(&format!("prctl(PR_CAP_AMBIENT_RAISE, {cap})"), libc::SYS_prctl, [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0])?;
                }
            }
        }
        // Dropping from the bounding set and setting securebits need
        // CAP_SETPCAP, which the last capset may take away.
        for cap in bits(now.bnd & !want.bnd) {
            t.task.call(&format!("prctl(PR_CAPBSET_DROP, {cap})"), libc::SYS_prctl, [libc::PR_CAPBSET_DROP as u64, cap, 0, 0, 0, 0])?;
        }
        let secbits = t.task.call("prctl(PR_GET_SECUREBITS)", libc::SYS_prctl, [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0])?;
        if secbits != c.secbits as u64 {
            t.task.call("prctl(PR_SET_SECUREBITS)", libc::SYS_prctl, [libc::PR_SET_SECUREBITS as u64, c.secbits as u64, 0, 0, 0, 0])?;
        }
        if (now.inh, now.prm, now.eff) != (want.inh, want.prm, want.eff) || want.amb != 0 {
            capset(t.task, t.scratch, want)?;
        }
        if c.no_new_privs.unwrap_or(0) != 0 && st.nonewprivs.unwrap_or(0) == 0 {
            t.task.call("prctl(PR_SET_NO_NEW_PRIVS)", libc::SYS_prctl, [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// A restored thread starts with crust's capabilities and can only lose
    /// some; in a user namespace of the tree's own it starts with all of them
    /// there (the kernel gives them to the first task of a new one).
    fn problems(&self, img: &DumpImage) -> Vec<String> {
        if crate::ns::is_own(img, "user") {
            return Vec::new();
        }
        let me = std::process::id() as i32;
        let Ok(own) = proc::status(me, me).map(|st| Caps::of_status(&st)) else {
            return vec!["reading crust's own capabilities from /proc/self/status failed".into()];
        };
        let mut out = Vec::new();
        for p in img.processes.iter().filter(|p| p.zombie.is_none()) {
            for thread in &p.threads {
                let Some(c) = &thread.core.creds else { continue };
                let want = Caps::of_image(c);
                let missing = (want.prm | want.bnd | want.amb) & !own.prm | want.bnd & !own.bnd | want.inh & !(own.inh | own.bnd);
                if missing != 0 {
                    out.push(format!(
                        "thread {} of process {} has capabilities crust lacks (mask {missing:#x}): a restore cannot give them",
                        thread.tid,
                        p.pid()
                    ));
                }
            }
        }
        out
    }
}

/// The capability numbers set in `set`.
fn bits(set: u64) -> impl Iterator<Item = u64> {
    (0..64).filter(move |b| set & (1 << b) != 0)
}

/// capset(2) of the thread's own inheritable, permitted and effective sets.
fn capset(task: &Task, scratch: &mut Scratch, c: Caps) -> Result<()> {
    let mut header = LINUX_CAPABILITY_VERSION_3.to_le_bytes().to_vec();
    header.extend(0i32.to_le_bytes());
    let mut data = Vec::with_capacity(24);
    for shift in [0, 32] {
        for set in [c.eff, c.prm, c.inh] {
            data.extend(((set >> shift) as u32).to_le_bytes());
        }
    }
    let h = scratch.reset().put(&header)?;
    let d = scratch.put(&data)?;
    task.call("capset", libc::SYS_capset, [h, d, 0, 0, 0, 0])?;
    Ok(())
}
