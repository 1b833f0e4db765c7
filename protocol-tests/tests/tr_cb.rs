//! TR-CB: the callback-polling (JSONP) transport (BAYEUX.md 4.5, checklist TR-CB-1..TR-CB-9).
//!
//! Halley's hardened form: `200 text/javascript;charset=UTF-8`, body `/**/cb([...]);`, `X-Content-Type-Options:
//! nosniff`, `Cache-Control: no-cache, no-store`; invalid callbacks get `400 text/plain` "invalid jsonp callback
//! name".

use std::time::Instant;

use halley_protocol_tests::*;

/// GET `<base><path>?jsonp=<cb>&message=<msgs>` (both form-encoded) plus `extra` query text.
async fn jsonp_get(c: &Client, path: &str, cb: &str, msgs: &Value, extra: &str) -> Resp {
    c.get(&format!(
        "{path}?jsonp={}&message={}{extra}",
        form_encode(cb),
        form_encode(&msgs.to_string())
    ))
    .await
}

/// Checks the JSONP envelope of `r` (status, content type, `/**/cb(…);`) and returns the reply array.
fn script(r: &Resp, cb: &str) -> Vec<Value> {
    assert_eq!(r.status, 200, "HTTP status; body {:?}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript;charset=UTF-8"),
        "{r:?}"
    );
    let inner = r
        .body
        .strip_prefix(&format!("/**/{cb}("))
        .and_then(|b| b.strip_suffix(");"))
        .unwrap_or_else(|| panic!("body is not `/**/{cb}(…);`: {:?}", r.body));
    let v: Value = serde_json::from_str(inner)
        .unwrap_or_else(|e| panic!("argument of {cb} is not JSON ({e}): {inner:?}"));
    let msgs = v.as_array().expect("argument is an array").clone();
    assert!(!msgs.is_empty(), "JSONP argument must never be [] (MSG-3)");
    msgs
}

/// One JSONP exchange on `/cometd/<path>` with callback `cb`; returns the checked reply array.
async fn jsonp(c: &Client, path: &str, cb: &str, msgs: Value) -> Vec<Value> {
    script(&jsonp_get(c, path, cb, &msgs, "").await, cb)
}

/// A handshake plus first connect over callback-polling; returns the clientId.
async fn jsonp_session(c: &Client) -> String {
    let msgs = jsonp(
        c,
        "/handshake",
        "cb",
        json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0",
                "supportedConnectionTypes": ["callback-polling"]}]),
    )
    .await;
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    let cid = msgs[0]["clientId"].as_str().expect("clientId").to_string();
    let msgs = jsonp_connect(c, &cid, "c0", json!({})).await;
    assert_eq!(reply(&msgs, "c0")["successful"], true, "{msgs:?}");
    cid
}

/// A lone callback-polling connect with id `id` and `extra` fields merged in.
async fn jsonp_connect(c: &Client, cid: &str, id: &str, extra: Value) -> Vec<Value> {
    let mut msg = json!({"id": id, "channel": "/meta/connect", "clientId": cid,
                         "connectionType": "callback-polling"});
    merge(&mut msg, extra);
    jsonp(c, "/connect", "_cometd_jsonp_1", json!([msg])).await
}

#[tokio::test]
async fn tr_cb_1_handshake_over_jsonp_is_one_call_of_the_callback() {
    let b = Broker::fast().await;
    let msgs = jsonp(
        &b,
        "/handshake",
        "cb",
        json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0",
                "supportedConnectionTypes": ["callback-polling"]}]),
    )
    .await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let r = &msgs[0];
    assert_eq!(r["id"], "1");
    assert_eq!(r["channel"], "/meta/handshake");
    assert_eq!(r["successful"], true, "{r}");
    assert_eq!(r["version"], "1.0");
    let cid = r["clientId"].as_str().expect("clientId");
    assert!(
        !cid.is_empty() && cid.chars().all(|c| c.is_ascii_alphanumeric()),
        "{cid}"
    );
    let types = r["supportedConnectionTypes"].as_array().expect("types");
    assert!(types.contains(&json!("callback-polling")), "HS-4: {r}");
    assert!(types.contains(&json!("long-polling")), "HS-4: {r}");
    assert_connect_advice(r, 0, FAST_TIMEOUT_MS);
}

#[tokio::test]
async fn tr_cb_1_the_session_is_usable_over_jsonp_and_long_polling() {
    let b = Broker::fast().await;
    let cid = jsonp_session(&b).await;
    // The same session is found by clientId whatever the transport.
    let msgs = b.connect_now(&cid).await;
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    let msgs = jsonp(
        &b,
        "/disconnect",
        "cb",
        json!([{"id": "d", "channel": "/meta/disconnect", "clientId": cid}]),
    )
    .await;
    assert_eq!(
        msgs,
        vec![json!({"id": "d", "channel": "/meta/disconnect", "successful": true})]
    );
    assert_session_unknown(&b.connect(&cid).await[0], true);
}

