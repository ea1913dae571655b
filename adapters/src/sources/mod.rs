//! Key sources: where an issuer's public keys come from. Each implements the domain's
//! `KeySource` port for exactly one issuer.

pub mod fetch;
pub mod remote;
pub mod static_keys;

pub use remote::{IssuerSetting, Locator, RefreshPolicy, RemoteKeySource, RemoteSourceConfig};
pub use static_keys::{KeyFile, KeyFormat, StaticKeySource};

use duo_workflow_domain::keys::{Algorithm, Algorithms, IssuerKey, LoadReport};

use crate::jose::keys::PublicKey;

/// The keys narrowed to the algorithms their source allows: a key verifies only algorithms of
/// its kind that its document and its source both allow; a key left with none is dropped, and
/// why is returned.
pub(crate) fn allowed_keys(
    keys: Vec<IssuerKey<PublicKey>>,
    allowed: &[Algorithm],
) -> (Vec<IssuerKey<PublicKey>>, Vec<String>) {
    let allowed = Algorithms::of(allowed);
    let mut kept = Vec::with_capacity(keys.len());
    let mut dropped = Vec::new();
    for mut key in keys {
        let narrowed = key.algorithms.intersection(allowed);
        if narrowed.is_empty() {
            dropped.push(format!(
                "key {} ({} for {}): none of its algorithms is allowed ({allowed})",
                key.kid.as_ref().map_or("without kid", |k| k.as_str()),
                key.key.kind(),
                key.algorithms,
            ));
        } else {
            key.algorithms = narrowed;
            kept.push(key);
        }
    }
    (kept, dropped)
}

/// Warns about what a key set left out: keys beyond the cap, and `kid`s several keys carry
/// (tokens naming them are refused).
pub(crate) fn report_load(source: &str, issuer: &dyn std::fmt::Display, report: &LoadReport) {
    if report.over_cap > 0 {
        tracing::warn!(source, issuer = %issuer, dropped = report.over_cap, "key set holds too many keys; the rest are ignored");
    }
    for kid in &report.ambiguous {
        tracing::warn!(source, issuer = %issuer, kid = %kid, "several keys carry this kid: tokens naming it are refused");
    }
}

/// Warns about each key of a document that was dropped (unusable, weak, or refused by policy).
pub(crate) fn report_dropped(source: &str, issuer: &dyn std::fmt::Display, dropped: &[String]) {
    for why in dropped {
        tracing::warn!(source, issuer = %issuer, "dropped a key: {why}");
    }
}
