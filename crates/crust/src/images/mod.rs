//! CRIU's image format: file names, magic words, framing, and an image directory
//! that becomes visible only when a whole dump has been written.
//!
//! Every image but `inventory.img` starts with two u32 LE words (a head magic and
//! the image's own magic); `inventory.img` has only its own magic; raw images
//! (`pages-N.img`, tarballs, ip tool dumps) have none. Each entry is a u32 LE
//! length followed by a proto2 message, some followed by raw bytes. [`KINDS`]
//! is the one table of every image of the format: name, magic words, layout.

pub mod criu;
pub mod digest;
pub mod load;
pub mod meta;
pub mod proto;

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;

use crate::error::{Context, Error, Result};

/// The word before an image's own magic, in every image but `inventory.img` and raw ones.
pub const COMMON_MAGIC: u32 = 0x5456_4319;
/// The word before the own magic of service files (stats, irmap cache).
pub const SERVICE_MAGIC: u32 = 0x5510_5940;

/// What precedes an image's own magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Nothing: `inventory.img`, and raw images (which have no magic at all).
    None,
    /// [`COMMON_MAGIC`].
    Common,
    /// [`SERVICE_MAGIC`]: files about a dump rather than of it.
    Service,
}

impl Head {
    pub fn magic(self) -> Option<u32> {
        match self {
            Head::None => None,
            Head::Common => Some(COMMON_MAGIC),
            Head::Service => Some(SERVICE_MAGIC),
        }
    }
}

/// An image's own magic word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    Own(u32),
    /// That of another kind (CRIU gives a few images the same magic).
    As(Kind),
    /// None: a raw image (CRIU's RAW_IMAGE_MAGIC, 0), bytes from the start.
    Raw,
}

/// How many raw bytes follow an entry: the sum of its integer fields `len`,
/// times `unit`, padded to a multiple of `align`; none at all when its bool
/// field `unless` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data {
    pub len: &'static [&'static str],
    pub unit: u64,
    pub align: u64,
    pub unless: Option<&'static str>,
}

impl Data {
    pub const fn of(len: &'static [&'static str]) -> Data {
        Data { len, unit: 1, align: 1, unless: None }
    }

    pub const fn padded(self, unit: u64, align: u64) -> Data {
        Data { unit, align, ..self }
    }

    pub const fn unless(self, field: &'static str) -> Data {
        Data { unless: Some(field), ..self }
    }

    /// The number of bytes, given an entry's integer and bool fields by name
    /// (saturating: a length beyond any file is for the reader to refuse).
    pub fn size(&self, int: impl Fn(&str) -> u64, flag: impl Fn(&str) -> bool) -> u64 {
        if self.unless.is_some_and(flag) {
            return 0;
        }
        let n = self.len.iter().fold(0u64, |n, f| n.saturating_add(int(f))).saturating_mul(self.unit);
        n.checked_next_multiple_of(self.align).unwrap_or(u64::MAX)
    }
}

/// How the contents of an image are laid out after its magic words; messages
/// by their full names in `proto/*.proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Entries of one message.
    Entries(&'static str),
    /// A first entry of one message (a head), then entries of another.
    HeadThen(&'static str, &'static str),
    /// Entries each followed by raw bytes.
    WithData(&'static str, Data),
    /// Entries each followed by as many sub-entries as their field `count`
    /// says, each sub-entry followed by raw bytes.
    Nested { entry: &'static str, count: &'static str, sub: &'static str, data: Data },
    /// A head entry; then, when its bool field `chunked` is set, entries each
    /// followed by raw bytes, else raw contents to the end of the file.
    Chunked { head: &'static str, chunked: &'static str, chunk: &'static str, data: Data },
    /// Raw page contents.
    Pages,
    /// Raw bytes of some other format (ip tool dumps, tarballs...).
    Raw,
}

impl Layout {
    /// The messages the image holds.
    pub fn messages(&self) -> Vec<&'static str> {
        match *self {
            Layout::Entries(m) | Layout::WithData(m, _) => vec![m],
            Layout::HeadThen(h, m) => vec![h, m],
            Layout::Nested { entry, sub, .. } => vec![entry, sub],
            Layout::Chunked { head, chunk, .. } => vec![head, chunk],
            Layout::Pages | Layout::Raw => vec![],
        }
    }
}

/// One row of the table of image kinds.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub kind: Kind,
    /// CRIU's name for it (its magic's name, as crit prints it).
    pub criu: &'static str,
    /// Its file name: a printf pattern with at most one conversion (`%u`,
    /// `%lu`, `%d`, `%ld`: decimal; `%x`: hex; `%s`: any word).
    pub file: &'static str,
    pub head: Head,
    pub magic: Magic,
    pub layout: Layout,
}

macro_rules! kinds {
    ($($kind:ident $criu:literal $file:literal $head:ident $magic:tt $layout:expr;)*) => {
        /// Every kind of image of CRIU's format (one row each of [`KINDS`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Kind {
            $($kind,)*
        }

        /// The table of image kinds, in the order of [`Kind`].
        pub static KINDS: &[Desc] = &[$(
            Desc {
                kind: Kind::$kind,
                criu: $criu,
                file: $file,
                head: Head::$head,
                magic: kinds!(@magic $magic),
                layout: {
                    #[allow(unused_imports)]
                    use Layout::*;
                    $layout
                },
            },
        )*];
    };
    (@magic Raw) => { Magic::Raw };
    (@magic [$kind:ident]) => { Magic::As(Kind::$kind) };
    (@magic $magic:literal) => { Magic::Own($magic) };
}

