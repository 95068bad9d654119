//! A minimal container made by a test: a busybox-static root file system in
//! the test's temp dir, entered with unshare (a mount namespace, and the other
//! namespaces the caller asks for) and pivot_root, with proc, a tmpfs /dev
//! (a null node and a devpts of its own), a tmpfs /run with a few files of
//! every kind, the test's temp dir bound at /data, and the host's /lib (a
//! symlink to usr/lib on Debian 12) bound at /lib. Its workload is a busybox
//! shell counting: each number goes to /run/count and, as a line, to
//! /data/NAME.out, which the [`Job`] reads. It waits between numbers in a
//! read of /run/fifo with a timeout, not in a sleep child: the tree's
//! processes stay the same, for the comparison of /proc.
//!
//! The container's root process is the unshare process itself (unshare
//! execs the shell without forking), so the tree to dump is `job.pid`;
//! with a pid namespace of its own ([`Options::pid_ns`]) it is unshare's
//! child, the namespace's init, a session leader as container engines make
//! it ([`Container::init`]), and restored copies of it get host pids of
//! their own ([`Copy`]).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::job::{Job, STEP};

/// The host's busybox-static (scripts/setup installs it).
pub const BUSYBOX: &str = "/bin/busybox";

pub struct Container {
    /// unshare, and with it (without a pid namespace) the container.
    pub job: Job,
    /// The container's root process by host pid: `job.pid`, or its child,
    /// the pid namespace's init.
    pub init: i32,
    /// Its root directory on the host.
    pub root: PathBuf,
}

/// What a container gets besides its mount namespace.
#[derive(Default)]
pub struct Options<'a> {
    /// unshare's options for more namespaces ("--uts", "--ipc", "--net").
    pub unshare: &'a [&'a str],
    /// Shell lines run in the container's mount namespace before the
    /// pivot_root, with $R its root directory (more mounts).
    pub extra_setup: &'a str,
    /// Shell lines run inside the container once its root is switched,
    /// before the counter starts (more processes of the tree).
    pub after_pivot: &'a str,
    /// A command the counting shell is exec'd through (setpriv ...).
    pub exec_prefix: &'a str,
    /// A pid namespace of its own: the setup runs as its init.
    pub pid_ns: bool,
}

/// A busybox root file system at `root`.
pub fn make_root(root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "run", "data", "lib", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap_or_else(|e| panic!("mkdir {}/{d}: {e}", root.display()));
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copying busybox (scripts/setup installs busybox-static)");
    for applet in ["sh", "sleep", "cat", "echo", "ls"] {
        symlink("busybox", root.join("bin").join(applet)).expect("an applet link");
    }
}

