//! Bayeux error strings (`code:args:message`, BAYEUX.md 2.8).
//!
//! These travel inside `successful:false` replies with HTTP 200; they are not transport
//! errors. The strings are CometD 8's, because clients and operators know them.

use thiserror::Error;

use super::channel::PublishChannelError;

/// A Bayeux-level failure of one message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BayeuxError {
    /// The message has no `channel`.
    #[error("400::channel_missing")]
    ChannelMissing,
    /// Unknown, expired or disconnected session, or a clientId that differs within a batch.
    #[error("402::session_unknown")]
    SessionUnknown,
    /// The session ended because the token it was authenticated with expired; the client
    /// should handshake again with a fresh one.
    #[error("402::token_expired")]
    TokenExpired,
    /// A subscribe or unsubscribe without `subscription`.
    #[error("403::subscription_missing")]
    SubscriptionMissing,
    /// A `subscription` that is not a valid name or is not a string.
    #[error("403::subscription_invalid")]
    SubscriptionInvalid,
    /// A subscription to a `/meta/` channel.
    #[error("403:denied_by_security_policy:create_denied")]
    MetaSubscribeDenied,
    /// An unsubscribe from a `/meta/` channel.
    #[error("403::unsubscribe_failed")]
    UnsubscribeFailed,
    /// A publish to a `/meta/` channel that is not one of the protocol's.
    #[error("403:denied_by_security_policy:channel_create_denied")]
    MetaPublishDenied,
    /// The security policy refused the handshake.
    #[error("403::Handshake denied")]
    HandshakeDenied,
    /// The security policy refused a subscription to this channel.
    #[error("403:{0}:subscribe_denied")]
    SubscribeDenied(String),
    /// The security policy refused a publish to this channel.
    #[error("403:{0}:publish_denied")]
    PublishDenied(String),
    /// A hook deleted the message.
    #[error("404::message_deleted")]
    MessageDeleted,
    /// A session holds as many subscriptions as it may.
    #[error("403:subscription_limit:subscribe_denied")]
    SubscriptionLimit,
    /// A malformed channel name, or a publish to a wildcard.
    #[error("405::channel_invalid")]
    ChannelInvalid,
    /// A server-side publish to a `/service/` channel, which is never broadcast.
    #[error("405:{0}:channel_not_broadcast")]
    NotBroadcast(String),
    /// A server-side publish whose data cannot be serialized as JSON.
    #[error("400::data_invalid")]
    DataInvalid,
    /// An `id` that is neither a short string nor a number.
    #[error("405::message_id_invalid")]
    MessageIdInvalid,
    /// The broker holds as many sessions, or takes as many handshakes per second, as it
    /// may; the client should try again after the advised interval.
    #[error("503::server_busy")]
    ServerBusy,
    /// The broker is shutting down and takes no new sessions.
    #[error("503::server_unavailable")]
    ServerUnavailable,
    /// A server-side service handler failed while handling the message.
    #[error("500::handler_failed")]
    HandlerFailed,
    /// The session cannot use this connection type (an EventSource stream for a session
    /// whose deliveries ride on connect replies). Faye's code and words.
    #[error("301:{0}:Connection types not supported")]
    ConnectionTypeMismatch(String),
}

impl BayeuxError {
    /// The Bayeux error for a publish to `channel` refused by [`PublishChannelError`].
    pub fn for_publish(channel: &str, error: PublishChannelError) -> BayeuxError {
        match error {
            PublishChannelError::Invalid(_) | PublishChannelError::Wildcard => {
                BayeuxError::ChannelInvalid
            }
            PublishChannelError::Meta => BayeuxError::MetaPublishDenied,
            PublishChannelError::Service => BayeuxError::NotBroadcast(channel.to_string()),
            PublishChannelError::Reserved => BayeuxError::PublishDenied(channel.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_string_has_three_parts_and_a_code() {
        for e in [
            BayeuxError::ChannelMissing,
            BayeuxError::SessionUnknown,
            BayeuxError::SubscriptionMissing,
            BayeuxError::SubscriptionInvalid,
            BayeuxError::MetaSubscribeDenied,
            BayeuxError::UnsubscribeFailed,
            BayeuxError::MetaPublishDenied,
            BayeuxError::SubscriptionLimit,
            BayeuxError::ChannelInvalid,
            BayeuxError::NotBroadcast("/service/x".into()),
            BayeuxError::DataInvalid,
            BayeuxError::MessageIdInvalid,
            BayeuxError::HandlerFailed,
            BayeuxError::ServerUnavailable,
            BayeuxError::ServerBusy,
            BayeuxError::HandshakeDenied,
            BayeuxError::SubscribeDenied("/a/b".into()),
            BayeuxError::PublishDenied("/a".into()),
            BayeuxError::MessageDeleted,
            BayeuxError::ConnectionTypeMismatch("eventsource".into()),
        ] {
            let text = e.to_string();
            let parts: Vec<_> = text.splitn(3, ':').collect();
            assert_eq!(parts.len(), 3, "{text}");
            assert!(parts[0].len() == 3 && parts[0].bytes().all(|b| b.is_ascii_digit()));
            assert!(!parts[2].is_empty());
        }
    }
}
