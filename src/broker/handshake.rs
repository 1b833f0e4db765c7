//! `/meta/handshake`: the session limit, the handshake rate limit, the security policy's
//! verdict, and the one way sessions come to be.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;
use tokio::time::Instant;

use super::extensions::{self, AckState};
use super::session::{Identity, Session, SessionState};
use super::{
    Broker, HandshakeRequest, HandshakeVerdict, Removal, ReplyBatch, RequestContext, SessionEvent,
    read, write,
};
use crate::engine::EngineError;
use crate::metrics::{Outcome, Refusal};
use crate::protocol::{Advice, BAYEUX_VERSION, BayeuxError, Message, Reply};

impl Broker {
    /// Why a new session cannot be taken now, if it cannot: the session limit, or the
    /// handshake rate limit (a token bucket refilled at `max_handshakes_per_second`).
    fn over_capacity(&self) -> Option<Refusal> {
        let config = &self.shared.config;
        // On a cluster the engine holds the limit for all nodes together (`create_session`).
        let sessions = read(&self.shared.sessions).len();
        if sessions >= config.max_sessions {
            return Some(Refusal::Sessions);
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
                return Some(Refusal::HandshakeRate);
            }
            *bucket = (tokens - 1.0, now);
        }
        None
    }

    pub(super) async fn handshake(&self, message: &Message, ctx: &RequestContext) -> ReplyBatch {
        let config = &self.shared.config;
        let mut reply = Reply::to(message);
        let metrics = &self.shared.metrics;
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            metrics.handshake(Outcome::Busy);
            reply.fail(BayeuxError::ServerUnavailable);
            // The configured interval, as on drained connects: aiocometd reads it as seconds.
            reply.advice = Some(Advice {
                interval: Some(config.interval),
                ..Advice::HANDSHAKE
            });
            return ReplyBatch::single(reply.encode());
        }
        if let Some(why) = self.over_capacity() {
            tracing::warn!(reason = why.as_str(), "handshake refused");
            metrics.handshake(Outcome::Busy);
            metrics.refused(why);
            reply.fail(BayeuxError::ServerBusy);
            reply.advice = Some(Advice {
                interval: Some(config.busy_interval),
                ..Advice::HANDSHAKE
            });
            return ReplyBatch::single(reply.encode());
        }
        let ext: Option<Value> = message
            .ext
            .as_deref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        let verdict = self.policy().can_handshake(&HandshakeRequest {
            ext: ext.as_ref(),
            browser_id: ctx.browser_id.as_deref(),
        });
        let (identity, reply_ext, expires) = match verdict {
            HandshakeVerdict::Allow {
                identity,
                reply_ext,
                expires,
            } => (identity, reply_ext, expires),
            HandshakeVerdict::Deny { reason } => {
                tracing::info!(%reason, "handshake denied");
                metrics.handshake(Outcome::Denied);
                metrics.refused(Refusal::Credentials);
                reply.fail(BayeuxError::HandshakeDenied);
                reply.advice = Some(Advice::NONE);
                return ReplyBatch::single(reply.encode());
            }
        };
        // Ack sessions get deliveries only on connect replies, in numbered batches.
        let ack = config.ack_extension && extensions::wants_ack(message);
        // An expiry binds an authenticated session only: there is nobody to refresh it for
        // an anonymous one.
        let identity = identity.map(|name| Identity::new(&name, expires.map(|t| self.at_ms(t))));
        let session = self.open_session(
            ctx.browser_id.as_deref(),
            identity,
            config.connect_only_delivery,
            self.now_ms() + config.interval + config.max_interval,
            |state| {
                state.transport = ctx.transport;
                if ack {
                    let base = self.shared.engine_seq.load(Ordering::Relaxed);
                    state.ack = Some(Box::new(AckState::new(base)));
                    state.connect_only = true;
                }
            },
        );
        // Other nodes must know the session before the client can reach them with it.
        if let Err(error) = self.shared.engine.create_session(&session.client_id).await {
            tracing::warn!(%error, "handshake refused: the engine cannot record the session");
            self.remove_session(&session, Removal::Disconnected);
            metrics.handshake(Outcome::Busy);
            if error == EngineError::Full {
                metrics.refused(Refusal::Sessions);
                reply.fail(BayeuxError::ServerBusy);
            } else {
                reply.fail(BayeuxError::ServerUnavailable);
            }
            reply.advice = Some(Advice {
                interval: Some(config.busy_interval),
                ..Advice::HANDSHAKE
            });
            return ReplyBatch::single(reply.encode());
        }
        metrics.handshake(Outcome::Ok);
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
        ReplyBatch {
            messages: vec![reply.encode()],
            handshake_succeeded: true,
        }
    }

    /// Creates a session under a fresh random clientId, lets `setup` adjust its state before
    /// anyone can see it, registers it and announces it: the one way sessions come to be, for
    /// handshakes and in-process sessions alike.
    pub(super) fn open_session(
        &self,
        browser_id: Option<&str>,
        identity: Option<Box<Identity>>,
        connect_only: bool,
        deadline: u64,
        setup: impl FnOnce(&mut SessionState),
    ) -> Arc<Session> {
        // 122 random bits (UUID v4) in 32 hex digits, as clientIds have always looked. In
        // a cluster the first 8 are the engine's tag for this node (90 random bits left),
        // so that any node can tell where to relay the session's requests.
        let random = uuid::Uuid::new_v4().simple().to_string();
        let tag = self.shared.engine.id_tag();
        let client_id: Box<str> = format!("{tag}{}", &random[tag.len().min(16)..]).into();
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::new(
            key,
            client_id.clone(),
            browser_id.map(Into::into),
            identity,
            self.shared.config.max_queue,
            connect_only,
            deadline,
        ));
        let transport = {
            let mut state = session.lock();
            setup(&mut state);
            state.transport
        };
        self.shared.metrics.session_opened(transport);
        write(&self.shared.sessions).insert(client_id, session.clone());
        tracing::debug!(client_id = %session.client_id, "session created");
        self.emit(SessionEvent::Opened {
            client_id: &session.client_id,
        });
        session
    }
}
