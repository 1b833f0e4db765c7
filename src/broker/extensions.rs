//! The server side of CometD's acknowledgement extension (BAYEUX.md 6.2).
//!
//! Ack: a session that negotiated it gets its deliveries only on connect replies, each
//! reply closing a numbered batch; deliveries stay in `unacked` until a later connect
//! acknowledges their batch, and a connect that acknowledges less than was sent gets the
//! rest again, in order. (Timesync is answered by every reply itself: see
//! `protocol::message`.)

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::Value;

use super::outbox::DeliveryQueue;
use crate::engine::AckHandover;
use crate::protocol::Message;

/// Per-session state of the acknowledgement extension.
#[derive(Debug)]
pub(crate) struct AckState {
    /// The number the next connect reply's batch gets; batches start at 1.
    next_batch: u64,
    /// The batch the connect reply being built closes.
    closing: u64,
    /// Deliveries sent in a batch the client has not acknowledged, oldest first.
    unacked: VecDeque<(u64, Bytes)>,
    /// On an engine that numbers publishes: each unacknowledged batch with the number of
    /// the last publish in it, oldest first, so the batches can be rebuilt from the log.
    ends: VecDeque<(u64, u64)>,
    /// Every publish numbered up to this was acknowledged, or came before the session.
    base: u64,
}

impl AckState {
    /// The state of a new session; `base`: the engine's number of the last publish
    /// before it (0 when the engine does not number publishes).
    pub fn new(base: u64) -> Self {
        AckState {
            next_batch: 1,
            closing: 0,
            unacked: VecDeque::new(),
            ends: VecDeque::new(),
            base,
        }
    }

    /// The state to hand to another node; without the deliveries for a checkpoint.
    pub fn export(&self, with_deliveries: bool) -> AckHandover {
        let unacked = if with_deliveries {
            self.unacked
                .iter()
                .map(|(b, m)| (*b, String::from_utf8_lossy(m).into_owned()))
                .collect()
        } else {
            Vec::new()
        };
        AckHandover {
            next_batch: self.next_batch,
            base: self.base,
            ends: self.ends.iter().copied().collect(),
            unacked,
        }
    }

    /// The state another node handed over.
    pub fn import(state: AckHandover) -> Self {
        AckState {
            next_batch: state.next_batch,
            closing: 0,
            unacked: state
                .unacked
                .into_iter()
                .map(|(b, m)| (b, Bytes::from(m)))
                .collect(),
            ends: state.ends.into_iter().collect(),
            base: state.base,
        }
    }

    /// The unacknowledged batch a publish numbered `seq` belongs to, if any (rebuilding
    /// batches from the log).
    pub fn batch_of(&self, seq: u64) -> Option<u64> {
        self.ends
            .iter()
            .find(|(_, end)| seq <= *end)
            .map(|(b, _)| *b)
    }

    /// Adds a delivery to unacknowledged batch `batch` (rebuilding batches from the log).
    pub fn restore(&mut self, batch: u64, message: Bytes) {
        self.unacked.push_back((batch, message));
    }

    /// Forgets every delivery of a batch up to `batch`, which the client received.
    pub fn acknowledge(&mut self, batch: u64) {
        while self.unacked.front().is_some_and(|(b, _)| *b <= batch) {
            self.unacked.pop_front();
        }
        while let Some((_, end)) = self.ends.front().copied().filter(|(b, _)| *b <= batch) {
            self.ends.pop_front();
            self.base = self.base.max(end);
        }
    }

    /// Whether deliveries sent earlier wait for an acknowledgement (a connect then gets
    /// them again at once).
    pub fn has_unacked(&self) -> bool {
        !self.unacked.is_empty()
    }

    /// Numbers the batch of the connect reply being built.
    pub fn close_batch(&mut self) -> u64 {
        self.closing = self.next_batch;
        self.next_batch += 1;
        self.closing
    }

    /// Moves what is queued into the closing batch and writes every unacknowledged
    /// delivery, in order, to `out`. Beyond `capacity` the oldest are dropped and counted
    /// in `queue`.
    /// `last_seq`: the engine's number of the last publish queued (the batch's end).
    pub fn flush(
        &mut self,
        queue: &mut DeliveryQueue,
        capacity: usize,
        out: &mut Vec<Bytes>,
        last_seq: u64,
    ) {
        let mut fresh = Vec::new();
        queue.drain_into(&mut fresh);
        if !fresh.is_empty() && last_seq > 0 {
            self.ends.push_back((self.closing, last_seq));
        }
        self.unacked
            .extend(fresh.into_iter().map(|m| (self.closing, m)));
        while self.unacked.len() > capacity {
            self.unacked.pop_front();
            queue.count_dropped(1);
        }
        out.extend(self.unacked.iter().map(|(_, m)| m.clone()));
    }
}

/// The extension object of a message, parsed, if it has one.
fn ext_of(message: &Message) -> Option<Value> {
    serde_json::from_str(message.ext.as_deref()?.get()).ok()
}

/// Whether a handshake asks for the ack extension (`ext.ack: true`).
pub(crate) fn wants_ack(handshake: &Message) -> bool {
    ext_of(handshake).is_some_and(|ext| ext.get("ack") == Some(&Value::Bool(true)))
}

/// The batch number a connect acknowledges (`ext.ack`), if it carries one.
pub(crate) fn acknowledged_batch(connect: &Message) -> Option<u64> {
    ext_of(connect)?.get("ack")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverflowPolicy;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn unacknowledged_batches_are_sent_again_in_order() {
        let mut ack = AckState::new(0);
        let mut queue = DeliveryQueue::new(10);
        queue.push(b("1"), OverflowPolicy::DropOldest);
        assert_eq!(ack.close_batch(), 1);
        let mut out = Vec::new();
        ack.flush(&mut queue, 10, &mut out, 0);
        assert_eq!(out, vec![b("1")]);
        // The reply with batch 1 was lost: the next connect acknowledges 0.
        ack.acknowledge(0);
        assert!(ack.has_unacked());
        queue.push(b("2"), OverflowPolicy::DropOldest);
        assert_eq!(ack.close_batch(), 2);
        let mut out = Vec::new();
        ack.flush(&mut queue, 10, &mut out, 0);
        assert_eq!(out, vec![b("1"), b("2")]);
        ack.acknowledge(2);
        assert!(!ack.has_unacked());
        assert_eq!(ack.close_batch(), 3);
        let mut out = Vec::new();
        ack.flush(&mut queue, 10, &mut out, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn unacknowledged_deliveries_are_bounded() {
        let mut ack = AckState::new(0);
        let mut queue = DeliveryQueue::new(10);
        for s in ["1", "2", "3"] {
            queue.push(b(s), OverflowPolicy::DropOldest);
        }
        ack.close_batch();
        let mut out = Vec::new();
        ack.flush(&mut queue, 2, &mut out, 0);
        assert_eq!(out, vec![b("2"), b("3")]);
        assert_eq!(queue.take_dropped(), 1);
    }
}
