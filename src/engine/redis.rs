//! The Redis engine: many Halley nodes on one Redis.
//!
//! Every publish goes through one Lua script that numbers it (`INCR`), appends it to a
//! bounded log (a stream trimmed to [`LOG_LENGTH`] entries) and announces it on one
//! pub/sub channel that every node listens to, the publisher's node too (sharded pub/sub
//! where the server has it, see [`Subscription`]). Each node fans
//! out what it hears to its own sessions, in the log's order, so the Redis work of a
//! publish is the same whatever the number of subscribers: one script, one stream entry,
//! one message per node.
//!
//! The numbers make loss visible. A node that hears publish `n + 2` after `n` reads
//! `n + 1` from the log before going on; a node whose pub/sub connection dropped reads
//! everything it missed from the log when it is back. A probe goes round every second
//! (the heartbeat publishes on the node's own control channel), so a pub/sub connection
//! that stopped delivering without an error is noticed and replaced too.
//!
//! While the node cannot reach Redis it is not ready (`/ready` answers 503), and a
//! publish is refused at once or fails when its round trip times out: it is answered
//! unsuccessfully, never acknowledged and dropped.
//!
//! Sessions live in Redis too, so any node serves any request (no sticky load
//! balancing). A session's record says which node serves it; a node that gets a request
//! for a session it does not serve claims it (`CLAIM_SCRIPT`: one claim at a time per
//! session, under a short lock). The node that served it hands its state over on its
//! control channel, from its listening task, so the state carries the number of the last
//! publish that node fanned out; the claiming node, also in its listening task, adds what
//! it fanned out since from a ring of recent publishes. Both steps sit in the two nodes'
//! ordered streams of publishes, so a publish reaches the session exactly once. A session
//! whose node is dead (its heartbeat expired), or did not answer in time, is lost: it is
//! ended and its client told `402::session_unknown`, and handshakes again.
//!
//! Keys (all under the configured prefix; `{bus}` is a hash tag, so a Redis Cluster keeps
//! the publish script's keys in one slot): `{bus}:seq`, `{bus}:log`, the pub/sub channel
//! `{bus}:live`, each node's figures `{bus}:node:<node>` and, per run of a node
//! (`<node>/<run>`: a node restarted under the same id is another owner), its control
//! channel `{bus}:ctl:<node>/<run>` and liveness key `{bus}:alive:<node>/<run>` (both
//! keys expire five seconds after the node's last beat), and the set of nodes
//! `{bus}:nodes`, every run by its last beat `{bus}:runs` and each run's sessions
//! `{bus}:owned:<node>/<run>`; the live sessions by expiry `{bus}:sessions` (the session
//! limit); per session `{s:<clientId>}` (the node serving it, an ack session's checkpoint)
//! and `{s:<clientId>}:claim` (the claim lock). A session's keys go when it ends, or
//! with its run: once a run has not beaten for the longest a client may be silent, any
//! node deletes what it still served ([`REAP_SCRIPT`]). So Redis does no periodic work
//! per session; a long time to live on the records catches only what both missed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::{mpsc, oneshot};

use super::{
    Claim, Confirmation, Engine, EngineError, EngineFuture, Interest, Kick, NodeStats, Publish,
    SessionHandover,
};
use crate::broker::{HandOver, WeakBroker};
use crate::config::ConfigError;

/// Entries the log keeps (about: it is trimmed with `MAXLEN ~`). A node that misses more
/// than this while cut off loses the difference, and says so in its log.
pub const LOG_LENGTH: u64 = 100_000;
/// Publishes waiting for their round trip to Redis; past this a publish is refused.
const BACKLOG: usize = 10_000;
/// Publishes sent to Redis in one pipeline.
const PIPELINE: usize = 256;
/// How often a node announces itself and sends its probe round.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node's heartbeat key outlives its last beat: it is dead after that.
const NODE_TTL_MS: u64 = 5_000;
/// A pub/sub connection that heard nothing, not even the probe, for this long is replaced.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for one command or pipeline.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two attempts to reach Redis.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// Log entries read per `XRANGE` while catching up.
const CATCH_UP_BATCH: usize = 1_000;
/// Pushes the listening connection holds unread at most; past this it is replaced.
const PUSH_BACKLOG: usize = 65_536;
/// Recent publishes a node remembers, to complete the state of a session handed to it.
const RING: usize = 8_192;
/// How long a claiming node waits for the session's state; then the session is lost.
const HANDOVER_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long a claim holds its session's lock at most (a claimer that dies holds it no
/// longer than this).
const CLAIM_LOCK_MS: u64 = 3_000;
/// Session records refreshed per script call, and a dead run's records deleted per call.
const REFRESH_BATCH: usize = 500;
/// How long a session record lives unrefreshed at least, ms. Records are deleted when
/// their session ends, or with their dead run ([`REAP_SCRIPT`]); the time to live only
/// catches what both missed (a delete lost with Redis), so it is long, and refreshing it
/// (a third of it) costs Redis next to nothing per session.
const RECORD_TTL_MS: u64 = 3_600_000;

/// Records a session served by this node, unless the cluster holds `max` sessions
/// already (0: no limit). KEYS: session, the set of live sessions (by expiry), this
/// run's set of sessions. ARGV: node, time to live (ms), clientId, max. Returns 1, or 0
/// when full.
const CREATE_SCRIPT: &str = r#"
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms)
if tonumber(ARGV[4]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ms + ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"#;

/// Makes this node serve a session. KEYS: session, its claim lock. ARGV: node, time to
/// live (ms), liveness key prefix, control channel prefix, lock time (ms), clientId,
/// `1` when a new connect supersedes the one held there, prefix of the runs' sets of
/// sessions, the publish command ([`Shared::publish_command`]).
/// Returns `unknown`, `busy`, `moving\n<checkpoint or nothing>` (the serving node was
/// asked for the state),
/// `recover\n<checkpoint>` (no live node serves it; rebuild it from its checkpoint and
/// the log) or `lost` (no live node serves it, and it has no checkpoint).
const CLAIM_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'unknown' end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[5]) then return 'busy' end
local previous = redis.call('HGET', KEYS[1], 'owner')
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if previous then redis.call('SREM', ARGV[8] .. previous, ARGV[6]) end
redis.call('SADD', ARGV[8] .. ARGV[1], ARGV[6])
local checkpoint = redis.call('HGET', KEYS[1], 'state')
if previous and previous ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. previous) == 1 then
  redis.call(ARGV[9], ARGV[4] .. previous, 'handover\n' .. ARGV[6] .. '\n' .. ARGV[1] .. '\n' .. ARGV[7])
  return 'moving\n' .. (checkpoint or '')