// Every image of CRIU's format, once: the one place that knows an image's
// file name, magic words and messages. (CRIU's names, numbers and file name
// patterns; see its criu/include/magic.h and criu/image-desc.c. Two obsolete
// page formats, pages-%d with the pagemap magic and pages-shmem-%ld, are left
// out: the first has the name of today's pages images.)
//
// Columns: variant, CRIU's name for it, file name (a printf pattern, as CRIU
// formats it), the word before the magic, the image's own magic (a number,
// `[Kind]` for that kind's, or `Raw`), and its layout (see [`Layout`]).
kinds! {
    Inventory     "INVENTORY"       "inventory.img"            None     0x5831_3116  Entries("inventory_entry");
    Fdinfo        "FDINFO"          "fdinfo-%u.img"            Common   0x5621_3732  Entries("fdinfo_entry");
    Pagemap       "PAGEMAP"         "pagemap-%lu.img"          Common   0x5608_4025  HeadThen("pagemap_head", "pagemap_entry");
    ShmemPagemap  "SHMEM_PAGEMAP"   "pagemap-shmem-%lu.img"    Common   [Pagemap]    HeadThen("pagemap_head", "pagemap_entry");
    RegFiles      "REG_FILES"       "reg-files.img"            Common   0x5036_3636  Entries("reg_file_entry");
    ExtFiles      "EXT_FILES"       "ext-files.img"            Common   0x5925_5641  Entries("ext_file_entry");
    NsFiles       "NS_FILES"        "ns-files.img"             Common   0x6139_4011  Entries("ns_file_entry");
    EventfdFile   "EVENTFD_FILE"    "eventfd.img"              Common   0x4452_3722  Entries("eventfd_file_entry");
    EventpollFile "EVENTPOLL_FILE"  "eventpoll.img"            Common   0x4502_3858  Entries("eventpoll_file_entry");
    EventpollTfd  "EVENTPOLL_TFD"   "eventpoll-tfd.img"        Common   0x4443_3746  Entries("eventpoll_tfd_entry");
    Signalfd      "SIGNALFD"        "signalfd.img"             Common   0x5732_3820  Entries("signalfd_entry");
    InotifyFile   "INOTIFY_FILE"    "inotify.img"              Common   0x4842_4431  Entries("inotify_file_entry");
    InotifyWd     "INOTIFY_WD"      "inotify-wd.img"           Common   0x5456_2009  Entries("inotify_wd_entry");
    FanotifyFile  "FANOTIFY_FILE"   "fanotify.img"             Common   0x5509_6122  Entries("fanotify_file_entry");
    FanotifyMark  "FANOTIFY_MARK"   "fanotify-mark.img"        Common   0x5650_6035  Entries("fanotify_mark_entry");
    Core          "CORE"            "core-%u.img"              Common   0x5505_3847  Entries("core_entry");
    Ids           "IDS"             "ids-%u.img"               Common   0x5443_2030  Entries("task_kobj_ids_entry");
    Mm            "MM"              "mm-%u.img"                Common   0x5749_2820  Entries("mm_entry");
    Vmas          "VMAS"            "vmas-%u.img"              Common   0x5412_3737  Entries("vma_entry");
    Pipes         "PIPES"           "pipes.img"                Common   0x5651_3555  Entries("pipe_entry");
    PipesData     "PIPES_DATA"      "pipes-data.img"           Common   0x5645_3709  WithData("pipe_data_entry", Data::of(&["bytes"]));
    Fifo          "FIFO"            "fifo.img"                 Common   0x5836_4939  Entries("fifo_entry");
    FifoData      "FIFO_DATA"       "fifo-data.img"            Common   0x5933_3054  WithData("pipe_data_entry", Data::of(&["bytes"]));
    Pstree        "PSTREE"          "pstree.img"               Common   0x5027_3030  Entries("pstree_entry");
    Sigacts       "SIGACT"          "sigacts-%u.img"           Common   0x5534_4201  Entries("sa_entry");
    Unixsk        "UNIXSK"          "unixsk.img"               Common   0x5437_3943  Entries("unix_sk_entry");
    Inetsk        "INETSK"          "inetsk.img"               Common   0x5644_3851  Entries("inet_sk_entry");
    Packetsk      "PACKETSK"        "packetsk.img"             Common   0x6045_4618  Entries("packet_sock_entry");
    NetlinkSk     "NETLINK_SK"      "netlinksk.img"            Common   0x5800_5614  Entries("netlink_sk_entry");
    SkQueues      "SK_QUEUES"       "sk-queues.img"            Common   0x5626_4026  WithData("sk_packet_entry", Data::of(&["length"]));
    Itimers       "ITIMERS"         "itimers-%u.img"           Common   0x5746_4056  Entries("itimer_entry");
    PosixTimers   "POSIX_TIMERS"    "posix-timers-%u.img"      Common   0x5260_3957  Entries("posix_timer_entry");
    Creds         "CREDS"           "creds-%u.img"             Common   0x5402_3547  Entries("creds_entry");
    Utsns         "UTSNS"           "utsns-%u.img"             Common   0x5447_3203  Entries("utsns_entry");
    IpcVar        "IPC_VAR"         "ipcns-var-%u.img"         Common   0x5311_5007  Entries("ipc_var_entry");
    IpcnsShm      "IPCNS_SHM"       "ipcns-shm-%u.img"         Common   0x4628_3044  WithData("ipc_shm_entry", Data::of(&["size"]).padded(1, 4).unless("in_pagemaps"));
    IpcnsMsg      "IPCNS_MSG"       "ipcns-msg-%u.img"         Common   0x5545_3737  Nested { entry: "ipc_msg_entry", count: "qnum", sub: "ipc_msg", data: Data::of(&["msize"]).padded(1, 8) };
    IpcnsSem      "IPCNS_SEM"       "ipcns-sem-%u.img"         Common   0x5957_3019  WithData("ipc_sem_entry", Data::of(&["nsems"]).padded(2, 8));
    Fs            "FS"              "fs-%u.img"                Common   0x5140_3912  Entries("fs_entry");
    RemapFpath    "REMAP_FPATH"     "remap-fpath.img"          Common   0x5913_3954  Entries("remap_file_path_entry");
    GhostFile     "GHOST_FILE"      "ghost-file-%x.img"        Common   0x5258_3605  Chunked { head: "ghost_file_entry", chunked: "chunks", chunk: "ghost_chunk_entry", data: Data::of(&["len"]) };
    MemfdInode    "MEMFD_INODE"     "memfd.img"                Common   0x4845_3499  Entries("memfd_inode_entry");
    TcpStream     "TCP_STREAM"      "tcp-stream-%x.img"        Common   0x5146_5506  WithData("tcp_stream_entry", Data::of(&["inq_len", "outq_len"]));
    Mnts          "MNTS"            "mountpoints-%u.img"       Common   0x5556_3928  Entries("mnt_entry");
    Netdev        "NETDEV"          "netdev-%u.img"            Common   0x5737_3951  Entries("net_device_entry");
    Netns         "NETNS"           "netns-%u.img"             Common   0x5593_3752  Entries("netns_entry");
    Ifaddr        "IFADDR"          "ifaddr-%u.img"            None     Raw          Raw;
    Route         "ROUTE"           "route-%u.img"             None     Raw          Raw;
    Route6        "ROUTE6"          "route6-%u.img"            None     Raw          Raw;
    Rule          "RULE"            "rule-%u.img"              None     Raw          Raw;
    Iptables      "IPTABLES"        "iptables-%u.img"          None     Raw          Raw;
    Ip6tables     "IP6TABLES"       "ip6tables-%u.img"         None     Raw          Raw;
    Nftables      "NFTABLES"        "nftables-%u.img"          None     Raw          Raw;
    TmpfsImg      "TMPFS_IMG"       "tmpfs-%u.tar.gz.img"      None     Raw          Raw;
    TmpfsDev      "TMPFS_DEV"       "tmpfs-dev-%u.tar.gz.img"  None     Raw          Raw;
    Autofs        "AUTOFS"          "autofs-%u.img"            Common   0x4935_3943  Entries("autofs_entry");
    BinfmtMiscOld "BINFMT_MISC_OLD" "binfmt-misc-%u.img"       Common   [BinfmtMisc] Entries("binfmt_misc_entry");
    BinfmtMisc    "BINFMT_MISC"     "binfmt-misc.img"          Common   0x6734_3323  Entries("binfmt_misc_entry");
    TtyFiles      "TTY_FILES"       "tty.img"                  Common   0x5943_3025  Entries("tty_file_entry");
    TtyInfo       "TTY_INFO"        "tty-info.img"             Common   0x5945_3036  Entries("tty_info_entry");
    TtyData       "TTY_DATA"        "tty-data.img"             Common   0x5941_3026  Entries("tty_data_entry");
    FileLocks     "FILE_LOCKS"      "filelocks.img"            Common   0x5432_3616  Entries("file_lock_entry");
    Rlimit        "RLIMIT"          "rlimit-%u.img"            Common   0x5711_3925  Entries("rlimit_entry");
    Pages         "PAGES"           "pages-%u.img"             None     Raw          Pages;
    Signal        "SIGNAL"          "signal-s-%u.img"          Common   0x5925_5647  Entries("siginfo_entry");
    Psignal       "PSIGNAL"         "signal-p-%u.img"          Common   [Signal]     Entries("siginfo_entry");
    Tunfile       "TUNFILE"         "tunfile.img"              Common   0x5714_3751  Entries("tunfile_entry");
    Cgroup        "CGROUP"          "cgroup.img"               Common   0x5938_3330  Entries("cgroup_entry");
    Timerfd       "TIMERFD"         "timerfd.img"              Common   0x5049_3712  Entries("timerfd_entry");
    Cpuinfo       "CPUINFO"         "cpuinfo.img"              Common   0x6140_4013  Entries("cpuinfo_entry");
    Seccomp       "SECCOMP"         "seccomp.img"              Common   0x6441_3049  Entries("seccomp_entry");
    Userns        "USERNS"          "userns-%u.img"            Common   0x5547_4906  Entries("userns_entry");
    NetnfCt       "NETNF_CT"        "netns-ct-%u.img"          None     Raw          Raw;
    NetnfExp      "NETNF_EXP"       "netns-exp-%u.img"         None     Raw          Raw;
    Files         "FILES"           "files.img"                Common   0x5630_3138  Entries("file_entry");
    Timens        "TIMENS"          "timens-%u.img"            Common   0x4311_4433  Entries("timens_entry");
    Pidns         "PIDNS"           "pidns-%u.img"             Common   0x6115_7326  Entries("pidns_entry");
    BpfmapFile    "BPFMAP_FILE"     "bpfmap-file.img"          Common   0x5750_6142  Entries("bpfmap_file_entry");
    BpfmapData    "BPFMAP_DATA"     "bpfmap-data.img"          Common   0x6432_4033  WithData("bpfmap_data_entry", Data::of(&["keys_bytes", "values_bytes"]));
    Apparmor      "APPARMOR"        "apparmor.img"             Common   0x5942_3047  Entries("apparmor_entry");
    Stats         "STATS"           "stats-%s"                 Service  0x5709_3306  Entries("stats_entry");
    IrmapCache    "IRMAP_CACHE"     "irmap-cache"              Service  0x5700_4059  Entries("irmap_cache_entry");
}

