//! Cgroup membership. A task's membership is recorded per hierarchy only where
//! it differs from crust's own, as CRIU does: a restore puts the task back into
//! the recorded cgroups and leaves it where the restorer is for the others.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::images::proto::{CgControllerEntry, CgMemberEntry, CgSetEntry, CgroupEntry};
use crate::proc::read_string;

/// Hierarchy name ("cpu,cpuacct", "name=systemd", "" for cgroup v2) to path.
pub type Membership = BTreeMap<String, String>;

pub fn membership(pid: &str) -> Result<Membership> {
    let text = read_string(&format!("/proc/{pid}/cgroup"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let name = parts.next()?;
            let path = parts.next()?;
            Some((name.to_string(), path.to_string()))
        })
        .collect())
}

/// Collects the distinct cgroup sets of the dumped tasks.
pub struct CgroupRecorder {
    own: Membership,
    sets: Vec<CgSetEntry>,
}

/// The set of tasks that live exactly where crust does: it lists no member.
pub const SAME_AS_DUMPER: u32 = 1;

impl CgroupRecorder {
    pub fn new() -> Result<CgroupRecorder> {
        let own = membership("self")?;
        Ok(CgroupRecorder { own, sets: vec![CgSetEntry { id: SAME_AS_DUMPER, ctls: Vec::new() }] })
    }

    /// The id of the set that describes `pid`'s cgroups.
    pub fn set_of(&mut self, pid: i32) -> Result<u32> {
        let ctls: Vec<CgMemberEntry> = membership(&pid.to_string())?
            .into_iter()
            .filter(|(name, path)| self.own.get(name) != Some(path))
            .map(|(name, path)| CgMemberEntry { name, path, cgns_prefix: None })
            .collect();
        if let Some(set) = self.sets.iter().find(|s| s.ctls == ctls) {
            return Ok(set.id);
        }
        let id = self.sets.len() as u32 + 1;
        self.sets.push(CgSetEntry { id, ctls });
        Ok(id)
    }

    pub fn entry(&self) -> CgroupEntry {
        let controllers = self
            .own
            .keys()
            .map(|name| CgControllerEntry {
                cnames: name.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
                dirs: Vec::new(),
            })
            .collect();
        CgroupEntry { sets: self.sets.clone(), controllers }
    }
}
