//! Adaptive coalescing: under saturation, fewer and fuller long-poll replies.
//!
//! Why: a long-poll delivery costs an HTTP exchange (the connect reply and the reconnect,
//! ≈ 30-40 µs of a core on each side on loopback) whatever it carries, so when the server
//! has no core to spare, replies that carry more messages are what raise throughput. When
//! it has cores to spare, waiting only adds latency. So the wait is switched on by the
//! load itself.
//!
//! - **Inputs**, sampled by one task per broker every [`TICK`]:
//!   - *load*: the share of the elapsed time the runtime's worker threads were busy
//!     (tokio's busy-duration counters). A server that keeps its core busy is saturated
//!     even when every task gets its turn quickly, which is how a steady stream of
//!     requests and replies looks;
//!   - *lag*: how much later than asked the sampler ran. Every ready task (a woken
//!     connect, a request) queues in front of it, so a burst shows here first.
//! - **Output**: one interval for the whole broker ([`Coalescing::interval`]), read with
//!   one relaxed atomic load. A connect reply of a session that received deliveries
//!   within that interval waits until the interval has passed since its previous one
//!   (exactly as `delivery_interval` does, which stays a fixed floor); a quiet session
//!   never waits. It is at most the ceiling (`coalescing_ceiling`) and never beyond the
//!   connect's hold.
//! - **Control** ([`Controller::observe`]): a *hot* sample (load at least [`HOT_LOAD`], or
//!   lag above [`HOT`]) doubles the interval (at least [`STEP`], at most the ceiling) at
//!   once; a *calm* one (load below [`CALM_LOAD`] and lag below [`CALM`]) for a whole
//!   [`CALM_TICKS`] run of samples takes a quarter off it (to zero below [`STEP`]); a
//!   sample in between changes nothing and restarts the calm run.
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
/// Load (busy share of the workers' time) at or above which the server is saturated: a
/// core with no time to spare.
pub(super) const HOT_LOAD: f64 = 0.9;
/// Load below which the server has time to spare. Coalescing itself lowers the load, so
/// the band between this and [`HOT_LOAD`] is wider than what one lowering step (a
/// quarter of the interval) adds back.
pub(super) const CALM_LOAD: f64 = 0.6;
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

    /// Takes one sample and returns the new interval.
    pub(super) fn observe(&mut self, sample: Sample) -> Duration {
        let step = STEP.as_micros() as u64;
        let Sample { lag, load } = sample;
        if lag > HOT || load >= HOT_LOAD {
            self.calm_run = 0;
            self.interval_us = (self.interval_us * 2).max(step).min(self.ceiling_us);
        } else if lag < CALM && load < CALM_LOAD {
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

/// What the sampler saw over one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    /// How late the sampler ran.
    pub lag: Duration,
    /// The share of the tick the runtime's workers were busy, 0 to 1.
    pub load: f64,
}

impl Sample {
    /// A sample of lag alone (a runtime whose busy time is not known).
    #[cfg(test)]
    pub(super) fn lag(lag: Duration) -> Sample {
        Sample { lag, load: 0.0 }
    }
}

/// The workers' busy time so far, summed: its growth over a tick, divided by the tick and
/// the number of workers, is the load.
fn busy_time() -> (Duration, usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let workers = metrics.num_workers();
    let busy = (0..workers)
        .map(|worker| metrics.worker_total_busy_duration(worker))
        .sum();
    (busy, workers)
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
            let (mut busy_before, _) = busy_time();
            let mut before = Instant::now();
            loop {
                let asked = Instant::now() + tick;
                tokio::time::sleep_until(asked).await;
                let now = Instant::now();
                let lag = now.saturating_duration_since(asked);
                let (busy, workers) = busy_time();
                let elapsed = now.saturating_duration_since(before).as_secs_f64() * workers as f64;
                let load = if elapsed > 0.0 {
                    (busy.saturating_sub(busy_before).as_secs_f64() / elapsed).min(1.0)
                } else {
                    0.0
                };
                (busy_before, before) = (busy, now);
                let Some(shared) = weak.upgrade() else { return };
                let interval = controller.observe(Sample { lag, load });
                if interval != shared.coalescing.interval() {
                    tracing::debug!(?lag, load, ?interval, "coalescing interval changed");
                    shared.metrics.coalescing_interval(interval);
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
            .map(|_| c.observe(Sample::lag(SATURATED)).as_millis() as u64)
            .collect();
        assert_eq!(seen, [4, 8, 16, 32, 50, 50]);
    }

    #[test]
    fn an_idle_server_stays_immediate() {
        let mut c = Controller::new(CEILING);
        for _ in 0..1_000 {
            assert_eq!(c.observe(Sample::lag(IDLE)), Duration::ZERO);
        }
    }

    #[test]
    fn calm_lowers_it_back_to_zero_within_a_bounded_number_of_samples() {
        let mut c = Controller::new(CEILING);
        for _ in 0..10 {
            c.observe(Sample::lag(SATURATED));
        }
        let mut samples = 0;
        while !c.observe(Sample::lag(IDLE)).is_zero() {
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
        c.observe(Sample::lag(SATURATED));
        c.observe(Sample::lag(SATURATED));
        let middling = (HOT + CALM) / 2;
        for _ in 0..1_000 {
            assert_eq!(c.observe(Sample::lag(middling)), Duration::from_millis(8));
        }
    }

    #[test]
    fn one_hot_sample_restarts_the_calm_run() {
        let mut c = Controller::new(CEILING);
        c.observe(Sample::lag(SATURATED));
        for _ in 0..CALM_TICKS - 1 {
            c.observe(Sample::lag(IDLE));
        }
        assert_eq!(c.observe(Sample::lag(SATURATED)), Duration::from_millis(8));
        for _ in 0..CALM_TICKS - 1 {
            assert_eq!(c.observe(Sample::lag(IDLE)), Duration::from_millis(8));
        }
        assert_eq!(c.observe(Sample::lag(IDLE)), Duration::from_millis(6));
    }

    #[test]
    fn a_busy_core_is_saturated_even_when_nothing_waits_long() {
        let mut c = Controller::new(CEILING);
        let busy = Sample {
            lag: Duration::from_millis(1),
            load: 0.97,
        };
        let seen: Vec<u64> = (0..6).map(|_| c.observe(busy).as_millis() as u64).collect();
        assert_eq!(seen, [4, 8, 16, 32, 50, 50]);
        // Coalescing lowered the load into the band: it holds.
        let settled = Sample {
            lag: Duration::from_millis(1),
            load: 0.75,
        };
        for _ in 0..1_000 {
            assert_eq!(c.observe(settled), CEILING);
        }
        // Work left: lowered a quarter per calm run.
        let light = Sample {
            lag: Duration::from_millis(1),
            load: 0.2,
        };
        for _ in 0..CALM_TICKS {
            c.observe(light);
        }
        assert_eq!(c.observe(light), Duration::from_micros(37_500));
    }

    #[test]
    fn the_ceiling_bounds_it() {
        let mut c = Controller::new(Duration::from_millis(5));
        for _ in 0..20 {
            assert!(c.observe(Sample::lag(SATURATED)) <= Duration::from_millis(5));
        }
        assert_eq!(c.observe(Sample::lag(SATURATED)), Duration::from_millis(5));
    }
}
