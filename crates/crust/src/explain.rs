//! `crust explain`: what a dump holds and why, in sentences, and what a
//! restore will need. (Cgroups for now: the part users found puzzling.)

use std::collections::BTreeMap;
use std::path::Path;

use crate::cgroups::{self, Mode};
use crate::images::meta::{DumpMeta, META};
use crate::error::{Error, Result};
use crate::images::proto::{CgroupEntry, CoreEntry, PstreeEntry};
use crate::images::{ImageReader, Kind};

pub fn explain(dir: &Path, mode: Mode, roots: &[cgroups::CgroupRoot]) -> Result<Vec<String>> {
    let mut r = ImageReader::open(&dir.join("pstree.img"), Kind::Pstree)?;
    let mut tasks: Vec<(u32, String, u32)> = Vec::new();
    while let Some(p) = r.read_entry::<PstreeEntry>()? {
        let core: CoreEntry = ImageReader::open(&dir.join(format!("core-{}.img", p.pid)), Kind::Core)?.one()?;
        let comm = core.tc.as_ref().map(|t| t.comm.clone()).unwrap_or_default();
        let set = core
            .thread_core
            .as_ref()
            .and_then(|t| t.cg_set)
            .or_else(|| core.tc.as_ref()?.cg_set)
            .unwrap_or(crate::images::criu::SAME_AS_DUMPER);
        tasks.push((p.pid, comm, set));
    }
    let entry: CgroupEntry = ImageReader::open(&dir.join("cgroup.img"), Kind::Cgroup)?.one()?;
    let meta: Option<DumpMeta> = std::fs::read(dir.join(META)).ok().and_then(|t| serde_json::from_slice(&t).ok());
    let dumper = meta.as_ref().map(|m| m.cgroups.dumper.clone()).unwrap_or_default();
    let sets: BTreeMap<u32, _> = entry.sets.iter().map(|s| (s.id, &s.ctls)).collect();

    let mut out = vec!["cgroups:".to_string()];
    if let Some(roots) = meta.as_ref().map(|m| &m.cgroups.cgroup_roots).filter(|r| !r.is_empty()) {
        out.push(format!("  paths were recorded relative to --cgroup-root {}", roots.join(", ")));
    }
    let recorded = tasks.iter().any(|(_, _, set)| sets.get(set).is_some_and(|c| !c.is_empty()));
    if !recorded {
        out.push(format!(
            "  all {} task(s) shared crust's cgroups when it dumped them, so nothing was recorded; \
             a restore leaves the tree in the cgroups of the crust that restores it",
            tasks.len()
        ));
        return Ok(out);
    }
    for (pid, comm, set) in &tasks {
        let ctls = sets.get(set).copied().map(Vec::as_slice).unwrap_or_default();
        if ctls.is_empty() {
            out.push(format!("  task {pid} ({comm}) shared crust's cgroups: nothing recorded for it"));
        }
        for m in ctls {
            let name = cgroups::display_name(&m.name);
            let crusts = dumper.get(&m.name).map(String::as_str).unwrap_or("(unknown)");
            out.push(format!(
                "  task {pid} ({comm}) is in {name}:{} while crust ran in {name}:{crusts}, so it was recorded",
                m.path
            ));
        }
    }
    out.push(format!("on restore with --manage-cgroups {}, each recorded cgroup:", format!("{mode:?}").to_lowercase()));
    let here = cgroups::hierarchies().unwrap_or_default();
    for c in &entry.controllers {
        let name = c.cnames.join(",");
        for d in &c.dirs {
            let props: Vec<String> = d.properties.iter().map(|p| format!("{}={}", p.name, p.value)).collect();
            let perms = d.dir_perms.as_ref().map(|p| format!("mode {:o}, owner {}:{}", p.mode, p.uid, p.gid)).unwrap_or_default();
            let status = match here.iter().find(|h| h.name == name) {
                None => "this hierarchy is not mounted on this host".to_string(),
                Some(h) if h.host_dir(&d.dir_name, roots).is_dir() => "it exists on this host".into(),
                Some(_) => "it does not exist on this host".into(),
            };
            out.push(format!(
                "  {}:{} {}; saved properties: {}; {perms}; {status}",
                cgroups::display_name(&name),
                d.dir_name,
                mode.needs(),
                if props.is_empty() { "none".to_string() } else { props.join(", ") }
            ));
        }
    }
    if entry.controllers.iter().all(|c| c.dirs.is_empty()) {
        return Err(Error::Image {
            file: dir.join("cgroup.img"),
            offset: 0,
            what: "tasks have recorded cgroups, but no directory is described".into(),
        });
    }
    Ok(out)
}
