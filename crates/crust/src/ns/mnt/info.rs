//! /proc/PID/mountinfo read into [`MountInfo`] lines, and the option words
//! split into the per-mount flags, the super-block flags and the rest, as
//! mountpoints-ID.img keeps them.

use crate::error::{Context, Error, Result};

/// One line of mountinfo (proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    pub major: u32,
    pub minor: u32,
    /// The directory of the file system this mount shows.
    pub root: String,
    pub mountpoint: String,
    /// Per-mount options ("rw,nosuid,relatime").
    pub mount_opts: String,
    pub shared: Option<u32>,
    pub master: Option<u32>,
    pub unbindable: bool,
    pub fstype: String,
    pub source: String,
    /// Super-block options ("rw,size=1024k,mode=755").
    pub super_opts: String,
}

impl MountInfo {
    /// The device as the kernel encodes it inside (criu's root_dev: MKKDEV).
    pub fn kdev(&self) -> u32 {
        (self.major << 20) | (self.minor & 0xf_ffff)
    }
}

/// The mounts of `pid`'s mount namespace, in the kernel's order (a parent
/// before its children, older mounts before newer ones on one place).
pub fn read(pid: i32) -> Result<Vec<MountInfo>> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).ctx(|| format!("reading {path}"))?;
    text.lines().map(|l| parse(l).ok_or_else(|| Error::Invalid(format!("{path}: unreadable line {l:?}")))).collect()
}

fn parse(line: &str) -> Option<MountInfo> {
    let (left, right) = line.split_once(" - ")?;
    let mut f = left.split(' ');
    let id = f.next()?.parse().ok()?;
    let parent = f.next()?.parse().ok()?;
    let (major, minor) = f.next()?.split_once(':')?;
    let root = unescape(f.next()?);
    let mountpoint = unescape(f.next()?);
    let mount_opts = f.next()?.to_string();
    let (mut shared, mut master, mut unbindable) = (None, None, false);
    for tag in f {
        if let Some(n) = tag.strip_prefix("shared:") {
            shared = Some(n.parse().ok()?);
        } else if let Some(n) = tag.strip_prefix("master:") {
            master = Some(n.parse().ok()?);
        } else if tag == "unbindable" {
            unbindable = true;
        }
    }
    let mut r = right.splitn(3, ' ');
    let fstype = r.next()?.to_string();
    let source = unescape(r.next()?);
    let super_opts = r.next().unwrap_or("").to_string();
    Some(MountInfo {
        id,
        parent,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root,
        mountpoint,
        mount_opts,
        shared,
        master,
        unbindable,
        fstype,
        source,
        super_opts,
    })
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Per-mount option words and their MS_* flags.
const MOUNT_FLAGS: &[(&str, u64)] = &[
    ("ro", libc::MS_RDONLY),
    ("nosuid", libc::MS_NOSUID),
    ("nodev", libc::MS_NODEV),
    ("noexec", libc::MS_NOEXEC),
    ("noatime", libc::MS_NOATIME),
    ("nodiratime", libc::MS_NODIRATIME),
    ("relatime", libc::MS_RELATIME),
    ("nosymfollow", 256),
];

/// Super-block option words that are flags, not options of the file system.
const SB_FLAGS: &[(&str, u64)] = &[
    ("ro", libc::MS_RDONLY),
    ("sync", libc::MS_SYNCHRONOUS),
    ("dirsync", libc::MS_DIRSYNC),
    ("mand", libc::MS_MANDLOCK),
    ("lazytime", 1 << 25),
];

/// The MS_* flags of per-mount options ("rw,nosuid,relatime"); a word that
/// is not one is refused, since it would be lost.
pub fn mount_flags(opts: &str) -> std::result::Result<u32, String> {
    let mut flags = 0;
    for w in opts.split(',').filter(|w| !w.is_empty() && *w != "rw") {
        let (_, f) = MOUNT_FLAGS.iter().find(|(n, _)| *n == w).ok_or_else(|| format!("per-mount option {w:?} is unknown to crust"))?;
        flags |= f;
    }
    Ok(flags as u32)
}

/// Super-block options split: the MS_* flags, and the file system's own
/// options, still comma-separated.
pub fn sb_flags_and_options(opts: &str) -> (u32, String) {
    let mut flags = 0;
    let mut rest = Vec::new();
    for w in opts.split(',').filter(|w| !w.is_empty() && *w != "rw") {
        match SB_FLAGS.iter().find(|(n, _)| *n == w) {
            Some((_, f)) => flags |= f,
            None => rest.push(w),
        }
    }
    (flags as u32, rest.join(","))
}

/// The mount_setattr(2) attributes of MS_* per-mount flags.
pub fn mount_attrs(flags: u32) -> u64 {
    let flags = flags as u64;
    let mut attr = 0;
    for (ms, a) in [
        (libc::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (libc::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (libc::MS_NODEV, MOUNT_ATTR_NODEV),
        (libc::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
        (libc::MS_NODIRATIME, MOUNT_ATTR_NODIRATIME),
        (256, MOUNT_ATTR_NOSYMFOLLOW),
    ] {
        if flags & ms != 0 {
            attr |= a;
        }
    }
    attr | match () {
        _ if flags & libc::MS_NOATIME != 0 => MOUNT_ATTR_NOATIME,
        _ if flags & libc::MS_RELATIME != 0 => MOUNT_ATTR_RELATIME,
        _ => MOUNT_ATTR_STRICTATIME,
    }
}

// linux/mount.h
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_RELATIME: u64 = 0x0;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR__ATIME: u64 = 0x70;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x200000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_read_with_its_tags_and_escapes() {
        let m = parse("36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue").unwrap();
        assert_eq!((m.id, m.parent, m.major, m.minor), (36, 35, 98, 0));
        assert_eq!((m.root.as_str(), m.mountpoint.as_str()), ("/mnt1", "/mnt/a b"));
        assert_eq!((m.shared, m.master, m.unbindable), (Some(7), Some(1), false));
        assert_eq!((m.fstype.as_str(), m.source.as_str(), m.super_opts.as_str()), ("ext3", "/dev/root", "rw,errors=continue"));
        assert_eq!(mount_flags(&m.mount_opts), Ok(libc::MS_NOATIME as u32));
        assert_eq!(sb_flags_and_options("ro,size=4k,mode=755"), (libc::MS_RDONLY as u32, "size=4k,mode=755".into()));
        assert!(parse("garbage").is_none());
    }
}
