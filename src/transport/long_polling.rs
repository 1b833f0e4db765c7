//! The `long-polling` transport: JSON (or form-encoded) POSTs, and GETs with `message=`
//! parameters, answered with a JSON array (BAYEUX.md 4.2 - 4.4).

use axum::http::{HeaderMap, Version, header};
use axum::response::{IntoResponse, Response};

use super::{Exchange, TransportError, decode_body, decode_form, json_array};
use crate::broker::Broker;
use crate::protocol::DecodeError;

const CONTENT_TYPE: &str = "application/json;charset=UTF-8";

/// A POST: the body is decoded by its Content-Type.
pub async fn post(broker: &Broker, version: Version, headers: &HeaderMap, body: &[u8]) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match decode_body(content_type, body) {
        Ok(batch) => Exchange::run(broker, batch, version, headers, false)
            .await
            .respond(CONTENT_TYPE, json_array),
        Err(error) => TransportError::from(error).into_response(),
    }
}

/// A GET whose query carries `message` parameters and no `jsonp` callback.
pub async fn get(broker: &Broker, version: Version, headers: &HeaderMap, query: &[u8]) -> Response {
    match decode_form(query) {
        Ok(batch) => Exchange::run(broker, batch, version, headers, false)
            .await
            .respond(CONTENT_TYPE, json_array),
        Err(DecodeError::Empty) => TransportError::NoMessage.into_response(),
        Err(error) => TransportError::from(error).into_response(),
    }
}
