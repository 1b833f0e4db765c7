//! Server-side handlers for `/service/**` channels.
//!
//! A publish to a service channel is never broadcast: it goes to the handler registered
//! for that exact channel, which may answer the caller (BAYEUX.md 5.8).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use super::session::Session;
use super::{Broker, read, write};
use crate::protocol::{
    BayeuxError, ChannelClass, ChannelError, ChannelName, DirectMessage, Message,
};

/// Why a handler cannot be registered for a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceChannelError {
    /// Not a valid channel name.
    #[error("invalid channel: {0}")]
    Invalid(#[from] ChannelError),
    /// A handler serves one exact `/service/` channel.
    #[error("{0:?} is not an exact /service/ channel")]
    NotService(String),
}

/// A message published to a service channel, as a handler sees it.
#[derive(Debug)]
pub struct ServiceCall<'a> {
    /// The service channel, e.g. `/service/echo`.
    pub channel: &'a str,
    /// The caller's session id.
    pub client_id: &'a str,
    /// The request's payload, if it had one.
    pub data: Option<&'a RawValue>,
}

impl ServiceCall<'_> {
    /// The payload parsed into a JSON value (`null` when absent).
    pub fn data_value(&self) -> Value {
        self.data
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or(Value::Null)
    }
}

/// What a handler sends back to the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceReply {
    /// Nothing beyond the normal acknowledgement.
    Silent,
    /// A `successful:true` answer carrying the request's `id` and this `data`, which is
    /// what CometD JS `remoteCall` waits for.
    Answer(Value),
    /// A `successful:false` answer carrying this `data`.
    Failure(Value),
}

/// A server-side handler for one service channel.
pub trait ServiceHandler: Send + Sync + 'static {
    /// Handles one call. It runs on the request path: it must not block.
    fn call(&self, call: &ServiceCall<'_>) -> ServiceReply;
}

impl<F> ServiceHandler for F
where
    F: Fn(&ServiceCall<'_>) -> ServiceReply + Send + Sync + 'static,
{
    fn call(&self, call: &ServiceCall<'_>) -> ServiceReply {
        self(call)
    }
}

/// The example handler mounted on `/service/echo`: answers every call with its own data.
pub fn echo(call: &ServiceCall<'_>) -> ServiceReply {
    ServiceReply::Answer(call.data_value())
}

impl Broker {
    /// Registers `handler` for the service channel `channel` (exact name, `/service/...`),
    /// replacing any earlier one.
    pub fn register_service(
        &self,
        channel: &str,
        handler: impl ServiceHandler,
    ) -> Result<(), ServiceChannelError> {
        let name = ChannelName::parse(channel)?;
        if name.class() != ChannelClass::Service || name.wildcard().is_some() {
            return Err(ServiceChannelError::NotService(channel.to_string()));
        }
        write(&self.shared.services).insert(channel.into(), Arc::new(handler));
        Ok(())
    }

    /// Calls the handler of service channel `channel` for `session`; its answer goes to the
    /// caller's outbox with the request's `id`, so it rides on the same response.
    pub(super) fn call_service(
        &self,
        message: &Message,
        channel: &str,
        session: &Session,
    ) -> Result<(), BayeuxError> {
        let handler = read(&self.shared.services).get(channel).cloned();
        let Some(handler) = handler else {
            return Ok(());
        };
        // The answer will wait in the caller's queue: a caller that never collects its
        // answers (never connects) is refused once the queue is full, before the handler
        // runs, instead of growing it without bound.
        if session.lock().outbox.queue.is_full() {
            return Err(BayeuxError::ServerBusy);
        }
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
        // Not subject to the overflow policy (the caller waits for it), but counted: the
        // check above bounds the queue at `max_queue` plus the calls of one batch.
        state.outbox.queue.push_unbounded(direct);
        state.outbox.wake_for_delivery();
        Ok(())
    }
}
