//! Mount namespaces: a container's mount tree (its root, proc, devpts, tmpfs
//! with their contents, binds of host directories, one through Debian 12's
//! /lib symlink) dumped and made again; refusals leave it running; a failed
//! restore leaves no mount on the host.
//!
//! Run: `cargo test -p crust-cli --test ns_mnt` (as root).

mod common;

use std::path::Path;

use common::container::{mounts, tree_listing, Container, Options};
use common::job::*;
use common::*;

fn restore_ok(c: &mut Container, dir: &Path, extra: &[&str]) {
    let out = restore(dir, extra);
    assert!(out.status.success(), "restore from {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    c.job.adopt_restored();
}

fn host_mounts() -> Vec<String> {
    mounts(std::process::id() as i32)
}

/// The state compared before and after: the mounts, and the tmpfs's files.
fn state(pid: i32) -> (Vec<String>, Vec<String>) {
    (mounts(pid), tree_listing(Path::new(&format!("/proc/{pid}/root/run"))))
}

/// What a tar of whole seconds and no extended attributes would lose: the
/// modification time to the nanosecond and the attribute `user.crust_test`
/// of the tmpfs file or directory `rel` of process `pid`'s /run.
fn fine_state(pid: i32, rel: &str) -> (i64, i64, Option<Vec<u8>>) {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/{pid}/root/run/{rel}");
    let m = std::fs::symlink_metadata(&path).expect("lstat");
    let c = std::ffi::CString::new(path).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: nul-terminated strings and a buffer of its length.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), c"user.crust_test".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (m.mtime(), m.mtime_nsec(), (n >= 0).then(|| buf[..n as usize].to_vec()))
}

/// Give `rel` (as [`fine_state`]) the attribute and 2001-02-03 04:05:06.123456789 UTC.
fn set_fine_state(pid: i32, rel: &str, value: &[u8]) {
    let c = std::ffi::CString::new(format!("/proc/{pid}/root/run/{rel}")).unwrap();
    // SAFETY: nul-terminated strings and a value of its length.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), c"user.crust_test".as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr on {rel}: {}", std::io::Error::last_os_error());
    let t = libc::timespec { tv_sec: 981173106, tv_nsec: 123456789 };
    // SAFETY: as above, and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "utimensat on {rel}: {}", std::io::Error::last_os_error());
}

