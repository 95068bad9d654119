//! The mount namespace: the tree's mounts (mountpoints-ID.img, criu's
//! mnt_entry), and the contents of its own tmpfs mounts
//! (tmpfs-dev-N.tar.gz.img).
//!
//! Each mount is made again one of four ways, decided at dump
//! ([`How`]) and again, from the entries alone, at restore:
//! - the root: a directory of the host (a bind mount, or an overlayfs as
//!   container engines mount it), found again at the path it had (its
//!   `ext_key`, crust's note) or given by `--root`;
//! - a new mount of a file system of no device (proc, sysfs, mqueue, devpts,
//!   cgroup, cgroup2, and tmpfs with its saved contents). proc, sysfs and
//!   mqueue show the namespaces of their mounter: their file system context
//!   is opened (fsopen) by the restored root itself, inside its namespaces;
//! - a bind of a mount made before it (same device, a directory within);
//! - a bind of a host file or directory (external: criu's
//!   `--ext-mount-map KEY:VAL` / `auto` at dump, the host path at restore).
//!
//! Any other mount (a file system mounted inside the container from a
//! device, fuse, nfs, an overlayfs elsewhere than at the root) is refused
//! by mount point and type.
//!
//! The restore builds the tree from a crust thread in the root's new mount
//! namespace (a copy of crust's, all made slave first, so nothing reaches
//! the host): the root is bound on itself, every mount is attached under it,
//! parents first, by file descriptors resolved inside the new root, then
//! pivot_root moves the namespace (and the restored root, whose root was the
//! old one) into it and the old root is detached.

mod info;
mod order;
mod sys;
mod tmpfs;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::sched::CloneFlags;

use super::{in_namespace, NsKind, NsOptions, NsRoot};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_all, DumpImage};
use crate::images::proto::{MntEntry, TaskKobjIdsEntry};
use crate::images::{ImageDir, Kind};
use info::MountInfo;

pub struct Mnt;

fn image_name(id: u32) -> String {
    format!("mountpoints-{id}.img")
}

/// criu's fstype numbers (mnt.proto), by kernel name; others are AUTO with
/// their name in `fsname`.
const FSTYPES: &[(&str, u32)] = &[
    ("proc", 1),
    ("sysfs", 2),
    ("devtmpfs", 3),
    ("binfmt_misc", 4),
    ("tmpfs", 5),
    ("devpts", 6),
    ("pstore", 8),
    ("securityfs", 9),
    ("fusectl", 10),
    ("debugfs", 11),
    ("cgroup", 12),
    ("mqueue", 14),
    ("fuse", 15),
    ("overlay", 17),
    ("autofs", 18),
    ("tracefs", 19),
    ("cgroup2", 23),
];
const AUTO: u32 = 16;

/// File systems mounted anew at restore, with the options they had.
const FRESH: &[&str] = &["proc", "sysfs", "mqueue", "devpts", "cgroup", "cgroup2"];
/// Those a task inside the namespaces must open: they show its pid, network
/// or ipc namespace.
const BY_THE_TASK: &[&str] = &["proc", "sysfs", "mqueue"];
/// File systems whose contents live elsewhere or elsewhen (a server, a
/// daemon, an automounter): refused even as a bind of a host directory.
const REFUSED: &[&str] = &["fuse", "fuseblk", "nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "glusterfs", "autofs", "fusectl", "afs"];

/// How a mount is made again.
#[derive(Clone, Debug, PartialEq, Eq)]
enum How {
    /// The root: a host directory.
    Root,
    /// A new mount of its file system type.
    Fresh,
    /// A new tmpfs, filled from the images.
    Tmpfs,
    /// A bind of a directory of the mount made before it (index in the list).
    BindOf(usize),
    /// A bind of a host path (ext_key names it).
    External,
}

fn fs_name(e: &MntEntry) -> String {
    e.fsname.clone().unwrap_or_else(|| FSTYPES.iter().find(|(_, n)| *n == e.fstype).map(|(s, _)| s.to_string()).unwrap_or_else(|| format!("type {}", e.fstype)))
}

/// `path` is `dir` or under it.
fn within(path: &str, dir: &str) -> Option<String> {
    if dir == "/" {
        return Some(path.to_string());
    }
    let rest = path.strip_prefix(dir)?;
    match rest {
        "" => Some("/".to_string()),
        r if r.starts_with('/') => Some(r.to_string()),
        _ => None,
    }
}

/// How each entry is made, from the entries alone (in parent-first order);
/// an entry none fits is an error naming it.
fn plan(entries: &[MntEntry], tmpfs_saved: impl Fn(u32) -> bool) -> std::result::Result<Vec<How>, String> {
    let mut hows = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let name = fs_name(e);
        let how = if i == 0 {
            How::Root
        } else if e.ext_mount == Some(true) {
            How::External
        } else if let Some(src) = bind_source(&entries[..i], &hows, e) {
            How::BindOf(src)
        } else if name == "tmpfs" && e.root == "/" && tmpfs_saved(e.root_dev) {
            How::Tmpfs
        } else if FRESH.contains(&name.as_str()) && e.root == "/" {
            How::Fresh
        } else {
            return Err(format!("mount {} ({name}, {} of {}): crust can not make it again", e.mountpoint, e.root, e.source));
        };
        hows.push(how);
    }
    Ok(hows)
}

