//! The uts namespace: the host and domain names (utsns-ID.img).

use nix::sched::CloneFlags;

use super::{in_namespace, NsKind, NsOptions, NsRoot};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_one, DumpImage};
use crate::images::proto::{TaskKobjIdsEntry, UtsnsEntry};
use crate::images::{ImageDir, Kind};

pub struct Uts;

/// The names read back, for the restore.
struct Names(UtsnsEntry);

fn image_name(id: u32) -> String {
    format!("utsns-{id}.img")
}

impl NsKind for Uts {
    fn name(&self) -> &'static str {
        "uts"
    }

    fn clone_flag(&self) -> CloneFlags {
        CloneFlags::CLONE_NEWUTS
    }

    fn id(&self, ids: &TaskKobjIdsEntry) -> Option<u32> {
        ids.uts_ns_id
    }

    fn dump(&self, pid: i32, id: u32, dir: &mut ImageDir, _opts: &NsOptions) -> Result<u64> {
        let names = in_namespace(pid, "uts", || {
            let u = nix::sys::utsname::uname().ctx(|| "reading the host name")?;
            let text = |s: &std::ffi::OsStr, what: &str| {
                s.to_str().map(str::to_string).ok_or_else(|| Error::unsupported(crate::proc::who(pid), format!("its {what} is not UTF-8")))
            };
            Ok(UtsnsEntry { nodename: text(u.nodename(), "host name")?, domainname: text(u.domainname(), "domain name")? })
        })?;
        let mut w = dir.writer(&image_name(id), Kind::Utsns)?;
        w.entry(&names)?;
        w.finish()
    }

    fn load_images(&self, img: &mut DumpImage, id: u32) -> Result<()> {
        let entry: UtsnsEntry = read_one(&img.dir.join(image_name(id)), Kind::Utsns)?;
        // The kernel's limit (__NEW_UTS_LEN), less the terminating nul.
        for (what, name) in [("host name", &entry.nodename), ("domain name", &entry.domainname)] {
            if name.len() > 64 {
                return Err(Error::image(img.dir.join(image_name(id)), format!("{what} {name:?} is longer than 64 bytes")));
            }
        }
        img.extras.insert(Names(entry));
        Ok(())
    }

    fn restore(&self, img: &DumpImage, root: &mut NsRoot) -> Result<()> {
        let Some(Names(names)) = img.extras.get::<Names>() else { return Ok(()) };
        in_namespace(root.pid, "uts", || {
            nix::unistd::sethostname(&names.nodename).ctx(|| format!("setting the host name {:?}", names.nodename))?;
            // SAFETY: the pointer and length describe `domainname`'s bytes,
            // alive for the call; the kernel copies them.
            let r = unsafe { libc::setdomainname(names.domainname.as_ptr().cast(), names.domainname.len()) };
            nix::errno::Errno::result(r).ctx(|| format!("setting the domain name {:?}", names.domainname))?;
            Ok(())
        })
    }
}
