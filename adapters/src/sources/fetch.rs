//! Fetching provider documents over HTTP, defensively: HTTPS unless loopback or explicitly
//! allowed, connect and total timeouts, no redirects, a cap on the body, and `Cache-Control`.

use std::net::IpAddr;
use std::time::Duration;

use url::Url;

/// Bodies larger than this are refused while they stream in.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct FetchPolicy {
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    pub max_body_bytes: usize,
    /// Plain HTTP to non-loopback hosts, for development only.
    pub allow_insecure_http: bool,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            total_timeout: Duration::from_secs(10),
            max_body_bytes: MAX_BODY_BYTES,
            allow_insecure_http: false,
        }
    }
}

/// A fetched document and how long the server says it stays fresh.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

/// A URL as logs, errors and status pages show it (checklist row 30): credentials in its
/// userinfo and its query string are replaced by `***`, and a long path is cut.
pub struct Shown<'a>(pub &'a Url);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.0;
        write!(f, "{}://", url.scheme())?;
        if !url.username().is_empty() || url.password().is_some() {
            f.write_str("***@")?;
        }
        if let Some(host) = url.host_str() {
            f.write_str(host)?;
        }
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(&capped(url.path(), 200))?;
        if url.query().is_some() {
            f.write_str("?***")?;
        }
        Ok(())
    }
}

/// Text that came from outside (a provider's issuer, an error message), cut to `max` bytes at a
/// character boundary, so that a 900 KB value never reaches a log line or a status page whole.
pub fn capped(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}

/// Whether `url` may be fetched under `policy`: HTTPS, or HTTP to a loopback host.
pub fn check_scheme(url: &Url, allow_insecure_http: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "{} is plain HTTP to a non-loopback host (set allow_insecure_http for development)",
            Shown(url)
        )),
        other => Err(format!("{} has unsupported scheme {other:?}", Shown(url))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// One HTTP client per source, built once.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: FetchPolicy,
}

impl Fetcher {
    pub fn new(policy: FetchPolicy) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.total_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // reqwest's default too; said here so that no upgrade silently drops it.
            .tcp_nodelay(true)
            .user_agent(concat!("duo-workflow-service/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { client, policy })
    }

    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    pub async fn get(&self, url: &Url) -> Result<Fetched, String> {
        check_scheme(url, self.policy.allow_insecure_http)?;
        let shown = Shown(url);
        let mut response = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {shown}: {}", describe(e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {shown}: HTTP {status}"));
        }
        let cap = self.policy.max_body_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > cap as u64)
        {
            return Err(format!("GET {shown}: body larger than {cap} bytes"));
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(cache_max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {shown}: {}", describe(e)))?
        {
            if body.len() + chunk.len() > cap {
                return Err(format!("GET {shown}: body larger than {cap} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { body, max_age })
    }
}

/// What went wrong, with its innermost cause (DNS, refused, TLS), for the operator's log.
/// reqwest's errors name the URL (with its credentials): it is dropped here, the caller shows it
/// redacted.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "failed"
    };
    let mut root: &dyn std::error::Error = &e;
    while let Some(cause) = root.source() {
        root = cause;
    }
    format!("{kind} ({})", capped(&root.to_string(), 300))
}

/// `max-age` of a `Cache-Control` value; `no-store`/`no-cache` mean zero (refresh as often as
/// the configured minimum allows).
pub fn cache_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            max_age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_is_read() {
        assert_eq!(
            cache_max_age("max-age=86400, public"),
            Some(Duration::from_secs(86400))
        );
        assert_eq!(
            cache_max_age("public, MAX-AGE=60"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("private"), None);
        assert_eq!(cache_max_age("max-age=-1"), None);
    }

    #[test]
    fn https_is_required_except_on_loopback() {
        let ok = [
            "https://gitlab.com",
            "http://127.0.0.1:9/x",
            "http://[::1]/",
            "http://localhost:1",
        ];
        for u in ok {
            assert!(check_scheme(&Url::parse(u).unwrap(), false).is_ok(), "{u}");
        }
        let gitlab = Url::parse("http://gitlab.example.com").unwrap();
        assert!(check_scheme(&gitlab, false).is_err());
        assert!(check_scheme(&gitlab, true).is_ok());
        assert!(check_scheme(&Url::parse("file:///etc/passwd").unwrap(), true).is_err());
    }
}
