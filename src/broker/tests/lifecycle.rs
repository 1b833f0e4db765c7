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
