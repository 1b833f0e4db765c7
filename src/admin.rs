//! The read-only admin page: a snapshot of the broker for `/api/admin/snapshot`, the
//! sample history its charts draw, and the page itself with its assets embedded.
//!
//! The page polls the JSON snapshot every second with the admin key (see
//! ARCHITECTURE.md for why polling rather than Bayeux channels). One task samples the
//! metrics once a second into a bounded ring; requests only read it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use crate::broker::Broker;
use crate::metrics::{LATENCY_BOUNDS, Metrics, Totals};

/// Samples kept: one a second for ten minutes.
pub const HISTORY_LEN: usize = 600;
/// Time between two samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Channels listed under "busiest".
pub const BUSIEST: usize = 10;

/// One channel and how many sessions subscribe to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelLoad {
    /// The channel (or pattern) name.
    pub channel: String,
    /// Subscribed sessions.
    pub subscribers: usize,
}

/// What the admin page needs from the broker beyond [`Broker::stats`]. The broker
/// implements it; the snapshot only calls it once a second per open page.
pub trait BrokerReport: Send + Sync + 'static {
    /// At most `limit` channels with the most subscribers, most first.
    fn busiest_channels(&self, limit: usize) -> Vec<ChannelLoad>;
    /// The other nodes of a cluster as they last reported themselves; empty on one node.
    fn peers(&self) -> Vec<NodeSnapshot> {
        Vec::new()
    }
}

impl BrokerReport for Broker {
    fn busiest_channels(&self, limit: usize) -> Vec<ChannelLoad> {
        Broker::busiest_channels(self, limit)
            .into_iter()
            .map(|(channel, subscribers)| ChannelLoad {
                channel,
                subscribers,
            })
            .collect()
    }
}

/// One second of traffic, as the charts plot it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: u64,
    /// Publishes per second.
    pub publish_rate: f64,
    /// Copies queued to subscribers per second.
    pub delivery_rate: f64,
    /// 99th percentile of publish→delivery latency in that second, ms (upper bucket
    /// bound); `None` when nothing was delivered.
    pub p99_ms: Option<f64>,
    /// Drops per second.
    pub drop_rate: f64,
    /// Refusals per second.
    pub refusal_rate: f64,
}

/// The last [`HISTORY_LEN`] samples. The lock is held only to push or copy.
#[derive(Debug)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    started: Instant,
}

impl Default for History {
    fn default() -> Self {
        History {
            samples: Mutex::new(VecDeque::with_capacity(HISTORY_LEN)),
            started: Instant::now(),
        }
    }
}

