//! `/meta/connect`: held connects, the delivery interval, browser slots and connect
//! replies.
//!
//! A connect that comes alone may be held: it attaches to the session's outbox and waits
//! until a delivery, a newer connection, the session's removal, shutdown or its timeout
//! wakes it. A connect batched with other messages is never held, but otherwise takes the
//! same steps: [`Broker::open_connect`] first, the delivery interval, then
//! [`Broker::write_connect_reply`].

use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::extensions::{self, AckState};
use super::outbox::{Attachment, Wake};
use super::session::{Session, SessionState};
use super::{Broker, Outcome, Removal, ReplyBatch, RequestContext};
use crate::protocol::{Advice, BayeuxError, Message, Reply};

/// How a connect reply ends the client's connect loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// The session lives on: `retry` with full advice.
    Open,
    /// The client or the server ended the session: `reconnect: none`.
    Stop,
    /// The session is gone but the client may come back: 402 with `handshake` advice.
    Gone,
    /// The broker is shutting down: `retry`, so the client's next connect reaches another
    /// instance (or this one restarted), which tells it to handshake.
    Drain,
}

impl Ending {
    fn after(removal: Option<Removal>) -> Ending {
        match removal {
            None => Ending::Open,
            Some(Removal::Disconnected | Removal::Kicked) => Ending::Stop,
            Some(Removal::Expired | Removal::Overflow) => Ending::Gone,
        }
    }
}

/// What a connect that came alone does once opened.
enum Step {
    /// Wait out the rest of the delivery interval, then answer with what is queued.
    Pause(Duration),
    /// Wait in the outbox for something to answer with.
    Hold(Attachment),
}

impl Broker {
    /// Answers a `/meta/connect` that came alone: at once when it is the session's first,
    /// asks for no hold, must re-send unacknowledged batches, or finds deliveries queued;
    /// otherwise held until something wakes it or its timeout passes.
    pub(super) async fn connect(
        &self,
        session: &Arc<Session>,
        message: &Message,
        ctx: &RequestContext,
    ) -> Outcome {
        let hold = self.hold_of(message);
        let step = {
            let mut state = session.lock();
            let first = match self.open_connect(&mut state, message) {
                Ok(first) => first,
                Err(gone) => return Outcome::Reply(ReplyBatch::single(gone)),
            };
            let answer_now = first
                || hold == 0
                || state.ack.as_deref().is_some_and(AckState::has_unacked)
                || self.shared.shutting_down.load(Ordering::SeqCst);
            let wait = self.delivery_wait(&state, hold, true);
            let queued = !state.outbox.queue.is_empty();
            if answer_now || (queued && wait.is_zero()) {
                let reply = self.connect_answer(session, &mut state, message, Ending::Open);
                return Outcome::Reply(reply);
            }
            if queued {
                Step::Pause(wait)
            } else {
                let Ok(browser_slot) = self.acquire_browser_slot(ctx) else {
                    return Outcome::Reply(self.multiple_clients(session, message));
                };
                let (attachment, _) = state.outbox.attach(browser_slot);
                session.set_deadline(u64::MAX);
                Step::Hold(attachment)
            }
        };
        let (mut ending, wait) = match step {
            Step::Pause(wait) => (Ending::Open, wait),
            Step::Hold(attachment) => {
                // Whether the wait ends or the request is dropped (client abort), the guard
                // detaches the connect; a superseded one was detached already.
                let guard = HeldGuard {
                    broker: self,
                    session,
                    attachment,
                };
                let woken =
                    tokio::time::timeout(Duration::from_millis(hold), session.woken(attachment))
                        .await;
                drop(guard);
                match woken {
                    Ok(Wake::Deliver) => (
                        Ending::Open,
                        self.delivery_wait(&session.lock(), hold, true),
                    ),
                    Ok(Wake::Superseded) => return Outcome::Superseded,
                    Ok(Wake::ShuttingDown) => (Ending::Drain, Duration::ZERO),
                    // The reply says whether the session is gone.
                    Ok(Wake::Removed) => (Ending::Open, Duration::ZERO),
                    // The hold ran out with nothing to deliver.
                    Err(_timed_out) => (Ending::Open, Duration::ZERO),
                }
            }
        };
        if !wait.is_zero() {
            // The connect is no longer held, so what is published meanwhile just queues and
            // rides on this reply. Boxed: inline, the timer would grow every held connect.
            Box::pin(tokio::time::sleep(wait)).await;
        }
        let mut state = session.lock();
        if ending != Ending::Drain {
            ending = Ending::after(state.removed);
        }
        Outcome::Reply(self.connect_answer(session, &mut state, message, ending))
    }

