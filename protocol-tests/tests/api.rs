//! The backend HTTP API (`/api/publish`, `/api/stats`, `/api/disconnect`), the `halley publish` CLI, `/health`
//! and `/ready` (contract "Update"), and DIS-4 (server-initiated disconnect, BAYEUX.md 2.6) through the API.

use std::time::Instant;

use halley_protocol_tests::*;

const KEY: &str = "test-api-key-0123456789";

async fn api_broker() -> Broker {
    Broker::start(&["--timeout", "5000", "--api-key", KEY]).await
}

/// Asserts an API error: `status` and a JSON body `{"error": "<non-empty string>"}`.
fn assert_api_error(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    let body = r.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: error body {body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "{what}: {body}");
}

async fn stats(b: &Broker) -> Value {
    let r = b.api("GET", "/api/stats", Some(KEY), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[tokio::test]
async fn api_401_without_or_with_an_unknown_key() {
    let b = api_broker().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/api401").await;
    let publish = r#"{"channel":"/api401","data":1}"#;
    for (method, path, body) in [
        ("POST", "/api/publish", Some(publish)),
        ("GET", "/api/stats", None),
        ("POST", "/api/disconnect", Some(r#"{"clientId":"x"}"#)),
    ] {
        for auth in [
            None,
            Some("Bearer wrong-key-0123456789".to_string()),
            Some(format!("Basic {KEY}")),
            Some(format!("Bearer {KEY}x")),
            Some("Bearer".to_string()),
        ] {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(a) = &auth {
                headers.push(("authorization", a));
            }
            let r = b
                .send_root(method, path, &headers, body.map(|s| s.as_bytes().to_vec()))
                .await;
            let what = format!("{method} {path} with {auth:?}");
            assert_api_error(&r, 401, &what);
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
        }
    }
    assert!(
        b.poll(&sub).await.is_empty(),
        "a refused publish was delivered"
    );
    // The session survived the refused disconnect attempts.
    assert_eq!(b.connect_now(&sub).await[0]["successful"], true);
}

#[tokio::test]
async fn api_403_when_the_key_lacks_the_right() {
    let config = temp_file(
        "api-rights.toml",
        r#"timeout = 5000
api_keys = [
  { key = "stats-only-key-0123456789", rights = ["stats"] },
  { key = "publish-only-key-0123456789", rights = ["publish"] },
  { key = "all-rights-key-0123456789" },
]
"#,
    );
    let b = Broker::start(&["--config", config.to_str().unwrap()]).await;
    let sub = b.session().await;
    b.subscribe(&sub, "/api403").await;
    let publish = r#"{"channel":"/api403","data":1}"#;
    let disconnect = json!({"clientId": sub}).to_string();
    let stats_key = Some("stats-only-key-0123456789");
    let publish_key = Some("publish-only-key-0123456789");

    assert_api_error(
        &b.api("POST", "/api/publish", stats_key, Some(publish))
            .await,
        403,
        "publish with a stats key",
    );
    assert_api_error(
        &b.api("POST", "/api/disconnect", stats_key, Some(&disconnect))
            .await,
        403,
        "disconnect with a stats key",
    );
    assert_api_error(
        &b.api("GET", "/api/stats", publish_key, None).await,
        403,
        "stats with a publish key",
    );
    assert_api_error(
        &b.api("POST", "/api/disconnect", publish_key, Some(&disconnect))
            .await,
        403,
        "disconnect with a publish key",
    );
    assert!(b.poll(&sub).await.is_empty());
    assert_eq!(b.connect_now(&sub).await[0]["successful"], true);

    // Each key can do what it may.
    let r = b.api("GET", "/api/stats", stats_key, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["sessions"], 1);
    let r = b
        .api("POST", "/api/publish", publish_key, Some(publish))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"channel": "/api403", "queued": 1}));
    let r = b
        .api(
            "POST",
            "/api/disconnect",
            Some("all-rights-key-0123456789"),
            Some(&disconnect),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn api_400_for_bad_bodies_and_channels_and_nothing_is_published() {
    let b = api_broker().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/**").await;
    b.subscribe(&sub, "/service/**").await;
    for body in [
        "{nope",
        "",
        "[]",
        "42",
        r#""/api400""#,
        r#"{"data":1}"#,
        r#"{"channel":5,"data":1}"#,
        r#"{"channel":"/api400/*","data":1}"#,
        r#"{"channel":"/api400/**","data":1}"#,
        r#"{"channel":"/meta/foo","data":1}"#,
        r#"{"channel":"/meta/connect","data":1}"#,
        r#"{"channel":"/service/echo","data":1}"#,
        r#"{"channel":"/a//b","data":1}"#,
        r#"{"channel":"nochannel","data":1}"#,
        r#"{"channel":"/api400","data":1,"bogus":2}"#,
        r#"{"channel":"/api400","data":1,"clientId":"x"}"#,
        // One bad item refuses the whole batch.
        r#"[{"channel":"/api400","data":"ok"},{"channel":"/api400/*","data":"bad"}]"#,
        r#"[{"channel":"/api400","data":"ok"},{"channel":"/api400","data":"x","bogus":1}]"#,
    ] {
        let r = b.api("POST", "/api/publish", Some(KEY), Some(body)).await;
        assert_api_error(&r, 400, body);
    }
    assert!(b.poll(&sub).await.is_empty(), "a refused publish leaked");
    let s = stats(&b).await;
    assert_eq!(s["published"], 0, "{s}");
    assert_eq!(s["delivered"], 0, "{s}");

    for body in ["{nope", "{}", r#"{"clientId":5}"#] {
        let r = b
            .api("POST", "/api/disconnect", Some(KEY), Some(body))
            .await;
        assert_api_error(&r, 400, body);
    }
}

#[tokio::test]
async fn api_404_for_an_unknown_client_id() {
    let b = api_broker().await;
    let r = b
        .api(
            "POST",
            "/api/disconnect",
            Some(KEY),
            Some(r#"{"clientId":"nosuchclient"}"#),
        )
        .await;
    assert_api_error(&r, 404, "unknown clientId");
}

#[tokio::test]
async fn api_is_absent_without_keys() {
    let b = Broker::fast().await;
    for (method, path) in [
        ("POST", "/api/publish"),
        ("GET", "/api/stats"),
        ("POST", "/api/disconnect"),
    ] {
        let r = b
            .api(
                method,
                path,
                Some(KEY),
                Some(r#"{"channel":"/x","data":1}"#),
            )
            .await;
        assert_eq!(r.status, 404, "{method} {path}: {r:?}");
        assert!(r.header("www-authenticate").is_none(), "{r:?}");
    }
}

#[tokio::test]
async fn api_keys_from_the_config_file_mount_the_api() {
    let config = temp_file(
        "api-keys.toml",
        "api_keys = [{ key = \"config-key-0123456789\" }]\n",
    );
    let b = Broker::start(&["--config", config.to_str().unwrap()]).await;
    let r = b
        .api("GET", "/api/stats", Some("config-key-0123456789"), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = b.api("GET", "/api/stats", Some(KEY), None).await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test]
async fn api_publish_releases_a_held_connect_with_ext_intact() {
    let b = api_broker().await;
    let held_sub = b.session().await;
    let idle_sub = b.session().await;
    let other = b.session().await;
    b.subscribe(&held_sub, "/api/ticks").await;
    b.subscribe(&idle_sub, "/api/*").await;
    b.subscribe(&other, "/elsewhere").await;

    let c = b.client();
    let s = held_sub.clone();
    let held = spawn_timed(async move { c.connect(&s).await });
    sleep_ms(300).await;
    assert!(!held.is_finished(), "the connect was not held");
    let body = json!({"channel": "/api/ticks", "data": {"sym": "ACME", "px": 12.5},
                      "ext": {"trace": "t-1", "binary": {}}});
    let sent = Instant::now();
    let r = b
        .api("POST", "/api/publish", Some(KEY), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{r:?}"
    );
    assert_eq!(r.json(), json!({"channel": "/api/ticks", "queued": 2}));

    let (msgs, done) = held.await.unwrap();
    assert!(done - sent < PROMPT, "released after {:?}", done - sent);
    let expected = json!({"channel": "/api/ticks", "data": {"sym": "ACME", "px": 12.5},
                          "ext": {"trace": "t-1", "binary": {}}});
    assert_eq!(deliveries(&msgs), vec![expected.clone()], "{msgs:?}");
    assert_eq!(msgs.last().unwrap()["channel"], "/meta/connect");
    assert_eq!(msgs.last().unwrap()["successful"], true);
    assert_eq!(b.poll(&idle_sub).await, vec![expected]);
    assert!(b.poll(&other).await.is_empty());
}

#[tokio::test]
async fn api_publish_array_in_array_out_in_order() {
    let b = api_broker().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/arr/a").await;
    let body = json!([
        {"channel": "/arr/a", "data": 1},
        {"channel": "/arr/b", "data": 2},
        {"channel": "/arr/a", "data": 3},
    ]);
    let r = b
        .api("POST", "/api/publish", Some(KEY), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!([
            {"channel": "/arr/a", "queued": 1},
            {"channel": "/arr/b", "queued": 0},
            {"channel": "/arr/a", "queued": 1},
        ])
    );
    assert_eq!(
        data_on(&b.poll(&sub).await, "/arr/a"),
        vec![json!(1), json!(3)]
    );
    // A one-element array still answers with an array.
    let r = b
        .api(
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"[{"channel":"/arr/b","data":0}]"#),
        )
        .await;
    assert_eq!(r.json(), json!([{"channel": "/arr/b", "queued": 0}]));
}

#[tokio::test]
async fn api_stats_counts_sessions_subscriptions_and_traffic() {
    let b = api_broker().await;
    assert_eq!(
        stats(&b).await,
        json!({"sessions": 0, "subscriptions": 0, "published": 0, "delivered": 0, "dropped": 0, "held_requests": 0})
    );
    let a = b.session().await;
    let c = b.session().await;
    b.subscribe(&a, json!(["/st/1", "/st/2"])).await;
    b.subscribe(&c, "/st/1").await;
    let r = b
        .api(
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"{"channel":"/st/1","data":1}"#),
        )
        .await;
    assert_eq!(r.json()["queued"], 2);
    b.publish(&c, "/st/2", json!(2)).await;
    assert_eq!(
        stats(&b).await,
        json!({"sessions": 2, "subscriptions": 3, "published": 2, "delivered": 3, "dropped": 0, "held_requests": 0})
    );
    b.disconnect(&c).await;
    let s = stats(&b).await;
    assert_eq!(s["sessions"], 1, "{s}");
    assert_eq!(s["subscriptions"], 2, "{s}");
}

#[tokio::test]
async fn dis_4_api_disconnect_delivers_meta_disconnect_through_the_held_connect() {
    let b = api_broker().await;
    let cid = b.session().await;
    b.subscribe(&cid, "/dis4").await;
    let c = b.client();
    let s = cid.clone();
    let held = spawn_timed(async move { c.connect(&s).await });
    sleep_ms(300).await;
    assert!(!held.is_finished(), "the connect was not held");
    let sent = Instant::now();
    let r = b
        .api(
            "POST",
            "/api/disconnect",
            Some(KEY),
            Some(&json!({"clientId": cid}).to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"disconnected": cid}));

    let (msgs, done) = held.await.unwrap();
    assert!(done - sent < PROMPT, "released after {:?}", done - sent);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(
        msgs[0],
        json!({"channel": "/meta/disconnect", "successful": true})
    );
    assert_eq!(msgs[1]["channel"], "/meta/connect");
    assert_eq!(msgs[1]["successful"], true, "{msgs:?}");
    assert_eq!(msgs[1]["advice"]["reconnect"], "none", "{msgs:?}");

    // The session is gone: 402 on any message, no more deliveries, API 404 on a second attempt.
    assert_session_unknown(&b.connect(&cid).await[0], true);
    let msgs = b
        .batch(json!([{"id": "s", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/x"}]))
        .await;
    assert_session_unknown(&msgs[0], false);
    let r = b
        .api(
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"{"channel":"/dis4","data":1}"#),
        )
        .await;
    assert_eq!(r.json(), json!({"channel": "/dis4", "queued": 0}));
    let r = b
        .api(
            "POST",
            "/api/disconnect",
            Some(KEY),
            Some(&json!({"clientId": cid}).to_string()),
        )
        .await;
    assert_api_error(&r, 404, "second disconnect");
}

#[tokio::test]
async fn dis_4_api_disconnect_of_an_idle_session() {
    let b = api_broker().await;
    let cid = b.session().await;
    let r = b
        .api(
            "POST",
            "/api/disconnect",
            Some(KEY),
            Some(&json!({"clientId": cid}).to_string()),
        )
        .await;
    assert_eq!(r.json(), json!({"disconnected": cid}));
    assert_session_unknown(&b.connect(&cid).await[0], true);
    assert_eq!(stats(&b).await["sessions"], 0);
}

#[tokio::test]
async fn cli_publish_prints_the_answer_and_exits_0() {
    let b = api_broker().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/cli/x").await;
    let root = b.root();
    let out = run_halley(
        &[
            "publish",
            "--url",
            &root,
            "--key",
            KEY,
            "--channel",
            "/cli/x",
            "--data",
            r#"{"a":1}"#,
            "--ext",
            r#"{"src":"cli"}"#,
        ],
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}; stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"));
    assert_eq!(printed, json!({"channel": "/cli/x", "queued": 1}));
    assert_eq!(
        b.poll(&sub).await,
        vec![json!({"channel": "/cli/x", "data": {"a": 1}, "ext": {"src": "cli"}})]
    );
}

#[tokio::test]
async fn cli_publish_reads_data_from_stdin() {
    let b = api_broker().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/cli/stdin").await;
    let root = b.root();
    let out = run_halley(
        &[
            "publish",
            "--url",
            &root,
            "--key",
            KEY,
            "--channel",
            "/cli/stdin",
            "--data",
            "-",
        ],
        Some("[1, \"two\", {\"three\": 3}]\n"),
    )
    .await;
    assert!(
        out.status.success(),
        "{:?}; stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("JSON on stdout");
    assert_eq!(printed, json!({"channel": "/cli/stdin", "queued": 1}));
    assert_eq!(
        data_on(&b.poll(&sub).await, "/cli/stdin"),
        vec![json!([1, "two", {"three": 3}])]
    );
}

#[tokio::test]
async fn cli_publish_with_a_wrong_key_exits_1_with_401_on_stderr() {
    let b = api_broker().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/cli/x").await;
    let root = b.root();
    let out = run_halley(
        &[
            "publish",
            "--url",
            &root,
            "--key",
            "wrong-key-0123456789",
            "--channel",
            "/cli/x",
            "--data",
            "1",
        ],
        None,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr {stderr:?}");
    assert!(stderr.contains("401"), "stderr {stderr:?}");
    assert!(b.poll(&sub).await.is_empty());
}

#[tokio::test]
async fn cli_publish_with_invalid_data_exits_1() {
    let b = api_broker().await;
    let sub = b.session().await;
    b.subscribe(&sub, "/cli/x").await;
    let root = b.root();
    for (flag, value) in [("--data", "{nope"), ("--channel", "/cli/*")] {
        let mut args = vec![
            "publish",
            "--url",
            &root,
            "--key",
            KEY,
            "--channel",
            "/cli/x",
            "--data",
            "1",
        ];
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1] = value;
        let out = run_halley(&args, None).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {stderr:?}");
        assert!(!stderr.trim().is_empty(), "{flag} {value}: no message");
    }
    assert!(b.poll(&sub).await.is_empty());
}

#[tokio::test]
async fn health_and_ready_answer_ok() {
    let b = Broker::fast().await;
    let r = b.send_root("GET", "/health", &[], None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"status": "ok"}));
    let r = b.send_root("GET", "/ready", &[], None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"status": "ready"}));
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{r:?}"
    );
}
