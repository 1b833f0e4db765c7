//! The broker's own HTTP/1.1 server (`src/server/http1.rs`) as clients and proxies use it: chunked
//! bodies, `Expect: 100-continue`, pipelining, HTTP/1.0 keep-alive, refused framing, oversized heads,
//! and HTTP/2 with prior knowledge handed to hyper. Each test speaks raw bytes over loopback.

use std::time::{Duration, Instant};

use halley_protocol_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HANDSHAKE: &str = r#"[{"id":"1","channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]"#;

fn handshake_ok(r: &Resp) {
    assert_eq!(r.status, 200, "{r:?}");
    let reply: Value = r.json();
    assert_eq!(reply[0]["successful"], true, "{reply}");
}

/// Reads until the peer closes (or `within` passes): everything received, and whether it closed.
async fn drain(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let (got, closed) = read_until_closed(stream, Instant::now(), within).await;
    (String::from_utf8_lossy(&got).into(), closed.is_some())
}

fn head(b: &Broker, extra: &str) -> String {
    format!(
        "POST {} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\n{extra}\r\n",
        b.path, b.port
    )
}

#[tokio::test]
async fn a_chunked_body_is_decoded_and_the_connection_kept() {
    let b = Broker::fast().await;
    let mut stream = b.tcp().await;
    let body = HANDSHAKE.as_bytes();
    let (first, rest) = body.split_at(10);
    let mut request = head(&b, "transfer-encoding: chunked\r\n").into_bytes();
    for chunk in [first, rest] {
        request.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\nx-trailer: yes\r\n\r\n");
    handshake_ok(&exchange(&mut stream, &request).await);
    // The same connection serves the next request.
    let again = b.http1_request("POST", "", &[("content-type", "application/json")], body);
    handshake_ok(&exchange(&mut stream, &again).await);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let b = Broker::fast().await;
    let mut stream = b.tcp().await;
    let extra = format!(
        "expect: 100-continue\r\ncontent-length: {}\r\n",
        HANDSHAKE.len()
    );
    stream.write_all(head(&b, &extra).as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(PROMPT, stream.read_exact(&mut interim))
        .await
        .expect("no 100 Continue while the client waits for it")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    handshake_ok(&exchange(&mut stream, HANDSHAKE.as_bytes()).await);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let b = Broker::fast().await;
    let mut stream = b.tcp().await;
    let mut both = b.http1_request(
        "POST",
        "",
        &[("content-type", "application/json")],
        HANDSHAKE.as_bytes(),
    );
    let health = format!(
        "GET /health HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nconnection: close\r\n\r\n",
        b.port
    );
    both.extend_from_slice(health.as_bytes());
    stream.write_all(&both).await.unwrap();
    let (text, closed) = drain(&mut stream, Duration::from_secs(5)).await;
    let handshake = text.find("\"channel\":\"/meta/handshake\",\"successful\":true");
    let second = text.rfind("HTTP/1.1 200 ");
    assert!(
        closed
            && text.starts_with("HTTP/1.1 200 ")
            && handshake.zip(second).is_some_and(|(h, s)| h < s)
            && text.ends_with(r#"{"status":"ok"}"#),
        "pipelined answers {text:?}, closed {closed}"
    );
}

#[tokio::test]
async fn http_1_0_closes_unless_asked_to_keep_alive() {
    let b = Broker::fast().await;
    let get = |extra: &str| format!("GET /health HTTP/1.0\r\n{extra}\r\n");
    let mut stream = b.tcp().await;
    stream.write_all(get("").as_bytes()).await.unwrap();
    let (text, closed) = drain(&mut stream, Duration::from_secs(3)).await;
    assert!(
        text.starts_with("HTTP/1.1 200 ") && closed,
        "HTTP/1.0 answer {text:?}, closed {closed}"
    );

    let mut stream = b.tcp().await;
    let r = exchange(&mut stream, get("connection: keep-alive\r\n").as_bytes()).await;
    assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
    let r = exchange(&mut stream, get("connection: keep-alive\r\n").as_bytes()).await;
    assert_eq!(
        r.status, 200,
        "second request on the kept connection: {r:?}"
    );
}

#[tokio::test]
async fn ambiguous_framing_is_refused_with_400_and_the_server_serves_on() {
    let b = Broker::fast().await;
    for extra in [
        "content-length: 5\r\ntransfer-encoding: chunked\r\n",
        "content-length: 5\r\ncontent-length: 6\r\n",
        "content-length: abc\r\n",
    ] {
        let mut stream = b.tcp().await;
        stream.write_all(head(&b, extra).as_bytes()).await.unwrap();
        stream.write_all(b"[{}]\r\n").await.unwrap();
        let (text, closed) = drain(&mut stream, Duration::from_secs(3)).await;
        assert!(
            text.starts_with("HTTP/1.1 400 ") && closed,
            "{extra:?} answered {text:?}, closed {closed}"
        );
    }
    b.session().await;
}

#[tokio::test]
async fn a_head_over_8_kib_gets_431() {
    let b = Broker::fast().await;
    let mut stream = b.tcp().await;
    let filler = "x".repeat(9 * 1024);
    let request = format!("GET /health HTTP/1.1\r\nhost: a\r\nx-filler: {filler}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let (text, closed) = drain(&mut stream, Duration::from_secs(3)).await;
    assert!(
        text.starts_with("HTTP/1.1 431 ") && closed,
        "{text:?}, closed {closed}"
    );
    b.session().await;
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    let b = Broker::fast().await;
    let mut stream = b.tcp().await;
    // The client preface, then an empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(PROMPT, stream.read_exact(&mut frame))
        .await
        .expect("no HTTP/2 frame from the server")
        .unwrap();
    assert_eq!(
        frame[3], 4,
        "the server's first frame is SETTINGS: {frame:?}"
    );
}

/// The broker's answer to one raw request on a fresh connection: the status (0 when the connection closed
/// without an answer) and the raw text.
async fn probe(b: &Broker, request: &[u8]) -> (u16, String) {
    let mut stream = b.tcp().await;
    stream.write_all(request).await.unwrap();
    let (text, _) = drain(&mut stream, Duration::from_secs(3)).await;
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A chunked handshake whose chunk section is `chunks` (the handshake's JSON is the first chunk).
fn chunked_handshake(b: &Broker, version: &str, chunks: &str) -> Vec<u8> {
    let mut request = head(b, "transfer-encoding: chunked\r\nconnection: close\r\n")
        .replacen(" HTTP/1.1\r\n", &format!(" {version}\r\n"), 1)
        .into_bytes();
    request.extend_from_slice(format!("{:x}\r\n{HANDSHAKE}\r\n", HANDSHAKE.len()).as_bytes());
    request.extend_from_slice(chunks.as_bytes());
    request
}

#[tokio::test]
async fn chunked_bodies_are_framed_as_strictly_as_hyper_frames_them() {
    let b = Broker::fast().await;
    let (ok, text) = probe(
        &b,
        &chunked_handshake(&b, "HTTP/1.1", "0\r\nx-t: 1\r\n\r\n"),
    )
    .await;
    assert_eq!(ok, 200, "a well-formed chunked body: {text:?}");
    let many_trailers = "x-t: 0123456789abcdef\r\n".repeat(400);
    // Six chunks with 900 extension bytes each: no size line is long, their sum is over the cap.
    let long_extensions = format!("1;{}\r\n \r\n", "e".repeat(900)).repeat(6) + "0\r\n\r\n";
    for (what, version, chunks, expected) in [
        (
            "a bare LF inside a chunk extension",
            "HTTP/1.1",
            "1;a\nb\r\n \r\n0\r\n\r\n",
            400,
        ),
        (
            "chunked on an HTTP/1.0 request",
            "HTTP/1.0",
            "0\r\n\r\n",
            400,
        ),
        (
            "5,400 chunk-extension bytes in six chunks",
            "HTTP/1.1",
            &long_extensions,
            400,
        ),
        (
            "9,200 trailer bytes",
            "HTTP/1.1",
            &format!("0\r\n{many_trailers}\r\n"),
            431,
        ),
        // `body.len() + size` wrapped: the old decoder sliced out of bounds and dropped the connection.
        (
            "a chunk size that wraps the body length",
            "HTTP/1.1",
            "fffffffffffffffe\r\n\r\n",
            413,
        ),
    ] {
        let (status, text) = probe(&b, &chunked_handshake(&b, version, chunks)).await;
        assert_eq!(status, expected, "{what}: answered {text:?}");
    }
    b.session().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection_after_the_write_timeout() {
    // One connection at a time: while the stalled answer pins it, no other connection is served.
    // Replies unbounded in bytes here, so the stalled answer is far larger than the socket buffers.
    let b = Broker::start(&[
        "--max-connections",
        "1",
        "--write-timeout",
        "1000",
        "--max-response-bytes",
        "67108864",
    ])
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(([127, 0, 0, 1], b.port).into())
        .await
        .unwrap();
    let post = |body: Value| {
        b.http1_request(
            "POST",
            "",
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    let mut handshake = async || {
        let hs = json!([{"id": "h", "channel": "/meta/handshake", "version": "1.0",
            "supportedConnectionTypes": ["long-polling"]}]);
        let r = exchange(&mut stream, &post(hs)).await;
        r.json()[0]["clientId"].as_str().unwrap().to_string()
    };
    let (cid, publisher) = (handshake().await, handshake().await);
    for msg in [
        json!({"id": "s", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/big"}),
        connect_msg("c0", &cid),
    ] {
        assert_eq!(exchange(&mut stream, &post(json!([msg]))).await.status, 200);
    }
    // 300 deliveries of 60 KB queue 18 MB for `cid`, far more than the socket buffers hold.
    let data = "x".repeat(60_000);
    for n in 0..300 {
        let publish =
            json!([{"id": n.to_string(), "channel": "/big", "clientId": publisher, "data": data}]);
        let r = exchange(&mut stream, &post(publish)).await;
        assert!(
            r.status == 200 && r.body.len() < 200,
            "publish answered {}",
            r.status
        );
    }
    let mut connect = connect_msg("c1", &cid);
    merge(&mut connect, json!({"advice": {"timeout": 0}}));
    stream.write_all(&post(json!([connect]))).await.unwrap();
    // Never read: the answer stalls in the socket. Once the write times out, the connection (and its permit) is
    // let go and a new connection is served.
    let start = Instant::now();
    loop {
        let mut other = b.tcp().await;
        other
            .write_all(b"GET /health HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let (text, _) = drain(&mut other, Duration::from_secs(1)).await;
        if text.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "the stalled answer still pins the only connection after {:?}",
            start.elapsed()
        );
        sleep_ms(200).await;
    }
    drop(stream);
}

/// Context switches of every thread of process `pid` so far: a count of its wake-ups.
fn context_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

#[tokio::test]
async fn a_partial_http2_preface_costs_no_wake_ups() {
    let b = Broker::fast().await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut stream = b.tcp().await;
        stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        stalled.push(stream);
    }
    sleep_ms(300).await;
    let before = context_switches(b.pid());
    sleep_ms(1000).await;
    let woke = context_switches(b.pid()) - before;
    // Polling each socket every 5 ms made ~700 a second here; waiting for readiness makes a handful.
    assert!(
        woke < 100,
        "{woke} wake-ups in 1 s with 20 connections stalled mid-preface"
    );
    // The rest of the preface still opens HTTP/2 on each.
    let mut stream = stalled.pop().unwrap();
    stream.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(PROMPT, stream.read_exact(&mut frame))
        .await
        .expect("no HTTP/2 frame after the completed preface")
        .unwrap();
    assert_eq!(
        frame[3], 4,
        "the server's first frame is SETTINGS: {frame:?}"
    );
}

#[tokio::test]
async fn a_connect_read_from_a_closed_socket_does_not_supersede_the_live_one() {
    let b = Broker::start(&["--timeout", "6000"]).await;
    let s = b.session().await;
    b.subscribe(&s, "/live").await;
    let t = b.session().await;
    // On one socket: a connect of session T held 1.5 s, then a connect of S behind it; then the client closes its
    // side. S's connect is read only after T's is answered, long after the client left.
    let mut hold_t = connect_msg("t1", &t);
    merge(&mut hold_t, json!({"advice": {"timeout": 1500}}));
    let mut stale = b.tcp().await;
    for msg in [hold_t, connect_msg("stale", &s)] {
        let bytes = b.http1_request(
            "POST",
            "",
            &[("content-type", "application/json")],
            json!([msg]).to_string().as_bytes(),
        );
        stale.write_all(&bytes).await.unwrap();
    }
    stale.shutdown().await.unwrap();
    // S's live connect, on its own connection.
    let c = b.client();
    let s2 = s.clone();
    let live = tokio::spawn(async move { c.post("", json!([connect_msg("live", &s2)])).await });
    // The old socket closes once T's answer is written and S's connect was dropped (or held and then dropped).
    let (text, closed) = drain(&mut stale, Duration::from_secs(5)).await;
    assert!(
        closed && text.contains("\"t1\""),
        "T's answer {text:?}, closed {closed}"
    );
    // The live connect is still held: a publish answers it.
    let publisher = b.session().await;
    b.publish(&publisher, "/live", json!("still here")).await;
    let r = tokio::time::timeout(Duration::from_secs(3), live)
        .await
        .expect("the live connect was not answered by the publish")
        .unwrap();
    assert_eq!(
        r.status, 200,
        "live connect superseded by the stale one: {r:?}"
    );
    assert_eq!(data_on(&r.messages(), "/live"), [json!("still here")]);
}

/// `VmData` of process `pid` in KiB: memory the process has reserved, touched or not.
fn vm_data_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmData:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmData")
}

#[tokio::test]
async fn body_space_grows_with_the_data_not_with_content_length() {
    let b = Broker::fast().await;
    let before = vm_data_kib(b.pid());
    let mut stalled = Vec::new();
    for _ in 0..500 {
        let mut stream = b.tcp().await;
        stream
            .write_all(head(&b, "content-length: 65536\r\n").as_bytes())
            .await
            .unwrap();
        stream.write_all(b"[").await.unwrap();
        stalled.push(stream);
    }
    // The heads are read soon; the most it ever reserved over 2 s is what counts.
    let mut grew = 0;
    for _ in 0..20 {
        sleep_ms(100).await;
        grew = grew.max(vm_data_kib(b.pid()).saturating_sub(before));
    }
    // Reserving 64 KiB per promised body made this 32 MiB; a few KiB per connection is what arrived.
    assert!(
        grew < 12 * 1024,
        "500 connections that promised 64 KiB bodies and sent 1 byte reserved {grew} KiB"
    );
}
