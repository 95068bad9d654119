//! crust as `criu`: criu's command line, as lxc-checkpoint and people type
//! it, translated into crust's dump, pre-dump, restore and checks.
//!
//! crust takes it when run under the name `criu` (a link of that name in
//! PATH). Options are read as criu's getopt reads them (`-t PID`, or
//! glued: `-tPID`, `-v4`, `--tree=PID`, unique prefixes of long names,
//! `--no-X` to turn a flag off), after criu's configuration files
//! (/etc/criu/default.conf, $HOME/.criu/default.conf, $CRIU_CONFIG_FILE,
//! `--config FILE`: one option a line without its dashes). Each option is
//! done by crust, or accepted as a no-op where crust's images need nothing
//! of it (the log says why), or refused by name where the dump or restore
//! would need it and crust cannot do it. Unknown options and every failure
//! exit 1, as criu does.
//!
//! Logs, the pid file and action scripts are relative to the work directory
//! (`-W`, else the images directory), which crust changes into, as criu does.

use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crust::cgroups::{CgroupRoot, Mode};
use crust::dump::{dump, pre_dump, DumpOptions, DumpStats};
use crust::notify::Notify;
use crust::restore::{restore, RestoreOptions, Restored};
use crust::ns::net::NetOptions;
use crust::ns::{External, NsOptions};
use crust::CRIU_COMPAT_VERSION;

/// Whether crust was started under the name `criu`.
pub fn invoked_as_criu() -> bool {
    std::env::args_os().next().is_some_and(|a0| Path::new(&a0).file_name() == Some("criu".as_ref()))
}

/// What an option takes after its name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takes {
    Nothing,
    Value,
    /// Only glued on: `-v4`, `--manage-cgroups=full`.
    MaybeValue,
}

struct Spec {
    long: &'static str,
    short: Option<char>,
    takes: Takes,
}

const fn flag(long: &'static str, short: Option<char>) -> Spec {
    Spec { long, short, takes: Takes::Nothing }
}
const fn value(long: &'static str, short: Option<char>) -> Spec {
    Spec { long, short, takes: Takes::Value }
}
const fn maybe(long: &'static str, short: Option<char>) -> Spec {
    Spec { long, short, takes: Takes::MaybeValue }
}

/// criu's options that crust knows; what each does is in [`Opts::apply`].
const OPTIONS: &[Spec] = &[
    // Common to every command.
    value("tree", Some('t')),
    value("images-dir", Some('D')),
    value("work-dir", Some('W')),
    value("log-file", Some('o')),
    maybe("verbosity", Some('v')),
    value("pidfile", None),
    value("action-script", None),
    flag("display-stats", None),
    value("config", None),
    flag("no-default-config", None),
    flag("version", Some('V')),
    flag("help", Some('h')),
    // Dump and restore.
    flag("shell-job", Some('j')),
    flag("leave-running", Some('R')),
    flag("tcp-established", None),
    flag("tcp-close", None),
    flag("skip-in-flight", None),
    flag("tcp-skip-in-flight", None),
    maybe("ext-unix-sk", Some('x')),
    flag("file-locks", Some('l')),
    maybe("manage-cgroups", None),
    value("cgroup-root", None),
    value("freeze-cgroup", None),
    value("ghost-limit", None),
    value("prev-images-dir", None),
    flag("track-mem", None),
    value("network-lock", None),
    value("pre-dump-mode", None),
    flag("link-remap", None),
    flag("force-irmap", None),
    flag("restore-detached", Some('d')),
    flag("restore-sibling", None),
    value("root", Some('r')),
    value("inherit-fd", None),
    value("lsm-profile", None),
    flag("evasive-devices", None),
    // About mounts and namespaces the tree may have of its own.
    value("ext-mount-map", Some('M')),
    value("external", None),
    value("join-ns", None),
    flag("enable-external-sharing", None),
    flag("enable-external-masters", None),
    value("enable-fs", None),
    // What crust has no counterpart of (refused when given).
    flag("lazy-pages", None),
    flag("stream", None),
    flag("page-server", None),
    value("address", None),
    value("port", None),
    flag("auto-dedup", None),
    // `check`.
    value("feature", None),
    flag("extra", None),
    flag("experimental", None),
    flag("all", None),
];

