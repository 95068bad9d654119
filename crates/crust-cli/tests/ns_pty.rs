//! Ptys of a container's own devpts instance: a server on a master opened
//! from the container's /dev/ptmx, a "shell" on the slave leading its own
//! session with a job in the foreground (the ptys workload), dumped with the
//! container and restored into the container's new devpts instance under
//! the same numbers (which the host's /dev/pts has taken too).
//!
//! Run: `cargo test -p crust-cli --test ns_pty` (as root).

mod common;

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use common::container::{Container, Options};
use common::job::*;
use common::*;

/// The first line of `file` starting with one of `prefixes` (within 10 s).
fn wait_line(file: &Path, prefixes: &[&str]) -> String {
    let found = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines().find(|l| prefixes.iter().any(|p| l.starts_with(p))).map(str::to_string)
    });
    found.unwrap_or_else(|| panic!("no {prefixes:?} line in {}: {:?}", file.display(), std::fs::read_to_string(file)))
}

/// What a process of the container sees of its terminal: the name of its
/// stdin (as `tty` gives it), and whether that name inside the container is
/// the very terminal (same device number on the same devpts instance).
fn terminal_of(pid: i32) -> (String, bool) {
    let name = std::fs::read_link(format!("/proc/{pid}/fd/0")).expect("the shell's stdin").display().to_string();
    let held = std::fs::metadata(format!("/proc/{pid}/fd/0")).expect("stat of the shell's stdin");
    let named = std::fs::metadata(format!("/proc/{pid}/root{name}")).expect("stat of the name inside the container");
    (name, (held.dev(), held.rdev()) == (named.dev(), named.rdev()))
}

/// Host ptys opened until the host's /dev/pts/`index` is one of them (or
/// someone else's), kept open by the caller.
fn hold_host_pty(index: i32) -> Vec<std::fs::File> {
    let mut held = Vec::new();
    while !Path::new(&format!("/dev/pts/{index}")).exists() {
        assert!(held.len() < 256, "the host's /dev/pts/{index} never appeared");
        let f = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open("/dev/ptmx").expect("opening the host's /dev/ptmx");
        held.push(f);
    }
    held
}

/// The ptys workload inside a container, through its own devpts's ptmx.
fn start(name: &str, dir: &Path) -> Container {
    let setup = format!(
        "mkdir -p $R/lib64 && mount --bind /lib64 $R/lib64\ncp {} $R/bin/ptys\nln -s pts/ptmx $R/dev/ptmx",
        workload_path("ptys").display()
    );
    let after = format!("/bin/ptys >/data/{name}-ptys.out 2>&1 </dev/null &");
    Container::start(name, dir, &Options { extra_setup: &setup, after_pivot: &after, ..Default::default() })
}

#[test]
fn a_pty_of_the_containers_own_devpts_comes_back_under_its_number() {
    let dir = TempDir::new("ns-pty");
    let out = dir.join("ptybox-ptys.out");
    let mut c = start("ptybox", dir.path());
    let ready = wait_line(&out, &["READY"]);
    let server: i32 = ready.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("the server's pid");
    let (shell, index) = (ready_field(&ready, "shell"), ready_field(&ready, "index"));
    let name = format!("/dev/pts/{index}");
    assert_eq!(terminal_of(shell), (name.clone(), true), "the shell is on the container's {name}");
    // The host's /dev/pts/INDEX, held by the test: a pty of another
    // instance, neither a holder of the container's nor in the way of it.
    let _host_ptys = hold_host_pty(index);
    let images = dir.join("images");
    dump(c.job.pid, &images, &["--ext-mount-map", "auto"]);
    let infos = crit_show(&images.join("tty-info.img"));
    let devs: Vec<u64> = infos["entries"].as_array().expect("tty-info entries").iter().filter(|e| e["pty"]["index"].as_u64() == Some(index as u64)).map(|e| num(&e["dev"])).collect();
    assert!(devs.len() == 2 && devs[0] == devs[1] && devs[0] != 0, "master and slave name the container's devpts: {infos}");
    c.job.reap_original();
    // The shell's session (the shell and its job), killed by the dump too.
    end_session(shell);
    let last = c.last_count();
    let out_restore = restore(&images, &[]);
    assert!(out_restore.status.success(), "restore: {}", String::from_utf8_lossy(&out_restore.stderr));
    c.job.adopt_restored();
    c.assert_counts_on_from(last);
    assert_eq!(terminal_of(shell), (name.clone(), true), "the shell is on the container's {name} again");
    // The server checks termios, window size, packet mode, number, session
    // and foreground group through its master, then a line goes round.
    // SAFETY: kill(2) of the restored server.
    assert_eq!(unsafe { libc::kill(server, libc::SIGUSR1) }, 0);
    assert_eq!(wait_line(&out, &["OK", "FAIL"]), "OK", "the server's check after the restore");
    c.job.kill_restored();
    end_session(shell);
}

/// A devpts mounted on the host at a path of the test's, unmounted on drop.
struct HostDevpts(std::path::PathBuf);

impl Drop for HostDevpts {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A pty of a devpts instance that is neither the host's /dev/pts nor a
/// container's own (a second devpts the host mounts) is refused by name,
/// and its holder runs on.
#[test]
fn a_pty_of_another_devpts_of_the_host_is_refused_by_name() {
    let dir = TempDir::new("ns-pty-other");
    let pts = dir.join("pts");
    std::fs::create_dir(&pts).unwrap();
    let mounted = std::process::Command::new("mount").args(["-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts"]).arg(&pts).status().expect("mount");
    assert!(mounted.success(), "mounting a devpts at {}", pts.display());
    let _mounted = HostDevpts(pts.clone());
    let code = "import fcntl, os, struct, sys, time\n\
                d = sys.argv[1]\n\
                m = os.open(d + '/ptmx', os.O_RDWR | os.O_NOCTTY)\n\
                fcntl.ioctl(m, 0x40045431, struct.pack('i', 0))\n\
                n = struct.unpack('I', fcntl.ioctl(m, 0x80045430, b'0000'))[0]\n\
                s = os.open('%s/%d' % (d, n), os.O_RDWR | os.O_NOCTTY)\n\
                print('READY', os.getpid(), flush=True)\n\
                time.sleep(600)\n";
    let pts_s = pts.to_str().expect("a UTF-8 temp path");
    let mut job = Job::build("holder", &["-c", code, pts_s]).program(Path::new("/usr/bin/python3")).start(dir.path());
    let pid = job.pid;
    assert_eq!(job.ready(), pid.to_string());
    let images = dir.join("images");
    let out = crust(&dump_args(&pid.to_string(), &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a pty of a second devpts of the host");
    assert!(err.contains("devpts instance") && err.contains(&format!("process {pid}")) && err.contains("not supported"), "the refusal names the pty and its instance: {err}");
    assert_no_inventory(&images);
    assert!(proc_stat(pid).is_some_and(|s| s.state != 'Z'), "the holder runs on");
}
