//! Subscriptions.

use super::*;

#[tokio::test]
async fn subscriptions_are_all_or_nothing_and_bounded() {
    let broker = broker_with(|c| c.max_subscriptions = 2);
    let alice = session(&broker).await;
    let sub = |s: Value| json!([{"id": "s", "channel": "/meta/subscribe", "clientId": alice, "subscription": s}]);
    let reply = send(&broker, sub(json!(["/a", "/b//c"]))).await;
    assert_eq!(reply[0]["error"], "403::subscription_invalid");
    assert_eq!(reply[0]["subscription"], json!(["/a", "/b//c"]));
    assert_eq!(broker.stats().subscriptions, 0, "none applied");
    let reply = send(&broker, sub(json!(["/a", "/b", "/c"]))).await;
    assert_eq!(reply[0]["error"], "403:subscription_limit:subscribe_denied");
    let reply = send(&broker, sub(json!(["/a", "/b", "/a", "/service/x"]))).await;
    assert_eq!(reply[0]["successful"], true);
    assert_eq!(broker.stats().subscriptions, 2);
}
