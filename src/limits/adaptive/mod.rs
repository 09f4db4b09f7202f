//! Adaptive concurrency: an AIMD window of concurrent requests, driven by
//! readings of the backend's own health signals.
//!
//! Usable without the proxy: build a [`Controller`], feed it readings with
//! [`Controller::record`] and [`Controller::evaluate`] (the gateway's
//! monitor does this from Prometheus queries), and wrap each call to the
//! protected service in a permit from [`Controller::acquire`]. See
//! `examples/adaptive.rs`.
//!
//! # The window
//!
//! `W` lives in `[min_window, max_window]` and starts at `initial_window`.
//! At each evaluation (one per reading cycle):
//! - any signal at or above its `emergency` threshold: `W ← max(min, ⌊W·backoff⌋)`;
//! - else any signal at or above `warning`: `W` is cut by a factor that
//!   moves smoothly from 1 at the warning threshold to `backoff` at the
//!   emergency threshold (`1 − (1 − backoff)·(1 − e^(−3x))/(1 − e^(−3))`,
//!   `x` the signal's position between the two), and does not grow;
//! - else, all signals clear: `W` grows by `increase` for each completed
//!   request, but only while the window is in use (in flight ≥ W/2), so an
//!   idle gateway does not inflate its window.
//!
//! A reading stays valid for `stale_after`; once a signal has no valid
//! reading, `on_stale` decides: `hold` the window, let it grow (`open`), or
//! drop it to `min_window` (`close`).
//!
//! # Admission
//!
//! A request is admitted while in flight < W (for a non-critical request,
//! < W·(1 − `critical_reserve`), so critical traffic is shed last). Beyond
//! that it may wait in a bounded FIFO queue (`max_queue`, at most its wait
//! time); a slot freed goes straight to the first waiter. A waiter that gives
//! up (timeout, client gone) leaves the queue at once.

mod queue;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::clock::Clock;
use queue::{WaitQueue, Waiter};

/// What to do once a signal has no valid reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStale {
    /// Keep the window where it is.
    Hold,
    /// Let it grow back toward `max_window`.
    Open,
    /// Drop it to `min_window`.
    Close,
}

/// One signal and its thresholds (higher is worse).
#[derive(Clone, Debug, PartialEq)]
pub struct SignalConfig {
    /// Label in metrics and the admin API.
    pub name: String,
    /// The PromQL the monitor runs (opaque to the controller).
    pub query: String,
    pub warning: f64,
    pub emergency: f64,
}

/// The controller's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveConfig {
    pub min_window: u64,
    pub max_window: u64,
    pub initial_window: u64,
    /// Growth per completed request; may be a fraction (0.1: one slot per
    /// ten completions).
    pub increase: f64,
    pub backoff: f64,
    pub stale_after: Duration,
    pub on_stale: OnStale,
    pub queue_timeout: Duration,
    pub max_queue: usize,
    pub critical_reserve: f64,
    pub jitter: Duration,
    pub signals: Vec<SignalConfig>,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            min_window: 10,
            max_window: 1000,
            initial_window: 1000,
            increase: 1.0,
            backoff: 0.5,
            stale_after: Duration::from_secs(15),
            on_stale: OnStale::Hold,
            queue_timeout: Duration::ZERO,
            max_queue: 0,
            critical_reserve: 0.0,
            jitter: Duration::ZERO,
            signals: Vec::new(),
        }
    }
}

/// A signal's state, as the admin API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignalState {
    /// Below warning.
    Ok,
    Warning,
    Emergency,
    /// No valid reading (none yet within `stale_after` of start, or the last
    /// one is older than that).
    Stale,
}

#[derive(Clone, Debug, Default)]
struct Reading {
    /// Last good value and when it was read (ms on the controller's clock).
    value: Option<(f64, u64)>,
    last_error: Option<String>,
}

/// What [`Controller::snapshot`] reports of one signal.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SignalSnapshot {
    pub name: String,
    pub query: String,
    pub value: Option<f64>,
    pub state: SignalState,
    /// Seconds since the last good reading.
    pub age_seconds: Option<f64>,
    pub warning: f64,
    pub emergency: f64,
    pub last_error: Option<String>,
}

/// The controller's state, for the admin API and metrics.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub window: u64,
    pub inflight: u64,
    pub min_window: u64,
    pub max_window: u64,
    pub queue_length: usize,
    pub growing: bool,
    pub signals: Vec<SignalSnapshot>,
}

/// The request was not admitted: the window is full (and the queue, if
/// any, was full or the wait ran out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overloaded;

/// An AIMD concurrency window and its queue.
pub struct Controller {
    cfg: AdaptiveConfig,
    /// The window in thousandths, so that a fractional `increase` adds up.
    window_milli: AtomicU64,
    inflight: AtomicU64,
    /// Whether completed requests may grow the window now.
    growing: AtomicBool,
    /// The last reading of each signal; written by the monitor, read by
    /// evaluations and snapshots (never by a request).
    readings: Mutex<Vec<Reading>>,
    queue: WaitQueue,
    next_waiter: AtomicU64,
    clock: Arc<dyn Clock>,
    born_ms: u64,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("window", &self.window())
            .field("inflight", &self.inflight())
            .finish()
    }
}

