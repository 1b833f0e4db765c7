//! The four workloads. Each returns one JSON object.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::client::{Client, Counters, source_ip};
use crate::common::{
    Probe, Rng, Seen, now_us, parse_payload, payload, percentiles, poll, round3, shared_target,
    wait_for,
};
use crate::ws::{Publishes, WsClient};
use crate::{Common, Transport};

fn probe(common: &Common) -> Probe {
    Probe {
        pid: common.server_pid,
        stats: common.stats_url.as_ref().map(|url| {
            (
                crate::client::Target::parse(url).expect("--stats-url"),
                common.stats_key.clone(),
            )
        }),
    }
}

fn kib(bytes: Option<u64>) -> Value {
    bytes.map_or(Value::Null, |b| json!(b / 1024))
}

// ---------------------------------------------------------------------------------------
// fanout

#[derive(Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers on the channel
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Publishes per second; 0 = as fast as acks allow (bounded by --max-lag)
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Most publishes in one request (a rate publisher that falls behind batches)
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Ack-paced mode: pause while subscribers are on average this many messages behind
    #[arg(long, default_value_t = 100)]
    max_lag: u64,
    /// Seconds before the measurement window
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds of the measurement window
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds to wait after the last publish for deliveries still on their way
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Payload bytes
    #[arg(long, default_value_t = 50)]
    size: usize,
    /// Joins in flight at once while setting up
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

struct SubStats {
    unique: u64,
    dups: u64,
    out_of_order: u64,
    latencies: Vec<u32>,
}

