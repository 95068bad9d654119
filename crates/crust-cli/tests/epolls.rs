//! epolls whose targets were closed at the fd they were added under (the
//! file lives on in a dup), or whose number another file took since.

mod common;

use common::job::{dump, restore, Job};
use common::procstate::ProcState;
use common::TempDir;

/// The epoll comes back watching both targets under their old numbers (its
/// fdinfo is the same), fd X is still the other eventfd, and both targets
/// report events through their dups; the workload checks it all.
#[test]
fn epoll_targets_closed_at_their_fd_come_back() {
    let dir = TempDir::new("epolls-moved");
    let mut job = Job::start("epollmoved", &[], dir.path());
    job.ready();
    let images = dir.join("images");
    let before = ProcState::of_tree(job.pid);
    dump(job.pid, &images, &[]);
    job.reap_original();
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
    job.expect_ok();
}
