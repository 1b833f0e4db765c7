//! The wire model: inbound messages, outbound replies and deliveries, advice.
//!
//! Inbound payloads (`id`, `data`, `ext`, `timestamp`) stay as raw JSON text so they are
//! echoed and forwarded byte-for-byte (an `id` keeps its JSON type, `ext.binary` survives)
//! and are never re-encoded. Outbound messages are serialized once into [`Bytes`], which the
//! broker shares between every recipient's queue.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::BayeuxError;

/// Longest `id` accepted, in characters of its JSON text.
pub const MAX_ID_LEN: usize = 256;

/// Protocol version this broker speaks and advertises.
pub const BAYEUX_VERSION: &str = "1.0";

/// One inbound Bayeux message, as any client sends it.
///
/// Fields this broker does not act on (`version`, `supportedConnectionTypes`, legacy
/// fields) are accepted and ignored; of `connectionType` only `eventsource` matters.
///
/// It serializes back to what it was read from (less the ignored fields) when a node
/// relays a request to the node that serves its session.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct Message {
    /// Mandatory in practice; a message without it gets `400::channel_missing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Session id; absent only on handshakes.
    #[serde(rename = "clientId", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Correlation token, echoed verbatim (string stays string, number stays number).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Box<RawValue>>,
    /// Application payload of a publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// Extension fields, forwarded untouched on deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext: Option<Box<RawValue>>,
    /// Opaque timestamp, forwarded untouched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Box<RawValue>>,
    /// Client advice on connects (transient `timeout`/`interval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<Value>,
    /// Pattern(s) of a subscribe or unsubscribe; echoed with its exact shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Value>,
    /// When the broker received the message, ms since the Unix epoch; set for messages
    /// that carry `ext`, for the timesync extension. Never on the wire.
    #[serde(skip)]
    pub received_ms: Option<u64>,
    /// `connectionType: "eventsource"`: Faye's connect sent over HTTP while its EventSource
    /// stream takes the deliveries, answered at once. A flag, not the string: every connect
    /// names its type, and only this one changes what the broker does.
    #[serde(
        rename = "connectionType",
        default,
        deserialize_with = "is_eventsource",
        serialize_with = "eventsource_type",
        skip_serializing_if = "is_false"
    )]
    pub eventsource: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Writes the flag back as the one connection type it stands for.
fn eventsource_type<S: serde::Serializer>(_: &bool, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("eventsource")
}

/// Reads `connectionType` as whether it is `"eventsource"`, without allocating, and
/// accepting any JSON value there (the field was ignored before, so nothing is refused
/// for its shape now).
fn is_eventsource<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

    struct IsEventSource;

    impl<'de> Visitor<'de> for IsEventSource {
        type Value = bool;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a connection type")
        }

        fn visit_str<E>(self, v: &str) -> Result<bool, E> {
            Ok(v == "eventsource")
        }

        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(false)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(false)
        }
    }

    deserializer.deserialize_any(IsEventSource)
}

impl Message {
    /// The client's transient connect advice field `name`, if it is a non-negative number.
    pub fn advice_ms(&self, name: &str) -> Option<u64> {
        let value = self.advice.as_ref()?.get(name)?;
        value
            .as_u64()
            .or_else(|| value.as_f64().filter(|v| *v >= 0.0).map(|v| v as u64))
            .or_else(|| value.as_i64().map(|_| 0))
    }

    /// Whether the `id` has an acceptable shape: a string or number of bounded length.
    pub fn id_is_valid(&self) -> bool {
        match &self.id {
            None => true,
            Some(raw) => {
                let text = raw.get();
                text.len() <= MAX_ID_LEN + 2
                    && matches!(text.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
            }
        }
    }
}

/// Why a request body is not a Bayeux batch. Each one is an HTTP 400 at the transport.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A number, string, `true`… at the top level.
    #[error("a Bayeux request must be a JSON array of messages or a single message object")]
    NotABatch,
    /// Bytes that are not UTF-8.
    #[error("the request is not valid UTF-8")]
    NotUtf8,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// `[]`, or a body with no message at all.
    #[error("the request carries no message")]
    Empty,
}

/// Deepest JSON nesting accepted in a request, counting the batch array and the message
/// object. Payloads are forwarded without being parsed, so this is checked up front to
/// spare every subscriber's JSON parser.
pub const MAX_DEPTH: usize = 64;

/// Parses a JSON array of messages, or a single message object, and appends them to `batch`.
pub fn decode_batch(text: &[u8], batch: &mut Vec<Message>) -> Result<(), DecodeError> {
    // serde_json checks UTF-8 only in what it reads closely; ignored fields would slip by.
    let text = std::str::from_utf8(text).map_err(|_| DecodeError::NotUtf8)?;
    if nesting_depth(text.as_bytes()) > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    match text.bytes().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => batch.extend(serde_json::from_str::<Vec<Message>>(text)?),
        Some(b'{') => batch.push(serde_json::from_str::<Message>(text)?),
        None => return Err(DecodeError::Empty),
        Some(_) => return Err(DecodeError::NotABatch),
    }
    if batch.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(())
}

