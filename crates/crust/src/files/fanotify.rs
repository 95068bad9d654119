//! fanotify groups and their marks. fdinfo gives the group's fanotify_init
//! flags and event_f_flags, then each mark: on an inode (with the file
//! handle of the inode and the device of its file system), on a mount (by
//! mount id), or on a whole file system (by device), each with its mark
//! flags, mask and ignored mask. As in CRIU the marks go inline in the
//! fanotify file entry of files.img; a mount mark keeps the mount's path, and
//! a file-system mark is crust's own mark type (CRIU has none).
//!
//! A restore calls fanotify_init in the task with the saved flags, then
//! fanotify_mark for each mark: an inode found again by its handle (in
//! crust, as for inotify), a mount by its path (which must still be a mount
//! of the same device), a file system by any mount of its device. The
//! ignored mask goes in with a second call, with FAN_MARK_IGNORE when the
//! mark was made with it (6.0+), else with FAN_MARK_IGNORED_MASK.
//!
//! Refused: events queued and not read yet (FIONREAD; reading them would
//! take them from the process), marks of a kind fdinfo shows that crust
//! does not know (mount-namespace marks), and permission groups
//! (FAN_CLASS_CONTENT, FAN_CLASS_PRE_CONTENT): the permission events such a
//! group read and has not answered yet are visible nowhere, and would be
//! lost (the kernel answers them FAN_ALLOW when the dumped group goes).

use std::os::fd::AsRawFd;

use super::inotify::{handle_path, parse_handle};
use super::{fown_of, FdRestorer, FileKind, FileTable, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::load::DumpImage;
use crate::images::proto::{
    FanotifyFileEntry, FanotifyInodeMarkEntry, FanotifyMarkEntry, FanotifyMountMarkEntry, FdTypes, FileEntry, MarkType,
};

pub struct Fanotify;

// fanotify(7) flags, which the libc crate lacks in part.
/// FAN_CLASS_CONTENT (0x4) and FAN_CLASS_PRE_CONTENT (0x8).
const FAN_CLASS_BITS: u32 = 0xc;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;

impl FileKind for Fanotify {
    fn name(&self) -> &'static str {
        "fanotify"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Fanotify
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.link == "anon_inode:[fanotify]"
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let queued = queued_bytes(fd)?;
        if queued > 0 {
            return Err(fd.unsupported(&format!("a fanotify group with {queued} bytes of events not read yet is")));
        }
        let mut head = None;
        let mut marks = Vec::new();
        for line in fd.info.lines().filter_map(|l| l.strip_prefix("fanotify ")) {
            if line.starts_with("flags:") {
                head = parse_head(line);
                continue;
            }
            let mark = parse_mark(fd.pid, line).map_err(|why| fd.unsupported(&format!("a fanotify mark fdinfo shows as {line:?} ({why}) is")))?;
            marks.push(mark);
        }
        let (faflags, evflags) = head.ok_or_else(|| Error::io_other(format!("reading /proc/{}/fdinfo/{}", fd.pid, fd.fd), "no fanotify flags line"))?;
        if faflags & FAN_CLASS_BITS != 0 {
            return Err(fd.unsupported("a fanotify permission group (FAN_CLASS_CONTENT or FAN_CLASS_PRE_CONTENT), whose events read and not answered yet no one can see, is"));
        }
        let id = table.new_id();
        marks.iter_mut().for_each(|m| m.id = id);
        Ok(FileEntry {
            r#type: FdTypes::Fanotify as i32,
            id,
            ffy: Some(FanotifyFileEntry { id, flags: fd.flags, fown: fown_of(fd, table)?, faflags, evflags, mark: marks }),
            ..Default::default()
        })
    }

    /// Every marked inode, mount and file system must be found again.
    fn check(&self, entry: &FileEntry, _img: &DumpImage) -> Option<String> {
        let problems: Vec<String> = entry.ffy.as_ref()?.mark.iter().filter_map(|m| mark_target(m).err()).collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let e = entry.ffy.as_ref().ok_or_else(|| super::missing(entry, "fanotify"))?;
        // The group keeps its init flags as given, FAN_CLOEXEC and
        // FAN_NONBLOCK included (fdinfo shows them): the same again. The fd's
        // FD_CLOEXEC and the file's O_NONBLOCK are set with the others' below.
        let fd = r.task.call("fanotify_init", libc::SYS_fanotify_init, [e.faflags as u64, e.evflags as u64, 0, 0, 0, 0])?;
        let fd = r.to_high(fd)?;
        // fdinfo lists the newest mark first (the kernel puts each new one
        // at the head of the group's list): added oldest first, they come
        // out in the same order.
        for m in e.mark.iter().rev() {
            let (path, kind) = mark_target(m).map_err(|why| Error::Invalid(format!("fanotify file {}: {why}", e.id)))?;
            let evictable = m.mflags & FAN_MARK_EVICTABLE;
            if m.mask != 0 {
                mark(r, fd, FAN_MARK_ADD | kind | evictable, m.mask, &path)?;
            }
            if m.ignored_mask != 0 {
                let how = if m.mflags & FAN_MARK_IGNORE != 0 { FAN_MARK_IGNORE } else { FAN_MARK_IGNORED_MASK };
                let flags = FAN_MARK_ADD | kind | evictable | how | (m.mflags & FAN_MARK_IGNORED_SURV_MODIFY);
                mark(r, fd, flags, m.ignored_mask, &path)?;
            }
        }
        r.task.call("fcntl(F_SETFL) of a fanotify group", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, e.flags as u64, 0, 0, 0])?;
        Ok(fd)
    }
}

