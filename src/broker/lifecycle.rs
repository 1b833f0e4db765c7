//! How sessions end: a disconnect (the client's or the server's), expiry by the one
//! sweeper task, queue overflow, and the broker's shutdown.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::outbox::Wake;
use super::session::Session;
use super::{Broker, Removal, SessionEvent, Shared, read, write};
use crate::engine::Interest;
use crate::metrics::DropReason;
use crate::protocol::message::server_disconnect;
use crate::protocol::{BayeuxError, ChannelName};

/// Why [`Broker::extend_session`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtendError {
    /// No such live session.
    #[error("no such session")]
    UnknownSession,
    /// The session was authenticated as someone else (or not at all).
    #[error("the session belongs to another identity")]
    OtherIdentity,
    /// The session has no expiry to move: its handshake did not bind one.
    #[error("the session is not bound to a token expiry")]
    NotBound,
}

impl Removal {
    /// The error a connect of a session removed this way gets with its `handshake` advice.
    pub(super) fn error(self) -> BayeuxError {
        match self {
            Removal::TokenExpired => BayeuxError::TokenExpired,
            _ => BayeuxError::SessionUnknown,
        }
    }
}

impl Broker {
    /// Removes the session `client_id` from the server side: its held connect is answered
    /// with a `/meta/disconnect` message and `reconnect: none`. Returns false for an
    /// unknown session.
    pub fn disconnect(&self, client_id: &str) -> bool {
        let session = read(&self.shared.sessions).get(client_id).cloned();
        session.is_some_and(|s| self.remove_session(&s, Removal::Kicked))
    }

    /// Removes every session whose deadline or token expiry has passed, and finishes the
    /// removal of sessions whose queue overflowed. Returns how many.
    pub fn sweep(&self) -> usize {
        let overflowed = self.finish_pending_removals();
        self.prune_moved();
        let now = self.now_ms();
        let expired: Vec<Arc<Session>> = read(&self.shared.sessions)
            .values()
            .filter(|s| s.deadline() <= now || s.expires() <= now)
            .cloned()
            .collect();
        let removed = expired
            .iter()
            .filter(|s| {
                let why = if s.expires() <= now {
                    Removal::TokenExpired
                } else {
                    Removal::Expired
                };
                self.remove_session(s, why)
            })
            .count();
        overflowed + removed
    }

    /// Moves the expiry of session `client_id`, authenticated as `identity`, to `until`:
    /// a client presenting a fresh token keeps its session without a new handshake.
    pub fn extend_session(
        &self,
        client_id: &str,
        identity: &str,
        until: SystemTime,
    ) -> Result<(), ExtendError> {
        let session = read(&self.shared.sessions).get(client_id).cloned();
        let session = session.ok_or(ExtendError::UnknownSession)?;
        if session.info().identity != Some(identity) {
            return Err(ExtendError::OtherIdentity);
        }
        if session.expires() == u64::MAX {
            return Err(ExtendError::NotBound);
        }
        // Under the lock, so it cannot race the sweeper's removal re-check.
        let state = session.lock();
        if state.removed.is_some() {
            return Err(ExtendError::UnknownSession);
        }
        session.set_expires(self.at_ms(until));
        drop(state);
        Ok(())
    }

    /// Ends `session` if its token expired: true if it is (now) removed for that.
    pub(super) fn end_expired_token(&self, session: &Arc<Session>) -> bool {
        self.remove_session(session, Removal::TokenExpired)
            || session.lock().removed == Some(Removal::TokenExpired)
    }

