//! Namespaces the tree shares with something outside it: another process
//! in it, a bind mount of its nsfs file (`ip netns add` keeps one at
//! /run/netns/NAME). Made
//! anew at restore, the tree would end up apart from them; so the dump
//! refuses such a namespace, naming one holder, unless the user marks it
//! external (criu's `--external KIND[INO]:KEY`): it is then not saved, its
//! key is recorded, and a restore must be given one to join (criu's
//! `--join-ns KIND:PID|PATH`), into which the restored root is made.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::images::load::DumpImage;
use crate::proc;
use crate::tree::FrozenTree;

use super::OwnNamespaces;

/// The kinds that can be external: joined by the restored root's thread of
/// crust before it forks it (a mount namespace cannot be joined by a thread
/// sharing its fs, a pid namespace would change the pids the restore asks
/// for, a user namespace needs a single-threaded crust).
const KINDS: [(&str, CloneFlags); 3] = [("net", CloneFlags::CLONE_NEWNET), ("uts", CloneFlags::CLONE_NEWUTS), ("ipc", CloneFlags::CLONE_NEWIPC)];

fn flag(kind: &str) -> Option<CloneFlags> {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, f)| *f)
}

/// `--external KIND[INO]:KEY`: the tree's namespace of kind KIND with inode
/// INO is external, recorded as KEY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtNs {
    pub kind: String,
    pub ino: u64,
    pub key: String,
}

impl ExtNs {
    /// The form `spec` has if it names a namespace (`net[`, `uts[`, `ipc[`),
    /// else None.
    pub fn parse(spec: &str) -> Option<std::result::Result<ExtNs, String>> {
        let (kind, rest) = spec.split_once('[')?;
        flag(kind)?;
        let parsed = rest.split_once("]:").and_then(|(ino, key)| Some(ExtNs { kind: kind.to_string(), ino: ino.parse().ok()?, key: key.to_string() }));
        Some(parsed.filter(|e| !e.key.is_empty()).ok_or_else(|| format!("--external {spec}: expected {kind}[INODE]:KEY")))
    }
}

/// `--join-ns KIND:PID|PATH`: the namespace of kind KIND to make the
/// restored root in: process PID's or the nsfs file PATH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinNs {
    pub kind: String,
    pub path: String,
}

impl JoinNs {
    /// criu's `NS:PID|NS_FILE[,EXTRA]`; EXTRA (criu's user namespace ids)
    /// is refused, as is a kind crust cannot join.
    pub fn parse(spec: &str) -> std::result::Result<JoinNs, String> {
        let (kind, target) = spec.split_once(':').ok_or_else(|| format!("--join-ns {spec}: expected NS:PID or NS:PATH"))?;
        if flag(kind).is_none() {
            return Err(format!("--join-ns {spec}: crust joins net, uts and ipc namespaces only"));
        }
        if target.contains(',') {
            return Err(format!("--join-ns {spec}: extra options are for user namespaces, which crust does not join"));
        }
        let path = match target.parse::<i32>() {
            Ok(pid) => format!("/proc/{pid}/ns/{kind}"),
            Err(_) => target.to_string(),
        };
        Ok(JoinNs { kind: kind.to_string(), path })
    }
}

/// The tree's external namespaces, kind -> key, recorded beside the images.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalNamespaces(pub BTreeMap<String, String>);

