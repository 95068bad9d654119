//! Named FIFOs: dumped as CRIU stores them (a FIFO entry naming a regular-file
//! entry with the path and flags, the queued bytes in fifo-data.img), reopened
//! on their paths by a restore with their flags and bytes, left as they were
//! by a --leave-running dump, and refused before anything is made when the
//! path is gone or no longer a FIFO. The workload `fifos` checks itself.
//!
//! Run as root: `cargo test -p crust-cli --test fifo`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use common::procstate::ProcState;
use common::job::{dump, ready_field, restore, Job};
use common::{crit_decode_dir, entries, flag_names, num, TempDir};

/// Bytes fifos queues in fifo1, and how it makes them.
const BIG: usize = 100_000;
fn pattern(i: usize) -> u8 {
    (i * 13 + i / 257) as u8
}

/// fifos on DIR; the job and its child's pid.
fn start(dir: &TempDir) -> (Job, i32) {
    let mut job = Job::start("fifos", &[dir.path().to_str().unwrap()], dir.path());
    let child = ready_field(&job.ready(), "child");
    (job, child)
}

fn restore_ok(job: &mut Job, images: &Path) {
    let out = restore(images, &[]);
    assert!(out.status.success(), "restore from {} failed: {}", images.display(), String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
}

fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn named_fifos_come_back_on_their_paths_with_their_flags_and_queued_bytes() {
    let dir = TempDir::new("fifo-restore");
    let (mut job, child) = start(&dir);
    let (fifo1, fifo2) = (dir.join("fifo1"), dir.join("fifo2"));
    let ino = |p: &PathBuf| std::fs::metadata(p).unwrap().ino();
    let (ino1, ino2) = (ino(&fifo1), ino(&fifo2));
    let images = dir.join("images");
    let before = ProcState::of_tree(job.pid);
    dump(job.pid, &images, &[]);
    job.reap_original();

    // Every image decodes; each FIFO fd is a FIFO entry naming a REG entry
    // with its path and flags.
    let imgs = crit_decode_dir(&images);
    let files = entries(&imgs, "files.img");
    let by_id: BTreeMap<u64, &Value> = files.iter().map(|e| (num(&e["id"]), e)).collect();
    let mut fifos: Vec<(String, Vec<String>, u64)> = files
        .iter()
        .filter(|e| e["type"] == "FIFO")
        .map(|e| {
            let f = &e["fifo"];
            assert_eq!(num(&f["id"]), num(&e["id"]), "{e}");
            let regf = by_id.get(&num(&f["regf_id"])).unwrap_or_else(|| panic!("no regf entry for {e}"));
            assert_eq!(regf["type"], "REG", "{regf}");
            let reg = &regf["reg"];
            let flags = flag_names(&reg["flags"]).into_iter().filter(|f| f != "O_LARGEFILE").collect();
            (reg["name"].as_str().unwrap().to_string(), flags, num(&f["pipe_id"]))
        })
        .collect();
    fifos.sort();
    let (p1, p2) = (fifo1.to_str().unwrap().to_string(), fifo2.to_str().unwrap().to_string());
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        fifos,
        [
            (p1.clone(), names(&["O_NONBLOCK"]), ino1),
            (p1, names(&["O_WRONLY"]), ino1),
            (p2.clone(), names(&["O_RDWR"]), ino2),
            (p2, names(&["O_WRONLY"]), ino2),
        ],
        "FIFO entries (path, flags, pipe_id)"
    );
    let fd_types: Vec<u64> = entries(&imgs, "fdinfo-1.img")
        .iter()
        .filter(|f| f["type"] == "FIFO")
        .map(|f| num(&f["fd"]))
        .collect();
    assert_eq!(fd_types, [3, 4, 5], "the parent's FIFO fds");

    // The queued bytes, once per FIFO.
    let data = entries(&imgs, "fifo-data.img");
    let heads: Vec<(u64, u64, u64)> = data.iter().map(|d| (num(&d["pipe_id"]), num(&d["bytes"]), num(&d["size"]))).collect();
    assert_eq!(heads, [(ino1, BIG as u64, 128 * 1024), (ino2, 9, 65536)], "fifo-data.img entries");
    assert_eq!(data[1]["extra"].as_str().map(str::trim), Some("cncgcXVldWVk"), "\"rw queued\" in base64");
    // The bytes behind each entry, read from the image itself.
    let raw = std::fs::read(images.join("fifo-data.img")).unwrap();
    let mut at = 8;
    let mut payloads = Vec::new();
    for (_, bytes, _) in &heads {
        let len = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
        payloads.push(&raw[at..at + *bytes as usize]);
        at += *bytes as usize;
    }
    assert_eq!(at, raw.len(), "nothing after the last entry's bytes");
    assert!(payloads[0].iter().enumerate().all(|(i, b)| *b == pattern(i)), "fifo1's bytes in fifo-data.img");
    assert_eq!(payloads[1], b"rw queued");

    restore_ok(&mut job, &images);
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
    assert_eq!(common::proc_stat(child).map(|s| s.ppid), Some(job.pid), "the child is back, its parent's child");
    // The workload checks paths, flags, buffer size, every byte and new bytes.
    job.expect_ok();
}

#[test]
fn a_leave_running_dump_leaves_named_fifos_and_their_bytes_in_place() {
    let dir = TempDir::new("fifo-live");
    let (mut job, _child) = start(&dir);
    let images = dir.join("images");
    let before = ProcState::of_tree(job.pid);
    dump(job.pid, &images, &["-R"]);
    before.assert_same(&ProcState::of_tree(job.pid), &[]);
    let imgs = crit_decode_dir(&images);
    let bytes: Vec<u64> = entries(&imgs, "fifo-data.img").iter().map(|d| num(&d["bytes"])).collect();
    assert_eq!(bytes, [BIG as u64, 9], "the bytes were saved");
    // ... and are still there: the workload reads every one of them.
    job.expect_ok();
}

#[test]
fn a_restore_whose_fifo_is_gone_or_no_longer_a_fifo_is_refused_and_leaves_nothing() {
    let dir = TempDir::new("fifo-refused");
    let (mut job, child) = start(&dir);
    let images = dir.join("images");
    dump(job.pid, &images, &[]);
    job.reap_original();
    let fifo1 = dir.join("fifo1");
    let path = fifo1.to_str().unwrap();

    std::fs::remove_file(&fifo1).unwrap();
    let err = job.assert_restore_failed(&restore(&images, &[]), "restore with a FIFO removed");
    assert!(err.contains(path) && err.contains("missing"), "message: {err}");
    assert!(gone(job.pid) && gone(child), "nothing may be left after a refused restore");

    std::fs::write(&fifo1, b"").unwrap();
    let err = job.assert_restore_failed(&restore(&images, &[]), "restore with a regular file in place of a FIFO");
    assert!(err.contains(path) && err.contains("no longer"), "message: {err}");
    assert!(gone(job.pid) && gone(child), "nothing may be left after a refused restore");

    // A FIFO there again: the restore goes through, the bytes come from the images.
    std::fs::remove_file(&fifo1).unwrap();
    nix::unistd::mkfifo(&fifo1, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    restore_ok(&mut job, &images);
    job.expect_ok();
}
