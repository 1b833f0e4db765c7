//! Publishing and fan-out: piggybacking, overflow, services, local sessions.

use super::*;

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
async fn a_local_session_keeps_receiving_while_the_broker_drains() {
    let broker = broker();
    let mut local = broker.open_local_session(None);
    local.subscribe("/jobs").expect("subscribe");
    broker.shutdown();
    broker.publish("/jobs", &json!(1)).expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(1), local.receive())
        .await
        .expect("not ended by the shutdown");
    assert_eq!(got.expect("open")[0]["data"], 1);
}

#[tokio::test]
async fn one_check_refuses_the_same_channels_for_every_publisher() {
    let broker = broker();
    let alice = session(&broker).await;
    for (channel, client, server) in [
        ("/a/*", "405::channel_invalid", BayeuxError::ChannelInvalid),
        ("bad", "405::channel_invalid", BayeuxError::ChannelInvalid),
        (
            "/meta/x",
            "403:denied_by_security_policy:channel_create_denied",
            BayeuxError::MetaPublishDenied,
        ),
    ] {
        let reply = publish(&broker, &alice, channel, json!(1)).await;
        assert_eq!(reply[0]["error"], client, "{channel}");
        assert_eq!(broker.publish(channel, &json!(1)), Err(server), "{channel}");
    }
    // A client's /service/ publish goes to its handler; the server side cannot broadcast one.
    let reply = publish(&broker, &alice, "/service/nobody", json!(1)).await;
    assert_eq!(reply[0]["successful"], true);
    assert_eq!(
        broker.publish("/service/echo", &json!(1)),
        Err(BayeuxError::NotBroadcast("/service/echo".into()))
    );
    assert!(matches!(
        broker.register_service("/news", echo),
        Err(ServiceChannelError::NotService(_))
    ));
}

#[tokio::test]
async fn an_overflowed_session_is_ended_at_once_and_removed_by_the_sweeper_outside_the_publish() {
    let broker = broker_with(|c| {
        c.max_queue = 1;
        c.queue_overflow = OverflowPolicy::Disconnect;
    });
    let closed = Arc::new(AtomicU64::new(0));
    let seen = closed.clone();
    broker.on_session_event(move |event| {
        if matches!(
            event,
            SessionEvent::Closed {
                reason: Removal::Overflow,
                ..
            }
        ) {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/n").await;
    let held = held_connect(&broker, &bob, "h");
    settle().await;
    // The held connect takes the first; the next two overflow a queue of one.
    publish(&broker, &alice, "/n", json!(0)).await;
    let first = held.await.expect("task");
    assert_eq!(first[0]["data"], 0);
    publish(&broker, &alice, "/n", json!(1)).await;
    publish(&broker, &alice, "/n", json!(2)).await;
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "no listener ran inside the publish"
    );
    assert_eq!(
        broker.stats().sessions,
        2,
        "the removal is left to the sweeper"
    );
    let reply = send(&broker, connect(&bob, "c")).await;
    assert_eq!(
        reply[0]["error"], "402::session_unknown",
        "ended at once: {reply:?}"
    );
    assert_eq!(broker.sweep(), 1);
    assert_eq!(closed.load(Ordering::SeqCst), 1);
    assert_eq!(broker.stats().sessions, 1);
    assert_eq!(broker.stats().subscriptions, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_fan_out_lets_other_tasks_run_between_chunks() {
    let broker = broker();
    let alice = session(&broker).await;
    let mut locals = Vec::new();
    for _ in 0..200_000 {
        let local = broker.open_local_session(None);
        local.subscribe("/all").expect("subscribe");
        locals.push(local);
    }
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                ticks.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    settle().await;
    let before = ticks.load(Ordering::SeqCst);
    publish(&broker, &alice, "/all", json!(1)).await;
    let during = ticks.load(Ordering::SeqCst) - before;
    ticker.abort();
    // 200,000 recipients take several 2 ms slices: the other task ran between them.
    assert!(
        during >= 1,
        "the other task ran {during} times during the fan-out"
    );
    assert_eq!(broker.stats().delivered, 200_000);
}
