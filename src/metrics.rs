//! Prometheus metrics: every counter, gauge and histogram an operator scrapes from
//! `/metrics`, with one small method per event.
//!
//! The hot path only touches atomics in fixed arrays indexed by small label enums: no
//! allocation, no lock, no formatting per event. `prometheus-client` encodes them at
//! scrape time through one [`Collector`], so the exposition is the crate's, not ours.
//! Labels are closed enums; a channel name or clientId never becomes a label.
//!
//! One [`Metrics`] belongs to one broker (an `Arc` made by the server and shared by the
//! router, the connection loop and, once it is wired, the broker), so tests that run
//! several brokers in one process never see each other's counts.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Declares a label enum with its Prometheus value for every variant and the list of
/// variants, so series are pre-created and indexed by `as usize`.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every variant, in declaration order (the order of its series).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

label_enum! {
    /// The transport a session or connection uses (`transport` label).
    #[derive(Default)]
    Transport {
        /// HTTP long-polling.
        #[default]
        LongPolling => "long-polling",
        /// JSONP callback-polling.
        CallbackPolling => "callback-polling",
        /// WebSocket.
        WebSocket => "websocket",
        /// An EventSource stream (Faye), with its connects over HTTP.
        EventSource => "eventsource",
        /// An in-process session (services, the demo's presence).
        Local => "local",
    }
}

label_enum! {
    /// How a handshake, connect, subscribe or publish ended (`outcome` label).
    Outcome {
        /// Accepted.
        Ok => "ok",
        /// The security policy or a channel rule said no.
        Denied => "denied",
        /// A malformed or invalid message (bad channel, missing field).
        Invalid => "invalid",
        /// The clientId names no live session.
        UnknownClient => "unknown_client",
        /// Refused for load (session limit, handshake rate, shutting down).
        Busy => "busy",
        /// A held connect taken over by a newer one of the same session.
        Superseded => "superseded",
    }
}

label_enum! {
    /// Why a queued delivery was thrown away (`reason` label).
    DropReason {
        /// The session's queue was full and the oldest delivery went (drop-oldest).
        QueueFull => "queue_full",
        /// The queue overflowed under the disconnect policy; the session and its
        /// queue went.
        Overflow => "overflow",
        /// The session expired or disconnected with deliveries still queued.
        SessionGone => "session_gone",
    }
}

label_enum! {
    /// Why a request or connection was refused (`reason` label; `class` groups them).
    Refusal {
        /// The open-connection limit (`max_connections`).
        Connections => "connections",
        /// The session limit (`max_sessions`).
        Sessions => "sessions",
        /// The handshake rate limit.
        HandshakeRate => "handshake_rate",
        /// The per-browser long-poll limit.
        BrowserConnects => "browser_connects",
        /// A request body over `max_body_bytes`.
        BodyTooLarge => "body_too_large",
        /// Request headers over the size limit.
        HeadersTooLarge => "headers_too_large",
        /// Handshake credentials refused (token, JWT).
        Credentials => "credentials",
        /// A missing or unknown API key.
        ApiKey => "api_key",
        /// A known API key without the right.
        ApiRight => "api_right",
        /// A channel rule forbids the subscribe or publish.
        ChannelRule => "channel_rule",
        /// A request that is not a Bayeux or API request (bad JSON, bad framing).
        BadRequest => "bad_request",
    }
}

impl Refusal {
    /// The group the issue asks for: limits, auth or bad input.
    pub const fn class(self) -> &'static str {
        match self {
            Refusal::Connections
            | Refusal::Sessions
            | Refusal::HandshakeRate
            | Refusal::BrowserConnects
            | Refusal::BodyTooLarge
            | Refusal::HeadersTooLarge => "limit",
            Refusal::Credentials | Refusal::ApiKey | Refusal::ApiRight | Refusal::ChannelRule => {
                "auth"
            }
            Refusal::BadRequest => "bad_input",
        }
    }
}

/// The HTTP statuses Halley answers with, each its own series; anything else is
/// counted under `other` so a strange status cannot add series.
const STATUSES: &[u16] = &[
    101, 200, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 411, 413, 414, 415, 429, 431, 500,
    501, 503,
];
const STATUS_NAMES: &[&str] = &[
    "101", "200", "204", "301", "302", "304", "400", "401", "403", "404", "405", "408", "411",
    "413", "414", "415", "429", "431", "500", "501", "503", "other",
];

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len())
}

