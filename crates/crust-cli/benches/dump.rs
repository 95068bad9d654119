//! Benchmark of `crust::dump::dump` (in-process, `leave_running = true`) on the
//! bundled workloads, against a same-run baseline: writing the same number of
//! bytes to a fresh tmpfs file in 1 MiB chunks.
//!
//! Run with `cargo bench -p crust-cli --bench dump`. Absolute times are noisy
//! on small machines; read the ratios. Dump and baseline iterations are
//! interleaved so both see the same machine conditions.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crust::dump::{dump, DumpOptions, DumpStats};

const WORKLOAD_DIR: &str = env!("CRUST_WORKLOAD_DIR");
const CHUNK: usize = 1 << 20;

/// A running workload in its own session; killed and reaped on drop.
struct Workload {
    name: String,
    child: Child,
    lines: Receiver<String>,
    reaped: bool,
}

impl Workload {
    fn spawn(name: &str, args: &[&str]) -> Result<Workload> {
        let exe = Path::new(WORKLOAD_DIR).join(name);
        let mut cmd = Command::new(&exe);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        // SAFETY: setsid and close_range are async-signal-safe. The child leads
        // its own session so the dump does not need shell_job, and it inherits
        // no fds beyond 0-2 (a profiler's leaked eventfd, say, would make the
        // dump fail on an unsupported file).
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Drain stdout for the whole run so the workload never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Workload { name: format!("{name} {}", args.join(" ")).trim().to_string(), child, lines: rx, reaped: false })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a line starting with `prefix`, skipping others.
    fn expect_line(&self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(l) if l.starts_with("FAIL") => bail!("{}: {l}", self.name),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("{}: no {prefix:?} line within {timeout:?}", self.name),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("{}: stdout closed before {prefix:?}", self.name),
            }
        }
    }

    /// SIGUSR1 makes both workloads check themselves, print OK and exit 0.
    fn verify(&mut self) -> Result<()> {
        kill(Pid::from_raw(self.pid()), Signal::SIGUSR1).context("sending SIGUSR1")?;
        self.expect_line("OK", Duration::from_secs(30))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                if !status.success() {
                    bail!("{} exited with {status}", self.name);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} printed OK but did not exit", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A path under /dev/shm removed (file or directory) on drop.
struct TmpPath(PathBuf);

impl TmpPath {
    fn new(tag: &str, n: usize) -> TmpPath {
        let p = PathBuf::from(format!("/dev/shm/crust-bench-{}-{tag}{n}", std::process::id()));
        remove(&p);
        TmpPath(p)
    }
}

fn remove(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

impl Drop for TmpPath {
    fn drop(&mut self) {
        remove(&self.0);
    }
}

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

fn median<T: Copy + PartialOrd>(v: &[T]) -> T {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    s[s.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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
    let mut w = Workload::spawn(name, args)?;
    let ready = w.expect_line("READY", Duration::from_secs(60))?;
    eprintln!("  {}: {ready} (pid {})", w.name, w.pid());

    let mut stats: Vec<DumpStats> = Vec::new();
    let mut dump_t = Vec::new();
    let mut base_t = Vec::new();
    // Round 0 is an untimed warm-up: the first use of a lot of fresh memory in
    // this VM is much slower (host faults) than steady state.
    for round in 0..=iters {
        let dir = TmpPath::new("", *counter);
        *counter += 1;
        let opts = DumpOptions { pid: w.pid(), dir: dir.0.clone(), leave_running: true, shell_job: false };
        let t = Instant::now();
        let s = dump(&opts).map_err(|e| anyhow::anyhow!("dump of {}: {e}", w.name))?;
        dump_t.push(ms(t.elapsed()));
        drop(dir);

        let file = TmpPath::new("base-", *counter);
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
    let minmax = |v: &[f64]| {
        (v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(0.0, f64::max))
    };
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
        dump_range: minmax(&dump_t),
        base_range: minmax(&base_t),
    })
}

fn main() -> Result<()> {
    let start = Instant::now();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
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
    // CRUST_BENCH_FILTER=<substring> runs only the matching workloads (e.g. for profiling).
    let filter = std::env::var("CRUST_BENCH_FILTER").unwrap_or_default();
    for (name, args, iters) in cases {
        if !format!("{name} {}", args.join(" ")).contains(filter.as_str()) {
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
            if dmax > 1.5 * dmin || bmax > 1.5 * bmin { "  (noisy: max > 1.5 x min)" } else { "" }
        );
    }
    println!();
    println!("all workloads verified intact (SIGUSR1 -> OK, exit 0)");
    println!("total runtime {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
