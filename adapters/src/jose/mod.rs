//! JOSE with `ring`: compact JWS parsing and verification, keys (JWK, PEM, DER), signing.

pub mod der;
pub mod json;
pub mod jwk;
pub mod keys;
pub mod pem;
pub mod signing;
pub mod token;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Strict base64url: no padding, no whitespace, canonical trailing bits.
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
