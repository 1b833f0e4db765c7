//! Publishing: from a session, from the server side, and from other nodes.
//!
//! A publish is checked (channel, policy), passed through the outgoing hooks and
//! serialized once; the engine carries it to other nodes and [`Broker::fan_out`] queues
//! the same bytes in the outbox of every matching local session. A publish from another
//! node enters at [`Broker::deliver_from_engine`] and skips straight to the fan-out: its
//! hooks, policy and counters ran on the node that accepted it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::outbox::Enqueued;
use super::session::Session;
use super::tree::{Matches, SubscriberKey};
use super::{Broker, read};
use crate::engine::{Confirmation, Publish};
use crate::metrics::DropReason;
use crate::protocol::{BayeuxError, ChannelClass, ChannelName, Delivery, Message, Publisher};

impl Broker {
    /// Publishes `data` on `channel` from the server side, without waiting: returns how
    /// many local sessions it was queued for (0 on an engine that routes through other
    /// nodes, whose later failure is logged). Code that must know the publish was accepted
    /// uses [`Broker::publish_message`].
    pub fn publish(&self, channel: &str, data: &Value) -> Result<usize, BayeuxError> {
        let data = serde_json::value::to_raw_value(data).map_err(|_| BayeuxError::DataInvalid)?;
        let (queued, confirmation) = self.publish_server_side(Message {
            channel: Some(channel.to_string()),
            data: Some(data),
            ..Message::default()
        })?;
        if let Some(confirmation) = confirmation {
            log_unconfirmed(channel.to_string(), confirmation);
        }
        Ok(queued)
    }

    /// Publishes a whole message (`channel`, `data`, `ext`) from the server side, through
    /// the security policy and the outgoing hooks, and waits until the engine accepted it.
    /// Returns how many local sessions it was queued for (0 on an engine that routes
    /// through other nodes: they are reached after the engine's round trip).
    pub async fn publish_message(&self, message: Message) -> Result<usize, BayeuxError> {
        let (queued, confirmation) = self.publish_server_side(message)?;
        confirm(confirmation).await.map(|()| queued)
    }

    fn publish_server_side(
        &self,
        message: Message,
    ) -> Result<(usize, Option<Confirmation>), BayeuxError> {
        let channel = message
            .channel
            .as_deref()
            .ok_or(BayeuxError::ChannelMissing)?;
        let name = ChannelName::for_publish(channel, Publisher::Server)
            .map_err(|e| BayeuxError::for_publish(channel, e))?;
        let result = if self.policy().can_publish(None, &name) {
            self.broadcast(&name, &message, None)
        } else {
            Err(BayeuxError::PublishDenied(channel.to_string()))
        };
        let counted = result.as_ref().map(drop).map_err(Clone::clone);
        self.shared.metrics.publish(self.count_outcome(&counted));
        let mut fan_out = result?;
        Ok((self.fan_out_now(&fan_out), fan_out.confirmation.take()))
    }

    /// A publish by `session` (a client or an in-process session): a service channel
    /// calls its handler; a broadcast channel is prepared for its fan-out, which the
    /// caller runs (at once, or in chunks that let other tasks in).
    pub(super) fn publish_from(
        &self,
        message: &Message,
        channel: &str,
        session: &Arc<Session>,
    ) -> Result<Option<FanOut>, BayeuxError> {
        let name = ChannelName::for_publish(channel, Publisher::Session)
            .map_err(|e| BayeuxError::for_publish(channel, e))?;
        if !self.policy().can_publish(Some(&session.info()), &name) {
            return Err(BayeuxError::PublishDenied(channel.to_string()));
        }
        match name.class() {
            ChannelClass::Service => self.call_service(message, channel, session).map(|()| None),
            _ => {
                let publisher =
                    Some(&**session).filter(|_| !self.shared.config.broadcast_to_publisher);
                self.broadcast(&name, message, publisher).map(Some)
            }
        }
    }

    /// Fans out a publish that the engine carried, to this node's sessions. Returns how
    /// many it was queued for. A publish that this node sent itself is ignored, unless
    /// the engine brings every publish back to its origin ([`Engine::publish`]'s
    /// confirmation), where this is the only fan-out it gets.
    pub fn deliver_from_engine(&self, publish: &Publish<'_>) -> usize {
        if publish.origin == self.node_id() && !self.shared.engine_loops_back {
            return 0;
        }
        let Ok(name) = ChannelName::parse(publish.channel) else {
            return 0;
        };
        let skip = publish
            .publisher
            .filter(|_| !self.shared.config.broadcast_to_publisher)
            .and_then(|id| read(&self.shared.sessions).get(id).map(|s| s.key));
        let targets = read(&self.shared.tree).matches(&name);
        let reached = self.fan_out_now(&FanOut {
            targets,
            bytes: publish.bytes.clone(),
            skip,
            published: Instant::now(),
            confirmation: None,
            seq: publish.seq,
        });
        self.shared
            .engine_seq
            .fetch_max(publish.seq, Ordering::Relaxed);
        reached
    }

