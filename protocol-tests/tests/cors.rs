//! CORS: cross-origin XHR (BAYEUX.md 4.9, checklist CORS-1..CORS-4), the origin allow-list, and the attributes
//! of the `BAYEUX_BROWSER` cookie (4.7: `--cookie-same-site`, `--cookie-secure`).

use halley_protocol_tests::*;

const ORIGIN: &str = "http://app.example";

/// All values of header `name`, joined with `,` (headers may be repeated).
fn joined(r: &Resp, name: &str) -> String {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ASCII header"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The comma-separated tokens of header `name`, trimmed and lower-cased.
fn tokens(r: &Resp, name: &str) -> Vec<String> {
    joined(r, name)
        .split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The preflight a browser sends before `POST <base>/connect` with CometD's headers plus a custom one.
async fn preflight(c: &Client, origin: &str) -> Resp {
    c.send(
        "OPTIONS",
        "/connect",
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type,x-custom"),
        ],
        None,
    )
    .await
}

/// A cross-origin handshake POST as CometD JS sends it.
async fn cross_origin_handshake(c: &Client, origin: &str) -> Resp {
    c.send(
        "POST",
        "/handshake",
        &[("origin", origin), ("content-type", "application/json")],
        Some(
            json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0"}])
                .to_string()
                .into_bytes(),
        ),
    )
    .await
}

/// CORS-3 and CORS-4 on any response that carries CORS headers.
fn assert_cors_hygiene(r: &Resp) {
    let origin = r.header("access-control-allow-origin");
    if r.header("access-control-allow-credentials") == Some("true") {
        assert_ne!(origin, Some("*"), "CORS-3: `*` with credentials: {r:?}");
    }
    if origin.is_some() {
        assert!(
            tokens(r, "vary").contains(&"origin".to_string()),
            "CORS-4: Vary must mention Origin: {r:?}"
        );
    }
}

#[tokio::test]
async fn cors_1_preflight_for_connect_allows_the_origin_methods_and_requested_headers() {
    let b = Broker::fast().await;
    let r = preflight(&b, ORIGIN).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(ORIGIN),
        "{r:?}"
    );
    assert_eq!(
        r.header("access-control-allow-credentials"),
        Some("true"),
        "{r:?}"
    );
    let methods = tokens(&r, "access-control-allow-methods");
    for m in ["get", "post", "options"] {
        assert!(methods.contains(&m.to_string()), "{m} missing: {methods:?}");
    }
    let headers = tokens(&r, "access-control-allow-headers");
    for h in ["content-type", "x-custom"] {
        assert!(headers.contains(&h.to_string()), "{h} missing: {headers:?}");
    }
    assert_eq!(r.header("access-control-max-age"), Some("86400"), "{r:?}");
    assert_cors_hygiene(&r);
}

#[tokio::test]
async fn cors_1_preflight_to_every_bayeux_url_is_answered() {
    let b = Broker::fast().await;
    for suffix in ["", "/", "/handshake", "/subscribe", "/disconnect", "/x/y"] {
        let r = b
            .send(
                "OPTIONS",
                suffix,
                &[
                    ("origin", ORIGIN),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "content-type"),
                ],
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{suffix}: {r:?}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(ORIGIN),
            "{suffix}"
        );
    }
}

#[tokio::test]
async fn cors_2_actual_post_responses_repeat_origin_and_credentials() {
    let b = Broker::fast().await;
    let r = cross_origin_handshake(&b, ORIGIN).await;
    let cid = r.messages()[0]["clientId"].as_str().unwrap().to_string();
    let connect = b
        .send(
            "POST",
            "/connect",
            &[("origin", ORIGIN), ("content-type", "application/json")],
            Some(json!([connect_msg("2", &cid)]).to_string().into_bytes()),
        )
        .await;
    assert_eq!(connect.messages()[0]["successful"], true);
    for r in [&r, &connect] {
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(ORIGIN),
            "{r:?}"
        );
        assert_eq!(
            r.header("access-control-allow-credentials"),
            Some("true"),
            "{r:?}"
        );
        assert_cors_hygiene(r);
    }
}

#[tokio::test]
async fn cors_3_allow_origin_star_is_never_sent_with_credentials() {
    let b = Broker::fast().await;
    let mut seen = vec![
        preflight(&b, ORIGIN).await,
        preflight(&b, "null").await,
        cross_origin_handshake(&b, ORIGIN).await,
        cross_origin_handshake(&b, "http://other.example:8443").await,
        // Without Origin, and a refused request.
        b.post(
            "",
            json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0"}]),
        )
        .await,
        b.send(
            "POST",
            "",
            &[("origin", ORIGIN), ("content-type", "application/json")],
            Some(b"{nope".to_vec()),
        )
        .await,
    ];
    seen.push(
        b.send(
            "GET",
            "/handshake?jsonp=cb&message=%5B%5D",
            &[("origin", ORIGIN)],
            None,
        )
        .await,
    );
    for r in &seen {
        assert_ne!(r.header("access-control-allow-origin"), Some("*"), "{r:?}");
        assert_cors_hygiene(r);
    }
    // A request with an Origin is answered with that very origin (the "null" origin of sandboxed pages too).
    assert_eq!(
        seen[1].header("access-control-allow-origin"),
        Some("null"),
        "{:?}",
        seen[1]
    );
    assert_eq!(
        seen[3].header("access-control-allow-origin"),
        Some("http://other.example:8443")
    );
}

