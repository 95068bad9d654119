//! The network lock: while a tree's TCP connections are between their old
//! sockets and their new ones, no packet of theirs may reach a socket that
//! would answer with a reset (the dumped one once its tree is killed, or no
//! socket at all before the restore), and none may leave the old sockets.
//!
//! The lock is an nftables table of crust's own per dump, `inet
//! crust_lock_<pid>_<start>_<n>` (crust's pid, its start time in clock ticks
//! since boot, a count within the process): two sets of the connections'
//! 4-tuples, each in both directions, and rules in the input and output hooks
//! dropping what matches. Nothing else is touched (no other table, no
//! conntrack state), so it cannot disturb other traffic or other rules.
//!
//! Lifetime:
//! - made by a dump with `--tcp-established` once the tree is frozen and
//!   before any connection's state is read, only if the tree has connections;
//! - a dump that fails, is stopped, or leaves the tree running (`-R`) removes
//!   it (the [`Lock`] guard's drop), once the sockets are out of repair mode;
//! - a dump that kills the tree keeps it ([`Lock::keep`], which marks it
//!   with an empty chain `kept`) and records its name in crust-meta.json; the
//!   restore of those images removes it once the restored tree runs;
//! - a restore that fails leaves it: the images can still be restored, and
//!   until then the peers' connections wait (retransmitting) instead of being
//!   reset; the error says how to remove it;
//! - a crust killed at any point (SIGKILL) cannot remove it: [`list`] finds
//!   crust's tables and tells whether the crust that made each still runs
//!   and whether a dump kept it; `crust network-unlock` removes the ones
//!   whose crust is gone and that no dump kept (`-D DIR`: the one the dump
//!   in DIR kept; `--all`: every one whose crust is gone).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};

/// Every table of crust's starts so.
pub const PREFIX: &str = "crust_lock_";

/// A connection to hold: its two ends.
pub type Conn = (SocketAddr, SocketAddr);

/// A lock in place; removed when dropped, unless kept.
#[derive(Debug)]
pub struct Lock {
    name: String,
    kept: bool,
}

static COUNT: AtomicU32 = AtomicU32::new(0);

/// The chain (hooked to nothing) that marks a lock a dump kept on purpose.
const KEPT: &str = "kept";

/// crust's start time (clock ticks since boot), which with its pid names it
/// uniquely: a pid reused later has another start time.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command, which may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// IPv4 packets of an IPv6 socket carry plain IPv4 addresses.
fn plain(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

fn element(from: SocketAddr, to: SocketAddr) -> String {
    format!("{} . {} . {} . {}", from.ip(), from.port(), to.ip(), to.port())
}

/// The nft script that makes table `name` holding `conns`.
fn script(name: &str, conns: &[Conn], note: &str) -> String {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for &(a, b) in conns {
        let (a, b) = (plain(a), plain(b));
        let list = if a.is_ipv4() { &mut v4 } else { &mut v6 };
        list.push(element(a, b));
        list.push(element(b, a));
    }
    let elements = |v: &[String]| if v.is_empty() { String::new() } else { format!(" elements = {{ {} }};", v.join(", ")) };
    let comment: String = note.chars().filter(|c| *c != '"' && !c.is_control()).take(120).collect();
    let rules = "ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop; ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop;";
    format!(
        "table inet {name} {{\n  comment \"{comment}\"\n  \
         set conns4 {{ type ipv4_addr . inet_service . ipv4_addr . inet_service;{} }}\n  \
         set conns6 {{ type ipv6_addr . inet_service . ipv6_addr . inet_service;{} }}\n  \
         chain input {{ type filter hook input priority -150; policy accept; {rules} }}\n  \
         chain output {{ type filter hook output priority -150; policy accept; {rules} }}\n}}\n",
        elements(&v4),
        elements(&v6)
    )
}

/// Run nft with `args`, `input` on its stdin; its error output on failure.
fn nft(args: &[&str], input: Option<&str>) -> Result<std::result::Result<String, String>> {
    let what = || format!("running nft {}", args.join(" "));
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Invalid(
                "the network lock of TCP connections needs nft (the nftables package), which is not installed".into(),
            ),
            _ => Error::io_other(what(), e),
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| Error::io_other(what(), e))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::io_other(what(), e))?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    })
}

