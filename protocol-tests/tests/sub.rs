//! SUB: `/meta/subscribe` and `/meta/unsubscribe` (BAYEUX.md 2.4, 2.5, checklist SUB-1..SUB-11).

use halley_protocol_tests::*;

/// One subscribe (or unsubscribe) message with a raw `subscription` value; returns its reply.
async fn sub_msg(b: &Broker, channel: &str, cid: &str, subscription: Value) -> Value {
    let msgs = b
        .batch(
            json!([{"id": "s", "channel": channel, "clientId": cid, "subscription": subscription}]),
        )
        .await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    msgs[0].clone()
}

/// What `sub` receives of a publish on `channel` by another session.
async fn delivered(b: &Broker, sub: &str, channel: &str) -> Vec<Value> {
    data_on(&b.relay(sub, &[channel]).await, channel)
}

#[tokio::test]
async fn sub_1_successful_subscribe_echoes_subscription() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let r = sub_msg(&b, "/meta/subscribe", &cid, json!("/chat/*")).await;
    assert_eq!(r["id"], "s");
    assert_eq!(r["channel"], "/meta/subscribe");
    assert_eq!(r["subscription"], "/chat/*");
    assert_eq!(r["successful"], true);
    assert!(r.get("error").is_none() && r.get("advice").is_none(), "{r}");
}

#[tokio::test]
async fn sub_2_failed_subscribe_echoes_subscription() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    for s in [
        json!("/bad//x"),
        json!("/meta/foo"),
        json!(42),
        json!(["/ok", 5]),
        json!(["/a", "/meta/x"]),
    ] {
        let r = sub_msg(&b, "/meta/subscribe", &cid, s.clone()).await;
        assert_eq!(r["successful"], false, "{s}: {r}");
        assert_eq!(r["subscription"], s, "{r}");
    }
}

#[tokio::test]
async fn sub_3_missing_subscription_is_403_subscription_missing() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    for channel in ["/meta/subscribe", "/meta/unsubscribe"] {
        let msgs = b
            .batch(json!([{"id": "3", "channel": channel, "clientId": cid}]))
            .await;
        assert_eq!(msgs[0]["id"], "3");
        assert_eq!(msgs[0]["successful"], false, "{msgs:?}");
        assert_eq!(msgs[0]["error"], "403::subscription_missing", "{msgs:?}");
    }
}

#[tokio::test]
async fn sub_4_invalid_subscription_is_403_subscription_invalid() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let bad = [
        json!("/foo//bar"),
        json!("foo"),
        json!("/foo/"),
        json!("/a/*/b"),
        json!("/a/**/b"),
        json!(""),
        json!(42),
        json!({"channel": "/a"}),
        json!(["/ok", 5]),
        json!(["/ok", "/x//y"]),
    ];
    for s in bad {
        for channel in ["/meta/subscribe", "/meta/unsubscribe"] {
            let r = sub_msg(&b, channel, &cid, s.clone()).await;
            assert_eq!(r["successful"], false, "{channel} {s}: {r}");
            assert_eq!(
                r["error"], "403::subscription_invalid",
                "{channel} {s}: {r}"
            );
        }
    }
}

#[tokio::test]
async fn sub_5_subscribing_to_meta_channels_is_403() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    for s in ["/meta/connect", "/meta/foo", "/meta/*", "/meta/**"] {
        let r = sub_msg(&b, "/meta/subscribe", &cid, json!(s)).await;
        assert_eq!(r["successful"], false, "{s}: {r}");
        assert!(
            r["error"].as_str().unwrap_or_default().starts_with("403:"),
            "{s}: {r}"
        );
        assert_eq!(r["subscription"], s);
    }
}

#[tokio::test]
async fn sub_5_unsubscribing_from_meta_is_403_unsubscribe_failed() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let r = sub_msg(&b, "/meta/unsubscribe", &cid, json!("/meta/connect")).await;
    assert_eq!(r["successful"], false, "{r}");
    assert_eq!(r["error"], "403::unsubscribe_failed", "{r}");
    assert_eq!(r["subscription"], "/meta/connect");
}

