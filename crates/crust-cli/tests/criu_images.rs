//! Images both ways between crust and criu, on test_mm (two threads
//! counting).
//!
//! - crust's images hold every field criu requires: each entry of each image
//!   is decoded with criu's own message definitions (pycriu, from Debian's
//!   criu 3.17.1) and checked for missing `required` fields, which criu's
//!   protobuf-c decoder refuses ("Image corruption").
//! - crust reads images as criu writes them: without crust's notes beside
//!   them and with the task's ids only in ids-PID.img, not in the core.
//! - With the real criu, where it runs: criu restores crust's dump and crust
//!   restores criu's. Debian's criu 3.17.1 cannot start on this machine's
//!   kernel (6.18: "vdso: Unexpected rt vDSO area bounds", as `criu check`
//!   says), so these parts report that and check what they can.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::job::{counters, dump, restore, Job, STEP};
use common::{run_with_timeout, TempDir, CRIT};

/// The interpreter `crit` runs with (its #! line), which can import pycriu.
fn crit_python() -> PathBuf {
    let crit = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(CRIT)).find(|c| c.is_file()))
        .expect("crit in PATH");
    let text = std::fs::read_to_string(&crit).expect("reading crit");
    let line = text.lines().next().unwrap_or_default();
    PathBuf::from(line.strip_prefix("#!").unwrap_or("python3").split_whitespace().next().unwrap_or("python3"))
}

/// Decodes every image of a directory with pycriu and prints, one a line,
/// each message missing a field criu's definitions require.
const REQUIRED_FIELDS: &str = r#"
import os, sys
from pycriu import images
from pycriu.images import pb2dict
missing = []
decode = pb2dict.pb2dict
def checked(pb, pretty=False, is_hex=False):
    for f in pb.FindInitializationErrors():
        missing.append("%s: %s.%s" % (name, type(pb).__name__, f))
    return decode(pb, pretty, is_hex)
pb2dict.pb2dict = checked
d = sys.argv[1]
for name in sorted(os.listdir(d)):
    if name.startswith("pages-") or not (name.endswith(".img") or name.startswith("stats-")):
        continue
    with open(os.path.join(d, name), "rb") as f:
        images.load(f)
print("\n".join(missing))
"#;

/// Rewrites crust's images in DIR into criu's shape: criu writes no notes
/// of crust's, and keeps a task's ids in ids-PID.img only.
const CRIU_SHAPE: &str = r#"
import os, sys
from pycriu import images
d = sys.argv[1]
for name in ("crust-meta.json", "crust-digests.json"):
    if os.path.exists(os.path.join(d, name)):
        os.remove(os.path.join(d, name))
for name in os.listdir(d):
    if name.startswith("core-"):
        path = os.path.join(d, name)
        with open(path, "rb") as f:
            img = images.load(f)
        img["entries"][0].pop("ids", None)
        with open(path, "wb") as f:
            images.dump(img, f)
"#;

fn python(script: &str, dir: &Path) -> String {
    let out = run_with_timeout(Command::new(crit_python()).arg("-c").arg(script).arg(dir), STEP);
    assert!(out.status.success(), "pycriu script on {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Why the installed criu cannot run here, if it cannot.
fn criu_broken_here() -> Option<String> {
    let out = run_with_timeout(Command::new("criu").arg("check"), STEP);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (!out.status.success() && said.contains("kerndat")).then(|| said.lines().filter(|l| l.contains("Error")).collect::<Vec<_>>().join("; "))
}

fn test_mm(dir: &Path) -> Job {
    let mut job = Job::start("test_mm", &[], dir);
    job.ready();
    for _ in 0..4 {
        job.line(STEP);
    }
    job
}

#[test]
fn crust_images_hold_every_field_criu_requires() {
    let tmp = TempDir::new("criu-required");
    let images = tmp.join("images");
    let mut job = test_mm(tmp.path());
    dump(job.pid, &images, &["--leave-running"]);
    let missing = python(REQUIRED_FIELDS, &images);
    assert_eq!(missing, "", "fields criu requires are missing from crust's images");

    // The check sees a missing field: ids without its required files_id.
    let bad = tmp.join("bad");
    std::fs::create_dir(&bad).unwrap();
    let mut ids = Vec::new();
    for word in [0x5456_4319u32, 0x5443_2030, 2] {
        ids.extend_from_slice(&word.to_le_bytes());
    }
    ids.extend_from_slice(&[0x08, 0x01]);
    std::fs::write(bad.join("ids-1.img"), ids).unwrap();
    let missing = python(REQUIRED_FIELDS, &bad);
    assert!(missing.contains("task_kobj_ids_entry.files_id"), "the check must see missing fields: {missing:?}");

    // criu 3.17.1 itself, where it runs, restores them.
    if let Some(why) = criu_broken_here() {
        eprintln!("criu cannot run on this kernel, so it did not restore crust's images: {why}");
        job.expect_ok();
        return;
    }
    let last = {
        let out = common::crust(&common::dump_args(&job.pid.to_string(), &tmp.join("kill"), &[]), STEP);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        job.reap_original();
        job.drain();
        counters(&job.history)
    };
    let out = run_with_timeout(
        Command::new("criu").args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(tmp.join("kill")),
        STEP,
    );
    assert!(out.status.success(), "criu restore of crust's images: see {}", tmp.join("kill/restore.log").display());
    job.adopt_restored();
    job.assert_counts_on_from(&last);
    job.expect_ok();
}

#[test]
fn crust_restores_images_in_criu_shape() {
    let tmp = TempDir::new("criu-shape");
    let images = tmp.join("images");
    let mut job = test_mm(tmp.path());

    // criu's own dump, where criu runs; else crust's, rewritten as criu writes.
    let from_criu = criu_broken_here().is_none();
    if from_criu {
        let out = run_with_timeout(
            Command::new("criu").args(["dump", "-v4", "-o", "dump.log", "-t", &job.pid.to_string(), "-D"]).arg(&images),
            STEP,
        );
        assert!(out.status.success(), "criu dump: see {}", images.join("dump.log").display());
    } else {
        eprintln!("criu cannot run on this kernel: crust's images rewritten in criu's shape stand for criu's");
        dump(job.pid, &images, &[]);
        python(CRIU_SHAPE, &images);
        let core = common::crit_show(&images.join(format!("core-{}.img", job.pid)));
        assert!(core["entries"][0].get("ids").is_none(), "the leader's core has no ids, as criu writes it");
    }
    job.reap_original();
    job.drain();
    let last = counters(&job.history);
    let out = restore(&images, &[]);
    assert!(out.status.success(), "crust restore of criu's images failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    job.assert_counts_on_from(&last);
    job.expect_ok();
}
