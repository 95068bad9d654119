//! Deleted files a task still holds (an executable or library replaced by an
//! upgrade, a temporary file unlinked while open or mapped): their contents go
//! into the images as CRIU's ghost files, and a restore makes each again,
//! deleted from the start, for the tree to open and map.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;


use super::FileTable;
use crate::error::{Context, Error, Result};
use crate::images::load::GhostData;
use crate::images::proto::{GhostChunkEntry, GhostFileEntry, RemapFilePathEntry, RemapType, Timeval};
use crate::images::{ImageDir, Kind};
use crate::images::load::DumpImage;

/// What /proc says after the path of a deleted file.
pub const DELETED: &str = " (deleted)";

/// The deleted files of a dump.
pub struct Ghosts {
    /// The largest deleted file carried (`--ghost-limit`).
    pub limit: u64,
    /// Contents (runs of bytes at offsets), by ghost id.
    files: Vec<(u32, GhostFileEntry, GhostData)>,
    /// Ghost ids, by (device, inode): one copy of a file however often held.
    by_inode: HashMap<(u64, u64), u32>,
    remaps: Vec<RemapFilePathEntry>,
}

impl Default for Ghosts {
    fn default() -> Ghosts {
        Ghosts { limit: GHOST_LIMIT, files: Vec::new(), by_inode: HashMap::new(), remaps: Vec::new() }
    }
}

impl Ghosts {
    pub fn holds(&self, file_id: u32) -> bool {
        self.remaps.iter().any(|r| r.orig_id == file_id)
    }

    /// remap-fpath.img and a ghost-file-ID.img for each deleted file.
    pub fn write(&self, dir: &mut ImageDir) -> Result<u64> {
        if self.remaps.is_empty() {
            return Ok(0);
        }
        let mut bytes = 0;
        let mut w = dir.writer("remap-fpath.img", Kind::RemapFpath)?;
        for r in &self.remaps {
            w.entry(r)?;
        }
        bytes += w.finish()?;
        for (id, entry, data) in &self.files {
            let mut w = dir.writer(&format!("ghost-file-{id:x}.img"), Kind::GhostFile)?;
            w.entry(entry)?;
            match data.as_slice() {
                [(0, bytes)] if entry.chunks != Some(true) => w.raw(bytes)?,
                chunks => {
                    for (off, bytes) in chunks {
                        w.entry(&GhostChunkEntry { len: bytes.len() as u64, off: *off })?;
                        w.raw(bytes)?;
                    }
                }
            }
            bytes += w.finish()?;
        }
        Ok(bytes)
    }
}

/// The largest deleted file a dump carries unless told otherwise (CRIU's
/// --ghost-limit is 1 MiB; programs and libraries replaced by an upgrade
/// are larger).
pub const GHOST_LIMIT: u64 = 64 << 20;

