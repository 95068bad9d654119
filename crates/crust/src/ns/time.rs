//! The time namespace: the offsets of its monotonic and boottime clocks
//! (timens-ID.img). As criu does, the image holds the two clocks as the
//! tree saw them at dump (the host's clock plus the namespace's offset),
//! and the restore sets the new namespace's offsets so that the tree's
//! clocks go on from there: no jump back and no gap for the time it was
//! away, on this host or another (whose clocks started elsewhere). The
//! offsets themselves therefore change from dump to restore.
//!
//! A time namespace's offsets can only be written while no process is in
//! it, so the root is not made in it by clone3: the root unshares one (it
//! becomes the namespace for its children), crust writes its offsets, and
//! the root, still alone and single-threaded, joins it with setns.

use nix::sched::CloneFlags;
use nix::time::{clock_gettime, ClockId};

use super::{NsKind, NsRoot};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_one, DumpImage};
use crate::images::proto::{TaskKobjIdsEntry, TimensEntry, Timespec};
use crate::images::{ImageDir, Kind};

pub struct Time;

/// The clocks read back, for the restore.
struct Clocks(TimensEntry);

fn image_name(id: u32) -> String {
    format!("timens-{id}.img")
}

const NSEC: i128 = 1_000_000_000;

/// The clocks of `/proc/PID/timens_offsets` a time namespace moves, by the
/// name that file gives them.
const CLOCKS: [(&str, ClockId); 2] = [("monotonic", ClockId::CLOCK_MONOTONIC), ("boottime", ClockId::CLOCK_BOOTTIME)];

fn now(clock: ClockId) -> Result<i128> {
    let t = clock_gettime(clock).ctx(|| format!("reading clock {clock}"))?;
    Ok(t.tv_sec() as i128 * NSEC + t.tv_nsec() as i128)
}

/// The offsets of `pid`'s time namespace, in ns, in the order of [`CLOCKS`].
fn offsets(pid: i32) -> Result<[i128; 2]> {
    let path = format!("/proc/{pid}/timens_offsets");
    let text = crate::proc::read_string(&path)?;
    let mut out = [0i128; 2];
    for (i, (name, _)) in CLOCKS.iter().enumerate() {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
        let parsed = line.and_then(|l| {
            let mut w = l.split_whitespace().skip(1);
            let (s, ns) = (w.next()?.parse::<i64>().ok()?, w.next()?.parse::<i64>().ok()?);
            Some(s as i128 * NSEC + ns as i128)
        });
        out[i] = parsed.ok_or_else(|| Error::Invalid(format!("{path}: no {name} offset in {text:?}")))?;
    }
    Ok(out)
}

fn timespec(ns: i128) -> Timespec {
    Timespec { tv_sec: (ns / NSEC) as u64, tv_nsec: (ns % NSEC) as u64 }
}

fn nanos(t: &Timespec) -> i128 {
    t.tv_sec as i128 * NSEC + t.tv_nsec as i128
}

impl NsKind for Time {
    fn name(&self) -> &'static str {
        "time"
    }

    /// None: clone3 would put the root in the namespace before crust could
    /// set its offsets (see the module's doc).
    fn clone_flag(&self) -> CloneFlags {
        CloneFlags::empty()
    }

    fn id(&self, ids: &TaskKobjIdsEntry) -> Option<u32> {
        ids.time_ns_id
    }

    fn dump(&self, pid: i32, id: u32, dir: &mut ImageDir, _opts: &super::NsOptions) -> Result<u64> {
        let [mono_off, boot_off] = offsets(pid)?;
        let entry = TimensEntry {
            monotonic: timespec(now(ClockId::CLOCK_MONOTONIC)? + mono_off),
            boottime: timespec(now(ClockId::CLOCK_BOOTTIME)? + boot_off),
        };
        let mut w = dir.writer(&image_name(id), Kind::Timens)?;
        w.entry(&entry)?;
        w.finish()
    }

    fn load_images(&self, img: &mut DumpImage, id: u32) -> Result<()> {
        let path = img.dir.join(image_name(id));
        let entry: TimensEntry = read_one(&path, Kind::Timens)?;
        for (what, t) in [("monotonic", &entry.monotonic), ("boottime", &entry.boottime)] {
            if t.tv_nsec >= NSEC as u64 || t.tv_sec > i64::MAX as u64 / 2 {
                return Err(Error::image(&path, format!("{what} clock {}.{:09} is out of range", t.tv_sec, t.tv_nsec)));
            }
        }
        img.extras.insert(Clocks(entry));
        Ok(())
    }

    fn problems(&self, _img: &DumpImage, _opts: &super::NsOptions) -> Vec<String> {
        match std::path::Path::new("/proc/self/timens_offsets").exists() {
            true => Vec::new(),
            false => vec!["the tree has a time namespace of its own, and this kernel has none (no /proc/self/timens_offsets)".into()],
        }
    }

    fn restore(&self, img: &DumpImage, root: &mut NsRoot) -> Result<()> {
        let Some(Clocks(saved)) = img.extras.get::<Clocks>() else { return Ok(()) };
        root.task.call("unshare(CLONE_NEWTIME)", libc::SYS_unshare, [libc::CLONE_NEWTIME as u64, 0, 0, 0, 0, 0])?;
        let mut text = String::new();
        for ((name, clock), t) in CLOCKS.iter().zip([&saved.monotonic, &saved.boottime]) {
            let off = nanos(t) - now(*clock)?;
            text += &format!("{name} {} {}\n", off.div_euclid(NSEC), off.rem_euclid(NSEC));
        }
        let path = format!("/proc/{}/timens_offsets", root.pid);
        std::fs::write(&path, &text).ctx(|| format!("writing {text:?} to {path}"))?;
        let fd = root.task.open(root.scratch, "/proc/self/ns/time_for_children", libc::O_RDONLY as u32)?;
        let joined = root.task.call("setns into the new time namespace", libc::SYS_setns, [fd, libc::CLONE_NEWTIME as u64, 0, 0, 0, 0]);
        root.task.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        joined.map(|_| ())
    }
}