end
if checkpoint then return 'recover\n' .. checkpoint end
return 'lost'
"#;

/// Stores an ack session's checkpoint, if this node still serves it. KEYS: session.
/// ARGV: node, checkpoint (JSON), time to live (ms).
const CHECKPOINT_SCRIPT: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// Disconnects a session from the server side: tells its live node, or deletes the
/// record of a dead node's session. KEYS: session, the set of live sessions. ARGV:
/// liveness key prefix, control channel prefix, clientId, prefix of the runs' sets of
/// sessions, the publish command. Returns 0 (unknown), 1 (told) or 2 (deleted).
const KICK_SCRIPT: &str = r#"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return 0 end
if redis.call('EXISTS', ARGV[1] .. owner) == 1 then
  redis.call(ARGV[5], ARGV[2] .. owner, 'kick\n' .. ARGV[3])
  return 1
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('SREM', ARGV[4] .. owner, ARGV[3])
return 2
"#;

/// Keeps session records alive, and the set of live sessions current. KEYS: the set,
/// then the sessions. ARGV: time to live (ms), then their clientIds.
const REFRESH_SCRIPT: &str = r#"
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
for i = 2, #KEYS do
  if redis.call('PEXPIRE', KEYS[i], ARGV[1]) == 1 then
    redis.call('ZADD', KEYS[1], ms + ARGV[1], ARGV[i])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
return 1
"#;

/// Numbers a publish, logs it and announces it. KEYS: seq, log, live channel. ARGV:
/// origin, channel, publisher ("" for none), message, log length, the publish command.
const PUBLISH_SCRIPT: &str = r#"
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0',
  'o', ARGV[1], 'c', ARGV[2], 'p', ARGV[3], 'b', ARGV[4])
redis.call(ARGV[6], KEYS[3], seq .. '\n' .. ARGV[1] .. '\n' .. ARGV[3] .. '\n' .. ARGV[2] .. '\n' .. ARGV[4])
return seq
"#;

/// A node's beat: its figures under its heartbeat key, its id in the set of nodes, this
/// run's liveness key and its time in the set of runs, and the probe on its own control
/// channel. KEYS: nodes set, node key, control channel, liveness key, runs by last beat.
/// ARGV: node id, figures (JSON), time to live (ms), run, the publish command.
const HEARTBEAT_SCRIPT: &str = r#"
local now = redis.call('TIME')
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[4], '1', 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[5], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[4])
redis.call(ARGV[5], KEYS[3], 'probe')
return 1
"#;

/// Deletes what a dead run left: the records of the sessions it still served once no
/// client came back for them within `grace` of its last beat (a claim meanwhile rebuilt
/// or ended them), at most `batch` a call, and then the run itself. KEYS: runs by last
/// beat, the set of live sessions. ARGV: prefix of the runs' sets of sessions, prefix of
/// session keys, grace (ms), batch. Returns how many sessions it looked at.
const REAP_SCRIPT: &str = r#"
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms - ARGV[3], 'LIMIT', 0, 1)
if #dead == 0 then return 0 end
local run = dead[1]
local owned = ARGV[1] .. run
local ids = redis.call('SPOP', owned, ARGV[4])
for _, id in ipairs(ids) do
  local session = ARGV[2] .. id .. '}'
  if redis.call('HGET', session, 'owner') == run then
    redis.call('DEL', session)
    redis.call('ZREM', KEYS[2], id)
  end
end
if redis.call('SCARD', owned) == 0 then redis.call('ZREM', KEYS[1], run) end
return #ids
"#;

/// Every live node's figures; forgets nodes whose heartbeat expired. KEYS: nodes set.
/// ARGV: heartbeat key prefix.
const NODES_SCRIPT: &str = r#"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local figures = redis.call('GET', ARGV[1] .. id)
  if figures then table.insert(out, figures) else redis.call('SREM', KEYS[1], id) end
end
return out
"#;

/// The engine that puts Halley nodes on one Redis (`--engine redis://HOST:PORT[/DB]`).
pub struct RedisEngine {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    /// The same server over RESP3, for the listening connection: what it hears arrives as
    /// pushes.
    resp3: redis::Client,
    /// The server has sharded pub/sub (Redis 7, Valkey): publishes go by `SPUBLISH` and
    /// the listening connection `SSUBSCRIBE`s. Found out when the command connection is
    /// made, and again by each listening connection.
    sharded: AtomicBool,
    prefix: Box<str>,
    /// This node's keys, known once the broker is attached.
    node: OnceLock<NodeKeys>,
    /// The connection for commands; `None` until Redis was first reached.
    connection: Mutex<Option<ConnectionManager>>,
    outgoing: mpsc::Sender<Outgoing>,
    /// Taken by the publisher task when the broker is attached.
    outgoing_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// The pub/sub connection is subscribed, caught up, and its probe is on time.
    listening: AtomicBool,
    /// The last heartbeat's round trip succeeded.
    beating: AtomicBool,
    /// Claims of this node waiting for a session's state: whether it arrived.
    waiting: Mutex<HashMap<Box<str>, oneshot::Sender<bool>>>,
    /// Sessions to rebuild from a checkpoint and the log, in the listening task.
    rebuilds: mpsc::Sender<Rebuild>,
    /// Taken by the listening task when the broker is attached.
    rebuilds_rx: Mutex<Option<mpsc::Receiver<Rebuild>>>,
    /// The live nodes that said where they are, as of the last heartbeat.
    routes: RwLock<Vec<Route>>,
}

/// A live node run that can be relayed to.
struct Route {
    /// The tag of the clientIds it makes (its run).
    tag: Box<str>,
    /// Its run, as session records name it.
    owner: Box<str>,
    /// Where it is reached.
    url: Arc<str>,
}

/// The keys of the whole cluster and of this node.
struct NodeKeys {
    id: Box<str>,
    seq: String,
    log: String,
    live: String,
    nodes: String,
    node_prefix: String,
    heartbeat: String,
    control: String,
    control_prefix: String,
    /// What session records name as their node: the node's id and this run's.
    owner: Box<str>,
    /// This run alone: what clientIds made here start with.
    tag: Box<str>,
    /// This run's liveness key, and the prefix of all of them.
    alive: String,
    alive_prefix: String,
    /// What session keys start with: `<prefix>{s:`.
    session_prefix: String,
    /// How long a session record lives unrefreshed, ms.
    session_ttl: u64,
    /// How long after a run's last beat what it left is deleted, ms: its sessions' clients
    /// have come back by then (and their sessions were rebuilt or ended), or never will.
    grace: u64,
    /// Every run by its last beat.
    runs: String,
    /// What the sets of sessions of each run start with, and this run's.
    owned_prefix: String,
    owned: String,
    /// The live sessions of the cluster by expiry time (for the session limit).
    sessions: String,
    /// The cluster's session limit (`max_sessions`).
    max_sessions: usize,
}