#[tokio::test]
async fn sub_6_service_subscription_succeeds_and_receives_nothing() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    for s in ["/service/foo", "/service/echo", "/service/**"] {
        let r = sub_msg(&b, "/meta/subscribe", &sub, json!(s)).await;
        assert_eq!(r["successful"], true, "{s}: {r}");
        assert_eq!(r["subscription"], s);
    }
    let publisher = b.session().await;
    b.publish(&publisher, "/service/foo", json!(1)).await;
    b.publish(&publisher, "/service/echo", json!(2)).await;
    assert_eq!(b.poll(&sub).await, Vec::<Value>::new());
}

#[tokio::test]
async fn sub_7_array_subscription_is_all_or_nothing_and_echoed_as_array() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let ok = json!(["/s7/a", "/s7/b"]);
    let r = sub_msg(&b, "/meta/subscribe", &cid, ok.clone()).await;
    assert_eq!(r["successful"], true, "{r}");
    assert_eq!(r["subscription"], ok);
    assert_eq!(delivered(&b, &cid, "/s7/a").await, vec![json!("/s7/a")]);
    assert_eq!(delivered(&b, &cid, "/s7/b").await, vec![json!("/s7/b")]);

    for bad in [
        json!(["/s7/c", "/bad//x"]),
        json!(["/s7/c", "/meta/x"]),
        json!(["/s7/c", 7]),
    ] {
        let r = sub_msg(&b, "/meta/subscribe", &cid, bad.clone()).await;
        assert_eq!(r["successful"], false, "{r}");
        assert_eq!(r["subscription"], bad);
        assert_eq!(
            delivered(&b, &cid, "/s7/c").await,
            Vec::<Value>::new(),
            "partial subscribe with {bad}"
        );
    }

    let r = sub_msg(&b, "/meta/unsubscribe", &cid, ok.clone()).await;
    assert_eq!(r["successful"], true, "{r}");
    assert_eq!(r["subscription"], ok);
    assert_eq!(delivered(&b, &cid, "/s7/a").await, Vec::<Value>::new());
    assert_eq!(delivered(&b, &cid, "/s7/b").await, Vec::<Value>::new());
}

#[tokio::test]
async fn sub_8_subscribing_twice_yields_one_delivery() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    b.subscribe(&cid, "/s8").await;
    b.subscribe(&cid, "/s8").await;
    b.subscribe(&cid, json!(["/s8", "/s8"])).await;
    assert_eq!(delivered(&b, &cid, "/s8").await, vec![json!("/s8")]);
    // One unsubscribe removes it entirely.
    b.unsubscribe(&cid, "/s8").await;
    assert_eq!(delivered(&b, &cid, "/s8").await, Vec::<Value>::new());
}

#[tokio::test]
async fn sub_9_unsubscribe_stops_deliveries() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    b.subscribe(&cid, "/s9/*").await;
    b.subscribe(&cid, "/s9/keep").await;
    let r = sub_msg(&b, "/meta/unsubscribe", &cid, json!("/s9/*")).await;
    assert_eq!(r["id"], "s");
    assert_eq!(r["channel"], "/meta/unsubscribe");
    assert_eq!(r["subscription"], "/s9/*");
    assert_eq!(r["successful"], true);
    assert!(r.get("advice").is_none(), "{r}");
    assert_eq!(delivered(&b, &cid, "/s9/x").await, Vec::<Value>::new());
    assert_eq!(
        delivered(&b, &cid, "/s9/keep").await,
        vec![json!("/s9/keep")]
    );
}

#[tokio::test]
async fn sub_10_unsubscribing_a_channel_never_subscribed_succeeds() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    for s in [json!("/never"), json!("/never/*"), json!(["/n1", "/n2"])] {
        let r = sub_msg(&b, "/meta/unsubscribe", &cid, s.clone()).await;
        assert_eq!(r["successful"], true, "{r}");
        assert_eq!(r["subscription"], s);
    }
}

#[tokio::test]
async fn sub_11_unknown_client_is_402_without_advice() {
    let b = Broker::fast().await;
    for channel in ["/meta/subscribe", "/meta/unsubscribe"] {
        let r = sub_msg(
            &b,
            channel,
            "nosuchclient0000000000000000000",
            json!("/s11"),
        )
        .await;
        assert_eq!(r["channel"], channel);
        assert_session_unknown(&r, false);
        assert_eq!(r["subscription"], "/s11");
    }
    let msgs = b
        .batch(json!([{"id": "x", "channel": "/meta/subscribe", "subscription": "/s11"}]))
        .await;
    assert_session_unknown(&msgs[0], false);
}