    /// Runs the outgoing hooks on a publish, serializes it once, hands it to the engine
    /// and finds its local recipients: the fan-out to run.
    fn broadcast(
        &self,
        name: &ChannelName<'_>,
        message: &Message,
        publisher: Option<&Session>,
    ) -> Result<FanOut, BayeuxError> {
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
        let publish = Publish {
            origin: self.node_id(),
            channel: name.as_str(),
            bytes: &bytes,
            publisher: publisher.map(|s| &*s.client_id),
            seq: 0,
        };
        let confirmation = match self.shared.engine.publish(&publish) {
            Ok(confirmation) => confirmation,
            Err(error) => {
                tracing::warn!(%error, channel = name.as_str(), "publish refused by the engine");
                return Err(BayeuxError::ServerUnavailable);
            }
        };
        self.shared
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        // An engine that brings the publish back fans it out here in its own order.
        let targets = match confirmation {
            Some(_) => Matches::default(),
            // The tree's lock is held only to take the matching sets, never for the fan-out.
            None => read(&self.shared.tree).matches(name),
        };
        Ok(FanOut {
            targets,
            bytes,
            skip: publisher.map(|s| s.key),
            published: Instant::now(),
            confirmation,
            seq: 0,
        })
    }

    /// Runs a whole fan-out now. Returns how many sessions it reached.
    pub(super) fn fan_out_now(&self, fan_out: &FanOut) -> usize {
        self.deliver(fan_out, fan_out.recipients())
    }

    /// Runs a fan-out in chunks of [`FAN_OUT_CHUNK`] sessions, letting other tasks in
    /// whenever it has held its worker for [`FAN_OUT_SLICE`], so one publish to a huge
    /// audience does not stall the tasks behind it. A fan-out shorter than that runs in
    /// one go: yielding inside it would send its first recipients' replies before the
    /// rest were queued, and fewer, fuller replies are what long-polling lives on.
    /// Returns how many sessions it reached.
    pub(super) async fn fan_out_yielding(&self, fan_out: FanOut) -> usize {
        if fan_out.targets.len_upper_bound() <= FAN_OUT_CHUNK {
            return self.fan_out_now(&fan_out);
        }
        let mut recipients = fan_out.recipients().peekable();
        let mut reached = 0;
        let mut slice = std::time::Instant::now();
        while recipients.peek().is_some() {
            reached += self.deliver(&fan_out, recipients.by_ref().take(FAN_OUT_CHUNK));
            if slice.elapsed() >= FAN_OUT_SLICE && recipients.peek().is_some() {
                tokio::task::yield_now().await;
                slice = std::time::Instant::now();
            }
        }
        reached
    }

    /// Queues the fan-out's bytes in the outbox of each of `recipients`. A session whose
    /// queue overflows under the `disconnect` policy is ended, its removal finished by
    /// the sweeper (never here: its listeners may publish). Returns how many it reached.
    fn deliver<'f>(
        &self,
        fan_out: &FanOut,
        recipients: impl Iterator<Item = &'f Arc<Session>>,
    ) -> usize {
        let counters = &self.shared.counters;
        let policy = self.shared.config.queue_overflow;
        let mut queued = 0;
        for session in recipients {
            let mut state = session.lock();
            if state.removed.is_some() {
                continue;
            }
            let bytes = fan_out.bytes.clone();
            state.last_seq = fan_out.seq;
            match state.outbox.queue.push_at(bytes, policy, fan_out.published) {
                Enqueued::Queued => queued += 1,
                Enqueued::DroppedOldest => {
                    queued += 1;
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    self.shared.metrics.dropped(DropReason::QueueFull, 1);
                    tracing::debug!(client_id = %session.client_id, "queue full: dropped the oldest delivery");
                }
                Enqueued::Overflow => {
                    drop(state);
                    tracing::warn!(client_id = %session.client_id, "queue full: session disconnected");
                    self.remove_after_fan_out(session.clone());
                    continue;
                }
            }
            state.outbox.wake_for_delivery();
        }
        counters
            .delivered
            .fetch_add(queued as u64, Ordering::Relaxed);
        self.shared.metrics.delivered(queued as u64);
        queued
    }
}

/// Sessions served between two looks at the clock during a large fan-out.
const FAN_OUT_CHUNK: usize = 1024;
/// How long a fan-out may hold its worker before it lets other tasks in.
const FAN_OUT_SLICE: std::time::Duration = std::time::Duration::from_millis(2);

/// A publish on its way to this node's sessions: the subscriber sets it matched, the
/// delivery serialized once, and the publisher if it does not get its own copy.
pub(super) struct FanOut {
    targets: Matches<Arc<Session>>,
    bytes: Bytes,
    skip: Option<SubscriberKey>,
    /// When it was published: one clock read for every recipient's latency metric.
    published: Instant,
    /// Set when the engine fans the publish out itself (to this node too): whether it
    /// accepted it, which the publisher's reply waits for.
    pub confirmation: Option<Confirmation>,
    /// Its number in the engine's order (0 when the engine does not number publishes).
    seq: u64,
}

/// Waits for an engine's confirmation, if there is one: a publish the engine could not
/// carry is `503::server_unavailable`, never acknowledged and dropped.
pub(super) async fn confirm(confirmation: Option<Confirmation>) -> Result<(), BayeuxError> {
    let Some(confirmation) = confirmation else {
        return Ok(());
    };
    match confirmation.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(%error, "publish not carried by the engine");
            Err(BayeuxError::ServerUnavailable)
        }
        Err(_engine_gone) => Err(BayeuxError::ServerUnavailable),
    }
}

/// Logs the failure of a publish whose caller does not wait for the engine.
pub(super) fn log_unconfirmed(channel: String, confirmation: Confirmation) {
    tokio::spawn(async move {
        if confirm(Some(confirmation)).await.is_err() {
            tracing::warn!(%channel, "server-side publish lost: the engine could not carry it");
        }
    });
}

impl FanOut {
    fn recipients(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.targets
            .iter()
            .filter(|(key, _)| Some(*key) != self.skip)
            .map(|(_, session)| session)
    }
}