/// How to start a container named `name` under `dir` (its root at
/// dir/NAME-root, made here; its counts written to dir/NAME.out by the
/// shell inside): the program and its arguments, and the root.
pub fn command(name: &str, dir: &Path, opts: &Options) -> (PathBuf, Vec<String>, PathBuf) {
    let root = dir.join(format!("{name}-root"));
    make_root(&root);
    let script = dir.join(format!("{name}-setup.sh"));
    let out = format!("/data/{name}.out");
    let text = format!(
        r#"set -e
R={root}
mount --bind $R $R
mount -t proc proc $R/proc
mount -t tmpfs -o size=1m,mode=755 tmpfs $R/dev
mknod -m 666 $R/dev/null c 1 3
mkdir $R/dev/pts
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o size=2m,mode=1777 tmpfs $R/run
mkdir $R/run/sub
echo hello > $R/run/sub/f
chmod 640 $R/run/sub/f
chown 1000:1000 $R/run/sub/f
ln -s sub/f $R/run/link
ln $R/run/sub/f $R/run/hard
mkfifo $R/run/fifo
mknod -m 600 $R/run/zero c 1 5
touch -d '2020-01-02 03:04:05' $R/run/sub/f
mount --bind {data} $R/data
mount --bind /lib $R/lib
{extra}
cd $R
mkdir -p .old
pivot_root . .old
umount -l /.old
rmdir /.old
{after_pivot}
exec {exec_prefix} /bin/busybox sh -c 'exec 3<>/run/fifo; i=0; while :; do i=$((i+1)); echo $i > /run/count; echo $i; read -t 0.05 -u 3 x; done' </dev/null >{out} 2>&1
"#,
        root = root.display(),
        data = dir.display(),
        extra = opts.extra_setup,
        after_pivot = opts.after_pivot,
        exec_prefix = opts.exec_prefix,
    );
    std::fs::write(&script, text).expect("writing the container's setup");
    let mut args: Vec<String> = Vec::new();
    if opts.pid_ns {
        // The outer unshare makes only the pid namespace and waits for its
        // child; the other namespaces are made by an inner unshare that
        // execs, so the waiting one is in none of them (crust refuses a
        // namespace an outside process is in).
        args.extend(["--pid", "--fork", BUSYBOX, "setsid", "/usr/bin/unshare"].map(String::from));
    }
    args.extend(["-m", "--propagation", "private"].iter().chain(opts.unshare).map(|a| a.to_string()));
    args.extend([BUSYBOX.to_string(), "sh".into(), script.to_str().expect("a UTF-8 temp path").to_string()]);
    if !opts.pid_ns {
        return (PathBuf::from("/usr/bin/unshare"), args, root);
    }
    // unshare says how its child died, which would come between the
    // counts: its stderr (and the setup's) goes to a file of its own.
    let err = dir.join(format!("{name}-unshare.err"));
    let mut sh_args = vec!["-c".to_string(), format!("exec /usr/bin/unshare \"$@\" 2>{}", err.display()), "unshare".into()];
    sh_args.extend(args);
    (PathBuf::from("/bin/sh"), sh_args, root)
}

impl Container {
    /// Starts a container named `name` under `dir` (see [`command`]).
    pub fn start(name: &str, dir: &Path, opts: &Options) -> Container {
        let (program, args, root) = command(name, dir, opts);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The job's output file is the one the shell writes as /data/NAME.out.
        let job = Job::build(name, &args).program(&program).start(dir);
        let init = job.pid;
        let mut c = Container { job, init, root };
        // The first number: the container is up.
        let first = c.job.line(STEP);
        assert!(first.parse::<u64>().is_ok(), "the container's first line is a number: {first:?} ({:?})", c.job.history);
        if opts.pid_ns {
            let u = c.job.pid;
            let children = std::fs::read_to_string(format!("/proc/{u}/task/{u}/children")).expect("unshare's children");
            c.init = children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("unshare's child, the container's init");
        }
        c
    }

    /// After a dump killed the container: unshare and what is left of its session reaped.
    pub fn reap_after_dump(&mut self) {
        if self.init == self.job.pid {
            return self.job.reap_original();
        }
        // unshare reports its child's death (it exits itself, not by the signal).
        self.job.wait_exit(STEP);
        self.job.end_session();
        self.init = 0;
    }