#[tokio::test]
async fn tr_cb_2_real_client_callback_names_are_accepted() {
    let b = Broker::fast().await;
    let long = format!("a{}", "b".repeat(127));
    assert_eq!(long.len(), 128);
    for cb in [
        "_cometd_jsonp_3",
        "__jsonp3__",
        "jQuery1234_5678",
        "a.b._c",
        "dojo.io.script.jsonp_dojoIoScript1._jsonpCallback",
        "$cb",
        long.as_str(),
    ] {
        let msgs = jsonp(
            &b,
            "/handshake",
            cb,
            json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0"}]),
        )
        .await;
        assert_eq!(msgs[0]["successful"], true, "{cb}: {msgs:?}");
    }
}

#[tokio::test]
async fn tr_cb_3_invalid_callback_names_are_refused_with_a_non_script_400() {
    let b = Broker::fast().await;
    let too_long = "a".repeat(129);
    for cb in [
        "alert(1)",
        "a;b",
        "</script>",
        too_long.as_str(),
        "a..b",
        "1abc",
        "a-b",
        ".a",
        "a.",
        "a b",
        "",
        "cb\u{2028}",
    ] {
        let r = jsonp_get(
            &b,
            "/handshake",
            cb,
            &json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0"}]),
            "",
        )
        .await;
        assert_eq!(r.status, 400, "{cb:?}: {r:?}");
        let ct = r.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("text/plain"), "{cb:?}: content-type {ct:?}");
        assert_eq!(r.body.trim_end(), "invalid jsonp callback name", "{cb:?}");
        if !cb.is_empty() {
            assert!(!r.body.contains(cb), "the body echoes {cb:?}: {:?}", r.body);
        }
        assert!(
            r.header("set-cookie").is_none(),
            "{cb:?}: no handshake may happen"
        );
    }
}

#[tokio::test]
async fn tr_cb_4_get_without_jsonp_is_answered_as_long_polling_json() {
    // Deliberate deviation from TR-CB-4 (contract, "Update"): instead of calling the spec's default callback
    // `jsonpcallback`, a GET with `message` but no `jsonp` is answered like a long-polling request with a JSON
    // array. Every JSONP client of BAYEUX.md 4.5 (CometD JS, Faye, jQuery, dojo) always sends `jsonp`, so no real
    // client needs the default name; answering JSON instead of script means a bare cross-site <script> tag
    // never gets executable code with a guessable callback, and plain GET polling (curl, tr_lp.rs) keeps working.
    let b = Broker::fast().await;
    let r = b
        .get(&format!(
            "/handshake?message={}",
            form_encode(
                &json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0"}]).to_string()
            )
        ))
        .await;
    let msgs = r.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["id"], "1");
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    assert!(!r.body.contains("jsonpcallback"), "{:?}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/json;charset=UTF-8")
    );
}

