//! The cgroup namespace. Its root is the cgroup its creator was in; the tree
//! sees its cgroups relative to it (/proc/self/cgroup). crust saves the
//! tree's cgroups themselves (cgroup.img), so the namespace needs nothing of
//! its own in the images (criu writes none either): the restored root
//! unshares a new one once crust has put it in its cgroups, which makes
//! them the new namespace's root, as they were the old one's.
//!
//! That holds only if the root was at its namespace's root when dumped:
//! a root moved into another cgroup after it made its namespace (or a
//! namespace made by a process outside the tree, in another cgroup) is
//! refused.

use nix::sched::CloneFlags;

use super::{in_namespace, NsKind, NsRoot};
use crate::error::{Error, Result};
use crate::images::load::DumpImage;
use crate::images::proto::TaskKobjIdsEntry;
use crate::images::ImageDir;
use crate::tree::FrozenTree;

pub struct Cgroup;

impl NsKind for Cgroup {
    fn name(&self) -> &'static str {
        "cgroup"
    }

    /// None: the namespace is unshared in the root after crust put it in its
    /// cgroups (a clone3 flag would root it in crust's).
    fn clone_flag(&self) -> CloneFlags {
        CloneFlags::empty()
    }

    fn id(&self, ids: &TaskKobjIdsEntry) -> Option<u32> {
        ids.cgroup_ns_id
    }

    /// The root's cgroups, seen from inside its namespace, are all "/".
    fn check(&self, tree: &FrozenTree) -> Result<()> {
        let root = tree.processes[0].pid;
        let path = format!("/proc/{root}/cgroup");
        let text = in_namespace(root, "cgroup", || crate::proc::read_string(&path))?;
        match text.lines().find(|l| l.splitn(3, ':').nth(2).is_some_and(|p| p != "/")) {
            None => Ok(()),
            Some(line) => Err(Error::unsupported(
                crate::proc::who(root),
                format!("it is not at the root of its cgroup namespace (it sees {line:?}): not supported"),
            )),
        }
    }

    fn dump(&self, _pid: i32, _id: u32, _dir: &mut ImageDir, _opts: &super::NsOptions) -> Result<u64> {
        Ok(0)
    }

    fn load_images(&self, _img: &mut DumpImage, _id: u32) -> Result<()> {
        Ok(())
    }

    fn restore(&self, _img: &DumpImage, root: &mut NsRoot) -> Result<()> {
        root.task.call("unshare(CLONE_NEWCGROUP)", libc::SYS_unshare, [libc::CLONE_NEWCGROUP as u64, 0, 0, 0, 0, 0])?;
        Ok(())
    }
}
