//! Benchmark of `crust migrate` between two hosts on one machine (the
//! harness of tests/common/hosts.rs: own net, pid, mount and uts namespaces,
//! joined by a veth pair), over tcp:// (a `crust serve` on the destination)
//! and over ssh:// (an sshd on the destination), for `bigmem 256` and
//! `bigmem 1024`.
//!
//! The workload moves back and forth between A and B: each round moves it
//! once over each transport (the order alternates from round to round, so
//! each transport carries it in both directions). Round 0 is an untimed
//! warm-up. After every move, the baseline: a plain TCP sender in the source
//! host writes the same number of bytes (`bytes_sent` of that move) from a
//! 1 MiB buffer in memory to a sink in the destination host, which reads and
//! discards them and answers one byte; its time runs from connect to that
//! answer. Both helpers are this bench's own binary, run in the hosts. After
//! every ssh move, ssh alone is timed as well, for reference: a session
//! running `true`, and the same bytes piped into `cat > /dev/null`.
//!
//! The workload, crust and the helpers run from copies in the hosts' temp dir,
//! so that a build replacing the originals meanwhile does not break a move.
//!
//! At the end of each size the workload is asked (SIGUSR1) to verify its
//! memory wherever it is, and must answer OK.
//!
//! Run with `cargo bench -p crust-cli --bench migrate` (as root).
//! `CRUST_BENCH_FILTER=1024` runs only the matching workloads. Absolute times
//! are noisy on small machines; read the ratios.

mod common;

// The tests' helpers, for their two-hosts harness (`testing::hosts`, which
// needs a few of them: temp dirs, pidfds, run_with_timeout).
#[path = "../tests/common/mod.rs"]
mod testing;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use common::{median, min_max, noisy, selected};
use testing::hosts::{Host, HostChild, Hosts, Sshd};
use testing::{workload_path, CRUST};

/// Timed rounds per workload (plus one untimed warm-up round); each round
/// moves the workload once over each transport.
const ROUNDS: usize = 3;
const SERVE_PORT: u16 = 7070;
const SINK_PORT: u16 = 7071;
const CHUNK: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// The baseline's two ends (this binary, run inside the hosts).

/// `__sink ADDR`: accepts connections one after the other; each sends an
/// 8-byte length then that many bytes, which are read and discarded; then one
/// byte is answered.
fn sink(addr: &str) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    println!("listening");
    std::io::stdout().flush()?;
    let mut buf = vec![0u8; CHUNK];
    for conn in listener.incoming() {
        let r = (|| -> Result<()> {
            let mut s = conn?;
            let mut len = [0u8; 8];
            s.read_exact(&mut len)?;
            let mut left = u64::from_le_bytes(len);
            while left > 0 {
                let want = (left as usize).min(buf.len());
                let n = s.read(&mut buf[..want])?;
                ensure!(n > 0, "the sender hung up with {left} bytes to go");
                left -= n as u64;
            }
            s.write_all(&[1])?;
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("sink: {e:#}");
        }
    }
    Ok(())
}

/// `__send ADDR BYTES`: connects, sends BYTES from a 1 MiB buffer, waits for
/// the sink's answer; prints the microseconds from connect to the answer.
fn send(addr: &str, bytes: u64) -> Result<()> {
    let buf = pattern(CHUNK);
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.write_all(&bytes.to_le_bytes())?;
    let mut left = bytes;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).context("waiting for the sink's answer")?;
    let us = t.elapsed().as_micros();
    println!("{us}");
    Ok(())
}

/// Non-zero, non-repeating-looking data so nothing can shortcut the copy.
fn pattern(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x as u8) | 1;
    }
    buf
}

// ---------------------------------------------------------------------------
// Driving the hosts

/// The binaries the bench runs, copied into the hosts' temp dir: a `cargo
/// build` elsewhere may replace the originals meanwhile, and a workload whose
/// executable was replaced would carry its whole program in every move (a
/// deleted file travels in the images), which is not what is measured here.
struct Bins {
    crust: PathBuf,
    bigmem: PathBuf,
    /// This bench's own binary, for the baseline's sender and sink.
    helper: PathBuf,
}

