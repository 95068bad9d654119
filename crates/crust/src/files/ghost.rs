//! Deleted files a task still holds (an executable or library replaced by an
//! upgrade, a temporary file unlinked while open or mapped): their contents go
//! into the images as CRIU's ghost files, and a restore puts each back under
//! a name for as long as the tree takes to open and map it, then unlinks it
//! again, so the restored tree holds a deleted file as the original did.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::FileTable;
use crate::error::{Context, Error, Result};
use crate::images::proto::{GhostFileEntry, RemapFilePathEntry};
use crate::images::{ImageDir, Kind};
use crate::restore::load::DumpImage;

/// CRIU's remap_type GHOST.
pub const REMAP_GHOST: u32 = 1;
/// What /proc says after the path of a deleted file.
pub const DELETED: &str = " (deleted)";

/// The deleted files of a dump.
#[derive(Default)]
pub struct Ghosts {
    /// Contents, by ghost id.
    files: Vec<(u32, GhostFileEntry, Vec<u8>)>,
    /// Ghost ids, by (device, inode): one copy of a file however often held.
    by_inode: HashMap<(u64, u64), u32>,
    remaps: Vec<RemapFilePathEntry>,
}

impl Ghosts {
    pub fn holds(&self, file_id: u32) -> bool {
        self.remaps.iter().any(|r| r.orig_id == file_id)
    }

    /// remap-fpath.img and a ghost-file-ID.img for each deleted file.
    pub fn write(&self, dir: &mut ImageDir) -> Result<u64> {
        if self.remaps.is_empty() {
            return Ok(0);
        }
        let mut bytes = 0;
        let mut w = dir.writer("remap-fpath.img", Kind::RemapFpath)?;
        for r in &self.remaps {
            w.entry(r)?;
        }
        bytes += w.finish()?;
        for (id, entry, data) in &self.files {
            let mut w = dir.writer(&format!("ghost-file-{id:x}.img"), Kind::GhostFile)?;
            w.entry(entry)?;
            w.raw(data)?;
            bytes += w.finish()?;
        }
        Ok(bytes)
    }
}

impl FileTable {
    /// File `orig_id` is deleted: keep its contents, read through `source` (a
    /// /proc path that still opens it: fd, map_files, exe).
    pub fn add_ghost(&mut self, orig_id: u32, source: &str) -> Result<()> {
        let what = || format!("reading the deleted file behind {source}");
        let mut file = std::fs::File::open(source).ctx(what)?;
        let md = file.metadata().ctx(what)?;
        if !md.is_file() {
            return Err(Error::Unsupported(format!("{source}: deleted directories and devices are not supported yet")));
        }
        let key = (md.dev(), md.ino());
        let remap_id = match self.ghosts.by_inode.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.ghosts.files.len() as u32 + 1;
                let mut data = Vec::with_capacity(md.len() as usize);
                file.read_to_end(&mut data).ctx(what)?;
                let entry = GhostFileEntry {
                    uid: md.uid(),
                    gid: md.gid(),
                    mode: md.mode(),
                    dev: None,
                    ino: Some(md.ino()),
                    chunks: None,
                    size: Some(data.len() as u64),
                };
                self.ghosts.files.push((id, entry, data));
                self.ghosts.by_inode.insert(key, id);
                id
            }
        };
        self.ghosts.remaps.push(RemapFilePathEntry { orig_id, remap_id, remap_type: Some(REMAP_GHOST) });
        Ok(())
    }
}

/// Deleted files put back for a restore; unlinked again when dropped (the
/// tree has them open and mapped by then, or failed).
pub struct Materialized {
    /// Each file put back, with its inode: only that file is removed (in a
    /// directory others write to, another may have taken the name since).
    paths: Vec<(PathBuf, u64)>,
}

impl Drop for Materialized {
    fn drop(&mut self) {
        for (p, ino) in &self.paths {
            if std::fs::symlink_metadata(p).is_ok_and(|md| md.ino() == *ino) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Put every ghost file of `img` back, and point the files that use it at it:
/// at its own path if that is free, else beside it (the upgrade that deleted
/// it put another file there), else in the temporary directory.
pub fn materialize(img: &mut DumpImage) -> Result<Materialized> {
    let mut done = Materialized { paths: Vec::new() };
    let mut placed: HashMap<u32, String> = HashMap::new();
    let remaps: Vec<(u32, u32)> = img.remaps.iter().map(|(&orig, &ghost)| (orig, ghost)).collect();
    for (orig_id, ghost_id) in remaps {
        let name = img.files.get(&orig_id).and_then(|f| f.reg.as_ref()).map(|r| r.name.clone()).ok_or_else(|| {
            Error::Invalid(format!("remap-fpath.img: file {orig_id} is not a regular file of files.img"))
        })?;
        let path = match placed.get(&ghost_id) {
            Some(p) => p.clone(),
            None => {
                let (entry, data) = img
                    .ghost_files
                    .get(&ghost_id)
                    .ok_or_else(|| Error::Invalid(format!("remap-fpath.img: no ghost-file-{ghost_id:x}.img")))?;
                let (p, ino) = place(&name, ghost_id, entry, data)?;
                done.paths.push((p.clone(), ino));
                let p = p.to_string_lossy().into_owned();
                placed.insert(ghost_id, p.clone());
                p
            }
        };
        if let Some(reg) = img.files.get_mut(&orig_id).and_then(|f| f.reg.as_mut()) {
            reg.name = path;
        }
    }
    Ok(done)
}

fn place(name: &str, ghost_id: u32, entry: &GhostFileEntry, data: &[u8]) -> Result<(PathBuf, u64)> {
    let original = Path::new(name);
    let dir = original.parent().filter(|d| d.is_dir()).map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let base = original.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ghost".into());
    let beside = dir.join(format!(".{base}.crust-ghost-{}-{ghost_id:x}", std::process::id()));
    let candidates = [dir.join(&base), beside];
    let mut last = None;
    for p in candidates {
        // Never over a file that is there: create it new, with the file's mode.
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(entry.mode & 0o7777).open(&p) {
            Ok(mut f) => {
                let what = || format!("putting back deleted file {name} as {}", p.display());
                let ino = f.metadata().ctx(what)?.ino();
                // Removed again on any failure from here.
                let written = f.write_all(data).and_then(|_| std::os::unix::fs::fchown(&f, Some(entry.uid), Some(entry.gid)));
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&p);
                    return Err(Error::Io { context: what(), err: e });
                }
                return Ok((p, ino));
            }
            Err(e) => last = Some((p, e)),
        }
    }
    let (p, e) = last.expect("two candidates");
    Err(Error::Io { context: format!("putting back deleted file {name} as {}", p.display()), err: e })
}
