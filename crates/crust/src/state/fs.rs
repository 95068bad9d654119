//! The process's fs state: working directory, root directory and umask
//! (fs-PID.img; the directories are files of files.img).

use super::{Component, ThreadDump, ThreadRestore};
use crate::error::{Context, Result};
use crate::images::proto::{CoreEntry, FsEntry, TaskCoreEntry};
use crate::images::Kind;

pub struct Fs;

impl Component for Fs {
    fn dump(&self, t: &mut ThreadDump, core: &mut CoreEntry) -> Result<()> {
        if core.tc.is_none() {
            return Ok(());
        }
        let pid = t.pid;
        let dir_flags = (libc::O_RDONLY | libc::O_DIRECTORY) as u32;
        let mut id_of = |link: &str| -> Result<u32> {
            let source = format!("/proc/{pid}/{link}");
            let path = std::fs::read_link(&source).ctx(|| format!("reading {source}"))?;
            t.files.path_id(&path.to_string_lossy(), dir_flags, &source)
        };
        let fs = FsEntry { cwd_id: id_of("cwd")?, root_id: id_of("root")?, umask: t.status.umask };
        let mut w = t.dir.writer(&format!("fs-{}.img", t.files.pids.of(pid)), Kind::Fs)?;
        w.entry(&fs)?;
        t.bytes_written += w.finish()?;
        Ok(())
    }

    fn restore_process(&self, p: &mut ThreadRestore, _tc: &TaskCoreEntry) -> Result<()> {
        // Both paths are as crust sees them (from its root): the cwd is
        // entered before the root changes.
        let fs = &p.process.fs;
        let cwd = p.image.reg_path(fs.cwd_id)?;
        let a = p.scratch.reset().put_str(cwd)?;
        p.task.call(&format!("chdir to {cwd}"), libc::SYS_chdir, [a, 0, 0, 0, 0, 0])?;
        let root = p.image.reg_path(fs.root_id)?;
        if root != "/" {
            let a = p.scratch.reset().put_str(root)?;
            p.task.call(&format!("chroot to {root}"), libc::SYS_chroot, [a, 0, 0, 0, 0, 0])?;
        }
        if let Some(umask) = fs.umask {
            p.task.call("umask", libc::SYS_umask, [umask as u64, 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }
}