#[test]
fn a_containers_mount_tree_comes_back_with_its_tmpfs_contents_and_counts_on() {
    let dir = TempDir::new("ns-mnt");
    let images = dir.join("images");
    let host = host_mounts();
    // /run shared, with a bind of a directory of it as its peer, and a
    // slave of that group: propagation and binds inside the tree.
    // A file given (below) a time to the nanosecond and an extended
    // attribute, as its directory: the tmpfs is saved whole.
    let setup = "echo nano > $R/run/sub/nano\nmount --make-shared $R/run\nmkdir -p $R/tmp/peer $R/tmp/slave\nmount --bind $R/run/sub $R/tmp/peer\nmount --bind $R/run $R/tmp/slave\nmount --make-slave $R/tmp/slave";
    let mut c = Container::start("box", dir.path(), &Options { extra_setup: setup, ..Default::default() });
    set_fine_state(c.job.pid, "sub/nano", b"on a file");
    set_fine_state(c.job.pid, "sub", b"on a directory");
    let fine_before: Vec<_> = ["sub/nano", "sub"].map(|rel| fine_state(c.job.pid, rel)).into();
    assert_eq!(fine_before[0], (981173106, 123456789, Some(b"on a file".to_vec())), "set up as meant");
    let (mounts_before, files_before) = state(c.job.pid);
    assert!(mounts_before.iter().any(|m| m.contains("/usr/lib on /lib")), "the /lib bind shows usr/lib: {mounts_before:#?}");
    assert!(mounts_before.iter().any(|m| m.starts_with("/sub on /tmp/peer") && m.contains("[shared]")), "a peer: {mounts_before:#?}");
    assert!(mounts_before.iter().any(|m| m.starts_with("/ on /tmp/slave") && m.contains("[master]")), "a slave: {mounts_before:#?}");
    dump(c.job.pid, &images, &["--ext-mount-map", "auto"]);
    c.job.reap_original();
    let last = c.last_count();
    for img in ["mountpoints-", "tmpfs-dev-"] {
        assert!(std::fs::read_dir(&images).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(img)), "an image {img}*");
    }
    let shown = crit_show(&std::fs::read_dir(&images).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().contains("mountpoints-")).unwrap());
    assert_eq!(shown["entries"].as_array().map(Vec::len), Some(mounts_before.len()), "crit reads every mount: {shown}");
    restore_ok(&mut c, &images, &[]);
    c.assert_counts_on_from(last);
    let (mounts_after, files_after) = state(c.job.pid);
    assert_eq!(mounts_after, mounts_before, "the same mounts inside");
    assert_eq!(files_after, files_before, "the same tmpfs contents");
    let fine_after: Vec<_> = ["sub/nano", "sub"].map(|rel| fine_state(c.job.pid, rel)).into();
    assert_eq!(fine_after, fine_before, "times to the nanosecond and extended attributes come back");
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/root/run/sub/f", c.job.pid)).unwrap(), "hello\n");
    assert_eq!(host_mounts(), host, "the host's mounts are untouched");
    // Dumped again, as restored.
    let again = dir.join("again");
    dump(c.job.pid, &again, &["--ext-mount-map", "auto"]);
    c.job.reap_original();
    let last = c.last_count();
    restore_ok(&mut c, &again, &[]);
    c.assert_counts_on_from(last);
    assert_eq!(state(c.job.pid).0, mounts_before);
    c.job.kill_restored();
    assert_eq!(host_mounts(), host, "the host's mounts are untouched");
}

#[test]
fn root_and_external_mounts_are_given_at_restore_and_check_names_what_is_missing() {
    let dir = TempDir::new("ns-mnt-root");
    let images = dir.join("images");
    let mut c = Container::start("copy", dir.path(), &Options::default());
    let (mounts_before, files_before) = state(c.job.pid);
    // /data recorded under a key of ours, /lib found by itself.
    dump(c.job.pid, &images, &["--ext-mount-map", "/data:datakey", "--ext-mount-map", "auto"]);
    c.job.reap_original();
    let last = c.last_count();
    let copy = dir.join("copy-root-2");
    let cp = std::process::Command::new("cp").arg("-a").arg(&c.root).arg(&copy).status().expect("cp");
    assert!(cp.success());
    // Without the key's path, and with a root that is not there: both said.
    let missing = dir.join("no-such-root");
    let out = crust(&[os("check"), os("--images"), images.as_os_str(), os("--root"), missing.as_os_str()], STEP);
    let err = assert_clean_failure(&out, "check without the external mount's path");
    assert!(err.contains("datakey") && err.contains("no-such-root"), "check names both: {err}");
    let out = restore(&images, &["--root", missing.to_str().unwrap()]);
    c.job.assert_restore_failed(&out, "restore without the root");
    // The copy as root, the key through criu's --external.
    let external = format!("mnt[datakey]:{}", dir.path().display());
    let out = crust(&[os("check"), os("--images"), images.as_os_str(), os("--root"), copy.as_os_str(), os("--external"), os(&external)], STEP);
    assert!(out.status.success(), "check with both: {}", String::from_utf8_lossy(&out.stderr));
    restore_ok(&mut c, &images, &["--root", copy.to_str().unwrap(), "--external", &external]);
    c.assert_counts_on_from(last);
    let (mounts_after, files_after) = state(c.job.pid);
    let want: Vec<String> = mounts_before.iter().map(|m| m.replace(&format!("{} on /", c.root.display()), &format!("{} on /", copy.display()))).collect();
    assert_eq!(mounts_after, want, "the same mounts, the root from the copy");
    assert_eq!(files_after, files_before);
    c.job.kill_restored();
}

