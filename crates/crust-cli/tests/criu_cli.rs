//! crust as `criu`: real dumps and restores driven by criu's command line,
//! crust run through a link named `criu` in a directory of the test's own
//! (the system's criu is left alone): lxc-checkpoint's argv on a tree
//! without namespaces, `-o` relative to `-W`, `--pidfile`, config files,
//! action scripts, `--version`, `check --feature` and unknown options.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::job::{counters, Job, STEP};
use common::{assert_clean_failure, crust, os, run_with_timeout, TempDir, CRUST};

/// A directory of the test's own with `criu` linked to crust.
struct Criu {
    dir: TempDir,
}

impl Criu {
    fn new(test: &str) -> Criu {
        let dir = TempDir::new(test);
        std::os::unix::fs::symlink(CRUST, dir.join("criu")).expect("linking criu to crust");
        Criu { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("criu")
    }

    /// A scratch path in the test's directory.
    fn join(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// `criu ARGS` with HOME set to the test's directory (no default config
    /// of the machine's user is read), run from there.
    fn run(&self, args: &[&str]) -> Output {
        self.run_in(args, &self.dir.join("."), &[])
    }

    fn run_in(&self, args: &[&str], cwd: &Path, env: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new(self.path());
        cmd.args(args).current_dir(cwd).env("HOME", self.dir.path()).env_remove("CRIU_CONFIG_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_with_timeout(&mut cmd, STEP)
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(out.status.success(), "criu {args:?} failed ({:?}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        out
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A test_mm job that has counted a little.
fn counting_job(dir: &Path) -> Job {
    let mut job = Job::start("test_mm", &[], dir);
    job.ready();
    for _ in 0..4 {
        job.line(STEP);
    }
    job
}

/// The last counter of each thread once the dump stopped it.
fn last_counters(job: &mut Job) -> BTreeMap<String, i64> {
    job.drain();
    let last = counters(&job.history);
    assert_eq!(last.len(), 2, "both threads counted before the dump: {:?}", job.history);
    last
}

/// The job is still the original and counts on (a dump let it run).
fn assert_still_counting(job: &mut Job) {
    job.drain();
    let before = counters(&job.history);
    for _ in 0..4 {
        job.line(STEP);
    }
    let after = counters(&job.history);
    for (t, n) in &before {
        assert!(after[t] > *n, "{t} counts on after the dump that let it run: {:?}", job.history);
    }
}

#[test]
fn version_prints_version_x_y_first() {
    let criu = Criu::new("criu-version");
    for flag in ["--version", "-V"] {
        let out = criu.ok(&[flag]);
        let first = text(&out.stdout).lines().next().unwrap_or_default().to_string();
        let v = first.strip_prefix("Version: ").unwrap_or_else(|| panic!("first line of criu {flag}: {first:?}"));
        let parts: Vec<u32> = v.split('.').map(|n| n.parse().expect("a number")).collect();
        assert!(parts.len() == 2 && (parts[0], parts[1]) >= (3, 16), "crust claims criu 3.16 or later as X.Y: {v}");
    }
}

#[test]
fn unknown_options_and_commands_exit_1_naming_them() {
    let criu = Criu::new("criu-unknown");
    for (args, named) in [
        (&["dump", "--no-such-option", "-t", "1"][..], "--no-such-option"),
        (&["-Z", "dump"][..], "'Z'"),
        (&["frobnicate"][..], "frobnicate"),
        (&["dump", "-t"][..], "'t'"),
        (&["restore", "--tcp-established=yes"][..], "--tcp-established"),
        (&["restore", "--lazy-pages"][..], "--lazy-pages"),
        (&["swrk", "3"][..], "swrk"),
    ] {
        let out = criu.run(args);
        let err = assert_clean_failure(&out, &format!("criu {args:?}"));
        assert_eq!(out.status.code(), Some(1), "criu {args:?} exits 1 as criu does: {err}");
        assert!(err.contains(named), "criu {args:?}: the message names {named}: {err}");
    }
}

#[test]
fn check_and_check_feature_answer_with_criu_exit_codes() {
    let criu = Criu::new("criu-check");
    let out = criu.ok(&["check"]);
    assert!(text(&out.stdout).contains("Looks good."), "{}", text(&out.stdout));
    // Pre-dump chains work (pages compared with the parent images).
    criu.ok(&["check", "--feature", "mem_dirty_track"]);
    // No lazy (post-copy) restore: LXC and runc must not ask for one.
    for f in ["uffd-noncoop", "uffd", "lazy_pages"] {
        let out = criu.run(&["check", "--feature", f]);
        assert_eq!(out.status.code(), Some(1), "{f}: {}", text(&out.stdout));
        assert!(text(&out.stdout).contains("not supported"), "{f}: {}", text(&out.stdout));
    }
    let out = criu.run(&["check", "--feature", "no_such_feature"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("Unknown feature no_such_feature"), "{}", text(&out.stderr));
}

/// lxc-checkpoint's options (LXC 5.0.2) common to its dump and restore, for
/// a container without a console; those about mounts are no-ops for a tree
/// in crust's own mount namespace.
const LXC_COMMON: &[&str] = &[
    "--tcp-established",
    "--file-locks",
    "--link-remap",
    "--manage-cgroups=full",
    "--ext-mount-map",
    "auto",
    "--enable-external-sharing",
    "--enable-external-masters",
    "--enable-fs",
    "hugetlbfs",
    "--enable-fs",
    "tracefs",
];

/// A freezer cgroup (v1) of the test's own, as LXC gives each container;
/// declared before the job in it, it is thawed and removed after the job
/// killed its processes.
struct Freezer {
    name: String,
    dir: PathBuf,
}

impl Freezer {
    fn new() -> Freezer {
        let name = format!("crust-criu-cli-{}", std::process::id());
        let dir = Path::new("/sys/fs/cgroup/freezer").join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Freezer { name, dir }
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
        // A killed task leaves the cgroup a moment after it is reaped.
        for _ in 0..500 {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(std::time::Duration::from_millis(10)),
                _ => return,
            }
        }
    }
}

#[test]
fn lxc_checkpoint_argv_dumps_and_restores_a_tree_without_namespaces() {
    let criu = Criu::new("criu-lxc");
    let tmp = TempDir::new("criu-lxc-job");
    let images = tmp.join("images");
    std::fs::create_dir(&images).unwrap();
    let d = images.to_str().unwrap();
    let freezer = Freezer::new();
    let mut job = Job::build("test_mm", &[]).cgroups(std::slice::from_ref(&freezer.dir)).start(tmp.path());
    job.ready();
    for _ in 0..4 {
        job.line(STEP);
    }
    let pid = job.pid.to_string();
    // LXC names the container's cgroups as roots, and freezes through its freezer.
    let cgroup_root = format!("freezer:/{}", freezer.name);
    let freeze = freezer.dir.to_str().unwrap();

    // What crust cannot do yet is refused by name, and the tree runs on.
    let mut args = vec!["dump", "-D", d, "-t", &pid, "--external", "tty[8801:0]"];
    args.extend_from_slice(LXC_COMMON);
    let err = assert_clean_failure(&criu.run(&args), "dump with an external tty");
    assert!(err.contains("--external tty[8801:0]"), "{err}");
    assert_still_counting(&mut job);

    let log = format!("{d}/dump.log");
    let mut args = vec!["dump"];
    args.extend_from_slice(LXC_COMMON);
    args.extend_from_slice(&["-D", d, "-o", &log, "--cgroup-root", &cgroup_root, "-v4", "--ext-mount-map", "/dev/console:console"]);
    args.extend_from_slice(&["-t", &pid, "--skip-in-flight", "--freeze-cgroup", freeze, "--force-irmap"]);
    let out = criu.ok(&args);
    assert!(out.stdout.is_empty(), "criu dump is silent on success: {}", text(&out.stdout));
    job.reap_original();
    let last = last_counters(&mut job);
    let log = std::fs::read_to_string(&log).expect("dump.log");
    for noop in ["--link-remap", "--force-irmap", "--ext-mount-map auto", "--enable-fs tracefs"] {
        assert!(log.contains(&format!("{noop}: no effect")), "the -v4 log says why {noop} does nothing: {log}");
    }

    // Restore-only container options crust cannot honour: refused by name,
    // nothing left behind.
    for (extra, named) in [
        (&["--inherit-fd", "fd[1]:tty"][..], "--inherit-fd fd[1]:tty"),
        (&["--root", tmp.path().to_str().unwrap()][..], "--root"),
        (&["--lsm-profile", "apparmor:lxc-container-default"][..], "--lsm-profile"),
    ] {
        let mut args = vec!["restore", "-D", d, "--restore-detached"];
        args.extend_from_slice(LXC_COMMON);
        args.extend_from_slice(extra);
        let err = job.assert_restore_failed(&criu.run(&args), &format!("restore with {extra:?}"));
        assert!(err.contains(named), "the refusal names {named}: {err}");
    }

    let mut args = vec!["restore"];
    args.extend_from_slice(LXC_COMMON);
    args.extend_from_slice(&["-D", d, "-o", "restore.log", "-v4", "--cgroup-root", &cgroup_root, "--root", "/", "--restore-detached", "--display-stats"]);
    let out = criu.ok(&args);
    assert!(text(&out.stdout).starts_with("Displaying restore stats:"), "{}", text(&out.stdout));
    job.adopt_restored();
    job.assert_counts_on_from(&last);
    assert!(images.join("restore.log").exists(), "-o is relative to the work directory, which is -D without -W");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.lines().any(|l| l.ends_with(&format!(":freezer:/{}", freezer.name))), "back in its freezer cgroup: {cgroups}");
    job.expect_ok();
}

#[test]
fn log_file_is_relative_to_the_work_dir_and_pidfile_gets_the_root() {
    let criu = Criu::new("criu-workdir");
    let tmp = TempDir::new("criu-workdir-job");
    let (images, work) = (tmp.join("images"), tmp.join("work"));
    std::fs::create_dir(&work).unwrap();
    let mut job = counting_job(tmp.path());
    let pid = job.pid.to_string();
    // -D made by the dump; -W relative to where criu was started.
    let out = criu.run_in(&["dump", "-t", &pid, "-D", "images", "-W", "work", "-o", "d.log", "-v4"], tmp.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    job.reap_original();
    let last = last_counters(&mut job);
    assert!(work.join("d.log").exists() && !images.join("d.log").exists(), "the log is in -W");
    assert!(images.join("inventory.img").exists(), "the images are in -D");

    // crust's own commands take -D too.
    for cmd in ["show", "explain", "check"] {
        let out = crust(&[os(cmd), os("-D"), images.as_os_str()], STEP);
        assert!(out.status.success(), "crust {cmd} -D: {}", text(&out.stderr));
    }

    let out = criu.run_in(&["restore", "-D", "images", "-d", "--pidfile", "root.pid", "-o", "r.log"], tmp.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    job.adopt_restored();
    let written = std::fs::read_to_string(images.join("root.pid")).expect("the pid file, in the work directory (-D here)");
    assert_eq!(written.trim(), pid);
    assert!(images.join("r.log").exists());
    job.assert_counts_on_from(&last);
    job.expect_ok();
}

#[test]
fn config_files_set_options_and_the_command_line_overrides_them() {
    let criu = Criu::new("criu-config");
    let tmp = TempDir::new("criu-config-job");
    let images = tmp.join("images");
    let d = images.to_str().unwrap();
    let mut job = counting_job(tmp.path());
    let pid = job.pid.to_string();

    // --config FILE: its options, quoted values and comments.
    let conf = criu.join("my.conf");
    std::fs::write(&conf, "# as criu's manual shows\nleave-running   # keep it going\nlog-file \"from config.log\"\nverbosity=4\n").unwrap();
    criu.ok(&["dump", "-t", &pid, "-D", d, "--config", conf.to_str().unwrap()]);
    assert!(images.join("from config.log").exists(), "log-file from the config file");
    assert_still_counting(&mut job);

    // The default config file in $HOME/.criu, read without --config.
    std::fs::create_dir(criu.join(".criu")).unwrap();
    std::fs::write(criu.join(".criu/default.conf"), "leave-running\n").unwrap();
    let second = tmp.join("second");
    criu.ok(&["dump", "-t", &pid, "-D", second.to_str().unwrap()]);
    assert!(second.join("inventory.img").exists());
    assert_still_counting(&mut job);

    // A config file may not carry a command.
    std::fs::write(&conf, "dump\n").unwrap();
    let out = criu.run(&["dump", "-t", &pid, "-D", d, "--config", conf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_still_counting(&mut job);

    // The command line's --no-leave-running wins over the default file.
    let third = tmp.join("third");
    criu.ok(&["dump", "-t", &pid, "-D", third.to_str().unwrap(), "--no-leave-running"]);
    job.reap_original();
}

#[test]
fn action_scripts_hear_each_action_in_order_with_criu_environment() {
    let criu = Criu::new("criu-scripts");
    let tmp = TempDir::new("criu-scripts-job");
    let images = tmp.join("images");
    let d = images.to_str().unwrap();
    let heard = criu.join("heard");
    // A command line, run by the shell as criu runs action scripts.
    let script = format!("echo \"$CRTOOLS_SCRIPT_ACTION ${{CRTOOLS_INIT_PID:-none}} $CRTOOLS_IMAGE_DIR\" >> '{}'", heard.display());
    let mut job = counting_job(tmp.path());
    let p = job.pid.to_string();
    criu.ok(&["dump", "-t", &p, "-D", d, "--action-script", &script]);
    job.reap_original();
    let last = last_counters(&mut job);
    criu.ok(&["restore", "-D", d, "-d", "--action-script", &script]);
    job.adopt_restored();
    let lines: Vec<String> = std::fs::read_to_string(&heard).unwrap().lines().map(str::to_string).collect();
    let expected: Vec<String> = [
        ("pre-dump", p.as_str()),
        ("network-lock", &p),
        ("post-dump", &p),
        ("pre-restore", "none"),
        ("setup-namespaces", &p),
        ("post-setup-namespaces", &p),
        ("post-restore", &p),
        ("pre-resume", &p),
        ("network-unlock", &p),
        ("post-resume", &p),
    ]
    .iter()
    .map(|(action, pid)| format!("{action} {pid} {d}"))
    .collect();
    assert_eq!(lines, expected);
    job.assert_counts_on_from(&last);
    job.expect_ok();
}

/// A busybox container of LXC's busybox template in a path of the test's
/// own, as DESIGN.md section 6 found LXC needs for criu here (no network,
/// console or ttys, no AppArmor); stopped and destroyed on drop.
struct Container {
    path: TempDir,
    name: String,
}

impl Container {
    fn lxc(&self, tool: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(tool);
        cmd.arg("-P").arg(self.path.path()).arg("-n").arg(&self.name).args(args);
        run_with_timeout(&mut cmd, STEP)
    }

    fn create(test: &str) -> Container {
        let c = Container { path: TempDir::new(test), name: format!("crust-{}", std::process::id()) };
        let conf = c.path.join("base.conf");
        std::fs::write(&conf, "lxc.net.0.type = empty\nlxc.console.path = none\nlxc.apparmor.profile = unconfined\n").unwrap();
        let out = c.lxc("lxc-create", &["-t", "busybox", "-f", conf.to_str().unwrap()]);
        assert!(out.status.success(), "lxc-create: {}", text(&out.stderr));
        // The template sets ttys of its own after our file: none.
        let config = c.path.join(format!("{}/config", c.name));
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace("lxc.tty.max = 5", "lxc.tty.max = 0")).unwrap();
        let out = c.lxc("lxc-start", &["-d"]);
        assert!(out.status.success(), "lxc-start: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    /// Its state and init's pid, as lxc-info says.
    fn info(&self) -> (String, String) {
        let out = self.lxc("lxc-info", &["-s", "-p", "-H"]);
        let t = text(&out.stdout);
        // "State:   RUNNING", "PID:   123" (-H: numbers not humanized).
        let mut lines = t.lines().map(|l| l.split_whitespace().last().unwrap_or_default().to_string());
        (lines.next().unwrap_or_default(), lines.next().unwrap_or_default())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.lxc("lxc-stop", &["-k"]);
        self.lxc("lxc-destroy", &[]);
    }
}

#[test]
fn lxc_checkpoint_of_a_container_dumps_it_and_stops_it() {
    if Command::new("lxc-checkpoint").arg("--version").output().is_err() {
        panic!("lxc-checkpoint is missing: scripts/setup installs lxc");
    }
    let criu = Criu::new("criu-lxc-container");
    let c = Container::create("lxc-container");
    let (state, pid) = c.info();
    assert_eq!(state, "RUNNING", "the container runs before the checkpoint");
    let images = c.path.join("images");
    let path = format!("{}:{}", criu.dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let out = run_with_timeout(
        Command::new("lxc-checkpoint")
            .args(["-P", c.path.path().to_str().unwrap(), "-n", &c.name, "-D", images.to_str().unwrap(), "-s"])
            .env("PATH", path),
        STEP,
    );
    // The container's namespaces and mounts are taken now (LXC's /dev, a
    // tmpfs, is read from crust's namespaces): the dump goes through, and
    // -s stops the container.
    assert!(out.status.success(), "lxc-checkpoint: {}", text(&out.stderr));
    assert!(images.join("inventory.img").exists(), "the images are written");
    assert_eq!(c.info().0, "STOPPED", "lxc-checkpoint -s stops the container (init was {pid})");
}
