//! Bounded caches of tokens already judged, so that a token seen again costs a hash instead of a
//! signature verification: [`VerifiedCache`] for accepted tokens, [`RefusedCache`] for refused
//! ones (checklist row 29). The verified-token cache is safe by construction (checklist row 23):
//!
//! - keyed by the SHA-256 of the whole token, so two tokens never share an entry;
//! - bounded by entries and by bytes, evicting the oldest first;
//! - a hit is only a hint that the signature verified: the claims' times and audience are checked
//!   again on every hit, and the entry is dropped unless the key set that verified it is still
//!   the source's current one (a key that leaves its set takes its entries with it);
//! - only successful verifications are cached.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use duo_workflow_domain::identity::CopiedClaim;
use duo_workflow_domain::keys::KeySet;
use duo_workflow_domain::mapping::ClaimName;
use duo_workflow_domain::{Claims, Issuer, Rejection, UnitPrimitive};
use ring::digest;

use crate::authenticator::DynKeySource;
use crate::jose::keys::PublicKey;

pub type TokenDigest = [u8; 32];

pub fn digest_of(token: &str) -> TokenDigest {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What a hit gives back: the claims, and the source and key set that verified them.
#[derive(Clone)]
pub struct Entry {
    pub claims: Claims,
    pub source: DynKeySource,
    /// Weak, so a replaced key set is freed; compared by address with the source's current set.
    pub keys: Weak<KeySet<PublicKey>>,
    bytes: usize,
}

impl Entry {
    pub fn new(
        claims: Claims,
        source: DynKeySource,
        keys: &Arc<KeySet<PublicKey>>,
        token_len: usize,
    ) -> Self {
        let bytes = Self::heap_bytes(&claims) + 64 + token_len / 8;
        Self {
            claims,
            source,
            keys: Arc::downgrade(keys),
            bytes,
        }
    }

    /// What an entry takes from the heap, counted so that the byte bound bounds it
    /// (`adapters/tests/verified_cache_memory.rs` holds this to an allocator's count): its slot
    /// in the map and in the order queue, each counted twice (a table just grown is half
    /// empty), the claims' strings and vectors by capacity, and 16 bytes per allocation.
    fn heap_bytes(c: &Claims) -> usize {
        let digest = std::mem::size_of::<TokenDigest>();
        let slots = 2 * (digest + std::mem::size_of::<Self>()) + 2 * digest;
        let optional = [
            &c.subject,
            &c.realm,
            &c.instance_id,
            &c.caller_instance,
            &c.duo_seat_count,
            &c.jti,
        ];
        let strings = c.issuer.as_str().len()
            + optional
                .iter()
                .flat_map(|s| s.as_ref())
                .map(String::capacity)
                .sum::<usize>()
            + c.audience.capacity() * std::mem::size_of::<String>()
            + c.audience.iter().map(String::capacity).sum::<usize>()
            + c.scopes.capacity() * std::mem::size_of::<UnitPrimitive>()
            + c.scopes.iter().map(|s| s.as_str().len()).sum::<usize>()
            + c.copied.capacity() * std::mem::size_of::<CopiedClaim>()
            + c.copied
                .iter()
                .map(|k| k.value.as_str().len())
                .sum::<usize>()
            + c.scope_evidence.looked_at.capacity() * std::mem::size_of::<ClaimName>()
            + c.scope_evidence.provider_scopes.capacity() * std::mem::size_of::<String>()
            + c.scope_evidence
                .provider_scopes
                .iter()
                .map(String::capacity)
                .sum::<usize>();
        let allocations = 1
            + optional.iter().filter(|s| s.is_some()).count()
            + 1
            + c.audience.len()
            + 1
            + c.scopes.len()
            + 1
            + c.copied.len()
            + 2
            + c.scope_evidence.provider_scopes.len();
        slots + strings + 16 * allocations
    }

    /// Whether the key set that verified the token is still its source's current set.
    pub fn still_trusted(&self) -> bool {
        match self.source.current() {
            Some(current) => std::ptr::eq(Arc::as_ptr(&current), self.keys.as_ptr()),
            None => false,
        }
    }
}

#[derive(Default)]
struct Inner {
    map: HashMap<TokenDigest, Entry>,
    order: VecDeque<TokenDigest>,
    bytes: usize,
}

pub struct VerifiedCache {
    limits: CacheLimits,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the cache did and holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub bytes: usize,
}

impl VerifiedCache {
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The entry for `key` while its key set is still current (a hit); otherwise the entry, if
    /// any, is dropped (a miss).
    pub fn lookup(&self, key: &TokenDigest) -> Option<Entry> {
        match self.get(key) {
            Some(entry) if entry.still_trusted() => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(entry)
            }
            stale => {
                if stale.is_some() {
                    self.remove(key);
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.limits.max_entries > 0 && self.limits.max_bytes > 0
    }

    pub fn get(&self, key: &TokenDigest) -> Option<Entry> {
        self.inner.lock().expect("cache lock").map.get(key).cloned()
    }

    pub fn remove(&self, key: &TokenDigest) {
        let mut inner = self.inner.lock().expect("cache lock");
        if let Some(old) = inner.map.remove(key) {
            inner.bytes -= old.bytes;
        }
    }

    pub fn insert(&self, key: TokenDigest, entry: Entry) {
        if !self.enabled() || entry.bytes > self.limits.max_bytes {
            return;
        }
        let mut inner = self.inner.lock().expect("cache lock");
        let added = entry.bytes;
        match inner.map.insert(key, entry) {
            Some(old) => inner.bytes -= old.bytes,
            None => inner.order.push_back(key),
        }
        inner.bytes += added;
        while inner.map.len() > self.limits.max_entries || inner.bytes > self.limits.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.map.remove(&oldest) {
                inner.bytes -= old.bytes;
            }
        }
        // Removed entries leave stale digests in `order`; compact when they dominate.
        if inner.order.len() > 2 * self.limits.max_entries.max(16) {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|k| map.contains_key(k));
        }
    }

    /// Entries and bytes held, for tests and metrics.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("cache lock");
        (inner.map.len(), inner.bytes)
    }

    /// Hits and misses of [`VerifiedCache::lookup`] so far, and what the cache holds.
    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = self.usage();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }
}

