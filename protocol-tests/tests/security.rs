//! Handshake authentication (HS-7, HS-10; BAYEUX.md 6.5) with shared tokens and HS256/RS256 JWTs, and channel
//! rules from the `[security]` table of a TOML config (contract "Update": subscribe/publish denials).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use halley_protocol_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const TOKEN: &str = "member-token-0123456789";
const SECRET: &str = "hs256-secret-for-the-tests-0123456789";
const API_KEY: &str = "security-api-key-0123456789";

fn fixture(name: &str) -> String {
    format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(secret: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign HS256")
}

fn rs256(claims: Value) -> String {
    let pem = std::fs::read(fixture("jwt-rs256-private.pem")).expect("private key fixture");
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&pem).expect("RSA PEM"),
    )
    .expect("sign RS256")
}

/// A handshake with `ext`; returns the reply.
async fn handshake_ext(c: &Client, ext: Value) -> Value {
    let msgs = c
        .batch(
            json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0",
                        "supportedConnectionTypes": ["long-polling"], "ext": ext}]),
        )
        .await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    msgs[0].clone()
}

/// HS-7 as the contract fixes it: exactly `403::Handshake denied` with `advice:{"reconnect":"none"}`, no clientId.
fn assert_denied(r: &Value, what: &str) {
    assert_eq!(r["id"], "h", "{what}: {r}");
    assert_eq!(r["channel"], "/meta/handshake", "{what}: {r}");
    assert_eq!(r["successful"], false, "{what}: {r}");
    assert_eq!(r["error"], "403::Handshake denied", "{what}: {r}");
    assert_eq!(r["advice"], json!({"reconnect": "none"}), "{what}: {r}");
    assert!(r.get("clientId").is_none(), "{what}: {r}");
}

/// HS-10: a successful authenticated handshake whose reply `ext` says so.
fn assert_authenticated(r: &Value, what: &str) -> String {
    assert_eq!(r["successful"], true, "{what}: {r}");
    assert_eq!(
        r["ext"]["auth"],
        json!({"authenticated": true}),
        "{what}: {r}"
    );
    r["clientId"].as_str().expect("clientId").to_string()
}

