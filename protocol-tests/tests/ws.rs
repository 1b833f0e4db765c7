//! The `websocket` transport on the wire (issue 14, Semantics and Limits; `../shared/WEBSOCKET.md`), with
//! tokio-tungstenite as the client: framing, held connects that push deliveries, the ack extension, takeover by a
//! newer connect or socket, socket lifetime (pings, idle timeout, closing without ending the session), close codes
//! for bad frames, a client that stops reading, `--transports`, and shutdown.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use halley_protocol_tests::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a websocket on the broker's Bayeux path.
async fn open(b: &Client) -> Ws {
    let url = format!("ws://127.0.0.1:{}{}", b.port, b.path);
    let (ws, response) =
        tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("upgrade timed out")
            .expect("upgrade refused");
    assert_eq!(response.status(), 101);
    ws
}

/// Sends one JSON value as a text frame.
async fn send(ws: &mut Ws, value: Value) {
    ws.send(Frame::text(value.to_string()))
        .await
        .expect("send frame");
}

/// The next frame other than ping/pong within `within`; `None` on timeout.
async fn next_frame(ws: &mut Ws, within: Duration) -> Option<Result<Frame, WsError>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) => return Some(Err(WsError::ConnectionClosed)),
            Ok(Some(Ok(Frame::Ping(_) | Frame::Pong(_)))) => continue,
            Ok(Some(frame)) => return Some(frame),
        }
    }
}

