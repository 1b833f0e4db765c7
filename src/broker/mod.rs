//! The message router: sessions, subscriptions, outboxes, expiry and delivery.
//!
//! The broker knows nothing of HTTP. A transport decodes a request into a batch of
//! [`Message`]s and calls [`Broker::handle`] with a [`RequestContext`]; the path of one
//! published message then reads top to bottom through the files of this module:
//!
//! 1. [`Broker::handle`] (here) runs the incoming hooks and dispatches each message;
//! 2. `routing.rs` checks the channel and the policy, runs the outgoing hooks, serializes
//!    the delivery once, hands it to the engine for other nodes and fans it out;
//! 3. `outbox.rs` queues the shared bytes per session and wakes the session's reader;
//! 4. `connect.rs` answers the held connect with the queue (or the transport drains it);
//! 5. the transport writes the [`ReplyBatch`] as its reply.
//!
//! `handshake.rs` creates sessions, `subscription.rs` keeps the subscription tree,
//! `lifecycle.rs` removes them (disconnect, expiry, shutdown).
//!
//! Locks are plain mutexes held for microseconds and never across an await. The lock
//! order is: session state, then the sessions map, then the subscription tree, then the
//! browser table.

mod batch;
mod browser;
mod cluster;
mod coalescing;
mod connect;
mod extensions;
mod handshake;
mod lifecycle;
mod local;
mod outbox;
mod policy;
mod routing;
mod service;
mod session;
mod subscription;
mod tree;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use bytes::Bytes;
use tokio::time::Instant;

use cluster::InFlight;
pub use cluster::{HandOver, MAX_RELAY_HOPS};
pub use lifecycle::ExtendError;
pub use local::LocalSession;
pub use policy::{
    AllowAll, HandshakeRequest, HandshakeVerdict, MessageHook, SecurityPolicy, SessionInfo,
};
pub use service::{ServiceCall, ServiceChannelError, ServiceHandler, ServiceReply, echo};
pub use tree::{Change, Matches, SubscriberKey, SubscriptionTree};

use crate::config::Config;
use crate::engine::{Engine, MemoryEngine};
use crate::metrics::Metrics;
use crate::protocol::{self, BayeuxError, Message, Reply, epoch_ms};
pub(crate) use connect::{PushConnect, PushWake};
use session::Session;

const HANDSHAKE: &str = "/meta/handshake";
const CONNECT: &str = "/meta/connect";
const SUBSCRIBE: &str = "/meta/subscribe";
const UNSUBSCRIBE: &str = "/meta/unsubscribe";
const DISCONNECT: &str = "/meta/disconnect";

/// What a transport knows about the request that a batch came in.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The `BAYEUX_BROWSER` cookie of the request, or the one the transport is about to set.
    pub browser_id: Option<String>,
    /// HTTP/2 and later: many requests share one connection, so the per-browser
    /// long-poll limit does not apply.
    pub multiplexed: bool,
    /// The transport takes deliveries only on connect replies (callback-polling).
    pub connect_only: bool,
    /// The transport the request came over, for the sessions-by-transport metric.
    pub transport: crate::metrics::Transport,
}

/// The answer to one request.
#[derive(Debug)]
pub enum Outcome {
    /// Messages to send back, in order, as one JSON array.
    Reply(ReplyBatch),
    /// A newer connect of the same session took over this held one; the transport fails
    /// the request (HTTP 500, BAYEUX.md 2.3).
    Superseded,
}

/// The messages of one reply: deliveries and replies, each already serialized.
#[derive(Debug, Default)]
pub struct ReplyBatch {
    /// Serialized messages in the order they go on the wire. Never empty.
    pub messages: Vec<Bytes>,
    /// Whether a handshake succeeded in this request (the transport then sets the cookie).
    pub handshake_succeeded: bool,
}

impl ReplyBatch {
    /// A reply of one message.
    fn single(message: Bytes) -> ReplyBatch {
        ReplyBatch {
            messages: vec![message],
            handshake_succeeded: false,
        }
    }
}

/// Counters for operators.
#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

