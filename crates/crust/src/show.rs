//! Decoding a directory of images back into data: `crust show`.

use std::path::Path;

use prost::Message;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::{Context, Error, Result};
use crate::images::proto::{
    CgroupEntry, CoreEntry, FdinfoEntry, FileEntry, FsEntry, InventoryEntry, MmEntry, PagemapEntry, PagemapHead,
    GhostFileEntry, PipeDataEntry, PstreeEntry, RemapFilePathEntry, SkPacketEntry, StatsEntry, TaskKobjIdsEntry,
    TtyInfoEntry,
};
use crate::images::{ImageReader, Kind};

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn all<M: Message + Default + Serialize>(r: &mut ImageReader) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    while let Some(m) = r.read_entry::<M>()? {
        out.push(to_json(&m));
    }
    Ok(out)
}

/// Every entry of one image file, as JSON. Page contents are summarised, not printed.
pub fn show_file(path: &Path) -> Result<Value> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let kind = Kind::of_file_name(name)
        .ok_or_else(|| Error::Invalid(format!("{}: not an image crust knows", path.display())))?;
    if kind == Kind::Pages {
        let len = std::fs::metadata(path).ctx(|| format!("stat {}", path.display()))?.len();
        return Ok(json!({ "bytes": len, "pages": len / crate::images::criu::PAGE_SIZE }));
    }
    let mut r = ImageReader::open(path, kind)?;
    let entries = match kind {
        Kind::Inventory => all::<InventoryEntry>(&mut r)?,
        Kind::Pstree => all::<PstreeEntry>(&mut r)?,
        Kind::Core => all::<CoreEntry>(&mut r)?,
        Kind::Mm => all::<MmEntry>(&mut r)?,
        Kind::Pagemap => {
            let mut v = vec![to_json(&r.one::<PagemapHead>()?)];
            v.extend(all::<PagemapEntry>(&mut r)?);
            v
        }
        Kind::Files => all::<FileEntry>(&mut r)?,
        Kind::Fdinfo => all::<FdinfoEntry>(&mut r)?,
        Kind::Fs => all::<FsEntry>(&mut r)?,
        Kind::Ids => all::<TaskKobjIdsEntry>(&mut r)?,
        Kind::Cgroup => all::<CgroupEntry>(&mut r)?,
        Kind::PipesData | Kind::FifoData => {
            let mut v = Vec::new();
            while let Some(e) = r.read_entry::<PipeDataEntry>()? {
                r.raw(e.bytes as u64)?;
                v.push(to_json(&e));
            }
            v
        }
        Kind::SkQueues => {
            let mut v = Vec::new();
            while let Some(e) = r.read_entry::<SkPacketEntry>()? {
                r.raw(e.length as u64)?;
                v.push(to_json(&e));
            }
            v
        }
        Kind::RemapFpath => all::<RemapFilePathEntry>(&mut r)?,
        // The entry; the contents that follow it are not printed.
        Kind::GhostFile => vec![to_json(&r.one::<GhostFileEntry>()?)],
        Kind::TtyInfo => all::<TtyInfoEntry>(&mut r)?,
        Kind::Stats => all::<StatsEntry>(&mut r)?,
        Kind::Pages => unreachable!("handled above"),
    };
    Ok(Value::Array(entries))
}

/// Every image of a dump directory, keyed by file name.
pub fn show_dir(dir: &Path) -> Result<Value> {
    if !dir.join("inventory.img").exists() {
        return Err(Error::Invalid(format!("{}: no inventory.img, so no complete dump is here", dir.display())));
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| Kind::of_file_name(n).is_some())
        .collect();
    names.sort();
    let mut out = Map::new();
    for name in names {
        out.insert(name.clone(), show_file(&dir.join(&name))?);
    }
    Ok(Value::Object(out))
}
