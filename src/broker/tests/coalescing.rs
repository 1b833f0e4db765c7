//! Adaptive coalescing on paused time: saturation spaces a busy session's replies, a
//! quiet session is never delayed, calm brings replies back to immediate, and ack
//! sessions, batched connects and `timeout: 0` connects behave as without it.

use super::*;
use crate::broker::coalescing::{CALM_TICKS, Controller, IDLE_TICK, Sample, TICK};

const SATURATED: Duration = Duration::from_millis(30);
const IDLE: Duration = Duration::from_micros(200);

/// Feeds the broker's controller `n` lag samples, as the sampler task does.
fn feed(broker: &Broker, controller: &mut Controller, lag: Duration, n: u32) {
    for _ in 0..n {
        broker
            .shared
            .coalescing
            .set(controller.observe(Sample::lag(lag)));
    }
}

/// A broker with the ceiling these tests count with (the default is lower).
fn ceiling_50() -> Broker {
    broker_with(|c| c.coalescing_ceiling = 50)
}

fn saturated_broker() -> (Broker, Controller) {
    let broker = ceiling_50();
    let mut controller = Controller::new(Duration::from_millis(broker.config().coalescing_ceiling));
    feed(&broker, &mut controller, SATURATED, 10);
    assert_eq!(
        broker.shared.coalescing.interval(),
        Duration::from_millis(50)
    );
    (broker, controller)
}

