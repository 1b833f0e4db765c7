//! A lean HTTP/1.1 connection: reads requests with `httparse`, hands them to the axum
//! router, writes the answers.
//!
//! Why not hyper's HTTP/1 server: what a Bayeux server holds most of is parked
//! `/meta/connect`s, and hyper keeps a read buffer and a write buffer of at least 8 KiB
//! each for the whole life of every connection. Here a connection owns no buffer between
//! requests: a request is read into one allocation that becomes its body (which the
//! endpoint frees before it holds a connect), a response is written from the handler's
//! body and a small head, both freed once sent, and a parked request costs its future and
//! the socket only. Routing, layers and handlers stay axum's; heads are parsed by hyper's
//! own parser crate, bodies are framed here as strictly as hyper frames them.
//!
//! Framing is pure ([`take_head`], [`BodyReader`]) so that the fuzz target can drive the
//! same code over any split of the same bytes ([`frame`]).

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use socket2::SockRef;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::transport::{Takeover, TakeoverFn};

/// The limits every connection is served within (shared: each connection holds an `Arc`,
/// not a copy, so a parked connection stays small).
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Time a client gets to send a whole request head, idle keep-alive time included.
    pub header_timeout: Duration,
    /// Time a client gets to send a request body once its head is in.
    pub body_timeout: Duration,
    /// Time a client gets to take one answer (or interim/refusal) off our hands: a client
    /// that stops reading must not pin its connection permit and buffered answer.
    pub write_timeout: Duration,
    /// Largest request body; a larger one is answered 413 without being read.
    pub max_body: usize,
    /// The Bayeux path: requests to it may be held, so they are not dispatched for a peer
    /// that already left (see [`peer_gone`]).
    pub held_path: Arc<str>,
    /// Streams an HTTP/2 connection may have open at once (hyper's default is 200).
    pub max_streams: u32,
}

/// Largest request head (request line and headers): hyper's smallest buffer, which the
/// server used before; Bayeux heads are a few hundred bytes. Also the cap on a chunked
/// body's trailer section.
const MAX_HEAD: usize = 8 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// Most chunk-extension bytes in one chunked body (hyper allows 16 KiB; no Bayeux client
/// sends any).
const MAX_CHUNK_EXT: usize = 4 * 1024;
/// Room reserved for each read: a whole Bayeux request usually fits.
const READ_CHUNK: usize = 2 * 1024;
/// What an HTTP/2 client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/1.x requests whose handler is parked (held connects, mostly), server-wide: shown
/// in `/api/stats` so that operators, and tests, see holds rather than guess them.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many HTTP/1.x requests are parked in their handler right now.
#[doc(hidden)]
pub fn held_requests() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Counts one parked request in [`HELD`] until dropped.
struct Parked(bool);

