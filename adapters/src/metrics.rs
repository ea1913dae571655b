//! Prometheus metrics, with the official `prometheus-client`. Every label value comes from a set
//! fixed by the code or by the configuration, never from a request: method labels from the
//! contract ([`GrpcMethod::of_path`], anything else is `unknown`), status codes from gRPC's
//! seventeen, refusal reasons from [`RefusalReason`], issuers from the key sources' issuers
//! (a token's unknown `iss` is `unknown`), key sources by their configured name. So an attacker
//! who chooses paths, tokens, `kid`s or issuers moves counters, never the number of series.
//!
//! Recorded where they happen: calls by the [`observe`](crate::transport::observe) layer,
//! refusals by it from what the admission layer and the authenticator noted, relay errors and
//! open streams by the relay. Read when scraped: key sources ([`KeySourceCollector`]), the
//! verified-token cache ([`CacheCollector`]), and counters other crates keep ([`Metrics::counter_fn`]).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use duo_workflow_domain::ports::{Clock, SourceState};
use duo_workflow_domain::request::BoundHeader;
use duo_workflow_domain::{AuthError, Rejection};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::executors::{EndpointState, Executors};

use crate::authenticator::{DynKeySource, JwtAuthenticator};
use crate::sources::RemoteKeySource;

/// The `Content-Type` of what [`Metrics::render`] writes (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The prefix of the service's own families (GitLab's `grpc_server_*` names keep theirs).
pub const PREFIX: &str = "duo_workflow_auth_";

/// A label value: a fixed string, or one the configuration chose (an issuer, a source name).
/// Equal and hashed by its text.
#[derive(Clone, Debug)]
pub enum LabelText {
    Static(&'static str),
    Shared(Arc<str>),
}

impl LabelText {
    /// No issuer could be read: the call was refused before a token's `iss` was.
    pub const NONE: LabelText = LabelText::Static("none");
    /// A token's `iss` that no key source serves.
    pub const UNKNOWN: LabelText = LabelText::Static("unknown");

    pub fn as_str(&self) -> &str {
        match self {
            LabelText::Static(s) => s,
            LabelText::Shared(s) => s,
        }
    }
}

impl PartialEq for LabelText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for LabelText {}

impl Hash for LabelText {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The method labels of GitLab's `grpc_server_*` families, from a fixed table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GrpcMethod {
    pub grpc_type: &'static str,
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
}

const UNARY: &str = "unary";
const SERVER_STREAM: &str = "server_stream";
const BIDI_STREAM: &str = "bidi_stream";

/// Every method served, with its gRPC type: the seven RPCs, health and reflection.
const KNOWN_METHODS: [(&str, &str, &str); 13] = [
    ("DuoWorkflow", "ExecuteWorkflow", BIDI_STREAM),
    ("DuoWorkflow", "GenerateToken", UNARY),
    ("DuoWorkflow", "ListCapabilities", UNARY),
    ("DuoWorkflow", "ListTools", UNARY),
    ("DuoWorkflow", "ListFlows", UNARY),
    ("DuoWorkflow", "TrackSelfHostedExecuteWorkflow", BIDI_STREAM),
    ("DuoWorkflow", "ValidateFlowConfig", UNARY),
    ("grpc.health.v1.Health", "Check", UNARY),
    ("grpc.health.v1.Health", "Watch", SERVER_STREAM),
    ("grpc.health.v1.Health", "List", UNARY),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        BIDI_STREAM,
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        BIDI_STREAM,
    ),
    ("unknown", "unknown", "unknown"),
];

impl GrpcMethod {
    /// Any path the table does not name (callers choose paths).
    pub const UNKNOWN: GrpcMethod = GrpcMethod {
        grpc_type: "unknown",
        grpc_service: "unknown",
        grpc_method: "unknown",
    };

