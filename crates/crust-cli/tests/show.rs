//! `crust show` against the reference decoder: an image of every kind crit
//! handles, made by `crit encode` with every field crit's schema has set (most
//! of which crust never writes: other architectures' registers,
//! inet and netlink sockets, TCP streams, mounts, network devices, SysV IPC,
//! fsnotify marks, madvise bits...) must come out of `crust show` with every
//! field `crit decode` prints, at every depth, and the same values (numbers,
//! flags, enum names, strings; bytes compared after decoding crit's base64).
//!
//! Needs `crit` (and the python that runs it). Run: `cargo test -p crust-cli --test show`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::*;

const STEP: Duration = Duration::from_secs(60);

/// Writes, for each image, crit's JSON form of it with every field of every
/// message set, depth first, each scalar to a value of its own (signed ones
/// negative). Repeated fields get two elements. Reads crit's own schema, so a
/// field crust's .proto files lack is set all the same.
const FILL: &str = r#"
import base64, json, os, struct, sys
from pycriu.images import magic, pb, pb2dict
from google.protobuf.descriptor import FieldDescriptor as FD

n = [0]
SIGNED = (FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_SINT32, FD.TYPE_SINT64, FD.TYPE_SFIXED32, FD.TYPE_SFIXED64)

def scalar(f):
    n[0] += 1
    k = n[0]
    if f.type == FD.TYPE_ENUM:
        vals = f.enum_type.values
        return vals[k % len(vals)].name
    if f.type == FD.TYPE_BOOL:
        return True
    if f.type == FD.TYPE_STRING:
        return "s%d" % k
    if f.type == FD.TYPE_BYTES:
        v = pb2dict.get_bytes_enc(f)(b"bytes-%d" % k)
        return v.decode() if isinstance(v, bytes) else v
    if f.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return k + 0.5
    return -k if f.type in SIGNED else k

def fill(desc, depth=0):
    d = {}
    for f in desc.fields:
        msg = f.type == FD.TYPE_MESSAGE
        # Recursive messages (cgroup directories) stop somewhere.
        if msg and depth > 3 and f.label != FD.LABEL_REQUIRED:
            continue
        one = (lambda: fill(f.message_type, depth + 1)) if msg else (lambda: scalar(f))
        d[f.name] = [one(), one()] if f.label == FD.LABEL_REPEATED else one()
    return d

def e(name):
    return fill(getattr(pb, name).DESCRIPTOR)

def with_data(entry, field, data):
    entry[field] = len(data)
    entry["extra"] = base64.encodebytes(data).decode()
    return entry

def b64(data):
    return base64.encodebytes(data).decode()

ghost = e("ghost_file_entry")
ghost["chunks"] = True
chunk = with_data(e("ghost_chunk_entry"), "len", b"ghost contents")
tcp = e("tcp_stream_entry")
tcp.update(inq_len=5, outq_len=9, extra={"inq": b64(b"in q!"), "outq": b64(b"out queue")})
sem = e("ipc_sem_entry")
sem.update(nsems=3, extra=[7, 8, 9])
msgq = e("ipc_msg_entry")
msgs = []
for data in (b"first message", b"2nd"):
    m = e("ipc_msg")
    m["msize"] = len(data)
    msgs += [m, b64(data)]
