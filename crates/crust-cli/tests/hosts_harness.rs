//! The "two hosts on one machine" harness (tests/common/hosts.rs) works: the
//! hosts reach each other over their veth and nothing else, their pid, uts and
//! mount namespaces are their own, ssh from A to B works, and nothing is left
//! once they are dropped, also when a test panics.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::hosts::{cmdline, ns_inode, Fingerprint, Hosts, HOST_A_PID_BASE};
use common::{pidfd_open, pidfd_wait_exit, CRUST};
use std::os::fd::OwnedFd;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// pidfds of every process of both hosts (exact while the hosts live).
fn watch(hosts: &Hosts) -> Vec<(i32, String, OwnedFd)> {
    let mut v = Vec::new();
    for p in hosts.a.members().into_iter().chain(hosts.b.members()) {
        if let Ok(fd) = pidfd_open(p) {
            v.push((p, cmdline(p), fd));
        }
    }
    v
}

fn assert_nothing_left(fp: &Fingerprint, watched: &[(i32, String, OwnedFd)]) {
    let mut left = fp.leftovers();
    for (p, c, fd) in watched {
        if !pidfd_wait_exit(fd, Duration::ZERO) {
            left.push(format!("process {p} ({c}) still running"));
        }
    }
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Names and contents of the files in `dir` (empty if it does not exist).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    rd.filter_map(|e| {
        let e = e.ok()?;
        Some((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
    })
    .collect()
}

#[test]
fn hosts_talk_over_veth_with_own_namespaces() {
    let hosts = Hosts::new("veth");
    let fp = hosts.fingerprint();
    let (a, b) = (&hosts.a, &hosts.b);

    // uts: each host has its own hostname.
    assert_eq!(a.run_ok(&["hostname"]).trim(), a.hostname());
    assert_eq!(b.run_ok(&["hostname"]).trim(), b.hostname());
    assert_ne!(a.hostname(), b.hostname());

    // net: the veth ends carry the hosts' addresses; nothing of it is in the root netns.
    let a_addr = a.run_ok(&["ip", "-o", "-4", "addr", "show", "dev", a.veth()]);
    assert!(a_addr.contains(&format!("{}/24", a.ip())), "{a_addr}");
    let b_addr = b.run_ok(&["ip", "-o", "-4", "addr", "show", "dev", b.veth()]);
    assert!(b_addr.contains(&format!("{}/24", b.ip())), "{b_addr}");
    let root = String::from_utf8_lossy(&Command::new("ip").args(["-o", "addr"]).output().unwrap().stdout).into_owned();
    assert!(!root.contains(&format!("10.200.{}.", hosts.subnet())) && !root.contains(a.veth()), "{root}");
    let routes = a.run_ok(&["ip", "route"]);
    assert!(!routes.contains("default"), "host a has a default route: {routes}");

    // A connects to a listener in B over the veth; B sees A's address.
    let port = 7000 + hosts.subnet() as u16;
    let mut listen = b.command("/usr/bin/python3");
    listen
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket(); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()\n\
             print('listening', flush=True)\n\
             c, peer = s.accept()\n\
             print(peer[0], c.recv(100).decode().strip(), flush=True)\n",
            &b.ip().to_string(),
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut server = listen.spawn();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let msg = format!("hello-{}", hosts.marker());
    a.run_ok(&["bash", "-c", &format!("echo {msg} > /dev/tcp/{}/{port}", b.ip())]);
    assert_eq!(lines.next().unwrap().unwrap(), format!("{} {msg}", a.ip()));
    assert!(server.wait_timeout(Duration::from_secs(10)).expect("listener exits").success());

    // pid: B's pid namespace is fresh, A's pids start above HOST_A_PID_BASE.
    let sleep_b = b.spawn(&["sleep", "1000"]);
    assert!(sleep_b.host_pid() < 100, "first processes in b have small pids: {}", sleep_b.host_pid());
    assert_ne!(sleep_b.host_pid(), sleep_b.pid());
    assert_eq!(b.pid_in_host(sleep_b.pid()), Some(sleep_b.host_pid()));
    assert_eq!(b.root_pid(sleep_b.host_pid()), Some(sleep_b.pid()));
    assert_eq!(a.pid_in_host(sleep_b.pid()), None);
    assert_eq!(b.pid_in_host(std::process::id() as i32), None);
    assert_eq!(ns_inode(sleep_b.pid(), "net"), Some(b.net_ns_inode()));
    assert_eq!(ns_inode(sleep_b.pid(), "pid"), Some(b.pid_ns_inode()));
    // /proc inside B shows B's pids; inside A that pid is not the sleep.
    let hp = sleep_b.host_pid();
    assert_eq!(b.run_ok(&["cat", &format!("/proc/{hp}/cmdline")]).replace('\0', " ").trim(), "sleep 1000");
    let in_a = a.run(&["cat", &format!("/proc/{hp}/cmdline")]);
    assert!(!stdout(&in_a).contains("sleep"), "b's sleep visible in a as pid {hp}");
    let b_pid: i32 = b.run_ok(&["sh", "-c", "echo $$"]).trim().parse().unwrap();
    assert!(b_pid < 100, "b's pid {b_pid}");
    let a_pid: i32 = a.run_ok(&["sh", "-c", "echo $$"]).trim().parse().unwrap();
    assert!(a_pid > HOST_A_PID_BASE, "a's pid {a_pid}");
    // Every process of B, seen from the root: its init, the sleep (and nothing of A).
    let procs = b.processes();
    assert!(procs.contains(&b.init_pid()) && procs.contains(&sleep_b.pid()), "{procs:?}");
    assert!(!procs.contains(&a.init_pid()));

    // The host's waiter mirrors the command's exit code and signal.
    assert_eq!(a.run(&["sh", "-c", "exit 7"]).status.code(), Some(7));
    let mut t = a.spawn(&["sleep", "1000"]);
    t.signal(libc::SIGTERM);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(t.wait_timeout(Duration::from_secs(10)).expect("sleep ends").signal(), Some(libc::SIGTERM));

    // current_dir is honoured inside the host.
    let mut pwd = a.command("pwd");
    pwd.current_dir(hosts.tmp());
    assert_eq!(pwd.output_ok(Duration::from_secs(10)).trim(), hosts.tmp().display().to_string());
    // pre_exec closures run in the command itself, inside the host: setsid makes
    // it a session leader there.
    let mut leader = a.command("sh");
    leader.args(["-c", "cut -d' ' -f1,6 /proc/$$/stat"]); // pid, session
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        leader.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let ids: Vec<String> = leader.output_ok(Duration::from_secs(10)).split_whitespace().map(String::from).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "sh is its session's leader inside a");

    drop(server);
    let watched = watch(&hosts);
    assert!(watched.iter().any(|(p, ..)| *p == sleep_b.pid()));
    drop(hosts); // before sleep_b: the hosts' drop must not depend on it
    assert_nothing_left(&fp, &watched);
    drop(sleep_b);
}

#[test]
fn ssh_from_a_runs_commands_in_b() {
    let root_ssh = Path::new("/root/.ssh");
    let hosts = Hosts::new("ssh");
    let fp = hosts.fingerprint();
    let before = snapshot(root_ssh);
    let sshd = hosts.start_sshd();
    let (a, b) = (&hosts.a, &hosts.b);
    // The bind mount over /root/.ssh is A's alone.
    assert_eq!(snapshot(root_ssh), before, "/root/.ssh changed outside host a");
    assert!(a.run_ok(&["cat", "/root/.ssh/config"]).contains("StrictHostKeyChecking yes"));
    let names_in_b: Vec<String> = b.run_ok(&["ls", "-A", "/root/.ssh"]).lines().map(String::from).collect();
    assert_eq!(names_in_b, before.keys().cloned().collect::<Vec<_>>(), "b sees a's /root/.ssh");

    // Explicit options.
    let mut argv = sshd.ssh_command();
    argv.push("hostname".into());
    let argv: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
    assert_eq!(a.run_ok(&argv).trim(), b.hostname(), "sshd log: {}", sshd.log());

    // Plain ssh, as `crust migrate --to ssh://root@10.200.X.2` will run it; the
    // command runs in B's namespaces.
    let dest = sshd.destination();
    let ns = a.run_ok(&["ssh", &dest, "hostname; readlink /proc/self/ns/pid /proc/self/ns/net"]);
    assert_eq!(
        ns.lines().collect::<Vec<_>>(),
        [b.hostname().to_string(), format!("pid:[{}]", b.pid_ns_inode()), format!("net:[{}]", b.net_ns_inode())],
        "sshd log: {}",
        sshd.log()
    );
    // ssh -F CONFIG hostb, and crust itself at the same path in B.
    let cfg = sshd.ssh_config();
    let help = a.run_ok(&["ssh", "-F", cfg.to_str().unwrap(), sshd.host_alias(), CRUST, "--help"]);
    assert!(help.contains("Usage"), "{help}");
    // stdin/stdout pass through ssh unchanged (as a migration stream would).
    let echo = a.run_ok(&["sh", "-c", &format!("printf 'abc\\000def' | ssh {dest} cat | od -An -c | tr -s ' '")]);
    assert_eq!(echo.trim(), "a b c \\0 d e f");

    // A wrong host key is refused (StrictHostKeyChecking is real).
    let out = a.run(&["ssh", "-o", "UserKnownHostsFile=/dev/null", &dest, "true"]);
    assert!(!out.status.success());

    let watched = watch(&hosts);
    assert!(watched.iter().any(|(p, ..)| *p == sshd.pid()));
    drop(sshd);
    drop(hosts);
    assert_eq!(snapshot(root_ssh), before, "/root/.ssh changed");
    assert_nothing_left(&fp, &watched);
}

#[test]
fn nothing_left_after_drop_even_on_panic() {
    let mut fps = Vec::new();
    let mut watched = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let hosts = Hosts::new("panic");
        fps.push(hosts.fingerprint());
        let _sshd = hosts.start_sshd();
        // Processes the test forgets about, in both hosts, one of them daemonized
        // into B's init, and one in A in a session of its own.
        std::mem::forget(hosts.a.spawn(&["sleep", "1000"]));
        hosts.b.run_ok(&["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 < /dev/null &"]);
        hosts.a.run_ok(&["sh", "-c", "setsid sleep 1001 >/dev/null 2>&1 < /dev/null &"]);
        assert!(hosts.b.processes().len() >= 3);
        watched = watch(&hosts);
        panic!("on purpose");
    }));
    assert!(r.is_err());
    // inits, unshares, sshd, sleeps, the forgotten waiter.
    assert!(watched.len() >= 9, "{:?}", watched.iter().map(|(p, c, _)| format!("{p} {c}")).collect::<Vec<_>>());
    assert_nothing_left(&fps[0], &watched);
    for p in &fps[0].init_pids {
        assert!(!cmdline(*p).contains(&fps[0].marker));
    }
}
