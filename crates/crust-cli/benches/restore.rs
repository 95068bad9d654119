//! Benchmark of `crust::restore::restore` (in-process) on the bundled workloads,
//! against a same-run baseline: mapping fresh anonymous memory of the size of
//! the restored pages and filling it with read() from the pages-*.img files,
//! which is the least any restore of that memory has to do.
//!
//! Each workload is dumped once (which kills it) to tmpfs, then restored several
//! times from the same images: every restored copy is checked to run (test_mm
//! must count on from where it was dumped) and is killed and reaped, so its pid
//! is free for the next round; the last one is verified instead (SIGUSR1 -> OK,
//! exit 0). Restore and baseline are interleaved, taking turns to go first, so
//! both see the same machine conditions; read the ratios. Each round also times
//! `restore::load` on its own (parsing the images and checking their CRC
//! manifest, the first thing a restore does), to show where restore time goes.
//!
//! prefork (a 256 MiB heap shared copy-on-write by a parent and 4 workers)
//! is also restored, in the same rounds, as crust restored it before it kept
//! that sharing (`RestoreOptions::private_copies`: every process a copy of
//! all its pages), for the ratio of the two.
//!
//! If a working `criu` is on PATH (`criu check` passes), criu dumps and
//! restores the same workloads too, for comparison.
//!
//! Run with `cargo bench -p crust-cli --bench restore`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use common::{median, min_max, ms, noisy, selected, TmpPath, Workload};
use crust::dump::{dump, DumpOptions};
use crust::images::load;
use crust::restore::{restore, RestoreOptions, RestoreStats};

const PAGE: u64 = 4096;

/// The time to mmap `bytes` of fresh anonymous memory and fill it from `files`
/// (`bytes` in all) with read(); the unmap afterwards is not counted (a restore
/// frees nothing).
fn read_baseline(files: &[PathBuf], bytes: u64) -> Result<Duration> {
    use std::os::fd::AsRawFd;
    let len = bytes.max(PAGE) as usize;
    let t = Instant::now();
    // SAFETY: a new private anonymous mapping, only written by read() below
    // within its bounds, and unmapped before returning.
    let base = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("mmap for the baseline");
    }
    let result = (|| -> Result<()> {
        let mut off = 0usize;
        for path in files {
            let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            loop {
                let want = (len - off).min(1 << 30);
                if want == 0 {
                    break;
                }
                // SAFETY: base + off .. + want lies within the mapping.
                let n = unsafe { libc::read(f.as_raw_fd(), base.cast::<u8>().add(off).cast(), want) };
                if n < 0 {
                    return Err(std::io::Error::last_os_error()).with_context(|| format!("reading {}", path.display()));
                }
                if n == 0 {
                    break;
                }
                off += n as usize;
            }
        }
        if off as u64 != bytes {
            bail!("read {off} bytes from the pages files, expected {bytes}");
        }
        Ok(())
    })();
    let took = t.elapsed();
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base, len) };
    result.map(|()| took)
}

fn pages_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("pages-") && n.ends_with(".img")))
        .collect();
    v.sort();
    Ok(v)
}

/// test_mm's threads print "t<i> <counter>": the highest counter seen per thread.
fn note_counters(lines: &[String], last: &mut [i64; 3]) {
    for l in lines {
        if let Some((i, n)) = parse_counter(l) {
            last[i] = last[i].max(n);
        }
    }
}

fn parse_counter(line: &str) -> Option<(usize, i64)> {
    let (t, n) = line.strip_prefix('t')?.split_once(' ')?;
    let i: usize = t.parse().ok().filter(|&i| i == 1 || i == 2)?;
    Some((i, n.parse().ok()?))
}

