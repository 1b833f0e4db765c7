//! HTTP transports: each file adapts one Bayeux transport's envelope to the broker.
//!
//! A transport only decodes a request into a batch of messages, hands it to
//! [`crate::broker::Broker::handle`] and encodes the outcome. Everything they share, from
//! body decoding to the `BAYEUX_BROWSER` cookie, lives here.

pub mod callback_polling;
pub mod cors;
pub mod eventsource;
pub mod long_polling;
pub mod relay;
pub mod websocket;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Outcome, RequestContext};
use crate::config::{Config, SameSite, Transport};
use crate::protocol::{DecodeError, Message, decode_batch};
use relay::Relayed as Via;

/// The connection types offered in handshake replies: the enabled transports, in the
/// order clients should prefer them. Clients switch to anything listed, so only what
/// is served is listed.
pub fn connection_types(config: &Config) -> Vec<&'static str> {
    [
        Transport::Websocket,
        Transport::EventSource,
        Transport::LongPolling,
        Transport::CallbackPolling,
    ]
    .into_iter()
    .filter(|t| config.transports.contains(t))
    .map(Transport::connection_type)
    .collect()
}

/// What takes a connection over once its response is written: the server hands it
/// the socket, the bytes it already read past the request, and the shutdown signal.
pub type TakeoverFn = Box<
    dyn FnOnce(TcpStream, Bytes, CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send,
>;

/// A response extension saying that the connection is taken over after this response
/// (a WebSocket's 101): HTTP ends there. Cloneable because response extensions must be.
#[derive(Clone)]
pub struct Takeover(Arc<Mutex<Option<TakeoverFn>>>);

impl Takeover {
    /// A takeover that runs `serve` with the connection.
    pub fn new(
        serve: impl FnOnce(
            TcpStream,
            Bytes,
            CancellationToken,
        ) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + 'static,
    ) -> Takeover {
        Takeover(Arc::new(Mutex::new(Some(Box::new(serve)))))
    }

    /// The function to run with the connection; `None` once taken.
    pub fn take(&self) -> Option<TakeoverFn> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Takeover")
    }
}

/// Handles every request to the Bayeux path and anything below it (CometD JS appends
/// `/handshake`, `/connect`… to the URL): POST is long-polling, GET with a `jsonp`
/// parameter is callback-polling, a GET accepting `text/event-stream` opens an
/// EventSource stream, other GETs with `message` are long-polling; websocket upgrades. CORS
/// headers are added here for allowed origins.
///
/// The request is taken whole and decoded in a future boxed apart, dropped before the
/// first await that may hold: a parked connect's future keeps the decoded batch and
/// nothing of the request, and stays small.
pub fn endpoint(
    State(broker): State<Broker>,
    request: Request,
) -> impl Future<Output = Response> + Send {
    let (parts, body) = request.into_parts();
    let origin = cors::allowed_origin(&broker.config().allowed_origins, &parts.headers);
    let limit = broker.config().max_body_bytes;
    let allowed = origin.is_some();
    let decoding = Box::pin(read_batch(broker.clone(), parts, body, limit, allowed));
    async move {
        let mut response = match decoding.await {
            Ok(decoded) => {
                let via = via(&decoded);
                let Decoded {
                    batch,
                    cookie,
                    callback,
                    ..
                } = decoded;
                let exchange = Exchange::run(&broker, batch, cookie, via).await;
                match callback {
                    Some(callback) => callback_polling::respond(exchange, &callback),
                    None => long_polling::respond(exchange),
                }
            }
            Err(response) => response,
        };
        if let Some(origin) = origin {
            cors::allow(&mut response, origin);
        }
        response
    }
}