/// One option as given: its long name, its value, and whether it was
/// turned off (`--no-NAME`).
#[derive(Debug)]
struct Given {
    long: &'static str,
    value: Option<String>,
    negated: bool,
}

/// Reads criu's argv (without argv[0]) as getopt_long does, options and
/// operands in any order; `--` ends the options.
fn parse(args: &[String]) -> Result<(Vec<Given>, Vec<String>)> {
    let mut given = Vec::new();
    let mut operands = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, glued) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let (spec, negated) = find_long(name)?;
            let value = match (spec.takes, glued) {
                (Takes::Nothing, Some(_)) => bail!("option '--{}' doesn't allow an argument", spec.long),
                (Takes::Value, None) => {
                    let v = args.get(i).ok_or_else(|| anyhow!("option '--{}' requires an argument", spec.long))?;
                    i += 1;
                    Some(v.clone())
                }
                (_, v) => v,
            };
            given.push(Given { long: spec.long, value, negated });
        } else if arg.len() > 1 && arg.starts_with('-') {
            // A cluster of short options; one taking a value ends it.
            for (at, c) in arg[1..].char_indices() {
                let spec = OPTIONS.iter().find(|s| s.short == Some(c)).ok_or_else(|| anyhow!("invalid option -- '{c}'"))?;
                let rest = &arg[1 + at + c.len_utf8()..];
                let value = match spec.takes {
                    Takes::Nothing => None,
                    Takes::MaybeValue => Some(rest.to_string()).filter(|r| !r.is_empty()),
                    Takes::Value if !rest.is_empty() => Some(rest.to_string()),
                    Takes::Value => {
                        let v = args.get(i).ok_or_else(|| anyhow!("option requires an argument -- '{c}'"))?;
                        i += 1;
                        Some(v.clone())
                    }
                };
                given.push(Given { long: spec.long, value: value.clone(), negated: false });
                if value.is_some() || spec.takes != Takes::Nothing {
                    break;
                }
            }
        } else {
            operands.push(arg.clone());
        }
    }
    Ok((given, operands))
}

/// A long option by its name, a `no-` form of a flag, or a prefix naming
/// one option only (as getopt_long takes them).
fn find_long(name: &str) -> Result<(&'static Spec, bool)> {
    if let Some(s) = OPTIONS.iter().find(|s| s.long == name) {
        return Ok((s, false));
    }
    if let Some(s) = name.strip_prefix("no-").and_then(|n| OPTIONS.iter().find(|s| s.long == n && s.takes == Takes::Nothing)) {
        return Ok((s, true));
    }
    let matching: Vec<&Spec> = OPTIONS.iter().filter(|s| !name.is_empty() && s.long.starts_with(name)).collect();
    match matching[..] {
        [s] => Ok((s, false)),
        [] => bail!("unrecognized option '--{name}'"),
        _ => bail!("option '--{name}' is ambiguous ({})", matching.iter().map(|s| format!("--{}", s.long)).collect::<Vec<_>>().join(", ")),
    }
}

/// The options of a config file: each line an option without its dashes,
/// then its value, words split at blanks, "quoted" values, `#` comments.
fn config_args(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    let mut args = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let words = config_words(line).with_context(|| format!("{}:{}", path.display(), n + 1))?;
        let Some((name, rest)) = words.split_first() else { continue };
        if rest.len() > 1 {
            bail!("{}:{}: more than one value for option {name}", path.display(), n + 1);
        }
        args.push(format!("--{name}"));
        args.extend(rest.iter().cloned());
    }
    Ok(args)
}

fn config_words(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None | Some('#') => return Ok(words),
            Some('"') => {
                chars.next();
                let mut w = String::new();
                loop {
                    match chars.next() {
                        None => bail!("a quoted value without its closing quote"),
                        Some('"') => break,
                        Some('\\') if chars.peek() == Some(&'"') => w.push(chars.next().unwrap_or('"')),
                        Some(c) => w.push(c),
                    }
                }
                words.push(w);
            }
            Some(_) => {
                let mut w = String::new();
                while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '#') {
                    w.push(c);
                }
                words.push(w);
            }
        }
    }
}