    /// The labels of a request path: one of [`GrpcMethod::all`].
    pub fn of_path(path: &str) -> GrpcMethod {
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return GrpcMethod::UNKNOWN;
        };
        KNOWN_METHODS
            .iter()
            .find(|(s, m, _)| *s == service && *m == method)
            .map(|&(grpc_service, grpc_method, grpc_type)| GrpcMethod {
                grpc_type,
                grpc_service,
                grpc_method,
            })
            .unwrap_or(GrpcMethod::UNKNOWN)
    }

    /// Every value [`GrpcMethod::of_path`] can give.
    pub fn all() -> impl Iterator<Item = GrpcMethod> {
        KNOWN_METHODS
            .iter()
            .map(|&(grpc_service, grpc_method, grpc_type)| GrpcMethod {
                grpc_type,
                grpc_service,
                grpc_method,
            })
    }
}

/// gRPC's status codes by number, as GitLab's Python service labels them (`code.name`).
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The label of a `grpc-status` value: one of seventeen names; anything else is `UNKNOWN`.
pub fn code_name(status: &[u8]) -> &'static str {
    std::str::from_utf8(status)
        .ok()
        .filter(|s| (1..=2).contains(&s.len()))
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|n| CODE_NAMES.get(n).copied())
        .unwrap_or("UNKNOWN")
}

/// The label of a status code.
pub fn code_label(code: tonic::Code) -> &'static str {
    CODE_NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// Every value [`code_name`] can give.
pub fn code_names() -> &'static [&'static str] {
    &CODE_NAMES
}

/// Why a call was refused: a fixed set, for the `reason` label and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    MethodNotFound,
    AuthorizationMissing,
    AuthorizationInvalid,
    AuthenticationTypeUnsupported,
    TokenTooLong,
    TokenMalformed,
    AlgUnsupported,
    AlgNotAllowed,
    HeaderParameterUnsupported,
    KidInvalid,
    IssuerUnknown,
    KidUnknown,
    KidAmbiguous,
    SignatureInvalid,
    ClaimInvalid,
    ExpMissing,
    Expired,
    NotYetValid,
    IssuedInFuture,
    LifetimeTooLong,
    AudMissing,
    AudWrong,
    KeysUnavailable,
    HeaderMismatchRealm,
    HeaderMismatchInstanceId,
    HeaderMismatchGlobalUserId,
    FlowInvalid,
    Unauthorized,
    GlobalUserIdMissing,
    MessageTooLarge,
    MessageUnreadable,
    FirstMessagesHeld,
    FirstMessageStalled,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 33] = [
        RefusalReason::MethodNotFound,
        RefusalReason::AuthorizationMissing,
        RefusalReason::AuthorizationInvalid,
        RefusalReason::AuthenticationTypeUnsupported,
        RefusalReason::TokenTooLong,
        RefusalReason::TokenMalformed,
        RefusalReason::AlgUnsupported,
        RefusalReason::AlgNotAllowed,
        RefusalReason::HeaderParameterUnsupported,
        RefusalReason::KidInvalid,
        RefusalReason::IssuerUnknown,
        RefusalReason::KidUnknown,
        RefusalReason::KidAmbiguous,
        RefusalReason::SignatureInvalid,
        RefusalReason::ClaimInvalid,
        RefusalReason::ExpMissing,
        RefusalReason::Expired,
        RefusalReason::NotYetValid,
        RefusalReason::IssuedInFuture,
        RefusalReason::LifetimeTooLong,
        RefusalReason::AudMissing,
        RefusalReason::AudWrong,
        RefusalReason::KeysUnavailable,
        RefusalReason::HeaderMismatchRealm,
        RefusalReason::HeaderMismatchInstanceId,
        RefusalReason::HeaderMismatchGlobalUserId,
        RefusalReason::FlowInvalid,
        RefusalReason::Unauthorized,
        RefusalReason::GlobalUserIdMissing,
        RefusalReason::MessageTooLarge,
        RefusalReason::MessageUnreadable,
        RefusalReason::FirstMessagesHeld,
        RefusalReason::FirstMessageStalled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::MethodNotFound => "method_not_found",
            RefusalReason::AuthorizationMissing => "authorization_missing",
            RefusalReason::AuthorizationInvalid => "authorization_invalid",
            RefusalReason::AuthenticationTypeUnsupported => "authentication_type_unsupported",
            RefusalReason::TokenTooLong => "token_too_long",
            RefusalReason::TokenMalformed => "token_malformed",
            RefusalReason::AlgUnsupported => "alg_unsupported",
            RefusalReason::AlgNotAllowed => "alg_not_allowed",
            RefusalReason::HeaderParameterUnsupported => "header_parameter_unsupported",
            RefusalReason::KidInvalid => "kid_invalid",
            RefusalReason::IssuerUnknown => "issuer_unknown",
            RefusalReason::KidUnknown => "kid_unknown",
            RefusalReason::KidAmbiguous => "kid_ambiguous",
            RefusalReason::SignatureInvalid => "signature_invalid",
            RefusalReason::ClaimInvalid => "claim_invalid",
            RefusalReason::ExpMissing => "exp_missing",
            RefusalReason::Expired => "expired",
            RefusalReason::NotYetValid => "not_yet_valid",
            RefusalReason::IssuedInFuture => "issued_in_future",
            RefusalReason::LifetimeTooLong => "lifetime_too_long",
            RefusalReason::AudMissing => "aud_missing",
            RefusalReason::AudWrong => "aud_wrong",
            RefusalReason::KeysUnavailable => "keys_unavailable",
            RefusalReason::HeaderMismatchRealm => "header_mismatch_realm",
            RefusalReason::HeaderMismatchInstanceId => "header_mismatch_instance_id",
            RefusalReason::HeaderMismatchGlobalUserId => "header_mismatch_global_user_id",
            RefusalReason::FlowInvalid => "flow_invalid",
            RefusalReason::Unauthorized => "unauthorized",
            RefusalReason::GlobalUserIdMissing => "global_user_id_missing",
            RefusalReason::MessageTooLarge => "message_too_large",
            RefusalReason::MessageUnreadable => "message_unreadable",
            RefusalReason::FirstMessagesHeld => "first_messages_held",
            RefusalReason::FirstMessageStalled => "first_message_stalled",
        }
    }
}

