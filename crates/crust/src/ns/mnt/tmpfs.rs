//! A tmpfs's contents, kept with the images as criu keeps them: a gzipped
//! tar of the tree (tmpfs-dev-N.tar.gz.img, N the tmpfs's device as the
//! kernel encodes it). Owners, modes, symlinks, hard links, device nodes
//! and fifos are kept, and in PAX records as GNU tar writes them (criu runs
//! it with --xattrs) extended attributes (`SCHILY.xattr.NAME`) and times to
//! the nanosecond (`mtime`, `atime`); what the mounts above it hide is not
//! (the tree is read from a copy of the tmpfs mount alone). A unix socket's
//! file is left out when a socket of the tree is bound to it (the restore
//! binds it again, which makes the file) and refused otherwise.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
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

/// The tree under `dir` (a detached copy of the tmpfs mount), as a gzipped
/// tar. `rebound`: the socket files (inode, device as the kernel encodes
/// it) the restore makes again by binding the tree's sockets.
pub fn archive(dir: &Path, what: &str, rebound: &HashSet<(u64, u64)>) -> Result<Vec<u8>> {
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
                    // The inode's attributes and times went with its first name.
                    h.set_entry_type(EntryType::Link);
                    b.append_link(&mut h, &rel, first).map_err(io)?;
                    continue;
                }
                links.insert(m.ino(), rel.clone());
            }
            if ft.is_socket() {
                let dev = (libc::major(m.dev()) as u64) << 20 | libc::minor(m.dev()) as u64;
                if rebound.contains(&(m.ino(), dev)) {
                    // Its socket is saved with the tree, and bound again at
                    // this path by the restore (files::unix), which makes
                    // the file with its owner and mode.
                    continue;
                }
                return Err(Error::unsupported(what, format!("unix socket file {} in it: no socket of the tree is bound to it, so the restore would not make it again", show(&rel))));
            }
            let pax = pax_records(&path, &m, || format!("{what}{}", show(&rel)))?;
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).map_err(io)?;
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
                    _ => EntryType::Fifo,
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

/// The PAX records of one entry: its times to the nanosecond, and its
/// extended attributes (names with `%` and `=` escaped, as GNU tar does).
fn pax_records(path: &Path, m: &std::fs::Metadata, name: impl Fn() -> String) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = vec![("mtime".to_string(), pax_time(m.mtime(), m.mtime_nsec()).into_bytes()), ("atime".to_string(), pax_time(m.atime(), m.atime_nsec()).into_bytes())];
    for (key, value) in xattrs(path).ctx(|| format!("reading the extended attributes of {}", name()))? {
        let key = std::str::from_utf8(&key).map_err(|_| Error::unsupported(name(), format!("an extended attribute whose name is not UTF-8 ({})", String::from_utf8_lossy(&key))))?;
        out.push((format!("SCHILY.xattr.{}", key.replace('%', "%25").replace('=', "%3D")), value));
    }
    Ok(out)
}

/// The extended attributes of `path` itself (not of a symlink's target).
fn xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // Sized, then read: grown again if one was set in between (ERANGE).
    let names = read_sized(|buf, len| {
        // SAFETY: `c` is a nul-terminated path; `buf` has `len` bytes (or is null with 0).
        unsafe { libc::llistxattr(c.as_ptr(), buf.cast(), len) }
    })?;
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        let value = read_sized(|buf, len| {
            // SAFETY: as above, and `cname` is a nul-terminated name.
            unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), buf.cast(), len) }
        })?;
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

