//! gRPC at the byte level, for the relay's tests: an HTTP/2 client that sends exactly the bytes
//! it is given (and enforces nothing: no deadline, no message limit), and a scripted workflow
//! executor that sees exactly the bytes that arrive and answers with exactly the bytes, headers
//! and trailers a test chooses. Both are plain hyper, so nothing decodes a message on the way.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{mpsc, oneshot};

/// A body whose frames a test sends one by one (or closes by dropping the sender). It says it
/// has ended once the sender is gone and every frame was read, so that an empty one lets hyper
/// end the stream with the headers (a trailers-only gRPC answer).
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_closed() && self.rx.is_empty()
    }
}

pub fn channel_body(
    capacity: usize,
) -> (
    mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    ChannelBody,
) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx })
}

/// A body of these frames, then the end.
pub fn frames_body(frames: Vec<Frame<Bytes>>) -> ChannelBody {
    let (tx, body) = channel_body(frames.len().max(1));
    for f in frames {
        tx.try_send(Ok(f)).unwrap();
    }
    body
}

/// One gRPC message on the wire: uncompressed flag, big-endian length, payload.
pub fn framed(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

/// Trailers ending a gRPC response.
pub fn trailers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    map
}

/// What a raw call brought back.
#[derive(Debug)]
pub struct RawResponse {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    /// Every data byte, in order.
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// The stream ended with the response headers (a trailers-only answer).
    pub ended_with_headers: bool,
    /// How many data frames came, empty ones included.
    pub data_frames: usize,
}

impl RawResponse {
    /// `grpc-status`, from the trailers or (trailers-only) the headers.
    pub fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap())
    }

    pub fn grpc_message(&self) -> Option<String> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| self.headers.get("grpc-message"))
            .map(|v| percent_decode(v.as_bytes()))
    }
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// An HTTP/2 connection to `addr`, for raw calls.
pub async fn connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ChannelBody> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// A gRPC request to `path` with `headers` (plus the gRPC ones) and `body`.
pub fn request(path: &str, headers: &[(&str, &str)], body: ChannelBody) -> Request<ChannelBody> {
    let mut builder = Request::builder()
        .method("POST")
        .uri(format!("http://service{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(body).unwrap()
}

/// Sends `request` and reads the whole response.
pub async fn call(addr: SocketAddr, request: Request<ChannelBody>) -> RawResponse {
    let mut send = connect(addr).await;
    let response = send.send_request(request).await.unwrap();
    read_response(response).await
}

pub async fn read_response(response: Response<Incoming>) -> RawResponse {
    let (head, mut body) = response.into_parts();
    let ended_with_headers = hyper::body::Body::is_end_stream(&body);
    let mut data = BytesMut::new();
    let mut data_frames = 0;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(d) => {
                data_frames += 1;
                data.extend_from_slice(&d)
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    RawResponse {
        status: head.status,
        headers: head.headers,
        body: data.freeze(),
        trailers,
        ended_with_headers,
        data_frames,
    }
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<ChannelBody>> + Send>>
        + Send
        + Sync,
>;

/// A scripted executor on 127.0.0.1:0 (HTTP/2 only); stops accepting when dropped.
pub struct RawExecutor {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl RawExecutor {
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<ChannelBody>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler)
    }

    /// The executor on `listener` (say, on 127.0.0.3).
    pub fn serve<F, Fut>(listener: tokio::net::TcpListener, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<ChannelBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let tasks = connections.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = &mut stopped => return,
                };
                let handler = handler.clone();
                let task = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let mut builder =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    builder.max_concurrent_streams(10_000);
                    let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            _stop: stop,
            connections,
        }
    }

    /// Dies: stops accepting and drops every connection at once, as a killed process would.
    pub fn kill(self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// A gRPC response: `headers`, then `body`'s frames.
pub fn response(headers: &[(&str, &str)], body: ChannelBody) -> Response<ChannelBody> {
    let mut builder = Response::builder()
        .status(200)
        .header("content-type", "application/grpc");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(body).unwrap()
}

/// Reads a request body whole.
pub async fn read_all(mut body: Incoming) -> Result<Bytes, hyper::Error> {
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame?.into_data() {
            data.extend_from_slice(&d);
        }
    }
    Ok(data.freeze())
}
