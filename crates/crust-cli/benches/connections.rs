//! Benchmark of dump and restore of a tree holding established TCP
//! connections (`--tcp-established`: TCP_REPAIR behind the network lock),
//! with 0, 100 and 1,000 connections between a server and its client child
//! (both ends in the tree), in the same run: the time of a dump (that kills
//! the tree), its frozen time, the time of a restore, and what each
//! connection adds to them, against the same tree with none.
//!
//! Every round starts a fresh tree (a dump kills it), dumps it to tmpfs,
//! restores it and checks it: every connection of both ends answers
//! (SIGUSR1 -> OK).
//!
//! Run with `cargo bench -p crust-cli --bench connections`.

mod common;

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use common::{median, ms, TmpPath, Workload};
use crust::dump::{dump, DumpOptions};
use crust::files::tcp::Mode;
use crust::restore::{restore, RestoreOptions};

const ROUNDS: usize = 5;

struct Row {
    connections: usize,
    dump_ms: f64,
    frozen_ms: f64,
    restore_ms: f64,
}

fn port(counter: usize) -> String {
    // Below the ephemeral range (32768 and up here), which connections use.
    (20000 + (std::process::id() as usize * 7 + counter) % 12000).to_string()
}

fn bench(n: usize, counter: &mut usize) -> Result<Row> {
    let (mut dumps, mut frozen, mut restores) = (Vec::new(), Vec::new(), Vec::new());
    // Round 0 is an untimed warm-up.
    for round in 0..=ROUNDS {
        let out = TmpPath::new("conns-out-", *counter)?;
        let images = TmpPath::dir("conns-", *counter)?;
        let port = port(*counter);
        *counter += 1;
        let mut w = Workload::spawn("manyconns", &[&port, &n.to_string()], &out.0)?;
        w.expect_line("READY", Duration::from_secs(60))?;
        let opts = DumpOptions { pid: w.pid(), dir: images.0.clone(), tcp: Mode::Established, ..Default::default() };
        let t = Instant::now();
        let stats = dump(&opts).map_err(|e| anyhow!("dump of {n} connections: {e}"))?;
        let dump_ms = ms(t.elapsed());
        w.wait_exit(Duration::from_secs(30))?;
        reap_orphans()?;
        let opts = RestoreOptions { dir: images.0.clone(), tcp: Mode::Established, pid_wait: Duration::from_secs(5), ..Default::default() };
        let t = Instant::now();
        let restored = restore(&opts).map_err(|e| anyhow!("restore of {n} connections: {e}"))?;
        let restore_ms = ms(t.elapsed());
        w.adopt(restored.root)?;
        w.verify()?;
        if round > 0 {
            dumps.push(dump_ms);
            frozen.push(stats.frozen_time_us as f64 / 1e3);
            restores.push(restore_ms);
        }
    }
    Ok(Row { connections: n, dump_ms: median(&dumps), frozen_ms: median(&frozen), restore_ms: median(&restores) })
}

/// The client child of a killed tree comes to us (a subreaper) to be
/// reaped: its pid is free for the restore only once it is.
fn reap_orphans() -> Result<()> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Err(nix::errno::Errno::ECHILD) => return Ok(()),
            Err(e) => return Err(anyhow!("reaping the killed tree: {e}")),
            Ok(WaitStatus::StillAlive) if Instant::now() > deadline => return Err(anyhow!("children of a killed tree are still alive")),
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(1)),
            Ok(_) => {}
        }
    }
}

fn main() -> Result<()> {
    common::remove_stale();
    // The client child of a killed tree comes to us to be reaped.
    // SAFETY: plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    println!("crust connections benchmark: a server and its client child joined by N established TCP connections (both ends saved)");
    let mut counter = 0;
    let rows = [0, 100, 1000].into_iter().map(|n| bench(n, &mut counter)).collect::<Result<Vec<_>>>()?;
    println!("medians of {ROUNDS} rounds (after one warm-up):");
    println!("{:>11} {:>9} {:>10} {:>11} {:>16} {:>16} {:>17}", "connections", "dump ms", "frozen ms", "restore ms", "dump us/conn", "frozen us/conn", "restore us/conn");
    let base = &rows[0];
    for r in &rows {
        // Each connection is two sockets (both ends in the tree).
        let per = |v: f64, b: f64| if r.connections == 0 { 0.0 } else { (v - b) * 1e3 / r.connections as f64 };
        println!(
            "{:>11} {:>9.1} {:>10.1} {:>11.1} {:>16.1} {:>16.1} {:>17.1}",
            r.connections,
            r.dump_ms,
            r.frozen_ms,
            r.restore_ms,
            per(r.dump_ms, base.dump_ms),
            per(r.frozen_ms, base.frozen_ms),
            per(r.restore_ms, base.restore_ms)
        );
    }
    Ok(())
}
