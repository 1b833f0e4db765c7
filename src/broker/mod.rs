//! The message router: sessions, subscriptions, held connects, expiry and delivery.
//!
//! The broker knows nothing of HTTP. A transport decodes a request into a batch of
//! [`Message`]s, calls [`Broker::handle`] with a [`RequestContext`], and writes out the
//! [`Outcome`]. Locks are plain mutexes held for microseconds and never across an await;
//! the lock order is session state, then the subscription tree, then the browser table.

mod extensions;
mod local;
mod policy;
mod service;
mod session;
mod tree;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use local::LocalSession;
pub use policy::{
    AllowAll, HandshakeRequest, HandshakeVerdict, MessageHook, SecurityPolicy, SessionInfo,
};
pub use service::{ServiceCall, ServiceHandler, ServiceReply, echo};
pub use tree::{SubscriberKey, SubscriptionTree};

use crate::config::Config;
use crate::protocol::message::server_disconnect;
use crate::protocol::{
    Advice, BAYEUX_VERSION, BayeuxError, ChannelClass, ChannelError, ChannelName, Delivery,
    DirectMessage, Message, Reply, epoch_ms,
};
use extensions::AckState;
use session::{Enqueued, HeldConnect, Session, SessionState, Wake};

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
    Reply(Response),
    /// A newer connect of the same session took over this held one; the transport fails
    /// the request (HTTP 500, BAYEUX.md 2.3).
    Superseded,
}

/// The messages of one response: deliveries and replies, each already serialized.
#[derive(Debug, Default)]
pub struct Response {
    /// Serialized messages in the order they go on the wire. Never empty.
    pub messages: Vec<Bytes>,
    /// Whether a handshake succeeded in this request (the transport then sets the cookie).
    pub handshake_succeeded: bool,
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
    /// Token bucket of the handshake rate limit: (tokens, last refill).
    handshake_bucket: Mutex<(f64, Instant)>,
}

/// A handle to the broker. Cheap to clone; all clones share one broker.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

