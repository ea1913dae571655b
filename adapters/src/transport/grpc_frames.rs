//! gRPC's message framing, read without decoding: every message on the wire is a 1-byte
//! compressed flag, a 4-byte big-endian length, then that many bytes. The relay follows message
//! boundaries through a stream of HTTP/2 data frames to enforce the per-message limit, and the
//! admission layer reads one whole message (the first) where a decision needs it, then hands the
//! body on with what it read put back in front.

use std::collections::VecDeque;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::Status;

/// GitLab's limit for one message, each way (SPEC C4): 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

const PREFIX: usize = 5;

/// Where a byte stream is within gRPC's length-prefixed messages. Scanning never copies payload.
#[derive(Debug, Default, Clone)]
pub struct MessageBoundaries {
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Payload bytes of the current message still to come.
    remaining: usize,
}

impl MessageBoundaries {
    /// Advances over `chunk`. Fails with the announced length when a message is longer than
    /// `limit`, as soon as its prefix is seen (the payload is never waited for).
    pub fn advance(&mut self, mut chunk: &[u8], limit: usize) -> Result<(), usize> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(chunk.len());
                self.remaining -= n;
                chunk = &chunk[n..];
                continue;
            }
            let n = (PREFIX - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&chunk[..n]);
            self.prefix_len += n;
            chunk = &chunk[n..];
            if self.prefix_len == PREFIX {
                self.prefix_len = 0;
                let len = announced_length(&self.prefix);
                if len > limit {
                    return Err(len);
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

fn announced_length(prefix: &[u8; PREFIX]) -> usize {
    u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize
}

/// The status for a message over the limit, in gRPC's own words.
pub fn too_large(len: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "Received message larger than max ({len} vs. {limit})"
    ))
}

/// The first message of a request, and the body to pass on (it replays what was read).
pub struct FirstMessage {
    /// The message's payload, decompressed; `None` when the client half-closed before sending a
    /// whole message.
    pub payload: Option<Bytes>,
    pub body: Body,
}

/// Reads the body until its first message is complete (or the body ends), at most `limit`
/// bytes of payload. `headers` give the message encoding (`grpc-encoding`).
pub async fn read_first_message(
    mut body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<FirstMessage, Status> {
    let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut buffered = BytesMut::new();
    let mut ended = false;
    let mut message = None;
    while message.is_none() {
        let Some(frame) = body.frame().await else {
            ended = true;
            break;
        };
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            buffered.extend_from_slice(data);
            if buffered.len() >= PREFIX {
                let prefix: [u8; PREFIX] = buffered[..PREFIX].try_into().expect("five bytes");
                let len = announced_length(&prefix);
                if len > limit {
                    return Err(too_large(len, limit));
                }
                if buffered.len() >= PREFIX + len {
                    let compressed = prefix[0] != 0;
                    let payload = buffered.split().freeze().slice(PREFIX..PREFIX + len);
                    message = Some((compressed, payload));
                }
            }
        }
        let is_trailers = frame.is_trailers();
        read.push_back(frame);
        if is_trailers {
            ended = true;
            break;
        }
    }
    let payload = match message {
        None => None,
        Some((false, payload)) => Some(payload),
        Some((true, payload)) => Some(decompress(payload, headers, limit)?),
    };
    Ok(FirstMessage {
        payload,
        body: Body::new(Replay {
            read,
            rest: (!ended).then_some(body),
        }),
    })
}

/// A compressed message, with the encoding the request announced (gRPC's `gzip` and
/// `deflate`, i.e. zlib), bounded to `limit` bytes once decompressed.
fn decompress(payload: Bytes, headers: &HeaderMap, limit: usize) -> Result<Bytes, Status> {
    let encoding = headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let mut out = Vec::new();
    let reader: Box<dyn Read> = match encoding {
        "gzip" => Box::new(flate2::read::GzDecoder::new(payload.reader())),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(payload.reader())),
        "identity" => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ))
        }
        other => {
            return Err(Status::unimplemented(format!(
                "Content is compressed with `{other}` which isn't supported"
            )))
        }
    };
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| Status::internal("could not decompress the message"))?;
    if out.len() > limit {
        return Err(too_large(out.len(), limit));
    }
    Ok(Bytes::from(out))
}

