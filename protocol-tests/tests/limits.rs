//! Load limits and dead clients (README "Configuration"): `--max-sessions`, `--max-handshakes-per-second`,
//! `--max-subscriptions`, `--max-body-bytes`, `--max-queue` with both overflow policies, memory with 2,000
//! subscribers that stopped polling, `--header-timeout`, `--body-timeout`, `--max-connections`, and a client that
//! vanishes in the middle of a long poll.

use std::time::{Duration, Instant};

use halley_protocol_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "limits-api-key-0123456789";

/// A handshake whose reply is returned as is (success not asserted).
async fn try_handshake(c: &Client) -> Value {
    let id = next_id("h");
    let msgs = c
        .batch(
            json!([{"id": id, "channel": "/meta/handshake", "version": "1.0",
                       "supportedConnectionTypes": ["long-polling"]}]),
        )
        .await;
    assert_eq!(msgs.len(), 1, "a handshake reply comes alone: {msgs:?}");
    reply(&msgs, &id).clone()
}

/// Asserts a handshake refused for load: `503::server_busy`, `advice:{reconnect:"handshake", interval}`, no
/// clientId.
fn assert_server_busy(r: &Value, interval: u64) {
    assert_eq!(r["channel"], "/meta/handshake", "{r}");
    assert_eq!(r["successful"], false, "{r}");
    assert_eq!(r["error"], "503::server_busy", "{r}");
    assert_eq!(
        r["advice"],
        json!({"reconnect": "handshake", "interval": interval}),
        "{r}"
    );
    assert!(
        r.get("clientId").is_none(),
        "refused handshake with a clientId: {r}"
    );
}

