//! inotify instances and their watches. fdinfo lists each watch: its number
//! (wd), mask, and the file handle of the watched inode with the device of its
//! file system. As in CRIU, the watches go inline in the inotify file entry,
//! each with its handle (and, in the handle entry, the path it had at dump
//! time, for messages).
//!
//! A restore opens each handle again from a mount of that device
//! (open_by_handle_at, in crust): a file replaced since the dump has another
//! handle and is refused, a file renamed is found at its new path. The task
//! then watches that path with the saved mask. Watch numbers come out the same
//! because the kernel hands them out in increasing order, never reusing one
//! until it wraps: the watches are added in the order of their numbers, and a
//! number skipped at dump time (a watch since removed) is skipped again by
//! adding the next watch and removing it until it gets its number. The
//! IN_IGNORED events those removals queue are read away before the task runs.
//!
//! Events queued but not read at dump time are refused: fdinfo does not show
//! them, and reading them would take them from the process.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{fown_of, FdRestorer, FileKind, FileTable, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::load::DumpImage;
use crate::images::proto::{FdTypes, FhEntry, FileEntry, InotifyFileEntry, InotifyWdEntry};

pub struct Inotify;

/// Most numbers a restore skips to give a watch its number: each costs two
/// injected syscalls.
const MAX_SKIPPED: u32 = 1 << 16;

impl FileKind for Inotify {
    fn name(&self) -> &'static str {
        "inotify"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Inotify
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.link == "anon_inode:inotify"
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let queued = queued_bytes(fd)?;
        if queued > 0 {
            return Err(fd.unsupported(&format!("an inotify instance with {queued} bytes of events not read yet is")));
        }
        let mut wds = Vec::new();
        for line in fd.info.lines().filter_map(|l| l.strip_prefix("inotify ")) {
            let mut wd = parse_watch(line).ok_or_else(|| fd.unsupported(&format!("an inotify watch fdinfo shows as {line:?} is")))?;
            match handle_path(wd.s_dev, &wd.f_handle) {
                Ok(path) => wd.f_handle.path = Some(path),
                Err(why) => return Err(fd.unsupported(&format!("inotify watch {} on inode {} ({why}) is", wd.wd, wd.i_ino))),
            }
            wds.push(wd);
        }
        let id = table.new_id();
        wds.iter_mut().for_each(|w| w.id = id);
        Ok(FileEntry {
            r#type: FdTypes::Inotify as i32,
            id,
            ify: Some(InotifyFileEntry { id, flags: fd.flags, fown: fown_of(fd, table)?, wd: wds }),
            ..Default::default()
        })
    }

    /// Every watched file must be found again by its handle.
    fn check(&self, entry: &FileEntry, _img: &DumpImage) -> Option<String> {
        let problems: Vec<String> = entry.ify.as_ref()?.wd.iter().filter_map(|w| watch_path(w).err()).collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let e = entry.ify.as_ref().ok_or_else(|| super::missing(entry, "inotify"))?;
        let fd = r.task.call("inotify_init1", libc::SYS_inotify_init1, [libc::IN_NONBLOCK as u64, 0, 0, 0, 0, 0])?;
        let fd = r.to_high(fd)?;
        let mut watches: Vec<&InotifyWdEntry> = e.wd.iter().collect();
        watches.sort_by_key(|w| w.wd);
        for w in watches {
            let path = watch_path(w).map_err(|why| Error::Invalid(format!("inotify file {}: {why}", e.id)))?;
            add_watch_numbered(r, fd, &path, w)?;
        }
        drain(r, fd)?;
        r.task.call("fcntl(F_SETFL) of an inotify", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, e.flags as u64, 0, 0, 0])?;
        Ok(fd)
    }
}

/// Bytes of events queued in the inotify instance of `fd` (FIONREAD).
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

/// One watch of fdinfo: `wd:1 ino:a2 sdev:800001 mask:2 ignored_mask:0
/// fhandle-bytes:8 fhandle-type:1 f_handle:a200000012345678` (all hex).
fn parse_watch(line: &str) -> Option<InotifyWdEntry> {
    let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name));
    let hex = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
    Some(InotifyWdEntry {
        id: 0,
        i_ino: hex("ino:")?,
        mask: hex("mask:")? as u32,
        ignored_mask: hex("ignored_mask:")? as u32,
        s_dev: hex("sdev:")? as u32,
        wd: hex("wd:")? as u32,
        f_handle: parse_handle(line)?,
    })
}