/// A snapshot of the broker's size and traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Live sessions.
    pub sessions: usize,
    /// (session, pattern) subscriptions.
    pub subscriptions: usize,
    /// Messages accepted for routing since start.
    pub published: u64,
    /// Copies queued to sessions since start.
    pub delivered: u64,
    /// Copies dropped by the queue overflow policy since start.
    pub dropped: u64,
}

/// Why a session was removed; also decides the advice its held connect gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The client sent `/meta/disconnect`.
    Disconnected,
    /// No connect for interval + maxInterval.
    Expired,
    /// The server (an operator or the application) disconnected it.
    Kicked,
    /// Its queue overflowed under the `disconnect` policy.
    Overflow,
    /// The security policy bound it to an expiry (a JWT's) that passed unrefreshed.
    TokenExpired,
    /// Another node of the cluster serves it now: not an end, so no `Closed` event.
    Moved,
}

/// Something that happened to a session, for listeners registered with
/// [`Broker::on_session_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent<'a> {
    /// A handshake created the session.
    Opened {
        /// The new session's id.
        client_id: &'a str,
    },
    /// The session subscribed to a broadcast pattern it did not hold.
    Subscribed {
        /// The session's id.
        client_id: &'a str,
        /// The pattern, as the client sent it.
        channel: &'a str,
    },
    /// The session dropped one of its subscriptions (expiry and disconnect drop them all
    /// without this event; `Closed` says so).
    Unsubscribed {
        /// The session's id.
        client_id: &'a str,
        /// The pattern.
        channel: &'a str,
    },
    /// The session is gone for good.
    Closed {
        /// The session's id.
        client_id: &'a str,
        /// Why it was removed.
        reason: Removal,
    },
}

