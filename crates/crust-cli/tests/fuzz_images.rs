//! A mutation fuzzer of everything that reads images, on stable Rust (cargo-fuzz
//! needs nightly): the loader (`crust::restore::load`, pages in the directory
//! and streamed), the checks before a restore (`restore::check::problems`),
//! `crust show` (`show::show_dir`) and `crust explain`, all in-process.
//!
//! Seeds are real dumps of the bundled workloads (threads, a process tree with
//! a deleted file, pipes with data, unix sockets with queues, eventfd, signalfd,
//! timerfds and epoll, shared memory, zombies, signal state, file locks), made with the
//! crust binary into a tmpfs directory. Each case hard-links one seed into a
//! fresh directory and rewrites a few of its files with mutations: bit flips,
//! bytes and entry lengths set to edge values, protobuf fields (found by
//! walking the wire format, nested messages too) set to edge values,
//! deleted, duplicated or added, entries duplicated, deleted or swapped,
//! truncation, insertion, files deleted, swapped or taken from another seed,
//! pages images resized. The CRC manifest is recomputed over the mutated files
//! in most cases (so that mutations reach the parsers behind it), removed in
//! some, and left stale in others.
//!
//! Every case must end in Ok or an Err: a panic fails the run (which goes on,
//! and fails at the end), and a case that takes longer than
//! CRUST_FUZZ_CASE_SECS (10) ends it at once. A failing case is kept (with
//! what was done to it) under CRUST_FUZZ_CRASHES (default
//! $TMPDIR/crust-fuzz-crashes).
//!
//! Environment:
//!   CRUST_FUZZ_SECS=N     how long to run (default 60; 0 skips)
//!   CRUST_FUZZ_SEED=N     the seed of the mutations (default fixed; decimal or 0x hex)
//!   CRUST_FUZZ_CASE=N     run only case N of that seed (on fresh dumps: pids and
//!                         addresses differ between runs, so a kept directory is
//!                         the exact reproducer)
//!   CRUST_FUZZ_ONLY=a,b   only these workloads as seeds (of test_mm, family, sockets,
//!                         anonfds, sharedmem, orphans, sigstate, locks)
//!   CRUST_FUZZ_REPLAY=DIR run the readers on one directory (a kept case) and print the outcome
//!
//! Run longer with
//!   CRUST_FUZZ_SECS=3600 cargo test --release -p crust-cli --test fuzz_images -- --nocapture

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{crust, dump_args, Workload};
use crust::images::digest::{self, BlockHasher, FileDigest, MANIFEST};
use crust::images::load::Pages;
use crust::images::proto::{GhostFileEntry, PipeDataEntry, SkPacketEntry};
use crust::images::Kind;
use prost::Message;

/// Written straight to stderr, so that `cargo test` shows it without --nocapture.
fn say(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{text}");
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let n = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(n.unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

// ---------------------------------------------------------------------------
// A small PRNG (SplitMix64): the same seed gives the same mutations, whatever
// the version of any crate.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }

    /// One of `v`, if it has any.
    fn choose<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| self.pick(v))
    }

    /// An index by weight.
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut r = (self.next() % total as u64) as u32;
        for (i, &w) in weights.iter().enumerate() {
            if r < w {
                return i;
            }
            r -= w;
        }
        weights.len() - 1
    }
}

/// Numbers at the edges: where sums, products, shifts and casts go wrong.
fn edge_value(rng: &mut Rng, old: u64) -> u64 {
    const PAGE: u64 = 4096;
    let v = [
        0,
        1,
        2,
        7,
        0x40,
        0x7f,
        0x80,
        0xff,
        0x100,
        0xfff,
        PAGE,
        0xffff,
        0x1_0000,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        0x1_0000_0000,
        1 << 47,
        0x7fff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        u64::MAX,
        u64::MAX - PAGE + 1,
        u64::MAX - 1,
        (1 << 22) + 1,
        64 << 20,
        old.wrapping_add(1),
        old.wrapping_sub(1),
        old.wrapping_add(PAGE),
        old.wrapping_mul(PAGE),
        old ^ (1 << rng.below(64)),
        u64::MAX - old,
        u64::MAX - rng.below(1 << 16) as u64,
        (u64::MAX - rng.below(1 << 16) as u64) & !(PAGE - 1),
        old.wrapping_neg(),
        rng.next(),
        rng.next() & !(PAGE - 1),
        rng.next() % 70,
    ];
    *rng.pick(&v)
}

// ---------------------------------------------------------------------------
// Protobuf wire format, just enough to find fields (in nested messages too),
// change them and write the message again.

