//! Disconnects, expiry and shutdown.

use super::*;

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
/// Authenticates `ext.user`, bound to an expiry `ext.ttl` ms away when there is one.
struct Expiring;
impl SecurityPolicy for Expiring {
    fn can_handshake(&self, request: &HandshakeRequest<'_>) -> HandshakeVerdict {
        let ext = request.ext.cloned().unwrap_or(Value::Null);
        HandshakeVerdict::Allow {
            identity: ext["user"].as_str().map(str::to_string),
            reply_ext: None,
            expires: ext["ttl"]
                .as_u64()
                .map(|ms| std::time::SystemTime::now() + Duration::from_millis(ms)),
        }
    }
}
async fn expiring_session(broker: &Broker, ext: Value) -> String {
    let reply = send(
        broker,
        json!([{"id": "1", "channel": "/meta/handshake", "ext": ext}]),
    )
    .await;
    let id = reply[0]["clientId"].as_str().expect("clientId").to_string();
    assert_eq!(send(broker, connect(&id, "2")).await[0]["successful"], true);
    id
}
#[tokio::test(start_paused = true)]
async fn an_expiry_set_by_the_policy_ends_even_a_held_session_unless_extended() {
    let broker = broker();
    broker.set_policy(Expiring);
    let closed = Arc::new(Mutex::new(Vec::new()));
    let seen = closed.clone();
    broker.on_session_event(move |event| {
        if let SessionEvent::Closed { reason, .. } = event {
            seen.lock().expect("lock").push(*reason);
        }
    });
    let alice = expiring_session(&broker, json!({"user": "alice", "ttl": 1_000})).await;
    let bob = expiring_session(&broker, json!({"user": "bob", "ttl": 1_000})).await;
    let carol = expiring_session(&broker, json!({"user": "carol"})).await;
    let held = held_connect(&broker, &alice, "h");
    settle().await;
    tokio::time::advance(Duration::from_millis(500)).await;
    let later = std::time::SystemTime::now() + Duration::from_millis(1_000);
    assert_eq!(
        broker.extend_session(&bob, "alice", later),
        Err(ExtendError::OtherIdentity)
    );
    assert_eq!(
        broker.extend_session(&carol, "carol", later),
        Err(ExtendError::NotBound)
    );
    assert_eq!(
        broker.extend_session("nobody", "bob", later),
        Err(ExtendError::UnknownSession)
    );
    assert_eq!(broker.extend_session(&bob, "bob", later), Ok(()));
    tokio::time::advance(Duration::from_millis(600)).await;
    assert_eq!(broker.sweep(), 1, "alice's expiry passed; bob's moved");
    let reply = held.await.expect("task");
    assert_eq!(reply[0]["error"], "402::token_expired", "{reply:?}");
    assert_eq!(reply[0]["advice"]["reconnect"], "handshake");
    assert_eq!(*closed.lock().expect("lock"), vec![Removal::TokenExpired]);
    // Past bob's new expiry, his next message ends him before the sweeper does.
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let reply = send(&broker, connect(&bob, "c")).await;
    assert_eq!(reply[0]["error"], "402::token_expired", "{reply:?}");
    assert_eq!(broker.stats().sessions, 1, "carol is not bound");
}