impl EncodeLabelValue for RefusalReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl From<&Rejection> for RefusalReason {
    fn from(r: &Rejection) -> Self {
        match r {
            Rejection::TooLong { .. } => RefusalReason::TokenTooLong,
            Rejection::Malformed(_) => RefusalReason::TokenMalformed,
            Rejection::UnsupportedAlgorithm => RefusalReason::AlgUnsupported,
            Rejection::AlgorithmNotAllowed => RefusalReason::AlgNotAllowed,
            Rejection::UnsupportedHeader(_) => RefusalReason::HeaderParameterUnsupported,
            Rejection::InvalidKeyId => RefusalReason::KidInvalid,
            Rejection::UnknownIssuer => RefusalReason::IssuerUnknown,
            Rejection::UnknownKeyId => RefusalReason::KidUnknown,
            Rejection::AmbiguousKeyId => RefusalReason::KidAmbiguous,
            Rejection::BadSignature => RefusalReason::SignatureInvalid,
            Rejection::InvalidClaim(_) => RefusalReason::ClaimInvalid,
            Rejection::MissingExpiry => RefusalReason::ExpMissing,
            Rejection::Expired => RefusalReason::Expired,
            Rejection::NotYetValid => RefusalReason::NotYetValid,
            Rejection::IssuedInFuture => RefusalReason::IssuedInFuture,
            Rejection::LifetimeTooLong => RefusalReason::LifetimeTooLong,
            Rejection::MissingAudience => RefusalReason::AudMissing,
            Rejection::WrongAudience => RefusalReason::AudWrong,
        }
    }
}

