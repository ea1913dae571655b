//! The pure domain of the Duo Workflow Service's Cloud Connector auth.
//!
//! Invariant: no I/O, no async runtime, no transport, no crypto crate. Everything here is plain
//! data and rules, unit-testable without a runtime. Adapters implement the [`ports`]; the transport
//! drives [`gatekeeper::Gatekeeper`], which applies SPEC Part A's authentication steps in order.

pub mod balance;
pub mod error;
pub mod gatekeeper;
pub mod identity;
pub mod issuers;
pub mod keys;
pub mod mapping;
pub mod method;
pub mod policy;
pub mod ports;
pub mod request;
pub mod time;
pub mod user_token;

pub use error::{AuthError, Denied, Rejection, StatusKind};
pub use identity::{
    Claims, CopiedClaim, Identity, Issuer, JsonText, KeyId, ServiceName, UnitPrimitive,
    VerifiedClaims,
};
pub use mapping::{ClaimMapping, ClaimName};
pub use method::{Access, Call, Flow, MethodTable, Rpc};
pub use request::{AuthorizationHeader, RequestMetadata};
pub use time::{Seconds, UnixTime};