impl Kind {
    /// Every kind, in table order.
    pub fn all() -> impl Iterator<Item = Kind> {
        KINDS.iter().map(|d| d.kind)
    }

    /// The kind's row of the table.
    pub fn desc(self) -> &'static Desc {
        &KINDS[self as usize]
    }

    /// The image's own magic word (0 for raw images, as CRIU has it).
    pub fn magic(self) -> u32 {
        self.own_magic().unwrap_or(0)
    }

    /// The image's own magic word; None for a raw image.
    pub fn own_magic(self) -> Option<u32> {
        match self.desc().magic {
            Magic::Own(m) => Some(m),
            Magic::As(other) => other.own_magic(),
            Magic::Raw => None,
        }
    }

    /// The word that precedes the image's own magic, if any.
    pub fn head_magic(self) -> Option<u32> {
        self.desc().head.magic()
    }

    /// How the image's contents are laid out.
    pub fn layout(self) -> Layout {
        self.desc().layout
    }

    /// Whether the image is raw bytes, with no magic and no entries.
    pub fn is_raw(self) -> bool {
        self.desc().magic == Magic::Raw
    }

    /// The file name of the image of this kind for `id` (hex where CRIU
    /// writes it in hex; a `%s` takes it in decimal).
    pub fn file_name(self, id: u64) -> String {
        let file = self.desc().file;
        let Some((prefix, conv, suffix)) = split_pattern(file) else { return file.to_string() };
        if conv == 'x' {
            format!("{prefix}{id:x}{suffix}")
        } else {
            format!("{prefix}{id}{suffix}")
        }
    }

    /// Which kind a file in an image directory is, by its name.
    pub fn of_file_name(name: &str) -> Option<Kind> {
        KINDS.iter().find(|d| name_matches(d.file, name)).map(|d| d.kind)
    }
}