/// A restored copy is running: test_mm must count on from where it was dumped
/// (in both threads); bigmem, which prints nothing until it is asked to verify,
/// must still be alive a moment after the restore.
fn check_running(w: &mut Workload, last: &[i64; 3]) -> Result<()> {
    if !w.name.starts_with("test_mm") {
        return w.check_running(Duration::from_millis(20));
    }
    let mut seen = [false; 3];
    for i in [1, 2] {
        while !seen[i] {
            let l = w.expect_line("t", Duration::from_secs(5))?;
            let Some((j, n)) = parse_counter(&l) else { continue };
            if n <= last[j] {
                bail!("{}: printed {l:?} after the restore, but it had reached {} before the dump", w.name, last[j]);
            }
            seen[j] = true;
        }
    }
    Ok(())
}

/// One restore round: how long it took, what crust reported, and what the
/// side measurements (the baseline, ...) of that round took, in ms.
struct Round {
    wall_ms: f64,
    stats: Option<RestoreStats>,
    side: Vec<f64>,
}

/// Dumps a fresh workload (see `Workload::spawn_with` for `die_with_bench`)
/// once into `run` (killing it), then restores it `rounds + 1` times (round 0
/// is an untimed warm-up) with `restore_once` (given the images and the pid to
/// expect back). Every restored copy is checked, then killed, except the last,
/// which is verified. `side` (given the images) takes the round's other
/// measurements, named `side_names`: on even rounds after the restore, on odd
/// ones before it, so that neither is always the one that runs right after
/// 1 GiB was freed, say. Returns the dump's time and the timed rounds.
#[allow(clippy::too_many_arguments)]
fn dump_and_restore_rounds(
    name: &str,
    args: &[&str],
    rounds: usize,
    run: &TmpPath,
    die_with_bench: bool,
    dump_once: impl FnOnce(&Workload, &Path) -> Result<()>,
    mut restore_once: impl FnMut(&Path, i32) -> Result<(i32, Option<RestoreStats>)>,
    side_names: &[&str],
    mut side: impl FnMut(&Path) -> Result<Vec<f64>>,
) -> Result<(f64, Vec<Round>)> {
    let images = run.join("images");
    std::fs::create_dir(&images)?;
    let mut w = Workload::spawn_with(name, args, &run.join("out"), die_with_bench)?;
    let ready = w.expect_line("READY", Duration::from_secs(60))?;
    let pid = w.pid();
    eprintln!("  {}: {ready} (pid {pid})", w.name);

    let t = Instant::now();
    dump_once(&w, &images).with_context(|| format!("dump of {}", w.name))?;
    let dump_ms = ms(t.elapsed());
    // The dump killed it; reaped, its pid is free for the restore.
    w.wait_exit(Duration::from_secs(10)).with_context(|| format!("{} after its dump", w.name))?;
    reap_orphans()?;
    let mut last = [-1i64; 3];
    note_counters(&w.out.drain()?, &mut last);
    let out_len = w.out.len()?;

    let mut out = Vec::new();
    for round in 0..=rounds {
        let side_first = round % 2 == 1;
        let mut side_ms = if side_first { side(&images)? } else { Vec::new() };
        w.out.truncate(out_len)?;
        let t = Instant::now();
        let (root, stats) = restore_once(&images, pid).with_context(|| format!("restore of {} (round {round})", w.name))?;
        let wall_ms = ms(t.elapsed());
        w.adopt(root)?;
        if root != pid {
            bail!("{}: restored as pid {root}, dumped as {pid}", w.name);
        }
        check_running(&mut w, &last).with_context(|| format!("{} restored (round {round})", w.name))?;
        if round == rounds {
            w.verify().with_context(|| format!("{} restored (round {round})", w.name))?;
        } else {
            w.kill()?;
        }
        reap_orphans()?;
        if !side_first {
            side_ms = side(&images)?;
        }
        if round == 0 {
            continue;
        }
        let mut line = format!("    round: restore {wall_ms:8.2} ms");
        if let Some(s) = &stats {
            line += &format!(" (internal {:8.2}, forking {:5.2})", s.restore_time_us as f64 / 1e3, s.forking_time_us as f64 / 1e3);
        }
        for (n, v) in side_names.iter().zip(&side_ms) {
            line += &format!("  {n} {v:8.2} ms");
        }
        eprintln!("{line}{}", if side_first { "  (these first)" } else { "" });
        out.push(Round { wall_ms, stats, side: side_ms });
    }
    Ok((dump_ms, out))
}

