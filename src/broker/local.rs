//! In-process sessions: Rust code that subscribes and publishes like a remote client,
//! through the same policy, hooks, queues and routing, without HTTP.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use super::session::{HeldConnect, Session, Wake};
use super::{Broker, Removal};
use crate::protocol::{BayeuxError, Message};

/// A session owned by Rust code in the same process. It never expires; dropping it
/// closes it.
pub struct LocalSession {
    broker: Broker,
    session: Arc<Session>,
}

impl std::fmt::Debug for LocalSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSession")
            .field("client_id", &self.session.client_id)
            .finish()
    }
}

impl Broker {
    /// Opens an in-process session. `identity` is what the security policy sees for it
    /// (`None`: anonymous). Handshake policy does not apply: the process trusts itself.
    pub fn open_local_session(&self, identity: Option<&str>) -> LocalSession {
        // Deadline `u64::MAX`: the sweeper never expires it.
        let session = self.open_session(None, identity, false, u64::MAX, |state| {
            state.connected = true;
        });
        LocalSession {
            broker: self.clone(),
            session,
        }
    }
}

impl LocalSession {
    /// The session's id, as other sessions' hooks and events see it.
    pub fn client_id(&self) -> &str {
        &self.session.client_id
    }

    fn message(&self, channel: &str) -> Message {
        Message {
            channel: Some(channel.to_string()),
            client_id: Some(self.session.client_id.to_string()),
            ..Message::default()
        }
    }

    /// Subscribes to a channel or pattern (`/a/*`, `/a/**`).
    pub fn subscribe(&self, pattern: &str) -> Result<(), BayeuxError> {
        let mut message = self.message("/meta/subscribe");
        message.subscription = Some(Value::String(pattern.to_string()));
        self.broker.subscribe(&message, &self.session)
    }

    /// Drops a subscription.
    pub fn unsubscribe(&self, pattern: &str) -> Result<(), BayeuxError> {
        let mut message = self.message("/meta/unsubscribe");
        message.subscription = Some(Value::String(pattern.to_string()));
        self.broker.unsubscribe(&message, &self.session)
    }

    /// Publishes `data` on `channel` as this session: a broadcast channel fans out, a
    /// `/service/` channel calls its handler, whose answer arrives through
    /// [`LocalSession::receive`].
    pub fn publish(&self, channel: &str, data: &Value) -> Result<(), BayeuxError> {
        let mut message = self.message(channel);
        let raw = serde_json::value::to_raw_value(data).map_err(|_| BayeuxError::ChannelInvalid)?;
        message.data = Some(raw);
        self.broker.publish_from(&message, channel, &self.session)
    }

    /// Waits for the next messages delivered to this session, in order. Returns `None`
    /// once the session has been closed (for example by [`Broker::disconnect`]).
    pub async fn receive(&mut self) -> Option<Vec<Value>> {
        loop {
            let receiver = {
                let mut state = self.session.lock();
                if !state.queue.is_empty() {
                    let mut out = Vec::new();
                    state.queue.drain_into(&mut out);
                    let messages = out
                        .iter()
                        .filter_map(|bytes| serde_json::from_slice(bytes).ok())
                        .collect();
                    return Some(messages);
                }
                if state.removed.is_some() {
                    return None;
                }
                let (waker, receiver) = oneshot::channel();
                let generation = state.next_generation();
                state.held = Some(HeldConnect {
                    generation,
                    waker: Some(waker),
                    browser_slot: None,
                });
                receiver
            };
            let why = receiver.await.unwrap_or(Wake::Removed);
            self.session.lock().held = None;
            if why == Wake::ShuttingDown {
                return None;
            }
        }
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        self.broker
            .remove_session(&self.session, Removal::Disconnected);
    }
}
