//! `crust swrk FD`, and crust as `criu`: runc, crun, podman, CRI-O and
//! containerd run `criu swrk FD` from PATH and speak criu's RPC on the
//! socket FD (crust::rpc does the work). Under the name `criu` (a symlink
//! named so, as the README shows), crust takes criu's `swrk` the same way.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;

use crust::rpc::{serve, Ending};

use crate::guard;

/// `crust swrk FD` or `criu swrk FD`, served here; None for any other command line.
pub fn dispatch() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("swrk") {
        return None;
    }
    let name = args.first().map(|a| Path::new(a).file_name().unwrap_or_default().to_string_lossy().into_owned()).unwrap_or_default();
    let _ = env_logger::Builder::new().filter_level(log::LevelFilter::Warn).format_timestamp_micros().try_init();
    let code = match args.get(2..) {
        Some([fd]) => match run(fd) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("{name}: swrk: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("{name}: usage: {name} swrk FD (FD: a SOCK_SEQPACKET unix socket speaking criu's RPC)");
            ExitCode::FAILURE
        }
    };
    Some(code)
}

fn run(fd: &str) -> anyhow::Result<ExitCode> {
    let fd: i32 = fd.parse().map_err(|_| anyhow::anyhow!("{fd}: not an fd number"))?;
    std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).map_err(|e| anyhow::anyhow!("fd {fd} is not open: {e}"))?;
    // SAFETY: fd is open (checked above), given to crust by its caller for
    // this conversation, and nothing else in crust owns or closes it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A dump runs in a worker that puts the tree back if crust is killed.
    let isolate = |work: &dyn Fn() -> crust::Result<crust::dump::DumpStats>| {
        guard::in_child(|| Ok(work()?)).map_err(|e| crust::Error::Invalid(format!("{e:#}")))
    };
    Ok(match serve(sock, &isolate)? {
        Ending::Closed | Ending::Done(true) => ExitCode::SUCCESS,
        Ending::Done(false) => ExitCode::FAILURE,
    })
}
