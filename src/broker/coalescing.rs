//! Adaptive coalescing: under saturation, fewer and fuller long-poll replies.
//!
//! Why: a long-poll delivery costs an HTTP exchange (the connect reply and the reconnect,
//! ≈ 30-40 µs of a core on each side on loopback) whatever it carries, so when the server
//! has no core to spare, replies that carry more messages are what raise throughput. When
//! it has cores to spare, waiting only adds latency. So the wait is switched on by the
//! load itself.
//!
//! - **Input**: event-loop lag, sampled by one task per broker: it sleeps [`TICK`] and
//!   notes how much later than asked it ran. Every ready task (a woken connect, a request)
//!   queues in front of it, so the lag is how long work waits for a core right now.
//! - **Output**: one interval for the whole broker ([`Coalescing::interval`]), read with
//!   one relaxed atomic load. A connect reply of a session that received deliveries
//!   within that interval waits until the interval has passed since its previous one
//!   (exactly as `delivery_interval` does, which stays a fixed floor); a quiet session
//!   never waits. It is at most the ceiling (`coalescing_ceiling`) and never beyond the
//!   connect's hold.
//! - **Control** ([`Controller::observe`]): a lag above [`HOT`] doubles the interval (at
//!   least [`STEP`], at most the ceiling) at once; a lag below [`CALM`] for a whole
//!   [`CALM_TICKS`] run of samples takes a quarter off it (to zero below [`STEP`]); a lag
//!   in between changes nothing and restarts the calm run.
//!
//! Nothing per session: a session's only input is its `delivered_at`, which the delivery
//! interval keeps anyway.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{Broker, Shared};

/// How often the lag is sampled. Short enough to react within a few replies, long
/// enough that the sampler costs nothing measurable (100 wake-ups a second).
pub(super) const TICK: Duration = Duration::from_millis(10);
/// Lag above which the server counts as saturated. Far above an idle runtime's lag
/// (the timer's millisecond rounding) and below one burst of a thousand woken connects
/// (≈ 35 ms).
pub(super) const HOT: Duration = Duration::from_millis(8);
/// Lag below which the server counts as having cores to spare. An idle runtime's lag is
/// ≈ 1.1 ms (the timer rounds up to the next millisecond); the margin keeps a machine
/// shared with other work from holding the interval up.
pub(super) const CALM: Duration = Duration::from_millis(3);
/// How many calm samples in a row (250 ms) before the interval is lowered one step.
pub(super) const CALM_TICKS: u32 = 25;
/// How often the lag is sampled while nothing could be coalesced (no reply with
/// deliveries since the last sample, interval zero): an idle server sleeps.
pub(super) const IDLE_TICK: Duration = Duration::from_millis(250);
/// The least non-zero interval: a shorter wait would barely fill a reply.
pub(super) const STEP: Duration = Duration::from_millis(4);

/// The controller's state: the sampler task owns it, connects read only the interval.
#[derive(Debug)]
pub(super) struct Controller {
    /// The most the interval may be, µs.
    ceiling_us: u64,
    /// The interval now, µs.
    interval_us: u64,
    /// Calm samples in a row since the last change.
    calm_run: u32,
}

impl Controller {
    /// A controller that starts at zero (immediate replies) and never exceeds `ceiling`.
    pub(super) fn new(ceiling: Duration) -> Controller {
        Controller {
            ceiling_us: ceiling.as_micros() as u64,
            interval_us: 0,
            calm_run: 0,
        }
    }

    /// Takes one lag sample and returns the new interval.
    pub(super) fn observe(&mut self, lag: Duration) -> Duration {
        let step = STEP.as_micros() as u64;
        if lag > HOT {
            self.calm_run = 0;
            self.interval_us = (self.interval_us * 2).max(step).min(self.ceiling_us);
        } else if lag < CALM {
            self.calm_run += 1;
            if self.calm_run >= CALM_TICKS {
                self.calm_run = 0;
                let lowered = self.interval_us - self.interval_us / 4;
                self.interval_us = if lowered < step { 0 } else { lowered };
            }
        } else {
            self.calm_run = 0;
        }
        Duration::from_micros(self.interval_us)
    }
}

/// The broker's side of adaptive coalescing: the current interval, shared by every
/// connect.
#[derive(Debug, Default)]
pub(super) struct Coalescing {
    /// The controller's output, µs; 0 while the server has cores to spare.
    interval_us: AtomicU64,
    /// Whether a connect reply with deliveries was prepared since the sampler last looked.
    active: AtomicBool,
}

