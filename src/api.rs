//! The backend HTTP API under `/api`, apart from the Bayeux path: services in any
//! language publish, read statistics and disconnect sessions with a bearer key.
//!
//! - `POST /api/publish` — `{channel, data, ext?}` or an array of them; answers how many
//!   sessions each message was queued for.
//! - `GET /api/stats` — sessions, subscriptions and message counters.
//! - `POST /api/disconnect` — `{clientId}`; the session's held connect is told to stop.
//! - `GET /metrics` — the Prometheus exposition (the `metrics` right).
//! - `GET /api/admin/snapshot` — what the admin page shows (the `admin` right); the page
//!   itself, `/admin`, is mounted only when some key has that right.
//!
//! The API is only mounted when at least one key is configured.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::protocol::BayeuxError;
use subtle::ConstantTimeEq;

use crate::admin::{self, History};
use crate::broker::Broker;
use crate::config::{ApiKey, ApiRight};
use crate::metrics::{Metrics, Refusal};
use crate::protocol::{ChannelName, Message, Publisher};

/// Why an API request failed; each maps to a status and a JSON `{"error": …}` body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer` header, or an unknown key.
    #[error("missing or unknown API key: send Authorization: Bearer <key>")]
    Unauthorized,
    /// The key does not grant this operation.
    #[error("this API key may not {0:?}")]
    Forbidden(ApiRight),
    /// The body is not what the endpoint takes.
    #[error("{0}")]
    BadRequest(String),
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The cluster's engine cannot be reached now; try again.
    #[error("{0}")]
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        };
        let mut response = (status, Json(json!({"error": self.to_string()}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[derive(Clone)]
struct ApiState {
    broker: Broker,
    keys: Arc<[ApiKey]>,
    metrics: Arc<Metrics>,
    history: Arc<History>,
}

impl ApiState {
    /// Checks the bearer key and that it grants `right`; counts a refusal.
    fn authorize(&self, headers: &HeaderMap, right: ApiRight) -> Result<(), ApiError> {
        let verdict = self.check_key(headers, right);
        match &verdict {
            Err(ApiError::Unauthorized) => self.metrics.refused(Refusal::ApiKey),
            Err(_) => self.metrics.refused(Refusal::ApiRight),
            Ok(()) => {}
        }
        verdict
    }

    /// Counts a request refused as bad input and passes its error on.
    fn bad_request(&self, why: String) -> ApiError {
        self.metrics.refused(Refusal::BadRequest);
        ApiError::BadRequest(why)
    }

    fn check_key(&self, headers: &HeaderMap, right: ApiRight) -> Result<(), ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        let key = self
            .keys
            .iter()
            .find(|k| bool::from(k.key.as_bytes().ct_eq(presented.as_bytes())))
            .ok_or(ApiError::Unauthorized)?;
        if key.rights.contains(&right) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(right))
        }
    }
}

/// The API routes, or `None` when no key is configured. `metrics` and `history` are
/// the server's, for `/metrics` and the admin snapshot.
pub fn routes(broker: &Broker, metrics: &Arc<Metrics>, history: &Arc<History>) -> Option<Router> {
    let keys = &broker.config().api_keys;
    if keys.is_empty() {
        return None;
    }
    let admin_page = keys.iter().any(|k| k.rights.contains(&ApiRight::Admin));
    let state = ApiState {
        broker: broker.clone(),
        keys: keys.clone().into(),
        metrics: metrics.clone(),
        history: history.clone(),
    };
    let mut router = Router::new()
        .route("/api/publish", post(publish))
        .route("/api/stats", get(stats))
        .route("/api/disconnect", post(disconnect))
        .route("/metrics", get(keyed_metrics))
        .route("/api/admin/snapshot", get(admin_snapshot))
        .with_state(state);
    if admin_page {
        router = router.merge(admin::page_routes());
    }
    Some(router)
}

