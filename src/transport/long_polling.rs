//! The `long-polling` transport: JSON (or form-encoded) POSTs, and GETs with `message=`
//! parameters, answered with a JSON array (BAYEUX.md 4.2 - 4.4).

use axum::http::{HeaderMap, header};
use axum::response::Response;

use super::{Exchange, TransportError, decode_body, decode_form, json_array};
use crate::protocol::{DecodeError, Message};

const CONTENT_TYPE: &str = "application/json;charset=UTF-8";

/// Decodes a POST body by its Content-Type.
pub fn decode_post(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Message>, TransportError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    Ok(decode_body(content_type, body)?)
}

/// Decodes a GET whose query carries `message` parameters and no `jsonp` callback.
pub fn decode_get(query: &[u8]) -> Result<Vec<Message>, TransportError> {
    match decode_form(query) {
        Ok(batch) => Ok(batch),
        Err(DecodeError::Empty) => Err(TransportError::NoMessage),
        Err(error) => Err(error.into()),
    }
}

/// The broker's answer as one JSON array.
pub(crate) fn respond(exchange: Exchange) -> Response {
    exchange.respond(CONTENT_TYPE, json_array)
}
