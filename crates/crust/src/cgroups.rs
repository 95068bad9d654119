//! Cgroups: recorded at dump time, placed on restore.
//!
//! A task's membership is recorded per hierarchy only where it differs from
//! crust's own (CRIU's rule): a task that lives where crust lives needs no
//! cgroup of its own on restore, it just stays with the restoring crust. Each
//! recorded directory carries the properties crust knows and its mode and
//! owner, so that a restore can create it again. What a restore does with them
//! is the user's choice (`--manage-cgroups`), as in criu.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};


use crate::error::{Context, Error, Result};
use crate::images::criu::SAME_AS_DUMPER;
use crate::images::proto::{
    CgControllerEntry, CgMemberEntry, CgSetEntry, CgroupDirEntry, CgroupEntry, CgroupPerms, CgroupPropEntry,
};
use crate::proc;

/// Hierarchy name as in /proc/PID/cgroup ("cpu", "name=systemd", "" for v2) to path.
pub use crate::images::meta::{CgroupReport, Membership};

pub fn membership(pid: &str) -> Result<Membership> {
    let groups = proc::process_at(pid)
        .and_then(|p| p.cgroups().map_err(proc::io_error))
        .ctx(|| format!("reading /proc/{pid}/cgroup"))?;
    Ok(groups.into_iter().map(|g| (g.controllers.join(","), g.pathname)).collect())
}

/// How a hierarchy is named to a user ("cgroup2" for the unified one).
pub fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "cgroup2"
    } else {
        name
    }
}

/// Properties crust saves and restores, per controller, in the order they are
/// written (a cpu period before its quota; a new cpuset needs cpus and mems
/// before any task can join it).
fn known_properties(controller: &str) -> &'static [&'static str] {
    match controller {
        "cpu" => &["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"],
        "cpuset" => &["cpuset.cpus", "cpuset.mems"],
        "memory" => &["memory.limit_in_bytes"],
        "pids" => &["pids.max"],
        "" => &["cpuset.cpus", "cpuset.mems", "cpu.weight", "cpu.max", "memory.max", "pids.max"],
        _ => &[],
    }
}

/// A mounted cgroup hierarchy of this host.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    /// As /proc/PID/cgroup names it.
    pub name: String,
    pub mount: PathBuf,
}

impl Hierarchy {
    fn controllers(&self) -> Vec<&str> {
        if self.name.is_empty() {
            vec![""]
        } else {
            self.name.split(',').collect()
        }
    }

    /// Where a recorded path of this hierarchy lands on this host, under the
    /// `--cgroup-root` that applies to it.
    pub fn host_dir(&self, recorded: &str, roots: &[CgroupRoot]) -> PathBuf {
        let path = join(root_for(roots, &self.name).unwrap_or("/"), recorded);
        self.mount.join(path.trim_start_matches('/'))
    }

    fn properties(&self) -> Vec<&'static str> {
        self.controllers().into_iter().flat_map(known_properties).copied().collect()
    }
}

/// The hierarchies mounted here, matched to the names /proc/self/cgroup uses.
pub fn hierarchies() -> Result<Vec<Hierarchy>> {
    let own = membership("self")?;
    let mountinfo = proc::read_string("/proc/self/mountinfo")?;
    Ok(parse_hierarchies(&own, &mountinfo))
}

