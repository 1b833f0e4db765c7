//! Sessions that move between the nodes of a cluster, for engines that share sessions
//! ([`crate::engine::Engine::shares_sessions`]): a request may land on any node, and the
//! node it lands on serves the session from then on.
//!
//! A node that gets a request for a session it does not have claims it through the
//! engine. The node that had it hands its state over ([`Broker::hand_over`]): it forgets
//! the session without ending it, answers its held connect empty (the client's next
//! connect goes wherever the load balancer sends it), and gives up its queue, its
//! subscriptions and its ack batches. The claiming node takes the state over
//! ([`Broker::take_over`]) together with what was published after the handing node's
//! last fan-out, so nothing is lost or delivered twice on the way.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::extensions::AckState;
use super::outbox::Wake;
use super::session::{Identity, Session};
use super::{Broker, HANDSHAKE, Removal, SessionEvent, read, write};
use crate::engine::{Claim, EngineError, Interest, Kick, Publish, SessionHandover};
use crate::protocol::{ChannelName, Message};

/// How long a request waits for its session to be claimable before it is answered
/// `503` (a client then retries).
const CLAIM_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// What [`Broker::hand_over`] did.
#[derive(Debug)]
pub enum HandOver {
    /// Here is the session's state; it is forgotten here.
    Now(Box<SessionHandover>),
    /// A request of the session is being processed: the state follows when it is done.
    Later,
    /// This node does not serve the session.
    Absent,
}

/// A request of a session being processed (see [`Broker::find_or_claim`]); dropping it
/// completes a handover promised meanwhile.
pub(super) struct InFlight {
    broker: Broker,
    session: Arc<Session>,
    /// Whether it counts in the session's `in_flight` (only on an engine that shares
    /// sessions).
    counted: bool,
}

impl InFlight {
    /// The session the request acts for.
    pub(super) fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let to = {
            let mut state = self.session.lock();
            state.in_flight -= 1;
            if state.in_flight == 0 {
                state.handover_to.take()
            } else {
                None
            }
        };
        if let Some(to) = to {
            let state = self.broker.release(&self.session, Wake::Removed);
            let engine = &self.broker.shared.engine;
            engine.send_handover(&self.session.client_id, &to, state);
        }
    }
}

/// The most nodes a request is relayed through: to the node that made its session, then
/// on to where that node handed it. Past that, the node it reached claims it.
pub const MAX_RELAY_HOPS: u8 = 2;

/// The pause between two claims of a session that is moving.
const CLAIM_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

impl Broker {
    /// The session `client_id` if this node serves it; otherwise, on an engine that
    /// shares sessions, claims it from the node that served it. The request is in flight
    /// on it until the returned guard is dropped: the session does not move away
    /// meanwhile. `Ok(None)`: no such session in the cluster (or it was lost with its
    /// node). `Err`: the engine cannot tell now.
    /// `superseding`: the request is a connect, which supersedes one held elsewhere.
    pub(super) async fn find_or_claim(
        &self,
        client_id: &str,
        superseding: bool,
    ) -> Result<Option<InFlight>, EngineError> {
        let give_up = tokio::time::Instant::now() + CLAIM_PATIENCE;
        while tokio::time::Instant::now() < give_up {
            if let Some(found) = self.in_flight_here(client_id) {
                return Ok(Some(found));
            }
            if !self.shared.engine.shares_sessions() {
                return Ok(None);
            }
            match self
                .shared
                .engine
                .claim_session(client_id, superseding)
                .await?
            {
                // It may have moved on again already: then it is claimed again.
                Claim::TakenOver => {}
                Claim::Unknown => return Ok(None),
                Claim::Lost => {
                    tracing::info!(%client_id, "session lost with the node that served it");
                    // Gone for good, cluster-wide: its listeners hear it here.
                    self.emit(SessionEvent::Closed {
                        client_id,
                        reason: Removal::Expired,
                    });
                    return Ok(None);
                }
                // Another request of the session is moving it (here or elsewhere).
                Claim::Busy => tokio::time::sleep(CLAIM_RETRY).await,
            }
        }
        Err(EngineError::Unavailable(
            "the session is being moved; try again".into(),
        ))
    }

