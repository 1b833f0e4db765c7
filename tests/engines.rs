//! One engine test suite, run against the in-memory engine (an in-process cluster of
//! brokers sharing one `MemoryEngine`) and against the Redis engine (brokers on a real
//! `redis-server` that each test starts on a free loopback port, with a key prefix of
//! its own). The Redis-only tests cover what the memory engine does not do: sessions
//! served by any node, a node's death, and Redis going away.
//!
//! `scripts/test` installs Debian's redis-server; without it these tests fail and say so.
//! `scripts/valkey-engine-test` runs the Redis tests against Valkey.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use halley::broker::{LocalSession, Outcome};
use halley::engine::{Engine, MemoryEngine, RedisEngine};
use halley::protocol::message::decode_batch;
use halley::{Broker, Config, RequestContext};
use serde_json::{Value, json};

/// A redis-server of this test's own, stopped (by PID) when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl RedisServer {
    fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server started with extra configuration `args`.
    fn start_with(args: &[&str]) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "halley-engines-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a data directory");
        let mut server = RedisServer {
            child: spawn_redis(port, &dir, args),
            port,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.wait_ready();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL) and starts it again on the same port and data (the
    /// append-only file keeps everything).
    fn restart_after(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = spawn_redis(self.port, &self.dir, &args);
        self.wait_ready();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_ready(&mut self) {
        for _ in 0..100 {
            if self.keys("*").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// The keys matching `pattern`.
    fn keys(&self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        self.query(redis::cmd("KEYS").arg(pattern))
    }

    fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
        command.query(&mut connection)
    }

    /// The channels with subscribers matching `pattern`: shard channels or classic ones.
    fn channels(&self, shard: bool, pattern: &str) -> Vec<String> {
        let kind = if shard { "SHARDCHANNELS" } else { "CHANNELS" };
        self.query(redis::cmd("PUBSUB").arg(kind).arg(pattern))
            .expect("PUBSUB")
    }

    /// How many times the server ran `command` (`INFO commandstats`).
    fn calls(&self, command: &str) -> u64 {
        let info: String = self
            .query(redis::cmd("INFO").arg("commandstats"))
            .expect("INFO");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }
}

/// Debian's redis-server, or the server `HALLEY_TEST_REDIS_SERVER` names (Valkey's, by
/// `scripts/valkey-engine-test`).
fn spawn_redis(port: u16, dir: &std::path::Path, args: &[&str]) -> Child {
    let server =
        std::env::var("HALLEY_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    Command::new(server)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test installs Debian's redis-server)")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a test's nodes come from.
enum Cluster {
    Memory(MemoryEngine),
    Redis(RedisServer, String),
}

impl Cluster {
    fn memory() -> Cluster {
        Cluster::Memory(MemoryEngine::default())
    }

    fn redis(test: &str) -> Cluster {
        Cluster::Redis(RedisServer::start(), format!("halley-test:{test}:"))
    }

    /// A node named `id`, ready to serve.
    async fn node(&self, id: &str) -> Broker {
        self.node_with(id, Config::default()).await
    }

    /// A node named `id` with `config`, ready to serve.
    async fn node_with(&self, id: &str, config: Config) -> Broker {
        let config = Config {
            node_id: Some(id.to_string()),
            sweep_interval: 100,
            ..config
        };
        let engine: Arc<dyn Engine> = match self {
            Cluster::Memory(engine) => Arc::new(engine.clone()),
            Cluster::Redis(server, prefix) => {
                Arc::new(RedisEngine::open(&server.url(), prefix).expect("engine"))
            }
        };
        let broker = Broker::with_engine(config, &["long-polling"], engine);
        broker.spawn_sweeper();
        for _ in 0..100 {
            if broker.engine().is_ready() {
                return broker;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {id} not ready");
    }

    fn server(&mut self) -> &mut RedisServer {
        match self {
            Cluster::Redis(server, _) => server,
            Cluster::Memory(_) => unreachable!("a Redis-only test"),
        }
    }

    fn prefix(&self) -> &str {
        match self {
            Cluster::Redis(_, prefix) => prefix,
            Cluster::Memory(_) => unreachable!("a Redis-only test"),
        }
    }
}

/// Sends one request's batch to `node` and returns the reply's messages.
async fn request(node: &Broker, batch: Value) -> Vec<Value> {
    let mut messages = Vec::new();
    decode_batch(batch.to_string().as_bytes(), &mut messages).expect("a valid batch");
    match node.handle(messages, &RequestContext::default()).await {
        Outcome::Reply(reply) => reply
            .messages
            .iter()
            .map(|m| serde_json::from_slice(m).expect("JSON"))
            .collect(),
        Outcome::Superseded => Vec::new(),
    }
}

async fn handshake(node: &Broker, ack: bool) -> String {
    let reply = request(
        node,
        json!([{"channel": "/meta/handshake", "version": "1.0",
                "supportedConnectionTypes": ["long-polling"], "ext": {"ack": ack}}]),
    )
    .await;
    reply[0]["clientId"]
        .as_str()
        .expect("a clientId")
        .to_string()
}

/// A connect that is not held: the deliveries queued now, and the connect reply.
async fn poll(node: &Broker, client_id: &str) -> (Vec<i64>, Value) {
    let reply = request(
        node,
        json!([{"channel": "/meta/connect", "clientId": client_id,
                "connectionType": "long-polling", "advice": {"timeout": 0}}]),
    )
    .await;
    split(reply)
}

/// The numbers carried by the deliveries of a reply, and its connect reply.
fn split(reply: Vec<Value>) -> (Vec<i64>, Value) {
    let mut numbers = Vec::new();
    let mut connect = Value::Null;
    for message in reply {
        if message["channel"] == "/meta/connect" {
            connect = message;
        } else if let Some(n) = message["data"]["n"].as_i64() {
            numbers.push(n);
        }
    }
    (numbers, connect)
}

/// A server-side publish of `{"n": n}` on `channel`.
fn numbered(channel: &str, n: i64) -> halley::protocol::Message {
    halley::protocol::Message {
        channel: Some(channel.into()),
        data: serde_json::value::to_raw_value(&json!({"n": n})).ok(),
        ..Default::default()
    }
}

/// Everything `session` receives until it has `count` numbers (or 10 s pass).
async fn receive_numbers(session: &mut LocalSession, count: usize) -> Vec<i64> {
    let mut numbers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while numbers.len() < count {
        let Ok(Some(batch)) = tokio::time::timeout_at(deadline, session.receive()).await else {
            break;
        };
        numbers.extend(batch.iter().filter_map(|m| m["data"]["n"].as_i64()));
    }
    numbers
}

async fn every_publish_reaches_every_node_once_in_order(cluster: Cluster) {
    let nodes = [cluster.node("n1").await, cluster.node("n2").await];
    let mut exact = nodes[0].open_local_session(None);
    exact.subscribe("/orders/new").expect("subscribe");
    let mut wild = nodes[1].open_local_session(None);
    wild.subscribe("/orders/**").expect("subscribe");
    // Matched twice on node 2 (two patterns), delivered once.
    wild.subscribe("/orders/*").expect("subscribe");
    // Each publish is confirmed before the next is sent, from alternating nodes: every
    // node sees them in that order.
    for n in 0..300 {
        let node = &nodes[n % 2];
        node.publish_message(numbered("/orders/new", n as i64))
            .await
            .expect("publish");
    }
    let expected: Vec<i64> = (0..300).collect();
    assert_eq!(receive_numbers(&mut exact, 300).await, expected);
    assert_eq!(receive_numbers(&mut wild, 300).await, expected);
}

async fn a_session_publish_reaches_the_other_node(cluster: Cluster) {
    let nodes = [cluster.node("n1").await, cluster.node("n2").await];
    let mut other = nodes[1].open_local_session(None);
    other.subscribe("/room").expect("subscribe");
    let mut publisher = nodes[0].open_local_session(None);
    publisher.subscribe("/room").expect("subscribe");
    publisher
        .publish("/room", &json!({"n": 1}))
        .expect("publish");
    assert_eq!(receive_numbers(&mut other, 1).await, vec![1]);
    // Its own copy too (broadcast_to_publisher is on by default), once.
    assert_eq!(receive_numbers(&mut publisher, 1).await, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_every_publish_reaches_every_node_once_in_order() {
    every_publish_reaches_every_node_once_in_order(Cluster::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_every_publish_reaches_every_node_once_in_order() {
    every_publish_reaches_every_node_once_in_order(Cluster::redis("order")).await;
}

/// Sharded pub/sub where the server has it (Redis 7, Valkey): every node `SSUBSCRIBE`s,
/// and publishes, the probes and the control messages go by `SPUBLISH`. A server without
/// it (here one whose `SPUBLISH` is renamed away) gets classic pub/sub, and the same
/// order and exactly-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_is_sharded_where_the_server_has_it_and_classic_otherwise() {
    for (sharded, args) in [
        (true, &[][..]),
        (
            false,
            &["--rename-command", "SPUBLISH", "SPUBLISH-renamed"][..],
        ),
    ] {
        let cluster = Cluster::Redis(RedisServer::start_with(args), "halley-test:pubsub:".into());
        let nodes = [cluster.node("n1").await, cluster.node("n2").await];
        let mut listener = nodes[1].open_local_session(None);
        listener.subscribe("/orders/*").expect("subscribe");
        for n in 0..50 {
            nodes[n % 2]
                .publish_message(numbered("/orders/new", n as i64))
                .await
                .expect("publish");
        }
        let expected: Vec<i64> = (0..50).collect();
        assert_eq!(receive_numbers(&mut listener, 50).await, expected);

        let server = match &cluster {
            Cluster::Redis(server, _) => server,
            Cluster::Memory(_) => unreachable!(),
        };
        let pattern = format!("{}*", cluster.prefix());
        let live = format!("{}{{bus}}:live", cluster.prefix());
        // The channel every node listens on, and each node's control channel.
        let (listened, unused) = (
            server.channels(sharded, &pattern),
            server.channels(!sharded, &pattern),
        );
        assert!(
            listened.contains(&live),
            "{listened:?} (sharded: {sharded})"
        );
        assert_eq!(listened.len(), 3, "{listened:?}");
        assert!(unused.is_empty(), "{unused:?}");
        let (used, other) = if sharded {
            ("spublish", "publish")
        } else {
            ("publish", "spublish")
        };
        // Publishes and probes run inside scripts, whose commands the server counts too.
        assert!(server.calls(used) >= 50, "{used}: {}", server.calls(used));
        assert_eq!(
            server.calls(other),
            0,
            "{other} called (sharded: {sharded})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_session_publish_reaches_the_other_node() {
    a_session_publish_reaches_the_other_node(Cluster::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_session_publish_reaches_the_other_node() {
    a_session_publish_reaches_the_other_node(Cluster::redis("skip")).await;
}

/// A session whose requests land on alternating nodes (a round-robin load balancer)
/// gets every publish once, in order, while it moves at every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_session_served_by_alternating_nodes_loses_nothing() {
    let cluster = Cluster::redis("moving");
    let nodes = [cluster.node("n1").await, cluster.node("n2").await];
    let client_id = handshake(&nodes[0], false).await;
    let subscribed = request(
        &nodes[1],
        json!([{"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/feed/*"}]),
    )
    .await;
    assert_eq!(subscribed[0]["successful"], true, "{subscribed:?}");
    let publisher = nodes[0].open_local_session(None);
    let mut received = Vec::new();
    for n in 0..200 {
        publisher
            .publish("/feed/a", &json!({"n": n}))
            .expect("publish");
        if n % 10 == 9 {
            let (numbers, connect) = poll(&nodes[(n / 10) % 2], &client_id).await;
            assert_eq!(connect["successful"], true, "{connect}");
            received.extend(numbers);
        }
    }
    for attempt in 0..50 {
        if received.len() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        received.extend(poll(&nodes[attempt % 2], &client_id).await.0);
    }
    assert_eq!(received, (0..200).collect::<Vec<i64>>());
}

/// A held connect on one node is answered (empty) as soon as a request of its session
/// lands on another node, so the client's next connect goes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_held_connect_is_released_when_the_session_moves() {
    let cluster = Cluster::redis("held");
    let nodes = [cluster.node("n1").await, cluster.node("n2").await];
    let client_id = handshake(&nodes[0], false).await;
    poll(&nodes[0], &client_id).await;
    let held = {
        let (node, client_id) = (nodes[0].clone(), client_id.clone());
        tokio::spawn(async move {
            request(
                &node,
                json!([{"channel": "/meta/connect", "clientId": client_id,
                        "connectionType": "long-polling"}]),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "the connect is held");
    let published = request(
        &nodes[1],
        json!([{"channel": "/x", "clientId": client_id, "data": {"n": 1}}]),
    )
    .await;
    assert_eq!(published[0]["successful"], true, "{published:?}");
    let answered = tokio::time::timeout(Duration::from_secs(2), held)
        .await
        .expect("the held connect is answered")
        .expect("task");
    assert_eq!(
        answered.last().map(|m| &m["successful"]),
        Some(&json!(true))
    );
}

/// A node that dies takes the state of its sessions with it: their clients are told
/// `402::session_unknown` on the next request elsewhere, and nothing is left in Redis
/// once the sessions and the node's heartbeat have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_session_of_a_dead_node_is_unknown_and_leaves_no_keys() {
    let cluster = Cluster::redis("dead");
    let survivor = cluster.node("n2").await;
    let baseline = cluster
        .server_keys(cluster.prefix())
        .into_iter()
        .filter(|k| !k.contains("node:"))
        .count();
    let dying = cluster.node("n1").await;
    let client_id = handshake(&dying, false).await;
    poll(&dying, &client_id).await;
    drop(dying); // Its tasks stop: no more heartbeats, no handover.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let (_, connect) = poll(&survivor, &client_id).await;
    assert_eq!(connect["successful"], false, "{connect}");
    assert_eq!(connect["error"], "402::session_unknown");
    assert_eq!(connect["advice"]["reconnect"], "handshake");
    let left: Vec<String> = cluster
        .server_keys(cluster.prefix())
        .into_iter()
        .filter(|k| !k.contains("node:"))
        .collect();
    assert_eq!(left.len(), baseline, "keys left: {left:?}");
}

impl Cluster {
    fn server_keys(&self, prefix: &str) -> Vec<String> {
        match self {
            Cluster::Redis(server, _) => server.keys(&format!("{prefix}*")).expect("KEYS"),
            Cluster::Memory(_) => Vec::new(),
        }
    }
}

/// While Redis is away a publish is refused (never acknowledged and dropped) and the node
/// is not ready; once Redis is back the node recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_fails_publishes_and_coming_back_heals() {
    let mut cluster = Cluster::redis("outage");
    let nodes = [cluster.node("n1").await, cluster.node("n2").await];
    let mut listener = nodes[1].open_local_session(None);
    listener.subscribe("/ticks").expect("subscribe");
    nodes[0]
        .publish("/ticks", &json!({"n": 1}))
        .expect("publish");
    assert_eq!(receive_numbers(&mut listener, 1).await, vec![1]);

    cluster.server().kill();
    let message = |n: i64| numbered("/ticks", n);
    let mut refused = false;
    for _ in 0..40 {
        if nodes[0].publish_message(message(2)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "a publish with Redis down is refused");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(
        !nodes[0].engine().is_ready(),
        "not ready while Redis is down"
    );

    cluster.server().restart_after(Duration::ZERO);
    let mut healed = false;
    for _ in 0..100 {
        if nodes.iter().all(|n| n.engine().is_ready()) {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healed, "both nodes ready again");
    nodes[0]
        .publish_message(message(3))
        .await
        .expect("a publish once Redis is back");
    assert_eq!(receive_numbers(&mut listener, 1).await, vec![3]);
}

/// A connect of an ack-extension session that acknowledges `ack` (none on the first):
/// the deliveries it brings, and the connect reply (whose `ext.ack` numbers its batch).
async fn ack_poll(node: &Broker, client_id: &str, ack: Option<i64>) -> (Vec<i64>, Value) {
    let ext = ack.map_or(json!({}), |ack| json!({"ack": ack}));
    let reply = request(
        node,
        json!([{"channel": "/meta/connect", "clientId": client_id,
                "connectionType": "long-polling", "advice": {"timeout": 0}, "ext": ext}]),
    )
    .await;
    split(reply)
}

fn batch_of(connect: &Value) -> i64 {
    connect["ext"]["ack"].as_i64().expect("an ack batch number")
}

/// The node serving an ack-extension session dies with a batch sent but not
/// acknowledged (its reply lost with the node), and more is published while it is dead:
/// the next connect, on another node, gets that batch again and everything after it,
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_ack_session_of_a_dead_node_loses_nothing_and_repeats_nothing() {
    let cluster = Cluster::redis("ack-dead");
    let survivor = cluster.node("n2").await;
    let dying = cluster.node("n1").await;
    let client_id = handshake(&dying, true).await;
    let subscribed = request(
        &dying,
        json!([{"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/seq"}]),
    )
    .await;
    assert_eq!(subscribed[0]["successful"], true, "{subscribed:?}");
    let (_, first) = ack_poll(&dying, &client_id, None).await;
    let publisher = survivor.open_local_session(None);
    let publish = |range: std::ops::Range<i64>| {
        for n in range {
            publisher
                .publish("/seq", &json!({"n": n}))
                .expect("publish");
        }
    };
    let settle = || tokio::time::sleep(Duration::from_millis(300));

    publish(0..30);
    settle().await;
    let (mut received, acked) = ack_poll(&dying, &client_id, Some(batch_of(&first))).await;
    assert_eq!(received, (0..30).collect::<Vec<i64>>());
    publish(30..60);
    settle().await;
    // This batch is sent, but its reply is lost with the node: never acknowledged.
    let (lost, _) = ack_poll(&dying, &client_id, Some(batch_of(&acked))).await;
    assert_eq!(lost, (30..60).collect::<Vec<i64>>());
    drop(dying);
    publish(60..100);
    tokio::time::sleep(Duration::from_millis(5_500)).await;

    let (again, connect) = ack_poll(&survivor, &client_id, Some(batch_of(&acked))).await;
    assert_eq!(connect["successful"], true, "{connect}");
    received.extend(again);
    assert_eq!(received, (0..100).collect::<Vec<i64>>());
    let (more, _) = ack_poll(&survivor, &client_id, Some(batch_of(&connect))).await;
    assert!(more.is_empty(), "nothing twice: {more:?}");
}

/// The demo chat's presence on a cluster: whichever node a join, a leave or a session's
/// end lands on, every node knows the room's members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_the_demo_chat_presence_is_the_same_on_every_node() {
    let cluster = Cluster::redis("presence");
    let nodes = [cluster.node("n1").await, cluster.node("n2").await];
    for node in &nodes {
        halley::demo::install(node);
    }
    let join = |node: usize, client_id: String, name: &'static str| {
        let node = nodes[node].clone();
        async move {
            let reply = request(
                &node,
                json!([{"channel": "/service/chat/join", "clientId": client_id, "id": "1",
                        "data": {"room": "lobby", "name": name}}]),
            )
            .await;
            // In a cluster, deliveries (the service's answer too) ride on connect replies.
            let delivered = request(
                &node,
                json!([{"channel": "/meta/connect", "clientId": client_id,
                        "connectionType": "long-polling", "advice": {"timeout": 0}}]),
            )
            .await;
            let answer = reply
                .iter()
                .chain(&delivered)
                .find(|m| m["id"] == "1" && m["data"].is_object())
                .cloned()
                .unwrap_or_default();
            answer["data"]["members"].clone()
        }
    };
    let ann = handshake(&nodes[0], false).await;
    let bob = handshake(&nodes[1], false).await;
    assert_eq!(join(0, ann.clone(), "ann").await, json!(["ann"]));
    // Bob's node learns of Ann through Redis; joining again changes nothing else.
    let mut members = Value::Null;
    for _ in 0..40 {
        members = join(1, bob.clone(), "bob").await;
        if members == json!(["ann", "bob"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(members, json!(["ann", "bob"]));
    // Ann's session ends on node 2 (her disconnect lands there); node 1 hears of it.
    let left = request(
        &nodes[1],
        json!([{"channel": "/meta/disconnect", "clientId": ann}]),
    )
    .await;
    assert_eq!(left[0]["successful"], true, "{left:?}");
    for _ in 0..40 {
        members = join(0, bob.clone(), "bob").await;
        if members == json!(["bob"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(members, json!(["bob"]));
    // The presence channel is the server's own.
    let refused = request(
        &nodes[0],
        json!([{"channel": "/meta/subscribe", "clientId": bob, "subscription": "/halley/presence"},
               {"channel": "/halley/presence", "clientId": bob, "data": {"op": "leave"}}]),
    )
    .await;
    assert!(
        refused.iter().all(|m| m["successful"] == false),
        "{refused:?}"
    );
}

/// Requests of one session arriving at two nodes at the same time (a held connect on
/// one, a publish on the other, as a round-robin balancer spreads a CometD client): none
/// is refused as unknown, and every publish reaches the session once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrent_requests_of_one_session_on_two_nodes_lose_nothing() {
    let cluster = Cluster::redis("concurrent");
    let nodes = [cluster.node("n1").await, cluster.node("n2").await];
    let client_id = handshake(&nodes[0], false).await;
    request(
        &nodes[0],
        json!([{"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/feed/*"}]),
    )
    .await;
    let publisher = nodes[1].open_local_session(None);
    let mut received = Vec::new();
    let mut refused = Vec::new();
    for round in 0..100i64 {
        publisher
            .publish("/feed/a", &json!({"n": round}))
            .expect("publish");
        let (a, b) = (round as usize % 2, (round as usize + 1) % 2);
        let poll_here = request(
            &nodes[a],
            json!([{"channel": "/meta/connect", "clientId": client_id,
                    "connectionType": "long-polling", "advice": {"timeout": 0}}]),
        );
        let publish_there = request(
            &nodes[b],
            json!([{"channel": "/chat/x", "clientId": client_id, "data": {"note": round}}]),
        );
        let (polled, published) = tokio::join!(poll_here, publish_there);
        for message in polled.iter().chain(published.iter()) {
            if message["successful"] == false {
                refused.push(message.clone());
            }
        }
        received.extend(split(polled).0);
        received.extend(split(published).0);
    }
    for attempt in 0..50 {
        if received.len() >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        received.extend(poll(&nodes[attempt % 2], &client_id).await.0);
    }
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert_eq!(received, (0..100).collect::<Vec<i64>>());
}

/// `max_sessions` holds for the cluster: sessions on one node count on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_the_session_limit_counts_every_node() {
    let cluster = Cluster::redis("limit");
    let limited = || Config {
        max_sessions: 3,
        ..Config::default()
    };
    let nodes = [
        cluster.node_with("n1", limited()).await,
        cluster.node_with("n2", limited()).await,
    ];
    for _ in 0..3 {
        handshake(&nodes[0], false).await;
    }
    // The nodes' figures travel with their heartbeats, once a second.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let reply = request(
        &nodes[1],
        json!([{"channel": "/meta/handshake", "version": "1.0",
                "supportedConnectionTypes": ["long-polling"]}]),
    )
    .await;
    let refused = &reply[0];
    assert_eq!(refused["error"], "503::server_busy", "{refused}");
}

/// A node served over HTTP on a free loopback port; its server stops when dropped.
struct Served {
    broker: Broker,
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Cluster {
    /// A node named `id`, served over HTTP.
    async fn served(&self, id: &str) -> Served {
        let broker = self.node(id).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let serving = halley::server::serve(listener, broker.clone(), std::future::pending());
        let server = tokio::spawn(async move {
            let _ = serving.await;
        });
        Served {
            broker,
            url,
            server,
        }
    }
}

/// Waits until every node knows where every other one is (their heartbeats say).
async fn wait_for_routes(nodes: &[&Served]) {
    for _ in 0..100 {
        let known = nodes.iter().all(|from| {
            nodes.iter().filter(|to| to.url != from.url).all(|to| {
                let someone_of_theirs =
                    format!("{}{}", to.broker.engine().id_tag(), "0".repeat(24));
                from.broker.engine().locate(&someone_of_theirs).as_deref() == Some(&to.url)
            })
        });
        if known {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the nodes did not learn each other's addresses");
}

/// An HTTP request to a node, the way a long-polling client sends it: (status, body).
async fn http(method: &'static str, url: String, body: Option<Value>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = match body {
            Some(body) => agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.to_string()),
            None => {
                assert_eq!(method, "GET");
                agent.get(&url).call()
            }
        }
        .expect("an answer");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("a body");
        (status, text)
    })
    .await
    .expect("the request's task")
}

/// A long-polling POST of `batch` to `node`: the reply's messages.
async fn post(node: &Served, batch: Value) -> Vec<Value> {
    let (status, body) = http("POST", format!("{}/cometd", node.url), Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a JSON reply")
}

/// A connect that is not held, over HTTP: the reply's messages.
async fn poll_over_http(node: &Served, client_id: &str) -> Vec<Value> {
    post(
        node,
        json!([{"channel": "/meta/connect", "clientId": client_id,
                "connectionType": "long-polling", "advice": {"timeout": 0}}]),
    )
    .await
}

fn relays_answered(node: &Served) -> u64 {
    let text = node.broker.metrics().encode().expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("halley_relays_total{outcome=\"answered\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Behind round robin, a long-polling client's requests land on every node. Each is
/// relayed to the node that made the session, over HTTP: the session never moves, and
/// Redis does no work for it (a claim would cost a script and the session's state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_requests_for_a_session_served_elsewhere_are_relayed_to_its_node() {
    let cluster = Cluster::redis("relay");
    let nodes = [
        cluster.served("a").await,
        cluster.served("b").await,
        cluster.served("c").await,
    ];
    let [a, b, c] = &nodes;
    wait_for_routes(&[a, b, c]).await;
    let reply = post(
        a,
        json!([{"channel": "/meta/handshake", "version": "1.0",
                "supportedConnectionTypes": ["long-polling"]}]),
    )
    .await;
    let client_id = reply[0]["clientId"]
        .as_str()
        .expect("a clientId")
        .to_string();
    assert!(
        client_id.starts_with(a.broker.engine().id_tag()),
        "{client_id}"
    );
    let reply = post(
        b,
        json!([{"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/relay"}]),
    )
    .await;
    assert_eq!(reply[0]["successful"], true, "{reply:?}");
    let reply = poll_over_http(c, &client_id).await;
    assert_eq!(reply[0]["successful"], true, "{reply:?}");
    // A connect held through c is answered with what a publish through b brings.
    let held = {
        let url = format!("{}/cometd", c.url);
        let connect = json!([{"channel": "/meta/connect", "clientId": client_id,
                              "connectionType": "long-polling"}]);
        tokio::spawn(http("POST", url, Some(connect)))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the connect is held");
    let reply = post(
        b,
        json!([{"channel": "/relay", "clientId": client_id, "data": {"n": 7}}]),
    )
    .await;
    assert_eq!(reply[0]["successful"], true, "{reply:?}");
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held connect is answered")
        .expect("its task");
    assert_eq!(status, 200, "{body}");
    let (numbers, connect) = split(serde_json::from_str(&body).expect("JSON"));
    assert_eq!(numbers, vec![7]);
    assert_eq!(connect["successful"], true);
    // Callback-polling through b: the script is written by b.
    let message = json!([{"channel": "/meta/connect", "clientId": client_id,
                          "connectionType": "callback-polling", "advice": {"timeout": 0}}]);
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("jsonp", "cb")
        .append_pair("message", &message.to_string())
        .finish();
    let (status, script) = http("GET", format!("{}/cometd?{query}", b.url), None).await;
    assert_eq!(status, 200, "{script}");
    assert!(
        script.starts_with("/**/cb([") && script.contains(r#""successful":true"#),
        "{script}"
    );
    // The session never moved; b and c relayed everything.
    let sessions: Vec<usize> = nodes.iter().map(|n| n.broker.stats().sessions).collect();
    assert_eq!(sessions, vec![1, 0, 0]);
    assert!(relays_answered(b) >= 3 && relays_answered(c) >= 2);
    // An unknown session is still told so, by the node it was relayed to.
    let stranger = format!("{}{}", a.broker.engine().id_tag(), "f".repeat(24));
    let reply = post(
        c,
        json!([{"channel": "/meta/connect", "clientId": stranger,
                "connectionType": "long-polling"}]),
    )
    .await;
    assert_eq!(reply[0]["error"], "402::session_unknown", "{reply:?}");
}

/// A session that moved (a socket opened on another node claims it) is followed there by
/// the node that handed it on; and a node that cannot be reached makes the request fall
/// back to a claim where it landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_relay_follows_a_moved_session_or_falls_back_to_a_claim() {
    let cluster = Cluster::redis("follow");
    let nodes = [
        cluster.served("a").await,
        cluster.served("b").await,
        cluster.served("c").await,
        cluster.served("d").await,
    ];
    let [a, b, c, d] = &nodes;
    wait_for_routes(&[a, b, c, d]).await;
    let client_id = handshake(&a.broker, false).await;
    poll(&c.broker, &client_id).await; // claimed by c, without HTTP
    let sessions = || {
        nodes
            .iter()
            .map(|n| n.broker.stats().sessions)
            .collect::<Vec<_>>()
    };
    assert_eq!(sessions(), vec![0, 0, 1, 0]);
    // b relays to a, which made it; a relays on to c, where it handed it.
    let reply = poll_over_http(b, &client_id).await;
    assert_eq!(reply[0]["successful"], true, "{reply:?}");
    assert_eq!(sessions(), vec![0, 0, 1, 0], "nothing moved");
    assert!(relays_answered(b) == 1 && relays_answered(a) == 1);
    // d stops answering before any relay went to it (the nodes of this test share one
    // process, so one pool of connections): b claims a session d made.
    let made_on_d = handshake(&d.broker, false).await;
    d.server.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = poll_over_http(b, &made_on_d).await;
    assert_eq!(reply[0]["successful"], true, "{reply:?}");
    assert_eq!(sessions(), vec![0, 1, 1, 0], "claimed by b");
}

/// Sessions that no client comes back for leave nothing behind when their node dies:
/// the other nodes delete what the dead run still held once its clients had the time to
/// come back (no record lives on a time to live that needs refreshing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_what_a_dead_node_left_is_deleted_by_the_others() {
    let cluster = Cluster::redis("reap");
    let survivor = cluster.node("n2").await;
    let counted = |cluster: &Cluster| {
        cluster
            .server_keys(cluster.prefix())
            .into_iter()
            .filter(|k| !k.contains("node:") && !k.contains("alive:"))
            .collect::<std::collections::BTreeSet<_>>()
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the survivor's run is known
    let baseline = counted(&cluster);
    let dying = cluster.node("n1").await;
    for ack in [false, true] {
        let client_id = handshake(&dying, ack).await;
        poll(&dying, &client_id).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        counted(&cluster).len() > baseline.len() + 2,
        "the sessions wrote keys"
    );
    drop(dying); // no more beats
    // 15 s (10 s of silence allowed to a client, 5 s for the heartbeat), then a beat; up
    // to 30 s on a busy machine.
    let mut left = std::collections::BTreeSet::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = counted(&cluster);
        if left.len() == baseline.len() {
            break;
        }
    }
    assert_eq!(left, baseline);
    drop(survivor);
}

/// In a cluster, a delivery over HTTP rides only on a connect reply: a reply that goes
/// straight back could otherwise overtake an older connect reply still on its way
/// through the node that relayed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_deliveries_over_http_ride_only_on_connect_replies() {
    let cluster = Cluster::redis("connect-only");
    let node = cluster.node("n1").await;
    let client_id = handshake(&node, false).await;
    poll(&node, &client_id).await;
    let subscribed = request(
        &node,
        json!([{"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/x"}]),
    )
    .await;
    assert_eq!(subscribed[0]["successful"], true, "{subscribed:?}");
    node.publish_message(numbered("/x", 1))
        .await
        .expect("published");
    tokio::time::sleep(Duration::from_millis(300)).await; // queued for the session by now
    // A publish of the session's own: its reply carries the publish's answer only.
    let reply = request(
        &node,
        json!([{"channel": "/y", "clientId": client_id, "data": {"n": 2}}]),
    )
    .await;
    assert_eq!(reply.len(), 1, "{reply:?}");
    assert_eq!(reply[0]["successful"], true, "{reply:?}");
    let (numbers, connect) = poll(&node, &client_id).await;
    assert_eq!(numbers, vec![1]);
    assert_eq!(connect["successful"], true);
}