/// The file handle of an fdinfo line of inotify or fanotify:
/// `fhandle-bytes:8 fhandle-type:1 f_handle:a200000012345678` (hex).
pub(super) fn parse_handle(line: &str) -> Option<FhEntry> {
    let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name));
    let hex = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
    let text = field("f_handle:")?;
    let bytes: Vec<u8> = (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect::<Option<_>>()?;
    let handle_bytes = hex("fhandle-bytes:")? as u32;
    if bytes.len() != handle_bytes as usize {
        return None;
    }
    Some(FhEntry {
        bytes: handle_bytes,
        r#type: hex("fhandle-type:")? as u32,
        // As CRIU packs it: little-endian words.
        handle: bytes.chunks(8).map(|c| c.iter().rev().fold(0u64, |acc, &b| acc << 8 | b as u64)).collect(),
        path: None,
        mnt_id: None,
    })
}

/// The path of a watch's file now, found by its handle; why not, if not.
fn watch_path(w: &InotifyWdEntry) -> std::result::Result<String, String> {
    let fh = &w.f_handle;
    let then = fh.path.as_deref().unwrap_or("?");
    handle_path(w.s_dev, fh).map_err(|why| format!("the file of inotify watch {} ({then} at dump time) cannot be found: {why}", w.wd))
}

/// Open the file of handle `fh` on the file system of device `s_dev` (the
/// kernel's encoding: major << 20 | minor) from a mount of it, and return the
/// path it is at.
pub(super) fn handle_path(s_dev: u32, fh: &FhEntry) -> std::result::Result<String, String> {
    let majmin = format!("{}:{}", s_dev >> 20, s_dev & 0xf_ffff);
    let mounts = procfs::process::Process::myself().and_then(|p| p.mountinfo()).map_err(|e| e.to_string())?;
    let mount = mounts.into_iter().find(|m| m.majmin == majmin).ok_or_else(|| format!("no mount of device {majmin} here"))?;
    let dir = std::fs::File::open(&mount.mount_point).map_err(|e| format!("{}: {e}", mount.mount_point.display()))?;
    let bytes: Vec<u8> = fh.handle.iter().flat_map(|w| w.to_le_bytes()).take(fh.bytes as usize).collect();
    if bytes.len() != fh.bytes as usize {
        return Err(format!("a file handle of {} bytes holds {}", fh.bytes, bytes.len()));
    }
    // struct file_handle: handle_bytes, handle_type, then the bytes.
    let mut raw = Vec::with_capacity(8 + bytes.len());
    raw.extend_from_slice(&fh.bytes.to_ne_bytes());
    raw.extend_from_slice(&(fh.r#type as i32).to_ne_bytes());
    raw.extend_from_slice(&bytes);
    // SAFETY: `raw` is a struct file_handle whose handle_bytes says how many
    // bytes follow the header, all of them in `raw`; the kernel only reads it.
    let r = unsafe { libc::syscall(libc::SYS_open_by_handle_at, dir.as_raw_fd(), raw.as_mut_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if r < 0 {
        return Err(format!("open_by_handle_at: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a new fd, ours alone.
    let file = unsafe { OwnedFd::from_raw_fd(r as i32) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|e| e.to_string())?;
    let path = path.to_string_lossy().into_owned();
    if path.ends_with(super::ghost::DELETED) {
        return Err(format!("{path}: it was deleted"));
    }
    Ok(path)
}

/// Watch `path` with the saved mask and get the saved watch number, skipping
/// numbers (add, remove, add again) until then.
fn add_watch_numbered(r: &mut FdRestorer, fd: u64, path: &str, w: &InotifyWdEntry) -> Result<()> {
    // The path is the file itself: never follow it if it is a symlink.
    let mask = (w.mask | libc::IN_DONT_FOLLOW) as u64;
    for _ in 0..=MAX_SKIPPED {
        let at = r.scratch.reset().put_str(path)?;
        let wd = r.task.call("inotify_add_watch", libc::SYS_inotify_add_watch, [fd, at, mask, 0, 0, 0])?;
        if wd == w.wd as u64 {
            return Ok(());
        }
        if wd > w.wd as u64 {
            return Err(Error::Invalid(format!("inotify watch {} on {path}: the kernel gave number {wd}, past it", w.wd)));
        }
        r.task.call("inotify_rm_watch", libc::SYS_inotify_rm_watch, [fd, wd, 0, 0, 0, 0])?;
    }
    Err(Error::unsupported(format!("inotify watch {} on {path}", w.wd), format!("more than {MAX_SKIPPED} watch numbers to skip: not supported")))
}

/// Read away the events the restore itself caused (IN_IGNORED of the watches
/// removed): the instance had none queued at dump time.
fn drain(r: &mut FdRestorer, fd: u64) -> Result<()> {
    const BUF: usize = 4096;
    let buf = r.scratch.reset().put(&[0u8; BUF])?;
    loop {
        match r.task.call("read of an inotify", libc::SYS_read, [fd, buf, BUF as u64, 0, 0, 0]) {
            Ok(_) => continue,
            Err(Error::InTask { errno: nix::errno::Errno::EAGAIN, .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
