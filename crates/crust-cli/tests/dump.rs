//! `crust dump` on real processes: the images it writes are compared with what
//! /proc said about the tree just before the dump (and decoded by the reference
//! decoder, CRIU's `crit`); the tree is killed, or with --leave-running goes on
//! untouched; dumps that cannot be done fail cleanly and leave the target as it was.
//!
//! Run as root: `cargo test -p crust-cli --test dump`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::procstate::ProcState;
use common::*;

const DUMP_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// What /proc says before the dump

/// One process as /proc describes it just before the dump.
#[derive(Debug)]
struct ProcInfo {
    pid: i32,
    pgid: i32,
    sid: i32,
    tids: BTreeSet<i32>,
    maps: Vec<MapLine>,
    /// comm and blocked-signal mask of each thread.
    comm: BTreeMap<i32, String>,
    sigblk: BTreeMap<i32, u64>,
    /// The main thread, blocked in its sleep loop.
    main_syscall: BlockedSyscall,
    fds: BTreeSet<u64>,
    cwd: String,
}

fn proc_info(pid: i32) -> ProcInfo {
    let Stat { pgrp: pgid, session: sid, .. } = proc_stat(pid).expect("stat");
    let tids = proc_tasks(pid);
    let mut comm = BTreeMap::new();
    let mut sigblk = BTreeMap::new();
    for &t in &tids {
        let c = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm")).expect("comm");
        comm.insert(t, c.trim_end_matches('\n').to_string());
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).expect("status");
        let blk = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).expect("SigBlk").trim();
        sigblk.insert(t, u64::from_str_radix(blk, 16).expect("SigBlk hex"));
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd").to_string_lossy().into_owned();
    ProcInfo { pid, pgid, sid, tids, maps: proc_maps(pid), comm, sigblk, main_syscall: blocked_syscall(pid, pid), fds, cwd }
}

// ---------------------------------------------------------------------------
// Running a dump