impl Bins {
    fn copy(dir: &Path) -> Result<Bins> {
        let dir = dir.join("bin");
        std::fs::create_dir_all(&dir)?;
        let copy = |from: &Path, name: &str| -> Result<PathBuf> {
            let to = dir.join(name);
            std::fs::copy(from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
            Ok(to)
        };
        Ok(Bins {
            crust: copy(Path::new(CRUST), "crust")?,
            bigmem: copy(&workload_path("bigmem"), "bigmem")?,
            helper: copy(&std::env::current_exe().context("finding the bench's own path")?, "migrate-bench")?,
        })
    }
}

/// This bench's binary run in `host` with `args`.
fn helper(bins: &Bins, host: &Host, args: &[&str]) -> testing::hosts::HostCommand {
    let mut cmd = host.command(&bins.helper);
    cmd.args(args);
    cmd
}

fn start_sink(bins: &Bins, host: &Host) -> Result<HostChild> {
    let addr = format!("{}:{SINK_PORT}", host.ip());
    let mut cmd = helper(bins, host, &["__sink", &addr]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    ensure!(line.trim() == "listening", "sink in host {}: {line:?}", host.label());
    Ok(child)
}

/// Baseline: `bytes` from `from` to the sink in `to`; ms from connect to the answer.
fn baseline(bins: &Bins, from: &Host, to: &Host, bytes: u64) -> Result<f64> {
    let addr = format!("{}:{SINK_PORT}", to.ip());
    let out = helper(bins, from, &["__send", &addr, &bytes.to_string()]).output(WAIT);
    ensure!(out.status.success(), "baseline sender in {}: {}", from.label(), String::from_utf8_lossy(&out.stderr));
    let us: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("baseline sender's answer")?;
    Ok(us as f64 / 1e3)
}

/// A key file for crust serve and migrate.
fn key_file(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("key");
    std::fs::write(&p, [0x5au8; 32])?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(p)
}

fn lines(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Waits until `out` holds a line for which `f` is true; returns it.
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

/// `crust serve` in `host` on its veth address, its images under `workdir`.
fn serve(bins: &Bins, host: &Host, key: &Path, workdir: &Path, log: &Path) -> Result<HostChild> {
    Ok(host.start_crust_serve(&bins.crust, SERVE_PORT, key, workdir, log))
}

/// A workload started in `host`, in a session of its own, writing to `out`.
fn start_workload(host: &Host, exe: &Path, args: &[&str], out: &Path) -> Result<HostChild> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
    let mut cmd = host.command(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
    // SAFETY: setsid and close_range are async-signal-safe. The workload
    // inherits no fds beyond 0-2: a profiler's leaked eventfd, say, would make
    // every move fail on an unsupported file.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    Ok(cmd.spawn())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

/// The live process with `host_pid` in `host`, as a pid of the bench's namespace.
fn find_in(host: &Host, host_pid: i32) -> Option<i32> {
    host.processes().into_iter().find(|&p| host.pid_in_host(p) == Some(host_pid) && !is_zombie(p))
}

/// The workload runs in `to` and no longer in `from`.
fn moved(from: &Host, to: &Host, host_pid: i32) -> Result<i32> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let (Some(p), None) = (find_in(to, host_pid), find_in(from, host_pid)) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("pid {host_pid} did not move from host {} to host {}", from.label(), to.label());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Ssh,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ssh => "ssh",
        }
    }
}

/// Everything running for the migrations, in both hosts.
struct Setup {
    hosts: Hosts,
    bins: Bins,
    key: PathBuf,
    /// sshd in B (A its client), sshd in A (B its client).
    sshd_b: Sshd,
    sshd_a: Sshd,
    _serve: [HostChild; 2],
    _sinks: [HostChild; 2],
    serve_dirs: [PathBuf; 2],
}

impl Setup {
    fn new() -> Result<Setup> {
        let hosts = Hosts::new("bench-migrate");
        let bins = Bins::copy(hosts.tmp())?;
        let sshd_b = hosts.start_sshd();
        let sshd_a = hosts.start_sshd_in_a_on(22);
        let key = key_file(hosts.tmp())?;
        let serve_dirs = [hosts.tmp().join("serve-a"), hosts.tmp().join("serve-b")];
        let serve_a = serve(&bins, &hosts.a, &key, &serve_dirs[0], &hosts.tmp().join("serve-a.log"))?;
        let serve_b = serve(&bins, &hosts.b, &key, &serve_dirs[1], &hosts.tmp().join("serve-b.log"))?;
        let sinks = [start_sink(&bins, &hosts.a)?, start_sink(&bins, &hosts.b)?];
        Ok(Setup { key, sshd_b, sshd_a, _serve: [serve_a, serve_b], _sinks: sinks, serve_dirs, bins, hosts })
    }

    fn url(&self, t: Transport, to: &Host) -> String {
        match t {
            Transport::Tcp => format!("tcp://{}:{SERVE_PORT}", to.ip()),
            Transport::Ssh if to.label() == 'b' => self.sshd_b.url(),
            Transport::Ssh => self.sshd_a.url(),
        }
    }

