//! "Two hosts on one machine" for the migration tests.
//!
//! [`Hosts::new`] makes host A and host B. A host is a set of namespaces of its
//! own, kept alive by a small init process (a zombie reaper, pid 1 inside):
//!
//! * network: an anonymous netns holding `lo` and one end of a veth pair; A is
//!   `10.200.X.1/24`, B is `10.200.X.2/24`. Nothing else is reachable from
//!   inside (no default route), and nothing of it is visible from the root netns
//!   (both veth ends are created directly inside the hosts' netns; no
//!   `/run/netns` entry is made, so nothing can be left there either).
//! * pid: a fresh pid namespace. A process restored in B can get the pid it had
//!   in A. A's pids start at [`HOST_A_PID_BASE`] + 1 so that they do not collide
//!   with B's own processes (sshd, `crust serve`, ...), which get small pids.
//! * mount: a private copy of the root mount namespace (same files, same paths:
//!   the crust binary, the workloads and every temp dir are at the same paths),
//!   with its own /proc showing the host's pids. Mounts made inside stay inside.
//! * uts: a hostname of its own ([`Host::hostname`]).
//!
//! IPC, cgroup, user and time namespaces are shared with the root (so
//! /sys/fs/cgroup works inside as outside). /sys is the root's: /sys/class/net
//! lists the root netns' devices, use `ip` instead.
//!
//! Commands run inside a host by `setns` into all four namespaces
//! ([`Host::command`], [`Host::run`], [`Host::spawn`]). Dropping [`Hosts`]
//! (also on unwind) SIGKILLs both inits, which kills every process of both pid
//! namespaces, frees both netns (and so the veth pair) and removes the temp dir.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{collect_text, pidfd_kill, pidfd_open, pidfd_wait_exit, run_with_timeout, wait_child, TempDir};

/// Processes started in host A get pids above this (in A's pid namespace).
pub const HOST_A_PID_BASE: i32 = 10000;

/// How long [`Host::run`] lets a command run before failing the test.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Debian's python3, not a pyenv shim (a shim forks ~40 processes, using up pids).
const PYTHON: &str = "/usr/bin/python3";
const SSHD: &str = "/usr/sbin/sshd";

static HOSTS_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// pid 1 of a host: sets the hostname and the first pid, says "ready", then
/// reaps every child at once (orphans of the host are reparented to it).
const INIT_PY: &str = r#"
import os, signal, socket, sys
socket.sethostname(sys.argv[1])
last = int(sys.argv[2])
if last > 0:
    with open('/proc/sys/kernel/ns_last_pid', 'w') as f:
        f.write(str(last))
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
sys.stdout.write('ready\n')
sys.stdout.flush()
fd = os.open('/dev/null', os.O_RDWR)
for i in (0, 1, 2):
    os.dup2(fd, i)
os.chdir('/')
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    signal.sigtimedwait([signal.SIGCHLD], 1.0)
"#;

// ---------------------------------------------------------------------------
// Hosts

/// Host A and host B, joined by a veth pair. Everything is torn down on drop.
pub struct Hosts {
    pub a: Host,
    pub b: Host,
    subnet: u8,
    marker: String,
    tmp: TempDir,
}

