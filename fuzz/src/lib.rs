//! Checks shared by the fuzz targets in `fuzz_targets/`.

use halley::protocol::{Delivery, Message, Reply, epoch_ms};
use std::collections::HashMap;

use serde_json::value::RawValue;

/// What the broker does with every decoded message, minus the broker: validate the id,
/// read the advice, build and encode the reply (with the timesync answer) and the delivery.
/// Panics when an encoding is not a JSON object of the expected shape.
pub fn check_messages(batch: &mut [Message]) {
    assert!(!batch.is_empty(), "a decoded batch is never empty");
    let now = epoch_ms();
    for message in batch.iter_mut() {
        // The broker stamps messages that carry `ext`, for timesync.
        if message.ext.is_some() {
            message.received_ms = Some(now);
        }
    }
    for message in batch.iter() {
        let _ = message.id_is_valid();
        let _ = message.advice_ms("timeout");
        let _ = message.advice_ms("interval");

        let reply = Reply::to(message).encode();
        let fields = object(&reply, "reply");
        assert_eq!(raw(&fields, "successful"), Some("true"));
        assert!(!fields.contains_key("data"), "an ack never carries data");
        let id = message.id.as_deref().map(RawValue::get);
        assert_eq!(raw(&fields, "id"), id, "the id is echoed byte for byte");

        let channel = message.channel.as_deref().unwrap_or("/fuzz");
        let delivery = Delivery::of(channel, message).encode();
        let fields = object(&delivery, "delivery");
        let echoed: String = serde_json::from_str(raw(&fields, "channel").expect("a channel"))
            .expect("the channel is a string");
        assert_eq!(echoed, channel);
        for steering in ["id", "clientId", "advice", "successful"] {
            assert!(
                !fields.contains_key(steering),
                "a delivery never carries {steering}"
            );
        }
        let data = message.data.as_deref().map_or("null", RawValue::get);
        assert_eq!(
            raw(&fields, "data"),
            Some(data),
            "the payload is forwarded byte for byte"
        );
        for field in ["ext", "timestamp"] {
            let sent = match field {
                "ext" => message.ext.as_deref(),
                _ => message.timestamp.as_deref(),
            };
            assert_eq!(
                raw(&fields, field),
                sent.map(RawValue::get),
                "{field} is forwarded"
            );
        }
    }
}

/// The top-level fields of an encoded message, values left as raw JSON text. Parsing the
/// values into `serde_json::Value` would be stricter than JSON itself (`1e400` is valid
/// JSON that `Value` refuses), so this checks JSON syntax and the object shape only.
fn object<'a>(bytes: &'a [u8], what: &str) -> HashMap<String, &'a RawValue> {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what} is not a JSON object ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    })
}

fn raw<'a>(fields: &HashMap<String, &'a RawValue>, key: &str) -> Option<&'a str> {
    fields.get(key).map(|value| value.get())
}

/// Largest body in the HTTP/1.1 framing checks: small, so the 413 paths are reached.
pub const HTTP1_MAX_BODY: usize = 1024;

/// The HTTP/1.1 request reader's framing of `data` as one connection's bytes: the same
/// requests (or the same refusal) whether the bytes arrive at once, byte by byte or split
/// anywhere in two; each request framed once, in order, within the input; nothing after a
/// refusal or a `Connection: close`. Returns the framing.
pub fn check_http1_framing(data: &[u8]) -> Vec<halley::server::http1::Framed> {
    use halley::server::http1::{Framed, frame};
    let whole = frame(data, &[], HTTP1_MAX_BODY);
    let every: Vec<usize> = (1..data.len()).collect();
    assert_eq!(
        frame(data, &every, HTTP1_MAX_BODY),
        whole,
        "byte by byte differs from one read"
    );
    // Every two-piece split for short inputs; a spread of them for long ones.
    let step = (data.len() / 256).max(1);
    for at in (1..data.len()).step_by(step) {
        assert_eq!(
            frame(data, &[at], HTTP1_MAX_BODY),
            whole,
            "split at {at} differs from one read"
        );
    }
    let (last, requests) = whole.split_last().expect("framing always ends somehow");
    let mut previous_end = 0;
    for request in requests {
        match request {
            Framed::Request {
                body, end, close, ..
            } => {
                assert!(*end > previous_end, "a request consumes bytes");
                assert!(*end <= data.len(), "a request ends within the input");
                assert!(body.len() <= HTTP1_MAX_BODY, "a body over the limit");
                assert!(!close, "a request after Connection: close");
                previous_end = *end;
            }
            other => panic!("{other:?} before the end of the framing"),
        }
    }
    match last {
        Framed::Request { end, body, .. } => {
            assert!(*end > previous_end && *end <= data.len());
            assert!(body.len() <= HTTP1_MAX_BODY);
        }
        Framed::Refused(status) => assert!(
            [400, 413, 431, 501].contains(status),
            "refused with {status}"
        ),
        Framed::Incomplete(_) => {}
    }
    whole
}
