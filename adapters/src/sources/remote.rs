//! Remote key sources: OIDC discovery (`{issuer}/.well-known/openid-configuration` → `jwks_uri`)
//! or a direct JWKS URL. This is where GitLab's Python service failed its users, so:
//!
//! - the issuer is configured (and a discovery document must name it), or, for the built-in
//!   GitLab and CustomersDot sources, learned from the first accepted discovery document, claimed
//!   in [`IssuerClaims`] and fixed from then on;
//!
//! - keys are refreshed in the background, honouring `Cache-Control: max-age` within bounds;
//! - a failed refresh keeps the last good keys (up to `max_stale`) and retries with backoff;
//! - a miss (unknown `kid`, or a kid-less token no key verifies) triggers one refetch, shared by
//!   every concurrent miss and started at most once per `miss_refetch_interval`;
//! - the key set is swapped whole; a lock is only ever held to clone an `Arc`, never across a fetch;
//! - the source never blocks or fails start-up: it starts empty and says why.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use duo_workflow_domain::issuers::{IssuerClaims, SourceIssuer};
use duo_workflow_domain::keys::{Algorithm, KeySet};
use duo_workflow_domain::mapping::ClaimMapping;
use duo_workflow_domain::ports::{Clock, KeySource, RefreshBasis, RefreshSchedule, SourceState};
use duo_workflow_domain::{Issuer, UnixTime};
use futures::future::{BoxFuture, FutureExt, Shared};
use rand::Rng;
use tokio::time::Instant;
use url::Url;

use super::fetch::{capped, check_scheme, FetchPolicy, Fetcher, Shown};
use crate::jose::json::unique_object;
use crate::jose::jwk::parse_jwks;
use crate::jose::keys::{KeyPolicy, PublicKey};

/// Where the keys are.
#[derive(Debug, Clone)]
pub enum Locator {
    /// OIDC discovery under `url` (default: the issuer itself, which must then be fixed).
    Discovery { url: Option<Url> },
    /// A JWKS URL, no discovery.
    Jwks(Url),
}

/// For logs: where the source looks.
impl std::fmt::Display for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Locator::Discovery { url: Some(url) } => {
                write!(f, "OIDC discovery under {}", Shown(url))
            }
            Locator::Discovery { url: None } => f.write_str("OIDC discovery under the issuer"),
            Locator::Jwks(url) => write!(f, "JWKS at {}", Shown(url)),
        }
    }
}

/// Which issuer a remote source serves.
#[derive(Debug, Clone)]
pub enum IssuerSetting {
    /// Configured: the `iss` of the tokens these keys verify, exactly as written (a trailing
    /// slash is part of it). A discovery document must name it too, a trailing slash being the
    /// only difference tolerated there (checklist row 17).
    Fixed(Issuer),
    /// Whatever the discovery document under `Locator::Discovery { url: Some(_) }` names, exactly
    /// as it names it: learned from the first document whose issuer [`IssuerClaims`] lets this
    /// source claim, and fixed from then on (a later document naming another is a failed
    /// refresh). The built-in GitLab and CustomersDot sources, reached by an internal URL whose
    /// document names the external issuer their tokens carry.
    Discovered,
}

/// How often to refresh, and how long old keys stay good.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// Bounds applied to the provider's `Cache-Control: max-age`.
    pub min_interval: Duration,
    pub max_interval: Duration,
    /// The interval when the key set comes without a `max-age` (within the bounds): short, so
    /// that a key the provider removed is not trusted long.
    pub default_interval: Duration,
    /// Keep serving the last good keys this long while refreshes fail.
    pub max_stale: Duration,
    /// At most one miss-triggered refetch per this interval.
    pub miss_refetch_interval: Duration,
    /// How long a request may wait for a miss-triggered refetch.
    pub miss_wait: Duration,
    /// First retry delay after a failure; doubles up to `retry_max` (and `max_interval`), with jitter.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(60),
            max_interval: Duration::from_secs(3600),
            default_interval: Duration::from_secs(300),
            max_stale: Duration::from_secs(72 * 3600),
            miss_refetch_interval: Duration::from_secs(10),
            miss_wait: Duration::from_secs(5),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RemoteSourceConfig {
    pub name: String,
    pub issuer: IssuerSetting,
    pub locator: Locator,
    pub algorithms: Vec<Algorithm>,
    /// How the source's tokens are read (GitLab's shape unless configured).
    pub claims: ClaimMapping,
    pub required: bool,
    /// What keys the source accepts beyond the safe defaults.
    pub key_policy: KeyPolicy,
    pub fetch: FetchPolicy,
    pub refresh: RefreshPolicy,
}

