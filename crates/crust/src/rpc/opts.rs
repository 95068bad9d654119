//! criu_opts as crust takes them: each field a client may set is mapped to
//! crust's own option, accepted as a no-op for a stated reason, or refused
//! (every refusal of a request reported together). The table in the README
//! ("crust as criu: the RPC") says the same for users.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ns::net::NetOptions;
use crate::ns::join::JoinNs;
use crate::ns::{External, NsOptions};
use super::proto::{CriuCgMode, CriuNetworkLockMethod, CriuOpts};
use crate::cgroups::{CgroupRoot, Mode};
use crate::dump::DumpOptions;
use crate::error::{Error, Result};
use crate::files::tcp;
use crate::notify::Notify;
use crate::restore::RestoreOptions;

/// What a request is for: the options that apply differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Dump,
    PreDump,
    Restore,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Dump => "dump",
            Action::PreDump => "pre-dump",
            Action::Restore => "restore",
        }
    }
}

/// A request's options, checked and resolved.
pub struct Resolved {
    pub images_dir: PathBuf,
    /// work_dir_fd's directory, where criu writes its stats (podman reads
    /// stats-dump there).
    pub work_dir: Option<PathBuf>,
    pub dump: DumpOptions,
    pub restore: RestoreOptions,
}

/// A directory the caller names by one of its fds.
fn caller_dir(caller: i32, fd: i32, what: &str) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let link = PathBuf::from(format!("/proc/{caller}/fd/{fd}"));
    let path = std::fs::read_link(&link).map_err(|e| Error::Invalid(format!("{what} {fd}: no such fd of the caller (process {caller}): {e}")))?;
    let via_fd = std::fs::metadata(&link).map_err(|e| Error::Invalid(format!("{what} {fd}: {e}")))?;
    let via_path = std::fs::metadata(&path).ok();
    match via_path {
        Some(m) if m.is_dir() && m.dev() == via_fd.dev() && m.ino() == via_fd.ino() => Ok(path),
        _ => Err(Error::Invalid(format!(
            "{what} {fd} of process {caller} is {}, which crust cannot reach by that path (a directory removed, or in another mount namespace)",
            path.display()
        ))),
    }
}

/// criu reads its config file, whose settings override the request's; crust
/// does not read criu's config files (yet): one that sets anything is refused.
fn config_file_refusal(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let set: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    (!set.is_empty()).then(|| format!("config_file {path} sets options ({}): crust does not read criu's config files yet", set.join("; ")))
}

