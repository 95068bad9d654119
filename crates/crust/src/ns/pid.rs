//! The pid namespace. A tree whose root is the init (pid 1) of a pid
//! namespace of its own is dumped with the pids it sees there: every pid of
//! its images (pstree.img, the per-pid image names, thread ids, file owners,
//! pidfds, timers' threads, crust's notes) is translated from crust's view
//! as it is written ([`crate::tree::NsPids`]). The restore makes the root in
//! a new pid namespace as its pid 1 (clone3 with CLONE_NEWPID), and every
//! other task inside it with its own pid there, whatever the host pids are:
//! two copies of one dump can run side by side.
//!
//! Nothing else is saved: the namespace holds nothing but its processes
//! (criu writes pidns-ID.img only for a namespace given as external). Its
//! init's signal rule (a signal from inside that it does not handle is
//! ignored) is the kernel's and comes back with the namespace.

use nix::sched::CloneFlags;

use super::{NsKind, NsRoot};
use crate::error::{Error, Result};
use crate::images::load::DumpImage;
use crate::images::proto::TaskKobjIdsEntry;
use crate::images::ImageDir;
use crate::tree::FrozenTree;

pub struct Pid;

impl NsKind for Pid {
    fn name(&self) -> &'static str {
        "pid"
    }

    fn clone_flag(&self) -> CloneFlags {
        CloneFlags::CLONE_NEWPID
    }

    fn id(&self, ids: &TaskKobjIdsEntry) -> Option<u32> {
        ids.pid_ns_id
    }

    /// The namespace must be the tree's: its init is the root, so every
    /// process in it is in the tree (orphans there go to the root).
    fn check(&self, tree: &FrozenTree) -> Result<()> {
        let root = tree.processes[0].pid;
        let path = format!("/proc/{root}/status");
        let text = std::fs::read_to_string(&path).map_err(|err| Error::Io { context: format!("reading {path}"), err })?;
        let inner = text.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|l| l.split_whitespace().last()?.parse::<i32>().ok());
        match inner {
            Some(1) => Ok(()),
            Some(n) => Err(Error::unsupported(
                crate::proc::who(root),
                format!("it is pid {n} of a pid namespace whose init (pid 1) is not in the tree: dump the namespace's init instead"),
            )),
            None => Err(Error::Invalid(format!("{path} has no NSpid line"))),
        }
    }

    fn dump(&self, _pid: i32, _id: u32, _dir: &mut ImageDir, _opts: &super::NsOptions) -> Result<u64> {
        Ok(0)
    }

    /// The root of the images must be the namespace's init.
    fn load_images(&self, img: &mut DumpImage, _id: u32) -> Result<()> {
        match img.processes.first() {
            Some(root) if root.pid() != 1 => Err(Error::image(
                img.dir.join("pstree.img"),
                format!("the tree has a pid namespace of its own, but its root is pid {}, not 1", root.pid()),
            )),
            _ => Ok(()),
        }
    }

    fn restore(&self, _img: &DumpImage, _root: &mut NsRoot) -> Result<()> {
        Ok(())
    }
}