impl RemoteSourceConfig {
    /// The issuer, when configuration fixes it.
    pub fn fixed_issuer(&self) -> Option<&Issuer> {
        match &self.issuer {
            IssuerSetting::Fixed(issuer) => Some(issuer),
            IssuerSetting::Discovered => None,
        }
    }
}

/// The longest issuer a discovery document may name (checklist row 34: what is copied into
/// logs and state is bounded).
pub const MAX_ISSUER_LEN: usize = 1024;

/// Where the JWKS URL comes from, resolved once.
enum KeysAt {
    Jwks(Url),
    /// The discovery document's URL.
    Discovery(Url),
}

/// What the source currently serves.
struct Snapshot {
    keys: Option<Arc<KeySet<PublicKey>>>,
    /// When the keys were fetched: monotonic (staleness) and wall clock (reports).
    fetched_at: Option<(Instant, UnixTime)>,
    last_error: Option<String>,
}

type SharedFetch = Shared<BoxFuture<'static, Option<Arc<KeySet<PublicKey>>>>>;

/// The fetch in flight, if any, and when the last miss-triggered fetch started.
#[derive(Default)]
struct Flight {
    running: Option<SharedFetch>,
    last_miss_start: Option<Instant>,
}

pub struct RemoteKeySource {
    me: Weak<RemoteKeySource>,
    config: RemoteSourceConfig,
    keys_at: KeysAt,
    /// Decides whether a discovered issuer may be served (`IssuerSetting::Discovered` only).
    claims: Arc<IssuerClaims>,
    /// The issuer learned by discovery; set once, read without a lock.
    learned: OnceLock<Issuer>,
    fetcher: Fetcher,
    clock: Arc<dyn Clock>,
    snapshot: RwLock<Arc<Snapshot>>,
    flight: Mutex<Flight>,
    /// The refresh interval the last successful fetch earned (`None`: no fetch succeeded yet).
    next_refresh: Mutex<Option<RefreshSchedule>>,
    /// Fetches (discovery, then JWKS) that installed keys, and those that failed.
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
    /// Whether the difference of a trailing slash between the configured issuer and the
    /// discovery document's was logged (once).
    slash_warned: AtomicBool,
}

