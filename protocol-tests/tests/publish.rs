//! PUB: publishing, broadcast copies and service channels (BAYEUX.md 2.7, 4.3, 5.7, 5.8, checklist PUB-1..PUB-14).

use halley_protocol_tests::*;

/// A subscriber of `channel` and a separate publisher session.
async fn pair(b: &Broker, channel: &str) -> (String, String) {
    let sub = b.session().await;
    b.subscribe(&sub, channel).await;
    (sub, b.session().await)
}

#[tokio::test]
async fn pub_1_ack_is_channel_id_successful_without_data() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let msgs = b
        .batch(
            json!([{"id": "4", "channel": "/chat/room", "data": {"text": "hi"}, "clientId": cid,
                       "ext": {"x": 1}}]),
        )
        .await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let ack = msgs[0].as_object().unwrap();
    assert_eq!(ack["id"], "4");
    assert_eq!(ack["channel"], "/chat/room");
    assert_eq!(ack["successful"], true);
    for forbidden in ["data", "advice", "error", "subscription"] {
        assert!(!ack.contains_key(forbidden), "ack has {forbidden}: {ack:?}");
    }
    let unexpected: Vec<&String> = ack
        .keys()
        .filter(|k| !["id", "channel", "successful", "clientId", "ext"].contains(&k.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected ack fields {unexpected:?}"
    );
}

#[tokio::test]
async fn pub_2_publish_without_subscribers_is_acknowledged() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let msgs = b.publish(&cid, "/nobody/listens", json!(1)).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
}

#[tokio::test]
async fn pub_3_subscribed_publisher_receives_its_own_message_in_the_same_response() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    b.subscribe(&cid, "/p3").await;
    let msgs = b
        .batch(json!([{"id": "4", "channel": "/p3", "clientId": cid, "data": {"text": "hi"}}]))
        .await;
    // Appendix A: [{"channel":"/chat/room","data":{…}},{"id":"4","channel":"/chat/room","successful":true}]
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0], json!({"channel": "/p3", "data": {"text": "hi"}}));
    assert_eq!(msgs[1]["id"], "4");
    assert_eq!(msgs[1]["successful"], true);
}

#[tokio::test]
async fn pub_3_own_message_rides_on_the_publish_response_while_a_connect_is_held() {
    // BAYEUX.md 2.1 rule 6: a request not starting with /meta/connect is a batch; its deliveries go into
    // its own response instead of waking the held connect.
    let b = Broker::start(&["--timeout", "3000"]).await;
    let cid = b.session().await;
    b.subscribe(&cid, "/p3b").await;
    let c = b.client();
    let s = cid.clone();
    let held = tokio::spawn(async move { c.connect(&s).await });
    sleep_ms(300).await;
    let msgs = b.publish(&cid, "/p3b", json!("mine")).await;
    assert_eq!(data_on(&msgs, "/p3b"), vec![json!("mine")], "{msgs:?}");
    sleep_ms(200).await;
    assert!(
        !held.is_finished(),
        "the held connect was woken for a message already delivered"
    );
    let msgs = held.await.unwrap();
    assert_eq!(msgs.len(), 1, "delivered twice: {msgs:?}");
}

#[tokio::test]
async fn pub_4_copy_has_channel_and_data_and_no_client_id() {
    let b = Broker::fast().await;
    let (sub, publisher) = pair(&b, "/p4").await;
    let data = json!({"a": [1, 2, {"b": null}], "t": "h\u{e9}llo \u{2713} \u{1F600} \u{2028}", "q": "\"\\/"});
    b.publish(&publisher, "/p4", data.clone()).await;
    let got = b.poll(&sub).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["channel"], "/p4");
    assert_eq!(got[0]["data"], data);
    assert!(got[0].get("clientId").is_none(), "{got:?}");
}

#[tokio::test]
async fn pub_5_copy_has_no_id() {
    let b = Broker::fast().await;
    let (sub, publisher) = pair(&b, "/p5").await;
    b.publish(&publisher, "/p5", json!(1)).await;
    let got = b.poll(&sub).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].get("id").is_none(), "{got:?}");
}

