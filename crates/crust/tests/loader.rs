//! The loader on crafted images: every malformed, inconsistent or overflowing
//! value is an error naming the image file (and the offset, where one means
//! something), never a panic, a wrapped number or a success.
//! Run alone with `cargo test -p crust --test loader`.

use std::path::PathBuf;

use crust::images::criu::{PAGE_SIZE, TASK_ALIVE, TASK_ZOMBIE, VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_REGULAR};
use crust::images::digest::MANIFEST;
use crust::images::load::{DumpImage, Pages, MAX_PID};
use crust::images::proto::{
    CoreEntry, FdTypes, FdinfoEntry, FileEntry, FsEntry, GhostFileEntry, InventoryEntry, MmEntry, PagemapEntry,
    PagemapHead, PipeDataEntry, PstreeEntry, RegFileEntry, RemapFilePathEntry, SkPacketEntry, TaskCoreEntry,
    TaskKobjIdsEntry, ThreadCoreEntry, ThreadInfoX86, VmaEntry,
};
use crust::images::{ImageDir, Kind};
use crust::Error;

/// A directory removed when the test ends.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("crust-loader-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Edit the bytes of one image (the manifest then no longer matches:
    /// it goes, as in a dump made by criu).
    fn edit(&self, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(self.file(name)).unwrap();
        f(&mut bytes);
        std::fs::write(self.file(name), bytes).unwrap();
        let _ = std::fs::remove_file(self.file(MANIFEST));
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const VMA: (u64, u64) = (0x10000, 0x14000);

struct Process {
    pstree: PstreeEntry,
    core: CoreEntry,
    mm: MmEntry,
    pagemap: Vec<PagemapEntry>,
    /// Bytes of pages-PID.img (as many as the pagemap lists, unless a test says otherwise).
    pages: usize,
    fds: Vec<FdinfoEntry>,
}

fn process(pid: u32, ppid: u32) -> Process {
    let core = CoreEntry {
        tc: Some(TaskCoreEntry { task_state: TASK_ALIVE, comm: "fixture".into(), ..Default::default() }),
        ids: Some(TaskKobjIdsEntry { files_id: pid, vm_id: pid, fs_id: pid, sighand_id: pid, ..Default::default() }),
        thread_info: Some(ThreadInfoX86::default()),
        thread_core: Some(ThreadCoreEntry::default()),
        ..Default::default()
    };
    let vma = VmaEntry {
        start: VMA.0,
        end: VMA.1,
        prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
        flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
        status: VMA_AREA_REGULAR | VMA_ANON_PRIVATE,
        fd: -1,
        ..Default::default()
    };
    Process {
        pstree: PstreeEntry { pid, ppid, pgid: pid, sid: pid, threads: vec![pid] },
        core,
        mm: MmEntry { exe_file_id: 1, vmas: vec![vma], ..Default::default() },
        pagemap: vec![PagemapEntry { vaddr: VMA.0, nr_pages: 2, in_parent: None, flags: Some(4) }],
        pages: 2 * PAGE_SIZE as usize,
        fds: vec![FdinfoEntry { id: 1, fd: 0, r#type: FdTypes::Reg as i32, ..Default::default() }],
    }
}

/// A small dump that loads: one process (or more), a regular file for its
/// fds, cwd, root and executable.
struct Fixture {
    procs: Vec<Process>,
    files: Vec<FileEntry>,
    /// More images: (name, kind, entries each with raw bytes after it).
    more: Vec<(String, Kind, Vec<Entry>)>,
}

/// An encoded entry, and the raw bytes that follow it.
type Entry = (Vec<u8>, Vec<u8>);

fn reg(id: u32, name: &str) -> FileEntry {
    FileEntry {
        r#type: FdTypes::Reg as i32,
        id,
        reg: Some(RegFileEntry { id, name: name.into(), ..Default::default() }),
        ..Default::default()
    }
}

impl Fixture {
    fn new() -> Fixture {
        Fixture { procs: vec![process(100, 0)], files: vec![reg(1, "/")], more: Vec::new() }
    }

    fn with(mut self, f: impl FnOnce(&mut Fixture)) -> Fixture {
        f(&mut self);
        self
    }

    fn image<M: prost::Message>(&mut self, name: &str, kind: Kind, entries: &[(M, Vec<u8>)]) {
        let entries = entries.iter().map(|(m, raw)| (m.encode_to_vec(), raw.clone())).collect();
        self.more.push((name.into(), kind, entries));
    }

    fn write(&self, name: &str) -> Dir {
        let d = Dir::new(name);
        let mut dir = ImageDir::create(&d.0).unwrap();
        fn one<M: prost::Message>(dir: &mut ImageDir, name: &str, kind: Kind, entries: &[M]) {
            let mut w = dir.writer(name, kind).unwrap();
            entries.iter().for_each(|e| w.entry(e).unwrap());
            w.finish().unwrap();
        }
        one(&mut dir, "inventory.img", Kind::Inventory, &[InventoryEntry { img_version: 2, ..Default::default() }]);
        one(&mut dir, "pstree.img", Kind::Pstree, &self.procs.iter().map(|p| p.pstree.clone()).collect::<Vec<_>>());
        for p in &self.procs {
            let pid = p.pstree.pid;
            one(&mut dir, &format!("core-{pid}.img"), Kind::Core, std::slice::from_ref(&p.core));
            one(&mut dir, &format!("mm-{pid}.img"), Kind::Mm, std::slice::from_ref(&p.mm));
            let mut w = dir.writer(&format!("pagemap-{pid}.img"), Kind::Pagemap).unwrap();
            w.entry(&PagemapHead { pages_id: pid }).unwrap();
            p.pagemap.iter().for_each(|e| w.entry(e).unwrap());
            w.finish().unwrap();
            let mut w = dir.writer(&format!("pages-{pid}.img"), Kind::Pages).unwrap();
            w.raw(&vec![0x5a; p.pages]).unwrap();
            w.finish().unwrap();
            one(&mut dir, &format!("fdinfo-{pid}.img"), Kind::Fdinfo, &p.fds);
            one(&mut dir, &format!("fs-{pid}.img"), Kind::Fs, &[FsEntry { cwd_id: 1, root_id: 1, umask: Some(0o22) }]);
        }
        one(&mut dir, "files.img", Kind::Files, &self.files);
        for (name, kind, entries) in &self.more {
            let mut w = dir.writer(name, *kind).unwrap();
            for (body, raw) in entries {
                w.raw(&(body.len() as u32).to_le_bytes()).unwrap();
                w.raw(body).unwrap();
                w.raw(raw).unwrap();
            }
            w.finish().unwrap();
        }
        dir.commit().unwrap();
        d
    }
}

fn load(d: &Dir) -> crust::Result<DumpImage> {
    crust::restore::load(&d.0, Pages::InDir)
}

/// The error of a load that must fail: in image `file`, saying `what`; returns its offset.
fn refused(d: &Dir, file: &str, what: &str) -> u64 {
    match load(d) {
        Ok(_) => panic!("a dump that should be refused ({what}) loaded"),
        Err(Error::Image { file: f, offset, what: w }) => {
            assert_eq!(f.file_name().and_then(|n| n.to_str()), Some(file), "error about another file: {w}");
            assert!(w.contains(what), "{f:?}: {w:?} does not say {what:?}");
            offset
        }
        Err(e) => panic!("not an image error: {e}"),
    }
}

/// Offset of entry `n` (0-based) of an image with magic words `head` bytes long.
fn entry_offset(bytes: &[u8], head: usize, n: usize) -> usize {
    let mut at = head;
    for _ in 0..n {
        at += 4 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    at
}

#[test]
fn the_fixture_loads_shows_and_checks() {
    let d = Fixture::new().write("good");
    let img = load(&d).unwrap();
    assert_eq!(img.processes.len(), 1);
    assert_eq!(img.processes[0].pagemap.len(), 1);
    crust::show::show_dir(&d.0).unwrap();
    let _ = crust::restore::check::problems(&img, &Default::default());
}

#[test]
fn a_vma_offset_that_overflows_is_refused() {
    for status in [VMA_AREA_REGULAR | VMA_ANON_PRIVATE, VMA_AREA_REGULAR | VMA_ANON_SHARED] {
        let d = Fixture::new()
            .with(|f| {
                let v = &mut f.procs[0].mm.vmas[0];
                v.pgoff = u64::MAX - PAGE_SIZE + 1;
                v.status = status;
            })
            .write("pgoff");
        assert_eq!(refused(&d, "mm-100.img", "offset 0xfffffffffffff000"), 8, "at the mm entry");
    }
    let d = Fixture::new().with(|f| f.procs[0].mm.vmas[0].pgoff = 0x1001).write("pgoff-unaligned");
    refused(&d, "mm-100.img", "not a page-aligned offset");
}

#[test]
fn a_vma_that_is_no_range_is_refused() {
    for (start, end) in [(0x20000, 0x10000), (0x10000, 0x10000), (0x10001, 0x20000), (0x10000, u64::MAX)] {
        let d = Fixture::new()
            .with(|f| {
                f.procs[0].mm.vmas[0].start = start;
                f.procs[0].mm.vmas[0].end = end;
                f.procs[0].pagemap.clear();
                f.procs[0].pages = 0;
            })
            .write("vma-range");
        refused(&d, "mm-100.img", "is not a page-aligned range");
    }
}

#[test]
fn pagemap_runs_that_overflow_or_leave_the_memory_are_refused_at_their_entry() {
    let cases: [(u64, u32, &str); 4] = [
        (u64::MAX - PAGE_SIZE + 1, 2, "is not a range"),
        (VMA.0, u32::MAX, "outside the process's memory"),
        (VMA.0, 0, "is not a range"),
        (VMA.0 + 1, 1, "outside the process's memory"),
    ];
    for (vaddr, nr_pages, what) in cases {
        let d = Fixture::new()
            .with(|f| f.procs[0].pagemap.push(PagemapEntry { vaddr, nr_pages, in_parent: None, flags: Some(4) }))
            .write("pagemap");
        let offset = refused(&d, "pagemap-100.img", what);
        let bytes = std::fs::read(d.file("pagemap-100.img")).unwrap();
        assert_eq!(offset, entry_offset(&bytes, 8, 2) as u64, "{what}: the offset of the third entry");
    }
}

#[test]
fn pagemap_runs_that_add_up_beyond_2_64_bytes_are_refused() {
    // Runs of 2^32 - 1 pages (about 2^44 bytes), all inside one vast vma: 2^20 + 1
    // of them hold more than 2^64 bytes, which a u64 count of bytes wrapped to
    // a small number (and a pages image of that size matched it).
    let top = 1u64 << 47;
    let d = Fixture::new()
        .with(|f| {
            let p = &mut f.procs[0];
            p.mm.vmas[0].start = 0;
            p.mm.vmas[0].end = top;
            p.pagemap = (0..(1 << 20) + 1).map(|_| PagemapEntry { vaddr: 0, nr_pages: u32::MAX, in_parent: None, flags: None }).collect();
            p.pages = 0;
        })
        .write("pagemap-sum");
    let offset = refused(&d, "pagemap-100.img", "more than 2^64 bytes");
    assert!(offset > 8, "located at its entry: {offset}");
}

#[test]
fn a_pages_image_shorter_or_longer_than_its_pagemap_is_refused() {
    for (pages, offset) in [(PAGE_SIZE as usize, PAGE_SIZE), (3 * PAGE_SIZE as usize, 2 * PAGE_SIZE)] {
        let d = Fixture::new().with(|f| f.procs[0].pages = pages).write("pages-size");
        let at = refused(&d, "pages-100.img", "lists 2 pages (8192 bytes)");
        assert_eq!(at, offset);
    }
}

#[test]
fn entry_lengths_beyond_the_file_or_any_entry_are_refused_before_allocating() {
    for (len, what) in [(u32::MAX, "beyond any valid entry"), (64 << 20, "only"), (1000, "truncated: an entry of 1000 bytes")] {
        let d = Fixture::new().write("length");
        d.edit("pstree.img", |b| b[8..12].copy_from_slice(&len.to_le_bytes()));
        assert_eq!(refused(&d, "pstree.img", what), 8);
    }
}

#[test]
fn a_wrong_magic_is_refused_at_its_offset() {
    let d = Fixture::new().write("magic");
    d.edit("core-100.img", |b| b[4] ^= 1);
    let offset = refused(&d, "core-100.img", "bad magic");
    assert_eq!(offset, 4);
    d.edit("inventory.img", |b| b[0] ^= 1);
    assert_eq!(refused(&d, "inventory.img", "bad magic"), 0);
}

#[test]
fn truncated_entries_are_refused() {
    let d = Fixture::new().write("truncated");
    d.edit("mm-100.img", |b| b.truncate(b.len() - 3));
    let offset = refused(&d, "mm-100.img", "truncated");
    assert_eq!(offset, 8, "at the entry's length");
    d.edit("mm-100.img", |b| b.truncate(10));
    refused(&d, "mm-100.img", "truncated: entry length needs 3 bytes, only 1 left");
    d.edit("mm-100.img", |b| b.truncate(8));
    refused(&d, "mm-100.img", "expected an entry");
}

#[test]
fn a_damaged_image_is_refused_by_the_manifest_and_a_bad_manifest_by_itself() {
    let d = Fixture::new().write("manifest");
    let mut bytes = std::fs::read(d.file("mm-100.img")).unwrap();
    bytes[12] ^= 0x40;
    std::fs::write(d.file("mm-100.img"), &bytes).unwrap();
    refused(&d, "mm-100.img", "corrupted");
    // A manifest that names files outside the directory, or blocks that do not add up.
    for bad in [r#"{"../mm-100.img":{"size":0,"blocks":[]}}"#, r#"{"mm-100.img":{"size":1,"blocks":[]}}"#] {
        let text = format!("{:08x}\n{bad}", crc32fast::hash(bad.as_bytes()));
        std::fs::write(d.file(MANIFEST), text).unwrap();
        refused(&d, MANIFEST, "");
    }
}

#[test]
fn missing_images_are_named() {
    for name in ["fs-100.img", "core-100.img", "pagemap-100.img", "pages-100.img", "files.img", "inventory.img"] {
        let d = Fixture::new().write("missing");
        std::fs::remove_file(d.file(name)).unwrap();
        let _ = std::fs::remove_file(d.file(MANIFEST));
        let err = load(&d).err().unwrap_or_else(|| panic!("loaded without {name}"));
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
}

#[test]
fn an_fd_whose_file_is_missing_or_of_another_type_is_refused() {
    let d = Fixture::new().with(|f| f.procs[0].fds[0].id = 99).write("fd-missing");
    refused(&d, "files.img", "no file 99 for fd 0 of process 100");
    let d = Fixture::new().with(|f| f.procs[0].fds[0].r#type = FdTypes::Pipe as i32).write("fd-type");
    refused(&d, "fdinfo-100.img", "has type 2, but its file 1 has type 1");
    let d = Fixture::new()
        .with(|f| f.procs[0].fds.push(FdinfoEntry { id: 1, fd: 0, r#type: FdTypes::Reg as i32, ..Default::default() }))
        .write("fd-twice");
    let offset = refused(&d, "fdinfo-100.img", "fd 0 of process 100 is not a free fd number");
    let bytes = std::fs::read(d.file("fdinfo-100.img")).unwrap();
    assert_eq!(offset, entry_offset(&bytes, 8, 1) as u64, "at the second entry");
    let d = Fixture::new().with(|f| f.procs[0].fds[0].fd = u32::MAX).write("fd-huge");
    refused(&d, "fdinfo-100.img", "is not a free fd number");
}

#[test]
fn a_mapped_file_must_be_a_regular_file_of_the_dump() {
    for shmid in [7, 1 << 32 | 1] {
        let d = Fixture::new()
            .with(|f| {
                let v = &mut f.procs[0].mm.vmas[0];
                v.flags = libc::MAP_PRIVATE as u32;
                v.status = VMA_AREA_REGULAR;
                v.shmid = shmid;
            })
            .write("vma-file");
        refused(&d, "mm-100.img", "which is not a regular file of files.img");
    }
}

#[test]
fn pstree_order_and_pids_are_checked() {
    // A parent listed after its child.
    let d = Fixture { procs: vec![process(100, 0), process(300, 200), process(200, 100)], ..Fixture::new() }.write("pstree-order");
    let offset = refused(&d, "pstree.img", "process 300: parent 200 is not listed before it");
    let bytes = std::fs::read(d.file("pstree.img")).unwrap();
    assert_eq!(offset, entry_offset(&bytes, 8, 1) as u64, "at the entry of process 300");
    // Pids a kernel cannot hand out, a thread listed twice, a leader that is not first.
    type Edit = fn(&mut PstreeEntry);
    let cases: [(Edit, &str); 5] = [
        (|p| p.pid = 0, "pid 0 is not a pid"),
        (|p| p.sid = MAX_PID + 1, "session 4194305 is not a pid"),
        (|p| p.threads.push(u32::MAX), "thread 4294967295 is not a pid"),
        (|p| p.threads.push(100), "thread 100 is listed twice"),
        (|p| p.threads.insert(0, 101), "its first thread is not its leader"),
    ];
    for (edit, what) in cases {
        let d = Fixture::new().with(|f| edit(&mut f.procs[0].pstree)).write("pstree-ids");
        refused(&d, "pstree.img", what);
    }
    let d = Fixture { procs: vec![process(100, 0), process(200, 100)], ..Fixture::new() }
        .with(|f| f.procs[1].pstree.threads.push(100))
        .write("pstree-shared-tid");
    refused(&d, "pstree.img", "thread 100 is listed twice");
}

#[test]
fn zombies_die_of_an_exit_or_a_signal_only() {
    for (status, ok) in [(7 << 8, true), (15, true), (0x80 | 11, true), (0x7f, false), (100, false), (0x10000, false), (0x0f0f, false)] {
        let d = Fixture { procs: vec![process(100, 0), process(200, 100)], ..Fixture::new() }
            .with(|f| {
                let tc = f.procs[1].core.tc.as_mut().unwrap();
                tc.task_state = TASK_ZOMBIE;
                tc.exit_code = status;
            })
            .write("zombie");
        if ok {
            assert_eq!(load(&d).unwrap().processes[1].zombie, Some(status));
        } else {
            refused(&d, "core-200.img", "is not one a process can die with");
        }
    }
}

#[test]
fn raw_data_longer_than_its_image_is_refused_before_allocating() {
    let remap = RemapFilePathEntry { orig_id: 1, remap_id: 1, remap_type: Some(1) };
    let ghost = GhostFileEntry { size: Some(u64::MAX), ..Default::default() };
    let d = Fixture::new()
        .with(|f| {
            f.image("remap-fpath.img", Kind::RemapFpath, &[(remap, Vec::new())]);
            f.image("ghost-file-1.img", Kind::GhostFile, &[(ghost, vec![1, 2, 3])]);
        })
        .write("ghost");
    refused(&d, "ghost-file-1.img", "raw data needs 18446744073709551615 bytes, only 3 left");
    let d = Fixture::new()
        .with(|f| f.image("sk-queues.img", Kind::SkQueues, &[(SkPacketEntry { id_for: 1, length: u32::MAX, ..Default::default() }, vec![0; 10])]))
        .write("sk-queue");
    refused(&d, "sk-queues.img", "only 10 left");
    let d = Fixture::new()
        .with(|f| {
            let e = PipeDataEntry { pipe_id: 5, bytes: 2, size: Some(1 << 31) };
            f.image("pipes-data.img", Kind::PipesData, &[(e, vec![1, 2])])
        })
        .write("pipe-size");
    refused(&d, "pipes-data.img", "buffer size Some(2147483648)");
}
