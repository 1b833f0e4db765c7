//! The engine seam: publishes leave through the engine once and enter other nodes
//! through `deliver_from_engine`, and interest changes are reported.

use std::sync::atomic::AtomicUsize;

use super::*;
use crate::engine::{Confirmation, Engine, EngineError, Interest, MemoryEngine, Publish};

/// Counts the publishes its hook sees on one node.
#[derive(Clone, Default)]
struct CountingHook(Arc<AtomicUsize>);

impl MessageHook for CountingHook {
    fn outgoing(&self, message: &mut Message) -> bool {
        self.0.fetch_add(1, Ordering::SeqCst);
        // Changes made here must reach every node's subscribers.
        message.ext = serde_json::value::to_raw_value(&json!({"stamped": true})).ok();
        true
    }
}

fn node(engine: &MemoryEngine) -> (Broker, CountingHook) {
    let config = Config {
        timeout: 5_000,
        max_interval: 2_000,
        ..Config::default()
    };
    let broker = Broker::with_engine(config, &["long-polling"], Arc::new(engine.clone()));
    let hook = CountingHook::default();
    broker.add_hook(hook.clone());
    (broker, hook)
}

async fn received(broker: &Broker, client_id: &str) -> Vec<Value> {
    let reply = send(
        broker,
        json!([{"id": "r", "channel": "/meta/connect", "clientId": client_id, "advice": {"timeout": 0}}]),
    )
    .await;
    reply
        .into_iter()
        .filter(|m| m["channel"] != "/meta/connect")
        .collect()
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_the_other_through_the_engine_once_with_hooks_run_once() {
    let engine = MemoryEngine::default();
    let (a, hook_a) = node(&engine);
    let (b, hook_b) = node(&engine);
    assert_ne!(a.node_id(), b.node_id());
    let publisher = session(&a).await;
    let near = session(&a).await;
    let far = session(&b).await;
    subscribe(&a, &near, "/news/*").await;
    subscribe(&b, &far, "/news/**").await;

    let reply = publish(&a, &publisher, "/news/today", json!(1)).await;
    assert_eq!(reply[0]["successful"], true, "{reply:?}");
    assert_eq!(
        a.publish("/news/today", &json!(2)),
        Ok(1),
        "one local recipient"
    );

    let expected = |n: i64| json!({"channel": "/news/today", "data": n, "ext": {"stamped": true}});
    assert_eq!(received(&a, &near).await, [expected(1), expected(2)]);
    assert_eq!(received(&b, &far).await, [expected(1), expected(2)]);
    assert_eq!(
        received(&b, &far).await,
        Vec::<Value>::new(),
        "exactly once"
    );
    assert_eq!(
        hook_a.0.load(Ordering::SeqCst),
        2,
        "hooks ran on the origin"
    );
    assert_eq!(hook_b.0.load(Ordering::SeqCst), 0, "and nowhere else");
    assert_eq!((a.stats().published, b.stats().published), (2, 0));
    assert_eq!((a.stats().delivered, b.stats().delivered), (2, 2));

    // The other way, and nothing loops back to the origin.
    let reply = publish(&b, &far, "/news/tomorrow", json!(3)).await;
    assert_eq!(
        reply.last().expect("reply")["successful"],
        true,
        "{reply:?}"
    );
    assert_eq!(received(&a, &near).await.len(), 1);
    assert_eq!(b.stats().published, 1);
    let origin = b.node_id().to_string();
    let bytes = Bytes::from_static(br#"{"channel":"/news/x","data":0}"#);
    let echo = Publish {
        origin: &origin,
        channel: "/news/x",
        bytes: &bytes,
        publisher: None,
        seq: 0,
    };
    assert_eq!(
        b.deliver_from_engine(&echo),
        0,
        "a node ignores its own publish"
    );
    assert_eq!(a.deliver_from_engine(&echo), 1);
}

#[tokio::test]
async fn the_publisher_is_skipped_on_every_node_when_broadcast_to_publisher_is_off() {
    let engine = MemoryEngine::default();
    let config = Config {
        broadcast_to_publisher: false,
        ..Config::default()
    };
    let a = Broker::with_engine(config.clone(), &["long-polling"], Arc::new(engine.clone()));
    let b = Broker::with_engine(config, &["long-polling"], Arc::new(engine.clone()));
    let publisher = session(&a).await;
    let other = session(&b).await;
    subscribe(&a, &publisher, "/room").await;
    subscribe(&b, &other, "/room").await;
    let reply = publish(&a, &publisher, "/room", json!("hi")).await;
    assert_eq!(reply.len(), 1, "no copy for the publisher: {reply:?}");
    assert_eq!(received(&b, &other).await.len(), 1);
}

/// Records the interest changes a broker reports.
#[derive(Default)]
struct RecordingEngine {
    interest: Mutex<Vec<(String, Interest)>>,
    refuse: AtomicBool,
}

impl Engine for RecordingEngine {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn attach(&self, _node: WeakBroker) {}

    fn publish(&self, _publish: &Publish<'_>) -> Result<Option<Confirmation>, EngineError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(EngineError::Unavailable("test".into()));
        }
        Ok(None)
    }

    fn interest(&self, pattern: &str, change: Interest) {
        let mut interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
        interest.push((pattern.to_string(), change));
    }
}

#[tokio::test]
async fn interest_is_reported_for_the_first_and_last_local_subscriber_of_a_pattern() {
    let engine = Arc::new(RecordingEngine::default());
    let broker = Broker::with_engine(Config::default(), &["long-polling"], engine.clone());
    let taken = || std::mem::take(&mut *engine.interest.lock().expect("lock"));
    let one = session(&broker).await;
    let two = session(&broker).await;
    subscribe(&broker, &one, "/a/*").await;
    subscribe(&broker, &two, "/a/*").await;
    subscribe(&broker, &two, "/b").await;
    assert_eq!(
        taken(),
        [
            ("/a/*".into(), Interest::First),
            ("/b".into(), Interest::First)
        ]
    );
    let unsubscribe = json!([{"id": "u", "channel": "/meta/unsubscribe", "clientId": one, "subscription": "/a/*"}]);
    send(&broker, unsubscribe).await;
    assert_eq!(taken(), [], "another session still wants /a/*");
    // Removal drops every subscription at once.
    assert!(broker.disconnect(&two));
    let mut last = taken();
    last.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        last,
        [
            ("/a/*".into(), Interest::Last),
            ("/b".into(), Interest::Last)
        ]
    );
}

#[tokio::test]
async fn a_publish_the_engine_cannot_carry_fails_and_reaches_nobody() {
    let engine = Arc::new(RecordingEngine::default());
    let broker = Broker::with_engine(Config::default(), &["long-polling"], engine.clone());
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/news").await;
    engine.refuse.store(true, Ordering::SeqCst);
    let reply = publish(&broker, &alice, "/news", json!(1)).await;
    assert_eq!(reply[0]["successful"], false, "{reply:?}");
    assert_eq!(reply[0]["error"], "503::server_unavailable");
    assert_eq!(
        broker.publish("/news", &json!(2)),
        Err(BayeuxError::ServerUnavailable)
    );
    assert_eq!(received(&broker, &bob).await, Vec::<Value>::new());
    assert_eq!(broker.stats().published, 0);
}
