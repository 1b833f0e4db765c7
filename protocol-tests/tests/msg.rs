//! MSG: message model, batching and request bodies (BAYEUX.md 1.1, 1.2, 4.2, checklist MSG-1..MSG-11).

use halley_protocol_tests::*;

#[tokio::test]
async fn msg_1_batch_of_n_messages_gets_one_reply_per_id() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let msgs = b
        .batch(json!([
            {"id": "m1", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/msg1/a"},
            {"id": "m2", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/msg1/b"},
            {"id": "m3", "channel": "/msg1/x", "clientId": cid, "data": 1},
            {"id": "m4", "channel": "/meta/unsubscribe", "clientId": cid, "subscription": "/msg1/a"},
            {"id": "m5", "channel": "/msg1/y", "clientId": cid, "data": 2}
        ]))
        .await;
    assert_eq!(msgs.len(), 5, "{msgs:?}");
    for id in ["m1", "m2", "m3", "m4", "m5"] {
        assert_eq!(reply(&msgs, id)["successful"], true, "{msgs:?}");
    }
}

#[tokio::test]
async fn msg_1_later_message_with_a_different_client_id_is_402() {
    // BAYEUX.md 1.2 / 2.8: the session comes from the first message; a differing clientId later is 402.
    let b = Broker::fast().await;
    let (one, two) = (b.session().await, b.session().await);
    b.subscribe(&two, "/msg1b").await;
    let msgs = b
        .batch(
            json!([{"id": "a", "channel": "/msg1b", "clientId": one, "data": 1},
                      {"id": "b", "channel": "/msg1b", "clientId": two, "data": 2}]),
        )
        .await;
    assert_eq!(reply(&msgs, "a")["successful"], true);
    assert_session_unknown(reply(&msgs, "b"), false);
    assert_eq!(data_on(&b.poll(&two).await, "/msg1b"), vec![json!(1)]);
}

#[tokio::test]
async fn msg_2_single_object_body_is_a_batch_of_one_answered_with_an_array() {
    let b = Broker::fast().await;
    let resp = b
        .post(
            "",
            json!({"id": "1", "channel": "/meta/handshake", "version": "1.0",
                         "supportedConnectionTypes": ["long-polling"]}),
        )
        .await;
    let msgs = resp.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["id"], "1");
    assert_eq!(msgs[0]["channel"], "/meta/handshake");
    assert_eq!(msgs[0]["successful"], true);
    let cid = msgs[0]["clientId"].as_str().unwrap();
    let msgs = b
        .post(
            "",
            json!({"id": "2", "channel": "/meta/connect", "clientId": cid,
                                 "connectionType": "long-polling"}),
        )
        .await
        .messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["id"], "2");
    assert_eq!(msgs[0]["successful"], true);
}

#[tokio::test]
async fn msg_3_no_response_is_an_empty_array() {
    let b = Broker::start(&["--timeout", "1000"]).await;
    let cid = b.session().await;
    // `messages()` asserts non-emptiness of every response below.
    // A connect that times out with nothing queued.
    let held = b.connect(&cid).await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["successful"], true);
    // Messages without ids still get replies.
    let msgs = b
        .batch(json!([{"channel": "/msg3/x", "clientId": cid, "data": 1}]))
        .await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["channel"], "/msg3/x");
    assert_eq!(msgs[0]["successful"], true);
    assert!(msgs[0].get("id").is_none(), "{msgs:?}");
    let msgs = b
        .batch(
            json!([{"channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling",
                       "advice": {"timeout": 0}}]),
        )
        .await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["successful"], true);
    let msgs = b
        .batch(json!([{"channel": "/meta/disconnect", "clientId": "nope"}]))
        .await;
    assert_eq!(msgs.len(), 1);
    assert_session_unknown(&msgs[0], false);
}

#[tokio::test]
async fn msg_4_reply_id_keeps_value_and_json_type() {
    let b = Broker::fast().await;
    let long = "x".repeat(40);
    let ids = [
        json!("7"),
        json!(7),
        json!("0"),
        json!(0),
        json!(long),
        json!(123456789012u64),
    ];
    for id in ids {
        let msgs = b
            .batch(
                json!([{"id": id, "channel": "/meta/handshake", "version": "1.0",
                           "supportedConnectionTypes": ["long-polling"]}]),
            )
            .await;
        assert_eq!(msgs[0]["id"], id, "handshake {msgs:?}");
        let cid = msgs[0]["clientId"].as_str().unwrap().to_string();
        let batches = [
            json!([{"id": id, "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling"}]),
            json!([{"id": id, "channel": "/meta/subscribe", "clientId": cid, "subscription": "/msg4"}]),
            json!([{"id": id, "channel": "/msg4/other", "clientId": cid, "data": {}}]),
            json!([{"id": id, "channel": "/meta/unsubscribe", "clientId": cid, "subscription": "/msg4"}]),
            json!([{"id": id, "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling",
                    "advice": {"timeout": 0}}]),
            json!([{"id": id, "channel": "/msg4/other", "clientId": "unknown", "data": {}}]),
            json!([{"id": id, "channel": "/meta/connect", "clientId": "unknown", "connectionType": "long-polling"}]),
            json!([{"id": id, "channel": "/meta/disconnect", "clientId": cid}]),
        ];
        for req in batches {
            let msgs = b.batch(req.clone()).await;
            assert_eq!(msgs.len(), 1, "{req} -> {msgs:?}");
            assert_eq!(msgs[0]["id"], id, "{req} -> {msgs:?}");
        }
    }
}

