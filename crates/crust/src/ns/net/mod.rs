//! The network namespace: its devices (loopback; veth devices whose other
//! end is outside, on the host), addresses, routes of the main tables, the
//! sysctls CRIU keeps, and its nftables rules. Images as CRIU writes them:
//! netdev-ID.img (net_device_entry), netns-ID.img (netns_entry),
//! ifaddr-ID.img / route-ID.img / route6-ID.img (the kernel's rtnetlink
//! messages as `ip addr save` / `ip route save` write them, behind
//! iproute2's magic), nftables-ID.img (`nft list ruleset`).
//!
//! Dumped and restored by a crust thread inside the namespace. A veth's
//! other end is external: the restore makes it in crust's namespace under
//! the name criu's `--external veth[IF]:HOSTIF[@BRIDGE]` gives, attached to
//! BRIDGE and up. `--empty-ns net` on restore leaves the new namespace as
//! the kernel made it (a container engine configures it itself); on dump it
//! leaves the namespace out (recorded as the tree's own, with no images).
//!
//! Refused by name: devices of other kinds, a veth with both ends inside,
//! devices enslaved to a master, routes of other tables than main (and
//! local, which the kernel fills from the addresses), policy routing rules
//! other than the kernel's defaults, legacy iptables tables, changed
//! neighbour table settings. The namespace's other sysctls (tcp_*,
//! ip_local_port_range, somaxconn...) that differ from a new namespace's are
//! kept in a field of crust's own (sysctls.rs).

mod conf;
mod nl;
mod sysctls;

use std::os::fd::AsRawFd;

use nix::sched::CloneFlags;

use super::{in_namespace, NsKind, NsOptions, NsRoot};
use crate::error::{Context, Error, Result};
use crate::images::load::{read_all, read_one, DumpImage};
use crate::images::proto::{NdType, NetDeviceEntry, NetnsEntry, TaskKobjIdsEntry};
use crate::images::{ImageDir, Kind};

pub struct Net;

/// iproute2's marks at the head of `ip addr save` and `ip route save` output.
const IFADDR_MAGIC: u32 = 0x4736_1222;
const ROUTE_MAGIC: u32 = 0x4531_1224;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const RTM_DELLINK: u16 = 17;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const RT_TABLE_LOCAL: u32 = 255;
const RTPROT_KERNEL: u8 = 2;
const RTM_F_CLONED: u32 = 0x200;
const ARPHRD_LOOPBACK: u16 = 772;
const IFF_UP: u32 = libc::IFF_UP as u32;

/// A veth's host end, from `--external veth[IF]:HOSTIF[@BRIDGE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethEnd {
    /// Its name inside the namespace.
    pub inside: String,
    /// The name of the other end, in crust's namespace.
    pub host: String,
    /// A bridge of crust's namespace to attach the host end to.
    pub bridge: Option<String>,
}

impl VethEnd {
    /// From criu's `veth[IF]:HOSTIF[@BRIDGE]`; None for another kind of
    /// external resource.
    pub fn parse(spec: &str) -> Option<std::result::Result<VethEnd, String>> {
        let rest = spec.strip_prefix("veth[")?;
        let bad = || format!("--external {spec}: expected veth[IF]:HOSTIF[@BRIDGE]");
        let Some((inside, host)) = rest.split_once("]:") else { return Some(Err(bad())) };
        let (host, bridge) = match host.split_once('@') {
            Some((h, b)) => (h, Some(b.to_string())),
            None => (host, None),
        };
        let name_ok = |n: &str| !n.is_empty() && n.len() < libc::IFNAMSIZ && !n.contains(['/', ' ', ':']);
        if !name_ok(inside) || !name_ok(host) || bridge.as_deref().is_some_and(|b| !name_ok(b)) {
            return Some(Err(bad()));
        }
        Some(Ok(VethEnd { inside: inside.to_string(), host: host.to_string(), bridge }))
    }
}

/// What a restore is told of the network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetOptions {
    /// The host ends of the namespace's veth devices.
    pub veths: Vec<VethEnd>,
    /// `--empty-ns net`: leave the new namespace as the kernel made it.
    pub empty: bool,
}