impl From<&AuthError> for RefusalReason {
    fn from(e: &AuthError) -> Self {
        match e {
            AuthError::MissingAuthorization => RefusalReason::AuthorizationMissing,
            AuthError::InvalidAuthorizationHeader => RefusalReason::AuthorizationInvalid,
            AuthError::UnsupportedAuthenticationType => {
                RefusalReason::AuthenticationTypeUnsupported
            }
            AuthError::Forbidden(r) => r.into(),
            AuthError::KeysUnavailable(_) => RefusalReason::KeysUnavailable,
            AuthError::HeaderMismatch(BoundHeader::Realm) => RefusalReason::HeaderMismatchRealm,
            AuthError::HeaderMismatch(BoundHeader::InstanceId) => {
                RefusalReason::HeaderMismatchInstanceId
            }
            AuthError::HeaderMismatch(BoundHeader::GlobalUserId) => {
                RefusalReason::HeaderMismatchGlobalUserId
            }
            AuthError::InvalidFlow(_) => RefusalReason::FlowInvalid,
            AuthError::Unauthorized(_) | AuthError::NoUnitPrimitive(..) => {
                RefusalReason::Unauthorized
            }
            AuthError::MissingGlobalUserId => RefusalReason::GlobalUserIdMissing,
        }
    }
}

tokio::task_local! {
    /// The issuer label of the token the current call presented, as the authenticator judged it.
    static TOKEN_ISSUER: RefCell<Option<LabelText>>;
}

/// For the authenticator: the issuer label of the token being judged (a served issuer, or
/// [`LabelText::UNKNOWN`]). Outside [`with_token_issuer`] it does nothing.
pub fn note_token_issuer(label: LabelText) {
    let _ = TOKEN_ISSUER.try_with(|slot| *slot.borrow_mut() = Some(label));
}