impl NodeKeys {
    fn session(&self, client_id: &str) -> String {
        format!("{}{client_id}}}", self.session_prefix)
    }

    fn claim(&self, client_id: &str) -> String {
        format!("{}{client_id}}}:claim", self.session_prefix)
    }
}

/// A session of a dead node to rebuild from its checkpoint and the log; `done` says
/// whether it was.
struct Rebuild {
    state: SessionHandover,
    done: oneshot::Sender<bool>,
}

/// A publish on its way to Redis, with whoever waits for its outcome.
struct Outgoing {
    origin: Box<str>,
    channel: Box<str>,
    publisher: Box<str>,
    bytes: Bytes,
    done: oneshot::Sender<Result<(), EngineError>>,
}

/// A publish as it comes back from Redis.
struct Carried {
    seq: u64,
    origin: String,
    publisher: String,
    channel: String,
    bytes: Bytes,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("prefix", &self.shared.prefix)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl RedisEngine {
    /// An engine for the Redis at `url`, with every key under `prefix`. Nothing is
    /// contacted until the broker attaches it.
    pub fn open(url: &str, prefix: &str) -> Result<RedisEngine, ConfigError> {
        let invalid = |e: redis::RedisError| ConfigError::Invalid(format!("engine {url:?}: {e}"));
        let client = redis::Client::open(url).map_err(invalid)?;
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let resp3 = redis::Client::open(info.set_redis_settings(settings)).map_err(invalid)?;
        let (outgoing, outgoing_rx) = mpsc::channel(BACKLOG);
        let (rebuilds, rebuilds_rx) = mpsc::channel(64);
        Ok(RedisEngine {
            shared: Arc::new(Shared {
                client,
                resp3,
                sharded: AtomicBool::new(false),
                prefix: prefix.into(),
                node: OnceLock::new(),
                connection: Mutex::new(None),
                outgoing,
                outgoing_rx: Mutex::new(Some(outgoing_rx)),
                listening: AtomicBool::new(false),
                beating: AtomicBool::new(false),
                waiting: Mutex::new(HashMap::new()),
                rebuilds,
                rebuilds_rx: Mutex::new(Some(rebuilds_rx)),
                routes: RwLock::new(Vec::new()),
            }),
        })
    }
}

impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn attach(&self, broker: WeakBroker) {
        let Some(node) = broker.upgrade() else { return };
        let bus = format!("{}{{bus}}", self.shared.prefix);
        let id = node.node_id();
        let config = node.config();
        // A session may be silent for `interval + max_interval`; its node's death is known
        // `NODE_TTL_MS` after its last beat.
        let grace = (config.interval + config.max_interval).max(10_000) + NODE_TTL_MS;
        let session_ttl = RECORD_TTL_MS.max(2 * grace);
        // Sessions belong to this run of the node: one restarted under the same id does
        // not pass for the one that served them.
        let run = uuid::Uuid::new_v4().simple().to_string();
        let owner = format!("{id}/{}", &run[..8]);
        let keys = NodeKeys {
            id: id.into(),
            seq: format!("{bus}:seq"),
            log: format!("{bus}:log"),
            live: format!("{bus}:live"),
            nodes: format!("{bus}:nodes"),
            node_prefix: format!("{bus}:node:"),
            heartbeat: format!("{bus}:node:{id}"),
            control: format!("{bus}:ctl:{owner}"),
            owner: owner.as_str().into(),
            tag: run[..8].into(),
            alive: format!("{bus}:alive:{owner}"),
            alive_prefix: format!("{bus}:alive:"),
            control_prefix: format!("{bus}:ctl:"),
            session_prefix: format!("{}{{s:", self.shared.prefix),
            session_ttl,
            grace,
            runs: format!("{bus}:runs"),
            owned_prefix: format!("{bus}:owned:"),
            owned: format!("{bus}:owned:{owner}"),
            sessions: format!("{bus}:sessions"),
            max_sessions: config.max_sessions,
        };
        if self.shared.node.set(keys).is_err() {
            tracing::error!("the Redis engine serves one broker; attached twice");
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("the Redis engine needs a tokio runtime when the broker is built");
            return;
        };
        let receiver = self
            .shared
            .outgoing_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(receiver) = receiver {
            runtime.spawn(send_publishes(self.shared.clone(), receiver));
        }
        runtime.spawn(beat(self.shared.clone(), broker.clone()));
        let rebuilds = self
            .shared
            .rebuilds_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rebuilds) = rebuilds {
            runtime.spawn(listen(self.shared.clone(), broker, rebuilds));
        }
    }

    fn publish(&self, publish: &Publish<'_>) -> Result<Option<Confirmation>, EngineError> {
        if !self.is_ready() {
            return Err(EngineError::Unavailable("Redis is unreachable".into()));
        }
        let (done, confirmation) = oneshot::channel();
        let outgoing = Outgoing {
            origin: publish.origin.into(),
            channel: publish.channel.into(),
            publisher: publish.publisher.unwrap_or_default().into(),
            bytes: publish.bytes.clone(),
            done,
        };
        match self.shared.outgoing.try_send(outgoing) {
            Ok(()) => Ok(Some(confirmation)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(EngineError::Backlog),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(EngineError::Unavailable("the engine stopped".into()))
            }
        }
    }

    fn interest(&self, _pattern: &str, _change: Interest) {
        // Every node hears every publish and matches it against its own tree.
    }

    fn loops_back(&self) -> bool {
        true
    }

    fn shares_sessions(&self) -> bool {
        true
    }

    fn create_session(&self, client_id: &str) -> EngineFuture<'_, Result<(), EngineError>> {
        let client_id = client_id.to_string();
        Box::pin(async move {
            let keys = self.shared.keys()?;
            let mut connection = self.shared.connection()?;
            let created = with_timeout(
                redis::cmd("EVAL")
                    .arg(CREATE_SCRIPT)
                    .arg(3)
                    .arg(keys.session(&client_id))
                    .arg(&keys.sessions)
                    .arg(&keys.owned)
                    .arg(&*keys.owner)
                    .arg(keys.session_ttl)
                    .arg(&client_id)
                    .arg(keys.max_sessions)
                    .query_async::<i64>(&mut connection),
            )
            .await?;
            match created {
                1 => Ok(()),
                _ => Err(EngineError::Full),
            }
        })
    }

    fn claim_session<'a>(
        &'a self,
        client_id: &'a str,
        superseding: bool,
    ) -> EngineFuture<'a, Result<Claim, EngineError>> {
        Box::pin(self.shared.claim(client_id, superseding))
    }

    fn checkpoint_session<'a>(
        &'a self,
        state: &'a SessionHandover,
    ) -> EngineFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let keys = self.shared.keys()?;
            let mut connection = self.shared.connection()?;
            let checkpoint = serde_json::to_string(state).unwrap_or_default();
            with_timeout(
                redis::cmd("EVAL")
                    .arg(CHECKPOINT_SCRIPT)
                    .arg(1)
                    .arg(keys.session(&state.client_id))
                    .arg(&*keys.owner)
                    .arg(checkpoint)
                    .arg(keys.session_ttl)
                    .query_async::<()>(&mut connection),
            )
            .await
        })
    }

    fn disconnect_session<'a>(
        &'a self,
        client_id: &'a str,
    ) -> EngineFuture<'a, Result<Kick, EngineError>> {
        Box::pin(async move {
            let keys = self.shared.keys()?;
            let mut connection = self.shared.connection()?;
            let kicked: i64 = with_timeout(
                redis::cmd("EVAL")
                    .arg(KICK_SCRIPT)
                    .arg(2)
                    .arg(keys.session(client_id))
                    .arg(&keys.sessions)
                    .arg(&keys.alive_prefix)
                    .arg(&keys.control_prefix)
                    .arg(client_id)
                    .arg(&keys.owned_prefix)
                    .arg(self.shared.publish_command())
                    .query_async(&mut connection),
            )
            .await?;
            Ok(match kicked {
                0 => Kick::Unknown,
                1 => Kick::Sent,
                _ => Kick::Ended,
            })
        })
    }

    fn send_handover(&self, client_id: &str, to: &str, state: Option<SessionHandover>) {
        send_state(&self.shared, client_id, to, state.as_ref());
    }

    fn end_session(&self, client_id: &str) {
        let (Ok(keys), Ok(mut connection)) = (self.shared.keys(), self.shared.connection()) else {
            return;
        };
        let session = keys.session(client_id);
        let mut delete = redis::pipe();
        delete.cmd("DEL").arg(&session).ignore();
        delete
            .cmd("ZREM")
            .arg(&keys.sessions)
            .arg(client_id)
            .ignore();
        delete.cmd("SREM").arg(&keys.owned).arg(client_id).ignore();
        tokio::spawn(async move {
            if let Err(error) = with_timeout(delete.query_async::<()>(&mut connection)).await {
                tracing::debug!(%error, %session, "session record left to expire");
            }
        });
    }

    fn id_tag(&self) -> &str {
        self.shared.node.get().map_or("", |keys| &keys.tag)
    }

    fn locate(&self, client_id: &str) -> Option<Arc<str>> {
        let own = &self.shared.node.get()?.tag;
        let routes = self.shared.routes.read().unwrap_or_else(|p| p.into_inner());
        let maker = client_id.get(..own.len());
        // The node that made it, or where its state goes once that node is dead: the same
        // pick on every node that sees the same live nodes (rendezvous hashing).
        let route = routes
            .iter()
            .find(|route| Some(&*route.tag) == maker)
            .or_else(|| {
                routes
                    .iter()
                    .max_by_key(|route| rendezvous(client_id, &route.tag))
            })?;
        (route.tag != *own).then(|| route.url.clone())
    }

    fn address_of(&self, owner: &str) -> Option<Arc<str>> {
        let own = &self.shared.node.get()?.owner;
        let routes = self.shared.routes.read().unwrap_or_else(|p| p.into_inner());
        routes
            .iter()
            .find(|route| *route.owner == *owner && route.owner != *own)
            .map(|route| route.url.clone())
    }

    fn is_ready(&self) -> bool {
        self.shared.listening.load(Ordering::Relaxed) && self.shared.beating.load(Ordering::Relaxed)
    }

    fn cluster_stats(&self) -> EngineFuture<'_, Option<Result<Vec<NodeStats>, EngineError>>> {
        Box::pin(async move {
            let result = async {
                let keys = self.shared.keys()?;
                let mut connection = self.shared.connection()?;
                let mut nodes = read_nodes(keys, &mut connection).await?;
                nodes.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(nodes)
            };
            Some(result.await)
        })
    }
}

