//! The `websocket` transport: one JSON array per text frame, in both directions
//! (`../shared/WEBSOCKET.md`).
//!
//! The upgrade is an ordinary request to the Bayeux path; its answer, a 101, carries a
//! [`Takeover`] that the HTTP/1.1 server runs with the socket (and any bytes it already
//! read) once the 101 is written. From then on one task serves the socket:
//!
//! - each text frame is a batch for [`Broker::handle_pushed`]; its replies go back as one
//!   frame (`[]` is answered with `[]`, as old Faye pings expect);
//! - a `/meta/connect` alone is held as over long-polling, but while it is held the socket
//!   is the session's outbox reader and deliveries go out at once as frames of their own;
//!   a connect-only (ack extension) session gets them on the connect reply instead;
//! - a newer connection of the session (a second connect, a reload on a new socket) takes
//!   the outbox over and the held connect here is never answered; nothing is lost or sent
//!   twice, because the session has one queue;
//! - a closed socket does not end the session: it expires after `maxInterval` as usual.
//!
//! One timer serves the held connect's timeout, the ping interval and the idle timeout.
//! The read buffer is small and grows only for a large frame; frames and messages are
//! bounded by `max_body_bytes`; every write has a deadline, and a client that stops
//! reading meets its queue bound while the write waits.
//!
//! Test only: with `--websocket-echo-path`, [`echo_endpoint`] serves an echo with the same
//! handshake, socket settings and close codes, for Autobahn's conformance cases.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::{Takeover, json_array};
use crate::broker::{Broker, PushConnect, PushWake, ReplyBatch, RequestContext};
use crate::protocol::decode_batch;

/// Bytes read from the socket at a time. tungstenite's default, 128 KiB allocated up
/// front, would dwarf everything else an idle socket holds; a Bayeux frame is usually a
/// few hundred bytes, and a larger one grows the buffer while it is read.
const READ_BUFFER: usize = 512;
/// How long one frame may take to be written before the socket is given up.
const ECHO_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// CometD's `maxNetworkDelay`: how late a client's next frame may be after it was due.
const NETWORK_DELAY: Duration = Duration::from_secs(10);

/// Whether a request asks to upgrade to a websocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Why an upgrade request is refused (HTTP 4xx, before any socket is taken).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Only HTTP/1.1 upgrades are served.
    #[error("websocket upgrades need HTTP/1.1")]
    Version,
    /// Not a GET with `Connection: upgrade` and a `Sec-WebSocket-Key`.
    #[error("not a websocket handshake: {0}")]
    Handshake(&'static str),
    /// A websocket version other than 13 (RFC 6455).
    #[error("unsupported websocket version; this server speaks 13")]
    WebSocketVersion,
}

