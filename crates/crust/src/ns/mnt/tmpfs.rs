//! A tmpfs's contents, kept with the images as criu keeps them: a gzipped
//! tar of the tree (tmpfs-dev-N.tar.gz.img, N the tmpfs's device as the
//! kernel encodes it). Owners, modes, times, symlinks, hard links, device
//! nodes and fifos are kept; what the mounts above it hide is not (the tree
//! is read from a copy of the tmpfs mount alone).

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use tar::{Archive, Builder, EntryType, Header};

use crate::error::{Context, Error, Result};

pub fn image_name(kdev: u32) -> String {
    format!("tmpfs-dev-{kdev}.tar.gz.img")
}

/// The tree under `dir` (a detached copy of the tmpfs mount), as a gzipped tar.
pub fn archive(dir: &Path, what: &str) -> Result<Vec<u8>> {
    let mut b = Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut links: HashMap<u64, PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = dir.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&full).ctx(|| format!("reading {what}{}", show(&rel)))?.collect::<std::io::Result<_>>().ctx(|| format!("reading {what}"))?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let rel = rel.join(e.file_name());
            let path = dir.join(&rel);
            let m = std::fs::symlink_metadata(&path).ctx(|| format!("stat {what}{}", show(&rel)))?;
            let ft = m.file_type();
            let mut h = Header::new_gnu();
            h.set_mode(m.mode() & 0o7777);
            h.set_uid(m.uid() as u64);
            h.set_gid(m.gid() as u64);
            h.set_mtime(m.mtime().max(0) as u64);
            h.set_size(0);
            let io = |e: std::io::Error| Error::Io { context: format!("archiving {what}{}", show(&rel)), err: e };
            if !ft.is_dir() && m.nlink() > 1 {
                if let Some(first) = links.get(&m.ino()) {
                    h.set_entry_type(EntryType::Link);
                    b.append_link(&mut h, &rel, first).map_err(io)?;
                    continue;
                }
                links.insert(m.ino(), rel.clone());
            }
            if ft.is_dir() {
                h.set_entry_type(EntryType::Directory);
                b.append_data(&mut h, &rel, std::io::empty()).map_err(io)?;
                stack.push(rel);
            } else if ft.is_file() {
                h.set_entry_type(EntryType::Regular);
                h.set_size(m.len());
                let f = std::fs::File::open(&path).ctx(|| format!("opening {what}{}", show(&rel)))?;
                b.append_data(&mut h, &rel, f.take(m.len())).map_err(io)?;
            } else if ft.is_symlink() {
                h.set_entry_type(EntryType::Symlink);
                let target = std::fs::read_link(&path).ctx(|| format!("reading link {what}{}", show(&rel)))?;
                b.append_link(&mut h, &rel, target).map_err(io)?;
            } else {
                let kind = match () {
                    _ if ft.is_char_device() => EntryType::Char,
                    _ if ft.is_block_device() => EntryType::Block,
                    _ if ft.is_fifo() => EntryType::Fifo,
                    // A unix socket's file is only a name: its socket is gone
                    // with the listener, which files/unix binds again.
                    _ => continue,
                };
                h.set_entry_type(kind);
                h.set_device_major(libc::major(m.rdev())).map_err(io)?;
                h.set_device_minor(libc::minor(m.rdev())).map_err(io)?;
                b.append_data(&mut h, &rel, std::io::empty()).map_err(io)?;
            }
        }
    }
    let gz = b.into_inner().map_err(|e| Error::Io { context: format!("archiving {what}"), err: e })?;
    gz.finish().map_err(|e| Error::Io { context: format!("compressing {what}"), err: e })
}

fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        String::new()
    } else {
        format!("/{}", rel.display())
    }
}

/// Unpack `data` (an archive of [`archive`]) into `dir`, the new tmpfs
/// (an absolute path without symlinks): nothing is written outside it.
pub fn unpack(data: &[u8], dir: &Path, what: &str) -> Result<()> {
    let bad = |e: std::io::Error| Error::Invalid(format!("{what}: {e}"));
    let mut ar = Archive::new(GzDecoder::new(data));
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    let mut dirs = Vec::new();
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let rel = entry.path().map_err(bad)?.into_owned();
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(Error::Invalid(format!("{what}: entry {} leaves the tmpfs", rel.display())));
        }
        let h = entry.header().clone();
        match h.entry_type() {
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let path = inside(dir, &rel, what)?;
                let kind = match h.entry_type() {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let (major, minor) = (h.device_major().map_err(bad)?.unwrap_or(0), h.device_minor().map_err(bad)?.unwrap_or(0));
                let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Invalid(format!("{what}: a nul in a name")))?;
                let mode = h.mode().map_err(bad)?;
                // SAFETY: `c` is a nul-terminated path alive for the calls.
                let r = unsafe { libc::mknod(c.as_ptr(), kind | (mode & 0o7777), libc::makedev(major, minor)) };
                nix::errno::Errno::result(r).ctx(|| format!("making {} in {what}", rel.display()))?;
                // SAFETY: as above.
                let r = unsafe { libc::lchown(c.as_ptr(), h.uid().map_err(bad)? as u32, h.gid().map_err(bad)? as u32) };
                nix::errno::Errno::result(r).ctx(|| format!("chown {} in {what}", rel.display()))?;
                // mknod's mode went through crust's umask.
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777)).ctx(|| format!("chmod {}", rel.display()))?;
                set_mtime(&path, h.mtime().map_err(bad)? as i64)?;
            }
            kind => {
                if !entry.unpack_in(dir).map_err(bad)? {
                    return Err(Error::Invalid(format!("{what}: entry {} leaves the tmpfs", rel.display())));
                }
                if kind == EntryType::Directory {
                    dirs.push((rel, h.mtime().map_err(bad)? as i64));
                }
            }
        }
    }
    // A directory's time changed as its entries were made: set it last,
    // deepest first.
    for (rel, mtime) in dirs.iter().rev() {
        set_mtime(&dir.join(rel), *mtime)?;
    }
    Ok(())
}

/// `dir`/`rel` once its parent is checked to be inside `dir` (an earlier
/// entry may have made a symlink on the way).
fn inside(dir: &Path, rel: &Path, what: &str) -> Result<PathBuf> {
    let name = rel.file_name().ok_or_else(|| Error::Invalid(format!("{what}: an entry without a name")))?;
    let parent = dir.join(rel.parent().unwrap_or(Path::new(""))).canonicalize().ctx(|| format!("{what}: the directory of {}", rel.display()))?;
    if !parent.starts_with(dir) {
        return Err(Error::Invalid(format!("{what}: entry {} leaves the tmpfs", rel.display())));
    }
    Ok(parent.join(name))
}

fn set_mtime(path: &Path, mtime: i64) -> Result<()> {
    let t = nix::sys::time::TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink).ctx(|| format!("setting the time of {}", path.display()))
}