/// The cgroup mounts of `mountinfo` (parsed by procfs; nothing if it cannot
/// be), each named as `own` (a /proc/PID/cgroup) names it.
fn parse_hierarchies(own: &Membership, mountinfo: &str) -> Vec<Hierarchy> {
    use procfs::FromBufRead;
    let mounts = procfs::process::MountInfos::from_buf_read(mountinfo.as_bytes()).map(|m| m.0).unwrap_or_default();
    let mut out = Vec::new();
    for m in mounts {
        let name = match m.fs_type.as_str() {
            "cgroup2" => Some(String::new()),
            "cgroup" => {
                // The superblock's options as written: `cpu`, `name=systemd`.
                let items: BTreeSet<String> = m
                    .super_options
                    .iter()
                    .map(|(k, v)| v.as_ref().map_or_else(|| k.clone(), |v| format!("{k}={v}")))
                    .collect();
                own.keys().find(|n| !n.is_empty() && n.split(',').all(|c| items.contains(c))).cloned()
            }
            _ => None,
        };
        if let Some(name) = name {
            if !out.iter().any(|h: &Hierarchy| h.name == name) {
                out.push(Hierarchy { name, mount: m.mount_point });
            }
        }
    }
    out
}

/// `--cgroup-root [controller:]/path`: where a hierarchy's recorded paths start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupRoot {
    pub controller: Option<String>,
    pub path: String,
    /// criu's meaning, as its RPC's cg_root at restore has it (runc and
    /// podman name the container's new cgroup): the tree's cgroup in the
    /// hierarchy (the deepest holding every recorded one) goes at `path`,
    /// and the others below it as they were below it. Otherwise (crust's
    /// --cgroup-root) the recorded paths are relative to `path`.
    pub of_tree: bool,
}

impl std::str::FromStr for CgroupRoot {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (controller, path) = match s.split_once(':') {
            Some((c, p)) => (Some(c.to_string()), p),
            None => (None, s),
        };
        if !path.starts_with('/') {
            return Err(format!("{s}: the cgroup root must be an absolute path, as [controller:]/path"));
        }
        Ok(CgroupRoot { controller, path: path.trim_end_matches('/').to_string(), of_tree: false })
    }
}

/// The root that applies to a hierarchy: one naming one of its controllers, else
/// one without a controller.
fn root_for<'a>(roots: &'a [CgroupRoot], hierarchy: &str) -> Option<&'a str> {
    root_entry(roots, hierarchy).map(|r| r.path.as_str())
}

fn root_entry<'a>(roots: &'a [CgroupRoot], hierarchy: &str) -> Option<&'a CgroupRoot> {
    let named = roots.iter().find(|r| r.controller.as_deref().is_some_and(|c| hierarchy.split(',').any(|h| h == c)));
    named.or_else(|| roots.iter().find(|r| r.controller.is_none()))
}

/// The deepest directory of hierarchy `name` holding every recorded cgroup
/// of it: the tree's own cgroup there.
fn tree_dir(entry: &CgroupEntry, name: &str) -> String {
    let mut common: Option<Vec<&str>> = None;
    for m in entry.sets.iter().flat_map(|s| s.ctls.iter()).filter(|m| m.name == name) {
        let parts: Vec<&str> = m.path.split('/').filter(|c| !c.is_empty()).collect();
        common = Some(match common {
            None => parts,
            Some(c) => c.iter().zip(&parts).take_while(|(a, b)| a == b).map(|(a, _)| *a).collect(),
        });
    }
    format!("/{}", common.unwrap_or_default().join("/"))
}

/// `path` below `dir` (both cgroup paths from the hierarchy's top), if it is.
fn within_cgroup<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(dir.trim_end_matches('/'))?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

fn join(root: &str, path: &str) -> String {
    let joined = format!("{}/{}", root.trim_end_matches('/'), path.trim_start_matches('/'));
    if joined == "/" {
        joined
    } else {
        joined.trim_end_matches('/').to_string()
    }
}

/// Collects the distinct cgroup sets of the dumped tasks.
pub struct CgroupRecorder {
    own: Membership,
    roots: Vec<CgroupRoot>,
    sets: Vec<CgSetEntry>,
    /// Recorded directories by hierarchy: path in the image -> path on this host.
    dirs: BTreeMap<String, BTreeMap<String, String>>,
}