impl RemoteKeySource {
    /// `claims` decides which issuer a discovering source may learn; sources with a fixed
    /// issuer do not use it.
    pub fn new(
        config: RemoteSourceConfig,
        clock: Arc<dyn Clock>,
        claims: Arc<IssuerClaims>,
    ) -> Result<Arc<Self>, String> {
        let keys_at = match (&config.locator, &config.issuer) {
            (Locator::Discovery { url: Some(base) }, _) => KeysAt::Discovery(discovery_url(base)?),
            (Locator::Discovery { url: None }, IssuerSetting::Fixed(issuer)) => {
                let base =
                    Url::parse(issuer.as_str()).map_err(|e| format!("issuer is not a URL: {e}"))?;
                KeysAt::Discovery(discovery_url(&base)?)
            }
            (Locator::Discovery { url: None }, IssuerSetting::Discovered) => {
                return Err("an issuer learned by discovery needs a discovery URL".into())
            }
            // A JWKS source's issuer is only a name to match `iss` against.
            (Locator::Jwks(url), IssuerSetting::Fixed(_)) => KeysAt::Jwks(url.clone()),
            (Locator::Jwks(_), IssuerSetting::Discovered) => {
                return Err("only OIDC discovery can name an issuer".into())
            }
        };
        match &keys_at {
            KeysAt::Jwks(url) | KeysAt::Discovery(url) => {
                check_scheme(url, config.fetch.allow_insecure_http)?
            }
        }
        if config.algorithms.is_empty() {
            return Err("no algorithms allowed".into());
        }
        if config.refresh.min_interval > config.refresh.max_interval {
            return Err("the refresh interval's minimum is above its maximum".into());
        }
        let fetcher = Fetcher::new(config.fetch.clone())?;
        let next_refresh = Mutex::new(None);
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            config,
            keys_at,
            claims,
            learned: OnceLock::new(),
            fetcher,
            clock,
            snapshot: RwLock::new(Arc::new(Snapshot {
                keys: None,
                fetched_at: None,
                last_error: None,
            })),
            flight: Mutex::new(Flight::default()),
            next_refresh,
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
            slash_warned: AtomicBool::new(false),
        }))
    }

    /// Fetches so far that installed keys, and fetches that failed (for metrics).
    pub fn fetch_counts(&self) -> (u64, u64) {
        (
            self.fetches_ok.load(Ordering::Relaxed),
            self.fetches_failed.load(Ordering::Relaxed),
        )
    }

    /// Fetches the keys once, now (or joins the fetch under way), without a background refresh
    /// (`token explain`); whether keys were installed.
    pub async fn fetch_once(&self) -> bool {
        let fetch = self.join_or_start(&mut self.flight.lock().expect("flight lock"));
        fetch.await.is_some()
    }

    /// Starts the background refresh (the first fetch starts now); it ends with the source.
    pub fn spawn_refresh(&self) {
        tokio::spawn(refresh_loop(self.me.clone()));
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock").clone()
    }

    /// The running fetch, or a new one. The fetch runs in its own task, so a caller that gives
    /// up (its deadline) does not cancel it for the others.
    fn join_or_start(&self, flight: &mut Flight) -> SharedFetch {
        if let Some(running) = &flight.running {
            return running.clone();
        }
        let me = self.me.clone();
        let task = tokio::spawn(async move {
            match me.upgrade() {
                Some(source) => source.fetch_and_install().await,
                None => None,
            }
        });
        let me = self.me.clone();
        let fetch: BoxFuture<'static, _> = async move {
            let result = task.await;
            if result.is_err() {
                // The fetch task panicked before clearing the flight: clear it, or no fetch
                // would ever start again.
                if let Some(source) = me.upgrade() {
                    source.flight.lock().expect("flight lock").running = None;
                }
            }
            result.ok().flatten()
        }
        .boxed();
        let shared = fetch.shared();
        flight.running = Some(shared.clone());
        shared
    }

    /// One fetch; on success the new set is installed and returned.
    async fn fetch_and_install(&self) -> Option<Arc<KeySet<PublicKey>>> {
        let installed = match self.fetch_keys().await {
            Ok((set, max_age)) => {
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                let current = self.install(Arc::new(set));
                *self.next_refresh.lock().expect("refresh lock") = Some(self.schedule_for(max_age));
                Some(current)
            }
            Err(why) => {
                // Provider text inside (a status, a cause): bounded before it is logged and kept.
                let why = capped(&why, 512).into_owned();
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %self.config.name, issuer = %self.issuer(), "key fetch failed: {why}");
                let mut slot = self.snapshot.write().expect("snapshot lock");
                *slot = Arc::new(Snapshot {
                    keys: slot.keys.clone(),
                    fetched_at: slot.fetched_at,
                    last_error: Some(why),
                });
                None
            }
        };
        self.flight.lock().expect("flight lock").running = None;
        installed
    }

    /// When to fetch again: after the key set's `max-age`, or the default interval without one
    /// (a provider that says nothing is not trusted for the maximum), within the bounds.
    fn schedule_for(&self, max_age: Option<Duration>) -> RefreshSchedule {
        let r = &self.config.refresh;
        let (interval, basis) = match max_age {
            Some(age) => (age, RefreshBasis::CacheControl),
            None => (r.default_interval, RefreshBasis::Default),
        };
        RefreshSchedule {
            every_seconds: interval.clamp(r.min_interval, r.max_interval).as_secs(),
            basis,
        }
    }

    /// Installs a fetched set and returns the one now current: the previous `Arc` when nothing
    /// changed, so that what was verified with it (the verified-token cache) stays valid.
    fn install(&self, set: Arc<KeySet<PublicKey>>) -> Arc<KeySet<PublicKey>> {
        let kids =
            |k: &KeySet<PublicKey>| k.kids().into_iter().map(str::to_owned).collect::<Vec<_>>();
        let mut slot = self.snapshot.write().expect("snapshot lock");
        let current = match &slot.keys {
            Some(previous) if **previous == *set => previous.clone(),
            previous => {
                tracing::info!(
                    source = %self.config.name,
                    issuer = %self.issuer(),
                    keys = set.len(),
                    kids = ?kids(&set),
                    previous_kids = ?previous.as_deref().map(kids),
                    "key set changed"
                );
                set
            }
        };
        *slot = Arc::new(Snapshot {
            keys: Some(current.clone()),
            fetched_at: Some((Instant::now(), self.clock.now())),
            last_error: None,
        });
        current
    }

    async fn fetch_keys(&self) -> Result<(KeySet<PublicKey>, Option<Duration>), String> {
        let jwks_uri = match &self.keys_at {
            KeysAt::Jwks(url) => url.clone(),
            KeysAt::Discovery(url) => self.discover(url).await?,
        };
        let fetched = self.fetcher.get(&jwks_uri).await?;
        let parsed = parse_jwks(&fetched.body, self.config.key_policy)?;
        super::report_dropped(&self.config.name, &self.issuer(), &parsed.dropped);
        let (usable, refused) = super::allowed_keys(parsed.keys, &self.config.algorithms);
        super::report_dropped(&self.config.name, &self.issuer(), &refused);
        if usable.is_empty() {
            return Err(format!(
                "{} holds no usable key for {:?}",
                Shown(&jwks_uri),
                self.config.algorithms
            ));
        }
        // A rotation's new keys go first: kid-less tokens try the most recent keys.
        let usable = match &self.snapshot().keys {
            Some(previous) => previous.after(usable),
            None => usable,
        };
        let (set, report) = KeySet::new(usable);
        super::report_load(&self.config.name, &self.issuer(), &report);
        Ok((set, fetched.max_age))
    }

    /// The discovery document's `jwks_uri`, once its `issuer` is this source's.
    async fn discover(&self, url: &Url) -> Result<Url, String> {
        let fetched = self.fetcher.get(url).await?;
        let doc =
            DiscoveryDocument::parse(&fetched.body).map_err(|e| format!("{}: {e}", Shown(url)))?;
        self.accept_issuer(url, &doc.issuer)
            .map_err(|e| format!("{}: {e}", Shown(url)))?;
        Ok(doc.jwks_uri)
    }

    /// Whether this source may take keys from a document naming `named`: a fixed issuer must be
    /// named; a discovering source learns the first issuer it may claim, then holds to it.
    fn accept_issuer(&self, url: &Url, named: &str) -> Result<(), String> {
        let learned = match (&self.config.issuer, self.learned.get()) {
            (IssuerSetting::Fixed(issuer), _) => {
                same_issuer(named, issuer.as_str())?;
                if named != issuer.as_str() && !self.slash_warned.swap(true, Ordering::Relaxed) {
                    // Tokens carry what the provider states: with the configured form they
                    // would all be refused as of an unknown issuer.
                    tracing::warn!(
                        source = %self.config.name,
                        url = %Shown(url),
                        configured = %issuer,
                        stated = named,
                        "the discovery document states the issuer with a different trailing \
                         slash: tokens are matched against the configured issuer exactly; \
                         write it as the document does if the tokens carry that form"
                    );
                }
                return Ok(());
            }
            (IssuerSetting::Discovered, Some(learned)) => {
                return same_issuer(named, learned.as_str()).map_err(|e| {
                    format!(
                        "{e}, the issuer its first document named (kept while the process runs)"
                    )
                })
            }
            (IssuerSetting::Discovered, None) => Issuer::new(named),
        };
        self.claims
            .claim(&self.config.name, &learned)
            .map_err(|why| {
                format!("names issuer {named:?}, which this source may not serve: {why}")
            })?;
        tracing::info!(
            source = %self.config.name,
            url = %url,
            issuer = %learned,
            "issuer learned from the discovery document"
        );
        // Only this source's single fetch in flight gets here, and the claim above held.
        let _ = self.learned.set(learned);
        Ok(())
    }
}