/// What a call that fills a buffer of a size it can first be asked for
/// (with a null buffer) returns.
fn read_sized(call: impl Fn(*mut u8, usize) -> isize) -> std::io::Result<Vec<u8>> {
    loop {
        let want = call(std::ptr::null_mut(), 0);
        if want < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; want as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

/// A PAX time: seconds and a fraction, negative as a whole before 1970.
fn pax_time(sec: i64, nsec: i64) -> String {
    match (sec < 0, nsec) {
        (_, 0) => sec.to_string(),
        (false, _) => format!("{sec}.{nsec:09}"),
        (true, _) => format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec),
    }
}

/// A PAX time read back as seconds and nanoseconds (digits past the ninth
/// dropped); None if it is not one.
fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let v = std::str::from_utf8(v).ok()?;
    let (neg, v) = v.strip_prefix('-').map_or((false, v), |v| (true, v));
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = int.parse().ok()?;
    let nsec: i64 = format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()?;
    Some(match (neg, nsec) {
        (false, _) => (sec, nsec),
        (true, 0) => (-sec, 0),
        (true, _) => (-sec - 1, 1_000_000_000 - nsec),
    })
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
    // Times and extended attributes are set here, from the PAX records:
    // the attributes once the owner is (a chown drops security.capability),
    // the times to the nanosecond once the contents are written.
    ar.set_preserve_mtime(false);
    ar.set_unpack_xattrs(false);
    let mut dirs = Vec::new();
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let rel = entry.path().map_err(bad)?.into_owned();
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(Error::Invalid(format!("{what}: entry {} leaves the tmpfs", rel.display())));
        }
        let h = entry.header().clone();
        let mut times = None;
        let mut atime = None;
        let mut attrs = Vec::new();
        for ext in entry.pax_extensions().map_err(bad)?.into_iter().flatten() {
            let ext = ext.map_err(bad)?;
            let time = || parse_pax_time(ext.value_bytes()).ok_or_else(|| Error::Invalid(format!("{what}: entry {}: a bad PAX time", rel.display())));
            match ext.key_bytes() {
                b"mtime" => times = Some(time()?),
                b"atime" => atime = Some(time()?),
                key => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        attrs.push((unescape(name), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        let mtime = match times {
            Some(t) => t,
            None => (h.mtime().map_err(bad)? as i64, 0),
        };
        // Archives without an atime (GNU tar's) give the file its mtime.
        let times = (atime.unwrap_or(mtime), mtime);
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
                set_xattrs(&path, &attrs)?;
                set_times(&path, times)?;
            }
            kind => {
                if !entry.unpack_in(dir).map_err(bad)? {
                    return Err(Error::Invalid(format!("{what}: entry {} leaves the tmpfs", rel.display())));
                }
                let path = inside(dir, &rel, what)?;
                set_xattrs(&path, &attrs)?;
                match kind {
                    EntryType::Directory => dirs.push((path, times)),
                    // A hard link's inode had its times from its first name.
                    EntryType::Link => {}
                    _ => set_times(&path, times)?,
                }
            }
        }
    }
    // A directory's time changed as its entries were made: set it last,
    // deepest first.
    for (path, times) in dirs.iter().rev() {
        set_times(path, *times)?;
    }
    Ok(())
}

/// An extended attribute's name from its PAX key (GNU tar escapes `%` and `=`).
fn unescape(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len());
    let mut i = 0;
    while i < key.len() {
        match &key[i..] {
            [b'%', b'2', b'5', ..] => (out.push(b'%'), i += 3),
            [b'%', b'3', b'D' | b'd', ..] => (out.push(b'='), i += 3),
            [b, ..] => (out.push(*b), i += 1),
            [] => unreachable!("i < key.len()"),
        };
    }
    out
}

