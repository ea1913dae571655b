//! gRPC's message framing, read without decoding: every message on the wire is a 1-byte
//! compressed flag, a 4-byte big-endian length, then that many bytes. The relay follows message
//! boundaries through a stream of HTTP/2 data frames to enforce the per-message limit, and the
//! admission layer reads one whole message (the first) where a decision needs it, then hands the
//! body on with what it read put back in front.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::Status;

/// GitLab's limit for one message, each way (SPEC C4): 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

const PREFIX: usize = 5;

/// Why a stream of gRPC messages is not relayed: what a gRPC peer itself refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrelayable {
    /// A message announced as longer than the limit.
    TooLarge { len: usize, limit: usize },
    /// A flag byte other than 0 (plain) or 1 (compressed). Relaying it would let this service
    /// and the executor read the same bytes differently: a message this service decompresses
    /// to judge, the executor takes for something else.
    Flag(u8),
}

impl Unrelayable {
    /// The status, in gRPC's own words (`RESOURCE_EXHAUSTED`, or `INTERNAL` as grpc-core answers
    /// a bad flag).
    pub fn status(self) -> Status {
        match self {
            Unrelayable::TooLarge { len, limit } => too_large(len, limit),
            Unrelayable::Flag(flag) => Status::internal(format!(
                "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1)"
            )),
        }
    }
}

/// Where a byte stream is within gRPC's length-prefixed messages. Scanning never copies payload.
#[derive(Debug, Default, Clone)]
pub struct MessageBoundaries {
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Payload bytes of the current message still to come.
    remaining: usize,
}

impl MessageBoundaries {
    /// Advances over `chunk`. Fails as soon as a message's prefix is seen when its flag is not
    /// gRPC's or its announced length is over `limit` (the payload is never waited for).
    pub fn advance(&mut self, mut chunk: &[u8], limit: usize) -> Result<(), Unrelayable> {
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
                self.remaining = check_prefix(&self.prefix, limit)?.1;
            }
        }
        Ok(())
    }
}

/// A message's prefix, checked: whether it is compressed, and its length.
fn check_prefix(prefix: &[u8; PREFIX], limit: usize) -> Result<(bool, usize), Unrelayable> {
    let compressed = match prefix[0] {
        0 => false,
        1 => true,
        flag => return Err(Unrelayable::Flag(flag)),
    };
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > limit {
        return Err(Unrelayable::TooLarge { len, limit });
    }
    Ok((compressed, len))
}

/// The status for a message over the limit, in gRPC's own words.
pub fn too_large(len: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "Received message larger than max ({len} vs. {limit})"
    ))
}

/// A bound on the bytes of first messages held before authorization (one per connection, one
/// for the whole service): each byte read is taken from it and given back once the bytes are
/// passed on. Beyond it a call is refused, so callers who send large first messages slowly, or
/// never finish them, cannot grow the service's memory without bound.
#[derive(Clone)]
pub struct HeldBytes {
    free: Arc<Semaphore>,
    bound: usize,
}

impl HeldBytes {
    pub fn new(bound: usize) -> Self {
        let bound = bound.min(Semaphore::MAX_PERMITS);
        Self {
            free: Arc::new(Semaphore::new(bound)),
            bound,
        }
    }

    fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        self.free.clone().try_acquire_many_owned(bytes).ok()
    }

    /// Bytes that may still be taken.
    pub fn available(&self) -> usize {
        self.free.available_permits()
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.bound - self.available()
    }
}

/// How first messages are read: their limit, the service's bound on the bytes they hold, and
/// how long a first message, once begun, may take to arrive whole.
#[derive(Clone)]
pub struct FirstMessageReader {
    pub max_message_bytes: usize,
    pub service: HeldBytes,
    pub time_to_arrive: Duration,
}

/// What `RESOURCE_EXHAUSTED` says when a first message would exceed a bound on held bytes.
pub const FIRST_MESSAGES_HELD: &str = "Too many bytes of first messages waiting to be read";

/// The first message of a request, and the body to pass on (it replays what was read).
pub struct FirstMessage {
    /// The message's payload, decompressed; `None` when the client half-closed before sending a
    /// whole message.
    pub payload: Option<Bytes>,
    pub body: Body,
}

/// Why a first message could not be read.
#[derive(Debug)]
pub enum FirstMessageError {
    /// Refused by gRPC's own rules (size, flag, encoding) or the body failed.
    Unreadable(Status),
    /// Over a bound on bytes held (`RESOURCE_EXHAUSTED`).
    Held,
    /// Begun and not finished in time (`DEADLINE_EXCEEDED`).
    Stalled(Duration),
}

impl FirstMessageError {
    pub fn status(&self) -> Status {
        match self {
            FirstMessageError::Unreadable(status) => status.clone(),
            FirstMessageError::Held => Status::resource_exhausted(FIRST_MESSAGES_HELD),
            FirstMessageError::Stalled(time) => Status::deadline_exceeded(format!(
                "The first message did not arrive whole within {} s",
                time.as_secs()
            )),
        }
    }
}

