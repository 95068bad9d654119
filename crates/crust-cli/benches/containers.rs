//! Benchmark: what namespaces and mounts cost a dump and a restore. The
//! issue's container (a busybox root with pivot_root, proc, a tmpfs /dev and
//! /run, bind mounts of host paths, its own pid, mount, uts, ipc, net and
//! cgroup namespaces, a veth to the host, a host name, a System V segment,
//! no_new_privs and fewer capabilities) and the same tree of processes
//! outside any namespace (a busybox shell counting, busybox httpd, under the
//! same setpriv), side by side in the same run; each once as it is and once
//! with a 1 GiB child (the bigmem workload: 1 GiB of random bytes).
//!
//! Each round dumps the running tree with `crust dump` (which kills it) to
//! /dev/shm and restores it with `crust restore -d` (timed as a user sees
//! them: the command's wall time), then waits for it to count on; the next
//! round dumps that restored tree. The rounds of the two trees take turns.
//! The table gives the medians and the container's time over the plain
//! tree's: the overhead of its namespaces and mounts.
//!
//! Run with `cargo bench -p crust-cli --bench containers` (as root).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use common::{median, min_max, ms, noisy, TmpPath, WORKLOAD_DIR};

const CRUST: &str = env!("CARGO_BIN_EXE_crust");
const BUSYBOX: &str = "/bin/busybox";
const SETPRIV: &str = "/usr/bin/setpriv";
/// The container's veth host end, and its addresses.
const HOST_IF: &str = "vh-crust-bnc";
const NET: &str = "10.200.149";
/// The plain tree's httpd (the container's listens on 8080 in its own network).
const PLAIN_PORT: u16 = 18931;
const WAIT: Duration = Duration::from_secs(120);

/// The counting shell: each number to RUN/count and as a line to stdout,
/// waiting in a read of a FIFO (no child processes come and go).
fn counter(run: &str) -> String {
    format!("exec 3<>{run}/fifo; i=0; while :; do i=$((i+1)); echo $i > {run}/count; echo $i; read -t 0.05 -u 3 x; done")
}

const PRIV: &str = "--no-new-privs --inh-caps=-all --bounding-set=-sys_module,-sys_rawio,-mknod --";

#[derive(Clone, Copy, PartialEq)]
enum Place {
    Host,
    Container,
}

/// A tree being dumped and restored, round after round.
struct Tree {
    place: Place,
    dir: TmpPath,
    /// The counter's output.
    out: PathBuf,
    /// The tree's root, by host pid.
    root: i32,
    /// unshare (the container's) or the root itself (the plain tree's), until reaped.
    first: Option<Child>,
    restores: usize,
}

