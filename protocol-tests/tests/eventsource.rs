//! The `eventsource` transport on the wire (issue 14; Faye's connection type): the stream at
//! `<path>/<clientId>` with `Accept: text/event-stream`, deliveries as `data:` events, comment
//! keep-alives, unknown sessions, Faye's `eventsource` connect answered at once beside the stream,
//! a closed stream that leaves the session to age, what supersedes or ends a stream, a reader that
//! stops, and `--transports`. The client is a raw TCP socket, so every byte the server sends is seen.

use std::time::{Duration, Instant};

use halley_protocol_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An open EventSource stream: the response head, and the body read so far.
struct Stream {
    status: u16,
    head: String,
    stream: TcpStream,
    buf: Vec<u8>,
    /// The stream closed in the middle of an event.
    truncated: bool,
}

/// What the server sent next on a stream.
#[derive(Debug, PartialEq)]
enum Event {
    /// A `data:` event: one JSON array.
    Data(Vec<Value>),
    /// A comment line (`:`), the keep-alive.
    Comment,
    /// The server closed the stream.
    Closed,
}

/// The request an EventSource sends for session `cid`.
fn stream_request(b: &Client, cid: &str) -> Vec<u8> {
    b.http1_request(
        "GET",
        &format!("/{cid}"),
        &[
            ("accept", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        b"",
    )
}

/// Opens a stream for `cid` on `stream` and reads the response head.
async fn open_on(b: &Client, mut stream: TcpStream, cid: &str) -> Stream {
    stream
        .write_all(&stream_request(b, cid))
        .await
        .expect("write");
    let mut buf = Vec::new();
    let head_end = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return p;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "closed before the head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("no response head");
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("UTF-8 head");
    let status = head[9..12].parse().expect("status");
    buf.drain(..head_end + 4);
    Stream {
        status,
        head: head.to_ascii_lowercase(),
        stream,
        buf,
        truncated: false,
    }
}

/// Opens a stream for `cid`, which must be accepted.
async fn open(b: &Client, cid: &str) -> Stream {
    let s = open_on(b, b.tcp().await, cid).await;
    assert_eq!(s.status, 200, "{}", s.head);
    s
}

impl Stream {
    /// The next event within `within`; `None` on timeout.
    async fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event = String::from_utf8(self.buf[..end].to_vec()).expect("UTF-8 event");
                self.buf.drain(..end + 2);
                return Some(parse_event(&event));
            }
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    // A write cut by the deadline leaves part of an event.
                    self.truncated = !self.buf.is_empty();
                    self.buf.clear();
                    return Some(Event::Closed);
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next event other than a comment, which must come within [`REQUEST_TIMEOUT`].
    async fn data(&mut self) -> Vec<Value> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Event::Data(messages)) => return messages,
                Some(Event::Comment) => continue,
                other => panic!("expected a data event, got {other:?}"),
            }
        }
    }

    /// Waits (at most `within`) for the server to close the stream, skipping comments; panics on data.
    async fn closed(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Event::Closed) => return,
                Some(Event::Comment) => continue,
                other => panic!("expected the stream closed within {within:?}, got {other:?}"),
            }
        }
    }
}

/// One event's lines: a single `data:` line holding a JSON array, or one comment.
fn parse_event(event: &str) -> Event {
    let lines: Vec<&str> = event.split('\n').collect();
    match lines.as_slice() {
        [line] if line.starts_with(':') => Event::Comment,
        [line] => {
            let json = line
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {line:?}"));
            match serde_json::from_str(json) {
                Ok(Value::Array(messages)) => Event::Data(messages),
                other => panic!("data must be one JSON array: {json:?} ({other:?})"),
            }
        }
        _ => panic!("an event must be one line: {event:?}"),
    }
}

/// Faye's handshake, offering eventsource; returns the clientId.
async fn es_handshake(b: &Client) -> String {
    let msgs = b
        .batch(
            json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0",
                        "supportedConnectionTypes": ["eventsource", "long-polling"]}]),
        )
        .await;
    let r = reply(&msgs, "h");
    assert_eq!(r["successful"], true, "{r}");
    r["clientId"].as_str().expect("clientId").to_string()
}

