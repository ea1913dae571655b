//! Adapters: the implementations of the domain's ports.
//!
//! - [`jose`]: compact JWS parsing, verification and signing with `ring`; JWK/PEM keys.
//! - [`authenticator`]: routes a token by `iss` to exactly one key source and verifies it.
//! - [`authority`]: the local-key authority: mints user tokens and is its own key source.
//! - [`sources`]: key sources (static keys; remote ones plug in here).
//! - [`transport`]: the tonic transport: request-id and authentication layers, the service.
//! - [`verified_cache`]: the bounded cache of verified tokens.
//! - [`metrics`]: Prometheus metrics, every label value from a bounded set.

pub mod authenticator;
pub mod authority;
pub mod clock;
pub mod executors;
pub mod explain;
pub mod jose;
pub mod metrics;
pub mod reload;
pub mod sources;
pub mod transport;
pub mod verified_cache;
