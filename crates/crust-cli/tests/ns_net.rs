//! Trees in a network namespace of their own: loopback, a veth to the host,
//! addresses, routes, sysctls and nftables rules saved with the tree and
//! made again (the veth's host end named by `--external veth[IF]:HOSTIF`),
//! its servers reachable from the host through the veth, an established
//! connection from the host kept (`--tcp-established`); what crust cannot
//! save refused at dump with the tree running on; a failed restore leaves
//! no host end behind.
//!
//! Each test has its own veth host name, 10.200.x subnet and port.
//!
//! Run: `cargo test -p crust-cli --test ns_net` (as root).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::job::*;
use common::procstate::ProcState;
use common::*;
use serde_json::Value;

/// In the new process before exec: a network namespace of its own (only a
/// loopback, down).
fn own_net() -> std::io::Result<()> {
    // SAFETY: one syscall.
    match unsafe { libc::unshare(libc::CLONE_NEWNET) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Run a command; it must succeed. Its stdout.
fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `sh -c script` in `pid`'s network namespace; it must succeed.
fn inside(pid: i32, script: &str) -> String {
    run(&["nsenter", "-t", &pid.to_string(), "-n", "sh", "-c", script])
}

/// A host device of the test's, removed (with its peer) when dropped.
struct HostLink(&'static str);

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The host end goes with the namespace, which the kernel tears down a
/// little after its last process died.
fn wait_link_gone(name: &str) {
    let gone = poll(Duration::from_secs(20), Duration::from_millis(50), || (!link_exists(name)).then_some(()));
    assert!(gone.is_some(), "host device {name} is still there 20 s after its namespace's last process died");
}

/// A job of `netserve PORT` in a namespace of its own, with a veth to the
/// host (`host` here, eth0 inside), `net`.1 on the host and `net`.2 inside,
/// loopback up, a route through the host, a forwarding sysctl changed and
/// DAD off on eth0 (so IPv6 addresses settle at once), and an nftables rule.
fn start(dir: &Path, port: &str, host: &'static str, net: &str) -> (Job, HostLink) {
    let mut job = Job::build("netserve", &[port]).pre_exec(own_net).start(dir);
    job.ready();
    run(&["ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &job.pid.to_string()]);
    let link = HostLink(host);
    run(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", host]);
    run(&["ip", "link", "set", host, "up"]);
    inside(
        job.pid,
        &format!(
            "ip link set lo up && sysctl -q -w net.ipv6.conf.eth0.accept_dad=0 net.ipv4.conf.all.forwarding=1 net.ipv4.conf.eth0.rp_filter=2 \
             && ip addr add {net}.2/24 dev eth0 && ip link set eth0 up && ip route add 10.200.250.0/24 via {net}.1 \
             && nft add table inet crusttest && nft add chain inet crusttest c '{{ type filter hook input priority 0; }}' \
             && nft add rule inet crusttest c udp dport 9 drop"
        ),
    );
    (job, link)
}

/// `ip -j` output, with what names the host end's index (new at each
/// restore) left out.
fn ip_json(pid: i32, what: &str) -> Value {
    let mut v: Value = serde_json::from_str(&inside(pid, &format!("ip -j {what}"))).expect("ip -j output");
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("link_index");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// What the tests compare inside the namespace before and after.
fn net_state(pid: i32) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        ["addr", "route", "-6 route", "rule", "link"].iter().map(|w| (w.to_string(), ip_json(pid, w).to_string())).collect();
    out.push((
        "sysctl".into(),
        inside(pid, "sysctl net.ipv4.conf.all.forwarding net.ipv4.conf.eth0.rp_filter net.ipv6.conf.eth0.accept_dad net.unix.max_dgram_qlen"),
    ));
    out.push(("nft".into(), inside(pid, "nft list ruleset")));
    out
}

/// One line to the server on `conn` and its answer.
fn ask(conn: &mut BufReader<TcpStream>, line: &str) -> String {
    conn.get_mut().write_all(format!("{line}\n").as_bytes()).expect("sending to the server");
    let mut answer = String::new();
    conn.read_line(&mut answer).expect("the server's answer");
    answer.trim().to_string()
}

fn connect(addr: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10)).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    BufReader::new(s)
}

fn udp_ask(addr: &str, what: &str) -> String {
    let u = UdpSocket::bind("0.0.0.0:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    u.send_to(what.as_bytes(), addr).unwrap();
    let mut buf = [0u8; 128];
    let n = u.recv(&mut buf).unwrap_or_else(|e| panic!("udp answer from {addr}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn a_network_namespace_comes_back_whole_and_serves_the_host_through_its_veth() {
    let (host, net, port) = ("vh-crust-ns1", "10.200.71", "17101");
    let dir = TempDir::new("ns-net");
    let images = dir.join("images");
    let (mut job, _link) = start(dir.path(), port, host, net);
    let server = format!("{net}.2:{port}");
    let mut conn = connect(&server);
    assert_eq!(ask(&mut conn, "hello"), "pong 1 hello");
    let before = net_state(job.pid);
    let procs = ProcState::of_tree(job.pid);
    dump(job.pid, &images, &["--tcp-established"]);
    job.reap_original();
    wait_link_gone(host);
    for img in ["netdev-", "netns-", "ifaddr-", "route-", "route6-", "nftables-"] {
        let found = std::fs::read_dir(&images).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(img));
        assert!(found, "the dump wrote {img}ID.img");
    }
    // crit reads the devices and settings as criu would; ip reads the addresses and routes.
    let image = |prefix: &str| std::fs::read_dir(&images).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with(prefix)).unwrap().path();
    let devices = crit_show(&image("netdev-"));
    crit_show(&image("netns-"));
    let names: Vec<&str> = devices["entries"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["lo", "eth0"], "{devices}");
    let shown = Command::new("ip").args(["addr", "showdump"]).stdin(std::fs::File::open(image("ifaddr-")).unwrap()).output().unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("{net}.2/24")), "ip addr showdump reads the image: {shown:?}");

    let ext = format!("veth[eth0]:{host}");
    let out = restore(&images, &["--external", &ext, "--tcp-established"]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert!(link_exists(host), "the restore made the host end {host}");
    let after = net_state(job.pid);
    for ((what, b), (_, a)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{what} inside the namespace is the same after the restore");
    }
    procs.assert_same(&ProcState::of_tree(job.pid), &[]);
    // The host side is the host's to configure (as a container engine does).
    run(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", host]);
    assert_eq!(ask(&mut conn, "again"), "pong 2 again", "the connection from the host lives on");
    let mut fresh = connect(&server);
    assert_eq!(ask(&mut fresh, "new"), "pong 1 new");
    assert_eq!(udp_ask(&server, "u1"), "upong u1");
    assert_eq!(ask(&mut fresh, "unix"), "pong 2 unix:u", "the unix pair inside the namespace works");
    let listening = inside(job.pid, "ss -xlH");
    assert!(listening.contains(&format!("@crust-netserve-{port}")), "the abstract unix listener is back in the namespace: {listening}");
    job.kill_restored();
    wait_link_gone(host);
}

#[test]
fn empty_ns_net_leaves_the_namespace_bare_and_a_taken_host_end_fails_cleanly() {
    let (host, net, port) = ("vh-crust-ns2", "10.200.72", "17102");
    let dir = TempDir::new("ns-net-empty");
    let images = dir.join("images");
    let (mut job, _link) = start(dir.path(), port, host, net);
    dump(job.pid, &images, &[]);
    job.reap_original();
    wait_link_gone(host);

    // Without the host end's name, and with it taken (a veth of the host's
    // of that name) and a missing bridge: every problem at once, nothing made.
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "restore without the veth's host end");
    assert!(err.contains("--external veth[eth0]"), "it says how to name the host end: {err}");
    let peer = format!("{host}p");
    run(&["ip", "link", "add", host, "type", "veth", "peer", "name", &peer]);
    let ext = format!("veth[eth0]:{host}@crust-nobr2");
    let images_s = images.to_str().unwrap();
    let check = crust(&[os("check"), os("--images"), os(images_s), os("--external"), os(&ext)], STEP);
    let text = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "check sees the problems");
    assert!(text.contains(&format!("its host end {host} cannot be made")) && text.contains("bridge crust-nobr2"), "{text}");
    let out = restore(&images, &["--external", &format!("veth[eth0]:{host}")]);
    let err = job.assert_restore_failed(&out, "restore with the host end taken");
    assert!(err.contains(host), "{err}");
    assert!(link_exists(&peer), "the host's device {host} is untouched (its peer {peer} is there)");
    run(&["ip", "link", "del", host]);

    // --empty-ns net: the namespace as the kernel makes it.
    let out = restore(&images, &["--empty-ns", "net"]);
    assert!(out.status.success(), "restore with --empty-ns net failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    let links = ip_json(job.pid, "link");
    let names: Vec<&str> = links.as_array().unwrap().iter().map(|l| l["ifname"].as_str().unwrap()).collect();
    assert_eq!(names, ["lo"], "only the loopback: {links}");
    assert!(!link_exists(host), "no host end made");
    assert_eq!(inside(job.pid, "nft list ruleset").trim(), "", "no rules");
    // Dumped again as restored: a namespace with a loopback only.
    let again = dir.join("again");
    dump(job.pid, &again, &[]);
    job.reap_original();
    let out = restore(&again, &[]);
    assert!(out.status.success(), "restore of the restored tree failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    assert_eq!(ip_json(job.pid, "link"), links, "the same bare namespace");
    job.kill_restored();
}

#[test]
fn a_device_crust_cannot_make_is_refused_by_name_and_the_tree_runs_on() {
    let (host, net, port) = ("vh-crust-ns3", "10.200.73", "17103");
    let dir = TempDir::new("ns-net-refused");
    let images = dir.join("images");
    let (mut job, _link) = start(dir.path(), port, host, net);
    inside(job.pid, "ip tuntap add crusttun0 mode tun");
    let out = crust(&dump_args(&job.pid.to_string(), &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a namespace with a tun device");
    assert!(err.contains("crusttun0") && err.contains("tun"), "the refusal names the device and its kind: {err}");
    assert_no_inventory(&images);
    inside(job.pid, "ip link del crusttun0 && ip route add 10.200.251.0/24 via 10.200.73.1 table 7");
    let out = crust(&dump_args(&job.pid.to_string(), &images, &[]), STEP);
    let err = assert_clean_failure(&out, "dump of a namespace with a route in another table");
    assert!(err.contains("routing table 7"), "{err}");
    let mut conn = connect(&format!("{net}.2:{port}"));
    assert_eq!(ask(&mut conn, "still"), "pong 1 still", "the tree runs on");
    drop(conn);

    // With --empty-ns net the namespace is left out (its caller makes it):
    // the dump takes the tree, and only a restore with --empty-ns net makes it.
    inside(job.pid, "ip tuntap add crusttun0 mode tun");
    dump(job.pid, &images, &["--empty-ns", "net"]);
    job.reap_original();
    wait_link_gone(host);
    let out = restore(&images, &[]);
    let err = job.assert_restore_failed(&out, "restore of a dump that left the namespace out, without --empty-ns");
    assert!(err.contains("--empty-ns net"), "{err}");
    let out = restore(&images, &["--empty-ns", "net"]);
    assert!(out.status.success(), "restore with --empty-ns net failed: {}", String::from_utf8_lossy(&out.stderr));
    job.adopt_restored();
    let links = ip_json(job.pid, "link");
    assert_eq!(links.as_array().unwrap().len(), 1, "only the loopback: {links}");
    job.kill_restored();
}
