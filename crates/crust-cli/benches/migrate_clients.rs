//! Benchmark of `crust migrate --tcp-established` of redis-server with 1,000
//! clients connected, beside the same redis with none, in the same run
//! (alternating, round by round): hosts A and B and the clients' host C of
//! tests/common/hosts.rs, redis in A on the service address, the clients in
//! C, a move to B over tcp:// (a `crust serve` in B) during which the bench,
//! as the operator, moves the address at pre-restore (the action script
//! asks, the bench moves it and answers).
//!
//! Reported per case (medians, ms): the move as the command saw it, the
//! tree's frozen time on the source, the part of it the operator took
//! (from the script's request to its answer: three `ip` commands), the
//! frozen time without it, and crust's dump, check and restore phases; then
//! what each connection adds and the ratios of the two cases. After every
//! move each client sends PING on its connection and must read +PONG (no
//! reset), and a sample keeps its CLIENT ID.
//!
//! Run with `cargo bench -p crust-cli --bench migrate_clients` (as root).

mod common;

#[path = "../tests/common/mod.rs"]
mod testing;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use common::{median, min_max, noisy};
use testing::hosts::{Clients, Host, HostChild, Hosts};
use testing::CRUST;

const ROUNDS: usize = 3;
const CLIENTS: usize = 1000;
const PORT: u16 = 47301;
const WAIT: Duration = Duration::from_secs(120);

fn key_file(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("key");
    std::fs::write(&p, [0x3cu8; 32])?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(p)
}

/// The operator's script: logs nothing, asks at pre-restore and waits.
fn script(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("action.sh");
    let text = format!(
        "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = pre-restore ] || exit 0\nd={}\ntouch $d/move\n\
         i=0; while [ ! -e $d/moved ]; do sleep 0.005; i=$((i+1)); [ $i -lt 20000 ] || exit 1; done\nrm -f $d/move $d/moved\n",
        dir.display()
    );
    std::fs::write(&p, text)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(p)
}

/// `n` connections to `addr` from `host`'s network, made on a thread that
/// enters it (the sockets stay in it).
fn connect_from(host: &Host, addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let ns = host.ns_path("net");
    std::thread::spawn(move || -> Result<Vec<TcpStream>> {
        let f = std::fs::File::open(&ns)?;
        // SAFETY: setns of this thread only (network namespaces allow that).
        ensure!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } == 0, "setns into {}", ns.display());
        (0..n).map(|_| TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))).collect()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the connecting thread panicked"))?
}

/// One command on every connection (all sent, then all answers read): each
/// answer's first line.
fn everyone(conns: &mut [(TcpStream, BufReader<TcpStream>)], cmd: &str) -> Result<Vec<String>> {
    for (w, _) in conns.iter_mut() {
        w.write_all(cmd.as_bytes())?;
    }
    conns.iter_mut().map(|(_, r)| {
        let mut l = String::new();
        r.read_line(&mut l).context("an answer (a reset?)")?;
        Ok(l.trim_end().to_string())
    }).collect()
}

