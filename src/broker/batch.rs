//! A batch of messages other than a lone connect: each message in order, then what the
//! session has queued, in front of the replies (BAYEUX.md 2.1).

use std::sync::Arc;

use bytes::Bytes;

use super::routing::{FanOut, confirm};
use super::session::Session;
use super::{
    Broker, CONNECT, DISCONNECT, Removal, ReplyBatch, RequestContext, SUBSCRIBE, UNSUBSCRIBE,
};
use crate::metrics::{Outcome as MetricOutcome, Refusal, Transport};
use crate::protocol::{Advice, BayeuxError, Message, Reply};

impl Broker {
    /// Every batch except a lone connect that may be held: each message in order, then
    /// what the session has queued, in front of the replies.
    pub(super) async fn process_batch(
        &self,
        batch: &[Message],
        session: Option<&Arc<Session>>,
        ctx: &RequestContext,
        deleted: &[bool],
    ) -> ReplyBatch {
        let first_is_connect = batch.first().and_then(|m| m.channel.as_deref()) == Some(CONNECT);
        // Deliveries caused by a non-connect request ride on its own response instead of
        // waking the held connect (BAYEUX.md 2.1 rule 6).
        let batching = session.filter(|_| !first_is_connect);
        if let Some(s) = batching {
            s.lock().outbox.batching += 1;
            s.extend_deadline(self.now_ms() + self.shared.config.max_interval);
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut connects = Vec::new();
        // Publishes an engine must still confirm, answered once it has: they are sent in
        // order and confirmed together, so a batch costs one engine round trip.
        let mut unconfirmed = Vec::new();
        for (i, message) in batch.iter().enumerate() {
            let reply = if deleted.get(i) == Some(&true) {
                Some(Reply::failed(message, BayeuxError::MessageDeleted).encode())
            } else {
                match self.process_message(message, session, ctx) {
                    Processed::Reply(reply) => Some(reply),
                    Processed::Connect => None,
                    Processed::Published(reply, mut fan_out) => {
                        if let Some(confirmation) = fan_out.confirmation.take() {
                            unconfirmed.push((i, confirmation));
                        }
                        self.fan_out_yielding(fan_out).await;
                        Some(reply)
                    }
                }
            };
            if reply.is_none() {
                connects.push(i);
            }
            replies.push(reply);
        }
        for (i, confirmation) in unconfirmed {
            if let Err(error) = confirm(Some(confirmation)).await {
                self.shared
                    .metrics
                    .publish(self.count_outcome(&Err(error.clone())));
                replies[i] = Some(Reply::failed(&batch[i], error).encode());
            }
        }
        let mut messages = Vec::new();
        if let Some(s) = session {
            if let Some(s) = batching {
                s.lock().outbox.batching -= 1;
            }
            if connects.is_empty() {
                let mut state = s.lock();
                if state.removed.is_none() {
                    let max_bytes = self.shared.config.max_response_bytes;
                    // In a cluster a connect's reply may be on its way through another
                    // node while this reply goes straight back: deliveries riding here
                    // could overtake older ones. Over HTTP they wait for the connect.
                    let connect_only = state.connect_only
                        || ctx.connect_only
                        || (self.shared.engine.shares_sessions()
                            && matches!(
                                ctx.transport,
                                Transport::LongPolling | Transport::CallbackPolling
                            ));
                    if !connect_only {
                        self.observe_drain(&state.outbox.queue);
                    }
                    if connect_only || !state.outbox.queue.drain_bounded(&mut messages, max_bytes) {
                        // What this reply does not carry goes to the session's reader.
                        state.outbox.wake_for_delivery();
                    }
                }
            } else {
                let connects: Vec<&Message> = connects.iter().map(|&i| &batch[i]).collect();
                let mut connect_replies = self
                    .answer_batched_connects(s, &connects, &mut messages)
                    .await
                    .into_iter();
                for reply in replies.iter_mut().filter(|r| r.is_none()) {
                    *reply = connect_replies.next();
                }
            }
        }
        messages.extend(replies.into_iter().flatten());
        ReplyBatch {
            messages,
            handshake_succeeded: false,
        }
    }

    /// Acts on one message of a batch.
    fn process_message(
        &self,
        message: &Message,
        session: Option<&Arc<Session>>,
        ctx: &RequestContext,
    ) -> Processed {
        let metrics = &self.shared.metrics;
        let Some(channel) = message.channel.as_deref() else {
            return Processed::Reply(Reply::failed(message, BayeuxError::ChannelMissing).encode());
        };
        if !message.id_is_valid() {
            return Processed::Reply(
                Reply::failed(message, BayeuxError::MessageIdInvalid).encode(),
            );
        }
        // The session comes from the batch's first message; a different clientId later
        // in the batch is not that session (CometD).
        let session = session.filter(|s| message.client_id.as_deref() == Some(&*s.client_id));
        let Some(session) = session else {
            let mut reply = Reply::failed(message, BayeuxError::SessionUnknown);
            match channel {
                CONNECT => {
                    metrics.connect(MetricOutcome::UnknownClient);
                    reply.advice = Some(Advice::HANDSHAKE);
                }
                SUBSCRIBE => metrics.subscribe(MetricOutcome::UnknownClient),
                UNSUBSCRIBE | DISCONNECT => {}
                _ => metrics.publish(MetricOutcome::UnknownClient),
            }
            return Processed::Reply(reply.encode());
        };
        let result = match channel {
            CONNECT => {
                return match self.begin_batched_connect(session, message, ctx.transport) {
                    Some(gone) => Processed::Reply(gone),
                    None => Processed::Connect,
                };
            }
            SUBSCRIBE => {
                let result = self.subscribe_client(message, session);
                metrics.subscribe(self.count_outcome(&result));
                result
            }
            UNSUBSCRIBE => self.unsubscribe(message, session),
            DISCONNECT => {
                self.remove_session(session, Removal::Disconnected);
                Ok(())
            }
            _ => match self.publish_from(message, channel, session) {
                Ok(Some(fan_out)) => {
                    metrics.publish(MetricOutcome::Ok);
                    return Processed::Published(Reply::to(message).encode(), fan_out);
                }
                Ok(None) => Ok(()),
                Err(error) => {
                    let result = Err(error);
                    metrics.publish(self.count_outcome(&result));
                    result
                }
            },
        };
        Processed::Reply(encode_reply(message, result))
    }
}

/// What acting on one message of a batch gave.
enum Processed {
    /// Its reply.
    Reply(Bytes),
    /// A connect of the batch's session, answered once the batch is done
    /// ([`Broker::answer_batched_connects`]).
    Connect,
    /// A publish's reply, and its fan-out to run before the next message.
    Published(Bytes, FanOut),
}

impl Broker {
    /// The metric outcome of a subscribe or publish; a refusal by a channel rule is also
    /// counted as one.
    pub(super) fn count_outcome(&self, result: &Result<(), BayeuxError>) -> MetricOutcome {
        match result {
            Ok(()) => MetricOutcome::Ok,
            Err(BayeuxError::SubscribeDenied(_) | BayeuxError::PublishDenied(_)) => {
                self.shared.metrics.refused(Refusal::ChannelRule);
                MetricOutcome::Denied
            }
            Err(BayeuxError::SessionUnknown) => MetricOutcome::UnknownClient,
            Err(BayeuxError::ServerBusy | BayeuxError::ServerUnavailable) => MetricOutcome::Busy,
            Err(_) => MetricOutcome::Invalid,
        }
    }
}

/// The encoded reply to `message` for the result of acting on it.
fn encode_reply(message: &Message, result: Result<(), BayeuxError>) -> Bytes {
    match result {
        Ok(()) => Reply::to(message).encode(),
        Err(error) => Reply::failed(message, error).encode(),
    }
}