impl FileTable {
    /// File `orig_id` is deleted: keep its contents, read through `source` (a
    /// /proc path that still opens it: fd, map_files, exe).
    pub fn add_ghost(&mut self, orig_id: u32, source: &str) -> Result<()> {
        let what = || format!("reading the deleted file behind {source}");
        let file = std::fs::File::open(source).ctx(what)?;
        let md = file.metadata().ctx(what)?;
        // memfds (a kind of their own) and System V segments (refused with
        // the mappings) live on a mount no process sees: nothing else should.
        if !visible_mount(&file, source) {
            let link = std::fs::read_link(source).unwrap_or_default();
            return Err(Error::unsupported(source, format!("{}: files of a mount no process sees are not supported yet", link.display())));
        }
        if !md.is_file() && !md.is_dir() {
            return Err(Error::unsupported(source, "deleted devices, FIFOs and sockets are not supported yet"));
        }
        if md.nlink() != 0 {
            return Err(Error::unsupported(source, "a file unlinked under one name but linked under another is not supported yet"));
        }
        let limit = self.ghosts.limit;
        if md.len() > limit {
            return Err(Error::unsupported(
                source,
                format!("a deleted file of {} bytes, more than --ghost-limit {limit}: deleted files this large are not carried", md.len()),
            ));
        }
        let key = (md.dev(), md.ino());
        let remap_id = match self.ghosts.by_inode.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.ghosts.files.len() as u32 + 1;
                // A directory (a cwd or root that was removed) holds nothing to carry.
                let data = if md.is_dir() { Vec::new() } else { runs_of_data(&file, md.len()).ctx(what)? };
                let sparse = md.is_file() && !matches!(data.as_slice(), [(0, d)] if d.len() as u64 == md.len());
                let entry = GhostFileEntry {
                    uid: md.uid(),
                    gid: md.gid(),
                    mode: md.mode(),
                    dev: None,
                    ino: Some(md.ino()),
                    chunks: sparse.then_some(true),
                    size: md.is_file().then_some(md.len()),
                    atim: Some(Timeval { tv_sec: md.atime() as u64, tv_usec: md.atime_nsec() as u64 / 1000 }),
                    mtim: Some(Timeval { tv_sec: md.mtime() as u64, tv_usec: md.mtime_nsec() as u64 / 1000 }),
                    ..Default::default()
                };
                self.ghosts.files.push((id, entry, data));
                self.ghosts.by_inode.insert(key, id);
                id
            }
        };
        self.ghosts.remaps.push(RemapFilePathEntry { orig_id, remap_id, remap_type: Some(RemapType::Ghost as i32) });
        Ok(())
    }
}

/// The bytes of a file of `len` bytes, as runs at offsets: the holes
/// between them (SEEK_DATA/SEEK_HOLE) are left out, so that a sparse file
/// comes back sparse (a file system without holes reports one run).
fn runs_of_data(file: &std::fs::File, len: u64) -> std::io::Result<GhostData> {
    use nix::unistd::{lseek, Whence};
    use std::os::unix::fs::FileExt;
    let mut runs = Vec::new();
    let mut at = 0;
    while at < len {
        let start = match lseek(file, at as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            // No data after `at`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = (lseek(file, start as i64, Whence::SeekHole)? as u64).min(len);
        let mut bytes = vec![0; (end - start) as usize];
        file.read_exact_at(&mut bytes, start)?;
        runs.push((start, bytes));
        at = end;
    }
    if runs.is_empty() && len == 0 {
        runs.push((0, Vec::new()));
    }
    Ok(runs)
}

/// Whether `file` lies on a mount of crust's mount table (kernel-internal
/// mounts, like shared memory's, are in none).
pub(crate) fn visible_mount(file: &std::fs::File, source: &str) -> bool {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).unwrap_or_default();
    let Some(mnt) = info.lines().find_map(|l| l.strip_prefix("mnt_id:")).map(str::trim) else { return false };
    let Ok(mnt) = mnt.parse::<i32>() else { return false };
    let pid = source.split('/').nth(2).unwrap_or("self");
    let table = crate::proc::process_at(pid).ok().and_then(|p| p.mountinfo().ok());
    table.is_some_and(|t| t.into_iter().any(|m| m.mnt_id == mnt))
}

/// Deleted files put back for a restore: each made whole without a name (an
/// O_TMPFILE) in its own directory, so nothing of it is ever visible in the
/// file system, nothing is left if crust dies, and no path can be redirected
/// (the tree opens it through crust's fd). The restored tree holds it deleted,
/// under the name the kernel gives such a file (`DIR/#INODE (deleted)`).
/// Dropping this closes crust's copies; the tree's keep the files.
///
/// A tree with a mount namespace of its own had its deleted files on its own
/// mounts (a tmpfs the restore makes from the images, its root): those are
/// made once the namespace is ([`Materialized::place_in`]), in the directory
/// the name has inside it. Until then crust holds a placeholder at the fd
/// number the files' names already point to.
pub struct Materialized {
    /// Each file, with the entry that has its times.
    files: Vec<(OwnedFd, GhostFileEntry)>,
    /// Ghosts to make inside the tree's mounts: placeholder fd, name, ghost id.
    pending: Vec<(OwnedFd, String, u32)>,
}

