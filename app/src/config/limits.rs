//! `[limits]`: the bounds of every resource a caller or a provider can make the service spend
//! (tokens, metadata, streams, connections, caches, time), and the shutdown grace period.

use std::collections::HashMap;
use std::time::Duration;

use duo_workflow_adapters::transport::{
    ConnectionAge, ConnectionLimits, FirstMessageLimits, Limits, OpenLimits,
};
use duo_workflow_adapters::verified_cache::{CacheLimits, RefusedLimits};
use duo_workflow_domain::keys::{DEFAULT_KIDLESS_CANDIDATES, MAX_KEYS_PER_SOURCE};
use serde::Deserialize;

use super::{bad, ConfigError};

pub const ENV_SHUTDOWN_GRACE_PERIOD: &str = "DUO_WORKFLOW_SHUTDOWN_GRACE_PERIOD_S";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_token_bytes: Option<usize>,
    pub max_header_list_bytes: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
    pub shutdown_grace_seconds: Option<u64>,
    /// Open connections per listener.
    pub max_connections: Option<usize>,
    /// Time to complete the TLS handshake and send the HTTP/2 preface (or, for the published
    /// keys, a request's headers).
    pub handshake_timeout_seconds: Option<u64>,
    pub keepalive_interval_seconds: Option<u64>,
    pub keepalive_timeout_seconds: Option<u64>,
    /// Streams reset because of the peer's malformed frames before the connection is closed.
    pub max_reset_streams_per_connection: Option<usize>,
    /// Calls without a token (health, reflection) open at once, per connection and in all.
    pub unauthenticated_streams_per_connection: Option<usize>,
    pub unauthenticated_streams: Option<usize>,
    /// Request bytes one call without a token may send.
    pub unauthenticated_max_message_bytes: Option<usize>,
    /// Verified-token cache bounds; 0 disables the cache.
    pub verified_token_cache_entries: Option<usize>,
    pub verified_token_cache_bytes: Option<usize>,
    /// How many keys a kid-less token is tried against, the most recent first.
    pub max_kidless_candidates: Option<usize>,
    /// Refused-token cache: entries (0 disables it) and how long a refusal is remembered.
    pub refused_token_cache_entries: Option<usize>,
    pub refused_token_cache_seconds: Option<u64>,
    /// Bytes of first messages (read before authorization) held per connection and in all, and
    /// the time a first message, once begun, has to arrive whole.
    pub first_message_bytes_per_connection: Option<usize>,
    pub first_message_bytes: Option<usize>,
    pub first_message_seconds: Option<u64>,
    /// A client's connection is sent GOAWAY this long after it opened (less up to a tenth);
    /// 0, the default: never.
    pub max_connection_age_seconds: Option<u64>,
    /// ...and closed this long after the GOAWAY if its streams have not finished (default 3600).
    pub max_connection_age_grace_seconds: Option<u64>,
}

/// A connection's grace past its age, by default: long enough for most workflows to finish.
pub const DEFAULT_CONNECTION_AGE_GRACE_SECONDS: u64 = 3600;

/// What `[limits]` (and the grace period's variable) set.
pub(super) struct LimitSettings {
    pub max_token_bytes: usize,
    pub transport: Limits,
    pub shutdown_grace: Duration,
    pub verified_token_cache: CacheLimits,
    pub max_kidless_candidates: usize,
    pub refused_token_cache: RefusedLimits,
}

