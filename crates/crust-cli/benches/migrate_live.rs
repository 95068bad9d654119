//! Benchmark of `crust migrate --live` (pre-copy through dirty tracking)
//! against the stop-and-copy `crust migrate`, and of a dump after a
//! pre-dump with tracking against one that compares pages.
//!
//! Moves: dirtier (256 MiB and 1 GiB) between the two test hosts over tcp://,
//! idle and with a writer of about 10 MiB/s (the bench sends it SIGUSR2 ten
//! times a second: a step writes 1 MiB), each way: stop-and-copy, then
//! --live. After each stop-and-copy move, the baseline: the same bytes over a
//! plain TCP connection on the same veth, from a 1 MiB buffer (this bench's
//! own sender and sink, run in the hosts). Frozen and total times are
//! crust's own (`frozen_time_us`, `total_time_us`).
//!
//! Same host: dirtier 1024 is pre-dumped, takes 4 steps (1024 pages
//! written), and is dumped (--leave-running) on top of the pre-dump, once
//! with the tracking the pre-dump left, once with it ended first (its keeper
//! killed: the dump compares every page with the parent's).
//!
//! Run with `cargo bench -p crust-cli --bench migrate_live` (as root).

#[path = "../tests/common/mod.rs"]
mod testing;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use testing::hosts::{Host, HostChild, Hosts};
use testing::{workload_path, CRUST};

const SERVE_PORT: u16 = 7080;
const SINK_PORT: u16 = 7081;
const CHUNK: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(180);

fn sink(addr: &str) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    println!("listening");
    std::io::stdout().flush()?;
    let mut buf = vec![0u8; CHUNK];
    for conn in listener.incoming() {
        let mut s = conn?;
        let mut len = [0u8; 8];
        s.read_exact(&mut len)?;
        let mut left = u64::from_le_bytes(len);
        while left > 0 {
            let n = s.read(&mut buf[..(left as usize).min(CHUNK)])?;
            ensure!(n > 0, "the sender hung up");
            left -= n as u64;
        }
        s.write_all(&[1])?;
    }
    Ok(())
}

fn send(addr: &str, bytes: u64) -> Result<()> {
    let buf: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + 1) as u8).collect();
    let t = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.write_all(&bytes.to_le_bytes())?;
    let mut left = bytes;
    while left > 0 {
        let n = (left as usize).min(CHUNK);
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.read_exact(&mut [0u8; 1])?;
    println!("{}", t.elapsed().as_micros());
    Ok(())
}

fn lines(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out).unwrap_or_default().lines().map(str::to_string).collect()
}