/// Runs a dump that must succeed; returns its --json stats.
fn dump_ok(pid: i32, dir: &Path, extra: &[&str]) -> Value {
    let pid_s = pid.to_string();
    let mut extra = extra.to_vec();
    extra.push("--json");
    let out = crust(&dump_args(&pid_s, dir, &extra), DUMP_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "crust dump -t {pid} {extra:?} failed ({:?}): {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "panic text from a successful dump: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("dump --json output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs a dump that must fail cleanly; returns stderr.
fn dump_fails(pid_arg: &str, dir: &Path, extra: &[&str]) -> String {
    let out = crust(&dump_args(pid_arg, dir, extra), DUMP_TIMEOUT);
    let stderr = assert_clean_failure(&out, &format!("crust dump -t {pid_arg:?} -D {} {extra:?}", dir.display()));
    assert_no_inventory(dir);
    assert!(staging_dirs(dir).is_empty(), "failed dump left {:?} in {}", staging_dirs(dir), dir.display());
    stderr
}

// ---------------------------------------------------------------------------
// Checking the images against /proc

/// What the images of one process say.
struct ProcImages<'a> {
    core: BTreeMap<i32, &'a Value>,
    vmas: &'a Vec<Value>,
    files_id: u64,
}

/// Checks everything that every successful dump must satisfy, for the processes
/// in `procs` (root first; `parents` gives each one's expected pstree ppid).
/// Returns the images decoded by crit.
fn check_images(dir: &Path, procs: &[&ProcInfo], parents: &[i32]) -> BTreeMap<String, Value> {
    let imgs = crit_decode_dir(dir);

    // Image names: exactly one core per thread and one mm/pagemap/fs/ids per process.
    let all_tids: BTreeSet<i32> = procs.iter().flat_map(|p| p.tids.iter().copied()).collect();
    let all_pids: BTreeSet<i32> = procs.iter().map(|p| p.pid).collect();
    let numbered = |prefix: &str| -> BTreeSet<i32> {
        imgs.keys()
            .filter_map(|n| n.strip_prefix(prefix)?.strip_suffix(".img")?.parse().ok())
            .collect()
    };
    assert_eq!(numbered("core-"), all_tids, "core-TID.img files vs threads in /proc");
    for prefix in ["mm-", "pagemap-", "fs-", "ids-"] {
        assert_eq!(numbered(prefix), all_pids, "{prefix}PID.img files vs processes");
    }
    for name in ["inventory.img", "pstree.img", "files.img", "cgroup.img", "stats-dump"] {
        assert!(imgs.contains_key(name), "{name} missing from {}", dir.display());
    }

    // pstree.img: the processes, their parents, sessions and threads.
    let pstree = entries(&imgs, "pstree.img");
    assert_eq!(pstree.len(), procs.len(), "pstree entries: {pstree:?}");
    for (p, &ppid) in procs.iter().zip(parents) {
        let e = pstree
            .iter()
            .find(|e| num(&e["pid"]) == p.pid as u64)
            .unwrap_or_else(|| panic!("process {} not in pstree.img: {pstree:?}", p.pid));
        assert_eq!(num(&e["ppid"]), ppid as u64, "ppid of {} in pstree.img", p.pid);
        assert_eq!(num(&e["pgid"]), p.pgid as u64, "pgid of {} in pstree.img", p.pid);
        assert_eq!(num(&e["sid"]), p.sid as u64, "sid of {} in pstree.img", p.pid);
        let threads: BTreeSet<i32> = e["threads"].as_array().expect("threads").iter().map(|t| num(t) as i32).collect();
        assert_eq!(threads, p.tids, "threads of {} in pstree.img vs /proc/{}/task", p.pid, p.pid);
        assert_eq!(num(&e["threads"][0]), p.pid as u64, "the leader comes first in the threads of {}", p.pid);
    }
    // Parents before children, the root first.
    assert_eq!(num(&pstree[0]["pid"]), procs[0].pid as u64, "root first in pstree.img");

    let files = entries(&imgs, "files.img");
    let file_by_id = |id: u64| -> &Value {
        files
            .iter()
            .find(|f| num(&f["id"]) == id)
            .unwrap_or_else(|| panic!("no files.img entry with id {id}"))
    };

    for p in procs {
        let pi = proc_images(&imgs, p);

        // Registers and per-thread state.
        let exec_maps: Vec<&MapLine> = p.maps.iter().filter(|m| m.perms.contains('x')).collect();
        for (&tid, core) in &pi.core {
            assert_eq!(core["mtype"], "X86_64", "core-{tid}.img mtype");
            let regs = &core["thread_info"]["gpregs"];
            let ip = num(&regs["ip"]);
            assert!(
                exec_maps.iter().any(|m| m.start <= ip && ip < m.end),
                "thread {tid}: ip {ip:#x} is in no executable mapping"
            );
            let tcore = &core["thread_core"];
            assert_eq!(tcore["comm"].as_str(), Some(p.comm[&tid].as_str()), "comm of thread {tid}");
            assert_eq!(num(&tcore["blk_sigset"]), p.sigblk[&tid], "blocked signals of thread {tid} vs SigBlk");
            assert_eq!(core["tc"].is_object(), tid == p.pid, "core-{tid}.img: task core only in the leader's");
        }
        let main = &pi.core[&p.pid]["thread_info"]["gpregs"];
        let sc = p.main_syscall;
        assert_eq!(num(&main["ip"]), sc.pc, "main thread of {}: ip vs pc in /proc/PID/syscall", p.pid);
        assert_eq!(num(&main["sp"]), sc.sp, "main thread of {}: sp vs /proc/PID/syscall", p.pid);
        assert_eq!(num(&main["orig_ax"]), sc.nr, "main thread of {}: orig_ax vs syscall number", p.pid);
        let tc = &pi.core[&p.pid]["tc"];
        assert_eq!(tc["comm"].as_str(), Some(p.comm[&p.pid].as_str()), "tc.comm of {}", p.pid);

        // Memory layout: the same set of ranges as /proc/PID/maps, each described alike.
        let img_ranges: BTreeSet<(u64, u64)> = pi.vmas.iter().map(|v| (num(&v["start"]), num(&v["end"]))).collect();
        let proc_ranges: BTreeSet<(u64, u64)> = p.maps.iter().map(|m| (m.start, m.end)).collect();
        assert_eq!(pi.vmas.len(), p.maps.len(), "number of vmas of {}", p.pid);
        assert_eq!(img_ranges, proc_ranges, "vma ranges of {} in mm-{}.img vs /proc/{}/maps", p.pid, p.pid, p.pid);
        for m in &p.maps {
            let v = pi
                .vmas
                .iter()
                .find(|v| num(&v["start"]) == m.start)
                .expect("vma with this start (ranges already compared)");
            let what = format!("vma {:#x}-{:#x} {} {} of {}", m.start, m.end, m.perms, m.path, p.pid);
            let prot = flag_names(&v["prot"]);
            for (c, name) in [('r', "PROT_READ"), ('w', "PROT_WRITE"), ('x', "PROT_EXEC")] {
                assert_eq!(m.perms.contains(c), prot.contains(name), "{what}: prot {prot:?}");
            }
            let flags = flag_names(&v["flags"]);
            let shared = m.perms.ends_with('s');
            assert_eq!(flags.contains("MAP_SHARED"), shared, "{what}: flags {flags:?}");
            assert_eq!(flags.contains("MAP_PRIVATE"), !shared, "{what}: flags {flags:?}");
            let status = flag_names(&v["status"]);
            let special = [
                ("[heap]", "VMA_AREA_HEAP"),
                ("[stack]", "VMA_AREA_STACK"),
                ("[vdso]", "VMA_AREA_VDSO"),
                ("[vvar]", "VMA_AREA_VVAR"),
                ("[vvar_vclock]", "VMA_AREA_VVAR"),
                ("[vsyscall]", "VMA_AREA_VSYSCALL"),
            ];
            for (label, bit) in special {
                if m.path == label {
                    assert!(status.contains(bit), "{what}: status {status:?} lacks {bit}");
                }
            }
            if m.path.starts_with('/') {
                let kind = if shared { "VMA_FILE_SHARED" } else { "VMA_FILE_PRIVATE" };
                assert!(status.contains(kind), "{what}: status {status:?}");
                assert_eq!(num(&v["pgoff"]), m.offset, "{what}: pgoff");
                let f = file_by_id(num(&v["shmid"]));
                assert_eq!(f["type"], "REG", "{what}: its file {f}");
                assert_eq!(f["reg"]["name"].as_str(), Some(m.path.as_str()), "{what}: file name");
            } else if m.path.is_empty() {
                assert!(status.contains("VMA_ANON_PRIVATE"), "{what}: status {status:?}");
                assert!(flags.contains("MAP_ANON"), "{what}: flags {flags:?}");
            }
        }

        // Saved pages: only inside the vmas.
        let pages = Pages::load(dir, &imgs, p.pid);
        for &(vaddr, nr, _) in &pages.runs {
            let mut a = vaddr;
            let end = vaddr + nr * PAGE;
            while a < end {
                let m = p
                    .maps
                    .iter()
                    .find(|m| m.start <= a && a < m.end)
                    .unwrap_or_else(|| panic!("pagemap run {vaddr:#x}+{nr} of {} covers unmapped {a:#x}", p.pid));
                a = m.end;
            }
        }

        // fs, ids and fd table.
        let ids = &entries(&imgs, &format!("ids-{}.img", p.pid))[0];
        assert_eq!(num(&ids["files_id"]), pi.files_id, "files_id in ids-{}.img vs core", p.pid);
        let fdinfo = entries(&imgs, &format!("fdinfo-{}.img", pi.files_id));
        let img_fds: BTreeSet<u64> = fdinfo.iter().map(|e| num(&e["fd"])).collect();
        assert_eq!(img_fds, p.fds, "fds of {} in fdinfo-{}.img vs /proc/PID/fd", p.pid, pi.files_id);
        for e in fdinfo {
            let f = file_by_id(num(&e["id"]));
            assert_eq!(f["type"], e["type"], "fd {} of {}: fdinfo type vs files.img", e["fd"], p.pid);
        }
        let fs = &entries(&imgs, &format!("fs-{}.img", p.pid))[0];
        let cwd = file_by_id(num(&fs["cwd_id"]));
        assert_eq!(cwd["reg"]["name"].as_str(), Some(p.cwd.as_str()), "cwd of {} vs /proc/PID/cwd", p.pid);
    }

    // Last, so that a wrong mode does not hide what the checks above would find.
    assert_images_dir_permissions(dir);
    imgs
}

fn proc_images<'a>(imgs: &'a BTreeMap<String, Value>, p: &ProcInfo) -> ProcImages<'a> {
    let core: BTreeMap<i32, &Value> =
        p.tids.iter().map(|&t| (t, &entries(imgs, &format!("core-{t}.img"))[0])).collect();
    let files_id = num(&core[&p.pid]["ids"]["files_id"]);
    let vmas = entries(imgs, &format!("mm-{}.img", p.pid))[0]["vmas"].as_array().expect("vmas");
    ProcImages { core, vmas, files_id }
}

