//! The `eventsource` transport (Faye's): deliveries pushed down a `text/event-stream`
//! response, everything else sent over long-polling requests.
//!
//! After its handshake, a Faye client opens `new EventSource(<path>/<clientId>)`: a GET
//! with `Accept: text/event-stream`. The answer is a 200 whose body never ends; like a
//! WebSocket's 101 it carries a [`Takeover`], and once the HTTP/1.1 server has written the
//! head, one task per stream serves it:
//!
//! - the stream is the session's outbox reader ([`Broker::open_stream`], a
//!   [`PushConnect`] that answers no connect); each wake-up drains the queue (at most
//!   `--max-response-bytes`) into one `data: [ ... ]` event;
//! - a comment (`:`) goes out with the head and then every websocket ping interval, so
//!   proxies and the browser see the stream alive;
//! - the client's `/meta/connect`s, with `connectionType: "eventsource"`, come over
//!   long-polling and are answered at once, as Faye's server does (`interval` = the
//!   server's `timeout`, `timeout: 0`), leaving the stream as the reader; so is any HTTP
//!   connect while the stream reads (Faye's first connects say `long-polling`: it picks
//!   eventsource only once the stream has opened);
//! - a newer stream or a WebSocket connect of the session supersedes the stream, which
//!   then ends, as it does when the session is removed or the server shuts down;
//! - a stream that closes does not end the session: it expires `timeout` + `maxInterval`
//!   later unless a connect or a new stream comes (the advice has the client connect every
//!   `timeout`). The browser re-opens the stream by itself.
//!
//! An unknown clientId gets a 404 (body `402::session_unknown`): Faye's server would keep
//! any stream open, but a stream nobody can ever deliver to is only a cost, and an
//! EventSource that fails makes Faye fall back to long-polling or, after it was open, try
//! its connect, whose `402` makes it handshake again.
//!
//! Every write has `--write-timeout`; a client that stops reading meets its queue bound
//! (and overflow policy) while the write waits, then loses the stream. HTTP/2 is refused
//! (no browser speaks cleartext HTTP/2, which is all this server serves).

use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Takeover, json_array};
use crate::broker::{Broker, PushConnect, PushWake, RequestContext};
use crate::protocol::BayeuxError;

/// A comment: what keeps a quiet stream alive.
const KEEP_ALIVE: &[u8] = b":\n\n";

/// Whether a request opens an EventSource stream: a GET accepting `text/event-stream`
/// (what `EventSource` sends, and what Faye's server looks for).
pub fn is_request(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
            })
}

