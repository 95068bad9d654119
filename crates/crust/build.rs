//! Compiles `proto/*.proto` (CRIU's image schema, as crust writes it down):
//! protox parses them (no protoc needed), prost-build turns them into Rust
//! types in `$OUT_DIR/_.rs`, and the encoded descriptor set goes to
//! `$OUT_DIR/criu-images.fds` for `crust show` to decode any image by name.

use std::env;
use std::fs;
use std::path::PathBuf;

use prost::Message;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let proto_dir = manifest_dir.join("proto");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let mut files: Vec<String> = fs::read_dir(&proto_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", proto_dir.display()))
        .map(|e| e.expect("read_dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".proto"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", proto_dir.join(f).display());
    }

    let fds = protox::Compiler::new([&proto_dir])
        .and_then(|mut c| {
            c.include_imports(true).include_source_info(true);
            c.open_files(&files)?;
            Ok(c.file_descriptor_set())
        })
        .unwrap_or_else(|e| panic!("compiling {}: {e:?}", proto_dir.display()));
    fs::write(out_dir.join("criu-images.fds"), fds.encode_to_vec()).expect("writing criu-images.fds");

    prost_build::Config::new()
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .out_dir(&out_dir)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating Rust for {}: {e}", proto_dir.display()));
}