impl CgroupRecorder {
    pub fn new(roots: Vec<CgroupRoot>) -> Result<CgroupRecorder> {
        let own = membership("self")?;
        let sets = vec![CgSetEntry { id: SAME_AS_DUMPER, ctls: Vec::new() }];
        Ok(CgroupRecorder { own, roots, sets, dirs: BTreeMap::new() })
    }

    /// The id of the set that describes `pid`'s cgroups.
    pub fn set_of(&mut self, pid: i32) -> Result<u32> {
        let mut ctls = Vec::new();
        for (name, path) in membership(&pid.to_string())? {
            if self.own.get(&name) == Some(&path) {
                continue;
            }
            let recorded = match root_for(&self.roots, &name) {
                Some(root) => match path.strip_prefix(root) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => join("/", rest),
                    _ => {
                        return Err(Error::Invalid(format!(
                            "process {pid} is in {name}:{path}, outside the cgroup root {root} given for it"
                        )))
                    }
                },
                None => path.clone(),
            };
            self.dirs.entry(name.clone()).or_default().insert(recorded.clone(), path);
            ctls.push(CgMemberEntry { name, path: recorded, cgns_prefix: None });
        }
        if let Some(set) = self.sets.iter().find(|s| s.ctls == ctls) {
            return Ok(set.id);
        }
        let id = self.sets.len() as u32 + 1;
        self.sets.push(CgSetEntry { id, ctls });
        Ok(id)
    }

    /// cgroup.img's one entry: the sets, and per hierarchy the recorded
    /// directories with their properties, mode and owner.
    pub fn entry(&self) -> Result<CgroupEntry> {
        let hierarchies = hierarchies()?;
        let mut controllers = Vec::new();
        for h in &hierarchies {
            let mut dirs = Vec::new();
            for (recorded, live) in self.dirs.get(&h.name).into_iter().flatten() {
                let dir = h.mount.join(live.trim_start_matches('/'));
                let md = std::fs::metadata(&dir).ctx(|| format!("reading cgroup {}", dir.display()))?;
                let properties = h
                    .properties()
                    .into_iter()
                    .filter_map(|p| {
                        let value = std::fs::read_to_string(dir.join(p)).ok()?;
                        Some(CgroupPropEntry { name: p.to_string(), value: value.trim().to_string(), perms: None })
                    })
                    .collect();
                dirs.push(CgroupDirEntry {
                    dir_name: recorded.clone(),
                    children: Vec::new(),
                    properties,
                    dir_perms: Some(CgroupPerms { mode: md.permissions().mode() & 0o7777, uid: md.uid(), gid: md.gid() }),
                });
            }
            controllers.push(CgControllerEntry {
                cnames: if h.name.is_empty() { Vec::new() } else { h.name.split(',').map(str::to_string).collect() },
                dirs,
            });
        }
        Ok(CgroupEntry { sets: self.sets.clone(), controllers })
    }

    pub fn report(&self) -> CgroupReport {
        CgroupReport {
            dumper: self.own.clone(),
            cgroup_roots: self
                .roots
                .iter()
                .map(|r| format!("{}{}", r.controller.as_ref().map(|c| format!("{c}:")).unwrap_or_default(), r.path))
                .collect(),
        }
    }

    /// One line for the end of a dump.
    pub fn summary(&self) -> String {
        let members: BTreeSet<String> =
            self.sets.iter().flat_map(|s| s.ctls.iter().map(|m| format!("{}:{}", display_name(&m.name), m.path))).collect();
        if members.is_empty() {
            "cgroups: every task shared crust's cgroups, nothing recorded".to_string()
        } else {
            format!(
                "cgroups: recorded {} where tasks differ from crust's own cgroups (crust explain DIR says why)",
                members.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// criu's `--manage-cgroups` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Leave the restored tree where crust runs.
    Ignore,
    /// Move tasks into the recorded cgroups, which must exist; no properties.
    None,
    /// The cgroups must exist; their properties are set.
    Props,
    /// Create missing cgroups, and set properties only in those crust created.
    #[default]
    Soft,
    /// Create missing cgroups, and set properties in all.
    Full,
    /// Every cgroup must be created by crust: fail if one exists.
    Strict,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "ignore" => Mode::Ignore,
            "none" => Mode::None,
            "props" => Mode::Props,
            "soft" => Mode::Soft,
            "full" => Mode::Full,
            "strict" => Mode::Strict,
            _ => return Err(format!("{s}: not a cgroup mode (ignore, none, props, soft, full, strict)")),
        })
    }
}

