//! `crust`: the command line over the crust engine, with criu's option names.

#![deny(clippy::undocumented_unsafe_blocks)]

mod criu_cli;
mod demo;
mod guard;
mod progress;
mod swrk;

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgAction, Parser, Subcommand};

use std::time::Duration;

use crust::dump::{dump, pre_dump, DumpOptions, DumpStats};
use crust::cgroups::{CgroupRoot, Mode};
use crust::migrate::{migrate, Destination, MigrateOptions};
use crust::restore::{restore, RestoreOptions, Restored};
use crust::notify::Notify;

#[derive(Parser)]
#[command(name = "crust", version, about = "Checkpoint/restore for Linux process trees (CRIU-compatible images)")]
struct Cli {
    /// Write logs to this file instead of stderr.
    #[arg(short = 'o', long = "log-file", global = true)]
    log_file: Option<PathBuf>,
    /// More log output (repeat for more).
    #[arg(short = 'v', action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Freeze the process tree rooted at PID and write its state to DIR.
    Dump {
        /// Root of the process tree to dump.
        #[arg(short = 't', long = "tree", value_name = "PID")]
        pid: i32,
        /// Directory for the images (created 0700 if missing).
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Let the tree run on after the dump instead of killing it.
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
        /// The tree is a job of a shell: its session leader is outside the tree.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Record cgroup paths relative to this root ([controller:]/path; repeatable).
        #[arg(long = "cgroup-root", value_name = "[CONTROLLER:]/PATH")]
        cgroup_roots: Vec<CgroupRoot>,
        /// Freeze the tree through this cgroup's freezer before seizing it.
        #[arg(long = "freeze-cgroup", value_name = "PATH")]
        freeze_cgroup: Option<PathBuf>,
        /// The largest deleted file carried in the images (bytes, or with K, M, G).
        #[arg(long = "ghost-limit", value_name = "SIZE", value_parser = parse_size)]
        ghost_limit: Option<u64>,
        /// Save the tree's file locks (flock, POSIX, OFD); without it a lock stops the dump.
        #[arg(long = "file-locks")]
        file_locks: bool,
        /// Save datagram unix sockets connected to a named socket outside the
        /// tree (a logger's /dev/log); the restore connects them to that name.
        #[arg(short = 'x', long = "ext-unix-sk")]
        ext_unix_sk: bool,
        #[command(flatten)]
        tcp: TcpArgs,
        /// Namespaces of the tree's own to leave out: net (its caller
        /// configures the network namespace itself; restore with --empty-ns net).
        #[arg(long = "empty-ns", value_name = "net")]
        empty_ns: Vec<String>,
        /// Leave out TCP connections not accepted yet (in a listener's
        /// queue or being set up), instead of refusing the dump.
        #[arg(long = "skip-in-flight")]
        skip_in_flight: bool,
        /// The images of a pre-dump (or dump) before this one, relative to
        /// DIR: pages they hold unchanged are not written again (a `parent`
        /// link in DIR points there; a restore reads them from the chain).
        #[arg(long = "prev-images-dir", value_name = "REL")]
        prev_images_dir: Option<PathBuf>,
        /// Let a later dump take this one as its parent (criu's option; crust
        /// compares pages with the parent's, so any dump can be one).
        #[arg(long = "track-mem")]
        track_mem: bool,
        /// Run this program at each of criu's action points (pre-dump,
        /// network-lock, post-dump, pre-restore ... post-resume), with the
        /// point in CRTOOLS_SCRIPT_ACTION; its failure stops the work (repeatable).
        #[arg(long = "action-script", value_name = "PATH")]
        action_scripts: Vec<PathBuf>,
        /// Print the stats as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ns: NsArgs,
    },
    /// Write the memory of the tree rooted at PID to DIR and let it run on:
    /// a later `dump --prev-images-dir` writes only the pages changed since.
    PreDump {
        #[arg(short = 't', long = "tree", value_name = "PID")]
        pid: i32,
        /// Directory for the images (created 0700 if missing).
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// The images of the pre-dump before this one, relative to DIR.
        #[arg(long = "prev-images-dir", value_name = "REL")]
        prev_images_dir: Option<PathBuf>,
        /// Let a later dump take this one as its parent (always so in crust).
        #[arg(long = "track-mem")]
        track_mem: bool,
        /// Freeze the tree through this cgroup's freezer before seizing it.
        #[arg(long = "freeze-cgroup", value_name = "PATH")]
        freeze_cgroup: Option<PathBuf>,
        /// Run this program at each of criu's action points (pre-dump,
        /// network-lock, post-dump, pre-restore ... post-resume), with the
        /// point in CRTOOLS_SCRIPT_ACTION; its failure stops the work (repeatable).
        #[arg(long = "action-script", value_name = "PATH")]
        action_scripts: Vec<PathBuf>,
        /// Print the stats as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring back the tree dumped in DIR.
    Restore {
        /// Directory with the images.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Return once the tree runs, instead of waiting for its root to exit.
        #[arg(short = 'd', long = "restore-detached")]
        detach: bool,
        /// Post-copy: let the tree run before its private anonymous memory
        /// is in; crust puts pages in as they are touched (userfaultfd) and
        /// pushes the rest meanwhile, and exits once all are in.
        #[arg(long = "lazy-pages")]
        lazy_pages: bool,
        /// The tree is a shell job: it joins this terminal's session.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Write the root's pid to this file.
        #[arg(long, value_name = "FILE")]
        pidfile: Option<PathBuf>,
        /// What to do with the recorded cgroups: ignore, none, props, soft, full, strict.
        #[arg(long = "manage-cgroups", default_value = "soft", value_name = "MODE")]
        manage_cgroups: Mode,
        /// Put the tree's cgroups under this root ([controller:]/path; repeatable).
        #[arg(long = "cgroup-root", value_name = "[CONTROLLER:]/PATH")]
        cgroup_roots: Vec<CgroupRoot>,
        /// Seconds to wait for pids of the image that are still being released.
        #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
        pid_wait: f64,
        /// Give the tree crust's fd N for the file KEY it shared with
        /// processes outside it at dump (fd[N]:pipe:[INO]; repeatable).
        #[arg(long = "inherit-fd", value_name = "fd[N]:KEY", value_parser = crust::files::parse_inherit_fd)]
        inherit_fds: Vec<(i32, String)>,
        #[command(flatten)]
        tcp: TcpArgs,
        #[command(flatten)]
        net: NetArgs,
        /// Run this program at each of criu's action points (pre-dump,
        /// network-lock, post-dump, pre-restore ... post-resume), with the
        /// point in CRTOOLS_SCRIPT_ACTION; its failure stops the work (repeatable).
        #[arg(long = "action-script", value_name = "PATH")]
        action_scripts: Vec<PathBuf>,
        /// Print the stats as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ns: NsArgs,
    },
    /// Remove network locks (nftables tables) holding TCP connections of
    /// dumped trees: those a crust killed half-way left (the default), the
    /// one a dump in DIR kept for its restore (-D), or every one whose crust
    /// no longer runs (--all). Lists what it finds.
    NetworkUnlock {
        /// The dump whose lock to remove.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR", conflicts_with = "all")]
        dir: Option<PathBuf>,
        /// Also the locks dumps kept for their restores.
        #[arg(long)]
        all: bool,
    },
    /// Move the tree rooted at PID to another host: dump, send, check, restore
    /// there, and kill it here only once it runs there.
    Migrate {
        #[arg(short = 't', long = "tree", value_name = "PID")]
        pid: i32,
        /// ssh://[user@]host[:port] or tcp://host:port (a `crust serve`).
        #[arg(long = "to", value_name = "DEST")]
        to: Destination,
        /// Pre-shared key file, for tcp://.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// crust's path on the destination, for ssh:// (default: this crust's path).
        #[arg(long = "remote-crust", value_name = "PATH")]
        remote_crust: Option<String>,
        #[arg(long = "manage-cgroups", default_value = "soft", value_name = "MODE")]
        manage_cgroups: Mode,
        #[arg(long = "cgroup-root", value_name = "[CONTROLLER:]/PATH")]
        cgroup_roots: Vec<CgroupRoot>,
        /// Keep the stats images of the move in DIR (stats-dump,
        /// stats-restore, stats-migrate.json, each 0600); none are written
        /// without it. A directory made for them is 0700.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        stats_dir: Option<PathBuf>,
        /// Unix sockets connected to a named socket outside the tree (a
        /// logger's /dev/log) are connected to that name on the destination.
        #[arg(short = 'x', long = "ext-unix-sk")]
        ext_unix_sk: bool,
        /// Established TCP connections move with the tree (their address
        /// must move too: see --action-script), or arrive closed.
        #[command(flatten)]
        tcp: TcpArgs,
        /// Run this program, on this host, at each of criu's action points
        /// of the move (pre-dump, network-lock, pre-restore: the
        /// connections are held on both hosts, move their address now;
        /// post-dump, post-restore, pre-resume, network-unlock,
        /// post-resume), with the point in CRTOOLS_SCRIPT_ACTION (repeatable).
        #[arg(long = "action-script", value_name = "PATH")]
        action_scripts: Vec<PathBuf>,
        /// Pre-copy: send the memory in rounds while the tree runs, each
        /// round the pages written since the one before, then freeze it and
        /// send only what was written since the last round (see
        /// crust::migrate::live for when the rounds stop).
        #[arg(long)]
        live: bool,
        /// Print the stats as JSON.
        #[arg(long)]
        json: bool,
        /// The mount at KEY (its mount point in the tree) is a mount from
        /// the host, recorded as VAL; `auto`: every bind mount of a host
        /// path is, by that path. The destination shows the same host
        /// paths (repeatable).
        #[arg(long = "ext-mount-map", value_name = "KEY:VAL|auto")]
        ext_mount_map: Vec<String>,
        /// `veth[IF]:HOSTIF[@BRIDGE]`: the host end of the network
        /// namespace's veth IF, made on the destination (repeatable).
        #[arg(long = "external", value_name = "veth[IF]:HOSTIF[@BRIDGE]")]
        external: Vec<String>,
    },
    /// Receive migrations on ADDR:PORT from peers holding the key.
    Serve {
        #[arg(long, value_name = "ADDR:PORT")]
        listen: String,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where received images (all but the pages) are kept until the tree runs.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Migrations taken at once; further connections are turned away.
        #[arg(long = "max-sessions", default_value_t = 4, value_name = "N")]
        max_sessions: usize,
    },
    /// The receiving end of `crust migrate --to ssh://`: speaks the migration
    /// protocol on standard input and output.
    #[command(hide = true)]
    Receive {
        /// Where received images (all but the pages) are kept until the tree runs.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Will the images in DIR restore on this host? Reports every problem at once.
    Check {
        /// The images to check against this host.
        #[arg(short = 'D', long = "images-dir", visible_alias = "images", value_name = "DIR")]
        images: PathBuf,
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        #[arg(long = "manage-cgroups", default_value = "soft", value_name = "MODE")]
        manage_cgroups: Mode,
        #[arg(long = "cgroup-root", value_name = "[CONTROLLER:]/PATH")]
        cgroup_roots: Vec<CgroupRoot>,
        #[command(flatten)]
        tcp: TcpArgs,
        /// Give the tree crust's fd N for the file KEY it shared with
        /// processes outside it at dump (fd[N]:pipe:[INO]; repeatable).
        #[arg(long = "inherit-fd", value_name = "fd[N]:KEY", value_parser = crust::files::parse_inherit_fd)]
        inherit_fds: Vec<(i32, String)>,
        #[command(flatten)]
        ns: NsArgs,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Say in plain words what the images in DIR hold and what a restore needs.
    Explain {
        /// The images (or give them with -D).
        #[arg(required_unless_present = "images_dir", conflicts_with = "images_dir", value_name = "DIR")]
        dir: Option<PathBuf>,
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        images_dir: Option<PathBuf>,
        /// The cgroup mode a restore would use.
        #[arg(long = "manage-cgroups", default_value = "soft", value_name = "MODE")]
        manage_cgroups: Mode,
        /// The cgroup roots a restore would use.
        #[arg(long = "cgroup-root", value_name = "[CONTROLLER:]/PATH")]
        cgroup_roots: Vec<CgroupRoot>,
    },
    /// Decode the images in DIR and print them as JSON.
    Show {
        /// An images directory, or one image file (or give the directory with -D).
        #[arg(required_unless_present = "images_dir", conflicts_with = "images_dir", value_name = "PATH")]
        path: Option<PathBuf>,
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        images_dir: Option<PathBuf>,
    },
    /// Start the bundled test_mm, checkpoint it and show what was saved.
    Demo,
}

/// Logs at `level` to stderr, or to `log_file` (truncated) if given.
fn init_logging(level: log::LevelFilter, log_file: Option<&std::path::Path>) -> Result<()> {
    let mut b = env_logger::Builder::new();
    b.filter_level(level).format_timestamp_micros();
    if let Some(path) = log_file {
        let f = File::create(path).with_context(|| format!("creating log file {}", path.display()))?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    b.try_init().context("setting up logging")?;
    Ok(())
}

pub fn print_dump_stats(s: &DumpStats, dir: &std::path::Path) {
    // Only a dump with a parent leaves pages in it.
    let in_parent = match s.pages_skipped_parent {
        0 => String::new(),
        n => format!(" ({n} in the parent images)"),
    };
    println!(
        "dumped {} process(es), {} thread(s) to {}: frozen {:.1} ms (freezing {:.1} ms), {} of {} pages written{in_parent}, {:.1} MiB of images",
        s.processes,
        s.threads,
        dir.display(),
        s.frozen_time_us as f64 / 1e3,
        s.freezing_time_us as f64 / 1e3,
        s.pages_written,
        s.pages_scanned,
        s.bytes_written as f64 / (1 << 20) as f64,
    );
    println!("{}", s.cgroups);
}

/// As criu does, the numbers of a restore stay beside the images; the tree
/// runs whether or not they can be written.
fn write_restore_stats(dir: &std::path::Path, restored: &Restored) {
    let stats_path = dir.join("stats-restore");
    if let Err(e) = crust::images::write_image_file(&stats_path, crust::images::Kind::Stats, &restored.stats.entry()) {
        log::warn!("{e}");
    }
}

pub fn print_restore_stats(r: &Restored) {
    let s = &r.stats;
    println!(
        "restored {} process(es), {} thread(s), root pid {}: {:.1} ms ({:.1} ms forking), {} pages written, {} kept shared",
        s.processes,
        s.threads,
        r.root,
        s.restore_time_us as f64 / 1e3,
        s.forking_time_us as f64 / 1e3,
        s.pages_restored,
        s.pages_skipped_cow,
    );
}

/// Whether crust runs in the foreground of the terminal on its stdin.
fn in_terminal_foreground() -> bool {
    let stdin = std::io::stdin();
    nix::unistd::isatty(&stdin).unwrap_or(false) && nix::unistd::tcgetpgrp(&stdin).ok() == Some(nix::unistd::getpgrp())
}

/// A shell job restored in the foreground: crust waits for it as a shell
/// waits for a job it runs in the foreground, and stands for it to the shell
/// that started crust. The job has its own process group and the terminal's
/// foreground, so Ctrl-C and Ctrl-Z reach it. When it stops, crust takes the
/// terminal back and stops the same way, so that the shell shows a stopped
/// job; `fg` (or `bg`) continues crust, which continues the job, giving it
/// the terminal again if crust got it. crust ends as the job ends.
fn wait_job_in_foreground(root: i32) -> Result<()> {
    use nix::sys::signal::{killpg, raise, signal, SigHandler, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::{getpgrp, tcgetpgrp, tcsetpgrp, Pid};
    let stdin = std::io::stdin();
    let root = Pid::from_raw(root);
    let job = nix::unistd::getpgid(Some(root)).context("reading the job's process group")?;
    // From the background, taking the terminal back would stop crust.
    // SAFETY: SIG_IGN installs no handler of ours.
    unsafe { signal(Signal::SIGTTOU, SigHandler::SigIgn) }.context("ignoring SIGTTOU")?;
    let take_terminal = || tcsetpgrp(&stdin, getpgrp());
    loop {
        match waitpid(root, Some(WaitPidFlag::WUNTRACED)).context("waiting for the job")? {
            WaitStatus::Stopped(_, sig) => {
                take_terminal().context("taking the terminal back from the stopped job")?;
                // The shell says "Stopped" for Ctrl-Z, "Stopped (signal)" for SIGSTOP.
                raise(if sig == Signal::SIGTTOU { Signal::SIGTSTP } else { sig })?;
                if tcgetpgrp(&stdin).ok() == Some(getpgrp()) {
                    tcsetpgrp(&stdin, job).context("giving the job the terminal again")?;
                }
                killpg(job, Signal::SIGCONT).context("continuing the job")?;
            }
            WaitStatus::Exited(_, code) => {
                let _ = take_terminal();
                std::process::exit(code);
            }
            WaitStatus::Signaled(_, sig, _) => {
                let _ = take_terminal();
                std::process::exit(128 + sig as i32);
            }
            _ => {}
        }
    }
}

/// criu's options for the tree's namespaces: its root directory and the
/// mounts from the host.
#[derive(clap::Args)]
struct NsArgs {
    /// Restore: the directory the tree's root mount shows (by default the
    /// one it showed at dump).
    #[arg(long = "root", value_name = "PATH")]
    root: Option<PathBuf>,
    /// Dump: the mount at KEY (its mount point in the tree) is a mount from
    /// the host, recorded as VAL; `auto`: every bind mount of a host path is,
    /// recorded by that path. Restore: the external mount recorded as KEY is
    /// host path VAL (repeatable).
    #[arg(long = "ext-mount-map", value_name = "KEY:VAL|auto")]
    ext_mount_map: Vec<String>,
    /// `mnt[KEY]:VAL`: as --ext-mount-map KEY:VAL. Dump: `pipe:[INO]` (as
    /// /proc/PID/fd shows it), a pipe the tree shares with processes outside
    /// it, saved as external: its restore must be given one with
    /// --inherit-fd (repeatable).
    /// Restore: `veth[IF]:HOSTIF[@BRIDGE]` names the host end of the network
    /// namespace's veth IF (made here, attached to BRIDGE, up).
    /// Dump: `net[INO]:KEY` (uts, ipc too): the tree's namespace INO,
    /// shared with something outside the tree, is external, recorded as KEY.
    #[arg(long = "external", value_name = "mnt[KEY]:VAL|veth[IF]:HOSTIF[@BRIDGE]|pipe:[INO]|net[INO]:KEY")]
    external: Vec<String>,
    /// Restore: make the tree in this namespace of kind NS (net, uts, ipc),
    /// process PID's or the nsfs file PATH (/run/netns/NAME): the one its
    /// external namespace of that kind joins (repeatable).
    #[arg(long = "join-ns", value_name = "NS:PID|PATH", value_parser = crust::ns::join::JoinNs::parse)]
    join_ns: Vec<crust::ns::join::JoinNs>,
}

impl NsArgs {
    /// The namespaces' options, with the veth host ends among --external
    /// (a restore's: a dump has none to make).
    fn options(&self) -> anyhow::Result<(crust::ns::NsOptions, crust::ns::net::NetOptions)> {
        let mut ns = crust::ns::NsOptions { root: self.root.clone(), join_ns: self.join_ns.clone(), ..Default::default() };
        let mut net = crust::ns::net::NetOptions::default();
        for m in &self.ext_mount_map {
            ns.add_ext_mount_map(m).map_err(anyhow::Error::msg)?;
        }
        for e in self.external.iter().filter(|e| !e.starts_with("pipe:")) {
            let external = crust::ns::External::parse(e)
                .ok_or_else(|| anyhow::anyhow!("--external {e}: crust knows mnt[KEY]:VAL, veth[IF]:HOSTIF[@BRIDGE], pipe:[INO] and net|uts|ipc[INO]:KEY"))?;
            external.map_err(anyhow::Error::msg)?.add_to(&mut ns, &mut net);
        }
        Ok((ns, net))
    }

    /// The external pipes named (a dump's): `pipe:[INO]` keys.
    fn pipes(&self) -> anyhow::Result<Vec<String>> {
        self.external.iter().filter(|e| e.starts_with("pipe:")).map(|e| crust::files::parse_external(e).map_err(|e| anyhow::anyhow!("--external {e}"))).collect()
    }

    /// A restore is given pipes with --inherit-fd, not --external.
    fn no_pipes(&self) -> anyhow::Result<()> {
        match self.pipes()?.first() {
            Some(p) => anyhow::bail!("--external {p}: a restore is given a pipe with --inherit-fd fd[N]:{p}"),
            None => Ok(()),
        }
    }
}

/// criu's options for established TCP connections.
#[derive(clap::Args)]
struct TcpArgs {
    /// Save (dump) and restore established TCP connections (TCP_REPAIR),
    /// holding their packets with a network lock (nftables) in between.
    #[arg(long = "tcp-established", conflicts_with = "tcp_close")]
    tcp_established: bool,
    /// Dump established TCP connections without their state, neither
    /// locked nor kept; restore them closed.
    #[arg(long = "tcp-close")]
    tcp_close: bool,
}

impl TcpArgs {
    fn mode(&self) -> crust::files::tcp::Mode {
        use crust::files::tcp::Mode;
        match (self.tcp_established, self.tcp_close) {
            (true, _) => Mode::Established,
            (_, true) => Mode::Close,
            _ => Mode::Refuse,
        }
    }
}

/// criu's restore options for the tree's network namespace.
#[derive(clap::Args)]
struct NetArgs {
    /// Namespaces to leave as the kernel makes them: net (the caller
    /// configures the network namespace itself).
    #[arg(long = "empty-ns", value_name = "net")]
    empty_ns: Vec<String>,
}

impl NetArgs {
    /// `--empty-ns net`: whether the network namespace is left to the caller.
    fn empty_net(&self) -> Result<bool> {
        let mut empty = false;
        for ns in self.empty_ns.iter().flat_map(|n| n.split(',')) {
            match ns {
                "net" => empty = true,
                _ => anyhow::bail!("--empty-ns {ns}: crust leaves only a network namespace (net) empty"),
            }
        }
        Ok(empty)
    }
}

/// `crust network-unlock`: the lock of the dump in `dir`, or every lock of
/// crust's whose crust is gone (with `all`, also those dumps kept).
fn network_unlock(dir: Option<&std::path::Path>, all: bool) -> Result<()> {
    use crust::netlock;
    if let Some(dir) = dir {
        let name = crust::restore::network_lock(dir).with_context(|| format!("the dump in {} left no network lock", dir.display()))?;
        match netlock::remove(&name)? {
            true => println!("removed {name}"),
            false => println!("{name} was already gone"),
        }
        return Ok(());
    }
    let found = netlock::list()?;
    if found.is_empty() {
        println!("no network lock of crust is in place");
    }
    for f in found {
        match (f.running, f.kept) {
            (Some(pid), _) => println!("{}: left, crust {pid} is running with it", f.name),
            (None, true) if !all => println!("{}: left, a dump kept it for its restore (-D DIR or --all removes it)", f.name),
            _ => {
                netlock::remove(&f.name)?;
                println!("removed {}", f.name);
            }
        }
    }
    Ok(())
}

fn wait_root(pid: i32) -> Result<()> {
    match root_exit_code(pid)? {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

/// Waits for the root to end; its exit code (128 + the signal that killed it).
fn root_exit_code(pid: i32) -> Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None).context("waiting for the restored tree")? {
            WaitStatus::Exited(_, code) => return Ok(code),
            WaitStatus::Signaled(_, sig, _) => return Ok(128 + sig as i32),
            _ => continue,
        }
    }
}

/// The end of a lazy restore: crust serves the tree's pages until all are
/// in (also when not waiting for the root, or after it ended: the rest of
/// the tree may still miss pages), then says how the fill went.
fn finish_fill(fill: crust::lazy::Fill, json: bool) -> Result<()> {
    let stats = fill.wait().context("filling the restored tree's memory (lazy pages)")?;
    if json {
        println!("{}", serde_json::json!({ "lazy_pages": stats }));
    } else {
        println!(
            "lazy pages: all in after {:.1} ms: {} faults ({} pages), {} pages pushed, {} zero pages, {} dropped by the tree, {} address spaces",
            stats.fill_time_us as f64 / 1e3,
            stats.faults,
            stats.pages_on_fault,
            stats.pages_pushed,
            stats.zero_pages,
            stats.pages_dropped,
            stats.spaces
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Dump {
            pid,
            dir,
            leave_running,
            shell_job,
            cgroup_roots,
            freeze_cgroup,
            ghost_limit,
            file_locks,
            ext_unix_sk,
            tcp,
            empty_ns,
            skip_in_flight,
            prev_images_dir,
            track_mem,
            action_scripts,
            json,
            ns,
        } => {
            let empty_net = NetArgs { empty_ns }.empty_net()?;
            let bar = progress::Bar::on_stderr(json);
            let progress = bar.progress();
            let opts = DumpOptions {
                pid,
                dir: dir.clone(),
                leave_running,
                shell_job,
                cgroup_roots,
                freeze_cgroup,
                ghost_limit,
                file_locks,
                ext_unix_sk,
                external: ns.pipes()?,
                external_pipes: false,
                tcp: tcp.mode(),
                empty_net,
                skip_in_flight,
                prev_images_dir,
                track_mem,
                progress,
                notify: Notify::scripts(action_scripts, Some(&dir)),
                handoff: Default::default(),
                ns: ns.options()?.0,
            };
            let stats = guard::in_child(|| bar.around(|| Ok(dump(&opts)?))).with_context(|| format!("dump of process {pid} failed"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print_dump_stats(&stats, &dir);
            }
        }
        Command::PreDump { pid, dir, prev_images_dir, track_mem, freeze_cgroup, action_scripts, json } => {
            let bar = progress::Bar::on_stderr(json);
            let notify = Notify::scripts(action_scripts, Some(&dir));
            let opts = DumpOptions { pid, dir: dir.clone(), prev_images_dir, track_mem, freeze_cgroup, progress: bar.progress(), notify, ..Default::default() };
            let stats = guard::in_child(|| bar.around(|| Ok(pre_dump(&opts)?))).with_context(|| format!("pre-dump of process {pid} failed"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print_dump_stats(&stats, &dir);
            }
        }
        Command::Restore { dir, detach, lazy_pages, shell_job, pidfile, manage_cgroups, cgroup_roots, pid_wait, inherit_fds, tcp, net, action_scripts, json, ns } => {
            ns.no_pipes()?;
            let (ns, veths) = ns.options()?;
            let bar = progress::Bar::on_stderr(json);
            let opts = RestoreOptions {
                dir: dir.clone(),
                shell_job,
                job_control: shell_job && !detach && in_terminal_foreground(),
                pid_wait: Duration::from_secs_f64(pid_wait.max(0.0)),
                manage_cgroups,
                cgroup_roots,
                progress: bar.progress(),
                private_copies: false,
                tcp: tcp.mode(),
                notify: Notify::scripts(action_scripts, Some(&dir)),
                inherit_fds: inherit_fds.into_iter().map(|(fd, key)| (key, fd)).collect(),
                sibling: false,
                ns,
                net: crust::ns::net::NetOptions { empty: net.empty_net()?, ..veths },
            };
            if lazy_pages && opts.job_control {
                anyhow::bail!("--lazy-pages: a shell job in the foreground is not restored lazily yet (restore it with -d, or without --lazy-pages)");
            }
            let (restored, fill) = if lazy_pages {
                let (restored, fill) = bar.around(|| crust::lazy::restore(&opts)).with_context(|| format!("restore from {} failed", dir.display()))?;
                (restored, Some(fill))
            } else {
                (bar.around(|| restore(&opts)).with_context(|| format!("restore from {} failed", dir.display()))?, None)
            };
            write_restore_stats(&dir, &restored);
            if let Some(path) = pidfile {
                std::fs::write(&path, format!("{}\n", restored.root))
                    .with_context(|| format!("writing pid file {}", path.display()))?;
            }
            if json {
                let out = crust::migrate::Restored { root: restored.root, stats: restored.stats.clone() };
                println!("{}", serde_json::to_string(&out)?);
            } else {
                print_restore_stats(&restored);
            }
            if let Some(fill) = fill {
                if detach {
                    return finish_fill(fill, json);
                }
                let code = root_exit_code(restored.root)?;
                finish_fill(fill, json)?;
                std::process::exit(code);
            }
            if !detach {
                if opts.job_control {
                    return wait_job_in_foreground(restored.root);
                }
                if restored.stats.stop_signal.is_some() {
                    eprintln!("crust: the restored tree is stopped, as it was dumped; kill -CONT {} continues it", restored.root);
                }
                return wait_root(restored.root);
            }
        }
        Command::Show { path, images_dir } => {
            let path = path.or(images_dir).context("no images given")?;
            let v = if path.is_dir() { crust::show::show_dir(&path)? } else { crust::show::show_file(&path)? };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Migrate { pid, to, key, shell_job, remote_crust, manage_cgroups, cgroup_roots, stats_dir, ext_unix_sk, tcp, action_scripts, live, json, ext_mount_map, external } => {
            let mut ns = crust::ns::NsOptions::default();
            for m in &ext_mount_map {
                ns.add_ext_mount_map(m).map_err(anyhow::Error::msg)?;
            }
            for e in &external {
                match crust::ns::net::VethEnd::parse(e) {
                    Some(end) => drop(end.map_err(anyhow::Error::msg)?),
                    None => anyhow::bail!("--external {e}: a migration takes veth[IF]:HOSTIF[@BRIDGE] (a mount from the host is named with --ext-mount-map)"),
                }
            }
            let remote_crust = match remote_crust {
                Some(p) => p,
                None => std::env::current_exe().context("finding crust's own path")?.to_string_lossy().into_owned(),
            };
            let bar = progress::Bar::on_stderr(json);
            let progress = bar.progress();
            let opts = MigrateOptions {
                pid,
                to,
                shell_job,
                key,
                remote_crust,
                manage_cgroups,
                cgroup_roots,
                stats_dir,
                progress,
                tcp: tcp.mode(),
                notify: Notify::scripts(action_scripts, None),
                ext_unix_sk,
                live,
                ns,
                veths: external,
            };
            let stats = guard::in_child(|| bar.around(|| Ok(migrate(&opts)?))).with_context(|| format!("migration of process {pid} failed; it runs on here"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "migrated process {pid} ({} thread(s)): runs there as pid {}; frozen {:.1} ms; {:.1} MiB sent; \
                     dump {:.1} ms, transfer {:.1} ms, check {:.1} ms, restore {:.1} ms, total {:.1} ms",
                    stats.dump.threads,
                    stats.remote.root,
                    stats.frozen_time_us as f64 / 1e3,
                    stats.bytes_sent as f64 / 1048576.0,
                    stats.dump_time_us as f64 / 1e3,
                    stats.transfer_time_us as f64 / 1e3,
                    stats.check_time_us as f64 / 1e3,
                    stats.restore_time_us as f64 / 1e3,
                    stats.total_time_us as f64 / 1e3,
                );
                for r in stats.pre_copy.iter().flat_map(|p| &p.rounds) {
                    println!(
                        "  pre-copy round {}: {} pages ({:.1} MiB) in {:.1} ms, {} pages/s written meanwhile",
                        r.round,
                        r.pages,
                        r.bytes as f64 / 1048576.0,
                        r.time_us as f64 / 1e3,
                        r.dirty_pages_per_s
                    );
                }
            }
        }
        Command::Serve { listen, key, dir, max_sessions } => {
            crust::migrate::tcp::serve(&crust::migrate::tcp::ServeOptions { listen, key, dir, max_sessions })?;
        }
        Command::Receive { dir } => {
            use std::os::fd::AsFd;
            crust::migrate::receive::Session::private_workdir(&dir)?;
            crust::migrate::receive::Session::remove_stale(&dir);
            // The raw pipes, not std's buffered handles: the channel buffers.
            let input = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
            let output = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
            let fd = input.as_fd().try_clone_to_owned()?;
            let mut chan =
                crust::migrate::channel::Channel::pipes(Box::new(input), fd, Box::new(output), "the migrating host".into());
            crust::migrate::receive::receive(&mut chan, &dir)?;
        }
        Command::Check { images, shell_job, manage_cgroups, cgroup_roots, tcp, inherit_fds, ns, net } => {
            ns.no_pipes()?;
            let (ns, veths) = ns.options()?;
            let inherit_fds = inherit_fds.into_iter().map(|(fd, key)| (key, fd)).collect();
            let opts = RestoreOptions {
                dir: images.clone(),
                shell_job,
                manage_cgroups,
                cgroup_roots,
                tcp: tcp.mode(),
                inherit_fds,
                ns,
                net: crust::ns::net::NetOptions { empty: net.empty_net()?, ..veths },
                ..Default::default()
            };
            let mut img = crust::restore::load(&images, crust::images::load::Pages::InDir)?;
            img.extras.insert(opts.ns.clone());
            let problems = crust::restore::check::problems(&img, &opts);
            if !problems.is_empty() {
                anyhow::bail!("this host cannot restore {}:\n  {}", images.display(), problems.join("\n  "));
            }
            println!("this host can restore {}", images.display());
        }
        Command::Explain { dir, images_dir, manage_cgroups, cgroup_roots } => {
            let dir = dir.or(images_dir).context("no images given")?;
            for line in crust::explain::explain(&dir, manage_cgroups, &cgroup_roots)? {
                println!("{line}");
            }
        }
        Command::NetworkUnlock { dir, all } => network_unlock(dir.as_deref(), all)?,
        Command::Demo => demo::run()?,
    }
    Ok(())
}

/// A size as criu takes it: bytes, or a number with K, M or G.
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s}: expected a size like 4096, 512K, 64M or 1G"))?;
    let shift = match unit {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        _ => return Err(format!("{s}: the unit must be K, M or G")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s}: too large"))
}

fn main() -> ExitCode {
    if let Some(code) = swrk::dispatch() {
        return code;
    }
    // Installed as `criu` (a link of that name), crust takes criu's command line.
    if criu_cli::invoked_as_criu() {
        return criu_cli::main();
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    if let Err(e) = init_logging(level, cli.log_file.as_deref()) {
        eprintln!("crust: error: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crust: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
