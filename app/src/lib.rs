//! The application: configuration ([`config`]), logging ([`logging`]) and panics ([`panics`]),
//! readiness ([`readiness`]), reading files again ([`reload`]), wiring and serving ([`server`]),
//! and the command-line tools ([`cli`], [`explain`]).
//! `main.rs` only parses arguments and dispatches.

pub mod cli;
pub mod config;
pub mod explain;
pub mod logging;
pub mod panics;
pub mod readiness;
pub mod reload;
pub mod server;

/// Text logs on stderr, filtered by `RUST_LOG` (default `info`), for the command-line tools and
/// tests; `serve` uses [`logging::init_service`]. Tokens and keys are never logged.
pub fn init_logging() {
    logging::init_cli();
}