/// The dump left the namespace out (`--empty-ns net`): only a restore with
/// `--empty-ns net` can make it, as the kernel does.
struct LeftOut;

/// The namespace read back, for the restore.
struct Saved {
    netns: NetnsEntry,
    devices: Vec<NetDeviceEntry>,
    /// RTM_NEWADDR messages.
    addresses: Vec<Vec<u8>>,
    /// RTM_NEWROUTE messages, IPv4 then IPv6.
    routes: Vec<Vec<u8>>,
    nftables: Option<Vec<u8>>,
}

fn image(kind: Kind, id: u32) -> String {
    kind.file_name(id as u64)
}

fn sys(what: impl Fn() -> String) -> impl Fn(nix::Error) -> Error {
    move |err| Error::Sys { context: what(), err }
}

impl NsKind for Net {
    fn name(&self) -> &'static str {
        "net"
    }

    fn clone_flag(&self) -> CloneFlags {
        CloneFlags::CLONE_NEWNET
    }

    fn id(&self, ids: &TaskKobjIdsEntry) -> Option<u32> {
        ids.net_ns_id
    }

    fn dump(&self, pid: i32, id: u32, dir: &mut ImageDir, _opts: &NsOptions) -> Result<u64> {
        let who = crate::proc::who(pid);
        let d = in_namespace(pid, "net", || dump_inside(&who))?;
        let mut bytes = 0;
        let mut w = dir.writer(&image(Kind::Netdev, id), Kind::Netdev)?;
        for dev in &d.devices {
            w.entry(dev)?;
        }
        bytes += w.finish()?;
        let mut w = dir.writer(&image(Kind::Netns, id), Kind::Netns)?;
        w.entry(&d.netns)?;
        bytes += w.finish()?;
        for (kind, magic, msgs) in [
            (Kind::Ifaddr, IFADDR_MAGIC, &d.addresses),
            (Kind::Route, ROUTE_MAGIC, &d.routes),
            (Kind::Route6, ROUTE_MAGIC, &d.routes6),
        ] {
            let mut w = dir.writer(&image(kind, id), kind)?;
            w.raw(&magic.to_ne_bytes())?;
            for m in msgs {
                w.raw(m)?;
            }
            bytes += w.finish()?;
        }
        if let Some(rules) = &d.nftables {
            let mut w = dir.writer(&image(Kind::Nftables, id), Kind::Nftables)?;
            w.raw(rules.as_bytes())?;
            bytes += w.finish()?;
        }
        Ok(bytes)
    }

    fn load_images(&self, img: &mut DumpImage, id: u32) -> Result<()> {
        let path = |kind| img.dir.join(image(kind, id));
        // A dump with --empty-ns net left the namespace out.
        if !path(Kind::Netns).exists() {
            img.extras.insert(LeftOut);
            return Ok(());
        }
        let netns: NetnsEntry = read_one(&path(Kind::Netns), Kind::Netns)?;
        for (what, names, list) in [
            ("all_conf4", conf::CONF4, &netns.all_conf4),
            ("def_conf4", conf::CONF4, &netns.def_conf4),
            ("all_conf6", conf::CONF6, &netns.all_conf6),
            ("def_conf6", conf::CONF6, &netns.def_conf6),
            ("unix_conf", conf::UNIX, &netns.unix_conf),
        ] {
            conf::check_list(what, names, list).map_err(|e| Error::image(path(Kind::Netns), e))?;
        }
        sysctls::check(&netns.crust_sysctls).map_err(|e| Error::image(path(Kind::Netns), e))?;
        let devices: Vec<NetDeviceEntry> = read_all(&path(Kind::Netdev), Kind::Netdev)?;
        for d in &devices {
            let bad = |what: String| Error::image(path(Kind::Netdev), format!("device {:?} (index {}): {what}", d.name, d.ifindex));
            if d.name.is_empty() || d.name.len() >= libc::IFNAMSIZ || d.name.contains('/') || d.name == "." || d.name == ".." {
                return Err(bad("not a device name".into()));
            }
            if d.ifindex == 0 || d.ifindex > i32::MAX as u32 {
                return Err(bad("not a device index".into()));
            }
            match NdType::try_from(d.r#type) {
                Ok(NdType::Loopback | NdType::Veth) => {}
                _ => return Err(bad(format!("devices of type {} are not supported yet (crust makes loopback and veth devices)", d.r#type))),
            }
            if d.master.is_some() {
                return Err(bad("a device enslaved to a master is not supported yet".into()));
            }
            conf::check_list("conf4", conf::CONF4, &d.conf4).map_err(&bad)?;
            conf::check_list("conf6", conf::CONF6, &d.conf6).map_err(&bad)?;
        }
        let addresses = read_dump(&path(Kind::Ifaddr), IFADDR_MAGIC, nl::RTM_NEWADDR, 8)?;
        let mut routes = read_dump(&path(Kind::Route), ROUTE_MAGIC, nl::RTM_NEWROUTE, 12)?;
        let v6 = path(Kind::Route6);
        if v6.exists() {
            routes.extend(read_dump(&v6, ROUTE_MAGIC, nl::RTM_NEWROUTE, 12)?);
        }
        let nft = path(Kind::Nftables);
        let nftables = match nft.exists() {
            true => Some(std::fs::read(&nft).ctx(|| format!("reading {}", nft.display()))?),
            false => None,
        };
        img.extras.insert(Saved { netns, devices, addresses, routes, nftables });
        Ok(())
    }

    fn restore(&self, img: &DumpImage, root: &mut NsRoot) -> Result<()> {
        let opts = img.extras.get::<NetOptions>().cloned().unwrap_or_default();
        if opts.empty {
            return Ok(());
        }
        let Some(saved) = img.extras.get::<Saved>() else {
            return Err(Error::Invalid("the dump left the tree's network namespace out (--empty-ns net): restore it with --empty-ns net".into()));
        };
        let mine = std::fs::File::open("/proc/self/ns/net").ctx(|| "opening crust's network namespace")?;
        let mut made = Vec::new();
        let inside = in_namespace(root.pid, "net", || restore_inside(saved, &opts, &mine, &mut made));
        let outside = inside.and_then(|()| host_ends(saved, &opts));
        if outside.is_err() {
            // Deleting one end of a veth deletes the other (inside).
            for host in &made {
                if let Err(e) = delete_link(host) {
                    log::warn!("removing the host end {host} of a veth of the failed restore: {e}");
                }
            }
        }
        outside
    }
}

/// What `problems` finds in the way of the restore: a veth end without its
/// name on the host, a host name taken, a bridge missing.
pub fn problems(img: &DumpImage, opts: &NetOptions) -> Vec<String> {
    let mut out = Vec::new();
    if opts.empty {
        return out;
    }
    if img.extras.get::<LeftOut>().is_some() {
        out.push("the dump left the tree's network namespace out (--empty-ns net): restore it with --empty-ns net".into());
    }
    let Some(saved) = img.extras.get::<Saved>() else { return out };
    for d in saved.devices.iter().filter(|d| d.r#type == NdType::Veth as i32) {
        let Some(end) = opts.veths.iter().find(|v| v.inside == d.name) else {
            out.push(format!(
                "veth {} of the tree's network namespace: its other end was outside; name it on this host with --external veth[{}]:HOSTIF[@BRIDGE] (or restore with --empty-ns net)",
                d.name, d.name
            ));
            continue;
        };
        if nix::net::if_::if_nametoindex(end.host.as_str()).is_ok() {
            out.push(format!("veth {}: its host end {} cannot be made: a device of that name exists on this host", d.name, end.host));
        }
        if let Some(b) = &end.bridge {
            if nix::net::if_::if_nametoindex(b.as_str()).is_err() {
                out.push(format!("veth {}: bridge {b} for its host end {} does not exist on this host", d.name, end.host));
            } else if !std::path::Path::new(&format!("/sys/class/net/{b}/bridge")).exists() {
                out.push(format!("veth {}: {b}, given for its host end {}, is not a bridge", d.name, end.host));
            }
        }
    }
    for v in &opts.veths {
        if !saved.devices.iter().any(|d| d.name == v.inside && d.r#type == NdType::Veth as i32) {
            out.push(format!("--external veth[{}]:{}: the tree's network namespace had no veth {}", v.inside, v.host, v.inside));
        }
    }
    if saved.nftables.is_some() && which_nft().is_none() {
        out.push("the tree's network namespace has nftables rules, and restoring them needs nft (the nftables package)".into());
    }
    out
}

fn which_nft() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join("nft")).find(|p| p.exists())
}

