//! Deleted files inside a container's mount namespace: a file on the
//! container's tmpfs and one on its root file system, each open then
//! unlinked, and a program run from a deleted copy (its executable mapped
//! and deleted), dumped with the container and restored with their contents
//! in the container's own mounts.
//!
//! Run: `cargo test -p crust-cli --test ns_ghost` (as root).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use common::container::{Container, Options};
use common::job::*;
use common::*;

/// The id of the mount `path` lies on (opened by the test: fdinfo's mnt_id).
fn mount_id(path: &str) -> String {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd())).expect("fdinfo");
    info.lines().find_map(|l| l.strip_prefix("mnt_id:")).expect("mnt_id").trim().to_string()
}

/// What the test compares of a deleted file the container holds through
/// `/proc/PID/WHAT` (an fd or the exe): its name, contents, and whether it
/// lies on the container's mount at `mount`.
fn deleted(pid: i32, what: &str, mount: &str) -> (String, String, bool) {
    let link = std::fs::read_link(format!("/proc/{pid}/{what}")).expect("the link").display().to_string();
    let data = std::fs::read(format!("/proc/{pid}/{what}")).expect("the contents");
    let text = if data.len() < 256 { String::from_utf8_lossy(&data).into_owned() } else { format!("{} bytes", data.len()) };
    let on = mount_id(&format!("/proc/{pid}/{what}")) == mount_id(&format!("/proc/{pid}/root{mount}"));
    (link, text, on)
}

/// "fd/N" of the fd of `pid` whose link is `link` (the shell numbers the
/// fds its redirections open as it likes).
fn fd_named(pid: i32, link: &str) -> String {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the fds");
    let fd = fds.flatten().find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == link)).unwrap_or_else(|| panic!("no fd of {pid} is {link}"));
    format!("fd/{}", fd.file_name().to_string_lossy())
}

/// The deleted copy of busybox a sleeper of the container runs: in its maps.
fn mapped_deleted(pid: i32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    maps.lines().filter(|l| l.contains("(deleted)")).map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" ")).collect()
}

#[test]
fn deleted_files_of_a_container_come_back_in_its_own_mounts() {
    let dir = TempDir::new("ns-ghost");
    let images = dir.join("images");
    // A file of the tmpfs /run and one of the root's /tmp held open; a
    // sleeper run from a copy of busybox in /tmp, then removed.
    let after = "echo tmpfs-data > /run/gone\nexec 7</run/gone\nrm /run/gone\n\
                 echo root-data > /tmp/gone\nexec 8</tmp/gone\nrm /tmp/gone\n\
                 mkdir /tmp/x\ncp /bin/busybox /tmp/x/busybox\n/tmp/x/busybox sleep 1000 </dev/null >/dev/null 2>&1 &\necho $! > /run/sleeper\nsleep 0.2\nrm /tmp/x/busybox";
    let mut c = Container::start("ghostbox", dir.path(), &Options { after_pivot: after, ..Default::default() });
    let pid = c.job.pid;
    let sleeper: i32 = std::fs::read_to_string(format!("/proc/{pid}/root/run/sleeper")).expect("the sleeper's pid").trim().parse().expect("a pid");
    let (tmpfs_fd, root_fd) = (fd_named(pid, "/run/gone (deleted)"), fd_named(pid, "/tmp/gone (deleted)"));
    let state = |pid: i32, sleeper: i32| {
        (deleted(pid, &tmpfs_fd, "/run"), deleted(pid, &root_fd, "/"), deleted(sleeper, "exe", "/"), mapped_deleted(sleeper))
    };
    let before = state(pid, sleeper);
    assert_eq!((before.0 .1.as_str(), before.1 .1.as_str()), ("tmpfs-data\n", "root-data\n"), "{before:?}");
    assert!(before.0 .2 && before.1 .2 && before.2 .2, "each file on its mount: {before:?}");
    assert!(!before.3.is_empty(), "the sleeper maps its deleted executable: {before:?}");
    dump(pid, &images, &["--ext-mount-map", "auto"]);
    c.job.reap_original();
    let last = c.last_count();
    let out = restore(&images, &[]);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    c.job.adopt_restored();
    c.assert_counts_on_from(last);
    let after = state(pid, sleeper);
    // The kernel names a file made without a name DIR/#INODE: the
    // directory, the contents and the mount are the same.
    let dir_of = |l: &str| Path::new(l).parent().map(|p| p.display().to_string());
    for (b, a) in [(&before.0, &after.0), (&before.1, &after.1), (&before.2, &after.2)] {
        assert_eq!((dir_of(&a.0), &a.1, a.2), (dir_of(&b.0), &b.1, b.2), "a deleted file comes back in its directory, with its contents, on its mount: {a:?} was {b:?}");
        assert!(a.0.ends_with(" (deleted)"), "still deleted: {a:?}");
    }
    assert_eq!(after.3.len(), before.3.len(), "the sleeper maps its deleted executable as before: {after:?} was {before:?}");
    c.job.kill_restored();
}