    /// `crust restore -d` of a container in a pid namespace from `images`,
    /// with `extra` options: the copy, by its new host pid.
    pub fn restore_copy(&self, images: &Path, extra: &[&str]) -> Copy {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let pidfile = self.root.with_extension(format!("pid{}", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
        let mut args = vec!["--pidfile", pidfile.to_str().expect("a UTF-8 temp path")];
        args.extend(extra);
        let out = super::job::restore(images, &args);
        assert!(out.status.success(), "restore from {}: {}", images.display(), String::from_utf8_lossy(&out.stderr));
        let pid = std::fs::read_to_string(&pidfile).expect("the pidfile").trim().parse().expect("a pid in the pidfile");
        let ppid = super::proc_status_field(pid, "PPid").expect("the restored root");
        assert_eq!(ppid, std::process::id().to_string(), "the restored root {pid} is handed to the test process");
        Copy { pid }
    }

    /// The last number it printed, after reading every line so far.
    pub fn last_count(&mut self) -> u64 {
        self.job.drain();
        self.job.history.iter().rev().find_map(|l| l.parse().ok()).expect("a number")
    }

    /// The next numbers go on from `last` with no gap.
    pub fn assert_counts_on_from(&mut self, last: u64) {
        for want in last + 1..last + 4 {
            let l = self.job.line(STEP);
            assert_eq!(l, want.to_string(), "the count goes on from {last}: {:?}", super::tail(&self.job.history, 8));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // The init of a pid namespace, while unshare (the job) waits for it:
        // the whole namespace dies with it.
        if self.init != self.job.pid && self.init > 0 && super::proc_status_field(self.init, "PPid") == Some(self.job.pid.to_string()) {
            // SAFETY: a kill by pid of our child's child, which it has not reaped.
            unsafe { libc::kill(self.init, libc::SIGKILL) };
        }
    }
}

/// A restored copy of a container in a pid namespace: its root (the
/// namespace's init) is the test's child; killed and reaped on drop, and
/// the namespace with it.
pub struct Copy {
    pub pid: i32,
}

impl Copy {
    /// The count it keeps in its own /run (a tmpfs of each copy's own).
    pub fn count(&self) -> u64 {
        let path = format!("/proc/{}/root/run/count", self.pid);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.trim().parse().unwrap_or_else(|e| panic!("{path}: {text:?}: {e}"))
    }

    /// Its count goes beyond `n` within a step.
    pub fn assert_counts_past(&self, n: u64) {
        let past = super::poll(STEP, std::time::Duration::from_millis(20), || std::fs::read_to_string(format!("/proc/{}/root/run/count", self.pid)).ok()?.trim().parse::<u64>().ok().filter(|c| *c > n + 2));
        assert!(past.is_some(), "copy {} counts on past {n}: it is at {}", self.pid, self.count());
    }

    /// Killed and reaped (after a dump killed it, only reaped): the pid
    /// namespace goes with its init.
    pub fn end(&mut self) {
        if self.pid > 0 {
            // SAFETY: kill and waitpid on our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
            self.pid = 0;
        }
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        self.end();
    }
}

/// `pid`'s mounts as its mount namespace shows them, without what changes
/// from one mount to its copy (ids, device numbers of new super blocks, peer
/// group numbers): one line per mount, sorted, parent given by mount point.
pub fn mounts(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    let mut out: Vec<String> = lines
        .iter()
        .map(|f| {
            let parent = lines.iter().find(|p| p[0] == f[1]).map_or("-", |p| p[4]);
            let dash = f.iter().position(|w| *w == "-").expect("a separator");
            let tags: Vec<&str> = f[6..dash].iter().map(|t| t.split(':').next().unwrap_or(t)).collect();
            format!("{} on {} (in {parent}) {} [{}] {} {} {}", f[3], f[4], f[5], tags.join(","), f[dash + 1], f[dash + 2], f[dash + 3])
        })
        .collect();
    out.sort();
    out
}

/// Every file under `dir`: path, type and mode, owner, size, link count,
/// time, symlink target, device, contents of small files.
pub fn tree_listing(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(dir).expect("under").display().to_string();
            let extra = if m.file_type().is_symlink() {
                std::fs::read_link(&p).expect("readlink").display().to_string()
            } else if m.is_file() && m.len() < 4096 {
                std::fs::read_to_string(&p).unwrap_or_default()
            } else {
                String::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            // The counter file changes every tick; its size is enough.
            let extra = if rel == "count" { String::new() } else { extra };
            let (mtime, size) = match () {
                _ if rel == "count" => (0, 0),
                _ if m.is_dir() => (m.mtime(), 0),
                _ => (m.mtime(), m.len()),
            };
            out.push(format!("{rel} {:o} {}:{} size {size} links {} mtime {mtime} rdev {:x} {extra:?}", m.mode(), m.uid(), m.gid(), m.nlink(), m.rdev()));
        }
    }
    out.sort();
    out
}
