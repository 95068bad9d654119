//! `crust demo`: the bundled test_mm (two threads printing counters) is started,
//! checkpointed with --leave-running, and the saved images are summarised while
//! it goes on counting.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crust::dump::{dump, DumpOptions};

const TEST_MM: &[u8] = include_bytes!(concat!(env!("CRUST_WORKLOAD_DIR"), "/test_mm"));

pub fn run() -> Result<()> {
    let work = std::env::temp_dir().join(format!("crust-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_in(&work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run_in(work: &std::path::Path) -> Result<()> {
    let exe = work.join("test_mm");
    std::fs::write(&exe, TEST_MM)?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o700))?;
    let mut cmd = Command::new(&exe);
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    // SAFETY: setsid is async-signal-safe; the child gets a session of its own so
    // the dump does not need --shell-job.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    let mut child = cmd.spawn().context("starting test_mm")?;
    let pid = child.id() as i32;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut show = |n: usize| -> Result<()> {
        for _ in 0..n {
            match lines.next() {
                Some(l) => println!("  test_mm| {}", l?),
                None => bail!("test_mm stopped printing"),
            }
        }
        Ok(())
    };
    println!("started test_mm as pid {pid}");
    show(7)?;
    let images = work.join("images");
    let opts = DumpOptions { pid, dir: images.clone(), leave_running: true, shell_job: false };
    let stats = dump(&opts);
    let stats = match stats {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).context("dump failed");
        }
    };
    println!("checkpointed pid {pid} with --leave-running:");
    crate::print_dump_stats(&stats, &images);
    let mut names: Vec<_> = std::fs::read_dir(&images)?.filter_map(|e| e.ok()).collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        println!("  {:<20} {:>10} bytes", e.file_name().to_string_lossy(), e.metadata()?.len());
    }
    let pstree = crust::show::show_file(&images.join("pstree.img"))?;
    println!("pstree.img: {pstree}");
    println!("test_mm keeps counting after the dump:");
    show(6)?;
    std::thread::sleep(Duration::from_millis(10));
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
