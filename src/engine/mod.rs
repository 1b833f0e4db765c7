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
//! - [`redis`]: many processes on one Redis. Publishes go through one ordered, bounded
//!   log in Redis and come back to every node (the publisher's too) in the same order.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::broker::WeakBroker;
use crate::config::ConfigError;

pub use memory::MemoryEngine;
pub use redis::RedisEngine;

/// Resolves when an engine that delivers a publish back to its own node has accepted it
/// (`Ok`) or failed to (`Err`): the publisher's reply waits for it.
pub type Confirmation = tokio::sync::oneshot::Receiver<Result<(), EngineError>>;

/// A boxed future, so the engine trait stays object-safe.
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One node of a cluster as the others see it (for `/api/stats`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStats {
    /// The node's id.
    pub id: String,
    /// Its live sessions.
    pub sessions: usize,
    /// Its (session, pattern) subscriptions.
    pub subscriptions: usize,
    /// Publishes it accepted.
    pub published: u64,
    /// Copies it queued to its sessions.
    pub delivered: u64,
    /// Copies its overflow policy dropped.
    pub dropped: u64,
    /// The run of the node (`<id>/<run>`) that these figures come from.
    #[serde(default)]
    pub owner: String,
    /// Where the other nodes reach it (`http://HOST:PORT`), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

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
    /// Its number in the engine's order, for engines that number publishes (0 otherwise):
    /// sessions remember the last they were given, so their state can be rebuilt.
    pub seq: u64,
}

/// What became of a node's claim on a session that another node served last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The cluster has no such session: the client must handshake.
    Unknown,
    /// The session now lives on this node (its state came with it).
    TakenOver,
    /// The node that served it is gone, and its state with it: the session is ended
    /// cluster-wide and the client must handshake.
    Lost,
    /// Another claim on it is under way: ask again shortly.
    Busy,
}

/// A session's state, moving from the node that served it to the one that serves it
/// now. What was queued for it comes along; what was published since follows from the
/// engine's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionHandover {
    /// Its clientId.
    pub client_id: String,
    /// The `BAYEUX_BROWSER` id it was created under.
    pub browser_id: Option<String>,
    /// Who the security policy authenticated.
    pub identity: Option<String>,
    /// How long its token has left, in ms; `None` for never.
    pub expires_in: Option<u64>,
    /// Deliveries ride only on connect replies.
    pub connect_only: bool,
    /// Its first connect was answered.
    pub connected: bool,
    /// Its broadcast subscriptions.
    pub subscriptions: Vec<String>,
    /// Deliveries queued for it, oldest first (serialized JSON objects).
    pub queue: Vec<String>,
    /// The ack extension's state, if it negotiated it.
    pub ack: Option<AckHandover>,
    /// The number of the last publish the handing node had fanned out (set by the
    /// engine): the receiving node adds what followed. In a checkpoint, the number up to
    /// which the client acknowledged everything.
    pub cursor: u64,
}

/// The ack extension's state of a moving session.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AckHandover {
    /// The number the next batch gets.
    pub next_batch: u64,
    /// Every publish numbered up to this was acknowledged (or came before the session).
    pub base: u64,
    /// Each unacknowledged batch with the number of the last publish in it.
    pub ends: Vec<(u64, u64)>,
    /// The unacknowledged deliveries with their batches (empty in a checkpoint: they are
    /// read back from the log).
    pub unacked: Vec<(u64, String)>,
}

