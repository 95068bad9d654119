//! Memory a parent shares copy-on-write with its children stays shared after
//! a restore: a pre-forking server (prefork: a 256 MiB heap and 4 workers that
//! each write a few pages of it) uses as much memory after the restore as
//! before, and a page written by no one after the fork is one physical page
//! in every process again.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::job::{dump, restore, Job};
use common::TempDir;

/// Pss and Rss of processes `pids` together, in KiB (smaps_rollup).
fn tree_memory(pids: &[i32]) -> (u64, u64) {
    let (mut pss, mut rss) = (0, 0);
    for pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_else(|e| panic!("smaps_rollup of {pid}: {e}"));
        let field = |name: &str| -> u64 {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} for {pid}: {text}"));
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        pss += field("Pss:");
        rss += field("Rss:");
    }
    (pss, rss)
}

/// The physical frame of the page at `addr` in `pid` (root reads pagemap's PFNs).
fn frame(pid: i32, addr: u64) -> u64 {
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut e = [0u8; 8];
    pagemap.read_exact_at(&mut e, addr / 4096 * 8).unwrap();
    let e = u64::from_le_bytes(e);
    assert!(e & (1 << 63) != 0, "page {addr:#x} of {pid} is present");
    let pfn = e & ((1 << 55) - 1);
    assert!(pfn != 0, "pagemap shows frames to root");
    pfn
}

/// The numbers after `key=` in a READY line (`children=1,2,3`).
fn ready_list(ready: &str, key: &str) -> Vec<u64> {
    let prefix = format!("{key}=");
    let v = ready.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("no {prefix} in {ready:?}"));
    v.split(',').map(|n| n.parse().unwrap()).collect()
}

fn within(after: u64, before: u64, percent: u64) -> bool {
    after.abs_diff(before) * 100 <= before * percent
}

fn restore_ok(job: &mut Job, images: &Path) {
    let out = restore(images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
}

#[test]
fn a_pre_forking_tree_uses_as_much_memory_after_restore_as_before() {
    let dir = TempDir::new("cow-prefork");
    let mut job = Job::start("prefork", &["256"], dir.path());
    let ready = job.ready();
    let children: Vec<i32> = ready_list(&ready, "children").into_iter().map(|p| p as i32).collect();
    assert_eq!(children.len(), 4);
    let untouched = ready_list(&ready, "untouched")[0];
    let heap = ready_list(&ready, "heap")[0];
    let tree: Vec<i32> = std::iter::once(job.pid).chain(children.iter().copied()).collect();
    let before = tree_memory(&tree);
    let shared_frame = frame(job.pid, untouched);
    for &c in &children {
        assert_eq!(frame(c, untouched), shared_frame, "before the dump, worker {c} shares the page with its parent");
    }

    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    restore_ok(&mut job, &images);

    let after = tree_memory(&tree);
    eprintln!("Pss/Rss of the tree in KiB: before {before:?}, after {after:?}");
    assert!(within(after.0, before.0, 10), "Pss total {} KiB after the restore, {} KiB before", after.0, before.0);
    assert!(within(after.1, before.1, 10), "Rss total {} KiB after the restore, {} KiB before", after.1, before.1);
    let parent_frame = frame(job.pid, untouched);
    for &c in &children {
        assert_eq!(frame(c, untouched), parent_frame, "worker {c}: the page no one wrote is its parent's page again");
    }
    // The first page worker 1 wrote (page 4 * 97 + 11) is its own.
    let written = heap + (4 * 97 + 11) * 4096;
    assert_ne!(frame(children[0], written), frame(job.pid, written), "a page the worker wrote is its own");
    let stats = &common::crit_show(&images.join("stats-restore"))["entries"][0]["restore"];
    let skipped = common::num(&stats["pages_skipped_cow"]);
    assert!(skipped >= 4 * (65536 - 8), "each worker's heap is left shared but for 8 pages: {stats}");
    assert!(common::num(&stats["pages_compared"]) >= skipped + 4 * 8, "each worker's 4 pages and the parent's 4 differ: {stats}");
    // Every process checks every page of its heap.
    job.expect_ok();
}