#[tokio::test]
async fn msg_5_reply_channel_is_the_request_channel_verbatim() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    for channel in [
        "/MSG5/Chan (x)",
        "/msg5/a b",
        "/foo//bar",
        "/meta/Foo",
        "/msg5/*",
        "/service/Msg5",
    ] {
        let msgs = b
            .batch(json!([{"id": "1", "channel": channel, "clientId": cid, "data": 1}]))
            .await;
        assert_eq!(msgs.len(), 1, "{channel}: {msgs:?}");
        assert_eq!(msgs[0]["channel"], channel, "{msgs:?}");
    }
    for channel in ["/meta/subscribe", "/meta/unsubscribe"] {
        let msgs = b
            .batch(json!([{"id": "1", "channel": channel, "clientId": cid, "subscription": "/a"}]))
            .await;
        assert_eq!(reply(&msgs, "1")["channel"], channel);
    }
}

#[tokio::test]
async fn msg_6_every_reply_has_a_boolean_successful() {
    let b = Broker::fast().await;
    let hs = b
        .batch(
            json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0",
                       "supportedConnectionTypes": ["long-polling"]}]),
        )
        .await;
    assert!(hs[0]["successful"].is_boolean(), "{hs:?}");
    let cid = hs[0]["clientId"].as_str().unwrap();
    let msgs = b
        .batch(json!([
            {"id": "2", "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling"},
            {"id": "3", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/msg6"},
            {"id": "4", "channel": "/msg6", "clientId": cid, "data": "x"},
            {"id": "5", "channel": "/meta/unsubscribe", "clientId": cid, "subscription": "/msg6"},
            {"id": "6", "channel": "/msg6//bad", "clientId": cid, "data": "x"},
            {"id": "7", "channel": "/meta/disconnect", "clientId": cid}
        ]))
        .await;
    for id in ["2", "3", "4", "5", "6", "7"] {
        assert!(
            reply(&msgs, id)["successful"].is_boolean(),
            "{id}: {msgs:?}"
        );
    }
    assert_eq!(reply(&msgs, "6")["successful"], false);
    assert_eq!(reply(&msgs, "7")["successful"], true);
}

#[tokio::test]
async fn msg_7_message_without_channel_fails_alone() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/msg7").await;
    let publisher = b.session().await;
    let msgs = b
        .batch(json!([
            {"id": "a", "clientId": publisher, "data": "lost"},
            {"id": "b", "channel": "/msg7", "clientId": publisher, "data": "kept"}
        ]))
        .await;
    let a = reply(&msgs, "a");
    assert_eq!(a["successful"], false);
    assert_eq!(a["error"], "400::channel_missing");
    assert!(a.get("channel").is_none(), "no channel key expected: {a}");
    assert_eq!(reply(&msgs, "b")["successful"], true);
    assert_eq!(data_on(&b.poll(&sub).await, "/msg7"), vec![json!("kept")]);
}

#[tokio::test]
async fn msg_8_invalid_json_body_is_400() {
    let b = Broker::fast().await;
    for body in [
        "[{\"channel\":",
        "not json",
        "{\"channel\":\"/meta/handshake\"",
        "",
        "[{}]]",
    ] {
        let r = b.post_raw("", Some("application/json"), body).await;
        assert_eq!(r.status, 400, "body {body:?} -> {r:?}");
    }
}

#[tokio::test]
async fn msg_8_invalid_utf8_is_400() {
    // BAYEUX.md 4.2: "Decode as UTF-8. Reject unparsable JSON ... with HTTP 400"; RFC 8259 JSON is UTF-8.
    let b = Broker::fast().await;
    let cid = b.session().await;
    for (field, value) in [
        ("data", &b"\"a\xffb\""[..]),
        ("x-unknown", &b"\"\xfe\""[..]),
    ] {
        let mut body =
            format!("[{{\"id\":\"1\",\"channel\":\"/msg8\",\"clientId\":\"{cid}\",\"{field}\":")
                .into_bytes();
        body.extend_from_slice(value);
        body.extend_from_slice(b"}]");
        let r = b.post_raw("", Some("application/json"), body).await;
        assert_eq!(r.status, 400, "invalid UTF-8 in {field}: {r:?}");
    }
}

#[tokio::test]
async fn msg_8_400_bodies_are_empty_or_plain_text() {
    // BAYEUX.md 4.8: "Response body empty or text/plain".
    let b = Broker::fast().await;
    for body in ["[]", "42", "{", ""] {
        let r = b.post_raw("", Some("application/json"), body).await;
        assert_eq!(r.status, 400, "{body}");
        let ct = r.header("content-type").unwrap_or_default();
        assert!(
            r.body.is_empty() || ct.starts_with("text/plain"),
            "{body}: {ct:?} {:?}",
            r.body
        );
    }
}

