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