fn check_stats(stats: &Value, processes: u64, threads: u64) {
    assert_eq!(stats["processes"].as_u64(), Some(processes), "stats: {stats}");
    assert_eq!(stats["threads"].as_u64(), Some(threads), "stats: {stats}");
    assert!(stats["pages_written"].as_u64().unwrap_or(0) > 0, "stats: {stats}");
}

/// After a dump without --leave-running: the workload was killed by SIGKILL.
fn assert_killed(w: &mut Workload) {
    let status = w.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("{} still running after the dump", w.name));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{} ended with {status:?}, expected SIGKILL", w.name);
    assert!(!Path::new(&format!("/proc/{}", w.pid)).exists(), "/proc/{} still there after reaping", w.pid);
}

// ---------------------------------------------------------------------------
// test_mm: threads

/// Follows test_mm's "tN COUNTER" lines: each thread counts from 0 by 1, no gaps.
#[derive(Default)]
struct Counters {
    next: [u64; 3],
}

impl Counters {
    fn feed(&mut self, line: &str) {
        let (t, n) = line.split_once(' ').unwrap_or_else(|| panic!("unexpected test_mm line {line:?}"));
        let i: usize = match t {
            "t1" => 1,
            "t2" => 2,
            _ => panic!("unexpected test_mm line {line:?}"),
        };
        let n: u64 = n.parse().unwrap_or_else(|_| panic!("unexpected test_mm line {line:?}"));
        assert_eq!(n, self.next[i], "thread t{i} printed {n}, expected {} (a gap or a repeat)", self.next[i]);
        self.next[i] += 1;
    }

    /// Reads lines until both threads have printed at least `until` lines in all.
    fn read_until(&mut self, w: &mut Workload, until: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.next[1] < until || self.next[2] < until {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(l) = w.try_line(left) else {
                panic!("test_mm stopped counting at {:?} (wanted {until}); last lines {:?}", self.next, tail(&w.history, 6));
            };
            self.feed(&l);
        }
    }
}

fn start_test_mm() -> (Workload, Counters) {
    let mut w = Workload::spawn("test_mm", &[]);
    let ready = w.ready();
    assert_eq!(ready, w.pid.to_string(), "test_mm READY line");
    let mut c = Counters::default();
    // Both threads are running (their stacks are mapped) once each printed twice.
    c.read_until(&mut w, 2);
    (w, c)
}

/// test_mm keeps counting: at least `more` further lines per thread, with no gap.
fn assert_keeps_counting(w: &mut Workload, c: &mut Counters, more: u64) {
    for l in w.drain() {
        c.feed(&l);
    }
    let until = c.next[1].max(c.next[2]) + more;
    c.read_until(w, until);
}

#[test]
fn dump_test_mm_leave_running() {
    let tmp = TempDir::new("mm-R");
    let dir = tmp.join("images");
    let (mut w, mut c) = start_test_mm();
    let info = proc_info(w.pid);
    assert_eq!(info.tids.len(), 3, "test_mm runs 3 threads: {:?}", info.tids);

    let before = ProcState::of_tree(w.pid);
    let stats = dump_ok(w.pid, &dir, &["-R"]);
    check_stats(&stats, 1, 3);
    before.assert_same(&ProcState::of_tree(w.pid), &[]);
    // Still our child, still running, no tracer.
    assert_running_untraced(w.pid, Duration::from_secs(2));
    check_images(&dir, &[&info], &[0]);
    assert_eq!(proc_tasks(w.pid), info.tids, "threads of test_mm after the dump");
    assert_keeps_counting(&mut w, &mut c, 4);
    w.expect_ok_on_usr1();
}

#[test]
fn dump_test_mm_kills_tree() {
    let tmp = TempDir::new("mm-kill");
    let dir = tmp.join("images");
    let (mut w, mut c) = start_test_mm();
    let info = proc_info(w.pid);

    let stats = dump_ok(w.pid, &dir, &[]);
    check_stats(&stats, 1, 3);
    assert_killed(&mut w);
    for &t in &info.tids {
        assert!(!Path::new(&format!("/proc/{}/task/{t}", w.pid)).exists(), "thread {t} survived");
    }
    assert!(w.wait_eof(Duration::from_secs(5)), "test_mm's output did not end");
    // Whatever it printed before dying still counts without gaps.
    for l in w.history.clone().iter().skip(1 + (c.next[1] + c.next[2]) as usize) {
        c.feed(l);
    }
    check_images(&dir, &[&info], &[0]);
}

// ---------------------------------------------------------------------------
// memory: layout and contents

const MEMORY_FILE_LEN: usize = 256 * 1024 + 3 * 4096;

struct MemoryWorkload {
    w: Workload,
    file: std::path::PathBuf,
    file_data: Vec<u8>,
}

fn start_memory(tmp: &TempDir, opts: SpawnOpts) -> MemoryWorkload {
    let file = tmp.join("mapped-file");
    let file_data = write_pattern_file(&file, MEMORY_FILE_LEN, 0x3c);
    let mut w = Workload::spawn_with("memory", &[file.as_os_str()], opts);
    let sum = w.ready();
    assert_eq!(sum.len(), 16, "memory READY line: {sum:?}");
    MemoryWorkload { w, file, file_data }
}

fn xorshift64(s: &mut u64) -> u64 {
    let mut x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    x
}

