//! `/meta/subscribe` and `/meta/unsubscribe`: the policy's verdict, the per-session
//! limit, and the subscription tree that publishes are matched against. The engine hears
//! when a pattern gains its first local subscriber or loses its last.

use std::sync::Arc;

use serde_json::Value;

use super::session::Session;
use super::tree::Change;
use super::{Broker, SessionEvent, write};
use crate::engine::Interest;
use crate::protocol::{BayeuxError, ChannelClass, ChannelName, Message};

impl Broker {
    /// The validated patterns of a subscribe or unsubscribe, in request order.
    fn patterns<'m>(message: &'m Message) -> Result<Vec<ChannelName<'m>>, BayeuxError> {
        let parse = |v: &'m Value| {
            v.as_str()
                .and_then(|s| ChannelName::parse(s).ok())
                .ok_or(BayeuxError::SubscriptionInvalid)
        };
        match &message.subscription {
            None => Err(BayeuxError::SubscriptionMissing),
            Some(Value::Array(items)) if !items.is_empty() => items.iter().map(parse).collect(),
            Some(single) => parse(single).map(|name| vec![name]),
        }
    }

    /// A client's subscribe: as [`Broker::subscribe`], but never to the server's own
    /// channels (in-process sessions may).
    pub(super) fn subscribe_client(
        &self,
        message: &Message,
        session: &Arc<Session>,
    ) -> Result<(), BayeuxError> {
        if let Some(reserved) = Self::patterns(message)?.iter().find(|p| p.is_reserved()) {
            return Err(BayeuxError::SubscribeDenied(reserved.as_str().to_string()));
        }
        self.subscribe(message, session)
    }

    /// Subscribes `session` to every pattern of `message`, all or nothing.
    pub(super) fn subscribe(
        &self,
        message: &Message,
        session: &Arc<Session>,
    ) -> Result<(), BayeuxError> {
        let patterns = Self::patterns(message)?;
        if patterns.iter().any(|p| p.class() == ChannelClass::Meta) {
            return Err(BayeuxError::MetaSubscribeDenied);
        }
        // Service subscriptions succeed and record nothing (BAYEUX.md 1.4).
        let mut fresh: Vec<&ChannelName<'_>> = patterns
            .iter()
            .filter(|p| p.class() == ChannelClass::Broadcast)
            .collect();
        fresh.sort_unstable_by_key(|p| p.as_str());
        fresh.dedup_by_key(|p| p.as_str());
        let policy = self.policy();
        if let Some(denied) = fresh
            .iter()
            .find(|p| !policy.can_subscribe(&session.info(), p))
        {
            return Err(BayeuxError::SubscribeDenied(denied.as_str().to_string()));
        }
        let added: Vec<&ChannelName<'_>> = {
            let mut state = session.lock();
            if state.removed.is_some() {
                return Err(BayeuxError::SessionUnknown);
            }
            fresh.retain(|p| !state.subscriptions.contains(p.as_str()));
            if state.subscriptions.len() + fresh.len() > self.shared.config.max_subscriptions {
                return Err(BayeuxError::SubscriptionLimit);
            }
            let mut tree = write(&self.shared.tree);
            for pattern in &fresh {
                state.subscriptions.insert(pattern.as_str().into());
                let change = tree.insert(pattern, session.key, session.clone());
                self.report_interest(pattern.as_str(), change, Interest::First);
            }
            fresh
        };
        for pattern in added {
            self.emit(SessionEvent::Subscribed {
                client_id: &session.client_id,
                channel: pattern.as_str(),
            });
        }
        Ok(())
    }

    /// Unsubscribes `session` from every pattern of `message`; unknown ones are ignored.
    pub(super) fn unsubscribe(
        &self,
        message: &Message,
        session: &Session,
    ) -> Result<(), BayeuxError> {
        let patterns = Self::patterns(message)?;
        if patterns.iter().any(|p| p.class() == ChannelClass::Meta) {
            return Err(BayeuxError::UnsubscribeFailed);
        }
        let mut removed = Vec::new();
        {
            let mut state = session.lock();
            if state.removed.is_some() {
                return Err(BayeuxError::SessionUnknown);
            }
            let mut tree = write(&self.shared.tree);
            for pattern in &patterns {
                if state.subscriptions.remove(pattern.as_str()) {
                    let change = tree.remove(pattern, session.key);
                    self.report_interest(pattern.as_str(), change, Interest::Last);
                    removed.push(pattern);
                }
            }
        }
        for pattern in removed {
            self.emit(SessionEvent::Unsubscribed {
                client_id: &session.client_id,
                channel: pattern.as_str(),
            });
        }
        Ok(())
    }

    /// Tells the engine that `pattern` gained its first local subscriber or lost its last.
    /// Called with the tree locked, so the engine sees one pattern's changes in order.
    pub(super) fn report_interest(&self, pattern: &str, change: Change, edge: Interest) {
        if change == Change::Edge {
            self.shared.engine.interest(pattern, edge);
        }
    }
}