/// What the dump read inside the namespace.
struct Dumped {
    netns: NetnsEntry,
    devices: Vec<NetDeviceEntry>,
    addresses: Vec<Vec<u8>>,
    routes: Vec<Vec<u8>>,
    routes6: Vec<Vec<u8>>,
    nftables: Option<String>,
}

/// Read the namespace this thread is in; `who` names the tree's root.
fn dump_inside(who: &str) -> Result<Dumped> {
    let refuse = |what: String| Error::unsupported(who.to_string(), format!("its network namespace has {what}"));
    let mut rt = nl::Rtnl::open().map_err(sys(|| "opening a rtnetlink socket in the tree's network namespace".into()))?;
    let links = rt.dump(nl::RTM_GETLINK, &nl::ifinfomsg(0, 0, 0)).map_err(sys(|| "listing the devices of the tree's network namespace".into()))?;
    let mut devices = Vec::new();
    for m in &links {
        let body = &m[nl::NLMSG_HDRLEN..];
        if body.len() < 16 {
            continue;
        }
        let (ty, index, flags) = (nl::u16_at(body, 2), nl::u32_at(body, 4), nl::u32_at(body, 8));
        let a = nl::attrs(&body[16..]);
        let name = nl::find(&a, IFLA_IFNAME).map(nl::text).unwrap_or_default();
        let mtu = nl::find(&a, IFLA_MTU).filter(|d| d.len() >= 4).map(|d| nl::u32_at(d, 0)).unwrap_or(0);
        let info = nl::find(&a, IFLA_LINKINFO).map(nl::attrs).unwrap_or_default();
        let kind = nl::find(&info, IFLA_INFO_KIND).map(nl::text).unwrap_or_default();
        let nd = if ty == ARPHRD_LOOPBACK {
            NdType::Loopback
        } else if kind == "veth" {
            if nl::find(&a, IFLA_LINK_NETNSID).is_none() {
                return Err(refuse(format!("a veth pair with both ends inside ({name}): not supported yet")));
            }
            NdType::Veth
        } else {
            let kind = if kind.is_empty() { format!("type {ty}") } else { kind };
            return Err(refuse(format!("network device {name} of kind {kind}: crust saves loopback and veth devices only")));
        };
        if nl::find(&a, IFLA_MASTER).is_some() {
            return Err(refuse(format!("network device {name} enslaved to a master device: not supported yet")));
        }
        let address = match nd {
            NdType::Loopback => None,
            _ => nl::find(&a, IFLA_ADDRESS).map(<[u8]>::to_vec),
        };
        devices.push(NetDeviceEntry {
            r#type: nd as i32,
            ifindex: index,
            mtu,
            flags,
            conf4: conf::read_conf("ipv4", &name, conf::CONF4)?,
            conf6: conf::read_conf("ipv6", &name, conf::CONF6)?,
            address,
            peer_ifindex: nl::find(&a, IFLA_LINK).filter(|d| d.len() >= 4).map(|d| nl::u32_at(d, 0)),
            name,
            ..Default::default()
        });
    }
    let addresses = rt.dump(nl::RTM_GETADDR, &[0u8; 8]).map_err(sys(|| "listing the addresses of the tree's network namespace".into()))?;
    let mut routes = Vec::new();
    let mut routes6 = Vec::new();
    for (family, out) in [(libc::AF_INET, &mut routes), (libc::AF_INET6, &mut routes6)] {
        let mut req = [0u8; 12];
        req[0] = family as u8;
        let all = rt.dump(nl::RTM_GETROUTE, &req).map_err(sys(|| "listing the routes of the tree's network namespace".into()))?;
        for m in all {
            let body = &m[nl::NLMSG_HDRLEN..];
            if body.len() < 12 || nl::u32_at(body, 8) & RTM_F_CLONED != 0 {
                continue;
            }
            let a = nl::attrs(&body[12..]);
            let table = nl::find(&a, RTA_TABLE).filter(|d| d.len() >= 4).map(|d| nl::u32_at(d, 0)).unwrap_or(body[4] as u32);
            match table {
                RT_TABLE_MAIN => out.push(m),
                // Made by the kernel from the addresses, and again so.
                RT_TABLE_LOCAL if body[5] == RTPROT_KERNEL => {}
                t => return Err(refuse(format!("routes in routing table {t} (crust saves the main table): not supported yet"))),
            }
        }
        let mut req = [0u8; 12];
        req[0] = family as u8;
        let rules = rt.dump(nl::RTM_GETRULE, &req).map_err(sys(|| "listing the routing rules of the tree's network namespace".into()))?;
        for m in rules {
            let body = &m[nl::NLMSG_HDRLEN..];
            if body.len() < 12 {
                continue;
            }
            let a = nl::attrs(&body[12..]);
            let prio = nl::find(&a, FRA_PRIORITY).filter(|d| d.len() >= 4).map(|d| nl::u32_at(d, 0)).unwrap_or(0);
            let table = nl::find(&a, FRA_TABLE).filter(|d| d.len() >= 4).map(|d| nl::u32_at(d, 0)).unwrap_or(body[4] as u32);
            let default = matches!((prio, table), (0, RT_TABLE_LOCAL) | (32766, RT_TABLE_MAIN)) || (family == libc::AF_INET && (prio, table) == (32767, 253));
            if !default {
                return Err(refuse(format!("a routing rule (priority {prio}, table {table}) other than the kernel's defaults: not supported yet")));
            }
        }
    }
    for table in ["ip_tables_names", "ip6_tables_names"] {
        let path = format!("/proc/thread-self/net/{table}");
        let names = std::fs::read_to_string(&path).unwrap_or_default();
        let names: Vec<&str> = names.split_whitespace().collect();
        if !names.is_empty() {
            return Err(refuse(format!("legacy iptables tables ({}: {}): not supported yet (nftables rules are saved)", table, names.join(", "))));
        }
    }
    let netns = NetnsEntry {
        all_conf4: conf::read_conf("ipv4", "all", conf::CONF4)?,
        def_conf4: conf::read_conf("ipv4", "default", conf::CONF4)?,
        all_conf6: conf::read_conf("ipv6", "all", conf::CONF6)?,
        def_conf6: conf::read_conf("ipv6", "default", conf::CONF6)?,
        unix_conf: conf::read_unix()?,
        crust_sysctls: sysctls::read_changed(who)?,
        ..Default::default()
    };
    Ok(Dumped { netns, devices, addresses, routes, routes6, nftables: nft_ruleset(who)? })
}

