//! `crust pre-dump`: the memory of a tree, written while it is frozen for a
//! moment and then let run on, for a later dump to take as its parent (see
//! [`super::DumpOptions::prev_images_dir`]) and write only what changed
//! since. As criu's pre-dump: pagemap-PID.img and pages-N.img for each
//! process, inventory.img, stats-dump, and the `parent` link of a chain.
//!
//! Where soft-dirty is missing (it is here), the pre-dump starts dirty
//! tracking (see [`crate::track`]) at the moment it read the pages, and
//! leaves it with a keeper process that `tracking.json` names: the next
//! dump of the chain takes it and reads only the pages written since.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{us, DumpOptions, DumpStats, TreeDump};
use crate::error::Result;
use crate::images::criu::IMG_VERSION;
use crate::images::proto::InventoryEntry;
use crate::images::{ImageDir, Kind};
use crate::mem;
use crate::notify::Point;
use crate::track;
use crate::tree::FrozenTree;

/// inventory_entry.pre_dump_mode: the pages were read (criu's PRE_DUMP_READ),
/// not spliced.
const PRE_DUMP_READ: u32 = 2;

pub fn pre_dump(opts: &DumpOptions) -> Result<DumpStats> {
    opts.notify.at(Point::PreDump, Some(opts.pid))?;
    let start = Instant::now();
    let tree = match &opts.freeze_cgroup {
        Some(cg) => FrozenTree::seize_through_freezer(opts.pid, cg)?,
        None => FrozenTree::seize(opts.pid)?,
    };
    let frozen_at = Instant::now();
    // Refused as the dump would refuse it; its pages images are named by
    // the pids inside the tree's own pid namespace, as the dump's.
    let mut own_ns = crate::ns::own_namespaces(&tree)?;
    crate::ns::join::split_external(&tree, &mut own_ns, &opts.ns.external_ns)?;
    let mut d = TreeDump::new(ImageDir::create(&opts.dir)?, opts, &tree, frozen_at - start)?;
    if own_ns.0.contains("pid") {
        d.files.pids = crate::tree::NsPids::read(&tree)?;
    }
    d.tracked = super::end_tracking(opts, d.parent.as_deref());
    let mut vmas_of = BTreeMap::new();
    for (n, p) in tree.processes.iter().enumerate().filter(|(_, p)| p.zombie.is_none()) {
        crate::cancel::check()?;
        // pages-N.img is numbered as the dump numbers it: by place in the tree.
        let vmas = mem::read_vmas(p.pid)?;
        d.pages(p.pid, n as u32 + 1, &vmas)?;
        vmas_of.insert(p.pid, vmas);
    }
    d.shared_with_parent = d.shared_with_parents(&tree);
    d.mark_shared_pages(&tree);
    d.write_pages(&opts.progress)?;
    // Tracking starts at the moment the pages were read (the tree is still
    // frozen): the next dump of the chain writes only what is written since.
    let tracking = track::start_tree(&tree, |pid| vmas_of.remove(&pid));
    let keeper = match tracking.is_empty() {
        true => None,
        false => Some(track::Keeper::spawn(tracking)?),
    };
    if let Some(k) = &keeper {
        d.stats.bytes_written += d.dir.write_json(track::TRACKING_JSON, &k.note)?;
    }
    // Everything is read: the tree runs on while the images are synced.
    drop(tree);
    d.stats.frozen_time_us = us(frozen_at.elapsed());
    let mut w = d.dir.writer("inventory.img", Kind::Inventory)?;
    w.entry(&InventoryEntry { img_version: IMG_VERSION, pre_dump_mode: Some(PRE_DUMP_READ), ..Default::default() })?;
    d.stats.bytes_written += w.finish()?;
    let mut w = d.dir.writer("stats-dump", Kind::Stats)?;
    w.entry(&d.stats.entry())?;
    d.stats.bytes_written += w.finish()?;
    d.dir.commit_unless(crate::cancel::check)?;
    // Until here a failure (or crust's end) ends the keeper, and the tracking with it.
    if let Some(k) = keeper {
        k.committed();
    }
    opts.notify.at(Point::PostDump, Some(opts.pid))?;
    Ok(d.stats)
}