impl IntoResponse for UpgradeError {
    fn into_response(self) -> Response {
        let status = match self {
            UpgradeError::WebSocketVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut response = (status, format!("{self}\n")).into_response();
        if status == StatusCode::UPGRADE_REQUIRED {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// Answers an upgrade request: a 101 whose [`Takeover`] serves the socket for `broker`,
/// or the reason it is refused.
pub(crate) fn upgrade(
    broker: &Broker,
    parts: &Parts,
    cookie: Option<String>,
) -> Result<Response, UpgradeError> {
    let mut response = switching_protocols(parts)?;
    let ctx = RequestContext {
        browser_id: cookie,
        // A socket holds no browser connection slot the way a long-poll does.
        multiplexed: true,
        connect_only: false,
        transport: crate::metrics::Transport::WebSocket,
    };
    let broker = broker.clone();
    let takeover = Takeover::new(move |stream, read, shutdown| {
        Box::pin(serve(broker, ctx, stream, read, shutdown))
    });
    response.extensions_mut().insert(takeover);
    Ok(response)
}

/// Test only (`--websocket-echo-path`): a WebSocket that sends every message back as it
/// came, with the Bayeux socket's handshake checks, settings and close codes, so that a
/// conformance suite exercises what Bayeux clients get.
pub async fn echo_endpoint(State(broker): State<Broker>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if !is_upgrade(&parts.headers) {
        return UpgradeError::Handshake("a websocket upgrade").into_response();
    }
    match switching_protocols(&parts) {
        Ok(mut response) => {
            // Autobahn's cases send messages of up to 16 MiB; the echo is test-only.
            let limit = broker.config().max_body_bytes.max(ECHO_LIMIT);
            let takeover = Takeover::new(move |stream, read, shutdown| {
                Box::pin(echo(limit, stream, read, shutdown))
            });
            response.extensions_mut().insert(takeover);
            response
        }
        Err(refused) => refused.into_response(),
    }
}

/// Largest message the test-only echo takes.
const ECHO_LIMIT: usize = 20 << 20;

/// Serves the echo socket until it closes or the server shuts down.
async fn echo(limit: usize, stream: TcpStream, read: Bytes, shutdown: CancellationToken) {
    let mut socket = WebSocketStream::from_partially_read(
        stream,
        read.to_vec(),
        Role::Server,
        Some(settings(limit)),
    )
    .await;
    let end = loop {
        let frame = tokio::select! {
            frame = socket.next() => frame,
            () = shutdown.cancelled() => break End::Close(CloseCode::Away, "server shutting down"),
        };
        let step = match frame {
            Some(Ok(frame @ (Frame::Text(_) | Frame::Binary(_)))) => {
                write(&mut socket, ECHO_WRITE_TIMEOUT, frame).await
            }
            Some(Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_))) => Ok(()),
            Some(Ok(Frame::Close(_))) => Err(End::Closed),
            None => Err(End::Gone),
            Some(Err(error)) => Err(refusal(error)),
        };
        if let Err(end) = step {
            break end;
        }
    };
    close(&mut socket, end, ECHO_WRITE_TIMEOUT).await;
}

/// The 101 that accepts a valid upgrade request, or why it is refused.
fn switching_protocols(parts: &Parts) -> Result<Response, UpgradeError> {
    if parts.version != Version::HTTP_11 {
        return Err(UpgradeError::Version);
    }
    let headers = &parts.headers;
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if parts.method != axum::http::Method::GET || !connection_upgrade {
        return Err(UpgradeError::Handshake("a GET with Connection: upgrade"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(UpgradeError::WebSocketVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .filter(|k| k.len() == 24)
        .ok_or(UpgradeError::Handshake(
            "Sec-WebSocket-Key missing or malformed",
        ))?;
    let accept = HeaderValue::from_str(&derive_accept_key(key))
        .map_err(|_| UpgradeError::Handshake("Sec-WebSocket-Key"))?;
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let out = response.headers_mut();
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(response)
}

/// The socket settings: a small read buffer, no write buffering, messages and frames
/// bounded by `limit`.
fn settings(limit: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

/// The close that answers a read error: the code RFC 6455 gives the fault, or none when
/// the socket just failed.
fn refusal(error: WsError) -> End {
    match error {
        WsError::Capacity(_) => End::Close(CloseCode::Size, "frame too large"),
        WsError::Utf8(_) => End::Close(CloseCode::Invalid, "text frame is not UTF-8"),
        WsError::Protocol(_) => End::Close(CloseCode::Protocol, "websocket protocol error"),
        _ => End::Gone,
    }
}

/// Sends the close frame `end` calls for (within the write deadline).
async fn close(socket: &mut WebSocketStream<TcpStream>, end: End, deadline: Duration) {
    match end {
        End::Close(code, reason) => {
            let close = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let _ = tokio::time::timeout(deadline, socket.close(Some(close))).await;
        }
        End::Closed => {
            let _ = tokio::time::timeout(deadline, socket.flush()).await;
        }
        End::Gone => {}
    }
}

/// Why a socket's loop ends.
enum End {
    /// The socket failed: nothing more to say.
    Gone,
    /// The peer sent a close frame: tungstenite has queued the reply, which must still
    /// be flushed for the closing handshake to complete (else the client sees 1006).
    Closed,
    /// We close with this code and reason.
    Close(CloseCode, &'static str),
}

/// What woke the socket's task.
enum Event {
    Frame(Option<Result<Frame, WsError>>),
    Woken(PushWake),
    Timer,
    Shutdown,
}

/// Serves one upgraded socket until it closes, it idles out, or the server shuts down.
async fn serve(
    broker: Broker,
    ctx: RequestContext,
    stream: TcpStream,
    read: Bytes,
    shutdown: CancellationToken,
) {
    let config = broker.config();
    let limit = config.max_body_bytes;
    let ping = Duration::from_millis(config.websocket_ping_interval);
    let idle = Duration::from_millis(config.timeout) + NETWORK_DELAY + ping;
    // A client that stops reading is given up after this, its queue meanwhile bounded.
    let deadline = Duration::from_millis(config.write_timeout);
    let mut socket = Box::pin(WebSocketStream::from_partially_read(
        stream,
        read.to_vec(),
        Role::Server,
        Some(settings(limit)),
    ))
    .await;
    let metrics = broker.metrics().clone();
    metrics.websocket_opened();
    let mut held: Option<PushConnect> = None;
    let mut heard = Instant::now();
    let mut next_ping = (!ping.is_zero()).then(|| heard + ping);
    // When the held connect's queued deliveries go out, while coalescing spaces them.
    let mut deliver_at: Option<Instant> = None;
    let timer = tokio::time::sleep_until(heard + idle);
    tokio::pin!(timer);
    let end = loop {
        let mut wake_at = heard + idle;
        if let Some(at) = next_ping {
            wake_at = wake_at.min(at);
        }
        if let Some(connect) = &held {
            wake_at = wake_at.min(connect.deadline());
        }
        if let Some(at) = deliver_at {
            wake_at = wake_at.min(at);
        }
        timer.as_mut().reset(wake_at);
        // While deliveries wait for their time, what is published meanwhile just queues.
        let waking = held.as_ref().filter(|_| deliver_at.is_none());
        let event = tokio::select! {
            frame = socket.next() => Event::Frame(frame),
            wake = woken(waking) => Event::Woken(wake),
            () = &mut timer => Event::Timer,
            () = shutdown.cancelled() => Event::Shutdown,
        };
        let step = match event {
            Event::Frame(frame) => {
                heard = Instant::now();
                // Boxed: handling a frame runs the broker's batch path, whose state an idle
                // socket's future must not carry.
                Box::pin(on_frame(
                    &broker,
                    &ctx,
                    &mut socket,
                    deadline,
                    &mut held,
                    frame,
                ))
                .await
            }
            // Writes are boxed too: a frame being written is brief, an idle socket long.
            Event::Woken(PushWake::Deliver(deliveries)) => {
                Box::pin(send(&mut socket, deadline, json_array(&deliveries))).await
            }
            Event::Woken(PushWake::Later(at)) => {
                deliver_at = Some(at);
                Ok(())
            }
            Event::Woken(PushWake::Answer) => {
                Box::pin(answer(&mut socket, deadline, &mut held)).await
            }
            Event::Woken(PushWake::Superseded) => {
                held = None;
                Ok(())
            }
            Event::Timer => {
                let now = Instant::now();
                if deliver_at.is_some_and(|at| at <= now) {
                    deliver_at = None;
                    // No connect held any more: its answer took them.
                    match held.as_ref().map(PushConnect::deliveries) {
                        Some(deliveries) if !deliveries.is_empty() => {
                            Box::pin(send(&mut socket, deadline, json_array(&deliveries))).await
                        }
                        _ => Ok(()),
                    }
                } else if held.as_ref().is_some_and(|c| c.deadline() <= now) {
                    Box::pin(answer(&mut socket, deadline, &mut held)).await
                } else if now >= heard + idle {
                    Err(End::Close(CloseCode::Away, "idle timeout"))
                } else if next_ping.is_some_and(|at| at <= now) {
                    next_ping = Some(now + ping);
                    Box::pin(write(&mut socket, deadline, Frame::Ping(Bytes::new()))).await
                } else {
                    Ok(())
                }
            }
            Event::Shutdown => {
                let answered = Box::pin(answer(&mut socket, deadline, &mut held)).await;
                answered.and(Err(End::Close(CloseCode::Away, "server shutting down")))
            }
        };
        if let Err(end) = step {
            break end;
        }
    };
    // A held connect left here is detached by its drop: the session starts ageing.
    drop(held);
    Box::pin(close(&mut socket, end, deadline)).await;
    metrics.websocket_closed();
}

/// Waits for the held connect to be woken; never, when none is held.
async fn woken(held: Option<&PushConnect>) -> PushWake {
    match held {
        Some(connect) => connect.woken(true).await,
        None => std::future::pending().await,
    }
}

/// Acts on what the client sent.
async fn on_frame(
    broker: &Broker,
    ctx: &RequestContext,
    socket: &mut WebSocketStream<TcpStream>,
    deadline: Duration,
    held: &mut Option<PushConnect>,
    frame: Option<Result<Frame, WsError>>,
) -> Result<(), End> {
    let text = match frame {
        Some(Ok(Frame::Text(text))) => text,
        Some(Ok(Frame::Binary(_))) => {
            return Err(End::Close(CloseCode::Unsupported, "text frames only"));
        }
        // tungstenite answers pings itself; a pong or a ping is just a sign of life.
        Some(Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_))) => return Ok(()),
        Some(Ok(Frame::Close(_))) => return Err(End::Closed),
        None => return Err(End::Gone),
        Some(Err(error)) => return Err(refusal(error)),
    };
    if text.trim() == "[]" {
        return send(socket, deadline, b"[]".to_vec()).await;
    }
    let mut batch = Vec::new();
    if let Err(error) = decode_batch(text.as_bytes(), &mut batch) {
        tracing::debug!(%error, "websocket frame refused");
        return Err(End::Close(CloseCode::Invalid, "not a Bayeux message batch"));
    }
    drop(text);
    let (reply, connect) = broker.handle_pushed(batch, ctx).await;
    if let Some(connect) = connect {
        // A newer connect supersedes the held one, which is never answered.
        *held = Some(connect);
    }
    match reply {
        Some(ReplyBatch { messages, .. }) if !messages.is_empty() => {
            send(socket, deadline, json_array(&messages)).await
        }
        _ => Ok(()),
    }
}

/// Answers the held connect, if any.
async fn answer(
    socket: &mut WebSocketStream<TcpStream>,
    deadline: Duration,
    held: &mut Option<PushConnect>,
) -> Result<(), End> {
    match held.take() {
        Some(connect) => {
            send(
                socket,
                deadline,
                json_array(&connect.answer().await.messages),
            )
            .await
        }
        None => Ok(()),
    }
}

/// Sends one JSON array as a text frame.
async fn send(
    socket: &mut WebSocketStream<TcpStream>,
    deadline: Duration,
    array: Vec<u8>,
) -> Result<(), End> {
    match Utf8Bytes::try_from(Bytes::from(array)) {
        Ok(text) => write(socket, deadline, Frame::Text(text)).await,
        Err(_) => Err(End::Close(CloseCode::Error, "internal error")),
    }
}

/// Writes a frame within the write deadline.
async fn write(
    socket: &mut WebSocketStream<TcpStream>,
    deadline: Duration,
    frame: Frame,
) -> Result<(), End> {
    match tokio::time::timeout(deadline, socket.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(End::Gone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle socket holds this future for its whole life: keep it small.
    #[tokio::test]
    async fn the_socket_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let broker = crate::server::broker(crate::Config::default()).expect("broker");
        let socket = serve(
            broker,
            RequestContext::default(),
            stream,
            Bytes::new(),
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&socket);
        println!(
            "stream: {}",
            std::mem::size_of::<WebSocketStream<TcpStream>>()
        );
        assert!(size <= 100_000, "the socket future is {size} bytes");
        println!("socket future: {size} bytes");
    }
}
