//! How a value is read, from a variable or from the file: booleans, ports, addresses, lists,
//! names and URLs, each refusal naming the field it came from.

use std::net::IpAddr;

use duo_workflow_adapters::sources::fetch::{check_scheme, Shown};
use url::Url;

use super::{bad, ConfigError};

/// An IP address, v4 or v6 (brackets allowed around v6).
pub(super) fn parse_ip(field: &str, v: &str) -> Result<IpAddr, ConfigError> {
    let t = v.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    t.parse::<IpAddr>().map_err(|_| {
        bad(
            field,
            format!("{v:?} is not an IP address (such as 127.0.0.1, 0.0.0.0 or ::)"),
        )
    })
}

pub(super) fn parse_port(field: &str, v: &str) -> Result<u16, ConfigError> {
    v.trim()
        .parse::<u16>()
        .map_err(|_| bad(field, format!("{v:?} is not a port number (0-65535)")))
}

/// `true` or `false` in any letter case (GitLab's Python service only understood lower-case
/// `false`), surrounding whitespace ignored. Nothing else: GitLab's service keeps authentication
/// on for `0`, `no` or `off`, so reading them as `false` would open the door after a migration.
pub fn parse_bool(field: &str, v: &str) -> Result<bool, ConfigError> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(bad(
            field,
            format!("{v:?} is not a boolean: write true or false"),
        ))
    }
}

/// A whole number of seconds within `min..=max`: from the variable `names.0` when set, else from
/// the file key `names.1`, else `default`; a refusal names whichever was used.
pub(super) fn seconds(
    env: &std::collections::HashMap<String, String>,
    (variable, key): (&str, &str),
    from_file: Option<u64>,
    default: u64,
    (min, max): (u64, u64),
) -> Result<std::time::Duration, ConfigError> {
    let (field, value) = match env.get(variable) {
        Some(v) => (
            variable,
            v.trim()
                .parse::<u64>()
                .map_err(|_| bad(variable, format!("{v:?} is not a whole number of seconds")))?,
        ),
        None => (key, from_file.unwrap_or(default)),
    };
    if !(min..=max).contains(&value) {
        return Err(bad(
            field,
            format!("must be between {min} and {max} seconds"),
        ));
    }
    Ok(std::time::Duration::from_secs(value))
}

/// A comma-separated environment list; blanks around items are ignored, and so are empty items.
pub(super) fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Names (unit primitives, capabilities): letters, digits, `_`, `-`, `.`, `/`, `:`.
pub(super) fn names(field: &str, list: &[String]) -> Result<Vec<String>, ConfigError> {
    for name in list {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-./:".contains(&b));
        if !ok {
            return Err(bad(field, format!("{name:?} is not a valid name")));
        }
    }
    Ok(list.to_vec())
}

/// A base URL (of a provider's discovery document, of the published keys): an http(s) URL with
/// a host and no query or fragment, returned without a trailing slash, to which paths are added.
pub(super) fn base_url(field: &str, value: &str) -> Result<String, ConfigError> {
    Ok(http_url(field, value.trim())?
        .trim_end_matches('/')
        .to_owned())
}

/// An issuer that is a URL, exactly as written: the `iss` of the tokens is compared with it
/// byte for byte, so its trailing slash, if any, is part of it (Auth0's and Azure AD's issuers
/// end with one, GitLab's do not). Blanks around it are refused rather than trimmed.
pub(super) fn issuer_url(field: &str, value: &str) -> Result<String, ConfigError> {
    if value.trim() != value {
        return Err(bad(field, "an issuer has no blanks around it"));
    }
    http_url(field, value)
}

/// An http(s) URL with a host and no query or fragment.
fn http_url(field: &str, value: &str) -> Result<String, ConfigError> {
    // The value is not echoed whole: a URL may carry credentials (checklist row 30).
    let url = Url::parse(value).map_err(|e| bad(field, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad(
            field,
            format!("{} must be an http(s) URL with a host", Shown(&url)),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(field, "an issuer URL has no query or fragment"));
    }
    Ok(value.to_owned())
}

/// A URL this service may fetch from (HTTPS, or HTTP to loopback unless allowed).
pub(super) fn fetchable_url(
    field: &str,
    url: &str,
    allow_insecure_http: bool,
) -> Result<Url, ConfigError> {
    let url = Url::parse(url).map_err(|e| bad(field, format!("not a URL: {e}")))?;
    check_scheme(&url, allow_insecure_http).map_err(|e| bad(field, e))?;
    Ok(url)
}