/// The namespace's nftables rules (`nft list ruleset`, run from this thread,
/// so inside it); None if it has none.
fn nft_ruleset(who: &str) -> Result<Option<String>> {
    let out = match std::process::Command::new("nft").args(["list", "ruleset"]).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::unsupported(
                who.to_string(),
                "its network namespace may hold nftables rules, and reading them needs nft (the nftables package)",
            ))
        }
        Err(e) => return Err(Error::io_other("running nft list ruleset in the tree's network namespace", e)),
    };
    if !out.status.success() {
        return Err(Error::io_other("running nft list ruleset in the tree's network namespace", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8(out.stdout).map_err(|_| Error::unsupported(who.to_string(), "its nftables rules are not UTF-8 text"))?;
    Ok((!text.trim().is_empty()).then_some(text))
}

/// The messages of an `ip ... save` file, checked: the magic, whole
/// messages of type `ty` with a family header of `head` bytes.
fn read_dump(path: &std::path::Path, magic: u32, ty: u16, head: usize) -> Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path).ctx(|| format!("reading {}", path.display()))?;
    if data.len() < 4 || nl::u32_at(&data, 0) != magic {
        return Err(Error::image(path, format!("not an iproute2 dump (magic {magic:#x} expected)")));
    }
    let mut out = Vec::new();
    let mut at = 4;
    while at < data.len() {
        let rest = &data[at..];
        let len = if rest.len() >= nl::NLMSG_HDRLEN { nl::u32_at(rest, 0) as usize } else { 0 };
        if len < nl::NLMSG_HDRLEN + head || len > rest.len() {
            return Err(Error::Image { file: path.to_path_buf(), offset: at as u64, what: "a truncated or malformed rtnetlink message".into() });
        }
        if nl::u16_at(rest, 4) != ty {
            return Err(Error::Image { file: path.to_path_buf(), offset: at as u64, what: format!("message of type {} where {ty} was expected", nl::u16_at(rest, 4)) });
        }
        out.push(rest[..len].to_vec());
        at += len;
    }
    Ok(out)
}

