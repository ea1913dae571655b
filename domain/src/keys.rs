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

/// The usable keys of one issuer at one moment; replaced whole, never edited in place. Keys are
/// in order of recency, the most recently added first (see [`KeySet::after`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet<K> {
    keys: Vec<IssuerKey<K>>,
    /// `kid`s that more than one key carries: a token naming one is refused rather than verified
    /// with whichever key comes first.
    ambiguous: Vec<KeyId>,
}

/// What loading a key set left out, for the source to log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys beyond [`MAX_KEYS_PER_SOURCE`].
    pub over_cap: usize,
    /// `kid`s carried by more than one key.
    pub ambiguous: Vec<KeyId>,
}

/// How many keys a kid-less token may be tried against by default: GitLab publishes a handful.
pub const DEFAULT_KIDLESS_CANDIDATES: usize = 5;

/// Which keys may verify a token, by its `kid`.
#[derive(Debug)]
pub enum Selection<'a, K> {
    /// The token names a key and the set has it.
    Named(&'a IssuerKey<K>),
    /// The token names a key the set does not have (perhaps a rotation: refetch).
    UnknownKid,
    /// The token names a `kid` that several keys carry: refused.
    AmbiguousKid,
    /// The token names no key: try these, the most recent first (at most the caller's bound).
    Each(&'a [IssuerKey<K>]),
}

impl<K> KeySet<K> {
    /// Keeps at most [`MAX_KEYS_PER_SOURCE`] keys, in the order given (most recent first).
    pub fn new(mut keys: Vec<IssuerKey<K>>) -> (Self, LoadReport) {
        let over_cap = keys.len().saturating_sub(MAX_KEYS_PER_SOURCE);
        keys.truncate(MAX_KEYS_PER_SOURCE);
        let mut ambiguous: Vec<KeyId> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if let Some(kid) = &key.kid {
                let repeated = keys[..i].iter().any(|k| k.kid.as_ref() == Some(kid));
                if repeated && !ambiguous.contains(kid) {
                    ambiguous.push(kid.clone());
                }
            }
        }
        let report = LoadReport {
            over_cap,
            ambiguous: ambiguous.clone(),
        };
        (Self { keys, ambiguous }, report)
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

    /// The keys a token may be verified with: the one its `kid` names, or for a kid-less token
    /// the `max_candidates` most recent (a bad kid-less token costs at most that many checks).
    pub fn select(&self, kid: Option<&str>, max_candidates: usize) -> Selection<'_, K> {
        match kid {
            None => Selection::Each(&self.keys[..self.keys.len().min(max_candidates)]),
            Some(kid) if self.ambiguous.iter().any(|a| a.as_str() == kid) => {
                Selection::AmbiguousKid
            }
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

impl<K: PartialEq> KeySet<K> {
    /// `fetched` (in the provider's order), reordered by recency against this set: keys this set
    /// does not have come first, then the keys it had, in its order. So a rotation's new key is
    /// the first candidate for kid-less tokens.
    pub fn after(&self, fetched: Vec<IssuerKey<K>>) -> Vec<IssuerKey<K>> {
        let (known, new): (Vec<_>, Vec<_>) =
            fetched.into_iter().partition(|k| self.keys.contains(k));
        let mut known = known;
        known.sort_by_key(|k| self.keys.iter().position(|old| old == k));
        new.into_iter().chain(known).collect()
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
        assert!(matches!(set.select(Some("b"), 5), Selection::Named(k) if k.key == 2));
        assert!(matches!(set.select(Some("c"), 5), Selection::UnknownKid));
    }

    #[test]
    fn a_kidless_token_tries_the_most_recent_keys_up_to_the_bound() {
        let (set, _) = KeySet::new(vec![key(Some("a"), 1), key(None, 2), key(Some("c"), 3)]);
        assert!(matches!(set.select(None, 5), Selection::Each(keys) if keys.len() == 3));
        match set.select(None, 2) {
            Selection::Each(keys) => {
                assert_eq!(keys.iter().map(|k| k.key).collect::<Vec<_>>(), [1, 2])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_set_is_capped() {
        let keys = (0..150).map(|i| key(Some(&i.to_string()), 0)).collect();
        let (set, report) = KeySet::new(keys);
        assert_eq!(set.len(), MAX_KEYS_PER_SOURCE);
        assert_eq!(report.over_cap, 50);
    }

    #[test]
    fn a_kid_two_keys_carry_is_ambiguous_and_selects_neither() {
        let (set, report) = KeySet::new(vec![
            key(Some("a"), 1),
            key(Some("dup"), 2),
            key(Some("dup"), 3),
            key(Some("dup"), 4),
        ]);
        assert_eq!(report.ambiguous, [KeyId::new("dup")]);
        assert!(matches!(
            set.select(Some("dup"), 5),
            Selection::AmbiguousKid
        ));
        assert!(matches!(set.select(Some("a"), 5), Selection::Named(k) if k.key == 1));
    }

    #[test]
    fn keys_new_to_a_set_come_first() {
        let (old, _) = KeySet::new(vec![key(Some("b"), 2), key(Some("a"), 1)]);
        let fetched = vec![key(Some("a"), 1), key(Some("b"), 2), key(Some("c"), 3)];
        let kids: Vec<_> = old
            .after(fetched)
            .into_iter()
            .map(|k| k.kid.unwrap().as_str().to_owned())
            .collect();
        assert_eq!(kids, ["c", "b", "a"]);
    }

    #[test]
    fn algorithm_names_are_exact() {
        assert_eq!(Algorithm::from_jose("RS256"), Some(Algorithm::RS256));
        for bad in ["none", "None", "NONE", "rs256", "HS256", "ES384", ""] {
            assert_eq!(Algorithm::from_jose(bad), None, "{bad}");
        }
    }
}