/// Runs `f` (the authentication of one call) and returns what the authenticator noted about
/// the token's issuer, if anything.
pub async fn with_token_issuer<F: Future>(f: F) -> (F::Output, Option<LabelText>) {
    TOKEN_ISSUER
        .scope(RefCell::new(None), async move {
            let out = f.await;
            let label = TOKEN_ISSUER.with(|slot| slot.borrow_mut().take());
            (out, label)
        })
        .await
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandledLabels {
    #[prometheus(flatten)]
    method: GrpcMethod,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    reason: RefusalReason,
    issuer: LabelText,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RelayErrorLabels {
    grpc_code: &'static str,
    origin: &'static str,
}

/// Buckets of `grpc_server_handling_seconds`: a unary call takes milliseconds, a workflow stream
/// minutes.
const HANDLING_BUCKETS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

fn handling_histogram() -> Histogram {
    Histogram::new(HANDLING_BUCKETS)
}

/// What the observe layer records per call. Cheap to clone (shared counters).
#[derive(Clone)]
pub struct CallMetrics {
    handled: Family<HandledLabels, Counter>,
    handling: Family<GrpcMethod, Histogram, fn() -> Histogram>,
    refusals: Family<RefusalLabels, Counter>,
    refusal_lines_suppressed: Counter,
}

impl Default for CallMetrics {
    fn default() -> Self {
        Self {
            handled: Family::default(),
            handling: Family::new_with_constructor(handling_histogram),
            refusals: Family::default(),
            refusal_lines_suppressed: Counter::default(),
        }
    }
}

impl CallMetrics {
    /// A call ended with `grpc_code` after `seconds`.
    pub fn handled(&self, method: GrpcMethod, grpc_code: &'static str, seconds: f64) {
        self.handled
            .get_or_create(&HandledLabels { method, grpc_code })
            .inc();
        self.handling.get_or_create(&method).observe(seconds);
    }

    pub fn refused(&self, reason: RefusalReason, issuer: LabelText) {
        self.refusals
            .get_or_create(&RefusalLabels { reason, issuer })
            .inc();
    }

    pub fn refusal_line_suppressed(&self) {
        self.refusal_lines_suppressed.inc();
    }
}

/// Where a relayed call's error status came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorOrigin {
    /// The executor's own status (its trailers, or a trailers-only answer).
    Executor,
    /// The relay's, on the executor's behalf: unreachable, broken stream, deadline, oversized.
    Relay,
}

/// What the relay records. Cheap to clone; without [`Metrics`] it counts into nothing.
#[derive(Clone, Default)]
pub struct RelayMetrics {
    errors: Family<RelayErrorLabels, Counter>,
    open: Gauge,
}

impl RelayMetrics {
    /// A relayed call that ended with an error status.
    pub fn executor_error(&self, grpc_code: &'static str, origin: ErrorOrigin) {
        let origin = match origin {
            ErrorOrigin::Executor => "executor",
            ErrorOrigin::Relay => "relay",
        };
        self.errors
            .get_or_create(&RelayErrorLabels { grpc_code, origin })
            .inc();
    }

    /// One more open relayed stream, until the guard drops.
    pub fn stream_opened(&self) -> OpenStream {
        self.open.inc();
        OpenStream(self.open.clone())
    }
}

/// An open relayed stream; dropping it closes it.
pub struct OpenStream(Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    /// `tls`, `local-authority`, or a static key source's configured name.
    files: LabelText,
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FilesLabel {
    files: LabelText,
}

/// What reloading files records. Cheap to clone.
#[derive(Clone, Default)]
pub struct ReloadMetrics {
    reloads: Family<ReloadLabels, Counter>,
    failing: Family<FilesLabel, Gauge>,
}

impl ReloadMetrics {
    /// Makes the series of a file group exist from the start (at zero), so that a dashboard
    /// shows the group before its first reload.
    pub fn watching(&self, files: &str) {
        let files = LabelText::Shared(files.into());
        for result in ["changed", "held", "failed"] {
            drop(self.reloads.get_or_create(&ReloadLabels {
                files: files.clone(),
                result,
            }));
        }
        drop(self.failing.get_or_create(&FilesLabel { files }));
    }

    /// New contents of `files` that a poll held back until the next one (they remove keys in
    /// use); not a failure.
    pub fn held(&self, files: &str) {
        self.reloads
            .get_or_create(&ReloadLabels {
                files: LabelText::Shared(files.into()),
                result: "held",
            })
            .inc();
    }

    /// A reload of `files` that swapped new contents in (`failed`: that found new contents
    /// which did not load). While the last one failed, `reload_failing` is 1.
    pub fn reloaded(&self, files: &str, failed: bool) {
        let files = LabelText::Shared(files.into());
        let result = if failed { "failed" } else { "changed" };
        self.reloads
            .get_or_create(&ReloadLabels {
                files: files.clone(),
                result,
            })
            .inc();
        self.failing
            .get_or_create(&FilesLabel { files })
            .set(i64::from(failed));
    }
}

/// The service's metrics: the registry `/metrics` renders, and the handles that record.
pub struct Metrics {
    registry: RwLock<Registry>,
    calls: CallMetrics,
    relay: RelayMetrics,
    reloads: ReloadMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let calls = CallMetrics::default();
        let relay = RelayMetrics::default();
        let reloads = ReloadMetrics::default();
        let mut registry = Registry::default();
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            calls.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            calls.handling.clone(),
        );
        registry.register(
            format!("{PREFIX}refusals"),
            "Calls refused, by reason and by the issuer of the token presented (none: no token read; unknown: an issuer no key source serves).",
            calls.refusals.clone(),
        );
        registry.register(
            format!("{PREFIX}refusal_log_lines_suppressed"),
            "Refusal log lines left out by the rate limit (the refusals are still counted).",
            calls.refusal_lines_suppressed.clone(),
        );
        registry.register(
            format!("{PREFIX}relay_executor_errors"),
            "Relayed calls that ended with an error status, by code and origin (executor: its own status; relay: unreachable, broken stream, deadline, oversized message).",
            relay.errors.clone(),
        );
        registry.register(
            format!("{PREFIX}relay_open_streams"),
            "Calls being relayed to the workflow executor now.",
            relay.open.clone(),
        );
        registry.register(
            format!("{PREFIX}reloads"),
            "Reloads of files (TLS, the local authority's keys, static key sources) that found new contents, by result (changed: in use; held: removing keys in use, waiting for the next poll; failed: the previous contents stay).",
            reloads.reloads.clone(),
        );
        registry.register(
            format!("{PREFIX}reload_failing"),
            "1 while the last contents read from these files did not load (the previous ones are in use).",
            reloads.failing.clone(),
        );
        registry.register(
            format!("{PREFIX}build"),
            "The running build.",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry: RwLock::new(registry),
            calls,
            relay,
            reloads,
        }
    }

    pub fn calls(&self) -> CallMetrics {
        self.calls.clone()
    }

    pub fn relay(&self) -> RelayMetrics {
        self.relay.clone()
    }

    pub fn reloads(&self) -> ReloadMetrics {
        self.reloads.clone()
    }

    /// Adds metrics read when scraped.
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry
            .write()
            .expect("registry lock")
            .register_collector(Box::new(collector));
    }

    /// A counter kept elsewhere (`name` without `_total`), read when scraped.
    pub fn counter_fn(
        &self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.register_collector(CounterFn {
            name,
            help,
            read: Box::new(read),
        });
    }

    /// A gauge kept elsewhere, read when scraped.
    pub fn gauge_fn(
        &self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> i64 + Send + Sync + 'static,
    ) {
        self.register_collector(GaugeFn {
            name,
            help,
            read: Box::new(read),
        });
    }

    /// Every family, in Prometheus's text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(
            &mut out,
            &self.registry.read().expect("registry lock"),
        )
        .expect("writing to a String");
        out
    }
}

