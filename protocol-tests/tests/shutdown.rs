//! Graceful shutdown on SIGTERM (contract "Update"): held connects are answered at once with
//! `successful:true, advice:{reconnect:"retry", interval:0, timeout}` and the process exits with status 0 within
//! `--shutdown-timeout`.

use std::time::{Duration, Instant};

use halley_protocol_tests::*;

#[tokio::test]
async fn sigterm_answers_held_connects_with_retry_and_exits_0() {
    let mut b = Broker::start(&["--timeout", "10000", "--shutdown-timeout", "2000"]).await;
    let one = b.session().await;
    let two = b.session().await;
    let mut held = Vec::new();
    for (cid, id) in [(&one, "c1"), (&two, "c2")] {
        let c = b.client();
        let cid = cid.clone();
        held.push(spawn_timed(async move {
            c.batch(json!([connect_msg(id, &cid)])).await
        }));
    }
    sleep_ms(400).await;
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "the connects were not held"
    );

    let sent = Instant::now();
    b.signal("TERM");
    for (h, id) in held.into_iter().zip(["c1", "c2"]) {
        let (msgs, done) = h.await.unwrap();
        assert!(
            done - sent < PROMPT,
            "{id} answered {:?} after SIGTERM",
            done - sent
        );
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        let r = reply(&msgs, id);
        assert_eq!(r["channel"], "/meta/connect");
        assert_eq!(r["successful"], true, "{r}");
        assert_eq!(
            r["advice"],
            json!({"reconnect": "retry", "interval": 0, "timeout": 10000}),
            "{r}"
        );
    }

    let status = b
        .wait_exit(Duration::from_millis(3000).saturating_sub(sent.elapsed()))
        .await
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", sent.elapsed()));
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[tokio::test]
async fn sigterm_on_an_idle_broker_exits_0_promptly() {
    let mut b = Broker::start(&["--shutdown-timeout", "2000"]).await;
    let cid = b.session().await;
    b.subscribe(&cid, "/idle").await;
    let sent = Instant::now();
    b.signal("TERM");
    let status = b
        .wait_exit(Duration::from_millis(3000))
        .await
        .expect("still running 3 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    // Nothing was in flight, so nothing had to wait for the deadline.
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "exit took {:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn sigterm_exits_within_the_deadline_despite_a_stuck_request() {
    // A client that sends half a request and never finishes it must not keep the process alive past
    // --shutdown-timeout.
    let mut b = Broker::start(&["--shutdown-timeout", "1000"]).await;
    let mut stream = b.client().tcp().await;
    use tokio::io::AsyncWriteExt;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[",
        b.path, b.port
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    sleep_ms(300).await;
    let sent = Instant::now();
    b.signal("TERM");
    let status = b
        .wait_exit(Duration::from_millis(2000))
        .await
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", sent.elapsed()));
    assert_eq!(status.code(), Some(0), "exit status {status}");
}