impl Tree {
    fn start(place: Place, big: bool, n: usize) -> Result<Tree> {
        let dir = TmpPath::dir(if place == Place::Host { "plain-" } else { "ctr-" }, n)?;
        let root_dir = dir.join("root");
        for d in ["bin", "proc", "dev", "run", "data", "lib", "lib64", "tmp"] {
            std::fs::create_dir_all(root_dir.join(d))?;
        }
        for (from, to) in [(BUSYBOX, "bin/busybox"), (SETPRIV, "bin/setpriv")] {
            std::fs::copy(from, root_dir.join(to)).with_context(|| format!("copying {from} (scripts/setup installs it)"))?;
        }
        std::fs::copy(Path::new(WORKLOAD_DIR).join("bigmem"), root_dir.join("bin/bigmem")).context("copying bigmem")?;
        let big_line = |bin: &str, data: &str| if big { format!("{bin}/bigmem 1024 </dev/null >{data}/big.out 2>&1 &") } else { String::new() };
        let out = dir.join("count.out");
        let script = dir.join("setup.sh");
        let mut cmd = match place {
            Place::Host => {
                let run = dir.join("run");
                std::fs::create_dir_all(&run)?;
                let (d, r) = (dir.0.display().to_string(), run.display().to_string());
                let text = format!(
                    "set -e\nmkfifo {r}/fifo\n{BUSYBOX} httpd -f -p 127.0.0.1:{PLAIN_PORT} -h {r} </dev/null >/dev/null 2>&1 &\n{}\nexec {SETPRIV} {PRIV} {BUSYBOX} sh -c '{}' </dev/null >{d}/count.out 2>&1\n",
                    big_line(&format!("{d}/root/bin"), &d),
                    counter(&r),
                );
                std::fs::write(&script, text)?;
                let mut c = Command::new(BUSYBOX);
                c.arg("sh").arg(&script);
                c
            }
            Place::Container => {
                let text = format!(
                    r#"set -e
R={root}
mount --bind $R $R
mount -t proc proc $R/proc
mount -t tmpfs -o size=1m,mode=755 tmpfs $R/dev
mknod -m 666 $R/dev/null c 1 3
mount -t tmpfs -o size=2m,mode=1777 tmpfs $R/run
mkfifo $R/run/fifo
mount --bind {data} $R/data
mount --bind /lib $R/lib
mount --bind /lib64 $R/lib64
hostname crust-bench
ipcmk -M 8192 -p 0600 >/dev/null
cd $R
mkdir -p .old
pivot_root . .old
umount -l /.old
rmdir /.old
/bin/busybox httpd -f -p 8080 -h /run </dev/null >/dev/null 2>&1 &
{big}
exec /bin/setpriv {PRIV} /bin/busybox sh -c '{count}' </dev/null >/data/count.out 2>&1
"#,
                    root = root_dir.display(),
                    data = dir.0.display(),
                    big = big_line("/bin", "/data"),
                    count = counter("/run"),
                );
                std::fs::write(&script, text)?;
                let mut c = Command::new("/usr/bin/unshare");
                // The outer unshare (which waits) makes only the pid
                // namespace; an inner one that execs makes the others, so
                // no process outside the tree is in them.
                c.args(["--pid", "--fork", BUSYBOX, "setsid", "/usr/bin/unshare", "-m", "--propagation", "private", "--uts", "--ipc", "--net", "--cgroup", BUSYBOX, "sh"]).arg(&script);
                c
            }
        };
        let err = std::fs::File::create(dir.join("setup.err"))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        // SAFETY: setsid and close_range are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
                nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().context("starting the tree")?;
        let mut t = Tree { place, out, root: child.id() as i32, first: Some(child), restores: 0, dir };
        t.wait_count_past(0)?;
        if place == Place::Container {
            let u = t.root;
            let children = std::fs::read_to_string(format!("/proc/{u}/task/{u}/children"))?;
            t.root = children.split_whitespace().next().context("unshare's child")?.parse()?;
            let _ = Command::new("ip").args(["link", "del", HOST_IF]).output();
            run(&["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", &t.root.to_string()])?;
            run(&["ip", "link", "set", HOST_IF, "up"])?;
            let inside = format!("ip addr add {NET}.2/24 dev eth0 && ip link set eth0 up && ip link set lo up");
            run(&["nsenter", "-t", &t.root.to_string(), "-n", "sh", "-c", &inside])?;
        }
        if big {
            let big_out = t.dir.join("big.out");
            let deadline = Instant::now() + WAIT;
            while !std::fs::read_to_string(&big_out).unwrap_or_default().starts_with("READY") {
                if Instant::now() > deadline {
                    bail!("bigmem did not say READY");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(t)
    }

    fn last_count(&self) -> u64 {
        std::fs::read_to_string(&self.out).unwrap_or_default().lines().rev().find_map(|l| l.parse().ok()).unwrap_or(0)
    }

    fn wait_count_past(&self, n: u64) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        while self.last_count() <= n {
            if Instant::now() > deadline {
                bail!("the tree stopped counting at {}", self.last_count());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// `crust dump` (kills the tree); its wall time. Everything of the
    /// killed tree that comes to us is reaped, so its pids are free.
    fn dump(&mut self, images: &Path) -> Result<f64> {
        let root = self.root.to_string();
        let mut args = vec!["dump", "-t", &root, "-D", images.to_str().context("utf-8")?];
        if self.place == Place::Container {
            args.extend(["--ext-mount-map", "auto"]);
        }
        let t = Instant::now();
        crust(&args)?;
        let took = ms(t.elapsed());
        if let Some(mut c) = self.first.take() {
            // (Reaped already if another tree's reaping met it first.)
            let _ = c.wait();
        }
        reap_until_gone(self.root)?;
        if self.place == Place::Container {
            // The veth goes with the namespace, a moment after its init.
            let deadline = Instant::now() + WAIT;
            while Path::new("/sys/class/net").join(HOST_IF).exists() {
                if Instant::now() > deadline {
                    bail!("{HOST_IF} outlived its namespace");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(took)
    }

    /// `crust restore -d`; its wall time. Then it must count on.
    fn restore(&mut self, images: &Path) -> Result<f64> {
        let last = self.last_count();
        let pidfile = self.dir.join(format!("restored-{}.pid", self.restores));
        self.restores += 1;
        let veth = format!("veth[eth0]:{HOST_IF}");
        let mut args = vec!["restore", "-D", images.to_str().context("utf-8")?, "-d", "--pidfile", pidfile.to_str().context("utf-8")?];
        if self.place == Place::Container {
            args.extend(["--external", &veth]);
        }
        let t = Instant::now();
        crust(&args)?;
        let took = ms(t.elapsed());
        self.root = std::fs::read_to_string(&pidfile)?.trim().parse()?;
        self.wait_count_past(last)?;
        Ok(took)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        kill_tree(self.root);
        if let Some(mut c) = self.first.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = reap_until_gone(self.root);
        let _ = Command::new("ip").args(["link", "del", HOST_IF]).output();
    }
}

/// SIGKILL to `pid` and every process under it, children first (the plain
/// tree's httpd is the root's child: killing the root alone left it serving).
fn kill_tree(pid: i32) {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        kill_tree(child);
    }
    // SAFETY: a kill by pid of a process of the tree this bench made (or
    // restored, its child).
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn run(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0]).args(&argv[1..]).output().with_context(|| format!("{argv:?}"))?;
    if !out.status.success() {
        bail!("{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn crust(args: &[&str]) -> Result<()> {
    let out = Command::new(CRUST).args(args).stdin(Stdio::null()).output().context("running crust")?;
    if !out.status.success() {
        bail!("crust {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Reap every child of ours that has exited (orphans of a killed tree come
/// to us, a subreaper) until `pid` is gone.
fn reap_until_gone(pid: i32) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        // SAFETY: waitpid on any child of ours, not blocking.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("process {pid} is still there");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Row {
    name: &'static str,
    dump: Vec<f64>,
    restore: Vec<f64>,
    images_mib: f64,
}

/// Both trees, `rounds` timed rounds each after one untimed warm-up, taking turns.
fn bench(big: bool, rounds: usize, n: &mut usize) -> Result<[Row; 2]> {
    let mut rows = [Place::Host, Place::Container].map(|p| Row {
        name: match (p, big) {
            (Place::Host, false) => "plain tree",
            (Place::Container, false) => "container",
            (Place::Host, true) => "plain + 1 GiB",
            (Place::Container, true) => "container + 1 GiB",
        },
        dump: Vec::new(),
        restore: Vec::new(),
        images_mib: 0.0,
    });
    let mut trees = Vec::new();
    for place in [Place::Host, Place::Container] {
        *n += 1;
        trees.push(Tree::start(place, big, *n)?);
    }
    for round in 0..=rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            *n += 1;
            let images = TmpPath::new("images-", *n)?;
            let d = trees[i].dump(&images.0)?;
            let r = trees[i].restore(&images.0)?;
            rows[i].images_mib = dir_bytes(&images.0) as f64 / (1 << 20) as f64;
            if round > 0 {
                rows[i].dump.push(d);
                rows[i].restore.push(r);
            }
        }
    }
    eprintln!("  {} and {}: {rounds} rounds done", rows[0].name, rows[1].name);
    Ok(rows)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn main() -> Result<()> {
    common::remove_stale();
    // SAFETY: plain prctl on this process: orphans of the killed trees and
    // the restored roots (crust restore -d exits) come to us.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("PR_SET_CHILD_SUBREAPER");
    }
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("crust containers benchmark: nproc {nproc}, images on /dev/shm, crust dump / crust restore -d wall times");
    let mut n = 0;
    let small = bench(false, 7, &mut n)?;
    let big = bench(true, 3, &mut n)?;
    println!();
    println!("{:<18} {:>9} {:>10} {:>17} {:>11} {:>17}", "tree", "images MiB", "dump ms", "dump range", "restore ms", "restore range");
    let mut ranges = Vec::new();
    for r in small.iter().chain(big.iter()) {
        let (dr, rr) = (min_max(&r.dump), min_max(&r.restore));
        ranges.extend([dr, rr]);
        println!(
            "{:<18} {:>9.1} {:>10.1} {:>8.1}-{:<8.1} {:>11.1} {:>8.1}-{:<8.1}",
            r.name,
            r.images_mib,
            median(&r.dump),
            dr.0,
            dr.1,
            median(&r.restore),
            rr.0,
            rr.1
        );
    }
    println!("{}", noisy(&ranges));
    println!("overhead of the namespaces and mounts (container / plain tree, medians):");
    for (what, [plain, ctr]) in [("few processes", &small), ("with 1 GiB", &big)] {
        println!(
            "  {what:<14} dump {:.2}x ({:+.1} ms), restore {:.2}x ({:+.1} ms)",
            median(&ctr.dump) / median(&plain.dump),
            median(&ctr.dump) - median(&plain.dump),
            median(&ctr.restore) / median(&plain.restore),
            median(&ctr.restore) - median(&plain.restore),
        );
    }
    Ok(())
}