#[tokio::test]
async fn msg_8_scalar_top_level_is_400() {
    let b = Broker::fast().await;
    for body in ["42", "\"/meta/handshake\"", "true", "null"] {
        let r = b.post_raw("", Some("application/json"), body).await;
        assert_eq!(r.status, 400, "body {body:?} -> {r:?}");
    }
}

#[tokio::test]
async fn msg_8_empty_batch_is_400() {
    let b = Broker::fast().await;
    let r = b.post_raw("", Some("application/json"), "[]").await;
    assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test]
async fn msg_8_deeply_nested_data_is_400_and_the_broker_survives() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let depth = 10_000;
    let body = format!(
        "[{{\"id\":\"1\",\"channel\":\"/msg8\",\"clientId\":\"{cid}\",\"data\":{}{}}}]",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let r = b.post_raw("", Some("application/json"), body).await;
    assert_eq!(r.status, 400, "{:?}", r.status);
    // Still serving, and the session is intact.
    let msgs = b.connect_now(&cid).await;
    assert_eq!(msgs.last().unwrap()["successful"], true);
    let other = b.handshake().await;
    assert!(!other.is_empty());
}

#[tokio::test]
async fn msg_9_long_string_ids_with_dash_and_underscore_are_echoed() {
    let b = Broker::fast().await;
    let id = format!("a-b_{}", "Z9-_".repeat(63));
    assert_eq!(id.len(), 256);
    let msgs = b
        .batch(
            json!([{"id": id, "channel": "/meta/handshake", "version": "1.0",
                       "supportedConnectionTypes": ["long-polling"]}]),
        )
        .await;
    assert_eq!(msgs[0]["id"], id.as_str());
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    let cid = msgs[0]["clientId"].as_str().unwrap();
    let msgs = b
        .batch(json!([{"id": id, "channel": "/msg9", "clientId": cid, "data": 1}]))
        .await;
    assert_eq!(msgs[0]["id"], id.as_str());
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
}

#[tokio::test]
async fn msg_10_unknown_top_level_fields_are_ignored() {
    let b = Broker::fast().await;
    let msgs = b
        .batch(json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0", "x-custom": {"a": 1},
                       "supportedConnectionTypes": ["long-polling"], "connectionId": "legacy",
                       "json-comment-filtered": true, "timestamp": "Tue, 01 Jan 2030 00:00:00 GMT"}]))
        .await;
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    let cid = msgs[0]["clientId"].as_str().unwrap();
    let msgs = b
        .batch(json!([
            {"id": "2", "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling", "zzz": [1]},
            {"id": "3", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/msg10", "foo": null},
            {"id": "4", "channel": "/msg10", "clientId": cid, "data": 1, "bar": "baz"}
        ]))
        .await;
    for id in ["2", "3", "4"] {
        assert_eq!(reply(&msgs, id)["successful"], true, "{msgs:?}");
    }
}

#[tokio::test]
async fn msg_11_connect_first_batch_is_processed_completely_and_at_once() {
    let b = Broker::start(&["--timeout", "5000"]).await;
    // As the second connect of the session (a lone one would be held).
    let cid = b.session().await;
    let start = std::time::Instant::now();
    let msgs = b
        .batch(json!([
            {"id": "c", "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling"},
            {"id": "s1", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/msg11/a"},
            {"id": "s2", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/msg11/b"}
        ]))
        .await;
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    for id in ["c", "s1", "s2"] {
        assert_eq!(reply(&msgs, id)["successful"], true, "{msgs:?}");
    }
    let other = b.session().await;
    b.publish(&other, "/msg11/a", json!(1)).await;
    b.publish(&other, "/msg11/b", json!(2)).await;
    let got = b.poll(&cid).await;
    assert_eq!(got.len(), 2, "{got:?}");
}

#[tokio::test]
async fn msg_11_connect_first_batch_right_after_handshake_is_answered_at_once() {
    let b = Broker::start(&["--timeout", "5000"]).await;
    let cid = b.handshake().await;
    let start = std::time::Instant::now();
    let msgs = b
        .batch(json!([
            {"id": "c", "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling"},
            {"id": "s1", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/msg11/a"},
            {"id": "s2", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/msg11/b"}
        ]))
        .await;
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    for id in ["c", "s1", "s2"] {
        assert_eq!(reply(&msgs, id)["successful"], true, "{msgs:?}");
    }
}

#[tokio::test]
async fn msg_1_large_batch_gets_every_reply_in_order() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let batch: Vec<Value> = (0..300)
        .map(|n| json!({"id": n.to_string(), "channel": format!("/msg1/{n}"), "clientId": cid, "data": n}))
        .collect();
    let msgs = b.batch(Value::Array(batch)).await;
    let ids: Vec<&Value> = msgs.iter().map(|m| &m["id"]).collect();
    let expected: Vec<Value> = (0..300).map(|n| json!(n.to_string())).collect();
    assert_eq!(ids, expected.iter().collect::<Vec<_>>());
    assert!(msgs.iter().all(|m| m["successful"] == true));
}