    /// The first step of a connect batched with other messages: `None` (its reply comes
    /// from [`Broker::answer_batched_connects`]), or the 402 reply of a removed session.
    pub(super) fn begin_batched_connect(
        &self,
        session: &Session,
        message: &Message,
    ) -> Option<Bytes> {
        self.open_connect(&mut session.lock(), message).err()
    }

    /// Answers the connects of a batch once its other messages are done: after the
    /// delivery interval, as a connect alone would be, the queued deliveries go to `out`
    /// and the connect replies are returned in order.
    pub(super) async fn answer_batched_connects(
        &self,
        session: &Session,
        connects: &[&Message],
        out: &mut Vec<Bytes>,
    ) -> Vec<Bytes> {
        let hold = connects.iter().map(|m| self.hold_of(m)).min().unwrap_or(0);
        // Batched connects keep their fixed floor only: their reply also answers the
        // batch's other messages, which must not wait for the server's load.
        let wait = self.delivery_wait(&session.lock(), hold, false);
        if !wait.is_zero() {
            Box::pin(tokio::time::sleep(wait)).await;
        }
        let mut state = session.lock();
        let ending = Ending::after(state.removed);
        let replies = connects
            .iter()
            .map(|message| self.connect_reply(session, &mut state, message, ending))
            .collect();
        if state.removed.is_none() {
            self.write_connect_deliveries(&mut state, out);
        }
        replies
    }

    /// What every connect does first: refuses a removed session (the 402 reply), takes
    /// delivery over from a held connect of the session, marks the session connected and
    /// applies its acknowledgement. `Ok(true)`: this is the session's first connect.
    fn open_connect(&self, state: &mut SessionState, message: &Message) -> Result<bool, Bytes> {
        if state.removed.is_some() {
            let mut reply = Reply::failed(message, BayeuxError::SessionUnknown);
            reply.advice = Some(Advice::HANDSHAKE);
            return Err(reply.encode());
        }
        // A reload's browser slot is freed first, so it is not taken for a second tab.
        self.release_browser_slot(state.outbox.supersede().as_deref());
        if let (Some(ack), Some(batch)) =
            (state.ack.as_mut(), extensions::acknowledged_batch(message))
        {
            ack.acknowledge(batch);
        }
        Ok(!std::mem::replace(&mut state.connected, true))
    }

    /// How long `connect` may be held: the client's `advice.timeout`, at most the
    /// server's.
    fn hold_of(&self, connect: &Message) -> u64 {
        let timeout = self.shared.config.timeout;
        connect
            .advice_ms("timeout")
            .map_or(timeout, |t| t.min(timeout))
    }

    /// How long a connect reply with the queued deliveries must still wait so that it comes
    /// `delivery_interval` (or, if `adaptive` and longer, the coalescing interval the load
    /// calls for) after the session's previous one; never longer than the connect's `hold`,
    /// which the client's request timeout allows for. Ack sessions keep the fixed floor only.
    fn delivery_wait(&self, state: &SessionState, hold: u64, adaptive: bool) -> Duration {
        let mut interval_us = self.shared.config.delivery_interval * 1_000;
        if adaptive && state.ack.is_none() {
            interval_us = interval_us.max(self.shared.coalescing.interval().as_micros() as u64);
        }
        match state.delivered_at {
            Some(at) if interval_us > 0 && !state.outbox.queue.is_empty() => {
                let since = self.now_us().saturating_sub(at.get());
                Duration::from_micros(interval_us.saturating_sub(since).min(hold * 1_000))
            }
            _ => Duration::ZERO,
        }
    }

    /// Detaches held connect `attachment` if it is still the session's reader; the
    /// session then starts ageing towards expiry.
    fn release_held(&self, session: &Session, state: &mut SessionState, attachment: Attachment) {
        if let Some(slot) = state.outbox.detach(attachment) {
            self.release_browser_slot(slot.as_deref());
            if state.removed.is_none() {
                let config = &self.shared.config;
                session.set_deadline(self.now_ms() + config.interval + config.max_interval);
            }
        }
    }

    /// Queued deliveries followed by the connect reply.
    fn connect_answer(
        &self,
        session: &Session,
        state: &mut SessionState,
        message: &Message,
        ending: Ending,
    ) -> ReplyBatch {
        let reply = self.connect_reply(session, state, message, ending);
        let mut messages = Vec::with_capacity(state.outbox.queue.len() + 1);
        self.write_connect_deliveries(state, &mut messages);
        messages.push(reply);
        ReplyBatch {
            messages,
            handshake_succeeded: false,
        }
    }

