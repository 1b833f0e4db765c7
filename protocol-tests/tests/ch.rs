//! CH: channel names, classes and wildcard matching (BAYEUX.md 1.3-1.5, checklist CH-1..CH-9).

use halley_protocol_tests::*;

#[tokio::test]
async fn ch_1_names_with_every_allowed_character_are_accepted() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    let name = "/ch-1/Az09 !#$()+-.@_{~}";
    b.subscribe(&sub, name).await;
    let got = b.relay(&sub, &[name]).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["channel"], name);
}

#[tokio::test]
async fn ch_1_star_inside_a_segment_is_an_ordinary_character() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    let name = "/ch1/a*b/c**d";
    b.subscribe(&sub, name).await;
    let got = b.relay(&sub, &[name]).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["channel"], name);
}

#[tokio::test]
async fn ch_2_malformed_names_are_405_channel_invalid() {
    let b = Broker::fast().await;
    let cid = b.session().await;
    let bad = [
        "/foo//bar",
        "/foo/",
        "/",
        "/a/*/b",
        "/a/**/b",
        "foo",
        "/foo/b%20r",
        "/foo/a\"b",
        "/foo?x",
        "/foo\\bar",
        "/foo/a:b",
        "/foo/a,b",
        "/foo/<b>",
        "/foo\tbar",
        "//foo",
    ];
    for ch in bad {
        let msgs = b
            .batch(json!([{"id": "1", "channel": ch, "clientId": cid, "data": 1}]))
            .await;
        let r = reply(&msgs, "1");
        assert_eq!(r["successful"], false, "{ch:?}: {r}");
        assert_eq!(r["error"], "405::channel_invalid", "{ch:?}: {r}");
        assert_eq!(r["channel"], ch);
    }
}

#[tokio::test]
async fn ch_3_publishing_to_a_wildcard_fails_with_405_and_reaches_nobody() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, json!(["/foo/*", "/foo/**", "/**"])).await;
    let publisher = b.session().await;
    for ch in ["/foo/*", "/foo/**"] {
        let msgs = b
            .batch(json!([{"id": "1", "channel": ch, "clientId": publisher, "data": 1}]))
            .await;
        let r = reply(&msgs, "1");
        assert_eq!(r["successful"], false, "{r}");
        assert!(
            r["error"].as_str().unwrap_or_default().starts_with("405:"),
            "{r}"
        );
    }
    assert_eq!(b.poll(&sub).await, Vec::<Value>::new());
}

#[tokio::test]
async fn ch_4_single_star_matches_exactly_one_segment() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/foo/*").await;
    let got = b
        .relay(
            &sub,
            &["/foo", "/foo/bar", "/foobar", "/foo/bar/baz", "/foo/baz"],
        )
        .await;
    let channels: Vec<&Value> = got.iter().map(|m| &m["channel"]).collect();
    assert_eq!(channels, [&json!("/foo/bar"), &json!("/foo/baz")]);
}

#[tokio::test]
async fn ch_5_double_star_matches_one_or_more_segments() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/foo/**").await;
    let got = b
        .relay(
            &sub,
            &["/foo", "/foo/bar", "/foobar", "/foobar/baz", "/foo/bar/baz"],
        )
        .await;
    let channels: Vec<&Value> = got.iter().map(|m| &m["channel"]).collect();
    assert_eq!(channels, [&json!("/foo/bar"), &json!("/foo/bar/baz")]);
}

#[tokio::test]
async fn ch_6_root_double_star_gets_every_broadcast_and_no_service_message() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/**").await;
    let got = b
        .relay(
            &sub,
            &["/a", "/service/x", "/b/c/d", "/service/echo", "/metadata"],
        )
        .await;
    let channels: Vec<&Value> = got.iter().map(|m| &m["channel"]).collect();
    assert_eq!(
        channels,
        [&json!("/a"), &json!("/b/c/d"), &json!("/metadata")]
    );
}

#[tokio::test]
async fn ch_7_overlapping_subscriptions_yield_one_copy() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    for s in ["/a/*", "/a/**", "/a/b", "/**"] {
        b.subscribe(&sub, s).await;
    }
    let got = b.relay(&sub, &["/a/b"]).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["channel"], "/a/b");
}

#[tokio::test]
async fn ch_8_metadata_and_services_are_broadcast_channels() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/metadata").await;
    b.subscribe(&sub, "/services/x").await;
    let got = b.relay(&sub, &["/metadata", "/services/x"]).await;
    let channels: Vec<&Value> = got.iter().map(|m| &m["channel"]).collect();
    assert_eq!(channels, [&json!("/metadata"), &json!("/services/x")]);
}

#[tokio::test]
async fn ch_9_matching_is_case_sensitive() {
    let b = Broker::fast().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/foo").await;
    b.subscribe(&sub, "/bar/*").await;
    let got = b.relay(&sub, &["/Foo", "/FOO", "/Bar/x", "/foo"]).await;
    let channels: Vec<&Value> = got.iter().map(|m| &m["channel"]).collect();
    assert_eq!(channels, [&json!("/foo")]);
}
