//! ADV: advice values, placement and the per-browser long-poll limit (BAYEUX.md 3, 4.7, checklist ADV-1..ADV-7).
//!
//! Skipped: ADV-6 (HTTP/2 exemption) needs an HTTP/2 client; HTTP/2 is a later issue.

use std::time::Instant;

use halley_protocol_tests::*;

fn handshake_advice(msgs: &[Value]) -> Value {
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    msgs[0]["advice"].clone()
}

#[tokio::test]
async fn adv_1_defaults_are_timeout_30000_interval_0_max_interval_10000() {
    let b = Broker::start(&[]).await;
    let a = handshake_advice(
        &b.batch(json!([{"channel": "/meta/handshake", "version": "1.0"}]))
            .await,
    );
    assert_eq!(a["timeout"], 30000, "{a}");
    assert_eq!(a["interval"], 0, "{a}");
    if let Some(max) = a.get("maxInterval") {
        assert_eq!(max, 10000, "{a}");
    }
}

#[tokio::test]
async fn adv_1_flags_configure_timeout_interval_and_max_interval() {
    let b = Broker::start(&[
        "--timeout",
        "1234",
        "--interval",
        "56",
        "--max-interval",
        "7890",
    ])
    .await;
    let a = handshake_advice(
        &b.batch(json!([{"channel": "/meta/handshake", "version": "1.0"}]))
            .await,
    );
    assert_eq!(a["timeout"], 1234, "{a}");
    assert_eq!(a["interval"], 56, "{a}");
    if let Some(max) = a.get("maxInterval") {
        assert_eq!(max, 7890, "{a}");
    }
}

