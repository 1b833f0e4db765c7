//! Micro-benchmarks of the broker's hot paths:
//! - `tree/match`: finding the subscribers of one publish in a tree of 100,000 subscriptions;
//! - `route/publish_10k`: routing one publish to 10,000 sessions (serialize once, enqueue
//!   a shared copy per session, wake held connects) through the public `Broker` API;
//! - `codec/*`: parsing a 100-message batch and serializing 100 deliveries as one response;
//! - `metrics/*`: what the broker's metrics calls cost per event, and one scrape.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use halley::broker::SubscriptionTree;
use halley::protocol::{ChannelName, Delivery, Message, decode_batch};
use halley::{Broker, Config};
use serde_json::json;

/// 100,000 subscriptions: 90,000 exact on 10,000 `/stock/<sym>` channels (9 each),
/// 9,000 on `/stock/*`-style wildcards across 100 exchanges, 1,000 `/**`-style.
fn tree() -> SubscriptionTree<u64> {
    let mut tree = SubscriptionTree::default();
    let mut key = 0u64;
    let mut add = |tree: &mut SubscriptionTree<u64>, pattern: &str| {
        let name = ChannelName::parse(pattern).expect("pattern");
        tree.insert(&name, key, key);
        key += 1;
    };
    for i in 0..90_000u64 {
        add(&mut tree, &format!("/stock/{}/{}", i % 100, i % 10_000));
    }
    for i in 0..9_000u64 {
        add(&mut tree, &format!("/stock/{}/*", i % 100));
    }
    for i in 0..1_000u64 {
        add(&mut tree, &format!("/stock/{}/**", i % 100));
    }
    assert_eq!(tree.len(), 100_000);
    tree
}

fn tree_match(c: &mut Criterion) {
    let tree = tree();
    let mut group = c.benchmark_group("tree");
    let hit = ChannelName::parse("/stock/42/4242").unwrap();
    let miss = ChannelName::parse("/weather/paris/now").unwrap();
    // 9 exact (i ≡ 4242 mod 10,000 and ≡ 42 mod 100) + 90 `*` + 10 `**` = 109 matches
    assert_eq!(tree.matches(&hit).iter().count(), 109);
    // Matching takes the sets (under the tree's lock); walking them is the fan-out's.
    group.bench_function("match_100k_subs_109_hits", |b| {
        b.iter(|| black_box(tree.matches(black_box(&hit)).iter().count()))
    });
    group.bench_function("match_100k_subs_no_hit", |b| {
        b.iter(|| black_box(tree.matches(black_box(&miss)).iter().count()))
    });
    group.finish();
}

fn route(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let broker = Broker::new(Config::default(), &["long-polling"]);
    // Each queue fills to max_queue (1000) and then drops its oldest: the steady state of
    // a subscriber that is not polling, which costs the same enqueue plus one drop.
    let sessions: Vec<_> = (0..10_000)
        .map(|_| {
            let s = broker.open_local_session(None);
            s.subscribe("/fanout/channel").unwrap();
            s
        })
        .collect();
    let data = json!({"s": 1, "t": 123456789, "p": "xxxxxxxxxxxxxxxxxxxxxxxx"});
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("publish_to_10k_sessions", |b| {
        b.iter(|| {
            let n = broker.publish("/fanout/channel", black_box(&data)).unwrap();
            debug_assert_eq!(n, 10_000);
            black_box(n)
        })
    });
    group.finish();
    drop(sessions);
}

fn codec(c: &mut Criterion) {
    let batch: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            json!({"id": i.to_string(), "channel": "/chat/room/42", "clientId": "3f0c8a1b2c3d4e5f60718293a4b5c6d7",
                   "data": {"s": i, "t": 1_700_000_000_000u64 + i, "p": "xxxxxxxxxxxxxxxxxxxxxxxx"}})
        })
        .collect();
    let text = serde_json::to_vec(&batch).unwrap();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(100));
    group.bench_function("decode_batch_100", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(100),
            |out: &mut Vec<Message>| decode_batch(black_box(&text), out).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let mut messages = Vec::new();
    decode_batch(&text, &mut messages).unwrap();
    group.bench_function("encode_100_deliveries", |b| {
        b.iter(|| {
            // What a connect reply carrying 100 deliveries costs: one serialization per
            // delivery, then the array.
            let mut out = Vec::with_capacity(100 * 128);
            out.push(b'[');
            for (i, m) in messages.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&Delivery::of("/chat/room/42", m).encode());
            }
            out.push(b']');
            black_box(out)
        })
    });
    group.finish();
}

/// The per-event cost the metrics add to a publish (counter, deliveries, latency and queue
/// histograms), from two threads at once as on a loaded server, and the cost of one scrape.
fn metrics(c: &mut Criterion) {
    use halley::metrics::{Metrics, Outcome};
    let metrics = std::sync::Arc::new(Metrics::new());
    let mut group = c.benchmark_group("metrics");
    group.bench_function("publish_event", |b| {
        b.iter(|| {
            metrics.publish(black_box(Outcome::Ok));
            metrics.delivered(black_box(1000));
            metrics.delivery_latency(black_box(0.0042));
            metrics.queue_depth(black_box(3));
        })
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rival = {
        let (metrics, stop) = (metrics.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                metrics.publish(Outcome::Ok);
                metrics.delivery_latency(0.001);
            }
        })
    };
    group.bench_function("publish_event_contended", |b| {
        b.iter(|| {
            metrics.publish(black_box(Outcome::Ok));
            metrics.delivered(black_box(1000));
            metrics.delivery_latency(black_box(0.0042));
            metrics.queue_depth(black_box(3));
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = rival.join();
    group.bench_function("scrape", |b| {
        b.iter(|| black_box(metrics.encode().unwrap().len()))
    });
    group.finish();
}

criterion_group!(benches, tree_match, route, codec, metrics);
criterion_main!(benches);
