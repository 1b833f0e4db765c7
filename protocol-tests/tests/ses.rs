//! SES: session expiry, queues and delivery semantics (BAYEUX.md 5, checklist SES-1..SES-11).
//!
//! Skipped: SES-6 (lazy channels) has no configuration surface yet.

use std::collections::HashSet;
use std::time::Instant;

use halley_protocol_tests::*;

/// Short expiry: sessions die 1 s after their last connect reply; the sweeper runs every 100 ms.
const EXPIRE_FAST: &[&str] = &[
    "--timeout",
    "1500",
    "--max-interval",
    "1000",
    "--sweep-interval",
    "100",
];

#[tokio::test]
async fn ses_1_session_without_connect_expires() {
    let b = Broker::start(EXPIRE_FAST).await;
    let cid = b.session().await;
    let handshaken_only = b.handshake().await;
    // maxInterval 1000 + sweep 100 + 700 ms margin.
    sleep_ms(1800).await;
    assert_session_unknown(&b.connect(&cid).await[0], true);
    assert_session_unknown(&b.connect(&handshaken_only).await[0], true);
}

#[tokio::test]
async fn ses_1_session_within_max_interval_survives() {
    let b = Broker::start(EXPIRE_FAST).await;
    let cid = b.session().await;
    sleep_ms(500).await;
    let msgs = b.connect_now(&cid).await;
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
}

#[tokio::test]
async fn ses_1_expiry_deadline_includes_the_interval() {
    let b = Broker::start(&[
        "--timeout",
        "1500",
        "--interval",
        "1000",
        "--max-interval",
        "1000",
        "--sweep-interval",
        "100",
    ])
    .await;
    let cid = b.session().await;
    // Deadline = reply + interval 1000 + maxInterval 1000; at 1400 ms the session must still exist.
    sleep_ms(1400).await;
    let msgs = b.connect_now(&cid).await;
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    sleep_ms(2800).await;
    assert_session_unknown(&b.connect_now(&cid).await[0], true);
}

#[tokio::test]
async fn ses_2_held_connect_keeps_the_session_alive() {
    let b = Broker::start(&[
        "--timeout",
        "3000",
        "--max-interval",
        "1000",
        "--sweep-interval",
        "100",
    ])
    .await;
    let cid = b.session().await;
    let start = Instant::now();
    let msgs = b.connect(&cid).await;
    assert!(
        start.elapsed().as_millis() >= 2700,
        "not held for the timeout: {:?}",
        start.elapsed()
    );
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    assert_eq!(msgs[0]["advice"]["reconnect"], "retry", "{msgs:?}");
    let msgs = b.connect_now(&cid).await;
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
}