/// An earlier mount of the same file system showing a directory that holds
/// this one's (a peer of its shared group or its master's first, if any).
fn bind_source(before: &[MntEntry], hows: &[How], e: &MntEntry) -> Option<usize> {
    let entries = before;
    let candidates = || (0..before.len()).filter(|&j| entries[j].root_dev == e.root_dev && hows[j] != How::External && within(&e.root, &entries[j].root).is_some());
    let in_group = |j: &usize| {
        let s = entries[*j].shared_id;
        s.is_some() && (s == e.shared_id || s == e.master_id)
    };
    candidates().find(in_group).or_else(|| candidates().next())
}

/// The host mount showing `m`'s directory, and its path there, if any.
fn host_path(m: &MountInfo, host: &[MountInfo]) -> Option<String> {
    host.iter().filter(|h| (h.major, h.minor) == (m.major, m.minor)).find_map(|h| {
        let rest = within(&m.root, &h.root)?;
        let path = match (h.mountpoint.as_str(), rest.as_str()) {
            (mp, "/") => mp.to_string(),
            ("/", r) => r.to_string(),
            (mp, r) => format!("{mp}{r}"),
        };
        // Reached through this path, not hidden under another mount.
        let st = std::fs::metadata(&path).ok()?;
        (libc::major(st.dev()) == m.major && libc::minor(st.dev()) == m.minor).then_some(path)
    })
}

/// The mounts in parent-first order (the kernel's order among siblings).
/// A loop of parents can not be in a live mountinfo; in an image it is
/// refused (see `order_entries`).
fn parents_first(mounts: Vec<MountInfo>, pid: i32) -> Result<Vec<MountInfo>> {
    let ids: std::collections::HashSet<u32> = mounts.iter().map(|m| m.id).collect();
    let mut roots = mounts.iter().filter(|m| !ids.contains(&m.parent));
    let (Some(root), None) = (roots.next(), roots.next()) else {
        return Err(Error::unsupported(crate::proc::who(pid), "its mount namespace has no single root mount"));
    };
    // Depth first, as the kernel lists a tree it mounted in that order.
    let mut out = Vec::with_capacity(mounts.len());
    let mut stack = vec![root.clone()];
    while let Some(m) = stack.pop() {
        stack.extend(mounts.iter().rev().filter(|c| c.parent == m.id && c.id != m.id).cloned());
        out.push(m);
    }
    Ok(order::sources_first(out, |m| order::Key { id: m.id, parent: m.parent, dev: m.kdev(), root: &m.root, mountpoint: &m.mountpoint }))
}

fn entry_of(m: &MountInfo, who: &str) -> Result<MntEntry> {
    let flags = info::mount_flags(&m.mount_opts).map_err(|why| Error::unsupported(who, format!("mount {}: {why}", m.mountpoint)))?;
    let (sb_flags, options) = info::sb_flags_and_options(&m.super_opts);
    Ok(MntEntry {
        fstype: FSTYPES.iter().find(|(n, _)| *n == m.fstype).map(|(_, n)| *n).unwrap_or(AUTO),
        mnt_id: m.id,
        root_dev: m.kdev(),
        parent_mnt_id: m.parent,
        flags,
        root: m.root.clone(),
        mountpoint: m.mountpoint.clone(),
        source: m.source.clone(),
        options,
        shared_id: m.shared,
        master_id: m.master,
        fsname: Some(m.fstype.clone()),
        sb_flags: Some(sb_flags),
        ..Default::default()
    })
}