/// At dump: take out of `own` the namespaces the user marked external
/// (`ext`) and refuse any other that something outside the tree holds.
pub fn split_external(tree: &FrozenTree, own: &mut OwnNamespaces, ext: &[ExtNs]) -> Result<ExternalNamespaces> {
    let root = tree.processes[0].pid;
    let mut out = ExternalNamespaces::default();
    // Read once, only if some namespace is to be checked: the tree is
    // frozen meanwhile.
    let mut outside = None;
    for kind in own.0.clone() {
        let Some(ino) = proc::ns_inode(root, &kind) else { continue };
        if let Some(e) = ext.iter().find(|e| e.kind == kind && e.ino == ino) {
            own.0.remove(&kind);
            out.0.insert(kind, e.key.clone());
            continue;
        }
        if let Some(holder) = outside.get_or_insert_with(|| Outside::read(tree)).holder(&kind, ino) {
            let mark = if flag(&kind).is_some() { format!(" (or mark it external with --external {kind}[{ino}]:KEY and join it at restore)") } else { String::new() };
            return Err(Error::unsupported(
                proc::who(root),
                format!("its {kind} namespace ({kind}:[{ino}]) is shared with {holder}: made anew at restore, the tree would lose it{mark}"),
            ));
        }
    }
    match ext.iter().find(|e| !out.0.contains_key(&e.kind)) {
        Some(e) => Err(Error::Invalid(format!("--external {}[{}]:{}: the tree has no {} namespace of its own with that inode", e.kind, e.ino, e.key, e.kind))),
        None => Ok(out),
    }
}

/// What outside the tree may hold a namespace: the processes, the nsfs
/// bind mounts in crust's mount namespace and the tree root's (mount
/// point by "KIND:[INO]", and whose).
struct Outside {
    pids: Vec<i32>,
    mounts: Vec<(String, String, &'static str)>,
}

impl Outside {
    fn read(tree: &FrozenTree) -> Outside {
        let inside: std::collections::HashSet<i32> = tree.processes.iter().map(|p| p.pid).collect();
        let pids: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid| !inside.contains(pid))
            .collect();
        let mut mounts = Vec::new();
        for (at, whose) in [("self".to_string(), "crust's"), (tree.processes[0].pid.to_string(), "the tree's")] {
            let text = std::fs::read_to_string(format!("/proc/{at}/mountinfo")).unwrap_or_default();
            for line in text.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                let fstype = fields.iter().position(|f| *f == "-").and_then(|i| fields.get(i + 1));
                if let (Some(&"nsfs"), Some(root), Some(point)) = (fstype, fields.get(3), fields.get(4)) {
                    mounts.push((root.to_string(), point.to_string(), whose));
                }
            }
        }
        Outside { pids, mounts }
    }

    /// One holder of namespace `kind:[ino]`, described.
    fn holder(&self, kind: &str, ino: u64) -> Option<String> {
        if let Some(pid) = self.pids.iter().find(|&&pid| proc::ns_inode(pid, kind) == Some(ino)) {
            return Some(proc::who(*pid));
        }
        let name = format!("{kind}:[{ino}]");
        // An outside process's fd on an nsfs file is no holder here: a
        // container's manager keeps them (lxc-start's monitor holds one on
        // each namespace of its container) and needs nothing of the old
        // namespace once the container is restored.
        self.mounts.iter().find(|(root, _, _)| *root == name).map(|(_, point, whose)| format!("a bind mount of it at {point} (in {whose} mount namespace)"))
    }
}

/// The external namespaces recorded beside the images.
pub fn recorded(img: &DumpImage) -> &ExternalNamespaces {
    static NONE: std::sync::OnceLock<ExternalNamespaces> = std::sync::OnceLock::new();
    img.extras.get::<ExternalNamespaces>().unwrap_or_else(|| NONE.get_or_init(ExternalNamespaces::default))
}

/// What the restore joins: the `--join-ns` given, and for an external
/// namespace none names, the fd of crust's given by its key (`--inherit-fd
/// fd[N]:KEY`, as runc gives its container's network namespace).
pub fn given(img: &DumpImage, join: &[JoinNs], inherit: &BTreeMap<String, i32>) -> Vec<JoinNs> {
    let mut out = join.to_vec();
    for (kind, key) in &recorded(img).0 {
        if let (false, Some(fd)) = (join.iter().any(|j| &j.kind == kind), inherit.get(key)) {
            out.push(JoinNs { kind: kind.clone(), path: format!("/proc/self/fd/{fd}") });
        }
    }
    out
}

