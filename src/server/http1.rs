//! A lean HTTP/1.1 connection: reads requests with `httparse`, hands them to the axum
//! router, writes the answers.
//!
//! Why not hyper's HTTP/1 server: what a Bayeux server holds most of is parked
//! `/meta/connect`s, and hyper keeps a read buffer and a write buffer of at least 8 KiB
//! each for the whole life of every connection. Here a connection owns no buffer between
//! requests: a request is read into one allocation that becomes its body (which the
//! endpoint frees before it holds a connect), a response is written from one allocation
//! freed once sent, and a parked request costs its future and the socket only. Routing,
//! layers and handlers stay axum's; parsing is hyper's own parser crate.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::transport::{Takeover, TakeoverFn};

/// The limits one connection is served within.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Time a client gets to send a whole request head, idle keep-alive time included.
    pub header_timeout: Duration,
    /// Time a client gets to send a request body once its head is in.
    pub body_timeout: Duration,
    /// Largest request body; a larger one is answered 413 without being read.
    pub max_body: usize,
}

/// Largest request head (request line and headers): hyper's smallest buffer, which the
/// server used before; Bayeux heads are a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// Room reserved for each read: a whole Bayeux request usually fits.
const READ_CHUNK: usize = 2 * 1024;
/// What an HTTP/2 client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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

/// Whether the connection opens with the HTTP/2 preface (`Some(true)`), with anything
/// else (`Some(false)`), or closes first (`None`). Only peeks: nothing is consumed.
pub(crate) async fn opens_with_h2_preface(stream: &TcpStream) -> io::Result<Option<bool>> {
    let mut probe = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut probe).await?;
        if n == 0 {
            return Ok(None);
        }
        if !H2_PREFACE.starts_with(&probe[..n]) {
            return Ok(Some(false));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(true));
        }
        // A preface split across packets: peek again shortly (the caller bounds the wait).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves HTTP/1.x requests on `stream` until the peer closes, a limit is hit, or
/// `shutdown` turns true (then idle connections close at once and busy ones after their
/// answer).
///
/// Only what a held request needs lives in this future; reading a request happens in a
/// boxed future of its own, allocated while a request is being read.
pub(crate) async fn serve(
    mut stream: TcpStream,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::new();
    loop {
        let next = Box::pin(next_request(&mut stream, &mut buf, &limits, &mut shutdown));
        let Some((request, mut close)) = next.await else {
            return;
        };
        let is_head = request.method() == Method::HEAD;
        let version = request.version();
        let response = {
            let mut answer = pin!(app.clone().oneshot(request));
            until_answered(&stream, answer.as_mut(), buf.is_empty()).await
        };
        let Some(response) = response else {
            return; // the client left; dropping the request released what it held
        };
        close |= *shutdown.borrow();
        // Boxed: writing is brief, and its state must not grow every parked connection.
        let written = Box::pin(write_answer(&mut stream, response, version, is_head, close));
        match written.await {
            Written::KeepAlive => {}
            Written::Closed => return,
            Written::TakenOver(takeover) => return takeover(stream, buf.freeze(), shutdown).await,
        }
    }
}

/// What happened to the connection once an answer was written.
enum Written {
    /// It serves the next request.
    KeepAlive,
    /// It is closed (asked for, or the write failed).
    Closed,
    /// The answer handed the connection over (a WebSocket's 101): HTTP ends here.
    TakenOver(TakeoverFn),
}

/// Writes `response`; closes the connection after it when `close` is set, unless the
/// response takes the connection over.
async fn write_answer<B: HttpBody>(
    stream: &mut TcpStream,
    response: Response<B>,
    version: Version,
    is_head: bool,
    close: bool,
) -> Written {
    let takeover = response
        .extensions()
        .get::<Takeover>()
        .and_then(Takeover::take);
    let close = close && takeover.is_none();
    let Some(bytes) = encode_response(response, version, is_head, close).await else {
        return Written::Closed;
    };
    if stream.write_all(&bytes).await.is_err() {
        return Written::Closed;
    }
    if let Some(takeover) = takeover {
        return Written::TakenOver(takeover);
    }
    if close {
        let _ = stream.shutdown().await;
        return Written::Closed;
    }
    Written::KeepAlive
}