msgq.update(qnum=2, extra=msgs)
images = {
    "inventory.img": ("INVENTORY", [e("inventory_entry")]),
    "pstree.img": ("PSTREE", [e("pstree_entry"), e("pstree_entry")]),
    "core-1.img": ("CORE", [e("core_entry")]),
    "ids-1.img": ("IDS", [e("task_kobj_ids_entry")]),
    "creds-1.img": ("CREDS", [e("creds_entry")]),
    "utsns-1.img": ("UTSNS", [e("utsns_entry")]),
    "timens-1.img": ("TIMENS", [e("timens_entry")]),
    "pidns-1.img": ("PIDNS", [e("pidns_entry")]),
    "ipcns-var-1.img": ("IPC_VAR", [e("ipc_var_entry")]),
    "ipcns-sem-1.img": ("IPCNS_SEM", [sem, dict(sem)]),
    "ipcns-msg-1.img": ("IPCNS_MSG", [msgq, dict(msgq)]),
    "fs-1.img": ("FS", [e("fs_entry")]),
    "mm-1.img": ("MM", [e("mm_entry")]),
    "vmas-1.img": ("VMAS", [e("vma_entry")]),
    "pagemap-1.img": ("PAGEMAP", [e("pagemap_head"), e("pagemap_entry"), e("pagemap_entry")]),
    "pagemap-shmem-81234.img": ("PAGEMAP", [e("pagemap_head"), e("pagemap_entry")]),
    "sigacts-1.img": ("SIGACT", [e("sa_entry")]),
    "itimers-1.img": ("ITIMERS", [e("itimer_entry")]),
    "posix-timers-1.img": ("POSIX_TIMERS", [e("posix_timer_entry")]),
    "rlimit-1.img": ("RLIMIT", [e("rlimit_entry")]),
    "files.img": ("FILES", [e("file_entry"), e("file_entry")]),
    "fdinfo-2.img": ("FDINFO", [e("fdinfo_entry")]),
    "reg-files.img": ("REG_FILES", [e("reg_file_entry")]),
    "ext-files.img": ("EXT_FILES", [e("ext_file_entry")]),
    "ns-files.img": ("NS_FILES", [e("ns_file_entry")]),
    "eventfd.img": ("EVENTFD_FILE", [e("eventfd_file_entry")]),
    "eventpoll.img": ("EVENTPOLL_FILE", [e("eventpoll_file_entry")]),
    "eventpoll-tfd.img": ("EVENTPOLL_TFD", [e("eventpoll_tfd_entry")]),
    "signalfd.img": ("SIGNALFD", [e("signalfd_entry")]),
    "timerfd.img": ("TIMERFD", [e("timerfd_entry")]),
    "inotify.img": ("INOTIFY_FILE", [e("inotify_file_entry")]),
    "inotify-wd.img": ("INOTIFY_WD", [e("inotify_wd_entry")]),
    "fanotify.img": ("FANOTIFY_FILE", [e("fanotify_file_entry")]),
    "fanotify-mark.img": ("FANOTIFY_MARK", [e("fanotify_mark_entry")]),
    "pipes.img": ("PIPES", [e("pipe_entry")]),
    "pipes-data.img": ("PIPES_DATA", [with_data(e("pipe_data_entry"), "bytes", b"in the pipe")]),
    "fifo.img": ("FIFO", [e("fifo_entry")]),
    "fifo-data.img": ("FIFO_DATA", [with_data(e("pipe_data_entry"), "bytes", b"in the fifo"),
                                    with_data(e("pipe_data_entry"), "bytes", b"")]),
    "unixsk.img": ("UNIXSK", [e("unix_sk_entry")]),
    "inetsk.img": ("INETSK", [e("inet_sk_entry"), e("inet_sk_entry")]),
    "packetsk.img": ("PACKETSK", [e("packet_sock_entry")]),
    "netlinksk.img": ("NETLINK_SK", [e("netlink_sk_entry")]),
    "sk-queues.img": ("SK_QUEUES", [with_data(e("sk_packet_entry"), "length", b"queued"),
                                    with_data(e("sk_packet_entry"), "length", b"")]),
    "tcp-stream-3a9c.img": ("TCP_STREAM", [tcp]),
    "remap-fpath.img": ("REMAP_FPATH", [e("remap_file_path_entry")]),
    "ghost-file-1f.img": ("GHOST_FILE", [ghost, chunk, dict(chunk)]),
    "memfd.img": ("MEMFD_INODE", [e("memfd_inode_entry")]),
    "mountpoints-12.img": ("MNTS", [e("mnt_entry"), e("mnt_entry")]),
    "netdev-10.img": ("NETDEV", [e("net_device_entry")]),
    "netns-10.img": ("NETNS", [e("netns_entry")]),
    "userns-11.img": ("USERNS", [e("userns_entry")]),
    "autofs-3.img": ("AUTOFS", [e("autofs_entry")]),
    "tty.img": ("TTY_FILES", [e("tty_file_entry")]),
    "tty-info.img": ("TTY_INFO", [e("tty_info_entry")]),
    "tty-data.img": ("TTY_DATA", [e("tty_data_entry")]),
    "filelocks.img": ("FILE_LOCKS", [e("file_lock_entry")]),
    "tunfile.img": ("TUNFILE", [e("tunfile_entry")]),
    "cgroup.img": ("CGROUP", [e("cgroup_entry")]),
    "cpuinfo.img": ("CPUINFO", [e("cpuinfo_entry")]),
    "seccomp.img": ("SECCOMP", [e("seccomp_entry")]),
    "bpfmap-file.img": ("BPFMAP_FILE", [e("bpfmap_file_entry")]),
    "apparmor.img": ("APPARMOR", [e("apparmor_entry")]),
    "stats-dump": ("STATS", [e("stats_entry")]),
    "irmap-cache": ("IRMAP_CACHE", [e("irmap_cache_entry")]),
}
for name, (kind, entries) in images.items():
    with open(os.path.join(sys.argv[1], name + ".json"), "w") as out:
        json.dump({"magic": kind, "entries": entries}, out)

