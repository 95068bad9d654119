//! The sysctls of a network namespace that CRIU's images hold: per device
//! (and for `all` and `default`) the net.ipv4.conf and net.ipv6.conf
//! settings, by position in CRIU's lists, and net.unix.max_dgram_qlen.
//! Read and written through /proc/sys/net by a thread inside the namespace
//! (/proc/sys/net shows the namespace of the thread that opens it).

use crate::error::{Context, Error, Result};
use crate::images::proto::{SysctlEntry, SysctlType};

/// net.ipv4.conf.X.*, in the order of CRIU's images (conf4).
pub const CONF4: &[&str] = &[
    "accept_local",
    "accept_redirects",
    "accept_source_route",
    "arp_accept",
    "arp_announce",
    "arp_filter",
    "arp_ignore",
    "arp_notify",
    "bootp_relay",
    "disable_policy",
    "disable_xfrm",
    "force_igmp_version",
    "forwarding",
    "igmpv2_unsolicited_report_interval",
    "igmpv3_unsolicited_report_interval",
    "log_martians",
    "medium_id",
    "promote_secondaries",
    "proxy_arp",
    "proxy_arp_pvlan",
    "route_localnet",
    "rp_filter",
    "secure_redirects",
    "send_redirects",
    "shared_media",
    "src_valid_mark",
    "tag",
    "ignore_routes_with_linkdown",
    "drop_gratuitous_arp",
    "drop_unicast_in_l2_multicast",
];

/// net.ipv6.conf.X.*, in the order of CRIU's images (conf6).
pub const CONF6: &[&str] = &[
    "accept_dad",
    "accept_ra",
    "accept_ra_defrtr",
    "accept_ra_from_local",
    "accept_ra_min_hop_limit",
    "accept_ra_mtu",
    "accept_ra_pinfo",
    "accept_ra_rt_info_max_plen",
    "accept_ra_rtr_pref",
    "accept_redirects",
    "accept_source_route",
    "autoconf",
    "dad_transmits",
    "disable_ipv6",
    "drop_unicast_in_l2_multicast",
    "drop_unsolicited_na",
    "force_mld_version",
    "force_tllao",
    "forwarding",
    "hop_limit",
    "ignore_routes_with_linkdown",
    "keep_addr_on_down",
    "max_addresses",
    "max_desync_factor",
    "mldv1_unsolicited_report_interval",
    "mldv2_unsolicited_report_interval",
    "mtu",
    "ndisc_notify",
    "optimistic_dad",
    "proxy_ndp",
    "regen_max_retry",
    "router_probe_interval",
    "router_solicitation_delay",
    "router_solicitation_interval",
    "router_solicitations",
    "stable_secret",
    "suppress_frag_ndisc",
    "temp_prefered_lft",
    "temp_valid_lft",
    "use_oif_addrs_only",
    "use_optimistic",
    "use_tempaddr",
];

/// net.unix.*, in the order of CRIU's images (unix_conf).
pub const UNIX: &[&str] = &["max_dgram_qlen"];

/// The one string among them; every other is a number.
const STRING: &str = "stable_secret";

/// Where the sysctl `name` of `proto` ("ipv4", "ipv6") for `target` (a
/// device, "all", "default") is.
pub fn conf_path(proto: &str, target: &str, name: &str) -> String {
    format!("/proc/sys/net/{proto}/conf/{target}/{name}")
}

fn unix_path(name: &str) -> String {
    format!("/proc/sys/net/unix/{name}")
}

/// The value of one sysctl as CRIU's images hold it: absent where the
/// kernel has no such setting (or a string one is unset: reading
/// stable_secret fails with EIO until it is set).
fn read_one(path: &str, name: &str) -> Result<SysctlEntry> {
    let string = name == STRING;
    let ty = if string { SysctlType::CtlStr } else { SysctlType::Ctl32 } as i32;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::EIO) => {
            return Ok(SysctlEntry { r#type: ty, iarg: None, sarg: None })
        }
        Err(e) => return Err(e).ctx(|| format!("reading {path}")),
    };
    let text = text.trim_end_matches('\n');
    if string {
        return Ok(SysctlEntry { r#type: ty, iarg: None, sarg: Some(text.to_string()) });
    }
    let v = text.trim().parse::<i64>().map_err(|_| Error::io_other(format!("reading {path}"), format!("{text:?} is not a number")))?;
    Ok(SysctlEntry { r#type: ty, iarg: Some(v as i32), sarg: None })
}

/// The ipv4 or ipv6 settings of `target`, one entry per name of `names`.
pub fn read_conf(proto: &str, target: &str, names: &[&str]) -> Result<Vec<SysctlEntry>> {
    names.iter().map(|n| read_one(&conf_path(proto, target, n), n)).collect()
}

pub fn read_unix() -> Result<Vec<SysctlEntry>> {
    UNIX.iter().map(|n| read_one(&unix_path(n), n)).collect()
}

/// Write the saved values `entries` (by position in `names`) where they
/// differ from what the kernel has; accept_redirects last, since writing
/// forwarding resets it.
pub fn write_conf(proto: &str, target: &str, names: &[&str], entries: &[SysctlEntry]) -> Result<()> {
    let paths: Vec<(String, &str, &SysctlEntry)> = names.iter().zip(entries).map(|(n, e)| (conf_path(proto, target, n), *n, e)).collect();
    let (last, first): (Vec<_>, Vec<_>) = paths.into_iter().partition(|(_, n, _)| *n == "accept_redirects");
    for (path, name, e) in first.into_iter().chain(last) {
        write_one(&path, name, e)?;
    }
    Ok(())
}

pub fn write_unix(entries: &[SysctlEntry]) -> Result<()> {
    UNIX.iter().zip(entries).try_for_each(|(n, e)| write_one(&unix_path(n), n, e))
}

fn write_one(path: &str, name: &str, saved: &SysctlEntry) -> Result<()> {
    let value = match (saved.iarg, &saved.sarg) {
        (Some(v), _) => v.to_string(),
        (None, Some(s)) => s.clone(),
        (None, None) => return Ok(()),
    };
    let now = read_one(path, name)?;
    if now.iarg.is_none() && now.sarg.is_none() && !std::path::Path::new(path).exists() {
        return Err(Error::unsupported(path.to_string(), format!("the images set it to {value}, and this kernel has no such setting")));
    }
    if (now.iarg, now.sarg.as_deref()) == (saved.iarg, saved.sarg.as_deref()) {
        return Ok(());
    }
    std::fs::write(path, value.as_bytes()).ctx(|| format!("writing {value} to {path}"))
}

/// A saved list is CRIU's: no more entries than names, each of its type.
pub fn check_list(what: &str, names: &[&str], entries: &[SysctlEntry]) -> std::result::Result<(), String> {
    if entries.len() > names.len() {
        return Err(format!("{what} has {} settings, more than the {} known", entries.len(), names.len()));
    }
    for (n, e) in names.iter().zip(entries) {
        let want = if *n == STRING { SysctlType::CtlStr } else { SysctlType::Ctl32 } as i32;
        if e.r#type != want {
            return Err(format!("{what}: setting {n} has type {}, not {want}", e.r#type));
        }
    }
    Ok(())
}