/// Send a saved message again as a request to create what it describes;
/// what exists already (made by the kernel from another) is fine.
fn replay(rt: &mut nl::Rtnl, saved: &[u8]) -> nix::Result<()> {
    let mut m = saved.to_vec();
    m[6..8].copy_from_slice(&nl::CREATE.to_ne_bytes());
    m[12..16].copy_from_slice(&[0; 4]);
    match rt.request(&m) {
        Err(nix::errno::Errno::EEXIST) => Ok(()),
        r => r,
    }
}

fn set_link(rt: &mut nl::Rtnl, index: i32, flags: u32, mtu: Option<u32>) -> nix::Result<()> {
    let mut m = nl::header(nl::RTM_NEWLINK, 0);
    m.extend_from_slice(&nl::ifinfomsg(index, flags & IFF_UP, IFF_UP));
    if let Some(mtu) = mtu {
        nl::attr(&mut m, IFLA_MTU, &mtu.to_ne_bytes());
    }
    rt.request(&m)
}

/// Fill the namespace this thread is in from `saved`; `made` gets the host
/// ends made (in crust's namespace `mine`).
fn restore_inside(saved: &Saved, opts: &NetOptions, mine: &std::fs::File, made: &mut Vec<String>) -> Result<()> {
    let n = &saved.netns;
    // Before CRIU's lists: writing ip_forward resets the conf settings.
    sysctls::write(&n.crust_sysctls)?;
    conf::write_conf("ipv4", "all", conf::CONF4, &n.all_conf4)?;
    conf::write_conf("ipv4", "default", conf::CONF4, &n.def_conf4)?;
    conf::write_conf("ipv6", "all", conf::CONF6, &n.all_conf6)?;
    conf::write_conf("ipv6", "default", conf::CONF6, &n.def_conf6)?;
    conf::write_unix(&n.unix_conf)?;
    let mut rt = nl::Rtnl::open().map_err(sys(|| "opening a rtnetlink socket in the new network namespace".into()))?;
    for d in &saved.devices {
        let what = || format!("making network device {} (index {}) in the new namespace", d.name, d.ifindex);
        if d.r#type == NdType::Loopback as i32 {
            let lo = nix::net::if_::if_nametoindex(d.name.as_str()).map_err(sys(what))?;
            if lo != d.ifindex {
                return Err(Error::Invalid(format!("{}: the new namespace's loopback has index {lo}", what())));
            }
            set_link(&mut rt, lo as i32, 0, Some(d.mtu)).map_err(sys(what))?;
        } else {
            let end = opts.veths.iter().find(|v| v.inside == d.name).ok_or_else(|| {
                Error::Invalid(format!("{}: its host end has no name (--external veth[{}]:HOSTIF)", what(), d.name))
            })?;
            make_veth(&mut rt, d, &end.host, mine).map_err(sys(what))?;
            made.push(end.host.clone());
        }
        conf::write_conf("ipv4", &d.name, conf::CONF4, &d.conf4)?;
        conf::write_conf("ipv6", &d.name, conf::CONF6, &d.conf6)?;
    }
    // Up first, as devices usually are before their addresses: the kernel
    // then makes its own addresses (::1, link-local ones) and their routes
    // as it did, and the saved copies of those are no news to it.
    for d in saved.devices.iter().filter(|d| d.flags & IFF_UP != 0) {
        set_link(&mut rt, d.ifindex as i32, IFF_UP, None).map_err(sys(|| format!("setting network device {} up", d.name)))?;
    }
    for a in &saved.addresses {
        replay(&mut rt, a).map_err(sys(|| format!("adding an address ({}) in the new network namespace", describe_addr(a))))?;
    }
    // Routes through a gateway need the route to the gateway first.
    let via = |m: &Vec<u8>| nl::find(&nl::attrs(&m[nl::NLMSG_HDRLEN + 12..]), RTA_GATEWAY).is_some();
    for r in saved.routes.iter().filter(|m| !via(m)).chain(saved.routes.iter().filter(|m| via(m))) {
        replay(&mut rt, r).map_err(sys(|| "adding a route in the new network namespace".into()))?;
    }
    if let Some(rules) = &saved.nftables {
        nft_load(rules)?;
    }
    Ok(())
}