/// Read back at restore: the entries, parents first, and how each is made.
struct Tree {
    entries: Vec<MntEntry>,
    hows: Vec<How>,
    /// Contents of each saved tmpfs, by device.
    tmpfs: HashMap<u32, Vec<u8>>,
}

impl NsKind for Mnt {
    fn name(&self) -> &'static str {
        "mnt"
    }

    fn clone_flag(&self) -> CloneFlags {
        CloneFlags::CLONE_NEWNS
    }

    fn id(&self, ids: &TaskKobjIdsEntry) -> Option<u32> {
        ids.mnt_ns_id
    }

    fn dump(&self, pid: i32, id: u32, dir: &mut ImageDir, opts: &NsOptions) -> Result<u64> {
        let who = crate::proc::who(pid);
        let mounts = parents_first(info::read(pid)?, pid)?;
        let host = info::read(std::process::id() as i32)?;
        let host_devs: std::collections::HashSet<(u32, u32)> = host.iter().map(|h| (h.major, h.minor)).collect();
        let mut entries = Vec::with_capacity(mounts.len());
        let mut hows: Vec<How> = Vec::with_capacity(mounts.len());
        let mut tmpfs_devs = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            let mut e = entry_of(m, &who)?;
            let refuse = |why: String| Error::unsupported(&who, format!("mount {} ({}, {} of {}): {why}", m.mountpoint, m.fstype, m.root, m.source));
            if REFUSED.contains(&m.fstype.as_str()) || m.fstype.starts_with("fuse.") {
                return Err(refuse("its contents live outside the machine's memory and disks (a server or a daemon): not supported".into()));
            }
            if m.unbindable {
                // mnt_entry has no field for it.
                return Err(refuse("it is unbindable, which the images can not keep".into()));
            }
            let on_host = host_devs.contains(&(m.major, m.minor));
            let how = if i == 0 {
                let path = host_path(m, &host).ok_or_else(|| refuse("the root of the tree's mount namespace is not a directory of the host's".into()))?;
                e.ext_key = Some(path);
                How::Root
            } else if let Some(src) = bind_source(&entries, &hows, &e) {
                How::BindOf(src)
            } else if FRESH.contains(&m.fstype.as_str()) && m.root == "/" && !(m.fstype == "devpts" && on_host) {
                How::Fresh
            } else if m.fstype == "tmpfs" && m.root == "/" && !on_host {
                tmpfs_devs.push((m.kdev(), m.mountpoint.clone()));
                How::Tmpfs
            } else if m.fstype == "overlay" {
                return Err(refuse("an overlayfs is only supported as the root".into()));
            } else if let Some(path) = on_host.then(|| host_path(m, &host)).flatten() {
                let key = match opts.ext_mount_map.iter().find(|(k, _)| *k == m.mountpoint) {
                    Some((_, key)) => key.clone(),
                    None if opts.ext_mount_auto => path,
                    None => {
                        return Err(refuse(format!(
                            "it shows host path {path}: name it external with --ext-mount-map {}:KEY (KEY:{path} at restore) or --ext-mount-map auto",
                            m.mountpoint
                        )))
                    }
                };
                e.ext_mount = Some(true);
                e.ext_key = Some(key);
                How::External
            } else {
                return Err(refuse("a file system mounted inside the tree (from a device, or of a type crust does not make): not supported".into()));
            };
            entries.push(e);
            hows.push(how);
        }
        // A KEY naming no external mount is a mistake the user should hear
        // of, but for a bind of a file system the tree has itself (runc
        // names its masked /proc files, binds of the container's /dev/null):
        // saved as that bind, it needs no host path. An engine's keys are
        // not checked (ext_mount_keys_may_miss).
        for (key, _) in opts.ext_mount_map.iter().filter(|_| !opts.ext_mount_keys_may_miss) {
            if !mounts.iter().zip(&hows).any(|(m, h)| m.mountpoint == *key && matches!(h, How::External | How::BindOf(_))) {
                return Err(Error::Invalid(format!("--ext-mount-map {key}: the tree has no bind mount of a host path at {key}")));
            }
        }
        let mut bytes = 0;
        for (kdev, mountpoint) in tmpfs_devs {
            let what = format!("the tmpfs at {mountpoint} of {who}");
            let data = in_namespace(pid, "mnt", || {
                let at = sys::open_in(sys::open_path("/")?.as_fd(), &mountpoint)?;
                let copy = sys::clone_mount(at.as_fd(), &what)?;
                // Read from the copy as this thread's working directory: the
                // tree's /proc may be of its own pid namespace, where crust's
                // thread-self is not.
                sys::fchdir(copy.as_fd())?;
                tmpfs::archive(std::path::Path::new("."), &what, &opts.rebound_socket_files)
            })?;
            let mut w = dir.writer(&tmpfs::image_name(kdev), Kind::TmpfsDev)?;
            w.raw(&data)?;
            bytes += w.finish()?;
        }
        let mut w = dir.writer(&image_name(id), Kind::Mnts)?;
        for e in &entries {
            w.entry(e)?;
        }
        Ok(bytes + w.finish()?)
    }

    fn load_images(&self, img: &mut DumpImage, id: u32) -> Result<()> {
        let path = img.dir.join(image_name(id));
        let entries: Vec<MntEntry> = read_all(&path, Kind::Mnts)?;
        let ordered = order_entries(entries).map_err(|why| Error::image(&path, why))?;
        let mut tmpfs = HashMap::new();
        for e in ordered.iter().filter(|e| fs_name(e) == "tmpfs" && e.root == "/") {
            let file = img.dir.join(tmpfs::image_name(e.root_dev));
            if let Ok(data) = std::fs::read(&file) {
                tmpfs.insert(e.root_dev, data);
            }
        }
        let hows = plan(&ordered, |dev| tmpfs.contains_key(&dev)).map_err(|why| Error::image(&path, why))?;
        img.extras.insert(Tree { entries: ordered, hows, tmpfs });
        Ok(())
    }

    fn problems(&self, img: &DumpImage, opts: &NsOptions) -> Vec<String> {
        let Some(tree) = img.extras.get::<Tree>() else { return Vec::new() };
        let known = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        let mut out = Vec::new();
        for (e, how) in tree.entries.iter().zip(&tree.hows) {
            let name = fs_name(e);
            match how {
                How::Root => match root_path(e, opts) {
                    Ok(p) if std::path::Path::new(&p).is_dir() => {}
                    Ok(p) => out.push(format!("the tree's root directory {p} is missing (give another with --root)")),
                    Err(why) => out.push(why),
                },
                How::External => match external_path(e, opts) {
                    Ok(p) if std::path::Path::new(&p).exists() => {}
                    Ok(p) => out.push(format!("mount {}: its host path {p} is missing", e.mountpoint)),
                    Err(why) => out.push(why),
                },
                How::Fresh | How::Tmpfs if !known.lines().any(|l| l.split_whitespace().last() == Some(name.as_str())) => {
                    out.push(format!("mount {}: this host's kernel has no {name} file system", e.mountpoint))
                }
                _ => {}
            }
        }
        out
    }

    fn restore(&self, img: &DumpImage, root: &mut NsRoot) -> Result<()> {
        let Some(tree) = img.extras.get::<Tree>() else { return Ok(()) };
        let opts = root.opts;
        let new_root = root_path(&tree.entries[0], opts).map_err(Error::Invalid)?;
        // The contexts of proc, sysfs and mqueue are opened by the restored
        // root, in its namespaces; crust takes the fd and mounts from it.
        let mut by_task = HashMap::new();
        for (i, e) in tree.entries.iter().enumerate() {
            if tree.hows[i] == How::Fresh && BY_THE_TASK.contains(&fs_name(e).as_str()) {
                let fs = fsopen_in_task(root, &fs_name(e))?;
                let m = create(fs.as_fd(), e)?;
                by_task.insert(i, m);
            }
        }
        let externals: Vec<Option<String>> =
            tree.entries.iter().zip(&tree.hows).map(|(e, h)| (*h == How::External).then(|| external_path(e, opts)).transpose()).collect::<std::result::Result<_, _>>().map_err(Error::Invalid)?;
        // Crust's root, kept open in the task above every fd of the images:
        // a detached copy of the whole mount tree (open_tree with
        // OPEN_TREE_CLONE and AT_RECURSIVE), since the old root detached
        // after the pivot keeps no mounts under it (images on /dev/shm, or
        // on any mount but the root's, would not be found through it).
        let base = img.processes.iter().flat_map(|p| p.fds.iter().map(|f| f.fd as u64 + 1)).max().unwrap_or(0).max(3);
        let slash = root.scratch.reset().put_str("/")?;
        const OPEN_TREE_CLONE: u64 = 1;
        const AT_RECURSIVE: u64 = 0x8000;
        let fd = root.task.call("copying crust's mount tree", libc::SYS_open_tree, [libc::AT_FDCWD as u64, slash, OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as u64, 0, 0, 0])?;
        let high = root.task.call("fcntl(F_DUPFD_CLOEXEC)", libc::SYS_fcntl, [fd, libc::F_DUPFD_CLOEXEC as u64, base, 0, 0, 0])?;
        root.task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        root.host_root = Some(high);
        let pid = root.pid;
        let new = in_namespace(pid, "mnt", move || build(tree, &new_root, &externals, by_task))?;
        // Read from crust's namespaces: the tree's /proc may be that of its
        // own pid namespace, where `pid` is another process or none.
        let theirs = std::fs::metadata(format!("/proc/{pid}/root/")).ctx(|| format!("stat of the root of {pid}"))?;
        if new != (theirs.dev(), theirs.ino()) {
            return Err(Error::Invalid(format!("process {pid}: its root is not the new root after pivot_root")));
        }
        Ok(())
    }
}

