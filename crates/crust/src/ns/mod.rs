//! Namespaces. The tree's own namespaces (its root's, where they are not
//! crust's) are saved with it and made again for the restored root, which
//! every process of the tree shares; the host's (crust's) stay the host's.
//! Each kind of namespace is one module behind [`NsKind`], in [`KINDS`]; a
//! namespace of a kind not in the table is refused, as is a process of the
//! tree in another namespace than its root's.
//!
//! A namespace is filled from crust, not from inside the tree: a thread of
//! crust joins it ([`in_namespace`]) and does its work there with plain
//! syscalls (a hostname, a mount, a device), then ends, leaving crust where
//! it was.

mod cgroup;
pub mod ipc;
pub mod join;
mod mnt;
pub mod net;
mod pid;
mod time;
pub mod user;
mod uts;

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::images::load::DumpImage;
use crate::images::proto::TaskKobjIdsEntry;
use crate::images::ImageDir;
use crate::proc;
use crate::task::{Scratch, Task};
use crate::tree::FrozenTree;

/// A kind of namespace, dump and restore side by side.
pub trait NsKind: Sync {
    /// Its name in /proc/PID/ns/ ("uts").
    fn name(&self) -> &'static str;
    /// The clone flag that makes a new one.
    fn clone_flag(&self) -> CloneFlags;
    /// Its id in a task's ids (the number its images are named by).
    fn id(&self, ids: &TaskKobjIdsEntry) -> Option<u32>;
    /// Refuse, at dump, a namespace of this kind the tree has that crust
    /// cannot make again as it is.
    fn check(&self, _tree: &FrozenTree) -> Result<()> {
        Ok(())
    }
    /// Save the namespace the root `pid` is in, as number `id`; returns the
    /// bytes written.
    fn dump(&self, pid: i32, id: u32, dir: &mut ImageDir, opts: &NsOptions) -> Result<u64>;
    /// Its images read back, into `img.extras`.
    fn load_images(&self, img: &mut DumpImage, id: u32) -> Result<()>;
    /// What stands in the way of making it again on this host.
    fn problems(&self, _img: &DumpImage, _opts: &NsOptions) -> Vec<String> {
        Vec::new()
    }
    /// Fill the new namespace the restored root was made in.
    fn restore(&self, img: &DumpImage, root: &mut NsRoot) -> Result<()>;
    /// Once every process of the tree (in it, with root `root`) is made,
    /// before they run: what must wait for them (an ipc segment removed
    /// while attached is removed once attached again).
    fn finish(&self, _img: &DumpImage, _root: i32) -> Result<()> {
        Ok(())
    }
}

/// The restored root, just made in its new namespaces, before anything else
/// of the tree exists: crust can work in its namespaces from a thread of its
/// own ([`in_namespace`]), or inject syscalls into it (what must be done by
/// a task inside them all, as mounting a proc of the new pid namespace).
pub struct NsRoot<'a> {
    pub pid: i32,
    pub task: &'a Task,
    pub scratch: &'a mut Scratch,
    pub opts: &'a NsOptions,
    /// Set by a kind that changed the root's root directory: the root's fd
    /// on crust's root, to reach crust's files (the images) from the task
    /// until its fd table is made (which closes it).
    pub host_root: Option<u64>,
}