pub(super) fn limits(
    limits: &LimitsSection,
    env: &HashMap<String, String>,
) -> Result<LimitSettings, ConfigError> {
    let max_token_bytes = limits.max_token_bytes.unwrap_or(8 * 1024);
    if !(512..=64 * 1024).contains(&max_token_bytes) {
        return Err(bad(
            "limits.max_token_bytes",
            "must be between 512 and 65536",
        ));
    }
    let max_header_list_bytes = limits.max_header_list_bytes.unwrap_or(24 * 1024);
    if !(4 * 1024..=1024 * 1024).contains(&max_header_list_bytes) {
        return Err(bad(
            "limits.max_header_list_bytes",
            "must be between 4096 and 1048576",
        ));
    }
    if (max_header_list_bytes as usize) < max_token_bytes + 1024 {
        return Err(bad(
            "limits.max_header_list_bytes",
            "must leave room for a token of limits.max_token_bytes",
        ));
    }
    let transport = transport_limits(limits, max_header_list_bytes)?;
    let shutdown_grace = match env.get(ENV_SHUTDOWN_GRACE_PERIOD) {
        Some(v) => grace_period(ENV_SHUTDOWN_GRACE_PERIOD, v)?,
        None => match limits.shutdown_grace_seconds {
            Some(s) if s > MAX_GRACE_SECONDS => {
                return Err(bad(
                    "limits.shutdown_grace_seconds",
                    format!("must be at most {MAX_GRACE_SECONDS}"),
                ))
            }
            Some(s) => Duration::from_secs(s),
            None => Duration::from_secs(30),
        },
    };
    let (verified_token_cache, max_kidless_candidates, refused_token_cache) =
        token_judging_limits(limits)?;
    Ok(LimitSettings {
        max_token_bytes,
        transport,
        shutdown_grace,
        verified_token_cache,
        max_kidless_candidates,
        refused_token_cache,
    })
}

/// `[limits] key`, or its default, within `min..=max`: a value that would switch a protection off
/// (zero, or beyond any sane bound) stops start-up naming the key (checklist row 35).
fn within<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: Option<T>,
    default: T,
    (min, max): (T, T),
) -> Result<T, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(bad(
            format!("limits.{key}"),
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(v)
}

/// The bounds of judging tokens: the two caches (0 entries disables one; no unbounded value is
/// accepted) and how many keys a kid-less token may cost (checklist rows 23, 29, 35).
fn token_judging_limits(
    limits: &LimitsSection,
) -> Result<(CacheLimits, usize, RefusedLimits), ConfigError> {
    let cache = CacheLimits::default();
    let verified = CacheLimits {
        max_entries: within(
            "verified_token_cache_entries",
            limits.verified_token_cache_entries,
            cache.max_entries,
            (0, 1_000_000),
        )?,
        max_bytes: within(
            "verified_token_cache_bytes",
            limits.verified_token_cache_bytes,
            cache.max_bytes,
            (0, 1 << 30),
        )?,
    };
    let candidates = within(
        "max_kidless_candidates",
        limits.max_kidless_candidates,
        DEFAULT_KIDLESS_CANDIDATES,
        (1, MAX_KEYS_PER_SOURCE),
    )?;
    let refused_default = RefusedLimits::default();
    let refused = RefusedLimits {
        max_entries: within(
            "refused_token_cache_entries",
            limits.refused_token_cache_entries,
            refused_default.max_entries,
            (0, 1_000_000),
        )?,
        ttl: Duration::from_secs(within(
            "refused_token_cache_seconds",
            limits.refused_token_cache_seconds,
            refused_default.ttl.as_secs(),
            (1, 3600),
        )?),
    };
    Ok((verified, candidates, refused))
}

/// The longest shutdown grace period accepted.
const MAX_GRACE_SECONDS: u64 = 3600;

/// `DUO_WORKFLOW_SHUTDOWN_GRACE_PERIOD_S`: seconds, whole or decimal, from 0 to an hour.
fn grace_period(field: &str, v: &str) -> Result<Duration, ConfigError> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=MAX_GRACE_SECONDS as f64).contains(&s) => {
            Ok(Duration::from_secs_f64(s))
        }
        _ => Err(bad(
            field,
            format!("{v:?} is not a number of seconds from 0 to {MAX_GRACE_SECONDS}"),
        )),
    }
}