async fn stats(c: &Client) -> Value {
    let r = c.api("GET", "/api/stats", Some(KEY), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// Polls `/api/stats` every 50 ms until `pred` holds or `within` passes; returns the last stats and the time
/// it took (`None` when it never held).
async fn wait_stats(
    c: &Client,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> (Value, Option<Duration>) {
    let start = Instant::now();
    loop {
        let s = stats(c).await;
        if pred(&s) {
            return (s, Some(start.elapsed()));
        }
        if start.elapsed() > within {
            return (s, None);
        }
        sleep_ms(50).await;
    }
}

/// `GET /health` on a raw connection; asserts a 200.
async fn health_on(stream: &mut TcpStream, port: u16) {
    let req = format!("GET /health HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n");
    let r = exchange(stream, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn max_sessions_refuses_the_4th_handshake_with_server_busy_until_one_leaves() {
    let b = Broker::start(&["--max-sessions", "3", "--busy-interval", "1500"]).await;
    let mut cids = Vec::new();
    for _ in 0..3 {
        cids.push(b.handshake().await);
    }
    let refused = try_handshake(&b).await;
    assert_server_busy(&refused, 1500);
    // Still refused: a refusal does not free anything.
    assert_server_busy(&try_handshake(&b).await, 1500);

    let bye = b.disconnect(&cids[0]).await;
    assert_eq!(bye.last().unwrap()["successful"], true, "{bye:?}");
    let again = try_handshake(&b).await;
    assert_eq!(again["successful"], true, "after a disconnect: {again}");
    assert_server_busy(&try_handshake(&b).await, 1500);
}

#[tokio::test]
async fn handshake_rate_limit_refuses_a_burst_beyond_the_bucket_and_refills() {
    let b = Broker::start(&["--max-handshakes-per-second", "5"]).await;
    let mut ok = 0;
    let start = Instant::now();
    for _ in 0..20 {
        let r = try_handshake(&b).await;
        if r["successful"] == true {
            ok += 1;
        } else {
            assert_server_busy(&r, 1000);
        }
    }
    let burst = start.elapsed();
    // The bucket holds 5 and refills 5 per second: one more during a burst of up to 200 ms (a burst slowed
    // down by a loaded machine may refill a few more, but never more than its duration allows).
    let allowed = 6.max(5 + (burst.as_secs_f64() * 5.0).ceil() as usize);
    assert!(
        ok >= 5 && ok <= allowed,
        "{ok} of 20 handshakes in {burst:?} succeeded; expected the bucket of 5 (+ refill, at most {allowed})"
    );

    sleep_ms(1100).await;
    let mut later = 0;
    for _ in 0..5 {
        if try_handshake(&b).await["successful"] == true {
            later += 1;
        }
    }
    assert_eq!(later, 5, "handshakes 1.1 s after the burst");
}

#[tokio::test]
async fn max_subscriptions_refuses_the_third_subscription() {
    let b = Broker::start(&["--max-subscriptions", "2"]).await;
    let cid = b.session().await;
    b.subscribe(&cid, "/lim/a").await;
    b.subscribe(&cid, "/lim/b").await;
    let msgs = b
        .batch(
            json!([{"id": "s3", "channel": "/meta/subscribe", "clientId": cid,
                       "subscription": "/lim/c"}]),
        )
        .await;
    let r = reply(&msgs, "s3");
    assert_eq!(r["successful"], false, "{r}");
    assert_eq!(r["error"], "403:subscription_limit:subscribe_denied", "{r}");
    assert_eq!(r["subscription"], "/lim/c", "{r}");

    // The refused one was not added: a publish on /lim/c reaches nobody, /lim/a still works.
    let got = b.relay(&cid, &["/lim/c", "/lim/a"]).await;
    assert_eq!(
        got.iter().map(|m| m["channel"].clone()).collect::<Vec<_>>(),
        vec![json!("/lim/a")],
        "{got:?}"
    );
    // Freeing one makes room again.
    b.unsubscribe(&cid, "/lim/a").await;
    b.subscribe(&cid, "/lim/c").await;
}

#[tokio::test]
async fn max_body_bytes_answers_413_and_the_session_stays_usable() {
    let b = Broker::start(&["--max-body-bytes", "1024"]).await;
    let cid = b.session().await;
    b.subscribe(&cid, "/big").await;

    let big = json!([{"id": "p1", "channel": "/big", "clientId": cid, "data": "x".repeat(2048)}]);
    let r = b.post("", big).await;
    assert_eq!(r.status, 413, "2 KiB body: {r:?}");

    // Nothing of it was published, and the session goes on.
    let small = json!([{"id": "p2", "channel": "/big", "clientId": cid, "data": "y".repeat(900)}]);
    let body = small.to_string();
    assert!(body.len() <= 1024, "{}", body.len());
    let msgs = b.post("", small).await.messages();
    assert_eq!(reply(&msgs, "p2")["successful"], true, "{msgs:?}");
    assert_eq!(data_on(&msgs, "/big"), vec![json!("y".repeat(900))]);
    let after = b.connect_now(&cid).await;
    assert_eq!(after.len(), 1, "the 2 KiB publish leaked: {after:?}");
    assert_eq!(after[0]["successful"], true, "{after:?}");
}

#[tokio::test]
async fn max_queue_drop_oldest_keeps_the_newest_and_reports_the_count() {
    let b = Broker::start(&["--max-queue", "5"]).await;
    let sub = b.session().await;
    b.subscribe(&sub, "/q").await;
    let publisher = b.session().await;

    // Exactly the capacity: nothing dropped, no report.
    for n in 0..5 {
        b.publish(&publisher, "/q", json!(n)).await;
    }
    let msgs = b.connect_now(&sub).await;
    assert_eq!(
        data_on(&msgs, "/q"),
        (0..5).map(|n| json!(n)).collect::<Vec<_>>()
    );
    assert!(
        msgs.last().unwrap().get("ext").is_none(),
        "no drop to report: {msgs:?}"
    );

    for n in 1..=8 {
        b.publish(&publisher, "/q", json!(n)).await;
    }
    let msgs = b.connect_now(&sub).await;
    assert_eq!(
        data_on(&msgs, "/q"),
        (4..=8).map(|n| json!(n)).collect::<Vec<_>>(),
        "{msgs:?}"
    );
    let r = msgs.last().unwrap();
    assert_eq!(r["channel"], "/meta/connect", "{r}");
    assert_eq!(r["successful"], true, "{r}");
    assert_eq!(r["ext"]["halley"]["dropped"], 3, "{r}");
    // Reported once: the next connect has nothing to say.
    let next = b.connect_now(&sub).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(next[0].get("ext").is_none(), "{next:?}");
}

#[tokio::test]
async fn max_queue_disconnect_policy_removes_the_session() {
    let b = Broker::start(&["--max-queue", "5", "--queue-overflow", "disconnect"]).await;
    let sub = b.session().await;
    b.subscribe(&sub, "/q").await;
    let publisher = b.session().await;
    for n in 0..6 {
        b.publish(&publisher, "/q", json!(n)).await;
    }
    let msgs = b.connect_now(&sub).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["channel"], "/meta/connect");
    assert_session_unknown(&msgs[0], true);
    // The publisher is unaffected.
    b.publish(&publisher, "/q", json!("after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_with_2000_subscribers_that_stopped_polling() {
    const SESSIONS: usize = 2000;
    const WORKERS: usize = 8;
    const MESSAGES: usize = 200;
    let b = Broker::start(&[
        "--max-queue",
        "50",
        "--max-interval",
        "3000",
        "--sweep-interval",
        "200",
        "--api-key",
        KEY,
    ])
    .await;
    // Warm the server's connection and allocator paths a little before the baseline.
    stats(&b).await;
    let rss_start = b.rss_kib();

    let setup = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let c = b.client();
        tasks.push(tokio::spawn(async move {
            for _ in (w..SESSIONS).step_by(WORKERS) {
                let cid = c.handshake().await;
                c.subscribe(&cid, "/mem/feed").await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let setup = setup.elapsed();
    let rss_sessions = b.rss_kib();

    let payload = "m".repeat(1000);
    let publish = Instant::now();
    for n in 0..MESSAGES {
        let body = json!({"channel": "/mem/feed", "data": {"n": n, "pad": payload}}).to_string();
        let r = b.api("POST", "/api/publish", Some(KEY), Some(&body)).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["queued"], SESSIONS, "message {n}: {r:?}");
    }
    let publish = publish.elapsed();
    let s = stats(&b).await;
    let rss_full = b.rss_kib();
    let since_setup = setup + publish;
    assert_eq!(
        s["sessions"], SESSIONS,
        "sessions expired before the measurement (setup {setup:?}, publish {publish:?}): {s}"
    );
    assert_eq!(s["subscriptions"], SESSIONS, "{s}");
    assert_eq!(
        s["dropped"],
        (SESSIONS * (MESSAGES - 50)) as u64,
        "each queue keeps its newest 50: {s}"
    );

    let growth = rss_full.saturating_sub(rss_start);
    eprintln!(
        "memory: RSS {rss_start} KiB at start, {rss_sessions} KiB with {SESSIONS} subscribed sessions \
         (setup {setup:?}), {rss_full} KiB with {MESSAGES} x 1 KiB messages queued 50 deep \
         (publish {publish:?}); growth {growth} KiB (naive copies would be {} KiB)",
        SESSIONS * 50
    );
    assert!(
        growth < 60 * 1024,
        "RSS grew {growth} KiB (from {rss_start} to {rss_full}) for {SESSIONS} sessions x 50 queued 1 KiB messages"
    );

    // Nobody polls: after max-interval + sweep every session is gone, with its subscriptions.
    let (s, took) = wait_stats(&b, Duration::from_millis(3000 + 200 + 2500), |s| {
        s["sessions"] == 0 && s["subscriptions"] == 0
    })
    .await;
    let rss_end = b.rss_kib();
    eprintln!(
        "memory: sessions gone {took:?} after the last publish (which came {since_setup:?} after the first \
         handshake); RSS then {rss_end} KiB"
    );
    assert!(took.is_some(), "sessions not swept: {s}");
}

#[tokio::test]
async fn header_timeout_closes_a_half_sent_request_line() {
    let b = Broker::start(&["--header-timeout", "1000"]).await;
    let mut stream = b.tcp().await;
    let start = Instant::now();
    stream.write_all(b"POST /com").await.unwrap();
    let (got, closed) = read_until_closed(&mut stream, start, Duration::from_millis(4000)).await;
    let closed = closed.unwrap_or_else(|| {
        panic!("a half request line kept the connection open 4 s with --header-timeout 1000")
    });
    assert!(
        closed >= Duration::from_millis(900) && closed <= Duration::from_millis(1700),
        "closed after {closed:?}, expected ~1 s; got {:?}",
        String::from_utf8_lossy(&got)
    );
    // Meanwhile and afterwards the server serves.
    b.session().await;
}

#[tokio::test]
async fn header_timeout_closes_an_idle_keep_alive_connection() {
    let b = Broker::start(&["--header-timeout", "1000"]).await;
    let mut stream = b.tcp().await;
    health_on(&mut stream, b.port).await;
    let start = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, start, Duration::from_millis(4000)).await;
    let closed = closed.expect("an idle keep-alive connection stayed open 4 s");
    assert!(
        closed >= Duration::from_millis(900) && closed <= Duration::from_millis(1700),
        "idle keep-alive closed after {closed:?}, expected ~1 s"
    );
}

/// A connection that never sends a byte. hyper-util's `auto::Builder` first reads the bytes that tell the
/// protocol version, and hyper's `header_read_timeout` only starts once the HTTP/1 parser runs, so the
/// broker bounds that first read itself; without it a silent socket kept its `--max-connections` permit
/// indefinitely.
#[tokio::test]
async fn header_timeout_closes_a_connection_that_never_speaks() {
    let b = Broker::start(&["--header-timeout", "1000"]).await;
    let mut stream = b.tcp().await;
    let start = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, start, Duration::from_millis(4000)).await;
    let closed = closed
        .expect("a connection that never sent a byte stayed open 4 s with --header-timeout 1000");
    assert!(
        closed >= Duration::from_millis(900) && closed <= Duration::from_millis(1700),
        "closed after {closed:?}, expected ~1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_timeout_answers_400_to_a_stalled_body_while_others_are_served() {
    let b = Broker::start(&["--body-timeout", "1000"]).await;
    let mut stream = b.tcp().await;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n",
        b.path, b.port
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"[{\"id\":\"1\"").await.unwrap();
    let start = Instant::now();

    // Others are served while that body stalls.
    let c = b.client();
    let other = tokio::spawn(async move {
        sleep_ms(300).await;
        let t = Instant::now();
        let cid = c.session().await;
        c.publish(&cid, "/other", json!(1)).await;
        t.elapsed()
    });

    let (got, closed) = read_until_closed(&mut stream, start, Duration::from_millis(4000)).await;
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(
        !got.is_empty() || closed.is_some(),
        "no answer and not closed 4 s after a stalled body"
    );
    assert!(
        took <= Duration::from_millis(2000) && took >= Duration::from_millis(900),
        "answered/closed after {took:?}, expected ~1 s: {text:?}"
    );
    if !got.is_empty() {
        assert!(
            text.starts_with("HTTP/1.1 400 "),
            "stalled body answered: {text:?}"
        );
    }
    let served_in = other.await.unwrap();
    assert!(
        served_in < PROMPT,
        "another client took {served_in:?} meanwhile"
    );
}

#[tokio::test]
async fn max_connections_closes_the_sixth_at_once_and_serves_again_when_one_leaves() {
    let b = Broker::start(&["--max-connections", "5"]).await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut s = b.tcp().await;
        health_on(&mut s, b.port).await;
        open.push(s);
    }

    let mut sixth = b.tcp().await;
    let start = Instant::now();
    let _ = sixth
        .write_all(format!("GET /health HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n\r\n", b.port).as_bytes())
        .await;
    let (got, closed) = read_until_closed(&mut sixth, start, Duration::from_millis(3000)).await;
    assert!(
        got.is_empty(),
        "the 6th connection was answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    let closed = closed.expect("the 6th connection stayed open");
    assert!(
        closed < PROMPT,
        "the 6th connection closed only after {closed:?}"
    );

    // The five are still served.
    for s in &mut open {
        health_on(s, b.port).await;
    }

    drop(open.pop());
    sleep_ms(300).await;
    let mut fresh = b.tcp().await;
    health_on(&mut fresh, b.port).await;
    // And the limit holds again.
    let mut seventh = b.tcp().await;
    let start = Instant::now();
    let (got, closed) = read_until_closed(&mut seventh, start, Duration::from_millis(3000)).await;
    assert!(
        got.is_empty() && closed.is_some_and(|c| c < PROMPT),
        "{closed:?} {got:?}"
    );
}

#[tokio::test]
async fn a_client_that_vanishes_mid_poll_is_expired_after_max_interval() {
    let b = Broker::start(&[
        "--timeout",
        "10000",
        "--max-interval",
        "1000",
        "--sweep-interval",
        "100",
        "--api-key",
        KEY,
    ])
    .await;
    let vanishing = b.session().await;
    let staying = b.session().await;

    let mut held = Vec::new();
    for cid in [&vanishing, &staying] {
        let mut s = b.tcp().await;
        let body = json!([connect_msg("held", cid)]).to_string();
        s.write_all(&b.http1_request(
            "POST",
            "",
            &[("content-type", "application/json")],
            body.as_bytes(),
        ))
        .await
        .unwrap();
        held.push(s);
    }
    sleep_ms(300).await;
    for s in &mut held {
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await;
        assert!(r.is_err(), "a connect was not held: {r:?}");
    }
    assert_eq!(stats(&b).await["sessions"], 2);

    let dropped = Instant::now();
    drop(held.remove(0));
    let (s, took) = wait_stats(&b, Duration::from_millis(2500), |s| s["sessions"] == 1).await;
    let took = took
        .unwrap_or_else(|| panic!("the vanished client's session still there 2.5 s later: {s}"));
    eprintln!("vanished session expired {took:?} after its socket closed");
    assert!(
        dropped.elapsed() >= Duration::from_millis(900),
        "expired before max-interval: {took:?}"
    );

    let msgs = b.connect_now(&vanishing).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_session_unknown(&msgs[0], true);
    // The session whose connect is still held is alive (it would have expired too without the hold).
    let msgs = b.publish(&staying, "/alive", json!(1)).await;
    assert_eq!(msgs.last().unwrap()["successful"], true);
}

/// Drops every packet sent to a local TCP port while alive, making that peer vanish without a FIN or RST —
/// a half-open socket as a dead phone or a pulled cable leaves it. Needs root and iptables.
struct Blackhole {
    port: u16,
}

impl Blackhole {
    fn rule(port: u16, action: &str) -> std::process::Output {
        std::process::Command::new("iptables")
            .args([
                action,
                "INPUT",
                "-i",
                "lo",
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "DROP",
            ])
            .output()
            .expect("run iptables")
    }

    /// `None` when iptables cannot be used here (not root, not installed).
    fn new(port: u16) -> Option<Blackhole> {
        let usable = std::process::Command::new("iptables").arg("-S").output();
        if !usable.is_ok_and(|o| o.status.success()) {
            return None;
        }
        let added = Self::rule(port, "-I");
        assert!(
            added.status.success(),
            "iptables -I failed: {}",
            String::from_utf8_lossy(&added.stderr)
        );
        Some(Blackhole { port })
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        Self::rule(self.port, "-D");
    }
}

#[tokio::test]
async fn tcp_keepalive_drops_a_half_open_client_under_a_held_connect() {
    let b = Broker::start(&[
        "--timeout",
        "60000",
        "--max-interval",
        "1000",
        "--sweep-interval",
        "100",
        "--tcp-keepalive",
        "1000",
        "--api-key",
        KEY,
    ])
    .await;
    let cid = b.session().await;
    let mut held = b.tcp().await;
    let body = json!([connect_msg("held", &cid)]).to_string();
    held.write_all(&b.http1_request(
        "POST",
        "",
        &[("content-type", "application/json")],
        body.as_bytes(),
    ))
    .await
    .unwrap();
    sleep_ms(300).await;
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(10), held.read(&mut buf)).await;
    assert!(r.is_err(), "the connect was not held: {r:?}");
    let Some(_blackhole) = Blackhole::new(held.local_addr().unwrap().port()) else {
        eprintln!(
            "SKIPPED tcp_keepalive_drops_a_half_open_client_under_a_held_connect: iptables unusable (needs root)"
        );
        return;
    };
    // The client is now silent and unreachable, its socket still "open" on the server: only keepalive
    // probes (after 1 s idle, 3 probes 1 s apart) can tell. Then the held connect is released and the
    // session expires after --max-interval.
    let (s, took) = wait_stats(&b, Duration::from_millis(12_000), |s| s["sessions"] == 0).await;
    assert_eq!(
        s["sessions"], 0,
        "the half-open client's session is still there after {took:?}"
    );
    let took = took.expect("checked above");
    assert!(
        took >= Duration::from_millis(2_000),
        "gone too early ({took:?}): something else closed it"
    );
    let reply = b.connect(&cid).await;
    assert_session_unknown(&reply[0], true);
}