impl Mode {
    /// What a restore in this mode needs of one recorded directory, in words.
    pub fn needs(self) -> &'static str {
        match self {
            Mode::Ignore => "is ignored: the tree stays in the restoring crust's cgroups",
            Mode::None => "must exist; the tasks are moved in, its properties are left alone",
            Mode::Props => "must exist; the tasks are moved in and its properties are set",
            Mode::Soft => "is created with its properties if missing, else used as it is",
            Mode::Full => "is created if missing; its properties are set either way",
            Mode::Strict => "must not exist; crust creates it with its properties",
        }
    }
}

/// One recorded membership, placed on this host.
struct Planned<'a> {
    set: u32,
    hierarchy: String,
    label: String,
    dir: PathBuf,
    saved: Option<&'a CgroupDirEntry>,
}

impl Planned<'_> {
    fn problem(&self, mode: Mode) -> Option<String> {
        let exists = self.dir.is_dir();
        let name = format!("{mode:?}").to_lowercase();
        match (exists, mode) {
            (true, Mode::Strict) => Some(format!(
                "cgroup {}: {} exists, and --manage-cgroups strict needs crust to create it",
                self.label,
                self.dir.display()
            )),
            (false, Mode::None | Mode::Props) => Some(format!(
                "cgroup {}: {} does not exist, and --manage-cgroups {name} does not create it",
                self.label,
                self.dir.display()
            )),
            _ => None,
        }
    }
}

/// The properties crust knows for a hierarchy (by its name).
fn hierarchies_props(name: &str) -> Vec<&'static str> {
    Hierarchy { name: name.to_string(), mount: PathBuf::new() }.properties()
}

/// Where each recorded membership lands on this host.
fn plan<'a>(entry: &'a CgroupEntry, roots: &[CgroupRoot]) -> std::result::Result<Vec<Planned<'a>>, Vec<String>> {
    let hierarchies = hierarchies().map_err(|e| vec![e.to_string()])?;
    plan_on(entry, roots, &hierarchies)
}

/// Where each recorded membership lands on a host with these hierarchies.
fn plan_on<'a>(
    entry: &'a CgroupEntry,
    roots: &[CgroupRoot],
    hierarchies: &[Hierarchy],
) -> std::result::Result<Vec<Planned<'a>>, Vec<String>> {
    let mut planned = Vec::new();
    let mut problems = Vec::new();
    for set in &entry.sets {
        for m in &set.ctls {
            let label = format!("{}:{}", display_name(&m.name), m.path);
            if !m.path.starts_with('/') || m.path.split('/').any(|c| c == ".." || c == ".") {
                problems.push(format!("cgroup {label}: not a cgroup path"));
                continue;
            }
            let Some(h) = hierarchies.iter().find(|h| h.name == m.name) else {
                problems.push(format!("cgroup {label}: this hierarchy is not mounted on this host"));
                continue;
            };
            let saved = entry
                .controllers
                .iter()
                .filter(|c| c.cnames.join(",") == m.name)
                .flat_map(|c| c.dirs.iter())
                .find(|d| d.dir_name == m.path);
            let relative = match root_entry(roots, &m.name) {
                Some(r) if r.of_tree => {
                    let base = tree_dir(entry, &m.name);
                    join("/", within_cgroup(&m.path, &base).unwrap_or(&m.path))
                }
                _ => m.path.clone(),
            };
            planned.push(Planned { set: set.id, hierarchy: h.name.clone(), label, dir: h.host_dir(&relative, roots), saved });
        }
    }
    if problems.is_empty() {
        Ok(planned)
    } else {
        Err(problems)
    }
}