/// `/metrics` alone, without a key, for the `--metrics-listen` listener.
pub fn metrics_routes(broker: &Broker, metrics: &Arc<Metrics>) -> Router {
    let (broker, metrics) = (broker.downgrade(), metrics.clone());
    Router::new().route(
        "/metrics",
        get(move || {
            if let Some(broker) = broker.upgrade() {
                metrics.observe_broker_totals(&broker.stats());
            }
            let answer = exposition(&metrics);
            async move { answer }
        }),
    )
}

/// The Prometheus exposition of `metrics` as a response.
fn exposition(metrics: &Metrics) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, Metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn keyed_metrics(
    State(api): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    api.authorize(&headers, ApiRight::Metrics)?;
    api.metrics.observe_broker_totals(&api.broker.stats());
    Ok(exposition(&api.metrics))
}

async fn admin_snapshot(
    State(api): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    api.authorize(&headers, ApiRight::Admin)?;
    let snapshot = admin::snapshot(&api.broker, &api.metrics, &api.history);
    let mut response = Json(snapshot).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `/health` (liveness: 200 while the process serves) and `/ready` (readiness: 503 once
/// the broker is draining, or while its engine cannot reach the cluster), unauthenticated, for container health checks and load
/// balancers.
pub fn health_routes(broker: &Broker) -> Router {
    let broker = broker.clone();
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/ready",
            get(move || {
                let draining = broker.is_shutting_down();
                let engine_ready = broker.engine().is_ready();
                async move {
                    if draining {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(json!({"status": "draining"})),
                        )
                    } else if !engine_ready {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(json!({"status": "engine unreachable"})),
                        )
                    } else {
                        (StatusCode::OK, Json(json!({"status": "ready"})))
                    }
                }
            }),
        )
}

/// Parses one `{channel, data, ext?}` item into a message the broker publishes.
fn publish_item(index: usize, item: Value) -> Result<Message, ApiError> {
    let at = |what: &str| ApiError::BadRequest(format!("message {index}: {what}"));
    let Value::Object(mut fields) = item else {
        return Err(at("must be an object {channel, data, ext?}"));
    };
    let channel = match fields.remove("channel") {
        Some(Value::String(channel)) => channel,
        _ => return Err(at("channel must be a string")),
    };
    if let Err(e) = ChannelName::for_publish(&channel, Publisher::Server) {
        return Err(at(&format!("channel {channel:?}: {e}")));
    }
    let raw = |value: Value| {
        serde_json::value::to_raw_value(&value).map_err(|e| at(&format!("unencodable value: {e}")))
    };
    let ext = match fields.remove("ext") {
        None | Some(Value::Null) => None,
        Some(ext @ Value::Object(_)) => Some(raw(ext)?),
        Some(_) => return Err(at("ext must be an object")),
    };
    if let Some(unknown) = fields.keys().find(|k| *k != "data") {
        return Err(at(&format!("unknown field {unknown:?}")));
    }
    Ok(Message {
        channel: Some(channel),
        data: Some(raw(fields.remove("data").unwrap_or(Value::Null))?),
        ext,
        ..Message::default()
    })
}

async fn publish(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    api.authorize(&headers, ApiRight::Publish)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| api.bad_request(format!("body is not JSON: {e}")))?;
    let (items, single) = match value {
        Value::Array(items) if !items.is_empty() => (items, false),
        Value::Array(_) => return Err(api.bad_request("empty array".into())),
        item => (vec![item], true),
    };
    // Validate everything first, so a bad item publishes nothing.
    let messages = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| publish_item(i, item))
        .collect::<Result<Vec<_>, _>>()
        .inspect_err(|_| api.metrics.refused(Refusal::BadRequest))?;
    let mut results = Vec::with_capacity(messages.len());
    let mut unavailable = false;
    for message in messages {
        let channel = message.channel.clone().unwrap_or_default();
        results.push(match api.broker.publish_message(message).await {
            Ok(queued) => json!({"channel": channel, "queued": queued}),
            Err(error) => {
                unavailable |= error == BayeuxError::ServerUnavailable;
                json!({"channel": channel, "error": error.to_string()})
            }
        });
    }
    let body = if single {
        results.into_iter().next().unwrap_or(Value::Null)
    } else {
        Value::Array(results)
    };
    // The engine could not carry it: the caller must retry, not assume delivery.
    let status = if unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

