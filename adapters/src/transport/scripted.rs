//! For the body wrappers' property tests: a body of scripted frames that says whatever size
//! hint a caller's `content-length` made it say, and every kind of hint.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;

pub struct Scripted {
    pub frames: VecDeque<Result<Frame<Bytes>, Status>>,
    pub hint: SizeHint,
}

impl Scripted {
    /// Frames that all arrive (no error).
    pub fn of(frames: impl IntoIterator<Item = Frame<Bytes>>, hint: SizeHint) -> Self {
        Self {
            frames: frames.into_iter().map(Ok).collect(),
            hint,
        }
    }
}

impl HttpBody for Scripted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.frames.pop_front())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// A hint with `lower`, and an upper bound `extra` above it (none: unbounded).
pub fn hint(lower: u64, extra: Option<u64>) -> SizeHint {
    let mut h = SizeHint::new();
    if let Some(extra) = extra {
        h.set_upper(lower.saturating_add(extra));
    }
    h.set_lower(lower);
    h
}

/// Any hint a body may give, the extremes included.
pub fn any_hint() -> impl proptest::strategy::Strategy<Value = SizeHint> {
    use proptest::prelude::*;
    (
        prop_oneof![0..64u64, Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()],
        proptest::option::of(prop_oneof![Just(0u64), 0..64u64, any::<u64>()]),
    )
        .prop_map(|(lower, extra)| hint(lower, extra))
}