    /// Disconnects session `client_id` from the server side wherever it is served: here
    /// ([`Broker::disconnect`]), or on an engine that shares sessions by the node that
    /// serves it (its held connect is told `reconnect: none` there). False for an unknown
    /// session.
    pub async fn disconnect_anywhere(&self, client_id: &str) -> Result<bool, EngineError> {
        if self.disconnect(client_id) {
            return Ok(true);
        }
        if !self.shared.engine.shares_sessions() {
            return Ok(false);
        }
        match self.shared.engine.disconnect_session(client_id).await? {
            Kick::Unknown => Ok(false),
            Kick::Sent => Ok(true),
            Kick::Ended => {
                // Its node is gone: its listeners hear of the end here.
                self.emit(SessionEvent::Closed {
                    client_id,
                    reason: Removal::Kicked,
                });
                Ok(true)
            }
        }
    }

    /// Where this node is reached by the others (`http://HOST:PORT`), set once by the server
    /// when it listens: the engine tells the cluster.
    pub fn advertise(&self, url: &str) {
        if self.shared.advertised.set(url.into()).is_err() {
            tracing::warn!(url, "this node's address was set already");
        }
    }

    /// Where this node is reached by the others, once the server listens.
    pub fn advertised_url(&self) -> Option<&str> {
        self.shared.advertised.get().map(|url| &**url)
    }

    /// The node to relay a request to (`http://HOST:PORT`), when the batch is one
    /// session's and another node serves that session as far as this one knows without
    /// asking the engine: the node it was handed to from here, or else (for a request
    /// that was not relayed yet) the node that made it. `hops`: how many nodes relayed the
    /// request already. `None`: it is served here, claimed if need be. Relaying costs
    /// the engine nothing, where a claim costs a round trip and moves the session's state.
    pub fn relay_target(&self, batch: &[Message], hops: u8) -> Option<Arc<str>> {
        let engine = &self.shared.engine;
        if !engine.shares_sessions() || hops >= MAX_RELAY_HOPS {
            return None;
        }
        let client_id = batch.first()?.client_id.as_deref()?;
        let one_session = batch.iter().all(|m| {
            m.client_id.as_deref() == Some(client_id) && m.channel.as_deref() != Some(HANDSHAKE)
        });
        if !one_session || read(&self.shared.sessions).contains_key(client_id) {
            return None;
        }
        let now = self.now_ms();
        let handed_to = {
            let mut moved = self.shared.moved.lock().unwrap_or_else(|p| p.into_inner());
            moved.get_mut(client_id).map(|(owner, used)| {
                *used = now;
                owner.clone()
            })
        };
        handed_to
            .and_then(|owner| engine.address_of(&owner))
            .or_else(|| {
                if hops == 0 {
                    engine.locate(client_id)
                } else {
                    None
                }
            })
    }

    /// Forgets where sessions were handed to once no request followed them for a while:
    /// a session's client comes back within `timeout + max_interval`, or its session ends.
    pub(super) fn prune_moved(&self) {
        let config = &self.shared.config;
        let stale = self
            .now_ms()
            .saturating_sub(config.timeout + config.max_interval);
        let mut moved = self.shared.moved.lock().unwrap_or_else(|p| p.into_inner());
        if !moved.is_empty() {
            moved.retain(|_, (_, used)| *used > stale);
        }
    }

    /// Remembers that session `client_id` went to node `to`, so that requests for it that
    /// land here follow it (bounded like the sessions themselves).
    fn remember_moved(&self, client_id: &str, to: &str) {
        let now = self.now_ms();
        let mut moved = self.shared.moved.lock().unwrap_or_else(|p| p.into_inner());
        if moved.len() < self.shared.config.max_sessions || moved.contains_key(client_id) {
            moved.insert(client_id.into(), (to.into(), now));
        }
    }