struct Row {
    name: String,
    processes: usize,
    threads: usize,
    pages: u64,
    dump_ms: f64,
    restore_ms: f64,
    internal_ms: f64,
    forking_ms: f64,
    load_ms: f64,
    base_ms: f64,
    restore_range: (f64, f64),
    base_range: (f64, f64),
    /// The median restore with private copies, if measured.
    copies_ms: Option<f64>,
}

/// A restore of the images with private copies (see the top), timed; the tree
/// is killed at once (its workers die with their parent).
fn restore_with_copies(images: &Path) -> Result<f64> {
    let opts = RestoreOptions {
        dir: images.to_path_buf(),
        shell_job: false,
        pid_wait: Duration::from_secs(5),
        private_copies: true,
        ..Default::default()
    };
    let t = Instant::now();
    let r = restore(&opts).map_err(|e| anyhow!("restore with private copies: {e}"))?;
    let took = ms(t.elapsed());
    let root = nix::unistd::Pid::from_raw(r.root);
    nix::sys::signal::kill(root, nix::sys::signal::Signal::SIGKILL)?;
    nix::sys::wait::waitpid(root, None)?;
    reap_orphans()?;
    Ok(took)
}

/// Reap the children of a killed tree, which die with their parent and come
/// to us (a subreaper): their pids are free only once reaped, and the next
/// restore would wait for them (init reaps slowly here). Called when no
/// other child of ours is alive.
fn reap_orphans() -> Result<()> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Err(nix::errno::Errno::ECHILD) => return Ok(()),
            Err(e) => bail!("reaping the killed tree: {e}"),
            Ok(WaitStatus::StillAlive) if Instant::now() > deadline => bail!("children of a killed tree are still alive"),
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(1)),
            Ok(_) => {}
        }
    }
}

/// `with_copies`: each round also restores with private copies.
fn bench(name: &str, args: &[&str], rounds: usize, counter: &mut usize, with_copies: bool) -> Result<Row> {
    let run = TmpPath::dir("restore-", *counter)?;
    *counter += 1;
    let mut base_bytes = 0;
    let (dump_ms, rs) = dump_and_restore_rounds(
        name,
        args,
        rounds,
        &run,
        true,
        |w, images| {
            let opts = DumpOptions { pid: w.pid(), dir: images.to_path_buf(), leave_running: false, shell_job: false, ..Default::default() };
            dump(&opts).map(drop).map_err(|e| anyhow!("{e}"))
        },
        |images, _| {
            let opts = RestoreOptions { dir: images.to_path_buf(), shell_job: false, pid_wait: Duration::from_secs(5), ..Default::default() };
            let r = restore(&opts).map_err(|e| anyhow!("{e}"))?;
            Ok((r.root, Some(r.stats)))
        },
        if with_copies { &["baseline", "load apart", "private copies"] } else { &["baseline", "load apart"] },
        |images| {
            let files = pages_files(images)?;
            base_bytes = 0;
            for f in &files {
                base_bytes += std::fs::metadata(f)?.len();
            }
            let b = ms(read_baseline(&files, base_bytes)?);
            // The first step of a restore on its own: reading the images and
            // checking them against their CRC manifest.
            let t = Instant::now();
            crust::restore::load(images, load::Pages::InDir).map_err(|e| anyhow!("loading {}: {e}", images.display()))?;
            let mut side = vec![b, ms(t.elapsed())];
            if with_copies {
                side.push(restore_with_copies(images)?);
            }
            Ok(side)
        },
    )?;
    let stats: Vec<&RestoreStats> = rs.iter().map(|r| r.stats.as_ref().expect("crust reports stats")).collect();
    // The baseline reads what the pages files hold; the restore must have put
    // exactly that much in place (written, or found there, inherited).
    if let Some(s) = stats.iter().find(|s| (s.pages_restored + s.pages_skipped_cow) * PAGE != base_bytes) {
        bail!("{name}: {} pages restored and {} kept, but the pages files hold {base_bytes} bytes", s.pages_restored, s.pages_skipped_cow);
    }
    let wall: Vec<f64> = rs.iter().map(|r| r.wall_ms).collect();
    let base_t: Vec<f64> = rs.iter().map(|r| r.side[0]).collect();
    let load_t: Vec<f64> = rs.iter().map(|r| r.side[1]).collect();
    let us = |f: fn(&RestoreStats) -> u64| median(&stats.iter().map(|s| f(s) as f64 / 1e3).collect::<Vec<_>>());
    Ok(Row {
        name: format!("{name} {}", args.join(" ")).trim().to_string(),
        processes: stats[0].processes,
        threads: stats[0].threads,
        pages: median(&stats.iter().map(|s| s.pages_restored + s.pages_skipped_cow).collect::<Vec<_>>()),
        dump_ms,
        restore_ms: median(&wall),
        internal_ms: us(|s| s.restore_time_us),
        forking_ms: us(|s| s.forking_time_us),
        load_ms: median(&load_t),
        base_ms: median(&base_t),
        restore_range: min_max(&wall),
        base_range: min_max(&base_t),
        copies_ms: with_copies.then(|| median(&rs.iter().map(|r| r.side[2]).collect::<Vec<_>>())),
    })
}