pub async fn fanout(args: FanoutArgs) -> Value {
    let target = shared_target(&args.common.url);
    let counters = Arc::new(Counters::default());
    let delivered = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let channel = "/bench/fanout".to_string();
    let setup_start = Instant::now();

    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let mut client = Client::new(
            target.clone(),
            source_ip(i, args.common.per_ip),
            counters.clone(),
        );
        let (delivered, ready, failed, gate) = (
            delivered.clone(),
            ready.clone(),
            failed.clone(),
            gate.clone(),
        );
        let mut stop = stop_rx.clone();
        let channels = vec![channel.clone()];
        let ws = (args.common.transport == Transport::Websocket).then(|| {
            WsClient::new(
                target.clone(),
                source_ip(i, args.common.per_ip),
                counters.clone(),
            )
        });
        tasks.push(tokio::spawn(async move {
            let mut st = SubStats {
                unique: 0,
                dups: 0,
                out_of_order: 0,
                latencies: Vec::new(),
            };
            let mut seen = Seen::default();
            let mut highest: Option<u64> = None;
            let mut on_delivery = |_: &str, data: &serde_json::value::RawValue| {
                let now = now_us();
                delivered.fetch_add(1, Ordering::Relaxed);
                let Some(p) = parse_payload(data) else { return };
                if !seen.insert(p.s) {
                    st.dups += 1;
                    return;
                }
                st.unique += 1;
                if highest.is_some_and(|h| p.s < h) {
                    st.out_of_order += 1;
                }
                highest = Some(highest.map_or(p.s, |h| h.max(p.s)));
                st.latencies
                    .push(now.saturating_sub(p.t).min(u32::MAX as u64) as u32);
            };
            if let Some(mut client) = ws {
                {
                    let _permit = gate.acquire().await;
                    if !client.join(&channels, 20, &mut on_delivery).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return st;
                    }
                }
                ready.fetch_add(1, Ordering::Relaxed);
                client
                    .run(&channels, &mut stop, &mut on_delivery, None)
                    .await;
                return st;
            }
            {
                let _permit = gate.acquire().await;
                let mut ok = client.join(&channels, 20).await;
                if ok {
                    ok = match client.connect(true).await {
                        Ok(bytes) => client.read(&bytes, &mut on_delivery).ok,
                        Err(_) => false,
                    };
                }
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return st;
                }
            }
            ready.fetch_add(1, Ordering::Relaxed);
            poll(&mut client, &channels, &mut stop, &mut on_delivery).await;
            st
        }));
    }
    let n = args.subscribers;
    wait_for(
        || ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= n,
        Duration::from_secs(300),
    )
    .await;
    let setup_s = setup_start.elapsed().as_secs_f64();
    let subscribed = ready.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await; // let the connects park

    let s = subscribed.max(1) as u64;
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    // The window is sampled by the clock, not by the publish loop: one publish to 10,000
    // subscribers can take longer than the whole window to be acknowledged.
    let acked_total = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn({
        let (delivered, acked_total) = (delivered.clone(), acked_total.clone());
        async move {
            let sample = || {
                (
                    Instant::now(),
                    delivered.load(Ordering::Relaxed),
                    acked_total.load(Ordering::Relaxed),
                )
            };
            tokio::time::sleep_until(window_start.into()).await;
            let first = sample();
            tokio::time::sleep_until(window_end.into()).await;
            (first, sample())
        }
    });

    // The publisher: its own session, polling on a second connection like any client
    // (over WebSocket: one socket, its connect kept in flight between publishes). It runs
    // on a thread of its own, so that its acks are read as they arrive rather than after
    // the subscribers' frames queued on the same runtime: ack-paced, its rate is what the
    // server sustains, not how long the load generator keeps it waiting.
    let (published_tx, published_rx) = tokio::sync::oneshot::channel();
    let publisher_thread = std::thread::spawn({
        let (target, counters, delivered) = (target.clone(), counters.clone(), delivered.clone());
        let (acked_total, channel, stop_rx) =
            (acked_total.clone(), channel.clone(), stop_rx.clone());
        let (transport, rate, batch, max_lag, size) = (
            args.common.transport,
            args.rate,
            args.batch,
            args.max_lag,
            args.size,
        );
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async move {
                let mut publisher = Client::new(target.clone(), source_ip(0, 1), counters.clone());
                let mut ws_publisher = None;
                let mut poller_task = None;
                if transport == Transport::Websocket {
                    let mut p = WsClient::new(target.clone(), source_ip(0, 1), counters.clone());
                    p.join(&[], 20, &mut |_, _| {}).await;
                    ws_publisher = Some(p);
                } else {
                    publisher.join(&[], 20).await;
                    let mut poller = publisher.sibling();
                    let mut pstop = stop_rx.clone();
                    poller_task = Some(tokio::spawn(async move {
                        if poller.connect(true).await.is_ok() {
                            poll(&mut poller, &[], &mut pstop, &mut |_, _| {}).await;
                        }
                    }));
                }
                let (mut seq, mut acked) = (0u64, 0u64);
                let mut lag_waits = 0u64;
                while Instant::now() < window_end {
                    let mut count = batch as u64;
                    if rate > 0.0 {
                        let due = (start.elapsed().as_secs_f64() * rate) as u64;
                        if due <= seq {
                            tokio::time::sleep(Duration::from_micros(
                                (1e6 / rate).min(1000.0) as u64
                            ))
                            .await;
                            continue;
                        }
                        count = count.min(due - seq);
                    } else if seq * s > delivered.load(Ordering::Relaxed) + max_lag * s {
                        lag_waits += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let t = now_us();
                    let batch: Vec<(String, String)> = (0..count)
                        .map(|k| (channel.clone(), payload(seq + k, t, size)))
                        .collect();
                    seq += count;
                    let n = match ws_publisher.as_mut() {
                        Some(p) => p.publish(&batch, &mut |_, _| {}).await,
                        None => publisher.publish(&batch, &mut |_, _| {}).await,
                    } as u64;
                    acked += n;
                    acked_total.fetch_add(n, Ordering::Relaxed);
                }
                let _ = published_tx.send((seq, acked, lag_waits));
                // The long-polling publisher's poller ends with the run.
                if let Some(task) = poller_task {
                    let _ = task.await;
                }
            });
        }
    });
    let (seq, acked, lag_waits) = published_rx.await.unwrap_or((0, 0, 0));
    let ((t0, d0, acked_at_start), (t1, d1, acked_at_end)) = match sampler.await {
        Ok(samples) => samples,
        Err(_) => {
            let now = (Instant::now(), 0, 0);
            (now, now)
        }
    };
    let published = seq;
    let expected = acked * s;
    let drained = wait_for(
        || delivered.load(Ordering::Relaxed) >= expected,
        Duration::from_secs_f64(args.drain),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    let mut totals = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    for task in tasks {
        if let Ok(st) = task.await {
            totals.0 += st.unique;
            totals.1 += st.dups;
            totals.2 += st.out_of_order;
            latencies.extend(st.latencies);
        }
    }
    let _ = tokio::task::spawn_blocking(move || publisher_thread.join()).await;
    let secs = (t1 - t0).as_secs_f64().max(1e-9);
    json!({
        "workload": "fanout",
        "label": args.common.label,
        "subscribers": args.subscribers,
        "subscribed": subscribed,
        "setup_s": round3(setup_s),
        "mode": if args.rate > 0.0 { format!("rate {}", args.rate) } else { format!("ack-paced, max lag {}", args.max_lag) },
        "window_s": round3(secs),
        "deliveries_per_s": round3((d1 - d0) as f64 / secs),
        "publishes_per_s": round3((acked_at_end - acked_at_start) as f64 / secs),
        "published": published,
        "acked": acked,
        "expected_deliveries": expected,
        "received_unique": totals.0,
        "lost": expected.saturating_sub(totals.0),
        "duplicated": totals.1,
        "out_of_order": totals.2,
        "drained": drained,
        "lag_waits": lag_waits,
        "latency": percentiles(latencies),
        "errors": counters.json(),
        "error_total": counters.errors(),
    })
}