    /// Gives up session `client_id` to node `to`: forgets it here without ending it and
    /// returns its state; or, while a request of the session is being processed here,
    /// promises it for when the last one is done (the engine's `send_handover` then).
    /// `superseded`: a new connect claimed it, so the connect held here is superseded
    /// (never answered over a socket, HTTP 500 over long-polling), not answered empty.
    pub fn hand_over(&self, client_id: &str, to: &str, superseded: bool) -> HandOver {
        let Some(session) = read(&self.shared.sessions).get(client_id).cloned() else {
            return HandOver::Absent;
        };
        {
            let mut state = session.lock();
            if state.removed.is_some() {
                return HandOver::Absent;
            }
            if state.in_flight > 0 {
                state.handover_to = Some(to.into());
                drop(state);
                self.remember_moved(client_id, to);
                return HandOver::Later;
            }
        }
        let held = if superseded {
            Wake::Superseded
        } else {
            Wake::Removed
        };
        let Some(state) = self.release(&session, held) else {
            return HandOver::Absent;
        };
        self.remember_moved(client_id, to);
        HandOver::Now(Box::new(state))
    }

    /// Forgets session `client_id`, which another node claimed while this one was cut
    /// off from the cluster (its state there wins). Returns whether it was here.
    pub fn forget_moved(&self, client_id: &str) -> bool {
        let session = read(&self.shared.sessions).get(client_id).cloned();
        session.is_some_and(|session| self.release(&session, Wake::Removed).is_some())
    }

    /// Session `client_id` if this node serves it (and has not promised it to another
    /// node), with a request marked in flight on it, on an engine that shares sessions:
    /// a handover waits until the request is done, so it finds its session as it was.
    fn in_flight_here(&self, client_id: &str) -> Option<InFlight> {
        let session = read(&self.shared.sessions).get(client_id).cloned()?;
        let counted = self.shared.engine.shares_sessions();
        {
            let mut state = session.lock();
            if counted {
                if state.removed.is_some() || state.handover_to.is_some() {
                    return None;
                }
                state.in_flight += 1;
            }
        }
        Some(InFlight {
            broker: self.clone(),
            session,
            counted,
        })
    }

    /// Forgets `session` here without ending it and returns its state, with the number of
    /// the last publish fanned out to it or past it (what the next node adds after).
    /// `held`: how its held connect, if any, is woken.
    fn release(&self, session: &Arc<Session>, held: Wake) -> Option<SessionHandover> {
        let client_id = &*session.client_id;
        let (subscriptions, handover) = {
            let mut state = session.lock();
            if state.removed.is_some() {
                return None;
            }
            state.removed = Some(Removal::Moved);
            state.handover_to = None;
            // Publishes up to `engine_seq` were fanned out whole; one being fanned out now
            // either reached this session (its `last_seq`) or will skip it, removed.
            let cursor = state
                .last_seq
                .max(self.shared.engine_seq.load(Ordering::Relaxed));
            let mut queue = Vec::new();
            state.outbox.queue.drain_into(&mut queue);
            if state.outbox.has_reader() {
                state.outbox.wake(held);
            }
            self.shared.metrics.session_closed(state.transport);
            let subscriptions = std::mem::take(&mut state.subscriptions);
            let now = self.now_ms();
            let expires = session.expires();
            let handover = SessionHandover {
                client_id: client_id.to_string(),
                browser_id: session.browser_id.as_deref().map(str::to_string),
                identity: session.info().identity.map(str::to_string),
                expires_in: (expires != u64::MAX).then(|| expires.saturating_sub(now)),
                connect_only: state.connect_only,
                connected: state.connected,
                subscriptions: subscriptions.iter().map(|s| s.to_string()).collect(),
                queue: queue
                    .iter()
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .collect(),
                ack: state.ack.as_deref().map(|ack| ack.export(true)),
                cursor,
            };
            (subscriptions, handover)
        };
        self.forget_session(session, &subscriptions, Removal::Moved);
        tracing::debug!(%client_id, "session handed over to another node");
        Some(handover)
    }

