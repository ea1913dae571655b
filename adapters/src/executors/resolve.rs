//! Resolving the executors' host names, again and again: each name to every address it has (a
//! Kubernetes headless Service resolves to every ready pod). A failed lookup keeps the addresses
//! of the last good one; a name that resolves to nothing leaves no endpoint for it (calls to it
//! are `UNAVAILABLE`) and is resolved again like any other.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use duo_workflow_domain::ports::NameResolver;

use super::{ExecutorUrl, Executors};

/// The system's resolver (`getaddrinfo`, on a blocking thread).
pub struct SystemResolver;

#[async_trait]
impl NameResolver for SystemResolver {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let addrs = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| e.to_string())?;
        Ok(addrs.map(|a| a.ip()).collect())
    }
}

/// One lookup's time limit.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

impl Executors {
    /// Resolves every URL's host now and then every `resolve_every`, swapping in the endpoints
    /// found. Runs until the executors are dropped.
    pub async fn resolve_forever(self: Arc<Self>, resolver: Arc<dyn NameResolver>) {
        let mut me = self;
        let mut last: Vec<Option<Vec<IpAddr>>> = vec![None; me.urls.len()];
        let mut first = true;
        loop {
            let mut resolved = Vec::new();
            for (url, last) in me.urls.iter().zip(last.iter_mut()) {
                let ips = match url.ip {
                    Some(ip) => vec![ip],
                    None => lookup(resolver.as_ref(), url, last, first).await,
                };
                resolved.extend(
                    ips.into_iter()
                        .map(|ip| (url.clone(), SocketAddr::new(ip, url.port))),
                );
            }
            me.update(resolved);
            me.resolved.send_replace(true);
            first = false;
            // Held weakly while asleep: the loop ends with the executors.
            let every = me.resolve_every;
            let weak = Arc::downgrade(&me);
            drop(me);
            tokio::time::sleep(every).await;
            match weak.upgrade() {
                Some(strong) => me = strong,
                None => return,
            }
        }
    }
}

/// `url`'s addresses now: the lookup's, or the last good ones when it fails.
async fn lookup(
    resolver: &dyn NameResolver,
    url: &ExecutorUrl,
    last: &mut Option<Vec<IpAddr>>,
    first: bool,
) -> Vec<IpAddr> {
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.resolve(&url.host))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())));
    match found {
        Ok(mut ips) => {
            ips.sort();
            ips.dedup();
            if ips.is_empty() && (first || last.as_ref().is_some_and(|l| !l.is_empty())) {
                tracing::warn!(executor = %url, "the workflow executor's name resolves to no address: calls are UNAVAILABLE until it does");
            } else if last.as_ref() != Some(&ips) {
                tracing::info!(executor = %url, addresses = ips.len(), "resolved the workflow executor's name");
            }
            *last = Some(ips.clone());
            ips
        }
        Err(error) => {
            tracing::warn!(executor = %url, %error, kept = last.as_ref().map_or(0, Vec::len), "could not resolve the workflow executor's name: its last addresses are kept");
            last.clone().unwrap_or_default()
        }
    }
}