impl Lock {
    /// Hold the connections `conns`; `note` says in the table's comment
    /// what it is for (a dump's directory).
    pub fn install(conns: &[Conn], note: &str) -> Result<Lock> {
        let me = std::process::id() as i32;
        let n = COUNT.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{me}_{}_{n}", start_time(me).unwrap_or(0));
        // The guard exists before the table: a failure half-way removes what nft made.
        let lock = Lock { name, kept: false };
        nft(&["-f", "-"], Some(&script(&lock.name, conns, note)))?
            .map_err(|e| Error::Invalid(format!("installing the network lock {} with nft: {e}", lock.name)))?;
        log::info!("network lock {} holds {} connection(s)", lock.name, conns.len());
        Ok(lock)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leave the lock in place for a later restore, marked as kept; returns
    /// its name.
    pub fn keep(mut self) -> String {
        self.kept = true;
        match nft(&["add", "chain", "inet", &self.name, KEPT], None) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!("marking the network lock {} as kept: {e}", self.name),
            Err(e) => log::warn!("marking the network lock {} as kept: {e}", self.name),
        }
        std::mem::take(&mut self.name)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.kept {
            if let Err(e) = remove(&self.name) {
                log::warn!("removing the network lock {}: {e} (remove it with `crust network-unlock`)", self.name);
            }
        }
    }
}

/// Remove crust's table `name`; false if there was none.
pub fn remove(name: &str) -> Result<bool> {
    if !name.starts_with(PREFIX) || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::Invalid(format!("{name:?} is not the name of a network lock of crust")));
    }
    match nft(&["delete", "table", "inet", name], None)? {
        Ok(_) => Ok(true),
        Err(e) if e.contains("No such file or directory") => Ok(false),
        Err(e) => Err(Error::Invalid(format!("removing the network lock {name} with nft: {e}"))),
    }
}

/// One of crust's tables found in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    /// The crust that made it, if that process still runs.
    pub running: Option<i32>,
    /// A dump kept it for a restore.
    pub kept: bool,
}

/// crust's tables in place, whether the crust of each still runs, and
/// whether a dump kept it.
pub fn list() -> Result<Vec<Found>> {
    let text = nft(&["list", "chains", "inet"], None)?.map_err(|e| Error::Invalid(format!("listing nftables chains: {e}")))?;
    let mut out: Vec<Found> = Vec::new();
    // Chains are listed under their table: is it one of crust's?
    let mut in_ours = false;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("table inet ").map(|l| l.trim_end_matches(" {")) {
            in_ours = name.starts_with(PREFIX);
            if in_ours {
                out.push(Found { name: name.to_string(), running: maker_running(name), kept: false });
            }
        } else if in_ours && line.strip_prefix("chain ").map(|l| l.trim_end_matches(" {")) == Some(KEPT) {
            if let Some(last) = out.last_mut() {
                last.kept = true;
            }
        }
    }
    Ok(out)
}

/// The crust that made table `name`, if it still runs.
fn maker_running(name: &str) -> Option<i32> {
    let mut parts = name.strip_prefix(PREFIX)?.split('_');
    let pid: i32 = parts.next()?.parse().ok()?;
    let start: u64 = parts.next()?.parse().ok()?;
    (start_time(pid) == Some(start)).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_holds_both_directions_and_maps_ipv4_in_ipv6() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        let c: SocketAddr = "[::1]:7".parse().unwrap();
        let d: SocketAddr = "[::1]:8".parse().unwrap();
        let s = script("crust_lock_1_2_0", &[(a, b), (c, d)], "for \"x\"");
        assert!(s.contains("elements = { 127.0.0.1 . 5000 . 127.0.0.1 . 40000, 127.0.0.1 . 40000 . 127.0.0.1 . 5000 }"), "{s}");
        assert!(s.contains("elements = { ::1 . 7 . ::1 . 8, ::1 . 8 . ::1 . 7 }"), "{s}");
        assert!(s.contains("comment \"for x\""), "{s}");
        let empty = script("crust_lock_1_2_0", &[], "");
        assert!(!empty.contains("elements"), "{empty}");
    }

    #[test]
    fn names_say_whose_they_are() {
        let me = std::process::id() as i32;
        let mine = format!("{PREFIX}{me}_{}_3", start_time(me).unwrap());
        assert_eq!(maker_running(&mine), Some(me));
        assert_eq!(maker_running(&format!("{PREFIX}{me}_1_3")), None, "same pid, another start: not this crust");
        assert_eq!(maker_running("crust_lock_x"), None);
        assert!(remove("other_table").is_err(), "only crust's tables are removed");
    }
}
