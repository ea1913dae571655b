//! Wiring: configuration in, a running service out. This is the only place that knows which
//! adapter implements which port; swapping a provider is a configuration change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use duo_workflow_adapters::authenticator::{DynKeySource, JwtAuthenticator};
use duo_workflow_adapters::authority::{AuthorityFiles, LocalAuthority};
use duo_workflow_adapters::clock::SystemClock;
use duo_workflow_adapters::executors::resolve::SystemResolver;
use duo_workflow_adapters::executors::{Connector, ExecutorUrl, Executors};
use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_adapters::metrics::{
    CacheCollector, ExecutorsCollector, KeySourceCollector, Metrics,
};
use duo_workflow_adapters::reload::Reloadable;
use duo_workflow_adapters::sources::{RemoteKeySource, StaticKeySource};
use duo_workflow_adapters::transport::capabilities::{LearningPolicy, OwnToken};
use duo_workflow_adapters::transport::operator::OperatorPages;
use duo_workflow_adapters::transport::published_keys::PublishedKeys;
use duo_workflow_adapters::transport::{
    self, Acceptor, AdmissionLayer, GenerateTokenEndpoint, LearnedCapabilities, Limits, Minting,
    ObserveLayer, Protocol, Relay, ReloadableTls, Routes, ServerCapabilities,
};
use duo_workflow_domain::gatekeeper::{AuthMode, Gatekeeper, UnitPrimitiveAuthorizer};
use duo_workflow_domain::issuers::{IssuerClaims, SourceIssuer};
use duo_workflow_domain::keys::Algorithm;
use duo_workflow_domain::ports::{Clock, NameResolver};
use duo_workflow_domain::Issuer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Settings, Upstream, ENV_SIGNING_KEY};
use crate::reload::Reloader;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

fn config_error(field: &str, problem: impl Into<String>) -> StartError {
    StartError::Config(crate::config::ConfigError {
        field: field.into(),
        problem: problem.into(),
    })
}

/// The parts of the service, built from settings.
pub struct Service {
    pub admission: AdmissionLayer,
    /// Authentication and authorization, as the admission layer asks them (`token explain`).
    pub gatekeeper: Arc<Gatekeeper>,
    /// `None` while authentication is disabled.
    pub authenticator: Option<Arc<JwtAuthenticator>>,
    pub generate_token: GenerateTokenEndpoint,
    /// `None`: no executor configured.
    pub relay: Option<Relay>,
    /// Learned from the executor when not configured.
    pub capabilities: ServerCapabilities,
    pub reflection: bool,
    pub authority: Arc<LocalAuthority>,
    /// Every key source, for readiness.
    pub sources: Vec<DynKeySource>,
    /// The sources that refresh in the background once serving starts.
    pub remote: Vec<Arc<RemoteKeySource>>,
    pub published_keys: Arc<PublishedKeys>,
    /// `/metrics` and `/key-sources`, on the operator listener.
    pub operator: Arc<OperatorPages>,
    pub metrics: Arc<Metrics>,
    /// Records and logs every call.
    pub observe: ObserveLayer,
    pub limits: Limits,
    pub grace: Duration,
    /// gRPC over TLS.
    pub tls: Option<Arc<ReloadableTls>>,
    /// Reads the TLS and key files again, on SIGHUP and every `reload_poll`.
    pub reloader: Arc<Reloader>,
    pub reload_poll: Option<Duration>,
    /// The published keys over TLS too.
    pub http_tls: bool,
    /// How the executors' names are resolved (the system's resolver; tests give their own).
    pub resolver: Arc<dyn NameResolver>,
}