/// "10.0.0.1/24 on 2": an address message, for errors.
fn describe_addr(m: &[u8]) -> String {
    let body = &m[nl::NLMSG_HDRLEN..];
    let (family, plen, index) = (body[0], body[1], nl::u32_at(body, 4));
    let a = nl::attrs(&body[8..]);
    let ip = nl::find(&a, 2).or_else(|| nl::find(&a, 1)).and_then(|d| match (family as i32, d.len()) {
        (libc::AF_INET, 4) => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(d).ok()?)),
        (libc::AF_INET6, 16) => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(d).ok()?)),
        _ => None,
    });
    format!("{}/{plen} on device {index}", ip.map(|i| i.to_string()).unwrap_or_else(|| "?".into()))
}

/// A veth pair: `d` here, its peer `host` in namespace `mine`.
fn make_veth(rt: &mut nl::Rtnl, d: &NetDeviceEntry, host: &str, mine: &std::fs::File) -> nix::Result<()> {
    let mut m = nl::header(nl::RTM_NEWLINK, nl::CREATE | nl::EXCL);
    m.extend_from_slice(&nl::ifinfomsg(d.ifindex as i32, 0, 0));
    nl::attr(&mut m, IFLA_IFNAME, format!("{}\0", d.name).as_bytes());
    nl::attr(&mut m, IFLA_MTU, &d.mtu.to_ne_bytes());
    if let Some(mac) = &d.address {
        nl::attr(&mut m, IFLA_ADDRESS, mac);
    }
    let info = nl::begin_nest(&mut m, IFLA_LINKINFO);
    nl::attr(&mut m, IFLA_INFO_KIND, b"veth\0");
    let data = nl::begin_nest(&mut m, IFLA_INFO_DATA);
    let peer = nl::begin_nest(&mut m, VETH_INFO_PEER);
    m.extend_from_slice(&nl::ifinfomsg(0, 0, 0));
    nl::attr(&mut m, IFLA_IFNAME, format!("{host}\0").as_bytes());
    nl::attr(&mut m, IFLA_MTU, &d.mtu.to_ne_bytes());
    nl::attr(&mut m, IFLA_NET_NS_FD, &(mine.as_raw_fd() as u32).to_ne_bytes());
    nl::end_nest(&mut m, peer);
    nl::end_nest(&mut m, data);
    nl::end_nest(&mut m, info);
    rt.request(&m)
}

