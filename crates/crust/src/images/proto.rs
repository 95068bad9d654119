//! CRIU's image messages, generated at build time from `crates/crust/proto/`
//! (proto2; message, field and enum names are CRIU's, so prost names them
//! `core_entry` -> `CoreEntry`, `core_entry.march` -> `core_entry::March`).
//!
//! Proto2 semantics carry over: a `required` scalar is a plain field, always
//! encoded (crit refuses a message without one); an `optional` one is an
//! `Option`; a required sub-message is a plain field, an optional one an
//! `Option`; an enum field is an `i32` with getters taking the Rust enum.
//! Repeated scalars are unpacked on the wire, as CRIU declares them.

#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

pub use generated::*;

/// The encoded `FileDescriptorSet` of every `.proto` file, for decoding an
/// image without knowing its Rust type (`crust show`).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/criu-images.fds"));