    /// Runs `crust migrate` in `from`; its --json stats and the wall time of
    /// the command as the bench sees it (ms).
    fn migrate(&self, t: Transport, from: &Host, to: &Host, host_pid: i32) -> Result<(Value, f64)> {
        let url = self.url(t, to);
        // Over ssh://, the crust run on the destination is this one's path (the copy).
        let mut cmd = from.command(&self.bins.crust);
        cmd.args(["migrate", "-t", &host_pid.to_string(), "--to", &url, "--json", "-D"]).arg(self.hosts.tmp().join("stats"));
        if t == Transport::Tcp {
            cmd.arg("--key").arg(&self.key);
        }
        let start = Instant::now();
        let out = cmd.output(WAIT);
        let wall = start.elapsed().as_secs_f64() * 1e3;
        ensure!(
            out.status.success(),
            "migrate {host_pid} from {} to {url} failed ({}): {}",
            from.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stats: Value = serde_json::from_slice(&out.stdout).context("migrate --json")?;
        ensure!(stats["remote"]["root"].as_i64() == Some(host_pid as i64), "not the same pid over there: {stats}");
        Ok((stats, wall))
    }

    /// ssh alone from `from` to the sshd in `to`, as crust runs it (`ssh -p
    /// PORT -- root@IP CMD`, A's or B's ~/.ssh/config): the ms of a session
    /// running `true` (connection setup), and of `bytes` written by the bench
    /// from a 1 MiB buffer into `cat > /dev/null` (setup included).
    fn ssh_alone(&self, from: &Host, to: &Host, bytes: u64, buf: &[u8]) -> Result<(f64, f64)> {
        let sshd = if to.label() == 'b' { &self.sshd_b } else { &self.sshd_a };
        let ssh = |remote: &str| {
            let mut c = from.command("ssh");
            c.args(["-p", &sshd.port().to_string(), "--", &sshd.destination(), remote]);
            c
        };
        let t = Instant::now();
        let out = ssh("true").output(WAIT);
        let setup = t.elapsed().as_secs_f64() * 1e3;
        ensure!(out.status.success(), "ssh true from {}: {}", from.label(), String::from_utf8_lossy(&out.stderr));

        let mut c = ssh("cat > /dev/null");
        c.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        let t = Instant::now();
        let mut child = c.spawn();
        let mut stdin = child.stdin.take().expect("piped");
        let mut left = bytes;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            stdin.write_all(&buf[..n]).context("writing into ssh")?;
            left -= n as u64;
        }
        drop(stdin);
        let status = child.wait()?;
        let cat = t.elapsed().as_secs_f64() * 1e3;
        ensure!(status.success(), "ssh cat from {}: {status}", from.label());
        Ok((setup, cat))
    }
}

// ---------------------------------------------------------------------------
// Measurements

/// One timed move (ms unless said otherwise).
struct Sample {
    dir: String,
    bytes: u64,
    total: f64,
    frozen: f64,
    dump: f64,
    transfer: f64,
    check: f64,
    restore: f64,
    /// The restore proper on the destination (RestoreStats::restore_time_us).
    remote_restore: f64,
    /// The `crust migrate` command as the bench sees it (process start to exit).
    wall: f64,
    base: f64,
    /// ssh alone (ssh moves only): a session running `true`, and the same
    /// bytes through `cat > /dev/null`.
    ssh_true: f64,
    ssh_cat: f64,
}

fn sample(stats: &Value, wall: f64, base: f64, dir: String) -> Result<Sample> {
    let ms = |v: &Value| -> Result<f64> { Ok(v.as_u64().ok_or_else(|| anyhow!("not a number: {v} in {stats}"))? as f64 / 1e3) };
    Ok(Sample {
        dir,
        bytes: stats["bytes_sent"].as_u64().ok_or_else(|| anyhow!("no bytes_sent in {stats}"))?,
        total: ms(&stats["total_time_us"])?,
        frozen: ms(&stats["frozen_time_us"])?,
        dump: ms(&stats["dump_time_us"])?,
        transfer: ms(&stats["transfer_time_us"])?,
        check: ms(&stats["check_time_us"])?,
        restore: ms(&stats["restore_time_us"])?,
        remote_restore: ms(&stats["remote"]["stats"]["restore_time_us"])?,
        wall,
        base,
        ssh_true: 0.0,
        ssh_cat: 0.0,
    })
}

struct Row {
    size: String,
    transport: Transport,
    samples: Vec<Sample>,
}

impl Row {
    fn med(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median(&self.samples.iter().map(f).collect::<Vec<_>>())
    }

