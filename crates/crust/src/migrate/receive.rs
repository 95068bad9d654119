//! The destination of a migration, over either link: `crust serve` runs it
//! for each tcp:// connection, `crust receive` for an ssh:// session.
//!
//! The images but the pages arrive first and are kept in a private session
//! directory; after the check, the tree is built and its pages are written
//! straight from the link into the new tasks' memory (no pages on disk here).
//! The tree is held stopped until the source says go; if the link breaks
//! before that, it is killed without having run, and nothing is left.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::channel::{Channel, CHECK, DATA, END_FILE, END_ROUND, FILE, GO, HELLO, LOCK, OK, RESTORE, ROUND};
use super::{safe_name, RemoteRestore, Restored, PROTOCOL};
use crate::error::{Context, Error, Result};
use crate::images::Kind;
use crate::images::criu::{PAGE_SIZE, PE_PARENT, PE_PRESENT};
use crate::images::proto::PagemapEntry;
use crate::images::load::{DumpImage, Pages, ProcessImage};
use crate::task::{Scratch, Task};
use crate::restore::{self as restore_mod, PageSink, PageSource};

/// How long the source may take to say go once the tree is built.
const GO_TIMEOUT: Duration = Duration::from_secs(60);

/// A private directory for one migration's images: `WORKDIR/session-PID`.
pub struct Session {
    pub dir: PathBuf,
}

impl Session {
    /// The directory sessions go in, made if missing; it must be crust's
    /// user's alone, or another user could swap the images before the restore.
    pub fn private_workdir(workdir: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        if let Some(parent) = workdir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(workdir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            r => r.ctx(|| format!("creating {}", workdir.display()))?,
        }
        let md = std::fs::symlink_metadata(workdir).ctx(|| format!("checking {}", workdir.display()))?;
        let me = nix::unistd::geteuid().as_raw();
        if !md.is_dir() || md.uid() != me || md.mode() & 0o022 != 0 {
            return Err(Error::Invalid(format!(
                "{} must be a directory of user {me} that others cannot write (it holds received images)",
                workdir.display()
            )));
        }
        Ok(())
    }

