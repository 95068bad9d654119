//! crust's own notes beside CRIU's images (`crust-meta.json`): what `crust
//! explain` and the checks before a restore need that CRIU's images do not hold.

use serde::{Deserialize, Serialize};

/// crust's notes beside the images, for `crust explain` and preflight checks.
pub const META: &str = "crust-meta.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DumpMeta {
    pub cgroups: CgroupReport,
    /// Size and modification time of every file the tree only reads (mapped
    /// files, executables, read-only fds): a restore elsewhere needs the same.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, FileStamp>,
    /// Device number of every character device reopened by path (CRIU's
    /// reg_file_entry has no field for it): a restore needs the same there.
    #[serde(default)]
    pub devices: std::collections::BTreeMap<String, u64>,
    /// By pid: the saved pages (start, end) a process had in the same
    /// physical page as its parent when dumped, which its pages image
    /// therefore holds exactly as its parent's does.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub shared_with_parent: std::collections::BTreeMap<i32, Vec<(u64, u64)>>,
    /// Stopped processes whose parent had already collected the stop with
    /// wait: their restored stop is collected again before the parent runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stops_collected: Vec<i32>,
    /// The network lock (nftables table) the dump left holding the tree's
    /// TCP connections, which the restore removes once the tree runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_lock: Option<String>,
    /// The kinds of the tree's own namespaces ("uts"...), which the restore
    /// makes again; the others are the host's.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub own_namespaces: std::collections::BTreeSet<String>,
    /// Files the tree shared with processes outside it (`pipe:[INO]`),
    /// dumped as external: a restore must be given each (`--inherit-fd`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub external_files: std::collections::BTreeSet<String>,
    /// The tree's namespaces shared with something outside it, kind ->
    /// key (`--external net[INO]:KEY`): not saved; a restore joins one
    /// given for each (`--join-ns`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub external_namespaces: std::collections::BTreeMap<String, String>,
}

impl DumpMeta {
    /// The notes beside the images in `dir`; none (the defaults) for images
    /// another tool wrote, or notes crust cannot read.
    pub fn read(dir: &std::path::Path) -> DumpMeta {
        std::fs::read(dir.join(META)).ok().and_then(|t| serde_json::from_slice(&t).ok()).unwrap_or_default()
    }
}

/// Whether `path` lies on a file system whose files are made by the kernel
/// as they are read (proc, sysfs, cgroupfs): no size or time of their own.
pub fn on_pseudo_fs(path: &str) -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC, PROC_SUPER_MAGIC, SYSFS_MAGIC};
    statfs(path).is_ok_and(|fs| [PROC_SUPER_MAGIC, SYSFS_MAGIC, CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC].contains(&fs.filesystem_type()))
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i128,
    /// Device and inode (0 in notes of older dumps): a file replaced since
    /// (renamed over, as by logrotate or an editor) has other ones.
    #[serde(default)]
    pub dev: u64,
    #[serde(default)]
    pub ino: u64,
    /// CRC32 of its last bytes before `size` (up to a page): a file that only
    /// grew since still has them there.
    #[serde(default)]
    pub tail_crc: Option<u32>,
}

/// How many bytes before a file's old end must be unchanged for it to count
/// as grown (appended to) rather than rewritten.
const TAIL: u64 = 4096;

impl FileStamp {
    /// The stamp of a regular file; none for files of proc, sysfs or cgroupfs,
    /// whose sizes and times say nothing of their contents.
    pub fn of(path: &str) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path).ok().filter(|m| m.is_file() && !on_pseudo_fs(path))?;
        Some(FileStamp {
            size: md.len(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            dev: md.dev(),
            ino: md.ino(),
            tail_crc: tail_crc(path, md.len()),
        })
    }

    /// Whether the file at `path`, stamped `self` at dump time, is the same
    /// file now, grown by appending: same device and inode, and the same last
    /// bytes before the old end. Why not, if not.
    pub fn grown_at(&self, path: &str) -> Result<(), String> {
        let now = FileStamp::of(path).ok_or("it is no longer a regular file")?;
        if self.ino == 0 {
            return Err("the dump did not record its inode (an older dump)".into());
        }
        if (now.dev, now.ino) != (self.dev, self.ino) {
            return Err(format!("it was replaced (inode {} at dump time, {} now)", self.ino, now.ino));
        }
        if now.size < self.size || tail_crc(path, self.size) != self.tail_crc {
            return Err(format!("its bytes before the old end ({} bytes) changed", self.size));
        }
        Ok(())
    }
}

/// CRC32 of the last bytes of `path` before offset `size`, up to [`TAIL`].
fn tail_crc(path: &str, size: u64) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let start = size.saturating_sub(TAIL);
    let mut buf = vec![0u8; (size - start) as usize];
    std::fs::File::open(path).ok()?.read_exact_at(&mut buf, start).ok()?;
    Some(crc32fast::hash(&buf))
}


/// Which cgroup a task is in, by hierarchy (controllers, or the v2 mount's name).
pub type Membership = std::collections::BTreeMap<String, String>;

/// Why something was recorded: for `crust explain` and the dump's summary.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CgroupReport {
    /// crust's own cgroups when it dumped.
    pub dumper: Membership,
    pub cgroup_roots: Vec<String>,
}