#[tokio::test]
async fn cors_4_responses_with_cors_headers_vary_on_origin() {
    let b = Broker::fast().await;
    for r in [
        preflight(&b, ORIGIN).await,
        cross_origin_handshake(&b, ORIGIN).await,
    ] {
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        assert!(
            tokens(&r, "vary").contains(&"origin".to_string()),
            "Vary: {:?}",
            joined(&r, "vary")
        );
    }
}

#[tokio::test]
async fn cors_allowed_origin_restricts_cross_origin_access() {
    let b = Broker::start(&["--allowed-origin", "http://a.example"]).await;
    let allowed = preflight(&b, "http://a.example").await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://a.example")
    );
    let r = cross_origin_handshake(&b, "http://a.example").await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://a.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));

    for r in [
        preflight(&b, "http://b.example").await,
        cross_origin_handshake(&b, "http://b.example").await,
        // Neither a prefix nor a different port of an allowed origin.
        cross_origin_handshake(&b, "http://a.example.evil").await,
        cross_origin_handshake(&b, "http://a.example:8080").await,
    ] {
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "refused origin got Allow-Origin: {r:?}"
        );
    }
    // The Bayeux request itself is still processed (only the browser is kept from reading the answer).
    let r = cross_origin_handshake(&b, "http://b.example").await;
    assert_eq!(r.messages()[0]["successful"], true);
}

#[tokio::test]
async fn cors_refused_origin_gets_no_cors_headers_at_all() {
    // Contract and BAYEUX.md 4.9: "unknown origins get no CORS headers" — not merely no Allow-Origin.
    let b = Broker::start(&["--allowed-origin", "http://a.example"]).await;
    for r in [
        preflight(&b, "http://b.example").await,
        cross_origin_handshake(&b, "http://b.example").await,
    ] {
        let cors: Vec<&str> = r
            .headers
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("access-control-"))
            .collect();
        assert!(
            cors.is_empty(),
            "refused origin got CORS headers {cors:?}: {r:?}"
        );
    }
}

#[tokio::test]
async fn cors_allowed_origin_accepts_a_comma_separated_list() {
    let b = Broker::start(&["--allowed-origin", "http://a.example,http://c.example"]).await;
    for origin in ["http://a.example", "http://c.example"] {
        let r = cross_origin_handshake(&b, origin).await;
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    }
    let r = cross_origin_handshake(&b, "http://b.example").await;
    assert!(r.header("access-control-allow-origin").is_none(), "{r:?}");
}

/// The attributes of the `BAYEUX_BROWSER` cookie set by a cookie-less handshake (value checked non-empty).
async fn cookie_attributes(b: &Broker) -> Vec<String> {
    let r = b
        .post(
            "/handshake",
            json!([{"id": "1", "channel": "/meta/handshake", "version": "1.0"}]),
        )
        .await;
    assert_eq!(r.messages()[0]["successful"], true);
    let (value, line) = r
        .set_cookie("BAYEUX_BROWSER")
        .unwrap_or_else(|| panic!("no BAYEUX_BROWSER cookie: {r:?}"));
    assert!(
        !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric()),
        "{line}"
    );
    let mut attrs: Vec<String> = line
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_string())
        .collect();
    attrs.sort();
    attrs
}

#[tokio::test]
async fn cookie_defaults_are_httponly_path_root_samesite_lax() {
    let b = Broker::fast().await;
    assert_eq!(
        cookie_attributes(&b).await,
        vec!["HttpOnly", "Path=/", "SameSite=Lax"]
    );
}

#[tokio::test]
async fn cookie_same_site_none_with_secure() {
    let b = Broker::start(&["--cookie-same-site", "none", "--cookie-secure"]).await;
    assert_eq!(
        cookie_attributes(&b).await,
        vec!["HttpOnly", "Path=/", "SameSite=None", "Secure"]
    );
}

#[tokio::test]
async fn cookie_same_site_strict() {
    let b = Broker::start(&["--cookie-same-site", "strict"]).await;
    assert_eq!(
        cookie_attributes(&b).await,
        vec!["HttpOnly", "Path=/", "SameSite=Strict"]
    );
}

#[tokio::test]
async fn cookie_same_site_none_without_secure_refuses_to_start() {
    let out = run_halley(
        &["--listen", "127.0.0.1:0", "--cookie-same-site", "none"],
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "exit status {:?}; stdout {stdout:?}",
        out.status
    );
    assert!(
        !stdout.contains("listening on"),
        "it started listening: {stdout:?}"
    );
    assert!(
        stderr.to_ascii_lowercase().contains("secure"),
        "stderr should explain that SameSite=None needs Secure: {stderr:?}"
    );
}