/// The local authority from the configured keys, or an ephemeral key when none is configured.
fn authority(settings: &Settings, clock: &dyn Clock) -> Result<LocalAuthority, StartError> {
    let signing = match &settings.signing_key {
        Some(key) => SigningKey::from_pem(&key.pem).map_err(|e| config_error(&key.field, e))?,
        None => {
            tracing::warn!(
                "no {ENV_SIGNING_KEY} configured: generated an ephemeral signing key; \
                 user tokens minted now stop verifying when this process exits"
            );
            let pem =
                generate_pem(Algorithm::RS256).map_err(|e| config_error(ENV_SIGNING_KEY, e))?;
            SigningKey::from_pem(&pem).expect("a freshly generated key loads")
        }
    };
    let validation = match &settings.validation_key {
        Some(key) => Some(SigningKey::from_pem(&key.pem).map_err(|e| config_error(&key.field, e))?),
        None => None,
    };
    if let Some(path) = &settings.absent_validation_key_file {
        tracing::warn!(
            path = %path.display(),
            "the validation key file does not exist: no validation key until one appears there"
        );
    }
    tracing::info!(
        issuer = %settings.service_name,
        signing_kid = signing.kid(),
        signing_alg = %signing.algorithm(),
        validation_kid = validation.as_ref().map(|v| v.kid()).unwrap_or("none"),
        "local authority ready"
    );
    Ok(LocalAuthority::new(
        &settings.service_name,
        signing,
        validation,
        clock.now(),
    ))
}

/// The authority's key files, to read again on reload; `None` when no key came from a file.
fn authority_files(
    settings: &Settings,
    authority: Arc<LocalAuthority>,
    clock: Arc<dyn Clock>,
) -> Option<AuthorityFiles> {
    let signing = settings
        .signing_key
        .as_ref()
        .and_then(|k| Some((k.file.clone()?, k.pem.as_str())));
    let validation = match (
        &settings.validation_key,
        &settings.absent_validation_key_file,
    ) {
        (Some(k), _) => k.file.clone().map(|f| (f, Some(k.pem.as_str()))),
        (None, Some(path)) => Some((path.clone(), None)),
        (None, None) => None,
    };
    AuthorityFiles::new(authority, signing, validation, clock)
}

