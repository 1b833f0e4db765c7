//! ERR: error strings (BAYEUX.md 2.8, checklist ERR-1..ERR-4).
//!
//! Skipped: ERR-5 (handler panic isolation) is tested inside the library; no remote way to make a handler panic.

use halley_protocol_tests::*;

/// Replies to a spread of failing requests (every failure kind reachable from the wire).
async fn failures(b: &Broker) -> Vec<Value> {
    let cid = b.session().await;
    let mut all = b
        .batch(json!([
            {"id": "nochannel", "clientId": cid, "data": 1},
            {"id": "badname", "channel": "/a//b", "clientId": cid, "data": 1},
            {"id": "wildpub", "channel": "/a/*", "clientId": cid, "data": 1},
            {"id": "metapub", "channel": "/meta/foo", "clientId": cid, "data": 1},
            {"id": "submissing", "channel": "/meta/subscribe", "clientId": cid},
            {"id": "subinvalid", "channel": "/meta/subscribe", "clientId": cid, "subscription": 5},
            {"id": "submeta", "channel": "/meta/subscribe", "clientId": cid, "subscription": "/meta/foo"},
            {"id": "unsubmeta", "channel": "/meta/unsubscribe", "clientId": cid, "subscription": "/meta/foo"},
            {"id": "unsubmissing", "channel": "/meta/unsubscribe", "clientId": cid}
        ]))
        .await;
    for channel in [
        "/meta/connect",
        "/meta/subscribe",
        "/meta/unsubscribe",
        "/meta/disconnect",
        "/x",
    ] {
        all.extend(
            b.batch(
                json!([{"id": format!("unknown{channel}"), "channel": channel, "clientId": "nope",
                            "subscription": "/x", "data": 1, "connectionType": "long-polling"}]),
            )
            .await,
        );
    }
    all
}

fn error_of<'a>(msgs: &'a [Value], id: &str) -> &'a str {
    let m = msgs
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no reply {id} in {msgs:?}"));
    m["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {m}"))
}

#[tokio::test]
async fn err_1_error_strings_are_code_args_message() {
    let b = Broker::fast().await;
    let all = failures(&b).await;
    let errors: Vec<&str> = all.iter().filter_map(|m| m["error"].as_str()).collect();
    assert_eq!(
        errors.len(),
        all.len(),
        "every failure has an error string: {all:?}"
    );
    for e in errors {
        let mut parts = e.splitn(3, ':');
        let code = parts.next().unwrap();
        let args = parts.next();
        let message = parts.next();
        assert!(
            code.len() == 3 && code.bytes().all(|c| c.is_ascii_digit()),
            "{e:?}"
        );
        assert!(args.is_some() && message.is_some(), "{e:?} lacks two ':'");
    }
}

#[tokio::test]
async fn err_2_unknown_session_is_402_session_unknown() {
    let b = Broker::fast().await;
    let all = failures(&b).await;
    for channel in [
        "/meta/connect",
        "/meta/subscribe",
        "/meta/unsubscribe",
        "/meta/disconnect",
        "/x",
    ] {
        assert_eq!(
            error_of(&all, &format!("unknown{channel}")),
            "402::session_unknown"
        );
    }
}

#[tokio::test]
async fn err_3_codes_for_refusals_malformed_channels_and_missing_channel() {
    let b = Broker::fast().await;
    let all = failures(&b).await;
    assert_eq!(error_of(&all, "nochannel"), "400::channel_missing");
    assert_eq!(error_of(&all, "badname"), "405::channel_invalid");
    assert!(error_of(&all, "wildpub").starts_with("405:"));
    for id in [
        "metapub",
        "submeta",
        "unsubmeta",
        "submissing",
        "subinvalid",
        "unsubmissing",
    ] {
        assert!(
            error_of(&all, id).starts_with("403:"),
            "{id}: {}",
            error_of(&all, id)
        );
    }
}

#[tokio::test]
async fn err_4_a_reply_with_error_is_never_successful() {
    let b = Broker::fast().await;
    let all = failures(&b).await;
    assert_eq!(all.len(), 14, "{all:?}");
    for m in &all {
        assert!(m.get("error").is_some(), "{m}");
        assert_eq!(m["successful"], false, "{m}");
    }
}
