//! Hostile clients against the broker (issue 16): a caller that never collects its service
//! answers, and replies bounded in bytes.

use halley_protocol_tests::*;

/// A client that calls a service over and over and never connects (its answers wait for a
/// connect) meets the queue bound: the calls past `--max-queue` fail with `503::server_busy`
/// instead of growing its queue, and no reply carries more than `--max-response-bytes` of
/// deliveries; the rest comes on the next connects.
#[tokio::test]
async fn service_answers_count_against_the_queue_and_replies_are_bounded() {
    let b = Broker::start(&[
        "--max-queue",
        "50",
        "--connect-only-delivery",
        "true",
        "--max-response-bytes",
        "65536",
    ])
    .await;
    let c = b.client();
    let cid = c.session().await;
    let payload = "x".repeat(6_000);
    let (mut accepted, mut busy) = (0, 0);
    for _ in 0..80 {
        let id = next_id("e");
        let msgs = c
            .batch(
                json!([{"id": id, "channel": "/service/echo", "clientId": cid, "data": payload}]),
            )
            .await;
        let r = reply(&msgs, &id);
        if r["successful"] == true {
            accepted += 1;
        } else {
            assert_eq!(r["error"], "503::server_busy", "{r}");
            busy += 1;
        }
    }
    assert_eq!(
        (accepted, busy),
        (50, 30),
        "the queue bound applies to answers"
    );
    let mut answers = 0;
    for _ in 0..20 {
        let r = c
            .post(
                "",
                json!([{"id": next_id("c"), "channel": "/meta/connect", "clientId": cid,
                              "connectionType": "long-polling", "advice": {"timeout": 0}}]),
            )
            .await;
        assert!(
            r.body.len() <= 65_536 + 8_192,
            "a reply of {} bytes",
            r.body.len()
        );
        let got = r
            .messages()
            .iter()
            .filter(|m| m["channel"] == "/service/echo")
            .count();
        if got == 0 {
            break;
        }
        answers += got;
    }
    assert_eq!(
        answers, 50,
        "every accepted call is answered, over several replies"
    );
}