/// Bounds of the cache of refused tokens.
#[derive(Debug, Clone, Copy)]
pub struct RefusedLimits {
    pub max_entries: usize,
    /// How long a refusal is remembered.
    pub ttl: Duration,
}

impl Default for RefusedLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            ttl: Duration::from_secs(60),
        }
    }
}

/// A key set a refusal was judged with: the source, and its set then (`None`: it had none).
#[derive(Clone)]
pub struct JudgedWith {
    pub source: DynKeySource,
    pub keys: Option<Weak<KeySet<PublicKey>>>,
}

impl JudgedWith {
    pub fn new(source: &DynKeySource, keys: Option<&Arc<KeySet<PublicKey>>>) -> Self {
        Self {
            source: source.clone(),
            keys: keys.map(Arc::downgrade),
        }
    }

    /// Whether the source still has the set the refusal was judged with.
    fn unchanged(&self) -> bool {
        match (self.source.current(), &self.keys) {
            (Some(current), Some(then)) => std::ptr::eq(Arc::as_ptr(&current), then.as_ptr()),
            (None, None) => true,
            _ => false,
        }
    }
}

struct Refused {
    rejection: Rejection,
    /// The issuer whose keys judged it, for the refusal's metrics.
    issuer: Option<Issuer>,
    judged_with: Vec<JudgedWith>,
    at: Instant,
}

/// Tokens refused after signature work (checklist row 29), by hash: a replay is answered with
/// the same refusal after a lookup, without another verification, while the refusal is young
/// and every key set it was judged with is still its source's current one (a rotation or a
/// provider coming back re-opens the question). Refusals that time could undo (`nbf`, `iat` in
/// the future) are never remembered.
pub struct RefusedCache {
    limits: RefusedLimits,
    inner: Mutex<(HashMap<TokenDigest, Refused>, VecDeque<TokenDigest>)>,
}

