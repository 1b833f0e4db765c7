//! DIS: `/meta/disconnect` (BAYEUX.md 2.6, checklist DIS-1..DIS-5). DIS-4 (server-initiated disconnect) is
//! tested through `/api/disconnect` in api.rs.

use std::time::Instant;

use halley_protocol_tests::*;

#[tokio::test]
async fn dis_1_disconnect_succeeds_and_the_client_id_is_then_unknown() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let msgs = b
        .batch(json!([{"id": "10", "channel": "/meta/disconnect", "clientId": cid}]))
        .await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["id"], "10");
    assert_eq!(msgs[0]["channel"], "/meta/disconnect");
    assert_eq!(msgs[0]["successful"], true);
    assert!(msgs[0].get("advice").is_none(), "{msgs:?}");

    let connect = b.connect(&cid).await;
    assert_session_unknown(&connect[0], true);
    for req in [
        json!({"id": "a", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/d1"}),
        json!({"id": "b", "channel": "/meta/unsubscribe", "clientId": cid, "subscription": "/d1"}),
        json!({"id": "c", "channel": "/d1", "clientId": cid, "data": 1}),
        json!({"id": "d", "channel": "/meta/disconnect", "clientId": cid}),
    ] {
        let msgs = b.batch(json!([req])).await;
        assert_session_unknown(&msgs[0], false);
    }
}

#[tokio::test]
async fn dis_2_held_connect_is_released_with_reconnect_none() {
    let b = Broker::start(&["--timeout", "5000"]).await;
    let cid = b.session().await;
    let c = b.client();
    let s = cid.clone();
    let held = spawn_timed(async move { c.connect(&s).await });
    sleep_ms(300).await;
    let sent = Instant::now();
    let msgs = b.disconnect(&cid).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["successful"], true);
    let (msgs, done) = held.await.unwrap();
    // "Promptly": 1 s allows for a loaded machine; the hold is 5 s.
    assert!(done - sent < PROMPT, "released after {:?}", done - sent);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["channel"], "/meta/connect");
    assert_eq!(msgs[0]["successful"], true);
    assert_eq!(msgs[0]["advice"]["reconnect"], "none");
}

#[tokio::test]
async fn dis_2_queued_deliveries_are_flushed_into_the_released_connect() {
    // BAYEUX.md 2.6: the queue is discarded "after flushing into any held connect". The delivery is queued
    // inside the disconnect's own batch (2.1 rule 6), so it cannot have released the connect earlier.
    let b = Broker::start(&["--timeout", "5000"]).await;
    let cid = b.session().await;
    b.subscribe(&cid, "/d2").await;
    let c = b.client();
    let s = cid.clone();
    let held = tokio::spawn(async move { c.connect(&s).await });
    sleep_ms(300).await;
    let msgs = b
        .batch(
            json!([{"id": "p", "channel": "/d2", "clientId": cid, "data": "last"},
                      {"id": "d", "channel": "/meta/disconnect", "clientId": cid}]),
        )
        .await;
    assert_eq!(reply(&msgs, "d")["successful"], true);
    let mut all = msgs.clone();
    all.extend(held.await.unwrap());
    assert_eq!(
        data_on(&all, "/d2"),
        vec![json!("last")],
        "delivered once, somewhere: {all:?}"
    );
}

#[tokio::test]
async fn dis_1_disconnect_frees_the_browser_slot() {
    // BAYEUX.md 2.6: disconnect releases the cookie bookkeeping.
    let b = Broker::start(&["--timeout", "3000"]).await;
    let tab = b.browser().await;
    let (first, second) = (tab.session().await, tab.session().await);
    let t = tab.clone();
    let f = first.clone();
    let held = tokio::spawn(async move { t.connect(&f).await });
    sleep_ms(300).await;
    tab.disconnect(&first).await;
    assert_eq!(held.await.unwrap()[0]["advice"]["reconnect"], "none");
    let start = Instant::now();
    let msgs = tab
        .connect_with(&second, json!({"advice": {"timeout": 500}}))
        .await;
    assert!(
        msgs[0]["advice"].get("multiple-clients").is_none(),
        "slot not released: {msgs:?}"
    );
    assert!(
        start.elapsed().as_millis() >= 400,
        "not held: {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn dis_3_disconnected_session_gets_no_broadcasts() {
    let b = Broker::fast().await;
    let gone = b.session().await;
    let stays = b.session().await;
    b.subscribe(&gone, "/d3").await;
    b.subscribe(&stays, "/d3").await;
    b.disconnect(&gone).await;
    let publisher = b.session().await;
    b.publish(&publisher, "/d3", json!("after")).await;
    let msgs = b.connect_now(&gone).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_session_unknown(&msgs[0], true);
    assert_eq!(data_on(&b.poll(&stays).await, "/d3"), vec![json!("after")]);
}

#[tokio::test]
async fn dis_5_disconnect_with_unknown_client_is_402_without_advice() {
    let b = Broker::fast().await;
    let msgs = b
        .batch(json!([{"id": "5", "channel": "/meta/disconnect", "clientId": "0000000000000000000000000000dead"}]))
        .await;
    assert_eq!(msgs[0]["id"], "5");
    assert_eq!(msgs[0]["channel"], "/meta/disconnect");
    assert_session_unknown(&msgs[0], false);
    let msgs = b
        .batch(json!([{"id": "6", "channel": "/meta/disconnect"}]))
        .await;
    assert_session_unknown(&msgs[0], false);
}
