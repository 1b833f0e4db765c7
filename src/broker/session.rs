//! A client session: its bounded delivery queue, its held connect and its subscriptions.
//!
//! All mutable state sits behind one short-lived mutex per session; nothing awaits while
//! holding it. A held `/meta/connect` is represented by a one-shot waker, so an idle session
//! costs no task and no timer of its own.

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::extensions::AckState;
use super::tree::SubscriberKey;
use super::{Removal, SessionInfo};
use crate::config::OverflowPolicy;

/// Why a held connect was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Deliveries are queued.
    Deliver,
    /// A newer connect of the same session arrived; this request fails with HTTP 500.
    Superseded,
    /// The session was removed (disconnect, expiry, server kick).
    Removed,
    /// The broker is shutting down.
    ShuttingDown,
}

/// A `/meta/connect` request that is waiting for deliveries.
#[derive(Debug)]
pub(crate) struct HeldConnect {
    /// Tells a woken request apart from a newer one of the same session.
    pub generation: u64,
    /// Taken by whoever wakes the request first.
    pub waker: Option<oneshot::Sender<Wake>>,
    /// The browser whose long-poll slot this request occupies, if it counts against one.
    pub browser_slot: Option<Box<str>>,
}

impl HeldConnect {
    /// Wakes the request unless somebody already did.
    pub fn wake(&mut self, why: Wake) {
        if let Some(waker) = self.waker.take() {
            // The receiver is gone only when the request was dropped; its guard cleans up.
            let _ = waker.send(why);
        }
    }
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
}

impl DeliveryQueue {
    pub fn new(capacity: usize) -> Self {
        DeliveryQueue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            dropped_unreported: 0,
        }
    }

    /// Appends `message`, applying the overflow policy when the queue is full.
    pub fn push(&mut self, message: Bytes, policy: OverflowPolicy) -> Enqueued {
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

    /// Appends a message that must not be lost to the bound (the server's disconnect notice).
    pub fn push_unbounded(&mut self, message: Bytes) {
        self.items.push_back(message);
    }

    /// Moves every queued delivery, in order, to `out`.
    pub fn drain_into(&mut self, out: &mut Vec<Bytes>) {
        out.extend(self.items.drain(..));
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

/// The mutable part of a session.
#[derive(Debug)]
pub(crate) struct SessionState {
    pub queue: DeliveryQueue,
    pub held: Option<HeldConnect>,
    /// Set once the first connect was answered; until then connects are never held.
    pub connected: bool,
    /// Set when the session is gone, with why; a removed session is never revived.
    pub removed: Option<Removal>,
    /// Requests of this session being processed that are not connects: while any is, new
    /// deliveries wait for that response instead of waking the held connect (BAYEUX.md 2.1).
    pub batching: u32,
    /// The patterns this session is subscribed to, to clean the tree on removal.
    pub subscriptions: HashSet<Box<str>>,
    /// Deliveries ride only on connect replies.
    pub connect_only: bool,
    /// Set when the session negotiated the ack extension; boxed, as few sessions do.
    pub ack: Option<Box<AckState>>,
    /// When the last connect reply carrying deliveries was written, µs since the broker's
    /// epoch (for `delivery_interval`); `None` before the first.
    pub delivered_at: Option<NonZeroU64>,
    next_generation: u64,
}

/// One client session.
#[derive(Debug)]
pub(crate) struct Session {
    /// Compact identity used by the subscription tree.
    pub key: SubscriberKey,
    /// The id the client sends in `clientId`.
    pub client_id: Box<str>,
    /// The `BAYEUX_BROWSER` id the session was created under, if any.
    pub browser_id: Option<Box<str>>,
    /// Who the security policy authenticated at handshake; `None` for anonymous.
    pub identity: Option<Box<str>>,
    /// When the sweeper may remove the session, in broker milliseconds; `u64::MAX` while a
    /// connect is held. Atomic so the sweeper scans without taking the session lock.
    deadline: AtomicU64,
    state: Mutex<SessionState>,
}

impl Session {
    pub fn new(
        key: SubscriberKey,
        client_id: Box<str>,
        browser_id: Option<Box<str>>,
        identity: Option<Box<str>>,
        capacity: usize,
        connect_only: bool,
        deadline: u64,
    ) -> Self {
        Session {
            key,
            client_id,
            browser_id,
            identity,
            deadline: AtomicU64::new(deadline),
            state: Mutex::new(SessionState {
                queue: DeliveryQueue::new(capacity),
                held: None,
                connected: false,
                removed: None,
                batching: 0,
                subscriptions: HashSet::new(),
                connect_only,
                ack: None,
                delivered_at: None,
                next_generation: 0,
            }),
        }
    }

    /// Locks the session state. A panic elsewhere cannot leave it half-written in a way
    /// that matters more than losing the session, so a poisoned lock is used as is.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The session as hooks see it.
    pub fn info(&self) -> SessionInfo<'_> {
        SessionInfo {
            client_id: &self.client_id,
            identity: self.identity.as_deref(),
        }
    }

    pub fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }

    /// Sets the expiry deadline; call with the state locked so it agrees with `held`.
    pub fn set_deadline(&self, at: u64) {
        self.deadline.store(at, Ordering::Relaxed);
    }

    /// Pushes the deadline to at least `at` (non-connect traffic keeps a session alive).
    pub fn extend_deadline(&self, at: u64) {
        self.deadline.fetch_max(at, Ordering::Relaxed);
    }
}

impl SessionState {
    /// A fresh generation number for a connect about to be held.
    pub fn next_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Wakes the held connect, if any, because deliveries are waiting.
    pub fn wake_for_delivery(&mut self) {
        if self.batching == 0
            && let Some(held) = self.held.as_mut()
        {
            held.wake(Wake::Deliver);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
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
    fn a_connect_is_woken_once_and_not_while_batching() {
        let session = Session::new(1, "c".into(), None, None, 10, false, 0);
        let (tx, mut rx) = oneshot::channel();
        let mut state = session.lock();
        let generation = state.next_generation();
        state.held = Some(HeldConnect {
            generation,
            waker: Some(tx),
            browser_slot: None,
        });
        state.batching = 1;
        state.wake_for_delivery();
        assert!(rx.try_recv().is_err(), "not woken inside a batch");
        state.batching = 0;
        state.wake_for_delivery();
        state.wake_for_delivery();
        assert_eq!(rx.try_recv(), Ok(Wake::Deliver));
    }
}