/// fanotify_mark(fd, flags, mask, AT_FDCWD, path) in the task.
fn mark(r: &mut FdRestorer, fd: u64, flags: u32, mask: u32, path: &str) -> Result<()> {
    let at = r.scratch.reset().put_str(path)?;
    let what = format!("fanotify_mark of {path} (flags {flags:#x}, mask {mask:#x})");
    r.task.call(&what, libc::SYS_fanotify_mark, [fd, flags as u64, mask as u64, libc::AT_FDCWD as u64, at, 0])?;
    Ok(())
}

/// Bytes of events queued in the group of `fd` (FIONREAD).
fn queued_bytes(fd: &OpenFd) -> Result<i32> {
    let file = fd.take()?;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("FIONREAD on fd {} of process {}", fd.fd, fd.pid));
    }
    Ok(n)
}

/// `flags:3 event-flags:8000` (hex): fanotify_init's two arguments.
fn parse_head(line: &str) -> Option<(u32, u32)> {
    let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name));
    let hex = |name: &str| u32::from_str_radix(field(name)?, 16).ok();
    Some((hex("flags:")?, hex("event-flags:")?))
}

/// One mark of fdinfo (all hex):
/// `ino:98e142 sdev:fe00000 mflags:0 mask:a ignored_mask:0 fhandle-bytes:8 ...`,
/// `mnt_id:1b mflags:0 mask:20 ignored_mask:0`, or
/// `sdev:fe00000 mflags:0 mask:2 ignored_mask:0`. A mount's path and device
/// are read from the mount table of process `pid`.
fn parse_mark(pid: i32, line: &str) -> std::result::Result<FanotifyMarkEntry, String> {
    let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name));
    let hex = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok()).ok_or_else(|| format!("no {name}"));
    let mut m = FanotifyMarkEntry {
        mflags: hex("mflags:")? as u32,
        mask: hex("mask:")? as u32,
        ignored_mask: hex("ignored_mask:")? as u32,
        ..Default::default()
    };
    if line.starts_with("ino:") {
        let mut handle = parse_handle(line).ok_or("an unreadable file handle")?;
        m.r#type = MarkType::Inode as i32;
        m.s_dev = hex("sdev:")? as u32;
        handle.path = Some(handle_path(m.s_dev, &handle).map_err(|why| format!("its file cannot be opened by handle: {why}"))?);
        m.ie = Some(FanotifyInodeMarkEntry { i_ino: hex("ino:")?, f_handle: handle });
    } else if line.starts_with("mnt_id:") {
        let mnt_id = hex("mnt_id:")? as u32;
        let mounts = crate::proc::process_at(&pid.to_string()).and_then(|p| p.mountinfo().map_err(crate::proc::io_error)).map_err(|e| e.to_string())?;
        let mount = mounts.into_iter().find(|mi| mi.mnt_id == mnt_id as i32).ok_or_else(|| format!("no mount {mnt_id} in its mount table"))?;
        m.r#type = MarkType::Mount as i32;
        m.s_dev = encode_dev(&mount.majmin).ok_or_else(|| format!("mount {mnt_id} of device {}", mount.majmin))?;
        m.me = Some(FanotifyMountMarkEntry { mnt_id, path: Some(mount.mount_point.to_string_lossy().into_owned()) });
    } else if line.starts_with("sdev:") {
        m.r#type = MarkType::Filesystem as i32;
        m.s_dev = hex("sdev:")? as u32;
    } else {
        return Err("a kind of mark crust does not know".into());
    }
    Ok(m)
}

