//! The security policy, message hooks and session events.

use super::*;

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
                expires: None,
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