// ---------------------------------------------------------------------------------------
// rooms

#[derive(Args, Debug)]
pub struct RoomsArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Rooms each client is in
    #[arg(long, default_value_t = 10)]
    rooms_per_client: usize,
    /// Publishes per second offered (all clients together)
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Message data bytes
    #[arg(long, default_value_t = 50)]
    size: usize,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What one rooms client received.
#[derive(Default)]
struct Receipts {
    seen: Seen,
    unique: u64,
    dups: u64,
    latencies: Vec<u32>,
}

impl Receipts {
    fn record(&mut self, data: &serde_json::value::RawValue) {
        let now = now_us();
        let Some(p) = parse_payload(data) else { return };
        if !self.seen.insert(p.s) {
            self.dups += 1;
            return;
        }
        self.unique += 1;
        self.latencies
            .push(now.saturating_sub(p.t).min(u32::MAX as u64) as u32);
    }
}

pub async fn rooms(args: RoomsArgs) -> Value {
    let target = shared_target(&args.common.url);
    let counters = Arc::new(Counters::default());
    let delivered = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let mut rng = Rng::new(args.seed);
    let mut members = vec![0u64; args.rooms];
    let mut memberships = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let mut mine: Vec<usize> = Vec::new();
        while mine.len() < args.rooms_per_client.min(args.rooms) {
            let r = rng.below(args.rooms as u64) as usize;
            if !mine.contains(&r) {
                mine.push(r);
            }
        }
        for &r in &mine {
            members[r] += 1;
        }
        memberships.push(mine);
    }
    let setup_start = Instant::now();
    let mut tasks = Vec::new();
    let mut senders = Vec::new();
    for (i, mine) in memberships.iter().enumerate() {
        let channels: Vec<String> = mine.iter().map(|r| format!("/bench/room/{r}")).collect();
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, String)>();
        senders.push(tx);
        let mut client = Client::new(
            target.clone(),
            source_ip(i, args.common.per_ip),
            counters.clone(),
        );
        let (delivered, acked, ready, failed, gate) = (
            delivered.clone(),
            acked.clone(),
            ready.clone(),
            failed.clone(),
            gate.clone(),
        );
        let mut stop = stop_rx.clone();
        let pstop = stop_rx.clone();
        let ws = (args.common.transport == Transport::Websocket).then(|| {
            WsClient::new(
                target.clone(),
                source_ip(i, args.common.per_ip),
                counters.clone(),
            )
        });
        tasks.push(tokio::spawn(async move {
            // Shared with the publishing connection: a server may deliver on the reply to
            // any request of the session (CometD does, and so does Halley), so deliveries
            // riding on publish replies count like those on connect replies.
            let receipts = Arc::new(std::sync::Mutex::new(Receipts::default()));
            let (mine, theirs) = (receipts.clone(), delivered.clone());
            let mut on_delivery = |_: &str, data: &serde_json::value::RawValue| {
                delivered.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut receipts) = mine.lock() {
                    receipts.record(data);
                }
            };
            if let Some(mut client) = ws {
                // One socket: publishes go out on it while the connect is held.
                {
                    let _permit = gate.acquire().await;
                    if !client.join(&channels, 20, &mut on_delivery).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return Receipts::default();
                    }
                }
                ready.fetch_add(1, Ordering::Relaxed);
                let publishes = Publishes {
                    queue: &mut rx,
                    acked: &acked,
                };
                client
                    .run(&channels, &mut stop, &mut on_delivery, Some(publishes))
                    .await;
                return mine
                    .lock()
                    .map(|mut receipts| std::mem::take(&mut *receipts))
                    .unwrap_or_default();
            }
            {
                let _permit = gate.acquire().await;
                let mut ok = client.join(&channels, 20).await;
                if ok {
                    ok = match client.connect(true).await {
                        Ok(bytes) => client.read(&bytes, &mut on_delivery).ok,
                        Err(_) => false,
                    };
                }
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return Receipts::default();
                }
            }
            // The browser's second connection: publishes, batching whatever queued up.
            let mut sender = client.sibling();
            let publisher = tokio::spawn(async move {
                let stop = pstop;
                while let Some(first) = rx.recv().await {
                    if *stop.borrow() {
                        break;
                    }
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let n = sender
                        .publish(&batch, &mut |_, data| {
                            theirs.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut receipts) = receipts.lock() {
                                receipts.record(data);
                            }
                        })
                        .await;
                    acked.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
            ready.fetch_add(1, Ordering::Relaxed);
            poll(&mut client, &channels, &mut stop, &mut on_delivery).await;
            publisher.abort();
            // The aborted publisher may still hold its handle: take the receipts out.
            mine.lock()
                .map(|mut receipts| std::mem::take(&mut *receipts))
                .unwrap_or_default()
        }));
    }
    let n = args.clients;
    wait_for(
        || ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= n,
        Duration::from_secs(300),
    )
    .await;
    let setup_s = setup_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let start = Instant::now();
    let start_us = now_us();
    let window_start = start + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    let mut snap_start = None;
    let snap_end;
    let mut seq = 0u64;
    let mut expected = 0u64;
    let mut offered_in_window = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if snap_start.is_none() && now >= window_start {
            snap_start = Some((
                now,
                delivered.load(Ordering::Relaxed),
                acked.load(Ordering::Relaxed),
                seq,
            ));
        }
        if now >= window_end {
            snap_end = Some((
                now,
                delivered.load(Ordering::Relaxed),
                acked.load(Ordering::Relaxed),
                seq,
            ));
            break;
        }
        let due = (start.elapsed().as_secs_f64() * args.rate) as u64;
        while seq < due {
            let c = rng.below(args.clients as u64) as usize;
            let mine = &memberships[c];
            let room = mine[rng.below(mine.len() as u64) as usize];
            // Stamped with the time it was due, so loadgen lateness counts as latency.
            let t = start_us + (seq as f64 / args.rate * 1e6) as u64;
            let _ = senders[c].send((format!("/bench/room/{room}"), payload(seq, t, args.size)));
            expected += members[room];
            if snap_start.is_some() {
                offered_in_window += 1;
            }
            seq += 1;
        }
    }
    let published = seq;
    let drained = wait_for(
        || delivered.load(Ordering::Relaxed) >= expected,
        Duration::from_secs_f64(args.drain),
    )
    .await;
    let _ = stop_tx.send(true);
    drop(senders);
    let (mut unique, mut dups, mut latencies) = (0u64, 0u64, Vec::new());
    for task in tasks {
        if let Ok(receipts) = task.await {
            unique += receipts.unique;
            dups += receipts.dups;
            latencies.extend(receipts.latencies);
        }
    }
    let (t0, d0, a0, _) = snap_start.expect("window");
    let (t1, d1, a1, _) = snap_end.expect("window");
    let secs = (t1 - t0).as_secs_f64();
    json!({
        "workload": "rooms",
        "label": args.common.label,
        "clients": args.clients,
        "joined": ready.load(Ordering::Relaxed),
        "setup_s": round3(setup_s),
        "rooms": args.rooms,
        "rooms_per_client": args.rooms_per_client,
        "offered_per_s": round3(offered_in_window as f64 / secs),
        "acked_per_s": round3((a1 - a0) as f64 / secs),
        "deliveries_per_s": round3((d1 - d0) as f64 / secs),
        "published": published,
        "acked": acked.load(Ordering::Relaxed),
        "expected_deliveries": expected,
        "received_unique": unique,
        "lost": expected.saturating_sub(unique),
        "duplicated": dups,
        "drained": drained,
        "latency": percentiles(latencies),
        "errors": counters.json(),
        "error_total": counters.errors(),
    })
}