/// The deepest bracket nesting of a JSON text, ignoring brackets inside strings. One pass,
/// no allocation; malformed text is left for the parser to reject.
fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// What a client should do after a reply (BAYEUX.md 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reconnect {
    /// Send the next `/meta/connect` after `interval`.
    Retry,
    /// The session is gone: handshake again.
    Handshake,
    /// Stop.
    None,
}

/// Server advice, attached only to handshake and connect replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Advice {
    /// The action.
    pub reconnect: Reconnect,
    /// Pause before the next connect, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// How long the server holds a connect, ms; clients size their request timeouts from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Set when this browser already holds its allowed number of long polls.
    #[serde(rename = "multiple-clients", skip_serializing_if = "Option::is_none")]
    pub multiple_clients: Option<bool>,
}

impl Advice {
    /// The advice that sends a client back to `/meta/handshake` at once.
    pub const HANDSHAKE: Advice = Advice {
        reconnect: Reconnect::Handshake,
        interval: Some(0),
        timeout: None,
        multiple_clients: None,
    };

    /// The advice that stops a client.
    pub const NONE: Advice = Advice {
        reconnect: Reconnect::None,
        interval: None,
        timeout: None,
        multiple_clients: None,
    };

    /// `retry` with the given interval and hold time.
    pub fn retry(interval: u64, timeout: u64) -> Advice {
        Advice {
            reconnect: Reconnect::Retry,
            interval: Some(interval),
            timeout: Some(timeout),
            multiple_clients: None,
        }
    }
}

/// A reply to one inbound message. Built by the broker, serialized once with [`Reply::encode`].
///
/// It starts as `{channel, id}` of the request, so `data` can never leak into an ack.
#[derive(Debug, Serialize)]
pub struct Reply<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    /// Whether the request succeeded.
    pub successful: bool,
    /// `code:args:message` when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set on a successful handshake.
    #[serde(rename = "clientId", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    /// Set on handshake replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    /// Set on handshake replies.
    #[serde(rename = "minimumVersion", skip_serializing_if = "Option::is_none")]
    pub minimum_version: Option<&'static str>,
    /// Set on handshake replies: the transports that really work.
    #[serde(
        rename = "supportedConnectionTypes",
        skip_serializing_if = "Option::is_none"
    )]
    pub supported_connection_types: Option<&'a [&'static str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<&'a Value>,
    /// Only on handshake and connect replies (BAYEUX.md 3.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<Advice>,
    /// Extension data for the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext: Option<Value>,
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `ext.timesync` answer to `request` (BAYEUX.md 6.3), when it is a meta message that
/// asked: the client's `tc` echoed, `ts` when the server received it, `p` how long the
/// server had it (a held connect's hold included) and, for the current protocol, `a`.
fn timesync(request: &Message) -> Option<Value> {
    let received = request.received_ms?;
    if !request.channel.as_deref()?.starts_with("/meta/") {
        return None;
    }
    let ext: Value = serde_json::from_str(request.ext.as_deref()?.get()).ok()?;
    let sync = ext.get("timesync")?;
    let tc = sync.get("tc")?.as_i64()?;
    let mut answer =
        serde_json::json!({"tc": tc, "ts": received, "p": epoch_ms().saturating_sub(received)});
    if let (Some(l), Some(o)) = (
        sync.get("l").and_then(Value::as_i64),
        sync.get("o").and_then(Value::as_i64),
    ) {
        // Client-supplied numbers: computed wide, and left out when they make no sense.
        let a = i128::from(tc) + i128::from(o) + i128::from(l) - i128::from(received);
        if let Ok(a) = i64::try_from(a) {
            answer["a"] = serde_json::json!(a);
        }
    }
    Some(answer)
}

impl<'a> Reply<'a> {
    /// A successful reply to `request`, echoing its `channel`, `id` and `subscription`,
    /// with the timesync answer when the request asked for one.
    pub fn to(request: &'a Message) -> Self {
        Reply {
            id: request.id.as_deref(),
            channel: request.channel.as_deref(),
            successful: true,
            error: None,
            client_id: None,
            version: None,
            minimum_version: None,
            supported_connection_types: None,
            subscription: request.subscription.as_ref(),
            advice: None,
            ext: timesync(request).map(|sync| serde_json::json!({ "timesync": sync })),
        }
    }