impl From<Status> for FirstMessageError {
    fn from(status: Status) -> Self {
        FirstMessageError::Unreadable(status)
    }
}

impl From<Unrelayable> for FirstMessageError {
    fn from(e: Unrelayable) -> Self {
        FirstMessageError::Unreadable(e.status())
    }
}

impl FirstMessageReader {
    /// Reads the body until its first message is complete (or the body ends). `headers` give
    /// the message encoding (`grpc-encoding`); `connection` is the caller's connection's bound.
    /// What was read is held once: the payload is a slice of the bytes replayed.
    pub async fn read(
        &self,
        mut body: Body,
        headers: &HeaderMap,
        connection: Option<&HeldBytes>,
    ) -> Result<FirstMessage, FirstMessageError> {
        let limit = self.max_message_bytes;
        let mut buffered = BytesMut::new();
        let mut held = Vec::new();
        let mut trailers = None;
        let mut ended = false;
        let mut message = None;
        let mut arrive_by = None;
        while message.is_none() {
            let next = body.frame();
            let frame = match arrive_by {
                None => next.await,
                Some(at) => tokio::time::timeout_at(at, next)
                    .await
                    .map_err(|_| FirstMessageError::Stalled(self.time_to_arrive))?,
            };
            let Some(frame) = frame else {
                ended = true;
                break;
            };
            let frame = match frame?.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                    break;
                }
            };
            if frame.is_empty() {
                continue;
            }
            // One permit per bound, grown frame by frame (merged, so tiny frames cost nothing).
            for (i, bound) in std::iter::once(&self.service).chain(connection).enumerate() {
                let taken = bound.take(frame.len()).ok_or(FirstMessageError::Held)?;
                match held.get_mut(i) {
                    Some(permit) => OwnedSemaphorePermit::merge(permit, taken),
                    None => held.push(taken),
                }
            }
            arrive_by.get_or_insert_with(|| tokio::time::Instant::now() + self.time_to_arrive);
            buffered.extend_from_slice(&frame);
            if buffered.len() >= PREFIX {
                let prefix: [u8; PREFIX] = buffered[..PREFIX].try_into().expect("five bytes");
                let (compressed, len) = check_prefix(&prefix, limit)?;
                // Room for the whole message at once: growing by doubling would leave up to
                // twice its size allocated.
                buffered.reserve((PREFIX + len).saturating_sub(buffered.len()));
                if buffered.len() >= PREFIX + len {
                    message = Some((compressed, len));
                }
            }
        }
        let read = buffered.freeze();
        let payload = match message {
            None => None,
            Some((false, len)) => Some(read.slice(PREFIX..PREFIX + len)),
            Some((true, len)) => Some(decompress(
                read.slice(PREFIX..PREFIX + len),
                headers,
                limit,
            )?),
        };
        Ok(FirstMessage {
            payload,
            body: Body::new(Replay {
                read: (!read.is_empty()).then_some(read),
                held,
                trailers,
                rest: (!ended).then_some(body),
            }),
        })
    }
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

