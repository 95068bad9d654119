//! Decoding a directory of images back into data: `crust show`.
//!
//! Entries are decoded from the descriptors of `proto/*.proto` embedded in the
//! library, not through the Rust types, so every field in the bytes is
//! printed, whether crust uses it or not. Enum values print as their names
//! (numbers when the schema has no name for them); a field number the schema
//! does not know prints under its number (`"23": ...`) rather than vanishing.

use std::path::Path;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, Kind as FieldKind, MessageDescriptor, Value as PValue};
use serde_json::{json, Map, Value};

use crate::error::{Context, Error, Result};
use crate::images::proto::DESCRIPTOR_SET;
use crate::images::{Data, ImageReader, Kind, Layout};

/// The descriptors of every image message.
pub fn descriptors() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTOR_SET).expect("the embedded descriptor set decodes"))
}

fn message(name: &str) -> MessageDescriptor {
    descriptors().get_message_by_name(name).unwrap_or_else(|| panic!("{name} is not in the embedded descriptors"))
}

/// The next entry of `r`, decoded as message `name`.
fn next(r: &mut ImageReader, name: &str) -> Result<Option<DynamicMessage>> {
    let Some((offset, body)) = r.next_raw()? else { return Ok(None) };
    let desc = message(name);
    DynamicMessage::decode(desc, body.as_slice()).map(Some).map_err(|e| Error::Image {
        file: r.path().to_path_buf(),
        offset,
        what: format!("undecodable {name}: {e}"),
    })
}

fn number(m: &DynamicMessage, field: &str) -> u64 {
    m.get_field_by_name(field)
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_u32().map(u64::from))
                .or_else(|| v.as_i64().map(|n| n as u64))
                .or_else(|| v.as_i32().map(|n| n as u64))
        })
        .unwrap_or(0)
}

fn flag(m: &DynamicMessage, field: &str) -> bool {
    m.get_field_by_name(field).and_then(|v| v.as_bool()).unwrap_or(false)
}

/// Skips the raw bytes that follow entry `m`.
fn skip_data(r: &mut ImageReader, m: &DynamicMessage, data: &Data) -> Result<()> {
    r.skip(data.size(|f| number(m, f), |f| flag(m, f)))
}

/// Every entry of one image file, as JSON. Raw contents (pages, pipe and
/// socket data, ghost files) are skipped; a raw image is summarised.
/// Sub-entries (the messages of a SysV message queue) are listed in their
/// entry under the sub-entries' message name.
pub fn show_file(path: &Path) -> Result<Value> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let kind = Kind::of_file_name(name)
        .ok_or_else(|| Error::Invalid(format!("{}: not an image crust knows", path.display())))?;
    let layout = kind.layout();
    let mut r = ImageReader::open(path, kind)?;
    let mut entries = Vec::new();
    match layout {
        Layout::Pages | Layout::Raw => {
            let len = std::fs::metadata(path).ctx(|| format!("stat {}", path.display()))?.len();
            return Ok(match layout {
                Layout::Pages => json!({ "bytes": len, "pages": len / crate::images::criu::PAGE_SIZE }),
                _ => json!({ "bytes": len }),
            });
        }
        Layout::Entries(msg) => {
            while let Some(m) = next(&mut r, msg)? {
                entries.push(to_json(&m));
            }
        }
        Layout::HeadThen(head, msg) => {
            if let Some(h) = next(&mut r, head)? {
                entries.push(to_json(&h));
                while let Some(m) = next(&mut r, msg)? {
                    entries.push(to_json(&m));
                }
            }
        }
        Layout::WithData(msg, data) => {
            while let Some(m) = next(&mut r, msg)? {
                skip_data(&mut r, &m, &data)?;
                entries.push(to_json(&m));
            }
        }
        Layout::Nested { entry, count, sub, data } => {
            while let Some(m) = next(&mut r, entry)? {
                let mut subs = Vec::new();
                for _ in 0..number(&m, count) {
                    let Some(s) = next(&mut r, sub)? else {
                        let what = format!("truncated: {count} is {}, only {} {sub} follow", number(&m, count), subs.len());
                        return Err(r.error(what));
                    };
                    skip_data(&mut r, &s, &data)?;
                    subs.push(to_json(&s));
                }
                let mut e = to_json(&m);
                e[sub] = Value::Array(subs);
                entries.push(e);
            }
        }
        Layout::Chunked { head, chunked, chunk, data } => {
            if let Some(h) = next(&mut r, head)? {
                entries.push(to_json(&h));
                if flag(&h, chunked) {
                    while let Some(c) = next(&mut r, chunk)? {
                        skip_data(&mut r, &c, &data)?;
                        entries.push(to_json(&c));
                    }
                }
            }
        }
    }
    Ok(Value::Array(entries))
}

/// A message as a JSON object: each field present in the bytes under its
/// name, and each field the schema does not know under its number.
pub fn to_json(msg: &DynamicMessage) -> Value {
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        out.insert(field.name().to_string(), value_json(&field.kind(), value));
    }
    for f in msg.unknown_fields() {
        let mut bytes = Vec::new();
        f.encode(&mut bytes);
        let value = unknown_value(&bytes);
        match out.entry(f.number().to_string()) {
            serde_json::map::Entry::Vacant(v) => {
                v.insert(value);
            }
            // A number seen again (a repeated field): all its values, in order.
            serde_json::map::Entry::Occupied(mut o) => match o.get_mut() {
                Value::Array(a) if !matches!(value, Value::Array(_)) => a.push(value),
                other => *other = Value::Array(vec![other.take(), value]),
            },
        }
    }
    Value::Object(out)
}

