//! Engines carry publishes between the nodes of a cluster; the broker routes.
//!
//! A publish accepted on a node runs its hooks and policy there, is serialized once, and
//! then leaves the node through [`Engine::publish`]; it is fanned out to the node's own
//! sessions by the broker itself. On every other node the engine hands it to
//! [`crate::Broker::deliver_from_engine`], which fans it out to that node's sessions
//! without running hooks, policy or publish counters again. Each publish carries the
//! node it came from, so nothing loops back.
//!
//! The engine also hears about interest: the first local subscriber of a channel pattern
//! arriving and the last one leaving, so a networked engine listens only for channels
//! someone on its node wants.
//!
//! - [`memory`]: the default. One process; brokers given clones of one
//!   [`MemoryEngine`] form an in-process cluster (used by tests).

pub mod memory;

use std::sync::Arc;

use bytes::Bytes;

use crate::broker::WeakBroker;
use crate::config::ConfigError;

pub use memory::MemoryEngine;

/// A publish leaving or entering a node: routed, checked and serialized already.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// The node the publish was accepted on.
    pub origin: &'a str,
    /// The concrete channel it was published to.
    pub channel: &'a str,
    /// The delivery, serialized once (a JSON object), shared by every recipient.
    pub bytes: &'a Bytes,
    /// The publishing session, which does not receive its own publish when
    /// `broadcast_to_publisher` is off.
    pub publisher: Option<&'a str>,
}

/// A change in a node's interest in a channel pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// The first local session subscribed to the pattern.
    First,
    /// The last local session subscribed to the pattern left.
    Last,
}

/// Why an engine could not carry a publish. The publisher is told it failed; nothing is
/// acknowledged and then dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot reach the other nodes now.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The engine's bounded backlog of publishes on their way out is full.
    #[error("engine backlog full")]
    Backlog,
}

/// Carries publishes between nodes. Methods are called on the request path, with no
/// broker lock held except where noted: they must not block. An engine that talks to the
/// network queues work in a bounded buffer and fails when the buffer is full or the
/// network is known to be down.
pub trait Engine: Send + Sync + 'static {
    /// Which engine this is, for logs and stats.
    fn name(&self) -> &'static str;

    /// Binds the engine to the broker it serves: publishes from other nodes go to
    /// `node.deliver_from_engine`. Called once, when the broker is built.
    fn attach(&self, node: WeakBroker);

    /// Sends a publish accepted on this node to every other node.
    fn publish(&self, publish: &Publish<'_>) -> Result<(), EngineError>;

    /// Reports a change of this node's interest in `pattern`. Called with the
    /// subscription tree locked, so changes for one pattern arrive in order.
    fn interest(&self, pattern: &str, change: Interest);
}

/// The engine a configuration names (`engine = "memory"`).
pub fn from_config(engine: &str) -> Result<Arc<dyn Engine>, ConfigError> {
    match engine {
        "memory" => Ok(Arc::new(MemoryEngine::default())),
        other => Err(ConfigError::Invalid(format!(
            "unknown engine {other:?}: this build has \"memory\""
        ))),
    }
}
