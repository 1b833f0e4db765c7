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
