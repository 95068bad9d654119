//! System V IPC objects of the tree's ipc namespace: shared memory segments
//! with their pages, semaphore sets with their values, message queues with
//! their messages (read with MSG_COPY, which leaves them queued), each with
//! its id, key, owner, creator and mode, in CRIU's images. They are made
//! again with the same ids (kernel.*_next_id before each one) by a thread of
//! crust in the new namespace, as their creator (its effective ids, for the
//! creator fields), then given their owner and mode. A segment removed while
//! attached (SHM_DEST in its mode) is removed again once the restored
//! processes attached it (Linux lets a process attach it until then).
//!
//! A process's attachment of a segment is a vma (VMA_AREA_SYSVIPC, the
//! segment's id in its shmid): at restore the process attaches the segment
//! again at the same address (an injected shmat); the contents are the
//! segment's, from its image.

use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;

use crate::error::{Context, Error, Result};
use crate::images::criu::{PAGE_SIZE, VMA_AREA_SYSVIPC};
use crate::images::proto::{IpcDescEntry, IpcMsg, IpcMsgEntry, IpcSemEntry, IpcShmEntry, IpcVarEntry, VmaEntry};
use crate::images::{ImageDir, ImageReader, Kind};
use crate::mem::{Backing, Vma};
use crate::task::Task;

// The kernel's commands and flags libc does not name.
const SHM_STAT_ANY: i32 = 15;
const SHM_INFO: i32 = 14;
const MSG_STAT_ANY: i32 = 13;
const MSG_COPY: i32 = 0o40000;
/// Modes of a segment: marked for removal (IPC_RMID while attached); locked in memory.
const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// A queued message and its bytes.
pub type Message = (IpcMsg, Vec<u8>);

/// The objects of a namespace.
#[derive(Default)]
pub struct Objects {
    pub shm: Vec<(IpcShmEntry, Vec<u8>)>,
    pub sem: Vec<(IpcSemEntry, Vec<u16>)>,
    pub msg: Vec<(IpcMsgEntry, Vec<Message>)>,
}

impl Objects {
    pub fn is_empty(&self) -> bool {
        self.shm.is_empty() && self.sem.is_empty() && self.msg.is_empty()
    }
}

fn image(kind: &str, id: u32) -> String {
    format!("ipcns-{kind}-{id}.img")
}

fn desc(perm: &libc::ipc_perm, id: i32) -> IpcDescEntry {
    IpcDescEntry { key: perm.__key as u32, uid: perm.uid, gid: perm.gid, cuid: perm.cuid, cgid: perm.cgid, mode: perm.mode as u32, id: id as u32 }
}

/// The number of bytes of `len` rounded up to `align`.
fn padded(len: u64, align: u64) -> u64 {
    len.div_ceil(align) * align
}

/// Run `f` on each object of one kind: `stat(index)` gives its id (or
/// EINVAL where no object is) and its state for every index up to `highest`.
fn each<T>(what: &str, highest: i32, mut stat: impl FnMut(i32) -> (i32, T), mut f: impl FnMut(i32, T) -> Result<()>) -> Result<()> {
    if highest < 0 {
        return Err(Error::Sys { context: format!("listing the {what} of the ipc namespace"), err: Errno::last() });
    }
    for index in 0..=highest {
        let (id, state) = stat(index);
        if id < 0 {
            match Errno::last() {
                Errno::EINVAL | Errno::EIDRM => continue,
                err => return Err(Error::Sys { context: format!("reading {what} {index} of the ipc namespace"), err }),
            }
        }
        f(id, state)?;
    }
    Ok(())
}

