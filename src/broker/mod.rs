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
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use bytes::Bytes;
use tokio::time::Instant;

pub use local::LocalSession;
pub use policy::{
    AllowAll, HandshakeRequest, HandshakeVerdict, MessageHook, SecurityPolicy, SessionInfo,
};
pub use service::{ServiceCall, ServiceChannelError, ServiceHandler, ServiceReply, echo};
pub use tree::{Change, SubscriberKey, SubscriptionTree};

use crate::config::Config;
use crate::engine::{Engine, MemoryEngine};
use crate::protocol::{BayeuxError, Message, Reply, epoch_ms};
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

struct Shared {
    config: Config,
    /// This node's id in a cluster; publishes carry it so nothing loops back.
    node_id: Box<str>,
    /// Carries publishes to and from other nodes.
    engine: Arc<dyn Engine>,
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
        let broker = Broker {
            shared: Arc::new(Shared {
                config,
                node_id: uuid::Uuid::new_v4().simple().to_string().into(),
                engine,
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

    /// This node's id: what publishes it sends through the engine carry as their origin.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
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

    /// Processes one request's batch. Completes at once unless the batch carries a
    /// `/meta/connect` that is held, or whose reply waits out the delivery interval.
    pub async fn handle(&self, mut batch: Vec<Message>, ctx: &RequestContext) -> Outcome {
        if batch.iter().any(|m| m.ext.is_some()) {
            let now = epoch_ms();
            for message in batch.iter_mut().filter(|m| m.ext.is_some()) {
                message.received_ms = Some(now);
            }
        }
        if let Some(at) = batch
            .iter()
            .position(|m| m.channel.as_deref() == Some(HANDSHAKE))
        {
            // A handshake must be alone; anything batched with it has no effect.
            let handshake = &mut batch[at..=at];
            if self.run_incoming(handshake, None).first() == Some(&true) {
                return Outcome::Reply(ReplyBatch::single(
                    Reply::failed(&handshake[0], BayeuxError::MessageDeleted).encode(),
                ));
            }
            return Outcome::Reply(self.handshake(&handshake[0], ctx));
        }
        let session = batch
            .first()
            .and_then(|m| m.client_id.as_deref())
            .and_then(|id| self.find_session(id, ctx));
        let deleted = self.run_incoming(&mut batch, session.as_deref());
        // A lone message may be a connect held for the whole timeout: no spare capacity.
        if batch.len() == 1 {
            batch.shrink_to_fit();
        }
        if let ([message], Some(session), []) = (batch.as_slice(), &session, deleted.as_slice())
            && message.channel.as_deref() == Some(CONNECT)
            && message.id_is_valid()
        {
            return self.connect(session, message, ctx).await;
        }
        // Boxed: a held connect's future must not carry the batch path's state.
        let batch = Box::pin(self.process_batch(&batch, session.as_ref(), ctx, &deleted));
        Outcome::Reply(batch.await)
    }

    /// Every batch except a lone connect that may be held: each message in order, then
    /// what the session has queued, in front of the replies.
    async fn process_batch(
        &self,
        batch: &[Message],
        session: Option<&Arc<Session>>,
        ctx: &RequestContext,
        deleted: &[bool],
    ) -> ReplyBatch {
        let first_is_connect = batch.first().and_then(|m| m.channel.as_deref()) == Some(CONNECT);
        // Deliveries caused by a non-connect request ride on its own response instead of
        // waking the held connect (BAYEUX.md 2.1 rule 6).
        let batching = session.filter(|_| !first_is_connect);
        if let Some(s) = batching {
            s.lock().outbox.batching += 1;
            s.extend_deadline(self.now_ms() + self.shared.config.max_interval);
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut connects = Vec::new();
        for (i, message) in batch.iter().enumerate() {
            let reply = if deleted.get(i) == Some(&true) {
                Some(Reply::failed(message, BayeuxError::MessageDeleted).encode())
            } else {
                self.process_message(message, session)
            };
            if reply.is_none() {
                connects.push(i);
            }
            replies.push(reply);
        }
        let mut messages = Vec::new();
        if let Some(s) = session {
            if let Some(s) = batching {
                s.lock().outbox.batching -= 1;
            }
            if connects.is_empty() {
                let mut state = s.lock();
                if state.removed.is_none() {
                    if !(state.connect_only || ctx.connect_only) {
                        state.outbox.queue.drain_into(&mut messages);
                    } else {
                        state.outbox.wake_for_delivery();
                    }
                }
            } else {
                let connects: Vec<&Message> = connects.iter().map(|&i| &batch[i]).collect();
                let mut connect_replies = self
                    .answer_batched_connects(s, &connects, &mut messages)
                    .await
                    .into_iter();
                for reply in replies.iter_mut().filter(|r| r.is_none()) {
                    *reply = connect_replies.next();
                }
            }
        }
        messages.extend(replies.into_iter().flatten());
        ReplyBatch {
            messages,
            handshake_succeeded: false,
        }
    }

    /// Acts on one message of a batch and returns its reply; `None` for a connect of the
    /// batch's session, which [`Broker::answer_batched_connects`] answers once the batch
    /// is done.
    fn process_message(&self, message: &Message, session: Option<&Arc<Session>>) -> Option<Bytes> {
        let Some(channel) = message.channel.as_deref() else {
            return Some(Reply::failed(message, BayeuxError::ChannelMissing).encode());
        };
        if !message.id_is_valid() {
            return Some(Reply::failed(message, BayeuxError::MessageIdInvalid).encode());
        }
        // The session comes from the batch's first message; a different clientId later
        // in the batch is not that session (CometD).
        let session = session.filter(|s| message.client_id.as_deref() == Some(&*s.client_id));
        let Some(session) = session else {
            let mut reply = Reply::failed(message, BayeuxError::SessionUnknown);
            if channel == CONNECT {
                reply.advice = Some(crate::protocol::Advice::HANDSHAKE);
            }
            return Some(reply.encode());
        };
        let result = match channel {
            CONNECT => return self.begin_batched_connect(session, message),
            SUBSCRIBE => self.subscribe(message, session),
            UNSUBSCRIBE => self.unsubscribe(message, session),
            DISCONNECT => {
                self.remove_session(session, Removal::Disconnected);
                Ok(())
            }
            _ => self.publish_from(message, channel, session),
        };
        Some(encode_reply(message, result))
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

    fn now_us(&self) -> u64 {
        self.shared.epoch.elapsed().as_micros() as u64
    }

    fn find_session(&self, client_id: &str, ctx: &RequestContext) -> Option<Arc<Session>> {
        let session = read(&self.shared.sessions).get(client_id).cloned()?;
        if self.shared.config.strict_cookie_binding
            && session.browser_id.as_deref() != ctx.browser_id.as_deref()
        {
            return None;
        }
        Some(session)
    }
}

/// The encoded reply to `message` for the result of acting on it.
fn encode_reply(message: &Message, result: Result<(), BayeuxError>) -> Bytes {
    match result {
        Ok(()) => Reply::to(message).encode(),
        Err(error) => Reply::failed(message, error).encode(),
    }
}

#[cfg(test)]
mod tests;
