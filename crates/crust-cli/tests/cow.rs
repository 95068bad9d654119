//! Memory a parent shares copy-on-write with its children stays shared after
//! a restore: a pre-forking server (prefork: a 256 MiB heap and 4 workers that
//! each write a few pages of it) uses as much memory after the restore as
//! before, and a page written by no one after the fork is one physical page
//! in every process again.

mod common;

use std::path::Path;

use common::job::{dump, restore, Job};
use common::procstate::ProcState;
use common::{field_list, page_frame as frame, tree_memory, within, TempDir};

fn restore_ok(job: &mut Job, images: &Path) {
    let out = restore(images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
}

/// prefork 256 with 4 workers dumped and restored; `like_criu`: crust's own
/// notes beside the images (which pages the dump saw shared) are removed
/// first, as in images CRIU wrote, so that every inherited page is compared.
fn prefork_memory_after_restore(test: &str, like_criu: bool) {
    let dir = TempDir::new(test);
    let mut job = Job::start("prefork", &["256"], dir.path());
    let ready = job.ready();
    let children: Vec<i32> = field_list(&ready, "children").into_iter().map(|p| p as i32).collect();
    assert_eq!(children.len(), 4);
    let untouched = field_list(&ready, "untouched")[0];
    let heap = field_list(&ready, "heap")[0];
    let tree: Vec<i32> = std::iter::once(job.pid).chain(children.iter().copied()).collect();
    let before = tree_memory(&tree);
    let shared_frame = frame(job.pid, untouched);
    for &c in &children {
        assert_eq!(frame(c, untouched), shared_frame, "before the dump, worker {c} shares the page with its parent");
    }

    let state = ProcState::of_tree(job.pid);
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    if like_criu {
        for notes in ["crust-meta.json", "crust-digests.json"] {
            std::fs::remove_file(images.join(notes)).unwrap();
        }
    }
    restore_ok(&mut job, &images);
    // Kept mappings or made again, every process's maps and their flags are as they were.
    state.assert_same(&ProcState::of_tree(job.pid), &[]);

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
    let compared = common::num(&stats["pages_compared"]);
    assert!(skipped >= 4 * (65536 - 8), "each worker's heap is left shared but for 8 pages: {stats}");
    assert!(common::num(&stats["pages_restored"]) < 65536 + 4 * 1000, "the heap is written once, in the parent: {stats}");
    if like_criu {
        assert!(compared >= skipped + 4 * 8, "each inherited page compared; each worker's 4 and the parent's 4 differ: {stats}");
    } else {
        assert!(compared < 4 * 1000, "the pages the dump saw shared are not compared: {stats}");
    }
    // Every process checks every page of its heap (worker 2 also that the
    // pages it gave back read as zeros).
    job.expect_ok();
}

#[test]
fn a_pre_forking_tree_uses_as_much_memory_after_restore_as_before() {
    prefork_memory_after_restore("cow-prefork", false);
}

#[test]
fn images_without_crusts_notes_are_compared_page_by_page_and_stay_shared() {
    prefork_memory_after_restore("cow-prefork-criu", true);
}

#[test]
fn a_leave_running_dump_leaves_the_memory_shared() {
    let dir = TempDir::new("cow-leave-running");
    let mut job = Job::start("prefork", &["64"], dir.path());
    let ready = job.ready();
    let tree: Vec<i32> = std::iter::once(job.pid).chain(field_list(&ready, "children").into_iter().map(|p| p as i32)).collect();
    let before = tree_memory(&tree);
    dump(job.pid, &dir.join("images"), &["--leave-running"]);
    let after = tree_memory(&tree);
    assert!(within(after.0, before.0, 10), "Pss total {} KiB after the dump, {} KiB before", after.0, before.0);
    job.expect_ok();
}