/// Every object of the namespace the calling thread is in; `pid` (the
/// tree's root) names it in refusals.
pub fn read(pid: i32, vars: &IpcVarEntry) -> Result<Objects> {
    let place = || format!("the ipc namespace of {}", crate::proc::who(pid));
    let mut out = Objects::default();
    // SAFETY: SHM_INFO fills a struct smaller than the shmid_ds given.
    let highest = unsafe { libc::shmctl(0, SHM_INFO, &mut super::zeroed()) };
    let stat = |i| {
        let mut ds: libc::shmid_ds = super::zeroed();
        // SAFETY: the kernel fills the shmid_ds of ours.
        let id = unsafe { libc::shmctl(i, SHM_STAT_ANY, &mut ds) };
        (id, ds)
    };
    each("shared memory segments", highest, stat, |id, ds| {
        let d = desc(&ds.shm_perm, id);
        let size = ds.shm_segsz as u64;
        let data = segment_contents(id, size).map_err(|e| match e {
            Error::Unsupported { what, .. } => Error::unsupported(place(), what),
            e => e,
        })?;
        out.shm.push((IpcShmEntry { desc: d, size, in_pagemaps: None, hugetlb_flag: None }, data));
        Ok(())
    })?;
    let mut info = [0i32; 16];
    // SAFETY: SEM_INFO fills a struct seminfo (10 ints) into `info`.
    let highest = unsafe { libc::semctl(0, 0, libc::SEM_INFO, info.as_mut_ptr()) };
    let stat = |i| {
        let mut ds: libc::semid_ds = super::zeroed();
        // SAFETY: the kernel fills the semid_ds of ours.
        let id = unsafe { libc::semctl(i, 0, libc::SEM_STAT_ANY, &mut ds as *mut libc::semid_ds) };
        (id, ds)
    };
    each("semaphore sets", highest, stat, |id, sds| {
        let nsems = sds.sem_nsems as u32;
        let mut values = vec![0u16; nsems as usize];
        // SAFETY: GETALL fills `nsems` u16s, the length of `values`.
        if unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) } < 0 {
            return Err(Error::Sys { context: format!("reading the values of semaphore set {id}"), err: Errno::last() });
        }
        out.sem.push((IpcSemEntry { desc: desc(&sds.sem_perm, id), nsems }, values));
        Ok(())
    })?;
    // SAFETY: MSG_INFO fills a struct smaller than the msqid_ds given.
    let highest = unsafe { libc::msgctl(0, libc::MSG_INFO, &mut super::zeroed()) };
    let stat = |i| {
        let mut ds: libc::msqid_ds = super::zeroed();
        // SAFETY: the kernel fills the msqid_ds of ours.
        let id = unsafe { libc::msgctl(i, MSG_STAT_ANY, &mut ds) };
        (id, ds)
    };
    each("message queues", highest, stat, |id, mds| {
        let qnum = mds.msg_qnum as u32;
        // No message is longer than all of them, nor than the limit.
        let room = (mds.__msg_cbytes as usize).max(vars.msg_ctlmax as usize);
        let mut buf = vec![0u8; 8 + room];
        let mut messages = Vec::new();
        for n in 0..qnum {
            // SAFETY: a buffer of a long and `room` bytes.
            let got = unsafe { libc::msgrcv(id, buf.as_mut_ptr().cast(), room, n as libc::c_long, libc::IPC_NOWAIT | MSG_COPY) };
            if got < 0 {
                let err = Errno::last();
                if err == Errno::ENOSYS {
                    return Err(Error::unsupported(place(), "this kernel cannot read queued messages without taking them (MSG_COPY: CONFIG_CHECKPOINT_RESTORE)"));
                }
                return Err(Error::Sys { context: format!("reading message {n} of message queue {id}"), err });
            }
            let mtype = u64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
            messages.push((IpcMsg { mtype, msize: got as u32 }, buf[8..8 + got as usize].to_vec()));
        }
        out.msg.push((IpcMsgEntry { desc: desc(&mds.msg_perm, id), qbytes: mds.msg_qbytes as u32, qnum }, messages));
        Ok(())
    })?;
    Ok(out)
}

/// A segment attached read-only to crust for as long as it is looked at.
struct Attached {
    addr: u64,
    len: u64,
}

impl Attached {
    fn new(id: i32, size: u64, flags: i32) -> Result<Attached> {
        // SAFETY: the kernel picks a free address for the segment; crust only
        // reaches it through /proc/self/map_files or the pointer it returns.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if addr as isize == -1 {
            return Err(Error::Sys { context: format!("attaching System V segment {id}"), err: Errno::last() });
        }
        Ok(Attached { addr: addr as u64, len: padded(size, PAGE_SIZE) })
    }

    fn file(&self) -> Result<std::fs::File> {
        let path = format!("/proc/self/map_files/{:x}-{:x}", self.addr, self.addr + self.len);
        std::fs::File::open(&path).ctx(|| format!("opening {path}"))
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: the address shmat returned, detached once.
        unsafe { libc::shmdt(self.addr as *const libc::c_void) };
    }
}

