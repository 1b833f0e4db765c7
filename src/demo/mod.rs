//! The demo chat served at `/`: a page, the CometD browser client it uses, and the
//! server-side presence service that tells each room who is in it.
//!
//! Presence lives on the server because only the server knows when a session ends (a
//! closed tab never says goodbye): `/service/chat/join` and `/service/chat/leave` record
//! membership, a closed session leaves every room, and each change is published on
//! `/chat/<room>/members`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::broker::{Broker, ServiceCall, ServiceReply, SessionEvent, WeakBroker};

/// Rooms with members, at most; joins beyond are refused.
const MAX_ROOMS: usize = 100;
/// Members per room, at most.
const MAX_MEMBERS: usize = 200;
/// Longest room or member name, in characters.
const MAX_NAME: usize = 32;

const INDEX: &str = include_str!("index.html");
const CHAT_JS: &str = include_str!("chat.js");

/// The CometD 9 browser client (npm `cometd`, Apache-2.0), vendored so the demo works
/// offline and from a single binary.
const COMETD: &[(&str, &str)] = &[
    ("cometd.js", include_str!("cometd/cometd.js")),
    ("Client.js", include_str!("cometd/Client.js")),
    ("Extension.js", include_str!("cometd/Extension.js")),
    ("AckExtension.js", include_str!("cometd/AckExtension.js")),
    (
        "BinaryExtension.js",
        include_str!("cometd/BinaryExtension.js"),
    ),
    (
        "ReloadExtension.js",
        include_str!("cometd/ReloadExtension.js"),
    ),
    (
        "TimeStampExtension.js",
        include_str!("cometd/TimeStampExtension.js"),
    ),
    (
        "TimeSyncExtension.js",
        include_str!("cometd/TimeSyncExtension.js"),
    ),
    ("Transport.js", include_str!("cometd/Transport.js")),
    (
        "TransportRegistry.js",
        include_str!("cometd/TransportRegistry.js"),
    ),
    (
        "RequestTransport.js",
        include_str!("cometd/RequestTransport.js"),
    ),
    (
        "LongPollingTransport.js",
        include_str!("cometd/LongPollingTransport.js"),
    ),
    (
        "CallbackPollingTransport.js",
        include_str!("cometd/CallbackPollingTransport.js"),
    ),
    (
        "WebSocketTransport.js",
        include_str!("cometd/WebSocketTransport.js"),
    ),
    ("Z85.js", include_str!("cometd/Z85.js")),
    ("LICENSE", include_str!("cometd/LICENSE")),
];

/// The demo's routes, for a broker whose Bayeux endpoint is at `bayeux_path`.
pub fn routes(bayeux_path: &str) -> Router {
    let index = INDEX.replace("{{BAYEUX_PATH}}", bayeux_path);
    Router::new()
        .route("/", get(move || async move { Html(index) }))
        .route("/demo/chat.js", get(|| async { javascript(CHAT_JS) }))
        .route("/demo/cometd/{file}", get(cometd_file))
}

async fn cometd_file(Path(file): Path<String>) -> Response {
    match COMETD.iter().find(|(name, _)| *name == file) {
        Some((_, text)) => javascript(text),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn javascript(text: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript;charset=UTF-8")],
        text,
    )
        .into_response()
}

/// Room name → (clientId → member name).
type Rooms = HashMap<String, BTreeMap<String, String>>;

/// Registers the presence service on `broker`.
pub fn install(broker: &Broker) {
    let rooms: Arc<Mutex<Rooms>> = Arc::default();
    let weak = broker.downgrade();

    let (r, w) = (rooms.clone(), weak.clone());
    let join = move |call: &ServiceCall<'_>| -> ServiceReply {
        let data = call.data_value();
        let room = data
            .get("room")
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or_default();
        let name = data
            .get("name")
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or_default();
        if !valid_room(room) || name.is_empty() || name.chars().count() > MAX_NAME {
            return ServiceReply::Failure(
                json!({"error": "room must be 1-32 letters, digits, - or _; name 1-32 characters"}),
            );
        }
        let members = {
            let mut rooms = r.lock().unwrap_or_else(|p| p.into_inner());
            if !rooms.contains_key(room) && rooms.len() >= MAX_ROOMS {
                return ServiceReply::Failure(json!({"error": "too many rooms"}));
            }
            let members = rooms.entry(room.to_string()).or_default();
            if !members.contains_key(call.client_id) && members.len() >= MAX_MEMBERS {
                return ServiceReply::Failure(json!({"error": "room is full"}));
            }
            members.insert(call.client_id.to_string(), name.to_string());
            names(members)
        };
        announce(&w, room, &members);
        ServiceReply::Answer(json!({"room": room, "members": members}))
    };
    let (r, w) = (rooms.clone(), weak.clone());
    let leave = move |call: &ServiceCall<'_>| -> ServiceReply {
        let data = call.data_value();
        if let Some(room) = data.get("room").and_then(Value::as_str) {
            leave_rooms(&r, &w, call.client_id, Some(room));
        }
        ServiceReply::Answer(json!({}))
    };
    // Literal, valid service names: registration cannot fail.
    let _ = broker.register_service("/service/chat/join", join);
    let _ = broker.register_service("/service/chat/leave", leave);
    broker.on_session_event(move |event| {
        if let SessionEvent::Closed { client_id, .. } = event {
            leave_rooms(&rooms, &weak, client_id, None);
        }
    });
}

fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_NAME
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn names(members: &BTreeMap<String, String>) -> Vec<String> {
    let mut names: Vec<String> = members.values().cloned().collect();
    names.sort();
    names
}

/// Removes `client_id` from `only` or from every room, announcing each change.
fn leave_rooms(rooms: &Mutex<Rooms>, broker: &WeakBroker, client_id: &str, only: Option<&str>) {
    let changed: Vec<(String, Vec<String>)> = {
        let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        rooms.retain(|room, members| {
            if only.is_none_or(|o| o == room) && members.remove(client_id).is_some() {
                changed.push((room.clone(), names(members)));
            }
            !members.is_empty()
        });
        changed
    };
    for (room, members) in changed {
        announce(broker, &room, &members);
    }
}

fn announce(broker: &WeakBroker, room: &str, members: &[String]) {
    if let Some(broker) = broker.upgrade() {
        let channel = format!("/chat/{room}/members");
        if let Err(error) = broker.publish(&channel, &json!({"room": room, "members": members})) {
            tracing::warn!(%error, %channel, "presence update not published");
        }
    }
}