impl Coalescing {
    /// How long a busy session's replies are spaced now; zero when not saturated.
    pub(super) fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us.load(Ordering::Relaxed))
    }

    /// Notes that a reply with deliveries is being prepared: the sampler keeps its short
    /// tick while this happens. Read before written, so a busy server does not contend
    /// on the flag.
    pub(super) fn note_activity(&self) {
        if !self.active.load(Ordering::Relaxed) {
            self.active.store(true, Ordering::Relaxed);
        }
    }

    /// Whether there was activity since the last call.
    fn take_activity(&self) -> bool {
        self.active.swap(false, Ordering::Relaxed)
    }

    /// Publishes the controller's output.
    pub(super) fn set(&self, interval: Duration) {
        self.interval_us
            .store(interval.as_micros() as u64, Ordering::Relaxed);
    }
}

impl Broker {
    /// Starts the one task that samples event-loop lag and sets the coalescing interval,
    /// unless adaptive coalescing is off (`coalescing = "off"` or a zero ceiling). It
    /// stops when every `Broker` handle is dropped.
    pub fn spawn_coalescing(&self) -> Option<tokio::task::JoinHandle<()>> {
        let config = &self.shared.config;
        if !config.coalesces_adaptively() {
            return None;
        }
        let mut controller = Controller::new(Duration::from_millis(config.coalescing_ceiling));
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        Some(tokio::spawn(async move {
            let mut tick = TICK;
            loop {
                let asked = Instant::now() + tick;
                tokio::time::sleep_until(asked).await;
                let lag = Instant::now().saturating_duration_since(asked);
                let Some(shared) = weak.upgrade() else { return };
                let interval = controller.observe(lag);
                if interval != shared.coalescing.interval() {
                    tracing::debug!(?lag, ?interval, "coalescing interval changed");
                }
                shared.coalescing.set(interval);
                let busy = shared.coalescing.take_activity();
                tick = if busy || !interval.is_zero() {
                    TICK
                } else {
                    IDLE_TICK
                };
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CEILING: Duration = Duration::from_millis(50);
    const SATURATED: Duration = Duration::from_millis(30);
    const IDLE: Duration = Duration::from_micros(300);

    #[test]
    fn saturation_raises_the_interval_to_the_ceiling_within_a_few_samples() {
        let mut c = Controller::new(CEILING);
        let seen: Vec<u64> = (0..6)
            .map(|_| c.observe(SATURATED).as_millis() as u64)
            .collect();
        assert_eq!(seen, [4, 8, 16, 32, 50, 50]);
    }

    #[test]
    fn an_idle_server_stays_immediate() {
        let mut c = Controller::new(CEILING);
        for _ in 0..1_000 {
            assert_eq!(c.observe(IDLE), Duration::ZERO);
        }
    }

    #[test]
    fn calm_lowers_it_back_to_zero_within_a_bounded_number_of_samples() {
        let mut c = Controller::new(CEILING);
        for _ in 0..10 {
            c.observe(SATURATED);
        }
        let mut samples = 0;
        while !c.observe(IDLE).is_zero() {
            samples += 1;
            assert!(samples < 10_000, "never came back to immediate");
        }
        // 50 → 37.5 → 28.1 → 21.1 → 15.8 → 11.9 → 8.9 → 6.7 → 5.0 → 3.8 (< STEP) → 0:
        // nine calm runs.
        assert_eq!(samples + 1, 9 * CALM_TICKS as usize);
        assert!(TICK * (samples as u32 + 1) <= Duration::from_millis(2_500));
    }

    #[test]
    fn lag_between_the_marks_holds_the_interval() {
        let mut c = Controller::new(CEILING);
        c.observe(SATURATED);
        c.observe(SATURATED);
        let middling = (HOT + CALM) / 2;
        for _ in 0..1_000 {
            assert_eq!(c.observe(middling), Duration::from_millis(8));
        }
    }

    #[test]
    fn one_hot_sample_restarts_the_calm_run() {
        let mut c = Controller::new(CEILING);
        c.observe(SATURATED);
        for _ in 0..CALM_TICKS - 1 {
            c.observe(IDLE);
        }
        assert_eq!(c.observe(SATURATED), Duration::from_millis(8));
        for _ in 0..CALM_TICKS - 1 {
            assert_eq!(c.observe(IDLE), Duration::from_millis(8));
        }
        assert_eq!(c.observe(IDLE), Duration::from_millis(6));
    }

    #[test]
    fn the_ceiling_bounds_it() {
        let mut c = Controller::new(Duration::from_millis(5));
        for _ in 0..20 {
            assert!(c.observe(SATURATED) <= Duration::from_millis(5));
        }
        assert_eq!(c.observe(SATURATED), Duration::from_millis(5));
    }
}