#[tokio::test]
async fn pub_6_copy_never_carries_publisher_protocol_fields() {
    let b = Broker::fast().await;
    let (sub, publisher) = pair(&b, "/p6").await;
    let msgs = b
        .batch(
            json!([{"id": "6", "channel": "/p6", "clientId": publisher, "data": "d",
                       "advice": {"reconnect": "none"}, "successful": true, "error": "500::boom",
                       "subscription": "/p6", "connectionType": "long-polling",
                       "timestamp": "Tue, 01 Jan 2030 00:00:00 GMT"}]),
        )
        .await;
    assert_eq!(reply(&msgs, "6")["successful"], true);
    let got = b.poll(&sub).await;
    assert_eq!(got.len(), 1, "{got:?}");
    for forbidden in [
        "advice",
        "successful",
        "error",
        "subscription",
        "connectionType",
        "clientId",
        "id",
    ] {
        assert!(
            got[0].get(forbidden).is_none(),
            "copy has {forbidden}: {}",
            got[0]
        );
    }
    assert_eq!(got[0]["data"], "d");
    assert_eq!(
        got[0]["timestamp"], "Tue, 01 Jan 2030 00:00:00 GMT",
        "timestamp is passed through"
    );
}

#[tokio::test]
async fn pub_7_copy_carries_ext_unchanged() {
    let b = Broker::fast().await;
    let (sub, publisher) = pair(&b, "/p7").await;
    let ext = json!({"binary": {}, "com.acme": {"n": [1, 2.5, "x"], "deep": {"a": null}}});
    let data = json!({"data": "nm=QNzY&b1A+]nf", "last": true, "meta": {"type": "image/png"}});
    let msgs = b
        .batch(
            json!([{"id": "7", "channel": "/p7", "clientId": publisher, "data": data, "ext": ext}]),
        )
        .await;
    assert_eq!(reply(&msgs, "7")["successful"], true);
    let got = b.poll(&sub).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["ext"], ext);
    assert_eq!(got[0]["data"], data);
}

#[tokio::test]
async fn pub_7_ext_and_data_bytes_are_forwarded_verbatim() {
    // BAYEUX.md 6.6: "forward ext unchanged on broadcast copies and never touch data" (EXT-BIN-1 says
    // byte-identical); number spellings are the easiest thing to lose in a parse/serialize round trip.
    let b = Broker::fast().await;
    let (sub, publisher) = pair(&b, "/p7b").await;
    let data = r#"{"n":1.0,"big":123456789012345678901234567890,"e":1e2,"s":"\u00e9"}"#;
    let ext = r#"{"binary":{},"x":1.50}"#;
    let body = format!(
        r#"[{{"id":"7","channel":"/p7b","clientId":"{publisher}","data":{data},"ext":{ext}}}]"#
    );
    let r = b.post_raw("", Some("application/json"), body).await;
    assert_eq!(r.messages()[0]["successful"], true);
    let raw = b
        .post(
            "",
            json!([{"channel": "/meta/connect", "clientId": sub, "advice": {"timeout": 0}}]),
        )
        .await;
    assert!(raw.body.contains(data), "data changed: {}", raw.body);
    assert!(raw.body.contains(ext), "ext changed: {}", raw.body);
}

