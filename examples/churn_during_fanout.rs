//! Measures how long subscribes and unsubscribes take while publishes fan out to a large
//! audience: the cost subscription churn pays for the fan-out's hold on the subscription
//! tree. Uses only the public library API, so the same file runs against older builds.
//!
//! `cargo run --release --example churn_during_fanout -- [SUBSCRIBERS] [SECONDS]`
//! (defaults 10000 and 5). Prints one JSON line: publishes/s, and the subscribe +
//! unsubscribe round's p50, p99 and max in microseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use halley::{Broker, Config};
use serde_json::json;

fn main() {
    let mut args = std::env::args().skip(1);
    let subscribers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let config = Config {
            max_queue: 16,
            ..Config::default()
        };
        let broker = Broker::new(config, &["long-polling"]);
        let audience: Vec<_> = (0..subscribers)
            .map(|_| {
                let session = broker.open_local_session(None);
                session.subscribe("/big").expect("subscribe");
                session
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let publisher = {
            let (broker, stop, published) = (broker.clone(), stop.clone(), published.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = broker.publish("/big", &json!(1));
                    published.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let churner = broker.open_local_session(None);
        let mut rounds = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds) {
            let round = Instant::now();
            churner.subscribe("/small/room").expect("subscribe");
            churner.unsubscribe("/small/room").expect("unsubscribe");
            rounds.push(round.elapsed().as_micros() as u64);
            std::thread::sleep(Duration::from_micros(200));
        }
        stop.store(true, Ordering::Relaxed);
        let _ = publisher.join();
        rounds.sort_unstable();
        let at = |q: f64| rounds[((rounds.len() - 1) as f64 * q) as usize];
        println!(
            "{}",
            json!({
                "subscribers": subscribers,
                "publishes_per_s": published.load(Ordering::Relaxed) / seconds,
                "rounds": rounds.len(),
                "churn_us_p50": at(0.5),
                "churn_us_p99": at(0.99),
                "churn_us_max": rounds.last(),
            })
        );
        drop(audience);
    });
}
