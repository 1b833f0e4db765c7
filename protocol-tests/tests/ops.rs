//! Operations (issue 17): a real Prometheus server scrapes `/metrics` while the test makes traffic, and the
//! counters it stored moved by exactly what the test did; `promtool check metrics` accepts the exposition;
//! `/metrics` on the main listener needs a key with the `metrics` right; JSON log lines parse, carry the
//! documented fields and never contain a configured secret.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on PATH); `scripts/test` installs it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use halley_protocol_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

const ADMIN_KEY: &str = "ops-admin-key-0123456789";
const PUBLISH_KEY: &str = "ops-publish-key-0123456789";
const METRICS_KEY: &str = "ops-metrics-key-0123456789";

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn need(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(tool))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    found.unwrap_or_else(|| {
        panic!("{tool} is not installed: apt-get install prometheus (scripts/test does it)")
    })
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on 127.0.0.1 scraping `target` every second, with its data in a temp directory; killed
/// (by its own PID, through `kill_on_drop`) with the test.
struct Prometheus {
    _child: Child,
    url: String,
    dir: PathBuf,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let bin = need("prometheus");
        let dir = std::env::temp_dir().join(format!(
            "halley-prometheus-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: halley\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = reqwest::get(format!("{}/-/ready", prometheus.url)).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of the instant vector `query` (one series), or `None` while Prometheus has no sample.
    async fn value(&self, query: &str) -> Option<f64> {
        let url = format!("{}/api/v1/query?query={}", self.url, percent_encode(query));
        let answer: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        let result = answer["data"]["result"].as_array()?;
        assert!(
            result.len() <= 1,
            "{query} matched several series: {answer}"
        );
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits (≤ 15 s) until `query` reads `expected`; panics with the last value otherwise.
    async fn wait_for(&self, query: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(query).await;
            if last == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{query}: expected {expected}, Prometheus last read {last:?}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `promtool check metrics` over `exposition`; returns its verdict and output.
async fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = Command::new(need("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start promtool");
    let mut stdin = child.stdin.take().expect("promtool stdin");
    stdin
        .write_all(exposition.as_bytes())
        .await
        .expect("feed promtool");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("promtool finished within 20 s")
        .expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn keys_config() -> PathBuf {
    temp_file(
        "ops-keys.toml",
        &format!(
            "api_keys = [\n  {{ key = \"{ADMIN_KEY}\" }},\n  {{ key = \"{PUBLISH_KEY}\", rights = [\"publish\"] }},\n  {{ key = \"{METRICS_KEY}\", rights = [\"metrics\"] }},\n]\n"
        ),
    )
}

#[tokio::test]
async fn prometheus_sees_counters_move_by_the_traffic_made() {
    let metrics_port = free_port();
    let config = keys_config();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let broker = Broker::start(&[
        "--config",
        config.to_str().unwrap(),
        "--timeout",
        "2000",
        "--metrics-listen",
        &metrics_listen,
    ])
    .await;
    let prometheus = Prometheus::start(&metrics_listen).await;
    let job = "job=\"halley\"";
    // Before any traffic: the series exist and read zero.
    prometheus
        .wait_for(
            &format!("halley_publishes_total{{{job},outcome=\"ok\"}}"),
            0.0,
        )
        .await;
    prometheus
        .wait_for(&format!("halley_deliveries_total{{{job}}}"), 0.0)
        .await;
    prometheus
        .wait_for(&format!("halley_sessions{{{job}}}"), 0.0)
        .await;

    // One subscriber; 7 publishes through the API, 3 over Bayeux by the subscriber itself (it gets its own
    // publishes back): 10 publishes, 10 deliveries.
    let sub = broker.session().await;
    broker.subscribe(&sub, "/ops/ticks").await;
    for i in 0..7 {
        let body = json!({"channel": "/ops/ticks", "data": i}).to_string();
        let r = broker
            .api("POST", "/api/publish", Some(PUBLISH_KEY), Some(&body))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["queued"], 1, "{}", r.body);
    }
    for i in 0..3 {
        broker
            .publish(&sub, "/ops/ticks", json!({"bayeux": i}))
            .await;
    }
    // Refusals: 2 unknown keys, 1 key without the right, 1 body that is not JSON.
    for _ in 0..2 {
        let r = broker
            .api(
                "POST",
                "/api/publish",
                Some("not-a-key-0123456789"),
                Some("{}"),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let r = broker.api("GET", "/metrics", Some(PUBLISH_KEY), None).await;
    assert_eq!(r.status, 403, "a publish-only key reads no metrics");
    let r = broker
        .api("POST", "/api/publish", Some(PUBLISH_KEY), Some("not json"))
        .await;
    assert_eq!(r.status, 400);

    prometheus
        .wait_for(
            &format!("halley_publishes_total{{{job},outcome=\"ok\"}}"),
            10.0,
        )
        .await;
    prometheus
        .wait_for(&format!("halley_deliveries_total{{{job}}}"), 10.0)
        .await;
    prometheus
        .wait_for(&format!("halley_sessions{{{job}}}"), 1.0)
        .await;
    prometheus
        .wait_for(&format!("halley_subscriptions{{{job}}}"), 1.0)
        .await;
    prometheus
        .wait_for(
            &format!("halley_refusals_total{{{job},reason=\"api_key\"}}"),
            2.0,
        )
        .await;
    prometheus
        .wait_for(
            &format!("halley_refusals_total{{{job},reason=\"api_right\"}}"),
            1.0,
        )
        .await;
    prometheus
        .wait_for(
            &format!("halley_refusals_total{{{job},class=\"bad_input\"}}"),
            1.0,
        )
        .await;
    prometheus
        .wait_for(
            &format!("halley_http_responses_total{{{job},code=\"401\"}}"),
            2.0,
        )
        .await;
    prometheus
        .wait_for(
            &format!("halley_http_responses_total{{{job},code=\"403\"}}"),
            1.0,
        )
        .await;
    prometheus
        .wait_for(
            &format!("halley_build_info{{{job},version=\"{}\"}}", "0.1.0"),
            1.0,
        )
        .await;

    // The main listener serves the same exposition to a key with the metrics right; promtool accepts both.
    let keyed = broker.api("GET", "/metrics", Some(METRICS_KEY), None).await;
    assert_eq!(keyed.status, 200, "{}", keyed.body);
    assert!(
        keyed
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        keyed.header("content-type")
    );
    let open = reqwest::get(format!("http://{metrics_listen}/metrics"))
        .await
        .expect("scrape the metrics listener")
        .text()
        .await
        .expect("exposition");
    for exposition in [&keyed.body, &open] {
        let (ok, report) = promtool_check(exposition).await;
        assert!(ok, "promtool check metrics failed:\n{report}\n{exposition}");
    }
    let unkeyed = broker.api("GET", "/metrics", None, None).await;
    assert_eq!(unkeyed.status, 401);

    // promtool really checks: a broken exposition fails it (so the checks above can fail).
    let (ok, _) = promtool_check("# TYPE halley_x counter\nhalley_x{le=} 1\n").await;
    assert!(!ok, "promtool accepted a malformed exposition");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn json_logs_parse_carry_fields_and_no_secrets() {
    const TOKEN: &str = "ops-shared-token-0123456789";
    const SECRET: &str = "ops-jwt-secret-0123456789abcdef";
    let broker = Broker::start(&[
        "--timeout",
        "2000",
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--api-key",
        ADMIN_KEY,
        "--auth-token",
        TOKEN,
        "--jwt-hs256-secret",
        SECRET,
        "--anonymous",
        "false",
    ])
    .await;
    let jwt = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ops-user", "exp": now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign a JWT");
    let handshake = |ext: Value| {
        json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0",
                "supportedConnectionTypes": ["long-polling", "callback-polling"], "ext": ext}])
    };
    // Accepted and refused credentials, over POST and in a callback-polling query string.
    let ok = broker
        .batch(handshake(json!({"auth": {"token": TOKEN}})))
        .await;
    assert_eq!(ok[0]["successful"], true, "{ok:?}");
    let cid = ok[0]["clientId"].as_str().expect("clientId").to_string();
    let ok = broker
        .batch(handshake(json!({"auth": {"token": jwt}})))
        .await;
    assert_eq!(ok[0]["successful"], true, "{ok:?}");
    let denied = broker
        .batch(handshake(
            json!({"auth": {"token": format!("{TOKEN}-wrong")}}),
        ))
        .await;
    assert_eq!(denied[0]["successful"], false, "{denied:?}");
    let query = percent_encode(&handshake(json!({"auth": {"token": TOKEN}})).to_string());
    let r = broker.get(&format!("?jsonp=cb&message={query}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    broker.subscribe(&cid, "/ops/logs").await;
    let r = broker
        .api(
            "POST",
            "/api/publish",
            Some(ADMIN_KEY),
            Some(r#"{"channel":"/ops/logs","data":1}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = broker
        .api(
            "POST",
            "/api/publish",
            Some(&format!("{ADMIN_KEY}x")),
            Some("{}"),
        )
        .await;
    assert_eq!(r.status, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = broker.stderr();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 10, "too few log lines:\n{logs}");
    let mut fields = std::collections::BTreeSet::new();
    for line in &lines {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(event.get(key).is_some(), "no {key} in {line}");
        }
        fields.extend(event.as_object().unwrap().keys().cloned());
        for secret in [ADMIN_KEY, TOKEN, SECRET, jwt.as_str()] {
            assert!(!line.contains(secret), "a secret in the logs: {line}");
        }
    }
    // The fields operators filter on, where events carry them: the session, the request path, the status.
    for field in ["client_id", "path", "status", "method"] {
        assert!(
            fields.contains(field),
            "no log line carries {field}; fields seen: {fields:?}\n{logs}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains(&cid)),
        "the session id appears in no log line:\n{logs}"
    );
}
