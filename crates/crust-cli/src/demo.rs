//! `crust demo`: the bundled test_mm (two threads printing counters) is started,
//! checkpointed (which stops it), restored from its images, and shown counting
//! on from where it was, with the numbers of both steps.

use std::io::{BufRead, BufReader, Seek};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crust::dump::{dump, DumpOptions};
use crust::restore::{restore, RestoreOptions};

const TEST_MM: &[u8] = include_bytes!(concat!(env!("CRUST_WORKLOAD_DIR"), "/test_mm"));

pub fn run() -> Result<()> {
    let work = std::env::temp_dir().join(format!("crust-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut pid = None;
    let result = run_in(&work, &mut pid);
    if let Some(pid) = pid {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
    }
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Follows test_mm's output file, which survives the checkpoint (the restored
/// process reopens it at its saved offset).
struct Output {
    reader: BufReader<std::fs::File>,
}

impl Output {
    fn lines(&mut self, n: usize) -> Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        let mut line = String::new();
        while out.len() < n {
            let pos = self.reader.stream_position()?;
            line.clear();
            if self.reader.read_line(&mut line)? > 0 && line.ends_with('\n') {
                out.push(line.trim_end().to_string());
                continue;
            }
            self.reader.seek(std::io::SeekFrom::Start(pos))?;
            if Instant::now() > deadline {
                bail!("test_mm printed nothing for 5 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(out)
    }

    fn show(&mut self, n: usize) -> Result<()> {
        for l in self.lines(n)? {
            println!("  test_mm| {l}");
        }
        Ok(())
    }
}

fn run_in(work: &Path, pid_out: &mut Option<i32>) -> Result<()> {
    let exe = work.join("test_mm");
    std::fs::write(&exe, TEST_MM)?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o700))?;
    let log = work.join("test_mm.out");
    let out = std::fs::File::create(&log)?;
    let mut cmd = Command::new(&exe);
    // stderr too: crust's own might be a pipe (`crust demo | less`), which
    // the dump would rightly refuse as shared with a process outside the tree.
    cmd.stderr(out.try_clone()?).stdout(out).stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls
    // close_range and setsid, which are async-signal-safe and touch no memory
    // of the parent. The child gets a session of its own so the dump needs no
    // --shell-job, and only its stdio: an fd crust inherited (a pipe of the
    // shell's) would be shared with processes outside the tree.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().context("starting test_mm")?;
    let pid = child.id() as i32;
    *pid_out = Some(pid);
    let mut output = Output { reader: BufReader::new(std::fs::File::open(&log)?) };
    println!("started test_mm as pid {pid}, its output goes to {}", log.display());
    output.show(7)?;

    let images = work.join("images");
    let stats = dump(&DumpOptions { pid, dir: images.clone(), leave_running: false, shell_job: false, ..Default::default() })
        .context("dump failed")?;
    println!("\n$ crust dump -t {pid} -D {}", images.display());
    crate::print_dump_stats(&stats, &images);
    let mut names: Vec<_> = std::fs::read_dir(&images)?.filter_map(|e| e.ok()).collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        println!("  {:<20} {:>10} bytes", e.file_name().to_string_lossy(), e.metadata()?.len());
    }
    std::thread::sleep(Duration::from_millis(500));
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
    println!("test_mm is {} and printed nothing for 0.5 s", if alive { "STILL ALIVE (unexpected)" } else { "gone" });

    println!("\n$ crust restore -D {} -d", images.display());
    let restored = restore(&RestoreOptions { dir: images.clone(), shell_job: false, pid_wait: Duration::from_secs(5), ..Default::default() })
        .context("restore failed")?;
    crate::print_restore_stats(&restored);
    println!("test_mm counts on from where it stopped, in both threads:");
    output.show(8)?;
    Ok(())
}
