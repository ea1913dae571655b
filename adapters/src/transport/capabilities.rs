//! The capabilities of the workflow executor behind the service, which `GenerateToken` reports
//! as `server_capabilities` (SPEC C3): from configuration, or learned from the executor's own
//! `ListCapabilities`; never invented. Learning happens in the background: a token is never
//! kept waiting on a slow executor, and a call answered before anything was learned reports
//! none.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::ListCapabilitiesRequest;
use tokio::time::Instant;
use tonic::metadata::{KeyAndValueRef, MetadataMap};

use duo_workflow_domain::ports::{Clock, TokenIssuer};
use duo_workflow_domain::user_token::UserTokenGrant;
use duo_workflow_domain::ServiceName;

use super::metadata::is_forwarded;
use super::Relay;

/// Where `server_capabilities` come from.
#[derive(Clone)]
pub enum ServerCapabilities {
    /// Configured by the operator (possibly none).
    Configured(Arc<[String]>),
    /// Learned from the executor.
    Learned(Arc<LearnedCapabilities>),
    /// No executor and no configuration: nothing to report.
    Unknown,
}

impl ServerCapabilities {
    /// Whether readiness may stop waiting for the executor's first list.
    pub fn settled(&self) -> bool {
        match self {
            ServerCapabilities::Learned(learned) => learned.settled(),
            _ => true,
        }
    }

    /// The capabilities to report now. `caller` is the metadata of the call that asks: when the
    /// learned list is missing or old, a background refresh asks the executor with the caller's
    /// credentials (the executor may require authentication, as this service does).
    pub fn current(&self, caller: &MetadataMap) -> Vec<String> {
        match self {
            ServerCapabilities::Configured(names) => names.to_vec(),
            ServerCapabilities::Learned(learned) => learned.current(caller),
            ServerCapabilities::Unknown => Vec::new(),
        }
    }
}

/// How learned capabilities age.
#[derive(Debug, Clone, Copy)]
pub struct LearningPolicy {
    /// A list older than this is refreshed (in the background) when next asked for.
    pub refresh_after: Duration,
    /// A list older than this is no longer reported: the executor may have changed.
    pub max_age: Duration,
    /// At most one attempt per this interval, successful or not.
    pub min_attempt_interval: Duration,
    /// One attempt's time limit.
    pub timeout: Duration,
}

impl Default for LearningPolicy {
    fn default() -> Self {
        Self {
            refresh_after: Duration::from_secs(300),
            max_age: Duration::from_secs(3600),
            min_attempt_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Default)]
struct Learned {
    names: Option<(Vec<String>, Instant)>,
    attempt_started: Option<Instant>,
    attempting: bool,
    /// The executor refused the service's own token (it does not share the authority key):
    /// ask with callers' credentials instead, as before there was one.
    own_token_refused: bool,
}

/// Credentials the service mints for its own calls to the executor: a short-lived token of its
/// authority ([`UserTokenGrant::for_the_service_itself`]), which an executor whose
/// authentication is on accepts because it shares the authority's key.
pub struct OwnToken {
    pub issuer: Arc<dyn TokenIssuer>,
    pub service: ServiceName,
    pub clock: Arc<dyn Clock>,
}

impl OwnToken {
    async fn metadata(&self) -> Option<MetadataMap> {
        let grant = UserTokenGrant::for_the_service_itself(&self.service, self.clock.now());
        let token = match self.issuer.issue(&grant).await {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(error = %e, "could not mint the service's own token for the executor");
                return None;
            }
        };
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "authorization",
            format!("Bearer {}", token.token).parse().ok()?,
        );
        metadata.insert("x-gitlab-authentication-type", "oidc".parse().ok()?);
        metadata.insert("x-gitlab-global-user-id", grant.subject.parse().ok()?);
        Some(metadata)
    }
}

pub struct LearnedCapabilities {
    client: DuoWorkflowClient<Relay>,
    policy: LearningPolicy,
    state: Mutex<Learned>,
    own_token: Option<OwnToken>,
    /// Readiness waits for the first list until this instant at most.
    wait_until: Instant,
}