/// The transport's limits from `[limits]`: each has a default, and a value that would disable
/// the protection (zero, or beyond any sane bound) stops start-up naming its key.
fn transport_limits(
    limits: &LimitsSection,
    max_header_list_bytes: u32,
) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let max_concurrent_streams = within(
        "max_concurrent_streams",
        limits.max_concurrent_streams,
        d.max_concurrent_streams,
        (1, 100_000),
    )?;
    let secs = |key: &str, value: Option<u64>, default: Duration, range: (u64, u64)| {
        within(key, value, default.as_secs(), range).map(Duration::from_secs)
    };
    let per_connection = within(
        "unauthenticated_streams_per_connection",
        limits.unauthenticated_streams_per_connection,
        d.open.per_connection,
        (1, (max_concurrent_streams as usize).min(1024)),
    )?;
    let open = OpenLimits {
        per_connection,
        total: within(
            "unauthenticated_streams",
            limits.unauthenticated_streams,
            d.open.total.max(per_connection),
            (per_connection, 65_536),
        )?,
        max_request_bytes: within(
            "unauthenticated_max_message_bytes",
            limits.unauthenticated_max_message_bytes,
            d.open.max_request_bytes,
            (64, 65_536),
        )?,
    };
    Ok(Limits {
        max_header_list_bytes,
        max_concurrent_streams,
        max_message_bytes: d.max_message_bytes,
        connections: ConnectionLimits {
            max_connections: within(
                "max_connections",
                limits.max_connections,
                d.connections.max_connections,
                (1, 1_000_000),
            )?,
            handshake_timeout: secs(
                "handshake_timeout_seconds",
                limits.handshake_timeout_seconds,
                d.connections.handshake_timeout,
                (1, 300),
            )?,
        },
        keepalive_interval: secs(
            "keepalive_interval_seconds",
            limits.keepalive_interval_seconds,
            d.keepalive_interval,
            (1, 3600),
        )?,
        keepalive_timeout: secs(
            "keepalive_timeout_seconds",
            limits.keepalive_timeout_seconds,
            d.keepalive_timeout,
            (1, 600),
        )?,
        max_reset_streams: within(
            "max_reset_streams_per_connection",
            limits.max_reset_streams_per_connection,
            d.max_reset_streams,
            (1, 10_000),
        )?,
        open,
        first_messages: first_message_limits(limits, d.max_message_bytes)?,
        connection_age: connection_age(limits)?,
    })
}

/// The bounds on first messages: a connection holds at least one of the largest, and the
/// service at least one connection's worth.
fn first_message_limits(
    limits: &LimitsSection,
    max_message_bytes: usize,
) -> Result<FirstMessageLimits, ConfigError> {
    let d = FirstMessageLimits::default();
    let one = max_message_bytes + 5;
    let bytes_per_connection = within(
        "first_message_bytes_per_connection",
        limits.first_message_bytes_per_connection,
        d.bytes_per_connection,
        (one, 1 << 30),
    )?;
    Ok(FirstMessageLimits {
        bytes_per_connection,
        bytes_total: within(
            "first_message_bytes",
            limits.first_message_bytes,
            d.bytes_total.max(bytes_per_connection),
            (bytes_per_connection, 1 << 34),
        )?,
        time_to_arrive: Duration::from_secs(within(
            "first_message_seconds",
            limits.first_message_seconds,
            d.time_to_arrive.as_secs(),
            (1, 600),
        )?),
    })
}