/// Reads the next request, and whether the connection closes after it. `None`: the
/// connection ends (the peer closed, a limit was hit and answered, or shutdown).
async fn next_request(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(Request<Body>, bool)> {
    let head = tokio::select! {
        head = tokio::time::timeout(limits.header_timeout, read_head(stream, buf)) => head,
        _ = shutdown.wait_for(|stop| *stop) => return None,
    };
    let head = match head {
        Ok(Ok(Some(head))) => head,
        // Closed between requests, or too slow to send a head (slow-loris): hyper closes
        // silently in both cases, and so do we.
        Ok(Ok(None)) | Ok(Err(Failure::Gone)) | Err(_) => return None,
        Ok(Err(Failure::Refused(status, why))) => return refuse(stream, status, why).await,
    };
    tracing::debug!(target: "halley::http", method = %head.method, path = head.uri.path(), "request");
    let close = wants_close(head.version, &head.headers);
    let framing = match framing(&head.headers, limits.max_body) {
        Ok(framing) => framing,
        Err(Failure::Refused(status, why)) => return refuse(stream, status, why).await,
        Err(Failure::Gone) => return None,
    };
    if expects_continue(&head.headers)
        && !matches!(framing, Framing::Empty)
        && stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return None;
    }
    let body = tokio::time::timeout(
        limits.body_timeout,
        read_body(stream, buf, framing, limits.max_body),
    )
    .await;
    let body = match body {
        Ok(Ok(body)) => body,
        Ok(Err(Failure::Gone)) => return None,
        Ok(Err(Failure::Refused(status, why))) => return refuse(stream, status, why).await,
        Err(_) => {
            let why = "request body timed out";
            return refuse(stream, StatusCode::BAD_REQUEST, why).await;
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
    std::future::poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
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

/// Reads into `buf` until it holds a whole head, which it consumes. `Ok(None)`: the peer
/// closed before sending any byte of one.
async fn read_head(stream: &TcpStream, buf: &mut BytesMut) -> Result<Option<Head>, Failure> {
    loop {
        if !buf.is_empty() {
            if let Some((head, len)) = parse_head(buf)? {
                buf.advance(len);
                return Ok(Some(head));
            }
            if buf.len() >= MAX_HEAD {
                return Err(Failure::Refused(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                ));
            }
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

/// One read into `buf`. The room is reserved only once the socket is readable, so a
/// connection waiting for its next request holds no buffer.
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

/// Like [`read_some`], but the peer closing is a failure: a body was promised.
async fn read_more(stream: &TcpStream, buf: &mut BytesMut) -> Result<(), Failure> {
    match read_some(stream, buf).await? {
        0 => Err(Failure::Gone),
        _ => Ok(()),
    }
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
/// and `Content-Length`, or with disagreeing lengths, is refused (request smuggling).
fn framing(headers: &HeaderMap, max_body: usize) -> Result<Framing, Failure> {
    let too_large = Failure::Refused(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    if let Some(coding) = headers.get(header::TRANSFER_ENCODING) {
        if headers.contains_key(header::CONTENT_LENGTH)
            || headers.get_all(header::TRANSFER_ENCODING).iter().count() > 1
        {
            return Err(bad("ambiguous request body framing"));
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
    match length {
        None | Some(0) => Ok(Framing::Empty),
        Some(n) if n > max_body as u64 => Err(too_large),
        Some(n) => Ok(Framing::Length(n as usize)),
    }
}

/// Reads the body `framing` promises, consuming it from `buf`.
async fn read_body(
    stream: &TcpStream,
    buf: &mut BytesMut,
    framing: Framing,
    max_body: usize,
) -> Result<Bytes, Failure> {
    match framing {
        Framing::Empty => Ok(Bytes::new()),
        Framing::Length(n) => {
            if buf.len() < n {
                buf.reserve(n - buf.len());
            }
            while buf.len() < n {
                read_more(stream, buf).await?;
            }
            Ok(buf.split_to(n).freeze())
        }
        Framing::Chunked => read_chunked(stream, buf, max_body).await,
    }
}

/// Decodes a chunked body (trailer fields are read and dropped).
async fn read_chunked(
    stream: &TcpStream,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Bytes, Failure> {
    let mut body = BytesMut::new();
    loop {
        let (used, size) = match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) if buf.len() < 1024 => {
                read_more(stream, buf).await?;
                continue;
            }
            _ => return Err(bad("bad chunk size")),
        };
        if size == 0 {
            buf.advance(used);
            return skip_trailers(stream, buf).await.map(|()| body.freeze());
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|size| body.len() + size <= max_body)
            .ok_or(Failure::Refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ))?;
        while buf.len() < used + size + 2 {
            read_more(stream, buf).await?;
        }
        if &buf[used + size..used + size + 2] != b"\r\n" {
            return Err(bad("bad chunk"));
        }
        body.extend_from_slice(&buf[used..used + size]);
        buf.advance(used + size + 2);
    }
}

/// Consumes trailer lines up to and including the empty line that ends a chunked body.
async fn skip_trailers(stream: &TcpStream, buf: &mut BytesMut) -> Result<(), Failure> {
    loop {
        match buf.windows(2).position(|w| w == b"\r\n") {
            Some(0) => {
                buf.advance(2);
                return Ok(());
            }
            Some(end) => buf.advance(end + 2),
            None if buf.len() < MAX_HEAD => read_more(stream, buf).await?,
            None => return Err(bad("trailer too large")),
        }
    }
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

/// The response as bytes on the wire: status line, the handler's headers, our framing
/// headers, the body. `None` if the body fails (no handler here streams one).
async fn encode_response<B: HttpBody>(
    response: Response<B>,
    version: Version,
    is_head: bool,
    close: bool,
) -> Option<Vec<u8>> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    let status = parts.status;
    tracing::debug!(target: "halley::http", status = status.as_u16(), bytes = body.len(), "answer");
    crate::metrics::http_response(status.as_u16());
    let mut out = Vec::with_capacity(64 + parts.headers.len() * 48 + body.len());
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
    if !bodiless && !is_head {
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
    if !bodiless && !is_head {
        out.extend_from_slice(&body);
    }
    Some(out)
}

/// Answers a request that cannot be served with `status` and a one-line explanation,
/// then closes the connection (so it returns no request).
async fn refuse<T>(stream: &mut TcpStream, status: StatusCode, why: &'static str) -> Option<T> {
    tracing::debug!(%status, why, "request refused before routing");
    crate::metrics::refused_early(crate::metrics::refusal_for_status(status.as_u16()));
    let text = format!("{why}\n");
    let response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text));
    if let Ok(response) = response
        && let Some(bytes) = encode_response(response, Version::HTTP_11, false, true).await
    {
        let _ = stream.write_all(&bytes).await;
    }
    let _ = stream.shutdown().await;
    None
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
        assert!(matches!(framing(&headers(&[]), max), Ok(Framing::Empty)));
        assert!(matches!(
            framing(&headers(&[("content-length", "7")]), max),
            Ok(Framing::Length(7))
        ));
        assert!(matches!(
            framing(
                &headers(&[("content-length", "7"), ("content-length", "7")]),
                max
            ),
            Ok(Framing::Length(7))
        ));
        assert!(matches!(
            framing(&headers(&[("transfer-encoding", "chunked")]), max),
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
                    framing(&headers(bad_fields), max),
                    Err(Failure::Refused(StatusCode::BAD_REQUEST, _))
                ),
                "{bad_fields:?}"
            );
        }
        assert!(matches!(
            framing(&headers(&[("content-length", "101")]), max),
            Err(Failure::Refused(StatusCode::PAYLOAD_TOO_LARGE, _))
        ));
        assert!(matches!(
            framing(&headers(&[("transfer-encoding", "gzip")]), max),
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
    /// 1,904 bytes before the request-reading phase moved into a box of its own).
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (_stop, stopping) = watch::channel(false);
        let limits = Limits {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_body: 1,
        };
        let connection = serve(stream, Router::new(), limits, stopping);
        let size = std::mem::size_of_val(&connection);
        assert!(size <= 1100, "the connection future is {size} bytes");
    }

    #[tokio::test]
    async fn responses_are_framed_by_us() {
        let response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-length", "999")
            .body(Body::from("[]"))
            .expect("response");
        let bytes = encode_response(response, Version::HTTP_10, false, false)
            .await
            .expect("encoded");
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n[]"
        );
    }
}