/// The host ends in crust's namespace: attached to their bridges, up.
fn host_ends(saved: &Saved, opts: &NetOptions) -> Result<()> {
    let mut rt = nl::Rtnl::open().map_err(sys(|| "opening a rtnetlink socket".into()))?;
    for d in saved.devices.iter().filter(|d| d.r#type == NdType::Veth as i32) {
        let Some(end) = opts.veths.iter().find(|v| v.inside == d.name) else { continue };
        let what = || format!("setting up {}, the host end of veth {}", end.host, d.name);
        let index = nix::net::if_::if_nametoindex(end.host.as_str()).map_err(sys(what))? as i32;
        if let Some(bridge) = &end.bridge {
            let b = nix::net::if_::if_nametoindex(bridge.as_str()).map_err(sys(|| format!("{}: bridge {bridge}", what())))?;
            let mut m = nl::header(nl::RTM_NEWLINK, 0);
            m.extend_from_slice(&nl::ifinfomsg(index, 0, 0));
            nl::attr(&mut m, IFLA_MASTER, &b.to_ne_bytes());
            rt.request(&m).map_err(sys(|| format!("{}: attaching it to bridge {bridge}", what())))?;
        }
        set_link(&mut rt, index, IFF_UP, None).map_err(sys(what))?;
    }
    Ok(())
}