/// Faye's connect while its stream is open.
async fn es_connect(b: &Client, cid: &str, id: &str) -> Vec<Value> {
    b.batch(
        json!([{"id": id, "channel": "/meta/connect", "clientId": cid,
                     "connectionType": "eventsource"}]),
    )
    .await
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
async fn a_stream_opens_as_an_open_ended_event_stream_and_eventsource_is_offered() {
    let b = Broker::fast().await;
    let msgs = b
        .batch(
            json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0",
                        "supportedConnectionTypes": ["eventsource", "long-polling"]}]),
        )
        .await;
    let offered = reply(&msgs, "h")["supportedConnectionTypes"].clone();
    assert!(
        offered.as_array().unwrap().contains(&json!("eventsource")),
        "{offered}"
    );
    let cid = reply(&msgs, "h")["clientId"].as_str().unwrap().to_string();
    let mut s = open(&b, &cid).await;
    assert!(
        s.head.contains("content-type: text/event-stream"),
        "{}",
        s.head
    );
    assert!(s.head.contains("cache-control: no-cache"), "{}", s.head);
    // The body is the stream: no length, and the connection ends with it.
    assert!(!s.head.contains("content-length"), "{}", s.head);
    assert!(!s.head.contains("transfer-encoding"), "{}", s.head);
    assert!(s.head.contains("connection: close"), "{}", s.head);
    // A page on another origin may read the stream (CORS, as the rest of the endpoint).
    let mut raw = b.tcp().await;
    raw.write_all(&b.http1_request(
        "GET",
        &format!("/{cid}"),
        &[
            ("accept", "text/event-stream"),
            ("origin", "http://app.example"),
        ],
        b"",
    ))
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(REQUEST_TIMEOUT, raw.read(&mut chunk))
            .await
            .expect("head")
            .unwrap();
        assert!(n > 0);
        head.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    // That newer stream took the session over: the first one ends.
    assert_eq!(s.next(PROMPT).await, Some(Event::Comment));
    assert_eq!(s.next(PROMPT).await, Some(Event::Closed));
    let mut s = open(&b, &cid).await;
    // A comment comes with the head (so that intermediaries pass the head on), then nothing while nothing
    // happens (the ping interval is 25 s by default).
    assert_eq!(s.next(PROMPT).await, Some(Event::Comment));
    assert_eq!(s.next(Duration::from_millis(500)).await, None);
}

#[tokio::test]
async fn deliveries_arrive_as_data_events_including_what_was_queued_before_the_stream() {
    let b = Broker::fast().await;
    let cid = es_handshake(&b).await;
    b.subscribe(&cid, "/es").await;
    // Queued before the stream opens: goes out on it at once.
    publish_numbers(&b, "/es", 0..2).await;
    let mut s = open(&b, &cid).await;
    let mut got = numbers(&s.data().await);
    while got.len() < 2 {
        got.extend(numbers(&s.data().await));
    }
    assert_eq!(got, [0, 1]);
    // Published while the stream is open: pushed at once, each wake-up one event.
    let publisher = b.session().await;
    let sent = Instant::now();
    b.publish(&publisher, "/es", json!({"n": 2})).await;
    let msgs = s.data().await;
    assert!(sent.elapsed() < PROMPT, "{:?}", sent.elapsed());
    assert_eq!(numbers(&msgs), [2]);
    assert_eq!(msgs[0]["channel"], "/es", "{msgs:?}");
    // A payload written with line breaks (kept byte for byte by the broker) still makes one data line.
    let body = format!(
        "[{{\"channel\":\"/es\",\"clientId\":\"{publisher}\",\"data\":\r\n{{\"n\":\n3}}}}]"
    );
    let r = b.post_raw("", Some("application/json"), body).await;
    assert_eq!(r.status, 200);
    assert_eq!(numbers(&s.data().await), [3]);
}