/// Why a stream is not opened (an HTTP 4xx at once, so that the client falls back).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream's URL must be `<path>/<clientId>`.
    #[error("an EventSource stream is opened at <bayeux path>/<clientId>")]
    NoClientId,
    /// Only HTTP/1.x streams are served.
    #[error("EventSource streams need HTTP/1.1")]
    Version,
    /// The broker refused (unknown session, or one that takes deliveries on connects).
    #[error("{0}")]
    Refused(#[from] BayeuxError),
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        let status = match self {
            StreamError::Refused(BayeuxError::SessionUnknown) => StatusCode::NOT_FOUND,
            StreamError::Refused(BayeuxError::ServerUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        tracing::debug!(error = %self, "eventsource stream refused");
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// Answers a stream request: a 200 `text/event-stream` whose [`Takeover`] serves the
/// stream for the session the path names, or the reason it is refused.
pub(crate) async fn open(
    broker: &Broker,
    parts: &Parts,
    cookie: Option<String>,
) -> Result<Response, StreamError> {
    if parts.version >= Version::HTTP_2 {
        return Err(StreamError::Version);
    }
    let base = broker.config().path.trim_end_matches('/');
    let client_id = parts
        .uri
        .path()
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or(StreamError::NoClientId)?;
    let ctx = RequestContext {
        browser_id: cookie,
        multiplexed: false,
        connect_only: false,
        transport: crate::metrics::Transport::EventSource,
    };
    let connect = broker.open_stream(client_id, &ctx).await?;
    let config = broker.config();
    let ping = Duration::from_millis(config.websocket_ping_interval);
    let deadline = Duration::from_millis(config.write_timeout);
    let takeover = Takeover::new(move |stream, read, shutdown| {
        Box::pin(serve(connect, stream, read, ping, deadline, shutdown))
    });
    // The body starts with a comment, written with the head: an intermediary that holds a
    // head until body bytes come (Node's http, for one) passes the stream on at once.
    let mut response = Response::new(axum::body::Body::from(KEEP_ALIVE));
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    // nginx would otherwise buffer the stream's events.
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response.extensions_mut().insert(takeover);
    Ok(response)
}

/// What woke a stream's task.
enum Event {
    Woken(PushWake),
    Ping,
    /// The client sent something or closed: an EventSource sends nothing after its
    /// request, so either way the stream ends.
    Readable,
    Shutdown,
}

/// Serves one stream until the client leaves, the stream is superseded, the session
/// ends, a write misses its deadline, or the server shuts down.
async fn serve(
    connect: PushConnect,
    mut stream: TcpStream,
    read: Bytes,
    ping: Duration,
    deadline: Duration,
    shutdown: CancellationToken,
) {
    // Bytes past the request: not an EventSource.
    if read.is_empty() {
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        loop {
            // No pings (interval 0): the timer stands for never.
            let next = if ping.is_zero() {
                Instant::now() + Duration::from_secs(365 * 86_400)
            } else {
                Instant::now() + ping
            };
            timer.as_mut().reset(next);
            let event = tokio::select! {
                wake = connect.woken(false) => Event::Woken(wake),
                () = &mut timer => Event::Ping,
                _ = stream.readable() => Event::Readable,
                () = shutdown.cancelled() => Event::Shutdown,
            };
            let written = match event {
                // Boxed: a write is brief, an idle stream long.
                Event::Woken(PushWake::Deliver(deliveries)) => {
                    Box::pin(write(&mut stream, deadline, &event_of(&deliveries))).await
                }
                Event::Ping => Box::pin(write(&mut stream, deadline, KEEP_ALIVE)).await,
                Event::Readable if still_open(&stream) => true,
                // Superseded, the session gone, shutdown, or the client left.
                // (`Later` only when asked for, which the stream does not.)
                Event::Woken(PushWake::Answer | PushWake::Superseded | PushWake::Later(_))
                | Event::Readable
                | Event::Shutdown => false,
            };
            if !written {
                break;
            }
        }
    }
    // The session starts ageing towards expiry.
    drop(connect);
    let _ = tokio::time::timeout(deadline, stream.shutdown()).await;
}

/// After a readiness report: whether the socket is still open with nothing to read (a
/// spurious wake-up).
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// One `data:` event carrying `deliveries` as a JSON array. The JSON's line breaks (only
/// ever whitespace between tokens in a payload forwarded as the client wrote it) become
/// spaces: a line break would end the `data:` field.
fn event_of(deliveries: &[Bytes]) -> Vec<u8> {
    let mut array = json_array(deliveries);
    for byte in &mut array {
        if *byte == b'\n' || *byte == b'\r' {
            *byte = b' ';
        }
    }
    let mut event = Vec::with_capacity(array.len() + 8);
    event.extend_from_slice(b"data: ");
    event.append(&mut array);
    event.extend_from_slice(b"\n\n");
    event
}

/// Writes `bytes` within the write deadline: whether they all went out.
async fn write(stream: &mut TcpStream, deadline: Duration, bytes: &[u8]) -> bool {
    let mut buf = bytes;
    let written = tokio::time::timeout(deadline, stream.write_all_buf(&mut buf)).await;
    matches!(written, Ok(Ok(()))) && !buf.has_remaining()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_gets_accepting_event_streams() {
        let mut headers = HeaderMap::new();
        assert!(!is_request(&Method::GET, &headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, Text/Event-Stream;q=0.9"),
        );
        assert!(is_request(&Method::GET, &headers));
        assert!(!is_request(&Method::POST, &headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!is_request(&Method::GET, &headers));
    }

    #[test]
    fn an_event_is_one_data_line() {
        let event = event_of(&[
            Bytes::from_static(b"{\"data\":\r\n{\"a\":\n1}}"),
            Bytes::from_static(b"{}"),
        ]);
        assert_eq!(event, b"data: [{\"data\":  {\"a\": 1}},{}]\n\n");
    }

    /// An idle stream holds this future for its whole life: keep it small.
    #[tokio::test]
    async fn the_stream_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let stream = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let broker = crate::server::broker(crate::Config::default()).expect("broker");
        let mut batch = Vec::new();
        crate::protocol::decode_batch(
            br#"{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["eventsource"]}"#,
            &mut batch,
        )
        .expect("batch");
        let ctx = RequestContext::default();
        let crate::broker::Outcome::Reply(reply) = broker.handle(batch, &ctx).await else {
            panic!("no handshake reply");
        };
        let reply: serde_json::Value = serde_json::from_slice(&reply.messages[0]).expect("json");
        let client_id = reply["clientId"].as_str().expect("clientId");
        let connect = broker.open_stream(client_id, &ctx).await.expect("stream");
        let serving = serve(
            connect,
            stream,
            Bytes::new(),
            Duration::from_secs(1),
            Duration::from_secs(1),
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&serving);
        println!("stream future: {size} bytes");
        assert!(size <= 1_024, "the stream future is {size} bytes");
    }
}