#[derive(Clone, Debug)]
enum Value {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Field {
    number: u64,
    value: Value,
}

fn read_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn parse_message(b: &[u8]) -> Option<Vec<Field>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let key = read_varint(b, &mut at)?;
        let number = key >> 3;
        if number == 0 || number > (1 << 29) {
            return None;
        }
        let value = match key & 7 {
            0 => Value::Varint(read_varint(b, &mut at)?),
            1 => {
                let v = b.get(at..at + 8)?;
                at += 8;
                Value::Fixed64(u64::from_le_bytes(v.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(read_varint(b, &mut at)?).ok()?;
                let v = b.get(at..at.checked_add(len)?)?;
                at += len;
                Value::Bytes(v.to_vec())
            }
            5 => {
                let v = b.get(at..at + 4)?;
                at += 4;
                Value::Fixed32(u32::from_le_bytes(v.try_into().ok()?))
            }
            _ => return None,
        };
        out.push(Field { number, value });
    }
    Some(out)
}

fn encode_message(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        let wire = match f.value {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        };
        put_varint(&mut out, f.number << 3 | wire);
        match &f.value {
            Value::Varint(v) => put_varint(&mut out, *v),
            Value::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bytes(b) => {
                put_varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
    out
}

/// Paths and names that mean something to the code that reads them.
const STRINGS: &[&str] = &["", "/", ".", "..", "../../../etc/passwd", "/proc/self/mem", "/dev/zero", "a\0b", "/nonexistent/x"];

/// Where a mutation landed: the field numbers from the entry down, and the
/// new value if it set a varint.
struct Landed {
    what: String,
    numbers: Vec<u64>,
    varint: Option<u64>,
}

/// Set every varint reached by the field numbers `numbers` (through nested
/// messages, every repeated instance) to `value`: `vmas.pgoff` of all vmas,
/// say, so that the one vma that matters is hit too.
fn set_all(fields: &mut [Field], numbers: &[u64], value: u64) {
    let Some((&first, rest)) = numbers.split_first() else { return };
    for f in fields.iter_mut().filter(|f| f.number == first) {
        match &mut f.value {
            Value::Varint(v) if rest.is_empty() => *v = value,
            Value::Bytes(b) if !rest.is_empty() => {
                if let Some(mut inner) = parse_message(b) {
                    set_all(&mut inner, rest, value);
                    *b = encode_message(&inner);
                }
            }
            _ => {}
        }
    }
}

/// Change one thing in a message (or a message inside it).
fn mutate_message(rng: &mut Rng, fields: &mut Vec<Field>, depth: u32, numbers: &mut Vec<u64>) -> Landed {
    let landed = |numbers: &Vec<u64>, what: String, varint: Option<u64>| Landed { what, numbers: numbers.clone(), varint };
    let path = numbers.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".");
    if fields.is_empty() || rng.percent(6) {
        let number = 1 + rng.below(24) as u64;
        let value = match rng.below(3) {
            0 => Value::Varint(edge_value(rng, 0)),
            1 => Value::Bytes(rng.pick(STRINGS).as_bytes().to_vec()),
            _ => Value::Fixed32(rng.next() as u32),
        };
        let at = rng.below(fields.len() + 1);
        fields.insert(at, Field { number, value });
        return landed(numbers, format!("{path}: field {number} added"), None);
    }
    let i = rng.below(fields.len());
    let number = fields[i].number;
    match rng.weighted(&[80, 8, 7]) {
        1 => {
            fields.remove(i);
            return landed(numbers, format!("{path}.{number}: removed"), None);
        }
        2 => {
            let copy = fields[i].clone();
            fields.insert(i, copy);
            return landed(numbers, format!("{path}.{number}: duplicated"), None);
        }
        _ => {}
    }
    numbers.push(number);
    let field = &mut fields[i];
    let what = match &mut field.value {
        Value::Varint(v) => {
            let old = *v;
            *v = edge_value(rng, old);
            return landed(numbers, format!("{path}.{number}: varint {old:#x} -> {v:#x}"), Some(*v));
        }
        Value::Fixed64(v) => {
            *v = edge_value(rng, *v);
            format!("{path}.{number}: fixed64 -> {v:#x}")
        }
        Value::Fixed32(v) => {
            *v = edge_value(rng, *v as u64) as u32;
            format!("{path}.{number}: fixed32 -> {v:#x}")
        }
        Value::Bytes(b) => {
            if depth < 8 && rng.percent(75) {
                if let Some(mut inner) = parse_message(b).filter(|f| !f.is_empty()) {
                    let l = mutate_message(rng, &mut inner, depth + 1, numbers);
                    *b = encode_message(&inner);
                    return l;
                }
            }
            match rng.below(5) {
                0 => {
                    let s = *rng.pick(STRINGS);
                    *b = s.as_bytes().to_vec();
                    format!("{path}.{number}: bytes -> {s:?}")
                }
                1 if !b.is_empty() => {
                    let n = rng.below(b.len());
                    b.truncate(n);
                    format!("{path}.{number}: bytes cut to {n}")
                }
                2 => {
                    let most = if rng.percent(10) { 5000 } else { 16 };
                    let n = 1 + rng.below(most);
                    b.extend((0..n).map(|_| rng.next() as u8));
                    format!("{path}.{number}: {n} bytes added")
                }
                _ if !b.is_empty() => {
                    let at = rng.below(b.len());
                    b[at] ^= 1 << rng.below(8);
                    format!("{path}.{number}: a bit of byte {at} flipped")
                }
                _ => {
                    b.push(rng.next() as u8);
                    format!("{path}.{number}: a byte added")
                }
            }
        }
    };
    landed(numbers, what, None)
}

// ---------------------------------------------------------------------------
// Image files: magic words, then entries (a u32 length and a message), some
// followed by raw bytes.

/// One entry of an image: where it starts (its length field), its message, and its end (after raw bytes).
#[derive(Clone, Copy, Debug)]
struct Frame {
    at: usize,
    body: (usize, usize),
    end: usize,
}

fn head_len(kind: Kind) -> usize {
    match kind {
        Kind::Pages => 0,
        Kind::Inventory => 4,
        _ => 8,
    }
}

/// The entries of an image, as far as they can be told apart.
fn frames(kind: Kind, b: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    if kind == Kind::Pages {
        return out;
    }
    let mut at = head_len(kind);
    while let Some(len) = b.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let body = (at + 4, at + 4 + len);
        if body.1 > b.len() {
            break;
        }
        let msg = &b[body.0..body.1];
        let raw = match kind {
            Kind::PipesData => PipeDataEntry::decode(msg).map(|e| e.bytes as usize).unwrap_or(0),
            Kind::SkQueues => SkPacketEntry::decode(msg).map(|e| e.length as usize).unwrap_or(0),
            Kind::GhostFile => GhostFileEntry::decode(msg).ok().and_then(|e| e.size).map_or(b.len() - body.1, |s| s as usize),
            _ => 0,
        };
        let end = body.1.saturating_add(raw).min(b.len());
        out.push(Frame { at, body, end });
        at = end;
    }
    out
}

// ---------------------------------------------------------------------------
// Seeds and cases

enum Data {
    Bytes(Vec<u8>),
    /// A large pages image, hard-linked into each case.
    Big(PathBuf),
}

struct SeedFile {
    name: String,
    kind: Option<Kind>,
    data: Data,
    digest: FileDigest,
}

struct Seed {
    name: String,
    files: Vec<SeedFile>,
    manifest: Vec<u8>,
}

/// A file of a case: as in its seed, rewritten, a sparse file of this size, or
/// a hard link to a file of (another) seed.
#[derive(Clone)]
enum CaseData {
    Same(usize),
    Bytes(Vec<u8>),
    Sparse(u64),
    Other(usize, usize),
}

struct Case {
    seed: usize,
    files: Vec<(String, CaseData)>,
    log: Vec<String>,
}

fn digest_of(data: &[u8]) -> FileDigest {
    let mut h = BlockHasher::default();
    h.update(data);
    h.finish()
}

fn read_seed(name: &str, dir: &Path) -> Seed {
    let mut files = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    for n in names.into_iter().filter(|n| n != MANIFEST) {
        let path = dir.join(&n);
        let kind = Kind::of_file_name(&n);
        let len = std::fs::metadata(&path).unwrap().len();
        let (data, digest) = if kind == Some(Kind::Pages) && len > 64 << 10 {
            let bytes = std::fs::read(&path).unwrap();
            (Data::Big(path), digest_of(&bytes))
        } else {
            let bytes = std::fs::read(&path).unwrap();
            let d = digest_of(&bytes);
            (Data::Bytes(bytes), d)
        };
        files.push(SeedFile { name: n, kind, data, digest });
    }
    Seed { name: name.to_string(), files, manifest: std::fs::read(dir.join(MANIFEST)).unwrap_or_default() }
}

impl Case {
    fn bytes(&self, seeds: &[Seed], i: usize) -> Vec<u8> {
        match &self.files[i].1 {
            CaseData::Same(j) => seed_bytes(&seeds[self.seed].files[*j]),
            CaseData::Other(s, j) => seed_bytes(&seeds[*s].files[*j]),
            CaseData::Bytes(b) => b.clone(),
            CaseData::Sparse(n) => vec![0; *n as usize],
        }
    }

