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
}

pub struct LearnedCapabilities {
    client: DuoWorkflowClient<Relay>,
    policy: LearningPolicy,
    state: Mutex<Learned>,
}

impl LearnedCapabilities {
    pub fn new(relay: Relay, policy: LearningPolicy) -> Arc<Self> {
        Arc::new(Self {
            client: DuoWorkflowClient::new(relay),
            policy,
            state: Mutex::new(Learned::default()),
        })
    }

    /// What is known now; starts a background refresh when due.
    pub fn current(self: &Arc<Self>, caller: &MetadataMap) -> Vec<String> {
        let mut state = self.state.lock().expect("capabilities lock");
        let age = state.names.as_ref().map(|(_, at)| at.elapsed());
        let due = age.is_none_or(|a| a >= self.policy.refresh_after);
        let may_attempt = !state.attempting
            && state
                .attempt_started
                .is_none_or(|t| t.elapsed() >= self.policy.min_attempt_interval);
        if due && may_attempt {
            state.attempting = true;
            state.attempt_started = Some(Instant::now());
            tokio::spawn(self.clone().refresh(forwarded(caller)));
        }
        match &state.names {
            Some((names, at)) if at.elapsed() < self.policy.max_age => names.clone(),
            _ => Vec::new(),
        }
    }

    /// Asks the executor once, without credentials (an executor with its authentication
    /// disabled answers; one that requires it is asked again by the first `GenerateToken`).
    pub fn learn_at_start(self: &Arc<Self>) {
        let _ = self.current(&MetadataMap::new());
    }

    async fn refresh(self: Arc<Self>, metadata: MetadataMap) {
        let mut request = tonic::Request::new(ListCapabilitiesRequest {});
        *request.metadata_mut() = metadata;
        request.set_timeout(self.policy.timeout);
        let mut client = self.client.clone();
        let result =
            tokio::time::timeout(self.policy.timeout, client.list_capabilities(request)).await;
        let mut state = self.state.lock().expect("capabilities lock");
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
                tracing::info!(code = ?status.code(), "the workflow executor did not list its capabilities")
            }
            Err(_) => tracing::info!("the workflow executor did not list its capabilities in time"),
        }
    }
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