type SessionListener = Arc<dyn Fn(&SessionEvent<'_>) + Send + Sync>;

/// Where a session handed over from here went (the node run), and when a request last
/// followed it there (ms on the broker's clock).
type MovedTo = (Box<str>, u64);

/// A session ended during a fan-out, with the subscriptions its removal must clear.
type PendingRemoval = (Arc<Session>, std::collections::HashSet<Box<str>>);

struct Shared {
    config: Config,
    /// This node's id in a cluster; publishes carry it so nothing loops back.
    node_id: Box<str>,
    /// Carries publishes to and from other nodes.
    engine: Arc<dyn Engine>,
    /// The engine brings this node's own publishes back to it ([`Engine::publish`]).
    engine_loops_back: bool,
    /// The number of the last publish the engine brought here (0 when the engine does not
    /// number publishes): where a new ack session's history starts.
    engine_seq: AtomicU64,
    /// What operators scrape: every outcome the broker decides is counted here.
    metrics: Arc<Metrics>,
    /// Transport names for the handshake reply: only the ones that really work.
    connection_types: Vec<&'static str>,
    /// Sessions by clientId.
    sessions: RwLock<HashMap<Box<str>, Arc<Session>>>,
    tree: RwLock<SubscriptionTree<Arc<Session>>>,
    services: RwLock<HashMap<Box<str>, Arc<dyn ServiceHandler>>>,
    listeners: RwLock<Vec<SessionListener>>,
    policy: RwLock<Arc<dyn SecurityPolicy>>,
    hooks: RwLock<Vec<Arc<dyn MessageHook>>>,
    /// Held connects per browser id, for the per-browser long-poll limit.
    browsers: Mutex<HashMap<Box<str>, u32>>,
    next_key: AtomicU64,
    /// Zero of the broker's millisecond clock used for session deadlines.
    epoch: Instant,
    shutting_down: AtomicBool,
    counters: Counters,
    /// The adaptive coalescing interval busy sessions' connect replies are spaced by.
    coalescing: coalescing::Coalescing,
    /// Token bucket of the handshake rate limit: (tokens, last refill).
    handshake_bucket: Mutex<(f64, Instant)>,
    /// Sessions ended by a queue overflow during a fan-out, with their subscriptions,
    /// whose removal the sweeper finishes.
    pending_removals: Mutex<Vec<PendingRemoval>>,
    /// Where the other nodes of a cluster reach this one, once the server is listening.
    advertised: OnceLock<Box<str>>,
    /// Sessions this node handed to another node, by clientId: their new node and when
    /// a request last followed them there (the broker's ms clock).
    moved: Mutex<HashMap<Box<str>, MovedTo>>,
}

/// A handle to the broker. Cheap to clone; all clones share one broker.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

/// A handle that does not keep the broker alive, for handlers, listeners and engines the
/// broker itself owns (a strong handle there would be a reference cycle).
#[derive(Clone)]
pub struct WeakBroker {
    shared: Weak<Shared>,
}

impl WeakBroker {
    /// The broker, unless it has been dropped.
    pub fn upgrade(&self) -> Option<Broker> {
        self.shared.upgrade().map(|shared| Broker { shared })
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("node_id", &self.shared.node_id)
            .field("stats", &self.stats())
            .finish()
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Broker {
    /// A single-node broker on the in-memory engine with `config`, advertising
    /// `connection_types` in handshake replies, with the echo service on `/service/echo`.
    pub fn new(config: Config, connection_types: &[&'static str]) -> Broker {
        Broker::with_engine(config, connection_types, Arc::new(MemoryEngine::default()))
    }

    /// A broker that is one node of whatever `engine` connects.
    pub fn with_engine(
        config: Config,
        connection_types: &[&'static str],
        engine: Arc<dyn Engine>,
    ) -> Broker {
        let handshake_tokens = f64::from(config.max_handshakes_per_second);
        let node_id = config
            .node_id
            .as_deref()
            .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string)
            .into();
        let broker = Broker {
            shared: Arc::new(Shared {
                config,
                node_id,
                engine_loops_back: engine.loops_back(),
                engine_seq: AtomicU64::new(0),
                engine,
                metrics: Arc::new(Metrics::new()),
                connection_types: connection_types.to_vec(),
                sessions: RwLock::new(HashMap::new()),
                tree: RwLock::new(SubscriptionTree::default()),
                services: RwLock::new(HashMap::new()),
                listeners: RwLock::new(Vec::new()),
                policy: RwLock::new(Arc::new(AllowAll)),
                hooks: RwLock::new(Vec::new()),
                browsers: Mutex::new(HashMap::new()),
                next_key: AtomicU64::new(1),
                epoch: Instant::now(),
                shutting_down: AtomicBool::new(false),
                counters: Counters::default(),
                coalescing: coalescing::Coalescing::default(),
                handshake_bucket: Mutex::new((handshake_tokens, Instant::now())),
                pending_removals: Mutex::new(Vec::new()),
                advertised: OnceLock::new(),
                moved: Mutex::new(HashMap::new()),
            }),
        };
        broker.shared.engine.attach(broker.downgrade());
        // A literal, valid name: registration cannot fail.
        let _ = broker.register_service("/service/echo", echo);
        broker
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The broker's metrics, for `/metrics` and the admin page.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// This node's id: what publishes it sends through the engine carry as their origin.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The engine this node's publishes leave through (readiness, cluster figures).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.shared.engine
    }

    /// A handle that does not keep the broker alive.
    pub fn downgrade(&self) -> WeakBroker {
        WeakBroker {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Calls `listener` after every session is opened or closed. It runs on the request
    /// path with no broker lock held, so it may publish; it must not block.
    pub fn on_session_event(&self, listener: impl Fn(&SessionEvent<'_>) + Send + Sync + 'static) {
        write(&self.shared.listeners).push(Arc::new(listener));
    }

    /// Replaces the security policy (the default allows everything).
    pub fn set_policy(&self, policy: impl SecurityPolicy) {
        *write(&self.shared.policy) = Arc::new(policy);
    }

    /// Adds a hook that sees every incoming message and every publish; hooks run in the
    /// order they were added.
    pub fn add_hook(&self, hook: impl MessageHook) {
        write(&self.shared.hooks).push(Arc::new(hook));
    }

    /// Sizes and counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            sessions: read(&self.shared.sessions).len(),
            subscriptions: read(&self.shared.tree).len(),
            published: c.published.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    /// At most `limit` channel patterns with the most local subscribers, most first.
    pub fn busiest_channels(&self, limit: usize) -> Vec<(String, usize)> {
        read(&self.shared.tree).busiest(limit)
    }

    /// Processes one request's batch. Completes at once unless the batch carries a
    /// `/meta/connect` that is held, or whose reply waits out the delivery interval.
    pub async fn handle(&self, mut batch: Vec<Message>, ctx: &RequestContext) -> Outcome {
        // Boxed: a held connect's future must not carry the claim's or the handshake's
        // state, which is over before the connect is held.
        let (in_flight, session, deleted) = match Box::pin(self.prepare(&mut batch, ctx)).await {
            Ok(prepared) => prepared,
            Err(handshake) => return Outcome::Reply(handshake),
        };
        let (outcome, in_flight) = match lone_connect(&batch, session.as_ref(), &deleted) {
            Some((session, connect)) => {
                // A held connect does not keep its session from moving to another node.
                drop(in_flight);
                (self.connect(session, connect, ctx).await, None)
            }
            None => {
                // Boxed: a held connect's future must not carry the batch path's state.
                let batch = Box::pin(self.process_batch(&batch, session.as_ref(), ctx, &deleted));
                (Outcome::Reply(batch.await), in_flight)
            }
        };
        // Only a cluster's ack sessions are checkpointed: one look at the engine first.
        if self.shared.engine.shares_sessions()
            && let Some(session) = session.filter(|s| s.is_ack())
            && !Box::pin(self.checkpoint(&session)).await
        {
            // What this reply carries stays unacknowledged: the next connect gets it.
            return Outcome::Reply(self.unavailable(&batch));
        }
        drop(in_flight);
        outcome
    }

    /// Processes one batch that came over a push transport (a WebSocket frame). A
    /// `/meta/connect` alone is not waited for here: it comes back as a [`PushConnect`]
    /// for the transport to hold, with the reply to send now (if any) beside it.
    pub(crate) async fn handle_pushed(
        &self,
        mut batch: Vec<Message>,
        ctx: &RequestContext,
    ) -> (Option<ReplyBatch>, Option<PushConnect>) {
        let (in_flight, session, deleted) = match Box::pin(self.prepare(&mut batch, ctx)).await {
            Ok(prepared) => prepared,
            Err(handshake) => return (Some(handshake), None),
        };
        let (answered, in_flight) = match lone_connect(&batch, session.as_ref(), &deleted) {
            Some((session, connect)) => {
                drop(in_flight);
                match self.connect_pushed(session, connect) {
                    Ok(reply) => ((Some(reply), None), None),
                    Err(held) => ((None, Some(held)), None),
                }
            }
            None => {
                let reply = self
                    .process_batch(&batch, session.as_ref(), ctx, &deleted)
                    .await;
                ((Some(reply), None), in_flight)
            }
        };
        if answered.0.is_some()
            && self.shared.engine.shares_sessions()
            && let Some(session) = session.filter(|s| s.is_ack())
            && !Box::pin(self.checkpoint(&session)).await
        {
            return (Some(self.unavailable(&batch)), answered.1);
        }
        drop(in_flight);
        answered
    }

    /// What every batch goes through first: receipt times for timesync, the handshake
    /// (answered here: `Err`), the batch's session (claimed from another node of the
    /// cluster if need be, with the request in flight on it; `Err` when the engine cannot
    /// say) and the incoming hooks (which messages they deleted).
    async fn prepare(
        &self,
        batch: &mut Vec<Message>,
        ctx: &RequestContext,
    ) -> Result<(Option<InFlight>, Option<Arc<Session>>, Vec<bool>), ReplyBatch> {
        if batch.iter().any(|m| m.ext.is_some()) {
            let now = epoch_ms();
            for message in batch.iter_mut().filter(|m| m.ext.is_some()) {
                message.received_ms = Some(now);
            }
        }
        // A node cut from the cluster serves nobody: another node may be serving its
        // sessions by now, and it could not tell.
        if self.shared.engine.shares_sessions() && !self.shared.engine.is_ready() {
            return Err(self.unavailable(batch));
        }
        if let Some(at) = batch
            .iter()
            .position(|m| m.channel.as_deref() == Some(HANDSHAKE))
        {
            // A handshake must be alone; anything batched with it has no effect.
            let handshake = &mut batch[at..=at];
            if self.run_incoming(handshake, None).first() == Some(&true) {
                return Err(ReplyBatch::single(
                    Reply::failed(&handshake[0], BayeuxError::MessageDeleted).encode(),
                ));
            }
            return Err(self.handshake(&handshake[0], ctx).await);
        }
        let in_flight = match batch.first().and_then(|m| m.client_id.as_deref()) {
            Some(id) => match self.find_or_claim(id, lone_connect_message(batch)).await {
                Ok(found) => found.filter(|f| self.cookie_matches(f.session(), ctx)),
                Err(error) => {
                    tracing::warn!(%error, client_id = id, "session not claimable now");
                    return Err(self.unavailable(batch));
                }
            },
            None => None,
        };
        let session = in_flight.as_ref().map(|f| f.session().clone());
        // A session whose token expired ends before it acts again; a lone connect is told
        // why (`open_connect`), anything else finds no session.
        // Unbound sessions (`u64::MAX`) skip the clock read.
        let token_expired = session.as_ref().is_some_and(|s| {
            let expires = s.expires();
            expires != u64::MAX && expires <= self.now_ms() && self.end_expired_token(s)
        });
        let deleted = self.run_incoming(batch, session.as_deref());
        // A lone message may be a connect held for the whole timeout: no spare capacity.
        if batch.len() == 1 {
            batch.shrink_to_fit();
        }
        let session =
            session.filter(|s| !token_expired || lone_connect(batch, Some(s), &deleted).is_some());
        Ok((in_flight, session, deleted))
    }

    fn emit(&self, event: SessionEvent<'_>) {
        let listeners = read(&self.shared.listeners).clone();
        for listener in listeners {
            if catch_unwind(AssertUnwindSafe(|| listener(&event))).is_err() {
                tracing::error!(?event, "session listener panicked");
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.shared.epoch.elapsed().as_millis() as u64
    }

    /// `at` on the broker's millisecond clock (now, if it has passed), so a wall-clock
    /// expiry can be compared with deadlines; `u64::MAX` stays free to mean never.
    fn at_ms(&self, at: std::time::SystemTime) -> u64 {
        let ahead = at
            .duration_since(std::time::SystemTime::now())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.now_ms().saturating_add(ahead).min(u64::MAX - 1)
    }

    fn now_us(&self) -> u64 {
        self.shared.epoch.elapsed().as_micros() as u64
    }

    /// Whether the request may act for `session`: with strict cookie binding, only from
    /// the browser it was created in.
    fn cookie_matches(&self, session: &Session, ctx: &RequestContext) -> bool {
        !self.shared.config.strict_cookie_binding
            || session.browser_id.as_deref() == ctx.browser_id.as_deref()
    }

    /// Every message of `batch` answered `503::server_unavailable`, a connect with
    /// `retry` advice: the engine cannot reach the cluster now, and the client comes back.
    pub(crate) fn unavailable(&self, batch: &[Message]) -> ReplyBatch {
        let config = &self.shared.config;
        let messages = batch
            .iter()
            .map(|message| {
                let mut reply = Reply::failed(message, BayeuxError::ServerUnavailable);
                if message.channel.as_deref() == Some(CONNECT) {
                    reply.advice = Some(protocol::Advice::retry(
                        config.busy_interval,
                        config.timeout,
                    ));
                }
                reply.encode()
            })
            .collect();
        ReplyBatch {
            messages,
            handshake_succeeded: false,
        }
    }
}

/// Whether the batch is one `/meta/connect` (before its session is known).
fn lone_connect_message(batch: &[Message]) -> bool {
    matches!(batch, [message] if message.channel.as_deref() == Some(CONNECT))
}

/// The batch's one message, if it is a `/meta/connect` of a known session that no hook
/// deleted: the connect that may be held.
fn lone_connect<'b>(
    batch: &'b [Message],
    session: Option<&'b Arc<Session>>,
    deleted: &[bool],
) -> Option<(&'b Arc<Session>, &'b Message)> {
    match (batch, session, deleted) {
        ([message], Some(session), [])
            if message.channel.as_deref() == Some(CONNECT) && message.id_is_valid() =>
        {
            Some((session, message))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