impl Shared {
    fn keys(&self) -> Result<&NodeKeys, EngineError> {
        self.node
            .get()
            .ok_or_else(|| EngineError::Unavailable("the engine is not attached".into()))
    }

    /// `SPUBLISH` where the server has sharded pub/sub, `PUBLISH` otherwise.
    fn publish_command(&self) -> &'static str {
        if self.sharded.load(Ordering::Relaxed) {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// The command connection, if Redis was reached once (it reconnects by itself).
    fn connection(&self) -> Result<ConnectionManager, EngineError> {
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| EngineError::Unavailable("Redis not reached yet".into()))
    }

    /// Claims session `client_id` for this node (see the module's doc).
    async fn claim(&self, client_id: &str, superseding: bool) -> Result<Claim, EngineError> {
        // Waiting before asking: the state may arrive before the script's answer does.
        let (arrived, state) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if waiting.contains_key(client_id) {
                return Ok(Claim::Busy); // Another request of it is claiming it here.
            }
            waiting.insert(client_id.into(), arrived);
        }
        let outcome = self.claim_once(client_id, superseding, state).await;
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client_id);
        outcome
    }

    async fn claim_once(
        &self,
        client_id: &str,
        superseding: bool,
        state: oneshot::Receiver<bool>,
    ) -> Result<Claim, EngineError> {
        let keys = self.keys()?;
        let mut connection = self.connection()?;
        let session = keys.session(client_id);
        let claim = keys.claim(client_id);
        let answer: Result<String, EngineError> = with_timeout(
            redis::cmd("EVAL")
                .arg(CLAIM_SCRIPT)
                .arg(2)
                .arg(&session)
                .arg(&claim)
                .arg(&*keys.owner)
                .arg(keys.session_ttl)
                .arg(&keys.alive_prefix)
                .arg(&keys.control_prefix)
                .arg(CLAIM_LOCK_MS)
                .arg(client_id)
                .arg(if superseding { "1" } else { "0" })
                .arg(&keys.owned_prefix)
                .arg(self.publish_command())
                .query_async(&mut connection),
        )
        .await;
        let checkpoint = |text: &str| serde_json::from_str::<SessionHandover>(text).ok();
        let outcome = match answer.as_deref() {
            Ok(answer) if answer.starts_with("moving\n") => {
                let saved = checkpoint(&answer["moving\n".len()..]);
                match (tokio::time::timeout(HANDOVER_TIMEOUT, state).await, saved) {
                    (Ok(Ok(true)), _) => Ok(Claim::TakenOver),
                    // Its node answered without it (restarted, or the state came too late
                    // to complete): an ack session is rebuilt from its checkpoint.
                    (Ok(_), Some(saved)) => Ok(self.rebuild(saved).await),
                    // Its node did not answer: dead, or cut off from Redis and about to stop
                    // serving. An ack session waits for its heartbeat to expire, then is
                    // rebuilt; the claim is given up meanwhile.
                    (Err(_), Some(_)) => Ok(Claim::Busy),
                    (_, None) => Ok(Claim::Lost),
                }
            }
            Ok(answer) if answer.starts_with("recover\n") => {
                match checkpoint(&answer["recover\n".len()..]) {
                    Some(saved) => Ok(self.rebuild(saved).await),
                    None => Ok(Claim::Lost),
                }
            }
            Ok("unknown") => Ok(Claim::Unknown),
            Ok("busy") => return Ok(Claim::Busy),
            Ok(_) => Ok(Claim::Lost),
            Err(error) => Err(error.clone()),
        };
        match outcome {
            Ok(Claim::Lost) => {
                let mut delete = redis::pipe();
                delete.cmd("DEL").arg(&session).arg(&claim).ignore();
                delete
                    .cmd("ZREM")
                    .arg(&keys.sessions)
                    .arg(client_id)
                    .ignore();
                delete.cmd("SREM").arg(&keys.owned).arg(client_id).ignore();
                let _ = with_timeout(delete.query_async::<()>(&mut connection)).await;
            }
            Ok(Claim::TakenOver | Claim::Busy) => {
                let _ = with_timeout(
                    redis::cmd("DEL")
                        .arg(&claim)
                        .query_async::<()>(&mut connection),
                )
                .await;
            }
            _ => {}
        }
        outcome
    }

    /// Has the listening task rebuild a session of a dead node.
    async fn rebuild(&self, state: SessionHandover) -> Claim {
        let (done, rebuilt) = oneshot::channel();
        if self.rebuilds.send(Rebuild { state, done }).await.is_err() {
            return Claim::Lost;
        }
        match tokio::time::timeout(HANDOVER_TIMEOUT, rebuilt).await {
            Ok(Ok(true)) => Claim::TakenOver,
            _ => Claim::Lost,
        }
    }

    /// Makes the command connection if there is none yet.
    async fn connect(&self) -> Result<ConnectionManager, EngineError> {
        if let Ok(connection) = self.connection() {
            return Ok(connection);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(RECONNECT_DELAY);
        let mut connection = with_timeout(ConnectionManager::new_with_config(
            self.client.clone(),
            config,
        ))
        .await?;
        // Known before anything publishes on this connection (the listening connection
        // asks again whenever it reconnects, in case Redis was replaced).
        let sharded = has_sharded_pubsub(&mut connection).await;
        self.sharded.store(sharded, Ordering::Relaxed);
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(connection.clone());
        Ok(connection)
    }
}