/// `{base}/.well-known/openid-configuration`.
fn discovery_url(base: &Url) -> Result<Url, String> {
    Url::parse(&format!(
        "{}/.well-known/openid-configuration",
        base.as_str().trim_end_matches('/')
    ))
    .map_err(|e| format!("discovery URL: {e}"))
}

/// An issuer named by a document equals the expected one (a trailing slash is the only
/// difference tolerated).
fn same_issuer(named: &str, expected: &str) -> Result<(), String> {
    if named.trim_end_matches('/') == expected.trim_end_matches('/') {
        Ok(())
    } else {
        Err(format!("names issuer {named:?}, not {expected:?}"))
    }
}

/// What this service reads from an OIDC discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryDocument {
    /// As the document writes it: not empty (nor only slashes), at most [`MAX_ISSUER_LEN`]
    /// bytes, no control characters.
    pub issuer: String,
    pub jwks_uri: Url,
}

impl DiscoveryDocument {
    /// Parses a document as strictly as a token: a JSON object with unique member names
    /// (checklist row 34), a bounded `issuer`, and a `jwks_uri` URL.
    pub fn parse(document: &[u8]) -> Result<Self, String> {
        let doc = unique_object(document).ok_or("not a JSON object with unique member names")?;
        let issuer = doc
            .get("issuer")
            .and_then(|v| v.as_str())
            .ok_or("no issuer")?;
        if issuer.trim_end_matches('/').is_empty() || issuer.len() > MAX_ISSUER_LEN {
            return Err(format!(
                "its issuer is empty or longer than {MAX_ISSUER_LEN} bytes"
            ));
        }
        if issuer.chars().any(char::is_control) {
            return Err("its issuer holds control characters".into());
        }
        let jwks = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or("no jwks_uri")?;
        let jwks_uri = Url::parse(jwks).map_err(|e| {
            let shown: String = jwks.chars().take(256).collect();
            format!("jwks_uri {shown:?}: {e}")
        })?;
        Ok(Self {
            issuer: issuer.to_owned(),
            jwks_uri,
        })
    }
}

