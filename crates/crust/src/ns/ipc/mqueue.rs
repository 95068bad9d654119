//! POSIX message queues of the tree's ipc namespace (its mqueue file
//! system): each queue's name, owner, mode, limits and messages with their
//! priorities. CRIU's format has none: crust keeps them in a file of its own
//! beside the images (ipcns-mqueue-ID.json).
//!
//! The queues are listed by mounting the namespace's mqueue fs in a mount
//! namespace of the reading thread's own (gone with the thread), and their
//! messages read by taking them all, then queueing them again in the order
//! they came (the queue's own order: by priority, then by age), so a queue
//! is as it was; if queueing them again fails, the rest are queued back
//! before the dump fails. A queue with a notification registered (mq_notify)
//! is refused: queueing again would fire it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::images::ImageDir;

/// One queue of the namespace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Queue {
    /// Its name, without the leading slash.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub maxmsg: i64,
    pub msgsize: i64,
    /// In the order they are received: (priority, bytes).
    pub messages: Vec<(u32, Vec<u8>)>,
}

fn file_name(id: u32) -> String {
    format!("ipcns-mqueue-{id}.json")
}

/// Where the reading thread mounts the mqueue fs, in its own mount namespace.
const MOUNT_AT: &std::ffi::CStr = c"/tmp";

fn mount_at() -> &'static str {
    MOUNT_AT.to_str().expect("ASCII")
}

fn mq_open(name: &str, flags: i32, mode: u32, attr: Option<&libc::mq_attr>) -> Result<OwnedFd> {
    let cname = std::ffi::CString::new(name).map_err(|_| Error::Invalid(format!("message queue name {name:?} has a nul byte")))?;
    let attr = attr.map_or(std::ptr::null(), |a| a as *const libc::mq_attr);
    // SAFETY: the raw mq_open (glibc's wants a leading slash) on a
    // nul-terminated name and an mq_attr of ours, both alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_mq_open, cname.as_ptr(), flags, mode, attr) };
    if fd < 0 {
        return Err(Error::Sys { context: format!("opening message queue /{name}"), err: Errno::last() });
    }
    // SAFETY: a new fd, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn getattr(fd: &OwnedFd, name: &str) -> Result<libc::mq_attr> {
    let mut attr: libc::mq_attr = super::zeroed();
    // SAFETY: mq_getsetattr into an mq_attr of ours.
    if unsafe { libc::syscall(libc::SYS_mq_getsetattr, fd.as_raw_fd(), std::ptr::null::<libc::mq_attr>(), &mut attr as *mut libc::mq_attr) } < 0 {
        return Err(Error::Sys { context: format!("reading the attributes of message queue /{name}"), err: Errno::last() });
    }
    Ok(attr)
}

fn send(fd: &OwnedFd, name: &str, prio: u32, data: &[u8]) -> Result<()> {
    // SAFETY: the bytes of `data`, read by the kernel for the call; no timeout.
    let r = unsafe { libc::syscall(libc::SYS_mq_timedsend, fd.as_raw_fd(), data.as_ptr(), data.len(), prio, std::ptr::null::<libc::timespec>()) };
    if r < 0 {
        return Err(Error::Sys { context: format!("queueing a message in message queue /{name}"), err: Errno::last() });
    }
    Ok(())
}