/// A device as fdinfo prints it (major << 20 | minor) from mountinfo's "8:1".
fn encode_dev(majmin: &str) -> Option<u32> {
    let (major, minor) = majmin.split_once(':')?;
    Some(major.parse::<u32>().ok()? << 20 | minor.parse::<u32>().ok()?)
}

/// Where a mark goes now, and its fanotify_mark flag; why not, if nowhere.
fn mark_target(m: &FanotifyMarkEntry) -> std::result::Result<(String, u32), String> {
    let majmin = format!("{}:{}", m.s_dev >> 20, m.s_dev & 0xf_ffff);
    match MarkType::try_from(m.r#type) {
        Ok(MarkType::Inode) => {
            let ie = m.ie.as_ref().ok_or("a fanotify inode mark without its inode")?;
            let then = ie.f_handle.path.as_deref().unwrap_or("?");
            let path = handle_path(m.s_dev, &ie.f_handle)
                .map_err(|why| format!("the file of a fanotify mark ({then} at dump time) cannot be found: {why}"))?;
            Ok((path, FAN_MARK_INODE_FLAGS))
        }
        Ok(MarkType::Mount) => {
            let path = m.me.as_ref().and_then(|me| me.path.clone()).ok_or("a fanotify mount mark without its path")?;
            let here = own_mounts()?.into_iter().any(|mi| mi.mount_point.as_os_str() == path.as_str() && mi.majmin == majmin);
            if !here {
                return Err(format!("the mount of a fanotify mark, {path} (device {majmin}), is not mounted here"));
            }
            Ok((path, FAN_MARK_MOUNT))
        }
        Ok(MarkType::Filesystem) => {
            let mount = own_mounts()?.into_iter().find(|mi| mi.majmin == majmin);
            let mount = mount.ok_or_else(|| format!("the file system of a fanotify mark (device {majmin}) is not mounted here"))?;
            Ok((mount.mount_point.to_string_lossy().into_owned(), FAN_MARK_FILESYSTEM))
        }
        Err(_) => Err(format!("fanotify mark of unknown type {}", m.r#type)),
    }
}

/// An inode mark is on the path's own file, never a symlink's target.
const FAN_MARK_INODE_FLAGS: u32 = FAN_MARK_DONT_FOLLOW;

fn own_mounts() -> std::result::Result<Vec<procfs::process::MountInfo>, String> {
    let me = procfs::process::Process::myself().map_err(|e| e.to_string())?;
    Ok(me.mountinfo().map_err(|e| e.to_string())?.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines_are_read() {
        assert_eq!(parse_head("flags:201 event-flags:8000"), Some((0x201, 0x8000)));
        let m = parse_mark(0, "sdev:fe00000 mflags:0 mask:2 ignored_mask:0").unwrap();
        assert_eq!((m.r#type, m.s_dev, m.mask, m.ignored_mask), (MarkType::Filesystem as i32, 0xfe0_0000, 2, 0));
        assert!(parse_mark(0, "mnt_ns:4026531841 mflags:0 mask:2 ignored_mask:0").unwrap_err().contains("does not know"));
        assert!(parse_mark(0, "sdev:fe00000 mask:2").is_err());
        assert_eq!(encode_dev("254:0"), Some(0xfe0_0000));
        assert_eq!(encode_dev("8:17"), Some(8 << 20 | 17));
    }
}