impl History {
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == HISTORY_LEN {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    fn series(&self) -> Series {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let mut series = Series::default();
        for s in samples.iter() {
            series.t.push(s.t);
            series.publish_rate.push(s.publish_rate);
            series.delivery_rate.push(s.delivery_rate);
            series.p99_latency_ms.push(s.p99_ms);
            series.drop_rate.push(s.drop_rate);
            series.refusal_rate.push(s.refusal_rate);
        }
        series
    }
}

/// The history as columns, the shape uPlot plots directly.
#[derive(Debug, Default, Serialize)]
pub struct Series {
    /// Unix seconds.
    pub t: Vec<u64>,
    /// Publishes per second.
    pub publish_rate: Vec<f64>,
    /// Deliveries per second.
    pub delivery_rate: Vec<f64>,
    /// p99 latency, ms; `null` for seconds without deliveries.
    pub p99_latency_ms: Vec<Option<f64>>,
    /// Drops per second.
    pub drop_rate: Vec<f64>,
    /// Refusals per second.
    pub refusal_rate: Vec<f64>,
}

/// The 99th percentile of the observations between two cumulative readings of the
/// latency histogram, in ms, as the upper bound of its bucket.
fn p99_ms(before: &[u64], now: &[u64]) -> Option<f64> {
    let deltas: Vec<u64> = now
        .iter()
        .zip(before.iter().chain(std::iter::repeat(&0)))
        .map(|(n, b)| n.saturating_sub(*b))
        .collect();
    let total: u64 = deltas.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = total - total / 100;
    let mut seen = 0;
    for (i, d) in deltas.iter().enumerate() {
        seen += d;
        if seen >= rank {
            let bound = LATENCY_BOUNDS
                .get(i)
                .or(LATENCY_BOUNDS.last())
                .copied()
                .unwrap_or(0.0);
            return Some(bound * 1000.0);
        }
    }
    None
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Starts the one task that samples `metrics` (and folds the broker's totals into them)
/// every [`SAMPLE_EVERY`] into `history`. It holds the broker weakly and ends with it.
pub fn spawn_sampler(
    broker: &Broker,
    metrics: Arc<Metrics>,
    history: Arc<History>,
) -> tokio::task::JoinHandle<()> {
    let broker = broker.downgrade();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(Instant, Totals)> = None;
        loop {
            tick.tick().await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            metrics.observe_broker_totals(&broker.stats());
            drop(broker);
            let now = metrics.totals();
            let at = Instant::now();
            if let Some((then, before)) = &last {
                let secs = at.duration_since(*then).as_secs_f64().max(0.001);
                let rate = |n: u64, b: u64| n.saturating_sub(b) as f64 / secs;
                history.push(Sample {
                    t: unix_now(),
                    publish_rate: rate(now.publishes, before.publishes),
                    delivery_rate: rate(now.deliveries, before.deliveries),
                    p99_ms: p99_ms(&before.latency_buckets, &now.latency_buckets),
                    drop_rate: rate(now.drops, before.drops),
                    refusal_rate: rate(now.refusals, before.refusals),
                });
            }
            last = Some((at, now));
        }
    })
}

/// One node as the admin page shows it.
#[derive(Debug, Serialize)]
pub struct NodeSnapshot {
    /// The node's name (host name).
    pub id: String,
    /// Halley version.
    pub version: &'static str,
    /// Seconds since the server started.
    pub uptime_secs: u64,
    /// Live sessions.
    pub sessions: usize,
    /// Live subscriptions.
    pub subscriptions: usize,
    /// Live sessions by transport, as the broker reports them to the metrics.
    pub sessions_by_transport: Vec<(&'static str, i64)>,
    /// Held connects now.
    pub held_connects: i64,
    /// Open WebSockets now.
    pub open_websockets: i64,
    /// The busiest channels; empty until the broker reports them.
    pub busiest_channels: Vec<ChannelLoad>,
    /// Totals since start: published, delivered, dropped, refused.
    pub totals: SnapshotTotals,
    /// Drops by reason since start.
    pub drops_by_reason: Vec<(&'static str, u64)>,
    /// Refusals by reason since start.
    pub refusals_by_reason: Vec<(&'static str, u64)>,
    /// The last minutes, one sample a second.
    pub history: Series,
}

/// Totals since start for the snapshot.
#[derive(Debug, Serialize)]
pub struct SnapshotTotals {
    /// Messages accepted for routing.
    pub published: u64,
    /// Copies queued to subscribers.
    pub delivered: u64,
    /// Copies dropped.
    pub dropped: u64,
    /// Requests and connections refused.
    pub refused: u64,
}

/// What `GET /api/admin/snapshot` answers: every node, this one first.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The nodes of the cluster.
    pub nodes: Vec<NodeSnapshot>,
}

fn node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "halley".into())
}

/// The snapshot of `broker` right now.
pub fn snapshot(broker: &Broker, metrics: &Metrics, history: &History) -> Snapshot {
    let stats = broker.stats();
    metrics.observe_broker_totals(&stats);
    let totals = metrics.totals();
    let mut nodes = vec![NodeSnapshot {
        id: node_name(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: history.started.elapsed().as_secs(),
        sessions: stats.sessions,
        subscriptions: stats.subscriptions,
        sessions_by_transport: totals.sessions_by_transport,
        held_connects: totals.held_connects,
        open_websockets: totals.open_websockets,
        busiest_channels: BrokerReport::busiest_channels(broker, BUSIEST),
        totals: SnapshotTotals {
            published: stats.published,
            delivered: stats.delivered,
            dropped: totals.drops,
            refused: totals.refusals,
        },
        drops_by_reason: totals.drops_by_reason,
        refusals_by_reason: totals.refusals_by_reason,
        history: history.series(),
    }];
    nodes.extend(broker.peers());
    Snapshot { nodes }
}

const PAGE: &str = include_str!("admin/index.html");
const SCRIPT: &str = include_str!("admin/admin.js");
const UPLOT_JS: &str = include_str!("admin/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("admin/vendor/uPlot.min.css");

/// `/admin` and its assets. The page holds no data: everything comes from the snapshot
/// endpoint, which checks the key.
pub fn page_routes() -> Router {
    fn asset(content_type: &'static str, body: &'static str) -> axum::routing::MethodRouter<()> {
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response()
        })
    }
    Router::new()
        .route("/admin", asset("text/html; charset=utf-8", PAGE))
        .route(
            "/admin/admin.js",
            asset("text/javascript; charset=utf-8", SCRIPT),
        )
        .route(
            "/admin/uPlot.iife.min.js",
            asset("text/javascript; charset=utf-8", UPLOT_JS),
        )
        .route(
            "/admin/uPlot.min.css",
            asset("text/css; charset=utf-8", UPLOT_CSS),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_bucket_of_the_99th_percentile() {
        let n = LATENCY_BOUNDS.len() + 1;
        let mut before = vec![0; n];
        let mut now = vec![0; n];
        assert_eq!(p99_ms(&before, &now), None);
        now[2] = 99; // ≤ 0.5 ms
        now[6] = 1; // ≤ 10 ms
        assert_eq!(p99_ms(&before, &now), Some(0.5));
        now[6] = 2;
        assert_eq!(p99_ms(&before, &now), Some(10.0));
        before.clone_from(&now);
        now[0] += 5;
        assert_eq!(p99_ms(&before, &now), Some(0.1));
    }

    #[test]
    fn history_is_bounded() {
        let history = History::default();
        for t in 0..(HISTORY_LEN as u64 + 5) {
            history.push(Sample {
                t,
                publish_rate: 0.0,
                delivery_rate: 0.0,
                p99_ms: None,
                drop_rate: 0.0,
                refusal_rate: 0.0,
            });
        }
        let series = history.series();
        assert_eq!(series.t.len(), HISTORY_LEN);
        assert_eq!(series.t[0], 5);
    }
}