/// Builds every component from validated settings.
pub fn build(settings: &Settings) -> Result<Service, StartError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let authority = Arc::new(authority(settings, clock.as_ref())?);

    let mut reloadable: Vec<Arc<dyn Reloadable>> = Vec::new();
    if let Some(tls) = &settings.tls {
        reloadable.push(tls.clone());
    }
    if let Some(files) = authority_files(settings, authority.clone(), clock.clone()) {
        reloadable.push(Arc::new(files));
    }
    let mut sources: Vec<DynKeySource> = vec![authority.key_source()];
    for s in &settings.static_sources {
        let source = Arc::new(
            StaticKeySource::from_file(
                &s.name,
                Issuer::new(s.issuer.clone()),
                s.algorithms.clone(),
                s.file.clone(),
                &s.contents,
                clock.clone(),
            )
            .map_err(|e| config_error(&format!("key source {:?}", s.name), e))?
            .with_claim_mapping(s.claims.clone()),
        );
        tracing::info!(source = %s.name, issuer = %s.issuer, kids = ?source.current_kids(), "static key source loaded");
        reloadable.push(source.clone());
        sources.push(source);
    }
    // Who serves which issuer: the configured issuers are taken; the built-in sources claim the
    // issuer their discovery document names, if it is free.
    let claims = Arc::new(IssuerClaims::new(
        &settings.service_name,
        sources
            .iter()
            .filter_map(|s| match s.issuer() {
                SourceIssuer::Fixed(i) => Some((s.name(), i)),
                SourceIssuer::Discovered(_) => None,
            })
            .chain(
                settings
                    .remote_sources
                    .iter()
                    .filter_map(|c| c.fixed_issuer().map(|i| (c.name.as_str(), i))),
            ),
    ));
    let mut remote = Vec::new();
    for config in &settings.remote_sources {
        let source = RemoteKeySource::new(config.clone(), clock.clone(), claims.clone())
            .map_err(|e| config_error(&format!("key source {:?}", config.name), e))?;
        tracing::info!(
            source = %config.name,
            issuer = config.fixed_issuer().map_or("(learned from the discovery document)", |i| i.as_str()),
            locator = %config.locator,
            required = config.required,
            plain_http_allowed = config.fetch.allow_insecure_http,
            "remote key source configured; its keys load in the background"
        );
        sources.push(source.clone());
        remote.push(source);
    }
    for (name, field) in &settings.disabled_sources {
        tracing::info!(source = name, "key source disabled: {field} is empty");
    }
    let readiness_sources = sources.clone();

    let metrics = Arc::new(Metrics::new());
    metrics.register_collector(KeySourceCollector::new(
        readiness_sources.clone(),
        remote.clone(),
        clock.clone(),
    ));
    let reloader = Arc::new(Reloader::new(reloadable, metrics.reloads()));
    metrics.counter_fn(
        "duo_workflow_auth_log_lines_dropped",
        "Log lines dropped because stderr did not keep up (calls never wait for it).",
        crate::logging::dropped_lines,
    );
    // Tasks that outlive their calls are a leak: the soak watches this stay flat.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        metrics.gauge_fn(
            "duo_workflow_runtime_alive_tasks",
            "tokio tasks alive in the service's runtime (connections, calls, background work).",
            move || runtime.metrics().num_alive_tasks() as i64,
        );
    }
    // A panic anywhere in the process is logged and counted, never a silent dead task.
    crate::panics::install();
    metrics.counter_fn(
        "duo_workflow_panics",
        "Panics in the process since it started (each logged at ERROR with its task's span).",
        crate::panics::count,
    );
    let mut jwt_authenticator = None;
    let mode = if settings.auth_enabled {
        let authenticator = Arc::new(
            JwtAuthenticator::new(sources, settings.claim_checks.clone(), clock.clone())
                .map_err(|e| config_error("key_sources", e))?
                .with_max_token_bytes(settings.max_token_bytes)
                .with_cache_limits(settings.verified_token_cache)
                .with_refused_limits(settings.refused_token_cache)
                .with_max_kidless_candidates(settings.max_kidless_candidates),
        );
        metrics.register_collector(CacheCollector(Some(authenticator.clone())));
        jwt_authenticator = Some(authenticator.clone());
        AuthMode::Enabled(authenticator)
    } else {
        metrics.register_collector(CacheCollector(None));
        tracing::warn!(
            "AUTHENTICATION IS DISABLED ({}=false): every caller is a debug user who passes every check",
            crate::config::ENV_AUTH_ENABLED
        );
        AuthMode::Disabled
    };
    let gatekeeper = Arc::new(Gatekeeper::new(
        mode,
        Arc::new(UnitPrimitiveAuthorizer::new(settings.service_name.clone())),
        settings.service_name.clone(),
    ));

    let limits = settings.transport;
    let relay = settings
        .upstream
        .as_ref()
        .map(|upstream| {
            executors(upstream)
                .map(|e| Relay::new(e, limits.max_message_bytes).with_metrics(metrics.relay()))
        })
        .transpose()?;
    let capabilities = match (&settings.server_capabilities, &relay) {
        (Some(names), _) => ServerCapabilities::Configured(names.clone().into()),
        (None, Some(relay)) => ServerCapabilities::Learned(LearnedCapabilities::new(
            relay.for_own_calls(),
            LearningPolicy::default(),
            Some(OwnToken {
                issuer: authority.clone(),
                service: settings.service_name.clone(),
                clock: clock.clone(),
            }),
            settings
                .upstream
                .as_ref()
                .map_or(Duration::ZERO, |u| u.capabilities_wait),
        )),
        (None, None) => ServerCapabilities::Unknown,
    };
    let mut published_keys =
        PublishedKeys::new(authority.clone(), settings.http_public_url.clone());
    let mut operator =
        OperatorPages::new(metrics.clone(), readiness_sources.clone(), clock.clone());
    if let Some(relay) = &relay {
        metrics.register_collector(ExecutorsCollector(relay.executors().clone()));
        operator = operator.with_executors(relay.executors().clone());
    }
    let operator = Arc::new(operator);
    if settings.http_tls {
        published_keys = published_keys.over_https();
    }
    let published_keys = Arc::new(published_keys);
    let generate_token = GenerateTokenEndpoint::new(Minting {
        service: settings.service_name.clone(),
        issuer: authority.clone(),
        clock,
        delegation: settings.delegation.clone(),
        capabilities: capabilities.clone(),
        max_message_bytes: limits.max_message_bytes,
    });
    let admission = AdmissionLayer::new(gatekeeper.clone(), settings.methods.clone(), &limits);
    let held = admission.first_messages_held();
    metrics.gauge_fn(
        "duo_workflow_first_message_bytes_held",
        "Bytes of first messages read and held before their calls are authorized (bounded by [limits]).",
        move || i64::try_from(held.held()).unwrap_or(i64::MAX),
    );
    Ok(Service {
        admission,
        gatekeeper,
        authenticator: jwt_authenticator,
        generate_token,
        relay,
        capabilities,
        reflection: settings.methods.reflection_enabled(),
        published_keys,
        operator,
        observe: ObserveLayer::new(metrics.calls()),
        metrics,
        authority,
        sources: readiness_sources,
        remote,
        limits,
        grace: settings.shutdown_grace,
        tls: settings.tls.clone(),
        reloader,
        reload_poll: settings.reload_poll,
        http_tls: settings.http_tls,
        resolver: Arc::new(SystemResolver),
    })
}