/// The bytes of segment `id` of `size` bytes, read through its file (holes
/// read as zeros without being filled in).
fn segment_contents(id: i32, size: u64) -> Result<Vec<u8>> {
    let seg = Attached::new(id, size, libc::SHM_RDONLY)?;
    let file = seg.file()?;
    let fs = nix::sys::statfs::fstatfs(&file).ctx(|| format!("statfs of System V segment {id}"))?;
    if fs.filesystem_type().0 as i64 == HUGETLBFS_MAGIC {
        return Err(Error::unsupported("", format!("System V segment {id} is in huge pages (SHM_HUGETLB): not supported yet")));
    }
    let mut data = vec![0u8; size as usize];
    file.read_exact_at(&mut data, 0).ctx(|| format!("reading System V segment {id}"))?;
    Ok(data)
}

/// The three images, always written (empty when the namespace has none).
pub fn write(o: &Objects, id: u32, dir: &mut ImageDir) -> Result<u64> {
    let zeros = [0u8; 8];
    let mut w = dir.writer(&image("shm", id), Kind::IpcnsShm)?;
    for (e, data) in &o.shm {
        w.entry(e)?;
        w.raw(data)?;
        w.raw(&zeros[..(padded(e.size, 4) - e.size) as usize])?;
    }
    let mut bytes = w.finish()?;
    let mut w = dir.writer(&image("sem", id), Kind::IpcnsSem)?;
    for (e, values) in &o.sem {
        w.entry(e)?;
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.raw(&raw)?;
        w.raw(&zeros[..(padded(raw.len() as u64, 8) - raw.len() as u64) as usize])?;
    }
    bytes += w.finish()?;
    let mut w = dir.writer(&image("msg", id), Kind::IpcnsMsg)?;
    for (e, messages) in &o.msg {
        w.entry(e)?;
        for (m, data) in messages {
            w.entry(m)?;
            w.raw(data)?;
            w.raw(&zeros[..(padded(data.len() as u64, 8) - data.len() as u64) as usize])?;
        }
    }
    bytes += w.finish()?;
    Ok(bytes)
}

/// The objects read back from the images in `dir`; each error names the
/// file and offset.
pub fn load(dir: &Path, id: u32) -> Result<Objects> {
    let mut out = Objects::default();
    let mut ids = std::collections::HashSet::new();
    let mut check_desc = |r: &ImageReader, kind: &str, d: &IpcDescEntry| {
        if !ids.insert((kind.to_string(), d.id)) {
            return Err(r.error(format!("{kind} {} is there twice", d.id)));
        }
        if d.id > i32::MAX as u32 {
            return Err(r.error(format!("{kind} id {} is not an ipc id", d.id)));
        }
        Ok(())
    };
    let mut r = ImageReader::open(&dir.join(image("shm", id)), Kind::IpcnsShm)?;
    while let Some(e) = r.read_entry::<IpcShmEntry>()? {
        check_desc(&r, "segment", &e.desc)?;
        if e.in_pagemaps == Some(true) {
            return Err(r.error(format!("segment {}: contents in a pagemap-shmem image are not read yet", e.desc.id)));
        }
        if e.hugetlb_flag.is_some_and(|f| f != 0) {
            return Err(r.error(format!("segment {}: huge pages are not supported yet", e.desc.id)));
        }
        let data = r.raw(e.size)?;
        r.skip(padded(e.size, 4) - e.size)?;
        out.shm.push((e, data));
    }
    let mut r = ImageReader::open(&dir.join(image("sem", id)), Kind::IpcnsSem)?;
    while let Some(e) = r.read_entry::<IpcSemEntry>()? {
        check_desc(&r, "semaphore set", &e.desc)?;
        let len = e.nsems as u64 * 2;
        let raw = r.raw(len)?;
        r.skip(padded(len, 8) - len)?;
        let values = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        out.sem.push((e, values));
    }
    let mut r = ImageReader::open(&dir.join(image("msg", id)), Kind::IpcnsMsg)?;
    while let Some(e) = r.read_entry::<IpcMsgEntry>()? {
        check_desc(&r, "message queue", &e.desc)?;
        let mut messages = Vec::new();
        for _ in 0..e.qnum {
            let m: IpcMsg = r.one()?;
            if m.mtype == 0 || m.mtype > i64::MAX as u64 {
                return Err(r.error(format!("message queue {}: message type {} is not a positive long", e.desc.id, m.mtype)));
            }
            let data = r.raw(m.msize as u64)?;
            r.skip(padded(m.msize as u64, 8) - m.msize as u64)?;
            messages.push((m, data));
        }
        out.msg.push((e, messages));
    }
    Ok(out)
}

