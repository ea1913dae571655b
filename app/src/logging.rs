//! Logging. The service writes its lines through a bounded channel to a thread of its own
//! (`tracing-appender`'s non-blocking writer, lossy): a full or unread stderr fills the channel,
//! further lines are dropped and counted ([`dropped_lines`], exported as a metric), and no call
//! ever waits for stderr (checklist 33). Lines are JSON objects (`DUO_WORKFLOW_LOGGING__JSON_FORMAT`)
//! or text; the level is `DUO_WORKFLOW_LOGGING__LEVEL`, or `RUST_LOG` (a full `tracing` filter)
//! when that is set. Tokens and keys are never logged.

use std::sync::OnceLock;

use tracing::Subscriber;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Lines the channel to the writer thread holds before it drops new ones (a few MiB at most).
pub const BUFFERED_LINES: usize = 8192;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because stderr did not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Keeps the writer thread; dropping it writes out what is buffered.
pub struct LogGuard(#[allow(dead_code)] Option<WorkerGuard>);

/// The filter: `RUST_LOG` when set (and valid), else the configured level.
fn filter(level: &str) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(v).unwrap_or_else(|_| EnvFilter::new(level))
        }
        _ => EnvFilter::new(level),
    }
}

/// The service's logging (`serve`). Keep the guard until the process ends.
pub fn init_service(settings: &LogSettings) -> LogGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let ansi = !settings.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let installed = subscriber(settings, writer, ansi).try_init();
    LogGuard(installed.is_ok().then_some(guard))
}

/// The service's log format (JSON lines with the current span, or text) and filter, writing to
/// `writer`: what [`init_service`] installs, for tests that read the lines back.
pub fn subscriber<W>(
    settings: &LogSettings,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(settings.level.directive()))
        .with_writer(writer);
    if settings.json {
        Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        )
    } else {
        Box::new(builder.with_ansi(ansi).finish())
    }
}

/// Logging of the command-line tools: text on stderr, written directly, filtered by `RUST_LOG`
/// (default `info`).
pub fn init_cli() {
    init_cli_at("info")
}

/// [`init_cli`] with another default level (`token explain` says at `warn` only what went
/// wrong while it built the service: its report is on stdout).
pub fn init_cli_at(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
