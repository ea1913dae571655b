//! Reading the Cloud Connector metadata out of HTTP/2 headers.

use duo_workflow_domain::{AuthorizationHeader, RequestMetadata};
use http::{HeaderMap, Request};

pub const AUTHORIZATION: &str = "authorization";
pub const AUTHENTICATION_TYPE: &str = "x-gitlab-authentication-type";
pub const REALM: &str = "x-gitlab-realm";
pub const INSTANCE_ID: &str = "x-gitlab-instance-id";
pub const GLOBAL_USER_ID: &str = "x-gitlab-global-user-id";
pub const DUO_SEAT_COUNT: &str = "x-gitlab-duo-seat-count";
pub const REQUEST_ID: &str = "x-request-id";
/// GitLab's correlation id: the request id when `x-request-id` is absent.
pub const CORRELATION_ID: &str = "x-gitlab-correlation-id";

/// Metadata forwarded to the workflow executor: the caller's credentials and Cloud Connector
/// headers, and the correlation id.
pub fn is_forwarded(name: &str) -> bool {
    name == AUTHORIZATION || name == REQUEST_ID || name.starts_with("x-gitlab-")
}

/// The auth-relevant metadata. A header given more than once, or not visible ASCII, counts as
/// absent (so a claim bound to it mismatches); `authorization` given twice is refused outright.
pub fn request_metadata(headers: &HeaderMap) -> RequestMetadata {
    let authorization = {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        match (values.next(), values.next()) {
            (None, _) => AuthorizationHeader::Missing,
            (Some(v), None) => AuthorizationHeader::One(v.to_str().unwrap_or_default().to_owned()),
            (Some(_), Some(_)) => AuthorizationHeader::Repeated,
        }
    };
    RequestMetadata {
        authorization,
        authentication_type: single(headers, AUTHENTICATION_TYPE),
        realm: single(headers, REALM),
        instance_id: single(headers, INSTANCE_ID),
        global_user_id: single(headers, GLOBAL_USER_ID),
        duo_seat_count: single(headers, DUO_SEAT_COUNT),
    }
}

fn single(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok().map(str::to_owned),
        _ => None,
    }
}

/// The size of a request's metadata as HPACK accounts for a header list (RFC 7541 §4.1, and
/// how gRPC's C core, GitLab's grpcio, measures it against its limit): each field's name and
/// value in bytes plus 32, the pseudo-header fields (`:method`, `:scheme`, `:authority`,
/// `:path`) included.
pub fn metadata_size<B>(req: &Request<B>) -> usize {
    const ENTRY: usize = 32;
    let uri = req.uri();
    let pseudo = [
        (":method", req.method().as_str().len()),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (
            ":authority",
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
        (
            ":path",
            uri.path_and_query().map_or(0, |p| p.as_str().len()),
        ),
    ];
    let pseudo: usize = pseudo.iter().map(|(n, v)| n.len() + v + ENTRY).sum();
    pseudo
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + ENTRY)
            .sum::<usize>()
}