#[test]
fn a_file_system_mounted_inside_is_refused_by_name_and_the_container_runs_on() {
    let dir = TempDir::new("ns-mnt-refused");
    let images = dir.join("images");
    let opts = Options { extra_setup: "mkdir -p $R/tmp/ram\nmount -t ramfs ramfs $R/tmp/ram", ..Default::default() };
    let mut c = Container::start("ram", dir.path(), &opts);
    let out = crust(&dump_args(&c.job.pid.to_string(), &images, &["--ext-mount-map", "auto"]), STEP);
    let err = assert_clean_failure(&out, "dump of a container with a ramfs inside");
    assert!(err.contains("/tmp/ram") && err.contains("ramfs"), "the refusal names the mount and its type: {err}");
    assert_no_inventory(&images);
    let last = c.last_count();
    let next = c.job.line(STEP);
    assert!(next.parse::<u64>().unwrap() > last, "it counts on: {next}");
    // A bind of a host directory not named external is refused too.
    let plain = dir.join("plain");
    let out = crust(&dump_args(&c.job.pid.to_string(), &plain, &[]), STEP);
    let err = assert_clean_failure(&out, "dump without --ext-mount-map");
    assert!(err.contains("--ext-mount-map"), "the refusal says what to give: {err}");
    c.job.line(STEP);
}

#[test]
fn a_socket_file_in_a_tmpfs_no_socket_of_the_tree_is_bound_to_is_refused_by_path() {
    let dir = TempDir::new("ns-mnt-sockfile");
    let images = dir.join("images");
    let mut c = Container::start("sockfile", dir.path(), &Options::default());
    // Bound by a socket of the test's (outside the tree), then left behind
    // as it closes: the restore would make neither again.
    let file = format!("/proc/{}/root/run/sub/stray.sock", c.job.pid);
    let listener = std::os::unix::net::UnixListener::bind(&file).expect("bind in the container's tmpfs");
    let refused = |c: &mut Container, what: &str| {
        let out = crust(&dump_args(&c.job.pid.to_string(), &images, &["--ext-mount-map", "auto"]), STEP);
        let err = assert_clean_failure(&out, what);
        assert!(err.contains("/sub/stray.sock") && err.contains("tmpfs at /run"), "the refusal names the file and the tmpfs: {err}");
        assert_no_inventory(&images);
        let last = c.last_count();
        let next = c.job.line(STEP);
        assert!(next.parse::<u64>().unwrap() > last, "it counts on: {next}");
    };
    refused(&mut c, "dump with a socket file of a socket outside the tree in its tmpfs");
    drop(listener);
    refused(&mut c, "dump with a socket file left behind in its tmpfs");
    // Gone, the dump goes through.
    std::fs::remove_file(&file).unwrap();
    dump(c.job.pid, &images, &["--ext-mount-map", "auto"]);
    c.job.reap_original();
}

#[test]
fn a_failed_restore_leaves_no_mount_behind() {
    let dir = TempDir::new("ns-mnt-fail");
    let images = dir.join("images");
    let host = host_mounts();
    let mut c = Container::start("fail", dir.path(), &Options::default());
    dump(c.job.pid, &images, &["--ext-mount-map", "/data:datakey", "--ext-mount-map", "auto"]);
    c.job.reap_original();
    // A file where the directory /data was: check sees it there, the mount
    // fails once the tree is half made.
    let file = dir.join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = restore(&images, &["--ext-mount-map", &format!("datakey:{}", file.display())]);
    let err = c.job.assert_restore_failed(&out, "restore with a file for a directory mount");
    assert!(err.contains("/data"), "the error names the mount: {err}");
    assert_eq!(host_mounts(), host, "no mount is left on the host");
}