    /// Starts the one background task that expires sessions. It stops when every
    /// `Broker` handle is dropped.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let period = Duration::from_millis(self.shared.config.sweep_interval);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let removed = Broker { shared }.sweep();
                if removed > 0 {
                    tracing::debug!(removed, "expired sessions swept");
                }
            }
        })
    }

    /// Whether [`Broker::shutdown`] was called (readiness probes report it).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    /// Starts draining: handshakes are refused with `reconnect: handshake` and an
    /// interval, and every held connect is answered at once with `reconnect: retry`, so
    /// clients come back to another instance.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = read(&self.shared.sessions).values().cloned().collect();
        for session in sessions {
            session.lock().outbox.wake(Wake::ShuttingDown);
        }
    }

    /// Removes a session for good. Returns false if it was already gone (or, for expiry,
    /// has been revived by a connect or a refresh since the sweeper looked).
    pub(super) fn remove_session(&self, session: &Arc<Session>, why: Removal) -> bool {
        match self.end_session(session, why) {
            Some(subscriptions) => {
                self.forget_session(session, &subscriptions, why);
                true
            }
            None => false,
        }
    }

    /// Ends a session whose queue overflowed during a fan-out: it takes no more
    /// deliveries and its reader is told at once, but the rest of its removal (the maps,
    /// the tree, the `Closed` event, whose listeners may publish) is left to the sweeper,
    /// so a publish never runs listeners or re-enters itself.
    pub(super) fn remove_after_fan_out(&self, session: Arc<Session>) {
        if let Some(subscriptions) = self.end_session(&session, Removal::Overflow) {
            let mut pending = self
                .shared
                .pending_removals
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            pending.push((session, subscriptions));
        }
    }

    /// Finishes the removals [`Broker::remove_after_fan_out`] left. Returns how many.
    fn finish_pending_removals(&self) -> usize {
        let pending = std::mem::take(
            &mut *self
                .shared
                .pending_removals
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (session, subscriptions) in &pending {
            self.forget_session(session, subscriptions, Removal::Overflow);
        }
        pending.len()
    }

    /// The part of a removal done under the session's lock: marks it removed (so it
    /// takes no more deliveries and no request revives it), answers or empties its
    /// outbox. Returns its subscriptions, or `None` if it was already gone (or, for
    /// expiry, has been revived by a connect since the sweeper looked).
    fn end_session(&self, session: &Session, why: Removal) -> Option<HashSet<Box<str>>> {
        let mut state = session.lock();
        let revived = match why {
            Removal::Expired => session.deadline() > self.now_ms(),
            Removal::TokenExpired => session.expires() > self.now_ms(),
            _ => false,
        };
        if state.removed.is_some() || revived {
            return None;
        }
        state.removed = Some(why);
        if why == Removal::Kicked {
            state.outbox.queue.push_unbounded(server_disconnect());
        }
        if state.outbox.has_reader() {
            state.outbox.wake(Wake::Removed);
        } else {
            let mut gone = Vec::new();
            state.outbox.queue.drain_into(&mut gone);
            if !gone.is_empty() {
                let reason = match why {
                    Removal::Overflow => DropReason::Overflow,
                    _ => DropReason::SessionGone,
                };
                self.shared.metrics.dropped(reason, gone.len() as u64);
            }
        }
        self.shared.metrics.session_closed(state.transport);
        Some(std::mem::take(&mut state.subscriptions))
    }

    /// The rest of a removal: out of the sessions map and the subscription tree, then the
    /// `Closed` event.
    pub(super) fn forget_session(
        &self,
        session: &Arc<Session>,
        subscriptions: &HashSet<Box<str>>,
        why: Removal,
    ) {
        {
            let mut sessions = write(&self.shared.sessions);
            if sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.client_id);
            }
        }
        if !subscriptions.is_empty() {
            let mut tree = write(&self.shared.tree);
            for pattern in subscriptions {
                if let Ok(name) = ChannelName::parse(pattern) {
                    let change = tree.remove(&name, session.key);
                    self.report_interest(pattern, change, Interest::Last);
                }
            }
        }
        tracing::debug!(client_id = %session.client_id, reason = ?why, "session removed");
        if why == Removal::Moved {
            return;
        }
        self.shared.engine.end_session(&session.client_id);
        self.emit(SessionEvent::Closed {
            client_id: &session.client_id,
            reason: why,
        });
    }
}
