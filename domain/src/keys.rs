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
    /// RSASSA-PKCS1-v1_5 with SHA-256, -384, -512 (RSA keys of 2048 to 8192 bits).
    RS256,
    RS384,
    RS512,
    /// RSASSA-PSS with SHA-256, -384, -512 (the same RSA keys).
    PS256,
    PS384,
    PS512,
    /// ECDSA over P-256 with SHA-256.
    ES256,
    /// ECDSA over P-384 with SHA-384.
    ES384,
    /// EdDSA over Ed25519 (RFC 8037's `EdDSA`, RFC 9864's `Ed25519`).
    EdDSA,
}

impl Algorithm {
    /// The algorithms of an RSA key.
    pub const RSA: [Algorithm; 6] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];

    pub const ALL: [Algorithm; 9] = {
        let r = Self::RSA;
        let (es256, es384, eddsa) = (Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA);
        [r[0], r[1], r[2], r[3], r[4], r[5], es256, es384, eddsa]
    };

    /// Exact, case-sensitive JOSE names: `none`, `HS256` and every other name are unknown.
    /// `Ed25519` (RFC 9864, fully specified) and `EdDSA` name the same algorithm here: the only
    /// EdDSA curve this service knows is Ed25519.
    pub fn from_jose(name: &str) -> Option<Self> {
        match name {
            "EdDSA" | "Ed25519" => Some(Algorithm::EdDSA),
            _ => Self::ALL.into_iter().find(|a| a.jose_name() == name),
        }
    }

    pub fn jose_name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Every name [`Algorithm::from_jose`] takes, for messages.
    pub const NAMES: &'static str =
        "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (or Ed25519)";

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jose_name())
    }
}

/// A set of algorithms: those one key may verify. A key's own kind bounds it (an RSA key the six
/// RSA algorithms, a P-384 key ES384 only), its JWK's `alg` narrows it to one, and its source's
/// configuration narrows it further.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Algorithms(u16);

impl Algorithms {
    pub const NONE: Algorithms = Algorithms(0);

    pub fn of(algorithms: &[Algorithm]) -> Self {
        Self(algorithms.iter().fold(0, |bits, a| bits | a.bit()))
    }

    pub fn one(algorithm: Algorithm) -> Self {
        Self(algorithm.bit())
    }

    pub fn contains(self, algorithm: Algorithm) -> bool {
        self.0 & algorithm.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersection(self, other: Algorithms) -> Algorithms {
        Self(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Algorithm> {
        Algorithm::ALL
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

impl fmt::Debug for Algorithms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl fmt::Display for Algorithms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Algorithm::jose_name).collect();
        f.write_str(&names.join(", "))
    }
}

/// One key of an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerKey<K> {
    pub kid: Option<KeyId>,
    /// What the key may verify: never empty in a key set.
    pub algorithms: Algorithms,
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
    Each(Vec<&'a IssuerKey<K>>),
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

    /// The keys a token of `algorithm` may be verified with: the one its `kid` names, or for a
    /// kid-less token the `max_candidates` most recent keys that verify `algorithm` (a bad
    /// kid-less token costs at most that many checks; keys of another algorithm cost none).
    pub fn select(
        &self,
        kid: Option<&str>,
        algorithm: Algorithm,
        max_candidates: usize,
    ) -> Selection<'_, K> {
        match kid {
            None => Selection::Each(
                self.keys
                    .iter()
                    .filter(|k| k.algorithms.contains(algorithm))
                    .take(max_candidates)
                    .collect(),
            ),
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
            algorithms: Algorithms::one(Algorithm::RS256),
            key: k,
        }
    }

    #[test]
    fn a_named_key_is_selected_alone() {
        let (set, _) = KeySet::new(vec![key(Some("a"), 1), key(Some("b"), 2)]);
        assert!(
            matches!(set.select(Some("b"), Algorithm::RS256, 5), Selection::Named(k) if k.key == 2)
        );
        assert!(matches!(
            set.select(Some("c"), Algorithm::RS256, 5),
            Selection::UnknownKid
        ));
    }

    #[test]
    fn a_kidless_token_tries_the_most_recent_keys_up_to_the_bound() {
        let (set, _) = KeySet::new(vec![key(Some("a"), 1), key(None, 2), key(Some("c"), 3)]);
        assert!(
            matches!(set.select(None, Algorithm::RS256, 5), Selection::Each(keys) if keys.len() == 3)
        );
        match set.select(None, Algorithm::RS256, 2) {
            Selection::Each(keys) => {
                assert_eq!(keys.iter().map(|k| k.key).collect::<Vec<_>>(), [1, 2])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_kidless_token_tries_only_keys_of_its_algorithm() {
        let mut es = key(Some("es"), 9);
        es.algorithms = Algorithms::one(Algorithm::ES384);
        let mut keys: Vec<_> = (0..6).map(|i| key(Some(&i.to_string()), i)).collect();
        keys.push(es);
        let (set, _) = KeySet::new(keys);
        match set.select(None, Algorithm::ES384, 5) {
            Selection::Each(keys) => {
                assert_eq!(keys.iter().map(|k| k.key).collect::<Vec<_>>(), [9])
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(set.select(None, Algorithm::PS256, 5), Selection::Each(k) if k.is_empty())
        );
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
            set.select(Some("dup"), Algorithm::RS256, 5),
            Selection::AmbiguousKid
        ));
        assert!(
            matches!(set.select(Some("a"), Algorithm::RS256, 5), Selection::Named(k) if k.key == 1)
        );
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
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_jose(a.jose_name()), Some(a));
        }
        assert_eq!(Algorithm::from_jose("Ed25519"), Some(Algorithm::EdDSA));
        for bad in [
            "none", "None", "NONE", "rs256", "HS256", "ES512", "Ed448", "ed25519", "PS256 ", "",
        ] {
            assert_eq!(Algorithm::from_jose(bad), None, "{bad}");
        }
    }

    #[test]
    fn algorithm_sets_hold_what_they_are_given() {
        let rsa = Algorithms::of(&[Algorithm::RS256, Algorithm::PS256]);
        assert!(rsa.contains(Algorithm::PS256) && !rsa.contains(Algorithm::RS384));
        let narrowed = rsa.intersection(Algorithms::one(Algorithm::RS256));
        assert_eq!(narrowed.iter().collect::<Vec<_>>(), [Algorithm::RS256]);
        assert!(rsa
            .intersection(Algorithms::one(Algorithm::ES384))
            .is_empty());
        assert_eq!(rsa.to_string(), "RS256, PS256");
        assert_eq!(Algorithms::of(&Algorithm::ALL).iter().count(), 9);
    }
}