/// Remove device `name` of crust's namespace.
fn delete_link(name: &str) -> nix::Result<()> {
    let mut rt = nl::Rtnl::open()?;
    let mut m = nl::header(RTM_DELLINK, 0);
    m.extend_from_slice(&nl::ifinfomsg(0, 0, 0));
    nl::attr(&mut m, IFLA_IFNAME, format!("{name}\0").as_bytes());
    rt.request(&m)
}

/// Load nftables rules with `nft -f -` from this thread (inside the namespace).
fn nft_load(rules: &[u8]) -> Result<()> {
    use std::io::Write;
    let what = "loading the nftables rules of the tree's network namespace with nft";
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::io_other(what, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules).map_err(|e| Error::io_other(what, e))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::io_other(what, e))?;
    if !out.status.success() {
        return Err(Error::io_other(what, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_ends_parse_as_criu_writes_them() {
        assert_eq!(
            VethEnd::parse("veth[eth0]:vh0@br0"),
            Some(Ok(VethEnd { inside: "eth0".into(), host: "vh0".into(), bridge: Some("br0".into()) }))
        );
        assert_eq!(VethEnd::parse("veth[eth0]:vh0"), Some(Ok(VethEnd { inside: "eth0".into(), host: "vh0".into(), bridge: None })));
        assert!(matches!(VethEnd::parse("veth[eth0]"), Some(Err(_))));
        assert!(matches!(VethEnd::parse("veth[]:x"), Some(Err(_))));
        assert!(matches!(VethEnd::parse("veth[a]:b/c"), Some(Err(_))));
        assert_eq!(VethEnd::parse("mnt[x]:y"), None);
    }

    #[test]
    fn ip_save_files_are_read_whole_or_refused() {
        let dir = std::env::temp_dir().join(format!("crust-unit-netdump-{}", std::process::id()));
        let mut msg = nl::header(nl::RTM_NEWADDR, 0);
        msg.extend_from_slice(&[0u8; 8]);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        let mut good = IFADDR_MAGIC.to_ne_bytes().to_vec();
        good.extend_from_slice(&msg);
        good.extend_from_slice(&msg);
        std::fs::write(&dir, &good).unwrap();
        assert_eq!(read_dump(&dir, IFADDR_MAGIC, nl::RTM_NEWADDR, 8).unwrap().len(), 2);
        assert!(read_dump(&dir, ROUTE_MAGIC, nl::RTM_NEWROUTE, 12).is_err(), "another magic");
        std::fs::write(&dir, &good[..good.len() - 3]).unwrap();
        assert!(read_dump(&dir, IFADDR_MAGIC, nl::RTM_NEWADDR, 8).is_err(), "truncated");
        let mut other = good.clone();
        other[8..10].copy_from_slice(&nl::RTM_NEWROUTE.to_ne_bytes());
        std::fs::write(&dir, &other).unwrap();
        assert!(read_dump(&dir, IFADDR_MAGIC, nl::RTM_NEWADDR, 8).is_err(), "a message of another type");
        std::fs::remove_file(&dir).unwrap();
    }
}
