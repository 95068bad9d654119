//! The ipc namespace: its limits (ipcns-var-ID.img), its System V objects
//! with their ids, keys, owners, modes and contents (ipcns-shm-, -sem- and
//! -msg-ID.img, see [`sysv`]) and its POSIX message queues (crust's
//! ipcns-mqueue-ID.json, see [`mqueue`]: CRIU's format has no image for
//! them). Everything is read and made by a thread of crust that joined the
//! namespace, with plain syscalls; the tree's attachments of its segments
//! are vmas, made again by shmat in each process (see [`attach`]).

mod mqueue;
mod sysv;

use nix::sched::CloneFlags;

use super::{in_namespace, NsKind, NsRoot};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_one, DumpImage};
use crate::images::proto::{IpcVarEntry, TaskKobjIdsEntry};
use crate::images::{ImageDir, Kind};

pub use sysv::{attach, check_attached, is_attachment};

pub struct Ipc;

/// The kernel's structs System V and mqueue calls fill, all of integers.
trait Plain {}
impl Plain for libc::shmid_ds {}
impl Plain for libc::semid_ds {}
impl Plain for libc::msqid_ds {}
impl Plain for libc::mq_attr {}

/// One of them, all zero (a valid value of each).
fn zeroed<T: Plain>() -> T {
    // SAFETY: T is a C struct of integers only (Plain): all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// The namespace read back, for the restore.
struct Saved {
    vars: IpcVarEntry,
    sysv: sysv::Objects,
    mqueues: Vec<mqueue::Queue>,
}

fn var_image(id: u32) -> String {
    format!("ipcns-var-{id}.img")
}

/// A sysctl of the namespace, read from the thread that joined it (the ipc
/// sysctls are those of the reader's namespace).
fn read_sysctl(name: &str) -> Result<String> {
    let path = format!("/proc/sys/{name}");
    std::fs::read_to_string(&path).map(|s| s.trim().to_string()).ctx(|| format!("reading {path}"))
}

fn sysctl_u64(name: &str) -> Result<u64> {
    let text = read_sysctl(name)?;
    text.parse().map_err(|_| Error::Invalid(format!("/proc/sys/{name} reads {text:?}, not a number")))
}

fn sysctl_u32(name: &str) -> Result<u32> {
    // The next-id sysctls read -1 when unset: kept as CRIU keeps them, as a u32.
    let text = read_sysctl(name)?;
    text.parse::<u32>()
        .or_else(|_| text.parse::<i32>().map(|v| v as u32))
        .map_err(|_| Error::Invalid(format!("/proc/sys/{name} reads {text:?}, not a number")))
}

/// Write a sysctl of the namespace, unless it already holds `value`.
fn write_sysctl(name: &str, value: &str) -> Result<()> {
    if read_sysctl(name).is_ok_and(|now| now.split_whitespace().eq(value.split_whitespace())) {
        return Ok(());
    }
    let path = format!("/proc/sys/{name}");
    std::fs::write(&path, value).ctx(|| format!("writing {value:?} to {path}"))
}

// The ipc sysctls, as ipc_var_entry names them.
const SEM: &str = "kernel/sem";
const MSGMAX: &str = "kernel/msgmax";
const MSGMNB: &str = "kernel/msgmnb";
const MSGMNI: &str = "kernel/msgmni";
const AUTO_MSGMNI: &str = "kernel/auto_msgmni";
const SHMMAX: &str = "kernel/shmmax";
const SHMALL: &str = "kernel/shmall";
const SHMMNI: &str = "kernel/shmmni";
const SHM_RMID_FORCED: &str = "kernel/shm_rmid_forced";
const MQ_QUEUES_MAX: &str = "fs/mqueue/queues_max";
const MQ_MSG_MAX: &str = "fs/mqueue/msg_max";
const MQ_MSGSIZE_MAX: &str = "fs/mqueue/msgsize_max";
const MQ_MSG_DEFAULT: &str = "fs/mqueue/msg_default";
const MQ_MSGSIZE_DEFAULT: &str = "fs/mqueue/msgsize_default";
const MSG_NEXT_ID: &str = "kernel/msg_next_id";
const SEM_NEXT_ID: &str = "kernel/sem_next_id";
const SHM_NEXT_ID: &str = "kernel/shm_next_id";

fn read_vars() -> Result<IpcVarEntry> {
    let sem = read_sysctl(SEM)?;
    let sem_ctls = sem
        .split_whitespace()
        .map(|w| w.parse::<u32>().map_err(|_| Error::Invalid(format!("/proc/sys/{SEM} reads {sem:?}"))))
        .collect::<Result<Vec<u32>>>()?;
    if sem_ctls.len() != 4 {
        return Err(Error::Invalid(format!("/proc/sys/{SEM} reads {sem:?}, not four numbers")));
    }
    Ok(IpcVarEntry {
        sem_ctls,
        msg_ctlmax: sysctl_u32(MSGMAX)?,
        msg_ctlmnb: sysctl_u32(MSGMNB)?,
        msg_ctlmni: sysctl_u32(MSGMNI)?,
        auto_msgmni: sysctl_u32(AUTO_MSGMNI)?,
        shm_ctlmax: sysctl_u64(SHMMAX)?,
        shm_ctlall: sysctl_u64(SHMALL)?,
        shm_ctlmni: sysctl_u32(SHMMNI)?,
        shm_rmid_forced: sysctl_u32(SHM_RMID_FORCED)?,
        mq_queues_max: sysctl_u32(MQ_QUEUES_MAX)?,
        mq_msg_max: sysctl_u32(MQ_MSG_MAX)?,
        mq_msgsize_max: sysctl_u32(MQ_MSGSIZE_MAX)?,
        mq_msg_default: Some(sysctl_u32(MQ_MSG_DEFAULT)?),
        mq_msgsize_default: Some(sysctl_u32(MQ_MSGSIZE_DEFAULT)?),
        msg_next_id: Some(sysctl_u32(MSG_NEXT_ID)?),
        sem_next_id: Some(sysctl_u32(SEM_NEXT_ID)?),
        shm_next_id: Some(sysctl_u32(SHM_NEXT_ID)?),
    })
}

/// The namespace's limits as they were, written once its objects exist
/// (making them may need higher ones for a while); the next ids last.
fn write_vars(v: &IpcVarEntry) -> Result<()> {
    let sem = v.sem_ctls.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    write_sysctl(SEM, &sem)?;
    for (name, value) in [
        (MSGMAX, v.msg_ctlmax as u64),
        (MSGMNB, v.msg_ctlmnb as u64),
        (MSGMNI, v.msg_ctlmni as u64),
        (SHMMAX, v.shm_ctlmax),
        (SHMALL, v.shm_ctlall),
        (SHMMNI, v.shm_ctlmni as u64),
        (SHM_RMID_FORCED, v.shm_rmid_forced as u64),
        (AUTO_MSGMNI, v.auto_msgmni as u64),
        (MQ_QUEUES_MAX, v.mq_queues_max as u64),
        (MQ_MSG_MAX, v.mq_msg_max as u64),
        (MQ_MSGSIZE_MAX, v.mq_msgsize_max as u64),
    ] {
        write_sysctl(name, &value.to_string())?;
    }
    for (name, value) in [(MQ_MSG_DEFAULT, v.mq_msg_default), (MQ_MSGSIZE_DEFAULT, v.mq_msgsize_default)] {
        if let Some(value) = value {
            write_sysctl(name, &value.to_string())?;
        }
    }
    for (name, value) in [(MSG_NEXT_ID, v.msg_next_id), (SEM_NEXT_ID, v.sem_next_id), (SHM_NEXT_ID, v.shm_next_id)] {
        if let Some(value) = value {
            write_sysctl(name, &(value as i32).to_string())?;
        }
    }
    Ok(())
}

/// Raise a limit sysctl to at least `need` for a while (the restore writes
/// the saved limits last).
fn at_least(name: &str, need: u64) -> Result<()> {
    if sysctl_u64(name)? < need {
        write_sysctl(name, &need.to_string())?;
    }
    Ok(())
}

/// Every attachment of a System V segment in the processes of `img` names
/// a segment of the tree's own ipc namespace, whole.
pub fn check_attachments(img: &DumpImage) -> Result<()> {
    let saved = img.extras.get::<Saved>();
    for p in &img.processes {
        let mm = img.dir.join(format!("mm-{}.img", p.pid()));
        for v in p.mm.vmas.iter().filter(|v| is_attachment(v)) {
            let Some(saved) = saved else {
                return Err(Error::image(mm, format!("vma {:#x}-{:#x} attaches System V segment {}, but the tree has no ipc namespace of its own", v.start, v.end, v.shmid)));
            };
            let segment = saved.sysv.shm.iter().find(|(e, _)| e.desc.id as u64 == v.shmid);
            let Some((e, _)) = segment else {
                return Err(Error::image(mm, format!("vma {:#x}-{:#x} attaches System V segment {}, which the ipc namespace has not", v.start, v.end, v.shmid)));
            };
            let len = e.size.div_ceil(crate::images::criu::PAGE_SIZE) * crate::images::criu::PAGE_SIZE;
            if v.pgoff != 0 || v.end.checked_sub(v.start) != Some(len) {
                return Err(Error::image(mm, format!("vma {:#x}-{:#x} is not the whole of System V segment {} ({} bytes)", v.start, v.end, v.shmid, e.size)));
            }
        }
    }
    Ok(())
}

impl NsKind for Ipc {
    fn name(&self) -> &'static str {
        "ipc"
    }

    fn clone_flag(&self) -> CloneFlags {
        CloneFlags::CLONE_NEWIPC
    }

    fn id(&self, ids: &TaskKobjIdsEntry) -> Option<u32> {
        ids.ipc_ns_id
    }

    fn dump(&self, pid: i32, id: u32, dir: &mut ImageDir, _opts: &super::NsOptions) -> Result<u64> {
        let (vars, objects, queues) = in_namespace(pid, "ipc", || {
            let vars = read_vars()?;
            let objects = sysv::read(pid, &vars)?;
            // Last: the thread leaves crust's mount namespace for it.
            let queues = mqueue::read(pid)?;
            Ok((vars, objects, queues))
        })?;
        let mut w = dir.writer(&var_image(id), Kind::IpcVar)?;
        w.entry(&vars)?;
        let mut bytes = w.finish()?;
        bytes += sysv::write(&objects, id, dir)?;
        bytes += mqueue::write(&queues, id, dir)?;
        Ok(bytes)
    }

    fn load_images(&self, img: &mut DumpImage, id: u32) -> Result<()> {
        let vars: IpcVarEntry = read_one(&img.dir.join(var_image(id)), Kind::IpcVar)?;
        if vars.sem_ctls.len() != 4 {
            return Err(Error::image(img.dir.join(var_image(id)), format!("{} semaphore limits, not 4", vars.sem_ctls.len())));
        }
        let sysv = sysv::load(&img.dir, id)?;
        let mqueues = mqueue::load(&img.dir, id)?;
        img.extras.insert(Saved { vars, sysv, mqueues });
        Ok(())
    }

    fn problems(&self, img: &DumpImage, _opts: &super::NsOptions) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(saved) = img.extras.get::<Saved>() {
            let has_sysv = !saved.sysv.is_empty();
            if has_sysv && !std::path::Path::new("/proc/sys/kernel/shm_next_id").exists() {
                out.push("the tree's ipc namespace has System V objects, and this kernel cannot make them with given ids (no kernel.shm_next_id: CONFIG_CHECKPOINT_RESTORE)".into());
            }
        }
        out
    }

    fn restore(&self, img: &DumpImage, root: &mut NsRoot) -> Result<()> {
        let Some(saved) = img.extras.get::<Saved>() else { return Ok(()) };
        in_namespace(root.pid, "ipc", || {
            sysv::make(&saved.sysv)?;
            mqueue::make(&saved.mqueues)?;
            write_vars(&saved.vars)
        })
    }

    fn finish(&self, img: &DumpImage, root: i32) -> Result<()> {
        let Some(saved) = img.extras.get::<Saved>() else { return Ok(()) };
        if !sysv::removed_while_attached(&saved.sysv).is_empty() {
            in_namespace(root, "ipc", || sysv::remove_attached(&saved.sysv))?;
        }
        Ok(())
    }
}