#[tokio::test]
async fn comments_keep_the_stream_alive_at_the_ping_interval() {
    let b = Broker::start(&["--websocket-ping-interval", "300"]).await;
    let cid = es_handshake(&b).await;
    let mut s = open(&b, &cid).await;
    assert_eq!(
        s.next(PROMPT).await,
        Some(Event::Comment),
        "the opening one"
    );
    let start = Instant::now();
    let mut comments = Vec::new();
    while start.elapsed() < Duration::from_millis(1650) {
        match s.next(Duration::from_millis(100)).await {
            Some(Event::Comment) => comments.push(start.elapsed()),
            None => {}
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (4..=6).contains(&comments.len()),
        "comments at {comments:?}"
    );
    let quiet = Broker::start(&["--websocket-ping-interval", "0"]).await;
    let cid = es_handshake(&quiet).await;
    let mut s = open(&quiet, &cid).await;
    assert_eq!(
        s.next(PROMPT).await,
        Some(Event::Comment),
        "the opening one"
    );
    assert_eq!(
        s.next(Duration::from_millis(800)).await,
        None,
        "an interval of 0 sends no comments"
    );
}

#[tokio::test]
async fn an_unknown_or_missing_client_id_is_refused_at_once() {
    let b = Broker::fast().await;
    let s = open_on(&b, b.tcp().await, "0123456789abcdef0123456789abcdef").await;
    assert_eq!(s.status, 404, "{}", s.head);
    let mut s = s;
    let mut rest = String::new();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, s.stream.read_to_string(&mut rest)).await;
    let body = String::from_utf8_lossy(&s.buf).to_string() + &rest;
    assert!(body.contains("402::session_unknown"), "{body:?}");
    // A session that ended is as unknown.
    let cid = es_handshake(&b).await;
    b.disconnect(&cid).await;
    assert_eq!(open_on(&b, b.tcp().await, &cid).await.status, 404);
    // No clientId in the path.
    let mut raw = b.tcp().await;
    let r = exchange(
        &mut raw,
        &b.http1_request("GET", "", &[("accept", "text/event-stream")], b""),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    // An ack-extension session takes its deliveries on connect replies only: no stream.
    let msgs = b
        .batch(
            json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0",
                        "supportedConnectionTypes": ["eventsource", "long-polling"],
                        "ext": {"ack": true}}]),
        )
        .await;
    let acked = reply(&msgs, "h")["clientId"].as_str().unwrap().to_string();
    assert_eq!(open_on(&b, b.tcp().await, &acked).await.status, 400);
}

#[tokio::test]
async fn an_eventsource_connect_is_answered_at_once_and_leaves_deliveries_to_the_stream() {
    let b = Broker::start(&["--timeout", "5000"]).await;
    let cid = es_handshake(&b).await;
    b.subscribe(&cid, "/es").await;
    let mut s = open(&b, &cid).await;
    // Faye's first connect and every later one: answered at once, with Faye's advice (the next connect
    // after the server's timeout, not held).
    for id in ["c1", "c2"] {
        let sent = Instant::now();
        let msgs = es_connect(&b, &cid, id).await;
        assert!(sent.elapsed() < PROMPT, "{id} took {:?}", sent.elapsed());
        let r = reply(&msgs, id);
        assert_eq!(r["successful"], true, "{r}");
        assert_connect_advice(r, 5000, 0);
    }
    // The stream is still the reader.
    publish_numbers(&b, "/es", 0..1).await;
    assert_eq!(numbers(&s.data().await), [0]);
    // A delivery queued while a batch holding the connect is processed is not taken by the connect's
    // reply: the stream gets it.
    let msgs = b
        .batch(json!([
            {"id": "p", "channel": "/es", "clientId": cid, "data": {"n": 1}},
            {"id": "c3", "channel": "/meta/connect", "clientId": cid, "connectionType": "eventsource"}
        ]))
        .await;
    assert_eq!(reply(&msgs, "c3")["successful"], true, "{msgs:?}");
    assert_connect_advice(reply(&msgs, "c3"), 5000, 0);
    assert_eq!(numbers(&msgs), Vec::<u64>::new(), "{msgs:?}");
    assert_eq!(numbers(&s.data().await), [1]);
    // With no stream open (the browser re-opening it), the connect carries what is queued, as Faye's does.
    drop(s);
    sleep_ms(200).await;
    publish_numbers(&b, "/es", 2..4).await;
    let msgs = es_connect(&b, &cid, "c4").await;
    assert_eq!(numbers(&msgs), [2, 3], "{msgs:?}");
    assert_connect_advice(reply(&msgs, "c4"), 5000, 0);
}