struct CounterFn {
    name: &'static str,
    help: &'static str,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for CounterFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterFn")
            .field("name", &self.name)
            .finish()
    }
}

impl Collector for CounterFn {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new((self.read)());
        let m = encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
        counter.encode(m)
    }
}

struct GaugeFn {
    name: &'static str,
    help: &'static str,
    read: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl std::fmt::Debug for GaugeFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GaugeFn").field("name", &self.name).finish()
    }
}

impl Collector for GaugeFn {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new((self.read)());
        let m = encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
        gauge.encode(m)
    }
}

/// Key sources, read when scraped: state, keys held, age of the keys, fetches by result.
pub struct KeySourceCollector {
    sources: Vec<DynKeySource>,
    remote: Vec<Arc<RemoteKeySource>>,
    clock: Arc<dyn Clock>,
}

impl KeySourceCollector {
    /// `remote`: the sources that fetch (their fetch counts); `sources`: every source.
    pub fn new(
        sources: Vec<DynKeySource>,
        remote: Vec<Arc<RemoteKeySource>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            sources,
            remote,
            clock,
        }
    }
}

impl std::fmt::Debug for KeySourceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySourceCollector").finish_non_exhaustive()
    }
}

/// The states a key source reports, as the `state` label.
pub const SOURCE_STATES: [&str; 3] = ["pending", "ready", "stale"];