#[tokio::test]
async fn adv_1_config_file_configures_timeout_and_interval() {
    let path = std::env::temp_dir().join(format!("halley-adv1-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "timeout = 4321\ninterval = 12\nmax_interval = 9876\n",
    )
    .unwrap();
    let b = Broker::start(&["--config", path.to_str().unwrap()]).await;
    let a = handshake_advice(
        &b.batch(json!([{"channel": "/meta/handshake", "version": "1.0"}]))
            .await,
    );
    std::fs::remove_file(&path).ok();
    assert_eq!(a["timeout"], 4321, "{a}");
    assert_eq!(a["interval"], 12, "{a}");
}

#[tokio::test]
async fn adv_2_no_advice_on_deliveries_acks_and_non_connect_replies() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let mut all = vec![];
    all.extend(b.subscribe(&cid, "/adv2").await);
    all.extend(b.publish(&cid, "/adv2", json!(1)).await);
    let other = b.session().await;
    b.subscribe(&other, "/adv2").await;
    b.publish(&other, "/adv2", json!(2)).await;
    all.extend(
        b.batch(json!([
            {"id": "a", "channel": "/adv2", "clientId": cid, "data": 3},
            {"id": "b", "channel": "/adv2//bad", "clientId": cid, "data": 3},
            {"id": "c", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/meta/x"},
            {"id": "d", "channel": "/meta/unsubscribe", "clientId": cid, "subscription": "/adv2"},
            {"id": "e", "channel": "/service/echo", "clientId": cid, "data": 4}
        ]))
        .await,
    );
    all.extend(
        b.batch(json!([{"id": "f", "channel": "/adv2", "clientId": "nobody", "data": 5}]))
            .await,
    );
    all.extend(
        b.batch(
            json!([{"id": "g", "channel": "/meta/subscribe", "clientId": "nobody",
                                "subscription": "/x"}]),
        )
        .await,
    );
    all.extend(b.disconnect(&cid).await);
    all.extend(b.disconnect(&cid).await);
    assert!(deliveries(&all).len() >= 4, "{all:?}");
    for m in &all {
        assert!(m.get("advice").is_none(), "advice on {m}");
    }
}

#[tokio::test]
async fn adv_3_second_session_of_a_browser_gets_multiple_clients_advice() {
    let b = Broker::start(&["--timeout", "3000"]).await;
    let tab = b.browser().await;
    let first = tab.session().await;
    let second = tab.session().await;
    let t = tab.clone();
    let held = tokio::spawn(async move { t.connect(&first).await });
    sleep_ms(300).await;
    let start = Instant::now();
    let msgs = tab.connect(&second).await;
    assert!(
        start.elapsed() < PROMPT,
        "over-limit connect was held for {:?}",
        start.elapsed()
    );
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    let a = &msgs[0]["advice"];
    assert_eq!(a["multiple-clients"], true, "{a}");
    assert_eq!(a["reconnect"], "retry", "{a}");
    assert_eq!(a["interval"], 2000, "{a}");
    assert!(
        !held.is_finished(),
        "the first session's connect must stay held"
    );
    let first_msgs = held.await.unwrap();
    assert!(
        first_msgs[0]["advice"].get("multiple-clients").is_none(),
        "{first_msgs:?}"
    );
}

#[tokio::test]
async fn adv_3_the_slot_is_released_when_the_held_connect_ends() {
    let b = Broker::start(&["--timeout", "1000"]).await;
    let tab = b.browser().await;
    let first = tab.session().await;
    let second = tab.session().await;
    // The first session's connect is held and times out normally.
    let msgs = tab.connect(&first).await;
    assert!(msgs[0]["advice"].get("multiple-clients").is_none());
    // Now the second one may hold.
    let start = Instant::now();
    let msgs = tab.connect(&second).await;
    assert!(
        start.elapsed().as_millis() >= 900,
        "not held: {:?} {msgs:?}",
        start.elapsed()
    );
    assert!(
        msgs[0]["advice"].get("multiple-clients").is_none(),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn adv_3_connects_without_cookie_are_not_limited() {
    let b = Broker::start(&["--timeout", "3000"]).await;
    let (one, two) = (b.session().await, b.session().await);
    let c = b.client();
    let held = tokio::spawn(async move { c.connect(&one).await });
    sleep_ms(300).await;
    let r = b
        .connect_with(&two, json!({"advice": {"timeout": 500}}))
        .await;
    assert!(r[0]["advice"].get("multiple-clients").is_none(), "{r:?}");
    held.abort();
}

#[tokio::test]
async fn adv_3_max_sessions_per_browser_is_configurable() {
    let b = Broker::start(&["--timeout", "3000", "--max-sessions-per-browser", "2"]).await;
    let tab = b.browser().await;
    let (one, two, three) = (
        tab.session().await,
        tab.session().await,
        tab.session().await,
    );
    let mut held = vec![];
    for cid in [one, two] {
        let t = tab.clone();
        held.push(tokio::spawn(async move { t.connect(&cid).await }));
        sleep_ms(200).await;
    }
    let msgs = tab.connect(&three).await;
    assert_eq!(msgs[0]["advice"]["multiple-clients"], true, "{msgs:?}");
    for h in held {
        let msgs = h.await.unwrap();
        assert!(
            msgs[0]["advice"].get("multiple-clients").is_none(),
            "{msgs:?}"
        );
    }
}

#[tokio::test]
async fn adv_4_non_positive_multi_session_interval_refuses_the_extra_connect() {
    let b = Broker::start(&["--timeout", "3000", "--multi-session-interval", "0"]).await;
    let tab = b.browser().await;
    let first = tab.session().await;
    let second = tab.session().await;
    let t = tab.clone();
    let held = tokio::spawn(async move { t.connect(&first).await });
    sleep_ms(300).await;
    let msgs = tab.connect(&second).await;
    assert_eq!(msgs[0]["successful"], false, "{msgs:?}");
    assert_eq!(msgs[0]["advice"]["reconnect"], "none", "{msgs:?}");
    held.abort();
}

#[tokio::test]
async fn adv_5_superseding_connect_of_the_same_session_is_not_multiple_clients() {
    let b = Broker::start(&["--timeout", "3000"]).await;
    let tab = b.browser().await;
    let cid = tab.session().await;
    let t = tab.clone();
    let s = cid.clone();
    let old = tokio::spawn(async move {
        t.post(
            "/connect",
            json!([{"id": "old", "channel": "/meta/connect",
        "clientId": s, "connectionType": "long-polling"}]),
        )
        .await
    });
    sleep_ms(300).await;
    // A reload: same cookie, same clientId, advice timeout 0 (BAYEUX.md 6.4).
    let msgs = tab.connect_now(&cid).await;
    assert_eq!(old.await.unwrap().status, 500);
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    assert!(
        msgs[0]["advice"].get("multiple-clients").is_none(),
        "{msgs:?}"
    );
    assert_connect_advice(&msgs[0], 0, 3000);
    // And a plain superseding connect is held, not degraded to polling.
    let t = tab.clone();
    let s = cid.clone();
    let old = tokio::spawn(async move {
        t.post(
            "/connect",
            json!([{"id": "old2", "channel": "/meta/connect",
        "clientId": s, "connectionType": "long-polling"}]),
        )
        .await
    });
    sleep_ms(300).await;
    let start = Instant::now();
    let msgs = tab.connect(&cid).await;
    assert_eq!(old.await.unwrap().status, 500);
    assert!(
        start.elapsed().as_millis() >= 2700,
        "not held: {:?} {msgs:?}",
        start.elapsed()
    );
    assert!(
        msgs[0]["advice"].get("multiple-clients").is_none(),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn adv_7_advice_values_are_integers_and_known_reconnect_actions() {
    let b = Broker::start(&["--timeout", "1000"]).await;
    let tab = b.browser().await;
    let mut advices = vec![];
    let hs = tab
        .batch(json!([{"channel": "/meta/handshake", "version": "1.0"}]))
        .await;
    advices.push(hs[0]["advice"].clone());
    let cid = hs[0]["clientId"].as_str().unwrap().to_string();
    advices.push(tab.connect(&cid).await[0]["advice"].clone());
    advices.push(tab.connect_now(&cid).await[0]["advice"].clone());
    let other = tab.session().await;
    let t = tab.clone();
    let c = cid.clone();
    let held = tokio::spawn(async move { t.connect(&c).await });
    sleep_ms(200).await;
    advices.push(tab.connect(&other).await[0]["advice"].clone()); // multiple-clients
    advices.push(held.await.unwrap()[0]["advice"].clone()); // timed out
    let t = tab.clone();
    let c = cid.clone();
    let held = tokio::spawn(async move { t.connect(&c).await });
    sleep_ms(200).await;
    tab.disconnect(&cid).await;
    advices.push(held.await.unwrap()[0]["advice"].clone()); // reconnect none
    advices.push(tab.connect(&cid).await[0]["advice"].clone()); // 402
    let actions: Vec<&str> = advices
        .iter()
        .map(|a| a["reconnect"].as_str().unwrap_or("<missing>"))
        .collect();
    assert!(
        actions.contains(&"none") && actions.contains(&"handshake"),
        "{advices:?}"
    );
    for a in &advices {
        assert!(
            ["retry", "handshake", "none"].contains(&a["reconnect"].as_str().unwrap_or_default()),
            "{a}"
        );
        for key in ["interval", "timeout", "maxInterval"] {
            if let Some(v) = a.get(key) {
                assert!(v.is_u64(), "{key} is not a non-negative integer in {a}");
            }
        }
    }
}