/// The workflow executors: one endpoint per address of each URL (names resolved once serving
/// starts), TLS for `https` with the system's roots and the configured CA bundle. Nothing is
/// connected yet: an unreachable executor fails calls, not start-up.
fn executors(upstream: &Upstream) -> Result<Arc<Executors>, StartError> {
    let field = crate::config::ENV_UPSTREAM_URL;
    let ca_field = upstream.ca.as_ref().map_or(field, |(f, _)| f.as_str());
    let connector = Connector::new(
        upstream.any_https(),
        upstream.ca.as_ref().map(|(_, pem)| pem.as_slice()),
    )
    .map_err(|e| config_error(ca_field, e))?;
    let urls = upstream
        .urls
        .iter()
        .map(|u| ExecutorUrl::parse(u).map_err(|e| config_error(field, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let origins: Vec<&str> = urls.iter().map(ExecutorUrl::origin).collect();
    tracing::info!(
        executors = ?origins,
        ca_file = upstream.ca.is_some(),
        resolve_seconds = upstream.resolve_every.as_secs(),
        "workflow executors configured: authorized calls are relayed to them"
    );
    Ok(Executors::new(urls, connector, upstream.resolve_every))
}

/// The service's listeners: gRPC, HTTP for the published keys, and the operator listener
/// (`/metrics`, `/key-sources`).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub operator: TcpListener,
}

impl Listeners {
    /// Binds all three; an unspecified IPv6 address (`[::]`) accepts IPv4 too.
    pub async fn bind(
        grpc: SocketAddr,
        http: SocketAddr,
        operator: SocketAddr,
    ) -> Result<Self, StartError> {
        let bind = |addr: SocketAddr| {
            transport::listener::bind(addr).map_err(|source| StartError::Bind {
                addr: addr.to_string(),
                source,
            })
        };
        Ok(Self {
            grpc: bind(grpc)?,
            http: bind(http)?,
            operator: bind(operator)?,
        })
    }
}

/// The name under which readiness reports a key source.
pub fn health_name(source: &str) -> String {
    format!("key-source/{source}")
}

/// The readiness entry that is not serving while some key or certificate files hold contents
/// that do not load (the previous ones are in use; the service itself stays ready).
pub const RELOAD_HEALTH_NAME: &str = "reload";

/// Serves until `shutdown` resolves; then stops accepting, lets in-flight calls finish for the
/// grace period, and returns.
pub async fn serve(
    service: Service,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StartError> {
    for source in &service.remote {
        source.spawn_refresh();
    }
    let (readiness, health) = crate::readiness::Readiness::new(
        service.sources.clone(),
        service.reloader.clone(),
        service.capabilities.clone(),
    );
    let readiness_updates = tokio::spawn(readiness.clone().run());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopped_http = {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let acceptor = |listener, protocol, tls: bool| {
        let tls = tls
            .then(|| service.tls.clone().map(|t| (t, protocol)))
            .flatten();
        Acceptor::new(listener, service.limits.connections, tls)
    };
    let http = tokio::spawn(service.published_keys.clone().serve(
        acceptor(listeners.http, Protocol::Http, service.http_tls),
        stopped_http,
    ));
    // The operator pages never use the service's certificate: they are for the loopback.
    let operator = {
        let mut rx = stop.subscribe();
        let stopped = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(
            service
                .operator
                .clone()
                .serve(acceptor(listeners.operator, Protocol::Http, false), stopped),
        )
    };
    // The count of refusal lines the rate limit left out appears within a second or so.
    let flush = {
        let observe = service.observe.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                observe.flush_suppressed();
            }
        })
    };
    let reloads = tokio::spawn(service.reloader.clone().run(service.reload_poll));
    let resolution = service.relay.as_ref().map(|relay| {
        tokio::spawn(
            relay
                .executors()
                .clone()
                .resolve_forever(service.resolver.clone()),
        )
    });
    if let ServerCapabilities::Learned(learned) = &service.capabilities {
        learned.learn_at_start();
    }
    let mut routes = Routes::new(health, service.generate_token, service.relay);
    if service.reflection {
        routes = routes.with_reflection();
    }
    let server = transport::serve(
        acceptor(listeners.grpc, Protocol::Grpc, true),
        service.observe.clone(),
        service.admission,
        routes,
        service.limits,
        async move {
            let mut rx = stopped;
            let _ = rx.wait_for(|s| *s).await;
        },
    );
    tokio::pin!(server);
    let stopped_early = tokio::select! {
        () = &mut server => true,
        () = shutdown => false,
    };
    readiness_updates.abort();
    reloads.abort();
    if let Some(resolution) = resolution {
        resolution.abort();
    }
    if !stopped_early {
        tracing::info!(
            grace_seconds = service.grace.as_secs(),
            "shutting down: no new calls; in-flight calls may finish"
        );
        readiness.stopping().await;
        let _ = stop.send(true);
        if tokio::time::timeout(service.grace, server).await.is_err() {
            tracing::warn!("grace period over: remaining calls are cut off");
        }
    }
    let _ = stop.send(true);
    let _ = http.await;
    let _ = operator.await;
    flush.abort();
    service.observe.drain_suppressed();
    Ok(())
}

/// A server running in the background (tests, embedding): its address and a way to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// `/metrics` and `/key-sources`.
    pub operator_addr: SocketAddr,
    pub authority: Arc<LocalAuthority>,
    /// Reads the TLS and key files again, as SIGHUP does.
    pub reloader: Arc<Reloader>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), StartError>>,
}