async fn live_sessions(b: &Broker) -> Value {
    let r = b.api("GET", "/api/stats", Some(API_KEY), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["sessions"].clone()
}

#[tokio::test]
async fn hs_7_no_credentials_are_denied_when_anonymous_is_off() {
    let b = Broker::start(&[
        "--anonymous",
        "false",
        "--auth-token",
        TOKEN,
        "--api-key",
        API_KEY,
    ])
    .await;
    for ext in [
        json!(null),
        json!({}),
        json!({"auth": {}}),
        json!({"auth": {"token": null}}),
        json!({"other": TOKEN}),
    ] {
        assert_denied(&handshake_ext(&b, ext.clone()).await, &ext.to_string());
    }
    // Without any ext member at all.
    let msgs = b
        .batch(json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0"}]))
        .await;
    assert_denied(&msgs[0], "no ext");
    assert_eq!(
        live_sessions(&b).await,
        0,
        "a denied handshake created a session"
    );
}

#[tokio::test]
async fn hs_7_a_wrong_token_is_denied() {
    let b = Broker::start(&["--anonymous", "false", "--auth-token", TOKEN]).await;
    for ext in [
        json!({"auth": {"token": "not-the-token"}}),
        json!({"auth": {"token": format!("{TOKEN}x")}}),
        json!({"auth": {"token": ""}}),
        json!({"auth": "not-the-token"}),
    ] {
        assert_denied(&handshake_ext(&b, ext.clone()).await, &ext.to_string());
    }
}

#[tokio::test]
async fn hs_7_a_wrong_token_is_denied_even_when_anonymous_is_allowed() {
    // Presenting bad credentials is not the same as presenting none.
    let b = Broker::start(&["--auth-token", TOKEN]).await;
    assert_denied(
        &handshake_ext(&b, json!({"auth": {"token": "not-the-token"}})).await,
        "wrong token",
    );
    let anonymous = handshake_ext(&b, json!({})).await;
    assert_eq!(anonymous["successful"], true, "{anonymous}");
}

#[tokio::test]
async fn hs_7_expired_forged_and_unsigned_jwts_are_denied() {
    let b = Broker::start(&["--anonymous", "false", "--jwt-hs256-secret", SECRET]).await;
    let expired = hs256(
        SECRET.as_bytes(),
        json!({"sub": "alice", "exp": now() - 600}),
    );
    let forged = hs256(
        b"some-other-secret-0123456789-abcdef",
        json!({"sub": "mallory", "exp": now() + 600}),
    );
    let no_exp = hs256(SECRET.as_bytes(), json!({"sub": "alice"}));
    // {"alg":"none"} with the claims of a valid token and no signature.
    let valid = hs256(
        SECRET.as_bytes(),
        json!({"sub": "alice", "exp": now() + 600}),
    );
    let claims = valid.split('.').nth(1).unwrap();
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    let tampered = {
        // A valid signature over different claims.
        let parts: Vec<&str> = valid.split('.').collect();
        let other = forged.split('.').nth(1).unwrap();
        format!("{}.{other}.{}", parts[0], parts[2])
    };
    for (what, token) in [
        ("expired", expired),
        ("forged", forged),
        ("no exp", no_exp),
        ("alg none", unsigned),
        ("tampered", tampered),
        ("garbage", "a.b.c".to_string()),
    ] {
        assert_denied(
            &handshake_ext(&b, json!({"auth": {"token": token}})).await,
            what,
        );
    }
    // The valid one passes (so the denials above are about the tokens, not the setup).
    assert_authenticated(
        &handshake_ext(&b, json!({"auth": {"token": valid}})).await,
        "valid HS256",
    );
}

#[tokio::test]
async fn hs_10_valid_credentials_are_reported_in_the_reply_ext() {
    let b = Broker::start(&[
        "--anonymous",
        "false",
        "--auth-token",
        TOKEN,
        "--jwt-hs256-secret",
        SECRET,
    ])
    .await;
    let jwt = hs256(SECRET.as_bytes(), json!({"sub": "bob", "exp": now() + 600}));
    for (what, ext) in [
        ("token", json!({"auth": {"token": TOKEN}})),
        ("ext.auth string", json!({"auth": TOKEN})),
        ("HS256 JWT", json!({"auth": {"token": jwt}})),
    ] {
        let r = handshake_ext(&b, ext).await;
        let cid = assert_authenticated(&r, what);
        assert_eq!(r["advice"]["reconnect"], "retry", "{what}: {r}");
        // The session is a normal one.
        assert_eq!(b.connect_now(&cid).await[0]["successful"], true, "{what}");
    }
}

#[tokio::test]
async fn hs_10_anonymous_handshakes_are_not_marked_authenticated() {
    let b = Broker::start(&["--auth-token", TOKEN]).await;
    let r = handshake_ext(&b, json!({})).await;
    assert_eq!(r["successful"], true, "{r}");
    assert!(r["ext"]["auth"].get("authenticated").is_none(), "{r}");
}

#[tokio::test]
async fn hs_10_rs256_jwt_signed_with_the_fixture_key_is_accepted() {
    let public = fixture("jwt-rs256-public.pem");
    let b = Broker::start(&["--anonymous", "false", "--jwt-rs256-public-key", &public]).await;
    let good = rs256(json!({"sub": "carol", "exp": now() + 600}));
    assert_authenticated(
        &handshake_ext(&b, json!({"auth": {"token": good}})).await,
        "RS256",
    );
    let expired = rs256(json!({"sub": "carol", "exp": now() - 600}));
    assert_denied(
        &handshake_ext(&b, json!({"auth": {"token": expired}})).await,
        "expired RS256",
    );
    // Algorithm confusion: an HS256 token keyed with the public key's PEM must not pass.
    let pem = std::fs::read(&public).unwrap();
    let confused = hs256(&pem, json!({"sub": "mallory", "exp": now() + 600}));
    assert_denied(
        &handshake_ext(&b, json!({"auth": {"token": confused}})).await,
        "HS256 keyed with the RSA public key",
    );
}

#[tokio::test]
async fn hs_7_rs256_jwt_is_denied_when_only_hs256_is_configured() {
    let b = Broker::start(&["--anonymous", "false", "--jwt-hs256-secret", SECRET]).await;
    let token = rs256(json!({"sub": "carol", "exp": now() + 600}));
    assert_denied(
        &handshake_ext(&b, json!({"auth": {"token": token}})).await,
        "RS256 without a public key",
    );
}

#[tokio::test]
async fn hs_7_jwt_issuer_and_audience_are_checked_when_configured() {
    let config = temp_file(
        "jwt-claims.toml",
        &format!(
            "[security]\nanonymous = false\njwt_hs256_secret = \"{SECRET}\"\n\
             jwt_issuer = \"halley-tests\"\njwt_audience = \"chat\"\n"
        ),
    );
    let b = Broker::start(&["--config", config.to_str().unwrap()]).await;
    let exp = now() + 600;
    let good = hs256(
        SECRET.as_bytes(),
        json!({"sub": "a", "exp": exp, "iss": "halley-tests", "aud": "chat"}),
    );
    assert_authenticated(
        &handshake_ext(&b, json!({"auth": {"token": good}})).await,
        "iss and aud right",
    );
    let mut accepted = Vec::new();
    for (what, claims) in [
        (
            "wrong iss",
            json!({"sub": "a", "exp": exp, "iss": "other", "aud": "chat"}),
        ),
        ("no iss", json!({"sub": "a", "exp": exp, "aud": "chat"})),
        (
            "wrong aud",
            json!({"sub": "a", "exp": exp, "iss": "halley-tests", "aud": "other"}),
        ),
        (
            "no aud",
            json!({"sub": "a", "exp": exp, "iss": "halley-tests"}),
        ),
    ] {
        let token = hs256(SECRET.as_bytes(), claims);
        let r = handshake_ext(&b, json!({"auth": {"token": token}})).await;
        if r["successful"] != false {
            accepted.push(what);
        } else {
            assert_denied(&r, what);
        }
    }
    assert!(
        accepted.is_empty(),
        "with jwt_issuer and jwt_audience configured, these JWTs were accepted: {accepted:?}"
    );
}

/// A broker with an API key, the member token, and `/admin/**`: subscribe authenticated, publish nobody.
async fn rules_broker() -> Broker {
    let config = temp_file(
        "channel-rules.toml",
        &format!(
            r#"timeout = 5000
api_keys = [{{ key = "{API_KEY}" }}]

[security]
tokens = ["{TOKEN}"]

[[security.channels]]
pattern = "/admin/**"
subscribe = "authenticated"
publish = "nobody"
"#
        ),
    );
    Broker::start(&["--config", config.to_str().unwrap()]).await
}

/// An authenticated, connected session.
async fn member(b: &Broker) -> String {
    let cid = assert_authenticated(
        &handshake_ext(b, json!({"auth": {"token": TOKEN}})).await,
        "member",
    );
    assert_eq!(b.connect_now(&cid).await[0]["successful"], true);
    cid
}

async fn subscribe_reply(b: &Broker, cid: &str, subscription: Value) -> Value {
    let msgs = b
        .batch(
            json!([{"id": "s", "channel": "/meta/subscribe", "clientId": cid,
                        "subscription": subscription}]),
        )
        .await;
    reply(&msgs, "s").clone()
}

#[tokio::test]
async fn channel_rules_deny_anonymous_subscriptions_to_protected_channels() {
    let b = rules_broker().await;
    let anon = b.session().await;
    for sub in ["/admin/logs", "/admin/*", "/admin/**", "/**", "/admin"] {
        let r = subscribe_reply(&b, &anon, json!(sub)).await;
        if sub == "/admin" {
            // `/admin/**` does not cover `/admin` itself.
            assert_eq!(r["successful"], true, "{sub}: {r}");
            continue;
        }
        assert_eq!(
            r,
            json!({"id": "s", "channel": "/meta/subscribe", "successful": false,
                   "error": format!("403:{sub}:subscribe_denied"), "subscription": sub}),
            "{sub}"
        );
    }
    // A mixed array is refused as a whole, echoed as the same array, and subscribes nothing (SUB-7).
    let r = subscribe_reply(&b, &anon, json!(["/public", "/admin/logs"])).await;
    assert_eq!(r["successful"], false, "{r}");
    assert_eq!(r["subscription"], json!(["/public", "/admin/logs"]), "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("403:") && e.ends_with(":subscribe_denied")),
        "{r}"
    );
    let r = b
        .api(
            "POST",
            "/api/publish",
            Some(API_KEY),
            Some(r#"[{"channel":"/public","data":1},{"channel":"/admin/logs","data":2}]"#),
        )
        .await;
    assert_eq!(
        r.json(),
        json!([{"channel": "/public", "queued": 0}, {"channel": "/admin/logs", "queued": 0}])
    );
    // Unprotected channels stay open to anonymous sessions.
    b.subscribe(&anon, "/public/**").await;
}

#[tokio::test]
async fn channel_rules_allow_authenticated_subscriptions() {
    let b = rules_broker().await;
    let m = member(&b).await;
    for sub in ["/admin/logs", "/admin/**", "/**"] {
        let r = subscribe_reply(&b, &m, json!(sub)).await;
        assert_eq!(
            r,
            json!({"id": "s", "channel": "/meta/subscribe", "successful": true, "subscription": sub}),
            "{sub}"
        );
    }
}

#[tokio::test]
async fn channel_rules_publish_nobody_refuses_clients_but_not_the_api() {
    let b = rules_broker().await;
    let watcher = member(&b).await;
    let all = member(&b).await;
    b.subscribe(&watcher, "/admin/logs").await;
    b.subscribe(&all, "/**").await;
    let anon = b.session().await;

    for publisher in [&watcher, &anon] {
        let msgs = b
            .batch(
                json!([{"id": "p", "channel": "/admin/logs", "clientId": publisher,
                            "data": "forged"}]),
            )
            .await;
        assert_eq!(
            reply(&msgs, "p"),
            &json!({"id": "p", "channel": "/admin/logs", "successful": false,
                    "error": "403:/admin/logs:publish_denied"})
        );
        assert!(deliveries(&msgs).is_empty(), "{msgs:?}");
    }
    assert!(b.poll(&watcher).await.is_empty());
    assert!(b.poll(&all).await.is_empty());

    // The backend may still publish there; it releases the watcher's held connect.
    let c = b.client();
    let s = watcher.clone();
    let held = tokio::spawn(async move { c.connect(&s).await });
    sleep_ms(300).await;
    assert!(!held.is_finished(), "the connect was not held");
    let r = b
        .api(
            "POST",
            "/api/publish",
            Some(API_KEY),
            Some(r#"{"channel":"/admin/logs","data":"from the backend"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"channel": "/admin/logs", "queued": 2}));
    let msgs = tokio::time::timeout(PROMPT, held)
        .await
        .expect("held connect not released")
        .unwrap();
    assert_eq!(
        data_on(&msgs, "/admin/logs"),
        vec![json!("from the backend")]
    );
    assert_eq!(
        data_on(&b.poll(&all).await, "/admin/logs"),
        vec![json!("from the backend")]
    );
}

// Issue 19: `nbf`, `iat`, the stated leeway, and a session bound to its token's expiry.

/// Unix time in milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn alice(exp: i64) -> String {
    hs256(SECRET.as_bytes(), json!({"sub": "alice", "exp": exp}))
}

#[tokio::test]
async fn hs_7_attacker_tokens_are_refused_against_an_rs256_key() {
    let public = fixture("jwt-rs256-public.pem");
    let b = Broker::start(&["--anonymous", "false", "--jwt-rs256-public-key", &public]).await;
    let exp = now() + 600;
    let valid = rs256(json!({"sub": "carol", "exp": exp}));
    let pem = std::fs::read(&public).unwrap();
    let confused = hs256(&pem, json!({"sub": "mallory", "exp": exp}));
    let claims = valid.split('.').nth(1).unwrap();
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let admin = rs256(json!({"sub": "admin", "exp": exp}));
        // Carol's signature over the admin's claims.
        format!(
            "{}.{}.{}",
            parts[0],
            admin.split('.').nth(1).unwrap(),
            parts[2]
        )
    };
    let no_exp = rs256(json!({"sub": "carol"}));
    let string_exp = rs256(json!({"sub": "carol", "exp": exp.to_string()}));
    for (what, token) in [
        ("HS256 signed with the public key", confused),
        ("alg none", unsigned),
        ("tampered payload", tampered),
        ("no exp", no_exp),
        ("exp as a string", string_exp),
    ] {
        assert_denied(
            &handshake_ext(&b, json!({"auth": {"token": token}})).await,
            what,
        );
    }
    assert_authenticated(
        &handshake_ext(&b, json!({"auth": {"token": valid}})).await,
        "valid RS256",
    );
}

#[tokio::test]
async fn hs_7_nbf_and_iat_in_the_future_are_refused_beyond_the_leeway() {
    let b = Broker::start(&["--anonymous", "false", "--jwt-hs256-secret", SECRET]).await;
    let exp = now() + 7200;
    let token = |claims: Value| json!({"auth": {"token": hs256(SECRET.as_bytes(), claims)}});
    for (what, claims) in [
        (
            "nbf in an hour",
            json!({"sub": "a", "exp": exp, "nbf": now() + 3600}),
        ),
        (
            "nbf 40 s ahead",
            json!({"sub": "a", "exp": exp, "nbf": now() + 40}),
        ),
        (
            "iat in an hour",
            json!({"sub": "a", "exp": exp, "iat": now() + 3600}),
        ),
        (
            "iat 40 s ahead",
            json!({"sub": "a", "exp": exp, "iat": now() + 40}),
        ),
        (
            "nbf as a string",
            json!({"sub": "a", "exp": exp, "nbf": "0"}),
        ),
    ] {
        assert_denied(&handshake_ext(&b, token(claims)).await, what);
    }
    // Within the 30 s default leeway, and in the past, they pass.
    for (what, claims) in [
        (
            "nbf 20 s ahead",
            json!({"sub": "a", "exp": exp, "nbf": now() + 20}),
        ),
        (
            "iat 20 s ahead",
            json!({"sub": "a", "exp": exp, "iat": now() + 20}),
        ),
        (
            "nbf and iat past",
            json!({"sub": "a", "exp": exp, "nbf": now() - 60, "iat": now() - 60}),
        ),
    ] {
        assert_authenticated(&handshake_ext(&b, token(claims)).await, what);
    }
}

#[tokio::test]
async fn hs_7_expiry_is_checked_with_a_30_s_leeway_by_default() {
    let b = Broker::start(&["--anonymous", "false", "--jwt-hs256-secret", SECRET]).await;
    let inside = alice(now() - 20);
    assert_authenticated(
        &handshake_ext(&b, json!({"auth": {"token": inside}})).await,
        "expired 20 s ago",
    );
    let outside = alice(now() - 40);
    assert_denied(
        &handshake_ext(&b, json!({"auth": {"token": outside}})).await,
        "expired 40 s ago",
    );
}

#[tokio::test]
async fn hs_7_the_leeway_is_settable() {
    let b = Broker::start(&[
        "--anonymous",
        "false",
        "--jwt-hs256-secret",
        SECRET,
        "--jwt-leeway",
        "5000",
    ])
    .await;
    assert_authenticated(
        &handshake_ext(&b, json!({"auth": {"token": alice(now() - 2)}})).await,
        "expired 2 s ago, leeway 5 s",
    );
    assert_denied(
        &handshake_ext(&b, json!({"auth": {"token": alice(now() - 8)}})).await,
        "expired 8 s ago, leeway 5 s",
    );
    let nbf = hs256(
        SECRET.as_bytes(),
        json!({"sub": "a", "exp": now() + 600, "nbf": now() + 20}),
    );
    assert_denied(
        &handshake_ext(&b, json!({"auth": {"token": nbf}})).await,
        "nbf 20 s ahead, leeway 5 s",
    );
    let r = run_halley(
        &["--listen", "127.0.0.1:0", "--jwt-leeway", "3600001"],
        None,
    )
    .await;
    assert!(!r.status.success(), "a leeway over an hour was accepted");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("jwt_leeway"),
        "{r:?}"
    );
}

/// A broker whose JWT sessions end with their tokens, with no leeway so the end is the `exp`.
async fn bound_broker(sweep_interval: &str) -> Broker {
    Broker::start(&[
        "--anonymous",
        "false",
        "--jwt-hs256-secret",
        SECRET,
        "--auth-token",
        TOKEN,
        "--jwt-leeway",
        "0",
        "--jwt-expiry-ends-session",
        "--sweep-interval",
        sweep_interval,
        "--timeout",
        "20000",
    ])
    .await
}

/// An authenticated, connected session; returns its clientId and the expiry its handshake reply states.
async fn bound_session(b: &Broker, token: &str) -> (String, Value) {
    let r = handshake_ext(b, json!({"auth": {"token": token}})).await;
    assert_eq!(r["successful"], true, "{r}");
    assert_eq!(r["ext"]["auth"]["authenticated"], true, "{r}");
    let cid = r["clientId"].as_str().unwrap().to_string();
    assert_eq!(b.connect_now(&cid).await[0]["successful"], true);
    (cid, r["ext"]["auth"]["expires"].clone())
}

fn assert_token_expired(msg: &Value) {
    assert_eq!(msg["channel"], "/meta/connect", "{msg}");
    assert_eq!(msg["successful"], false, "{msg}");
    assert_eq!(msg["error"], "402::token_expired", "{msg}");
    assert_eq!(msg["advice"]["reconnect"], "handshake", "{msg}");
}

#[tokio::test]
async fn a_session_ends_at_its_tokens_expiry() {
    let b = bound_broker("100").await;
    let exp = now() + 3;
    let (cid, expires) = bound_session(&b, &alice(exp)).await;
    assert_eq!(
        expires,
        json!(exp * 1000),
        "the handshake reply states the end"
    );
    b.subscribe(&cid, "/chat").await;
    // A shared token has no expiry: its session is not bound.
    let member = member(&b).await;

    // The held connect is answered when the token expires, not at its 20 s timeout.
    let held = spawn_timed({
        let c = b.client();
        let cid = cid.clone();
        async move { c.connect(&cid).await }
    });
    let (msgs, answered) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held connect outlived the token")
        .unwrap();
    let at = now_ms() - answered.elapsed().as_millis() as i64;
    assert!(
        at >= exp * 1000 - 50,
        "answered {} ms before the token's exp",
        exp * 1000 - at
    );
    assert_token_expired(msgs.last().unwrap());

    // The session is gone, its subscription with it.
    assert_session_unknown(&b.connect_now(&cid).await[0], true);
    let r = b
        .batch(json!([{"id": "p", "channel": "/chat", "clientId": member, "data": 1}]))
        .await;
    assert_eq!(reply(&r, "p")["successful"], true, "{r:?}");
    assert_eq!(b.poll(&member).await, Vec::<Value>::new());
    // The shared-token session lives on; the expired token buys no new session.
    assert_eq!(b.connect_now(&member).await[0]["successful"], true);
    assert_denied(
        &handshake_ext(&b, json!({"auth": {"token": alice(exp)}})).await,
        "the expired token again",
    );
}

#[tokio::test]
async fn a_connect_after_the_tokens_expiry_is_told_before_the_sweeper_runs() {
    // The sweeper would take a minute: the connect itself finds the token expired.
    let b = bound_broker("60000").await;
    let exp = now() + 2;
    let (cid, _) = bound_session(&b, &alice(exp)).await;
    let r = b
        .batch(json!([{"id": "p", "channel": "/chat", "clientId": cid, "data": 1}]))
        .await;
    assert_eq!(reply(&r, "p")["successful"], true, "{r:?}");
    while now_ms() < exp * 1000 + 100 {
        sleep_ms(100).await;
    }
    assert_token_expired(&b.connect_now(&cid).await[0]);
    // Anything else finds no session.
    let r = b
        .batch(json!([{"id": "p", "channel": "/chat", "clientId": cid, "data": 2}]))
        .await;
    assert_session_unknown(reply(&r, "p"), false);
}

/// Presents `token` on `/service/halley/refresh`; returns the service's answer.
async fn refresh(b: &Broker, cid: &str, data: Value) -> Value {
    let id = next_id("r");
    let msgs = b
        .batch(
            json!([{"id": id, "channel": "/service/halley/refresh", "clientId": cid,
                       "data": data}]),
        )
        .await;
    assert_eq!(reply(&msgs, &id)["successful"], true, "{msgs:?}");
    let answers: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["id"] == id.as_str() && m.get("data").is_some())
        .collect();
    assert_eq!(answers.len(), 1, "{msgs:?}");
    answers[0].clone()
}

#[tokio::test]
async fn a_refreshed_session_outlives_its_first_token() {
    let b = bound_broker("100").await;
    let exp = now() + 3;
    let (cid, _) = bound_session(&b, &alice(exp)).await;
    b.subscribe(&cid, "/chat").await;

    // Tokens that must not extend it.
    let bob = hs256(SECRET.as_bytes(), json!({"sub": "bob", "exp": now() + 600}));
    for (what, data) in [
        ("another identity", json!({"token": bob})),
        ("an expired token", json!({"token": alice(now() - 10)})),
        (
            "a forged token",
            json!({"token": hs256(b"not-the-secret-0123456789-abcdefgh", json!({"sub": "alice", "exp": now() + 600}))}),
        ),
        ("a shared token", json!({"token": TOKEN})),
        ("no token", json!({})),
    ] {
        let answer = refresh(&b, &cid, data).await;
        assert_eq!(answer["successful"], false, "{what}: {answer}");
        assert!(answer["data"]["error"].is_string(), "{what}: {answer}");
    }

    let fresh_exp = now() + 600;
    let answer = refresh(&b, &cid, json!({"token": alice(fresh_exp)})).await;
    assert_eq!(answer["successful"], true, "{answer}");
    assert_eq!(answer["data"], json!({"expires": fresh_exp * 1000}));

    // Past the first token's expiry the session still holds its connect and its subscription.
    let held = tokio::spawn({
        let c = b.client();
        let cid = cid.clone();
        async move { c.connect(&cid).await }
    });
    while now_ms() < exp * 1000 + 1000 {
        sleep_ms(100).await;
    }
    assert!(
        !held.is_finished(),
        "the refreshed session's connect was answered"
    );
    let other = member(&b).await;
    b.publish(&other, "/chat", json!("still here")).await;
    let msgs = tokio::time::timeout(PROMPT, held)
        .await
        .expect("held connect not released")
        .unwrap();
    assert_eq!(data_on(&msgs, "/chat"), vec![json!("still here")]);
    assert_eq!(msgs.last().unwrap()["successful"], true, "{msgs:?}");
}

#[tokio::test]
async fn without_the_flag_a_session_outlives_its_token() {
    let b = Broker::start(&[
        "--anonymous",
        "false",
        "--jwt-hs256-secret",
        SECRET,
        "--jwt-leeway",
        "0",
        "--sweep-interval",
        "100",
    ])
    .await;
    let exp = now() + 2;
    let r = handshake_ext(&b, json!({"auth": {"token": alice(exp)}})).await;
    let cid = assert_authenticated(&r, "bound by nothing");
    assert_eq!(b.connect_now(&cid).await[0]["successful"], true);
    while now_ms() < exp * 1000 + 600 {
        sleep_ms(100).await;
        assert_eq!(b.connect_now(&cid).await[0]["successful"], true);
    }
}