    /// Adds `key: value` to the reply's `ext` object.
    pub fn add_ext(&mut self, key: &str, value: Value) {
        match &mut self.ext {
            Some(Value::Object(fields)) => {
                fields.insert(key.to_string(), value);
            }
            ext => *ext = Some(serde_json::json!({ key: value })),
        }
    }

    /// Adds every field of the object `ext` to the reply's `ext`.
    pub fn merge_ext(&mut self, ext: Value) {
        if let Value::Object(fields) = ext {
            for (key, value) in fields {
                self.add_ext(&key, value);
            }
        }
    }

    /// A failed reply to `request` carrying `error`.
    pub fn failed(request: &'a Message, error: BayeuxError) -> Self {
        let mut reply = Reply::to(request);
        reply.fail(error);
        reply
    }

    /// Turns this reply into a failure.
    pub fn fail(&mut self, error: BayeuxError) {
        self.successful = false;
        self.error = Some(error.to_string());
    }

    /// Serializes the reply for the response body.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }
}

/// The copy of a publish that subscribers receive: `channel`, `data`, `ext`, `timestamp`,
/// and nothing a publisher could use to steer other clients (`advice`, `id`, `clientId`).
#[derive(Debug, Serialize)]
pub struct Delivery<'a> {
    /// The channel it was published on.
    pub channel: &'a str,
    /// The payload; `null` when the publish had none.
    pub data: &'a RawValue,
    /// The publisher's extension fields, verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext: Option<&'a RawValue>,
    /// The publisher's timestamp, verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<&'a RawValue>,
}

impl<'a> Delivery<'a> {
    /// The broadcast copy of `message` published on `channel`.
    pub fn of(channel: &'a str, message: &'a Message) -> Self {
        Delivery {
            channel,
            data: message.data.as_deref().unwrap_or_else(|| null()),
            ext: message.ext.as_deref(),
            timestamp: message.timestamp.as_deref(),
        }
    }

    /// Serializes the delivery once; the bytes are shared by every recipient.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }
}

/// A message sent to one session only, such as a service handler's answer to a
/// `remoteCall`, which CometD JS matches by the request's `id` and requires `data` on.
#[derive(Debug, Serialize)]
pub struct DirectMessage<'a> {
    /// The request's id when this answers a request; absent for unsolicited pushes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a RawValue>,
    /// The channel.
    pub channel: &'a str,
    /// Present on answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successful: Option<bool>,
    /// The payload.
    pub data: &'a Value,
}

impl DirectMessage<'_> {
    /// Serializes the message.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }
}