impl RefusedCache {
    pub fn new(limits: RefusedLimits) -> Self {
        Self {
            limits,
            inner: Mutex::new(Default::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.limits.max_entries > 0 && !self.limits.ttl.is_zero()
    }

    /// Whether a refusal is worth remembering: it cost signature work and time cannot undo it.
    pub fn remembers(rejection: &Rejection) -> bool {
        !matches!(
            rejection,
            Rejection::NotYetValid | Rejection::IssuedInFuture | Rejection::TooLong { .. }
        )
    }

    /// The remembered refusal of a token, and the issuer whose keys judged it.
    pub fn get(&self, key: &TokenDigest) -> Option<(Rejection, Option<Issuer>)> {
        let mut inner = self.inner.lock().expect("refused cache lock");
        let entry = inner.0.get(key)?;
        if entry.at.elapsed() < self.limits.ttl
            && entry.judged_with.iter().all(JudgedWith::unchanged)
        {
            return Some((entry.rejection.clone(), entry.issuer.clone()));
        }
        inner.0.remove(key);
        None
    }

    pub fn insert(&self, key: TokenDigest, rejection: Rejection, judged_with: Vec<JudgedWith>) {
        if !self.enabled() || !Self::remembers(&rejection) {
            return;
        }
        let mut inner = self.inner.lock().expect("refused cache lock");
        let (map, order) = &mut *inner;
        let issuer = judged_with
            .first()
            .and_then(|j| j.source.issuer().known().cloned());
        let refused = Refused {
            rejection,
            issuer,
            judged_with,
            at: Instant::now(),
        };
        if map.insert(key, refused).is_none() {
            order.push_back(key);
        }
        while map.len() > self.limits.max_entries {
            let Some(oldest) = order.pop_front() else {
                break;
            };
            map.remove(&oldest);
        }
        if order.len() > 2 * self.limits.max_entries.max(16) {
            order.retain(|k| map.contains_key(k));
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("refused cache lock").0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::StaticKeySource;
    use duo_workflow_domain::keys::IssuerKey;
    use duo_workflow_domain::{Issuer, UnixTime};

    fn source() -> (DynKeySource, Arc<KeySet<PublicKey>>) {
        let key = PublicKey::ed25519(&[7; 32]).unwrap().into_issuer_key(None);
        let keys: Vec<IssuerKey<PublicKey>> = vec![key];
        let s = StaticKeySource::new(
            "s",
            Issuer::new("i"),
            vec![],
            keys,
            UnixTime::from_secs(0).unwrap(),
        )
        .unwrap();
        let s: DynKeySource = Arc::new(s);
        let current = s.current().unwrap();
        (s, current)
    }

    fn claims(sub: &str) -> Claims {
        Claims {
            issuer: duo_workflow_domain::Issuer::new("i"),
            subject: Some(sub.into()),
            audience: vec!["a".into()],
            scopes: vec![],
            realm: None,
            instance_id: None,
            caller_instance: Some(sub.into()),
            scope_evidence: Default::default(),
            duo_seat_count: None,
            copied: vec![],
            jti: None,
            expires_at: None,
            not_before: None,
            issued_at: None,
        }
    }

    #[test]
    fn entries_are_bounded_oldest_first() {
        let (s, keys) = source();
        let cache = VerifiedCache::new(CacheLimits {
            max_entries: 3,
            max_bytes: 1 << 20,
        });
        for i in 0..5u8 {
            cache.insert(
                [i; 32],
                Entry::new(claims(&i.to_string()), s.clone(), &keys, 100),
            );
        }
        assert_eq!(cache.usage().0, 3);
        assert!(cache.get(&[0; 32]).is_none() && cache.get(&[1; 32]).is_none());
        assert!(cache.get(&[4; 32]).is_some());
    }

    #[test]
    fn bytes_are_bounded() {
        let (s, keys) = source();
        let one = Entry::new(claims("x"), s.clone(), &keys, 1000).bytes;
        let cache = VerifiedCache::new(CacheLimits {
            max_entries: 1000,
            max_bytes: one * 2 + one / 2,
        });
        for i in 0..10u8 {
            cache.insert([i; 32], Entry::new(claims("x"), s.clone(), &keys, 1000));
        }
        let (entries, bytes) = cache.usage();
        assert_eq!(entries, 2);
        assert!(bytes <= one * 2 + one / 2);
    }

    #[test]
    fn repeated_inserts_and_removals_do_not_grow_the_order_queue_unbounded() {
        let (s, keys) = source();
        let cache = VerifiedCache::new(CacheLimits {
            max_entries: 4,
            max_bytes: 1 << 20,
        });
        for i in 0..10_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(k, Entry::new(claims("x"), s.clone(), &keys, 10));
            cache.remove(&k);
        }
        assert_eq!(cache.usage(), (0, 0));
        assert!(cache.inner.lock().unwrap().order.len() <= 2 * 16 + 1);
    }

    #[test]
    fn an_entry_is_trusted_only_while_its_key_set_is_current() {
        let (s, keys) = source();
        let entry = Entry::new(claims("x"), s.clone(), &keys, 10);
        assert!(entry.still_trusted());
        let (other, other_keys) = source();
        let stale = Entry::new(claims("x"), other, &keys, 10);
        assert!(
            !stale.still_trusted(),
            "a set that is not the source's current one"
        );
        drop(other_keys);
    }

    #[test]
    fn lookups_count_hits_and_misses_and_drop_untrusted_entries() {
        let (s, keys) = source();
        let cache = VerifiedCache::new(CacheLimits::default());
        cache.insert([1; 32], Entry::new(claims("x"), s.clone(), &keys, 10));
        assert!(cache.lookup(&[1; 32]).is_some());
        assert!(cache.lookup(&[2; 32]).is_none());
        let (other, _other_keys) = source();
        cache.insert([3; 32], Entry::new(claims("x"), other, &keys, 10));
        assert!(
            cache.lookup(&[3; 32]).is_none(),
            "its key set is not current"
        );
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 1));
    }

    #[test]
    fn disabled_caches_hold_nothing() {
        let (s, keys) = source();
        let cache = VerifiedCache::new(CacheLimits {
            max_entries: 0,
            max_bytes: 1 << 20,
        });
        cache.insert([1; 32], Entry::new(claims("x"), s, &keys, 10));
        assert_eq!(cache.usage(), (0, 0));
    }

    /// A source whose keys a test can replace.
    struct Swappable(Mutex<Arc<KeySet<PublicKey>>>);

    #[async_trait::async_trait]
    impl duo_workflow_domain::ports::KeySource<PublicKey> for Swappable {
        fn name(&self) -> &str {
            "swappable"
        }
        fn issuer(&self) -> duo_workflow_domain::issuers::SourceIssuer<'_> {
            static ISSUER: std::sync::OnceLock<Issuer> = std::sync::OnceLock::new();
            duo_workflow_domain::issuers::SourceIssuer::Fixed(
                ISSUER.get_or_init(|| Issuer::new("i")),
            )
        }
        fn algorithms(&self) -> &[duo_workflow_domain::keys::Algorithm] {
            &[duo_workflow_domain::keys::Algorithm::EdDSA]
        }
        fn current(&self) -> Option<Arc<KeySet<PublicKey>>> {
            Some(self.0.lock().unwrap().clone())
        }
        fn state(&self) -> duo_workflow_domain::ports::SourceState {
            duo_workflow_domain::ports::SourceState::Pending { reason: None }
        }
    }