/// The pages image holds what the memory workload wrote: the 64 MiB random region,
/// the 1 MiB read-only pattern, the modified pages of the private file mapping.
fn check_memory_contents(dir: &Path, imgs: &BTreeMap<String, Value>, info: &ProcInfo, m: &MemoryWorkload) {
    let pages = Pages::load(dir, imgs, info.pid);

    let big = info
        .maps
        .iter()
        .find(|l| l.path.is_empty() && l.perms == "rw-p" && l.end - l.start == 64 << 20)
        .unwrap_or_else(|| panic!("no 64 MiB rw anonymous mapping in {:?}", info.maps));
    let saved = pages.get(big.start, 64 << 20).expect("the whole 64 MiB region is saved");
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let want: Vec<u8> = (0..(64 << 20) / 8).flat_map(|_| xorshift64(&mut s).to_le_bytes()).collect();
    if saved != want.as_slice() {
        let at = saved.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
        panic!("64 MiB region: wrong bytes in the pages image from offset {at:#x}");
    }

    let ro = info
        .maps
        .iter()
        .find(|l| l.path.is_empty() && l.perms == "r--p" && l.end - l.start == 1 << 20)
        .unwrap_or_else(|| panic!("no 1 MiB read-only anonymous mapping in {:?}", info.maps));
    let saved = pages.get(ro.start, 1 << 20).expect("the whole read-only region is saved");
    for (i, &b) in saved.iter().enumerate() {
        let want = ((i * 31 + 7) ^ (i >> 12)) as u8;
        assert_eq!(b, want, "read-only region: wrong byte at offset {i:#x}");
    }

    // The heap and stack patterns, somewhere in the saved pages of [heap] and [stack].
    for (label, len, pattern) in [("[heap]", 6 * 1024, 7usize, 3usize), ("[stack]", 4096, 13, 5)]
        .map(|(l, n, a, b)| (l, n, (0..n).map(|i: usize| (i * a + b) as u8).collect::<Vec<u8>>()))
    {
        let vma = info.maps.iter().find(|l| l.path == label).unwrap_or_else(|| panic!("no {label} mapping"));
        let found = pages
            .runs
            .iter()
            .filter(|(v, n, _)| *v < vma.end && vma.start < v + n * PAGE)
            .any(|&(v, n, _)| pages.get(v, n * PAGE).is_some_and(|b| b.windows(len).any(|w| w == pattern.as_slice())));
        assert!(found, "the {len}-byte {label} pattern is not in the saved pages of {label}");
    }

    let file = m.file.to_str().expect("utf-8 path");
    let fmap = info
        .maps
        .iter()
        .find(|l| l.path == file)
        .unwrap_or_else(|| panic!("{file} not mapped: {:?}", info.maps));
    assert_eq!(fmap.perms, "rw-p");
    for k in [0u64, 3, 17] {
        let mut want = m.file_data[(k * PAGE) as usize..((k + 1) * PAGE) as usize].to_vec();
        for i in 0..64usize {
            want[i * 17 % PAGE as usize] = 0xA5 ^ (i as u8).wrapping_add(k as u8);
        }
        let got = pages
            .get(fmap.start + k * PAGE, PAGE)
            .unwrap_or_else(|| panic!("modified page {k} of the private file mapping is not saved"));
        assert!(got == want.as_slice(), "modified page {k} of the private file mapping: wrong contents");
    }
}

#[test]
fn dump_memory_leave_running() {
    let tmp = TempDir::new("memory-R");
    let dir = tmp.join("images");
    let mut m = start_memory(&tmp, SpawnOpts::default());
    let info = proc_info(m.w.pid);

    let before = ProcState::of_tree(m.w.pid);
    let stats = dump_ok(m.w.pid, &dir, &["--leave-running"]);
    check_stats(&stats, 1, 1);
    before.assert_same(&ProcState::of_tree(m.w.pid), &[]);
    assert_running_untraced(m.w.pid, Duration::from_secs(2));
    let imgs = check_images(&dir, &[&info], &[0]);
    check_memory_contents(&dir, &imgs, &info, &m);
    assert_eq!(proc_maps(m.w.pid), info.maps, "memory layout after a dump with --leave-running");
    m.w.expect_ok_on_usr1();
}

#[test]
fn dump_memory_kills_tree() {
    let tmp = TempDir::new("memory-kill");
    let dir = tmp.join("images");
    let mut m = start_memory(&tmp, SpawnOpts::default());
    let info = proc_info(m.w.pid);

    let stats = dump_ok(m.w.pid, &dir, &[]);
    check_stats(&stats, 1, 1);
    assert_killed(&mut m.w);
    let imgs = check_images(&dir, &[&info], &[0]);
    check_memory_contents(&dir, &imgs, &info, &m);
}

// ---------------------------------------------------------------------------
// family: two processes, files, a pipe with data

const FAMILY_FILE_LEN: usize = 16000;
const PIPE_MSG: &str = "pipe-data-0123456789\n";

struct Family {
    w: Workload,
    file: std::path::PathBuf,
    child: i32,
    file_fd: u64,
    pipe_r: u64,
    pipe_w: u64,
    null_fd: u64,
    pipe_ino: u64,
}

fn start_family(tmp: &TempDir) -> Family {
    let file = tmp.join("family-file");
    write_pattern_file(&file, FAMILY_FILE_LEN, 0x5a);
    let mut w = Workload::spawn("family", &[file.as_os_str()]);
    let ready = w.ready();
    let kv: BTreeMap<&str, i64> = ready
        .split_whitespace()
        .map(|f| {
            let (k, v) = f.split_once('=').unwrap_or_else(|| panic!("family READY line {ready:?}"));
            (k, v.parse().unwrap_or_else(|_| panic!("family READY line {ready:?}")))
        })
        .collect();
    let child = kv["child"] as i32;
    w.adopt(child);
    let pipe_r = kv["pipe_r"] as u64;
    let link = std::fs::read_link(format!("/proc/{}/fd/{pipe_r}", w.pid)).expect("pipe fd link");
    let link = link.to_string_lossy();
    let pipe_ino = link
        .strip_prefix("pipe:[")
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("fd {pipe_r} of family is {link}, not a pipe"))
        .parse()
        .expect("pipe inode");
    Family {
        w,
        file,
        child,
        file_fd: kv["file_fd"] as u64,
        pipe_r,
        pipe_w: kv["pipe_w"] as u64,
        null_fd: kv["null_fd"] as u64,
        pipe_ino,
    }
}