/// What the user says about the namespaces, at dump and restore (criu's
/// options).
#[derive(Clone, Debug, Default)]
pub struct NsOptions {
    /// `--root`: the directory the restored tree's root mount shows (by
    /// default the one it showed at dump).
    pub root: Option<PathBuf>,
    /// `--ext-mount-map KEY:VAL`, `--external mnt[KEY]:VAL`: at dump, the
    /// mount at KEY is external, recorded as VAL; at restore, the external
    /// mount recorded as KEY is the host path VAL.
    pub ext_mount_map: Vec<(String, String)>,
    /// `--ext-mount-map auto`: at dump, a bind mount of a host path is
    /// external, recorded by that path.
    pub ext_mount_auto: bool,
    /// At dump, an ext_mount_map KEY may name a path that is no external
    /// mount of the tree, as criu's RPC takes it: runc names every device
    /// node (bind mounts only in a user namespace) and every cgroup mount
    /// of its config, which crust may save otherwise (a fresh cgroup mount
    /// of a hierarchy's root, in a container runc restored).
    pub ext_mount_keys_may_miss: bool,
    /// At dump, from crust and not the user: the socket files (inode,
    /// device as the kernel encodes it) that the restore makes again by
    /// binding the tree's sockets; a tmpfs's contents leave them out.
    pub rebound_socket_files: std::collections::HashSet<(u64, u64)>,
    /// At dump, `--external KIND[INO]:KEY`: namespaces shared with
    /// something outside the tree, saved as external.
    pub external_ns: Vec<join::ExtNs>,
    /// At restore, `--join-ns KIND:PID|PATH`: what the external ones join.
    pub join_ns: Vec<join::JoinNs>,
}

impl NsOptions {
    /// criu's `--ext-mount-map KEY:VAL` or `auto`, as crust's command line,
    /// criu's and the RPC give it.
    pub fn add_ext_mount_map(&mut self, spec: &str) -> std::result::Result<(), String> {
        if spec == "auto" {
            self.ext_mount_auto = true;
            return Ok(());
        }
        let (key, path) = spec.split_once(':').ok_or_else(|| format!("--ext-mount-map {spec}: expected KEY:VAL or auto"))?;
        self.ext_mount_map.push((key.to_string(), path.to_string()));
        Ok(())
    }
}

/// One of criu's `--external` forms that name something outside a tree's
/// own namespaces, parsed once for crust's command line, criu's and the RPC.
pub enum External {
    /// `mnt[KEY]:VAL`: the external mount KEY is host path VAL.
    Mount(String, String),
    /// `veth[IF]:HOSTIF[@BRIDGE]`: the host end of the namespace's veth IF.
    Veth(net::VethEnd),
    /// `net[INO]:KEY` (uts, ipc too): the tree's namespace INO is external.
    Namespace(join::ExtNs),
}

impl External {
    /// The form `spec` has, or None for another kind (the caller's to take
    /// or refuse).
    pub fn parse(spec: &str) -> Option<std::result::Result<External, String>> {
        if let Some(rest) = spec.strip_prefix("mnt[") {
            let mount = rest.split_once("]:").map(|(k, v)| External::Mount(k.to_string(), v.to_string()));
            return Some(mount.ok_or_else(|| format!("--external {spec}: expected mnt[KEY]:VAL")));
        }
        if let Some(ns) = join::ExtNs::parse(spec) {
            return Some(ns.map(External::Namespace));
        }
        net::VethEnd::parse(spec).map(|end| end.map(External::Veth))
    }

    /// Put it in the options of its kind of namespace.
    pub fn add_to(self, ns: &mut NsOptions, net: &mut net::NetOptions) {
        match self {
            External::Mount(key, path) => ns.ext_mount_map.push((key, path)),
            External::Veth(end) => net.veths.push(end),
            External::Namespace(ns_) => ns.external_ns.push(ns_),
        }
    }
}

/// Every kind crust saves, in the order a restore fills them.
static KINDS: &[&dyn NsKind] = &[&user::User, &uts::Uts, &pid::Pid, &time::Time, &cgroup::Cgroup, &mnt::Mnt, &net::Net, &ipc::Ipc];

/// Every kind the kernel has, with its clone flag: a tree's own namespace of
/// a kind not in [`KINDS`] is refused.
const ALL: [(&str, CloneFlags); 8] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("mnt", CloneFlags::CLONE_NEWNS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("time", CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)),
];

fn kind(name: &str) -> Option<&'static dyn NsKind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

