//! In-process sessions: Rust code that subscribes and publishes like a remote client,
//! through the same policy, hooks, queues and routing, without HTTP.

use std::sync::Arc;

use serde_json::Value;

use super::outbox::{Attachment, Wake};
use super::session::{Identity, Session};
use super::{Broker, Removal};
use crate::metrics::Transport;
use crate::protocol::{BayeuxError, Message};

/// A session owned by Rust code in the same process. It never expires; dropping it
/// closes it.
pub struct LocalSession {
    broker: Broker,
    session: Arc<Session>,
    /// Its attachment to the session's outbox while [`LocalSession::receive`] waits.
    reader: Option<Attachment>,
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
        let identity = identity.map(|name| Identity::new(name, None));
        // Deadline `u64::MAX` and no expiry: the sweeper never expires it.
        let session = self.open_session(None, identity, false, u64::MAX, |state| {
            state.connected = true;
            state.transport = Transport::Local;
        });
        LocalSession {
            broker: self.clone(),
            session,
            reader: None,
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
        let raw = serde_json::value::to_raw_value(data).map_err(|_| BayeuxError::DataInvalid)?;
        message.data = Some(raw);
        if let Some(mut fan_out) = self.broker.publish_from(&message, channel, &self.session)? {
            self.broker.fan_out_now(&fan_out);
            if let Some(confirmation) = fan_out.confirmation.take() {
                super::routing::log_unconfirmed(channel.to_string(), confirmation);
            }
        }
        Ok(())
    }

    /// Waits for the next messages delivered to this session, in order. Returns `None`
    /// once the session has been closed (for example by [`Broker::disconnect`]); the
    /// broker's shutdown does not close it.
    pub async fn receive(&mut self) -> Option<Vec<Value>> {
        loop {
            let reader = {
                let mut state = self.session.lock();
                if !state.outbox.queue.is_empty() {
                    let mut out = Vec::new();
                    state.outbox.queue.drain_into(&mut out);
                    let messages = out
                        .iter()
                        .filter_map(|bytes| serde_json::from_slice(bytes).ok())
                        .collect();
                    return Some(messages);
                }
                if state.removed.is_some() {
                    return None;
                }
                match self.reader.filter(|r| state.outbox.is_reader(*r)) {
                    Some(reader) => reader,
                    None => {
                        let (reader, _) = state.outbox.attach(None);
                        self.reader = Some(reader);
                        reader
                    }
                }
            };
            match self.session.woken(reader).await {
                Wake::Deliver | Wake::Removed | Wake::ShuttingDown => {}
                // Only this handle reads a local session; nothing else attaches.
                Wake::Superseded => self.reader = None,
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
