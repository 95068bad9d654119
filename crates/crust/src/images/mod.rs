//! CRIU's image format: file names, magic words, framing, and an image directory
//! that becomes visible only when a whole dump has been written.
//!
//! Every image but `inventory.img` starts with two u32 LE words (a head magic and
//! the image's own magic); `inventory.img` has only its own magic; `pages-N.img` is
//! raw. Each entry is a u32 LE length followed by a proto2 message.

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

pub const COMMON_MAGIC: u32 = 0x5456_4319;
pub const SERVICE_MAGIC: u32 = 0x5510_5940;

/// The kinds of image file crust reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Inventory,
    Pstree,
    Core,
    Mm,
    Pagemap,
    Pages,
    Files,
    Fdinfo,
    Fs,
    Ids,
    Cgroup,
    PipesData,
    SkQueues,
    RemapFpath,
    GhostFile,
    TtyInfo,
    Stats,
}

impl Kind {
    /// The image's own magic word (0 for raw images).
    pub fn magic(self) -> u32 {
        match self {
            Kind::Inventory => 0x5831_3116,
            Kind::Pstree => 0x5027_3030,
            Kind::Core => 0x5505_3847,
            Kind::Mm => 0x5749_2820,
            Kind::Pagemap => 0x5608_4025,
            Kind::Pages => 0,
            Kind::Files => 0x5630_3138,
            Kind::Fdinfo => 0x5621_3732,
            Kind::Fs => 0x5140_3912,
            Kind::Ids => 0x5443_2030,
            Kind::Cgroup => 0x5938_3330,
            Kind::PipesData => 0x5645_3709,
            Kind::SkQueues => 0x5626_4026,
            Kind::RemapFpath => 0x5913_3954,
            Kind::GhostFile => 0x5258_3605,
            Kind::TtyInfo => 0x5945_3036,
            Kind::Stats => 0x5709_3306,
        }
    }

    /// The word that precedes the image's own magic, if any.
    fn head_magic(self) -> Option<u32> {
        match self {
            Kind::Inventory | Kind::Pages => None,
            Kind::Stats => Some(SERVICE_MAGIC),
            _ => Some(COMMON_MAGIC),
        }
    }

    /// Which kind a file in an image directory is, by its name.
    pub fn of_file_name(name: &str) -> Option<Kind> {
        let stem = name.strip_suffix(".img").unwrap_or(name);
        // Ids are decimal, but hexadecimal in ghost-file-ID.img (as CRIU names it).
        let prefix = stem.rsplit_once('-').map_or(stem, |(p, id)| {
            if id.bytes().all(|b| b.is_ascii_digit()) || (p == "ghost-file" && id.bytes().all(|b| b.is_ascii_hexdigit())) {
                p
            } else {
                stem
            }
        });
        Some(match prefix {
            "inventory" => Kind::Inventory,
            "pstree" => Kind::Pstree,
            "core" => Kind::Core,
            "mm" => Kind::Mm,
            "pagemap" | "pagemap-shmem" => Kind::Pagemap,
            "pages" => Kind::Pages,
            "files" => Kind::Files,
            "fdinfo" => Kind::Fdinfo,
            "fs" => Kind::Fs,
            "ids" => Kind::Ids,
            "cgroup" => Kind::Cgroup,
            "pipes-data" => Kind::PipesData,
            "sk-queues" => Kind::SkQueues,
            "remap-fpath" => Kind::RemapFpath,
            "ghost-file" => Kind::GhostFile,
            "tty-info" => Kind::TtyInfo,
            "stats-dump" | "stats-restore" => Kind::Stats,
            _ => return None,
        })
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
        if let Some(head) = kind.head_magic() {
            w.put(&head.to_le_bytes())?;
        }
        if kind != Kind::Pages {
            w.put(&kind.magic().to_le_bytes())?;
        }
        Ok(w)
    }

    /// A file of crust's own beside the images (JSON; not a CRIU image).
    pub fn write_json<T: serde::Serialize>(&mut self, name: &str, value: &T) -> Result<u64> {
        let text = serde_json::to_vec_pretty(value).map_err(|e| Error::Invalid(format!("encoding {name}: {e}")))?;
        let mut w = ImageWriter { out: self.open(name)?, name: name.to_string(), hasher: digest::BlockHasher::default(), digests: self.digests.clone() };
        w.put(&text)?;
        w.finish()
    }

    /// Make the dump whole: write the digests last of all; for a directory,
    /// sync, then move every file into place, inventory last.
    pub fn commit(mut self) -> Result<()> {
        let digests = self.digests.lock().map(|d| d.clone()).unwrap_or_default();
        let manifest = digest::manifest(&digests)?;
        let mut w = ImageWriter { out: self.open(digest::MANIFEST)?, name: String::new(), hasher: Default::default(), digests: Default::default() };
        w.put(&manifest)?;
        w.finish()?;
        if let Backend::Dir { dir, staging } = &self.backend {
            let inventory = "inventory.img";
            let _ = fs::remove_file(dir.join(inventory));
            let mut names = std::mem::take(&mut self.names);
            names.sort_by_key(|n| n == inventory);
            for name in &names {
                let from = staging.join(name);
                File::open(&from).and_then(|f| f.sync_all()).ctx(|| format!("syncing {}", from.display()))?;
            }
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
    if let Some(head) = kind.head_magic() {
        data.extend_from_slice(&head.to_le_bytes());
    }
    data.extend_from_slice(&kind.magic().to_le_bytes());
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
        if let Some(head) = kind.head_magic() {
            r.expect_magic(head)?;
        }
        if kind != Kind::Pages {
            r.expect_magic(kind.magic())?;
        }
        Ok(r)
    }

    fn error(&self, what: impl Into<String>) -> Error {
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
        M::decode(body.as_slice()).map(Some).map_err(|e| Error::Image {
            file: self.path.clone(),
            offset: start,
            what: format!("undecodable {}: {e}", std::any::type_name::<M>().rsplit("::").next().unwrap_or("entry")),
        })
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
        assert_eq!(Kind::of_file_name("pipes-data.img"), Some(Kind::PipesData));
        assert_eq!(Kind::of_file_name("stats-dump"), Some(Kind::Stats));
        assert_eq!(Kind::of_file_name("crust-digests.json"), None);
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
