//! JOSE with `ring`: compact JWS parsing and verification, keys (JWK, PEM, DER), signing. Key
//! encodings (PEM, SubjectPublicKeyInfo, PKCS#1) are read and written with the RustCrypto crates
//! `rsa` brings (`pem-rfc7468`, `spki`, `pkcs1`, `der`); ring parses private keys itself.

pub mod json;
pub mod jwk;
pub mod keys;
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

/// The PEM blocks of `text`, each from its `-----BEGIN ` line to its `-----END ` line, for
/// `pem-rfc7468`, which decodes one block at a time. Text outside blocks is skipped, as OpenSSL
/// does; a block without its END line ends the list (its decoding then says what is wrong). The
/// base64 of a block is wrapped again at 64 columns, RFC 7468's width, which its strict decoder
/// requires (some tools wrap at 76); a block with header lines is left as it is, and refused.
pub(crate) fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let block = &rest[begin..];
        let Some(end) = block.find("-----END ") else {
            blocks.push(block.to_owned());
            break;
        };
        // The END line runs to its closing dashes.
        let close = block[end + 9..]
            .find("-----")
            .map_or(block.len(), |i| end + 9 + i + 5);
        blocks.push(rewrapped(&block[..close]));
        rest = &block[close..];
    }
    blocks
}

fn rewrapped(block: &str) -> String {
    let mut lines = block.lines().map(str::trim);
    let (Some(begin), Some(end)) = (lines.next(), lines.next_back()) else {
        return block.to_owned();
    };
    let body: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    // Header lines, and anything but ASCII, go to the decoder as they are, to be refused.
    if body.iter().any(|l| l.contains(':') || !l.is_ascii()) {
        return block.to_owned();
    }
    let joined = body.concat();
    let mut out = String::with_capacity(block.len() + 8);
    out.push_str(begin);
    out.push('\n');
    for chunk in joined.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("ASCII"));
        out.push('\n');
    }
    out.push_str(end);
    out.push('\n');
    out
}
