//! Panics are failures that are seen: a panic anywhere in the process (a connection's task, a
//! background refresh, a request's future) is one log line at ERROR, written in the context of
//! the task that panicked (its tracing span: the request id of the call it was serving), and one
//! more in `duo_workflow_panics_total`. tokio catches a task's panic and goes on, so without this
//! a dead task would be silent: its callers just see their streams break.
//!
//! The line's message starts with `panicked at <file:line:col>`, the words every test harness
//! looks for in a process's log. What a panic says may hold caller-controlled text (an
//! `unwrap` on a parse error), so the message is capped and anything shaped like a JWT in it is
//! replaced.

use std::panic::PanicHookInfo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static PANICS: AtomicU64 = AtomicU64::new(0);
/// Those of [`PANICS`] inside a tokio task: the ones the runtime survives, unseen.
static TASK_PANICS: AtomicU64 = AtomicU64::new(0);

/// The longest panic message written to the log, in characters.
const MAX_MESSAGE_CHARS: usize = 512;

/// Panics in this process since it started (the hook counts them once installed).
pub fn count() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Those of [`count`] that happened inside a tokio task (a test's own failing assertion, on its
/// thread outside any task, is not one): what tests that run the service in-process check.
pub fn count_in_tasks() -> u64 {
    TASK_PANICS.load(Ordering::Relaxed)
}

/// Installs the hook once per process; later calls do nothing. Panics before it are reported by
/// Rust's default hook (on stderr), not counted.
pub fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::Relaxed);
            if tokio::task::try_id().is_some() {
                TASK_PANICS.fetch_add(1, Ordering::Relaxed);
            }
            report(info);
            // With no subscriber (a command-line tool, a test without one) the line above goes
            // nowhere: the default hook's stderr text keeps the panic from being silent.
            if !tracing::dispatcher::has_been_set() {
                previous(info);
            }
        }));
    });
}

fn report(info: &PanicHookInfo<'_>) {
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_else(|| "an unknown location".into());
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a payload that is not text)".into());
    let message = shown(&payload);
    let thread = std::thread::current();
    let task = tokio::task::try_id().map(|id| id.to_string());
    tracing::error!(
        thread = thread.name().unwrap_or("unnamed"),
        task = task.as_deref().unwrap_or("none"),
        "panicked at {location}: {message}"
    );
}

/// The panic message as logged: JWT-shaped words replaced, at most [`MAX_MESSAGE_CHARS`].
fn shown(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS));
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if looks_like_a_token(word) {
            out.push_str("<token>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in message.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=') {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    if out.chars().count() > MAX_MESSAGE_CHARS {
        out = out.chars().take(MAX_MESSAGE_CHARS).collect();
        out.push('…');
    }
    out
}

/// Two dots between base64url runs, long enough to carry a signature.
fn looks_like_a_token(word: &str) -> bool {
    word.len() >= 32
        && word.split('.').filter(|s| !s.is_empty()).count() >= 3
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shaped_words_are_replaced_and_long_messages_capped() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLWJ5dGVz";
        assert_eq!(
            shown(&format!("bad token \"{jwt}\": InvalidSignature")),
            "bad token \"<token>\": InvalidSignature"
        );
        assert_eq!(
            shown("index out of bounds: the len is 3"),
            "index out of bounds: the len is 3"
        );
        assert_eq!(shown("a.b.c"), "a.b.c");
        let long = "x ".repeat(1000);
        assert_eq!(shown(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
