//! The points of a dump or restore that a caller may hear of and act at, by
//! criu's names: where criu runs its action scripts (`--action-script`) and
//! sends its RPC notifications (runc, podman and LXC wait for some of them:
//! post-restore gives them the restored pid, setup-namespaces lets them
//! configure a network namespace). A caller that fails its point stops the
//! dump or restore there, as a failing action script stops criu's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::error::{Context, Error, Result};

/// A point of a dump or restore, in the order they come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Point {
    /// Before the tree is frozen.
    PreDump,
    /// The tree is frozen and its connections held.
    NetworkLock,
    /// The images are written; the tree is still frozen, and is killed or
    /// let run after this.
    PostDump,
    /// Before anything of the restore is created.
    PreRestore,
    /// The root exists in its namespaces (with the root's pid).
    SetupNamespaces,
    /// The namespaces are set up.
    PostSetupNamespaces,
    /// The whole tree is restored and held (with the root's pid).
    PostRestore,
    /// Just before the restored tasks are let go.
    PreResume,
    /// The network lock holding the tree's connections is removed.
    NetworkUnlock,
    /// The tree runs.
    PostResume,
}

impl Point {
    /// criu's name for it, as action scripts see it in CRTOOLS_SCRIPT_ACTION
    /// and RPC clients in the notify message.
    pub fn criu_name(self) -> &'static str {
        match self {
            Point::PreDump => "pre-dump",
            Point::NetworkLock => "network-lock",
            Point::PostDump => "post-dump",
            Point::PreRestore => "pre-restore",
            Point::SetupNamespaces => "setup-namespaces",
            Point::PostSetupNamespaces => "post-setup-namespaces",
            Point::PostRestore => "post-restore",
            Point::PreResume => "pre-resume",
            Point::NetworkUnlock => "network-unlock",
            Point::PostResume => "post-resume",
        }
    }
}

type Callback = dyn Fn(Point, Option<i32>) -> Result<()> + Send + Sync;

/// Who hears the points: a callback given the point and, where it has one,
/// the root's pid; or nobody (the default).
#[derive(Clone, Default)]
pub struct Notify(Option<Arc<Callback>>);

impl Notify {
    pub fn new(hear: impl Fn(Point, Option<i32>) -> Result<()> + Send + Sync + 'static) -> Notify {
        Notify(Some(Arc::new(hear)))
    }

    /// criu's `--action-script`s: each script is run (by `sh -c`) at every point, with
    /// the point's name in CRTOOLS_SCRIPT_ACTION, the images directory
    /// `images_dir` (if the images are on disk) in CRTOOLS_IMAGE_DIR and the root's pid, where there is
    /// one, in CRTOOLS_INIT_PID (criu's names); a script that fails stops
    /// the work.
    pub fn scripts(scripts: Vec<PathBuf>, images_dir: Option<&Path>) -> Notify {
        if scripts.is_empty() {
            return Notify::default();
        }
        let images_dir = images_dir.map(Path::to_path_buf);
        Notify::new(move |point, pid| {
            for script in &scripts {
                // As criu: through the shell, so that a script may be a
                // command line (`--action-script "iptables-restore < rules"`).
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(script);
                cmd.env("CRTOOLS_SCRIPT_ACTION", point.criu_name());
                if let Some(dir) = &images_dir {
                    cmd.env("CRTOOLS_IMAGE_DIR", dir);
                }
                if let Some(pid) = pid {
                    cmd.env("CRTOOLS_INIT_PID", pid.to_string());
                }
                let status = cmd.status().ctx(|| format!("running action script {}", script.display()))?;
                if !status.success() {
                    return Err(Error::Invalid(format!("action script {} failed at {} ({status})", script.display(), point.criu_name())));
                }
            }
            Ok(())
        })
    }

    /// Whether anybody listens (a dump then waits for the disk before
    /// letting the tree run on, so that post-dump finds the images in place).
    pub fn is_heard(&self) -> bool {
        self.0.is_some()
    }

    /// Tell the caller that `point` is reached; its error stops the work.
    pub fn at(&self, point: Point, pid: Option<i32>) -> Result<()> {
        match &self.0 {
            Some(hear) => {
                log::debug!("notify {} (pid {pid:?})", point.criu_name());
                hear(point, pid)
            }
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Notify(callback)" } else { "Notify(none)" })
    }
}