/// The family-specific facts: the child in pstree, the file offset, /dev/null, the
/// pipe and its 210 unread bytes.
fn check_family_images(dir: &Path, imgs: &BTreeMap<String, Value>, parent: &ProcInfo, f: &Family) {
    let pi = proc_images(imgs, parent);
    let fdinfo = entries(imgs, &format!("fdinfo-{}.img", pi.files_id));
    let files = entries(imgs, "files.img");
    let file_of_fd = |fd: u64| -> &Value {
        let e = fdinfo
            .iter()
            .find(|e| num(&e["fd"]) == fd)
            .unwrap_or_else(|| panic!("fd {fd} of family not in fdinfo: {fdinfo:?}"));
        files
            .iter()
            .find(|x| num(&x["id"]) == num(&e["id"]))
            .unwrap_or_else(|| panic!("fd {fd}: no files.img entry {}", e["id"]))
    };

    let reg = file_of_fd(f.file_fd);
    assert_eq!(reg["type"], "REG", "file fd: {reg}");
    assert_eq!(reg["reg"]["name"].as_str(), f.file.to_str(), "file fd name");
    assert_eq!(num(&reg["reg"]["pos"]), 12345, "file fd position");
    assert!(flag_names(&reg["reg"]["flags"]).contains("O_RDWR"), "file fd flags: {}", reg["reg"]["flags"]);
    assert_eq!(num(&reg["reg"]["size"]), FAMILY_FILE_LEN as u64, "file size");

    let null = file_of_fd(f.null_fd);
    assert_eq!(null["type"], "REG", "/dev/null fd: {null}");
    assert_eq!(null["reg"]["name"], "/dev/null", "/dev/null fd");

    let (r, w) = (file_of_fd(f.pipe_r), file_of_fd(f.pipe_w));
    for (what, p) in [("read end", r), ("write end", w)] {
        assert_eq!(p["type"], "PIPE", "pipe {what}: {p}");
        assert_eq!(num(&p["pipe"]["pipe_id"]), f.pipe_ino, "pipe {what}: pipe_id vs inode");
    }
    assert_ne!(num(&r["id"]), num(&w["id"]), "the two ends of the pipe are different files");
    let data = entries(imgs, "pipes-data.img");
    let pd = data
        .iter()
        .find(|d| num(&d["pipe_id"]) == f.pipe_ino)
        .unwrap_or_else(|| panic!("no pipes-data.img entry for pipe {}: {data:?}", f.pipe_ino));
    assert_eq!(num(&pd["bytes"]), 210, "unread bytes of the pipe");
    let raw = std::fs::read(dir.join("pipes-data.img")).expect("pipes-data.img");
    let want = PIPE_MSG.repeat(10);
    assert!(
        raw.windows(want.len()).any(|w| w == want.as_bytes()),
        "pipes-data.img does not hold the 210 bytes written into the pipe"
    );
}

#[test]
fn dump_family_leave_running() {
    let tmp = TempDir::new("family-R");
    let dir = tmp.join("images");
    let mut f = start_family(&tmp);
    let parent = proc_info(f.w.pid);
    let child = proc_info(f.child);

    let before = ProcState::of_tree(f.w.pid);
    let stats = dump_ok(f.w.pid, &dir, &["-R"]);
    check_stats(&stats, 2, 2);
    before.assert_same(&ProcState::of_tree(f.w.pid), &[]);
    assert_running_untraced(f.w.pid, Duration::from_secs(2));
    assert_running_untraced(f.child, Duration::from_secs(2));
    let imgs = check_images(&dir, &[&parent, &child], &[0, f.w.pid]);
    check_family_images(&dir, &imgs, &parent, &f);
    // The workload checks its file offset, pipe contents, /dev/null and child itself.
    f.w.expect_ok_on_usr1();
}

#[test]
fn dump_family_kills_tree() {
    let tmp = TempDir::new("family-kill");
    let dir = tmp.join("images");
    let mut f = start_family(&tmp);
    let parent = proc_info(f.w.pid);
    let child = proc_info(f.child);
    let child_fd = pidfd_open(f.child).expect("pidfd of the child");

    let stats = dump_ok(f.w.pid, &dir, &[]);
    check_stats(&stats, 2, 2);
    assert_killed(&mut f.w);
    assert!(pidfd_wait_exit(&child_fd, Duration::from_secs(5)), "family's child {} still runs after the dump", f.child);
    let imgs = check_images(&dir, &[&parent, &child], &[0, f.w.pid]);
    check_family_images(&dir, &imgs, &parent, &f);
}

// ---------------------------------------------------------------------------
// Failures: the dump is refused and the target is left as it was.

#[test]
fn dump_of_missing_pid_fails() {
    let tmp = TempDir::new("nopid");
    let dir = tmp.join("images");
    // A pid that just existed and was reaped, and one above pid_max.
    let st = Command::new("true").stdout(Stdio::null()).spawn().expect("spawn true");
    let gone = st.id() as i32;
    let mut st = st;
    st.wait().expect("wait true");
    let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").expect("pid_max").trim().parse().expect("pid_max");
    for pid in [gone as i64, pid_max + 1] {
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue; // reused meanwhile: not a missing pid any more
        }
        let err = dump_fails(&pid.to_string(), &dir, &[]);
        assert!(err.contains(&pid.to_string()), "error does not name pid {pid}: {err}");
        let lower = err.to_lowercase();
        assert!(lower.contains("does not exist") || lower.contains("no such process"), "error for pid {pid}: {err}");
    }
}

#[test]
fn dump_rejects_bad_pid_arguments() {
    let tmp = TempDir::new("badpid");
    let dir = tmp.join("images");
    for arg in ["0", "-1", "--tree=-1", "--tree=-42", "abc", "12abc", "", "1.5", "99999999999999999999", "0x10"] {
        let (t_args, shown): (Vec<&str>, &str) = match arg.strip_prefix("--tree=") {
            Some(v) => (vec![arg], v),
            None => (vec!["-t", arg], arg),
        };
        let mut args: Vec<&OsStr> = vec![os("dump")];
        args.extend(t_args.iter().map(|s| os(s)));
        args.extend([os("-D"), dir.as_os_str()]);
        let out = crust(&args, DUMP_TIMEOUT);
        let err = assert_clean_failure(&out, &format!("dump with pid argument {arg:?}"));
        if !shown.is_empty() {
            assert!(err.contains(shown), "error for pid argument {arg:?} does not show it: {err}");
        }
        assert_no_inventory(&dir);
    }
}

