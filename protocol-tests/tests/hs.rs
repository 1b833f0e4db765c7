//! HS: `/meta/handshake` (BAYEUX.md 2.2, 4.7, checklist HS-1..HS-11). HS-7 and HS-10 (authentication) are in
//! security.rs.

use halley_protocol_tests::*;

/// The CometD JS 9 handshake literal from BAYEUX.md 2.2.
fn js_handshake() -> Value {
    json!([{"id": "2", "version": "1.0", "minimumVersion": "1.0", "channel": "/meta/handshake",
            "supportedConnectionTypes": ["long-polling", "callback-polling"],
            "advice": {"timeout": 60000, "interval": 0}}])
}

fn is_alphanumeric(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric())
}

#[tokio::test]
async fn hs_1_valid_handshake_reply_fields() {
    let b = Broker::fast().await;
    let msgs = b.batch(js_handshake()).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let r = &msgs[0];
    assert_eq!(r["id"], "2");
    assert_eq!(r["channel"], "/meta/handshake");
    assert_eq!(r["successful"], true);
    assert_eq!(r["version"], "1.0");
    assert!(
        is_alphanumeric(r["clientId"].as_str().unwrap_or_default()),
        "{r}"
    );
    assert!(r["supportedConnectionTypes"].is_array(), "{r}");
    assert!(r.get("error").is_none(), "{r}");
}

#[tokio::test]
async fn hs_2_successful_reply_has_retry_advice_with_interval_and_timeout() {
    let b = Broker::start(&["--timeout", "1500", "--interval", "25"]).await;
    let msgs = b.batch(js_handshake()).await;
    // The client's own advice (timeout 60000) is ignored.
    assert_connect_advice(&msgs[0], 25, 1500);
}

#[tokio::test]
async fn hs_3_successful_reply_never_advises_handshake() {
    let b = Broker::fast().await;
    for req in [
        js_handshake(),
        json!([{"channel": "/meta/handshake", "advice": {"reconnect": "handshake"}}]),
    ] {
        let msgs = b.batch(req).await;
        assert_eq!(msgs[0]["successful"], true);
        assert_eq!(msgs[0]["advice"]["reconnect"], "retry", "{msgs:?}");
    }
}

#[tokio::test]
async fn hs_4_transports_offer_websocket_first_and_long_polling() {
    // callback-polling is asserted with the JSONP handshake in tr_cb.rs; `--transports long-polling` (no
    // websocket offered, upgrades refused) in ws.rs.
    let b = Broker::fast().await;
    let msgs = b.batch(js_handshake()).await;
    let types: Vec<&str> = msgs[0]["supportedConnectionTypes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(types.contains(&"long-polling"), "{types:?}");
    assert_eq!(types.first(), Some(&"websocket"), "{types:?}");
}

#[tokio::test]
async fn hs_5_client_ids_are_unique_alphanumeric_and_long_enough_for_128_bits() {
    let b = Broker::fast().await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..50 {
        let id = b.handshake().await;
        assert!(is_alphanumeric(&id), "{id:?}");
        assert!(ids.insert(id.clone()), "duplicate clientId {id}");
    }
    // Bits per character from the alphabet actually used: hex 4, lowercase alphanumeric log2(36), mixed case
    // log2(62). Unknown alphabets are judged by their largest plausible size.
    let all: String = ids.iter().cloned().collect();
    let bits_per_char = if all
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        4.0
    } else if all
        .chars()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    {
        36f64.log2()
    } else {
        62f64.log2()
    };
    for id in &ids {
        assert!(
            id.len() as f64 * bits_per_char >= 128.0,
            "{id:?} is too short for 128 random bits"
        );
    }
}

#[tokio::test]
async fn hs_6_handshake_without_version_or_connection_types_succeeds() {
    let b = Broker::fast().await;
    for req in [
        json!([{"id": "1", "channel": "/meta/handshake"}]),
        json!([{"id": "2", "channel": "/meta/handshake", "version": "1.0"}]),
        json!([{"id": "3", "channel": "/meta/handshake", "supportedConnectionTypes": ["callback-polling"]}]),
    ] {
        let msgs = b.batch(req.clone()).await;
        assert_eq!(msgs[0]["successful"], true, "{req} -> {msgs:?}");
        assert!(is_alphanumeric(
            msgs[0]["clientId"].as_str().unwrap_or_default()
        ));
    }
}

#[tokio::test]
async fn hs_8_handshake_batched_with_others_answers_only_the_handshake() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/hs8").await;
    let msgs = b
        .batch(json!([
            {"id": "1", "channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]},
            {"id": "2", "channel": "/hs8", "clientId": sub, "data": "must not be published"},
            {"id": "3", "channel": "/meta/unsubscribe", "clientId": sub, "subscription": "/hs8"}
        ]))
        .await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["id"], "1");
    assert_eq!(msgs[0]["successful"], true);
    // Neither the publish nor the unsubscribe happened.
    assert_eq!(b.poll(&sub).await, Vec::<Value>::new());
    let other = b.session().await;
    b.publish(&other, "/hs8", json!("after")).await;
    assert_eq!(data_on(&b.poll(&sub).await, "/hs8"), vec![json!("after")]);
}

#[tokio::test]
async fn hs_8_client_id_in_a_handshake_is_ignored() {
    // BAYEUX.md 2.2: "Any clientId in the request is ignored; a new session is always created."
    let b = Broker::fast().await;
    let old = b.session().await;
    let msgs = b
        .batch(
            json!([{"id": "1", "channel": "/meta/handshake", "clientId": old, "version": "1.0"}]),
        )
        .await;
    let new = msgs[0]["clientId"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(
        b.connect_now(&old).await[0]["successful"],
        true,
        "the old session must survive"
    );
    assert_eq!(b.connect_now(new).await[0]["successful"], true);
}

#[tokio::test]
async fn hs_9_handshake_sets_the_browser_cookie_once() {
    let b = Broker::fast().await;
    let r = b.post("/handshake", js_handshake()).await;
    assert_eq!(r.messages()[0]["successful"], true);
    let (value, line) = r
        .set_cookie("BAYEUX_BROWSER")
        .expect("Set-Cookie BAYEUX_BROWSER");
    // ≥ 64 random bits: at least 11 characters even for a 64-symbol alphabet.
    assert!(
        value.len() >= 11 && value.chars().all(|c| c.is_ascii_graphic() && c != ','),
        "{line}"
    );
    let attrs: Vec<String> = line
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attrs.iter().any(|a| a == "path=/"), "{line}");
    assert!(attrs.iter().any(|a| a == "httponly"), "{line}");
    // With the cookie: not reset.
    let r = b
        .with_browser(&value)
        .post("/handshake", js_handshake())
        .await;
    assert_eq!(r.messages()[0]["successful"], true);
    assert_eq!(r.set_cookie("BAYEUX_BROWSER"), None, "{:?}", r.headers);
    // Two cookie-less handshakes get different browser ids.
    let again = b
        .post("/handshake", js_handshake())
        .await
        .set_cookie("BAYEUX_BROWSER")
        .unwrap()
        .0;
    assert_ne!(again, value);
}

#[tokio::test]
async fn hs_11_no_x_messages_on_handshake_reply() {
    let b = Broker::fast().await;
    let msgs = b.batch(js_handshake()).await;
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].get("x-messages").is_none(), "{msgs:?}");
}
