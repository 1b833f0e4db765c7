//! CORS for cross-origin long-polling (BAYEUX.md 4.9).
//!
//! The request's `Origin` is echoed (never `*`: clients send credentials), a preflight is
//! answered with the headers the browser asked for, and an origin outside the configured
//! allow-list gets no CORS header at all — nor does a request without `Origin`.

//! They are plain functions called by [`super::endpoint`] rather than a middleware
//! layer: axum boxes a middleware's future, and that box (over 1 KiB) would be held by
//! every parked `/meta/connect`.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The request's origin, if `allowed` (empty: every origin) lets it call the endpoint.
pub fn allowed_origin(allowed: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    (allowed.is_empty() || allowed.iter().any(|o| o == text)).then(|| origin.clone())
}

/// Whether a request is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight: the methods and the headers the browser asked for, cached
/// for a day (the caller adds [`allow`]); for a refused origin, an empty answer the
/// browser will refuse.
pub fn preflight(allowed: bool, headers: &HeaderMap) -> Response {
    let mut response = StatusCode::OK.into_response();
    if !allowed {
        return response;
    }
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

/// Lets `origin` read `response`, credentials included.
pub fn allow(response: &mut Response, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}