#[test]
fn dump_refuses_a_unix_socket_connected_outside_the_tree() {
    let tmp = TempDir::new("socket");
    let dir = tmp.join("images");
    let mut sv = [0i32; 2];
    // SAFETY: socketpair writes two fds into sv.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fds from socketpair, owned here.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    const TARGET_FD: i32 = 77;
    let mut m = start_memory(&tmp, SpawnOpts { setsid: true, inherit_fd: Some((theirs.as_raw_fd(), TARGET_FD)) });
    drop(theirs);
    let link = std::fs::read_link(format!("/proc/{}/fd/{TARGET_FD}", m.w.pid)).expect("socket fd in the workload");
    assert!(link.to_string_lossy().starts_with("socket:"), "fd {TARGET_FD} is {link:?}");
    let maps = proc_maps(m.w.pid);

    for extra in [&[][..], &["-R"][..]] {
        let err = dump_fails(&m.w.pid.to_string(), &dir, extra);
        let lower = err.to_lowercase();
        assert!(lower.contains("socket") && lower.contains("outside") && lower.contains("not supported"), "error: {err}");
        assert_running_untraced(m.w.pid, Duration::from_secs(2));
    }
    assert_eq!(proc_maps(m.w.pid), maps, "memory layout changed by a failed dump");
    assert_eq!(std::fs::read_link(format!("/proc/{}/fd/{TARGET_FD}", m.w.pid)).ok(), Some(link), "socket fd");
    m.w.expect_ok_on_usr1();
    drop(ours);
}

#[test]
fn dump_of_shell_job_needs_shell_job_flag() {
    let tmp = TempDir::new("shelljob");
    let dir = tmp.join("images");
    // Not in a session of its own: its session and process group are ours.
    let mut m = start_memory(&tmp, SpawnOpts { setsid: false, inherit_fd: None });
    let err = dump_fails(&m.w.pid.to_string(), &dir, &[]);
    assert!(err.contains("--shell-job"), "error does not mention --shell-job: {err}");
    assert_running_untraced(m.w.pid, Duration::from_secs(2));

    // With --shell-job the same process dumps, with its outside session recorded.
    let info = proc_info(m.w.pid);
    // SAFETY: plain syscalls.
    let (my_pgid, my_sid) = unsafe { (libc::getpgrp(), libc::getsid(0)) };
    assert_eq!((info.pgid, info.sid), (my_pgid, my_sid), "the workload is in our session and group");
    let stats = dump_ok(m.w.pid, &dir, &["--shell-job", "-R"]);
    check_stats(&stats, 1, 1);
    assert_running_untraced(m.w.pid, Duration::from_secs(2));
    let imgs = check_images(&dir, &[&info], &[0]);
    check_memory_contents(&dir, &imgs, &info, &m);
    m.w.expect_ok_on_usr1();
}

#[test]
fn dump_into_unusable_images_dir_fails() {
    let tmp = TempDir::new("baddir");
    let mut m = start_memory(&tmp, SpawnOpts::default());
    let maps = proc_maps(m.w.pid);
    let regular = tmp.join("regular-file");
    std::fs::write(&regular, b"not a directory").expect("write regular file");
    let proc_dir = Path::new("/proc").join(format!("crust-test-{}-baddir", std::process::id()));
    let cases = [
        (regular.join("images"), "a path below a regular file"),
        (regular.join("a/b/c"), "a deeper path below a regular file"),
        (regular.clone(), "a regular file"),
        (proc_dir.clone(), "a path in /proc"),
    ];
    for (dir, what) in &cases {
        for extra in [&[][..], &["-R"][..]] {
            let out = crust(&dump_args(&m.w.pid.to_string(), dir, extra), DUMP_TIMEOUT);
            let err = assert_clean_failure(&out, &format!("dump into {what} ({})", dir.display()));
            assert!(
                err.contains(&dir.display().to_string()) || err.contains(&regular.display().to_string()),
                "error for {what} does not name the directory: {err}"
            );
            assert_running_untraced(m.w.pid, Duration::from_secs(2));
        }
    }
    assert_eq!(std::fs::read(&regular).expect("regular file"), b"not a directory", "the regular file was changed");
    assert!(!proc_dir.exists());
    assert_eq!(proc_maps(m.w.pid), maps, "memory layout changed by failed dumps");
    m.w.expect_ok_on_usr1();
}

#[test]
fn dump_of_thread_id_fails() {
    let tmp = TempDir::new("tid");
    let dir = tmp.join("images");
    let (mut w, mut c) = start_test_mm();
    let tid = *proc_tasks(w.pid).iter().find(|&&t| t != w.pid).expect("a worker thread");
    // --shell-job so that the session check does not hide the real problem.
    let err = dump_fails(&tid.to_string(), &dir, &["--shell-job", "-R"]);
    assert!(err.contains(&tid.to_string()), "error does not name {tid}: {err}");
    assert_running_untraced(w.pid, Duration::from_secs(2));
    assert_keeps_counting(&mut w, &mut c, 3);
}

// ---------------------------------------------------------------------------
// crust killed in the middle of a dump