// ---------------------------------------------------------------------------------------
// idle

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Channels the clients spread over
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Joins in flight at once
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Seconds to hold every client parked after all are established
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
}

pub async fn idle(args: IdleArgs, nofile: u64) -> Value {
    let target = shared_target(&args.common.url);
    let probe = probe(&args.common);
    let counters = Arc::new(Counters::default());
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let rss_before = probe.rss();
    let sessions_before = probe.sessions().await;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let mut client = Client::new(
            target.clone(),
            source_ip(i, args.common.per_ip),
            counters.clone(),
        );
        let channels = vec![format!("/bench/idle/{}", i % args.channels.max(1))];
        let (ready, failed, gate) = (ready.clone(), failed.clone(), gate.clone());
        let mut stop = stop_rx.clone();
        let ws = (args.common.transport == Transport::Websocket).then(|| {
            WsClient::new(
                target.clone(),
                source_ip(i, args.common.per_ip),
                counters.clone(),
            )
        });
        let eventsource = args.common.transport == Transport::Eventsource;
        tasks.push(tokio::spawn(async move {
            if let Some(mut client) = ws {
                {
                    let _permit = gate.acquire().await;
                    if !client.join(&channels, 5, &mut |_, _| {}).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                ready.fetch_add(1, Ordering::Relaxed);
                client.run(&channels, &mut stop, &mut |_, _| {}, None).await;
                return;
            }
            if eventsource {
                let stream = {
                    let _permit = gate.acquire().await;
                    match crate::client::open_event_stream(&mut client, &channels).await {
                        Some(stream) => stream,
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                };
                ready.fetch_add(1, Ordering::Relaxed);
                crate::client::hold_event_stream(stream, &mut stop).await;
                return;
            }
            {
                let _permit = gate.acquire().await;
                let ok = client.join(&channels, 5).await
                    && match client.connect(true).await {
                        Ok(bytes) => client.read(&bytes, &mut |_, _| {}).ok,
                        Err(_) => false,
                    };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            ready.fetch_add(1, Ordering::Relaxed);
            poll(&mut client, &channels, &mut stop, &mut |_, _| {}).await;
        }));
    }
    let n = args.clients;
    let complete = wait_for(
        || ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= n,
        Duration::from_secs(600),
    )
    .await;
    let establish_s = start.elapsed().as_secs_f64();
    let parked = ready.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await; // the last connects park
    let rss_parked = probe.rss();
    let sessions_parked = probe.sessions().await;
    let mut rss_max = rss_parked;
    let hold_end = Instant::now() + Duration::from_secs_f64(args.hold);
    while Instant::now() < hold_end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_max = rss_max.max(probe.rss());
    }
    let errors = counters.json();
    let error_total = counters.errors();
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let per_client = match (rss_before, rss_parked) {
        (Some(a), Some(b)) if parked > 0 => {
            json!(round3(b.saturating_sub(a) as f64 / parked as f64 / 1024.0))
        }
        _ => Value::Null,
    };
    json!({
        "workload": "idle",
        "label": args.common.label,
        "clients": args.clients,
        "parked": parked,
        "failed": failed.load(Ordering::Relaxed),
        "complete": complete,
        "establish_s": round3(establish_s),
        "establish_per_s": round3(parked as f64 / establish_s),
        "rss_before_kib": kib(rss_before),
        "rss_parked_kib": kib(rss_parked),
        "rss_max_kib": kib(rss_max),
        "rss_per_client_kib": per_client,
        "sessions_before": sessions_before,
        "sessions_parked": sessions_parked,
        "loadgen_nofile": nofile,
        "errors": errors,
        "error_total": error_total,
    })
}

// ---------------------------------------------------------------------------------------
// churn

#[derive(Args, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// New clients per second
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of churn
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds of churn before the baseline (then --settle), to warm the server up
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Longest a client stays parked before leaving (ms)
    #[arg(long, default_value_t = 2000)]
    hold_ms: u64,
    /// Share of clients that send /meta/disconnect; the rest just vanish
    #[arg(long, default_value_t = 0.5)]
    leave: f64,
    /// Seconds to wait after churn for expiry (≥ the server's session expiry + sweep)
    #[arg(long, default_value_t = 15.0)]
    settle: f64,
    #[arg(long, default_value_t = 10)]
    channels: usize,
}