/// At restore: an external namespace with nothing to join, a namespace to
/// join that is not external in the images or cannot be opened.
pub fn problems(img: &DumpImage, join: &[JoinNs]) -> Vec<String> {
    let ext = recorded(img);
    let mut out = Vec::new();
    for (kind, key) in &ext.0 {
        if !join.iter().any(|j| &j.kind == kind) {
            out.push(format!("the tree's {kind} namespace was dumped as external ({key}): give one to join with --join-ns {kind}:PID|PATH or --inherit-fd fd[N]:{key}"));
        }
    }
    for j in join {
        if !ext.0.contains_key(&j.kind) {
            out.push(format!("--join-ns {}:{}: the images have no external {} namespace", j.kind, j.path, j.kind));
        } else if let Err(e) = open(j) {
            out.push(e.to_string());
        }
    }
    out
}

/// The nsfs file `j` names, checked to be a namespace of its kind.
fn open(j: &JoinNs) -> Result<OwnedFd> {
    let fd: OwnedFd = std::fs::File::open(&j.path).ctx(|| format!("opening --join-ns {}:{}", j.kind, j.path))?.into();
    // NS_GET_NSTYPE: the clone flag of the namespace an nsfs fd is on.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl takes no argument and only reads the fd, which is
    // alive for the call.
    let ty = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), NS_GET_NSTYPE) };
    match flag(&j.kind) {
        Some(f) if ty >= 0 && ty as u32 as i32 == f.bits() => Ok(fd),
        _ => Err(Error::Invalid(format!("--join-ns {}:{}: not a {} namespace", j.kind, j.path, j.kind))),
    }
}

/// Run `work` (which makes the restored root) with the calling thread in
/// the namespaces the tree's external ones are joined to, then put the
/// thread back in its own. Only the calling thread moves: it is the one
/// that forks the root and stays its tracer.
pub fn joined<T>(img: &DumpImage, join: &[JoinNs], work: impl FnOnce() -> Result<T>) -> Result<T> {
    let ext = recorded(img);
    let mut back = Vec::new();
    let mut res = Ok(());
    for j in join.iter().filter(|j| ext.0.contains_key(&j.kind)) {
        let f = flag(&j.kind).ok_or_else(|| Error::Invalid(format!("no namespace kind {}", j.kind)))?;
        let step = (|| {
            let mine: OwnedFd = std::fs::File::open(format!("/proc/thread-self/ns/{}", j.kind)).ctx(|| format!("opening crust's {} namespace", j.kind))?.into();
            let target = open(j)?;
            nix::sched::setns(target.as_fd(), f).ctx(|| format!("joining {}", j.path))?;
            back.push((mine, f));
            Ok(())
        })();
        if step.is_err() {
            res = step;
            break;
        }
    }
    let out = res.and_then(|()| work());
    for (mine, f) in back.into_iter().rev() {
        nix::sched::setns(mine.as_fd(), f).ctx(|| "returning crust to its own namespace")?;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_forms_parse_and_others_are_left_or_refused() {
        assert_eq!(ExtNs::parse("net[4026532001]:mynet"), Some(Ok(ExtNs { kind: "net".into(), ino: 4026532001, key: "mynet".into() })));
        assert!(ExtNs::parse("mnt[/a]:b").is_none(), "an external mount is not a namespace");
        assert!(ExtNs::parse("veth[eth0]:h").is_none());
        assert!(ExtNs::parse("net[x]:k").is_some_and(|r| r.is_err()));
        assert!(ExtNs::parse("uts[12]:").is_some_and(|r| r.is_err()));
        assert_eq!(JoinNs::parse("net:/run/netns/a"), Ok(JoinNs { kind: "net".into(), path: "/run/netns/a".into() }));
        assert_eq!(JoinNs::parse("ipc:42"), Ok(JoinNs { kind: "ipc".into(), path: "/proc/42/ns/ipc".into() }));
        assert!(JoinNs::parse("user:42,0:0").is_err());
        assert!(JoinNs::parse("mnt:/x").is_err());
        assert!(JoinNs::parse("net").is_err());
    }
}