    fn kind(&self, i: usize) -> Option<Kind> {
        Kind::of_file_name(&self.files[i].0)
    }
}

fn seed_bytes(f: &SeedFile) -> Vec<u8> {
    match &f.data {
        Data::Bytes(b) => b.clone(),
        Data::Big(p) => std::fs::read(p).unwrap(),
    }
}

/// Image files (not raw pages) of a case, by index.
fn images(case: &Case) -> Vec<usize> {
    (0..case.files.len()).filter(|&i| case.kind(i).is_some_and(|k| k != Kind::Pages)).collect()
}

fn any_file(rng: &mut Rng, case: &Case) -> Option<usize> {
    (!case.files.is_empty()).then(|| rng.below(case.files.len()))
}

/// One mutation of a case; returns what it did (None: nothing to do here).
fn mutate(rng: &mut Rng, seeds: &[Seed], case: &mut Case) -> Option<String> {
    let imgs = images(case);
    match rng.weighted(&[30, 10, 10, 6, 6, 4, 9, 4, 5, 5, 5, 3]) {
        // A protobuf field of an entry.
        0 | 1 => {
            let i = *rng.choose(&imgs)?;
            let kind = case.kind(i)?;
            let mut b = case.bytes(seeds, i);
            let fr = frames(kind, &b);
            let f = *rng.choose(&fr)?;
            let mut fields = parse_message(&b[f.body.0..f.body.1])?;
            let l = mutate_message(rng, &mut fields, 0, &mut Vec::new());
            let mut what = l.what;
            // Often the same value in every instance of that field (every vma's offset...).
            if let Some(v) = l.varint.filter(|_| rng.percent(35)) {
                set_all(&mut fields, &l.numbers, v);
                what.push_str(" (in every instance)");
            }
            let body = encode_message(&fields);
            let mut out = b[..f.at].to_vec();
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(&b[f.body.1..]);
            b = out;
            let name = case.files[i].0.clone();
            case.files[i].1 = CaseData::Bytes(b);
            Some(format!("{name}: entry at {}: field {what}", f.at))
        }
        // An entry's length.
        2 => {
            let i = *rng.choose(&imgs)?;
            let mut b = case.bytes(seeds, i);
            let fr = frames(case.kind(i)?, &b);
            let f = *rng.choose(&fr)?;
            let old = (f.body.1 - f.body.0) as u64;
            let v = match rng.below(4) {
                0 => edge_value(rng, old) as u32,
                1 => old.wrapping_add(1 + rng.below(8) as u64) as u32,
                2 => old.wrapping_sub(1 + rng.below(8) as u64) as u32,
                _ => (b.len() - f.at) as u32,
            };
            b[f.at..f.at + 4].copy_from_slice(&v.to_le_bytes());
            let name = case.files[i].0.clone();
            case.files[i].1 = CaseData::Bytes(b);
            Some(format!("{name}: entry at {}: length {old} -> {v}", f.at))
        }
        // Bits and bytes anywhere in an image.
        3 | 4 => {
            let i = *rng.choose(&imgs)?;
            let mut b = case.bytes(seeds, i);
            if b.is_empty() {
                return None;
            }
            let at = rng.below(b.len());
            let what = if rng.percent(50) {
                b[at] ^= 1 << rng.below(8);
                "a bit flipped".to_string()
            } else {
                let random = rng.next() as u8;
                b[at] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, random]);
                format!("set to {:#x}", b[at])
            };
            let name = case.files[i].0.clone();
            case.files[i].1 = CaseData::Bytes(b);
            Some(format!("{name}: byte {at}: {what}"))
        }
        // Truncation, at an entry's edge or anywhere.
        5 => {
            let i = any_file(rng, case)?;
            let mut b = case.bytes(seeds, i);
            let fr = case.kind(i).map(|k| frames(k, &b)).unwrap_or_default();
            let at = match fr.is_empty() || rng.percent(50) {
                true => rng.below(b.len() + 1),
                false => {
                    let f = *rng.pick(&fr);
                    *rng.pick(&[f.at, f.at + 2, f.body.0, f.body.1, f.end.saturating_sub(1)])
                }
            };
            b.truncate(at);
            let name = case.files[i].0.clone();
            case.files[i].1 = CaseData::Bytes(b);
            Some(format!("{name}: cut at {at}"))
        }
        // Bytes inserted, or appended (garbage, or an entry length with nothing after it).
        6 => {
            let i = *rng.choose(&imgs)?;
            let mut b = case.bytes(seeds, i);
            let n = 1 + rng.below(16);
            let mut extra: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            if rng.percent(30) {
                extra = (edge_value(rng, 0) as u32).to_le_bytes().to_vec();
            }
            let at = if rng.percent(50) { b.len() } else { rng.below(b.len() + 1) };
            b.splice(at..at, extra.iter().copied());
            let name = case.files[i].0.clone();
            case.files[i].1 = CaseData::Bytes(b);
            Some(format!("{name}: {} bytes inserted at {at}", extra.len()))
        }
        // Entries duplicated, deleted or swapped.
        7 => {
            let i = *rng.choose(&imgs)?;
            let b = case.bytes(seeds, i);
            let fr = frames(case.kind(i)?, &b);
            let (x, y) = (*rng.choose(&fr)?, *rng.choose(&fr)?);
            let (lo, hi) = if x.at <= y.at { (x, y) } else { (y, x) };
            let mut out = b[..lo.at].to_vec();
            let what = match rng.below(3) {
                // The same entry twice: duplicated, not swapped.
                op if op == 0 || (op == 2 && lo.at == hi.at) => {
                    out.extend_from_slice(&b[lo.at..lo.end]);
                    out.extend_from_slice(&b[lo.at..]);
                    "duplicated"
                }
                1 => {
                    out.extend_from_slice(&b[lo.end..]);
                    "deleted"
                }
                _ => {
                    out.extend_from_slice(&b[hi.at..hi.end]);
                    out.extend_from_slice(&b[lo.end..hi.at]);
                    out.extend_from_slice(&b[lo.at..lo.end]);
                    out.extend_from_slice(&b[hi.end..]);
                    "swapped with a later one"
                }
            };
            let name = case.files[i].0.clone();
            case.files[i].1 = CaseData::Bytes(out);
            Some(format!("{name}: entry at {} {what}", lo.at))
        }
        // A file deleted.
        8 => {
            let i = any_file(rng, case)?;
            let (name, _) = case.files.remove(i);
            Some(format!("{name}: deleted"))
        }
        // Two files swap contents, or one takes another's.
        9 => {
            let (i, j) = (any_file(rng, case)?, any_file(rng, case)?);
            let (a, b) = (case.files[i].1.clone(), case.files[j].1.clone());
            let what = if rng.percent(50) {
                case.files[i].1 = b;
                case.files[j].1 = a;
                "swapped with"
            } else {
                case.files[i].1 = b;
                "replaced by"
            };
            Some(format!("{} {what} {}", case.files[i].0, case.files[j].0))
        }
        // A file from another seed, of the same kind if there is one.
        10 => {
            let i = any_file(rng, case)?;
            let kind = case.kind(i);
            let s = rng.below(seeds.len());
            let same: Vec<usize> = (0..seeds[s].files.len()).filter(|&j| seeds[s].files[j].kind == kind).collect();
            let j = if same.is_empty() { rng.below(seeds[s].files.len()) } else { *rng.pick(&same) };
            case.files[i].1 = CaseData::Other(s, j);
            Some(format!("{}: replaced by {} of {}", case.files[i].0, seeds[s].files[j].name, seeds[s].name))
        }
        // A pages image of another size.
        _ => {
            let pages: Vec<usize> = (0..case.files.len()).filter(|&i| case.kind(i) == Some(Kind::Pages)).collect();
            let i = *rng.choose(&pages)?;
            let old = match &case.files[i].1 {
                CaseData::Same(j) => seeds[case.seed].files[*j].digest.size,
                _ => 0,
            };
            let size = match rng.below(4) {
                0 => 0,
                1 => old + 4096 * (1 + rng.below(4) as u64),
                2 => old.saturating_sub(4096 * (1 + rng.below(4) as u64)),
                _ => old + 1 + rng.below(4095) as u64,
            };
            case.files[i].1 = CaseData::Sparse(size);
            Some(format!("{}: resized from {old} to {size} bytes", case.files[i].0))
        }
    }
}