# crit decodes these but cannot encode their data under python 3 (it hands a
# str to base64.decodebytes), so they are written here, framed as crit reads
# them: entries, each followed by its data.
def write_image(name, magic_name, items):
    with open(os.path.join(sys.argv[2], name), "wb") as out:
        out.write(struct.pack("<II", magic.by_name["IMG_COMMON"], magic.by_name[magic_name]))
        for msg, data in items:
            body = msg.SerializeToString()
            out.write(struct.pack("<I", len(body)) + body + data)

def message(name, **values):
    m = getattr(pb, name)()
    pb2dict.dict2pb(e(name), m)
    for k, v in values.items():
        setattr(m, k, v)
    return m

# The last segment's contents are in pagemaps: nothing follows it.
write_image("ipcns-shm-1.img", "IPCNS_SHM", [
    (message("ipc_shm_entry", size=5, in_pagemaps=False), b"hello\0\0\0"),
    (message("ipc_shm_entry", size=8192, in_pagemaps=True), b""),
])
write_image("bpfmap-data.img", "BPFMAP_DATA", [
    (message("bpfmap_data_entry", keys_bytes=4, values_bytes=8), b"keys" + b"values!!"),
    (message("bpfmap_data_entry", keys_bytes=0, values_bytes=3), b"end"),
])
"#;

