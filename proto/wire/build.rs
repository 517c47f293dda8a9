//! Compiles the gossip schema with protox (pure Rust), so a fresh machine
//! needs no system `protoc`. Messages only: the sans-IO core depends on this
//! crate and must not pull in an RPC runtime.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=wire.proto");
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true);
    compiler.open_files(["wire.proto"])?;
    let mut cfg = prost_build::Config::new();
    cfg.bytes(["."]);
    cfg.out_dir(PathBuf::from(std::env::var("OUT_DIR")?));
    cfg.compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