/// The frames read so far, then the rest of the body.
struct Replay {
    read: VecDeque<Frame<Bytes>>,
    rest: Option<Body>,
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match &mut self.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    /// What was read plus what the rest says of itself. The rest's hint is the caller's (a
    /// `content-length` it sent): sums saturate and the upper bound is set before the lower, so
    /// no hint a caller can make asserts in `http-body` — this runs on the task that owns the
    /// executor connection, shared by every relayed call.
    fn size_hint(&self) -> SizeHint {
        let read = self
            .read
            .iter()
            .filter_map(|f| f.data_ref())
            .fold(0u64, |sum, d| sum.saturating_add(d.len() as u64));
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint);
        add_to_hint(&rest, read)
    }
}

/// `hint` moved up by `bytes`, without overflow and with `lower <= upper` kept.
fn add_to_hint(hint: &SizeHint, bytes: u64) -> SizeHint {
    let mut sum = SizeHint::new();
    let upper = hint.upper().map(|u| u.saturating_add(bytes));
    if let Some(upper) = upper {
        sum.set_upper(upper);
    }
    let lower = hint.lower().saturating_add(bytes);
    sum.set_lower(upper.map_or(lower, |u| lower.min(u)));
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(compressed: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![compressed as u8];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Status>(Frame::data(Bytes::from(c))));
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames.collect::<Vec<_>>(),
        )))
    }

    async fn collect(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[test]
    fn boundaries_are_followed_across_any_split() {
        let mut wire = framed(false, b"hello");
        wire.extend(framed(false, &[7u8; 300]));
        wire.extend(framed(true, b""));
        for split in 1..wire.len() {
            let mut b = MessageBoundaries::default();
            for chunk in wire.chunks(split) {
                b.advance(chunk, 300).unwrap();
            }
            assert_eq!((b.prefix_len, b.remaining), (0, 0), "split {split}");
        }
        let mut b = MessageBoundaries::default();
        assert_eq!(b.advance(&wire, 299), Err(300));
    }

    #[test]
    fn an_oversized_prefix_fails_before_its_payload() {
        let mut b = MessageBoundaries::default();
        assert_eq!(
            b.advance(&[0, 0, 0x40, 0, 1], MAX_MESSAGE_BYTES),
            Err(MAX_MESSAGE_BYTES + 1)
        );
        let mut b = MessageBoundaries::default();
        assert!(b.advance(&[0, 0, 0x40, 0, 0], MAX_MESSAGE_BYTES).is_ok());
    }

    #[tokio::test]
    async fn the_first_message_is_read_and_every_byte_replayed() {
        let mut wire = framed(false, b"first");
        wire.extend(framed(false, b"second"));
        let chunks: Vec<Vec<u8>> = wire.chunks(3).map(<[u8]>::to_vec).collect();
        let first = read_first_message(body_of(chunks), &HeaderMap::new(), 100)
            .await
            .unwrap();
        assert_eq!(first.payload.as_deref(), Some(&b"first"[..]));
        assert_eq!(collect(first.body).await, wire);
    }

    #[tokio::test]
    async fn a_half_closed_stream_has_no_first_message() {
        let first = read_first_message(body_of(vec![]), &HeaderMap::new(), 100)
            .await
            .unwrap();
        assert!(first.payload.is_none());
        assert!(collect(first.body).await.is_empty());
        let partial = framed(false, b"cut")[..6].to_vec();
        let first = read_first_message(body_of(vec![partial.clone()]), &HeaderMap::new(), 100)
            .await
            .unwrap();
        assert!(first.payload.is_none());
        assert_eq!(collect(first.body).await, partial);
    }

    #[tokio::test]
    async fn an_oversized_first_message_is_refused_from_its_prefix() {
        let prefix = vec![0, 0, 0, 1, 0]; // 256 bytes announced, none sent
        let e = read_first_message(body_of(vec![prefix]), &HeaderMap::new(), 255)
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "Received message larger than max (256 vs. 255)"
        );
    }

    #[tokio::test]
    async fn compressed_first_messages_are_read_with_their_encoding_and_bounded() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&[b'a'; 1000]).unwrap();
        let wire = framed(true, &gz.finish().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert("grpc-encoding", "gzip".parse().unwrap());
        let first = read_first_message(body_of(vec![wire.clone()]), &headers, 1000)
            .await
            .unwrap();
        assert_eq!(first.payload.unwrap().len(), 1000);
        assert_eq!(
            collect(first.body).await,
            wire,
            "the compressed bytes go on as they came"
        );
        // A small message that inflates beyond the limit is refused.
        let e = read_first_message(body_of(vec![wire.clone()]), &headers, 999)
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        headers.insert("grpc-encoding", "br".parse().unwrap());
        let e = read_first_message(body_of(vec![wire.clone()]), &headers, 1000)
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        let e = read_first_message(body_of(vec![wire]), &HeaderMap::new(), 1000)
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::Internal);
    }

    /// A body of scripted frames that says whatever a caller's `content-length` made it say.
    struct Scripted {
        frames: VecDeque<Frame<Bytes>>,
        hint: SizeHint,
    }

    impl HttpBody for Scripted {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.frames.pop_front().map(Ok))
        }
        fn size_hint(&self) -> SizeHint {
            self.hint
        }
    }

    fn hint(lower: u64, extra: Option<u64>) -> SizeHint {
        let mut h = SizeHint::new();
        if let Some(extra) = extra {
            h.set_upper(lower.saturating_add(extra));
        }
        h.set_lower(lower);
        h
    }

    fn any_hint() -> impl proptest::strategy::Strategy<Value = SizeHint> {
        use proptest::prelude::*;
        (
            prop_oneof![0..64u64, Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()],
            proptest::option::of(prop_oneof![Just(0u64), 0..64u64, any::<u64>()]),
        )
            .prop_map(|(lower, extra)| hint(lower, extra))
    }

    proptest::proptest! {
        /// Any hint a body can give, moved by any count: never a panic, never lower > upper.
        #[test]
        fn hints_add_without_panicking(h in any_hint(), bytes: u64) {
            let sum = add_to_hint(&h, bytes);
            proptest::prop_assert!(sum.upper().is_none_or(|u| sum.lower() <= u));
            proptest::prop_assert_eq!(sum.lower(), h.lower().saturating_add(bytes).min(sum.upper().unwrap_or(u64::MAX)));
            proptest::prop_assert_eq!(sum.upper(), h.upper().map(|u| u.saturating_add(bytes)));
        }

        /// Messages split into any frames, cut short anywhere or ended by trailers, under any
        /// size hint: the first message is read when it is whole, every byte and the trailers are
        /// replayed in order, and the replaying body's hint is sound at every step.
        #[test]
        fn the_first_message_is_read_and_replayed_under_any_split_and_hint(
            messages in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 1..4),
            cuts in proptest::collection::vec(1..30usize, 0..12),
            keep in proptest::prelude::any::<proptest::sample::Index>(),
            cut_short: bool,
            with_trailers: bool,
            h in any_hint(),
        ) {
            let mut wire = Vec::new();
            for m in &messages {
                wire.extend(framed(false, m));
            }
            if cut_short {
                wire.truncate(keep.index(wire.len() + 1));
            }
            let mut frames = VecDeque::new();
            let mut rest = &wire[..];
            for cut in cuts.iter().chain(std::iter::repeat(&7)) {
                if rest.is_empty() {
                    break;
                }
                let n = (*cut).min(rest.len());
                frames.push_back(Frame::data(Bytes::copy_from_slice(&rest[..n])));
                rest = &rest[n..];
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("x-end", "yes".parse().unwrap());
            if with_trailers {
                frames.push_back(Frame::trailers(trailers.clone()));
            }
            let body = Body::new(Scripted { frames, hint: h });
            let first = futures::executor::block_on(read_first_message(body, &HeaderMap::new(), 100)).unwrap();
            let whole = wire.len() >= PREFIX + messages[0].len();
            proptest::prop_assert_eq!(first.payload.as_deref(), whole.then_some(&messages[0][..]));
            let mut body = first.body;
            let mut replayed = Vec::new();
            let mut seen_trailers = None;
            loop {
                let sh = body.size_hint();
                proptest::prop_assert!(sh.upper().is_none_or(|u| sh.lower() <= u));
                let Some(frame) = futures::executor::block_on(body.frame()) else { break };
                match frame.unwrap().into_data() {
                    Ok(d) => replayed.extend_from_slice(&d),
                    Err(f) => seen_trailers = f.into_trailers().ok(),
                }
            }
            proptest::prop_assert_eq!(replayed, wire);
            proptest::prop_assert_eq!(seen_trailers, with_trailers.then_some(trailers));
        }
    }
}