/// A file name pattern as its text before the conversion, the conversion's
/// letter, and its text after; None if it has no conversion.
fn split_pattern(pattern: &str) -> Option<(&str, char, &str)> {
    let (prefix, rest) = pattern.split_once('%')?;
    let rest = rest.trim_start_matches('l');
    let conv = rest.chars().next()?;
    Some((prefix, conv, &rest[conv.len_utf8()..]))
}

fn name_matches(pattern: &str, name: &str) -> bool {
    let Some((prefix, conv, suffix)) = split_pattern(pattern) else { return name == pattern };
    let Some(id) = name.strip_prefix(prefix).and_then(|n| n.strip_suffix(suffix)) else { return false };
    let digits = |s: &str, hex: bool| !s.is_empty() && s.bytes().all(|b| if hex { b.is_ascii_hexdigit() } else { b.is_ascii_digit() });
    match conv {
        'u' => digits(id, false),
        'd' => digits(id.strip_prefix('-').unwrap_or(id), false),
        'x' => digits(id, true),
        's' => !id.is_empty() && !id.contains('/'),
        _ => false,
    }
}

/// Largest entry we accept; larger lengths mean a corrupted image.
const MAX_ENTRY: u32 = 64 << 20;

/// Where the files of a dump go when they do not go to a directory: a stream
/// to another host, one file after the other.
pub trait FileSink: Send {
    fn begin(&mut self, name: &str) -> Result<()>;
    fn data(&mut self, bytes: &[u8]) -> Result<()>;
    fn end(&mut self) -> Result<()>;
}

type SharedSink = Arc<Mutex<Box<dyn FileSink>>>;

enum Backend {
    /// Files go to a private staging directory inside `dir` and are moved into
    /// place by [`ImageDir::commit`], `inventory.img` last, so a dump that did
    /// not finish never looks like a whole one.
    Dir { dir: PathBuf, staging: PathBuf },
    /// Files go, one at a time, to a sink; the receiver sees a whole dump only
    /// once the manifest arrives, last.
    Stream { sink: SharedSink, busy: Arc<AtomicBool> },
}

/// The images of a dump being written, to a directory or to a stream.
pub struct ImageDir {
    backend: Backend,
    names: Vec<String>,
    digests: digest::Digests,
    committed: bool,
}

