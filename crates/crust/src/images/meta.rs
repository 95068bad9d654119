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
    /// By pid: the saved pages (start, end) a process had in the same
    /// physical page as its parent when dumped, which its pages image
    /// therefore holds exactly as its parent's does.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub shared_with_parent: std::collections::BTreeMap<i32, Vec<(u64, u64)>>,
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
}

impl FileStamp {
    /// The stamp of a regular file; none for files of proc, sysfs or cgroupfs,
    /// whose sizes and times say nothing of their contents.
    pub fn of(path: &str) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path).ok().filter(|m| m.is_file() && !on_pseudo_fs(path))?;
        Some(FileStamp { size: md.len(), mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128 })
    }
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