/// Where the restored tasks go: for each set, the directories to join. Holds the
/// directories crust created, which `undo` removes again.
#[derive(Default)]
pub struct Placement {
    dirs: BTreeMap<u32, Vec<PathBuf>>,
    created: Vec<PathBuf>,
    /// Properties crust changed in cgroups it did not create: each file and
    /// what it held before, put back by `undo`.
    changed: Vec<(PathBuf, Vec<u8>)>,
}

impl Placement {
    /// Check, create and configure every directory the image needs, before any
    /// task runs. On error, what was created is removed again.
    pub fn prepare(entry: &CgroupEntry, mode: Mode, roots: &[CgroupRoot]) -> Result<Placement> {
        let mut placement = Placement::default();
        if mode == Mode::Ignore {
            return Ok(placement);
        }
        match placement.prepare_dirs(entry, mode, roots) {
            Ok(()) => Ok(placement),
            Err(e) => {
                placement.undo();
                Err(e)
            }
        }
    }

    /// What the image asks of this host, and every way this host falls short
    /// of it in `mode`, without changing anything.
    pub fn check(entry: &CgroupEntry, mode: Mode, roots: &[CgroupRoot]) -> Vec<String> {
        if mode == Mode::Ignore {
            return Vec::new();
        }
        match plan(entry, roots) {
            Err(problems) => problems,
            Ok(planned) => planned.iter().filter_map(|p| p.problem(mode)).collect(),
        }
    }

    fn prepare_dirs(&mut self, entry: &CgroupEntry, mode: Mode, roots: &[CgroupRoot]) -> Result<()> {
        let mut planned = plan(entry, roots).map_err(|p| Error::Invalid(p.join("; ")))?;
        // Parents first: a parent made on the way to its child would miss its
        // own mode, owner and properties.
        planned.sort_by_key(|p| p.dir.components().count());
        for p in &planned {
            if let Some(problem) = p.problem(mode) {
                return Err(Error::Invalid(problem));
            }
        }
        for p in planned {
            let fail = |why: String| Error::Invalid(format!("cgroup {}: {why}", p.label));
            let created = !p.dir.is_dir();
            if created {
                self.create(&p.dir, p.saved.and_then(|d| d.dir_perms.as_ref())).map_err(|e| fail(e.to_string()))?;
            }
            let set_props = matches!(mode, Mode::Props | Mode::Full | Mode::Strict) || (mode == Mode::Soft && created);
            if set_props {
                let known: Vec<&str> = hierarchies_props(&p.hierarchy);
                for prop in p.saved.map(|d| d.properties.as_slice()).unwrap_or_default() {
                    if !known.contains(&prop.name.as_str()) {
                        return Err(fail(format!("{} is not a property crust sets", prop.name)));
                    }
                    let file = p.dir.join(&prop.name);
                    if !created {
                        let before = std::fs::read(&file).map_err(|e| fail(format!("reading {}: {e}", prop.name)))?;
                        self.changed.push((file.clone(), before));
                    }
                    std::fs::write(&file, &prop.value)
                        .map_err(|e| fail(format!("setting {} to {}: {e}", prop.name, prop.value)))?;
                }
            }
            self.dirs.entry(p.set).or_default().push(p.dir);
        }
        Ok(())
    }