/// How the manifest of a case is made.
#[derive(Clone, Copy, Debug)]
enum ManifestMode {
    /// Over the mutated files: the CRC check passes, the parsers see the damage.
    Recomputed,
    Removed,
    /// The seed's: most mutations are caught by the CRC check.
    Stale,
}

/// Write the case into `dir` (emptied first).
fn materialize(seeds: &[Seed], case: &Case, mode: ManifestMode, dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut digests = BTreeMap::new();
    for (name, data) in &case.files {
        let path = dir.join(name);
        let link = |f: &SeedFile, seed: &Seed| match &f.data {
            Data::Big(p) => std::fs::hard_link(p, &path).unwrap(),
            Data::Bytes(b) => std::fs::write(&path, b).unwrap_or_else(|e| panic!("{} of {}: {e}", f.name, seed.name)),
        };
        let digest = match data {
            CaseData::Same(j) => {
                let f = &seeds[case.seed].files[*j];
                link(f, &seeds[case.seed]);
                f.digest.clone()
            }
            CaseData::Other(s, j) => {
                let f = &seeds[*s].files[*j];
                link(f, &seeds[*s]);
                f.digest.clone()
            }
            CaseData::Bytes(b) => {
                std::fs::write(&path, b).unwrap();
                digest_of(b)
            }
            CaseData::Sparse(n) => {
                std::fs::File::create(&path).unwrap().set_len(*n).unwrap();
                digest_of(&vec![0; *n as usize])
            }
        };
        digests.insert(name.clone(), digest);
    }
    let manifest = match mode {
        ManifestMode::Recomputed => Some(digest::manifest(&digests).unwrap()),
        ManifestMode::Removed => None,
        ManifestMode::Stale => Some(seeds[case.seed].manifest.clone()),
    };
    if let Some(m) = manifest {
        std::fs::write(dir.join(MANIFEST), m).unwrap();
    }
}