impl Collector for KeySourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use duo_workflow_domain::ports::KeySource as _;
        let now = self.clock.now().as_secs();
        let states: Vec<(&str, SourceState)> =
            self.sources.iter().map(|s| (s.name(), s.state())).collect();

        let name = format!("{PREFIX}key_source_state");
        let mut m = encoder.encode_descriptor(
            &name,
            "1 for the state each key source is in (pending: no keys yet; ready; stale: serving the last good keys while refreshes fail), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for (source, state) in &states {
            let current = match state {
                SourceState::Pending { .. } => "pending",
                SourceState::Ready { .. } => "ready",
                SourceState::Stale { .. } => "stale",
            };
            for label in SOURCE_STATES {
                let labels = [("source", *source), ("state", label)];
                ConstGauge::new(i64::from(label == current)).encode(m.encode_family(&labels)?)?;
            }
        }

        let name = format!("{PREFIX}key_source_keys");
        let mut m = encoder.encode_descriptor(
            &name,
            "Keys each key source holds.",
            None,
            MetricType::Gauge,
        )?;
        for (source, state) in &states {
            let keys = match state {
                SourceState::Pending { .. } => 0,
                SourceState::Ready { keys, .. } | SourceState::Stale { keys, .. } => *keys,
            };
            ConstGauge::new(keys as i64).encode(m.encode_family(&[("source", *source)])?)?;
        }

        let name = format!("{PREFIX}key_source_age_seconds");
        let mut m = encoder.encode_descriptor(
            &name,
            "Seconds since each key source last loaded good keys (absent while it has none).",
            None,
            MetricType::Gauge,
        )?;
        for (source, state) in &states {
            if let SourceState::Ready { loaded_at, .. } | SourceState::Stale { loaded_at, .. } =
                state
            {
                let age = now.saturating_sub(loaded_at.as_secs());
                ConstGauge::new(age).encode(m.encode_family(&[("source", *source)])?)?;
            }
        }

        let name = format!("{PREFIX}key_source_fetches");
        let mut m = encoder.encode_descriptor(
            &name,
            "Key fetches (discovery and JWKS) of each remote key source, by result.",
            None,
            MetricType::Counter,
        )?;
        for source in &self.remote {
            let (ok, error) = source.fetch_counts();
            for (result, n) in [("ok", ok), ("error", error)] {
                let labels = [("source", source.name()), ("result", result)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The workflow executors' endpoints, read when scraped: how many are in each state, the calls
/// open at each (its series goes with the endpoint), and the calls sent again.
pub struct ExecutorsCollector(pub Arc<Executors>);

impl std::fmt::Debug for ExecutorsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorsCollector").finish_non_exhaustive()
    }
}

impl Collector for ExecutorsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.0.view();
        let name = format!("{PREFIX}executor_endpoints");
        let mut m = encoder.encode_descriptor(
            &name,
            "Workflow executor endpoints (addresses of the configured URLs) in each state: ready, connecting, idle, backoff (failing, skipped for a while), draining (no longer resolved, finishing its calls).",
            None,
            MetricType::Gauge,
        )?;
        for state in EndpointState::ALL {
            let n = view.iter().filter(|e| e.state == state).count();
            ConstGauge::new(n as i64).encode(m.encode_family(&[("state", state.as_str())])?)?;
        }
        let name = format!("{PREFIX}executor_open_calls");
        let mut m = encoder.encode_descriptor(
            &name,
            "Relayed calls open at each workflow executor endpoint.",
            None,
            MetricType::Gauge,
        )?;
        for e in &view {
            let endpoint = e.endpoint.to_string();
            let labels = [
                ("executor", e.executor.as_str()),
                ("endpoint", endpoint.as_str()),
            ];
            ConstGauge::new(e.open_calls as i64).encode(m.encode_family(&labels)?)?;
        }
        let name = format!("{PREFIX}relay_calls_sent_again");
        let m = encoder.encode_descriptor(
            &name,
            "Relayed calls that never reached a workflow executor and were sent again (to another endpoint, or over a new connection).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.0.retried()).encode(m)?;
        Ok(())
    }
}

/// The verified-token cache, read when scraped (zero while authentication is off).
pub struct CacheCollector(pub Option<Arc<JwtAuthenticator>>);