/// Runs a Redis command with [`COMMAND_TIMEOUT`], its failure as the engine's error.
async fn with_timeout<T>(
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(EngineError::Unavailable(error.to_string())),
        Err(_) => Err(EngineError::Unavailable(
            "Redis did not answer in time".into(),
        )),
    }
}

/// Sends publishes to Redis in order, a pipeline of up to [`PIPELINE`] at a time, and
/// tells each publisher the outcome.
async fn send_publishes(shared: Arc<Shared>, mut outgoing: mpsc::Receiver<Outgoing>) {
    let mut batch = Vec::with_capacity(PIPELINE);
    while outgoing.recv_many(&mut batch, PIPELINE).await > 0 {
        let result = async {
            let keys = shared.keys()?;
            let mut connection = shared.connect().await?;
            let mut pipe = redis::pipe();
            for publish in &batch {
                pipe.cmd("EVAL")
                    .arg(PUBLISH_SCRIPT)
                    .arg(3)
                    .arg(&keys.seq)
                    .arg(&keys.log)
                    .arg(&keys.live)
                    .arg(&*publish.origin)
                    .arg(&*publish.channel)
                    .arg(&*publish.publisher)
                    .arg(&publish.bytes[..])
                    .arg(LOG_LENGTH)
                    .arg(shared.publish_command())
                    .ignore();
            }
            with_timeout(pipe.query_async::<()>(&mut connection)).await
        }
        .await;
        if let Err(error) = &result {
            tracing::warn!(%error, publishes = batch.len(), "publishes not carried by Redis");
        }
        for publish in batch.drain(..) {
            let _ = publish.done.send(result.clone());
        }
    }
}

/// Announces the node every [`HEARTBEAT`] with its figures, and sends the probe that
/// keeps its pub/sub connection honest. Stops with the broker.
async fn beat(shared: Arc<Shared>, broker: WeakBroker) {
    let mut ticker = tokio::time::interval(HEARTBEAT);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats: u64 = 0;
    loop {
        ticker.tick().await;
        beats += 1;
        let Some(node) = broker.upgrade() else { return };
        let stats = node.stats();
        let url = node.advertised_url().map(str::to_string);
        drop(node);
        let result = async {
            let keys = shared.keys()?;
            let figures = NodeStats {
                id: keys.id.to_string(),
                sessions: stats.sessions,
                subscriptions: stats.subscriptions,
                published: stats.published,
                delivered: stats.delivered,
                dropped: stats.dropped,
                owner: keys.owner.to_string(),
                url,
            };
            let figures = serde_json::to_string(&figures).unwrap_or_default();
            let mut connection = shared.connect().await?;
            with_timeout(
                redis::cmd("EVAL")
                    .arg(HEARTBEAT_SCRIPT)
                    .arg(5)
                    .arg(&keys.nodes)
                    .arg(&keys.heartbeat)
                    .arg(&keys.control)
                    .arg(&keys.alive)
                    .arg(&keys.runs)
                    .arg(&*keys.id)
                    .arg(figures)
                    .arg(NODE_TTL_MS)
                    .arg(&*keys.owner)
                    .arg(shared.publish_command())
                    .query_async::<()>(&mut connection),
            )
            .await
        }
        .await;
        let result = match result {
            Ok(()) => refresh(&shared, &broker, &mut beats).await,
            failed => failed,
        };
        let was = shared.beating.swap(result.is_ok(), Ordering::Relaxed);
        match result {
            Err(error) if was => {
                tracing::warn!(%error, "Redis unreachable: this node is not ready")
            }
            Ok(()) if !was => tracing::info!("Redis reached"),
            _ => {}
        }
    }
}