    fn range(&self, f: impl Fn(&Sample) -> f64) -> (f64, f64) {
        min_max(&self.samples.iter().map(f).collect::<Vec<_>>())
    }
}

fn bench_size(setup: &Setup, mib: &str, counter: &mut usize, buf: &[u8]) -> Result<Vec<Row>> {
    let hosts = &setup.hosts;
    let out = hosts.tmp().join(format!("bigmem-{mib}-{counter}.out"));
    *counter += 1;
    let job = start_workload(&hosts.a, &setup.bins.bigmem, &[mib], &out)?;
    let pid = job.host_pid();
    let ready = wait_line(&out, |l| l.starts_with("READY") || l.starts_with("FAIL"))?;
    ensure!(ready.starts_with("READY"), "bigmem {mib}: {ready}");
    eprintln!("  bigmem {mib}: {ready} (pid {pid} in host a)");

    let mut rows = vec![
        Row { size: format!("{mib} MiB"), transport: Transport::Tcp, samples: Vec::new() },
        Row { size: format!("{mib} MiB"), transport: Transport::Ssh, samples: Vec::new() },
    ];
    let mut here = &hosts.a;
    for round in 0..=ROUNDS {
        let order = if round % 2 == 0 { [Transport::Tcp, Transport::Ssh] } else { [Transport::Ssh, Transport::Tcp] };
        for t in order {
            let there = if here.label() == 'a' { &hosts.b } else { &hosts.a };
            let (stats, wall) = setup.migrate(t, here, there, pid)?;
            moved(here, there, pid)?;
            let bytes = stats["bytes_sent"].as_u64().unwrap_or(0);
            ensure!(bytes >= (mib.parse::<u64>()? << 20), "sent less than the workload's memory: {stats}");
            let base = baseline(&setup.bins, here, there, bytes)?;
            let dir = format!("{}->{}", here.label().to_ascii_uppercase(), there.label().to_ascii_uppercase());
            let mut s = sample(&stats, wall, base, dir)?;
            if t == Transport::Ssh {
                (s.ssh_true, s.ssh_cat) = setup.ssh_alone(here, there, bytes, buf)?;
            }
            eprintln!(
                "    {} {} {}: total {:8.1} ms (dump {:7.1} transfer {:7.1} check {:6.1} restore {:7.1}) frozen {:8.1} wall {:8.1} | baseline {:7.1} ms{}",
                if round == 0 { "warm-up" } else { "round  " },
                t.name(),
                s.dir,
                s.total,
                s.dump,
                s.transfer,
                s.check,
                s.restore,
                s.frozen,
                s.wall,
                s.base,
                if t == Transport::Ssh { format!(" | ssh true {:.1} ms, cat {:.1} ms", s.ssh_true, s.ssh_cat) } else { String::new() }
            );
            here = there;
            if round > 0 {
                rows.iter_mut().find(|r| r.transport == t).expect("a row per transport").samples.push(s);
            }
        }
    }

    // Wherever it is now, the workload's memory must be what it was.
    let p = find_in(here, pid).ok_or_else(|| anyhow!("bigmem {mib} (pid {pid}) is not running in host {}", here.label()))?;
    // SAFETY: our migrated workload.
    unsafe { libc::kill(p, libc::SIGUSR1) };
    let verdict = wait_line(&out, |l| l == "OK" || l.starts_with("FAIL"))?;
    ensure!(verdict == "OK", "bigmem {mib} after {} moves: {verdict}", 2 * (ROUNDS + 1));
    eprintln!("  bigmem {mib}: OK in host {} after {} moves", here.label(), 2 * (ROUNDS + 1));
    drop(job);
    Ok(rows)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__sink") => return sink(&args[2]),
        Some("__send") => return send(&args[2], args[3].parse()?),
        _ => {}
    }

