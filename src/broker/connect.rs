//! `/meta/connect`: held connects, the delivery interval, browser slots and connect
//! replies.
//!
//! A connect that comes alone may be held: it attaches to the session's outbox and waits
//! until a delivery, a newer connection, the session's removal, shutdown or its timeout
//! wakes it. A connect batched with other messages is never held, but otherwise takes the
//! same steps: [`Broker::open_connect`] first, the delivery interval, then
//! `connect_answer`.
//!
//! Faye's `eventsource` connect (over HTTP, while its stream reads the outbox) is answered
//! at once and neither supersedes the stream nor takes its deliveries (`beside_stream`).

use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::extensions::{self, AckState};
use super::outbox::DeliveryQueue;
use super::outbox::{Attachment, Wake};
use super::session::{Session, SessionState};
use super::{Broker, Outcome, Removal, ReplyBatch, RequestContext};
use crate::metrics::{Outcome as MetricOutcome, Transport};
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
            // The held connect of a session that moved to another node: answered empty,
            // so the client's next connect reaches the node that serves it now.
            None | Some(Removal::Moved) => Ending::Open,
            Some(Removal::Disconnected | Removal::Kicked) => Ending::Stop,
            Some(Removal::Expired | Removal::Overflow | Removal::TokenExpired) => Ending::Gone,
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
    /// asks for no hold, is Faye's `eventsource` connect, must re-send unacknowledged
    /// batches, or finds deliveries queued; otherwise held until something wakes it or its
    /// timeout passes.
    pub(super) async fn connect(
        &self,
        session: &Arc<Session>,
        message: &Message,
        ctx: &RequestContext,
    ) -> Outcome {
        let hold = self.hold_of(message);
        let step = {
            let mut state = session.lock();
            let first = match self.open_connect(&mut state, message, ctx.transport) {
                Ok(first) => first,
                Err(gone) => return Outcome::Reply(ReplyBatch::single(gone)),
            };
            let answer_now = first
                || hold == 0
                || self.beside_stream(&state, message)
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
                self.shared.metrics.connect_held();
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
                    Ok(Wake::Superseded) => {
                        self.shared.metrics.connect(MetricOutcome::Superseded);
                        return Outcome::Superseded;
                    }
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
        transport: Transport,
    ) -> Option<Bytes> {
        self.open_connect(&mut session.lock(), message, transport)
            .err()
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
        let streamed = connects.iter().any(|m| self.beside_stream(&state, m));
        if streamed && state.outbox.has_reader() {
            // The session's EventSource stream takes them.
            state.outbox.wake_for_delivery();
        } else if state.removed.is_none() {
            self.write_connect_deliveries(&mut state, out);
        }
        replies
    }

    /// What every connect does first: refuses a removed session (the 402 reply), takes
    /// delivery over from a held connect of the session, marks the session connected and
    /// applies its acknowledgement. `Ok(true)`: this is the session's first connect.
    fn open_connect(
        &self,
        state: &mut SessionState,
        message: &Message,
        transport: Transport,
    ) -> Result<bool, Bytes> {
        let metrics = &self.shared.metrics;
        if state.removed == Some(Removal::Moved) {
            // Moved to another node while this request was on its way: the client's next
            // connect finds it there.
            let mut reply = Reply::to(message);
            let config = &self.shared.config;
            reply.advice = Some(Advice::retry(config.interval, config.timeout));
            return Err(reply.encode());
        }
        if let Some(removal) = state.removed {
            metrics.connect(MetricOutcome::UnknownClient);
            let mut reply = Reply::failed(message, removal.error());
            reply.advice = Some(Advice::HANDSHAKE);
            return Err(reply.encode());
        }
        // A socket's connect takes delivery over, as a newer connection does.
        let beside_stream = transport != Transport::WebSocket && self.beside_stream(state, message);
        let transport = if beside_stream {
            Transport::EventSource
        } else {
            transport
        };
        if state.transport != transport {
            // Faye and aiocometd handshake over HTTP, then connect over a socket.
            metrics.session_closed(state.transport);
            metrics.session_opened(transport);
            state.transport = transport;
        }
        // A reload's browser slot is freed first, so it is not taken for a second tab. An
        // eventsource connect leaves the stream reading.
        if !beside_stream {
            self.release_browser_slot(state.outbox.supersede().as_deref());
        }
        if let (Some(ack), Some(batch)) =
            (state.ack.as_mut(), extensions::acknowledged_batch(message))
        {
            ack.acknowledge(batch);
        }
        Ok(!std::mem::replace(&mut state.connected, true))
    }

    /// Whether `message` is a connect beside an EventSource stream: Faye's `eventsource`
    /// connect, or any HTTP connect while the session's stream reads the outbox (Faye sends
    /// long-polling connects until its stream has opened). Answered at once as Faye does:
    /// advice `interval` = the server's `timeout`, `timeout: 0`; leaving the stream as the
    /// reader and the deliveries to it. Not when the transport is off, nor for a session
    /// whose deliveries must ride on connect replies (ack extension, callback-polling): its
    /// connect is an ordinary one, held. The stream is the reader when the session's
    /// transport is eventsource (only a stream and these connects set it) and one reads.
    fn beside_stream(&self, state: &SessionState, message: &Message) -> bool {
        let stream_reads = state.transport == Transport::EventSource && state.outbox.has_reader();
        (message.eventsource || stream_reads)
            && state.ack.is_none()
            && !state.connect_only
            && self.shared.connection_types.contains(&"eventsource")
    }

    /// Records what a reply is about to take from `queue`: its depth, and how long its
    /// oldest delivery waited (publish to delivery).
    pub(super) fn observe_drain(&self, queue: &DeliveryQueue) {
        if let Some(age) = queue.oldest_age() {
            let metrics = &self.shared.metrics;
            metrics.queue_depth(queue.len());
            metrics.delivery_latency(age.as_secs_f64());
        }
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
        if adaptive && state.ack.is_none() && !state.outbox.queue.is_empty() {
            self.shared.coalescing.note_activity();
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
        // An eventsource connect leaves the deliveries to the stream, if one reads.
        if !(self.beside_stream(state, message) && state.outbox.has_reader()) {
            self.write_connect_deliveries(state, &mut messages);
        }
        messages.push(reply);
        ReplyBatch {
            messages,
            handshake_succeeded: false,
        }
    }

    /// Writes what a connect reply carries: the queue, or for an ack session every
    /// unacknowledged delivery (BAYEUX.md 6.2); and notes when, for the delivery interval.
    fn write_connect_deliveries(&self, state: &mut SessionState, out: &mut Vec<Bytes>) {
        self.observe_drain(&state.outbox.queue);
        let before = out.len();
        match state.ack.as_mut() {
            Some(ack) => ack.flush(
                &mut state.outbox.queue,
                self.shared.config.max_queue,
                out,
                state.last_seq,
            ),
            // The rest, if any, makes the next connect come back at once.
            None => {
                let max_bytes = self.shared.config.max_response_bytes;
                state.outbox.queue.drain_bounded(out, max_bytes);
            }
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
        self.shared.metrics.connect(MetricOutcome::Ok);
        let mut reply = Reply::to(message);
        match ending {
            Ending::Open if self.beside_stream(state, message) => {
                // Faye's advice: the next connect after the hold the stream stands for, not
                // held itself; the session lives until then plus maxInterval.
                reply.advice = Some(Advice::retry(config.timeout, 0));
                let dropped = state.outbox.queue.take_dropped();
                if dropped > 0 {
                    reply.add_ext("halley", serde_json::json!({ "dropped": dropped }));
                }
                if !state.outbox.has_reader() {
                    let at = self.now_ms() + config.timeout + config.max_interval;
                    session.set_deadline(at);
                }
            }
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
                reply.fail(
                    state
                        .removed
                        .map_or(BayeuxError::SessionUnknown, Removal::error),
                );
                reply.advice = Some(Advice::HANDSHAKE);
            }
        }
        reply.encode()
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
        self.broker.shared.metrics.connect_released();
        let mut state = self.session.lock();
        self.broker
            .release_held(self.session, &mut state, self.attachment);
    }
}

/// A `/meta/connect` held over a push transport (a WebSocket): the socket is the
/// session's outbox reader until the connect is answered, and deliveries that arrive
/// meanwhile go out at once as their own frames ([`PushConnect::woken`]). An EventSource
/// stream is the same reader with no connect to answer ([`Broker::open_stream`]).
/// Dropping it (the socket closed) detaches it, and the session starts ageing towards
/// expiry; a superseded one is simply never answered.
pub(crate) struct PushConnect {
    broker: Broker,
    session: Arc<Session>,
    attachment: Attachment,
    /// The connect, for its reply; boxed, since a socket holds this while it idles.
    /// `None` for an EventSource stream, which answers no connect.
    message: Option<Box<Message>>,
    /// When the hold runs out and the connect is answered.
    deadline: tokio::time::Instant,
}

impl std::fmt::Debug for PushConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConnect")
            .field("client_id", &self.session.client_id)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// What a push transport does after its held connect woke.
#[derive(Debug)]
pub(crate) enum PushWake {
    /// Write these deliveries as a frame of their own; the connect stays held.
    Deliver(Vec<Bytes>),
    /// Deliveries are queued, but the session received some less than the coalescing
    /// interval ago: take them ([`PushConnect::deliveries`]) at this instant, in one frame
    /// with whatever follows meanwhile. The connect stays held.
    Later(tokio::time::Instant),
    /// Answer the connect now (a connect-only session's deliveries, removal, shutdown).
    Answer,
    /// A newer connection took over: forget the connect, never answer it.
    Superseded,
}

impl Broker {
    /// Opens a `/meta/connect` that came alone over a push transport: answered now, as a
    /// connect alone over HTTP would be (first connect, no hold, unacknowledged batches,
    /// deliveries queued, shutdown), or held without waiting here.
    pub(crate) fn connect_pushed(
        &self,
        session: &Arc<Session>,
        message: &Message,
    ) -> Result<ReplyBatch, PushConnect> {
        let hold = self.hold_of(message);
        let mut state = session.lock();
        let first = match self.open_connect(&mut state, message, Transport::WebSocket) {
            Ok(first) => first,
            Err(gone) => return Ok(ReplyBatch::single(gone)),
        };
        if first
            || hold == 0
            || state.ack.as_deref().is_some_and(AckState::has_unacked)
            || self.shared.shutting_down.load(Ordering::SeqCst)
            || !state.outbox.queue.is_empty()
        {
            return Ok(self.connect_answer(session, &mut state, message, Ending::Open));
        }
        let (attachment, _) = state.outbox.attach(None);
        session.set_deadline(u64::MAX);
        self.shared.metrics.connect_held();
        Err(PushConnect {
            broker: self.clone(),
            session: session.clone(),
            attachment,
            message: Some(Box::new(message.clone())),
            deadline: tokio::time::Instant::now() + Duration::from_millis(hold),
        })
    }
}

impl Broker {
    /// Opens Faye's EventSource stream for session `client_id`: the stream becomes the
    /// session's outbox reader for as long as it is open (a [`PushConnect`] that answers
    /// no connect, never runs out, and is superseded by a newer stream or a WebSocket
    /// connect; HTTP connects are answered beside it). While it reads, the session does not
    /// expire; once it is dropped, the session has `timeout` + `maxInterval` (its client
    /// connects every `timeout`).
    pub(crate) async fn open_stream(
        &self,
        client_id: &str,
        ctx: &RequestContext,
    ) -> Result<PushConnect, BayeuxError> {
        // On a cluster the stream's node serves the session from now on.
        let session = self
            .find_or_claim(client_id, true)
            .await
            .map_err(|_| BayeuxError::ServerUnavailable)?
            .map(|found| found.session().clone())
            .filter(|s| self.cookie_matches(s, ctx))
            .ok_or(BayeuxError::SessionUnknown)?;
        let mut state = session.lock();
        if state.removed.is_some() {
            return Err(BayeuxError::SessionUnknown);
        }
        // Its deliveries must ride on connect replies (ack extension, callback-polling).
        if state.ack.is_some() || state.connect_only {
            return Err(BayeuxError::ConnectionTypeMismatch("eventsource".into()));
        }
        if state.transport != Transport::EventSource {
            let metrics = &self.shared.metrics;
            metrics.session_closed(state.transport);
            metrics.session_opened(Transport::EventSource);
            state.transport = Transport::EventSource;
        }
        let (attachment, previous) = state.outbox.attach(None);
        self.release_browser_slot(previous.as_deref());
        // What was queued before the stream opened goes out on it at once.
        state.outbox.wake_for_delivery();
        session.set_deadline(u64::MAX);
        self.shared.metrics.connect_held();
        drop(state);
        Ok(PushConnect {
            broker: self.clone(),
            session,
            attachment,
            message: None,
            // Never answered, so never due; a year stands for that without overflowing.
            deadline: tokio::time::Instant::now() + Duration::from_secs(365 * 86_400),
        })
    }
}

impl PushConnect {
    /// When the hold runs out: [`PushConnect::answer`] it then.
    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// Waits until the outbox wakes this connect, and says what to do. `spaced`: the
    /// transport can wait (a timer of its own) when the delivery interval or adaptive
    /// coalescing asks it to, so that a saturated server writes fewer, fuller frames.
    pub async fn woken(&self, spaced: bool) -> PushWake {
        match self.session.woken(self.attachment).await {
            Wake::Superseded => {
                self.broker
                    .shared
                    .metrics
                    .connect(MetricOutcome::Superseded);
                PushWake::Superseded
            }
            Wake::Removed | Wake::ShuttingDown => PushWake::Answer,
            Wake::Deliver => {
                let mut state = self.session.lock();
                if state.connect_only || state.ack.is_some() {
                    return PushWake::Answer;
                }
                if spaced {
                    // A frame costs far less than an HTTP exchange: half the spacing gets
                    // most of the gain, and keeps a socket's latency under load lower.
                    let config = &self.broker.shared.config;
                    let bound = config.delivery_interval.max(config.coalescing_ceiling / 2);
                    let wait = self.broker.delivery_wait(&state, bound, true);
                    if !wait.is_zero() {
                        return PushWake::Later(tokio::time::Instant::now() + wait);
                    }
                }
                PushWake::Deliver(self.take_queued(&mut state))
            }
        }
    }

    /// What is queued for the session now, for a frame of its own (after
    /// [`PushWake::Later`]).
    pub fn deliveries(&self) -> Vec<Bytes> {
        let mut state = self.session.lock();
        if state.removed.is_some() || state.connect_only || state.ack.is_some() {
            return Vec::new();
        }
        self.take_queued(&mut state)
    }

    /// Drains one frame's worth of the queue, noting when for the delivery interval; what
    /// does not fit wakes the reader again.
    fn take_queued(&self, state: &mut SessionState) -> Vec<Bytes> {
        let config = &self.broker.shared.config;
        self.broker.observe_drain(&state.outbox.queue);
        let mut out = Vec::new();
        if !state
            .outbox
            .queue
            .drain_bounded(&mut out, config.max_response_bytes)
        {
            // One frame at a time: the rest goes in the next.
            state.outbox.wake(Wake::Deliver);
        }
        let spaced = config.delivery_interval > 0 || config.coalesces_adaptively();
        if spaced && !out.is_empty() {
            state.delivered_at = NonZeroU64::new(self.broker.now_us().max(1));
        }
        out
    }

    /// Answers the connect: the queued deliveries and the reply, with the advice the
    /// session's state calls for (after an ack session's checkpoint). A stream has no
    /// connect: it just detaches (an empty batch).
    pub async fn answer(self) -> ReplyBatch {
        let reply = {
            let mut state = self.session.lock();
            self.broker
                .release_held(&self.session, &mut state, self.attachment);
            let Some(message) = &self.message else {
                return ReplyBatch::default();
            };
            let ending = if self.broker.is_shutting_down() && state.removed.is_none() {
                Ending::Drain
            } else {
                Ending::after(state.removed)
            };
            self.broker
                .connect_answer(&self.session, &mut state, message, ending)
        };
        if self.broker.shared.engine.shares_sessions()
            && self.session.is_ack()
            && !Box::pin(self.broker.checkpoint(&self.session)).await
            && let Some(message) = &self.message
        {
            // What this reply carries stays unacknowledged: the next connect gets it.
            return self.broker.unavailable(std::slice::from_ref(&**message));
        }
        reply
    }
}

impl Drop for PushConnect {
    fn drop(&mut self) {
        self.broker.shared.metrics.connect_released();
        let mut state = self.session.lock();
        let stream_closed = self.message.is_none() && state.outbox.is_reader(self.attachment);
        self.broker
            .release_held(&self.session, &mut state, self.attachment);
        if stream_closed && state.removed.is_none() {
            // Its client was told to connect every `timeout` (a connect answered while the
            // stream read set no deadline): it has that long, plus maxInterval.
            let config = &self.broker.shared.config;
            let at = self.broker.now_ms() + config.timeout + config.max_interval;
            self.session.set_deadline(at);
        }
    }
}
