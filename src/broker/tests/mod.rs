//! Router tests: the broker driven with message batches, no HTTP, one file per concern.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::config::OverflowPolicy;
use crate::protocol::ChannelName;
use crate::protocol::decode_batch;

fn broker_with(edit: impl FnOnce(&mut Config)) -> Broker {
    let mut config = Config {
        timeout: 5_000,
        max_interval: 2_000,
        ..Config::default()
    };
    edit(&mut config);
    Broker::new(config, &["long-polling"])
}

fn broker() -> Broker {
    broker_with(|_| {})
}

fn messages(body: Value) -> Vec<Message> {
    let mut batch = Vec::new();
    decode_batch(body.to_string().as_bytes(), &mut batch).expect("valid batch");
    batch
}

fn parse(outcome: Outcome) -> Vec<Value> {
    match outcome {
        Outcome::Reply(reply) => {
            assert!(!reply.messages.is_empty(), "a response is never empty");
            reply
                .messages
                .iter()
                .map(|m| serde_json::from_slice(m).expect("valid JSON"))
                .collect()
        }
        Outcome::Superseded => vec![json!("superseded")],
    }
}

async fn send_as(broker: &Broker, ctx: &RequestContext, body: Value) -> Vec<Value> {
    parse(broker.handle(messages(body), ctx).await)
}

async fn send(broker: &Broker, body: Value) -> Vec<Value> {
    send_as(broker, &RequestContext::default(), body).await
}

/// Handshakes and completes the first connect, as every client does.
async fn session_as(broker: &Broker, ctx: &RequestContext) -> String {
    let reply = send_as(
        broker,
        ctx,
        json!([{"id": "1", "channel": "/meta/handshake"}]),
    )
    .await;
    let id = reply[0]["clientId"].as_str().expect("clientId").to_string();
    let first = send_as(broker, ctx, connect(&id, "2")).await;
    assert_eq!(first[0]["successful"], true);
    id
}

async fn session(broker: &Broker) -> String {
    session_as(broker, &RequestContext::default()).await
}

fn connect(client_id: &str, id: &str) -> Value {
    json!([{"id": id, "channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"}])
}

async fn subscribe(broker: &Broker, client_id: &str, pattern: &str) {
    let reply = send(
        broker,
        json!([{"id": "s", "channel": "/meta/subscribe", "clientId": client_id, "subscription": pattern}]),
    )
    .await;
    assert_eq!(
        reply.last().expect("reply")["successful"],
        true,
        "{reply:?}"
    );
}

async fn publish(broker: &Broker, client_id: &str, channel: &str, data: Value) -> Vec<Value> {
    send(
        broker,
        json!([{"id": "p", "channel": channel, "clientId": client_id, "data": data}]),
    )
    .await
}

fn held_connect(broker: &Broker, client_id: &str, id: &str) -> tokio::task::JoinHandle<Vec<Value>> {
    held_connect_as(broker, client_id, id, RequestContext::default())
}

fn held_connect_as(
    broker: &Broker,
    client_id: &str,
    id: &str,
    ctx: RequestContext,
) -> tokio::task::JoinHandle<Vec<Value>> {
    let broker = broker.clone();
    let body = connect(client_id, id);
    tokio::spawn(async move { send_as(&broker, &ctx, body).await })
}

/// The data of the `/news` deliveries in a reply, in order.
fn news(reply: &[Value]) -> Vec<Value> {
    reply
        .iter()
        .filter(|m| m["channel"] == "/news")
        .map(|m| m["data"].clone())
        .collect()
}

/// Lets spawned requests run up to their await points.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

mod coalescing;
mod connect;
mod engine;
mod handshake;
mod lifecycle;
mod policy;
mod routing;
mod subscription;
