//! The local authority's public keys over HTTP, so that other services (or another instance of
//! this one) can verify user tokens through OIDC discovery:
//! `GET /.well-known/openid-configuration` and `GET /oauth/discovery/keys`, and nothing else
//! (what operators read, `/key-sources` and `/metrics`, is on the [`operator`](super::operator)
//! listener).
//!
//! The discovery document's `issuer` is the service name, because that is the `iss` of the user
//! tokens, and OIDC discovery requires the two to be identical. `jwks_uri` is built from the
//! configured public URL, or from the request's `Host` when none is configured.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use super::listener::{accept_until, expect_bytes_by, Acceptor, Counted};
use crate::authority::LocalAuthority;

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/oauth/discovery/keys";

/// Peers should notice a rotation within minutes (the keys change on reload).
const CACHE_CONTROL: &str = "public, max-age=300";

pub struct PublishedKeys {
    authority: Arc<LocalAuthority>,
    /// e.g. `https://duo-workflow.example.com`; no trailing slash.
    public_url: Option<String>,
    /// The scheme of a `jwks_uri` derived from `Host`: `https` when this listener serves TLS.
    scheme: &'static str,
}

impl PublishedKeys {
    pub fn new(authority: Arc<LocalAuthority>, public_url: Option<String>) -> Self {
        let public_url = public_url.map(|u| u.trim_end_matches('/').to_owned());
        Self {
            authority,
            public_url,
            scheme: "http",
        }
    }

    /// This listener serves TLS: a `jwks_uri` derived from `Host` is `https://`.
    pub fn over_https(mut self) -> Self {
        self.scheme = "https";
        self
    }

    /// Where the published keys are: the configured public URL, or, without one, what the
    /// request's `Host` says (`None` when it is not a well-formed host and port). Only the
    /// configured URL may be cached publicly (checklist row 32): a Host-chosen `jwks_uri` must
    /// not be stored by a shared cache and served to others.
    fn base_url<B>(&self, req: &Request<B>) -> Option<(String, bool)> {
        if let Some(url) = &self.public_url {
            return Some((url.clone(), true));
        }
        let host = req.headers().get(header::HOST)?.to_str().ok()?;
        well_formed_host(host).then(|| (format!("{}://{host}", self.scheme), false))
    }

    pub fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET");
        }
        match req.uri().path() {
            JWKS_PATH => json_response(self.authority.keys().jwks()),
            DISCOVERY_PATH => {
                let Some((base, configured)) = self.base_url(req) else {
                    return plain(StatusCode::BAD_REQUEST, "no usable Host header");
                };
                let algs: Vec<&str> = self
                    .authority
                    .keys()
                    .algorithms()
                    .into_iter()
                    .map(|a| a.jose_name())
                    .collect();
                let doc = json!({
                    "issuer": self.authority.issuer_name(),
                    "jwks_uri": format!("{base}{JWKS_PATH}"),
                    "id_token_signing_alg_values_supported": algs,
                    "subject_types_supported": ["public"],
                    "response_types_supported": ["id_token"],
                });
                let mut response =
                    json_response(Bytes::from(serde_json::to_vec(&doc).expect("JSON")));
                if !configured {
                    let headers = response.headers_mut();
                    headers.insert(
                        header::CACHE_CONTROL,
                        http::HeaderValue::from_static("no-store"),
                    );
                    headers.insert(header::VARY, http::HeaderValue::from_static("Host"));
                }
                response
            }
            _ => plain(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// Serves until `shutdown` resolves. Each connection is HTTP/1.1 (over TLS when the acceptor
    /// has it), within the acceptor's connection bound; its first byte and its request headers
    /// must come within the handshake timeout.
    pub async fn serve(
        self: Arc<Self>,
        acceptor: Acceptor,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        serve_http1(acceptor, shutdown, move |req| self.respond(req)).await
    }
}

/// `host[:port]`: a DNS name of letter-digit-hyphen labels, an IPv4 address, or a bracketed
/// IPv6 address; a port of at most five digits. No userinfo, path, spaces or anything else.
fn well_formed_host(value: &str) -> bool {
    if value.is_empty() || value.len() > 255 {
        return false;
    }
    let (host_ok, port) = match value.strip_prefix('[') {
        Some(bracketed) => {
            let Some((v6, rest)) = bracketed.split_once(']') else {
                return false;
            };
            let port = match rest {
                "" => None,
                _ => match rest.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return false,
                },
            };
            (v6.parse::<std::net::Ipv6Addr>().is_ok(), port)
        }
        None => {
            let (name, port) = match value.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (value, None),
            };
            let labels_ok = name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            (labels_ok, port)
        }
    };
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65_535)
    });
    host_ok && port_ok
}

/// An HTTP/1.1 listener answering every request with `respond`, until `shutdown` resolves: the
/// published keys and the operator pages. Connections are accepted within the acceptor's bound
/// (over TLS when it has it); the first byte must come within the handshake timeout and the
/// request headers within it too. Open connections close when this returns (requests are short).
pub(crate) async fn serve_http1(
    acceptor: Acceptor,
    shutdown: impl std::future::Future<Output = ()>,
    respond: impl Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
) {
    let respond = Arc::new(respond);
    let _connections = accept_until(acceptor, shutdown, |accepted, handshake| {
        let respond = respond.clone();
        async move {
            let Some(io) = handshake.secure(accepted.stream, accepted.peer).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = respond(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            let started = tokio::time::Instant::now();
            let (io, read) = Counted::new(io);
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1
                .timer(TokioTimer::new())
                .header_read_timeout(handshake.limits().handshake_timeout);
            let connection = http1.serve_connection(TokioIo::new(io), service);
            // A request line must have begun by then; the header read timeout does the rest.
            let deadline = started + handshake.limits().handshake_timeout;
            let _ = expect_bytes_by(connection, &read, 1, deadline).await;
            drop(accepted.permit);
        }
    })
    .await;
}

pub(crate) fn json_response(body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, CACHE_CONTROL)
        .body(Full::new(body))
        .expect("static response")
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .expect("static response")
}

#[cfg(test)]
mod tests {
    use super::well_formed_host;

    #[test]
    fn only_well_formed_hosts_choose_a_published_url() {
        for good in [
            "dws.example.com",
            "dws.example.com:50053",
            "localhost",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:50053",
            "a-b.c",
        ] {
            assert!(well_formed_host(good), "{good}");
        }
        for bad in [
            "",
            "attacker.example/evil",
            "user@host",
            "host:",
            "host:99999",
            "host:80:81",
            "::1",
            "[::1",
            "[zz]",
            "[::1]x",
            "-host",
            "host-",
            "a..b",
            "host name",
            "host\t",
            "ho%73t",
        ] {
            assert!(!well_formed_host(bad), "{bad:?}");
        }
        assert!(!well_formed_host(&"a".repeat(256)));
    }
}