impl Running {
    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("server task panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Builds the service and serves it on the given addresses (the operator listener where the
/// settings say) in a background task.
pub async fn start(
    settings: &Settings,
    grpc: SocketAddr,
    http: SocketAddr,
) -> Result<Running, StartError> {
    start_with_resolver(settings, grpc, http, Arc::new(SystemResolver)).await
}

/// [`start`], with the executors' names resolved by `resolver`.
pub async fn start_with_resolver(
    settings: &Settings,
    grpc: SocketAddr,
    http: SocketAddr,
    resolver: Arc<dyn NameResolver>,
) -> Result<Running, StartError> {
    let mut service = build(settings)?;
    service.resolver = resolver;
    let listeners = Listeners::bind(grpc, http, settings.metrics_addr).await?;
    let local = |l: &TcpListener| {
        l.local_addr().map_err(|source| StartError::Bind {
            addr: grpc.to_string(),
            source,
        })
    };
    let (addr, http_addr) = (local(&listeners.grpc)?, local(&listeners.http)?);
    let operator_addr = local(&listeners.operator)?;
    let authority = service.authority.clone();
    let reloader = service.reloader.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(service, listeners, async {
        stopped.await.ok();
    }));
    Ok(Running {
        addr,
        http_addr,
        operator_addr,
        authority,
        reloader,
        stop: Some(stop),
        task,
    })
}
