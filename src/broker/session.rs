//! A client session: its outbox, its subscriptions and its expiry deadline.
//!
//! All mutable state sits behind one short-lived mutex per session; nothing awaits while
//! holding it. A connection waiting for deliveries is a waker in the session's outbox, so
//! an idle session costs no task and no timer of its own.

use std::collections::HashSet;
use std::future::Future;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::extensions::AckState;
use super::outbox::{Attachment, Outbox, Wake};
use super::tree::SubscriberKey;
use super::{Removal, SessionInfo};
use crate::metrics::Transport;

/// The mutable part of a session.
#[derive(Debug)]
pub(crate) struct SessionState {
    /// The deliveries and the connection that takes them.
    pub outbox: Outbox,
    /// Set once the first connect was answered; until then connects are never held.
    pub connected: bool,
    /// Set when the session is gone, with why; a removed session is never revived.
    pub removed: Option<Removal>,
    /// The patterns this session is subscribed to, to clean the tree on removal.
    pub subscriptions: HashSet<Box<str>>,
    /// Deliveries ride only on connect replies.
    pub connect_only: bool,
    /// Set when the session negotiated the ack extension; boxed, as few sessions do.
    pub ack: Option<Box<AckState>>,
    /// When the last connect reply carrying deliveries was written, µs since the broker's
    /// epoch (for `delivery_interval`); `None` before the first.
    pub delivered_at: Option<NonZeroU64>,
    /// The transport its last handshake or connect came over (sessions by transport).
    pub transport: Transport,
    /// The engine's number of the last publish queued for it (0 when the engine does not
    /// number publishes): where its ack batches end.
    pub last_seq: u64,
    /// Requests of the session being processed now (a held connect is not one).
    pub in_flight: u16,
    /// The node the session was promised to while requests were in flight; it moves
    /// there when the last is done.
    pub handover_to: Option<Box<str>>,
}

/// Who the security policy authenticated, and until when the session may live.
///
/// Boxed in the session, so an anonymous session (most of them, on public deployments)
/// pays one null pointer, less than the `Option<Box<str>>` it replaces.
#[derive(Debug)]
pub(crate) struct Identity {
    name: Box<str>,
    /// When the session ends whatever it does, in broker milliseconds (a token's expiry);
    /// `u64::MAX` for never. Atomic: a refresh moves it while the sweeper reads it.
    expires: AtomicU64,
}

impl Identity {
    /// An identity; `expires` in broker milliseconds, `None` for never.
    pub fn new(name: &str, expires: Option<u64>) -> Box<Identity> {
        Box::new(Identity {
            name: name.into(),
            expires: AtomicU64::new(expires.unwrap_or(u64::MAX)),
        })
    }
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
    identity: Option<Box<Identity>>,
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
        identity: Option<Box<Identity>>,
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
                outbox: Outbox::new(capacity),
                connected: false,
                removed: None,
                subscriptions: HashSet::new(),
                connect_only,
                ack: None,
                delivered_at: None,
                transport: Transport::default(),
                last_seq: 0,
                in_flight: 0,
                handover_to: None,
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
            identity: self.identity.as_deref().map(|i| &*i.name),
        }
    }

    /// When the session ends whatever it does (its token's expiry), in broker
    /// milliseconds; `u64::MAX` for never.
    pub fn expires(&self) -> u64 {
        self.identity
            .as_deref()
            .map_or(u64::MAX, |i| i.expires.load(Ordering::Relaxed))
    }

    /// Moves [`Session::expires`] (a refreshed token); a session without an identity has
    /// nothing to move.
    pub fn set_expires(&self, at: u64) {
        if let Some(identity) = self.identity.as_deref() {
            identity.expires.store(at, Ordering::Relaxed);
        }
    }

    /// Whether the session negotiated the ack extension (its replies wait for a
    /// checkpoint on a cluster).
    pub fn is_ack(&self) -> bool {
        self.lock().ack.is_some()
    }

    pub fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }

    /// Sets the expiry deadline; call with the state locked so it agrees with the outbox.
    pub fn set_deadline(&self, at: u64) {
        self.deadline.store(at, Ordering::Relaxed);
    }

    /// Pushes the deadline to at least `at` (non-connect traffic keeps a session alive).
    pub fn extend_deadline(&self, at: u64) {
        self.deadline.fetch_max(at, Ordering::Relaxed);
    }

    /// Waits until the outbox wakes `attachment` (it must have been attached to this
    /// session's outbox), and says why.
    pub fn woken(&self, attachment: Attachment) -> impl Future<Output = Wake> + '_ {
        std::future::poll_fn(move |cx| self.lock().outbox.poll_woken(attachment, cx))
    }
}
