//! fanotify groups: their init flags and marks (on an inode, a mount, a whole
//! file system, with masks and ignored masks) come back and still report
//! events; a group with events not read yet is refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::job::{dump, restore, Job};
use common::procstate::ProcState;
use common::{assert_clean_failure, crust, dump_args, TempDir};

/// A tmpfs mounted for one test (nothing else makes events on it), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn at(path: PathBuf) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "crust-test"]).arg(&path).status().expect("mount");
        assert!(ok.success(), "mount -t tmpfs {}", path.display());
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn dump_and_restore(job: &mut Job, images: &Path) {
    let before = ProcState::of_tree(job.pid);
    dump(job.pid, images, &[]);
    job.reap_original();
    let out = restore(images, &[]);
    assert!(out.status.success(), "restore from {} failed: {}", images.display(), String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
}

/// Two groups (one non-blocking with an inode mark, a mount mark and an
/// inode mark ignoring opens; one reporting file ids with a file-system
/// mark) come back with the same fdinfo, and their marks report the next
/// events (the workload checks). Then a group with an event queued is refused.
#[test]
fn fanotify_marks_come_back_and_report_events() {
    let dir = TempDir::new("fanotify");
    let mnt = Tmpfs::at(dir.join("mnt"));
    let mut job = Job::start("fanotify", &[mnt.0.to_str().unwrap()], dir.path());
    job.ready();
    let images = dir.join("images");
    dump_and_restore(&mut job, &images);
    let files = common::crit_show(&images.join("files.img"));
    let mut types: Vec<String> = files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("ffy"))
        .flat_map(|f| f["mark"].as_array().unwrap().iter().map(|m| m["type"].to_string()))
        .collect();
    types.sort();
    assert_eq!(types.len(), 4, "marks as crit reads them: {types:?}");
    job.expect_ok();

    let case = dir.join("queued");
    std::fs::create_dir(&case).unwrap();
    let mnt2 = Tmpfs::at(dir.join("mnt2"));
    let mut job = Job::start("fanotify", &[mnt2.0.to_str().unwrap()], &case);
    job.ready();
    std::fs::File::open(mnt2.0.join("c")).unwrap();
    std::fs::File::create(mnt2.0.join("x")).unwrap();
    let before = ProcState::of_tree(job.pid);
    let out = crust(&dump_args(&job.pid.to_string(), &case.join("images"), &[]), common::job::STEP);
    let err = assert_clean_failure(&out, "dump of a fanotify group with an event queued");
    assert!(err.contains("anon_inode:[fanotify]): a fanotify group with") && err.contains("bytes of events not read yet is not supported"), "{err}");
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
}