/// Case `n` of the run with `seed`: which dump, what was done to it.
fn make_case(seed: u64, n: u64, seeds: &[Seed]) -> (Case, ManifestMode) {
    let mut rng = Rng::new(seed ^ n.wrapping_mul(0xd1b5_4a32_d192_ed03));
    let s = rng.below(seeds.len());
    let files = seeds[s].files.iter().enumerate().map(|(j, f)| (f.name.clone(), CaseData::Same(j))).collect();
    let mut case = Case { seed: s, files, log: Vec::new() };
    let count = *rng.pick(&[1, 1, 1, 2, 2, 3, 4, 6]);
    let mut tries = 0;
    while case.log.len() < count && tries < 50 {
        tries += 1;
        // A mutation that finds nothing to work on (no entries, no file) is tried again.
        if let Some(what) = mutate(&mut rng, seeds, &mut case) {
            case.log.push(what);
        }
    }
    let mode = match rng.below(10) {
        0 => ManifestMode::Removed,
        1 => ManifestMode::Stale,
        _ => ManifestMode::Recomputed,
    };
    (case, mode)
}

// ---------------------------------------------------------------------------
// The readers under test.

/// What the readers made of a case.
#[derive(Default)]
struct Outcome {
    loaded: bool,
    /// Time in each reader: loads, checks, show, explain.
    times: [Duration; 4],
    /// The loader's error, in a form that groups alike errors.
    error: Option<String>,
}