async fn stats(State(api): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    api.authorize(&headers, ApiRight::Stats)?;
    let s = api.broker.stats();
    let mut body = json!({
        "sessions": s.sessions,
        "subscriptions": s.subscriptions,
        "published": s.published,
        "delivered": s.delivered,
        "dropped": s.dropped,
        "held_requests": crate::server::http1::held_requests(),
    });
    // On a cluster the figures are every node's, summed, with each node listed.
    match api.broker.engine().cluster_stats().await {
        None => {}
        Some(Ok(nodes)) => {
            body["sessions"] = nodes.iter().map(|n| n.sessions).sum::<usize>().into();
            body["subscriptions"] = nodes.iter().map(|n| n.subscriptions).sum::<usize>().into();
            body["published"] = nodes.iter().map(|n| n.published).sum::<u64>().into();
            body["delivered"] = nodes.iter().map(|n| n.delivered).sum::<u64>().into();
            body["dropped"] = nodes.iter().map(|n| n.dropped).sum::<u64>().into();
            body["node"] = api.broker.node_id().into();
            body["nodes"] = serde_json::to_value(&nodes).unwrap_or_default();
        }
        Some(Err(error)) => {
            return Ok((
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": format!("cluster figures unavailable: {error}")})),
            )
                .into_response());
        }
    }
    Ok(Json(body).into_response())
}