impl Parked {
    fn count(&mut self) {
        if !self.0 {
            self.0 = true;
            HELD.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if self.0 {
            HELD.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Why a request could not be read.
#[derive(Debug)]
enum Failure {
    /// The peer closed mid-request, or the socket failed: nothing to answer.
    Gone,
    /// The request is refused with this status and explanation; the connection closes.
    Refused(StatusCode, &'static str),
}

impl From<io::Error> for Failure {
    fn from(_: io::Error) -> Failure {
        Failure::Gone
    }
}

fn bad(why: &'static str) -> Failure {
    Failure::Refused(StatusCode::BAD_REQUEST, why)
}

/// A parsed request head.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// How a request's body is delimited.
enum Framing {
    Empty,
    Length(usize),
    Chunked,
}

/// What a new connection speaks, told from its first bytes.
pub(crate) enum Opening {
    /// HTTP/1.x; the bytes already read start the first request.
    Http1(BytesMut),
    /// The HTTP/2 preface (all of it, possibly followed by frames): the bytes read, which
    /// the HTTP/2 server must see first.
    H2(Bytes),
    /// The peer closed (or failed) before saying which.
    Closed,
}

/// Reads until the first bytes tell HTTP/2 prior knowledge from HTTP/1.x. Each read waits
/// for the socket to be readable, so a client that stops mid-preface costs nothing until
/// the caller's timeout; what was read is handed on, not read twice.
pub(crate) async fn opening(stream: &TcpStream) -> Opening {
    let mut buf = BytesMut::new();
    loop {
        match read_some(stream, &mut buf).await {
            Ok(0) | Err(_) => return Opening::Closed,
            Ok(_) => {}
        }
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            return Opening::Http1(buf);
        }
        if seen == H2_PREFACE.len() {
            return Opening::H2(buf.freeze());
        }
    }
}

/// Serves HTTP/1.x requests on `stream` (whose first bytes, already read, are in `buf`)
/// until the peer closes, a limit is hit, or `shutdown` turns true (then idle connections
/// close at once and busy ones after their answer).
///
/// Only what a held request needs lives in this future; reading a request and writing an
/// answer happen in boxed futures of their own, allocated only meanwhile.
///
/// Returns the connection when an answer hands it over (a WebSocket's 101): the caller
/// runs the [`Handover`] in a task of its own, so that this future's state does not stay
/// allocated for the socket's whole life.
pub(crate) async fn serve(
    mut stream: TcpStream,
    mut buf: BytesMut,
    app: Router,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) -> Option<Handover> {
    loop {
        let next = Box::pin(next_request(&mut stream, &mut buf, &limits, &shutdown));
        let (request, mut close) = next.await?;
        // A request that may be held, read from a socket its client already closed, would
        // take the place of the client's live request on its new socket: drop it unseen.
        if buf.is_empty() && may_be_held(&request, &limits.held_path) && peer_gone(&stream) {
            tracing::debug!(target: "halley::http", "request from a closed socket dropped");
            return None;
        }
        let is_head = request.method() == Method::HEAD;
        let version = request.version();
        let response = {
            let mut answer = pin!(app.clone().oneshot(request));
            until_answered(&stream, answer.as_mut(), buf.is_empty()).await
        };
        let Some(response) = response else {
            return None; // the client left; dropping the request released what it held
        };
        close |= shutdown.is_cancelled();
        // Boxed: writing is brief, and its state must not grow every parked connection.
        let written = Box::pin(answer(
            &mut stream,
            response,
            version,
            is_head,
            close,
            &limits,
        ));
        match written.await {
            Written::Sent if !close => {}
            Written::TakenOver(takeover) => {
                return Some(Handover {
                    takeover,
                    stream,
                    read: buf.freeze(),
                    shutdown,
                });
            }
            Written::Sent | Written::Failed => {
                let _ = tokio::time::timeout(limits.write_timeout, stream.shutdown()).await;
                return None;
            }
        }
    }
}

/// A connection an answer took over from HTTP, with what its new owner needs.
pub(crate) struct Handover {
    takeover: TakeoverFn,
    stream: TcpStream,
    /// Bytes already read past the request.
    read: Bytes,
    shutdown: CancellationToken,
}

impl Handover {
    /// Serves the connection as the takeover says, until it ends.
    pub(crate) async fn run(self) {
        (self.takeover)(self.stream, self.read, self.shutdown).await
    }
}

/// What became of an answer.
enum Written {
    /// All of it went out.
    Sent,
    /// It could not be written in time, or the socket failed.
    Failed,
    /// It went out and handed the connection over (a WebSocket's 101, an EventSource
    /// stream's 200): HTTP ends here.
    TakenOver(TakeoverFn),
}

/// Encodes and writes one answer within the write timeout.
async fn answer<B: HttpBody>(
    stream: &mut TcpStream,
    response: Response<B>,
    version: Version,
    is_head: bool,
    close: bool,
    limits: &Limits,
) -> Written {
    let takeover = response
        .extensions()
        .get::<Takeover>()
        .and_then(Takeover::take);
    // A takeover that is not a 101 writes the body itself (an EventSource stream) until
    // it closes the connection: no length, and said to close.
    let open_ended = takeover.is_some() && response.status() != StatusCode::SWITCHING_PROTOCOLS;
    let close = (close && takeover.is_none()) || open_ended;
    let encoded = encode_response(response, version, is_head, close, open_ended).await;
    let Some((head, body)) = encoded else {
        return Written::Failed;
    };
    if !write_within(stream, &head, &body, limits.write_timeout).await {
        return Written::Failed;
    }
    match takeover {
        Some(takeover) => Written::TakenOver(takeover),
        None => Written::Sent,
    }
}

/// Writes `head` then `body` with vectored writes (the body is never copied behind the
/// head), giving up after `deadline`: whether everything was written.
async fn write_within(
    stream: &mut TcpStream,
    head: &[u8],
    body: &[u8],
    deadline: Duration,
) -> bool {
    let write = async {
        let (mut head, mut body) = (head, body);
        while !head.is_empty() || !body.is_empty() {
            let n = stream
                .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
                .await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = body.get(n - from_head..).unwrap_or_default();
        }
        Ok::<(), io::Error>(())
    };
    match tokio::time::timeout(deadline, write).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!(target: "halley::http", ?deadline, "client stopped reading: write timed out");
            false
        }
    }
}

/// Whether `request` may be a Bayeux request that the broker holds (a connect).
fn may_be_held(request: &Request<Body>, held_path: &str) -> bool {
    let method = request.method();
    let path = request.uri().path();
    (method == Method::POST || method == Method::GET)
        && path
            .strip_prefix(held_path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether the peer has closed its side (EOF) or reset the connection, asked of the
/// kernel directly (tokio's readiness may not have seen the FIN yet). Only meaningful when
/// no unread request bytes are buffered.
fn peer_gone(stream: &TcpStream) -> bool {
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    match SockRef::from(stream).peek(&mut probe) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Reads the next request, and whether the connection closes after it. `None`: the
/// connection ends (the peer closed, a limit was hit and answered, or shutdown).
async fn next_request(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limits: &Limits,
    shutdown: &CancellationToken,
) -> Option<(Request<Body>, bool)> {
    let head = tokio::select! {
        head = tokio::time::timeout(limits.header_timeout, read_head(stream, buf, limits.max_body)) => head,
        () = shutdown.cancelled() => return None,
    };
    let (head, mut body) = match head {
        Ok(Ok(Some(found))) => found,
        // Closed between requests, or too slow to send a head (slow-loris): hyper closes
        // silently in both cases, and so do we.
        Ok(Ok(None)) | Ok(Err(Failure::Gone)) | Err(_) => return None,
        Ok(Err(Failure::Refused(status, why))) => return refuse(stream, status, why, limits).await,
    };
    tracing::debug!(target: "halley::http", method = %head.method, path = head.uri.path(), "request");
    let close = wants_close(head.version, &head.headers);
    if expects_continue(&head.headers)
        && !body.is_empty()
        && !write_within(
            stream,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            &[],
            limits.write_timeout,
        )
        .await
    {
        return None;
    }
    let body = tokio::time::timeout(limits.body_timeout, read_body(stream, buf, &mut body)).await;
    let body = match body {
        Ok(Ok(body)) => body,
        Ok(Err(Failure::Gone)) => return None,
        Ok(Err(Failure::Refused(status, why))) => return refuse(stream, status, why, limits).await,
        Err(_) => {
            let why = "request body timed out";
            return refuse(stream, StatusCode::BAD_REQUEST, why, limits).await;
        }
    };
    if buf.is_empty() {
        // Let go of the read allocation: it now belongs to the body alone, which the
        // endpoint drops before a connect is held.
        *buf = BytesMut::new();
    }
    let mut request = Request::new(Body::from(body));
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;
    Some((request, close))
}

/// Waits for `answer`, watching the socket meanwhile so that a client that leaves while
/// its request is held (a parked connect) is noticed at once: `None` then, and dropping
/// the answer future releases the held connect. `watch` is false when bytes of a
/// pipelined request are already buffered.
async fn until_answered<B>(
    stream: &TcpStream,
    mut answer: Pin<&mut impl Future<Output = Result<Response<B>, Infallible>>>,
    mut watch: bool,
) -> Option<Response<B>> {
    // A hand-written poll rather than `select!` over `peek()`: the socket's readiness
    // waker lives in tokio's registration, so watching costs no future state.
    let mut parked = Parked(false);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        parked.count();
        if watch {
            let mut probe = [0u8; 1];
            let mut probe = ReadBuf::new(&mut probe);
            match stream.poll_peek(cx, &mut probe) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                // The next request is on its way: it waits its turn in the socket.
                Poll::Ready(Ok(_)) => watch = false,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Reads into `buf` until it holds a whole head, which it consumes, and returns it with
/// the reader of its body. `Ok(None)`: the peer closed before sending any byte of one.
async fn read_head(
    stream: &TcpStream,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Option<(Head, BodyReader)>, Failure> {
    loop {
        if let Some(found) = take_head(buf, max_body)? {
            return Ok(Some(found));
        }
        if read_some(stream, buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(Failure::Gone)
            };
        }
    }
}

/// Reads the rest of the body `reader` frames, consuming it from `buf`.
async fn read_body(
    stream: &TcpStream,
    buf: &mut BytesMut,
    reader: &mut BodyReader,
) -> Result<Bytes, Failure> {
    loop {
        if let Some(body) = reader.feed(buf)? {
            return Ok(body);
        }
        if read_some(stream, buf).await? == 0 {
            return Err(Failure::Gone); // a body was promised
        }
    }
}

/// One read into `buf`. The room is reserved only once the socket is readable, so a
/// connection waiting for its next request holds no buffer; it grows with what arrives
/// (`BytesMut` doubles), never from what a `Content-Length` promises.
async fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match stream.try_read_buf(buf) {
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Takes a whole head off the front of `buf` with the reader of its body, or `None` if the
/// head is not all there yet (nothing is consumed then).
fn take_head(buf: &mut BytesMut, max_body: usize) -> Result<Option<(Head, BodyReader)>, Failure> {
    let too_large = || {
        Failure::Refused(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        )
    };
    if buf.is_empty() {
        return Ok(None);
    }
    let Some((head, len)) = parse_head(buf)? else {
        return if buf.len() >= MAX_HEAD {
            Err(too_large())
        } else {
            Ok(None)
        };
    };
    // However the head arrived (one read or byte by byte), the same bound applies.
    if len > MAX_HEAD {
        return Err(too_large());
    }
    let reader = BodyReader::new(framing(head.version, &head.headers, max_body)?, max_body);
    buf.advance(len);
    Ok(Some((head, reader)))
}

/// Parses a head at the start of `buf`: the head and its length, or `None` if it is not
/// all there yet.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Failure> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Failure::Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            ));
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("bad method"))?;
    let uri = request
        .path
        .unwrap_or_default()
        .parse::<Uri>()
        .map_err(|_| bad("bad request target"))?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for field in request.headers.iter() {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| bad("bad header name"))?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| bad("bad header value"))?;
        headers.append(name, value);
    }
    let head = Head {
        method,
        uri,
        version,
        headers,
    };
    Ok(Some((head, len)))
}

/// How the body is delimited (RFC 9112 §6.3): a request with both `Transfer-Encoding`
/// and `Content-Length`, with disagreeing lengths, or with `Transfer-Encoding` in
/// HTTP/1.0 (which has none; hyper refuses it too) is refused (request smuggling).
fn framing(version: Version, headers: &HeaderMap, max_body: usize) -> Result<Framing, Failure> {
    let too_large = Failure::Refused(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    if let Some(coding) = headers.get(header::TRANSFER_ENCODING) {
        if headers.contains_key(header::CONTENT_LENGTH)
            || headers.get_all(header::TRANSFER_ENCODING).iter().count() > 1
        {
            return Err(bad("ambiguous request body framing"));
        }
        if version == Version::HTTP_10 {
            return Err(bad("transfer-encoding in an HTTP/1.0 request"));
        }
        let chunked = coding
            .to_str()
            .is_ok_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        return if chunked {
            Ok(Framing::Chunked)
        } else {
            Err(Failure::Refused(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported transfer-encoding",
            ))
        };
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let n = value
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| bad("bad content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(bad("conflicting content-length"));
        }
        length = Some(n);
    }
    match length.map(usize::try_from) {
        None | Some(Ok(0)) => Ok(Framing::Empty),
        Some(Ok(n)) if n <= max_body => Ok(Framing::Length(n)),
        Some(_) => Err(too_large),
    }
}

/// Reads one request body off the front of the read buffer as it arrives.
struct BodyReader {
    max_body: usize,
    kind: BodyKind,
}

enum BodyKind {
    Empty,
    Length(usize),
    Chunked(Box<Chunked>),
}

/// Where a chunked body's decoding is (RFC 9112 §7.1, with hyper's strictness: CRLF only,
/// no bare LF even inside an extension, extension and trailer bytes capped).
enum ChunkState {
    /// Before the first hex digit of a chunk size.
    SizeStart,
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeLws,
    Extension,
    SizeLf,
    /// `left` bytes of chunk data to go.
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
}

struct Chunked {
    state: ChunkState,
    /// The chunk size being read, then what is left of the chunk's data.
    left: u64,
    ext_bytes: usize,
    trailer_bytes: usize,
    body: BytesMut,
}

impl BodyReader {
    fn new(framing: Framing, max_body: usize) -> BodyReader {
        let kind = match framing {
            Framing::Empty => BodyKind::Empty,
            Framing::Length(n) => BodyKind::Length(n),
            Framing::Chunked => BodyKind::Chunked(Box::new(Chunked {
                state: ChunkState::SizeStart,
                left: 0,
                ext_bytes: 0,
                trailer_bytes: 0,
                body: BytesMut::new(),
            })),
        };
        BodyReader { max_body, kind }
    }

    /// Whether no body byte is expected (no `100 Continue` is worth sending).
    fn is_empty(&self) -> bool {
        matches!(self.kind, BodyKind::Empty)
    }

    /// Consumes what it can of the body from the front of `buf`: the whole body once it is
    /// complete, `None` while more is needed.
    fn feed(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Failure> {
        match &mut self.kind {
            BodyKind::Empty => Ok(Some(Bytes::new())),
            BodyKind::Length(n) => Ok((buf.len() >= *n).then(|| buf.split_to(*n).freeze())),
            BodyKind::Chunked(chunked) => chunked.feed(buf, self.max_body),
        }
    }
}

impl Chunked {
    fn feed(&mut self, buf: &mut BytesMut, max_body: usize) -> Result<Option<Bytes>, Failure> {
        let bad_chunk = || bad("bad chunked body");
        while !buf.is_empty() {
            if let ChunkState::Data = self.state {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.body.extend_from_slice(&buf[..take]);
                buf.advance(take);
                // `take` ≤ `left`, both from the same size.
                self.left -= take as u64;
                if self.left == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            let byte = buf[0];
            buf.advance(1);
            self.state = match (&self.state, byte) {
                (ChunkState::SizeStart | ChunkState::Size, b) if b.is_ascii_hexdigit() => {
                    let digit = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                    self.left = self
                        .left
                        .checked_mul(16)
                        .and_then(|l| l.checked_add(digit))
                        .ok_or_else(|| bad("chunk size overflow"))?;
                    ChunkState::Size
                }
                (ChunkState::Size | ChunkState::SizeLws, b' ' | b'\t') => ChunkState::SizeLws,
                (ChunkState::Size | ChunkState::SizeLws, b';') => ChunkState::Extension,
                (ChunkState::Size | ChunkState::SizeLws | ChunkState::Extension, b'\r') => {
                    ChunkState::SizeLf
                }
                (ChunkState::Extension, b'\n') => return Err(bad("bare LF in a chunk extension")),
                (ChunkState::Extension, _) => {
                    self.ext_bytes += 1;
                    if self.ext_bytes > MAX_CHUNK_EXT {
                        return Err(bad("chunk extensions too large"));
                    }
                    ChunkState::Extension
                }
                (ChunkState::SizeLf, b'\n') if self.left == 0 => ChunkState::TrailerStart,
                (ChunkState::SizeLf, b'\n') => {
                    let fits = usize::try_from(self.left)
                        .ok()
                        .and_then(|size| self.body.len().checked_add(size))
                        .is_some_and(|total| total <= max_body);
                    if !fits {
                        return Err(Failure::Refused(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request body too large",
                        ));
                    }
                    ChunkState::Data
                }
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => ChunkState::SizeStart,
                (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
                (ChunkState::TrailerStart | ChunkState::TrailerName, b) if is_tchar(b) => {
                    self.count_trailer()?;
                    ChunkState::TrailerName
                }
                (ChunkState::TrailerName, b':') => {
                    self.count_trailer()?;
                    ChunkState::TrailerValue
                }
                (ChunkState::TrailerValue, b'\r') => ChunkState::TrailerLf,
                (ChunkState::TrailerValue, b) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
                    self.count_trailer()?;
                    ChunkState::TrailerValue
                }
                (ChunkState::TrailerLf, b'\n') => ChunkState::TrailerStart,
                (ChunkState::EndLf, b'\n') => {
                    return Ok(Some(std::mem::take(&mut self.body).freeze()));
                }
                _ => return Err(bad_chunk()),
            };
        }
        Ok(None)
    }

    fn count_trailer(&mut self) -> Result<(), Failure> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_HEAD {
            return Err(Failure::Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "trailer fields too large",
            ));
        }
        Ok(())
    }
}

/// A field-name character (RFC 9110 §5.6.2 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the client asked for the connection to end after this request (HTTP/1.0
/// closes unless it asks to keep alive).
fn wants_close(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if version == Version::HTTP_10 {
        !has("keep-alive")
    } else {
        has("close")
    }
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// The response as the bytes of its head (status line, the handler's headers, our framing
/// headers) and its body, written after the head as they are. `None` if the body fails
/// (no handler here streams one). `open_ended`: the body follows from the connection's new
/// owner (a takeover), until it closes, so no length is given.
async fn encode_response<B: HttpBody>(
    response: Response<B>,
    version: Version,
    is_head: bool,
    close: bool,
    open_ended: bool,
) -> Option<(Vec<u8>, Bytes)> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    let status = parts.status;
    tracing::debug!(target: "halley::http", status = status.as_u16(), bytes = body.len(), "answer");
    crate::metrics::http_response(status.as_u16());
    let mut out = Vec::with_capacity(64 + parts.headers.len() * 48);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // A HEAD answer keeps the length the GET would have; otherwise we frame the body.
        // A 101's `Connection: upgrade` is the handler's.
        let ours = (name == header::CONNECTION && status != StatusCode::SWITCHING_PROTOCOLS)
            || name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && !is_head);
        if !ours {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !bodiless && !is_head && !open_ended {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let body = if !bodiless && !is_head {
        body
    } else {
        Bytes::new()
    };
    Some((out, body))
}

/// Answers a request that cannot be served with `status` and a one-line explanation,
/// then closes the connection (so it returns no request).
async fn refuse<T>(
    stream: &mut TcpStream,
    status: StatusCode,
    why: &'static str,
    limits: &Limits,
) -> Option<T> {
    tracing::debug!(%status, why, "request refused before routing");
    crate::metrics::refused_early(crate::metrics::refusal_for_status(status.as_u16()));
    let text = format!("{why}\n");
    let response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text));
    if let Ok(response) = response {
        answer(stream, response, Version::HTTP_11, false, true, limits).await;
    }
    let _ = tokio::time::timeout(limits.write_timeout, stream.shutdown()).await;
    None
}

/// How [`frame`] saw one request, or the end of what it was given.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed {
    /// A request framed whole: its head's essentials, its decoded body, whether the
    /// connection closes after it, and the offset just past it in the input.
    Request {
        method: String,
        target: String,
        http10: bool,
        body: Vec<u8>,
        close: bool,
        end: usize,
    },
    /// Refused with this status; the connection closes.
    Refused(u16),
    /// The input ended inside a request (`false`: between requests).
    Incomplete(bool),
}

/// The request reader's framing, without sockets: the requests a connection receiving
/// `input` in the pieces `splits` (offsets where a read ends) would be served, in order.
/// For the fuzz target, which checks that any split gives the same answer.
#[doc(hidden)]
pub fn frame(input: &[u8], splits: &[usize], max_body: usize) -> Vec<Framed> {
    let mut ends: Vec<usize> = splits
        .iter()
        .copied()
        .filter(|&s| s > 0 && s < input.len())
        .collect();
    ends.push(input.len());
    ends.sort_unstable();
    ends.dedup();
    let mut pieces = ends.into_iter();
    let mut read = 0;
    let mut buf = BytesMut::new();
    // Offset of buf[0] in input.
    let consumed = |buf: &BytesMut, read: usize| read - buf.len();
    let mut more = |buf: &mut BytesMut, read: &mut usize| match pieces.next() {
        Some(end) => {
            buf.extend_from_slice(&input[*read..end]);
            *read = end;
            true
        }
        None => false,
    };
    let mut out = Vec::new();
    loop {
        let (head, mut reader) = loop {
            match take_head(&mut buf, max_body) {
                Ok(Some(found)) => break found,
                Ok(None) if more(&mut buf, &mut read) => {}
                Ok(None) => {
                    out.push(Framed::Incomplete(!buf.is_empty()));
                    return out;
                }
                Err(failure) => {
                    out.push(refused(failure));
                    return out;
                }
            }
        };
        let body = loop {
            match reader.feed(&mut buf) {
                Ok(Some(body)) => break body,
                Ok(None) if more(&mut buf, &mut read) => {}
                Ok(None) => {
                    out.push(Framed::Incomplete(true));
                    return out;
                }
                Err(failure) => {
                    out.push(refused(failure));
                    return out;
                }
            }
        };
        let close = wants_close(head.version, &head.headers);
        out.push(Framed::Request {
            method: head.method.to_string(),
            target: head.uri.to_string(),
            http10: head.version == Version::HTTP_10,
            body: body.to_vec(),
            close,
            end: consumed(&buf, read),
        });
        if close {
            return out;
        }
    }
}

fn refused(failure: Failure) -> Framed {
    match failure {
        Failure::Refused(status, _) => Framed::Refused(status.as_u16()),
        Failure::Gone => Framed::Incomplete(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_head_is_parsed_only_when_complete() {
        let raw = b"POST /cometd/connect?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n[]";
        assert!(parse_head(&raw[..20]).ok().flatten().is_none());
        let (head, len) = parse_head(raw).ok().flatten().expect("complete head");
        assert_eq!(len, raw.len() - 2);
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/cometd/connect");
        assert_eq!(head.uri.query(), Some("x=1"));
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers["content-length"], "2");
        assert!(matches!(
            parse_head(b"GARBAGE\r\n\r\n"),
            Err(Failure::Refused(StatusCode::BAD_REQUEST, _))
        ));
    }

    #[test]
    fn framing_refuses_smuggling_and_oversize_bodies() {
        let max = 100;
        assert!(matches!(
            framing(Version::HTTP_11, &headers(&[]), max),
            Ok(Framing::Empty)
        ));
        assert!(matches!(
            framing(Version::HTTP_11, &headers(&[("content-length", "7")]), max),
            Ok(Framing::Length(7))
        ));
        assert!(matches!(
            framing(
                Version::HTTP_11,
                &headers(&[("content-length", "7"), ("content-length", "7")]),
                max
            ),
            Ok(Framing::Length(7))
        ));
        assert!(matches!(
            framing(
                Version::HTTP_11,
                &headers(&[("transfer-encoding", "chunked")]),
                max
            ),
            Ok(Framing::Chunked)
        ));
        for bad_fields in [
            &[("content-length", "7"), ("content-length", "8")][..],
            &[("content-length", "-1")][..],
            &[("content-length", "+7")][..],
            &[("transfer-encoding", "chunked"), ("content-length", "7")][..],
        ] {
            assert!(
                matches!(
                    framing(Version::HTTP_11, &headers(bad_fields), max),
                    Err(Failure::Refused(StatusCode::BAD_REQUEST, _))
                ),
                "{bad_fields:?}"
            );
        }
        assert!(matches!(
            framing(
                Version::HTTP_11,
                &headers(&[("content-length", "101")]),
                max
            ),
            Err(Failure::Refused(StatusCode::PAYLOAD_TOO_LARGE, _))
        ));
        assert!(matches!(
            framing(
                Version::HTTP_11,
                &headers(&[("transfer-encoding", "gzip")]),
                max
            ),
            Err(Failure::Refused(StatusCode::NOT_IMPLEMENTED, _))
        ));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(!wants_close(Version::HTTP_11, &headers(&[])));
        assert!(wants_close(
            Version::HTTP_11,
            &headers(&[("connection", "Close")])
        ));
        assert!(wants_close(Version::HTTP_10, &headers(&[])));
        assert!(!wants_close(
            Version::HTTP_10,
            &headers(&[("connection", "keep-alive")])
        ));
    }

    /// A parked connect costs this future plus the handler's: keep it small (it was
    /// 1,904 bytes before the request-reading phase moved into a box of its own, 1,016 before
    /// the limits were shared behind an `Arc`, 960 after).
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let stopping = CancellationToken::new();
        let limits = Limits {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_body: 1,
            held_path: Arc::from("/cometd"),
            max_streams: 1,
        };
        let connection = serve(
            stream,
            BytesMut::new(),
            Router::new(),
            Arc::new(limits),
            stopping,
        );
        let size = std::mem::size_of_val(&connection);
        assert!(size <= 1000, "the connection future is {size} bytes");
    }

    #[tokio::test]
    async fn responses_are_framed_by_us() {
        let response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-length", "999")
            .body(Body::from("[]"))
            .expect("response");
        let (head, body) = encode_response(response, Version::HTTP_10, false, false, false)
            .await
            .expect("encoded");
        assert_eq!(
            String::from_utf8(head).expect("utf-8"),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"
        );
        assert_eq!(&body[..], b"[]");
    }

    fn framed(input: &[u8]) -> Vec<Framed> {
        frame(input, &[], 64)
    }

    fn request(body: &[u8], end: usize) -> Framed {
        Framed::Request {
            method: "POST".into(),
            target: "/c".into(),
            http10: false,
            body: body.to_vec(),
            close: false,
            end,
        }
    }

    #[test]
    fn chunked_bodies_are_decoded_as_strictly_as_hyper_does() {
        let head = b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        let with = |chunks: &[u8]| [&head[..], chunks].concat();
        let good = with(b"3;a=b\r\nabc\r\n1 \t;x\r\nd\r\n0\r\nx-t: 1\r\n\r\n");
        assert_eq!(
            framed(&good),
            [request(b"abcd", good.len()), Framed::Incomplete(false)]
        );
        for (chunks, status) in [
            (&b"3;a\nb\r\nabc\r\n0\r\n\r\n"[..], 400), // bare LF in an extension
            (b"3\nabc\r\n0\r\n\r\n", 400),             // bare LF ends the size line
            (b"3\r\nabc\n0\r\n\r\n", 400),             // bare LF after the data
            (b"0\r\nx: 1\n\r\n", 400),                 // bare LF in a trailer
            (b"0\r\nnot a field\r\n\r\n", 400),        // a trailer that is no field
            (b";x\r\n", 400),                          // no size
            (b"fffffffffffffffff\r\n", 400),           // size overflow
            (b"41\r\n", 413),                          // one byte over max_body
            // Two bytes, then a size that wrapped `body.len() + size` in release builds.
            (b"2\r\nab\r\nfffffffffffffffe\r\n", 413),
        ] {
            assert_eq!(
                framed(&with(chunks)),
                [Framed::Refused(status)],
                "{:?}",
                String::from_utf8_lossy(chunks)
            );
        }
        let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_EXT + 1));
        assert_eq!(framed(&with(long_ext.as_bytes())), [Framed::Refused(400)]);
        let long_trailer = format!("0\r\nx: {}\r\n\r\n", "t".repeat(MAX_HEAD));
        assert_eq!(
            framed(&with(long_trailer.as_bytes())),
            [Framed::Refused(431)]
        );
        let http10 = b"POST /c HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(framed(http10), [Framed::Refused(400)]);
    }

    #[test]
    fn framing_does_not_depend_on_how_the_bytes_arrive() {
        let input = b"POST /c HTTP/1.1\r\ncontent-length: 2\r\n\r\nhiPOST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nyo\r\n0\r\n\r\nPOST /c";
        let whole = framed(input);
        assert_eq!(
            whole,
            [
                request(b"hi", 41),
                request(b"yo", 101),
                Framed::Incomplete(true)
            ]
        );
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(frame(input, &every, 64), whole);
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(framed(big.as_bytes()), [Framed::Refused(431)]);
        assert_eq!(frame(big.as_bytes(), &[100], 64), [Framed::Refused(431)]);
    }
}
