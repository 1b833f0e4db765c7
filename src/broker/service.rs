//! Server-side handlers for `/service/**` channels.
//!
//! A publish to a service channel is never broadcast: it goes to the handler registered
//! for that exact channel, which may answer the caller (BAYEUX.md 5.8).

use serde_json::Value;
use serde_json::value::RawValue;

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