/// Starts `crust dump` (without --leave-running) on `pid`, waits until `kill_when`
/// (given crust's pid) returns, then SIGKILLs crust. Fails the test if crust had
/// finished by then or `kill_when` returned false.
fn kill_crust_during_dump(pid: i32, dir: &Path, kill_when: impl FnOnce(i32) -> bool) {
    let mut c = Command::new(CRUST)
        .args(dump_args(&pid.to_string(), dir, &[]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crust");
    let cpid = c.id() as i32;
    let go = kill_when(cpid);
    let early = c.try_wait().expect("try_wait crust");
    let _ = c.kill();
    let status = c.wait().expect("wait crust");
    let mut err = String::new();
    if let Some(mut e) = c.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(go, "crust dump never reached the point where it was to be killed ({status:?}): {err}");
    assert!(early.is_none(), "crust ended ({early:?}) before it could be killed: {err}");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "crust ended with {status:?} instead of being killed");
}

/// Waits until the dump has begun writing image `name`; false if crust
/// (process `cpid`) ended first or it took over 20 s.
fn wait_for_staged(dir: &Path, cpid: i32, name: &str) -> bool {
    // The staging directory is named after the process doing the work,
    // which may be a child of the crust command.
    let staged = || staging_dirs(dir).iter().any(|s| dir.join(s).join(name).exists());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !staged() {
        if Instant::now() > deadline || !Path::new(&format!("/proc/{cpid}")).exists() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

fn sigblk(pid: i32) -> String {
    proc_status_field(pid, "SigBlk").expect("SigBlk")
}

/// After crust was killed: the target runs, untraced, with its signal mask, and
/// no images that look complete were left.
fn assert_target_survived(w: &mut Workload, mask: &str, dir: &Path, what: &str) {
    let pid = w.pid;
    let state = || {
        let st = proc_status_field(pid, "State").unwrap_or_else(|| panic!("{what}: target {pid} is gone"));
        let tracer = proc_status_field(pid, "TracerPid").unwrap_or_default();
        (st, tracer)
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (st, tracer) = state();
        if st.starts_with('Z') {
            panic!("{what}: target {pid} died: {:?}", w.wait_exit(Duration::from_secs(1)));
        }
        if !st.starts_with(['t', 'T']) && tracer == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: target {pid} left in state {st:?}, TracerPid {tracer}");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Let it run a few of its 20 ms loops (it sleeps in each: voluntary context
    // switches count them): a target resumed in a bad state (registers or
    // single-stepping left from crust's work) dies or stops here.
    let switches = || -> u64 {
        proc_status_field(pid, "voluntary_ctxt_switches").and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let start = switches();
    let deadline = Instant::now() + Duration::from_secs(3);
    while switches() < start + 3 && Instant::now() < deadline && !state().0.starts_with(['Z', 't', 'T']) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (st, tracer) = state();
    if st.starts_with('Z') {
        panic!("{what}: target {pid} died once it ran on: {:?}", w.wait_exit(Duration::from_secs(1)));
    }
    assert!(!st.starts_with(['t', 'T']) && tracer == "0", "{what}: target {pid} then went to state {st:?}, TracerPid {tracer}");
    assert_eq!(sigblk(pid), mask, "{what}: blocked signals of the target changed");
    assert_no_inventory(dir);
}

#[test]
fn crust_killed_mid_dump_leaves_target_running() {
    let tmp = TempDir::new("killed");
    let dir = tmp.join("images");
    let mut w = Workload::spawn("bigmem", &[os("512")]);
    w.ready();
    let mask = sigblk(w.pid);

    // Some time after crust started ...
    for ms in [20u64, 60, 150] {
        kill_crust_during_dump(w.pid, &dir, |_| {
            std::thread::sleep(Duration::from_millis(ms));
            true
        });
        assert_target_survived(&mut w, &mask, &dir, &format!("crust killed {ms} ms after it started"));
    }
    // ... and some time after it began writing the pages image: registers and
    // in-task state were read, the 512 MiB copy is under way.
    for extra_ms in [0u64, 30] {
        kill_crust_during_dump(w.pid, &dir, |cpid| {
            let go = wait_for_staged(&dir, cpid, "pages-1.img");
            std::thread::sleep(Duration::from_millis(extra_ms));
            go
        });
        assert_target_survived(&mut w, &mask, &dir, &format!("crust killed {extra_ms} ms into the page copy"));
    }
    // ... and while its images are synced to disk (the digests, written
    // first, are there): 512 MiB take a while, and a dump stopped then must
    // not go on to put them in place and kill the tree.
    kill_crust_during_dump(w.pid, &dir, |cpid| wait_for_staged(&dir, cpid, "crust-digests.json"));
    assert_target_survived(&mut w, &mask, &dir, "crust killed while the images were synced");

    // A later dump into the same directory works and clears the stale staging dirs.
    let stats = dump_ok(w.pid, &dir, &["-R"]);
    check_stats(&stats, 1, 1);
    assert!(dir.join("inventory.img").exists());
    assert_images_dir_permissions(&dir);
    assert_running_untraced(w.pid, Duration::from_secs(2));
    // bigmem recomputes the checksum of its 512 MiB: memory untouched.
    w.expect_ok_on_usr1();
}

#[test]
fn crust_killed_in_any_early_millisecond_leaves_target_running() {
    let tmp = TempDir::new("killed-sweep");
    let dir = tmp.join("images");
    // 256 MiB: its dump ends far past the sweep's 30 ms even on a fast
    // machine, so a kill late under load still lands in the middle of it.
    let mut w = Workload::spawn("bigmem", &[os("256")]);
    w.ready();
    let mask = sigblk(w.pid);
    // Every millisecond of crust's first 30: process start, seizing, reading
    // registers, syscalls run inside the target, the start of the page copy.
    for ms in 0..=30u64 {
        kill_crust_during_dump(w.pid, &dir, |_| {
            std::thread::sleep(Duration::from_millis(ms));
            true
        });
        assert_target_survived(&mut w, &mask, &dir, &format!("crust killed {ms} ms after it started"));
    }
    w.expect_ok_on_usr1();
}

/// A plain `sleep` in a session of its own, with a setup step of its own
/// before it runs; killed and reaped on drop.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start(wrapper: &[&str]) -> Sleeper {
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.extend(["sleep", "1000"]);
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                close_inherited_fds(None);
                if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
            });
        }
        let s = Sleeper(cmd.spawn().expect("spawn"));
        // Wait until the wrapper has exec'd sleep.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{}/comm", s.pid())).unwrap_or_default().trim() != "sleep" {
            assert!(Instant::now() < deadline, "sleep did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        s
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dump_refuses_what_it_cannot_restore_and_leaves_it_running() {
    let dir = TempDir::new("refusals");
    // A process in a user namespace of its own and a mount namespace it
    // owns: crust does not make namespaces a user namespace of the tree
    // owns (ns_user.rs restores one alone), and says so instead of losing it.
    let boxed = Sleeper::start(&["unshare", "--user", "--map-root-user", "--mount", "--"]);
    let images = dir.join("ns");
    let out = crust(&dump_args(&boxed.pid().to_string(), &images, &[]), DUMP_TIMEOUT);
    let err = assert_clean_failure(&out, "dump of a process in its own namespaces");
    assert!(err.contains("user namespace of its own") && err.contains("not supported"), "{err}");
    assert_running_untraced(boxed.pid(), Duration::from_secs(5));
    assert_no_inventory(&images);
}

/// Every thread of `pid` that is not a zombie runs, untraced.
fn live_threads_run_untraced(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut live = 0;
        let mut all_free = true;
        for t in common::proc_tasks(pid) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap_or_default();
            let field = |f: &str| status.lines().find_map(|l| l.strip_prefix(f)).unwrap_or("").trim().to_string();
            let state = field("State:");
            if state.starts_with('Z') {
                continue;
            }
            live += 1;
            all_free &= !state.starts_with('t') && !state.starts_with('T') && field("TracerPid:") == "0";
        }
        if live > 0 && all_free {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid}: {live} live thread(s), some stopped or traced");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dump_refuses_what_it_cannot_restore_inside_a_process_and_leaves_it_running() {
    let dir = TempDir::new("refusals-unusual");
    let cases = [
        ("seccomp-strict", "seccomp strict mode: not supported"),
        ("leader-exit", "main thread has exited"),
        ("semaphore", "semaphore mode"),
        ("epoll-closed", "that no other fd of the process holds"),
        ("unix-waiting-bytes", "bytes sent on a connection that @crust-test-{pid} has not accepted yet are not supported yet"),
        ("fd-in-flight", "fds in flight (SCM_RIGHTS) on it of the kind eventfd (anon_inode:[eventfd]) are not supported yet"),
        ("sysv-shm", "of the host's ipc namespace is outside the tree: not supported"),
        ("inotify-queued", "anon_inode:inotify): an inotify instance with 32 bytes of events not read yet is not supported yet"),
        ("pidfd-outside", "outside the dumped tree, is not supported yet"),
        ("kmsg", "fd 3 (/dev/kmsg): character device 1:11 (crust reopens /dev/null, zero, full, random, urandom, tty and pty slaves) is not supported yet"),
        ("flock", "holds a WRITE flock lock: dump with --file-locks to save it"),
        ("posix-lock", "holds a WRITE POSIX (fcntl) lock on bytes 0-1: dump with --file-locks to save it"),
        ("ofd-lock", "holds a WRITE OFD (open file description) lock on bytes 0-1: dump with --file-locks to save it"),
        ("lease", "holds a WRITE lease: file leases (F_SETLEASE) are not supported yet, not even with --file-locks"),
        ("foreign-cpu-timer", "POSIX timer 0: it runs on the CPU clock of task {ppid}, outside process {pid}: not supported"),
        ("thread-cpu-timer", "POSIX timer 0: it runs on the CPU clock of the thread that made it (CLOCK_THREAD_CPUTIME_ID), which /proc does not tell among 2 threads"),
        ("timer-overrun", "overruns (timer_getoverrun), a count a restored timer cannot be given back: not supported"),
        ("droppable", "VmFlag \"dp\": MAP_DROPPABLE"),
        ("thp-advised", "PR_SET_THP_DISABLE with PR_THP_DISABLE_EXCEPT_ADVISED"),
        ("deadline", "scheduling policy 6 (priority 0): this scheduling policy is not supported yet"),
        ("membarrier", "registered for membarrier MEMBARRIER_CMD_PRIVATE_EXPEDITED: membarrier registrations are not supported yet"),
    ];
    for (mode, says) in cases {
        let mut w = Workload::spawn("unusual", &[os(mode)]);
        w.ready();
        let images = dir.join(mode);
        let before = ProcState::of_tree(w.pid);
        let out = crust(&dump_args(&w.pid.to_string(), &images, &[]), DUMP_TIMEOUT);
        let err = assert_clean_failure(&out, &format!("dump of a process with {mode}"));
        // The workload is the test process's child.
        let says = says.replace("{ppid}", &std::process::id().to_string()).replace("{pid}", &w.pid.to_string());
        // File locks are refused only without --file-locks, which says so.
        let why = if says.ends_with("--file-locks to save it") { "" } else { "not supported" };
        assert!(err.contains(&says) && err.contains(why), "{mode}: {err}");
        assert!(err.contains(&format!("process {}", w.pid)), "{mode}: the refusal does not name the process: {err}");
        live_threads_run_untraced(w.pid);
        before.assert_same(&ProcState::of_tree(w.pid), &[]);
        assert_no_inventory(&images);
        w.expect_ok_on_usr1();
    }
}

// ---------------------------------------------------------------------------
// action scripts: criu's points, in order, with the root's pid

/// A script that appends "ACTION PID" to `log`, and fails at `fail_at`.
fn action_script(tmp: &TempDir, log: &Path, fail_at: &str) -> PathBuf {
    let script = tmp.join("action.sh");
    let body = format!(
        "#!/bin/sh\necho \"$CRTOOLS_SCRIPT_ACTION ${{CRTOOLS_INIT_PID:-none}}\" >> {}\n[ \"$CRTOOLS_SCRIPT_ACTION\" != \"{fail_at}\" ]\n",
        log.display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn action_scripts_hear_every_point_of_dump_and_restore_in_order() {
    let tmp = TempDir::new("action-scripts");
    let dir = tmp.join("images");
    let log = tmp.join("log");
    let script = action_script(&tmp, &log, "never");
    // Output to a file: a pipe to the test would have to be given back.
    let mut job = common::job::Job::start("test_mm", &[], tmp.path());
    job.ready();
    let pid = job.pid.to_string();
    dump_ok(job.pid, &dir, &["--action-script", script.to_str().unwrap()]);
    job.reap_original();
    let p = &pid;
    assert_eq!(log_lines(&log), [format!("pre-dump {p}"), format!("network-lock {p}"), format!("post-dump {p}")]);

    std::fs::remove_file(&log).unwrap();
    let out = crust(&[os("restore"), os("-D"), dir.as_os_str(), os("-d"), os("--action-script"), script.as_os_str()], Duration::from_secs(60));
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    let expected: Vec<String> = ["pre-restore none", "setup-namespaces", "post-setup-namespaces", "post-restore", "pre-resume", "network-unlock", "post-resume"]
        .iter()
        .map(|s| if s.contains(' ') { s.to_string() } else { format!("{s} {p}") })
        .collect();
    assert_eq!(log_lines(&log), expected);
    job.kill_restored();
}

#[test]
fn a_failing_action_script_stops_the_dump_and_the_tree_runs_on() {
    let tmp = TempDir::new("action-fails");
    let dir = tmp.join("images");
    let log = tmp.join("log");
    let script = action_script(&tmp, &log, "network-lock");
    let (mut w, mut c) = start_test_mm();
    let out = crust(&dump_args(&w.pid.to_string(), &dir, &["--action-script", script.to_str().unwrap()]), Duration::from_secs(60));
    let err = assert_clean_failure(&out, "dump with a failing action script");
    assert!(err.contains("network-lock"), "the error names the point: {err}");
    assert_no_inventory(&dir);
    assert_running_untraced(w.pid, Duration::from_secs(2));
    assert_keeps_counting(&mut w, &mut c, 4);
    w.expect_ok_on_usr1();
}
