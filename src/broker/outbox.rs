//! A session's outbox: its bounded queue of serialized deliveries and the one connection
//! that reads it (rumqttd calls this a link).
//!
//! Every transport takes deliveries the same way: it attaches as the session's reader,
//! waits until the outbox wakes it, and drains the queue. A held long-poll connect reads
//! once; a WebSocket writer or an in-process session reads again and again with the same
//! attachment. Moving delivery to a newer connection (a superseding connect, a reload on
//! a new socket) is one operation, [`Outbox::attach`]: the previous reader learns that it
//! was superseded, and nothing queued is lost or sent twice because there is only one
//! queue.
//!
//! The reader is a plain [`Waker`] stored in the session, not a channel: a parked connect
//! costs no allocation of its own, and a session nobody reads costs one empty `Option`.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::time::Instant;

use crate::config::OverflowPolicy;

/// Why a reader was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Deliveries are queued.
    Deliver,
    /// A newer connection of the same session took over delivery.
    Superseded,
    /// The session was removed (disconnect, expiry, server kick, overflow).
    Removed,
    /// The broker is shutting down.
    ShuttingDown,
}

/// What happened when a delivery was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued without loss.
    Queued,
    /// Queued after dropping the oldest delivery.
    DroppedOldest,
    /// Not queued: the queue is full and the policy is to disconnect the session.
    Overflow,
}

/// A session's FIFO of serialized deliveries, bounded by `capacity`.
#[derive(Debug)]
pub(crate) struct DeliveryQueue {
    items: VecDeque<Bytes>,
    capacity: usize,
    /// Deliveries dropped since the client was last told.
    dropped_unreported: u64,
    /// When the oldest queued delivery was published (about: after a partial drain, when
    /// the drain happened), for the publish-to-delivery latency metric.
    since: Option<Instant>,
}

impl DeliveryQueue {
    pub fn new(capacity: usize) -> Self {
        DeliveryQueue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            dropped_unreported: 0,
            since: None,
        }
    }

    /// Appends `message`, published at `published`, applying the overflow policy when the
    /// queue is full. The fan-out reads the clock once for all its recipients.
    pub fn push_at(
        &mut self,
        message: Bytes,
        policy: OverflowPolicy,
        published: Instant,
    ) -> Enqueued {
        if self.items.is_empty() {
            self.since = Some(published);
        }
        if self.items.len() < self.capacity {
            self.items.push_back(message);
            return Enqueued::Queued;
        }
        match policy {
            OverflowPolicy::DropOldest => {
                self.items.pop_front();
                self.items.push_back(message);
                self.dropped_unreported += 1;
                Enqueued::DroppedOldest
            }
            OverflowPolicy::Disconnect => Enqueued::Overflow,
        }
    }

    /// [`DeliveryQueue::push_at`] now.
    #[cfg(test)]
    pub fn push(&mut self, message: Bytes, policy: OverflowPolicy) -> Enqueued {
        self.push_at(message, policy, Instant::now())
    }

    /// Appends a message that must not be lost to the bound (the server's disconnect notice).
    pub fn push_unbounded(&mut self, message: Bytes) {
        if self.items.is_empty() {
            self.since = Some(Instant::now());
        }
        self.items.push_back(message);
    }

    /// How long the oldest queued delivery has waited, if any waits.
    pub fn oldest_age(&self) -> Option<std::time::Duration> {
        self.since
            .filter(|_| !self.items.is_empty())
            .map(|at| at.elapsed())
    }

    /// Moves every queued delivery, in order, to `out`.
    pub fn drain_into(&mut self, out: &mut Vec<Bytes>) {
        out.extend(self.items.drain(..));
        self.since = None;
    }

    /// Moves queued deliveries, in order, to `out` while they add up to at most
    /// `max_bytes` (always at least one, however large), so that no reply grows past
    /// the bound. Returns whether the queue is now empty.
    pub fn drain_bounded(&mut self, out: &mut Vec<Bytes>, max_bytes: usize) -> bool {
        let mut bytes = 0usize;
        while let Some(next) = self.items.front() {
            bytes = bytes.saturating_add(next.len() + 1);
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.extend(self.items.pop_front());
        }
        self.since = (!self.items.is_empty()).then(Instant::now);
        self.items.is_empty()
    }

    /// Whether the queue holds as many deliveries as it may.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }

    /// Counts deliveries dropped outside the queue (from the ack extension's unacked list).
    pub fn count_dropped(&mut self, n: u64) {
        self.dropped_unreported += n;
    }

    /// Returns and resets the count of deliveries dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_unreported)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}