/// Every live node's figures (and the set of nodes rid of those whose heartbeat expired).
async fn read_nodes(
    keys: &NodeKeys,
    connection: &mut ConnectionManager,
) -> Result<Vec<NodeStats>, EngineError> {
    let figures: Vec<String> = with_timeout(
        redis::cmd("EVAL")
            .arg(NODES_SCRIPT)
            .arg(1)
            .arg(&keys.nodes)
            .arg(&keys.node_prefix)
            .query_async(connection),
    )
    .await?;
    Ok(figures
        .iter()
        .filter_map(|f| serde_json::from_str(f).ok())
        .collect())
}

/// What a heartbeat does besides beating: pruning the set of nodes, deleting what dead
/// runs left, and every third of a session record's time to live, the refresh of this
/// node's records.
async fn refresh(shared: &Shared, broker: &WeakBroker, beats: &mut u64) -> Result<(), EngineError> {
    let keys = shared.keys()?;
    let mut connection = shared.connect().await?;
    // Reading the nodes' figures also forgets the nodes whose heartbeat expired.
    let nodes = read_nodes(keys, &mut connection).await?;
    let routes = nodes
        .into_iter()
        .filter_map(|node| {
            let tag = node.owner.rsplit_once('/')?.1.into();
            Some(Route {
                tag,
                owner: node.owner.into(),
                url: node.url?.into(),
            })
        })
        .collect();
    *shared.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
    let reaped: usize = with_timeout(
        redis::cmd("EVAL")
            .arg(REAP_SCRIPT)
            .arg(2)
            .arg(&keys.runs)
            .arg(&keys.sessions)
            .arg(&keys.owned_prefix)
            .arg(&keys.session_prefix)
            .arg(keys.grace)
            .arg(REFRESH_BATCH)
            .query_async(&mut connection),
    )
    .await?;
    if reaped > 0 {
        tracing::debug!(reaped, "sessions of a dead node forgotten");
    }
    let every = (keys.session_ttl / 3 / HEARTBEAT.as_millis() as u64).max(1);
    if !beats.is_multiple_of(every) {
        return Ok(());
    }
    let Some(ids) = broker.upgrade().map(|node| node.session_ids()) else {
        return Ok(());
    };
    for chunk in ids.chunks(REFRESH_BATCH) {
        let mut script = redis::cmd("EVAL");
        script
            .arg(REFRESH_SCRIPT)
            .arg(chunk.len() + 1)
            .arg(&keys.sessions);
        for id in chunk {
            script.arg(keys.session(id));
        }
        script.arg(keys.session_ttl);
        for id in chunk {
            script.arg(&**id);
        }
        with_timeout(script.query_async::<()>(&mut connection)).await?;
    }
    Ok(())
}

