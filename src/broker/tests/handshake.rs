//! Handshakes: sessions, limits and the rate limit.

use super::*;

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