/// Run `create` as the creator `d` names (the thread's effective ids: the
/// kernel takes the creator's from them), then as before.
fn as_creator(d: &IpcDescEntry, create: impl FnOnce() -> i32) -> Result<i32> {
    // Raw set*id calls change the calling thread's ids only (glibc's would
    // change every thread of crust); real and saved ids stay root, so the
    // effective ones can be set back.
    let (euid, egid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    let keep = libc::uid_t::MAX;
    let set = |uid: u32, gid: u32| -> Result<()> {
        // SAFETY: a syscall on integers.
        if unsafe { libc::syscall(libc::SYS_setresgid, keep, gid, keep) } != 0 {
            return Err(Error::Sys { context: format!("taking group {gid} to make an ipc object"), err: Errno::last() });
        }
        // SAFETY: a syscall on integers.
        if unsafe { libc::syscall(libc::SYS_setresuid, keep, uid, keep) } != 0 {
            return Err(Error::Sys { context: format!("taking user {uid} to make an ipc object"), err: Errno::last() });
        }
        Ok(())
    };
    set(d.cuid, d.cgid)?;
    let r = create();
    let err = Errno::last();
    // The uid first back to root, which may then set the group.
    set(euid, egid)?;
    if r < 0 {
        return Err(Error::Sys { context: format!("making ipc object {} (key {:#x})", d.id, d.key), err });
    }
    Ok(r)
}

/// Make object `d` with its id: the next id set, then made by `create`
/// (given the flags) as its creator.
fn make_one(next_id: &str, what: &str, d: &IpcDescEntry, create: impl FnOnce(i32) -> i32) -> Result<i32> {
    super::write_sysctl(next_id, &(d.id as i32).to_string())?;
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (d.mode & 0o777) as i32;
    let id = as_creator(d, || create(flags))?;
    if id as u32 != d.id {
        return Err(Error::Invalid(format!("{what} {} was made with id {id}", d.id)));
    }
    Ok(id)
}

fn set_perm(perm: &mut libc::ipc_perm, d: &IpcDescEntry) {
    perm.uid = d.uid;
    perm.gid = d.gid;
    perm.mode = (d.mode & 0o777) as u16;
}

fn check(r: i32, what: impl FnOnce() -> String) -> Result<()> {
    match r {
        r if r < 0 => Err(Error::Sys { context: what(), err: Errno::last() }),
        _ => Ok(()),
    }
}

/// Make every object, in the namespace the calling thread is in.
pub fn make(o: &Objects) -> Result<()> {
    use super::{at_least, MSGMAX, MSGMNB, SHMALL, SHMMAX, SHM_NEXT_ID, SEM_NEXT_ID, MSG_NEXT_ID};
    if let Some(biggest) = o.shm.iter().map(|(e, _)| e.size).max() {
        at_least(SHMMAX, biggest)?;
        at_least(SHMALL, o.shm.iter().map(|(e, _)| padded(e.size, PAGE_SIZE) / PAGE_SIZE).sum())?;
    }
    for (e, data) in &o.shm {
        let d = &e.desc;
        let id = make_one(SHM_NEXT_ID, "segment", d, |flags| {
            // SAFETY: a syscall on integers.
            unsafe { libc::shmget(d.key as i32, e.size as usize, flags) }
        })?;
        let seg = Attached::new(id, e.size, 0)?;
        // Only the pages with contents: the others stay holes, as they were.
        for (n, page) in data.chunks(PAGE_SIZE as usize).enumerate() {
            if page.iter().any(|&b| b != 0) {
                let at = (seg.addr + n as u64 * PAGE_SIZE) as *mut u8;
                // SAFETY: the page lies inside the segment attached
                // read-write at `seg.addr` (its length rounded up to pages).
                unsafe { std::ptr::copy_nonoverlapping(page.as_ptr(), at, page.len()) };
            }
        }
        drop(seg);
        let mut ds: libc::shmid_ds = super::zeroed();
        set_perm(&mut ds.shm_perm, d);
        // SAFETY: the kernel reads the shmid_ds of ours.
        check(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) }, || format!("setting the owner and mode of segment {id}"))?;
        if d.mode & SHM_LOCKED != 0 {
            // SAFETY: SHM_LOCK reads no buffer.
            check(unsafe { libc::shmctl(id, libc::SHM_LOCK, std::ptr::null_mut()) }, || format!("locking segment {id}"))?;
        }
    }
    for (e, values) in &o.sem {
        let d = &e.desc;
        let id = make_one(SEM_NEXT_ID, "semaphore set", d, |flags| {
            // SAFETY: a syscall on integers.
            unsafe { libc::semget(d.key as i32, e.nsems as i32, flags) }
        })?;
        if !values.is_empty() {
            // SAFETY: SETALL reads `nsems` u16s, the length of `values` (checked at load).
            check(unsafe { libc::semctl(id, 0, libc::SETALL, values.as_ptr()) }, || format!("setting the values of semaphore set {id}"))?;
        }
        let mut ds: libc::semid_ds = super::zeroed();
        set_perm(&mut ds.sem_perm, d);
        // SAFETY: the kernel reads the semid_ds of ours.
        check(unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) }, || format!("setting the owner and mode of semaphore set {id}"))?;
    }
    // A queue is made with the namespace's msgmnb as its size, and may only
    // be made smaller without CAP_SYS_RESOURCE (which root lacks here).
    if let Some(qbytes) = o.msg.iter().map(|(e, _)| e.qbytes as u64).max() {
        at_least(MSGMNB, qbytes)?;
    }
    if let Some(longest) = o.msg.iter().flat_map(|(_, m)| m).map(|(m, _)| m.msize as u64).max() {
        at_least(MSGMAX, longest)?;
    }
    for (e, messages) in &o.msg {
        let d = &e.desc;
        let id = make_one(MSG_NEXT_ID, "message queue", d, |flags| {
            // SAFETY: a syscall on integers.
            unsafe { libc::msgget(d.key as i32, flags) }
        })?;
        for (n, (m, data)) in messages.iter().enumerate() {
            let mut buf = Vec::with_capacity(8 + data.len());
            buf.extend_from_slice(&(m.mtype as i64).to_ne_bytes());
            buf.extend_from_slice(data);
            // SAFETY: a long and `data.len()` bytes in `buf`.
            check(unsafe { libc::msgsnd(id, buf.as_ptr().cast(), data.len(), libc::IPC_NOWAIT) }, || format!("queueing message {n} of message queue {id}"))?;
        }
        let mut ds: libc::msqid_ds = super::zeroed();
        set_perm(&mut ds.msg_perm, d);
        ds.msg_qbytes = e.qbytes as libc::msglen_t;
        // SAFETY: the kernel reads the msqid_ds of ours.
        check(unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) }, || format!("setting the owner, mode and size of message queue {id}"))?;
    }
    Ok(())
}