/// Before the restore: where `path` of the tree is on this host, through
/// the mount that will show it (the options the restore was given are in
/// `img.extras`). None if that mount is made from the images or is a
/// pseudo file system.
pub fn host_path_of(img: &DumpImage, path: &str) -> Option<String> {
    let default = NsOptions::default();
    host_path_with(img, img.extras.get::<NsOptions>().unwrap_or(&default), path)
}

/// The mount point of the devpts with device `dev` the restore mounts anew
/// (a container's own instance, where its ptys come back).
pub fn fresh_devpts(img: &DumpImage, dev: u32) -> Option<String> {
    let tree = img.extras.get::<Tree>()?;
    let fresh = |(e, how): &(&MntEntry, &How)| **how == How::Fresh && fs_name(e) == "devpts" && e.root_dev == dev;
    tree.entries.iter().zip(&tree.hows).find(fresh).map(|(e, _)| e.mountpoint.clone())
}

/// As [`host_path_of`], as the dump recorded it (no option given).
pub fn recorded_host_path_of(img: &DumpImage, path: &str) -> Option<String> {
    host_path_with(img, &NsOptions::default(), path)
}

fn host_path_with(img: &DumpImage, opts: &NsOptions, path: &str) -> Option<String> {
    let tree = img.extras.get::<Tree>()?;
    // The last mount on the deepest mount point over `path` shows it.
    let (i, rest) = tree.entries.iter().enumerate().filter_map(|(i, e)| Some((i, within(path, &e.mountpoint)?))).max_by_key(|(i, _)| (tree.entries[*i].mountpoint.len(), *i))?;
    let dir = mount_dir(tree, opts, i)?;
    Some(join(&dir, &rest))
}

