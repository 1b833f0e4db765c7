//! TR-LP: the long-polling transport: URLs, request bodies, response envelope (BAYEUX.md 4.1-4.4,
//! checklist TR-LP-1..TR-LP-11).

use std::time::Instant;

use halley_protocol_tests::*;

fn handshake_msg() -> Value {
    json!({"id": "1", "channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]})
}

/// Asserts `resp` is a successful handshake answer and returns its clientId.
fn handshake_ok(resp: &Resp) -> String {
    let msgs = resp.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
    msgs[0]["clientId"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn tr_lp_1_every_path_under_the_base_is_the_same_endpoint() {
    let b = Broker::fast().await;
    for suffix in [
        "",
        "/",
        "/handshake",
        "/connect",
        "/disconnect",
        "/x/y",
        "/meta/handshake",
    ] {
        let cid = handshake_ok(&b.post(suffix, json!([handshake_msg()])).await);
        let steps = [
            json!([{"id": "2", "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling"}]),
            json!([{"id": "3", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/lp1"}]),
            json!([{"id": "4", "channel": "/lp1", "clientId": cid, "data": suffix}]),
            json!([{"id": "5", "channel": "/meta/disconnect", "clientId": cid}]),
        ];
        for step in steps {
            let r = b.post(suffix, step.clone()).await;
            assert_eq!(r.status, 200, "{suffix:?} {step}: {r:?}");
            let msgs = r.messages();
            let id = step[0]["id"].as_str().unwrap();
            assert_eq!(reply(&msgs, id)["successful"], true, "{suffix:?}: {msgs:?}");
            if id == "4" {
                assert_eq!(data_on(&msgs, "/lp1"), vec![json!(suffix)]);
            }
        }
    }
}

#[tokio::test]
async fn tr_lp_2_json_content_types_are_accepted() {
    let b = Broker::fast().await;
    for ct in [
        "application/json",
        "application/json;charset=UTF-8",
        "application/json; charset=utf-8",
    ] {
        let r = b
            .post_raw("", Some(ct), json!([handshake_msg()]).to_string())
            .await;
        handshake_ok(&r);
    }
}

#[tokio::test]
async fn tr_lp_3_text_json_is_accepted() {
    let b = Broker::fast().await;
    let cid = handshake_ok(
        &b.post_raw("", Some("text/json"), json!([handshake_msg()]).to_string())
            .await,
    );
    let body = json!([{"id": "2", "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling"}]);
    let msgs = b
        .post_raw(
            "/connect",
            Some("text/json;charset=UTF-8"),
            body.to_string(),
        )
        .await
        .messages();
    assert_eq!(msgs[0]["successful"], true, "{msgs:?}");
}

#[tokio::test]
async fn tr_lp_4_form_encoded_message_parameters_are_accepted() {
    let b = Broker::fast().await;
    let form = "application/x-www-form-urlencoded";
    let body = format!(
        "message={}",
        form_encode(&json!([handshake_msg()]).to_string())
    );
    let cid = handshake_ok(&b.post_raw("", Some(form), body).await);
    // A bare object in a parameter.
    let connect = json!({"id": "2", "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling"});
    let body = format!("message={}", form_encode(&connect.to_string()));
    let msgs = b
        .post_raw(
            "",
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            body,
        )
        .await
        .messages();
    assert_eq!(reply(&msgs, "2")["successful"], true);
    // Two parameters form one batch, in order.
    let first =
        json!([{"id": "3", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/lp4"}]);
    let second = json!([{"id": "4", "channel": "/lp4", "clientId": cid, "data": "form"}]);
    let body = format!(
        "message={}&message={}",
        form_encode(&first.to_string()),
        form_encode(&second.to_string())
    );
    let msgs = b.post_raw("", Some(form), body).await.messages();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert_eq!(msgs[0], json!({"channel": "/lp4", "data": "form"}));
    assert_eq!(msgs[1]["id"], "3");
    assert_eq!(msgs[2]["id"], "4");
}

#[tokio::test]
async fn tr_lp_5_text_plain_message_form_is_accepted() {
    let b = Broker::fast().await;
    let body = format!(
        "message={}",
        form_encode(&json!([handshake_msg()]).to_string())
    );
    for ct in [Some("text/plain"), Some("text/plain;charset=UTF-8"), None] {
        handshake_ok(&b.post_raw("", ct, body.clone()).await);
    }
}

#[tokio::test]
async fn tr_lp_5_text_plain_or_untyped_json_is_accepted() {
    let b = Broker::fast().await;
    let body = json!([handshake_msg()]).to_string();
    for ct in [Some("text/plain;charset=UTF-8"), None] {
        handshake_ok(&b.post_raw("", ct, body.clone()).await);
    }
}

#[tokio::test]
async fn tr_lp_6_responses_are_200_application_json() {
    let b = Broker::fast().await;
    let r = b.post("/handshake", json!([handshake_msg()])).await;
    let cid = handshake_ok(&r);
    let requests = [
        json!([{"id": "2", "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling"}]),
        json!([{"id": "3", "channel": "/lp6", "clientId": cid, "data": 1}]),
        json!([{"id": "4", "channel": "/lp6", "clientId": "nobody", "data": 1}]),
        json!([{"id": "5", "channel": "/lp6//x", "clientId": cid, "data": 1}]),
    ];
    for req in requests {
        let r = b.post("", req).await;
        assert_eq!(r.status, 200);
        let ct = r
            .header("content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            ct == "application/json" || ct.starts_with("application/json;"),
            "{ct:?}"
        );
    }
}

#[tokio::test]
async fn tr_lp_7_deliveries_precede_replies() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let msgs = b
        .batch(json!([{"id": "3", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/chat/*"},
                      {"id": "4", "channel": "/chat/room", "clientId": cid, "data": {"text": "hi"}}]))
        .await;
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert_eq!(
        msgs[0],
        json!({"channel": "/chat/room", "data": {"text": "hi"}})
    );
    assert_eq!(
        msgs[1],
        json!({"id": "3", "channel": "/meta/subscribe", "subscription": "/chat/*",
                               "successful": true})
    );
    assert_eq!(msgs[2]["id"], "4");
    assert_eq!(msgs[2]["successful"], true);
}

#[tokio::test]
async fn tr_lp_7_queued_deliveries_precede_the_replies_of_a_connect_batch() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    b.subscribe(&cid, "/lp7").await;
    let publisher = b.session().await;
    b.publish(&publisher, "/lp7", json!(1)).await;
    b.publish(&publisher, "/lp7", json!(2)).await;
    let msgs = b
        .batch(json!([
            {"id": "c", "channel": "/meta/connect", "clientId": cid, "connectionType": "long-polling"},
            {"id": "s", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/lp7b"}
        ]))
        .await;
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    assert_eq!(msgs[0], json!({"channel": "/lp7", "data": 1}));
    assert_eq!(msgs[1], json!({"channel": "/lp7", "data": 2}));
    assert_eq!(msgs[2]["id"], "c");
    assert_eq!(msgs[3]["id"], "s");
}

#[tokio::test]
async fn tr_lp_7_handshake_reply_comes_first_and_alone() {
    let b = Broker::fast().await;
    let msgs = b
        .batch(json!([handshake_msg(), {"id": "x", "channel": "/meta/connect", "connectionType": "long-polling"}]))
        .await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["channel"], "/meta/handshake");
}

#[tokio::test]
async fn tr_lp_8_non_connect_requests_are_never_held() {
    let b = Broker::start(&["--timeout", "5000"]).await;
    let cid = b.session().await;
    let c = b.client();
    let s = cid.clone();
    let held = tokio::spawn(async move { c.connect(&s).await });
    sleep_ms(300).await;
    let requests = [
        json!([handshake_msg()]),
        json!([{"id": "3", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/lp8"}]),
        json!([{"id": "4", "channel": "/lp8/other", "clientId": cid, "data": 1}]),
        json!([{"id": "5", "channel": "/meta/unsubscribe", "clientId": cid, "subscription": "/lp8"}]),
        json!([{"id": "6", "channel": "/service/echo", "clientId": cid, "data": 1}]),
        json!([{"id": "7", "channel": "/meta/disconnect", "clientId": cid}]),
    ];
    for req in requests {
        let r = b.post("", req.clone()).await;
        assert!(r.elapsed < PROMPT, "{req} took {:?}", r.elapsed);
        assert_eq!(r.status, 200);
    }
    let msgs = held.await.unwrap();
    assert_eq!(
        msgs.last().unwrap()["advice"]["reconnect"],
        "none",
        "{msgs:?}"
    );
}

#[tokio::test]
async fn tr_lp_9_responses_carry_no_cache_no_store() {
    let b = Broker::start(&["--timeout", "1000"]).await;
    let r = b.post("/handshake", json!([handshake_msg()])).await;
    let cid = handshake_ok(&r);
    let mut responses = vec![r];
    responses.push(
        b.post(
            "/connect",
            json!([{"id": "2", "channel": "/meta/connect", "clientId": cid,
                                              "connectionType": "long-polling"}]),
        )
        .await,
    );
    responses.push(
        b.post(
            "/connect",
            json!([{"id": "3", "channel": "/meta/connect", "clientId": cid,
                                              "connectionType": "long-polling"}]),
        )
        .await,
    );
    responses.push(
        b.post(
            "/",
            json!([{"id": "4", "channel": "/lp9", "clientId": cid, "data": 1}]),
        )
        .await,
    );
    for r in responses {
        let cc = r
            .header("cache-control")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            cc.contains("no-cache") && cc.contains("no-store"),
            "cache-control {cc:?}"
        );
    }
}

#[tokio::test]
async fn tr_lp_10_unknown_query_parameters_are_ignored() {
    let b = Broker::fast().await;
    let cid = handshake_ok(
        &b.post("?_=1700000000000&token=abc", json!([handshake_msg()]))
            .await,
    );
    let r = b
        .post(
            "/connect?x=1&message=ignored",
            json!([{"id": "2", "channel": "/meta/connect", "clientId": cid,
                                                      "connectionType": "long-polling"}]),
        )
        .await;
    assert_eq!(r.messages()[0]["successful"], true);
}

#[tokio::test]
async fn tr_lp_11_body_over_the_limit_is_413_and_the_session_survives() {
    let b = Broker::start(&["--timeout", "2000", "--max-body-bytes", "2048"]).await;
    let cid = b.session().await;
    b.subscribe(&cid, "/lp11").await;
    let big = "x".repeat(4000);
    let r = b
        .post(
            "",
            json!([{"id": "p", "channel": "/lp11", "clientId": cid, "data": big}]),
        )
        .await;
    assert_eq!(r.status, 413, "{:?}", r.status);
    // Just under the limit still works.
    let fits = "y".repeat(1500);
    let msgs = b.publish(&cid, "/lp11", json!(fits)).await;
    assert_eq!(
        data_on(&msgs, "/lp11"),
        vec![json!(fits)],
        "the oversized publish must not have happened"
    );
    assert_eq!(b.connect_now(&cid).await[0]["successful"], true);
}

#[tokio::test]
async fn tr_lp_11_body_limit_applies_to_form_bodies_too() {
    let b = Broker::start(&["--timeout", "2000", "--max-body-bytes", "2048"]).await;
    let body = format!(
        "message={}",
        form_encode(&json!([handshake_msg(), {"pad": "z".repeat(3000)}]).to_string())
    );
    let r = b
        .post_raw("", Some("application/x-www-form-urlencoded"), body)
        .await;
    assert_eq!(r.status, 413);
}

/// GET with a `message` parameter and no `jsonp` (BAYEUX.md 4.1): per the lead's brief, answered like
/// long-polling with a JSON array (TR-CB-4's `jsonpcallback(...)` is deliberately not followed; see tr_cb.rs).
#[tokio::test]
async fn tr_lp_get_with_message_parameter_returns_a_json_array() {
    let b = Broker::fast().await;
    let query = form_encode(&json!([handshake_msg()]).to_string());
    let r = b.get(&format!("/handshake?message={query}&_=123")).await;
    let cid = handshake_ok(&r);
    let cc = r.header("cache-control").unwrap_or_default();
    assert!(cc.contains("no-cache") && cc.contains("no-store"), "{cc:?}");
    // Two message parameters form one batch, in order.
    let first =
        json!([{"id": "3", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/get"}]);
    let second = json!([{"id": "4", "channel": "/get", "clientId": cid, "data": "g"}]);
    let r = b
        .get(&format!(
            "?message={}&message={}",
            form_encode(&first.to_string()),
            form_encode(&second.to_string())
        ))
        .await;
    let msgs = r.messages();
    assert_eq!(reply(&msgs, "3")["successful"], true, "{msgs:?}");
    assert_eq!(reply(&msgs, "4")["successful"], true, "{msgs:?}");
}

#[tokio::test]
async fn tr_lp_get_without_message_is_400() {
    let b = Broker::fast().await;
    let start = Instant::now();
    let r = b.get("").await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(start.elapsed() < PROMPT);
}

#[tokio::test]
async fn tr_lp_6_accept_and_browser_headers_change_nothing() {
    // BAYEUX.md 4.4: never require or act on X-Requested-With, Pragma or Accept.
    let b = Broker::fast().await;
    let body = json!([handshake_msg()]).to_string().into_bytes();
    let headers = [
        ("content-type", "application/json"),
        ("accept", "text/html"),
        ("x-requested-with", "XMLHttpRequest"),
        ("pragma", "no-cache"),
    ];
    let r = b.send("POST", "/handshake", &headers, Some(body)).await;
    handshake_ok(&r);
}

#[tokio::test]
async fn tr_lp_11_limit_boundary_is_exact() {
    let b = Broker::start(&["--timeout", "2000", "--max-body-bytes", "2048"]).await;
    let cid = b.session().await;
    let body = |len: usize| {
        let head = format!(r#"[{{"channel":"/lp11","clientId":"{cid}","data":""#);
        let pad = len - head.len() - 3;
        format!("{head}{}\"}}]", "x".repeat(pad))
    };
    let at = body(2048);
    assert_eq!(at.len(), 2048);
    let r = b.post_raw("", Some("application/json"), at).await;
    assert_eq!(
        r.status, 200,
        "a body of exactly --max-body-bytes is allowed"
    );
    let over = body(2049);
    let r = b.post_raw("", Some("application/json"), over).await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn tr_lp_11_chunked_body_over_the_limit_is_413() {
    let b = Broker::start(&["--timeout", "2000", "--max-body-bytes", "2048"]).await;
    let chunked = |payload: &str| {
        let mut req = format!(
            "POST {} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            b.path
        );
        for piece in payload.as_bytes().chunks(1000) {
            req.push_str(&format!(
                "{:x}\r\n{}\r\n",
                piece.len(),
                std::str::from_utf8(piece).unwrap()
            ));
        }
        req.push_str("0\r\n\r\n");
        req.into_bytes()
    };
    let small = json!([handshake_msg()]).to_string();
    let r = exchange(&mut b.tcp().await, &chunked(&small)).await;
    assert_eq!(r.status, 200, "chunked body within the limit: {r:?}");
    let big = json!([handshake_msg(), {"pad": "z".repeat(4000)}]).to_string();
    let r = exchange(&mut b.tcp().await, &chunked(&big)).await;
    assert_eq!(r.status, 413, "{r:?}");
}