/// Runs `criu` with a timeout; on failure, the end of its log is the error.
fn criu(args: &[&str], log: &Path, timeout: Duration) -> Result<()> {
    let mut child = Command::new("criu")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting criu")?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("criu {} did not finish within {timeout:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        bail!("criu {} failed ({status}):\n{}", args.join(" "), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(())
}

/// `criu check` passes (Debian's criu 3.17 does not on recent kernels).
fn criu_usable() -> bool {
    let Ok(dir) = tempfile::Builder::new().prefix(&format!("crust-bench-{}-criu-check-", std::process::id())).tempdir() else {
        return false;
    };
    let log = dir.path().join("criu-check.log");
    criu(&["check", "-o", &log.to_string_lossy()], &log, Duration::from_secs(30)).is_ok()
}

struct CriuRow {
    name: String,
    dump_ms: f64,
    restore_ms: f64,
    restore_range: (f64, f64),
}

fn bench_criu(name: &str, args: &[&str], rounds: usize, counter: &mut usize) -> Result<CriuRow> {
    let run = TmpPath::dir("criu-", *counter)?;
    *counter += 1;
    let (dump_ms, rs) = dump_and_restore_rounds(
        name,
        args,
        rounds,
        &run,
        // criu restores PR_SET_PDEATHSIG too, and the restored tree's parent
        // is criu, which exits.
        false,
        |w, images| {
            let log = run.join("dump.log");
            let (dir, log_s) = (images.to_string_lossy(), log.to_string_lossy());
            criu(&["dump", "-t", &w.pid().to_string(), "-D", &dir, "-o", &log_s], &log, Duration::from_secs(120))
        },
        |images, pid| {
            let log = run.join("restore.log");
            let (dir, log_s) = (images.to_string_lossy(), log.to_string_lossy());
            criu(&["restore", "-d", "-D", &dir, "-o", &log_s], &log, Duration::from_secs(120))?;
            // Detached, the restored root (with its dumped pid) was reparented
            // to us, a subreaper, when criu exited.
            Ok((pid, None))
        },
        &[],
        |_| Ok(Vec::new()),
    )?;
    let wall: Vec<f64> = rs.iter().map(|r| r.wall_ms).collect();
    Ok(CriuRow {
        name: format!("{name} {}", args.join(" ")).trim().to_string(),
        dump_ms,
        restore_ms: median(&wall),
        restore_range: min_max(&wall),
    })
}

fn main() -> Result<()> {
    let start = Instant::now();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    common::remove_stale();
    println!("crust restore benchmark: nproc {nproc}, images on /dev/shm (tmpfs), dumped once, restored per round");
    // The children of a killed tree come to us to be reaped (see
    // `reap_orphans`); criu restore -d leaves the restored root to us too.
    // SAFETY: plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("PR_SET_CHILD_SUBREAPER");
    }

    let cases: [(&str, &[&str], usize); 4] =
        [("test_mm", &[], 9), ("bigmem", &["256"], 9), ("bigmem", &["1024"], 9), ("prefork", &["256"], 9)];
    let mut counter = 0;
    let mut rows = Vec::new();
    for (name, args, rounds) in cases {
        if selected(name, args) {
            rows.push(bench(name, args, rounds, &mut counter, name == "prefork")?);
        }
    }

    let mut criu_rows = Vec::new();
    let criu_ok = criu_usable();
    if criu_ok {
        for (name, args, rounds) in cases {
            if selected(name, args) {
                criu_rows.push(bench_criu(name, args, rounds, &mut counter)?);
            }
        }
    }

    println!();
    println!("medians over the timed rounds (one untimed warm-up round per workload):");
    println!(
        "{:<14} {:>8} {:>11} {:>11} {:>11} {:>13} {:>12}",
        "workload", "pages", "restore ms", "internal ms", "baseline ms", "restore/base", "over base ms"
    );
    for r in &rows {
        println!(
            "{:<14} {:>8} {:>11.2} {:>11.2} {:>11.2} {:>13.2} {:>12.2}",
            r.name,
            r.pages,
            r.restore_ms,
            r.internal_ms,
            r.base_ms,
            r.restore_ms / r.base_ms,
            r.restore_ms - r.base_ms
        );
    }
    println!();
    println!("details (ms; internal and forking are medians of RestoreStats; load is restore::load");
    println!("(parse + CRC check of the images, the restore's first step) timed apart; ranges are min..max):");
    for r in &rows {
        let (rmin, rmax) = r.restore_range;
        let (bmin, bmax) = r.base_range;
        println!(
            "  {:<14} {} process(es) {} thread(s) | dump (once) {:.2} | load {:.2} forking {:.2} | restore {:.2}..{:.2} baseline {:.2}..{:.2} | min restore/min base {:.2}{}",
            r.name,
            r.processes,
            r.threads,
            r.dump_ms,
            r.load_ms,
            r.forking_ms,
            rmin,
            rmax,
            bmin,
            bmax,
            rmin / bmin,
            noisy(&[r.restore_range, r.base_range])
        );
    }
    for r in rows.iter().filter(|r| r.copies_ms.is_some()) {
        let copies = r.copies_ms.unwrap_or_default();
        println!(
            "{}: restore with private copies {copies:.2} ms, keeping copy-on-write sharing {:.2} ms: copies/shared {:.2}",
            r.name,
            r.restore_ms,
            copies / r.restore_ms
        );
    }
    println!();
    if criu_ok {
        println!("criu beside crust (medians; dump is a single dump that kills the tree):");
        println!(
            "{:<14} {:>13} {:>13} {:>16} {:>16} {:>16}",
            "workload", "criu dump ms", "crust dump ms", "criu restore ms", "crust restore ms", "crust/criu rest."
        );
        for c in &criu_rows {
            let Some(r) = rows.iter().find(|r| r.name == c.name) else { continue };
            println!(
                "{:<14} {:>13.2} {:>13.2} {:>16.2} {:>16.2} {:>16.2}   (criu restore {:.2}..{:.2})",
                c.name,
                c.dump_ms,
                r.dump_ms,
                c.restore_ms,
                r.restore_ms,
                r.restore_ms / c.restore_ms,
                c.restore_range.0,
                c.restore_range.1
            );
        }
    } else {
        println!("criu: not usable here, skipped");
    }
    println!();
    println!("every restored copy ran (test_mm counted on in both threads); the last of each verified (SIGUSR1 -> OK, exit 0)");
    println!("total runtime {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