    fn set(byte: u8) -> Arc<KeySet<PublicKey>> {
        let key = PublicKey::ed25519(&[byte; 32])
            .unwrap()
            .into_issuer_key(None);
        Arc::new(KeySet::new(vec![key]).0)
    }

    #[test]
    fn a_refusal_is_remembered_while_its_key_sets_stay_and_it_is_young() {
        let swappable = Arc::new(Swappable(Mutex::new(set(7))));
        let source: DynKeySource = swappable.clone();
        let cache = RefusedCache::new(RefusedLimits {
            max_entries: 2,
            ttl: Duration::from_millis(200),
        });
        let judged = || vec![JudgedWith::new(&source, source.current().as_ref())];
        cache.insert([1; 32], Rejection::BadSignature, judged());
        assert_eq!(
            cache.get(&[1; 32]).map(|r| r.0),
            Some(Rejection::BadSignature)
        );
        // The issuer rotated: the same token is judged again.
        *swappable.0.lock().unwrap() = set(8);
        assert_eq!(cache.get(&[1; 32]), None);
        assert!(cache.is_empty());
        // Bounded, oldest first.
        for k in 2..=4u8 {
            cache.insert([k; 32], Rejection::Expired, judged());
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&[2; 32]), None);
        assert_eq!(cache.get(&[4; 32]).map(|r| r.0), Some(Rejection::Expired));
        // Young only.
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.get(&[4; 32]), None);
    }

    #[test]
    fn refusals_time_could_undo_are_not_remembered() {
        let (source, keys) = source();
        let cache = RefusedCache::new(RefusedLimits::default());
        for r in [Rejection::NotYetValid, Rejection::IssuedInFuture] {
            cache.insert([9; 32], r, vec![JudgedWith::new(&source, Some(&keys))]);
            assert_eq!(cache.get(&[9; 32]), None);
        }
        let off = RefusedCache::new(RefusedLimits {
            max_entries: 0,
            ..RefusedLimits::default()
        });
        off.insert([9; 32], Rejection::BadSignature, vec![]);
        assert!(off.is_empty());
    }
}