impl LearnedCapabilities {
    /// `own_token`: credentials the service mints for itself; `wait`: how long readiness waits
    /// for the first list.
    pub fn new(
        relay: Relay,
        policy: LearningPolicy,
        own_token: Option<OwnToken>,
        wait: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            client: DuoWorkflowClient::new(relay),
            policy,
            state: Mutex::new(Learned::default()),
            own_token,
            wait_until: Instant::now() + wait,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is known now; starts a background refresh when due.
    pub fn current(self: &Arc<Self>, caller: &MetadataMap) -> Vec<String> {
        let mut state = self.state();
        let age = state.names.as_ref().map(|(_, at)| at.elapsed());
        let due = age.is_none_or(|a| a >= self.policy.refresh_after);
        let may_attempt = !state.attempting
            && state
                .attempt_started
                .is_none_or(|t| t.elapsed() >= self.policy.min_attempt_interval);
        if due && may_attempt {
            state.attempting = true;
            state.attempt_started = Some(Instant::now());
            let credentials = match (&self.own_token, state.own_token_refused) {
                (Some(_), false) => Credentials::Own,
                _ => Credentials::Caller(forwarded(caller)),
            };
            tokio::spawn(self.clone().refresh(credentials));
        }
        match &state.names {
            Some((names, at)) if at.elapsed() < self.policy.max_age => names.clone(),
            _ => Vec::new(),
        }
    }

    /// Asks the executor at once: with the service's own token when there is one (an executor
    /// with its authentication on accepts it), else without credentials (an executor with its
    /// authentication off answers; one that requires it is asked again with the first
    /// `GenerateToken` caller's).
    pub fn learn_at_start(self: &Arc<Self>) {
        let _ = self.current(&MetadataMap::new());
    }

    /// Whether readiness may stop waiting: the first list came, or the wait is over.
    pub fn settled(&self) -> bool {
        self.state().names.is_some() || Instant::now() >= self.wait_until
    }

    async fn refresh(self: Arc<Self>, credentials: Credentials) {
        let own = matches!(credentials, Credentials::Own);
        let metadata = match credentials {
            Credentials::Caller(metadata) => Some(metadata),
            Credentials::Own => match &self.own_token {
                Some(own) => own.metadata().await,
                None => None,
            },
        };
        let mut request = tonic::Request::new(ListCapabilitiesRequest {});
        *request.metadata_mut() = metadata.unwrap_or_default();
        request.set_timeout(self.policy.timeout);
        let mut client = self.client.clone();
        let result =
            tokio::time::timeout(self.policy.timeout, client.list_capabilities(request)).await;
        let mut state = self.state();
        state.attempting = false;
        match result {
            Ok(Ok(response)) => {
                let names: Vec<String> = response
                    .into_inner()
                    .capabilities
                    .into_iter()
                    .map(|c| c.name)
                    .collect();
                if state.names.as_ref().map(|(n, _)| n) != Some(&names) {
                    tracing::info!(capabilities = ?names, "learned the workflow executor's capabilities");
                }
                state.names = Some((names, Instant::now()));
            }
            Ok(Err(status)) => {
                let refused = matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                );
                if own && refused {
                    // Ask with the next caller's credentials, without waiting for the interval.
                    state.own_token_refused = true;
                    state.attempt_started = None;
                    tracing::warn!(code = ?status.code(), "the workflow executor refused the service's own token: its capabilities are asked with callers' credentials");
                } else {
                    tracing::info!(code = ?status.code(), "the workflow executor did not list its capabilities")
                }
            }
            Err(_) => tracing::info!("the workflow executor did not list its capabilities in time"),
        }
    }
}

/// Whose credentials a refresh goes with.
enum Credentials {
    Own,
    Caller(MetadataMap),
}

/// The caller's credentials and Cloud Connector headers, for a call made on its behalf.
fn forwarded(caller: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for entry in caller.iter() {
        if let KeyAndValueRef::Ascii(key, value) = entry {
            if is_forwarded(key.as_str()) {
                out.append(key.clone(), value.clone());
            }
        }
    }
    out
}
