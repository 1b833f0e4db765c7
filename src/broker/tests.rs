//! Router tests: the broker driven with message batches, no HTTP.

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

/// Lets spawned requests run up to their await points.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn handshakes_create_distinct_random_sessions() {
    let broker = broker();
    let a = session(&broker).await;
    let b = session(&broker).await;
    assert_ne!(a, b);
    for id in [&a, &b] {
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
    }
    assert_eq!(broker.stats().sessions, 2);
}

#[tokio::test]
async fn a_handshake_batched_with_other_messages_is_answered_alone() {
    let broker = broker();
    let reply = send(
        &broker,
        json!([{"id": "1", "channel": "/meta/handshake"}, {"id": "2", "channel": "/chat", "data": 1}]),
    )
    .await;
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0]["channel"], "/meta/handshake");
    assert_eq!(broker.stats().published, 0);
}

#[tokio::test]
async fn publishes_reach_every_matching_session_once_and_piggyback() {
    let broker = broker();
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    for pattern in ["/chat/*", "/chat/**", "/chat/room"] {
        subscribe(&broker, &bob, pattern).await;
    }
    subscribe(&broker, &alice, "/chat/room").await;
    let reply = publish(&broker, &alice, "/chat/room", json!({"text": "hi"})).await;
    // The publisher's own copy rides on its publish reply, before the ack.
    assert_eq!(
        reply[0],
        json!({"channel": "/chat/room", "data": {"text": "hi"}})
    );
    assert_eq!(
        reply[1],
        json!({"id": "p", "channel": "/chat/room", "successful": true})
    );
    let bobs = send(&broker, connect(&bob, "3")).await;
    assert_eq!(
        bobs.len(),
        2,
        "one copy despite three matching patterns: {bobs:?}"
    );
    assert_eq!(bobs[0]["data"]["text"], "hi");
    assert_eq!(bobs[1]["channel"], "/meta/connect");
}

