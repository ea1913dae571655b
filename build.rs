//! Generates the DuoWorkflow gRPC contract from `proto/` with protox, a pure-Rust protobuf
//! compiler, so a fresh checkout builds with cargo alone (no protoc on the machine). protox knows
//! the well-known types (`google/protobuf/struct.proto`) itself. The encoded descriptor set is
//! written beside the code, for gRPC reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(["proto/contract.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("contract_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