/// The connection reading an outbox now.
#[derive(Debug)]
struct Reader {
    /// Tells this attachment apart from an older or newer one of the same session.
    generation: u64,
    /// Why the reader was woken, kept until it looks; the first reason wins.
    woken: Option<Wake>,
    /// The task to wake, once it has waited.
    waker: Option<Waker>,
    /// The browser whose long-poll slot this reader occupies, if it counts against one.
    browser_slot: Option<Box<str>>,
}

/// A session's deliveries and the connection that takes them.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// What waits to be delivered.
    pub queue: DeliveryQueue,
    reader: Option<Reader>,
    /// Requests of this session being processed that are not connects: while any is, new
    /// deliveries wait for that response instead of waking the reader (BAYEUX.md 2.1).
    pub batching: u32,
    next_generation: u64,
}

/// A reader's attachment to an outbox, returned by [`Outbox::attach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attachment(u64);

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            queue: DeliveryQueue::new(capacity),
            reader: None,
            batching: 0,
            next_generation: 0,
        }
    }

    /// Makes a new connection the outbox's reader. The previous reader, if any, is told
    /// it was superseded; its browser slot is returned so the caller can free it (first,
    /// so a page reload is not taken for a second tab).
    pub fn attach(&mut self, browser_slot: Option<Box<str>>) -> (Attachment, Option<Box<str>>) {
        let previous = self.supersede();
        self.next_generation += 1;
        self.reader = Some(Reader {
            generation: self.next_generation,
            woken: None,
            waker: None,
            browser_slot,
        });
        (Attachment(self.next_generation), previous)
    }

    /// Tells the current reader, if any, that a newer connection takes over, and detaches
    /// it. Returns its browser slot.
    pub fn supersede(&mut self) -> Option<Box<str>> {
        let mut previous = self.reader.take()?;
        if let Some(waker) = previous.waker.take() {
            waker.wake();
        }
        previous.browser_slot
    }

    /// Detaches `attachment` if it is still the reader. `Some(slot)`: it was, and this is
    /// the browser slot it held.
    pub fn detach(&mut self, attachment: Attachment) -> Option<Option<Box<str>>> {
        if self.is_reader(attachment) {
            return self.reader.take().map(|r| r.browser_slot);
        }
        None
    }

    /// Whether `attachment` is still the outbox's reader.
    pub fn is_reader(&self, attachment: Attachment) -> bool {
        self.reader
            .as_ref()
            .is_some_and(|r| r.generation == attachment.0)
    }

    /// Whether any connection reads the outbox.
    pub fn has_reader(&self) -> bool {
        self.reader.is_some()
    }

    /// Wakes the reader, if any, for `why`, unless it was woken already.
    pub fn wake(&mut self, why: Wake) {
        if let Some(reader) = self.reader.as_mut()
            && reader.woken.is_none()
        {
            reader.woken = Some(why);
            if let Some(waker) = reader.waker.take() {
                waker.wake();
            }
        }
    }

    /// Wakes the reader because deliveries wait, unless a request of the session will
    /// carry them.
    pub fn wake_for_delivery(&mut self) {
        if self.batching == 0 && !self.queue.is_empty() {
            self.wake(Wake::Deliver);
        }
    }

    /// Polls `attachment` for a wake-up. A superseded attachment is ready at once with
    /// [`Wake::Superseded`]. Taking the reason re-arms the reader, so a reader that stays
    /// attached (a socket's writer) can wait again.
    pub fn poll_woken(&mut self, attachment: Attachment, cx: &mut Context<'_>) -> Poll<Wake> {
        let Some(reader) = self
            .reader
            .as_mut()
            .filter(|r| r.generation == attachment.0)
        else {
            return Poll::Ready(Wake::Superseded);
        };
        match reader.woken.take() {
            Some(why) => Poll::Ready(why),
            None => {
                if !reader
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    reader.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake as TaskWake;

    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl TaskWake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn queue_is_fifo() {
        let mut q = DeliveryQueue::new(10);
        for s in ["1", "2", "3"] {
            assert_eq!(q.push(b(s), OverflowPolicy::DropOldest), Enqueued::Queued);
        }
        let mut out = Vec::new();
        q.drain_into(&mut out);
        assert_eq!(out, vec![b("1"), b("2"), b("3")]);
        assert!(q.is_empty());
    }

    #[test]
    fn drop_oldest_keeps_the_newest_in_order_and_counts() {
        let mut q = DeliveryQueue::new(2);
        q.push(b("1"), OverflowPolicy::DropOldest);
        q.push(b("2"), OverflowPolicy::DropOldest);
        assert_eq!(
            q.push(b("3"), OverflowPolicy::DropOldest),
            Enqueued::DroppedOldest
        );
        assert_eq!(
            q.push(b("4"), OverflowPolicy::DropOldest),
            Enqueued::DroppedOldest
        );
        assert_eq!(q.take_dropped(), 2);
        assert_eq!(q.take_dropped(), 0);
        let mut out = Vec::new();
        q.drain_into(&mut out);
        assert_eq!(out, vec![b("3"), b("4")]);
    }

    #[test]
    fn a_bounded_drain_stops_at_the_byte_budget_but_takes_at_least_one() {
        let mut q = DeliveryQueue::new(10);
        for s in ["aaaa", "bbbb", "cccc"] {
            q.push(b(s), OverflowPolicy::DropOldest);
        }
        let mut out = Vec::new();
        assert!(!q.drain_bounded(&mut out, 10), "two of five bytes each fit");
        assert_eq!(out, vec![b("aaaa"), b("bbbb")]);
        let mut out = Vec::new();
        assert!(q.drain_bounded(&mut out, 1), "one too large still goes");
        assert_eq!(out, vec![b("cccc")]);
    }

    #[test]
    fn disconnect_policy_refuses_instead_of_dropping() {
        let mut q = DeliveryQueue::new(1);
        q.push(b("1"), OverflowPolicy::Disconnect);
        assert_eq!(
            q.push(b("2"), OverflowPolicy::Disconnect),
            Enqueued::Overflow
        );
        assert_eq!(q.len(), 1);
        q.push_unbounded(b("bye"));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_reader_is_woken_once_and_not_while_batching() {
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut outbox = Outbox::new(10);
        let (reader, _) = outbox.attach(None);
        assert!(outbox.poll_woken(reader, &mut cx).is_pending());
        outbox.queue.push(b("1"), OverflowPolicy::DropOldest);
        outbox.batching = 1;
        outbox.wake_for_delivery();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            0,
            "not woken inside a batch"
        );
        outbox.batching = 0;
        outbox.wake_for_delivery();
        outbox.wake(Wake::Removed);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            outbox.poll_woken(reader, &mut cx),
            Poll::Ready(Wake::Deliver)
        );
        // Taking the reason re-arms the same attachment.
        assert!(outbox.poll_woken(reader, &mut cx).is_pending());
    }

    #[test]
    fn attaching_supersedes_the_previous_reader_and_hands_back_its_slot() {
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut outbox = Outbox::new(10);
        let (old, none) = outbox.attach(Some("browser".into()));
        assert_eq!(none, None);
        assert!(outbox.poll_woken(old, &mut cx).is_pending());
        let (new, slot) = outbox.attach(None);
        assert_eq!(slot.as_deref(), Some("browser"));
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "the old reader was woken"
        );
        assert_eq!(
            outbox.poll_woken(old, &mut cx),
            Poll::Ready(Wake::Superseded)
        );
        assert_eq!(
            outbox.detach(old),
            None,
            "a superseded reader detaches nothing"
        );
        assert!(outbox.is_reader(new));
        assert_eq!(outbox.detach(new), Some(None));
        assert!(!outbox.has_reader());
    }
}
