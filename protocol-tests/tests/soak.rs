//! A bounded churn soak. `HALLEY_SOAK_SECONDS` (default 60) sets the length of the churn; `HALLEY_SOAK_SEED`
//! the seed of its random choices. Long run:
//! `HALLEY_SOAK_SECONDS=600 cargo test --release -p halley-protocol-tests --test soak`.
//!
//! - 20 stable subscribers long-poll `/soak/**` with the ack extension (each connect acknowledges the last
//!   batch received) on raw TCP connections, which the test now and then drops while a connect is held; the
//!   subscriber goes on with the same session on a new connection, acknowledging its last batch.
//! - 50 churners loop: handshake, subscribe `/soak/x`, poll a bit, publish, then disconnect or vanish (drop the
//!   socket in the middle of a held connect).
//! - A publisher sends numbered messages through `/api/publish` at a steady pace.
//!
//! At the end: every message acknowledged by the API (and every acknowledged churner publish) reached every
//! stable subscriber exactly once, API messages in order; once the churners stop and their sessions expire only
//! the stable sessions remain, then none after they disconnect; the broker's RSS after the run is within
//! max(10 %, 2 MiB) of its RSS after a warm-up phase.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use halley_protocol_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Barrier, mpsc};

const KEY: &str = "soak-api-key-0123456789";
const STABLE: usize = 20;
const CHURNERS: usize = 50;
const MAX_INTERVAL: u64 = 2000;
const SWEEP: u64 = 200;
const HOLD: u64 = 2000;
/// Kill order: drop the socket once the connect's answer has arrived, without reading it (any other value: drop
/// it that many ms into the connect, while it is held).
const UNREAD: u64 = u64::MAX;

/// splitmix64: small, seeded, good enough to vary the churn.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

