//! Hooks that let an application decide who may do what, and see or change messages on
//! their way through — in the spirit of CometD's `SecurityPolicy` and extensions.
//!
//! Every method has a permissive default, so an implementation overrides only what it
//! cares about. Hooks run on the request path with no broker lock held; they must not
//! block.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use super::session::Session;
use super::{Broker, read};
use crate::protocol::{ChannelName, Message};

/// Who a session is, as far as hooks are concerned.
#[derive(Debug, Clone, Copy)]
pub struct SessionInfo<'a> {
    /// The session's id.
    pub client_id: &'a str,
    /// Set by [`SecurityPolicy::can_handshake`] for an authenticated session (for example
    /// a JWT's `sub`); `None` for an anonymous one.
    pub identity: Option<&'a str>,
}

impl SessionInfo<'_> {
    /// Whether the handshake authenticated this session.
    pub fn is_authenticated(&self) -> bool {
        self.identity.is_some()
    }
}

/// What a handshake brings for a policy to judge.
#[derive(Debug)]
pub struct HandshakeRequest<'a> {
    /// The handshake's `ext` object, where clients put credentials (`ext.auth`).
    pub ext: Option<&'a Value>,
    /// The request's `BAYEUX_BROWSER` id, if any.
    pub browser_id: Option<&'a str>,
}

/// The verdict on a handshake.
#[derive(Debug, Clone, PartialEq)]
pub enum HandshakeVerdict {
    /// Create the session.
    Allow {
        /// The authenticated identity, or `None` for an anonymous session.
        identity: Option<String>,
        /// An `ext` object for the handshake reply (clients expose it to the app).
        reply_ext: Option<Value>,
        /// When the session must end whether or not it polls, e.g. when the token it was
        /// authenticated with expires; `None`: it lives as long as it polls. A refresh
        /// ([`Broker::extend_session`]) can move it later.
        expires: Option<SystemTime>,
    },
    /// Refuse: `403::Handshake denied` with `reconnect: none`.
    Deny {
        /// Logged, never sent to the client.
        reason: String,
    },
}

/// Decides who may handshake, subscribe and publish.
pub trait SecurityPolicy: Send + Sync + 'static {
    /// Judges a handshake. Default: everyone, anonymously.
    fn can_handshake(&self, request: &HandshakeRequest<'_>) -> HandshakeVerdict {
        let _ = request;
        HandshakeVerdict::Allow {
            identity: None,
            reply_ext: None,
            expires: None,
        }
    }

    /// Whether `session` may subscribe to the broadcast pattern `channel`. Default: yes.
    fn can_subscribe(&self, session: &SessionInfo<'_>, channel: &ChannelName<'_>) -> bool {
        let _ = (session, channel);
        true
    }

    /// Whether a publish to `channel` is allowed; `session` is `None` for server-side
    /// publishes. Default: yes.
    fn can_publish(&self, session: Option<&SessionInfo<'_>>, channel: &ChannelName<'_>) -> bool {
        let _ = (session, channel);
        true
    }
}

/// A shared policy is a policy, so that a service handler (a token refresh) can judge
/// credentials with the very policy the broker uses.
impl<P: SecurityPolicy> SecurityPolicy for Arc<P> {
    fn can_handshake(&self, request: &HandshakeRequest<'_>) -> HandshakeVerdict {
        (**self).can_handshake(request)
    }

    fn can_subscribe(&self, session: &SessionInfo<'_>, channel: &ChannelName<'_>) -> bool {
        (**self).can_subscribe(session, channel)
    }

    fn can_publish(&self, session: Option<&SessionInfo<'_>>, channel: &ChannelName<'_>) -> bool {
        (**self).can_publish(session, channel)
    }
}

/// The default policy: everything is allowed.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl SecurityPolicy for AllowAll {}

/// Sees, changes or deletes messages as they pass through the broker.
pub trait MessageHook: Send + Sync + 'static {
    /// Called for every message a client sends, before the broker acts on it. Returning
    /// false deletes it: the client gets `404::message_deleted`. Default: keep.
    fn incoming(&self, session: Option<&SessionInfo<'_>>, message: &mut Message) -> bool {
        let _ = (session, message);
        true
    }

    /// Called once for every publish about to be fanned out (from clients and from the
    /// server), before it is serialized for all its recipients. Returning false drops
    /// it; a client publisher then gets `404::message_deleted`. Default: keep.
    fn outgoing(&self, message: &mut Message) -> bool {
        let _ = message;
        true
    }
}

impl Broker {
    pub(super) fn policy(&self) -> Arc<dyn SecurityPolicy> {
        read(&self.shared.policy).clone()
    }

    /// Runs the incoming hooks over a batch; returns which messages they deleted (empty
    /// when there are no hooks).
    pub(super) fn run_incoming(
        &self,
        batch: &mut [Message],
        session: Option<&Session>,
    ) -> Vec<bool> {
        let hooks = read(&self.shared.hooks).clone();
        if hooks.is_empty() {
            return Vec::new();
        }
        let info = session.map(Session::info);
        batch
            .iter_mut()
            .map(|message| {
                !hooks.iter().all(|hook| {
                    catch_unwind(AssertUnwindSafe(|| hook.incoming(info.as_ref(), message)))
                        .unwrap_or(false)
                })
            })
            .collect()
    }
}
