//! Connects: holding, waking, superseding, browser slots, the delivery interval and the ack extension.

use super::*;

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
async fn an_aborted_held_connect_frees_its_slot_and_ages() {
    let broker = broker();
    let ctx = RequestContext {
        browser_id: Some("browser1".into()),
        multiplexed: false,
        connect_only: false,
        ..RequestContext::default()
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
        assert!(!session.lock().outbox.has_reader());
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
        ..RequestContext::default()
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
        ..RequestContext::default()
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
/// Real time: `p` is read from the wall clock, which paused time does not move.
#[tokio::test]
async fn timesync_p_covers_the_hold() {
    let broker = broker();
    let alice = session(&broker).await;
    let body = json!([{"id": "t", "channel": "/meta/connect", "clientId": alice,
        "advice": {"timeout": 300}, "ext": {"timesync": {"tc": 5, "l": 0, "o": 0}}}]);
    let reply = send(&broker, body).await;
    let sync = &reply[0]["ext"]["timesync"];
    assert_eq!(sync["tc"], 5);
    assert!(sync["ts"].as_u64().expect("ts") > 1_600_000_000_000);
    let p = sync["p"].as_u64().expect("p");
    assert!((300..5_000).contains(&p), "p = {p} ms for a 300 ms hold");
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
    assert_eq!(news(&held.await.expect("task")), [json!(1)]);
    within(started, 0);

    // Within 100 ms of that reply, what follows waits for the interval and goes out as one.
    let held = held_connect(&broker, &bob, "4");
    settle().await;
    publish(&broker, &alice, "/news", json!(2)).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    publish(&broker, &alice, "/news", json!(3)).await;
    assert_eq!(news(&held.await.expect("task")), [json!(2), json!(3)]);
    within(started, 100);

    // A connect arriving with deliveries queued waits out the interval too.
    publish(&broker, &alice, "/news", json!(4)).await;
    let reply = send(&broker, connect(&bob, "5")).await;
    assert_eq!(news(&reply), [json!(4)]);
    assert_eq!(reply.last().expect("connect reply")["successful"], true);
    within(started, 200);

    // After a quiet interval, at once again.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let held = held_connect(&broker, &bob, "6");
    settle().await;
    let started = Instant::now();
    publish(&broker, &alice, "/news", json!(5)).await;
    assert_eq!(news(&held.await.expect("task")), [json!(5)]);
    within(started, 0);
}

#[tokio::test(start_paused = true)]
async fn a_connect_batched_with_other_messages_waits_out_the_delivery_interval_too() {
    let broker = broker_with(|c| c.delivery_interval = 100);
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/news").await;
    publish(&broker, &alice, "/news", json!(1)).await;
    let started = Instant::now();
    assert_eq!(news(&send(&broker, connect(&bob, "3")).await), [json!(1)]);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "the first goes out at once"
    );

    // Within the interval, a connect batched with a subscribe is one code path with a
    // connect alone: it waits, and what is published meanwhile rides along.
    publish(&broker, &alice, "/news", json!(2)).await;
    let batch = json!([
        {"id": "4", "channel": "/meta/connect", "clientId": bob, "connectionType": "long-polling"},
        {"id": "5", "channel": "/meta/subscribe", "clientId": bob, "subscription": "/other"},
    ]);
    let broker2 = broker.clone();
    let reply = tokio::spawn(async move { send(&broker2, batch).await });
    settle().await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    publish(&broker, &alice, "/news", json!(3)).await;
    let reply = reply.await.expect("task");
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(news(&reply), [json!(2), json!(3)]);
    let replies: Vec<&str> = reply.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(
        replies,
        ["4", "5"],
        "replies keep the batch's order: {reply:?}"
    );
    assert!(reply.iter().all(|m| m["successful"] != false), "{reply:?}");
}

#[tokio::test]
async fn a_connect_held_on_a_new_connection_takes_over_without_loss_or_duplicates() {
    let broker = broker();
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/news").await;
    let old = held_connect(&broker, &bob, "3");
    settle().await;
    let new = held_connect(&broker, &bob, "4");
    settle().await;
    assert_eq!(old.await.expect("task"), vec![json!("superseded")]);
    publish(&broker, &alice, "/news", json!(1)).await;
    let reply = new.await.expect("task");
    assert_eq!(news(&reply), [json!(1)]);
    let again = send(
        &broker,
        json!([{"id": "5", "channel": "/meta/connect", "clientId": bob, "advice": {"timeout": 0}}]),
    )
    .await;
    assert!(news(&again).is_empty(), "delivered once: {again:?}");
}