#[tokio::test]
async fn tr_cb_5_jsonp_connect_is_held_and_released_by_a_publish() {
    let b = Broker::start(&["--timeout", "5000"]).await;
    let cid = jsonp_session(&b).await;
    let msgs = jsonp(
        &b,
        "/subscribe",
        "cb",
        json!([{"id": "s", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/cb5"}]),
    )
    .await;
    assert_eq!(reply(&msgs, "s")["successful"], true, "{msgs:?}");

    let c = b.client();
    let s = cid.clone();
    let held = spawn_timed(async move { jsonp_connect(&c, &s, "c1", json!({})).await });
    sleep_ms(500).await;
    assert!(!held.is_finished(), "the JSONP connect was not held");
    let publisher = b.session().await;
    let sent = Instant::now();
    b.publish(&publisher, "/cb5", json!({"n": 5})).await;
    let (msgs, done) = held.await.unwrap();
    assert!(done - sent < PROMPT, "released after {:?}", done - sent);
    assert_eq!(data_on(&msgs, "/cb5"), vec![json!({"n": 5})], "{msgs:?}");
    let r = reply(&msgs, "c1");
    assert_eq!(r["channel"], "/meta/connect");
    assert_eq!(r["successful"], true, "{r}");
    assert_connect_advice(r, 0, 5000);
}

#[tokio::test]
async fn tr_cb_5_idle_jsonp_connect_is_held_for_the_timeout() {
    let b = Broker::start(&["--timeout", "1500"]).await;
    let cid = jsonp_session(&b).await;
    let start = Instant::now();
    let msgs = jsonp_connect(&b, &cid, "c1", json!({})).await;
    let held = start.elapsed().as_millis();
    assert!((1350..3000).contains(&held), "held {held} ms");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["successful"], true);
    assert_connect_advice(&msgs[0], 0, 1500);
}

#[tokio::test]
async fn tr_cb_6_jsonp_non_connect_responses_carry_no_deliveries() {
    let b = Broker::fast().await;
    let cid = jsonp_session(&b).await;
    let msgs = jsonp(
        &b,
        "/subscribe",
        "cb",
        json!([{"id": "s", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/cb6"}]),
    )
    .await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let publisher = b.session().await;
    b.publish(&publisher, "/cb6", json!("first")).await;

    // A publish (to its own channel) and a subscribe over JSONP: only their replies come back.
    let msgs = jsonp(
        &b,
        "/publish",
        "cb",
        json!([{"id": "p", "channel": "/cb6", "clientId": cid, "data": "second"},
               {"id": "s2", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/cb6b"}]),
    )
    .await;
    assert!(deliveries(&msgs).is_empty(), "{msgs:?}");
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(
        msgs[0],
        json!({"id": "p", "channel": "/cb6", "successful": true})
    );
    assert_eq!(msgs[1]["id"], "s2");
    assert_eq!(msgs[1]["successful"], true);

    // The JSONP connect gets both, in publish order, at once.
    let start = Instant::now();
    let msgs = jsonp_connect(&b, &cid, "c1", json!({})).await;
    assert!(start.elapsed() < PROMPT, "queued deliveries were held");
    assert_eq!(
        data_on(&msgs, "/cb6"),
        vec![json!("first"), json!("second")],
        "{msgs:?}"
    );
    assert_eq!(reply(&msgs, "c1")["successful"], true);
}

#[tokio::test]
async fn tr_cb_7_u2028_and_u2029_are_escaped() {
    let b = Broker::fast().await;
    let cid = jsonp_session(&b).await;
    jsonp(
        &b,
        "/subscribe",
        "cb",
        json!([{"id": "s", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/cb7"}]),
    )
    .await;
    let publisher = b.session().await;
    let text = "line\u{2028}para\u{2029}end";
    b.publish(&publisher, "/cb7", json!(text)).await;
    let msg = json!([{"id": "c1", "channel": "/meta/connect", "clientId": cid,
                      "connectionType": "callback-polling", "advice": {"timeout": 0}}]);
    let r = jsonp_get(&b, "/connect", "cb", &msg, "").await;
    assert!(
        !r.body.contains('\u{2028}') && !r.body.contains('\u{2029}'),
        "raw U+2028/U+2029 in {:?}",
        r.body
    );
    assert!(
        r.body.contains("line\\u2028para\\u2029end"),
        "escapes missing: {:?}",
        r.body
    );
    // The escaped form is still the same JSON string.
    assert_eq!(data_on(&script(&r, "cb"), "/cb7"), vec![json!(text)]);
}

#[tokio::test]
async fn tr_cb_8_two_message_parameters_form_one_batch_in_order() {
    let b = Broker::fast().await;
    let cid = jsonp_session(&b).await;
    // The publish only reaches the session if the subscribe (first parameter) was processed before it.
    let first =
        json!([{"id": "1", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/cb8"}]);
    let second = json!([{"id": "2", "channel": "/cb8", "clientId": cid, "data": "x"},
                        {"id": "3", "channel": "/meta/unsubscribe", "clientId": cid, "subscription": "/cb8"}]);
    let r = b
        .get(&format!(
            "/?jsonp=cb&message={}&message={}",
            form_encode(&first.to_string()),
            form_encode(&second.to_string())
        ))
        .await;
    let msgs = script(&r, "cb");
    let ids: Vec<&Value> = msgs.iter().map(|m| &m["id"]).collect();
    assert_eq!(ids, vec!["1", "2", "3"], "{msgs:?}");
    assert!(msgs.iter().all(|m| m["successful"] == true), "{msgs:?}");
    let msgs = jsonp_connect(&b, &cid, "c1", json!({"advice": {"timeout": 0}})).await;
    assert_eq!(data_on(&msgs, "/cb8"), vec![json!("x")], "{msgs:?}");
}

#[tokio::test]
async fn tr_cb_9_jsonp_responses_are_not_cached_nor_sniffed() {
    let b = Broker::fast().await;
    let r = jsonp_get(
        &b,
        "/handshake",
        "cb",
        &json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0"}]),
        "",
    )
    .await;
    let cid = script(&r, "cb")[0]["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    let connect = jsonp_get(
        &b,
        "/connect",
        "cb",
        &json!([{"id": "2", "channel": "/meta/connect", "clientId": cid,
                 "connectionType": "callback-polling"}]),
        "",
    )
    .await;
    script(&connect, "cb");
    for r in [&r, &connect] {
        assert_eq!(
            r.header("cache-control"),
            Some("no-cache, no-store"),
            "{r:?}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    }
}

#[tokio::test]
async fn tr_cb_cache_buster_parameter_is_ignored() {
    // jQuery and dojo append `_=<timestamp>` to defeat caches.
    let b = Broker::fast().await;
    let r = jsonp_get(
        &b,
        "/handshake",
        "jQuery1234_5678",
        &json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0"}]),
        "&_=1700000000000",
    )
    .await;
    let msgs = script(&r, "jQuery1234_5678");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
}

#[tokio::test]
async fn tr_cb_bayeux_errors_are_still_200_scripts() {
    let b = Broker::fast().await;
    let msgs = jsonp(
        &b,
        "/connect",
        "cb",
        json!([{"id": "1", "channel": "/meta/connect", "clientId": "nosuchclient",
                "connectionType": "callback-polling"}]),
    )
    .await;
    assert_eq!(msgs.len(), 1);
    assert_session_unknown(&msgs[0], true);
}