/// The host directory mount `i` shows, if it is one.
fn mount_dir(tree: &Tree, opts: &NsOptions, i: usize) -> Option<String> {
    let e = &tree.entries[i];
    match tree.hows[i] {
        How::Root => root_path(e, opts).ok(),
        How::External => external_path(e, opts).ok(),
        How::BindOf(src) => Some(join(&mount_dir(tree, opts, src)?, &within(&e.root, &tree.entries[src].root)?)),
        How::Fresh | How::Tmpfs => None,
    }
}

fn join(dir: &str, rest: &str) -> String {
    match rest {
        "/" => dir.to_string(),
        r => format!("{}{r}", dir.trim_end_matches('/')),
    }
}

/// The entries parents first, the root's first.
fn order_entries(entries: Vec<MntEntry>) -> std::result::Result<Vec<MntEntry>, String> {
    let ids: std::collections::HashSet<u32> = entries.iter().map(|e| e.mnt_id).collect();
    let mut roots = entries.iter().filter(|e| !ids.contains(&e.parent_mnt_id));
    let (Some(root), None) = (roots.next(), roots.next()) else { return Err("the mounts have no single root".into()) };
    let mut out = Vec::with_capacity(entries.len());
    let mut stack = vec![root.clone()];
    while let Some(m) = stack.pop() {
        if out.len() > entries.len() {
            break;
        }
        stack.extend(entries.iter().rev().filter(|c| c.parent_mnt_id == m.mnt_id && c.mnt_id != m.mnt_id).cloned());
        out.push(m);
    }
    if out.len() != entries.len() {
        return Err("some mounts are not under the root (a loop of parents)".into());
    }
    Ok(order::sources_first(out, |e| order::Key { id: e.mnt_id, parent: e.parent_mnt_id, dev: e.root_dev, root: &e.root, mountpoint: &e.mountpoint }))
}