    pub fn create(workdir: &Path) -> Result<Session> {
        Session::private_workdir(workdir)?;
        let dir = workdir.join(format!("session-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(Session { dir })
    }

    /// Sessions in `workdir` whose receiver is gone (killed mid-transfer).
    pub fn remove_stale(workdir: &Path) {
        for e in std::fs::read_dir(workdir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("session-")) else { continue };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Take one migration from `chan`; on failure, tell the source why.
pub fn receive(chan: &mut Channel, workdir: &Path) -> Result<Restored> {
    let result = Session::create(workdir).and_then(|session| receive_into(chan, &session.dir));
    if let Err(e) = &result {
        chan.fail(&e.to_string());
    }
    result
}

fn receive_into(chan: &mut Channel, session: &Path) -> Result<Restored> {
    let mut restore = RemoteRestore::default();
    let mut file: Option<BufWriter<File>> = None;
    // The tree's connections, held here from LOCK until it runs here (or
    // until this fails: dropped, the lock goes).
    let mut lock = None;
    // The pre-copy round whose files are coming, and the last one done.
    let mut round: Option<(u32, PathBuf)> = None;
    let mut rounds_done = 0u32;
    loop {
        let (kind, payload) = chan.recv()?;
        match kind {
            HELLO => {
                restore = serde_json::from_slice(&payload).map_err(|e| Error::Protocol(format!("bad hello: {e}")))?;
                if restore.protocol != PROTOCOL {
                    return Err(Error::Protocol(format!(
                        "the destination's crust speaks migration protocol {PROTOCOL}, the source's {}: \
                         run the same crust on both hosts",
                        restore.protocol
                    )));
                }
                // The source freezes the tree only once the link is known to work.
                chan.send(OK, &[])?;
            }
            FILE => {
                let name = String::from_utf8_lossy(&payload).into_owned();
                // The pages of the processes come after RESTORE; those of shared
                // memory are made in the root before them, so they come here.
                let shmem_pages = name
                    .strip_prefix("pages-")
                    .and_then(|n| n.strip_suffix(".img"))
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|id| id >= crate::files::shmem::PAGES_ID_BASE);
                // A round holds memory only: pagemaps, pages and their digests.
                let allowed = match &round {
                    Some(_) => {
                        matches!(Kind::of_file_name(&name), Some(Kind::Pages | Kind::Pagemap)) || name == crate::images::digest::MANIFEST
                    }
                    None => Kind::of_file_name(&name) != Some(Kind::Pages) || shmem_pages,
                };
                if !safe_name(&name) || !allowed {
                    return Err(Error::Protocol(format!("refusing a file named {name:?} here")));
                }
                let path = round.as_ref().map(|r| r.1.as_path()).unwrap_or(session).join(&name);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .ctx(|| format!("creating {}", path.display()))?;
                file = Some(BufWriter::new(f));
            }
            DATA => {
                let f = file.as_mut().ok_or_else(|| Error::Protocol("data outside a file".into()))?;
                f.write_all(&payload).ctx(|| "writing a received image")?;
            }
            END_FILE => {
                let mut f = file.take().ok_or_else(|| Error::Protocol("end of no file".into()))?;
                f.flush().ctx(|| "writing a received image")?;
            }
            LOCK => {
                let img = crate::restore::load(session, Pages::Streamed)?;
                let note = format!("crust: network lock of a migration received in {}", session.display());
                lock = crate::files::tcp::lock_images(&img, &note)?;
                chan.send(OK, &[])?;
            }
            ROUND => {
                let n: u32 = std::str::from_utf8(&payload).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                if round.is_some() || file.is_some() || n != rounds_done + 1 {
                    return Err(Error::Protocol(format!("unexpected round {:?}", String::from_utf8_lossy(&payload))));
                }
                let dir = session.join(format!("round-{n}"));
                std::fs::DirBuilder::new().mode(0o700).create(&dir).ctx(|| format!("creating {}", dir.display()))?;
                if n > 1 {
                    let link = dir.join("parent");
                    std::os::unix::fs::symlink(format!("../round-{}", n - 1), &link).ctx(|| format!("creating {}", link.display()))?;
                }
                round = Some((n, dir));
            }
            END_ROUND => {
                let (n, _) = round.take().ok_or_else(|| Error::Protocol("end of no round".into()))?;
                if file.is_some() {
                    return Err(Error::Protocol(format!("round {n} ended inside a file")));
                }
                // The final dump's pages in the parent image are in the last round's chain.
                let link = session.join("parent");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(format!("round-{n}"), &link).ctx(|| format!("creating {}", link.display()))?;
                rounds_done = n;
            }
            CHECK => {
                let opts = restore_options(&restore, session)?;
                let img = crate::restore::load(session, Pages::Streamed)?;
                let problems = crate::restore::check::problems(&img, &opts);
                if !problems.is_empty() {
                    return Err(Error::Host { dir: session.to_path_buf(), problems });
                }
                chan.send(OK, &[])?;
            }
            RESTORE => {
                let opts = restore_options(&restore, session)?;
                let img = crate::restore::load(session, Pages::Streamed)?;
                return restore_streamed(chan, &opts, img, lock);
            }
            k => return Err(Error::Protocol(format!("unexpected frame kind {k}"))),
        }
    }
}

/// Build the tree with its pages from the link, report it built, and let it
/// run when the source says go; then the lock holding its connections goes.
fn restore_streamed(
    chan: &mut Channel,
    opts: &restore_mod::RestoreOptions,
    img: DumpImage,
    lock: Option<crate::netlock::Lock>,
) -> Result<Restored> {
    let held = restore_mod::restore_held(opts, img, &mut StreamedPages { chan })?;
    let built = Restored { root: held.root(), stats: held.stats().clone() };
    chan.send(OK, &to_json(&built)?)?;
    match chan.recv_within(GO_TIMEOUT)? {
        (GO, _) => {}
        (k, _) => return Err(Error::Protocol(format!("expected go, got frame kind {k}"))),
    }
    let restored = held.release()?;
    drop(lock);
    let answer = Restored { root: restored.root, stats: restored.stats };
    if let Err(e) = chan.send(OK, &to_json(&answer)?) {
        // The source cannot learn that the tree runs here, so it resumes it
        // there: this copy must not run on as well.
        kill_tree(answer.root);
        return Err(e);
    }
    Ok(answer)
}

fn to_json(r: &Restored) -> Result<Vec<u8>> {
    serde_json::to_vec(r).map_err(|e| Error::io_other("encoding the restore's stats", e))
}

/// Pages as they come over the link: each pages-N.img, in the order of
/// pstree.img, written into the memory of its process as it arrives.
struct StreamedPages<'a> {
    chan: &'a mut Channel,
}

impl PageSource for StreamedPages<'_> {
    fn fill(&mut self, task: &Task, scratch: &mut Scratch, p: &ProcessImage, sink: &mut PageSink) -> Result<()> {
        let name = p.pages_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match self.chan.recv()? {
            (FILE, got) if got == name.as_bytes() => {}
            (k, got) => {
                return Err(Error::Protocol(format!(
                    "expected the pages of process {} ({name}), got frame kind {k} {:?}",
                    p.pid(),
                    String::from_utf8_lossy(&got[..got.len().min(64)])
                )))
            }
        }
        // Pages a pre-copy round brought are in the rounds' images here
        // (the parent chain): the task reads them itself; the rest come
        // over the link, in order.
        crate::restore::fill_from_files(task, scratch, p.pages.iter().filter(|at| at.path != p.pages_path), sink)?;
        let here = |e: &&PagemapEntry| !(e.in_parent == Some(true) || e.flags.unwrap_or(PE_PRESENT) & PE_PARENT != 0);
        let runs: Vec<(u64, u64)> = p.pagemap.iter().filter(here).map(|e| (e.vaddr, e.nr_pages as u64 * PAGE_SIZE)).collect();
        put_streamed(self.chan, &name, &format!("pagemap-{}.img", p.pid()), &runs, sink)
    }
}

/// The frames of the pages file `name` into `sink`, each byte to its place in
/// `runs` (address, length) of `pagemap`, up to the file's end.
fn put_streamed(chan: &mut Channel, name: &str, pagemap: &str, runs: &[(u64, u64)], sink: &mut PageSink) -> Result<()> {
    // Where the next byte of the file goes: a run and how far into it.
    let (mut run, mut into) = (0usize, 0u64);
    // The sink takes whole pages: the start of one cut by the end of a frame waits here.
    let page = PAGE_SIZE as usize;
    let mut partial: Vec<u8> = Vec::with_capacity(page);
    loop {
        let (kind, data) = chan.recv()?;
        match kind {
            DATA => {
                let mut data = &data[..];
                while !data.is_empty() {
                    let &(vaddr, len) =
                        runs.get(run).ok_or_else(|| Error::Protocol(format!("{name}: more bytes than {pagemap} lists")))?;
                    if partial.is_empty() && data.len() >= page {
                        let n = ((len - into) as usize).min(data.len() - data.len() % page);
                        sink.put(vaddr + into, &data[..n])?;
                        data = &data[n..];
                        into += n as u64;
                    } else {
                        let n = (page - partial.len()).min(data.len());
                        partial.extend_from_slice(&data[..n]);
                        data = &data[n..];
                        if partial.len() == page {
                            sink.put(vaddr + into, &partial)?;
                            partial.clear();
                            into += PAGE_SIZE;
                        }
                    }
                    if into == len {
                        (run, into) = (run + 1, 0);
                    }
                }
            }
            END_FILE if run == runs.len() => return Ok(()),
            END_FILE => return Err(Error::Protocol(format!("{name}: fewer bytes than {pagemap} lists"))),
            k => return Err(Error::Protocol(format!("{name}: unexpected frame kind {k}"))),
        }
    }
}

/// SIGKILL a process and all its descendants, parents first (so none forks).
fn kill_tree(root: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        // Stopped first, so that its children can still be listed.
        let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        let tasks = procfs::process::Process::new(pid).and_then(|p| p.tasks());
        for t in tasks.into_iter().flatten().flatten() {
            queue.extend(t.children().unwrap_or_default().into_iter().map(|c| c as i32));
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn restore_options(r: &RemoteRestore, dir: &Path) -> Result<restore_mod::RestoreOptions> {
    let manage_cgroups = if r.manage_cgroups.is_empty() { "soft" } else { r.manage_cgroups.as_str() };
    let mut net = crate::ns::net::NetOptions::default();
    for spec in &r.veths {
        let end = crate::ns::net::VethEnd::parse(spec).unwrap_or_else(|| Err(format!("{spec}: not a veth[IF]:HOSTIF[@BRIDGE]")));
        net.veths.push(end.map_err(Error::Protocol)?);
    }
    Ok(restore_mod::RestoreOptions {
        net,
        dir: dir.to_path_buf(),
        shell_job: r.shell_job,
        pid_wait: Duration::from_secs(2),
        manage_cgroups: manage_cgroups.parse().map_err(Error::Protocol)?,
        cgroup_roots: r.cgroup_roots.iter().map(|c| c.parse()).collect::<std::result::Result<_, _>>().map_err(Error::Protocol)?,
        tcp: super::clients::mode_of(&r.tcp)?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::PageCounts;

    /// A receiving channel holding `frames`, written through a file.
    fn channel_with(frames: &[(u8, Vec<u8>)]) -> Channel {
        let path = std::env::temp_dir().join(format!("crust-unit-frames-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let fd = std::os::fd::OwnedFd::from(file.try_clone().unwrap());
        let mut tx = Channel::pipes(Box::new(std::io::empty()), fd, Box::new(file), "test".into());
        for (kind, payload) in frames {
            tx.send(*kind, payload).unwrap();
        }
        drop(tx);
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let fd = std::os::fd::OwnedFd::from(file.try_clone().unwrap());
        Channel::pipes(Box::new(file), fd, Box::new(std::io::sink()), "test".into())
    }

    #[test]
    fn pages_cut_anywhere_by_frames_land_whole_and_inherited_equal_ones_are_kept() {
        const PAGES: usize = 6;
        let len = PAGES * PAGE_SIZE as usize;
        // SAFETY: a new private anonymous mapping, only accessed through
        // `mem` (and process_vm_writev from this process) until unmapped below.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(base, libc::MAP_FAILED);
        let addr = base as u64;
        // What the task "inherited": every page 0x11 but page 1 and 4.
        // SAFETY: the mapping above, `len` bytes, alive until the munmap.
        let mem = unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>(), len) };
        mem.fill(0x11);
        // Saved: pages 0-2 at the start, 4-5 further on, page 1 and 4 different.
        let mut saved = vec![0x11u8; 5 * PAGE_SIZE as usize];
        saved[PAGE_SIZE as usize..2 * PAGE_SIZE as usize].fill(0x22);
        saved[3 * PAGE_SIZE as usize..4 * PAGE_SIZE as usize].fill(0x44);
        let cuts: [usize; 5] = [1000, 5000, 3, 8192, 4000];
        let mut frames = Vec::new();
        let mut at = 0usize;
        for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let end = at.saturating_add(*c).min(saved.len());
            frames.push((DATA, saved[at..end].to_vec()));
            at = end;
        }
        frames.push((END_FILE, Vec::new()));
        let mut chan = channel_with(&frames);
        let runs = [(addr, 3 * PAGE_SIZE), (addr + 4 * PAGE_SIZE, 2 * PAGE_SIZE)];
        // Pages 0-3 are inherited; 4 and 5 are not (written whatever they hold).
        let inherited = [(addr, addr + 4 * PAGE_SIZE)];
        let mut told = 0;
        let mut progress = |n| told += n;
        let mut sink = PageSink::new(std::process::id() as i32, &inherited, &[], None, &mut progress);
        put_streamed(&mut chan, "pages-1.img", "pagemap-1.img", &runs, &mut sink).unwrap();
        let counts = sink.counts();
        let page = |i: usize| &mem[i * PAGE_SIZE as usize..(i + 1) * PAGE_SIZE as usize];
        assert!(page(1).iter().all(|&b| b == 0x22) && page(4).iter().all(|&b| b == 0x44));
        assert!([0, 2, 3, 5].iter().all(|&i| page(i).iter().all(|&b| b == 0x11)));
        assert_eq!(counts, PageCounts { restored: 3, compared: 3, skipped_cow: 2 }, "pages 0-2 compared, 4-5 written");
        assert_eq!(told, 5 * PAGE_SIZE);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(base, len) };
    }
}
