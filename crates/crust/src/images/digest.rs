//! Integrity of a dump: CRIU's images carry no checksum, so crust writes a
//! manifest beside them (`crust-digests.json`) with each file's size and a
//! CRC-32 of every block. A restore checks every file against it, so a
//! truncated or corrupted image is reported by file and offset and nothing of
//! the tree is left running. Dumps without a manifest (from criu) are taken as
//! they are.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

pub const MANIFEST: &str = "crust-digests.json";
const BLOCK: usize = 1 << 20;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    /// CRC-32 of each 1 MiB block, the last one possibly shorter.
    pub blocks: Vec<u32>,
}

/// Digests of the files of one dump, shared by the writers of that dump.
pub type Digests = Arc<Mutex<BTreeMap<String, FileDigest>>>;

/// Computes a FileDigest from data fed in any slicing.
#[derive(Default)]
pub struct BlockHasher {
    digest: FileDigest,
    hasher: crc32fast::Hasher,
    in_block: usize,
}

impl BlockHasher {
    pub fn update(&mut self, mut data: &[u8]) {
        self.digest.size += data.len() as u64;
        while !data.is_empty() {
            let n = data.len().min(BLOCK - self.in_block);
            self.hasher.update(&data[..n]);
            self.in_block += n;
            data = &data[n..];
            if self.in_block == BLOCK {
                let h = std::mem::take(&mut self.hasher);
                self.digest.blocks.push(h.finalize());
                self.in_block = 0;
            }
        }
    }

    pub fn finish(mut self) -> FileDigest {
        if self.in_block > 0 {
            self.digest.blocks.push(self.hasher.finalize());
        }
        self.digest
    }
}

/// The manifest is its own CRC-32 (8 hex digits and a newline) followed by
/// the JSON of the digests, so a damaged manifest is told from a damaged image.
pub fn manifest(digests: &BTreeMap<String, FileDigest>) -> Result<Vec<u8>> {
    let json = serde_json::to_vec_pretty(digests).map_err(|e| Error::io_other(format!("encoding {MANIFEST}"), e))?;
    let mut text = format!("{:08x}\n", crc32fast::hash(&json)).into_bytes();
    text.extend_from_slice(&json);
    Ok(text)
}

/// The manifest of a dump, if it has one.
pub fn read_manifest(dir: &Path) -> Result<Option<BTreeMap<String, FileDigest>>> {
    let path = dir.join(MANIFEST);
    let Ok(text) = std::fs::read(&path) else { return Ok(None) };
    let bad = |offset: usize, what: &str| Error::Image { file: path.clone(), offset: offset as u64, what: what.to_string() };
    if text.len() < 9 || text[8] != b'\n' {
        return Err(bad(0, "corrupted: no checksum line"));
    }
    let json = &text[9..];
    let want = std::str::from_utf8(&text[..8]).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
    if want != Some(crc32fast::hash(json)) {
        return Err(bad(0, "corrupted: its checksum does not match its contents"));
    }
    let digests: BTreeMap<String, FileDigest> = serde_json::from_slice(json).map_err(|e| bad(9, &format!("unreadable: {e}")))?;
    for (name, d) in &digests {
        // Names of files in the directory itself, nothing elsewhere.
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return Err(bad(9, &format!("names {name:?}, which is not a file of the dump")));
        }
        if d.size.div_ceil(BLOCK as u64) != d.blocks.len() as u64 {
            return Err(bad(9, &format!("lists {} blocks for the {} bytes of {name}", d.blocks.len(), d.size)));
        }
    }
    Ok(Some(digests))
}

/// Check one file against its digest; the first difference is an error naming
/// the file and the offset of the block (or end) where it starts.
pub fn verify_file(dir: &Path, name: &str, want: &FileDigest) -> Result<()> {
    let file_path = dir.join(name);
    let mut f = File::open(&file_path).map_err(|e| Error::Image {
        file: file_path.clone(),
        offset: 0,
        what: format!("missing from the dump ({e})"),
    })?;
    let size = f.metadata().ctx(|| format!("stat {}", file_path.display()))?.len();
    if size != want.size {
        return Err(Error::Image {
            file: file_path,
            offset: size.min(want.size),
            what: format!(
                "{size} bytes, but the dump wrote {}: {}",
                want.size,
                if size < want.size { "truncated" } else { "extra bytes" }
            ),
        });
    }
    let mut buf = vec![0u8; BLOCK];
    for (i, crc) in want.blocks.iter().enumerate() {
        let mut got = 0;
        while got < BLOCK {
            let n = f.read(&mut buf[got..]).ctx(|| format!("reading {}", file_path.display()))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if crc32fast::hash(&buf[..got]) != *crc {
            return Err(Error::Image {
                file: file_path,
                offset: i as u64 * BLOCK as u64,
                what: format!("corrupted: the {got} bytes from here differ from what the dump wrote"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_digests_do_not_depend_on_how_data_is_fed() {
        let data: Vec<u8> = (0..(3 * BLOCK + 1234)).map(|i| (i * 7 % 251) as u8).collect();
        let mut whole = BlockHasher::default();
        whole.update(&data);
        let mut pieces = BlockHasher::default();
        for chunk in data.chunks(4093) {
            pieces.update(chunk);
        }
        let (a, b) = (whole.finish(), pieces.finish());
        assert_eq!(a, b);
        assert_eq!(a.size, data.len() as u64);
        assert_eq!(a.blocks.len(), 4);
        assert_eq!(a.blocks[3], crc32fast::hash(&data[3 * BLOCK..]));
    }

    #[test]
    fn damage_is_reported_at_its_block() {
        let dir = std::env::temp_dir().join(format!("crust-unit-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = vec![0xabu8; 2 * BLOCK + 10];
        std::fs::write(dir.join("pages-1.img"), &data).unwrap();
        let mut h = BlockHasher::default();
        h.update(&data);
        let mut all = BTreeMap::new();
        all.insert("pages-1.img".to_string(), h.finish());
        std::fs::write(dir.join(MANIFEST), manifest(&all).unwrap()).unwrap();
        let back = read_manifest(&dir).unwrap().unwrap();
        assert_eq!(back, all);
        verify_file(&dir, "pages-1.img", &back["pages-1.img"]).unwrap();
        let mut bad = data.clone();
        bad[BLOCK + 5] ^= 1;
        std::fs::write(dir.join("pages-1.img"), &bad).unwrap();
        let err = verify_file(&dir, "pages-1.img", &back["pages-1.img"]).unwrap_err();
        assert!(matches!(err, Error::Image { offset, .. } if offset == BLOCK as u64), "{err}");
        // A damaged manifest is told apart from damaged images.
        let mut m = std::fs::read(dir.join(MANIFEST)).unwrap();
        let n = m.len();
        m[n - 3] ^= 1;
        std::fs::write(dir.join(MANIFEST), m).unwrap();
        assert!(read_manifest(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