/// The tree's own namespaces, by kind name: recorded beside the images
/// (crust-meta.json) for the restore to make them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnNamespaces(pub BTreeSet<String>);

impl OwnNamespaces {
    /// The clone flags that make them, for the restored root.
    pub fn clone_flags(&self) -> Result<CloneFlags> {
        self.0.iter().try_fold(CloneFlags::empty(), |flags, name| Ok(flags | known(name)?.clone_flag()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn known(name: &str) -> Result<&'static dyn NsKind> {
    kind(name).ok_or_else(|| Error::unsupported("the images", format!("the tree has a {name} namespace of its own, which this crust cannot make")))
}

/// Which namespaces are the tree's own, refusing what crust cannot save: a
/// namespace of its own of a kind crust does not know, a process or thread in
/// another namespace than the root's, a process whose next children would be in
/// another pid or time namespace than its own (it unshared and has not
/// forked yet).
pub fn own_namespaces(tree: &FrozenTree) -> Result<OwnNamespaces> {
    let me = std::process::id() as i32;
    let root = tree.processes[0].pid;
    let mut own = OwnNamespaces::default();
    for (name, _) in ALL {
        let theirs = proc::ns_inode(root, name);
        for p in tree.processes.iter().filter(|p| p.zombie.is_none()) {
            for &tid in &p.threads {
                let who = || if tid == p.pid { proc::who(p.pid) } else { format!("thread {tid} of {}", proc::who(p.pid)) };
                if proc::thread_ns_inode(p.pid, tid, name) != theirs {
                    return Err(Error::unsupported(
                        who(),
                        format!("it is in another {name} namespace than the tree's root {root}: namespaces inside the tree are not supported yet"),
                    ));
                }
                for (pending, of) in [("pid_for_children", "pid"), ("time_for_children", "time")] {
                    if of == name && proc::thread_ns_inode(p.pid, tid, pending) != proc::thread_ns_inode(p.pid, tid, name) {
                        return Err(Error::unsupported(
                            who(),
                            format!("its next children would be in another {name} namespace than its own (it unshared one and has not forked yet): not supported"),
                        ));
                    }
                }
            }
        }
        if theirs != proc::ns_inode(me, name) {
            let Some(k) = kind(name) else {
                return Err(Error::unsupported(
                    proc::who(root),
                    format!("it is in a {name} namespace of its own: dumping processes inside {name} namespaces is not supported yet"),
                ));
            };
            k.check(tree)?;
            own.0.insert(name.to_string());
        }
    }
    Ok(own)
}

/// Where crust finds the files of a tree whose root is `pid` at dump time,
/// by the paths the tree sees them at: through the root's root when the tree
/// has a mount namespace of its own ("/proc/PID/root"), else as they are.
pub fn dump_view(own: &OwnNamespaces, pid: i32) -> Option<String> {
    own.0.contains("mnt").then(|| format!("/proc/{pid}/root"))
}

/// Before a restore: where the tree's file `path` is on this host now. None
/// when it is on a mount the restore makes (a tmpfs from the images, proc):
/// nothing to look at beforehand.
pub fn restore_view(img: &DumpImage, path: &str) -> Option<String> {
    match recorded(img).0.contains("mnt") {
        true => mnt::host_path_of(img, path),
        false => Some(path.to_string()),
    }
}

/// Whether the tree's file `path` is found at restore in another directory
/// than at dump (`--root`, another host path for an external mount): a copy,
/// whose inode says nothing.
pub fn moved(img: &DumpImage, path: &str) -> bool {
    recorded(img).0.contains("mnt") && mnt::host_path_of(img, path) != mnt::recorded_host_path_of(img, path)
}

/// Where the restore mounts anew the tree's devpts whose device was `dev`
/// (as mnt_entry's root_dev): the mount point inside the tree, if its mount
/// namespace is its own and has that devpts.
pub fn own_devpts(img: &DumpImage, dev: u32) -> Option<String> {
    recorded(img).0.contains("mnt").then(|| mnt::fresh_devpts(img, dev)).flatten()
}

/// Save each of the tree's own namespaces, entered through its root `pid`
/// with ids `ids`; returns the bytes written.
pub fn dump(own: &OwnNamespaces, pid: i32, ids: &TaskKobjIdsEntry, dir: &mut ImageDir, opts: &NsOptions) -> Result<u64> {
    let mut bytes = 0;
    for k in KINDS.iter().filter(|k| own.0.contains(k.name())) {
        let id = k.id(ids).ok_or_else(|| Error::Invalid(format!("process {pid} has no {} namespace id", k.name())))?;
        bytes += k.dump(pid, id, dir, opts)?;
    }
    Ok(bytes)
}

/// Whether the tree has a namespace of kind `name` of its own (made by the
/// restore), from the notes beside its images.
pub fn is_own(img: &DumpImage, name: &str) -> bool {
    recorded(img).0.contains(name)
}

/// The own namespaces recorded beside the images.
pub fn recorded(img: &DumpImage) -> &OwnNamespaces {
    static NONE: std::sync::OnceLock<OwnNamespaces> = std::sync::OnceLock::new();
    img.extras.get::<OwnNamespaces>().unwrap_or_else(|| NONE.get_or_init(OwnNamespaces::default))
}

/// Read the images of the tree's own namespaces (`own`, from crust's notes).
pub fn load_images(img: &mut DumpImage, own: OwnNamespaces) -> Result<()> {
    if let Some(root) = img.processes.first() {
        let (ids, core) = (root.ids, img.dir.join(format!("core-{}.img", root.pid())));
        for name in &own.0 {
            let k = known(name)?;
            let id = k.id(&ids).ok_or_else(|| Error::image(&core, format!("the root has no {name} namespace id")))?;
            k.load_images(img, id)?;
        }
    }
    // Attachments of System V segments need the segments, of an ipc
    // namespace of the tree's own.
    ipc::check_attachments(img)?;
    img.extras.insert(own);
    Ok(())
}

/// What stands in the way of making the tree's namespaces on this host.
pub fn problems(img: &DumpImage, opts: &NsOptions) -> Vec<String> {
    recorded(img).0.iter().filter_map(|name| kind(name)).flat_map(|k| k.problems(img, opts)).collect()
}

/// Fill the namespaces the restored root was made in.
pub fn restore(img: &DumpImage, root: &mut NsRoot) -> Result<()> {
    let own = recorded(img);
    KINDS.iter().filter(|k| own.0.contains(k.name())).try_for_each(|k| k.restore(img, root))
}

/// Finish the namespaces once the whole tree (root `root`) is made.
pub fn finish(img: &DumpImage, root: i32) -> Result<()> {
    let own = recorded(img);
    KINDS.iter().filter(|k| own.0.contains(k.name())).try_for_each(|k| k.finish(img, root))
}

/// Run `work` on a thread of crust that has joined `pid`'s namespace of
/// kind `name` (and only that one); the thread ends with `work`, so crust
/// itself stays where it was. A mount namespace is joined after the thread
/// stops sharing crust's root and working directory, as setns(2) needs.
pub fn in_namespace<T: Send>(pid: i32, name: &str, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let flag = ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).ok_or_else(|| Error::Invalid(format!("no namespace kind {name}")))?;
    let path = format!("/proc/{pid}/ns/{name}");
    let ns = std::fs::File::open(&path).ctx(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            if flag == CloneFlags::CLONE_NEWNS {
                nix::sched::unshare(CloneFlags::CLONE_FS).ctx(|| "unsharing the fs of a namespace thread")?;
            }
            nix::sched::setns(ns.as_fd(), flag).ctx(|| format!("joining {path}"))?;
            work()
        })
        .join()
        .map_err(|_| Error::Invalid(format!("the thread working in {path} panicked")))?
    })
}