impl Materialized {
    /// Mapping or opening a file may set its access time: once the tree
    /// holds them, the files get their saved times again.
    pub fn put_back_times(&self) -> Result<()> {
        for (fd, entry) in &self.files {
            set_times(fd, entry).ctx(|| "putting back the times of a deleted file")?;
        }
        Ok(())
    }

    /// Once the tree's mount namespace is made, its root `pid` in it: each
    /// pending ghost made in the directory its name has there (resolved
    /// inside that root: no symlink, no way out), or in the images directory
    /// if that directory is gone, and put at its placeholder's fd number.
    pub fn place_in(&mut self, img: &DumpImage, pid: i32) -> Result<()> {
        use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
        if self.pending.is_empty() {
            return Ok(());
        }
        let root_path = format!("/proc/{pid}/root");
        let root = nix::fcntl::open(root_path.as_str(), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .ctx(|| format!("opening {root_path}"))?;
        for (slot, name, ghost_id) in std::mem::take(&mut self.pending) {
            let (entry, data) = img.ghost_files.get(&ghost_id).ok_or_else(|| Error::image("remap-fpath.img", format!("no ghost-file-{ghost_id:x}.img")))?;
            let inside = Path::new(&name).parent().map(|d| d.strip_prefix("/").unwrap_or(d).to_path_buf());
            let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS);
            let dir = inside.and_then(|d| openat2(&root, if d.as_os_str().is_empty() { Path::new(".") } else { &d }, how).ok());
            let file = match dir.and_then(|d| make(&d, entry, data).ok()) {
                Some(f) => f,
                None => place(&name, &img.dir, entry, data)?,
            };
            // The placeholder's number now holds the file; the first fd of it goes.
            let mut slot = slot;
            nix::unistd::dup3(&file, &mut slot, OFlag::O_CLOEXEC).ctx(|| format!("putting deleted file {name} at its fd"))?;
            self.files.push((slot, entry.clone()));
        }
        Ok(())
    }
}

/// Put every ghost file of `img` back, and point the files that use it at it.
/// Ghosts of a tree with a mount namespace of its own wait for it
/// ([`Materialized::place_in`]).
pub fn materialize(img: &mut DumpImage) -> Result<Materialized> {
    let later = crate::ns::is_own(img, "mnt");
    let mut files = Vec::new();
    let mut pending = Vec::new();
    let mut placed: HashMap<u32, String> = HashMap::new();
    let mut remaps: Vec<(u32, u32)> = img.remaps.iter().map(|(&orig, &ghost)| (orig, ghost)).collect();
    remaps.sort_unstable();
    for (orig_id, ghost_id) in remaps {
        let name = img.files.get(&orig_id).and_then(|f| f.reg.as_ref()).map(|r| r.name.clone()).ok_or_else(|| {
            Error::image("remap-fpath.img", format!("file {orig_id} is not a regular file of files.img"))
        })?;
        let path = match placed.get(&ghost_id) {
            Some(p) => p.clone(),
            None => {
                let (entry, data) = img
                    .ghost_files
                    .get(&ghost_id)
                    .ok_or_else(|| Error::image("remap-fpath.img", format!("no ghost-file-{ghost_id:x}.img")))?;
                let fd = if later {
                    let slot = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                        .ctx(|| "opening /dev/null as a deleted file's placeholder")?;
                    let fd = slot.as_raw_fd();
                    pending.push((slot, name.clone(), ghost_id));
                    fd
                } else {
                    let file = place(&name, &img.dir, entry, data)?;
                    let fd = file.as_raw_fd();
                    files.push((file, entry.clone()));
                    fd
                };
                let path = format!("/proc/{}/fd/{fd}", std::process::id());
                placed.insert(ghost_id, path.clone());
                path
            }
        };
        if let Some(reg) = img.files.get_mut(&orig_id).and_then(|f| f.reg.as_mut()) {
            reg.name = path;
        }
    }
    Ok(Materialized { files, pending })
}