#[tokio::test(start_paused = true)]
async fn saturated_a_fast_stream_rides_on_fewer_replies_and_a_quiet_session_waits_for_nothing() {
    let (broker, _controller) = saturated_broker();
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/news").await;

    // Bob had no delivery lately: his first goes out at once.
    let held = held_connect(&broker, &bob, "3");
    settle().await;
    let started = Instant::now();
    publish(&broker, &alice, "/news", json!(1)).await;
    assert_eq!(news(&held.await.expect("task")), [json!(1)]);
    assert_eq!(started.elapsed(), Duration::ZERO);

    // A fast stream: what follows within the interval goes out as one reply, 50 ms after
    // the previous one.
    let held = held_connect(&broker, &bob, "4");
    settle().await;
    publish(&broker, &alice, "/news", json!(2)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(&broker, &alice, "/news", json!(3)).await;
    assert_eq!(news(&held.await.expect("task")), [json!(2), json!(3)]);
    assert_eq!(started.elapsed(), Duration::from_millis(50));

    // Quiet for longer than the interval: at once again, though still saturated.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let held = held_connect(&broker, &bob, "5");
    settle().await;
    let started = Instant::now();
    publish(&broker, &alice, "/news", json!(4)).await;
    assert_eq!(news(&held.await.expect("task")), [json!(4)]);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn when_the_load_drops_replies_are_immediate_again_within_a_bounded_time() {
    let (broker, mut controller) = saturated_broker();
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/news").await;
    publish(&broker, &alice, "/news", json!(1)).await;
    assert_eq!(news(&send(&broker, connect(&bob, "3")).await), [json!(1)]);

    // Nine calm runs take 50 ms down to nothing: 2.25 s of samples.
    feed(&broker, &mut controller, IDLE, 9 * CALM_TICKS);
    assert_eq!(broker.shared.coalescing.interval(), Duration::ZERO);
    assert!(TICK * 9 * CALM_TICKS <= Duration::from_millis(2_500));

    // Right after a delivery, the next one goes out at once (saturated, it waited 50 ms).
    publish(&broker, &alice, "/news", json!(2)).await;
    let started = Instant::now();
    assert_eq!(news(&send(&broker, connect(&bob, "4")).await), [json!(2)]);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_event_loop_turns_it_on_and_calm_turns_it_off() {
    let broker = ceiling_50();
    let sampler = broker.spawn_coalescing().expect("adaptive by default");
    settle().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(broker.shared.coalescing.interval(), Duration::ZERO, "idle");
    // Replies with deliveries bring the sampler from its idle tick to its short one.
    for _ in 0..(IDLE_TICK.as_millis() / TICK.as_millis() + 2) {
        broker.shared.coalescing.note_activity();
        tokio::time::sleep(TICK).await;
    }
    // The clock jumps while the sampler cannot run: it wakes 30 ms late, as behind a
    // burst of a thousand woken connects.
    for _ in 0..5 {
        broker.shared.coalescing.note_activity();
        tokio::time::advance(TICK + SATURATED).await;
        settle().await;
    }
    assert_eq!(
        broker.shared.coalescing.interval(),
        Duration::from_millis(50)
    );
    // Operators see it too.
    let gauge = || {
        let text = broker.metrics().encode().expect("encodes");
        text.lines()
            .find_map(|l| l.strip_prefix("halley_coalescing_interval_seconds "))
            .map(str::to_string)
    };
    assert_eq!(gauge().as_deref(), Some("0.05"));
    tokio::time::sleep(TICK * 9 * CALM_TICKS + TICK).await;
    assert_eq!(broker.shared.coalescing.interval(), Duration::ZERO);
    assert_eq!(gauge().as_deref(), Some("0.0"));
    sampler.abort();
}

#[tokio::test(start_paused = true)]
async fn off_starts_no_sampler() {
    let broker = broker_with(|c| c.coalescing = crate::config::Coalescing::Off);
    assert!(broker.spawn_coalescing().is_none());
    let broker = broker_with(|c| c.coalescing_ceiling = 0);
    assert!(broker.spawn_coalescing().is_none());
}

#[tokio::test(start_paused = true)]
async fn ack_sessions_batched_connects_and_timeout_zero_are_not_delayed() {
    let (broker, _controller) = saturated_broker();
    let alice = session(&broker).await;

    // A connect batched with a subscribe: answered at once, as without coalescing.
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/news").await;
    publish(&broker, &alice, "/news", json!(1)).await;
    assert_eq!(news(&send(&broker, connect(&bob, "3")).await), [json!(1)]);
    publish(&broker, &alice, "/news", json!(2)).await;
    let started = Instant::now();
    let batch = json!([
        {"id": "4", "channel": "/meta/connect", "clientId": bob, "connectionType": "long-polling"},
        {"id": "5", "channel": "/meta/subscribe", "clientId": bob, "subscription": "/other"},
    ]);
    assert_eq!(news(&send(&broker, batch).await), [json!(2)]);
    assert_eq!(started.elapsed(), Duration::ZERO, "batched");

    // `advice.timeout: 0`: answered at once.
    publish(&broker, &alice, "/news", json!(3)).await;
    let body =
        json!([{"id": "6", "channel": "/meta/connect", "clientId": bob, "advice": {"timeout": 0}}]);
    assert_eq!(news(&send(&broker, body).await), [json!(3)]);
    assert_eq!(started.elapsed(), Duration::ZERO, "timeout 0");

    // An ack session receiving a fast stream.
    let reply = send(
        &broker,
        json!([{"id": "1", "channel": "/meta/handshake", "ext": {"ack": true}}]),
    )
    .await;
    let carol = reply[0]["clientId"].as_str().expect("id").to_string();
    let ack_connect = |id: &str, acked: i64| json!([{"id": id, "channel": "/meta/connect", "clientId": carol, "ext": {"ack": acked}}]);
    send(&broker, ack_connect("2", -1)).await;
    subscribe(&broker, &carol, "/news").await;
    publish(&broker, &alice, "/news", json!(4)).await;
    assert_eq!(news(&send(&broker, ack_connect("3", 1)).await), [json!(4)]);
    publish(&broker, &alice, "/news", json!(5)).await;
    assert_eq!(news(&send(&broker, ack_connect("4", 2)).await), [json!(5)]);
    assert_eq!(started.elapsed(), Duration::ZERO, "ack session");
}

/// The data of pushed deliveries.
fn pushed(deliveries: &[bytes::Bytes]) -> Vec<Value> {
    deliveries
        .iter()
        .map(|d| serde_json::from_slice::<Value>(d).expect("JSON")["data"].clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn saturated_a_websocket_gets_fewer_fuller_frames_and_a_quiet_one_waits_for_nothing() {
    let (broker, _controller) = saturated_broker();
    let alice = session(&broker).await;
    let bob = session(&broker).await;
    subscribe(&broker, &bob, "/news").await;
    let ctx = RequestContext {
        transport: crate::metrics::Transport::WebSocket,
        ..RequestContext::default()
    };
    let (_, held) = broker
        .handle_pushed(messages(connect(&bob, "3")), &ctx)
        .await;
    let held = held.expect("the connect is held");

    // Bob had no delivery lately: his first frame goes out at once.
    publish(&broker, &alice, "/news", json!(1)).await;
    match held.woken(true).await {
        PushWake::Deliver(deliveries) => assert_eq!(pushed(&deliveries), [json!(1)]),
        other => panic!("{other:?}"),
    }
    // The next one within the interval waits for it, and takes what follows along.
    publish(&broker, &alice, "/news", json!(2)).await;
    let at = match held.woken(true).await {
        PushWake::Later(at) => at,
        other => panic!("{other:?}"),
    };
    // Half the interval: a frame is cheaper than an HTTP exchange.
    assert_eq!(at - Instant::now(), Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(&broker, &alice, "/news", json!(3)).await;
    tokio::time::sleep_until(at).await;
    assert_eq!(pushed(&held.deliveries()), [json!(2), json!(3)]);
    // A transport that cannot wait (an EventSource stream) is never asked to.
    publish(&broker, &alice, "/news", json!(4)).await;
    match held.woken(false).await {
        PushWake::Deliver(deliveries) => assert_eq!(pushed(&deliveries), [json!(4)]),
        other => panic!("{other:?}"),
    }
}