impl ImageDir {
    pub fn create(dir: &Path) -> Result<ImageDir> {
        create_private_dir(dir)?;
        remove_stale_staging(dir);
        let staging = dir.join(format!(".crust-staging-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .ctx(|| format!("creating {}", staging.display()))?;
        Ok(ImageDir::with(Backend::Dir { dir: dir.to_path_buf(), staging }))
    }

    /// Images sent to `sink` as they are written, nothing on disk.
    pub fn stream(sink: Box<dyn FileSink>) -> ImageDir {
        ImageDir::with(Backend::Stream { sink: Arc::new(Mutex::new(sink)), busy: Arc::default() })
    }

    fn with(backend: Backend) -> ImageDir {
        ImageDir { backend, names: Vec::new(), digests: Default::default(), committed: false }
    }

    /// Start a file: a new file in the staging directory, or the next file of the stream.
    fn open(&mut self, name: &str) -> Result<Out> {
        self.names.push(name.to_string());
        match &self.backend {
            Backend::Dir { staging, .. } => {
                let path = staging.join(name);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .ctx(|| format!("creating image {}", path.display()))?;
                Ok(Out::File(BufWriter::with_capacity(1 << 20, file)))
            }
            Backend::Stream { sink, busy } => {
                // One file at a time: the stream has no way to interleave them.
                if busy.swap(true, Ordering::SeqCst) {
                    return Err(Error::Invalid(format!("{name}: another image is still being streamed")));
                }
                lock(sink).begin(name)?;
                Ok(Out::Stream { sink: sink.clone(), busy: busy.clone(), buf: Vec::with_capacity(STREAM_CHUNK) })
            }
        }
    }

    /// A new image file named `name`, with the magic words of `kind` already written.
    pub fn writer(&mut self, name: &str, kind: Kind) -> Result<ImageWriter> {
        let out = self.open(name)?;
        let mut w = ImageWriter { out, name: name.to_string(), hasher: digest::BlockHasher::default(), digests: self.digests.clone() };
        for magic in [kind.head_magic(), kind.own_magic()].into_iter().flatten() {
            w.put(&magic.to_le_bytes())?;
        }
        Ok(w)
    }

    /// A file of crust's own beside the images (JSON; not a CRIU image).
    pub fn write_json<T: serde::Serialize>(&mut self, name: &str, value: &T) -> Result<u64> {
        let text = serde_json::to_vec_pretty(value).map_err(|e| Error::io_other(format!("encoding {name}"), e))?;
        let mut w = ImageWriter { out: self.open(name)?, name: name.to_string(), hasher: digest::BlockHasher::default(), digests: self.digests.clone() };
        w.put(&text)?;
        w.finish()
    }

    /// A symbolic link among the images to `target` (criu's `parent` link
    /// from a dump to the one before it in a chain), put in place with them.
    pub fn symlink(&mut self, name: &str, target: &Path) -> Result<()> {
        match &self.backend {
            Backend::Dir { staging, .. } => {
                let path = staging.join(name);
                std::os::unix::fs::symlink(target, &path).ctx(|| format!("creating link {}", path.display()))?;
                self.names.push(name.to_string());
                Ok(())
            }
            Backend::Stream { .. } => Err(Error::Invalid(format!("{name}: a streamed dump cannot link to images on this host"))),
        }
    }

    /// Make the dump whole: write the digests last of all; for a directory,
    /// sync, then move every file into place, inventory last.
    pub fn commit(self) -> Result<()> {
        self.commit_unless(|| Ok(()))
    }

    /// As [`ImageDir::commit`], but `stop` has the last word once everything
    /// is synced and before anything is moved into place: syncing a large
    /// dump takes long, and a dump stopped meanwhile must leave nothing.
    pub fn commit_unless(mut self, stop: impl Fn() -> Result<()>) -> Result<()> {
        let digests = self.digests.lock().map(|d| d.clone()).unwrap_or_default();
        let manifest = digest::manifest(&digests)?;
        let mut w = ImageWriter { out: self.open(digest::MANIFEST)?, name: String::new(), hasher: Default::default(), digests: Default::default() };
        w.put(&manifest)?;
        w.finish()?;
        if let Backend::Dir { dir, staging } = &self.backend {
            let inventory = "inventory.img";
            let mut names = std::mem::take(&mut self.names);
            names.sort_by_key(|n| n == inventory);
            for name in &names {
                let from = staging.join(name);
                // A link has nothing to sync (and may point elsewhere from here).
                if fs::symlink_metadata(&from).is_ok_and(|m| m.is_symlink()) {
                    continue;
                }
                File::open(&from).and_then(|f| f.sync_all()).ctx(|| format!("syncing {}", from.display()))?;
            }
            stop()?;
            let _ = fs::remove_file(dir.join(inventory));
            for name in &names {
                let to = dir.join(name);
                fs::rename(staging.join(name), &to).ctx(|| format!("moving image into place as {}", to.display()))?;
            }
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            let _ = fs::remove_dir(staging);
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for ImageDir {
    fn drop(&mut self) {
        if let (false, Backend::Dir { staging, .. }) = (self.committed, &self.backend) {
            let _ = fs::remove_dir_all(staging);
        }
    }
}

/// A directory for images, the owner's only (0700): images hold process memory.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ctx(|| format!("creating images directory {}", dir.display()))
    } else {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .ctx(|| format!("making images directory {} private (0700)", dir.display()))
    }
}

/// Write `data` as `path` (0600), whole or not at all: a temporary file in
/// the same directory, synced, then renamed over `path`.
pub fn write_file_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = path.with_file_name(format!(".{name}.crust-{}-{nonce}", std::process::id()));
    let written = (|| {
        // A new file, never one (or a link) someone put there.
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.ctx(|| format!("writing {}", path.display()))
}

/// An image file of one entry (a stats image, say), written atomically.
pub fn write_image_file<M: Message>(path: &Path, kind: Kind, msg: &M) -> Result<()> {
    let mut data = Vec::new();
    for magic in [kind.head_magic(), kind.own_magic()].into_iter().flatten() {
        data.extend_from_slice(&magic.to_le_bytes());
    }
    let body = msg.encode_to_vec();
    data.extend_from_slice(&(body.len() as u32).to_le_bytes());
    data.extend_from_slice(&body);
    write_file_atomically(path, &data)
}

fn lock(sink: &SharedSink) -> std::sync::MutexGuard<'_, Box<dyn FileSink>> {
    sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Staging directories left by a crust that was killed mid-dump.
fn remove_stale_staging(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(".crust-staging-")) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Bytes of a streamed file sent at once.
const STREAM_CHUNK: usize = 1 << 20;

enum Out {
    File(BufWriter<File>),
    Stream { sink: SharedSink, busy: Arc<AtomicBool>, buf: Vec<u8> },
}

/// Writes framed entries into one image file.
pub struct ImageWriter {
    out: Out,
    name: String,
    hasher: digest::BlockHasher,
    digests: digest::Digests,
}

impl ImageWriter {
    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        match &mut self.out {
            Out::File(f) => f.write_all(data).ctx(|| format!("writing image {}", self.name)),
            Out::Stream { sink, buf, .. } => {
                buf.extend_from_slice(data);
                if buf.len() >= STREAM_CHUNK {
                    lock(sink).data(buf)?;
                    buf.clear();
                }
                Ok(())
            }
        }
    }

    pub fn entry<M: Message>(&mut self, msg: &M) -> Result<()> {
        let body = msg.encode_to_vec();
        self.put(&(body.len() as u32).to_le_bytes())?;
        self.put(&body)
    }

    /// Raw bytes: page contents, or the payload that follows a pipe-data entry.
    pub fn raw(&mut self, data: &[u8]) -> Result<()> {
        self.put(data)
    }

    pub fn finish(mut self) -> Result<u64> {
        match &mut self.out {
            Out::File(f) => f.flush().ctx(|| format!("writing image {}", self.name))?,
            Out::Stream { sink, busy, buf } => {
                let mut s = lock(sink);
                if !buf.is_empty() {
                    s.data(buf)?;
                }
                s.end()?;
                busy.store(false, Ordering::SeqCst);
            }
        }
        let digest = std::mem::take(&mut self.hasher).finish();
        let bytes = digest.size;
        if let Ok(mut all) = self.digests.lock() {
            all.insert(std::mem::take(&mut self.name), digest);
        }
        Ok(bytes)
    }
}

/// Reads framed entries of one image file; every error names the file and offset.
pub struct ImageReader {
    input: BufReader<File>,
    path: PathBuf,
    offset: u64,
    /// The file's size when opened: no length read from it may reach past it.
    size: u64,
}

impl ImageReader {
    pub fn open(path: &Path, kind: Kind) -> Result<ImageReader> {
        let file = File::open(path).ctx(|| format!("opening image {}", path.display()))?;
        let size = file.metadata().ctx(|| format!("stat image {}", path.display()))?.len();
        // Small images (all but pages) get a buffer of their size, not 1 MiB.
        let buf = size.clamp(64, 1 << 20) as usize;
        let mut r = ImageReader { input: BufReader::with_capacity(buf, file), path: path.to_path_buf(), offset: 0, size };
        for magic in [kind.head_magic(), kind.own_magic()].into_iter().flatten() {
            r.expect_magic(magic)?;
        }
        Ok(r)
    }

    /// An error about the image at the current offset.
    pub fn error(&self, what: impl Into<String>) -> Error {
        Error::Image { file: self.path.clone(), offset: self.offset, what: what.into() }
    }

    fn expect_magic(&mut self, want: u32) -> Result<()> {
        let mut w = [0u8; 4];
        self.exact(&mut w, "magic")?;
        let got = u32::from_le_bytes(w);
        if got != want {
            self.offset -= 4;
            return Err(self.error(format!("bad magic {got:#010x}, expected {want:#010x}")));
        }
        Ok(())
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(self.error(format!("truncated: {what} needs {} bytes, only {got} left", buf.len())))
                }
                Ok(n) => {
                    got += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(format!("read error: {e}"))),
            }
        }
        Ok(())
    }