/// The segments removed (IPC_RMID) while attached: they live on until
/// their last detach.
pub fn removed_while_attached(o: &Objects) -> Vec<i32> {
    o.shm.iter().filter(|(e, _)| e.desc.mode & SHM_DEST != 0).map(|(e, _)| e.desc.id as i32).collect()
}

/// Remove again the segments removed while attached, once the restored
/// processes attached them again (in the namespace the calling thread is in).
pub fn remove_attached(o: &Objects) -> Result<()> {
    for id in removed_while_attached(o) {
        // SAFETY: IPC_RMID reads no buffer.
        check(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }, || format!("removing segment {id} (removed while attached when dumped)"))?;
    }
    Ok(())
}

/// Check at dump that every System V segment the process `pid` has attached
/// (`vmas`) is one of the tree's own ipc namespace (`own`: the tree has
/// one) and attached whole; the host's segments are outside the tree.
pub fn check_attached(pid: i32, own: bool, vmas: &[Vma]) -> Result<()> {
    let attached: Vec<(&Vma, u32, i32)> = vmas
        .iter()
        .filter_map(|v| match v.backing {
            Backing::SysvShm { key, id } => Some((v, key, id)),
            _ => None,
        })
        .collect();
    if attached.is_empty() {
        return Ok(());
    }
    let place = |v: &Vma| format!("process {pid}: mapping {:#x}-{:#x}", v.start, v.end);
    if !own {
        let (v, key, id) = attached[0];
        return Err(Error::unsupported(
            place(v),
            format!("System V shared memory (key {key:#x}, id {id}) of the host's ipc namespace is outside the tree: not supported (only segments of an ipc namespace of the tree's own are saved)"),
        ));
    }
    // The segment of that id in the namespace must be this very one: a
    // segment of another namespace (attached before the process left it)
    // is another inode, told apart by its file handle (inode number and
    // generation, random for each shmem inode).
    let mine: Vec<_> = attached
        .iter()
        .map(|(v, _, _)| file_handle(&format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end)))
        .collect::<Result<_>>()?;
    super::in_namespace(pid, "ipc", || {
        for ((v, key, id), mine) in attached.iter().zip(&mine) {
            let refuse = |why: &str| Error::unsupported(place(v), format!("System V shared memory (key {key:#x}, id {id}) {why}"));
            let mut ds: libc::shmid_ds = super::zeroed();
            // SAFETY: IPC_STAT into a zeroed shmid_ds of ours.
            if unsafe { libc::shmctl(*id, libc::IPC_STAT, &mut ds) } < 0 {
                return Err(refuse("is not a segment of the tree's ipc namespace (attached before the process left another one): not supported"));
            }
            let seg = Attached::new(*id, ds.shm_segsz as u64, libc::SHM_RDONLY)?;
            let theirs = file_handle(&format!("/proc/self/map_files/{:x}-{:x}", seg.addr, seg.addr + seg.len))?;
            if theirs != *mine {
                return Err(refuse("is a segment of another ipc namespace than the tree's (attached before the process left it): not supported"));
            }
            if v.pgoff != 0 || v.end - v.start != seg.len {
                return Err(refuse("is attached in part (the rest unmapped): not supported yet"));
            }
        }
        Ok(())
    })
}