fn root_path(e: &MntEntry, opts: &NsOptions) -> std::result::Result<String, String> {
    match (&opts.root, &e.ext_key) {
        (Some(p), _) => Ok(p.display().to_string()),
        (None, Some(p)) if p.starts_with('/') => Ok(p.clone()),
        _ => Err("the images do not say where the tree's root directory is: give it with --root".into()),
    }
}

fn external_path(e: &MntEntry, opts: &NsOptions) -> std::result::Result<String, String> {
    let key = e.ext_key.as_deref().unwrap_or("");
    match opts.ext_mount_map.iter().find(|(k, _)| k == key) {
        Some((_, path)) => Ok(path.clone()),
        None if key.starts_with('/') => Ok(key.to_string()),
        None => Err(format!("mount {}: external mount {key:?} needs its host path: --ext-mount-map {key}:PATH", e.mountpoint)),
    }
}

/// fsopen(`fstype`) injected into the restored root; the context is taken
/// into crust (pidfd_getfd) and closed in the task.
fn fsopen_in_task(root: &mut NsRoot, fstype: &str) -> Result<OwnedFd> {
    let name = root.scratch.reset().put_str(fstype)?;
    let fd = root.task.call(&format!("fsopen({fstype})"), libc::SYS_fsopen, [name, 1, 0, 0, 0, 0])?;
    let taken = (|| {
        let pidfd = rustix::process::pidfd_open(rustix::process::Pid::from_raw(root.pid).ok_or_else(|| Error::Invalid("pid 0".into()))?, rustix::process::PidfdFlags::empty())
            .map_err(|e| Error::Io { context: format!("pidfd_open({})", root.pid), err: e.into() })?;
        rustix::process::pidfd_getfd(&pidfd, fd as i32, rustix::process::PidfdGetfdFlags::empty())
            .map_err(|e| Error::Io { context: format!("taking the {fstype} context of process {}", root.pid), err: e.into() })
    })();
    root.task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    taken
}

/// The super block of entry `e` made from its context `fs`, mounted detached.
fn create(fs: std::os::fd::BorrowedFd, e: &MntEntry) -> Result<OwnedFd> {
    let sb_ro = e.sb_flags.unwrap_or(0) as u64 & libc::MS_RDONLY != 0;
    let mut options = e.options.clone();
    if fs_name(e) == "devpts" && !options.split(',').any(|o| o == "newinstance") {
        options = if options.is_empty() { "newinstance".into() } else { format!("newinstance,{options}") };
    }
    sys::fs_create(fs, &e.source, &options, sb_ro, info::mount_attrs(e.flags), &format!("{} at {}", fs_name(e), e.mountpoint))
}

