//! State crust does not restore (yet), met in a tree being dumped: the dump
//! stops and names it, as [`crate::inventory`] says, before anything is
//! lost. The mappings' VmFlags are checked as they are read ([`crate::mem`]),
//! file locks as the fds are ([`crate::files::locks`]).

use crate::error::{Error, Result};
use crate::proc;
use crate::inventory::{self, Fate};
use crate::tree::FrozenProcess;

/// What crust itself runs with, which restored processes inherit.
pub struct Own {
    status: Vec<(String, String)>,
    loginuid: Option<String>,
    oom_score_adj: i32,
    sys_resource: bool,
}

impl Own {
    pub fn read() -> Result<Own> {
        let status = status_fields(&proc::read_string("/proc/self/status")?);
        let cap_eff = status.iter().find(|(k, _)| k == "CapEff").and_then(|(_, v)| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
        Ok(Own {
            loginuid: proc::read_string("/proc/self/loginuid").ok().map(|s| s.trim().to_string()),
            oom_score_adj: proc::read_string("/proc/self/oom_score_adj")?.trim().parse().unwrap_or(0),
            sys_resource: cap_eff & (1 << 24) /* CAP_SYS_RESOURCE */ != 0,
            status,
        })
    }
}

fn status_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The process-wide and per-thread state of a live process that the
/// inventory refuses, or that must equal crust's own.
pub fn check_process(p: &FrozenProcess, who: &str, own: &Own) -> Result<()> {
    let pid = p.pid;
    for &tid in &p.threads {
        let text = proc::read_string(&format!("/proc/{pid}/task/{tid}/status"))?;
        for (k, v) in status_fields(&text) {
            if let Some(Fate::SameAsCrust(what)) = inventory::status_field(&k) {
                let mine = own.status.iter().find(|(o, _)| *o == k).map(|(_, v)| v.as_str());
                if mine != Some(v.as_str()) {
                    return Err(Error::unsupported(
                        who,
                        format!(
                            "thread {tid}: {k} is {v:?} where crust's is {:?}: restoring {what} is not supported yet",
                            mine.unwrap_or("absent")
                        ),
                    ));
                }
            }
        }
        let (policy, prio) = proc::sched(tid);
        let base = policy & !(libc::SCHED_RESET_ON_FORK as u32);
        if ![libc::SCHED_OTHER, libc::SCHED_BATCH, libc::SCHED_IDLE, libc::SCHED_FIFO, libc::SCHED_RR].contains(&(base as i32)) {
            return Err(Error::unsupported(
                who,
                format!("thread {tid}: scheduling policy {base} (priority {prio}): this scheduling policy is not supported yet"),
            ));
        }
    }
    let loginuid = proc::read_string(&format!("/proc/{pid}/loginuid")).ok().map(|s| s.trim().to_string());
    if loginuid != own.loginuid {
        return Err(Error::unsupported(
            who,
            format!(
                "its loginuid is {} where crust's is {}: restoring the audit login uid is not supported (it needs CAP_AUDIT_CONTROL)",
                loginuid.as_deref().unwrap_or("unknown"),
                own.loginuid.as_deref().unwrap_or("unknown")
            ),
        ));
    }
    let oom: i32 = proc::read_string(&format!("/proc/{pid}/oom_score_adj"))?.trim().parse().unwrap_or(0);
    if oom < own.oom_score_adj && !own.sys_resource {
        return Err(Error::unsupported(
            who,
            format!(
                "its oom_score_adj is {oom}, below crust's {}: restoring it needs CAP_SYS_RESOURCE, which crust lacks (not supported)",
                own.oom_score_adj
            ),
        ));
    }
    Ok(())
}
