//! Readiness (gRPC health): one entry per key source (serving while it has keys), `""` and
//! `DuoWorkflow` (serving once every required source has keys, not serving from shutdown on),
//! and `reload` (serving while every key and certificate file's last contents loaded).
//!
//! The entries follow the state they report both ways: a loop brings them up to date every
//! 250 ms (for `Watch` streams), and every `Check` and `Watch` brings them up to date first, so
//! an answer is never older than the request. A probe that asks right after a token of a source
//! was accepted hears SERVING, not the state of up to 250 ms before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_workflow_adapters::authenticator::DynKeySource;
use duo_workflow_domain::Rpc;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use crate::reload::Reloader;
use crate::server::{health_name, RELOAD_HEALTH_NAME};

/// How often the entries are brought up to date without a request asking.
const REFRESH: Duration = Duration::from_millis(250);

pub struct Readiness {
    reporter: HealthReporter,
    sources: Vec<DynKeySource>,
    reloader: Arc<Reloader>,
    /// What the entries say now: each source's, and `reload`'s. One update at a time.
    reported: tokio::sync::Mutex<(Option<Vec<bool>>, Option<bool>)>,
    /// Shutting down: `""` stays NOT_SERVING whatever the sources say.
    stopping: AtomicBool,
}

fn status(ok: bool) -> ServingStatus {
    if ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

impl Readiness {
    /// The readiness and the gRPC health service that answers from it.
    pub fn new(
        sources: Vec<DynKeySource>,
        reloader: Arc<Reloader>,
    ) -> (Arc<Self>, HealthServer<impl Health>) {
        let reporter = HealthReporter::new();
        let readiness = Arc::new(Self {
            reporter: reporter.clone(),
            sources,
            reloader,
            reported: tokio::sync::Mutex::new((None, None)),
            stopping: AtomicBool::new(false),
        });
        let service = UpToDate {
            readiness: readiness.clone(),
            inner: HealthService::from_health_reporter(reporter),
        };
        (readiness, HealthServer::new(service))
    }

    /// Brings every entry up to date with the sources and the reloader.
    pub async fn refresh(&self) {
        let mut reported = self.reported.lock().await;
        let reload_ok = self.reloader.healthy();
        if reported.1 != Some(reload_ok) {
            self.reporter
                .set_service_status(RELOAD_HEALTH_NAME, status(reload_ok))
                .await;
            reported.1 = Some(reload_ok);
        }
        let states: Vec<bool> = self.sources.iter().map(|s| s.state().has_keys()).collect();
        if reported.0.as_ref() != Some(&states) {
            for (source, ok) in self.sources.iter().zip(&states) {
                self.reporter
                    .set_service_status(health_name(source.name()), status(*ok))
                    .await;
            }
            let ready = self
                .sources
                .iter()
                .zip(&states)
                .all(|(s, ok)| *ok || !s.required());
            if !self.stopping.load(Ordering::SeqCst) {
                self.reporter.set_service_status("", status(ready)).await;
            }
            self.reporter
                .set_service_status(Rpc::SERVICE, status(ready))
                .await;
            reported.0 = Some(states);
        }
    }

    /// Refreshes every [`REFRESH`], until aborted.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.refresh().await;
            tokio::time::sleep(REFRESH).await;
        }
    }

    /// Shutting down: `""` is NOT_SERVING from now on.
    pub async fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
}

/// tonic-health's service, each request answered after the entries are brought up to date.
struct UpToDate {
    readiness: Arc<Readiness>,
    inner: HealthService,
}

#[tonic::async_trait]
impl Health for UpToDate {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.readiness.refresh().await;
        self.inner.check(request).await
    }

    type WatchStream = <HealthService as Health>::WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.readiness.refresh().await;
        self.inner.watch(request).await
    }
}