fn value_json(kind: &FieldKind, v: &PValue) -> Value {
    match v {
        PValue::Bool(b) => json!(b),
        PValue::I32(n) => json!(n),
        PValue::I64(n) => json!(n),
        PValue::U32(n) => json!(n),
        PValue::U64(n) => json!(n),
        PValue::F32(n) => json!(n),
        PValue::F64(n) => json!(n),
        PValue::String(s) => json!(s),
        PValue::Bytes(b) => json!(hex(b)),
        PValue::EnumNumber(n) => match kind {
            FieldKind::Enum(e) => e.get_value(*n).map_or_else(|| json!(n), |v| json!(v.name())),
            _ => json!(n),
        },
        PValue::Message(m) => to_json(m),
        PValue::List(items) => Value::Array(items.iter().map(|i| value_json(kind, i)).collect()),
        PValue::Map(m) => Value::Object(m.iter().map(|(k, v)| (format!("{k:?}"), value_json(kind, v))).collect()),
    }
}

/// Bytes as lowercase hex, two digits a byte.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The value of one encoded unknown field (its key included): a varint or
/// fixed-width number as a number, anything else as the hex of its bytes.
fn unknown_value(mut buf: &[u8]) -> Value {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let Ok((_, wire)) = decode_key(&mut buf) else { return json!(hex(buf)) };
    match wire {
        WireType::Varint => decode_varint(&mut buf).map_or_else(|_| json!(hex(buf)), |n| json!(n)),
        WireType::SixtyFourBit if buf.len() == 8 => json!(u64::from_le_bytes(buf.try_into().expect("8 bytes"))),
        WireType::ThirtyTwoBit if buf.len() == 4 => json!(u32::from_le_bytes(buf.try_into().expect("4 bytes"))),
        WireType::LengthDelimited => {
            let _len = decode_varint(&mut buf);
            json!(hex(buf))
        }
        _ => json!(hex(buf)),
    }
}

/// Every image of a dump directory, keyed by file name; those of the dump
/// before it in a chain under `parent`, and so on.
pub fn show_dir(dir: &Path) -> Result<Value> {
    show_chain(dir, 0)
}

fn show_chain(dir: &Path, depth: usize) -> Result<Value> {
    if !dir.join("inventory.img").exists() {
        return Err(Error::Invalid(format!("{}: no inventory.img, so no complete dump is here", dir.display())));
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| Kind::of_file_name(n).is_some())
        .collect();
    names.sort();
    let mut out = Map::new();
    for name in names {
        out.insert(name.clone(), show_file(&dir.join(&name))?);
    }
    // A loop of links ends here rather than never.
    const MAX_CHAIN: usize = 64;
    let parent = dir.join("parent");
    if parent.is_dir() {
        if depth >= MAX_CHAIN {
            return Err(Error::Invalid(format!("{}: more than {MAX_CHAIN} parent images (a loop of parent links?)", dir.display())));
        }
        out.insert("parent".into(), show_chain(&parent, depth + 1)?);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::images::proto::{CoreEntry, PstreeEntry, RemapFilePathEntry, RemapType, TaskCoreEntry};

    fn decode(name: &str, bytes: &[u8]) -> Value {
        to_json(&DynamicMessage::decode(message(name), bytes).unwrap())
    }

    #[test]
    fn fields_enums_and_unknown_numbers_are_all_printed() {
        let core = CoreEntry {
            mtype: crate::images::proto::core_entry::March::X8664 as i32,
            tc: Some(TaskCoreEntry { comm: "x".into(), stop_signo: Some(19), ..Default::default() }),
            ..Default::default()
        };
        let v = decode("core_entry", &core.encode_to_vec());
        assert_eq!(v["mtype"], "X86_64");
        assert_eq!(v["tc"]["stop_signo"], 19);
        // Required fields are on the wire even at zero; absent optional ones are not shown.
        assert_eq!(v["tc"]["task_state"], 0);
        assert!(v["tc"].get("loginuid").is_none(), "{v}");

        let remap = RemapFilePathEntry { orig_id: 1, remap_id: 2, remap_type: Some(RemapType::Ghost as i32) };
        assert_eq!(decode("remap_file_path_entry", &remap.encode_to_vec())["remap_type"], "GHOST");
        // An enum number the schema has no name for prints as the number.
        let odd = RemapFilePathEntry { remap_type: Some(7), ..remap };
        assert_eq!(decode("remap_file_path_entry", &odd.encode_to_vec())["remap_type"], 7);

        // Numbers the schema lacks: a varint twice, a string, a fixed64.
        let mut bytes = PstreeEntry { pid: 5, threads: vec![5, 6], ..Default::default() }.encode_to_vec();
        bytes.extend([0xb8, 0x01, 0x2a, 0xb8, 0x01, 0x2b]); // field 23, varint 42 then 43
        bytes.extend([0xc2, 0x01, 0x02, b'h', b'i']); // field 24, "hi"
        bytes.extend([0xc9, 0x01, 1, 0, 0, 0, 0, 0, 0, 0]); // field 25, fixed64 1
        let v = decode("pstree_entry", &bytes);
        assert_eq!(v["pid"], 5);
        assert_eq!(v["threads"], json!([5, 6]));
        assert_eq!(v["23"], json!([42, 43]));
        assert_eq!(v["24"], "6869");
        assert_eq!(v["25"], 1);
    }
}
