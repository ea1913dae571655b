//! The DuoWorkflow gRPC contract: messages, client and server, generated at build time from
//! `proto/contract.proto`. The proto has no `package`, so everything lives at this crate's root
//! and method paths are `/DuoWorkflow/<Rpc>`, as GitLab clients expect.
#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));

/// The encoded `FileDescriptorSet` of the contract (with `google/protobuf/struct.proto`), for
/// gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/contract_descriptor.bin"));