impl Controller {
    pub fn new(cfg: AdaptiveConfig, clock: Arc<dyn Clock>) -> Arc<Self> {
        let w = cfg.initial_window.clamp(cfg.min_window, cfg.max_window);
        let born_ms = clock.now_ms();
        Arc::new(Controller {
            window_milli: AtomicU64::new(w * 1000),
            inflight: AtomicU64::new(0),
            // No reading yet: hold until the first one (or staleness) speaks.
            growing: AtomicBool::new(cfg.signals.is_empty()),
            readings: Mutex::new(vec![Reading::default(); cfg.signals.len()]),
            queue: WaitQueue::default(),
            next_waiter: AtomicU64::new(0),
            clock,
            born_ms,
            cfg,
        })
    }

    pub fn config(&self) -> &AdaptiveConfig {
        &self.cfg
    }

    pub fn window(&self) -> u64 {
        self.window_milli.load(Ordering::Acquire) / 1000
    }

    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Requests a caller of this criticality may have in flight.
    fn limit(&self, critical: bool) -> u64 {
        let w = self.window();
        if critical || self.cfg.critical_reserve <= 0.0 {
            return w;
        }
        ((w as f64 * (1.0 - self.cfg.critical_reserve)).floor() as u64).max(1)
    }

    fn reserve(&self, critical: bool) -> bool {
        let limit = self.limit(critical);
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// A slot now, or `None` when the window is full.
    pub fn try_acquire(self: &Arc<Self>, critical: bool) -> Option<AdaptivePermit> {
        // Waiters go first: a newcomer does not overtake the queue.
        if self.queue_len() > 0 {
            return None;
        }
        self.reserve(critical).then(|| AdaptivePermit {
            ctl: self.clone(),
            completed: false,
        })
    }

    /// A slot, waiting up to `wait` in the FIFO queue when the window is
    /// full (and the queue has room). Dropping the future leaves the queue.
    pub async fn acquire(
        self: &Arc<Self>,
        critical: bool,
        wait: Duration,
    ) -> Result<AdaptivePermit, Overloaded> {
        if let Some(p) = self.try_acquire(critical) {
            return Ok(p);
        }
        if wait.is_zero() || self.cfg.max_queue == 0 {
            return Err(Overloaded);
        }
        let (tx, rx) = oneshot::channel();
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        if !self
            .queue
            .push(Waiter { id, critical, tx }, self.cfg.max_queue)
        {
            return Err(Overloaded);
        }
        // A slot may have freed between the check and the enqueue.
        self.wake();
        let mut guard = QueueGuard {
            ctl: self,
            id,
            rx: Some(rx),
        };
        let rx = guard.rx.as_mut().ok_or(Overloaded)?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(())) => {
                guard.rx = None; // the slot is ours; nothing to undo
                Ok(AdaptivePermit {
                    ctl: self.clone(),
                    completed: false,
                })
            }
            _ => Err(Overloaded),
        }
    }

    /// Hands free slots to waiters, first come first served. Costs one
    /// atomic load when nobody waits (every release calls it).
    fn wake(&self) {
        // Pairs with the same fence on the other side: a release that frees
        // a slot and a waiter that joins concurrently cannot both miss each
        // other (each stores, fences, then loads what the other stored).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.queue.len() == 0 {
            return;
        }
        while let Some(w) = self.queue.pop_front_if(|w| self.reserve(w.critical)) {
            if w.tx.send(()).is_err() {
                // Gone meanwhile: give the slot back and try the next.
                self.inflight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    fn release(&self, completed: bool) {
        let before = self.inflight.fetch_sub(1, Ordering::AcqRel);
        if completed && self.growing.load(Ordering::Acquire) {
            let w = self.window();
            // Only a window in use grows.
            if before * 2 >= w && w < self.cfg.max_window {
                let step = (self.cfg.increase * 1000.0).round().max(1.0) as u64;
                let ceiling = self.cfg.max_window * 1000;
                let _ = self
                    .window_milli
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                        Some((m + step).min(ceiling))
                    });
            }
        }
        self.wake();
    }

    /// Records a reading of signal `index`: a value, or why none came.
    #[allow(clippy::disallowed_methods)] // the monitor's lock: never a request's
    pub fn record(&self, index: usize, value: Result<f64, String>) {
        let now = self.clock.now_ms();
        if let Ok(mut r) = self.readings.lock() {
            if let Some(r) = r.get_mut(index) {
                match value {
                    Ok(v) if v.is_finite() => {
                        r.value = Some((v, now));
                        r.last_error = None;
                    }
                    Ok(v) => r.last_error = Some(format!("not a finite number: {v}")),
                    Err(e) => r.last_error = Some(e),
                }
            }
        }
    }

    fn state_of(&self, sig: &SignalConfig, r: &Reading, now: u64) -> (SignalState, f64) {
        let stale_ms = self.cfg.stale_after.as_millis() as u64;
        match r.value {
            Some((v, at)) if now.saturating_sub(at) <= stale_ms => {
                if v >= sig.emergency {
                    (SignalState::Emergency, 1.0)
                } else if v >= sig.warning {
                    let span = (sig.emergency - sig.warning).max(f64::EPSILON);
                    (
                        SignalState::Warning,
                        ((v - sig.warning) / span).clamp(0.0, 1.0),
                    )
                } else {
                    (SignalState::Ok, 0.0)
                }
            }
            _ => (SignalState::Stale, 0.0),
        }
    }

    /// Applies the current readings to the window; once per reading cycle.
    #[allow(clippy::disallowed_methods)] // the monitor's lock: never a request's
    pub fn evaluate(&self) {
        let now = self.clock.now_ms();
        let Ok(readings) = self.readings.lock() else {
            return;
        };
        let stale_ms = self.cfg.stale_after.as_millis() as u64;
        let mut emergency = false;
        let mut worst_warning: Option<f64> = None;
        let mut stale = false;
        let mut pending = false;
        for (sig, r) in self.cfg.signals.iter().zip(readings.iter()) {
            match self.state_of(sig, r, now) {
                (SignalState::Emergency, _) => emergency = true,
                (SignalState::Warning, x) => {
                    worst_warning = Some(worst_warning.map_or(x, |w: f64| w.max(x)))
                }
                (SignalState::Stale, _) if r.value.is_none() && now - self.born_ms <= stale_ms => {
                    pending = true
                }
                (SignalState::Stale, _) => stale = true,
                (SignalState::Ok, _) => {}
            }
        }
        drop(readings);
        let min = self.cfg.min_window;
        let cut = |factor: f64| {
            let _ = self
                .window_milli
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                    let w = ((m / 1000) as f64 * factor).floor() as u64;
                    Some(w.max(min) * 1000)
                });
        };
        let grow = if emergency {
            cut(self.cfg.backoff);
            false
        } else if let Some(x) = worst_warning {
            cut(self.warning_factor(x));
            false
        } else if stale {
            match self.cfg.on_stale {
                OnStale::Hold => false,
                OnStale::Open => true,
                OnStale::Close => {
                    self.window_milli.store(min * 1000, Ordering::Release);
                    false
                }
            }
        } else {
            !pending
        };
        self.growing.store(grow, Ordering::Release);
        self.wake();
    }

    /// The cut at a warning reading `x` of the way from warning (0) to
    /// emergency (1): 1 at 0, `backoff` at 1, steepest near the warning.
    pub fn warning_factor(&self, x: f64) -> f64 {
        const C: f64 = 3.0;
        let g = (1.0 - (-C * x).exp()) / (1.0 - (-C).exp());
        1.0 - (1.0 - self.cfg.backoff) * g
    }

    #[allow(clippy::disallowed_methods)] // the monitor's lock: never a request's
    pub fn snapshot(&self) -> Snapshot {
        let now = self.clock.now_ms();
        let readings = self.readings.lock().map(|r| r.clone()).unwrap_or_default();
        let signals = self
            .cfg
            .signals
            .iter()
            .zip(readings.iter())
            .map(|(sig, r)| SignalSnapshot {
                name: sig.name.clone(),
                query: sig.query.clone(),
                value: r.value.map(|v| v.0),
                state: self.state_of(sig, r, now).0,
                age_seconds: r
                    .value
                    .map(|(_, at)| now.saturating_sub(at) as f64 / 1000.0),
                warning: sig.warning,
                emergency: sig.emergency,
                last_error: r.last_error.clone(),
            })
            .collect();
        Snapshot {
            window: self.window(),
            inflight: self.inflight(),
            min_window: self.cfg.min_window,
            max_window: self.cfg.max_window,
            queue_length: self.queue_len(),
            growing: self.growing.load(Ordering::Acquire),
            signals,
        }
    }
}

/// Removes a waiter from the queue when its wait ends without a slot.
struct QueueGuard<'a> {
    ctl: &'a Controller,
    id: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        self.ctl.queue.remove(self.id);
        // A slot handed over just as the wait ended goes back.
        if rx.try_recv().is_ok() {
            self.ctl.release(false);
        }
    }
}

/// A place in the window; freed on drop. [`AdaptivePermit::complete`]
/// marks a completed request, which may grow the window.
pub struct AdaptivePermit {
    ctl: Arc<Controller>,
    completed: bool,
}

impl AdaptivePermit {
    /// The request completed (its response ended): free the slot now.
    pub fn complete(mut self) {
        self.completed = true;
    }
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        self.ctl.release(self.completed);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests;