/// A directory, opened without following any symlink on the way.
fn open_dir(dir: &Path) -> Option<OwnedFd> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
    let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(AT_FDCWD, dir, how).ok()
}

/// A file without a name in `dir` holding `data`, with the saved owner and
/// mode (set last: a change of owner drops set-id bits); returned read-only,
/// since an executable may not be open for writing.
fn unnamed_file(dir: &OwnedFd, entry: &GhostFileEntry, data: &GhostData) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{openat, OFlag};
    use std::os::unix::fs::FileExt;
    let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
    let fd = openat(dir, ".", flags, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let f = std::fs::File::from(fd);
    for (off, bytes) in data {
        f.write_all_at(bytes, *off)?;
    }
    // Holes at the end, and CRIU's ghosts without a size.
    let size = entry.size.unwrap_or_else(|| data.last().map_or(0, |(off, b)| off + b.len() as u64));
    f.set_len(size)?;
    set_owner_mode_times(&f, entry)?;
    let read_only = std::fs::File::open(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    Ok(OwnedFd::from(read_only))
}

/// A removed directory (a cwd or root): made in `dir` under a name of its
/// own, opened, and removed again at once, so that it is deleted, empty and
/// nowhere to be seen when the tree enters it through crust's fd.
fn removed_dir(dir: &OwnedFd, entry: &GhostFileEntry) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    use nix::unistd::{unlinkat, UnlinkatFlags};
    let name = format!(".crust-removed-{}-{}", entry.ino.unwrap_or(0), std::process::id());
    mkdirat(dir, name.as_str(), Mode::from_bits_truncate(0o700))?;
    let opened = openat(dir, name.as_str(), OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty());
    unlinkat(dir, name.as_str(), UnlinkatFlags::RemoveDir)?;
    let fd = opened?;
    set_owner_mode_times(&fd, entry)?;
    Ok(fd)
}

/// The saved owner, then mode (a change of owner drops set-id bits), then
/// times (the changes before would touch them).
fn set_owner_mode_times(f: &impl AsFd, entry: &GhostFileEntry) -> std::io::Result<()> {
    nix::unistd::fchown(f, Some(entry.uid.into()), Some(entry.gid.into()))?;
    nix::sys::stat::fchmod(f, nix::sys::stat::Mode::from_bits_truncate(entry.mode & 0o7777))?;
    set_times(f, entry)
}

/// The saved access and modification times (to the microsecond CRIU's
/// image keeps); a time not saved is left as it is.
fn set_times(f: &impl AsFd, entry: &GhostFileEntry) -> std::io::Result<()> {
    use nix::sys::time::TimeSpec;
    let time = |t: &Option<Timeval>| match t {
        Some(t) => TimeSpec::new(t.tv_sec as i64, (t.tv_usec * 1000) as i64),
        None => TimeSpec::UTIME_OMIT,
    };
    nix::sys::stat::futimens(f, &time(&entry.atim), &time(&entry.mtim))?;
    Ok(())
}

/// The ghost of the file once called `name`: in that file's directory if it
/// is there and takes one, else in the images directory `images`.
fn place(name: &str, images: &Path, entry: &GhostFileEntry, data: &GhostData) -> Result<OwnedFd> {
    let in_own_dir = Path::new(name).parent().and_then(open_dir).and_then(|dir| make(&dir, entry, data).ok());
    if let Some(file) = in_own_dir {
        return Ok(file);
    }
    let dir = open_dir(images).ok_or_else(|| Error::io_other(format!("{}: opening it to put back {name}", images.display()), "it cannot be opened as a directory"))?;
    make(&dir, entry, data).ctx(|| format!("putting back deleted file {name} in {}", images.display()))
}

/// The ghost `entry` made in `dir`: a removed directory or a file without a name.
fn make(dir: &OwnedFd, entry: &GhostFileEntry, data: &GhostData) -> std::io::Result<OwnedFd> {
    match entry.mode & libc::S_IFMT == libc::S_IFDIR {
        true => removed_dir(dir, entry),
        false => unnamed_file(dir, entry, data),
    }
}