fn wait_line(out: &Path, f: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(l) = lines(out).into_iter().find(|l| f(l)) {
            return Ok(l);
        }
        if Instant::now() > deadline {
            bail!("no such line in {}: {:?}", out.display(), lines(out));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn find_in(host: &Host, host_pid: i32) -> Option<i32> {
    let live = |p: i32| std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| !s.contains(") Z "));
    host.processes().into_iter().find(|&p| host.pid_in_host(p) == Some(host_pid) && live(p))
}

fn moved(to: &Host, host_pid: i32) -> Result<i32> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(p) = find_in(to, host_pid) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("pid {host_pid} did not arrive in host {}", to.label());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGUSR2 to `pid` every 100 ms (dirtier writes 1 MiB per step: ~10 MiB/s).
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(pid: i32) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // SAFETY: a signal to the bench's own workload.
                unsafe { libc::kill(pid, libc::SIGUSR2) };
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Writer { stop, thread: Some(thread) }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Setup {
    hosts: Hosts,
    crust: PathBuf,
    helper: PathBuf,
    key: PathBuf,
    _serve: [HostChild; 2],
    _sinks: [HostChild; 2],
}

impl Setup {
    fn new() -> Result<Setup> {
        let hosts = Hosts::new("bench-live");
        let bin = hosts.tmp().join("bin");
        std::fs::create_dir_all(&bin)?;
        let copy = |from: &Path, name: &str| -> Result<PathBuf> {
            let to = bin.join(name);
            std::fs::copy(from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
            Ok(to)
        };
        let crust = copy(Path::new(CRUST), "crust")?;
        let helper = copy(&std::env::current_exe()?, "live-bench")?;
        let key = hosts.tmp().join("key");
        std::fs::write(&key, [0x6bu8; 32])?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        let serve = |h: &Host, n: &str| h.start_crust_serve(&crust, SERVE_PORT, &key, &hosts.tmp().join(n), &hosts.tmp().join(format!("{n}.log")));
        let serves = [serve(&hosts.a, "serve-a"), serve(&hosts.b, "serve-b")];
        let sink = |h: &Host| -> Result<HostChild> {
            let mut cmd = h.command(&helper);
            cmd.args(["__sink", &format!("{}:{SINK_PORT}", h.ip())]).stdin(Stdio::null()).stdout(Stdio::piped());
            let mut child = cmd.spawn();
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
            ensure!(line.trim() == "listening", "sink: {line:?}");
            Ok(child)
        };
        let sinks = [sink(&hosts.a)?, sink(&hosts.b)?];
        Ok(Setup { crust, helper, key, _serve: serves, _sinks: sinks, hosts })
    }

    fn migrate(&self, from: &Host, to: &Host, host_pid: i32, live: bool) -> Result<Value> {
        let mut cmd = from.command(&self.crust);
        cmd.args(["migrate", "-t", &host_pid.to_string(), "--to", &format!("tcp://{}:{SERVE_PORT}", to.ip()), "--json", "--key"]).arg(&self.key);
        if live {
            cmd.arg("--live");
        }
        let out = cmd.output(WAIT);
        ensure!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn baseline(&self, from: &Host, to: &Host, bytes: u64) -> Result<f64> {
        let mut cmd = from.command(&self.helper);
        cmd.args(["__send", &format!("{}:{SINK_PORT}", to.ip()), &bytes.to_string()]);
        let out = cmd.output(WAIT);
        ensure!(out.status.success(), "baseline: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()? / 1e3)
    }
}

fn ms(v: &Value) -> f64 {
    v.as_u64().unwrap_or(0) as f64 / 1e3
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__sink") => return sink(&args[2]),
        Some("__send") => return send(&args[2], args[3].parse()?),
        _ => {}
    }
    let filter = std::env::var("CRUST_BENCH_FILTER").unwrap_or_default();
    let setup = Setup::new()?;
    let hosts = &setup.hosts;
    println!("crust migrate --live benchmark: tcp:// between hosts A and B (veth), one move per cell");
    println!("{:<6} {:<7} {:<14} {:>10} {:>10} {:>10} {:>9} {:>11} {:>11}  rounds (pages)", "size", "writer", "mode", "frozen ms", "total ms", "base ms", "MiB sent", "total/base", "frozen/base");
    for mib in ["256", "1024"] {
        if !filter.is_empty() && !mib.contains(&filter) {
            continue;
        }
        let out = hosts.tmp().join(format!("dirtier-{mib}.out"));
        let mut cmd = hosts.a.command(workload_path("dirtier"));
        cmd.arg(mib);
        testing::job::output_to_file(&mut cmd, &out);
        testing::job::new_session(&mut cmd);
        let job = cmd.spawn();
        let pid = job.host_pid();
        wait_line(&out, |l| l.starts_with("READY"))?;
        let mut here = &hosts.a;
        for writing in [false, true] {
            let mut base = 0.0;
            for live in [false, true] {
                let there = if here.label() == 'a' { &hosts.b } else { &hosts.a };
                let local = find_in(here, pid).context("the workload is gone")?;
                let writer = writing.then(|| Writer::start(local));
                // Let the writer reach its pace.
                std::thread::sleep(Duration::from_millis(if writing { 500 } else { 50 }));
                let stats = setup.migrate(here, there, pid, live)?;
                drop(writer);
                moved(there, pid)?;
                let bytes = stats["bytes_sent"].as_u64().unwrap_or(0);
                if !live {
                    base = setup.baseline(here, there, bytes)?;
                }
                let (frozen, total) = (ms(&stats["frozen_time_us"]), ms(&stats["total_time_us"]));
                let rounds: Vec<String> = stats["pre_copy"]["rounds"]
                    .as_array()
                    .map(|r| r.iter().map(|r| r["pages"].to_string()).collect())
                    .unwrap_or_default();
                println!(
                    "{:<6} {:<7} {:<14} {:>10.1} {:>10.1} {:>10.1} {:>9.1} {:>11.2} {:>11.3}  {} | dump {:.1} restore {:.1} rst(dest) {:.1}",
                    format!("{mib}M"),
                    if writing { "10MiB/s" } else { "idle" },
                    if live { "--live" } else { "stop-and-copy" },
                    frozen,
                    total,
                    base,
                    bytes as f64 / 1048576.0,
                    total / base,
                    frozen / base,
                    rounds.join(" "),
                    ms(&stats["dump_time_us"]),
                    ms(&stats["restore_time_us"]),
                    ms(&stats["remote"]["stats"]["restore_time_us"]),
                );
                here = there;
            }
        }
        let p = find_in(here, pid).context("the workload is gone")?;
        // SAFETY: our workload.
        unsafe { libc::kill(p, libc::SIGUSR1) };
        let verdict = wait_line(&out, |l| l == "OK" || l.starts_with("FAIL"))?;
        ensure!(verdict == "OK", "dirtier {mib}: {verdict}");
        drop(job);
    }

    // Same host: a dump after a pre-dump, 1024 pages written between.
    if filter.is_empty() || filter == "dump" {
        println!();
        println!("same host, dirtier 1024 (1 GiB), pre-dump, 4 steps (1024 pages written), dump --leave-running on top:");
        let tmp = hosts.tmp().join("same-host");
        std::fs::create_dir_all(&tmp)?;
        let out = tmp.join("dirtier.out");
        let mut cmd = std::process::Command::new(workload_path("dirtier"));
        cmd.arg("1024");
        testing::job::output_to_file(&mut cmd, &out);
        testing::job::new_session(&mut cmd);
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        wait_line(&out, |l| l.starts_with("READY"))?;
        let crust = |args: &[&str]| -> Result<Value> {
            let o = std::process::Command::new(&setup.crust).args(args).output()?;
            ensure!(o.status.success(), "crust {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            Ok(serde_json::from_slice(&o.stdout)?)
        };
        for tracked in [true, false] {
            let name = if tracked { "tracked" } else { "compared" };
            let pre = tmp.join(format!("pre-{name}"));
            let fin = tmp.join(format!("dump-{name}"));
            crust(&["pre-dump", "-t", &pid.to_string(), "-D", pre.to_str().unwrap(), "--json"])?;
            if !tracked {
                let note: Value = serde_json::from_slice(&std::fs::read(pre.join("crust-tracking.json"))?)?;
                // SAFETY: the keeper the pre-dump above made.
                unsafe { libc::kill(note["keeper"].as_i64().unwrap_or(0) as i32, libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(200));
            }
            for _ in 0..4 {
                // SAFETY: our workload.
                unsafe { libc::kill(pid, libc::SIGUSR2) };
                std::thread::sleep(Duration::from_millis(30));
            }
            wait_line(&out, |l| l == format!("STEP {}", if tracked { 4 } else { 8 }))?;
            let t = Instant::now();
            let s = crust(&["dump", "-t", &pid.to_string(), "-D", fin.to_str().unwrap(), "--leave-running", "--prev-images-dir", &format!("../pre-{name}"), "--json"])?;
            let wall = t.elapsed().as_secs_f64() * 1e3;
            println!(
                "  {name:<9} frozen {:>7.1} ms  command {:>7.1} ms  pages written {:>6}  tracked clean {:>7}  compared {:>7}",
                ms(&s["frozen_time_us"]),
                wall,
                s["pages_written"],
                s["pages_tracked_clean"],
                s["pages_compared"]
            );
        }
        // SAFETY: our workload.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        let verdict = wait_line(&out, |l| l == "OK" || l.starts_with("FAIL"))?;
        ensure!(verdict == "OK", "dirtier 1024 same host: {verdict}");
        let _ = child.wait();
    }
    Ok(())
}