    /// Writes what a connect reply carries: the queue, or for an ack session every
    /// unacknowledged delivery (BAYEUX.md 6.2); and notes when, for the delivery interval.
    fn write_connect_deliveries(&self, state: &mut SessionState, out: &mut Vec<Bytes>) {
        let before = out.len();
        match state.ack.as_mut() {
            Some(ack) => ack.flush(&mut state.outbox.queue, self.shared.config.max_queue, out),
            None => state.outbox.queue.drain_into(out),
        }
        let config = &self.shared.config;
        let spaced = config.delivery_interval > 0 || config.coalesces_adaptively();
        if spaced && out.len() > before {
            state.delivered_at = NonZeroU64::new(self.now_us().max(1));
        }
    }

    /// The reply to a connect answered now, with full advice; it also restarts the
    /// session's expiry clock.
    fn connect_reply(
        &self,
        session: &Session,
        state: &mut SessionState,
        message: &Message,
        ending: Ending,
    ) -> Bytes {
        let config = &self.shared.config;
        let mut reply = Reply::to(message);
        match ending {
            Ending::Open => {
                reply.advice = Some(Advice::retry(config.interval, config.timeout));
                if let Some(ack) = state.ack.as_mut() {
                    reply.add_ext("ack", ack.close_batch().into());
                }
                let dropped = state.outbox.queue.take_dropped();
                if dropped > 0 {
                    reply.add_ext("halley", serde_json::json!({ "dropped": dropped }));
                }
                if !state.outbox.has_reader() {
                    let interval = message
                        .advice_ms("interval")
                        .map_or(config.interval, |i| i.min(10 * config.max_interval));
                    session.set_deadline(self.now_ms() + interval + config.max_interval);
                }
            }
            Ending::Stop => reply.advice = Some(Advice::NONE),
            // Not a spread-out interval: aiocometd 0.4.5 reads `interval` as seconds, so
            // any non-zero value parks it for minutes. Clients back off on their own when
            // the next connect finds nobody listening.
            Ending::Drain => reply.advice = Some(Advice::retry(config.interval, config.timeout)),
            Ending::Gone => {
                reply.fail(BayeuxError::SessionUnknown);
                reply.advice = Some(Advice::HANDSHAKE);
            }
        }
        reply.encode()
    }

    /// The answer to a connect over its browser's long-poll limit: poll at an interval,
    /// or stop.
    fn multiple_clients(&self, session: &Session, message: &Message) -> ReplyBatch {
        let config = &self.shared.config;
        let mut reply = Reply::to(message);
        if config.multi_session_interval > 0 {
            let interval = config.multi_session_interval as u64;
            reply.advice = Some(Advice {
                multiple_clients: Some(true),
                ..Advice::retry(interval, config.timeout)
            });
            session.set_deadline(self.now_ms() + interval + config.max_interval);
        } else {
            reply.successful = false;
            reply.advice = Some(Advice {
                multiple_clients: Some(true),
                ..Advice::NONE
            });
        }
        ReplyBatch::single(reply.encode())
    }

    /// Takes a long-poll slot of the request's browser. `Ok(None)`: no slot is needed.
    fn acquire_browser_slot(&self, ctx: &RequestContext) -> Result<Option<Box<str>>, ()> {
        let Some(browser) = ctx.browser_id.as_deref().filter(|_| !ctx.multiplexed) else {
            return Ok(None);
        };
        let mut browsers = self
            .shared
            .browsers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let held = browsers.entry(browser.into()).or_insert(0);
        if *held >= self.shared.config.max_sessions_per_browser {
            if *held == 0 {
                browsers.remove(browser);
            }
            return Err(());
        }
        *held += 1;
        Ok(Some(browser.into()))
    }

    /// Gives back a long-poll slot taken by [`Broker::acquire_browser_slot`].
    pub(super) fn release_browser_slot(&self, browser: Option<&str>) {
        let Some(browser) = browser else { return };
        let mut browsers = self
            .shared
            .browsers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(held) = browsers.get_mut(browser) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                browsers.remove(browser);
            }
        }
    }
}

/// Detaches a held connect whose request ended or was dropped (client abort, server
/// shutdown).
struct HeldGuard<'a> {
    broker: &'a Broker,
    session: &'a Arc<Session>,
    attachment: Attachment,
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.session.lock();
        self.broker
            .release_held(self.session, &mut state, self.attachment);
    }
}