impl std::fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheCollector").finish_non_exhaustive()
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.as_ref().map(|a| a.cache_stats()).unwrap_or_default();
        let counters = [
            (
                "verified_token_cache_hits",
                "Tokens found in the verified-token cache (no signature check).",
                stats.hits,
            ),
            (
                "verified_token_cache_misses",
                "Tokens not found in the verified-token cache (or no longer trusted there).",
                stats.misses,
            ),
        ];
        for (name, help, value) in counters {
            let name = format!("{PREFIX}{name}");
            let m = encoder.encode_descriptor(&name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(m)?;
        }
        let gauges = [
            (
                "verified_token_cache_entries",
                "Entries in the verified-token cache.",
                stats.entries,
            ),
            (
                "verified_token_cache_bytes",
                "Bytes the verified-token cache accounts for.",
                stats.bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let name = format!("{PREFIX}{name}");
            let m = encoder.encode_descriptor(&name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value as i64).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_come_from_the_table_whatever_the_path() {
        let m = GrpcMethod::of_path("/DuoWorkflow/ExecuteWorkflow");
        assert_eq!(
            (m.grpc_type, m.grpc_service, m.grpc_method),
            ("bidi_stream", "DuoWorkflow", "ExecuteWorkflow")
        );
        assert_eq!(
            GrpcMethod::of_path("/grpc.health.v1.Health/Watch").grpc_type,
            "server_stream"
        );
        let all: Vec<GrpcMethod> = GrpcMethod::all().collect();
        for path in [
            "",
            "/",
            "//",
            "/DuoWorkflow/",
            "/DuoWorkflow/executeworkflow",
            "/DuoWorkflow/ExecuteWorkflow/x",
            "/grpc.health.v1.Health/Anything",
            "/x.y/z",
            &format!("/{}/{}", "a".repeat(5000), "b".repeat(5000)),
        ] {
            assert_eq!(GrpcMethod::of_path(path), GrpcMethod::UNKNOWN, "{path:?}");
        }
        for path in ["/DuoWorkflow/GenerateToken", "/anything/else"] {
            assert!(all.contains(&GrpcMethod::of_path(path)));
        }
        assert_eq!(all.len(), 13);
    }

    #[test]
    fn status_codes_are_seventeen_names() {
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"16"), "UNAUTHENTICATED");
        assert_eq!(code_name(b"14"), "UNAVAILABLE");
        for odd in [
            &b"17"[..],
            b"-1",
            b"",
            b"007",
            b"1 ",
            b"abc",
            b"99999999999999999999",
        ] {
            assert_eq!(code_name(odd), "UNKNOWN", "{odd:?}");
        }
    }

    #[test]
    fn refusal_reasons_are_distinct_snake_case_names() {
        let names: std::collections::HashSet<&str> =
            RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), RefusalReason::ALL.len());
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    #[test]
    fn every_family_renders_once_with_help_and_type() {
        let metrics = Metrics::new();
        let calls = metrics.calls();
        calls.handled(GrpcMethod::of_path("/DuoWorkflow/ListTools"), "OK", 0.01);
        calls.refused(RefusalReason::Expired, LabelText::NONE);
        metrics
            .relay()
            .executor_error("UNAVAILABLE", ErrorOrigin::Relay);
        let open = metrics.relay().stream_opened();
        metrics.counter_fn("test_dropped", "test", || 7);
        metrics.gauge_fn("test_level", "test", || 3);
        let text = metrics.render();
        assert!(text.contains(
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="DuoWorkflow",grpc_method="ListTools",grpc_code="OK"} 1"#
        ), "{text}");
        assert!(
            text.contains(r#"duo_workflow_auth_refusals_total{reason="expired",issuer="none"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("duo_workflow_auth_relay_open_streams 1"),
            "{text}"
        );
        assert!(text.contains("test_dropped_total 7"), "{text}");
        assert!(text.contains("test_level 3"), "{text}");
        assert!(
            text.contains(r#"duo_workflow_auth_build_info{version=""#),
            "{text}"
        );
        drop(open);
        assert!(metrics
            .render()
            .contains("duo_workflow_auth_relay_open_streams 0"));
    }
}
