//! The user namespace: its uid and gid maps and whether setgroups(2) is
//! allowed in it (userns-ID.img). The restored root is made in a new user
//! namespace (clone3 with CLONE_NEWUSER, from crust), whose maps crust
//! writes from outside before anything else of the tree is done; the
//! credentials of its threads, which the images keep as crust sees them,
//! are set from inside through the maps (state::creds).
//!
//! Only a tree of one single-threaded process, whose other namespaces are
//! crust's, is supported: every other task of the tree would be made by a
//! clone3 inside the new namespace, which cannot choose a pid (set_tid
//! needs CAP_CHECKPOINT_RESTORE over the pid namespace, which the new user
//! namespace does not own); and namespaces of the tree's own would have to
//! be owned by the new user namespace, which the restore does not arrange.
//! Those are refused at dump, by name.

use nix::sched::CloneFlags;

use super::{NsKind, NsOptions, NsRoot};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_one, DumpImage};
use crate::images::proto::{TaskKobjIdsEntry, UidGidExtent, UsernsEntry};
use crate::images::{ImageDir, Kind};
use crate::tree::FrozenTree;

pub struct User;

/// The maps read back, for the restore.
struct Maps(UsernsEntry);

fn image_name(id: u32) -> String {
    format!("userns-{id}.img")
}

/// The kernel's limit on the lines of a map (since 4.15).
const MAX_EXTENTS: usize = 340;

/// /proc/PID/uid_map or gid_map as extents.
fn read_map(pid: i32, which: &str) -> Result<Vec<UidGidExtent>> {
    let path = format!("/proc/{pid}/{which}");
    let text = std::fs::read_to_string(&path).ctx(|| format!("reading {path}"))?;
    text.lines()
        .map(|l| {
            let n: Vec<u32> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            match n[..] {
                [first, lower_first, count] => Ok(UidGidExtent { first, lower_first, count }),
                _ => Err(Error::Invalid(format!("{path}: unexpected line {l:?}"))),
            }
        })
        .collect()
}

fn map_text(map: &[UidGidExtent]) -> String {
    map.iter().map(|e| format!("{} {} {}\n", e.first, e.lower_first, e.count)).collect()
}

impl NsKind for User {
    fn name(&self) -> &'static str {
        "user"
    }

    fn clone_flag(&self) -> CloneFlags {
        CloneFlags::CLONE_NEWUSER
    }

    fn id(&self, ids: &TaskKobjIdsEntry) -> Option<u32> {
        ids.user_ns_id
    }

    fn check(&self, tree: &FrozenTree) -> Result<()> {
        let root = &tree.processes[0];
        let who = crate::proc::who(root.pid);
        let live: Vec<_> = tree.processes.iter().filter(|p| p.zombie.is_none()).collect();
        if live.len() > 1 || root.threads.len() > 1 {
            return Err(Error::unsupported(
                who,
                "it is in a user namespace of its own with other processes or threads in the tree: not supported (only a single-threaded process alone in its user namespace is: the others' pids cannot be chosen from inside it)",
            ));
        }
        let me = std::process::id() as i32;
        for other in ["mnt", "net", "pid", "ipc", "uts", "cgroup", "time"] {
            if crate::proc::ns_inode(root.pid, other) != crate::proc::ns_inode(me, other) {
                return Err(Error::unsupported(
                    who,
                    format!("it is in a user namespace of its own and a {other} namespace of its own: namespaces owned by a user namespace of the tree are not supported"),
                ));
            }
        }
        Ok(())
    }

    fn dump(&self, pid: i32, id: u32, dir: &mut ImageDir, _opts: &NsOptions) -> Result<u64> {
        let setgroups = std::fs::read_to_string(format!("/proc/{pid}/setgroups")).ctx(|| format!("reading /proc/{pid}/setgroups"))?;
        let entry = UsernsEntry { uid_map: read_map(pid, "uid_map")?, gid_map: read_map(pid, "gid_map")?, setgroups_deny: Some(setgroups.trim() == "deny") };
        let mut w = dir.writer(&image_name(id), Kind::Userns)?;
        w.entry(&entry)?;
        w.finish()
    }

    fn load_images(&self, img: &mut DumpImage, id: u32) -> Result<()> {
        let path = img.dir.join(image_name(id));
        let entry: UsernsEntry = read_one(&path, Kind::Userns)?;
        for (what, map) in [("uid_map", &entry.uid_map), ("gid_map", &entry.gid_map)] {
            if map.len() > MAX_EXTENTS || map.iter().any(|e| e.count == 0 || e.first.checked_add(e.count - 1).is_none() || e.lower_first.checked_add(e.count - 1).is_none()) {
                return Err(Error::image(&path, format!("{what} is not a map the kernel takes")));
            }
        }
        img.extras.insert(Maps(entry));
        Ok(())
    }

    /// The maps of the new namespace, written from crust (outside it):
    /// setgroups first, which the kernel takes only before gid_map.
    fn restore(&self, img: &DumpImage, root: &mut NsRoot) -> Result<()> {
        let Some(Maps(maps)) = img.extras.get::<Maps>() else { return Ok(()) };
        let pid = root.pid;
        let write = |file: &str, text: &str| std::fs::write(format!("/proc/{pid}/{file}"), text).ctx(|| format!("writing {text:?} to /proc/{pid}/{file}"));
        if maps.setgroups_deny == Some(true) {
            write("setgroups", "deny")?;
        }
        write("uid_map", &map_text(&maps.uid_map))?;
        write("gid_map", &map_text(&maps.gid_map))
    }
}