#[tokio::test]
async fn a_closed_stream_leaves_the_session_to_age_from_its_last_connect() {
    let b = Broker::start(&[
        "--timeout",
        "3000",
        "--max-interval",
        "1000",
        "--sweep-interval",
        "100",
    ])
    .await;
    let cid = es_handshake(&b).await;
    b.subscribe(&cid, "/kept").await;
    let s = open(&b, &cid).await;
    es_connect(&b, &cid, "c1").await;
    // While the stream reads, the session does not expire.
    sleep_ms(1800).await;
    drop(s);
    sleep_ms(200).await;
    publish_numbers(&b, "/kept", 0..3).await;
    // The stream closing did not end the session, and nothing published meanwhile was lost.
    let mut s = open(&b, &cid).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(numbers(&s.data().await));
    }
    assert_eq!(got, [0, 1, 2]);
    // The eventsource connects tell the client to come back after `timeout` (3 s): the session lives that long
    // plus maxInterval after its stream closed or its last connect, longer than maxInterval alone (1 s).
    drop(s);
    sleep_ms(2000).await;
    let msgs = es_connect(&b, &cid, "c2").await;
    assert_connect_advice(reply(&msgs, "c2"), 3000, 0);
    sleep_ms(2500).await;
    let msgs = es_connect(&b, &cid, "c3").await;
    assert_eq!(reply(&msgs, "c3")["successful"], true, "{msgs:?}");
    // Without a connect or a stream, it is gone after timeout + maxInterval.
    sleep_ms(5500).await;
    let msgs = es_connect(&b, &cid, "c4").await;
    assert_session_unknown(reply(&msgs, "c4"), true);
}

