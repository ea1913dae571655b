//! Key sources: where an issuer's public keys come from. Each implements the domain's
//! `KeySource` port for exactly one issuer.

pub mod fetch;
pub mod remote;
pub mod static_keys;

pub use remote::{IssuerSetting, Locator, RefreshPolicy, RemoteKeySource, RemoteSourceConfig};
pub use static_keys::StaticKeySource;