/// What crust refuses in `o` for `action`, each with why.
fn refusals(o: &CriuOpts, action: Action) -> Vec<String> {
    let mut out = Vec::new();
    let mut no = |set: bool, what: &str| {
        if set {
            out.push(what.to_string());
        }
    };
    no(o.ps.is_some(), "ps (a page server): crust writes and reads pages only in the images directory");
    no(o.auto_dedup == Some(true), "auto_dedup: crust does not punch pages out of parent images");
    no(o.link_remap == Some(true), "link_remap: crust carries a deleted file in the images (ghost files), it does not link it back");
    no(!o.veths.is_empty(), "veths: crust does not restore network namespaces (yet)");
    no(o.force_irmap == Some(true) || !o.irmap_scan_paths.is_empty(), "force_irmap / irmap_scan_paths: crust finds inotify paths by itself, it has no inode map to force");
    no(!o.exec_cmd.is_empty(), "exec_cmd: crust does not run a command after the restore");
    no(!o.skip_mnt.is_empty(), "skip_mnt: crust saves every mount of the tree's mount namespace or refuses the dump, it leaves none out");
    no(!o.unix_sk_ino.is_empty(), "unix_sk_ino: crust does not take external unix sockets by inode (ext_unix_sk covers datagram ones)");
    let others: Vec<&str> = o.external.iter().map(String::as_str).filter(|e| External::parse(e).is_none()).collect();
    no(!others.is_empty(), &format!("external ({}): crust takes external mounts (mnt[KEY]:VAL), veths (veth[IF]:HOSTIF) and net, uts and ipc namespaces (net[INO]:KEY) only; ttys and other files given from outside are not supported yet", others.join(", ")));
    let empty = o.empty_ns.unwrap_or(0) as i32;
    no(empty & !libc::CLONE_NEWNET != 0, &format!("empty_ns {empty:#x}: crust leaves only a network namespace (CLONE_NEWNET) to the caller"));
    no(o.cgroup_props.is_some() || o.cgroup_props_file.is_some() || !o.cgroup_dump_controller.is_empty(), "cgroup_props / cgroup_props_file / cgroup_dump_controller: crust records every controller's properties of its own choice");
    no(o.cgroup_yard.is_some(), "cgroup_yard: crust works on the host's cgroup mounts, it mounts no yard");
    no(o.timeout.is_some(), "timeout: crust has no bound on the time a dump takes (yet)");
    no(o.lazy_pages == Some(true), "lazy_pages: crust has no lazy (post-copy) pages yet");
    no(o.status_fd.is_some(), "status_fd: it tells that a lazy-pages or page server is ready, and crust has neither");
    no(o.lsm_profile.is_some() || o.lsm_mount_context.is_some(), "lsm_profile / lsm_mount_context: crust does not set LSM profiles (yet)");
    no(o.tls_cacert.is_some() || o.tls_cacrl.is_some() || o.tls_cert.is_some() || o.tls_key.is_some() || o.tls == Some(true) || o.tls_no_cn_verify == Some(true), "tls: crust has no page server to secure");
    no(o.pidfd_store_sk.is_some(), "pidfd_store_sk: crust keeps no pidfds between pre-dumps");
    no(o.mntns_compat_mode == Some(true), "mntns_compat_mode: crust does not restore mount namespaces (yet)");
    no(o.skip_file_rwx_check == Some(true), "skip_file_rwx_check: crust opens files as the restored task would, it cannot skip that check");
    no(o.unprivileged == Some(true), "unprivileged: crust needs root");
    no(o.leave_stopped == Some(true), "leave_stopped: crust lets a dumped tree run on or dies it, it does not leave it stopped");
    no(o.allow_uprobes == Some(true), "allow_uprobes: crust does not dump uprobes vmas");
    no(o.ghost_fiemap == Some(true), "ghost_fiemap: crust carries deleted files whole");
    no(o.tcp_established == Some(true) && o.tcp_close == Some(true), "tcp_established and tcp_close together: say one");
    no(o.tcp_established == Some(true) && o.network_lock() == CriuNetworkLockMethod::Skip, "network_lock SKIP with tcp_established: crust always holds the connections with its nftables lock");
    let not_pipes: Vec<String> =
        o.inherit_fd.iter().filter(|i| match action {
            Action::Restore => crate::files::inherit_key(&i.key).is_err(),
            _ => crate::files::parse_external(&i.key).is_err(),
        }).map(|i| format!("{}={}", i.key, i.fd)).collect();
    no(!not_pipes.is_empty(), &format!("inherit_fd ({}): crust gives a restored tree the caller's pipes (pipe:[INO]) and external namespaces (by their key) at restore only", not_pipes.join(", ")));
    // On restore the images name the pids: criu ignores `pid` there, and so does crust.
    if action != Action::Restore && o.pid.is_none() {
        out.push(format!("no pid: crust does not {} the calling process itself; name the tree's root", action.name()));
    }
    if let Some(f) = &o.log_file {
        if f.contains('/') {
            out.push(format!("log_file {f}: a name in the work directory, without directories (as criu takes it)"));
        }
    }
    if let Some(r) = o.config_file.as_deref().and_then(config_file_refusal) {
        out.push(r);
    }
    out
}

fn cgroup_mode(o: &CriuOpts) -> Mode {
    match o.manage_cgroups_mode.and_then(|m| CriuCgMode::try_from(m).ok()) {
        Some(CriuCgMode::Ignore) => Mode::Ignore,
        Some(CriuCgMode::CgNone) => Mode::None,
        Some(CriuCgMode::Props) => Mode::Props,
        Some(CriuCgMode::Full) => Mode::Full,
        Some(CriuCgMode::Strict) => Mode::Strict,
        // criu's default mode is soft, as crust's.
        Some(CriuCgMode::Soft) | Some(CriuCgMode::Default) | None => Mode::Soft,
    }
}

fn cgroup_roots(o: &CriuOpts) -> Result<Vec<CgroupRoot>> {
    o.cg_root
        .iter()
        .map(|r| {
            let spec = match &r.ctrl {
                Some(c) => format!("{c}:{}", r.path),
                None => r.path.clone(),
            };
            spec.parse::<CgroupRoot>().map_err(|e| Error::Invalid(format!("cg_root: {e}")))
        })
        .collect()
}

