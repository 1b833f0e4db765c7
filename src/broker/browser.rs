//! The per-browser long-poll limit (BAYEUX.md 4.7): browsers cap connections per host,
//! so two tabs of one browser each holding a connect would starve its other requests. A
//! held connect takes a slot of its `BAYEUX_BROWSER`; a connect over the limit is told to
//! poll (`multipleClients`) or to stop.

use super::session::Session;
use super::{Broker, ReplyBatch, RequestContext};
use crate::metrics::{Outcome, Refusal};
use crate::protocol::{Advice, Message, Reply};

impl Broker {
    /// The answer to a connect over its browser's long-poll limit: poll at an interval,
    /// or stop.
    pub(super) fn multiple_clients(&self, session: &Session, message: &Message) -> ReplyBatch {
        let config = &self.shared.config;
        self.shared.metrics.refused(Refusal::BrowserConnects);
        self.shared.metrics.connect(Outcome::Busy);
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
    pub(super) fn acquire_browser_slot(
        &self,
        ctx: &RequestContext,
    ) -> Result<Option<Box<str>>, ()> {
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