/// The file handle of the inode `path` leads to (name_to_handle_at).
fn file_handle(path: &str) -> Result<Vec<u8>> {
    const MAX: usize = 128;
    // struct file_handle: handle_bytes (u32), handle_type (i32), the handle.
    let mut buf = [0u32; 2 + MAX / 4];
    buf[0] = MAX as u32;
    let cpath = std::ffi::CString::new(path).map_err(|_| Error::Invalid(format!("{path:?} has a nul byte")))?;
    let mut mount_id = 0;
    // SAFETY: a nul-terminated path and a file_handle buffer of the size
    // its first word says, both ours for the call.
    let r = unsafe { libc::name_to_handle_at(libc::AT_FDCWD, cpath.as_ptr(), buf.as_mut_ptr().cast(), &mut mount_id, libc::AT_SYMLINK_FOLLOW) };
    if r != 0 {
        return Err(Error::Sys { context: format!("reading the file handle of {path}"), err: Errno::last() });
    }
    let len = (buf[0] as usize).min(MAX);
    Ok(buf.iter().flat_map(|w| w.to_ne_bytes()).take(8 + len).collect())
}

/// Attach segment `v.shmid` at `v.start` in the task being restored, as the
/// vma was: read-only unless writable, executable if it was; a protection
/// shmat cannot give (none) by mprotect after.
pub fn attach(task: &Task, v: &VmaEntry) -> Result<()> {
    let (read, write, exec) = (libc::PROT_READ as u32, libc::PROT_WRITE as u32, libc::PROT_EXEC as u32);
    let mut flags = 0;
    if v.prot & write == 0 {
        flags |= libc::SHM_RDONLY;
    }
    if v.prot & exec != 0 {
        flags |= libc::SHM_EXEC;
    }
    let at = task.call(&format!("shmat of System V segment {}", v.shmid), libc::SYS_shmat, [v.shmid, v.start, flags as u64, 0, 0, 0])?;
    if at != v.start {
        return Err(Error::Ptrace { tid: task.tid, what: format!("System V segment {} attached at {at:#x}, not {:#x}", v.shmid, v.start) });
    }
    let given = read | if flags & libc::SHM_RDONLY == 0 { write } else { 0 } | if flags & libc::SHM_EXEC != 0 { exec } else { 0 };
    if v.prot != given {
        task.call("mprotect of a System V segment", libc::SYS_mprotect, [v.start, v.end - v.start, v.prot as u64, 0, 0, 0])?;
    }
    Ok(())
}

/// Whether vma `v` is an attachment of a System V segment.
pub fn is_attachment(v: &VmaEntry) -> bool {
    v.status & VMA_AREA_SYSVIPC != 0
}