impl Hosts {
    /// Starts both hosts (about 0.1 s). `test` names the temp dir.
    pub fn new(test: &str) -> Hosts {
        let n = HOSTS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Distinct per pair within this test process. (The subnets of different
        // pairs could not clash anyway: each pair is alone in its two netns.)
        let subnet = ((pid as usize + n) % 250 + 1) as u8;
        let marker = format!("crust-hosts-{pid}-{n}");
        // The marker in the path puts it into sshd's command line too.
        let tmp = TempDir::new(&format!("{test}-{marker}"));

        let a = Host::start('a', format!("hosta-{pid}-{n}"), HOST_A_PID_BASE, &marker);
        let b = Host::start('b', format!("hostb-{pid}-{n}"), 0, &marker);
        let mut a = a.wait_ready();
        let mut b = b.wait_ready();

        // veth names: at most 15 characters, e.g. "cr3f2a1-17a".
        a.veth = format!("cr{pid:x}-{n}a");
        b.veth = format!("cr{pid:x}-{n}b");
        assert!(a.veth.len() <= 15, "veth name {} too long", a.veth);
        a.ip = Ipv4Addr::new(10, 200, subnet, 1);
        b.ip = Ipv4Addr::new(10, 200, subnet, 2);
        a.peer_ip = b.ip;
        b.peer_ip = a.ip;

        // Both ends are created directly inside the hosts' netns.
        let (pa, pb) = (a.init_pid.to_string(), b.init_pid.to_string());
        let out = run_with_timeout(
            Command::new("ip").args(["link", "add", &a.veth, "netns", &pa, "type", "veth", "peer", "name", &b.veth, "netns", &pb]),
            RUN_TIMEOUT,
        );
        assert!(out.status.success(), "ip link add: {}", String::from_utf8_lossy(&out.stderr));
        for h in [&a, &b] {
            let batch = tmp.join(format!("ip-{}.batch", h.label));
            std::fs::write(&batch, format!("link set lo up\naddr add {}/24 dev {}\nlink set {} up\n", h.ip, h.veth, h.veth))
                .expect("writing ip batch");
            h.run_ok(&["ip", "-b", batch.to_str().unwrap()]);
        }
        Hosts { a, b, subnet, marker, tmp }
    }

    /// X of 10.200.X.0/24.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// A string unique to this pair of hosts, in the command line of both inits
    /// (and their `unshare`) and of sshd (through its config path), and in the
    /// temp dir's name.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The pair's temp dir (removed on drop); visible at the same path in both hosts.
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// Starts sshd in B on 10.200.X.2:22 and sets A up as its client, so that in
    /// A plain `ssh root@10.200.X.2 CMD` works (see [`Sshd`]).
    pub fn start_sshd(&self) -> Sshd {
        self.start_sshd_on(22)
    }

    /// [`Hosts::start_sshd`] on another port (`ssh -p PORT root@10.200.X.2` in A).
    pub fn start_sshd_on(&self, port: u16) -> Sshd {
        Sshd::start(&self.b, &self.a, port, self.tmp.path(), &self.marker)
    }

    /// The reverse of [`Hosts::start_sshd_on`]: sshd in A on 10.200.X.1:PORT,
    /// with B set up as its client (`ssh -p PORT root@10.200.X.1` in B), for
    /// moves from B back to A over ssh://. Both directions can run at once.
    pub fn start_sshd_in_a_on(&self, port: u16) -> Sshd {
        Sshd::start(&self.a, &self.b, port, self.tmp.path(), &self.marker)
    }

    /// Starts host C, for the clients of a service that moves between A and
    /// B (see [`Clients`]).
    pub fn start_clients(&self) -> Clients {
        let n = HOSTS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let mut c = Host::start('c', format!("hostc-{pid}-{n}"), 0, &self.marker).wait_ready();
        let x = self.subnet;
        c.ip = Ipv4Addr::new(10, 200, x, 3);
        let service = Ipv4Addr::new(10, 200, x, 100);
        let name = |end: &str| format!("cr{pid:x}-{n}{end}");
        let mut batch_c = format!("link set lo up\naddr add {}/32 dev lo\n", c.ip);
        for (host, near, far) in [(&self.a, "ca", "ac"), (&self.b, "cb", "bc")] {
            let out = run_with_timeout(
                Command::new("ip").args([
                    "link", "add", &name(near), "netns", &c.init_pid.to_string(), "type", "veth", "peer", "name", &name(far), "netns",
                    &host.init_pid.to_string(),
                ]),
                RUN_TIMEOUT,
            );
            assert!(out.status.success(), "ip link add: {}", String::from_utf8_lossy(&out.stderr));
            let batch = self.tmp.join(format!("ip-{far}.batch"));
            std::fs::write(&batch, format!("link set {0} up\nroute add {1}/32 dev {0}\n", name(far), c.ip)).expect("writing ip batch");
            host.run_ok(&["ip", "-b", batch.to_str().unwrap()]);
            batch_c += &format!("link set {} up\n", name(near));
        }
        let batch = self.tmp.join("ip-c.batch");
        std::fs::write(&batch, batch_c).expect("writing ip batch");
        c.run_ok(&["ip", "-b", batch.to_str().unwrap()]);
        Clients { to_a: name("ca"), to_b: name("cb"), service, host: c }
    }

    /// What to look for after drop to prove nothing was left behind.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            marker: self.marker.clone(),
            veths: vec![self.a.veth.clone(), self.b.veth.clone()],
            init_pids: vec![self.a.init_pid, self.b.init_pid],
            tmp: self.tmp.path().to_path_buf(),
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Kill both at once; the fields' drops then wait for each.
        self.a.kill_init();
        self.b.kill_init();
    }
}

// ---------------------------------------------------------------------------
// Clients

/// Host C: clients of a service whose address (10.200.X.100, a floating IP)
/// is on A or on B, and moves between them. C is 10.200.X.3 (on its `lo`)
/// and has a veth to A and one to B; A and B route 10.200.X.3 over theirs;
/// C routes the service address over the veth of the host that holds it.
/// Dropped, its init dies and its netns goes, with both veths.
pub struct Clients {
    pub host: Host,
    to_a: String,
    to_b: String,
    service: Ipv4Addr,
}

impl Clients {
    /// The service address.
    pub fn service(&self) -> Ipv4Addr {
        self.service
    }