/// HTTP answers by status, counted by the HTTP/1 connection loop where it writes them.
/// The loop and the transports' early refusals carry no handle to a [`Metrics`]
/// (one would grow every connection and every parked request), so these two sets of
/// counters are process wide and every [`Metrics`] of the process reports them. A
/// process serves one broker, so they describe it; in-process tests drive routers
/// directly and never touch them.
static HTTP: [AtomicU64; STATUS_NAMES.len()] = [const { AtomicU64::new(0) }; STATUS_NAMES.len()];

/// Refusals counted where no [`Metrics`] is at hand (see [`HTTP`]).
static PROCESS_REFUSALS: [AtomicU64; Refusal::ALL.len()] =
    [const { AtomicU64::new(0) }; Refusal::ALL.len()];

/// Counts an HTTP answer with `status` (process wide, see [`HTTP`]).
pub fn http_response(status: u16) {
    HTTP[status_index(status)].fetch_add(1, Ordering::Relaxed);
}

/// Counts a refusal made where no [`Metrics`] is at hand: the HTTP/1 loop before
/// routing, a transport before the broker (process wide, see [`HTTP`]).
pub fn refused_early(reason: Refusal) {
    PROCESS_REFUSALS[reason as usize].fetch_add(1, Ordering::Relaxed);
}

/// The refusal an HTTP status given before routing stands for: 413 and 431 are
/// limits, anything else bad input.
pub fn refusal_for_status(status: u16) -> Refusal {
    match status {
        413 => Refusal::BodyTooLarge,
        431 => Refusal::HeadersTooLarge,
        _ => Refusal::BadRequest,
    }
}

fn refusals(values: &Values, reason: Refusal) -> u64 {
    values.refusals[reason as usize].load(Ordering::Relaxed)
        + PROCESS_REFUSALS[reason as usize].load(Ordering::Relaxed)
}

/// Upper bounds of the queue-depth histogram (messages).
const QUEUE_BOUNDS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];
/// Upper bounds of the latency histograms (seconds): 100 µs to 30 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// A histogram of atomics: `prometheus-client`'s own takes a mutex per observation.
/// The sum is kept in integer `1/scale` units so it needs no compare-and-swap loop.
struct AtomicHistogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    scale: f64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64], scale: f64) -> Self {
        AtomicHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    fn observe(&self, value: f64) {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let at = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
        // `as` saturates: an absurd value cannot wrap the sum.
        self.sum
            .fetch_add((value * self.scale) as u64, Ordering::Relaxed);
    }

    /// Per-bucket counts, `+Inf` last.
    fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        // The encoder takes per-bucket counts and accumulates them itself.
        let counts = self.counts();
        let total = counts.iter().sum();
        let buckets: Vec<(f64, u64)> = counts
            .into_iter()
            .enumerate()
            .map(|(i, count)| (self.bounds.get(i).copied().unwrap_or(f64::INFINITY), count))
            .collect();
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, total, &buckets, None)
    }
}

/// The counters, gauges and histograms; shared by [`Metrics`] and its collector.
struct Values {
    sessions: AtomicI64,
    subscriptions: AtomicI64,
    sessions_by_transport: [AtomicI64; Transport::ALL.len()],
    held_connects: AtomicI64,
    open_websockets: AtomicI64,
    /// Adaptive coalescing's current spacing, µs.
    coalescing_us: AtomicU64,
    handshakes: [AtomicU64; Outcome::ALL.len()],
    connects: [AtomicU64; Outcome::ALL.len()],
    subscribes: [AtomicU64; Outcome::ALL.len()],
    publishes: [AtomicU64; Outcome::ALL.len()],
    deliveries: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    refusals: [AtomicU64; Refusal::ALL.len()],
    queue_depth: AtomicHistogram,
    delivery_latency: AtomicHistogram,
    engine_rtt: AtomicHistogram,
    engine_reconnects: AtomicU64,
    /// Requests relayed to the node serving their session: answered, failed.
    relays: [AtomicU64; 2],
}