/// What became of a server-side disconnect of a session served by another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The cluster has no such session.
    Unknown,
    /// The node serving it was told to disconnect it.
    Sent,
    /// Its node is gone: its record was deleted here.
    Ended,
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
    /// The cluster holds as many sessions as it may.
    #[error("the cluster's session limit is reached")]
    Full,
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

    /// Sends a publish accepted on this node to every other node. `Ok(None)`: the broker
    /// fans it out to its own sessions now. `Ok(Some(confirmation))`: the engine brings it
    /// back to this node too, in the engine's order (through
    /// [`crate::Broker::deliver_from_engine`]), and the confirmation says whether it was
    /// accepted.
    fn publish(&self, publish: &Publish<'_>) -> Result<Option<Confirmation>, EngineError>;

    /// Whether sessions live in the engine, so any node serves any session's requests
    /// (no sticky load balancing). The session methods below matter only then.
    fn shares_sessions(&self) -> bool {
        false
    }

    /// Records a new session, served by this node, before its handshake is answered.
    fn create_session(&self, _client_id: &str) -> EngineFuture<'_, Result<(), EngineError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Makes this node the one that serves `client_id`, moving its state here from the
    /// node that served it ([`crate::Broker::hand_over`] there,
    /// [`crate::Broker::take_over`] here). `superseding`: the claim is for a new connect,
    /// which supersedes the one held there.
    fn claim_session<'a>(
        &'a self,
        _client_id: &'a str,
        _superseding: bool,
    ) -> EngineFuture<'a, Result<Claim, EngineError>> {
        Box::pin(std::future::ready(Ok(Claim::Unknown)))
    }

    /// Stores what is needed to rebuild an ack-extension session if this node dies: its
    /// state without the messages (`queue` and `ack.unacked` empty), which the log holds.
    /// Every reply to such a session waits for it.
    fn checkpoint_session<'a>(
        &'a self,
        _state: &'a SessionHandover,
    ) -> EngineFuture<'a, Result<(), EngineError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Sends the state of session `client_id` to node `to`, which claimed it while a
    /// request of it was being processed here (`None`: it is not here after all). Does
    /// not wait.
    fn send_handover(&self, _client_id: &str, _to: &str, _state: Option<SessionHandover>) {}

    /// Has the node serving session `client_id` disconnect it from the server side.
    fn disconnect_session<'a>(
        &'a self,
        _client_id: &'a str,
    ) -> EngineFuture<'a, Result<Kick, EngineError>> {
        Box::pin(std::future::ready(Ok(Kick::Unknown)))
    }

    /// Forgets a session that ended on this node. Does not wait.
    fn end_session(&self, _client_id: &str) {}

    /// What the clientIds of sessions made on this node start with, so that any node can
    /// tell where a session was made without asking the engine ("" on one node).
    fn id_tag(&self) -> &str {
        ""
    }

    /// The address (`http://HOST:PORT`) of the node that a request for session
    /// `client_id`, not served here, should be relayed to, from what this node knows
    /// without a round trip: the node that made the session if it is alive, or else the
    /// one live node every node picks for it. `None`: this node should serve it itself.
    fn locate(&self, _client_id: &str) -> Option<Arc<str>> {
        None
    }

    /// The address of node run `owner` (as [`NodeStats::owner`]) if it is alive and not
    /// this one.
    fn address_of(&self, _owner: &str) -> Option<Arc<str>> {
        None
    }

    /// Whether every publish comes back to the node it was accepted on, which then fans
    /// it out only when it does ([`Engine::publish`] answers with a confirmation).
    fn loops_back(&self) -> bool {
        false
    }

    /// Whether this node can reach the rest of the cluster now (`/ready`).
    fn is_ready(&self) -> bool {
        true
    }

    /// Every node of the cluster with its figures, this one included; `None` when the
    /// engine has no other nodes to ask (the broker's own stats are the whole truth).
    fn cluster_stats(&self) -> EngineFuture<'_, Option<Result<Vec<NodeStats>, EngineError>>> {
        Box::pin(std::future::ready(None))
    }

    /// Reports a change of this node's interest in `pattern`. Called with the
    /// subscription tree locked, so changes for one pattern arrive in order.
    fn interest(&self, pattern: &str, change: Interest);
}

/// The engine a configuration names: `memory`, or `redis://HOST:PORT[/DB]` with the
/// configured key prefix.
pub fn from_config(config: &crate::config::Config) -> Result<Arc<dyn Engine>, ConfigError> {
    match config.engine.as_str() {
        "memory" => Ok(Arc::new(MemoryEngine::default())),
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            Ok(Arc::new(RedisEngine::open(url, &config.redis_prefix)?))
        }
        other => Err(ConfigError::Invalid(format!(
            "unknown engine {other:?}: this build has \"memory\" and \"redis://HOST:PORT[/DB]\""
        ))),
    }
}