/// What was read (one data frame, its bound on held bytes given back once it is passed on), the
/// trailers if they came, then the rest of the body.
struct Replay {
    read: Option<Bytes>,
    held: Vec<OwnedSemaphorePermit>,
    trailers: Option<HeaderMap>,
    rest: Option<Body>,
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(read) = self.read.take() {
            self.held.clear();
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match &mut self.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    /// What was read plus what the rest says of itself. The rest's hint is the caller's (a
    /// `content-length` it sent): sums saturate and the upper bound is set before the lower, so
    /// no hint a caller can make asserts in `http-body` — this runs on the task that owns the
    /// executor connection, shared by every relayed call.
    fn size_hint(&self) -> SizeHint {
        let read = self.read.as_ref().map_or(0, |r| r.len() as u64);
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
    use std::collections::VecDeque;

    use super::super::scripted::{any_hint, Scripted};
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

    /// Reads the first message with bounds too large to matter.
    async fn read_first_message(
        body: Body,
        headers: &HeaderMap,
        limit: usize,
    ) -> Result<FirstMessage, Status> {
        reader(limit, usize::MAX)
            .read(body, headers, None)
            .await
            .map_err(|e| e.status())
    }

    fn reader(limit: usize, held: usize) -> FirstMessageReader {
        FirstMessageReader {
            max_message_bytes: limit,
            service: HeldBytes::new(held),
            time_to_arrive: Duration::from_secs(3600),
        }
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
        assert_eq!(
            b.advance(&wire, 299),
            Err(Unrelayable::TooLarge {
                len: 300,
                limit: 299
            })
        );
    }

    #[test]
    fn an_oversized_prefix_fails_before_its_payload() {
        let mut b = MessageBoundaries::default();
        assert_eq!(
            b.advance(&[0, 0, 0x40, 0, 1], MAX_MESSAGE_BYTES),
            Err(Unrelayable::TooLarge {
                len: MAX_MESSAGE_BYTES + 1,
                limit: MAX_MESSAGE_BYTES
            })
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

    #[tokio::test]
    async fn flags_other_than_plain_and_compressed_are_refused_wherever_read() {
        for flag in 2..=255u8 {
            let mut wire = framed(false, b"hello");
            wire[0] = flag;
            let mut b = MessageBoundaries::default();
            assert_eq!(b.advance(&wire, 100), Err(Unrelayable::Flag(flag)));
            let mut headers = HeaderMap::new();
            headers.insert("grpc-encoding", "gzip".parse().unwrap());
            let e = read_first_message(body_of(vec![wire]), &headers, 100)
                .await
                .err()
                .unwrap();
            assert_eq!(e.code(), tonic::Code::Internal, "flag {flag}");
            assert!(e.message().contains("invalid compression flag"), "{e:?}");
        }
        // A later message too: the relay follows every boundary.
        let mut wire = framed(false, b"first");
        wire.extend(framed(false, b"second"));
        let at = wire.len() - 11;
        wire[at] = 0x80;
        let mut b = MessageBoundaries::default();
        assert_eq!(b.advance(&wire, 100), Err(Unrelayable::Flag(0x80)));
    }

    #[tokio::test]
    async fn first_messages_hold_their_bytes_once_within_both_bounds_until_passed_on() {
        let wire = framed(false, &[1u8; 1000]);
        let chunks: Vec<Vec<u8>> = wire.chunks(100).map(<[u8]>::to_vec).collect();
        let reader = reader(4096, 1500);
        let connection = HeldBytes::new(1200);
        let first = reader
            .read(
                body_of(chunks.clone()),
                &HeaderMap::new(),
                Some(&connection),
            )
            .await
            .unwrap();
        assert_eq!(first.payload.as_deref(), Some(&[1u8; 1000][..]));
        // Held once: the message and its prefix, nothing more.
        assert_eq!(reader.service.available(), 1500 - wire.len());
        assert_eq!(connection.available(), 1200 - wire.len());
        // A second first message does not fit the connection's bound...
        let e = reader
            .read(
                body_of(chunks.clone()),
                &HeaderMap::new(),
                Some(&connection),
            )
            .await
            .err()
            .unwrap();
        assert_eq!(e.status().code(), tonic::Code::ResourceExhausted);
        assert_eq!(e.status().message(), FIRST_MESSAGES_HELD);
        // ...nor, on another connection, the service's.
        let other = HeldBytes::new(1200);
        assert!(matches!(
            reader
                .read(body_of(chunks.clone()), &HeaderMap::new(), Some(&other))
                .await,
            Err(FirstMessageError::Held)
        ));
        assert_eq!(
            other.available(),
            1200,
            "a refused read gives back what it took"
        );
        // Passed on, the bytes are given back.
        let mut body = first.body;
        let replayed = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(replayed, wire);
        assert_eq!(reader.service.available(), 1500);
        assert_eq!(connection.available(), 1200);
        // A body dropped before it is passed on gives them back too.
        let first = reader
            .read(body_of(chunks), &HeaderMap::new(), Some(&connection))
            .await
            .unwrap();
        drop(first);
        assert_eq!(
            (reader.service.available(), connection.available()),
            (1500, 1200)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_message_begun_must_arrive_whole_in_time() {
        let mut reader = reader(100, 1000);
        reader.time_to_arrive = Duration::from_secs(30);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        tx.send(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 10, 1]))))
            .await
            .unwrap();
        let e = reader
            .read(body, &HeaderMap::new(), None)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, FirstMessageError::Stalled(_)), "{e:?}");
        assert_eq!(e.status().code(), tonic::Code::DeadlineExceeded);
        assert_eq!(reader.service.available(), 1000);
        drop(tx);
        // A stream that has sent nothing yet holds nothing, and waits as long as it likes.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let read = tokio::spawn(async move {
            reader
                .read(body, &HeaderMap::new(), None)
                .await
                .map(|f| f.payload)
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        tx.send(Ok(Frame::data(framed(false, b"late").into())))
            .await
            .unwrap();
        assert_eq!(read.await.unwrap().unwrap().as_deref(), Some(&b"late"[..]));
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
            let body = Body::new(Scripted::of(frames, h));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let first = runtime.block_on(read_first_message(body, &HeaderMap::new(), 100)).unwrap();
            let whole = wire.len() >= PREFIX + messages[0].len();
            proptest::prop_assert_eq!(first.payload.as_deref(), whole.then_some(&messages[0][..]));
            let mut body = first.body;
            let mut replayed = Vec::new();
            let mut seen_trailers = None;
            loop {
                let sh = body.size_hint();
                proptest::prop_assert!(sh.upper().is_none_or(|u| sh.lower() <= u));
                let Some(frame) = runtime.block_on(body.frame()) else { break };
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