    /// The clients' address.
    pub fn ip(&self) -> Ipv4Addr {
        self.host.ip
    }

    /// Put the service address on `to` (A or B of `hosts`), taking it off
    /// the other, and route C's packets for it there: what an operator does
    /// to a floating IP.
    pub fn move_service(&self, hosts: &Hosts, to: char) {
        let (from, to, via) = match to {
            'a' => (&hosts.b, &hosts.a, &self.to_a),
            _ => (&hosts.a, &hosts.b, &self.to_b),
        };
        let addr = format!("{}/32", self.service);
        let _ = from.run(&["ip", "addr", "del", &addr, "dev", "lo"]);
        to.run_ok(&["ip", "addr", "add", &addr, "dev", "lo"]);
        let src = self.host.ip.to_string();
        self.host.run_ok(&["ip", "route", "replace", &addr, "dev", via, "src", &src]);
    }
}

// ---------------------------------------------------------------------------
// Host

/// One host: the namespaces of an init process. See the module doc.
pub struct Host {
    label: char,
    marker: String,
    hostname: String,
    ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
    veth: String,
    /// `unshare`, parent of the init.
    unshare: Child,
    unshare_pidfd: Option<OwnedFd>,
    init_pid: i32,
    init_pidfd: Option<OwnedFd>,
    /// Namespace fds to setns into, in order: uts, net, pid, mnt.
    ns_fds: Vec<(OwnedFd, libc::c_int)>,
    pid_ns: u64,
    net_ns: u64,
    mnt_ns: u64,
    stderr: Arc<Mutex<String>>,
    ready: Option<mpsc::Receiver<String>>,
}

