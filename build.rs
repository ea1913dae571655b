//! Generates the DuoWorkflow gRPC contract from `proto/` with protox, a pure-Rust protobuf
//! compiler, so a fresh checkout builds with cargo alone (no protoc on the machine).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(["proto/contract.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