/// What the options ask for, once read.
#[derive(Default)]
struct Opts {
    tree: Option<i32>,
    images_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    verbosity: i32,
    pidfile: Option<PathBuf>,
    action_scripts: Vec<PathBuf>,
    display_stats: bool,
    version: bool,
    help: bool,
    shell_job: bool,
    leave_running: bool,
    tcp_established: bool,
    tcp_close: bool,
    skip_in_flight: bool,
    ext_unix_sk: bool,
    file_locks: bool,
    manage_cgroups: Option<Mode>,
    cgroup_roots: Vec<CgroupRoot>,
    freeze_cgroup: Option<PathBuf>,
    ghost_limit: Option<u64>,
    prev_images_dir: Option<PathBuf>,
    track_mem: bool,
    restore_detached: bool,
    restore_sibling: bool,
    root: Option<PathBuf>,
    inherit_fd: Vec<String>,
    lsm_profile: Option<String>,
    evasive_devices: bool,
    /// Options about mounts, which mean something only for a tree with a
    /// mount namespace of its own (as given, for messages).
    mount_options: Vec<String>,
    /// `--external` resources.
    external: Vec<String>,
    /// `--join-ns NS:PID|PATH`, as given.
    join_ns: Vec<String>,
    /// Options crust has no counterpart of, as given.
    unsupported: Vec<String>,
    /// Options accepted without effect, and why, for the log.
    noops: Vec<(String, &'static str)>,
    features: Vec<String>,
}

impl Opts {
    fn apply(&mut self, g: Given) -> Result<()> {
        let on = !g.negated;
        let shown = match &g.value {
            Some(v) => format!("--{} {v}", g.long),
            None => format!("--{}", g.long),
        };
        let path = |v: &Option<String>| PathBuf::from(v.clone().unwrap_or_default());
        let v = g.value.clone().unwrap_or_default();
        match g.long {
            "tree" => self.tree = Some(v.parse().map_err(|_| anyhow!("-t/--tree: {v:?} is not a pid"))?),
            "images-dir" => self.images_dir = Some(path(&g.value)),
            "work-dir" => self.work_dir = Some(path(&g.value)),
            "log-file" => self.log_file = Some(path(&g.value)),
            "verbosity" => {
                self.verbosity = match g.value.as_deref() {
                    None => self.verbosity + 1,
                    // -vvv: each v one more.
                    Some(vs) if vs.chars().all(|c| c == 'v') => self.verbosity + 1 + vs.len() as i32,
                    Some(n) => n.parse().map_err(|_| anyhow!("-v: {n:?} is not a verbosity level (0 to 4)"))?,
                }
            }
            "pidfile" => self.pidfile = Some(path(&g.value)),
            "action-script" => self.action_scripts.push(path(&g.value)),
            "display-stats" => self.display_stats = on,
            "version" => self.version = on,
            "help" => self.help = on,
            "shell-job" => self.shell_job = on,
            "leave-running" => self.leave_running = on,
            "tcp-established" => self.tcp_established = on,
            "tcp-close" => self.tcp_close = on,
            "skip-in-flight" | "tcp-skip-in-flight" => self.skip_in_flight = on,
            "ext-unix-sk" => {
                if g.value.is_some() {
                    bail!("{shown}: crust takes --ext-unix-sk for every such socket, not for a list of inodes");
                }
                self.ext_unix_sk = on;
            }
            "file-locks" => self.file_locks = on,
            "manage-cgroups" => {
                // Without a mode, criu's default mode (soft).
                self.manage_cgroups = Some(match g.value.as_deref() {
                    None => Mode::Soft,
                    Some(m) => m.parse().map_err(|e: String| anyhow!("--manage-cgroups: {e}"))?,
                });
            }
            "cgroup-root" => self.cgroup_roots.push(v.parse().map_err(|e: String| anyhow!("--cgroup-root: {e}"))?),
            "freeze-cgroup" => self.freeze_cgroup = Some(path(&g.value)),
            "ghost-limit" => self.ghost_limit = Some(crate::parse_size(&v).map_err(|e| anyhow!("--ghost-limit: {e}"))?),
            "prev-images-dir" => self.prev_images_dir = Some(path(&g.value)),
            "track-mem" => self.track_mem = on,
            "network-lock" => match v.as_str() {
                "nftables" => self.noops.push((shown, "crust locks the network with nftables")),
                _ => self.unsupported.push(format!("{shown} (crust locks the network with nftables only)")),
            },
            "pre-dump-mode" => match v.as_str() {
                "read" | "splice" => self.noops.push((shown, "crust's pre-dump reads the pages while the tree is frozen and writes them after, the same images either way")),
                _ => bail!("--pre-dump-mode: {v:?} is not splice or read"),
            },
            "link-remap" => self.noops.push((
                shown,
                "crust never needs a link remap: a deleted file's contents are saved in the images (a ghost file, up to --ghost-limit), and a file still linked is reopened by its path",
            )),
            "force-irmap" => self.noops.push((
                shown,
                "crust reopens inotify and fanotify watches by their file handles, never by a path found by scanning the file system",
            )),
            "restore-detached" => self.restore_detached = on,
            "restore-sibling" => self.restore_sibling = on,
            "root" => self.root = Some(path(&g.value)),
            "inherit-fd" => self.inherit_fd.push(v),
            "lsm-profile" => self.lsm_profile = Some(v),
            "evasive-devices" => self.evasive_devices = on,
            "ext-mount-map" | "enable-fs" => self.mount_options.push(shown),
            "enable-external-sharing" | "enable-external-masters" if on => self.mount_options.push(shown),
            "enable-external-sharing" | "enable-external-masters" => {}
            "external" => self.external.push(v),
            "join-ns" => self.join_ns.push(v),
            "lazy-pages" | "stream" | "page-server" | "address" | "port" | "auto-dedup" if on => self.unsupported.push(shown),
            "lazy-pages" | "stream" | "page-server" | "auto-dedup" => {}
            "feature" => self.features.push(v),
            "extra" | "experimental" | "all" => self.noops.push((shown, "crust's check covers what crust needs, at any level")),
            // Read before the other options: see `read_options`.
            "config" | "no-default-config" => {}
            other => bail!("option --{other} is known but not handled (a bug in crust's criu command line)"),
        }
        Ok(())
    }
}

/// The options of the config files, then of the command line; and the operands.
fn read_options(args: &[String]) -> Result<(Opts, Vec<String>)> {
    let (given, operands) = parse(args)?;
    let config = given.iter().rev().find(|g| g.long == "config" && !g.negated).and_then(|g| g.value.clone());
    let defaults = !given.iter().any(|g| g.long == "no-default-config" && !g.negated);
    let mut files = Vec::new();
    // As criu: the default files only without --config.
    if defaults && config.is_none() {
        files.push(PathBuf::from("/etc/criu/default.conf"));
        if let Some(home) = std::env::var_os("HOME") {
            files.push(Path::new(&home).join(".criu/default.conf"));
        }
        files.retain(|f| f.exists());
    }
    if let Some(env) = std::env::var_os("CRIU_CONFIG_FILE") {
        files.push(PathBuf::from(env));
    }
    files.extend(config.map(PathBuf::from));
    let mut opts = Opts { verbosity: 2, ..Default::default() };
    for file in files {
        let (from_file, stray) = parse(&config_args(&file)?).with_context(|| format!("in config file {}", file.display()))?;
        if let Some(s) = stray.first() {
            bail!("config file {}: {s:?} is not an option (commands are not allowed there)", file.display());
        }
        for g in from_file {
            opts.apply(g).with_context(|| format!("in config file {}", file.display()))?;
        }
    }
    for g in given {
        opts.apply(g)?;
    }
    Ok((opts, operands))
}

const USAGE: &str = "\
Usage (crust as criu):
  criu dump|pre-dump -t PID [<options>]
  criu restore [<options>]
  criu check [--feature FEAT]
  criu --version

Common options: -D DIR, -W DIR, -o FILE (relative to -W), -v[0-4], --pidfile FILE,
  --action-script SCRIPT, --display-stats, --config FILE, --no-default-config
Dump and restore: -j/--shell-job, -R/--leave-running, --tcp-established, --tcp-close,
  --skip-in-flight, -x/--ext-unix-sk, -l/--file-locks, --manage-cgroups[=MODE],
  --cgroup-root [CTRL:]/PATH, --freeze-cgroup PATH, --ghost-limit SIZE,
  --prev-images-dir DIR, --track-mem, -d/--restore-detached, --root /,
  --link-remap, --force-irmap, and the mount options for trees without a
  mount namespace of their own.
See crust's README for what each does and what crust refuses.
";

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os().skip(1).map(|a: OsString| a.to_string_lossy().into_owned()).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            // Into the log file too, where lxc-checkpoint shows it from.
            if LOG_IN_FILE.load(Ordering::Relaxed) {
                log::error!("{e:#}");
            }
            eprintln!("criu (crust): error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    let (opts, operands) = read_options(args)?;
    if opts.help {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    if opts.version {
        // lxc-checkpoint reads the first line as `Version: X.Y`.
        println!("Version: {CRIU_COMPAT_VERSION}");
        println!("crust {} (criu's command line and images, as criu {CRIU_COMPAT_VERSION})", env!("CARGO_PKG_VERSION"));
        return Ok(ExitCode::SUCCESS);
    }
    let Some((command, rest)) = operands.split_first() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    let extra = |n: usize| -> Result<()> {
        match rest.get(n..).unwrap_or_default() {
            [] => Ok(()),
            more => bail!("{command}: unexpected arguments {more:?}"),
        }
    };
    if let Some(what) = opts.unsupported.first() {
        bail!("{what}: crust has no counterpart of this criu option");
    }
    match command.as_str() {
        "dump" | "pre-dump" => {
            extra(0)?;
            run_dump(opts, command == "pre-dump")
        }
        "restore" => {
            extra(0)?;
            run_restore(opts)
        }
        "check" => {
            extra(0)?;
            setup_logging(&opts)?;
            log_noops(&opts);
            Ok(check(&opts.features))
        }
        "service" | "page-server" | "lazy-pages" | "dedup" | "cpuinfo" | "image-cache" | "image-proxy" => {
            bail!("criu {command} is not supported by crust")
        }
        other => bail!("unknown command: {other}"),
    }
}

/// criu's verbosity (0 nothing, 1 errors, 2 warnings, 3 information, 4 debug).
fn setup_logging(opts: &Opts) -> Result<()> {
    let level = match opts.verbosity {
        ..=0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        4 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    crate::init_logging(level, opts.log_file.as_deref())?;
    LOG_IN_FILE.store(opts.log_file.is_some(), Ordering::Relaxed);
    Ok(())
}

/// Whether the log goes to a file (-o), not to stderr with the error message.
static LOG_IN_FILE: AtomicBool = AtomicBool::new(false);

/// Says in the log which options had no effect, and why.
fn log_noops(opts: &Opts) {
    for (option, why) in &opts.noops {
        log::info!("{option}: no effect in crust: {why}");
    }
}

/// The images directory (absolute, made for a dump), then into the work
/// directory, then the log: as criu, relative -o and --pidfile are in the
/// work directory, and -W is relative to where crust was started.
fn enter_dirs(opts: &Opts, dump: bool) -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let dir = cwd.join(opts.images_dir.as_deref().unwrap_or(Path::new(".")));
    if dump && !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let work = opts.work_dir.as_ref().map(|w| cwd.join(w)).unwrap_or_else(|| dir.clone());
    std::env::set_current_dir(&work).with_context(|| format!("changing into the work directory {}", work.display()))?;
    setup_logging(opts)?;
    Ok(dir)
}

fn tcp_mode(opts: &Opts) -> Result<crust::files::tcp::Mode> {
    use crust::files::tcp::Mode;
    Ok(match (opts.tcp_established, opts.tcp_close) {
        (true, true) => bail!("--tcp-established and --tcp-close cannot go together"),
        (true, false) => Mode::Established,
        (false, true) => Mode::Close,
        (false, false) => Mode::Refuse,
    })
}

/// Whether process `pid` is in crust's own namespace of kind `ns` (a name
/// under /proc/PID/ns).
fn shares_namespace(pid: i32, ns: &str) -> Result<bool> {
    let read = |p: String| std::fs::read_link(&p).with_context(|| format!("reading {p}"));
    Ok(read(format!("/proc/{pid}/ns/{ns}"))? == read(format!("/proc/self/ns/{ns}"))?)
}

/// criu's options for the tree's namespaces, mapped onto crust's: external
/// mounts and the root (mount namespace), veth host ends (network
/// namespace). Where the tree (or the images) has no namespace of that kind
/// of its own, an option is a no-op, as under criu, and logged so.
fn namespaced_options(opts: &mut Opts, restore: bool, own_ns: impl Fn(&str) -> Result<bool>) -> Result<(NsOptions, NetOptions)> {
    const NO_NS: &str = "the tree has no namespace of this kind of its own, so there is nothing for it to apply to (criu too uses it only for a namespace it dumps or restores)";
    let mut ns = NsOptions::default();
    let mut net = NetOptions::default();
    let mount_options = std::mem::take(&mut opts.mount_options);
    for option in mount_options {
        if !own_ns("mnt")? {
            opts.noops.push((option, NO_NS));
            continue;
        }
        match option.strip_prefix("--ext-mount-map ") {
            Some(map) => ns.add_ext_mount_map(map).map_err(|e| anyhow!(e))?,
            // Permissions criu asks for; crust saves the file systems and
            // sharing it can make again and refuses the others by name.
            None => opts.noops.push((option, "crust saves the mounts it can make again and refuses the others by name, without being asked")),
        }
    }
    for ext in std::mem::take(&mut opts.external) {
        let kind = ext.split(['[', ':']).next().unwrap_or_default();
        match kind {
            "mnt" if own_ns("mnt")? => parse_external(&ext)?.add_to(&mut ns, &mut net),
            "veth" if own_ns("net")? => parse_external(&ext)?.add_to(&mut ns, &mut net),
            "net" | "uts" | "ipc" if !restore && own_ns(kind)? => parse_external(&ext)?.add_to(&mut ns, &mut net),
            "mnt" | "net" | "uts" | "ipc" | "veth" => opts.noops.push((format!("--external {ext}"), NO_NS)),
            // At restore a key is only looked up by what the images mark
            // external, and crust's images mark nothing else so (a dump
            // refuses the rest). lxc-checkpoint 5.0 passes one such key for
            // each network of type empty: whatever its buffer last held
            // (`apparmor:PROFILE`, `console:`).
            _ if restore => opts.noops.push((format!("--external {ext}"), "nothing in the images is external by that key (criu, too, only looks keys up at restore)")),
            "tty" => bail!("--external {ext}: crust cannot take a terminal from outside the tree yet (a shell job's terminal: --shell-job)"),
            "unix" => bail!("--external {ext}: crust cannot take a given unix socket as external yet (--ext-unix-sk covers datagram sockets connected to a name)"),
            _ => bail!("--external {ext}: crust cannot treat a {kind} resource as external yet"),
        }
    }
    for join in std::mem::take(&mut opts.join_ns) {
        match restore {
            true => ns.join_ns.push(crust::ns::join::JoinNs::parse(&join).map_err(|e| anyhow!(e))?),
            false => opts.noops.push((format!("--join-ns {join}"), "a dump joins nothing (criu too reads it at restore only)")),
        }
    }
    Ok((ns, net))
}

/// `ext`, of a kind [`External`] parses (its kind is checked first).
fn parse_external(ext: &str) -> Result<External> {
    External::parse(ext).unwrap_or_else(|| Err(format!("--external {ext}: not an external mount, veth or namespace"))).map_err(|e| anyhow!(e))
}

fn run_dump(mut opts: Opts, pre: bool) -> Result<ExitCode> {
    let dir = enter_dirs(&opts, true)?;
    let pid = opts.tree.context("-t/--tree PID is needed to dump")?;
    // A pid that names no process is for the dump to report.
    let (ns, _) = match Path::new(&format!("/proc/{pid}")).exists() {
        true => namespaced_options(&mut opts, false, |ns| Ok(!shares_namespace(pid, ns)?))?,
        false => Default::default(),
    };
    log_noops(&opts);
    if opts.manage_cgroups.is_some() {
        log::info!("--manage-cgroups: crust records the tree's cgroups on every dump; the mode applies at restore");
    }
    if opts.pidfile.is_some() {
        log::info!("--pidfile: a dump has no pid to write (criu writes one for a restore)");
    }
    let tcp = tcp_mode(&opts)?;
    let notify = Notify::scripts(opts.action_scripts.clone(), Some(&dir));
    let dump_opts = DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: opts.leave_running,
        shell_job: opts.shell_job,
        cgroup_roots: opts.cgroup_roots.clone(),
        freeze_cgroup: opts.freeze_cgroup.clone(),
        ghost_limit: opts.ghost_limit,
        file_locks: opts.file_locks,
        ext_unix_sk: opts.ext_unix_sk,
        tcp,
        skip_in_flight: opts.skip_in_flight,
        prev_images_dir: opts.prev_images_dir.clone(),
        track_mem: opts.track_mem,
        notify,
        ns,
        ..Default::default()
    };
    let what = if pre { "pre-dump" } else { "dump" };
    let stats = crate::guard::in_child(|| Ok(if pre { pre_dump(&dump_opts)? } else { dump(&dump_opts)? }))
        .with_context(|| format!("{what} of process {pid} failed"))?;
    log::info!("{what} of process {pid} finished");
    if opts.display_stats {
        display_dump_stats(&stats);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the images in `dir` hold a namespace of kind `ns` (criu's image
/// of such a namespace is there).
fn images_have_namespace(dir: &Path, ns: &str) -> Result<bool> {
    let prefixes: &[&str] = match ns {
        "mnt" => &["mountpoints-", "mnt-"],
        "net" => &["netns-", "netdev-", "ifaddr-", "route-"],
        _ => &[],
    };
    let names = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for name in names {
        let name = name?.file_name();
        let name = name.to_string_lossy();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether AppArmor is active in this kernel.
fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y")
}

fn run_restore(mut opts: Opts) -> Result<ExitCode> {
    let dir = enter_dirs(&opts, false)?;
    let (mut ns, net) = namespaced_options(&mut opts, true, |ns| images_have_namespace(&dir, ns))?;
    if let Some(root) = opts.root.take() {
        match images_have_namespace(&dir, "mnt")? {
            true => ns.root = Some(root),
            false if std::fs::canonicalize(&root).ok().as_deref() == Some(Path::new("/")) => {
                opts.noops.push((format!("--root {}", root.display()), "it is crust's own root, where crust restores"))
            }
            false => bail!("--root {}: the tree has no mount namespace of its own to root there", root.display()),
        }
    }
    match opts.lsm_profile.take() {
        // Without AppArmor in the kernel every task is unconfined already
        // (lxc-checkpoint passes the container's lxc.apparmor.profile).
        Some(p) if p == "apparmor:unconfined" && !apparmor_enabled() => {
            opts.noops.push((format!("--lsm-profile {p}"), "this kernel has no AppArmor: every task is unconfined"))
        }
        Some(p) => bail!("--lsm-profile {p}: crust does not set LSM profiles"),
        None => {}
    }
    log_noops(&opts);
    let inherit_fds = opts
        .inherit_fd
        .iter()
        .map(|arg| crust::files::parse_inherit_fd(arg).map(|(fd, key)| (key, fd)).map_err(|e| anyhow::anyhow!("--inherit-fd {e}")))
        .collect::<Result<_>>()?;
    if opts.evasive_devices {
        bail!("--evasive-devices: crust reopens a device only at its saved path, and only when that path still leads to that device");
    }
    if opts.leave_running {
        log::info!("--leave-running: a restored tree always runs on");
    }
    let detach = opts.restore_detached;
    let restore_opts = RestoreOptions {
        dir: dir.clone(),
        shell_job: opts.shell_job,
        job_control: opts.shell_job && !detach && crate::in_terminal_foreground(),
        pid_wait: Duration::from_secs(5),
        manage_cgroups: opts.manage_cgroups.unwrap_or(Mode::Soft),
        cgroup_roots: opts.cgroup_roots.clone(),
        tcp: tcp_mode(&opts)?,
        notify: Notify::scripts(opts.action_scripts.clone(), Some(&dir)),
        inherit_fds,
        sibling: opts.restore_sibling,
        ns,
        net,
        ..Default::default()
    };
    let restored = restore(&restore_opts).with_context(|| format!("restore from {} failed", dir.display()))?;
    crate::write_restore_stats(&dir, &restored);
    if let Some(path) = &opts.pidfile {
        std::fs::write(path, format!("{}\n", restored.root)).with_context(|| format!("writing pid file {}", path.display()))?;
    }
    log::info!("restored the tree, root pid {}", restored.root);
    if opts.display_stats {
        display_restore_stats(&restored);
    }
    if !detach {
        // As criu without -d: stay the tree's parent and end as its root ends.
        if restore_opts.job_control {
            crate::wait_job_in_foreground(restored.root)?;
        } else {
            crate::wait_root(restored.root)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// criu's `--display-stats` after a dump: its names, crust's numbers.
fn display_dump_stats(s: &DumpStats) {
    println!("Displaying dump stats:");
    println!("Freezing time: {} us", s.freezing_time_us);
    println!("Frozen time: {} us", s.frozen_time_us);
    println!("Memory dump time: {} us", s.memdump_time_us);
    println!("Memory write time: {} us", s.memwrite_time_us);
    println!("Memory pages scanned: {0} ({0:#x})", s.pages_scanned);
    println!("Memory pages skipped from parent dump: {0} ({0:#x})", s.pages_skipped_parent);
    println!("Memory pages written: {0} ({0:#x})", s.pages_written);
}

fn display_restore_stats(r: &Restored) {
    let s = &r.stats;
    println!("Displaying restore stats:");
    println!("Pages skipped COW: {}", s.pages_skipped_cow);
    println!("Pages restored: {}", s.pages_restored);
    println!("Restore time: {} us", s.restore_time_us);
    println!("Forking time: {} us", s.forking_time_us);
}

/// What `criu check --feature NAME` answers, by criu's feature names: Ok
/// when crust does what a caller asking for it wants, or why not.
fn feature(name: &str) -> Option<std::result::Result<(), &'static str>> {
    Some(match name {
        // Callers ask it before iterative pre-dumps (--track-mem with
        // --prev-images-dir): crust's work, by comparing pages with the
        // parent images, not by soft-dirty bits (absent on some kernels).
        "mem_dirty_track" => Ok(()),
        "uffd" | "uffd-noncoop" | "lazy_pages" => Err("crust has no lazy (post-copy) restore"),
        "timerfd" | "fdinfo_lock" | "seccomp_filters" | "get_rseq_conf" | "clone3_set_tid" | "kcmp_epoll" => Ok(()),
        "userns" | "timens" | "cgroupns" | "ns_pid" | "external_net_ns" | "nsid" | "link_nsid" | "sk_ns" => {
            Err("crust cannot dump or restore namespaces yet")
        }
        "tun" | "autofs" | "aio_remap" | "compat_cr" | "tcp_half_closed" | "mnt_id" | "net_diag_raw" | "loginuid"
        | "seccomp_suspend" | "sk_unix_file" | "newifindex" | "can_map_vdso" | "memfd_hugetlb" | "move_mount_set_group"
        | "openat2" | "nftables" | "has_ipt_legacy" | "network_lock_nftables" | "sockopt_buf_lock" | "apparmor_stacking"
        | "pidfd_store" => Err("crust does not claim this criu feature"),
        _ => return None,
    })
}

/// `criu check`: the host's support for what crust needs, or the features
/// asked for; exit 0 only if all is there, as criu.
fn check(features: &[String]) -> ExitCode {
    let mut ok = true;
    if !features.is_empty() {
        for f in features {
            match feature(f) {
                Some(Ok(())) => println!("{f} is supported"),
                Some(Err(why)) => {
                    println!("{f} is not supported: {why}");
                    ok = false;
                }
                None => {
                    eprintln!("Error: Unknown feature {f}");
                    ok = false;
                }
            }
        }
        return if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let problems = host_problems();
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        println!("Looks good.");
        ExitCode::SUCCESS
    } else {
        println!("Does not look good.");
        ExitCode::FAILURE
    }
}

/// What of the kernel crust relies on this host lacks.
fn host_problems() -> Vec<String> {
    let mut out = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        out.push("crust runs as root to checkpoint and restore (it ptraces the tree)".to_string());
    }
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version < (5, 13) {
        out.push(format!("Linux {release}: crust needs 5.13 or later (pidfd_getfd, clone3 with set_tid, PTRACE_GET_RSEQ_CONFIGURATION)"));
    }
    for (path, why) in [
        ("/proc/self/map_files", "the memory map of a process, by file"),
        ("/proc/self/pagemap", "which pages of a process are present"),
        ("/proc/sys/kernel/ns_last_pid", "pids chosen for restored processes"),
    ] {
        if !Path::new(path).exists() {
            out.push(format!("{path} is missing: crust reads {why} there"));
        }
    }
    out
}