/// The interpreter `crit` runs with (its #! line), which can import pycriu.
fn crit_python() -> PathBuf {
    let crit = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(CRIT)).find(|c| c.is_file()))
        .expect("crit in PATH");
    let text = std::fs::read_to_string(&crit).expect("reading crit");
    let line = text.lines().next().unwrap_or_default();
    PathBuf::from(line.strip_prefix("#!").unwrap_or("python3").split_whitespace().next().unwrap_or("python3"))
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = run_with_timeout(cmd, STEP);
    assert!(out.status.success(), "{cmd:?} failed ({:?}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Encodes every image of FILL into `dir` with `crit encode` (or FILL writes
/// it); returns their names.
fn make_images(dir: &Path) -> Vec<String> {
    let json_dir = dir.parent().unwrap().join("json");
    std::fs::create_dir_all(&json_dir).unwrap();
    run_ok(Command::new(crit_python()).arg("-c").arg(FILL).arg(&json_dir).arg(dir));
    for e in std::fs::read_dir(&json_dir).unwrap() {
        let json = e.unwrap().path();
        let name = json.file_stem().unwrap().to_string_lossy().into_owned();
        run_ok(Command::new(CRIT).arg("encode").arg("-i").arg(&json).arg("-o").arg(dir.join(&name)));
    }
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    // Raw images too, which crust only summarises.
    std::fs::write(dir.join("pages-1.img"), vec![7u8; 2 * 4096]).unwrap();
    std::fs::write(dir.join("ifaddr-10.img"), b"not a CRIU format").unwrap();
    names
}

fn crit_decode(path: &Path) -> Value {
    let out = run_ok(Command::new(CRIT).arg("decode").arg("-i").arg(path));
    serde_json::from_slice(&out).unwrap_or_else(|e| panic!("crit decode {}: not JSON: {e}", path.display()))
}

/// Standard base64 (crit's bytes), whitespace ignored.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | v as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every key of crit's value is in crust's, recursively, with the same value;
/// `skip` names keys crust does not print (the raw data after an entry).
/// Returns how many fields were compared.
fn covers(crit: &Value, crust: &Value, at: &str, skip: &[&str], problems: &mut Vec<String>) -> usize {
    match (crit, crust) {
        (Value::Object(c), Value::Object(r)) => {
            let mut n = 0;
            for (k, v) in c {
                if skip.contains(&k.as_str()) {
                    continue;
                }
                match r.get(k) {
                    Some(rv) => n += 1 + covers(v, rv, &format!("{at}.{k}"), &[], problems),
                    None => problems.push(format!("{at}.{k}: printed by crit, missing from crust show")),
                }
            }
            n
        }
        (Value::Array(c), Value::Array(r)) if c.len() == r.len() => {
            c.iter().zip(r).enumerate().map(|(i, (c, r))| covers(c, r, &format!("{at}[{i}]"), skip, problems)).sum()
        }
        (Value::String(c), Value::String(r)) => {
            // A string, an enum name, or bytes (crit: base64 or quoted-printable; crust: hex).
            let same = c == r || base64_decode(c).is_some_and(|b| hex(&b) == *r) || hex(c.as_bytes()) == *r;
            if !same {
                problems.push(format!("{at}: crit {c:?}, crust {r:?}"));
            }
            0
        }
        (c, r) if c == r => 0,
        (c, r) => {
            problems.push(format!("{at}: crit {c}, crust {r}"));
            0
        }
    }
}

#[test]
fn show_prints_every_field_crit_decodes() {
    let tmp = TempDir::new("show-fields");
    let dir = tmp.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let names = make_images(&dir);
    assert!(names.len() >= 66, "{names:?}");

    let out = crust(&[os("show"), dir.as_os_str()], STEP);
    assert!(out.status.success(), "crust show: {}", String::from_utf8_lossy(&out.stderr));
    let shown: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).expect("crust show prints JSON");
    assert_eq!(shown["pages-1.img"], serde_json::json!({ "bytes": 8192, "pages": 2 }));
    assert_eq!(shown["ifaddr-10.img"], serde_json::json!({ "bytes": 17 }));

    let mut problems = Vec::new();
    let mut compared = 0;
    for name in &names {
        let crit = crit_decode(&dir.join(name));
        let entries = &crit["entries"];
        let mine = shown.get(name).unwrap_or_else(|| panic!("{name} missing from crust show"));
        let (Some(c), Some(m)) = (entries.as_array(), mine.as_array()) else { panic!("{name}: no entries") };
        assert_eq!(c.len(), m.len(), "{name}: entries, crit {entries} crust {mine}");
        let n = covers(entries, mine, name, &["extra"], &mut problems);
        assert!(n > 0, "{name}: nothing compared");
        compared += n;
        // A message queue's messages: crit lists each with its data (as
        // "extra"), crust without it, under the messages' name.
        if name.starts_with("ipcns-msg-") {
            for (i, (c, m)) in c.iter().zip(m).enumerate() {
                let msgs: Vec<Value> = c["extra"].as_array().expect("crit's messages").iter().step_by(2).cloned().collect();
                assert_eq!(msgs.len(), 2, "{name}: {c}");
                let at = format!("{name}[{i}].ipc_msg");
                compared += covers(&Value::Array(msgs), &m["ipc_msg"], &at, &[], &mut problems);
            }
        }
    }
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));

    // Spot checks that the images hold what the test is about.
    let core = &shown["core-1.img"][0];
    assert_eq!(core["tc"]["timers"]["posix"].as_array().map(Vec::len), Some(2), "posix timers: {core}");
    assert!(core["ti_aarch64"]["gpregs"]["regs"].is_array(), "{core}");
    assert!(shown["files.img"][0]["isk"]["ip_opts"]["raw"].is_object());
    assert!(shown["mm-1.img"][0]["vmas"][0]["madv"].is_u64());
    assert_eq!(shown["tcp-stream-3a9c.img"][0]["outq_len"], 9);
    assert!(shown["mountpoints-12.img"][1]["mountpoint"].is_string());
    assert!(shown["netdev-10.img"][0]["sit"]["relay_prefix"].is_array());
    assert_eq!(shown["ipcns-shm-1.img"].as_array().map(Vec::len), Some(2));
    assert_eq!(shown["bpfmap-data.img"][1]["values_bytes"], 3);
    assert!(compared > 2000, "only {compared} fields compared");
}

#[test]
fn show_prints_field_numbers_it_does_not_know() {
    let tmp = TempDir::new("show-unknown");
    let path = tmp.join("fs-7.img");
    // fs_entry { cwd_id: 3, root_id: 4 } followed by field 9 (varint 77),
    // which fs_entry does not have.
    let body = [0x08, 3, 0x10, 4, 0x48, 77];
    let mut img = Vec::new();
    let fs = crust::images::Kind::Fs;
    img.extend(fs.head_magic().unwrap().to_le_bytes());
    img.extend(fs.magic().to_le_bytes());
    img.extend((body.len() as u32).to_le_bytes());
    img.extend(body);
    std::fs::write(&path, img).unwrap();
    let out = crust(&[os("show"), path.as_os_str()], STEP);
    assert!(out.status.success(), "crust show: {}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown, serde_json::json!([{ "cwd_id": 3, "root_id": 4, "9": 77 }]));
}