/// The log file `o` asks for: in the work directory, else the images
/// directory; none when neither can be found.
pub fn log_path(o: &CriuOpts, caller: i32) -> Option<PathBuf> {
    let name = o.log_file.as_ref().filter(|f| !f.contains('/'))?;
    let dir = match (o.work_dir_fd, o.images_dir_fd, &o.images_dir) {
        (Some(fd), ..) if fd >= 0 => caller_dir(caller, fd, "work_dir_fd").ok()?,
        (_, fd, _) if fd >= 0 => caller_dir(caller, fd, "images_dir_fd").ok()?,
        (_, _, Some(dir)) => PathBuf::from(dir),
        _ => return None,
    };
    Some(dir.join(name))
}

/// The namespace options of `o`: the root (a restore's, if not /), external
/// mounts (ext_mnt, external mnt[KEY]:VAL, auto_ext_mnt) and veth host ends
/// (external veth[IF]:HOSTIF[@BRIDGE]). ext_sharing and ext_masters are
/// criu's permissions; crust saves the sharing it can make again and refuses
/// the rest by name, so they ask nothing more of it.
fn namespace_options(o: &CriuOpts) -> Result<(NsOptions, NetOptions)> {
    let mut ns = NsOptions {
        root: o.root.as_deref().filter(|r| Path::new(r) != Path::new("/")).map(PathBuf::from),
        ext_mount_map: o.ext_mnt.iter().map(|m| (m.key.clone(), m.val.clone())).collect(),
        ext_mount_auto: o.auto_ext_mnt == Some(true),
        ext_mount_keys_may_miss: true,
        ..Default::default()
    };
    for j in &o.join_ns {
        let spec = format!("{}:{}", j.ns, j.ns_file);
        let spec = match &j.extra_opt {
            Some(extra) => format!("{spec},{extra}"),
            None => spec,
        };
        ns.join_ns.push(JoinNs::parse(&spec).map_err(|why| Error::Invalid(format!("join_ns: {why}")))?);
    }
    let mut net = NetOptions::default();
    // Other kinds are refused by `refusals`.
    for e in &o.external {
        if let Some(external) = External::parse(e) {
            external.map_err(|why| Error::Invalid(format!("external {e}: {why}")))?.add_to(&mut ns, &mut net);
        }
    }
    Ok((ns, net))
}

