//! Remote key sources: OIDC discovery (`{issuer}/.well-known/openid-configuration` → `jwks_uri`)
//! or a direct JWKS URL. This is where GitLab's Python service failed its users, so:
//!
//! - keys are refreshed in the background, honouring `Cache-Control: max-age` within bounds;
//! - a failed refresh keeps the last good keys (up to `max_stale`) and retries with backoff;
//! - a miss (unknown `kid`, or a kid-less token no key verifies) triggers one refetch, shared by
//!   every concurrent miss and started at most once per `miss_refetch_interval`;
//! - the key set is swapped whole; a lock is only ever held to clone an `Arc`, never across a fetch;
//! - the source never blocks or fails start-up: it starts empty and says why.

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use duo_workflow_domain::keys::{Algorithm, KeySet};
use duo_workflow_domain::ports::{Clock, KeySource, SourceState};
use duo_workflow_domain::{Issuer, UnixTime};
use futures::future::{BoxFuture, FutureExt, Shared};
use rand::Rng;
use tokio::time::Instant;
use url::Url;

use super::fetch::{check_scheme, FetchPolicy, Fetcher};
use crate::jose::jwk::parse_jwks;
use crate::jose::keys::PublicKey;

/// Where the keys are.
#[derive(Debug, Clone)]
pub enum Locator {
    /// OIDC discovery under `url` (default: the issuer itself); the document's `issuer` must
    /// equal the source's issuer.
    Discovery { url: Option<Url> },
    /// A JWKS URL, no discovery.
    Jwks(Url),
}

/// How often to refresh, and how long old keys stay good.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// Bounds applied to the provider's `Cache-Control: max-age`.
    pub min_interval: Duration,
    pub max_interval: Duration,
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
    pub issuer: Issuer,
    pub locator: Locator,
    pub algorithms: Vec<Algorithm>,
    pub required: bool,
    pub fetch: FetchPolicy,
    pub refresh: RefreshPolicy,
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
    fetcher: Fetcher,
    clock: Arc<dyn Clock>,
    snapshot: RwLock<Arc<Snapshot>>,
    flight: Mutex<Flight>,
    /// The refresh interval the last successful fetch earned.
    next_refresh: Mutex<Duration>,
}

impl RemoteKeySource {
    pub fn new(config: RemoteSourceConfig, clock: Arc<dyn Clock>) -> Result<Arc<Self>, String> {
        match &config.locator {
            Locator::Discovery { url: Some(base) } => {
                check_scheme(base, config.fetch.allow_insecure_http)?
            }
            Locator::Discovery { url: None } => {
                let base = Url::parse(config.issuer.as_str())
                    .map_err(|e| format!("issuer is not a URL: {e}"))?;
                check_scheme(&base, config.fetch.allow_insecure_http)?;
            }
            // A JWKS source's issuer is only a name to match `iss` against.
            Locator::Jwks(url) => check_scheme(url, config.fetch.allow_insecure_http)?,
        }
        if config.algorithms.is_empty() {
            return Err("no algorithms allowed".into());
        }
        let fetcher = Fetcher::new(config.fetch.clone())?;
        let next_refresh = Mutex::new(config.refresh.max_interval);
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            config,
            fetcher,
            clock,
            snapshot: RwLock::new(Arc::new(Snapshot {
                keys: None,
                fetched_at: None,
                last_error: None,
            })),
            flight: Mutex::new(Flight::default()),
            next_refresh,
        }))
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
                let current = self.install(Arc::new(set));
                *self.next_refresh.lock().expect("refresh lock") = self.interval_for(max_age);
                Some(current)
            }
            Err(why) => {
                tracing::warn!(source = %self.config.name, issuer = %self.config.issuer, "key fetch failed: {why}");
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

    fn interval_for(&self, max_age: Option<Duration>) -> Duration {
        let r = &self.config.refresh;
        max_age
            .unwrap_or(r.max_interval)
            .clamp(r.min_interval, r.max_interval)
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
                    issuer = %self.config.issuer,
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
        let jwks_uri = match &self.config.locator {
            Locator::Jwks(url) => url.clone(),
            Locator::Discovery { url } => self.discover(url.as_ref()).await?,
        };
        let fetched = self.fetcher.get(&jwks_uri).await?;
        let parsed = parse_jwks(&fetched.body)?;
        for why in &parsed.dropped {
            tracing::warn!(source = %self.config.name, issuer = %self.config.issuer, "dropped a JWKS entry: {why}");
        }
        let usable: Vec<_> = parsed
            .keys
            .into_iter()
            .filter(|k| self.config.algorithms.contains(&k.algorithm))
            .collect();
        if usable.is_empty() {
            return Err(format!(
                "{jwks_uri} holds no usable key for {:?}",
                self.config.algorithms
            ));
        }
        let (set, _) = KeySet::new(usable);
        Ok((set, fetched.max_age))
    }

    /// The discovery document's `jwks_uri`, once its `issuer` is ours (a trailing slash is the
    /// only difference tolerated).
    async fn discover(&self, base: Option<&Url>) -> Result<Url, String> {
        let issuer = self.config.issuer.as_str();
        let base = base.map(Url::as_str).unwrap_or(issuer);
        let url = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            base.trim_end_matches('/')
        ))
        .map_err(|e| format!("discovery URL: {e}"))?;
        let doc = self.fetcher.get(&url).await?;
        jwks_uri_of(&doc.body, issuer).map_err(|e| format!("{url}: {e}"))
    }
}

/// The `jwks_uri` of an OIDC discovery document, once its `issuer` is `issuer` (a trailing slash
/// is the only difference tolerated).
pub fn jwks_uri_of(document: &[u8], issuer: &str) -> Result<Url, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(document).map_err(|_| "not a JSON document".to_owned())?;
    let claimed = doc
        .get("issuer")
        .and_then(|v| v.as_str())
        .ok_or("no issuer")?;
    if claimed.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(format!("names issuer {claimed:?}, not {issuer:?}"));
    }
    let jwks = doc
        .get("jwks_uri")
        .and_then(|v| v.as_str())
        .ok_or("no jwks_uri")?;
    Url::parse(jwks).map_err(|e| format!("jwks_uri {jwks:?}: {e}"))
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
                *source.next_refresh.lock().expect("refresh lock")
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

    fn issuer(&self) -> &Issuer {
        &self.config.issuer
    }

    fn algorithms(&self) -> &[Algorithm] {
        &self.config.algorithms
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
}