/// Every metric of one broker. Cheap to call from any thread: each method is one or two
/// relaxed atomic operations.
pub struct Metrics {
    values: Arc<Values>,
    registry: Registry,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn zeroes<const N: usize>() -> [AtomicU64; N] {
    [const { AtomicU64::new(0) }; N]
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let values = Arc::new(Values {
            sessions: AtomicI64::new(0),
            subscriptions: AtomicI64::new(0),
            sessions_by_transport: [const { AtomicI64::new(0) }; Transport::ALL.len()],
            held_connects: AtomicI64::new(0),
            open_websockets: AtomicI64::new(0),
            coalescing_us: AtomicU64::new(0),
            handshakes: zeroes(),
            connects: zeroes(),
            subscribes: zeroes(),
            publishes: zeroes(),
            deliveries: AtomicU64::new(0),
            drops: zeroes(),
            refusals: zeroes(),
            queue_depth: AtomicHistogram::new(QUEUE_BOUNDS, 1.0),
            delivery_latency: AtomicHistogram::new(LATENCY_BOUNDS, 1e9),
            engine_rtt: AtomicHistogram::new(LATENCY_BOUNDS, 1e9),
            engine_reconnects: AtomicU64::new(0),
            relays: zeroes(),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(values.clone())));
        Metrics { values, registry }
    }

    /// A handshake ended with `outcome`.
    pub fn handshake(&self, outcome: Outcome) {
        bump(&self.values.handshakes[outcome as usize], 1);
    }

    /// A `/meta/connect` was answered with `outcome`.
    pub fn connect(&self, outcome: Outcome) {
        bump(&self.values.connects[outcome as usize], 1);
    }

    /// A `/meta/subscribe` was answered with `outcome`.
    pub fn subscribe(&self, outcome: Outcome) {
        bump(&self.values.subscribes[outcome as usize], 1);
    }

    /// A publish (Bayeux or API) ended with `outcome`.
    pub fn publish(&self, outcome: Outcome) {
        bump(&self.values.publishes[outcome as usize], 1);
    }

    /// `n` copies of a message were queued to subscribers.
    pub fn delivered(&self, n: u64) {
        bump(&self.values.deliveries, n);
    }