    /// The next entry, or None at a clean end of file.
    pub fn read_entry<M: Message + Default>(&mut self) -> Result<Option<M>> {
        let Some((start, body)) = self.next_raw()? else { return Ok(None) };
        M::decode(body.as_slice()).map(Some).map_err(|e| Error::Image {
            file: self.path.clone(),
            offset: start,
            what: format!("undecodable {}: {e}", std::any::type_name::<M>().rsplit("::").next().unwrap_or("entry")),
        })
    }

    /// The bytes of the next entry and the offset they start at, or None at a
    /// clean end of file.
    pub fn next_raw(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let mut len = [0u8; 4];
        let n = loop {
            match self.input.read(&mut len[..1]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.error(format!("read error: {e}"))),
                Ok(n) => break n,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        self.offset += 1;
        self.exact(&mut len[1..], "entry length")?;
        let len = u32::from_le_bytes(len);
        if len > MAX_ENTRY {
            self.offset -= 4;
            return Err(self.error(format!("entry length {len} is beyond any valid entry")));
        }
        let left = self.left();
        if u64::from(len) > left {
            self.offset -= 4;
            return Err(self.error(format!("truncated: an entry of {len} bytes, only {left} left")));
        }
        let start = self.offset;
        let mut body = vec![0u8; len as usize];
        self.exact(&mut body, "entry")?;
        Ok(Some((start, body)))
    }

    /// The path of the image being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Exactly one entry must be there.
    pub fn one<M: Message + Default>(&mut self) -> Result<M> {
        self.read_entry()?.ok_or_else(|| self.error("expected an entry, found end of file"))
    }

    /// Bytes of the file after the current offset.
    fn left(&self) -> u64 {
        self.size.saturating_sub(self.offset)
    }

    /// `len` raw bytes; a length beyond the file is reported, not allocated.
    pub fn raw(&mut self, len: u64) -> Result<Vec<u8>> {
        let left = self.left();
        let n = usize::try_from(len).ok().filter(|_| len <= left);
        let Some(n) = n else {
            return Err(self.error(format!("truncated: raw data needs {len} bytes, only {left} left")));
        };
        let mut buf = vec![0u8; n];
        self.exact(&mut buf, "raw data")?;
        Ok(buf)
    }

    /// Skips `len` raw bytes; a length beyond the file is reported.
    pub fn skip(&mut self, len: u64) -> Result<()> {
        let left = self.left();
        if len > left {
            return Err(self.error(format!("truncated: raw data needs {len} bytes, only {left} left")));
        }
        self.input.seek_relative(len as i64).map_err(|e| self.error(format!("seek: {e}")))?;
        self.offset += len;
        Ok(())
    }

    /// Everything up to the end of the file.
    pub fn rest(&mut self) -> Result<Vec<u8>> {
        let left = self.left();
        self.raw(left)
    }

    pub fn raw_into(&mut self, buf: &mut [u8]) -> Result<()> {
        self.exact(buf, "page data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::proto::PstreeEntry;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("crust-unit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn entries_round_trip_and_damage_is_located() {
        let d = temp_dir("images");
        let mut dir = ImageDir::create(&d).unwrap();
        let mut w = dir.writer("pstree.img", Kind::Pstree).unwrap();
        let entries: Vec<PstreeEntry> =
            (1..=3).map(|i| PstreeEntry { pid: i, ppid: i - 1, pgid: 1, sid: 1, threads: vec![i, i + 100] }).collect();
        for e in &entries {
            w.entry(e).unwrap();
        }
        let len = w.finish().unwrap();
        assert!(!d.join("pstree.img").exists(), "nothing is visible before commit");
        dir.commit().unwrap();
        let path = d.join("pstree.img");
        assert_eq!(fs::metadata(&path).unwrap().len(), len);
        let mut r = ImageReader::open(&path, Kind::Pstree).unwrap();
        let mut back = Vec::new();
        while let Some(e) = r.read_entry::<PstreeEntry>().unwrap() {
            back.push(e);
        }
        assert_eq!(back, entries);

        // Cut inside the second entry: the error names the file and an offset in it.
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let mut r = ImageReader::open(&path, Kind::Pstree).unwrap();
        let err = loop {
            match r.read_entry::<PstreeEntry>() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a truncated image read to its end"),
                Err(e) => break e,
            }
        };
        match err {
            Error::Image { file, offset, .. } => {
                assert_eq!(file, path);
                assert!(offset > 8 && offset < len, "offset {offset}");
            }
            other => panic!("{other}"),
        }
        // A wrong magic is refused at offset 4.
        let err = ImageReader::open(&path, Kind::Mm).err().expect("wrong kind");
        assert!(matches!(err, Error::Image { offset: 4, .. }), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn file_kinds_by_name() {
        assert_eq!(Kind::of_file_name("core-1234.img"), Some(Kind::Core));
        assert_eq!(Kind::of_file_name("pages-1.img"), Some(Kind::Pages));
        assert_eq!(Kind::of_file_name("pagemap-7.img"), Some(Kind::Pagemap));
        assert_eq!(Kind::of_file_name("pagemap-shmem-81234.img"), Some(Kind::ShmemPagemap));
        assert_eq!(Kind::of_file_name("pipes-data.img"), Some(Kind::PipesData));
        assert_eq!(Kind::of_file_name("fifo-data.img"), Some(Kind::FifoData));
        assert_eq!(Kind::of_file_name("mountpoints-12.img"), Some(Kind::Mnts));
        assert_eq!(Kind::of_file_name("netns-10.img"), Some(Kind::Netns));
        assert_eq!(Kind::of_file_name("netns-ct-10.img"), Some(Kind::NetnfCt));
        assert_eq!(Kind::of_file_name("signal-p-9.img"), Some(Kind::Psignal));
        assert_eq!(Kind::of_file_name("tmpfs-dev-55.tar.gz.img"), Some(Kind::TmpfsDev));
        assert_eq!(Kind::of_file_name("binfmt-misc-3.img"), Some(Kind::BinfmtMiscOld));
        assert_eq!(Kind::of_file_name("binfmt-misc.img"), Some(Kind::BinfmtMisc));
        assert_eq!(Kind::of_file_name("stats-dump"), Some(Kind::Stats));
        assert_eq!(Kind::of_file_name("stats-restore"), Some(Kind::Stats));
        assert_eq!(Kind::of_file_name("irmap-cache"), Some(Kind::IrmapCache));
        // Hex where CRIU writes hex (ghost files and TCP streams by inode)...
        assert_eq!(Kind::of_file_name("ghost-file-1f.img"), Some(Kind::GhostFile));
        assert_eq!(Kind::of_file_name("ghost-file-10.img"), Some(Kind::GhostFile));
        assert_eq!(Kind::of_file_name("tcp-stream-3a9c.img"), Some(Kind::TcpStream));
        assert_eq!(Kind::GhostFile.file_name(31), "ghost-file-1f.img");
        assert_eq!(Kind::TcpStream.file_name(0x3a9c), "tcp-stream-3a9c.img");
        // ...and only there.
        assert_eq!(Kind::of_file_name("core-1f.img"), None);
        assert_eq!(Kind::of_file_name("pagemap-shmem-ab.img"), None);
        assert_eq!(Kind::of_file_name("core-.img"), None);
        assert_eq!(Kind::of_file_name("core-1"), None);
        assert_eq!(Kind::of_file_name("stats-"), None);
        assert_eq!(Kind::of_file_name("crust-digests.json"), None);
    }

    #[test]
    fn every_kind_file_name_maps_back_to_it_alone() {
        for d in KINDS {
            let mut names = vec![d.kind.file_name(42), d.kind.file_name(0xbeef)];
            if d.file.contains("%s") {
                names.push(d.file.replace("%s", "dump"));
            }
            for name in names {
                let matching: Vec<Kind> = KINDS.iter().filter(|o| name_matches(o.file, &name)).map(|o| o.kind).collect();
                assert_eq!(matching, [d.kind], "{name} ({})", d.file);
                assert_eq!(Kind::of_file_name(&name), Some(d.kind), "{name}");
            }
            let hex = d.kind.file_name(0xbeef);
            assert_eq!(hex.contains("beef"), d.file.contains("%x"), "{hex}: hex only where CRIU writes hex");
        }
    }

    #[test]
    fn the_table_is_whole_and_consistent() {
        use prost_reflect::{DescriptorPool, Kind as FieldKind};
        let pool = DescriptorPool::decode(proto::DESCRIPTOR_SET).unwrap();
        let field = |msg: &str, name: &str| {
            let m = pool.get_message_by_name(msg).unwrap_or_else(|| panic!("{msg} is not in the schema"));
            let f = m.get_field_by_name(name).unwrap_or_else(|| panic!("{msg} has no field {name}"));
            assert!(!f.is_list(), "{msg}.{name} is repeated");
            f.kind()
        };
        let int = |msg: &str, name: &str| {
            let k = field(msg, name);
            assert!(
                matches!(k, FieldKind::Uint32 | FieldKind::Uint64 | FieldKind::Int32 | FieldKind::Int64),
                "{msg}.{name} is a {k:?}, not a length"
            );
        };
        let boolean = |msg: &str, name: &str| assert_eq!(field(msg, name), FieldKind::Bool, "{msg}.{name}");
        let data = |msg: &str, d: &Data| {
            assert!(!d.len.is_empty() && d.unit > 0 && d.align > 0, "{msg}: {d:?}");
            d.len.iter().for_each(|f| int(msg, f));
            if let Some(f) = d.unless {
                boolean(msg, f);
            }
        };
        let mut names = std::collections::BTreeSet::new();
        for (i, d) in KINDS.iter().enumerate() {
            assert_eq!(d.kind as usize, i, "{:?} is not at its own row", d.kind);
            assert!(names.insert(d.criu), "{} twice", d.criu);
            for m in d.layout.messages() {
                assert!(pool.get_message_by_name(m).is_some(), "{:?}: {m} is not in the embedded schema", d.kind);
            }
            match d.layout {
                Layout::WithData(m, dd) => data(m, &dd),
                Layout::Nested { entry, count, sub, data: dd } => {
                    int(entry, count);
                    data(sub, &dd);
                }
                Layout::Chunked { head, chunked, chunk, data: dd } => {
                    boolean(head, chunked);
                    data(chunk, &dd);
                }
                _ => {}
            }
            // Raw images: no magic words, no entries; the others have both.
            let raw = matches!(d.layout, Layout::Pages | Layout::Raw);
            assert_eq!(d.kind.is_raw(), raw, "{:?}", d.kind);
            assert_eq!(d.head == Head::None, raw || d.kind == Kind::Inventory, "{:?}", d.kind);
            if let Magic::As(other) = d.magic {
                assert!(matches!(other.desc().magic, Magic::Own(_)), "{:?} borrows a magic {other:?} does not own", d.kind);
            }
            // Magic words are told apart: an own magic is not a head's, and
            // shared only where the table says so.
            if let Magic::Own(m) = d.magic {
                assert!(m != COMMON_MAGIC && m != SERVICE_MAGIC && m != 0, "{:?}", d.kind);
                let owners = KINDS.iter().filter(|o| o.magic == Magic::Own(m)).count();
                assert_eq!(owners, 1, "{:?}: magic {m:#x} owned twice", d.kind);
            }
        }
    }

    /// crit's magic.py: CRIU's magic numbers by name.
    fn crit_magics() -> Option<Vec<(String, u32)>> {
        let path = Path::new("/usr/lib/python3/dist-packages/pycriu/images/magic.py");
        let text = fs::read_to_string(path).ok().or_else(|| {
            let out = std::process::Command::new("python3")
                .args(["-c", "import pycriu.images.magic as m; print(open(m.__file__).read())"])
                .output()
                .ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })?;
        let magics = text
            .lines()
            .filter_map(|l| {
                let rest = l.trim().strip_prefix("by_name['")?;
                let (name, value) = rest.split_once("']")?;
                let value = value.trim().strip_prefix('=')?.trim().parse().ok()?;
                Some((name.to_string(), value))
            })
            .collect();
        Some(magics)
    }

    #[test]
    fn every_magic_of_crit_is_in_the_table() {
        let Some(magics) = crit_magics() else {
            eprintln!("skipped: crit's pycriu (magic.py) is not installed");
            return;
        };
        assert!(magics.len() > 60, "magic.py read wrong: {magics:?}");
        for (name, value) in magics {
            match name.as_str() {
                // An image version and the kerndat cache's magic: not images.
                "CRTOOLS_IMAGES_V1_1" | "KDAT" => continue,
                "IMG_COMMON" => assert_eq!(Head::Common.magic(), Some(value)),
                "IMG_SERVICE" => assert_eq!(Head::Service.magic(), Some(value)),
                _ => {
                    let d = KINDS.iter().find(|d| d.criu == name).unwrap_or_else(|| panic!("{name} is not in the table"));
                    assert_eq!(d.kind.own_magic(), Some(value), "{name}: {value:#x}");
                }
            }
        }
    }

    #[test]
    fn a_dump_that_is_dropped_leaves_nothing() {
        let d = temp_dir("dropped");
        let mut dir = ImageDir::create(&d).unwrap();
        dir.writer("inventory.img", Kind::Inventory).unwrap().finish().unwrap();
        drop(dir);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
        fs::remove_dir_all(&d).unwrap();
    }
}