#[tokio::test]
async fn a_newer_stream_a_disconnect_or_shutdown_ends_a_stream_and_a_long_poll_does_not() {
    let mut b = Broker::start(&["--timeout", "5000", "--shutdown-timeout", "2000"]).await;
    let cid = es_handshake(&b).await;
    b.subscribe(&cid, "/es").await;
    // A newer stream takes over delivery; the old one ends.
    let mut old = open(&b, &cid).await;
    let mut new = open(&b, &cid).await;
    old.closed(PROMPT).await;
    publish_numbers(&b, "/es", 0..1).await;
    assert_eq!(numbers(&new.data().await), [0]);
    // A long-polling connect while the stream reads (Faye's, before it has picked eventsource) is answered at
    // once beside it, as an eventsource connect is, and leaves it reading.
    let sent = Instant::now();
    let msgs = b.connect(&cid).await;
    assert!(sent.elapsed() < PROMPT, "held {:?}", sent.elapsed());
    assert_connect_advice(msgs.last().unwrap(), 5000, 0);
    publish_numbers(&b, "/es", 1..2).await;
    assert_eq!(numbers(&new.data().await), [1]);
    drop(new);
    // A disconnect ends a stream.
    let mut s = open(&b, &cid).await;
    b.disconnect(&cid).await;
    s.closed(PROMPT).await;
    // So does shutdown, and the server then exits without waiting for the stream.
    let cid = es_handshake(&b).await;
    let mut s = open(&b, &cid).await;
    let sent = Instant::now();
    b.signal("TERM");
    s.closed(PROMPT).await;
    assert!(sent.elapsed() < PROMPT, "{:?}", sent.elapsed());
    let status = b
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("halley did not exit");
    assert!(status.success(), "{status}");
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
    let cid = es_handshake(&b).await;
    b.subscribe(&cid, "/flood").await;
    // A small receive buffer, so that the server's writes block after a few MB whatever loopback autotuning
    // allows.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket
        .connect(([127, 0, 0, 1], b.port).into())
        .await
        .unwrap();
    let mut s = open_on(&b, stream, &cid).await;
    assert_eq!(s.status, 200);
    es_connect(&b, &cid, "c1").await;
    let watcher = b.session().await;
    b.subscribe(&watcher, "/other").await;
    let publisher = b.session().await;
    let payload = "x".repeat(60_000);
    // ~18 MB: more than the loopback socket buffers hold. Paced, so that the stream keeps taking deliveries
    // until the socket buffers are full.
    for n in 0..300u64 {
        let msgs = b
            .publish(&publisher, "/flood", json!({"n": n, "pad": payload}))
            .await;
        assert_eq!(msgs.last().unwrap()["successful"], true);
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
    // The write deadline (5 s) gives the stream up; the session stays, with what overflowed dropped.
    sleep_ms(6_500).await;
    let rss = b.rss_kib();
    assert!(
        rss < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss} KiB"
    );
    let mut on_stream = 0u64;
    loop {
        match s.next(REQUEST_TIMEOUT).await {
            Some(Event::Data(msgs)) => on_stream += numbers(&msgs).len() as u64,
            Some(Event::Comment) => {}
            Some(Event::Closed) => break,
            None => panic!("stream not closed after {on_stream} deliveries"),
        }
    }
    assert!(s.truncated || on_stream > 0, "nothing came on the stream");
    let msgs = b.connect_now(&cid).await;
    let r = msgs.last().unwrap();
    assert_eq!(r["successful"], true, "{r}");
    let dropped = r["ext"]["halley"]["dropped"].as_u64().unwrap_or(0);
    let queued = numbers(&msgs).len() as u64;
    assert!(queued <= 10, "{queued} queued over a bound of 10");
    assert!(dropped > 0, "nothing dropped: {r}");
    assert!(
        on_stream < 300,
        "the stream got everything: no back-pressure happened"
    );
    // The one event being written when the deadline cut the stream is gone with it (at most the queue bound).
    let accounted = on_stream + queued + dropped;
    assert!(
        (290..=300).contains(&accounted),
        "stream {on_stream} + queued {queued} + dropped {dropped} = {accounted} of 300"
    );
}

#[tokio::test]
async fn without_eventsource_in_transports_it_is_neither_offered_nor_served() {
    let b = Broker::start(&[
        "--timeout",
        "2000",
        "--transports",
        "long-polling,websocket",
    ])
    .await;
    let msgs = b
        .batch(
            json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0",
                        "supportedConnectionTypes": ["eventsource", "long-polling"]}]),
        )
        .await;
    let r = reply(&msgs, "h");
    assert_eq!(
        r["supportedConnectionTypes"],
        json!(["websocket", "long-polling"]),
        "{r}"
    );
    let cid = r["clientId"].as_str().unwrap().to_string();
    assert_eq!(open_on(&b, b.tcp().await, &cid).await.status, 400);
    // An eventsource connect is then an ordinary one: held, with the usual advice.
    b.connect_now(&cid).await;
    let sent = Instant::now();
    let msgs = es_connect(&b, &cid, "c").await;
    assert!(sent.elapsed() >= Duration::from_millis(1500), "not held");
    assert_eq!(reply(&msgs, "c")["advice"]["interval"], 0, "{msgs:?}");
    // eventsource sends its requests over long-polling, so it cannot be on alone.
    let out = run_halley(
        &["--listen", "127.0.0.1:0", "--transports", "eventsource"],
        None,
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("long-polling"),
        "{out:?}"
    );
}
