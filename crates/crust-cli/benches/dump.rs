//! Benchmark of `crust::dump::dump` (in-process, `leave_running = true`) on the
//! bundled workloads, against a same-run baseline: writing the same number of
//! bytes to a fresh tmpfs file in 1 MiB chunks.
//!
//! Run with `cargo bench -p crust-cli --bench dump`. Absolute times are noisy
//! on small machines; read the ratios. Dump and baseline iterations are
//! interleaved so both see the same machine conditions.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use common::{median, min_max, ms, noisy, selected, TmpPath, Workload};
use crust::dump::{dump, DumpOptions, DumpStats};

const CHUNK: usize = 1 << 20;

fn write_baseline(path: &Path, bytes: u64, buf: &[u8]) -> Result<Duration> {
    let t = Instant::now();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut left = bytes as usize;
    while left > 0 {
        let n = left.min(buf.len());
        f.write_all(&buf[..n])?;
        left -= n;
    }
    drop(f);
    Ok(t.elapsed())
}

struct Row {
    name: String,
    bytes: u64,
    pages_written: u64,
    pages_scanned: u64,
    dump_ms: f64,
    frozen_ms: f64,
    freezing_ms: f64,
    memdump_ms: f64,
    memwrite_ms: f64,
    base_ms: f64,
    dump_range: (f64, f64),
    base_range: (f64, f64),
}

fn bench(name: &str, args: &[&str], iters: usize, counter: &mut usize, buf: &[u8]) -> Result<Row> {
    let out = TmpPath::new("out-", *counter)?;
    *counter += 1;
    let mut w = Workload::spawn(name, args, &out.0)?;
    let ready = w.expect_line("READY", Duration::from_secs(60))?;
    eprintln!("  {}: {ready} (pid {})", w.name, w.pid());

    let mut stats: Vec<DumpStats> = Vec::new();
    let mut dump_t = Vec::new();
    let mut base_t = Vec::new();
    // Round 0 is an untimed warm-up: the first use of a lot of fresh memory in
    // this VM is much slower (host faults) than steady state.
    for round in 0..=iters {
        let dir = TmpPath::new("", *counter)?;
        *counter += 1;
        let opts = DumpOptions { pid: w.pid(), dir: dir.0.clone(), leave_running: true, shell_job: false, ..Default::default() };
        let t = Instant::now();
        let s = dump(&opts).map_err(|e| anyhow::anyhow!("dump of {}: {e}", w.name))?;
        dump_t.push(ms(t.elapsed()));
        drop(dir);

        let file = TmpPath::new("base-", *counter)?;
        *counter += 1;
        base_t.push(ms(write_baseline(&file.0, s.bytes_written, buf)?));
        drop(file);
        if round == 0 {
            dump_t.clear();
            base_t.clear();
            continue;
        }
        eprintln!(
            "    iter: dump {:8.2} ms (memdump {:7.2} memwrite {:7.2})  baseline {:8.2} ms",
            dump_t[dump_t.len() - 1],
            s.memdump_time_us as f64 / 1e3,
            s.memwrite_time_us as f64 / 1e3,
            base_t[base_t.len() - 1]
        );
        stats.push(s);
    }
    w.verify().with_context(|| format!("{} after {iters} dumps", w.name))?;

    let us = |f: fn(&DumpStats) -> u64| median(&stats.iter().map(|s| f(s) as f64 / 1e3).collect::<Vec<_>>());
    Ok(Row {
        name: w.name.clone(),
        bytes: median(&stats.iter().map(|s| s.bytes_written).collect::<Vec<_>>()),
        pages_written: median(&stats.iter().map(|s| s.pages_written).collect::<Vec<_>>()),
        pages_scanned: median(&stats.iter().map(|s| s.pages_scanned).collect::<Vec<_>>()),
        dump_ms: median(&dump_t),
        frozen_ms: us(|s| s.frozen_time_us),
        freezing_ms: us(|s| s.freezing_time_us),
        memdump_ms: us(|s| s.memdump_time_us),
        memwrite_ms: us(|s| s.memwrite_time_us),
        base_ms: median(&base_t),
        dump_range: min_max(&dump_t),
        base_range: min_max(&base_t),
    })
}

fn main() -> Result<()> {
    let start = Instant::now();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    common::remove_stale();
    println!("crust dump benchmark: nproc {nproc}, images on /dev/shm (tmpfs), leave_running");

    // Non-zero, non-repeating-looking data so nothing can shortcut the copy.
    let mut buf = vec![0u8; CHUNK];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x as u8) | 1;
    }

    let cases: [(&str, &[&str], usize); 3] = [("test_mm", &[], 5), ("bigmem", &["256"], 5), ("bigmem", &["1024"], 7)];
    let mut counter = 0;
    let mut rows = Vec::new();
    for (name, args, iters) in cases {
        if !selected(name, args) {
            continue;
        }
        rows.push(bench(name, args, iters, &mut counter, &buf)?);
    }

    println!();
    println!("medians over the timed rounds (one untimed warm-up round per workload):");
    println!(
        "{:<14} {:>14} {:>8} {:>10} {:>10} {:>11} {:>10} {:>12}",
        "workload", "bytes", "pages", "dump ms", "frozen ms", "baseline ms", "dump/base", "frozen/base"
    );
    for r in &rows {
        println!(
            "{:<14} {:>14} {:>8} {:>10.2} {:>10.2} {:>11.2} {:>10.2} {:>12.2}",
            r.name,
            r.bytes,
            r.pages_written,
            r.dump_ms,
            r.frozen_ms,
            r.base_ms,
            r.dump_ms / r.base_ms,
            r.frozen_ms / r.base_ms
        );
    }
    println!();
    println!("details (ms; phase times are medians of DumpStats; ranges are min..max):");
    for r in &rows {
        let (dmin, dmax) = r.dump_range;
        let (bmin, bmax) = r.base_range;
        println!(
            "  {:<14} pages scanned {:>7} | freezing {:.2} memdump {:.2} memwrite {:.2} | dump {:.2}..{:.2} baseline {:.2}..{:.2} | min dump/min base {:.2}{}",
            r.name,
            r.pages_scanned,
            r.freezing_ms,
            r.memdump_ms,
            r.memwrite_ms,
            dmin,
            dmax,
            bmin,
            bmax,
            dmin / bmin,
            noisy(&[r.dump_range, r.base_range])
        );
    }
    println!();
    println!("all workloads verified intact (SIGUSR1 -> OK, exit 0)");
    println!("total runtime {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