/// An error with its numbers and the case directory left out.
fn error_class(text: &str, dir: &Path) -> String {
    let text = text.replace(&dir.to_string_lossy().to_string(), "");
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if !c.is_ascii_digit() {
            out.push(c);
            continue;
        }
        // A number, decimal or 0x hex, is N.
        let hex = c == '0' && chars.peek() == Some(&'x');
        if hex {
            chars.next();
        }
        while chars.peek().is_some_and(|d| if hex { d.is_ascii_hexdigit() } else { d.is_ascii_digit() }) {
            chars.next();
        }
        out.push('N');
    }
    out.split_whitespace().take(9).collect::<Vec<_>>().join(" ")
}

fn run_readers(dir: &Path, shell_job: bool) -> Outcome {
    let mut out = Outcome::default();
    let opts = crust::restore::RestoreOptions { dir: dir.to_path_buf(), shell_job, ..Default::default() };
    let mut t = Instant::now();
    let mut lap = |out: &mut Outcome, i: usize| {
        out.times[i] += t.elapsed();
        t = Instant::now();
    };
    let loaded = crust::restore::load(dir, Pages::InDir);
    lap(&mut out, 0);
    match loaded {
        Ok(img) => {
            out.loaded = true;
            std::hint::black_box(crust::restore::check::problems(&img, &opts));
        }
        Err(e) => out.error = Some(error_class(&e.to_string(), dir)),
    }
    lap(&mut out, 1);
    // As a migration's destination reads what it received (the pages come
    // later, so their sizes are not checked: more gets through to the checks).
    let streamed = crust::restore::load(dir, Pages::Streamed);
    lap(&mut out, 0);
    if let Ok(img) = streamed {
        if !out.loaded {
            std::hint::black_box(crust::restore::check::problems(&img, &opts));
        }
    }
    lap(&mut out, 1);
    if let Ok(v) = crust::show::show_dir(dir) {
        std::hint::black_box(v.to_string());
    }
    lap(&mut out, 2);
    let _ = std::hint::black_box(crust::explain::explain(dir, crust::cgroups::Mode::Soft, &[]));
    lap(&mut out, 3);
    out
}

/// The last panic's message and where it happened, set by our panic hook.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// Set while the readers run: their panics are the findings.
    static IN_READERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The readers on one case: its outcome, or the panic they ended in.
fn run_case(dir: &Path, shell_job: bool) -> Result<Outcome, String> {
    IN_READERS.with(|r| r.set(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| run_readers(dir, shell_job)));
    IN_READERS.with(|r| r.set(false));
    r.map_err(|_| LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_else(|| "a panic".into()))
}

/// Panics of the readers are kept for the report (and not printed once per
/// case); any other goes to the usual hook.
fn install_panic_hook() {
    let usual = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !IN_READERS.with(|r| r.get()) {
            return usual(info);
        }
        let bt = std::backtrace::Backtrace::force_capture();
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{info}\n{bt}"));
    }));
}

/// The case being read, for the watchdog: when it started, and how to keep it.
struct Running {
    started: Instant,
    dir: PathBuf,
    label: String,
    info: String,
}

