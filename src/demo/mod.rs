//! The demo chat served at `/`: a page, the CometD browser client it uses, and the
//! server-side presence service that tells each room who is in it.
//!
//! Presence lives on the server because only the server knows when a session ends (a
//! closed tab never says goodbye): `/service/chat/join` and `/service/chat/leave` record
//! membership, a closed session leaves every room, and each change is published on
//! `/chat/<room>/members`.
//!
//! On a cluster whose sessions move between nodes, every node keeps every room: each
//! change is also published on [`PRESENCE`] (a channel of the server's own, see
//! [`crate::protocol::channel::RESERVED`]) and applied by the other nodes. Members are
//! known there by a hash of their clientId, never the id itself.

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

/// Where the nodes of a cluster tell each other about presence changes.
pub const PRESENCE: &str = "/halley/presence";

/// Room name → (member key → member name).
type Rooms = HashMap<String, BTreeMap<String, String>>;

/// The key a member is known by: a hash of its clientId, which must not be published.
fn member_key(client_id: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    client_id.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Registers the presence service on `broker`.
pub fn install(broker: &Broker) {
    let rooms: Arc<Mutex<Rooms>> = Arc::default();
    let weak = broker.downgrade();
    if broker.engine().shares_sessions() {
        replicate(broker, rooms.clone());
    }

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
            let member = member_key(call.client_id);
            if !members.contains_key(&member) && members.len() >= MAX_MEMBERS {
                return ServiceReply::Failure(json!({"error": "room is full"}));
            }
            members.insert(member.clone(), name.to_string());
            tell_nodes(
                &w,
                json!({"op": "join", "room": room, "member": member, "name": name}),
            );
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
    let member = member_key(client_id);
    tell_nodes(
        broker,
        json!({"op": "leave", "room": only, "member": member}),
    );
    for (room, members) in remove_member(rooms, &member, only) {
        announce(broker, &room, &members);
    }
}

/// Removes `member` from `only` or from every room; returns the rooms that changed, with
/// their members now.
fn remove_member(
    rooms: &Mutex<Rooms>,
    member: &str,
    only: Option<&str>,
) -> Vec<(String, Vec<String>)> {
    let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
    let mut changed = Vec::new();
    rooms.retain(|room, members| {
        if only.is_none_or(|o| o == room) && members.remove(member).is_some() {
            changed.push((room.clone(), names(members)));
        }
        !members.is_empty()
    });
    changed
}

/// Tells the other nodes of a cluster about a presence change (nothing on one node).
fn tell_nodes(broker: &WeakBroker, mut change: Value) {
    let Some(broker) = broker.upgrade().filter(|b| b.engine().shares_sessions()) else {
        return;
    };
    change["node"] = broker.node_id().into();
    if let Err(error) = broker.publish(PRESENCE, &change) {
        tracing::warn!(%error, "presence change not sent to the other nodes");
    }
}

/// Applies the other nodes' presence changes to this node's rooms, for as long as the
/// broker lives. The node that made a change announced it already.
fn replicate(broker: &Broker, rooms: Arc<Mutex<Rooms>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!("presence is not replicated: no tokio runtime");
        return;
    };
    let mut listener = broker.open_local_session(None);
    if let Err(error) = listener.subscribe(PRESENCE) {
        tracing::error!(%error, "presence is not replicated");
        return;
    }
    let node = broker.node_id().to_string();
    runtime.spawn(async move {
        while let Some(changes) = listener.receive().await {
            for change in changes.iter().map(|m| &m["data"]) {
                if change["node"].as_str() == Some(&node) {
                    continue;
                }
                let text = |field: &str| change[field].as_str().unwrap_or_default();
                match text("op") {
                    "join" if valid_room(text("room")) => {
                        let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
                        if rooms.len() < MAX_ROOMS || rooms.contains_key(text("room")) {
                            let members = rooms.entry(text("room").to_string()).or_default();
                            if members.len() < MAX_MEMBERS {
                                let name: String = text("name").chars().take(MAX_NAME).collect();
                                members.insert(text("member").to_string(), name);
                            }
                        }
                    }
                    "leave" => {
                        let only = change["room"].as_str();
                        remove_member(&rooms, text("member"), only);
                    }
                    _ => {}
                }
            }
        }
    });
}

fn announce(broker: &WeakBroker, room: &str, members: &[String]) {
    if let Some(broker) = broker.upgrade() {
        let channel = format!("/chat/{room}/members");
        if let Err(error) = broker.publish(&channel, &json!({"room": room, "members": members})) {
            tracing::warn!(%error, %channel, "presence update not published");
        }
    }
}
