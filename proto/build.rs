// Compiles the protobuf schema with protox (pure Rust), so a fresh machine
// needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=wire.proto");
    let fds = protox::compile(["wire.proto"], ["."])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