fn redis_up(out: &Path) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(out).unwrap_or_default().contains("Ready to accept connections") {
        ensure!(Instant::now() < deadline, "redis did not start: {}", std::fs::read_to_string(out).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

struct Sample {
    wall: f64,
    total: f64,
    frozen: f64,
    operator: f64,
    dump: f64,
    check: f64,
    restore: f64,
    hold: f64,
    kill: f64,
}

/// One move of redis with `n` clients from A to B; redis is killed in B after.
fn one_move(hosts: &Hosts, clients: &Clients, key: &Path, dir: &Path, n: usize, round: usize) -> Result<Sample> {
    clients.move_service(hosts, 'a');
    // A port of its own per move: the connections of the redis killed in B
    // before linger there (TIME_WAIT), and the same 4-tuple cannot be made
    // again in B while they do.
    let port = PORT + (2 * round + usize::from(n > 0)) as u16;
    let conf = dir.join(format!("redis-{n}-{round}.conf"));
    std::fs::write(
        &conf,
        format!("port {port}\nbind {}\nprotected-mode no\ndaemonize no\nsave \"\"\nappendonly no\nmaxclients 4000\ndir {}\n", clients.service(), dir.display()),
    )?;
    let out = dir.join(format!("redis-{n}-{round}.out"));
    let file = std::fs::File::create(&out)?;
    let mut cmd = hosts.a.command("/usr/bin/redis-server");
    cmd.arg(&conf).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
    testing::job::new_session(&mut cmd);
    let redis = cmd.spawn();
    redis_up(&out)?;
    let addr = SocketAddr::from((clients.service(), port));
    let mut conns: Vec<(TcpStream, BufReader<TcpStream>)> = connect_from(&clients.host, addr, n)?
        .into_iter()
        .map(|s| {
            s.set_read_timeout(Some(WAIT)).unwrap();
            (s.try_clone().unwrap(), BufReader::new(s))
        })
        .collect();
    // Every client answered: every connection is accepted and known to redis.
    ensure!(everyone(&mut conns, "PING\r\n")?.iter().all(|a| a == "+PONG"), "PING before the move");
    let ids = everyone(&mut conns[..n.min(10)], "CLIENT ID\r\n")?;

    let opdir = dir.join(format!("op-{n}-{round}"));
    std::fs::create_dir_all(&opdir)?;
    let action = script(&opdir)?;
    let mut m = hosts.a.command(CRUST);
    m.args(["migrate", "-t", &redis.host_pid().to_string(), "--to", &format!("tcp://{}:7070", hosts.b.ip()), "--json", "--tcp-established"])
        .arg("--key")
        .arg(key)
        .arg("--action-script")
        .arg(&action)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut migrating = m.spawn();
    let deadline = Instant::now() + WAIT;
    while !opdir.join("move").exists() {
        if let Some(status) = migrating.try_wait()? {
            bail!("migrate ended before pre-restore ({status})");
        }
        ensure!(Instant::now() < deadline, "the script never asked");
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    clients.move_service(hosts, 'b');
    std::fs::write(opdir.join("moved"), "")?;
    let operator = t.elapsed().as_secs_f64() * 1e3;
    let output = migrating.wait_with_output_timeout(WAIT)?;
    let wall = start.elapsed().as_secs_f64() * 1e3;
    ensure!(output.status.success(), "migrate with {n} clients: {}", String::from_utf8_lossy(&output.stderr));
    let stats: Value = serde_json::from_slice(&output.stdout).context("migrate --json")?;
    let ms = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1e3;

    ensure!(everyone(&mut conns, "PING\r\n")?.iter().all(|a| a == "+PONG"), "PING after the move");
    ensure!(everyone(&mut conns[..n.min(10)], "CLIENT ID\r\n")? == ids, "the same connections");
    // Done with this redis: killed in B.
    let in_b = hosts.b.processes().into_iter().find(|&p| hosts.b.pid_in_host(p) == Some(redis.host_pid()));
    if let Some(p) = in_b {
        // SAFETY: the migrated redis of this bench.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    drop(conns);
    drop(redis);
    Ok(Sample {
        wall,
        total: ms(&stats["total_time_us"]),
        frozen: ms(&stats["frozen_time_us"]),
        operator,
        dump: ms(&stats["dump_time_us"]),
        check: ms(&stats["check_time_us"]),
        restore: ms(&stats["restore_time_us"]),
        hold: ms(&stats["hold_time_us"]),
        kill: ms(&stats["kill_time_us"]),
    })
}

/// A column of the tables: its name and what it reads of a sample.
type Column<'a> = (&'a str, &'a dyn Fn(&Sample) -> f64);

/// `wait_with_output` bounded in time.
trait WaitOutput {
    fn wait_with_output_timeout(&mut self, timeout: Duration) -> Result<std::process::Output>;
}

impl WaitOutput for HostChild {
    fn wait_with_output_timeout(&mut self, timeout: Duration) -> Result<std::process::Output> {
        use std::io::Read;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        self.stdout.take().context("stdout")?.read_to_end(&mut out)?;
        self.stderr.take().context("stderr")?.read_to_end(&mut err)?;
        let status = self.wait_timeout(timeout).context("migrate did not end")?;
        Ok(std::process::Output { status, stdout: out, stderr: err })
    }
}

fn main() -> Result<()> {
    let begun = Instant::now();
    println!("crust migrate --tcp-established benchmark: redis with {CLIENTS} clients beside none, {ROUNDS} timed rounds + 1 warm-up, tcp://");
    // Two fds per client here (the stream and its reader's copy).
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a live struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let hosts = Hosts::new("bench-migrate-clients");
    let clients = hosts.start_clients();
    let key = key_file(hosts.tmp())?;
    let _serve = hosts.b.start_crust_serve(Path::new(CRUST), 7070, &key, &hosts.tmp().join("serve-b"), &hosts.tmp().join("serve-b.log"));
    let cases = [0, CLIENTS];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new()];
    for round in 0..=ROUNDS {
        for (i, &n) in cases.iter().enumerate() {
            let s = one_move(&hosts, &clients, &key, hosts.tmp(), n, round)?;
            eprintln!("  round {round}: {n} clients: total {:.1} ms, frozen {:.1} ms (operator {:.1})", s.total, s.frozen, s.operator);
            if round > 0 {
                samples[i].push(s);
            }
        }
    }
    let med = |i: usize, f: &dyn Fn(&Sample) -> f64| median(&samples[i].iter().map(f).collect::<Vec<_>>());
    let range = |i: usize, f: &dyn Fn(&Sample) -> f64| min_max(&samples[i].iter().map(f).collect::<Vec<_>>());
    let cols: [Column; 11] = [
        ("wall", &|s| s.wall),
        ("total", &|s| s.total),
        ("frozen", &|s| s.frozen),
        ("operator", &|s| s.operator),
        ("frz-op", &|s| s.frozen - s.operator),
        ("dump", &|s| s.dump),
        ("check", &|s| s.check),
        ("restore", &|s| s.restore),
        ("hold-op", &|s| s.hold - s.operator),
        ("kill", &|s| s.kill),
        ("other", &|s| s.total - s.dump - s.check - s.restore - s.hold - s.kill),
    ];
    println!();
    println!("medians (ms); operator: the address move at pre-restore (inside the frozen time); frz-op: frozen without it;");
    println!("hold-op: holding the connections there without the operator (LOCK: the destination takes in the images still in flight,");
    println!("one tcp-stream file per connection written to its disk, loads them and makes its nftables table); kill: silencing and");
    println!("killing the tree here and removing the lock here; restore includes the transfer of the pages; other: the rest of total:");
    print!("{:<10}", "clients");
    for (name, _) in &cols {
        print!(" {name:>9}");
    }
    println!();
    for (i, n) in cases.iter().enumerate() {
        print!("{n:<10}");
        for (_, f) in &cols {
            print!(" {:>9.1}", med(i, *f));
        }
        println!();
    }
    println!();
    println!("each of the {CLIENTS} connections adds (median difference / {CLIENTS}, µs), and the ratio {CLIENTS} clients / none:");
    for (name, f) in &cols {
        let (a, b) = (med(0, *f), med(1, *f));
        println!("  {name:<9} {:>8.1} µs/conn   x {:.2}", (b - a) * 1e3 / CLIENTS as f64, b / a);
    }
    println!();
    println!("ranges (min..max, ms):");
    for (i, n) in cases.iter().enumerate() {
        let (t, f) = (range(i, &|s| s.total), range(i, &|s| s.frozen));
        println!("  {n:<5} clients: total {:.1}..{:.1}  frozen {:.1}..{:.1}{}", t.0, t.1, f.0, f.1, noisy(&[t, f]));
    }
    println!("\nbench took {:.1} s", begun.elapsed().as_secs_f64());
    Ok(())
}