/// Reads the body and decodes the request; the body's bytes are gone when it returns.
/// A CORS preflight is answered here (`allowed`: its origin may call the endpoint), and
/// so is a request relayed to the node that serves its session.
async fn read_batch(
    broker: Broker,
    parts: Parts,
    body: Body,
    limit: usize,
    allowed: bool,
) -> Result<Decoded, Response> {
    if cors::is_preflight(&parts.method, &parts.headers) {
        return Err(cors::preflight(allowed, &parts.headers));
    }
    if websocket::is_upgrade(&parts.headers) {
        // Answered with a 101 that takes the socket over, or refused at once so that
        // clients fall back to long-polling.
        if !broker.config().transports.contains(&Transport::Websocket) {
            return Err(TransportError::WebSocketRefused.into_response());
        }
        let cookie = browser_cookie(&parts.headers);
        return Err(websocket::upgrade(&broker, &parts, cookie).into_response());
    }
    if eventsource::is_request(&parts.method, &parts.headers) {
        // A 200 whose body is the stream, or refused at once so that Faye falls back.
        if !broker.config().transports.contains(&Transport::EventSource) {
            return Err(TransportError::Disabled("eventsource").into_response());
        }
        let cookie = browser_cookie(&parts.headers);
        // Boxed: a held long-poll's future must not carry the stream's opening.
        let opened = Box::pin(eventsource::open(&broker, &parts, cookie)).await;
        return Err(opened.into_response());
    }
    let decoded = match axum::body::to_bytes(body, limit).await {
        Ok(body) => decode(parts, &body).map_err(IntoResponse::into_response)?,
        Err(error) => return Err(body_refused(&error)),
    };
    let transport = match decoded.callback {
        Some(_) => Transport::CallbackPolling,
        None => Transport::LongPolling,
    };
    if !broker.config().transports.contains(&transport) {
        let refused = TransportError::Disabled(transport.connection_type());
        return Err(refused.into_response());
    }
    // Relayed from here, the future that holds the request until its answer is this one,
    // not a parked connect's.
    let via = via(&decoded);
    if let Some(node) = broker.relay_target(&decoded.batch, via.hops) {
        let cookie = decoded.cookie.as_deref();
        if let Some(exchange) = Exchange::relay(&broker, node, &decoded.batch, via, cookie).await {
            return Err(match &decoded.callback {
                Some(callback) => callback_polling::respond(exchange, callback),
                None => long_polling::respond(exchange),
            });
        }
    }
    Ok(decoded)
}

