//! Builds the bundled C test workloads (`workloads/*.c` at the workspace
//! root) into `$OUT_DIR/workloads/<name>` and exports that directory as
//! `CRUST_WORKLOAD_DIR` (use `env!("CRUST_WORKLOAD_DIR")`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src_dir = manifest_dir.join("../../workloads");
    let src_dir = src_dir
        .canonicalize()
        .unwrap_or_else(|e| panic!("workload directory {}: {e}", src_dir.display()));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("workloads");

    println!("cargo:rerun-if-changed=build.rs");
    // Re-run when a workload is added or removed.
    println!("cargo:rerun-if-changed={}", src_dir.display());

    fs::create_dir_all(&out_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", out_dir.display()));

    let mut sources: Vec<PathBuf> = fs::read_dir(&src_dir)
        .unwrap_or_else(|e| panic!("cannot read workload directory {}: {e}", src_dir.display()))
        .map(|entry| entry.expect("read_dir entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "c") && p.is_file())
        .collect();
    sources.sort();

    let compiler = cc::Build::new().get_compiler();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        compile(&compiler, src, &out_dir);
    }

    println!("cargo:rustc-env=CRUST_WORKLOAD_DIR={}", out_dir.display());
}

fn compile(compiler: &cc::Tool, src: &Path, out_dir: &Path) {
    let name = src.file_stem().expect("file stem").to_string_lossy().into_owned();
    let out = out_dir.join(&name);
    let mut cmd = compiler.to_command();
    cmd.args(["-O1", "-g", "-Wall", "-Wextra", "-pthread", "-o"])
        .arg(&out)
        .arg(src);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run C compiler for workload {name} ({cmd:?}): {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!(
            "compiling workload {} failed ({}):\n{:?}\n{}",
            src.display(),
            output.status,
            cmd,
            stderr
        );
    }
    // Surface compiler warnings: the workloads are meant to build cleanly.
    for line in stderr.lines() {
        println!("cargo:warning=workload {name}: {line}");
    }
}
