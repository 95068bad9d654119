//! A dump that survives the death of the `crust` command: the work runs in a
//! child process, so that killing `crust` (even with SIGKILL) or Ctrl-C never
//! leaves the tree stopped or half-changed. The child learns of its parent's
//! death (PR_SET_PDEATHSIG) or of a signal, and the engine stops at its next
//! step, putting every task back as it was.

use std::io::{Read, Write};

use anyhow::{anyhow, Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getppid, ForkResult};
use serde::de::DeserializeOwned;
use serde::Serialize;

extern "C" fn on_stop_signal(_: std::ffi::c_int) {
    crust::cancel::request();
}

/// Run `work` in a child; its result (or error message) comes back over a pipe.
pub fn in_child<T, F>(work: F) -> Result<T>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T>,
{
    // Close-on-exec: what the worker runs (action scripts, nft) must not
    // hold the write end, or a worker killed while they run would leave
    // crust waiting for the end of its result as long as they live.
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating a pipe")?;
    let parent = nix::unistd::getpid();
    // SAFETY: crust has started no thread yet when it forks its worker, so the
    // child cannot inherit a lock that another thread held; it runs `work`
    // (crust's own code) and exits, never returning into the caller.
    match unsafe { fork() }.context("forking the worker")? {
        ForkResult::Child => {
            drop(rd);
            // SA_RESTART: a wait for a task in the middle of an injected syscall must
            // not be cut short, or the task could not be put back.
            let handler = SigAction::new(SigHandler::Handler(on_stop_signal), SaFlags::SA_RESTART, SigSet::empty());
            for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
                // SAFETY: the handler only stores to an atomic, which is
                // async-signal-safe; no handler that other code relies on is replaced.
                let _ = unsafe { sigaction(sig, &handler) };
            }
            if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
                log::warn!("the worker may not learn of crust's death: {e}");
            }
            if getppid() != parent {
                crust::cancel::request();
            }
            let reply = match work() {
                Ok(v) => serde_json::json!({ "ok": v }),
                Err(e) => serde_json::json!({ "err": format!("{e:#}") }),
            };
            let mut out = std::fs::File::from(wr);
            let _ = out.write_all(reply.to_string().as_bytes());
            drop(out);
            std::process::exit(0);
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut text = String::new();
            std::fs::File::from(rd).read_to_string(&mut text).context("reading the worker's result")?;
            let status = waitpid(child, None).context("waiting for the worker")?;
            if !matches!(status, WaitStatus::Exited(_, 0)) {
                return Err(anyhow!("the worker process ended abnormally: {status:?}"));
            }
            let mut reply: serde_json::Value = serde_json::from_str(&text).context("decoding the worker's result")?;
            if let Some(e) = reply.get("err").and_then(|e| e.as_str()) {
                return Err(anyhow!("{e}"));
            }
            Ok(serde_json::from_value(reply["ok"].take()).context("decoding the worker's result")?)
        }
    }
}
