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

use super::outbox::Enqueued;
use super::session::Session;
use super::{Broker, Removal, read};
use crate::engine::Publish;
use crate::protocol::{BayeuxError, ChannelClass, ChannelName, Delivery, Message, Publisher};

impl Broker {
    /// Publishes `data` on `channel` from the server side. Returns how many local sessions
    /// it was queued for.
    pub fn publish(&self, channel: &str, data: &Value) -> Result<usize, BayeuxError> {
        let data = serde_json::value::to_raw_value(data).map_err(|_| BayeuxError::DataInvalid)?;
        self.publish_message(Message {
            channel: Some(channel.to_string()),
            data: Some(data),
            ..Message::default()
        })
    }

    /// Publishes a whole message (`channel`, `data`, `ext`) from the server side, through
    /// the security policy and the outgoing hooks. Returns how many local sessions it was
    /// queued for.
    pub fn publish_message(&self, message: Message) -> Result<usize, BayeuxError> {
        let channel = message
            .channel
            .as_deref()
            .ok_or(BayeuxError::ChannelMissing)?;
        let name = ChannelName::for_publish(channel, Publisher::Server)
            .map_err(|e| BayeuxError::for_publish(channel, e))?;
        if !self.policy().can_publish(None, &name) {
            return Err(BayeuxError::PublishDenied(channel.to_string()));
        }
        self.broadcast(&name, &message, None)
    }

    /// A publish by `session` (a client or an in-process session): a broadcast channel
    /// fans out, a service channel calls its handler.
    pub(super) fn publish_from(
        &self,
        message: &Message,
        channel: &str,
        session: &Arc<Session>,
    ) -> Result<(), BayeuxError> {
        let name = ChannelName::for_publish(channel, Publisher::Session)
            .map_err(|e| BayeuxError::for_publish(channel, e))?;
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

    /// Fans out a publish that another node accepted, to this node's sessions. Returns
    /// how many it was queued for. A publish that this node sent itself is ignored.
    pub fn deliver_from_engine(&self, publish: &Publish<'_>) -> usize {
        if publish.origin == self.node_id() {
            return 0;
        }
        let Ok(name) = ChannelName::parse(publish.channel) else {
            return 0;
        };
        let skip = publish
            .publisher
            .filter(|_| !self.shared.config.broadcast_to_publisher)
            .and_then(|id| read(&self.shared.sessions).get(id).cloned());
        self.fan_out(&name, publish.bytes, skip.as_deref())
    }

    /// Runs the outgoing hooks on a publish, serializes it once, hands it to the engine
    /// and fans it out locally. Returns how many local sessions it was queued for.
    fn broadcast(
        &self,
        name: &ChannelName<'_>,
        message: &Message,
        publisher: Option<&Session>,
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
        let publish = Publish {
            origin: self.node_id(),
            channel: name.as_str(),
            bytes: &bytes,
            publisher: publisher.map(|s| &*s.client_id),
        };
        if let Err(error) = self.shared.engine.publish(&publish) {
            tracing::warn!(%error, channel = name.as_str(), "publish refused by the engine");
            return Err(BayeuxError::ServerUnavailable);
        }
        self.shared
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        Ok(self.fan_out(name, &bytes, publisher))
    }

    /// Queues `bytes` in the outbox of every local session subscribed to `channel` except
    /// `skip`. Returns how many sessions it was queued for.
    fn fan_out(&self, channel: &ChannelName<'_>, bytes: &Bytes, skip: Option<&Session>) -> usize {
        let counters = &self.shared.counters;
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
            match state.outbox.queue.push(bytes.clone(), policy) {
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
            state.outbox.wake_for_delivery();
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
}