/// The queues of the namespace the calling thread is in; `pid` (the tree's
/// root) names it in refusals. The thread leaves crust's mount namespace.
pub fn read(pid: i32) -> Result<Vec<Queue>> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS | nix::sched::CloneFlags::CLONE_NEWNS).ctx(|| "unsharing a mount namespace to list message queues")?;
    // SAFETY: mount(2) on constant nul-terminated strings.
    if unsafe { libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) } != 0 {
        return Err(Error::Sys { context: "making a private mount namespace".into(), err: Errno::last() });
    }
    // SAFETY: mount(2) on constant nul-terminated strings.
    if unsafe { libc::mount(c"mqueue".as_ptr(), MOUNT_AT.as_ptr(), c"mqueue".as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(Error::Sys { context: "mounting the ipc namespace's mqueue file system".into(), err: Errno::last() });
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(mount_at()).ctx(|| "listing the message queues")? {
        let e = e.ctx(|| "listing the message queues")?;
        let name = e.file_name().into_string().map_err(|n| Error::unsupported(crate::proc::who(pid), format!("message queue {n:?}: its name is not UTF-8")))?;
        names.push(name);
    }
    names.sort();
    let mut out = Vec::new();
    for name in names {
        use std::os::unix::fs::MetadataExt;
        let path = format!("{}/{name}", mount_at());
        let place = || format!("the ipc namespace of {}: message queue /{name}", crate::proc::who(pid));
        let status = std::fs::read_to_string(&path).ctx(|| format!("reading the state of message queue /{name}"))?;
        let notify_pid = status.split_whitespace().find_map(|w| w.strip_prefix("NOTIFY_PID:")).unwrap_or("0");
        if notify_pid != "0" {
            return Err(Error::unsupported(place(), format!("process {notify_pid} awaits a notification from it (mq_notify): not supported yet")));
        }
        let md = std::fs::metadata(&path).ctx(|| format!("stat of message queue /{name}"))?;
        let fd = mq_open(&name, libc::O_RDWR | libc::O_NONBLOCK, 0, None)?;
        let attr = getattr(&fd, &name)?;
        let messages = take_all(&fd, &name, attr.mq_curmsgs, attr.mq_msgsize)?;
        out.push(Queue {
            name,
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode() & 0o7777,
            maxmsg: attr.mq_maxmsg,
            msgsize: attr.mq_msgsize,
            messages,
        });
    }
    Ok(out)
}

/// Take the `count` messages of a queue, then queue them again in order;
/// what was taken is queued back whatever fails.
fn take_all(fd: &OwnedFd, name: &str, count: i64, msgsize: i64) -> Result<Vec<(u32, Vec<u8>)>> {
    let mut taken = Vec::new();
    let mut buf = vec![0u8; msgsize.max(0) as usize];
    let mut result = Ok(());
    for _ in 0..count {
        let mut prio = 0u32;
        // SAFETY: a buffer of the queue's message size and a u32 of ours.
        let n = unsafe { libc::syscall(libc::SYS_mq_timedreceive, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len(), &mut prio as *mut u32, std::ptr::null::<libc::timespec>()) };
        if n < 0 {
            result = Err(Error::Sys { context: format!("reading message queue /{name}"), err: Errno::last() });
            break;
        }
        taken.push((prio, buf[..n as usize].to_vec()));
    }
    for (prio, data) in &taken {
        let sent = send(fd, name, *prio, data);
        if result.is_ok() {
            result = sent;
        }
    }
    result.map(|_| taken)
}

/// crust's file of the queues (written only when there are some).
pub fn write(queues: &[Queue], id: u32, dir: &mut ImageDir) -> Result<u64> {
    if queues.is_empty() {
        return Ok(0);
    }
    dir.write_json(&file_name(id), &queues)
}

pub fn load(dir: &Path, id: u32) -> Result<Vec<Queue>> {
    let path = dir.join(file_name(id));
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io { context: format!("reading {}", path.display()), err: e }),
    };
    let queues: Vec<Queue> = serde_json::from_slice(&text).map_err(|e| Error::image(&path, format!("undecodable: {e}")))?;
    for q in &queues {
        let bad = |what: String| Error::image(&path, format!("message queue /{}: {what}", q.name));
        if q.name.is_empty() || q.name.contains('/') || q.name.len() > 255 {
            return Err(bad("not a queue name".into()));
        }
        if q.maxmsg < 1 || q.msgsize < 1 || q.messages.len() as i64 > q.maxmsg {
            return Err(bad(format!("{} messages in a queue of {} of {} bytes", q.messages.len(), q.maxmsg, q.msgsize)));
        }
        if let Some((_, m)) = q.messages.iter().find(|(_, m)| m.len() as i64 > q.msgsize) {
            return Err(bad(format!("a message of {} bytes is longer than its queue's {}", m.len(), q.msgsize)));
        }
    }
    Ok(queues)
}

/// Make every queue with its messages, in the namespace the calling thread
/// is in.
pub fn make(queues: &[Queue]) -> Result<()> {
    use super::{at_least, MQ_MSGSIZE_MAX, MQ_MSG_MAX, MQ_QUEUES_MAX};
    if queues.is_empty() {
        return Ok(());
    }
    // Without CAP_SYS_RESOURCE (root lacks it here) the limits bind crust too.
    at_least(MQ_QUEUES_MAX, queues.len() as u64)?;
    at_least(MQ_MSG_MAX, queues.iter().map(|q| q.maxmsg as u64).max().unwrap_or(0))?;
    at_least(MQ_MSGSIZE_MAX, queues.iter().map(|q| q.msgsize as u64).max().unwrap_or(0))?;
    for q in queues {
        let mut attr: libc::mq_attr = super::zeroed();
        attr.mq_maxmsg = q.maxmsg;
        attr.mq_msgsize = q.msgsize;
        let fd = mq_open(&q.name, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NONBLOCK, q.mode & 0o777, Some(&attr))?;
        // The mode as it was (mq_open applies crust's umask), and its owner.
        nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(q.mode)).ctx(|| format!("setting the mode of message queue /{}", q.name))?;
        nix::unistd::fchown(&fd, Some(q.uid.into()), Some(q.gid.into())).ctx(|| format!("setting the owner of message queue /{}", q.name))?;
        for (prio, data) in &q.messages {
            send(&fd, &q.name, *prio, data)?;
        }
    }
    Ok(())
}