async fn churn_wave(
    args: &ChurnArgs,
    secs: f64,
    first: usize,
    counters: &Arc<Counters>,
    probe: &Probe,
) -> (usize, u64, Option<u64>, Option<u64>, usize, usize) {
    let target = shared_target(&args.common.url);
    let start = Instant::now();
    let mut spawned = 0usize;
    let left = Arc::new(AtomicUsize::new(0));
    let vanished = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(first as u64 + 7);
    let mut tasks = Vec::new();
    let (mut peak_sessions, mut peak_rss) = (None::<u64>, probe.rss());
    let mut next_sample = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while start.elapsed().as_secs_f64() < secs {
        tick.tick().await;
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            peak_rss = peak_rss.max(probe.rss());
            let p = probe.clone();
            if let Some(s) = p.sessions().await {
                peak_sessions = Some(peak_sessions.map_or(s, |m| m.max(s)));
            }
        }
        let due = (start.elapsed().as_secs_f64() * args.rate) as usize;
        while spawned < due {
            let i = first + spawned;
            spawned += 1;
            let mut client = Client::new(
                target.clone(),
                source_ip(i % 100_000, args.common.per_ip),
                counters.clone(),
            );
            let channels = vec![format!("/bench/churn/{}", i % args.channels.max(1))];
            let hold = Duration::from_millis(rng.below(args.hold_ms.max(1)));
            let leave = (rng.below(1000) as f64) < args.leave * 1000.0;
            let (left, vanished) = (left.clone(), vanished.clone());
            tasks.push(tokio::spawn(async move {
                if !client.join(&channels, 3).await {
                    return;
                }
                if client.connect(true).await.is_err() {
                    return;
                }
                // Park a connect, then leave politely or vanish mid-poll.
                let _ = tokio::time::timeout(hold, client.connect(false)).await;
                if leave {
                    let mut other = client.sibling();
                    other.disconnect().await;
                    left.fetch_add(1, Ordering::Relaxed);
                } else {
                    vanished.fetch_add(1, Ordering::Relaxed);
                }
                client.close();
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    (
        spawned,
        0,
        peak_sessions,
        peak_rss,
        left.load(Ordering::Relaxed),
        vanished.load(Ordering::Relaxed),
    )
}

pub async fn churn(args: ChurnArgs) -> Value {
    let probe = probe(&args.common);
    let counters = Arc::new(Counters::default());
    let rss_start = probe.rss();
    let sessions_start = probe.sessions().await;
    if args.warmup > 0.0 {
        churn_wave(&args, args.warmup, 0, &counters, &probe).await;
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    }
    let rss_base = probe.rss();
    let sessions_base = probe.sessions().await;
    let churn_start = Instant::now();
    let (clients, _, peak_sessions, peak_rss, left, vanished) =
        churn_wave(&args, args.duration, 100_000, &counters, &probe).await;
    let churn_s = churn_start.elapsed().as_secs_f64();
    let sessions_end = probe.sessions().await;
    let rss_end = probe.rss();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_after = probe.rss();
    let sessions_after = probe.sessions().await;
    let ratio = match (rss_base, rss_after) {
        (Some(a), Some(b)) if a > 0 => json!(round3(b as f64 / a as f64)),
        _ => Value::Null,
    };
    json!({
        "workload": "churn",
        "label": args.common.label,
        "clients": clients,
        "left": left,
        "vanished": vanished,
        "churn_s": round3(churn_s),
        "settle_s": args.settle,
        "rss_start_kib": kib(rss_start),
        "rss_baseline_kib": kib(rss_base),
        "rss_peak_kib": kib(peak_rss),
        "rss_end_of_churn_kib": kib(rss_end),
        "rss_after_kib": kib(rss_after),
        "rss_after_over_baseline": ratio,
        "sessions_start": sessions_start,
        "sessions_baseline": sessions_base,
        "sessions_peak": peak_sessions,
        "sessions_end_of_churn": sessions_end,
        "sessions_after": sessions_after,
        "back_to_baseline": sessions_after.is_some() && sessions_after == sessions_base,
        "errors": counters.json(),
        "error_total": counters.errors(),
    })
}
