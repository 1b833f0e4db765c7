//! Relaying a request to the node of a cluster that serves its session.
//!
//! Behind a load balancer without stickiness, a long-polling client's requests land on
//! any node. A node that does not serve the request's session could claim it through the
//! engine (a Redis round trip and the session's whole state moving), and with round robin
//! that would happen at nearly every connect, that is for nearly every delivery. Instead
//! it relays the request, decoded and re-encoded as a long-polling POST, to the node that
//! serves the session ([`crate::Broker::relay_target`] says which), over one HTTP/2
//! connection per pair of nodes, and passes the answer back. Only a node that cannot be
//! reached makes the request fall back to a claim.
//!
//! The relayed request carries [`RELAY_HEADER`]: how many nodes relayed it (so it is
//! relayed at most [`crate::broker::MAX_RELAY_HOPS`] times), and what the node needs of
//! the original request (its transport and whether it was multiplexed). A client that
//! sends the header itself only keeps its request from being relayed: the node then
//! claims the session as it would without relays.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::value::RawValue;

use crate::broker::{Outcome, ReplyBatch};
use crate::config::Config;
use crate::protocol::Message;

/// The header of a relayed request: `<hops> <lp|cp> <h1|h2>`.
pub const RELAY_HEADER: &str = "x-halley-relay";

/// How often an idle connection to another node is pinged, and how long a ping may take:
/// a node that vanished without closing its socket fails the requests waiting on it.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer may take beyond the longest a connect is held.
const ANSWER_MARGIN: Duration = Duration::from_secs(10);

/// How a request came, as far as the broker cares: what a relayed request's header says
/// of the original one (and what a node makes of a request it received itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// How many nodes relayed it so far.
    pub hops: u8,
    /// It came over callback-polling: deliveries ride only on connect replies.
    pub connect_only: bool,
    /// It came over HTTP/2 or later (the per-browser long-poll limit does not apply).
    pub multiplexed: bool,
}

impl Relayed {
    /// The relay header of a request, if it has a well-formed one.
    pub fn of(headers: &HeaderMap) -> Option<Relayed> {
        let value = headers.get(RELAY_HEADER)?.to_str().ok()?;
        let mut parts = value.split(' ');
        let hops = parts.next()?.parse().ok()?;
        let connect_only = match parts.next()? {
            "cp" => true,
            "lp" => false,
            _ => return None,
        };
        let multiplexed = match parts.next()? {
            "h2" => true,
            "h1" => false,
            _ => return None,
        };
        Some(Relayed {
            hops,
            connect_only,
            multiplexed,
        })
    }

    fn header(&self) -> HeaderValue {
        let transport = if self.connect_only { "cp" } else { "lp" };
        let version = if self.multiplexed { "h2" } else { "h1" };
        HeaderValue::from_str(&format!("{} {transport} {version}", self.hops))
            .unwrap_or_else(|_| HeaderValue::from_static("1 lp h1"))
    }
}

/// Why a relay did not bring an answer back.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The node could not be reached: nothing was sent, so the request may be served
    /// here instead.
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// The node's address.
        node: Arc<str>,
        /// What failed.
        reason: String,
    },
    /// The request was sent, but no usable answer came back: what it did there is unknown.
    #[error("relay to node {node} failed: {reason}")]
    Failed {
        /// The node's address.
        node: Arc<str>,
        /// What failed.
        reason: String,
    },
}

type NodeClient = Client<HttpConnector, Full<Bytes>>;

/// The one client every relay of this process goes through: HTTP/2 with prior knowledge,
/// so all of them to one node share a connection.
fn client() -> &'static NodeClient {
    static CLIENT: OnceLock<NodeClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(PING_INTERVAL)
            .http2_keep_alive_timeout(PING_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            .build(connector)
    })
}

/// Sends `batch` to the node at `node` as `relayed`, with the browser's cookie, and reads
/// its answer back as the broker's outcome there.
pub async fn send(
    node: Arc<str>,
    config: &Config,
    batch: &[Message],
    relayed: Relayed,
    cookie: Option<&str>,
) -> Result<Outcome, RelayError> {
    let failed = |reason: String| RelayError::Failed {
        node: node.clone(),
        reason,
    };
    let body = serde_json::to_vec(batch).map_err(|e| failed(e.to_string()))?;
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("{node}{}", config.path))
        .header(header::CONTENT_TYPE, "application/json")
        .header(RELAY_HEADER, relayed.header());
    if let Some(cookie) = cookie {
        request = request.header(
            header::COOKIE,
            format!("{}={cookie}", super::BROWSER_COOKIE),
        );
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| failed(e.to_string()))?;
    let wait = Duration::from_millis(config.timeout) + ANSWER_MARGIN;
    let response = match tokio::time::timeout(wait, client().request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) if error.is_connect() => {
            return Err(RelayError::Unreachable {
                node: node.clone(),
                reason: error.to_string(),
            });
        }
        Ok(Err(error)) => return Err(failed(error.to_string())),
        Err(_) => return Err(failed(format!("no answer in {wait:?}"))),
    };
    let status = response.status();
    // A reply holds up to `max_response_bytes` of deliveries, or one larger delivery (at
    // most a request body), and the replies to the batch.
    let limit = config.max_response_bytes + config.max_body_bytes + 65_536;
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?
        .to_bytes();
    match status {
        StatusCode::OK => Ok(Outcome::Reply(ReplyBatch {
            messages: split_array(&body).ok_or_else(|| failed("not a JSON array".into()))?,
            handshake_succeeded: false,
        })),
        // A newer connect superseded this one there.
        StatusCode::INTERNAL_SERVER_ERROR => Ok(Outcome::Superseded),
        status => Err(failed(format!("answered {status}"))),
    }
}

/// The elements of a JSON array, each a slice of `body` (nothing copied). `None` when
/// the body is not an array of at least one element.
fn split_array(body: &Bytes) -> Option<Vec<Bytes>> {
    let elements: Vec<&RawValue> = serde_json::from_slice(body).ok()?;
    let start = body.as_ptr() as usize;
    let messages: Vec<Bytes> = elements
        .iter()
        .map(|raw| {
            let at = raw.get().as_ptr() as usize - start;
            body.slice(at..at + raw.get().len())
        })
        .collect();
    (!messages.is_empty()).then_some(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_reads_back() {
        for relayed in [
            Relayed {
                hops: 1,
                connect_only: false,
                multiplexed: false,
            },
            Relayed {
                hops: 2,
                connect_only: true,
                multiplexed: true,
            },
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(RELAY_HEADER, relayed.header());
            assert_eq!(Relayed::of(&headers), Some(relayed));
        }
        let mut headers = HeaderMap::new();
        for bad in ["", "x lp h1", "1 ws h1", "1 lp", "300 lp h1"] {
            headers.insert(RELAY_HEADER, HeaderValue::from_static(bad));
            assert_eq!(Relayed::of(&headers), None, "{bad:?}");
        }
    }

    #[test]
    fn an_answer_splits_into_its_messages_without_copies() {
        let body = Bytes::from_static(br#"[{"channel":"/a","data":[1,2]}, {"id":"2"}]"#);
        let messages = split_array(&body).expect("an array");
        assert_eq!(messages.len(), 2);
        assert_eq!(&messages[0][..], br#"{"channel":"/a","data":[1,2]}"#);
        assert_eq!(&messages[1][..], br#"{"id":"2"}"#);
        assert_eq!(split_array(&Bytes::from_static(b"[]")), None);
        assert_eq!(split_array(&Bytes::from_static(b"{}")), None);
    }
}