/// A session's weight for a node, the same on every node: the live node with the
/// highest weight serves the sessions of a dead one (FNV-1a over both).
fn rendezvous(client_id: &str, tag: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client_id.bytes().chain([0]).chain(tag.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Listens to the cluster's publishes for as long as the broker lives, reconnecting
/// whenever the pub/sub connection fails or its probe is late.
async fn listen(shared: Arc<Shared>, broker: WeakBroker, mut rebuilds: mpsc::Receiver<Rebuild>) {
    // The number of the last publish fanned out; `None` before the first connection.
    let mut cursor: Option<u64> = None;
    let mut ring = VecDeque::with_capacity(RING);
    loop {
        let listened = listen_once(&shared, &broker, &mut cursor, &mut ring, &mut rebuilds);
        if let Err(error) = listened.await {
            if shared.listening.swap(false, Ordering::Relaxed) {
                tracing::warn!(%error, "lost the Redis pub/sub connection; reconnecting");
            } else {
                tracing::debug!(%error, "Redis pub/sub not reachable yet");
            }
        }
        if broker.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// One pub/sub connection's life: subscribe, catch up on what was missed, then fan out
/// every publish in order until the connection fails.
async fn listen_once(
    shared: &Shared,
    broker: &WeakBroker,
    cursor: &mut Option<u64>,
    ring: &mut VecDeque<Carried>,
    rebuilds: &mut mpsc::Receiver<Rebuild>,
) -> Result<(), EngineError> {
    let keys = shared.keys()?;
    let mut connection = shared.connect().await?;
    let sharded = has_sharded_pubsub(&mut connection).await;
    if shared.sharded.swap(sharded, Ordering::Relaxed) != sharded || cursor.is_none() {
        tracing::info!(sharded, "Redis pub/sub: {}", shared.publish_command());
    }
    let mut subscription =
        Subscription::open(shared, &[&keys.live, &keys.control], sharded).await?;
    let newest: Option<u64> = with_timeout(
        redis::cmd("GET")
            .arg(&keys.seq)
            .query_async(&mut connection),
    )
    .await?;
    let newest = newest.unwrap_or(0);
    match *cursor {
        Some(last) if newest >= last => {
            catch_up(keys, &mut connection, broker, last, newest, ring).await?;
            drop_claimed(keys, &mut connection, broker).await?;
        }
        Some(last) => tracing::warn!(
            last,
            newest,
            "Redis lost its log (restarted without persistence?): numbering starts anew"
        ),
        None => {}
    }
    *cursor = Some(newest);
    shared.listening.store(true, Ordering::Relaxed);
    let mut probe = tokio::time::Instant::now() + PROBE_TIMEOUT;
    loop {
        let (channel, payload) = tokio::select! {
            message = subscription.next() => message?,
            Some(rebuild) = rebuilds.recv() => {
                let last = cursor.unwrap_or(0);
                let rebuilt = rebuild_session(keys, &mut connection, broker, rebuild.state, last);
                let _ = rebuild.done.send(rebuilt.await?);
                continue;
            }
            () = tokio::time::sleep_until(probe) => {
                return Err(EngineError::Unavailable("pub/sub probe overdue".into()));
            }
        };
        probe = tokio::time::Instant::now() + PROBE_TIMEOUT;
        if channel != keys.live.as_bytes() {
            control(shared, broker, &payload, cursor.unwrap_or(0), ring);
            continue;
        }
        let Some(carried) = Carried::parse(payload) else {
            tracing::warn!("unreadable publish on the Redis channel; skipped");
            continue;
        };
        let last = cursor.unwrap_or(0);
        if carried.seq <= last {
            continue;
        }
        if carried.seq > last + 1 {
            catch_up(keys, &mut connection, broker, last, carried.seq - 1, ring).await?;
        }
        *cursor = Some(carried.seq);
        deliver(broker, carried, ring);
    }
}

/// Whether the server has sharded pub/sub (Redis 7, Valkey). One that does not say (an ACL
/// forbids `COMMAND`) is taken not to.
async fn has_sharded_pubsub(connection: &mut ConnectionManager) -> bool {
    let mut info = redis::cmd("COMMAND");
    info.arg("INFO").arg("SPUBLISH");
    matches!(with_timeout(info.query_async::<redis::Value>(connection)).await,
        Ok(redis::Value::Array(entries)) if entries.first().is_some_and(|e| *e != redis::Value::Nil))
}

/// The listening connection. It speaks RESP3, so what it hears arrives as pushes, on a
/// bounded channel: a listener that falls [`PUSH_BACKLOG`] behind is replaced, and reads
/// what it missed from the log. Sharded pub/sub where the server has it: a Redis Cluster
/// carries a shard channel on the one shard of its slot (every channel here is in
/// `{bus}`'s) instead of broadcasting it to every node.
struct Subscription {
    /// Held so that it stays open; pushes come on `pushes`.
    _connection: MultiplexedConnection,
    pushes: mpsc::Receiver<PushInfo>,
    /// A push found the channel full and was dropped.
    overflowed: Arc<AtomicBool>,
}

impl Subscription {
    async fn open(
        shared: &Shared,
        channels: &[&str],
        sharded: bool,
    ) -> Result<Subscription, EngineError> {
        let (sender, pushes) = mpsc::channel(PUSH_BACKLOG);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_push_sender(move |push: PushInfo| {
                sender
                    .try_send(push)
                    .map_err(|_| flag.store(true, Ordering::Relaxed))
            });
        let mut connection = with_timeout(
            shared
                .resp3
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        if sharded {
            for channel in channels {
                // One channel per command: its one confirmation is the command's reply.
                let subscribe = redis::cmd("SSUBSCRIBE").arg(*channel).clone();
                with_timeout(subscribe.query_async::<()>(&mut connection)).await?;
            }
        } else {
            with_timeout(connection.subscribe(channels)).await?;
        }
        Ok(Subscription {
            _connection: connection,
            pushes,
            overflowed,
        })
    }

    /// The next message heard: its channel and payload. Cancel-safe.
    async fn next(&mut self) -> Result<(Vec<u8>, Vec<u8>), EngineError> {
        let closed = || EngineError::Unavailable("pub/sub connection closed".into());
        loop {
            let push = self.pushes.recv().await.ok_or_else(closed)?;
            if self.overflowed.load(Ordering::Relaxed) {
                return Err(EngineError::Unavailable(
                    "pub/sub listener fell behind".into(),
                ));
            }
            match push.kind {
                PushKind::Message | PushKind::SMessage => {
                    let mut data = push.data.into_iter();
                    if let (
                        Some(redis::Value::BulkString(channel)),
                        Some(redis::Value::BulkString(payload)),
                    ) = (data.next(), data.next())
                    {
                        return Ok((channel, payload));
                    }
                }
                // A Redis Cluster unsubscribes a shard channel whose slot moved away.
                PushKind::Disconnection | PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                    return Err(closed());
                }
                _ => {} // Confirmations.
            }
        }
    }
}

/// A message on this node's control channel: the probe, a request for the state of a
/// session this node serves, or the state of a session it claimed. `cursor` is the last
/// publish fanned out here, and `ring` the publishes before it.
fn control(
    shared: &Shared,
    broker: &WeakBroker,
    payload: &[u8],
    cursor: u64,
    ring: &VecDeque<Carried>,
) {
    let mut parts = payload.splitn(3, |&b| b == b'\n');
    let (kind, client_id, rest) = (parts.next(), parts.next(), parts.next());
    fn text(part: Option<&[u8]>) -> Option<&str> {
        part.and_then(|p| std::str::from_utf8(p).ok())
    }
    let (Some(node), Some(client_id)) = (broker.upgrade(), text(client_id)) else {
        return; // The probe: it only proves the connection delivers.
    };
    match kind {
        Some(b"handover") => {
            let Some((to, superseded)) = text(rest).map(|r| r.split_once('\n').unwrap_or((r, "0")))
            else {
                return;
            };
            let state = match node.hand_over(client_id, to, superseded == "1") {
                HandOver::Now(state) => Some(*state),
                HandOver::Absent => None,
                HandOver::Later => return, // Sent when its requests here are done.
            };
            send_state(shared, client_id, to, state.as_ref());
        }
        Some(b"kick") => {
            node.disconnect(client_id);
        }
        Some(b"handed") => {
            let waiter = shared
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(client_id);
            let state: Option<SessionHandover> = rest.and_then(|r| serde_json::from_slice(r).ok());
            let taken = match (waiter, state) {
                (Some(waiter), Some(state)) => {
                    let handed_at = state.cursor;
                    let since = ring
                        .iter()
                        .skip_while(|c| c.seq <= handed_at)
                        .map(Carried::publish);
                    let complete =
                        handed_at >= cursor || ring.front().is_some_and(|c| c.seq <= handed_at + 1);
                    if complete {
                        node.take_over(state, &since.collect::<Vec<_>>());
                    } else {
                        tracing::warn!(%client_id, "session state too old to complete; lost");
                    }
                    let _ = waiter.send(complete);
                    return;
                }
                (Some(waiter), None) => waiter,
                (None, _) => return, // The claim gave up waiting: the session is lost.
            };
            let _ = taken.send(false);
        }
        _ => {}
    }
}

/// Sends the state of `client_id` (`None` when this node does not have it) to the node
/// that claimed it. Does not wait.
fn send_state(shared: &Shared, client_id: &str, to: &str, state: Option<&SessionHandover>) {
    let state = state.map_or_else(String::new, |s| {
        serde_json::to_string(s).unwrap_or_default()
    });
    let (Ok(keys), Ok(mut connection)) = (shared.keys(), shared.connection()) else {
        return;
    };
    let channel = format!("{}{to}", keys.control_prefix);
    let message = format!("handed\n{client_id}\n{state}");
    let mut publish = redis::cmd(shared.publish_command());
    tokio::spawn(async move {
        publish.arg(&channel).arg(message);
        if let Err(error) = with_timeout(publish.query_async::<()>(&mut connection)).await {
            tracing::warn!(%error, "a session's state could not be handed over");
        }
    });
}

/// After this node was cut off, forgets the sessions that other nodes claimed (or
/// declared lost) meanwhile: the requests for them that come back here claim them anew.
async fn drop_claimed(
    keys: &NodeKeys,
    connection: &mut ConnectionManager,
    broker: &WeakBroker,
) -> Result<(), EngineError> {
    let Some(node) = broker.upgrade() else {
        return Ok(());
    };
    let ids = node.session_ids();
    for chunk in ids.chunks(REFRESH_BATCH) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HGET").arg(keys.session(id)).arg("owner");
        }
        let owners: Vec<Option<String>> = with_timeout(pipe.query_async(connection)).await?;
        for (id, owner) in chunk.iter().zip(owners) {
            // No record at all: an in-process session, or one declared lost, which its
            // client no longer uses; it expires here by itself.
            let elsewhere = owner.is_some_and(|owner| *owner != *keys.owner);
            if elsewhere && node.forget_moved(id) {
                tracing::info!(client_id = %id, "session served elsewhere since this node was cut off; forgotten here");
            }
        }
    }
    Ok(())
}

/// Rebuilds a session of a dead node from its checkpoint: what was published after
/// `state.cursor` (everything up to it was acknowledged) up to `upto` (the last publish
/// fanned out here), read from the log and matched by [`crate::Broker::take_over`].
/// False when the log no longer reaches back that far.
async fn rebuild_session(
    keys: &NodeKeys,
    connection: &mut ConnectionManager,
    broker: &WeakBroker,
    state: SessionHandover,
    upto: u64,
) -> Result<bool, EngineError> {
    let Some(node) = broker.upgrade() else {
        return Ok(false);
    };
    let mut since = Vec::new();
    let mut next = state.cursor;
    while next < upto {
        let entries = read_log(keys, connection, next, upto).await?;
        let first = entries.first().and_then(|(id, _)| id.split('-').next());
        if first.and_then(|f| f.parse::<u64>().ok()) != Some(next + 1) {
            tracing::warn!(client_id = %state.client_id, "the log no longer reaches the session's last acknowledgement");
            return Ok(false);
        }
        for (id, fields) in entries {
            if let Some(carried) = Carried::from_log(&id, fields) {
                next = carried.seq;
                since.push(carried);
            }
        }
    }
    let since: Vec<Publish<'_>> = since.iter().map(Carried::publish).collect();
    tracing::info!(client_id = %state.client_id, publishes = since.len(),
        "session of a dead node rebuilt from its checkpoint");
    node.take_over(state, &since);
    Ok(true)
}

/// One page (at most [`CATCH_UP_BATCH`]) of the log's entries after `after`, up to
/// `upto`: `(id, [field, value, …])`.
async fn read_log(
    keys: &NodeKeys,
    connection: &mut ConnectionManager,
    after: u64,
    upto: u64,
) -> Result<Vec<(String, Vec<Vec<u8>>)>, EngineError> {
    with_timeout(
        redis::cmd("XRANGE")
            .arg(&keys.log)
            .arg(format!("({after}-0"))
            .arg(format!("{upto}-0"))
            .arg("COUNT")
            .arg(CATCH_UP_BATCH)
            .query_async(connection),
    )
    .await
}

/// Fans out publishes `after + 1 ..= upto` from the log.
async fn catch_up(
    keys: &NodeKeys,
    connection: &mut ConnectionManager,
    broker: &WeakBroker,
    after: u64,
    upto: u64,
    ring: &mut VecDeque<Carried>,
) -> Result<(), EngineError> {
    let mut next = after;
    while next < upto {
        let entries = read_log(keys, connection, next, upto).await?;
        if entries.is_empty() {
            tracing::warn!(
                missed = upto - next,
                "publishes trimmed from the Redis log before this node read them"
            );
            return Ok(());
        }
        for (id, fields) in entries {
            let Some(carried) = Carried::from_log(&id, fields) else {
                continue;
            };
            if carried.seq > next + 1 {
                tracing::warn!(
                    missed = carried.seq - next - 1,
                    "publishes trimmed from the Redis log before this node read them"
                );
            }
            next = carried.seq;
            deliver(broker, carried, ring);
        }
    }
    Ok(())
}

/// Fans `carried` out to this node's sessions and remembers it in `ring`.
fn deliver(broker: &WeakBroker, carried: Carried, ring: &mut VecDeque<Carried>) {
    if let Some(node) = broker.upgrade() {
        node.deliver_from_engine(&carried.publish());
    }
    if ring.len() == RING {
        ring.pop_front();
    }
    ring.push_back(carried);
}

impl Carried {
    fn publish(&self) -> Publish<'_> {
        Publish {
            origin: &self.origin,
            channel: &self.channel,
            bytes: &self.bytes,
            publisher: Some(self.publisher.as_str()).filter(|p| !p.is_empty()),
            seq: self.seq,
        }
    }

    /// `seq \n origin \n publisher \n channel \n message`, as the publish script sends it
    /// (channel names and node ids hold no newline). The message keeps the payload's
    /// buffer: it is fanned out as it came, without a copy.
    fn parse(payload: Vec<u8>) -> Option<Carried> {
        let mut parts = payload.splitn(5, |&b| b == b'\n');
        let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let text = |part: &[u8]| std::str::from_utf8(part).ok().map(str::to_string);
        let origin = text(parts.next()?)?;
        let publisher = text(parts.next()?)?;
        let channel = text(parts.next()?)?;
        let start = payload.len() - parts.next()?.len();
        let bytes = Bytes::from(payload).slice(start..);
        Some(Carried {
            seq,
            origin,
            publisher,
            channel,
            bytes,
        })
    }

    /// A log entry: id `seq-0`, fields `o`, `c`, `p`, `b` in that order.
    fn from_log(id: &str, fields: Vec<Vec<u8>>) -> Option<Carried> {
        let seq = id.split('-').next()?.parse().ok()?;
        let mut values = fields.into_iter().skip(1).step_by(2);
        let mut text = || values.next().and_then(|v| String::from_utf8(v).ok());
        let origin = text()?;
        let channel = text()?;
        let publisher = text()?;
        let bytes = Bytes::from(text()?);
        Some(Carried {
            seq,
            origin,
            publisher,
            channel,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carried_publish_reads_back_whole() {
        let carried =
            Carried::parse(b"42\nn1\nabc\n/chat/a\n{\"data\":\"x\ny\"}".to_vec()).unwrap();
        assert_eq!(carried.seq, 42);
        assert_eq!(carried.origin, "n1");
        assert_eq!(carried.publisher, "abc");
        assert_eq!(carried.channel, "/chat/a");
        assert_eq!(&carried.bytes[..], b"{\"data\":\"x\ny\"}");
        assert!(Carried::parse(b"x\nn1\n\n/a\n{}".to_vec()).is_none());
        assert!(Carried::parse(b"1\nn1\n/a".to_vec()).is_none());
    }

    #[test]
    fn a_log_entry_reads_back_whole() {
        let fields = ["o", "n2", "c", "/a/b", "p", "", "b", "{}"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let carried = Carried::from_log("7-0", fields).unwrap();
        assert_eq!(
            (
                carried.seq,
                carried.origin.as_str(),
                carried.channel.as_str()
            ),
            (7, "n2", "/a/b")
        );
        assert!(carried.publisher.is_empty());
    }
}