/// Set the extended attributes `attrs` on `path` itself.
fn set_xattrs(path: &Path, attrs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    if attrs.is_empty() {
        return Ok(());
    }
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Invalid(format!("a nul in the name {}", path.display())))?;
    for (name, value) in attrs {
        let shown = || format!("setting the extended attribute {} of {}", OsStr::from_bytes(name).to_string_lossy(), path.display());
        let cname = CString::new(name.as_slice()).map_err(|_| Error::Invalid(shown()))?;
        // SAFETY: `c` and `cname` are nul-terminated; `value` is alive for the call.
        let r = unsafe { libc::lsetxattr(c.as_ptr(), cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        nix::errno::Errno::result(r).ctx(shown)?;
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

/// Set `path`'s (access, modification) times, each as seconds and nanoseconds.
fn set_times(path: &Path, (atime, mtime): ((i64, i64), (i64, i64))) -> Result<()> {
    let (a, m) = (nix::sys::time::TimeSpec::new(atime.0, atime.1), nix::sys::time::TimeSpec::new(mtime.0, mtime.1));
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &a, &m, nix::sys::stat::UtimensatFlags::NoFollowSymlink).ctx(|| format!("setting the times of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under /dev/shm (a tmpfs), removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = PathBuf::from(format!("/dev/shm/crust-tmpfs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn set(path: &Path, name: &str, value: &[u8], nsec: i64) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: nul-terminated strings, a value of its length.
        assert_eq!(unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) }, 0);
        set_times(path, ((5, 6), (981173106, nsec))).unwrap();
    }

    /// An extended attribute: name, value.
    type Xattr = (Vec<u8>, Vec<u8>);

    /// mtime (seconds, nanoseconds), atime seconds, attributes.
    fn seen(path: &Path) -> (i64, i64, i64, Vec<Xattr>) {
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.mtime(), m.mtime_nsec(), m.atime(), xattrs(path).unwrap())
    }

    /// GNU tar (criu's, run with --xattrs) reads what crust writes, and crust
    /// what it writes: attributes (a name with `=` and `%` too) and mtimes.
    #[test]
    fn gnu_tar_and_crust_read_each_others_attributes_and_times() {
        let s = Scratch::new("gnu");
        let (src, out, back) = (s.0.join("src"), s.0.join("out"), s.0.join("back"));
        for d in [&src, &out, &back] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::create_dir(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), "x").unwrap();
        set(&src.join("d/f"), "user.a=b%c", b"on a file\0binary", 123456789);
        set(&src.join("d"), "user.crust", b"on a directory", 987654321);
        let data = archive(&src, "a test tmpfs", &HashSet::new()).unwrap();
        // GNU tar extracts crust's archive.
        let tgz = s.0.join("t.tar.gz");
        std::fs::write(&tgz, &data).unwrap();
        let ok = std::process::Command::new("tar").args(["--extract", "--gzip", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"]).arg(&out).arg("-f").arg(&tgz).status().unwrap();
        assert!(ok.success());
        for rel in ["d", "d/f"] {
            let (a, b) = (seen(&src.join(rel)), seen(&out.join(rel)));
            assert_eq!((a.0, a.1, &a.3), (b.0, b.1, &b.3), "{rel} through GNU tar");
        }
        // And crust unpacks GNU tar's (as criu makes it).
        let gnu = s.0.join("g.tar.gz");
        let ok = std::process::Command::new("tar").args(["--create", "--gzip", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--format=posix", "-C"]).arg(&src).arg("-f").arg(&gnu).arg("d").status().unwrap();
        assert!(ok.success());
        unpack(&std::fs::read(&gnu).unwrap(), &back.canonicalize().unwrap(), "a test archive").unwrap();
        for rel in ["d", "d/f"] {
            let (a, b) = (seen(&src.join(rel)), seen(&back.join(rel)));
            assert_eq!((a.0, a.1, &a.3), (b.0, b.1, &b.3), "{rel} from GNU tar");
        }
        // crust's own, with the atime as it was when archived (reading the
        // tree since moved the source's).
        let again = s.0.join("again");
        std::fs::create_dir(&again).unwrap();
        unpack(&data, &again.canonicalize().unwrap(), "a test archive").unwrap();
        for rel in ["d", "d/f"] {
            let (a, b) = (seen(&src.join(rel)), seen(&again.join(rel)));
            assert_eq!((a.0, a.1, 5, &a.3), (b.0, b.1, b.2, &b.3), "{rel} from crust");
        }
    }

    #[test]
    fn pax_times_read_back_as_written() {
        for t in [(0, 0), (981173106, 123456789), (5, 1), (-1, 0), (-2, 500000000), (-1, 999999999)] {
            assert_eq!(parse_pax_time(pax_time(t.0, t.1).as_bytes()), Some(t), "{}", pax_time(t.0, t.1));
        }
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500000000)));
        assert_eq!(parse_pax_time(b"12.1234567891"), Some((12, 123456789)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500000000)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }
}
