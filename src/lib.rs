//! The DuoWorkflow gRPC contract: messages, client and server, generated at build time from
//! `proto/contract.proto`. The proto has no `package`, so everything lives at this crate's root
//! and method paths are `/DuoWorkflow/<Rpc>`, as GitLab clients expect.
#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));

/// Fully qualified gRPC method paths, as they appear in HTTP/2 `:path`.
pub mod paths {
    pub const SERVICE: &str = "DuoWorkflow";
    pub const EXECUTE_WORKFLOW: &str = "/DuoWorkflow/ExecuteWorkflow";
    pub const GENERATE_TOKEN: &str = "/DuoWorkflow/GenerateToken";
}
