//! Pre-copy (`crust migrate --live`): the tree's memory goes to the
//! destination in rounds while the tree runs, each round only the pages
//! written since the one before (see [`crate::track`]); the freeze that
//! follows sends only what was written since the last round.
//!
//! The tree is frozen once before the rounds, for the few syscalls that make
//! each process's userfaultfd and the protection of its memory. The rounds
//! then scan and re-protect in one walk while the tree runs; a page written
//! while it is read is found written again by the next scan. Each round
//! goes to the destination as a pre-dump of its own (`round-N`, pagemap and
//! pages images, its `parent` the round before), and the final dump's
//! pagemap leaves to that chain the pages tracking vouches for.
//!
//! When the rounds stop: after the first (everything) and each one after
//! it, once a round's pages are at most [`FEW_PAGES`], or did not shrink
//! to 3/4 of the round before (the writer is as fast as the link), or after
//! [`MAX_ROUNDS`].
//!
//! crust holds the userfaultfds itself: whatever happens (an error, the
//! link cut, crust killed), they are closed with it, and the kernel removes
//! the registration and the protection from the tree, which runs on as it
//! was.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::channel::{END_ROUND, ROUND};
use super::Link;
use crate::error::Result;
use crate::images::criu::{PAGE_SIZE, PE_PARENT, PE_PRESENT};
use crate::images::proto::{PagemapEntry, PagemapHead};
use crate::images::{ImageDir, Kind};
use crate::mem::{self, PageReader};
use crate::ranges::{intersect, merge, split, subtract};
use crate::track::{self, Handed, ProcessTracking};
use crate::tree::FrozenTree;

/// A round this small ends the pre-copy: 4 MiB, a few ms on the link.
pub const FEW_PAGES: u64 = 1024;
pub const MAX_ROUNDS: u32 = 10;

/// One pre-copy round, as `--json` and stats-migrate.json show it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoundStats {
    pub round: u32,
    /// Pages sent (written since the round before; all of them in round 1).
    pub pages: u64,
    pub bytes: u64,
    /// Scanning, reading and sending.
    pub time_us: u64,
    /// Pages written per second since the scan before (0 for round 1).
    pub dirty_pages_per_s: u64,
}

/// What the pre-copy did before the freeze.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PreCopyStats {
    /// The short freeze that started the tracking (its syscalls and the
    /// protection of the memory).
    pub setup_frozen_us: u64,
    pub rounds: Vec<RoundStats>,
}

/// Run the rounds; the tracking and what the destination holds are handed
/// back for the final dump.
pub(super) fn pre_copy(pid: i32, link: &Link) -> Result<(Handed, PreCopyStats)> {
    let mut stats = PreCopyStats::default();
    let t = Instant::now();
    let mut tracked = {
        let tree = FrozenTree::seize(pid)?;
        let mut vmas = BTreeMap::new();
        for p in tree.processes.iter().filter(|p| p.zombie.is_none()) {
            vmas.insert(p.pid, mem::read_vmas(p.pid)?);
        }
        track::start_tree(&tree, |pid| vmas.remove(&pid))
        // The tree runs on from here.
    };
    stats.setup_frozen_us = t.elapsed().as_micros() as u64;
    let mut held: BTreeMap<i32, Vec<(u64, u64)>> = BTreeMap::new();
    let mut last_scan = Instant::now();
    let mut before: Option<u64> = None;
    for round in 1..=MAX_ROUNDS {
        crate::cancel::check()?;
        let start = Instant::now();
        let since = last_scan.elapsed();
        last_scan = start;
        let (pages, bytes) = send_round(link, round, &mut tracked, &mut held)?;
        let dirty_pages_per_s = match round {
            1 => 0,
            _ => (pages as f64 / since.as_secs_f64().max(1e-6)) as u64,
        };
        stats.rounds.push(RoundStats { round, pages, bytes, time_us: start.elapsed().as_micros() as u64, dirty_pages_per_s });
        log::info!("pre-copy round {round}: {pages} pages in {} ms", start.elapsed().as_millis());
        if round > 1 && (pages <= FEW_PAGES || before.is_some_and(|b| pages * 4 > b * 3)) {
            break;
        }
        if round > 1 {
            before = Some(pages);
        }
    }
    Ok((Handed { tracked, held }, stats))
}

/// One round: each process's pages written since the last (all of them in
/// round 1), as a pre-dump of its own. Returns the pages and bytes sent.
fn send_round(link: &Link, round: u32, tracked: &mut [ProcessTracking], held: &mut BTreeMap<i32, Vec<(u64, u64)>>) -> Result<(u64, u64)> {
    link.chan().send(ROUND, round.to_string().as_bytes())?;
    let mut dir = ImageDir::stream(link.sink());
    let (mut pages, mut bytes) = (0, 0);
    for (n, t) in tracked.iter_mut().enumerate() {
        let had = held.remove(&t.pid).unwrap_or_default();
        let (kept, send) = match round {
            1 => (Vec::new(), track::populated(t.pid, &t.ranges)?),
            _ => {
                let scan = t.scan(true, false)?;
                let written = intersect(&scan.written, &t.ranges);
                (subtract(&had, &scan.dirty()), track::populated(t.pid, &written)?)
            }
        };
        let mut map = dir.writer(&format!("pagemap-{}.img", t.pid), Kind::Pagemap)?;
        map.entry(&PagemapHead { pages_id: n as u32 + 1 })?;
        for (start, end) in merge(kept.iter().chain(&send).copied().collect()) {
            for (vaddr, len, fresh) in split(&send, start, end - start) {
                let flags = if fresh { PE_PRESENT } else { PE_PARENT };
                map.entry(&PagemapEntry { vaddr, nr_pages: (len / PAGE_SIZE) as u32, in_parent: None, flags: Some(flags) })?;
            }
        }
        map.finish()?;
        let mut w = dir.writer(&format!("pages-{}.img", n + 1), Kind::Pages)?;
        let reader = PageReader::new(t.pid)?;
        let mut failed = Vec::new();
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK as usize];
        for &(start, end) in &send {
            let mut at = start;
            while at < end {
                crate::cancel::check()?;
                let len = (end - at).min(CHUNK) as usize;
                // The tree runs: a range unmapped meanwhile cannot be read.
                // Its bytes go as zeros, and it is not held there.
                if reader.read(at, &mut buf[..len]).is_err() {
                    buf[..len].fill(0);
                    failed.push((at, at + len as u64));
                }
                w.raw(&buf[..len])?;
                at += len as u64;
            }
            pages += (end - start) / PAGE_SIZE;
            bytes += end - start;
        }
        w.finish()?;
        let sent = subtract(&send, &merge(failed));
        held.insert(t.pid, merge(kept.into_iter().chain(sent).collect()));
    }
    dir.commit()?;
    link.chan().send(END_ROUND, &[])?;
    Ok((pages, bytes))
}