#[tokio::test]
async fn a_held_connect_is_released_by_a_delivery() {
    let broker = broker();
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/news").await;
    let held = held_connect(&broker, &bob, "7");
    settle().await;
    assert!(!held.is_finished(), "an idle connect is held");
    publish(&broker, &alice, "/news", json!(1)).await;
    let reply = tokio::time::timeout(Duration::from_secs(1), held)
        .await
        .expect("released at once")
        .expect("task");
    assert_eq!(reply[0], json!({"channel": "/news", "data": 1}));
    assert_eq!(reply[1]["id"], "7");
    assert_eq!(reply[1]["successful"], true);
    assert_eq!(
        reply[1]["advice"],
        json!({"reconnect": "retry", "interval": 0, "timeout": 5000})
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_held_connect_is_answered_after_the_timeout() {
    let broker = broker();
    let alice = session(&broker).await;
    let started = Instant::now();
    let reply = send(&broker, connect(&alice, "9")).await;
    assert_eq!(started.elapsed(), Duration::from_millis(5_000));
    assert_eq!(
        reply,
        vec![
            json!({"id": "9", "channel": "/meta/connect", "successful": true,
        "advice": {"reconnect": "retry", "interval": 0, "timeout": 5000}})
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn client_timeouts_are_clamped_and_zero_answers_now() {
    let broker = broker();
    let alice = session(&broker).await;
    let started = Instant::now();
    let body = json!([{"id": "a", "channel": "/meta/connect", "clientId": alice, "advice": {"timeout": 0}}]);
    let reply = send(&broker, body).await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(
        reply[0]["advice"]["timeout"], 5000,
        "advice carries the server's hold time"
    );
    let body = json!([{"id": "b", "channel": "/meta/connect", "clientId": alice, "advice": {"timeout": 90000}}]);
    send(&broker, body).await;
    assert_eq!(started.elapsed(), Duration::from_millis(5_000));
}

#[tokio::test]
async fn a_second_connect_supersedes_the_held_one() {
    let broker = broker();
    let alice = session(&broker).await;
    let first = held_connect(&broker, &alice, "1");
    settle().await;
    let second = held_connect(&broker, &alice, "2");
    settle().await;
    assert_eq!(first.await.expect("task"), vec![json!("superseded")]);
    assert!(!second.is_finished(), "the newer connect is held normally");
    send(
        &broker,
        json!([{"id": "d", "channel": "/meta/disconnect", "clientId": alice}]),
    )
    .await;
    let reply = second.await.expect("task");
    assert_eq!(reply[0]["id"], "2");
    assert_eq!(reply[0]["successful"], true);
    assert_eq!(reply[0]["advice"]["reconnect"], "none");
}

#[tokio::test]
async fn disconnect_removes_everything() {
    let broker = broker();
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &alice, "/a").await;
    let reply = send(
        &broker,
        json!([{"id": "d", "channel": "/meta/disconnect", "clientId": alice}]),
    )
    .await;
    assert_eq!(
        reply,
        vec![json!({"id": "d", "channel": "/meta/disconnect", "successful": true})]
    );
    assert_eq!(broker.stats().subscriptions, 0);
    assert_eq!(
        publish(&broker, &bob, "/a", json!(1)).await.len(),
        1,
        "nobody receives it"
    );
    for body in [
        json!([{"id": "x", "channel": "/meta/subscribe", "clientId": alice, "subscription": "/a"}]),
        json!([{"id": "x", "channel": "/a", "clientId": alice, "data": 1}]),
        json!([{"id": "x", "channel": "/meta/disconnect", "clientId": alice}]),
    ] {
        let reply = send(&broker, body).await;
        assert_eq!(reply[0]["error"], "402::session_unknown");
        assert!(
            reply[0].get("advice").is_none(),
            "no advice except on connect"
        );
    }
    let reply = send(&broker, connect(&alice, "c")).await;
    assert_eq!(
        reply[0]["advice"],
        json!({"reconnect": "handshake", "interval": 0})
    );
}

#[tokio::test(start_paused = true)]
async fn sessions_expire_without_connects_but_not_while_one_is_held() {
    let broker = broker();
    let idle = session(&broker).await;
    let polling = session(&broker).await;
    let held = held_connect(&broker, &polling, "h");
    settle().await;
    tokio::time::advance(Duration::from_millis(1_900)).await;
    assert_eq!(broker.sweep(), 0, "not yet");
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(
        broker.sweep(),
        1,
        "the idle one expired; the held one lives"
    );
    let reply = send(&broker, connect(&idle, "c")).await;
    assert_eq!(reply[0]["error"], "402::session_unknown");
    assert_eq!(reply[0]["advice"]["reconnect"], "handshake");
    held.await.expect("task");
    // After its connect is answered the session ages like any other.
    tokio::time::advance(Duration::from_millis(2_001)).await;
    assert_eq!(broker.sweep(), 1);
    assert_eq!(broker.stats().sessions, 0);
}

#[tokio::test(start_paused = true)]
async fn other_traffic_extends_the_deadline() {
    let broker = broker();
    let alice = session(&broker).await;
    tokio::time::advance(Duration::from_millis(1_500)).await;
    subscribe(&broker, &alice, "/x").await;
    tokio::time::advance(Duration::from_millis(1_500)).await;
    assert_eq!(broker.sweep(), 0);
    tokio::time::advance(Duration::from_millis(600)).await;
    assert_eq!(broker.sweep(), 1);
    assert_eq!(
        broker.stats().subscriptions,
        0,
        "expiry drops subscriptions"
    );
}

#[tokio::test]
async fn an_aborted_held_connect_frees_its_slot_and_ages() {
    let broker = broker();
    let ctx = RequestContext {
        browser_id: Some("browser1".into()),
        multiplexed: false,
        connect_only: false,
    };
    let alice = session_as(&broker, &ctx).await;
    let held = held_connect_as(&broker, &alice, "h", ctx.clone());
    settle().await;
    held.abort();
    let _ = held.await;
    {
        let session = read(&broker.shared.sessions)
            .get(alice.as_str())
            .cloned()
            .expect("session");
        assert!(session.lock().held.is_none());
        assert_ne!(
            session.deadline(),
            u64::MAX,
            "the session ages towards expiry again"
        );
    }
    assert!(
        broker.shared.browsers.lock().expect("lock").is_empty(),
        "slot released"
    );
}

#[tokio::test]
async fn a_second_tab_gets_multiple_clients_advice_but_a_reload_does_not() {
    let broker = broker();
    let ctx = RequestContext {
        browser_id: Some("tabs".into()),
        multiplexed: false,
        connect_only: false,
    };
    let tab1 = session_as(&broker, &ctx).await;
    let tab2 = session_as(&broker, &ctx).await;
    let held = held_connect_as(&broker, &tab1, "1", ctx.clone());
    settle().await;
    let reply = send_as(&broker, &ctx, connect(&tab2, "2")).await;
    assert_eq!(
        reply,
        vec![
            json!({"id": "2", "channel": "/meta/connect", "successful": true,
            "advice": {"multiple-clients": true, "reconnect": "retry", "interval": 2000, "timeout": 5000}})
        ]
    );
    // A reload: the same session connects again from the same browser.
    let reload = held_connect_as(&broker, &tab1, "3", ctx.clone());
    settle().await;
    assert_eq!(held.await.expect("task"), vec![json!("superseded")]);
    assert!(
        !reload.is_finished(),
        "the reload's connect is held, not refused"
    );
    // HTTP/2 connections are not limited.
    let h2 = RequestContext {
        multiplexed: true,
        ..ctx.clone()
    };
    let other = held_connect_as(&broker, &tab2, "4", h2);
    settle().await;
    assert!(!other.is_finished());
    broker.shutdown();
    reload.await.expect("task");
    other.await.expect("task");
}

#[tokio::test]
async fn multi_session_interval_zero_stops_the_extra_tab() {
    let broker = broker_with(|c| c.multi_session_interval = 0);
    let ctx = RequestContext {
        browser_id: Some("b".into()),
        multiplexed: false,
        connect_only: false,
    };
    let tab1 = session_as(&broker, &ctx).await;
    let tab2 = session_as(&broker, &ctx).await;
    let held = held_connect_as(&broker, &tab1, "1", ctx.clone());
    settle().await;
    let reply = send_as(&broker, &ctx, connect(&tab2, "2")).await;
    assert_eq!(reply[0]["successful"], false);
    assert_eq!(reply[0]["advice"]["reconnect"], "none");
    broker.shutdown();
    held.await.expect("task");
}

#[tokio::test]
async fn drop_oldest_overflow_is_reported_on_the_connect_reply() {
    let broker = broker_with(|c| c.max_queue = 3);
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/n").await;
    for i in 0..5 {
        publish(&broker, &alice, "/n", json!(i)).await;
    }
    let reply = send(&broker, connect(&bob, "c")).await;
    let data: Vec<_> = reply[..3].iter().map(|m| m["data"].clone()).collect();
    assert_eq!(
        data,
        vec![json!(2), json!(3), json!(4)],
        "newest kept, in order"
    );
    assert_eq!(reply[3]["ext"], json!({"halley": {"dropped": 2}}));
    assert_eq!(broker.stats().dropped, 2);
}

#[tokio::test]
async fn disconnect_overflow_removes_the_slow_session() {
    let broker = broker_with(|c| {
        c.max_queue = 2;
        c.queue_overflow = OverflowPolicy::Disconnect;
    });
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/n").await;
    for i in 0..3 {
        publish(&broker, &alice, "/n", json!(i)).await;
    }
    let reply = send(&broker, connect(&bob, "c")).await;
    assert_eq!(reply[0]["error"], "402::session_unknown");
    assert_eq!(reply[0]["advice"]["reconnect"], "handshake");
}

#[tokio::test]
async fn service_handlers_answer_the_caller_and_a_panic_fails_only_that_message() {
    let broker = broker();
    broker
        .register_service("/service/boom", |_: &ServiceCall<'_>| -> ServiceReply {
            panic!("handler bug")
        })
        .expect("register");
    let alice = session(&broker).await;
    subscribe(&broker, &alice, "/**").await;
    let reply = send(
        &broker,
        json!([
            {"id": "1", "channel": "/service/echo", "clientId": alice, "data": {"q": 1}},
            {"id": "2", "channel": "/service/boom", "clientId": alice, "data": 1},
            {"id": "3", "channel": "/service/nobody", "clientId": alice, "data": 1},
        ]),
    )
    .await;
    assert_eq!(
        reply,
        vec![
            json!({"id": "1", "channel": "/service/echo", "successful": true, "data": {"q": 1}}),
            json!({"id": "1", "channel": "/service/echo", "successful": true}),
            json!({"id": "2", "channel": "/service/boom", "successful": false, "error": "500::handler_failed"}),
            json!({"id": "3", "channel": "/service/nobody", "successful": true}),
        ]
    );
    assert_eq!(
        broker.stats().published,
        0,
        "service messages are never broadcast"
    );
    assert_eq!(
        publish(&broker, &alice, "/still/works", json!(1))
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn connect_only_delivery_keeps_deliveries_for_the_connect() {
    let broker = broker_with(|c| c.connect_only_delivery = true);
    let alice = session(&broker).await;
    subscribe(&broker, &alice, "/a").await;
    let reply = publish(&broker, &alice, "/a", json!(1)).await;
    assert_eq!(reply.len(), 1, "only the ack: {reply:?}");
    let reply = send(&broker, connect(&alice, "c")).await;
    assert_eq!(reply[0], json!({"channel": "/a", "data": 1}));
}

#[tokio::test]
async fn a_server_side_disconnect_tells_the_held_connect_to_stop() {
    let broker = broker();
    let alice = session(&broker).await;
    let held = held_connect(&broker, &alice, "h");
    settle().await;
    assert!(broker.disconnect(&alice));
    assert!(!broker.disconnect(&alice));
    let reply = held.await.expect("task");
    assert_eq!(
        reply[0],
        json!({"channel": "/meta/disconnect", "successful": true})
    );
    assert_eq!(reply[1]["advice"], json!({"reconnect": "none"}));
}

#[tokio::test]
async fn broadcast_to_publisher_can_be_turned_off() {
    let broker = broker_with(|c| c.broadcast_to_publisher = false);
    let alice = session(&broker).await;
    subscribe(&broker, &alice, "/a").await;
    assert_eq!(publish(&broker, &alice, "/a", json!(1)).await.len(), 1);
}

#[tokio::test]
async fn server_side_publish_validates_and_counts_recipients() {
    let broker = broker();
    let alice = session(&broker).await;
    subscribe(&broker, &alice, "/a/*").await;
    assert_eq!(broker.publish("/a/b", &json!({"x": 1})), Ok(1));
    assert_eq!(
        broker.publish("/a/*", &json!(1)),
        Err(BayeuxError::ChannelInvalid)
    );
    assert_eq!(
        broker.publish("/meta/x", &json!(1)),
        Err(BayeuxError::MetaPublishDenied)
    );
    let reply = send(&broker, connect(&alice, "c")).await;
    assert_eq!(reply[0], json!({"channel": "/a/b", "data": {"x": 1}}));
}

#[tokio::test]
async fn subscriptions_are_all_or_nothing_and_bounded() {
    let broker = broker_with(|c| c.max_subscriptions = 2);
    let alice = session(&broker).await;
    let sub = |s: Value| json!([{"id": "s", "channel": "/meta/subscribe", "clientId": alice, "subscription": s}]);
    let reply = send(&broker, sub(json!(["/a", "/b//c"]))).await;
    assert_eq!(reply[0]["error"], "403::subscription_invalid");
    assert_eq!(reply[0]["subscription"], json!(["/a", "/b//c"]));
    assert_eq!(broker.stats().subscriptions, 0, "none applied");
    let reply = send(&broker, sub(json!(["/a", "/b", "/c"]))).await;
    assert_eq!(reply[0]["error"], "403:subscription_limit:subscribe_denied");
    let reply = send(&broker, sub(json!(["/a", "/b", "/a", "/service/x"]))).await;
    assert_eq!(reply[0]["successful"], true);
    assert_eq!(broker.stats().subscriptions, 2);
}

#[tokio::test]
async fn shutdown_answers_held_connects_and_refuses_handshakes() {
    let broker = broker();
    let alice = session(&broker).await;
    let held = held_connect(&broker, &alice, "h");
    settle().await;
    broker.shutdown();
    let reply = held.await.expect("task");
    assert_eq!(reply[0]["successful"], true);
    assert_eq!(reply[0]["advice"]["reconnect"], "retry");
    assert_eq!(reply[0]["advice"]["interval"], 0);
    assert!(broker.is_shutting_down());
    let reply = send(&broker, json!([{"id": "1", "channel": "/meta/handshake"}])).await;
    assert_eq!(reply[0]["successful"], false);
    assert_eq!(reply[0]["advice"]["reconnect"], "handshake");
}

/// Denies what its fields say, to test that the broker asks.
struct TestPolicy;

impl SecurityPolicy for TestPolicy {
    fn can_handshake(&self, request: &HandshakeRequest<'_>) -> HandshakeVerdict {
        match request
            .ext
            .and_then(|e| e.get("user"))
            .and_then(Value::as_str)
        {
            Some("mallory") => HandshakeVerdict::Deny {
                reason: "mallory".into(),
            },
            user => HandshakeVerdict::Allow {
                identity: user.map(str::to_string),
                reply_ext: Some(json!({"welcome": user})),
            },
        }
    }

    fn can_subscribe(&self, session: &SessionInfo<'_>, channel: &ChannelName<'_>) -> bool {
        session.is_authenticated() || !channel.as_str().starts_with("/private")
    }

    fn can_publish(&self, session: Option<&SessionInfo<'_>>, channel: &ChannelName<'_>) -> bool {
        session.is_none() || channel.as_str() != "/readonly"
    }
}

#[tokio::test]
async fn the_security_policy_is_asked_at_every_step() {
    let broker = broker();
    broker.set_policy(TestPolicy);
    let denied = send(
        &broker,
        json!([{"id": "1", "channel": "/meta/handshake", "ext": {"user": "mallory"}}]),
    )
    .await;
    assert_eq!(
        denied,
        vec![
            json!({"id": "1", "channel": "/meta/handshake", "successful": false,
            "error": "403::Handshake denied", "advice": {"reconnect": "none"}})
        ]
    );
    assert_eq!(broker.stats().sessions, 0);
    let alice = send(
        &broker,
        json!([{"id": "1", "channel": "/meta/handshake", "ext": {"user": "alice"}}]),
    )
    .await;
    assert_eq!(
        alice[0]["ext"],
        json!({"welcome": "alice"}),
        "the policy's reply ext reaches the client"
    );
    let alice = alice[0]["clientId"].as_str().expect("id").to_string();
    let anon = session(&broker).await;
    subscribe(&broker, &alice, "/private/x").await;
    let reply = send(
        &broker,
        json!([{"id": "s", "channel": "/meta/subscribe", "clientId": anon, "subscription": ["/ok", "/private/x"]}]),
    )
    .await;
    assert_eq!(reply[0]["error"], "403:/private/x:subscribe_denied");
    assert_eq!(reply[0]["subscription"], json!(["/ok", "/private/x"]));
    let reply = publish(&broker, &anon, "/readonly", json!(1)).await;
    assert_eq!(reply[0]["error"], "403:/readonly:publish_denied");
    assert_eq!(
        broker.publish("/readonly", &json!(1)),
        Ok(0),
        "the server itself may publish"
    );
}

/// Deletes messages whose data is "drop" and stamps every publish.
struct TestHook;

impl MessageHook for TestHook {
    fn incoming(&self, _session: Option<&SessionInfo<'_>>, message: &mut Message) -> bool {
        message.data.as_deref().map(|d| d.get()) != Some("\"drop\"")
    }

    fn outgoing(&self, message: &mut Message) -> bool {
        if message.data.as_deref().map(|d| d.get()) == Some("\"veto\"") {
            return false;
        }
        message.ext = serde_json::value::to_raw_value(&json!({"stamped": true})).ok();
        true
    }
}

#[tokio::test]
async fn hooks_see_change_and_delete_messages() {
    let broker = broker();
    broker.add_hook(TestHook);
    let alice = session(&broker).await;
    subscribe(&broker, &alice, "/h").await;
    let reply = send(
        &broker,
        json!([
            {"id": "1", "channel": "/h", "clientId": alice, "data": "drop"},
            {"id": "2", "channel": "/h", "clientId": alice, "data": "veto"},
            {"id": "3", "channel": "/h", "clientId": alice, "data": "keep"},
        ]),
    )
    .await;
    assert_eq!(
        reply[0],
        json!({"channel": "/h", "data": "keep", "ext": {"stamped": true}})
    );
    assert_eq!(reply[1]["error"], "404::message_deleted");
    assert_eq!(reply[2]["error"], "404::message_deleted");
    assert_eq!(reply[3]["successful"], true);
    assert_eq!(
        broker.publish("/h", &json!("veto")),
        Err(BayeuxError::MessageDeleted)
    );
}

#[tokio::test]
async fn local_sessions_subscribe_publish_and_call_services() {
    let broker = broker();
    let remote = session(&broker).await;
    subscribe(&broker, &remote, "/ticks/*").await;
    let mut local = broker.open_local_session(Some("backend"));
    local.subscribe("/orders/**").expect("subscribe");
    local
        .publish("/ticks/ACME", &json!({"price": 1.5}))
        .expect("publish");
    let reply = send(&broker, connect(&remote, "c")).await;
    assert_eq!(
        reply[0],
        json!({"channel": "/ticks/ACME", "data": {"price": 1.5}})
    );
    publish(&broker, &remote, "/orders/eu/1", json!("buy")).await;
    let received = tokio::time::timeout(Duration::from_secs(1), local.receive())
        .await
        .expect("delivered")
        .expect("open");
    assert_eq!(
        received,
        vec![json!({"channel": "/orders/eu/1", "data": "buy"})]
    );
    local
        .publish("/service/echo", &json!("ping"))
        .expect("call");
    let answer = local.receive().await.expect("answer");
    assert_eq!(answer[0]["data"], "ping");
    assert_eq!(
        local.subscribe("/meta/x"),
        Err(BayeuxError::MetaSubscribeDenied)
    );
    // A waiting receive is woken by a delivery, and ends when the session is closed.
    let id = local.client_id().to_string();
    let waiter = tokio::spawn(async move {
        let first = local.receive().await;
        let second = local.receive().await;
        (first, second)
    });
    settle().await;
    broker.publish("/orders/x", &json!(2)).expect("publish");
    settle().await;
    assert!(broker.disconnect(&id));
    let (first, second) = waiter.await.expect("task");
    assert_eq!(first.expect("delivery")[0]["data"], 2);
    assert_eq!(second.expect("notice")[0]["channel"], "/meta/disconnect");
    assert_eq!(broker.stats().sessions, 1);
}

#[tokio::test]
async fn session_events_are_observed() {
    let broker = broker();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    broker.on_session_event(move |event| {
        let line = match event {
            SessionEvent::Opened { .. } => "opened".to_string(),
            SessionEvent::Subscribed { channel, .. } => format!("subscribed {channel}"),
            SessionEvent::Unsubscribed { channel, .. } => format!("unsubscribed {channel}"),
            SessionEvent::Closed { reason, .. } => format!("closed {reason:?}"),
        };
        log.lock().expect("lock").push(line);
    });
    let alice = session(&broker).await;
    subscribe(&broker, &alice, "/a").await;
    subscribe(&broker, &alice, "/a").await;
    send(&broker, json!([{"id": "u", "channel": "/meta/unsubscribe", "clientId": alice, "subscription": "/a"}])).await;
    send(
        &broker,
        json!([{"id": "d", "channel": "/meta/disconnect", "clientId": alice}]),
    )
    .await;
    drop(broker.open_local_session(None));
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![
            "opened",
            "subscribed /a",
            "unsubscribed /a",
            "closed Disconnected",
            "opened",
            "closed Disconnected"
        ]
    );
}

#[tokio::test]
async fn the_ack_extension_redelivers_what_was_not_acknowledged() {
    let broker = broker();
    let reply = send(
        &broker,
        json!([{"id": "1", "channel": "/meta/handshake", "ext": {"ack": true}}]),
    )
    .await;
    assert_eq!(reply[0]["ext"]["ack"], true);
    let alice = reply[0]["clientId"].as_str().expect("id").to_string();
    let ack_connect = |id: &str, acked: i64| json!([{"id": id, "channel": "/meta/connect", "clientId": alice, "ext": {"ack": acked}}]);
    let first = send(&broker, ack_connect("2", -1)).await;
    assert_eq!(first[0]["ext"]["ack"], 1);
    subscribe(&broker, &alice, "/a").await;
    let reply = publish(&broker, &alice, "/a", json!(1)).await;
    assert_eq!(
        reply.len(),
        1,
        "never piggybacked on an ack session: {reply:?}"
    );
    let batch2 = send(&broker, ack_connect("3", 1)).await;
    assert_eq!(batch2[0]["data"], 1);
    assert_eq!(batch2[1]["ext"]["ack"], 2);
    // The response with batch 2 is lost: the client acknowledges 1 again.
    publish(&broker, &alice, "/a", json!(2)).await;
    let batch3 = send(&broker, ack_connect("4", 1)).await;
    let data: Vec<_> = batch3
        .iter()
        .filter_map(|m| m.get("data"))
        .cloned()
        .collect();
    assert_eq!(
        data,
        vec![json!(1), json!(2)],
        "batch 2 again, first, in order"
    );
    assert_eq!(batch3[2]["ext"]["ack"], 3);
    // Everything acknowledged: the next connect is held, and released by a new message
    // alone — nothing acknowledged is delivered twice.
    let held = {
        let broker = broker.clone();
        let body = ack_connect("5", 3);
        tokio::spawn(async move { send(&broker, body).await })
    };
    settle().await;
    assert!(!held.is_finished(), "held once everything is acknowledged");
    publish(&broker, &alice, "/a", json!(3)).await;
    let reply = held.await.expect("task");
    assert_eq!(reply.len(), 2, "{reply:?}");
    assert_eq!(reply[0]["data"], 3);
    assert_eq!(reply[1]["ext"]["ack"], 4);
}

#[tokio::test]
async fn a_connect_acknowledging_an_old_batch_is_answered_at_once() {
    let broker = broker();
    let reply = send(
        &broker,
        json!([{"id": "1", "channel": "/meta/handshake", "ext": {"ack": true}}]),
    )
    .await;
    let alice = reply[0]["clientId"].as_str().expect("id").to_string();
    send(&broker, connect(&alice, "2")).await;
    subscribe(&broker, &alice, "/a").await;
    publish(&broker, &alice, "/a", json!(1)).await;
    send(&broker, connect(&alice, "3")).await;
    let body =
        json!([{"id": "4", "channel": "/meta/connect", "clientId": alice, "ext": {"ack": 1}}]);
    let reply = tokio::time::timeout(Duration::from_secs(1), send(&broker, body))
        .await
        .expect("not held: batch 2 is unacknowledged");
    assert_eq!(reply[0]["data"], 1);
}

#[tokio::test]
async fn the_ack_extension_can_be_turned_off() {
    let broker = broker_with(|c| c.ack_extension = false);
    let reply = send(
        &broker,
        json!([{"id": "1", "channel": "/meta/handshake", "ext": {"ack": true}}]),
    )
    .await;
    assert!(reply[0].get("ext").is_none(), "{reply:?}");
}

#[tokio::test(start_paused = true)]
async fn timesync_p_covers_the_hold() {
    let broker = broker();
    let alice = session(&broker).await;
    let body = json!([{"id": "t", "channel": "/meta/connect", "clientId": alice,
        "ext": {"timesync": {"tc": 5, "l": 0, "o": 0}}}]);
    let reply = send(&broker, body).await;
    let sync = &reply[0]["ext"]["timesync"];
    assert_eq!(sync["tc"], 5);
    assert!(sync["ts"].as_u64().expect("ts") > 1_600_000_000_000);
    assert!(sync["p"].as_u64().is_some());
}

#[tokio::test]
async fn the_session_limit_refuses_handshakes_with_a_retry_interval() {
    let broker = broker_with(|c| {
        c.max_sessions = 2;
        c.busy_interval = 1_500;
    });
    let alice = session(&broker).await;
    session(&broker).await;
    let reply = send(&broker, json!([{"id": "1", "channel": "/meta/handshake"}])).await;
    assert_eq!(
        reply,
        vec![
            json!({"id": "1", "channel": "/meta/handshake", "successful": false,
            "error": "503::server_busy", "advice": {"reconnect": "handshake", "interval": 1500}})
        ]
    );
    send(
        &broker,
        json!([{"id": "d", "channel": "/meta/disconnect", "clientId": alice}]),
    )
    .await;
    session(&broker).await;
}

#[tokio::test(start_paused = true)]
async fn the_handshake_rate_is_limited() {
    let broker = broker_with(|c| c.max_handshakes_per_second = 3);
    let handshake = || send(&broker, json!([{"id": "1", "channel": "/meta/handshake"}]));
    for _ in 0..3 {
        assert_eq!(handshake().await[0]["successful"], true);
    }
    assert_eq!(handshake().await[0]["error"], "503::server_busy");
    tokio::time::advance(Duration::from_millis(400)).await;
    assert_eq!(
        handshake().await[0]["successful"],
        true,
        "the bucket refills"
    );
    assert_eq!(handshake().await[0]["successful"], false);
}

fn data_of(reply: &[Value]) -> Vec<Value> {
    reply
        .iter()
        .filter(|m| m["channel"] == "/news")
        .map(|m| m["data"].clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn delivery_interval_spaces_a_sessions_replies_but_not_a_quiet_ones() {
    let broker = broker_with(|c| c.delivery_interval = 100);
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/news").await;
    let within = |started: Instant, ms: u64| {
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(ms) && elapsed <= Duration::from_millis(ms + 2),
            "answered after {elapsed:?}, not {ms} ms"
        );
    };

    // Nothing went out to bob lately: the first delivery wakes his connect at once.
    let held = held_connect(&broker, &bob, "3");
    settle().await;
    let started = Instant::now();
    publish(&broker, &alice, "/news", json!(1)).await;
    assert_eq!(data_of(&held.await.expect("task")), [json!(1)]);
    within(started, 0);

    // Within 100 ms of that reply, what follows waits for the interval and goes out as one.
    let held = held_connect(&broker, &bob, "4");
    settle().await;
    publish(&broker, &alice, "/news", json!(2)).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    publish(&broker, &alice, "/news", json!(3)).await;
    assert_eq!(data_of(&held.await.expect("task")), [json!(2), json!(3)]);
    within(started, 100);

    // A connect arriving with deliveries queued waits out the interval too.
    publish(&broker, &alice, "/news", json!(4)).await;
    let reply = send(&broker, connect(&bob, "5")).await;
    assert_eq!(data_of(&reply), [json!(4)]);
    assert_eq!(reply.last().expect("connect reply")["successful"], true);
    within(started, 200);

    // After a quiet interval, at once again.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let held = held_connect(&broker, &bob, "6");
    settle().await;
    let started = Instant::now();
    publish(&broker, &alice, "/news", json!(5)).await;
    assert_eq!(data_of(&held.await.expect("task")), [json!(5)]);
    within(started, 0);
}
