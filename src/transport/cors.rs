//! CORS for cross-origin long-polling (BAYEUX.md 4.9).
//!
//! The request's `Origin` is echoed (never `*`: clients send credentials), a preflight is
//! answered with the headers the browser asked for, and an origin outside the configured
//! allow-list gets no CORS header at all — nor does a request without `Origin`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Which origins may call the endpoint.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    /// Empty: every origin.
    allowed: Arc<[String]>,
}

impl CorsPolicy {
    /// A policy allowing `allowed` origins, or every origin when it is empty.
    pub fn new(allowed: &[String]) -> Self {
        CorsPolicy {
            allowed: allowed.into(),
        }
    }

    /// The request's origin, if it is allowed.
    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        (self.allowed.is_empty() || self.allowed.iter().any(|o| o == text)).then(|| origin.clone())
    }
}

/// Middleware: answers preflights and adds CORS headers to responses for allowed origins.
pub async fn cors(State(policy): State<CorsPolicy>, request: Request, next: Next) -> Response {
    let origin = policy.allowed_origin(request.headers());
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let Some(origin) = origin else {
        if preflight {
            // Not allowed: an empty answer the browser will refuse.
            return StatusCode::OK.into_response();
        }
        return next.run(request).await;
    };
    let mut response = if preflight {
        let mut response = StatusCode::OK.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        if let Some(requested) = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
        }
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}