/// A handle that does not keep the broker alive, for handlers and listeners the broker
/// itself owns (a strong handle there would be a reference cycle).
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
    /// A broker with `config`, advertising `connection_types` in handshake replies, with
    /// the echo service on `/service/echo`.
    pub fn new(config: Config, connection_types: &[&'static str]) -> Broker {
        let handshake_tokens = f64::from(config.max_handshakes_per_second);
        let broker = Broker {
            shared: Arc::new(Shared {
                config,
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
                handshake_bucket: Mutex::new((handshake_tokens, Instant::now())),
            }),
        };
        // A literal, valid name: registration cannot fail.
        let _ = broker.register_service("/service/echo", echo);
        broker
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Registers `handler` for the service channel `channel` (exact name, `/service/...`),
    /// replacing any earlier one.
    pub fn register_service(
        &self,
        channel: &str,
        handler: impl ServiceHandler,
    ) -> Result<(), ChannelError> {
        let name = ChannelName::parse(channel)?;
        if name.class() != ChannelClass::Service || name.wildcard().is_some() {
            return Err(ChannelError::NotAbsolute);
        }
        write(&self.shared.services).insert(channel.into(), Arc::new(handler));
        Ok(())
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

    fn policy(&self) -> Arc<dyn SecurityPolicy> {
        read(&self.shared.policy).clone()
    }

    /// Runs the incoming hooks over a batch; returns which messages they deleted (empty
    /// when there are no hooks).
    fn run_incoming(&self, batch: &mut [Message], session: Option<&Session>) -> Vec<bool> {
        let hooks = read(&self.shared.hooks).clone();
        if hooks.is_empty() {
            return Vec::new();
        }
        let info = session.map(Session::info);
        batch
            .iter_mut()
            .map(|message| {
                !hooks.iter().all(|hook| {
                    catch_unwind(AssertUnwindSafe(|| hook.incoming(info.as_ref(), message)))
                        .unwrap_or(false)
                })
            })
            .collect()
    }

    fn emit(&self, event: SessionEvent<'_>) {
        let listeners = read(&self.shared.listeners).clone();
        for listener in listeners {
            if catch_unwind(AssertUnwindSafe(|| listener(&event))).is_err() {
                tracing::error!(?event, "session listener panicked");
            }
        }
    }

    /// Processes one request's batch. Completes at once unless the batch is a lone
    /// `/meta/connect` that has to be held.
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
                return Outcome::Reply(single(
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
            return self.connect_alone(session, message, ctx).await;
        }
        Outcome::Reply(self.process_batch(&batch, session.as_ref(), ctx, &deleted))
    }

    /// Publishes `data` on `channel` from the server side. Returns how many sessions it
    /// was queued for.
    pub fn publish(&self, channel: &str, data: &Value) -> Result<usize, BayeuxError> {
        let data =
            serde_json::value::to_raw_value(data).map_err(|_| BayeuxError::ChannelInvalid)?;
        self.publish_message(Message {
            channel: Some(channel.to_string()),
            data: Some(data),
            ..Message::default()
        })
    }

    /// Publishes a whole message (`channel`, `data`, `ext`) from the server side, through
    /// the security policy and the outgoing hooks. Returns how many sessions it was queued
    /// for.
    pub fn publish_message(&self, message: Message) -> Result<usize, BayeuxError> {
        let channel = message
            .channel
            .as_deref()
            .ok_or(BayeuxError::ChannelMissing)?;
        let name = ChannelName::parse(channel).map_err(|_| BayeuxError::ChannelInvalid)?;
        if name.wildcard().is_some() {
            return Err(BayeuxError::ChannelInvalid);
        }
        if name.class() != ChannelClass::Broadcast {
            return Err(BayeuxError::MetaPublishDenied);
        }
        if !self.policy().can_publish(None, &name) {
            return Err(BayeuxError::PublishDenied(channel.to_string()));
        }
        self.broadcast(&name, &message, None)
    }

    /// Removes the session `client_id` from the server side: its held connect is answered
    /// with a `/meta/disconnect` message and `reconnect: none`. Returns false for an
    /// unknown session.
    pub fn disconnect(&self, client_id: &str) -> bool {
        let session = read(&self.shared.sessions).get(client_id).cloned();
        session.is_some_and(|s| self.remove_session(&s, Removal::Kicked))
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

    /// Removes every session whose deadline has passed. Returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.now_ms();
        let expired: Vec<Arc<Session>> = read(&self.shared.sessions)
            .values()
            .filter(|s| s.deadline() <= now)
            .cloned()
            .collect();
        expired
            .iter()
            .filter(|s| self.remove_session(s, Removal::Expired))
            .count()
    }

    /// Starts the one background task that expires sessions. It stops when every
    /// `Broker` handle is dropped.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let period = Duration::from_millis(self.shared.config.sweep_interval);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let removed = Broker { shared }.sweep();
                if removed > 0 {
                    tracing::debug!(removed, "expired sessions swept");
                }
            }
        })
    }

    /// Whether [`Broker::shutdown`] was called (readiness probes report it).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    /// Starts draining: handshakes are refused with `reconnect: handshake` and an
    /// interval, and every held connect is answered at once with `reconnect: retry`, so
    /// clients come back to another instance.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = read(&self.shared.sessions).values().cloned().collect();
        for session in sessions {
            if let Some(held) = session.lock().held.as_mut() {
                held.wake(Wake::ShuttingDown);
            }
        }
    }

    /// Creates a session under a fresh random clientId, lets `setup` adjust its state before
    /// anyone can see it, registers it and announces it: the one way sessions come to be, for
    /// handshakes and in-process sessions alike.
    fn open_session(
        &self,
        browser_id: Option<&str>,
        identity: Option<&str>,
        connect_only: bool,
        deadline: u64,
        setup: impl FnOnce(&mut SessionState),
    ) -> Arc<Session> {
        let client_id: Box<str> = format!("{:032x}", rand::random::<u128>()).into();
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::new(
            key,
            client_id.clone(),
            browser_id.map(Into::into),
            identity.map(Into::into),
            self.shared.config.max_queue,
            connect_only,
            deadline,
        ));
        setup(&mut session.lock());
        write(&self.shared.sessions).insert(client_id, session.clone());
        tracing::debug!(client_id = %session.client_id, "session created");
        self.emit(SessionEvent::Opened {
            client_id: &session.client_id,
        });
        session
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

    /// Why a new session cannot be taken now, if it cannot: the session limit, or the
    /// handshake rate limit (a token bucket refilled at `max_handshakes_per_second`).
    fn over_capacity(&self) -> Option<&'static str> {
        let config = &self.shared.config;
        if read(&self.shared.sessions).len() >= config.max_sessions {
            return Some("session limit reached");
        }
        let rate = f64::from(config.max_handshakes_per_second);
        if rate > 0.0 {
            let mut bucket = self
                .shared
                .handshake_bucket
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let (tokens, last) = *bucket;
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate);
            if tokens < 1.0 {
                *bucket = (tokens, now);
                return Some("handshake rate limit reached");
            }
            *bucket = (tokens - 1.0, now);
        }
        None
    }

    fn handshake(&self, message: &Message, ctx: &RequestContext) -> Response {
        let config = &self.shared.config;
        let mut reply = Reply::to(message);
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            reply.fail(BayeuxError::ServerUnavailable);
            // The configured interval, as on drained connects: aiocometd reads it as seconds.
            reply.advice = Some(Advice {
                interval: Some(config.interval),
                ..Advice::HANDSHAKE
            });
            return single(reply.encode());
        }
        if let Some(why) = self.over_capacity() {
            tracing::warn!(reason = why, "handshake refused");
            reply.fail(BayeuxError::ServerBusy);
            reply.advice = Some(Advice {
                interval: Some(config.busy_interval),
                ..Advice::HANDSHAKE
            });
            return single(reply.encode());
        }
        let ext: Option<Value> = message
            .ext
            .as_deref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        let verdict = self.policy().can_handshake(&HandshakeRequest {
            ext: ext.as_ref(),
            browser_id: ctx.browser_id.as_deref(),
        });
        let (identity, reply_ext) = match verdict {
            HandshakeVerdict::Allow {
                identity,
                reply_ext,
            } => (identity, reply_ext),
            HandshakeVerdict::Deny { reason } => {
                tracing::info!(%reason, "handshake denied");
                reply.fail(BayeuxError::HandshakeDenied);
                reply.advice = Some(Advice::NONE);
                return single(reply.encode());
            }
        };
        // Ack sessions get deliveries only on connect replies, in numbered batches.
        let ack = config.ack_extension && extensions::wants_ack(message);
        let session = self.open_session(
            ctx.browser_id.as_deref(),
            identity.as_deref(),
            config.connect_only_delivery,
            self.now_ms() + config.interval + config.max_interval,
            |state| {
                if ack {
                    state.ack = Some(Box::new(AckState::new()));
                    state.connect_only = true;
                }
            },
        );
        reply.client_id = Some(&session.client_id);
        reply.version = Some(BAYEUX_VERSION);
        reply.minimum_version = Some(BAYEUX_VERSION);
        reply.supported_connection_types = Some(&self.shared.connection_types);
        reply.advice = Some(Advice::retry(config.interval, config.timeout));
        if let Some(ext) = reply_ext {
            reply.merge_ext(ext);
        }
        if ack {
            reply.add_ext("ack", Value::Bool(true));
        }
        Response {
            messages: vec![reply.encode()],
            handshake_succeeded: true,
        }
    }

    /// Every batch except a lone connect that may be held.
    fn process_batch(
        &self,
        batch: &[Message],
        session: Option<&Arc<Session>>,
        ctx: &RequestContext,
        deleted: &[bool],
    ) -> Response {
        let first_is_connect = batch.first().and_then(|m| m.channel.as_deref()) == Some(CONNECT);
        // Deliveries caused by a non-connect request ride on its own response instead of
        // waking the held connect (BAYEUX.md 2.1 rule 6).
        let batching = session.filter(|_| !first_is_connect);
        if let Some(s) = batching {
            s.lock().batching += 1;
            s.extend_deadline(self.now_ms() + self.shared.config.max_interval);
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut carried_connect = false;
        for (i, message) in batch.iter().enumerate() {
            let reply = if deleted.get(i) == Some(&true) {
                Reply::failed(message, BayeuxError::MessageDeleted).encode()
            } else {
                self.process_message(message, session, &mut carried_connect)
            };
            replies.push(reply);
        }
        let mut messages = Vec::new();
        if let Some(s) = session {
            let mut state = s.lock();
            if batching.is_some() {
                state.batching -= 1;
            }
            if state.removed.is_none() {
                if carried_connect {
                    self.flush_for_connect(&mut state, &mut messages);
                } else if !(state.connect_only || ctx.connect_only) {
                    state.queue.drain_into(&mut messages);
                } else if !state.queue.is_empty() {
                    state.wake_for_delivery();
                }
            }
        }
        messages.extend(replies);
        Response {
            messages,
            handshake_succeeded: false,
        }
    }

    fn process_message(
        &self,
        message: &Message,
        session: Option<&Arc<Session>>,
        carried_connect: &mut bool,
    ) -> Bytes {
        let Some(channel) = message.channel.as_deref() else {
            return Reply::failed(message, BayeuxError::ChannelMissing).encode();
        };
        if !message.id_is_valid() {
            return Reply::failed(message, BayeuxError::MessageIdInvalid).encode();
        }
        // The session comes from the batch's first message; a different clientId later
        // in the batch is not that session (CometD).
        let session = session.filter(|s| message.client_id.as_deref() == Some(&*s.client_id));
        let Some(session) = session else {
            let mut reply = Reply::failed(message, BayeuxError::SessionUnknown);
            if channel == CONNECT {
                reply.advice = Some(Advice::HANDSHAKE);
            }
            return reply.encode();
        };
        match channel {
            CONNECT => {
                *carried_connect = true;
                let mut state = session.lock();
                if let Some(reply) = self.connect_gone(message, &state) {
                    return reply;
                }
                self.take_over_held_connect(&mut state);
                state.connected = true;
                Self::acknowledge(&mut state, message);
                self.connect_reply(session, &mut state, message, Ending::Open)
            }
            SUBSCRIBE => outcome(message, self.subscribe(message, session)),
            UNSUBSCRIBE => outcome(message, self.unsubscribe(message, session)),
            DISCONNECT => {
                self.remove_session(session, Removal::Disconnected);
                Reply::to(message).encode()
            }
            _ => outcome(message, self.publish_from(message, channel, session)),
        }
    }

    /// The 402 reply for a connect whose session was removed meanwhile.
    fn connect_gone(&self, message: &Message, state: &SessionState) -> Option<Bytes> {
        state.removed?;
        let mut reply = Reply::failed(message, BayeuxError::SessionUnknown);
        reply.advice = Some(Advice::HANDSHAKE);
        Some(reply.encode())
    }

    /// Fails a held connect because a newer one of the same session arrived, freeing its
    /// browser slot first so a page reload is not taken for a second tab.
    fn take_over_held_connect(&self, state: &mut SessionState) {
        if let Some(mut held) = state.held.take() {
            held.wake(Wake::Superseded);
            self.release_browser_slot(held.browser_slot.as_deref());
        }
    }

    async fn connect_alone(
        &self,
        session: &Arc<Session>,
        message: &Message,
        ctx: &RequestContext,
    ) -> Outcome {
        let config = &self.shared.config;
        let hold = message
            .advice_ms("timeout")
            .map_or(config.timeout, |t| t.min(config.timeout));
        let held = {
            let mut state = session.lock();
            if let Some(reply) = self.connect_gone(message, &state) {
                return Outcome::Reply(single(reply));
            }
            self.take_over_held_connect(&mut state);
            Self::acknowledge(&mut state, message);
            let first = !std::mem::replace(&mut state.connected, true);
            let answer_now = first
                || hold == 0
                || state.ack.as_deref().is_some_and(AckState::has_unacked)
                || self.shared.shutting_down.load(Ordering::SeqCst);
            let wait = self.delivery_wait(&state, hold);
            if answer_now || (!state.queue.is_empty() && wait.is_zero()) {
                return Outcome::Reply(self.connect_response(
                    session,
                    &mut state,
                    message,
                    Ending::Open,
                ));
            }
            if !state.queue.is_empty() {
                Err(wait)
            } else {
                let browser_slot = match self.acquire_browser_slot(ctx) {
                    Ok(slot) => slot,
                    Err(()) => {
                        return Outcome::Reply(self.multiple_clients(session, message));
                    }
                };
                let (waker, receiver) = oneshot::channel();
                let generation = state.next_generation();
                state.held = Some(HeldConnect {
                    generation,
                    waker: Some(waker),
                    browser_slot,
                });
                session.set_deadline(u64::MAX);
                Ok((receiver, generation))
            }
        };
        let (why, wait) = match held {
            Err(wait) => (Wake::Deliver, wait),
            Ok((receiver, generation)) => {
                // Whether the wait ends or the request is dropped (client abort), the guard
                // lets go of the held connect; a superseded one was already taken over.
                let guard = HeldGuard {
                    broker: self,
                    session,
                    generation,
                };
                let woken = tokio::time::timeout(Duration::from_millis(hold), receiver).await;
                drop(guard);
                match woken {
                    Ok(Ok(Wake::Deliver)) => {
                        (Wake::Deliver, self.delivery_wait(&session.lock(), hold))
                    }
                    Ok(Ok(why)) => (why, Duration::ZERO),
                    Ok(Err(_)) | Err(_) => (Wake::Deliver, Duration::ZERO),
                }
            }
        };
        if why == Wake::Superseded {
            return Outcome::Superseded;
        }
        if !wait.is_zero() {
            // The connect is no longer held, so what is published meanwhile just queues and
            // rides on this reply. Boxed: inline, the timer would grow every held connect.
            Box::pin(tokio::time::sleep(wait)).await;
        }
        let mut state = session.lock();
        let ending = match why {
            Wake::ShuttingDown => Ending::Drain,
            _ => Ending::after(state.removed),
        };
        Outcome::Reply(self.connect_response(session, &mut state, message, ending))
    }

    /// How long a connect reply with the queued deliveries must still wait so that it comes
    /// `delivery_interval` after the session's previous one; never longer than the connect's
    /// `hold`, which the client's request timeout allows for.
    fn delivery_wait(&self, state: &SessionState, hold: u64) -> Duration {
        let interval_us = self.shared.config.delivery_interval * 1_000;
        match state.delivered_at {
            Some(at) if interval_us > 0 && !state.queue.is_empty() => {
                let since = self.now_us().saturating_sub(at.get());
                Duration::from_micros(interval_us.saturating_sub(since).min(hold * 1_000))
            }
            _ => Duration::ZERO,
        }
    }

    /// Lets go of held connect `generation` if it is still the session's; the session then
    /// starts ageing towards expiry.
    fn release_held(&self, session: &Session, state: &mut SessionState, generation: u64) {
        if state
            .held
            .as_ref()
            .is_some_and(|h| h.generation == generation)
        {
            if let Some(held) = state.held.take() {
                self.release_browser_slot(held.browser_slot.as_deref());
            }
            if state.removed.is_none() {
                let config = &self.shared.config;
                session.set_deadline(self.now_ms() + config.interval + config.max_interval);
            }
        }
    }

    /// Queued deliveries followed by the connect reply.
    fn connect_response(
        &self,
        session: &Session,
        state: &mut SessionState,
        message: &Message,
        ending: Ending,
    ) -> Response {
        let reply = self.connect_reply(session, state, message, ending);
        let mut messages = Vec::with_capacity(state.queue.len() + 1);
        self.flush_for_connect(state, &mut messages);
        if self.shared.config.delivery_interval > 0 && !messages.is_empty() {
            state.delivered_at = NonZeroU64::new(self.now_us().max(1));
        }
        messages.push(reply);
        Response {
            messages,
            handshake_succeeded: false,
        }
    }

    /// Writes what a connect reply carries: the queue, or for an ack session every
    /// unacknowledged delivery (BAYEUX.md 6.2).
    fn flush_for_connect(&self, state: &mut SessionState, out: &mut Vec<Bytes>) {
        match state.ack.as_mut() {
            Some(ack) => ack.flush(&mut state.queue, self.shared.config.max_queue, out),
            None => state.queue.drain_into(out),
        }
    }

    /// Applies a connect's `ext.ack` (the batches the client received).
    fn acknowledge(state: &mut SessionState, connect: &Message) {
        if let (Some(ack), Some(batch)) =
            (state.ack.as_mut(), extensions::acknowledged_batch(connect))
        {
            ack.acknowledge(batch);
        }
    }

    /// The reply to a connect answered now, with full advice; it also restarts the
    /// session's expiry clock.
    fn connect_reply(
        &self,
        session: &Session,
        state: &mut SessionState,
        message: &Message,
        ending: Ending,
    ) -> Bytes {
        let config = &self.shared.config;
        let mut reply = Reply::to(message);
        match ending {
            Ending::Open => {
                reply.advice = Some(Advice::retry(config.interval, config.timeout));
                if let Some(ack) = state.ack.as_mut() {
                    reply.add_ext("ack", ack.close_batch().into());
                }
                let dropped = state.queue.take_dropped();
                if dropped > 0 {
                    reply.add_ext("halley", serde_json::json!({ "dropped": dropped }));
                }
                if state.held.is_none() {
                    let interval = message
                        .advice_ms("interval")
                        .map_or(config.interval, |i| i.min(10 * config.max_interval));
                    session.set_deadline(self.now_ms() + interval + config.max_interval);
                }
            }
            Ending::Stop => reply.advice = Some(Advice::NONE),
            // Not a spread-out interval: aiocometd 0.4.5 reads `interval` as seconds, so
            // any non-zero value parks it for minutes. Clients back off on their own when
            // the next connect finds nobody listening.
            Ending::Drain => reply.advice = Some(Advice::retry(config.interval, config.timeout)),
            Ending::Gone => {
                reply.fail(BayeuxError::SessionUnknown);
                reply.advice = Some(Advice::HANDSHAKE);
            }
        }
        reply.encode()
    }

    fn multiple_clients(&self, session: &Session, message: &Message) -> Response {
        let config = &self.shared.config;
        let mut reply = Reply::to(message);
        if config.multi_session_interval > 0 {
            let interval = config.multi_session_interval as u64;
            reply.advice = Some(Advice {
                multiple_clients: Some(true),
                ..Advice::retry(interval, config.timeout)
            });
            session.set_deadline(self.now_ms() + interval + config.max_interval);
        } else {
            reply.successful = false;
            reply.advice = Some(Advice {
                multiple_clients: Some(true),
                ..Advice::NONE
            });
        }
        single(reply.encode())
    }

    /// Takes a long-poll slot of the request's browser. `Ok(None)`: no slot is needed.
    fn acquire_browser_slot(&self, ctx: &RequestContext) -> Result<Option<Box<str>>, ()> {
        let Some(browser) = ctx.browser_id.as_deref().filter(|_| !ctx.multiplexed) else {
            return Ok(None);
        };
        let mut browsers = self
            .shared
            .browsers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let held = browsers.entry(browser.into()).or_insert(0);
        if *held >= self.shared.config.max_sessions_per_browser {
            if *held == 0 {
                browsers.remove(browser);
            }
            return Err(());
        }
        *held += 1;
        Ok(Some(browser.into()))
    }

    fn release_browser_slot(&self, browser: Option<&str>) {
        let Some(browser) = browser else { return };
        let mut browsers = self
            .shared
            .browsers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(held) = browsers.get_mut(browser) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                browsers.remove(browser);
            }
        }
    }

    /// The validated patterns of a subscribe or unsubscribe, in request order.
    fn patterns<'m>(message: &'m Message) -> Result<Vec<ChannelName<'m>>, BayeuxError> {
        let parse = |v: &'m Value| {
            v.as_str()
                .and_then(|s| ChannelName::parse(s).ok())
                .ok_or(BayeuxError::SubscriptionInvalid)
        };
        match &message.subscription {
            None => Err(BayeuxError::SubscriptionMissing),
            Some(Value::Array(items)) if !items.is_empty() => items.iter().map(parse).collect(),
            Some(single) => parse(single).map(|name| vec![name]),
        }
    }

    /// Subscribes `session` to every pattern of `message`, all or nothing.
    fn subscribe(&self, message: &Message, session: &Arc<Session>) -> Result<(), BayeuxError> {
        let patterns = Self::patterns(message)?;
        if patterns.iter().any(|p| p.class() == ChannelClass::Meta) {
            return Err(BayeuxError::MetaSubscribeDenied);
        }
        // Service subscriptions succeed and record nothing (BAYEUX.md 1.4).
        let mut fresh: Vec<&ChannelName<'_>> = patterns
            .iter()
            .filter(|p| p.class() == ChannelClass::Broadcast)
            .collect();
        fresh.sort_unstable_by_key(|p| p.as_str());
        fresh.dedup_by_key(|p| p.as_str());
        let policy = self.policy();
        if let Some(denied) = fresh
            .iter()
            .find(|p| !policy.can_subscribe(&session.info(), p))
        {
            return Err(BayeuxError::SubscribeDenied(denied.as_str().to_string()));
        }
        let added: Vec<&ChannelName<'_>> = {
            let mut state = session.lock();
            if state.removed.is_some() {
                return Err(BayeuxError::SessionUnknown);
            }
            fresh.retain(|p| !state.subscriptions.contains(p.as_str()));
            if state.subscriptions.len() + fresh.len() > self.shared.config.max_subscriptions {
                return Err(BayeuxError::SubscriptionLimit);
            }
            let mut tree = write(&self.shared.tree);
            for pattern in &fresh {
                state.subscriptions.insert(pattern.as_str().into());
                tree.insert(pattern, session.key, session.clone());
            }
            fresh
        };
        for pattern in added {
            self.emit(SessionEvent::Subscribed {
                client_id: &session.client_id,
                channel: pattern.as_str(),
            });
        }
        Ok(())
    }

    /// Unsubscribes `session` from every pattern of `message`; unknown ones are ignored.
    fn unsubscribe(&self, message: &Message, session: &Session) -> Result<(), BayeuxError> {
        let patterns = Self::patterns(message)?;
        if patterns.iter().any(|p| p.class() == ChannelClass::Meta) {
            return Err(BayeuxError::UnsubscribeFailed);
        }
        let mut removed = Vec::new();
        {
            let mut state = session.lock();
            if state.removed.is_some() {
                return Err(BayeuxError::SessionUnknown);
            }
            let mut tree = write(&self.shared.tree);
            for pattern in &patterns {
                if state.subscriptions.remove(pattern.as_str()) {
                    tree.remove(pattern, session.key);
                    removed.push(pattern);
                }
            }
        }
        for pattern in removed {
            self.emit(SessionEvent::Unsubscribed {
                client_id: &session.client_id,
                channel: pattern.as_str(),
            });
        }
        Ok(())
    }

    /// A publish by `session` (a client or an in-process session).
    fn publish_from(
        &self,
        message: &Message,
        channel: &str,
        session: &Arc<Session>,
    ) -> Result<(), BayeuxError> {
        let name = match ChannelName::parse(channel) {
            Ok(name) if name.wildcard().is_none() => name,
            _ => return Err(BayeuxError::ChannelInvalid),
        };
        if name.class() == ChannelClass::Meta {
            return Err(BayeuxError::MetaPublishDenied);
        }
        if !self.policy().can_publish(Some(&session.info()), &name) {
            return Err(BayeuxError::PublishDenied(channel.to_string()));
        }
        match name.class() {
            ChannelClass::Service => self.call_service(message, channel, session),
            _ => {
                let publisher =
                    Some(&**session).filter(|_| !self.shared.config.broadcast_to_publisher);
                self.broadcast(&name, message, publisher).map(drop)
            }
        }
    }

    /// Runs the outgoing hooks on a publish, serializes it once and fans it out.
    fn broadcast(
        &self,
        name: &ChannelName<'_>,
        message: &Message,
        skip: Option<&Session>,
    ) -> Result<usize, BayeuxError> {
        let hooks = read(&self.shared.hooks).clone();
        let bytes = if hooks.is_empty() {
            Delivery::of(name.as_str(), message).encode()
        } else {
            let mut copy = message.clone();
            for hook in &hooks {
                let keep = catch_unwind(AssertUnwindSafe(|| hook.outgoing(&mut copy)));
                if !keep.unwrap_or(false) {
                    return Err(BayeuxError::MessageDeleted);
                }
            }
            Delivery::of(name.as_str(), &copy).encode()
        };
        Ok(self.fan_out(name, bytes, skip))
    }

    /// Queues `bytes` for every session subscribed to `channel` except `skip`. Returns how
    /// many sessions it was queued for.
    fn fan_out(&self, channel: &ChannelName<'_>, bytes: Bytes, skip: Option<&Session>) -> usize {
        let counters = &self.shared.counters;
        counters.published.fetch_add(1, Ordering::Relaxed);
        let targets = read(&self.shared.tree).matches(channel);
        let policy = self.shared.config.queue_overflow;
        let mut queued = 0;
        let mut overflowed = Vec::new();
        for session in targets {
            if skip.is_some_and(|s| s.key == session.key) {
                continue;
            }
            let mut state = session.lock();
            if state.removed.is_some() {
                continue;
            }
            match state.queue.push(bytes.clone(), policy) {
                Enqueued::Queued => queued += 1,
                Enqueued::DroppedOldest => {
                    queued += 1;
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client_id = %session.client_id, "queue full: dropped the oldest delivery");
                }
                Enqueued::Overflow => {
                    drop(state);
                    overflowed.push(session);
                    continue;
                }
            }
            state.wake_for_delivery();
        }
        for session in overflowed {
            tracing::warn!(client_id = %session.client_id, "queue full: session disconnected");
            self.remove_session(&session, Removal::Overflow);
        }
        counters
            .delivered
            .fetch_add(queued as u64, Ordering::Relaxed);
        queued
    }

    fn call_service(
        &self,
        message: &Message,
        channel: &str,
        session: &Session,
    ) -> Result<(), BayeuxError> {
        let handler = read(&self.shared.services).get(channel).cloned();
        let Some(handler) = handler else {
            return Ok(());
        };
        let call = ServiceCall {
            channel,
            client_id: &session.client_id,
            data: message.data.as_deref(),
        };
        let answer = match catch_unwind(AssertUnwindSafe(|| handler.call(&call))) {
            Ok(answer) => answer,
            Err(_) => {
                tracing::error!(channel, "service handler panicked");
                return Err(BayeuxError::HandlerFailed);
            }
        };
        let (successful, data) = match answer {
            ServiceReply::Silent => return Ok(()),
            ServiceReply::Answer(data) => (true, data),
            ServiceReply::Failure(data) => (false, data),
        };
        let direct = DirectMessage {
            id: message.id.as_deref(),
            channel,
            successful: Some(successful),
            data: &data,
        }
        .encode();
        let mut state = session.lock();
        // An answer the caller waits for is not subject to the overflow policy.
        state.queue.push_unbounded(direct);
        state.wake_for_delivery();
        Ok(())
    }

    /// Removes a session for good. Returns false if it was already gone (or, for expiry,
    /// has been revived by a connect since the sweeper looked).
    fn remove_session(&self, session: &Arc<Session>, why: Removal) -> bool {
        let mut state = session.lock();
        if state.removed.is_some()
            || (why == Removal::Expired && session.deadline() > self.now_ms())
        {
            return false;
        }
        state.removed = Some(why);
        {
            let mut sessions = write(&self.shared.sessions);
            if sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.client_id);
            }
        }
        let subscriptions = std::mem::take(&mut state.subscriptions);
        if !subscriptions.is_empty() {
            let mut tree = write(&self.shared.tree);
            for pattern in subscriptions.iter() {
                if let Ok(name) = ChannelName::parse(pattern) {
                    tree.remove(&name, session.key);
                }
            }
        }
        if why == Removal::Kicked {
            state.queue.push_unbounded(server_disconnect());
        }
        match state.held.as_mut() {
            Some(held) => held.wake(Wake::Removed),
            None => {
                let mut gone = Vec::new();
                state.queue.drain_into(&mut gone);
            }
        }
        drop(state);
        tracing::debug!(client_id = %session.client_id, reason = ?why, "session removed");
        self.emit(SessionEvent::Closed {
            client_id: &session.client_id,
            reason: why,
        });
        true
    }
}