/// A thread that watches the case being read: one that takes longer than
/// `limit` is a hang; it is kept, and the run ends there (the stuck readers
/// cannot be stopped).
fn watchdog(limit: Duration, work: PathBuf) -> Arc<Mutex<Option<Running>>> {
    let running: Arc<Mutex<Option<Running>>> = Arc::default();
    let watched = running.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        let guard = watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = guard.as_ref().filter(|r| r.started.elapsed() > limit) {
            let kept = keep(&r.dir, &r.label, &format!("{}\nhang: no answer within {limit:?}", r.info));
            say(&format!("fuzz: HANG in {} ({}): no answer within {limit:?}; kept in {}", r.label, r.info.replace('\n', "; "), kept.display()));
            let _ = std::fs::remove_dir_all(&work);
            std::process::exit(1);
        }
    });
    running
}

// ---------------------------------------------------------------------------
// Seeds: dumps of the workloads.

fn work_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    base.join(format!("crust-fuzz-{}", std::process::id()))
}

/// Dump workload `name` (its READY line seen) into `dir`; false if that failed.
fn dump_seed(name: &str, dir: &Path, scratch: &Path) -> bool {
    let file = scratch.join(format!("{name}.data"));
    let args: Vec<&std::ffi::OsStr> = match name {
        "family" => {
            common::write_pattern_file(&file, 8192, 3);
            vec![file.as_os_str()]
        }
        // locks makes its locked files in a directory of its own.
        "locks" => {
            std::fs::create_dir_all(&file).unwrap();
            vec![file.as_os_str()]
        }
        _ => vec![],
    };
    let extra: &[&str] = if name == "locks" { &["--file-locks"] } else { &[] };
    let mut w = Workload::spawn(name, &args);
    w.ready();
    // The file goes: family holds it deleted, and the dump carries it as a ghost file.
    if name == "family" {
        let _ = std::fs::remove_file(&file);
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = w.pid.to_string();
    let out = crust(&dump_args(&pid, dir, extra), Duration::from_secs(60));
    if !out.status.success() {
        say(&format!("fuzz: no seed from {name}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        return false;
    }
    true
}

const WORKLOADS: &[&str] = &["test_mm", "family", "sockets", "anonfds", "sharedmem", "orphans", "sigstate", "locks"];

/// Keep a case that failed, with what was done to it.
fn keep(dir: &Path, label: &str, info: &str) -> PathBuf {
    let root = std::env::var_os("CRUST_FUZZ_CRASHES").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("crust-fuzz-crashes"));
    let to = root.join(label);
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let _ = std::fs::copy(e.path(), to.join(e.file_name()));
    }
    std::fs::write(root.join(format!("{label}.txt")), format!("{info}\n")).unwrap();
    to
}

#[test]
fn mutated_images_never_panic_or_hang_the_readers() {
    let case_limit = Duration::from_secs(env_u64("CRUST_FUZZ_CASE_SECS").unwrap_or(10));
    if let Some(dir) = std::env::var_os("CRUST_FUZZ_REPLAY") {
        let dir = PathBuf::from(dir);
        install_panic_hook();
        let t = Instant::now();
        let r = run_case(&dir, false);
        let _ = std::panic::take_hook();
        match r {
            Err(p) => panic!("{}: panic: {p}", dir.display()),
            Ok(o) => {
                let error = crust::restore::load(&dir, Pages::InDir).err().map(|e| e.to_string()).unwrap_or_default();
                say(&format!("{}: loaded: {} ({:?}) {error}", dir.display(), o.loaded, t.elapsed()));
            }
        }
        return;
    }
    let secs = env_u64("CRUST_FUZZ_SECS").unwrap_or(60);
    if secs == 0 {
        say("fuzz: CRUST_FUZZ_SECS=0, skipped");
        return;
    }
    let seed = env_u64("CRUST_FUZZ_SEED").unwrap_or(0xc7u64 << 32 | 0x5eed);
    let only = env_u64("CRUST_FUZZ_CASE");

    let root = work_root();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(root.clone());

    let t = Instant::now();
    let only_seeds = std::env::var("CRUST_FUZZ_ONLY").unwrap_or_default();
    let wanted: Vec<&str> = WORKLOADS.iter().copied().filter(|w| only_seeds.is_empty() || only_seeds.split(',').any(|o| o == *w)).collect();
    assert!(!wanted.is_empty(), "CRUST_FUZZ_ONLY={only_seeds}: none of {WORKLOADS:?}");
    let mut seeds = Vec::new();
    for name in &wanted {
        let dir = root.join("seeds").join(name);
        if dump_seed(name, &dir, &root) {
            seeds.push(read_seed(name, &dir));
        }
    }
    assert!(seeds.len() >= wanted.len().div_ceil(2), "too few seed dumps: {}", seeds.len());
    for s in &seeds {
        // Unharmed, each seed loads: otherwise every mutation is refused for the same reason.
        let dir = root.join("seeds").join(&s.name);
        if let Err(e) = crust::restore::load(&dir, Pages::InDir) {
            panic!("seed {} does not load: {e}", s.name);
        }
    }
    say(&format!(
        "fuzz: {} seeds ({}) dumped in {:.1} s; seed {seed:#x}, {secs} s, cases up to {case_limit:?}",
        seeds.len(),
        seeds.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
        t.elapsed().as_secs_f64()
    ));

    install_panic_hook();
    let running = watchdog(case_limit, root.clone());
    let case_dir = root.join("case");
    let start = Instant::now();
    let (mut executions, mut loaded, mut slowest) = (0u64, 0u64, (Duration::ZERO, 0u64));
    let mut crashes: Vec<String> = Vec::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut by_mode: HashMap<String, (u64, u64)> = HashMap::new();
    let mut last_report = Instant::now();
    let (mut setup_time, mut reader_time) = (Duration::ZERO, Duration::ZERO);
    let mut stage_times = [Duration::ZERO; 4];
    let mut n = only.unwrap_or(0);
    loop {
        if only.is_some_and(|c| n > c) || (only.is_none() && start.elapsed() >= Duration::from_secs(secs)) {
            break;
        }
        let t = Instant::now();
        let (case, mode) = make_case(seed, n, &seeds);
        materialize(&seeds, &case, mode, &case_dir);
        setup_time += t.elapsed();
        let label = format!("seed-{seed:x}-case-{n}");
        let info = format!("seed dump: {}\nmanifest: {mode:?}\nmutations:\n  {}", seeds[case.seed].name, case.log.join("\n  "));
        let t = Instant::now();
        *running.lock().unwrap() = Some(Running { started: t, dir: case_dir.clone(), label: label.clone(), info: info.clone() });
        let r = run_case(&case_dir, n % 2 == 1);
        *running.lock().unwrap() = None;
        let took = t.elapsed();
        reader_time += took;
        executions += 1;
        if took > slowest.0 {
            slowest = (took, n);
        }
        match r {
            Ok(o) => {
                loaded += o.loaded as u64;
                for (sum, t) in stage_times.iter_mut().zip(o.times) {
                    *sum += t;
                }
                let m = by_mode.entry(format!("{mode:?}")).or_default();
                m.0 += 1;
                m.1 += o.loaded as u64;
                if let Some(e) = o.error {
                    *errors.entry(e).or_default() += 1;
                }
            }
            Err(panic) => {
                let kept = keep(&case_dir, &label, &format!("{info}\n\n{panic}"));
                say(&format!(
                    "fuzz: CRASH in case {n} ({}, {mode:?} manifest; {}): {}\n  kept in {}\n  replay: CRUST_FUZZ_REPLAY={} cargo test --release -p crust-cli --test fuzz_images",
                    seeds[case.seed].name,
                    case.log.join("; "),
                    panic.lines().next().unwrap_or_default(),
                    kept.display(),
                    kept.display()
                ));
                crashes.push(label);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            let s = start.elapsed().as_secs_f64();
            say(&format!("fuzz: {executions} executions in {s:.0} s ({:.0}/s), crashes: {}", executions as f64 / s, crashes.len()));
        }
        n += 1;
    }
    let _ = std::panic::take_hook();
    let s = start.elapsed().as_secs_f64();
    let mut top: Vec<(String, u64)> = errors.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let distinct = top.len();
    let mut modes: Vec<_> = by_mode.into_iter().collect();
    modes.sort();
    say(&format!(
        "fuzz: {executions} executions in {s:.1} s ({:.0}/s), crashes: {}, loaded whole: {loaded}, slowest case {:.0} ms (case {}), \
         {:.1} s making cases, {:.1} s in the readers (load {:.1}, checks {:.1}, show {:.1}, explain {:.1}), distinct errors: {distinct}; by manifest (cases, loaded): {modes:?}; \
         most frequent errors:\n  {}",
        executions as f64 / s.max(1e-9),
        crashes.len(),
        slowest.0.as_secs_f64() * 1e3,
        slowest.1,
        setup_time.as_secs_f64(),
        reader_time.as_secs_f64(),
        stage_times[0].as_secs_f64(),
        stage_times[1].as_secs_f64(),
        stage_times[2].as_secs_f64(),
        stage_times[3].as_secs_f64(),
        top.iter().take(12).map(|(e, c)| format!("{c:>7}  {e}")).collect::<Vec<_>>().join("\n  ")
    ));
    assert!(crashes.is_empty(), "{} crashing cases (seed {seed:#x}): {crashes:?}", crashes.len());
}