impl Host {
    fn start(label: char, hostname: String, last_pid: i32, marker: &str) -> Host {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--uts", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private", "--"])
            .args([PYTHON, "-c", INIT_PY, &hostname, &last_pid.to_string(), marker])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // If the test process dies (killed by a timeout, ^C), unshare dies,
                // and --kill-child takes the init, so the whole host, with it.
                // (Tied to the thread that made the Hosts: keep Hosts in that thread.)
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut unshare = cmd.spawn().unwrap_or_else(|e| panic!("spawning unshare: {e}"));
        let unshare_pidfd = pidfd_open(unshare.id() as i32).ok();
        let stdout = unshare.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let stderr = collect_text(unshare.stderr.take().unwrap());
        Host {
            label,
            marker: marker.to_string(),
            hostname,
            ip: Ipv4Addr::UNSPECIFIED,
            peer_ip: Ipv4Addr::UNSPECIFIED,
            veth: String::new(),
            unshare,
            unshare_pidfd,
            init_pid: 0,
            init_pidfd: None,
            ns_fds: Vec::new(),
            pid_ns: 0,
            net_ns: 0,
            mnt_ns: 0,
            stderr,
            ready: Some(rx),
        }
    }

    fn wait_ready(mut self) -> Host {
        let rx = self.ready.take().unwrap();
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) if l.trim() == "ready" => {}
            other => panic!("host {}: init did not start ({other:?}); stderr: {}", self.label, self.stderr.lock().unwrap()),
        }
        let upid = self.unshare.id();
        let children = std::fs::read_to_string(format!("/proc/{upid}/task/{upid}/children")).unwrap_or_default();
        self.init_pid = children.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            panic!("host {}: no init under unshare {upid}; stderr: {}", self.label, self.stderr.lock().unwrap())
        });
        self.init_pidfd = Some(pidfd_open(self.init_pid).expect("pidfd_open(init)"));
        let nspid = nspid(self.init_pid).expect("init's NSpid");
        assert_eq!(nspid.last(), Some(&1), "host {}: init {} is not pid 1 inside ({nspid:?})", self.label, self.init_pid);
        for (name, kind) in [("uts", libc::CLONE_NEWUTS), ("net", libc::CLONE_NEWNET), ("pid", libc::CLONE_NEWPID), ("mnt", libc::CLONE_NEWNS)] {
            let path = format!("/proc/{}/ns/{name}", self.init_pid);
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            let ino = f.metadata().expect("stat ns").ino();
            match name {
                "pid" => self.pid_ns = ino,
                "net" => self.net_ns = ino,
                "mnt" => self.mnt_ns = ino,
                _ => {}
            }
            self.ns_fds.push((OwnedFd::from(f), kind));
        }
        self
    }

    fn kill_init(&self) {
        if let Some(fd) = &self.init_pidfd {
            pidfd_kill(fd, libc::SIGKILL);
        }
    }

    /// 'a' or 'b'.
    pub fn label(&self) -> char {
        self.label
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// This host's address on the veth (10.200.X.1 for A, .2 for B).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The other host's address.
    pub fn peer_ip(&self) -> Ipv4Addr {
        self.peer_ip
    }

    /// This host's end of the veth pair.
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// The init's pid in the root pid namespace (it is pid 1 inside).
    /// `crust serve` (the binary `crust`) on this host's veth address and
    /// `port`, with `key`, images under `workdir`, its log in `log`; returns
    /// once it listens.
    pub fn start_crust_serve(&self, crust: &Path, port: u16, key: &Path, workdir: &Path, log: &Path) -> HostChild {
        self.start_crust_serve_with(crust, port, key, workdir, log, &[])
    }

    /// As [`Host::start_crust_serve`], with more options for `crust serve`.
    pub fn start_crust_serve_with(&self, crust: &Path, port: u16, key: &Path, workdir: &Path, log: &Path, extra: &[&str]) -> HostChild {
        let logf = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut cmd = self.command(crust);
        cmd.args(["serve", "--listen", &format!("{}:{port}", self.ip()), "--key"])
            .arg(key)
            .arg("-D")
            .arg(workdir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let child = cmd.spawn();
        let listening = || std::fs::read_to_string(log).unwrap_or_default().contains("listening").then_some(());
        super::poll(START_TIMEOUT, Duration::from_millis(10), listening)
            .unwrap_or_else(|| panic!("crust serve in host {} did not listen: {}", self.label, std::fs::read_to_string(log).unwrap_or_default()));
        child
    }

    pub fn init_pid(&self) -> i32 {
        self.init_pid
    }

    /// `/proc/INIT/ns/KIND` (KIND: net, pid, mnt, uts), e.g. for `nsenter --net=`.
    pub fn ns_path(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.init_pid))
    }

    /// A TCP connection to `addr` from inside this host's network (made on a
    /// thread of its own that enters the namespace; the socket stays in it).
    pub fn connect(&self, addr: std::net::SocketAddr) -> std::net::TcpStream {
        let ns = self.ns_path("net");
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
            // SAFETY: setns of this thread only (network namespaces allow that).
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns into {}", ns.display());
            std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
        })
        .join()
        .expect("connecting thread")
    }

    /// Inode of the host's pid namespace (as in `readlink /proc/P/ns/pid`).
    pub fn pid_ns_inode(&self) -> u64 {
        self.pid_ns
    }

    /// Inode of the host's network namespace.
    pub fn net_ns_inode(&self) -> u64 {
        self.net_ns
    }

    /// A command to run inside this host (its net, pid, mount and uts
    /// namespaces). Configure it as a [`Command`] (it derefs to one), then
    /// [`HostCommand::spawn`] or [`HostCommand::output`] it. `pre_exec` closures
    /// added to it run inside the host, in the command's own process (so
    /// `setsid` there makes it a session leader in the host); `current_dir` is
    /// resolved inside the host's mount namespace.
    /// `program` started here, in a session of its own, writing to `out`.
    pub fn start_writing_to(&self, program: &Path, args: &[&str], out: &Path) -> HostChild {
        let mut cmd = self.command(program);
        cmd.args(args);
        super::job::output_to_file(&mut cmd, out);
        super::job::new_session(&mut cmd);
        cmd.spawn()
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> HostCommand {
        let mut p = [0 as RawFd; 2];
        // SAFETY: plain pipe2 into a local array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
        // SAFETY: both fds are fresh and ours.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let kill_with_waiter = Arc::new(AtomicBool::new(false));
        let mut cmd = Command::new(program);
        self.enter_with(&mut cmd, wr.as_raw_fd(), kill_with_waiter.clone());
        HostCommand { cmd, label: self.label, report: Some((rd, wr)), kill_with_waiter }
    }

    /// Makes a plain `cmd` run inside this host, for code that must spawn a
    /// [`Command`] itself. Prefer [`Host::command`]: here `Child::id` is the pid
    /// of the waiter (see [`HostCommand`]; find the command with
    /// [`Host::command_pid`]), `Child::kill` kills only the waiter, and
    /// `pre_exec` closures added before this call run in the waiter, outside
    /// the host's pid namespace (those added after run in the command).
    pub fn enter(&self, cmd: &mut Command) {
        self.enter_with(cmd, -1, Arc::new(AtomicBool::new(false)))
    }

    fn enter_with(&self, cmd: &mut Command, report_fd: RawFd, kill_with_waiter: Arc<AtomicBool>) {
        let fds: Vec<(RawFd, libc::c_int)> = self.ns_fds.iter().map(|(f, k)| (f.as_raw_fd(), *k)).collect();
        // SAFETY: between fork and exec only async-signal-safe calls are made
        // (getcwd into a stack buffer, setns, chdir, fork, write, waitpid, _exit).
        unsafe {
            cmd.pre_exec(move || enter_namespaces(&fds, report_fd, kill_with_waiter.load(Ordering::Relaxed)));
        }
    }

    /// Starts `argv` in this host with stdin, stdout and stderr from /dev/null.
    pub fn spawn(&self, argv: &[&str]) -> HostChild {
        let mut c = self.command(argv[0]);
        c.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        c.spawn()
    }

    /// Runs `argv` inside this host ([`RUN_TIMEOUT`]); stdin is /dev/null.
    pub fn run(&self, argv: &[&str]) -> Output {
        let mut c = self.command(argv[0]);
        c.args(&argv[1..]);
        c.output(RUN_TIMEOUT)
    }

    /// [`Host::run`], asserting success; returns stdout.
    pub fn run_ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "host {}: {argv:?} failed ({}):\nstdout: {}\nstderr: {}",
            self.label,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The command behind a waiter started with [`Host::enter`]: its pid in the
    /// root pid namespace (None once it has exited).
    pub fn command_pid(&self, waiter: &Child) -> Option<i32> {
        let w = waiter.id();
        let s = std::fs::read_to_string(format!("/proc/{w}/task/{w}/children")).ok()?;
        s.split_whitespace().next()?.parse().ok()
    }

    /// The pid inside this host of the process `root_pid` (a pid as the test
    /// sees it); None if that process is not in this host's pid namespace.
    pub fn pid_in_host(&self, root_pid: i32) -> Option<i32> {
        if ns_inode(root_pid, "pid")? != self.pid_ns {
            return None;
        }
        nspid(root_pid)?.get(1).copied()
    }

    /// The pid (as the test sees it) of the process that has pid `host_pid` in this host.
    pub fn root_pid(&self, host_pid: i32) -> Option<i32> {
        self.processes().into_iter().find(|&p| nspid(p).and_then(|v| v.get(1).copied()) == Some(host_pid))
    }

    /// Every process in this host's pid namespace, by its pid as the test sees it.
    pub fn processes(&self) -> Vec<i32> {
        all_pids().into_iter().filter(|&p| ns_inode(p, "pid") == Some(self.pid_ns)).collect()
    }

    /// Every process in any of this host's namespaces (pid, net, mnt): its
    /// processes, the `unshare` that made it, and the waiters of `enter`.
    pub fn members(&self) -> Vec<i32> {
        let inodes = [self.pid_ns, self.net_ns, self.mnt_ns];
        all_pids()
            .into_iter()
            .filter(|&p| ["pid", "net", "mnt"].iter().any(|k| ns_inode(p, k).is_some_and(|i| inodes.contains(&i))))
            .collect()
    }

    /// Sets the host's `ns_last_pid`: the next process started in it gets `pid + 1`
    /// (unless taken).
    pub fn set_last_pid(&self, pid: i32) {
        self.run_ok(&["sh", "-c", &format!("echo {pid} > /proc/sys/kernel/ns_last_pid")]);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_init();
        if self.init_pidfd.is_none() {
            // Failed before the init was known: --kill-child takes it with unshare.
            let _ = self.unshare.kill();
        }
        // unshare exits once its init is reaped, and the init is reaped only once
        // every other process of its pid namespace has been.
        let gone = match &self.unshare_pidfd {
            Some(fd) => pidfd_wait_exit(fd, Duration::from_secs(15)),
            None => true,
        };
        if gone {
            let _ = self.unshare.wait();
        } else {
            eprintln!("host {}: init {} (unshare {}) did not exit", self.label, self.init_pid, self.unshare.id());
            let _ = self.unshare.kill();
        }
        // Every process of the pid namespace is gone now. The waiters of
        // `enter` (in the root pid namespace, but in the host's other
        // namespaces) follow their commands within moments: wait for them, so
        // that the netns (and the veth) is freed when this returns. The
        // namespaces are still pinned by `ns_fds` here, so their inode numbers
        // cannot have been reused by another test's namespaces yet: this is the
        // moment to check that no process is left in them.
        if self.init_pid > 0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let busy = self.members();
                if busy.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    let what = busy.iter().map(|p| format!("{p} ({})", cmdline(*p))).collect::<Vec<_>>().join(", ");
                    let msg = format!("host {}: processes still in its namespaces: {what}", self.label);
                    eprintln!("{msg}");
                    DROP_LEFTOVERS.lock().unwrap().push((self.marker.clone(), msg));
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Runs in the child of `Command::spawn`: enter the namespaces, fork (the pid
/// namespace applies to children only), and keep the parent as a waiter that
/// exits like the command.
fn enter_namespaces(fds: &[(RawFd, libc::c_int)], report_fd: RawFd, kill_with_waiter: bool) -> std::io::Result<()> {
    // SAFETY (whole fn): async-signal-safe libc calls on local buffers and fds we own.
    unsafe {
        let mut cwd = [0u8; 4096];
        let have_cwd = !libc::getcwd(cwd.as_mut_ptr().cast(), cwd.len()).is_null();
        for &(fd, kind) in fds {
            if libc::setns(fd, kind) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // setns(mnt) moved us to the namespace's root: go back to the same path there.
        if !have_cwd || libc::chdir(cwd.as_ptr().cast()) != 0 {
            libc::chdir(c"/".as_ptr());
        }
        let pid = libc::fork();
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            if kill_with_waiter {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            if report_fd >= 0 {
                let mut rec = [b'H', 0, 0, 0, 0];
                rec[1..].copy_from_slice(&libc::getpid().to_ne_bytes());
                libc::write(report_fd, rec.as_ptr().cast(), rec.len());
            }
            return Ok(()); // on to exec
        }
        if report_fd >= 0 {
            let mut rec = [b'R', 0, 0, 0, 0];
            rec[1..].copy_from_slice(&pid.to_ne_bytes());
            libc::write(report_fd, rec.as_ptr().cast(), rec.len());
        }
        // Hold no fd: spawn() waits for EOF on its exec-error pipe, readers for EOF on stdio.
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        libc::prctl(libc::PR_SET_DUMPABLE, 0); // no core file when mirroring a fatal signal
        let mut status = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let sig = libc::WTERMSIG(status);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig);
    }
}

// ---------------------------------------------------------------------------
// HostCommand

/// A [`Command`] that runs inside a host (from [`Host::command`]).
///
/// How: the process that `Command::spawn` forks enters the host's namespaces
/// and forks again (a pid namespace applies to children only). The command is
/// that second process, in the host's pid namespace; the first stays, in the
/// root pid namespace, as its waiter: it holds no fd, and exits as the command
/// does (same exit code, same signal). The command's parent is thus outside
/// the host's pid namespace (its PPid inside is 0), like a container's pid 1
/// as seen by `docker exec`. When the waiter is gone, an orphan of the host is
/// reaped by the host's init.
pub struct HostCommand {
    cmd: Command,
    label: char,
    report: Option<(OwnedFd, OwnedFd)>,
    kill_with_waiter: Arc<AtomicBool>,
}

impl HostCommand {
    /// Starts the command. The [`HostChild`] knows its pid in both pid
    /// namespaces and SIGKILLs it when dropped.
    pub fn spawn(mut self) -> HostChild {
        let child = self.cmd.spawn().unwrap_or_else(|e| panic!("spawning {:?} in host {}: {e}", self.cmd, self.label));
        let (rd, wr) = self.report.take().unwrap();
        drop(wr);
        // The waiter wrote b'R'+pid (root ns), the command b'H'+pid (host ns),
        // both before spawn() returned (the command had exec'd).
        let mut buf = Vec::new();
        let _ = std::fs::File::from(rd).read_to_end(&mut buf);
        let (mut pid, mut host_pid) = (0, 0);
        for rec in buf.chunks_exact(5) {
            let v = i32::from_ne_bytes(rec[1..5].try_into().unwrap());
            match rec[0] {
                b'R' => pid = v,
                b'H' => host_pid = v,
                _ => {}
            }
        }
        assert!(pid > 0 && host_pid > 0, "spawning {:?} in host {}: no pid reported ({buf:?})", self.cmd, self.label);
        let pidfd = pidfd_open(pid).ok();
        HostChild { child, pid, host_pid, pidfd }
    }

    /// Runs the command to its end and returns its output (stdin is /dev/null,
    /// stdout and stderr are captured); fails the test after `timeout`, killing
    /// the command (it is killed with its waiter).
    pub fn output(mut self, timeout: Duration) -> Output {
        self.kill_with_waiter.store(true, Ordering::Relaxed);
        run_with_timeout(&mut self.cmd, timeout)
    }

    /// [`HostCommand::output`], asserting success; returns stdout.
    pub fn output_ok(self, timeout: Duration) -> String {
        let what = format!("host {}: {:?}", self.label, self.cmd);
        let out = self.output(timeout);
        assert!(
            out.status.success(),
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Deref for HostCommand {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.cmd
    }
}

impl DerefMut for HostCommand {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }
}

// ---------------------------------------------------------------------------
// HostChild

/// A command started in a host by [`HostCommand::spawn`]. Derefs to the
/// [`std::process::Child`] of its waiter (stdio, `wait`, `try_wait`: the
/// waiter exits like the command). SIGKILLed and reaped on drop.
pub struct HostChild {
    child: Child,
    pid: i32,
    host_pid: i32,
    pidfd: Option<OwnedFd>,
}

impl HostChild {
    /// The command's pid as the test (root pid namespace) sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Same as [`HostChild::pid`] (shadows `Child::id`, which would be the waiter's).
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// The command's pid inside its host.
    pub fn host_pid(&self) -> i32 {
        self.host_pid
    }

    /// Sends `sig` to the command itself (not to its waiter).
    pub fn signal(&self, sig: i32) {
        if let Some(fd) = &self.pidfd {
            pidfd_kill(fd, sig);
        }
    }

    /// SIGKILLs the command and reaps its waiter.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the command to end; its status (as the waiter mirrors it).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }
}

impl Deref for HostChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for HostChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for HostChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            // The waiter follows the command within moments; do not hang a test on it.
            let _ = self.wait_timeout(Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------------------
// sshd

/// Debian's sshd running in the foreground in host B, for root logins with a
/// key made for this test, and host A set up as its client:
///
/// * in A, `/root/.ssh` is a bind mount (in A's mount namespace only) of a temp
///   dir with `config` (IdentityFile, UserKnownHostsFile with B's host key,
///   StrictHostKeyChecking yes, BatchMode yes), so plain `ssh root@10.200.X.2`
///   (and `ssh hostb`) work non-interactively there, as a user's ssh would;
/// * [`Sshd::ssh_command`] gives explicit client arguments that need no config;
/// * [`Sshd::ssh_config`] is a config file for `ssh -F FILE hostb`.
///
/// [`Hosts::start_sshd_in_a_on`] makes the reverse: sshd in A, B its client
/// (the alias `hostb` then names A). Killed when dropped (and with its host in
/// any case).
pub struct Sshd {
    proc_: HostChild,
    log: Arc<Mutex<String>>,
    ip: Ipv4Addr,
    port: u16,
    dir: PathBuf,
}

impl Sshd {
    fn start(server: &Host, client: &Host, port: u16, tmp: &Path, marker: &str) -> Sshd {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = tmp.join(format!("sshd-{}", N.fetch_add(1, Ordering::SeqCst)));
        let dotssh = dir.join("client-dotssh");
        std::fs::create_dir_all(&dotssh).expect("mkdir sshd dir");
        std::fs::set_permissions(&dotssh, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let keygen = |path: &Path, comment: &str| {
            let out = run_with_timeout(
                Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(path),
                RUN_TIMEOUT,
            );
            assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        };
        let host_key = dir.join("ssh_host_ed25519_key");
        let id = dotssh.join("id_ed25519");
        keygen(&host_key, &format!("{marker}-hostkey"));
        keygen(&id, &format!("{marker}-client"));
        let pubkey = |p: &Path| std::fs::read_to_string(p.with_extension("pub")).expect("reading public key");
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, pubkey(&id)).expect("writing authorized_keys");
        let ip = server.ip;
        let known_name = if port == 22 { ip.to_string() } else { format!("[{ip}]:{port}") };
        let known_hosts = dotssh.join("known_hosts");
        std::fs::write(&known_hosts, format!("{known_name} {}", pubkey(&host_key))).expect("writing known_hosts");

        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {ip}:{port}\n\
                 HostKey {}\n\
                 AuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 UseDNS no\n\
                 PidFile none\n\
                 Subsystem sftp internal-sftp\n",
                host_key.display(),
                authorized.display()
            ),
        )
        .expect("writing sshd_config");

        // One client config, used at ~/.ssh/config in A and with -F.
        let client_config = format!(
            "Host hostb {ip}\n\
             \x20 HostName {ip}\n\
             \x20 User root\n\
             \x20 Port {port}\n\
             Host *\n\
             \x20 IdentityFile {}\n\
             \x20 IdentitiesOnly yes\n\
             \x20 UserKnownHostsFile {}\n\
             \x20 GlobalKnownHostsFile /dev/null\n\
             \x20 StrictHostKeyChecking yes\n\
             \x20 BatchMode yes\n\
             \x20 ConnectTimeout 10\n\
             \x20 LogLevel ERROR\n",
            id.display(),
            known_hosts.display()
        );
        std::fs::write(dotssh.join("config"), &client_config).expect("writing ssh config");
        std::fs::write(dir.join("ssh_config"), &client_config).expect("writing ssh config");

        // A's ~/.ssh. The mount point must exist; an empty /root/.ssh is what the
        // first `ssh` run would create anyway. Its contents outside A are untouched.
        let home = Path::new("/root/.ssh");
        if !home.exists() {
            let _ = std::fs::create_dir(home);
            let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
        }
        client.run_ok(&["mount", "--bind", dotssh.to_str().unwrap(), "/root/.ssh"]);

        // sshd's privilege separation dir (fixed path).
        server.run_ok(&["mkdir", "-p", "-m", "0755", "/run/sshd"]);

        let mut cmd = server.command(SSHD);
        cmd.args(["-D", "-e", "-f"]).arg(&config).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut proc_ = cmd.spawn();
        let stderr = proc_.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("Server listening on") {
                    let _ = tx.send(());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        if rx.recv_timeout(START_TIMEOUT).is_err() {
            panic!("sshd did not start in host b: {}", log.lock().unwrap());
        }
        Sshd { proc_, log, ip, port, dir }
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `root@10.200.X.2`.
    pub fn destination(&self) -> String {
        format!("root@{}", self.ip)
    }

    /// `ssh://root@10.200.X.2:PORT`, for `crust migrate --to`.
    pub fn url(&self) -> String {
        format!("ssh://root@{}:{}", self.ip, self.port)
    }

    /// The name B has in [`Sshd::ssh_config`] and in A's `~/.ssh/config`.
    pub fn host_alias(&self) -> &'static str {
        "hostb"
    }

    /// `ssh` and every option needed to reach B from A non-interactively,
    /// independent of any config file; append the remote command.
    pub fn ssh_command(&self) -> Vec<String> {
        let mut v: Vec<String> = vec!["ssh".into(), "-F".into(), "/dev/null".into(), "-i".into(), self.identity().display().to_string()];
        for o in [
            format!("UserKnownHostsFile={}", self.known_hosts().display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            "BatchMode=yes".into(),
            "IdentitiesOnly=yes".into(),
            "ConnectTimeout=10".into(),
            "LogLevel=ERROR".into(),
        ] {
            v.push("-o".into());
            v.push(o);
        }
        v.extend(["-p".into(), self.port.to_string(), self.destination()]);
        v
    }

    /// A client config file naming B `hostb`: `ssh -F FILE hostb CMD`.
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// The client's private key.
    pub fn identity(&self) -> PathBuf {
        self.dir.join("client-dotssh/id_ed25519")
    }

    /// known_hosts with B's host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("client-dotssh/known_hosts")
    }

    /// sshd's own log so far (stderr, `-e`).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// sshd's pid as the test sees it.
    pub fn pid(&self) -> i32 {
        self.proc_.pid()
    }
}

// ---------------------------------------------------------------------------
// Leftovers

/// Processes that a host's drop found still in its namespaces: (marker, what).
static DROP_LEFTOVERS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// What a [`Hosts`] made, to check after its drop that none of it remains.
#[derive(Clone, Debug)]
pub struct Fingerprint {
    pub marker: String,
    pub veths: Vec<String>,
    pub init_pids: Vec<i32>,
    pub tmp: PathBuf,
}

impl Fingerprint {
    /// Everything of the hosts still around: processes that were in their
    /// namespaces when they were dropped (checked by the drop itself, while the
    /// namespaces were pinned: afterwards their inode numbers may belong to
    /// another test's new namespaces), processes with the marker in their
    /// command line, veths or netns names in the root netns, the temp dir.
    /// Empty when all is gone.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> =
            DROP_LEFTOVERS.lock().unwrap().iter().filter(|(m, _)| *m == self.marker).map(|(_, w)| w.clone()).collect();
        for p in all_pids() {
            let c = cmdline(p);
            if c.contains(&self.marker) {
                left.push(format!("process {p}: {c}"));
            }
        }
        let links = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link");
        let links = String::from_utf8_lossy(&links.stdout);
        for v in &self.veths {
            if links.contains(v.as_str()) {
                left.push(format!("link {v} in the root netns"));
            }
        }
        let netns = Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
        if String::from_utf8_lossy(&netns.stdout).contains(&self.marker) {
            left.push("a netns named after the marker".into());
        }
        if self.tmp.exists() {
            left.push(format!("temp dir {}", self.tmp.display()));
        }
        left
    }
}

// ---------------------------------------------------------------------------
// /proc helpers

/// The NSpid line of /proc/PID/status: the pid in our namespace, then in each nested one.
/// How long a test waits for a line a program of a host writes.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// The lines a program wrote to `out` so far.
pub fn file_lines(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Wait until `out` holds a line for which `f` is true; return it.
pub fn wait_file_line(out: &Path, f: impl Fn(&str) -> bool) -> String {
    let found = super::poll(LINE_TIMEOUT, Duration::from_millis(20), || file_lines(out).into_iter().find(|l| f(l)));
    found.unwrap_or_else(|| panic!("no such line in {}: {:?}", out.display(), file_lines(out)))
}

pub fn nspid(pid: i32) -> Option<Vec<i32>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("NSpid:"))?;
    line["NSpid:".len()..].split_whitespace().map(|v| v.parse().ok()).collect()
}

/// Inode of namespace KIND (pid, net, mnt, ...) of process `pid`.
pub fn ns_inode(pid: i32, kind: &str) -> Option<u64> {
    let l = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    let s = l.to_str()?;
    s[s.find('[')? + 1..s.find(']')?].parse().ok()
}

/// Every pid in our /proc.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// /proc/PID/cmdline with spaces for NULs ("" if gone).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim_end().to_string())
        .unwrap_or_default()
}
