//! The mount syscalls crust builds a tree with, on file descriptors (the new
//! mount API: fsopen, fsmount, open_tree, move_mount, mount_setattr), and
//! openat2 confined to a root, so that no path of the images is resolved
//! through a symlink out of the container's root.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Invalid(format!("a nul byte in {s:?}")))
}

fn fd_result(r: libc::c_long, what: impl FnOnce() -> String) -> Result<OwnedFd> {
    if r < 0 {
        return Err(Error::Io { context: what(), err: std::io::Error::last_os_error() });
    }
    // SAFETY: the kernel just returned this new fd, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn unit_result(r: libc::c_long, what: impl FnOnce() -> String) -> Result<()> {
    if r < 0 {
        return Err(Error::Io { context: what(), err: std::io::Error::last_os_error() });
    }
    Ok(())
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `path` under `root` as if `root` were "/" (symlinks and ".." stay inside),
/// opened O_PATH.
pub fn open_in(root: BorrowedFd, path: &str) -> Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let c = cstr(if rel.is_empty() { "." } else { rel })?;
    let how = OpenHow { flags: (libc::O_PATH | libc::O_CLOEXEC) as u64, mode: 0, resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
    // SAFETY: `c` and `how` are alive for the call; the kernel reads `how`'s size.
    let r = unsafe { libc::syscall(libc::SYS_openat2, root.as_raw_fd(), c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>()) };
    fd_result(r, || format!("opening {path} in the new root"))
}

/// A plain O_PATH open of a path of crust's (the host's) view.
pub fn open_path(path: &str) -> Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: `c` is alive for the call.
    let r = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    fd_result(r as libc::c_long, || format!("opening {path}"))
}

const OPEN_TREE_CLONE: u64 = 1;
const AT_EMPTY_PATH: u64 = libc::AT_EMPTY_PATH as u64;

/// A detached copy of the mount at `at` (the mount alone, not those under it).
pub fn clone_mount(at: BorrowedFd, what: &str) -> Result<OwnedFd> {
    // SAFETY: the empty path is a static nul-terminated string.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, at.as_raw_fd(), c"".as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as u64 | AT_EMPTY_PATH) };
    fd_result(r, || format!("copying the mount of {what}"))
}

/// A new file system context of type `fstype` (fsopen).
pub fn fsopen(fstype: &str) -> Result<OwnedFd> {
    let c = cstr(fstype)?;
    // SAFETY: `c` is alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_fsopen, c.as_ptr(), 1u32 /* FSOPEN_CLOEXEC */) };
    fd_result(r, || format!("fsopen({fstype})"))
}

const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;

/// Set the options (comma-separated, as mountinfo shows them) and the source
/// of a file system context, make its super block and mount it, detached,
/// with mount attributes `attrs`.
pub fn fs_create(fs: BorrowedFd, source: &str, options: &str, sb_ro: bool, attrs: u64, what: &str) -> Result<OwnedFd> {
    let set = |cmd: u32, key: &str, value: Option<&str>| -> Result<()> {
        let k = cstr(key)?;
        let v = value.map(cstr).transpose()?;
        let vp = v.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
        // SAFETY: the strings are alive for the call.
        let r = unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, k.as_ptr(), vp, 0) };
        unit_result(r, || format!("option {key}{} of {what}", value.map(|v| format!("={v}")).unwrap_or_default()))
    };
    if !source.is_empty() {
        set(FSCONFIG_SET_STRING, "source", Some(source))?;
    }
    for w in options.split(',').filter(|w| !w.is_empty()) {
        match w.split_once('=') {
            Some((k, v)) => set(FSCONFIG_SET_STRING, k, Some(v))?,
            None => set(FSCONFIG_SET_FLAG, w, None)?,
        }
    }
    if sb_ro {
        set(FSCONFIG_SET_FLAG, "ro", None)?;
    }
    // SAFETY: no pointer arguments.
    let r = unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, 0, 0, 0) };
    unit_result(r, || format!("making the super block of {what}"))?;
    // SAFETY: no pointer arguments.
    let r = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), 1u32 /* FSMOUNT_CLOEXEC */, attrs) };
    fd_result(r, || format!("mounting {what}"))
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Set a mount's attributes (exactly `attrs`) and, if not 0, its propagation
/// (MS_SHARED, MS_SLAVE, MS_PRIVATE or MS_UNBINDABLE).
pub fn set_attrs(m: BorrowedFd, attrs: Option<u64>, propagation: u64, what: &str) -> Result<()> {
    use super::info::*;
    let all = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC | MOUNT_ATTR__ATIME | MOUNT_ATTR_NODIRATIME | MOUNT_ATTR_NOSYMFOLLOW;
    let a = match attrs {
        Some(set) => MountAttr { attr_set: set, attr_clr: all, propagation, userns_fd: 0 },
        None => MountAttr { attr_set: 0, attr_clr: 0, propagation, userns_fd: 0 },
    };
    // SAFETY: `a` is alive for the call; the kernel reads `a`'s size.
    let r = unsafe {
        libc::syscall(libc::SYS_mount_setattr, m.as_raw_fd(), c"".as_ptr(), AT_EMPTY_PATH as u32, &a as *const MountAttr, std::mem::size_of::<MountAttr>())
    };
    unit_result(r, || format!("setting the mount options of {what}"))
}

/// Attach the detached mount `m` on `target`.
pub fn attach(m: BorrowedFd, target: BorrowedFd, what: &str) -> Result<()> {
    const F_EMPTY_PATH: u32 = 4;
    const T_EMPTY_PATH: u32 = 0x40;
    // SAFETY: the empty paths are static nul-terminated strings.
    let r = unsafe { libc::syscall(libc::SYS_move_mount, m.as_raw_fd(), c"".as_ptr(), target.as_raw_fd(), c"".as_ptr(), F_EMPTY_PATH | T_EMPTY_PATH) };
    unit_result(r, || format!("mounting {what}"))
}

/// mount(2) with paths of crust's view, for the few calls without a file
/// descriptor form (the propagation of the whole namespace, a bind onto itself).
pub fn mount(source: Option<&str>, target: &str, flags: u64) -> Result<()> {
    let s = source.map(cstr).transpose()?;
    let t = cstr(target)?;
    // SAFETY: the strings are alive for the call.
    let r = unsafe { libc::mount(s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()), t.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    unit_result(r as libc::c_long, || format!("mount {source:?} on {target} (flags {flags:#x})"))
}

/// Make the current directory the root (pivot_root(".", ".")) and detach the
/// old root, which pivot_root stacked on it.
pub fn pivot_here() -> Result<()> {
    // SAFETY: static nul-terminated strings.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    unit_result(r, || "pivot_root into the new root".to_string())?;
    // SAFETY: as above.
    let r = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
    unit_result(r as libc::c_long, || "detaching the old root".to_string())?;
    // SAFETY: as above.
    let r = unsafe { libc::chdir(c"/".as_ptr()) };
    unit_result(r as libc::c_long, || "chdir to the new root".to_string())
}

pub fn fchdir(fd: BorrowedFd) -> Result<()> {
    // SAFETY: a plain syscall on a live fd.
    let r = unsafe { libc::fchdir(fd.as_raw_fd()) };
    unit_result(r as libc::c_long, || "entering the new root".to_string())
}

/// The path the kernel gives the file of `fd` (crust's view, no symlinks).
pub fn path_of(fd: BorrowedFd) -> Result<std::path::PathBuf> {
    let link = format!("/proc/thread-self/fd/{}", fd.as_raw_fd());
    std::fs::read_link(&link).map_err(|e| Error::Io { context: format!("reading {link}"), err: e })
}