/// How a connect reply ends the client's connect loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The session lives on: `retry` with full advice.
    Open,
    /// The client or the server ended the session: `reconnect: none`.
    Stop,
    /// The session is gone but the client may come back: 402 with `handshake` advice.
    Gone,
    /// The broker is shutting down: `retry`, so the client's next connect reaches another
    /// instance (or this one restarted), which tells it to handshake.
    Drain,
}

impl Ending {
    fn after(removal: Option<Removal>) -> Ending {
        match removal {
            None => Ending::Open,
            Some(Removal::Disconnected | Removal::Kicked) => Ending::Stop,
            Some(Removal::Expired | Removal::Overflow) => Ending::Gone,
        }
    }
}

/// Cleans up a held connect whose request was dropped (client abort, server shutdown).
struct HeldGuard<'a> {
    broker: &'a Broker,
    session: &'a Arc<Session>,
    generation: u64,
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.session.lock();
        self.broker
            .release_held(self.session, &mut state, self.generation);
    }
}

/// The encoded reply to `message` for the result of acting on it.
fn outcome(message: &Message, result: Result<(), BayeuxError>) -> Bytes {
    match result {
        Ok(()) => Reply::to(message).encode(),
        Err(error) => Reply::failed(message, error).encode(),
    }
}

fn single(message: Bytes) -> Response {
    Response {
        messages: vec![message],
        handshake_succeeded: false,
    }
}

#[cfg(test)]
mod tests;