    /// Serves a session another node handed over. `since` is what this node fanned out
    /// after the handing node's last fan-out (`handover.cursor`), in order: the session's
    /// queue is the handed one followed by those of `since` that match its
    /// subscriptions, each once.
    pub fn take_over(&self, handover: SessionHandover, since: &[Publish<'_>]) {
        self.shared
            .moved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(handover.client_id.as_str());
        let stale = read(&self.shared.sessions)
            .get(handover.client_id.as_str())
            .cloned();
        if let Some(stale) = stale {
            // A copy left from before this node was cut off: the handed state wins.
            self.release(&stale, Wake::Removed);
        }
        let config = &self.shared.config;
        let now = self.now_ms();
        let identity = handover
            .identity
            .as_deref()
            .map(|name| Identity::new(name, handover.expires_in.map(|ms| now + ms)));
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::new(
            key,
            handover.client_id.as_str().into(),
            handover.browser_id.as_deref().map(Into::into),
            identity,
            config.max_queue,
            handover.connect_only,
            now + config.interval + config.max_interval,
        ));
        let patterns: Vec<ChannelName<'_>> = handover
            .subscriptions
            .iter()
            .filter_map(|p| ChannelName::parse(p).ok())
            .collect();
        let own = !config.broadcast_to_publisher;
        let since = since.iter().filter(|publish| {
            let by_itself = own && publish.publisher == Some(handover.client_id.as_str());
            !by_itself
                && ChannelName::parse(publish.channel)
                    .is_ok_and(|channel| patterns.iter().any(|p| p.matches(&channel)))
        });
        let since: Vec<(u64, Bytes)> = since.map(|p| (p.seq, p.bytes.clone())).collect();
        {
            let mut state = session.lock();
            state.connected = handover.connected;
            state.ack = handover.ack.map(|ack| Box::new(AckState::import(ack)));
            state.last_seq = since.last().map_or(handover.cursor, |(seq, _)| *seq);
            let mut queued: Vec<Bytes> = handover.queue.into_iter().map(Bytes::from).collect();
            for (seq, message) in since {
                // Rebuilt from the log after a node died: what was sent in a batch the
                // client has not acknowledged goes back into that batch.
                match state
                    .ack
                    .as_mut()
                    .and_then(|ack| Some((ack.batch_of(seq)?, ack)))
                {
                    Some((batch, ack)) => ack.restore(batch, message),
                    None => queued.push(message),
                }
            }
            let arrived = tokio::time::Instant::now();
            for message in queued {
                // Dropping the oldest is the one policy that can apply here: the session
                // is not registered yet, so it cannot be ended for overflowing.
                let policy = crate::config::OverflowPolicy::DropOldest;
                state.outbox.queue.push_at(message, policy, arrived);
            }
            state.subscriptions = patterns.iter().map(|p| p.as_str().into()).collect();
            self.shared.metrics.session_opened(state.transport);
            // Registered while the session is locked, so no fan-out reaches it before
            // its queue holds what came before.
            let mut sessions = write(&self.shared.sessions);
            sessions.insert(session.client_id.clone(), session.clone());
            let mut tree = write(&self.shared.tree);
            for pattern in &patterns {
                let change = tree.insert(pattern, key, session.clone());
                self.report_interest(pattern.as_str(), change, Interest::First);
            }
        }
        tracing::debug!(client_id = %session.client_id, "session taken over from another node");
    }

    /// Stores the state of an ack-extension session in the engine (without its messages,
    /// which the engine's log holds), so that another node can rebuild it if this one
    /// dies: every reply to such a session waits for it. Other sessions, and engines that
    /// do not share sessions, skip it.
    ///
    /// False when the engine could not store it: the reply must not carry deliveries
    /// then (another node could rebuild the session from an older checkpoint and send
    /// them again).
    pub(crate) async fn checkpoint(&self, session: &Session) -> bool {
        if !self.shared.engine.shares_sessions() {
            return true;
        }
        let state = {
            let state = session.lock();
            let Some(ack) = state.ack.as_deref().filter(|_| state.removed.is_none()) else {
                return true;
            };
            let ack = ack.export(false);
            let expires = session.expires();
            SessionHandover {
                client_id: session.client_id.to_string(),
                browser_id: session.browser_id.as_deref().map(str::to_string),
                identity: session.info().identity.map(str::to_string),
                expires_in: (expires != u64::MAX).then(|| expires.saturating_sub(self.now_ms())),
                connect_only: state.connect_only,
                connected: state.connected,
                subscriptions: state.subscriptions.iter().map(|s| s.to_string()).collect(),
                queue: Vec::new(),
                cursor: ack.base,
                ack: Some(ack),
            }
        };
        match self.shared.engine.checkpoint_session(&state).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, client_id = %session.client_id,
                    "ack session not checkpointed: its reply is withheld");
                false
            }
        }
    }

    /// The clientIds of the sessions this node serves (their records are kept alive).
    pub fn session_ids(&self) -> Vec<Box<str>> {
        read(&self.shared.sessions).keys().cloned().collect()
    }
}
