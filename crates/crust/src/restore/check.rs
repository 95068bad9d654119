//! "Will this restore here?": every check a restore makes before it creates a
//! task, run together so that all problems are reported at once. `crust check
//! --images DIR` runs them alone; a migration runs them on the destination.

use std::time::{Duration, Instant};

use crate::cgroups::Placement;
use crate::images::meta::{DumpMeta, FileStamp, META};
use crate::error::{Error, Result};
use crate::files;
use crate::mem;
use crate::restore::layout;
use crate::state;
use crate::images::load::DumpImage;
use crate::restore::RestoreOptions;

/// Everything about this host that stands in the way of restoring `img`.
pub fn problems(img: &DumpImage, opts: &RestoreOptions) -> Vec<String> {
    let mut out = Vec::new();
    let meta: Option<DumpMeta> = std::fs::read(img.dir.join(META)).ok().and_then(|t| serde_json::from_slice(&t).ok());

    // Files: present, and those only read unchanged since the dump.
    // Deleted files come with the images.
    out.extend(crate::ns::problems(img, &opts.ns));
    out.extend(crate::ns::net::problems(img, &opts.net));
    out.extend(files::problems(img));
    out.extend(files::tcp::problems(img, opts.tcp));
    out.extend(inherit_problems(img, opts));
    out.extend(crate::ns::join::problems(img, &crate::ns::join::given(img, &opts.ns.join_ns, &opts.inherit_fds)));
    for (path, then) in meta.iter().flat_map(|m| m.files.iter()) {
        if let Some(now) = crate::ns::restore_view(img, path).and_then(|at| FileStamp::of(&at)) {
            if then.ino != 0 && (now.dev, now.ino) != (then.dev, then.ino) && !crate::ns::moved(img, path) {
                out.push(format!("{path}: it was replaced since the dump (inode {} then, {} now)", then.ino, now.ino));
            } else if now.size == then.size && now.mtime_ns != then.mtime_ns {
                out.push(format!("{path}: it was modified since the dump (same size, other modification time)"));
            }
        }
    }
    for (path, &rdev) in meta.iter().flat_map(|m| m.devices.iter()) {
        if let Some(at) = crate::ns::restore_view(img, path) {
            out.extend(files::reg::check_device(&at, rdev).err().map(|e| e.replace(&at, path)));
        }
    }
    out.sort();
    out.dedup();

    // Sessions.
    let root = &img.processes[0].pstree;
    let in_tree = |pid: u32| img.processes.iter().any(|p| p.pstree.pid == pid);
    if !opts.shell_job && !in_tree(root.sid) {
        out.push(format!(
            "the dumped tree was a shell job (its session leader {} was not dumped); restore it with --shell-job",
            root.sid
        ));
    }
    for p in &img.processes[1..] {
        let parent = img.processes.iter().find(|q| q.pstree.pid == p.pstree.ppid);
        if p.pstree.sid != p.pstree.pid && parent.is_some_and(|q| p.pstree.sid != q.pstree.sid) {
            out.push(format!(
                "process {} is in session {}, apart from its parent's: such trees are not supported yet",
                p.pstree.pid, p.pstree.sid
            ));
        }
    }

    // The vdso and the CPU.
    match mem::read_layout(std::process::id() as i32) {
        Ok(here) => {
            for p in img.processes.iter().filter(|p| p.zombie.is_none()) {
                if let Err(e) = layout::check_vdso(&p.mm, &here, &format!("mm-{}.img", p.pid())) {
                    out.push(e.to_string());
                }
            }
        }
        Err(e) => out.push(format!("cannot read this host's memory layout: {e}")),
    }
    // The CPU, users and groups: what each kind of state needs here.
    out.extend(state::problems(img));

    // Cgroups in the chosen mode.
    if let Some(entry) = &img.cgroups {
        out.extend(Placement::check(entry, opts.manage_cgroups, &opts.cgroup_roots));
    }

    // Pids.
    for id in taken_pids(img) {
        out.push(format!("pid {id} is taken by {}", describe_holder(id)));
    }
    out
}

/// The image's pids and tids that a process of this host holds. In a pid
/// namespace of the tree's own, made new by the restore, every pid is free.
fn taken_pids(img: &DumpImage) -> Vec<u32> {
    let max = procfs::sys::kernel::pid_max().map_or(u32::MAX, |m| m as u32);
    let own_pid_ns = crate::ns::recorded(img).0.contains("pid");
    img.processes
        .iter()
        .flat_map(|p| p.pstree.threads.iter().copied())
        .filter(|&id| id >= max || (!own_pid_ns && std::path::Path::new(&format!("/proc/{id}")).exists()))
        .collect()
}

/// Every pid and tid of the image must be free. A pid whose process was just
/// killed is released once it is reaped, which can take a moment here.
pub fn wait_for_pids(img: &DumpImage, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let Some(&id) = taken_pids(img).first() else { return Ok(()) };
        if Instant::now() >= deadline {
            return Err(Error::Invalid(format!("pid {id} is taken by {}; nothing was restored", describe_holder(id))));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn describe_holder(id: u32) -> String {
    let Ok(status) = procfs::process::Process::new(id as i32).and_then(|p| p.status()) else {
        return "nothing (it is beyond this host's pid_max)".to_string();
    };
    let tgid = status.tgid;
    let what = if tgid == id as i32 { format!("process {id}") } else { format!("thread {id} of process {tgid}") };
    format!("{what} ({}, state {})", status.name, status.state)
}

/// Each file the tree shared with processes outside it at dump must be
/// given (`--inherit-fd fd[N]:KEY`), by an fd crust has open: else the tree
/// would get a new file those processes know nothing of.
fn inherit_problems(img: &DumpImage, opts: &RestoreOptions) -> Vec<String> {
    let mut out = Vec::new();
    let external = img.extras.get::<files::ExternalFiles>().map(|e| e.0.clone()).unwrap_or_default();
    for key in &external {
        if !opts.inherit_fds.contains_key(key) {
            out.push(format!("{key} was shared with processes outside the tree at dump: give the tree one of yours with --inherit-fd fd[N]:{key}"));
        }
    }
    let namespaces = crate::ns::join::recorded(img);
    for (key, fd) in &opts.inherit_fds {
        // A pipe the dump did not find shared is left unused, as criu
        // does (runc gives its stdio pipes either way); any other key must
        // name an external namespace of the images.
        if files::parse_external(key).is_err() && !namespaces.0.values().any(|k| k == key) {
            out.push(format!("--inherit-fd fd[{fd}]:{key}: nothing in the images is external by that key (crust takes pipes and namespaces this way)"));
        }
        // SAFETY: F_GETFD only asks whether the fd is open.
        if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
            out.push(format!("--inherit-fd fd[{fd}]:{key}: fd {fd} is not open in crust"));
        }
    }
    out
}