/// Check `o` for `action` and map it to crust's options; `caller` owns the
/// fds it names; `notify` hears the action's points.
pub fn resolve(o: &CriuOpts, action: Action, caller: i32, notify: Notify) -> Result<Resolved> {
    let images_dir = match (o.images_dir_fd, &o.images_dir) {
        (fd, _) if fd >= 0 => caller_dir(caller, fd, "images_dir_fd")?,
        (_, Some(dir)) => PathBuf::from(dir),
        _ => return Err(Error::Invalid("neither images_dir_fd nor images_dir names the images directory".into())),
    };
    let work_dir = o.work_dir_fd.filter(|&fd| fd >= 0).map(|fd| caller_dir(caller, fd, "work_dir_fd")).transpose()?;
    let problems = refusals(o, action);
    if !problems.is_empty() {
        return Err(Error::unsupported(format!("crust {} over criu's RPC", action.name()), format!("refused:\n  {}", problems.join("\n  "))));
    }
    let tcp = match (o.tcp_established == Some(true), o.tcp_close == Some(true)) {
        (true, _) => tcp::Mode::Established,
        (_, true) => tcp::Mode::Close,
        _ => tcp::Mode::Refuse,
    };
    let cgroup_roots = cgroup_roots(o)?;
    let (ns, net) = namespace_options(o)?;
    let empty_net = o.empty_ns.unwrap_or(0) as i32 & libc::CLONE_NEWNET != 0;
    let dump = DumpOptions {
        pid: o.pid.unwrap_or(0),
        dir: images_dir.clone(),
        leave_running: o.leave_running == Some(true) || action == Action::PreDump,
        shell_job: o.shell_job == Some(true),
        cgroup_roots: cgroup_roots.clone(),
        freeze_cgroup: o.freeze_cgroup.as_ref().map(PathBuf::from),
        ghost_limit: o.ghost_limit.map(u64::from),
        file_locks: o.file_locks == Some(true),
        ext_unix_sk: o.ext_unix_sk == Some(true),
        tcp,
        skip_in_flight: o.tcp_skip_in_flight == Some(true),
        prev_images_dir: o.parent_img.as_ref().map(PathBuf::from),
        track_mem: o.track_mem == Some(true),
        notify: notify.clone(),
        // An engine gives the container's stdio pipes back at restore
        // (inherit_fd); a pipe it does not give is refused then, by name.
        external_pipes: true,
        // The root is found again from the tree's mount namespace at dump.
        ns: NsOptions { root: None, ..ns.clone() },
        empty_net,
        ..Default::default()
    };
    let restore = RestoreOptions {
        dir: images_dir.clone(),
        shell_job: o.shell_job == Some(true),
        // As `crust restore`'s default: a pid the dump's tree freed is
        // released a moment after its death here.
        pid_wait: Duration::from_secs(5),
        manage_cgroups: cgroup_mode(o),
        // criu places the tree's cgroup at cg_root (runc names the
        // container's new cgroup there), it does not join the two.
        cgroup_roots: cgroup_roots.into_iter().map(|r| CgroupRoot { of_tree: true, ..r }).collect(),
        tcp,
        notify,
        sibling: o.rst_sibling == Some(true),
        inherit_fds: o.inherit_fd.iter().map(|i| (i.key.clone(), i.fd)).collect(),
        ns,
        net: NetOptions { empty: empty_net, ..net },
        ..Default::default()
    };
    Ok(Resolved { images_dir, work_dir, dump, restore })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::proto::InheritFd;

    #[test]
    fn every_refusal_is_reported_at_once() {
        let o = CriuOpts {
            images_dir_fd: -1,
            images_dir: Some("/tmp".into()),
            pid: Some(1),
            lazy_pages: Some(true),
            inherit_fd: vec![InheritFd { key: "tty".into(), fd: 0 }],
            ..Default::default()
        };
        let Err(e) = resolve(&o, Action::Dump, 1, Notify::default()) else { panic!("lazy_pages and inherit_fd were taken") };
        let text = e.to_string();
        assert!(text.contains("lazy_pages") && text.contains("inherit_fd (tty=0)"), "{text}");
    }

    #[test]
    fn a_dump_needs_a_pid_and_a_restore_does_not() {
        let o = CriuOpts { images_dir_fd: -1, images_dir: Some("/tmp".into()), ..Default::default() };
        assert!(resolve(&o, Action::Dump, 1, Notify::default()).is_err());
        let r = resolve(&o, Action::Restore, 1, Notify::default()).unwrap();
        assert_eq!(r.restore.manage_cgroups, Mode::Soft);
        assert_eq!(r.images_dir, PathBuf::from("/tmp"));
    }

    #[test]
    fn external_namespaces_and_join_ns_are_taken_as_runc_sends_them() {
        use crate::rpc::proto::JoinNamespace;
        let join = |ns: &str, extra: Option<&str>| JoinNamespace { ns: ns.into(), ns_file: "/run/netns/x".into(), extra_opt: extra.map(Into::into) };
        let o = CriuOpts {
            images_dir_fd: -1,
            images_dir: Some("/tmp".into()),
            pid: Some(1),
            external: vec!["net[4026532001]:extRootNetNS".into()],
            ..Default::default()
        };
        let r = resolve(&o, Action::Dump, 1, Notify::default()).unwrap();
        assert_eq!(r.dump.ns.external_ns[0].key, "extRootNetNS");
        let o = CriuOpts {
            images_dir_fd: -1,
            images_dir: Some("/tmp".into()),
            join_ns: vec![join("net", None)],
            inherit_fd: vec![InheritFd { key: "extRootNetNS".into(), fd: 5 }],
            ..Default::default()
        };
        let r = resolve(&o, Action::Restore, 1, Notify::default()).unwrap();
        assert_eq!(r.restore.ns.join_ns[0].path, "/run/netns/x");
        assert_eq!(r.restore.inherit_fds.get("extRootNetNS"), Some(&5));
        let o = CriuOpts { images_dir_fd: -1, images_dir: Some("/tmp".into()), join_ns: vec![join("user", Some("0:0"))], ..Default::default() };
        assert!(resolve(&o, Action::Restore, 1, Notify::default()).is_err(), "a user namespace is not joined");
    }
}