/// The `jwks_uri` of an OIDC discovery document, once its `issuer` is `issuer` (a trailing slash
/// is the only difference tolerated).
pub fn jwks_uri_of(document: &[u8], issuer: &str) -> Result<Url, String> {
    let doc = DiscoveryDocument::parse(document)?;
    same_issuer(&doc.issuer, issuer)?;
    Ok(doc.jwks_uri)
}

async fn refresh_loop(source: Weak<RemoteKeySource>) {
    let mut failures: u32 = 0;
    loop {
        let delay = {
            let Some(source) = source.upgrade() else {
                return;
            };
            let fetch = source.join_or_start(&mut source.flight.lock().expect("flight lock"));
            if fetch.await.is_some() {
                failures = 0;
                let schedule = *source.next_refresh.lock().expect("refresh lock");
                schedule.map_or(source.config.refresh.max_interval, |s| {
                    Duration::from_secs(s.every_seconds)
                })
            } else {
                failures = failures.saturating_add(1);
                backoff(&source.config.refresh, failures)
            }
        };
        // Only a weak reference is held while sleeping, so a dropped source ends the loop.
        tokio::time::sleep(delay).await;
    }
}

/// Exponential backoff with jitter, capped at `retry_max` and the maximum refresh interval.
fn backoff(policy: &RefreshPolicy, failures: u32) -> Duration {
    let exp = policy
        .retry_initial
        .saturating_mul(1u32 << failures.clamp(1, 16).saturating_sub(1));
    let cap = exp.min(policy.retry_max).min(policy.max_interval);
    cap.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

#[async_trait]
impl KeySource<PublicKey> for RemoteKeySource {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn issuer(&self) -> SourceIssuer<'_> {
        match &self.config.issuer {
            IssuerSetting::Fixed(issuer) => SourceIssuer::Fixed(issuer),
            IssuerSetting::Discovered => SourceIssuer::Discovered(self.learned.get()),
        }
    }

    fn algorithms(&self) -> &[Algorithm] {
        &self.config.algorithms
    }

    fn claim_mapping(&self) -> &ClaimMapping {
        &self.config.claims
    }

    /// The last good keys, unless older than `max_stale`.
    fn current(&self) -> Option<Arc<KeySet<PublicKey>>> {
        let s = self.snapshot();
        match s.fetched_at {
            Some((at, _)) if at.elapsed() <= self.config.refresh.max_stale => s.keys.clone(),
            _ => None,
        }
    }

    async fn refetch_after_miss(
        &self,
        seen: Option<&Arc<KeySet<PublicKey>>>,
    ) -> Option<Arc<KeySet<PublicKey>>> {
        // Someone refreshed since the caller looked: try that first, no fetch.
        if let Some(current) = self.current() {
            if seen.is_none_or(|seen| !Arc::ptr_eq(&current, seen)) {
                return Some(current);
            }
        }
        let fetch = {
            let mut flight = self.flight.lock().expect("flight lock");
            let rate_limited = flight
                .last_miss_start
                .is_some_and(|t| t.elapsed() < self.config.refresh.miss_refetch_interval);
            if flight.running.is_none() && rate_limited {
                return None; // fail fast: random kids must not become a flood of fetches
            }
            if flight.running.is_none() {
                flight.last_miss_start = Some(Instant::now());
            }
            self.join_or_start(&mut flight)
        };
        tokio::time::timeout(self.config.refresh.miss_wait, fetch)
            .await
            .ok()
            .flatten()
    }

    fn state(&self) -> SourceState {
        let s = self.snapshot();
        match (&s.keys, s.fetched_at, self.current().is_some()) {
            (Some(keys), Some((_, loaded_at)), true) => match &s.last_error {
                None => SourceState::Ready {
                    keys: keys.len(),
                    loaded_at,
                },
                Some(e) => SourceState::Stale {
                    keys: keys.len(),
                    loaded_at,
                    reason: e.clone(),
                },
            },
            _ => SourceState::Pending {
                reason: s.last_error.clone(),
            },
        }
    }

    fn required(&self) -> bool {
        self.config.required
    }

    fn refresh(&self) -> Option<RefreshSchedule> {
        *self.next_refresh.lock().expect("refresh lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use duo_workflow_domain::ServiceName;

    const URL: &str = "http://127.0.0.1:8080";

    fn source(
        name: &str,
        issuer: IssuerSetting,
        claims: &Arc<IssuerClaims>,
    ) -> Arc<RemoteKeySource> {
        RemoteKeySource::new(
            RemoteSourceConfig {
                name: name.into(),
                issuer,
                locator: Locator::Discovery {
                    url: Some(Url::parse(URL).unwrap()),
                },
                algorithms: vec![Algorithm::RS256],
                claims: ClaimMapping::default(),
                required: false,
                key_policy: KeyPolicy::default(),
                fetch: FetchPolicy::default(),
                refresh: RefreshPolicy::default(),
            },
            Arc::new(SystemClock),
            claims.clone(),
        )
        .unwrap()
    }

    fn claims() -> Arc<IssuerClaims> {
        let fixed = Issuer::new("https://fixed.example");
        Arc::new(IssuerClaims::new(
            &ServiceName::new(ServiceName::DEFAULT),
            [("fixed", &fixed)],
        ))
    }

    fn url() -> Url {
        Url::parse(URL).unwrap()
    }

    #[test]
    fn a_discovering_source_learns_the_first_issuer_it_may_claim_and_keeps_it() {
        let claims = claims();
        let gitlab = source("gitlab", IssuerSetting::Discovered, &claims);
        assert_eq!(gitlab.issuer(), SourceIssuer::Discovered(None));
        for taken in [ServiceName::DEFAULT, "https://fixed.example/"] {
            let refused = gitlab.accept_issuer(&url(), taken).unwrap_err();
            assert!(refused.contains("may not serve"), "{refused}");
            assert_eq!(gitlab.issuer(), SourceIssuer::Discovered(None));
        }
        gitlab
            .accept_issuer(&url(), "https://gitlab.example.com/")
            .unwrap();
        // Learned as the document states it: the slash is part of the issuer its tokens carry.
        let learned = Issuer::new("https://gitlab.example.com/");
        assert_eq!(gitlab.issuer(), SourceIssuer::Discovered(Some(&learned)));
        // Fixed from now on: the same issuer (slash or not) is fine, another is refused.
        gitlab
            .accept_issuer(&url(), "https://gitlab.example.com")
            .unwrap();
        let changed = gitlab
            .accept_issuer(&url(), "https://other.example")
            .unwrap_err();
        assert!(changed.contains("first document"), "{changed}");
        assert_eq!(gitlab.issuer(), SourceIssuer::Discovered(Some(&learned)));
        // Nor can another discovering source take it.
        let customers = source("customers-dot", IssuerSetting::Discovered, &claims);
        let refused = customers
            .accept_issuer(&url(), "https://gitlab.example.com")
            .unwrap_err();
        assert!(
            refused.contains("\"gitlab\" already serves it"),
            "{refused}"
        );
        assert_eq!(customers.issuer(), SourceIssuer::Discovered(None));
    }

    #[test]
    fn a_fixed_issuer_must_be_named_by_the_document() {
        let issuer = Issuer::new("https://fixed.example");
        let fixed = source("fixed", IssuerSetting::Fixed(issuer.clone()), &claims());
        fixed
            .accept_issuer(&url(), "https://fixed.example/")
            .unwrap();
        let refused = fixed
            .accept_issuer(&url(), "https://gitlab.example.com")
            .unwrap_err();
        assert!(
            refused.contains("not \"https://fixed.example\""),
            "{refused}"
        );
        assert_eq!(fixed.issuer(), SourceIssuer::Fixed(&issuer));
    }

    #[test]
    fn an_issuer_is_only_learned_through_a_discovery_url() {
        let config = |locator| RemoteSourceConfig {
            name: "x".into(),
            issuer: IssuerSetting::Discovered,
            locator,
            algorithms: vec![Algorithm::RS256],
            claims: ClaimMapping::default(),
            required: false,
            key_policy: KeyPolicy::default(),
            fetch: FetchPolicy::default(),
            refresh: RefreshPolicy::default(),
        };
        for locator in [
            Locator::Discovery { url: None },
            Locator::Jwks(Url::parse("http://127.0.0.1/keys").unwrap()),
        ] {
            assert!(
                RemoteKeySource::new(config(locator), Arc::new(SystemClock), claims()).is_err()
            );
        }
    }

    #[test]
    fn discovery_documents_are_parsed_strictly() {
        let ok = br#"{"issuer": "https://gitlab.example.com", "jwks_uri": "https://gitlab.example.com/oauth/discovery/keys"}"#;
        assert_eq!(
            DiscoveryDocument::parse(ok).unwrap().issuer,
            "https://gitlab.example.com"
        );
        let long = format!(
            r#"{{"issuer": "https://{}", "jwks_uri": "https://a/k"}}"#,
            "a".repeat(MAX_ISSUER_LEN)
        );
        for bad in [
            &br#"{"issuer": "https://a", "issuer": "https://b", "jwks_uri": "https://a/k"}"#[..],
            br#"{"issuer": "", "jwks_uri": "https://a/k"}"#,
            br#"{"issuer": "//", "jwks_uri": "https://a/k"}"#,
            br#"{"issuer": "https://a\nforged log line", "jwks_uri": "https://a/k"}"#,
            br#"{"issuer": 7, "jwks_uri": "https://a/k"}"#,
            br#"{"jwks_uri": "https://a/k"}"#,
            br#"{"issuer": "https://a", "jwks_uri": "not a url"}"#,
            br#"["issuer"]"#,
            long.as_bytes(),
        ] {
            assert!(
                DiscoveryDocument::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