#[tokio::test]
async fn ses_3_non_connect_traffic_extends_the_deadline() {
    let b = Broker::start(&[
        "--timeout",
        "1500",
        "--max-interval",
        "2000",
        "--sweep-interval",
        "100",
    ])
    .await;
    let cid = b.session().await;
    let t0 = Instant::now();
    // Without extension the session dies at t0 + 2000 (+ sweep 100).
    sleep_ms(1500).await;
    b.publish(&cid, "/ses3", json!("keepalive")).await;
    // Now the deadline is ≥ t0 + 3500.
    let wait = 2800u64.saturating_sub(t0.elapsed().as_millis() as u64);
    sleep_ms(wait).await;
    let msgs = b.connect_now(&cid).await;
    assert_eq!(
        msgs[0]["successful"],
        true,
        "expired at {:?}: {msgs:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn ses_4_messages_published_while_away_are_delivered_on_the_next_connect() {
    let b = Broker::start(&["--timeout", "5000"]).await;
    let sub = b.session().await;
    b.subscribe(&sub, json!(["/ses4/a", "/ses4/b"])).await;
    let publisher = b.session().await;
    b.publish(&publisher, "/ses4/a", json!(1)).await;
    b.publish(&publisher, "/ses4/b", json!(2)).await;
    let start = Instant::now();
    let msgs = b.connect(&sub).await;
    assert!(start.elapsed() < PROMPT, "{:?}", start.elapsed());
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert_eq!(msgs[0], json!({"channel": "/ses4/a", "data": 1}));
    assert_eq!(msgs[1], json!({"channel": "/ses4/b", "data": 2}));
    assert_eq!(msgs[2]["channel"], "/meta/connect");
    assert_eq!(msgs[2]["successful"], true);
}

#[tokio::test]
async fn ses_5_expired_session_loses_its_queue() {
    let b = Broker::start(EXPIRE_FAST).await;
    let sub = b.session().await;
    b.subscribe(&sub, "/ses5").await;
    let publisher = b.session().await;
    b.publish(&publisher, "/ses5", json!("queued")).await;
    sleep_ms(1800).await;
    let msgs = b.connect_now(&sub).await;
    assert_eq!(
        msgs.len(),
        1,
        "queued messages of a removed session must be gone: {msgs:?}"
    );
    assert_session_unknown(&msgs[0], true);
    let late = b.session().await;
    let msgs = b.publish(&late, "/ses5", json!("after")).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
}

#[tokio::test]
async fn ses_7_queue_overflow_drops_the_oldest_and_reports_it() {
    let b = Broker::start(&["--timeout", "2000", "--max-queue", "3"]).await;
    let sub = b.session().await;
    b.subscribe(&sub, "/ses7").await;
    let publisher = b.session().await;
    for n in 0..5 {
        b.publish(&publisher, "/ses7", json!(n)).await;
    }
    let msgs = b.connect_now(&sub).await;
    assert_eq!(data_on(&msgs, "/ses7"), vec![json!(2), json!(3), json!(4)]);
    let connect = msgs.last().unwrap();
    assert_eq!(connect["channel"], "/meta/connect");
    assert_eq!(connect["ext"]["halley"]["dropped"], 2, "{connect}");
    // Reported once.
    let msgs = b.connect_now(&sub).await;
    let dropped = &msgs.last().unwrap()["ext"]["halley"]["dropped"];
    assert!(dropped.is_null() || *dropped == 0, "{msgs:?}");
}

#[tokio::test]
async fn ses_7_overflow_in_disconnect_mode_removes_the_session() {
    let b = Broker::start(&[
        "--timeout",
        "2000",
        "--max-queue",
        "3",
        "--queue-overflow",
        "disconnect",
    ])
    .await;
    let sub = b.session().await;
    b.subscribe(&sub, "/ses7").await;
    let publisher = b.session().await;
    for n in 0..5 {
        b.publish(&publisher, "/ses7", json!(n)).await;
    }
    let msgs = b.connect_now(&sub).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_session_unknown(&msgs[0], true);
}

#[tokio::test]
async fn ses_8_connect_only_delivery_keeps_deliveries_off_other_responses() {
    let b = Broker::start(&["--timeout", "2000", "--connect-only-delivery"]).await;
    let sub = b.session().await;
    b.subscribe(&sub, "/ses8").await;
    let msgs = b.publish(&sub, "/ses8", json!("own")).await;
    assert_eq!(
        msgs.len(),
        1,
        "publish response carries a delivery: {msgs:?}"
    );
    let other = b.session().await;
    b.publish(&other, "/ses8", json!("other")).await;
    let msgs = b
        .batch(
            json!([{"id": "u", "channel": "/meta/unsubscribe", "clientId": sub,
                               "subscription": "/nothing"}]),
        )
        .await;
    assert_eq!(
        msgs.len(),
        1,
        "unsubscribe response carries a delivery: {msgs:?}"
    );
    assert_eq!(
        data_on(&b.connect_now(&sub).await, "/ses8"),
        vec![json!("own"), json!("other")]
    );
}

#[tokio::test]
async fn ses_8_connect_only_delivery_releases_the_held_connect() {
    let b = Broker::start(&[
        "--api-key",
        STATS_KEY,
        "--timeout",
        "5000",
        "--connect-only-delivery",
    ])
    .await;
    let sub = b.session().await;
    b.subscribe(&sub, "/ses8").await;
    let c = b.client();
    let s = sub.clone();
    let held = spawn_timed(async move { c.connect(&s).await });
    b.wait_held(1).await;
    // The session's own publish: its copy may not ride on the publish response, so it wakes the connect.
    let sent = Instant::now();
    let msgs = b.publish(&sub, "/ses8", json!("own")).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let (msgs, done) = held.await.unwrap();
    assert!(done - sent < PROMPT, "released after {:?}", done - sent);
    assert_eq!(data_on(&msgs, "/ses8"), vec![json!("own")]);
    // And another session's publish.
    let c = b.client();
    let s = sub.clone();
    let held = spawn_timed(async move { c.connect(&s).await });
    b.wait_held(1).await;
    let other = b.session().await;
    let sent = Instant::now();
    b.publish(&other, "/ses8", json!("other")).await;
    let (msgs, done) = held.await.unwrap();
    assert!(done - sent < PROMPT, "released after {:?}", done - sent);
    assert_eq!(data_on(&msgs, "/ses8"), vec![json!("other")]);
}

#[tokio::test]
async fn ses_9_deliveries_leave_the_queue_in_fifo_order() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/ses9/**").await;
    let publishers = [b.session().await, b.session().await, b.session().await];
    for n in 0..30 {
        b.publish(&publishers[n % 3], &format!("/ses9/{}", n % 4), json!(n))
            .await;
    }
    let got: Vec<Value> = b
        .poll(&sub)
        .await
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(got, (0..30).map(|n| json!(n)).collect::<Vec<_>>());
}

#[tokio::test]
async fn ses_10_requests_are_served_while_a_connect_of_the_session_is_held() {
    let b = Broker::start(&["--api-key", STATS_KEY, "--timeout", "5000"]).await;
    let cid = b.session().await;
    let c = b.client();
    let s = cid.clone();
    let held = tokio::spawn(async move { c.connect(&s).await });
    b.wait_held(1).await;
    let start = Instant::now();
    b.publish(&cid, "/ses10/elsewhere", json!(1)).await;
    b.subscribe(&cid, "/ses10/mine").await;
    b.unsubscribe(&cid, "/ses10/mine").await;
    assert!(
        start.elapsed() < PROMPT,
        "three requests took {:?}",
        start.elapsed()
    );
    assert!(
        !held.is_finished(),
        "the held connect was answered by unrelated traffic"
    );
    held.abort();
}

#[tokio::test]
async fn ses_11_concurrent_publishers_never_duplicate_or_lose_messages() {
    const SESSIONS: usize = 8;
    const EACH: usize = 20;
    let b = Broker::start(&["--timeout", "2000"]).await;
    let mut sessions = vec![];
    for _ in 0..SESSIONS {
        let cid = b.session().await;
        b.subscribe(&cid, "/ses11").await;
        sessions.push(cid);
    }
    let mut tasks = vec![];
    for (i, cid) in sessions.iter().enumerate() {
        let c = b.client();
        let cid = cid.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = vec![];
            for j in 0..EACH {
                got.extend(data_on(
                    &c.publish(&cid, "/ses11", json!([i, j])).await,
                    "/ses11",
                ));
            }
            (cid, got)
        }));
    }
    let mut results = vec![];
    for task in tasks {
        results.push(task.await.unwrap());
    }
    for (cid, mut got) in results {
        got.extend(data_on(&b.connect_now(&cid).await, "/ses11"));
        let unique: HashSet<String> = got.iter().map(|v| v.to_string()).collect();
        assert_eq!(unique.len(), got.len(), "duplicates delivered to {cid}");
        assert_eq!(got.len(), SESSIONS * EACH, "lost messages for {cid}");
        // Each publisher's messages arrive in its own order.
        for i in 0..SESSIONS {
            let seq: Vec<u64> = got
                .iter()
                .filter(|v| v[0] == i)
                .map(|v| v[1].as_u64().unwrap())
                .collect();
            assert_eq!(
                seq,
                (0..EACH as u64).collect::<Vec<_>>(),
                "order of publisher {i} at {cid}"
            );
        }
    }
}

#[tokio::test]
async fn ses_11_long_polling_subscribers_get_every_concurrent_publish_once_in_order() {
    const SUBSCRIBERS: usize = 6;
    const PUBLISHERS: usize = 4;
    const EACH: usize = 25;
    const TOTAL: usize = PUBLISHERS * EACH;
    let b = Broker::start(&["--api-key", STATS_KEY, "--timeout", "2000"]).await;
    let mut subscribers = vec![];
    for _ in 0..SUBSCRIBERS {
        let cid = b.session().await;
        b.subscribe(&cid, "/ses11lp/*").await;
        let c = b.client();
        // A client's long-poll loop: deliveries only ever arrive on connect replies here.
        subscribers.push(tokio::spawn(async move {
            let mut got = vec![];
            let deadline = Instant::now() + std::time::Duration::from_secs(15);
            while got.len() < TOTAL && Instant::now() < deadline {
                got.extend(
                    deliveries(&c.connect(&cid).await)
                        .into_iter()
                        .map(|m| m["data"].clone()),
                );
            }
            (cid, got)
        }));
    }
    b.wait_held(6).await;
    let mut publishers = vec![];
    for i in 0..PUBLISHERS {
        let c = b.client();
        publishers.push(tokio::spawn(async move {
            let cid = c.session().await;
            for j in 0..EACH {
                c.publish(&cid, &format!("/ses11lp/{i}"), json!([i, j]))
                    .await;
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    for s in subscribers {
        let (cid, got) = s.await.unwrap();
        let unique: HashSet<String> = got.iter().map(|v| v.to_string()).collect();
        assert_eq!(unique.len(), got.len(), "duplicates delivered to {cid}");
        assert_eq!(got.len(), TOTAL, "lost messages for {cid}");
        for i in 0..PUBLISHERS {
            let seq: Vec<u64> = got
                .iter()
                .filter(|v| v[0] == i)
                .map(|v| v[1].as_u64().unwrap())
                .collect();
            assert_eq!(
                seq,
                (0..EACH as u64).collect::<Vec<_>>(),
                "order of publisher {i} at {cid}"
            );
        }
    }
}

#[tokio::test]
async fn ses_1_client_interval_extends_the_deadline_of_that_connect() {
    // BAYEUX.md 5.2: deadline = reply + interval + maxInterval, interval being the client's transient
    // interval when given.
    let b = Broker::start(EXPIRE_FAST).await;
    let cid = b.session().await;
    let msgs = b
        .connect_with(&cid, json!({"advice": {"timeout": 0, "interval": 1500}}))
        .await;
    assert_eq!(msgs[0]["successful"], true);
    // Deadline = reply + 1500 + 1000; without the client interval the session dies at ~1100 ms.
    sleep_ms(1800).await;
    assert_eq!(b.connect_now(&cid).await[0]["successful"], true);
}

#[tokio::test]
async fn ses_7_a_full_queue_without_overflow_drops_nothing() {
    let b = Broker::start(&["--timeout", "2000", "--max-queue", "3"]).await;
    let sub = b.session().await;
    b.subscribe(&sub, "/ses7").await;
    let publisher = b.session().await;
    for n in 0..3 {
        b.publish(&publisher, "/ses7", json!(n)).await;
    }
    let msgs = b.connect_now(&sub).await;
    assert_eq!(data_on(&msgs, "/ses7"), vec![json!(0), json!(1), json!(2)]);
    let dropped = &msgs.last().unwrap()["ext"]["halley"]["dropped"];
    assert!(dropped.is_null() || *dropped == 0, "{msgs:?}");
}