#[tokio::test]
async fn pub_8_publish_to_a_non_protocol_meta_channel_is_403() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/**").await;
    let publisher = b.session().await;
    for ch in ["/meta/foo", "/meta/custom/x", "/meta/Connect"] {
        let msgs = b
            .batch(json!([{"id": "8", "channel": ch, "clientId": publisher, "data": 1}]))
            .await;
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        let r = &msgs[0];
        assert_eq!(r["successful"], false, "{ch}: {r}");
        let err = r["error"].as_str().unwrap_or_default();
        assert!(
            err.starts_with("403:") && err.ends_with(":channel_create_denied"),
            "{ch}: {r}"
        );
    }
    assert_eq!(b.poll(&sub).await, Vec::<Value>::new());
}

#[tokio::test]
async fn pub_9_publish_with_unknown_client_is_402_and_reaches_nobody() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/p9").await;
    for req in [
        json!([{"id": "9", "channel": "/p9", "clientId": "unknownclient00000000000000000", "data": 1}]),
        json!([{"id": "9", "channel": "/p9", "data": 1}]),
    ] {
        let msgs = b.batch(req).await;
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(msgs[0]["channel"], "/p9");
        assert_session_unknown(&msgs[0], false);
    }
    assert_eq!(b.poll(&sub).await, Vec::<Value>::new());
}

#[tokio::test]
async fn pub_10_publish_without_data_is_delivered_with_null_data() {
    let b = Broker::fast().await;
    let (sub, publisher) = pair(&b, "/p10").await;
    let msgs = b
        .batch(json!([{"id": "10", "channel": "/p10", "clientId": publisher}]))
        .await;
    assert_eq!(reply(&msgs, "10")["successful"], true);
    let got = b.poll(&sub).await;
    assert_eq!(got, vec![json!({"channel": "/p10", "data": null})]);
}

#[tokio::test]
async fn pub_11_service_publish_is_acknowledged_and_never_delivered() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, json!(["/service/x", "/**"])).await;
    let publisher = b.session().await;
    let msgs = b
        .batch(json!([{"id": "11", "channel": "/service/x", "clientId": publisher, "data": 1}]))
        .await;
    assert_eq!(msgs.len(), 1, "no handler, nothing but the ack: {msgs:?}");
    assert_eq!(msgs[0]["successful"], true);
    assert!(msgs[0].get("data").is_none());
    b.publish(&publisher, "/service/echo", json!(2)).await;
    assert_eq!(b.poll(&sub).await, Vec::<Value>::new());
}

#[tokio::test]
async fn pub_12_service_echo_answers_the_caller_with_id_successful_and_data() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let data = json!({"q": "ping", "n": [1, 2]});
    let msgs = b
        .batch(json!([{"id": "12", "channel": "/service/echo", "clientId": cid, "data": data}]))
        .await;
    // Contract: the answer is a direct delivery in the same response, before the ack.
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(
        msgs[0],
        json!({"id": "12", "channel": "/service/echo", "successful": true, "data": data})
    );
    let ack = &msgs[1];
    assert_eq!(ack["id"], "12");
    assert_eq!(ack["channel"], "/service/echo");
    assert_eq!(ack["successful"], true);
    assert!(ack.get("data").is_none(), "{ack}");
}

#[tokio::test]
async fn pub_13_publishes_in_one_request_arrive_in_request_order() {
    let b = Broker::fast().await;
    let (sub, publisher) = pair(&b, "/p13/**").await;
    let batch: Vec<Value> = (0..10)
        .map(|n| json!({"id": format!("p{n}"), "channel": format!("/p13/{}", n % 3), "clientId": publisher,
                        "data": n}))
        .collect();
    let msgs = b.batch(Value::Array(batch)).await;
    assert_eq!(msgs.len(), 10);
    let got: Vec<Value> = b
        .poll(&sub)
        .await
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(got, (0..10).map(|n| json!(n)).collect::<Vec<_>>());
}

#[tokio::test]
async fn pub_14_copy_piggybacks_on_the_next_non_connect_response() {
    let b = Broker::fast().await;
    let (sub, publisher) = pair(&b, "/p14").await;
    b.publish(&publisher, "/p14", json!("piggy")).await;
    let msgs = b
        .batch(json!([{"id": "x", "channel": "/elsewhere", "clientId": sub, "data": 0}]))
        .await;
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0], json!({"channel": "/p14", "data": "piggy"}));
    assert_eq!(msgs[1]["id"], "x");
    // Delivered once: the queue is now empty.
    assert_eq!(b.poll(&sub).await, Vec::<Value>::new());
}
