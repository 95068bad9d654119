//! The sysctls of a network namespace beyond CRIU's lists (conf.rs): every
//! readable and writable file under /proc/sys/net that the namespace has of
//! its own (net.ipv4.tcp_*, ip_local_port_range, ping_group_range,
//! net.core.somaxconn, net.netfilter.*...). The dump keeps those whose value
//! differs from a new namespace's (made for the comparison by a thread of
//! crust's), by path and text; the restore writes them back in the new
//! namespace, where every other one has the new namespace's value already.
//!
//! Left to conf.rs: ipv4/conf and ipv6/conf (per device, by CRIU's lists),
//! unix/max_dgram_qlen. The neighbour tables' settings (ipv4/neigh,
//! ipv6/neigh, per device) are compared too, and refused by name when
//! changed: a device takes them from its table's defaults when it is
//! made, and a restore would have to set each device's after making it.
//!
//! Read and written by a thread inside the namespace (/proc/sys/net shows
//! the namespace of the thread that opens a file there).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Context, Error, Result};
use crate::images::proto::NetnsSysctl;

const ROOT: &str = "/proc/sys/net";

/// Kept by conf.rs (CRIU's lists), relative to [`ROOT`].
const ELSEWHERE: &[&str] = &["ipv4/conf", "ipv6/conf", "unix/max_dgram_qlen"];

/// The neighbour tables' settings, per device.
const NEIGH: &[&str] = &["ipv4/neigh/", "ipv6/neigh/"];

/// The writable settings under `dir` (a path below [`ROOT`], "" for all),
/// by path relative to [`ROOT`], with their values, but those conf.rs keeps.
fn walk(dir: &str, out: &mut BTreeMap<String, String>) -> Result<()> {
    let full = if dir.is_empty() { ROOT.to_string() } else { format!("{ROOT}/{dir}") };
    for e in std::fs::read_dir(&full).ctx(|| format!("listing {full}"))? {
        let e = e.ctx(|| format!("listing {full}"))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if dir.is_empty() { name } else { format!("{dir}/{name}") };
        if ELSEWHERE.contains(&rel.as_str()) {
            continue;
        }
        let meta = e.metadata().ctx(|| format!("stat of {ROOT}/{rel}"))?;
        if meta.is_dir() {
            walk(&rel, out)?;
        } else if meta.permissions().mode() & 0o600 == 0o600 {
            // Some can be written but not always read (EIO, EPERM): nothing
            // the tree could have read back either.
            if let Ok(text) = std::fs::read_to_string(format!("{ROOT}/{rel}")) {
                out.insert(rel, text.strip_suffix('\n').unwrap_or(&text).to_string());
            }
        }
    }
    Ok(())
}

/// In the tree's namespace (this thread's): the settings that differ from
/// a new namespace's, which a thread of crust's makes to read them. A
/// changed neighbour setting is refused (`who` names the tree).
pub fn read_changed(who: &str) -> Result<Vec<NetnsSysctl>> {
    let mut now = BTreeMap::new();
    walk("", &mut now)?;
    let fresh = std::thread::scope(|s| {
        s.spawn(|| -> Result<BTreeMap<String, String>> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ctx(|| "making a new network namespace to compare sysctls with")?;
            let mut fresh = BTreeMap::new();
            walk("", &mut fresh)?;
            Ok(fresh)
        })
        .join()
        .map_err(|_| Error::Invalid("the thread reading a new network namespace's sysctls panicked".into()))?
    })?;
    let mut out = Vec::new();
    for (name, value) in &now {
        let Some(table) = NEIGH.iter().find(|n| name.starts_with(*n)) else {
            if fresh.get(name) != Some(value) {
                out.push(NetnsSysctl { name: name.clone(), value: value.clone() });
            }
            continue;
        };
        // Each device's settings start as the table's defaults, which a new
        // namespace's loopback shows (only the host's namespace has a
        // "default" directory).
        let setting = name[table.len()..].split_once('/').map_or(name.as_str(), |(_, s)| s);
        let base = format!("{table}lo/{setting}");
        if let Some(f) = fresh.get(&base).filter(|f| *f != value) {
            return Err(Error::unsupported(
                who.to_string(),
                format!("its network namespace has net.{} set to {value:?} (a new namespace's is {f:?}): neighbour table settings are not saved yet", name.replace('/', ".")),
            ));
        }
    }
    Ok(out)
}

/// A saved name is a path under /proc/sys/net, nothing else.
pub fn check(list: &[NetnsSysctl]) -> std::result::Result<(), String> {
    for s in list {
        let bad = s.name.is_empty() || s.name.starts_with('/') || s.name.split('/').any(|c| c.is_empty() || c == "." || c == "..");
        if bad {
            return Err(format!("sysctl {:?} is not a path under {ROOT}", s.name));
        }
    }
    Ok(())
}

/// In the new namespace: write the saved settings back.
pub fn write(list: &[NetnsSysctl]) -> Result<()> {
    for s in list {
        let path = format!("{ROOT}/{}", s.name);
        if !Path::new(&path).exists() {
            return Err(Error::unsupported(path, format!("the images set it to {:?}, and this kernel has no such setting", s.value)));
        }
        std::fs::write(&path, s.value.as_bytes()).ctx(|| format!("writing {:?} to {path}", s.value))?;
    }
    Ok(())
}