/// `max_connection_age_seconds` (0: never; else 1 s to 30 days) and its grace (0 to a day).
fn connection_age(limits: &LimitsSection) -> Result<Option<ConnectionAge>, ConfigError> {
    let grace = within(
        "max_connection_age_grace_seconds",
        limits.max_connection_age_grace_seconds,
        DEFAULT_CONNECTION_AGE_GRACE_SECONDS,
        (0, 86_400),
    )?;
    let age = within(
        "max_connection_age_seconds",
        limits.max_connection_age_seconds,
        0,
        (0, 30 * 86_400),
    )?;
    Ok((age > 0).then(|| ConnectionAge {
        max_age: Duration::from_secs(age),
        grace: Duration::from_secs(grace),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{test_env as env, Settings};

    #[test]
    fn transport_limits_default_to_gitlabs_and_refuse_values_that_disable_a_protection() {
        let s = Settings::from_env(&env(&[])).unwrap();
        let l = s.transport;
        assert_eq!(l.max_header_list_bytes, 24 * 1024);
        assert_eq!(l.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(l.keepalive_interval, Duration::from_secs(20));
        assert_eq!(l.connections.handshake_timeout, Duration::from_secs(10));
        assert_eq!(l.open, OpenLimits::default());
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert!(s.tls.is_none() && !s.http_tls);

        let dir = std::env::temp_dir().join(format!("dws-config-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        for (key, value) in [
            ("max_connections", "0"),
            ("max_connections", "1000001"),
            ("handshake_timeout_seconds", "0"),
            ("keepalive_interval_seconds", "0"),
            ("keepalive_timeout_seconds", "0"),
            ("max_reset_streams_per_connection", "0"),
            ("max_concurrent_streams", "0"),
            ("max_concurrent_streams", "4294967295"),
            ("unauthenticated_streams_per_connection", "0"),
            ("unauthenticated_streams_per_connection", "2000"),
            ("unauthenticated_streams", "0"),
            ("unauthenticated_max_message_bytes", "0"),
            ("unauthenticated_max_message_bytes", "4194304"),
            ("shutdown_grace_seconds", "86400"),
            ("first_message_bytes_per_connection", "4194308"),
            ("first_message_bytes", "1024"),
            ("first_message_seconds", "0"),
            ("max_connection_age_seconds", "2592001"),
            ("max_connection_age_grace_seconds", "86401"),
        ] {
            std::fs::write(&path, format!("[limits]\n{key} = {value}\n")).unwrap();
            let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
            assert_eq!(e.field, format!("limits.{key}"), "{key} = {value}: {e}");
        }
        // The total of calls without a token cannot be below one connection's share.
        std::fs::write(
            &path,
            "[limits]\nunauthenticated_streams_per_connection = 8\nunauthenticated_streams = 4\n",
        )
        .unwrap();
        let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
        assert_eq!(e.field, "limits.unauthenticated_streams");
        std::fs::write(
            &path,
            "[limits]\nmax_connections = 5\nhandshake_timeout_seconds = 2\nunauthenticated_streams_per_connection = 3\nshutdown_grace_seconds = 7\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path), &env(&[])).unwrap();
        assert_eq!(s.transport.connections.max_connections, 5);
        assert_eq!(
            s.transport.connections.handshake_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(s.transport.open.per_connection, 3);
        assert_eq!(s.shutdown_grace, Duration::from_secs(7));
        // DUO_WORKFLOW_SHUTDOWN_GRACE_PERIOD_S wins over the file.
        let s = Settings::load(Some(&path), &env(&[(ENV_SHUTDOWN_GRACE_PERIOD, "2.5")])).unwrap();
        assert_eq!(s.shutdown_grace, Duration::from_millis(2500));
        for bad_value in ["", "-1", "ten", "NaN", "inf", "3601"] {
            let e =
                Settings::from_env(&env(&[(ENV_SHUTDOWN_GRACE_PERIOD, bad_value)])).unwrap_err();
            assert_eq!(e.field, ENV_SHUTDOWN_GRACE_PERIOD, "{bad_value:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn connection_age_and_first_message_bounds_are_read_and_checked_naming_the_key() {
        let s = Settings::from_env(&env(&[])).unwrap();
        assert_eq!(s.transport.connection_age, None, "never, by default");
        assert_eq!(s.transport.first_messages, FirstMessageLimits::default());
        let dir = std::env::temp_dir().join(format!("dws-config-age-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let load = |text: &str| {
            std::fs::write(&path, format!("[limits]\n{text}\n")).unwrap();
            Settings::load(Some(&path), &env(&[]))
        };
        let s = load("max_connection_age_seconds = 600\nfirst_message_seconds = 5").unwrap();
        assert_eq!(
            s.transport.connection_age,
            Some(ConnectionAge {
                max_age: Duration::from_secs(600),
                grace: Duration::from_secs(DEFAULT_CONNECTION_AGE_GRACE_SECONDS),
            })
        );
        assert_eq!(
            s.transport.first_messages.time_to_arrive,
            Duration::from_secs(5)
        );
        let s =
            load("max_connection_age_seconds = 0\nmax_connection_age_grace_seconds = 0").unwrap();
        assert_eq!(s.transport.connection_age, None);
        // Not whole numbers of seconds: the file's reader names the key.
        for text in [
            "max_connection_age_seconds = 1.5",
            "max_connection_age_grace_seconds = -1",
            "max_connection_age_seconds = \"10m\"",
        ] {
            let e = load(text).unwrap_err();
            let key = text.split(' ').next().unwrap();
            assert!(e.problem.contains(key), "{text}: {e}");
        }
        // The service-wide bound holds at least one connection's.
        let e =
            load("first_message_bytes_per_connection = 20000000\nfirst_message_bytes = 10000000")
                .unwrap_err();
        assert_eq!(e.field, "limits.first_message_bytes");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