fn json_post(c: &Client, body: &Value) -> Vec<u8> {
    c.http1_request(
        "POST",
        "",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// What one stable subscriber saw.
#[derive(Default)]
struct StableLog {
    /// `n` of every API message received, in order.
    api: Vec<u64>,
    /// `(churner, k)` of every churner message received, in order.
    churn: Vec<(u64, u64)>,
    connects: u64,
    /// Held connects whose socket the test dropped.
    kills: u64,
    /// Connects whose answer had arrived when the test dropped the socket unread.
    unread_kills: u64,
    /// Connect replies never read (batch numbers skipped), whose deliveries came again in a later batch.
    lost_batches: u64,
}

/// A stable subscriber: ack handshake, `/soak/**`, then connects until `stop`, then a last immediate connect
/// and a disconnect.
async fn stable(
    c: Client,
    ready: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    mut kill: mpsc::UnboundedReceiver<u64>,
) -> StableLog {
    let hs = c
        .batch(
            json!([{"id": "hs", "channel": "/meta/handshake", "version": "1.0",
                       "supportedConnectionTypes": ["long-polling"], "ext": {"ack": true}}]),
        )
        .await;
    let r = reply(&hs, "hs");
    assert_eq!(r["successful"], true, "{r}");
    assert_eq!(r["ext"]["ack"], true, "ack extension not granted: {r}");
    let cid = r["clientId"].as_str().unwrap().to_string();
    c.subscribe(&cid, "/soak/**").await;
    ready.wait().await;

    let mut log = StableLog::default();
    let mut last_ack: u64 = 0;
    let mut stream = c.tcp().await;
    let mut pending_kill: Option<u64> = None;
    loop {
        let last = stop.load(Ordering::SeqCst);
        let id = next_id("c");
        let mut msg = connect_msg(id.clone(), &cid);
        merge(&mut msg, json!({"ext": {"ack": last_ack}}));
        if last {
            merge(&mut msg, json!({"advice": {"timeout": 0}}));
        }
        let request = json_post(&c, &json!([msg]));
        if pending_kill.is_none() {
            pending_kill = kill.try_recv().ok();
        }
        if !last && pending_kill == Some(UNREAD) {
            // Wait for the answer to arrive, then drop the socket without reading it: the batch is lost and must
            // come again on the next connect.
            stream.write_all(&request).await.unwrap();
            tokio::time::timeout(Duration::from_millis(HOLD + 3000), stream.readable())
                .await
                .expect("connect not answered within the hold")
                .unwrap();
            stream = c.tcp().await;
            pending_kill = None;
            log.unread_kills += 1;
            continue;
        }
        let delay = pending_kill.unwrap_or(0);
        let resp = tokio::select! {
            biased;
            resp = exchange(&mut stream, &request) => resp,
            () = sleep_ms(delay), if pending_kill.is_some() && !last => {
                // The connect is held (or its answer is on the way): drop the socket, carry on with the same
                // session on a new connection. A connect still unread on the dropped socket is never
                // dispatched (the server sees the socket closed first), so it cannot supersede the next one.
                stream = c.tcp().await;
                pending_kill = None;
                log.kills += 1;
                continue;
            }
        };
        // The connect was answered before the kill: try again on the next one, sooner.
        pending_kill = pending_kill.map(|d| d / 2);
        log.connects += 1;
        let msgs = resp.messages();
        let r = reply(&msgs, &id);
        assert_eq!(r["channel"], "/meta/connect", "{r}");
        assert_eq!(r["successful"], true, "stable {cid}: connect failed: {r}");
        assert!(
            r["ext"].get("halley").is_none(),
            "stable {cid}: deliveries dropped: {r}"
        );
        let batch = r["ext"]["ack"]
            .as_u64()
            .unwrap_or_else(|| panic!("connect reply without ext.ack: {r}"));
        assert!(
            batch > last_ack,
            "batch {batch} after acknowledging {last_ack}: {r}"
        );
        // Every batch between the one acknowledged and this one was answered to a dropped socket.
        log.lost_batches += batch - last_ack - 1;
        last_ack = batch;
        for d in deliveries(&msgs) {
            let ch = d["channel"].as_str().unwrap_or_default();
            assert!(ch.starts_with("/soak/"), "unexpected delivery {d}");
            match d["data"]["src"].as_str() {
                Some("api") => log.api.push(d["data"]["n"].as_u64().unwrap()),
                Some("churn") => log.churn.push((
                    d["data"]["c"].as_u64().unwrap(),
                    d["data"]["k"].as_u64().unwrap(),
                )),
                _ => panic!("unexpected delivery {d}"),
            }
        }
        if last {
            break;
        }
    }
    let bye = c.disconnect(&cid).await;
    assert_eq!(bye.last().unwrap()["successful"], true, "{bye:?}");
    log
}

#[derive(Default)]
struct ChurnLog {
    cycles: u64,
    vanished: u64,
    disconnected: u64,
    /// `k` of every publish acknowledged by the broker.
    published: Vec<u64>,
}

/// One churning client: sessions that live a short while and end properly or vanish.
async fn churner(c: Client, me: u64, seed: u64, stop: Arc<AtomicBool>) -> ChurnLog {
    let mut rng = Rng(seed);
    let mut log = ChurnLog::default();
    let mut k = 0;
    while !stop.load(Ordering::SeqCst) {
        log.cycles += 1;
        let cid = c.handshake().await;
        c.subscribe(&cid, "/soak/x").await;
        let mut stream = c.tcp().await;
        // The first connect is answered at once; then a few short polls.
        for i in 0..rng.range(1, 4) {
            let id = next_id("c");
            let mut msg = connect_msg(id.clone(), &cid);
            if i > 0 {
                merge(&mut msg, json!({"advice": {"timeout": rng.range(50, 600)}}));
            }
            let msgs = exchange(&mut stream, &json_post(&c, &json!([msg])))
                .await
                .messages();
            assert_eq!(reply(&msgs, &id)["successful"], true, "{msgs:?}");
        }
        k += 1;
        let id = next_id("p");
        let msgs = c
            .batch(json!([{"id": id, "channel": "/soak/x", "clientId": cid,
                           "data": {"src": "churn", "c": me, "k": k}}]))
            .await;
        assert_eq!(reply(&msgs, &id)["successful"], true, "{msgs:?}");
        log.published.push(k);
        if rng.coin() {
            let bye = c.disconnect(&cid).await;
            assert_eq!(bye.last().unwrap()["successful"], true, "{bye:?}");
            log.disconnected += 1;
        } else {
            // Vanish: a connect (held unless something is queued), then the socket goes away.
            let request = json_post(&c, &json!([connect_msg(next_id("c"), &cid)]));
            stream.write_all(&request).await.unwrap();
            sleep_ms(rng.range(20, 300)).await;
            log.vanished += 1;
        }
        drop(stream);
        sleep_ms(rng.range(300, 1500)).await;
    }
    log
}

async fn stats(c: &Client) -> Value {
    let r = c.api("GET", "/api/stats", Some(KEY), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

async fn wait_sessions(c: &Client, want: u64, within: Duration) -> (Value, Option<Duration>) {
    let start = Instant::now();
    loop {
        let s = stats(c).await;
        if s["sessions"] == want {
            return (s, Some(start.elapsed()));
        }
        if start.elapsed() > within {
            return (s, None);
        }
        sleep_ms(50).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_soak_delivers_every_acknowledged_message_once_and_in_order() {
    let seconds = env_u64("HALLEY_SOAK_SECONDS", 60).max(10);
    let seed = env_u64("HALLEY_SOAK_SEED", 0x5eed_1e55);
    let warmup = Duration::from_secs((seconds / 6).clamp(5, 60));
    let total = Duration::from_secs(seconds);
    let b = Broker::start(&[
        "--max-interval",
        &MAX_INTERVAL.to_string(),
        "--sweep-interval",
        &SWEEP.to_string(),
        "--timeout",
        &HOLD.to_string(),
        "--api-key",
        KEY,
    ])
    .await;
    let mut rng = Rng(seed);

    // Stable subscribers, all subscribed before anything is published.
    let ready = Arc::new(Barrier::new(STABLE + 1));
    let stop_stable = Arc::new(AtomicBool::new(false));
    let mut kills = Vec::new();
    let mut stables = Vec::new();
    for _ in 0..STABLE {
        let (tx, rx) = mpsc::unbounded_channel();
        kills.push(tx);
        stables.push(tokio::spawn(stable(
            b.client(),
            ready.clone(),
            stop_stable.clone(),
            rx,
        )));
    }
    tokio::time::timeout(Duration::from_secs(10), ready.wait())
        .await
        .expect("stable subscribers not ready within 10 s");

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();

    // The API publisher.
    let publisher = {
        let c = b.client();
        let stop = stop.clone();
        tokio::spawn(async move {
            let channels = ["/soak/x", "/soak/a", "/soak/b/c"];
            let pad = "p".repeat(200);
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let body = json!({"channel": channels[(n % 3) as usize],
                                  "data": {"src": "api", "n": n, "pad": pad}})
                .to_string();
                let r = c.api("POST", "/api/publish", Some(KEY), Some(&body)).await;
                if r.status == 200 {
                    acked.push(n);
                } else {
                    eprintln!("soak: /api/publish of {n} answered {} {}", r.status, r.body);
                    failed.push(n);
                }
                n += 1;
                sleep_ms(25).await;
            }
            (acked, failed)
        })
    };

    let churners: Vec<_> = (0..CHURNERS as u64)
        .map(|me| tokio::spawn(churner(b.client(), me, rng.next(), stop.clone())))
        .collect();

    // Session count sampler.
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let c = b.client();
        let stop = stop.clone();
        let peak = peak.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let s = stats(&c).await;
                peak.fetch_max(s["sessions"].as_u64().unwrap(), Ordering::Relaxed);
                sleep_ms(250).await;
            }
        })
    };

    // Kill a stable subscriber's held connect now and then; measure RSS after the warm-up.
    let mut rss_warm = None;
    let mut kill_orders = 0;
    while start.elapsed() < total {
        sleep_ms(rng.range(500, 1500)).await;
        let victim = rng.range(0, STABLE as u64) as usize;
        let order = if rng.coin() { UNREAD } else { rng.range(0, 40) };
        kills[victim].send(order).unwrap();
        kill_orders += 1;
        if rss_warm.is_none() && start.elapsed() >= warmup {
            rss_warm = Some(b.rss_kib());
        }
    }
    let rss_warm = rss_warm.unwrap();
    let rss_churning = b.rss_kib();

    stop.store(true, Ordering::SeqCst);
    let (acked, failed) = tokio::time::timeout(Duration::from_secs(15), publisher)
        .await
        .expect("publisher did not stop")
        .unwrap();
    let mut churn_logs = Vec::new();
    for h in churners {
        churn_logs.push(
            tokio::time::timeout(Duration::from_secs(15), h)
                .await
                .expect("churner did not stop")
                .unwrap(),
        );
    }
    tokio::time::timeout(Duration::from_secs(15), sampler)
        .await
        .expect("sampler did not stop")
        .unwrap();

    // Vanished churners expire; the stable subscribers, still polling, remain.
    let (s, took) = wait_sessions(
        &b,
        STABLE as u64,
        Duration::from_millis(MAX_INTERVAL + SWEEP + 2500),
    )
    .await;
    let took = took.unwrap_or_else(|| {
        panic!("{STABLE} stable sessions expected after the churn stopped and max-interval + sweep passed: {s}")
    });
    assert_eq!(
        s["subscriptions"], STABLE,
        "only the stable subscriptions remain: {s}"
    );
    let rss_after = b.rss_kib();

    stop_stable.store(true, Ordering::SeqCst);
    let mut logs = Vec::new();
    for h in stables {
        logs.push(
            tokio::time::timeout(Duration::from_secs(15), h)
                .await
                .expect("stable subscriber did not finish")
                .unwrap(),
        );
    }
    let (s, gone) = wait_sessions(&b, 0, Duration::from_millis(1000)).await;
    assert!(
        gone.is_some(),
        "sessions left after the stable subscribers disconnected: {s}"
    );
    assert_eq!(s["subscriptions"], 0, "{s}");

    // Every message the API acknowledged reached every stable subscriber exactly once, in order; so did every
    // acknowledged churner publish (in each churner's order).
    let failed: HashSet<u64> = failed.into_iter().collect();
    let mut churn_expected: Vec<(u64, u64)> = churn_logs
        .iter()
        .enumerate()
        .flat_map(|(c, l)| l.published.iter().map(move |k| (c as u64, *k)))
        .collect();
    churn_expected.sort_unstable();
    for (i, log) in logs.iter().enumerate() {
        let api: Vec<u64> = log
            .api
            .iter()
            .copied()
            .filter(|n| !failed.contains(n))
            .collect();
        if api != acked {
            let seen: HashSet<u64> = api.iter().copied().collect();
            let missing: Vec<u64> = acked
                .iter()
                .copied()
                .filter(|n| !seen.contains(n))
                .take(10)
                .collect();
            let dup = api.len() - seen.len();
            let first_diff = api.iter().zip(&acked).position(|(a, b)| a != b);
            panic!(
                "stable {i}: received {} API messages, {} acknowledged; missing (first 10) {missing:?}, \
                 {dup} duplicates, first difference at index {first_diff:?}",
                api.len(),
                acked.len()
            );
        }
        let mut churn = log.churn.clone();
        for c in 0..CHURNERS as u64 {
            let ks: Vec<u64> = churn.iter().filter(|m| m.0 == c).map(|m| m.1).collect();
            assert!(
                ks.windows(2).all(|w| w[0] < w[1]),
                "stable {i}: churner {c}'s messages out of order or repeated: {ks:?}"
            );
        }
        churn.sort_unstable();
        assert_eq!(
            churn.len(),
            churn_expected.len(),
            "stable {i}: churner messages received vs acknowledged"
        );
        assert!(
            churn == churn_expected,
            "stable {i}: churner messages differ"
        );
    }

    let kills_done: u64 = logs.iter().map(|l| l.kills).sum();
    let unread: u64 = logs.iter().map(|l| l.unread_kills).sum();
    let lost: u64 = logs.iter().map(|l| l.lost_batches).sum();
    let connects: u64 = logs.iter().map(|l| l.connects).sum();
    let cycles: u64 = churn_logs.iter().map(|l| l.cycles).sum();
    let vanished: u64 = churn_logs.iter().map(|l| l.vanished).sum();
    let disconnected: u64 = churn_logs.iter().map(|l| l.disconnected).sum();
    let tolerance = (rss_warm / 10).max(2048);
    eprintln!(
        "soak ({seconds} s, seed {seed:#x}): {} API messages acknowledged ({} refused), {} churner publishes, \
         each received by {STABLE} stable subscribers exactly once; {connects} stable connects, {kills_done} \
         held connects killed and {unread} answered ones dropped unread ({kill_orders} ordered), {lost} \
         answered batches lost with the socket and redelivered; {cycles} churn sessions ({disconnected} disconnected, {vanished} vanished); sessions peak \
         {}; churn sessions gone {took:?} after the churn stopped; RSS {rss_warm} KiB after the {warmup:?} warm-up, \
         {rss_churning} KiB at the end of the churn, {rss_after} KiB after the run (tolerance {tolerance} KiB)",
        acked.len(),
        failed.len(),
        churn_expected.len(),
        peak.load(Ordering::Relaxed),
    );
    assert!(kills_done > 0, "no held connect was killed");
    assert!(unread > 0, "no answered connect was dropped unread");
    assert!(
        lost >= unread,
        "{unread} answers dropped unread but only {lost} batch numbers skipped"
    );
    assert!(
        rss_after <= rss_warm + tolerance,
        "RSS grew from {rss_warm} KiB after warm-up to {rss_after} KiB after the run (tolerance {tolerance} KiB)"
    );
}