    /// mkdir -p, remembering each level made, with the saved mode and owner.
    fn create(&mut self, dir: &Path, perms: Option<&CgroupPerms>) -> Result<()> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.is_dir() {
            missing.push(d.to_path_buf());
            d = d.parent().ok_or_else(|| Error::Invalid(format!("{}: no parent", dir.display())))?;
        }
        for d in missing.into_iter().rev() {
            std::fs::create_dir(&d).ctx(|| format!("creating {}", d.display()))?;
            self.created.push(d);
        }
        if let Some(p) = perms {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(p.mode)).ctx(|| format!("chmod {}", dir.display()))?;
            std::os::unix::fs::chown(dir, Some(p.uid), Some(p.gid)).ctx(|| format!("chown {}", dir.display()))?;
        }
        Ok(())
    }

    /// Move process `pid` into the directories of set `set`.
    pub fn place(&self, pid: i32, set: u32) -> Result<()> {
        for dir in self.dirs.get(&set).into_iter().flatten() {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).ctx(|| format!("moving process {pid} into {}", dir.display()))?;
        }
        Ok(())
    }

    /// Remove the directories crust created (their tasks must be gone), then
    /// put back the properties it changed (a parent's limits may not shrink
    /// below a child's while the child is there).
    pub fn undo(&mut self) {
        for d in self.created.drain(..).rev() {
            if let Err(e) = std::fs::remove_dir(&d) {
                log::warn!("could not remove cgroup {} created for the failed restore: {e}", d.display());
            }
        }
        for (file, before) in self.changed.drain(..).rev() {
            if let Err(e) = std::fs::write(&file, &before) {
                log::warn!("could not put {} back as it was before the failed restore: {e}", file.display());
            }
        }
    }

    /// Keep what was created: the restore succeeded.
    pub fn keep(&mut self) {
        self.created.clear();
        self.changed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/net_cls rw,relatime - cgroup cgroup rw,net_cls
50 23 0:50 / /proc rw - proc proc rw
";

    fn own() -> Membership {
        [("cpu,cpuacct", "/"), ("memory", "/m"), ("name=systemd", "/"), ("", "/")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hierarchies_are_the_cgroup_mounts_named_as_proc_names_them() {
        let h = parse_hierarchies(&own(), MOUNTINFO);
        let names: Vec<(&str, &str)> = h.iter().map(|h| (h.name.as_str(), h.mount.to_str().unwrap())).collect();
        // net_cls is mounted but crust is in no cgroup of it: not a hierarchy it can name.
        assert_eq!(
            names,
            [
                ("cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct"),
                ("memory", "/sys/fs/cgroup/memory"),
                ("name=systemd", "/sys/fs/cgroup/systemd"),
                ("", "/sys/fs/cgroup/unified"),
            ]
        );
        assert_eq!(h[0].properties(), ["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"]);
        assert!(parse_hierarchies(&own(), "garbage\n\n - \n").is_empty());
    }

    #[test]
    fn roots_apply_by_controller_then_to_all() {
        let roots: Vec<CgroupRoot> = ["memory:/jail/", "/all"].iter().map(|r| r.parse().unwrap()).collect();
        assert_eq!(roots[0], CgroupRoot { controller: Some("memory".into()), path: "/jail".into(), of_tree: false });
        assert_eq!(root_for(&roots, "memory"), Some("/jail"));
        assert_eq!(root_for(&roots, "cpu,cpuacct"), Some("/all"));
        assert_eq!(root_for(&roots[..1], "cpu,cpuacct"), None);
        assert!("memory:relative".parse::<CgroupRoot>().is_err());
        assert_eq!(join("/", "/"), "/");
        assert_eq!(join("/jail", "/a/b/"), "/jail/a/b");
        let h = Hierarchy { name: "memory".into(), mount: PathBuf::from("/sys/fs/cgroup/memory") };
        assert_eq!(h.host_dir("/app", &roots), Path::new("/sys/fs/cgroup/memory/jail/app"));
        assert_eq!(h.host_dir("/app", &[]), Path::new("/sys/fs/cgroup/memory/app"));
    }

    fn member(name: &str, path: &str) -> CgMemberEntry {
        CgMemberEntry { name: name.into(), path: path.into(), cgns_prefix: None }
    }

    #[test]
    fn a_plan_places_each_membership_and_refuses_bad_paths_and_missing_hierarchies() {
        let tmp = std::env::temp_dir().join(format!("crust-unit-cgplan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("memory/there")).unwrap();
        let hierarchies = vec![
            Hierarchy { name: "memory".into(), mount: tmp.join("memory") },
            Hierarchy { name: String::new(), mount: tmp.join("unified") },
        ];
        let saved = CgroupDirEntry {
            dir_name: "/there".into(),
            properties: vec![CgroupPropEntry { name: "memory.limit_in_bytes".into(), value: "1".into(), perms: None }],
            ..Default::default()
        };
        let entry = CgroupEntry {
            sets: vec![
                CgSetEntry { id: 1, ctls: vec![] },
                CgSetEntry { id: 2, ctls: vec![member("memory", "/there"), member("", "/new/child")] },
            ],
            controllers: vec![CgControllerEntry { cnames: vec!["memory".into()], dirs: vec![saved] }],
        };
        let planned = plan_on(&entry, &[], &hierarchies).unwrap();
        let got: Vec<(u32, &str, PathBuf, bool)> =
            planned.iter().map(|p| (p.set, p.label.as_str(), p.dir.clone(), p.saved.is_some())).collect();
        assert_eq!(
            got,
            [(2, "memory:/there", tmp.join("memory/there"), true), (2, "cgroup2:/new/child", tmp.join("unified/new/child"), false)]
        );
        // What each mode says of a directory that exists and of one that does not.
        let problems = |mode| planned.iter().filter_map(|p| p.problem(mode)).collect::<Vec<_>>();
        assert!(problems(Mode::Soft).is_empty() && problems(Mode::Full).is_empty());
        assert_eq!(problems(Mode::Strict).len(), 1);
        assert!(problems(Mode::Strict)[0].contains("memory:/there"), "{:?}", problems(Mode::Strict));
        for mode in [Mode::None, Mode::Props] {
            let p = problems(mode);
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].contains("cgroup2:/new/child") && p[0].contains("does not exist"), "{p:?}");
        }
        // Under a --cgroup-root.
        let roots = ["/r".parse().unwrap()];
        let planned = plan_on(&entry, &roots, &hierarchies).unwrap();
        assert_eq!(planned[0].dir, tmp.join("memory/r/there"));
        // criu's cg_root (runc's at restore): the tree's cgroup goes there.
        let roots = [CgroupRoot { of_tree: true, .."/r".parse::<CgroupRoot>().unwrap() }];
        let planned = plan_on(&entry, &roots, &hierarchies).unwrap();
        assert_eq!((planned[0].dir.clone(), planned[1].dir.clone()), (tmp.join("memory/r"), tmp.join("unified/r")));
        let nested = CgroupEntry {
            sets: vec![CgSetEntry { id: 2, ctls: vec![member("memory", "/c1")] }, CgSetEntry { id: 3, ctls: vec![member("memory", "/c1/sub")] }],
            controllers: vec![],
        };
        let planned = plan_on(&nested, &roots, &hierarchies).unwrap();
        assert_eq!((planned[0].dir.clone(), planned[1].dir.clone()), (tmp.join("memory/r"), tmp.join("memory/r/sub")));

        // Paths that climb out, are relative, or name a hierarchy not mounted here.
        let bad = CgroupEntry {
            sets: vec![CgSetEntry {
                id: 2,
                ctls: vec![member("memory", "/../../etc"), member("memory", "rel"), member("memory", "/a/./b"), member("cpu", "/x")],
            }],
            controllers: vec![],
        };
        let problems = plan_on(&bad, &[], &hierarchies).err().unwrap();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[..3].iter().all(|p| p.ends_with("not a cgroup path")), "{problems:?}");
        assert!(problems[3].contains("cpu:/x: this hierarchy is not mounted"), "{problems:?}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