/// The `/meta/disconnect` message queued to a session the server removes, so that
/// CometD JS stops reconnecting (BAYEUX.md 2.6).
pub fn server_disconnect() -> Bytes {
    Bytes::from_static(br#"{"channel":"/meta/disconnect","successful":true}"#)
}

fn null() -> &'static RawValue {
    // `RawValue::NULL` is a valid constant of the serde_json version we depend on.
    RawValue::NULL
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    // Serializing our own structs of strings, raw JSON and numbers cannot fail.
    match serde_json::to_vec(value) {
        Ok(bytes) => Bytes::from(bytes),
        Err(_) => Bytes::from_static(b"{}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Message> {
        let mut batch = Vec::new();
        decode_batch(text.as_bytes(), &mut batch).expect("valid batch");
        batch
    }

    #[test]
    fn decodes_arrays_and_single_objects() {
        assert_eq!(parse(r#"[{"channel":"/a"},{"channel":"/b"}]"#).len(), 2);
        assert_eq!(parse(r#" {"channel":"/a","unknown":1}"#).len(), 1);
    }

    #[test]
    fn only_the_eventsource_connection_type_is_noted_and_any_shape_is_accepted() {
        let types = parse(
            r#"[{"connectionType":"eventsource"},{"connectionType":"event\u0073ource"},
                {"connectionType":"long-polling"},{},{"connectionType":null},
                {"connectionType":["eventsource"]},{"connectionType":{"a":[1]}},
                {"connectionType":7}]"#,
        );
        let flags: Vec<bool> = types.iter().map(|m| m.eventsource).collect();
        assert_eq!(
            flags,
            [true, true, false, false, false, false, false, false]
        );
    }

    #[test]
    fn rejects_non_batches() {
        let mut batch = Vec::new();
        for text in [
            "",
            "  ",
            "[]",
            "3",
            "\"x\"",
            "{",
            "[1]",
            "[{\"channel\":1}]",
        ] {
            batch.clear();
            assert!(
                decode_batch(text.as_bytes(), &mut batch).is_err(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn rejects_deep_nesting_without_overflowing_the_stack() {
        let deep = format!(
            r#"[{{"channel":"/a","data":{}{}}}]"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let mut batch = Vec::new();
        assert!(decode_batch(deep.as_bytes(), &mut batch).is_err());
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth(br#"[{"a":"[[[{{\"[","b":[1]}]"#), 3);
        let ok = format!(
            r#"[{{"channel":"/a","data":{}1{}}}]"#,
            "[".repeat(MAX_DEPTH - 2),
            "]".repeat(MAX_DEPTH - 2)
        );
        assert!(decode_batch(ok.as_bytes(), &mut Vec::new()).is_ok());
        let deep = format!(
            r#"[{{"channel":"/a","data":{}1{}}}]"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(matches!(
            decode_batch(deep.as_bytes(), &mut Vec::new()),
            Err(DecodeError::TooDeep)
        ));
    }

    #[test]
    fn replies_echo_id_type_and_never_carry_data() {
        let batch =
            parse(r#"[{"channel":"/chat","id":7,"data":{"x":1}},{"channel":"/c","id":"7"}]"#);
        assert_eq!(
            Reply::to(&batch[0]).encode(),
            r#"{"id":7,"channel":"/chat","successful":true}"#
        );
        assert_eq!(
            Reply::to(&batch[1]).encode(),
            r#"{"id":"7","channel":"/c","successful":true}"#
        );
    }

    #[test]
    fn deliveries_keep_payload_bytes_and_drop_steering_fields() {
        let batch = parse(
            r#"[{"channel":"/c","id":"1","clientId":"x","advice":{"reconnect":"none"},
                "data":{"b" : [1, 2.50]},"ext":{"binary":{}},"timestamp":"t"}]"#,
        );
        let bytes = Delivery::of("/c", &batch[0]).encode();
        assert_eq!(
            bytes,
            r#"{"channel":"/c","data":{"b" : [1, 2.50]},"ext":{"binary":{}},"timestamp":"t"}"#
        );
        let bare = parse(r#"{"channel":"/c"}"#);
        assert_eq!(
            Delivery::of("/c", &bare[0]).encode(),
            r#"{"channel":"/c","data":null}"#
        );
    }

    #[test]
    fn timesync_echoes_tc_and_reports_receipt_and_hold() {
        let mut batch = parse(
            r#"[{"channel":"/meta/connect","ext":{"timesync":{"tc":1000,"l":5,"o":-3}}},
                {"channel":"/chat","ext":{"timesync":{"tc":1}}},
                {"channel":"/meta/connect","ext":{"timesync":{"tc":7}}}]"#,
        );
        let received = epoch_ms() - 50;
        for m in &mut batch {
            m.received_ms = Some(received);
        }
        let sync = timesync(&batch[0]).expect("answered");
        assert_eq!(sync["tc"], 1000);
        assert_eq!(sync["ts"], received);
        assert_eq!(sync["a"], 1000 - 3 + 5 - received as i64);
        assert!(
            sync["p"].as_u64().expect("p") >= 50,
            "p includes the time the server had it"
        );
        assert_eq!(timesync(&batch[1]), None, "only meta messages");
        assert!(timesync(&batch[2]).expect("old style").get("a").is_none());
        let mut huge = parse(
            r#"{"channel":"/meta/connect","ext":{"timesync":{"tc":9223372036854775807,"l":1,"o":1}}}"#,
        );
        huge[0].received_ms = Some(received);
        let sync = timesync(&huge[0]).expect("answered");
        assert_eq!(sync["tc"], i64::MAX, "no overflow panic");
        let wide = i128::from(i64::MAX) + 2 - i128::from(received);
        assert_eq!(
            sync["a"],
            i64::try_from(wide).expect("fits"),
            "computed without wrapping"
        );
        let mut reply = Reply::to(&batch[0]);
        reply.add_ext("ack", serde_json::json!(3));
        let ext = reply.ext.expect("ext");
        assert_eq!(ext["ack"], 3);
        assert_eq!(ext["timesync"]["tc"], 1000);
    }

    #[test]
    fn client_advice_is_read_leniently() {
        let m = &parse(r#"{"channel":"/meta/connect","advice":{"timeout":0,"interval":2.5}}"#)[0];
        assert_eq!(m.advice_ms("timeout"), Some(0));
        assert_eq!(m.advice_ms("interval"), Some(2));
        assert_eq!(m.advice_ms("maxInterval"), None);
        let negative = &parse(r#"{"channel":"/meta/connect","advice":{"timeout":-5}}"#)[0];
        assert_eq!(negative.advice_ms("timeout"), Some(0));
    }

    #[test]
    fn ids_must_be_short_strings_or_numbers() {
        let ok = parse(r#"[{"id":"a-b_c"},{"id":12},{}]"#);
        assert!(ok.iter().all(Message::id_is_valid));
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_ID_LEN + 1));
        assert!(!parse(&long)[0].id_is_valid());
        assert!(!parse(r#"{"id":{"a":1}}"#)[0].id_is_valid());
    }
}
