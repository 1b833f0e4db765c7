//! The `long-polling` transport: JSON (or form-encoded) POSTs, and GETs with `message=`
//! parameters, answered with a JSON array (BAYEUX.md 4.2 - 4.4).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{
    TransportError, browser_cookie, browser_set_cookie, decode_body, decode_form,
    is_websocket_upgrade, json_array, new_browser_id,
};
use crate::broker::{Broker, Outcome, RequestContext};
use crate::protocol::Message;

/// Handles every request to the Bayeux path (and anything below it: CometD JS appends
/// `/handshake`, `/connect`… to the URL).
pub async fn endpoint(
    State(broker): State<Broker>,
    method: Method,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let batch = match method {
        Method::POST => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            decode_body(content_type, &body).map_err(TransportError::from)
        }
        Method::GET if is_websocket_upgrade(&headers) => Err(TransportError::WebSocketRefused),
        Method::GET => match uri.query() {
            Some(query) => decode_form(query.as_bytes()).map_err(|e| match e {
                crate::protocol::DecodeError::Empty => TransportError::NoMessage,
                other => other.into(),
            }),
            None => Err(TransportError::NoMessage),
        },
        Method::OPTIONS => return options(),
        _ => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "GET, POST, OPTIONS")],
            )
                .into_response();
        }
    };
    match batch {
        Ok(batch) => respond(&broker, batch, version, &headers).await,
        Err(error) => error.into_response(),
    }
}

/// Runs a batch through the broker and writes the JSON answer.
async fn respond(
    broker: &Broker,
    batch: Vec<Message>,
    version: Version,
    headers: &HeaderMap,
) -> Response {
    let cookie = browser_cookie(headers);
    // A browser gets its id with its first handshake.
    let new_browser = cookie.is_none()
        && batch
            .iter()
            .any(|m| m.channel.as_deref() == Some("/meta/handshake"));
    let ctx = RequestContext {
        browser_id: cookie.or_else(|| new_browser.then(new_browser_id)),
        multiplexed: version >= Version::HTTP_2,
    };
    let reply = match broker.handle(batch, &ctx).await {
        Outcome::Reply(reply) => reply,
        Outcome::Superseded => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let mut response = Response::new(Body::from(json_array(&reply.messages)));
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    if new_browser
        && reply.handshake_succeeded
        && let Some(cookie) = ctx.browser_id.as_deref().and_then(browser_set_cookie)
    {
        out.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// Same-origin clients never preflight; cross-origin support answers these in full.
fn options() -> Response {
    (StatusCode::OK, [(header::ALLOW, "GET, POST, OPTIONS")]).into_response()
}
