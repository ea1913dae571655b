//! Key sets as the domain sees them: the keys of one issuer, each with an optional `kid`, and the
//! rule for picking which keys may verify a token. The key material `K` belongs to the adapters.

use std::fmt;

use crate::identity::KeyId;

/// At most this many keys per source: a kid-less token is tried against each, so the set stays small.
pub const MAX_KEYS_PER_SOURCE: usize = 100;

/// The longest `kid` accepted in a token or a key set.
pub const MAX_KID_LEN: usize = 256;

/// The JWS algorithms this service implements. Which of them a source accepts comes from its
/// configuration and its keys, never from a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    ES256,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

    /// Exact, case-sensitive JOSE names: `none`, `HS256` and every other name are unknown.
    pub fn from_jose(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Algorithm::RS256),
            "ES256" => Some(Algorithm::ES256),
            "EdDSA" => Some(Algorithm::EdDSA),
            _ => None,
        }
    }

    pub fn jose_name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jose_name())
    }
}

/// One key of an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerKey<K> {
    pub kid: Option<KeyId>,
    pub algorithm: Algorithm,
    pub key: K,
}

/// The usable keys of one issuer at one moment; replaced whole, never edited in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet<K> {
    keys: Vec<IssuerKey<K>>,
}

/// Which keys may verify a token, by its `kid`.
#[derive(Debug)]
pub enum Selection<'a, K> {
    /// The token names a key and the set has it.
    Named(&'a IssuerKey<K>),
    /// The token names a key the set does not have (perhaps a rotation: refetch).
    UnknownKid,
    /// The token names no key: try each (bounded by [`MAX_KEYS_PER_SOURCE`]).
    Each(&'a [IssuerKey<K>]),
}

impl<K> KeySet<K> {
    /// Keeps at most [`MAX_KEYS_PER_SOURCE`] keys; the rest are returned as dropped.
    pub fn new(mut keys: Vec<IssuerKey<K>>) -> (Self, usize) {
        let dropped = keys.len().saturating_sub(MAX_KEYS_PER_SOURCE);
        keys.truncate(MAX_KEYS_PER_SOURCE);
        (Self { keys }, dropped)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[IssuerKey<K>] {
        &self.keys
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .filter_map(|k| k.kid.as_ref().map(KeyId::as_str))
            .collect()
    }

    pub fn select(&self, kid: Option<&str>) -> Selection<'_, K> {
        match kid {
            None => Selection::Each(&self.keys),
            Some(kid) => match self
                .keys
                .iter()
                .find(|k| k.kid.as_ref().is_some_and(|k| k.as_str() == kid))
            {
                Some(key) => Selection::Named(key),
                None => Selection::UnknownKid,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: Option<&str>, k: u8) -> IssuerKey<u8> {
        IssuerKey {
            kid: kid.map(KeyId::new),
            algorithm: Algorithm::RS256,
            key: k,
        }
    }

    #[test]
    fn a_named_key_is_selected_alone() {
        let (set, _) = KeySet::new(vec![key(Some("a"), 1), key(Some("b"), 2)]);
        assert!(matches!(set.select(Some("b")), Selection::Named(k) if k.key == 2));
        assert!(matches!(set.select(Some("c")), Selection::UnknownKid));
    }

    #[test]
    fn a_kidless_token_tries_every_key() {
        let (set, _) = KeySet::new(vec![key(Some("a"), 1), key(None, 2)]);
        assert!(matches!(set.select(None), Selection::Each(keys) if keys.len() == 2));
    }

    #[test]
    fn the_set_is_capped() {
        let keys = (0..150).map(|i| key(Some(&i.to_string()), 0)).collect();
        let (set, dropped) = KeySet::new(keys);
        assert_eq!(set.len(), MAX_KEYS_PER_SOURCE);
        assert_eq!(dropped, 50);
    }

    #[test]
    fn algorithm_names_are_exact() {
        assert_eq!(Algorithm::from_jose("RS256"), Some(Algorithm::RS256));
        for bad in ["none", "None", "NONE", "rs256", "HS256", "ES384", ""] {
            assert_eq!(Algorithm::from_jose(bad), None, "{bad}");
        }
    }
}