/// The next text frame within `within`, which must be one JSON array; `None` on timeout.
async fn try_recv(ws: &mut Ws, within: Duration) -> Option<Vec<Value>> {
    match next_frame(ws, within).await? {
        Ok(Frame::Text(text)) => {
            let value: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame {text:?}: {e}"));
            match value {
                Value::Array(messages) => Some(messages),
                other => panic!("a frame must hold one JSON array, got {other}"),
            }
        }
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next text frame (one JSON array), which must come within [`REQUEST_TIMEOUT`].
async fn recv(ws: &mut Ws) -> Vec<Value> {
    try_recv(ws, REQUEST_TIMEOUT)
        .await
        .expect("no frame within the request timeout")
}

/// Reads until the server's close frame and returns its code (panics on anything else but text frames,
/// which are skipped, within `within`).
async fn close_code(ws: &mut Ws, within: Duration) -> u16 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_frame(ws, left).await {
            None => panic!("no close frame within {within:?}"),
            Some(Ok(Frame::Close(Some(close)))) => return u16::from(close.code),
            Some(Ok(Frame::Text(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A websocket handshake message with `id`.
fn ws_handshake(id: &str, ext: Value) -> Value {
    json!({"id": id, "channel": "/meta/handshake", "version": "1.0",
           "supportedConnectionTypes": ["websocket"], "ext": ext})
}

/// A websocket `/meta/connect` message of `cid` with `id`.
fn ws_connect(id: &str, cid: &str) -> Value {
    json!({"id": id, "channel": "/meta/connect", "clientId": cid, "connectionType": "websocket"})
}

/// Handshake and first connect over the socket; returns the clientId.
async fn ws_session(ws: &mut Ws) -> String {
    send(ws, json!([ws_handshake("h", json!({}))])).await;
    let msgs = recv(ws).await;
    let r = reply(&msgs, "h");
    assert_eq!(r["successful"], true, "{r}");
    let cid = r["clientId"].as_str().expect("clientId").to_string();
    send(ws, json!([ws_connect("c0", &cid)])).await;
    let msgs = recv(ws).await;
    assert_eq!(reply(&msgs, "c0")["successful"], true, "{msgs:?}");
    cid
}

/// Subscribes `cid` to `channel` over the socket and waits for the reply.
async fn ws_subscribe(ws: &mut Ws, cid: &str, channel: &str) {
    let id = next_id("s");
    send(
        ws,
        json!([{"id": id, "channel": "/meta/subscribe", "clientId": cid, "subscription": channel}]),
    )
    .await;
    let msgs = recv(ws).await;
    assert_eq!(reply(&msgs, &id)["successful"], true, "{msgs:?}");
}

/// An HTTP session that publishes on `channel` the numbers in `range` (each asserted accepted).
async fn publish_numbers(b: &Client, channel: &str, range: std::ops::Range<u64>) {
    let publisher = b.session().await;
    for n in range {
        let msgs = b.publish(&publisher, channel, json!({"n": n})).await;
        assert_eq!(msgs.last().unwrap()["successful"], true, "{msgs:?}");
    }
}

/// The `n` of every delivery in `msgs`.
fn numbers(msgs: &[Value]) -> Vec<u64> {
    deliveries(msgs)
        .iter()
        .map(|m| m["data"]["n"].as_u64().expect("n"))
        .collect()
}

#[tokio::test]
async fn handshake_over_the_socket_offers_websocket_and_every_reply_is_one_array_per_frame() {
    let b = Broker::fast().await;
    let mut ws = open(&b).await;
    send(&mut ws, json!([ws_handshake("h", json!({}))])).await;
    let msgs = recv(&mut ws).await;
    let r = reply(&msgs, "h");
    assert_eq!(r["successful"], true, "{r}");
    assert_eq!(
        r["supportedConnectionTypes"][0], "websocket",
        "websocket offered first: {r}"
    );
    let cid = r["clientId"].as_str().unwrap().to_string();
    // Two messages in one frame: both replies come back in one array.
    send(
        &mut ws,
        json!([ws_connect("c0", &cid),
               {"id": "s1", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/a/*"}]),
    )
    .await;
    let msgs = recv(&mut ws).await;
    assert_eq!(reply(&msgs, "c0")["successful"], true, "{msgs:?}");
    assert_eq!(reply(&msgs, "s1")["successful"], true, "{msgs:?}");
    // Publishing over the socket: the publish reply, and the delivery to ourselves (wildcard).
    send(
        &mut ws,
        json!([{"id": "p1", "channel": "/a/b", "clientId": cid, "data": {"n": 1}}]),
    )
    .await;
    let mut seen = Vec::new();
    send(&mut ws, json!([ws_connect("c1", &cid)])).await;
    while !seen
        .iter()
        .any(|m: &Value| m["id"] == "p1" && m.get("data").is_none())
        || numbers(&seen).is_empty()
    {
        seen.extend(recv(&mut ws).await);
    }
    assert_eq!(numbers(&seen), [1]);
}

#[tokio::test]
async fn handshake_over_http_then_a_socket_whose_first_frame_is_a_connect() {
    let b = Broker::fast().await;
    let cid = b.handshake().await;
    b.subscribe(&cid, "/x").await;
    let mut ws = open(&b).await;
    send(&mut ws, json!([ws_connect("c0", &cid)])).await;
    let msgs = recv(&mut ws).await;
    assert_eq!(reply(&msgs, "c0")["successful"], true, "{msgs:?}");
    send(&mut ws, json!([ws_connect("c1", &cid)])).await;
    assert!(
        try_recv(&mut ws, Duration::from_millis(300))
            .await
            .is_none(),
        "the connect was not held"
    );
    publish_numbers(&b, "/x", 0..2).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let msgs = recv(&mut ws).await;
        assert!(
            msgs.iter().all(|m| m.get("data").is_some()),
            "deliveries go out as frames of their own: {msgs:?}"
        );
        got.extend(numbers(&msgs));
    }
    assert_eq!(got, [0, 1]);
    // The connect is still held: it is answered at its timeout, not by the deliveries.
    let msgs = recv(&mut ws).await;
    assert_eq!(reply(&msgs, "c1")["successful"], true, "{msgs:?}");
}

#[tokio::test]
async fn an_empty_array_is_answered_with_an_empty_array() {
    let b = Broker::fast().await;
    let mut ws = open(&b).await;
    ws.send(Frame::text("[]")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Vec::<Value>::new());
    // And the socket still serves Bayeux afterwards.
    ws_session(&mut ws).await;
}

#[tokio::test]
async fn a_connect_held_on_the_socket_pushes_each_delivery_at_once() {
    let b = Broker::start(&["--timeout", "5000"]).await;
    let mut ws = open(&b).await;
    let cid = ws_session(&mut ws).await;
    ws_subscribe(&mut ws, &cid, "/push").await;
    send(&mut ws, json!([ws_connect("held", &cid)])).await;
    sleep_ms(200).await;
    let publisher = b.session().await;
    for n in 0..3u64 {
        let sent = Instant::now();
        b.publish(&publisher, "/push", json!({"n": n})).await;
        let msgs = recv(&mut ws).await;
        assert!(
            sent.elapsed() < PROMPT,
            "delivery {n} took {:?}",
            sent.elapsed()
        );
        assert_eq!(numbers(&msgs), [n], "{msgs:?}");
        assert!(
            msgs.iter().all(|m| m["channel"] != "/meta/connect"),
            "connect answered early: {msgs:?}"
        );
    }
}

#[tokio::test]
async fn an_ack_session_gets_deliveries_only_on_numbered_connect_replies() {
    let b = Broker::start(&["--timeout", "5000"]).await;
    let mut ws = open(&b).await;
    send(&mut ws, json!([ws_handshake("h", json!({"ack": true}))])).await;
    let msgs = recv(&mut ws).await;
    let r = reply(&msgs, "h");
    assert_eq!(r["ext"]["ack"], true, "ack extension not granted: {r}");
    let cid = r["clientId"].as_str().unwrap().to_string();
    let mut connect = ws_connect("c0", &cid);
    merge(&mut connect, json!({"ext": {"ack": -1}}));
    send(&mut ws, json!([connect])).await;
    recv(&mut ws).await;
    ws_subscribe(&mut ws, &cid, "/acked").await;

    let mut last_ack = 0u64;
    let mut got = Vec::new();
    for round in 0..3u64 {
        let id = format!("c{}", round + 1);
        let mut connect = ws_connect(&id, &cid);
        merge(&mut connect, json!({"ext": {"ack": last_ack}}));
        send(&mut ws, json!([connect])).await;
        sleep_ms(100).await;
        publish_numbers(&b, "/acked", round * 2..round * 2 + 2).await;
        // Every delivery comes with the connect reply, never on a frame of its own.
        let mut msgs = recv(&mut ws).await;
        let r = reply(&msgs, &id).clone();
        assert_eq!(r["successful"], true, "{r}");
        let batch = r["ext"]["ack"]
            .as_u64()
            .unwrap_or_else(|| panic!("no ext.ack on {r}"));
        assert!(batch > last_ack, "batch {batch} after {last_ack}");
        last_ack = batch;
        // Both publishes may not have made it into one batch: the rest comes on the next reply.
        if numbers(&msgs).len() < 2 {
            let id = format!("r{round}");
            let mut connect = ws_connect(&id, &cid);
            merge(&mut connect, json!({"ext": {"ack": last_ack}}));
            send(&mut ws, json!([connect])).await;
            let more = recv(&mut ws).await;
            let r = reply(&more, &id);
            last_ack = r["ext"]["ack"]
                .as_u64()
                .unwrap_or_else(|| panic!("no ext.ack on {r}"));
            msgs.extend(more);
        }
        got.extend(numbers(&msgs));
    }
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_second_connect_supersedes_the_first_which_is_never_answered() {
    let b = Broker::fast().await;
    let mut ws = open(&b).await;
    let cid = ws_session(&mut ws).await;
    ws_subscribe(&mut ws, &cid, "/s").await;
    send(&mut ws, json!([ws_connect("first", &cid)])).await;
    sleep_ms(200).await;
    send(&mut ws, json!([ws_connect("second", &cid)])).await;
    sleep_ms(200).await;
    publish_numbers(&b, "/s", 0..1).await;
    let mut seen = Vec::new();
    // Beyond the 2 s hold of the second connect.
    let until = Instant::now() + Duration::from_millis(FAST_TIMEOUT_MS + 1500);
    while let Some(msgs) = try_recv(&mut ws, until.saturating_duration_since(Instant::now())).await
    {
        seen.extend(msgs);
    }
    assert!(
        seen.iter().all(|m| m["id"] != "first"),
        "the superseded connect was answered: {seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|m| m["id"] == "second").count(),
        1,
        "{seen:?}"
    );
    assert_eq!(numbers(&seen), [0], "{seen:?}");
}

#[tokio::test]
async fn a_newer_socket_takes_over_delivery_with_nothing_lost_or_duplicated() {
    let b = Broker::start(&["--timeout", "5000"]).await;
    let mut old = open(&b).await;
    let cid = ws_session(&mut old).await;
    ws_subscribe(&mut old, &cid, "/t").await;
    send(&mut old, json!([ws_connect("old", &cid)])).await;
    sleep_ms(100).await;

    // Publishes run all along while the session moves to a new socket.
    let publisher = b.client();
    let publishing = tokio::spawn(async move { publish_numbers(&publisher, "/t", 0..60).await });
    let mut from_old = Vec::new();
    while from_old.len() < 10 {
        from_old.extend(numbers(&recv(&mut old).await));
    }
    let mut new = open(&b).await;
    send(&mut new, json!([ws_connect("new", &cid)])).await;
    publishing.await.unwrap();
    let mut from_new = Vec::new();
    let mut quiet = 0;
    while quiet < 2 {
        tokio::select! {
            Some(msgs) = try_recv(&mut old, Duration::from_millis(700)) => {
                assert!(msgs.iter().all(|m| m["id"] != "old"), "the taken-over connect was answered: {msgs:?}");
                from_old.extend(numbers(&msgs));
            }
            Some(msgs) = try_recv(&mut new, Duration::from_millis(700)) => {
                from_new.extend(numbers(&msgs));
                // A connect that found deliveries queued is answered with them at once; the
                // client then connects again, as every client does.
                if msgs.iter().any(|m| m["channel"] == "/meta/connect") {
                    send(&mut new, json!([ws_connect(&next_id("new"), &cid)])).await;
                }
            }
            () = sleep_ms(800) => quiet += 1,
        }
    }
    assert!(!from_new.is_empty(), "the newer socket got nothing");
    let all: Vec<u64> = from_old.iter().chain(&from_new).copied().collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        unique.len(),
        "duplicated: old {from_old:?} new {from_new:?}"
    );
    assert_eq!(
        unique,
        (0..60).collect(),
        "lost: old {from_old:?} new {from_new:?}"
    );
    // Each socket got its share in order.
    assert!(from_old.windows(2).all(|w| w[0] < w[1]), "{from_old:?}");
    assert!(from_new.windows(2).all(|w| w[0] < w[1]), "{from_new:?}");
    assert!(
        from_old.iter().max() < from_new.iter().min(),
        "old {from_old:?} new {from_new:?}"
    );
}

#[tokio::test]
async fn a_socket_closed_with_a_connect_held_leaves_the_session_to_expire_by_max_interval() {
    let b = Broker::start(&[
        "--timeout",
        "5000",
        "--max-interval",
        "2000",
        "--sweep-interval",
        "200",
    ])
    .await;
    let mut ws = open(&b).await;
    let cid = ws_session(&mut ws).await;
    ws_subscribe(&mut ws, &cid, "/kept").await;
    send(&mut ws, json!([ws_connect("held", &cid)])).await;
    sleep_ms(200).await;
    // Dropped without a close frame, as a dead client would.
    drop(ws);
    sleep_ms(200).await;
    publish_numbers(&b, "/kept", 0..3).await;
    // Still there within maxInterval, and nothing published meanwhile was lost.
    let msgs = b.connect_now(&cid).await;
    assert_eq!(msgs.last().unwrap()["successful"], true, "{msgs:?}");
    assert_eq!(numbers(&msgs), [0, 1, 2], "{msgs:?}");
    // The same after a clean close.
    let mut ws = open(&b).await;
    send(&mut ws, json!([ws_connect("again", &cid)])).await;
    sleep_ms(200).await;
    ws.close(None).await.unwrap();
    sleep_ms(1000).await;
    let msgs = b.connect_now(&cid).await;
    assert_eq!(msgs.last().unwrap()["successful"], true, "{msgs:?}");
    // Gone after maxInterval without a connect.
    sleep_ms(3000).await;
    let msgs = b.connect_now(&cid).await;
    assert_session_unknown(msgs.last().unwrap(), true);
    // The server still serves sockets.
    ws_session(&mut open(&b).await).await;
}

#[tokio::test]
async fn pings_go_out_at_the_configured_interval() {
    let b = Broker::start(&["--websocket-ping-interval", "300"]).await;
    let mut ws = open(&b).await;
    let start = Instant::now();
    let mut pings = Vec::new();
    while start.elapsed() < Duration::from_millis(1650) {
        match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            Ok(Some(Ok(Frame::Ping(_)))) => pings.push(start.elapsed()),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {}
        }
    }
    assert!((4..=6).contains(&pings.len()), "pings at {pings:?}");
    let quiet = Broker::start(&["--websocket-ping-interval", "0"]).await;
    let mut ws = open(&quiet).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(800), ws.next())
            .await
            .is_err(),
        "a ping interval of 0 sends no pings"
    );
}

#[tokio::test]
async fn a_silent_socket_is_closed_after_timeout_plus_network_delay() {
    // No pings, so the client's automatic pongs do not count as life.
    let b = Broker::start(&["--timeout", "1000", "--websocket-ping-interval", "0"]).await;
    let mut ws = open(&b).await;
    let opened = Instant::now();
    let code = close_code(&mut ws, Duration::from_secs(20)).await;
    let after = opened.elapsed();
    assert_eq!(code, u16::from(CloseCode::Away));
    // timeout 1 s + maxNetworkDelay 10 s.
    assert!(
        after >= Duration::from_millis(10_500),
        "closed after {after:?}"
    );
    assert!(
        after < Duration::from_millis(14_000),
        "closed after {after:?}"
    );
}

/// Sends `frame` on a fresh socket and returns the close code the server answers with; then checks the
/// server still serves others.
async fn refused_with(b: &Broker, frame: Frame) -> u16 {
    let mut ws = open(b).await;
    let cid = ws_session(&mut ws).await;
    ws.send(frame).await.unwrap();
    let code = close_code(&mut ws, REQUEST_TIMEOUT).await;
    // The session outlives the socket, and the server serves everyone else.
    let msgs = b.connect_now(&cid).await;
    assert_eq!(msgs.last().unwrap()["successful"], true, "{msgs:?}");
    ws_session(&mut open(b).await).await;
    code
}

#[tokio::test]
async fn a_binary_frame_is_closed_with_1003() {
    let b = Broker::fast().await;
    let code = refused_with(&b, Frame::binary(b"[]".to_vec())).await;
    assert_eq!(code, 1003);
}

#[tokio::test]
async fn a_frame_over_max_body_bytes_is_closed_with_1009() {
    let b = Broker::start(&["--max-body-bytes", "4096"]).await;
    let big = format!(r#"[{{"channel":"/x","data":"{}"}}]"#, "a".repeat(5000));
    assert_eq!(refused_with(&b, Frame::text(big)).await, 1009);
    // Just under the bound is fine.
    let mut ws = open(&b).await;
    let cid = ws_session(&mut ws).await;
    let msg = json!([{"id": "p", "channel": "/x", "clientId": cid, "data": "a".repeat(3500)}]);
    send(&mut ws, msg).await;
    assert_eq!(reply(&recv(&mut ws).await, "p")["successful"], true);
}

#[tokio::test]
async fn a_malformed_batch_is_closed_with_1007() {
    let b = Broker::fast().await;
    assert_eq!(refused_with(&b, Frame::text("{not json")).await, 1007);
    assert_eq!(
        refused_with(&b, Frame::text(r#"{"channel":5}"#)).await,
        1007
    );
}

/// A socket that subscribes, holds a connect and then stops reading while large messages are published; the
/// publisher and another client must be served meanwhile. Returns the clientId and the socket (unread).
async fn stop_reading(b: &Broker) -> (String, Ws) {
    // A small receive buffer, so that the server's writes block after a few MB whatever loopback autotuning allows.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket
        .connect(([127, 0, 0, 1], b.port).into())
        .await
        .unwrap();
    let url = format!("ws://127.0.0.1:{}{}", b.port, b.path);
    let (mut ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .expect("upgrade");
    let cid = ws_session(&mut ws).await;
    ws_subscribe(&mut ws, &cid, "/flood").await;
    send(&mut ws, json!([ws_connect("held", &cid)])).await;
    sleep_ms(200).await;
    let watcher = b.session().await;
    b.subscribe(&watcher, "/other").await;
    let publisher = b.session().await;
    let payload = "x".repeat(60_000);
    // ~18 MB: more than the loopback socket buffers hold.
    for n in 0..300u64 {
        let msgs = b
            .publish(&publisher, "/flood", json!({"n": n, "pad": payload}))
            .await;
        assert_eq!(msgs.last().unwrap()["successful"], true);
        // Paced, so that the socket's writer keeps taking deliveries until the socket buffers are full (a
        // flood at full speed mostly overflows the queue and leaves too little in flight to block a write).
        sleep_ms(3).await;
    }
    // Everyone else is served while the reader is stuck.
    let sent = Instant::now();
    b.publish(&publisher, "/other", json!({"n": 0})).await;
    assert_eq!(numbers(&b.connect_now(&watcher).await), [0]);
    assert!(
        sent.elapsed() < PROMPT,
        "others waited {:?}",
        sent.elapsed()
    );
    (cid, ws)
}

#[tokio::test]
async fn a_reader_that_stops_meets_the_queue_bound_and_the_write_deadline() {
    let b = Broker::start(&[
        "--timeout",
        "30000",
        "--max-queue",
        "10",
        "--max-body-bytes",
        "100000",
        "--write-timeout",
        "5000",
    ])
    .await;
    let rss_before = b.rss_kib();
    let (cid, mut ws) = stop_reading(&b).await;
    // The write deadline (--write-timeout, 5 s) gives the socket up; the session stays, with what
    // overflowed dropped.
    sleep_ms(6_500).await;
    let rss = b.rss_kib();
    assert!(
        rss < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss} KiB"
    );
    // What the socket got before the deadline ends with the socket closed (read before the session is polled over
    // HTTP, which would take the session over from a socket that was not cut).
    let mut on_socket = 0u64;
    loop {
        let Ok(frame) = tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await else {
            panic!("socket not closed after {on_socket} deliveries");
        };
        match frame {
            Some(Ok(Frame::Text(text))) => {
                let msgs: Vec<Value> = serde_json::from_str(&text).unwrap();
                on_socket += numbers(&msgs).len() as u64;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    let msgs = b.connect_now(&cid).await;
    let r = msgs.last().unwrap();
    assert_eq!(r["successful"], true, "{r}");
    let dropped = r["ext"]["halley"]["dropped"].as_u64().unwrap_or(0);
    let queued = numbers(&msgs).len() as u64;
    assert!(queued <= 10, "{queued} queued over a bound of 10");
    assert!(dropped > 0, "nothing dropped: {r}");
    assert!(
        on_socket < 300,
        "the socket got everything: no back-pressure happened"
    );
    // The one batch (at most the queue bound) being written when the deadline cut the socket is gone with it,
    // as a long-poll answer written to a dead socket would be; the ack extension is what recovers that.
    let accounted = on_socket + queued + dropped;
    assert!(
        (290..=300).contains(&accounted),
        "socket {on_socket} + queued {queued} + dropped {dropped} = {accounted} of 300"
    );
}

#[tokio::test]
async fn a_reader_that_stops_under_the_disconnect_policy_loses_its_session() {
    let b = Broker::start(&[
        "--timeout",
        "30000",
        "--max-queue",
        "10",
        "--queue-overflow",
        "disconnect",
        "--max-body-bytes",
        "100000",
    ])
    .await;
    let (cid, _ws) = stop_reading(&b).await;
    let msgs = b.connect_now(&cid).await;
    assert_session_unknown(msgs.last().unwrap(), true);
}

#[tokio::test]
async fn long_polling_only_refuses_upgrades_with_400_and_does_not_offer_websocket() {
    let b = Broker::start(&["--transports", "long-polling"]).await;
    let url = format!("ws://127.0.0.1:{}{}", b.port, b.path);
    match tokio_tungstenite::connect_async(url).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("upgrade not refused: {:?}", other.map(|(_, r)| r.status())),
    }
    let msgs = b
        .batch(
            json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0",
                        "supportedConnectionTypes": ["websocket", "long-polling"]}]),
        )
        .await;
    let r = reply(&msgs, "h");
    assert_eq!(
        r["supportedConnectionTypes"],
        json!(["long-polling"]),
        "{r}"
    );
    // And with websocket on, it is offered.
    let all = Broker::fast().await;
    let msgs = all
        .batch(
            json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0",
                        "supportedConnectionTypes": ["websocket", "long-polling"]}]),
        )
        .await;
    let offered = reply(&msgs, "h")["supportedConnectionTypes"].clone();
    assert!(
        offered.as_array().unwrap().contains(&json!("websocket")),
        "{offered}"
    );
}

#[tokio::test]
async fn shutdown_answers_held_connects_with_retry_then_closes_with_1001() {
    let mut b = Broker::start(&["--timeout", "10000", "--shutdown-timeout", "2000"]).await;
    let mut ws = open(&b).await;
    let cid = ws_session(&mut ws).await;
    send(&mut ws, json!([ws_connect("held", &cid)])).await;
    sleep_ms(300).await;
    let sent = Instant::now();
    b.signal("TERM");
    let msgs = recv(&mut ws).await;
    assert!(
        sent.elapsed() < PROMPT,
        "answered {:?} after SIGTERM",
        sent.elapsed()
    );
    let r = reply(&msgs, "held");
    assert_eq!(r["successful"], true, "{r}");
    assert_eq!(r["advice"]["reconnect"], "retry", "{r}");
    assert_eq!(close_code(&mut ws, REQUEST_TIMEOUT).await, 1001);
    let status = b
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("halley did not exit");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let b = Broker::fast().await;
    let mut ws = open(&b).await;
    ws_session(&mut ws).await;
    ws.send(Frame::Close(None)).await.unwrap();
    // The closing handshake completes: the server's close frame comes back before the end of the stream (without
    // it a browser reports 1006, an abnormal closure).
    match next_frame(&mut ws, REQUEST_TIMEOUT).await {
        Some(Ok(Frame::Close(_))) => {}
        other => panic!("expected the server's close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn the_test_only_echo_endpoint_is_off_unless_configured() {
    let b = Broker::fast().await;
    let url = format!("ws://127.0.0.1:{}/echo", b.port);
    match tokio_tungstenite::connect_async(url).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("/echo answered: {:?}", other.map(|(_, r)| r.status())),
    }
    let b = Broker::start(&["--websocket-echo-path", "/echo"]).await;
    let url = format!("ws://127.0.0.1:{}/echo", b.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("echo upgrade");
    ws.send(Frame::text("not bayeux")).await.unwrap();
    match next_frame(&mut ws, REQUEST_TIMEOUT).await {
        Some(Ok(Frame::Text(text))) => assert_eq!(text.as_str(), "not bayeux"),
        other => panic!("no echo: {other:?}"),
    }
}