/// In the new mount namespace: the tree under `new_root`, then pivot_root
/// into it. Returns the new root's device and inode, for the caller to see
/// that the restored root followed.
fn build(tree: &Tree, new_root: &str, externals: &[Option<String>], mut by_task: HashMap<usize, OwnedFd>) -> Result<(u64, u64)> {
    // Nothing done here may reach the host's mounts: the namespace's copies
    // only hear from them from now on.
    sys::mount(None, "/", libc::MS_REC | libc::MS_SLAVE)?;
    sys::mount(Some(new_root), new_root, libc::MS_BIND)?;
    let root_fd = sys::open_path(new_root)?;
    let root_e = &tree.entries[0];
    sys::set_attrs(root_fd.as_fd(), Some(info::mount_attrs(root_e.flags)), libc::MS_PRIVATE, "the new root")?;
    let mut made: Vec<Option<OwnedFd>> = Vec::with_capacity(tree.entries.len());
    made.push(Some(sys::open_path(new_root)?));
    for (i, e) in tree.entries.iter().enumerate().skip(1) {
        let what = format!("{} at {}", fs_name(e), e.mountpoint);
        let target = sys::open_in(root_fd.as_fd(), &e.mountpoint)?;
        let attrs = info::mount_attrs(e.flags);
        let m = match &tree.hows[i] {
            How::External => {
                let path = externals[i].as_deref().ok_or_else(|| Error::Invalid(format!("{what}: no host path")))?;
                let m = sys::clone_mount(sys::open_path(path)?.as_fd(), &what)?;
                sys::set_attrs(m.as_fd(), Some(attrs), libc::MS_SLAVE, &what)?;
                m
            }
            How::BindOf(src) => {
                let s = &tree.entries[*src];
                let sub = within(&e.root, &s.root).ok_or_else(|| Error::Invalid(format!("{what}: not within mount {}", s.mountpoint)))?;
                let base = made[*src].as_ref().ok_or_else(|| Error::Invalid(format!("{what}: its source is not mounted")))?;
                let m = sys::clone_mount(sys::open_in(base.as_fd(), &sub)?.as_fd(), &what)?;
                sys::set_attrs(m.as_fd(), Some(attrs), 0, &what)?;
                m
            }
            How::Fresh | How::Tmpfs => match by_task.remove(&i) {
                Some(m) => m,
                None => create(sys::fsopen(&fs_name(e))?.as_fd(), e)?,
            },
            How::Root => return Err(Error::Invalid(format!("{what}: a second root"))),
        };
        sys::attach(m.as_fd(), target.as_fd(), &what)?;
        propagation(tree, i, m.as_fd(), &what)?;
        if tree.hows[i] == How::Tmpfs {
            let data = tree.tmpfs.get(&e.root_dev).ok_or_else(|| Error::Invalid(format!("{what}: no saved contents")))?;
            tmpfs::unpack(data, &sys::path_of(m.as_fd())?, &format!("the saved contents of {what}"))?;
        }
        made.push(Some(m));
    }
    sys::fchdir(root_fd.as_fd())?;
    sys::pivot_here()?;
    // Shared only now: pivot_root refuses a shared new root.
    if root_e.shared_id.is_some() {
        sys::mount(None, "/", libc::MS_SHARED)?;
    }
    let mine = std::fs::metadata("/").ctx(|| "stat of the new root")?;
    Ok((mine.dev(), mine.ino()))
}

/// Entry `i`'s propagation: peers of its shared group (a bind of a peer is
/// one already), slave of its master's group, private, unbindable.
fn propagation(tree: &Tree, i: usize, m: std::os::fd::BorrowedFd, what: &str) -> Result<()> {
    let e = &tree.entries[i];
    let source = match tree.hows[i] {
        How::BindOf(src) => Some(&tree.entries[src]),
        _ => None,
    };
    let in_tree = |g: Option<u32>| g.is_some() && tree.entries.iter().any(|o| o.shared_id == g);
    // Bound from a peer of its master: a slave of that group.
    let slave_bound = source.is_some_and(|s| s.shared_id.is_some() && s.shared_id == e.master_id);
    if slave_bound {
        sys::set_attrs(m, None, libc::MS_SLAVE, what)?;
    } else if e.master_id.is_some() && in_tree(e.master_id) {
        return Err(Error::Invalid(format!("{what}: its master group has no mount it could be bound from")));
    }
    let peer_bound = source.is_some_and(|s| s.shared_id.is_some() && s.shared_id == e.shared_id);
    // A bind of a shared mount is that mount's peer: out of its group first,
    // or what is mounted on either shows on both (LXC's /proc/sys, a bind of
    // /proc in a group of its own, would get /proc's mounts twice).
    let joined_source = source.is_some_and(|s| s.shared_id.is_some()) && !peer_bound && !slave_bound;
    match (e.shared_id, e.master_id) {
        (Some(_), _) if peer_bound => {}
        (Some(_), _) => {
            if joined_source {
                sys::set_attrs(m, None, libc::MS_PRIVATE, what)?;
            }
            sys::set_attrs(m, None, libc::MS_SHARED, what)?
        }
        // A slave of a host group: the copy from the host is one already.
        (None, Some(_)) => {}
        (None, None) => sys::set_attrs(m, None, libc::MS_PRIVATE, what)?,
    }
    Ok(())
}