/// The answer to a body that could not be read: 413 over the limit (the HTTP/1 server
/// already refuses those by their length), 400 otherwise.
fn body_refused(error: &axum::Error) -> Response {
    let too_large = std::error::Error::source(error)
        .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
    let status = if too_large {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    crate::metrics::refused_early(crate::metrics::refusal_for_status(status.as_u16()));
    (status, format!("cannot read the request body: {error}\n")).into_response()
}

/// What a Bayeux request carries once decoded.
pub(crate) struct Decoded {
    /// Its messages.
    pub batch: Vec<Message>,
    /// Its HTTP version.
    pub version: Version,
    /// Its `BAYEUX_BROWSER` cookie.
    pub cookie: Option<String>,
    /// The callback of a callback-polling request.
    pub callback: Option<String>,
    /// What another node that relayed it says of it.
    pub relayed: Option<relay::Relayed>,
}

fn decode(parts: Parts, body: &[u8]) -> Result<Decoded, NotABatch> {
    let Parts {
        method,
        version,
        uri,
        headers,
        ..
    } = parts;
    let cookie = browser_cookie(&headers);
    let relayed = relay::Relayed::of(&headers);
    let query = uri.query().unwrap_or_default().as_bytes();
    let decoded = match method {
        Method::POST => long_polling::decode_post(&headers, body).map(|batch| (batch, None)),
        Method::GET => match callback_polling::callback_param(query) {
            Some(callback) => callback_polling::decode(callback, query)
                .map(|(callback, batch)| (batch, Some(callback))),
            None => long_polling::decode_get(query).map(|batch| (batch, None)),
        },
        // Preflights with an Origin were answered above.
        Method::OPTIONS => return Err(NotABatch::Options),
        _ => return Err(NotABatch::Method),
    };
    match decoded {
        Ok((batch, callback)) => Ok(Decoded {
            batch,
            version,
            cookie,
            callback,
            relayed,
        }),
        Err(error) => Err(NotABatch::Refused(error)),
    }
}

/// A request to the Bayeux path that carries no batch.
enum NotABatch {
    /// An `OPTIONS` without CORS preflight headers: the allowed methods.
    Options,
    /// Any method but GET, POST and OPTIONS.
    Method,
    /// A GET or POST that is not a Bayeux request.
    Refused(TransportError),
}

impl IntoResponse for NotABatch {
    fn into_response(self) -> Response {
        let allow = [(header::ALLOW, "GET, POST, OPTIONS")];
        match self {
            NotABatch::Options => (StatusCode::OK, allow).into_response(),
            NotABatch::Method => (StatusCode::METHOD_NOT_ALLOWED, allow).into_response(),
            NotABatch::Refused(error) => error.into_response(),
        }
    }
}

/// How a request came (what the broker needs of its transport, and how many nodes
/// relayed it): what its relay header says, or else what it is.
fn via(request: &Decoded) -> Via {
    request.relayed.unwrap_or(Via {
        hops: 0,
        connect_only: request.callback.is_some(),
        multiplexed: request.version >= Version::HTTP_2,
    })
}

/// The part of a broker answer a transport envelopes: the messages, or a superseded
/// connect, plus the cookie to set.
pub(crate) struct Exchange {
    outcome: Outcome,
    set_cookie: Option<HeaderValue>,
}

impl Exchange {
    /// Runs a request's batch through the broker, for a request with this
    /// `BAYEUX_BROWSER` cookie that came `via` a transport.
    pub(crate) async fn run(
        broker: &Broker,
        batch: Vec<Message>,
        cookie: Option<String>,
        via: Via,
    ) -> Exchange {
        let Via {
            connect_only,
            multiplexed,
            ..
        } = via;
        // A browser gets its id with its first handshake.
        let new_browser = cookie.is_none()
            && batch
                .iter()
                .any(|m| m.channel.as_deref() == Some("/meta/handshake"));
        let ctx = RequestContext {
            browser_id: cookie.or_else(|| new_browser.then(new_browser_id)),
            multiplexed,
            connect_only,
            transport: if connect_only {
                crate::metrics::Transport::CallbackPolling
            } else {
                crate::metrics::Transport::LongPolling
            },
        };
        let outcome = broker.handle(batch, &ctx).await;
        let handshake_succeeded = matches!(&outcome, Outcome::Reply(r) if r.handshake_succeeded);
        let set_cookie = match ctx.browser_id.as_deref() {
            Some(id) if new_browser && handshake_succeeded => {
                browser_set_cookie(id, broker.config())
            }
            _ => None,
        };
        Exchange {
            outcome,
            set_cookie,
        }
    }

    /// Relays the batch to `node`, which serves its session. `None`: that node could not
    /// be reached, so nothing was sent, and the request is served here.
    async fn relay(
        broker: &Broker,
        node: std::sync::Arc<str>,
        batch: &[Message],
        via: Via,
        cookie: Option<&str>,
    ) -> Option<Exchange> {
        let onward = Via {
            hops: via.hops + 1,
            ..via
        };
        let outcome = match relay::send(node, broker.config(), batch, onward, cookie).await {
            Ok(outcome) => {
                broker.metrics().relayed(true);
                outcome
            }
            Err(error @ relay::RelayError::Unreachable { .. }) => {
                tracing::debug!(%error, "serving the request here");
                return None;
            }
            Err(error) => {
                broker.metrics().relayed(false);
                tracing::warn!(%error, "relayed request unanswered");
                Outcome::Reply(broker.unavailable(batch))
            }
        };
        Some(Exchange {
            outcome,
            set_cookie: None,
        })
    }

    /// Writes the reply with `encode` as the body and `content_type`; a superseded connect
    /// becomes an empty HTTP 500, as CometD answers it.
    pub(crate) fn respond(
        self,
        content_type: &'static str,
        encode: impl FnOnce(&[Bytes]) -> Vec<u8>,
    ) -> Response {
        let reply = match self.outcome {
            Outcome::Reply(reply) => reply,
            Outcome::Superseded => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
        let mut response = Response::new(axum::body::Body::from(encode(&reply.messages)));
        let out = response.headers_mut();
        out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        out.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store"),
        );
        if let Some(cookie) = self.set_cookie {
            out.insert(header::SET_COOKIE, cookie);
        }
        response
    }
}

/// Name of the cookie that identifies a browser across its tabs (BAYEUX.md 4.7).
pub const BROWSER_COOKIE: &str = "BAYEUX_BROWSER";

/// Why a request was refused before reaching the broker. Each is an HTTP 4xx with a
/// plain-text explanation; the broker and every other client are unaffected.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The body or `message` parameter is not a Bayeux batch.
    #[error("bad Bayeux request: {0}")]
    Decode(#[from] DecodeError),
    /// A websocket upgrade while that transport is not offered; fails fast so clients
    /// fall back to long-polling at once.
    #[error("the websocket transport is not enabled on this server; use long-polling")]
    WebSocketRefused,
    /// A request of a transport that is not enabled (`--transports`).
    #[error("the {0} transport is not enabled on this server")]
    Disabled(&'static str),
    /// A GET with no `message` parameter.
    #[error("a GET request must carry a message parameter")]
    NoMessage,
    /// A `jsonp` callback that is not a dotted JavaScript identifier path of at most 128
    /// characters; it is refused rather than written into a script.
    #[error("invalid jsonp callback name")]
    BadCallback,
}

impl IntoResponse for TransportError {
    fn into_response(self) -> Response {
        tracing::debug!(error = %self, "request refused");
        crate::metrics::refused_early(crate::metrics::Refusal::BadRequest);
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// Decodes a POST body according to its Content-Type (BAYEUX.md 4.2): JSON for
/// `application/json` and `text/json`; `message=` parameters for form bodies; and for
/// `text/plain`, no type or anything else, form when the body starts with `message=`.
pub fn decode_body(content_type: Option<&str>, body: &[u8]) -> Result<Vec<Message>, DecodeError> {
    let mime = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let form = match mime.as_str() {
        "application/x-www-form-urlencoded" => true,
        "application/json" | "text/json" => false,
        _ => body.starts_with(b"message="),
    };
    if form {
        decode_form(body)
    } else {
        let mut batch = Vec::new();
        decode_batch(body, &mut batch)?;
        Ok(batch)
    }
}

/// Decodes every `message` parameter of a form body or query string, in order, into one
/// batch. Other parameters are ignored.
pub fn decode_form(form: &[u8]) -> Result<Vec<Message>, DecodeError> {
    let mut batch = Vec::new();
    for (key, value) in form_urlencoded::parse(form) {
        if key == "message" {
            decode_batch(value.as_bytes(), &mut batch)?;
        }
    }
    if batch.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(batch)
}

/// Joins serialized messages into one JSON array.
pub fn json_array(messages: &[Bytes]) -> Vec<u8> {
    let size = messages.iter().map(Bytes::len).sum::<usize>() + messages.len() + 2;
    let mut body = Vec::with_capacity(size);
    body.push(b'[');
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(message);
    }
    body.push(b']');
    body
}

/// The `BAYEUX_BROWSER` cookie of a request, if it has a sane one.
pub fn browser_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == BROWSER_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_string)
}

/// A fresh browser id: 80 random bits in base 36.
pub fn new_browser_id() -> String {
    let mut n: u128 = rand::random::<u128>() >> 48;
    let mut id = Vec::with_capacity(16);
    while n > 0 || id.is_empty() {
        id.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    String::from_utf8(id).unwrap_or_default()
}

/// The `Set-Cookie` value that gives a browser its id, with the configured attributes.
pub fn browser_set_cookie(id: &str, config: &Config) -> Option<HeaderValue> {
    let same_site = match config.cookie_same_site {
        SameSite::Lax => "Lax",
        SameSite::Strict => "Strict",
        SameSite::None => "None",
    };
    let secure = if config.cookie_secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{BROWSER_COOKIE}={id}; Path=/; HttpOnly; SameSite={same_site}{secure}"
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_decoded_by_content_type() {
        let json = br#"[{"channel":"/a","id":"1"}]"#;
        let form = b"message=%5B%7B%22channel%22%3A%22%2Fa%22%7D%5D&message=%7B%22channel%22%3A%22%2Fb%22%7D";
        for ty in [
            Some("application/json"),
            Some("application/json;charset=UTF-8"),
            Some("Application/JSON ; charset=utf-8"),
            Some("text/json"),
            Some("text/plain;charset=UTF-8"),
            None,
        ] {
            assert_eq!(decode_body(ty, json).expect("json").len(), 1, "{ty:?}");
        }
        for ty in [
            Some("application/x-www-form-urlencoded"),
            Some("text/plain;charset=UTF-8"),
            None,
        ] {
            let batch = decode_body(ty, form).expect("form");
            let channels: Vec<_> = batch.iter().map(|m| m.channel.as_deref()).collect();
            assert_eq!(channels, vec![Some("/a"), Some("/b")], "{ty:?}");
        }
        assert!(decode_body(Some("application/x-www-form-urlencoded"), b"other=1").is_err());
        assert!(decode_body(Some("application/json"), b"message=[]").is_err());
    }

    /// A parked connect holds this future (boxed by axum) for its whole wait: keep it
    /// small. It was 1,152 bytes while it kept the request's parts and body future.
    #[tokio::test]
    async fn the_endpoint_future_stays_small() {
        let broker = crate::server::broker(Config::default()).expect("broker");
        let request = Request::new(Body::empty());
        let answer = endpoint(State(broker), request);
        let size = std::mem::size_of_val(&answer);
        assert!(size <= 800, "the endpoint future is {size} bytes");
    }

    #[test]
    fn arrays_are_joined() {
        assert_eq!(
            json_array(&[Bytes::from_static(b"{}"), Bytes::from_static(b"1")]),
            b"[{},1]"
        );
    }

    #[test]
    fn browser_cookie_is_found_among_others_and_sanitized() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; BAYEUX_BROWSER=abc123 ; b=2"),
        );
        assert_eq!(browser_cookie(&headers).as_deref(), Some("abc123"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("BAYEUX_BROWSER=<script>"),
        );
        assert_eq!(browser_cookie(&headers), None);
        let id = new_browser_id();
        assert!(
            id.len() >= 10 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id}"
        );
        assert_ne!(id, new_browser_id());
    }
}