async fn disconnect(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    api.authorize(&headers, ApiRight::Disconnect)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| api.bad_request(format!("body is not JSON: {e}")))?;
    let client_id = value
        .get("clientId")
        .and_then(Value::as_str)
        .ok_or_else(|| api.bad_request("body must be {\"clientId\": \"…\"}".into()))?;
    // On a cluster the node that serves the session disconnects it.
    let disconnected = api
        .broker
        .disconnect_anywhere(client_id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if disconnected {
        Ok(Json(json!({"disconnected": client_id})).into_response())
    } else {
        Err(ApiError::NotFound(format!("no session {client_id:?}")))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;

    const ADMIN: &str = "admin-key-0123456789";
    const STATS_ONLY: &str = "stats-key-0123456789";

    fn app() -> (Broker, Router) {
        let config = Config {
            api_keys: vec![
                ApiKey::with_all_rights(ADMIN),
                ApiKey {
                    key: STATS_ONLY.into(),
                    rights: vec![ApiRight::Stats],
                },
            ],
            ..Config::default()
        };
        let broker = crate::server::broker(config).expect("broker");
        (broker.clone(), crate::server::app(broker))
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let request = request.body(Body::from(body.to_string())).expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn keys_are_required_and_rights_enforced() {
        let (_, app) = app();
        let body = r#"{"channel":"/a","data":1}"#;
        assert_eq!(
            call(&app, "POST", "/api/publish", None, body).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(
                &app,
                "POST",
                "/api/publish",
                Some("wrong-key-0123456789"),
                body
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
        let (status, answer) = call(&app, "POST", "/api/publish", Some(STATS_ONLY), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(answer["error"].as_str().expect("error").contains("Publish"));
        assert_eq!(
            call(&app, "GET", "/api/stats", Some(STATS_ONLY), "")
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, "POST", "/api/publish", Some(ADMIN), body)
                .await
                .0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn publish_reports_recipients_and_refuses_bad_input() {
        let (broker, app) = app();
        let mut local = broker.open_local_session(None);
        local.subscribe("/stocks/*").expect("subscribe");
        let (status, answer) = call(
            &app,
            "POST",
            "/api/publish",
            Some(ADMIN),
            r#"{"channel":"/stocks/ACME","data":{"p":1},"ext":{"src":"api"}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, json!({"channel": "/stocks/ACME", "queued": 1}));
        let received = local.receive().await.expect("delivery");
        assert_eq!(
            received,
            vec![json!({"channel": "/stocks/ACME", "data": {"p": 1}, "ext": {"src": "api"}})]
        );
        let (_, answer) = call(
            &app,
            "POST",
            "/api/publish",
            Some(ADMIN),
            r#"[{"channel":"/stocks/A","data":1},{"channel":"/nobody","data":2}]"#,
        )
        .await;
        assert_eq!(
            answer,
            json!([{"channel": "/stocks/A", "queued": 1}, {"channel": "/nobody", "queued": 0}])
        );
        for bad in [
            "not json",
            "[]",
            "3",
            r#"{"data":1}"#,
            r#"{"channel":"/a//b","data":1}"#,
            r#"{"channel":"/a/*","data":1}"#,
            r#"{"channel":"/meta/connect","data":1}"#,
            r#"{"channel":"/service/echo","data":1}"#,
            r#"{"channel":"/a","data":1,"ext":5}"#,
            r#"{"channel":"/a","data":1,"clientId":"x"}"#,
            r#"[{"channel":"/stocks/B","data":1},{"channel":"bad"}]"#,
        ] {
            let (status, answer) = call(&app, "POST", "/api/publish", Some(ADMIN), bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(answer["error"].is_string(), "{bad}: {answer}");
        }
        assert_eq!(
            broker.stats().published,
            3,
            "nothing of a refused batch was published"
        );
    }

    #[tokio::test]
    async fn stats_and_disconnect() {
        let (broker, app) = app();
        let local = broker.open_local_session(None);
        local.subscribe("/x").expect("subscribe");
        let (_, stats) = call(&app, "GET", "/api/stats", Some(ADMIN), "").await;
        assert_eq!(stats["sessions"], 1);
        assert_eq!(stats["subscriptions"], 1);
        let body = json!({"clientId": local.client_id()}).to_string();
        let (status, _) = call(&app, "POST", "/api/disconnect", Some(ADMIN), &body).await;
        assert_eq!(status, StatusCode::OK);
        let (status, answer) = call(&app, "POST", "/api/disconnect", Some(ADMIN), &body).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(answer["error"].is_string());
        let (_, stats) = call(&app, "GET", "/api/stats", Some(ADMIN), "").await;
        assert_eq!(stats["sessions"], 0);
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let (broker, app) = app();
        assert_eq!(
            call(&app, "GET", "/health", None, "").await,
            (StatusCode::OK, json!({"status": "ok"}))
        );
        assert_eq!(
            call(&app, "GET", "/ready", None, "").await,
            (StatusCode::OK, json!({"status": "ready"}))
        );
        broker.shutdown();
        assert_eq!(
            call(&app, "GET", "/health", None, "").await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, "GET", "/ready", None, "").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "draining"})
            )
        );
    }

    #[tokio::test]
    async fn metrics_and_admin_need_their_rights() {
        let (broker, app) = app();
        let _local = broker.open_local_session(None);
        assert_eq!(
            call(&app, "GET", "/metrics", Some(STATS_ONLY), "").await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&app, "GET", "/api/admin/snapshot", Some(STATS_ONLY), "")
                .await
                .0,
            StatusCode::FORBIDDEN
        );
        let (status, snapshot) = call(&app, "GET", "/api/admin/snapshot", Some(ADMIN), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(snapshot["nodes"][0]["sessions"], 1);
        assert!(snapshot["nodes"][0]["history"]["t"].is_array());
        // The page is mounted because a key has the admin right; it holds no data itself.
        let request = Request::builder()
            .uri("/admin")
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let stats_only = Config {
            api_keys: vec![ApiKey {
                key: STATS_ONLY.into(),
                rights: vec![ApiRight::Stats],
            }],
            ..Config::default()
        };
        let app = crate::server::app(crate::server::broker(stats_only).expect("broker"));
        let request = Request::builder()
            .uri("/admin")
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn the_api_is_off_without_keys() {
        let broker = crate::server::broker(Config::default()).expect("broker");
        let app = crate::server::app(broker);
        let (status, _) = call(&app, "GET", "/api/stats", Some(ADMIN), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