    /// `n` queued copies were thrown away for `reason`.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        bump(&self.values.drops[reason as usize], n);
    }

    /// A session queue held `depth` messages when it was drained into a reply.
    pub fn queue_depth(&self, depth: usize) {
        self.values.queue_depth.observe(depth as f64);
    }

    /// A message reached a reply `secs` after it was published.
    pub fn delivery_latency(&self, secs: f64) {
        self.values.delivery_latency.observe(secs);
    }

    /// A request or connection was refused for `reason`.
    pub fn refused(&self, reason: Refusal) {
        bump(&self.values.refusals[reason as usize], 1);
    }

    /// A session was opened over `transport`.
    pub fn session_opened(&self, transport: Transport) {
        self.values.sessions_by_transport[transport as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A session opened over `transport` is gone.
    pub fn session_closed(&self, transport: Transport) {
        self.values.sessions_by_transport[transport as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// A `/meta/connect` is now held (parked) waiting for messages.
    pub fn connect_held(&self) {
        self.values.held_connects.fetch_add(1, Ordering::Relaxed);
    }

    /// A held connect was answered or dropped.
    pub fn connect_released(&self) {
        self.values.held_connects.fetch_sub(1, Ordering::Relaxed);
    }

    /// A WebSocket was upgraded.
    pub fn websocket_opened(&self) {
        self.values.open_websockets.fetch_add(1, Ordering::Relaxed);
    }

    /// A WebSocket closed.
    pub fn websocket_closed(&self) {
        self.values.open_websockets.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adaptive coalescing changed how far apart a busy session's replies are: whether it
    /// engages is otherwise invisible from outside.
    pub fn coalescing_interval(&self, interval: std::time::Duration) {
        let us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        self.values.coalescing_us.store(us, Ordering::Relaxed);
    }

    /// One round trip to the cluster engine (Redis) took `secs`.
    pub fn engine_rtt(&self, secs: f64) {
        self.values.engine_rtt.observe(secs);
    }

    /// The cluster engine's connection was re-established.
    pub fn engine_reconnect(&self) {
        bump(&self.values.engine_reconnects, 1);
    }

    /// A request was relayed to the node serving its session, and `answered` there (or
    /// not: the client was told to retry).
    pub fn relayed(&self, answered: bool) {
        bump(&self.values.relays[usize::from(!answered)], 1);
    }

    /// Sets the gauges the broker's own sizes give ([`crate::broker::Stats`]): live
    /// sessions and subscriptions. Called by the sampler and at each scrape; every other
    /// figure the broker counts as it happens.
    pub fn observe_broker_totals(&self, stats: &crate::broker::Stats) {
        let v = &self.values;
        v.sessions.store(clamp(stats.sessions), Ordering::Relaxed);
        v.subscriptions
            .store(clamp(stats.subscriptions), Ordering::Relaxed);
    }

    /// Totals for the admin page's charts, read without any lock.
    pub fn totals(&self) -> Totals {
        let v = &self.values;
        let sum = |a: &[AtomicU64]| a.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
        Totals {
            publishes: v.publishes[Outcome::Ok as usize].load(Ordering::Relaxed),
            deliveries: v.deliveries.load(Ordering::Relaxed),
            drops: sum(&v.drops),
            refusals: Refusal::ALL.iter().map(|&r| refusals(v, r)).sum(),
            latency_buckets: v.delivery_latency.counts(),
            sessions_by_transport: Transport::ALL
                .iter()
                .map(|&t| {
                    (
                        t.as_str(),
                        v.sessions_by_transport[t as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            held_connects: v.held_connects.load(Ordering::Relaxed),
            open_websockets: v.open_websockets.load(Ordering::Relaxed),
            drops_by_reason: DropReason::ALL
                .iter()
                .map(|&r| (r.as_str(), v.drops[r as usize].load(Ordering::Relaxed)))
                .collect(),
            refusals_by_reason: Refusal::ALL
                .iter()
                .map(|&r| (r.as_str(), refusals(v, r)))
                .collect(),
        }
    }

    /// The Prometheus text exposition (format 0.0.4), as `GET /metrics` serves it.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(8192);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The `Content-Type` of [`Metrics::encode`]'s text.
    pub const CONTENT_TYPE: &'static str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
}

fn clamp(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Cumulative totals read from [`Metrics`] for the admin page.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Accepted publishes.
    pub publishes: u64,
    /// Copies queued to subscribers.
    pub deliveries: u64,
    /// Copies dropped, every reason.
    pub drops: u64,
    /// Refusals, every reason.
    pub refusals: u64,
    /// Per-bucket publish→delivery latency counts ([`LATENCY_BOUNDS`], then `+Inf`).
    pub latency_buckets: Vec<u64>,
    /// Live sessions per transport, as the broker reported them.
    pub sessions_by_transport: Vec<(&'static str, i64)>,
    /// Held connects now.
    pub held_connects: i64,
    /// Open WebSockets now.
    pub open_websockets: i64,
    /// Drops per reason.
    pub drops_by_reason: Vec<(&'static str, u64)>,
    /// Refusals per reason.
    pub refusals_by_reason: Vec<(&'static str, u64)>,
}

/// The registry's view of [`Values`]: encodes every series at scrape time.
struct Exposition(Arc<Values>);

impl fmt::Debug for Exposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Exposition")
    }
}

/// One labelled series set, encoded as a family.
fn counters<L: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    all: &[L],
    text: impl Fn(L) -> &'static str,
    values: &[AtomicU64],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (&l, value) in all.iter().zip(values) {
        let labels = [(label, text(l))];
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value.load(Ordering::Relaxed), None)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let v = &*self.0;
        let load = |a: &AtomicI64| a.load(Ordering::Relaxed);
        e.encode_descriptor(
            "halley_build",
            "Build information: the version of this Halley binary.",
            None,
            MetricType::Info,
        )?
        .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        gauge(
            &mut e,
            "halley_sessions",
            "Live Bayeux sessions, every transport.",
            load(&v.sessions),
        )?;
        gauge(
            &mut e,
            "halley_subscriptions",
            "Live (session, channel pattern) subscriptions.",
            load(&v.subscriptions),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "halley_sessions_by_transport",
                "Live sessions by the transport they were opened over.",
                None,
                MetricType::Gauge,
            )?;
            for &t in Transport::ALL {
                metric
                    .encode_family(&[("transport", t.as_str())])?
                    .encode_gauge(&load(&v.sessions_by_transport[t as usize]))?;
            }
        }
        gauge(
            &mut e,
            "halley_held_connects",
            "/meta/connect requests held open waiting for messages.",
            load(&v.held_connects),
        )?;
        gauge(
            &mut e,
            "halley_open_websockets",
            "Open WebSocket connections.",
            load(&v.open_websockets),
        )?;
        e.encode_descriptor(
            "halley_coalescing_interval_seconds",
            "Adaptive coalescing's spacing of a busy session's replies now; 0 while the server is not saturated.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(v.coalescing_us.load(Ordering::Relaxed) as f64 / 1e6))?;
        for (name, help, values) in [
            ("halley_handshakes", "Handshakes by outcome.", &v.handshakes),
            (
                "halley_connects",
                "/meta/connect replies by outcome.",
                &v.connects,
            ),
            (
                "halley_subscribes",
                "/meta/subscribe replies by outcome.",
                &v.subscribes,
            ),
            (
                "halley_publishes",
                "Publishes (Bayeux and HTTP API) by outcome.",
                &v.publishes,
            ),
        ] {
            counters(
                &mut e,
                name,
                help,
                "outcome",
                Outcome::ALL,
                Outcome::as_str,
                values,
            )?;
        }
        e.encode_descriptor(
            "halley_deliveries",
            "Message copies queued to subscribed sessions.",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&v.deliveries.load(Ordering::Relaxed), None)?;
        counters(
            &mut e,
            "halley_drops",
            "Queued message copies thrown away, by reason.",
            "reason",
            DropReason::ALL,
            DropReason::as_str,
            &v.drops,
        )?;
        {
            let mut metric = e.encode_descriptor(
                "halley_refusals",
                "Requests and connections refused, by class (limit, auth, bad_input) and reason.",
                None,
                MetricType::Counter,
            )?;
            for &r in Refusal::ALL {
                metric
                    .encode_family(&[("class", r.class()), ("reason", r.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&refusals(v, r), None)?;
            }
        }
        {
            let mut metric = e.encode_descriptor(
                "halley_http_responses",
                "HTTP responses by status code.",
                None,
                MetricType::Counter,
            )?;
            for (i, code) in STATUS_NAMES.iter().enumerate() {
                let n = HTTP[i].load(Ordering::Relaxed);
                metric
                    .encode_family(&[("code", *code)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        v.queue_depth.encode(e.encode_descriptor(
            "halley_queue_depth",
            "Messages in a session queue when it is drained into a reply.",
            None,
            MetricType::Histogram,
        )?)?;
        v.delivery_latency.encode(e.encode_descriptor(
            "halley_delivery_latency_seconds",
            "Time from a publish to the reply that carries it to a subscriber.",
            None,
            MetricType::Histogram,
        )?)?;
        v.engine_rtt.encode(e.encode_descriptor(
            "halley_engine_rtt_seconds",
            "Round-trip time of cluster engine (Redis) commands.",
            None,
            MetricType::Histogram,
        )?)?;
        e.encode_descriptor(
            "halley_engine_reconnects",
            "Times the cluster engine connection was re-established.",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&v.engine_reconnects.load(Ordering::Relaxed), None)?;
        counters(
            &mut e,
            "halley_relays",
            "Requests relayed to the cluster node serving their session, by outcome.",
            "outcome",
            &[true, false],
            |answered| if answered { "answered" } else { "failed" },
            &v.relays,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_show_in_the_exposition() {
        let m = Metrics::new();
        m.handshake(Outcome::Ok);
        m.handshake(Outcome::Ok);
        m.publish(Outcome::Denied);
        m.refused(Refusal::ApiKey);
        http_response(200);
        http_response(299);
        m.delivery_latency(0.003);
        m.delivery_latency(100.0);
        m.queue_depth(7);
        m.session_opened(Transport::LongPolling);
        m.coalescing_interval(std::time::Duration::from_millis(15));
        let text = m.encode().expect("encodes");
        for line in [
            "halley_handshakes_total{outcome=\"ok\"} 2",
            "halley_publishes_total{outcome=\"denied\"} 1",
            "halley_refusals_total{class=\"auth\",reason=\"api_key\"} 1",
            "halley_http_responses_total{code=\"200\"}",
            "halley_http_responses_total{code=\"other\"}",
            "halley_delivery_latency_seconds_bucket{le=\"0.005\"} 1",
            "halley_delivery_latency_seconds_bucket{le=\"+Inf\"} 2",
            "halley_delivery_latency_seconds_count 2",
            "halley_queue_depth_bucket{le=\"10\"} 1",
            "halley_sessions_by_transport{transport=\"long-polling\"} 1",
            "halley_coalescing_interval_seconds 0.015",
            "halley_build_info{version=",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn metrics_are_per_instance() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.publish(Outcome::Ok);
        assert_eq!(b.totals().publishes, 0);
    }
}