    let start = Instant::now();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "crust migrate benchmark: nproc {nproc}, hosts A and B on one machine (veth), {ROUNDS} timed rounds + 1 warm-up per size, \
         each round one move per transport"
    );
    let setup = Setup::new()?;
    let buf = pattern(CHUNK);
    eprintln!("  hosts a {} and b {}, sshd and crust serve in both", setup.hosts.a.ip(), setup.hosts.b.ip());

    let mut counter = 0;
    let mut rows = Vec::new();
    for mib in ["256", "1024"] {
        if !selected("bigmem", &[mib]) {
            continue;
        }
        rows.extend(bench_size(&setup, mib, &mut counter, &buf)?);
    }

    for (i, d) in setup.serve_dirs.iter().enumerate() {
        let left: Vec<_> = std::fs::read_dir(d).map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect()).unwrap_or_default();
        if !left.is_empty() {
            println!("note: crust serve in host {} left {left:?} in {}", ['a', 'b'][i], d.display());
        }
    }

    println!();
    println!("medians over the timed moves (ms); baseline: the same bytes over a plain TCP connection on the same veth:");
    println!(
        "{:<9} {:<5} {:>11} {:>9} {:>9} {:>11} {:>11} {:>10} {:>11}",
        "size", "via", "bytes", "total", "frozen", "transfer", "baseline", "total/base", "frozen/base"
    );
    for r in &rows {
        let base = r.med(|s| s.base);
        println!(
            "{:<9} {:<5} {:>11} {:>9.1} {:>9.1} {:>11.1} {:>11.1} {:>10.2} {:>11.2}",
            r.size,
            r.transport.name(),
            median(&r.samples.iter().map(|s| s.bytes).collect::<Vec<_>>()),
            r.med(|s| s.total),
            r.med(|s| s.frozen),
            r.med(|s| s.transfer),
            base,
            r.med(|s| s.total) / base,
            r.med(|s| s.frozen) / base,
        );
    }
    println!();
    println!("ranges (min..max, ms):");
    for r in &rows {
        let (t, f, x, b) = (r.range(|s| s.total), r.range(|s| s.frozen), r.range(|s| s.transfer), r.range(|s| s.base));
        println!(
            "  {:<9} {:<4} total {:.1}..{:.1}  frozen {:.1}..{:.1}  transfer {:.1}..{:.1}  baseline {:.1}..{:.1}  min total/min base {:.2}{}",
            r.size,
            r.transport.name(),
            t.0,
            t.1,
            f.0,
            f.1,
            x.0,
            x.1,
            b.0,
            b.1,
            t.0 / b.0,
            noisy(&[t, f, b])
        );
    }
    println!();
    println!("where the time goes (medians, ms; restore includes the transfer of the pages, written into the new tasks as they arrive; other = total - dump - check - restore):");
    println!(
        "{:<9} {:<5} {:>8} {:>9} {:>7} {:>8} {:>7} {:>10} {:>9} {:>10} {:>10}  directions",
        "size", "via", "dump", "transfer", "check", "restore", "other", "rst(dest)", "wall", "xfer MB/s", "base MB/s"
    );
    for r in &rows {
        let bytes = median(&r.samples.iter().map(|s| s.bytes).collect::<Vec<_>>()) as f64;
        let mbs = |ms: f64| bytes / 1e6 / (ms / 1e3);
        println!(
            "{:<9} {:<5} {:>8.1} {:>9.1} {:>7.1} {:>8.1} {:>7.1} {:>10.1} {:>9.1} {:>10.0} {:>10.0}  {}",
            r.size,
            r.transport.name(),
            r.med(|s| s.dump),
            r.med(|s| s.transfer),
            r.med(|s| s.check),
            r.med(|s| s.restore),
            r.med(|s| s.total - s.dump - s.check - s.restore),
            r.med(|s| s.remote_restore),
            r.med(|s| s.wall),
            mbs(r.med(|s| s.transfer)),
            mbs(r.med(|s| s.base)),
            r.samples.iter().map(|s| s.dir.as_str()).collect::<Vec<_>>().join(" "),
        );
    }
    println!("  rst(dest): the restore proper on the destination (its RestoreStats); wall: the crust migrate command as the bench saw it");
    if rows.iter().any(|r| r.transport == Transport::Ssh) {
        println!();
        println!("ssh alone, same link and sshd, after each ssh move (medians, ms): a session running `true`, the same bytes into `cat > /dev/null`:");
        println!("{:<9} {:>9} {:>9} {:>9}  crust's transfer of the pages (its ssh session is set up before the tree is frozen)", "size", "ssh true", "ssh cat", "MB/s");
        for r in rows.iter().filter(|r| r.transport == Transport::Ssh) {
            let bytes = median(&r.samples.iter().map(|s| s.bytes).collect::<Vec<_>>()) as f64;
            let cat = r.med(|s| s.ssh_cat);
            println!(
                "{:<9} {:>9.1} {:>9.1} {:>9.0}  transfer {:.1} = ssh cat x {:.2}",
                r.size,
                r.med(|s| s.ssh_true),
                cat,
                bytes / 1e6 / (cat / 1e3),
                r.med(|s| s.transfer),
                r.med(|s| s.transfer) / cat
            );
        }
    }
    println!();
    println!("every workload verified intact after its moves (SIGUSR1 -> OK)");
    drop(setup);
    println!("total runtime {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
