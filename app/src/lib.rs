//! The application: configuration ([`config`]), wiring and serving ([`server`]), and the
//! command-line tools ([`cli`]). `main.rs` only parses arguments and dispatches.

pub mod cli;
pub mod config;
pub mod server;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Tokens and keys are never logged.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
